//! Gateway integration against the emulator: Higress rules, properties, trailers, shared
//! data, metrics, the log phase, the timer and the built-ins.

use proxy_rhai::emulator::{Emulator, Request, Response};
use proxy_rhai::host::MetricType;
use serde_json::json;

fn messages(o: &proxy_rhai::emulator::Outcome) -> Vec<String> {
    o.log.iter().map(|l| l.message.clone()).collect()
}

fn request(host: &str, route: &str, cluster: &str) -> Request {
    let mut r = Request::get("/");
    r.authority = host.into();
    r.route_name = route.into();
    r.cluster_name = cluster.into();
    r
}

#[test]
fn higress_rules_choose_script_and_config_first_match_wins() {
    let global = r#"fn on_request_headers() { add_request_header("x-rule", config().name); }"#;
    let own = r#"fn on_request_headers() { add_request_header("x-own-script", config().name); }"#;
    let p = Emulator::new(
        &json!({
            "script": global,
            "config": {"name": "global"},
            "_rules_": [
                {"_match_route_": ["route-a"], "config": {"name": "by-route"}},
                {"_match_domain_": ["*.example.com", "api.*"], "config": {"name": "by-domain"}},
                {"_match_service_": ["svc.ns.svc.cluster.local:8080"], "script": own, "config": {"name": "by-service"}},
                {"_match_route_prefix_": ["admin-"], "script": own},
                {"_match_domain_": ["www.example.com"], "config": {"name": "never: an earlier rule matches first"}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let header = |r: Request, name: &str| p.run(&r, &mut Response::ok("")).upstream_header(name);
    assert_eq!(
        header(request("other.org", "route-a", "c"), "x-rule").as_deref(),
        Some("by-route")
    );
    assert_eq!(
        header(request("www.example.com:8443", "r", "c"), "x-rule").as_deref(),
        Some("by-domain")
    );
    assert_eq!(
        header(request("api.internal", "r", "c"), "x-rule").as_deref(),
        Some("by-domain")
    );
    assert_eq!(
        header(request("example.com", "r", "c"), "x-rule").as_deref(),
        Some("global")
    );
    assert_eq!(
        header(
            request("h", "r", "outbound|8080||svc.ns.svc.cluster.local"),
            "x-own-script"
        )
        .as_deref(),
        Some("by-service")
    );
    assert_eq!(
        header(
            request("h", "r", "outbound|9090||svc.ns.svc.cluster.local"),
            "x-rule"
        )
        .as_deref(),
        Some("global")
    );
    assert_eq!(
        header(request("h", "admin-users", "c"), "x-own-script").as_deref(),
        Some("global"),
        "rule script, global config"
    );
}

#[test]
fn each_rule_s_script_decides_whether_a_body_keeps_its_content_length() {
    // The global script rewrites the response; a rule's script only reads it.
    let p = Emulator::new(
        &json!({
            "script": r#"fn on_response_chunk(chunk, last) { replace_response_body(chunk + "!"); }"#,
            "_rules_": [{"_match_domain_": ["read.only"], "script": r#"fn on_response_chunk(chunk, last) { log_info(chunk); }"#}]
        })
        .to_string(),
    )
    .unwrap();
    let read = p.run(&request("read.only", "", ""), &mut Response::ok("abc"));
    assert_eq!(read.response_header("content-length").as_deref(), Some("3"));
    assert_eq!(read.response.body, b"abc");
    let written = p.run(&request("other", "", ""), &mut Response::ok("abc"));
    assert_eq!(written.response_header("content-length"), None);
    assert_eq!(written.response.body, b"abc!");
}

#[test]
fn rules_without_a_global_script_leave_other_requests_untouched() {
    let p = Emulator::new(
        &json!({"_rules_": [{"_match_domain_": ["a.com"], "script": "fn on_request_headers() { send_http_response(403, [], \"no\"); }"}]})
            .to_string(),
    )
    .unwrap();
    assert_eq!(
        p.run(&request("a.com", "", ""), &mut Response::ok(""))
            .response
            .status,
        403
    );
    let o = p.run(&request("b.com", "", ""), &mut Response::ok("fine"));
    assert_eq!(o.response.status, 200);
    assert_eq!(
        o.trace,
        [
            r#"get_header(HttpRequestHeaders, ":authority")"#,
            "-- response data: 4 bytes, end of stream"
        ],
        "only the rule matching looked (the trace shows the body's arrival)"
    );
}

#[test]
fn properties_by_path_or_dotted_name() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            log_info(get_property(["request", "path"]));
            log_info(get_property("request.method"));
            log_info(get_property("source.port") + 1);
            log_info(type_of(get_property("no.such.thing")));
            log_info(get_property_bytes("xds.route_name").len());
            set_property("tenant", "acme");
        }
        fn on_response_body() { log_info(get_property("request.path")); log_info(get_property("response.code")); }
        fn on_log() { log_info(get_property("request.path")); log_info(get_property("tenant")); }"#,
        json!({}),
    )
    .unwrap();
    let o = p.run(&Request::get("/p?q=1"), &mut Response::new(201, "b"));
    assert_eq!(
        messages(&o),
        ["/p?q=1", "GET", "40001", "()", "7", "", "201", "/p?q=1", "acme"]
    );
}

#[test]
fn trailers_have_their_own_phases() {
    let p = Emulator::with_script(
        r#"fn on_request_body() { append_request_body("!"); }
           fn on_request_trailers() { log_info(get_request_trailers()); add_request_trailer("x-added", "1"); replace_request_trailer("x-t", "new"); remove_request_trailer("x-gone"); }
           fn on_response_trailers() { log_info(get_response_trailer("grpc-status")); replace_response_trailers(#{"grpc-status": "0", "grpc-message": "ok"}); }
           fn on_request_headers() { try { get_request_trailers(); } catch (e) { log_warn("too early"); } }"#,
        json!({}),
    )
    .unwrap();
    let mut request = Request::post("/", "abc");
    request.trailers = vec![
        ("x-t".into(), b"old".to_vec()),
        ("x-gone".into(), b"1".to_vec()),
    ];
    let mut response = Response::ok("resp");
    response.trailers = vec![("grpc-status".into(), b"13".to_vec())];
    let o = p.run(&request, &mut response);
    assert_eq!(
        messages(&o),
        ["too early", r#"[["x-t", "old"], ["x-gone", "1"]]"#, "13"]
    );
    let up = o.upstream.unwrap();
    assert_eq!(
        up.body, b"abc!",
        "the body phase ran first, on the whole body"
    );
    assert_eq!(
        up.trailers,
        // Envoy's replace removes the header and adds it again: it moves to the end.
        vec![
            ("x-added".to_string(), b"1".to_vec()),
            ("x-t".to_string(), b"new".to_vec())
        ]
    );
}

#[test]
fn a_failed_trailers_phase_changes_no_trailer() {
    let p = Emulator::new(
        &json!({
            "script": r#"fn on_request_trailers() {
                add_request_trailer("x-added", "1");
                remove_request_trailer("x-t");
                if get_request_trailers().len() == 1 { throw "boom"; }
            }"#,
            "error_policy": {"mode": "fail_open"}
        })
        .to_string(),
    )
    .unwrap();
    let mut request = Request::post("/", "abc");
    request.trailers = vec![("x-t".into(), b"old".to_vec())];
    let o = p.run(&request, &mut Response::ok(""));
    assert_eq!(o.script_errors().len(), 1, "{:?}", o.log);
    assert_eq!(
        o.upstream.unwrap().trailers,
        vec![("x-t".to_string(), b"old".to_vec())]
    );
}

#[test]
fn shared_data_compare_and_swap() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            let cur = shared_get("hits");
            let next = parse_int(if cur.value == () || cur.value == "stale" { "0" } else { cur.value }) + 1;
            log_info(shared_set("hits", next.to_string(), cur.version));
            log_info(shared_set("hits", "stale", cur.version));
        }"#,
        json!({}),
    )
    .unwrap();
    // Version 0 (absent key) sets whatever is there, as in Envoy: the second write wins.
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert_eq!(messages(&o), ["true", "true"]);
    for _ in 0..2 {
        let o = p.run(&Request::get("/"), &mut Response::ok(""));
        assert_eq!(
            messages(&o),
            ["true", "false"],
            "a stale version is refused"
        );
    }
    assert_eq!(p.shared("hits").map(|(v, _)| v), Some(b"2".to_vec()));
}

#[test]
fn metrics_are_defined_on_first_use() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            increment_counter("requests", 1);
            set_gauge("inflight", 5);
            add_to_gauge("inflight", -2);
            record_histogram("latency_ms", 12);
            log_info(get_counter("requests"));
            try { increment_counter("requests", -1); } catch (e) { log_warn(e); }
        }"#,
        json!({}),
    )
    .unwrap();
    p.run(&Request::get("/"), &mut Response::ok(""));
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert_eq!(o.log[0].message, "2");
    assert!(o.log[1].message.contains("a counter only grows"));
    let metrics: Vec<_> = p
        .metrics()
        .into_iter()
        .map(|m| (m.kind, m.name, m.value, m.recorded))
        .collect();
    assert_eq!(
        metrics,
        [
            (MetricType::Counter, "requests".to_string(), 2, vec![]),
            (MetricType::Gauge, "inflight".to_string(), 3, vec![]),
            (
                MetricType::Histogram,
                "latency_ms".to_string(),
                0,
                vec![12, 12]
            )
        ]
    );
}

