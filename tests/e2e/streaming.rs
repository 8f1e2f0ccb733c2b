//! Bodies streamed through chunk phases. Events reach the
//! client as the upstream sends them, scripts read and rewrite them across chunk boundaries,
//! callouts hold a stream, trailers end one, and large bodies stream with flat memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{assert_status, vm_failures, Envoy};
use serde_json::json;

/// Longest the gated stream waits for the test (so a broken proxy fails the test, not hangs it).
const GATE_TIMEOUT: Duration = Duration::from_secs(20);

/// A streaming upstream on 127.0.0.1:
///
/// | path | answer |
/// | --- | --- |
/// | `/sse/gated` | event `one`, then, once the test opens the gate, event `two` |
/// | `/sse/llm` | an OpenAI-style answer: deltas, a `usage` event, `[DONE]`, in split pieces |
/// | `/sse/redact` | events with a card number split across pieces |
/// | `/stream/N` | N bytes (`content-length`), written 64 KiB at a time |
/// | `/discard` | reads the request body without keeping it; answers `{"received": N}` |
/// | `/early` | answers `early` at once, then reads the (chunked) request body and ends with `got N` |
struct StreamServer {
    port: u16,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    /// The second event was written.
    second_sent: AtomicBool,
}

impl StreamServer {
    fn start() -> StreamServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let g = g.clone();
                thread::spawn(move || {
                    let _ = serve(conn, &g);
                });
            }
        });
        StreamServer { port, gate }
    }

    fn open_gate(&self) {
        *self.gate.open.lock().unwrap() = true;
        self.gate.opened.notify_all();
    }
}

fn serve(conn: TcpStream, gate: &Gate) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let target = head
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let header = |name: &str| {
        head.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let sse_head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = |w: &mut TcpStream, piece: &[u8]| -> std::io::Result<()> {
        w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
        w.write_all(piece)?;
        w.write_all(b"\r\n")?;
        w.flush()
    };
    let pieces = |w: &mut TcpStream, pieces: &[&[u8]]| -> std::io::Result<()> {
        w.write_all(sse_head.as_bytes())?;
        for piece in pieces {
            chunk(w, piece)?;
            // Separate reads for Envoy (the scripts are right however the pieces are cut).
            thread::sleep(Duration::from_millis(20));
        }
        w.write_all(b"0\r\n\r\n")?;
        w.flush()
    };
    match target.as_str() {
        "/sse/gated" => {
            w.write_all(sse_head.as_bytes())?;
            chunk(&mut w, b"data: one\n\n")?;
            let deadline = Instant::now() + GATE_TIMEOUT;
            let mut open = gate.open.lock().unwrap();
            while !*open && Instant::now() < deadline {
                open = gate.opened.wait_timeout(open, GATE_TIMEOUT).unwrap().0;
            }
            drop(open);
            gate.second_sent.store(true, Ordering::SeqCst);
            chunk(&mut w, b"data: two\n\n")?;
            w.write_all(b"0\r\n\r\n")?;
            w.flush()
        }
        "/sse/llm" => pieces(&mut w, &LLM_PIECES.map(str::as_bytes)),
        "/sse/redact" => pieces(
            &mut w,
            &[
                b"event: card\ndata: paid with 4111-11",
                b"11-1111-1111 today\n\n",
                b"data: bye\n\n",
            ],
        ),
        "/discard" => {
            // The plugin drops `content-length` of a body it streams: it comes chunked.
            let mut received = 0u64;
            if let Some(len) = header("content-length").and_then(|v| v.parse().ok()) {
                received = std::io::copy(&mut reader.by_ref().take(len), &mut std::io::sink())?;
            } else {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size)?;
                    let size = u64::from_str_radix(size.trim(), 16).unwrap_or(0);
                    received +=
                        std::io::copy(&mut reader.by_ref().take(size), &mut std::io::sink())?;
                    let mut end = String::new();
                    reader.read_line(&mut end)?;
                    if size == 0 {
                        break;
                    }
                }
            }
            let body =
                json!({ "received": received, "chunked": header("content-length").is_none() })
                    .to_string();
            write!(
                w,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )?;
            w.flush()
        }
        "/early" => {
            w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")?;
            chunk(&mut w, b"early\n")?;
            let mut received = 0u64;
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size)? == 0 {
                    return Ok(());
                }
                let size = u64::from_str_radix(size.trim(), 16).unwrap_or(0);
                received += std::io::copy(&mut reader.by_ref().take(size), &mut std::io::sink())?;
                let mut end = String::new();
                reader.read_line(&mut end)?;
                if size == 0 {
                    break;
                }
            }
            chunk(&mut w, format!("got {received}\n").as_bytes())?;
            w.write_all(b"0\r\n\r\n")?;
            w.flush()
        }
        path if path.starts_with("/stream/") => {
            let n: u64 = path["/stream/".len()..].parse().unwrap_or(0);
            write!(
                w,
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\n\r\n"
            )?;
            let block = [b'a'; 64 << 10];
            let mut left = n;
            while left > 0 {
                let k = left.min(block.len() as u64) as usize;
                w.write_all(&block[..k])?;
                left -= k as u64;
            }
            w.flush()
        }
        _ => {
            w.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
            w.flush()
        }
    }
}

/// An OpenAI-style streamed answer, cut inside events and inside a UTF-8 character (`é`).
const LLM_PIECES: [&str; 4] = [
    "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"lo \u{e9}\"}}]}\n\nda",
    "ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"compl",
    "etion_tokens\":34}}\n\ndata: [DONE]\n\n",
];

/// An Envoy whose `/sse`, `/stream` and `/discard` routes go to `server`.
fn envoy(server: &StreamServer, plugin: serde_json::Value) -> Envoy {
    Envoy::builder(plugin)
        .cluster("streams", server.port)
        .route("sse", "/sse", "streams")
        .route("stream", "/stream", "streams")
        .route("discard", "/discard", "streams")
        .route("early", "/early", "streams")
        .start()
}

