//! The playground: its operations answer what the command prints (`run --json`, `run`,
//! `deploy envoy`, `check`), its test cases pass `proxy-rhai test`, and `proxy-rhai playground`
//! serves the built page (types, HEAD, 404, no way out of its folder) or says how to build it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use super::{folder, path, proxy_rhai, stderr, stdout, AUTH};

fn ask(request: Value) -> Value {
    serde_json::from_str(&proxy_rhai::playground::call(&request.to_string())).unwrap()
}

#[test]
fn run_answers_what_the_command_prints() {
    let dir = folder(
        "playground-run",
        &[
            ("auth.rhai", AUTH),
            (
                "req.http",
                "POST /orders HTTP/1.1\nHost: shop\nX-A: 1\n\n{\"n\": 1}",
            ),
            ("answer.http", "HTTP/1.1 201 Created\nX-Boom: 1\n\nmade"),
        ],
    );
    let callout = r#"auth/token={"status": 200, "body": "{\"token\": \"t\"}"}"#;
    let args = |json: bool| {
        let mut args = vec![
            "run".to_string(),
            path(&dir, "auth.rhai"),
            "--request".into(),
            path(&dir, "req.http"),
            "--response".into(),
            path(&dir, "answer.http"),
            "--callout".into(),
            callout.into(),
            "--plugin-config".into(),
            r#"{"limits": {"max_operations": 100000}}"#.into(),
        ];
        if json {
            args.push("--json".into());
        }
        args
    };
    let printed = |json| {
        let args = args(json);
        let o = proxy_rhai(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            o.status.code(),
            Some(1),
            "the script throws: {}",
            stderr(&o)
        );
        stdout(&o)
    };
    let mut answer = ask(json!({
        "op": "run",
        "script": AUTH,
        "plugin_config": {"limits": {"max_operations": 100000}},
        "request": std::fs::read_to_string(dir.join("req.http")).unwrap(),
        "response": std::fs::read_to_string(dir.join("answer.http")).unwrap(),
        "callouts": [callout],
    }));
    assert_eq!(answer["text"].as_str().unwrap(), printed(false).trim_end());
    let positions = answer["error_positions"].clone();
    assert_eq!(positions[0]["line"], 9, "{positions}");
    let object = answer.as_object_mut().unwrap();
    object.remove("text");
    object.remove("error_positions");
    let json: Value = serde_json::from_str(&printed(true)).unwrap();
    assert_eq!(answer, json);
}

#[test]
fn check_and_deploy_answer_what_the_command_prints() {
    let script = "fn on_request_headers() {\n  get_response_header(\"a\");\n}\nfn unused() {}\n";
    let dir = folder("playground-check", &[("s.rhai", script)]);
    let o = proxy_rhai(&["check", &path(&dir, "s.rhai")]);
    let found = ask(json!({"op": "check", "script": script, "config": {}}));
    let printed = stdout(&o);
    for (list, severity) in [("errors", "error"), ("warnings", "warning")] {
        for d in found[list].as_array().unwrap() {
            let line = format!(
                "{}:{}:{}: {severity}: {}",
                path(&dir, "s.rhai"),
                d["line"],
                d["column"],
                d["message"].as_str().unwrap()
            );
            assert!(printed.contains(&line), "{line}\nnot in\n{printed}");
        }
    }
    assert_eq!(printed.lines().count(), 2, "{printed}");

    let deploy =
        ask(json!({"op": "as_deploy", "script": script, "plugin_config": {"config": {"a": 1}}}));
    let o = proxy_rhai(&[
        "deploy",
        "envoy",
        &path(&dir, "s.rhai"),
        "--config",
        r#"{"a": 1}"#,
        "--force",
    ]);
    assert_eq!(deploy["text"].as_str().unwrap(), stdout(&o));
}

