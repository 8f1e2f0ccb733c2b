//! What an Envoy under test runs with: [`EnvoyBuilder`]'s options, written as Envoy's
//! bootstrap (and, for a listener that can change, its LDS file).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// The plugin's wasm: `PROXY_RHAI_WASM` when set, else the release build of this crate.
pub fn wasm_path() -> PathBuf {
    let path = match std::env::var_os("PROXY_RHAI_WASM") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/wasm32-wasip1/release/proxy_rhai.wasm"),
    };
    assert!(
        path.is_file(),
        "the plugin is not built: {} is missing.\n\
         Run `cargo build --release --target wasm32-wasip1 --lib` first \
         (or point PROXY_RHAI_WASM at a build).",
        path.display()
    );
    path
}

/// Options of an Envoy under test; [`EnvoyBuilder::start`] runs it.
pub struct EnvoyBuilder {
    plugin_config: String,
    clusters: Vec<(String, u16)>,
    buffer_limit: Option<u32>,
    route_timeout: Option<Duration>,
    /// The connection manager's `request_timeout`: the whole request must get past the
    /// filters in this time.
    request_timeout: Option<Duration>,
    http2: bool,
    /// Envoy's `--concurrency`.
    pub(super) concurrency: u32,
    /// Named routes (name, path prefix, cluster), before the unnamed catch-all route.
    routes: Vec<(String, String, String)>,
    /// More clusters pointing at the route's upstream server.
    upstream_aliases: Vec<String>,
    /// Routes (name, `match`, cluster) before every other route.
    matched_routes: Vec<(String, Value, String)>,
    trailers: bool,
    websocket: bool,
    /// The wasm HTTP filter as text (JSON or YAML flow style), spliced into the bootstrap.
    filter_text: Option<String>,
    /// The listener comes from an LDS file, so [`Envoy::reconfigure`] can update it.
    dynamic_listener: bool,
    /// HTTP filters before the plugin's, and between it and the router.
    filters_before: Vec<Value>,
    filters_after: Vec<Value>,
    /// The listener terminates TLS with the certificates of this [`TestCerts`] directory.
    tls_dir: Option<PathBuf>,
    /// `metadata` of the catch-all route and of the `upstream` cluster.
    route_metadata: Option<Value>,
    upstream_metadata: Option<Value>,
    /// A file access log (`access.log` in the Envoy's folder) with this format, one line a
    /// request.
    access_log_format: Option<String>,
    /// The wasm `PluginConfig`'s `allow_on_headers_stop_iteration`, when set.
    stop_iteration: Option<bool>,
    /// The plugin's module, when not [`wasm_path`]'s.
    wasm: Option<PathBuf>,
}

impl EnvoyBuilder {
    /// An Envoy whose plugin configuration is this text, with the default options.
    pub(super) fn new(plugin_config: String) -> Self {
        EnvoyBuilder {
            plugin_config,
            clusters: Vec::new(),
            buffer_limit: None,
            route_timeout: None,
            request_timeout: None,
            http2: false,
            concurrency: 1,
            routes: Vec::new(),
            upstream_aliases: Vec::new(),
            matched_routes: Vec::new(),
            trailers: false,
            websocket: false,
            filter_text: None,
            dynamic_listener: false,
            filters_before: Vec::new(),
            filters_after: Vec::new(),
            tls_dir: None,
            route_metadata: None,
            upstream_metadata: None,
            access_log_format: None,
            stop_iteration: None,
            wasm: None,
        }
    }

    /// The plugin's module is this `.wasm` (another build than [`wasm_path`]'s).
    pub fn wasm(mut self, path: PathBuf) -> Self {
        self.wasm = Some(path);
        self
    }

    /// An HTTP filter (as Envoy's JSON) before the plugin's; several go in the order given. It
    /// sees requests before the plugin and responses after it (Envoy runs response filters in
    /// reverse order).
    pub fn filter_before(mut self, filter: Value) -> Self {
        self.filters_before.push(filter);
        self
    }