/// Sends `GET path` and returns the connection, to read the response as it comes.
fn open(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GATE_TIMEOUT * 2)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

/// Reads from `s` until `needle` has arrived (or the connection ends); returns all read.
fn read_until(s: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]) {
    let mut buf = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The body of a chunked HTTP/1.1 response (its head and chunk framing removed).
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let text_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut rest = &raw[text_end..];
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
}

/// The client gets the first event while the upstream still holds the second: the response
/// streams through the chunk function. The event the script adds at the end arrives last.
#[test]
fn events_reach_the_client_as_the_upstream_sends_them() {
    let server = StreamServer::start();
    let envoy = envoy(
        &server,
        json!({ "script": r#"
            fn on_response_chunk(chunk, last) {
                let n = (get_context("n") ?? 0) + sse_events(chunk, last).len();
                set_context("n", n);
                if last { append_response_body("data: " + n + " events\n\n"); }
            }"# }),
    );
    let mut s = open(envoy.addr(), "/sse/gated");
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"data: one\n\n");
    assert!(
        String::from_utf8_lossy(&seen).contains("data: one"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        !server.gate.second_sent.load(Ordering::SeqCst),
        "the first event came only after the upstream sent the second"
    );
    server.open_gate();
    s.read_to_end(&mut seen).unwrap();
    let body = String::from_utf8(dechunk(&seen)).unwrap();
    assert_eq!(body, "data: one\n\ndata: two\n\ndata: 2 events\n\n");
    let head =
        String::from_utf8_lossy(&seen[..seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap()])
            .to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    envoy.assert_healthy();
}

#[test]
fn llm_token_usage_counts_events_and_tokens() {
    let server = StreamServer::start();
    let envoy = envoy(
        &server,
        json!({ "script": include_str!("../../scripts/llm_token_usage.rhai") }),
    );
    let reply = envoy.request(
        "POST",
        "/sse/llm",
        &[("content-type", "application/json")],
        b"{}",
    );
    assert_status(&reply, 200);
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        LLM_PIECES.concat(),
        "untouched"
    );
    envoy.wait_for_log("llm stream: 3 events, prompt_tokens=12 completion_tokens=34");
    assert_eq!(
        envoy.wait_for_stat("wasmcustom.llm_prompt_tokens", |v| v > 0),
        12
    );
    assert_eq!(envoy.stat("wasmcustom.llm_completion_tokens"), Some(34));
    assert_eq!(envoy.stat("wasmcustom.llm_events"), Some(3));
    envoy.assert_healthy();
}

#[test]
fn a_secret_split_across_chunks_is_redacted() {
    let server = StreamServer::start();
    let envoy = envoy(
        &server,
        json!({
            "script": include_str!("../../scripts/sse_redact.rhai"),
            "config": { "secrets": ["4111-1111-1111-1111"], "mask": "****" }
        }),
    );
    let reply = envoy.get("/sse/redact");
    assert_status(&reply, 200);
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        "event: card\ndata: paid with **** today\n\ndata: bye\n\n"
    );
    envoy.assert_healthy();
}

/// Each stream carries its own incomplete event: eight streams at once, each with a card
/// number split across pieces (20 ms apart, so their pieces interleave in the one VM), all
/// come out redacted whole.
#[test]
fn concurrent_streams_keep_their_own_partial_events() {
    let server = StreamServer::start();
    let envoy = envoy(
        &server,
        json!({
            "script": include_str!("../../scripts/sse_redact.rhai"),
            "config": { "secrets": ["4111-1111-1111-1111"], "mask": "****" }
        }),
    );
    let bodies: Vec<String> = thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| String::from_utf8(envoy.get("/sse/redact").body).unwrap()))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for body in bodies {
        assert_eq!(
            body,
            "event: card\ndata: paid with **** today\n\ndata: bye\n\n"
        );
    }
    envoy.assert_healthy();
}

/// A callout from the first chunk holds the upload; what arrives meanwhile is buffered by Envoy
/// and goes through the chunk function before the stream resumes.
#[test]
fn a_callout_from_a_chunk_holds_the_stream_and_no_chunk_is_skipped() {
    let envoy = Envoy::with_script(
        r#"fn on_request_chunk(chunk, last) {
            if get_context("checked") == () {
                set_context("checked", false);
                http_get("callout", "/delay/300", [], 5000, |status| {
                    set_context("checked", status == 200);
                    append_request_body("|checked|");
                });
            }
            replace_request_body(chunk.to_upper());
        }"#,
    );
    let chunks: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("part{i:02};").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let reply = envoy.request_chunked("POST", "/upload", &[], &refs);
    assert_status(&reply, 200);
    let body = reply.echo().body;
    // The callback's write follows the chunk that made the call (Envoy may have read several
    // of the client's pieces as one); every later chunk went through the function too.
    assert!(body.starts_with("PART00;"), "{body}");
    assert_eq!(body.matches("|checked|").count(), 1, "{body}");
    let all = String::from_utf8(chunks.concat()).unwrap().to_uppercase();
    assert_eq!(body.replace("|checked|", ""), all);
    envoy.assert_healthy();
}

/// The head of a chunked `POST path` on a connection closed after the response.
fn chunked_head(path: &str, headers: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{headers}\
         transfer-encoding: chunked\r\n\r\n"
    )
}

/// One piece of chunked encoding.
fn piece(data: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat()
}

/// What the script logged after `marker`, line by line.
fn logged(envoy: &Envoy, marker: &str) -> Vec<String> {
    envoy
        .plugin_log_lines(marker)
        .iter()
        .filter_map(|l| Some(l.split_once(marker)?.1.to_string()))
        .collect()
}

