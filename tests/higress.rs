//! The Higress build's Redis functions, on the host `tests/higress/acceptance.py` runs it on:
//! Higress's own Envoy can't run here, so a wasmtime host (`tools/proxy_wasm_host.py`)
//! implements `proxy_redis_init`, `proxy_redis_call` and the reply callback as Higress's Envoy
//! does, over real redis-servers the script starts. Needs both artifacts of
//! `tools/build-wasm.sh`, `redis-server` and pip `wasmtime` (`tools/setup.sh` installs them).

use std::process::Command;

#[test]
fn higress_build_runs_redis_scripts_on_a_higress_host() {
    let out = Command::new("python3")
        .arg("tests/higress/acceptance.py")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/higress/acceptance.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all passed"), "{stdout}");
}