#[test]
fn log_phase_sees_both_header_maps_after_the_response() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() { set_context("start", 1); }
           fn on_log() { log_info(`${get_request_header(":path")} ${get_response_header(":status")} ${get_context("start")}`); }"#,
        json!({}),
    )
    .unwrap();
    assert_eq!(
        messages(&p.run(&Request::get("/x"), &mut Response::new(404, ""))),
        ["/x 404 1"]
    );
}

#[test]
fn log_phase_runs_after_a_local_response_too() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() { send_http_response(429, [], "slow down"); }
           fn on_log() { log_info(get_response_header(":status")); }"#,
        json!({}),
    )
    .unwrap();
    assert_eq!(
        messages(&p.run(&Request::get("/"), &mut Response::ok(""))),
        ["429"]
    );
}

#[test]
fn tick_runs_at_plugin_level_with_the_configured_period() {
    let p = Emulator::new(
        &json!({"script": r#"fn on_tick() { increment_counter("ticks", 1); log_info(config().who); }"#,
                "config": {"who": "timer"}, "tick_period_ms": 250})
        .to_string(),
    )
    .unwrap();
    assert_eq!(p.tick_period_ms(), 250);
    p.tick();
    p.tick();
    assert_eq!(p.metrics()[0].value, 2);
    assert_eq!(p.log().last().unwrap().message, "timer");

    let default = Emulator::with_script("fn on_tick() {}", json!({})).unwrap();
    assert_eq!(default.tick_period_ms(), 1000);
    let none = Emulator::with_script("fn on_request_headers() {}", json!({})).unwrap();
    assert_eq!(none.tick_period_ms(), 0);
}

