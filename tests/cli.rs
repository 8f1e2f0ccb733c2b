//! The `proxy-rhai` command itself: run, check, test and docs on small scripts, exit codes,
//! the summary line, `--json`, one-line errors, `--help`; `deploy` in `cli/deploy.rs`, `repl` in
//! `cli/repl.rs`, the playground in `cli/playground.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "cli/deploy.rs"]
mod deploy;
#[path = "cli/playground.rs"]
mod playground;
#[allow(dead_code)]
#[path = "support/redis_server.rs"]
mod redis_server;
#[path = "cli/repl.rs"]
mod repl;

fn proxy_rhai(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proxy-rhai"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("proxy-rhai runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh folder with these files.
fn folder(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, content) in files {
        std::fs::write(dir.join(file), content).unwrap();
    }
    dir
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_string_lossy().into_owned()
}

const AUTH: &str = r#"
fn on_request_headers() {
    http_get("auth", "/token", [], 500, |status, headers, body| {
        if status != 200 { send_http_response(403, [], `denied ${status}`); return; }
        add_request_header("authorization", "Bearer " + parse_json(body).token);
    });
}
fn on_response_headers() {
    if get_response_header("x-boom") != () { throw "boom"; }
}
"#;

#[test]
fn run_shows_the_host_calls_and_the_forwarded_request() {
    let o = proxy_rhai(&["run", "scripts/hello.rhai"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(r#"add_header(HttpRequestHeaders, "hello", "world")"#),
        "{out}"
    );
    assert!(out.contains("== forwarded to the upstream"), "{out}");
    assert!(out.contains("  hello: world"), "{out}");
    assert!(
        out.contains("== response to the client: 200 (from the upstream)"),
        "{out}"
    );
}

/// The plugin sends a call's header (and body) writes together: the trace says where that puts
/// them after calls the script made later, and says nothing when it doesn't.
#[test]
fn run_says_where_batching_reorders_writes() {
    let dir = folder(
        "batching",
        &[(
            "order.rhai",
            "fn on_request_headers() {\n  add_request_header(\"x-a\", \"1\");\n  log_info(\"between\");\n  add_request_header(\"x-b\", \"2\");\n}\n\
             fn on_response_headers() {\n  add_response_header(\"x-c\", \"3\");\n}\n",
        )],
    );
    let o = proxy_rhai(&["run", &path(&dir, "order.rhai")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let calls: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("== host calls"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.trim_start().split_once("  ").map_or(l, |(_, call)| call))
        .collect();
    assert_eq!(
        calls,
        [
            "-- the script's writes to the request headers from here are held back, to go to \
             the proxy together",
            r#"log_info("between")"#,
            "-- the writes to the request headers held back above go to the proxy now, after \
             the calls the script made since",
            r#"add_header(HttpRequestHeaders, "x-a", "1")"#,
            r#"add_header(HttpRequestHeaders, "x-b", "2")"#,
            r#"add_header(HttpResponseHeaders, "x-c", "3")"#,
            "-- response data: 18 bytes, end of stream",
        ],
        "{out}"
    );
}

#[test]
fn run_json_parses_and_shows_a_local_response() {
    let o = proxy_rhai(&[
        "run",
        "scripts/hello.rhai",
        "--config",
        r#"{"mockEnable": true}"#,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("--json prints JSON");
    assert_eq!(v["upstream"], serde_json::Value::Null);
    assert_eq!(v["response"]["status"], 200);
    assert_eq!(v["response"]["local"], true);
    assert_eq!(v["response"]["body"], "hello world");
    assert_eq!(v["request"]["path"], "/");
    assert!(
        v["trace"][1]
            .as_str()
            .unwrap()
            .starts_with("send_http_response(200"),
        "{v}"
    );
}

#[test]
fn run_shows_the_clock_configure_logs_metrics_and_shared_data() {
    let dir = folder(
        "run_kept",
        &[(
            "clock.rhai",
            r#"log_info(`configured at ${now_ms()}`);
            shared_set("boot", "yes", 0);
            fn on_request_headers() {
                increment_counter("requests", 1);
                record_histogram("sizes", 7);
                add_request_header("x-now", now_ms().to_string());
                set_context("seen", [1, "two"]);
            }"#,
        )],
    );
    let o = proxy_rhai(&["run", &path(&dir, "clock.rhai"), "--now", "1000"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("== log at configure time\n  info   configured at 1000\n"),
        "{out}"
    );
    assert!(out.contains(r#"increment_metric("requests", 1)"#), "{out}");
    assert!(
        out.contains(r#"add_header(HttpRequestHeaders, "x-now", "1000")"#),
        "{out}"
    );
    assert!(
        out.contains("== metrics\n  requests: 1\n  sizes: [7]\n"),
        "{out}"
    );
    assert!(out.contains("== shared data\n  boot: \"yes\""), "{out}");
    assert!(
        out.contains("== context (set_context)\n  seen: [1, \"two\"]\n"),
        "{out}"
    );

    // The default clock is fixed: 2026-01-01T00:00:00Z.
    let o = proxy_rhai(&["run", &path(&dir, "clock.rhai"), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["configure_log"][0]["message"],
        "configured at 1767225600000"
    );
    assert_eq!(v["metrics"]["sizes"], serde_json::json!([7]));
    assert_eq!(v["shared_data"]["boot"], "yes");
    assert_eq!(v["context"]["seen"], r#"[1, "two"]"#);
    // Where each call into the plugin starts in the trace: the request headers' three host
    // calls come first; the response body's call comes after its data note.
    let events: Vec<(&str, u64)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["at"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        events,
        [
            ("on_http_request_headers", 0),
            ("on_http_response_headers", 3),
            ("on_http_response_body", 4),
            ("on_log", 4)
        ],
        "{v}"
    );
}

#[test]
fn run_takes_several_requests_and_a_script_on_stdin() {
    let script = r#"fn on_request_headers() {
        let n = (shared_get("n").value ?? "0").parse_int() + 1;
        shared_set("n", n.to_string(), 0);
        if n > 2 { send_http_response(429, [], "slow down"); }
    }"#;
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxy-rhai"))
        .args([
            "run",
            "-",
            "--request",
            r#"[{"path": "/a"}, {"path": "/b"}]"#,
            "--request",
            r#"{"path": "/c"}"#,
            "--repeat",
            "2",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let runs = v["runs"].as_array().unwrap();
    let seen: Vec<(String, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["request"]["path"].as_str().unwrap().to_string(),
                r["response"]["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("/a", 200),
        ("/b", 200),
        ("/c", 429),
        ("/a", 429),
        ("/b", 429),
        ("/c", 429),
    ]
    .iter()
    .map(|(p, s)| (p.to_string(), *s))
    .collect();
    assert_eq!(seen, expected);
    assert_eq!(v["shared_data"]["n"], "6");

    // In text, each request has its heading, and what was kept comes once at the end.
    let o = proxy_rhai(&["run", "scripts/hello.rhai", "--repeat", "2"]);
    let out = stdout(&o);
    assert!(
        out.contains("=== request 1 of 2") && out.contains("=== request 2 of 2"),
        "{out}"
    );
}

#[test]
fn run_gives_a_body_in_pieces_and_traces_each() {
    let dir = folder(
        "run_chunks",
        &[(
            "answer.http",
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: a\n\ndata: b\n\n",
        )],
    );
    let script = "fn on_response_chunk(chunk, last) { replace_response_body(chunk.to_upper()); }";
    let dir_script = dir.join("up.rhai");
    std::fs::write(&dir_script, script).unwrap();
    let o = proxy_rhai(&[
        "run",
        &dir_script.to_string_lossy(),
        "--response",
        &path(&dir, "answer.http"),
        "--response-chunks",
        "4,6",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["response"]["chunks"],
        serde_json::json!(["DATA", ": A\n\nD", "ATA: B\n\n"])
    );
    let trace: Vec<&str> = v["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(trace.contains(&"-- response data: 4 bytes"), "{trace:?}");
    assert!(
        trace.contains(&"-- response data: 8 bytes, end of stream"),
        "{trace:?}"
    );

    // The request too, and the text output shows the pieces.
    let o = proxy_rhai(&[
        "run",
        &dir_script.to_string_lossy(),
        "--request",
        r#"{"method": "POST", "chunks": ["ab", "cd"]}"#,
    ]);
    let out = stdout(&o);
    assert!(out.contains("-- request data: 2 bytes"), "{out}");
    assert!(out.contains("piece 2 (2 bytes)"), "{out}");
}

#[test]
fn run_answers_callouts_and_reads_requests_and_responses_from_files() {
    let dir = folder(
        "run_callouts",
        &[
            ("auth.rhai", AUTH),
            (
                "req.http",
                "POST /orders HTTP/1.1\nHost: shop\nX-User: ann\n\n{\"id\":1}",
            ),
            (
                "resp.json",
                r#"{"status": 201, "headers": {"x-up": "1"}, "body": "made"}"#,
            ),
        ],
    );
    let o = proxy_rhai(&[
        "run",
        &path(&dir, "auth.rhai"),
        "--request",
        &path(&dir, "req.http"),
        "--response",
        &path(&dir, "resp.json"),
        "--callout",
        r#"auth/token=200:{"token":"t-1"}"#,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let upstream = &v["upstream"];
    assert_eq!(
        (upstream["method"].as_str(), upstream["authority"].as_str()),
        (Some("POST"), Some("shop"))
    );
    assert!(
        upstream["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["authorization", "Bearer t-1"])),
        "{v}"
    );
    assert_eq!(upstream["body"], "{\"id\":1}");
    assert_eq!(
        (
            v["response"]["status"].as_u64(),
            v["response"]["body"].as_str()
        ),
        (Some(201), Some("made"))
    );
    assert_eq!(v["callouts"][0]["cluster"], "auth");

    let o = proxy_rhai(&["run", &path(&dir, "auth.rhai"), "--callout", "auth=timeout"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("== response to the client: 403 (local response)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn run_exits_1_when_the_script_fails_on_the_request() {
    let dir = folder("run_fails", &[("auth.rhai", AUTH)]);
    let o = proxy_rhai(&[
        "run",
        &path(&dir, "auth.rhai"),
        "--callout",
        r#"auth={"body": "{\"token\":\"t\"}"}"#,
        "--response",
        r#"{"headers": {"x-boom": "yes"}}"#,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("== script errors") && out.contains("boom"),
        "{out}"
    );
}

#[test]
fn errors_are_one_line_never_a_panic() {
    for args in [
        vec!["run", "no/such/script.rhai"],
        vec!["run", "scripts/hello.rhai", "--config", "{not json"],
        vec!["run", "scripts/hello.rhai", "--request", r#"{"pth": "/"}"#],
        vec!["run", "scripts/hello.rhai", "--callout", "auth"],
        vec!["test", "no/such/folder"],
        vec!["check", "no/such/script.rhai"],
    ] {
        let o = proxy_rhai(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("proxy-rhai: ") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn check_reports_errors_with_line_and_column_and_warnings() {
    let dir = folder(
        "check",
        &[
            ("good.rhai", "fn on_request_headers() { add_request_header(\"a\", \"b\"); }\n"),
            ("broken.rhai", "fn on_request_headers() {\n  let x = ;\n}\n"),
            ("typo.rhai", "fn on_request_headers() {}\nfn on_response_header() {}\nfn on_response_body() { add_header(\"a\"); }\n"),
            (
                "misuse.rhai",
                "fn on_request_headers() {\n  let v = get_response_header(\"x\");\n  send_http_response(\"403\", [], ());\n  http_get(\"auth\", \"/\", [], 100, |status, headers, body, failure, more| v);\n}\n",
            ),
            ("unused.rhai", "fn on_request_headers() {}\nfn helper() {}\n"),
        ],
    );
    let o = proxy_rhai(&["check", &path(&dir, "good.rhai")]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).ends_with("good.rhai: ok\n"), "{}", stdout(&o));

    let o = proxy_rhai(&["check", &path(&dir, "broken.rhai")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("broken.rhai:2:11: error: script does not compile"),
        "{}",
        stdout(&o)
    );

    let o = proxy_rhai(&["check", &path(&dir, "typo.rhai")]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("typo.rhai:2:1: error: `on_response_header` is not a phase function"),
        "{out}"
    );
    assert!(out.contains("did you mean `on_response_headers`?"), "{out}");
    assert!(
        out.contains(
            "typo.rhai:3:25: error: no function `add_header` exists in the script or in the API"
        ),
        "{out}"
    );

    let o = proxy_rhai(&["check", &path(&dir, "misuse.rhai")]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    for line in [
        "misuse.rhai:2:11: error: `get_response_header` never works in `on_request_headers`: it is only available in on_response_headers, on_log",
        "misuse.rhai:3:3: error: argument 1 of `send_http_response` (`status`) must be an int, and this one is a string (write the number without quotes)",
        "misuse.rhai:4:34: error: the callback of `http_get` takes 5 parameters, and a callout callback is given at most 4: |status, headers, body, failure|",
    ] {
        assert!(out.contains(line), "{line}\n{out}");
    }

    let o = proxy_rhai(&["check", &path(&dir, "unused.rhai")]);
    assert_eq!(o.status.code(), Some(0), "warnings alone pass");
    assert!(
        stdout(&o).contains("unused.rhai:2:1: warning: `helper` is never called"),
        "{}",
        stdout(&o)
    );
    let o = proxy_rhai(&["check", "--deny-warnings", &path(&dir, "unused.rhai")]);
    assert_eq!(o.status.code(), Some(1));

    let o = proxy_rhai(&[
        "check",
        &path(&dir, "good.rhai"),
        "--plugin-config",
        r#"{"limits": {"max_operations": 1}}"#,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("max_operations"), "{}", stdout(&o));
}

#[test]
fn the_repository_scripts_pass_check() {
    let mut scripts: Vec<String> = std::fs::read_dir("scripts")
        .unwrap()
        .chain(std::fs::read_dir("bench/scripts").unwrap())
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".rhai") && !p.ends_with(".test.rhai"))
        .collect();
    scripts.sort();
    // The configurations the example scripts need (each test file gives the same).
    let configs = [
        ("api_key", r#"{"keys": {"k1": "alice"}}"#),
        ("cors", r#"{"allow_origins": ["https://a.example"]}"#),
        ("hmac_signature", r#"{"secret": "s"}"#),
        ("redis_rate_limit", r#"{"qpm": 10}"#),
        ("redis_token_bucket", r#"{"rate": 1, "burst": 2}"#),
        (
            "token_callout",
            r#"{"cluster": "auth", "requestPath": "/token", "tokenHeader": "x-token"}"#,
        ),
    ];
    for script in scripts {
        let mut args = vec!["check", script.as_str()];
        if let Some((_, config)) = configs
            .iter()
            .find(|(n, _)| script.ends_with(&format!("/{n}.rhai")))
        {
            args.extend(["--config", config]);
        }
        let o = proxy_rhai(&args);
        assert_eq!(o.status.code(), Some(0), "{script}: {}", stdout(&o));
        // Examples have nothing to say; bench/scripts/big-1000.rhai's helpers are never called.
        if script.starts_with("scripts/") {
            assert!(stdout(&o).ends_with(": ok\n"), "{script}: {}", stdout(&o));
        }
    }
}

#[test]
fn test_prints_each_result_and_the_summary_and_fails_on_failure() {
    let dir = folder(
        "test",
        &[
            ("hello.rhai", "fn on_request_headers() { add_request_header(\"hello\", \"world\"); }"),
            (
                "hello.test.rhai",
                "fn test_good() { plugin(\"hello.rhai\").get(\"/\").assert_upstream_header(\"hello\", \"world\"); }\n\
                 fn test_bad() {\n  plugin(\"hello.rhai\").get(\"/\").assert_status(404);\n}\n",
            ),
        ],
    );
    let o = proxy_rhai(&["test", &dir.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("  ok    test_good"), "{out}");
    assert!(
        out.contains("  FAIL  test_bad\n        line 3: assert_status: expected 404, actual 200"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("1 passed, 1 failed"), "{out}");

    let o = proxy_rhai(&["test", &dir.to_string_lossy(), "--filter", "good"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).lines().last(), Some("1 passed, 0 failed"));
}

#[test]
fn run_sends_redis_calls_to_the_server_given() {
    let redis = redis_server::RedisServer::start();
    let server = format!("redis={}", redis.address());
    let args = [
        "run",
        "scripts/redis_rate_limit.rhai",
        "--config",
        r#"{"qpm": 1}"#,
    ];
    let o = proxy_rhai(&[&args[..], &["--repeat", "2", "--redis", &server]].concat());
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("redis_call(\"redis\", INCR 1767225600)"),
        "{text}"
    );
    assert!(text.contains("calltimeleft: 0"), "{text}");
    assert!(text.contains("429"), "{text}");
    let o = proxy_rhai(&["run", "scripts/redis_rate_limit.rhai", "--redis", "redis"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("give CLUSTER=HOST:PORT"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn test_runs_the_repository_scripts_on_either_engine() {
    for engine in ["compiled", "rhai"] {
        // The Redis examples' tests want their cluster `redis`: a fresh one per run.
        let redis = redis_server::RedisServer::start();
        let o = proxy_rhai(&[
            "test",
            "scripts",
            "--redis",
            &format!("redis={}", redis.address()),
            "--engine",
            engine,
        ]);
        assert_eq!(o.status.code(), Some(0), "{engine}: {}", stdout(&o));
        let last = stdout(&o).lines().last().unwrap_or_default().to_string();
        assert!(last.ends_with(" passed, 0 failed"), "{engine}: {last}");
    }
    let o = proxy_rhai(&["test", "scripts", "--engine", "jit"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`jit` is not an engine: `compiled` or `rhai`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn docs_writes_the_reference_and_checks_it() {
    let dir = folder("docs", &[("stale.md", "old")]);
    let out = dir.to_string_lossy().into_owned();
    let o = proxy_rhai(&["docs", "--check", "--out", &out]);
    assert_eq!(o.status.code(), Some(1));
    let o = proxy_rhai(&["docs", "--out", &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dir.join("README.md").is_file() && dir.join("definitions/proxy-rhai.d.rhai").is_file());
    assert!(!dir.join("stale.md").exists());
    let o = proxy_rhai(&["docs", "--check", "--out", &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["run", "test", "check", "docs", "repl", "playground"] {
        let o = proxy_rhai(&[sub, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{sub}");
        assert!(
            stdout(&o).contains("Usage: proxy-rhai"),
            "{sub}: {}",
            stdout(&o)
        );
    }
}

/// Rhai's raw messages for a newcomer's mistakes become messages that name the cause and the
/// fix, in the log `run` shows (the same line Envoy logs).
#[test]
fn script_errors_say_what_to_fix() {
    let dir = folder(
        "mistakes",
        &[(
            "m.rhai",
            r#"fn on_request_headers() {
    let op = get_request_header("x-op");
    if op == "typo" { add_reqest_header("a", "b"); }
    if op == "types" { send_http_response("403", [], "no"); }
    if op == "unit" { get_request_header("x-none").to_upper(); }
    if op == "not" { let x = !get_request_header("x-none"); }
    if op == "callback" { http_get("auth", "/", [], 100, |a, b, c, d, e| { }); }
    if op == "loop" { loop { } }
    if op == "deep" { f(1); }
    if op == "twice" { send_http_response(200, [], "a"); send_http_response(200, [], "b"); }
    if op == "unit-header" { add_request_header("x-a", get_request_header("x-none")); }
}
fn f(n) { f(n + 1) }"#,
        )],
    );
    let error = |op: &str| {
        let request = format!(r#"{{"headers": {{"x-op": "{op}"}}}}"#);
        let o = proxy_rhai(&[
            "run",
            &path(&dir, "m.rhai"),
            "--request",
            &request,
            "--callout",
            "auth=200",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["errors"][0].as_str().unwrap_or_default().to_string()
    };
    let cases = [
        ("typo", "no function `add_reqest_header` takes (string, string): did you mean `add_request_header`? (line 3, position 23)"),
        ("types", "send_http_response() was called with (string, array, string), which it doesn't take: it takes send_http_response(status: int, headers: any, body: any) (line 4, position 24)"),
        ("unit", "`to_upper` was called on (): the value is () (nothing), e.g. a header that is absent"),
        ("not", "the operator `!` was applied to (): the value is () (nothing)"),
        ("callback", "a callback (closure) was called with 4 arguments (int, array, string, ()), and it takes another number of parameters"),
        ("loop", "the script ran past limits.max_operations (500000 operations)"),
        ("deep", "functions called each other deeper than limits.max_call_depth (32)"),
        ("twice", "send_http_response() doesn't stop the script: `return` after it"),
        ("unit-header", "add_request_header(): the header value is () (nothing)"),
    ];
    for (op, message) in cases {
        let e = error(op);
        assert!(e.contains(message), "{op}: {e}");
    }
    // At configure time: `null` and a map written as a block.
    for (source, hint) in [
        (
            "fn on_request_headers() { let x = null; }",
            "Rhai has no null, write () for \"no value\"",
        ),
        (
            "fn on_request_headers() { let m = { a: 1 }; }",
            "a map is written #{ key: value }",
        ),
    ] {
        std::fs::write(dir.join("bad.rhai"), source).unwrap();
        let o = proxy_rhai(&["run", &path(&dir, "bad.rhai")]);
        assert!(stderr(&o).contains(hint), "{}", stderr(&o));
    }
}
