//! `to_json`'s serializer. Rhai has two of its own, both unfit: its map package's `to_json`
//! writes keys and strings with Rust's `Debug` escapes (`\u{1b}`: not JSON), and its `Serialize`
//! for `Dynamic` writes a function pointer's curried arguments, so a closure that captures the
//! map holding it (`m.me = || m`) recurses forever. JSON has no functions: here they are an
//! error. Containers are walked here; every other value is Rhai's to write.

use rhai::{Dynamic, Map};
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
