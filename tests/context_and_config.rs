//! config(), set_context/get_context, logging and JSON helpers.

use proxy_rhai::emulator::{Emulator, Request, Response};
use proxy_rhai::host::LogLevel;
use serde_json::json;

#[test]
fn hello_world_from_the_higress_guide() {
    let script = std::fs::read_to_string("scripts/hello.rhai").unwrap();
    let off = Emulator::with_script(&script, json!({"mockEnable": false})).unwrap();
    let o = off.run(&Request::get("/get"), &mut Response::ok("up"));
    assert_eq!(o.upstream_header("hello").as_deref(), Some("world"));
    assert_eq!(o.response.body, b"up");
    let on = Emulator::with_script(&script, json!({"mockEnable": true})).unwrap();
    let o = on.run(&Request::get("/get"), &mut Response::ok("up"));
    assert_eq!(
        (
            o.response.status,
            o.response.body.as_slice(),
            o.response.local
        ),
        (200, &b"hello world"[..], true)
    );
    let none = Emulator::with_script(&script, json!(null)).unwrap();
    let o = none.run(&Request::get("/get"), &mut Response::ok("up"));
    assert_eq!(
        o.upstream_header("hello").as_deref(),
        Some("world"),
        "no config is mockEnable false"
    );
}

#[test]
fn config_is_read_only_and_shared() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() { let c = config(); c.a = 5; c.list.push(4); log_info(config().a); log_info(config().list.len()); }"#,
        json!({"a": 1, "list": [1, 2, 3]}),
    )
    .unwrap();
    for _ in 0..2 {
        let o = p.run(&Request::get("/"), &mut Response::ok(""));
        let lines: Vec<_> = o.log.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(lines, ["1", "3"]);
    }
}

#[test]
fn context_lives_across_phases_of_one_request_only() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() { log_info(type_of(get_context("id"))); set_context("id", get_request_header("x-id")); set_context("n", #{count: 1}); }
           fn on_request_body() { let n = get_context("n"); n.count += 1; set_context("n", n); }
           fn on_response_headers() { add_response_header("x-id", get_context("id")); add_response_header("x-n", get_context("n").count.to_string()); }"#,
        json!({}),
    )
    .unwrap();
    for id in ["a", "b"] {
        let o = p.run(
            &Request::post("/", "x").header("x-id", id),
            &mut Response::ok(""),
        );
        assert_eq!(o.log[0].message, "()", "nothing from the previous request");
        assert_eq!(o.response_header("x-id").as_deref(), Some(id));
        assert_eq!(o.response_header("x-n").as_deref(), Some("2"));
    }
}

#[test]
fn logs_go_to_the_proxy_at_their_level() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() { log_trace("t"); log_debug("d"); log_info(1); log_warn("w"); log_error(#{a: 1}); print("p"); debug("x"); }"#,
        json!({}),
    )
    .unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    let got: Vec<_> = o
        .log
        .iter()
        .map(|l| (l.level, l.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (LogLevel::Trace, "t"),
            (LogLevel::Debug, "d"),
            (LogLevel::Info, "1"),
            (LogLevel::Warn, "w"),
            (LogLevel::Error, "#{\"a\": 1}"),
            (LogLevel::Info, "p"),
            (LogLevel::Debug, "\"x\" (line 1, position 119)"),
        ]
    );
}

#[test]
fn json_round_trip_and_errors() {
    let p = Emulator::with_script(
        r#"fn on_request_body() {
            let doc = parse_json(get_request_body());
            doc.user.name = "bob";
            doc.tags.push("new");
            replace_request_body(to_json(doc));
            try { parse_json("{broken"); } catch (e) { log_warn(e); }
        }"#,
        json!({}),
    )
    .unwrap();
    let o = p.run(
        &Request::post(
            "/",
            r#"{"user":{"name":"al","age":3},"tags":["a"],"ok":true,"n":null,"f":1.5}"#,
        ),
        &mut Response::ok(""),
    );
    let body: serde_json::Value = serde_json::from_slice(&o.upstream.unwrap().body).unwrap();
    assert_eq!(
        body,
        json!({"user":{"name":"bob","age":3},"tags":["a","new"],"ok":true,"n":null,"f":1.5})
    );
    assert!(
        o.log[0]
            .message
            .contains("parse_json(): invalid JSON: key must be a string at line 1 column 2"),
        "{:?}",
        o.log
    );
}

/// What a JSON round trip keeps and changes, as the docs of `parse_json` say: the document,
/// with its keys sorted and every number that isn't a 64-bit integer as a float.
#[test]
fn json_round_trip_sorts_keys_and_keeps_number_kinds() {
    let p = Emulator::with_script(
        r#"fn on_request_body() { replace_request_body(to_json(parse_json(get_request_body()))); }"#,
        json!({}),
    )
    .unwrap();
    let o = p.run(
        &Request::post(
            "/",
            r#"{"b":1,"a":2.5,"c":1e3,"d":12345678901234567890,"e":-7}"#,
        ),
        &mut Response::ok(""),
    );
    assert_eq!(
        String::from_utf8(o.upstream.unwrap().body).unwrap(),
        r#"{"a":2.5,"b":1,"c":1000.0,"d":1.2345678901234567e+19,"e":-7}"#
    );
}

/// `parse_json` has its own deserializer (speed): it must make the values Rhai's own makes.
#[test]
fn parse_json_makes_the_values_rhai_makes() {
    let doc = r#"{"i": -7, "u": 18446744073709551615, "max": 9223372036854775807, "f": 1.5e300,
        "e": 1e2, "s": "caf\u00e9 \"q\" \\ \n \ud83d\ude00", "k\"ey \u00e9": [true, false, null, [], {}],
        "dup": 1, "dup": 2, "a long key that is longer than twenty-three bytes": {"x": [1, [2, [3]]]}}"#;
    let p = Emulator::with_script(
        "fn on_request_body() { send_http_response(200, [], parse_json(get_request_body()).to_debug()); }",
        json!({}),
    )
    .unwrap();
    let o = p.run(&Request::post("/", doc), &mut Response::ok(""));
    let rhai_own: rhai::Dynamic = serde_json::from_str(doc).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.response.body),
        format!("{rhai_own:?}")
    );
    assert!(o.response.body.starts_with(b"#{"), "{:?}", o.response);
}

#[test]
fn top_level_constants_are_seen_by_functions_and_computed_once() {
    let p = Emulator::with_script(
        r#"
        const ALLOWED = config().users.map(|u| u.to_lower());
        const LIMITS = #{ small: 1, big: 100 };
        let scratch = 5; // not a constant: functions can't see it
        log_info("loaded");
        fn allowed(user) { ALLOWED.contains(user.to_lower()) }
        fn on_request_headers() {
            add_request_header("x-ok", allowed(get_request_header("x-user")).to_string());
            add_request_header("x-big", LIMITS.big.to_string());
        }"#,
        json!({"users": ["Ann", "BOB"]}),
    )
    .unwrap();
    assert_eq!(
        p.log().iter().filter(|l| l.message == "loaded").count(),
        1,
        "top level runs once"
    );
    for (user, ok) in [("ann", "true"), ("Bob", "true"), ("eve", "false")] {
        let o = p.run(
            &Request::get("/").header("x-user", user),
            &mut Response::ok(""),
        );
        assert_eq!(
            o.upstream_header("x-ok").as_deref(),
            Some(ok),
            "{user}: {:?}",
            o.log
        );
        assert_eq!(o.upstream_header("x-big").as_deref(), Some("100"));
    }
}
