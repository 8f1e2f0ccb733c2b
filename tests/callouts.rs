//! Callouts: dispatch, callbacks queued per call, automatic and explicit resume, failures.

use proxy_rhai::emulator::{header, Callout, Emulator, Reply, Request, Response};
use serde_json::json;

fn plugin(script: &str) -> Emulator {
    let e = Emulator::with_script(script, json!({})).expect("script configures");
    e.add_cluster("auth");
    e.add_cluster("other");
    e
}

fn answer(status: u32, headers: &[(&str, &str)], body: &str) -> Reply {
    Reply::Answer {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

fn count(trace: &[String], call: &str) -> usize {
    trace.iter().filter(|t| t.starts_with(call)).count()
}

#[test]
fn token_from_the_answer_is_added_and_the_request_resumes_by_itself() {
    let p = plugin(
        r#"fn on_request_headers() {
        let user = get_request_header("x-user");
        dispatch_http_call("auth", [[":method", "POST"], [":path", "/token"], [":authority", "auth"]], `{"user":"${user}"}`, 1000, |status, headers, body| {
            let token = parse_json(body).token;
            add_request_header("authorization", `Bearer ${token}`);
            add_request_header("x-auth-status", status.to_string());
            add_request_header("x-auth-via", get_http_call_response_header_or(headers, "x-via"));
        });
    }
    fn get_http_call_response_header_or(headers, name) {
        for h in headers { if h[0] == name { return h[1]; } }
        "none"
    }"#,
    );
    let mut callouts = |c: &Callout| {
        assert_eq!(c.cluster, "auth");
        assert_eq!(c.body, br#"{"user":"ann"}"#);
        assert_eq!(header(&c.headers, ":path").as_deref(), Some("/token"));
        answer(200, &[("x-via", "authsvc")], r#"{"token":"t-1"}"#)
    };
    let o = p.run_with(
        &Request::get("/").header("x-user", "ann"),
        &mut Response::ok("up"),
        &mut callouts,
    );
    assert_eq!(
        o.upstream_header("authorization").as_deref(),
        Some("Bearer t-1")
    );
    assert_eq!(o.upstream_header("x-auth-status").as_deref(), Some("200"));
    assert_eq!(o.upstream_header("x-auth-via").as_deref(), Some("authsvc"));
    assert_eq!(o.callouts.len(), 1);
    assert_eq!(count(&o.trace, "resume_http_request"), 1);
}

#[test]
fn callback_answers_locally_and_the_request_never_reaches_upstream() {
    let p = plugin(
        r#"fn on_request_headers() {
        http_get("auth", "/check", [], 500, |status, headers, body| {
            if status != 200 { send_http_response(if status == 504 { 503 } else { 401 }, [], "denied: " + status); }
        });
    }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |_: &Callout| answer(403, &[], ""),
    );
    assert_eq!(
        (o.response.status, o.response.body.as_slice()),
        (401, &b"denied: 403"[..])
    );
    assert!(o.upstream.is_none());
    assert_eq!(count(&o.trace, "resume_http_request"), 0);

    let o = p.run(&Request::get("/"), &mut Response::ok("up")); // no answer: timeout
    assert_eq!(
        (o.response.status, o.response.body.as_slice()),
        (503, &b"denied: 504"[..])
    );
}

#[test]
fn parallel_calls_all_land_before_the_request_resumes() {
    let p = plugin(
        r#"fn on_request_headers() {
        for svc in ["auth", "other"] {
            let name = svc;
            http_get(svc, "/" + svc, [], 1000, |status, headers, body| {
                add_request_header("x-from-" + name, body);
                log_info(`callback ${name}`);
            });
        }
    }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |c: &Callout| answer(200, &[], &format!("{}-answer", c.cluster)),
    );
    assert_eq!(
        o.upstream_header("x-from-auth").as_deref(),
        Some("auth-answer")
    );
    assert_eq!(
        o.upstream_header("x-from-other").as_deref(),
        Some("other-answer")
    );
    let resume = o
        .trace
        .iter()
        .position(|t| t.starts_with("resume_http_request"))
        .unwrap();
    let last_callback = o
        .trace
        .iter()
        .rposition(|t| t.contains("callback other"))
        .unwrap();
    assert!(resume > last_callback, "{:#?}", o.trace);
    assert_eq!(count(&o.trace, "resume_http_request"), 1);
}

#[test]
fn timeout_runs_the_callback_with_envoys_504_and_a_failure_with_status_zero() {
    let p = plugin(
        r#"fn on_request_headers() {
        http_get("auth", "/slow", [], 50, |status, headers, body| {
            add_request_header("x-result", `${status}|${headers.len()}|${body.len()}|${get_http_call_response_headers().len()}|${get_http_call_response_body().len()}`);
        });
    }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |c: &Callout| {
            assert_eq!(c.timeout.as_millis(), 50);
            Reply::NoAnswer
        },
    );
    assert_eq!(
        o.upstream_header("x-result").as_deref(),
        Some("504|3|24|3|24"),
        "Envoy's own `upstream request timeout`"
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |_: &Callout| Reply::Failure,
    );
    assert_eq!(o.upstream_header("x-result").as_deref(), Some("0|0|0|0|0"));
}

