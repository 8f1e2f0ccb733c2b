//! `to_json`'s serializer and `parse_json`'s deserializer. Rhai has two of its own, both unfit: its map package's `to_json`
//! writes keys and strings with Rust's `Debug` escapes (`\u{1b}`: not JSON), and its `Serialize`
//! for `Dynamic` writes a function pointer's curried arguments, so a closure that captures the
//! map holding it (`m.me = || m`) recurses forever. JSON has no functions: here they are an
//! error. Containers are walked here; every other value is Rhai's to write.

use std::cell::Cell;
use std::{fmt, io};

use rhai::{Array, Dynamic, Map};
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Error, Serialize, SerializeMap, SerializeSeq, Serializer};

/// A script value, serialized as JSON data only.
pub(super) struct Json<'a>(pub &'a Dynamic);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let value = self.0;
        // `is_*` are plain tag tests: most values are leaves, and are told apart cheaply.
        if value.is_map() {
            let map = value.as_map_ref().map_err(S::Error::custom)?;
            JsonMap(&map).serialize(ser)
        } else if value.is_array() {
            let array = value.as_array_ref().map_err(S::Error::custom)?;
            let mut out = ser.serialize_seq(Some(array.len()))?;
            for item in array.iter() {
                out.serialize_element(&Json(item))?;
            }
            out.end()
        } else if value.is_fnptr() {
            Err(S::Error::custom("a Fn has no JSON form"))
        } else {
            value.serialize(ser)
        }
    }
}

/// An object map, serialized as JSON data only.
pub(super) struct JsonMap<'a>(pub &'a Map);

impl Serialize for JsonMap<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut out = ser.serialize_map(Some(self.0.len()))?;
        for (key, item) in self.0.iter() {
            out.serialize_entry(key.as_str(), &Json(item))?;
        }
        out.end()
    }
}

/// `value` as JSON text of at most `max` bytes (0: no limit), the string size limit. The text is
/// refused while it is written, when its buffer would grow past `max`, not once whole: escapes
/// make it up to six times longer than the strings it holds (`\u0001`), so a large string asked
/// for several times its size. (A text the buffer's last growth let past `max` is still refused
/// by Rhai's size check of the result.)
pub(super) fn to_text<T: Serialize>(value: &T, max: usize) -> Result<String, String> {
    let mut out = Bounded {
        bytes: Vec::with_capacity(128),
        most: at_most(max),
    };
    serde_json::to_writer(&mut out, value).map_err(|e| {
        if e.is_io() {
            format!("the JSON text is longer than {max} bytes (limits.max_string_size)")
        } else {
            e.to_string()
        }
    })?;
    // SAFETY: serde_json writes only UTF-8 (its own `to_string` relies on it the same way).
    Ok(unsafe { String::from_utf8_unchecked(out.bytes) })
}

/// A limit of Rhai's (0: none) as a bound to compare with.
fn at_most(max: usize) -> usize {
    if max == 0 {
        usize::MAX
    } else {
        max
    }
}

/// A buffer that refuses to grow past `most` bytes.
struct Bounded {
    bytes: Vec<u8>,
    most: usize,
}

impl io::Write for Bounded {
    #[inline]
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_all(data).map(|()| data.len())
    }

    // serde_json writes through `write_all`, a piece at a time. The limit is checked only when
    // the buffer must grow (a test `extend_from_slice` makes anyway): checked on every piece, it
    // cost the JSON workload 1.6 % more instructions.
    #[inline]
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let len = self.bytes.len();
        if data.len() > self.bytes.capacity() - len && data.len() > self.most - len {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What one document may hold in all, counted as Rhai's size limits count a value: the items of
/// all its arrays, the entries of all its maps (0: no limit).
#[derive(Clone, Copy)]
pub(super) struct Budget {
    pub array_items: usize,
    pub map_entries: usize,
}

/// Parses a JSON document into a script value: objects become maps, arrays arrays, `null` `()`,
/// integers that fit `i64` integers and other numbers floats, as Rhai's own `Deserialize` makes
/// them. Written here because Rhai's builds each object twice (a `BTreeMap` it then converts item
/// by item): a 10 kB document parsed ~1.6× slower.
///
/// Items and entries are counted as they are read, and a document holding more than `budget`
/// is refused there. Rhai measured the value once it was whole: each `[]` of a document is ~50
/// bytes of heap, and with `max_string_size` at 64 MiB a 40 MB `[[],[],...]` asked for more
/// than the VM's 1 GB, which trapped it.
///
/// Every [`HEAP_CHECK_EVERY`] items (or entries), `heap_over` says whether the call is over
/// its memory limit, and the parse stops with its error: within the size limits a document can
/// still be ~30 times its text in heap (`[[[[]]]]`: four arrays in 8 bytes), and the engine's
/// own check of the limit comes only after the call.
pub(super) fn parse(
    text: &str,
    budget: Budget,
    heap_over: &dyn Fn() -> Option<String>,
) -> Result<Dynamic, String> {
    let document = Document {
        most_items: at_most(budget.array_items),
        most_entries: at_most(budget.map_entries),
        array_items: Cell::new(0),
        map_entries: Cell::new(0),
        heap_over,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    Value(&document)
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value))
        .map_err(|e| match e.classify() {
            // `deserialize_any` makes no data error but the budget's.
            serde_json::error::Category::Data => format!("document too large: {e}"),
            _ => format!("invalid JSON: {e}"),
        })
}

