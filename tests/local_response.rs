//! send_http_response, PAUSE, and how a phase's return value drives the stream.

use proxy_rhai::emulator::{Emulator, Request, Response};
use serde_json::json;

fn plugin(script: &str) -> Emulator {
    Emulator::with_script(script, json!({})).expect("script configures")
}

#[test]
fn local_response_from_request_headers_with_pairs_or_map() {
    let p = plugin(
        r#"fn on_request_headers() {
        if get_request_header(":path") == "/pairs" { send_http_response(403, [["x-why", "no"], ["x-why", "never"]], "denied"); }
        else { send_http_response(401, #{"www-authenticate": "Basic"}, blob(3, 65)); }
    }
    fn on_response_headers() { log_info("must not run for a local response"); }"#,
    );
    let o = p.run(&Request::get("/pairs"), &mut Response::ok("upstream"));
    assert!(o.upstream.is_none());
    assert!(o.response.local);
    assert_eq!(o.response.status, 403);
    assert_eq!(o.response_header("x-why").as_deref(), Some("no,never"));
    assert_eq!(
        o.response_header("content-type").as_deref(),
        Some("text/plain")
    );
    assert_eq!(o.response.body, b"denied");
    assert!(o.log.is_empty());

    let o = p.run(&Request::get("/map"), &mut Response::ok("upstream"));
    assert_eq!(o.response.status, 401);
    assert_eq!(
        o.response_header("www-authenticate").as_deref(),
        Some("Basic")
    );
    assert_eq!(o.response.body, b"AAA");
}

#[test]
fn local_response_from_request_body_and_response_headers() {
    let p = plugin(
        r#"fn on_request_body() { if get_request_body() == "bad" { send_http_response(400, [], "bad body"); } }
                      fn on_response_headers() { if get_response_header(":status") == "500" { send_http_response(503, [], "upstream broke"); } }"#,
    );
    let o = p.run(&Request::post("/", "bad"), &mut Response::ok(""));
    assert_eq!(
        (
            o.response.status,
            o.response.body.as_slice(),
            o.upstream.is_none()
        ),
        (400, &b"bad body"[..], true)
    );
    let o = p.run(&Request::post("/", "good"), &mut Response::new(500, "oops"));
    assert_eq!(
        (o.response.status, o.response.body.as_slice()),
        (503, &b"upstream broke"[..])
    );
    assert!(o.upstream.is_some());
}

#[test]
fn local_response_is_refused_in_the_response_body_phase_and_twice() {
    let p = plugin(r#"fn on_response_body() { send_http_response(418, [], "teapot"); }"#);
    let o = p.run(&Request::get("/"), &mut Response::ok("x"));
    assert!(
        o.script_errors()[0].contains("send_http_response() is not available in on_response_body")
    );

    let p = plugin(
        r#"fn on_request_headers() { send_http_response(403, [], "a"); send_http_response(404, [], "b"); }"#,
    );
    let o = p.run(&Request::get("/"), &mut Response::ok("x"));
    assert!(o.script_errors()[0].contains("already sent"), "{:?}", o.log);
    assert_eq!(
        o.response.status, 500,
        "the call failed: the error policy answers, not the call's first answer"
    );
}

#[test]
fn bad_status_is_a_script_error() {
    let p = plugin(r#"fn on_request_headers() { send_http_response(99, [], ""); }"#);
    let o = p.run(&Request::get("/"), &mut Response::ok("x"));
    assert!(o.script_errors()[0].contains("status 99 is not in 200..=599"));
}

#[test]
fn pause_without_anything_pending_stalls_and_other_values_continue() {
    let p = plugin(
        r#"fn on_request_headers() { if get_request_header(":path") == "/stop" { return PAUSE; } if get_request_header(":path") == "/c" { return CONTINUE; } 42 }"#,
    );
    let o = p.run(&Request::get("/stop"), &mut Response::ok("x"));
    assert!(o.stalled.is_some());
    assert!(o.upstream.is_none());
    for path in ["/c", "/other"] {
        let o = p.run(&Request::get(path), &mut Response::ok("x"));
        assert_eq!(o.response.status, 200);
        assert!(o.stalled.is_none());
    }
}

#[test]
fn undefined_phases_never_enter_the_script() {
    let p = plugin(r#"fn on_response_headers() { add_response_header("x", "1"); }"#);
    let o = p.run(&Request::post("/", "body"), &mut Response::ok("resp"));
    let calls: Vec<&String> = o.trace.iter().filter(|l| !l.starts_with("-- ")).collect();
    assert_eq!(
        calls,
        ["add_header(HttpResponseHeaders, \"x\", \"1\")"],
        "no host call but the script's own"
    );
}
