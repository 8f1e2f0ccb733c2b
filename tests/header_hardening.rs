//! What a script may write into a header, against the emulator: every write path refuses a
//! name or value that would split the message or break its first line, and a pair list the
//! proxy would drop (1,024 pairs, 1 MiB) is a script error at the call that makes it.
//! `tests/e2e/hardening_headers.rs` checks the same in Envoy.

#[path = "support/messages.rs"]
mod messages;

use proxy_rhai::emulator::{Callout, Emulator, Outcome, Reply, Request, Response};
use proxy_rhai::header_check::{MAX_PAIRS, MAX_PAIR_BYTES};
use serde_json::json;

use messages::number_before;

/// Runs one case of [`CASES_SCRIPT`]: the script reads what to do from `x-case`, and the value
/// to write from `x-v` (percent-decoded).
const CASES_SCRIPT: &str = r#"
fn v() { url_decode(get_request_header("x-v") ?? "") }
fn on_request_headers() {
    set_context("case", get_request_header("x-case"));
    set_context("v", v());
    switch get_request_header("x-case") {
        "redirect" => send_http_response(302, [["location", v()]], ""),
        "local_name" => send_http_response(200, [[v(), "1"]], ""),
        "add_request" => add_request_header("x-a", v()),
        "replace_request" => replace_request_header("x-a", v()),
        "empty_name" => add_request_header("", "1"),
        "method" => replace_request_header(":method", v()),
        "path" => replace_request_header(":path", v()),
        "add_pseudo" => add_request_header(":path", "/x"),
        "status_in_request" => replace_request_header(":status", "200"),
        "whole_request" => replace_request_headers([[":method", "GET"], [":path", "/"], ["x-a", v()]]),
        "callout_header" => http_get("callout", "/c", [["x-a", v()]], 500, |s, h, b| {}),
        "callout_path" => http_get("callout", v(), [], 500, |s, h, b| {}),
        "callout_method" => http_call(v(), "callout", "/c", [], (), 500, |s, h, b| {}),
        "callout_length" => http_post("callout", "/c", [["content-length", "5"]], "hello", 500, |s, h, b| {}),
        "callout_te" => http_post("callout", "/c", #{ "Transfer-Encoding": "chunked" }, "0\r\n\r\n", 500, |s, h, b| {}),
        "callout_twice" => dispatch_http_call("callout", [[":method", "GET"], [":path", "/"], [":path", "/b"], [":authority", "c"]], (), 500, |s, h, b| {}),
    }
}
fn on_response_headers() {
    switch get_context("case") {
        "add_response" => add_response_header("x-q", get_context("v")),
        "status" => replace_response_header(":status", get_context("v")),
        "whole_response" => replace_response_headers(#{ ":status": "200", "x-q": get_context("v") }),
        "local_late" => send_http_response(200, #{ ":status": "204" }, ""),
    }
}
fn on_response_trailers() {
    switch get_context("case") {
        "trailer" => replace_response_trailer("x-t", get_context("v")),
        "trailer_pseudo" => add_response_trailer(":status", "200"),
        "trailers_whole" => replace_response_trailers([["x-t", get_context("v")]]),
    }
}
"#;

fn plugin() -> Emulator {
    let p = Emulator::with_script(CASES_SCRIPT, json!({})).expect("script configures");
    p.add_cluster("callout");
    p
}

fn run(p: &Emulator, case: &str, value: &str) -> Outcome {
    let request = Request::get("/r")
        .header("x-case", case)
        .header("x-v", value);
    let mut upstream = Response::ok("up");
    upstream.trailers = vec![("x-t".into(), b"1".to_vec())];
    let mut callouts = |_: &Callout| Reply::Answer {
        status: 200,
        headers: Vec::new(),
        body: Vec::new(),
    };
    p.run_with(&request, &mut upstream, &mut callouts)
}

/// The one script error of `outcome`, asserted to contain `needle`, and to hold no raw CR or LF.
fn the_error<'a>(outcome: &'a Outcome, needle: &str) -> &'a str {
    let errors = outcome.script_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(needle),
        "{needle:?} not in {:?}",
        errors[0]
    );
    assert!(!errors[0].contains(['\r', '\n', '\0']), "{:?}", errors[0]);
    errors[0]
}

const CRLF: &str = "%0d%0ax-injected:%201%0d%0a%0d%0ainjected body";

