#!/usr/bin/env bash
# Builds the plugin's two release artifacts, each optimized by wasm-opt:
# - target/proxy_rhai.wasm: the default build, for Envoy, Istio and Higress; it imports only
#   Envoy's proxy-wasm ABI, so it loads everywhere (its redis_* functions are script errors);
# - target/proxy_rhai_higress.wasm: the Higress build (cargo feature `higress`), which also
#   imports Higress's Redis functions; a proxy without them (upstream Envoy) refuses it.
# The Higress build goes first: the raw target/wasm32-wasip1/release/proxy_rhai.wasm left at
# the end is the default build's (what bench/wasm_profile.py measures).
set -euo pipefail
cd "$(dirname "$0")/.."
optimize() {
  # -ocimfs 2000: no inlining into functions already 2,000+ instructions long. Without it
  # wasm-opt folds every binding registration into one ~100 KB configure function, and V8's
  # TurboFan needs ~10 MiB more memory to compile it (measured in Envoy 1.40; the file size is
  # the same).
  wasm-opt -O3 -ocimfs 2000 --strip-debug --strip-producers \
    target/wasm32-wasip1/release/proxy_rhai.wasm -o "$1"
  echo "built $1: $(stat -c %s "$1") bytes"
}
cargo build --release --target wasm32-wasip1 --lib --features higress
optimize target/proxy_rhai_higress.wasm
cargo build --release --target wasm32-wasip1 --lib
optimize target/proxy_rhai.wasm
