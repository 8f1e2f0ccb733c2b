//! End-to-end harness: the plugin in a real Envoy, an echo upstream, a small HTTP/1.1 client.
//!
//! std and serde_json only. Everything listens on 127.0.0.1 port 0 (the OS chooses), so test
//! threads and parallel runs never collide; every wait is bounded.
//!
//! - [`wasm_path`]: the plugin build (`PROXY_RHAI_WASM` overrides).
//! - [`Upstream`]: an HTTP/1.1 echo server with a few behaviours chosen by path.
//! - [`Envoy`] / [`EnvoyBuilder`]: a real Envoy with the plugin as its HTTP filter, an
//!   `upstream` cluster (the route's target) and a `callout` cluster (a second echo server);
//!   options add clusters, named routes (for `xds.route_name`), more workers
//!   (`--concurrency`), HTTP/1.1 trailers, or take the filter as text (e.g. what `proxy-rhai
//!   deploy envoy` prints, then read by Envoy as YAML).
//! - [`Reply`] / [`Echo`]: what the client got, and what the upstream saw.
//!
//! # A configuration the plugin refuses (measured with Envoy 1.40, V8)
//!
//! When `on_configure` returns false, **Envoy refuses to start**: with a static configuration it
//! logs, in this order,
//!
//! ```text
//! [error][wasm] wasm log: proxy-rhai: configuration refused: <reason>
//! [error][wasm] Wasm VM failed Failed to configure base Wasm plugin
//! [critical][wasm] Plugin proxy-rhai failed to load
//! [critical][wasm] Plugin configured to fail closed failed to load
//! [critical][main] error `Unable to create Wasm plugin proxy-rhai` initializing config '...'
//! ```
//!
//! and exits with status 1; no listener ever opens, so there is no 500 or 503 to observe. The
//! same happens with the filter's `fail_open: true` (only the "fail closed" line is missing) and
//! with `failure_policy: FAIL_OPEN` (every line as above): neither lets Envoy start without the
//! plugin. [`Envoy::try_start`] returns that log as its error, so a test can assert the refusal.
//!
//! # A VM that fails while serving (same Envoy)
//!
//! A trap (e.g. `Uncaught RuntimeError: unreachable` after a failed allocation, or `memory
//! access out of bounds` after a stack overflow) is logged as
//! `Function: proxy_on_request_headers failed: Uncaught RuntimeError: ...` with an in-VM
//! backtrace; that request and every later one get `503` with an empty body, and the stats
//! count nothing (`wasm.proxy-rhai.vm_reload*` stay 0). So [`Envoy::assert_healthy`] reads the
//! log.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Longest wait for Envoy to compile the plugin and become ready (V8 compiles the wasm in
/// 1–3 s alone; several Envoys starting at once on a small machine share the CPU).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Read/write timeout of every client socket: a stuck exchange fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Envoy writes its log file every this many milliseconds (`--file-flush-interval-msec`).
const LOG_FLUSH_MS: u64 = 20;
/// Longest a `/barrier/...` request waits for the others.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The plugin build
// ---------------------------------------------------------------------------------------------

/// The plugin's wasm: `PROXY_RHAI_WASM` when set, else the release build of this crate.
pub fn wasm_path() -> PathBuf {
    let path = match std::env::var_os("PROXY_RHAI_WASM") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/wasm32-wasip1/release/proxy_rhai.wasm"),
    };
    assert!(
        path.is_file(),
        "the plugin is not built: {} is missing.\n\
         Run `cargo build --release --target wasm32-wasip1 --lib` first \
         (or point PROXY_RHAI_WASM at a build).",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 wire helpers, shared by the server and the client
// ---------------------------------------------------------------------------------------------

/// One line up to `\n`, without the line ending; `None` at a clean end of stream.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(line))
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Header lines up to the empty line: names lowercased, values trimmed (lossy), order kept.
fn read_headers(r: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad("connection closed inside the headers"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("header line without ':'"))?;
        let name = String::from_utf8_lossy(&line[..colon])
            .trim()
            .to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_string();
        headers.push((name, value));
    }
}

