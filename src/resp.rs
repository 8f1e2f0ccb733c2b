//! RESP, the Redis protocol: a command as Higress's `proxy_redis_call` takes it (an array of
//! bulk strings), and a reply as Rhai values.
//!
//! A reply comes from the network: every length in it is checked against the bytes there are
//! and against the script's limits before anything is made, and nesting is bounded, so no
//! reply can trap the VM.

use rhai::{Array, Dynamic, Map};

/// A command: `*N\r\n` then each argument as `$len\r\nbytes\r\n`.
pub(crate) fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    let size = args.iter().map(|a| a.len() + 16).sum::<usize>() + 16;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// How far a reply may go in Rhai values (the script's limits).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Items in one array (`limits.max_array_size`).
    pub max_array: usize,
    /// Arrays nested in one another (`limits.max_value_depth`).
    pub max_depth: usize,
}

/// Why a reply can't be given to the script.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not RESP, or cut short: the script gets an error reply saying so.
    Malformed(String),
    /// Past the script's limits: a script error, as for an oversized callout answer.
    Limit(String),
}

/// The error map a script gets for a failed call: `#{ error: message, kind: kind }`.
pub(crate) fn error_map(message: &str, kind: &str) -> Dynamic {
    let mut map = Map::new();
    map.insert("error".into(), message.into());
    map.insert("kind".into(), kind.into());
    Dynamic::from_map(map)
}

/// The reply's value: a simple or bulk string as a string (invalid UTF-8 replaced), an
/// integer as an int, an array as an array, nil as `()`, an error reply as
/// `#{ error, kind: "redis" }` (also inside an array). RESP3's null, boolean and double are
/// read too. Bytes after the first value are ignored.
pub(crate) fn decode(bytes: &[u8], bounds: Bounds) -> Result<Dynamic, DecodeError> {
    let mut reader = Reader { bytes, at: 0 };
    reader.value(bounds, 0)
}

/// The length of the first complete value in `bytes`: `Ok(None)` while more bytes are needed
/// (a client reading a reply off a socket).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn complete_len(bytes: &[u8]) -> Result<Option<usize>, String> {
    let mut reader = Reader { bytes, at: 0 };
    // An explicit stack: how many values each open array still holds.
    let mut open: Vec<u64> = vec![1];
    while let Some(left) = open.last_mut() {
        if *left == 0 {
            open.pop();
            continue;
        }
        *left -= 1;
        let Some(kind) = reader.bytes.get(reader.at).copied() else {
            return Ok(None);
        };
        reader.at += 1;
        let Some(line) = reader.line_or_more() else {
            return Ok(None);
        };
        match kind {
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {}
            b'$' | b'=' => {
                let len = number(line).map_err(|e| e.to_string())?;
                if len >= 0 {
                    let end = reader.at.saturating_add(len as usize).saturating_add(2);
                    if end > reader.bytes.len() {
                        return Ok(None);
                    }
                    reader.at = end;
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let len = number(line).map_err(|e| e.to_string())?;
                let factor = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
                if len > 0 {
                    open.push(len as u64 * factor);
                }
            }
            other => return Err(format!("unknown RESP type byte 0x{other:02x}")),
        }
    }
    Ok(Some(reader.at))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn number(line: &[u8]) -> Result<i64, &'static str> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("a length or an integer is not a number")
}

impl<'a> Reader<'a> {
    /// The line from here to the next CRLF (without it), moving past it; `None` when there
    /// is no CRLF.
    fn line_or_more(&mut self) -> Option<&'a [u8]> {
        let rest = self.bytes.get(self.at..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        self.at += end + 2;
        rest.get(..end)
    }

    fn malformed(&self, why: &str) -> DecodeError {
        DecodeError::Malformed(format!(
            "the Redis reply is malformed at byte {}: {why}",
            self.at
        ))
    }

