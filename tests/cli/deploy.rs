//! `proxy-rhai deploy envoy` and `proxy-rhai deploy higress`: the printed configuration parses
//! back (as JSON, and as YAML when python3 has PyYAML), the script round-trips byte for byte,
//! options land where Envoy and Higress read them, and bad input is refused in one line.
//! (tests/e2e/gateway.rs loads the Envoy output into a real Envoy.)

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::{folder, path, proxy_rhai, stderr, stdout};

/// A script that compiles, full of what escaping gets wrong: quotes, backslashes, `${`,
/// CRLF and lone CR line ends, tabs, non-ASCII (2-, 3- and 4-byte UTF-8), and characters YAML
/// does not keep as they are (DEL, NEL, U+2028, U+2029, BOM) — in comments and strings.
const NASTY_SCRIPT: &str =
    "// \"quoted\" 'single' \\ back\\slash \\n not a newline ${x} `tick`\r\n\
// tab:\there; é ü ß → ∑ 😀 𝄞; DEL:\u{7f} NEL:\u{85} LS:\u{2028} PS:\u{2029} BOM:\u{feff}\r\n\
fn on_request_headers() {\n\
\tlet s = \"a \\\"quoted\\\" \\\\ value\\twith escapes é😀\";\n\
    add_request_header(\"x-nasty\", s);  \r\
    add_request_header(\"x-config\", `${config().greeting}`);\n\
}\n\
// no newline at the end: }";

/// Every character of the output is one YAML takes as printable, outside line breaks (so
/// neither a YAML nor a JSON reader can change the text).
fn assert_yaml_safe(text: &str) {
    for (i, c) in text.char_indices() {
        let ok = c == '\n'
            || (' '..='~').contains(&c)
            || (c > '\u{9f}'
                && !matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ));
        assert!(ok, "character {c:?} at byte {i} is not YAML-safe:\n{text}");
    }
}

/// The document parsed as YAML by PyYAML (a YAML 1.1 reader, as Envoy's yaml-cpp), when
/// python3 has it; `None` otherwise.
fn parse_yaml_with_python(text: &str) -> Option<Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\nsys.stdout.write(json.dumps(yaml.safe_load(sys.stdin.buffer.read().decode('utf-8'))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named") {
            eprintln!("note: python3 has no PyYAML; the YAML reading is checked by Envoy only");
            return None;
        }
        panic!("PyYAML refused the output: {err}\n{text}");
    }
    Some(serde_json::from_slice(&out.stdout).expect("python printed JSON"))
}

/// Parses the output as JSON, and as YAML when possible, and checks both agree.
fn parse(text: &str) -> Value {
    assert_yaml_safe(text);
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("the output is not JSON ({e}):\n{text}"));
    if let Some(yaml) = parse_yaml_with_python(text) {
        assert_eq!(yaml, value, "YAML and JSON readers disagree");
    }
    value
}