fn find_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    find(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// A chunked body; its trailers (names lowercased) go to `trailers`.
fn read_chunked(r: &mut impl BufRead, trailers: &mut Vec<(String, String)>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad("connection closed inside a chunked body"))?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            // Trailer lines up to the empty line (or the end of the connection).
            while let Some(line) = read_line(r)?.filter(|l| !l.is_empty()) {
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some((n, v)) = line.split_once(':') {
                    trailers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        read_line(r)?;
    }
}

/// A body framed by content-length or chunked encoding; else empty (a request) or up to the
/// end of the connection (a response, when `to_close`).
fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
    to_close: bool,
    trailers: &mut Vec<(String, String)>,
) -> io::Result<Vec<u8>> {
    if is_chunked(headers) {
        return read_chunked(r, trailers);
    }
    if let Some(len) = find(headers, "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("body shorter than its content-length {len}: {e}"),
            )
        })?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if to_close {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// The number just before `word` in `text`: "… would be 1025 headers, 1048577 bytes: …".
pub fn number_before(text: &str, word: &str) -> usize {
    let at = text
        .find(word)
        .unwrap_or_else(|| panic!("no {word:?} in {text}"));
    let digits: String = text[..at]
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}

/// `n` bytes of the pattern the upstream serves: `abc…xyzabc…`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// The upstream echo server
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 server on 127.0.0.1 (a thread per connection, keep-alive) that answers with
/// what it received, as JSON ([`Echo`]), unless the path asks for something else:
///
/// | path | answer |
/// | --- | --- |
/// | `/status/NNN` | status NNN, the echo as body |
/// | `/bytes/N` | N bytes of [`pattern`], with content-length |
/// | `/chunks/K/N` | K chunks of N bytes each (the pattern, continued), chunked encoding |
/// | `/json` | `{"fixed":"json","n":1}` |
/// | `/delay/MS` | the echo, after MS milliseconds (at most 10 s) |
/// | `/headers?a=1&b=2&a=3` | the echo, with those response headers (in that order) |
/// | `/token` | 200, `x-token: abc`, `{"token":"abc"}` (a callout target) |
/// | `/barrier/NAME/N` | the echo, once N requests of that NAME have arrived (at most 20 s); the echo's `barrier` says `reached` or `timeout` |
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
            let deadline = Instant::now() + BARRIER_TIMEOUT;
            let mut counts = state.barriers.lock().unwrap();
            *counts.entry(name.to_string()).or_default() += 1;
            state.barrier_moved.notify_all();
            let reached = loop {
                if counts[*name] >= n {
                    break true;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break false;
                }
                counts = state.barrier_moved.wait_timeout(counts, left).unwrap().0;
            };
            drop(counts);
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

// ---------------------------------------------------------------------------------------------
// Replies and echoes
// ---------------------------------------------------------------------------------------------

/// A response as the client got it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Names lowercased, values lossy, order kept, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailers of a chunked response, like `headers`.
    pub trailers: Vec<(String, String)>,
}

impl Reply {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        find_all(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply body is not JSON ({e}): {self:?} {}", self.text()))
    }

    /// The upstream's echo of the request (panics, showing the reply, when it isn't one).
    pub fn echo(&self) -> Echo {
        let v = self.json();
        let (Some(method), Some(path), Some(headers), Some(body), Some(body_len)) = (
            v["method"].as_str(),
            v["path"].as_str(),
            v["headers"].as_array(),
            v["body"].as_str(),
            v["body_len"].as_u64(),
        ) else {
            panic!(
                "reply is not an upstream echo: status {} body {}",
                self.status,
                self.text()
            );
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
        Echo {
            method: method.to_string(),
            path: path.to_string(),
            headers,
            body: body.to_string(),
            body_len: body_len as usize,
            raw: v,
        }
    }
}

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body, lossy.
    pub body: String,
    pub body_len: usize,
    /// The whole echo.
    pub raw: Value,
}

