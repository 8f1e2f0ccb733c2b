#!/usr/bin/env python3
r"""Code size breakdown of a wasm module that still has its "name" section.

--by def groups a function by the path that defines it (`<T as Trait>::f` counts for T);
--by user by the first rhai / proxy_rhai path in its name (who instantiated a generic).
Build with v0 mangling (RUSTFLAGS="-C symbol-mangling-version=v0") to see generic arguments;
--legacy: a legacy-mangled build of the same code, to place v0's `<rhai::Engine>::f` in the
module of its impl block (v0 names leave it out).

Reads the code section (function body sizes) and the "name" custom section (function names),
demangles Rust names (with rustfilt or c++filt when found, else roughly, legacy `_ZN...E`
only: only the path matters here), and groups code bytes by crate / module path.

The release profile strips debug info but keeps symbols, so the wasm before wasm-opt has
names; run the same wasm-opt as tools/build-wasm.sh plus --debuginfo to keep them. The code
section then has the same size as target/proxy_rhai.wasm's:
  tools/build-wasm.sh
  wasm-opt -O3 -ocimfs 2000 --debuginfo --strip-producers \
    target/wasm32-wasip1/release/proxy_rhai.wasm -o /tmp/proxy_rhai.named.wasm
  tools/wasm-size.py /tmp/proxy_rhai.named.wasm --top 40
"""
import os
import re
import subprocess
import sys
from collections import defaultdict


def leb(buf, i):
    r = s = 0
    while True:
        b = buf[i]
        i += 1
        r |= (b & 0x7F) << s
        s += 7
        if b < 0x80:
            return r, i


def skip_const_expr(buf, i):
    """Past a constant expression (a data segment's offset) and its `end`: one
    i32/i64.const (a signed LEB) or global.get (an index); a constant's bytes may be 0x0B."""
    op = buf[i]
    if op not in (0x41, 0x42, 0x23):
        raise ValueError(f"unexpected opcode {op:#x} in a data segment offset")
    _, i = leb(buf, i + 1)  # an LEB's length doesn't depend on its sign
    assert buf[i] == 0x0B, "a data segment offset of more than one instruction"
    return i + 1


def sections(buf):
    assert buf[:4] == b"\0asm", "not a wasm file"
    i = 8
    while i < len(buf):
        sid = buf[i]
        size, j = leb(buf, i + 1)
        yield sid, j, j + size, i
        i = j + size


def parse(path):
    buf = open(path, "rb").read()
    n_imported = 0
    bodies = []  # sizes of defined function bodies
    names = {}
    sec_sizes = defaultdict(int)
    data_bytes = 0
    for sid, a, b, hdr in sections(buf):
        if sid == 0:
            nlen, k = leb(buf, a)
            cname = buf[k:k + nlen].decode()
            sec_sizes["custom:" + cname] += b - hdr
            if cname == "name":
                k += nlen
                while k < b:
                    sub = buf[k]
                    ssz, k2 = leb(buf, k + 1)
                    if sub == 1:
                        cnt, p = leb(buf, k2)
                        for _ in range(cnt):
                            idx, p = leb(buf, p)
                            ln, p = leb(buf, p)
                            names[idx] = buf[p:p + ln].decode("utf-8", "replace")
                            p += ln
                    k = k2 + ssz
            continue
        sec_sizes[{1: "type", 2: "import", 3: "function", 4: "table", 5: "memory", 6: "global",
                   7: "export", 8: "start", 9: "element", 10: "code", 11: "data",
                   12: "datacount"}.get(sid, str(sid))] += b - hdr
        if sid == 2:
            cnt, p = leb(buf, a)
            for _ in range(cnt):
                for _ in range(2):
                    ln, p = leb(buf, p)
                    p += ln
                kind = buf[p]
                p += 1
                if kind == 0:
                    _, p = leb(buf, p)
                    n_imported += 1
                elif kind == 1:
                    p += 1
                    fl, p = leb(buf, p)
                    _, p = leb(buf, p)
                    if fl & 1:
                        _, p = leb(buf, p)
                elif kind == 2:
                    fl, p = leb(buf, p)
                    _, p = leb(buf, p)
                    if fl & 1:
                        _, p = leb(buf, p)
                elif kind == 3:
                    p += 2
        elif sid == 10:
            cnt, p = leb(buf, a)
            for _ in range(cnt):
                sz, q = leb(buf, p)
                bodies.append(q + sz - p)  # body incl. its size prefix
                p = q + sz
        elif sid == 11:
            cnt, p = leb(buf, a)
            for _ in range(cnt):
                fl, p = leb(buf, p)
                if fl == 2:
                    _, p = leb(buf, p)  # memory index
                if fl in (0, 2):
                    p = skip_const_expr(buf, p)  # the offset
                ln, p = leb(buf, p)
                data_bytes += ln
                p += ln
    funcs = [(names.get(n_imported + i, f"func[{n_imported + i}]"), s) for i, s in enumerate(bodies)]
    return funcs, sec_sizes, data_bytes, len(buf)