/// A header callback resumes the request while a second callout is in flight; the chunk
/// function holds the first piece (`PAUSE`), and the late callback comes before the second
/// piece. The late callback leaves the stream alone: the second call gets only the new bytes.
#[test]
fn a_late_header_callback_leaves_a_held_chunk_alone() {
    let envoy = Envoy::with_script(
        r#"fn on_request_headers() {
            http_get("upstream", "/a", [], 5000, |status| { resume_http_request(); });
            http_get("upstream", "/barrier/late-1/2", [], 30000, |status| {
                log_info("late callback");
            });
        }
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if !last { return PAUSE; }
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/late", ""));
    request.send(&piece(b"hello"));
    envoy.wait_for_log("got [hello] false");
    envoy.release_barrier("late-1");
    envoy.wait_for_log("late callback");
    request.send(&piece(b"world")).send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "helloworld");
    // Envoy gives the end of the chunked body as a call of its own: `[] true`.
    assert_eq!(
        logged(&envoy, "got "),
        ["[hello] false", "[world] false", "[] true"]
    );
    envoy.assert_healthy();
}

/// A late header callback's `resume_http_request()` while a chunk's callout holds the request:
/// the chunk's hold is not the header phase's to end. The chunk callback still rewrites its own
/// piece, and the piece that came meanwhile goes through the chunk function.
#[test]
fn a_late_header_resume_leaves_a_chunk_callout_its_hold() {
    let envoy = Envoy::with_script(
        r#"fn on_request_headers() {
            http_get("upstream", "/a", [], 5000, |s| { resume_http_request(); });
            http_get("upstream", "/barrier/header-late/2", [], 30000, |s| {
                log_info(`late resume: ${resume_http_request()}`);
            });
        }
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if get_context("asked") == () {
                set_context("asked", true);
                http_get("upstream", "/barrier/chunk-call/2", [], 30000, |s| {
                    log_info(`got callback [${get_request_body()}]`);
                    replace_request_body("<" + get_request_body() + ">");
                });
            }
            replace_request_body(chunk.to_upper());
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/late-resume", ""));
    request.send(&piece(b"xaaaa"));
    envoy.wait_for_log("got [xaaaa] false");
    envoy.release_barrier("header-late");
    assert!(envoy
        .wait_for_log("late resume: ")
        .ends_with("late resume: false"));
    request.send(&piece(b"bbbbb"));
    envoy.release_barrier("chunk-call");
    envoy.wait_for_log("got callback");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "<XAAAA>BBBBB");
    assert_eq!(
        logged(&envoy, "got "),
        [
            "[xaaaa] false",
            "callback [XAAAA]",
            "[bbbbb] false",
            "[] true"
        ]
    );
    envoy.assert_healthy();
}

/// fail_open: a late header callback throws while a chunk's callout holds the request. The
/// chunk's callout keeps its hold, and its callback lets the request go.
#[test]
fn fail_open_a_late_header_callback_that_throws_leaves_a_chunk_callout_its_hold() {
    let envoy = Envoy::start(json!({"error_policy": {"mode": "fail_open"}, "script": r#"
        fn on_request_headers() {
            http_get("upstream", "/a", [], 5000, |s| { resume_http_request(); });
            http_get("upstream", "/barrier/late-throw/2", [], 30000, |s| {
                log_info("late callback throws");
                throw "late boom";
            });
        }
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if get_context("asked") == () {
                set_context("asked", true);
                http_get("upstream", "/barrier/chunk-hold/2", [], 30000, |s| {
                    log_info("got callback");
                });
            }
            replace_request_body(chunk.to_upper());
        }"#}));
    let mut request = envoy.piecewise(&chunked_head("/late-throw", ""));
    request.send(&piece(b"hello"));
    envoy.wait_for_log("got [hello] false");
    envoy.release_barrier("late-throw");
    envoy.wait_for_log("late callback throws");
    request.send(&piece(b"world"));
    envoy.release_barrier("chunk-hold");
    envoy.wait_for_log("got [world] false");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "HELLOWORLD");
    assert_eq!(
        logged(&envoy, "got "),
        ["[hello] false", "callback", "[world] false", "[] true"]
    );
    envoy.assert_healthy();
}

/// A chunk's two callouts; the first one's callback resumes: the second holds nothing any
/// more. The next piece, arriving before the late answer, goes through the chunk function and
/// on; the late callback can't act on a piece that went on (a clear error).
#[test]
fn a_callout_left_behind_by_a_resume_holds_nothing() {
    let envoy = Envoy::with_script(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("upstream", "/a", [], 5000, |s| {
                    replace_request_body("A1");
                    log_info(`got resume: ${resume_http_request()}`);
                });
                http_get("upstream", "/barrier/left-behind/2", [], 30000, |s| {
                    try { replace_request_body("<late>"); } catch (e) { log_info(`got late: ${e}`); }
                });
            } else {
                replace_request_body(chunk.to_upper());
            }
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/left-behind", ""));
    request.send(&piece(b"aaaa"));
    envoy.wait_for_log("got resume: ");
    request.send(&piece(b"bbbb"));
    envoy.wait_for_log("got [bbbb] false");
    envoy.release_barrier("left-behind");
    envoy.wait_for_log("got late: ");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "A1BBBB");
    let got = logged(&envoy, "got ");
    assert_eq!(got[..3], ["[aaaa] false", "resume: true", "[bbbb] false"]);
    assert!(
        got[3].starts_with("late: replace_request_body(): the body this callback's call"),
        "{got:?}"
    );
    assert_eq!(got[4..], ["[] true"]);
    envoy.assert_healthy();
}

