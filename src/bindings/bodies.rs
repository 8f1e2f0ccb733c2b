//! Bodies: read and write the buffered body, and choose per message whether it is buffered.

use rhai::Dynamic;

use super::*;

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use BufferType::{HttpRequestBody as REQ_BODY, HttpResponseBody as RESP_BODY};

    // A text a function makes (a body, JSON) is a string: no longer than a string may be.
    let max_string = reg.engine.max_string_size();

    // Bodies.
    bind!(
        reg,
        "get_request_body",
        RQB,
        "string",
        "The whole request body as a string (invalid UTF-8 replaced by U+FFFD; a text longer than `limits.max_string_size` is an error). Defining `on_request_body` makes the proxy buffer the body (up to `limits.max_body_size`); the function runs once, on the whole body.",
        r#"fn on_request_body() {
    let order = parse_json(get_request_body());
    set_context("items", order.items.len());
}"#,
        |a as f| text_within("get_request_body()", a.get_body(f, REQ_BODY)?, max_string)
    );
    bind!(
        reg,
        "get_request_body_bytes",
        RQB,
        "blob",
        "The whole request body, byte for byte.",
        r#"fn on_request_body() {
    let body = get_request_body_bytes();
    if body.len() > 0 && body[0] == 0x1f {
        log_info("gzip request body");
    }
}"#,
        |a as f| a.get_body(f, REQ_BODY)
    );
    bind!(
        reg,
        "append_request_body",
        RQB,
        "()",
        "Adds `data` (string or blob) at the end of the request body. Another type is an error.",
        r#"fn on_request_body() {
    append_request_body("\n-- checked by proxy-rhai");
}"#,
        |a as f, data: Dynamic| a.write_body(f, REQ_BODY, BodyEdit::Append, &data)
    );
    bind!(
        reg,
        "prepend_request_body",
        RQB,
        "()",
        "Adds `data` (string or blob) at the start of the request body. Another type is an error.",
        r#"fn on_request_body() {
    prepend_request_body("[");
    append_request_body("]");
}"#,
        |a as f, data: Dynamic| a.write_body(f, REQ_BODY, BodyEdit::Prepend, &data)
    );
    bind!(
        reg,
        "replace_request_body",
        RQB,
        "()",
        "Replaces the request body with `data` (string or blob). The proxy drops `content-length` before the body phase runs, so the new length needs no care. Another type is an error.",
        r#"fn on_request_body() {
    let doc = parse_json(get_request_body());
    doc.password = "***";
    replace_request_body(to_json(doc));
}"#,
        |a as f, data: Dynamic| a.write_body(f, REQ_BODY, BodyEdit::Replace, &data)
    );
    bind!(
        reg,
        "get_response_body",
        RSB,
        "string",
        "The whole response body as a string (invalid UTF-8 replaced by U+FFFD; a text longer than `limits.max_string_size` is an error). Defining `on_response_body` makes the proxy buffer the body (up to `limits.max_body_size`); the function runs once, on the whole body.",
        r#"fn on_response_body() {
    if get_response_body().contains("internal stack trace") {
        replace_response_body("error hidden by the proxy");
    }
}"#,
        |a as f| text_within("get_response_body()", a.get_body(f, RESP_BODY)?, max_string)
    );
    bind!(
        reg,
        "get_response_body_bytes",
        RSB,
        "blob",
        "The whole response body, byte for byte.",
        r#"fn on_response_body() {
    log_info(`response of ${get_response_body_bytes().len()} bytes`);
}"#,
        |a as f| a.get_body(f, RESP_BODY)
    );
    bind!(
        reg,
        "append_response_body",
        RSB,
        "()",
        "Adds `data` (string or blob) at the end of the response body. Another type is an error.",
        r#"fn on_response_body() {
    append_response_body("<!-- served through proxy-rhai -->");
}"#,
        |a as f, data: Dynamic| a.write_body(f, RESP_BODY, BodyEdit::Append, &data)
    );
    bind!(
        reg,
        "prepend_response_body",
        RSB,
        "()",
        "Adds `data` (string or blob) at the start of the response body. Another type is an error.",
        r#"fn on_response_body() {
    prepend_response_body(")]}',\n");
}"#,
        |a as f, data: Dynamic| a.write_body(
            f,
            RESP_BODY,
            BodyEdit::Prepend,
            &data
        )
    );
    bind!(
        reg,
        "replace_response_body",
        RSB,
        "()",
        "Replaces the response body with `data` (string or blob). Another type is an error.",
        r#"fn on_response_body() {
    let data = parse_json(get_response_body());
    replace_response_body(to_json(#{ data: data, served_by: "proxy-rhai" }));
}"#,
        |a as f, data: Dynamic| a.write_body(
            f,
            RESP_BODY,
            BodyEdit::Replace,
            &data
        )
    );

    // Whether a body follows, and skipping a body phase for one message.
    bind!(reg, "has_request_body", RQH, "bool",
        "Whether a body (or trailers) follows the request headers. `on_request_body` runs only for a request that has one.",
        r#"fn on_request_headers() {
    if get_request_header(":method") == "POST" && !has_request_body() {
        send_http_response(400, [], "a body is required");
    }
}"#,
        |a| Ok(a.frame.borrow().stream.request_has_body));
    bind!(
        reg,
        "has_response_body",
        RSH,
        "bool",
        "Whether a body (or trailers) follows the response headers.",
        r#"fn on_response_headers() {
    if !has_response_body() { add_response_header("x-empty", "1"); }
}"#,
        |a| Ok(a.frame.borrow().stream.response_has_body)
    );
    bind!(reg, "skip_request_body", RQH, "()",
        "Lets this request's body through untouched: `on_request_body` won't run for it and the plugin won't buffer it (nor drop its `content-length`).",
        r#"fn on_request_headers() {
    if get_request_header("content-type") != "application/json" { skip_request_body(); }
}
fn on_request_body() { let doc = parse_json(get_request_body()); }"#,
        |a| {
            a.frame.borrow_mut().stream.skip_request_body = true;
            Ok(())
        });
    bind!(reg, "skip_response_body", RSH, "()",
        "Lets this response's body through untouched: `on_response_body` won't run for it and the plugin won't buffer it (a large download on a route whose JSON answers a script rewrites).",
        r#"fn on_response_headers() {
    if !(get_response_header("content-type") ?? "").starts_with("application/json") { skip_response_body(); }
}
fn on_response_body() { replace_response_body(to_json(parse_json(get_response_body()))); }"#,
        |a| {
            a.frame.borrow_mut().stream.skip_response_body = true;
            Ok(())
        });
}
