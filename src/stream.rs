//! The phase driver: how one HTTP stream runs through the script.
//!
//! The proxy (or the emulator) calls the `on_*` methods as the stream's events arrive; each
//! returns the [`Action`] for the proxy. Phases the script doesn't define return at once,
//! without entering Rhai.

use std::rc::Rc;

use rhai::{Dynamic, EvalAltResult, FnPtr, Map, SharedCells};

pub use proxy_wasm::types::Action;

use crate::bindings::{CallAnswer, PhaseAction};
use crate::config::FailMode;
use crate::header_map::HeaderMap;
use crate::host::{BufferType, Host, LogLevel, MapType};
use crate::phase::Phase;
use crate::plugin::{Plugin, Selection};
use crate::sandbox::describe_error;

/// State of one HTTP stream that outlives a single phase call.
#[derive(Default)]
pub(crate) struct StreamState {
    /// `set_context` / `get_context` values.
    pub context: Map,
    /// Callouts in flight, in dispatch order.
    pub calls: Vec<PendingCall>,
    /// A local response was sent: the stream is finished for the script.
    pub local_response_sent: bool,
    /// The side (request or response) the plugin paused, waiting for callouts to be answered.
    pub paused: Option<Side>,
    /// Current length of the buffered request body (kept in step with the script's writes).
    pub request_body_len: usize,
    /// Current length of the buffered response body.
    pub response_body_len: usize,
    /// Whether a body (or trailers) follows the request / response headers.
    pub request_has_body: bool,
    pub response_has_body: bool,
    /// The script asked not to run the body phase for this request / response.
    pub skip_request_body: bool,
    pub skip_response_body: bool,
    /// Script errors waiting for the log phase, where the request id is known again.
    pub deferred_errors: Vec<String>,
    /// Callouts this request made, its callbacks' included (for `limits.max_callouts`).
    pub callouts_made: usize,
}

impl StreamState {
    /// The length of a buffered body, as the script's writes left it.
    pub(crate) fn body_len_mut(&mut self, buffer: BufferType) -> &mut usize {
        match buffer {
            BufferType::HttpRequestBody => &mut self.request_body_len,
            _ => &mut self.response_body_len,
        }
    }
}

/// A callout waiting for its answer.
pub(crate) struct PendingCall {
    pub id: u32,
    pub phase: Phase,
    pub callback: FnPtr,
}

/// The two directions of a stream, each paused and resumed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Request,
    Response,
}

impl Side {
    pub fn of(phase: Phase) -> Side {
        if phase.is_request() {
            Side::Request
        } else {
            Side::Response
        }
    }
}

/// One HTTP stream (a request and its response) handled by a plugin.
pub struct HttpStream<H: Host> {
    plugin: Rc<Plugin<H>>,
    /// The script and config of this stream, chosen at its first event; `None` passes the
    /// stream through untouched (no rule matched and there is no global script).
    selection: Option<Selection>,
    state: Box<StreamState>,
    request: SideState,
    response: SideState,
    /// The closures' shared cells this stream's script made: emptied when the stream is gone,
    /// which frees the reference cycles among them (`let f = 0; f = || f;`).
    cells: SharedCells,
    /// The request id, once an error needed it and the proxy gave it: read on the first
    /// error, not on every request.
    request_id: Option<String>,
}

/// Where one direction of the stream stands with its body and trailers.
#[derive(Default)]
struct SideState {
    /// Size of the body buffered so far while a body phase waits for the end.
    body_seen: Option<usize>,
    /// Trailers arrived while the body phase waited for callouts: their phase runs after.
    trailers_deferred: bool,
}

/// Where the request id goes in an error line logged later.
const REQUEST_ID_SLOT: &str = "\u{0}id\u{0}";

/// How a script call ended.
type CallResult = Result<Dynamic, Box<EvalAltResult>>;

/// What to call in the script.
enum Call {
    Phase,
    Callback(FnPtr, Vec<Dynamic>),
}

