//! Bounds on host-side resources (callouts, metric names, shared data), no configuration
//! secret in the plugin's own log lines, and the request id of an error in a callback after a
//! resume.

use serde_json::json;

use crate::support::{assert_status, Envoy};

/// An error in a callout callback that runs after the script resumed the request is logged
/// with the request's id (it was `-`): Envoy gives `request.id` in the request headers phase
/// and the log phase only.
#[test]
fn an_error_after_a_resume_keeps_the_request_id() {
    let envoy = Envoy::with_script(
        r#"
        fn on_request_headers() {
            let op = get_request_header("x-op");
            if op == () { return; }
            http_get("callout", "/token", [], 2000, |status| {
                resume_http_request();
                if op == "throw" { throw "late failure after resume"; }
                http_get("callout", "/token", [], 2000, |status| {
                    throw "nested failure after resume";
                });
            });
        }
        "#,
    );
    for (op, message) in [
        ("throw", "late failure after resume"),
        ("nested", "nested failure after resume"),
    ] {
        let id = format!("rid-{op}");
        // The upstream answers after 300 ms: the nested callback runs while the stream lives.
        let _ = envoy.try_request(
            "GET",
            "/delay/300",
            &[("x-request-id", &id), ("x-op", op)],
            b"",
        );
        let line = envoy.wait_for_log(message);
        assert!(line.contains(&format!("(request {id})")), "{line}");
    }
    envoy.assert_healthy();
}

