//! `cfg(tools)`: the script authoring tools (`check`, the API reference, `testing`, run
//! reports, deploy output, the playground's bridge) are in every build but the plugin's: native
//! builds, and the wasm build for the browser (`--features playground`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tools)");
    println!("cargo::rerun-if-changed=build.rs");
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "wasm32");
    if !wasm || std::env::var_os("CARGO_FEATURE_PLAYGROUND").is_some() {
        println!("cargo::rustc-cfg=tools");
    }
}
