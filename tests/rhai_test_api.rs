//! The Rhai test API itself: every function of `*.test.rhai` files, on small scripts, and
//! what a failure says (test, assertion, expected and actual, line).

use std::path::{Path, PathBuf};

use proxy_rhai::testing::{run_file, FileReport};

const AUTH: &str = r#"
fn on_request_headers() {
    let user = get_request_header("x-user");
    http_post("auth", "/token", #{ "x-from": "proxy" }, `{"user":"${user}"}`, 800, |status, headers, body| {
        if status != 200 { send_http_response(403, [], `denied ${status}`); return; }
        add_request_header("authorization", "Bearer " + parse_json(body).token);
    });
}
fn on_response_headers() {
    if get_response_header("x-boom") != () { throw "boom"; }
    if get_response_header("x-pause") != () { return PAUSE; }
    log_info(`upstream said ${get_response_header(":status")}`);
}
"#;

const FANOUT: &str = r#"
log_info("configured");
fn on_request_headers() {
    for svc in ["a", "b"] {
        let name = svc;
        http_get(svc, "/" + svc, [], 500, |status, headers, body| {
            add_request_header("x-" + name, `${status}:${body}`);
        });
    }
}
"#;

const BODY: &str = r#"
fn on_request_body() {
    replace_request_body(get_request_body().to_upper());
}
"#;

const CLOCK: &str = r#"
log_info(`configured at ${now_ms()}`);
fn on_request_headers() {
    add_request_header("x-now", now_ms().to_string());
    increment_counter("requests", 1);
    record_histogram("sizes", 7);
    record_histogram("sizes", 9);
    set_gauge("last", 42);
    shared_set("last_path", get_request_header(":path"), 0);
}
fn on_tick() {
    increment_counter("ticks", 1);
    log_info(`tick at ${now_ms()}`);
}
"#;

/// Writes the scripts and `tests` as a test file, and runs it.
fn run(name: &str, tests: &str) -> FileReport {
    let dir: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("rhai_test_api")
        .join(name);
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    for (file, script) in [
        ("auth.rhai", AUTH),
        ("fanout.rhai", FANOUT),
        ("lib/body.rhai", BODY),
        ("clock.rhai", CLOCK),
    ] {
        std::fs::write(dir.join(file), script).unwrap();
    }
    let file = dir.join("api.test.rhai");
    std::fs::write(&file, tests).unwrap();
    run_file(&file, None)
}

/// Every test passes.
fn passes(name: &str, tests: &str) {
    let report = run(name, tests);
    assert!(report.error.is_none(), "{:?}", report.error);
    assert!(!report.tests.is_empty());
    for t in &report.tests {
        assert_eq!(t.failure, None, "{}", t.name);
    }
}

/// The failure of the only test.
fn failure(name: &str, test: &str) -> String {
    let report = run(name, test);
    assert_eq!(report.tests.len(), 1, "{report:?}");
    report.tests[0].failure.clone().expect("the test fails")
}

