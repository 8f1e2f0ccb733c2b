//! Every function and constant a script can use, bound once for every [`Host`].
//!
//! Each binding is declared with [`bind!`]: its Rhai name, the phases it is allowed in, its
//! documentation, and its body. The same declarations feed the engine and `api-docs/`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use rhai::{Array, Blob, Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map};

use crate::batch::{Batch, Value};
use crate::config::Limits;
use crate::header_check::{self, Target};
use crate::header_map::HeaderMap;
use crate::host::{BufferType, Host, LogLevel, MapType, Status};
use crate::phase::{Phase, Phases};
use crate::sandbox::{check_text_len, lossy, text_within};
use crate::stream::{Side, StreamState};

/// Result of a binding: a script error carries a message the script author can act on.
pub type ScriptResult<T> = Result<T, Box<EvalAltResult>>;

/// What a phase function may return; `PAUSE` stops the stream until a callback resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseAction {
    Continue,
    Pause,
}

/// The maps a call batches.
const BATCHED: [MapType; 4] = [
    MapType::HttpRequestHeaders,
    MapType::HttpResponseHeaders,
    MapType::HttpRequestTrailers,
    MapType::HttpResponseTrailers,
];

/// The answer a running callback may read.
#[derive(Clone, Copy)]
pub(crate) struct CallAnswer {
    pub body_size: usize,
}

/// What the bindings see while Rhai runs: the stream state lent by the driver.
#[derive(Default)]
pub(crate) struct Frame {
    pub answer: Option<CallAnswer>,
    pub stream: Box<StreamState>,
    /// What `config()` returns: the stream's (or rule's) config, shared and read-only.
    pub config: Dynamic,
    /// Heap in use when the current call into Rhai began (for `limits.max_memory`).
    pub heap_baseline: usize,
    /// The top-level constants of the running script.
    pub constants: Constants,
    /// This call's private copies of the constants it has read, by index in `constants`.
    pub constant_copies: Vec<Option<Dynamic>>,
    /// This call's header and trailer operations, sent to the proxy when it ends well.
    pub request_headers: Batch,
    pub response_headers: Batch,
    pub request_trailers: Batch,
    pub response_trailers: Batch,
    /// Whether the call used a batch: the end of a call that didn't has none to look at.
    batched: bool,
    /// This call's body writes, made in the proxy when it ends well.
    pub body_writes: Vec<BodyWrite>,
    /// The phase functions the running script defines.
    pub defines: Phases,
    /// The local response this call sent, handed to the proxy when it ends well.
    pub local_response: Option<LocalResponse>,
    /// Header maps as they were before this call's writes reached the proxy ahead of its end
    /// (for a property read): put back if the call fails.
    pub undo: Vec<(MapType, HeaderMap)>,
}

/// A body write waiting for its call to end: `data` over `size` bytes at `start` of the part
/// of the body the call acts on ([`crate::stream::BodyView`]), as the script saw it then.
pub(crate) struct BodyWrite {
    buffer: BufferType,
    start: usize,
    size: usize,
    data: Vec<u8>,
    /// That part's length before this write.
    len_before: usize,
}

/// A local response waiting for its call to end.
pub(crate) struct LocalResponse {
    status: u32,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Frame {
    /// The batch of a header map; `None` for the callout answer's maps, which are read-only.
    fn batch(&mut self, map: MapType) -> Option<&mut Batch> {
        self.batched = true;
        match map {
            MapType::HttpRequestHeaders => Some(&mut self.request_headers),
            MapType::HttpResponseHeaders => Some(&mut self.response_headers),
            MapType::HttpRequestTrailers => Some(&mut self.request_trailers),
            MapType::HttpResponseTrailers => Some(&mut self.response_trailers),
            _ => None,
        }
    }
}

/// Top-level constants of a script, by name, as its top-level statements made them. Nothing a
/// call does reaches these: each call reads a private copy ([`Api::constant`]).
#[derive(Clone, Default, Debug)]
pub(crate) struct Constants(pub Rc<[Constant]>);

impl Constants {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One top-level constant.
#[derive(Debug)]
pub(crate) struct Constant {
    pub name: ImmutableString,
    value: Dynamic,
    /// Whether `value` holds shared cells (a closure's captured variables, a shared value):
    /// a plain clone would share those with every call.
    has_cells: bool,
}

impl Constant {
    pub fn new(name: ImmutableString, value: Dynamic) -> Self {
        let value = value.flatten();
        let has_cells = holds_cells(&value);
        Self {
            name,
            value,
            has_cells,
        }
    }

