//! Body bindings: whole-body phases, the three writes Envoy supports, framing after a rewrite.

use proxy_rhai::emulator::{Emulator, Request, Response};
use serde_json::json;

fn plugin(script: &str) -> Emulator {
    Emulator::with_script(script, json!({})).expect("script configures")
}

#[test]
fn request_body_is_seen_whole_once_even_in_many_chunks() {
    let p = plugin(
        r#"fn on_request_body() { let b = get_request_body(); log_info(b.len()); replace_request_body(b.to_upper()); }"#,
    );
    let body: String = "abcdefghij".repeat(40_000); // 400 kB
    let mut request = Request::post("/", body.clone());
    request.chunk_size = 1000;
    let o = p.run(&request, &mut Response::ok(""));
    assert_eq!(o.log.len(), 1, "{:?}", o.log);
    assert_eq!(o.log[0].message, "400000");
    assert_eq!(o.upstream.unwrap().body, body.to_uppercase().into_bytes());
}

#[test]
fn append_prepend_replace_and_bytes() {
    let p = plugin(
        r#"fn on_request_body() {
        prepend_request_body("<");
        append_request_body(">");
        append_request_body(blob(1, 33));
        log_info(get_request_body());
        log_info(get_request_body_bytes().len());
    }"#,
    );
    let o = p.run(&Request::post("/", "mid"), &mut Response::ok(""));
    assert_eq!(o.upstream.as_ref().unwrap().body, b"<mid>!");
    assert_eq!(o.log[0].message, "<mid>!");
    assert_eq!(o.log[1].message, "6");
}

#[test]
fn rewriting_a_body_drops_the_stale_content_length() {
    let p = plugin(
        r#"fn on_request_body() { replace_request_body("much longer than before"); }
                      fn on_response_body() { replace_response_body("x"); }"#,
    );
    let o = p.run(
        &Request::post("/", "short"),
        &mut Response::ok("a long response body"),
    );
    let up = o.upstream.as_ref().unwrap();
    assert_eq!(up.body, b"much longer than before");
    assert_eq!(o.upstream_header("content-length"), None);
    assert_eq!(o.response.body, b"x");
    assert_eq!(o.response_header("content-length"), None);
}

#[test]
fn content_length_stays_when_the_script_cannot_change_the_body() {
    // Read, not written: both keep their length.
    let p = plugin(
        r#"fn on_request_body() { log_info(get_request_body()); }
        fn on_response_body() { log_info(get_response_body()); }"#,
    );
    let o = p.run(&Request::post("/", "12345"), &mut Response::ok("abc"));
    assert_eq!(o.upstream_header("content-length").as_deref(), Some("5"));
    assert_eq!(o.response_header("content-length").as_deref(), Some("3"));
    // A writer reached through a name known only at run time: either body may change.
    let p = plugin(
        r#"fn on_request_body() { log_info(get_request_body()); }
        fn on_response_body() { call(Fn(get_context("writer")), "x"); }
        fn on_request_headers() { set_context("writer", get_request_header("x-writer")); }"#,
    );
    let request = Request::post("/", "12345").header("x-writer", "replace_response_body");
    let o = p.run(&request, &mut Response::ok("abc"));
    assert_eq!(o.upstream_header("content-length"), None);
    assert_eq!(o.response_header("content-length"), None);
    assert_eq!(o.response.body, b"x");
}

#[test]
fn content_length_stays_when_no_body_phase_is_defined() {
    let p = plugin(r#"fn on_request_headers() { }"#);
    let o = p.run(&Request::post("/", "12345"), &mut Response::ok("abc"));
    assert_eq!(o.upstream_header("content-length").as_deref(), Some("5"));
    assert_eq!(o.response_header("content-length").as_deref(), Some("3"));
}

#[test]
fn response_body_table() {
    let p = plugin(
        r#"fn on_response_body() {
        let b = get_response_body();
        replace_response_body("[" + b + "]");
        prepend_response_body(blob(1, 62));
        append_response_body("<");
        log_info(get_response_body_bytes().len());
    }"#,
    );
    let mut response = Response::ok("upstream");
    response.chunk_size = 3;
    let o = p.run(&Request::get("/"), &mut response);
    assert_eq!(o.response.body, b">[upstream]<");
    assert_eq!(o.log[0].message, "12");
}

#[test]
fn binary_bodies_are_exact_as_bytes_and_lossy_as_strings() {
    let p = plugin(
        r#"fn on_request_body() {
        let bytes = get_request_body_bytes();
        log_info(bytes.len());
        log_info(get_request_body());
        bytes.push(0);
        replace_request_body(bytes);
    }"#,
    );
    let o = p.run(
        &Request::post("/", vec![0xff, 0x00, 0x41]),
        &mut Response::ok(""),
    );
    assert_eq!(o.log[0].message, "3");
    assert_eq!(o.log[1].message, "\u{fffd}\u{0}A");
    assert_eq!(o.upstream.unwrap().body, vec![0xff, 0x00, 0x41, 0x00]);
}

