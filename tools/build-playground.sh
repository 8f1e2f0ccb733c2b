#!/usr/bin/env bash
# Builds the browser playground into target/playground/: the page (playground/, npm), then the
# crate for the browser as target/playground/playground.wasm. `proxy-rhai playground` serves it.
#
# --wasm-only builds and copies the module alone (the page is left as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/playground

if [ "${1:-}" != "--wasm-only" ]; then
  if [ ! -f playground/package.json ]; then
    echo "build-playground: playground/package.json is missing: the page's sources are not here (--wasm-only builds the module alone)" >&2
    exit 1
  fi
  (cd playground && npm ci && npm run build)
fi

# The crate for the browser: the emulator, check, the API reference and the run, test and
# deploy output behind a JSON bridge (src/playground.rs), without the plugin's entry points.
# Its own profile (`browser`) keeps it apart from the plugin's release build.
cargo build --profile browser --target wasm32-wasip1 --lib --no-default-features --features playground
mkdir -p "$out"
# -Oz: the page downloads it; the playground's operations are not on a hot path.
wasm-opt -Oz --strip-debug --strip-producers \
  target/wasm32-wasip1/browser/proxy_rhai.wasm -o "$out/playground.wasm"
echo "built $out/playground.wasm: $(stat -c %s "$out/playground.wasm") bytes"
