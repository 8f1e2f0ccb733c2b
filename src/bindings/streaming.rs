//! Helpers for chunk phases: split a stream into server-sent events or lines, carrying the
//! incomplete tail of each chunk to the next call of the same stream and direction.

use rhai::{Array, Dynamic, Map};

use super::*;

/// The incomplete event and line `sse_events` and `lines` carry between the chunks of one
/// direction of a stream.
#[derive(Default)]
pub(crate) struct Splitter {
    sse: SseState,
    /// The bytes of the incomplete line `lines` carries.
    line: Vec<u8>,
}

/// An event being read: its fields so far, and its incomplete line.
#[derive(Default)]
struct SseState {
    line: Vec<u8>,
    /// The last chunk ended with `\r`: a `\n` starting the next one ends no second line.
    after_cr: bool,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<i64>,
    /// Bytes the fields above hold (for `limits.max_string_size`).
    size: usize,
}

impl SseState {
    /// Reads the bytes of one chunk; the events they complete go to `out`.
    fn feed(&mut self, bytes: &[u8], out: &mut Array) {
        let mut rest = bytes;
        if self.after_cr {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(i) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let (line, end) = (
                rest.get(..i).unwrap_or_default(),
                rest.get(i..).unwrap_or_default(),
            );
            self.line.extend_from_slice(line);
            let line = std::mem::take(&mut self.line);
            self.read_line(&line, out);
            self.line = line;
            self.line.clear();
            rest = match end {
                [b'\r', b'\n', tail @ ..] => tail,
                [b'\r'] => {
                    self.after_cr = true;
                    &[]
                }
                [_, tail @ ..] => tail,
                [] => &[],
            };
        }
        self.line.extend_from_slice(rest);
    }

    /// One line of the stream, as the SSE spec reads it.
    fn read_line(&mut self, line: &[u8], out: &mut Array) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.first() == Some(&b':') {
            return; // a comment
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let value = line.get(i + 1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (line.get(..i).unwrap_or_default(), value)
            }
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = Some(value.into_owned()),
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            b"id" if !value.contains('\0') => self.id = Some(value.into_owned()),
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => return,
        }
        self.size += line.len();
    }

    /// A blank line ends an event: it is given when it had a field.
    fn dispatch(&mut self, out: &mut Array) {
        let had_field = self.event.is_some()
            || self.data.is_some()
            || self.id.is_some()
            || self.retry.is_some();
        if had_field {
            let text = |v: Option<String>| v.map_or(Dynamic::UNIT, Dynamic::from);
            let mut event = Map::new();
            event.insert("event".into(), text(self.event.take()));
            event.insert("data".into(), text(self.data.take()));
            event.insert("id".into(), text(self.id.take()));
            event.insert(
                "retry".into(),
                self.retry.take().map_or(Dynamic::UNIT, Dynamic::from),
            );
            out.push(event.into());
        }
        self.size = 0;
    }

    fn held(&self) -> usize {
        self.size + self.line.len()
    }
}

/// `bytes` as text when they are valid UTF-8 (checked once, not copied), else given back; and
/// how much of them ends on a character boundary: all of them, but an incomplete UTF-8
/// character at their end when the rest is text (binary data is not held back).
pub(crate) fn complete_utf8(bytes: Vec<u8>) -> (usize, Result<String, Vec<u8>>) {
    match crate::sandbox::text_of(bytes) {
        Ok(text) => (text.len(), Ok(text)),
        Err(e) => {
            let error = e.utf8_error();
            let complete = match error.error_len() {
                None => error.valid_up_to(),
                Some(_) => e.as_bytes().len(),
            };
            (complete, Err(e.into_bytes()))
        }
    }
}

impl<H: Host> Api<H> {
    /// Runs `run` on the chunk's bytes (a string or a blob) and the splitter of the running
    /// chunk phase; `run` gives the complete items and the bytes the splitter still holds,
    /// which may not pass the string size limit (`what`: "an event", "a line").
    fn split(
        &self,
        f: &str,
        what: &str,
        chunk: &Dynamic,
        last: bool,
        run: impl FnOnce(&mut Splitter, &[u8], usize) -> (Array, usize),
    ) -> ScriptResult<Array> {
        let bytes = if let Some(text) = chunk.read_lock::<ImmutableString>() {
            text.as_bytes().to_vec()
        } else if let Some(blob) = chunk.read_lock::<Blob>() {
            blob.clone()
        } else {
            return err(format!(
                "{f}(): the chunk must be a string or a blob, not {}",
                chunk.type_name()
            ));
        };
        self.reserve(f, bytes.len())?;
        let side = Side::of(self.phase.get().unwrap_or(Phase::ResponseChunk));
        let max = self.limits.max_string_size;
        let (items, held) = run(
            self.frame.borrow_mut().stream.splitter_mut(side),
            &bytes,
            max,
        );
        if !last && max != 0 && held > max {
            return err(format!(
                "{f}(): {what} of more than {held} bytes, longer than limits.max_string_size \
                 ({max}): it was dropped"
            ));
        }
        Ok(items)
    }

