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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let stream = self.plugin.clone().map(HttpStream::new);
        Some(Box::new(Stream(stream)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// An HTTP context; `None` when the configuration was refused (Envoy then fails the stream
/// itself, but the plugin still must not trap).
struct Stream(Option<HttpStream<WasmHost>>);

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(s) = &mut self.0 {
            s.on_http_call_response(token, num_headers, body_size);
        }
    }
}

impl HttpContext for Stream {
    fn on_log(&mut self) {
        if let Some(s) = &mut self.0 {
            s.on_log();
        }
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.0
            .as_mut()
            .map_or(Action::Continue, |s| s.on_request_headers(end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.0.as_mut().map_or(Action::Continue, |s| {
            s.on_request_body(body_size, end_of_stream)
        })
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.0
            .as_mut()
            .map_or(Action::Continue, |s| s.on_request_trailers())
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.0
            .as_mut()
            .map_or(Action::Continue, |s| s.on_response_headers(end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.0.as_mut().map_or(Action::Continue, |s| {
            s.on_response_body(body_size, end_of_stream)
        })
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.0
            .as_mut()
            .map_or(Action::Continue, |s| s.on_response_trailers())
    }
}
