//! Redis from scripts, in the emulator against a real `redis-server`: replies as Rhai values,
//! Redis's own semantics (INCR, EXPIRE/TTL, EVAL, errors, nil, databases), and every failure
//! (wrong password, Redis stopped, no reply in time, a reply past the limits, an unknown
//! cluster) reaching the callback or a catchable error, the request always answered; the
//! NOAUTH sign-in again of Higress's wrapper.

#[allow(dead_code)]
#[path = "support/redis_server.rs"]
mod redis_server;

use std::net::TcpListener;

use proxy_rhai::emulator::{Emulator, Outcome, RedisOutcome, Request, Response, START_TIME_MS};
use redis_server::RedisServer;
use serde_json::{json, Value};

/// A plugin whose cluster `redis` is `server`, configured with `settings` (the whole plugin
/// configuration but the script).
fn plugin_at(address: &str, script: &str, mut settings: Value) -> Emulator {
    settings["script"] = json!(script);
    let redis = [("redis".to_string(), address.to_string())];
    Emulator::with_redis(&settings.to_string(), START_TIME_MS, &redis).expect("configures")
}

fn plugin(server: &RedisServer, script: &str) -> Emulator {
    plugin_at(&server.address(), script, json!({}))
}

fn get(p: &Emulator) -> Outcome {
    p.run(&Request::get("/"), &mut Response::ok("fine"))
}

/// The request headers the script set: every callback writes what it got as `x-*` headers.
fn upstream(o: &Outcome, name: &str) -> String {
    o.upstream_header(name)
        .unwrap_or_else(|| panic!("no {name} upstream: {:?} {:?}", o.log, o.trace))
}

#[test]
fn incr_expire_and_ttl_are_redis_s_own() {
    let server = RedisServer::start();
    let p = plugin(
        &server,
        r#"fn on_request_headers() {
            redis_incr("redis", "hits", |n| {
                add_request_header("x-count", `${n}`);
                if n == 1 {
                    redis_expire("redis", "hits", 60, |set| {
                        add_request_header("x-expire", `${set}`);
                        redis_call("redis", ["TTL", "hits"], |ttl| add_request_header("x-ttl", `${ttl}`));
                    });
                }
            });
        }"#,
    );
    let first = get(&p);
    assert_eq!(upstream(&first, "x-count"), "1");
    assert_eq!(upstream(&first, "x-expire"), "1");
    let ttl: i64 = upstream(&first, "x-ttl").parse().unwrap();
    assert!((59..=60).contains(&ttl), "{ttl}");
    assert_eq!(first.response.status, 200);
    assert_eq!(first.redis_calls.len(), 3);
    assert_eq!(first.redis_calls[0].command, ["INCR", "hits"]);
    assert_eq!(first.redis_calls[1].command, ["EXPIRE", "hits", "60"]);

    let second = get(&p);
    assert_eq!(upstream(&second, "x-count"), "2");
    assert_eq!(second.upstream_header("x-expire"), None);
    // What the plugin did is in Redis, for every gateway to see.
    assert_eq!(server.command(&["GET", "hits"]), "$1\r\n2\r\n");
}

