"""The pieces of the Envoy bootstraps that tools/ and bench/ start Envoy with.

    import envoy_bootstrap as eb
    eb.bootstrap(admin_port, [eb.listener("front", port, [eb.hcm("front", eb.routes_to("upstream"),
        [eb.wasm_filter("target/proxy_rhai.wasm", {"script": "..."})])])],
        [eb.static_cluster("upstream", upstream_port)])

Everything listens on and connects to 127.0.0.1. The Rust tests build theirs in
tests/support/bootstrap.rs.
"""
import json

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def address(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": int(port)}}


def static_cluster(name, port, connect_timeout="1s"):
    return {"name": name, "connect_timeout": connect_timeout, "type": "STATIC",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": address(port)}}]}]}}


def routes_to(cluster):
    """A route configuration sending every request to `cluster`."""
    return {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}


def direct_routes(routes, **extra):
    """A route configuration of `routes` (prefix matches answered by Envoy itself, say)."""
    return dict({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}, **extra)


def hcm(stat_prefix, route_config, http_filters, name="envoy.filters.network.http_connection_manager"):
    """An HTTP connection manager with `http_filters`, then the router."""
    return {"name": name, "typed_config": {
        "@type": HCM, "stat_prefix": stat_prefix, "route_config": route_config,
        "http_filters": list(http_filters) + [ROUTER]}}


def wasm_filter(filename, configuration, name=None, vm_id=None):
    """The wasm HTTP filter running `filename` (V8), with `configuration` (a dict is sent as JSON)."""
    if not isinstance(configuration, str):
        configuration = json.dumps(configuration)
    vm_config = {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(filename)}}}
    if vm_id is not None:
        vm_config = dict({"vm_id": vm_id}, **vm_config)
    config = {"vm_config": vm_config, "configuration": {
        "@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration}}
    if name is not None:
        config = dict({"name": name}, **config)
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}}


def lua_filter(source):
    return {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": source}}}


def listener(name, port, network_filters, **extra):
    return dict({"name": name, "address": address(port),
                 "filter_chains": [{"filters": list(network_filters)}]}, **extra)


def bootstrap(admin_port, listeners, clusters=()):
    static = {"listeners": list(listeners)}
    if clusters:
        static["clusters"] = list(clusters)
    return {"admin": {"address": address(admin_port)}, "static_resources": static}
