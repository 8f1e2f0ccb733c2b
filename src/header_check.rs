//! What a script may write into a header map, checked in one place for every way it writes one:
//! request and response headers, trailers, local responses, callouts, and whole maps.
//!
//! The proxy takes what it is given: measured in Envoy 1.40, a value with CR LF split the
//! response an HTTP/1.1 client got (a `location` from `url_decode` of the query appended
//! headers and a body), an empty name reached the upstream as `: 1`, and `:method` `GET POST`
//! made the request line `GET POST /path`. So a write is checked when the script makes it (the
//! error then has the script's position), as Envoy checks what a client sends:
//! - a name is an RFC 9110 token (`HeaderUtility::headerNameIsValid`); uppercase is allowed
//!   and the proxy lowercases it, as it does every name (a map's rules, Envoy's
//!   `LowerCaseString` for local responses and callouts: measured);
//! - a value has no control character but tab (Envoy's `HeaderUtility::headerValueIsValid`:
//!   HTAB, SP to `~`, and obs-text 0x80-0xFF); so no CR, LF or NUL;
//! - pseudo-headers only where a message has them, one value each, each value as the request
//!   line or status line needs it.
//!
//! And a pair list the proxy reads in one piece must fit [`MAX_PAIRS`] / [`MAX_PAIR_BYTES`].

use std::fmt::Write as _;

use crate::host::MapType;

/// The most pairs, and bytes of their encoding, the proxy reads in one pair list: a whole
/// header map, a local response's headers, a callout's headers. proxy-wasm-cpp-host's
/// `PairsUtil::toPairs` (`PROXY_WASM_HOST_PAIRS_MAX_COUNT` 1024 and
/// `PROXY_WASM_HOST_PAIRS_MAX_BYTES` 1 MiB, `include/proxy-wasm/limits.h`) answers a larger
/// list with no pairs at all. Measured in Envoy 1.40: a request header map of 1,024 pairs, or
/// of exactly 1 MiB, was set; one pair or ~100 bytes more and the request lost every header
/// (404); a local response with 1,025 headers went out with none of them; a callout with 1,030
/// was refused (no `:method`).
pub const MAX_PAIRS: usize = 1024;
pub const MAX_PAIR_BYTES: usize = 1 << 20;

/// The size of a pair list in the proxy-wasm encoding: the count, each name's and value's size,
/// each name and value followed by a NUL.
pub fn pair_list_bytes(pairs: usize, name_and_value_bytes: usize) -> usize {
    4 + pairs * 10 + name_and_value_bytes
}

/// Where a header goes, which says the pseudo-headers it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Request,
    Response,
    Trailers,
    LocalResponse,
    Callout,
}

impl Target {
    pub fn of(map: MapType) -> Target {
        match map {
            MapType::HttpRequestHeaders => Target::Request,
            MapType::HttpResponseHeaders => Target::Response,
            _ => Target::Trailers,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Target::Request => "the request headers",
            Target::Response => "the response headers",
            Target::Trailers => "trailers",
            Target::LocalResponse => "a local response's headers",
            Target::Callout => "a callout's headers",
        }
    }

    /// The pseudo-headers this target may have.
    fn pseudo_headers(self) -> &'static [Pseudo] {
        use Pseudo::*;
        match self {
            Target::Request => &[Method, Path, Authority, Scheme, Protocol],
            Target::Callout => &[Method, Path, Authority, Scheme],
            Target::Response => &[Status],
            Target::Trailers | Target::LocalResponse => &[],
        }
    }
}

/// A pseudo-header a message may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pseudo {
    Method,
    Path,
    Authority,
    Scheme,
    Protocol,
    Status,
}

impl Pseudo {
    const ALL: [Pseudo; 6] = [
        Pseudo::Method,
        Pseudo::Path,
        Pseudo::Authority,
        Pseudo::Scheme,
        Pseudo::Protocol,
        Pseudo::Status,
    ];

