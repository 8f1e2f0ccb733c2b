//! The configuration documents that deploy a script: Envoy's HTTP filter (`proxy-rhai deploy
//! envoy`, the playground's "copy as deploy"), and the renderer `deploy higress` and `deploy
//! istio` write their resources with.
//!
//! The output is JSON, which is YAML too (YAML 1.2 contains JSON; Envoy's and Kubernetes'
//! YAML readers take it as it is). Every string is a JSON string literal in which the
//! characters YAML would not keep as they are (control characters, DEL, C1 controls, U+2028,
//! U+2029, U+FEFF, U+FFFE, U+FFFF) are `\u` escapes, so any script text survives a YAML or
//! a JSON reader byte for byte.

use serde_json::{Map, Value};

/// The plugin's key that says the proxy runs it with Envoy's option of the same name.
pub const STOP_ITERATION: &str = "allow_on_headers_stop_iteration";
/// Where Envoy finds the plugin by default (`vm_config.code.local.filename`).
pub const DEFAULT_WASM: &str = "/etc/envoy/proxy_rhai.wasm";
/// The plugin's name by default (`config.name`).
pub const DEFAULT_NAME: &str = "proxy-rhai";

/// Why the plugin refuses `configuration`, if it does.
pub fn validate(configuration: &Map<String, Value>) -> Result<(), String> {
    let text = Value::Object(configuration.clone()).to_string();
    crate::emulator::Emulator::new(&text).map(drop)
}

/// `configuration` as Envoy's filter carries it: Envoy's option and the plugin's key go
/// together (one without the other holds requests or leaves body phases without headers), so
/// the key is on unless the configuration turns it off (for an Envoy older than 1.35, which
/// refuses the option).
pub fn for_envoy(mut configuration: Map<String, Value>) -> Map<String, Value> {
    if configuration.get(STOP_ITERATION) != Some(&Value::Bool(false)) {
        configuration.insert(STOP_ITERATION.into(), Value::Bool(true));
    }
    configuration
}

/// An Envoy HTTP filter (an entry of the HTTP connection manager's `http_filters`, before
/// `envoy.filters.http.router`) running the plugin `configuration` (see [`for_envoy`]) from
/// `wasm`, named `name`.
///
/// ```
/// let configuration = proxy_rhai::deploy::for_envoy(
///     serde_json::json!({"script": "fn on_request_headers() {}"}).as_object().unwrap().clone(),
/// );
/// let filter = proxy_rhai::deploy::envoy_filter(&configuration, "proxy-rhai", "/etc/envoy/proxy_rhai.wasm");
/// assert!(filter.contains("\"allow_on_headers_stop_iteration\": true"));
/// ```
pub fn envoy_filter(configuration: &Map<String, Value>, name: &str, wasm: &str) -> String {
    let stop_iteration = configuration.get(STOP_ITERATION) == Some(&Value::Bool(true));
    let value = Value::Object(configuration.clone()).to_string();
    let doc = map([
        ("name", "envoy.filters.http.wasm".into()),
        (
            "typed_config",
            map([
                (
                    "@type",
                    "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm".into(),
                ),
                (
                    "config",
                    map([
                        ("name", name.into()),
                        (
                            "vm_config",
                            map([
                                ("runtime", "envoy.wasm.runtime.v8".into()),
                                ("code", map([("local", map([("filename", wasm.into())]))])),
                            ]),
                        ),
                        (
                            "configuration",
                            map([
                                (
                                    "@type",
                                    "type.googleapis.com/google.protobuf.StringValue".into(),
                                ),
                                ("value", Doc::Str(value)),
                            ]),
                        ),
                        (STOP_ITERATION, Doc::Raw(stop_iteration.to_string())),
                    ]),
                ),
            ]),
        ),
    ]);
    render(&doc)
}

/// A plugin configuration as a document: `script` first, then `config`, then the rest.
pub fn plugin_settings(settings: &Map<String, Value>) -> Doc {
    let rank = |k: &str| match k {
        "script" => 0,
        "config" => 1,
        _ => 2,
    };
    let mut entries: Vec<(&String, &Value)> = settings.iter().collect();
    entries.sort_by_key(|(k, _)| rank(k));
    Doc::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.clone(), Doc::from(v)))
            .collect(),
    )
}
/// A document in the order it is printed.
pub enum Doc {
    Str(String),
    /// A number, a boolean or null, as JSON.
    Raw(String),
    Map(Vec<(String, Doc)>),
    List(Vec<Doc>),
}

impl From<&str> for Doc {
    fn from(s: &str) -> Doc {
        Doc::Str(s.to_string())
    }
}

impl From<&Value> for Doc {
    fn from(v: &Value) -> Doc {
        match v {
            Value::String(s) => Doc::Str(s.clone()),
            Value::Array(items) => Doc::List(items.iter().map(Doc::from).collect()),
            Value::Object(m) => {
                Doc::Map(m.iter().map(|(k, v)| (k.clone(), Doc::from(v))).collect())
            }
            other => Doc::Raw(other.to_string()),
        }
    }
}

pub fn map<const N: usize>(entries: [(&str, Doc); N]) -> Doc {
    Doc::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// The document as indented JSON (hence YAML), ending with a newline.
pub fn render(doc: &Doc) -> String {
    let mut out = String::new();
    write_doc(&mut out, doc, 0);
    out.push('\n');
    out
}

fn write_doc(out: &mut String, doc: &Doc, indent: usize) {
    let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
    match doc {
        Doc::Str(s) => write_string(out, s),
        Doc::Raw(r) => out.push_str(r),
        Doc::Map(entries) if entries.is_empty() => out.push_str("{}"),
        Doc::List(items) if items.is_empty() => out.push_str("[]"),
        Doc::Map(entries) => {
            out.push_str("{\n");
            for (i, (k, v)) in entries.iter().enumerate() {
                pad(out, indent + 2);
                write_string(out, k);
                out.push_str(": ");
                write_doc(out, v, indent + 2);
                out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push('}');
        }
        Doc::List(items) => {
            out.push_str("[\n");
            for (i, v) in items.iter().enumerate() {
                pad(out, indent + 2);
                write_doc(out, v, indent + 2);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push(']');
        }
    }
}

/// A JSON string literal that YAML reads back as the same text: besides JSON's own escapes,
/// every character YAML does not take as printable (or folds as a line break) is escaped.
/// Rhai reads it as the same text too (test cases are written with it).
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{feff}'
            | '\u{fffe}'
            | '\u{ffff}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_survive_json() {
        let text = "a\"b\\c\nd\te\r\u{0}\u{7f}\u{85}\u{2028}\u{feff}\u{ffff}é😀/";
        let mut out = String::new();
        write_string(&mut out, text);
        assert!(
            !out.contains('\u{2028}') && !out.contains('\u{85}'),
            "{out}"
        );
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
    }
}
