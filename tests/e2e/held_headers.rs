//! Headers written from a body phase: Envoy's `allow_on_headers_stop_iteration` with the
//! plugin's key of the same name (see the README's "Headers from a body phase"), and today's
//! behaviour without them, or with Envoy's option alone.
//!
//! Measured in Envoy 1.40 with the option on: a header phase's `StopIteration` holds the
//! headers while the body still comes to the filter; the body phase (at the end of the body,
//! or at the trailers) reads and writes its message's headers and they reach the upstream or
//! the client; a local response from the body phase, the error policy's and the 500 for a
//! response over `max_body_size` or Envoy's buffer limit reach the client as responses (the
//! headers had not gone), not as resets. The plugin's key alone, without Envoy's option, holds
//! every request whose body a body phase buffers until Envoy's stream timeouts (no answer in
//! 30 s): Envoy makes the header phase's `StopIteration` a `StopAllIterationAndWatermark`
//! then, and never delivers the body.

use serde_json::{json, Value};

use crate::support::{assert_status, pattern, Envoy, Reply};

const SCRIPT: &str = r#"
fn on_request_headers() {
    set_context("op", get_request_header("x-op"));
    if get_context("op") == "callout" {
        return http_get("callout", "/token", [], 2000, |status, headers, body| {
            set_context("token", body);
        });
    }
}

fn on_request_body() {
    let op = get_context("op");
    switch op {
        "shrink" => replace_request_body("short"),
        "grow" => append_request_body("+more"),
        "local" => return send_http_response(403, [], "denied from the body phase"),
        "fail" => throw "boom",
        "body-callout" => return http_get("callout", "/token", [], 2000, |status, headers, body| {
            replace_request_body("from the callback");
            add_request_header("x-from-callback", "yes");
        }),
    }
    if get_context("token") != () {
        add_request_header("x-token", get_context("token"));
    }
    add_request_header("x-body-len", `${get_request_body_bytes().len()}`);
    replace_request_header("x-from-body", "yes");
    remove_request_header("x-drop");
}

fn on_response_body() {
    let op = get_context("op");
    switch op {
        "fail" => throw "boom",
    }
    let body = get_response_body();
    replace_response_body(body + "!!");
    add_response_header("x-redacted-count", "3");
    remove_response_header("x-gone");
}
"#;

fn start(envoy_option: Option<bool>, key: bool, policy: &str) -> Envoy {
    let mut builder = Envoy::builder(json!({
        "script": SCRIPT,
        "allow_on_headers_stop_iteration": key,
        "limits": {"max_body_size": 100_000},
        "error_policy": {"mode": policy},
    }))
    .enable_trailers();
    if let Some(allow) = envoy_option {
        builder = builder.allow_on_headers_stop_iteration(allow);
    }
    builder.start()
}

/// The response's body, after checking its framing: a `content-length`, when there is one, is
/// its length.
fn framed(r: &Reply) -> String {
    if let Some(len) = r.header("content-length") {
        assert_eq!(len.parse::<usize>().ok(), Some(r.body.len()), "{r:?}");
    }
    r.text()
}

