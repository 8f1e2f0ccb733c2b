//! The Higress build's Redis functions, on the host `tests/higress/acceptance.py` runs it on:
//! Higress's own Envoy can't run here, so a wasmtime host (`tools/proxy_wasm_host.py`)
//! implements `proxy_redis_init`, `proxy_redis_call` and the reply callback as Higress's Envoy
//! does, over real redis-servers the script starts. Needs both artifacts of
//! `tools/build-wasm.sh`, `redis-server` and pip `wasmtime` (`tools/setup.sh` installs them).

#[path = "support/python_check.rs"]
mod python_check;

#[test]
fn higress_build_runs_redis_scripts_on_a_higress_host() {
    python_check::run("tests/higress/acceptance.py");
}
