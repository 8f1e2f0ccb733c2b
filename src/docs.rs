//! `api-docs/`: the reference of the script API, generated from the binding layer.
//!
//! Everything comes from the bindings themselves: each binding's [`FnDoc`] (name, parameters,
//! where it is allowed, what it returns, its text and example), [`CONSTANTS`], and Rhai's own
//! function metadata of the engine the plugin builds (types, and the definition files the Rhai
//! language server reads). `proxy-rhai docs` writes the files; a test fails when the checked-in
//! ones differ from [`generate`]'s.
//!
//! - `api-docs/README.md`: every function and constant: signature, what it does, where it is
//!   allowed, what it returns on absence or error, and an example.
//! - `api-docs/testing.md`: how to write tests in Rhai ([`crate::testing`]).
//! - `api-docs/definitions/*.d.rhai`: definition files for editors (the API with its
//!   documentation, and Rhai's standard library and operators).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use rhai::Engine;
use serde_json::Value;

use crate::bindings::{Allowed, FnDoc, CONSTANTS};
use crate::config::ErrorPolicy;
use crate::emulator::EmulatorHost;
use crate::phase::{Phase, Phases};
use crate::plugin::{api_reference, TICK_FUNCTION};

/// The guide to tests written in Rhai (also the documentation of [`crate::testing`]).
const TESTING: &str = include_str!("testing/testing.md");

/// The folder the docs live in, in the repository.
pub const DIR: &str = "api-docs";

/// Every file of `api-docs/`: (path relative to it, content), in path order.
pub fn generate() -> Vec<(String, String)> {
    let docs = api_reference(EmulatorHost::default());
    let api = api_only_engine();
    let returns = returns_of(&api);
    let mut files = vec![
        ("README.md".to_string(), reference(&docs, &returns)),
        ("testing.md".to_string(), TESTING.to_string()),
    ];
    files.extend(definitions(&api, &docs, &returns));
    files.sort();
    files
}

/// Writes [`generate`]'s files under `dir`, removing the files a previous version wrote
/// that no longer exist. Returns the paths written.
pub fn write(dir: &Path) -> std::io::Result<Vec<String>> {
    let files = generate();
    for stale in stale_files(dir, &files) {
        std::fs::remove_file(dir.join(stale))?;
    }
    for (path, content) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// What differs between `dir` and [`generate`]: files missing, different, or left over.
pub fn differences(dir: &Path) -> Vec<String> {
    let files = generate();
    let mut found: Vec<String> = files
        .iter()
        .filter_map(
            |(path, content)| match std::fs::read_to_string(dir.join(path)) {
                Ok(old) if old == *content => None,
                Ok(_) => Some(format!("{path} is out of date")),
                Err(_) => Some(format!("{path} is missing")),
            },
        )
        .collect();
    found.extend(
        stale_files(dir, &files)
            .into_iter()
            .map(|p| format!("{p} is no longer generated")),
    );
    found
}

/// One script function of the API, as the playground's help shows it.
#[derive(Debug, Clone)]
pub struct FunctionHelp {
    pub name: String,
    /// `name(param: type, …) -> type`.
    pub signature: String,
    /// Its entry of `README.md` (markdown).
    pub doc: String,
    /// The phase functions it works in (and its callout callbacks): `on_tick` too when it
    /// works anywhere; a callback's function lists the phases callbacks run in; body phases
    /// that need `allow_on_headers_stop_iteration` are included.
    pub phases: Vec<&'static str>,
}

/// Every function of the API, one per name (as [`generate`] documents them).
pub fn function_help() -> Vec<FunctionHelp> {
    let docs = api_reference(EmulatorHost::default());
    let returns = returns_of(&api_only_engine());
    let mut help = Vec::new();
    for doc in &docs {
        let phases: Vec<&'static str> = match doc.allowed {
            Allowed::Anywhere => Phase::ALL
                .iter()
                .map(|p| p.function_name())
                .chain([TICK_FUNCTION])
                .collect(),
            Allowed::In(phases) => phases
                .iter()
                .chain(phases.iter_held())
                .map(Phase::function_name)
                .collect(),
            Allowed::Callback => Phases::STREAMING.iter().map(Phase::function_name).collect(),
        };
        for name in names(doc.name) {
            help.push(FunctionHelp {
                name: name.to_string(),
                signature: typed_signature(doc, name, &returns),
                doc: entry(doc, &returns).trim().to_string(),
                phases: phases.clone(),
            });
        }
    }
    help
}