#[test]
fn requests_upstream_and_client() {
    passes(
        "requests",
        r#"
        fn test_send_with_everything() {
            let p = plugin("lib/body.rhai");
            let r = p.send(#{ method: "PUT", path: "/x", authority: "api", headers: [["x-a", "1"], ["x-a", "2"]],
                              body: "hello", chunk_size: 2 },
                           #{ status: 404, headers: #{ "x-up": ["1", "2"] }, body: "gone" });
            r.assert_forwarded();
            r.assert_upstream_body("HELLO");
            r.assert_upstream_header("x-a", "1,2");
            r.assert_upstream_header(":authority", "api");
            r.assert_no_upstream_header("x-b");
            r.assert_upstream_header("x-b", ());
            assert_eq(r.upstream.method, "PUT");
            assert_eq(r.upstream.path, "/x");
            r.assert_status(404);
            r.assert_response_header("x-up", "1,2");
            r.assert_no_response_header("x-down");
            r.assert_body("gone");
            assert_eq(r.status, 404);
            assert_eq(r.body, "gone");
            assert_eq(r.response_header("x-up"), "1,2");
            assert_eq(r.local, false);
            assert_eq(r.forwarded, true);
            assert_eq(r.reset, false);
        }
        fn test_shorthands_and_upstream() {
            let p = plugin("lib/body.rhai");
            p.upstream(#{ status: 201, body: "made" });
            p.post("/a", "abc").assert_upstream_body("ABC");
            p.post("/a", #{ "content-type": "text/plain" }, "abc").assert_upstream_header("content-type", "text/plain");
            p.get("/b").assert_status(201);
            p.get("/b", #{ "x-c": "3" }).assert_upstream_header("x-c", "3");
            p.send("/c").assert_body("made");
            p.upstream(|req| req.method + " " + req.path + " " + req.body);
            p.post("/echo", "hi").assert_body("POST /echo HI");
            p.upstream(|req| #{ status: 418, headers: #{ "x-len": req.body.len() } });
            let r = p.post("/teapot", "four");
            r.assert_status(418);
            r.assert_response_header("x-len", "4");
        }
        "#,
    );
}

#[test]
fn callouts_answered_per_cluster_path_in_order_or_not_at_all() {
    passes(
        "callouts",
        r#"
        fn test_answer_per_path() {
            let p = plugin("auth.rhai");
            p.answer("auth", "/tok*", #{ status: 200, body: `{"token":"t-1"}` });
            let r = p.get("/", #{ "x-user": "ann" });
            r.assert_upstream_header("authorization", "Bearer t-1");
            r.assert_callouts(1);
            r.assert_callout(0, #{ cluster: "auth", method: "POST", path: "/token", authority: "auth",
                                   body: `{"user":"ann"}`, timeout_ms: 800, headers: #{ "x-from": "proxy", "x-none": () } });
            assert_eq(r.callouts[0].cluster, "auth");
        }
        fn test_path_rules_win_and_later_rules_win() {
            let p = plugin("auth.rhai");
            p.answer("auth", "/token", #{ body: `{"token":"path"}` });
            p.answer("auth", #{ body: `{"token":"cluster"}` });
            p.get("/").assert_upstream_header("authorization", "Bearer path");
            p.answer("auth", "/token", #{ status: 401 });
            p.get("/").assert_local_response(403, "denied 401");
        }
        fn test_no_answer_timeout_and_reset() {
            let p = plugin("auth.rhai");
            p.add_cluster("auth");
            p.get("/").assert_local_response(403, "denied 504");
            p.answer("auth", ());
            p.get("/").assert_local_response(403, "denied 504");
            p.answer("auth", "timeout");
            p.get("/").assert_local_response(403, "denied 504");
            p.answer("auth", "connect_failure");
            p.get("/").assert_local_response(403, "denied 503");
            p.answer("auth", "reset");
            p.get("/").assert_local_response(403, "denied 503");
            p.answer("auth", "failure");
            p.get("/").assert_local_response(403, "denied 0");
        }
        fn test_unknown_cluster_is_refused() {
            let r = plugin("auth.rhai").get("/");
            r.assert_error("refused the call to cluster 'auth'");
            r.assert_status(500);
        }
        fn test_answers_in_order_per_cluster() {
            let p = plugin("auth.rhai");
            p.answers("auth", [#{ status: 500 }, |c| #{ body: `{"token":"${c.path}"}` }]);
            p.get("/").assert_local_response(403, "denied 500");
            p.get("/").assert_upstream_header("authorization", "Bearer /token");
            p.get("/").assert_local_response(403, "denied 504");
        }
        fn test_answers_in_order_whatever_the_target() {
            let p = plugin("fanout.rhai");
            p.add_cluster("a");
            p.add_cluster("b");
            p.answers([#{ body: "first" }, #{ status: 202, body: "second" }]);
            let r = p.get("/");
            r.assert_upstream_header("x-a", "200:first");
            r.assert_upstream_header("x-b", "202:second");
            r.assert_callouts(2);
            r.assert_callout(1, #{ cluster: "b", method: "GET", path: "/b" });
        }
        fn test_answer_functions_see_the_call() {
            let p = plugin("fanout.rhai");
            p.answer("a", |c| #{ body: c.cluster + c.path });
            p.answer("b", |c| if c.path == "/b" { "reset" } else { () });
            let r = p.get("/");
            r.assert_upstream_header("x-a", "200:a/a");
            assert_contains(r.upstream_header("x-b"), "503:upstream connect error");
        }
        "#,
    );
}

#[test]
fn logs_errors_stalls_and_configuration() {
    passes(
        "logs",
        r#"
        fn test_logs() {
            let p = plugin("fanout.rhai");
            assert_eq(p.logs[0].message, "configured");
            assert_eq(p.logs[0].level, "info");
            let p = plugin("auth.rhai");
            p.answer("auth", #{ body: `{"token":"t"}` });
            let r = p.get("/");
            r.assert_log("upstream said 200");
            r.assert_log("info", "upstream said");
            r.assert_no_log("nothing like this");
            assert_eq(r.logs.len(), 1);
            assert_contains(r.trace[0], "get_header(HttpRequestHeaders, \"x-user\")");
            assert_contains(r.trace[1], "dispatch_http_call");
        }
        fn test_errors_when_looked_at() {
            let p = plugin("auth.rhai");
            p.answer("auth", #{ body: `{"token":"t"}` });
            let r = p.send(#{}, #{ headers: #{ "x-boom": "1" } });
            assert_eq(r.errors.len(), 1);
            r.assert_status(500);
            let r = p.get("/");
            r.assert_no_errors();
        }
        fn test_stalls_when_looked_at() {
            let p = plugin("auth.rhai");
            p.answer("auth", #{ body: `{"token":"t"}` });
            p.send(#{}, #{ headers: #{ "x-pause": "1" } }).assert_stalled();
            assert_contains(p.send(#{}, #{ headers: #{ "x-pause": "1" } }).stalled, "paused");
        }
        fn test_configuration() {
            assert_eq(plugin_error("auth.rhai", #{}), ());
            assert_contains(plugin_error("auth.rhai", #{}, #{ limits: #{ max_operations: 1 } }), "max_operations");
            assert_contains(plugin_error("missing.rhai", #{}), "cannot read");
            let p = plugin("auth.rhai", #{}, #{ error_policy: #{ mode: "fail_open" } });
            p.answer("auth", #{ body: `{"token":"t"}` });
            let r = p.send(#{}, #{ status: 200, headers: #{ "x-boom": "1" } });
            r.assert_error("boom");
            r.assert_status(200);
        }
        fn test_general_assertions() {
            assert(true);
            assert(1 < 2, "maths");
            assert_eq([1, #{ a: "b" }], [1, #{ a: "b" }]);
            assert_ne(1, 2);
            assert_contains("hello", "ell");
            assert_contains([1, 2], 2);
            assert_contains(#{ a: 1 }, "a");
            print("printed");
        }
        "#,
    );
}

#[test]
fn failures_name_the_assertion_expected_actual_and_line() {
    let f = failure(
        "f_status",
        "fn test_x() {\n  let p = plugin(\"lib/body.rhai\");\n  p.get(\"/\").assert_status(201);\n}",
    );
    assert_eq!(
        f,
        "line 3: assert_status: expected 201, actual 200 (response 200 \"\")"
    );

    let f = failure(
        "f_helper",
        "fn check(r) {\n  r.assert_upstream_header(\"x\", \"1\");\n}\nfn test_x() {\n  check(plugin(\"lib/body.rhai\").get(\"/\"));\n}",
    );
    assert_eq!(
        f,
        "line 2: assert_upstream_header(\"x\"): expected \"1\", actual () (in check() called at line 5)"
    );

    let f = failure(
        "f_local",
        "fn test_x() {\n  let p = plugin(\"auth.rhai\");\n  p.add_cluster(\"auth\");\n  p.get(\"/\").assert_upstream_header(\"a\", \"b\");\n}",
    );
    assert_eq!(
        f,
        "line 4: assert_upstream_header(\"a\"): the request never reached the upstream (local response 403 \"denied 504\")"
    );

    let f = failure(
        "f_callout",
        "fn test_x() {\n  let p = plugin(\"auth.rhai\");\n  p.answer(\"auth\", ());\n  p.get(\"/\").assert_callout(0, #{ path: \"/other\" });\n}",
    );
    assert_eq!(
        f,
        "line 4: assert_callout(0): path: expected \"/other\", actual \"/token\""
    );

    let f = failure(
        "f_unchecked",
        "fn test_x() {\n  let p = plugin(\"auth.rhai\");\n  p.answer(\"auth\", #{ body: `{\"token\":\"t\"}` });\n  p.send(#{}, #{ headers: #{ \"x-boom\": \"1\" } });\n}",
    );
    assert!(f.starts_with("line 4: the script failed on the request sent here: script error in on_response_headers"), "{f}");
    assert!(f.contains("r.assert_error"), "{f}");

    let f = failure(
        "f_config",
        "fn test_x() {\n  plugin(\"auth.rhai\", #{}, #{ limits: #{ max_operations: 1 } });\n}",
    );
    assert!(
        f.starts_with("line 2: plugin(\"auth.rhai\"): limits.max_operations = 1"),
        "{f}"
    );

    let f = failure(
        "f_field",
        "fn test_x() {\n  plugin(\"auth.rhai\").send(#{ pth: \"/\" });\n}",
    );
    assert!(
        f.starts_with("line 2: send(): request: unknown field `pth`"),
        "{f}"
    );

    let f = failure("f_eq", "fn test_x() {\n  assert_eq(\"a\", \"b\");\n}");
    assert_eq!(f, "line 2: assert_eq: expected \"b\", actual \"a\"");

    let f = failure(
        "f_log",
        "fn test_x() {\n  plugin(\"lib/body.rhai\").get(\"/\").assert_log(\"x\");\n}",
    );
    assert_eq!(
        f,
        "line 2: assert_log(\"x\"): expected a log line containing \"x\", actual no log line"
    );
}

#[test]
fn a_test_file_that_does_not_compile_is_one_failure() {
    let report = run("broken", "fn test_x() { let = ; }");
    assert_eq!((report.passed(), report.failed()), (0, 1));
    assert!(report.error.unwrap().starts_with("does not compile"));
}

#[test]
fn tests_run_in_definition_order() {
    let report = run(
        "order",
        "let top = [];\nfn test_b() { }\nfn test_a() { }\nfn helper() { }\nfn test_with_param(x) { }",
    );
    assert_eq!(report.error, None);
    let names: Vec<&str> = report.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["test_b", "test_a"]);
}

#[test]
fn the_clock_ticks_metrics_and_shared_data() {
    passes(
        "clock",
        r#"
        fn test_the_clock_starts_at_a_fixed_time_and_moves_when_told() {
            let p = plugin("clock.rhai");
            assert_eq(p.now_ms(), 1767225600000);
            assert_eq(p.logs[0].message, "configured at 1767225600000");
            p.get("/").assert_upstream_header("x-now", "1767225600000");
            p.advance_ms(1500);
            p.get("/").assert_upstream_header("x-now", "1767225601500");
            p.set_time_ms(1000);
            p.get("/").assert_upstream_header("x-now", "1000");
        }
        fn test_ticks_fire_as_test_time_passes() {
            let p = plugin("clock.rhai", (), #{ tick_period_ms: 100 });
            p.advance_ms(99);
            assert_eq(p.metric("ticks"), ());
            p.advance_ms(1);
            assert_eq(p.metric("ticks"), 1);
            p.advance_ms(250);
            assert_eq(p.metric("ticks"), 3);
            let ticks = p.logs.filter(|l| l.message.starts_with("tick at")).map(|l| l.message);
            assert_eq(ticks, ["tick at 1767225600100", "tick at 1767225600200", "tick at 1767225600300"]);
        }
        fn test_metrics_and_shared_data_by_name() {
            let p = plugin("clock.rhai");
            assert_eq(p.metric("requests"), ());
            assert_eq(p.shared_data("last_path"), ());
            p.get("/a");
            p.get("/b");
            assert_eq(p.metric("requests"), 2);
            assert_eq(p.metric("last"), 42);
            assert_eq(p.metric("sizes"), [7, 9, 7, 9]);
            assert_eq(p.shared_data("last_path"), "/b");
        }
        "#,
    );
}

#[test]
fn test_files_have_the_plugins_builtins_and_constants() {
    passes(
        "builtins",
        r#"
        const SECRET = "s3cr3t";
        const EXPECTED = #{ user: "ann" };
        fn test_builtins_make_fixtures() {
            assert_eq(hmac_sha256(SECRET, "GET\n/\n0\n").len(), 64);
            assert_eq(base64url_encode("hi?"), "aGk_");
            assert_eq(to_json(EXPECTED), `{"user":"ann"}`);
            assert_eq(parse_json(`{"user":"ann"}`), EXPECTED);
            assert_eq(now_ms(), 1767225600000);
            assert_eq(sha256("").len(), 64);
        }
        fn test_constants_are_seen_in_helpers() {
            assert_eq(helper(), "s3cr3t!");
        }
        fn helper() { SECRET + "!" }
        "#,
    );
}

#[test]
fn test_files_get_the_plugins_string_functions() {
    // `s.pad(10, "")` is the plugin's (src/sandbox/strings.rs), which leaves `s` as it is;
    // Rhai's added "" until the string was long enough, for good. On a thread, so that a
    // regression fails the test instead of hanging the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        passes(
            "strings",
            r#"fn test_pad() { let s = "ab"; s.pad(10, ""); assert_eq(s, "ab"); }"#,
        );
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the test file's pad(10, \"\") failed or never returned");
}

#[test]
fn tls_describes_the_connection_and_refuses_unknown_fields() {
    let f = failure(
        "tls_bad",
        r#"fn test_bad() { plugin("lib/body.rhai").tls(#{ subjekt: "CN=x" }); }"#,
    );
    assert!(
        f.contains("tls(): request.tls: unknown field `subjekt`"),
        "{f}"
    );
    let f = failure(
        "tls_sans",
        r#"fn test_bad() { plugin("lib/body.rhai").send(#{ tls: #{ uri_sans: "x" } }); }"#,
    );
    assert!(f.contains("request.tls.uri_sans must be an array"), "{f}");
}