    fn name(self) -> &'static str {
        match self {
            Pseudo::Method => ":method",
            Pseudo::Path => ":path",
            Pseudo::Authority => ":authority",
            Pseudo::Scheme => ":scheme",
            Pseudo::Protocol => ":protocol",
            Pseudo::Status => ":status",
        }
    }

    /// The pseudo-header named `name`, in any case.
    fn of(name: &str) -> Option<Pseudo> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// What is wrong with `value` for this pseudo-header, if anything.
    fn value_error(self, value: &[u8]) -> Option<&'static str> {
        let ok = match self {
            Pseudo::Method | Pseudo::Protocol => !value.is_empty() && all(value, TOKEN),
            // A callout's `:authority` is the cluster's name by default, and Istio's have `|`:
            // no stricter than the request line needs.
            Pseudo::Path | Pseudo::Authority => {
                !value.is_empty() && all_words(value, |w| between(w, 0x20, 0x7f) == HIGHS)
            }
            Pseudo::Scheme => {
                value.first().is_some_and(u8::is_ascii_alphabetic)
                    && value
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            }
            Pseudo::Status => {
                value.len() == 3
                    && value.iter().all(u8::is_ascii_digit)
                    && value.first().is_some_and(|b| (b'2'..=b'5').contains(b))
            }
        };
        (!ok).then_some(match self {
            Pseudo::Method | Pseudo::Protocol => "must be an HTTP token (like GET)",
            Pseudo::Path => "must be visible ASCII, no spaces (percent-encode the rest)",
            Pseudo::Authority => "must be visible ASCII, no spaces",
            Pseudo::Scheme => "must be a URI scheme (like https)",
            Pseudo::Status => "must be a status code, 200 to 599",
        })
    }
}

const TOKEN: u8 = 1;
const VALUE: u8 = 2;

/// Byte classes: `TOKEN`, RFC 9110 `tchar`; `VALUE`, what a field value may hold (HTAB, SP to
/// `~`, obs-text).
static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        let mut class = 0;
        if alnum
            || matches!(c, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~')
        {
            class |= TOKEN;
        }
        if c == b'\t' || (c >= 0x20 && c != 0x7f) {
            class |= VALUE;
        }
        table[b] = class;
        b += 1;
    }
    table
}

fn all(bytes: &[u8], class: u8) -> bool {
    bytes.iter().all(|&b| CLASSES[b as usize] & class != 0)
}

/// Checks one header a script writes with `f` (`add_response_header`): `Err` is the script
/// error's message. An ordinary header (a lowercase name, a value of printable ASCII or
/// obs-text) is checked eight bytes at a time: a table lookup per byte cost ~20 wasm
/// instructions a byte, 6% of the bench's header-heavy request.
#[inline]
pub(crate) fn check(f: &str, target: Target, name: &str, value: &[u8]) -> Result<(), String> {
    if target != Target::Callout && is_plain(name.as_bytes(), value) {
        return Ok(());
    }
    check_rest(f, target, name, value)
}

/// Whether a header is an ordinary one, which [`check`] lets into any map but a callout's: a
/// non-empty name of lowercase letters, digits, `-` and `.`, and a value with no byte below space
/// (tab included: the slow way) and no DEL. `false` says nothing: ask [`check`].
#[inline(always)]
pub(crate) fn is_plain(name: &[u8], value: &[u8]) -> bool {
    plain_name(name) && plain_value(value)
}

