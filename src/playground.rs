//! The browser playground's operations: one JSON request in, one JSON answer out, the same
//! code as `proxy-rhai`'s (`check`, `run`, `deploy envoy`, the API reference, the test API).
//!
//! The request's `op` says which:
//! - `{"op": "api"}`: `{"functions": [{"name", "signature", "doc", "phases"}], "phases":
//!   [{"name", "signature", "doc"}]}` ([`crate::docs::function_help`]).
//! - `{"op": "check", "script", "config"}`: `{"errors": [...], "warnings": [...]}`, each
//!   `{"message", "line", "column"}` (1-based, `null` when unknown); `config` is the rest of
//!   the plugin configuration, as `--plugin-config` takes it.
//! - `{"op": "run", "script", "plugin_config", "request", "response", "callouts"}`: what
//!   `proxy-rhai run --json` prints for one request, with `"text"` (what `run` prints without
//!   `--json`) and `"error_positions"` (each script error's `{"message", "line", "column"}`).
//!   `request` and `response` are JSON objects or HTTP/1.1 message texts, `callouts` the
//!   `--callout` rules (`cluster[/path]=ANSWER`). A configuration the plugin refuses answers
//!   `{"error", "line", "column"}`.
//! - `{"op": "as_test", same fields as run, "script_path"}`: `{"text"}`, a `*.test.rhai` case
//!   that repeats the run and checks what it did ([`crate::testing::case`]); the script is
//!   loaded from `script_path` (default `script.rhai`), relative to the test file.
//! - `{"op": "as_deploy", "script", "plugin_config"}`: `{"text"}`, what `proxy-rhai deploy
//!   envoy` prints.
//!
//! A request that can't be read (not JSON, an unknown op, a field of the wrong type) answers
//! `{"error": "..."}`.
//!
//! ```
//! let answer = proxy_rhai::playground::call(r#"{"op": "check", "script": "fn on_request_headers() { foo(); }"}"#);
//! let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
//! assert_eq!(answer["errors"][0]["line"], 1);
//! ```
//!
//! In the wasm32 build with the `playground` feature, the module `exports` hands `call` to
//! JavaScript.

use serde_json::{json, Map, Value};

use crate::check::{check, Severity};
use crate::emulator::{Emulator, Request, START_TIME_MS};
use crate::run::{input, Answers, Report};
use crate::testing::spec;

/// Answers one request (JSON text) with JSON text.
pub fn call(request: &str) -> String {
    let answer = serde_json::from_str::<Value>(request)
        .map_err(|e| format!("the request is not JSON: {e}"))
        .and_then(|request| answer(&request))
        .unwrap_or_else(|message| json!({ "error": message }));
    answer.to_string()
}

fn answer(request: &Value) -> Result<Value, String> {
    let op = request
        .get("op")
        .and_then(Value::as_str)
        .ok_or("the request has no \"op\" (api, check, run, as_test, as_deploy)")?;
    match op {
        "api" => Ok(api()),
        "check" => check_script(request),
        "run" => Ok(match Run::of(request)? {
            Ok(run) => run.answer(),
            Err(refused) => refused,
        }),
        "as_test" => Ok(match Run::of(request)? {
            Ok(run) => json!({ "text": run.as_test(request)? }),
            Err(refused) => refused,
        }),
        "as_deploy" => as_deploy(request),
        other => Err(format!(
            "unknown op {other:?} (api, check, run, as_test, as_deploy)"
        )),
    }
}

fn api() -> Value {
    let functions: Vec<Value> = crate::docs::function_help()
        .into_iter()
        .map(|f| {
            json!({
                "name": f.name,
                "signature": f.signature,
                "doc": f.doc,
                "phases": f.phases,
            })
        })
        .collect();
    let phases: Vec<Value> = crate::docs::phase_help()
        .into_iter()
        .map(|p| json!({"name": p.name, "signature": p.signature, "doc": p.doc}))
        .collect();
    json!({ "functions": functions, "phases": phases })
}

