//! The phase driver: how one HTTP stream runs through the script.
//!
//! The proxy (or the emulator) calls the `on_*` methods as the stream's events arrive; each
//! returns the [`Action`] for the proxy. Phases the script doesn't define return at once.

use std::rc::Rc;

use rhai::{CallFnOptions, Dynamic, EvalAltResult, Scope};

pub use proxy_wasm::types::Action;

use crate::bindings::{CallAnswer, PhaseAction, Side, StreamState};
use crate::config::FailMode;
use crate::host::{Host, LogLevel, MapType};
use crate::phase::Phase;
use crate::plugin::Plugin;

/// One HTTP stream (a request and its response) handled by a plugin.
pub struct HttpStream<H> {
    plugin: Rc<Plugin<H>>,
    state: StreamState,
    /// Size of the body buffered so far, per side, when a body phase waits for the end.
    request_body_seen: Option<usize>,
    response_body_seen: Option<usize>,
}

/// How a script call ended.
type CallResult = Result<Dynamic, Box<EvalAltResult>>;

impl<H: Host + 'static> HttpStream<H> {
    pub fn new(plugin: Rc<Plugin<H>>) -> Self {
        Self {
            plugin,
            state: StreamState::default(),
            request_body_seen: None,
            response_body_seen: None,
        }
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let action = self.run_phase(Phase::RequestHeaders);
        self.prepare_body(
            Phase::RequestBody,
            MapType::HttpRequestHeaders,
            end_of_stream,
        );
        action
    }

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Phase::RequestBody, body_size, end_of_stream)
    }

    /// Trailers end the body: a body phase still waiting for the end runs now.
    pub fn on_request_trailers(&mut self) -> Action {
        match self.request_body_seen {
            Some(size) => self.on_body(Phase::RequestBody, size, true),
            None => Action::Continue,
        }
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        if self.state.local_response_sent {
            // Our own local response passing back through the filter: not the upstream's.
            return Action::Continue;
        }
        let action = self.run_phase(Phase::ResponseHeaders);
        self.prepare_body(
            Phase::ResponseBody,
            MapType::HttpResponseHeaders,
            end_of_stream,
        );
        action
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.state.local_response_sent {
            return Action::Continue;
        }
        self.on_body(Phase::ResponseBody, body_size, end_of_stream)
    }

    pub fn on_response_trailers(&mut self) -> Action {
        match self.response_body_seen {
            Some(size) if !self.state.local_response_sent => {
                self.on_body(Phase::ResponseBody, size, true)
            }
            _ => Action::Continue,
        }
    }

    /// A callout answered (or failed: `num_headers == 0`). Runs its callback in the phase that
    /// dispatched it, then resumes the stream once no call of that side is pending.
    pub fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let Some(index) = self.state.calls.iter().position(|c| c.id == token) else {
            return; // dropped when the stream was answered
        };
        let call = self.state.calls.remove(index);
        let api = &self.plugin.api;
        let status = if num_headers == 0 {
            0
        } else {
            api.host
                .get_map_value(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let headers: rhai::Array = if num_headers == 0 {
            rhai::Array::new()
        } else {
            api.host
                .get_map(MapType::HttpCallResponseHeaders)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    let pair: rhai::Array =
                        vec![k.into(), String::from_utf8_lossy(&v).into_owned().into()];
                    pair.into()
                })
                .collect()
        };
        let body = api
            .host
            .get_buffer(crate::host::BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let answer = CallAnswer { body_size };
        let result = self.enter(call.phase, Some(answer), |plugin| {
            call.callback
                .call::<Dynamic>(&plugin.engine, &plugin.ast, (status, headers, body))
        });
        let side = Side::of(call.phase);
        if let Err(e) = result {
            self.fail(call.phase, &e, true);
            return;
        }
        if !self.state.calls.iter().any(|c| Side::of(c.phase) == side) {
            self.resume(side);
        }
    }

    /// Runs a phase function when the script defines it, and decides the proxy's action.
    fn run_phase(&mut self, phase: Phase) -> Action {
        if !self.plugin.phases.contains(phase) || self.state.local_response_sent {
            return Action::Continue;
        }
        let result = self.enter(phase, None, |plugin| {
            let options = CallFnOptions::new().eval_ast(false).rewind_scope(false);
            plugin.engine.call_fn_with_options::<Dynamic>(
                options,
                &mut Scope::new(),
                &plugin.ast,
                phase.function_name(),
                (),
            )
        });
        let returned = match result {
            Ok(value) => value,
            Err(e) => return self.fail(phase, &e, false),
        };
        let side = Side::of(phase);
        if self.state.local_response_sent {
            self.state.calls.clear();
            return Action::Pause;
        }
        if self.state.calls.iter().any(|c| c.phase == phase) {
            self.state.paused = Some(side);
            return Action::Pause;
        }
        match returned.try_cast::<PhaseAction>() {
            Some(PhaseAction::Pause) => Action::Pause,
            _ => Action::Continue,
        }
    }

    /// Lends the stream state to the bindings for one call into Rhai.
    fn enter(
        &mut self,
        phase: Phase,
        answer: Option<CallAnswer>,
        call: impl FnOnce(&Plugin<H>) -> CallResult,
    ) -> CallResult {
        let plugin = self.plugin.clone();
        {
            let mut frame = plugin.api.frame.borrow_mut();
            frame.phase = Some(phase);
            frame.answer = answer;
            frame.stream = std::mem::take(&mut self.state);
        }
        let result = call(&plugin);
        let mut frame = plugin.api.frame.borrow_mut();
        frame.phase = None;
        frame.answer = None;
        self.state = std::mem::take(&mut frame.stream);
        result
    }

    /// A body phase runs once, on the whole body: until the end the proxy buffers.
    fn on_body(&mut self, phase: Phase, body_size: usize, end_of_stream: bool) -> Action {
        if !self.plugin.phases.contains(phase) || self.state.local_response_sent {
            return Action::Continue;
        }
        let max = self.plugin.config.limits.max_body_size;
        if body_size > max {
            self.log(
                LogLevel::Warn,
                &format!("{phase}: body of {body_size} bytes is over limits.max_body_size ({max})"),
            );
            let status = if phase.is_request() { 413 } else { 500 };
            return self.answer_locally(
                status,
                if phase.is_request() {
                    "Payload Too Large\n"
                } else {
                    "Internal Server Error\n"
                },
            );
        }
        let seen = if phase.is_request() {
            &mut self.request_body_seen
        } else {
            &mut self.response_body_seen
        };
        if !end_of_stream {
            *seen = Some(body_size);
            return Action::Pause;
        }
        *seen = None;
        if phase.is_request() {
            self.state.request_body_len = body_size;
        } else {
            self.state.response_body_len = body_size;
        }
        self.run_phase(phase)
    }

    /// A body phase may change the body's length, and the headers have gone on before it:
    /// drop `content-length` so the message stays well-formed (the proxy frames it anew).
    fn prepare_body(&mut self, body_phase: Phase, headers: MapType, end_of_stream: bool) {
        if !end_of_stream
            && self.plugin.phases.contains(body_phase)
            && !self.state.local_response_sent
        {
            let _ = self
                .plugin
                .api
                .host
                .remove_map_value(headers, "content-length");
        }
    }

    fn resume(&mut self, side: Side) {
        // The driver's own resume: the state is back with the stream, lend it briefly.
        let api = &self.plugin.api;
        let mut frame = api.frame.borrow_mut();
        frame.stream = std::mem::take(&mut self.state);
        drop(frame);
        let resumed = api.resume(side);
        self.state = std::mem::take(&mut api.frame.borrow_mut().stream);
        if let Err(status) = resumed {
            self.log(
                LogLevel::Warn,
                &format!("resuming the {side:?} failed: {status:?}"),
            );
        }
    }

    /// Applies the error policy to a failed script call.
    fn fail(&mut self, phase: Phase, error: &EvalAltResult, in_callback: bool) -> Action {
        let request_id = self
            .plugin
            .api
            .host
            .get_map_value(MapType::HttpRequestHeaders, "x-request-id")
            .ok()
            .flatten()
            .map(|id| String::from_utf8_lossy(&id).into_owned())
            .unwrap_or_else(|| "-".into());
        let place = if in_callback {
            "callout callback of "
        } else {
            ""
        };
        self.log(
            LogLevel::Error,
            &format!(
                "script error in {place}{phase} (request {request_id}): {}",
                describe_error(error)
            ),
        );
        self.state.calls.clear();
        let policy = &self.plugin.config.error_policy;
        match policy.mode {
            FailMode::FailOpen => {
                if in_callback {
                    self.resume(Side::of(phase));
                }
                Action::Continue
            }
            FailMode::FailClosed => {
                let (status, body) = (policy.status, policy.body.clone());
                self.answer_locally(status, &body)
            }
        }
    }

    /// Sends a local response on the plugin's own behalf (limits, error policy).
    fn answer_locally(&mut self, status: u32, body: &str) -> Action {
        if !self.state.local_response_sent {
            self.state.local_response_sent = true;
            self.state.calls.clear();
            let headers: [(&str, &[u8]); 1] = [("content-type", b"text/plain")];
            if let Err(s) =
                self.plugin
                    .api
                    .host
                    .send_http_response(status, &headers, body.as_bytes())
            {
                self.log(
                    LogLevel::Warn,
                    &format!("local response {status} refused by the proxy: {s:?}"),
                );
            }
        }
        Action::Pause
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.plugin.api.host.log(level, message);
    }
}

/// A script error in one line: the innermost message, where in the script it happened, and
/// the chain of calls that led there.
pub fn describe_error(error: &EvalAltResult) -> String {
    let mut inner = error;
    let mut calls = Vec::new();
    let mut call_site = rhai::Position::NONE;
    while let EvalAltResult::ErrorInFunctionCall(name, _, err, pos) = inner {
        if !pos.is_none() {
            calls.push(format!("{name}() called at {pos}"));
            call_site = *pos;
        }
        inner = err;
    }
    let mut text = inner.to_string();
    if inner.position().is_none() && !call_site.is_none() {
        text.push_str(&format!(" ({call_site})"));
    }
    if !calls.is_empty() {
        text.push_str(&format!(" [in {}]", calls.join(", in ")));
    }
    text
}
