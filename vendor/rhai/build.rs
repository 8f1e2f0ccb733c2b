//! proxy-rhai patch 10: only the part of upstream's build script that sets `atomic_ops_count` (the
//! crate as published has no build script, so the cfg was never set). Without it the
//! operations a native function runs through its context (`a.map(|x| ...)`, the `==` of each
//! item in `a.contains(x)`) are counted in a copy of the count that is then dropped: a loop of
//! `map` calls ran without end under any `max_operations`.
use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(atomic_ops_count)");
    // The count is an `AtomicU64`, where the target has 64-bit atomics (wasm32 and x86_64 do).
    let has_atomic64 = env::var("CARGO_CFG_TARGET_HAS_ATOMIC")
        .map_or(false, |v| v.split(',').any(|w| w == "64"));
    if has_atomic64 {
        println!("cargo:rustc-cfg=atomic_ops_count");
    }
}
