//! More of the proxy: properties, trailers, shared data and metrics.

use std::collections::HashMap;

use rhai::{Array, Dynamic, ImmutableString, Map};

use super::{bytes_of, err, lossy, refused, Allowed, Api, Registrar, ScriptResult};
use crate::host::{Host, MapType, MetricType, Status};
use crate::phase::Phases;

/// Properties Envoy encodes as 64-bit little-endian integers.
const INTEGER_PROPERTIES: [&str; 13] = [
    "request.size",
    "request.total_size",
    "request.duration",
    "request.time",
    "response.code",
    "response.size",
    "response.total_size",
    "response.grpc_status",
    "response.flags",
    "source.port",
    "destination.port",
    "upstream.port",
    "connection.id",
];

/// A property path from `["request", "path"]` or `"request.path"`.
fn property_path(f: &str, path: &Dynamic) -> ScriptResult<Vec<String>> {
    if let Some(s) = path.read_lock::<ImmutableString>() {
        return Ok(s.split('.').map(str::to_string).collect());
    }
    if let Some(parts) = path.read_lock::<Array>() {
        return parts
            .iter()
            .map(|p| p.read_lock::<ImmutableString>().map(|s| s.to_string()))
            .collect::<Option<Vec<_>>>()
            .map_or_else(|| err(format!("{f}(): a path is an array of strings")), Ok);
    }
    err(format!(
        "{f}(): a path is an array of strings or a dotted string, got {}",
        path.type_name()
    ))
}

fn get_property_raw<H: Host>(
    a: &Api<H>,
    f: &str,
    path: &Dynamic,
) -> ScriptResult<(String, Option<Vec<u8>>)> {
    let path = property_path(f, path)?;
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    // Properties such as `request.path` read the header maps: they must see this call's writes.
    a.flush_headers_early();
    let value = a.host.get_property(&parts).or_else(|s| refused(f, s))?;
    Ok((path.join("."), value))
}

/// Metric ids by kind and name, defined on first use; and the heap size last reported.
#[derive(Default)]
pub(crate) struct Metrics {
    ids: HashMap<(u8, String), u32>,
    heap_reported: Option<usize>,
    /// How many of `ids` scripts defined: the plugin's own metrics don't count against
    /// `limits.max_metrics`.
    by_scripts: usize,
}

/// A script's metric: one more past `limits.max_metrics` is refused (each name a client's
/// input makes would be a stat in Envoy for as long as it runs).
fn metric_id<H: Host>(a: &Api<H>, f: &str, kind: MetricType, name: &str) -> ScriptResult<u32> {
    define_metric(a, f, kind, name, Some(a.limits.max_metrics))
}

/// The id of a metric, defined on first use; `max`: how many scripts may define.
fn define_metric<H: Host>(
    a: &Api<H>,
    f: &str,
    kind: MetricType,
    name: &str,
    max: Option<usize>,
) -> ScriptResult<u32> {
    let key = (kind as u8, name.to_string());
    if let Some(id) = a.metrics.borrow().ids.get(&key) {
        return Ok(*id);
    }
    if let Some(max) = max.filter(|max| a.metrics.borrow().by_scripts >= *max) {
        return err(format!(
            "{f}(): the script already defined {max} metrics (limits.max_metrics): \
             no new metric '{name}'"
        ));
    }
    let id = a
        .host
        .define_metric(kind, name)
        .or_else(|s| refused(f, s))?;
    let mut metrics = a.metrics.borrow_mut();
    metrics.ids.insert(key, id);
    metrics.by_scripts += usize::from(max.is_some());
    Ok(id)
}

/// The shared-data key where the plugin counts the bytes of keys and values in the store, as
/// decimal text, for `limits.max_shared_bytes`. Scripts may read it, not write it.
pub const SHARED_USAGE_KEY: &str = "proxy-rhai:shared-bytes";

/// Attempts at a compare-and-swap another worker keeps beating before the call gives up.
const SHARED_ATTEMPTS: usize = 32;

