//! Native micro-benchmarks of proxy-rhai's binding layer, through the host emulator.
//!
//! Each case is a script and a request run through `Emulator::run_with` many times; std timing
//! only (`Instant`), each case calibrated to a fixed time per sample, samples interleaved across
//! cases (so a burst of noise hits every case alike), the median of the samples kept. Costs are
//! differences against a baseline case, divided by the number of calls the script makes:
//!
//! - one phase call with an empty function = empty phase − emulator alone (no phase entered);
//! - one binding (table function) = 20 calls of it in a phase − the empty phase, / 20;
//! - one callout and its callback = a phase dispatching one call with an empty callback − the
//!   empty phase;
//! - each bench workload (bench/scripts/*.rhai) as a whole request − emulator alone;
//! - configure time of a script: `Emulator::new` (parse the configuration, build the engine,
//!   compile, run the top-level statements).
//!
//! usage: bench-micro [--quick] [--json FILE] [--filter TEXT]
//!
//! Run it from `bench/run.py` or alone: `cargo run --release --manifest-path bench/micro/Cargo.toml`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proxy_rhai::emulator::{Callout, Emulator, Reply, Request, Response};

/// How many calls a table-function case makes in its phase.
const CALLS: u32 = 20;

struct Case {
    group: &'static str,
    name: String,
    script: String,
    config: serde_json::Value,
    request: Request,
    response: Response,
    /// Subtract the time of this case (by name), then divide by `calls`.
    baseline: Option<&'static str>,
    calls: u32,
}

const EMULATOR_ONLY: &str = "emulator alone, GET (no phase entered)";
const EMULATOR_ONLY_10K: &str = "emulator alone, GET, 10 kB response (no phase entered)";
const EMPTY_RQH: &str = "empty on_request_headers";
const EMPTY_RSH: &str = "empty on_response_headers";
const EMPTY_RSB: &str = "empty on_response_body (10 kB body)";
const EMPTY_RQB: &str = "empty on_request_body (1 kB POST)";

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    let p = bench_dir().join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The request of bench workload 2: the headers its script reads, replaces and removes.
fn header_heavy_request() -> Request {
    let mut r = Request::get("/bench");
    for i in 0..10 {
        r = r.header(&format!("x-in-{i}"), format!("v{i}"));
    }
    for i in 0..5 {
        r = r.header(&format!("x-rm-{i}"), "gone");
    }
    r
}

fn repeat(stmt: &str) -> String {
    (0..CALLS).map(|_| format!("    {stmt};\n")).collect()
}

