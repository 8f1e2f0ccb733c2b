//! The Rhai test API and its runner. The guide below is also `api-docs/testing.md`.
//!
#![doc = include_str!("testing.md")]

pub mod case;
pub mod spec;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rhai::{
    Array, Blob, CallFnOptions, Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map,
    NativeCallContext, Position, Scope,
};
use serde_json::Value;

use crate::config::ScriptEngine;
use crate::emulator::{header, Callout, Emulator, Forwarded, Metadata, Outcome, Reply, Response};

/// The result of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    /// The test function's name.
    pub name: String,
    /// Why it failed (with the line of the test file); `None` when it passed.
    pub failure: Option<String>,
    /// What the test printed (`print`, `debug`).
    pub output: Vec<String>,
}

/// The results of one test file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileReport {
    /// The test file.
    pub path: PathBuf,
    /// Its tests, in the order they are defined.
    pub tests: Vec<TestResult>,
    /// The file itself could not be read or compiled (counts as one failure).
    pub error: Option<String>,
}

impl FileReport {
    /// How many tests passed.
    pub fn passed(&self) -> usize {
        self.tests.iter().filter(|t| t.failure.is_none()).count()
    }

    /// How many tests failed, a file that doesn't load counting as one.
    pub fn failed(&self) -> usize {
        self.tests.iter().filter(|t| t.failure.is_some()).count()
            + usize::from(self.error.is_some())
    }
}

/// What every plugin the tests of a file load is given, besides their own settings.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Redis clusters, `(cluster, "host:port")` (`proxy-rhai test --redis CLUSTER=HOST:PORT`).
    pub redis: Vec<(String, String)>,
    /// The engine scripts run on when a test's settings don't choose one.
    pub engine: Option<ScriptEngine>,
}

/// Runs the tests of a test file whose name contains `filter` (all of them when `None`).
pub fn run_file(path: &Path, filter: Option<&str>) -> FileReport {
    run_file_with(path, filter, &Setup::default())
}

/// [`run_file`], the plugins the tests load given `setup`.
pub fn run_file_with(path: &Path, filter: Option<&str>, setup: &Setup) -> FileReport {
    match std::fs::read_to_string(path) {
        Ok(source) => run_source_with(path, &source, filter, setup),
        Err(e) => FileReport {
            path: path.to_path_buf(),
            tests: Vec::new(),
            error: Some(format!("cannot read {}: {e}", path.display())),
        },
    }
}

/// Stack of the thread tests run on: Rhai evaluates by recursion, and a native debug build
/// needs far more stack per script call than the wasm plugin (whose stack is 8 MiB).
pub const STACK_SIZE: usize = 256 << 20;

/// Runs tests from `source`, as if it were the test file `path` (scripts are found relative
/// to its folder).
///
/// The tests run on a thread of their own, with a stack deep enough for every limit a plugin
/// configuration allows.
pub fn run_source(path: &Path, source: &str, filter: Option<&str>) -> FileReport {
    run_source_with(path, source, filter, &Setup::default())
}

/// [`run_source`], the plugins the tests load given `setup`.
pub fn run_source_with(
    path: &Path,
    source: &str,
    filter: Option<&str>,
    setup: &Setup,
) -> FileReport {
    let (path, source) = (path.to_path_buf(), source.to_string());
    let filter = filter.map(str::to_string);
    let on_thread = path.clone();
    let setup = setup.clone();
    let run = std::thread::Builder::new()
        .name("rhai-tests".into())
        .stack_size(STACK_SIZE)
        .spawn(move || run_here(&on_thread, &source, filter.as_deref(), setup));
    let failed = |why: String| FileReport {
        path: path.clone(),
        tests: Vec::new(),
        error: Some(why),
    };
    match run {
        Ok(thread) => thread
            .join()
            .unwrap_or_else(|_| failed("the test runner crashed".into())),
        Err(e) => failed(format!("cannot start the test runner: {e}")),
    }
}

fn run_here(path: &Path, source: &str, filter: Option<&str>, setup: Setup) -> FileReport {
    let mut report = FileReport {
        path: path.to_path_buf(),
        tests: Vec::new(),
        error: None,
    };
    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let session = Rc::new(Session {
        base,
        setup,
        ..Session::default()
    });
    let mut engine = test_engine(&session);
    let ast = match engine.compile(source) {
        Ok(ast) => ast,
        Err(e) => {
            report.error = Some(format!("does not compile: {e}"));
            return report;
        }
    };
    match top_level_constants(&engine, &ast) {
        Ok(constants) if !constants.is_empty() => {
            // (Rhai marks `on_var` "volatile", not deprecated.)
            #[allow(deprecated)]
            engine.on_var(move |name, index, _| {
                Ok(if index > 0 {
                    None
                } else {
                    constants.get(name).cloned()
                })
            });
        }
        Ok(_) => {}
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    }
    let mut tests: Vec<(Option<(usize, usize)>, String)> = ast
        .iter_functions()
        .filter(|f| f.name.starts_with("test_") && f.params.is_empty())
        .filter(|f| filter.is_none_or(|word| f.name.contains(word)))
        .map(|f| {
            (
                crate::check::definition_position(source, f.name),
                f.name.to_string(),
            )
        })
        .collect();
    tests.sort();
    for (_, name) in tests {
        session.reset();
        let result = engine.call_fn_with_options::<Dynamic>(
            CallFnOptions::new().eval_ast(true).rewind_scope(true),
            &mut Scope::new(),
            &ast,
            &name,
            (),
        );
        let failure = match result {
            Ok(_) => session.unchecked(),
            Err(e) => Some(describe(&e, &name)),
        };
        report.tests.push(TestResult {
            name,
            failure,
            output: session.output.take(),
        });
    }
    report
}

