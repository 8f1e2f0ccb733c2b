//! The sandbox: the engine every script runs in, and where each bound on a script is enforced.
//!
//! A script can reach only the API in `api-docs/` and Rhai's pure functions: the engine below
//! has no `eval`, no module loading (Rhai is built with `no_module`), and nothing of the host
//! but the bindings. What it can use up is bounded as follows (limits are `limits.*` of the
//! configuration, [`Limits`], each with its range; their combination is checked by
//! `Limits::check`, so that no mix of maxima can take the VM past what it can allocate).
//!
//! | bound | enforced in |
//! | --- | --- |
//! | `max_operations` | Rhai's operation counter, set here; Rhai patches 9–11 count the work on whole values and closure calls, 15 the comparisons a sort may make; `pad` with an empty padding, which never ended inside Rhai's: [`strings`] |
//! | `max_call_depth`, `max_expr_depth` | Rhai, set here (ranges: the VM's native stack) |
//! | `max_string_size` | Rhai's size check after each operation; before a text is made: [`text_within`] / [`check_text_len`] here (bodies, callout answers, Redis replies, encodings), [`strings`] (`replace`, `pad`, changes of case), Rhai patch 17 (formatting) |
//! | `max_array_size`, `max_map_size` | Rhai's size check; before the pieces are made: [`strings`] (`split`, `split_rev`, `to_chars`); while parsing JSON: `bindings/json.rs`; while reading a Redis reply: `resp.rs` |
//! | `max_value_depth` | Rhai patch 1 (drop, copy, print and serialize recurse per level) |
//! | `max_body_size` | the phase driver, `stream.rs` (`on_body`: 413 for a request, a reset for a response) |
//! | `max_memory`, `max_vm_memory` | here, every 64 operations and at each `let`; `Api::over_memory_budget` / `Api::reserve` in the bindings (`set_context`, body and callout answer reads, `parse_json`) |
//! | `max_callouts` | `Api::room_for_call` in the bindings (callouts and Redis calls) |
//! | `max_metrics` | `bindings/metrics.rs` |
//! | shared data (`max_shared_*`) | `bindings/shared_data.rs` |
//! | header names and values a script writes | the bindings, before a write is batched or sent |
//! | what one request leaves to another | constants: `bindings::Constant` (a private copy per call); closure cycles: Rhai patch 2, freed by `stream.rs` when the stream ends; per-request state lives in the stream |
//! | what a failed call leaves in the proxy | `Api::commit` / `Api::roll_back`: a call's writes reach the proxy only when it ends well |
//! | secrets in the plugin's log lines | `redact.rs` |

use std::fmt;
use std::rc::Rc;

use rhai::{Dynamic, Engine, EvalAltResult, OptimizationLevel};

use crate::bindings::{self, Api, FnDoc, Registrar};
use crate::config::Limits;
use crate::host::Host;

mod strings;

/// Rhai's standard library as scripts get it: `Engine::new()`, with the string functions that
/// could make a value far past the limits, or never end, replaced ([`strings`]).
pub(crate) fn std_engine() -> Engine {
    let mut engine = Engine::new();
    strings::register(&mut engine);
    engine
}

/// `base` (a plugin's [`std_engine`]; `Engine::new_raw()` for the API alone) with the limits and
/// the script API, and nothing else; `docs` collects the API reference when given.
pub(crate) fn engine<H: Host + 'static>(
    mut base: Engine,
    limits: &Limits,
    api: Rc<Api<H>>,
    docs: Option<&mut Vec<FnDoc>>,
) -> Engine {
    base.set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_value_depth(limits.max_value_depth)
        .set_optimization_level(OptimizationLevel::Simple)
        .disable_symbol("eval")
        .disable_symbol("import");
    if api.host.heap_in_use().is_some() {
        // Every 64 operations: one operation makes at most a few values, each within Rhai's
        // size limits (what `Limits::largest_step` plans for past the budget).
        let captured = api.clone();
        base.on_progress_every(64, move |_| {
            captured.over_memory_budget(0).map(Dynamic::from)
        });
        // And at each `let`: values kept in variables could otherwise pile up between two
        // of those checks. (Rhai marks `on_def_var` "volatile", not deprecated.)
        let captured = api.clone();
        #[allow(deprecated)]
        base.on_def_var(move |at_run_time, _, _| match at_run_time {
            true => captured
                .over_memory_budget(0)
                .map_or(Ok(true), |message| Err(message.into())),
            false => Ok(true),
        });
    } else if api.host.counts_operations() {
        let captured = api.clone();
        base.on_progress_every(1, move |count| {
            captured.operations.set(count);
            None
        });
    }
    bindings::register(&mut Registrar {
        engine: &mut base,
        api,
        docs,
    });
    base
}

// Text size guards: a text a function makes is refused before it is made when it would be
// longer than `max_string_size`.

