//! The loopback upstream: an HTTP/1.1 echo server whose path chooses its behaviour, and
//! [`Echo`], its answer read back.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::wire::{bad, find, find_all, read_body, read_headers, read_line};

/// Longest a `/barrier/...` request waits for the others.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(20);

/// `n` bytes of the pattern the upstream serves: `abc…xyzabc…`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// An HTTP/1.1 server on 127.0.0.1 (a thread per connection, keep-alive) that answers with
/// what it received, as JSON ([`Echo`]), unless the path asks for something else:
///
/// | path | answer |
/// | --- | --- |
/// | `/status/NNN` | status NNN, the echo as body |
/// | `/bytes/N` | N bytes of [`pattern`], with content-length |
/// | `/chunks/K/N` | K chunks of N bytes each (the pattern, continued), chunked encoding |
/// | `/json` | `{"fixed":"json","n":1}` |
/// | `/gzip-json`, `/br-json` | [`GZIP_JSON`] compressed, `content-encoding: gzip` or `br`, whatever the request's `accept-encoding` |
/// | `/delay/MS` | the echo, after MS milliseconds (at most 10 s) |
/// | `/headers?a=1&b=2&a=3` | the echo, with those response headers (in that order) |
/// | `/token` | 200, `x-token: abc`, `{"token":"abc"}` (a callout target) |
/// | `/barrier/NAME/N` | the echo, once N requests of that NAME have arrived (at most 20 s); the echo's `barrier` says `reached` or `timeout`; with `?then=NAME2`, then once N have arrived at NAME2 too |
/// | `/trailers?a=1&b=2` | the echo in chunked encoding, with those trailers |
///
/// A request's trailers (chunked encoding) are in the echo's `trailers`, as pairs.
///
/// Every other path: 200 and the echo. The server stops when dropped (open connections end
/// when their peer closes them).
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<ServerState>,
}

#[derive(Default)]
struct ServerState {
    stop: AtomicBool,
    /// Request targets received, in order.
    received: Mutex<Vec<String>>,
    barriers: Mutex<HashMap<String, usize>>,
    barrier_moved: Condvar,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream on 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState::default());
        let s = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                thread::spawn(move || {
                    let _ = serve_connection(conn, &s);
                });
            }
        });
        Upstream { addr, state }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Request targets (path and query) received so far, in arrival order.
    pub fn received(&self) -> Vec<String> {
        self.state.received.lock().unwrap().clone()
    }

    /// How many requests for exactly `target` arrived.
    pub fn hits(&self, target: &str) -> usize {
        self.received().iter().filter(|t| *t == target).count()
    }

    /// Most requests ever being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let line = loop {
        match read_line(r)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue, // stray CRLF between requests
            Some(l) => break l,
        }
    };
    let line = String::from_utf8_lossy(&line).into_owned();
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(bad(format!("bad request line {line:?}")));
    };
    let headers = read_headers(r)?;
    let mut trailers = Vec::new();
    let body = read_body(r, &headers, false, &mut trailers)?;
    Ok(Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body,
        trailers,
    }))
}

