#![no_main]
//! `cargo fuzz run host_events`: see `fuzz/src/lib.rs` (`proxy_rhai_fuzz::host_events`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy_rhai_fuzz::host_events(data));
