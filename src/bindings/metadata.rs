//! What other filters decided (the stream's dynamic metadata, the route's and the cluster's
//! metadata), and what the script tells them and the access log (filter state).
//!
//! Envoy 1.40 gives each metadata property whole, as a serialized
//! `envoy.config.core.v3.Metadata` (measured, in every phase; `tests/e2e/composition.rs`):
//! the plugin decodes the namespace asked for ([`crate::proto`]). The narrower paths
//! (`metadata.filter_metadata.<ns>`) come in proxy-wasm's pair encoding, which drops the
//! types (a bool is one byte, a number eight), and fail whole when a value is `null`.

use rhai::Dynamic;

use super::*;
use crate::proto::{self, Budget, Decoder};

/// The property holding each kind of metadata.
const DYNAMIC: [&str; 1] = ["metadata"];
const ROUTE: [&str; 2] = ["xds", "route_metadata"];
const CLUSTER: [&str; 2] = ["xds", "cluster_metadata"];

/// `namespace` of the metadata in `property` as a map (or its `key` only); `()` when absent.
fn read<H: Host>(
    a: &Api<H>,
    f: &str,
    property: &[&str],
    namespace: &str,
    key: Option<&str>,
) -> ScriptResult<Dynamic> {
    let bytes = match a.host.get_property(property) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(Dynamic::UNIT),
        Err(status) => return refused(f, status),
    };
    let budget = Budget {
        depth: a.limits.max_value_depth,
        array_items: a.limits.max_array_size,
        map_entries: a.limits.max_map_size,
        string_bytes: a.limits.max_string_size,
    };
    let bad = |e: String| {
        format!(
            "{f}(): the proxy's {} is not valid: {e}",
            property.join(".")
        )
    };
    let Some(fields) = proto::metadata_namespace(&bytes, namespace).map_err(bad)? else {
        return Ok(Dynamic::UNIT);
    };
    let mut decoder = Decoder::new(budget);
    let value = match key {
        None => decoder.struct_map(fields).map(Dynamic::from_map),
        Some(key) => decoder
            .struct_field(fields, key)
            .map(|v| v.unwrap_or(Dynamic::UNIT)),
    };
    value.or_else(|e| err(bad(e)))
}

/// [`read`] for the route's or the cluster's metadata, which depend on the request headers:
/// they see this call's writes first.
fn read_routed<H: Host>(
    a: &Api<H>,
    f: &str,
    property: &[&str],
    namespace: &str,
    key: Option<&str>,
) -> ScriptResult<Dynamic> {
    a.flush_headers_early();
    read(a, f, property, namespace, key)
}

