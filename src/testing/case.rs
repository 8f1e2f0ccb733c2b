//! A `*.test.rhai` case written from a run (the playground's "copy as test"): it loads the
//! script with the run's configuration, answers the callouts and the upstream as the run did,
//! sends the same request, and checks what the script did: what reached the upstream and the
//! client where it differs from what Envoy alone would have passed on, the callouts, the log
//! lines, the script errors, a stall, the filter state, the metrics and the shared data.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::emulator::{header, Emulator, Headers, Outcome, Reply, Request, Response};
use crate::run::input::CalloutRule;
use crate::run::{Answers, Kept, Report};
use crate::testing::spec;

/// A run to write a case of, as `proxy-rhai run` and the playground take it.
pub struct Run<'a> {
    /// The plugin, configured with `settings` and the script (its clock where the run's
    /// starts).
    pub emulator: &'a Emulator,
    /// The script, relative to the test file.
    pub script_path: &'a str,
    /// The plugin configuration but its script.
    pub settings: &'a Map<String, Value>,
    /// The request, as the JSON [`spec::request`] reads.
    pub request: &'a Value,
    /// The upstream's answer, as the JSON [`spec::response`] reads; `None`: `run`'s default.
    pub response: Option<&'a Value>,
    /// `--callout` rules (`cluster[/path]=ANSWER`).
    pub callouts: &'a [String],
}

/// Runs the request through the plugin and writes the case that repeats it.
pub fn of_run(run: &Run) -> Result<String, String> {
    let request: Request = spec::request(run.request)?;
    let answers = Answers::of(run.emulator, run.response, run.callouts)?;
    let response = match run.response {
        Some(response) => response.clone(),
        None => serde_json::json!({
            "status": answers.response.status,
            "headers": spec::pairs(&answers.response.headers),
            "body": String::from_utf8_lossy(&answers.response.body),
        }),
    };
    let now_ms = run.emulator.now_ms();
    let report = Report::new(run.emulator, vec![request.clone()], &answers);
    let Some(outcome) = report.outcomes.first() else {
        return Err("the run made no request".into());
    };
    Ok(write(&Case {
        script_path: run.script_path,
        settings: run.settings,
        now_ms,
        request: run.request,
        response: &response,
        callouts: &answers.rules,
        outcome,
        baseline: &baseline(run.settings, &request, &answers.response),
        kept: &report.kept,
    }))
}

/// What Envoy alone makes of the request and the answer: the run through a plugin whose
/// script touches nothing, with the same settings (what a case compares the run with).
fn baseline(settings: &Map<String, Value>, request: &Request, response: &Response) -> Outcome {
    let mut settings = settings.clone();
    settings.insert("script".into(), "fn on_log() {}".into());
    settings.remove("_rules_");
    match Emulator::new(&Value::Object(settings).to_string()) {
        Ok(emulator) => emulator.run(request, &mut response.clone()),
        Err(_) => Outcome::default(),
    }
}

/// What a case is written from.
pub struct Case<'a> {
    /// The script, relative to the test file.
    pub script_path: &'a str,
    /// The plugin configuration but its script.
    pub settings: &'a Map<String, Value>,
    /// Where the plugin's clock started.
    pub now_ms: u64,
    /// The request and the upstream's answer, as the JSON [`spec::request`] and
    /// [`spec::response`] read (a test's maps have the same fields).
    pub request: &'a Value,
    pub response: &'a Value,
    /// The run's callout rules, the first that matches answering.
    pub callouts: &'a [CalloutRule],
    /// What the request did.
    pub outcome: &'a Outcome,
    /// What the same request does through a script that touches nothing: what the checks
    /// compare with, so that only what the script did is checked.
    pub baseline: &'a Outcome,
    pub kept: &'a Kept,
}