/// [`check`] for what its fast path doesn't decide: uppercase and other token characters in
/// a name, tabs in a value, pseudo-headers, a callout's headers, and the refusals.
#[inline(never)]
fn check_rest(f: &str, target: Target, name: &str, value: &[u8]) -> Result<(), String> {
    let name_bytes = name.as_bytes();
    if name_bytes.first() == Some(&b':') {
        // A pseudo-header the message has, with a value of its kind (a callout sets three on
        // every call: no allocation here).
        let known = Pseudo::of(name).filter(|p| target.pseudo_headers().contains(p));
        // Every pseudo-header's value rule allows only bytes a value may hold.
        if known.is_some_and(|known| known.value_error(value).is_none()) {
            return Ok(());
        }
        return refuse(f, target, name, value);
    }
    if !name_bytes.is_empty()
        && all(name_bytes, TOKEN)
        && all(value, VALUE)
        && (target != Target::Callout || !is_framing(name))
    {
        return Ok(());
    }
    refuse(f, target, name, value)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether `test` holds for every word of `bytes`, read eight bytes at a time as little-endian
/// words straight from the slice: the full ones, then the last eight (overlapping, which
/// tests no byte wrongly); fewer than eight are read in two overlapping halves, the rest of
/// the word filled with `a` (which every test lets through).
#[inline(always)]
fn all_words(bytes: &[u8], test: impl Fn(u64) -> bool) -> bool {
    let n = bytes.len();
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let half = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes) as u64
    };
    let quarter = |at: usize| {
        bytes
            .get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u16::from_le_bytes) as u64
    };
    const FILL: u64 = 0x6161_6161_6161_6161;
    match n {
        0 => true,
        1 => test(bytes.first().map_or(0, |&b| b as u64) | (FILL & !0xff)),
        2..=3 => test(quarter(0) | quarter(n - 2) << 16 | (FILL & !0xffff_ffff)),
        4..=8 => test(half(0) | half(n - 4) << 32),
        _ => {
            let mut at = 0;
            while at + 8 < n {
                if !test(word(at)) {
                    return false;
                }
                at += 8;
            }
            test(word(n - 8))
        }
    }
}

/// The high bit of each byte of `x` that is strictly between `m` and `n` (`m` < 128, `n` ≤ 128;
/// exact per byte: "Determine if a word has a byte between m and n", Bit Twiddling Hacks).
const fn between(x: u64, m: u64, n: u64) -> u64 {
    let low7 = x & (ONES * 127);
    (ONES * (127 + n)).wrapping_sub(low7) & !x & low7.wrapping_add(ONES * (127 - m)) & HIGHS
}

/// The high bit of each byte of `x` that is `b` (exact for the question "is there one").
const fn has_byte(x: u64, b: u64) -> u64 {
    let y = x ^ (ONES * b);
    y.wrapping_sub(ONES) & !y & HIGHS
}

/// Lowercase letters, and `-`, `.` and digits (0x2d-0x39 but `/`): all tokens.
#[inline(always)]
fn plain_name(name: &[u8]) -> bool {
    !name.is_empty()
        && all_words(name, |w| {
            between(w, b'a' as u64 - 1, b'z' as u64 + 1)
                | between(w, b'-' as u64 - 1, b'9' as u64 + 1)
                == HIGHS
                && has_byte(w, b'/' as u64) == 0
        })
}

#[inline(always)]
fn plain_value(value: &[u8]) -> bool {
    all_words(value, |w| {
        w.wrapping_sub(ONES * 0x20) & !w & HIGHS | has_byte(w, 0x7f) == 0
    })
}

/// [`check`] for a value added to the values a header has: a pseudo-header has one value.
#[inline]
pub(crate) fn check_add(f: &str, target: Target, name: &str, value: &[u8]) -> Result<(), String> {
    if name.starts_with(':') {
        return Err(format!(
            "{f}(): {} is a pseudo-header, which has one value: set it with replace_… instead",
            shown(name.as_bytes())
        ));
    }
    check(f, target, name, value)
}

/// Checks a list of headers a script gives whole (a map's replacement, a local response's, a
/// callout's): each pair as [`check`] does, and no pseudo-header twice.
pub(crate) fn check_list<'a>(
    f: &str,
    target: Target,
    pairs: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
) -> Result<(), String> {
    for (i, (name, value)) in pairs.clone().enumerate() {
        check(f, target, name, value)?;
        if name.starts_with(':')
            && pairs
                .clone()
                .take(i)
                .any(|(earlier, _)| earlier.eq_ignore_ascii_case(name))
        {
            return Err(format!(
                "{f}(): {} is given twice: a pseudo-header has one value",
                shown(name.as_bytes())
            ));
        }
    }
    Ok(())
}