/// `shared_set`: within the size limits, and within `limits.max_shared_bytes` over the whole
/// store. The store is one per VM id for every worker and has no delete, so the bytes are
/// counted in the store itself ([`SHARED_USAGE_KEY`]), by every worker, with
/// compare-and-swap: a write that grows the store takes its growth from the budget first, one
/// that shrinks it gives back. The value is then written only over the version that was
/// measured, so the count stays exact (a key two workers create at the same moment may be
/// counted twice: over, never under).
fn shared_set<H: Host>(a: &Api<H>, key: &str, value: &[u8], version: u32) -> ScriptResult<bool> {
    const F: &str = "shared_set";
    let limits = &a.limits;
    if key == SHARED_USAGE_KEY {
        return err(format!(
            "{F}(): '{SHARED_USAGE_KEY}' is the plugin's own key"
        ));
    }
    if key.len() > limits.max_shared_key_size {
        return err(format!(
            "{F}(): a key of {} bytes is over limits.max_shared_key_size ({})",
            key.len(),
            limits.max_shared_key_size
        ));
    }
    if value.len() > limits.max_shared_value_size {
        return err(format!(
            "{F}(): a value of {} bytes is over limits.max_shared_value_size ({})",
            value.len(),
            limits.max_shared_value_size
        ));
    }
    for _ in 0..SHARED_ATTEMPTS {
        let (old, current) = a.host.get_shared_data(key).or_else(|s| refused(F, s))?;
        if version != 0 && old.is_some() && version != current {
            return Ok(false); // what the proxy would answer
        }
        let old_size = old.as_ref().map_or(0, |v| key.len() + v.len());
        let growth = (key.len() + value.len()) as i64 - old_size as i64;
        count_shared_bytes(a, growth)?;
        let cas = if old.is_some() { current } else { version };
        match a.host.set_shared_data(key, value, cas) {
            Ok(()) => return Ok(true),
            Err(status) => {
                let _ = count_shared_bytes(a, -growth);
                match status {
                    Status::CasMismatch if version == 0 => continue,
                    Status::CasMismatch => return Ok(false),
                    other => return refused(F, other),
                }
            }
        }
    }
    err(format!(
        "{F}(): other workers kept changing '{key}'; try again"
    ))
}

/// Adds `growth` (may be negative) to the bytes counted under [`SHARED_USAGE_KEY`]; an error
/// when that would go past `limits.max_shared_bytes`.
fn count_shared_bytes<H: Host>(a: &Api<H>, growth: i64) -> ScriptResult<()> {
    const F: &str = "shared_set";
    if growth == 0 {
        return Ok(());
    }
    let max = a.limits.max_shared_bytes as i64;
    for _ in 0..SHARED_ATTEMPTS {
        let (usage, version) = a
            .host
            .get_shared_data(SHARED_USAGE_KEY)
            .or_else(|s| refused(F, s))?;
        let used: i64 = usage
            .and_then(|u| std::str::from_utf8(&u).ok()?.parse().ok())
            .unwrap_or(0);
        let next = used.saturating_add(growth).max(0);
        if growth > 0 && next > max {
            return err(format!(
                "{F}(): shared data is full: {used} of limits.max_shared_bytes ({max}) bytes \
                 in use, {growth} more asked; reads, and writes that don't grow it, still work"
            ));
        }
        match a
            .host
            .set_shared_data(SHARED_USAGE_KEY, next.to_string().as_bytes(), version)
        {
            Ok(()) => return Ok(()),
            Err(Status::CasMismatch) => continue,
            Err(s) => return refused(F, s),
        }
    }
    err(format!(
        "{F}(): other workers kept changing '{SHARED_USAGE_KEY}'; try again"
    ))
}