#[test]
fn envoy_filter_embeds_the_script_exactly() {
    let dir = folder("deploy-envoy", &[("nasty.rhai", NASTY_SCRIPT)]);
    let o = proxy_rhai(&[
        "deploy",
        "envoy",
        &path(&dir, "nasty.rhai"),
        "--plugin-config",
        r#"{"limits": {"max_operations": 20000}, "error_policy": {"mode": "fail_open"}, "config": {"ignored": true}}"#,
        "--config",
        r#"{"greeting": "hé \"there\"\n"}"#,
        "--wasm",
        "/opt/wasm/proxy rhai.wasm",
        "--name",
        "my-filter",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let filter = parse(&stdout(&o));
    assert_eq!(filter["name"], "envoy.filters.http.wasm");
    let typed = &filter["typed_config"];
    assert_eq!(
        typed["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    let config = &typed["config"];
    assert_eq!(config["name"], "my-filter");
    assert_eq!(config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(
        config["vm_config"]["code"]["local"]["filename"],
        "/opt/wasm/proxy rhai.wasm"
    );
    let configuration = &config["configuration"];
    assert_eq!(
        configuration["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    // The StringValue holds the plugin configuration as JSON text.
    let text = configuration["value"]
        .as_str()
        .expect("the StringValue is a string");
    let plugin: Value = serde_json::from_str(text).expect("the StringValue holds JSON");
    assert_eq!(plugin["script"].as_str(), Some(NASTY_SCRIPT));
    assert_eq!(
        plugin,
        json!({
            "script": NASTY_SCRIPT,
            "config": {"greeting": "hé \"there\"\n"},
            "limits": {"max_operations": 20000},
            "error_policy": {"mode": "fail_open"},
            "allow_on_headers_stop_iteration": true
        })
    );
    // And the plugin accepts it.
    proxy_rhai::config::PluginConfig::parse(text.as_bytes()).expect("the plugin takes it");
}

#[test]
fn envoy_filter_defaults() {
    let o = proxy_rhai(&["deploy", "envoy", "scripts/hello.rhai"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let filter = parse(&stdout(&o));
    let config = &filter["typed_config"]["config"];
    assert_eq!(config["name"], "proxy-rhai");
    assert_eq!(
        config["vm_config"]["code"]["local"]["filename"],
        "/etc/envoy/proxy_rhai.wasm"
    );
    let plugin: Value =
        serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hello.rhai"))
            .unwrap();
    // Envoy's option and the plugin's key, together: body phases may write headers.
    assert_eq!(config["allow_on_headers_stop_iteration"], true);
    assert_eq!(
        plugin,
        json!({ "script": script, "allow_on_headers_stop_iteration": true })
    );
}

#[test]
fn envoy_filter_without_stop_iteration() {
    // For an Envoy older than 1.35, which refuses the option: both off.
    let o = proxy_rhai(&[
        "deploy",
        "envoy",
        "scripts/hello.rhai",
        "--plugin-config",
        r#"{"allow_on_headers_stop_iteration": false}"#,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let filter = parse(&stdout(&o));
    let config = &filter["typed_config"]["config"];
    assert_eq!(config["allow_on_headers_stop_iteration"], false);
    let plugin: Value =
        serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(plugin["allow_on_headers_stop_iteration"], false);
}

#[test]
fn higress_refuses_stop_iteration() {
    // Higress can't set Envoy's option: the key alone would hold requests.
    refused(
        &[
            "deploy",
            "higress",
            "scripts/hello.rhai",
            "--plugin-config",
            r#"{"allow_on_headers_stop_iteration": true}"#,
        ],
        "Higress doesn't set Envoy's allow_on_headers_stop_iteration",
    );
}

#[test]
fn higress_plugin_with_default_config_and_match_rules() {
    let dir = folder(
        "higress",
        &[
            ("nasty.rhai", NASTY_SCRIPT),
            (
                "admin.rhai",
                "fn on_request_headers() {\n    send_http_response(403, [], \"admins \\\"only\\\"\");\n}\n",
            ),
            ("svc.json", r#"{"greeting": "from a file", "n": [1, 2.5, null, true]}"#),
        ],
    );
    let admin = std::fs::read_to_string(dir.join("admin.rhai")).unwrap();
    let o = proxy_rhai(&[
        "deploy",
        "higress",
        &path(&dir, "nasty.rhai"),
        "--config",
        r#"{"greeting": "global"}"#,
        "--plugin-config",
        r#"{"limits": {"max_operations": 30000}}"#,
        "--rule",
        "domain=*.example.com, api.*",
        "--rule-config",
        r#"{"greeting": "domain"}"#,
        "--rule",
        "ingress=default/admin",
        "--rule-script",
        &path(&dir, "admin.rhai"),
        "--rule",
        "service=svc.ns.svc.cluster.local:8080,other",
        "--rule-script",
        &path(&dir, "nasty.rhai"),
        "--rule-config",
        &path(&dir, "svc.json"),
        "--priority",
        "200",
        "--phase",
        "AUTHN",
        "--namespace",
        "gateways",
        "--name",
        "rhai-auth",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plugin = parse(&stdout(&o));
    assert_eq!(plugin["apiVersion"], "extensions.higress.io/v1alpha1");
    assert_eq!(plugin["kind"], "WasmPlugin");
    assert_eq!(
        plugin["metadata"],
        json!({"name": "rhai-auth", "namespace": "gateways"})
    );
    let spec = &plugin["spec"];
    let url = spec["url"].as_str().unwrap();
    assert!(url.starts_with("oci://"), "{url}");
    assert_eq!(spec["priority"], 200);
    assert_eq!(spec["phase"], "AUTHN");
    assert_eq!(spec["defaultConfig"]["script"].as_str(), Some(NASTY_SCRIPT));
    assert_eq!(
        spec["defaultConfig"],
        json!({
            "script": NASTY_SCRIPT,
            "config": {"greeting": "global"},
            "limits": {"max_operations": 30000}
        })
    );
    assert_eq!(
        spec["matchRules"],
        json!([
            {"domain": ["*.example.com", "api.*"], "config": {"config": {"greeting": "domain"}}},
            {"ingress": ["default/admin"], "config": {"script": admin}},
            {
                "service": ["svc.ns.svc.cluster.local:8080", "other"],
                "config": {
                    "script": NASTY_SCRIPT,
                    "config": {"greeting": "from a file", "n": [1, 2.5, null, true]}
                }
            }
        ])
    );
    assert_eq!(
        spec["matchRules"][2]["config"]["script"].as_str(),
        Some(NASTY_SCRIPT)
    );

    // What Higress hands the plugin (defaultConfig plus `_rules_` made of matchRules) is a
    // configuration the plugin takes.
    let mut effective = spec["defaultConfig"].clone();
    effective["_rules_"] = json!([
        {"_match_domain_": ["*.example.com", "api.*"], "config": {"greeting": "domain"}},
        {"_match_route_": ["default/admin"], "script": admin},
        {"_match_service_": ["svc.ns.svc.cluster.local:8080", "other"], "script": NASTY_SCRIPT,
         "config": {"greeting": "from a file", "n": [1, 2.5, null, true]}}
    ]);
    let parsed = proxy_rhai::config::PluginConfig::parse(effective.to_string().as_bytes())
        .expect("the plugin takes what Higress makes of the resource");
    assert_eq!(parsed.rules.len(), 3);
}

#[test]
fn higress_plugin_defaults_and_url() {
    let o = proxy_rhai(&["deploy", "higress", "scripts/hello.rhai"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plugin = parse(&stdout(&o));
    assert_eq!(
        plugin["metadata"],
        json!({"name": "proxy-rhai", "namespace": "higress-system"})
    );
    assert!(plugin["spec"]["url"]
        .as_str()
        .unwrap()
        .starts_with("oci://"));
    assert!(plugin["spec"].get("matchRules").is_none(), "{plugin}");
    assert!(plugin["spec"]["defaultConfig"]["script"]
        .as_str()
        .unwrap()
        .contains("fn on_request_headers()"));

    let o = proxy_rhai(&[
        "deploy",
        "higress",
        "scripts/hello.rhai",
        "--url",
        "oci://registry.local/team/proxy-rhai:1.2.3",
        "--config",
        r#"{"mockEnable": true}"#,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plugin = parse(&stdout(&o));
    assert_eq!(
        plugin["spec"]["url"],
        "oci://registry.local/team/proxy-rhai:1.2.3"
    );
    assert_eq!(
        plugin["spec"]["defaultConfig"]["config"],
        json!({"mockEnable": true})
    );
}

/// Runs `deploy` and expects a refusal: exit status 2, one line on stderr containing `phrase`.
fn refused(args: &[&str], phrase: &str) {
    let o = proxy_rhai(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}{}", stdout(&o));
    assert!(o.stdout.is_empty(), "{args:?} printed {}", stdout(&o));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("proxy-rhai: "), "{err}");
    assert!(err.contains(phrase), "{args:?}: {err:?} lacks {phrase:?}");
}

#[test]
fn bad_input_is_refused_in_one_line() {
    let dir = folder(
        "refused",
        &[
            (
                "broken.rhai",
                "fn on_request_headers() {\n    let x = ;\n}\n",
            ),
            ("nophase.rhai", "fn helper() { 1 }\n"),
        ],
    );
    let broken = path(&dir, "broken.rhai");
    refused(&["deploy", "envoy", &broken], "line 2, column");
    refused(&["deploy", "higress", &broken], "line 2, column");
    refused(
        &["deploy", "envoy", &path(&dir, "nophase.rhai")],
        "no phase function",
    );
    refused(
        &["deploy", "envoy", &path(&dir, "missing.rhai")],
        "cannot read",
    );
    refused(
        &[
            "deploy",
            "envoy",
            "scripts/hello.rhai",
            "--plugin-config",
            r#"{"limits": {"max_operations": 1}}"#,
        ],
        "max_operations",
    );
    let hello = "scripts/hello.rhai";
    refused(
        &[
            "deploy",
            "higress",
            hello,
            "--rule-config",
            "{}",
            "--rule",
            "domain=a.com",
        ],
        "--rule-config must follow the --rule",
    );
    refused(
        &[
            "deploy",
            "higress",
            hello,
            "--rule",
            "host=a.com",
            "--rule-config",
            "{}",
        ],
        "unknown kind",
    );
    refused(
        &[
            "deploy",
            "higress",
            hello,
            "--rule",
            "domain",
            "--rule-config",
            "{}",
        ],
        "no '='",
    );
    refused(
        &[
            "deploy",
            "higress",
            hello,
            "--rule",
            "domain=",
            "--rule-config",
            "{}",
        ],
        "no value",
    );
    refused(
        &["deploy", "higress", hello, "--rule", "domain=a.com"],
        "needs a --rule-config or a --rule-script",
    );
    refused(
        &[
            "deploy",
            "higress",
            hello,
            "--rule",
            "domain=a.com",
            "--rule-config",
            "{}",
            "--rule-config",
            "{}",
        ],
        "two --rule-config",
    );
    refused(
        &[
            "deploy",
            "higress",
            hello,
            "--rule",
            "service=svc:http",
            "--rule-config",
            "{}",
        ],
        "port is not a number",
    );
    refused(
        &[
            "deploy",
            "higress",
            hello,
            "--rule",
            "ingress=r",
            "--rule-script",
            &broken,
        ],
        "_rules_[0]",
    );
    refused(
        &[
            "deploy",
            "higress",
            hello,
            "--plugin-config",
            r#"{"_rules_": []}"#,
        ],
        "--rule",
    );
}

#[test]
fn deploy_has_help() {
    for args in [
        &["deploy", "--help"][..],
        &["deploy", "envoy", "--help"],
        &["deploy", "higress", "--help"],
    ] {
        let o = proxy_rhai(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(
            stdout(&o).contains("Usage: proxy-rhai deploy"),
            "{args:?}: {}",
            stdout(&o)
        );
    }
    let o = proxy_rhai(&["--help"]);
    assert!(stdout(&o).contains("deploy"), "{}", stdout(&o));
}
