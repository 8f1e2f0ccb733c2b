//! [`EmulatorHost`]: the [`Host`] trait in memory, behaving like Envoy 1.40.
//!
//! Envoy facts it reproduces (each checked in Envoy; the end-to-end tests keep checking):
//! - header maps follow Envoy's rules ([`crate::header_map`]): lowercase names, the first value
//!   read by name, inline headers joined, a replaced header moved to the end;
//! - request headers are there only while the request headers phase runs (or is paused, until
//!   a resume), and response headers only during the response headers phase: otherwise reads
//!   find nothing and writes are refused (BadArgument); the `request.*` properties are empty
//!   outside the request headers phase and the log phase;
//! - a body write is a prepend (0, 0), a replace (0, length) or an append (start ≥ length),
//!   anything else is BadArgument;
//! - a local response and a resume take effect after the callback returns;
//! - a callout needs a known cluster and `:method`, `:path`, `:authority`;
//! - a pair list (a whole map, a local response's headers, a callout's) over 1,024 pairs or
//!   1 MiB reads as no pairs at all.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use crate::host::{BufferType, Bytes, Host, LogLevel, MapType, MetricType, Status};

use crate::header_check::{pair_list_bytes, MAX_PAIRS, MAX_PAIR_BYTES};
use crate::header_map::HeaderMap;
pub use crate::header_map::Headers;

/// A local response the plugin sent.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Headers,
    pub body: Bytes,
}

/// A callout the plugin dispatched.
#[derive(Debug, Clone, PartialEq)]
pub struct Callout {
    pub token: u32,
    pub cluster: String,
    pub headers: Headers,
    pub body: Bytes,
    pub timeout: Duration,
    /// The emulated clock when it was sent (nanoseconds since the epoch).
    pub sent_nanos: u64,
}

/// A Redis command the plugin sent (Higress's `proxy_redis_call`), and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisCall {
    pub token: u32,
    pub cluster: String,
    /// The command's arguments, as text.
    pub command: Vec<String>,
    pub outcome: RedisOutcome,
    /// The cluster's timeout.
    pub timeout: Duration,
    /// The emulated clock when it was sent (nanoseconds since the epoch).
    pub sent_nanos: u64,
}

/// How a Redis call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisOutcome {
    /// The reply's RESP bytes (a Redis error reply too).
    Reply(Vec<u8>),
    /// No reply within the cluster's timeout.
    Timeout,
    /// The connection failed (refused, reset, a reply that isn't RESP).
    Failed(String),
}

/// The answer to a callout, as the host hands it to the plugin.
#[derive(Debug, Clone, Default)]
pub struct CalloutAnswer {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: HeaderMap,
}

/// Which maps Envoy currently gives the filter: each header or trailer map only during its
/// own callback (or while paused there, until a resume), both header maps again in the log
/// phase; the request's properties (`request.*`) are empty outside those two windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Window {
    #[default]
    None,
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Log,
}

/// Everything the host knows about the stream being handled.
#[derive(Debug, Default)]
pub(crate) struct StreamData {
    pub request_headers: HeaderMap,
    pub request_trailers: HeaderMap,
    pub request_body: Bytes,
    pub response_headers: HeaderMap,
    pub response_trailers: HeaderMap,
    pub response_body: Bytes,
    pub window: Window,
    /// The plugin holds the request / response headers for the body phase (with Envoy's
    /// allow_on_headers_stop_iteration): they stay readable and writable until they go on.
    pub request_held: bool,
    pub response_held: bool,
    pub local_response: Option<LocalResponse>,
    pub resume_request: bool,
    pub resume_response: bool,
    pub callouts: Vec<Callout>,
    /// The callout answer being delivered, while its callback runs.
    pub answer: Option<CalloutAnswer>,
    pub redis_calls: Vec<RedisCall>,
    /// The Redis reply being delivered, while its callback runs.
    pub redis_reply: Option<Bytes>,
    /// The stream's filter state as the plugin set it: `wasm.<name>` for `set_property`,
    /// Envoy's own objects by their key for `set_envoy_filter_state`. Bytes as given.
    pub filter_state: BTreeMap<String, Bytes>,
    /// Whether the plugin asked the proxy to pick the request's route again.
    pub route_cache_cleared: bool,
}

