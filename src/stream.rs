//! The phase driver: how one HTTP stream runs through the script.
//!
//! The proxy (or the emulator) calls the `on_*` methods as the stream's events arrive; each
//! returns the [`Action`] for the proxy. Phases the script doesn't define return at once,
//! without entering Rhai.

use std::rc::Rc;

use rhai::{Dynamic, EvalAltResult, FnPtr, Map, SharedCells};

pub use crate::proxy_types::Action;

use crate::bindings::streaming::Splitter;
use crate::bindings::{CallAnswer, PhaseAction, CALLBACK_PARAMETERS, REDIS_CALLBACK_PARAMETERS};
use crate::config::FailMode;
use crate::header_map::HeaderMap;
use crate::host::{BufferType, Host, LogLevel, MapType};
use crate::phase::Phase;
use crate::plugin::{Plugin, Selection};

/// State of one HTTP stream that outlives a single phase call.
#[derive(Default)]
pub(crate) struct StreamState {
    /// `set_context` / `get_context` values.
    pub context: Map,
    /// Callouts in flight, in dispatch order.
    pub calls: Vec<PendingCall>,
    /// A local response was sent: the stream is finished for the script.
    pub local_response_sent: bool,
    /// Per side: the phase whose callouts hold it, if any. Both sides can wait at once (a
    /// request chunk's callout while the response headers' holds the response), and each
    /// resumes on its own.
    paused: [Option<Phase>; 2],
    /// The running callback asked to resume its side (`resume_http_*()`): the driver lets it
    /// go once the callback returned.
    resume_asked: bool,
    /// The running callback's side, and whether its call holds that side (not detached, its
    /// phase's wait not over). A call that holds nothing can't resume it, and the side's
    /// headers went on: writing them is an error (Envoy would drop the write without a word).
    pub callback: Option<(Side, bool)>,
    /// The response headers went on to the client: a local response can't replace them.
    pub response_sent: bool,
    /// The part of the request body the body functions act on, kept in step with the writes.
    pub request_body: BodyView,
    pub response_body: BodyView,
    /// Whether a body (or trailers) follows the request / response headers.
    pub request_has_body: bool,
    pub response_has_body: bool,
    /// How the header phase asked for the request / response body to be handled.
    pub request_body_choice: BodyChoice,
    pub response_body_choice: BodyChoice,
    /// What only some scripts need, made when one first does (kept out of the state every
    /// stream allocates).
    pub rare: Option<Box<RareState>>,
    /// Script errors waiting for the log phase, where the request id is known again.
    pub deferred_errors: Vec<String>,
    /// Callouts this request made, its callbacks' included (for `limits.max_callouts`).
    pub callouts_made: usize,
    /// Where each side's headers stand with the body's framing.
    pub framing: Framing,
}

/// What each side's headers still need for the body's framing. Kept in the stream's state,
/// where every resume finds it (the script's `resume_http_*()`, the driver's, the error
/// policy's): the headers may go on at any of them, and `content-length` must be settled by
/// then. Per side, bits of [`Side::bit`].
#[derive(Default, Clone, Copy)]
pub(crate) struct Framing {
    /// The header phase ended with the headers held (callouts, `PAUSE`): their
    /// `content-length` is settled when they go on, for the body's mode then.
    held: u8,
    /// The headers wait for the body phase, which sets `content-length` to the body's
    /// length (allow_on_headers_stop_iteration).
    for_body: u8,
    /// The headers went on: the body's mode can't change any more.
    released: u8,
    /// The script can change the body ([`crate::plugin::Script::changes_body`]).
    writes: u8,
    /// The script defines the body phase, the chunk phase.
    buffers: u8,
    streams: u8,
    /// Its bodies pass untouched (a websocket, CONNECT: see `on_request_headers`).
    pub upgraded: bool,
}

impl Framing {
    /// For a stream of `script`.
    pub(crate) fn of(script: &crate::plugin::Script) -> Self {
        let bits = |f: &dyn Fn(Side) -> bool| {
            [Side::Request, Side::Response]
                .into_iter()
                .filter(|&side| f(side))
                .fold(0, |bits, side| bits | side.bit())
        };
        Self {
            writes: bits(&|side| script.changes_body(side)),
            buffers: bits(&|side| script.defines(side.body_phase())),
            streams: bits(&|side| script.defines(side.chunk_phase())),
            ..Self::default()
        }
    }

    /// Whether `side`'s headers went on, so the body's mode is settled.
    pub(crate) fn released(&self, side: Side) -> bool {
        self.released & side.bit() != 0
    }
}

impl StreamState {
    /// The phase whose callouts hold `side`, if any.
    pub(crate) fn paused_by(&self, side: Side) -> Option<Phase> {
        self.paused[side as usize]
    }

    fn set_paused(&mut self, side: Side, phase: Option<Phase>) {
        self.paused[side as usize] = phase;
    }

    /// `resume_http_*()` in a callback of `phase`: when the callback's call holds `side`, its
    /// headers' framing is settled now (a body mode chosen after this is refused), and the
    /// driver lets the side go once the callback returned, whatever callouts are still out.
    /// Returns whether it will.
    pub(crate) fn ask_resume(&mut self, host: &impl Host, side: Side, phase: Phase) -> bool {
        if self.callback != Some((side, true))
            || self.paused_by(side) != Some(phase)
            || self.resume_asked
            || self.local_response_sent
        {
            return false;
        }
        self.resume_asked = true;
        self.release_headers(host, side);
        true
    }

