//! The sandbox: what a script cannot reach, and what the plugin never leaks.

use proxy_rhai::emulator::{Emulator, Request, Response};
use serde_json::json;

fn refused(script: &str) -> String {
    Emulator::with_script(script, json!({}))
        .err()
        .expect("refused")
}

fn runtime_error(body: &str) -> String {
    let p =
        Emulator::with_script(&format!("fn on_request_headers() {{ {body} }}"), json!({})).unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    o.script_errors()
        .first()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[test]
fn no_eval_and_no_module_loading() {
    assert!(refused(r#"fn on_request_headers() { eval("1 + 1") }"#).contains("'eval' is disabled"));
    assert!(
        refused(r#"import "/etc/passwd" as p; fn on_request_headers() {}"#)
            .contains("'import' is disabled")
    );
}

#[test]
fn no_file_network_environment_or_process_access() {
    // Rhai has no such functions, and the plugin adds none: every attempt is "not found".
    for call in [
        r#"open("/etc/passwd")"#,
        r#"read_file("/etc/passwd")"#,
        r#"fs::read("/etc/passwd")"#,
        r#"env("HOME")"#,
        r#"getenv("HOME")"#,
        r#"system("ls")"#,
        r#"exec("ls")"#,
        r#"connect("127.0.0.1:80")"#,
        r#"http_request("http://example.com")"#,
    ] {
        let script = format!("fn on_request_headers() {{ {call}; }}");
        if let Err(refusal) = Emulator::with_script(&script, json!({})) {
            assert!(refusal.contains("does not compile"), "{call}: {refusal}");
            continue;
        }
        let error = runtime_error(&format!("{call};"));
        assert!(error.contains("no function"), "{call}: {error}");
    }
}

#[test]
fn the_only_way_out_is_the_proxy_api() {
    // Network goes through callouts to clusters the proxy knows, nowhere else.
    let error = runtime_error(r#"http_get("https://evil.example", "/", [], 100, |s, h, b| {});"#);
    assert!(
        error.contains("refused the call to cluster 'https://evil.example'"),
        "{error}"
    );
}

#[test]
fn secrets_in_config_are_never_logged_by_the_plugin() {
    let secret = "s3cr3t-t0ken-value";
    let p = Emulator::new(
        &json!({"script": "fn on_request_headers() { let k = config().api_key; throw \"failed\"; }",
                "config": {"api_key": secret}})
        .to_string(),
    )
    .unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert_eq!(o.script_errors().len(), 1);
    assert!(
        p.log().iter().all(|l| !l.message.contains(secret)),
        "{:?}",
        p.log()
    );
    assert!(!String::from_utf8_lossy(&o.response.body).contains(secret));

    // Nor when the configuration is refused.
    let e = Emulator::new(
        &json!({"script": "fn on_request_headers() { let x = ; }", "config": {"api_key": secret}})
            .to_string(),
    )
    .err()
    .unwrap();
    assert!(!e.contains(secret), "{e}");
    let e = Emulator::new(
        &json!({"script": "fn on_request_headers() {}", "config": {"api_key": secret}, "bogus": 1})
            .to_string(),
    )
    .err()
    .unwrap();
    assert!(!e.contains(secret), "{e}");
}

#[test]
fn per_request_state_is_isolated() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            log_info(`${get_context("user")}`);
            set_context("user", get_request_header("x-user"));
        }"#,
        json!({}),
    )
    .unwrap();
    for user in ["ann", "bob"] {
        let o = p.run(
            &Request::get("/").header("x-user", user),
            &mut Response::ok(""),
        );
        assert_eq!(
            o.log[0].message, "",
            "the previous request's context is gone"
        );
    }
}

#[test]
fn config_cannot_be_changed_by_a_request() {
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            let c = config();
            try { c.limit = 0; } catch (e) { }
            log_info(config().limit);
        }"#,
        json!({"limit": 10}),
    )
    .unwrap();
    for _ in 0..2 {
        assert_eq!(
            p.run(&Request::get("/"), &mut Response::ok("")).log[0].message,
            "10"
        );
    }
}

/// Whatever a call does to the script's top-level values, every other call (request, callback
/// or tick) sees them as configuration made them: a change is refused, or made to the call's
/// own copy.
#[test]
fn top_level_values_are_the_same_for_every_call() {
    let p = Emulator::with_script(
        r#"
        let seen = #{ last: "" };
        const REMEMBER = |x| { let prev = seen.last; seen.last = x; prev };
        const LIST = [1, 2];
        const NESTED = #{ inner: [1], m: #{ x: 1 } };
        fn grow() { this.push(9); }
        fn keep(a) { a.push(1); a.len() }
        fn attack(user) {
            let refused = [];
            for name in ["push", "nested push", "index", "nested property", "append", "clear", "this"] {
                try {
                    switch name {
                        "push" => LIST.push(3),
                        "nested push" => NESTED.inner.push(user),
                        "index" => { LIST[0] = user; }
                        "nested property" => { NESTED.m.x = user; }
                        "append" => { LIST += [5]; }
                        "clear" => LIST.clear(),
                        "this" => LIST.grow(),
                    }
                } catch (e) {
                    refused.push(name);
                }
            }
            // Changes made to copies are the caller's own.
            push(LIST, 4);
            let copy = LIST;
            copy.push(user);
            let nested = NESTED.inner;
            nested.push(user);
            keep(LIST);
            let c = config();
            c.keys.push(user);
            let prev = REMEMBER.call(user);
            let again = REMEMBER.call(user);
            `prev=${prev} again=${again} refused=${refused.len()} list=${LIST} nested=${NESTED} config=${config()} copy=${copy.len()}`
        }
        fn on_tick() { log_info("tick " + attack("tick")); }
        fn on_request_headers() { log_info(attack(get_request_header("x-user"))); }
        "#,
        json!({"keys": ["k"]}),
    )
    .unwrap();
    let expected = |user: &str| {
        format!(
            r#"prev= again={user} refused=7 list=[1, 2] nested=#{{"inner": [1], "m": #{{"x": 1}}}} config=#{{"keys": ["k"]}} copy=3"#
        )
    };
    p.tick();
    let tick = p
        .log()
        .last()
        .map(|l| l.message.clone())
        .unwrap_or_default();
    assert_eq!(tick, format!("tick {}", expected("tick")));
    for user in ["ann", "bob", "cid"] {
        let o = p.run(
            &Request::get("/").header("x-user", user),
            &mut Response::ok(""),
        );
        assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
        assert_eq!(o.log[0].message, expected(user));
    }
}