impl Echo {
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

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| io::Error::new(e.kind(), format!("connect to {addr}: {e}")))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads one response (skipping 1xx) from `stream`.
fn read_reply(stream: &TcpStream, head_request: bool) -> io::Result<Reply> {
    let mut r = BufReader::new(stream);
    loop {
        let line = read_line(&mut r)?.ok_or_else(|| bad("connection closed before a response"))?;
        let text = String::from_utf8_lossy(&line).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {text:?}")))?;
        let headers = read_headers(&mut r)?;
        if (100..200).contains(&status) {
            continue;
        }
        let mut trailers = Vec::new();
        let body = if head_request || status == 204 || status == 304 {
            Vec::new()
        } else {
            read_body(&mut r, &headers, true, &mut trailers)?
        };
        return Ok(Reply {
            status,
            headers,
            body,
            trailers,
        });
    }
}

/// Sends what `write` writes on a new connection to `addr` and reads the response.
fn exchange(
    addr: SocketAddr,
    head_request: bool,
    write: impl FnOnce(&mut TcpStream) -> io::Result<()>,
) -> io::Result<Reply> {
    let mut stream = connect(addr)?;
    write(&mut stream)?;
    stream.flush()?;
    read_reply(&stream, head_request)
}

fn request_head(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: Option<usize>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        head.push_str("host: localhost\r\n");
    }
    for (n, v) in headers {
        let _ = write!(head, "{n}: {v}\r\n");
    }
    if let Some(len) = body_len {
        if !has("content-length") && !has("transfer-encoding") {
            let _ = write!(head, "content-length: {len}\r\n");
        }
    }
    head.push_str("\r\n");
    head.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------------------------

/// Options of an Envoy under test; [`EnvoyBuilder::start`] runs it.
pub struct EnvoyBuilder {
    plugin_config: String,
    clusters: Vec<(String, u16)>,
    buffer_limit: Option<u32>,
    route_timeout: Option<Duration>,
    http2: bool,
    concurrency: u32,
    /// Named routes (name, path prefix, cluster), before the unnamed catch-all route.
    routes: Vec<(String, String, String)>,
    /// More clusters pointing at the route's upstream server.
    upstream_aliases: Vec<String>,
    trailers: bool,
    websocket: bool,
    /// The wasm HTTP filter as text (JSON or YAML flow style), spliced into the bootstrap.
    filter_text: Option<String>,
    /// The listener comes from an LDS file, so [`Envoy::reconfigure`] can update it.
    dynamic_listener: bool,
}

impl EnvoyBuilder {
    /// An extra cluster `name` pointing at 127.0.0.1:`port`.
    pub fn cluster(mut self, name: &str, port: u16) -> Self {
        self.clusters.push((name.to_string(), port));
        self
    }

    /// `per_connection_buffer_limit_bytes` of the listener and of every cluster.
    pub fn buffer_limit(mut self, bytes: u32) -> Self {
        self.buffer_limit = Some(bytes);
        self
    }

    /// The route's timeout (Envoy's default is 15 s).
    pub fn route_timeout(mut self, timeout: Duration) -> Self {
        self.route_timeout = Some(timeout);
        self
    }

    /// Lets the listener take HTTP/2 (prior knowledge) as well as HTTP/1.1.
    pub fn allow_http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// Envoy's worker threads (`--concurrency`, 1 by default); each has its own plugin VM.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// A route named `name` (the `xds.route_name` property) for paths starting with `prefix`,
    /// to `cluster`; named routes come before the unnamed catch-all route, in this order.
    pub fn route(mut self, name: &str, prefix: &str, cluster: &str) -> Self {
        self.routes
            .push((name.to_string(), prefix.to_string(), cluster.to_string()));
        self
    }