    /// A copy that shares nothing with the original, read-only (so `C.push(x)` or `C[0] = x`
    /// is refused as on any constant) and shared for the rest of the call.
    fn private_copy(&self) -> Dynamic {
        let copy = if self.has_cells {
            copy_cells(&self.value)
        } else {
            self.value.clone()
        };
        copy.into_read_only().into_shared()
    }
}

/// Whether `value` holds a shared cell anywhere inside it.
fn holds_cells(value: &Dynamic) -> bool {
    if value.is_shared() {
        return true;
    }
    if let Some(array) = value.read_lock::<Array>() {
        return array.iter().any(holds_cells);
    }
    if let Some(map) = value.read_lock::<Map>() {
        return map.values().any(holds_cells);
    }
    if let Some(f) = value.read_lock::<FnPtr>() {
        return f.iter_curry().any(holds_cells);
    }
    false
}

/// A deep copy of `value` in which every shared cell is a new one. The depth is bounded by
/// `limits.max_value_depth`, which the value passed when the top level made it.
fn copy_cells(value: &Dynamic) -> Dynamic {
    if value.is_shared() {
        let inner = match value.read_lock::<Dynamic>() {
            Some(inner) => copy_cells(&inner),
            None => Dynamic::UNIT,
        };
        return inner.into_shared();
    }
    if let Some(array) = value.read_lock::<Array>() {
        return Dynamic::from_array(array.iter().map(copy_cells).collect());
    }
    if let Some(map) = value.read_lock::<Map>() {
        let copy: Map = map
            .iter()
            .map(|(k, v)| (k.clone(), copy_cells(v)))
            .collect();
        return Dynamic::from_map(copy);
    }
    if let Some(f) = value.read_lock::<FnPtr>() {
        let mut f = f.clone();
        for arg in f.iter_curry_mut() {
            *arg = copy_cells(arg);
        }
        return Dynamic::from(f);
    }
    value.clone()
}

/// `limits.max_memory` and `limits.max_vm_memory`, as the bindings check them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryLimits {
    pub per_call: usize,
    pub vm: usize,
}

impl From<&Limits> for MemoryLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            per_call: limits.max_memory,
            vm: limits.max_vm_memory,
        }
    }
}

/// The object every binding closes over.
pub(crate) struct Api<H> {
    pub host: H,
    /// The heap limits, checked where the heap counted by the host grows.
    pub memory: MemoryLimits,
    /// The phase of the call into Rhai that runs now; `None` outside a request (top-level
    /// statements, `on_tick`). Apart from the frame: every binding reads it.
    pub phase: Cell<Option<Phase>>,
    /// The running call's operation count, when the host counts them
    /// ([`Host::counts_operations`]).
    pub(crate) operations: Cell<u64>,
    pub frame: RefCell<Frame>,
    /// Metric ids, defined on first use.
    metrics: RefCell<metrics::Metrics>,
    /// The configuration's secrets, taken out of every line the plugin logs itself.
    pub redactor: Rc<crate::redact::Redactor>,
    /// The configuration's limits (those on the proxy's resources are checked here).
    pub limits: crate::config::Limits,
    /// Every bound function's name and parameters, for error messages that say what to fix.
    pub known: RefCell<Vec<crate::sandbox::KnownFn>>,
    /// The bindings compiled calls call directly.
    pub bindings: RefCell<crate::compiled::Bindings>,
    /// `allow_on_headers_stop_iteration`: a body phase may use its message's header map.
    pub headers_held: bool,
    /// The Redis clusters the script calls.
    pub redis: redis::RedisClusters,
}

