#!/usr/bin/env python3
"""Where the plugin's own wasm code spends its time, per request, by function.

    python3 bench/wasm_profile.py SCRIPT.rhai [--requests 20000] [--top 30] [--wasm FILE]
        [--fuel [--allocs] [--by-function [--callers NAME]]]

V8 in Envoy shows the plugin as one anonymous block of JIT code to perf. This runs the same
.wasm on wasmtime (pip package `wasmtime`, installed here when missing) with a small
proxy-wasm host written in Python (tools/proxy_wasm_host.py), and wasmtime's perf map names
every wasm function. The request is minimal: a GET with the 15 headers of bench workload 2, a
200 response with a 3-byte body (or the file given with --response-body; with --chunk-size N
it comes in pieces of N bytes, one body call each, the buffer holding what the plugin paused
and the new piece, as in Envoy), every phase called in Envoy's order; header maps and the
plugin configuration are answered, a callout is answered at once (200, `x-auth-token`, as
bench workload 4's service does), anything else (properties, metrics) is refused or ignored.

The wasm needs its "name" section: by default the release build is run through the same
wasm-opt as tools/build-wasm.sh with --debuginfo (so the code is the release artifact's).
Prints the microseconds per request spent in wasm code (perf samples of the JIT code, the
Python host excluded) and the top functions. `--fuel` counts instead the wasm instructions one
request executes (wasmtime's fuel), exact and the same on every run: the measure to compare two
builds by. Cranelift's code is not V8's, but the plugin's
time per request came out close to what perf shows for V8's JIT code in Envoy (trivial.rhai:
~8 µs in both, before the resolution cache). `--allocs` adds the heap allocations, frees and
reallocations per request, counted on a copy of the wasm whose allocator entry points bump a
counter: fuel includes what they cost (dlmalloc runs 100-300 instructions each), not how many.
`--by-function` splits the fuel count by function, exactly (own and inclusive instructions,
calls per request), on a copy of the wasm whose functions report their entry and exit to the
host; `--callers NAME` adds who calls the functions whose name contains NAME.
"""
import argparse
import collections
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from proxy_wasm_host import Host  # noqa: E402

# The version tools/setup.sh installs (the fuel counts above were measured with it).
WASMTIME = "wasmtime==51.0.0"
REQUEST = ([(":authority", "example.com"), (":path", "/bench"), (":method", "GET"), (":scheme", "http")]
           + [(f"x-in-{i}", f"v{i}") for i in range(10)] + [(f"x-rm-{i}", "gone") for i in range(5)])
RESPONSE = [(":status", "200"), ("content-type", "text/plain"), ("content-length", "3")]
CALLOUT_ANSWER = [(":status", "200"), ("x-auth-token", "tok-123"), ("content-length", "0")]


def serve(wasm, script, requests, fuel=False, configuration=None, response_body=b"ok\n",
          counters=(), tracer=None, chunk_size=0):
    """Runs `requests` requests through the plugin (inside perf, when profiling). With `fuel`,
    returns the wasm instructions they executed (wasmtime's fuel: one unit per instruction,
    none for the host), after as many requests again to warm up, and how much each of the
    exported globals named in `counters` grew over them. `tracer` answers the imports of a
    module made by `traced` (a `FunctionTracer`). With `chunk_size`, the response body comes
    in pieces of that many bytes."""
    def trace_hooks(host):
        return {(TRACE_MODULE, "enter"): lambda i: tracer.enter(i, host.store.get_fuel()),
                (TRACE_MODULE, "exit"): lambda i: tracer.exit(i, host.store.get_fuel())}

    host = Host(wasm, fuel=fuel, profiler=None if fuel else "perfmap",
                extra_imports=trace_hooks if tracer else None,
                http_call_answer=lambda _token: (CALLOUT_ANSWER, b""))
    if not host.start(configuration or json.dumps({"script": pathlib.Path(script).read_text()})):
        sys.exit("the plugin refused the configuration (see its log above)")
    response = [(k, str(len(response_body)) if k == "content-length" else v) for k, v in RESPONSE]
    start = None
    for i in range(2 * requests if fuel else requests):
        if fuel and i == requests:
            if tracer:
                tracer.counting = True
            start = host.store.get_fuel()
            counted = [host.exports[c].value(host.store) for c in counters]
        host.exchange(REQUEST, upstream=lambda _headers, _body: (response, response_body),
                      chunk_size=chunk_size)
    if fuel:
        return start - host.store.get_fuel(), [host.exports[c].value(host.store) - n
                                                for c, n in zip(counters, counted)]


