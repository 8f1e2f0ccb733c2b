//! Traffic and service faults in real Envoy: each costs at most its own request, and the VM
//! keeps serving.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::json;

use crate::support::Envoy;

const HEADERS_SCRIPT: &str = r#"
fn on_request_headers() {
    let all = get_request_headers();
    let long = get_request_header("x-long") ?? "";
    add_request_header("x-seen", `${all.len()}/${long.len()}`);
}
fn on_request_body() {
    replace_request_body(get_request_body_bytes());
}
"#;

#[test]
fn very_long_and_very_many_headers() {
    let envoy = Envoy::with_script(HEADERS_SCRIPT);
    let long = "v".repeat(50_000);
    let r = envoy.request("GET", "/long", &[("x-long", &long)], b"");
    assert_eq!(r.status, 200);
    let seen = r.echo().header("x-seen").unwrap_or_default().to_string();
    let (count, long_len) = seen.split_once('/').unwrap_or_default();
    assert_eq!(long_len, "50000", "the script read the whole 50 kB value");
    let others: usize = count.parse::<usize>().unwrap() - 1;

    let many: Vec<(String, String)> = (0..90)
        .map(|i| (format!("x-h{i}"), format!("value-{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = envoy.request("GET", "/many", &refs, b"");
    assert_eq!(r.status, 200);
    let expected = format!("{}/0", others + 90);
    assert_eq!(
        r.echo().header("x-seen"),
        Some(expected.as_str()),
        "all 90 headers seen"
    );
    envoy.assert_healthy();
}

#[test]
fn empty_and_binary_bodies() {
    let envoy = Envoy::with_script(HEADERS_SCRIPT);
    let r = envoy.request("POST", "/empty", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().body_len, 0);
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let r = envoy.request(
        "POST",
        "/binary",
        &[("content-type", "application/octet-stream")],
        &binary,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echo().body_len,
        binary.len(),
        "every byte through the script's blob round trip"
    );
    envoy.assert_healthy();
}

#[test]
fn http2_clients() {
    let envoy = Envoy::builder(json!({"script": HEADERS_SCRIPT}))
        .allow_http2()
        .start();
    let url = format!("http://{}/h2", envoy.addr());
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-H",
            "x-long: abc",
            "--data-binary",
            "hello",
            &url,
        ])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains(r#"["x-seen","11/3"]"#),
        "the script saw the HTTP/2 request's headers: {body}"
    );
    assert!(body.contains(r#""body":"hello""#), "{body}");
    envoy.assert_healthy();
}

#[test]
fn clients_that_reset_mid_body() {
    let envoy = Envoy::with_script(HEADERS_SCRIPT);
    for _ in 0..3 {
        let mut s = TcpStream::connect(envoy.addr()).unwrap();
        s.write_all(
            b"POST /cut HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n400\r\npartial",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        crate::support::set_linger_zero(&s); // an abortive close: a reset, not a FIN
        drop(s);
    }
    assert_eq!(envoy.get("/after").status, 200);
    envoy.assert_healthy();
}

#[test]
fn callout_targets_that_answer_garbage_or_hang_up() {
    // A "service" that answers anything but HTTP, then closes.
    let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = garbage.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in garbage.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"\x00\xffNOT HTTP AT ALL\r\n\r\n");
        }
    });
    let envoy = Envoy::builder(json!({"script": r#"
        fn on_request_headers() {
            http_get("garbage", "/", [], 2000, |status, headers, body| {
                add_request_header("x-callout", `${status}`);
            });
        }
    "#}))
    .cluster("garbage", port)
    .start();
    for _ in 0..3 {
        let r = envoy.get("/g");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.echo().header("x-callout"),
            Some("502"),
            "Envoy answers a garbled upstream with its own 502"
        );
    }
    envoy.assert_healthy();
}

/// One call that makes a huge value out of a small one. Rhai made the value and then checked its
/// size: the memory it took stayed with the VM for good, or, past the VM's 1 GB, the failed
/// allocation trapped it.
const AMPLIFY_SCRIPT: &str = r#"
fn on_request_headers() {
    let s = "x";
    s.pad(8000000, 'x');
    switch get_request_header("x-op") {
        // 8 MB times 1,000: 8 GB asked for.
        "replace" => { let t = "y"; t.pad(1000, 'y'); s.replace("x", t); }
        // A value per character, most with a string of their own: ~380 MB, and 128 MB.
        "split" => s.split(""),
        "chars" => s.to_chars(),
    }
}
"#;

#[test]
fn one_call_cannot_make_a_value_far_past_the_limits() {
    let envoy = Envoy::with_script(AMPLIFY_SCRIPT);
    let op = |op: &str| envoy.request("GET", "/", &[("x-op", op)], b"");
    assert_eq!(op("none").status, 200);
    let rss = envoy.rss_bytes();
    for (what, phrase) in [
        ("replace", "Length of string too large"),
        ("split", "Size of array/BLOB too large"),
        ("chars", "Size of array/BLOB too large"),
    ] {
        // 503 would be the trapped VM.
        assert_eq!(op(what).status, 500, "{what}");
        assert_eq!(op("none").status, 200, "after {what}");
        envoy.wait_for_log(phrase);
    }
    // Refused before they were made, they took no more than the 8 MB string.
    let grown = envoy.rss_bytes().saturating_sub(rss);
    assert!(
        grown < 64 << 20,
        "Envoy's memory grew by {} MiB",
        grown >> 20
    );
    envoy.assert_healthy();
}

/// Texts that grow in one call, with the limits at their highest. Rhai checked a text's length
/// only once it was whole, and a VM that asks for more than its 1 GB traps:
/// - a debug text escapes control characters (`\u{1}`: five bytes for one, `\u{1f}` six):
///   `to_debug` of a 120 MB string of `\x01` made a 600 MB text, growing its buffer to 1 GiB;
/// - a character's upper case can take three times its bytes (`ΐ` to `Ϊ́`): `to_upper` of a
///   160 MB string made a 480 MB text, growing its buffer to 640 MB;
/// - `url_encode` writes three bytes for each but a letter or a digit: of a 120 MB string of
///   `\x01`, 360 MB, in a buffer grown by doubling.
///
/// Each is refused where it would cross the string size limit.
#[test]
fn texts_stop_at_the_string_size_limit_even_at_the_highest_limits() {
    let envoy = Envoy::builder(json!({
        "script": r#"
            fn on_request_headers() {
                let op = get_request_header("x-op") ?? "";
                if op == "" { return; }
                let s = "";
                if op.ends_with("upper") {
                    s.pad(60000000, 'ΐ');
                } else {
                    s.pad(120000000, '\x01');
                }
                switch op {
                    "to_debug" => s.to_debug(),
                    "debug" => debug(s),
                    "array" => `${[s]}`,
                    "map" => `${#{ k: s }}`,
                    "plus" => "x" + [s],
                    "to_upper" => s.to_upper(),
                    "make_upper" => s.make_upper(),
                    "url_encode" => url_encode(s),
                }
            }
        "#,
        "limits": {"max_string_size": 128 << 20, "max_memory": 256 << 20, "max_operations": 20_000_000},
    }))
    .start();
    for op in [
        "to_debug",
        "debug",
        "array",
        "map",
        "plus",
        "to_upper",
        "make_upper",
        "url_encode",
    ] {
        // 503 would be the trapped VM.
        let r = envoy.request("GET", "/", &[("x-op", op)], b"");
        assert_eq!(r.status, 500, "{op}");
    }
    envoy.wait_for_log("Length of string too large");
    assert_eq!(envoy.request("GET", "/", &[], b"").status, 200);
    envoy.assert_healthy();
}

/// A body's text has each invalid UTF-8 byte replaced by U+FFFD, three bytes: with
/// `max_body_size` at 200 MiB (and Envoy's buffers raised to match), a 150 MB body of `0xff`
/// made a 450 MB text in one call, and the failed allocation trapped the VM. The text's length
/// is now worked out first, and one over the string size limit refused; here at the highest
/// `max_body_size`, 128 MiB.
#[test]
fn a_body_whose_text_is_too_long_is_refused_before_it_is_made() {
    let envoy = Envoy::builder(json!({
        "script": "fn on_request_body() { get_request_body(); }",
        "limits": {"max_body_size": 128 << 20, "max_memory": 256 << 20},
    }))
    .buffer_limit(256 << 20)
    .start();
    let r = envoy.request("POST", "/", &[], &vec![0xff; 120_000_000]);
    // 503 would be the trapped VM.
    assert_eq!(r.status, 500);
    envoy.wait_for_log(
        "get_request_body(): the text would be 360000000 bytes, more than \
         limits.max_string_size (8388608)",
    );
    assert_eq!(envoy.request("POST", "/", &[], b"ok").status, 200);
    envoy.assert_healthy();
}

/// Within the size limits a JSON document can take ~30 times its text in heap (`[[[[]]]]`: four
/// arrays in 8 bytes), all in one call, where the engine's check of `limits.max_memory` (every
/// 64 operations) doesn't look: `parse_json` checks the limit while it parses.
#[test]
fn parse_json_stops_at_the_memory_limit_while_parsing() {
    let envoy = Envoy::builder(json!({
        "script": "fn on_request_body() { parse_json(get_request_body()); }",
        "limits": {"max_memory": 4 << 20},
    }))
    .start();
    assert_eq!(envoy.request("POST", "/", &[], b"[]").status, 200);
    let rss = envoy.rss_bytes();
    // 990 kB of text, 440,000 arrays: ~33 MB of heap once parsed (measured in Envoy).
    let doc = format!("[{}]", vec!["[[[[]]]]"; 110_000].join(","));
    let r = envoy.request("POST", "/", &[], doc.as_bytes());
    assert_eq!(r.status, 500);
    envoy.wait_for_log("parse_json(): document too large: memory limit");
    assert_eq!(envoy.request("POST", "/", &[], b"[]").status, 200);
    let grown = envoy.rss_bytes().saturating_sub(rss);
    assert!(
        grown < 16 << 20,
        "Envoy's memory grew by {} MiB",
        grown >> 20
    );
    envoy.assert_healthy();
}

/// Values that nest deep, closures that capture themselves, and both handed to `to_json`.
const VALUES_SCRIPT: &str = r#"
fn nest(calls, depth) {
    if calls > 0 { return nest(calls - 1, depth); }
    let a = [];
    for i in 1..depth { a = [a]; }
    let copy = a;
    a.to_debug().len() + to_json(copy).len()
}
fn on_request_headers() {
    switch get_request_header("x-op") {
        "deep-array" => { let a = []; loop { a = [a]; } }
        "deep-map" => { let m = #{}; loop { m = #{ m: m }; } }
        "deep-closure" => { let f = || 0; loop { let g = f; f = || g; } }
        "at-limit" => add_request_header("x-len", nest(30, 512).to_string()),
        "cycle" => {
            let f = 0; f = || f;
            let m = #{ pad: blob(8192) }; m.me = || m;
        }
        "json-cycle" => { let m = #{}; m.me = || m; to_json(m); }
        "bad-sort" => {
            let a = []; for i in 0..500 { a.push(i); }
            a.sort(|x, y| if (x + y) % 3 == 0 { -1 } else { 1 });
            add_request_header("x-len", a.len().to_string());
        }
        "sleep" => sleep(1),
    }
}
"#;

#[test]
fn deep_and_cyclic_values_cost_only_their_request() {
    let envoy = Envoy::builder(json!({
        "script": VALUES_SCRIPT,
        "limits": {"max_value_depth": 512, "max_call_depth": 32},
    }))
    .start();
    let op = |op: &str| envoy.request("GET", "/", &[("x-op", op)], b"");

    // Each would overflow V8's stack when dropped, ~10 000 levels deep: the limit stops them.
    for deep in ["deep-array", "deep-map", "deep-closure"] {
        assert_eq!(op(deep).status, 500, "{deep}");
        envoy.wait_for_log("Nesting depth of value too large");
    }
    // The deepest value the limits allow, made at the deepest call level, then printed,
    // serialized, copied and dropped there.
    let r = op("at-limit");
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().header("x-len"), Some("2048"));
    // A closure in the map it captures has no JSON form.
    assert_eq!(op("json-cycle").status, 500);
    envoy.wait_for_log("to_json(): a Fn has no JSON form");

    // A comparer that is not a total order made Rust's sort panic (a trap); sleep() would
    // block the worker (and traps: Envoy has no WASI clock).
    let r = op("bad-sort");
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().header("x-len"), Some("500"));
    assert_eq!(op("sleep").status, 500);
    envoy.wait_for_log("sleep() is not available");

    // Cycles are freed with their request: 500 requests leaking 8 kB each would grow the heap
    // by 4 MB. The gauge moves in 64 KiB steps.
    for _ in 0..20 {
        assert_eq!(op("cycle").status, 200);
    }
    let heap = "wasmcustom.proxy_rhai_heap_bytes";
    let before = envoy.wait_for_stat(heap, |_| true);
    for _ in 0..500 {
        assert_eq!(op("cycle").status, 200);
    }
    let after = envoy.stat(heap).unwrap_or(0);
    assert!(
        after < before + (512 << 10),
        "heap {before} -> {after} bytes over 500 requests"
    );
    envoy.assert_healthy();
}

/// A websocket upstream: answers the upgrade with 101, then sends back every byte it gets.
fn websocket_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n",
                );
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A websocket through a script with body phases: the upgrade is answered 101 and the frames
/// go both ways untouched (the body phases would otherwise wait for an end that never comes).
#[test]
fn upgraded_streams_pass_through_body_phases() {
    let ws = websocket_echo();
    let envoy = Envoy::builder(json!({"script": r#"
        fn on_request_headers() { add_request_header("x-seen", "1"); }
        fn on_request_body() { replace_request_body("changed"); }
        fn on_response_body() { replace_response_body("changed"); }
    "#}))
    .cluster("ws", ws)
    .route("ws", "/ws", "ws")
    .allow_websocket()
    .start();
    let mut conn = TcpStream::connect(envoy.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nhost: example.com\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).expect("the upgrade's answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for frame in [&b"\x81\x05hello"[..], b"\x82\x03\x00\x01\x02"] {
        conn.write_all(frame).unwrap();
        let mut back = vec![0u8; frame.len()];
        conn.read_exact(&mut back)
            .expect("the frame came back through Envoy");
        assert_eq!(back, frame);
    }
    drop(conn);
    envoy.assert_healthy();
}