    fn line(&mut self) -> Result<&'a [u8], DecodeError> {
        self.line_or_more()
            .ok_or_else(|| self.malformed("it ends before its line does"))
    }

    fn length(&mut self) -> Result<i64, DecodeError> {
        let line = self.line()?;
        number(line).map_err(|why| self.malformed(why))
    }

    fn value(&mut self, bounds: Bounds, depth: usize) -> Result<Dynamic, DecodeError> {
        let Some(kind) = self.bytes.get(self.at).copied() else {
            return Err(self.malformed("it is empty where a value should be"));
        };
        self.at += 1;
        match kind {
            b'+' => Ok(text(self.line()?).into()),
            b'-' => Ok(error_map(&text(self.line()?), "redis")),
            b':' => {
                let line = self.line()?;
                number(line)
                    .map(Dynamic::from)
                    .map_err(|why| self.malformed(why))
            }
            b'$' | b'=' => {
                let len = self.length()?;
                if len < 0 {
                    return Ok(Dynamic::UNIT);
                }
                let start = self.at;
                let end = start.saturating_add(len as usize);
                if self.bytes.get(end..end.saturating_add(2)) != Some(b"\r\n") {
                    return Err(self.malformed("a string is longer than the reply"));
                }
                self.at = end + 2;
                Ok(text(self.bytes.get(start..end).unwrap_or_default()).into())
            }
            b'*' | b'~' | b'>' => {
                let len = self.length()?;
                if len < 0 {
                    return Ok(Dynamic::UNIT);
                }
                let len = len as u64;
                if len > bounds.max_array as u64 {
                    return Err(DecodeError::Limit(format!(
                        "the Redis reply has an array of {len} items, more than \
                         limits.max_array_size ({})",
                        bounds.max_array
                    )));
                }
                if depth + 1 >= bounds.max_depth {
                    return Err(DecodeError::Limit(format!(
                        "the Redis reply nests arrays deeper than limits.max_value_depth ({})",
                        bounds.max_depth
                    )));
                }
                // Each item takes at least 3 bytes: a claimed length reserves no more.
                let room = self.bytes.len().saturating_sub(self.at) / 3;
                let mut items = Array::with_capacity((len as usize).min(room));
                for _ in 0..len {
                    items.push(self.value(bounds, depth + 1)?);
                }
                Ok(items.into())
            }
            b'_' => {
                self.line()?;
                Ok(Dynamic::UNIT)
            }
            b'#' => match self.line()? {
                b"t" => Ok(true.into()),
                b"f" => Ok(false.into()),
                _ => Err(self.malformed("a boolean is neither t nor f")),
            },
            b',' | b'(' => Ok(text(self.line()?).into()),
            other => Err(self.malformed(&format!(
                "0x{other:02x} is not a RESP type this plugin reads"
            ))),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_array: 100,
        max_depth: 8,
    };

    fn show(bytes: &[u8]) -> String {
        match decode(bytes, BOUNDS) {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let query = encode(&[b"INCR".to_vec(), b"k\r\n1".to_vec()]);
        assert_eq!(query, b"*2\r\n$4\r\nINCR\r\n$4\r\nk\r\n1\r\n");
        assert_eq!(complete_len(&query), Ok(Some(query.len())));
    }

    #[test]
    fn replies_become_rhai_values() {
        assert_eq!(show(b"+OK\r\n"), r#""OK""#);
        assert_eq!(show(b":42\r\n"), "42");
        assert_eq!(show(b"$3\r\nabc\r\n"), r#""abc""#);
        assert_eq!(show(b"$-1\r\n"), "()");
        assert_eq!(show(b"*-1\r\n"), "()");
        assert_eq!(show(b"_\r\n"), "()");
        assert_eq!(show(b"#t\r\n"), "true");
        assert_eq!(
            show(b"*3\r\n:1\r\n$-1\r\n*1\r\n+x\r\n"),
            r#"[1, (), ["x"]]"#
        );
        assert_eq!(
            show(b"-ERR wrong type\r\n"),
            r#"#{"error": "ERR wrong type", "kind": "redis"}"#
        );
    }

    #[test]
    fn bad_replies_are_refused_not_trusted() {
        for bad in [
            &b""[..],
            b"+OK",
            b"$10\r\nabc\r\n",
            b":x\r\n",
            b"*2\r\n:1\r\n",
            b"?\r\n",
        ] {
            assert!(
                matches!(decode(bad, BOUNDS), Err(DecodeError::Malformed(_))),
                "{bad:?}"
            );
        }
        // A claimed length reserves nothing it can't fill.
        assert!(matches!(
            decode(b"*99\r\n", BOUNDS),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"*101\r\n", BOUNDS),
            Err(DecodeError::Limit(_))
        ));
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(matches!(
            decode(deep.as_bytes(), BOUNDS),
            Err(DecodeError::Limit(_))
        ));
    }

    #[test]
    fn a_reply_is_complete_only_with_all_its_bytes() {
        let reply = b"*2\r\n$3\r\nabc\r\n%1\r\n+k\r\n:1\r\n";
        for cut in 0..reply.len() {
            assert_eq!(complete_len(&reply[..cut]), Ok(None), "{cut}");
        }
        assert_eq!(complete_len(reply), Ok(Some(reply.len())));
        assert!(complete_len(b"?x\r\n").is_err());
    }
}
