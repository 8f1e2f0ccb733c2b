//! Requests, responses, callout answers and outcomes as JSON values: what `proxy-rhai run`
//! reads and prints, and what test scripts write as maps (`#{ path: "/", headers: … }`).
//!
//! Headers are a map (`{"name": "value"}`, a value may be an array of values) or an array of
//! `[name, value]` pairs (order and duplicates kept). Bodies are strings, or arrays of bytes
//! (a Rhai blob). Every field is optional; an unknown field is an error, so a typo never goes
//! unnoticed.

use serde_json::{json, Map, Value};

use crate::emulator::{
    header, Callout, Forwarded, Headers, LogLine, Metadata, Metric, Outcome, RedisCall,
    RedisOutcome, Reply, Request, Response, Tls,
};
use crate::host::{LogLevel, MetricType};

/// The fields a request may have.
pub const REQUEST_FIELDS: &[&str] = &[
    "method",
    "path",
    "authority",
    "headers",
    "body",
    "trailers",
    "chunk_size",
    "chunks",
    "metadata",
    "route_metadata",
    "cluster_metadata",
    "peer_address",
    "tls",
];
/// The fields of a request's `tls` (the connection's TLS as Envoy reports it).
pub const TLS_FIELDS: &[&str] = &[
    "version",
    "sni",
    "peer_certificate_presented",
    "peer_subject",
    "subject",
    "uri_sans",
    "dns_sans",
    "peer_certificate_sha256",
];
/// The fields a response (or a callout answer) may have.
pub const RESPONSE_FIELDS: &[&str] = &[
    "status",
    "headers",
    "body",
    "trailers",
    "chunk_size",
    "chunks",
];

/// A request from its description; defaults: `GET /` for `example.com`, no body.
///
/// ```
/// let r = proxy_rhai::testing::spec::request(&serde_json::json!(
///     {"method": "POST", "path": "/a", "headers": {"x-user": "ann"}, "body": "hi"}
/// )).unwrap();
/// assert_eq!((r.method.as_str(), r.body.as_slice()), ("POST", &b"hi"[..]));
/// ```
pub fn request(value: &Value) -> Result<Request, String> {
    let fields = object("request", value, REQUEST_FIELDS)?;
    let mut r = Request::get("/");
    if let Some(v) = fields.get("method") {
        r.method = text("request.method", v)?;
    }
    if let Some(v) = fields.get("path") {
        r.path = text("request.path", v)?;
    }
    if let Some(v) = fields.get("authority") {
        r.authority = text("request.authority", v)?;
    }
    if let Some(v) = fields.get("headers") {
        r.headers = headers("request.headers", v)?;
    }
    if let Some(v) = fields.get("body") {
        r.body = body("request.body", v)?;
    }
    if let Some(v) = fields.get("trailers") {
        r.trailers = headers("request.trailers", v)?;
    }
    if let Some(v) = fields.get("chunk_size") {
        r.chunk_size = chunk_size("request.chunk_size", v)?;
    }
    if let Some(v) = fields.get("chunks") {
        (r.body, r.chunk_sizes) = chunks("request", fields, v)?;
    }
    for (name, into) in [
        ("metadata", &mut r.metadata),
        ("route_metadata", &mut r.route_metadata),
        ("cluster_metadata", &mut r.cluster_metadata),
    ] {
        if let Some(v) = fields.get(name) {
            *into = metadata(&format!("request.{name}"), v)?;
        }
    }
    if let Some(v) = fields.get("peer_address") {
        r.peer_address = text("request.peer_address", v)?;
    }
    if let Some(v) = fields.get("tls") {
        r.tls = tls(v)?;
    }
    Ok(r)
}

/// Metadata by namespace: `{"namespace": {…}, …}`, each namespace's value a map.
pub fn metadata(what: &str, value: &Value) -> Result<Metadata, String> {
    let Value::Object(namespaces) = value else {
        return Err(format!("{what} must be a map of namespaces, got {value}"));
    };
    namespaces
        .iter()
        .map(|(name, fields)| match fields {
            Value::Object(fields) => Ok((name.clone(), fields.clone())),
            other => Err(format!("{what}.{name} must be a map, got {other}")),
        })
        .collect()
}