def demangle_all(raw):
    """rustfilt / c++filt if present; else a rough legacy demangler."""
    for tool in (["rustfilt"], ["c++filt", "-n"]):
        try:
            out = subprocess.run(tool, input="\n".join(raw), capture_output=True, text=True,
                                 check=True).stdout.split("\n")
            if len(out) >= len(raw):
                return out[:len(raw)]
        except (OSError, subprocess.CalledProcessError):
            pass
    return [rough_demangle(n) for n in raw]


def rough_demangle(n):
    if n.startswith("_ZN"):
        p, parts = 3, []
        while p < len(n) and n[p].isdigit():
            m = re.match(r"\d+", n[p:])
            ln = int(m.group())
            p += len(m.group())
            parts.append(n[p:p + ln])
            p += ln
        s = "::".join(parts)
        s = re.sub(r"::h[0-9a-f]{16}$", "", s)
        for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$RF$", "&"), ("$C$", ","),
                     ("..", "::"), ("$u7b$", "{"), ("$u7d$", "}"), ("$BP$", "*")):
            s = s.replace(a, b)
        return s
    return n


def strip_generics(s):
    out, depth = [], 0
    for c in s:
        if c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(c)
    return "".join(out)


def clean(name):
    n = re.sub(r"::h[0-9a-f]{16}$", "", name)
    n = re.sub(r"\[[0-9a-f]{1,16}\]", "", n)  # v0 crate disambiguators
    n = re.sub(r"\b(\d+): (usize|bool|u8|u32|i64)", r"\1", n)
    return n.replace(": bool", "").strip()


STD = ("core", "alloc", "std")
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODROOTS = {"rhai": os.path.join(HERE, "vendor/rhai/src"), "proxy_rhai": os.path.join(HERE, "src")}
INHERENT = {}  # (type path, method) -> module of the impl block, from a legacy-mangled build


def load_legacy(path):
    funcs = parse(path)[0]
    for d in demangle_all([f for f, _ in funcs]):
        m = re.match(r"^([a-z_0-9:]+)::<impl ([A-Za-z_0-9:]+)(<.*>)?>::([a-z_0-9]+)", clean(d))
        if m:
            INHERENT[(m.group(2), m.group(4))] = m.group(1)


def def_path(n):
    """The path that defines a function: `<T as Trait>::f` -> T's path; `<T>::f` -> T's impl."""
    if n.startswith("<"):
        d = 0
        for i, c in enumerate(n):
            if c == "<":
                d += 1
            elif c == ">":
                d -= 1
                if d == 0:
                    inner, rest = n[1:i], n[i + 1:]
                    break
        else:
            inner, rest = n[1:], ""
        # split `T as Trait` at depth 0
        d, cut = 0, None
        for i, c in enumerate(inner):
            if c == "<":
                d += 1
            elif c == ">":
                d -= 1
            elif d == 0 and inner.startswith(" as ", i):
                cut = i
                break
        ty, tr = (inner[:cut], inner[cut + 4:]) if cut is not None else (inner, "")
        ty = re.sub(r"^(&|\*|mut |const |dyn )+", "", ty.strip())
        if ty.startswith("<"):
            return def_path(ty)
        tys = strip_generics(ty)
        if "::" in tys and not tys.startswith("["):
            if not tr:
                meth = strip_generics(rest).strip(":").split("::")[0]
                mod = INHERENT.get((tys, meth))
                if mod:
                    return mod + "::" + meth
            return tys + strip_generics(rest)
        trs = strip_generics(tr)
        return (trs if "::" in trs else "core::primitive") + strip_generics(rest)
    return strip_generics(n)


