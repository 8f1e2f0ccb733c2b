//! Header injection and pair-list limits. Without the header checks, a `location` from
//! `url_decode` of the query let `%0d%0a` append headers and a body to the response an HTTP/1.1
//! client read; an empty name reached the upstream as `: 1`; `:method` `GET POST` made the
//! request line `GET POST /path`; a callout's `transfer-encoding: chunked` let its target read
//! a second request from the body; and a header map over 1,024 pairs (or 1 MiB) was dropped
//! whole (the request lost every header: 404).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::support::{assert_status, number_before, vm_failures, Envoy};

/// Sends `request` on its own connection (`connection: close`) and reads every byte Envoy
/// sends back, so that whatever an injection appended would be seen.
fn raw_exchange(envoy: &Envoy, request: &str) -> String {
    let mut stream = TcpStream::connect(envoy.addr()).expect("connect to Envoy");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read Envoy's answer");
    String::from_utf8_lossy(&out).into_owned()
}

/// A GET of `path` for case `case`, whose `x-v` the script percent-decodes into what it writes.
fn case_request(path: &str, case: &str, value: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nx-case: {case}\r\nx-v: {value}\r\n\
         connection: close\r\n\r\n"
    )
}

const INJECT: &str = "%0d%0ax-injected:%201%0d%0acontent-length:%200%0d%0a%0d%0aINJECTED-BODY";

const SCRIPT: &str = r#"
fn v() { url_decode(get_request_header("x-v") ?? "") }
fn on_request_headers() {
    let which = get_request_header("x-case") ?? "none";
    set_context("case", which);
    set_context("v", v());
    switch which {
        "redirect" => send_http_response(302, [["location", "https://example.com/" + v()]], ""),
        "local_name" => send_http_response(200, [[v(), "1"]], "ok"),
        "empty_name" => add_request_header("", "1"),
        "method" => replace_request_header(":method", v()),
        "callout_header" => http_get("callout", "/c", [["x-a", v()]], 2000, |s, h, b| {}),
        "callout_path" => http_get("callout", v(), [], 2000, |s, h, b| {}),
        "callout_te" => http_post("callout", "/first", [["transfer-encoding", "chunked"]], "5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n", 2000, |s, h, b| {}),
        "callout_length" => http_post("callout", "/first", [["content-length", "40"]], (), 2000, |s, h, b| {}),
        "callout_ok" => http_post("callout", "/first", [], "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n", 2000, |s, h, b| {
            add_request_header("x-callout", `${s}`);
        }),
    }
}
fn on_response_headers() {
    if get_context("case") == "add_response" { add_response_header("x-q", get_context("v")); }
}
fn on_response_trailers() {
    if get_context("case") == "trailer" { replace_response_trailer("x-t", get_context("v")); }
}
"#;

