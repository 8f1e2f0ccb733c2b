//! End-to-end (issue 23, items 5, 7 and 9) in a real Envoy (V8): bounds on host-side
//! resources (callouts, metric names, shared data), no configuration secret in the plugin's
//! own log lines, and the request id of an error in a callback after a resume.
//!
//! Build the plugin first (`tools/build-wasm.sh`, then `PROXY_RHAI_WASM=$PWD/target/proxy_rhai.wasm`).
//! Every test ends with `assert_healthy()`: the VM never failed.

mod support;

use support::Envoy;

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
