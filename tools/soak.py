#!/usr/bin/env python3
"""Soak: real Envoy with proxy-rhai under high load for a few minutes, with a mix of good
requests, script errors and callouts, and of requests that ask the proxy to keep more: a
metric named by the path, a path-keyed shared-data cache (1 KiB a key), a chain of callouts
made by callbacks (limits.max_callouts, max_metrics, max_shared_bytes stop them). Checks zero
failed VMs, zero unexpected status codes, and reports Envoy's memory before, during (first
and last minute) and after the load.

usage: tools/soak.py [--seconds 180] [--connections 32] [--wasm target/proxy_rhai.wasm]
       tools/soak.py --flood [--seconds 60] [--connections 300] [--body-kb 1000]

--flood: the heap budget (limits.max_vm_memory, default limits) under floods of requests that
each keep a large value while a callout to a slow backend is pending: half keep their 1 MB body,
half its parsed JSON. Two floods with a pause between them; reports Envoy's RSS before, during
and after each, and the plugin's heap gauge; checks no failed VM, only 200 or the error
policy's 500, and the heap gauge back at its baseline after each flood.
Not part of CI (it takes minutes and a whole machine). Needs tools/setup.sh's envoy and wrk.
"""
import argparse, json, os, re, signal, socket, subprocess, sys, tempfile, time

import envoy_bootstrap as eb

SCRIPT = r'''
fn on_request_headers() {
    let path = get_request_header(":path");
    set_context("path", path);
    if path.starts_with("/error") { throw "soak: a script error on purpose"; }
    if path.starts_with("/metric/") { increment_counter(path.sub_string(8), 1); return; }
    if path.starts_with("/cache/") {
        let value = "x";
        value.pad(1024, 'x');
        shared_set(path, value, 0);
        return;
    }
    if path == "/chain" { chain(1); return; }
    if path.starts_with("/callout") {
        http_get("backend", "/token", [], 1000, |status, headers, body| {
            add_request_header("x-token-status", status.to_string());
        });
        return;
    }
    if path == "/shared" {
        send_http_response(200, [], `${shared_get("proxy-rhai:shared-bytes").value}`);
        return;
    }
    add_request_header("x-soak", "1");
}
fn chain(n) {
    http_get("backend", `/token?n=${n}`, [], 1000, |status| { chain(n + 1); });
}
fn on_response_headers() {
    add_response_header("x-soak-path", get_context("path"));
    increment_counter("soak_responses", 1);
}
'''

# Each request keeps its body (or its parse) in its context while its callout waits ~1 s.
FLOOD_SCRIPT = r'''
fn on_request_headers() {
    set_context("json", get_request_header(":path").starts_with("/flood/json"));
}
fn on_request_body() {
    if get_context("json") {
        set_context("kept", parse_json(get_request_body()));
    } else {
        set_context("kept", get_request_body_bytes());
    }
    http_get("backend", "/hold", [], 5000, |status| {});
}
fn on_response_headers() {
    add_response_header("x-kept", `${get_context("kept")?.len()}`);
}
'''

FLOOD_LUA = r'''
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
    n = 0; ok = 0; policy = 0; unexpected = 0; first_bad = ""
    local items = {}
    for i = 1, math.floor(BODY_KB * 1000 / 24) do items[i] = string.format("\"item-%016d\"", i) end
    body = "[" .. table.concat(items, ",") .. "]"
end
function request()
    n = n + 1
    local path = "/flood/bytes"
    if n % 2 == 0 then path = "/flood/json" end
    return wrk.format("POST", path, {["content-type"] = "application/json"}, body)
end
'''

# wrk: every 10th request is a script error, every 10th a callout; statuses are counted per
# thread and checked at the end (500 only with the error policy's body).
WRK_LUA = r'''
local threads = {}
function setup(thread) table.insert(threads, thread); thread:set("id", #threads) end
function init(args) n = 0; ok = 0; policy = 0; unexpected = 0; first_bad = "" end
function request()
    n = n + 1
    local path = "/ok"
    if n % 10 == 3 then path = "/error" elseif n % 10 == 7 then path = "/callout"
    elseif n % 10 == 5 then path = "/metric/" .. n elseif n % 10 == 9 then path = "/cache/" .. id .. "/" .. n
    elseif n % 50 == 1 then path = "/chain" end
    return wrk.format("GET", path)
end
'''