    pub(crate) fn view(&self, buffer: BufferType) -> BodyView {
        match buffer {
            BufferType::HttpRequestBody => self.request_body,
            _ => self.response_body,
        }
    }

    /// The part of a body the body functions act on.
    pub(crate) fn view_mut(&mut self, buffer: BufferType) -> &mut BodyView {
        match buffer {
            BufferType::HttpRequestBody => &mut self.request_body,
            _ => &mut self.response_body,
        }
    }

    /// Just before `side`'s held headers go on: `content-length` is dropped when the script
    /// can change the body and it goes through a body or chunk phase in its mode now, or
    /// when the body phase that was to set it has not ended.
    pub(crate) fn release_headers(&mut self, host: &impl Host, side: Side) {
        let bit = side.bit();
        if self.framing.held & bit == 0 {
            return;
        }
        let passes = self.body_mode(side) != BodyMode::Untouched;
        let f = &mut self.framing;
        let early = f.for_body & bit != 0;
        f.held &= !bit;
        f.for_body &= !bit;
        f.released |= bit;
        if (early || passes) && f.writes & bit != 0 {
            let _ = host.remove_map_value(side.headers(), "content-length");
        }
    }

    /// How a message's body goes through the plugin: see `Body phases` in the README.
    fn body_mode(&self, side: Side) -> BodyMode {
        let f = &self.framing;
        if f.upgraded {
            return BodyMode::Untouched;
        }
        let choice = match side {
            Side::Request => self.request_body_choice,
            Side::Response => self.response_body_choice,
        };
        let buffered = f.buffers & side.bit() != 0;
        let streamed = f.streams & side.bit() != 0;
        match choice {
            BodyChoice::Skip => BodyMode::Untouched,
            BodyChoice::Buffer if buffered => BodyMode::Buffered,
            _ if streamed => BodyMode::Streamed,
            _ if buffered => BodyMode::Buffered,
            _ => BodyMode::Untouched,
        }
    }

    pub(crate) fn choice_mut(&mut self, side: Side) -> &mut BodyChoice {
        match side {
            Side::Request => &mut self.request_body_choice,
            Side::Response => &mut self.response_body_choice,
        }
    }

    pub(crate) fn rare_mut(&mut self) -> &mut RareState {
        self.rare.get_or_insert_with(Box::default)
    }

    pub(crate) fn splitter_mut(&mut self, side: Side) -> &mut Splitter {
        let [request, response] = &mut self.rare_mut().splitters;
        match side {
            Side::Request => request,
            Side::Response => response,
        }
    }
}

/// A stream's state that only some scripts need.
#[derive(Default)]
pub(crate) struct RareState {
    /// The incomplete events or lines `sse_events` / `lines` carry to the next chunk.
    pub splitters: [Splitter; 2],
    /// The queries of the Redis calls in flight, by token: kept to send one again after a
    /// `NOAUTH` reply.
    pub redis_queries: Vec<(u32, RedisQuery)>,
}

/// The part of the proxy's body buffer a call reads and writes: the whole body in a body
/// phase, the current chunk in a chunk phase (the buffer may hold chunks already handled
/// before it, and an incomplete UTF-8 character after it).
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct BodyView {
    /// Bytes of the buffer before it.
    pub start: usize,
    /// Its length, as the call's writes left it.
    pub len: usize,
    /// Bytes of the buffer after it.
    pub after: usize,
    /// The proxy holds no buffer to write to: the data went on before the trailers came.
    pub closed: bool,
    /// The body or chunk a callback's call was made for went on before its answer (the
    /// script resumed the stream in an earlier callback): reading or writing it is an error.
    pub gone: bool,
}

/// What the header phase chose for a message's body (`buffer_*_body()`, `stream_*_body()`,
/// `skip_*_body()`).
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum BodyChoice {
    /// The script's phase functions decide: streamed when it defines the chunk function.
    #[default]
    Default,
    Buffer,
    Stream,
    Skip,
}

/// "the chunk given to on_response_chunk": what an error about a chunk's text names.
#[derive(Clone, Copy)]
struct ChunkOf(Phase);

impl std::fmt::Display for ChunkOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the chunk given to {}", self.0)
    }
}

/// How a message's body goes through the plugin.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BodyMode {
    Untouched,
    Buffered,
    Streamed,
}

/// A callout waiting for its answer.
pub(crate) struct PendingCall {
    pub id: u32,
    pub phase: Phase,
    pub callback: FnPtr,
    /// When its timeout expires, by the proxy's clock (nanoseconds since the epoch).
    pub deadline_nanos: u64,
    /// A Redis call, not an HTTP callout (tokens of the two kinds may be equal). A flag, so
    /// that a callout's entry is no larger: its query is in [`RareState::redis_queries`].
    pub redis: bool,
    /// Its phase's wait ended before its answer (`resume_http_*()` in a sibling's callback):
    /// it holds nothing, and its callback leaves the stream alone.
    pub detached: bool,
}

/// What a Redis call sent, kept to send it again after a `NOAUTH` reply.
pub(crate) struct RedisQuery {
    pub cluster: String,
    pub query: Vec<u8>,
    /// It was sent again already: the next reply goes to the callback, whatever it is.
    pub retried: bool,
}

