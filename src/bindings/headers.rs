//! Request and response headers: read, replace, add, remove.

use rhai::{Dynamic, ImmutableString};

use super::*;

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use MapType::{HttpRequestHeaders as REQ, HttpResponseHeaders as RESP};
    // A text a function makes (a body, JSON) is a string: no longer than a string may be.
    let _max_string = reg.engine.max_string_size();

    // Request headers.
    bind!(reg, "get_request_headers", READ_RQH, "array of [name, value]",
        "All request headers, in order, duplicates kept. Pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) come first.",
        r#"fn on_request_headers() {
    for h in get_request_headers() {
        log_debug(`${h[0]}: ${h[1]}`);
    }
}"#,
        |a as f| a.get_headers(f, REQ));
    bind!(reg, "get_request_header", READ_RQH, "string, or () when absent",
        "The value of one request header (name case-insensitive); with several values, the first (Envoy's rule); `get_request_headers()` has them all.",
        r#"fn on_request_headers() {
    let user = get_request_header("x-user");
    if user == () {
        send_http_response(401, [], "who are you?");
    }
}"#,
        |a as f, name: &str| a.get_header(f, REQ, name));
    bind!(reg, "replace_request_headers", RQH, "()",
        "Replaces all request headers with `headers`: an array of [name, value] pairs, or a map whose values are strings or arrays of strings (names are lowercased). Keep the pseudo-headers (`:method`, `:path`, …) unless you mean to drop them. Anything else than pairs or a map is an error.",
        r#"fn on_request_headers() {
    // Keep only the pseudo-headers and `accept`.
    let kept = get_request_headers().filter(|h| h[0].starts_with(":") || h[0] == "accept");
    replace_request_headers(kept);
}"#,
        |a as f, headers: Dynamic| a.set_headers(f, REQ, &headers));
    bind!(
        reg,
        "replace_request_header",
        RQH,
        "()",
        "Sets a request header to one value (string or blob): every value it had is removed and the new one added at the end (Envoy's rule). Pseudo-headers such as `:path` can be set too.",
        r#"fn on_request_headers() {
    replace_request_header(":path", "/v2" + get_request_header(":path"));
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.replace_header(f, REQ, name, value)
    );
    bind!(
        reg,
        "add_request_header",
        RQH,
        "()",
        "Adds a request header value (string or blob), keeping the values it already had. For a header Envoy keeps inline (`user-agent`, `accept`, `authorization`, `x-forwarded-for`, …) the value is appended to the existing one after a comma, as Envoy does. Every header write is checked as HTTP allows, and a bad one is an error naming it: a name is a token (letters, digits, ``!#$%&'*+-.^_`|~``; lowercased), a value has no control character but tab (no CR, LF or NUL); pseudo-headers only where the message has them (`:method`, `:path`, `:authority`, `:scheme`, `:protocol` in a request, `:status` 200..=599 in a response), set with `replace_*`, with values that fit the request or status line. Past a call's third write the map goes to the proxy whole, which takes at most 1,024 headers and 1 MiB: a write that would make it larger is an error.",
        r#"fn on_request_headers() {
    add_request_header("x-forwarded-by", "proxy-rhai");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.add_header(f, REQ, name, value)
    );
    bind!(
        reg,
        "remove_request_header",
        RQH,
        "()",
        "Removes every value of a request header; nothing happens when it is absent.",
        r#"fn on_request_headers() {
    remove_request_header("cookie");
}"#,
        |a as f, name: ImmutableString| a.remove_header(f, REQ, name)
    );

    // Response headers.
    bind!(
        reg,
        "get_response_headers",
        READ_RSH,
        "array of [name, value]",
        "All response headers, in order, duplicates kept; `:status` comes first.",
        r#"fn on_response_headers() {
    let n = get_response_headers().len();
    log_info(`upstream sent ${n} headers`);
}"#,
        |a as f| a.get_headers(f, RESP)
    );
    bind!(
        reg,
        "get_response_header",
        READ_RSH,
        "string, or () when absent",
        "The value of one response header (name case-insensitive).",
        r#"fn on_response_headers() {
    if get_response_header(":status") == "404" {
        replace_response_header("cache-control", "no-store");
    }
}"#,
        |a as f, name: &str| a.get_header(f, RESP, name)
    );
    bind!(
        reg,
        "replace_response_headers",
        RSH,
        "()",
        "Replaces all response headers, like `replace_request_headers`; keep `:status`.",
        r#"fn on_response_headers() {
    replace_response_headers(#{ ":status": "200", "content-type": "text/plain" });
}"#,
        |a as f, headers: Dynamic| a.set_headers(f, RESP, &headers)
    );
    bind!(
        reg,
        "replace_response_header",
        RSH,
        "()",
        "Sets a response header to one value (string or blob): every value it had is removed and the new one added at the end. Setting `:status` changes the status the client sees.",
        r#"fn on_response_headers() {
    replace_response_header("server", "proxy-rhai");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.replace_header(f, RESP, name, value)
    );
    bind!(
        reg,
        "add_response_header",
        RSH,
        "()",
        "Adds a response header value, keeping the values it already had. For a header Envoy keeps inline (`vary`, `cache-control`, `etag`, …) the value is appended to the existing one after a comma.",
        r#"fn on_response_headers() {
    add_response_header("set-cookie", "seen=1; Path=/");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.add_header(f, RESP, name, value)
    );
    bind!(
        reg,
        "remove_response_header",
        RSH,
        "()",
        "Removes every value of a response header.",
        r#"fn on_response_headers() {
    remove_response_header("x-powered-by");
}"#,
        |a as f, name: ImmutableString| a.remove_header(f, RESP, name)
    );
}