#[test]
fn every_write_path_refuses_what_would_split_the_message() {
    let p = plugin();
    for (case, value, needle) in [
        ("redirect", CRLF, "send_http_response(): the value of header \"location\" has a CR at 0"),
        ("local_name", "x%0d%0aevil", "send_http_response(): header name \"x\\r\\nevil\" is not a valid HTTP field name"),
        ("add_request", "a%0ab", "add_request_header(): the value of header \"x-a\" has an LF at 1"),
        ("replace_request", "a%00b", "replace_request_header(): the value of header \"x-a\" has a NUL at 1"),
        ("add_request", "a%7fb", "has byte 0x7f at 1"),
        ("empty_name", "", "add_request_header(): a header name may not be empty"),
        ("method", "GET%20POST", "replace_request_header(): the value of :method must be an HTTP token"),
        ("path", "/a%20HTTP/1.1%0d%0a", "the value of :path must be visible ASCII"),
        ("add_pseudo", "", "add_request_header(): \":path\" is a pseudo-header, which has one value"),
        ("status_in_request", "", "\":status\" is not a pseudo-header of the request headers"),
        ("whole_request", CRLF, "replace_request_headers(): the value of header \"x-a\" has a CR"),
        ("callout_header", CRLF, "http_get(): the value of header \"x-a\" has a CR"),
        ("callout_path", "/c%20HTTP/1.1%0d%0ahost:%20x%0d%0a%0d%0aGET%20/smuggled", "http_get(): the value of :path must be visible ASCII"),
        ("callout_method", "GET%20/smuggled%20HTTP/1.1%0d%0a", "http_call(): the value of :method must be an HTTP token"),
        ("callout_length", "", "http_post(): a callout may not set \"content-length\": the proxy frames its body itself"),
        ("callout_te", "", "http_post(): a callout may not set \"Transfer-Encoding\""),
        ("callout_twice", "", "dispatch_http_call(): \":path\" is given twice"),
    ] {
        let o = run(&p, case, value);
        the_error(&o, needle);
        // The error policy answered; nothing reached the upstream or a callout target.
        assert_eq!(o.response.status, 500, "{case}: {:?}", o.response);
        assert!(o.response.local, "{case}");
        assert!(o.upstream.is_none(), "{case}: {:?}", o.upstream);
        assert!(o.callouts.is_empty(), "{case}: {:?}", o.callouts);
        assert!(
            !o.response.headers.iter().any(|(k, _)| k.contains("injected")),
            "{case}"
        );
    }
    for (case, value, needle) in [
        ("add_response", CRLF, "add_response_header(): the value of header \"x-q\" has a CR"),
        ("status", "200%20OK", "replace_response_header(): the value of :status must be a status code"),
        ("status", "600", "must be a status code, 200 to 599"),
        ("whole_response", CRLF, "replace_response_headers(): the value of header \"x-q\" has a CR"),
        ("local_late", "", "send_http_response(): \":status\" is not a pseudo-header of a local response's headers (they have none)"),
    ] {
        let o = run(&p, case, value);
        the_error(&o, needle);
        assert_eq!(o.response.status, 500, "{case}: {:?}", o.response);
        assert!(o.response.headers.iter().all(|(k, _)| k != "x-q"), "{case}");
    }
    for (case, value, needle) in [
        (
            "trailer",
            CRLF,
            "replace_response_trailer(): the value of header \"x-t\" has a CR",
        ),
        (
            "trailer_pseudo",
            "",
            "add_response_trailer(): \":status\" is a pseudo-header",
        ),
        (
            "trailers_whole",
            "a%0a",
            "replace_response_trailers(): the value of header \"x-t\" has an LF",
        ),
    ] {
        let o = run(&p, case, value);
        the_error(&o, needle);
    }
    // The plugin goes on: the next request is served, with what HTTP allows.
    let o = run(&p, "add_request", "tab%09and%20obs-text%C3%A9");
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    assert_eq!(o.response.status, 200);
    assert_eq!(
        o.upstream_header("x-a").as_deref(),
        Some("tab\tand obs-texté")
    );
}