def named_wasm(path):
    if path:
        return path
    built = ROOT / "target" / "wasm32-wasip1" / "release" / "proxy_rhai.wasm"
    if not built.exists():
        sys.exit(f"{built} is missing: run tools/build-wasm.sh (or give --wasm)")
    out = pathlib.Path(tempfile.gettempdir()) / "proxy_rhai.named.wasm"
    subprocess.run(["wasm-opt", "-O3", "-ocimfs", "2000", "--debuginfo", "--strip-producers",
                    str(built), "-o", str(out)], check=True)
    return str(out)


# The allocator's entry points in the release build (Rust's default wasm32-wasip1 allocator).
ALLOCATOR = {"dlmalloc": "allocations", "dlfree": "frees", "realloc": "reallocations"}


def counting_allocations(wasm):
    """A copy of `wasm` that counts the calls of each ALLOCATOR function in an exported global
    (binaryen's wasm-dis and wasm-as: the text form is binaryen's own, read back exactly)."""
    text = subprocess.run(["wasm-dis", wasm], capture_output=True, text=True, check=True).stdout
    for name in ALLOCATOR:
        head = re.search(rf"^ \(func \${re.escape(name)} .*\n((?:  \(local .*\n)*)", text, re.M)
        if not head:
            sys.exit(f"{wasm}: no function ${name} to count (another allocator?)")
        bump = f"  (global.set $__count_{name} (i32.add (global.get $__count_{name}) (i32.const 1)))\n"
        text = text[:head.end()] + bump + text[head.end():]
    globals_ = "".join(f" (global $__count_{n} (mut i32) (i32.const 0))\n"
                       f" (export \"__count_{n}\" (global $__count_{n}))\n" for n in ALLOCATOR)
    at = text.index("\n (global ") + 1 if "\n (global " in text else text.index("\n (func ") + 1
    text = text[:at] + globals_ + text[at:]
    out = pathlib.Path(tempfile.gettempdir()) / "proxy_rhai.counting.wasm"
    subprocess.run(["wasm-as", "--all-features", "-", "-o", str(out)], input=text, text=True, check=True)
    return str(out)


TRACE_MODULE = "proxy_rhai_trace"
FUNC_HEAD = re.compile(r"^ \(func \$(\S+)((?: \(type \$?\w+\))?)((?: \(param \$\w+ \w+\))*)((?: \(result \w+\))?)\n", re.M)