/// The `*.test.rhai` files at `paths`: files as given, folders searched recursively (hidden
/// folders and `target` skipped), in name order.
pub fn find_test_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut found).map_err(|e| format!("cannot search {}: {e}", path.display()))?;
        } else if path.is_file() {
            found.push(path.clone());
        } else {
            return Err(format!("{}: no such file or folder", path.display()));
        }
    }
    Ok(found)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                walk(&path, found)?;
            }
        } else if name.ends_with(".test.rhai") {
            found.push(path);
        }
    }
    Ok(())
}

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// What the test being run has done so far.
#[derive(Default)]
struct Session {
    /// Scripts are found relative to this folder.
    base: PathBuf,
    /// The requests the test sent.
    exchanges: RefCell<Vec<Exchange>>,
    /// What the test printed.
    output: RefCell<Vec<String>>,
    /// What every plugin loaded is given.
    setup: Setup,
}

impl Session {
    fn reset(&self) {
        self.exchanges.borrow_mut().clear();
        self.output.borrow_mut().clear();
    }

    /// A failure for the first request whose script failed without the test looking.
    fn unchecked(&self) -> Option<String> {
        self.exchanges.borrow().iter().find_map(|x| {
            let x = &x.0;
            let line = line_of(x.sent_at);
            if let (Some(error), false) = (x.outcome.script_errors().first(), x.errors_seen.get()) {
                return Some(format!(
                    "{line}the script failed on the request sent here: {error}\n(if that is \
                     expected, say so: r.assert_error(\"…\"))"
                ));
            }
            match (&x.outcome.stalled, x.stall_seen.get()) {
                (Some(why), false) => Some(format!(
                    "{line}the request sent here stalled: {why}\n(if that is expected, say so: \
                     r.assert_stalled())"
                )),
                _ => None,
            }
        })
    }
}

fn line_of(pos: Position) -> String {
    pos.line()
        .map(|l| format!("line {l}: "))
        .unwrap_or_default()
}

/// An assertion that did not hold, thrown as the value of a runtime error.
#[derive(Debug, Clone)]
struct Failure {
    assertion: String,
    message: String,
}

fn fail<T>(assertion: impl Into<String>, message: impl Into<String>) -> RhaiResult<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(Failure {
            assertion: assertion.into(),
            message: message.into(),
        }),
        Position::NONE,
    )))
}

fn expect(
    assertion: impl Into<String>,
    holds: bool,
    expected: impl Display,
    actual: impl Display,
) -> RhaiResult<()> {
    if holds {
        Ok(())
    } else {
        fail(assertion, format!("expected {expected}, actual {actual}"))
    }
}

/// A test's error in one line: the line of the test file, the assertion, expected and
/// actual, and the helper functions it went through.
fn describe(error: &EvalAltResult, test: &str) -> String {
    let mut inner = error;
    let mut through = Vec::new();
    while let EvalAltResult::ErrorInFunctionCall(name, _, err, pos) = inner {
        if name != test && !pos.is_none() {
            through.push(format!(
                "{name}() called at {}",
                line_of(*pos).trim_end_matches(": ")
            ));
        }
        inner = err;
    }
    let at = line_of(inner.position());
    let mut text = match inner {
        EvalAltResult::ErrorRuntime(value, _) => match value.read_lock::<Failure>() {
            Some(f) => format!("{at}{}: {}", f.assertion, f.message),
            None => format!("{at}{value}"),
        },
        other => {
            let text = other.to_string();
            let place = format!(" ({})", other.position());
            format!("{at}{}", text.strip_suffix(&place).unwrap_or(&text))
        }
    };
    if !through.is_empty() {
        through.reverse();
        text.push_str(&format!(" (in {})", through.join(", in ")));
    }
    text
}

/// A value as an assertion message shows it: strings quoted, `()` as is.
fn show(value: &Dynamic) -> String {
    match value.read_lock::<ImmutableString>() {
        Some(s) => format!("{:?}", s.as_str()),
        None if value.is_unit() => "()".into(),
        None => value.to_string(),
    }
}

fn show_opt(value: Option<&str>) -> String {
    value.map_or("()".into(), |v| format!("{v:?}"))
}

/// A header assertion: `value` `()` wants the header absent.
fn expect_header(assertion: String, value: &Dynamic, got: Option<String>) -> RhaiResult<()> {
    let wanted = if value.is_unit() {
        None
    } else {
        Some(text_of(&assertion, value)?)
    };
    expect(
        assertion,
        got == wanted,
        show_opt(wanted.as_deref()),
        show_opt(got.as_deref()),
    )
}

/// The text of a string or blob argument.
fn text_of(f: &str, value: &Dynamic) -> RhaiResult<String> {
    if let Some(s) = value.read_lock::<ImmutableString>() {
        return Ok(s.to_string());
    }
    if let Some(b) = value.read_lock::<Blob>() {
        return Ok(String::from_utf8_lossy(&b).into_owned());
    }
    Err(format!(
        "{f}: expected a string or a blob, got {}",
        value.type_name()
    )
    .into())
}

fn to_json(f: &str, value: &Dynamic) -> RhaiResult<Value> {
    serde_json::to_value(value).map_err(|e| format!("{f}: {e}").into())
}

fn to_rhai(value: &Value) -> Dynamic {
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}

