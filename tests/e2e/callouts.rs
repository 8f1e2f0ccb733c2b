//! Callouts: the harness's `callout` cluster is a second echo server (see
//! `tests/support/upstream.rs` for its paths: `/token`, `/status/N`, `/delay/MS`,
//! `/barrier/NAME/N`, …).

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::support::{assert_status, Envoy, Reply};

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One script for every test: `x-op` chooses what the request does.
const SCRIPT: &str = r#"
fn on_request_headers() {
    let op = get_request_header("x-op");
    set_context("op", op);
    let id = get_request_header("x-id");
    switch op {
        "token" => {
            http_get("callout", "/token", [], 2000, |status, headers, body| {
                add_request_header("authorization", "Bearer " + parse_json(body).token);
                add_request_header("x-token-header", get_http_call_response_header("x-token"));
                for h in headers {
                    if h[0] == "x-token" { add_request_header("x-token-arg", h[1]); }
                }
                add_request_header("x-callout-status", `${status}`);
                add_request_header("x-callout-body", get_http_call_response_body());
            });
        }
        "arity" => {
            // Callbacks are given as many of status, headers, body as they take: a named
            // function, and a closure with a captured variable.
            http_get("callout", "/token", [], 2000, Fn("token_callback"));
            http_get("callout", "/token", [], 2000, |status| {
                add_request_header("x-closure", `${status}/${id}`);
            });
        }
        "deny-401" => {
            http_get("callout", "/status/401", [], 2000, |status, headers, body| {
                if status == 401 {
                    send_http_response(401, [["www-authenticate", "Bearer"]], `denied by auth (${status})`);
                }
            });
        }
        "deny-503" => {
            dispatch_http_call("callout", [[":method", "GET"], [":path", "/status/503"], [":authority", "auth"]], (), 2000, |status, headers, body, failure| {
                send_http_response(503, #{ "x-why": "auth unavailable", "x-failure": failure ?? "answered" }, `auth answered ${status}`);
            });
        }
        "parallel" => {
            let name = get_request_header("x-barrier");
            http_get("callout", `/barrier/${name}/2?call=a`, [], 5000, |status, headers, body| {
                let echo = parse_json(body);
                add_request_header("x-a", `${status}:${echo.barrier}:${echo.path}`);
            });
            http_get("callout", `/barrier/${name}/2?call=b`, [], 5000, |status, headers, body| {
                let echo = parse_json(body);
                add_request_header("x-b", `${status}:${echo.barrier}:${echo.path}`);
            });
            http_get("callout", "/delay/300", [], 5000, |status, headers, body| {
                add_request_header("x-c", `${status}:${parse_json(body).path}`);
            });
        }
        "timeout" => {
            http_get("callout", "/delay/3000", [], 300, |status, headers, body, failure| {
                add_request_header("x-failure", failure ?? "answered");
                add_request_header("x-status", `${status}`);
                add_request_header("x-body", body);
            });
        }
        "unknown-caught" => {
            try {
                http_get("nowhere", "/x", [], 500, |status, headers, body| {
                    add_request_header("x-callback", "ran");
                });
                add_request_header("x-caught", "nothing");
            } catch (e) {
                add_request_header("x-caught", `${e}`);
            }
        }
        "unknown-uncaught" => {
            http_get("nowhere", "/x", [], 500, |status, headers, body| {});
        }
        "down" => {
            http_get("down", "/anything", [], 3000, |status, headers, body, failure| {
                add_request_header("x-failure", failure ?? "answered");
                add_request_header("x-status", `${status}`);
                add_request_header("x-body", body);
            });
        }
        "resume-early" => {
            http_get("callout", "/json", [], 2000, |status, headers, body| {
                add_request_header("x-first", `${status}`);
                let resumed = resume_http_request();
                log_info(`first callback ${id}: resumed=${resumed}`);
            });
            // Answered only once the request itself reaches the upstream at the same barrier.
            http_get("upstream", `/barrier/${id}/2`, [], 30000, |status, headers, body| {
                let again = resume_http_request();
                log_info(`late callback ${id}: status=${status} resumed=${again} barrier=${parse_json(body).barrier}`);
            });
        }
        "reset" => {
            http_get("resetter", get_request_header("x-target"), [], 5000, |status, headers, body, failure| {
                add_request_header("x-failure", failure ?? "answered");
                add_request_header("x-status", `${status}`);
                add_request_header("x-body", body);
            });
        }
        "throw-in-callback" => {
            http_get("callout", "/json", [], 2000, |status, headers, body| {
                throw "boom in the callback";
            });
        }
        "echo-id" => {
            let n = get_request_header("x-n");
            http_get("callout", `/barrier/many/${n}`, [["x-id", id]], 30000, |status, headers, body| {
                let echo = parse_json(body);
                let seen = echo.headers.filter(|p| p[0] == "x-id");
                add_request_header("x-id-seen", if seen.len() == 1 { seen[0][1] } else { `${seen}` });
                add_request_header("x-id-captured", id);
                add_request_header("x-barrier", echo.barrier);
            });
        }
        "slow" => {
            http_get("callout", "/delay/1000", [], 5000, |status, headers, body| {
                log_info(`slow callback ran for ${id}`);
                add_request_header("x-slow", `${status}`);
            });
        }
    }
}

fn token_callback(status, headers, body) {
    add_request_header("x-named", `${status}/${headers.len() > 0}/${body}`);
}

fn on_request_body() {
    if get_context("op") == "request-body" {
        http_post("callout", "/scan", #{ "content-type": "text/plain" }, get_request_body(), 2000, |status, headers, body| {
            let echo = parse_json(body);
            replace_request_body(`scanned(${echo.method} ${echo.path}): ${echo.body}`);
            set_context("scan", status);
        });
    }
}