    fn sse_events(&self, f: &str, chunk: &Dynamic, last: bool) -> ScriptResult<Array> {
        self.split(f, "an event", chunk, last, |splitter, bytes, max| {
            let mut events = Array::new();
            splitter.sse.feed(bytes, &mut events);
            let held = splitter.sse.held();
            if last || (max != 0 && held > max) {
                // The stream ends inside an event: the SSE spec drops it.
                splitter.sse = SseState::default();
            }
            (events, held)
        })
    }

    fn lines(&self, f: &str, chunk: &Dynamic, last: bool) -> ScriptResult<Array> {
        self.split(f, "a line", chunk, last, |splitter, bytes, max| {
            let mut lines = Array::new();
            let mut rest = bytes;
            while let Some(i) = rest.iter().position(|b| *b == b'\n') {
                splitter
                    .line
                    .extend_from_slice(rest.get(..i).unwrap_or_default());
                rest = rest.get(i + 1..).unwrap_or_default();
                let line = std::mem::take(&mut splitter.line);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                lines.push(lossy(line.to_vec()).into());
            }
            splitter.line.extend_from_slice(rest);
            let held = splitter.line.len();
            if last && !splitter.line.is_empty() {
                let line = std::mem::take(&mut splitter.line);
                lines.push(lossy(line).into());
            } else if max != 0 && held > max {
                splitter.line = Vec::new();
            }
            (lines, held)
        })
    }
}

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    const CHUNKS: Allowed = Allowed::In(Phases::CHUNKS);
    bind!(reg, "sse_events", CHUNKS, "array of maps",
        "The server-sent events this chunk completes, in order: each a map of `event`, `data`, `id` and `retry` (an absent field is `()`; `data` lines joined with `\\n`, `retry` an int), as the SSE spec reads them (lines end with `\\n`, `\\r\\n` or `\\r`; `:` starts a comment; a block with none of these fields is no event). An event (or a UTF-8 character) split across chunks is returned by the call that completes it: the incomplete part is kept for the next call in the same stream and direction. `chunk` is a string or a blob. An event longer than `limits.max_string_size` is dropped with an error. Only in chunk phases.",
        r#"fn on_response_chunk(chunk, last) {
    for event in sse_events(chunk) {
        if event.data == "[DONE]" { log_info("stream done"); }
    }
}"#,
        |a as f, chunk: Dynamic| a.sse_events(f, &chunk, false));
    bind!(reg, "sse_events", CHUNKS, "array of maps",
        "`sse_events(chunk)`; with `last` true (the end of the stream), an incomplete final event is dropped, as the SSE spec says, and nothing is kept.",
        r#"fn on_response_chunk(chunk, last) {
    let n = (get_context("events") ?? 0) + sse_events(chunk, last).len();
    set_context("events", n);
    if last { log_info(`${n} events`); }
}"#,
        |a as f, chunk: Dynamic, last: bool| a.sse_events(f, &chunk, last));
    bind!(reg, "lines", CHUNKS, "array of strings",
        "The complete lines this chunk ends (newline-delimited streams such as NDJSON), without their line ending (`\\n` or `\\r\\n`); the incomplete last line is kept for the next call in the same stream and direction. `chunk` is a string or a blob (lines are strings, invalid UTF-8 replaced). A line longer than `limits.max_string_size` is dropped with an error. Only in chunk phases.",
        r#"fn on_response_chunk(chunk, last) {
    for line in lines(chunk) {
        let record = parse_json(line);
        if record.level == "debug" { log_info("debug record passed"); }
    }
}"#,
        |a as f, chunk: Dynamic| a.lines(f, &chunk, false));
    bind!(reg, "lines", CHUNKS, "array of strings",
        "`lines(chunk)`; with `last` true, a final line that has no line ending is returned too.",
        r#"fn on_request_chunk(chunk, last) {
    for line in lines(chunk, last) { if line.contains("DROP TABLE") { send_http_response(400, [], "refused"); } }
}"#,
        |a as f, chunk: Dynamic, last: bool| a.lines(f, &chunk, last));
}