#[test]
fn body_phases_write_their_headers_with_the_option() {
    let envoy = start(Some(true), true, "fail_closed");
    let post = |op: &str, path: &str, body: &[u8]| {
        envoy.request("POST", path, &[("x-op", op), ("x-drop", "1")], body)
    };

    // Request and response: headers added, replaced and removed in the body phase arrive;
    // content-length is kept, and exact after a rewrite.
    let r = post("plain", "/headers?x-gone=1", b"hello");
    assert_status(&r, 200);
    assert_eq!(r.header("x-redacted-count"), Some("3"));
    assert_eq!(r.header("x-gone"), None);
    assert!(r.header("content-length").is_some(), "{r:?}");
    let text = framed(&r);
    let echo: Value = serde_json::from_str(text.strip_suffix("!!").unwrap()).unwrap();
    let upstream = |name: &str| {
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert_eq!(upstream("x-from-body").as_deref(), Some("yes"));
    assert_eq!(upstream("x-body-len").as_deref(), Some("5"));
    assert_eq!(upstream("x-drop"), None);
    assert_eq!(upstream("content-length").as_deref(), Some("5"));
    for (op, sent, seen) in [
        ("shrink", "a longer body", "short"),
        ("grow", "abc", "abc+more"),
    ] {
        let r = post(op, "/x", sent.as_bytes());
        assert_status(&r, 200);
        framed(&r);
        let echo = serde_json::from_str::<Value>(r.text().strip_suffix("!!").unwrap()).unwrap();
        assert_eq!(echo["body"], seen);
        let length = echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "content-length");
        assert_eq!(
            length.map(|h| h[1].clone()),
            Some(json!(seen.len().to_string()))
        );
    }

    // A chunked request stays chunked (it had no content-length to keep).
    let r = envoy.request_chunked("POST", "/x", &[("x-op", "shrink")], &[b"ab", b"cd"]);
    let echo = serde_json::from_str::<Value>(framed(&r).strip_suffix("!!").unwrap()).unwrap();
    assert_eq!(echo["body"], "short");
    let names: Vec<&str> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"x-from-body") && !names.contains(&"content-length"),
        "{names:?}"
    );

    // Trailers: the body phase runs when they come, the headers still held; both directions.
    let r = envoy.request_with_trailers(
        "POST",
        "/trailers?x-t=1",
        &[("x-op", "grow")],
        b"abc",
        &[("x-rt", "2")],
    );
    assert_status(&r, 200);
    assert_eq!(r.header("x-redacted-count"), Some("3"));
    assert_eq!(r.trailers, [("x-t".to_string(), "1".to_string())]);
    let echo = serde_json::from_str::<Value>(r.text().strip_suffix("!!").unwrap()).unwrap();
    assert_eq!(echo["body"], "abc+more");
    assert_eq!(echo["trailers"], json!([["x-rt", "2"]]));
    assert!(echo["headers"]
        .as_array()
        .unwrap()
        .contains(&json!(["x-from-body", "yes"])));

    // A header phase's callout: the body waits for its answer, then the body phase runs.
    let r = post("callout", "/x", b"abc");
    let echo = serde_json::from_str::<Value>(framed(&r).strip_suffix("!!").unwrap()).unwrap();
    assert_eq!(echo["body"], "abc");
    let headers = echo["headers"].as_array().unwrap();
    assert!(
        headers.contains(&json!(["x-token", "{\"token\":\"abc\"}"])),
        "{headers:?}"
    );
    assert!(
        headers.contains(&json!(["x-from-body", "yes"])),
        "{headers:?}"
    );

    // The body phase's own callout: its callback writes the body and the headers.
    let r = post("body-callout", "/x", b"abc");
    let echo = serde_json::from_str::<Value>(framed(&r).strip_suffix("!!").unwrap()).unwrap();
    assert_eq!(echo["body"], "from the callback");
    let headers = echo["headers"].as_array().unwrap();
    assert!(
        headers.contains(&json!(["x-from-callback", "yes"])),
        "{headers:?}"
    );
    assert!(
        headers.contains(&json!(["content-length", "17"])),
        "{headers:?}"
    );

    // A request without a body: no request body phase; the response's still runs.
    let r = envoy.request("GET", "/x", &[("x-op", "plain")], b"");
    assert_eq!(r.header("x-redacted-count"), Some("3"));
    assert!(!framed(&r).contains("x-from-body"));

    // Local responses from the body phases are answers, not resets: the headers had not gone.
    let r = post("local", "/x", b"abc");
    assert_status(&r, 403);
    assert_eq!(r.text(), "denied from the body phase");
    let r = post("fail", "/x", b"abc");
    assert_status(&r, 500);
    let r = envoy.request("GET", "/bytes/10", &[("x-op", "fail")], b"");
    assert_status(&r, 500);
    assert_eq!(r.text(), "Internal Server Error\n");
    let r = envoy.request("GET", "/bytes/200000", &[("x-op", "plain")], b"");
    assert_status(&r, 500);
    assert_eq!(r.text(), "Internal Server Error\n");
    let r = post("plain", "/x", &pattern(200_000));
    assert_status(&r, 413);
    assert_eq!(envoy.upstream.hits("/bytes/200000"), 1);
    envoy.assert_healthy();
}