/// Where a binding may be called.
#[derive(Debug, Clone, Copy)]
pub enum Allowed {
    /// Anywhere, including top-level statements run at configure time.
    Anywhere,
    /// While a request is handled, in these phases (and their callbacks).
    In(Phases),
    /// Only inside a callout callback.
    Callback,
}

/// One line of the API reference.
#[derive(Debug, Clone)]
pub struct FnDoc {
    pub name: &'static str,
    pub params: &'static [(&'static str, &'static str)],
    pub returns: &'static str,
    pub allowed: Allowed,
    pub doc: &'static str,
    /// A short script showing the function in use (it compiles, and calls only the API).
    pub example: &'static str,
}

/// One constant of the API reference.
#[derive(Debug, Clone)]
pub struct ConstDoc {
    pub name: &'static str,
    pub doc: &'static str,
}

fn err<T>(message: String) -> ScriptResult<T> {
    Err(message.into())
}

fn refused<T>(function: &str, status: Status) -> ScriptResult<T> {
    err(format!(
        "{function}(): the proxy refused the call ({status:?})"
    ))
}

impl<H: Host> Api<H> {
    /// Logs a line of the plugin's own (an error, a warning), without the configuration's
    /// secrets. What a script logs itself goes to the host as it is.
    pub(crate) fn log_plugin(&self, level: LogLevel, message: &str) {
        self.host.log(level, &self.redactor.redact(message));
    }

    /// The error that stops a call whose heap, with `more` bytes it is about to ask for, is
    /// past a limit: the call has added more than `max_memory` since it began, or the VM's
    /// whole heap would be over `max_vm_memory` and this call adds to it (a call that holds
    /// no more than when it began and asks for nothing goes on, so requests that only read
    /// are served while others hold the heap). `None` when the host doesn't count the heap.
    pub(crate) fn over_memory_budget(&self, more: usize) -> Option<String> {
        let in_use = self.host.heap_in_use()?;
        let baseline = self.frame.borrow().heap_baseline;
        let after = in_use.saturating_add(more);
        let MemoryLimits { per_call, vm } = self.memory;
        let (added, would_be) = if more > 0 {
            ("would add", "would be")
        } else {
            ("added", "is")
        };
        if after.saturating_sub(baseline) > per_call {
            return Some(format!(
                "memory limit: the call {added} over {per_call} bytes to the VM's heap \
                 (limits.max_memory)"
            ));
        }
        (after > vm && (more > 0 || in_use > baseline)).then(|| {
            format!(
                "memory limit: the VM's heap {would_be} over {vm} bytes, the limit of all \
                 requests together (limits.max_vm_memory); {in_use} bytes are in use"
            )
        })
    }

    /// A script error from `function` if asking for `more` bytes would take the heap past
    /// a limit: checked before a large allocation, which would trap the VM if it failed.
    pub(crate) fn reserve(&self, function: &str, more: usize) -> ScriptResult<()> {
        match self.over_memory_budget(more) {
            Some(message) => err(format!("{function}(): {message}")),
            None => Ok(()),
        }
    }

    /// Checks where `function` is called from and returns the phase.
    #[inline]
    fn enter(&self, function: &str, allowed: Allowed) -> ScriptResult<Phase> {
        match (self.phase.get(), allowed) {
            (Some(phase), Allowed::Anywhere) => Ok(phase),
            (Some(phase), Allowed::In(phases)) if phases.contains(phase) => Ok(phase),
            _ => self.enter_otherwise(function, allowed),
        }
    }

