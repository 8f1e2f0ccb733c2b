#!/usr/bin/env python3
"""Prints an Envoy bootstrap (JSON) that runs proxy-rhai with a script in front of an upstream.

usage: envoy-config.py WASM SCRIPT LISTEN_PORT ADMIN_PORT UPSTREAM_PORT [CONFIG_JSON]
"""
import json
import sys

wasm, script, listen, admin, upstream = sys.argv[1:6]
user_config = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
plugin = {"script": open(script).read(), "config": user_config}


def address(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": int(port)}}


print(json.dumps({
    "admin": {"address": address(admin)},
    "static_resources": {
        "listeners": [{
            "name": "demo",
            "address": address(listen),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "demo",
                    "route_config": {"virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                    }]},
                    "http_filters": [
                        {"name": "envoy.filters.http.wasm", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                            "config": {
                                "name": "proxy-rhai",
                                "vm_config": {"runtime": "envoy.wasm.runtime.v8",
                                              "code": {"local": {"filename": wasm}}},
                                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                                  "value": json.dumps(plugin)},
                            }}},
                        {"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                    ],
                }}]}],
        }],
        "clusters": [{
            "name": "upstream", "connect_timeout": "1s", "type": "STATIC",
            "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": address(upstream)}}]}]},
        }],
    },
}, indent=1))
