//! End-to-end tests: the plugin built for wasm, in a real Envoy (V8), in front of the harness's
//! echo upstream (`tests/support/`). One test binary, one module per area; a new area is a file
//! in this directory and one `mod` line below.
//!
//! Build the plugin first (`tools/build-wasm.sh`, then
//! `PROXY_RHAI_WASM=$PWD/target/proxy_rhai.wasm`, or `cargo build --release --target
//! wasm32-wasip1 --lib`), then `cargo test --test e2e` (one area: `cargo test --test e2e
//! callouts::`). Each test starts its own Envoy (V8 compiles the plugin in 1–3 s), so one
//! script per test covers several rows, often chosen by an `x-op` request header. Every test
//! that got an Envoy running ends with `assert_healthy()`: the VM never failed.
//!
//! The tests run in parallel, as many at once as the machine has cores (libtest's default),
//! as they did when each area was a binary of its own: one binary adds no concurrency. Every
//! Envoy, upstream and client uses 127.0.0.1 port 0, so they never collide.

#[path = "../support/mod.rs"]
mod support;

mod agreement;
mod callouts;
mod composition;
mod compression;
mod connection;
mod faults;
mod gateway;
mod hardening_headers;
mod hardening_limits;
mod held_headers;
mod isolation;
mod memory;
mod plugin;
mod redis;
mod reload;
mod routing;
mod streaming;
