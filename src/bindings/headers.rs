//! Request and response headers and trailers: read, replace, add, remove. The four maps are
//! one table (`header_maps!`); the functions they call are below it.

use std::borrow::Cow;

use rhai::{Array, Dynamic, ImmutableString, Map};

use super::*;
use crate::batch::{Write, WriteError};

/// Registers, for each header map of the table, `get_<stem>s`, `get_<stem>`, `replace_<stem>s`,
/// `replace_<stem>`, `add_<stem>` and `remove_<stem>`. A function's doc is a sentence shared by
/// the four maps (with the map's `noun`) and, where the maps differ, the row's own ending.
macro_rules! header_maps {
    ($reg:expr; $({
        map: $map:expr, stem: $stem:literal, noun: $noun:literal, all: $all:ident,
        read: $read:expr, write: $write:expr,
        get_all: $get_all_doc:literal, $get_all_ex:literal,
        get: $get_ex:literal,
        replace_all: $replace_all_doc:literal, $replace_all_ex:literal,
        replace: $replace_doc:literal, $replace_ex:literal,
        add: $add_doc:literal, $add_ex:literal,
        remove: $remove_ex:literal $(,)?
    })*) => {$(
        bind!($reg, concat!("get_", $stem, "s"), $read, "array of [name, value]",
            concat!("All ", $noun, "s, in order, duplicates kept", $get_all_doc),
            $get_all_ex,
            |a as f| a.get_headers(f, $map));
        bind!($reg, concat!("get_", $stem), $read, "string, or () when absent",
            concat!("The value of one ", $noun, " (name case-insensitive); with several values, \
                the first (Envoy's rule); `get_", $stem, "s()` has them all."),
            $get_ex,
            |a as f, name: &str| a.get_header(f, $map, name));
        bind!($reg, concat!("replace_", $stem, "s"), $write, "()",
            concat!("Replaces all ", $noun, "s", $replace_all_doc),
            $replace_all_ex,
            |a as f, $all: Dynamic| a.set_headers(f, $map, &$all));
        bind!($reg, concat!("replace_", $stem), $write, "()",
            concat!("Sets a ", $noun, " to one value (string or blob): every value it had is \
                removed and the new one added at the end (Envoy's rule)", $replace_doc),
            $replace_ex,
            |a as f, name: ImmutableString, value: Dynamic| a.put_header(f, $map, name, value, false));
        bind!($reg, concat!("add_", $stem), $write, "()",
            concat!("Adds a ", $noun, " value (string or blob), keeping the values it already \
                had", $add_doc),
            $add_ex,
            |a as f, name: ImmutableString, value: Dynamic| a.put_header(f, $map, name, value, true));
        bind!($reg, concat!("remove_", $stem), $write, "()",
            concat!("Removes every value of a ", $noun, "; nothing happens when it is absent."),
            $remove_ex,
            |a as f, name: ImmutableString| a.remove_header(f, $map, name));
    )*};
}