/// Sets a gauge or records a histogram value; both take values ≥ 0.
fn record<H: Host>(
    a: &Api<H>,
    f: &str,
    kind: MetricType,
    name: &str,
    value: i64,
) -> ScriptResult<()> {
    let value =
        u64::try_from(value).or_else(|_| err(format!("{f}(): a value is ≥ 0, got {value}")))?;
    let id = metric_id(a, f, kind, name)?;
    a.host.record_metric(id, value).or_else(|s| refused(f, s))
}

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use Allowed::{Anywhere, In};

    // Properties.
    bind!(reg, "get_property", Anywhere, "string, int, or () when absent",
    "A property of the request or the proxy, by path: `[\"request\", \"path\"]` or `\"request.path\"`. Sizes, ports, codes, times and durations come as integers; everything else as a string. Useful: `request.path`, `request.method`, `request.host`, `request.id`, `source.address`, `destination.address`, `route_name`, `cluster_name`, `plugin_name`, `response.code` (response phases).",
    r#"fn on_request_headers() {
    add_request_header("x-client", get_property(["source", "address"]));
}"#,
    |a as f, path: Dynamic| {
        let (name, value) = get_property_raw(a, f, &path)?;
        Ok(match value {
            None => Dynamic::UNIT,
            Some(bytes) if INTEGER_PROPERTIES.contains(&name.as_str()) && bytes.len() == 8 => {
                let mut le = [0u8; 8];
                le.copy_from_slice(&bytes);
                Dynamic::from(i64::from_le_bytes(le))
            }
            Some(bytes) => lossy(bytes).into(),
        })
    });
    bind!(
        reg,
        "get_property_bytes",
        Anywhere,
        "blob, or () when absent",
        "A property's raw bytes, as the proxy encodes them.",
        r#"fn on_request_headers() {
    let raw = get_property_bytes(["source", "address"]);
    if raw != () { log_debug(`source address: ${raw.len()} bytes`); }
}"#,
        |a as f, path: Dynamic| {
            let (_, value) = get_property_raw(a, f, &path)?;
            Ok(value.map_or(Dynamic::UNIT, Dynamic::from_blob))
        }
    );
    bind!(reg, "set_property", In(Phases::ALL), "()",
    "Sets a property of the stream (Envoy filter state), e.g. for later filters or access logs.",
    r#"fn on_request_headers() {
    set_property("tenant", "acme");
}"#,
    |a as f, path: Dynamic, value: Dynamic| {
        let path = property_path(f, &path)?;
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        a.host.set_property(&parts, &bytes_of(f, &value)?).or_else(|s| refused(f, s))
    });

    // Trailers: the header table, in the trailer phases.
    const RQT: Allowed = In(Phases::REQUEST_TRAILERS);
    const RST: Allowed = In(Phases::RESPONSE_TRAILERS);
    use MapType::{HttpRequestTrailers as REQ, HttpResponseTrailers as RESP};
    bind!(
        reg,
        "get_request_trailers",
        RQT,
        "array of [name, value]",
        "All request trailers, in order.",
        r#"fn on_request_trailers() {
    for t in get_request_trailers() { log_debug(`${t[0]}: ${t[1]}`); }
}"#,
        |a as f| a.get_headers(f, REQ)
    );
    bind!(
        reg,
        "get_request_trailer",
        RQT,
        "string, or () when absent",
        "The first value of one request trailer.",
        r#"fn on_request_trailers() {
    if get_request_trailer("grpc-status") != () { log_info("a gRPC request trailer"); }
}"#,
        |a as f, name: &str| a.get_header(f, REQ, name)
    );
    bind!(
        reg,
        "replace_request_trailers",
        RQT,
        "()",
        "Replaces all request trailers (pairs or map).",
        r#"fn on_request_trailers() {
    replace_request_trailers(#{ "x-checksum": "ok" });
}"#,
        |a as f, trailers: Dynamic| a.set_headers(f, REQ, &trailers)
    );
    bind!(
        reg,
        "replace_request_trailer",
        RQT,
        "()",
        "Sets one request trailer; adds it when absent.",
        r#"fn on_request_trailers() {
    replace_request_trailer("x-checked-by", "proxy-rhai");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.replace_header(
            f,
            REQ,
            name,
            value
        )
    );
    bind!(
        reg,
        "add_request_trailer",
        RQT,
        "()",
        "Adds a request trailer value.",
        r#"fn on_request_trailers() {
    add_request_trailer("x-seen", "1");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.add_header(
            f,
            REQ,
            name,
            value
        )
    );
    bind!(
        reg,
        "remove_request_trailer",
        RQT,
        "()",
        "Removes a request trailer.",
        r#"fn on_request_trailers() {
    remove_request_trailer("x-debug");
}"#,
        |a as f, name: ImmutableString| a.remove_header(f, REQ, name)
    );
    bind!(
        reg,
        "get_response_trailers",
        RST,
        "array of [name, value]",
        "All response trailers, in order.",
        r#"fn on_response_trailers() {
    log_info(`${get_response_trailers().len()} response trailers`);
}"#,
        |a as f| a.get_headers(f, RESP)
    );
    bind!(
        reg,
        "get_response_trailer",
        RST,
        "string, or () when absent",
        "The first value of one response trailer.",
        r#"fn on_response_trailers() {
    if get_response_trailer("grpc-status") != "0" { increment_counter("grpc_errors", 1); }
}"#,
        |a as f, name: &str| a.get_header(f, RESP, name)
    );
    bind!(
        reg,
        "replace_response_trailers",
        RST,
        "()",
        "Replaces all response trailers (pairs or map).",
        r#"fn on_response_trailers() {
    replace_response_trailers([["grpc-status", "0"]]);
}"#,
        |a as f, trailers: Dynamic| a.set_headers(f, RESP, &trailers)
    );
    bind!(
        reg,
        "replace_response_trailer",
        RST,
        "()",
        "Sets one response trailer; adds it when absent.",
        r#"fn on_response_trailers() {
    replace_response_trailer("grpc-message", "");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.replace_header(
            f,
            RESP,
            name,
            value
        )
    );
    bind!(
        reg,
        "add_response_trailer",
        RST,
        "()",
        "Adds a response trailer value.",
        r#"fn on_response_trailers() {
    add_response_trailer("x-served-by", "proxy-rhai");
}"#,
        |a as f, name: ImmutableString, value: Dynamic| a.add_header(
            f,
            RESP,
            name,
            value
        )
    );
    bind!(
        reg,
        "remove_response_trailer",
        RST,
        "()",
        "Removes a response trailer.",
        r#"fn on_response_trailers() {
    remove_response_trailer("x-internal-timing");
}"#,
        |a as f, name: ImmutableString| a.remove_header(f, RESP, name)
    );

    // Shared data.
    bind!(reg, "shared_get", Anywhere, "#{value: string or (), version: int}",
    "A value shared by every worker of the proxy, and its version (0 when absent). Pass the version to `shared_set` to update it only if nobody else did meanwhile.",
    r#"fn on_request_headers() {
    let hits = shared_get("hits");
    log_info(`hits so far: ${hits.value ?? "0"}`);
}"#,
    |a as f, key: &str| {
        let (value, version) = a.host.get_shared_data(key).or_else(|s| refused(f, s))?;
        let mut map = Map::new();
        map.insert("value".into(), value.map_or(Dynamic::UNIT, |v| lossy(v).into()));
        map.insert("version".into(), Dynamic::from(i64::from(version)));
        Ok(map)
    });
    bind!(reg, "shared_set", Anywhere, "bool: false when `version` is stale",
    "Stores `value` (string or blob) under `key` for every worker, if its version is still `version` (compare-and-swap). Version 0 stores whatever is there, as Envoy does — so create a key once (e.g. at top level) before updating it with compare-and-swap. The store has no delete: a key may hold `limits.max_shared_key_size` bytes, a value `limits.max_shared_value_size`, and all keys and values together `limits.max_shared_bytes` (for every worker; the plugin keeps the count under `proxy-rhai:shared-bytes`, which scripts may read). Past them the call is an error; reads, and writes that don't grow the store, still work.",
    r#"// Created once, when the plugin loads: from then on every update is a compare-and-swap.
if shared_get("hits").version == 0 { shared_set("hits", "0", 0); }

fn on_request_headers() {
    // A counter without lost updates: retry when another worker came first.
    for attempt in 0..10 {
        let current = shared_get("hits");
        let next = parse_int(current.value ?? "0") + 1;
        if shared_set("hits", next.to_string(), current.version) { break; }
    }
}"#,
    |a as f, key: &str, value: Dynamic, version: i64| {
        let bytes = bytes_of(f, &value)?;
        let version = u32::try_from(version).or_else(|_| err(format!("shared_set(): version {version} is not a version")))?;
        shared_set(a, key, &bytes, version)
    });

    // Metrics, defined on first use; Envoy shows them in its stats.
    bind!(
        reg,
        "increment_counter",
        Anywhere,
        "()",
        "Adds `delta` (≥ 0) to the counter `name`, defining it on first use. A script may define `limits.max_metrics` distinct metrics (counters, gauges and histograms together); a new name past that is an error, the ones defined keep working.",
        r#"fn on_request_headers() {
    increment_counter("requests_seen", 1);
}"#,
        |a as f, name: &str, delta: i64| {
            if delta < 0 {
                return err(format!(
                    "increment_counter(): a counter only grows, got {delta}"
                ));
            }
            let id = metric_id(a, f, MetricType::Counter, name)?;
            a.host
                .increment_metric(id, delta)
                .or_else(|s| refused(f, s))
        }
    );
    bind!(
        reg,
        "set_gauge",
        Anywhere,
        "()",
        "Sets the gauge `name` to `value` (≥ 0).",
        r#"fn on_request_headers() {
    set_gauge("last_request_size", (get_request_header("content-length") ?? "0").parse_int());
}"#,
        |a as f, name: &str, value: i64| record(a, f, MetricType::Gauge, name, value)
    );
    bind!(
        reg,
        "add_to_gauge",
        Anywhere,
        "()",
        "Adds `delta` (may be negative) to the gauge `name`.",
        r#"fn on_request_headers() {
    add_to_gauge("in_flight", 1);
}
fn on_log() {
    add_to_gauge("in_flight", -1);
}"#,
        |a as f, name: &str, delta: i64| {
            let id = metric_id(a, f, MetricType::Gauge, name)?;
            a.host
                .increment_metric(id, delta)
                .or_else(|s| refused(f, s))
        }
    );
    bind!(
        reg,
        "record_histogram",
        Anywhere,
        "()",
        "Records `value` (≥ 0) in the histogram `name`.",
        r#"fn on_request_headers() {
    set_context("start", now_ms());
}
fn on_log() {
    record_histogram("script_latency_ms", now_ms() - get_context("start"));
}"#,
        |a as f, name: &str, value: i64| record(
            a,
            f,
            MetricType::Histogram,
            name,
            value
        )
    );
    bind!(
        reg,
        "get_counter",
        Anywhere,
        "int",
        "The current value of the counter `name` (this proxy's view).",
        r#"fn on_request_headers() {
    increment_counter("requests", 1);
    if get_counter("requests") % 1000 == 0 { log_info("another thousand requests"); }
}"#,
        |a as f, name: &str| {
            let id = metric_id(a, f, MetricType::Counter, name)?;
            a.host
                .get_metric(id)
                .map(|v| v as i64)
                .or_else(|s| refused(f, s))
        }
    );
    bind!(
        reg,
        "get_gauge",
        Anywhere,
        "int",
        "The current value of the gauge `name`.",
        r#"fn on_request_headers() {
    if get_gauge("in_flight") > 100 { send_http_response(503, [], "busy"); }
}"#,
        |a as f, name: &str| {
            let id = metric_id(a, f, MetricType::Gauge, name)?;
            a.host
                .get_metric(id)
                .map(|v| v as i64)
                .or_else(|s| refused(f, s))
        }
    );
}

