//! The proxy-wasm entry points (ABI 0.2.1): the functions the proxy calls, and the plugin's
//! own table of its contexts by id, a root per plugin configuration and an HTTP context per
//! stream, each handing its events to [`Plugin`] and [`HttpStream`].
//!
//! The plugin does not link the proxy-wasm SDK: each callback finds its context with one
//! lookup, and an id the plugin does not know, or a callback that arrives while another runs,
//! is ignored where the SDK's dispatcher panicked, which traps the VM.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::thread::LocalKey;

use crate::host::{BufferType, Host, LogLevel};
use crate::plugin::Plugin;
use crate::proxy_types::Action;
use crate::stream::HttpStream;
use crate::wasm_host::WasmHost;

/// A map keyed by context id or callout token: small numbers the proxy hands out, hashed by
/// one multiplication (Fibonacci hashing), which spreads them over the table's buckets.
type ById<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// An empty table (`const`: its thread-local needs no lazy initialisation).
const fn empty<V>() -> RefCell<ById<V>> {
    RefCell::new(HashMap::with_hasher(BuildHasherDefault::new()))
}

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

thread_local! {
    /// Root contexts: one per plugin configuration.
    static ROOTS: RefCell<ById<Root>> = const { empty() };
    /// HTTP contexts: one per stream; `None` when the configuration was refused (Envoy then
    /// fails the stream itself, but the plugin still must not trap).
    static STREAMS: RefCell<ById<Option<HttpStream<WasmHost>>>> = const { empty() };
    /// Callouts in flight: token → the context that made it.
    static CALLOUTS: RefCell<ById<u32>> = const { empty() };
    /// The context whose callback runs now.
    static ACTIVE: Cell<u32> = const { Cell::new(0) };
}

/// A callout was made by the context whose callback runs: its answer goes there.
pub(crate) fn callout_dispatched(token: u32) {
    record_call(&CALLOUTS, token);
}

/// Records that the context whose callback runs made the call `token` (in `calls`).
fn record_call(calls: &'static LocalKey<RefCell<ById<u32>>>, token: u32) {
    insert(calls, token, ACTIVE.with(Cell::get));
}

/// Puts `value` in `table` under `id` (a context, a call's token).
fn insert<V>(table: &'static LocalKey<RefCell<ById<V>>>, id: u32, value: V) {
    table.with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            t.insert(id, value);
        }
    });
}

/// Runs `f`, the answer to call `token` (in `calls`), on the stream that made the call, with
/// its context made the effective one. An answer for a stream that is gone is dropped.
fn answer(
    calls: &'static LocalKey<RefCell<ById<u32>>>,
    token: u32,
    f: impl FnOnce(&mut HttpStream<WasmHost>),
) {
    let Some(context_id) = take(calls, token) else {
        return;
    };
    if crate::wasm_host::set_effective_context(context_id).is_ok() {
        with_stream(context_id, (), f);
    }
}

/// Runs `f` on root `context_id`; `default` when there is none (or one is running).
fn with_root<R>(context_id: u32, default: R, f: impl FnOnce(&mut Root) -> R) -> R {
    with_context(&ROOTS, context_id, default, f)
}

/// Runs `f` on the stream of HTTP context `context_id`; `default` when there is none (or one
/// is running).
fn with_stream<R>(
    context_id: u32,
    default: R,
    f: impl FnOnce(&mut HttpStream<WasmHost>) -> R,
) -> R {
    with_context(&STREAMS, context_id, None, |s| s.as_mut().map(f)).unwrap_or(default)
}

/// [`with_stream`] for the callbacks that answer with an [`Action`].
fn stream_action(context_id: u32, f: impl FnOnce(&mut HttpStream<WasmHost>) -> Action) -> Action {
    with_stream(context_id, Action::Continue, f)
}

/// Runs `f` on context `context_id` of `table`, as the active context.
#[inline]
fn with_context<V, R>(
    table: &'static LocalKey<RefCell<ById<V>>>,
    context_id: u32,
    default: R,
    f: impl FnOnce(&mut V) -> R,
) -> R {
    table.with(|contexts| {
        let Ok(mut contexts) = contexts.try_borrow_mut() else {
            return default;
        };
        match contexts.get_mut(&context_id) {
            Some(context) => {
                ACTIVE.with(|a| a.set(context_id));
                f(context)
            }
            None => default,
        }
    })
}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The module's initialisation, which the proxy calls first: wasi-libc's constructors.
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
}

