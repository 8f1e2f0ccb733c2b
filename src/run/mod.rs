//! Requests run through a configured plugin, and what they did, as `proxy-rhai run` shows it
//! (and `repl`, and the playground): the answers of the upstream and of callouts, and the
//! report as text for a person or as JSON.
//!
//! ```
//! use proxy_rhai::emulator::{Emulator, Request};
//! use proxy_rhai::run::{Answers, Report};
//! let emulator = Emulator::with_script(
//!     r#"fn on_request_headers() { add_request_header("hello", "world"); }"#,
//!     serde_json::json!({}),
//! ).unwrap();
//! let report = Report::new(&emulator, vec![Request::get("/")], &Answers::default());
//! assert!(report.text().contains("hello: world"));
//! assert_eq!(report.json()["response"]["status"], 200);
//! ```

pub mod input;

use serde_json::{json, Value};

use crate::emulator::{
    header, Callout, Emulator, Headers, LogLine, Metric, Outcome, Reply, Request, Response,
};
use crate::testing::spec;

/// What answers the requests of a run: the upstream, and the callouts by `--callout` rule.
pub struct Answers {
    pub response: Response,
    pub rules: Vec<input::CalloutRule>,
}

impl Default for Answers {
    fn default() -> Self {
        Self {
            response: Response::ok("upstream response\n").header("content-type", "text/plain"),
            rules: Vec::new(),
        }
    }
}

impl Answers {
    /// The upstream's `response` (JSON as [`spec::response`] reads it; `None`: the default)
    /// and the `callouts` rules, their clusters defined on `emulator`.
    pub fn of(
        emulator: &Emulator,
        response: Option<&Value>,
        callouts: &[String],
    ) -> Result<Self, String> {
        let mut answers = Answers::default();
        if let Some(response) = response {
            answers.response = spec::response(response)?;
        }
        for rule in callouts {
            answers.add_callout(emulator, rule)?;
        }
        Ok(answers)
    }

    /// Adds a `CLUSTER[PATH]=ANSWER` rule; its cluster is one the proxy defines.
    pub fn add_callout(&mut self, emulator: &Emulator, arg: &str) -> Result<(), String> {
        let rule = input::callout(arg)?;
        emulator.add_cluster(&rule.cluster);
        self.rules.push(rule);
        Ok(())
    }

    /// The rule answering `call`: one with its cluster and a matching path first, then one
    /// for the whole cluster; with none the call times out.
    fn reply(&self, call: &Callout) -> Reply {
        let path = header(&call.headers, ":path").unwrap_or_default();
        let matching = |with_path: bool| {
            self.rules.iter().find(|r| {
                r.cluster == call.cluster
                    && r.path.is_some() == with_path
                    && r.path
                        .as_deref()
                        .is_none_or(|p| spec::path_matches(p, &path))
            })
        };
        matching(true)
            .or_else(|| matching(false))
            .map_or(Reply::NoAnswer, |r| r.reply.clone())
    }

    /// Takes `request` through the plugin, answered by these.
    pub fn run(&self, emulator: &Emulator, request: &Request) -> Outcome {
        emulator.run_with(
            request,
            &mut self.response.clone(),
            &mut |call: &Callout| self.reply(call),
        )
    }
}

/// What the plugin keeps beyond one request: shown after it.
pub struct Kept {
    /// What the script's top level logged, at configure time.
    pub configure_log: Vec<LogLine>,
    pub metrics: Vec<Metric>,
    pub shared: Vec<(String, Vec<u8>)>,
}

impl Kept {
    pub fn of(emulator: &Emulator, configure_log: Vec<LogLine>) -> Self {
        Self {
            configure_log,
            metrics: emulator.metrics(),
            shared: emulator.shared_data(),
        }
    }
}

/// Requests run in order through one configured plugin, with what each did and what the
/// plugin kept.
pub struct Report {
    pub requests: Vec<Request>,
    pub outcomes: Vec<Outcome>,
    pub kept: Kept,
}

impl Report {
    /// Runs `requests` through `emulator`, just configured (its log so far is the configure
    /// time's), answered by `answers`.
    pub fn new(emulator: &Emulator, requests: Vec<Request>, answers: &Answers) -> Self {
        let configure_log = emulator.log();
        let outcomes = requests
            .iter()
            .map(|request| answers.run(emulator, request))
            .collect();
        Self {
            requests,
            outcomes,
            kept: Kept::of(emulator, configure_log),
        }
    }

    /// Whether the script did well on every request: no script error, no request left paused.
    pub fn passed(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| o.script_errors().is_empty() && o.stalled.is_none())
    }

    /// `run --json`: one request's outcome ([`spec::outcome`]) with the `request` as sent, or
    /// `{"runs": [...]}` for several; then `configure_log`, `metrics` and `shared_data`.
    pub fn json(&self) -> Value {
        let runs: Vec<Value> = self
            .requests
            .iter()
            .zip(&self.outcomes)
            .map(|(request, outcome)| {
                let mut value = spec::outcome(outcome);
                value["request"] = json!({
                    "method": request.method,
                    "path": request.path,
                    "authority": request.authority,
                    "headers": spec::pairs(&request.headers),
                    "body": String::from_utf8_lossy(&request.body),
                });
                value
            })
            .collect();
        let mut value = match <[Value; 1]>::try_from(runs) {
            Ok([one]) => one,
            Err(runs) => json!({ "runs": runs }),
        };
        let kept = &self.kept;
        value["configure_log"] = kept.configure_log.iter().map(spec::log_line).collect();
        value["metrics"] = kept
            .metrics
            .iter()
            .map(|m| (m.name.clone(), spec::metric_value(m)))
            .collect();
        value["shared_data"] = kept
            .shared
            .iter()
            .map(|(k, v)| (k.clone(), json!(String::from_utf8_lossy(v))))
            .collect();
        value
    }

    /// `run` without `--json`: the configure-time log, each request's trace and outcome
    /// ([`show_outcome`]), the metrics and the shared data; no blank line at either end.
    pub fn text(&self) -> String {
        let mut text = String::new();
        show_log(&mut text, "log at configure time", &self.kept.configure_log);
        let count = self.requests.len();
        for (i, (request, outcome)) in self.requests.iter().zip(&self.outcomes).enumerate() {
            if count > 1 {
                text.push_str(&format!("\n=== request {} of {count}\n", i + 1));
            }
            text.push('\n');
            text.push_str(&show_outcome(request, outcome));
        }
        show_metrics(&mut text, &self.kept.metrics);
        show_shared(&mut text, &self.kept.shared);
        text.trim().to_string()
    }
}

