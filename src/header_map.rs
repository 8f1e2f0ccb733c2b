//! Header maps the way Envoy 1.40 keeps them, written once and used twice: the emulator stores
//! its maps with these rules, and the bindings use them to answer a call's header reads and
//! writes locally (`crate::batch`), sending the result to the proxy once when the call ends.
//!
//! Envoy's rules (each checked in Envoy by `tests/e2e/plugin.rs`, `header_map_rules_match_envoy`):
//! - names are lowercased; a read by name gives the first value;
//! - pseudo-headers (`:path`, …) stay in front: a new one goes after the last of them;
//! - *adding* a value to an "inline" header Envoy already has (`user-agent`, `accept`, …: the
//!   lists below) appends `,value` to it instead of adding a second entry;
//! - *replacing* removes every value, then adds the new one (so it moves to the end);
//! - replacing the whole map removes every header, then adds the new ones in order.

use std::borrow::Cow;

use crate::header_check;
use crate::host::{Bytes, MapType};

/// A header map: lowercase names, in order, duplicates kept.
pub type Headers = Vec<(String, Bytes)>;

/// Headers Envoy keeps in a slot of its own in the request header map (measured in Envoy 1.40:
/// adding a second value to them appends to the first).
fn inline_in_request(name: &str) -> bool {
    matches!(
        name,
        "accept"
            | "accept-encoding"
            | "access-control-request-headers"
            | "access-control-request-method"
            | "access-control-request-private-network"
            | "authorization"
            | "cache-control"
            | "connection"
            | "content-encoding"
            | "content-length"
            | "content-type"
            | "expect"
            | "grpc-accept-encoding"
            | "grpc-timeout"
            | "if-match"
            | "if-modified-since"
            | "if-none-match"
            | "if-range"
            | "if-unmodified-since"
            | "keep-alive"
            | "origin"
            | "pragma"
            | "proxy-connection"
            | "proxy-status"
            | "referer"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "user-agent"
            | "via"
            | "x-client-trace-id"
            | "x-envoy-attempt-count"
            | "x-envoy-decorator-operation"
            | "x-envoy-downstream-service-cluster"
            | "x-envoy-downstream-service-node"
            | "x-envoy-expected-rq-timeout-ms"
            | "x-envoy-external-address"
            | "x-envoy-force-trace"
            | "x-envoy-hedge-on-per-try-timeout"
            | "x-envoy-internal"
            | "x-envoy-ip-tags"
            | "x-envoy-is-timeout-retry"
            | "x-envoy-max-retries"
            | "x-envoy-original-path"
            | "x-envoy-original-url"
            | "x-envoy-retriable-header-names"
            | "x-envoy-retriable-status-codes"
            | "x-envoy-retry-grpc-on"
            | "x-envoy-retry-on"
            | "x-envoy-upstream-alt-stat-name"
            | "x-envoy-upstream-rq-per-try-timeout-ms"
            | "x-envoy-upstream-rq-timeout-alt-response"
            | "x-envoy-upstream-rq-timeout-ms"
            | "x-envoy-upstream-stream-duration-ms"
            | "x-forwarded-client-cert"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-request-id"
    )
}

/// The same for the response header map.
fn inline_in_response(name: &str) -> bool {
    matches!(
        name,
        "access-control-allow-credentials"
            | "access-control-allow-headers"
            | "access-control-allow-methods"
            | "access-control-allow-origin"
            | "access-control-allow-private-network"
            | "access-control-expose-headers"
            | "access-control-max-age"
            | "age"
            | "cache-control"
            | "connection"
            | "content-encoding"
            | "content-length"
            | "content-type"
            | "date"
            | "etag"
            | "expires"
            | "grpc-message"
            | "grpc-status"
            | "keep-alive"
            | "last-modified"
            | "location"
            | "proxy-connection"
            | "proxy-status"
            | "server"
            | "transfer-encoding"
            | "upgrade"
            | "vary"
            | "via"
            | "x-envoy-attempt-count"
            | "x-envoy-decorator-operation"
            | "x-envoy-degraded"
            | "x-envoy-immediate-health-check-fail"
            | "x-envoy-ratelimited"
            | "x-envoy-upstream-canary"
            | "x-envoy-upstream-healthchecked-cluster"
            | "x-envoy-upstream-service-time"
            | "x-request-id"
    )
}