/// Whether a reply is Redis's `NOAUTH Authentication required`: the cluster must sign in again
/// (the text Higress's Go wrapper looks for).
fn needs_auth(reply: &Dynamic) -> bool {
    reply.read_lock::<rhai::Map>().is_some_and(|map| {
        map.get("error")
            .and_then(|e| {
                e.read_lock::<rhai::ImmutableString>()
                    .map(|e| e.contains("NOAUTH Authentication required"))
            })
            .unwrap_or(false)
    })
}

/// How much earlier than a callout's deadline, by the proxy's clock, its timeout may still be
/// reported: Envoy's timers run on a monotonic clock read once per event-loop iteration, the
/// plugin's on the system clock read at dispatch.
const TIMER_SLACK_NANOS: u64 = 100_000_000;

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

    fn headers_phase(self) -> Phase {
        match self {
            Side::Request => Phase::RequestHeaders,
            Side::Response => Phase::ResponseHeaders,
        }
    }

    fn body_phase(self) -> Phase {
        match self {
            Side::Request => Phase::RequestBody,
            Side::Response => Phase::ResponseBody,
        }
    }

    fn chunk_phase(self) -> Phase {
        match self {
            Side::Request => Phase::RequestChunk,
            Side::Response => Phase::ResponseChunk,
        }
    }

    fn trailers_phase(self) -> Phase {
        match self {
            Side::Request => Phase::RequestTrailers,
            Side::Response => Phase::ResponseTrailers,
        }
    }

    pub(crate) fn buffer(self) -> BufferType {
        match self {
            Side::Request => BufferType::HttpRequestBody,
            Side::Response => BufferType::HttpResponseBody,
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Side::Request => 1,
            Side::Response => 2,
        }
    }

    pub(crate) fn headers(self) -> MapType {
        match self {
            Side::Request => MapType::HttpRequestHeaders,
            Side::Response => MapType::HttpResponseHeaders,
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
    /// Per side ([`Side::bit`]): the header phase returned `PAUSE` with no callout, so nothing
    /// resumes the stream. (Bits here, not in [`SideState`]: a larger stream moved the
    /// allocator's work per request.)
    stopped: u8,
}

/// Where one direction of the stream stands with its body and trailers.
#[derive(Default)]
struct SideState {
    /// Buffered: size of the body buffered so far while the body phase waits for the end.
    body_seen: Option<usize>,
    /// Trailers arrived while a body or chunk call waited for callouts: their phase runs after.
    trailers_deferred: bool,
    /// Streamed: bytes in the proxy's buffer (what the plugin holds, then new data).
    size: usize,
    /// Streamed: bytes at the start of that buffer the chunk function already had.
    done: usize,
    /// Streamed: where the chunk that waits for its callouts starts (their callbacks act on it).
    paused_chunk: Option<usize>,
    /// Streamed: that chunk's call also returned `PAUSE`: once the callouts are answered, what
    /// the plugin holds stays held for the next call that doesn't pause.
    pause_after_calls: bool,
    /// Streamed: the data ended (end of stream, or the trailers came).
    ended: bool,
    /// Streamed: the trailers came (then the proxy holds no buffer unless the plugin held data).
    trailers_came: bool,
    /// Streamed: the call with `last = true` was made.
    last_given: bool,
}

/// Where the request id goes in an error line logged later.
const REQUEST_ID_SLOT: &str = "\u{0}id\u{0}";

/// How a script call ended.
type CallResult = Result<Dynamic, Box<EvalAltResult>>;

/// Whether a phase function's value asks to pause the stream (`PAUSE`). Most return `()`,
/// checked first: the cast costs ~50 wasm instructions.
fn asks_to_pause(returned: Dynamic) -> bool {
    !returned.is_unit() && returned.try_cast::<PhaseAction>() == Some(PhaseAction::Pause)
}

/// What to call in the script.
enum Call {
    Phase,
    Chunk(Dynamic, bool),
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
            stopped: 0,
        }
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        self.selection = self.plugin.select();
        if let Some(selection) = &self.selection {
            self.state.framing = selection.script.framing();
        }
        self.state.request_has_body = !end_of_stream;
        if !end_of_stream
            && (self.body_mode(Side::Request) != BodyMode::Untouched
                || self.body_mode(Side::Response) != BodyMode::Untouched)
            && self.is_upgrade()
        {
            // An upgraded stream (websocket, CONNECT) ends when the connection does: a body
            // phase waiting for its end would hold every byte of it. Its bodies pass untouched.
            self.state.framing.upgraded = true;
        }
        let action = self.run_phase(Phase::RequestHeaders);
        self.prepare_body(Side::Request, end_of_stream, action)
    }

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let action = self.on_data(Side::Request, body_size, end_of_stream);
        self.let_headers_go(Side::Request, action)
    }

    /// Trailers end the body: a body or chunk call still waiting for the end runs first.
    pub fn on_request_trailers(&mut self) -> Action {
        let action = self.on_trailers(Side::Request);
        self.let_headers_go(Side::Request, action)
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        self.state.response_has_body = !end_of_stream;
        let action = self.run_phase(Phase::ResponseHeaders);
        let action = self.prepare_body(Side::Response, end_of_stream, action);
        self.state.response_sent |= action == Action::Continue;
        action
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let action = self.on_data(Side::Response, body_size, end_of_stream);
        self.let_headers_go(Side::Response, action)
    }

    pub fn on_response_trailers(&mut self) -> Action {
        let action = self.on_trailers(Side::Response);
        self.let_headers_go(Side::Response, action)
    }

    /// A body or trailers call returns `action`: `Continue` lets go headers the header phase
    /// held too (Envoy delivers data while they wait with allow_on_headers_stop_iteration),
    /// so their `content-length` is settled first.
    fn let_headers_go(&mut self, side: Side, action: Action) -> Action {
        if action == Action::Continue {
            self.state.release_headers(&self.plugin.api.host, side);
            self.state.response_sent |= side == Side::Response;
        }
        action
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
    /// dispatched it, then resumes the stream once no call of that phase holds it.
    pub fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let Some(index) = self.pending_call(token, false) else {
            return; // dropped when the stream was answered
        };
        let call = self.state.calls.remove(index);
        let arity = self.callback_arity(&call.callback, CALLBACK_PARAMETERS);
        let args = self.call_answer(&call, num_headers, body_size, arity);
        self.call_back(call, Some(CallAnswer { body_size }), args);
    }

    /// A Redis reply came (Higress's `proxy_on_redis_call_response`; `status` 0: a reply of
    /// `size` bytes, else the call failed). Runs its callback with the reply as a Rhai value, as
    /// a callout's, except after a first `NOAUTH` reply: the call is sent again once the
    /// cluster is initialised again (as Higress's wrapper does).
    pub fn on_redis_call_response(&mut self, token: u32, status: u32, size: usize) {
        let Some(index) = self.pending_call(token, true) else {
            return; // dropped when the stream was answered
        };
        let reply = match self.state.calls.get(index) {
            Some(call) => self.redis_reply(call, status, size),
            None => return,
        };
        let queries = &mut self.state.rare_mut().redis_queries;
        let query = queries.iter().position(|(id, _)| *id == token);
        let query = query.map(|i| queries.swap_remove(i).1);
        if let Some(query) = query.filter(|q| !q.retried && reply.as_ref().is_ok_and(needs_auth)) {
            if let Some(id) = self.plugin.api.redis_retry(&query) {
                if let Some(call) = self.state.calls.get_mut(index) {
                    call.id = id;
                }
                let retried = RedisQuery {
                    retried: true,
                    ..query
                };
                self.state.rare_mut().redis_queries.push((id, retried));
                return;
            }
        }
        let call = self.state.calls.remove(index);
        let arity = self.callback_arity(&call.callback, REDIS_CALLBACK_PARAMETERS);
        let args = reply.map(|reply| if arity == 0 { Vec::new() } else { vec![reply] });
        self.call_back(call, None, args);
    }

    /// Where the call `token` (a Redis call or a callout: their tokens may be equal) waits.
    fn pending_call(&self, token: u32, redis: bool) -> Option<usize> {
        self.state
            .calls
            .iter()
            .position(|c| c.id == token && c.redis == redis)
    }

    /// The reply to a Redis call as its callback gets it; a script error when it is past the
    /// limits (as a callout's answer is).
    fn redis_reply(
        &self,
        call: &PendingCall,
        status: u32,
        size: usize,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        let api = &self.plugin.api;
        if status != 0 {
            let now = api.host.current_time_nanos().unwrap_or(u64::MAX);
            let kind =
                crate::bindings::redis::failure_kind(now, call.deadline_nanos, TIMER_SLACK_NANOS);
            let message = match kind {
                "timeout" => "no reply from Redis in time",
                _ => "cannot connect to Redis",
            };
            return Ok(crate::resp::error_map(message, kind));
        }
        let what = "the Redis reply (the callback's `reply`)";
        let limits = &self.plugin.config.limits;
        crate::sandbox::check_text_len(what, size, limits.max_string_size)?;
        if let Some(message) = api.over_memory_budget(size) {
            return Err(format!("{what}: {message}").into());
        }
        let bytes = match api.host.redis_reply(size) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                let message = format!("the proxy gave no Redis reply ({status:?})");
                return Ok(crate::resp::error_map(&message, "redis"));
            }
        };
        let bounds = crate::resp::Bounds {
            max_array: limits.max_array_size,
            max_depth: limits.max_value_depth,
        };
        match crate::resp::decode(&bytes, bounds) {
            Ok(value) => Ok(value),
            Err(crate::resp::DecodeError::Malformed(message)) => {
                Ok(crate::resp::error_map(&message, "redis"))
            }
            Err(crate::resp::DecodeError::Limit(message)) => Err(message.into()),
        }
    }

    /// Runs a callout's (or a Redis call's) callback in the phase that made the call, with
    /// `args` (or fails as a callback that threw, when the answer couldn't be given), then
    /// lets the side go once no call of that phase holds it.
    fn call_back(
        &mut self,
        call: PendingCall,
        answer: Option<CallAnswer>,
        args: Result<Vec<Dynamic>, Box<EvalAltResult>>,
    ) {
        let side = Side::of(call.phase);
        // The call holds the side: else the script let it go in an earlier callback (what the
        // proxy held went on then, without the plugin), or another phase's callouts hold it
        // now, and this callback leaves the stream as it is.
        let holds = self.state.paused_by(side) == Some(call.phase) && !call.detached;
        let chunk = call.phase.is_chunk();
        let body = chunk || call.phase == side.body_phase();
        let sent_from = self.state.calls.len();
        self.state.callback = Some((side, holds));
        let result = args.and_then(|args| {
            if holds && chunk {
                self.view_paused_chunk(side);
            }
            let view = *self.state.view_mut(side.buffer());
            if !holds && body {
                *self.state.view_mut(side.buffer()) = BodyView {
                    gone: true,
                    ..BodyView::default()
                };
            }
            let result = self.enter(call.phase, answer, Call::Callback(call.callback, args));
            if !holds && body {
                *self.state.view_mut(side.buffer()) = view;
            } else if chunk {
                // The callback may have rewritten the chunk: what the buffer holds moved.
                let view = *self.state.view_mut(side.buffer());
                let s = self.side_mut(side);
                s.done = view.start + view.len;
                s.size = s.done + view.after;
            }
            result
        });
        self.state.callback = None;
        let asked = std::mem::take(&mut self.state.resume_asked);
        if !holds {
            // What a callback that holds nothing sends holds nothing either (a chain from a
            // late callback): the stream went on without them.
            for sent in self.state.calls.iter_mut().skip(sent_from) {
                sent.detached = true;
            }
        }
        // fail_open: the stream goes on as after a callback that wrote nothing.
        if let Err(e) = result {
            if !holds {
                self.state.calls.truncate(sent_from); // the callouts it sent, and no other
            }
            if self.fail(call.phase, &e, true, holds) == Action::Pause {
                return; // fail_closed answered
            }
        }
        if !holds || self.state.local_response_sent || self.pending(side) && !asked {
            return;
        }
        for late in self
            .state
            .calls
            .iter_mut()
            .filter(|c| c.phase == call.phase)
        {
            late.detached = true;
        }
        if asked {
            // The script's resume comes after the chunk's `PAUSE`: it lets the pieces go.
            self.side_mut(side).pause_after_calls = false;
        }
        self.state.set_paused(side, None);
        self.let_go(side, call.phase);
    }

    /// `phase`'s callouts no longer hold `side`: what arrived meanwhile goes through the body
    /// or chunk function (Envoy forwards held data without calling the filter again), the
    /// deferred trailers phase runs, then the side resumes, unless one of them holds it again.
    fn let_go(&mut self, side: Side, phase: Phase) {
        if phase == side.headers_phase()
            && !self.state.framing.released(side)
            && self.has_body(side)
        {
            // The callbacks may have chosen another mode for the body.
            self.hold_for_body(side);
        }
        let mode = self.body_mode(side);
        if mode == BodyMode::Buffered && phase == side.body_phase() {
            self.fit_content_length(side);
        }
        let s = self.side(side);
        if mode == BodyMode::Buffered
            && (self.state.framing.for_body & side.bit() != 0 || s.body_seen.is_some())
        {
            // The header phase's callouts are answered while the headers wait for the body
            // phase, or the body came while they held the stream (Envoy delivers it then only
            // with allow_on_headers_stop_iteration): the body phase lets the stream go.
            if !s.ended {
                return; // the rest of the body still comes to the plugin
            }
            if let Some(size) = s.body_seen {
                if self.on_body(side.body_phase(), size, true) == Action::Pause {
                    return; // its own callouts (or a local response) take over
                }
            }
        }
        if mode == BodyMode::Streamed {
            let s = self.side_mut(side);
            s.paused_chunk = None;
            let paused = std::mem::take(&mut s.pause_after_calls) && !s.ended;
            let unseen = s.size > s.done || (s.ended && !s.last_given);
            if unseen && self.run_chunks(side) == Action::Pause {
                return; // held again: the next data, or its callouts, go on from here
            }
            if !unseen && paused {
                return; // the chunk's `PAUSE`: the next call that doesn't pause lets it go
            }
            let s = self.side_mut(side);
            (s.done, s.size) = (0, 0);
        }
        if std::mem::take(&mut self.side_mut(side).trailers_deferred)
            && self.run_phase(side.trailers_phase()) == Action::Pause
        {
            return; // paused again: its own callouts (or a local response) take over
        }
        self.resume(side);
    }

    /// The callback's arguments — status (0 without an answer), headers, body, failure — as
    /// many as it takes: the headers and body are only converted for a callback that reads
    /// them. The body is the text `get_http_call_response_body()` gives, and refused as it is
    /// when that text would be longer than the string size limit (the callback doesn't run).
    fn call_answer(
        &self,
        call: &PendingCall,
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
            let body = crate::sandbox::text_within(what, body, max)?;
            let failure = match arity >= 4 {
                true => Some(self.call_failure(call, num_headers, status, &body)),
                false => None,
            };
            args.push(body.into());
            if let Some(failure) = failure {
                args.push(failure.map_or(Dynamic::UNIT, Dynamic::from));
            }
        }
        Ok(args)
    }

    /// Why a callout got no real answer, told apart from a target's own 504 or 503 by what only
    /// Envoy sends (measured in Envoy 1.40): no headers at all for a reset after the answer
    /// began; for a timeout, its own 504 with exactly `:status`, `content-length` and
    /// `content-type` and the body `upstream request timeout`, no earlier than the call's
    /// deadline; for a target it can't reach (or that resets before answering), its own 503
    /// with those headers and `upstream connect error or disconnect/reset before headers. reset
    /// reason: …`.
    fn call_failure(
        &self,
        call: &PendingCall,
        num_headers: usize,
        status: i64,
        body: &str,
    ) -> Option<&'static str> {
        if num_headers == 0 {
            return Some("reset");
        }
        let own = |expected: &str| (num_headers == 3 && body.starts_with(expected)).then_some(body);
        match status {
            504 => own(crate::emulator::UPSTREAM_TIMEOUT_BODY)
                .filter(|body| *body == crate::emulator::UPSTREAM_TIMEOUT_BODY)
                .filter(|_| {
                    let now = self
                        .plugin
                        .api
                        .host
                        .current_time_nanos()
                        .unwrap_or(u64::MAX);
                    now.saturating_add(TIMER_SLACK_NANOS) >= call.deadline_nanos
                })
                .map(|_| "timeout"),
            503 => own(crate::emulator::UPSTREAM_RESET_BEFORE_HEADERS).map(|body| {
                match body.contains("connection failure") {
                    true => "connect_failure",
                    false => "reset",
                }
            }),
            _ => None,
        }
    }

    /// How many of `|status, headers, body|` a callback takes (a closure's captured variables
    /// come first among its function's parameters).
    fn callback_arity(&self, callback: &FnPtr, given: &[&str]) -> usize {
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
            .map_or(given.len().min(3), |params| {
                params
                    .saturating_sub(callback.curry().len())
                    .min(given.len())
            })
    }

    fn defines(&self, phase: Phase) -> bool {
        self.selection
            .as_ref()
            .is_some_and(|s| s.script.defines(phase))
    }

    /// Whether the message has a body: its headers did not end the stream.
    fn has_body(&self, side: Side) -> bool {
        match side {
            Side::Request => self.state.request_has_body,
            Side::Response => self.state.response_has_body,
        }
    }

    /// How a message's body goes through the plugin: see `Body phases` in the README.
    fn body_mode(&self, side: Side) -> BodyMode {
        self.state.body_mode(side)
    }

    fn side(&self, side: Side) -> &SideState {
        match side {
            Side::Request => &self.request,
            Side::Response => &self.response,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut SideState {
        match side {
            Side::Request => &mut self.request,
            Side::Response => &mut self.response,
        }
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

    /// Whether callouts hold `side`.
    fn pending(&self, side: Side) -> bool {
        self.state
            .calls
            .iter()
            .any(|c| Side::of(c.phase) == side && !c.detached)
    }

    /// Whether the call into `phase` that just returned left callouts to wait for.
    fn waits_for_calls(&self, phase: Phase) -> bool {
        self.state
            .calls
            .iter()
            .any(|c| c.phase == phase && !c.detached)
    }

    /// Runs a phase function when the script defines it, and decides the proxy's action.
    fn run_phase(&mut self, phase: Phase) -> Action {
        if !self.defines(phase) || self.state.local_response_sent {
            return Action::Continue;
        }
        let returned = match self.enter(phase, None, Call::Phase) {
            Ok(value) => value,
            Err(e) => return self.fail(phase, &e, false, true),
        };
        if self.state.local_response_sent {
            self.state.calls.clear();
            return Action::Pause;
        }
        if self.waits_for_calls(phase) {
            self.state.set_paused(Side::of(phase), Some(phase));
            return Action::Pause;
        }
        if asks_to_pause(returned) {
            Action::Pause
        } else {
            Action::Continue
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
            frame.defines = selection.script.phases();
            // Boxes swapped, not states: moving a whole state in and out cost ~280 wasm
            // instructions per call, more than the box's one allocation per stream.
            std::mem::swap(&mut frame.stream, &mut self.state);
        }
        let script = &selection.script;
        let result = self.cells.record(|| match call {
            Call::Phase => script.call(&plugin.engine, Some(phase)),
            Call::Chunk(chunk, last) => script.call_chunk(&plugin.engine, phase, chunk, last),
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

    /// A piece of the body arrived (`size`: what the proxy's buffer holds now).
    #[inline]
    fn on_data(&mut self, side: Side, size: usize, end_of_stream: bool) -> Action {
        if self.state.local_response_sent {
            return Action::Continue;
        }
        let held = self.held_back(side);
        if held {
            // Callouts hold the stream: the proxy buffers what arrives. Kept for when they are
            // answered, in whichever mode the callbacks leave the body (those of the header
            // phase may choose another).
            let s = self.side_mut(side);
            (s.size, s.ended, s.body_seen) = (size, end_of_stream, Some(size));
        }
        match self.body_mode(side) {
            BodyMode::Untouched if held => Action::Pause,
            BodyMode::Untouched => Action::Continue,
            BodyMode::Buffered => self.on_body(side.body_phase(), size, end_of_stream),
            BodyMode::Streamed if held => Action::Pause,
            BodyMode::Streamed => {
                let s = self.side_mut(side);
                s.size = size;
                s.ended = end_of_stream;
                self.run_chunks(side)
            }
        }
    }

    /// A body phase runs once, on the whole body: until the end the proxy buffers.
    fn on_body(&mut self, phase: Phase, body_size: usize, end_of_stream: bool) -> Action {
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
        let side = Side::of(phase);
        if !end_of_stream || self.held_back(side) {
            let s = self.side_mut(side);
            s.body_seen = Some(body_size);
            s.ended = end_of_stream;
            return Action::Pause;
        }
        self.side_mut(side).body_seen = None;
        *self.state.view_mut(side.buffer()) = BodyView {
            len: body_size,
            ..BodyView::default()
        };
        let action = self.run_phase(phase);
        if action == Action::Continue {
            self.fit_content_length(side);
        }
        action
    }

    /// Whether the header phase holds the stream (its callouts, or a `PAUSE`) while the body
    /// arrives: Envoy delivers a body then only with allow_on_headers_stop_iteration (else it
    /// holds the body back too). The body waits in the proxy's buffer.
    fn held_back(&self, side: Side) -> bool {
        self.state.paused_by(side).is_some() || self.stopped & side.bit() != 0
    }

    /// Gives the chunk function what the proxy's buffer holds past what it already had, and
    /// decides whether the buffer goes on (`Continue`) or stays held (`Pause`): for the chunk's
    /// callouts, for an incomplete UTF-8 character at its end (it comes with the next chunk),
    /// or because the function returned `PAUSE`.
    fn run_chunks(&mut self, side: Side) -> Action {
        let phase = side.chunk_phase();
        let buffer = side.buffer();
        let s = self.side(side);
        let (start, size, ended) = (s.done, s.size, s.ended);
        let closed = s.trailers_came && size == 0;
        if ended && s.last_given {
            return Action::Continue;
        }
        let api = &self.plugin.api;
        let fresh = if size > start {
            match api.host.get_buffer(buffer, start, size - start) {
                Ok(bytes) => bytes.unwrap_or_default(),
                Err(status) => {
                    api.log_plugin(
                        LogLevel::Warn,
                        &format!("{phase}: the proxy refused to read the chunk ({status:?})"),
                    );
                    return Action::Continue;
                }
            }
        } else {
            Vec::new()
        };
        let len = fresh.len();
        let (complete, fresh) = crate::bindings::streaming::complete_utf8(fresh);
        let cut = if ended { len } else { complete };
        if cut == 0 && !ended {
            return if size > 0 {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        let tail = len - cut;
        let chunk = match self.chunk_text(phase, fresh, cut) {
            Ok(chunk) => chunk,
            Err(e) => return self.fail(phase, &e, false, true),
        };
        *self.state.view_mut(buffer) = BodyView {
            start,
            len: cut,
            after: tail,
            closed,
            gone: false,
        };
        self.side_mut(side).last_given = ended;
        let returned = match self.enter(phase, None, Call::Chunk(chunk, ended)) {
            Ok(value) => value,
            Err(e) => return self.fail(phase, &e, false, true),
        };
        if self.state.local_response_sent {
            self.state.calls.clear();
            return Action::Pause;
        }
        let written = self.state.view_mut(buffer).len;
        let waiting = self.waits_for_calls(phase);
        let s = self.side_mut(side);
        s.done = start + written;
        s.size = s.done + tail;
        let hold = !ended && asks_to_pause(returned);
        if waiting {
            s.paused_chunk = Some(start);
            s.pause_after_calls = hold;
            self.state.set_paused(side, Some(phase));
            return Action::Pause;
        }
        if tail > 0 || hold {
            return Action::Pause;
        }
        (s.done, s.size) = (0, 0);
        Action::Continue
    }

    /// The chunk as the chunk function's first argument: a string of its first `cut` bytes,
    /// invalid UTF-8 replaced. `fresh` is the text when all of it is valid UTF-8 (then `cut` is
    /// all of it), else the bytes.
    fn chunk_text(
        &self,
        phase: Phase,
        fresh: Result<String, Vec<u8>>,
        cut: usize,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        // Formatted only for an error: a chunk call is otherwise ~500 wasm instructions dearer.
        let what = ChunkOf(phase);
        if let Some(message) = self.plugin.api.over_memory_budget(cut) {
            return Err(format!("{what}: {message}").into());
        }
        let max = self.plugin.engine.max_string_size();
        let text = match fresh {
            Ok(text) => {
                crate::sandbox::check_text_len(what, text.len(), max)?;
                text
            }
            Err(mut bytes) => {
                bytes.truncate(cut);
                crate::sandbox::text_within(what, bytes, max)?
            }
        };
        Ok(text.into())
    }

    /// Before a callback of a chunk phase: the body functions act on that chunk.
    fn view_paused_chunk(&mut self, side: Side) {
        let s = self.side(side);
        if let Some(start) = s.paused_chunk {
            let view = BodyView {
                start,
                len: s.done - start,
                after: s.size.saturating_sub(s.done),
                // As for the call that made the callouts: the trailers came, nothing held.
                closed: s.trailers_came && s.size == 0,
                gone: false,
            };
            *self.state.view_mut(side.buffer()) = view;
        }
    }

    fn on_trailers(&mut self, side: Side) -> Action {
        let mode = self.body_mode(side);
        if mode != BodyMode::Streamed && self.held_back(side) && !self.state.local_response_sent {
            // The header phase holds the stream: the body phase (when it has a body) and the
            // trailers phase run when its callouts are answered.
            let s = self.side_mut(side);
            s.ended = true;
            s.trailers_deferred = true;
            return Action::Pause;
        }
        match mode {
            BodyMode::Buffered => {
                if let Some(size) = self.side(side).body_seen {
                    if self.on_body(side.body_phase(), size, true) == Action::Pause {
                        // Waiting for the body phase's callouts: the trailers phase runs after.
                        self.side_mut(side).trailers_deferred = !self.state.local_response_sent;
                        return Action::Pause;
                    }
                }
            }
            BodyMode::Streamed if !self.state.local_response_sent => {
                // Held by callouts, or by the header phase's `PAUSE`, which holds the whole
                // message (as it does a buffered one): the trailers wait too.
                let held = self.held_back(side);
                let s = self.side_mut(side);
                s.ended = true;
                s.trailers_came = true;
                if held {
                    s.trailers_deferred = true;
                    return Action::Pause;
                }
                // The data is over: the chunk function's call with `last = true`.
                if self.run_chunks(side) == Action::Pause {
                    self.side_mut(side).trailers_deferred = !self.state.local_response_sent;
                    return Action::Pause;
                }
            }
            _ => {}
        }
        self.run_phase(side.trailers_phase())
    }

    /// After a header phase (`action`: what it returned), before the body. A body or chunk
    /// phase of a script that can change the body may change its length: when the headers go
    /// on before it, `content-length` is dropped so the message stays well-formed (the proxy
    /// frames it anew), as [`StreamState::release_headers`] decides when they go: now, or at
    /// the resume that lets them go when the phase holds them (its callbacks may still choose
    /// the body's mode). With allow_on_headers_stop_iteration the plugin holds a buffered
    /// message's headers instead (Envoy then delivers the body while they wait), and sets
    /// `content-length` after the body phase.
    #[inline]
    fn prepare_body(&mut self, side: Side, end_of_stream: bool, action: Action) -> Action {
        if end_of_stream || self.state.local_response_sent {
            return action;
        }
        if action == Action::Pause && !self.pending(side) {
            self.stopped |= side.bit();
        }
        self.state.framing.held |= side.bit();
        if self.hold_for_body(side) {
            return Action::Pause;
        }
        if action == Action::Continue {
            self.state.release_headers(&self.plugin.api.host, side);
        }
        action
    }

    /// Whether the headers wait for the body phase (a buffered body, with
    /// allow_on_headers_stop_iteration), decided for the body's mode now.
    fn hold_for_body(&mut self, side: Side) -> bool {
        let hold = self.body_mode(side) == BodyMode::Buffered
            && self.plugin.config.allow_on_headers_stop_iteration;
        let f = &mut self.state.framing;
        if hold {
            f.for_body |= side.bit();
        } else {
            f.for_body &= !side.bit();
        }
        hold
    }

    /// After the body phase, while the plugin holds the headers for it: a `content-length`
    /// they have is set to the body's length as the phase left it, and they go on.
    fn fit_content_length(&mut self, side: Side) {
        let f = &mut self.state.framing;
        let bit = side.bit();
        if f.for_body & bit == 0 {
            return;
        }
        f.for_body &= !bit;
        f.held &= !bit;
        f.released |= bit;
        let len = self.state.view(side.buffer()).len.to_string();
        let host = &self.plugin.api.host;
        let map = side.headers();
        if let Ok(Some(old)) = host.get_map_value(map, "content-length") {
            if old != len.as_bytes() {
                if let Err(status) = host.replace_map_value(map, "content-length", len.as_bytes()) {
                    self.plugin.api.log_plugin(
                        LogLevel::Warn,
                        &format!("setting content-length failed: {status:?}"),
                    );
                }
            }
        }
    }

    /// Lets `side` go on in the proxy, its held headers' framing settled first. Called once
    /// per hold: by the last callback that held it, or the one that asked to resume.
    fn resume(&mut self, side: Side) {
        if self.state.local_response_sent {
            return;
        }
        let host = &self.plugin.api.host;
        self.state.release_headers(host, side);
        self.state.response_sent |= side == Side::Response;
        let resumed = match side {
            Side::Request => host.resume_http_request(),
            Side::Response => host.resume_http_response(),
        };
        if let Err(status) = resumed {
            self.plugin.api.log_plugin(
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
            self.plugin.api.describe_error(error)
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

    /// Applies the error policy to a failed script call. `ends_wait`: the call was the phase
    /// function, or a callback whose call held its side: the phase's callouts are dropped
    /// (the ones it sent; for a callback, its wait ends). Detached calls and another phase's
    /// keep their hold (a chunk's, while a late header callback fails): their callbacks
    /// resume it.
    fn fail(
        &mut self,
        phase: Phase,
        error: &EvalAltResult,
        in_callback: bool,
        ends_wait: bool,
    ) -> Action {
        self.log_error(phase, error, in_callback);
        let side = Side::of(phase);
        if ends_wait {
            self.state.calls.retain(|c| c.phase != phase || c.detached);
        }
        if !in_callback {
            // The proxy lets what it holds of this side go on (fail_open), or the stream ends.
            let s = self.side_mut(side);
            (s.done, s.size, s.paused_chunk) = (0, 0, None);
        }
        let policy = &self.plugin.config.error_policy;
        match policy.mode {
            FailMode::FailOpen => Action::Continue,
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

impl<H: Host> HttpStream<H> {
    /// The request's context values (`set_context`), as `to_debug` shows them.
    pub(crate) fn context(&self) -> Vec<(String, String)> {
        let context = &self.state.context;
        context
            .iter()
            .map(|(k, v)| (k.to_string(), format!("{v:?}")))
            .collect()
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