    /// [`Api::enter`] for the other cases: a callback's function, and the errors.
    #[cold]
    fn enter_otherwise(&self, function: &str, allowed: Allowed) -> ScriptResult<Phase> {
        let frame = self.frame.borrow();
        let Some(phase) = self.phase.get() else {
            return err(format!(
                "{function}() can only be called while a request is handled \
                 (in a phase function or a callout callback)"
            ));
        };
        match allowed {
            Allowed::Anywhere => Ok(phase),
            Allowed::In(phases) if phases.contains(phase) => Ok(phase),
            Allowed::In(phases) if phases.held_in(phase) => match self.headers_held {
                true => Ok(phase),
                false => err(format!(
                    "{function}() is not available in {phase}: the headers went on before the \
                     body phase ran. To use them in {phase}, the proxy must hold them until \
                     then: set allow_on_headers_stop_iteration to true in Envoy's wasm \
                     PluginConfig and in the plugin configuration (`proxy-rhai deploy envoy` \
                     sets both; Istio's WasmPlugin and Higress can't). Or write the header in \
                     {headers}, keeping what the body phase needs with set_context",
                    headers = phases.iter().next().map_or("", Phase::function_name),
                )),
            },
            Allowed::In(phases) => err(format!(
                "{function}() is not available in {phase}: only in {phases} \
                 (the proxy gives headers only in their own phase; keep what later phases \
                 need with set_context)"
            )),
            Allowed::Callback if frame.answer.is_some() => Ok(phase),
            Allowed::Callback => err(format!(
                "{function}() is only available inside a callout callback"
            )),
        }
    }

    /// Hands this call's header writes to the proxy before it ends, for a property read
    /// (`request.path` reads the request headers), keeping what the maps were: if the call
    /// fails, they are put back.
    pub(crate) fn flush_headers_early(&self) {
        let mut frame = self.frame.borrow_mut();
        for map in [MapType::HttpRequestHeaders, MapType::HttpResponseHeaders] {
            let written = frame.batch(map).is_some_and(|batch| batch.has_writes());
            if written && !frame.undo.iter().any(|(m, _)| *m == map) {
                if let Ok(before) = self.host.get_map(map) {
                    frame.undo.push((map, before));
                }
            }
            if let Some(Err(status)) = frame.batch(map).map(|batch| batch.flush(&self.host, map)) {
                self.writes_refused(map, status);
            }
        }
    }

    /// The call ended well (or resumes the stream): its header, trailer and body writes and
    /// its local response go to the proxy, in that order.
    pub(crate) fn commit(&self) {
        let mut frame = self.frame.borrow_mut();
        if std::mem::take(&mut frame.batched) {
            for map in BATCHED {
                if let Some(Err(status)) =
                    frame.batch(map).map(|batch| batch.flush(&self.host, map))
                {
                    self.writes_refused(map, status);
                }
            }
            frame.batched = false;
        }
        frame.undo.clear();
        if !frame.body_writes.is_empty() {
            self.commit_body_writes(&mut frame);
        }
        if let Some(LocalResponse {
            status,
            headers,
            body,
        }) = frame.local_response.take()
        {
            drop(frame);
            let refs: Vec<(&str, &[u8])> =
                headers.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
            if let Err(s) = self.host.send_http_response(status, &refs, &body) {
                self.log_plugin(
                    LogLevel::Warn,
                    &format!("the local response {status} was refused by the proxy ({s:?})"),
                );
            }
        }
    }

    /// The call failed: none of its writes reach the proxy (those it made before resuming
    /// the stream already have), and its local response is not sent.
    pub(crate) fn roll_back(&self) {
        let mut frame = self.frame.borrow_mut();
        if std::mem::take(&mut frame.batched) {
            for map in BATCHED {
                if let Some(batch) = frame.batch(map) {
                    batch.discard();
                }
            }
            frame.batched = false;
        }
        for (map, headers) in std::mem::take(&mut frame.undo) {
            if let Err(status) = self.host.set_map(map, &headers) {
                self.writes_refused(map, status);
            }
        }
        let writes = std::mem::take(&mut frame.body_writes);
        for write in writes.iter().rev() {
            frame.stream.view_mut(write.buffer).len = write.len_before;
        }
        if frame.local_response.take().is_some() {
            frame.stream.local_response_sent = false;
        }
    }

    #[cold]
    fn writes_refused(&self, map: MapType, status: Status) {
        self.log_plugin(
            LogLevel::Warn,
            &format!("the proxy refused this call's writes to {map:?} ({status:?})"),
        );
    }