/// Whether adding to `name` in `map` appends to the value already there (pseudo-headers are
/// all inline). Trailer maps: from Envoy's sources, not measured (only `grpc-status` and
/// `grpc-message`, in response trailers).
pub fn is_inline(map: MapType, name: &str) -> bool {
    name.starts_with(':')
        || match map {
            MapType::HttpRequestHeaders => inline_in_request(name),
            MapType::HttpResponseHeaders => inline_in_response(name),
            MapType::HttpResponseTrailers => matches!(name, "grpc-status" | "grpc-message"),
            _ => false,
        }
}

/// `name` as a map holds it: lowercase (copied only when it isn't), so that finding it is a
/// plain comparison.
fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// What a name is first compared by: its length, and its last byte (names of one length often
/// differ only at the end: `x-in-1`, `x-in-2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tag {
    len: usize,
    last: u8,
}

impl Tag {
    fn of(name: &[u8]) -> Self {
        Tag {
            len: name.len(),
            last: name.last().copied().unwrap_or(0),
        }
    }
}

/// A range of [`HeaderMap::bytes`].
#[derive(Clone, Copy, Debug)]
struct Span {
    at: usize,
    len: usize,
}

fn span_of(bytes: &[u8], span: Span) -> &[u8] {
    bytes
        .get(span.at..span.at.saturating_add(span.len))
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    name: Span,
    value: Span,
    tag: Tag,
}

/// A header map: lowercase names, in order, duplicates kept, with Envoy's rules for changing
/// it. Names and values live in one buffer (the proxy's own encoding of the map, as it sent
/// it, then what writes appended), so reading a map and writing to it allocate nothing per
/// header.
#[derive(Clone, Debug, Default)]
pub struct HeaderMap {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    /// Bytes of `bytes` no entry points to any more: past a point the buffer is rebuilt.
    garbage: usize,
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// A map built by adding `pairs` one by one, with the rules of `map`.
    pub fn from_pairs<'a>(
        map: MapType,
        pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Self {
        let mut headers = Self::new();
        for (name, value) in pairs {
            headers.add(map, name, value);
        }
        headers
    }

    /// The map the proxy-wasm ABI encodes in `bytes` (a count, each name's and value's size,
    /// then each name and value followed by a NUL), read in place. The names are taken as the
    /// proxy gives them (lowercase); a malformed encoding gives the pairs read so far.
    pub fn from_abi(bytes: Vec<u8>) -> Self {
        let read_u32 = |at: usize| -> Option<usize> {
            let b = bytes.get(at..at.checked_add(4)?)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let count = read_u32(0).unwrap_or(0);
        let mut entries = Vec::with_capacity(count.min(bytes.len() / 8));
        let mut at = count.saturating_mul(8).saturating_add(4);
        for i in 0..count {
            let (Some(name_len), Some(value_len)) = (read_u32(4 + i * 8), read_u32(8 + i * 8))
            else {
                break;
            };
            let name = Span { at, len: name_len };
            let value = Span {
                at: at.saturating_add(name_len).saturating_add(1),
                len: value_len,
            };
            let end = value.at.saturating_add(value_len).saturating_add(1);
            if end > bytes.len() {
                break;
            }
            let tag = Tag::of(span_of(&bytes, name));
            entries.push(Entry { name, value, tag });
            at = end;
        }
        let live: usize = entries.iter().map(|e| e.name.len + e.value.len).sum();
        let garbage = bytes.len().saturating_sub(live);
        Self {
            bytes,
            entries,
            garbage,
        }
    }

    /// The map in the proxy-wasm ABI's encoding: the count, each name's and value's size, then
    /// each name and value followed by a NUL.
    pub fn to_abi(&self) -> Bytes {
        let size = self
            .entries
            .iter()
            .fold(4, |size, e| size + 8 + e.name.len + e.value.len + 2);
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            bytes.extend_from_slice(&(e.name.len as u32).to_le_bytes());
            bytes.extend_from_slice(&(e.value.len as u32).to_le_bytes());
        }
        for e in &self.entries {
            bytes.extend_from_slice(self.slice(e.name));
            bytes.push(0);
            bytes.extend_from_slice(self.slice(e.value));
            bytes.push(0);
        }
        bytes
    }

    /// The first entry named `name` (lowercase), from `from` on.
    fn find(&self, name: &[u8], from: usize) -> Option<usize> {
        let tag = Tag::of(name);
        let rest = self.entries.get(from..)?;
        rest.iter()
            .position(|e| e.tag == tag && self.slice(e.name) == name)
            .map(|i| i + from)
    }