#[test]
fn eval_get_set_nil_and_error_replies() {
    let server = RedisServer::start();
    let p = plugin(
        &server,
        r#"fn on_request_headers() {
            redis_set("redis", "k", "v1", |ok| add_request_header("x-set", ok));
            redis_set("redis", "t", 42, 100, |ok| add_request_header("x-set-ex", ok));
            redis_get("redis", "k", |v| add_request_header("x-get", v));
            redis_get("redis", "missing", |v| add_request_header("x-nil", `${v == ()}`));
            redis_eval("redis", "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1, redis.call('GET', KEYS[1])}",
                ["k"], ["a", 41], |r| add_request_header("x-eval", to_json(r)));
            redis_eval("redis", "return redis.call('INCR', KEYS[1])", ["k"], [], |e| {
                add_request_header("x-eval-error", `${e.kind}: ${e.error}`);
            });
            redis_call("redis", ["NOSUCHCOMMAND", 1], |e| add_request_header("x-error", `${e.kind}: ${e.error}`));
        }"#,
    );
    let o = get(&p);
    assert_eq!(upstream(&o, "x-set"), "OK");
    assert_eq!(upstream(&o, "x-set-ex"), "OK");
    assert_eq!(upstream(&o, "x-get"), "v1");
    assert_eq!(upstream(&o, "x-nil"), "true");
    assert_eq!(upstream(&o, "x-eval"), r#"["k","a",42,"v1"]"#);
    let eval_error = upstream(&o, "x-eval-error");
    assert!(
        eval_error.starts_with("redis: ") && eval_error.contains("not an integer"),
        "{eval_error}"
    );
    let error = upstream(&o, "x-error");
    assert!(error.starts_with("redis: ERR unknown command"), "{error}");
    let ttl = server.command(&["TTL", "t"]);
    assert!(ttl == ":100\r\n" || ttl == ":99\r\n", "{ttl}");
    assert!(o.script_errors().is_empty(), "{:?}", o.log);
}

#[test]
fn the_database_is_selected_on_each_connection() {
    let server = RedisServer::start();
    let script = r#"fn on_request_headers() {
        redis_set("redis", "in-db-3", "yes", |ok| {
            redis_get("redis", "in-db-3", |v| add_request_header("x-got", v));
        });
    }"#;
    let settings = json!({"redis": {"redis": {"database": 3}}});
    let p = plugin_at(&server.address(), script, settings);
    assert_eq!(upstream(&get(&p), "x-got"), "yes");
    assert_eq!(server.command(&["GET", "in-db-3"]), "$-1\r\n");
}

#[test]
fn a_wrong_password_is_noauth_after_one_new_init() {
    let server = RedisServer::start_with(&["--requirepass", "Right-pass-1"]);
    let script = r#"fn on_request_headers() {
        redis_incr("redis", "n", |r| {
            if type_of(r) == "map" {
                add_request_header("x-error", `${r.kind}: ${r.error}`);
            } else {
                add_request_header("x-count", `${r}`);
            }
        });
    }"#;
    let wrong = json!({"redis": {"redis": {"password": "Wrong-pass-1"}}});
    let p = plugin_at(&server.address(), script, wrong);
    let o = get(&p);
    assert_eq!(
        upstream(&o, "x-error"),
        "redis: NOAUTH Authentication required."
    );
    // As Higress's wrapper: the NOAUTH reply made the plugin sign in again and send the
    // command once more; the second NOAUTH went to the callback.
    let count = |call: &str| o.trace.iter().filter(|t| t.starts_with(call)).count();
    assert_eq!(count("redis_init("), 1, "{:?}", o.trace);
    assert_eq!(count("redis_call("), 2, "{:?}", o.trace);
    assert!(o.script_errors().is_empty());

    let right = json!({"redis": {"redis": {"password": "Right-pass-1"}}});
    let p = plugin_at(&server.address(), script, right);
    assert_eq!(upstream(&get(&p), "x-count"), "1");
    let user = json!({"redis": {"redis": {"username": "default", "password": "Right-pass-1"}}});
    let p = plugin_at(&server.address(), script, user);
    assert_eq!(upstream(&get(&p), "x-count"), "2");
}

#[test]
fn a_redis_password_never_reaches_the_log() {
    let server = RedisServer::start();
    // A script error quoting it, and a configuration refused for another reason.
    let script = r#"fn on_request_headers() { throw "signed in with pw"; }"#;
    let p = plugin_at(
        &server.address(),
        script,
        json!({"redis": {"redis": {"password": "pw"}}}),
    );
    let o = get(&p);
    let errors = o.script_errors().join("\n");
    assert!(errors.contains("signed in with [redacted]"), "{errors}");
    let refused = Emulator::new(
        &json!({"script": "fn on_request_headers() {}", "limits": {"max_operations": "s3cret-pw"},
                "redis": {"r": {"password": "s3cret-pw"}}})
        .to_string(),
    )
    .err()
    .expect("refused");
    assert!(!refused.contains("s3cret-pw"), "{refused}");
}