#[test]
fn names_are_case_insensitive_and_reach_the_proxy_lowercase() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            add_request_header("X-Up", "1");
            replace_request_header(":Method", "PATCH");
            http_get("callout", "/c", #{ "X-Call": "2" }, 500, |s, h, b| {});
        }"#,
        json!({}),
    )
    .unwrap();
    p.add_cluster("callout");
    let mut callouts = |_: &Callout| Reply::Answer {
        status: 200,
        headers: Vec::new(),
        body: Vec::new(),
    };
    let o = p.run_with(&Request::get("/"), &mut Response::ok(""), &mut callouts);
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    assert_eq!(o.upstream_header("x-up").as_deref(), Some("1"));
    assert_eq!(o.upstream_header(":method").as_deref(), Some("PATCH"));
    assert!(o.callouts[0]
        .headers
        .contains(&("x-call".into(), b"2".to_vec())));
}

/// Adds `x-n` headers (one by one: past three writes the map goes to the proxy whole), then
/// one of `x-size` bytes; with `x-catch`, the script catches the error and says so in it.
const GROW_SCRIPT: &str = r#"
fn on_request_headers() {
    let n = parse_int(get_request_header("x-n"));
    let size = parse_int(get_request_header("x-size"));
    try {
        for i in 0..n { add_request_header("x-h-" + i, "v"); }
        if size > 0 { let s = "aaaaaaaa"; while s.len() < size { s += s; } add_request_header("x-big", s.sub_string(0, size)); }
    } catch (e) {
        if get_request_header("x-catch") == () { throw e; }
        // A full map still takes a replacement that doesn't grow it.
        replace_request_header("x-catch", "caught");
    }
}
"#;

fn grow(p: &Emulator, n: usize, size: usize, catch: bool) -> Outcome {
    let mut request = Request::get("/")
        .header("x-n", n.to_string())
        .header("x-size", size.to_string());
    if catch {
        request = request.header("x-catch", "1");
    }
    p.run(&request, &mut Response::ok(""))
}

#[test]
fn a_header_map_stays_within_what_the_proxy_takes_whole() {
    let p = Emulator::with_script(GROW_SCRIPT, json!({})).unwrap();
    // The request has 9 headers (4 pseudo, x-n, x-size, x-catch, x-forwarded-proto,
    // x-request-id): 1,015 more make 1,024, the most the proxy reads in one piece.
    let o = grow(&p, MAX_PAIRS - 9, 0, true);
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    let up = o.upstream.as_ref().expect("forwarded");
    assert_eq!(up.headers.len(), MAX_PAIRS);
    assert_eq!(o.upstream_header("x-h-1014").as_deref(), Some("v"));
    // One more is refused where the script adds it: caught, the map keeps every header
    // (before, the proxy dropped the whole map and the request lost every header).
    let o = grow(&p, MAX_PAIRS - 8, 0, true);
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    assert_eq!(o.upstream_header("x-catch").as_deref(), Some("caught"));
    assert_eq!(o.upstream_header(":path").as_deref(), Some("/"));
    assert_eq!(o.upstream_header("x-h-1014").as_deref(), Some("v"));
    assert_eq!(o.upstream_header("x-h-1015"), None);
    // Not caught (and no `x-catch`: one header less): a script error that says why, and the
    // error policy's answer.
    let o = grow(&p, MAX_PAIRS - 7, 0, false);
    the_error(
        &o,
        "add_request_header(): the request headers would be 1025 headers",
    );
    assert_eq!(o.response.status, 500);

    // Bytes: find the size that makes the encoded map exactly 1 MiB from the error of a
    // larger one, then check that exact size passes and one byte more does not.
    let o = grow(&p, 4, 2 << 20, false);
    let error = the_error(
        &o,
        "more than the proxy takes in one piece (1024 headers, 1048576 bytes",
    );
    let over = number_before(error, "bytes:") - MAX_PAIR_BYTES;
    let exact = (2 << 20) - over;
    let o = grow(&p, 4, exact, false);
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    assert_eq!(o.upstream_header("x-big").map(|v| v.len()), Some(exact));
    let o = grow(&p, 4, exact + 1, false);
    the_error(&o, &format!("headers, {} bytes", MAX_PAIR_BYTES + 1));
}

