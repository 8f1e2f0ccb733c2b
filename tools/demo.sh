#!/usr/bin/env bash
# The demo: builds the plugin, starts an echo upstream and real Envoy with scripts/hello.rhai,
# and sends requests that show the script at work (the Envoy counterpart of the Higress guide's
# docker-compose demo). Ports: 10000 (Envoy), 9901 (admin), 12345 (upstream).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build-wasm.sh
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

python3 tools/echo-upstream.py 12345 &
start_envoy() {
  python3 tools/envoy-config.py "$PWD/target/proxy_rhai.wasm" scripts/hello.rhai 10000 9901 12345 "$1" > "$work/envoy.json"
  envoy -c "$work/envoy.json" --concurrency 1 --disable-hot-restart -l warning --component-log-level wasm:info > "$work/envoy.log" 2>&1 &
  for _ in $(seq 100); do curl -sf localhost:9901/ready >/dev/null 2>&1 && return; sleep 0.1; done
  cat "$work/envoy.log"; exit 1
}

echo "== scripts/hello.rhai, config {\"mockEnable\": false}: the upstream sees the added 'hello: world' header"
start_envoy '{"mockEnable": false}'
echo "\$ curl http://127.0.0.1:10000/get"
curl -s http://127.0.0.1:10000/get
kill %2; wait %2 2>/dev/null || true

echo
echo "== same script, config {\"mockEnable\": true}: the plugin answers by itself"
start_envoy '{"mockEnable": true}'
echo "\$ curl -i http://127.0.0.1:10000/get"
curl -si http://127.0.0.1:10000/get
echo