#[test]
fn redis_stopped_is_a_connection_failure_and_the_request_goes_on() {
    let mut server = RedisServer::start();
    let script = r#"fn on_request_headers() {
        redis_incr("redis", "n", |r| {
            if type_of(r) == "map" { add_request_header("x-error", `${r.kind}: ${r.error}`); }
            else { add_request_header("x-count", `${r}`); }
        });
    }"#;
    let p = plugin(&server, script);
    assert_eq!(upstream(&get(&p), "x-count"), "1");
    server.stop();
    let o = get(&p);
    assert_eq!(
        upstream(&o, "x-error"),
        "connection: cannot connect to Redis"
    );
    assert_eq!(o.response.status, 200);
    assert!(matches!(o.redis_calls[0].outcome, RedisOutcome::Failed(_)));
    // Back up (no persistence: the count starts over): the next call connects again.
    server.restart();
    assert_eq!(upstream(&get(&p), "x-count"), "1");
}

#[test]
fn no_reply_in_time_is_a_timeout() {
    // A server that accepts connections (the OS does, into the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let script = r#"fn on_request_headers() {
        let sent = now_ms();
        redis_get("redis", "k", |r| {
            add_request_header("x-error", `${r.kind}: ${r.error}`);
            add_request_header("x-waited", `${now_ms() - sent}`);
        });
    }"#;
    let settings = json!({"redis": {"redis": {"timeout_ms": 150}}});
    let p = plugin_at(&address, script, settings);
    let o = get(&p);
    assert_eq!(
        upstream(&o, "x-error"),
        "timeout: no reply from Redis in time"
    );
    // The emulated clock moved on to the call's deadline, as the proxy's would have.
    assert_eq!(upstream(&o, "x-waited"), "150");
    assert_eq!(o.redis_calls[0].outcome, RedisOutcome::Timeout);
    assert_eq!(o.response.status, 200);
}

#[test]
fn a_reply_past_the_string_limit_is_a_script_error_and_the_request_is_answered() {
    let server = RedisServer::start();
    server.command(&["SET", "big", &"x".repeat(4000)]);
    let script = r#"fn on_request_headers() {
        redis_get("redis", "big", |v| add_request_header("x-len", `${v.len()}`));
    }"#;
    let limits = json!({"limits": {"max_string_size": 2048}});
    let p = plugin_at(&server.address(), script, limits);
    let o = get(&p);
    assert_eq!(o.response.status, 500);
    assert!(o.response.local);
    let errors = o.script_errors().join("\n");
    assert!(
        errors.contains("the Redis reply") && errors.contains("limits.max_string_size (2048)"),
        "{errors}"
    );
    // Within the limit it is given whole.
    server.command(&["SET", "big", &"x".repeat(2000)]);
    assert_eq!(upstream(&get(&p), "x-len"), "2000");
}

#[test]
fn an_unknown_cluster_is_an_error_the_script_can_catch() {
    let server = RedisServer::start();
    let p = plugin(
        &server,
        r#"fn on_request_headers() {
            try {
                redis_incr("nope", "n", |r| {});
            } catch (e) {
                add_request_header("x-caught", e);
            }
        }"#,
    );
    let o = get(&p);
    let caught = upstream(&o, "x-caught");
    assert!(
        caught.contains("Redis cluster 'nope' is not ready") && caught.contains("BadArgument"),
        "{caught}"
    );
    assert_eq!(o.response.status, 200);
}