#[test]
fn a_refused_dispatch_can_be_caught_and_otherwise_follows_the_error_policy() {
    let p = plugin(
        r#"fn on_request_headers() {
        try { http_get("nowhere", "/", [], 100, |s, h, b| {}); }
        catch (e) { add_request_header("x-caught", "yes"); log_warn(e); }
    }"#,
    );
    let o = p.run(&Request::get("/"), &mut Response::ok("up"));
    assert_eq!(o.upstream_header("x-caught").as_deref(), Some("yes"));
    assert!(
        o.log[0]
            .message
            .contains("refused the call to cluster 'nowhere'"),
        "{:?}",
        o.log
    );

    let p = plugin(
        r#"fn on_request_headers() { dispatch_http_call("auth", [[":path", "/"]], "", 100, |s, h, b| {}); }"#,
    );
    let o = p.run(&Request::get("/"), &mut Response::ok("up"));
    assert_eq!(
        o.response.status, 500,
        "missing :method and :authority: refused, uncaught"
    );
    assert!(o.script_errors()[0].contains("refused the call to cluster 'auth'"));
}

#[test]
fn explicit_resume_never_leads_to_a_second_resume() {
    let p = plugin(
        r#"fn on_request_headers() {
        http_get("auth", "/a", [], 100, |s, h, b| { add_request_header("x-a", "1"); log_info(resume_http_request()); log_info(resume_http_request()); });
        http_get("other", "/b", [], 100, |s, h, b| { log_info("late callback"); });
    }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |_: &Callout| answer(200, &[], ""),
    );
    assert_eq!(count(&o.trace, "resume_http_request"), 1);
    assert_eq!(o.upstream_header("x-a").as_deref(), Some("1"));
    let lines: Vec<_> = o.log.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(lines, ["true", "false", "late callback"]);
}

#[test]
fn error_in_a_callback_follows_the_policy_and_the_plugin_keeps_serving() {
    let p = plugin(
        r#"fn on_request_headers() {
        if get_request_header(":path") == "/bad" { http_get("auth", "/", [], 100, |s, h, b| { throw "callback broke"; }); }
    }"#,
    );
    let o = p.run_with(
        &Request::get("/bad"),
        &mut Response::ok("up"),
        &mut |_: &Callout| answer(200, &[], ""),
    );
    assert_eq!(o.response.status, 500);
    assert!(o.script_errors()[0].contains("callout callback of on_request_headers"));
    assert!(o.script_errors()[0].contains("callback broke"));
    let o = p.run(&Request::get("/good"), &mut Response::ok("up"));
    assert_eq!(o.response.status, 200);
}

/// `resume_http_request()` takes effect when the callback returns (as in Envoy): until then
/// the request's headers and id are still there, and an error after it is logged with the id.
#[test]
fn a_resume_takes_effect_when_the_callback_returns() {
    let p = plugin(
        r#"fn on_request_headers() {
        http_get("auth", "/a", [], 100, |s, h, b| {
            resume_http_request();
            log_info(`after the resume: ${get_property("request.id")}|${get_request_header("x-a")}`);
            throw "failed after the resume";
        });
    }"#,
    );
    let o = p.run_with(
        &Request::get("/")
            .header("x-request-id", "rid-7")
            .header("x-a", "1"),
        &mut Response::ok("up"),
        &mut |_: &Callout| answer(200, &[], ""),
    );
    let lines: Vec<_> = o.log.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(lines[0], "after the resume: rid-7|1", "{lines:?}");
    assert_eq!(o.script_errors().len(), 1);
    assert!(
        o.script_errors()[0].starts_with(
            "script error in callout callback of on_request_headers (request rid-7): \
             Runtime error: failed after the resume"
        ),
        "{:?}",
        o.script_errors()
    );
}