/// A connection's TLS: `null` for plain HTTP, else a map of [`TLS_FIELDS`] (defaults: TLS 1.3,
/// no client certificate; `peer_certificate_presented` defaults to whether a client subject,
/// SAN or digest is given).
pub fn tls(value: &Value) -> Result<Option<Tls>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let fields = object("request.tls", value, TLS_FIELDS)?;
    let mut t = Tls::default();
    for (name, into) in [
        ("version", &mut t.version),
        ("sni", &mut t.sni),
        ("peer_subject", &mut t.peer_subject),
        ("subject", &mut t.subject),
        ("peer_certificate_sha256", &mut t.peer_certificate_sha256),
    ] {
        if let Some(v) = fields.get(name) {
            *into = text(&format!("request.tls.{name}"), v)?;
        }
    }
    for (name, into) in [("uri_sans", &mut t.uri_sans), ("dns_sans", &mut t.dns_sans)] {
        match fields.get(name) {
            None => {}
            Some(Value::Array(items)) => {
                *into = items
                    .iter()
                    .map(|v| text(&format!("request.tls.{name}"), v))
                    .collect::<Result<_, _>>()?;
            }
            Some(other) => {
                return Err(format!("request.tls.{name} must be an array, got {other}"));
            }
        }
    }
    t.peer_certificate_presented = match fields.get("peer_certificate_presented") {
        None => {
            !(t.peer_subject.is_empty()
                && t.uri_sans.is_empty()
                && t.dns_sans.is_empty()
                && t.peer_certificate_sha256.is_empty())
        }
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "request.tls.peer_certificate_presented must be a bool, got {other}"
            ))
        }
    };
    Ok(Some(t))
}

/// An upstream response from its description; defaults: 200, no headers, no body.
pub fn response(value: &Value) -> Result<Response, String> {
    let fields = object("response", value, RESPONSE_FIELDS)?;
    let mut r = Response::new(200, Vec::new());
    if let Some(v) = fields.get("status") {
        r.status = status("response.status", v)?;
    }
    if let Some(v) = fields.get("headers") {
        r.headers = headers("response.headers", v)?;
    }
    if let Some(v) = fields.get("body") {
        r.body = body("response.body", v)?;
    }
    if let Some(v) = fields.get("trailers") {
        r.trailers = headers("response.trailers", v)?;
    }
    if let Some(v) = fields.get("chunk_size") {
        r.chunk_size = chunk_size("response.chunk_size", v)?;
    }
    if let Some(v) = fields.get("chunks") {
        (r.body, r.chunk_sizes) = chunks("response", fields, v)?;
    }
    Ok(r)
}

/// A callout answer: `{"status", "headers", "body"}` (status defaults to 200), or a failure
/// named as the callback's `failure` names it: `null` or `"timeout"` for no answer in time
/// (Envoy's 504), `"connect_failure"` for a target that can't be reached and `"reset"` for one
/// that closes the connection before answering (Envoy's 503s), `"failure"` for a call that
/// fails with no response (status 0).
pub fn reply(value: &Value) -> Result<Reply, String> {
    match value {
        Value::Null => Ok(Reply::NoAnswer),
        Value::String(s) if s == "timeout" => Ok(Reply::NoAnswer),
        Value::String(s) if s == "connect_failure" => Ok(Reply::ConnectFailure),
        Value::String(s) if s == "reset" => Ok(Reply::Reset),
        Value::String(s) if s == "failure" => Ok(Reply::Failure),
        Value::Object(_) => {
            let fields = object("answer", value, &["status", "headers", "body"])?;
            Ok(Reply::Answer {
                status: match fields.get("status") {
                    Some(v) => status("answer.status", v)?,
                    None => 200,
                },
                headers: match fields.get("headers") {
                    Some(v) => headers("answer.headers", v)?,
                    None => Vec::new(),
                },
                body: match fields.get("body") {
                    Some(v) => body("answer.body", v)?,
                    None => Vec::new(),
                },
            })
        }
        other => Err(format!(
            "a callout answer is a map (status, headers, body), () or \"timeout\" for no answer, \
             or \"reset\"; got {other}"
        )),
    }
}

/// The request as it reached the upstream: `method`, `path`, `authority` (from the
/// pseudo-headers), `headers`, `body`, `trailers`.
pub fn forwarded(request: &Forwarded) -> Value {
    json!({
        "method": header(&request.headers, ":method"),
        "path": header(&request.headers, ":path"),
        "authority": header(&request.headers, ":authority"),
        "headers": pairs(&request.headers),
        "body": lossy(&request.body),
        "chunks": pieces(&request.chunks),
        "trailers": pairs(&request.trailers),
    })
}

