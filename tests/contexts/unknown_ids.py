#!/usr/bin/env python3
"""The plugin's own context table (src/wasm.rs) on the wasmtime host (tools/proxy_wasm_host.py):
a callback for a context the plugin does not know, a callout answer with a token it never gave,
a stream of a root it never made, a context deleted twice: each is ignored, never a trap (the
proxy-wasm SDK's dispatcher panicked on them). Requests around them are answered as before.

    python3 tests/contexts/unknown_ids.py [WASM]

The artifact defaults to PROXY_RHAI_WASM, else target/proxy_rhai.wasm (tools/build-wasm.sh).
`cargo test --test contexts` runs it. Exits 1 when a check fails.
"""
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from proxy_wasm_host import ROOT_CONTEXT, Host  # noqa: E402

SCRIPT = '''
fn on_request_headers() {
    add_request_header("x-seen", "1");
    http_get("callout", "/", [], 1000, || add_request_header("x-called", "1"));
}
'''
CONTINUE = 0


def main():
    wasm = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "PROXY_RHAI_WASM", str(ROOT / "target" / "proxy_rhai.wasm"))
    host = Host(wasm, http_call_answer=lambda token: ([(":status", "200")], b""))
    assert host.start(json.dumps({"script": SCRIPT})), host.logs

    def request():
        answer = host.exchange([(":method", "GET"), (":path", "/"), (":authority", "a")])
        forwarded = dict(answer.upstream[0]) if answer.upstream else {}
        assert answer.status == 200, answer
        assert forwarded.get(b"x-seen") == b"1" and forwarded.get(b"x-called") == b"1", answer

    request()
    unknown = host.next_context + 100
    # A stream whose root the plugin never made: no stream; its callbacks go on untouched.
    host.call("proxy_on_context_create", unknown, unknown + 1)
    for context in (unknown, unknown + 2):
        for name, args in [
            ("proxy_on_request_headers", (context, 0, 0)),
            ("proxy_on_request_body", (context, 10, 1)),
            ("proxy_on_request_trailers", (context, 0)),
            ("proxy_on_response_headers", (context, 0, 0)),
            ("proxy_on_response_body", (context, 10, 1)),
            ("proxy_on_response_trailers", (context, 0)),
        ]:
            assert host.call(name, *args) == CONTINUE, name
        host.call("proxy_on_log", context)
        assert host.call("proxy_on_done", context) == 1
        assert host.call("proxy_on_configure", context, 0) == 0
        host.call("proxy_on_tick", context)
        host.call("proxy_on_delete", context)
        host.call("proxy_on_delete", context)
    # A callout answer for a token never given.
    host.call("proxy_on_http_call_response", ROOT_CONTEXT, 12345, 0, 0, 0)
    request()
    print("all passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"failed: {e!r}")
        raise