#[test]
fn callouts_from_every_phase() {
    let p = plugin(
        r#"
        fn on_request_body() { http_post("auth", "/scan", [], get_request_body(), 100, |s, h, b| { replace_request_body(b); }); }
        fn on_response_headers() { http_get("auth", "/tag", [], 100, |s, h, b| { add_response_header("x-tag", b); }); }
        fn on_response_body() { http_get("other", "/suffix", [], 100, |s, h, b| { append_response_body(b); }); }"#,
    );
    let o = p.run_with(
        &Request::post("/", "dirty"),
        &mut Response::ok("resp"),
        &mut |c: &Callout| {
            let path = header(&c.headers, ":path").unwrap();
            let body = match path.as_str() {
                "/scan" => String::from_utf8_lossy(&c.body).replace("dirty", "clean"),
                "/tag" => "tagged".into(),
                _ => "+suffix".into(),
            };
            answer(200, &[], &body)
        },
    );
    assert_eq!(o.upstream.as_ref().unwrap().body, b"clean");
    assert_eq!(o.response_header("x-tag").as_deref(), Some("tagged"));
    assert_eq!(o.response.body, b"resp+suffix");
    assert_eq!(count(&o.trace, "resume_http_request"), 1);
    assert_eq!(count(&o.trace, "resume_http_response"), 2);
    let methods: Vec<_> = o
        .callouts
        .iter()
        .map(|c| header(&c.headers, ":method").unwrap())
        .collect();
    assert_eq!(methods, ["POST", "GET", "GET"]);
}

#[test]
fn a_callback_may_dispatch_again_and_the_request_waits_for_it() {
    let p = plugin(
        r#"fn on_request_headers() {
        http_get("auth", "/first", [], 100, |s, h, b| {
            http_get("other", "/second", [], 100, |s2, h2, b2| { add_request_header("x-chain", b + b2); });
        });
    }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |c: &Callout| answer(200, &[], &c.cluster),
    );
    assert_eq!(o.upstream_header("x-chain").as_deref(), Some("authother"));
    assert_eq!(count(&o.trace, "resume_http_request"), 1);
}

