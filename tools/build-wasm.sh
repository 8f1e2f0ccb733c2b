#!/usr/bin/env bash
# Builds the plugin: target/wasm32-wasip1/release/proxy_rhai.wasm, then the release artifact
# optimized by wasm-opt: target/proxy_rhai.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-wasip1 --lib
wasm-opt -O3 --strip-debug --strip-producers \
  target/wasm32-wasip1/release/proxy_rhai.wasm -o target/proxy_rhai.wasm
echo "built target/proxy_rhai.wasm: $(stat -c %s target/proxy_rhai.wasm) bytes"