/// Says which ABI the module speaks.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory the proxy fills for the module (a header map, a body, a property).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut memory: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: the capacity is `size`; the bytes are `MaybeUninit`, which needs no initialising.
    unsafe { memory.set_len(size) };
    Box::into_raw(memory.into_boxed_slice()) as *mut u8
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        insert(&ROOTS, context_id, Root { plugin: None });
        return;
    }
    let Some(plugin) = with_root(root_context_id, None, |root| Some(root.plugin.clone())) else {
        return;
    };
    insert(&STREAMS, context_id, plugin.map(HttpStream::new));
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool {
    with_root(context_id, false, |root| {
        root.on_configure(plugin_configuration_size)
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    with_root(context_id, (), Root::on_tick);
}

#[no_mangle]
pub extern "C" fn proxy_on_done(_context_id: u32) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    with_stream(context_id, (), HttpStream::on_log);
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    // Its callouts' answers, if any come, find no context.
    forget_calls(&CALLOUTS, context_id);
    #[cfg(feature = "higress")]
    forget_calls(&REDIS_CALLS, context_id);
    // Out of its table first, dropped after: dropping a stream runs the plugin's code.
    if take(&STREAMS, context_id).is_none() {
        drop(take(&ROOTS, context_id));
    }
}

/// Takes `id` (a context, a call's token) out of `table`.
fn take<V>(table: &'static LocalKey<RefCell<ById<V>>>, id: u32) -> Option<V> {
    table.with(|t| t.try_borrow_mut().ok()?.remove(&id))
}

/// Forgets the calls in flight (token → context) that context `id` made.
fn forget_calls(calls: &'static LocalKey<RefCell<ById<u32>>>, id: u32) {
    calls.with(|c| {
        if let Ok(mut calls) = c.try_borrow_mut() {
            if !calls.is_empty() {
                calls.retain(|_, context| *context != id);
            }
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    end_of_stream: bool,
) -> Action {
    stream_action(context_id, |s| s.on_request_headers(end_of_stream))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(
    context_id: u32,
    body_size: usize,
    end_of_stream: bool,
) -> Action {
    stream_action(context_id, |s| s.on_request_body(body_size, end_of_stream))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _num_trailers: usize) -> Action {
    stream_action(context_id, HttpStream::on_request_trailers)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    context_id: u32,
    _num_headers: usize,
    end_of_stream: bool,
) -> Action {
    stream_action(context_id, |s| s.on_response_headers(end_of_stream))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(
    context_id: u32,
    body_size: usize,
    end_of_stream: bool,
) -> Action {
    stream_action(context_id, |s| s.on_response_body(body_size, end_of_stream))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _num_trailers: usize) -> Action {
    stream_action(context_id, HttpStream::on_response_trailers)
}

/// A callout's answer, for the stream that made it.
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _context_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    answer(&CALLOUTS, token, |s| {
        s.on_http_call_response(token, num_headers, body_size)
    });
}

struct Root {
    plugin: Option<Rc<Plugin<WasmHost>>>,
}

impl Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = WasmHost
            .get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match Plugin::configure(WasmHost, &bytes) {
            Ok(plugin) => {
                if let Some(period) = plugin.tick_period_ms() {
                    if let Err(s) = WasmHost.set_tick_period(period) {
                        WasmHost.log(LogLevel::Warn, &format!("proxy-rhai: on_tick disabled, the proxy refused the period ({s:?})"));
                    }
                }
                self.plugin = Some(Rc::new(plugin));
                true
            }
            Err(reason) => {
                WasmHost.log(
                    LogLevel::Error,
                    &format!("proxy-rhai: configuration refused: {reason}"),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = &self.plugin {
            plugin.on_tick();
        }
    }
}

#[cfg(feature = "higress")]
thread_local! {
    /// Redis calls in flight: token → the context of the stream that made it.
    static REDIS_CALLS: RefCell<ById<u32>> = const { empty() };
}

/// The Higress build: a Redis call was made by the context whose callback runs.
#[cfg(feature = "higress")]
pub(crate) fn redis_dispatched(token: u32) {
    record_call(&REDIS_CALLS, token);
}

/// The Higress build: Higress's callback of a Redis reply comes to the plugin (root) context, by
/// token. It runs the callback of the stream that made the call, with that stream's context
/// effective (its headers, its resume), as Higress's Go SDK does. A reply for a stream that is
/// gone is dropped.
#[cfg(feature = "higress")]
#[no_mangle]
pub extern "C" fn proxy_on_redis_call_response(
    _plugin_context_id: u32,
    token: u32,
    status: u32,
    response_size: usize,
) {
    answer(&REDIS_CALLS, token, |s| {
        s.on_redis_call_response(token, status, response_size)
    });
}