    /// A cluster `name` pointing at the route's upstream server (as `upstream` does).
    pub fn upstream_alias(mut self, name: &str) -> Self {
        self.upstream_aliases.push(name.to_string());
        self
    }

    /// HTTP/1.1 trailers, on the listener and on every cluster (`enable_trailers`).
    /// Lets websocket upgrades through the connection manager (`upgrade_configs`).
    pub fn allow_websocket(mut self) -> Self {
        self.websocket = true;
        self
    }

    pub fn enable_trailers(mut self) -> Self {
        self.trailers = true;
        self
    }

    /// Uses this text, an HTTP filter as JSON or YAML in flow style (e.g. what `proxy-rhai
    /// deploy envoy` prints), as the plugin's filter instead of the harness's own; the
    /// bootstrap is then written as YAML with the text spliced in as it is.
    pub fn http_filter_text(mut self, text: &str) -> Self {
        self.filter_text = Some(text.to_string());
        self
    }

    /// Serves the listener from a file (LDS) instead of the bootstrap, so that the plugin's
    /// configuration can be changed while Envoy runs ([`Envoy::reconfigure`]).
    pub fn dynamic_listener(mut self) -> Self {
        self.dynamic_listener = true;
        self
    }

    /// Starts Envoy and waits until it serves; panics with the tail of its log when it doesn't.
    pub fn start(self) -> Envoy {
        self.try_start()
            .unwrap_or_else(|log| panic!("Envoy did not start:\n{}", tail(&log, 60)))
    }

