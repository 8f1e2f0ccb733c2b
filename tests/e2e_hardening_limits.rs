//! End-to-end (issue 23, items 5, 7 and 9) in a real Envoy (V8): bounds on host-side
//! resources (callouts, metric names, shared data), no configuration secret in the plugin's
//! own log lines, and the request id of an error in a callback after a resume.
//!
//! Build the plugin first (`tools/build-wasm.sh`, then `PROXY_RHAI_WASM=$PWD/target/proxy_rhai.wasm`).
//! Every test ends with `assert_healthy()`: the VM never failed.

mod support;

use serde_json::json;
use support::{assert_status, Envoy};

/// An error in a callout callback that runs after the script resumed the request is logged
/// with the request's id (it was `-`): Envoy gives `request.id` in the request headers phase
/// and the log phase only.
#[test]
fn an_error_after_a_resume_keeps_the_request_id() {
    let envoy = Envoy::with_script(
        r#"
        fn on_request_headers() {
            let op = get_request_header("x-op");
            if op == () { return; }
            http_get("callout", "/token", [], 2000, |status| {
                resume_http_request();
                if op == "throw" { throw "late failure after resume"; }
                http_get("callout", "/token", [], 2000, |status| {
                    throw "nested failure after resume";
                });
            });
        }
        "#,
    );
    for (op, message) in [
        ("throw", "late failure after resume"),
        ("nested", "nested failure after resume"),
    ] {
        let id = format!("rid-{op}");
        // The upstream answers after 300 ms: the nested callback runs while the stream lives.
        let _ = envoy.try_request(
            "GET",
            "/delay/300",
            &[("x-request-id", &id), ("x-op", op)],
            b"",
        );
        let line = envoy.wait_for_log(message);
        assert!(line.contains(&format!("(request {id})")), "{line}");
    }
    envoy.assert_healthy();
}

/// No secret of the configuration reaches a line the plugin logs: script errors that quote
/// it (in every kind of phase, and in `on_tick`), a refused callout, a refused configuration.
#[test]
fn no_configuration_secret_in_the_log() {
    const SECRET: &str = "sk_live_51Hx9QzTe2e";
    let envoy = Envoy::builder(json!({
        "script": r#"
            fn on_request_headers() {
                let c = config();
                switch get_request_header("x-op") {
                    "int" => parse_int(c.key),
                    "fn" => Fn(c.key).call(),
                    "cluster" => http_get(c.key, "/", [], 100, |s| {}),
                    "throw" => throw c.key,
                    "callback" => http_get("callout", "/token", [], 2000, |s| { parse_int(c.key); }),
                    "response" => set_context("op", "response"),
                    "log" => log_info(`the script logs it itself: ${c.key}`),
                    _ => {}
                }
            }
            fn on_response_headers() {
                if get_context("op") == "response" { parse_int(config().key); }
            }
            fn on_tick() { if shared_get("tick").version == 0 { shared_set("tick", "1", 0); parse_int(config().key); } }
        "#,
        "config": {"key": SECRET},
        "tick_period_ms": 100,
    }))
    .start();
    for op in ["int", "fn", "cluster", "throw", "callback", "response"] {
        let r = envoy.request("GET", "/", &[("x-op", op)], b"");
        assert_status(&r, 500);
        assert!(!r.text().contains(SECRET));
    }
    envoy.wait_for_log("script error in on_tick");
    let errors = envoy.plugin_log_lines("script error in ");
    assert_eq!(errors.len(), 7, "{errors:#?}");
    for line in &errors {
        assert!(line.contains("[redacted]"), "{line}");
    }
    let r = envoy.request("GET", "/", &[("x-op", "log")], b"");
    assert_status(&r, 200);
    envoy.wait_for_log("the script logs it itself");
    let with_secret: Vec<String> = envoy
        .log()
        .lines()
        .filter(|l| l.contains(SECRET))
        .map(str::to_string)
        .collect();
    assert_eq!(with_secret.len(), 1, "{with_secret:#?}");
    assert!(with_secret[0].contains("wasm log proxy-rhai: the script logs it itself"));
    envoy.assert_healthy();

    // A refused configuration: Envoy logs the reason and does not start.
    let log = Envoy::try_start(json!({
        "script": "parse_int(config().token); fn on_request_headers() {}",
        "config": {"token": SECRET},
    }))
    .err()
    .expect("refused");
    assert!(
        log.contains("configuration refused: script failed while loading"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "{log}");
}