/// A function the script defines for the proxy to call: a phase function or `on_tick`.
#[derive(Debug, Clone)]
pub struct PhaseHelp {
    pub name: &'static str,
    /// `on_request_chunk(chunk, last)`.
    pub signature: String,
    pub doc: &'static str,
}

/// The phase functions, in stream order, then `on_tick`.
pub fn phase_help() -> Vec<PhaseHelp> {
    let mut help: Vec<PhaseHelp> = Phase::ALL
        .iter()
        .map(|p| PhaseHelp {
            name: p.function_name(),
            signature: phase_signature(*p),
            doc: p.summary(),
        })
        .collect();
    help.push(PhaseHelp {
        name: TICK_FUNCTION,
        signature: format!("{TICK_FUNCTION}()"),
        doc: "Called on a timer, every `tick_period_ms` of the plugin configuration (1000 by \
              default), outside any request: only the functions allowed anywhere work there.",
    });
    help
}

fn phase_signature(phase: Phase) -> String {
    let params = if phase.is_chunk() { "chunk, last" } else { "" };
    format!("{}({params})", phase.function_name())
}

/// The return type of each API function, from the engine's metadata.
fn returns_of(api: &Engine) -> Returns {
    api_functions(api)
        .into_iter()
        .map(|f| ((f.name, f.params), definition_type(&f.returns)))
        .collect()
}

/// Functions the engine has that no [`FnDoc`] documents (and the reverse): a binding
/// registered without its documentation.
pub fn undocumented() -> Vec<String> {
    let docs = api_reference(EmulatorHost::default());
    let documented: BTreeSet<&str> = docs.iter().flat_map(|d| names(d.name)).collect();
    let registered: BTreeSet<String> = api_functions(&api_only_engine())
        .into_iter()
        .map(|f| f.name)
        .collect();
    let mut found: Vec<String> = registered
        .iter()
        .filter(|n| !documented.contains(n.as_str()))
        .map(|n| format!("{n} is registered but not documented"))
        .collect();
    found.extend(
        documented
            .iter()
            .filter(|n| !registered.contains(**n))
            .map(|n| format!("{n} is documented but not registered")),
    );
    found
}

/// The files of `dir` (`.md` and `.d.rhai`) that `files` doesn't have.
fn stale_files(dir: &Path, files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for sub in ["", "definitions"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if sub.is_empty() {
                name.clone()
            } else {
                format!("{sub}/{name}")
            };
            let ours = name.ends_with(".md") || name.ends_with(".d.rhai");
            if ours && entry.path().is_file() && !files.iter().any(|(p, _)| *p == path) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The script names one [`FnDoc`] documents (`log_info / log_warn` documents both).
fn names(name: &str) -> impl Iterator<Item = &str> {
    name.split(" / ").map(str::trim)
}

/// An engine with the script API and nothing else, for its definitions.
fn api_only_engine() -> Engine {
    crate::check::with_api(Engine::new_raw(), None)
}

/// The return type of each (function, number of parameters), as definition files write it.
type Returns = BTreeMap<(String, usize), String>;

/// A function the engine registers itself, as its metadata describes it.
struct Registered {
    name: String,
    params: usize,
    /// The Rust return type.
    returns: String,
}

/// The functions an engine registers itself (not its packages).
fn api_functions(engine: &Engine) -> Vec<Registered> {
    let metadata: Value = engine
        .gen_fn_metadata_to_json(false)
        .ok()
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    metadata["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            Some(Registered {
                name: f["name"].as_str()?.to_string(),
                params: usize::try_from(f["numParams"].as_u64()?).ok()?,
                returns: f["returnType"].as_str().unwrap_or("()").to_string(),
            })
        })
        .collect()
}

/// A Rust return type as definition files write it (`Result<T, …>` is `T`).
fn definition_type(rust: &str) -> String {
    let t = rust.replace(' ', "");
    let t = match t.strip_prefix("core::result::Result<") {
        Some(inner) => inner
            .rsplit_once(",alloc::boxed::Box<")
            .map_or(inner, |(ok, _)| ok)
            .to_string(),
        None => t,
    };
    match t.as_str() {
        "" | "()" => "()".into(),
        "bool" => "bool".into(),
        "i64" | "i32" | "u32" | "usize" => "int".into(),
        "f64" | "f32" => "float".into(),
        "alloc::vec::Vec<u8>" => "Blob".into(),
        _ if t.ends_with("Dynamic") => "?".into(),
        _ if t.ends_with("String") => "String".into(),
        _ if t.contains("Vec<") => "Array".into(),
        _ if t.contains("Map<") => "Map".into(),
        _ => t.rsplit("::").next().unwrap_or("?").into(),
    }
}