/// The counter of script errors, as Envoy's stats show it: `wasmcustom.proxy_rhai_script_errors`.
pub const SCRIPT_ERRORS_METRIC: &str = "proxy_rhai_script_errors";

/// The gauge of the VM's heap in bytes, which operators watch for growth.
pub const HEAP_METRIC: &str = "proxy_rhai_heap_bytes";

/// How far the heap moves before [`HEAP_METRIC`] is set again: setting it on every request
/// would cost a host call each.
const HEAP_REPORT_STEP: usize = 64 << 10;

impl<H: Host> Api<H> {
    /// Counts one script error in [`SCRIPT_ERRORS_METRIC`]; a proxy without metrics loses it.
    pub(crate) fn count_script_error(&self) {
        if let Ok(id) = define_metric(
            self,
            "count_script_error",
            MetricType::Counter,
            SCRIPT_ERRORS_METRIC,
            None,
        ) {
            let _ = self.host.increment_metric(id, 1);
        }
    }

    /// Sets [`HEAP_METRIC`] if the heap moved by [`HEAP_REPORT_STEP`] since it was last set
    /// (a host that doesn't count its heap has no such gauge).
    pub(crate) fn report_heap(&self) {
        let Some(in_use) = self.host.heap_in_use() else {
            return;
        };
        if let Some(last) = self.metrics.borrow().heap_reported {
            if in_use.abs_diff(last) < HEAP_REPORT_STEP {
                return;
            }
        }
        if let Ok(id) = define_metric(self, "report_heap", MetricType::Gauge, HEAP_METRIC, None) {
            if self.host.record_metric(id, in_use as u64).is_ok() {
                self.metrics.borrow_mut().heap_reported = Some(in_use);
            }
        }
    }
}
