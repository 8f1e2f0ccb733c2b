#!/usr/bin/env python3
"""Prints an Envoy bootstrap (JSON) that runs proxy-rhai with a script in front of an upstream.

usage: envoy-config.py WASM SCRIPT LISTEN_PORT ADMIN_PORT UPSTREAM_PORT [CONFIG_JSON]
"""
import json
import sys

import envoy_bootstrap as eb

wasm, script, listen, admin, upstream = sys.argv[1:6]
user_config = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
plugin = {"script": open(script).read(), "config": user_config}
filters = [eb.wasm_filter(wasm, plugin, name="proxy-rhai")]
print(json.dumps(eb.bootstrap(
    admin, [eb.listener("demo", listen, [eb.hcm("demo", eb.routes_to("upstream"), filters)])],
    [eb.static_cluster("upstream", upstream)]), indent=1))