/// The filter state keys Envoy 1.40 has an object factory for (its well-known filter state
/// objects), which `set_envoy_filter_state` accepts, and whether a value is one the factory
/// makes an object of. Any other key is `NotFound`, as in Envoy.
fn envoy_object(key: &str, value: &str) -> Option<bool> {
    let address = || value.parse::<std::net::SocketAddr>().is_ok();
    Some(match key {
        "envoy.network.upstream_server_name"
        | "envoy.network.application_protocols"
        | "envoy.network.upstream_subject_alt_names"
        | "envoy.tcp_proxy.cluster"
        | "envoy.upstream.dynamic_host" => true,
        "envoy.upstream.dynamic_port" => value.parse::<u16>().is_ok(),
        "envoy.tcp_proxy.disable_tunneling" => matches!(value, "true" | "false"),
        "envoy.network.transport_socket.original_dst_address"
        | "envoy.filters.listener.original_dst.local_ip"
        | "envoy.filters.listener.original_dst.remote_ip" => address(),
        _ => return None,
    })
}

/// One line of the proxy log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

#[derive(Debug, Default)]
pub(crate) struct HostState {
    pub stream: StreamData,
    pub log: Vec<LogLine>,
    pub clusters: BTreeSet<String>,
    pub next_token: u32,
    /// Requests run so far (the emulated `x-request-id` counts them).
    pub requests: u64,
    /// Every host call the plugin made, in order, for traces.
    pub calls: Vec<String>,
    /// Where in `calls` the plugin began holding back a map's writes (see
    /// [`Host::writes_held`]).
    held: Vec<(&'static str, usize)>,
    /// Properties of the proxy and the current stream, by dotted path (`request.path`).
    pub properties: BTreeMap<String, Bytes>,
    /// Shared data: value and version, as every worker sees it.
    pub shared: BTreeMap<String, (Bytes, u32)>,
    pub next_cas: u32,
    /// Metrics by id: kind, name, value.
    pub metrics: Vec<Metric>,
    /// The proxy clock, in nanoseconds since the Unix epoch.
    pub now_nanos: u64,
    /// The tick period the plugin asked for, in milliseconds (0: none).
    pub tick_period_ms: u32,
    /// Trace each call's operation count (`operations N`), to compare the engines.
    pub count_operations: bool,
    /// Redis clusters by name, each with its server.
    #[cfg(not(target_arch = "wasm32"))]
    pub redis: BTreeMap<String, super::redis::RedisTarget>,
}

impl HostState {
    /// A new call's token (callouts and Redis calls share the count, so tokens are unique
    /// and tell the order calls were made in) and the time it is sent.
    fn next_call(&mut self) -> (u32, u64) {
        self.next_token += 1;
        (self.next_token, self.now_nanos)
    }
}

/// A metric the plugin defined, as Envoy's stats would show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub kind: MetricType,
    pub name: String,
    /// A counter's or a gauge's value (a histogram has none).
    pub value: u64,
    /// A histogram's recorded values, in order.
    pub recorded: Vec<u64>,
}

/// A shared handle on the emulated proxy; the plugin holds one, the emulator another.
#[derive(Clone, Default)]
pub struct EmulatorHost(pub(crate) Rc<RefCell<HostState>>);

/// Whether Envoy reads a pair list of this size: past the limits its pair parser gives no
/// pairs at all (measured, see [`crate::header_check::MAX_PAIRS`]).
fn fits_one_piece(pairs: usize, bytes: usize) -> bool {
    pairs <= MAX_PAIRS && bytes <= MAX_PAIR_BYTES
}

/// The arguments of a RESP command, as text, for the trace; a long one cut short.
fn command_words(query: &[u8]) -> Vec<String> {
    let bounds = crate::resp::Bounds {
        max_array: usize::MAX,
        max_depth: 4,
    };
    let words = crate::resp::decode(query, bounds).ok();
    let words = words
        .and_then(|w| w.try_cast::<rhai::Array>())
        .unwrap_or_default();
    words
        .iter()
        .map(|w| {
            let text = w.to_string();
            let text = match text.char_indices().nth(60) {
                Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
                None => text,
            };
            // A word that isn't one shows quoted, so the command reads as Redis would split it.
            match text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == '"') {
                true => format!("{text:?}"),
                false => text,
            }
        })
        .collect()
}

/// What a browser build has in place of a Redis server: nothing.
#[cfg(target_arch = "wasm32")]
pub(crate) struct NoRedis {
    pub timeout: Duration,
}

#[cfg(target_arch = "wasm32")]
impl NoRedis {
    fn configure(&mut self, _: &str, _: &str, _: u32, _: u32) {}
    fn call(&mut self, _: &[u8]) -> RedisOutcome {
        RedisOutcome::Failed("no sockets".into())
    }
}

fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() > 80 {
        let cut = (0..=80)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{:?}… ({} bytes)", &text[..cut], bytes.len())
    } else {
        format!("{text:?}")
    }
}

impl EmulatorHost {
    /// Makes `cluster` a Redis cluster, its server at `address` (`host:port`), with the
    /// defaults of a cluster nobody initialised.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn add_redis(&self, cluster: &str, address: &str) {
        let target = super::redis::RedisTarget::new(address);
        self.0
            .borrow_mut()
            .redis
            .insert(cluster.to_string(), target);
    }

    fn trace(&self, call: String) {
        self.0.borrow_mut().calls.push(call);
    }

    /// A metric's name for the trace (its id when there is none).
    fn metric_name(&self, id: u32) -> String {
        match self.0.borrow().metrics.get(id as usize) {
            Some(metric) => format!("{:?}", metric.name),
            None => format!("#{id}"),
        }
    }

    /// The header map `map` of the current stream, when Envoy would give it now.
    /// Envoy clears the route cache on every request header write of a wasm filter.
    fn wrote(&self, map: MapType) {
        if map == MapType::HttpRequestHeaders {
            self.0.borrow_mut().stream.route_cache_cleared = true;
        }
    }

    /// Runs `f` on the Redis cluster `name`; `BadArgument` when the proxy has no such cluster.
    #[cfg(not(target_arch = "wasm32"))]
    fn with_redis<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut super::redis::RedisTarget) -> R,
    ) -> Result<R, Status> {
        let mut state = self.0.borrow_mut();
        state.redis.get_mut(name).map(f).ok_or(Status::BadArgument)
    }

    #[cfg(target_arch = "wasm32")]
    fn with_redis<R>(&self, _: &str, _: impl FnOnce(&mut NoRedis) -> R) -> Result<R, Status> {
        Err(Status::InternalFailure)
    }

    fn with_map<R>(&self, map: MapType, f: impl FnOnce(&mut HeaderMap) -> R) -> Result<R, Status> {
        let mut state = self.0.borrow_mut();
        let s = &mut state.stream;
        let headers = match map {
            MapType::HttpRequestHeaders
                if s.request_held || matches!(s.window, Window::RequestHeaders | Window::Log) =>
            {
                &mut s.request_headers
            }
            MapType::HttpResponseHeaders
                if s.response_held || matches!(s.window, Window::ResponseHeaders | Window::Log) =>
            {
                &mut s.response_headers
            }
            MapType::HttpRequestTrailers if s.window == Window::RequestTrailers => {
                &mut s.request_trailers
            }
            MapType::HttpResponseTrailers if s.window == Window::ResponseTrailers => {
                &mut s.response_trailers
            }
            MapType::HttpCallResponseHeaders => match &mut s.answer {
                Some(a) => &mut a.headers,
                None => return Err(Status::NotFound),
            },
            MapType::HttpCallResponseTrailers => match &mut s.answer {
                Some(a) => &mut a.trailers,
                None => return Err(Status::NotFound),
            },
            _ => return Err(Status::BadArgument),
        };
        Ok(f(headers))
    }
}