/// How metadata values come to scripts, for each binding's documentation.
macro_rules! values_doc {
    () => {
        "Values come as Envoy keeps them (a `google.protobuf.Struct`): maps, arrays, strings, bools, `()` for null, and numbers, which are all doubles there: a whole number within ±2^53 comes as an int (as `parse_json` gives a JSON integer: a JWT's `exp` compares with ints), any other as a float. A value deeper than `limits.max_value_depth`, or holding more than `limits.max_map_size` entries or `limits.max_array_size` items in all, is a script error."
    };
}

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    const ANY: Allowed = Allowed::In(Phases::ALL);

    bind!(reg, "get_metadata", ANY, "map, or () when the namespace is absent",
    "What the filter `namespace` wrote into the stream's dynamic metadata, as a map (`()` when it wrote nothing): e.g. `get_metadata(\"envoy.filters.http.jwt_authn\")` after Envoy's `jwt_authn` with `payload_in_metadata: \"jwt_payload\"` gives `#{ jwt_payload: #{ sub: …, scope: …, exp: … } }`, the verified claims. Only filters before this one in the chain have written theirs when the request phases run; the response phases and `on_log` also see what later filters wrote. Envoy 1.40 offers a wasm filter no way to write dynamic metadata: to tell later filters and the access log, use `set_filter_state`.",
    r#"fn on_request_headers() {
    let jwt = get_metadata("envoy.filters.http.jwt_authn");
    if jwt != () { replace_request_header("x-user", jwt.jwt_payload.sub); }
}"#,
    |a as f, namespace: &str| read(a, f, &DYNAMIC, namespace, None));
    bind!(reg, "get_metadata", ANY, "any value, or () when absent",
    concat!("The entry `key` of what the filter `namespace` wrote into the dynamic metadata (`()` when absent): `get_metadata(\"envoy.filters.http.jwt_authn\", \"jwt_payload\")` is a JWT's verified claims. ", values_doc!()),
    r#"fn on_request_headers() {
    let claims = get_metadata("envoy.filters.http.jwt_authn", "jwt_payload");
    if claims == () || !claims.scope.split(" ").contains("orders:read") {
        send_http_response(403, [], "missing scope\n");
    }
}"#,
    |a as f, namespace: &str, key: &str| read(a, f, &DYNAMIC, namespace, Some(key)));
    bind!(reg, "get_route_metadata", ANY, "map, or () when absent",
    "The matched route's metadata (`metadata.filter_metadata` of the route in Envoy's configuration) for `namespace`, as a map; `()` when the route has none for it, or no route matched. Envoy picks the route before the filters run, so every phase sees it.",
    r#"fn on_request_headers() {
    let route = get_route_metadata("acme");
    if route != () && route.tier == "gold" { replace_request_header("x-priority", "high"); }
}"#,
    |a as f, namespace: &str| read_routed(a, f, &ROUTE, namespace, None));
    bind!(reg, "get_route_metadata", ANY, "any value, or () when absent",
    concat!("The entry `key` of the route's metadata for `namespace` (`()` when absent). ", values_doc!()),
    r#"fn on_request_headers() {
    let tier = get_route_metadata("acme", "tier");
    if tier != () { replace_request_header("x-tier", tier); }
}"#,
    |a as f, namespace: &str, key: &str| read_routed(a, f, &ROUTE, namespace, Some(key)));
    bind!(reg, "get_cluster_metadata", ANY, "map, or () when absent",
    "The metadata of the route's upstream cluster (`metadata.filter_metadata` of the cluster) for `namespace`, as a map; `()` when the cluster has none for it. Envoy knows the cluster once the route is picked, before the filters run: every phase sees it.",
    r#"fn on_request_headers() {
    let cluster = get_cluster_metadata("acme");
    if cluster != () { replace_request_header("x-zone", cluster.zone); }
}"#,
    |a as f, namespace: &str| read_routed(a, f, &CLUSTER, namespace, None));
    bind!(reg, "get_cluster_metadata", ANY, "any value, or () when absent",
    concat!("The entry `key` of the cluster's metadata for `namespace` (`()` when absent). ", values_doc!()),
    r#"fn on_request_headers() {
    let zone = get_cluster_metadata("acme", "zone");
    if zone != () { replace_request_header("x-zone", zone); }
}"#,
    |a as f, namespace: &str, key: &str| read_routed(a, f, &CLUSTER, namespace, Some(key)));

    bind!(reg, "set_filter_state", ANY, "()",
    "Puts `value` (a string or a blob) into the stream's filter state under `name`, for other filters and the access log. A name Envoy has an object factory for becomes that object, through Envoy's `set_envoy_filter_state`, and steers the filter that reads it: in Envoy 1.40 `envoy.network.upstream_server_name` (the upstream TLS SNI), `envoy.network.application_protocols` (upstream ALPN, `h2,http/1.1`), `envoy.network.upstream_subject_alt_names`, `envoy.upstream.dynamic_host` and `envoy.upstream.dynamic_port` (the dynamic forward proxy's target), `envoy.tcp_proxy.cluster`, `envoy.network.transport_socket.original_dst_address` (`IP:PORT`); the access log shows it as `%FILTER_STATE(envoy.network.upstream_server_name:PLAIN)%`. A value that factory refuses (a port that isn't a number) is a script error. Any other name is stored as `set_property` stores it, as `wasm.<name>`, dots and all: the access log shows it as `%FILTER_STATE(wasm.tenant:PLAIN)%`, and `get_property(\"tenant\")` reads it back. This is how a script tells later filters and the access log what it decided: Envoy 1.40 gives a wasm filter no way to write dynamic metadata (its foreign functions are `verify_signature`, `sign`, `compress`, `uncompress`, `set_envoy_filter_state`, `clear_route_cache`, `expr_*` and `declare_property`). The object lives as long as the request.",
    r#"fn on_request_headers() {
    set_filter_state("tenant", "acme");
    set_filter_state("envoy.network.upstream_server_name", "backend.acme.internal");
}"#,
    |a as f, name: &str, value: Dynamic| {
        let value = bytes_of(f, &value)?;
        let arguments = proto::set_filter_state_arguments(name, &value);
        match a.host.call_foreign_function("set_envoy_filter_state", &arguments) {
            Ok(_) => Ok(()),
            // No object factory for that name: the plugin's own store, as `set_property`.
            Err(Status::NotFound) => a.host.set_property(&[name], &value).or_else(|s| refused(f, s)),
            Err(Status::BadArgument) => err(format!(
                "{f}(): Envoy's object for {name:?} can't be made from {:?}",
                String::from_utf8_lossy(&value)
            )),
            Err(status) => refused(f, status),
        }
    });
}