#[test]
fn whole_lists_over_the_limit_are_refused_at_the_call() {
    let script = r#"
        fn many(n) { let h = []; for i in 0..n { h.push(["x-h-" + i, "v"]); } h }
        fn on_request_headers() {
            let n = parse_int(get_request_header("x-n"));
            switch get_request_header("x-case") {
                "whole" => { let h = many(n); h.push([":path", "/"]); h.push([":method", "GET"]); h.push([":authority", "a"]); replace_request_headers(h); }
                "local" => send_http_response(200, many(n), "ok"),
                "callout" => http_get("callout", "/c", many(n), 500, |s, h, b| {}),
            }
        }
        fn on_response_trailers() { replace_response_trailers(many(1025)); }
    "#;
    let p = Emulator::with_script(script, json!({})).unwrap();
    p.add_cluster("callout");
    let run = |case: &str, n: usize| {
        let request = Request::get("/")
            .header("x-case", case)
            .header("x-n", n.to_string());
        let mut callouts = |_: &Callout| Reply::Answer {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        };
        p.run_with(&request, &mut Response::ok(""), &mut callouts)
    };
    // At the limit, each goes through whole.
    let o = run("whole", MAX_PAIRS - 3);
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    assert_eq!(o.upstream.expect("forwarded").headers.len(), MAX_PAIRS);
    let o = run("local", MAX_PAIRS);
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    assert_eq!(o.response_header("x-h-1023").as_deref(), Some("v"));
    // The callout's own three pseudo-headers count too.
    let o = run("callout", MAX_PAIRS - 3);
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    assert_eq!(o.callouts[0].headers.len(), MAX_PAIRS);
    // One more: a script error naming the call, not a map the proxy empties.
    for (case, n, needle) in [
        (
            "whole",
            MAX_PAIRS - 2,
            "replace_request_headers(): the request headers would be 1025 headers",
        ),
        (
            "local",
            MAX_PAIRS + 1,
            "send_http_response(): a local response's headers would be 1025 headers",
        ),
        (
            "callout",
            MAX_PAIRS - 2,
            "http_get(): a callout's headers would be 1025 headers",
        ),
    ] {
        let o = run(case, n);
        the_error(&o, needle);
        assert_eq!(o.response.status, 500, "{case}");
        assert!(o.callouts.is_empty(), "{case}");
    }
    let mut response = Response::ok("up");
    response.trailers = vec![("x-t".into(), b"1".to_vec())];
    let o = p.run(
        &Request::get("/")
            .header("x-case", "none")
            .header("x-n", "0"),
        &mut response,
    );
    the_error(
        &o,
        "replace_response_trailers(): trailers would be 1025 headers",
    );
}

/// `content-length` and `transfer-encoding` frame the body: a script may leave them as they
/// are (a whole list read and written back) or remove them, never set one of its own.
#[test]
fn a_script_cannot_frame_the_body_itself() {
    let script = r#"
        fn on_request_headers() {
            let list = get_request_headers();
            replace_request_headers(list);
            replace_request_header("content-length", get_request_header("content-length"));
            for op in get_request_header("x-op").split(",") {
                try {
                    switch op {
                        "short" => replace_request_header("content-length", "3"),
                        "second" => add_request_header("content-length", "5"),
                        "chunked" => add_request_header("transfer-encoding", "chunked"),
                        "list" => replace_request_headers([["content-length", "9"]]),
                        "remove" => remove_request_header("content-length"),
                    }
                    add_request_header("x-done", op);
                } catch (e) {
                    add_request_header("x-refused", e.to_string());
                }
            }
        }
    "#;
    let p = Emulator::with_script(script, json!({})).expect("configures");
    let request = Request::post("/", "hello")
        .header("content-length", "5")
        .header("x-op", "short,second,chunked,list,remove");
    let o = p.run(&request, &mut Response::ok("ok"));
    let upstream = o.upstream.as_ref().expect("reached the upstream");
    let refused: Vec<String> = upstream
        .headers
        .iter()
        .filter(|(k, _)| k == "x-refused")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    for (message, name) in refused.iter().zip([
        "content-length",
        "content-length",
        "transfer-encoding",
        "content-length",
    ]) {
        assert!(
            message.contains(&format!(
                "a script may not set {name}: the proxy frames the body"
            )),
            "{message}"
        );
    }
    assert_eq!(o.upstream_header("x-done").as_deref(), Some("remove"));
    assert_eq!(o.upstream_header("content-length"), None);
    assert_eq!(o.upstream_header("transfer-encoding"), None);
    assert_eq!(upstream.body, b"hello");
}