/// A callout the script made: `cluster`, `method`, `path`, `authority`, `headers`, `body`,
/// `timeout_ms`.
pub fn callout(call: &Callout) -> Value {
    json!({
        "cluster": call.cluster,
        "method": header(&call.headers, ":method"),
        "path": header(&call.headers, ":path"),
        "authority": header(&call.headers, ":authority"),
        "headers": pairs(&call.headers),
        "body": lossy(&call.body),
        "timeout_ms": u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX),
    })
}

/// A Redis command the script sent: `cluster`, `command` (its arguments), and how it ended:
/// `reply` (the reply as Redis sent it, RESP) or `failure` (`"timeout"`, or why the connection
/// failed).
pub fn redis_call(call: &RedisCall) -> Value {
    let (reply, failure) = match &call.outcome {
        RedisOutcome::Reply(bytes) => (json!(lossy(bytes)), Value::Null),
        RedisOutcome::Timeout => (Value::Null, json!("timeout")),
        RedisOutcome::Failed(why) => (Value::Null, json!(why)),
    };
    json!({
        "cluster": call.cluster,
        "command": call.command,
        "reply": reply,
        "failure": failure,
    })
}

/// Everything a request did, as JSON: `upstream` (see [`forwarded`]; null when the request
/// never got there), `response`, `callouts` (see [`callout`]), `redis_calls` (see
/// [`redis_call`]), `log`, `errors` (the script
/// errors), `stalled` (or null), `filter_state` (key to value, see [`Outcome::filter_state`]),
/// `route_cache_cleared` and `trace`.
pub fn outcome(outcome: &Outcome) -> Value {
    let upstream = outcome.upstream.as_ref().map(forwarded);
    let r = &outcome.response;
    let callouts: Vec<Value> = outcome.callouts.iter().map(callout).collect();
    let log: Vec<Value> = outcome.log.iter().map(log_line).collect();
    json!({
        "upstream": upstream,
        "response": {
            "status": r.status,
            "headers": pairs(&r.headers),
            "body": lossy(&r.body),
            "chunks": pieces(&r.chunks),
            "local": r.local,
            "reset": r.reset,
        },
        "callouts": callouts,
        "redis_calls": outcome.redis_calls.iter().map(redis_call).collect::<Vec<Value>>(),
        "log": log,
        "errors": outcome.script_errors(),
        "stalled": outcome.stalled,
        "filter_state": outcome
            .filter_state
            .iter()
            .map(|(k, v)| (k.clone(), json!(lossy(v))))
            .collect::<Map<String, Value>>(),
        "context": outcome
            .context
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<Map<String, Value>>(),
        "events": outcome
            .events
            .iter()
            .map(|(event, at)| json!({"event": event, "at": at}))
            .collect::<Vec<Value>>(),
        "route_cache_cleared": outcome.route_cache_cleared,
        "trace": outcome.trace,
    })
}

/// A log line: `{"level", "message"}`.
pub fn log_line(line: &LogLine) -> Value {
    json!({"level": level_name(line.level), "message": line.message})
}

/// A metric's value: a counter's or gauge's number, a histogram's recorded values.
pub fn metric_value(metric: &Metric) -> Value {
    match metric.kind {
        MetricType::Histogram => json!(metric.recorded),
        _ => json!(metric.value),
    }
}

/// Whether a callout's `:path` matches `pattern`: equal, or starting with what comes before a
/// final `*`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == pattern,
    }
}

/// The name of a log level as scripts write it (`log_info` → `info`).
pub fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
    }
}

/// Headers as `[name, value]` pairs, values as text.
pub fn pairs(headers: &Headers) -> Value {
    headers.iter().map(|(k, v)| json!([k, lossy(v)])).collect()
}

/// A body as it went on, piece by piece.
fn pieces(chunks: &[Vec<u8>]) -> Value {
    chunks.iter().map(|c| json!(lossy(c))).collect()
}