/// How a callout is answered: given, or computed by a script function.
#[derive(Clone)]
enum Answer {
    Given(Reply),
    Computed(FnPtr),
}

impl Answer {
    fn of(f: &str, value: &Dynamic) -> RhaiResult<Answer> {
        if let Some(fp) = value.read_lock::<FnPtr>() {
            return Ok(Answer::Computed(fp.clone()));
        }
        spec::reply(&to_json(f, value)?)
            .map(Answer::Given)
            .map_err(|e| format!("{f}: {e}").into())
    }
}

/// A rule answering the calls to a cluster (and path).
struct Rule {
    cluster: String,
    path: Option<String>,
    /// Always the same answer, or these answers in order.
    answers: VecDeque<Answer>,
    repeat: bool,
}

impl Rule {
    fn matches(&self, call: &Callout, path: &str) -> bool {
        self.cluster == call.cluster
            && self
                .path
                .as_deref()
                .is_none_or(|p| spec::path_matches(p, path))
    }
}

/// The callout answers a test gave.
#[derive(Default)]
struct Answers {
    rules: Vec<Rule>,
    in_order: VecDeque<Answer>,
}

impl Answers {
    fn next(&mut self, call: &Callout) -> Option<Answer> {
        let path = header(&call.headers, ":path").unwrap_or_default();
        for with_path in [true, false] {
            for rule in self.rules.iter_mut().rev() {
                if rule.path.is_some() != with_path || !rule.matches(call, &path) {
                    continue;
                }
                let answer = if rule.repeat {
                    rule.answers.front().cloned()
                } else {
                    rule.answers.pop_front()
                };
                if answer.is_some() {
                    return answer;
                }
            }
        }
        self.in_order.pop_front()
    }
}

/// What the upstream answers: given, or computed by a script function.
#[derive(Clone)]
enum Upstream {
    Given(Response),
    Computed(FnPtr),
}

/// A plugin loaded by a test.
#[derive(Clone)]
struct TestPlugin(Rc<PluginData>);

struct PluginData {
    emulator: Emulator,
    upstream: RefCell<Upstream>,
    answers: RefCell<Answers>,
    /// What `p.metadata()`, `p.route_metadata()` and `p.cluster_metadata()` gave, in that
    /// order: every request carries it (its own namespaces first).
    metadata: RefCell<[Metadata; 3]>,
    /// The connection's TLS for requests that don't give their own (`p.tls(…)`; null: plain).
    tls: RefCell<Value>,
}

/// A request sent by a test, and all it did.
#[derive(Clone)]
struct Exchange(Rc<ExchangeData>);

struct ExchangeData {
    outcome: Outcome,
    json: Value,
    sent_at: Position,
    errors_seen: Cell<bool>,
    stall_seen: Cell<bool>,
}

impl Exchange {
    fn field(&self, name: &str) -> Dynamic {
        to_rhai(&self.0.json[name])
    }

    fn response_field(&self, name: &str) -> Dynamic {
        to_rhai(&self.0.json["response"][name])
    }

    fn upstream_header(&self, name: &str) -> Option<String> {
        self.0.outcome.upstream_header(name)
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.0.outcome.response_header(name)
    }

    /// Fails unless the request reached the upstream; says what happened instead.
    fn forwarded(&self, assertion: &str) -> RhaiResult<&Forwarded> {
        match &self.0.outcome.upstream {
            Some(u) => Ok(u),
            None => fail(
                assertion,
                format!("the request never reached the upstream ({})", self.fate()),
            ),
        }
    }

    /// What the client got, in a few words.
    fn fate(&self) -> String {
        let o = &self.0.outcome;
        if let Some(why) = &o.stalled {
            return format!("stalled: {why}");
        }
        let r = &o.response;
        let body = String::from_utf8_lossy(&r.body);
        let kind = if r.local {
            "local response"
        } else {
            "response"
        };
        let mut text = format!("{kind} {} {body:?}", r.status);
        if let Some(e) = o.script_errors().first() {
            text.push_str(&format!("; {e}"));
        }
        text
    }

    fn logs(&self) -> Vec<(String, String)> {
        self.0
            .outcome
            .log
            .iter()
            .map(|l| (spec::level_name(l.level).to_string(), l.message.clone()))
            .collect()
    }

    fn assert_log(&self, assertion: String, level: Option<&str>, text: &str) -> RhaiResult<()> {
        let logs = self.logs();
        let found = logs
            .iter()
            .any(|(l, m)| level.is_none_or(|level| level == l) && m.contains(text));
        let expected = match level {
            Some(level) => format!("a {level} log line containing {text:?}"),
            None => format!("a log line containing {text:?}"),
        };
        expect(assertion, found, expected, show_log(&logs))
    }