fn on_response_headers() {
    switch get_context("op") {
        "response-headers" => {
            http_get("callout", "/token", [], 2000, |status, headers, body| {
                add_response_header("x-token", get_http_call_response_header("x-token"));
                add_response_header("x-callout-status", `${status}`);
                add_response_header("x-upstream-status", get_response_header(":status"));
            });
        }
        "response-headers-deny" => {
            http_get("callout", "/status/403", [], 2000, |status, headers, body| {
                send_http_response(451, [], `response withheld (${status})`);
            });
        }
    }
}

fn on_response_body() {
    if get_context("op") == "response-body" {
        http_get("callout", "/json", [], 2000, |status, headers, body| {
            replace_response_body(get_response_body() + "|" + body + "|" + status);
        });
    }
}
"#;

/// A target on 127.0.0.1 that resets each connection: `/before` closes it without a byte of an
/// answer, `/after` once the answer's headers and part of its body are sent. Stops when dropped.
struct Resetter {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Resetter {
    fn start() -> Self {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if request.starts_with(b"GET /after ") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part of it",
                    );
                    let _ = conn.flush();
                }
                let _ = conn.shutdown(Shutdown::Both);
            }
        });
        Resetter {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Resetter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start() -> Envoy {
    Envoy::builder(json!({ "script": SCRIPT }))
        .cluster("down", closed_port())
        .start()
}

fn op(envoy: &Envoy, op: &str, path: &str) -> Reply {
    envoy.request("GET", path, &[("x-op", op)], b"")
}

#[test]
fn callbacks_add_headers_and_answer_locally() {
    let envoy = start();

    // A token from the callout's body and headers, added to the request.
    let r = op(&envoy, "token", "/api/token");
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.path, "/api/token");
    assert_eq!(echo.header("authorization"), Some("Bearer abc"));
    assert_eq!(echo.header("x-token-header"), Some("abc"));
    assert_eq!(echo.header("x-token-arg"), Some("abc"));
    assert_eq!(echo.header("x-callout-status"), Some("200"));
    assert_eq!(echo.header("x-callout-body"), Some(r#"{"token":"abc"}"#));
    assert_eq!(envoy.callout.hits("/token"), 1);

    // A named callback gets all three; a closure taking one, with what it captured.
    let r = envoy.request(
        "GET",
        "/api/arity",
        &[("x-op", "arity"), ("x-id", "id-7")],
        b"",
    );
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-named"), Some(r#"200/true/{"token":"abc"}"#));
    assert_eq!(echo.header("x-closure"), Some("200/id-7"));
    assert_eq!(envoy.callout.hits("/token"), 3);

    // A callback answering 401 locally: the upstream never sees the request.
    let r = op(&envoy, "deny-401", "/api/deny-401");
    assert_status(&r, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.text(), "denied by auth (401)");
    assert_eq!(envoy.upstream.hits("/api/deny-401"), 0);

    // And one answering 503 (dispatch_http_call with a map of headers).
    let r = op(&envoy, "deny-503", "/api/deny-503");
    assert_status(&r, 503);
    assert_eq!(r.header("x-why"), Some("auth unavailable"));
    assert_eq!(
        r.header("x-failure"),
        Some("answered"),
        "a target's own 503 is an answer"
    );
    assert_eq!(r.text(), "auth answered 503");
    assert_eq!(envoy.upstream.hits("/api/deny-503"), 0);
    assert_eq!(envoy.callout.hits("/status/503"), 1);

    // The next request is served normally.
    assert_eq!(envoy.get("/after").echo().path, "/after");
    envoy.assert_healthy();
}

#[test]
fn refused_dispatches_failed_targets_and_failing_callbacks() {
    let envoy = start();

    // An unknown cluster is refused at dispatch: a script error the script catches.
    let r = op(&envoy, "unknown-caught", "/err/caught");
    assert_status(&r, 200);
    let echo = r.echo();
    let caught = echo.header("x-caught").unwrap_or("");
    assert!(
        caught.contains("refused the call to cluster 'nowhere'"),
        "x-caught: {caught:?}"
    );
    assert_eq!(echo.header("x-callback"), None);

    // Uncaught: the error policy (500), and the log says why.
    let r = op(&envoy, "unknown-uncaught", "/err/uncaught");
    assert_status(&r, 500);
    assert_eq!(r.text(), "Internal Server Error\n");
    assert_eq!(envoy.upstream.hits("/err/uncaught"), 0);
    let line = envoy.wait_for_log("refused the call to cluster 'nowhere'");
    assert!(
        line.contains("script error in on_request_headers"),
        "{line}"
    );

    // A target that refuses connections: the callback gets Envoy's own 503 for a connection
    // failure (not its timeout's 504, which a wait for the 3 s timeout would give).
    let r = op(&envoy, "down", "/err/down");
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-status"), Some("503"), "{echo:?}");
    assert_eq!(echo.header("x-failure"), Some("connect_failure"));
    let body = echo.header("x-body").unwrap_or("");
    assert!(
        body.contains("upstream connect error") && body.contains("remote connection failure"),
        "callback body: {body:?}"
    );

    // An error thrown in a callback: the error policy (500), and the next request is fine.
    let r = op(&envoy, "throw-in-callback", "/err/callback");
    assert_status(&r, 500);
    assert_eq!(r.text(), "Internal Server Error\n");
    assert_eq!(envoy.upstream.hits("/err/callback"), 0);
    let line = envoy.wait_for_log("boom in the callback");
    assert!(
        line.contains("script error in callout callback of on_request_headers"),
        "{line}"
    );
    let r = op(&envoy, "token", "/err/after");
    assert_status(&r, 200);
    assert_eq!(r.echo().header("authorization"), Some("Bearer abc"));

    envoy.assert_healthy();
}

/// A target that resets the connection, before answering or in the middle of its answer: the
/// callback's `failure` says `reset` both times (Envoy gives its own 503 for the first, no
/// answer at all for the second).
#[test]
fn a_reset_callout_is_told_apart() {
    let resetter = Resetter::start();
    let envoy = Envoy::builder(json!({ "script": SCRIPT }))
        .cluster("resetter", resetter.port)
        .start();
    let before = "upstream connect error or disconnect/reset before headers. reset reason: \
                  connection termination";
    for (target, status, body) in [("/before", "503", before), ("/after", "0", "")] {
        let r = envoy.request(
            "GET",
            "/reset",
            &[("x-op", "reset"), ("x-target", target)],
            b"",
        );
        assert_status(&r, 200);
        let echo = r.echo();
        assert_eq!(
            echo.header("x-failure"),
            Some("reset"),
            "{target}: {echo:?}"
        );
        assert_eq!(echo.header("x-status"), Some(status), "{target}: {echo:?}");
        assert_eq!(
            echo.header("x-body").unwrap_or(""),
            body,
            "{target}: {echo:?}"
        );
    }
    envoy.assert_healthy();
}

#[test]
fn callouts_from_the_body_and_response_phases() {
    let envoy = start();

    // From on_request_body: the callback rewrites the body it was given.
    let r = envoy.request(
        "POST",
        "/phase/request-body",
        &[("x-op", "request-body")],
        b"hello body",
    );
    assert_status(&r, 200);
    let echo = r.echo();
    echo.assert_framing();
    assert_eq!(echo.body, "scanned(POST /scan): hello body");
    assert_eq!(envoy.callout.hits("/scan"), 1);

    // From on_response_headers: the callback adds response headers.
    let r = op(&envoy, "response-headers", "/phase/response-headers");
    assert_status(&r, 200);
    assert_eq!(r.header("x-token"), Some("abc"));
    assert_eq!(r.header("x-callout-status"), Some("200"));
    assert_eq!(r.header("x-upstream-status"), Some("200"));
    assert_eq!(r.echo().path, "/phase/response-headers");

    // A callback of on_response_headers answering locally instead of the upstream's answer.
    let r = op(
        &envoy,
        "response-headers-deny",
        "/phase/response-headers-deny",
    );
    assert_status(&r, 451);
    assert_eq!(r.text(), "response withheld (403)");
    assert_eq!(envoy.upstream.hits("/phase/response-headers-deny"), 1);

    // From on_response_body: the callback rewrites the whole body.
    let r = op(&envoy, "response-body", "/bytes/10");
    assert_status(&r, 200);
    if let Some(len) = r.header("content-length") {
        assert_eq!(len.parse::<usize>().ok(), Some(r.body.len()), "{r:?}");
    }
    assert_eq!(r.text(), r#"abcdefghij|{"fixed":"json","n":1}|200"#);

    envoy.assert_healthy();
}

#[test]
fn parallel_calls_timeouts_and_an_early_resume() {
    let envoy = start();

    // Three calls at once: two wait for each other at the callout server (so both are in
    // flight together), the third lands later; all three callbacks run before the request
    // goes on, so the upstream gets all three headers.
    let r = envoy.request(
        "GET",
        "/timing/parallel",
        &[("x-op", "parallel"), ("x-barrier", "pair")],
        b"",
    );
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(
        echo.header("x-a"),
        Some("200:reached:/barrier/pair/2?call=a"),
        "{echo:?}"
    );
    assert_eq!(
        echo.header("x-b"),
        Some("200:reached:/barrier/pair/2?call=b"),
        "{echo:?}"
    );
    assert_eq!(echo.header("x-c"), Some("200:/delay/300"), "{echo:?}");
    assert_eq!(envoy.upstream.hits("/timing/parallel"), 1);

    // A timeout: the callback runs with Envoy's own 504 (a callback that waited for the target
    // would see its 200 after 3 s); the request goes on.
    let r = op(&envoy, "timeout", "/timing/timeout");
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-status"), Some("504"), "{echo:?}");
    assert_eq!(echo.header("x-failure"), Some("timeout"));
    assert_eq!(echo.header("x-body"), Some("upstream request timeout"));

    // resume_http_request() in the first callback, with a second call still pending: the
    // request goes on at once. The second call and the request meet at one barrier of the
    // upstream, so the late call is answered only once the request got there (had the request
    // waited for it, the late call would have seen the barrier time out); the request's own
    // answer then waits at a second barrier that this test joins once the late callback ran,
    // which keeps the stream alive for it. Nothing resumes twice.
    let r = thread::scope(|scope| {
        let request = scope.spawn(|| {
            envoy.request(
                "GET",
                "/barrier/early-1/2?then=early-1-done",
                &[("x-op", "resume-early"), ("x-id", "early-1")],
                b"",
            )
        });
        let first = envoy.wait_for_log("first callback early-1: ");
        assert!(first.contains("resumed=true"), "{first}");
        let late = envoy.wait_for_log("late callback early-1: ");
        assert!(
            late.contains("status=200 resumed=false barrier=reached"),
            "{late}"
        );
        let mut upstream = TcpStream::connect(("127.0.0.1", envoy.upstream.port())).unwrap();
        upstream
            .write_all(b"GET /barrier/early-1-done/2 HTTP/1.1\r\nhost: upstream\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut upstream, &mut answer).unwrap();
        assert!(answer.contains("\"reached\""), "{answer}");
        request.join().unwrap()
    });
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-first"), Some("200"));
    assert_eq!(
        envoy.upstream.hits("/barrier/early-1/2"),
        1,
        "the late call's alone"
    );
    let log = envoy.log();
    assert!(
        !log.contains("resuming the Request failed"),
        "a second resume was attempted:\n{log}"
    );

    envoy.assert_healthy();
}

#[test]
fn two_hundred_concurrent_requests_each_see_their_own_answer() {
    const N: usize = 200;
    let envoy = start();
    let n = N.to_string();
    let replies: Vec<(String, Reply)> = thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (envoy, n) = (&envoy, &n);
                s.spawn(move || {
                    let id = format!("req-{i}-{}", i * 7919 % 1000);
                    let r = envoy.request(
                        "GET",
                        &format!("/many/{i}"),
                        &[("x-op", "echo-id"), ("x-id", &id), ("x-n", n)],
                        b"",
                    );
                    (id, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (id, r)) in replies.iter().enumerate() {
        assert_status(r, 200);
        let echo = r.echo();
        assert_eq!(echo.path, format!("/many/{i}"));
        assert_eq!(
            echo.header("x-barrier"),
            Some("reached"),
            "the callouts were not all in flight together"
        );
        assert_eq!(echo.header("x-id-seen"), Some(id.as_str()), "{echo:?}");
        assert_eq!(echo.header("x-id-captured"), Some(id.as_str()), "{echo:?}");
    }
    assert_eq!(envoy.callout.max_in_flight(), N);
    envoy.assert_healthy();
}

#[test]
fn a_client_that_goes_away_mid_callout_leaves_no_trace() {
    let envoy = start();
    // Sent over a raw socket, closed while the callout (1 s) is pending.
    for i in 0..3 {
        let mut s = TcpStream::connect(envoy.addr()).unwrap();
        write!(
            s,
            "GET /gone/{i} HTTP/1.1\r\nhost: localhost\r\nx-op: slow\r\nx-id: gone-{i}\r\n\r\n"
        )
        .unwrap();
        s.flush().unwrap();
        thread::sleep(Duration::from_millis(200));
        if i == 2 {
            // An abortive close: a reset, not a FIN.
            crate::support::set_linger_zero(&s);
        } else {
            s.shutdown(Shutdown::Both).unwrap();
        }
        drop(s);
    }
    // Meanwhile, and after the calls would have landed, requests are served.
    let r = op(&envoy, "token", "/gone/during");
    assert_status(&r, 200);
    assert_eq!(r.echo().header("authorization"), Some("Bearer abc"));
    thread::sleep(Duration::from_millis(1500));
    for i in 0..3 {
        assert_eq!(envoy.upstream.hits(&format!("/gone/{i}")), 0);
    }
    assert_eq!(envoy.callout.hits("/delay/1000"), 3, "the calls were sent");
    let ran = envoy.plugin_log_lines("slow callback ran for gone-");
    assert!(
        ran.is_empty(),
        "a callback ran against a stream whose client left: {ran:?}"
    );
    let r = op(&envoy, "slow", "/gone/after");
    assert_status(&r, 200);
    assert_eq!(r.echo().header("x-slow"), Some("200"));
    envoy.wait_for_log("slow callback ran for ");
    envoy.assert_healthy();
}

/// A callout to a cluster named as Higress and Istio name them (`outbound|PORT||HOST`, made by
/// `service_cluster`) reaches it, with HOST as its `:authority`.
#[test]
fn a_callout_to_a_higress_cluster_name_has_its_host_as_authority() {
    let script = r#"
fn on_request_headers() {
    http_get(service_cluster("echo.example", 8080), "/seen", [], 2000, |status, headers, body| {
        let host = parse_json(body).headers.filter(|h| h[0] == "host");
        add_request_header("x-seen-host", if host.len() == 1 { host[0][1] } else { `${host}` });
        add_request_header("x-seen-status", `${status}`);
    });
}"#;
    let envoy = Envoy::builder(json!({ "script": script }))
        .upstream_alias("outbound|8080||echo.example")
        .start();
    let r = envoy.get("/higress-name");
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-seen-status"), Some("200"), "{echo:?}");
    assert_eq!(echo.header("x-seen-host"), Some("echo.example"), "{echo:?}");
    assert_eq!(envoy.upstream.hits("/seen"), 1);
    envoy.assert_healthy();
}
