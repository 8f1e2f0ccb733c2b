#![no_main]
//! `cargo fuzz run config`: see `fuzz/src/lib.rs` (`proxy_rhai_fuzz::config`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy_rhai_fuzz::config(data));
