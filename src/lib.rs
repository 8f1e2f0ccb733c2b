//! proxy-rhai: a proxy-wasm HTTP filter whose logic is a Rhai script in its configuration.
//!
//! - [`config`]: the plugin configuration, parsed and checked up front.
//! - [`plugin`]: the compiled script and its engine, one per configuration.
//! - [`bindings`]: every function a script can call, written once for every host.
//! - [`stream`]: the phase driver, how a stream runs through the script.
//! - [`redact`]: the configuration's secrets, kept out of the lines the plugin logs.
//! - [`host`]: the host trait between the bindings and a proxy.
//! - [`header_map`]: Envoy's header map rules, and a call's header operations batched.
//! - `proto`: the protobuf messages exchanged with Envoy (metadata, filter state), by hand.
//! - [`header_check`]: what a script may write into a header map (names, values, sizes).
//! - `wasm_host` / `wasm`: the host and the proxy-wasm entry points of the wasm build.
//! - [`emulator`]: a host in memory that behaves like Envoy, for tests and the CLI.
//!
//! Native only, for script authors (the `proxy-rhai` command uses them):
//! - [`testing`]: tests written in Rhai (`*.test.rhai`) and their runner.
//! - [`check`]: a script checked as the plugin would load it, with warnings.
//! - [`docs`]: `api-docs/`, the script API reference, generated from the bindings.

mod batch;
pub mod bindings;
#[cfg(not(target_arch = "wasm32"))]
pub mod check;
pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod docs;
pub mod emulator;
pub mod header_check;
pub mod header_map;
pub mod host;
pub mod phase;
pub mod plugin;
mod proto;
pub mod redact;
mod resp;
pub mod sandbox;
pub mod stream;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
mod memory;
#[cfg(target_arch = "wasm32")]
mod wasm;
#[cfg(target_arch = "wasm32")]
mod wasm_host;