    fn assert_callout(&self, index: i64, expected: &Map) -> RhaiResult<()> {
        let assertion = format!("assert_callout({index})");
        let calls = &self.0.outcome.callouts;
        let Some(call) = usize::try_from(index).ok().and_then(|i| calls.get(i)) else {
            return fail(
                assertion,
                format!(
                    "expected a callout #{index}, actual {} callout(s)",
                    calls.len()
                ),
            );
        };
        let actual = spec::callout(call);
        for (key, want) in expected {
            let key = key.as_str();
            match key {
                "headers" => {
                    let Some(want) = want.read_lock::<Map>() else {
                        return Err(format!("{assertion}: headers must be a map").into());
                    };
                    for (name, value) in want.iter() {
                        let got = header(&call.headers, name);
                        let wanted = if value.is_unit() {
                            None
                        } else {
                            Some(text_of(&assertion, value)?)
                        };
                        expect(
                            format!("{assertion}: header {name:?}"),
                            got == wanted,
                            show_opt(wanted.as_deref()),
                            show_opt(got.as_deref()),
                        )?;
                    }
                }
                "cluster" | "method" | "path" | "authority" | "body" => {
                    let wanted = text_of(&assertion, want)?;
                    let got = actual[key].as_str().unwrap_or_default();
                    expect(
                        format!("{assertion}: {key}"),
                        got == wanted,
                        format!("{wanted:?}"),
                        format!("{got:?}"),
                    )?;
                }
                "timeout_ms" => {
                    let got = actual[key].as_i64().unwrap_or(-1);
                    expect(
                        format!("{assertion}: timeout_ms"),
                        want.as_int().ok() == Some(got),
                        show(want),
                        got,
                    )?;
                }
                other => {
                    return Err(format!(
                        "{assertion}: unknown field `{other}` (known: cluster, method, path, \
                         authority, headers, body, timeout_ms)"
                    )
                    .into())
                }
            }
        }
        Ok(())
    }
}

fn show_log(logs: &[(String, String)]) -> String {
    if logs.is_empty() {
        return "no log line".into();
    }
    let lines: Vec<String> = logs.iter().map(|(l, m)| format!("{l}: {m:?}")).collect();
    format!("[{}]", lines.join(", "))
}

/// Reads the script `path` (relative to the test file) and configures a plugin with it.
fn configure(
    session: &Session,
    path: &str,
    config: &Dynamic,
    settings: &Map,
) -> Result<Emulator, String> {
    let file = session.base.join(path);
    let script = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut configuration = serde_json::Map::new();
    for (key, value) in settings {
        if key == "script" || key == "config" {
            return Err(format!(
                "settings.{key}: give the script as the path and the config as the second argument"
            ));
        }
        let value = serde_json::to_value(value).map_err(|e| format!("settings.{key}: {e}"))?;
        configuration.insert(key.to_string(), value);
    }
    if let Some(engine) = session.setup.engine {
        configuration
            .entry("engine")
            .or_insert_with(|| engine.name().into());
    }
    configuration.insert("script".into(), script.into());
    let config = serde_json::to_value(config).map_err(|e| format!("config: {e}"))?;
    configuration.insert("config".into(), config);
    let configuration = Value::Object(configuration).to_string();
    let start = crate::emulator::START_TIME_MS;
    #[cfg(not(target_arch = "wasm32"))]
    return Emulator::with_redis(&configuration, start, &session.setup.redis);
    #[cfg(target_arch = "wasm32")]
    Emulator::new_at(&configuration, start)
}

fn load(session: &Session, path: &str, config: &Dynamic, settings: &Map) -> RhaiResult<TestPlugin> {
    match configure(session, path, config, settings) {
        Ok(emulator) => Ok(TestPlugin(Rc::new(PluginData {
            emulator,
            upstream: RefCell::new(Upstream::Given(Response::new(200, Vec::new()))),
            answers: RefCell::default(),
            metadata: RefCell::default(),
            tls: RefCell::new(Value::Null),
        }))),
        Err(e) => fail(format!("plugin({path:?})"), e),
    }
}

fn load_error(session: &Session, path: &str, config: &Dynamic, settings: &Map) -> Dynamic {
    match configure(session, path, config, settings) {
        Ok(_) => Dynamic::UNIT,
        Err(e) => e.into(),
    }
}

impl TestPlugin {
    fn rule(&self, cluster: &str, path: Option<&str>, answers: VecDeque<Answer>, repeat: bool) {
        self.0.emulator.add_cluster(cluster);
        self.0.answers.borrow_mut().rules.push(Rule {
            cluster: cluster.to_string(),
            path: path.map(str::to_string),
            answers,
            repeat,
        });
    }