/// The trailer phases (the header ones, shared with the body functions, are in `bindings.rs`).
const RQT: Allowed = Allowed::In(Phases::REQUEST_TRAILERS);
const RST: Allowed = Allowed::In(Phases::RESPONSE_TRAILERS);

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    header_maps! { reg;
    {
        map: MapType::HttpRequestHeaders, stem: "request_header", noun: "request header",
        all: headers, read: READ_RQH, write: RQ_MAP,
        get_all: ". Pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) come first.",
        r#"fn on_request_headers() {
    for h in get_request_headers() {
        log_debug(`${h[0]}: ${h[1]}`);
    }
}"#,
        get: r#"fn on_request_headers() {
    let user = get_request_header("x-user");
    if user == () {
        send_http_response(401, [], "who are you?");
    }
}"#,
        replace_all: " with `headers`: an array of [name, value] pairs, or a map whose values are strings or arrays of strings (names are lowercased). Keep the pseudo-headers (`:method`, `:path`, …) unless you mean to drop them. Anything else than pairs or a map is an error.",
        r#"fn on_request_headers() {
    // Keep only the pseudo-headers and `accept`.
    let kept = get_request_headers().filter(|h| h[0].starts_with(":") || h[0] == "accept");
    replace_request_headers(kept);
}"#,
        replace: ". Pseudo-headers such as `:path` can be set too.",
        r#"fn on_request_headers() {
    replace_request_header(":path", "/v2" + get_request_header(":path"));
}"#,
        add: ". For a header Envoy keeps inline (`user-agent`, `accept`, `authorization`, `x-forwarded-for`, …) the value is appended to the existing one after a comma, as Envoy does. Every header write is checked as HTTP allows, and a bad one is an error naming it: a name is a token (letters, digits, ``!#$%&'*+-.^_`|~``; lowercased), a value has no control character but tab (no CR, LF or NUL); pseudo-headers only where the message has them (`:method`, `:path`, `:authority`, `:scheme`, `:protocol` in a request, `:status` 200..=599 in a response), set with `replace_*`, with values that fit the request or status line. Past a call's third write the map goes to the proxy whole, which takes at most 1,024 headers and 1 MiB: a write that would make it larger is an error.",
        r#"fn on_request_headers() {
    add_request_header("x-forwarded-by", "proxy-rhai");
}"#,
        remove: r#"fn on_request_headers() {
    remove_request_header("cookie");
}"#,
    }
    {
        map: MapType::HttpResponseHeaders, stem: "response_header", noun: "response header",
        all: headers, read: READ_RSH, write: RS_MAP,
        get_all: "; `:status` comes first.",
        r#"fn on_response_headers() {
    let n = get_response_headers().len();
    log_info(`upstream sent ${n} headers`);
}"#,
        get: r#"fn on_response_headers() {
    if get_response_header(":status") == "404" {
        replace_response_header("cache-control", "no-store");
    }
}"#,
        replace_all: ", like `replace_request_headers`; keep `:status`.",
        r#"fn on_response_headers() {
    replace_response_headers(#{ ":status": "200", "content-type": "text/plain" });
}"#,
        replace: ". Setting `:status` changes the status the client sees.",
        r#"fn on_response_headers() {
    replace_response_header("server", "proxy-rhai");
}"#,
        add: ". For a header Envoy keeps inline (`vary`, `cache-control`, `etag`, …) the value is appended to the existing one after a comma.",
        r#"fn on_response_headers() {
    add_response_header("set-cookie", "seen=1; Path=/");
}"#,
        remove: r#"fn on_response_headers() {
    remove_response_header("x-powered-by");
}"#,
    }
    {
        map: MapType::HttpRequestTrailers, stem: "request_trailer", noun: "request trailer",
        all: trailers, read: RQT, write: RQT,
        get_all: ".",
        r#"fn on_request_trailers() {
    for t in get_request_trailers() { log_debug(`${t[0]}: ${t[1]}`); }
}"#,
        get: r#"fn on_request_trailers() {
    if get_request_trailer("grpc-status") != () { log_info("a gRPC request trailer"); }
}"#,
        replace_all: " (pairs or map).",
        r#"fn on_request_trailers() {
    replace_request_trailers(#{ "x-checksum": "ok" });
}"#,
        replace: ".",
        r#"fn on_request_trailers() {
    replace_request_trailer("x-checked-by", "proxy-rhai");
}"#,
        add: ".",
        r#"fn on_request_trailers() {
    add_request_trailer("x-seen", "1");
}"#,
        remove: r#"fn on_request_trailers() {
    remove_request_trailer("x-debug");
}"#,
    }
    {
        map: MapType::HttpResponseTrailers, stem: "response_trailer", noun: "response trailer",
        all: trailers, read: RST, write: RST,
        get_all: ".",
        r#"fn on_response_trailers() {
    log_info(`${get_response_trailers().len()} response trailers`);
}"#,
        get: r#"fn on_response_trailers() {
    if get_response_trailer("grpc-status") != "0" { increment_counter("grpc_errors", 1); }
}"#,
        replace_all: " (pairs or map).",
        r#"fn on_response_trailers() {
    replace_response_trailers([["grpc-status", "0"]]);
}"#,
        replace: ".",
        r#"fn on_response_trailers() {
    replace_response_trailer("grpc-message", "");
}"#,
        add: ".",
        r#"fn on_response_trailers() {
    add_response_trailer("x-served-by", "proxy-rhai");
}"#,
        remove: r#"fn on_response_trailers() {
    remove_response_trailer("x-internal-timing");
}"#,
    }
    }
}

impl<H: Host> Api<H> {
    pub(super) fn get_headers(&self, f: &str, map: MapType) -> ScriptResult<Array> {
        let mut frame = self.frame.borrow_mut();
        match frame.batch(map) {
            Some(batch) => batch.get_all(&self.host, map).map(header_pairs_of),
            None => self
                .host
                .get_map(map)
                .map(|headers| header_pairs_of(&headers)),
        }
        .or_else(|s| refused(f, s))
    }