def traced(wasm):
    """A copy of `wasm` where every function tells the host when it is entered and when it
    returns: each function is renamed, and a wrapper of the old name (which every call, table
    entry and export refers to) calls the imports `enter(i)` and `exit(i)` around it. Returns
    the copy, the functions' names (by `i`), and the instructions each one's wrapper executes
    between the two hooks (`FunctionTracer` takes them back out)."""
    text = subprocess.run(["wasm-dis", wasm], capture_output=True, text=True, check=True).stdout
    names, overheads, wrappers, parts, at = [], [], [], [], 0
    for m in FUNC_HEAD.finditer(text):
        name, typ, params, result = m.groups()
        i = len(names)
        names.append(name)
        parts += [text[at:m.start()], f" (func ${name}__traced{typ}{params}{result}\n"]
        at = m.end()
        args = " ".join(f"(local.get ${p})" for p in re.findall(r"\(param \$(\w+) ", params))
        # Between the hooks: the arguments, the call, the result kept, `exit`'s argument and call.
        overheads.append(len(re.findall(r"\(param ", params)) + (4 if result else 3))
        call = f"(call ${name}__traced {args})"
        if result:
            body = (f"  (local $result {result[len(' (result '):-1]})\n  (call $__enter (i32.const {i}))\n"
                    f"  (local.set $result {call})\n  (call $__exit (i32.const {i}))\n  (local.get $result)\n")
        else:
            body = f"  (call $__enter (i32.const {i}))\n  {call}\n  (call $__exit (i32.const {i}))\n"
        wrappers.append(f" (func ${name}{typ}{params}{result}\n{body} )\n")
    parts.append(text[at:])
    text = "".join(parts)
    imports = "".join(f' (import "{TRACE_MODULE}" "{n}" (func $__{n} (param i32)))\n' for n in ("enter", "exit"))
    after_imports = [m.end() for m in re.finditer(r"^ \(import .*\n", text, re.M)][-1]
    text = text[:after_imports] + imports + text[after_imports:]
    end = text.rindex("\n)")
    text = text[:end] + "\n" + "".join(wrappers) + text[end:]
    out = pathlib.Path(tempfile.gettempdir()) / "proxy_rhai.traced.wasm"
    subprocess.run(["wasm-as", "--all-features", "-", "-o", str(out)], input=text, text=True, check=True)
    return str(out), names, overheads


# A wrapper's instructions before its `enter` hook reads the fuel (`enter`'s argument and call)
# and after its `exit` hook (the result read back, the return), which the caller's window has:
# 3 makes the functions' figures add up to the untraced count within 0.5 % (the four workloads).
CALLER_SIDE = 3


class FunctionTracer:
    """Each function's instructions (fuel) while the counted requests run: its own ("self")
    and with what it called ("inclusive"), its calls, and who called it. The wrappers'
    instructions (`overheads`, by function) are taken out, so the figures add up to the
    untraced module's."""

    def __init__(self, overheads):
        self.overheads = overheads
        self.counting = False
        # [function, fuel at entry, fuel its callees used, tracing instructions in its window]
        self.stack = []
        self.own = collections.Counter()
        self.inclusive = collections.Counter()
        self.calls = collections.Counter()
        self.callers = collections.Counter()

    def enter(self, function, fuel):
        self.stack.append([function, fuel, 0, self.overheads[function]])

    def exit(self, function, fuel):
        function, entered, callees, tracing = self.stack.pop()
        used = entered - fuel - tracing
        if self.stack:
            self.stack[-1][2] += used
            self.stack[-1][3] += tracing + CALLER_SIDE
        if self.counting:
            self.own[function] += used - callees
            self.inclusive[function] += used
            self.calls[function] += 1
            if self.stack:
                self.callers[(self.stack[-1][0], function)] += 1