    /// Sends `request` through the plugin; `response` overrides the plugin's upstream.
    fn send(
        &self,
        ctx: &NativeCallContext,
        session: &Session,
        request: &Dynamic,
        response: Option<&Dynamic>,
    ) -> RhaiResult<Exchange> {
        let mut request = match request.read_lock::<ImmutableString>() {
            Some(path) => serde_json::json!({ "path": path.as_str() }),
            None => to_json("send()", request)?,
        };
        if let Value::Object(fields) = &mut request {
            if !fields.contains_key("tls") {
                fields.insert("tls".into(), self.0.tls.borrow().clone());
            }
        }
        let mut request = spec::request(&request).map_err(|e| format!("send(): {e}"))?;
        let given = self.0.metadata.borrow();
        for (kind, into) in given.iter().zip([
            &mut request.metadata,
            &mut request.route_metadata,
            &mut request.cluster_metadata,
        ]) {
            for (namespace, fields) in kind {
                into.entry(namespace.clone())
                    .or_insert_with(|| fields.clone());
            }
        }
        drop(given);
        let upstream = match response {
            Some(r) => Upstream::Given(
                spec::response(&to_json("send()", r)?).map_err(|e| format!("send(): {e}"))?,
            ),
            None => self.0.upstream.borrow().clone(),
        };
        let failure: RefCell<Option<Box<EvalAltResult>>> = RefCell::new(None);
        let keep = |e: Box<EvalAltResult>| {
            failure.borrow_mut().get_or_insert(e);
        };
        let mut answer_upstream = |forwarded: &Forwarded| match &upstream {
            Upstream::Given(r) => r.clone(),
            Upstream::Computed(f) => {
                let computed = f
                    .call_within_context::<Dynamic>(ctx, (to_rhai(&spec::forwarded(forwarded)),))
                    .and_then(|v| match v.read_lock::<ImmutableString>() {
                        Some(body) => Ok(Response::ok(body.as_bytes())),
                        None => spec::response(&to_json("upstream", &v)?)
                            .map_err(|e| format!("upstream: {e}").into()),
                    });
                computed.unwrap_or_else(|e| {
                    keep(e);
                    Response::new(500, Vec::new())
                })
            }
        };
        let mut answer_callout = |call: &Callout| {
            let answer = self.0.answers.borrow_mut().next(call);
            match answer {
                None => Reply::NoAnswer,
                Some(Answer::Given(reply)) => reply,
                Some(Answer::Computed(f)) => f
                    .call_within_context::<Dynamic>(ctx, (to_rhai(&spec::callout(call)),))
                    .and_then(|v| Answer::of("callout answer", &v))
                    .map(|a| match a {
                        Answer::Given(reply) => reply,
                        Answer::Computed(_) => Reply::NoAnswer,
                    })
                    .unwrap_or_else(|e| {
                        keep(e);
                        Reply::NoAnswer
                    }),
            }
        };
        let outcome = self
            .0
            .emulator
            .run_with(&request, &mut answer_upstream, &mut answer_callout);
        if let Some(e) = failure.take() {
            return Err(e);
        }
        let exchange = Exchange(Rc::new(ExchangeData {
            json: spec::outcome(&outcome),
            outcome,
            sent_at: ctx.call_position(),
            errors_seen: Cell::new(false),
            stall_seen: Cell::new(false),
        }));
        session.exchanges.borrow_mut().push(exchange.clone());
        Ok(exchange)
    }
}

/// The engine test files run in: the standard library and the test API.
fn test_engine(session: &Rc<Session>) -> Engine {
    // Rhai's functions as the plugin's scripts get them.
    let mut engine = crate::sandbox::std_engine();
    engine
        .set_max_operations(100_000_000)
        .set_max_expr_depths(256, 256);
    let s = session.clone();
    engine.on_print(move |text| s.output.borrow_mut().push(text.to_string()));
    let s = session.clone();
    engine.on_debug(move |text, _, pos| {
        s.output
            .borrow_mut()
            .push(format!("{}{text}", line_of(pos)))
    });
    register_general(&mut engine);
    register_plugin(&mut engine, session);
    register_exchange(&mut engine);
    // The plugin's own pure functions, so a test makes its fixtures as a script would: their
    // clock is the emulator's start (a plugin's own clock is `p.now_ms()`).
    let host = crate::emulator::EmulatorHost::default();
    host.0.borrow_mut().now_nanos = crate::emulator::START_TIME_MS * 1_000_000;
    let limits = crate::config::Limits::default();
    let api = Rc::new(crate::bindings::Api::new(host, &limits, Rc::default()));
    crate::bindings::register_builtins(&mut crate::bindings::Registrar {
        engine: &mut engine,
        api,
        docs: None,
    });
    engine
}

/// The top-level constants of a test file, which its functions see as a script's do.
fn top_level_constants(engine: &Engine, ast: &rhai::AST) -> Result<Map, String> {
    let mut scope = Scope::new();
    engine
        .run_ast_with_scope(&mut scope, ast)
        .map_err(|e| format!("its top level fails: {e}"))?;
    Ok(scope
        .iter()
        .filter(|(_, constant, _)| *constant)
        .map(|(name, _, value)| (name.into(), value))
        .collect())
}

fn register_general(engine: &mut Engine) {
    engine.register_fn("assert", |holds: bool| {
        expect("assert", holds, "true", "false")
    });
    engine.register_fn("assert", |holds: bool, message: &str| {
        if holds {
            Ok(())
        } else {
            fail("assert", message)
        }
    });
    engine.register_fn(
        "assert_eq",
        |ctx: NativeCallContext, actual: Dynamic, expected: Dynamic| {
            let equal = ctx
                .call_native_fn::<bool>("==", (actual.clone(), expected.clone()))
                .unwrap_or(false);
            expect("assert_eq", equal, show(&expected), show(&actual))
        },
    );
    engine.register_fn(
        "assert_ne",
        |ctx: NativeCallContext, actual: Dynamic, other: Dynamic| {
            let equal = ctx
                .call_native_fn::<bool>("==", (actual.clone(), other.clone()))
                .unwrap_or(false);
            expect(
                "assert_ne",
                !equal,
                format!("anything but {}", show(&other)),
                show(&actual),
            )
        },
    );
    engine.register_fn(
        "assert_contains",
        |ctx: NativeCallContext, container: Dynamic, item: Dynamic| {
            let found = ctx
                .call_fn::<bool>("contains", (container.clone(), item.clone()))
                .unwrap_or(false);
            expect(
                "assert_contains",
                found,
                format!("something containing {}", show(&item)),
                show(&container),
            )
        },
    );
    engine.register_fn("fail", |message: &str| fail::<()>("fail", message));
    engine.register_type_with_name::<Failure>("Failure");
}