    pub(super) fn get_header(&self, f: &str, map: MapType, name: &str) -> ScriptResult<Dynamic> {
        let mut frame = self.frame.borrow_mut();
        let value = match frame.batch(map) {
            Some(batch) => batch.get(&self.host, map, name),
            None => self
                .host
                .get_map_value(map, name)
                .map(|v| v.map(Cow::Owned)),
        };
        Ok(match value.or_else(|s| refused(f, s))? {
            Some(Cow::Owned(v)) => lossy(v).into(),
            Some(Cow::Borrowed(v)) => text(v).into(),
            None => Dynamic::UNIT,
        })
    }

    fn set_headers(&self, f: &str, map: MapType, headers: &Dynamic) -> ScriptResult<()> {
        let pairs = header_pairs(f, headers)?;
        let pairs = pairs.iter().map(|(k, v)| (k.as_str(), &v[..]));
        header_check::check_list(f, Target::of(map), pairs.clone()).or_else(err)?;
        for framing in ["content-length", "transfer-encoding"] {
            let mut values = pairs
                .clone()
                .filter(|(k, _)| k.eq_ignore_ascii_case(framing));
            if let Some((_, value)) = values.next() {
                let twice = values.next().is_some();
                self.check_framing(f, map, framing, value, twice)?;
            }
        }
        let headers = HeaderMap::from_pairs(map, pairs);
        match self.frame.borrow_mut().batch(map) {
            Some(batch) => batch.set_all(headers, map, f).or_else(err),
            None => {
                header_check::check_size(f, Target::of(map), headers.len(), headers.abi_size())
                    .or_else(err)?;
                self.host.set_map(map, &headers).or_else(|s| refused(f, s))
            }
        }
    }

    /// `replace_*` (`adding` false) or `add_*` of one value. Inlined into each binding, as
    /// before the checks: ~150 wasm instructions a write less.
    #[inline(always)]
    fn put_header(
        &self,
        f: &str,
        map: MapType,
        name: ImmutableString,
        value: Dynamic,
        adding: bool,
    ) -> ScriptResult<()> {
        let value = header_value_of(f, value)?;
        let added = check_write(f, map, &name, value.as_bytes(), adding)?;
        if header_check::is_framing(&name) {
            self.check_framing(f, map, &name, value.as_bytes(), adding)?;
        }
        let write = match adding {
            true => Write::Add(name, value),
            false => Write::Replace(name, value),
        };
        self.write_header(f, map, write, added)
    }

    /// A script's write of `content-length` or `transfer-encoding` (`adding`: a second
    /// value): only one that leaves the message's as it is. The plugin frames a body it may
    /// change itself ([`crate::stream::StreamState::release_headers`]); a value the script
    /// made up would make the next hop read the body short, wait for more, or read a second
    /// request from it (measured in Envoy 1.40). Removing one is allowed.
    #[cold]
    #[inline(never)]
    fn check_framing(
        &self,
        f: &str,
        map: MapType,
        name: &str,
        value: &[u8],
        adding: bool,
    ) -> ScriptResult<()> {
        let current = match self.frame.borrow_mut().batch(map) {
            Some(batch) => batch
                .get(&self.host, map, name)
                .map(|v| v.map(Cow::into_owned)),
            None => return Ok(()), // a callout answer's maps: read-only
        };
        if !adding && current.ok().flatten().as_deref() == Some(value) {
            return Ok(());
        }
        err(format!(
            "{f}(): a script may not set {name}: the proxy frames the body (remove it, or change the body and the plugin frames it anew)"
        ))
    }

    fn remove_header(&self, f: &str, map: MapType, name: ImmutableString) -> ScriptResult<()> {
        self.write_header(f, map, Write::Remove(name), 0)
    }

    /// A header write (of `added` bytes of name and value): into the call's batch for the
    /// batched maps, else to the proxy at once.
    fn write_header(&self, f: &str, map: MapType, write: Write, added: usize) -> ScriptResult<()> {
        if let Some((side, false)) = self.frame.borrow().stream.callback {
            if side.headers() == map {
                return err(format!(
                    "{f}(): the headers went on already (the script resumed the stream in an \
                     earlier callback): write them before resuming"
                ));
            }
        }
        let result = match self.frame.borrow_mut().batch(map) {
            Some(batch) => batch.write(&self.host, map, write, added),
            None => write.send(&self.host, map).map_err(WriteError::Refused),
        };
        result.or_else(|e| self.write_refused(f, map, e))
    }