/// An error when a pair list of `pairs` pairs and `bytes` bytes (encoded) is more than the
/// proxy reads in one piece.
pub(crate) fn check_size(
    f: &str,
    target: Target,
    pairs: usize,
    bytes: usize,
) -> Result<(), String> {
    if pairs <= MAX_PAIRS && bytes <= MAX_PAIR_BYTES {
        return Ok(());
    }
    Err(format!(
        "{f}(): {} would be {pairs} headers, {bytes} bytes: more than the proxy takes in one \
         piece ({MAX_PAIRS} headers, {MAX_PAIR_BYTES} bytes; it would drop them all)",
        target.what()
    ))
}

/// Whether `name` frames a message's body: a callout's body is framed by the proxy, and a
/// script's `transfer-encoding: chunked` let the target read a second request from the body
/// (measured in Envoy 1.40).
pub(crate) fn is_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

/// Why [`check`] refused a header.
#[cold]
fn refuse(f: &str, target: Target, name: &str, value: &[u8]) -> Result<(), String> {
    let name_bytes = name.as_bytes();
    let pseudo = name_bytes.first() == Some(&b':');
    if name_bytes.is_empty() {
        return Err(format!("{f}(): a header name may not be empty"));
    }
    let bare = if pseudo {
        name_bytes.get(1..).unwrap_or_default()
    } else {
        name_bytes
    };
    if !all(bare, TOKEN) {
        return Err(format!(
            "{f}(): header name {} is not a valid HTTP field name (letters, digits and \
             !#$%&'*+-.^_`|~ only)",
            shown(name_bytes)
        ));
    }
    if pseudo {
        let allowed = target.pseudo_headers();
        let Some(known) = Pseudo::of(name).filter(|p| allowed.contains(p)) else {
            let only = if allowed.is_empty() {
                "they have none".to_string()
            } else {
                let names: Vec<&str> = allowed.iter().map(|p| p.name()).collect();
                format!("only {}", names.join(", "))
            };
            return Err(format!(
                "{f}(): {} is not a pseudo-header of {} ({only})",
                shown(name_bytes),
                target.what()
            ));
        };
        if let Some(rule) = known.value_error(value) {
            return Err(format!("{f}(): the value of {} {rule}", known.name()));
        }
    }
    if let Some((at, &bad)) = value
        .iter()
        .enumerate()
        .find(|(_, &b)| CLASSES[b as usize] & VALUE == 0)
    {
        let byte = match bad {
            b'\r' => "a CR".to_string(),
            b'\n' => "an LF".to_string(),
            0 => "a NUL".to_string(),
            other => format!("byte 0x{other:02x}"),
        };
        return Err(format!(
            "{f}(): the value of header {} has {byte} at {at}: a header value may hold no \
             control character but tab",
            shown(name_bytes)
        ));
    }
    if target == Target::Callout && is_framing(name) {
        return Err(format!(
            "{f}(): a callout may not set {}: the proxy frames its body itself",
            shown(name_bytes)
        ));
    }
    Ok(())
}