#[test]
fn builtins_match_known_vectors() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            log_info(base64_encode("hello world"));
            log_info(base64_decode("aGVsbG8gd29ybGQ="));
            log_info(base64url_encode(blob(3, 0xfb)));
            log_info(base64url_decode_bytes("-_v7").len());
            log_info(url_encode("a b&c=d/é"));
            log_info(url_decode("a%20b%26c"));
            log_info(sha256("abc"));
            log_info(hmac_sha256("key", "The quick brown fox jumps over the lazy dog"));
            log_info(hex_encode(hmac_sha256_bytes("key", "")).len());
            log_info(random_id().len());
            log_info(uuid_v4().len());
            log_info(uuid_v4()[14]);
            let r = random_int(5, 7); log_info(r >= 5 && r <= 7);
            log_info(now_ms());
            try { base64_decode("!!"); } catch (e) { log_info("bad base64"); }
        }"#,
        json!({}),
    )
    .unwrap();
    p.set_time_nanos(1_700_000_000_123_456_789);
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert_eq!(
        messages(&o),
        [
            "aGVsbG8gd29ybGQ=",
            "hello world",
            "-_v7",
            "3",
            "a%20b%26c%3Dd%2F%C3%A9",
            "a b&c",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
            "64",
            "32",
            "36",
            "4",
            "true",
            "1700000000123",
            "bad base64"
        ]
    );
}

