//! A call's header operations, answered from a local copy of the map and sent to the proxy
//! once, when the call ends well ([`Batch`]); and the values and writes a script gives.

use std::borrow::Cow;

use rhai::ImmutableString;

use crate::header_check::{self, Target};
use crate::header_map::HeaderMap;
use crate::host::{Bytes, Host, MapType, Status};

/// A value a script gave for a header (or a body): its string, shared with the script (not
/// copied), or the bytes of a blob.
pub(crate) enum Value {
    Text(ImmutableString),
    Bytes(Bytes),
}

impl Value {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Text(text) => text.as_bytes(),
            Value::Bytes(bytes) => bytes,
        }
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Value::Text(text) => text.as_bytes().to_vec(),
            Value::Bytes(bytes) => bytes,
        }
    }
}

/// What the writes to `map` change, in words.
fn written(map: MapType) -> &'static str {
    match map {
        MapType::HttpRequestHeaders => "request headers",
        MapType::HttpRequestTrailers => "request trailers",
        MapType::HttpResponseHeaders => "response headers",
        MapType::HttpResponseTrailers => "response trailers",
        _ => "headers",
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
    /// The most this write can add to a map's encoding, given the bytes of its name and value
    /// (known to the caller, which checked them): one pair, those bytes, and a comma when it
    /// joins an inline header.
    fn growth(&self, added: usize) -> (usize, usize) {
        match self {
            // The two sizes and two NULs of a pair are 10 bytes; a comma is one more.
            Write::Replace(..) | Write::Add(..) => (1, added + 11),
            Write::Remove(_) => (0, 0),
        }
    }

    fn apply(&self, map: MapType, headers: &mut HeaderMap) {
        match self {
            Write::Replace(name, value) => headers.replace(map, name, value.as_bytes()),
            Write::Add(name, value) => headers.add(map, name, value.as_bytes()),
            Write::Remove(name) => headers.remove(name),
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

/// Why a header write was not taken.
pub(crate) enum WriteError {
    /// The proxy refused a call.
    Refused(Status),
    /// The map would be more than the proxy reads in one piece ([`Batch::too_large`] says
    /// how much: kept apart, the error stays one word on the path that doesn't fail).
    TooLarge,
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
    map: Option<HeaderMap>,
    /// The writes to send one by one, while there are at most [`SINGLE_WRITES`] (the list is
    /// kept from call to call, so it is allocated once).
    writes: Vec<Write>,
    /// The map holds every write (there were more, or the whole map was replaced): it goes to
    /// the proxy whole.
    whole: bool,
    /// A first single read goes straight to the proxy: fetching the whole map only pays from
    /// the second.
    asked_one: bool,
    /// The pairs and bytes the last refused write would have made.
    too_large: (usize, usize),
}

impl Batch {
    /// Whether the call has done nothing with this map.
    fn is_untouched(&self) -> bool {
        self.map.is_none() && self.writes.is_empty() && !self.whole && !self.asked_one
    }

    /// The map with the pending writes applied, read from the proxy once.
    fn map<H: Host>(&mut self, host: &H, map: MapType) -> Result<&mut HeaderMap, Status> {
        if self.map.is_none() {
            let mut headers = host.get_map(map)?;
            for write in &self.writes {
                write.apply(map, &mut headers);
            }
            self.map = Some(headers);
        }
        Ok(self.map.get_or_insert_with(HeaderMap::new))
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
        Ok(self.map(host, map)?.get(name).map(Cow::Borrowed))
    }

    /// The map, as the script sees it now.
    pub fn get_all<H: Host>(&mut self, host: &H, map: MapType) -> Result<&HeaderMap, Status> {
        self.map(host, map).map(|headers| &*headers)
    }

    /// Records a write: in the list while there are few, then in the map only (read from the
    /// proxy then, if the call hasn't read it yet). A map that goes whole must stay within
    /// what the proxy reads in one piece ([`header_check::MAX_PAIRS`]): a write that would take
    /// it past is refused, and the map stays as it was.
    pub fn write<H: Host>(
        &mut self,
        host: &H,
        map: MapType,
        write: Write,
        added: usize,
    ) -> Result<(), WriteError> {
        if !self.has_writes() {
            host.writes_held(written(map));
        }
        if !self.whole && self.writes.len() < SINGLE_WRITES {
            if let Some(headers) = &mut self.map {
                write.apply(map, headers);
            }
            self.writes.push(write);
            return Ok(());
        }
        let headers = self.map(host, map).map_err(WriteError::Refused)?;
        let (pairs, bytes) = write.growth(added);
        if headers.len() + pairs <= header_check::MAX_PAIRS
            && headers.abi_size() + bytes <= header_check::MAX_PAIR_BYTES
        {
            write.apply(map, headers);
        } else {
            // Near the limit: the write's exact effect (an inline header joins, a replaced
            // one drops its other values), on a copy.
            let mut after = headers.clone();
            write.apply(map, &mut after);
            let (pairs, bytes) = (after.len(), after.abi_size());
            if pairs > header_check::MAX_PAIRS || bytes > header_check::MAX_PAIR_BYTES {
                self.too_large = (pairs, bytes);
                return Err(WriteError::TooLarge);
            }
            *headers = after;
        }
        self.writes.clear();
        self.whole = true;
        Ok(())
    }

    /// Whether the call wrote to this map.
    pub fn has_writes(&self) -> bool {
        self.whole || !self.writes.is_empty()
    }

    /// Forgets the call's reads and writes: none of them reaches the proxy.
    pub fn discard(&mut self) {
        self.map = None;
        self.writes.clear();
        self.whole = false;
        self.asked_one = false;
    }

    /// The pairs and bytes of the map the last [`WriteError::TooLarge`] refused.
    pub fn too_large(&self) -> (usize, usize) {
        self.too_large
    }

    /// Replaces the whole map, when the proxy can read it in one piece.
    pub fn set_all(&mut self, headers: HeaderMap, map: MapType, f: &str) -> Result<(), String> {
        header_check::check_size(f, Target::of(map), headers.len(), headers.abi_size())?;
        self.map = Some(headers);
        self.writes.clear();
        self.whole = true;
        Ok(())
    }

    /// Sends the pending writes to the proxy and forgets the map (the proxy may change it
    /// once the call is over). The first refusal ends the flush.
    pub fn flush<H: Host>(&mut self, host: &H, map: MapType) -> Result<(), Status> {
        if self.is_untouched() {
            return Ok(());
        }
        if self.has_writes() {
            host.writes_sent(written(map));
        }
        self.asked_one = false;
        let headers = self.map.take();
        if std::mem::take(&mut self.whole) {
            return host.set_map(map, &headers.unwrap_or_default());
        }
        let sent = self.writes.iter().try_for_each(|w| w.send(host, map));
        self.writes.clear();
        sent
    }
}
