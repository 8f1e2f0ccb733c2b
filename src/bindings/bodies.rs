//! Bodies: read and write the whole body or the current chunk, and choose per message how
//! its body goes through the plugin (buffered, streamed or untouched).

use rhai::Dynamic;

use super::*;
use crate::stream::{BodyChoice, BodyView};

#[derive(Clone, Copy)]
enum BodyEdit {
    Prepend,
    Append,
    Replace,
}

impl<H: Host> Api<H> {
    /// The part of the body `f` acts on; an error in a callback whose body went on already.
    fn view_for(&self, f: &str, buffer: BufferType) -> ScriptResult<BodyView> {
        let view = *self.frame.borrow_mut().stream.view_mut(buffer);
        if view.gone {
            return err(format!(
                "{f}(): the body this callback's call was made for went on already (the \
                 script resumed the stream in an earlier callback): act on it before resuming"
            ));
        }
        Ok(view)
    }

    /// The body (or chunk) as the script sees it: the proxy's, with this call's writes applied.
    fn get_body(&self, f: &str, buffer: BufferType) -> ScriptResult<Vec<u8>> {
        self.reserve(f, self.view_for(f, buffer)?.len)?;
        let frame = self.frame.borrow();
        self.written_body(&frame, buffer).or_else(|s| refused(f, s))
    }

    fn written_body(&self, frame: &Frame, buffer: BufferType) -> Result<Vec<u8>, Status> {
        let view = frame.stream.view(buffer);
        let writes: Vec<&BodyWrite> = frame
            .body_writes
            .iter()
            .filter(|w| w.buffer == buffer)
            .collect();
        let len = writes.first().map_or(view.len, |first| first.len_before);
        let mut body = if len == 0 {
            Vec::new()
        } else {
            self.host
                .get_buffer(buffer, view.start, len)?
                .unwrap_or_default()
        };
        for w in writes {
            let end = w.start.saturating_add(w.size).min(body.len());
            let start = w.start.min(end);
            body.splice(start..end, w.data.iter().copied());
        }
        Ok(body)
    }

    /// Writes a body the three ways Envoy supports: prepend (0, 0), replace (0, len), append
    /// (len, 0); then keeps the known length in step.
    fn write_body(
        &self,
        f: &str,
        buffer: BufferType,
        edit: BodyEdit,
        data: &Dynamic,
    ) -> ScriptResult<()> {
        let data = bytes_of(f, data)?;
        let view = self.view_for(f, buffer)?;
        if view.closed {
            if data.is_empty() {
                return Ok(()); // nothing to add: the (empty) chunk stays as it is
            }
            return err(format!(
                "{f}(): the message ended with trailers and its data already went on: a wasm \
                 filter can't add body data once the trailers came (write in an earlier chunk, \
                 or return PAUSE from it to hold it)"
            ));
        }
        let len = view.len;
        let (start, size, new_len) = match edit {
            BodyEdit::Prepend => (0, 0, len + data.len()),
            BodyEdit::Append => (len, 0, len + data.len()),
            BodyEdit::Replace => (0, len, data.len()),
        };
        let mut frame = self.frame.borrow_mut();
        frame.stream.view_mut(buffer).len = new_len;
        if !frame.body_writes.iter().any(|w| w.buffer == buffer) {
            self.host.writes_held(body_name(buffer));
        }
        frame.body_writes.push(BodyWrite {
            buffer,
            start,
            size,
            data,
            len_before: len,
        });
        Ok(())
    }