    /// Starts Envoy; `Err` holds its whole log (and stderr) when it exits or never gets ready.
    pub fn try_start(self) -> Result<Envoy, String> {
        let upstream = Upstream::start();
        let callout = Upstream::start();
        let dir = fresh_dir();
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("envoy.log");
        let mut config = self.bootstrap(upstream.port(), callout.port());
        let lds = self.dynamic_listener.then(|| {
            let mut listener = config["static_resources"]["listeners"][0].take();
            listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            let path = dir.join("lds.json");
            write_atomically(&path, &json!({"resources": [listener]}));
            config["static_resources"]["listeners"] = json!([]);
            config["node"] = json!({"id": "proxy-rhai-test", "cluster": "test"});
            config["dynamic_resources"] = json!({"lds_config": {
                "path_config_source": {"path": path}, "resource_api_version": "V3"}});
            (path, listener)
        });
        let mut text = serde_json::to_string_pretty(&config).unwrap();
        let config_path = match &self.filter_text {
            // JSON is YAML: Envoy reads the whole file, spliced text included, as YAML.
            Some(filter) => {
                // Pasted where the placeholder stands, each line indented as that line is.
                let placeholder = format!("{FILTER_PLACEHOLDER:?}");
                let at = text.find(&placeholder).expect("the placeholder");
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let indent = " ".repeat(at - line_start);
                let pasted = filter.trim_end().replace('\n', &format!("\n{indent}"));
                text = text.replace(&placeholder, &pasted);
                dir.join("envoy.yaml")
            }
            None => dir.join("envoy.json"),
        };
        fs::write(&config_path, text).unwrap();

        // A shell stands between the test and Envoy: when this process ends, however it ends,
        // the pipe on the shell's fd 3 closes and the shell ends Envoy, so no Envoy outlives
        // the tests. `wait` makes the shell exit with Envoy's own status.
        let script = r#"exec 3<&0
"$0" "$@" </dev/null &
pid=$!
echo "$pid" > "$ENVOY_PID_FILE"
( read _ <&3; kill "$pid" 2>/dev/null ) &
wait "$pid""#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("envoy")
            .args(["-c".as_ref(), config_path.as_os_str()])
            .args([
                "--concurrency",
                &self.concurrency.to_string(),
                "--disable-hot-restart",
            ])
            .args(["--admin-address-path".as_ref(), admin_path.as_os_str()])
            .args(["-l", "info", "--component-log-level", "wasm:debug"])
            .args(["--log-path".as_ref(), log_path.as_os_str()])
            .args(["--file-flush-interval-msec", &LOG_FLUSH_MS.to_string()])
            .env("ENVOY_PID_FILE", dir.join("envoy.pid"))
            .stdin(Stdio::piped())
            .stdout(fs::File::create(dir.join("stdout")).unwrap())
            .stderr(fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh to start envoy: {e}"));
        let stdin = child.stdin.take();

        let mut envoy = Envoy {
            child: Mutex::new(child),
            watchdog: Mutex::new(stdin),
            dir,
            log_path,
            admin: "127.0.0.1:0".parse().unwrap(),
            addr: "127.0.0.1:0".parse().unwrap(),
            upstream,
            callout,
            lds: Mutex::new(lds),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = envoy.child.lock().unwrap().try_wait().unwrap() {
                let log = envoy.full_output();
                envoy.cleanup_dir();
                return Err(format!("{log}\n(envoy exited: {status})"));
            }
            if let Some(admin) = fs::read_to_string(&admin_path)
                .ok()
                .and_then(|a| a.trim().parse().ok())
            {
                envoy.admin = admin;
                if envoy.admin_get("/ready").is_ok_and(|r| r.status == 200) {
                    break;
                }
            }
            if Instant::now() > deadline {
                let log = envoy.full_output();
                return Err(format!("{log}\n(envoy not ready after {READY_TIMEOUT:?})"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        let listeners = envoy
            .admin_get("/listeners?format=json")
            .map_err(|e| format!("admin /listeners: {e}"))?;
        let port = listeners.json()["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .ok_or_else(|| format!("no listener port in {}", listeners.text()))?;
        envoy.addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        Ok(envoy)
    }

    fn cluster_json(&self, name: &str, port: u16) -> Value {
        let mut cluster = json!({
            "name": name,
            "connect_timeout": "2s",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                }}}]}]
            }
        });
        if let Some(limit) = self.buffer_limit {
            cluster["per_connection_buffer_limit_bytes"] = json!(limit);
        }
        if self.trailers {
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}}
                }
            });
        }
        cluster
    }

    /// The bootstrap, as JSON (Envoy reads a `.json` bootstrap; no YAML escaping to get wrong).
    fn bootstrap(&self, upstream_port: u16, callout_port: u16) -> Value {
        let mut route = json!({"cluster": "upstream"});
        if let Some(t) = self.route_timeout {
            route["timeout"] = json!(format!("{:.3}s", t.as_secs_f64()));
        }
        let wasm = if self.filter_text.is_some() {
            json!(FILTER_PLACEHOLDER)
        } else {
            json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "proxy-rhai",
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm_path()}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.plugin_config
                    }
                }
            }
            })
        };
        let mut routes: Vec<Value> = self
            .routes
            .iter()
            .map(|(name, prefix, cluster)| {
                let mut target = route.clone();
                target["cluster"] = json!(cluster);
                json!({"name": name, "match": {"prefix": prefix}, "route": target})
            })
            .collect();
        routes.push(json!({"match": {"prefix": "/"}, "route": route}));
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "codec_type": if self.http2 { "AUTO" } else { "HTTP1" },
            "route_config": {
                "name": "local",
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": routes
                }]
            },
            "http_filters": [
                wasm,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                }
            ]
        });
        if self.trailers {
            hcm["http_protocol_options"] = json!({"enable_trailers": true});
        }
        if self.websocket {
            hcm["upgrade_configs"] = json!([{"upgrade_type": "websocket"}]);
        }
        let mut listener = json!({
            "name": "main",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm
            }]}]
        });
        if let Some(limit) = self.buffer_limit {
            listener["per_connection_buffer_limit_bytes"] = json!(limit);
        }
        let mut clusters = vec![
            self.cluster_json("upstream", upstream_port),
            self.cluster_json("callout", callout_port),
        ];
        clusters.extend(self.clusters.iter().map(|(n, p)| self.cluster_json(n, *p)));
        clusters.extend(
            self.upstream_aliases
                .iter()
                .map(|n| self.cluster_json(n, upstream_port)),
        );
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": [listener], "clusters": clusters}
        })
    }
}