/// A document's budget (`usize::MAX`: no limit), and what it has used so far.
struct Document<'a> {
    most_items: usize,
    most_entries: usize,
    array_items: Cell<usize>,
    map_entries: Cell<usize>,
    heap_over: &'a dyn Fn() -> Option<String>,
}

/// How often (in items, and in entries) the parse asks whether the call is over its memory
/// limit: at ~100 bytes an item at most, every ~100 kB of heap.
const HEAP_CHECK_EVERY: usize = 1024;

/// One value of a document.
#[derive(Clone, Copy)]
struct Value<'a>(&'a Document<'a>);

/// Counts one more item (or entry) of the document against `most`; an error past it, or once
/// the call is over its memory limit.
#[inline]
fn count<E: de::Error>(
    doc: &Document,
    used: &Cell<usize>,
    most: usize,
    what: &str,
) -> Result<(), E> {
    let n = used.get() + 1;
    used.set(n);
    if n > most {
        return Err(too_large(most, what));
    }
    if n.is_multiple_of(HEAP_CHECK_EVERY) {
        if let Some(error) = (doc.heap_over)() {
            return Err(E::custom(error));
        }
    }
    Ok(())
}

#[cold]
fn too_large<E: de::Error>(max: usize, what: &str) -> E {
    E::custom(format_args!("more than {max} {what}"))
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = Dynamic;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Dynamic, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_> {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Dynamic, E> {
        Ok(v.into())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dynamic, E> {
        Ok(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dynamic, E> {
        // Past i64::MAX, a float, as Rhai does.
        Ok(i64::try_from(v).map_or_else(|_| (v as f64).into(), Dynamic::from_int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dynamic, E> {
        Ok(v.into())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dynamic, E> {
        Ok(v.into())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Dynamic, E> {
        Ok(v.into())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        let mut array = Array::new();
        while let Some(item) = seq.next_element_seed(self)? {
            let doc = self.0;
            count(
                doc,
                &doc.array_items,
                doc.most_items,
                "array items (limits.max_array_size)",
            )?;
            array.push(item);
        }
        Ok(Dynamic::from_array(array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut object: A) -> Result<Dynamic, A::Error> {
        let mut map = Map::new();
        while let Some(Key(key)) = object.next_key()? {
            let doc = self.0;
            count(
                doc,
                &doc.map_entries,
                doc.most_entries,
                "object entries (limits.max_map_size)",
            )?;
            let item = object.next_value_seed(self)?;
            map.insert(key, item);
        }
        Ok(Dynamic::from_map(map))
    }
}

/// An object's key, as a map holds it: a `SmartString`, inline when short.
struct Key(smartstring::SmartString<smartstring::LazyCompact>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key(v.into()))
    }
}

/// Registers `parse_json` and `to_json`.
pub(super) fn register<H: crate::host::Host + 'static>(reg: &mut super::Registrar<'_, H>) {
    use super::err;
    use super::Allowed::Anywhere;
    let max_string = reg.engine.max_string_size();
    // A document may hold what a script value may: Rhai's size limits, counted while parsing.
    let json_budget = Budget {
        array_items: reg.engine.max_array_size(),
        map_entries: reg.engine.max_map_size(),
    };
    bind!(
        reg,
        "parse_json",
        Anywhere,
        "map, array, string, number, bool or ()",
        "Parses JSON text (objects become maps, arrays arrays, `null` ()); invalid JSON is an error that says where. Numbers: an integer that fits in 64 bits stays an int; any other number (`2.5`, `1e3`, an integer past 64 bits) becomes a float, so `to_json` writes `1e3` back as `1000.0` and `12345678901234567890` as `1.2345678901234567e+19`. A map keeps its keys in sorted order (Rhai's maps are sorted by key), so `to_json(parse_json(x))` lists an object's keys alphabetically: the same document for any JSON reader, but not the same text; to pass a body on unchanged, pass the original text. So is a document holding more than a value may: over all its arrays, more items than `limits.max_array_size`; over all its objects, more entries than `limits.max_map_size`; or one that takes the call past `limits.max_memory` or the VM past `limits.max_vm_memory` (each refused while parsing, before it is all made).",
        r#"fn on_request_body() {
    try {
        let order = parse_json(get_request_body());
        set_context("order_id", order.id);
    } catch (e) {
        send_http_response(400, [], "the body is not JSON");
    }
}"#,
        |a, text: &str| parse(text, json_budget, &|| a.over_memory_budget(0))
            .or_else(|e| err(format!("parse_json(): {e}")))
    );
    bind!(
        reg,
        "to_json",
        Anywhere,
        "string",
        "Serializes a value (map, array, string, number, bool, ()) as compact JSON; a value JSON can't hold (such as a function pointer) is an error.",
        r#"fn on_request_headers() {
    send_http_response(200, #{ "content-type": "application/json" }, to_json(#{ ok: true, path: get_request_header(":path") }));
}"#,
        |_a, value: Dynamic| to_text(&Json(&value), max_string)
            .or_else(|e| err(format!("to_json(): {e}")))
    );
    // Rhai's map package has its own `to_json(map)`, which a call with a map would find before
    // the one above: this one, in the global namespace, is found first.
    reg.engine.register_fn("to_json", move |map: &mut Map| {
        to_text(&JsonMap(map), max_string).or_else(|e| err(format!("to_json(): {e}")))
    });
    reg.register_overload("to_json", 1);
}
