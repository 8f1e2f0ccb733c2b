//! Properties of the request and the proxy, read and set.

use rhai::{Array, Dynamic, ImmutableString};

use super::*;

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

    // Routing.
    bind!(reg, "clear_route_cache", In(Phases::REQUEST_HEADERS), "()",
    "Has the proxy pick the request's route again (Envoy's `clear_route_cache` foreign function), for routes that match on what the script changed outside the headers: filter state (`set_property`, `set_filter_state`; a route's `filter_state` matcher), metadata. A request header write already does it: in Envoy 1.40 every request header change of a wasm filter clears the route cache (measured), so a script that sets a header, `:path` or `:authority` routes match on is re-routed with no more to do. Envoy 1.40 gives a wasm filter no way to name the upstream cluster or host itself: set a header a route matches on, or one a route's `cluster_header` names the cluster by; a dynamic forward proxy cluster takes its host from the filter state `envoy.upstream.dynamic_host` (`set_filter_state`).",
    r#"fn on_request_headers() {
    let cookie = get_request_header("cookie") ?? "";
    if cookie.contains("canary=1") {
        set_property("lane", "canary"); // a route matches filter state wasm.lane
        clear_route_cache();
    }
}"#,
    |a as f| a.host.call_foreign_function("clear_route_cache", &[]).map(drop).or_else(|s| refused(f, s)));
}
