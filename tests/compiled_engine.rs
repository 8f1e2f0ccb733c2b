//! The differential harness of the compiled engine (`"engine": "compiled"`, src/compiled.rs):
//! every script we have, and generated ones, run on both engines must do exactly the same —
//! the same answers, upstream requests, callouts, logs, host calls in the same order, errors
//! with their messages and positions, and the same number of operations in every call into
//! the script (the emulator traces it). Any difference is a bug of the compiler.

use std::path::{Path, PathBuf};

use proxy_rhai::compiled;
use proxy_rhai::config::ScriptEngine;
use proxy_rhai::emulator::{Callout, Emulator, Outcome, Reply, Request, Response};
use proxy_rhai::testing::{find_test_files, run_source_with, Setup};

// The fuzz targets' helpers: `deterministic`, `without_closure_names`.
#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz;
use fuzz::{deterministic, without_closure_names};

#[allow(dead_code)]
#[path = "support/redis_server.rs"]
mod redis_server;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `.rhai` scripts (not tests) of a folder of the repository, in name order.
fn scripts_in(folder: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(folder))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        let name = p.to_string_lossy();
        name.ends_with(".rhai") && !name.ends_with(".test.rhai")
    });
    found.sort();
    found
}

/// Requests that reach every phase of the scripts: plain, denied, with a JSON body and
/// headers the scripts read, streamed, with trailers.
fn requests() -> Vec<Request> {
    let mut headers = Request::get("/api/items?x=1")
        .header("authorization", "Bearer abc.def.ghi")
        .header("x-api-key", "key-1")
        .header("x-user-id", "ann")
        .header("origin", "https://example.com")
        .header("content-type", "application/json");
    for i in 0..10 {
        headers = headers.header(&format!("x-in-{i}"), format!("v{i}"));
    }
    let mut chunked = Request::post("/upload", vec![b'a'; 3000]).header("x-user-id", "bob");
    chunked.chunk_size = 700;
    chunked.trailers = vec![("x-checksum".into(), b"1".to_vec())];
    vec![
        Request::get("/"),
        Request::get("/deny/this"),
        headers,
        Request::post(
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"usage":{"total_tokens":7}}"#,
        )
        .header("content-type", "application/json"),
        chunked,
    ]
}

