//! Header maps the way Envoy 1.40 keeps them, written once and used twice: the emulator stores
//! its maps with these rules, and the bindings use them to answer a call's header reads and
//! writes locally ([`Batch`]), sending the result to the proxy once when the call ends.
//!
//! Envoy's rules (each checked in Envoy by `tests/e2e_plugin.rs`, `header_map_rules_match_envoy`):
//! - names are lowercased; a read by name gives the first value;
//! - pseudo-headers (`:path`, …) stay in front: a new one goes after the last of them;
//! - *adding* a value to an "inline" header Envoy already has (`user-agent`, `accept`, …: the
//!   lists below) appends `,value` to it instead of adding a second entry;
//! - *replacing* removes every value, then adds the new one (so it moves to the end);
//! - replacing the whole map removes every header, then adds the new ones in order.

use std::borrow::Cow;

use rhai::ImmutableString;

use crate::host::{Bytes, Host, MapType, Status};

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

/// The first value of `name`.
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a Bytes> {
    let name = lowercase(name);
    headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Adds one value, as Envoy's `addCopy` does.
pub fn add(map: MapType, headers: &mut Headers, name: &str, value: &[u8]) {
    add_owned(map, headers, name.to_string(), value.to_vec());
}

/// [`add`], keeping the name and value it is given (a batched write owns them already).
fn add_owned(map: MapType, headers: &mut Headers, mut name: String, value: Bytes) {
    name.make_ascii_lowercase();
    if is_inline(map, &name) {
        if let Some((_, existing)) = headers.iter_mut().find(|(k, _)| *k == name) {
            // Envoy appends nothing for an empty value, and no comma to an empty one.
            if !value.is_empty() {
                if !existing.is_empty() {
                    existing.push(b',');
                }
                existing.extend_from_slice(&value);
            }
            return;
        }
    }
    let at = if name.starts_with(':') {
        headers
            .iter()
            .position(|(k, _)| !k.starts_with(':'))
            .unwrap_or(headers.len())
    } else {
        headers.len()
    };
    headers.insert(at, (name, value));
}

/// Removes every value of `name`.
pub fn remove(headers: &mut Headers, name: &str) {
    let name = lowercase(name);
    headers.retain(|(k, _)| *k != name);
}

/// Sets `name` to one value: every value removed, then the new one added.
pub fn replace(map: MapType, headers: &mut Headers, name: &str, value: &[u8]) {
    replace_owned(map, headers, name.to_string(), value.to_vec());
}

fn replace_owned(map: MapType, headers: &mut Headers, name: String, value: Bytes) {
    remove(headers, &name);
    add_owned(map, headers, name, value);
}

/// Replaces the whole map with `pairs`, added one by one.
pub fn set_all(map: MapType, headers: &mut Headers, pairs: &[(&str, &[u8])]) {
    headers.clear();
    for (name, value) in pairs {
        add(map, headers, name, value);
    }
}

/// A header value a script wrote: its string, shared with the script (not copied), or the
/// bytes of a blob.
pub(crate) enum Value {
    Text(ImmutableString),
    Bytes(Bytes),
}

impl Value {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Text(text) => text.as_bytes(),
            Value::Bytes(bytes) => bytes,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Value::Text(text) => text.as_bytes().to_vec(),
            Value::Bytes(bytes) => bytes,
        }
    }
}

/// A header write the script made and the proxy hasn't seen yet. The name is the script's
/// string, as given: the map lowercases it when it takes the write (as Envoy does).
pub(crate) enum Write {
    Replace(ImmutableString, Value),
    Add(ImmutableString, Value),
    Remove(ImmutableString),
}

impl Write {
    fn apply(&self, map: MapType, headers: &mut Headers) {
        match self {
            Write::Replace(name, value) => replace(map, headers, name, value.as_bytes()),
            Write::Add(name, value) => add(map, headers, name, value.as_bytes()),
            Write::Remove(name) => remove(headers, name),
        }
    }

    /// [`Write::apply`] when the write isn't kept: its value moves into the map.
    fn apply_owned(self, map: MapType, headers: &mut Headers) {
        match self {
            Write::Replace(name, value) => {
                replace_owned(map, headers, name.to_string(), value.into_bytes())
            }
            Write::Add(name, value) => {
                add_owned(map, headers, name.to_string(), value.into_bytes())
            }
            Write::Remove(name) => remove(headers, &name),
        }
    }

    /// Makes the write in the proxy, as one host call.
    pub(crate) fn send<H: Host>(&self, host: &H, map: MapType) -> Result<(), Status> {
        match self {
            Write::Replace(name, value) => host.replace_map_value(map, name, value.as_bytes()),
            Write::Add(name, value) => host.add_map_value(map, name, value.as_bytes()),
            Write::Remove(name) => host.remove_map_value(map, name),
        }
    }
}

