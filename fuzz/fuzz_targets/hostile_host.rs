#![no_main]
//! `cargo fuzz run hostile_host`: see `fuzz/src/lib.rs` (`proxy_rhai_fuzz::hostile_host`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy_rhai_fuzz::hostile_host(data));
