//! Header bindings against the emulator: every row of the header table, both directions.

use proxy_rhai::emulator::{Emulator, Request, Response};
use serde_json::json;

fn plugin(script: &str) -> Emulator {
    Emulator::with_script(script, json!({})).expect("script configures")
}

fn logged(outcome: &proxy_rhai::emulator::Outcome) -> Vec<String> {
    outcome.log.iter().map(|l| l.message.clone()).collect()
}

#[test]
fn get_request_headers_keeps_order_and_duplicates() {
    let p = plugin(r#"fn on_request_headers() { log_info(get_request_headers()); }"#);
    let o = p.run(
        &Request::get("/a")
            .header("x-b", "1")
            .header("X-A", "2")
            .header("x-b", "3"),
        &mut Response::ok(""),
    );
    assert_eq!(
        logged(&o),
        [
            r#"[[":authority", "example.com"], [":path", "/a"], [":method", "GET"], [":scheme", "http"], ["x-b", "1"], ["x-a", "2"], ["x-b", "3"], ["x-forwarded-proto", "http"], ["x-request-id", "00000000-0000-4000-8000-000000000001"]]"#
        ]
    );
}

#[test]
fn get_request_header_is_case_insensitive_gives_the_first_value_and_is_unit_when_absent() {
    let p = plugin(
        r#"fn on_request_headers() {
        log_info(get_request_header("X-B"));
        log_info(type_of(get_request_header("nope")));
        log_info(get_request_header(":path"));
    }"#,
    );
    let o = p.run(
        &Request::get("/p").header("x-b", "1").header("x-b", "2"),
        &mut Response::ok(""),
    );
    assert_eq!(logged(&o), ["1", "()", "/p"]);
}

#[test]
fn add_replace_remove_request_headers() {
    let p = plugin(
        r#"fn on_request_headers() {
        add_request_header("x-dup", "2");
        replace_request_header("x-one", "new");
        replace_request_header("x-added", "yes");
        remove_request_header("x-gone");
        remove_request_header("x-never-there");
    }"#,
    );
    let o = p.run(
        &Request::get("/")
            .header("x-dup", "1")
            .header("x-one", "a")
            .header("x-one", "b")
            .header("x-gone", "bye"),
        &mut Response::ok(""),
    );
    assert_eq!(o.upstream_header("x-dup").as_deref(), Some("1,2"));
    assert_eq!(o.upstream_header("x-one").as_deref(), Some("new"));
    assert_eq!(o.upstream_header("x-added").as_deref(), Some("yes"));
    assert_eq!(o.upstream_header("x-gone"), None);
}

#[test]
fn replace_request_headers_takes_pairs_or_a_map() {
    let pairs = plugin(
        r#"fn on_request_headers() {
        let h = get_request_headers();
        h.push(["x-new", "1"]);
        h.push(["x-new", "2"]);
        replace_request_headers(h);
    }"#,
    );
    let o = pairs.run(&Request::get("/"), &mut Response::ok(""));
    assert_eq!(o.upstream_header("x-new").as_deref(), Some("1,2"));
    assert_eq!(o.upstream_header(":path").as_deref(), Some("/"));

    let map = plugin(
        r#"fn on_request_headers() {
        replace_request_headers(#{":method": "GET", ":path": "/m", ":authority": "h", ":scheme": "http", "x-list": ["a", "b"], "x-blob": blob(2, 65)});
    }"#,
    );
    let o = map.run(
        &Request::get("/").header("x-old", "1"),
        &mut Response::ok(""),
    );
    assert_eq!(o.upstream_header(":path").as_deref(), Some("/m"));
    assert_eq!(o.upstream_header("x-list").as_deref(), Some("a,b"));
    assert_eq!(o.upstream_header("x-blob").as_deref(), Some("AA"));
    assert_eq!(o.upstream_header("x-old"), None);
}

#[test]
fn bad_header_arguments_are_script_errors() {
    let p = plugin(r#"fn on_request_headers() { replace_request_headers([["only-name"]]); }"#);
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert_eq!(o.response.status, 500);
    assert!(
        o.script_errors()[0].contains("each header must be a [name, value] pair"),
        "{:?}",
        o.log
    );
}

#[test]
fn response_headers_table() {
    let p = plugin(
        r#"fn on_response_headers() {
        log_info(get_response_headers());
        log_info(get_response_header(":status"));
        log_info(type_of(get_response_header("nope")));
        add_response_header("x-dup", "2");
        replace_response_header("x-one", "new");
        remove_response_header("x-gone");
    }"#,
    );
    let o = p.run(
        &Request::get("/"),
        &mut Response::new(201, "")
            .header("x-dup", "1")
            .header("x-one", "old")
            .header("x-gone", "x"),
    );
    assert_eq!(
        logged(&o)[0],
        r#"[[":status", "201"], ["x-dup", "1"], ["x-one", "old"], ["x-gone", "x"]]"#
    );
    assert_eq!(logged(&o)[1..], ["201", "()"]);
    assert_eq!(o.response_header("x-dup").as_deref(), Some("1,2"));
    assert_eq!(o.response_header("x-one").as_deref(), Some("new"));
    assert_eq!(o.response_header("x-gone"), None);
    assert_eq!(o.response.status, 201);

    let p = plugin(
        r#"fn on_response_headers() { replace_response_headers(#{":status": "202", "x-only": "1"}); }"#,
    );
    let o = p.run(
        &Request::get("/"),
        &mut Response::ok("").header("x-old", "1"),
    );
    assert_eq!(o.response.status, 202);
    assert_eq!(o.response_header("x-only").as_deref(), Some("1"));
    assert_eq!(o.response_header("x-old"), None);
}

#[test]
fn headers_only_in_their_own_phase() {
    for (phase, call) in [
        ("on_request_body", "get_request_header(\":path\")"),
        ("on_response_headers", "add_request_header(\"a\", \"b\")"),
        ("on_request_headers", "get_response_headers()"),
        ("on_response_body", "replace_response_header(\"a\", \"b\")"),
    ] {
        let p = plugin(&format!("fn {phase}() {{ {call}; }}"));
        let o = p.run(&Request::post("/", "body"), &mut Response::ok("body"));
        let errors = o.script_errors();
        assert_eq!(errors.len(), 1, "{phase}: {call}: {:?}", o.log);
        assert!(
            errors[0].contains(&format!("is not available in {phase}")),
            "{}",
            errors[0]
        );
    }
}

#[test]
fn non_utf8_header_values_are_lossy_strings() {
    let p = plugin(
        r#"fn on_request_headers() { log_info(get_request_header("x-bin")); log_info(get_request_headers()[4][1]); }"#,
    );
    let o = p.run(
        &Request::get("/").header("x-bin", b"a\xffb".to_vec()),
        &mut Response::ok(""),
    );
    assert_eq!(logged(&o), ["a\u{fffd}b", "a\u{fffd}b"]);
    assert_eq!(
        o.upstream.unwrap().headers[4].1,
        b"a\xffb",
        "the value itself is untouched"
    );
}