/// fail_open: a late header callback throws while a body-phase callout holds the request:
/// that callout keeps its hold, and its callback's write goes on.
#[test]
fn fail_open_a_late_header_callback_that_throws_leaves_a_body_callout_its_hold() {
    let envoy = Envoy::start(json!({"error_policy": {"mode": "fail_open"}, "script": r#"
        fn on_request_headers() {
            http_get("upstream", "/a", [], 5000, |s| { resume_http_request(); });
            http_get("upstream", "/barrier/late-throw-body/2", [], 30000, |s| {
                log_info("late callback throws");
                throw "late boom";
            });
        }
        fn on_request_body() {
            log_info(`body [${get_request_body()}]`);
            http_get("upstream", "/barrier/body-hold/2", [], 30000, |s| {
                append_request_body("|B");
            });
        }"#}));
    let mut request = envoy.piecewise(&chunked_head("/late-throw-body", ""));
    request.send(&piece(b"hello")).send(b"0\r\n\r\n");
    envoy.wait_for_log("body [hello]");
    envoy.release_barrier("late-throw-body");
    envoy.wait_for_log("late callback throws");
    envoy.release_barrier("body-hold");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "hello|B");
    envoy.assert_healthy();
}

/// fail_open: a chunk callout's callback throws. Its writes are undone, and the pieces after
/// it still go through the chunk function.
#[test]
fn fail_open_a_chunk_callback_that_throws_leaves_the_next_pieces_to_the_function() {
    let envoy = Envoy::start(json!({"error_policy": {"mode": "fail_open"}, "script": r#"
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if get_context("asked") == () {
                set_context("asked", true);
                http_get("upstream", "/barrier/throws/2", [], 30000, |s| {
                    append_request_body("|undone");
                    log_info("callback throws");
                    throw "boom";
                });
            }
            replace_request_body(chunk.to_upper());
        }"#}));
    let mut request = envoy.piecewise(&chunked_head("/throws", ""));
    request.send(&piece(b"hello"));
    envoy.wait_for_log("got [hello] false");
    envoy.release_barrier("throws");
    envoy.wait_for_log("callback throws");
    request.send(&piece(b"world"));
    envoy.wait_for_log("got [world] false");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "HELLOWORLD");
    envoy.assert_healthy();
}

/// fail_open: a chunk call throws after an earlier piece was held with `PAUSE`. Envoy lets
/// both go on as they are; the next pieces go through the function from their first byte.
#[test]
fn fail_open_a_chunk_call_that_throws_after_a_pause_keeps_the_next_pieces_whole() {
    let envoy = Envoy::start(json!({"error_policy": {"mode": "fail_open"}, "script": r#"
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk.starts_with("p") { return PAUSE; }
            if chunk.starts_with("t") { throw "boom"; }
            replace_request_body(chunk.to_upper());
        }"#}));
    let mut request = envoy.piecewise(&chunked_head("/pause-throw", ""));
    for (data, seen) in [
        (b"pppp", "got [pppp] false"),
        (b"tttt", "got [tttt] false"),
        (b"abcd", "got [abcd] false"),
        (b"efgh", "got [efgh] false"),
    ] {
        request.send(&piece(data));
        envoy.wait_for_log(seen);
    }
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "ppppttttABCDEFGH");
    envoy.assert_healthy();
}

/// fail_open: the trailers come while a chunk's callout holds the request, and its callback
/// throws. The chunk function's call with `last` and the trailers phase still run.
#[test]
fn fail_open_a_chunk_callback_that_throws_still_runs_the_trailers() {
    let envoy = Envoy::builder(json!({"error_policy": {"mode": "fail_open"}, "script": r#"
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if !last {
                http_get("upstream", "/barrier/trailers/2", [], 30000, |s| { throw "boom"; });
            }
        }
        fn on_request_trailers() { add_request_trailer("x-t", "1"); }"#}))
    .enable_trailers()
    .start();
    let mut request = envoy.piecewise(&chunked_head("/trailers", ""));
    request
        .send(&piece(b"hello"))
        .send(b"0\r\nx-sum: 5\r\n\r\n");
    envoy.release_barrier("trailers");
    let reply = request.reply();
    assert_status(&reply, 200);
    let echo = reply.echo();
    assert_eq!(echo.body, "hello");
    assert_eq!(echo.raw["trailers"], json!([["x-sum", "5"], ["x-t", "1"]]));
    assert_eq!(logged(&envoy, "got "), ["[hello] false", "[] true"]);
    envoy.assert_healthy();
}

/// A chunk callback resumes the request while what came meanwhile ends inside a UTF-8
/// character: the complete part goes through the chunk function, the character's first byte
/// waits for the rest, and the next piece starts with the character whole.
#[test]
fn a_chunk_callback_that_resumes_keeps_a_split_character_for_the_next_piece() {
    let envoy = Envoy::with_script(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if get_context("asked") == () {
                set_context("asked", true);
                http_get("upstream", "/barrier/utf8/2", [], 30000, |s| { resume_http_request(); });
            }
            replace_request_body(chunk.to_upper());
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/utf8", ""));
    request.send(&piece(b"first"));
    envoy.wait_for_log("got [first] false");
    request.send(&piece(b"ab\xC3"));
    envoy.release_barrier("utf8");
    envoy.wait_for_log("got [ab] false");
    request.send(&piece(b"\xA9cdef")).send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "FIRSTAB\u{c9}CDEF");
    assert_eq!(
        logged(&envoy, "got "),
        [
            "[first] false",
            "[ab] false",
            "[\u{e9}cdef] false",
            "[] true"
        ]
    );
    envoy.assert_healthy();
}

#[test]
fn fail_open_a_detached_callback_that_throws_leaves_a_new_hold_alone() {
    let envoy = Envoy::start(json!({"error_policy": {"mode": "fail_open"}, "script": r#"
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("upstream", "/a", [], 5000, |s| {
                    log_info(`got resume: ${resume_http_request()}`);
                });
                http_get("upstream", "/barrier/detached-throw/2", [], 30000, |s| {
                    log_info("got detached throws");
                    throw "detached boom";
                });
            } else if chunk == "bbbb" {
                http_get("upstream", "/barrier/new-hold/2", [], 30000, |s| {
                    log_info("got new hold callback");
                    replace_request_body("<" + get_request_body() + ">");
                });
            }
        }"#}));
    let mut request = envoy.piecewise(&chunked_head("/detached-throw", ""));
    request.send(&piece(b"aaaa"));
    envoy.wait_for_log("got resume: ");
    request.send(&piece(b"bbbb"));
    envoy.wait_for_log("got [bbbb] false");
    envoy.release_barrier("detached-throw");
    envoy.wait_for_log("got detached throws");
    envoy.release_barrier("new-hold");
    envoy.wait_for_log("got new hold callback");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "aaaa<bbbb>");
    envoy.assert_healthy();
}

#[test]
fn a_detached_callback_chains_a_callout_that_holds_nothing() {
    let envoy = Envoy::with_script(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("upstream", "/a", [], 5000, |s| {
                    log_info(`got resume: ${resume_http_request()}`);
                });
                http_get("upstream", "/barrier/detached-chain/2", [], 30000, |s| {
                    log_info("got detached callback");
                    http_get("upstream", "/barrier/chained/2", [], 30000, |s| {
                        log_info("got chained callback");
                        try { replace_request_body("<chained>"); } catch (e) { log_info(`got chained error`); }
                    });
                });
            } else {
                replace_request_body(chunk.to_upper());
            }
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/detached-chain", ""));
    request.send(&piece(b"aaaa"));
    envoy.wait_for_log("got resume: ");
    envoy.release_barrier("detached-chain");
    envoy.wait_for_log("got detached callback");
    request.send(&piece(b"bbbb"));
    envoy.wait_for_log("got [bbbb] false");
    envoy.release_barrier("chained");
    envoy.wait_for_log("got chained");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "aaaaBBBB");
    envoy.assert_healthy();
}

#[test]
fn a_late_header_callback_chain_does_not_keep_a_chunk_waiting() {
    let envoy = Envoy::with_script(
        r#"fn on_request_headers() {
            http_get("upstream", "/a", [], 5000, |s| { resume_http_request(); });
            http_get("upstream", "/barrier/hdr-late/2", [], 30000, |s| {
                log_info("got late header callback");
                http_get("upstream", "/barrier/hdr-chain/2", [], 30000, |s| {
                    log_info("got header chain callback");
                });
            });
        }
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("upstream", "/barrier/chunk-hold/2", [], 30000, |s| {
                    log_info("got chunk callback");
                    replace_request_body("<" + get_request_body() + ">");
                });
            }
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/hdr-chain", ""));
    request.send(&piece(b"aaaa"));
    envoy.wait_for_log("got [aaaa] false");
    envoy.release_barrier("hdr-late");
    envoy.wait_for_log("got late header callback");
    envoy.release_barrier("chunk-hold");
    envoy.wait_for_log("got chunk callback");
    request.send(b"0\r\n\r\n");
    // Not releasing hdr-chain before the reply: the request must not wait for it.
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "<aaaa>");
    envoy.release_barrier("hdr-chain");
    envoy.assert_healthy();
}

#[test]
fn a_detached_callback_cannot_resume_a_new_hold() {
    let envoy = Envoy::with_script(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("upstream", "/a", [], 5000, |s| {
                    log_info(`got resume: ${resume_http_request()}`);
                });
                http_get("upstream", "/barrier/det-resume/2", [], 30000, |s| {
                    log_info(`got detached resume: ${resume_http_request()}`);
                });
            } else if chunk == "bbbb" {
                http_get("upstream", "/barrier/det-hold/2", [], 30000, |s| {
                    log_info("got hold callback");
                    replace_request_body("<" + get_request_body() + ">");
                });
            }
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/det-resume", ""));
    request.send(&piece(b"aaaa"));
    envoy.wait_for_log("got resume: ");
    request.send(&piece(b"bbbb"));
    envoy.wait_for_log("got [bbbb] false");
    envoy.release_barrier("det-resume");
    envoy.wait_for_log("got detached resume: ");
    envoy.release_barrier("det-hold");
    envoy.wait_for_log("got hold callback");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "aaaa<bbbb>");
    assert!(envoy
        .wait_for_log("got detached resume: ")
        .ends_with("got detached resume: false"));
    envoy.assert_healthy();
}

#[test]
fn pause_with_a_callout_holds_the_piece_for_the_trailers() {
    let envoy = Envoy::builder(json!({"script": r#"
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if !last {
                http_get("upstream", "/barrier/pause-call/2", [], 30000, |s| { log_info("got callback"); });
                return PAUSE;
            }
            try { append_request_body("END"); } catch (e) { log_info(`got error ${e}`); }
        }"#}))
    .enable_trailers()
    .start();
    let mut request = envoy.piecewise(&chunked_head("/pause-call", ""));
    request.send(&piece(b"aaaa"));
    envoy.wait_for_log("got [aaaa] false");
    envoy.release_barrier("pause-call");
    envoy.wait_for_log("got callback");
    request.send(b"0\r\nx-sum: 4\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "aaaaEND");
    envoy.assert_healthy();
}

#[test]
fn a_holding_chunk_callback_chains_a_callout_that_holds_too() {
    let envoy = Envoy::with_script(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("upstream", "/barrier/first/2", [], 30000, |s| {
                    replace_request_body("[" + get_request_body() + "]");
                    http_get("upstream", "/barrier/second/2", [], 30000, |s| {
                        log_info(`got second sees ${get_request_body()}`);
                        replace_request_body("<" + get_request_body() + ">");
                    });
                });
            } else {
                replace_request_body(chunk.to_upper());
            }
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/chain-hold", ""));
    request.send(&piece(b"aaaa"));
    envoy.wait_for_log("got [aaaa] false");
    envoy.release_barrier("first");
    request.send(&piece(b"bbbb"));
    envoy.release_barrier("second");
    envoy.wait_for_log("got [bbbb] false");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "<[aaaa]>BBBB");
    envoy.assert_healthy();
}

#[test]
fn two_body_callouts_answered_in_reverse_keep_content_length_exact() {
    let envoy = Envoy::builder(
        json!({"allow_on_headers_stop_iteration": true, "script": r#"
        fn on_request_body() {
            http_get("upstream", "/barrier/b1/2", [], 30000, |s| { append_request_body("|one"); });
            http_get("upstream", "/barrier/b2/2", [], 30000, |s| { append_request_body("|two!"); });
        }"#}),
    )
    .allow_on_headers_stop_iteration(true)
    .start();
    let mut request = envoy.piecewise(
        "POST /cl HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: 5\r\n\r\n",
    );
    request.send(b"hello");
    envoy.release_barrier("b2");
    envoy.release_barrier("b1");
    let reply = request.reply();
    assert_status(&reply, 200);
    let echo = reply.echo();
    assert_eq!(echo.body, "hello|two!|one");
    assert_eq!(echo.header("content-length"), Some("14"));
    envoy.assert_healthy();
}

/// A late header callback can't write the headers that went on: a script error, where Envoy
/// would drop the write without a word.
#[test]
fn a_late_header_callback_cannot_write_headers_that_went_on() {
    let envoy = Envoy::with_script(
        r#"fn on_request_headers() {
            http_get("upstream", "/a", [], 5000, |s| { resume_http_request(); });
            http_get("upstream", "/barrier/late-write/2", [], 30000, |s| {
                try {
                    add_request_header("x-late", "1");
                    log_info("got write ok");
                } catch (e) { log_info(`got error ${e}`); }
            });
        }
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/late-write", "x-in: v\r\n"));
    request.send(&piece(b"aaaa"));
    envoy.wait_for_log("got [aaaa] false");
    envoy.release_barrier("late-write");
    let _ = envoy.wait_for_log("got e");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().header("x-late"), None);
    let log = logged(&envoy, "got ");
    assert!(
        log.iter().any(|l| l.starts_with(
            "error add_request_header(): the headers went on already (the script resumed"
        )),
        "{log:?}"
    );
    envoy.assert_healthy();
}

#[test]
fn a_resume_counts_once_even_in_a_caught_throw() {
    let envoy = Envoy::with_script(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("upstream", "/a", [], 5000, |s| {
                    try { log_info(`got first ${resume_http_request()}`); throw "x"; } catch (e) {}
                    log_info(`got second ${resume_http_request()}`);
                    replace_request_body("A");
                });
                http_get("upstream", "/barrier/rt/2", [], 30000, |s| {
                    log_info(`got late ${resume_http_request()}`);
                });
            } else { replace_request_body(chunk.to_upper()); }
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/rt", ""));
    request.send(&piece(b"aaaa"));
    envoy.wait_for_log("got second");
    request.send(&piece(b"bbbb"));
    envoy.wait_for_log("got [bbbb] false");
    envoy.release_barrier("rt");
    envoy.wait_for_log("got late");
    request.send(b"0\r\n\r\n");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "ABBBB");
    assert!(envoy.plugin_log_lines("resuming the").is_empty());
    envoy.assert_healthy();
}

#[test]
fn a_late_header_callback_chain_does_not_keep_a_body_waiting() {
    let envoy = Envoy::with_script(
        r#"fn on_request_headers() {
            http_get("upstream", "/a", [], 5000, |s| { resume_http_request(); });
            http_get("upstream", "/barrier/hb-late/2", [], 30000, |s| {
                log_info("got late header callback");
                http_get("upstream", "/barrier/hb-chain/2", [], 30000, |s| {});
            });
        }
        fn on_request_body() {
            log_info(`got body [${get_request_body()}]`);
            http_get("upstream", "/barrier/hb-body/2", [], 30000, |s| {
                log_info("got body callback");
                append_request_body("|B");
            });
        }"#,
    );
    let mut request = envoy.piecewise(&chunked_head("/hb", ""));
    request.send(&piece(b"hello")).send(b"0\r\n\r\n");
    envoy.wait_for_log("got body [hello]");
    envoy.release_barrier("hb-late");
    envoy.wait_for_log("got late header callback");
    envoy.release_barrier("hb-body");
    envoy.wait_for_log("got body callback");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "hello|B");
    envoy.release_barrier("hb-chain");
    envoy.assert_healthy();
}

/// A late request callback's `send_http_response()` after the response headers went on to
/// the client is a script error, not a local reply that cuts the response short: the
/// response chunk's callout keeps its hold and the response ends whole.
#[test]
fn a_late_local_response_after_the_response_headers_is_refused() {
    let envoy = Envoy::with_script(
        r#"fn on_request_headers() {
            http_get("upstream", "/a", [], 5000, |s| { resume_http_request(); });
            http_get("upstream", "/barrier/late-local/2", [], 30000, |s| {
                try {
                    send_http_response(403, [], "late forbidden");
                    log_info("got local sent");
                } catch (e) { log_info(`got local error: ${e}`); }
            });
        }
        fn on_response_chunk(chunk, last) {
            if get_context("asked") == () {
                set_context("asked", true);
                log_info("got response chunk");
                http_get("upstream", "/barrier/resp-hold/2", [], 30000, |s| {});
            }
        }"#,
    );
    let mut request = envoy.piecewise(
        "POST /late-local HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: 5\r\n\r\n",
    );
    request.send(b"hello");
    envoy.wait_for_log("got response chunk");
    envoy.release_barrier("late-local");
    let line = envoy.wait_for_log("got local ");
    assert!(
        line.ends_with(
            "got local error: send_http_response(): too late: the response headers went on \
             to the client already"
        ),
        "{line}"
    );
    envoy.release_barrier("resp-hold");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "hello");
    envoy.assert_healthy();
}

