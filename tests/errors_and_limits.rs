//! Configuration refusals, the error policy and the sandbox limits.

use proxy_rhai::emulator::{Emulator, Request, Response};
use serde_json::json;

fn configure(config: serde_json::Value) -> Result<Emulator, String> {
    Emulator::new(&config.to_string())
}

#[test]
fn refused_configurations_say_why() {
    let refused = |c: &str| Emulator::new(c).err().expect("refused");
    assert!(refused("{not json").contains("not valid"));
    assert!(refused(r#"{"config": {}}"#).contains("no \"script\""));
    assert!(
        refused(r#"{"script": "fn on_request_headers() {}", "limit": {}}"#)
            .contains("unknown field `limit`")
    );
    let e = refused(r#"{"script": "fn on_request_headers() {\n  let x = ;\n}"}"#);
    assert_eq!(
        e,
        "script does not compile: Unexpected ';' at line 2, column 11"
    );
    assert!(refused(r#"{"script": "fn helper() {}"}"#).contains("defines no phase function"));
    assert!(refused(r#"{"script": "fn on_request_headers(x) {}"}"#)
        .contains("on_request_headers() must take no parameters"));
    assert!(
        refused(r#"{"script": "throw \"at load\"; fn on_request_headers() {}"}"#)
            .contains("script failed while loading: Runtime error: at load")
    );
    assert!(
        refused(r#"{"script": "fn on_request_headers() { eval(\"1\") }"}"#)
            .contains("'eval' is disabled")
    );
    assert!(
        refused(r#"{"script": "import \"x\" as y; fn on_request_headers() { }"}"#)
            .contains("reserved keyword 'import' is disabled")
    );
    assert!(refused(
        r#"{"script": "fn on_request_headers() {}", "limits": {"max_operations": 1}}"#
    )
    .contains("out of range"));
}

/// A refusal says what kind of mistake it is, and where in the script the script's own are.
#[test]
fn refusals_are_typed_with_the_script_position() {
    use proxy_rhai::config::ConfigErrorKind::{Compile, Invalid, Load, Phases};
    use proxy_rhai::emulator::EmulatorHost;
    use proxy_rhai::plugin::Plugin;
    let refusal = |config: serde_json::Value| {
        Plugin::configure(EmulatorHost::default(), config.to_string().as_bytes())
            .err()
            .expect("refused")
    };
    let e =
        refusal(json!({"script": "fn on_request_headers() {}", "limits": {"max_operations": 1}}));
    assert_eq!((e.kind, e.line, e.column), (Invalid, None, None));
    let e = refusal(json!({"script": "fn on_request_headers() {\n  let x = ;\n}"}));
    assert_eq!((e.kind, e.line, e.column), (Compile, Some(2), Some(11)));
    let e =
        refusal(json!({"script": "let a = 1;\nthrow \"at load\";\nfn on_request_headers() {}"}));
    assert_eq!((e.kind, e.line, e.column), (Load, Some(2), Some(1)));
    assert!(e.to_string().contains("at load"), "{e}");
    let e = refusal(json!({"script": "fn f() { throw 1; }\nf();\nfn on_request_headers() {}"}));
    assert_eq!((e.kind, e.line), (Load, Some(1)));
    let e = refusal(json!({"script": "fn helper() {}"}));
    assert_eq!(e.kind, Phases);
    let e = refusal(json!({"script": "fn on_request_headers() {}",
        "_rules_": [{"_match_route_": ["r"], "script": "fn on_request_headers() {\n x ++ }"}]}));
    assert_eq!((e.kind, e.line), (Compile, Some(2)));
    assert!(
        e.to_string()
            .starts_with("_rules_[0]: script does not compile"),
        "{e}"
    );
}

/// Every limit's highest documented value is safe with the others at their defaults, and a
/// combination that could take the VM's heap past what it can reach is refused.
#[test]
fn the_limits_are_safe_together() {
    use proxy_rhai::config::Limits;
    let script = "fn on_request_headers() {}";
    for (name, _, max) in Limits::RANGES {
        let limits = json!({ name: max });
        let accepted = configure(json!({"script": script, "limits": limits}));
        let max_memory_alone = name == "max_memory";
        match accepted {
            Ok(_) => assert!(!max_memory_alone, "{name} = {max} above max_vm_memory"),
            Err(e) => assert!(
                max_memory_alone && e.contains("more than limits.max_vm_memory"),
                "{name} = {max}: {e}"
            ),
        }
    }
    let refused = |limits: serde_json::Value| {
        configure(json!({"script": script, "limits": limits}))
            .err()
            .expect("refused")
    };
    let e = refused(json!({"max_vm_memory": 512 << 20, "max_string_size": 128 << 20}));
    assert!(
        e.contains("more than the 805306368 the VM can safely reach"),
        "{e}"
    );
    let e = refused(json!({"max_vm_memory": 512 << 20, "max_body_size": 128 << 20}));
    assert!(e.contains("can safely reach"), "{e}");
    // The old maxima: each could trap the VM on its own.
    for (name, old_max) in [
        ("max_memory", 1u64 << 30),
        ("max_string_size", 256 << 20),
        ("max_body_size", 256 << 20),
    ] {
        assert!(refused(json!({ name: old_max })).contains("out of range"));
    }
    assert!(configure(json!({"script": script,
        "limits": {"max_vm_memory": 512 << 20, "max_memory": 512 << 20}}))
    .is_ok());
}

#[test]
fn script_error_fails_closed_by_default_without_leaking_internals() {
    let p = configure(json!({"script": "fn on_request_headers() { throw \"secret detail\"; }"}))
        .unwrap();
    let o = p.run(
        &Request::get("/").header("x-request-id", "rid-1"),
        &mut Response::ok("up"),
    );
    assert_eq!(o.response.status, 500);
    assert!(o.upstream.is_none());
    assert!(!String::from_utf8_lossy(&o.response.body).contains("secret"));
    assert_eq!(o.script_errors(), ["script error in on_request_headers (request rid-1): Runtime error: secret detail (line 1, position 27)"]);
}

#[test]
fn error_policy_status_body_and_fail_open() {
    let p = configure(json!({"script": "fn on_request_headers() { throw 1; }",
        "error_policy": {"status": 503, "body": "try later"}}))
    .unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok("up"));
    assert_eq!(
        (o.response.status, o.response.body.as_slice()),
        (503, &b"try later"[..])
    );

    // The failed call changes nothing: not its header writes, not its path rewrite, not even
    // those a property read sent to the proxy before the error.
    let p = configure(json!({"script": "fn on_request_headers() { add_request_header(\"x-before\", \"1\"); replace_request_header(\":path\", \"/rewritten\"); get_property(\"request.path\"); throw 1; }",
        "error_policy": {"mode": "fail_open"}})).unwrap();
    let o = p.run(&Request::get("/original"), &mut Response::ok("up"));
    assert_eq!(o.response.status, 200);
    assert_eq!(o.response.body, b"up");
    assert_eq!(o.script_errors().len(), 1);
    assert_eq!(o.upstream_header("x-before"), None);
    assert_eq!(o.upstream_header(":path").as_deref(), Some("/original"));
}

#[test]
fn runaway_scripts_hit_limits_and_the_next_request_is_served() {
    for (script, expect) in [
        (
            "fn on_request_headers() { loop { } }",
            "limits.max_operations",
        ),
        (
            "fn f(n) { f(n + 1) }\nfn on_request_headers() { f(0) }",
            "limits.max_call_depth",
        ),
        (
            "fn on_request_headers() { let s = \"x\"; loop { s += s; } }",
            "Length of string too large",
        ),
        (
            // Doubling to the 4 Mi-item limit walks ~10 M items in size checks: they are charged
            // as operations (vendor/README.md, patch 9), and the operations limit comes first.
            "fn on_request_headers() { let a = [1]; loop { a += a; } }",
            "limits.max_operations",
        ),
        (
            "fn on_request_headers() { let b = blob(100000000); }",
            "Size of array/BLOB too large",
        ),
    ] {
        let p = configure(json!({"script": format!("{script}\nfn on_response_headers() {{ add_response_header(\"x-ok\", \"1\"); }}")})).unwrap();
        let o = p.run(&Request::get("/"), &mut Response::ok("up"));
        assert_eq!(o.response.status, 500, "{script}");
        let errors = o.script_errors();
        assert!(
            errors.len() == 1 && errors[0].contains(expect),
            "{script}: {errors:?}"
        );
    }
}

#[test]
fn methods_that_grow_their_object_hit_the_size_limits() {
    // After a method changes its object (`&mut` first argument), the object is measured again;
    // only pure methods (`len`, `contains`, `to_json`, ...) are not, as they change nothing.
    let limits = json!({"max_array_size": 100, "max_map_size": 100, "max_string_size": 1024});
    for (body, expect) in [
        (
            "let a = [1]; loop { a += a; }",
            "Size of array/BLOB too large",
        ),
        (
            "let a = []; loop { a.push(1); }",
            "Size of array/BLOB too large",
        ),
        (
            "let a = []; loop { a.append([1, 2, 3]); }",
            "Size of array/BLOB too large",
        ),
        (
            "let b = blob(); loop { b.push(1); }",
            "Size of array/BLOB too large",
        ),
        (
            "let a = [[]]; loop { a[0].push(1); }",
            "Size of array/BLOB too large",
        ),
        (
            "let m = #{}; for i in 0..1000 { let x = #{}; x[`k${i}`] = i; m.mixin(x); }",
            "Size of object map too large",
        ),
        (
            "let s = \"\"; loop { s.append(\"xyz\"); }",
            "Length of string too large",
        ),
        // Pure methods on values within the limits are not errors.
        (
            "let a = []; for i in 0..100 { a.push(i); a.len(); a.contains(i); to_json(#{a: a}); }",
            "",
        ),
    ] {
        let script = format!("fn on_request_headers() {{ {body} }}");
        let p = configure(json!({"script": script, "limits": limits})).unwrap();
        let o = p.run(&Request::get("/"), &mut Response::ok("up"));
        let errors = o.script_errors();
        if expect.is_empty() {
            assert!(errors.is_empty(), "{body}: {errors:?}");
        } else {
            assert!(
                errors.len() == 1 && errors[0].contains(expect),
                "{body}: {errors:?}"
            );
        }
    }
}

#[test]
fn the_operations_limit_says_where_it_stopped_the_script() {
    // Where the count crosses the limit: a statement, an expression, a method in a dot chain.
    // (In a phase function Rhai gives limit errors the call's position, which has none.)
    let statement = "let x = 0;\nloop {\n  x += 1;\n}\nfn on_request_headers() {}";
    let expressions = "let s = \"abc\";\nfor i in 0..100000 {\n  let n = s.len() + [1, 2].len();\n}\nfn on_request_headers() {}";
    for (script, max_operations, position) in [
        (statement, 1000, "line 3, position 8"),
        (statement, 1001, "line 3, position 3"),
        (statement, 1002, "line 3, position 5"),
        (expressions, 1000, "line 3, position 27"),
        (expressions, 1001, "line 3, position 21"),
        (expressions, 1002, "line 3, position 28"),
        (expressions, 1004, "line 3, position 19"),
    ] {
        let refused =
            configure(json!({"script": script, "limits": {"max_operations": max_operations}}));
        assert_eq!(
            refused.err().as_deref(),
            Some(format!("script failed while loading: the script ran past limits.max_operations ({max_operations} operations): a loop that never ends, or work too large for one call ({position})").as_str()),
            "{max_operations}"
        );
    }
}

#[test]
fn each_phase_call_counts_its_own_operations_and_exit_ends_only_that_call() {
    // ~150 operations per call: 40 calls (two phases, 20 requests) stay under a limit of 1,000
    // only if each call starts counting from zero.
    let p = configure(json!({"script": r#"
        fn on_request_headers() {
            let n = 0;
            for i in 0..30 { n += i; }
            add_request_header("x-sum", `${n}`);
            exit();
            add_request_header("x-after-exit", "1");
        }
        fn on_response_headers() {
            let n = 0;
            for i in 0..30 { n += i; }
            add_response_header("x-sum", `${n}`);
        }"#, "limits": {"max_operations": 1000}}))
    .unwrap();
    for _ in 0..20 {
        let o = p.run(&Request::get("/"), &mut Response::ok("up"));
        assert_eq!(o.script_errors(), Vec::<&str>::new());
        assert_eq!(o.upstream_header("x-sum").as_deref(), Some("435"));
        assert_eq!(o.upstream_header("x-after-exit"), None);
        assert_eq!(o.response_header("x-sum").as_deref(), Some("435"));
    }
}

#[test]
fn size_checks_count_as_operations() {
    // Every push measures the whole array again: 40,000 pushes walked 800 million items, seconds
    // of CPU within 120,000 operations. The walks are charged (one operation per 16 items), so
    // such a loop ends with the operations limit; a loop of 1,000 pushes is still well within it.
    let script = |n: u32| {
        format!(
            "fn on_request_headers() {{ let a = []; for i in 0..{n} {{ a.push(i); }} log_info(`${{a.len()}}`); }}"
        )
    };
    let p = configure(json!({"script": script(40_000)})).unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    let errors = o.script_errors();
    assert!(
        errors.len() == 1 && errors[0].contains("limits.max_operations"),
        "{errors:?}"
    );
    let p = configure(json!({"script": script(1_000)})).unwrap();
    for _ in 0..3 {
        let o = p.run(&Request::get("/"), &mut Response::ok(""));
        assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
        assert!(o.log.iter().any(|l| l.message == "1000"), "{:?}", o.log);
    }
    // The limit is the operations limit: 6,000 pushes exceed the default, not a higher one.
    let over = |limits: serde_json::Value| {
        let p = configure(json!({"script": script(6_000), "limits": limits})).unwrap();
        let o = p.run(&Request::get("/"), &mut Response::ok(""));
        o.script_errors()
            .iter()
            .any(|e| e.contains("limits.max_operations"))
    };
    assert!(over(json!({})));
    assert!(!over(json!({"max_operations": 2_000_000})));
    // A `let` (or an assignment) walks its value too, to make the copy writable: copying a
    // 3,000-item array 100,000 times took 3.1 s per request in Envoy, within the limits.
    let p = configure(json!({"script": "fn on_request_headers() {
        let big = []; big.pad(3000, 0); for i in 0..100000 { let b = big; } }"}))
    .unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    let errors = o.script_errors();
    assert!(
        errors.len() == 1 && errors[0].contains("limits.max_operations"),
        "{errors:?}"
    );
}

#[test]
fn work_on_large_values_counts_as_operations() {
    // One call on a large value used to count as one operation, however much it read or
    // copied: a loop of `s.to_upper()` on a 4 MB string ran for over a minute within
    // `max_operations`. Now 128 bytes of a string or a blob, or one item of an array or a map,
    // that a function gets or gives back count as a sixteenth of an operation (a 1 MB string
    // is ~7,800 operations each time): 100 passes exceed the default 500,000, 10
    // are well within it.
    let setup = "let s = \"x\"; s.pad(1000000, 'x'); let b = blob(1000000); \
                 let a = []; a.pad(100000, 0); let small = []; small.pad(1000, 1); let mid = []; mid.pad(10000, 0); \
                 let tiny = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];";
    for (what, body) in [
        ("a method reading a string", "s.contains(\"y\");"),
        ("a method copying a string", "s.to_upper();"),
        ("an operator copying a string", "let t = s + \"a\";"),
        (
            "`+=` on a string another variable shares",
            "let t = s; s += \"a\";",
        ),
        (
            "a method growing a string in place",
            "let t = \"x\"; t.pad(1000000, 'x');",
        ),
        ("a blob's method", "b.contains(7);"),
        // Each `==` `contains` makes is an operation (built-in ones run without a copy of the
        // call state, but they count).
        ("a method comparing each item", "mid.contains(1);"),
        ("a character by position", "s[999990];"),
        ("switch on a string", "switch s { \"a\" => 1, _ => 2 };"),
        ("an array passed to a script function", "f(a);"),
        // Each call from a native function back into the script counts 8 operations.
        ("a closure a native function calls", "small.map(|x| x + 1);"),
        // The operations a closure runs count too (they were lost when the call returned).
        (
            "a closure's own operations",
            "tiny.map(|x| { let y = 0; for i in 0..1000 { y += i; } y });",
        ),
        // Each comparison a sort may make counts one operation (1,000 items: ~10,000).
        ("a sort's comparisons", "let c = small; c.sort();"),
    ] {
        let run = |passes: u32| {
            let script = format!(
                "fn f(x) {{ 0 }} fn on_request_headers() {{ {setup} for i in 0..{passes} {{ {body} }} }}"
            );
            let p = configure(json!({ "script": script })).unwrap();
            let o = p.run(&Request::get("/"), &mut Response::ok(""));
            o.script_errors()
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        };
        let errors = run(100);
        assert!(
            errors.len() == 1 && errors[0].contains("limits.max_operations"),
            "{what}: {errors:?}"
        );
        assert!(run(10).is_empty(), "{what}: {:?}", run(10));
    }
}

#[test]
fn an_array_a_function_gives_back_counts_once() {
    // 16,001 pieces: the size check's walk counts them (~1,000 operations); their number was
    // counted again as data given back. 30 splits (and the `let`s) took 80,000-95,000
    // operations; now 60,000-65,000.
    let script = r#"fn on_request_headers() {
        let s = ","; s.pad(16000, ',');
        for i in 0..30 { let pieces = s.split(","); }
    }"#;
    let p = configure(json!({"script": script, "limits": {"max_operations": 75000}})).unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
}

#[test]
fn padding_with_an_empty_string_ends() {
    // `s.pad(10, "")` added "" until the string was long enough: a loop inside Rhai's `pad`,
    // where no limit reaches, that held the VM for good. It runs on a thread here so that a
    // regression fails the test instead of hanging the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let script = r#"fn on_request_headers() {
            let s = "ab"; s.pad(10, ""); s.pad(5, "xy"); log_info(s); }"#;
        let p = configure(json!({ "script": script })).unwrap();
        let o = p.run(&Request::get("/"), &mut Response::ok(""));
        let log: Vec<String> = o.log.iter().map(|l| l.message.clone()).collect();
        let errors: Vec<String> = o.script_errors().iter().map(|e| e.to_string()).collect();
        let _ = tx.send((errors, log));
    });
    let (errors, log) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("s.pad(10, \"\") never returned");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(log, ["abxyx"]);
}

#[test]
fn operations_limit_is_configurable() {
    let script = "fn on_request_headers() { let n = 0; for i in 0..5000 { n += i; } }";
    let tight = configure(json!({"script": script, "limits": {"max_operations": 1000}})).unwrap();
    assert_eq!(
        tight
            .run(&Request::get("/"), &mut Response::ok(""))
            .response
            .status,
        500
    );
    let roomy = configure(json!({"script": script, "limits": {"max_operations": 100000}})).unwrap();
    assert_eq!(
        roomy
            .run(&Request::get("/"), &mut Response::ok(""))
            .response
            .status,
        200
    );
}

#[test]
fn parse_json_refuses_a_document_past_the_size_limits_while_parsing() {
    // Items and entries count over the whole document, as Rhai's size limits count a value:
    // 2 arrays of 49 items hold 100 items in all, of 50 hold 102.
    let items = |n: usize| vec![1; n];
    let entries = |n: usize| {
        (0..n)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect::<serde_json::Map<_, _>>()
    };
    let run = |doc: serde_json::Value| {
        let script = "fn on_request_body() { log_info(parse_json(get_request_body()).len()); }";
        let p = configure(
            json!({"script": script, "limits": {"max_array_size": 100, "max_map_size": 20}}),
        )
        .unwrap();
        let o = p.run(&Request::post("/", doc.to_string()), &mut Response::ok(""));
        (
            o.log.iter().map(|l| l.message.clone()).collect::<Vec<_>>(),
            o.script_errors()
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>(),
        )
    };
    let (log, errors) = run(json!([items(49), items(49)]));
    assert!(errors.is_empty() && log == ["2"], "{log:?} {errors:?}");
    let (_, errors) = run(json!([items(50), items(50)]));
    assert!(
        errors.len() == 1
            && errors[0].contains("parse_json(): document too large: more than 100 array items (limits.max_array_size)"),
        "{errors:?}"
    );
    let (log, errors) = run(json!({"a": entries(9), "b": entries(9)}));
    assert!(errors.is_empty() && log == ["2"], "{log:?} {errors:?}");
    let (_, errors) = run(json!({"a": entries(10), "b": entries(10)}));
    assert!(
        errors.len() == 1
            && errors[0]
                .contains("document too large: more than 20 object entries (limits.max_map_size)"),
        "{errors:?}"
    );
}

#[test]
fn to_json_stops_at_the_string_size_limit_while_writing() {
    // 300 control characters are 300 bytes, and 1,802 of JSON text (`"\u0001..."`).
    let script = r#"fn on_request_headers() {
        let s = ""; s.pad(300, '\x01');
        log_info(to_json(#{ s: "short" }));
        to_json(s);
    }"#;
    let p = configure(json!({"script": script, "limits": {"max_string_size": 1024}})).unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert_eq!(o.log[0].message, r#"{"s":"short"}"#);
    let errors = o.script_errors();
    assert!(
        errors.len() == 1
            && errors[0].contains(
                "to_json(): the JSON text is longer than 1024 bytes (limits.max_string_size)"
            ),
        "{errors:?}"
    );
}

#[test]
fn encoding_keeps_to_the_string_size_limit() {
    // Under a 1,024-byte limit, each encoder's text from the largest input that fits, and from
    // one byte more: `url_encode` writes `%2F` for `/`, hex two digits a byte, base64 four
    // characters for three bytes (padded) or 4/3 of them (unpadded).
    let script = r#"fn on_request_headers() {
        let s = ""; s.pad(parse_int(get_request_header("x-n")), '/');
        let t = switch get_request_header("x-op") {
            "url_encode" => url_encode(s),
            "hex_encode" => hex_encode(s),
            "base64_encode" => base64_encode(s),
            "base64url_encode" => base64url_encode(s),
        };
        add_request_header("x-len", `${t.len()}`);
    }"#;
    let p = configure(json!({"script": script, "limits": {"max_string_size": 1024}})).unwrap();
    for (op, fits, at) in [
        ("url_encode", 341, "1023"),
        ("hex_encode", 512, "1024"),
        ("base64_encode", 768, "1024"),
        ("base64url_encode", 768, "1024"),
    ] {
        let run = |n: usize| {
            let request = Request::get("/")
                .header("x-op", op)
                .header("x-n", n.to_string().as_str());
            p.run(&request, &mut Response::ok(""))
        };
        let o = run(fits);
        assert_eq!(
            o.upstream_header("x-len"),
            Some(at.into()),
            "{op}: {:?}",
            o.log
        );
        let o = run(fits + 1);
        let errors = o.script_errors();
        assert!(
            errors
                .iter()
                .any(|e| e.contains(&format!("{op}(): the text would be"))
                    && e.contains("more than limits.max_string_size (1024)")),
            "{op}: {errors:?}"
        );
    }
}

#[test]
fn changing_case_keeps_to_the_string_size_limit() {
    // Under a 1,024-byte limit: `ß` (2 bytes) is `SS` (2), `ΐ` (2) is `Ϊ́` (6); a string over a
    // third of the limit is measured before its case changes, and must come out as Rust's own
    // change of case does (`Σ` at the end of a word is `ς`).
    let script = r#"fn on_request_headers() {
        let s = get_request_header("x-s");
        let t = if get_request_header("x-op") == "upper" { s.to_upper() } else { s.to_lower() };
        add_request_header("x-t", t);
    }"#;
    let p = configure(json!({"script": script, "limits": {"max_string_size": 1024}})).unwrap();
    let run = |op: &str, s: &str| {
        let request = Request::get("/").header("x-op", op).header("x-s", s);
        p.run(&request, &mut Response::ok(""))
    };
    let fits = run("upper", &"ß".repeat(512));
    assert_eq!(
        fits.upstream_header("x-t"),
        Some("SS".repeat(512)),
        "{:?}",
        fits.log
    );
    let lower = run("lower", &["ΑΣ"; 80].join(" "));
    assert_eq!(
        lower.upstream_header("x-t"),
        Some(["ας"; 80].join(" ")),
        "{:?}",
        lower.log
    );
    let past = run("upper", &"ΐ".repeat(200));
    assert!(
        past.script_errors()
            .iter()
            .any(|e| e.contains("Length of string too large")),
        "{:?}",
        past.log
    );
}

#[test]
fn formatting_a_value_stops_at_the_string_size_limit() {
    // With a 1,024-byte limit: the debug form of 1,022 `a`s is 1,024 bytes (the quotes added),
    // of 1,023 one too many; each `\x01` is five (`\u{1}`). Every way of formatting a value
    // gives a text up to the limit whole, and refuses one past it.
    let script = r#"fn on_request_headers() {
        let n = parse_int(get_request_header("x-n"));
        let c = get_request_header("x-c");
        let s = ""; s.pad(n, if c == "a" { 'a' } else { '\x01' });
        let text = switch get_request_header("x-op") {
            "to_debug" => s.to_debug(),
            "debug" => debug(s), // logs the text
            "array" => `${[s]}`,
            "map" => `${#{ k: s }}`,
            "plus" => "" + [s],
        };
        if text != () { add_request_header("x-len", `${text.len()}`); }
    }"#;
    let p = configure(json!({"script": script, "limits": {"max_string_size": 1024}})).unwrap();
    let run = |op: &str, c: &str, n: usize| {
        let n = n.to_string();
        let request = Request::get("/")
            .header("x-op", op)
            .header("x-c", c)
            .header("x-n", n.as_str());
        p.run(&request, &mut Response::ok(""))
    };
    // What each form writes around the string `s`: `"…"`, `["…"]`, `#{"k": "…"}`.
    for (op, around) in [
        ("to_debug", 2),
        ("debug", 2),
        ("array", 4),
        ("map", 10),
        ("plus", 4),
    ] {
        let at_limit = run(op, "a", 1024 - around);
        assert!(
            at_limit.script_errors().is_empty(),
            "{op}: {:?}",
            at_limit.log
        );
        if op != "debug" {
            assert_eq!(
                at_limit.upstream_header("x-len"),
                Some("1024".into()),
                "{op}"
            );
        }
        let past = run(op, "a", 1025 - around);
        assert!(
            past.script_errors()
                .iter()
                .any(|e| e.contains("Length of string too large")),
            "{op}: {:?}",
            past.log
        );
        let escaped = run(op, "x01", 250);
        assert!(
            escaped
                .script_errors()
                .iter()
                .any(|e| e.contains("Length of string too large")),
            "{op}: {:?}",
            escaped.log
        );
    }
}

#[test]
fn map_size_limit() {
    let p = configure(json!({"script": "fn on_request_headers() { let m = #{}; for i in 0..1000 { m[`k${i}`] = i; } log_info(m.len()); }",
        "limits": {"max_map_size": 100}})).unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok(""));
    assert!(
        o.script_errors()[0].contains("Size of object map too large"),
        "{:?}",
        o.log
    );
}

#[test]
fn every_script_error_counts_in_a_metric() {
    let p = configure(json!({"script": "fn on_request_headers() { if get_request_header(\":path\") == \"/bad\" { throw 1; } }"})).unwrap();
    for path in ["/bad", "/good", "/bad"] {
        p.run(&Request::get(path), &mut Response::ok(""));
    }
    let errors: Vec<_> = p
        .metrics()
        .into_iter()
        .filter(|m| m.name == proxy_rhai::bindings::SCRIPT_ERRORS_METRIC)
        .map(|m| m.value)
        .collect();
    assert_eq!(errors, [2]);
}

#[test]
fn deep_values_hit_the_nesting_limit_however_they_are_built() {
    // Dropping a value recurses once per level; in the proxy a value nested ~10 000 deep would
    // overflow the VM's stack, so every way of nesting stops at `max_value_depth`.
    for body in [
        "let a = []; loop { a = [a]; }",
        "let a = []; loop { let b = []; b.push(a); a = b; }",
        "let a = []; loop { let b = [0]; b[0] = a; a = b; }",
        "let a = []; loop { let b = []; b.pad(1, a); a = b; }",
        "let m = #{}; loop { m = #{ m: m }; }",
        "let m = #{}; loop { let n = #{}; n.m = m; m = n; }",
        "let f = || 0; loop { let g = f; f = || g; }",
        "let v = 0; loop { v = #{ a: [v] }; }",
    ] {
        let p =
            configure(json!({"script": format!("fn on_request_headers() {{ {body} }}")})).unwrap();
        let o = p.run(&Request::get("/"), &mut Response::ok("up"));
        assert_eq!(o.response.status, 500, "{body}");
        let errors = o.script_errors();
        assert!(
            errors.len() == 1 && errors[0].contains("Nesting depth of value too large"),
            "{body}: {errors:?}"
        );
    }
}

#[test]
fn curried_arguments_count_as_data() {
    // `f.curry(f)` doubles the value each time: its curried arguments count as array items.
    let p = configure(json!({
        "script": "fn on_request_headers() { let f = Fn(\"x\"); loop { f = f.curry(f); } }",
        "limits": {"max_array_size": 10000}}))
    .unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok("up"));
    assert!(
        o.script_errors()[0].contains("Size of array/BLOB too large"),
        "{:?}",
        o.log
    );
}

#[test]
fn values_within_the_nesting_limit_work_and_the_limit_is_configurable() {
    let script = r#"fn on_request_headers() {
        let depth = parse_int(get_request_header("x-depth"));
        let json = "";
        for i in 0..depth { json = "[" + json + "]"; }
        let v = parse_json(json);
        let a = [v];
        replace_request_header("x-back", to_json(a).len().to_string());
    }"#;
    let run = |limits: serde_json::Value, depth: usize| {
        let p = configure(json!({"script": script, "limits": limits})).unwrap();
        let request = Request::get("/").header("x-depth", depth.to_string());
        p.run(&request, &mut Response::ok("up"))
    };
    // serde_json parses at most 128 levels; the default limit (128) leaves room around that.
    let o = run(json!({}), 100);
    assert_eq!(o.response.status, 200, "{:?}", o.script_errors());
    assert_eq!(o.upstream_header("x-back").as_deref(), Some("202"));
    let o = run(json!({"max_value_depth": 16}), 20);
    assert!(o.script_errors()[0].contains("Nesting depth of value too large"));
    let o = run(json!({"max_value_depth": 16}), 15);
    assert_eq!(o.response.status, 200, "{:?}", o.script_errors());
    let refused = configure(json!({"script": script, "limits": {"max_value_depth": 513}})).err();
    assert!(refused
        .unwrap_or_default()
        .contains("limits.max_value_depth = 513 is out of range"));
}

/// No secret of the configuration (`config`, a rule's `config`) reaches a line the plugin logs
/// itself, whatever message quotes it; the script's own log lines are its choice.
#[test]
fn the_plugin_never_logs_a_configuration_secret() {
    const SECRET: &str = "sk_live_51Hx9QzT";
    const RULE_SECRET: &str = "rk_rule_7Kp2mW4v";
    let script = r#"
        fn on_request_headers() {
            let c = config();
            switch get_request_header("x-op") {
                "int" => parse_int(c.key),
                "fn" => Fn(c.key).call(),
                "cluster" => http_get(c.key, "/", [], 100, |s| {}),
                "throw" => throw c.key,
                "deferred" => set_context("op", "deferred"),
                "log" => log_warn(`the script's own choice: ${c.key}`),
                _ => {}
            }
        }
        fn on_response_headers() {
            if get_context("op") == "deferred" { parse_int(config().key); }
        }
        fn on_tick() { parse_int(config().key); }
    "#;
    let p = configure(json!({
        "script": script,
        "config": {"key": SECRET, "mode": "on"},
        "_rules_": [{"_match_route_": ["r"], "config": {"key": RULE_SECRET}}],
    }))
    .unwrap();
    for op in ["int", "fn", "cluster", "throw", "deferred"] {
        let o = p.run(
            &Request::get("/").header("x-op", op),
            &mut Response::ok("up"),
        );
        assert_eq!(o.script_errors().len(), 1, "{op}: {:?}", o.log);
        let line = o.script_errors()[0];
        assert!(!line.contains(SECRET), "{op}: {line}");
        assert!(line.contains("[redacted]"), "{op}: {line}");
    }
    p.tick();
    let last = p.log().last().unwrap().message.clone();
    assert!(last.starts_with("script error in on_tick"), "{last}");
    assert!(
        !last.contains(SECRET) && last.contains("[redacted]"),
        "{last}"
    );
    // What the script logs itself is its own choice.
    let o = p.run(
        &Request::get("/").header("x-op", "log"),
        &mut Response::ok("up"),
    );
    assert_eq!(
        o.log[0].message,
        format!("the script's own choice: {SECRET}")
    );

    // Configure-time refusals: a failing top-level statement, a rule's config, and a value
    // the parser quotes.
    let refused = |c: serde_json::Value| Emulator::new(&c.to_string()).err().expect("refused");
    let reason = refused(json!({
        "script": "parse_int(config().key); fn on_request_headers() {}",
        "config": {"key": SECRET},
    }));
    assert!(
        reason.starts_with("script failed while loading"),
        "{reason}"
    );
    assert!(
        !reason.contains(SECRET) && reason.contains("[redacted]"),
        "{reason}"
    );
    let reason = refused(json!({
        "script": "fn on_request_headers() {}",
        "_rules_": [{"_match_route_": ["r"], "config": {"password": "hunter2"},
                     "script": "parse_int(config().password); fn on_request_headers() {}"}],
    }));
    assert!(
        !reason.contains("hunter2") && reason.contains("[redacted]"),
        "{reason}"
    );
    let reason = refused(json!({
        "script": "fn on_request_headers() {}",
        "config": {"token": "tok_abcdef"},
        "error_policy": {"mode": "tok_abcdef"},
    }));
    assert!(reason.contains("unknown variant"), "{reason}");
    assert!(!reason.contains("tok_abcdef"), "{reason}");
    // Text that is not JSON: the parser says where, never what (so nothing to take out).
    let reason = Emulator::new(&format!(
        r#"{{"script": "s", "config": {{"key": "{SECRET}" "b": 1}}}}"#
    ))
    .err()
    .expect("refused");
    assert!(reason.contains("at line 1 column"), "{reason}");
    assert!(!reason.contains(SECRET), "{reason}");
    // Names (lowercase letters and -_./:) stay readable, as a cluster must.
    let p = configure(json!({
        "script": r#"fn on_request_headers() { http_get(config().cluster, "/", [], 100, |s| {}); }"#,
        "config": {"cluster": "token-svc"},
    }))
    .unwrap();
    let o = p.run(&Request::get("/"), &mut Response::ok("up"));
    assert!(o.script_errors()[0].contains("refused the call to cluster 'token-svc'"));
}
