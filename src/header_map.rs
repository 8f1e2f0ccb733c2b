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
use std::ops::Range;

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
    if has_uppercase(name.as_bytes()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether `name` has an ASCII capital letter, looked for eight bytes at a time (a name of
/// four to eight bytes is read as its first four and last four).
fn has_uppercase(name: &[u8]) -> bool {
    const EACH: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = EACH * 0x80;
    // In each byte of an ASCII word, `b | 0x80` minus a letter borrows from no other byte,
    // and keeps the high bit when `b` is at least that letter.
    let in_word = |w: u64| {
        let (at_least_a, past_z) = ((w | HIGH) - EACH * 0x41, (w | HIGH) - EACH * 0x5b);
        at_least_a & !past_z & !w & HIGH != 0
    };
    let word = |w: &[u8; 8]| in_word(u64::from_le_bytes(*w));
    match (name.first_chunk::<4>(), name.last_chunk::<4>()) {
        (Some(first), Some(last)) if name.len() <= 8 => {
            in_word(u32::from_le_bytes(*first) as u64 | (u32::from_le_bytes(*last) as u64) << 32)
        }
        (Some(_), Some(_)) => {
            name.as_chunks::<8>().0.iter().any(word) || name.last_chunk::<8>().is_some_and(word)
        }
        _ => name.iter().any(u8::is_ascii_uppercase),
    }
}

/// What a name is first compared by, in two bytes: its last four bytes (names often differ
/// only at the end: `x-in-1`, `x-in-2`) and its length, folded. Equal names have equal tags;
/// names of equal tags are then compared byte by byte ([`same`]).
fn tag_of(name: &[u8]) -> Tag {
    let last = match name.last_chunk::<4>() {
        Some(last) => u32::from_le_bytes(*last),
        None => name.iter().fold(0, |tag, &b| tag << 8 | b as u32),
    };
    let tag = last ^ (name.len() as u32).rotate_right(8);
    ((tag ^ tag >> 16) as u16 | 1).to_le_bytes()
}

/// A name's tag, as [`HeaderMap::tags`] keeps it: bytes, so that four are read as one word.
/// Its low bit is set: a removed entry's tag ([`DEAD`]) is no name's.
type Tag = [u8; 2];

const DEAD: Tag = [0, 0];

/// Four tags, one in each 16-bit lane of a word, and the lanes' low and high bits.
const LANES_LOW: u64 = 0x0001_0001_0001_0001;
const LANES_HIGH: u64 = 0x8000_8000_8000_8000;

/// Whether two names are the same bytes, compared a word at a time: names are short, and a
/// call of `memcmp` costs more than comparing them.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a, b);
    while let (Some((x, rest_a)), Some((y, rest_b))) =
        (a.split_first_chunk::<4>(), b.split_first_chunk::<4>())
    {
        if u32::from_ne_bytes(*x) != u32::from_ne_bytes(*y) {
            return false;
        }
        (a, b) = (rest_a, rest_b);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// One header: its name and value in [`HeaderMap::bytes`], as the proxy-wasm ABI lays out a
/// pair's data: `name`, NUL, `value`, NUL, from `at` (so entries whose records follow each
/// other in the buffer are copied to the ABI's encoding in one piece).
#[derive(Clone, Copy, Debug)]
struct Entry {
    at: usize,
    name_len: usize,
    value_len: usize,
}

impl Entry {
    fn name(&self) -> Range<usize> {
        self.at..self.at.saturating_add(self.name_len)
    }

    fn value(&self) -> Range<usize> {
        let at = self.at.saturating_add(self.name_len).saturating_add(1);
        at..at.saturating_add(self.value_len)
    }

    /// The record: the name, the value and their NULs.
    fn record(&self) -> Range<usize> {
        self.at..self.value().end.saturating_add(1)
    }
}

/// A header map: lowercase names, in order, duplicates kept, with Envoy's rules for changing
/// it. Names and values live in one buffer (the proxy's own encoding of the map, as it sent
/// it, then the records writes appended), so reading a map and writing to it allocate nothing
/// per header. A name is found by a scan of the tags, four at a time. A removed entry stays
/// in the list, [`DEAD`], until there are many: taking it out would move the ones after it.
#[derive(Clone, Debug, Default)]
pub struct HeaderMap {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    /// Each entry's [`tag_of`] its name, in the same order, or [`DEAD`].
    tags: Vec<Tag>,
    /// The entries not dead.
    count: usize,
    /// The bytes of the live entries' names and values: the rest of `bytes` is NULs and
    /// garbage (past a point the buffer is rebuilt).
    live: usize,
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
    /// proxy gives them (lowercase); a malformed encoding (a size past the end, a pair not
    /// followed by NULs) gives the pairs read so far.
    pub fn from_abi(bytes: Vec<u8>) -> Self {
        let count = match bytes.first_chunk::<4>() {
            Some(count) => u32::from_le_bytes(*count) as usize,
            None => 0,
        };
        let sizes_end = count.saturating_mul(8).saturating_add(4);
        // More sizes than bytes: no pair can follow them.
        let (sizes, count) = match bytes.get(4..sizes_end) {
            Some(sizes) => (sizes.as_chunks::<8>().0, count),
            None => (&[][..], 0),
        };
        let mut entries = Vec::with_capacity(count + SPARE_ENTRIES);
        let mut tags = Vec::with_capacity(count + SPARE_ENTRIES);
        let (mut at, mut live) = (sizes_end, 0);
        for &[n0, n1, n2, n3, v0, v1, v2, v3] in sizes {
            let entry = Entry {
                at,
                name_len: u32::from_le_bytes([n0, n1, n2, n3]) as usize,
                value_len: u32::from_le_bytes([v0, v1, v2, v3]) as usize,
            };
            // The records are copied out whole (`to_abi`): their NULs must be NULs.
            let (name, value) = (entry.name(), entry.value());
            let (Some(name), Some(0), Some(0)) = (
                bytes.get(name.clone()),
                bytes.get(name.end).copied(),
                bytes.get(value.end).copied(),
            ) else {
                break;
            };
            tags.push(tag_of(name));
            entries.push(entry);
            live += entry.name_len + entry.value_len;
            at = value.end + 1;
        }
        Self {
            bytes,
            count: entries.len(),
            entries,
            tags,
            live,
        }
    }

    /// The map in the proxy-wasm ABI's encoding: the count, each name's and value's size, then
    /// each name and value followed by a NUL.
    pub fn to_abi(&self) -> Bytes {
        let mut bytes = Vec::with_capacity(self.abi_size());
        bytes.extend_from_slice(&(self.count as u32).to_le_bytes());
        bytes.resize(4 + 8 * self.count, 0);
        // One pass: each entry's sizes in the head, and the records, in runs of ones that
        // follow each other in the buffer.
        let (mut at, mut run) = (4, 0..0);
        for (e, tag) in self.entries.iter().zip(&self.tags) {
            if *tag == DEAD {
                continue;
            }
            if let Some(sizes) = bytes.get_mut(at..at + 8) {
                let (name, value) = (e.name_len as u32 as u64, e.value_len as u32 as u64);
                sizes.copy_from_slice(&(name | value << 32).to_le_bytes());
            }
            at += 8;
            let record = e.record();
            if record.start == run.end {
                run.end = record.end;
            } else {
                bytes.extend_from_slice(self.slice(run));
                run = record;
            }
        }
        bytes.extend_from_slice(self.slice(run));
        bytes
    }

    /// The proxy-wasm ABI's encoding of `pairs` as they are, as [`HeaderMap::to_abi`] of a
    /// map they were [`HeaderMap::push`]ed to gives it (a local response's headers), made
    /// without the map.
    pub fn abi_of(pairs: &[(&str, &[u8])]) -> Bytes {
        let live = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        let size = header_check::pair_list_bytes(pairs.len(), live);
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
        for (name, value) in pairs {
            bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            for part in [name.as_bytes(), value] {
                bytes.extend_from_slice(part);
                bytes.push(0);
            }
        }
        bytes
    }

    /// The first entry named `name` (lowercase, tagged `tag`), from `from` on: the tags are
    /// read four at a time, and a word with the tag in a lane is looked at lane by lane.
    fn find(&self, name: &[u8], tag: Tag, from: usize) -> Option<usize> {
        let tags = self.tags.get(from..)?;
        let is = |i: usize| self.tags.get(i) == Some(&tag) && same(self.name_of(i), name);
        let lanes = u16::from_le_bytes(tag) as u64 * LANES_LOW;
        let (words, rest) = tags.as_flattened().as_chunks::<8>();
        let mut at = from;
        for word in words {
            let x = u64::from_le_bytes(*word) ^ lanes;
            if x.wrapping_sub(LANES_LOW) & !x & LANES_HIGH != 0 {
                if let Some(i) = (at..at + 4).find(|&i| is(i)) {
                    return Some(i);
                }
            }
            at += 4;
        }
        (at..at + rest.len() / 2).find(|&i| is(i))
    }

    fn name_of(&self, entry: usize) -> &[u8] {
        match self.entries.get(entry) {
            Some(e) => self.slice(e.name()),
            None => &[],
        }
    }

    fn slice(&self, range: Range<usize>) -> &[u8] {
        self.bytes.get(range).unwrap_or_default()
    }

    /// The entries not dead, in order.
    fn live_entries(&self) -> impl Iterator<Item = &Entry> + Clone {
        self.entries
            .iter()
            .zip(&self.tags)
            .filter(|(_, tag)| **tag != DEAD)
            .map(|(e, _)| e)
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.live_entries()
            .map(|e| (self.slice(e.name()), self.slice(e.value())))
    }

    /// The pairs, as a list (names as text).
    pub fn to_pairs(&self) -> Headers {
        self.iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// The size of [`HeaderMap::to_abi`], without making it.
    pub fn abi_size(&self) -> usize {
        header_check::pair_list_bytes(self.count, self.live)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = lowercase(name);
        let name = name.as_bytes();
        let entry = self.entries.get(self.find(name, tag_of(name), 0)?)?;
        Some(self.slice(entry.value()))
    }

    /// Appends a record of `name` and the value made of `value` (bytes, and ranges of the
    /// buffer), and gives its entry.
    fn push_record(&mut self, name: Part<'_>, value: &[Part<'_>]) -> Entry {
        let at = self.bytes.len();
        self.extend(name);
        let value_at = self.bytes.len() + 1;
        self.bytes.push(0);
        for part in value {
            self.extend(part.clone());
        }
        let (name_len, value_len) = (value_at - 1 - at, self.bytes.len() - value_at);
        self.bytes.push(0);
        self.live += name_len + value_len;
        Entry {
            at,
            name_len,
            value_len,
        }
    }

    fn extend(&mut self, part: Part<'_>) {
        match part {
            Part::Given(bytes) => self.bytes.extend_from_slice(bytes),
            // Ranges of entries, always within the buffer.
            Part::Within(range) if range.end <= self.bytes.len() && range.start <= range.end => {
                self.bytes.extend_from_within(range)
            }
            Part::Within(_) => {}
        }
    }

    /// Appends a pair as it is, without Envoy's rules (the emulator's maps that are given whole).
    pub fn push(&mut self, name: &str, value: &[u8]) {
        let name = name.as_bytes();
        let entry = self.push_record(Part::Given(name), &[Part::Given(value)]);
        self.entries.push(entry);
        self.tags.push(tag_of(name));
        self.count += 1;
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
        let lower = lowercase(name);
        let (name, tag) = (lower.as_bytes(), tag_of(lower.as_bytes()));
        if is_inline(map, &lower) {
            if let Some(i) = self.find(name, tag, 0) {
                // Envoy appends nothing for an empty value, and no comma to an empty one.
                if let (false, Some(&old)) = (value.is_empty(), self.entries.get(i)) {
                    let comma: &[u8] = if old.value_len == 0 { b"" } else { b"," };
                    let value = [
                        Part::Within(old.value()),
                        Part::Given(comma),
                        Part::Given(value),
                    ];
                    let joined = self.push_record(Part::Within(old.name()), &value);
                    self.live -= old.name_len + old.value_len;
                    if let Some(entry) = self.entries.get_mut(i) {
                        *entry = joined;
                    }
                    self.compact_if_wasteful();
                }
                return;
            }
        }
        let entry = self.push_record(Part::Given(name), &[Part::Given(value)]);
        self.insert(entry, tag);
    }

    /// Puts `entry` (named with `tag`) where Envoy adds a header: at the end, or after the
    /// last pseudo-header for a pseudo-header.
    fn insert(&mut self, entry: Entry, tag: Tag) {
        let pseudo = |e: &Entry| self.bytes.get(e.at) == Some(&b':');
        let at = match pseudo(&entry) {
            true => self
                .entries
                .iter()
                .zip(&self.tags)
                .position(|(e, tag)| *tag != DEAD && !pseudo(e)),
            false => None,
        };
        match at {
            Some(at) => {
                self.entries.insert(at, entry);
                self.tags.insert(at, tag);
            }
            None => {
                self.entries.push(entry);
                self.tags.push(tag);
            }
        }
        self.count += 1;
    }

    /// Takes entry `i` out of the map (it stays in the list, dead), its bytes now garbage.
    fn take(&mut self, i: usize) -> Option<Entry> {
        let (Some(&entry), Some(tag)) = (self.entries.get(i), self.tags.get_mut(i)) else {
            return None;
        };
        if *tag == DEAD {
            return None;
        }
        *tag = DEAD;
        self.count -= 1;
        self.live -= entry.name_len + entry.value_len;
        Some(entry)
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        let name = lowercase(name);
        let name = name.as_bytes();
        self.remove_from(name, tag_of(name), 0);
        self.compact_if_wasteful();
    }

    /// Removes the entries named `name` (lowercase) from `from` on.
    #[inline]
    fn remove_from(&mut self, name: &[u8], tag: Tag, mut from: usize) {
        // Most removals find nothing, or one entry.
        while let Some(i) = self.find(name, tag, from) {
            self.take(i);
            from = i + 1;
        }
    }

    /// Sets `name` to one value: every value removed, then the new one added.
    pub fn replace(&mut self, map: MapType, name: &str, value: &[u8]) {
        let lower = lowercase(name);
        let (lower, tag) = (lower.as_bytes(), tag_of(lower.as_bytes()));
        let Some(first) = self.find(lower, tag, 0) else {
            return self.add(map, name, value);
        };
        // The same as removing every value and adding the new one, without looking the name
        // up again: the first entry's name takes the value, where an add would put it.
        self.remove_from(lower, tag, first + 1);
        let Some(old) = self.take(first) else {
            return;
        };
        let entry = self.push_record(Part::Within(old.name()), &[Part::Given(value)]);
        self.insert(entry, tag);
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

    /// The bytes of the buffer no live entry holds (the NULs of a record are held with it).
    fn garbage(&self) -> usize {
        self.bytes.len().saturating_sub(self.live + 2 * self.count)
    }

    /// Rebuilds the list once most of it is dead entries, and the buffer once most of it is
    /// old values: a script replacing one header in a loop must not grow them without end.
    fn compact_if_wasteful(&mut self) {
        let dead = self.entries.len() - self.count;
        let garbage = self.garbage();
        let rebuild_bytes = garbage > 4096 && garbage > self.bytes.len() / 2;
        if rebuild_bytes || (dead > DEAD_ENTRIES && dead > self.count) {
            let mut tags = self.tags.iter();
            self.entries.retain(|_| tags.next() != Some(&DEAD));
            self.tags.retain(|tag| *tag != DEAD);
        }
        if !rebuild_bytes {
            return;
        }
        let mut compact = Vec::with_capacity(self.bytes.len().saturating_sub(garbage));
        for entry in &mut self.entries {
            let at = compact.len();
            compact.extend_from_slice(self.bytes.get(entry.record()).unwrap_or_default());
            entry.at = at;
        }
        self.bytes = compact;
    }
}

/// Entries a map read from the proxy has room for before its lists grow: a call's adds.
const SPARE_ENTRIES: usize = 16;

/// Dead entries a map keeps before it may take them out of its list.
const DEAD_ENTRIES: usize = 16;

/// A piece of a name or value [`HeaderMap::push_record`] appends: bytes, or a range of the
/// buffer.
#[derive(Clone)]
enum Part<'a> {
    Given(&'a [u8]),
    Within(Range<usize>),
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
    fn pairs_encode_as_a_map_of_them_does() {
        let list: &[(&str, &[u8])] = &[(":status", b"200"), ("X-A", b""), ("x-a", b"2")];
        let pushed = HeaderMap::from_list(
            &list
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        );
        assert_eq!(HeaderMap::abi_of(list), pushed.to_abi());
        assert_eq!(HeaderMap::abi_of(&[]), HeaderMap::new().to_abi());
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

#[cfg(test)]
mod model_tests {
    //! The map against a plain list that follows Envoy's rules the obvious way, through long
    //! runs of random changes: the tags, the dead entries, the runs `to_abi` copies and both
    //! compactions must never show.
    use super::*;

    const REQ: MapType = MapType::HttpRequestHeaders;

    /// Envoy's rules on a plain list.
    #[derive(Default)]
    struct Model(Headers);

    impl Model {
        fn add(&mut self, name: &str, value: &[u8]) {
            let name = name.to_ascii_lowercase();
            if is_inline(REQ, &name) {
                if let Some((_, old)) = self.0.iter_mut().find(|(k, _)| *k == name) {
                    if !value.is_empty() {
                        if !old.is_empty() {
                            old.push(b',');
                        }
                        old.extend_from_slice(value);
                    }
                    return;
                }
            }
            let at = match name.starts_with(':') {
                true => self.0.iter().position(|(k, _)| !k.starts_with(':')),
                false => None,
            };
            let at = at.unwrap_or(self.0.len());
            self.0.insert(at, (name, value.to_vec()));
        }

        fn remove(&mut self, name: &str) {
            let name = name.to_ascii_lowercase();
            self.0.retain(|(k, _)| *k != name);
        }

        fn replace(&mut self, name: &str, value: &[u8]) {
            self.remove(name);
            self.add(name, value);
        }

        fn get(&self, name: &str) -> Option<&[u8]> {
            let name = name.to_ascii_lowercase();
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| &v[..])
        }
    }

    /// A small xorshift generator: the same runs every time.
    struct Random(u64);

    impl Random {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Names that share tails, lengths and tags' bytes, inline ones, pseudo-headers and
    /// capitals (the map lowercases them).
    const NAMES: &[&str] = &[
        ":path",
        ":method",
        ":zz",
        "x-in-1",
        "x-in-2",
        "x-rm-1",
        "X-In-1",
        "accept",
        "Accept",
        "user-agent",
        "a",
        "ab",
        "abc",
        "abcd",
        "x-a",
        "",
        "accept-encoding",
        "content-encoding",
        "x-forwarded-for",
        "x-a-rather-long-header-name-0",
        "x-a-rather-long-header-name-1",
    ];

    fn check(h: &HeaderMap, model: &Model) {
        assert_eq!(h.to_pairs(), model.0);
        assert_eq!(h.len(), model.0.len());
        assert_eq!(h.abi_size(), h.to_abi().len());
        assert_eq!(HeaderMap::from_abi(h.to_abi()).to_pairs(), model.0);
        for name in NAMES {
            assert_eq!(h.get(name), model.get(name), "{name}");
        }
    }

    #[test]
    fn random_changes_give_what_envoy_s_rules_give() {
        for seed in 1..=40u64 {
            let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let (mut model, mut h) = (Model::default(), HeaderMap::new());
            for (name, value) in [(":path", "/"), (":method", "GET"), ("x-in-1", "v")] {
                model.add(name, value.as_bytes());
            }
            // From the proxy's encoding, or made here.
            if seed % 2 == 0 {
                h = HeaderMap::from_abi(HeaderMap::from_list(&model.0).to_abi());
            } else {
                h.set_all(REQ, model.0.iter().map(|(k, v)| (k.as_str(), &v[..])));
            }
            for step in 0..400 {
                let name = NAMES[random.below(NAMES.len())];
                // Values long enough, now and then, to make the buffer's garbage count.
                let value = vec![b'a' + random.below(26) as u8; random.below(3) * 700];
                match random.below(3) {
                    0 => {
                        model.add(name, &value);
                        h.add(REQ, name, &value);
                    }
                    1 => {
                        model.replace(name, &value);
                        h.replace(REQ, name, &value);
                    }
                    _ => {
                        model.remove(name);
                        h.remove(name);
                    }
                }
                if step % 16 == 0 {
                    check(&h, &model);
                }
            }
            check(&h, &model);
        }
    }

    #[test]
    fn dead_entries_and_old_bytes_are_dropped_in_time() {
        let mut h = HeaderMap::from_abi(map_of(&[(":path", "/"), ("x-a", "1")]).to_abi());
        for i in 0..1000 {
            h.replace(REQ, "x-b", format!("{i}").as_bytes());
            h.add(REQ, "x-c", b"c");
            h.remove("x-c");
            assert!(h.entries.len() <= 2 * (DEAD_ENTRIES + h.len()) + 2);
            assert_eq!(h.tags.len(), h.entries.len());
        }
        assert_eq!(
            h.to_pairs(),
            vec![
                (":path".to_string(), b"/".to_vec()),
                ("x-a".to_string(), b"1".to_vec()),
                ("x-b".to_string(), b"999".to_vec()),
            ]
        );
    }

    fn map_of(list: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::from_pairs(REQ, list.iter().map(|(k, v)| (*k, v.as_bytes())))
    }

    #[test]
    fn capitals_are_found_only_by_the_names_checks() {
        for name in [
            "a",
            "ab",
            "abcdefg",
            "abcdefgh",
            "abcdefghijklmnopq",
            "x-in-1",
        ] {
            assert!(!has_uppercase(name.as_bytes()), "{name}");
            for at in 0..name.len() {
                let mut upper = name.as_bytes().to_vec();
                upper[at] = upper[at].to_ascii_uppercase();
                assert_eq!(
                    has_uppercase(&upper),
                    upper[at] != name.as_bytes()[at],
                    "{name}"
                );
            }
        }
        // Not letters, at the edges of the ranges; bytes past ASCII.
        assert!(!has_uppercase(b"@[`{\x80\xc1\xda\xff"));
        assert!(has_uppercase(b"@[`{\x80\xc1\xdaZ"));
    }
}