fn register_plugin(engine: &mut Engine, session: &Rc<Session>) {
    engine.register_type_with_name::<TestPlugin>("Plugin");
    let none = Map::new();
    let s = session.clone();
    let n = none.clone();
    engine.register_fn("plugin", move |path: &str| {
        load(&s, path, &Dynamic::UNIT, &n)
    });
    let s = session.clone();
    let n = none.clone();
    engine.register_fn("plugin", move |path: &str, config: Dynamic| {
        load(&s, path, &config, &n)
    });
    let s = session.clone();
    engine.register_fn(
        "plugin",
        move |path: &str, config: Dynamic, settings: Map| load(&s, path, &config, &settings),
    );
    let s = session.clone();
    engine.register_fn("plugin_error", move |path: &str, config: Dynamic| {
        load_error(&s, path, &config, &none)
    });
    let s = session.clone();
    engine.register_fn(
        "plugin_error",
        move |path: &str, config: Dynamic, settings: Map| load_error(&s, path, &config, &settings),
    );
    // The clock, and what the plugin keeps across requests.
    engine.register_fn(
        "set_time_ms",
        |p: &mut TestPlugin, now: i64| -> RhaiResult<()> {
            let now =
                u64::try_from(now).map_err(|_| format!("set_time_ms(): {now} is before 1970"))?;
            p.0.emulator.set_time_ms(now);
            Ok(())
        },
    );
    engine.register_fn(
        "advance_ms",
        |p: &mut TestPlugin, ms: i64| -> RhaiResult<()> {
            let ms =
                u64::try_from(ms).map_err(|_| format!("advance_ms(): {ms} goes back in time"))?;
            p.0.emulator.advance_ms(ms);
            Ok(())
        },
    );
    engine.register_fn("now_ms", |p: &mut TestPlugin| {
        i64::try_from(p.0.emulator.now_ms()).unwrap_or(i64::MAX)
    });
    engine.register_fn("metric", |p: &mut TestPlugin, name: &str| -> Dynamic {
        match p.0.emulator.metric(name) {
            None => Dynamic::UNIT,
            Some(m) if m.kind == crate::host::MetricType::Histogram => m
                .recorded
                .iter()
                .map(|v| Dynamic::from(i64::try_from(*v).unwrap_or(i64::MAX)))
                .collect::<Array>()
                .into(),
            Some(m) => Dynamic::from(i64::try_from(m.value).unwrap_or(i64::MAX)),
        }
    });
    engine.register_fn("shared_data", |p: &mut TestPlugin, key: &str| -> Dynamic {
        p.0.emulator
            .shared(key)
            .map_or(Dynamic::UNIT, |(value, _)| {
                String::from_utf8_lossy(&value).into_owned().into()
            })
    });
    engine.register_get("logs", |p: &mut TestPlugin| -> Array {
        p.0.emulator
            .log()
            .iter()
            .map(|l| {
                to_rhai(
                    &serde_json::json!({"level": spec::level_name(l.level), "message": l.message}),
                )
            })
            .collect()
    });

    // Callouts.
    engine.register_fn(
        "answer",
        |p: &mut TestPlugin, cluster: &str, answer: Dynamic| -> RhaiResult<()> {
            p.rule(
                cluster,
                None,
                [Answer::of("answer()", &answer)?].into(),
                true,
            );
            Ok(())
        },
    );
    engine.register_fn(
        "answer",
        |p: &mut TestPlugin, cluster: &str, path: &str, answer: Dynamic| -> RhaiResult<()> {
            p.rule(
                cluster,
                Some(path),
                [Answer::of("answer()", &answer)?].into(),
                true,
            );
            Ok(())
        },
    );
    fn in_order(answers: &Array) -> RhaiResult<VecDeque<Answer>> {
        answers.iter().map(|a| Answer::of("answers()", a)).collect()
    }
    engine.register_fn(
        "answers",
        |p: &mut TestPlugin, answers: Array| -> RhaiResult<()> {
            let answers = in_order(&answers)?;
            p.0.answers.borrow_mut().in_order.extend(answers);
            Ok(())
        },
    );
    engine.register_fn(
        "answers",
        |p: &mut TestPlugin, cluster: &str, answers: Array| -> RhaiResult<()> {
            p.rule(cluster, None, in_order(&answers)?, false);
            Ok(())
        },
    );
    engine.register_fn(
        "answers",
        |p: &mut TestPlugin, cluster: &str, path: &str, answers: Array| -> RhaiResult<()> {
            p.rule(cluster, Some(path), in_order(&answers)?, false);
            Ok(())
        },
    );
    // No socket in a wasm build (the playground's): Redis is native only.
    #[cfg(not(target_arch = "wasm32"))]
    engine.register_fn(
        "redis",
        |p: &mut TestPlugin, cluster: &str, address: &str| p.0.emulator.add_redis(cluster, address),
    );
    engine.register_fn("add_cluster", |p: &mut TestPlugin, cluster: &str| {
        p.0.emulator.add_cluster(cluster)
    });
    engine.register_fn(
        "tls",
        |p: &mut TestPlugin, tls: Dynamic| -> RhaiResult<()> {
            let tls = to_json("tls()", &tls)?;
            spec::tls(&tls).map_err(|e| format!("tls(): {e}"))?;
            *p.0.tls.borrow_mut() = tls;
            Ok(())
        },
    );

    // What other filters decided, and the route's and the cluster's metadata.
    for (i, name) in ["metadata", "route_metadata", "cluster_metadata"]
        .into_iter()
        .enumerate()
    {
        engine.register_fn(
            name,
            move |p: &mut TestPlugin, namespace: &str, fields: Map| -> RhaiResult<()> {
                let Value::Object(fields) = to_json(name, &fields.into())? else {
                    return Err(format!("{name}(): the namespace's value must be a map").into());
                };
                if let Some(kind) = p.0.metadata.borrow_mut().get_mut(i) {
                    kind.insert(namespace.to_string(), fields);
                }
                Ok(())
            },
        );
    }

    // The upstream and requests.
    engine.register_fn(
        "upstream",
        |p: &mut TestPlugin, response: Dynamic| -> RhaiResult<()> {
            let upstream = match response.read_lock::<FnPtr>() {
                Some(f) => Upstream::Computed(f.clone()),
                None => Upstream::Given(
                    spec::response(&to_json("upstream()", &response)?)
                        .map_err(|e| format!("upstream(): {e}"))?,
                ),
            };
            *p.0.upstream.borrow_mut() = upstream;
            Ok(())
        },
    );
    let s = session.clone();
    engine.register_fn(
        "send",
        move |ctx: NativeCallContext, p: &mut TestPlugin, request: Dynamic| {
            p.send(&ctx, &s, &request, None)
        },
    );
    let s = session.clone();
    engine.register_fn(
        "send",
        move |ctx: NativeCallContext, p: &mut TestPlugin, request: Dynamic, response: Dynamic| {
            p.send(&ctx, &s, &request, Some(&response))
        },
    );
    let s = session.clone();
    engine.register_fn(
        "get",
        move |ctx: NativeCallContext, p: &mut TestPlugin, path: &str| {
            let request = map([("path", path.into())]);
            p.send(&ctx, &s, &request, None)
        },
    );
    let s = session.clone();
    engine.register_fn(
        "get",
        move |ctx: NativeCallContext, p: &mut TestPlugin, path: &str, headers: Dynamic| {
            let request = map([("path", path.into()), ("headers", headers)]);
            p.send(&ctx, &s, &request, None)
        },
    );
    let s = session.clone();
    engine.register_fn(
        "post",
        move |ctx: NativeCallContext, p: &mut TestPlugin, path: &str, body: Dynamic| {
            let request = map([
                ("method", "POST".into()),
                ("path", path.into()),
                ("body", body),
            ]);
            p.send(&ctx, &s, &request, None)
        },
    );
    let s = session.clone();
    engine.register_fn(
        "post",
        move |ctx: NativeCallContext,
              p: &mut TestPlugin,
              path: &str,
              headers: Dynamic,
              body: Dynamic| {
            let request = map([
                ("method", "POST".into()),
                ("path", path.into()),
                ("headers", headers),
                ("body", body),
            ]);
            p.send(&ctx, &s, &request, None)
        },
    );
}