/// `String::from_utf8`, faster on ASCII, which most bodies and chunks are. Std's check (built
/// without wasm's SIMD) reads 4 bytes at a time; the ASCII prefix here is found 16 bytes at a
/// time, as the plugin is built with `simd128` (`.cargo/config.toml`), and std checks the rest.
pub(crate) fn text_of(bytes: Vec<u8>) -> Result<String, std::string::FromUtf8Error> {
    let ascii = ascii_prefix_len(&bytes);
    match bytes.get(ascii..).map(std::str::from_utf8) {
        // SAFETY: ASCII bytes then valid UTF-8 from a character boundary (after ASCII) are
        // valid UTF-8.
        Some(Ok(_)) => Ok(unsafe { String::from_utf8_unchecked(bytes) }),
        _ => String::from_utf8(bytes),
    }
}

/// How many of `bytes` are ASCII from the start, in whole blocks of 16 (two 64-bit words, or
/// one vector under `simd128`); the last partial block counts as not ASCII.
fn ascii_prefix_len(bytes: &[u8]) -> usize {
    const HIGH_BITS: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;
    let mut len = 0;
    for block in bytes.chunks_exact(16) {
        let block = u128::from_le_bytes(block.try_into().unwrap_or([0x80; 16]));
        if block & HIGH_BITS != 0 {
            break;
        }
        len += 16;
    }
    len
}

/// Bytes as a string, invalid UTF-8 replaced by U+FFFD; valid text is not copied.
pub(crate) fn lossy(bytes: Vec<u8>) -> String {
    text_of(bytes).unwrap_or_else(|e| replaced(e.as_bytes(), replaced_len(e.as_bytes())))
}

/// [`lossy`] for a text a script asks for: an error about `what` (`get_request_body()`) if the
/// text would be longer than `max` bytes (the string size limit; 0: none), said before it is
/// made. Each invalid byte becomes three (U+FFFD), and a failed allocation traps the VM.
pub(crate) fn text_within(
    what: impl fmt::Display,
    bytes: Vec<u8>,
    max: usize,
) -> Result<String, Box<EvalAltResult>> {
    match text_of(bytes) {
        Ok(text) => check_text_len(what, text.len(), max).map(|()| text),
        Err(e) => {
            let len = replaced_len(e.as_bytes());
            check_text_len(what, len, max)?;
            Ok(replaced(e.as_bytes(), len))
        }
    }
}

/// An error about `what` when the text it is about to make, `len` bytes, would be longer than
/// `max` (the string size limit; 0: none). Rhai checks a result's size after the call: a text
/// several times its input (escaped, encoded) could ask for more than the VM's 1 GB first.
pub(crate) fn check_text_len(
    what: impl fmt::Display,
    len: usize,
    max: usize,
) -> Result<(), Box<EvalAltResult>> {
    if max != 0 && len > max {
        return Err(format!(
            "{what}: the text would be {len} bytes, more than limits.max_string_size ({max})"
        )
        .into());
    }
    Ok(())
}

/// The length of `bytes` with each invalid UTF-8 sequence replaced by U+FFFD (3 bytes).
fn replaced_len(bytes: &[u8]) -> usize {
    bytes
        .utf8_chunks()
        .map(|c| c.valid().len() + if c.invalid().is_empty() { 0 } else { 3 })
        .sum()
}

/// `bytes` with each invalid UTF-8 sequence replaced by U+FFFD, as `String::from_utf8_lossy`
/// does, in a buffer of the exact size, `len` ([`replaced_len`]); growing one by doubling asked
/// for up to twice that.
fn replaced(bytes: &[u8], len: usize) -> String {
    let mut text = String::with_capacity(len);
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            text.push(char::REPLACEMENT_CHARACTER);
        }
    }
    text
}

/// Where in the script an error happened: the innermost position, else the call that led to it.
pub fn error_position(error: &EvalAltResult) -> rhai::Position {
    let mut inner = error;
    let mut call_site = rhai::Position::NONE;
    while let EvalAltResult::ErrorInFunctionCall(_, _, err, pos) = inner {
        if !pos.is_none() {
            call_site = *pos;
        }
        inner = err;
    }
    match inner.position() {
        pos if pos.is_none() => call_site,
        pos => pos,
    }
}

/// A bound function: its name, and its parameters' names and Rust types.
pub(crate) type KnownFn = (&'static str, &'static [(&'static str, &'static str)]);

/// What an error message may draw on to say what to fix.
pub struct Hints<'a> {
    pub(crate) known: &'a [KnownFn],
    pub(crate) limits: &'a Limits,
}

