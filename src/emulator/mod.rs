//! The host emulator: runs a plugin natively, as Envoy would, with no proxy.
//!
//! [`Emulator::run`] takes one request through the plugin the way Envoy drives a filter:
//! headers, body chunks (buffered while a body phase waits for the end), trailers, pauses and
//! callouts answered by a [`Callouts`] policy, the upstream's response, then the response
//! phases. [`host::EmulatorHost`] is the in-memory proxy the bindings talk to.
//!
//! ```
//! use proxy_rhai::emulator::{Emulator, Request, Response};
//! let emulator = Emulator::with_script(
//!     r#"fn on_request_headers() { add_request_header("hello", "world"); }"#,
//!     serde_json::json!({}),
//! ).unwrap();
//! let outcome = emulator.run(&Request::get("/"), &mut Response::ok("fine"));
//! assert_eq!(outcome.upstream_header("hello").as_deref(), Some("world"));
//! assert_eq!(outcome.response.status, 200);
//! ```

pub mod host;
#[cfg(not(target_arch = "wasm32"))]
mod redis;
#[cfg(tools)]
mod session;
#[cfg(tools)]
pub use session::Unparsed;

use std::rc::Rc;

pub use host::{
    Callout, CalloutAnswer, EmulatorHost, Headers, LocalResponse, LogLine, Metric, RedisCall,
    RedisOutcome,
};
use host::{StreamData, Window};

use crate::config::ConfigError;
use crate::header_map::HeaderMap;
use crate::host::{LogLevel, MapType};
use crate::plugin::Plugin;
use crate::stream::{Action, HttpStream};

/// Where the emulator's clock starts: 2026-01-01T00:00:00Z, in milliseconds since the Unix
/// epoch. Fixed, so a test's output is the same on every run; tests move it.
pub const START_TIME_MS: u64 = 1_767_225_600_000;

/// Envoy's default per-connection buffer limit: a body buffered past it is refused by Envoy
/// itself (413 for a request, 500 for a response).
pub const DEFAULT_BUFFER_LIMIT: usize = 1 << 20;

/// How the body of the 503 Envoy answers a callout with begins when the target can't be
/// reached or resets before answering (the reason follows).
pub const UPSTREAM_RESET_BEFORE_HEADERS: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: ";

/// The body of the 503 Envoy answers a callout with when its target can't be reached.
pub const UPSTREAM_CONNECT_FAILURE_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";

/// The body of the 503 Envoy answers a callout with when its target closes the connection
/// before answering.
pub const UPSTREAM_TERMINATED_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";

/// The body of the 504 Envoy answers a callout with when its timeout expires.
pub const UPSTREAM_TIMEOUT_BODY: &str = "upstream request timeout";

/// An answer Envoy makes up itself, as it hands it to the plugin.
fn envoy_answer(status: u32, body: &str) -> (CalloutAnswer, usize, usize) {
    let headers: Headers = vec![
        (":status".into(), status.to_string().into_bytes()),
        ("content-length".into(), body.len().to_string().into_bytes()),
        ("content-type".into(), b"text/plain".to_vec()),
    ];
    let (n, size) = (headers.len(), body.len());
    (
        CalloutAnswer {
            headers: HeaderMap::from_list(&headers),
            body: body.as_bytes().to_vec(),
            trailers: HeaderMap::new(),
        },
        n,
        size,
    )
}

/// A request as the client sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    /// The body arrives in chunks of at most this many bytes.
    pub chunk_size: usize,
    /// The body's first chunks, by size, when they are given (the rest in `chunk_size` pieces).
    pub chunk_sizes: Vec<usize>,
    /// The route Envoy matched (property `xds.route_name`).
    pub route_name: String,
    /// The upstream cluster of that route (property `xds.cluster_name`).
    pub cluster_name: String,
    /// What other filters wrote into the stream's dynamic metadata before the plugin, by
    /// namespace (property `metadata`, as Envoy encodes it).
    pub metadata: Metadata,
    /// The route's metadata, by namespace (property `xds.route_metadata`).
    pub route_metadata: Metadata,
    /// The upstream cluster's metadata, by namespace (property `xds.cluster_metadata`).
    pub cluster_metadata: Metadata,
    /// The client's end of the connection, `ip:port` (property `source.address`, unless an
    /// `x-forwarded-for` header names another: see [`Request::source_address`]).
    pub peer_address: String,
    /// The connection's TLS; `None`: plain HTTP.
    pub tls: Option<Tls>,
}

/// The TLS of a request's connection, as Envoy's `connection.*` properties describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub version: String,
    /// The server name the client asked for (empty: none, or no `tls_inspector`).
    pub sni: String,
    pub peer_certificate_presented: bool,
    /// The client certificate's subject (empty without one).
    pub peer_subject: String,
    /// The proxy's certificate's subject.
    pub subject: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// Lowercase hex (empty without a client certificate).
    pub peer_certificate_sha256: String,
}

impl Default for Tls {
    /// TLS 1.3 without a client certificate.
    fn default() -> Self {
        Self {
            version: "TLSv1.3".into(),
            sni: String::new(),
            peer_certificate_presented: false,
            peer_subject: String::new(),
            subject: "CN=proxy".into(),
            uri_sans: Vec::new(),
            dns_sans: Vec::new(),
            peer_certificate_sha256: String::new(),
        }
    }
}