#[test]
fn call_answer_getters_only_in_callbacks_and_convenience_defaults() {
    let p = plugin(r#"fn on_request_headers() { get_http_call_response_body(); }"#);
    let o = p.run(&Request::get("/"), &mut Response::ok("up"));
    assert!(o.script_errors()[0].contains("only available inside a callout callback"));

    let p = plugin(
        r#"fn on_request_headers() {
        http_get("auth", "/x", #{"x-k": "v"}, |s, h, b| {});
        http_post("auth", "/y", [], "data", |s, h, b| {});
        http_call("DELETE", "auth", "/z", [[":authority", "custom"]], "", 100, |s, h, b| {});
    }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |_: &Callout| answer(204, &[], ""),
    );
    let calls: Vec<_> = o
        .callouts
        .iter()
        .map(|c| {
            (
                header(&c.headers, ":method").unwrap(),
                header(&c.headers, ":authority").unwrap(),
                c.timeout.as_millis(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("GET".into(), "auth".into(), 500),
            ("POST".into(), "auth".into(), 500),
            ("DELETE".into(), "custom".into(), 100)
        ]
    );
    assert_eq!(header(&o.callouts[0].headers, "x-k").as_deref(), Some("v"));
}

#[test]
fn an_unreachable_target_answers_envoys_503_and_a_timeout_status_zero() {
    let p = plugin(
        r#"fn on_request_headers() {
        http_get("auth", "/", [], 100, |status, headers, body| { add_request_header("x-got", `${status}|${headers.len()}|${body}`); });
    }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |_: &Callout| Reply::ConnectFailure,
    );
    assert_eq!(
        o.upstream_header("x-got").as_deref(),
        Some("503|3|upstream connect error or disconnect/reset before headers. reset reason: remote connection failure")
    );
}

#[test]
fn callbacks_take_as_many_of_status_headers_body_as_they_need() {
    let p = plugin(
        r#"fn on_request_headers() {
        let tag = "captured";
        http_get("auth", "/0", [], 100, || { add_request_header("x-zero", tag); });
        http_get("auth", "/1", [], 100, |status| { add_request_header("x-one", `${status}`); });
        http_get("auth", "/2", [], 100, |status, headers| { add_request_header("x-two", `${status}/${headers.len()}`); });
        http_get("auth", "/3", [], 100, |status, headers, body| { add_request_header("x-three", `${status}/${headers.len()}/${body}/${tag}`); });
        http_get("auth", "/named", [], 100, Fn("named_callback"));
    }
    fn named_callback(status, headers, body) { add_request_header("x-named", body); }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |c: &Callout| answer(201, &[("x-a", "1")], &header(&c.headers, ":path").unwrap()),
    );
    assert_eq!(o.upstream_header("x-zero").as_deref(), Some("captured"));
    assert_eq!(o.upstream_header("x-one").as_deref(), Some("201"));
    assert_eq!(o.upstream_header("x-two").as_deref(), Some("201/2"));
    assert_eq!(
        o.upstream_header("x-three").as_deref(),
        Some("201/2//3/captured")
    );
    assert_eq!(o.upstream_header("x-named").as_deref(), Some("/named"));
}

#[test]
fn closures_of_different_scripts_never_share_a_name() {
    // Closures are named by a count (vendor/README.md, patch 4): the same closure at the same
    // place in two scripts, or in one script configured twice, has a name of its own, and a
    // callback runs its own script's functions.
    let script = |tag: &str| {
        format!(
            r#"fn on_request_headers() {{
    let f = |status| {{ add_request_header("x-tag", `${{tag()}}/${{status}}`); }};
    add_request_header("x-name", f.name);
    http_get("auth", "/", [], 100, f);
}}
fn tag() {{ "{tag}" }}"#
        )
    };
    let mut names = Vec::new();
    for tag in ["a", "b", "a"] {
        let o = plugin(&script(tag)).run_with(
            &Request::get("/"),
            &mut Response::ok("up"),
            &mut |_: &Callout| answer(201, &[], ""),
        );
        assert_eq!(
            o.upstream_header("x-tag"),
            Some(format!("{tag}/201")),
            "{:?}",
            o.script_errors()
        );
        let name = o.upstream_header("x-name").unwrap_or_default();
        assert!(name.starts_with("anon$"), "{name}");
        assert!(!names.contains(&name), "{name} twice");
        names.push(name);
    }
}

#[test]
fn a_callback_body_is_text_only_within_the_string_size_limit() {
    // 400 bytes of ff are 1,200 bytes of text (U+FFFD is three): over a 1,024-byte limit, the
    // callback that takes `body` is refused it, as `get_http_call_response_body()` is; one
    // that takes only status and headers runs.
    let script = r#"fn on_request_headers() {
        if get_request_header("x-body") == "yes" {
            http_get("auth", "/", [], 1000, |status, headers, body| {
                add_request_header("x-len", `${body.len()}`);
            });
        } else {
            http_get("auth", "/", [], 1000, |status, headers| {
                add_request_header("x-status", `${status}`);
            });
        }
    }"#;
    let p =
        Emulator::new(&json!({"script": script, "limits": {"max_string_size": 1024}}).to_string())
            .expect("script configures");
    p.add_cluster("auth");
    let binary = || Reply::Answer {
        status: 200,
        headers: vec![],
        body: vec![0xff; 400],
    };
    let o = p.run_with(
        &Request::get("/").header("x-body", "yes"),
        &mut Response::ok("up"),
        &mut |_: &Callout| binary(),
    );
    assert_eq!(o.response.status, 500, "{:?}", o.log);
    assert!(
        o.script_errors().iter().any(|e| e.contains(
            "the callout answer's body (the callback's `body`): the text would be 1200 bytes, \
             more than limits.max_string_size (1024)"
        )),
        "{:?}",
        o.log
    );
    let o = p.run_with(
        &Request::get("/").header("x-body", "no"),
        &mut Response::ok("up"),
        &mut |_: &Callout| binary(),
    );
    assert_eq!(o.upstream_header("x-status").as_deref(), Some("200"));
}

