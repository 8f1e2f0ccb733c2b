//! `to_json`'s serializer. Rhai has two of its own, both unfit: its map package's `to_json`
//! writes keys and strings with Rust's `Debug` escapes (`\u{1b}`: not JSON), and its `Serialize`
//! for `Dynamic` writes a function pointer's curried arguments, so a closure that captures the
//! map holding it (`m.me = || m`) recurses forever. JSON has no functions: here they are an error.

use rhai::{Dynamic, Map};
use serde::ser::{Error, Serialize, SerializeMap, SerializeSeq, Serializer};

/// A script value, serialized as JSON data only.
pub(super) struct Json<'a>(pub &'a Dynamic);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let value = self.0;
        if let Ok(s) = value.as_immutable_string_ref() {
            ser.serialize_str(&s)
        } else if let Ok(map) = value.as_map_ref() {
            JsonMap(&map).serialize(ser)
        } else if let Ok(i) = value.as_int() {
            ser.serialize_i64(i)
        } else if let Ok(array) = value.as_array_ref() {
            let mut out = ser.serialize_seq(Some(array.len()))?;
            for item in array.iter() {
                out.serialize_element(&Json(item))?;
            }
            out.end()
        } else if let Ok(b) = value.as_bool() {
            ser.serialize_bool(b)
        } else if let Ok(f) = value.as_float() {
            ser.serialize_f64(f)
        } else if value.is_unit() {
            ser.serialize_unit()
        } else if let Ok(c) = value.as_char() {
            ser.serialize_char(c)
        } else if let Ok(blob) = value.as_blob_ref() {
            ser.collect_seq(blob.iter())
        } else {
            Err(S::Error::custom(format!(
                "a {} has no JSON form",
                value.type_name()
            )))
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