    fn slice(&self, span: Span) -> &[u8] {
        span_of(&self.bytes, span)
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.entries
            .iter()
            .map(|e| (self.slice(e.name), self.slice(e.value)))
    }

    /// The pairs, as a list (names as text).
    pub fn to_pairs(&self) -> Headers {
        self.iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The size of [`HeaderMap::to_abi`], without making it: every byte of the buffer that is
    /// not garbage belongs to a live name or value.
    pub fn abi_size(&self) -> usize {
        header_check::pair_list_bytes(
            self.entries.len(),
            self.bytes.len().saturating_sub(self.garbage),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = lowercase(name);
        let entry = self.entries.get(self.find(name.as_bytes(), 0)?)?;
        Some(self.slice(entry.value))
    }

    /// Appends `parts` to the buffer, as one span.
    fn push_bytes(&mut self, parts: &[&[u8]]) -> Span {
        let at = self.bytes.len();
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        Span {
            at,
            len: self.bytes.len() - at,
        }
    }

    /// Appends a pair as it is, without Envoy's rules (the emulator's maps that are given whole).
    pub fn push(&mut self, name: &str, value: &[u8]) {
        let entry = Entry {
            name: self.push_bytes(&[name.as_bytes()]),
            value: self.push_bytes(&[value]),
            tag: Tag::of(name.as_bytes()),
        };
        self.entries.push(entry);
    }

    /// A map of `pairs` as they are ([`HeaderMap::push`]).
    pub fn from_list(pairs: &Headers) -> Self {
        let mut headers = Self::new();
        for (name, value) in pairs {
            headers.push(name, value);
        }
        headers
    }

    /// Adds one value, as Envoy's `addCopy` does.
    pub fn add(&mut self, map: MapType, name: &str, value: &[u8]) {
        let name = lowercase(name);
        if is_inline(map, &name) {
            let found = self.find(name.as_bytes(), 0);
            if let Some(old) = found.and_then(|i| self.entries.get(i)).map(|e| e.value) {
                // Envoy appends nothing for an empty value, and no comma to an empty one.
                if !value.is_empty() {
                    let existing = self.slice(old).to_vec();
                    let comma: &[u8] = if existing.is_empty() { b"" } else { b"," };
                    let joined = self.push_bytes(&[&existing, comma, value]);
                    if let Some(entry) = found.and_then(|i| self.entries.get_mut(i)) {
                        entry.value = joined;
                    }
                    self.garbage += old.len;
                    self.compact_if_wasteful();
                }
                return;
            }
        }
        let entry = Entry {
            name: self.push_bytes(&[name.as_bytes()]),
            value: self.push_bytes(&[value]),
            tag: Tag::of(name.as_bytes()),
        };
        self.insert(entry, name.starts_with(':'));
    }

    /// Puts `entry` where Envoy adds a header: at the end, or after the last pseudo-header
    /// for a pseudo-header.
    fn insert(&mut self, entry: Entry, pseudo: bool) {
        let at = if pseudo {
            self.iter()
                .position(|(k, _)| !k.starts_with(b":"))
                .unwrap_or(self.entries.len())
        } else {
            self.entries.len()
        };
        self.entries.insert(at, entry);
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        let name = lowercase(name);
        self.remove_from(name.as_bytes(), 0);
        self.compact_if_wasteful();
    }

    /// Removes the entries named `name` (lowercase) from `from` on.
    #[inline]
    fn remove_from(&mut self, name: &[u8], mut from: usize) {
        // Most removals find nothing, or one entry.
        while let Some(i) = self.find(name, from) {
            let removed = self.entries.remove(i);
            self.garbage += removed.name.len + removed.value.len;
            from = i;
        }
    }

    /// Sets `name` to one value: every value removed, then the new one added.
    pub fn replace(&mut self, map: MapType, name: &str, value: &[u8]) {
        let lower = lowercase(name);
        let Some(first) = self.find(lower.as_bytes(), 0) else {
            return self.add(map, name, value);
        };
        // The same as removing every value and adding the new one, without looking the name
        // up again: the first entry takes the value and moves to where an add would put it.
        self.remove_from(lower.as_bytes(), first + 1);
        let mut entry = self.entries.remove(first);
        self.garbage += entry.value.len;
        entry.value = self.push_bytes(&[value]);
        self.insert(entry, lower.starts_with(':'));
        self.compact_if_wasteful();
    }

    /// Replaces the whole map with `pairs`, added one by one.
    pub fn set_all<'a>(
        &mut self,
        map: MapType,
        pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) {
        *self = Self::from_pairs(map, pairs);
    }

    /// Rebuilds the buffer once most of it is old values: a script replacing one header in a
    /// loop must not grow it without end.
    fn compact_if_wasteful(&mut self) {
        if self.garbage <= 4096 || self.garbage <= self.bytes.len() / 2 {
            return;
        }
        let mut compact = Self::new();
        compact.bytes.reserve(self.bytes.len() - self.garbage);
        for (entry, (name, value)) in self.entries.iter().zip(self.iter()) {
            let entry = Entry {
                name: compact.push_bytes(&[name]),
                value: compact.push_bytes(&[value]),
                tag: entry.tag,
            };
            compact.entries.push(entry);
        }
        *self = compact;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: MapType = MapType::HttpRequestHeaders;

    fn map(list: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::from_pairs(REQ, list.iter().map(|(k, v)| (*k, v.as_bytes())))
    }

    fn pairs(list: &[(&str, &str)]) -> Headers {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn add_appends_to_inline_headers_and_keeps_pseudo_headers_first() {
        let mut h = map(&[(":path", "/"), ("user-agent", "ua"), ("x-a", "1")]);
        h.add(REQ, "User-Agent", b"u2");
        h.add(REQ, "x-a", b"2");
        h.add(REQ, ":zz", b"p");
        h.add(REQ, "accept", b"");
        h.add(REQ, "accept", b"a");
        assert_eq!(
            h.to_pairs(),
            pairs(&[
                (":path", "/"),
                (":zz", "p"),
                ("user-agent", "ua,u2"),
                ("x-a", "1"),
                ("x-a", "2"),
                ("accept", "a"),
            ])
        );
    }

    #[test]
    fn replace_moves_the_header_to_the_end() {
        let mut h = map(&[
            (":path", "/"),
            (":method", "GET"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-a", "3"),
        ]);
        h.replace(REQ, "x-a", b"R");
        h.replace(REQ, ":path", b"/p");
        assert_eq!(
            h.to_pairs(),
            pairs(&[
                (":method", "GET"),
                (":path", "/p"),
                ("x-b", "2"),
                ("x-a", "R")
            ])
        );
        assert_eq!(h.get("X-A"), Some(&b"R"[..]));
        assert_eq!(h.get("x-c"), None);
    }

    #[test]
    fn the_abi_encoding_reads_back_and_a_broken_one_gives_what_it_holds() {
        let h = map(&[(":path", "/"), ("x-a", ""), ("x-b", "2")]);
        let bytes = h.to_abi();
        assert_eq!(HeaderMap::from_abi(bytes.clone()).to_pairs(), h.to_pairs());
        // Cut in the middle of the last value: the pairs before it.
        let cut = HeaderMap::from_abi(bytes[..bytes.len() - 2].to_vec());
        assert_eq!(cut.to_pairs(), pairs(&[(":path", "/"), ("x-a", "")]));
        // A count far larger than the data, a size past the end, nothing at all.
        let mut huge = bytes.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::from_abi(huge).is_empty());
        let mut past = bytes;
        past[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::from_abi(past).is_empty());
        assert!(HeaderMap::from_abi(Vec::new()).is_empty());
    }

    #[test]
    fn abi_size_is_the_encoding_s_size_through_every_change() {
        let mut h = HeaderMap::from_abi(map(&[(":path", "/"), ("x-a", "1")]).to_abi());
        let check = |h: &HeaderMap| assert_eq!(h.abi_size(), h.to_abi().len());
        check(&h);
        for i in 0..3000 {
            h.add(REQ, "accept", b"a");
            h.add(REQ, &format!("x-{}", i % 7), b"vv");
            h.replace(REQ, "x-3", &[b'r'; 50]);
            h.remove("x-5");
            check(&h);
        }
    }

    #[test]
    fn replacing_in_a_loop_keeps_the_buffer_small() {
        let mut h = map(&[(":path", "/"), ("x-a", "1")]);
        let value = [b'v'; 100];
        for _ in 0..10_000 {
            h.replace(REQ, "x-b", &value);
            h.add(REQ, "accept", b"a");
        }
        assert_eq!(h.len(), 4);
        assert_eq!(h.get("x-b"), Some(&value[..]));
        assert_eq!(h.get("accept").map(<[u8]>::len), Some(10_000 * 2 - 1));
        // The live bytes are ~20 kB; without compaction the buffer would be ~200 MB.
        assert!(h.bytes.len() < 3 * 20_200 + 8192, "{} bytes", h.bytes.len());
    }
}
