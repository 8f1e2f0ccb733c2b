//! What a gateway script needs beyond the proxy: encodings, hashes, time, random ids.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use rhai::{Blob, Dynamic};
use sha2::{Digest, Sha256};

use super::{
    bytes_of, check_text_len, err, refused, text_within, value_of, Allowed, Registrar, ScriptResult,
};
use crate::host::Host;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn random_bytes<const N: usize>(f: &str) -> ScriptResult<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes)
        .or_else(|e| err(format!("{f}(): no randomness available: {e}")))?;
    Ok(bytes)
}

fn base64_decode(f: &str, text: &str, url_safe: bool) -> ScriptResult<Blob> {
    let text = text.trim();
    let decoded = if url_safe {
        URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
    } else {
        STANDARD.decode(text)
    };
    decoded.or_else(|e| err(format!("{f}(): not valid base64: {e}")))
}

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use Allowed::Anywhere;
    let max_string = reg.engine.max_string_size();

    bind!(
        reg,
        "base64_encode",
        Anywhere,
        "string",
        "Standard base64 (with padding) of a string or blob.",
        r#"fn on_request_headers() {
    add_request_header("authorization", "Basic " + base64_encode("user:secret"));
}"#,
        |_a as f, data: Dynamic| {
            let data = value_of(f, data)?;
            let len = base64::encoded_len(data.as_bytes().len(), true).unwrap_or(usize::MAX);
            check_text_len("base64_encode()", len, max_string)?;
            Ok(STANDARD.encode(data.as_bytes()))
        }
    );
    bind!(reg, "base64_decode", Anywhere, "string", "Decodes standard base64 into a string (invalid UTF-8 replaced); invalid base64 is an error.",
        r#"fn on_request_headers() {
    let auth = get_request_header("authorization") ?? "";
    if auth.starts_with("Basic ") {
        let user = base64_decode(auth.sub_string(6)).split(":")[0];
        add_request_header("x-user", user);
    }
}"#,
        |_a as f, text: &str| text_within("base64_decode()", base64_decode(f, text, false)?, max_string));
    bind!(
        reg,
        "base64_decode_bytes",
        Anywhere,
        "blob",
        "Decodes standard base64 into bytes.",
        r#"fn on_request_headers() {
    let key = base64_decode_bytes(get_request_header("x-key") ?? "");
    if key.len() != 32 { send_http_response(400, [], "x-key must be 32 bytes"); }
}"#,
        |_a as f, text: &str| base64_decode(f, text, false)
    );
    bind!(
        reg,
        "base64url_encode",
        Anywhere,
        "string",
        "URL-safe base64 without padding (as in JWTs).",
        r#"fn on_request_headers() {
    add_request_header("x-state", base64url_encode(to_json(#{ path: get_request_header(":path") })));
}"#,
        |_a as f, data: Dynamic| {
            let data = value_of(f, data)?;
            let len = base64::encoded_len(data.as_bytes().len(), false).unwrap_or(usize::MAX);
            check_text_len("base64url_encode()", len, max_string)?;
            Ok(URL_SAFE_NO_PAD.encode(data.as_bytes()))
        }
    );
    bind!(
        reg,
        "base64url_decode",
        Anywhere,
        "string",
        "Decodes URL-safe base64 (padding optional) into a string.",
        r#"fn on_request_headers() {
    let jwt = get_request_header("authorization") ?? "";
    let parts = jwt.split(".");
    if parts.len() == 3 { log_info(base64url_decode(parts[1])); }
}"#,
        |_a as f, text: &str| text_within(
            "base64url_decode()",
            base64_decode(f, text, true)?,
            max_string
        )
    );
    bind!(
        reg,
        "base64url_decode_bytes",
        Anywhere,
        "blob",
        "Decodes URL-safe base64 into bytes.",
        r#"fn on_request_headers() {
    let sig = base64url_decode_bytes(get_request_header("x-signature") ?? "");
    log_debug(`signature of ${sig.len()} bytes`);
}"#,
        |_a as f, text: &str| base64_decode(f, text, true)
    );
    bind!(reg, "url_encode", Anywhere, "string", "Percent-encodes every byte but ASCII letters and digits (for a query value or a path segment).",
        r#"fn on_request_headers() {
    let user = get_request_header("x-user") ?? "";
    http_get("users", "/lookup?name=" + url_encode(user), [], 500, |status, headers, body| {});
}"#,
        |_a, text: &str| {
            // Each byte but a letter or a digit becomes three (`%2F`).
            let escaped = text.bytes().filter(|b| !b.is_ascii_alphanumeric()).count();
            let len = text.len().saturating_add(escaped.saturating_mul(2));
            check_text_len("url_encode()", len, max_string)?;
            let mut out = String::with_capacity(len);
            out.extend(utf8_percent_encode(text, NON_ALPHANUMERIC));
            Ok(out)
        });
    bind!(
        reg,
        "url_decode",
        Anywhere,
        "string",
        "Decodes percent-encoding (`+` stays `+`); invalid UTF-8 is replaced.",
        r#"fn on_request_headers() {
    let path = url_decode(get_request_header(":path"));
    if path.contains("..") { send_http_response(400, [], "bad path"); }
}"#,
        |_a, text: &str| Ok(percent_decode_str(text).decode_utf8_lossy().into_owned())
    );
    bind!(
        reg,
        "hex_encode",
        Anywhere,
        "string",
        "Lowercase hex of a string or blob.",
        r#"fn on_request_headers() {
    add_request_header("x-user-hex", hex_encode(get_request_header("x-user") ?? ""));
}"#,
        |_a as f, data: Dynamic| {
            let data = value_of(f, data)?;
            check_text_len(
                "hex_encode()",
                data.as_bytes().len().saturating_mul(2),
                max_string,
            )?;
            Ok(hex(data.as_bytes()))
        }
    );
    bind!(
        reg,
        "sha256",
        Anywhere,
        "string",
        "SHA-256 of a string or blob, as lowercase hex.",
        r#"fn on_request_body() {
    log_info(`body sha256: ${sha256(get_request_body_bytes())}`);
}"#,
        |_a as f, data: Dynamic| Ok(hex(&Sha256::digest(bytes_of(f, &data)?)))
    );
    bind!(
        reg,
        "sha256_bytes",
        Anywhere,
        "blob",
        "SHA-256 of a string or blob, as 32 bytes.",
        r#"fn on_request_body() {
    set_context("digest", "sha-256=" + base64_encode(sha256_bytes(get_request_body_bytes())));
}"#,
        |_a as f, data: Dynamic| Ok(Sha256::digest(bytes_of(f, &data)?).to_vec())
    );
    bind!(
        reg,
        "hmac_sha256",
        Anywhere,
        "string",
        "HMAC-SHA256 of `data` with `key` (strings or blobs), as lowercase hex.",
        r#"fn on_request_headers() {
    let expected = hmac_sha256(config().secret, get_request_header(":path"));
    if get_request_header("x-signature") != expected { send_http_response(401, [], "bad signature"); }
}"#,
        |_a as f, key: Dynamic, data: Dynamic| Ok(hex(&hmac_sha256(
            &bytes_of(f, &key)?,
            &bytes_of(f, &data)?
        )))
    );
    bind!(
        reg,
        "hmac_sha256_bytes",
        Anywhere,
        "blob",
        "HMAC-SHA256 of `data` with `key`, as 32 bytes (e.g. for `base64_encode`).",
        r#"fn on_request_headers() {
    let mac = hmac_sha256_bytes(config().secret, get_request_header(":path"));
    add_request_header("x-signature", base64url_encode(mac));
}"#,
        |_a as f, key: Dynamic, data: Dynamic| Ok(hmac_sha256(
            &bytes_of(f, &key)?,
            &bytes_of(f, &data)?
        ))
    );
    bind!(
        reg,
        "now_ms",
        Anywhere,
        "int",
        "The proxy's clock: milliseconds since the Unix epoch.",
        r#"fn on_response_headers() {
    add_response_header("x-served-at", now_ms().to_string());
}"#,
        |a as f| a
            .host
            .current_time_nanos()
            .map(|n| (n / 1_000_000) as i64)
            .or_else(|s| refused(f, s))
    );
    bind!(
        reg,
        "now_nanos",
        Anywhere,
        "int",
        "The proxy's clock: nanoseconds since the Unix epoch.",
        r#"fn on_request_headers() {
    set_context("t0", now_nanos());
}
fn on_response_headers() {
    add_response_header("x-script-ns", (now_nanos() - get_context("t0")).to_string());
}"#,
        |a as f| a
            .host
            .current_time_nanos()
            .map(|n| n as i64)
            .or_else(|s| refused(f, s))
    );
    bind!(
        reg,
        "random_id",
        Anywhere,
        "string",
        "128 random bits as 32 lowercase hex digits (a trace or request id).",
        r#"fn on_request_headers() {
    if get_request_header("x-trace-id") == () { add_request_header("x-trace-id", random_id()); }
}"#,
        |_a as f| Ok(hex(&random_bytes::<16>(f)?))
    );
    bind!(
        reg,
        "uuid_v4",
        Anywhere,
        "string",
        "A random (version 4) UUID, e.g. `2f1c6b1e-8d0a-4c55-9f3e-0b6b5d7e2a41`.",
        r#"fn on_request_headers() {
    // Envoy already gives every request an `x-request-id`; a second id for another system:
    add_request_header("x-correlation-id", uuid_v4());
}"#,
        |_a as f| {
            let mut b = random_bytes::<16>(f)?;
            b[6] = (b[6] & 0x0f) | 0x40;
            b[8] = (b[8] & 0x3f) | 0x80;
            let h = hex(&b);
            Ok(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
    );
    bind!(
        reg,
        "random_int",
        Anywhere,
        "int",
        "A uniformly random integer in `min..=max` (e.g. for sampling).",
        r#"fn on_request_headers() {
    // Send 10% of the traffic to the canary.
    if random_int(1, 100) <= 10 { add_request_header("x-canary", "true"); }
}"#,
        |_a as f, min: i64, max: i64| {
            if min > max {
                return err(format!("random_int(): min {min} is above max {max}"));
            }
            let span = (max as i128 - min as i128 + 1) as u128;
            let draw = u128::from(u64::from_le_bytes(random_bytes::<8>(f)?));
            Ok((min as i128 + (draw % span) as i128) as i64)
        }
    );
}