    /// Hands the call's body writes to the proxy. When the call acted on the whole buffer they
    /// go as they are (Envoy takes only a prepend, a replace of everything, or an append);
    /// a chunk with held bytes around it is rewritten with one replace of the whole buffer.
    pub(super) fn commit_body_writes(&self, frame: &mut Frame) {
        for buffer in [BufferType::HttpRequestBody, BufferType::HttpResponseBody] {
            let Some(first) = frame.body_writes.iter().find(|w| w.buffer == buffer) else {
                continue;
            };
            self.host.writes_sent(body_name(buffer));
            let view = frame.stream.view(buffer);
            let result = if view.start == 0 && view.after == 0 {
                frame
                    .body_writes
                    .iter()
                    .filter(|w| w.buffer == buffer)
                    .try_for_each(|w| self.host.set_buffer(buffer, w.start, w.size, &w.data))
            } else {
                let len_before = first.len_before;
                let total = view.start + len_before + view.after;
                self.written_body(frame, buffer).and_then(|chunk| {
                    let mut all = self.host.get_buffer(buffer, 0, total)?.unwrap_or_default();
                    let end = (view.start + len_before).min(all.len());
                    all.splice(view.start.min(end)..end, chunk);
                    self.host.set_buffer(buffer, 0, total, &all)
                })
            };
            if let Err(status) = result {
                self.log_plugin(
                    LogLevel::Warn,
                    &format!("the proxy refused this call's write to {buffer:?} ({status:?})"),
                );
            }
        }
        frame.body_writes.clear();
    }

