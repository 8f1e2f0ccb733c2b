//! The hand-written proxy-wasm plugin of the benchmark: the same five workloads as
//! `bench/scripts/*.rhai` and the Lua scripts of `bench/run.py`, in plain Rust on the proxy-wasm
//! SDK (0.2.5) with serde_json. It is what a user would write by hand instead of proxy-rhai,
//! so it is the floor for a wasm plugin.
//!
//! Plugin configuration: `{"workload": "trivial" | "headers" | "json" | "callout" | "stream",
//! "cluster": "callout"}`.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { workload: Workload::Trivial, cluster: "callout".into() })
    });
}}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Trivial,
    Headers,
    Json,
    Callout,
    Stream,
}

/// The marker workload 5 looks for in each piece of the body.
const MARKER: &str = "proxy-rhai-marker";

struct Root {
    workload: Workload,
    cluster: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            return true;
        };
        let Ok(config) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            proxy_wasm::hostcalls::log(LogLevel::Error, "native bench plugin: bad configuration")
                .ok();
            return false;
        };
        self.workload = match config["workload"].as_str().unwrap_or("trivial") {
            "trivial" => Workload::Trivial,
            "headers" => Workload::Headers,
            "json" => Workload::Json,
            "callout" => Workload::Callout,
            "stream" => Workload::Stream,
            other => {
                let message = format!("native bench plugin: unknown workload {other}");
                proxy_wasm::hostcalls::log(LogLevel::Error, &message).ok();
                return false;
            }
        };
        if let Some(cluster) = config["cluster"].as_str() {
            self.cluster = cluster.to_string();
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            workload: self.workload,
            cluster: self.cluster.clone(),
            seen: Seen::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    workload: Workload,
    cluster: String,
    seen: Seen,
}

/// What workload 5 counted of the response body so far.
#[derive(Default)]
struct Seen {
    bytes: usize,
    chunks: usize,
    hits: usize,
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        // Workload 4: copy one header of the answer into the request, then go on.
        if let Some(token) = self.get_http_call_response_header("x-auth-token") {
            self.add_http_request_header("x-auth", &token);
        }
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.workload {
            Workload::Trivial => {
                let path = self.get_http_request_header(":path").unwrap_or_default();
                if path.starts_with("/deny") {
                    self.send_http_response(403, vec![], Some(b"denied\n"));
                    return Action::Pause;
                }
                self.add_http_request_header("x-bench", "1");
                Action::Continue
            }
            Workload::Headers => {
                // 20 operations: 5 get, 5 add (of the values read), 5 replace, 5 remove.
                const GET: [&str; 5] = ["x-in-0", "x-in-1", "x-in-2", "x-in-3", "x-in-4"];
                const ADD: [&str; 5] = ["x-add-0", "x-add-1", "x-add-2", "x-add-3", "x-add-4"];
                const REPLACE: [&str; 5] = ["x-in-5", "x-in-6", "x-in-7", "x-in-8", "x-in-9"];
                const REMOVE: [&str; 5] = ["x-rm-0", "x-rm-1", "x-rm-2", "x-rm-3", "x-rm-4"];
                for (get, add) in GET.iter().zip(ADD) {
                    let value = self.get_http_request_header(get).unwrap_or_default();
                    self.add_http_request_header(add, &value);
                }
                for name in REPLACE {
                    self.set_http_request_header(name, Some("r"));
                }
                for name in REMOVE {
                    self.set_http_request_header(name, None);
                }
                Action::Continue
            }
            Workload::Json | Workload::Stream => Action::Continue,
            Workload::Callout => {
                let headers = vec![
                    (":method", "GET"),
                    (":path", "/callout"),
                    (":authority", self.cluster.as_str()),
                ];
                match self.dispatch_http_call(
                    &self.cluster,
                    headers,
                    None,
                    vec![],
                    Duration::from_millis(1000),
                ) {
                    Ok(_) => Action::Pause,
                    Err(_) => {
                        self.send_http_response(500, vec![], Some(b"callout refused\n"));
                        Action::Pause
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        match self.workload {
            Workload::Trivial => self.set_http_response_header("x-bench-resp", Some("1")),
            // The body will change length: let the proxy frame it anew.
            Workload::Json if !end_of_stream => {
                self.set_http_response_header("content-length", None)
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.workload == Workload::Stream {
            // Workload 5: each piece as it passes (the proxy's buffer holds only this piece).
            let chunk = self
                .get_http_response_body(0, body_size)
                .unwrap_or_default();
            self.seen.bytes += chunk.len();
            self.seen.chunks += 1;
            // As text, like the other two (`from_utf8_lossy` took 9 times the instructions).
            if std::str::from_utf8(&chunk).is_ok_and(|text| text.contains(MARKER)) {
                self.seen.hits += 1;
            }
            if end_of_stream {
                let Seen {
                    bytes,
                    chunks,
                    hits,
                } = self.seen;
                let message = format!(
                    "stream native: {bytes} bytes, {chunks} chunks, {hits} with the marker"
                );
                proxy_wasm::hostcalls::log(LogLevel::Debug, &message).ok();
            }
            return Action::Continue;
        }
        if self.workload != Workload::Json {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause; // buffer the whole body
        }
        let Some(body) = self.get_http_response_body(0, body_size) else {
            return Action::Continue;
        };
        let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Action::Continue;
        };
        doc["status"] = serde_json::Value::from("processed");
        if let Ok(out) = serde_json::to_vec(&doc) {
            self.set_http_response_body(0, body_size, &out);
        }
        Action::Continue
    }
}