/// No secret of the configuration reaches a line the plugin logs: script errors that quote
/// it (in every kind of phase, and in `on_tick`), a refused callout, a refused configuration.
#[test]
fn no_configuration_secret_in_the_log() {
    const SECRET: &str = "sk_live_51Hx9QzTe2e";
    let envoy = Envoy::builder(json!({
        "script": r#"
            fn on_request_headers() {
                let c = config();
                switch get_request_header("x-op") {
                    "int" => parse_int(c.key),
                    "fn" => Fn(c.key).call(),
                    "cluster" => http_get(c.key, "/", [], 100, |s| {}),
                    "throw" => throw c.key,
                    "callback" => http_get("callout", "/token", [], 2000, |s| { parse_int(c.key); }),
                    "response" => set_context("op", "response"),
                    "log" => log_info(`the script logs it itself: ${c.key}`),
                    _ => {}
                }
            }
            fn on_response_headers() {
                if get_context("op") == "response" { parse_int(config().key); }
            }
            fn on_tick() { if shared_get("tick").version == 0 { shared_set("tick", "1", 0); parse_int(config().key); } }
        "#,
        "config": {"key": SECRET},
        "tick_period_ms": 100,
    }))
    .start();
    for op in ["int", "fn", "cluster", "throw", "callback", "response"] {
        let r = envoy.request("GET", "/", &[("x-op", op)], b"");
        assert_status(&r, 500);
        assert!(!r.text().contains(SECRET));
    }
    envoy.wait_for_log("script error in on_tick");
    let errors = envoy.plugin_log_lines("script error in ");
    assert_eq!(errors.len(), 7, "{errors:#?}");
    for line in &errors {
        assert!(line.contains("[redacted]"), "{line}");
    }
    let r = envoy.request("GET", "/", &[("x-op", "log")], b"");
    assert_status(&r, 200);
    envoy.wait_for_log("the script logs it itself");
    let with_secret: Vec<String> = envoy
        .log()
        .lines()
        .filter(|l| l.contains(SECRET))
        .map(str::to_string)
        .collect();
    assert_eq!(with_secret.len(), 1, "{with_secret:#?}");
    assert!(with_secret[0].contains("wasm log proxy-rhai: the script logs it itself"));
    envoy.assert_healthy();

    // A refused configuration: Envoy logs the reason and does not start.
    let log = Envoy::try_start(json!({
        "script": "parse_int(config().token); fn on_request_headers() {}",
        "config": {"token": SECRET},
    }))
    .err()
    .expect("refused");
    assert!(
        log.contains("configuration refused: script failed while loading"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "{log}");
}

/// Callbacks that dispatch again: one request made ~3,800 callouts in under a second. Now
/// it makes `max_callouts` (32 by default), and the next one is a script error.
#[test]
fn callouts_per_request_are_limited() {
    let envoy = Envoy::with_script(
        r#"
        fn again(n) {
            http_get("callout", `/token?n=${n}`, [], 2000, |status| { again(n + 1); });
        }
        fn on_request_headers() { if get_request_header("x-op") == "chain" { again(1); } }
        "#,
    );
    let r = envoy.request("GET", "/", &[("x-op", "chain")], b"");
    assert_status(&r, 500);
    let line = envoy.wait_for_log("callouts (limits.max_callouts)");
    assert!(
        line.contains("this request already made 32 callouts"),
        "{line}"
    );
    let made = envoy.callout.received();
    assert_eq!(made.len(), 32, "{made:?}");
    assert_eq!(made.last().map(String::as_str), Some("/token?n=32"));
    // The next request has its own count.
    let r = envoy.request("GET", "/", &[("x-op", "chain")], b"");
    assert_status(&r, 500);
    assert_eq!(envoy.callout.received().len(), 64);
    envoy.assert_healthy();
}

/// A metric name made from client input: past `max_metrics` a new name is a script error and
/// no stat; the metrics defined keep counting.
#[test]
fn metric_names_are_limited() {
    let envoy = Envoy::start(json!({
        "script": r#"fn on_request_headers() { increment_counter(get_request_header("x-name"), 1); }"#,
        "limits": {"max_metrics": 4},
    }));
    for i in 0..8 {
        let name = format!("m{i}");
        let r = envoy.request("GET", "/", &[("x-name", &name)], b"");
        assert_status(&r, if i < 4 { 200 } else { 500 });
    }
    let r = envoy.request("GET", "/", &[("x-name", "m0")], b"");
    assert_status(&r, 200);
    assert_eq!(envoy.wait_for_stat("wasmcustom.m0", |v| v == 2), 2);
    for i in 1..4 {
        assert_eq!(envoy.stat(&format!("wasmcustom.m{i}")), Some(1));
    }
    for i in 4..8 {
        assert_eq!(envoy.stat(&format!("wasmcustom.m{i}")), None, "m{i}");
    }
    let errors = envoy.plugin_log_lines("(limits.max_metrics): no new metric");
    assert_eq!(errors.len(), 4, "{errors:#?}");
    envoy.assert_healthy();
}

/// A path-keyed cache on two workers: the store, one for both, stops at `max_shared_bytes`;
/// the plugin's count (in the store) is exactly what was written; reads and same-size
/// overwrites go on.
#[test]
fn shared_data_is_limited_across_workers() {
    const MAX: usize = 2_000;
    const VALUE: usize = 100;
    let envoy = Envoy::builder(json!({
        "script": r#"
            fn on_request_headers() {
                let key = get_request_header(":path");
                let value = "v";
                value.pad(100, 'v');
                let result = "";
                try { result = shared_set(key, value, 0); } catch (e) { result = e; }
                send_http_response(200, #{
                    "x-result": `${result}`,
                    "x-usage": `${shared_get("proxy-rhai:shared-bytes").value}`,
                }, "");
            }
        "#,
        "limits": {"max_shared_bytes": MAX},
    }))
    .concurrency(2)
    .start();
    let stored: Vec<(String, String)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let envoy = &envoy;
                s.spawn(move || {
                    (0..10)
                        .map(|i| {
                            let path = format!("/k/{}", t * 10 + i);
                            let r = envoy.request("GET", &path, &[], b"");
                            assert_status(&r, 200);
                            (path, r.header("x-result").unwrap_or_default().to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    let written: usize = stored
        .iter()
        .filter(|(_, result)| result == "true")
        .map(|(path, _)| path.len() + VALUE)
        .sum();
    let refused: Vec<_> = stored.iter().filter(|(_, r)| r != "true").collect();
    assert!(
        written <= MAX && written > MAX - 110,
        "{written} bytes written"
    );
    assert!(
        refused
            .iter()
            .all(|(_, r)| r.contains("shared data is full")),
        "{refused:?}"
    );
    // The count is what was written, whichever worker wrote it; a read and a same-size
    // overwrite still work.
    let first = stored.iter().find(|(_, r)| r == "true").unwrap().0.clone();
    let r = envoy.get(&first);
    assert_eq!(r.header("x-result"), Some("true"));
    assert_eq!(r.header("x-usage"), Some(written.to_string().as_str()));
    envoy.assert_healthy();
}
