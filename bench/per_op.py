#!/usr/bin/env python3
"""Per-operation costs in Envoy: what one header read or write costs a proxy-rhai script and a
Lua script, and what the wasm filter itself costs per request, with nothing else around it.

    python3 bench/per_op.py [--rounds 3] [--wasm target/proxy_rhai.wasm]

One Envoy (--concurrency 1, pinned to CPU 0) with a listener per case; every route answers
with a direct_response, so no upstream runs. Each case loops 200 operations per request, so
the operation's cost stands well above the run-to-run noise of Envoy's own per-request CPU.
h2load (pinned to CPU 1) sends 3,000 requests at 500/s per case, cases interleaved per round;
Envoy's CPU comes from /proc/PID/task/*/schedstat. Per operation = (case - the same filter
with an empty script) / 200. proxy-rhai batches a call's header operations (src/header_map.rs),
so its per-operation figures for headers are what a batched operation costs.

The last cases run the bench's workloads 1 and 2 whole, for Lua, the native plugin (as
bench/run.py builds it: target/bench_native_plugin.wasm) and proxy-rhai.
"""
import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import envoy_bootstrap as eb  # noqa: E402
OPS = 200
LOOPS = 10


def rhai(op):
    body = "\n".join(f"        {op.format(i=i % 5)};" for i in range(OPS // LOOPS))
    return f"fn on_request_headers() {{\n    for i in 0..{LOOPS} {{\n{body}\n    }}\n}}"


def lua(op):
    body = "\n".join(f"    {op.format(i=i % 5)}" for i in range(OPS // LOOPS))
    return (f"function envoy_on_request(handle)\n  local h = handle:headers()\n"
            f"  for i = 1, {LOOPS} do\n{body}\n  end\nend\n")


# (name, filter kind, source, what the per-op figure is relative to)
CASES = [
    ("no filter", None, None, None),
    ("Lua, empty", "lua", "function envoy_on_request(handle)\nend\n", None),
    ("Lua, header read", "lua", lua('h:get("x-in-{i}")'), "Lua, empty"),
    ("Lua, header replace", "lua", lua('h:replace("x-in-{i}", "r")'), "Lua, empty"),
    ("proxy-rhai, empty", "rhai", "fn on_request_headers() { }", None),
    ("proxy-rhai, header read", "rhai", rhai('get_request_header("x-in-{i}")'), "proxy-rhai, empty"),
    ("proxy-rhai, header replace", "rhai", rhai('replace_request_header("x-in-{i}", "r")'), "proxy-rhai, empty"),
    ("proxy-rhai, binding without host call", "rhai", rhai('get_context("x-in-{i}")'), "proxy-rhai, empty"),
    ("proxy-rhai, Rhai string method", "rhai", rhai('"x-in-{i}".len()'), "proxy-rhai, empty"),
    # The value used: a let of nothing read is optimized away.
    ("proxy-rhai, let of a string", "rhai", rhai('let s = "x-in-{i}"; s.len()'), "proxy-rhai, Rhai string method"),
    # The bench's own workloads 1 and 2, whole (no per-operation figure): each filter's cost
    # with nothing but the direct response around it.
    ("Lua, trivial", "lua", (ROOT / "bench" / "lua" / "trivial.lua").read_text(), None),
    ("native, trivial", "native", "trivial", None),
    ("proxy-rhai, trivial", "rhai", (ROOT / "bench" / "scripts" / "trivial.rhai").read_text(), None),
    ("Lua, header-heavy", "lua", (ROOT / "bench" / "lua" / "headers.lua").read_text(), None),
    ("native, header-heavy", "native", "headers", None),
    ("proxy-rhai, header-heavy", "rhai", (ROOT / "bench" / "scripts" / "headers.rhai").read_text(), None),
]


def filter_for(kind, source, wasm):
    if kind == "native":
        return eb.wasm_filter(wasm["native"], {"workload": source}, vm_id="native")
    if kind == "lua":
        return eb.lua_filter(source)
    return eb.wasm_filter(wasm["rhai"], {"script": source}, vm_id="proxy-rhai")


def listener(index, port, kind, source, wasm):
    filters = [filter_for(kind, source, wasm)] if kind else []
    ok = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    return eb.listener(f"case{index}", port, [eb.hcm(f"case{index}", eb.direct_routes([ok]), filters, name="hcm")])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wasm", default=str(ROOT / "target" / "proxy_rhai.wasm"))
    parser.add_argument("--native", default=str(ROOT / "target" / "bench_native_plugin.wasm"),
                        help="the native plugin, as bench/run.py builds it")
    args = parser.parse_args()
    wasm = {"rhai": args.wasm, "native": args.native}
    # Free loopback ports, asked of the kernel, so parallel runs don't collide.
    socks = [socket.socket() for _ in range(len(CASES) + 1)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    *ports, admin = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    work = pathlib.Path(f"/tmp/proxy-rhai-per-op-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    config = eb.bootstrap(admin, [listener(i, ports[i], kind, source, wasm)
                                  for i, (_, kind, source, _) in enumerate(CASES)])
    (work / "envoy.json").write_text(json.dumps(config))
    envoy = subprocess.Popen(
        ["taskset", "-c", "0", "envoy", "-c", str(work / "envoy.json"), "--concurrency", "1",
         "--base-id", str(os.getpid()), "-l", "error"],
        stdout=open(work / "envoy.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ports[-1]}/", timeout=1).read()
                break
            except OSError:
                if time.time() > deadline or envoy.poll() is not None:
                    sys.exit(f"Envoy did not start; see {work / 'envoy.log'}")
                time.sleep(0.3)

        def cpu_ns():
            total = 0
            for task in os.listdir(f"/proc/{envoy.pid}/task"):
                try:
                    total += int(open(f"/proc/{envoy.pid}/task/{task}/schedstat").read().split()[0])
                except (FileNotFoundError, ProcessLookupError):
                    pass
            return total

        headers = sum([["-H", f"x-in-{i}: v{i}"] for i in range(5)], [])
        samples = {name: [] for name, *_ in CASES}
        for r in range(args.rounds):
            order = list(range(len(CASES)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                before = cpu_ns()
                out = subprocess.run(
                    ["taskset", "-c", "1", "h2load", "-n", "3000", "--rps", "100", "-c", "5",
                     *headers, f"http://127.0.0.1:{ports[i]}/"],
                    capture_output=True, text=True, check=True).stdout
                used = cpu_ns() - before
                done = int(next(l for l in out.splitlines() if l.startswith("requests:")).split()[7])
                samples[CASES[i][0]].append(used / 1000 / max(done, 1))
        median = {n: sorted(v)[len(v) // 2] for n, v in samples.items()}
        print(f"Envoy CPU per request, median of {args.rounds} rounds; {OPS} operations per request\n")
        print("| case | µs per request (min–max) | µs per operation |")
        print("| --- | ---: | ---: |")
        for name, _, _, reference in CASES:
            v = samples[name]
            per_op = f"{(median[name] - median[reference]) / OPS:.2f}" if reference else ""
            print(f"| {name} | {median[name]:.1f} ({min(v):.1f}–{max(v):.1f}) | {per_op} |")
    finally:
        envoy.terminate()
        envoy.wait()


if __name__ == "__main__":
    main()