/// The client's trailers end the body with nothing held; the last call makes a callout. Its
/// callback can't add data (the data went on before the trailers): a script error, as in the
/// last call itself, not a write lost without a word.
#[test]
fn a_last_call_callback_at_the_trailers_cannot_add_data() {
    let envoy = Envoy::builder(json!({"script": r#"
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if last {
                http_get("upstream", "/barrier/last-call/2", [], 30000, |s| {
                    try { append_request_body("!tail"); } catch (e) { log_info(`got error: ${e}`); }
                });
            }
        }"#}))
    .enable_trailers()
    .start();
    let mut request = envoy.piecewise(&chunked_head("/last-call", ""));
    request.send(&piece(b"hello"));
    envoy.wait_for_log("got [hello] false");
    request.send(b"0\r\nx-sum: 5\r\n\r\n");
    envoy.wait_for_log("got [] true");
    envoy.release_barrier("last-call");
    let reply = request.reply();
    assert_status(&reply, 200);
    assert_eq!(reply.echo().body, "hello");
    let line = envoy.wait_for_log("got error: ");
    assert!(
        line.contains("append_request_body(): the message ended with trailers"),
        "{line}"
    );
    envoy.assert_healthy();
}

/// Both sides wait for callouts at once: a request chunk's callout holds the whole request
/// body while the upstream already answers and a response-header callout holds the response.
/// Each side resumes when its own callouts are answered, whichever comes first. Ordered by
/// the log and the upstream's barrier, not by time.
#[test]
fn the_request_and_the_response_wait_for_their_own_callouts() {
    let server = StreamServer::start();
    let envoy = envoy(
        &server,
        json!({ "script": r#"
            fn on_request_chunk(chunk, last) {
                if get_context("asked") == () {
                    set_context("asked", true);
                    http_get("upstream", "/barrier/both-sides/2", [], 30000, |status| {
                        log_info("request callback");
                    });
                    log_info("request chunk held");
                }
            }
            fn on_response_headers() {
                http_get("upstream", "/a", [], 5000, |status| { log_info("response callback"); });
            }
        "# }),
    );
    let mut s = TcpStream::connect(envoy.addr()).unwrap();
    s.set_read_timeout(Some(GATE_TIMEOUT)).unwrap();
    write!(
        s,
        "POST /early HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"
    )
    .unwrap();
    envoy.wait_for_log("request chunk held");
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"early\n");
    envoy.wait_for_log("response callback");
    // Now the request's callout is answered: it waits at the barrier for this call.
    envoy.release_barrier("both-sides");
    envoy.wait_for_log("request callback");
    // No more data comes to resume the request: only the callback's answer can.
    read_until(&mut s, &mut seen, b"0\r\n\r\n");
    assert!(
        seen.ends_with(b"0\r\n\r\n"),
        "the response never ended (the request was never resumed): {}",
        String::from_utf8_lossy(&seen)
    );
    let body = String::from_utf8_lossy(&dechunk(&seen)).into_owned();
    assert_eq!(body, "early\ngot 10\n");
    envoy.assert_healthy();
}

/// A message that ends with trailers has no data with end of stream: the chunk function's
/// call with `last = true` comes with the trailers, before `on_request_trailers`.
#[test]
fn trailers_end_a_streamed_body() {
    let envoy = Envoy::builder(json!({ "script": r#"
        fn on_request_chunk(chunk, last) {
            let calls = get_context("calls") ?? [];
            calls.push(`${chunk.len()}:${last}`);
            set_context("calls", calls);
            if last && get_context("add") == true { append_request_body("late"); }
        }
        fn on_request_headers() { set_context("add", get_request_header("x-add") == "1"); }
        fn on_request_trailers() {
            add_request_trailer("x-chunk-calls", (get_context("calls") ?? []).map(|c| c.to_string()).reduce(|a, b| a + " " + b));
        }"# }))
    .enable_trailers()
    .start();
    let reply = envoy.request_with_trailers("POST", "/t", &[], b"hello", &[("x-sum", "5")]);
    assert_status(&reply, 200);
    let echo = reply.echo();
    assert_eq!(echo.body, "hello");
    let trailers = &echo.raw["trailers"];
    assert!(
        trailers
            .as_array()
            .unwrap()
            .contains(&json!(["x-chunk-calls", "5:false 0:true"])),
        "{trailers}"
    );

    // Nothing can be added once the data went on: a script error, and the default policy's 500.
    let reply =
        envoy.request_with_trailers("POST", "/t", &[("x-add", "1")], b"hello", &[("x-sum", "5")]);
    assert_status(&reply, 500);
    envoy.wait_for_log("can't add body data once the trailers came");
    envoy.assert_healthy();
}

/// Streaming 1 GiB down and 200 MiB up through scripts that look at every chunk leaves the
/// VM's heap and Envoy's memory where they were.
#[test]
fn large_bodies_stream_with_flat_memory() {
    const DOWN: u64 = 1 << 30;
    const UP: u64 = 200 << 20;
    let server = StreamServer::start();
    let script = r#"
        fn on_response_chunk(chunk, last) {
            let n = (get_context("n") ?? 0) + get_response_body_bytes().len();
            set_context("n", n);
            if chunk.contains("needle") { log_warn("needle"); }
            if last { log_info(`download of ${n} bytes seen`); }
        }
        fn on_request_chunk(chunk, last) {
            let n = (get_context("up") ?? 0) + chunk.len();
            set_context("up", n);
            if last { log_info(`upload of ${n} bytes seen`); }
        }"#;
    let envoy = envoy(&server, json!({ "script": script }));
    const HEAP: &str = "wasmcustom.proxy_rhai_heap_bytes";
    // Warm up both paths, then measure.
    assert_status(&envoy.get("/stream/1000000"), 200);
    upload(envoy.addr(), 1 << 20);
    let heap_before = envoy.wait_for_stat(HEAP, |_| true);
    let rss_before = envoy.rss_bytes();

    let mut s = open(envoy.addr(), &format!("/stream/{DOWN}"));
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(e) => panic!("download broke after {received} bytes: {e}"),
        }
    }
    assert!(received > DOWN, "{received}");
    envoy.wait_for_log(&format!("download of {DOWN} bytes seen"));
    let reply = upload(envoy.addr(), UP);
    assert!(reply.contains(&format!("\"received\":{UP}")), "{reply}");
    envoy.wait_for_log(&format!("upload of {UP} bytes seen"));

    let heap_after = envoy.wait_for_stat(HEAP, |_| true);
    let rss_after = envoy.rss_bytes();
    eprintln!(
        "heap {heap_before} -> {heap_after} bytes; Envoy RSS {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        heap_after < heap_before + (4 << 20),
        "heap {heap_before} -> {heap_after}"
    );
    assert!(
        rss_after < rss_before + (64 << 20),
        "Envoy grew from {} to {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(vm_failures(&envoy.log()).is_empty());
    envoy.assert_healthy();
}

/// A chunk function that can't change its body (the script names none of that side's
/// writers) leaves `content-length` as it was: the response keeps its framing. The request,
/// whose pieces the script rewrites, goes on chunked.
#[test]
fn a_body_the_script_cannot_change_keeps_its_content_length() {
    const LEN: u64 = 300_000;
    let server = StreamServer::start();
    let envoy = envoy(
        &server,
        json!({ "script": r#"
            fn on_request_chunk(chunk, last) { replace_request_body(chunk.to_upper()); }
            fn on_response_chunk(chunk, last) {
                set_context("n", (get_context("n") ?? 0) + chunk.bytes);
                if last { log_info(`response of ${get_context("n")} bytes seen`); }
            }"# }),
    );
    let mut s = open(envoy.addr(), &format!("/stream/{LEN}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
    assert!(
        head.contains(&format!("content-length: {LEN}\r\n")),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(raw.len() - head_end, LEN as usize);
    envoy.wait_for_log(&format!("response of {LEN} bytes seen"));

    let reply = upload(envoy.addr(), 1 << 20);
    assert!(reply.contains(r#""chunked":true"#), "{reply}");
    assert!(
        reply.contains(&format!(r#""received":{}"#, 1 << 20)),
        "{reply}"
    );
    assert!(vm_failures(&envoy.log()).is_empty());
    envoy.assert_healthy();
}

/// Uploads `len` bytes with `content-length`, 64 KiB at a time; returns the raw response.
fn upload(addr: SocketAddr, len: u64) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /discard HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {len}\r\n\r\n"
    )
    .unwrap();
    let block = [b'u'; 64 << 10];
    let mut left = len;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        s.write_all(&block[..k]).unwrap();
        left -= k as u64;
    }
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    String::from_utf8_lossy(&reply).into_owned()
}

/// Over HTTP/2 (nghttp, prior knowledge): the request's DATA frames and trailers, and the
/// response's, keep their framing when chunk functions change the pieces' sizes.
#[test]
fn http2_frames_stay_correct_when_chunks_change_size() {
    let envoy = Envoy::builder(json!({ "script": r#"
        fn on_request_chunk(chunk, last) {
            replace_request_body(chunk.to_upper() + chunk.to_upper());
        }
        fn on_response_chunk(chunk, last) {
            if last { append_response_body("!"); }
        }"# }))
    .allow_http2()
    .enable_trailers()
    .start();
    let dir = std::env::temp_dir().join(format!("e2e-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("body");
    std::fs::write(&data, "ab").unwrap();
    let out = std::process::Command::new("nghttp")
        .arg("-d")
        .arg(&data)
        .args(["--trailer", "x-sum: 2"])
        .arg(format!("http://{}/h2", envoy.addr()))
        .output()
        .expect("nghttp (tools/setup.sh installs nghttp2-client)");
    let _ = std::fs::remove_dir_all(&dir);
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo = body
        .strip_suffix('!')
        .unwrap_or_else(|| panic!("no ! at the end: {body}"));
    let echo: serde_json::Value = serde_json::from_str(echo).unwrap();
    assert_eq!(echo["body"], "ABAB");
    assert!(
        echo["trailers"]
            .as_array()
            .unwrap()
            .contains(&json!(["x-sum", "2"])),
        "{echo}"
    );
    envoy.assert_healthy();
}

/// `scripts/upload_guard.rhai` stops an upload once it passes its size, without buffering
/// it: the client gets the 413, and the upstream never gets the whole body.
#[test]
fn upload_guard_stops_an_upload_past_its_size() {
    let server = StreamServer::start();
    let envoy = envoy(
        &server,
        json!({
            "script": include_str!("../../scripts/upload_guard.rhai"),
            "config": { "max_bytes": 1_000_000, "forbidden": ["MZ"] }
        }),
    );
    let ok = upload(envoy.addr(), 500_000);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"received\":500000"), "{ok}");
    envoy.wait_for_log("upload of 500000 bytes passed");

    // Announced too large: refused before any byte goes up.
    let big = upload_answered_early(envoy.addr(), Some(3_000_000), 48);
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    assert!(big.contains("upload larger than 1000000 bytes"), "{big}");

    // Not announced (chunked): stopped by the chunk that passes the size.
    let big = upload_answered_early(envoy.addr(), None, 48);
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    envoy.wait_for_log("upload of 500000 bytes passed");
    assert!(vm_failures(&envoy.log()).is_empty());
    envoy.assert_healthy();
}

/// Uploads `pieces` × 64 KiB (with `content-length: len`, or chunked) from one thread while
/// reading the answer in this one: the writer stops once the answer came (a proxy refusing the
/// upload answers before it is whole, then closes). Returns the answer's bytes.
fn upload_answered_early(addr: SocketAddr, len: Option<u64>, pieces: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let framing = match len {
        Some(len) => format!("content-length: {len}"),
        None => "transfer-encoding: chunked".to_string(),
    };
    write!(
        s,
        "POST /discard HTTP/1.1\r\nhost: localhost\r\n{framing}\r\n\r\n"
    )
    .unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let (mut w, stop) = (s.try_clone().unwrap(), answered.clone());
    let writer = thread::spawn(move || {
        let block = [b'c'; 64 << 10];
        for _ in 0..pieces {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let sent = match len {
                Some(_) => w.write_all(&block),
                None => write!(w, "{:x}\r\n", block.len())
                    .and_then(|()| w.write_all(&block))
                    .and_then(|()| w.write_all(b"\r\n")),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"\r\n\r\n");
    answered.store(true, Ordering::SeqCst);
    let mut rest = [0u8; 4096];
    while let Ok(n) = s.read(&mut rest) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&rest[..n]);
    }
    let _ = writer.join();
    String::from_utf8_lossy(&seen).into_owned()
}