    /// Sends a local response, once per stream.
    pub(crate) fn send_local_response(
        &self,
        f: &str,
        status: i64,
        headers: &Dynamic,
        body: &Dynamic,
    ) -> ScriptResult<()> {
        if !(200..=599).contains(&status) {
            return err(format!("{f}(): status {status} is not in 200..=599"));
        }
        if self.frame.borrow().stream.response_sent {
            return err(format!(
                "{f}(): too late: the response headers went on to the client already"
            ));
        }
        if self.frame.borrow().stream.local_response_sent {
            return err(format!(
                "{f}(): a local response was already sent for this request (send_http_response() \
                 doesn't stop the script: `return` after it)"
            ));
        }
        let headers = header_pairs(f, headers)?;
        let body = bytes_of(f, body)?;
        let refs = headers.iter().map(|(k, v)| (k.as_str(), &v[..]));
        check_pair_list(f, Target::LocalResponse, refs)?;
        let mut frame = self.frame.borrow_mut();
        frame.stream.local_response_sent = true;
        frame.local_response = Some(LocalResponse {
            status: status as u32,
            headers,
            body,
        });
        Ok(())
    }

    /// `resume_http_*()`: asks the driver to let `side` go once this callback returns, when
    /// its phase's callouts hold it ([`crate::stream::StreamState::ask_resume`]).
    pub(crate) fn resume(&self, side: Side) -> bool {
        let Some(phase) = self.phase.get() else {
            return false;
        };
        self.frame
            .borrow_mut()
            .stream
            .ask_resume(&self.host, side, phase)
    }
}

/// A header value given to a script's write: a string as it is (shared, not copied), a blob's
/// bytes, or nothing for `()`.
fn value_of(f: &str, value: Dynamic) -> ScriptResult<Value> {
    let value = value.flatten();
    if value.is_unit() {
        return Ok(Value::Bytes(Vec::new()));
    }
    let value = match value.try_cast_result::<ImmutableString>() {
        Ok(text) => return Ok(Value::Text(text)),
        Err(value) => value,
    };
    value
        .try_cast_result::<Blob>()
        .map(Value::Bytes)
        .or_else(|v| {
            err(format!(
                "{f}(): expected a string or a blob, got {}",
                v.type_name()
            ))
        })
}

/// The bytes of a string or blob argument.
fn bytes_of(f: &str, value: &Dynamic) -> ScriptResult<Vec<u8>> {
    value_of(f, value.clone()).map(Value::into_bytes)
}

/// Collects the bindings into an engine (and, when asked, into the API reference).
pub(crate) struct Registrar<'a, H> {
    pub engine: &'a mut Engine,
    pub api: Rc<Api<H>>,
    pub docs: Option<&'a mut Vec<FnDoc>>,
}

impl<H> Registrar<'_, H> {
    fn doc(&mut self, doc: FnDoc) {
        // Only the builds with the authoring tools write the API reference
        // (`plugin::api_reference`): the plugin leaves the texts out, ~35 kB it would carry for
        // nothing.
        if cfg!(not(tools)) {
            return;
        }
        if let Some(docs) = self.docs.as_deref_mut() {
            docs.push(doc);
        }
    }
}

impl<H> Registrar<'_, H> {
    /// Makes the function just registered as `name` with parameters of Rust types `types`
    /// callable directly by compiled calls.
    fn direct(&mut self, name: &'static str, types: &[std::any::TypeId]) {
        use std::any::TypeId;
        // What Rhai matches each argument by: `&str` is an `ImmutableString`, and `Dynamic`
        // takes any value.
        let matched: Vec<Option<TypeId>> = types
            .iter()
            .map(|&t| match t {
                t if t == TypeId::of::<Dynamic>() => None,
                t if t == TypeId::of::<&str>() => Some(TypeId::of::<ImmutableString>()),
                t => Some(t),
            })
            .collect();
        let mut bindings = self.api.bindings.borrow_mut();
        match self.engine.global_native_fn(name, types) {
            Some(func) => bindings.add(name, &matched, func),
            None => bindings.add_overload(name, types.len()),
        }
    }

    /// Registers `name` with Rhai directly (not through [`bind!`]): a compiled call of `name`
    /// with `arity` arguments goes through Rhai, which chooses between its overloads.
    fn register_overload(&mut self, name: &'static str, arity: usize) {
        self.api.bindings.borrow_mut().add_overload(name, arity);
    }
}