#[test]
fn a_body_is_text_only_within_the_string_size_limit() {
    let p = Emulator::new(
        &json!({
            "script": "fn on_request_body() { log_info(get_request_body()); }",
            "limits": {"max_string_size": 1024},
        })
        .to_string(),
    )
    .expect("script configures");
    let run = |body: Vec<u8>| p.run(&Request::post("/", body), &mut Response::ok(""));
    // Each invalid sequence is one U+FFFD, as `String::from_utf8_lossy` makes it: a cut-short
    // `€` (e2 82), a cut-short emoji (f0 9f 98), a lone ff.
    let mixed = vec![0xe2, 0x82, b'A', 0xf0, 0x9f, 0x98, 0xff, b'B'];
    let o = run(mixed.clone());
    assert_eq!(o.log[0].message, String::from_utf8_lossy(&mixed));
    // 341 bytes of ff are 1,023 bytes of text; 342 are 1,026, over the limit.
    let o = run(vec![0xff; 341]);
    assert_eq!(o.log[0].message, "\u{fffd}".repeat(341));
    let o = run(vec![0xff; 342]);
    assert!(
        o.script_errors()[0].contains(
            "get_request_body(): the text would be 1026 bytes, more than limits.max_string_size (1024)"
        ),
        "{:?}",
        o.log
    );
}

#[test]
fn body_phase_does_not_run_without_a_body_and_body_functions_fail_elsewhere() {
    let p = plugin(r#"fn on_request_body() { log_info("ran"); }"#);
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert!(o.log.is_empty());

    let p = plugin(r#"fn on_request_headers() { get_request_body(); }"#);
    let o = p.run(&Request::post("/", "x"), &mut Response::ok(""));
    assert!(o.script_errors()[0].contains(
        "get_request_body() is not available in on_request_headers: only in on_request_body"
    ));
}

#[test]
fn body_over_the_plugin_limit_is_refused() {
    let p = Emulator::new(&json!({
        "script": "fn on_request_body() { log_info(\"ran\"); } fn on_response_body() { log_info(\"ran\"); }",
        "limits": {"max_body_size": 1000}
    }).to_string()).unwrap();
    let mut big = Request::post("/", vec![b'a'; 5000]);
    big.chunk_size = 500;
    let o = p.run(&big, &mut Response::ok(""));
    assert_eq!(o.response.status, 413);
    assert!(o.upstream.is_none());
    assert!(o.log.iter().all(|l| l.message != "ran"));

    let mut big = Response::ok(vec![b'a'; 5000]);
    big.chunk_size = 500;
    let o = p.run(&Request::get("/"), &mut big);
    assert!(
        o.response.reset,
        "the response headers went out: the stream can only be reset"
    );
}

#[test]
fn body_over_envoys_buffer_limit_is_refused_by_envoy() {
    let mut p = plugin(r#"fn on_request_body() { log_info("ran"); }"#);
    p.buffer_limit = 1000;
    let mut big = Request::post("/", vec![b'a'; 5000]);
    big.chunk_size = 600;
    let o = p.run(&big, &mut Response::ok(""));
    assert_eq!(o.response.status, 413);
    assert!(o.log.is_empty());
}

#[test]
fn request_trailers_end_the_body() {
    let p = plugin(r#"fn on_request_body() { append_request_body("!"); }"#);
    let mut request = Request::post("/", "abc");
    request.trailers.push(("x-checksum".into(), b"1".to_vec()));
    let o = p.run(&request, &mut Response::ok(""));
    assert_eq!(o.upstream.unwrap().body, b"abc!");
}

/// An upgraded stream (websocket, CONNECT) never ends while the tunnel is open: its bytes pass
/// through untouched, and the body phases are not called for it, in either direction.
#[test]
fn upgraded_streams_pass_the_body_phases() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() { add_request_header("x-seen", "1"); }
           fn on_request_body() { replace_request_body("changed"); }
           fn on_response_body() { replace_response_body("changed"); }"#,
        json!({}),
    )
    .unwrap();
    let websocket = Request::new("GET", "/ws", b"frame".to_vec())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket");
    let connect = Request::new("CONNECT", "/", b"tunnel".to_vec());
    for (request, sent) in [(websocket, "frame"), (connect, "tunnel")] {
        let o = p.run(&request, &mut Response::ok("back"));
        assert!(o.script_errors().is_empty(), "{:?}", o.log);
        assert_eq!(o.upstream_header("x-seen").as_deref(), Some("1"));
        assert_eq!(o.upstream.unwrap().body, sent.as_bytes());
        assert_eq!(o.response.body, b"back");
    }
    let o = p.run(&Request::post("/", "plain"), &mut Response::ok("back"));
    assert_eq!(o.upstream.unwrap().body, b"changed");
    assert_eq!(o.response.body, b"changed");
}