/// A name (or any bytes) for a message: quoted, control characters escaped (a CR LF must not
/// reach the log as such), at most 64 characters.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::from("\"");
    for (i, c) in text.chars().enumerate() {
        if i == 64 {
            out.push('…');
            break;
        }
        let _ = write!(out, "{}", c.escape_debug());
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(target: Target, name: &str, value: &str) -> bool {
        check("f", target, name, value.as_bytes()).is_ok()
    }

    #[test]
    fn names_are_tokens_and_values_have_no_controls_but_tab() {
        assert!(ok(Target::Request, "x-a", "v\tw é"));
        assert!(ok(Target::Request, "X-Upper_!#$%&'*+.^`|~9", ""));
        for bad in ["", "x y", "x\r\nevil", "x:y", "é", "(x)"] {
            assert!(!ok(Target::Request, bad, "v"), "{bad:?}");
        }
        for bad in ["a\r\nb", "a\nb", "a\0b", "a\x7fb", "a\x01b"] {
            assert!(!ok(Target::Response, "x-a", bad), "{bad:?}");
        }
        let e = check("add_response_header", Target::Response, "x\r\nevil", b"1").unwrap_err();
        assert_eq!(
            e,
            "add_response_header(): header name \"x\\r\\nevil\" is not a valid HTTP field name \
             (letters, digits and !#$%&'*+-.^_`|~ only)"
        );
        assert!(!e.contains('\r') && !e.contains('\n'));
        let e = check("f", Target::Response, "location", b"/a\r\nx: 1").unwrap_err();
        assert!(e.contains("\"location\" has a CR at 2"), "{e}");
    }

    #[test]
    fn the_word_at_a_time_checks_agree_with_the_table_for_every_byte() {
        for b in 0..=255u8 {
            for len in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17] {
                for at in 0..len {
                    let mut bytes = vec![b'x'; len];
                    bytes[at] = b;
                    let plain = plain_name(&bytes);
                    let lower_token =
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
                    assert_eq!(plain, lower_token, "name byte {b:#x} at {at} of {len}");
                    let value_ok = CLASSES[b as usize] & VALUE != 0;
                    // Tab is left to the slow way, which takes it.
                    assert_eq!(
                        plain_value(&bytes),
                        value_ok && b != b'\t',
                        "value byte {b:#x}"
                    );
                }
            }
        }
        assert!(!plain_name(b""));
        assert!(plain_value(b""));
    }

    #[test]
    fn pseudo_headers_only_where_they_belong_with_values_that_fit() {
        assert!(ok(Target::Request, ":method", "PATCH"));
        assert!(ok(Target::Request, ":Path", "/a?b=%20c"));
        assert!(ok(Target::Request, ":authority", "example.com:8080"));
        assert!(ok(
            Target::Callout,
            ":authority",
            "outbound|8080||svc.ns.svc.cluster.local"
        ));
        assert!(ok(Target::Callout, ":scheme", "https"));
        assert!(ok(Target::Response, ":status", "404"));
        for (target, name, value) in [
            (Target::Request, ":method", "GET POST"),
            (Target::Request, ":method", ""),
            (Target::Request, ":path", "/a b"),
            (Target::Request, ":path", ""),
            (Target::Request, ":authority", "a b"),
            (Target::Request, ":scheme", "1http"),
            (Target::Request, ":status", "200"),
            (Target::Request, ":zz", "x"),
            (Target::Response, ":status", "99"),
            (Target::Response, ":status", "600"),
            (Target::Response, ":status", "2x0"),
            (Target::Response, ":path", "/"),
            (Target::Trailers, ":status", "200"),
            (Target::LocalResponse, ":status", "200"),
            (Target::Callout, "content-length", "5"),
            (Target::Callout, "Transfer-Encoding", "chunked"),
        ] {
            assert!(!ok(target, name, value), "{target:?} {name} {value:?}");
        }
        assert!(ok(Target::Request, "content-length", "5"));
        assert!(check_add("f", Target::Request, ":path", b"/").is_err());
        assert!(check_add("f", Target::Request, "x-a", b"1").is_ok());
    }

    #[test]
    fn lists_have_each_pseudo_header_once_and_fit_the_proxy() {
        let list = |pairs: &'static [(&'static str, &'static str)]| {
            check_list(
                "f",
                Target::Callout,
                pairs.iter().map(|(n, v)| (*n, v.as_bytes())),
            )
        };
        assert!(list(&[
            (":method", "GET"),
            (":path", "/"),
            ("x-a", "1"),
            ("x-a", "2")
        ])
        .is_ok());
        assert!(list(&[(":path", "/"), (":PATH", "/b")]).is_err());
        assert!(list(&[("x-a", "1"), ("x b", "2")]).is_err());
        assert!(check_size("f", Target::Request, MAX_PAIRS, MAX_PAIR_BYTES).is_ok());
        assert!(check_size("f", Target::Request, MAX_PAIRS + 1, 100).is_err());
        assert!(check_size("f", Target::Request, 1, MAX_PAIR_BYTES + 1).is_err());
        assert_eq!(pair_list_bytes(2, 7), 4 + 20 + 7);
    }
}