/// Stands for the plugin's filter in a bootstrap given [`EnvoyBuilder::http_filter_text`].
const FILTER_PLACEHOLDER: &str = "__PROXY_RHAI_FILTER__";

fn fresh_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "proxy-rhai-e2e-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running Envoy with the plugin; dropping it stops Envoy and both servers.
pub struct Envoy {
    child: Mutex<Child>,
    /// The write end of the shell's watchdog pipe: closing it ends Envoy.
    watchdog: Mutex<Option<ChildStdin>>,
    dir: PathBuf,
    log_path: PathBuf,
    admin: SocketAddr,
    addr: SocketAddr,
    /// The route's target (cluster `upstream`).
    pub upstream: Upstream,
    /// The second server (cluster `callout`).
    pub callout: Upstream,
    /// With [`EnvoyBuilder::dynamic_listener`]: the LDS file and the listener it holds.
    lds: Mutex<Option<(PathBuf, Value)>>,
}

/// Writes `value` to `path` by renaming a complete file into place (Envoy watches the move).
fn write_atomically(path: &Path, value: &Value) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Asserts a reply's status, showing the whole reply and its body when it differs.
pub fn assert_status(reply: &Reply, status: u16) {
    assert_eq!(
        reply.status,
        status,
        "unexpected reply: {reply:?}\nbody: {}",
        reply.text()
    );
}

/// The lines of a log that say the VM failed (a trap, an uncaught exception, a Rust panic).
pub fn vm_failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            (l.contains("Function: proxy_on_") && l.contains("failed"))
                || l.contains("Uncaught RuntimeError")
                || l.contains("Uncaught RangeError")
                || l.contains("panicked at")
                || l.contains("memory allocation of")
                || l.contains("Wasm VM failed")
        })
        .collect()
}

impl Envoy {
    /// An Envoy whose plugin configuration is `plugin_config` (serialized as JSON text).
    pub fn builder(plugin_config: Value) -> EnvoyBuilder {
        Self::builder_raw(plugin_config.to_string())
    }

    /// An Envoy whose plugin configuration is this exact text (it may be invalid JSON).
    pub fn builder_raw(plugin_config: impl Into<String>) -> EnvoyBuilder {
        EnvoyBuilder {
            plugin_config: plugin_config.into(),
            clusters: Vec::new(),
            buffer_limit: None,
            route_timeout: None,
            http2: false,
            concurrency: 1,
            routes: Vec::new(),
            upstream_aliases: Vec::new(),
            trailers: false,
            websocket: false,
            filter_text: None,
            dynamic_listener: false,
        }
    }

    pub fn start(plugin_config: Value) -> Envoy {
        Self::builder(plugin_config).start()
    }

    pub fn try_start(plugin_config: Value) -> Result<Envoy, String> {
        Self::builder(plugin_config).try_start()
    }

