#!/usr/bin/env python3
"""Where Envoy's CPU goes per request, by perf: the kernel, Envoy's binary (with V8's runtime
and builtins, statically linked), V8's JIT code (the wasm plugin) and libc.

    python3 bench/perf_split.py [--workload stream] [--rounds 5] [--duration 5]
        [--wasm LABEL=FILE ...] [--script LABEL=FILE ...]

Why: on a 2-core VM the bench's "CPU per request above the floor" of the streamed body moves by
±30 % from run to run, much of it in the kernel's share (loopback TCP, flow control), though
both plugins let each piece through the same way. This splits the same Envoy CPU by where
perf's cpu-clock samples land (`perf record -e cpu-clock`, no hardware counters needed), so the
plugins' own code (the JIT share) and what Envoy and V8 do for them (the Envoy and libc shares:
host calls, V8's builtins; `memory.copy` of a large block is libc's memmove) can be compared
apart from the kernel's. The Envoy binary is stripped: its share is not split further.

One Envoy (--concurrency 1, pinned like run.py's) with a listener per variant: no filter,
Envoy's Lua filter (bench/lua; LuaJIT is linked into Envoy, so its traces land in the JIT share
and its interpreter in Envoy's), the native plugin, and proxy-rhai (`target/proxy_rhai.wasm`,
or each --wasm LABEL=FILE given, each its own VM), on run.py's upstream and workloads. Each
--script LABEL=FILE adds `target/proxy_rhai.wasm` running that script instead of the
workload's (e.g. one that only takes each piece, to see what handing it to a script costs). Each round runs every variant at full speed
(wrk, 16 connections) for --duration seconds, in an order rotated each round, under perf.
Prints each run, then per variant the median µs per request of each share and of the user-space
shares together above the no-filter listener's in the same round.
"""
import argparse
import collections
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (the bench's own Envoy, upstream and load helpers)

SAMPLE_HZ = 4000
SHARES = ["kernel", "envoy", "jit", "libc"]


def share_of(dso):
    if "kernel" in dso:
        return "kernel"
    if dso.startswith("[JIT]") or "anon" in dso or dso == "[unknown]":
        return "jit"
    if "envoy" in dso:
        return "envoy"
    if dso.startswith("libc"):
        return "libc"
    return "other"


def measure(envoy, port, workload, duration, load_cpus, data):
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(SAMPLE_HZ),
                             "-p", str(envoy.pid), "-o", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf attached before the load starts
    load = R.max_rate(port, workload, duration, 16, load_cpus, envoy)
    perf.send_signal(2)
    perf.wait()
    report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-q",
                             "--show-nr-samples"], capture_output=True, text=True).stdout
    samples = collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(.*)", line)
        if m:
            samples[share_of(m.group(2).strip())] += int(m.group(1))
    # perf ran a little longer than wrk: scale by wrk's requests over its own duration.
    requests = load["rps"] * duration
    us = 1e6 / SAMPLE_HZ
    return load["rps"], {s: samples[s] * us / requests for s in SHARES}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="stream", choices=R.WORKLOADS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--wasm", action="append", default=[], metavar="LABEL=FILE",
                    help="a proxy-rhai .wasm to measure (default rhai=target/proxy_rhai.wasm)")
    ap.add_argument("--script", action="append", default=[], metavar="LABEL=FILE",
                    help="target/proxy_rhai.wasm running this script instead of the workload's")
    args = ap.parse_args()
    rhai = dict(w.split("=", 1) for w in args.wasm) or {"rhai": str(R.ROOT / "target" / "proxy_rhai.wasm")}
    native = R.ROOT / "target" / "bench_native_plugin.wasm"
    if not native.exists():
        sys.exit(f"{native} is missing: run bench/run.py once (it builds the native plugin)")
    proxy_cpus, upstream_cpus, load_cpus = R.cpu_sets()
    work = R.ROOT / "bench" / "results" / f"perf-split-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    json_body = (R.BENCH / "data" / "body-10k.json").read_text()
    upstream, upstream_port = R.start_upstream(work, json_body, upstream_cpus)
    variants = {"none": None, "lua": None, "native": str(native), **rhai}
    scripts = dict(s.split("=", 1) for s in args.script)
    variants.update({label: str(R.ROOT / "target" / "proxy_rhai.wasm") for label in scripts})
    ports = R.free_ports(len(variants) + 1)
    admin = ports.pop()
    listeners, port_of = [], {}
    for label in variants:
        port_of[label] = ports.pop()
        # run.py's filters: each label but "none", "lua" and "native" is a proxy-rhai build.
        filters = R.filter_for(label, args.workload, variants, lua_code=R.load_lua())
        if label in scripts:
            configuration = json.dumps({"script": Path(scripts[label]).read_text(), "config": {}})
            filters = [R.eb.wasm_filter(variants[label], configuration, name=label, vm_id=label)]
        listeners.append((label, port_of[label], filters))
    envoy = R.Envoy("proxy", R.proxy_bootstrap(admin, listeners, upstream_port), admin, work,
                    concurrency=1, cpus=proxy_cpus)
    try:
        envoy.wait_ready()
        for label in variants:  # warm-up, and every variant must answer
            R.max_rate(port_of[label], args.workload, 2, 16, load_cpus)
        labels = list(variants)
        rows = collections.defaultdict(list)
        for r in range(args.rounds):
            shift = r % len(labels)
            this_round = {}
            for label in labels[shift:] + labels[:shift]:
                rps, shares = measure(envoy, port_of[label], args.workload, args.duration,
                                      load_cpus, work / f"perf-{label}.data")
                this_round[label] = shares
                print(f"round {r + 1} {label:8} {rps:6.0f} req/s  "
                      + "  ".join(f"{s} {shares[s]:7.1f}" for s in SHARES) + "  µs/request", flush=True)
            floor = sum(this_round["none"][s] for s in SHARES if s != "kernel")
            for label, shares in this_round.items():
                user = sum(shares[s] for s in SHARES if s != "kernel")
                rows[label].append({**shares, "user above floor": user - floor})
        print(f"\nmedians over {args.rounds} rounds, µs per request ({args.workload}):")
        for label, runs in rows.items():
            cells = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            print(f"  {label:8} " + "  ".join(f"{k} {v:7.1f}" for k, v in cells.items()))
    finally:
        envoy.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