#[test]
fn envoy_buffer_limit_with_the_option() {
    let envoy = Envoy::builder(json!({
        "script": SCRIPT,
        "allow_on_headers_stop_iteration": true,
        "limits": {"max_body_size": 1_000_000},
    }))
    .buffer_limit(50_000)
    .allow_on_headers_stop_iteration(true)
    .start();
    let r = envoy.request("POST", "/x", &[("x-op", "plain")], &pattern(60_000));
    assert_status(&r, 413);
    // Over Envoy's limit a held response is answered 500 by Envoy, not reset.
    for path in ["/bytes/60000", "/chunks/30/2000"] {
        let r = envoy.request("GET", path, &[("x-op", "plain")], b"");
        assert_status(&r, 500);
        assert_eq!(r.text(), "Internal Server Error");
    }
    envoy.assert_healthy();
}

#[test]
fn without_the_option_body_phases_keep_todays_behaviour() {
    // Neither Envoy's option nor the key; then Envoy's option without the plugin's key.
    for envoy_option in [None, Some(true)] {
        let envoy = start(envoy_option, false, "fail_open");
        let r = envoy.request(
            "POST",
            "/headers?x-gone=1",
            &[("x-op", "plain"), ("x-drop", "1")],
            b"hello",
        );
        assert_status(&r, 200);
        // The failed calls changed nothing; content-length was dropped before the bodies.
        assert_eq!(r.header("x-redacted-count"), None);
        assert_eq!(r.header("x-gone"), Some("1"));
        assert_eq!(r.header("content-length"), None);
        let echo = r.echo();
        assert_eq!(echo.body, "hello");
        assert_eq!(echo.header("x-from-body"), None);
        assert_eq!(echo.header("x-drop"), Some("1"));
        assert_eq!(echo.header("content-length"), None);
        let errors = envoy.plugin_log_lines("is not available in on_request_body");
        assert!(
            errors.iter().any(|l| l.contains(
                "set allow_on_headers_stop_iteration to true in Envoy's wasm PluginConfig and in \
                 the plugin configuration"
            )),
            "{errors:?}"
        );
        assert!(!envoy
            .plugin_log_lines("is not available in on_response_body")
            .is_empty());
        // A response over max_body_size: its headers went on, so the stream is reset.
        assert!(envoy
            .try_request("GET", "/bytes/200000", &[("x-op", "plain")], b"")
            .is_err());
        envoy.assert_healthy();
    }
}

#[test]
fn envoy_option_without_the_key_holds_the_body_for_header_callouts() {
    // Envoy's option alone: a header phase's callout is a StopIteration, and Envoy delivers
    // the body (and trailers) to the plugin before the answer; the plugin holds them.
    let envoy = Envoy::builder(json!({
        "script": r#"fn on_request_headers() {
            return http_get("callout", "/token", [], 2000, |status, headers, body| {
                add_request_header("x-token", body);
            });
        }
        fn on_request_trailers() { add_request_trailer("x-t", "1"); }"#,
    }))
    .allow_on_headers_stop_iteration(true)
    .enable_trailers()
    .start();
    let r = envoy.request("POST", "/x", &[], &pattern(30_000));
    let echo = r.echo();
    assert_eq!(echo.header("x-token"), Some("{\"token\":\"abc\"}"));
    assert_eq!(echo.body_len, 30_000);
    echo.assert_framing();
    let r = envoy.request_with_trailers("POST", "/x", &[], b"abc", &[("x-a", "b")]);
    let echo = r.echo();
    assert_eq!(echo.header("x-token"), Some("{\"token\":\"abc\"}"));
    assert_eq!(echo.raw["trailers"], json!([["x-a", "b"], ["x-t", "1"]]));
    envoy.assert_healthy();
}