impl Tls {
    /// The `connection.*` properties Envoy 1.40 gives for this connection (measured): the
    /// SAN ones hold only the first SAN of each kind, and those about the client certificate
    /// are absent without one, except its subject, which is empty.
    fn properties(tls: Option<&Tls>) -> Vec<(&'static str, Vec<u8>)> {
        let presented = tls.is_some_and(|t| t.peer_certificate_presented);
        let sni = tls.map_or(&[][..], |t| t.sni.as_bytes());
        let mut props = vec![
            ("connection.mtls", vec![u8::from(presented)]),
            ("connection.requested_server_name", sni.to_vec()),
        ];
        let Some(tls) = tls else { return props };
        let text = |v: &str| v.as_bytes().to_vec();
        props.push(("connection.tls_version", text(&tls.version)));
        props.push(("connection.subject_local_certificate", text(&tls.subject)));
        props.push((
            "connection.subject_peer_certificate",
            text(&tls.peer_subject),
        ));
        for (key, first) in [
            ("connection.uri_san_peer_certificate", tls.uri_sans.first()),
            ("connection.dns_san_peer_certificate", tls.dns_sans.first()),
        ] {
            if let Some(first) = first {
                props.push((key, text(first)));
            }
        }
        if !tls.peer_certificate_sha256.is_empty() {
            props.push((
                "connection.sha256_peer_certificate_digest",
                text(&tls.peer_certificate_sha256),
            ));
        }
        props
    }
}

/// Metadata by namespace (`filter_metadata`): each a JSON object, which Envoy holds as a
/// `google.protobuf.Struct` (its numbers as doubles).
pub type Metadata = std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>;

impl Request {
    /// A GET of `path` for host `example.com`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path, Vec::new())
    }

    /// A POST of `body` to `path`.
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", path, body.into())
    }

    pub fn new(method: &str, path: &str, body: Vec<u8>) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            authority: "example.com".into(),
            headers: Vec::new(),
            body,
            trailers: Vec::new(),
            chunk_size: 16 << 10,
            chunk_sizes: Vec::new(),
            route_name: "default".into(),
            cluster_name: "upstream".into(),
            metadata: Metadata::new(),
            route_metadata: Metadata::new(),
            cluster_metadata: Metadata::new(),
            peer_address: "127.0.0.1:40000".into(),
            tls: None,
        }
    }

    /// Adds a header (name lowercased, as a proxy sees it).
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// The header map as Envoy gives it to filters: pseudo-headers first, then the client's
    /// headers, then what Envoy's connection manager adds before any filter (measured in
    /// Envoy 1.40, plain HTTP, default settings): `x-forwarded-proto: http` and
    /// `x-request-id: request_id` when the client sent none. A client's `x-forwarded-proto` of
    /// `http` or `https` (any case) sets `:scheme`; another value leaves it `http`.
    fn header_map(&self, request_id: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.push(":authority", self.authority.as_bytes());
        map.push(":path", self.path.as_bytes());
        map.push(":method", self.method.as_bytes());
        map.push(":scheme", self.scheme().as_bytes());
        // Envoy's codec adds the headers one by one: repeated inline headers are joined.
        for (name, value) in &self.headers {
            map.add(MapType::HttpRequestHeaders, name, value);
        }
        let absent = |map: &HeaderMap, name| map.get(name).is_none();
        if !self.body.is_empty()
            && absent(&map, "content-length")
            && absent(&map, "transfer-encoding")
        {
            map.push("content-length", self.body.len().to_string().as_bytes());
        }
        if absent(&map, "x-forwarded-proto") {
            map.push("x-forwarded-proto", self.scheme().as_bytes());
        }
        if absent(&map, "x-request-id") {
            map.push("x-request-id", request_id.as_bytes());
        }
        map
    }

    /// `:scheme` as Envoy sets it: from the client's `x-forwarded-proto` when that names one,
    /// else from the connection.
    fn scheme(&self) -> String {
        match header(&self.headers, "x-forwarded-proto") {
            Some(proto) if proto.eq_ignore_ascii_case("https") => "https".into(),
            Some(proto) if proto.eq_ignore_ascii_case("http") => "http".into(),
            _ if self.tls.is_some() => "https".into(),
            _ => "http".into(),
        }
    }

    /// The client's address as Envoy's connection manager decides it with its defaults
    /// (`use_remote_address: false`, measured in 1.40): the last address of `x-forwarded-for`
    /// when that is an IP address, with port 0; else the connection's peer.
    pub fn source_address(&self) -> (String, i64) {
        let last = header(&self.headers, "x-forwarded-for")
            .and_then(|xff| xff.rsplit(',').next().map(|a| a.trim().to_string()));
        match last.and_then(|a| a.parse::<std::net::IpAddr>().ok()) {
            Some(ip) => (std::net::SocketAddr::new(ip, 0).to_string(), 0),
            None => {
                let port = self.peer_address.rsplit_once(':');
                let port = port.and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
                (self.peer_address.clone(), port)
            }
        }
    }
}

/// A response as the upstream sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub chunk_size: usize,
    /// The body's first chunks, by size (the rest in `chunk_size` pieces).
    pub chunk_sizes: Vec<usize>,
}

impl Response {
    /// A 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::new(200, body)
    }

    pub fn new(status: u32, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            trailers: Vec::new(),
            chunk_size: 16 << 10,
            chunk_sizes: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.push(":status", self.status.to_string().as_bytes());
        for (name, value) in &self.headers {
            map.add(MapType::HttpResponseHeaders, name, value);
        }
        if !self.body.is_empty()
            && map.get("content-length").is_none()
            && map.get("transfer-encoding").is_none()
        {
            map.push("content-length", self.body.len().to_string().as_bytes());
        }
        map
    }
}

