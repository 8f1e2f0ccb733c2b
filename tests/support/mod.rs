//! End-to-end harness: the plugin in a real Envoy, an echo upstream, a small HTTP/1.1 client.
//!
//! std and serde_json only. Everything listens on 127.0.0.1 port 0 (the OS chooses), so test
//! threads and parallel runs never collide; every wait is bounded.
//!
//! - [`bootstrap`]: [`wasm_path`], the plugin build (`PROXY_RHAI_WASM` overrides), and
//!   [`EnvoyBuilder`], an Envoy's options: the plugin as its HTTP filter, an `upstream`
//!   cluster (the route's target) and a `callout` cluster (a second echo server); options add
//!   clusters, named routes (for `xds.route_name`), more workers (`--concurrency`), HTTP/1.1
//!   trailers, HTTP filters before or after the plugin's (Envoy's own: `jwt_authn`,
//!   `ext_authz`, a decompressor, …), route and cluster metadata, a file access log, a TLS
//!   listener, or take the filter as text (e.g. what `proxy-rhai deploy envoy` prints, then
//!   read by Envoy as YAML), or load another build of the plugin (`wasm`).
//! - [`envoy`]: [`Envoy`], that Envoy running: start, stop, log, stats, memory, health.
//! - [`http`]: the client's requests to it, and [`Reply`], what the client got.
//! - [`upstream`]: [`Upstream`], an HTTP/1.1 echo server with a few behaviours chosen by path,
//!   and [`Echo`], what it saw.
//! - [`messages`]: numbers read out of error messages.
//! - [`tls`]: [`TestCerts`], a CA and server and client certificates made with `openssl`, for
//!   a TLS listener ([`EnvoyBuilder::tls_listener`]), and [`tls_request`], `curl` to it.

mod bootstrap;
mod envoy;
mod http;
mod messages;
mod tls;
mod upstream;
mod wire;

pub use bootstrap::{wasm_path, EnvoyBuilder};
pub use envoy::{vm_failures, Envoy};
pub use http::{assert_status, set_linger_zero, Reply};
pub use messages::number_before;
pub use tls::{
    assert_healthy_tls, tls_request, TestCerts, CLIENT_DNS_SAN, CLIENT_URI_SAN, SERVER_NAME,
};
pub use upstream::{pattern, Upstream, GZIP_JSON};
