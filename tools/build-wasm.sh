#!/usr/bin/env bash
# Builds the plugin: target/wasm32-wasip1/release/proxy_rhai.wasm, then the release artifact
# optimized by wasm-opt: target/proxy_rhai.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-wasip1 --lib
# -ocimfs 2000: no inlining into functions already 2,000+ instructions long. Without it wasm-opt
# folds every binding registration into one ~100 KB configure function, and V8's TurboFan needs
# ~10 MiB more memory to compile it (measured in Envoy 1.40; the file size is the same).
wasm-opt -O3 -ocimfs 2000 --strip-debug --strip-producers \
  target/wasm32-wasip1/release/proxy_rhai.wasm -o target/proxy_rhai.wasm
echo "built target/proxy_rhai.wasm: $(stat -c %s target/proxy_rhai.wasm) bytes"
