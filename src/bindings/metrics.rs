//! Metrics, defined on first use, and the plugin's own two.

use std::collections::HashMap;

use super::*;
use crate::host::MetricType;

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
    use Allowed::Anywhere;

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
