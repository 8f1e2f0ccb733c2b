//! The gateway features: Higress rules, shared data across workers, metrics in Envoy's stats,
//! properties, trailers, `on_log`, `on_tick`, and the filter `proxy-rhai deploy envoy` prints,
//! loaded by Envoy as YAML.

use std::path::Path;
use std::process::Command;
use std::thread;

use serde_json::json;

use crate::support::{assert_status, Envoy};

// ---------------------------------------------------------------------------------------------
// Higress rules
// ---------------------------------------------------------------------------------------------

const GLOBAL_SCRIPT: &str = r#"
fn on_request_headers() {
    add_request_header("x-which", "global-script:" + config().label);
}
"#;

const RULE_SCRIPT: &str = r#"
fn on_request_headers() {
    add_request_header("x-which", "rule-script:" + config().label);
}
fn on_response_headers() {
    add_response_header("x-rule-script", "ran");
}
"#;

#[test]
fn higress_rules_choose_config_and_script_by_domain_route_and_service() {
    let envoy = Envoy::builder(json!({
        "script": GLOBAL_SCRIPT,
        "config": {"label": "global"},
        "_rules_": [
            {"_match_domain_": ["*.example.com"], "config": {"label": "domain-suffix"}},
            {"_match_domain_": ["api.*", "exact.org"], "config": {"label": "domain-other"}},
            {"_match_route_": ["r-special"], "script": RULE_SCRIPT, "config": {"label": "route"}},
            {"_match_route_prefix_": ["r-pre"], "config": {"label": "route-prefix"}},
            {"_match_service_": ["svc-b"], "config": {"label": "service"}},
            // Istio's cluster names: `outbound|PORT||NAME`.
            {"_match_service_": ["svc-c.default.svc.cluster.local:8080"], "config": {"label": "istio-service"}},
        ]
    }))
    .upstream_alias("svc-b")
    .upstream_alias("outbound|8080||svc-c.default.svc.cluster.local")
    .upstream_alias("outbound|9090||svc-c.default.svc.cluster.local")
    .route("r-special", "/special", "upstream")
    .route("r-prefixed", "/prefixed", "upstream")
    .route("r-svc", "/svc", "svc-b")
    .route("r-istio", "/istio", "outbound|8080||svc-c.default.svc.cluster.local")
    .route("r-istio-other-port", "/other-port", "outbound|9090||svc-c.default.svc.cluster.local")
    .start();

    let which = |host: &str, path: &str| {
        let r = envoy.request("GET", path, &[("host", host)], b"");
        assert_status(&r, 200);
        let echo = r.echo();
        assert_eq!(echo.path, path);
        (
            echo.header("x-which").unwrap_or("(none)").to_string(),
            r.header("x-rule-script").is_some(),
        )
    };
    let cases = [
        // (host, path, x-which, the rule's own script ran)
        (
            "www.example.com",
            "/x",
            "global-script:domain-suffix",
            false,
        ),
        (
            "www.example.com:8080",
            "/x",
            "global-script:domain-suffix",
            false,
        ),
        (
            "WWW.Example.COM",
            "/x",
            "global-script:domain-suffix",
            false,
        ),
        ("api.other.net", "/x", "global-script:domain-other", false),
        ("exact.org:443", "/x", "global-script:domain-other", false),
        ("localhost", "/special/1", "rule-script:route", true),
        // The first matching rule wins: the domain rule comes before the route rule.
        (
            "www.example.com",
            "/special/1",
            "global-script:domain-suffix",
            false,
        ),
        (
            "localhost",
            "/prefixed/1",
            "global-script:route-prefix",
            false,
        ),
        ("localhost", "/svc/1", "global-script:service", false),
        (
            "localhost",
            "/istio/1",
            "global-script:istio-service",
            false,
        ),
        ("localhost", "/other-port/1", "global-script:global", false),
        // No rule: the global config.
        ("example.com", "/x", "global-script:global", false),
        ("localhost", "/x", "global-script:global", false),
    ];
    for (host, path, expected, rule_script) in cases {
        assert_eq!(
            which(host, path),
            (expected.to_string(), rule_script),
            "host {host}, path {path}"
        );
    }
    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Shared data and metrics across workers
// ---------------------------------------------------------------------------------------------

const COUNTER_SCRIPT: &str = r#"
// Runs once per VM (one per worker) at configure time: create the key if nobody has. (A set
// with version 0 is unconditional, so the counter itself must never be written with it.)
if shared_get("hits").version == 0 { shared_set("hits", "0", 0); }

fn on_request_headers() {
    if get_request_header("x-op") == "read" {
        let v = shared_get("hits");
        send_http_response(200, [["x-hits", v.value], ["x-version", `${v.version}`]], ());
        return;
    }
    let tries = 0;
    loop {
        tries += 1;
        let current = shared_get("hits");
        let next = parse_int(current.value) + 1;
        if shared_set("hits", `${next}`, current.version) { break; }
        if tries >= 100000 { throw "the CAS loop gave up"; }
    }
    increment_counter("requests_counted", 1);
    if tries > 1 { increment_counter("cas_retries", tries - 1); }
    send_http_response(200, [["x-tries", `${tries}`]], ());
}
"#;

#[test]
fn shared_counter_across_workers_loses_no_update_and_metrics_show_in_stats() {
    const WORKERS: u32 = 4;
    const CLIENTS: usize = 40;
    const PER_CLIENT: usize = 10;
    const N: usize = CLIENTS * PER_CLIENT;
    let envoy = Envoy::builder(json!({ "script": COUNTER_SCRIPT }))
        .concurrency(WORKERS)
        .start();
    let tries: usize = thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let envoy = &envoy;
                s.spawn(move || {
                    let mut tries = 0;
                    for i in 0..PER_CLIENT {
                        // A new connection each time: the kernel spreads them over the workers.
                        let r = envoy.get(&format!("/count/{c}/{i}"));
                        assert_status(&r, 200);
                        tries += r.header("x-tries").unwrap().parse::<usize>().unwrap();
                    }
                    tries
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let r = envoy.request("GET", "/count/read", &[("x-op", "read")], b"");
    assert_status(&r, 200);
    assert_eq!(
        r.header("x-hits"),
        Some(N.to_string().as_str()),
        "lost updates: {r:?}"
    );

    // The counters, as Envoy's stats show them (one value for all workers).
    assert_eq!(
        envoy.wait_for_stat("wasmcustom.requests_counted", |v| v as usize >= N),
        N as u64
    );
    let retries = envoy.stat("wasmcustom.cas_retries").unwrap_or(0);
    assert_eq!(retries as usize, tries - N, "retries counted");

    // The requests were spread over several workers (each with its own VM): the listener's
    // `listener.ADDRESS.worker_N.downstream_cx_total`.
    let per_worker = envoy
        .admin_request("GET", "/stats?filter=worker_[0-9]+.downstream_cx_total")
        .expect("admin /stats")
        .text();
    let busy_workers = per_worker
        .lines()
        .filter(|l| l.starts_with("listener.") && !l.ends_with(": 0"))
        .count();
    assert!(
        busy_workers >= 2,
        "only {busy_workers} worker(s) served: the test did not exercise several VMs:\n{per_worker}"
    );
    eprintln!("{N} increments over {busy_workers} workers, {retries} CAS retries");
    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Properties, trailers, on_log, on_tick, the script error counter
// ---------------------------------------------------------------------------------------------

const GATEWAY_SCRIPT: &str = r#"
fn on_tick() {
    increment_counter("ticks", 1);
}

fn on_request_headers() {
    let op = get_request_header("x-op");
    set_context("op", op);
    if op == "deny" {
        send_http_response(403, [], "denied");
        return;
    }
    if op == "throw" { throw "counted error"; }
    add_request_header("x-prop-path", get_property("request.path"));
    add_request_header("x-prop-path-array", get_property(["request", "path"]));
    add_request_header("x-prop-method", get_property("request.method"));
    add_request_header("x-prop-source", get_property("source.address"));
    add_request_header("x-prop-route", `${get_property("xds.route_name")}`);
    add_request_header("x-prop-cluster", `${get_property("xds.cluster_name")}`);
    add_request_header("x-has-body", `${has_request_body()}`);
}

fn on_request_trailers() {
    add_request_trailer("x-plugin-trailer", `saw ${get_request_trailer("x-client-trailer")}`);
    replace_request_trailer("x-replace-me", "replaced");
    remove_request_trailer("x-remove-me");
}

fn on_response_headers() {
    add_response_header("x-response-code", `${get_property("response.code")}`);
}

fn on_response_trailers() {
    let all = get_response_trailers();
    add_response_trailer("x-plugin-trailer", `saw ${get_response_trailer("x-upstream-trailer")} of ${all.len()}`);
    replace_response_trailer("x-replace-me", "replaced");
    remove_response_trailer("x-remove-me");
}

fn on_log() {
    increment_counter("logged", 1);
    log_info(`access: ${get_request_header(":method")} ${get_property("request.path")} -> ${get_property("response.code")} (:status ${get_response_header(":status")}, op ${get_context("op") ?? "none"})`);
}
"#;

#[test]
fn properties_trailers_on_log_and_on_tick() {
    let envoy = start_gateway();

    // Properties in on_request_headers.
    let r = envoy.request("GET", "/props/one?q=1", &[], b"");
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-prop-path"), Some("/props/one?q=1"));
    assert_eq!(echo.header("x-prop-path-array"), Some("/props/one?q=1"));
    assert_eq!(echo.header("x-prop-method"), Some("GET"));
    let source = echo.header("x-prop-source").unwrap_or("");
    let port = source.strip_prefix("127.0.0.1:").map(str::parse::<u16>);
    assert!(matches!(port, Some(Ok(_))), "source.address = {source:?}");
    assert_eq!(echo.header("x-prop-route"), Some("r-props"));
    assert_eq!(echo.header("x-prop-cluster"), Some("upstream"));
    assert_eq!(echo.header("x-has-body"), Some("false"));
    assert_eq!(r.header("x-response-code"), Some("200"));
    // on_log: both header maps and the final status.
    envoy.wait_for_log("access: GET /props/one?q=1 -> 200 (:status 200, op none)");

    // A local answer is logged with its status.
    let r = envoy.request("GET", "/props/deny", &[("x-op", "deny")], b"");
    assert_status(&r, 403);
    envoy.wait_for_log("access: GET /props/deny -> 403 (:status 403, op deny)");
    // So is an upstream error status.
    let r = envoy.get("/status/503");
    assert_status(&r, 503);
    assert_eq!(r.header("x-response-code"), Some("503"));
    envoy.wait_for_log("access: GET /status/503 -> 503 (:status 503, op none)");

    // Request trailers: read, added, replaced and removed before the upstream gets them.
    let r = envoy.request_with_trailers(
        "POST",
        "/props/trailers",
        &[],
        b"body",
        &[
            ("x-client-trailer", "from-client"),
            ("x-replace-me", "original"),
            ("x-remove-me", "gone"),
        ],
    );
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.body, "body");
    assert_eq!(echo.header("x-has-body"), Some("true"));
    let trailers = &echo.raw["trailers"];
    let trailer = |name: &str| -> Vec<&str> {
        trailers
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p[0] == name)
                    .map(|p| p[1].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        trailer("x-client-trailer"),
        ["from-client"],
        "trailers upstream: {trailers}"
    );
    assert_eq!(
        trailer("x-plugin-trailer"),
        ["saw from-client"],
        "{trailers}"
    );
    assert_eq!(trailer("x-replace-me"), ["replaced"], "{trailers}");
    assert!(trailer("x-remove-me").is_empty(), "{trailers}");

    // Response trailers: the same, seen by the client.
    let r = envoy
        .get("/trailers?x-upstream-trailer=from-upstream&x-replace-me=original&x-remove-me=gone");
    assert_status(&r, 200);
    let get = |name: &str| -> Vec<&str> {
        r.trailers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        get("x-upstream-trailer"),
        ["from-upstream"],
        "trailers: {:?}",
        r.trailers
    );
    assert_eq!(
        get("x-plugin-trailer"),
        ["saw from-upstream of 3"],
        "{:?}",
        r.trailers
    );
    assert_eq!(get("x-replace-me"), ["replaced"], "{:?}", r.trailers);
    assert!(get("x-remove-me").is_empty(), "{:?}", r.trailers);

    // on_log ran for each request (counted), and on_tick keeps counting.
    envoy.wait_for_stat("wasmcustom.logged", |v| v >= 5);
    let ticks = envoy.wait_for_stat("wasmcustom.ticks", |v| v >= 1);
    envoy.wait_for_stat("wasmcustom.ticks", |v| v >= ticks + 3);

    // A script error is counted in the stats.
    let before = envoy
        .stat("wasmcustom.proxy_rhai_script_errors")
        .unwrap_or(0);
    let r = envoy.request("GET", "/props/throw", &[("x-op", "throw")], b"");
    assert_status(&r, 500);
    envoy.wait_for_stat("wasmcustom.proxy_rhai_script_errors", |v| v == before + 1);

    envoy.assert_healthy();
}

/// [`GATEWAY_SCRIPT`] with a 100 ms tick, trailers on, and the route `r-props`.
fn start_gateway() -> Envoy {
    Envoy::builder(json!({ "script": GATEWAY_SCRIPT, "tick_period_ms": 100 }))
        .route("r-props", "/props", "upstream")
        .enable_trailers()
        .start()
}

// ---------------------------------------------------------------------------------------------
// `proxy-rhai deploy envoy`, loaded by Envoy
// ---------------------------------------------------------------------------------------------

/// What the deployed script answers: escapes of every kind, non-ASCII, and characters YAML
/// would fold or refuse if they were not escaped (NEL, LS, DEL), raw in the script's source.
const DEPLOYED_ANSWER: &str =
    "line 1\nline 2 \"quoted\" \\ back\\slash\t${not interpolated} é😀 NEL:\u{85} LS:\u{2028} DEL:\u{7f}";

#[test]
fn deploy_envoy_output_runs_in_envoy() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_gateway_deploy");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The answer as a Rhai string literal: escapes where Rhai needs them, the rest raw.
    let literal = DEPLOYED_ANSWER
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .replace('\t', "\\t");
    let script = format!(
        "// Deployed by `proxy-rhai deploy envoy`: \"quotes\", \\ and é 😀\r\n\
         fn on_request_headers() {{\n\
         \tif get_request_header(\"x-op\") == \"answer\" {{\n\
         \t\tsend_http_response(200, [[\"x-greeting\", config().greeting]], \"{literal}\");\n\
         \t}} else {{\n\
         \t\tadd_request_header(\"x-greeting\", config().greeting);\n\
         \t}}\n\
         }}\n\
         fn on_response_body() {{ add_response_header(\"x-from-body\", \"yes\"); }}\n"
    );
    let script_path = dir.join("deployed.rhai");
    std::fs::write(&script_path, &script).unwrap();
    let wasm = crate::support::wasm_path();
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-rhai"))
        .args(["deploy", "envoy"])
        .arg(&script_path)
        .args(["--config", r#"{"greeting": "hé \"you\""}"#])
        .arg("--wasm")
        .arg(&wasm)
        .output()
        .expect("proxy-rhai runs");
    assert!(
        out.status.success(),
        "deploy envoy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let filter = String::from_utf8(out.stdout).unwrap();

    // Envoy reads its bootstrap, this text spliced in, as YAML.
    let envoy = Envoy::builder(json!({ "script": "unused" }))
        .http_filter_text(&filter)
        .start();
    let r = envoy.request("GET", "/deployed", &[], b"");
    assert_status(&r, 200);
    assert_eq!(r.echo().header("x-greeting"), Some("hé \"you\""));
    // The filter sets allow_on_headers_stop_iteration, and the plugin's key with it.
    assert_eq!(r.header("x-from-body"), Some("yes"));
    let r = envoy.request("GET", "/deployed/answer", &[("x-op", "answer")], b"");
    assert_status(&r, 200);
    assert_eq!(r.header("x-greeting"), Some("hé \"you\""));
    assert_eq!(r.text(), DEPLOYED_ANSWER);
    assert_eq!(envoy.upstream.hits("/deployed/answer"), 0);
    envoy.assert_healthy();
}
