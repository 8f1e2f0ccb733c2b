//! End-to-end harness: the plugin in a real Envoy, an echo upstream, a small HTTP/1.1 client.
//!
//! std and serde_json only. Everything listens on 127.0.0.1 port 0 (the OS chooses), so test
//! threads and parallel runs never collide; every wait is bounded.
//!
//! - [`bootstrap`]: [`wasm_path`], the plugin build (`PROXY_RHAI_WASM` overrides), and
//!   [`EnvoyBuilder`], an Envoy's options: the plugin as its HTTP filter, an `upstream`
//!   cluster (the route's target) and a `callout` cluster (a second echo server); options add
//!   clusters, named routes (for `xds.route_name`), more workers (`--concurrency`), HTTP/1.1
//!   trailers, Envoy's own filters before the plugin's (`jwt_authn`, `ext_authz`, …), route
//!   and cluster metadata, a file access log, or take the filter as text (e.g. what
//!   `proxy-rhai deploy envoy` prints, then read by Envoy as YAML).
//! - [`envoy`]: [`Envoy`], that Envoy running: start, stop, log, stats, memory, health.
//! - [`http`]: the client's requests to it, and [`Reply`], what the client got.
//! - [`upstream`]: [`Upstream`], an HTTP/1.1 echo server with a few behaviours chosen by path,
//!   and [`Echo`], what it saw.
//! - [`messages`]: numbers read out of error messages.

mod bootstrap;
mod envoy;
mod http;
mod messages;
mod upstream;
mod wire;

pub use bootstrap::{wasm_path, EnvoyBuilder};
pub use envoy::{vm_failures, Envoy};
pub use http::{assert_status, set_linger_zero, Reply};
pub use messages::number_before;
pub use upstream::{pattern, Upstream};