#[test]
fn sleep_is_refused_and_a_bad_sort_comparer_is_harmless() {
    // Rhai's `sleep` would block the worker (and traps the VM in Envoy).
    for call in ["sleep(1)", "sleep(0.5)"] {
        let error = runtime_error(&format!("{call};"));
        assert!(
            error.contains("sleep() is not available"),
            "{call}: {error}"
        );
    }
    // A comparer that is not a total order made Rust's sort panic: a trap in the proxy.
    let error = runtime_error(
        "let a = []; for i in 0..500 { a.push(i); }
         a.sort(|x, y| if (x + y) % 3 == 0 { -1 } else { 1 });
         let f = [2.0, 0.0 / 0.0, 1.0, 0.0 / 0.0, -1.0]; f.sort();
         if a.len() != 500 || f.len() != 5 { throw `lost items: ${a.len()} ${f.len()}`; }",
    );
    assert_eq!(error, "");
}

#[test]
fn a_string_is_a_value_never_the_name_of_a_function_to_call() {
    // Rhai's deprecated forms `map("f")`, `index_of("f")`, `sort("f")`, ... called the script
    // function named by the string; they are not built in (vendor/README.md, patch 4), so a
    // string given to `index_of` is the value searched for, as with any other type.
    let p = Emulator::with_script(
        r#"fn f(x) { true }
        fn on_request_headers() {
            log_info(`${["a", "f", "b"].index_of("f")} ${["a", "b"].index_of("f")}`);
            log_info(`${["a", "f"].contains("f")} ${[1, 2].index_of(|x| x == 2)}`);
            for attempt in [|| [1, 2].map("f"), || [1, 2].filter("f"), || [2, 1].sort("f")] {
                try { attempt.call(); log_info("called f"); } catch (e) { log_info(e.message); }
            }
        }"#,
        json!({}),
    )
    .unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    let logs: Vec<&str> = o.log.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(logs[..2], ["1 -1", "true 1"]);
    assert_eq!(logs.len(), 5, "{logs:?}");
    for (log, name) in logs[2..].iter().zip(["map", "filter", "sort"]) {
        assert!(
            log.starts_with(&format!("Function not found: {name} (array, &str")),
            "{log}"
        );
    }
}

#[test]
fn sorts_keep_their_order() {
    // Every sort runs the patched merge sort (vendor/README.md, patch 3): ascending, descending
    // and by a comparer, each stable. -0.0 and 0.0 compare equal, so they show it.
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            let f = [0.0, -0.0, 1.0, -0.0, 0.0, -2.5];
            log_info(`${f.order()} ${f.order_desc()}`);
            f.sort_desc(); f.sort();
            log_info(`${f}`);
            log_info(`${[3, -1, 2, 0].order()} ${[3, -1, 2, 0].order_desc()}`);
            log_info(`${["b", "a", "ab", ""].order()} ${['b', 'a', 'c'].order_desc()}`);
            log_info(`${[true, false, true].order()} ${[(), ()].order_desc()}`);
            let by = [5, 3, 4, 1];
            by.sort(|a, b| b - a);
            log_info(`${by} ${[5, 3, 4, 1].order(|a, b| a <= b)}`);
            log_info(`${[0.0, -0.0, 1.0].order(|a, b| 0)}`);
            for bad in [[1, "a"], [[1], [2]]] {
                try { bad.sort(); } catch (e) { log_info(e.message); }
            }
        }"#,
        json!({}),
    )
    .unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    let logs: Vec<&str> = o.log.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        logs,
        [
            "[-2.5, 0.0, -0.0, -0.0, 0.0, 1.0] [1.0, 0.0, -0.0, -0.0, 0.0, -2.5]",
            "[-2.5, 0.0, -0.0, -0.0, 0.0, 1.0]",
            "[-1, 0, 2, 3] [3, 2, 0, -1]",
            r#"["", "a", "ab", "b"] [c, b, a]"#,
            "[false, true, true] [(), ()]",
            "[5, 4, 3, 1] [1, 3, 4, 5]",
            "[0.0, -0.0, 1.0]",
            "Function not found: elements of different types cannot be sorted",
            "Function not found: elements of array cannot be sorted",
        ]
    );
}