# Both loads count statuses the same way.
RESPONSE_LUA = r'''
function response(status, headers, body)
    if status == 200 then ok = ok + 1
    elseif status == 500 and body == "Internal Server Error\n" then policy = policy + 1
    else unexpected = unexpected + 1; if first_bad == "" then first_bad = status .. " " .. body end end
end
function done(summary, latency, requests)
    local t = {ok = 0, policy = 0, unexpected = 0, first_bad = ""}
    for _, thread in ipairs(threads) do
        t.ok = t.ok + thread:get("ok"); t.policy = t.policy + thread:get("policy")
        t.unexpected = t.unexpected + thread:get("unexpected")
        if t.first_bad == "" then t.first_bad = thread:get("first_bad") end
    end
    io.write(string.format("SOAK ok=%d policy=%d unexpected=%d errors=%d first_bad=%s\n",
        t.ok, t.policy, t.unexpected, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, t.first_bad))
end
'''
WRK_LUA += RESPONSE_LUA


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_envoys(work, plugin, flood):
    """The backend (upstream and callout target: a second Envoy answering directly, `/hold`
    after a 1 s delay) and the front Envoy with the plugin. Returns (procs, listen, admin)."""
    listen, admin, backend, backend_admin = free_port(), free_port(), free_port(), free_port()
    delay = {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "delay": {"fixed_delay": "1s", "percentage": {"numerator": 100}},
        "headers": [{"name": ":path", "string_match": {"exact": "/hold"}}]}}
    ok = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    backend_cfg = eb.bootstrap(backend_admin, [eb.listener("backend", backend, [
        eb.hcm("backend", eb.direct_routes([ok]), [delay])])])
    wasm_filter = eb.wasm_filter(os.path.abspath(plugin["wasm"]), plugin["config"], name="proxy-rhai")
    # Room for the flood's 1 MB bodies in Envoy's own buffers.
    buffers = {"per_connection_buffer_limit_bytes": 2 << 20} if flood else {}
    listener = eb.listener("front", listen, [eb.hcm("front", eb.routes_to("upstream"), [wasm_filter])], **buffers)
    # The backend gets as many connections as the front has requests in flight: with a short
    # connect timeout, a flood of hundreds made Envoy answer some with its own 503.
    front_cfg = eb.bootstrap(admin, [listener], [eb.static_cluster(name, backend, connect_timeout="5s")
                                                 for name in ("upstream", "backend")])
    procs = []
    for name, cfg in [("backend", backend_cfg), ("front", front_cfg)]:
        path = os.path.join(work, name + ".json")
        json.dump(cfg, open(path, "w"))
        log = open(os.path.join(work, name + ".log"), "w")
        procs.append(subprocess.Popen(["envoy", "-c", path, "--concurrency", "2" if name == "front" or flood else "1",
                                       "--disable-hot-restart", "-l", "warning"], stdout=log, stderr=subprocess.STDOUT))
    for port in (backend_admin, admin):
        for _ in range(300):
            try:
                if b"LIVE" in subprocess.run(["curl", "-sf", f"127.0.0.1:{port}/ready"], capture_output=True).stdout:
                    break
            except OSError:
                pass
            time.sleep(0.1)
    return procs, listen, admin


def failed_vm_lines(work):
    log = open(os.path.join(work, "front.log")).read()
    return [l for l in log.splitlines() if "Uncaught" in l or "panicked at" in l or re.search(r"Function: proxy_on_\w+ failed", l)]


def wasm_stats(admin):
    return subprocess.run(["curl", "-s", f"127.0.0.1:{admin}/stats?filter=wasmcustom"], capture_output=True, text=True).stdout


def heap_gauge(admin):
    m = re.search(r"wasmcustom\.proxy_rhai_heap_bytes: (\d+)", wasm_stats(admin))
    return int(m.group(1)) if m else None