/// What answers the request the plugin lets through.
pub trait Upstream {
    fn respond(&mut self, request: &Forwarded) -> Response;
}

impl Upstream for Response {
    fn respond(&mut self, _: &Forwarded) -> Response {
        self.clone()
    }
}

impl<F: FnMut(&Forwarded) -> Response> Upstream for F {
    fn respond(&mut self, request: &Forwarded) -> Response {
        self(request)
    }
}

/// How a callout is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// An answer with this status, headers and body.
    Answer {
        status: u32,
        headers: Headers,
        body: Vec<u8>,
    },
    /// No answer in time: like Envoy, the callback sees Envoy's own 504 (`upstream request
    /// timeout`) when the call's timeout expires (the emulated clock moves on to then).
    NoAnswer,
    /// The target can't be reached (it refuses the connection): like Envoy, the callback sees
    /// Envoy's own 503 (`upstream connect error or disconnect/reset before headers. reset
    /// reason: remote connection failure`).
    ConnectFailure,
    /// The target closes the connection before answering: like Envoy, the callback sees
    /// Envoy's own 503 (`… reset reason: connection termination`).
    Reset,
    /// The call failed with no response at all (a reset after the answer's headers): the
    /// callback sees status 0, no headers and an empty body.
    Failure,
}

/// Decides the answer to each callout.
pub trait Callouts {
    fn reply(&mut self, call: &Callout) -> Reply;
}

/// Every callout times out.
impl Callouts for () {
    fn reply(&mut self, _: &Callout) -> Reply {
        Reply::NoAnswer
    }
}

impl<F: FnMut(&Callout) -> Reply> Callouts for F {
    fn reply(&mut self, call: &Callout) -> Reply {
        self(call)
    }
}

/// The request as it left the proxy for the upstream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Forwarded {
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The body as it went on, piece by piece (what the proxy passed at once).
    pub chunks: Vec<Vec<u8>>,
    pub trailers: Headers,
}

/// The response as it reached the client.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientResponse {
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The body as it reached the client, piece by piece (empty for a local response).
    pub chunks: Vec<Vec<u8>>,
    /// Sent by the plugin (or by the proxy on its behalf), not by the upstream.
    pub local: bool,
    /// The stream was reset after the headers went out (a local response or an error too late
    /// to change the status): the client saw a truncated response.
    pub reset: bool,
}

/// Everything one request did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// What reached the upstream; `None` when the request never got there.
    pub upstream: Option<Forwarded>,
    /// What reached the client; status 0 when the stream stalled.
    pub response: ClientResponse,
    /// Callouts made, in order.
    pub callouts: Vec<Callout>,
    /// Redis commands sent, in order.
    pub redis_calls: Vec<RedisCall>,
    /// The proxy log lines the request produced.
    pub log: Vec<LogLine>,
    /// Every host call made, in order, with the body's pieces as they arrived
    /// (`-- request data: N bytes`).
    pub trace: Vec<String>,
    /// The request's context (`set_context`) when it ended: each key, and its value as
    /// `to_debug` shows it.
    pub context: Vec<(String, String)>,
    /// The proxy's calls into the plugin, in order: each callback's proxy-wasm name
    /// (`on_http_request_headers`, `on_http_call_response`, `on_log`…) and the index in
    /// `trace` of the first host call it made.
    pub events: Vec<(&'static str, usize)>,
    /// Set when the stream stopped with nothing left to resume it (a phase returned `PAUSE`
    /// with no callout pending): Envoy would hold it until a timeout.
    pub stalled: Option<String>,
    /// The filter state the plugin set, by key (`wasm.<name>` for `set_property` and
    /// `set_filter_state` of a name Envoy has no object for; Envoy's key for its own objects),
    /// as the access log's `%FILTER_STATE(key:PLAIN)%` would show it.
    pub filter_state: Vec<(String, Vec<u8>)>,
    /// Whether the route cache was cleared, by `clear_route_cache()` or, as in Envoy, by a
    /// request header write: the proxy then picks the route again.
    pub route_cache_cleared: bool,
}

impl Outcome {
    /// A header of the forwarded request (values joined by `,`).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.upstream
            .as_ref()
            .and_then(|u| header(&u.headers, name))
    }

    /// A header of the client's response (values joined by `,`).
    pub fn response_header(&self, name: &str) -> Option<String> {
        header(&self.response.headers, name)
    }

    /// Script errors the plugin logged.
    pub fn script_errors(&self) -> Vec<&str> {
        self.log
            .iter()
            .filter(|l| l.level == LogLevel::Error && l.message.starts_with("script error"))
            .map(|l| l.message.as_str())
            .collect()
    }
}

/// A body cut in the pieces it arrives in: `sizes` first, then `chunk_size` pieces.
fn pieces<'a>(body: &'a [u8], sizes: &[usize], chunk_size: usize) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = body;
    for size in sizes {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.extend(rest.chunks(chunk_size.max(1)));
    pieces
}

fn has(headers: &Headers, name: &str) -> bool {
    headers.iter().any(|(k, _)| k == name)
}