/// A script error in one line: the innermost message, where in the script it happened, and
/// the chain of calls that led there. Common mistakes get a message that names the cause and
/// the fix instead of Rhai's own.
pub fn describe_error(error: &EvalAltResult, hints: &Hints) -> String {
    let mut inner = error;
    let mut calls = Vec::new();
    let mut call_site = rhai::Position::NONE;
    while let EvalAltResult::ErrorInFunctionCall(name, _, err, pos) = inner {
        if !pos.is_none() {
            calls.push(format!("{name}() called at {pos}"));
            call_site = *pos;
        }
        inner = err;
    }
    let mut text = match inner {
        EvalAltResult::ErrorTerminated(reason, _) => format!("Script terminated: {reason}"),
        EvalAltResult::ErrorFunctionNotFound(signature, pos) => match not_found(signature, hints) {
            Some(explained) => with_position(explained, *pos),
            None => inner.to_string(),
        },
        EvalAltResult::ErrorTooManyOperations(pos) => with_position(
            format!(
                "the script ran past limits.max_operations ({} operations): a loop that never \
                 ends, or work too large for one call",
                hints.limits.max_operations
            ),
            *pos,
        ),
        EvalAltResult::ErrorStackOverflow(pos) => with_position(
            format!(
                "functions called each other deeper than limits.max_call_depth ({}): a \
                 recursion that never ends?",
                hints.limits.max_call_depth
            ),
            *pos,
        ),
        _ => inner.to_string(),
    };
    if inner.position().is_none() && !call_site.is_none() {
        text.push_str(&format!(" ({call_site})"));
    }
    if !calls.is_empty() {
        text.push_str(&format!(" [in {}]", calls.join(", in ")));
    }
    text
}

fn with_position(text: String, pos: rhai::Position) -> String {
    match pos.is_none() {
        true => text,
        false => format!("{text} ({pos})"),
    }
}

/// `Function not found: name (types)`, said as what went wrong; `None` for a message that is
/// not a signature (a sort's own "elements … cannot be sorted").
fn not_found(signature: &str, hints: &Hints) -> Option<String> {
    let (name, args) = signature.split_once(" (")?;
    let args = args.strip_suffix(')').unwrap_or(args);
    if name.contains(' ') {
        return None;
    }
    let args: Vec<&str> = match args.trim() {
        "" => Vec::new(),
        args => args.split(", ").map(plain_type).collect(),
    };
    let given = args.join(", ");
    if name.starts_with("anon$") {
        return Some(format!(
            "a callback (closure) was called with {} argument{} ({given}), and it takes another \
             number of parameters: give it as many as the call passes",
            args.len(),
            if args.len() == 1 { "" } else { "s" }
        ));
    }
    if let Some(at) = args.iter().position(|a| *a == "()") {
        let operator = !name.chars().any(|c| c.is_alphanumeric() || c == '_');
        let on = if args.len() <= 2 && operator {
            format!("the operator `{name}` was applied to ()")
        } else if at == 0 {
            format!("`{name}` was called on ()")
        } else {
            format!("`{name}` was given () as argument {}", at + 1)
        };
        return Some(format!(
            "{on}: the value is () (nothing), e.g. a header that is absent, a map field or \
             config() key that isn't set; check for it (`if x != () {{ … }}`) or give a default \
             (`x ?? \"\"`)"
        ));
    }
    let forms: Vec<String> = hints
        .known
        .iter()
        .filter(|(known, _)| *known == name)
        .map(|(_, params)| {
            let params: Vec<String> = params
                .iter()
                .map(|(p, t)| format!("{p}: {}", plain_type(t)))
                .collect();
            format!("{name}({})", params.join(", "))
        })
        .collect();
    if !forms.is_empty() {
        return Some(format!(
            "{name}() was called with ({given}), which it doesn't take: it takes {}",
            forms.join(" or ")
        ));
    }
    let mut text = format!("no function `{name}` takes ({given})");
    if let Some(close) = closest(name, hints.known.iter().map(|(n, _)| *n)) {
        text.push_str(&format!(": did you mean `{close}`?"));
    }
    Some(text)
}

/// A Rhai or Rust type name as scripts know it.
pub(crate) fn plain_type(rust: &str) -> &str {
    let t = rust.trim();
    match t {
        _ if t.contains("str") || t.contains("String") => "string",
        "i64" | "INT" => "int",
        "f64" | "FLOAT" | "rhai::FLOAT" => "float",
        "()" => "()",
        "Dynamic" => "any",
        "Fn" | "FnPtr" => "function",
        "Map" | "map" | "rhai::Map" => "map",
        "Array" | "array" | "rhai::Array" => "array",
        "Blob" | "blob" | "rhai::Blob" => "blob",
        _ => t,
    }
}

/// The name among `names` closest to `name` (at most a third of its letters off).
pub(crate) fn closest<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.len() / 3).max(1);
    names
        .map(|n| (edit_distance(name, n), n))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance between two names.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    /// `text_of` answers as `String::from_utf8` wherever the ASCII prefix ends: in a 16-byte
    /// block, at its edge, in the last partial block, with valid, invalid and cut-off UTF-8
    /// after it.
    #[test]
    fn text_of_is_from_utf8() {
        let tails: [&[u8]; 6] = [
            b"",
            b"\xc3\xa9",
            b"\xe4\xb8\xad!",
            b"\xff",
            b"\xc3",
            b"a\xe4\xb8",
        ];
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 64, 100] {
            for tail in tails {
                for at in [0, len / 2, len] {
                    let mut bytes = vec![b'x'; len];
                    bytes.splice(at..at, tail.iter().copied());
                    let ours = super::text_of(bytes.clone()).map_err(|e| e.utf8_error());
                    let std = String::from_utf8(bytes.clone()).map_err(|e| e.utf8_error());
                    assert_eq!(ours, std, "{bytes:?}");
                }
            }
        }
    }
}