#[test]
fn a_script_cannot_split_a_response_or_a_request() {
    let envoy = Envoy::builder(json!({ "script": SCRIPT }))
        .enable_trailers()
        .start();
    for (case, value, needle) in [
        (
            "redirect",
            INJECT,
            r#"send_http_response(): the value of header "location" has a CR"#,
        ),
        (
            "local_name",
            "x-a%0d%0ax-injected",
            r#"send_http_response(): header name "x-a\r\nx-injected" is not a valid HTTP field name"#,
        ),
        (
            "add_response",
            INJECT,
            r#"add_response_header(): the value of header "x-q" has a CR"#,
        ),
        (
            "empty_name",
            "",
            "add_request_header(): a header name may not be empty",
        ),
        (
            "method",
            "GET%20POST",
            "replace_request_header(): the value of :method must be an HTTP token",
        ),
        (
            "callout_header",
            INJECT,
            r#"http_get(): the value of header "x-a" has a CR"#,
        ),
        (
            "callout_path",
            "/c%20HTTP/1.1%0d%0ahost:%20x%0d%0a%0d%0aGET%20/smuggled",
            "http_get(): the value of :path must be visible ASCII",
        ),
    ] {
        let raw = raw_exchange(&envoy, &case_request("/r", case, value));
        // The error policy's answer, and nothing the script's value carried.
        assert!(raw.starts_with("HTTP/1.1 500 "), "{case}: {raw}");
        assert!(
            !raw.contains("\nx-injected:") && !raw.contains("INJECTED-BODY"),
            "{case}: {raw}"
        );
        // The log names the header, escaped: no CR LF of the value reaches the log either.
        let line = envoy.wait_for_log(needle);
        assert!(line.contains("script error in "), "{case}: {line}");
    }
    assert!(!envoy.log().contains("x-injected:"));
    // Nothing reached the upstream (only the add_response case went there) or a callout.
    assert_eq!(envoy.upstream.received(), ["/r"]);
    assert!(
        envoy.callout.received().is_empty(),
        "{:?}",
        envoy.callout.received()
    );

    // A trailer, written once the response headers are gone: the stream is reset, and the
    // client never sees the injected trailer.
    // (The upstream's echo holds the request's `x-v`, percent-encoded: look for a line.)
    let raw = raw_exchange(&envoy, &case_request("/trailers?x-t=1", "trailer", INJECT));
    assert!(!raw.contains("\nx-injected:"), "{raw}");
    envoy.wait_for_log(r#"replace_response_trailer(): the value of header "x-t" has a CR"#);

    // The next requests are served normally, and the VM never failed.
    let reply = envoy.get("/next");
    assert_status(&reply, 200);
    assert!(vm_failures(&envoy.log()).is_empty());
    envoy.assert_healthy();
}

#[test]
fn a_callout_frames_its_own_body() {
    let envoy = Envoy::with_script(SCRIPT);
    let case = |case: &str| envoy.request("GET", "/r", &[("x-case", case)], b"");
    for (name, needle) in [
        (
            "callout_te",
            r#"http_post(): a callout may not set "transfer-encoding": the proxy frames its body itself"#,
        ),
        (
            "callout_length",
            r#"http_post(): a callout may not set "content-length""#,
        ),
    ] {
        assert_status(&case(name), 500);
        envoy.wait_for_log(needle);
    }
    assert!(
        envoy.callout.received().is_empty(),
        "{:?}",
        envoy.callout.received()
    );
    // A body that looks like a request is only a body: the target reads exactly one request.
    let reply = case("callout_ok");
    assert_status(&reply, 200);
    assert_eq!(reply.echo().header("x-callout"), Some("200"));
    assert_eq!(envoy.callout.received(), ["/first"]);
    envoy.assert_healthy();
}

/// Adds `x-n` headers one by one (past three writes the map goes to Envoy whole), then one of
/// `x-size` bytes; `send_http_response` / `http_get` with `x-n` headers for the other cases.
const GROW_SCRIPT: &str = r#"
fn many(n) { let h = []; for i in 0..n { h.push(["x-h-" + i, "v"]); } h }
fn on_request_headers() {
    let n = parse_int(get_request_header("x-n"));
    switch get_request_header(":path") {
        "/grow" => {
            let size = parse_int(get_request_header("x-size"));
            for i in 0..n { add_request_header("x-h-" + i, "v"); }
            if size > 0 { let s = "aaaaaaaa"; while s.len() < size { s += s; } add_request_header("x-big", s.sub_string(0, size)); }
        }
        "/local" => send_http_response(200, many(n), "local"),
        "/callout" => http_get("callout", "/c", many(n), 2000, |s, h, b| { add_request_header("x-callout", `${s}`); }),
    }
}
"#;

#[test]
fn pair_lists_stay_within_what_envoy_reads() {
    let envoy = Envoy::with_script(GROW_SCRIPT);
    let grow = |n: usize, size: usize| {
        envoy.request(
            "GET",
            "/grow",
            &[("x-n", &n.to_string()), ("x-size", &size.to_string())],
            b"",
        )
    };
    // Envoy gives the plugin 8 request headers here (:authority, :path, :method, :scheme,
    // x-n, x-size, x-forwarded-proto, x-request-id): 1,016 more make 1,024, and every header
    // reaches the upstream. Before the fix, one more and Envoy dropped the whole map (404).
    let reply = grow(1016, 0);
    assert_status(&reply, 200);
    let echo = reply.echo();
    assert_eq!(echo.path, "/grow");
    assert_eq!(echo.header("x-h-1015"), Some("v"));
    assert_status(&grow(1017, 0), 500);
    envoy.wait_for_log("add_request_header(): the request headers would be 1025 headers");

    // Bytes: the refusal says how large the map would be; the size that makes it exactly
    // 1 MiB goes through whole, one byte more is refused.
    assert_status(&grow(4, 2 << 20), 500);
    let refusal = envoy.wait_for_log("would be 13 headers");
    let over = number_before(&refusal, "bytes: more than") - (1 << 20);
    let exact = (2 << 20) - over;
    let reply = grow(4, exact);
    assert_status(&reply, 200);
    assert_eq!(reply.echo().header("x-big").map(str::len), Some(exact));
    assert_status(&grow(4, exact + 1), 500);
    envoy.wait_for_log(&format!("13 headers, {} bytes: more than", (1 << 20) + 1));

    // A local response's and a callout's headers: 1,024 go through; one more is a script
    // error, not a response without headers or a refusal that blames the pseudo-headers.
    let local = |n: usize| envoy.request("GET", "/local", &[("x-n", &n.to_string())], b"");
    let reply = local(1024);
    assert_status(&reply, 200);
    assert_eq!(reply.header("x-h-1023"), Some("v"));
    assert_status(&local(1025), 500);
    envoy.wait_for_log("send_http_response(): a local response's headers would be 1025 headers");
    let callout = |n: usize| envoy.request("GET", "/callout", &[("x-n", &n.to_string())], b"");
    let reply = callout(1021); // and :method, :path, :authority
    assert_status(&reply, 200);
    assert_eq!(reply.echo().header("x-callout"), Some("200"));
    assert_status(&callout(1022), 500);
    envoy.wait_for_log("http_get(): a callout's headers would be 1025 headers");
    assert_eq!(envoy.callout.received(), ["/c"]);
    envoy.assert_healthy();
}
