//! The seam between the binding layer and a proxy.
//!
//! [`Host`] has one method per proxy-wasm host call the plugin makes. Like the real ABI, every
//! call acts on the host's *current* stream (the one whose callback is running). The wasm build
//! implements it with the raw ABI ([`crate::wasm_host`]); the emulator ([`crate::emulator`])
//! implements it in memory, behaving like Envoy.

use std::time::Duration;

pub use crate::proxy_types::{BufferType, Bytes, LogLevel, MapType, MetricType, Status};

use crate::header_map::HeaderMap;

/// A proxy as the binding layer sees it. Every method returns the host's status instead of
/// panicking, so a refusal becomes a script error, never a trap.
pub trait Host {
    /// Writes one line to the proxy log.
    fn log(&self, level: LogLevel, message: &str);
    /// A whole header (or trailer) map, in order, duplicates kept.
    fn get_map(&self, map: MapType) -> Result<HeaderMap, Status>;
    /// Replaces a whole header map.
    fn set_map(&self, map: MapType, headers: &HeaderMap) -> Result<(), Status>;
    /// The first value of one header.
    fn get_map_value(&self, map: MapType, name: &str) -> Result<Option<Bytes>, Status>;
    /// Sets one header, replacing every value it had (adds it when absent).
    fn replace_map_value(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status>;
    /// Removes every value of one header.
    fn remove_map_value(&self, map: MapType, name: &str) -> Result<(), Status>;
    /// Adds one more value to a header.
    fn add_map_value(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status>;
    /// Up to `max_size` bytes of a buffer from `start`.
    fn get_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Bytes>, Status>;
    /// Writes `data` over `size` bytes of a buffer at `start`.
    fn set_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status>;
    /// Answers the client locally; takes effect when the current callback returns.
    fn send_http_response(
        &self,
        status: u32,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<(), Status>;
    /// Lets a paused request go on; takes effect when the current callback returns.
    fn resume_http_request(&self) -> Result<(), Status>;
    /// Lets a paused response go on; takes effect when the current callback returns.
    fn resume_http_response(&self) -> Result<(), Status>;
    /// Sends an HTTP request to a cluster; the answer comes as `on_http_call_response(token)`.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, Status>;
    /// Whether the proxy has Redis (Higress's host functions): not Envoy, nor the default wasm
    /// build, which imports none of them. The `redis_*` methods are called only when it has.
    fn has_redis(&self) -> bool;
    /// Makes a Redis cluster ready for [`Host::redis_call`] (Higress's `proxy_redis_init`):
    /// `cluster` may end with `?db=N` to select a database.
    fn redis_init(
        &self,
        cluster: &str,
        username: &str,
        password: &str,
        timeout_ms: u32,
    ) -> Result<(), Status>;
    /// Sends one RESP-encoded command to a Redis cluster (Higress's `proxy_redis_call`); the
    /// reply comes as `on_redis_call_response(token, status, size)`, read with
    /// [`Host::redis_reply`].
    fn redis_call(&self, cluster: &str, query: &[u8]) -> Result<u32, Status>;
    /// Up to `max_size` bytes of the Redis reply being delivered (Higress's buffer type 9).
    fn redis_reply(&self, max_size: usize) -> Result<Option<Bytes>, Status>;
    /// A property of the stream or the proxy (`["request", "path"]`, `["route_name"]`, …).
    fn get_property(&self, path: &[&str]) -> Result<Option<Bytes>, Status>;
    /// Sets a property (filter state) of the stream.
    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), Status>;
    /// Calls one of the proxy's foreign functions (Envoy's `set_envoy_filter_state`, …) with
    /// its serialized arguments; its result, if it gives one. `Err(NotFound)` when the proxy
    /// has no such function, or the function found nothing to act on.
    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Option<Bytes>, Status>;
    /// A value shared by every worker, and its version (for compare-and-swap).
    fn get_shared_data(&self, key: &str) -> Result<(Option<Bytes>, u32), Status>;
    /// Sets a shared value when its version is still `cas` (0: whatever the version);
    /// `Err(CasMismatch)` when another writer came first.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), Status>;
    /// Defines (or finds) a metric; Envoy shows it in its stats.
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status>;
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status>;
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status>;
    fn get_metric(&self, id: u32) -> Result<u64, Status>;
    /// The proxy's clock, in nanoseconds since the Unix epoch.
    fn current_time_nanos(&self) -> Result<u64, Status>;
    /// Asks for `on_tick` every `period_ms` (0 stops it); root context only.
    fn set_tick_period(&self, period_ms: u32) -> Result<(), Status>;
    /// Bytes of the VM's heap in use, when the host counts them (the wasm build does), for
    /// `limits.max_memory`.
    fn heap_in_use(&self) -> Option<usize> {
        None
    }
    /// The script's first write to `what` (`"request headers"`, `"response body"`, …) in this
    /// call, which the plugin holds back to send with the call's other writes to it: for the
    /// emulator's trace, which shows where that puts writes out of the script's order.
    /// Nothing in a proxy.
    fn writes_held(&self, _what: &'static str) {}
    /// The writes held back for `what` go to the proxy now (see [`Host::writes_held`]).
    fn writes_sent(&self, _what: &'static str) {}
    /// Whether the host wants each call's operation count ([`Host::operations_counted`]):
    /// the emulator, when the tests comparing the two engines ask it. Never a proxy.
    fn counts_operations(&self) -> bool {
        false
    }
    /// The operations a call into the script counted, when it ended.
    fn operations_counted(&self, _count: u64) {}
}