fn upstream(_: &proxy_rhai::emulator::Forwarded) -> Response {
    Response::ok(r#"{"status":"ok","items":[1,2,3],"usage":{"prompt_tokens":3,"total_tokens":9}}"#)
        .header("content-type", "application/json")
        .header("x-upstream", "1")
}

fn reply(call: &Callout) -> Reply {
    match call.cluster.as_str() {
        p if p.contains("fail") => Reply::ConnectFailure,
        _ => Reply::Answer {
            status: 200,
            headers: vec![("x-auth-token".into(), b"t0k".to_vec())],
            body: br#"{"token":"t0k","sub":"ann"}"#.to_vec(),
        },
    }
}

/// Everything a configuration did with each request (or why it was refused), as text.
fn run(configuration: &serde_json::Value, engine: ScriptEngine) -> String {
    let mut configuration = configuration.clone();
    configuration["engine"] = engine.name().into();
    let emulator = match Emulator::counting_operations(&configuration.to_string()) {
        Ok(emulator) => emulator,
        Err(refused) => return without_closure_names(&format!("refused: {refused}")),
    };
    for cluster in [
        "callout",
        "auth",
        "token-svc",
        "outbound|80||auth.default.svc.cluster.local",
    ] {
        emulator.add_cluster(cluster);
    }
    let mut seen = format!("configure log: {:?}\n", emulator.log());
    for request in requests() {
        let outcome: Outcome = emulator.run_with(&request, &mut upstream, &mut reply);
        seen.push_str(&format!("{outcome:#?}\n"));
    }
    emulator.tick();
    seen.push_str(&format!("after tick: {:?}\n", emulator.log()));
    without_closure_names(&seen)
}

/// Runs `configuration` on both engines; a difference is described with the first line that
/// differs.
fn differs(what: &str, configuration: &serde_json::Value) -> Option<String> {
    let evaluated = run(configuration, ScriptEngine::Rhai);
    let compiled = run(configuration, ScriptEngine::Compiled);
    if evaluated == compiled {
        return None;
    }
    let line = evaluated
        .lines()
        .zip(compiled.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let show = |text: &str| {
        text.lines()
            .skip(line.saturating_sub(3))
            .take(8)
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(format!(
        "{what}: the engines differ at line {line}:\n--- rhai\n{}\n--- compiled\n{}",
        show(&evaluated),
        show(&compiled)
    ))
}

fn assert_same(cases: Vec<(String, serde_json::Value)>) {
    assert!(!cases.is_empty());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(what, configuration)| differs(what, configuration))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// The configurations a script runs with here: without config, and with one that turns on
/// what the example scripts read from theirs.
fn configurations(path: &Path) -> Vec<(String, serde_json::Value)> {
    let script = deterministic(&std::fs::read_to_string(path).unwrap());
    let name = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string();
    let config = serde_json::json!({
        "mockEnable": true, "users": ["ann"], "percent": 50, "keys": {"key-1": "tenant-a"},
        "allowed_origins": ["https://example.com"], "secret": "s3cr3t-s3cr3t",
        "cluster": "auth", "header": "x-user-id", "max_bytes": 1000, "redact": ["token"],
    });
    vec![
        (name.clone(), serde_json::json!({ "script": script })),
        (
            format!("{name} with config"),
            serde_json::json!({ "script": script, "config": config }),
        ),
        (
            format!("{name} under a low operations limit"),
            serde_json::json!({ "script": script, "config": config,
                                "limits": { "max_operations": 1000 } }),
        ),
    ]
}

#[test]
fn example_scripts_run_the_same_compiled() {
    assert_same(
        scripts_in("scripts")
            .iter()
            .flat_map(|p| configurations(p))
            .collect(),
    );
}

#[test]
fn bench_and_fuzz_scripts_run_the_same_compiled() {
    let mut cases = Vec::new();
    for folder in ["bench/scripts", "fuzz/scripts"] {
        for path in scripts_in(folder) {
            cases.extend(configurations(&path));
        }
    }
    assert_same(cases);
}

/// How a call into the script ends, at its entry: an error thrown by the phase function itself
/// or by a function it calls, `exit()`, `return`, the operations limit and the call depth
/// limit reached, in phases, chunk functions, callbacks and `on_tick`, with each limit at
/// several values so that it trips at different places, the call's first operation included.
#[test]
fn phase_calls_end_the_same_compiled() {
    let scripts = [
        "fn on_request_headers() { throw \"boom\"; }",
        "fn on_request_headers() { add_request_header(\"x-a\", \"1\"); let x = 1; x.nope() }",
        "fn on_request_headers() { add_request_header(\"x-a\", \"1\"); exit(5); }",
        "fn f(n) { if n > 1 { exit(n) } n } fn on_request_headers() { f(1); f(2); 3 }",
        "fn on_request_headers() { if true { return 3; } 4 }",
        "fn f(n) { return n + 1; } fn on_request_headers() { return f(1); }",
        "fn on_request_headers() { } fn on_response_headers() { return; }",
        "fn on_request_headers() { let n = 0; for i in 0..400 { n += i; } n }",
        "fn on_request_headers() { loop { } }",
        "fn r(n) { r(n + 1) } fn on_request_headers() { r(0) }",
        "fn r(n) { if n > 0 { r(n - 1) } else { n } } fn on_request_headers() { r(2) }",
        "fn on_request_chunk(chunk, last) { if last { throw chunk.len(); } chunk.len() }",
        "fn on_request_chunk(chunk, last) { if last { exit(1) } return chunk.len(); }",
        "fn on_request_chunk(chunk, last) { let n = 0; for i in 0..100 { n += i; } n }",
        "fn r(n) { if n > 0 { r(n - 1) } } \
         fn on_request_headers() { http_get(\"callout\", \"/\", [], 1000, || { r(2); throw 1; }); }",
        "fn on_request_headers() { http_get(\"callout\", \"/\", [], 1000, || exit(2)); }",
        "fn h(a, b) { if a > b { throw a } a + b } \
         fn on_request_headers() { let x = 1; let y = h(x, 2); add_request_header(\"x-a\", `${h(y, 5)}`) }",
        "fn on_request_headers() { let n = 2; let f = |a, b| a + b + n; \
         http_get(\"callout\", \"/\", [], 1000, f.curry(1)); }",
        "fn tag(s) { if s > 300 { exit(s) } `t-${s}` } fn on_request_headers() { let k = \"x-k\"; \
         http_get(\"callout\", \"/\", [], 1000, |status| add_request_header(k, tag(status))); }",
        "fn d(status, headers) { headers.len() + status } \
         fn on_request_headers() { http_get(\"callout\", \"/\", [], 1000, Fn(\"d\")); }",
        "fn on_request_headers() { } fn on_tick() { throw \"tick\" }",
        "fn on_request_headers() { } fn on_tick() { let n = 0; for i in 0..400 { n += i; } }",
    ];
    let mut cases = Vec::new();
    for script in scripts {
        for limits in [
            serde_json::json!({}),
            serde_json::json!({ "max_call_depth": 1 }),
            serde_json::json!({ "max_call_depth": 2 }),
            serde_json::json!({ "max_call_depth": 3 }),
            serde_json::json!({ "max_operations": 1000 }),
            serde_json::json!({ "max_operations": 1001 }),
            serde_json::json!({ "max_operations": 1237 }),
        ] {
            cases.push((
                format!("{script} with limits {limits}"),
                serde_json::json!({ "script": script, "limits": limits }),
            ));
        }
    }
    assert_same(cases);
}

#[test]
fn script_tests_give_the_same_results_compiled() {
    let files = find_test_files(&[root().join("scripts")]).unwrap();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        let report = |engine| {
            // A Redis of its own for each engine: both start from an empty database.
            let redis = redis_server::RedisServer::start();
            let setup = Setup {
                redis: vec![("redis".into(), redis.address())],
                engine: Some(engine),
            };
            let report = run_source_with(file, &source, None, &setup);
            let tests: Vec<_> = report
                .tests
                .iter()
                .map(|t| (t.name.clone(), t.failure.clone(), t.output.clone()))
                .collect();
            without_closure_names(&format!("{:?} {tests:#?}", report.error))
        };
        let compiled = report(ScriptEngine::Compiled);
        if compiled != report(ScriptEngine::Rhai) {
            failures.push(format!("{}:\n{compiled}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A small deterministic generator (no dependency): programs made of the constructs the
/// scripts use, compiled or not, including errors, limits and closures.
struct Generator(u64);

impl Generator {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn string(&mut self, depth: u32) -> String {
        let leaf = [
            r#""abc""#.to_string(),
            r#"get_request_header("x-in-1")"#.into(),
            r#"get_request_header(":path")"#.into(),
            "s".into(),
            "h(n, s)".into(),
            r#"`n=${n}`"#.into(),
            r#"`${a}|${s}${s}|${n > 1}`"#.into(),
        ];
        if depth == 0 {
            return leaf[self.next(leaf.len())].clone();
        }
        match self.next(12) {
            0 => format!("{} + {}", self.string(depth - 1), self.string(depth - 1)),
            1 => format!("({}).to_upper()", self.string(depth - 1)),
            2 => format!("to_string({})", self.int(depth - 1)),
            3 => format!("sub_string({}, 1)", self.string(depth - 1)),
            4 => format!("({}).trim()", self.string(depth - 1)),
            5 => format!(
                "(get_request_header(\"x-none\") ?? {})",
                self.string(depth - 1)
            ),
            // A method on a variable, by reference; on a constant, a copy.
            6 => format!("s.sub_string({})", self.int(depth - 1)),
            7 => "K.to_upper()".into(),
            8 => format!("{{ let t = {}; t + s }}", self.string(depth - 1)),
            9 => "sub_string(s, 1, 2)".into(),
            _ => leaf[self.next(leaf.len())].clone(),
        }
    }

    fn int(&mut self, depth: u32) -> String {
        let leaf = [
            "1",
            "n",
            "7",
            "len(s)",
            "a.len()",
            "f.call(2)",
            "-n",
            "a.grow()",
            "g.call(n)",
            "a[1]",
            "m.t.len()",
        ];
        if depth == 0 {
            return leaf[self.next(leaf.len())].into();
        }
        match self.next(15) {
            // Errors: no `-` of a number and a string, no `!` of a number, overflow.
            9 => format!("{} - s", self.int(depth - 1)),
            10 => format!("!{}", self.int(depth - 1)),
            11 => format!("{} * 9223372036854775807", self.int(depth - 1)),
            12 => format!("({} ?? 3) % 4", self.int(depth - 1)),
            13 => "get_request_header(\"x-none\")?.len() ?? 0".into(),
            0 => format!("{} + {}", self.int(depth - 1), self.int(depth - 1)),
            1 => format!("{} * {}", self.int(depth - 1), self.int(depth - 1)),
            2 => format!("len({})", self.string(depth - 1)),
            3 => format!("abs({})", self.int(depth - 1)),
            4 => format!("max({}, {})", self.int(depth - 1), self.int(depth - 1)),
            5 => format!("{} / {}", self.int(depth - 1), self.int(depth - 1)),
            6 => format!("parse_int({})", self.string(depth - 1)),
            _ => leaf[self.next(leaf.len())].into(),
        }
    }

    fn condition(&mut self) -> String {
        match self.next(10) {
            8 => format!("!({} != {})", self.string(0), self.string(0)),
            9 => format!("{} <= n", self.int(1)),
            5 => format!("({} && {})", self.condition(), self.condition()),
            6 => format!("({} || {})", self.condition(), self.condition()),
            7 => format!("({} || {})", self.condition(), self.string(0)),
            0 => format!("{} > {}", self.int(1), self.int(1)),
            1 => format!("({}).starts_with(\"/\")", self.string(1)),
            2 => format!("{} == ()", self.string(0)),
            3 => "true".into(),
            _ => format!("({}).contains(\"b\")", self.string(1)),
        }
    }

    fn statement(&mut self, depth: u32) -> String {
        let k = self.next(46);
        match k {
            // By reference: the variable changes (not when it is a constant).
            14 => "s.trim(); a.pop(); c.trim();".into(),
            15 => format!("push(a, {}); trim(s); trim(c); c += s;", self.int(1)),
            16 => "K.trim();".into(),
            17 => format!("n += {}; s += {};", self.int(1), self.string(1)),
            18 => format!("n -= {};", self.string(0)),
            19 if depth > 0 => format!(
                "let i = 0; while i < {} {{ i += 1; if i == 2 {{ continue; }} {} }}",
                self.next(4),
                self.block(depth - 1)
            ),
            20 if depth > 0 => format!(
                "loop {{ n += 1; if n > {} {{ break; }} {} }}",
                self.next(12),
                self.block(depth - 1)
            ),
            // Shadowing, in a block and in the function's own scope.
            21 => format!("{{ let s = s + {}; n += len(s); }}", self.string(1)),
            22 => format!("let n = {}; const m = n;", self.int(1)),
            23 => "n = g.call(1) + a.grow();".into(),
            24 => "let v = this;".into(),
            25 => format!("s = s.pad({}, \"x\") ;", self.int(1)),
            // Chains: properties, indexes and methods, read and assigned to.
            26 => format!("m.k = {}; m.t.push(m.k.len());", self.string(1)),
            27 => format!("a[{}] += 1; m.t[0] = a[-1];", self.next(4)),
            28 => "log_info(`${m.t} ${m.k.len()} ${m?.z?.y} ${s[1]}`);".into(),
            29 => "n += m[\"t\"].len() + n.nope;".into(),
            30 => format!("m.t.pop(); m.z = #{{ y: {} }}; n += m.z.y;", self.int(1)),
            // Loops over arrays, strings and what cannot be iterated, with a counter.
            31 if depth > 0 => format!(
                "for (x, i) in a {{ if i > {} {{ break; }} n += x * i; {} }}",
                self.next(3),
                self.block(depth - 1)
            ),
            32 => "for ch in s { if ch == 't' { continue; } n += 1; } for x in 0..2 {}".into(),
            33 => format!("for x in {} {{ n += 1; }}", self.int(0)),
            34 if depth > 0 => format!(
                "do {{ n += 1; {} }} until n > {};",
                self.block(depth - 1),
                self.next(9)
            ),
            35 => "do { n -= 1; if n > 100 { break; } } while n > 0;".into(),
            // switch: values, conditions (one not a boolean), ranges, default, not hashable.
            36 => format!(
                "switch n % 5 {{ 0 => n += 1, 1 if len(s) > {} => s += \"y\", 2 | 3 => {{ log_info(s); }}, \
                 4 if n => n = 0, _ => n -= 1 }}",
                self.next(8)
            ),
            37 => format!(
                "let r = switch {} {{ 0..3 => \"low\", 3..=9 if n > 2 => `mid ${{n}}`, \"start\" => s, _ => () }}; \
                 n += len(r ?? \"\");",
                self.int(1)
            ),
            // Array and map literals, nested, past the string size limit.
            39 => format!("a = [{}, s, [n, {}], a];", self.int(1), self.string(1)),
            40 => "m = #{ k: s, t: [n, s + s], z: m };".into(),
            // try/catch: errors as maps, thrown values, no variable, rethrown.
            41 => format!(
                "try {{ n += len(s) / (n - n); }} catch (e) {{ log_info(`${{e.message}} ${{e.line}}`); }} \
                 try {{ throw {}; }} catch (x) {{ n += len(`${{x}}`); }}",
                self.int(1)
            ),
            42 => "try { a[99] = 1; } catch { n += 1; }".into(),
            43 => "try { try { throw s; } catch { throw; } } catch (e) { s = e; }".into(),
            // A closure capturing variables: they are shared from then on.
            44 => "let cl = |x| { n += x; len(s) + x }; n += cl.call(1); trim(s); s.pad(3, \"-\");"
                .into(),
            45 => "let sh = a; let keep = || sh; n += sh.grow() + len(sh);".into(),
            38 => "switch a { [1] => n = 1, _ => n += 1 } switch s { \"start\" => n += 2 }".into(),
            0 => format!("n = {};", self.int(2)),
            1 => format!("s = {};", self.string(2)),
            2 => format!(
                "add_request_header(\"x-g-{}\", {});",
                self.next(5),
                self.string(2)
            ),
            3 if depth > 0 => format!(
                "if {} {{ {} }} else {{ {} }}",
                self.condition(),
                self.block(depth - 1),
                self.block(depth - 1)
            ),
            4 if depth > 0 => format!(
                "for i in 0..{} {{ n += i; {} }}",
                self.next(5),
                self.block(depth - 1)
            ),
            5 => format!("log_info({});", self.string(1)),
            6 => format!("a.push({});", self.int(1)),
            7 => format!("set_context(\"k\", {});", self.string(1)),
            8 => format!("replace_request_header(\"x-r\", {});", self.string(1)),
            9 => "h(n, s);".into(),
            10 if depth > 0 => format!("{{ let t = {}; n += t; }}", self.int(1)),
            11 => format!("if n > {} {{ return n; }}", self.next(50)),
            12 => format!("print({});", self.string(1)),
            _ => format!("let v{} = {};", self.next(3), self.int(1)),
        }
    }

    fn block(&mut self, depth: u32) -> String {
        (0..1 + self.next(3))
            .map(|_| self.statement(depth))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn program(&mut self) -> String {
        let body = self.block(2);
        // Binding calls the compiler calls directly, with arguments of the wrong type (Rhai's
        // "function not found", or the binding's own error) and with large ones (the data
        // charged as operations, the size checks).
        let tail = match self.next(10) {
            0 => "throw \"stop \" + n;".to_string(),
            1 => "let big = \"\"; loop { big += \"abcdefgh\"; }".into(),
            2 => "get_request_header(n);".into(),
            3 => "add_request_header(\"x-t\", a);".into(),
            4 => "let big = \"abcdefgh\"; for i in 0..9 { big += big; } \
                  set_context(\"big\", big); add_request_header(\"x-big\", get_context(\"big\"));"
                .into(),
            5 => "set_context(\"a\", a); log_info(get_context(\"a\"));".into(),
            _ => String::new(),
        };
        format!(
            "fn h(x, y) {{ if x > 3 {{ y.len() + x }} else {{ x + 1 }} }}\n\
             fn grow() {{ this.push(this.len()); push(this, type_of(this)); this.len() + len(this) }}\n\
             const K = \"konst\";\n\
             fn on_request_headers() {{\n  let n = 2; let s = \"start\"; let a = [1, 2];\n  \
             let c = \" shared \";\n  \
             let m = #{{ k: \"v\", t: [1] }};\n  \
             let f = |v| v + c.len();\n  let g = |v| {{ c.trim(); c.len() + v }};\n  \
             {body}\n  log_info(`end: ${{n}} ${{s}} ${{a}} ${{c}} ${{m}}`);\n  {tail}\n}}\n\
             fn on_response_headers() {{ let s = get_response_header(\"x-upstream\"); \
             let n = 1; let a = [n]; let f = |v| v; let g = f; {}\n}}\n",
            self.block(1)
        )
    }
}

#[test]
fn generated_programs_run_the_same_compiled() {
    let mut generator = Generator(0x5eed);
    let cases = (0..150)
        .map(|i| {
            let script = generator.program();
            let limits = match i % 3 {
                0 => serde_json::json!({ "max_operations": 1000 + i * 7 }),
                1 => serde_json::json!({ "max_string_size": 1024 }),
                _ => serde_json::json!({}),
            };
            (
                format!("generated program {i}:\n{script}"),
                serde_json::json!({ "script": script, "limits": limits }),
            )
        })
        .collect();
    assert_same(cases);
}

/// Which constructs the compiler leaves to Rhai's evaluator, and how often the example and
/// bench scripts have them (`cargo test --test compiled_engine -- --nocapture` prints it):
/// none.
#[test]
fn coverage_of_the_scripts() {
    // A plugin with the default limits, for its engine and its bindings.
    let plugin = Emulator::with_script("fn on_log() {}", serde_json::Value::Null).unwrap();
    let mut total = compiled::Coverage::default();
    let mut paths = scripts_in("scripts");
    paths.extend(scripts_in("bench/scripts"));
    for path in &paths {
        let coverage = plugin
            .compiler_coverage(&std::fs::read_to_string(path).unwrap())
            .unwrap();
        println!(
            "{}: {} functions, {} nodes compiled ({} direct calls), evaluated: {:?}",
            path.strip_prefix(root()).unwrap().display(),
            coverage.functions,
            coverage.compiled,
            coverage.direct_calls,
            coverage.evaluated
        );
        total.functions += coverage.functions;
        total.compiled += coverage.compiled;
        total.direct_calls += coverage.direct_calls;
        for (kind, n) in coverage.evaluated {
            *total.evaluated.entry(kind).or_default() += n;
        }
    }
    println!(
        "all: {} functions, {} nodes compiled ({} direct calls), evaluated: {:?}",
        total.functions, total.compiled, total.direct_calls, total.evaluated
    );
    // The example and bench scripts are compiled whole; the header-heavy workload's calls are
    // all direct ones.
    assert_eq!(total.evaluated, Default::default());
    let headers = plugin
        .compiler_coverage(
            &std::fs::read_to_string(root().join("bench/scripts/headers.rhai")).unwrap(),
        )
        .unwrap();
    assert_eq!(headers.direct_calls, 20);
}