fn serve_connection(conn: TcpStream, state: &ServerState) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    while let Some(req) = read_request(&mut reader)? {
        state.received.lock().unwrap().push(req.target.clone());
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let result = answer(&req, state, &mut writer);
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        result?;
        if find(&req.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
    Ok(())
}

fn echo_json(req: &Request, extra: Option<(&str, Value)>) -> Vec<u8> {
    let headers: Vec<Value> = req.headers.iter().map(|(n, v)| json!([n, v])).collect();
    let mut echo = json!({
        "method": req.method,
        "path": req.target,
        "headers": headers,
        "body": String::from_utf8_lossy(&req.body),
        "body_len": req.body.len(),
    });
    if !req.trailers.is_empty() {
        let trailers: Vec<Value> = req.trailers.iter().map(|(n, v)| json!([n, v])).collect();
        echo["trailers"] = json!(trailers);
    }
    if let Some((k, v)) = extra {
        echo[k] = v;
    }
    serde_json::to_vec(&echo).unwrap()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        418 => "I'm a teapot",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_response(
    w: &mut impl Write,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        let _ = write!(head, "{n}: {v}\r\n");
    }
    let _ = write!(head, "content-length: {}\r\n\r\n", body.len());
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Minimal percent-decoding for `/headers?...` (`+` stays `+`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(req: &Request, state: &ServerState, w: &mut TcpStream) -> io::Result<()> {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let json_type = || vec![("content-type".to_string(), "application/json".to_string())];
    match segments.as_slice() {
        ["status", code] => {
            let status = code.parse().unwrap_or(400);
            write_response(w, status, &json_type(), &echo_json(req, None))
        }
        ["bytes", n] => {
            let n = n.parse().unwrap_or(0);
            let headers = vec![(
                "content-type".to_string(),
                "application/octet-stream".to_string(),
            )];
            write_response(w, 200, &headers, &pattern(n))
        }
        ["chunks", k, n] => {
            let (k, n): (usize, usize) = (k.parse().unwrap_or(0), n.parse().unwrap_or(0));
            let all = pattern(k * n);
            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")?;
            for chunk in all.chunks(n.max(1)) {
                w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                w.write_all(chunk)?;
                w.write_all(b"\r\n")?;
                w.flush()?;
            }
            w.write_all(b"0\r\n\r\n")?;
            w.flush()
        }
        ["json"] => write_response(w, 200, &json_type(), br#"{"fixed":"json","n":1}"#),
        [coded @ ("gzip-json" | "br-json")] => {
            let (coding, body) = match *coded {
                "gzip-json" => ("gzip", gzip(GZIP_JSON.as_bytes())),
                _ => ("br", brotli(GZIP_JSON.as_bytes())),
            };
            let mut headers = json_type();
            headers.push(("content-encoding".to_string(), coding.to_string()));
            write_response(w, 200, &headers, &body)
        }
        ["trailers"] => {
            let body = echo_json(req, None);
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(b"\r\n0\r\n");
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
                out.extend_from_slice(
                    format!("{}: {}\r\n", percent_decode(n), percent_decode(v)).as_bytes(),
                );
            }
            out.extend_from_slice(b"\r\n");
            w.write_all(&out)?;
            w.flush()
        }
        ["delay", ms] => {
            thread::sleep(Duration::from_millis(
                ms.parse::<u64>().unwrap_or(0).min(10_000),
            ));
            write_response(w, 200, &json_type(), &echo_json(req, None))
        }
        ["headers"] => {
            let mut headers = json_type();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
                headers.push((percent_decode(n), percent_decode(v)));
            }
            write_response(w, 200, &headers, &echo_json(req, None))
        }
        ["token"] => {
            let mut headers = json_type();
            headers.push(("x-token".to_string(), "abc".to_string()));
            write_response(w, 200, &headers, br#"{"token":"abc"}"#)
        }
        ["barrier", name, n] => {
            let n: usize = n.parse().unwrap_or(1);
            let mut reached = meet(state, name, n);
            // `?then=NAME2`: once there, wait at a second barrier too.
            if let Some(then) = query.split('&').find_map(|p| p.strip_prefix("then=")) {
                reached &= meet(state, then, n);
            }
            let outcome = if reached { "reached" } else { "timeout" };
            write_response(
                w,
                200,
                &json_type(),
                &echo_json(req, Some(("barrier", json!(outcome)))),
            )
        }
        _ => write_response(w, 200, &json_type(), &echo_json(req, None)),
    }
}

/// The JSON `/gzip-json` and `/br-json` serve (compressed).
pub const GZIP_JSON: &str =
    r#"{"user":"ann","password":"hunter2","ssn":"123-45-6789","items":[1,2,3]}"#;

/// `data` in the gzip format (RFC 1952), its deflate stream made of stored blocks: real gzip
/// that any decoder reads, without a compression library.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = u8::from(blocks.peek().is_none());
        let len = block.len() as u16;
        out.push(last);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// `data` (1 to 65,536 bytes) in the brotli format (RFC 7932) as one uncompressed meta-block:
/// a window of 2^16 (WBITS: one 0 bit), the meta-block header (ISLAST 0, four nibbles of
/// MLEN-1, ISUNCOMPRESSED 1, padded to a byte), the bytes, then an empty last meta-block.
fn brotli(data: &[u8]) -> Vec<u8> {
    assert!((1..=1 << 16).contains(&data.len()));
    let header = ((data.len() as u32 - 1) << 4) | (1 << 20);
    let mut out = header.to_le_bytes()[..3].to_vec();
    out.extend_from_slice(data);
    out.push(0b11); // ISLAST, ISLASTEMPTY
    out
}

/// CRC-32 (IEEE), bit by bit: the test's bodies are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Counts one more request at barrier `name` and waits until `n` have come (false when
/// [`BARRIER_TIMEOUT`] passes first).
fn meet(state: &ServerState, name: &str, n: usize) -> bool {
    let deadline = Instant::now() + BARRIER_TIMEOUT;
    let mut counts = state.barriers.lock().unwrap();
    *counts.entry(name.to_string()).or_default() += 1;
    state.barrier_moved.notify_all();
    loop {
        if counts[name] >= n {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        counts = state.barrier_moved.wait_timeout(counts, left).unwrap().0;
    }
}

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Echo {
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body, lossy.
    pub body: String,
    pub body_len: usize,
    /// The whole echo, `method` included.
    pub raw: Value,
}

impl Echo {
    /// The echo an upstream answered with, parsed back ([`echo_json`] writes it); `None`
    /// when `v` isn't one.
    pub(super) fn parse(v: Value) -> Option<Echo> {
        let (Some(_method), Some(path), Some(headers), Some(body), Some(body_len)) = (
            v["method"].as_str(),
            v["path"].as_str(),
            v["headers"].as_array(),
            v["body"].as_str(),
            v["body_len"].as_u64(),
        ) else {
            return None;
        };
        let headers = headers
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or("").to_string(),
                    p[1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        Some(Echo {
            path: path.to_string(),
            headers,
            body: body.to_string(),
            body_len: body_len as usize,
            raw: v,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        find_all(&self.headers, name)
    }

    /// Asserts the body's framing is right: a content-length, when there is one, is the
    /// length of the body received.
    pub fn assert_framing(&self) {
        if let Some(len) = self.header("content-length") {
            assert_eq!(
                len.parse::<usize>().ok(),
                Some(self.body_len),
                "upstream got content-length {len} with a body of {} bytes: {self:?}",
                self.body_len
            );
        }
    }
}