/// The values of `name` in `headers`, joined by `,` like Envoy does.
pub fn header(headers: &Headers, name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let values: Vec<String> = headers
        .iter()
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// A configured plugin in an emulated Envoy.
pub struct Emulator {
    host: EmulatorHost,
    plugin: Rc<Plugin<EmulatorHost>>,
    /// Envoy's buffer limit for bodies a filter buffers.
    pub buffer_limit: usize,
    /// Callouts made in a chunk phase are answered after this many more chunks arrived (0:
    /// before the next one), so a test can have chunks arrive while a callout holds the stream.
    /// With allow_on_headers_stop_iteration, a header phase's callouts too (0: before the
    /// body), as Envoy does when the body comes before their answers.
    pub callout_delay_chunks: usize,
    /// When `on_tick` is due next, in milliseconds (`None`: one period from the clock's next
    /// move).
    next_tick_ms: std::cell::Cell<Option<u64>>,
}

/// A call waiting for its answer.
enum Pending {
    Http(Callout),
    Redis(RedisCall),
}

/// Where the stream stands after the plugin handled an event.
enum Flow {
    /// Goes on to the next stage.
    Proceed,
    /// Finished by a local response.
    Local,
    /// Paused with nothing that will resume it.
    Stalled,
}

impl Emulator {
    /// Configures the plugin with a full plugin configuration (JSON text), as Envoy would;
    /// the error is what the plugin logged when refusing it.
    pub fn new(configuration: &str) -> Result<Self, String> {
        Self::new_at(configuration, START_TIME_MS)
    }

    /// [`Emulator::new`] with the clock at `now_ms` (milliseconds since the Unix epoch) from
    /// the start: the script's top level runs at that time.
    pub fn new_at(configuration: &str, now_ms: u64) -> Result<Self, String> {
        Self::configure_at(configuration, now_ms).map_err(|e| e.to_string())
    }

    /// [`Emulator::new_at`], refused with the plugin's own error (the script's line and column).
    pub fn configure_at(configuration: &str, now_ms: u64) -> Result<Self, ConfigError> {
        Self::configured(now_ms, |host| {
            Plugin::configure(host, configuration.as_bytes())
        })
    }

    /// [`Emulator::new`] whose trace says how many operations each call into the script
    /// counted (`operations N`), for the tests that compare the two engines.
    pub fn counting_operations(configuration: &str) -> Result<Self, String> {
        Self::configured_with(START_TIME_MS, true, |host| {
            Plugin::configure(host, configuration.as_bytes())
        })
        .map_err(|e| e.to_string())
    }

    /// What the compiled engine would make of `source` with this plugin's bindings.
    #[cfg(tools)]
    pub fn compiler_coverage(&self, source: &str) -> Result<crate::compiled::Coverage, String> {
        self.plugin
            .compiler_coverage(source)
            .map_err(|e| e.to_string())
    }

    /// The emulator of the plugin `configure` makes with its host, the clock at `now_ms`.
    fn configured(
        now_ms: u64,
        configure: impl FnOnce(EmulatorHost) -> Result<Plugin<EmulatorHost>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        Self::configured_with(now_ms, false, configure)
    }

    fn configured_with(
        now_ms: u64,
        count_operations: bool,
        configure: impl FnOnce(EmulatorHost) -> Result<Plugin<EmulatorHost>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let host = EmulatorHost::default();
        host.0.borrow_mut().now_nanos = now_ms.saturating_mul(1_000_000);
        host.0.borrow_mut().count_operations = count_operations;
        let plugin = configure(host.clone())?;
        host.0.borrow_mut().calls.clear();
        Ok(Self {
            host,
            plugin: Rc::new(plugin),
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            callout_delay_chunks: 0,
            next_tick_ms: std::cell::Cell::new(None),
        })
    }

    /// [`Emulator::new_at`] with Redis servers: each `(cluster, "host:port")` is a Redis
    /// cluster of the emulated proxy before the plugin initialises its clusters.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_redis(
        configuration: &str,
        now_ms: u64,
        redis: &[(String, String)],
    ) -> Result<Self, String> {
        Self::configured(now_ms, |host| {
            for (cluster, address) in redis {
                host.add_redis(cluster, address);
            }
            Plugin::configure(host, configuration.as_bytes())
        })
        .map_err(|e| e.to_string())
    }

    /// Makes `cluster` a Redis cluster of the emulated proxy, its server at `address`
    /// (`host:port`): the plugin's Redis calls to it go there.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn add_redis(&self, cluster: &str, address: &str) {
        self.host.add_redis(cluster, address);
    }

    /// Configures the plugin with `script` and the user's `config`.
    pub fn with_script(script: &str, config: serde_json::Value) -> Result<Self, String> {
        Self::new(&serde_json::json!({ "script": script, "config": config }).to_string())
    }

    /// Declares a cluster callouts may target (Envoy refuses calls to unknown clusters).
    pub fn add_cluster(&self, name: &str) {
        self.host.0.borrow_mut().clusters.insert(name.to_string());
    }

    /// Runs the plugin's `on_tick()` once, as the proxy's timer would.
    pub fn tick(&self) {
        self.plugin.on_tick();
    }

    /// The tick period the plugin asked for, in milliseconds (0: no `on_tick`).
    pub fn tick_period_ms(&self) -> u32 {
        self.plugin.tick_period_ms().unwrap_or(0)
    }

    /// The metrics the plugin defined, as Envoy's stats would show them.
    pub fn metrics(&self) -> Vec<host::Metric> {
        self.host.0.borrow().metrics.clone()
    }

    /// Every shared-data key and its value, in key order.
    pub fn shared_data(&self) -> Vec<(String, Vec<u8>)> {
        let state = self.host.0.borrow();
        state
            .shared
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// A shared-data value and its version, as every worker sees it.
    pub fn shared(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.host.0.borrow().shared.get(key).cloned()
    }

    /// Sets the proxy clock (nanoseconds since the Unix epoch); no tick fires.
    pub fn set_time_nanos(&self, now: u64) {
        self.host.0.borrow_mut().now_nanos = now;
        self.next_tick_ms.set(None);
    }

    /// The proxy clock, in milliseconds since the Unix epoch (starts at [`START_TIME_MS`]).
    pub fn now_ms(&self) -> u64 {
        self.host.0.borrow().now_nanos / 1_000_000
    }

    /// Sets the proxy clock, in milliseconds since the Unix epoch; no tick fires.
    pub fn set_time_ms(&self, now: u64) {
        self.set_time_nanos(now.saturating_mul(1_000_000));
    }

    /// Moves the proxy clock forward by `ms`, running `on_tick()` each time a tick period
    /// passes, with the clock at that tick's time, as the proxy's timer would.
    pub fn advance_ms(&self, ms: u64) {
        let start = self.now_ms();
        let end = start.saturating_add(ms);
        loop {
            let period = u64::from(self.tick_period_ms());
            if period == 0 {
                self.next_tick_ms.set(None);
                break;
            }
            let due = self
                .next_tick_ms
                .get()
                .unwrap_or(start.saturating_add(period));
            if due > end {
                self.next_tick_ms.set(Some(due));
                break;
            }
            self.host.0.borrow_mut().now_nanos = due.saturating_mul(1_000_000);
            self.next_tick_ms.set(Some(due.saturating_add(period)));
            self.tick();
        }
        self.host.0.borrow_mut().now_nanos = end.saturating_mul(1_000_000);
    }

    /// A metric the plugin defined, by name.
    pub fn metric(&self, name: &str) -> Option<host::Metric> {
        self.host
            .0
            .borrow()
            .metrics
            .iter()
            .find(|m| m.name == name)
            .cloned()
    }

    /// The log lines written at configure time and since.
    pub fn log(&self) -> Vec<LogLine> {
        self.host.0.borrow().log.clone()
    }

    /// Takes `request` through the plugin; every callout times out.
    pub fn run(&self, request: &Request, upstream: &mut dyn Upstream) -> Outcome {
        self.run_with(request, upstream, &mut ())
    }

    /// Takes `request` through the plugin, with `callouts` answering the callouts.
    pub fn run_with(
        &self,
        request: &Request,
        upstream: &mut dyn Upstream,
        callouts: &mut dyn Callouts,
    ) -> Outcome {
        let log_start = self.host.0.borrow().log.len();
        self.host.0.borrow_mut().calls.clear();
        let mut run = Run {
            host: &self.host,
            stream: HttpStream::new(self.plugin.clone()),
            callouts,
            buffer_limit: self.buffer_limit,
            callout_delay_chunks: self.callout_delay_chunks,
            delivered: Vec::new(),
            stop_iteration: self.plugin.config.allow_on_headers_stop_iteration,
            events: Vec::new(),
        };
        let mut outcome = Outcome::default();
        run.exchange(request, upstream, &mut outcome);
        run.answer_late_callouts();
        run.state().window = Window::Log;
        run.event("on_log");
        run.stream.on_log();
        outcome.context = run.stream.context();
        outcome.events = std::mem::take(&mut run.events);
        let mut state = self.host.0.borrow_mut();
        outcome.callouts = std::mem::take(&mut state.stream.callouts);
        outcome.redis_calls = std::mem::take(&mut state.stream.redis_calls);
        outcome.log = state.log[log_start..].to_vec();
        outcome.trace = std::mem::take(&mut state.calls);
        outcome.filter_state = std::mem::take(&mut state.stream.filter_state)
            .into_iter()
            .collect();
        outcome.route_cache_cleared = state.stream.route_cache_cleared;
        state.stream = StreamData::default();
        outcome
    }
}