#[test]
fn a_configured_cluster_not_up_at_configure_time_is_initialised_at_its_first_call() {
    let server = RedisServer::start();
    let script = r#"fn on_request_headers() {
        redis_incr("later", "n", |n| add_request_header("x-count", `${n}`));
    }"#;
    let settings = json!({"script": script, "redis": {"later": {"timeout_ms": 500}}});
    let p = Emulator::new(&settings.to_string()).expect("a cluster not ready is no refusal");
    let warned = p.log().iter().any(|l| {
        l.message.contains("Redis cluster 'later' is not ready") && l.message.contains("next call")
    });
    assert!(warned, "{:?}", p.log());
    p.add_redis("later", &server.address());
    let o = get(&p);
    assert_eq!(upstream(&o, "x-count"), "1");
    assert!(o
        .trace
        .iter()
        .any(|t| t.starts_with("redis_init(\"later\"")));
}

#[test]
fn redis_calls_count_against_max_callouts_and_pause_like_callouts() {
    let server = RedisServer::start();
    let script = r#"fn on_request_headers() {
        for i in 0..3 {
            try { redis_incr("redis", "n", |n| add_request_header("x-n", `${n}`)); }
            catch (e) { add_request_header("x-refused", e); }
        }
    }
    fn on_response_headers() {
        redis_get("redis", "n", |n| add_response_header("x-final", n));
    }"#;
    let settings = json!({"limits": {"max_callouts": 4}});
    let p = plugin_at(&server.address(), script, settings);
    let o = get(&p);
    assert_eq!(upstream(&o, "x-n"), "1,2,3");
    assert_eq!(o.upstream_header("x-refused"), None);
    assert_eq!(o.response_header("x-final").as_deref(), Some("3"));
    let settings = json!({"limits": {"max_callouts": 2}});
    let p = plugin_at(&server.address(), script, settings);
    let o = get(&p);
    assert!(upstream(&o, "x-refused").contains("limits.max_callouts"));
}

#[test]
fn bad_arguments_are_script_errors() {
    let server = RedisServer::start();
    for (call, expected) in [
        (
            r#"redis_call("redis", ["GET", ()], |r| {})"#,
            "a Redis argument is ()",
        ),
        (
            r#"redis_call("redis", ["GET", #{}], |r| {})"#,
            "expected a string or a blob",
        ),
        (
            r#"redis_set("redis", "k", "v", 0, |r| {})"#,
            "ttl_seconds 0 is not",
        ),
        (
            r#"redis_expire("redis", "k", -1, |r| {})"#,
            "seconds -1 is not",
        ),
    ] {
        let script = format!("fn on_request_headers() {{ {call}; }}");
        let o = get(&plugin(&server, &script));
        let errors = o.script_errors().join("\n");
        assert!(errors.contains(expected), "{call}: {errors}");
        assert_eq!(o.response.status, 500);
    }
}

#[test]
fn a_cluster_rebuilt_without_its_password_signs_in_again_and_the_call_goes_through() {
    let server = RedisServer::start_with(&["--requirepass", "Right-pass-1"]);
    let script = r#"fn on_request_headers() {
        redis_incr("redis", "n", |r| add_request_header("x-reply", `${r}`));
    }"#;
    let settings = json!({"redis": {"redis": {"password": "Right-pass-1"}}});
    let p = plugin_at(&server.address(), script, settings);
    assert_eq!(upstream(&get(&p), "x-reply"), "1");
    // As Higress's Envoy when xDS rebuilds the cluster: its client forgets the password.
    p.add_redis("redis", &server.address());
    let o = get(&p);
    // The NOAUTH reply never reached the script: the plugin signed in again and resent.
    assert_eq!(upstream(&o, "x-reply"), "2");
    let count = |call: &str| o.trace.iter().filter(|t| t.starts_with(call)).count();
    assert_eq!(
        (count("redis_init("), count("redis_call(")),
        (1, 2),
        "{:?}",
        o.trace
    );
}