/// A Rust parameter type as a script author reads it (`& str` is `&str` as `stringify!`
/// writes it when a macro passed it on).
fn script_type(rust: &str) -> &str {
    match rust {
        "&str" | "& str" | "ImmutableString" | "String" => "string",
        "()" => "()",
        "i64" | "INT" => "int",
        "f64" | "FLOAT" => "float",
        "bool" => "bool",
        "FnPtr" => "Fn",
        "Blob" => "blob",
        "Array" => "array",
        "Map" => "map",
        "Dynamic" | "?" => "any",
        other => other,
    }
}

fn signature(doc: &FnDoc, name: &str) -> String {
    let params: Vec<String> = doc
        .params
        .iter()
        .map(|(n, t)| format!("{n}: {}", script_type(t)))
        .collect();
    format!("{name}({})", params.join(", "))
}

/// `name(param: type, …) -> type`.
fn typed_signature(doc: &FnDoc, name: &str, returns: &Returns) -> String {
    let ret = returns
        .get(&(name.to_string(), doc.params.len()))
        .map_or("any", |t| script_type(t));
    format!("{} -> {ret}", signature(doc, name))
}

fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => Some(c),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

/// Where a binding may be called, in words.
fn allowed_text(allowed: Allowed) -> String {
    match allowed {
        Allowed::Anywhere => "anywhere: phase functions, callout callbacks, and the script's top \
                              level (which runs once, when the plugin is configured)"
            .into(),
        Allowed::In(phases) if phases == Phases::ALL => {
            "every phase function, and callout callbacks".into()
        }
        Allowed::In(phases) => {
            let names: Vec<String> = phases.iter().map(|p| format!("`{p}`")).collect();
            let held: Vec<String> = phases.iter_held().map(|p| format!("`{p}`")).collect();
            let held = match held.is_empty() {
                true => String::new(),
                false => format!(
                    "; also {} when the plugin runs with `allow_on_headers_stop_iteration` \
                     (see the README)",
                    held.join(", ")
                ),
            };
            format!(
                "{} (and callout callbacks dispatched there){held}",
                names.join(", ")
            )
        }
        Allowed::Callback => "callout callbacks only".into(),
    }
}

/// What calling a binding in the wrong place does.
fn misuse_text(allowed: Allowed) -> &'static str {
    match allowed {
        Allowed::Anywhere => "",
        Allowed::In(phases) if phases == Phases::ALL => {
            "called at the top level (outside any request), it is a script error."
        }
        Allowed::In(_) => {
            "called anywhere else (another phase, the top level), it is a script error."
        }
        Allowed::Callback => "called outside a callout callback, it is a script error.",
    }
}

/// The section a binding belongs to, from its name.
fn section(name: &str) -> &'static str {
    let has = |part: &str| name.contains(part);
    let any = |parts: &[&str]| parts.iter().any(|p| name.contains(p));
    if has("http_call_response")
        || any(&["http_get", "http_post"])
        || name == "http_call"
        || name == "dispatch_http_call"
    {
        "Callouts"
    } else if name.starts_with("redis_") {
        "Redis (Higress build)"
    } else if any(&["request_header", "request_trailer"]) {
        "Request headers and trailers"
    } else if any(&["response_header", "response_trailer"]) {
        "Response headers and trailers"
    } else if has("_body") {
        "Bodies"
    } else if name == "send_http_response" || has("resume_") {
        "Local responses and resuming"
    } else if has("context") || name == "config" {
        "Per-request state and configuration"
    } else if name.starts_with("log_") {
        "Logs"
    } else if has("property") || name.starts_with("downstream_") {
        "Properties"
    } else if any(&["metadata", "filter_state"]) {
        "Metadata and filter state"
    } else if has("shared") {
        "Shared data"
    } else if any(&["metric", "counter", "gauge", "histogram"]) {
        "Metrics"
    } else if has("json") {
        "JSON"
    } else if any(&["base64", "url_", "hex", "sha", "hmac"]) {
        "Encodings and hashes"
    } else if any(&["now_", "random", "uuid", "time"]) {
        "Time and randomness"
    } else {
        "Utilities"
    }
}

