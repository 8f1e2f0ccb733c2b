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

/// A `PAUSE` from the header phase, with no callout, holds the whole message until the proxy's
/// timeouts, whatever the body's mode: with allow_on_headers_stop_iteration the body and the
/// trailers still come to the plugin, and nothing lets the headers go (`tests/e2e/held_headers.rs`
/// sees the same in Envoy).
#[test]
fn a_pause_from_the_header_phase_holds_the_whole_message() {
    for (body_phase, side) in [
        (
            "fn on_request_chunk(chunk, last) { if last { append_request_body(\"|X\"); } }",
            "request",
        ),
        (
            "fn on_request_body() { append_request_body(\"|X\"); }",
            "request",
        ),
        (
            "fn on_response_chunk(chunk, last) { if last { append_response_body(\"|Y\"); } }",
            "response",
        ),
        (
            "fn on_response_body() { append_response_body(\"|Y\"); }",
            "response",
        ),
    ] {
        let script = format!("fn on_{side}_headers() {{ return PAUSE; }} {body_phase}");
        let config = json!({"script": script, "allow_on_headers_stop_iteration": true});
        let p = Emulator::new(&config.to_string()).expect("configures");
        let mut request = Request::post("/", "hello").header("content-length", "5");
        request.trailers = vec![("x-t".into(), b"1".to_vec())];
        let mut response = Response::ok("world").header("content-length", "5");
        response.trailers = vec![("x-t".into(), b"2".to_vec())];
        let o = p.run(&request, &mut response);
        assert!(o.script_errors().is_empty(), "{:?}", o.log);
        assert!(o.stalled.is_some(), "{script}: {:?}", o.response);
        assert_eq!(o.upstream.is_some(), side == "response", "{script}");
    }
}

/// Envoy delivers the body while a header phase's callout holds the headers (with
/// allow_on_headers_stop_iteration), and the answer may come before, between or after the
/// body's pieces (`callout_delay_chunks`). In every order, and whatever mode the callback
/// chooses, each byte reaches the upstream once, in order, with a `content-length` that fits
/// the body or none.
#[test]
fn a_header_callout_answered_among_the_body_pieces_keeps_the_framing() {
    let body_phases = [
        r#"fn on_request_body() { append_request_body("|B"); }"#,
        r#"fn on_request_chunk(chunk, last) { replace_request_body(`[${chunk}]`); }"#,
        r#"fn on_request_body() { append_request_body("|B"); }
           fn on_request_chunk(chunk, last) { replace_request_body(`[${chunk}]`); }"#,
    ];
    let choices = [
        "",
        "skip_request_body();",
        "buffer_request_body();",
        "stream_request_body();",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for body_phase in body_phases {
        for choice in choices {
            let defines = |phase: &str| body_phase.contains(phase);
            if choice.starts_with("stream") && !defines("chunk")
                || choice.starts_with("buffer") && !defines("on_request_body")
            {
                continue; // a script error, tested elsewhere
            }
            for resume in ["", "resume_http_request();"] {
                let script = format!(
                    r#"fn on_request_headers() {{
                        http_get("auth", "/token", [], 1000, |status| {{ {choice} {resume} }});
                    }}
                    {body_phase}"#
                );
                let config = json!({"script": script, "allow_on_headers_stop_iteration": true});
                let mut p = Emulator::new(&config.to_string()).expect("configures");
                p.add_cluster("auth");
                for delay in 0..4 {
                    p.callout_delay_chunks = delay;
                    let mut request = Request::post("/", "aaabbbccc").header("content-length", "9");
                    request.chunk_sizes = vec![3, 3, 3];
                    let o = p.run_with(&request, &mut Response::ok("x"), &mut token);
                    let case = format!("{script} (answered after {delay} pieces)");
                    assert!(o.script_errors().is_empty(), "{case}: {:?}", o.log);
                    let up = o
                        .upstream
                        .as_ref()
                        .unwrap_or_else(|| panic!("{case}: stalled"));
                    let body = String::from_utf8_lossy(&up.body).into_owned();
                    assert_eq!(
                        body.replace(['[', ']'], "").trim_end_matches("|B"),
                        "aaabbbccc",
                        "{case}"
                    );
                    if let Some(length) = o.upstream_header("content-length") {
                        assert_eq!(length, up.body.len().to_string(), "{case}: {body}");
                    }
                    seen.insert(body);
                }
            }
        }
    }
    // The cases went through the three modes.
    assert!(seen.contains("aaabbbccc|B"), "{seen:?}");
    assert!(seen.contains("aaabbbccc"), "{seen:?}");
    assert!(seen.iter().any(|b| b.starts_with("[aaa")), "{seen:?}");
}