fn check_script(request: &Value) -> Result<Value, String> {
    let script = text_field(request, "script")?;
    let settings = settings(request, "config")?;
    let found = check(script, &Value::Object(settings));
    let list = |severity: Severity| -> Vec<Value> {
        found
            .iter()
            .filter(|d| d.severity == severity)
            .map(|d| json!({"message": d.message, "line": d.line, "column": d.column}))
            .collect()
    };
    Ok(json!({ "errors": list(Severity::Error), "warnings": list(Severity::Warning) }))
}

fn as_deploy(request: &Value) -> Result<Value, String> {
    let mut configuration = settings(request, "plugin_config")?;
    configuration.insert("script".into(), text_field(request, "script")?.into());
    let configuration = crate::deploy::for_envoy(configuration);
    crate::deploy::validate(&configuration)?;
    let text = crate::deploy::envoy_filter(
        &configuration,
        crate::deploy::DEFAULT_NAME,
        crate::deploy::DEFAULT_WASM,
    );
    Ok(json!({ "text": text }))
}

/// A `run` request, read and its plugin configured.
struct Run {
    settings: Map<String, Value>,
    emulator: Emulator,
    /// The request as JSON (an HTTP message read as one).
    request: Value,
    /// The upstream's answer as JSON, `None` for `run`'s default.
    response: Option<Value>,
    callouts: Vec<String>,
}

impl Run {
    /// The run `request` asks for; `Ok(Err(answer))` when the plugin refuses its
    /// configuration (the answer says why, and where in the script).
    fn of(request: &Value) -> Result<Result<Self, Value>, String> {
        let mut settings = settings(request, "plugin_config")?;
        settings.insert("script".into(), text_field(request, "script")?.into());
        let message = |what: &str, http: fn(&str) -> Result<Value, String>| {
            match request.get(what) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => http(text).map(Some),
                Some(value @ Value::Object(_)) => Ok(Some(value.clone())),
                Some(other) => Err(format!(
                    "\"{what}\" must be an object or an HTTP/1.1 message, got {other}"
                )),
            }
            .map_err(|e| format!("{what}: {e}"))
        };
        let request_json = message("request", input::http_request)?.unwrap_or_else(|| json!({}));
        let response = message("response", input::http_response)?;
        let callouts = match request.get("callouts") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("\"callouts\" must be an array of strings (cluster[/path]=ANSWER)")?,
            Some(other) => return Err(format!("\"callouts\" must be an array, got {other}")),
        };
        let configuration = Value::Object(settings.clone()).to_string();
        let emulator = match Emulator::configure_at(&configuration, START_TIME_MS) {
            Ok(emulator) => emulator,
            Err(e) => {
                return Ok(Err(
                    json!({"error": e.to_string(), "line": e.line, "column": e.column}),
                ))
            }
        };
        settings.remove("script");
        Ok(Ok(Self {
            settings,
            emulator,
            request: request_json,
            response,
            callouts,
        }))
    }

    /// Runs the request through the configured plugin.
    fn report(&self) -> Result<Report, String> {
        let request: Request = spec::request(&self.request)?;
        let answers = Answers::of(&self.emulator, self.response.as_ref(), &self.callouts)?;
        Ok(Report::new(&self.emulator, vec![request], &answers))
    }

    fn answer(&self) -> Value {
        match self.report() {
            Ok(report) => {
                let mut value = report.json();
                value["text"] = report.text().into();
                let positions: Vec<Value> = report
                    .outcomes
                    .iter()
                    .flat_map(|o| o.script_errors())
                    .map(|message| {
                        let (line, column) = error_position(message);
                        json!({"message": message, "line": line, "column": column})
                    })
                    .collect();
                value["error_positions"] = positions.into();
                value
            }
            Err(message) => json!({ "error": message }),
        }
    }

    fn as_test(&self, request: &Value) -> Result<String, String> {
        let script_path = match request.get("script_path") {
            None | Some(Value::Null) => "script.rhai",
            Some(_) => text_field(request, "script_path")?,
        };
        crate::testing::case::of_run(&crate::testing::case::Run {
            emulator: &self.emulator,
            script_path,
            settings: &self.settings,
            request: &self.request,
            response: self.response.as_ref(),
            callouts: &self.callouts,
        })
    }
}