/// The text of the test file.
pub fn write(case: &Case) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// A test of {path}, written from one run. Save it next to the script as a *.test.rhai\n\
         // file and run `proxy-rhai test`.\n\n\
         fn test_the_run() {{",
        path = case.script_path
    );
    let mut settings = case.settings.clone();
    // No "config" is what `()` gives the test API: `config()` returns `()` either way.
    let config = settings.remove("config").unwrap_or(Value::Null);
    let _ = writeln!(
        out,
        "    let p = plugin({}, {}, {});",
        literal(&Value::from(case.script_path)),
        literal(&config),
        literal(&Value::Object(settings))
    );
    if case.now_ms != crate::emulator::START_TIME_MS {
        let _ = writeln!(out, "    p.set_time_ms({});", case.now_ms);
    }
    // The test API's later rule wins; the run's first one did.
    for rule in case.callouts.iter().rev() {
        let path = match &rule.path {
            Some(path) => format!("{}, ", literal(&Value::from(path.as_str()))),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "    p.answer({}, {path}{});",
            literal(&Value::from(rule.cluster.as_str())),
            reply(&rule.reply)
        );
    }
    let _ = writeln!(
        out,
        "    let r = p.send({}, {});",
        literal(case.request),
        literal(case.response)
    );
    upstream(&mut out, case);
    client(&mut out, case);
    let o = case.outcome;
    let _ = writeln!(out, "    r.assert_callouts({});", o.callouts.len());
    for (i, call) in o.callouts.iter().enumerate() {
        let get = |name| Value::from(header(&call.headers, name).unwrap_or_default());
        let expected = Value::Object(Map::from_iter([
            ("cluster".to_string(), Value::from(call.cluster.as_str())),
            ("method".to_string(), get(":method")),
            ("path".to_string(), get(":path")),
            ("body".to_string(), lossy(&call.body)),
        ]));
        let _ = writeln!(out, "    r.assert_callout({i}, {});", literal(&expected));
    }
    let errors = o.script_errors();
    for line in o
        .log
        .iter()
        .filter(|l| !errors.contains(&l.message.as_str()))
    {
        let _ = writeln!(
            out,
            "    r.assert_log({}, {});",
            literal(&Value::from(spec::level_name(line.level))),
            literal(&Value::from(line.message.as_str()))
        );
    }
    if errors.is_empty() {
        out.push_str("    r.assert_no_errors();\n");
    }
    for error in errors {
        let _ = writeln!(out, "    r.assert_error({});", literal(&Value::from(error)));
    }
    if o.stalled.is_some() {
        out.push_str("    r.assert_stalled();\n");
    }
    for (key, value) in &o.filter_state {
        let _ = writeln!(
            out,
            "    assert_eq(r.filter_state[{}], {});",
            literal(&Value::from(key.as_str())),
            literal(&lossy(value))
        );
    }
    for metric in &case.kept.metrics {
        let _ = writeln!(
            out,
            "    assert_eq(p.metric({}), {});",
            literal(&Value::from(metric.name.as_str())),
            literal(&spec::metric_value(metric))
        );
    }
    for (key, value) in &case.kept.shared {
        let _ = writeln!(
            out,
            "    assert_eq(p.shared_data({}), {});",
            literal(&Value::from(key.as_str())),
            literal(&lossy(value))
        );
    }
    out.push_str("}\n");
    out
}

/// What reached the upstream, where it differs from the baseline.
fn upstream(out: &mut String, case: &Case) {
    let Some(up) = &case.outcome.upstream else {
        out.push_str("    r.assert_not_forwarded();\n");
        return;
    };
    out.push_str("    r.assert_forwarded();\n");
    let before = case.baseline.upstream.clone().unwrap_or_default();
    for pseudo in [":method", ":path", ":authority"] {
        let now = header(&up.headers, pseudo);
        if now != header(&before.headers, pseudo) {
            let _ = writeln!(
                out,
                "    assert_eq(r.upstream.{}, {});",
                &pseudo[1..],
                literal(&Value::from(now))
            );
        }
    }
    header_changes(out, "upstream", &before.headers, &up.headers);
    if up.body != before.body {
        let _ = writeln!(
            out,
            "    r.assert_upstream_body({});",
            literal(&lossy(&up.body))
        );
    }
}