def run_wrk(work, lua_text, listen, seconds, connections, rss):
    """Runs wrk with `lua_text`, sampling Envoy's RSS every 5 s; returns (output, samples)."""
    lua = os.path.join(work, "load.lua")
    open(lua, "w").write(lua_text)
    samples = []
    wrk = subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", lua,
                            f"http://127.0.0.1:{listen}/"], stdout=subprocess.PIPE, text=True)
    start = time.time()
    while wrk.poll() is None:
        time.sleep(5)
        samples.append((round(time.time() - start), rss()))
    return wrk.stdout.read(), samples


def soak_ok(out):
    m = re.search(r"SOAK ok=(\d+) policy=(\d+) unexpected=(\d+) errors=(\d+) first_bad=(.*)", out)
    return bool(m) and int(m.group(3)) == 0 and int(m.group(4)) == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=None)
    ap.add_argument("--connections", type=int, default=None)
    ap.add_argument("--flood", action="store_true")
    ap.add_argument("--body-kb", type=int, default=1000)
    ap.add_argument("--wasm", default="target/proxy_rhai.wasm")
    args = ap.parse_args()
    seconds = args.seconds or (60 if args.flood else 180)
    connections = args.connections or (300 if args.flood else 32)
    work = tempfile.mkdtemp(prefix="proxy-rhai-soak-")
    plugin = {"wasm": args.wasm, "config": {"script": FLOOD_SCRIPT if args.flood else SCRIPT}}
    procs = []
    try:
        procs, listen, admin = start_envoys(work, plugin, args.flood)
        front = procs[1]
        rss = lambda: int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{front.pid}/status").read()).group(1)) // 1024
        if not args.flood:
            before = rss()
            out, samples = run_wrk(work, WRK_LUA, listen, seconds, connections, rss)
            print(out)
            time.sleep(5)
            after = rss()
            first = [m for t, m in samples if t <= 60]
            last = [m for t, m in samples if t >= seconds - 60]
            print(f"Envoy RSS (MiB), before: {before}, first minute: {min(first)}-{max(first)}, "
                  f"last minute: {min(last)}-{max(last)}, 5 s after: {after}")
            print("samples (s, MiB):", samples)
            metrics = wasm_stats(admin).strip().splitlines()
            print(f"{len(metrics)} wasmcustom stats; the plugin's own and the soak's:")
            print("\n".join(l for l in metrics if "proxy_rhai" in l or "soak" in l))
            shared = subprocess.run(["curl", "-s", f"127.0.0.1:{listen}/shared"],
                                    capture_output=True, text=True).stdout
            print(f"shared-data bytes counted: {shared}")
            ok = soak_ok(out)
        else:
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"127.0.0.1:{listen}/warm"])
            time.sleep(1)
            baseline = heap_gauge(admin)
            print(f"before: Envoy RSS {rss()} MiB, heap gauge {baseline}")
            lua = FLOOD_LUA.replace("BODY_KB", str(args.body_kb)) + RESPONSE_LUA
            ok = True
            for flood in (1, 2):
                out, samples = run_wrk(work, lua, listen, seconds, connections, rss)
                print(f"flood {flood}:", out.strip().splitlines()[-1])
                print(f"flood {flood}: RSS during (MiB): {min(m for _, m in samples)}-{max(m for _, m in samples)}; samples (s, MiB): {samples}")
                # The last streams end once their callouts are answered.
                time.sleep(3)
                heap = heap_gauge(admin)
                print(f"flood {flood}: after: Envoy RSS {rss()} MiB, heap gauge {heap} (baseline {baseline})")
                back = heap is not None and baseline is not None and heap < baseline + (1 << 20)
                ok = ok and soak_ok(out) and back
                time.sleep(5)
            print(wasm_stats(admin).strip())
        failed_vm = failed_vm_lines(work)
        print(f"failed-VM log lines: {len(failed_vm)}")
        ok = ok and not failed_vm
        print("SOAK PASSED" if ok else "SOAK FAILED")
        return 0 if ok else 1
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
