//! `allow_on_headers_stop_iteration` in the emulator: with the key (and so Envoy's option) a
//! body phase writes its message's headers and `content-length` stays exact; without it, the
//! write is a script error that says how to turn it on (`tests/e2e/held_headers.rs` measures
//! the same in Envoy).

use proxy_rhai::emulator::{Callout, Emulator, Reply, Request, Response};
use serde_json::json;

const SCRIPT: &str = r#"
fn on_request_headers() {
    set_context("op", get_request_header("x-op"));
    if get_context("op") == "callout" {
        return http_get("auth", "/token", [], 1000, |status, headers, body| {
            set_context("token", body);
        });
    }
}
fn on_request_body() {
    if get_context("op") == "body-callout" {
        return http_get("auth", "/token", [], 1000, |status, headers, body| {
            replace_request_body("from the callback");
            add_request_header("x-from-callback", "yes");
        });
    }
    replace_request_body("short");
    add_request_header("x-from-body", "yes");
    remove_request_header("x-drop");
    if get_context("token") != () { add_request_header("x-token", get_context("token")); }
}
fn on_response_body() {
    if get_response_header("x-fail") == "1" { throw "boom"; }
    replace_response_body("redacted");
    replace_response_header("x-redacted-count", "3");
}
"#;

fn plugin(held: bool) -> Emulator {
    let config = json!({"script": SCRIPT, "allow_on_headers_stop_iteration": held});
    let p = Emulator::new(&config.to_string()).expect("configures");
    p.add_cluster("auth");
    p
}

fn token(_: &Callout) -> Reply {
    Reply::Answer {
        status: 200,
        headers: vec![],
        body: b"t0k".to_vec(),
    }
}

#[test]
fn body_phases_write_their_headers_and_keep_content_length_exact() {
    let p = plugin(true);
    let request = Request::post("/", "a longer body").header("x-drop", "1");
    let o = p.run(&request, &mut Response::ok("a long response body"));
    assert!(o.script_errors().is_empty(), "{:?}", o.log);
    assert_eq!(o.upstream_header("x-from-body").as_deref(), Some("yes"));
    assert_eq!(o.upstream_header("x-drop"), None);
    assert_eq!(o.upstream_header("content-length").as_deref(), Some("5"));
    assert_eq!(o.upstream.as_ref().unwrap().body, b"short");
    assert_eq!(o.response_header("x-redacted-count").as_deref(), Some("3"));
    assert_eq!(o.response_header("content-length").as_deref(), Some("8"));
    assert_eq!(o.response.body, b"redacted");

    // In pieces, after a header phase's callout (the body waits for its answer).
    let mut request = Request::post("/", "abcdef").header("x-op", "callout");
    request.chunk_size = 2;
    let o = p.run_with(&request, &mut Response::ok("x"), &mut token);
    assert_eq!(o.upstream_header("x-token").as_deref(), Some("t0k"));
    assert_eq!(o.upstream_header("content-length").as_deref(), Some("5"));
    assert_eq!(o.upstream.as_ref().unwrap().body, b"short");

    // The body phase's own callout: its callback writes the body and the headers.
    let request = Request::post("/", "abc").header("x-op", "body-callout");
    let o = p.run_with(&request, &mut Response::ok("x"), &mut token);
    assert_eq!(o.upstream_header("x-from-callback").as_deref(), Some("yes"));
    assert_eq!(o.upstream_header("content-length").as_deref(), Some("17"));
    assert_eq!(o.upstream.as_ref().unwrap().body, b"from the callback");

    // A response the error policy answers: its headers had not gone, so it is a response.
    let o = p.run(
        &Request::get("/"),
        &mut Response::ok("x").header("x-fail", "1"),
    );
    assert_eq!(o.response.status, 500);
    assert!(o.response.local && !o.response.reset, "{:?}", o.response);
}

#[test]
fn without_the_key_a_body_phase_header_write_says_how_to_allow_it() {
    let p = plugin(false);
    let o = p.run(&Request::post("/", "body"), &mut Response::ok("x"));
    assert_eq!(o.response.status, 500);
    let errors = o.script_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(
            "add_request_header() is not available in on_request_body: the headers went on \
             before the body phase ran. To use them in on_request_body, the proxy must hold \
             them until then: set allow_on_headers_stop_iteration to true in Envoy's wasm \
             PluginConfig and in the plugin configuration (`proxy-rhai deploy envoy` sets \
             both; Istio's WasmPlugin and Higress can't). Or write the header in \
             on_request_headers, keeping what the body phase needs with set_context"
        ),
        "{errors:?}"
    );
    // The response side says the same of on_response_headers, and content-length is dropped.
    let p = Emulator::new(
        &json!({"script": SCRIPT, "error_policy": {"mode": "fail_open"}}).to_string(),
    )
    .unwrap();
    let o = p.run(
        &Request::get("/"),
        &mut Response::ok("a long response body"),
    );
    assert!(o.script_errors()[0].contains("write the header in on_response_headers"));
    assert_eq!(o.response_header("content-length"), None);
    assert_eq!(o.response.body, b"a long response body");
}

#[test]
fn chunk_phases_and_other_sides_never_get_the_headers() {
    // Streamed bodies go on piece by piece: their headers go first, with or without the key.
    let p = Emulator::new(
        &json!({
            "script": r#"fn on_request_chunk(chunk, last) { add_request_header("x", "1"); }
                         fn on_response_body() { add_request_header("x", "1"); }"#,
            "allow_on_headers_stop_iteration": true,
            "error_policy": {"mode": "fail_open"},
        })
        .to_string(),
    )
    .unwrap();
    let o = p.run(&Request::post("/", "body"), &mut Response::ok("x"));
    let errors = o.script_errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("not available in on_request_chunk: only in on_request_headers"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("not available in on_response_body: only in on_request_headers"),
        "{errors:?}"
    );
    // Without a body there is no body phase, and nothing is held.
    let p = plugin(true);
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert_eq!(o.upstream_header("x-from-body"), None);
    assert!(o.stalled.is_none());
}

/// Headers held by a `PAUSE` from the header phase go on when the trailers end a streamed
/// body (Envoy then calls the chunk function with `last`): `content-length` is settled for the
/// body the chunk function grew, on either side.
#[test]
fn headers_held_by_pause_go_on_at_the_trailers_without_a_stale_content_length() {
    let script = r#"
        fn on_request_headers() { return PAUSE; }
        fn on_request_chunk(chunk, last) { if last { append_request_body("|X"); } }
        fn on_response_headers() { return PAUSE; }
        fn on_response_chunk(chunk, last) { if last { append_response_body("|Y"); } }
    "#;
    let config = json!({"script": script, "allow_on_headers_stop_iteration": true});
    let p = Emulator::new(&config.to_string()).expect("configures");
    let mut request = Request::post("/", "hello").header("content-length", "5");
    request.trailers = vec![("x-t".into(), b"1".to_vec())];
    let mut response = Response::ok("world").header("content-length", "5");
    response.trailers = vec![("x-t".into(), b"2".to_vec())];
    let o = p.run(&request, &mut response);
    assert!(o.script_errors().is_empty(), "{:?}", o.log);
    let upstream = o.upstream.as_ref().expect("reached the upstream");
    assert_eq!(upstream.body, b"hello|X");
    assert_eq!(o.upstream_header("content-length"), None);
    assert_eq!(o.response.body, b"world|Y");
    assert_eq!(o.response_header("content-length"), None);
}