    /// `buffer_*_body()` / `stream_*_body()` / `skip_*_body()`: how this message's body goes.
    fn choose_body(&self, f: &str, side: Side, choice: BodyChoice) -> ScriptResult<()> {
        let needs = match (choice, side) {
            (BodyChoice::Buffer, Side::Request) => Some(Phase::RequestBody),
            (BodyChoice::Buffer, Side::Response) => Some(Phase::ResponseBody),
            (BodyChoice::Stream, Side::Request) => Some(Phase::RequestChunk),
            (BodyChoice::Stream, Side::Response) => Some(Phase::ResponseChunk),
            _ => None,
        };
        if let Some(phase) = needs {
            if !self.frame.borrow().defines.contains(phase) {
                return err(format!("{f}(): the script defines no {phase}"));
            }
        }
        let mut frame = self.frame.borrow_mut();
        if frame.stream.framing.released(side) {
            let what = match side {
                Side::Request => "request",
                Side::Response => "response",
            };
            return err(format!(
                "{f}(): the {what}'s headers went on already (the stream was resumed): choose how its body goes before that"
            ));
        }
        *frame.stream.choice_mut(side) = choice;
        Ok(())
    }
}

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
        "The whole request body as a string (invalid UTF-8 replaced by U+FFFD; a text longer than `limits.max_string_size` is an error). Defining `on_request_body` makes the proxy buffer the body (up to `limits.max_body_size`); the function runs once, on the whole body. In `on_request_chunk` (and its callbacks), the current chunk instead, with this call's writes applied.",
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
        "The whole request body (in `on_request_chunk`: the current chunk), byte for byte.",
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
        "Adds `data` (string or blob) at the end of the request body (in `on_request_chunk`: after the current chunk). Another type is an error.",
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
        "Adds `data` (string or blob) at the start of the request body (in `on_request_chunk`: before the current chunk). Another type is an error.",
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
        "Replaces the request body with `data` (string or blob); in `on_request_chunk`, the current chunk (an empty string drops it). The proxy drops `content-length` before the body or chunk phase runs, so the new length needs no care. Another type is an error.",
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
        "The whole response body as a string (invalid UTF-8 replaced by U+FFFD; a text longer than `limits.max_string_size` is an error). Defining `on_response_body` makes the proxy buffer the body (up to `limits.max_body_size`); the function runs once, on the whole body. In `on_response_chunk` (and its callbacks), the current chunk instead.",
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
        "The whole response body (in `on_response_chunk`: the current chunk), byte for byte.",
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
        "Adds `data` (string or blob) at the end of the response body (in `on_response_chunk`: after the current chunk, e.g. a final event when `last` is true). Another type is an error.",
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
        "Adds `data` (string or blob) at the start of the response body (in `on_response_chunk`: before the current chunk). Another type is an error.",
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
        "Replaces the response body with `data` (string or blob); in `on_response_chunk`, the current chunk (an empty string drops it). Another type is an error.",
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
        "Whether a body (or trailers) follows the request headers. `on_request_body` and `on_request_chunk` run only for a request that has one.",
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
        "Lets this request's body through untouched: neither `on_request_body` nor `on_request_chunk` runs for it and the plugin won't buffer it (nor drop its `content-length`). Also in the header phase's callbacks, until the stream is resumed (an error after: the headers went on).",
        r#"fn on_request_headers() {
    if get_request_header("content-type") != "application/json" { skip_request_body(); }
}
fn on_request_body() { let doc = parse_json(get_request_body()); }"#,
        |a as f| a.choose_body(f, Side::Request, BodyChoice::Skip));
    bind!(reg, "skip_response_body", RSH, "()",
        "Lets this response's body through untouched: neither `on_response_body` nor `on_response_chunk` runs for it and the plugin won't buffer it (a large download on a route whose JSON answers a script rewrites). Also in the header phase's callbacks, until the stream is resumed (an error after: the headers went on).",
        r#"fn on_response_headers() {
    if !(get_response_header("content-type") ?? "").starts_with("application/json") { skip_response_body(); }
}
fn on_response_body() { replace_response_body(to_json(parse_json(get_response_body()))); }"#,
        |a as f| a.choose_body(f, Side::Response, BodyChoice::Skip));
    bind!(reg, "buffer_request_body", RQH, "()",
        "For a script that defines both `on_request_body` and `on_request_chunk`: this request's body is buffered and `on_request_body` runs once, on all of it (without this call the body is streamed through `on_request_chunk`). An error when the script defines no `on_request_body`. Also in the header phase's callbacks, until the stream is resumed (an error after: the headers went on).",
        r#"fn on_request_headers() {
    if get_request_header("content-type") == "application/json" { buffer_request_body(); }
}
fn on_request_body() { let doc = parse_json(get_request_body()); }
fn on_request_chunk(chunk, last) { set_context("bytes", (get_context("bytes") ?? 0) + chunk.len()); }"#,
        |a as f| a.choose_body(f, Side::Request, BodyChoice::Buffer));
    bind!(reg, "stream_request_body", RQH, "()",
        "This request's body goes through `on_request_chunk`, piece by piece (the default when the script defines it). An error when the script defines no `on_request_chunk`. Also in the header phase's callbacks, until the stream is resumed (an error after: the headers went on).",
        r#"fn on_request_headers() {
    if get_request_header("content-type") == "application/json" { buffer_request_body(); } else { stream_request_body(); }
}
fn on_request_body() { let doc = parse_json(get_request_body()); }
fn on_request_chunk(chunk, last) { }"#,
        |a as f| a.choose_body(f, Side::Request, BodyChoice::Stream));
    bind!(reg, "buffer_response_body", RSH, "()",
        "For a script that defines both `on_response_body` and `on_response_chunk`: this response's body is buffered and `on_response_body` runs once, on all of it (without this call it is streamed). An error when the script defines no `on_response_body`. Also in the header phase's callbacks, until the stream is resumed (an error after: the headers went on).",
        r#"fn on_response_headers() {
    if (get_response_header("content-type") ?? "").starts_with("application/json") { buffer_response_body(); }
}
fn on_response_body() { replace_response_body(to_json(parse_json(get_response_body()))); }
fn on_response_chunk(chunk, last) { }"#,
        |a as f| a.choose_body(f, Side::Response, BodyChoice::Buffer));
    bind!(reg, "stream_response_body", RSH, "()",
        "This response's body goes through `on_response_chunk`, piece by piece (the default when the script defines it). An error when the script defines no `on_response_chunk`. Also in the header phase's callbacks, until the stream is resumed (an error after: the headers went on).",
        r#"fn on_response_headers() {
    if get_response_header("content-type") == "text/event-stream" { stream_response_body(); } else { buffer_response_body(); }
}
fn on_response_body() { }
fn on_response_chunk(chunk, last) { }"#,
        |a as f| a.choose_body(f, Side::Response, BodyChoice::Stream));
}

/// What the writes to `buffer` change, in words.
fn body_name(buffer: BufferType) -> &'static str {
    match buffer {
        BufferType::HttpRequestBody => "request body",
        _ => "response body",
    }
}