/// A failed callback is undone whole, its writes before `resume_http_request()` included;
/// with fail_open the request then goes on.
#[test]
fn a_failed_callback_that_resumed_is_undone_whole() {
    let p = Emulator::new(
        &json!({
            "script": r#"fn on_request_headers() {
                http_get("auth", "/check", [], 1000, |status| {
                    add_request_header("x-before", "1");
                    resume_http_request();
                    add_request_header("x-after", "1");
                    throw "after the resume";
                });
            }"#,
            "error_policy": {"mode": "fail_open"}
        })
        .to_string(),
    )
    .unwrap();
    p.add_cluster("auth");
    let mut callouts = |_: &Callout| answer(200, &[], "");
    let o = p.run_with(&Request::get("/"), &mut Response::ok(""), &mut callouts);
    assert_eq!(o.script_errors().len(), 1);
    assert_eq!(o.upstream_header("x-before"), None);
    assert_eq!(o.upstream_header("x-after"), None);
    assert_eq!(o.response.status, 200);
}

/// The request header `x-result` the script's callback adds, its callout answered `reply`.
fn x_result(p: &Emulator, reply: Reply) -> String {
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok(""),
        &mut |_: &Callout| reply.clone(),
    );
    assert!(o.script_errors().is_empty(), "{:?}", o.log);
    o.upstream_header("x-result").unwrap()
}

/// A fourth callback parameter says why there was no real answer: Envoy's own 504 and 503
/// are told apart from a target's by their exact headers and text.
#[test]
fn a_callback_is_told_a_timeout_a_connect_failure_or_a_reset() {
    let p = plugin(
        r#"fn on_request_headers() {
            http_get("auth", "/", [], 100, |status, headers, body, failure| {
                add_request_header("x-result", `${status} ${failure ?? "answered"}`);
            });
        }"#,
    );
    let run = |reply: Reply| x_result(&p, reply);
    assert_eq!(run(Reply::NoAnswer), "504 timeout");
    assert_eq!(run(Reply::ConnectFailure), "503 connect_failure");
    assert_eq!(run(Reply::Reset), "503 reset");
    assert_eq!(run(Reply::Failure), "0 reset");
    assert_eq!(run(answer(200, &[], "ok")), "200 answered");
    // A target's own 504 or 503, even with Envoy's texts, is an answer.
    assert_eq!(
        run(answer(504, &[], "upstream request timeout")),
        "504 answered"
    );
    assert_eq!(
        run(answer(503, &[("content-type", "text/plain")], "down")),
        "503 answered"
    );
}

/// A 504 with exactly Envoy's headers and text is a timeout only when it comes at the call's
/// deadline: earlier, it is the target's own answer. The emulated clock moves on to the
/// deadline when a call times out.
#[test]
fn a_timeout_is_told_by_the_calls_own_deadline() {
    let p = plugin(
        r#"fn on_request_headers() {
            let sent = now_ms();
            http_get("auth", "/", [], 1000, |status, headers, body, failure| {
                add_request_header("x-result", `${status} ${failure ?? "answered"} after ${now_ms() - sent} ms`);
            });
        }"#,
    );
    let run = |reply: Reply| x_result(&p, reply);
    assert_eq!(run(Reply::NoAnswer), "504 timeout after 1000 ms");
    let envoys = answer(
        504,
        &[("content-length", "24"), ("content-type", "text/plain")],
        "upstream request timeout",
    );
    assert_eq!(run(envoys.clone()), "504 answered after 0 ms");
    let late = p.run_with(
        &Request::get("/"),
        &mut Response::ok(""),
        &mut |_: &Callout| {
            p.advance_ms(950);
            envoys.clone()
        },
    );
    assert_eq!(
        late.upstream_header("x-result").as_deref(),
        Some("504 timeout after 950 ms"),
        "within the timer's slack of the deadline"
    );
}

