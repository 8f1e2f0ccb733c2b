//! proxy-rhai: a proxy-wasm HTTP filter whose logic is a Rhai script in its configuration.
//!
//! - [`config`]: the plugin configuration, parsed and checked up front.
//! - [`plugin`]: the compiled script and its engine, one per configuration.
//! - [`bindings`]: every function a script can call, written once for every host.
//! - [`stream`]: the phase driver, how a stream runs through the script.
//! - [`host`]: the host trait between the bindings and a proxy.
//! - `wasm_host` / `wasm`: the host and the proxy-wasm entry points of the wasm build.
//! - [`emulator`]: a host in memory that behaves like Envoy, for tests and the CLI.

pub mod bindings;
pub mod config;
pub mod emulator;
pub mod host;
pub mod phase;
pub mod plugin;
pub mod stream;

#[cfg(target_arch = "wasm32")]
mod wasm;
#[cfg(target_arch = "wasm32")]
mod wasm_host;
