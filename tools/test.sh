#!/usr/bin/env bash
# Runs every check and test: formatting, clippy (native, wasm, wasm with the Higress build's
# feature, and the browser playground's build), the unit and script tests (the Redis ones
# against a redis-server they start), the end-to-end tests in real Envoy against the release
# artifacts, and the browser playground in Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
# vendor/rhai is rhai 1.27.0 plus vendor/rhai-patches, byte for byte (well under a second).
tools/rhai-patches.sh check
tools/setup.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo clippy --target wasm32-wasip1 --lib -- -D warnings
cargo clippy --target wasm32-wasip1 --lib --features higress -- -D warnings
# The browser playground's build of the crate (tools/build-playground.sh).
cargo clippy --target wasm32-wasip1 --lib --no-default-features --features playground -- -D warnings
tools/build-wasm.sh
PROXY_RHAI_WASM="$PWD/target/proxy_rhai.wasm" \
  PROXY_RHAI_HIGRESS_WASM="$PWD/target/proxy_rhai_higress.wasm" cargo test
tools/build-playground.sh
python3 playground/tests/test_page.py