/// Up to this many writes in one call are sent one by one when it ends; from one more on (or
/// a whole-map replacement) the call's map goes as one `set_map`, which costs Envoy a rebuild
/// of the map but saves a host call per write (~1.1 µs each in V8, `bench/per_op.py`).
const SINGLE_WRITES: usize = 3;

/// One call's reads and writes of a header map (request or response headers), answered
/// locally so a script doing twenty header operations crosses into the proxy two or three
/// times, not twenty. Nothing changes a header map during a call but the call itself, so the
/// local map stays exact; [`Batch::flush`] hands the writes to the proxy before anything else
/// can look at the map (the end of the call, a property read, a local response, a resume).
#[derive(Default)]
pub(crate) struct Batch {
    /// The map as the script now sees it, once it was read from the proxy.
    map: Option<Headers>,
    /// The writes to send one by one, while there are at most [`SINGLE_WRITES`] (the list is
    /// kept from call to call, so it is allocated once).
    writes: Vec<Write>,
    /// The map holds every write (there were more, or the whole map was replaced): it goes to
    /// the proxy whole.
    whole: bool,
    /// A first single read goes straight to the proxy: fetching the whole map only pays from
    /// the second.
    asked_one: bool,
}

impl Batch {
    /// Whether the call has done nothing with this map.
    fn is_untouched(&self) -> bool {
        self.map.is_none() && self.writes.is_empty() && !self.whole && !self.asked_one
    }

    /// The map with the pending writes applied, read from the proxy once.
    fn map<H: Host>(&mut self, host: &H, map: MapType) -> Result<&mut Headers, Status> {
        let headers = match self.map.take() {
            Some(headers) => headers,
            None => {
                let mut headers = host.get_map(map)?;
                for write in &self.writes {
                    write.apply(map, &mut headers);
                }
                headers
            }
        };
        Ok(self.map.insert(headers))
    }

    /// The first value of one header: the proxy's answer to a first single read, else the
    /// call's map's.
    pub fn get<H: Host>(
        &mut self,
        host: &H,
        map: MapType,
        name: &str,
    ) -> Result<Option<Cow<'_, [u8]>>, Status> {
        if self.is_untouched() {
            self.asked_one = true;
            return Ok(host.get_map_value(map, name)?.map(Cow::Owned));
        }
        Ok(get(self.map(host, map)?, name).map(|v| Cow::Borrowed(&v[..])))
    }

    /// Every pair of the map.
    pub fn get_all<H: Host>(&mut self, host: &H, map: MapType) -> Result<Headers, Status> {
        self.map(host, map).cloned()
    }

    /// Records a write: in the list while there are few, then in the map only (read from the
    /// proxy then, if the call hasn't read it yet).
    pub fn write<H: Host>(&mut self, host: &H, map: MapType, write: Write) -> Result<(), Status> {
        if !self.whole && self.writes.len() < SINGLE_WRITES {
            if let Some(headers) = &mut self.map {
                write.apply(map, headers);
            }
            self.writes.push(write);
        } else {
            write.apply_owned(map, self.map(host, map)?);
            self.writes.clear();
            self.whole = true;
        }
        Ok(())
    }

    pub fn set_all(&mut self, map: MapType, pairs: &[(&str, &[u8])]) {
        set_all(map, self.map.get_or_insert_with(Vec::new), pairs);
        self.writes.clear();
        self.whole = true;
    }

    /// Sends the pending writes to the proxy and forgets the map (the proxy may change it
    /// once the call is over). The first refusal ends the flush.
    pub fn flush<H: Host>(&mut self, host: &H, map: MapType) -> Result<(), Status> {
        if self.is_untouched() {
            return Ok(());
        }
        self.asked_one = false;
        let headers = self.map.take();
        if std::mem::take(&mut self.whole) {
            let headers = headers.unwrap_or_default();
            let pairs: Vec<(&str, &[u8])> =
                headers.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
            return host.set_map(map, &pairs);
        }
        let sent = self.writes.iter().try_for_each(|w| w.send(host, map));
        self.writes.clear();
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: MapType = MapType::HttpRequestHeaders;

    fn pairs(list: &[(&str, &str)]) -> Headers {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn add_appends_to_inline_headers_and_keeps_pseudo_headers_first() {
        let mut h = pairs(&[(":path", "/"), ("user-agent", "ua"), ("x-a", "1")]);
        add(REQ, &mut h, "User-Agent", b"u2");
        add(REQ, &mut h, "x-a", b"2");
        add(REQ, &mut h, ":zz", b"p");
        add(REQ, &mut h, "accept", b"");
        add(REQ, &mut h, "accept", b"a");
        assert_eq!(
            h,
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
        let mut h = pairs(&[
            (":path", "/"),
            (":method", "GET"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-a", "3"),
        ]);
        replace(REQ, &mut h, "x-a", b"R");
        replace(REQ, &mut h, ":path", b"/p");
        assert_eq!(
            h,
            pairs(&[
                (":method", "GET"),
                (":path", "/p"),
                ("x-b", "2"),
                ("x-a", "R")
            ])
        );
    }
}