def group_of(name, depth, by="def"):
    n = clean(name)
    if by == "user":
        # the first path of our code (rhai or proxy_rhai) in the name: who instantiated it
        for m in re.finditer(r"\b(proxy_rhai|rhai)::[A-Za-z_0-9:]+", n):
            p = def_path(n) if m.start() <= 1 else m.group(0)
            if p.split("::")[0] in ("rhai", "proxy_rhai"):
                return shorten(p, depth)
            return shorten(m.group(0), depth)
    return shorten(def_path(n), depth)


def shorten(path, depth):
    segs = [s for s in path.split("::") if s]
    if not segs:
        return path[:40]
    if segs[0] in STD and len(segs) > 1:
        return "::".join(segs[:min(depth, 2)])
    root = MODROOTS.get(segs[0])
    if root:
        # the module path: as deep as the crate's source tree has modules, at most `depth`
        k = 1
        while k < len(segs) and k <= depth and (
                os.path.isdir(os.path.join(root, *segs[1:k + 1]))
                or os.path.isfile(os.path.join(root, *segs[1:k + 1]) + ".rs")):
            k += 1
        return "::".join(segs[:k])
    return "::".join(segs[:depth])


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wasm", help="a .wasm file with its name section")
    ap.add_argument("--top", type=int, default=30, help="groups and functions listed")
    ap.add_argument("--depth", type=int, default=2, help="path segments a group keeps")
    ap.add_argument("--grep", type=re.compile, help="only functions whose name matches")
    ap.add_argument("--by", choices=("def", "user"), default="def")
    ap.add_argument("--legacy", metavar="LEGACY.wasm",
                    help="a legacy-mangled build of the same code (with a v0-mangled WASM)")
    a = ap.parse_args()
    top, depth, grep, by, path = a.top, a.depth, a.grep, a.by, a.wasm
    if a.legacy:
        load_legacy(a.legacy)
    funcs, secs, data_bytes, total = parse(path)
    if "custom:name" not in secs:
        print(f"{path} has no name section: see --help for a build that keeps it",
              file=sys.stderr)
    dem = demangle_all([f for f, _ in funcs])
    code = sum(s for _, s in funcs)
    print(f"{path}: {total} bytes, {len(funcs)} functions, code {code}, data payload {data_bytes}")
    for k, v in sorted(secs.items(), key=lambda kv: -kv[1]):
        print(f"  section {k:24} {v:>9}")
    groups = defaultdict(lambda: [0, 0])
    for (raw, s), d in zip(funcs, dem):
        if grep and not grep.search(clean(d)):
            continue
        g = group_of(d, depth, by)
        groups[g][0] += s
        groups[g][1] += 1
    print(f"\nTop {top} groups (by {by}, depth {depth}):\n  {'bytes':>8} {'%code':>6} {'fns':>5}  group")
    for g, (s, c) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {s:>8} {100 * s / code:6.2f} {c:>5}  {g}")
    print(f"\nTop {top} functions:\n  {'bytes':>8}  function")
    items = sorted(zip(dem, (s for _, s in funcs)), key=lambda kv: -kv[1])
    if grep:
        items = [it for it in items if grep.search(clean(it[0]))]
    for d, s in items[:top]:
        d = clean(d)
        print(f"  {s:>8}  {d[:200]}")


if __name__ == "__main__":
    main()
