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
//! - `wasm_host` / `wasm`: the host and the proxy-wasm entry points of the plugin (a wasm32
//!   build with the default feature `plugin`).
//! - [`emulator`]: a host in memory that behaves like Envoy, for tests and the CLI.
//!
//! For script authors, in every build but the plugin's (native, and the browser playground's
//! wasm32 build with the feature `playground`); the `proxy-rhai` command and the playground
//! use them:
//! - [`testing`]: tests written in Rhai (`*.test.rhai`) and their runner; `testing::case`
//!   writes a test case for a run.
//! - [`check`]: a script checked as the plugin would load it, with warnings.
//! - [`docs`]: `api-docs/`, the script API reference, generated from the bindings.
//! - [`run`]: requests run through a configured plugin, as `proxy-rhai run` shows them (its
//!   inputs, and its report as text or JSON).
//! - [`deploy`]: the configuration documents that deploy a script (Envoy's HTTP filter).
//! - [`playground`]: the browser playground's operations, JSON in and out, and the wasm
//!   exports that hand them to JavaScript.

mod batch;
pub mod bindings;
#[cfg(tools)]
pub mod check;
pub mod compiled;
pub mod config;
#[cfg(tools)]
pub mod deploy;
#[cfg(tools)]
pub mod docs;
pub mod emulator;
pub mod header_check;
pub mod header_map;
pub mod host;
pub mod phase;
#[cfg(tools)]
pub mod playground;
pub mod plugin;
mod proto;
mod proxy_types;
pub mod redact;
mod resp;
#[cfg(tools)]
pub mod run;
pub mod sandbox;
pub mod stream;
#[cfg(tools)]
pub mod testing;

#[cfg(all(target_arch = "wasm32", feature = "plugin"))]
mod memory;
#[cfg(all(target_arch = "wasm32", feature = "plugin"))]
mod wasm;
#[cfg(all(target_arch = "wasm32", feature = "plugin"))]
mod wasm_host;