/// Trailers: the header table, in the trailer phases.
pub(super) fn register_trailers<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use Allowed::In;
    const RQT: Allowed = In(Phases::REQUEST_TRAILERS);
    const RST: Allowed = In(Phases::RESPONSE_TRAILERS);
    use MapType::{HttpRequestTrailers as REQ, HttpResponseTrailers as RESP};
    bind!(
        reg,
        "get_request_trailers",
        RQT,
        "array of [name, value]",
        "All request trailers, in order.",
        r#"fn on_request_trailers() {
    for t in get_request_trailers() { log_debug(`${t[0]}: ${t[1]}`); }
}"#,
        |a as f| a.get_headers(f, REQ)
    );
    bind!(
        reg,
        "get_request_trailer",
        RQT,
        "string, or () when absent",
        "The first value of one request trailer.",
        r#"fn on_request_trailers() {
    if get_request_trailer("grpc-status") != () { log_info("a gRPC request trailer"); }
}"#,
        |a as f, name: &str| a.get_header(f, REQ, name)
    );
    bind!(
        reg,
        "replace_request_trailers",
        RQT,
        "()",
        "Replaces all request trailers (pairs or map).",
        r#"fn on_request_trailers() {
    replace_request_trailers(#{ "x-checksum": "ok" });
}"#,
        |a as f, trailers: Dynamic| a.set_headers(f, REQ, &trailers)
    );
    bind!(
        reg,
        "replace_request_trailer",
        RQT,
        "()",
        "Sets one request trailer; adds it when absent.",
        r#"fn on_request_trailers() {
    replace_request_trailer("x-checked-by", "proxy-rhai");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.replace_header(
            f,
            REQ,
            name,
            value
        )
    );
    bind!(
        reg,
        "add_request_trailer",
        RQT,
        "()",
        "Adds a request trailer value.",
        r#"fn on_request_trailers() {
    add_request_trailer("x-seen", "1");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.add_header(
            f,
            REQ,
            name,
            value
        )
    );
    bind!(
        reg,
        "remove_request_trailer",
        RQT,
        "()",
        "Removes a request trailer.",
        r#"fn on_request_trailers() {
    remove_request_trailer("x-debug");
}"#,
        |a as f, name: ImmutableString| a.remove_header(f, REQ, name)
    );
    bind!(
        reg,
        "get_response_trailers",
        RST,
        "array of [name, value]",
        "All response trailers, in order.",
        r#"fn on_response_trailers() {
    log_info(`${get_response_trailers().len()} response trailers`);
}"#,
        |a as f| a.get_headers(f, RESP)
    );
    bind!(
        reg,
        "get_response_trailer",
        RST,
        "string, or () when absent",
        "The first value of one response trailer.",
        r#"fn on_response_trailers() {
    if get_response_trailer("grpc-status") != "0" { increment_counter("grpc_errors", 1); }
}"#,
        |a as f, name: &str| a.get_header(f, RESP, name)
    );
    bind!(
        reg,
        "replace_response_trailers",
        RST,
        "()",
        "Replaces all response trailers (pairs or map).",
        r#"fn on_response_trailers() {
    replace_response_trailers([["grpc-status", "0"]]);
}"#,
        |a as f, trailers: Dynamic| a.set_headers(f, RESP, &trailers)
    );
    bind!(
        reg,
        "replace_response_trailer",
        RST,
        "()",
        "Sets one response trailer; adds it when absent.",
        r#"fn on_response_trailers() {
    replace_response_trailer("grpc-message", "");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.replace_header(
            f,
            RESP,
            name,
            value
        )
    );
    bind!(
        reg,
        "add_response_trailer",
        RST,
        "()",
        "Adds a response trailer value.",
        r#"fn on_response_trailers() {
    add_response_trailer("x-served-by", "proxy-rhai");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.add_header(
            f,
            RESP,
            name,
            value
        )
    );
    bind!(
        reg,
        "remove_response_trailer",
        RST,
        "()",
        "Removes a response trailer.",
        r#"fn on_response_trailers() {
    remove_response_trailer("x-internal-timing");
}"#,
        |a as f, name: ImmutableString| a.remove_header(f, RESP, name)
    );
}