fn map<const N: usize>(fields: [(&str, Dynamic); N]) -> Dynamic {
    let map: Map = fields.into_iter().map(|(k, v)| (k.into(), v)).collect();
    map.into()
}

fn register_exchange(engine: &mut Engine) {
    engine.register_type_with_name::<Exchange>("Exchange");
    // Values.
    engine.register_get("upstream", |x: &mut Exchange| x.field("upstream"));
    engine.register_get("forwarded", |x: &mut Exchange| {
        x.0.outcome.upstream.is_some()
    });
    engine.register_get("response", |x: &mut Exchange| x.field("response"));
    engine.register_get("status", |x: &mut Exchange| x.response_field("status"));
    engine.register_get("headers", |x: &mut Exchange| x.response_field("headers"));
    engine.register_get("body", |x: &mut Exchange| x.response_field("body"));
    engine.register_get("local", |x: &mut Exchange| x.0.outcome.response.local);
    engine.register_get("reset", |x: &mut Exchange| x.0.outcome.response.reset);
    engine.register_get("callouts", |x: &mut Exchange| x.field("callouts"));
    engine.register_get("redis_calls", |x: &mut Exchange| x.field("redis_calls"));
    engine.register_get("logs", |x: &mut Exchange| x.field("log"));
    engine.register_get("trace", |x: &mut Exchange| x.field("trace"));
    engine.register_get("filter_state", |x: &mut Exchange| x.field("filter_state"));
    engine.register_get("route_cache_cleared", |x: &mut Exchange| {
        x.0.outcome.route_cache_cleared
    });
    engine.register_get("errors", |x: &mut Exchange| {
        x.0.errors_seen.set(true);
        x.field("errors")
    });
    engine.register_get("stalled", |x: &mut Exchange| {
        x.0.stall_seen.set(true);
        x.field("stalled")
    });
    engine.register_fn("upstream_header", |x: &mut Exchange, name: &str| {
        x.upstream_header(name).map_or(Dynamic::UNIT, Dynamic::from)
    });
    engine.register_fn("response_header", |x: &mut Exchange, name: &str| {
        x.response_header(name).map_or(Dynamic::UNIT, Dynamic::from)
    });

    // What reached the upstream.
    engine.register_fn("assert_forwarded", |x: &mut Exchange| {
        x.forwarded("assert_forwarded").map(|_| ())
    });
    engine.register_fn("assert_not_forwarded", |x: &mut Exchange| {
        expect(
            "assert_not_forwarded",
            x.0.outcome.upstream.is_none(),
            "the request not to reach the upstream",
            "it did",
        )
    });
    engine.register_fn(
        "assert_upstream_header",
        |x: &mut Exchange, name: &str, value: Dynamic| -> RhaiResult<()> {
            let assertion = format!("assert_upstream_header({name:?})");
            x.forwarded(&assertion)?;
            expect_header(assertion, &value, x.upstream_header(name))
        },
    );
    engine.register_fn(
        "assert_no_upstream_header",
        |x: &mut Exchange, name: &str| -> RhaiResult<()> {
            let assertion = format!("assert_no_upstream_header({name:?})");
            x.forwarded(&assertion)?;
            let got = x.upstream_header(name);
            expect(assertion, got.is_none(), "()", show_opt(got.as_deref()))
        },
    );
    engine.register_fn(
        "assert_upstream_body",
        |x: &mut Exchange, body: Dynamic| -> RhaiResult<()> {
            let assertion = "assert_upstream_body";
            let wanted = text_of(assertion, &body)?;
            let got = String::from_utf8_lossy(&x.forwarded(assertion)?.body).into_owned();
            expect(
                assertion,
                got == wanted,
                format!("{wanted:?}"),
                format!("{got:?}"),
            )
        },
    );

    // What reached the client.
    engine.register_fn("assert_status", |x: &mut Exchange, status: i64| {
        let got = i64::from(x.0.outcome.response.status);
        expect(
            "assert_status",
            got == status,
            status,
            format!("{got} ({})", x.fate()),
        )
    });
    engine.register_fn(
        "assert_response_header",
        |x: &mut Exchange, name: &str, value: Dynamic| -> RhaiResult<()> {
            let assertion = format!("assert_response_header({name:?})");
            expect_header(assertion, &value, x.response_header(name))
        },
    );
    engine.register_fn(
        "assert_no_response_header",
        |x: &mut Exchange, name: &str| {
            let got = x.response_header(name);
            expect(
                format!("assert_no_response_header({name:?})"),
                got.is_none(),
                "()",
                show_opt(got.as_deref()),
            )
        },
    );
    engine.register_fn(
        "assert_body",
        |x: &mut Exchange, body: Dynamic| -> RhaiResult<()> {
            let wanted = text_of("assert_body", &body)?;
            let got = String::from_utf8_lossy(&x.0.outcome.response.body).into_owned();
            expect(
                "assert_body",
                got == wanted,
                format!("{wanted:?}"),
                format!("{got:?}"),
            )
        },
    );
    engine.register_fn("assert_local_response", |x: &mut Exchange| {
        let r = &x.0.outcome.response;
        expect(
            "assert_local_response",
            r.local,
            "a local response",
            x.fate(),
        )
    });
    engine.register_fn("assert_local_response", |x: &mut Exchange, status: i64| {
        let r = &x.0.outcome.response;
        expect(
            "assert_local_response",
            r.local && i64::from(r.status) == status,
            format!("a local response {status}"),
            x.fate(),
        )
    });
    engine.register_fn(
        "assert_local_response",
        |x: &mut Exchange, status: i64, body: Dynamic| -> RhaiResult<()> {
            let wanted = text_of("assert_local_response", &body)?;
            let r = &x.0.outcome.response;
            expect(
                "assert_local_response",
                r.local && i64::from(r.status) == status && r.body == wanted.as_bytes(),
                format!("local response {status} {wanted:?}"),
                x.fate(),
            )
        },
    );
    engine.register_fn("assert_no_local_response", |x: &mut Exchange| {
        expect(
            "assert_no_local_response",
            !x.0.outcome.response.local,
            "no local response",
            x.fate(),
        )
    });

    // Callouts, logs, errors.
    engine.register_fn("assert_callouts", |x: &mut Exchange, count: i64| {
        let calls = &x.0.outcome.callouts;
        let targets: Vec<String> = calls
            .iter()
            .map(|c| {
                let path = header(&c.headers, ":path").unwrap_or_default();
                format!("{}{path}", c.cluster)
            })
            .collect();
        expect(
            "assert_callouts",
            i64::try_from(calls.len()) == Ok(count),
            format!("{count} callout(s)"),
            format!("{} callout(s) {targets:?}", calls.len()),
        )
    });
    engine.register_fn(
        "assert_callout",
        |x: &mut Exchange, index: i64, expected: Map| x.assert_callout(index, &expected),
    );
    engine.register_fn("assert_log", |x: &mut Exchange, text: &str| {
        x.assert_log(format!("assert_log({text:?})"), None, text)
    });
    engine.register_fn("assert_log", |x: &mut Exchange, level: &str, text: &str| {
        x.assert_log(
            format!("assert_log({level:?}, {text:?})"),
            Some(level),
            text,
        )
    });
    engine.register_fn("assert_no_log", |x: &mut Exchange, text: &str| {
        let logs = x.logs();
        expect(
            format!("assert_no_log({text:?})"),
            !logs.iter().any(|(_, m)| m.contains(text)),
            format!("no log line containing {text:?}"),
            show_log(&logs),
        )
    });
    engine.register_fn("assert_error", |x: &mut Exchange, text: &str| {
        x.0.errors_seen.set(true);
        let errors = x.0.outcome.script_errors();
        expect(
            format!("assert_error({text:?})"),
            errors.iter().any(|e| e.contains(text)),
            format!("a script error containing {text:?}"),
            if errors.is_empty() {
                "no script error".to_string()
            } else {
                format!("{errors:?}")
            },
        )
    });
    engine.register_fn("assert_no_errors", |x: &mut Exchange| {
        x.0.errors_seen.set(true);
        let errors = x.0.outcome.script_errors();
        expect(
            "assert_no_errors",
            errors.is_empty(),
            "no script error",
            format!("{errors:?}"),
        )
    });
    engine.register_fn("assert_stalled", |x: &mut Exchange| {
        x.0.stall_seen.set(true);
        expect(
            "assert_stalled",
            x.0.outcome.stalled.is_some(),
            "a stalled request",
            x.fate(),
        )
    });
}