impl<H: Host + 'static> HttpStream<H> {
    pub fn new(plugin: Rc<Plugin<H>>) -> Self {
        Self {
            plugin,
            selection: None,
            state: Box::default(),
            request: SideState::default(),
            response: SideState::default(),
            cells: SharedCells::default(),
            request_id: None,
        }
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        self.selection = self.plugin.select();
        self.state.request_has_body = !end_of_stream;
        if !end_of_stream
            && (self.defines(Phase::RequestBody) || self.defines(Phase::ResponseBody))
            && self.is_upgrade()
        {
            // An upgraded stream (websocket, CONNECT) ends when the connection does: a body
            // phase waiting for its end would hold every byte of it. Its bodies pass untouched.
            self.state.skip_request_body = true;
            self.state.skip_response_body = true;
        }
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

    /// Trailers end the body: a body phase still waiting for the end runs first.
    pub fn on_request_trailers(&mut self) -> Action {
        self.on_trailers(Phase::RequestBody, Phase::RequestTrailers)
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        self.state.response_has_body = !end_of_stream;
        let action = self.run_phase(Phase::ResponseHeaders);
        self.prepare_body(
            Phase::ResponseBody,
            MapType::HttpResponseHeaders,
            end_of_stream,
        );
        action
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Phase::ResponseBody, body_size, end_of_stream)
    }

    pub fn on_response_trailers(&mut self) -> Action {
        self.on_trailers(Phase::ResponseBody, Phase::ResponseTrailers)
    }

    /// The stream is over: `on_log()` runs (its errors are only logged).
    pub fn on_log(&mut self) {
        self.state.calls.clear();
        // Errors of the phases where the proxy hides the request id are logged now, with it.
        let deferred = std::mem::take(&mut self.state.deferred_errors);
        if !deferred.is_empty() {
            let id = self.request_id().unwrap_or_else(|| "-".into());
            for message in deferred {
                self.plugin
                    .api
                    .log_plugin(LogLevel::Error, &message.replacen(REQUEST_ID_SLOT, &id, 1));
            }
        }
        if self.defines(Phase::Log) {
            if let Err(e) = self.enter(Phase::Log, None, Call::Phase) {
                self.log_error(Phase::Log, &e, false);
            }
        }
    }

    /// A callout answered (or failed: `num_headers == 0`). Runs its callback in the phase that
    /// dispatched it, then resumes the stream once no call of that side is pending.
    pub fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let Some(index) = self.state.calls.iter().position(|c| c.id == token) else {
            return; // dropped when the stream was answered
        };
        let call = self.state.calls.remove(index);
        let args =
            match self.call_answer(num_headers, body_size, self.callback_arity(&call.callback)) {
                Ok(args) => args,
                Err(e) => {
                    self.fail(call.phase, &e, true);
                    return;
                }
            };
        let answer = CallAnswer { body_size };
        let result = self.enter(
            call.phase,
            Some(answer),
            Call::Callback(call.callback, args),
        );
        if let Err(e) = result {
            self.fail(call.phase, &e, true);
            return;
        }
        let side = Side::of(call.phase);
        if self.state.local_response_sent || self.pending(side) {
            return;
        }
        let side_state = if side == Side::Request {
            &mut self.request
        } else {
            &mut self.response
        };
        if std::mem::take(&mut side_state.trailers_deferred) {
            let trailers = if side == Side::Request {
                Phase::RequestTrailers
            } else {
                Phase::ResponseTrailers
            };
            if self.run_phase(trailers) == Action::Pause {
                return; // paused again: its own callouts (or a local response) take over
            }
        }
        self.resume(side);
    }

    /// The callback's arguments — status (0 without an answer), headers, body — as many as it
    /// takes: the headers and body are only converted for a callback that reads them. The body
    /// is the text `get_http_call_response_body()` gives, and refused as it is when that text
    /// would be longer than the string size limit (the callback doesn't run).
    fn call_answer(
        &self,
        num_headers: usize,
        body_size: usize,
        arity: usize,
    ) -> Result<Vec<Dynamic>, Box<EvalAltResult>> {
        if arity == 0 {
            return Ok(Vec::new());
        }
        let host = &self.plugin.api.host;
        let mut args = Vec::with_capacity(arity);
        let headers = if num_headers > 0 && arity >= 2 {
            host.get_map(MapType::HttpCallResponseHeaders)
                .unwrap_or_default()
        } else {
            HeaderMap::new()
        };
        let status = if num_headers == 0 {
            None
        } else if arity >= 2 {
            headers.get(":status").map(<[u8]>::to_vec)
        } else {
            host.get_map_value(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
        };
        let status: i64 = status
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0);
        args.push(status.into());
        if arity >= 2 {
            args.push(crate::bindings::header_pairs_of(&headers).into());
        }
        if arity >= 3 {
            let what = "the callout answer's body (the callback's `body`)";
            if let Some(message) = self.plugin.api.over_memory_budget(body_size) {
                return Err(format!("{what}: {message}").into());
            }
            let body = host
                .get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            let max = self.plugin.engine.max_string_size();
            args.push(crate::sandbox::text_within(what, body, max)?.into());
        }
        Ok(args)
    }

    /// How many of `|status, headers, body|` a callback takes (a closure's captured variables
    /// come first among its function's parameters).
    fn callback_arity(&self, callback: &FnPtr) -> usize {
        let Some(selection) = &self.selection else {
            return 0;
        };
        // A closure knows its function's parameters; a `Fn("name")` is looked up by name (a
        // walk through all of the script's functions: ~800 wasm instructions for two).
        callback
            .num_params()
            .or_else(|| {
                selection
                    .script
                    .ast
                    .iter_functions()
                    .find(|f| f.name == callback.fn_name())
                    .map(|f| f.params.len())
            })
            .map_or(3, |params| {
                params.saturating_sub(callback.curry().len()).min(3)
            })
    }

    fn defines(&self, phase: Phase) -> bool {
        let skipped = match phase {
            Phase::RequestBody => self.state.skip_request_body,
            Phase::ResponseBody => self.state.skip_response_body,
            _ => false,
        };
        !skipped
            && self
                .selection
                .as_ref()
                .is_some_and(|s| s.script.defines(phase))
    }

    /// Whether the request asks to become a tunnel: an `upgrade` header (websocket, HTTP/1.1)
    /// or the CONNECT method (HTTP/2's extended CONNECT too).
    fn is_upgrade(&self) -> bool {
        let host = &self.plugin.api.host;
        let header = |name| {
            host.get_map_value(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
        };
        header("upgrade").is_some_and(|v| !v.is_empty())
            || header(":method").is_some_and(|m| m.eq_ignore_ascii_case(b"CONNECT"))
    }

    fn property_text(&self, path: &[&str]) -> Option<String> {
        let value = self.plugin.api.host.get_property(path).ok().flatten()?;
        (!value.is_empty()).then(|| crate::sandbox::lossy(value))
    }

    fn pending(&self, side: Side) -> bool {
        self.state.calls.iter().any(|c| Side::of(c.phase) == side)
    }

    /// Runs a phase function when the script defines it, and decides the proxy's action.
    fn run_phase(&mut self, phase: Phase) -> Action {
        if !self.defines(phase) || self.state.local_response_sent {
            return Action::Continue;
        }
        let returned = match self.enter(phase, None, Call::Phase) {
            Ok(value) => value,
            Err(e) => return self.fail(phase, &e, false),
        };
        if self.state.local_response_sent {
            self.state.calls.clear();
            return Action::Pause;
        }
        if self.state.calls.iter().any(|c| c.phase == phase) {
            self.state.paused = Some(Side::of(phase));
            return Action::Pause;
        }
        match returned.try_cast::<PhaseAction>() {
            Some(PhaseAction::Pause) => Action::Pause,
            _ => Action::Continue,
        }
    }

    /// Lends the stream state to the bindings for one call into Rhai.
    fn enter(&mut self, phase: Phase, answer: Option<CallAnswer>, call: Call) -> CallResult {
        let Some(selection) = &self.selection else {
            return Ok(Dynamic::UNIT);
        };
        let plugin = &*self.plugin;
        plugin.api.begin_call(
            Some(phase),
            selection.config.clone(),
            selection.constants.clone(),
        );
        {
            let mut frame = plugin.api.frame.borrow_mut();
            frame.answer = answer;
            // Boxes swapped, not states: moving a whole state in and out cost ~280 wasm
            // instructions per call, more than the box's one allocation per stream.
            std::mem::swap(&mut frame.stream, &mut self.state);
        }
        let script = &selection.script;
        let result = self.cells.record(|| match call {
            Call::Phase => script.call(&plugin.engine, Some(phase)),
            Call::Callback(callback, args) => script.call_back(&plugin.engine, &callback, args),
        });
        // A call is all or nothing: what a failed one wrote never reaches the proxy.
        if result.is_ok() {
            plugin.api.commit();
        } else {
            plugin.api.roll_back();
        }
        plugin.api.end_call();
        std::mem::swap(&mut plugin.api.frame.borrow_mut().stream, &mut self.state);
        result
    }

    /// A body phase runs once, on the whole body: until the end the proxy buffers.
    fn on_body(&mut self, phase: Phase, body_size: usize, end_of_stream: bool) -> Action {
        if !self.defines(phase) || self.state.local_response_sent {
            return Action::Continue;
        }
        let max = self.plugin.config.limits.max_body_size;
        if body_size > max {
            self.plugin.api.log_plugin(
                LogLevel::Warn,
                &format!("{phase}: body of {body_size} bytes is over limits.max_body_size ({max})"),
            );
            return if phase.is_request() {
                self.answer_locally(413, "Payload Too Large\n")
            } else {
                self.answer_locally(500, "Internal Server Error\n")
            };
        }
        let side = if phase.is_request() {
            &mut self.request
        } else {
            &mut self.response
        };
        if !end_of_stream {
            side.body_seen = Some(body_size);
            return Action::Pause;
        }
        side.body_seen = None;
        if phase.is_request() {
            self.state.request_body_len = body_size;
        } else {
            self.state.response_body_len = body_size;
        }
        self.run_phase(phase)
    }

    fn on_trailers(&mut self, body_phase: Phase, trailers_phase: Phase) -> Action {
        let side = if body_phase.is_request() {
            &mut self.request
        } else {
            &mut self.response
        };
        if let Some(size) = side.body_seen {
            if self.on_body(body_phase, size, true) == Action::Pause {
                // Waiting for the body phase's callouts: the trailers phase runs after them.
                let side = if body_phase.is_request() {
                    &mut self.request
                } else {
                    &mut self.response
                };
                side.trailers_deferred = !self.state.local_response_sent;
                return Action::Pause;
            }
        }
        self.run_phase(trailers_phase)
    }

    /// A body phase may change the body's length, and the headers have gone on before it:
    /// drop `content-length` so the message stays well-formed (the proxy frames it anew).
    fn prepare_body(&mut self, body_phase: Phase, headers: MapType, end_of_stream: bool) {
        if !end_of_stream && self.defines(body_phase) && !self.state.local_response_sent {
            let _ = self
                .plugin
                .api
                .host
                .remove_map_value(headers, "content-length");
        }
    }

    fn resume(&mut self, side: Side) {
        // The driver's own resume goes through the same bookkeeping as the script's.
        let api = &self.plugin.api;
        std::mem::swap(&mut api.frame.borrow_mut().stream, &mut self.state);
        let resumed = api.resume(side);
        std::mem::swap(&mut api.frame.borrow_mut().stream, &mut self.state);
        if let Err(status) = resumed {
            api.log_plugin(
                LogLevel::Warn,
                &format!("resuming the {side:?} failed: {status:?}"),
            );
        }
    }

    /// The request id, kept once the proxy gave it. Envoy gives `request.id` (like every
    /// `request.*` property) only while the request headers phase holds the request, and in
    /// the log phase: not in the other phases, nor after a resume (measured in Envoy 1.40).
    fn request_id(&mut self) -> Option<String> {
        if self.request_id.is_none() {
            self.request_id = self.property_text(&["request", "id"]);
        }
        self.request_id.clone()
    }

    /// Logs a script error once, with its request id. When the proxy doesn't give the id now
    /// (see [`Self::request_id`]) the line is logged when the stream ends (`on_log`), where it
    /// does; the requests that don't fail never read it.
    fn log_error(&mut self, phase: Phase, error: &EvalAltResult, in_callback: bool) {
        self.plugin.api.count_script_error();
        let place = if in_callback {
            "callout callback of "
        } else {
            ""
        };
        let message = format!(
            "script error in {place}{phase} (request {REQUEST_ID_SLOT}): {}",
            describe_error(error)
        );
        let id = match phase {
            Phase::RequestHeaders => self.request_id(),
            Phase::Log => Some(self.request_id().unwrap_or_else(|| "-".into())),
            _ => self.request_id.clone(),
        };
        match id {
            Some(id) => self
                .plugin
                .api
                .log_plugin(LogLevel::Error, &message.replacen(REQUEST_ID_SLOT, &id, 1)),
            None => self.state.deferred_errors.push(message),
        }
    }

    /// Applies the error policy to a failed script call.
    fn fail(&mut self, phase: Phase, error: &EvalAltResult, in_callback: bool) -> Action {
        self.log_error(phase, error, in_callback);
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
                self.plugin.api.log_plugin(
                    LogLevel::Warn,
                    &format!("local response {status} refused by the proxy: {s:?}"),
                );
            }
        }
        Action::Pause
    }
}

impl<H: Host> Drop for HttpStream<H> {
    fn drop(&mut self) {
        // Nothing a script makes outlives its stream, so every cell still alive now is held
        // only by a cycle. Pending callbacks and context values hold cells too: drop them
        // first (what is empty needs nothing done).
        if !self.state.calls.is_empty() {
            self.state.calls.clear();
        }
        if !self.state.context.is_empty() {
            self.state.context.clear();
        }
        self.cells.release();
        self.plugin.api.report_heap();
    }
}