#[test]
fn a_case_copied_from_a_run_passes_proxy_rhai_test() {
    let request = json!({
        "op": "as_test",
        "script": AUTH,
        "script_path": "auth.rhai",
        "request": {"method": "GET", "path": "/orders", "headers": {"x-boom": "no"}},
        "response": {"status": 200, "headers": [["x-up", "1"]], "body": "ok"},
        "callouts": [r#"auth={"status": 200, "body": "{\"token\": \"t-9\"}"}"#],
    });
    let case = ask(request)["text"].as_str().unwrap().to_string();
    assert!(
        case.contains(r#"r.assert_upstream_header("authorization", "Bearer t-9");"#),
        "{case}"
    );
    let dir = folder(
        "playground-case",
        &[("auth.rhai", AUTH), ("auth.test.rhai", &case)],
    );
    let o = proxy_rhai(&["test", &path(&dir, "auth.test.rhai")]);
    assert_eq!(o.status.code(), Some(0), "{}{case}", stdout(&o));
    assert!(
        stdout(&o).ends_with("1 passed, 0 failed\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn run_as_test_writes_the_playgrounds_case() {
    let script = "fn on_request_headers() {\n    add_request_header(\"x-at\", `${now_ms()}`);\n}\n";
    let dir = folder(
        "playground-run-as-test",
        &[
            ("stamp.rhai", script),
            ("req.http", "GET /a HTTP/1.1\nHost: h\n\n"),
        ],
    );
    let o = proxy_rhai(&[
        "run",
        &path(&dir, "stamp.rhai"),
        "--request",
        &path(&dir, "req.http"),
        "--config",
        r#"{"k": 1}"#,
        "--as-test",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let case = stdout(&o);
    let answer = ask(json!({
        "op": "as_test",
        "script": script,
        "script_path": "stamp.rhai",
        "plugin_config": {"config": {"k": 1}},
        "request": "GET /a HTTP/1.1\nHost: h\n\n",
    }));
    assert_eq!(case, answer["text"].as_str().unwrap());

    let o = proxy_rhai(&[
        "run",
        &path(&dir, "stamp.rhai"),
        "--now",
        "1767225601234",
        "--as-test",
    ]);
    let case = stdout(&o);
    assert!(case.contains("p.set_time_ms(1767225601234);"), "{case}");
    assert!(
        case.contains(r#"r.assert_upstream_header("x-at", "1767225601234");"#),
        "{case}"
    );
    std::fs::write(dir.join("stamp.test.rhai"), &case).unwrap();
    let o = proxy_rhai(&["test", &path(&dir, "stamp.test.rhai")]);
    assert_eq!(o.status.code(), Some(0), "{}{case}", stdout(&o));

    let two = r#"[{"path": "/a"}, {"path": "/b"}]"#;
    let o = proxy_rhai(&[
        "run",
        &path(&dir, "stamp.rhai"),
        "--request",
        two,
        "--as-test",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("one request"), "{}", stderr(&o));
    let o = proxy_rhai(&["run", &path(&dir, "stamp.rhai"), "--json", "--as-test"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// `proxy-rhai playground` on a free port, serving `dir`; the URL it printed first.
struct Server(Child, String);

impl Server {
    fn start(dir: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxy-rhai"))
            .args(["playground", "--port", "0", "--dir", dir])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        Server(child, first.trim().to_string())
    }

    /// The raw answer to `request` (the request line and headers, without the blank line).
    fn ask(&self, request: &str) -> (String, Vec<u8>) {
        let address = self.1.trim_start_matches("http://").trim_end_matches('/');
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .write_all(format!("{request}\r\nHost: {address}\r\n\r\n").as_bytes())
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(answer[..split].to_vec()).unwrap();
        (head, answer[split + 4..].to_vec())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn playground_serves_the_built_page_and_nothing_else() {
    let wasm: &[u8] = b"\0asm\x01\0\0\0";
    let dir = folder(
        "playground-serve/site",
        &[
            ("index.html", "<!doctype html><title>p</title>"),
            ("app.js", "export {}"),
            ("style.css", "body {}"),
            ("examples.json", "[]"),
        ],
    );
    std::fs::write(dir.join("playground.wasm"), wasm).unwrap();
    std::fs::write(dir.join("../secret.txt"), "secret").unwrap();
    let server = Server::start(&dir.to_string_lossy());
    assert!(server.1.starts_with("http://127.0.0.1:"), "{}", server.1);
    assert!(server.1.ends_with('/'), "{}", server.1);

    let (head, body) = server.ask("GET / HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert_eq!(body, b"<!doctype html><title>p</title>");
    let (head, body) = server.ask("GET /playground.wasm HTTP/1.1");
    assert!(
        head.contains("content-type: application/wasm\r\n"),
        "{head}"
    );
    assert_eq!(body, wasm);
    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("examples.json", "application/json"),
    ] {
        let (head, _) = server.ask(&format!("GET /{file}?v=1 HTTP/1.1"));
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{file}: {head}"
        );
    }
    let (head, body) = server.ask("HEAD /playground.wasm HTTP/1.1");
    assert!(
        head.contains(&format!("content-length: {}", wasm.len())),
        "{head}"
    );
    assert!(body.is_empty());

    for out in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "//../secret.txt",
        "/missing.js",
    ] {
        let (head, body) = server.ask(&format!("GET {out} HTTP/1.1"));
        assert!(head.starts_with("HTTP/1.1 404 "), "{out}: {head}");
        assert!(!String::from_utf8_lossy(&body).contains("secret"), "{out}");
    }
    let (head, _) = server.ask("POST / HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
}

#[test]
fn playground_says_how_to_build_the_page() {
    let dir = folder("playground-unbuilt", &[("index.html", "x")]);
    let o = proxy_rhai(&["playground", "--port", "0", "--dir", &dir.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty());
    let err = stderr(&o);
    assert!(err.contains("tools/build-playground.sh"), "{err}");
    assert!(err.contains("playground.wasm"), "{err}");
}
