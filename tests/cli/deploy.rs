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
fn higress_deploys_the_higress_build_for_a_script_calling_redis() {
    let redis = [
        "deploy",
        "higress",
        "scripts/redis_rate_limit.rhai",
        "--config",
        r#"{"qpm": 5, "cluster": "outbound|6379||redis.dns"}"#,
    ];
    let o = proxy_rhai(&redis);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let url = parse(&stdout(&o))["spec"]["url"].clone();
    let expected = concat!(
        "oci://registry.example.com/proxy-rhai-higress:",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(url, expected);
    assert!(
        stderr(&o).contains(
            "the script calls Redis: spec.url is the image of the plugin's Higress build"
        ) && stderr(&o).contains("target/proxy_rhai_higress.wasm"),
        "{}",
        stderr(&o)
    );

    // An image given is kept; the note says which build it must be.
    let o = proxy_rhai(&[&redis[..], &["--url", "oci://r.example/mine:1"]].concat());
    assert_eq!(parse(&stdout(&o))["spec"]["url"], "oci://r.example/mine:1");
    assert!(stderr(&o).contains("--url must be the plugin's Higress build"));

    // A rule's script counts too; a script without Redis keeps the default build.
    let o = proxy_rhai(&[
        "deploy",
        "higress",
        "scripts/hello.rhai",
        "--rule",
        "domain=api.example.com",
        "--rule-script",
        "scripts/redis_token_bucket.rhai",
        "--rule-config",
        r#"{"rate": 1, "burst": 1}"#,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(parse(&stdout(&o))["spec"]["url"], expected);
    let o = proxy_rhai(&["deploy", "higress", "scripts/hello.rhai"]);
    assert!(!stderr(&o).contains("Redis"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("proxy-rhai-higress"));
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
fn deploy_refuses_what_check_finds_unless_forced() {
    let dir = folder(
        "deploy-check",
        &[
            (
                "misuse.rhai",
                "fn on_request_headers() {\n    let v = get_response_header(\"x\");\n}\n",
            ),
            (
                "unused.rhai",
                "fn on_request_headers() {}\nfn helper() {}\n",
            ),
            (
                "rule.rhai",
                "fn on_request_headers() { add_reqest_header(\"a\", \"b\"); }\n",
            ),
        ],
    );
    let misuse = path(&dir, "misuse.rhai");
    let expected = "misuse.rhai:2:13: error: `get_response_header` never works in \
                    `on_request_headers`";
    for target in ["envoy", "higress"] {
        let o = proxy_rhai(&["deploy", target, &misuse]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{target}: {err}");
        assert!(o.stdout.is_empty(), "{target} printed {}", stdout(&o));
        assert!(err.contains(expected), "{err}");
        assert!(
            err.ends_with(
                "proxy-rhai: not deployed: `check` found 1 error(s) (--force deploys anyway)\n"
            ),
            "{err}"
        );
        // --force, before or after the target: the findings are still said, and it deploys.
        for args in [
            vec!["deploy", "--force", target, misuse.as_str()],
            vec!["deploy", target, misuse.as_str(), "--force"],
        ] {
            let o = proxy_rhai(&args);
            assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
            assert!(stderr(&o).contains(expected), "{}", stderr(&o));
            assert!(parse(&stdout(&o)).is_object());
        }
    }
    // Warnings are said, and don't stop a deployment.
    let o = proxy_rhai(&["deploy", "envoy", &path(&dir, "unused.rhai")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: `helper` is never called"),
        "{}",
        stderr(&o)
    );
    // A rule's own script is checked too.
    let o = proxy_rhai(&[
        "deploy",
        "higress",
        &path(&dir, "unused.rhai"),
        "--rule",
        "domain=a.example",
        "--rule-script",
        &path(&dir, "rule.rhai"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("rule.rhai:1:27: error: no function `add_reqest_header`"),
        "{}",
        stderr(&o)
    );
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

/// The checks of Istio's `WasmPlugin` CRD (`extensions.istio.io/v1alpha1`, its OpenAPI schema
/// in istio/api `kubernetes/customresourcedefinitions.gen.yaml`) that a resource we print can
/// meet or break: the fields `spec` may have, their types, enums, patterns and bounds.
fn assert_istio_wasm_plugin(resource: &Value) {
    assert_eq!(resource["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(resource["kind"], "WasmPlugin");
    assert!(resource["metadata"]["name"].is_string(), "{resource}");
    let spec = resource["spec"].as_object().expect("spec is an object");
    const FIELDS: &[&str] = &[
        "failStrategy",
        "imagePullPolicy",
        "imagePullSecret",
        "match",
        "phase",
        "pluginConfig",
        "pluginName",
        "priority",
        "selector",
        "sha256",
        "targetRef",
        "targetRefs",
        "type",
        "url",
        "verificationKey",
        "vmConfig",
    ];
    for key in spec.keys() {
        assert!(
            FIELDS.contains(&key.as_str()),
            "spec.{key} is not in the CRD"
        );
    }
    let enum_of = |field: &str, allowed: &[&str]| {
        if let Some(v) = spec.get(field) {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("spec.{field} is a string"));
            assert!(allowed.contains(&v), "spec.{field}: {v} not in {allowed:?}");
        }
    };
    enum_of("failStrategy", &["FAIL_CLOSE", "FAIL_OPEN"]);
    enum_of(
        "imagePullPolicy",
        &["UNSPECIFIED_POLICY", "IfNotPresent", "Always"],
    );
    enum_of("phase", &["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]);
    enum_of("type", &["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"]);
    // Required, at least one character, one of Istio's schemes.
    let url = spec["url"].as_str().expect("spec.url is required");
    let scheme = url.split_once("://").map(|(s, _)| s);
    assert!(
        matches!(scheme, Some("http" | "https" | "oci" | "file")),
        "spec.url {url}"
    );
    if let Some(sha) = spec.get("sha256") {
        let sha = sha.as_str().expect("spec.sha256 is a string");
        assert!(
            sha.is_empty()
                || (sha.len() == 64
                    && sha
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
            "spec.sha256 {sha} does not match (^$|^[a-f0-9]{{64}}$)"
        );
    }
    if let Some(priority) = spec.get("priority") {
        let p = priority.as_i64().expect("spec.priority is an integer");
        assert!(i32::try_from(p).is_ok(), "spec.priority is int32");
    }
    if let Some(selector) = spec.get("selector") {
        let selector = selector.as_object().expect("spec.selector is an object");
        assert!(selector.keys().all(|k| k == "matchLabels"), "{selector:?}");
        let labels = selector["matchLabels"]
            .as_object()
            .expect("matchLabels is an object");
        assert!(labels.len() <= 4096);
        for (k, v) in labels {
            let v = v.as_str().expect("a label value is a string");
            assert!(!k.is_empty() && !k.contains('*'), "label key {k:?}");
            assert!(v.len() <= 63 && !v.contains('*'), "label value {v:?}");
        }
    }
    if let Some(entries) = spec.get("match") {
        for entry in entries.as_array().expect("spec.match is an array") {
            let entry = entry.as_object().expect("a match is an object");
            assert!(
                entry.keys().all(|k| k == "mode" || k == "ports"),
                "{entry:?}"
            );
            if let Some(mode) = entry.get("mode") {
                let modes = ["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"];
                assert!(modes.contains(&mode.as_str().unwrap()), "mode {mode}");
            }
            let mut seen = std::collections::BTreeSet::new();
            for port in entry
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let n = port["number"]
                    .as_i64()
                    .expect("ports[].number is required, an integer");
                assert!((1..=65535).contains(&n), "port {n}");
                assert!(seen.insert(n), "ports are a map keyed by number: {n} twice");
            }
        }
    }
    assert!(
        spec.get("pluginConfig").is_none_or(Value::is_object),
        "spec.pluginConfig is an object"
    );
}

#[test]
fn istio_plugin_meets_the_crd_and_carries_the_script() {
    let dir = folder(
        "deploy-istio",
        &[
            ("nasty.rhai", NASTY_SCRIPT),
            ("module.wasm", "\0asm not really"),
        ],
    );
    let o = proxy_rhai(&[
        "deploy",
        "istio",
        &path(&dir, "nasty.rhai"),
        "--config",
        r#"{"greeting": "hi"}"#,
        "--url",
        "https://example.com/proxy_rhai.wasm",
        "--sha256",
        &path(&dir, "module.wasm"),
        "--selector",
        "istio=ingressgateway",
        "--selector",
        "app.kubernetes.io/name=gw",
        "--phase",
        "authz",
        "--priority",
        "10",
        "--mode",
        "SERVER",
        "--port",
        "8443",
        "--port",
        "80",
        "--port",
        "8443",
        "--fail-open",
        "--namespace",
        "edge",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let resource = parse(&stdout(&o));
    assert_istio_wasm_plugin(&resource);
    assert_eq!(
        resource["metadata"],
        json!({"name": "proxy-rhai", "namespace": "edge"})
    );
    let spec = &resource["spec"];
    assert_eq!(spec["url"], "https://example.com/proxy_rhai.wasm");
    assert_eq!(spec["sha256"], sha256_hex(b"\0asm not really"));
    assert_eq!(
        spec["selector"],
        json!({"matchLabels": {"istio": "ingressgateway", "app.kubernetes.io/name": "gw"}})
    );
    assert_eq!(spec["phase"], "AUTHZ");
    assert_eq!(spec["priority"], 10);
    assert_eq!(
        spec["match"],
        json!([{"mode": "SERVER", "ports": [{"number": 80}, {"number": 8443}]}])
    );
    assert_eq!(spec["failStrategy"], "FAIL_OPEN");
    assert_eq!(spec["type"], "HTTP");
    // Istio hands pluginConfig to the plugin as JSON text: the plugin's own configuration.
    assert_eq!(
        spec["pluginConfig"],
        json!({"script": NASTY_SCRIPT, "config": {"greeting": "hi"}})
    );
    let text = spec["pluginConfig"].to_string();
    proxy_rhai::config::PluginConfig::parse(text.as_bytes()).expect("the plugin takes it");
    if let Some(yaml) = parse_yaml_with_python(&stdout(&o)) {
        assert_eq!(yaml, resource);
    }

    // The defaults: the release image, every workload of the root namespace.
    let o = proxy_rhai(&["deploy", "istio", "scripts/hello.rhai"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let resource = parse(&stdout(&o));
    assert_istio_wasm_plugin(&resource);
    let spec = resource["spec"].as_object().unwrap();
    assert!(spec["url"].as_str().unwrap().starts_with("oci://"));
    assert_eq!(resource["metadata"]["namespace"], "istio-system");
    let keys: Vec<&str> = spec.keys().map(String::as_str).collect();
    assert_eq!(keys, ["pluginConfig", "type", "url"]);

    // What the CRD would refuse is refused here, in one line.
    for (args, phrase) in [
        (vec!["--url", "ftp://x/y.wasm"], "Istio's schemes"),
        (vec!["--sha256", "no/such/file"], "neither 64 hex digits"),
        (vec!["--selector", "app=*"], "--selector app=*"),
        (vec!["--selector", "novalue"], "--selector novalue"),
        (vec!["--phase", "LATE"], "give one of AUTHN, AUTHZ, STATS"),
        (
            vec!["--mode", "BOTH"],
            "give one of CLIENT, SERVER, CLIENT_AND_SERVER",
        ),
        (vec!["--port", "0"], "1..=65535"),
        (
            vec![
                "--plugin-config",
                r#"{"allow_on_headers_stop_iteration": true}"#,
            ],
            "Istio's WasmPlugin doesn't set Envoy's allow_on_headers_stop_iteration",
        ),
    ] {
        let mut all = vec!["deploy", "istio", "scripts/hello.rhai"];
        all.extend(args);
        refused(&all, phrase);
    }
}

/// Lowercase hex SHA-256 of `bytes`, by `sha256sum` (coreutils), to check ours.
fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn deploy_has_help() {
    for args in [
        &["deploy", "--help"][..],
        &["deploy", "envoy", "--help"],
        &["deploy", "higress", "--help"],
        &["deploy", "istio", "--help"],
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