/// What reached the client: its status, whether the plugin answered, and where it differs
/// from the baseline.
fn client(out: &mut String, case: &Case) {
    let r = &case.outcome.response;
    if case.outcome.stalled.is_some() {
        return;
    }
    if r.local {
        let _ = writeln!(
            out,
            "    r.assert_local_response({}, {});",
            r.status,
            literal(&lossy(&r.body))
        );
    } else {
        let _ = writeln!(out, "    r.assert_no_local_response();");
        let _ = writeln!(out, "    r.assert_status({});", r.status);
    }
    // A local response is the script's own: all its headers are checked.
    let before = match r.local {
        true => &Headers::new(),
        false => &case.baseline.response.headers,
    };
    header_changes(out, "response", before, &r.headers);
    if !r.local && r.body != case.baseline.response.body {
        let _ = writeln!(out, "    r.assert_body({});", literal(&lossy(&r.body)));
    }
    if r.reset {
        out.push_str("    assert(r.reset);\n");
    }
}

/// `assert_{which}_header` for each header `after` has with another value than `before`,
/// `assert_no_{which}_header` for each it lost (pseudo-headers apart).
fn header_changes(out: &mut String, which: &str, before: &Headers, after: &Headers) {
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in before.iter().chain(after) {
        if !name.starts_with(':') && !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    for name in names {
        let now = header(after, name);
        if now == header(before, name) {
            continue;
        }
        let quoted = literal(&Value::from(name));
        match now {
            Some(value) => {
                let _ = writeln!(
                    out,
                    "    r.assert_{which}_header({quoted}, {});",
                    literal(&Value::from(value))
                );
            }
            None => {
                let _ = writeln!(out, "    r.assert_no_{which}_header({quoted});");
            }
        }
    }
}

/// A callout answer as `p.answer` takes it.
fn reply(reply: &Reply) -> String {
    match reply {
        Reply::Answer {
            status,
            headers,
            body,
        } => {
            let answer = Value::Object(Map::from_iter([
                ("status".to_string(), Value::from(*status)),
                ("headers".to_string(), spec::pairs(headers)),
                ("body".to_string(), lossy(body)),
            ]));
            literal(&answer)
        }
        Reply::NoAnswer => "\"timeout\"".into(),
        Reply::ConnectFailure => "\"connect_failure\"".into(),
        Reply::Reset => "\"reset\"".into(),
        Reply::Failure => "\"failure\"".into(),
    }
}

fn lossy(bytes: &[u8]) -> Value {
    Value::from(String::from_utf8_lossy(bytes))
}

/// `value` as a Rhai literal: maps as `#{"key": …}`, `()` for null.
pub fn literal(value: &Value) -> String {
    match value {
        Value::Null => "()".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(literal).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) if map.is_empty() => "#{}".into(),
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", string(k), literal(v)))
                .collect();
            format!("#{{ {} }}", entries.join(", "))
        }
    }
}

/// A Rhai string literal (`"…"`, escaped as JSON and YAML want it, which Rhai reads too).
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::deploy::write_string(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_back_in_rhai() {
        let text = "a\"b\\c\nd\te\r\u{0}\u{7f}\u{85}\u{2028}\u{feff}é😀${x}`";
        let value = serde_json::json!({"k-1": [text, 1, true, null, {}], "n": -2});
        let engine = rhai::Engine::new();
        let read: rhai::Map = engine.eval(&literal(&value)).unwrap();
        let list = read["k-1"].clone().into_array().unwrap();
        assert_eq!(list[0].clone().into_string().unwrap(), text);
        assert_eq!(list[1].as_int(), Ok(1));
        assert!(list[3].is_unit());
        assert_eq!(read["n"].as_int(), Ok(-2));
    }
}
