//! The fuzz targets' logic, in one place for both users:
//!
//! - `cargo fuzz` (`fuzz/fuzz_targets/*.rs`), as the `proxy_rhai_fuzz` library;
//! - the corpus replay in the main package (`tests/fuzz_corpus.rs`), which includes this file
//!   with `#[path]` and replays `fuzz/corpus/*` and `fuzz/regressions/*` on the stable
//!   toolchain.
//!
//! So it uses only what the main package has: `proxy_rhai` itself and `serde_json`. It decodes
//! its structured input with [`Input`], a small reader of the fuzzer's bytes (the replay test
//! can't use the `arbitrary` crate: it is no dependency of the main package), that never fails:
//! past the end it reads zeros.
//!
//! Each target must never panic: errors, refused configurations and script errors are fine.
//! But `host_events` panics when the two engines (`"rhai"`, `"compiled"`) differ: a bug of
//! the compiler (src/compiled.rs).

use proxy_rhai::config::PluginConfig;
use proxy_rhai::emulator::{Callout, Emulator, Forwarded, Headers, Reply, Request, Response};
use serde_json::{json, Map, Value};

/// A fuzz target: takes the fuzzer's bytes, must not panic.
pub type Target = fn(&[u8]);

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`).
pub const TARGETS: [(&str, Target); 4] = [
    ("config", config),
    ("host_events", host_events),
    ("bytes", bytes),
    ("hostile_host", hostile_host),
];

/// Runs the target called `name` on `data`; false when there is no such target.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, target)) => {
            target(data);
            true
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Input: the fuzzer's bytes, read as structured values
// ---------------------------------------------------------------------------------------------

/// Reads values off the front of the fuzzer's bytes; past the end every read gives zero.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// An index below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 | 1 => 0,
            2..=256 => usize::from(self.byte()) % n,
            _ => usize::from(self.u16()) % n,
        }
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A length up to `max`: one byte, or two more when the first is 0xff.
    pub fn len(&mut self, max: usize) -> usize {
        let n = match self.byte() {
            0xff => usize::from(self.u16()),
            b => usize::from(b),
        };
        n.min(max)
    }

    /// Up to `max` bytes, as they come.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.len(max).min(self.data.len());
        let (taken, rest) = self.data.split_at(n);
        self.data = rest;
        taken.to_vec()
    }

    /// Everything left.
    pub fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data).to_vec()
    }

    /// Up to `max` bytes as text (invalid UTF-8 replaced).
    pub fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(&self.bytes(max)).into_owned()
    }

    /// Words of the scripts' little languages (plans, phases, clusters, JSON), or raw bytes.
    pub fn value(&mut self) -> Vec<u8> {
        let b = self.byte();
        if b < 0x90 {
            let mut out = Vec::new();
            for _ in 0..=b % 8 {
                out.extend_from_slice(self.pick(WORDS).as_bytes());
            }
            out
        } else {
            self.bytes(128)
        }
    }

    /// A header name: a well-known one (the scripts' own among them), or any lowercase text.
    pub fn name(&mut self) -> String {
        let b = self.byte();
        if b >= 0xe0 {
            self.text(24).to_ascii_lowercase()
        } else {
            NAMES[usize::from(b) % NAMES.len()].to_string()
        }
    }

    pub fn headers(&mut self, max: usize) -> Headers {
        let n = self.below(max + 1);
        (0..n).map(|_| (self.name(), self.value())).collect()
    }

    /// A body: a value, raw bytes, or either repeated up to 64 KiB (past the small limits).
    pub fn body(&mut self) -> Vec<u8> {
        let mut body = match self.byte() % 4 {
            0 => Vec::new(),
            1 => self.value(),
            _ => self.bytes(1024),
        };
        let repeat = self.byte();
        if repeat >= 0xf0 && !body.is_empty() {
            let times = (usize::from(repeat - 0xef) << 12) / body.len() + 1;
            body = body.repeat(times.min(64 << 10));
            body.truncate(64 << 10);
        }
        body
    }

    pub fn chunk_size(&mut self) -> usize {
        match self.byte() {
            0 => 16 << 10,
            0xff => 1 << 20,
            b => usize::from(b % 64) + 1,
        }
    }
}

/// Header names the scripts read, and names the proxy cares about.
const NAMES: &[&str] = &[
    "x-name",
    "x-value",
    "x-plan",
    "x-status",
    "x-respond-in",
    "x-shape",
    "x-body",
    "x-twice",
    "x-skip",
    "x-payload",
    "x-answer",
    "x-in0",
    "x-in1",
    "x-request-id",
    "content-length",
    "content-type",
    "transfer-encoding",
    "cookie",
    ":path",
    ":authority",
    ":method",
    ":status",
    "X-Upper",
    "",
];

/// Pieces of the scripts' plans (see `fuzz/scripts/*.rhai`) and of JSON.
const WORDS: &[&str] = &[
    "request_headers",
    "request_body",
    "request_trailers",
    "response_headers",
    "response_body",
    "response_trailers",
    "log",
    "get",
    "get_default",
    "post",
    "post_default",
    "call",
    "dispatch",
    "bad_headers",
    "bad_timeout",
    "two",
    "caught",
    "backend",
    "auth",
    "nope",
    "resume",
    "respond",
    "throw",
    "header",
    "rheader",
    "again",
    "json",
    "body",
    "rbody",
    "count",
    "/",
    ",",
    "/p",
    "A",
    "B",
    "C",
    "D",
    "E",
    "F",
    "G",
    "p",
    "c",
    "r",
    "s",
    "t",
    "q",
    "S",
    "200",
    "404",
    "503",
    "99",
    "-1",
    "{",
    "}",
    "[",
    "]",
    "\"a\"",
    ":",
    "1",
    "1e999",
    "-0.5",
    "null",
    "true",
    "\\u00e9",
    "\\ud800",
    "%",
    "%ff",
    "%41",
    "=",
    "YWJj",
    "-_",
    "\u{e9}",
    " ",
];

// ---------------------------------------------------------------------------------------------
// config: the plugin configuration, as Envoy hands it over
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes as a plugin configuration: parsed, then configured in the emulator; a
/// configuration it accepts then serves a request and a tick.
pub fn config(data: &[u8]) {
    let parsed = PluginConfig::parse(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Limits far above the defaults let a script loop or allocate for seconds and gigabytes:
    // a sandbox setting the operator chose, not a fault to find here.
    if let Ok(c) = &parsed {
        let l = &c.limits;
        if l.max_operations > 1_000_000 || l.max_string_size > 8 << 20 || l.max_array_size > 1 << 20
        {
            return;
        }
    }
    let Ok(emulator) = Emulator::new(text) else {
        return;
    };
    emulator.add_cluster("backend");
    let request = Request::post("/", "{}").header("x-a", "b");
    emulator.run(&request, &mut Response::ok("ok"));
    if emulator.tick_period_ms() > 0 {
        emulator.tick();
    }
}

// ---------------------------------------------------------------------------------------------
// host_events: streams of host events through the emulator, with scripts using the whole API
// ---------------------------------------------------------------------------------------------

/// The fixed scripts, chosen by the input; the last choice is the op interpreter, whose
/// program (and so which phases the script defines) the input writes.
const SCRIPTS: [&str; 6] = [
    include_str!("../scripts/headers.rhai"),
    include_str!("../scripts/bodies.rhai"),
    include_str!("../scripts/local_response.rhai"),
    include_str!("../scripts/callouts.rhai"),
    include_str!("../scripts/state.rhai"),
    include_str!("../scripts/pause.rhai"),
];

const OPS_SCRIPT: &str = include_str!("../scripts/ops.rhai");

/// The phases the op interpreter may define, as `config()` keys and function names.
const PHASES: [&str; 8] = [
    "request_headers",
    "request_body",
    "request_trailers",
    "response_headers",
    "response_body",
    "response_trailers",
    "log",
    "tick",
];

/// Headers, body, trailers and a callout plan as the input decides, through every phase, for
/// one to three requests on the same plugin. Then the same on each engine (`"rhai"`,
/// `"compiled"`), which must do exactly the same.
pub fn host_events(data: &[u8]) {
    let mut input = Input::new(data);
    let configuration = configuration(&mut input);
    let events = input.data;
    run_events(&configuration.to_string(), Input::new(events), false);
    assert_same_on_both_engines(&configuration, events);
}

/// Panics (a finding) when the two engines do anything differently with the `events` on
/// `configuration`, its random values made fixed: answers, logs, host calls, the operations
/// of each call.
pub fn assert_same_on_both_engines(configuration: &Value, events: &[u8]) {
    let on = |engine: &str| {
        let mut configuration: Value =
            serde_json::from_str(&deterministic(&configuration.to_string())).unwrap_or_default();
        configuration["engine"] = engine.into();
        run_events(&configuration.to_string(), Input::new(events), true)
    };
    let (evaluated, compiled) = (on("rhai"), on("compiled"));
    if let Some(i) =
        (0..evaluated.len().max(compiled.len())).find(|&i| evaluated.get(i) != compiled.get(i))
    {
        panic!(
            "the engines differ on {configuration}\n--- rhai:\n{:?}\n--- compiled:\n{:?}",
            evaluated.get(i),
            compiled.get(i)
        );
    }
}

/// `source` with its random values made fixed, so that two runs compare: each of
/// `random_int(a, b)`, `random_id()` and `uuid_v4()` becomes a call of the same shape.
pub fn deterministic(source: &str) -> String {
    source
        .replace("random_int(", "min(")
        .replace("random_id()", "to_string(16)")
        .replace("uuid_v4()", "to_string(36)")
}

/// Closures are named by a count of the closures the process parsed (`anon$` and 16 hex
/// digits): two compilations of one script name them differently.
pub fn without_closure_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("anon$") {
        out.push_str(&rest[..at + 5]);
        rest = &rest[at + 5..];
        let digits = rest
            .bytes()
            .take(16)
            .take_while(u8::is_ascii_hexdigit)
            .count();
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// The requests, ticks and answers `input` describes, on a plugin configured with
/// `configuration` (its trace with each call's operations when `count_operations`): what each
/// did, as text, closure names left out.
fn run_events(configuration: &str, mut input: Input, count_operations: bool) -> Vec<String> {
    let configured = match count_operations {
        true => Emulator::counting_operations(configuration),
        false => Emulator::new(configuration),
    };
    let mut emulator = match configured {
        Ok(emulator) => emulator,
        Err(e) => {
            if std::env::var_os("PROXY_RHAI_FUZZ_DEBUG").is_some() {
                eprintln!("--- refused: {e}");
            }
            return vec![without_closure_names(&e)];
        }
    };
    emulator.add_cluster("backend");
    emulator.add_cluster("auth");
    emulator.buffer_limit = input.pick(&[1 << 20, 16, 4096]);
    if input.flag() {
        emulator.set_time_nanos(input.u64());
    }
    let mut seen = Vec::new();
    for _ in 0..=input.below(3) {
        if input.byte() >= 0xe0 {
            emulator.tick();
            seen.push(without_closure_names(&format!("{:?}", emulator.log())));
        }
        let outcome = exchange(&emulator, &mut input);
        seen.push(without_closure_names(&format!("{outcome:?}")));
        if input.is_empty() {
            break;
        }
    }
    seen
}

/// A plugin configuration: a fixed script or an op program, limits, error policy, rules.
fn configuration(input: &mut Input) -> Value {
    let choice = input.below(SCRIPTS.len() + 1);
    let (script, user_config) = if choice < SCRIPTS.len() {
        (
            SCRIPTS[choice].to_string(),
            json!({ "secret": input.text(16) }),
        )
    } else {
        ops_program(input)
    };
    let mut configuration = json!({
        "script": script,
        "config": user_config,
        "limits": {
            "max_operations": input.pick(&[20_000, 1_000, 100_000]),
            "max_call_depth": input.pick(&[32, 8, 4]),
            "max_string_size": input.pick(&[1 << 20, 1024]),
            "max_array_size": input.pick(&[100_000, 16]),
            "max_map_size": input.pick(&[10_000, 16]),
            "max_body_size": input.pick(&[4 << 20, 0, 16, 1024]),
        },
        "error_policy": {
            "mode": input.pick(&["fail_closed", "fail_open"]),
            "status": input.pick(&[500, 200, 599]),
            "body": input.text(8),
        },
    });
    if input.byte() >= 0xc0 {
        configuration["_rules_"] = rules(input);
    }
    configuration
}

/// Higress rules choosing among the fixed scripts by route, host or cluster.
fn rules(input: &mut Input) -> Value {
    let n = 1 + input.below(2);
    let mut rules = Vec::new();
    for _ in 0..n {
        let mut rule = Map::new();
        let (key, values): (&str, &[&str]) = match input.below(4) {
            0 => ("_match_route_", &["r1", "default", ""]),
            1 => ("_match_route_prefix_", &["admin-", "r", ""]),
            2 => (
                "_match_domain_",
                &["*.example.com", "api.*", "example.com:80", "[::1]"],
            ),
            _ => (
                "_match_service_",
                &["svc.ns.svc.cluster.local:80", "upstream", "a:b:1"],
            ),
        };
        rule.insert(key.into(), json!([input.pick(values)]));
        if input.flag() {
            rule.insert("script".into(), json!(input.pick(&SCRIPTS)));
        }
        if input.flag() {
            rule.insert("config".into(), json!({ "secret": input.text(8) }));
        }
        rules.push(Value::Object(rule));
    }
    Value::Array(rules)
}

/// One request through the plugin: the client's request, the upstream's response and the
/// answers to the callouts all come from the input.
fn exchange(emulator: &Emulator, input: &mut Input) -> proxy_rhai::emulator::Outcome {
    let request = request(input);
    let response = response(input);
    let echo = input.flag();
    let mut upstream = |forwarded: &Forwarded| {
        let mut answer = response.clone();
        if echo {
            answer.body = forwarded.body.clone();
            answer.headers.extend(
                forwarded
                    .headers
                    .iter()
                    .filter(|(k, _)| !k.starts_with(':'))
                    .cloned(),
            );
        }
        answer
    };
    let replies: Vec<Option<Reply>> = (0..input.below(7)).map(|_| reply(input)).collect();
    let mut replies = replies.into_iter();
    // `None` stands for an echo of the call's own body.
    let mut callouts = |call: &Callout| match replies.next() {
        Some(Some(reply)) => reply,
        Some(None) => Reply::Answer {
            status: 200,
            headers: call.headers.clone(),
            body: call.body.clone(),
        },
        None => Reply::NoAnswer,
    };
    let outcome = emulator.run_with(&request, &mut upstream, &mut callouts);
    debug(&request, &outcome);
    outcome
}

/// With `PROXY_RHAI_FUZZ_DEBUG` set, shows what an input did (for the replay test, run with
/// `--nocapture`, or a fuzz target run on one file).
fn debug(request: &Request, outcome: &proxy_rhai::emulator::Outcome) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("PROXY_RHAI_FUZZ_DEBUG").is_some()) {
        let r = &outcome.response;
        eprintln!(
            "--- {} {} ({} bytes): {} local={} reset={} stalled={:?} callouts={}",
            request.method,
            request.path,
            request.body.len(),
            r.status,
            r.local,
            r.reset,
            outcome.stalled,
            outcome.callouts.len()
        );
        for line in &outcome.log {
            eprintln!("    log {:?}: {}", line.level, line.message);
        }
        for call in &outcome.trace {
            eprintln!("    {call}");
        }
    }
}

fn request(input: &mut Input) -> Request {
    let method = match input.byte() % 6 {
        0 => "POST".to_string(),
        1 => "PUT".to_string(),
        2 => input.text(8),
        _ => "GET".to_string(),
    };
    let path = match input.byte() % 4 {
        0 => input.text(32),
        1 => "/a/b?c=d&e=%ff".to_string(),
        _ => "/".to_string(),
    };
    let mut request = Request::new(&method, &path, input.body());
    request.headers = input.headers(10);
    request.chunk_size = input.chunk_size();
    if input.byte() >= 0xc0 {
        request.trailers = input.headers(3);
    }
    request.authority = match input.byte() % 6 {
        0 => input.text(16),
        1 => "api.example.com:8080".into(),
        2 => "[::1]:80".into(),
        _ => "example.com".into(),
    };
    request.route_name = input.pick(&["default", "r1", "admin-x", ""]).into();
    request.cluster_name = input
        .pick(&[
            "upstream",
            "outbound|80||svc.ns.svc.cluster.local",
            "a|b|c|d",
            "",
        ])
        .into();
    request
}

fn response(input: &mut Input) -> Response {
    let status = match input.byte() % 8 {
        0 => u32::from(input.u16()),
        1 => 404,
        2 => 503,
        3 => 204,
        _ => 200,
    };
    let mut response = Response::new(status, input.body());
    response.headers = input.headers(6);
    response.chunk_size = input.chunk_size();
    if input.byte() >= 0xc0 {
        response.trailers = input.headers(3);
    }
    response
}

/// The answer to a callout; `None`: an echo of the call.
fn reply(input: &mut Input) -> Option<Reply> {
    Some(match input.byte() % 6 {
        0 => Reply::NoAnswer,
        1 => Reply::Reset,
        2 => Reply::Failure,
        3 => return None,
        _ => Reply::Answer {
            status: match input.byte() % 4 {
                0 => input.u32(),
                1 => 404,
                _ => 200,
            },
            headers: input.headers(4),
            body: input.body(),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// The op interpreter's program
// ---------------------------------------------------------------------------------------------

/// The ops `fuzz/scripts/ops.rhai` knows, with the kinds of their arguments:
/// N header name, V string or blob, H headers, S status, C cluster, P path, T timeout,
/// O ops (a callback's), K key, J JSON text, A anything, I integer, R property path, M method.
const OPS: &[(&str, &str)] = &[
    ("pause", ""),
    ("try", "O"),
    ("throw", "A"),
    ("loop", ""),
    ("grow", ""),
    ("recurse", ""),
    ("get_request_headers", ""),
    ("get_request_header", "N"),
    ("replace_request_headers", "H"),
    ("replace_request_header", "NV"),
    ("add_request_header", "NV"),
    ("remove_request_header", "N"),
    ("get_request_trailers", ""),
    ("get_request_trailer", "N"),
    ("replace_request_trailers", "H"),
    ("replace_request_trailer", "NV"),
    ("add_request_trailer", "NV"),
    ("remove_request_trailer", "N"),
    ("get_response_headers", ""),
    ("get_response_header", "N"),
    ("replace_response_headers", "H"),
    ("replace_response_header", "NV"),
    ("add_response_header", "NV"),
    ("remove_response_header", "N"),
    ("get_response_trailers", ""),
    ("get_response_trailer", "N"),
    ("replace_response_trailers", "H"),
    ("replace_response_trailer", "NV"),
    ("add_response_trailer", "NV"),
    ("remove_response_trailer", "N"),
    ("get_request_body", ""),
    ("get_request_body_bytes", ""),
    ("append_request_body", "V"),
    ("prepend_request_body", "V"),
    ("replace_request_body", "V"),
    ("get_response_body", ""),
    ("get_response_body_bytes", ""),
    ("append_response_body", "V"),
    ("prepend_response_body", "V"),
    ("replace_response_body", "V"),
    ("has_request_body", ""),
    ("has_response_body", ""),
    ("skip_request_body", ""),
    ("skip_response_body", ""),
    ("send_http_response", "SHV"),
    ("resume_http_request", ""),
    ("resume_http_response", ""),
    ("dispatch_http_call", "CHVTO"),
    ("redis_call", "CAO"),
    ("redis_incr", "CVO"),
    ("redis_set", "CVVIO"),
    ("redis_eval", "CVAAO"),
    ("http_get", "CPHTO"),
    ("http_get_default", "CPHO"),
    ("http_post", "CPHVTO"),
    ("http_post_default", "CPHVO"),
    ("http_call", "MCPHVTO"),
    ("get_http_call_response_headers", ""),
    ("get_http_call_response_trailers", ""),
    ("get_http_call_response_body", ""),
    ("get_http_call_response_body_bytes", ""),
    ("get_http_call_response_header", "N"),
    ("set_context", "KA"),
    ("get_context", "K"),
    ("config", ""),
    ("log_trace", "A"),
    ("log_debug", "A"),
    ("log_info", "A"),
    ("log_warn", "A"),
    ("log_error", "A"),
    ("print", "A"),
    ("debug", "A"),
    ("parse_json", "J"),
    ("to_json", "A"),
    ("get_property", "R"),
    ("get_property_bytes", "R"),
    ("set_property", "RV"),
    ("shared_get", "K"),
    ("shared_set", "KVI"),
    ("increment_counter", "KI"),
    ("set_gauge", "KI"),
    ("add_to_gauge", "KI"),
    ("record_histogram", "KI"),
    ("get_counter", "K"),
    ("get_gauge", "K"),
    ("base64_encode", "V"),
    ("base64_decode", "V"),
    ("base64_decode_bytes", "V"),
    ("base64url_encode", "V"),
    ("base64url_decode", "V"),
    ("base64url_decode_bytes", "V"),
    ("url_encode", "V"),
    ("url_decode", "V"),
    ("hex_encode", "V"),
    ("sha256", "V"),
    ("sha256_bytes", "V"),
    ("hmac_sha256", "VV"),
    ("hmac_sha256_bytes", "VV"),
    ("now_ms", ""),
    ("now_nanos", ""),
    ("random_id", ""),
    ("uuid_v4", ""),
    ("random_int", "II"),
    ("to_string", ""),
    ("concat", "AA"),
    ("index", "AA"),
    ("len", "A"),
];

/// The op interpreter with a stub for each phase that has ops, and its program as `config`.
fn ops_program(input: &mut Input) -> (String, Value) {
    let mut script = OPS_SCRIPT.to_string();
    let mut program = Map::new();
    for phase in PHASES {
        if !input.flag() {
            continue;
        }
        program.insert(phase.into(), ops(input, 0));
        let returns = if phase == "tick" { ";" } else { "" };
        script.push_str(&format!(
            "\nfn on_{phase}() {{ run(config().{phase}, ()){returns} }}\n"
        ));
    }
    if program.is_empty() {
        script.push_str("\nfn on_request_headers() { }\n");
    }
    (script, Value::Object(program))
}

fn ops(input: &mut Input, depth: usize) -> Value {
    let n = input.below(if depth == 0 { 7 } else { 4 });
    Value::Array((0..n).map(|_| op(input, depth)).collect())
}

fn op(input: &mut Input, depth: usize) -> Value {
    let (name, kinds) = input.pick(OPS);
    let mut op = vec![json!(name)];
    for kind in kinds.chars() {
        op.push(match input.byte() {
            // The previous op's result, or an argument of any kind.
            0..=15 => json!("$"),
            16..=23 => arg(input, 'A', depth),
            _ => arg(input, kind, depth),
        });
    }
    Value::Array(op)
}

fn arg(input: &mut Input, kind: char, depth: usize) -> Value {
    match kind {
        'N' => json!(input.name()),
        'V' => {
            let value = input.value();
            match String::from_utf8(value) {
                Ok(text) if input.flag() => json!(text),
                Ok(text) => json!({ "blob": base64(text.as_bytes()) }),
                Err(e) => json!({ "blob": base64(e.as_bytes()) }),
            }
        }
        'H' => {
            let n = input.below(4);
            match input.byte() % 4 {
                0 => {
                    let mut map = Map::new();
                    for _ in 0..n {
                        let value = if input.flag() {
                            json!([arg(input, 'V', depth), arg(input, 'V', depth)])
                        } else {
                            arg(input, 'V', depth)
                        };
                        map.insert(input.name(), value);
                    }
                    Value::Object(map)
                }
                1 => arg(input, 'A', depth),
                _ => Value::Array(
                    (0..n)
                        .map(|_| json!([arg(input, 'N', depth), arg(input, 'V', depth)]))
                        .collect(),
                ),
            }
        }
        'S' => json!(input.pick(&[200, 404, 503, 599, 100, 0, 600, -1, i64::MAX])),
        'C' => json!(input.pick(&["backend", "auth", "nope", ""])),
        'P' => match input.byte() % 4 {
            0 => json!(input.text(16)),
            1 => json!("/x?y=%20"),
            _ => json!("/"),
        },
        'T' => json!(input.pick(&[100, 1, 600_000, 0, 600_001, -5])),
        'O' if depth < 3 => ops(input, depth + 1),
        'O' => json!([]),
        'K' => match input.byte() % 4 {
            0 => json!(input.text(8)),
            _ => json!(input.pick(&["a", "b", "request.path", ""])),
        },
        'J' => match input.byte() % 3 {
            0 => json!(input.text(32)),
            _ => json!(String::from_utf8_lossy(&input.value())),
        },
        'I' => json!(input.pick(&[0, 1, -1, 7, i64::MIN, i64::MAX, 1 << 40])),
        'R' => match input.byte() % 4 {
            0 => json!(input.text(16)),
            1 => json!(["request", input.pick(&["path", "size", "time", "nope"])]),
            2 => json!([]),
            _ => json!(input.pick(&[
                "request.path",
                "response.code",
                "source.port",
                "xds.route_name",
                "plugin_name",
                "a.b",
                "",
            ])),
        },
        'M' => json!(input.pick(&["GET", "POST", "", "G T"])),
        _ => match input.byte() % 10 {
            0 => Value::Null,
            1 => json!(input.flag()),
            2 => json!(input.u32()),
            3 => json!(-0.5),
            4 => json!([1, "two", null]),
            5 => json!({ "k": "v", "n": [1, 2] }),
            6 if depth < 3 => ops(input, depth + 1),
            7 => arg(input, 'V', depth),
            8 => arg(input, 'N', depth),
            _ => json!(input.text(8)),
        },
    }
}

/// Standard base64, for blobs in the op program (serde_json has no bytes).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// bytes: arbitrary header and body bytes through scripts that echo and transform them
// ---------------------------------------------------------------------------------------------

const ECHO_SCRIPT: &str = include_str!("../scripts/echo.rhai");
const TRANSFORM_SCRIPT: &str = include_str!("../scripts/transform.rhai");

/// A byte a header value may hold (`header_check`): tab, space to `~`, obs-text.
fn header_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Header values and a body of arbitrary bytes, echoed (checked byte for byte) or transformed
/// (JSON, encodings, hashes, with round trips checked by the script).
pub fn bytes(data: &[u8]) {
    let mut input = Input::new(data);
    let transform = input.flag();
    let chunk_size = input.chunk_size();
    // What a client can send in a header value: Envoy refuses control characters but tab.
    let values: Vec<Vec<u8>> = (0..input.below(4))
        .map(|_| {
            let mut value = input.bytes(256);
            value.retain(|&b| header_value_byte(b));
            value
        })
        .collect();
    let answer = input.bytes(1024);
    let body = input.rest();

    let script = if transform {
        TRANSFORM_SCRIPT
    } else {
        ECHO_SCRIPT
    };
    let Ok(emulator) = Emulator::with_script(script, json!({})) else {
        panic!("the bytes target's script is refused");
    };
    emulator.add_cluster("backend");
    let mut request = Request::post("/bytes", body.clone());
    request.chunk_size = chunk_size;
    for (i, value) in values.iter().enumerate() {
        request.headers.push((format!("x-in{i}"), value.clone()));
    }
    let mut upstream = Response::ok("u");
    let mut callouts = |_: &Callout| Reply::Answer {
        status: 200,
        headers: Vec::new(),
        body: answer.clone(),
    };
    let outcome = emulator.run_with(&request, &mut upstream, &mut callouts);
    debug(&request, &outcome);
    let errors = outcome.script_errors();
    if transform && !answer.iter().all(|&b| header_value_byte(b)) {
        // The script puts the callout's body (and its JSON) in a header: a control character
        // there is refused, naming the header, and the request gets the error policy's answer.
        assert!(
            errors.len() == 1
                && errors[0].contains("the value of header \"x-callout-")
                && outcome.upstream.is_none(),
            "script errors: {errors:?}, upstream: {:?}",
            outcome.upstream
        );
        return;
    }
    assert!(errors.is_empty(), "script errors: {errors:?}");
    let Some(forwarded) = &outcome.upstream else {
        panic!("the request never reached the upstream: {outcome:?}");
    };
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned().into_bytes();
    if transform {
        // The callout's body, exactly, as a header value.
        let sent = forwarded
            .headers
            .iter()
            .find(|(k, _)| k == "x-callout-body");
        assert_eq!(sent.map(|(_, v)| v), Some(&answer), "callout body bytes");
        if !body.is_empty() {
            if let Ok(text) = std::str::from_utf8(&forwarded.body) {
                if text != String::from_utf8_lossy(&body) {
                    // The script replaced the body with to_json(parse_json(body)).
                    let json: Result<Value, _> = serde_json::from_str(text);
                    assert!(json.is_ok(), "to_json printed invalid JSON: {text:?}");
                }
            }
        }
        return;
    }
    for (i, value) in values.iter().enumerate() {
        let name = format!("x-echo{i}");
        let echoed = forwarded.headers.iter().find(|(k, _)| *k == name);
        assert_eq!(echoed.map(|(_, v)| v), Some(&lossy(value)), "{name}");
    }
    assert_eq!(forwarded.body, body, "request body bytes");
    let mut expected = body.clone();
    expected.push(b'|');
    expected.extend(lossy(&body));
    if body.is_empty() {
        // No body: no body phase, nothing in the context.
        expected = b"|".to_vec();
    }
    assert_eq!(outcome.response.body, expected, "response body");
}

// ---------------------------------------------------------------------------------------------
// hostile_host: the phase driver straight from the proxy-wasm entry points, two streams at
// once, with a host whose every answer comes from the input
// ---------------------------------------------------------------------------------------------

/// What the fake proxy answers comes from the same bytes as the events.
struct Tape {
    data: Vec<u8>,
    pos: usize,
    next_token: u32,
    /// The callouts dispatched and not answered yet: token, and the stream that made it.
    pending: Vec<(u32, usize)>,
    /// The stream whose event is being handled.
    current: usize,
    /// The heap size the host reports (for `limits.max_memory`); `None`: it counts none.
    heap: Option<usize>,
}

impl Tape {
    fn read<T>(&mut self, f: impl FnOnce(&mut Input) -> T) -> T {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let mut input = Input::new(rest);
        let value = f(&mut input);
        self.pos = self.data.len() - input.data.len();
        value
    }
}

/// A proxy that may refuse any call and answers with whatever the input says: header maps,
/// buffers, properties, shared data, metrics, time. Never more buffer bytes than asked for,
/// and callout tokens that are fresh, as Envoy guarantees.
#[derive(Clone)]
struct HostileHost(std::rc::Rc<std::cell::RefCell<Tape>>);

use proxy_rhai::header_map::HeaderMap;
use proxy_rhai::host::{BufferType, Bytes, Host, LogLevel, MapType, MetricType, Status};

const REFUSALS: [Status; 7] = [
    Status::NotFound,
    Status::BadArgument,
    Status::SerializationFailure,
    Status::ParseFailure,
    Status::Empty,
    Status::CasMismatch,
    Status::InternalFailure,
];

impl HostileHost {
    /// `Err` about one call in eight, else `ok`'s value.
    fn answer<T>(&self, ok: impl FnOnce(&mut Input) -> T) -> Result<T, Status> {
        self.0.borrow_mut().read(|input| {
            let b = input.byte();
            if b >= 0xe0 {
                Err(REFUSALS[usize::from(b) % REFUSALS.len()])
            } else {
                Ok(ok(input))
            }
        })
    }
}

impl HostileHost {
    /// A call (callout or Redis) the input may refuse; its token, pending for the current
    /// stream.
    fn dispatch(&self) -> Result<u32, Status> {
        self.answer(|_| ())?;
        let mut tape = self.0.borrow_mut();
        tape.next_token = tape.next_token.wrapping_add(1);
        let token = tape.next_token;
        let stream = tape.current;
        tape.pending.push((token, stream));
        Ok(token)
    }
}

impl Host for HostileHost {
    fn log(&self, _: LogLevel, _: &str) {}

    fn get_map(&self, _: MapType) -> Result<HeaderMap, Status> {
        self.answer(|input| {
            if input.flag() {
                // What the proxy hands over, as it encodes it: the pairs from the input...
                HeaderMap::from_abi(HeaderMap::from_list(&input.headers(6)).to_abi())
            } else {
                // ...or bytes that may not be an encoding at all.
                HeaderMap::from_abi(input.value())
            }
        })
    }

    fn set_map(&self, _: MapType, _: &HeaderMap) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn get_map_value(&self, _: MapType, _: &str) -> Result<Option<Bytes>, Status> {
        self.answer(|input| input.flag().then(|| input.value()))
    }

    fn replace_map_value(&self, _: MapType, _: &str, _: &[u8]) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn remove_map_value(&self, _: MapType, _: &str) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn add_map_value(&self, _: MapType, _: &str, _: &[u8]) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn get_buffer(&self, _: BufferType, _: usize, max: usize) -> Result<Option<Bytes>, Status> {
        self.answer(|input| {
            input.flag().then(|| {
                let mut bytes = input.body();
                bytes.truncate(max);
                bytes
            })
        })
    }

    fn set_buffer(&self, _: BufferType, _: usize, _: usize, _: &[u8]) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn send_http_response(&self, _: u32, _: &[(&str, &[u8])], _: &[u8]) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn resume_http_request(&self) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn resume_http_response(&self) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn dispatch_http_call(
        &self,
        _: &str,
        _: &[(&str, &str)],
        _: &[u8],
        _: std::time::Duration,
    ) -> Result<u32, Status> {
        self.dispatch()
    }

    fn has_redis(&self) -> bool {
        true
    }

    fn redis_init(&self, _: &str, _: &str, _: &str, _: u32) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn redis_call(&self, _: &str, _: &[u8]) -> Result<u32, Status> {
        self.dispatch()
    }

    /// A reply that may be RESP, or any bytes at all.
    fn redis_reply(&self, max_size: usize) -> Result<Option<Bytes>, Status> {
        self.answer(|input| {
            let mut reply = match input.flag() {
                true => format!(":{}\r\n", input.u32()).into_bytes(),
                false => input.value(),
            };
            reply.truncate(max_size);
            Some(reply)
        })
    }

    fn get_property(&self, _: &[&str]) -> Result<Option<Bytes>, Status> {
        self.answer(|input| match input.byte() % 4 {
            0 => None,
            1 => Some(input.u64().to_le_bytes().to_vec()),
            _ => Some(input.value()),
        })
    }

    fn set_property(&self, _: &[&str], _: &[u8]) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn call_foreign_function(&self, _: &str, _: &[u8]) -> Result<Option<Bytes>, Status> {
        self.answer(|input| input.flag().then(|| input.value()))
    }

    fn get_shared_data(&self, _: &str) -> Result<(Option<Bytes>, u32), Status> {
        self.answer(|input| (input.flag().then(|| input.value()), input.u32()))
    }

    fn set_shared_data(&self, _: &str, _: &[u8], _: u32) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn define_metric(&self, _: MetricType, _: &str) -> Result<u32, Status> {
        self.answer(|input| input.pick(&[0, 1, 2, u32::MAX]))
    }

    fn increment_metric(&self, _: u32, _: i64) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn record_metric(&self, _: u32, _: u64) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn get_metric(&self, _: u32) -> Result<u64, Status> {
        self.answer(|input| input.u64())
    }

    fn current_time_nanos(&self) -> Result<u64, Status> {
        self.answer(|input| input.u64())
    }

    fn set_tick_period(&self, _: u32) -> Result<(), Status> {
        self.answer(|_| ())
    }

    fn heap_in_use(&self) -> Option<usize> {
        let mut tape = self.0.borrow_mut();
        let heap = tape.heap?;
        let grow = tape.read(|input| usize::from(input.u16()) << 8);
        tape.heap = Some(heap.saturating_add(grow));
        tape.heap
    }
}

/// Where one stream is, so that events come in an order Envoy can produce: request headers
/// first; then the rest of the request and, at any time (an early upstream answer, or Envoy's
/// own local reply), the response; callout answers while the stream lives; `on_log` last.
#[derive(Default)]
struct Progress {
    request_headers: bool,
    request_done: bool,
    response_headers: bool,
    response_done: bool,
}

/// One or two streams on one plugin, driven event by event through the entry points the wasm
/// build calls (`src/wasm.rs`), against [`HostileHost`].
pub fn hostile_host(data: &[u8]) {
    use proxy_rhai::plugin::Plugin;
    use proxy_rhai::stream::HttpStream;

    let tape = Tape {
        data: data.to_vec(),
        pos: 0,
        next_token: 0,
        pending: Vec::new(),
        current: 0,
        heap: None,
    };
    let host = HostileHost(std::rc::Rc::new(std::cell::RefCell::new(tape)));
    let configuration = host.0.borrow_mut().read(|input| {
        let configuration = configuration(input);
        let heap = input.flag().then(|| usize::from(input.u16()) << 10);
        (configuration, heap)
    });
    host.0.borrow_mut().heap = configuration.1;
    let Ok(plugin) = Plugin::configure(host.clone(), configuration.0.to_string().as_bytes()) else {
        return;
    };
    let plugin = std::rc::Rc::new(plugin);
    let mut streams: [Option<(HttpStream<HostileHost>, Progress)>; 2] = [None, None];
    for _ in 0..64 {
        let (event, which, flag, size) = host.0.borrow_mut().read(|input| {
            let size = match input.byte() % 4 {
                0 => usize::from(input.byte()),
                1 => usize::from(input.u16()),
                2 => input.u32() as usize,
                _ => 0,
            };
            (input.byte(), input.below(2), input.flag(), size)
        });
        if host.0.borrow().pos >= data.len() {
            break;
        }
        host.0.borrow_mut().current = which;
        let slot = &mut streams[which];
        let (stream, progress) =
            slot.get_or_insert_with(|| (HttpStream::new(plugin.clone()), Progress::default()));
        match event % 8 {
            _ if !progress.request_headers => {
                progress.request_headers = true;
                progress.request_done = flag;
                stream.on_request_headers(flag);
            }
            0 | 1 if !progress.request_done => {
                progress.request_done = flag;
                stream.on_request_body(size, flag);
            }
            2 if !progress.request_done => {
                progress.request_done = true;
                stream.on_request_trailers();
            }
            3 if !progress.response_headers => {
                progress.response_headers = true;
                progress.response_done = flag;
                stream.on_response_headers(flag);
            }
            4 if progress.response_headers && !progress.response_done => {
                progress.response_done = flag;
                stream.on_response_body(size, flag);
            }
            5 if progress.response_headers && !progress.response_done => {
                progress.response_done = true;
                stream.on_response_trailers();
            }
            6 => {
                // A callout answer: usually one of this stream's in flight, sometimes an
                // unknown token.
                let token = {
                    let mut tape = host.0.borrow_mut();
                    let mine: Vec<usize> = (0..tape.pending.len())
                        .filter(|i| tape.pending[*i].1 == which)
                        .collect();
                    if !mine.is_empty() && !flag {
                        tape.pending.remove(mine[size % mine.len()]).0
                    } else {
                        size as u32
                    }
                };
                let num_headers = if flag { 0 } else { size % 16 };
                stream.on_http_call_response(token, num_headers, size);
                // The same token as a Redis reply: either kind may be the one in flight.
                stream.on_redis_call_response(token, u32::from(flag), size);
            }
            7 if flag => plugin.on_tick(),
            7 => {
                // The stream ends (completed or reset): on_log, then the context goes away
                // and Envoy cancels its callouts still in flight.
                stream.on_log();
                *slot = None;
                host.0.borrow_mut().pending.retain(|(_, s)| *s != which);
            }
            _ => {}
        }
    }
}