/// The line and column a script error's message ends with (`… (line 3, position 5)`, before
/// the `[in f() called at …]` of a nested call): where the error happened.
fn error_position(message: &str) -> (Option<usize>, Option<usize>) {
    let own = match message.rfind(" [in ") {
        Some(i) if message.ends_with(']') => &message[..i],
        _ => message,
    };
    let Some(start) = own.rfind("(line ") else {
        return (None, None);
    };
    let inner = own[start + 6..].trim_end_matches(')');
    let (line, column) = match inner.split_once(", position ") {
        Some((line, column)) => (line, Some(column)),
        None => (inner, None),
    };
    let line = line.parse().ok();
    (line, line.and(column.and_then(|c| c.parse().ok())))
}

fn text_field<'a>(request: &'a Value, name: &str) -> Result<&'a str, String> {
    match request.get(name) {
        Some(Value::String(text)) => Ok(text),
        None => Err(format!("the request has no \"{name}\"")),
        Some(other) => Err(format!("\"{name}\" must be a string, got {other}")),
    }
}

/// The plugin configuration's other keys in field `name` (absent or null: none).
fn settings(request: &Value, name: &str) -> Result<Map<String, Value>, String> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => {
            let mut map = map.clone();
            map.remove("script");
            Ok(map)
        }
        Some(other) => Err(format!("\"{name}\" must be a JSON object, got {other}")),
    }
}

/// The module's exports to JavaScript (the wasm32 build with the `playground` feature): the
/// page writes a request into memory it asked for, calls [`playground_call`], reads the
/// answer and frees both.
#[cfg(all(target_arch = "wasm32", feature = "playground"))]
pub mod exports {
    extern "C" {
        fn __wasm_call_ctors();
    }

    /// Runs the module's static constructors; the page calls it once, before anything else.
    /// Exporting it makes the linker build a reactor, whose exports may be called again and
    /// again (as proxy-wasm's `main!` does for the plugin).
    #[no_mangle]
    pub extern "C" fn _initialize() {
        // SAFETY: called once by the page, before any other export, as WASI reactors are.
        unsafe { __wasm_call_ctors() }
    }