/// The first part of `README.md`.
fn intro() -> String {
    let phases: Vec<String> = Phase::ALL
        .iter()
        .map(|p| format!("`{}`", phase_signature(*p)))
        .collect();
    let status = ErrorPolicy::default().status;
    format!(
        "\
# The proxy-rhai script API

Generated from the binding layer by `proxy-rhai docs`: don't edit by hand (a test fails when
it is out of date). Editors with the Rhai language server can use the definition files in
[`definitions/`](definitions/) for completion and checks.

A script defines phase functions, which the proxy calls as a request goes through: {phases}.
Each is optional; only the chunk functions take parameters: the piece of the body as a string,
and whether it is the last. The plugin's global script may also define
`{tick}()`, which the proxy calls on a timer, outside any request. What a function may touch depends on the phase: the
proxy gives the request headers only while they are handled, the body only in its body phase,
and so on. A callout callback runs in the phase that dispatched it. The script's top-level
statements run once, when the plugin is configured.

A binding called where it isn't allowed, or with arguments it can't use, raises a script
error. So does anything that goes wrong in Rhai (a type mismatch, a limit exceeded). The
script can catch it with `try {{ … }} catch (e) {{ … }}`; uncaught, it ends the phase, the
error is logged with the line it happened on, and the plugin's `error_policy` decides what
happens to the request (by default the client gets a `{status}`).

Types: `string`, `int`, `bool`, `blob` (bytes), `array`, `map` (`#{{ name: value }}`), `()`
(nothing: what a missing header is), `Fn` (a function pointer or closure, `|a, b| …`), `any`
(see the text). Headers are given as an array of `[name, value]` pairs or a map; header names
are case-insensitive and always come back lowercase.

Scripts also have Rhai's standard library (strings, arrays, maps, blobs, maths, …):
see [`definitions/rhai-std.d.rhai`](definitions/rhai-std.d.rhai).

To try a script: `proxy-rhai run SCRIPT` shows every host call it makes on a request, and
what the upstream and the client get; `proxy-rhai check SCRIPT` compiles it as the plugin
would; tests written in Rhai are described in [`testing.md`](testing.md).
",
        phases = phases.join(", "),
        tick = TICK_FUNCTION,
    )
}

/// `README.md`.
fn reference(docs: &[FnDoc], returns: &Returns) -> String {
    let mut sections: Vec<(&str, Vec<&FnDoc>)> = Vec::new();
    for doc in docs {
        let name = section(doc.name);
        match sections.iter_mut().find(|(s, _)| *s == name) {
            Some((_, list)) => list.push(doc),
            None => sections.push((name, vec![doc])),
        }
    }
    let mut out = intro();
    out.push_str("\n## Contents\n\n- [Constants](#constants)\n");
    for (name, list) in &sections {
        let mut seen = BTreeSet::new();
        let fns: Vec<String> = list
            .iter()
            .filter(|d| seen.insert(d.name))
            .map(|d| format!("`{}`", d.name))
            .collect();
        let _ = writeln!(out, "- [{name}](#{}): {}", anchor(name), fns.join(", "));
    }
    out.push_str("\n## Constants\n");
    for c in CONSTANTS.iter() {
        let _ = write!(out, "\n### `{}`\n\n{}\n", c.name, c.doc);
    }
    for (name, list) in &sections {
        let _ = writeln!(out, "\n## {name}");
        for doc in list {
            out.push_str(&entry(doc, returns));
        }
    }
    out
}

/// One function's entry.
fn entry(doc: &FnDoc, returns: &Returns) -> String {
    let mut out = String::new();
    let heading: Vec<String> = names(doc.name).map(|n| signature(doc, n)).collect();
    let _ = write!(out, "\n### `{}`\n\n", heading.join("` / `"));
    let typed: Vec<String> = names(doc.name)
        .map(|name| typed_signature(doc, name, returns))
        .collect();
    let _ = writeln!(out, "```rhai\n{}\n```\n", typed.join("\n"));
    let _ = writeln!(out, "{}\n", doc.doc);
    let _ = writeln!(out, "- Allowed in: {}.", allowed_text(doc.allowed));
    let _ = writeln!(out, "- Returns: {}.", doc.returns);
    let misuse = misuse_text(doc.allowed);
    if !misuse.is_empty() {
        let _ = writeln!(out, "- Errors: {misuse}");
    }
    if !doc.example.is_empty() {
        let _ = write!(out, "\n```rhai\n{}\n```\n", doc.example);
    }
    out
}

