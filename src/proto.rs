//! The few protobuf messages the plugin exchanges with Envoy, on the wire, by hand (no protobuf
//! crate: four messages do not pay for one in the wasm build).
//!
//! Read: `envoy.config.core.v3.Metadata` (what Envoy 1.40 gives for the properties `metadata`,
//! `xds.route_metadata` and `xds.cluster_metadata`, measured) and the `google.protobuf.Struct`,
//! `Value` and `ListValue` it holds, into script values. Written: the arguments of Envoy's
//! `set_envoy_filter_state` foreign function and, for the emulator, `Metadata` from JSON.
//!
//! Reading never panics: bytes that are not such a message, or a value past the limits of a
//! script value, are an error naming what was wrong.

use rhai::{Array, Dynamic, Map};

/// What one decoded value may hold, as Rhai's limits count a script value: nesting, items of
/// all its arrays, entries of all its maps, bytes of one string (`usize::MAX`: no limit).
#[derive(Clone, Copy)]
pub(crate) struct Budget {
    pub depth: usize,
    pub array_items: usize,
    pub map_entries: usize,
    pub string_bytes: usize,
}

/// One field of a message.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32,
}

/// The fields of one message, in order.
struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    fn of(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or("a varint runs past the end")?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint is longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err(format!(
                "a field of {n} bytes runs past the end ({} left)",
                self.bytes.len()
            ));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    /// The next field and its number; `None` at the end.
    fn next_field(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let mut le = [0u8; 8];
                le.copy_from_slice(self.take(8)?);
                Field::Fixed64(le)
            }
            2 => {
                let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            other => return Err(format!("wire type {other} is not used by these messages")),
        };
        Ok(Some((key >> 3, field)))
    }
}

/// The `Struct` a `Metadata` message holds for `namespace` (its `filter_metadata` entry), if
/// any.
pub(crate) fn metadata_namespace<'a>(
    metadata: &'a [u8],
    namespace: &str,
) -> Result<Option<&'a [u8]>, String> {
    map_value(metadata, namespace)
}

/// The value of `key` in the `map<string, …>` in field 1 of a message (`Metadata`'s
/// `filter_metadata`, `Struct`'s `fields`). A key given twice counts as protobuf says: the
/// last one.
fn map_value<'a>(message: &'a [u8], key: &str) -> Result<Option<&'a [u8]>, String> {
    let mut found = None;
    let mut fields = Fields::of(message);
    while let Some((number, field)) = fields.next_field()? {
        if let (1, Field::Bytes(entry)) = (number, field) {
            let (k, value) = map_entry(entry)?;
            if k == key.as_bytes() {
                found = Some(value);
            }
        }
    }
    Ok(found)
}

/// A map entry's key (field 1) and value (field 2), each empty when absent.
fn map_entry(entry: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut fields = Fields::of(entry);
    while let Some((number, field)) = fields.next_field()? {
        match (number, field) {
            (1, Field::Bytes(k)) => key = k,
            (2, Field::Bytes(v)) => value = v,
            _ => {}
        }
    }
    Ok((key, value))
}

/// Decodes into script values, spending a [`Budget`].
pub(crate) struct Decoder {
    budget: Budget,
}

impl Decoder {
    pub fn new(budget: Budget) -> Self {
        Self { budget }
    }

    /// A `Struct` as a map.
    pub fn struct_map(&mut self, bytes: &[u8]) -> Result<Map, String> {
        self.struct_at(bytes, 0)
    }

    /// The value of one key of a `Struct`; `None` when it has no such key.
    pub fn struct_field(&mut self, bytes: &[u8], key: &str) -> Result<Option<Dynamic>, String> {
        map_value(bytes, key)?
            .map(|value| self.value(value, 1))
            .transpose()
    }

    fn deeper(&self, depth: usize) -> Result<usize, String> {
        if depth >= self.budget.depth {
            return Err(format!(
                "the value is nested deeper than {} levels (limits.max_value_depth)",
                self.budget.depth
            ));
        }
        Ok(depth + 1)
    }

    fn struct_at(&mut self, bytes: &[u8], depth: usize) -> Result<Map, String> {
        let depth = self.deeper(depth)?;
        let mut map = Map::new();
        let mut fields = Fields::of(bytes);
        while let Some((number, field)) = fields.next_field()? {
            if let (1, Field::Bytes(entry)) = (number, field) {
                let (key, value) = map_entry(entry)?;
                if self.budget.map_entries == 0 {
                    return Err("the value holds more map entries than limits.max_map_size".into());
                }
                self.budget.map_entries -= 1;
                let key = self.text(key)?;
                let value = self.value(value, depth)?;
                map.insert(key.as_str().into(), value);
            }
        }
        Ok(map)
    }

    fn list_at(&mut self, bytes: &[u8], depth: usize) -> Result<Array, String> {
        let depth = self.deeper(depth)?;
        let mut list = Array::new();
        let mut fields = Fields::of(bytes);
        while let Some((number, field)) = fields.next_field()? {
            if let (1, Field::Bytes(value)) = (number, field) {
                if self.budget.array_items == 0 {
                    return Err(
                        "the value holds more array items than limits.max_array_size".into(),
                    );
                }
                self.budget.array_items -= 1;
                list.push(self.value(value, depth)?);
            }
        }
        Ok(list)
    }