/// Each script keeps which function its calls resolved to from one request to the next
/// (`Script::call`): two scripts with a function of the same name never share that, and one
/// call site given other argument types on a later request finds the other function.
#[test]
fn resolved_functions_stay_with_their_script_and_argument_types() {
    let first = r#"
        fn kind(x) { "first" }
        fn on_request_headers() {
            let v = get_request_header("x-v");
            let arg = if v == "int" { 1 } else if v == "float" { 1.5 } else { v };
            add_request_header("x-kind", kind(arg));
            add_request_header("x-sum", `${arg + arg}`);
        }"#;
    let second = r#"
        fn kind(x) { "second" }
        fn on_request_headers() { add_request_header("x-kind", kind(1)); }"#;
    let p = Emulator::new(
        &json!({
            "script": first,
            "_rules_": [{"_match_domain_": ["b.com"], "script": second}]
        })
        .to_string(),
    )
    .unwrap();
    let run = |host: &str, v: &str| {
        let o = p.run(
            &request(host, "", "").header("x-v", v),
            &mut Response::ok(""),
        );
        (
            o.upstream_header("x-kind").unwrap_or_default(),
            o.upstream_header("x-sum").unwrap_or_default(),
        )
    };
    for _ in 0..3 {
        assert_eq!(run("a.com", "int"), ("first".into(), "2".into()));
        assert_eq!(run("b.com", "int"), ("second".into(), String::new()));
        assert_eq!(run("a.com", "float"), ("first".into(), "3.0".into()));
        assert_eq!(run("a.com", "ab"), ("first".into(), "abab".into()));
    }
}

/// A call site remembers the native function it resolved to for its arguments' types: the
/// same site given other types must find the other overload, every time.
#[test]
fn call_sites_follow_their_arguments_types() {
    let script = r#"
        fn on_request_headers() {
            let out = [];
            for x in ["ab", [1, 2, 3], #{a: 1}, blob(2, 0x41), "xyz"] {
                out.push(`${x.len()}`);
                out.push(to_json(x));
            }
            for x in [1, 2.5, "s", 3] { out.push(type_of(x + x)); }
            send_http_response(200, [], to_json(out));
        }"#;
    let p = Emulator::with_script(script, json!({})).unwrap();
    let expected = json!([
        "2",
        "\"ab\"",
        "3",
        "[1,2,3]",
        "1",
        "{\"a\":1}",
        "2",
        "[65,65]",
        "3",
        "\"xyz\"",
        "i64",
        "f64",
        "string",
        "i64"
    ]);
    for _ in 0..3 {
        let o = p.run(&Request::get("/"), &mut Response::ok(""));
        let got: serde_json::Value = serde_json::from_slice(&o.response.body).unwrap();
        assert_eq!(got, expected);
    }
}

/// A call site whose function comes from a value — `call(f, ...)`, or a map's function
/// property called as a method — calls the value's function each time, not the one it called
/// the first time (a call site remembers the function of its own name only).
#[test]
fn call_sites_follow_the_function_a_value_names() {
    let script = r#"
        fn twice(s) { s + s }
        fn on_request_headers() {
            let out = [];
            for f in [Fn("to_upper"), Fn("to_lower"), Fn("twice"), Fn("to_upper")] {
                out.push(call(f, "aBc"));
            }
            for m in [#{size: Fn("len")}, #{size: Fn("keys"), b: 1}, #{size: Fn("len")}] {
                out.push(`${m.size()}`);
            }
            send_http_response(200, [], to_json(out));
        }"#;
    let p = Emulator::with_script(script, json!({})).unwrap();
    let expected = json!(["ABC", "abc", "aBcaBc", "ABC", "1", "[\"b\", \"size\"]", "1"]);
    for _ in 0..3 {
        let o = p.run(&Request::get("/"), &mut Response::ok(""));
        let got: serde_json::Value = serde_json::from_slice(&o.response.body).unwrap();
        assert_eq!(got, expected);
    }
}

/// The scope a script's calls share is emptied after each: no variable of one call (or one
/// request) is there for the next.
#[test]
fn variables_do_not_outlive_their_call() {
    let script = r#"
        fn on_request_headers() {
            if is_def_var("seen") { throw `a variable survived: ${seen}`; }
            let seen = get_request_header("x-user");
            http_get("auth", "/", [], 100, || {
                if is_def_var("in_callback") { throw "a callback's variable survived"; }
                let in_callback = 1;
                add_request_header("x-checked", "yes");
            });
        }
        fn on_response_headers() {
            if is_def_var("seen") { throw "a variable of another phase is here"; }
        }"#;
    let p = Emulator::with_script(script, json!({})).unwrap();
    p.add_cluster("auth");
    for user in ["ann", "bob", "cid"] {
        // Every callout times out (Envoy's 504): the callback runs all the same.
        let o = p.run(
            &Request::get("/").header("x-user", user),
            &mut Response::ok(""),
        );
        assert!(o.script_errors().is_empty(), "{:?}", o.log);
        assert_eq!(o.upstream_header("x-checked").as_deref(), Some("yes"));
    }
}