/// A `PAUSE` from the header phase with no callout holds the whole request, the body Envoy
/// still delivers and its trailers included, until Envoy's timeouts: here the connection
/// manager's `request_timeout` ends it (Envoy answers 504 `request timeout` once the client
/// sent the whole request), and nothing reached the upstream. (Before, the
/// trailers' call of a streamed body let the headers go, with the body the chunk function
/// grew; a buffered body stayed held.)
#[test]
fn a_pause_from_the_header_phase_holds_the_body_and_trailers_too() {
    for body_phase in [
        r#"fn on_request_chunk(chunk, last) { if last { append_request_body("|X"); } }"#,
        r#"fn on_request_body() { append_request_body("|X"); }"#,
    ] {
        let envoy = Envoy::builder(json!({
            "script": format!("fn on_request_headers() {{ return PAUSE; }} {body_phase}"),
            "allow_on_headers_stop_iteration": true,
        }))
        .allow_on_headers_stop_iteration(true)
        .enable_trailers()
        .request_timeout(std::time::Duration::from_secs(1))
        .start();
        let r = envoy.request_with_trailers("POST", "/held", &[], b"hello", &[("x-a", "b")]);
        assert_status(&r, 504);
        assert_eq!(r.text(), "request timeout");
        assert_eq!(envoy.upstream.hits("/held"), 0, "{body_phase}");
        envoy.assert_healthy();
    }
}

/// A header callback resumes the request when only part of a buffered body has come: the
/// body waits for the rest, and the body phase gets it whole (the headers go with it, without
/// `content-length`: the script let them go before the body phase).
#[test]
fn an_early_resume_with_part_of_the_body_keeps_the_body_whole() {
    let envoy = Envoy::builder(
        json!({"allow_on_headers_stop_iteration": true, "script": r#"
        fn on_request_headers() {
            http_get("upstream", "/barrier/part/2", [], 30000, |s| { resume_http_request(); });
        }
        fn on_request_body() {
            replace_request_body("<" + get_request_body() + ">");
        }"#}),
    )
    .allow_on_headers_stop_iteration(true)
    .start();
    let mut request = envoy.piecewise(
        "POST /part HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: 10\r\n\r\n",
    );
    request.send(b"hello");
    envoy.release_barrier("part");
    request.send(b"world");
    let reply = request.reply();
    assert_status(&reply, 200);
    let echo = reply.echo();
    assert_eq!(echo.body, "<helloworld>");
    assert_eq!(echo.header("content-length"), None);
    echo.assert_framing();
    envoy.assert_healthy();
}

/// Sixteen held requests at once in the one VM, half waiting on a header-phase callout while
/// the others' bodies arrive: each body phase writes its own message's headers, and each
/// client gets its own exact framing.
#[test]
fn concurrent_held_requests_each_write_their_own_headers() {
    let envoy = start(Some(true), true, "fail_closed");
    std::thread::scope(|scope| {
        let requests: Vec<_> = (0..16usize)
            .map(|i| {
                let envoy = &envoy;
                scope.spawn(move || {
                    let body = pattern(100 + i * 37);
                    let op = if i % 2 == 0 { "callout" } else { "plain" };
                    let r = envoy.request("POST", &format!("/c/{i}"), &[("x-op", op)], &body);
                    (i, body.len(), op, r)
                })
            })
            .collect();
        for request in requests {
            let (i, len, op, r) = request.join().unwrap();
            assert_status(&r, 200);
            assert_eq!(r.header("x-redacted-count"), Some("3"), "{i}");
            let text = framed(&r);
            let echo: Value = serde_json::from_str(text.strip_suffix("!!").unwrap()).unwrap();
            let upstream = |name: &str| {
                echo["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|h| h[0] == name)
                    .map(|h| h[1].as_str().unwrap().to_string())
            };
            assert_eq!(echo["path"], format!("/c/{i}"));
            assert_eq!(upstream("x-body-len"), Some(len.to_string()), "{i}");
            assert_eq!(upstream("content-length"), Some(len.to_string()), "{i}");
            let token = upstream("x-token");
            assert_eq!(token.is_some(), op == "callout", "{i}: {token:?}");
        }
    });
    envoy.assert_healthy();
}