def by_function(wasm, args, body):
    """Prints `--by-function`'s table (and `--callers`')."""
    module, names, overheads = traced(wasm)
    tracer = FunctionTracer(overheads)
    serve(module, args.script, args.requests, fuel=True, configuration=args.configuration,
          response_body=body, tracer=tracer,
          chunk_size=args.chunk_size)
    if shutil.which("rustfilt"):
        names = subprocess.run(["rustfilt"], input="\n".join(names), capture_output=True,
                               text=True, check=True).stdout.splitlines()
    names = [re.sub(r"::h[0-9a-f]{16}$", "", n) for n in names]
    n = args.requests
    print(f"wasm instructions per request, by function ({sum(tracer.own.values()) / n:.0f} in all)")
    print(f"{'own':>8} {'inclusive':>9} {'calls':>7}  function")
    for f, own in tracer.own.most_common(args.top):
        print(f"{own / n:8.0f} {tracer.inclusive[f] / n:9.0f} {tracer.calls[f] / n:7.1f}  {names[f]}")
    for wanted in args.callers:
        print(f"\ncallers of functions named *{wanted}*, calls per request:")
        for (caller, f), calls in tracer.callers.most_common():
            if wanted in names[f]:
                print(f"{calls / n:7.1f}  {names[caller]} -> {names[f]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("script")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--wasm", help="a .wasm with its name section (default: the release build, named)")
    ap.add_argument("--configuration", help="the plugin configuration, as given (SCRIPT is then "
                    "only a label): to run another plugin, e.g. the native one of bench/native-plugin")
    ap.add_argument("--fuel", action="store_true",
                    help="count the wasm instructions per request instead (exact and repeatable; no perf)")
    ap.add_argument("--allocs", action="store_true",
                    help="--fuel, and also count the heap allocations, frees and reallocations per "
                    "request (on a copy of the wasm that counts them; needs wasm-dis and wasm-as)")
    ap.add_argument("--by-function", action="store_true",
                    help="--fuel, by function: each function's own and inclusive instructions and "
                    "calls per request, exact (on a copy of the wasm whose functions report their "
                    "entry and exit; needs wasm-dis and wasm-as)")
    ap.add_argument("--callers", metavar="NAME", action="append", default=[],
                    help="with --by-function: who calls the functions whose name contains NAME")
    ap.add_argument("--response-body", metavar="FILE",
                    help="the upstream's response body (default: 3 bytes), e.g. bench/data/body-10k.json "
                    "for bench/scripts/json.rhai")
    ap.add_argument("--chunk-size", type=int, default=0, metavar="N",
                    help="give the response body in pieces of N bytes, one body call each (a streamed "
                    "body: bench/scripts/stream.rhai --response-body bench/data/stream-1m.txt "
                    "--chunk-size 16384); default: in one call")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.fuel = args.fuel or args.allocs or args.by_function
    body = pathlib.Path(args.response_body).read_bytes() if args.response_body else b"ok\n"
    if args.serve:
        serve(args.wasm, args.script, args.requests, configuration=args.configuration,
              response_body=body, chunk_size=args.chunk_size)
        return
    try:
        import wasmtime  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", WASMTIME], check=True)
    wasm = named_wasm(args.wasm)
    if args.fuel:
        used, _ = serve(wasm, args.script, args.requests, fuel=True,
                        configuration=args.configuration, response_body=body, chunk_size=args.chunk_size)
        print(f"{args.script}: {used / args.requests:.0f} wasm instructions per request "
              f"({args.requests} requests after as many to warm up)")
        if args.by_function:
            by_function(wasm, args, body)
        if args.allocs:
            counters = [f"__count_{n}" for n in ALLOCATOR]
            _, counts = serve(counting_allocations(wasm), args.script, args.requests, fuel=True,
                              configuration=args.configuration, response_body=body, counters=counters,
                              chunk_size=args.chunk_size)
            print(", ".join(f"{c / args.requests:.1f} {what}" for c, what in zip(counts, ALLOCATOR.values()))
                  + " per request")
        return
    data = pathlib.Path(tempfile.gettempdir()) / "proxy_rhai.wasm_profile.data"
    subprocess.run(["perf", "record", "-q", "-o", str(data), sys.executable, __file__, "--serve",
                    "--wasm", wasm, "--requests", str(args.requests), args.script]
                   + (["--response-body", args.response_body] if args.response_body else [])
                   + (["--configuration", args.configuration] if args.configuration else [])
                   + ["--chunk-size", str(args.chunk_size)], check=True)
    report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-q", "--no-children",
                             "--sort", "dso,sym", "-F", "period,dso,sym"],
                            capture_output=True, text=True, check=True).stdout
    # The period of a cpu-clock sample is in nanoseconds.
    rows = []
    for line in report.splitlines():
        m = re.match(r"\s*(\d+)\s+(\S.*?)\s+\[\.\]\s+(.*)", line)
        if m and m.group(2).startswith("[JIT]"):
            rows.append((int(m.group(1)), m.group(3)))
    total = sum(ns for ns, _ in rows)
    print(f"{args.script}: {total / 1e3 / args.requests:.2f} µs per request in wasm code "
          f"({args.requests} requests, {len(rows)} functions sampled)")
    for ns, name in sorted(rows, reverse=True)[:args.top]:
        print(f"{ns / 1e3 / args.requests:8.3f} µs  {100 * ns / total:5.1f} %  {re.sub(r'::h[0-9a-f]{16}$', '', name)}")


if __name__ == "__main__":
    main()
