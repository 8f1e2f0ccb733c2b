#![no_main]
//! `cargo fuzz run bytes`: see `fuzz/src/lib.rs` (`proxy_rhai_fuzz::bytes`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy_rhai_fuzz::bytes(data));