    /// The plugin configuration `{"script": script}`.
    pub fn with_script(script: &str) -> Envoy {
        Self::start(json!({ "script": script }))
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    fn admin_get(&self, path: &str) -> io::Result<Reply> {
        self.admin_request("GET", path)
    }

    /// Gives the plugin a new configuration through LDS (needs
    /// [`EnvoyBuilder::dynamic_listener`]); returns whether Envoy accepted the update, after
    /// waiting for it to take it or reject it.
    pub fn reconfigure(&self, plugin_config: Value) -> bool {
        let counter = |name: &str| -> u64 {
            let stats = self
                .admin_get("/stats?filter=listener_manager.lds")
                .map(|r| r.text())
                .unwrap_or_default();
            stats
                .lines()
                .find_map(|l| l.strip_prefix(&format!("listener_manager.lds.{name}: ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let (success, rejected) = (counter("update_success"), counter("update_rejected"));
        {
            let mut lds = self.lds.lock().unwrap();
            let (path, listener) = lds
                .as_mut()
                .expect("reconfigure needs EnvoyBuilder::dynamic_listener");
            let filter =
                &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0];
            filter["typed_config"]["config"]["configuration"]["value"] =
                json!(plugin_config.to_string());
            write_atomically(path, &json!({"resources": [listener.clone()]}));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if counter("update_success") > success {
                return true;
            }
            if counter("update_rejected") > rejected {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "Envoy neither took nor rejected the new listener in 60 s:\n{}",
            tail(&self.log(), 40)
        );
    }

    /// A request to Envoy's admin interface (e.g. `GET /clusters`, `GET /stats`).
    pub fn admin_request(&self, method: &str, path: &str) -> io::Result<Reply> {
        let body_len = (method == "POST").then_some(0);
        exchange(self.admin, false, |s| {
            s.write_all(&request_head(method, path, &[], body_len))
        })
    }

    /// Sends a request on a new connection; `content-length` (and `host`) are added unless
    /// given. Panics when no response comes back.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: no response from Envoy: {e}"))
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Reply> {
        let with_length = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
        let head = request_head(method, path, headers, with_length.then_some(body.len()));
        exchange(self.addr, method == "HEAD", |s| {
            s.write_all(&head)?;
            s.write_all(body)
        })
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    /// Sends these exact bytes (e.g. a header value that is not UTF-8) and reads the response.
    pub fn raw(&self, bytes: &[u8]) -> Reply {
        exchange(self.addr, bytes.starts_with(b"HEAD "), |s| {
            s.write_all(bytes)
        })
        .unwrap_or_else(|e| panic!("raw request: no response from Envoy: {e}"))
    }

    /// Sends `body` in one chunk of chunked encoding, then `trailers`, and reads the response
    /// (with its trailers, when it has some). Trailers reach the plugin and the upstream only
    /// with [`EnvoyBuilder::enable_trailers`].
    pub fn request_with_trailers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> Reply {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("transfer-encoding", "chunked"));
        let mut bytes = request_head(method, path, &all, None);
        if !body.is_empty() {
            bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            bytes.extend_from_slice(body);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n");
        for (n, v) in trailers {
            bytes.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        exchange(self.addr, false, |s| s.write_all(&bytes))
            .unwrap_or_else(|e| panic!("{method} {path} (trailers): no response from Envoy: {e}"))
    }

    /// Sends a body in chunked encoding, one write (and flush) per chunk.
    pub fn request_chunked(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        chunks: &[&[u8]],
    ) -> Reply {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("transfer-encoding", "chunked"));
        let head = request_head(method, path, &all, None);
        exchange(self.addr, false, |s| {
            s.write_all(&head)?;
            s.flush()?;
            for (i, chunk) in chunks.iter().enumerate() {
                s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                s.write_all(chunk)?;
                s.write_all(b"\r\n")?;
                s.flush()?;
                if i % 8 == 7 {
                    // Let Envoy read what came so far: the body arrives in many pieces.
                    thread::sleep(Duration::from_millis(1));
                }
            }
            s.write_all(b"0\r\n\r\n")
        })
        .unwrap_or_else(|e| panic!("{method} {path} (chunked): no response from Envoy: {e}"))
    }

    fn read_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Envoy's log, up to now: everything logged before this call is in it.
    ///
    /// Envoy writes its log file every few milliseconds, so this first asks the admin
    /// interface to log a line of its own (`POST /logging?misc=info` logs "change log level")
    /// and waits (at most 10 s) until that line is written: every line logged before it, e.g.
    /// while a request that already got its response was handled, is written too.
    pub fn log(&self) -> String {
        const MARKER: &str = "change log level: name='misc'";
        let before = self.read_log().matches(MARKER).count();
        if self.admin_request("POST", "/logging?misc=info").is_err() {
            // Envoy is gone: its last lines are written already, or soon.
            thread::sleep(Duration::from_millis(LOG_FLUSH_MS * 5));
            return self.read_log();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.read_log();
            if log.matches(MARKER).count() > before || Instant::now() > deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(LOG_FLUSH_MS / 2));
        }
    }

    /// Waits (at most 10 s) until the log has a line containing `needle`; returns that line.
    /// (A line logged before this call is found at once; this also waits for later ones.)
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line contains {needle:?}; log tail:\n{}",
                    tail(&log, 40)
                );
            }
        }
    }

    /// Plugin log lines (`wasm log ...`) containing `needle`.
    pub fn plugin_log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("wasm log") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// The value of one stat (`/stats?filter=^NAME$`), or `None` when Envoy has no such stat.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = self
            .admin_request("GET", &format!("/stats?filter=^{name}$"))
            .expect("admin /stats")
            .text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}: {v}")))
    }

    /// Waits (at most 10 s) until the stat exists and `ok` holds for it; returns its value.
    pub fn wait_for_stat(&self, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.stat(name);
            if let Some(v) = value.filter(|v| ok(*v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "stat {name} is {value:?}; wasm stats:\n{}",
                    self.wasm_stats()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Admin `/stats` lines about wasm.
    pub fn wasm_stats(&self) -> String {
        match self.admin_get("/stats") {
            Ok(r) => r
                .text()
                .lines()
                .filter(|l| l.contains("wasm"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("(admin /stats failed: {e})"),
        }
    }

    /// Envoy's resident memory (`VmRSS`), in bytes. A wasm VM's memory never shrinks, so what a
    /// request made the VM take shows here for good.
    pub fn rss_bytes(&self) -> u64 {
        let pid = fs::read_to_string(self.dir.join("envoy.pid")).expect("Envoy's pid file");
        let status = fs::read_to_string(format!("/proc/{}/status", pid.trim()))
            .expect("Envoy's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect("VmRSS in Envoy's /proc status")
    }

    /// Asserts the plugin's VM never failed (the log is the only witness: Envoy 1.40 counts no
    /// failed VM in its stats) and Envoy still answers.
    pub fn assert_healthy(&self) {
        let running = self.child.lock().unwrap().try_wait().unwrap().is_none();
        let served = self.try_request("GET", "/__healthcheck", &[], b"");
        let log = self.log();
        let failures = vm_failures(&log);
        if !running || served.is_err() || !failures.is_empty() {
            panic!(
                "Envoy is not healthy: running={running}, request after the test: {:?}\n\
                 VM failure lines:\n{}\nwasm stats:\n{}\nlog tail:\n{}",
                served.map(|r| r.status),
                failures.join("\n"),
                self.wasm_stats(),
                tail(&log, 40)
            );
        }
    }

    /// Envoy's log file, stdout and stderr.
    fn full_output(&self) -> String {
        let read = |name: &str| {
            fs::read(self.dir.join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let mut out = read("envoy.log");
        for extra in ["stderr", "stdout"] {
            let text = read(extra);
            if !text.trim().is_empty() {
                let _ = write!(out, "\n--- envoy {extra} ---\n{text}");
            }
        }
        out
    }

    fn cleanup_dir(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    fn stop(&self) {
        // Closing the watchdog pipe makes the shell end Envoy.
        self.watchdog.lock().unwrap().take();
        let mut child = self.child.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                if let Ok(pid) = fs::read_to_string(self.dir.join("envoy.pid")) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("Envoy files kept in {}", self.dir.display());
        } else {
            self.cleanup_dir();
        }
    }
}

/// SO_LINGER 0: closing the socket sends a reset.
pub fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a properly sized option value.
    let rc = unsafe {
        setsockopt(
            s.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &linger,
            std::mem::size_of::<Linger>() as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
}