    /// A buffer of `len` bytes for the page to write a request into (`with_capacity` gives
    /// exactly `len`, which `playground_free` and `playground_call` count on).
    #[no_mangle]
    pub extern "C" fn playground_alloc(len: usize) -> *mut u8 {
        std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(len)).as_mut_ptr()
    }

    /// Frees a buffer from [`playground_alloc`] or an answer of [`playground_call`].
    ///
    /// # Safety
    /// `ptr` and `len` are those of a buffer this module handed out, freed once.
    #[no_mangle]
    pub unsafe extern "C" fn playground_free(ptr: *mut u8, len: usize) {
        drop(Vec::from_raw_parts(ptr, 0, len));
    }

    /// Answers the UTF-8 JSON request at `ptr`/`len` (freeing it): the answer's address in
    /// the high 32 bits, its length in the low ones; the page frees it with
    /// [`playground_free`].
    ///
    /// # Safety
    /// `ptr` and `len` are a buffer from [`playground_alloc`] holding the request.
    #[no_mangle]
    pub unsafe extern "C" fn playground_call(ptr: *mut u8, len: usize) -> u64 {
        let bytes = Vec::from_raw_parts(ptr, len, len);
        let answer = match String::from_utf8(bytes) {
            Ok(request) => super::call(&request),
            Err(_) => serde_json::json!({"error": "the request is not UTF-8"}).to_string(),
        };
        // A boxed slice's allocation is exactly its length: what `playground_free` frees.
        let answer = Box::into_raw(answer.into_bytes().into_boxed_slice());
        // wasm32 addresses and lengths fit in 32 bits.
        ((answer as *mut u8 as u64) << 32) | answer.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(request: Value) -> Value {
        serde_json::from_str(&call(&request.to_string())).unwrap()
    }

    #[test]
    fn bad_requests_answer_an_error() {
        let answer: Value = serde_json::from_str(&call("{not json")).unwrap();
        assert!(answer["error"].as_str().unwrap().contains("not JSON"));
        assert!(ask(json!({"op": "fly"}))["error"]
            .as_str()
            .unwrap()
            .contains("unknown op"));
        assert!(ask(json!({}))["error"].as_str().unwrap().contains("\"op\""));
        assert!(ask(json!({"op": "run"}))["error"]
            .as_str()
            .unwrap()
            .contains("\"script\""));
        let bad = ask(json!({"op": "run", "script": "fn on_log() {}", "callouts": [1]}));
        assert!(bad["error"].as_str().unwrap().contains("callouts"), "{bad}");
    }

    #[test]
    fn error_positions_are_read_from_messages() {
        let at = |m| error_position(m);
        assert_eq!(at("x: boom (line 3, position 5)"), (Some(3), Some(5)));
        assert_eq!(
            at("x: deep (line 1, position 15) [in helper() called at line 3, position 3]"),
            (Some(1), Some(15))
        );
        assert_eq!(at("x: boom (line 7)"), (Some(7), None));
        assert_eq!(at("x: boom"), (None, None));
    }

    const TOKEN: &str = include_str!("../scripts/token_callout.rhai");

    #[test]
    fn api_lists_the_functions_and_phases_with_docs() {
        let api = ask(json!({"op": "api"}));
        let functions = api["functions"].as_array().unwrap();
        let f = |name: &str| functions.iter().find(|f| f["name"] == name).unwrap();
        let get = f("get_request_header");
        assert_eq!(get["signature"], "get_request_header(name: string) -> any");
        assert!(get["doc"]
            .as_str()
            .unwrap()
            .starts_with("### `get_request_header(name: string)`"));
        assert!(get["phases"]
            .as_array()
            .unwrap()
            .contains(&json!("on_request_headers")));
        assert!(!get["phases"]
            .as_array()
            .unwrap()
            .contains(&json!("on_response_headers")));
        assert!(f("parse_json")["phases"]
            .as_array()
            .unwrap()
            .contains(&json!("on_tick")));
        // One entry per name of a binding documented under two.
        assert!(functions.iter().any(|f| f["name"] == "log_warn"));
        let phases = api["phases"].as_array().unwrap();
        assert_eq!(phases[0]["name"], "on_request_headers");
        assert_eq!(phases[2]["signature"], "on_request_chunk(chunk, last)");
        assert_eq!(phases.last().unwrap()["name"], "on_tick");
        assert!(phases
            .iter()
            .all(|p| !p["doc"].as_str().unwrap().is_empty()));
    }

    #[test]
    fn check_gives_errors_and_warnings_with_positions() {
        let found = ask(json!({
            "op": "check",
            "script": "fn on_request_headers() {\n    get_response_header(\"a\");\n}\nfn unused() {}",
            "config": {"config": {"a": 1}},
        }));
        let error = &found["errors"][0];
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("get_response_header"),
            "{found}"
        );
        assert_eq!((&error["line"], &error["column"]), (&json!(2), &json!(5)));
        assert_eq!(found["warnings"][0]["line"], 4);
        let refused = ask(json!({"op": "check", "script": "fn on_request_headers( {"}));
        assert_eq!(refused["errors"][0]["line"], 1, "{refused}");
        assert_eq!(refused["warnings"], json!([]));
        let bad = ask(json!({"op": "check", "script": "", "config": [1]}));
        assert!(bad["error"].as_str().unwrap().contains("object"), "{bad}");
    }

    #[test]
    fn run_answers_what_run_prints_with_the_text_and_error_positions() {
        let answer = ask(json!({
            "op": "run",
            "script": TOKEN,
            "plugin_config": {"config": {"cluster": "token-svc", "requestPath": "/token", "tokenHeader": "x-token"}},
            "request": "POST /api HTTP/1.1\nHost: api.example.com\nX-Token: forged\n\n{}",
            "callouts": ["token-svc/token={\"status\": 200, \"headers\": [[\"x-token\", \"t-1\"]]}"],
        }));
        assert_eq!(answer["request"]["method"], "POST", "{answer}");
        assert_eq!(answer["request"]["authority"], "api.example.com");
        assert_eq!(answer["callouts"][0]["cluster"], "token-svc");
        let headers = answer["upstream"]["headers"].as_array().unwrap();
        assert!(headers.contains(&json!(["x-token", "t-1"])), "{answer}");
        assert_eq!(answer["response"]["status"], 200);
        assert_eq!(answer["errors"], json!([]));
        assert_eq!(answer["error_positions"], json!([]));
        assert!(answer["configure_log"].is_array() && answer["metrics"].is_object());
        assert!(answer["shared_data"].is_object() && answer.get("elapsed_ms").is_none());
        let text = answer["text"].as_str().unwrap();
        assert!(
            text.starts_with("== request: POST /api (authority api.example.com)"),
            "{text}"
        );
        assert!(
            text.contains("== callouts (1)\n  token-svc GET /token"),
            "{text}"
        );

        let failed = ask(json!({
            "op": "run",
            "script": "fn helper() {\n  throw \"deep\";\n}\nfn on_request_headers() { helper(); }",
            "request": {"path": "/x"},
            "response": {"status": 404, "body": "no"},
        }));
        let position = &failed["error_positions"][0];
        assert_eq!(
            (&position["line"], &position["column"]),
            (&json!(2), &json!(3)),
            "{failed}"
        );
        assert_eq!(position["message"], failed["errors"][0]);
        assert_eq!(failed["response"]["status"], 500);

        let looping = ask(json!({"op": "run", "script": "fn on_request_headers() { loop {} }"}));
        assert!(
            looping["errors"][0]
                .as_str()
                .unwrap()
                .contains("max_operations"),
            "{looping}"
        );
    }

    #[test]
    fn run_refuses_a_configuration_with_its_position() {
        let refused =
            ask(json!({"op": "run", "script": "fn on_request_headers() {\n  let = 1;\n}"}));
        assert_eq!(
            (&refused["line"], &refused["column"]),
            (&json!(2), &json!(7)),
            "{refused}"
        );
        assert!(
            refused["error"].as_str().unwrap().contains("line 2"),
            "{refused}"
        );
        let unknown =
            ask(json!({"op": "run", "script": "fn on_log() {}", "plugin_config": {"colour": 1}}));
        assert!(
            unknown["error"].as_str().unwrap().contains("colour"),
            "{unknown}"
        );
        assert_eq!(unknown["line"], Value::Null);
        let bad = ask(json!({"op": "run", "script": "fn on_log() {}", "request": {"pth": "/"}}));
        assert!(bad["error"].as_str().unwrap().contains("pth"), "{bad}");
    }

    #[test]
    fn as_deploy_is_the_envoy_filter() {
        let answer = ask(json!({
            "op": "as_deploy",
            "script": "fn on_request_headers() {}",
            "plugin_config": {"config": {"a": 1}},
        }));
        let filter: Value = serde_json::from_str(answer["text"].as_str().unwrap()).unwrap();
        let config = &filter["typed_config"]["config"];
        assert_eq!(
            config["vm_config"]["code"]["local"]["filename"],
            crate::deploy::DEFAULT_WASM
        );
        let plugin: Value =
            serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(plugin["config"], json!({"a": 1}));
        assert_eq!(plugin["allow_on_headers_stop_iteration"], true);
        let refused = ask(json!({"op": "as_deploy", "script": "fn f() {}"}));
        assert!(refused["error"].is_string(), "{refused}");
    }

    /// Writes the case of a run next to its script and runs it with the test runner.
    fn case_passes(request: Value, script: &str, name: &str) -> String {
        let mut request = request;
        request["op"] = "as_test".into();
        request["script"] = script.into();
        request["script_path"] = format!("{name}.rhai").into();
        let answer = ask(request);
        let text = answer["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"));
        let dir =
            std::env::temp_dir().join(format!("proxy-rhai-case-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.rhai")), script).unwrap();
        let report = crate::testing::run_source(&dir.join(format!("{name}.test.rhai")), text, None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            (report.passed(), report.failed()),
            (1, 0),
            "{:?}\n{text}",
            report
        );
        text.to_string()
    }

    #[test]
    fn as_test_writes_a_case_that_passes() {
        let text = case_passes(
            json!({
                "plugin_config": {"config": {"cluster": "token-svc", "requestPath": "/token", "tokenHeader": "x-token"}},
                "request": {"method": "POST", "path": "/api", "headers": [["x-token", "forged"], ["x-a", "1"]], "body": "{}"},
                "callouts": ["token-svc=500", "token-svc/token={\"headers\": [[\"x-token\", \"t-1\"]]}"],
            }),
            TOKEN,
            "token",
        );
        assert!(text.contains("fn test_the_run() {"), "{text}");
        assert!(
            text.contains(r#"plugin("token.rhai", #{ "cluster": "token-svc""#),
            "{text}"
        );
        assert!(
            text.contains(r#"r.assert_upstream_header("x-token", "t-1");"#),
            "{text}"
        );
        assert!(
            !text.contains(r#""x-a", "1");"#),
            "an unchanged header is not checked: {text}"
        );
        assert!(
            text.contains(r#"r.assert_callout(0, #{ "body": "", "cluster": "token-svc""#),
            "{text}"
        );

        let script = "let n = 0;\nfn on_request_headers() {\n    increment_counter(\"seen\", 1);\n    shared_set(\"k\", \"v\\n\\\"q\\\"\", 0);\n    set_filter_state(\"tenant\", \"t\");\n    log_info(\"hi\");\n    remove_request_header(\"x-a\");\n    replace_request_header(\":path\", \"/new\");\n}\nfn on_response_headers() { add_response_header(\"x-b\", \"2\"); }\nfn on_response_body() { replace_response_body(\"changed\"); }";
        let text = case_passes(
            json!({"request": "GET / HTTP/1.1\nx-a: 1\n\n", "response": "HTTP/1.1 201 Created\nx-up: 1\n\nbody"}),
            script,
            "many",
        );
        assert!(
            text.contains(r#"r.assert_no_upstream_header("x-a");"#),
            "{text}"
        );
        assert!(
            text.contains(r#"assert_eq(r.upstream.path, "/new");"#),
            "{text}"
        );
        assert!(text.contains(r#"r.assert_body("changed");"#), "{text}");
        assert!(
            text.contains(r#"assert_eq(p.metric("seen"), 1);"#),
            "{text}"
        );

        let text = case_passes(json!({"callouts": ["auth=timeout"]}), "fn on_request_headers() {\n  http_get(\"auth\", \"/\", [], 100, |s, h, b| { send_http_response(s, [], b); });\n}", "timeout");
        assert!(text.contains("r.assert_local_response(504"), "{text}");
        case_passes(
            json!({}),
            "fn on_request_headers() { throw \"boom\"; }",
            "failing",
        );
        case_passes(json!({}), "fn on_request_headers() { PAUSE }", "stalled");
        let script = "fn on_request_headers() { if config() == () { add_request_header(\"x-none\", \"1\"); } }";
        let text = case_passes(json!({}), script, "unconfigured");
        assert!(
            text.contains(r#"plugin("unconfigured.rhai", (), #{});"#),
            "{text}"
        );
        assert!(
            text.contains(r#"r.assert_upstream_header("x-none", "1");"#),
            "{text}"
        );
    }
}