/// A body given as its chunks (strings or byte arrays): the body, and the chunks' sizes.
fn chunks(
    what: &str,
    fields: &Map<String, Value>,
    value: &Value,
) -> Result<(Vec<u8>, Vec<usize>), String> {
    if fields.contains_key("body") {
        return Err(format!("{what}: give `body` or `chunks`, not both"));
    }
    let Value::Array(items) = value else {
        return Err(format!(
            "{what}.chunks must be an array of bodies, got {value}"
        ));
    };
    let mut all = Vec::new();
    let mut sizes = Vec::with_capacity(items.len());
    for item in items {
        let chunk = body(&format!("{what}.chunks"), item)?;
        sizes.push(chunk.len());
        all.extend(chunk);
    }
    Ok((all, sizes))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn object<'a>(
    what: &str,
    value: &'a Value,
    known: &[&str],
) -> Result<&'a Map<String, Value>, String> {
    match value {
        Value::Object(fields) => {
            if let Some(bad) = fields.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(format!(
                    "{what}: unknown field `{bad}` (known: {})",
                    known.join(", ")
                ));
            }
            Ok(fields)
        }
        other => Err(format!("{what} must be a map, got {other}")),
    }
}

fn text(what: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("{what} must be a string, got {other}")),
    }
}

fn status(what: &str, value: &Value) -> Result<u32, String> {
    value
        .as_u64()
        .filter(|s| (100..=999).contains(s))
        .map(|s| s as u32)
        .ok_or_else(|| format!("{what} must be an HTTP status (100..=999), got {value}"))
}

fn chunk_size(what: &str, value: &Value) -> Result<usize, String> {
    value
        .as_u64()
        .filter(|s| *s > 0)
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| format!("{what} must be a positive number of bytes, got {value}"))
}

fn body(what: &str, value: &Value) -> Result<Vec<u8>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Array(items) => items
            .iter()
            .map(|b| {
                b.as_u64()
                    .and_then(|b| u8::try_from(b).ok())
                    .ok_or_else(|| format!("{what}: {b} is not a byte"))
            })
            .collect(),
        other => Err(format!("{what} must be a string or bytes, got {other}")),
    }
}

fn headers(what: &str, value: &Value) -> Result<Headers, String> {
    let mut out = Headers::new();
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (name, v) in map {
                match v {
                    Value::Array(values) => {
                        for v in values {
                            out.push((name.to_ascii_lowercase(), header_value(what, v)?));
                        }
                    }
                    v => out.push((name.to_ascii_lowercase(), header_value(what, v)?)),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item.as_array().map(Vec::as_slice) {
                    Some([Value::String(name), v]) => {
                        out.push((name.to_ascii_lowercase(), header_value(what, v)?))
                    }
                    _ => {
                        return Err(format!(
                            "{what}: each header must be a [name, value] pair, got {item}"
                        ))
                    }
                }
            }
        }
        other => {
            return Err(format!(
                "{what} must be a map or an array of [name, value] pairs, got {other}"
            ))
        }
    }
    Ok(out)
}

fn header_value(what: &str, value: &Value) -> Result<Vec<u8>, String> {
    match value {
        Value::Array(_) => body(what, value),
        v => Ok(text(what, v)?.into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_defaults_and_refuse_unknown_fields() {
        let r = request(&json!({})).unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/"));
        let e = request(&json!({"heders": {}})).unwrap_err();
        assert!(e.contains("unknown field `heders`"), "{e}");
        let r =
            request(&json!({"headers": [["X-A", "1"], ["x-a", 2]], "body": [104, 105]})).unwrap();
        assert_eq!(
            r.headers,
            vec![("x-a".into(), b"1".to_vec()), ("x-a".into(), b"2".to_vec())]
        );
        assert_eq!(r.body, b"hi");
        assert!(request(&json!({"body": [300]})).is_err());
    }

    #[test]
    fn replies_cover_answers_timeouts_and_resets() {
        assert_eq!(reply(&Value::Null).unwrap(), Reply::NoAnswer);
        assert_eq!(reply(&json!("timeout")).unwrap(), Reply::NoAnswer);
        assert_eq!(reply(&json!("reset")).unwrap(), Reply::Reset);
        assert_eq!(
            reply(&json!("connect_failure")).unwrap(),
            Reply::ConnectFailure
        );
        assert_eq!(
            reply(&json!({"body": "x"})).unwrap(),
            Reply::Answer {
                status: 200,
                headers: vec![],
                body: b"x".to_vec()
            }
        );
        assert!(reply(&json!(5)).is_err());
        assert!(reply(&json!({"status": 42})).is_err());
    }
}