fn show_headers(text: &mut String, headers: &Headers) {
    for (name, value) in headers {
        text.push_str(&format!("  {name}: {}\n", String::from_utf8_lossy(value)));
    }
}

fn show_body(text: &mut String, body: &[u8]) {
    if body.is_empty() {
        text.push_str("  (no body)\n");
    } else {
        let shown = String::from_utf8_lossy(body);
        text.push_str(&format!("  body ({} bytes): {shown:?}\n", body.len()));
    }
}

/// A body that went on in several pieces: each piece.
fn show_pieces(text: &mut String, pieces: &[Vec<u8>]) {
    if pieces.len() > 1 {
        for (i, piece) in pieces.iter().enumerate() {
            let shown = String::from_utf8_lossy(piece);
            text.push_str(&format!(
                "    piece {} ({} bytes): {shown:?}\n",
                i + 1,
                piece.len()
            ));
        }
    }
}

fn show_log(text: &mut String, title: &str, log: &[LogLine]) {
    if !log.is_empty() {
        text.push_str(&format!("\n== {title}\n"));
        for l in log {
            let level = spec::level_name(l.level);
            text.push_str(&format!("  {level:<5}  {}\n", l.message));
        }
    }
}

/// The trace and the outcome of one request, for a person.
pub fn show_outcome(request: &Request, outcome: &Outcome) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        "== request: {} {} (authority {})\n",
        request.method, request.path, request.authority
    ));
    show_headers(&mut text, &request.headers);
    show_body(&mut text, &request.body);
    text.push_str(&format!("\n== host calls ({})\n", outcome.trace.len()));
    for (i, call) in outcome.trace.iter().enumerate() {
        text.push_str(&format!("{:>4}  {call}\n", i + 1));
    }
    if !outcome.callouts.is_empty() {
        text.push_str(&format!("\n== callouts ({})\n", outcome.callouts.len()));
        for c in &outcome.callouts {
            let get = |name| header(&c.headers, name).unwrap_or_default();
            text.push_str(&format!(
                "  {} {} {} ({} ms, body {} bytes)\n",
                c.cluster,
                get(":method"),
                get(":path"),
                c.timeout.as_millis(),
                c.body.len()
            ));
        }
    }
    match &outcome.upstream {
        Some(up) => {
            text.push_str("\n== forwarded to the upstream\n");
            show_headers(&mut text, &up.headers);
            show_body(&mut text, &up.body);
            show_pieces(&mut text, &up.chunks);
        }
        None => text.push_str("\n== the request never reached the upstream\n"),
    }
    let r = &outcome.response;
    if let Some(why) = &outcome.stalled {
        text.push_str(&format!("\n== stalled: {why}\n"));
    } else {
        let from = if r.local {
            "(local response)"
        } else {
            "(from the upstream)"
        };
        let reset = if r.reset {
            " (then reset: the client saw a truncated response)"
        } else {
            ""
        };
        text.push_str(&format!(
            "\n== response to the client: {} {from}{reset}\n",
            r.status
        ));
        show_headers(&mut text, &r.headers);
        show_body(&mut text, &r.body);
        show_pieces(&mut text, &r.chunks);
    }
    if !outcome.filter_state.is_empty() {
        text.push_str("\n== filter state (what the access log and later filters read)\n");
        for (key, value) in &outcome.filter_state {
            text.push_str(&format!(
                "  {key:?}: {:?}\n",
                String::from_utf8_lossy(value)
            ));
        }
    }
    if !outcome.context.is_empty() {
        text.push_str("\n== context (set_context)\n");
        for (key, value) in &outcome.context {
            text.push_str(&format!("  {key}: {value}\n"));
        }
    }
    show_log(&mut text, "log", &outcome.log);
    let errors = outcome.script_errors();
    if !errors.is_empty() {
        text.push_str("\n== script errors\n");
        for e in errors {
            text.push_str(&format!("  {e}\n"));
        }
    }
    text
}

/// The metrics, under a title (nothing when there are none).
pub fn show_metrics(text: &mut String, metrics: &[Metric]) {
    if !metrics.is_empty() {
        text.push_str("\n== metrics\n");
        for m in metrics {
            text.push_str(&format!("  {}: {}\n", m.name, spec::metric_value(m)));
        }
    }
}

/// The shared data, under a title (nothing when there is none).
pub fn show_shared(text: &mut String, shared: &[(String, Vec<u8>)]) {
    if !shared.is_empty() {
        text.push_str("\n== shared data\n");
        for (k, v) in shared {
            text.push_str(&format!("  {k}: {:?}\n", String::from_utf8_lossy(v)));
        }
    }
}