/// The definition files: the API (Rhai's definitions of the engine's own functions, with
/// names and documentation from the [`FnDoc`]s), Rhai's standard library, and the built-in
/// functions and operators.
fn definitions(api: &Engine, docs: &[FnDoc], returns: &Returns) -> Vec<(String, String)> {
    let mut files = vec![(
        "definitions/proxy-rhai.d.rhai".to_string(),
        annotate(
            &api.definitions().with_headers(true).static_module(),
            docs,
            returns,
        ),
    )];
    let std = Engine::new();
    for (name, content) in std.definitions().iter_files() {
        let name = if name == "__static__.d.rhai" {
            "rhai-std.d.rhai".to_string()
        } else {
            name
        };
        files.push((format!("definitions/{name}"), content));
    }
    files
}

/// Rhai's definitions of the API, with the parameter names and documentation of each
/// binding (Rhai only knows the types of a native function's parameters).
fn annotate(definitions: &str, docs: &[FnDoc], returns: &Returns) -> String {
    let mut out = String::from(
        "// The proxy-rhai script API, generated by `proxy-rhai docs` (see README.md).\n",
    );
    for line in definitions.lines() {
        if let Some(rest) = line.strip_prefix("const ") {
            let name = rest.split(':').next().unwrap_or_default();
            if let Some(c) = CONSTANTS.iter().find(|c| c.name == name) {
                push_comment(&mut out, c.doc);
            }
            let _ = writeln!(out, "{line}");
            continue;
        }
        let Some(FnLine {
            name,
            params,
            returns: ret,
        }) = parse_fn(line)
        else {
            let _ = writeln!(out, "{line}");
            continue;
        };
        let doc = docs
            .iter()
            .find(|d| names(d.name).any(|n| n == name) && d.params.len() == params.len());
        match doc {
            Some(doc) => {
                push_comment(&mut out, doc.doc);
                push_comment(
                    &mut out,
                    &format!("Allowed in: {}.", allowed_text(doc.allowed)),
                );
                push_comment(&mut out, &format!("Returns: {}.", doc.returns));
                let named: Vec<String> = doc
                    .params
                    .iter()
                    .zip(&params)
                    .map(|((n, _), (_, t))| format!("{n}: {t}"))
                    .collect();
                let ret = returns
                    .get(&(name.to_string(), params.len()))
                    .map_or(ret, String::as_str);
                let _ = writeln!(out, "fn {name}({}) -> {ret};", named.join(", "));
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

/// One `fn name(a: T, _: U) -> R;` line of a definition file.
#[derive(Debug, PartialEq)]
struct FnLine<'a> {
    name: &'a str,
    /// (name, type) of each parameter.
    params: Vec<(&'a str, &'a str)>,
    returns: &'a str,
}

fn parse_fn(line: &str) -> Option<FnLine<'_>> {
    let rest = line.strip_prefix("fn ")?;
    let (name, rest) = rest.split_once('(')?;
    let (params, rest) = rest.rsplit_once(") -> ")?;
    let returns = rest.strip_suffix(';')?;
    let params = if params.is_empty() {
        Vec::new()
    } else {
        params
            .split(", ")
            .map(|p| p.split_once(": ").unwrap_or((p, "?")))
            .collect()
    };
    Some(FnLine {
        name,
        params,
        returns,
    })
}

/// `text` as `///` lines of at most about 96 columns.
fn push_comment(out: &mut String, text: &str) {
    let mut line = String::from("///");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 96 && line.len() > 3 {
            let _ = writeln!(out, "{line}");
            line = String::from("///");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fn_lines_are_parsed() {
        assert_eq!(
            parse_fn("fn f(_: String, x: ?) -> bool;"),
            Some(FnLine {
                name: "f",
                params: vec![("_", "String"), ("x", "?")],
                returns: "bool"
            })
        );
        assert_eq!(parse_fn("fn g() -> ();").map(|f| f.params), Some(vec![]));
        assert_eq!(parse_fn("const X: int;"), None);
    }

    #[test]
    fn comments_wrap() {
        let mut out = String::new();
        push_comment(&mut out, &"word ".repeat(40));
        assert!(
            out.lines().all(|l| l.len() <= 96 && l.starts_with("/// ")),
            "{out}"
        );
    }
}