/// Declares one binding: registers it, makes it callable directly by compiled calls, and
/// records its documentation and its example (a binding without one still builds, but the
/// api-docs test asks for it). `|a as f, …|` gives the body the bound name as `f`, for its
/// error messages.
macro_rules! bind {
    ($reg:expr, $name:expr, $allowed:expr, $returns:literal, $doc:expr, $($example:literal,)?
     |$api:ident $(as $f:ident)? $(, $arg:ident : $ty:ty)*| $body:expr) => {{
        let captured = $reg.api.clone();
        $reg.engine.register_fn($name, move |$($arg: $ty),*| {
            let $api = &*captured;
            $(let $f: &'static str = $name;)?
            if !matches!($allowed, $crate::bindings::Allowed::Anywhere) || $api.phase.get().is_some() {
                $api.enter($name, $allowed)?;
            }
            let result: $crate::bindings::ScriptResult<_> = $body;
            result
        });
        $reg.direct($name, &[$(std::any::TypeId::of::<$ty>()),*]);
        $reg.api.known.borrow_mut().push(($name, &[$((stringify!($arg), stringify!($ty))),*]));
        $reg.doc($crate::bindings::FnDoc {
            name: $name,
            params: &[$((stringify!($arg), stringify!($ty))),*],
            returns: $returns,
            allowed: $allowed,
            doc: $doc,
            example: concat!("" $(, $example)?),
        });
    }};
}

mod bodies;
mod builtins;
mod callouts;
mod connection;
mod context;
mod headers;
mod json;
mod metadata;
mod metrics;
mod properties;
pub(crate) mod redis;
mod shared_data;
pub(crate) mod streaming;

pub(crate) use callouts::{CALLBACK_PARAMETERS, REDIS_CALLBACK_PARAMETERS};
pub(crate) use headers::header_pairs_of;
use headers::{check_pair_list, header_pairs};
pub use metrics::{HEAP_METRIC, SCRIPT_ERRORS_METRIC};

/// The constants scripts see.
pub const CONSTANTS: [ConstDoc; 2] = [
    ConstDoc { name: "PAUSE", doc: "Return it from a phase function to stop the stream there; a callback must then resume it (or send a local response)." },
    ConstDoc { name: "CONTINUE", doc: "Return it (or anything but `PAUSE`) from a phase function to let the stream go on." },
];

impl<H: Host + 'static> Api<H> {
    /// Prepares the frame for a call into Rhai with `config()` = `config`.
    pub(crate) fn begin_call(&self, phase: Option<Phase>, config: Dynamic, constants: Constants) {
        self.phase.set(phase);
        let mut frame = self.frame.borrow_mut();
        frame.config = config;
        frame.constants = constants;
        frame.heap_baseline = self.host.heap_in_use().unwrap_or(0);
    }

    /// Lets go of what a call into Rhai was lent (its config, its copies of the constants).
    pub(crate) fn end_call(&self) {
        if self.host.counts_operations() {
            self.host.operations_counted(self.operations.replace(0));
        }
        self.phase.set(None);
        let mut frame = self.frame.borrow_mut();
        frame.answer = None;
        frame.config = Dynamic::UNIT;
        if !frame.constant_copies.is_empty() {
            frame.constant_copies.clear();
        }
    }

    /// A script error in one line, saying what to fix when the cause is a common mistake
    /// ([`crate::sandbox::describe_error`]).
    pub(crate) fn describe_error(&self, error: &EvalAltResult) -> String {
        let hints = crate::sandbox::Hints {
            known: &self.known.borrow(),
            limits: &self.limits,
        };
        crate::sandbox::describe_error(error, &hints)
    }

    /// The running script's top-level constant `name`, if it defined one: the call's own copy,
    /// made when the call first reads it. Whatever a call does to it (`push`, a closure changing
    /// what it captured, a `this` method) no other call sees.
    pub(crate) fn constant(&self, name: &str) -> Option<Dynamic> {
        let mut frame = self.frame.borrow_mut();
        let Frame {
            constants,
            constant_copies,
            ..
        } = &mut *frame;
        let index = constants.0.iter().position(|c| c.name.as_str() == name)?;
        let constant = constants.0.get(index)?;
        if constant_copies.len() <= index {
            constant_copies.resize(constants.0.len(), None);
        }
        let slot = constant_copies.get_mut(index)?;
        Some(slot.get_or_insert_with(|| constant.private_copy()).clone())
    }

    pub(crate) fn new(host: H, limits: &Limits, redactor: Rc<crate::redact::Redactor>) -> Self {
        Self {
            host,
            memory: limits.into(),
            phase: Cell::new(None),
            operations: Cell::new(0),
            frame: RefCell::default(),
            metrics: RefCell::default(),
            redactor,
            limits: limits.clone(),
            known: RefCell::default(),
            bindings: RefCell::default(),
            headers_held: false,
            redis: redis::RedisClusters::default(),
        }
    }
}

