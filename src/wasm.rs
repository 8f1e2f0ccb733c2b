//! The proxy-wasm entry points: a root context per plugin configuration, an HTTP context per
//! stream, each handing its events to [`Plugin`] and [`HttpStream`].

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

use crate::host::Host;
use crate::plugin::Plugin;
use crate::stream::HttpStream;
use crate::wasm_host::WasmHost;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { plugin: None }) });
}}

struct Root {
    plugin: Option<Rc<Plugin<WasmHost>>>,
}

impl Context for Root {}

impl RootContext for Root {
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

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let stream = self.plugin.clone().map(HttpStream::new);
        Some(Box::new(Stream::new(context_id, stream)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// An HTTP context; `None` when the configuration was refused (Envoy then fails the stream
/// itself, but the plugin still must not trap).
#[cfg(not(feature = "higress"))]
struct Stream(Option<HttpStream<WasmHost>>);

#[cfg(not(feature = "higress"))]
impl Stream {
    fn new(_context_id: u32, stream: Option<HttpStream<WasmHost>>) -> Self {
        Self(stream)
    }

    /// Runs `f` on the stream; `default` when there is none.
    #[inline]
    fn with<R>(&mut self, default: R, f: impl FnOnce(&mut HttpStream<WasmHost>) -> R) -> R {
        self.0.as_mut().map_or(default, f)
    }
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.with((), |s| {
            s.on_http_call_response(token, num_headers, body_size)
        });
    }
}

impl HttpContext for Stream {
    fn on_log(&mut self) {
        self.with((), HttpStream::on_log);
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |s| s.on_request_headers(end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |s| {
            s.on_request_body(body_size, end_of_stream)
        })
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.with(Action::Continue, HttpStream::on_request_trailers)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |s| s.on_response_headers(end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |s| {
            s.on_response_body(body_size, end_of_stream)
        })
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.with(Action::Continue, HttpStream::on_response_trailers)
    }
}

#[cfg(feature = "higress")]
pub(crate) use higress::redis_dispatched;
#[cfg(feature = "higress")]
use higress::Stream;

/// The Higress build: Redis replies come to the plugin (root) context, by token, through
/// `proxy_on_redis_call_response`, which the SDK doesn't know. The plugin routes each to the
/// stream that made the call, making that stream's context effective first, as Higress's Go SDK
/// does.
#[cfg(feature = "higress")]
mod higress {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::{Rc, Weak};

    use super::{HttpStream, WasmHost};

    type Shared = Rc<RefCell<HttpStream<WasmHost>>>;

    thread_local! {
        /// The streams alive, by context id.
        static STREAMS: RefCell<HashMap<u32, Weak<RefCell<HttpStream<WasmHost>>>>> =
            RefCell::default();
        /// Redis calls in flight: token → the context id of the stream that made it.
        static CALLS: RefCell<HashMap<u32, u32>> = RefCell::default();
        /// The context id of the stream whose event runs now.
        static CURRENT: Cell<u32> = const { Cell::new(0) };
    }

    /// An HTTP context; no stream when the configuration was refused.
    pub(super) struct Stream {
        id: u32,
        stream: Option<Shared>,
    }

    impl Stream {
        pub(super) fn new(context_id: u32, stream: Option<HttpStream<WasmHost>>) -> Self {
            let stream = stream.map(|s| Rc::new(RefCell::new(s)));
            if let Some(s) = &stream {
                STREAMS.with(|m| m.borrow_mut().insert(context_id, Rc::downgrade(s)));
            }
            Self {
                id: context_id,
                stream,
            }
        }

        /// Runs `f` on the stream, as the current one (its Redis calls are routed back to it).
        pub(super) fn with<R>(
            &mut self,
            default: R,
            f: impl FnOnce(&mut HttpStream<WasmHost>) -> R,
        ) -> R {
            let Some(stream) = &self.stream else {
                return default;
            };
            CURRENT.with(|c| c.set(self.id));
            match stream.try_borrow_mut() {
                Ok(mut s) => f(&mut s),
                Err(_) => default,
            }
        }
    }

    impl Drop for Stream {
        fn drop(&mut self) {
            let id = self.id;
            STREAMS.with(|m| m.borrow_mut().remove(&id));
            // Its calls in flight: their replies find no stream and are dropped.
            CALLS.with(|c| c.borrow_mut().retain(|_, stream| *stream != id));
        }
    }

    /// A Redis call was made by the current stream.
    pub(crate) fn redis_dispatched(token: u32) {
        let stream = CURRENT.with(Cell::get);
        CALLS.with(|c| c.borrow_mut().insert(token, stream));
    }

    /// Higress's callback of a Redis reply, on the plugin context: runs the stream's callback
    /// with the stream's context effective (its headers, its resume). A reply for a stream
    /// that is gone is dropped.
    #[no_mangle]
    pub extern "C" fn proxy_on_redis_call_response(
        _plugin_context_id: u32,
        token: u32,
        status: u32,
        response_size: usize,
    ) {
        let Some(id) = CALLS.with(|c| c.borrow_mut().remove(&token)) else {
            return;
        };
        let Some(stream) = STREAMS.with(|m| m.borrow().get(&id).and_then(Weak::upgrade)) else {
            return;
        };
        if crate::wasm_host::set_effective_context(id).is_err() {
            return;
        }
        CURRENT.with(|c| c.set(id));
        let running = stream.try_borrow_mut();
        if let Ok(mut s) = running {
            s.on_redis_call_response(token, status, response_size);
        }
    }
}
