//! The test's HTTP/1.1 client: requests to Envoy (well-formed, chunked, with trailers, or
//! raw bytes, or written piece by piece: [`Piecewise`]), one connection each, and [`Reply`],
//! the response as the client got it.

use std::fmt::Write as _;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::upstream::Echo;
use super::wire::{bad, find, find_all, read_body, read_headers, read_line};
use super::Envoy;

/// Read/write timeout of every client socket: a stuck exchange fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

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
        Echo::parse(self.json()).unwrap_or_else(|| {
            panic!(
                "reply is not an upstream echo: status {} body {}",
                self.status,
                self.text()
            )
        })
    }
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
pub(super) fn exchange(
    addr: SocketAddr,
    head_request: bool,
    write: impl FnOnce(&mut TcpStream) -> io::Result<()>,
) -> io::Result<Reply> {
    let mut stream = connect(addr)?;
    write(&mut stream)?;
    stream.flush()?;
    read_reply(&stream, head_request)
}

pub(super) fn request_head(
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

impl Envoy {
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
        exchange(self.addr(), method == "HEAD", |s| {
            s.write_all(&head)?;
            s.write_all(body)
        })
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    /// Sends these exact bytes (e.g. a header value that is not UTF-8) and reads the response.
    pub fn raw(&self, bytes: &[u8]) -> Reply {
        exchange(self.addr(), bytes.starts_with(b"HEAD "), |s| {
            s.write_all(bytes)
        })
        .unwrap_or_else(|e| panic!("raw request: no response from Envoy: {e}"))
    }

    /// Sends `body` in one chunk of chunked encoding, then `trailers`, and reads the response
    /// (with its trailers, when it has some). Trailers reach the plugin and the upstream only
    /// with [`super::EnvoyBuilder::enable_trailers`].
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
        exchange(self.addr(), false, |s| s.write_all(&bytes))
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
        exchange(self.addr(), false, |s| {
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
}

/// The connection manager's count of the bytes Envoy read from its clients.
const RX_BYTES: &str = "http.ingress.downstream_cx_rx_bytes_total";

/// A request written piece by piece on one connection. Each [`Piecewise::send`] returns once
/// Envoy has read the piece (its connection manager counted the bytes): the worker hands read
/// bytes to the filters before it handles any later event (a callout's answer), so a test
/// orders a body's pieces against callouts without sleeping.
pub struct Piecewise<'a> {
    envoy: &'a Envoy,
    stream: TcpStream,
    /// What Envoy's count must reach once all sent so far is read.
    read_at: u64,
}

impl Piecewise<'_> {
    /// Writes `bytes` and waits until Envoy has read them.
    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        self.stream.write_all(bytes).expect("write to Envoy");
        self.read_at += bytes.len() as u64;
        let at = self.read_at;
        self.envoy.wait_for_stat(RX_BYTES, |v| v >= at);
        self
    }

    /// Reads the response.
    pub fn reply(self) -> Reply {
        read_reply(&self.stream, false)
            .unwrap_or_else(|e| panic!("piecewise request: no response from Envoy: {e}"))
    }
}

impl Envoy {
    /// Starts a request on a new connection (see [`Piecewise`]): sends `head` (the request
    /// line and headers, or more) at once.
    pub fn piecewise(&self, head: &str) -> Piecewise<'_> {
        let stream = connect(self.addr()).expect("connect to Envoy");
        let read_at = self.stat(RX_BYTES).unwrap_or(0);
        let mut request = Piecewise {
            envoy: self,
            stream,
            read_at,
        };
        request.send(head.as_bytes());
        request
    }

    /// Joins the upstream's barrier `NAME` as its second caller (`/barrier/NAME/2`): a callout
    /// waiting there is answered. Returns once both went through.
    pub fn release_barrier(&self, name: &str) {
        let mut upstream = connect(SocketAddr::from(([127, 0, 0, 1], self.upstream.port())))
            .expect("connect to the upstream");
        write!(
            upstream,
            "GET /barrier/{name}/2 HTTP/1.1\r\nhost: upstream\r\nconnection: close\r\n\r\n"
        )
        .expect("write to the upstream");
        let answer = read_reply(&upstream, false).expect("the barrier's answer");
        assert!(
            answer.text().contains("reached"),
            "barrier {name}: {}",
            answer.text()
        );
    }
}