impl Host for EmulatorHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.trace(format!(
            "log_{}({message:?})",
            format!("{level:?}").to_lowercase()
        ));
        self.0.borrow_mut().log.push(LogLine {
            level,
            message: message.to_string(),
        });
    }

    fn get_map(&self, map: MapType) -> Result<HeaderMap, Status> {
        self.trace(format!("get_map({map:?})"));
        // Envoy answers an unavailable header map with an empty one.
        Ok(self.with_map(map, |h| h.clone()).unwrap_or_default())
    }

    fn set_map(&self, map: MapType, headers: &HeaderMap) -> Result<(), Status> {
        self.trace(format!("set_map({map:?}, {} pairs)", headers.len()));
        // Envoy removes every header and adds the given ones one by one, with its rules: the
        // plugin built the map with the same rules, so that gives the map as it is. A list
        // over the pair limits reads as no pairs: the map is left empty.
        let fits = fits_one_piece(headers.len(), headers.abi_size());
        self.wrote(map);
        self.with_map(map, |h| {
            *h = if fits {
                headers.clone()
            } else {
                HeaderMap::new()
            }
        })
    }

    fn get_map_value(&self, map: MapType, name: &str) -> Result<Option<Bytes>, Status> {
        self.trace(format!("get_header({map:?}, {name:?})"));
        self.with_map(map, |h| h.get(name).map(<[u8]>::to_vec))
    }

    fn replace_map_value(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        self.trace(format!(
            "replace_header({map:?}, {name:?}, {})",
            show(value)
        ));
        self.wrote(map);
        self.with_map(map, |h| h.replace(map, name, value))
    }

    fn remove_map_value(&self, map: MapType, name: &str) -> Result<(), Status> {
        self.trace(format!("remove_header({map:?}, {name:?})"));
        self.wrote(map);
        self.with_map(map, |h| h.remove(name))
    }

    fn add_map_value(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        self.trace(format!("add_header({map:?}, {name:?}, {})", show(value)));
        self.wrote(map);
        self.with_map(map, |h| h.add(map, name, value))
    }

    fn get_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Bytes>, Status> {
        self.trace(format!(
            "get_buffer({buffer:?}, start {start}, max {max_size})"
        ));
        let state = self.0.borrow();
        let s = &state.stream;
        let bytes = match buffer {
            BufferType::HttpRequestBody => &s.request_body,
            BufferType::HttpResponseBody => &s.response_body,
            BufferType::HttpCallResponseBody => match &s.answer {
                Some(a) => &a.body,
                None => return Err(Status::NotFound),
            },
            _ => return Err(Status::BadArgument),
        };
        let start = start.min(bytes.len());
        let end = start.saturating_add(max_size).min(bytes.len());
        Ok(bytes.get(start..end).map(<[u8]>::to_vec))
    }

    fn set_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status> {
        self.trace(format!(
            "set_buffer({buffer:?}, start {start}, size {size}, {})",
            show(data)
        ));
        let mut state = self.0.borrow_mut();
        let bytes = match buffer {
            BufferType::HttpRequestBody => &mut state.stream.request_body,
            BufferType::HttpResponseBody => &mut state.stream.response_body,
            _ => return Err(Status::BadArgument),
        };
        let len = bytes.len();
        if start == 0 && size == 0 {
            bytes.splice(0..0, data.iter().copied());
        } else if start == 0 && size == len {
            *bytes = data.to_vec();
        } else if start >= len {
            bytes.extend_from_slice(data);
        } else {
            return Err(Status::BadArgument);
        }
        Ok(())
    }

    fn send_http_response(
        &self,
        status: u32,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<(), Status> {
        self.trace(format!(
            "send_http_response({status}, {} headers, {})",
            headers.len(),
            show(body)
        ));
        let mut state = self.0.borrow_mut();
        let bytes = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let headers = if fits_one_piece(headers.len(), pair_list_bytes(headers.len(), bytes)) {
            headers
                .iter()
                .map(|(k, v)| (lower(k), v.to_vec()))
                .collect()
        } else {
            Vec::new()
        };
        state.stream.local_response = Some(LocalResponse {
            status,
            headers,
            body: body.to_vec(),
        });
        Ok(())
    }

    fn resume_http_request(&self) -> Result<(), Status> {
        self.trace("resume_http_request()".into());
        let mut state = self.0.borrow_mut();
        state.stream.resume_request = true;
        // Envoy lets go of the request headers at once: reads and writes after a resume in
        // the same callback are refused (BadArgument), `request.*` properties are empty.
        if state.stream.window == Window::RequestHeaders {
            state.stream.window = Window::None;
        }
        Ok(())
    }

    fn resume_http_response(&self) -> Result<(), Status> {
        self.trace("resume_http_response()".into());
        self.0.borrow_mut().stream.resume_response = true;
        Ok(())
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, Status> {
        self.trace(format!(
            "dispatch_http_call({cluster:?}, {headers:?}, {}, {} ms)",
            show(body),
            timeout.as_millis()
        ));
        let mut state = self.0.borrow_mut();
        let bytes = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let headers = if fits_one_piece(headers.len(), pair_list_bytes(headers.len(), bytes)) {
            headers
        } else {
            &[]
        };
        let has = |name: &str| headers.iter().any(|(k, v)| *k == name && !v.is_empty());
        if !state.clusters.contains(cluster)
            || !has(":method")
            || !has(":path")
            || !has(":authority")
        {
            return Err(Status::BadArgument);
        }
        let (token, sent_nanos) = state.next_call();
        state.stream.callouts.push(Callout {
            token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (lower(k), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            timeout,
            sent_nanos,
        });
        Ok(token)
    }

    /// Only natively: a browser build has no sockets.
    fn has_redis(&self) -> bool {
        cfg!(not(target_arch = "wasm32"))
    }

    /// As Higress's Envoy: an unknown cluster is `BadArgument`; the settings take effect at
    /// the next connection (the current one is closed). It never connects.
    fn redis_init(
        &self,
        cluster: &str,
        username: &str,
        password: &str,
        timeout_ms: u32,
    ) -> Result<(), Status> {
        let password_shown = if password.is_empty() { "none" } else { "given" };
        self.trace(format!(
            "redis_init({cluster:?}, username {username:?}, password {password_shown}, \
             {timeout_ms} ms)"
        ));
        let (name, params) = cluster.split_once('?').unwrap_or((cluster, ""));
        let database = params
            .split('&')
            .find_map(|p| p.strip_prefix("db="))
            .and_then(|db| db.parse().ok())
            .unwrap_or(0);
        self.with_redis(name, |target| {
            target.configure(username, password, timeout_ms, database)
        })
    }

    /// Sends the command to the cluster's server at once (the reply is delivered after the
    /// call into the plugin returns). An unknown cluster is `BadArgument`.
    fn redis_call(&self, cluster: &str, query: &[u8]) -> Result<u32, Status> {
        let command = command_words(query);
        self.trace(format!("redis_call({cluster:?}, {})", command.join(" ")));
        let name = cluster.split_once('?').map_or(cluster, |(name, _)| name);
        let (outcome, timeout) =
            self.with_redis(name, |target| (target.call(query), target.timeout))?;
        let mut state = self.0.borrow_mut();
        let (token, sent_nanos) = state.next_call();
        state.stream.redis_calls.push(RedisCall {
            token,
            cluster: cluster.to_string(),
            command,
            outcome,
            timeout,
            sent_nanos,
        });
        Ok(token)
    }

    /// As Envoy: outside a reply's callback the buffer is empty.
    fn redis_reply(&self, max_size: usize) -> Result<Option<Bytes>, Status> {
        self.trace(format!(
            "get_buffer(RedisCallResponse, start 0, max {max_size})"
        ));
        let state = self.0.borrow();
        let reply = state.stream.redis_reply.as_deref().unwrap_or_default();
        Ok(Some(
            reply
                .get(..max_size.min(reply.len()))
                .unwrap_or_default()
                .to_vec(),
        ))
    }

    fn get_property(&self, path: &[&str]) -> Result<Option<Bytes>, Status> {
        self.trace(format!("get_property({path:?})"));
        let state = self.0.borrow();
        let path = path.join(".");
        if path.starts_with("request.")
            && !matches!(state.stream.window, Window::RequestHeaders | Window::Log)
        {
            // As Envoy: empty once the request headers phase let the request go (measured:
            // in the body, trailers and response phases, and after a resume).
            return Ok(Some(Vec::new()));
        }
        Ok(state.properties.get(&path).cloned())
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), Status> {
        self.trace(format!("set_property({path:?}, {})", show(value)));
        let mut state = self.0.borrow_mut();
        // Envoy's key is `wasm.` and the path as the plugin sends it, segments joined by NUL.
        let key = format!("wasm.{}", path.join("\0"));
        state.stream.filter_state.insert(key, value.to_vec());
        state.properties.insert(path.join("."), value.to_vec());
        Ok(())
    }

    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Option<Bytes>, Status> {
        if name == "clear_route_cache" {
            self.trace("clear_route_cache()".into());
            self.0.borrow_mut().stream.route_cache_cleared = true;
            return Ok(None);
        }
        if name != "set_envoy_filter_state" {
            self.trace(format!(
                "call_foreign_function({name:?}, {})",
                show(arguments)
            ));
            return Err(Status::NotFound);
        }
        let (key, value) = match crate::proto::parse_set_filter_state_arguments(arguments) {
            Ok(parsed) => parsed,
            Err(why) => {
                self.trace(format!("set_envoy_filter_state(<{why}>)"));
                return Err(Status::BadArgument);
            }
        };
        let call = format!("set_envoy_filter_state({key:?}, {})", show(&value));
        match envoy_object(&key, &String::from_utf8_lossy(&value)) {
            None => {
                self.trace(format!(
                    "{call}: NotFound (Envoy has no object for that name)"
                ));
                Err(Status::NotFound)
            }
            Some(false) => {
                self.trace(format!(
                    "{call}: BadArgument (Envoy's object refuses the value)"
                ));
                Err(Status::BadArgument)
            }
            Some(true) => {
                self.trace(call);
                self.0.borrow_mut().stream.filter_state.insert(key, value);
                Ok(None)
            }
        }
    }

    fn get_shared_data(&self, key: &str) -> Result<(Option<Bytes>, u32), Status> {
        self.trace(format!("get_shared_data({key:?})"));
        Ok(match self.0.borrow().shared.get(key) {
            Some((value, version)) => (Some(value.clone()), *version),
            None => (None, 0),
        })
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
        self.trace(format!(
            "set_shared_data({key:?}, {}, cas {cas})",
            show(value)
        ));
        let mut state = self.0.borrow_mut();
        // Like Envoy: a nonzero cas must match an existing key's version; versions come from
        // one counter for all keys.
        if let Some((_, version)) = state.shared.get(key) {
            if cas != 0 && cas != *version {
                return Err(Status::CasMismatch);
            }
        }
        state.next_cas += 1;
        let version = state.next_cas;
        state
            .shared
            .insert(key.to_string(), (value.to_vec(), version));
        Ok(())
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        let mut state = self.0.borrow_mut();
        if let Some(id) = state
            .metrics
            .iter()
            .position(|m| m.name == name && m.kind == kind)
        {
            return Ok(id as u32);
        }
        state.metrics.push(Metric {
            kind,
            name: name.to_string(),
            value: 0,
            recorded: Vec::new(),
        });
        Ok(state.metrics.len() as u32 - 1)
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        self.trace(format!(
            "increment_metric({}, {offset})",
            self.metric_name(id)
        ));
        let mut state = self.0.borrow_mut();
        let metric = state.metrics.get_mut(id as usize).ok_or(Status::NotFound)?;
        if metric.kind == MetricType::Histogram
            || (metric.kind == MetricType::Counter && offset < 0)
        {
            return Err(Status::BadArgument);
        }
        metric.value = metric.value.saturating_add_signed(offset);
        Ok(())
    }

    /// As Envoy: a counter adds the value, a gauge takes it, a histogram records it.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        self.trace(format!("record_metric({}, {value})", self.metric_name(id)));
        let mut state = self.0.borrow_mut();
        let metric = state.metrics.get_mut(id as usize).ok_or(Status::NotFound)?;
        // proxy-wasm's type is non_exhaustive; the playground's copy (`proxy_types`) is not.
        #[allow(unreachable_patterns)]
        match metric.kind {
            MetricType::Counter => metric.value = metric.value.saturating_add(value),
            MetricType::Gauge => metric.value = value,
            MetricType::Histogram => metric.recorded.push(value),
            _ => return Err(Status::BadArgument),
        }
        Ok(())
    }

    fn get_metric(&self, id: u32) -> Result<u64, Status> {
        let state = self.0.borrow();
        let metric = state.metrics.get(id as usize).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(metric.value),
        }
    }

    fn current_time_nanos(&self) -> Result<u64, Status> {
        Ok(self.0.borrow().now_nanos)
    }

    fn set_tick_period(&self, period_ms: u32) -> Result<(), Status> {
        self.0.borrow_mut().tick_period_ms = period_ms;
        Ok(())
    }

    fn writes_held(&self, what: &'static str) {
        let mut state = self.0.borrow_mut();
        let at = state.calls.len();
        state.held.retain(|(w, _)| *w != what);
        state.held.push((what, at));
        state.calls.push(format!(
            "-- the script's writes to the {what} from here are held back, to go to the proxy \
             together"
        ));
    }

    /// Says where the held-back writes go out, when the script's other calls went first;
    /// otherwise the writes follow at once, in the script's order, and the trace says nothing.
    fn counts_operations(&self) -> bool {
        self.0.borrow().count_operations
    }

    fn operations_counted(&self, count: u64) {
        self.trace(format!("operations {count}"));
    }

    fn writes_sent(&self, what: &'static str) {
        let mut state = self.0.borrow_mut();
        let Some(i) = state.held.iter().position(|(w, _)| *w == what) else {
            return;
        };
        let (_, at) = state.held.remove(i);
        let marker = state
            .calls
            .get(at)
            .is_some_and(|l| l.starts_with("-- the script's"));
        if !marker {
            return; // the writes were dropped (the call failed) and the trace moved on
        }
        if at + 1 == state.calls.len() {
            state.calls.truncate(at);
            for (_, later) in &mut state.held {
                *later = (*later).min(at);
            }
        } else {
            state.calls.push(format!(
                "-- the writes to the {what} held back above go to the proxy now, after the \
                 calls the script made since"
            ));
        }
    }
}