/// Cluster names as Higress's Go SDK makes them (`pkg/wrapper/cluster_wrapper.go`:
/// `outbound|%d||%s` for FQDNCluster, `outbound|%d|%s|%s.%s.svc.cluster.local` for K8sCluster,
/// `outbound|%d||%s.dns`, `outbound|%d||%s.static`, `outbound|%d|%s|%s.%s.%s.nacos`,
/// `outbound|%d||%s.%s.consul`), and a callout's `:authority` from them.
#[test]
fn higress_cluster_names_and_their_authority() {
    let names = Emulator::with_script(
        r#"fn on_request_headers() {}
        const NAMES = [
            service_cluster("auth.example.com", 443),
            k8s_cluster("users", "prod", 8080),
            k8s_cluster("users", "", 8080),
            k8s_cluster("users", "prod", 8080, "v2"),
            dns_cluster("idp", 443),
            static_cluster("legacy", 80),
            nacos_cluster("orders", "", "public", 8080),
            nacos_cluster("orders", "my_group", "ns-1", 8080),
            consul_cluster("billing", "dc1", 8500),
        ];
        log_info(NAMES.reduce(|all, n| all + n + "\n", ""));"#,
        json!({}),
    )
    .expect("script configures");
    let logged: Vec<String> = names.log().into_iter().map(|l| l.message).collect();
    let logged = logged.join("\n");
    let expected = [
        "outbound|443||auth.example.com",
        "outbound|8080||users.prod.svc.cluster.local",
        "outbound|8080||users.default.svc.cluster.local",
        "outbound|8080|v2|users.prod.svc.cluster.local",
        "outbound|443||idp.dns",
        "outbound|80||legacy.static",
        "outbound|8080||orders.DEFAULT-GROUP.public.nacos",
        "outbound|8080||orders.my-group.ns-1.nacos",
        "outbound|8500||billing.dc1.consul",
    ];
    assert!(logged.contains(&(expected.join("\n") + "\n")), "{logged}");

    for bad in [
        r#"service_cluster("a.example", 0)"#,
        r#"service_cluster("a.example", 65536)"#,
        r#"service_cluster("a|b", 80)"#,
        r#"k8s_cluster("", "prod", 80)"#,
    ] {
        let e = Emulator::with_script(&format!("fn on_request_headers() {{}}\n{bad};"), json!({}));
        assert!(e.is_err(), "{bad} configured");
    }

    // A convenience callout to such a name has the service's host as `:authority`.
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            http_get(k8s_cluster("users", "prod", 8080), "/me", [], |status| {});
            http_get(static_cluster("legacy", 80), "/", [], |status| {});
            http_get(k8s_cluster("users", "prod", 8080), "/", #{ ":authority": "users.example" }, |status| {});
        }"#,
        json!({}),
    )
    .expect("script configures");
    p.add_cluster("outbound|8080||users.prod.svc.cluster.local");
    p.add_cluster("outbound|80||legacy.static");
    let mut authorities = Vec::new();
    p.run_with(
        &Request::get("/"),
        &mut Response::ok(""),
        &mut |c: &Callout| {
            authorities.push((c.cluster.clone(), header(&c.headers, ":authority").unwrap()));
            answer(200, &[], "")
        },
    );
    assert_eq!(
        authorities,
        [
            (
                "outbound|8080||users.prod.svc.cluster.local".to_string(),
                "users.prod.svc.cluster.local".to_string()
            ),
            (
                "outbound|80||legacy.static".to_string(),
                "legacy".to_string()
            ),
            (
                "outbound|8080||users.prod.svc.cluster.local".to_string(),
                "users.example".to_string()
            ),
        ]
    );
}

/// A late callback's local response after the response headers went to the client is a
/// script error: the response the client got stands.
#[test]
fn a_late_local_response_after_the_response_headers_is_refused() {
    let p = plugin(
        r#"fn on_request_headers() {
        http_get("auth", "/a", [], 100, |s| { resume_http_request(); });
        http_get("auth", "/b", [], 100, |s| {
            try { send_http_response(403, [], "late"); } catch (e) { log_info(`${e}`); }
        });
    }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |_: &Callout| answer(200, &[], ""),
    );
    assert_eq!(o.response.status, 200);
    assert_eq!(o.response.body, b"up");
    let lines: Vec<_> = o.log.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        lines,
        ["send_http_response(): too late: the response headers went on to the client already"]
    );
}

/// A late header callback (the script resumed in an earlier one) can't write the headers
/// that went on: a script error, where Envoy would drop the write without a word.
#[test]
fn a_late_header_callback_cannot_write_the_headers_that_went_on() {
    let p = plugin(
        r#"fn on_request_headers() {
        http_get("auth", "/a", [], 100, |s| { resume_http_request(); });
        http_get("auth", "/b", [], 100, |s| {
            try { replace_request_header("x-late", "1"); } catch (e) { log_info(`${e}`); }
        });
    }"#,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut Response::ok("up"),
        &mut |_: &Callout| answer(200, &[], ""),
    );
    assert_eq!(o.upstream_header("x-late"), None);
    let lines: Vec<_> = o.log.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        lines,
        [
            "replace_request_header(): the headers went on already (the script resumed the stream \
          in an earlier callback): write them before resuming"
        ]
    );
}