    #[cold]
    #[inline(never)]
    fn write_refused(&self, f: &str, map: MapType, error: WriteError) -> ScriptResult<()> {
        match error {
            WriteError::Refused(status) => refused(f, status),
            WriteError::TooLarge => {
                let (pairs, bytes) = self
                    .frame
                    .borrow_mut()
                    .batch(map)
                    .map_or((0, 0), |b| b.too_large());
                header_check::check_size(f, Target::of(map), pairs, bytes).or_else(err)
            }
        }
    }
}

/// [`lossy`] of borrowed bytes: a short text goes straight into the script's string.
fn text(bytes: &[u8]) -> ImmutableString {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned().into(),
    }
}

/// Checks one header write ([`header_check`]) and gives the bytes of its name and value. An
/// ordinary header is decided inline; the rest, and every error, out of the way.
#[inline(always)]
fn check_write(
    f: &str,
    map: MapType,
    name: &str,
    value: &[u8],
    adding: bool,
) -> ScriptResult<usize> {
    if !header_check::is_plain(name.as_bytes(), value) {
        check_write_rest(f, map, name, value, adding)?;
    }
    Ok(name.len() + value.len())
}

#[cold]
#[inline(never)]
fn check_write_rest(
    f: &str,
    map: MapType,
    name: &str,
    value: &[u8],
    adding: bool,
) -> ScriptResult<()> {
    let target = Target::of(map);
    match adding {
        true => header_check::check_add(f, target, name, value),
        false => header_check::check(f, target, name, value),
    }
    .or_else(err)
}

/// Checks a list of headers sent as one pair list (a local response's, a callout's): each
/// header, and the list's size.
pub(super) fn check_pair_list<'a>(
    f: &str,
    target: Target,
    pairs: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
) -> ScriptResult<()> {
    header_check::check_list(f, target, pairs.clone()).or_else(err)?;
    let (count, bytes) = pairs.fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len()));
    header_check::check_size(
        f,
        target,
        count,
        header_check::pair_list_bytes(count, bytes),
    )
    .or_else(err)
}

/// A header map as scripts see it: `[name, value]` pairs, in order.
/// A header value a script gives: a string or a blob. `()` is refused: it is most often an
/// absent header or field passed on, and HTTP has no "no value" to write.
fn header_value_of(f: &str, value: Dynamic) -> ScriptResult<Value> {
    if value.is_unit() {
        return err(format!(
            "{f}(): the header value is () (nothing), e.g. a header that is absent or a field \
             that isn't set: give a string (`x ?? \"\"`), or remove the header"
        ));
    }
    value_of(f, value)
}

pub(crate) fn header_pairs_of(headers: &HeaderMap) -> Array {
    headers
        .iter()
        .map(|(name, value)| {
            let pair: Array = vec![text(name).into(), text(value).into()];
            pair.into()
        })
        .collect()
}

/// Header pairs from `[[name, value], ...]` or `#{name: value}` (a map value may be an array
/// of values, one header each).
pub(super) fn header_pairs(f: &str, headers: &Dynamic) -> ScriptResult<Vec<(String, Vec<u8>)>> {
    let mut pairs = Vec::new();
    if headers.is_unit() {
        return Ok(pairs);
    }
    if let Some(array) = headers.read_lock::<Array>() {
        for item in array.iter() {
            let bad = || {
                err(format!(
                    "{f}(): each header must be a [name, value] pair, got {item}"
                ))
            };
            let Some(p) = item.read_lock::<Array>() else {
                return bad();
            };
            let [name, value] = p.as_slice() else {
                return bad();
            };
            let Some(name) = name.read_lock::<ImmutableString>() else {
                return bad();
            };
            pairs.push((
                name.to_string(),
                header_value_of(f, value.clone())?.into_bytes(),
            ));
        }
        return Ok(pairs);
    }
    if let Some(map) = headers.read_lock::<Map>() {
        for (name, value) in map.iter() {
            match value.read_lock::<Array>() {
                Some(values) => {
                    for v in values.iter() {
                        pairs.push((
                            name.to_string(),
                            header_value_of(f, v.clone())?.into_bytes(),
                        ));
                    }
                }
                None => pairs.push((
                    name.to_string(),
                    header_value_of(f, value.clone())?.into_bytes(),
                )),
            }
        }
        return Ok(pairs);
    }
    err(format!(
        "{f}(): headers must be an array of [name, value] pairs or a map, got {}",
        headers.type_name()
    ))
}
