//! The plugin's own table of its proxy-wasm contexts (src/wasm.rs), on the wasmtime host
//! `tests/contexts/unknown_ids.py` runs the release `.wasm` on: callbacks for contexts and
//! callout tokens the plugin does not know are ignored, never a trap. Needs
//! `target/proxy_rhai.wasm` (or `PROXY_RHAI_WASM`) from `tools/build-wasm.sh`, and pip `wasmtime`
//! (`tools/setup.sh` installs it).

#[path = "support/python_check.rs"]
mod python_check;

#[test]
fn callbacks_for_unknown_contexts_are_ignored() {
    python_check::run("tests/contexts/unknown_ids.py");
}