    /// The catch-all route's `metadata` (`{"filter_metadata": {…}}`).
    pub fn route_metadata(mut self, metadata: Value) -> Self {
        self.route_metadata = Some(metadata);
        self
    }

    /// The `upstream` cluster's `metadata` (`{"filter_metadata": {…}}`).
    pub fn upstream_metadata(mut self, metadata: Value) -> Self {
        self.upstream_metadata = Some(metadata);
        self
    }

    /// A file access log, one line a request in this format (Envoy's command operators, e.g.
    /// `%FILTER_STATE(wasm.tenant:PLAIN)%`; the newline is added); read it with
    /// [`super::Envoy::access_log`].
    pub fn access_log(mut self, format: &str) -> Self {
        self.access_log_format = Some(format!("{format}\n"));
        self
    }

    /// An extra cluster `name` pointing at 127.0.0.1:`port`.
    pub fn cluster(mut self, name: &str, port: u16) -> Self {
        self.clusters.push((name.to_string(), port));
        self
    }

    /// `per_connection_buffer_limit_bytes` of the listener and of every cluster.
    pub fn buffer_limit(mut self, bytes: u32) -> Self {
        self.buffer_limit = Some(bytes);
        self
    }

    /// The route's timeout (Envoy's default is 15 s).
    pub fn route_timeout(mut self, timeout: Duration) -> Self {
        self.route_timeout = Some(timeout);
        self
    }

    /// The connection manager's `request_timeout` (Envoy's default: none).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Lets the listener take HTTP/2 (prior knowledge) as well as HTTP/1.1.
    pub fn allow_http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// Envoy's worker threads (`--concurrency`, 1 by default); each has its own plugin VM.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// A route named `name` (the `xds.route_name` property) for paths starting with `prefix`,
    /// to `cluster`; named routes come before the unnamed catch-all route, in this order.
    pub fn route(mut self, name: &str, prefix: &str, cluster: &str) -> Self {
        self.routes
            .push((name.to_string(), prefix.to_string(), cluster.to_string()));
        self
    }

    /// A route `name` to `cluster` for the requests `matcher` (a `RouteMatch`, e.g. with
    /// `headers` or `filter_state`) takes, before every other route.
    pub fn matched_route(mut self, name: &str, matcher: Value, cluster: &str) -> Self {
        self.matched_routes
            .push((name.to_string(), matcher, cluster.to_string()));
        self
    }

    /// A cluster `name` pointing at the route's upstream server (as `upstream` does).
    pub fn upstream_alias(mut self, name: &str) -> Self {
        self.upstream_aliases.push(name.to_string());
        self
    }

