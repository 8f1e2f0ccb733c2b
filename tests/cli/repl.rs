//! `proxy-rhai repl` driven through a pipe, and `proxy-rhai run --watch` following a script
//! as it is rewritten.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use super::{folder, path, proxy_rhai, stderr, stdout};

/// The session's output for these lines on its standard input.
fn repl(args: &[&str], lines: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxy-rhai"))
        .arg("repl")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("proxy-rhai runs");
    let mut stdin = child.stdin.take().expect("a pipe");
    stdin
        .write_all(lines.as_bytes())
        .expect("the session reads");
    drop(stdin);
    let o = child.wait_with_output().expect("the session ends");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o)
}

/// `found` in this order in `text`.
fn in_order(text: &str, found: &[&str]) {
    let mut rest = text;
    for f in found {
        match rest.find(f) {
            Some(at) => rest = &rest[at + f.len()..],
            None => panic!("{f:?} not found (in order) in:\n{text}"),
        }
    }
}

#[test]
fn repl_evaluates_lines_with_the_plugin_api_and_keeps_what_they_define() {
    let out = repl(
        &["--config", r#"{"tenant": "acme"}"#],
        r#"1 + 2
config()
let name = config().tenant;
name.to_upper()
base64url_encode("hi?")
to_json(parse_json(`{"b": 1, "a": [true]}`))
fn shout(s) {
    s.to_upper() + "!"
}
shout(name)
let list = [
    1,
    2
];
list.len()
blob(2)
"#,
    );
    in_order(
        &out,
        &[
            "=> 3\n",
            "=> #{\"tenant\": \"acme\"}\n",
            "=> \"ACME\"\n",
            "=> \"aGk_\"\n",
            "=> \"{\\\"a\\\":[true],\\\"b\\\":1}\"\n",
            "defined shout(s)\n",
            "=> \"ACME!\"\n",
            "=> 2\n",
            "=> [0000] (blob)\n",
        ],
    );
    assert!(!out.contains("error"), "{out}");
}

#[test]
fn repl_phase_functions_apply_to_requests() {
    let dir = folder(
        "repl-request",
        &[("post.http", "POST /upload HTTP/1.1\nHost: files\n\nabc")],
    );
    let out = repl(
        &[],
        &format!(
            r#"const GREETING = "hello";
fn on_request_headers() {{
    add_request_header("x-greeting", GREETING);
    increment_counter("requests", 1);
    shared_set("last", get_request_header(":path"), 0);
    set_context("user", get_request_header("user") ?? "nobody");
}}
:functions
:request GET /first -H 'user: ann'
:context
:request @{}
:metrics
:shared
"#,
            path(&dir, "post.http")
        ),
    );
    in_order(
        &out,
        &[
            "defined on_request_headers()\n",
            "  on_request_headers()   (phase function)\n",
            "== request: GET /first (authority example.com)\n  user: ann\n",
            r#"add_header(HttpRequestHeaders, "x-greeting", "hello")"#,
            "== forwarded to the upstream",
            "  x-greeting: hello\n",
            "== response to the client: 200 (from the upstream)",
            "  user: \"ann\"\n",
            "== request: POST /upload (authority files)\n",
            "body (3 bytes): \"abc\"",
            "== metrics\n  requests: 2\n",
            "== shared data\n  last: \"/upload\"\n",
        ],
    );
}

#[test]
fn repl_errors_are_explained_and_the_session_goes_on() {
    let out = repl(
        &[],
        r#"add_reqest_header("a", "b")
"still here"
get_request_header("x")
loop { }
let x = null;
40 + 2
fn on_request_headers(extra) { }
:request GET / -H
:bogus
"#,
    );
    in_order(
        &out,
        &[
            "error: no function `add_reqest_header` takes (string, string): did you mean \
             `add_request_header`? (line 1, position 1)\n",
            "=> \"still here\"\n",
            "error: Runtime error: get_request_header() can only be called while a request is \
             handled",
            "error: the script ran past limits.max_operations (500000 operations)",
            "error: script does not compile:",
            "Rhai has no null, write () for \"no value\"",
            "=> 42\n",
            "error: script error: on_request_headers() must take no parameters\n",
            "error: -H wants a value after it\n",
            "error: unknown command `:bogus`: :help lists them\n",
        ],
    );
}

#[test]
fn repl_loads_a_script_logs_moves_the_clock_and_starts_over() {
    let dir = folder(
        "repl-load",
        &[(
            "tick.rhai",
            "log_info(\"loaded\");\nfn on_tick() { increment_counter(\"ticks\", 1); }\n",
        )],
    );
    let script = path(&dir, "tick.rhai");
    let out = repl(
        &[
            &script,
            "--plugin-config",
            r#"{"limits": {"max_operations": 1000}}"#,
        ],
        "print(now_ms())\n:advance 2500\n:metrics\n:time 5\nnow_ms()\n:config\n\
         let n = 0; while true { n += 1 }\n:reset\n:metrics\nn\n",
    );
    in_order(
        &out,
        &[
            "defined on_tick()\n[info] loaded\n",
            "[info] 1767225600000\n",
            "now_ms() is 1767225602500\n",
            "  ticks: 2\n",
            "now_ms() is 5\n",
            "=> 5\n",
            "\"max_operations\": 1000",
            "limits.max_operations (1000 operations)",
            "started over\n",
            "(no metrics)\n",
            "error: Variable not found: n",
        ],
    );
}

#[test]
fn repl_answers_callouts_and_sets_the_upstream_response() {
    let out = repl(
        &[],
        r#":callout auth=200:{"token":"t"}
:response {"status": 404, "body": "gone"}
fn on_request_headers() {
    http_get("auth", "/t", [], 500, |status, headers, body| {
        add_request_header("token", parse_json(body).token);
    });
}
:request [{"path": "/a"}, {"path": "/b"}]
"#,
    );
    in_order(
        &out,
        &[
            "=== request 1 of 2
",
            "== request: GET /a",
            "== callouts (1)
  auth GET /t",
            "  token: t
",
            "== response to the client: 404 (from the upstream)",
            "=== request 2 of 2
",
            "== request: GET /b",
            "  token: t
",
        ],
    );
}

#[test]
fn repl_has_help() {
    let out = repl(&[], ":help\n:quit\n1 + 1\n");
    assert!(out.contains(":request [METHOD PATH"), "{out}");
    assert!(!out.contains("=> 2"), "lines after :quit ran: {out}");
    let o = proxy_rhai(&["repl", "--help"]);
    assert!(
        stdout(&o).contains("Usage: proxy-rhai repl"),
        "{}",
        stdout(&o)
    );
}

/// Kills the watching command when the test ends, however it ends.
struct Watching(Child);

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads lines until one contains `wanted`; every line read, joined.
fn read_until(lines: &mut impl Iterator<Item = std::io::Result<String>>, wanted: &str) -> String {
    let mut seen = String::new();
    for line in lines {
        let line = line.expect("output is text");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(wanted) {
            return seen;
        }
    }
    panic!("the output ended before {wanted:?}:\n{seen}");
}

#[test]
fn run_watch_runs_again_when_the_script_changes() {
    let dir = folder(
        "watch",
        &[
            (
                "s.rhai",
                r#"fn on_request_headers() { add_request_header("v", "one"); }"#,
            ),
            ("req.http", "GET /watched HTTP/1.1\n\n"),
        ],
    );
    let script = path(&dir, "s.rhai");
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxy-rhai"))
        .args([
            "run",
            &script,
            "--request",
            &path(&dir, "req.http"),
            "--watch",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("proxy-rhai runs");
    let stdout = child.stdout.take().expect("a pipe");
    let _watching = Watching(child);
    let mut lines = BufReader::new(stdout).lines();

    let first = read_until(&mut lines, "=== waiting for a change");
    in_order(
        &first,
        &[
            "=== watching ",
            "s.rhai",
            "req.http",
            "(Ctrl-C ends)",
            "  v: one\n",
        ],
    );

    // Replaced whole, as editors save: the watch never reads a file half written.
    let rewrite = |text: &str| {
        let new = dir.join("s.rhai.new");
        std::fs::write(&new, text).unwrap();
        std::fs::rename(&new, &script).unwrap();
    };
    rewrite("fn on_request_headers( {");
    let broken = read_until(&mut lines, "=== waiting for a change");
    in_order(&broken, &["s.rhai changed, at ", "script does not compile"]);

    rewrite(r#"fn on_request_headers() { add_request_header("v", "two"); }"#);
    let second = read_until(&mut lines, "=== waiting for a change");
    in_order(
        &second,
        &["s.rhai changed, at ", "GET /watched", "  v: two\n"],
    );
    assert!(!second.contains("v: one"), "{second}");
}

#[test]
fn run_watch_needs_a_script_file() {
    let o = proxy_rhai(&["run", "-", "--watch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--watch needs the script in a file"),
        "{}",
        stderr(&o)
    );
}