/// Where the bindings are allowed.
// The header maps: in their header phase, and in their body phase when the proxy holds the
// headers for it (`allow_on_headers_stop_iteration`).
const RQ_MAP: Allowed = Allowed::In(Phases::REQUEST_HEADERS.or_held());
const RS_MAP: Allowed = Allowed::In(Phases::RESPONSE_HEADERS.or_held());
const RQH: Allowed = Allowed::In(Phases::REQUEST_HEADERS);
const RQB: Allowed = Allowed::In(Phases::REQUEST_BODY);
const RSH: Allowed = Allowed::In(Phases::RESPONSE_HEADERS);
const RSB: Allowed = Allowed::In(Phases::RESPONSE_BODY);
// Envoy lets the log phase read both header maps again.
const READ_RQH: Allowed = Allowed::In(Phases::of(&[Phase::RequestHeaders, Phase::Log]).or_held());
const READ_RSH: Allowed = Allowed::In(Phases::of(&[Phase::ResponseHeaders, Phase::Log]).or_held());
const ALL: Allowed = Allowed::In(Phases::ALL);

/// Registers the whole script API on `engine`, area by area (the order of `api-docs/`).
/// The plugin's pure built-ins (JSON, encodings, hashes, time, random), which test files
/// have too.
#[cfg(tools)]
pub(crate) fn register_builtins<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    json::register(reg);
    builtins::register(reg);
}

pub(crate) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use Allowed::Anywhere;
    let mut constants = rhai::Module::new();
    constants.set_var("PAUSE", PhaseAction::Pause);
    constants.set_var("CONTINUE", PhaseAction::Continue);
    reg.engine.register_type_with_name::<PhaseAction>("Action");
    reg.engine.register_global_module(constants.into());

    headers::register(reg);
    bodies::register(reg);
    streaming::register(reg);
    callouts::register(reg);
    redis::register(reg);
    context::register(reg);
    json::register(reg);
    // Rhai's core package has `sleep`, which would block the proxy's worker thread; in Envoy it
    // traps the VM (no WASI clock to wait on). These, in the global namespace, are found first.
    const NO_SLEEP: &str = "sleep() is not available: it would stop the proxy's worker thread";
    bind!(
        reg,
        "sleep",
        Anywhere,
        "never returns",
        "Refused, always an error (also with a float): waiting would stop the proxy's worker thread and every request on it. To wait for something, make a callout with a timeout.",
        r#"fn on_request_headers() {
    try { sleep(1); } catch (e) { log_warn(`not waiting: ${e}`); }
}"#,
        |_a, seconds: i64| err::<()>(format!("{NO_SLEEP} (asked for {seconds} s)"))
    );
    reg.engine
        .register_fn("sleep", |_: rhai::FLOAT| -> ScriptResult<()> {
            err(NO_SLEEP.into())
        });
    reg.register_overload("sleep", 1);
    properties::register(reg);
    metadata::register(reg);
    connection::register(reg);
    shared_data::register(reg);
    metrics::register(reg);
    builtins::register(reg);
}