fn cases(json_body: &str) -> Vec<Case> {
    let small = || Response::ok("ok\n").header("content-type", "text/plain");
    let json_response =
        || Response::ok(json_body.to_string()).header("content-type", "application/json");
    let case = |group, name: &str, script: String, baseline, calls| Case {
        group,
        name: name.to_string(),
        script,
        config: serde_json::json!({"a": 1, "name": "bench"}),
        request: Request::get("/bench")
            .header("x-in-0", "v0")
            .header("user-agent", "bench"),
        response: small(),
        baseline,
        calls,
    };
    let mut v = vec![
        case(
            "baseline",
            EMULATOR_ONLY,
            "fn on_request_body() {}".into(),
            None,
            1,
        ),
        Case {
            response: json_response(),
            ..case(
                "baseline",
                EMULATOR_ONLY_10K,
                "fn on_request_body() {}".into(),
                None,
                1,
            )
        },
        case(
            "phase call",
            EMPTY_RQH,
            "fn on_request_headers() {}".into(),
            Some(EMULATOR_ONLY),
            1,
        ),
        case(
            "phase call",
            EMPTY_RSH,
            "fn on_response_headers() {}".into(),
            Some(EMULATOR_ONLY),
            1,
        ),
        Case {
            response: json_response(),
            ..case(
                "phase call",
                EMPTY_RSB,
                "fn on_response_body() {}".into(),
                Some(EMULATOR_ONLY_10K),
                1,
            )
        },
        Case {
            request: Request::post("/bench", vec![b'x'; 1024]),
            ..case(
                "phase call",
                EMPTY_RQB,
                "fn on_request_body() {}".into(),
                Some(EMULATOR_ONLY),
                1,
            )
        },
        case(
            "phase call",
            "empty on_request_headers returning CONTINUE",
            "fn on_request_headers() { CONTINUE }".into(),
            Some(EMULATOR_ONLY),
            1,
        ),
    ];

    // Plain Rhai, for scale: a statement that calls no binding.
    v.push(case(
        "rhai",
        "let x = 1 + 1 (no binding)",
        format!("fn on_request_headers() {{\n{}}}", repeat("let x = 1 + 1")),
        Some(EMPTY_RQH),
        CALLS,
    ));
    v.push(case(
        "rhai",
        "let s = a string (no binding)",
        format!(
            "fn on_request_headers() {{\n{}}}",
            repeat(r#"let s = "x-bench""#)
        ),
        Some(EMPTY_RQH),
        CALLS,
    ));
    v.push(case(
        "rhai",
        "a string's method: .starts_with",
        format!(
            "fn on_request_headers() {{\n{}}}",
            repeat(r#""/bench".starts_with("/deny")"#)
        ),
        Some(EMPTY_RQH),
        CALLS,
    ));
    v.push(case(
        "rhai",
        "string literal passed to a script fn",
        format!(
            "fn f(s) {{ s }}\nfn on_request_headers() {{\n{}}}",
            repeat("f(\"x-bench\")")
        ),
        Some(EMPTY_RQH),
        CALLS,
    ));

    // Table functions in on_request_headers.
    for (name, stmt) in [
        (
            "get_request_header (present)",
            r#"get_request_header(":path")"#,
        ),
        (
            "get_request_header (absent)",
            r#"get_request_header("x-absent")"#,
        ),
        ("get_request_headers (7 headers)", "get_request_headers()"),
        ("add_request_header", r#"add_request_header("x-a", "1")"#),
        (
            "replace_request_header",
            r#"replace_request_header("x-a", "1")"#,
        ),
        (
            "remove_request_header",
            r#"remove_request_header("x-in-0")"#,
        ),
        (
            "replace_request_headers (2 pairs)",
            r#"replace_request_headers([["a", "1"], ["b", "2"]])"#,
        ),
        ("set_context", r#"set_context("k", 1)"#),
        ("get_context (absent)", r#"get_context("k")"#),
        ("config()", "config()"),
        ("config().name", "config().name"),
        ("to_json (2-key map)", r#"to_json(#{a: 1, b: "x"})"#),
        (
            "parse_json (2-key object)",
            r#"parse_json("{\"a\":1,\"b\":\"x\"}")"#,
        ),
    ] {
        v.push(case(
            "binding",
            name,
            format!("fn on_request_headers() {{\n{}}}", repeat(stmt)),
            Some(EMPTY_RQH),
            CALLS,
        ));
    }
    // In on_response_headers.
    for (name, stmt) in [
        (
            "get_response_header",
            r#"get_response_header("content-type")"#,
        ),
        ("get_response_headers (3 headers)", "get_response_headers()"),
        ("add_response_header", r#"add_response_header("x-a", "1")"#),
        (
            "replace_response_header",
            r#"replace_response_header("x-a", "1")"#,
        ),
        (
            "remove_response_header",
            r#"remove_response_header("content-type")"#,
        ),
    ] {
        v.push(case(
            "binding",
            name,
            format!("fn on_response_headers() {{\n{}}}", repeat(stmt)),
            Some(EMPTY_RSH),
            CALLS,
        ));
    }
    // In on_response_body, on a 10 kB JSON body.
    for (name, stmt) in [
        ("get_response_body (10 kB)", "get_response_body()"),
        (
            "get_response_body_bytes (10 kB)",
            "get_response_body_bytes()",
        ),
        (
            "replace_response_body (1 byte)",
            r#"replace_response_body("x")"#,
        ),
        (
            "append_response_body (1 byte)",
            r#"append_response_body("x")"#,
        ),
    ] {
        v.push(Case {
            response: json_response(),
            ..case(
                "binding",
                name,
                format!("fn on_response_body() {{\n{}}}", repeat(stmt)),
                Some(EMPTY_RSB),
                CALLS,
            )
        });
    }
    const PARSE_ONCE: &str = "get_response_body + parse_json, once (10 kB)";
    let parse_once = "fn on_response_body() {\n    let d = parse_json(get_response_body());\n";
    v.push(Case {
        response: json_response(),
        ..case(
            "binding",
            PARSE_ONCE,
            format!("{parse_once}}}"),
            Some(EMPTY_RSB),
            1,
        )
    });
    v.push(Case {
        response: json_response(),
        ..case(
            "binding",
            "to_json (the parsed 10 kB document)",
            format!("{parse_once}{}}}", repeat("to_json(d)")),
            Some(PARSE_ONCE),
            CALLS,
        )
    });
    // In on_request_body, on a 1 kB POST.
    v.push(Case {
        request: Request::post("/bench", vec![b'x'; 1024]),
        ..case(
            "binding",
            "get_request_body (1 kB)",
            format!(
                "fn on_request_body() {{\n{}}}",
                repeat("get_request_body()")
            ),
            Some(EMPTY_RQB),
            CALLS,
        )
    });
    // Once per request.
    v.push(case(
        "binding",
        "send_http_response (whole request, vs empty phase)",
        r#"fn on_request_headers() { send_http_response(403, [], "denied\n"); }"#.into(),
        Some(EMPTY_RQH),
        1,
    ));
    v.push(case(
        "callout",
        "http_get + empty callback (dispatch, answer, callback dispatch)",
        r#"fn on_request_headers() { http_get("callout", "/callout", [], 1000, |s, h, b| {}); }"#
            .into(),
        Some(EMPTY_RQH),
        1,
    ));
    v.push(case(
        "callout",
        "dispatch_http_call + empty callback",
        r#"fn on_request_headers() {
    dispatch_http_call("callout", [[":method", "GET"], [":path", "/callout"], [":authority", "callout"]], (), 1000, |s, h, b| {});
}"#
        .into(),
        Some(EMPTY_RQH),
        1,
    ));

    // The bench workloads, whole requests, as in Envoy.
    v.push(Case {
        request: Request::get("/bench"),
        ..case(
            "workload",
            "trivial.rhai",
            read("scripts/trivial.rhai"),
            Some(EMULATOR_ONLY),
            1,
        )
    });
    v.push(Case {
        request: Request::get("/deny/x"),
        ..case(
            "workload",
            "trivial.rhai, /deny (local 403)",
            read("scripts/trivial.rhai"),
            Some(EMULATOR_ONLY),
            1,
        )
    });
    v.push(Case {
        request: header_heavy_request(),
        ..case(
            "workload",
            "headers.rhai",
            read("scripts/headers.rhai"),
            Some(EMULATOR_ONLY),
            1,
        )
    });
    v.push(Case {
        request: Request::get("/json"),
        response: json_response(),
        ..case(
            "workload",
            "json.rhai (10 kB)",
            read("scripts/json.rhai"),
            Some(EMULATOR_ONLY_10K),
            1,
        )
    });
    v.push(Case {
        request: Request::get("/bench"),
        ..case(
            "workload",
            "callout.rhai",
            read("scripts/callout.rhai"),
            Some(EMULATOR_ONLY),
            1,
        )
    });
    v
}

fn answer(_: &Callout) -> Reply {
    Reply::Answer {
        status: 200,
        headers: vec![
            ("content-type".into(), b"text/plain".to_vec()),
            ("x-auth-token".into(), b"tok-123".to_vec()),
        ],
        body: b"ok\n".to_vec(),
    }
}

struct Prepared {
    emulator: Emulator,
    upstream: Response,
}

impl Prepared {
    fn run_once(&mut self, request: &Request) -> u32 {
        let mut callouts = answer;
        let outcome = self
            .emulator
            .run_with(request, &mut self.upstream, &mut callouts);
        outcome.response.status
    }
}

fn prepare(case: &Case) -> Prepared {
    let config = serde_json::json!({"script": case.script, "config": case.config}).to_string();
    let emulator = Emulator::new(&config)
        .unwrap_or_else(|e| panic!("{}: configuration refused: {e}", case.name));
    emulator.add_cluster("callout");
    // Check the case does what it says: no script error, no stall.
    let mut callouts = answer;
    let mut upstream = case.response.clone();
    let outcome = emulator.run_with(&case.request, &mut upstream, &mut callouts);
    let errors = outcome.script_errors();
    assert!(
        errors.is_empty(),
        "{}: script errors: {errors:?}",
        case.name
    );
    assert!(outcome.stalled.is_none(), "{}: stalled", case.name);
    assert!(outcome.response.status != 0, "{}: no response", case.name);
    Prepared {
        emulator,
        upstream: case.response.clone(),
    }
}

/// Iterations for one sample to take about `target`.
fn calibrate(p: &mut Prepared, request: &Request, target: Duration) -> u64 {
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(p.run_once(request));
        }
        let e = t.elapsed();
        if e >= target / 4 || iters >= 1 << 24 {
            let scale = target.as_secs_f64() / e.as_secs_f64().max(1e-9);
            return ((iters as f64 * scale).ceil() as u64).max(1);
        }
        iters *= 2;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .map(|i| args[i + 1].clone());
    let filter = args
        .iter()
        .position(|a| a == "--filter")
        .map(|i| args[i + 1].clone());
    let (target, samples, configure_runs) = if quick {
        (Duration::from_millis(20), 5, 5)
    } else {
        (Duration::from_millis(60), 11, 21)
    };

    let json_body = read("data/body-10k.json");
    let mut all = cases(&json_body);
    if let Some(f) = &filter {
        // Keep the baselines the filtered cases need.
        let keep: Vec<String> = all
            .iter()
            .filter(|c| c.name.contains(f.as_str()))
            .flat_map(|c| [Some(c.name.clone()), c.baseline.map(String::from)])
            .flatten()
            .collect();
        let mut more: Vec<String> = all
            .iter()
            .filter(|c| keep.contains(&c.name))
            .filter_map(|c| c.baseline.map(String::from))
            .collect();
        more.extend(keep);
        all.retain(|c| more.contains(&c.name));
    }
    eprintln!(
        "bench-micro: {} cases, {} samples of ~{:?} each",
        all.len(),
        samples,
        target
    );
    let mut prepared: Vec<Prepared> = all.iter().map(prepare).collect();
    let iters: Vec<u64> = prepared
        .iter_mut()
        .zip(&all)
        .map(|(p, c)| calibrate(p, &c.request, target))
        .collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    for _ in 0..samples {
        for (i, (p, c)) in prepared.iter_mut().zip(&all).enumerate() {
            let t = Instant::now();
            for _ in 0..iters[i] {
                black_box(p.run_once(&c.request));
            }
            times[i].push(t.elapsed().as_nanos() as f64 / iters[i] as f64);
        }
    }
    let per_run: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let spread: Vec<(f64, f64)> = times
        .iter()
        .map(|t| (t[0], t[t.len() - 1])) // sorted by median()
        .collect();
    let by_name = |name: &str| all.iter().position(|c| c.name == name).map(|i| per_run[i]);

    let mut rows = Vec::new();
    println!(
        "{:<12} {:<66} {:>12} {:>12}",
        "group", "case", "ns/request", "cost (ns)"
    );
    for (i, c) in all.iter().enumerate() {
        let derived = c
            .baseline
            .and_then(by_name)
            .map(|b| (per_run[i] - b) / c.calls as f64);
        let what = match (c.baseline, c.calls) {
            (None, _) => String::new(),
            (Some(_), 1) => "per request".into(),
            (Some(_), _) => "per call".into(),
        };
        println!(
            "{:<12} {:<66} {:>12.0} {:>12} {}",
            c.group,
            c.name,
            per_run[i],
            derived.map_or("".into(), |d| format!("{d:.0}")),
            what
        );
        rows.push(serde_json::json!({
            "group": c.group,
            "name": c.name,
            "ns_per_request": per_run[i],
            "min_sample_ns": spread[i].0,
            "max_sample_ns": spread[i].1,
            "baseline": c.baseline,
            "calls": c.calls,
            "cost_ns": derived,
            "iterations_per_sample": iters[i],
        }));
    }

    // Configure time: Emulator::new on the plugin configuration, as Envoy's on_configure.
    let mut configure = Vec::new();
    if filter.is_none() {
        println!();
        for (name, script) in [
            ("3-line script (trivial.rhai)", read("scripts/trivial.rhai")),
            (
                "1,000-line script (big-1000.rhai)",
                read("scripts/big-1000.rhai"),
            ),
        ] {
            let config = serde_json::json!({"script": script, "config": {}}).to_string();
            let lines = script.lines().count();
            let mut t: Vec<f64> = (0..configure_runs)
                .map(|_| {
                    let start = Instant::now();
                    let e = Emulator::new(&config).expect("configuration refused");
                    let d = start.elapsed().as_secs_f64() * 1e3;
                    drop(black_box(e));
                    d
                })
                .collect();
            let m = median(&mut t);
            println!(
                "configure {:<40} {:>5} lines: median {:.2} ms (min {:.2}, max {:.2}, {} runs)",
                name,
                lines,
                m,
                t[0],
                t[t.len() - 1],
                configure_runs
            );
            configure.push(serde_json::json!({
                "name": name, "lines": lines, "median_ms": m, "min_ms": t[0], "max_ms": t[t.len() - 1],
                "runs": configure_runs,
            }));
        }
    }

    if let Some(path) = json_out {
        let doc = serde_json::json!({"cases": rows, "configure": configure, "quick": quick});
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).expect("write --json");
        eprintln!("bench-micro: wrote {path}");
    }
}