    /// Sets Envoy's `allow_on_headers_stop_iteration` in the wasm `PluginConfig` (the plugin
    /// configuration's key of that name is the test's to set).
    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.stop_iteration = Some(allow);
        self
    }

    /// Lets websocket upgrades through the connection manager (`upgrade_configs`).
    pub fn allow_websocket(mut self) -> Self {
        self.websocket = true;
        self
    }

    /// HTTP/1.1 trailers, on the listener and on every cluster (`enable_trailers`).
    pub fn enable_trailers(mut self) -> Self {
        self.trailers = true;
        self
    }

    /// Uses this text, an HTTP filter as JSON or YAML in flow style (e.g. what `proxy-rhai
    /// deploy envoy` prints), as the plugin's filter instead of the harness's own; the
    /// bootstrap is then written as YAML with the text spliced in as it is.
    pub fn http_filter_text(mut self, text: &str) -> Self {
        self.filter_text = Some(text.to_string());
        self
    }

    /// An HTTP filter between the plugin's and the router: it sees responses before the plugin.
    pub fn filter_after(mut self, filter: Value) -> Self {
        self.filters_after.push(filter);
        self
    }

    /// The listener speaks TLS only, with `certs`' server certificate, and asks clients for a
    /// certificate signed by its CA without requiring one (`require_client_certificate:
    /// false`); the `tls_inspector` listener filter reads the client's SNI.
    pub fn tls_listener(mut self, certs: &super::TestCerts) -> Self {
        self.tls_dir = Some(certs.dir.clone());
        self
    }

    /// Serves the listener from a file (LDS) instead of the bootstrap, so that the plugin's
    /// configuration can be changed while Envoy runs ([`Envoy::reconfigure`]).
    pub fn dynamic_listener(mut self) -> Self {
        self.dynamic_listener = true;
        self
    }

    /// Writes the bootstrap into `dir` for an Envoy whose `upstream` and `callout` clusters
    /// point at these ports; returns its path, and with [`Self::dynamic_listener`] the LDS
    /// file and the listener it holds.
    pub(super) fn write_config(
        &self,
        dir: &Path,
        upstream_port: u16,
        callout_port: u16,
    ) -> (PathBuf, Option<(PathBuf, Value)>) {
        let mut config = self.bootstrap(upstream_port, callout_port);
        if let Some(format) = &self.access_log_format {
            let hcm = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]
                ["filters"][0]["typed_config"];
            hcm["access_log"] = json!([{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": dir.join(ACCESS_LOG),
                    "log_format": {"text_format_source": {"inline_string": format}}
                }
            }]);
        }
        let lds = self.dynamic_listener.then(|| {
            let mut listener = config["static_resources"]["listeners"][0].take();
            listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            let path = dir.join("lds.json");
            write_atomically(&path, &json!({"resources": [listener]}));
            config["static_resources"]["listeners"] = json!([]);
            config["node"] = json!({"id": "proxy-rhai-test", "cluster": "test"});
            config["dynamic_resources"] = json!({"lds_config": {
                "path_config_source": {"path": path}, "resource_api_version": "V3"}});
            (path, listener)
        });
        let mut text = serde_json::to_string_pretty(&config).unwrap();
        let config_path = match &self.filter_text {
            // JSON is YAML: Envoy reads the whole file, spliced text included, as YAML.
            Some(filter) => {
                // Pasted where the placeholder stands, each line indented as that line is.
                let placeholder = format!("{FILTER_PLACEHOLDER:?}");
                let at = text.find(&placeholder).expect("the placeholder");
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let indent = " ".repeat(at - line_start);
                let pasted = filter.trim_end().replace('\n', &format!("\n{indent}"));
                text = text.replace(&placeholder, &pasted);
                dir.join("envoy.yaml")
            }
            None => dir.join("envoy.json"),
        };
        fs::write(&config_path, text).unwrap();
        (config_path, lds)
    }

    fn cluster_json(&self, name: &str, port: u16) -> Value {
        let mut cluster = json!({
            "name": name,
            "connect_timeout": "2s",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                }}}]}]
            }
        });
        if let Some(limit) = self.buffer_limit {
            cluster["per_connection_buffer_limit_bytes"] = json!(limit);
        }
        if self.trailers {
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}}
                }
            });
        }
        cluster
    }

    /// The bootstrap, as JSON (Envoy reads a `.json` bootstrap; no YAML escaping to get wrong).
    fn bootstrap(&self, upstream_port: u16, callout_port: u16) -> Value {
        let mut route = json!({"cluster": "upstream"});
        if let Some(t) = self.route_timeout {
            route["timeout"] = json!(format!("{:.3}s", t.as_secs_f64()));
        }
        let mut wasm = if self.filter_text.is_some() {
            json!(FILTER_PLACEHOLDER)
        } else {
            json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "proxy-rhai",
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": self.wasm.clone().unwrap_or_else(wasm_path)}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.plugin_config
                    }
                }
            }
            })
        };
        if let (Some(allow), Some(config)) = (
            self.stop_iteration,
            wasm.pointer_mut("/typed_config/config"),
        ) {
            config["allow_on_headers_stop_iteration"] = json!(allow);
        }
        let mut routes: Vec<Value> = self
            .routes
            .iter()
            .map(|(name, prefix, cluster)| {
                let mut target = route.clone();
                target["cluster"] = json!(cluster);
                json!({"name": name, "match": {"prefix": prefix}, "route": target})
            })
            .collect();
        let mut catch_all = json!({"match": {"prefix": "/"}, "route": route});
        if let Some(metadata) = &self.route_metadata {
            catch_all["metadata"] = metadata.clone();
        }
        routes.push(catch_all);
        for (i, (name, matcher, cluster)) in self.matched_routes.iter().enumerate() {
            let mut target = route.clone();
            target["cluster"] = json!(cluster);
            routes.insert(i, json!({"name": name, "match": matcher, "route": target}));
        }
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "codec_type": if self.http2 { "AUTO" } else { "HTTP1" },
            "route_config": {
                "name": "local",
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": routes
                }]
            },
            "http_filters": self.filters_before.iter().cloned()
                .chain([wasm])
                .chain(self.filters_after.iter().cloned())
                .chain([json!({
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                })])
                .collect::<Vec<_>>()
        });
        if self.trailers {
            hcm["http_protocol_options"] = json!({"enable_trailers": true});
        }
        if let Some(t) = self.request_timeout {
            hcm["request_timeout"] = json!(format!("{:.3}s", t.as_secs_f64()));
        }
        if self.websocket {
            hcm["upgrade_configs"] = json!([{"upgrade_type": "websocket"}]);
        }
        let mut listener = json!({
            "name": "main",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm
            }]}]
        });
        if let Some(limit) = self.buffer_limit {
            listener["per_connection_buffer_limit_bytes"] = json!(limit);
        }
        if let Some(dir) = &self.tls_dir {
            let file = |name: &str| json!({"filename": dir.join(name)});
            listener["listener_filters"] = json!([{
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
            }]);
            listener["filter_chains"][0]["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": false,
                    "common_tls_context": {
                        "tls_certificates": [{
                            "certificate_chain": file("server.crt"),
                            "private_key": file("server.key")
                        }],
                        "validation_context": {"trusted_ca": file("ca.crt")}
                    }
                }
            });
        }
        let mut upstream = self.cluster_json("upstream", upstream_port);
        if let Some(metadata) = &self.upstream_metadata {
            upstream["metadata"] = metadata.clone();
        }
        let mut clusters = vec![upstream, self.cluster_json("callout", callout_port)];
        clusters.extend(self.clusters.iter().map(|(n, p)| self.cluster_json(n, *p)));
        clusters.extend(
            self.upstream_aliases
                .iter()
                .map(|n| self.cluster_json(n, upstream_port)),
        );
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": [listener], "clusters": clusters}
        })
    }
}

/// The access log's file, in the Envoy's folder.
pub(super) const ACCESS_LOG: &str = "access.log";

/// Stands for the plugin's filter in a bootstrap given [`EnvoyBuilder::http_filter_text`].
const FILTER_PLACEHOLDER: &str = "__PROXY_RHAI_FILTER__";

/// Writes `value` to `path` by renaming a complete file into place (Envoy watches the move).
pub(super) fn write_atomically(path: &Path, value: &Value) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Puts `plugin_config` (as JSON text) into the plugin's filter of `listener`, a listener of
/// [`EnvoyBuilder::bootstrap`].
pub(super) fn set_plugin_config(listener: &mut Value, plugin_config: &Value) {
    let filters = &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    let Some(filter) = filters.as_array_mut().and_then(|f| {
        f.iter_mut()
            .find(|f| f["name"] == "envoy.filters.http.wasm")
    }) else {
        panic!("the listener has no wasm filter")
    };
    filter["typed_config"]["config"]["configuration"]["value"] = json!(plugin_config.to_string());
}