    /// A `Value`: its last kind field wins (a `oneof`); no kind is `()`, as `null`.
    fn value(&mut self, bytes: &[u8], depth: usize) -> Result<Dynamic, String> {
        let mut value = Dynamic::UNIT;
        let mut fields = Fields::of(bytes);
        while let Some((number, field)) = fields.next_field()? {
            value = match (number, field) {
                (1, Field::Varint(_)) => Dynamic::UNIT,
                (2, Field::Fixed64(le)) => number_value(f64::from_le_bytes(le)),
                (3, Field::Bytes(text)) => self.text(text)?.into(),
                (4, Field::Varint(b)) => Dynamic::from_bool(b != 0),
                (5, Field::Bytes(s)) => self.struct_at(s, depth)?.into(),
                (6, Field::Bytes(l)) => self.list_at(l, depth)?.into(),
                (1..=6, _) => return Err(format!("field {number} of a Value has the wrong type")),
                _ => continue,
            };
        }
        Ok(value)
    }

    fn text(&self, bytes: &[u8]) -> Result<String, String> {
        if bytes.len() > self.budget.string_bytes {
            return Err(format!(
                "a string of {} bytes is longer than limits.max_string_size",
                bytes.len()
            ));
        }
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// A `Struct` number (always a double): an int when it is a whole number an `f64` holds
/// exactly (within ±2^53), as `parse_json` gives the JSON integers such numbers come from
/// (a JWT's `exp`, a count); otherwise a float.
fn number_value(n: f64) -> Dynamic {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= EXACT {
        Dynamic::from_int(n as i64)
    } else {
        Dynamic::from_float(n)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field.
fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments`: `path` (1), `value`
/// (2), and `span` (3) left at its default, `FilterChain`: the object lives as long as the
/// request's filter chain.
pub(crate) fn set_filter_state_arguments(path: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + value.len() + 8);
    put_bytes(&mut out, 1, path.as_bytes());
    put_bytes(&mut out, 2, value);
    out
}

/// The `path` and `value` of `SetEnvoyFilterStateArguments`, as Envoy parses them (a
/// `string` field must be UTF-8).
pub(crate) fn parse_set_filter_state_arguments(bytes: &[u8]) -> Result<(String, Vec<u8>), String> {
    let (mut path, mut value) = (Vec::new(), Vec::new());
    let mut fields = Fields::of(bytes);
    while let Some((number, field)) = fields.next_field()? {
        match (number, field) {
            (1, Field::Bytes(p)) => path = p.to_vec(),
            (2, Field::Bytes(v)) => value = v.to_vec(),
            _ => {}
        }
    }
    let path = String::from_utf8(path).map_err(|_| "the path is not UTF-8")?;
    std::str::from_utf8(&value).map_err(|_| "the value is not UTF-8")?;
    Ok((path, value))
}

/// `Metadata` holding these namespaces, each a JSON object written as a `Struct` (numbers as
/// doubles, as Envoy keeps them): what the emulator gives for the metadata properties.
pub(crate) fn metadata_from_json(namespaces: &crate::emulator::Metadata) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, fields) in namespaces {
        put_map_entry(&mut out, name, &struct_from_json(fields));
    }
    out
}

/// One entry of the `map<string, …>` both messages hold in field 1.
fn put_map_entry(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let mut entry = Vec::with_capacity(key.len() + value.len() + 8);
    put_bytes(&mut entry, 1, key.as_bytes());
    put_bytes(&mut entry, 2, value);
    put_bytes(out, 1, &entry);
}

fn struct_from_json(fields: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        put_map_entry(&mut out, key, &value_from_json(value));
    }
    out
}

fn value_from_json(value: &serde_json::Value) -> Vec<u8> {
    use serde_json::Value;
    let mut out = Vec::new();
    match value {
        Value::Null => {
            put_varint(&mut out, 1 << 3);
            put_varint(&mut out, 0);
        }
        Value::Number(n) => {
            put_varint(&mut out, 2 << 3 | 1);
            out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
        }
        Value::String(s) => put_bytes(&mut out, 3, s.as_bytes()),
        Value::Bool(b) => {
            put_varint(&mut out, 4 << 3);
            put_varint(&mut out, u64::from(*b));
        }
        Value::Object(fields) => put_bytes(&mut out, 5, &struct_from_json(fields)),
        Value::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                put_bytes(&mut list, 1, &value_from_json(item));
            }
            put_bytes(&mut out, 6, &list);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ANY: Budget = Budget {
        depth: 128,
        array_items: usize::MAX,
        map_entries: usize::MAX,
        string_bytes: usize::MAX,
    };

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// What Envoy 1.40 gave for `metadata` after `set_metadata` wrote namespace `acme` =
    /// `{"s":"x","i":7,"f":1.5,"b":true,"z":null,"l":[1,"two",false],"m":{"k":"v"}}`.
    const ENVOY_METADATA: &str = "0a760a0461636d65126e0a080a017312031a01780a0e0a01691209110000000000001c400a1d0a016c121832160a0911000000000000f03f0a051a0374776f0a0220000a0e0a0166120911000000000000f83f0a070a0162120220010a070a017a120208000a110a016d120c2a0a0a080a016b12031a0176";

    #[test]
    fn decodes_what_envoy_gave() {
        let bytes = hex(ENVOY_METADATA);
        let acme = metadata_namespace(&bytes, "acme").unwrap().unwrap();
        let map = Decoder::new(ANY).struct_map(acme).unwrap();
        let json = serde_json::to_value(Dynamic::from_map(map)).unwrap();
        assert_eq!(
            json,
            json!({"s":"x","i":7,"f":1.5,"b":true,"z":null,"l":[1,"two",false],"m":{"k":"v"}})
        );
        assert!(metadata_namespace(&bytes, "other").unwrap().is_none());
        assert!(metadata_namespace(&[], "acme").unwrap().is_none());
        let i = Decoder::new(ANY).struct_field(acme, "i").unwrap().unwrap();
        assert_eq!(i.as_int(), Ok(7));
        assert!(Decoder::new(ANY)
            .struct_field(acme, "nope")
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_emulator_writes_what_envoy_writes() {
        let value = json!({"acme": {"s":"x","i":7,"f":1.5,"b":true,"z":null,"l":[1,"two",false],"m":{"k":"v"}}});
        let bytes = metadata_from_json(&serde_json::from_value(value.clone()).unwrap());
        let acme = metadata_namespace(&bytes, "acme").unwrap().unwrap();
        let map = Decoder::new(ANY).struct_map(acme).unwrap();
        assert_eq!(
            serde_json::to_value(Dynamic::from_map(map)).unwrap(),
            value["acme"]
        );
        // Same fields as Envoy's (whose map order varies): the same length.
        assert_eq!(bytes.len(), hex(ENVOY_METADATA).len());
    }

    #[test]
    fn numbers_are_ints_when_whole_and_exact() {
        assert!(number_value(1_767_225_600.0).is_int());
        assert!(number_value(-3.0).is_int());
        assert!(number_value(1.5).is_float());
        assert!(number_value(1e300).is_float());
        assert!(number_value(f64::NAN).is_float());
    }

    #[test]
    fn bad_bytes_and_limits_are_errors() {
        for bad in [
            &b"\x0a\x05ab"[..],
            b"\x0a",
            b"\x0b\x00",
            b"\x0a\x02\x0a\xff",
        ] {
            assert!(metadata_namespace(bad, "a").is_err(), "{bad:?}");
        }
        assert!(Decoder::new(ANY).struct_map(&[0xff; 11]).is_err());
        // A Value whose string field is a varint.
        let wrong = [0x0a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, 0x18];
        assert!(Decoder::new(ANY).struct_map(&wrong).is_err());
        // Nesting: a list in a list in a list…
        let mut deep = Vec::new();
        for _ in 0..200 {
            let mut list = Vec::new();
            put_bytes(&mut list, 1, &deep);
            deep.clear();
            put_bytes(&mut deep, 6, &list);
        }
        let mut s = Vec::new();
        put_map_entry(&mut s, "k", &deep);
        let e = Decoder::new(ANY).struct_map(&s).unwrap_err();
        assert!(e.contains("max_value_depth"), "{e}");
        let small = Budget {
            map_entries: 1,
            ..ANY
        };
        let two =
            metadata_from_json(&serde_json::from_value(json!({"n": {"a": 1, "b": 2}})).unwrap());
        let n = metadata_namespace(&two, "n").unwrap().unwrap();
        assert!(Decoder::new(small)
            .struct_map(n)
            .unwrap_err()
            .contains("max_map_size"));
    }

    /// Every truncation and every one-byte change of what Envoy gave decodes or fails, never
    /// panics.
    #[test]
    fn damaged_bytes_never_panic() {
        let good = hex(ENVOY_METADATA);
        let decode = |bytes: &[u8]| {
            if let Ok(Some(fields)) = metadata_namespace(bytes, "acme") {
                let _ = Decoder::new(ANY).struct_map(fields);
                let _ = Decoder::new(ANY).struct_field(fields, "l");
            }
        };
        for end in 0..good.len() {
            decode(&good[..end]);
        }
        for at in 0..good.len() {
            for byte in [0x00, 0x01, 0x07, 0x0a, 0x12, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = byte;
                decode(&bad);
            }
        }
    }

    #[test]
    fn filter_state_arguments_round_trip() {
        let bytes = set_filter_state_arguments("envoy.network.upstream_server_name", b"a.example");
        assert_eq!(
            parse_set_filter_state_arguments(&bytes).unwrap(),
            (
                "envoy.network.upstream_server_name".into(),
                b"a.example".to_vec()
            )
        );
        let bad = set_filter_state_arguments("x", b"\xff");
        assert!(parse_set_filter_state_arguments(&bad).is_err());
    }
}