/// One request in flight.
struct Run<'a> {
    host: &'a EmulatorHost,
    stream: HttpStream<EmulatorHost>,
    callouts: &'a mut dyn Callouts,
    buffer_limit: usize,
    callout_delay_chunks: usize,
    /// Callouts already answered.
    delivered: Vec<u32>,
    /// The calls into the plugin so far ([`Outcome::events`]).
    events: Vec<(&'static str, usize)>,
    /// Envoy's `allow_on_headers_stop_iteration`, set as the plugin's key says: a header
    /// phase's pause holds only the headers, and the body still comes to the plugin.
    stop_iteration: bool,
}

impl Run<'_> {
    /// Notes that the proxy calls the plugin's `callback` now.
    fn event(&mut self, callback: &'static str) {
        let at = self.host.0.borrow().calls.len();
        self.events.push((callback, at));
    }

    fn state(&self) -> std::cell::RefMut<'_, StreamData> {
        std::cell::RefMut::map(self.host.0.borrow_mut(), |s| &mut s.stream)
    }

    fn exchange(&mut self, request: &Request, upstream: &mut dyn Upstream, outcome: &mut Outcome) {
        let request_id = self.set_request_properties(request);
        // Request headers.
        {
            let mut s = self.state();
            s.request_headers = request.header_map(&request_id);
            s.request_trailers = HeaderMap::from_list(&request.trailers);
            s.window = Window::RequestHeaders;
        }
        let end = request.body.is_empty() && request.trailers.is_empty();
        self.event("on_http_request_headers");
        let action = self.stream.on_request_headers(end);
        match self.settle_headers(action, true, end) {
            Flow::Proceed => {}
            flow => return self.finish(flow, outcome, None),
        }
        self.state().window = Window::None;
        let chunks = pieces(&request.body, &request.chunk_sizes, request.chunk_size);
        let mut body = match self.body(&chunks, request.trailers.is_empty(), true) {
            Ok(body) => body,
            Err(flow) => return self.finish(flow, outcome, None),
        };
        if !request.trailers.is_empty() {
            self.state().window = Window::RequestTrailers;
            self.event("on_http_request_trailers");
            let action = self.stream.on_request_trailers();
            match self.settle(action, true) {
                Flow::Proceed => self.pass_held(true, &mut body),
                flow => return self.finish(flow, outcome, None),
            }
        }
        let forwarded = {
            let mut s = self.state();
            s.window = Window::None;
            s.request_held = false;
            Forwarded {
                headers: s.request_headers.to_pairs(),
                body: body.concat(),
                chunks: body,
                trailers: s.request_trailers.to_pairs(),
            }
        };
        let response = upstream.respond(&forwarded);
        outcome.upstream = Some(forwarded);
        self.host.0.borrow_mut().properties.insert(
            "response.code".into(),
            i64::from(response.status).to_le_bytes().to_vec(),
        );

        // Response headers.
        {
            let mut s = self.state();
            s.response_headers = response.header_map();
            s.response_trailers = HeaderMap::from_list(&response.trailers);
            s.window = Window::ResponseHeaders;
        }
        let end = response.body.is_empty() && response.trailers.is_empty();
        self.event("on_http_response_headers");
        let action = self.stream.on_response_headers(end);
        match self.settle_headers(action, false, end) {
            Flow::Proceed => {}
            flow => return self.finish(flow, outcome, None),
        }
        self.state().window = Window::ResponseBody;
        // The headers the client gets: now, unless the plugin holds them for the body phase.
        let sent = |run: &mut Self| {
            let s = run.state();
            (!s.response_held).then(|| {
                let headers = s.response_headers.to_pairs();
                ClientResponse {
                    status: header(&headers, ":status")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    headers,
                    ..Default::default()
                }
            })
        };
        let early = sent(self);
        let chunks = pieces(&response.body, &response.chunk_sizes, response.chunk_size);
        let mut body = match self.body(&chunks, response.trailers.is_empty(), false) {
            Ok(body) => body,
            Err(flow) => return self.finish(flow, outcome, early),
        };
        if !response.trailers.is_empty() {
            self.state().window = Window::ResponseTrailers;
            self.event("on_http_response_trailers");
            let action = self.stream.on_response_trailers();
            match self.settle(action, false) {
                Flow::Proceed => self.pass_held(false, &mut body),
                flow => return self.finish(flow, outcome, early),
            }
        }
        self.state().response_held = false;
        let Some(sent) = early.or_else(|| sent(self)) else {
            return;
        };
        outcome.response = ClientResponse {
            body: body.concat(),
            chunks: body,
            ..sent
        };
    }

    /// The properties Envoy gives for this stream (the useful ones, in Envoy's encodings).
    /// Sets the stream's properties; returns the request id (`x-request-id`).
    fn set_request_properties(&mut self, request: &Request) -> String {
        let mut state = self.host.0.borrow_mut();
        state.requests += 1;
        // Envoy makes a random UUID (v4); the emulator's count the requests, so a test's
        // output is the same on every run.
        let id = header(&request.headers, "x-request-id")
            .unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012x}", state.requests));
        let now = state.now_nanos;
        let text = |v: &str| v.as_bytes().to_vec();
        let int = |v: i64| v.to_le_bytes().to_vec();
        let size = request.body.len() as i64;
        let source = request.source_address();
        // The previous request's connection is not this one's.
        state
            .properties
            .retain(|k, _| !k.starts_with("connection."));
        for (key, value) in Tls::properties(request.tls.as_ref()).into_iter().chain([
            ("request.path", text(&request.path)),
            (
                "request.url_path",
                text(request.path.split('?').next().unwrap_or_default()),
            ),
            ("request.method", text(&request.method)),
            ("request.host", text(&request.authority)),
            ("request.scheme", text(&request.scheme())),
            ("request.protocol", text("HTTP/1.1")),
            ("request.id", text(&id)),
            ("request.time", int(now as i64)),
            ("request.size", int(size)),
            ("source.address", text(&source.0)),
            ("source.port", int(source.1)),
            ("destination.address", text("127.0.0.1:10000")),
            ("destination.port", int(10000)),
            ("xds.route_name", text(&request.route_name)),
            ("xds.cluster_name", text(&request.cluster_name)),
            ("plugin_name", text("proxy-rhai")),
            // Envoy gives each as a serialized `envoy.config.core.v3.Metadata` (measured).
            (
                "metadata",
                crate::proto::metadata_from_json(&request.metadata),
            ),
            (
                "xds.route_metadata",
                crate::proto::metadata_from_json(&request.route_metadata),
            ),
            (
                "xds.cluster_metadata",
                crate::proto::metadata_from_json(&request.cluster_metadata),
            ),
        ]) {
            state.properties.insert(key.to_string(), value);
        }
        state.properties.remove("response.code");
        id
    }

    /// The body a filter still buffers when trailers let it go.
    fn take_held(&mut self, request: bool) -> Vec<u8> {
        let mut s = self.state();
        std::mem::take(if request {
            &mut s.request_body
        } else {
            &mut s.response_body
        })
    }

    /// The filter let its buffer go on: one piece of the body as the next hop gets it.
    fn pass_held(&mut self, request: bool, passed: &mut Vec<Vec<u8>>) {
        let held = self.take_held(request);
        if !held.is_empty() {
            passed.push(held);
        }
    }

    /// Feeds a body in chunks, buffering while the plugin pauses, and returns the pieces that
    /// went on; what is still buffered at the end stays in the host's body buffer.
    fn body(
        &mut self,
        chunks: &[&[u8]],
        ends_stream: bool,
        request: bool,
    ) -> Result<Vec<Vec<u8>>, Flow> {
        let mut passed = Vec::new();
        let mut buffering = false;
        // Chunks that arrived since a chunk call paused for its callouts; the first chunk
        // counts already for a header phase's callouts left unanswered.
        let mut waited = usize::from(self.undelivered().is_some());
        for (i, chunk) in chunks.iter().enumerate() {
            let end = ends_stream && i + 1 == chunks.len();
            let size = {
                let mut s = self.state();
                let buffer = if request {
                    &mut s.request_body
                } else {
                    &mut s.response_body
                };
                if !buffering {
                    buffer.clear();
                }
                buffer.extend_from_slice(chunk);
                buffer.len()
            };
            let side = if request { "request" } else { "response" };
            let end_note = if end { ", end of stream" } else { "" };
            self.host
                .0
                .borrow_mut()
                .calls
                .push(format!("-- {side} data: {} bytes{end_note}", chunk.len()));
            self.event(if request {
                "on_http_request_body"
            } else {
                "on_http_response_body"
            });
            let action = if request {
                self.stream.on_request_body(size, end)
            } else {
                self.stream.on_response_body(size, end)
            };
            if self.state().local_response.is_some() {
                return Err(Flow::Local);
            }
            if action == Action::Continue {
                buffering = false;
                self.pass_held(request, &mut passed);
                continue;
            }
            buffering = true;
            if end {
                match self.settle(action, request) {
                    Flow::Proceed => {
                        buffering = false;
                        self.pass_held(request, &mut passed);
                    }
                    flow => return Err(flow),
                }
                continue;
            }
            let held = {
                let s = self.state();
                if request {
                    s.request_body.len()
                } else {
                    s.response_body.len()
                }
            };
            if held > self.buffer_limit {
                return Err(self.proxy_answers(if request { 413 } else { 500 }));
            }
            if self.undelivered().is_some() {
                if waited < self.callout_delay_chunks {
                    waited += 1;
                    continue;
                }
                waited = 0;
                while let Some(call) = self.undelivered() {
                    self.deliver(&call);
                }
                let mut s = self.state();
                if s.local_response.is_some() {
                    return Err(Flow::Local);
                }
                let resumed = if request {
                    &mut s.resume_request
                } else {
                    &mut s.resume_response
                };
                if std::mem::take(resumed) {
                    drop(s);
                    buffering = false;
                    self.pass_held(request, &mut passed);
                }
            }
        }
        Ok(passed)
    }

    /// The first call (callout or Redis) not answered yet.
    fn undelivered(&self) -> Option<Pending> {
        let s = self.state();
        let callout = s
            .callouts
            .iter()
            .find(|c| !self.delivered.contains(&c.token));
        let redis = s
            .redis_calls
            .iter()
            .find(|c| !self.delivered.contains(&c.token));
        match (callout, redis) {
            (Some(c), Some(r)) if r.token < c.token => Some(Pending::Redis(r.clone())),
            (Some(c), _) => Some(Pending::Http(c.clone())),
            (None, Some(r)) => Some(Pending::Redis(r.clone())),
            (None, None) => None,
        }
    }

    /// Envoy's own local reply (buffer limit exceeded).
    fn proxy_answers(&mut self, status: u32) -> Flow {
        let body = if status == 413 {
            "Payload Too Large"
        } else {
            "Internal Server Error"
        };
        self.state().local_response = Some(LocalResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        });
        Flow::Local
    }

    /// [`Run::settle`] after a header phase. With `stop_iteration` (Envoy's
    /// allow_on_headers_stop_iteration) a pause holds only the headers: once its callouts are
    /// answered, the body comes to the plugin while they wait, writable until it lets them go.
    fn settle_headers(&mut self, action: Action, request: bool, end: bool) -> Flow {
        let answer_later = self.stop_iteration
            && !end
            && self.callout_delay_chunks > 0
            && action == Action::Pause
            && self.state().local_response.is_none()
            && self.undelivered().is_some();
        let flow = if answer_later {
            Flow::Stalled // the body's loop answers them
        } else {
            self.settle(action, request)
        };
        match flow {
            Flow::Stalled if self.stop_iteration && !end => {
                let mut s = self.state();
                if request {
                    s.request_held = true;
                } else {
                    s.response_held = true;
                }
                Flow::Proceed
            }
            flow => flow,
        }
    }

    /// After the plugin returned `action`: apply a local response, or answer callouts until
    /// the stream resumes.
    fn settle(&mut self, mut action: Action, request: bool) -> Flow {
        loop {
            let next = {
                let mut s = self.state();
                if s.local_response.is_some() {
                    return Flow::Local;
                }
                let resumed = if request {
                    &mut s.resume_request
                } else {
                    &mut s.resume_response
                };
                if action == Action::Continue || std::mem::take(resumed) {
                    return Flow::Proceed;
                }
                drop(s);
                self.undelivered()
            };
            let Some(call) = next else {
                return Flow::Stalled;
            };
            self.deliver(&call);
            action = Action::Pause;
        }
    }

    /// Answers the callouts still pending after the stream went on without them (the script
    /// resumed explicitly): Envoy delivers them whenever they come back.
    fn answer_late_callouts(&mut self) {
        self.state().window = Window::None;
        while let Some(call) = self.undelivered() {
            self.deliver(&call);
        }
    }

    fn deliver(&mut self, call: &Pending) {
        match call {
            Pending::Http(call) => self.deliver_http(call),
            Pending::Redis(call) => self.deliver_redis(call),
        }
    }

    /// A Redis reply, as Higress's Envoy delivers it: status 0 with the reply's bytes (an
    /// error reply too), else status 1 and nothing; a timeout when the cluster's timeout has
    /// passed (the emulated clock moves on to then).
    fn deliver_redis(&mut self, call: &RedisCall) {
        self.delivered.push(call.token);
        let (status, reply, note) = match &call.outcome {
            RedisOutcome::Reply(bytes) => (0, bytes.clone(), format!("{} bytes", bytes.len())),
            RedisOutcome::Timeout => {
                let deadline = call
                    .sent_nanos
                    .saturating_add(call.timeout.as_nanos() as u64);
                let mut host = self.host.0.borrow_mut();
                host.now_nanos = host.now_nanos.max(deadline);
                (1, Vec::new(), "no reply in time".into())
            }
            RedisOutcome::Failed(why) => (1, Vec::new(), format!("failed: {why}")),
        };
        self.host.0.borrow_mut().calls.push(format!(
            "-- Redis reply to call {} (status {status}): {note}",
            call.token
        ));
        let size = reply.len();
        self.state().redis_reply = Some(reply);
        self.event("on_redis_call_response");
        self.stream.on_redis_call_response(call.token, status, size);
        self.state().redis_reply = None;
    }

    fn deliver_http(&mut self, call: &Callout) {
        let reply = self.callouts.reply(call);
        let (answer, num_headers, body_size) = match reply {
            Reply::Answer {
                status,
                headers,
                body,
            } => {
                let mut map = HeaderMap::new();
                map.push(":status", status.to_string().as_bytes());
                for (name, value) in &headers {
                    map.push(name, value);
                }
                let (n, size) = (map.len(), body.len());
                (
                    CalloutAnswer {
                        headers: map,
                        body,
                        trailers: HeaderMap::new(),
                    },
                    n,
                    size,
                )
            }
            Reply::Failure => (CalloutAnswer::default(), 0, 0),
            Reply::NoAnswer => {
                // Its timeout expires: the clock is at least at its deadline (no tick fires).
                let deadline = call
                    .sent_nanos
                    .saturating_add(call.timeout.as_nanos() as u64);
                let mut host = self.host.0.borrow_mut();
                host.now_nanos = host.now_nanos.max(deadline);
                drop(host);
                envoy_answer(504, UPSTREAM_TIMEOUT_BODY)
            }
            Reply::ConnectFailure => envoy_answer(503, UPSTREAM_CONNECT_FAILURE_BODY),
            Reply::Reset => envoy_answer(503, UPSTREAM_TERMINATED_BODY),
        };
        self.delivered.push(call.token);
        self.state().answer = Some(answer);
        self.event("on_http_call_response");
        self.stream
            .on_http_call_response(call.token, num_headers, body_size);
        self.state().answer = None;
    }

    fn finish(&mut self, flow: Flow, outcome: &mut Outcome, sent: Option<ClientResponse>) {
        match flow {
            Flow::Proceed => {}
            Flow::Stalled => {
                outcome.stalled = Some("the stream is paused and nothing will resume it".into())
            }
            Flow::Local => {
                let local = self
                    .state()
                    .local_response
                    .clone()
                    .unwrap_or(LocalResponse {
                        status: 0,
                        headers: Vec::new(),
                        body: Vec::new(),
                    });
                outcome.response = match sent {
                    // Headers already went out: Envoy can only reset the stream.
                    Some(sent) => ClientResponse {
                        reset: true,
                        ..sent
                    },
                    None => {
                        let mut headers = local.headers.clone();
                        headers
                            .insert(0, (":status".into(), local.status.to_string().into_bytes()));
                        if !local.body.is_empty() && !has(&headers, "content-type") {
                            headers.push(("content-type".into(), b"text/plain".to_vec()));
                        }
                        headers.push((
                            "content-length".into(),
                            local.body.len().to_string().into_bytes(),
                        ));
                        // What the log phase sees as the response.
                        self.state().response_headers = HeaderMap::from_list(&headers);
                        self.host.0.borrow_mut().properties.insert(
                            "response.code".into(),
                            i64::from(local.status).to_le_bytes().to_vec(),
                        );
                        ClientResponse {
                            status: local.status,
                            headers,
                            body: local.body,
                            chunks: Vec::new(),
                            local: true,
                            reset: false,
                        }
                    }
                };
            }
        }
    }
}
