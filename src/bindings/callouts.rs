//! Local responses, resuming, and callouts with their answers.

use std::borrow::Cow;
use std::time::Duration;

use rhai::{Dynamic, FnPtr};

use crate::stream::PendingCall;

use super::*;

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use Allowed::{Callback, In};

    // A text a function makes (a body, JSON) is a string: no longer than a string may be.
    let max_string = reg.engine.max_string_size();

    // Local responses and resuming.
    bind!(reg, "send_http_response", In(Phases::BEFORE_RESPONSE_BODY), "()",
        "Answers the client locally with `status` (200..=599), `headers` (pairs or map) and `body` (string, blob or ()); the request goes no further and later phases don't run. It doesn't stop the running function: `return` after it when nothing else should happen. Once per request: a second call, or a status out of range, is an error; so is a header HTTP does not allow (see `add_request_header`; no pseudo-header), or more than 1,024 headers or 1 MiB of them. Too late once the response headers went on to the client (while the response body streams, or in a callback answered after that): an error then.",
        r#"fn on_request_headers() {
    if get_request_header("x-api-key") != config().api_key {
        send_http_response(401, #{ "www-authenticate": "ApiKey" }, "missing or wrong API key");
    }
}"#,
        |a as f, status: i64, headers: Dynamic, body: Dynamic| a.send_local_response(f, status, &headers, &body));
    bind!(reg, "resume_http_request", Callback, "bool: whether the request will go on when this callback returns",
        "Lets a request paused for this callback's phase's callouts go on when the callback returns, without waiting for the other calls (their callbacks still run, and leave the stream alone). The plugin resumes by itself after the last callback; calling this is never needed, and never resumes twice. Does nothing and returns `false` once the request went on, or while another phase's callouts hold it (e.g. a chunk's callout, for a late callback of the header phase).",
        r#"fn on_request_headers() {
    http_get("flags", "/flags", [], 200, |status, headers, body| {
        set_context("flags", body);
        resume_http_request(); // don't wait for the slow audit call below
    });
    http_post("audit", "/log", [], get_request_header(":path"), 5000, |status, headers, body| {});
}"#,
        |a| Ok(a.resume(Side::Request)));
    bind!(
        reg,
        "resume_http_response",
        Callback,
        "bool: whether the response will go on when this callback returns",
        "Lets a response paused for this callback's phase's callouts go on when the callback returns (see `resume_http_request`).",
        r#"fn on_response_headers() {
    http_get("stats", "/hit", [], 100, |status, headers, body| {
        resume_http_response();
    });
}"#,
        |a| Ok(a.resume(Side::Response))
    );

    // Callouts.
    bind!(reg, "dispatch_http_call", ALL, "int: the call id",
    "Sends `body` (string, blob or ()) with `headers` (pairs or map, with `:method`, `:path` and `:authority`) to `cluster`, waiting at most `timeout_ms` (1..=600000). The phase pauses; `callback` runs as `|status, headers, body|` (or takes just `|status|` or `|status, headers|`: what it doesn't take is never converted) when the answer arrives — when none comes in time, Envoy's own 504 `upstream request timeout`, on time; when the target can't be reached, Envoy's own 503; status 0 with empty headers and body when the call fails with no response at all, in the phase that dispatched it, and the stream resumes after the last callback. A callback that takes a fourth parameter, `|status, headers, body, failure|`, is told which of these it got: `failure` is `\"timeout\"`, `\"connect_failure\"` (the target can't be reached), `\"reset\"` (the connection was reset, before or after the answer began), or `()` for a real answer, even a target's own 504 or 503 (the plugin recognises Envoy's own answers by their exact headers and text, and a timeout also by the call's own deadline: a 504 that comes more than 100 ms before it is the target's). A refused call (unknown cluster, missing pseudo-header) is an error the script can catch; so is a timeout out of range, a header HTTP does not allow (see `add_request_header`), `content-length` or `transfer-encoding` (the proxy frames the body itself), more than 1,024 headers or 1 MiB of them, and a call past `limits.max_callouts` (the request's callouts, its callbacks' included).",
    r#"fn on_request_headers() {
    let headers = [[":method", "POST"], [":path", "/token"], [":authority", "auth"], ["content-type", "application/json"]];
    dispatch_http_call("auth", headers, `{"user":"${get_request_header("x-user")}"}`, 1000, |status, headers, body| {
        if status != 200 {
            send_http_response(403, [], "forbidden");
            return;
        }
        add_request_header("authorization", "Bearer " + parse_json(body).token);
    });
}"#,
    |a as f, cluster: &str, headers: Dynamic, body: Dynamic, timeout_ms: i64, callback: FnPtr| {
        a.dispatch(f, Callout::new(cluster, header_pairs(f, &headers)?, timeout_ms, callback).body(f, &body)?)
    });
    bind!(reg, "http_get", ALL, "int: the call id",
    "GET `path` from `cluster` (`:authority` is the cluster name unless `headers` set it; for a Higress or Istio name, `outbound|PORT|SUBSET|HOST`, the HOST: see `service_cluster`), then `callback(status, headers, body)`. See `dispatch_http_call`.",
    r#"fn on_request_headers() {
    http_get("users", "/users/" + get_request_header("x-user"), #{ accept: "application/json" }, 300, |status, headers, body| {
        if status == 200 {
            add_request_header("x-user-plan", parse_json(body).plan);
        }
    });
}"#,
    |a as f, cluster: &str, path: &str, headers: Dynamic, timeout_ms: i64, callback: FnPtr| {
        a.dispatch(f, Callout::new(cluster, header_pairs(f, &headers)?, timeout_ms, callback).to("GET", path))
    });
    bind!(
        reg,
        "http_get",
        ALL,
        "int: the call id",
        "`http_get` with the default timeout (500 ms).",
        r#"fn on_request_headers() {
    http_get("flags", "/flags/checkout", [], |status, headers, body| {
        set_context("checkout_v2", status == 200 && body == "on");
    });
}"#,
        |a as f, cluster: &str, path: &str, headers: Dynamic, callback: FnPtr| {
            let call = Callout::new(cluster, header_pairs(f, &headers)?, DEFAULT_CALL_TIMEOUT_MS, callback);
            a.dispatch(f, call.to("GET", path))
        }
    );
    bind!(reg, "http_post", ALL, "int: the call id",
    "POST `body` to `path` on `cluster`, then `callback(status, headers, body)`. See `dispatch_http_call`.",
    r#"fn on_request_headers() {
    http_post("audit", "/events", #{ "content-type": "application/json" }, to_json(#{ path: get_request_header(":path") }), 1000, |status, headers, body| {
        if status != 202 { log_warn(`audit answered ${status}`); }
    });
}"#,
    |a as f, cluster: &str, path: &str, headers: Dynamic, body: Dynamic, timeout_ms: i64, callback: FnPtr| {
        let call = Callout::new(cluster, header_pairs(f, &headers)?, timeout_ms, callback);
        a.dispatch(f, call.to("POST", path).body(f, &body)?)
    });
    bind!(
        reg,
        "http_post",
        ALL,
        "int: the call id",
        "`http_post` with the default timeout (500 ms).",
        r#"fn on_request_body() {
    http_post("scanner", "/scan", [], get_request_body_bytes(), |status, headers, body| {
        if body == "infected" { send_http_response(422, [], "rejected by the scanner"); }
    });
}"#,
        |a as f, cluster: &str, path: &str, headers: Dynamic, body: Dynamic, callback: FnPtr| {
            let call = Callout::new(cluster, header_pairs(f, &headers)?, DEFAULT_CALL_TIMEOUT_MS, callback);
            a.dispatch(f, call.to("POST", path).body(f, &body)?)
        }
    );
    bind!(reg, "http_call", ALL, "int: the call id",
    "Any `method` (PUT, PATCH, DELETE, …) to `path` on `cluster`, then `callback(status, headers, body)`. See `dispatch_http_call`.",
    r#"fn on_request_headers() {
    http_call("DELETE", "sessions", "/sessions/" + get_request_header("x-session"), [], (), 500, |status, headers, body| {
        log_info(`session delete: ${status}`);
    });
}"#,
    |a as f, method: &str, cluster: &str, path: &str, headers: Dynamic, body: Dynamic, timeout_ms: i64, callback: FnPtr| {
        let call = Callout::new(cluster, header_pairs(f, &headers)?, timeout_ms, callback);
        a.dispatch(f, call.to(method, path).body(f, &body)?)
    });
    bind!(
        reg,
        "get_http_call_response_headers",
        Callback,
        "array of [name, value]",
        "Headers of the callout answer being handled (empty when it got none).",
        r#"fn on_request_headers() {
    http_get("auth", "/whoami", [], 500, |status, headers, body| {
        for h in get_http_call_response_headers() {
            if h[0] == "x-user-id" { add_request_header("x-user-id", h[1]); }
        }
    });
}"#,
        |a as f| a.get_headers(
            f,
            MapType::HttpCallResponseHeaders
        )
    );
    bind!(
        reg,
        "get_http_call_response_trailers",
        Callback,
        "array of [name, value]",
        "Trailers of the callout answer being handled.",
        r#"fn on_request_headers() {
    http_get("grpc-gw", "/check", [], 500, |status, headers, body| {
        log_debug(get_http_call_response_trailers());
    });
}"#,
        |a as f| a.get_headers(
            f,
            MapType::HttpCallResponseTrailers
        )
    );
    bind!(
        reg,
        "get_http_call_response_body",
        Callback,
        "string",
        "Body of the callout answer being handled, as a string (the same text the callback gets as `body`).",
        r#"fn on_request_headers() {
    http_get("auth", "/token", [], 500, |status, headers, body| {
        let token = parse_json(get_http_call_response_body()).token;
        add_request_header("authorization", `Bearer ${token}`);
    });
}"#,
        |a as f| text_within("get_http_call_response_body()", call_body(a, f)?, max_string)
    );
    bind!(
        reg,
        "get_http_call_response_body_bytes",
        Callback,
        "blob",
        "Body of the callout answer being handled, byte for byte.",
        r#"fn on_request_headers() {
    http_get("keys", "/key.bin", [], 500, |status, headers, body| {
        set_context("key_size", get_http_call_response_body_bytes().len());
    });
}"#,
        |a as f| call_body(a, f)
    );

    bind!(
        reg,
        "get_http_call_response_header",
        Callback,
        "string, or () when absent",
        "One header of the callout answer being handled (the first value; name case-insensitive).",
        r#"fn on_request_headers() {
    http_get("auth", "/token", [], 500, |status, headers, body| {
        let token = get_http_call_response_header("x-token");
        if token != () { add_request_header("authorization", token); }
    });
}"#,
        |a as f, name: &str| a.get_header(
            f,
            MapType::HttpCallResponseHeaders,
            name
        )
    );
    register_cluster_names(reg);
}

/// Cluster names as Higress (and Istio) name the clusters of their services, so scripts don't
/// spell them by hand: `outbound|PORT|SUBSET|HOST`, with HOST by registry, as Higress's Go SDK
/// makes them (`FQDNCluster`, `K8sCluster`, `DnsCluster`, `StaticIpCluster`, `NacosCluster`,
/// `ConsulCluster`).
fn register_cluster_names<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use Allowed::Anywhere;
    bind!(reg, "service_cluster", Anywhere, "string: the cluster name",
        "The cluster of the service `fqdn` on `port`: `outbound|PORT||FQDN` (Higress's `FQDNCluster`: a service by its full name, e.g. from a `ServiceEntry` or a registry). A callout to it has `:authority` FQDN unless its headers say otherwise.",
        r#"fn on_request_headers() {
    http_get(service_cluster("auth.example.com", 443), "/check", [], 300, |status| {
        if status != 200 { send_http_response(403, [], "denied"); }
    });
}"#,
        |_a as f, fqdn: &str, port: i64| cluster_name(f, port, "", &[fqdn])
    );
    bind!(reg, "k8s_cluster", Anywhere, "string: the cluster name",
        "The cluster of the Kubernetes service `service` in `namespace` (\"\" for `default`) on `port`: `outbound|PORT||SERVICE.NAMESPACE.svc.cluster.local` (Higress's `K8sCluster`). A callout to it has `:authority` `SERVICE.NAMESPACE.svc.cluster.local`.",
        r#"fn on_request_headers() {
    http_get(k8s_cluster("users", "prod", 8080), "/me", [], |status, headers, body| {
        set_context("user_status", status);
    });
}"#,
        |_a as f, service: &str, namespace: &str, port: i64| k8s_cluster(f, service, namespace, port, "")
    );
    bind!(reg, "k8s_cluster", Anywhere, "string: the cluster name",
        "`k8s_cluster` for the subset `version` of the service (an Istio `DestinationRule` subset): `outbound|PORT|VERSION|SERVICE.NAMESPACE.svc.cluster.local`.",
        r#"fn on_request_headers() {
    http_get(k8s_cluster("users", "prod", 8080, "v2"), "/me", [], |status| {});
}"#,
        |_a as f, service: &str, namespace: &str, port: i64, version: &str| {
            k8s_cluster(f, service, namespace, port, version)
        }
    );
    bind!(reg, "dns_cluster", Anywhere, "string: the cluster name",
        "The cluster of a DNS service of Higress's registry (an `McpBridge` entry of type `dns`) named `service`, on `port`: `outbound|PORT||SERVICE.dns` (Higress's `DnsCluster`). A callout to it has `:authority` SERVICE: give the domain in its headers when the target wants it.",
        r#"fn on_request_headers() {
    http_get(dns_cluster("idp", 443), "/keys", #{ ":authority": "idp.example.com" }, |status| {});
}"#,
        |_a as f, service: &str, port: i64| cluster_name(f, port, "", &[service, "dns"])
    );
    bind!(reg, "static_cluster", Anywhere, "string: the cluster name",
        "The cluster of a static-address service of Higress's registry (type `static`) named `service`, on `port`: `outbound|PORT||SERVICE.static` (Higress's `StaticIpCluster`). A callout to it has `:authority` SERVICE.",
        r#"fn on_request_headers() {
    http_get(static_cluster("legacy-auth", 80), "/check", [], |status| {});
}"#,
        |_a as f, service: &str, port: i64| cluster_name(f, port, "", &[service, "static"])
    );
    bind!(reg, "nacos_cluster", Anywhere, "string: the cluster name",
        "The cluster of the Nacos service `service` in `group` (\"\" for `DEFAULT-GROUP`; `_` becomes `-`, as Higress writes it) and the namespace `namespace_id`, on `port`: `outbound|PORT||SERVICE.GROUP.NAMESPACE_ID.nacos` (Higress's `NacosCluster`).",
        r#"fn on_request_headers() {
    http_get(nacos_cluster("orders", "", "public", 8080), "/recent", [], |status| {});
}"#,
        |_a as f, service: &str, group: &str, namespace_id: &str, port: i64| {
            let group = match group {
                "" => "DEFAULT-GROUP".to_string(),
                g => g.replace('_', "-"),
            };
            cluster_name(f, port, "", &[service, &group, namespace_id, "nacos"])
        }
    );
    bind!(reg, "consul_cluster", Anywhere, "string: the cluster name",
        "The cluster of the Consul service `service` in `datacenter`, on `port`: `outbound|PORT||SERVICE.DATACENTER.consul` (Higress's `ConsulCluster`).",
        r#"fn on_request_headers() {
    http_get(consul_cluster("billing", "dc1", 8500), "/quota", [], |status| {});
}"#,
        |_a as f, service: &str, datacenter: &str, port: i64| {
            cluster_name(f, port, "", &[service, datacenter, "consul"])
        }
    );
}

fn k8s_cluster(
    f: &str,
    service: &str,
    namespace: &str,
    port: i64,
    version: &str,
) -> ScriptResult<String> {
    let namespace = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    cluster_name(
        f,
        port,
        version,
        &[service, namespace, "svc", "cluster", "local"],
    )
}

/// `outbound|PORT|SUBSET|HOST`, HOST being `labels` joined by dots; an error for a port out of
/// range or a label that is empty or holds a `|` (it would change the name's fields).
fn cluster_name(f: &str, port: i64, subset: &str, labels: &[&str]) -> ScriptResult<String> {
    if !(1..=65535).contains(&port) {
        return err(format!("{f}(): port {port} is not in 1..=65535"));
    }
    if let Some(bad) = labels.iter().chain([&subset]).find(|l| l.contains('|')) {
        return err(format!(
            "{f}(): {bad:?} can't be part of a cluster name (it holds a `|`)"
        ));
    }
    if labels.iter().any(|l| l.is_empty()) {
        return err(format!("{f}(): a name is empty"));
    }
    Ok(format!("outbound|{port}|{subset}|{}", labels.join(".")))
}

/// The `:authority` of a convenience callout to `cluster`: the host of an
/// `outbound|PORT|SUBSET|HOST` name (without Higress's `.dns` or `.static` registry suffix), else
/// the cluster's name itself.
fn authority_of(cluster: &str) -> &str {
    match cluster.strip_prefix("outbound|") {
        Some(rest) => host_of(cluster, rest),
        None => cluster,
    }
}

/// [`authority_of`] for an `outbound|…` name (`rest` follows `outbound|`).
#[cold]
fn host_of<'a>(cluster: &'a str, rest: &'a str) -> &'a str {
    match rest.splitn(3, '|').nth(2) {
        Some(host) if !host.is_empty() => host
            .strip_suffix(".dns")
            .or_else(|| host.strip_suffix(".static"))
            .unwrap_or(host),
        _ => cluster,
    }
}

/// The callout answer's body, for `f`.
fn call_body<H: Host>(a: &Api<H>, f: &str) -> ScriptResult<Vec<u8>> {
    let size = a.frame.borrow().answer.map_or(0, |x| x.body_size);
    a.reserve(f, size)?;
    let body = a
        .host
        .get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .or_else(|s| refused(f, s))?;
    Ok(body.unwrap_or_default())
}

/// What a callout callback is given, in order; it takes as many as it names (`check` says
/// when it takes more).
pub(crate) const CALLBACK_PARAMETERS: &[&str] = &["status", "headers", "body", "failure"];

/// What a Redis callback is given.
pub(crate) const REDIS_CALLBACK_PARAMETERS: &[&str] = &["reply"];

/// Longest timeout a callout may ask for.
const MAX_CALL_TIMEOUT_MS: i64 = 600_000;
/// Timeout of `http_get`, `http_post`, … when the script gives none (as Higress's HttpClient).
const DEFAULT_CALL_TIMEOUT_MS: i64 = 500;

/// One outgoing call, as a callout function builds it from the script's arguments.
struct Callout<'a> {
    cluster: &'a str,
    /// `:method`, `:path` and `:authority` of a convenience function (`http_get`, …), sent
    /// unless the script's `headers` set them too; `dispatch_http_call` has none.
    pseudo: Option<[(&'a str, &'a str); 3]>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout_ms: i64,
    callback: FnPtr,
}

impl<'a> Callout<'a> {
    /// A call to `cluster` with the script's `headers` and no body.
    fn new(
        cluster: &'a str,
        headers: Vec<(String, Vec<u8>)>,
        timeout_ms: i64,
        callback: FnPtr,
    ) -> Self {
        Self {
            cluster,
            pseudo: None,
            headers,
            body: Vec::new(),
            timeout_ms,
            callback,
        }
    }

    /// The call as `method` to `path` (its `:authority` is the cluster's name).
    fn to(mut self, method: &'a str, path: &'a str) -> Self {
        self.pseudo = Some([
            (":method", method),
            (":path", path),
            (":authority", authority_of(self.cluster)),
        ]);
        self
    }

    /// The call with `body` (string, blob or ()).
    fn body(mut self, f: &str, body: &Dynamic) -> ScriptResult<Self> {
        self.body = bytes_of(f, body)?;
        Ok(self)
    }
}

impl<H: Host> Api<H> {
    /// Sends `call` for `f`, once it passes the checks (phase, timeout, `limits.max_callouts`,
    /// headers); its callback runs when the answer arrives.
    fn dispatch(&self, f: &str, call: Callout<'_>) -> ScriptResult<i64> {
        let phase = self.enter(f, Allowed::In(Phases::STREAMING))?;
        // Fields read in place: moving them out first costs ~35 wasm instructions a call.
        let (cluster, headers, timeout_ms) = (call.cluster, &call.headers, call.timeout_ms);
        if !(1..=MAX_CALL_TIMEOUT_MS).contains(&timeout_ms) {
            return err(format!(
                "{f}(): timeout_ms {timeout_ms} is not in 1..={MAX_CALL_TIMEOUT_MS}"
            ));
        }
        self.room_for_call(f)?;
        let pseudo: &[(&str, &str)] = call.pseudo.as_ref().map_or(&[], |p| p);
        let values: Vec<Cow<'_, str>> = headers
            .iter()
            .map(|(_, v)| String::from_utf8_lossy(v))
            .collect();
        let mut refs: Vec<(&str, &str)> = Vec::with_capacity(pseudo.len() + headers.len());
        refs.extend(
            pseudo
                .iter()
                .filter(|(k, _)| !headers.iter().any(|(n, _)| n == k)),
        );
        refs.extend(
            headers
                .iter()
                .zip(&values)
                .map(|((k, _), v)| (k.as_str(), v.as_ref())),
        );
        check_pair_list(
            f,
            Target::Callout,
            refs.iter().map(|(k, v)| (*k, v.as_bytes())),
        )?;
        // Read before the proxy starts the call's timer: the deadline is never late.
        let sent = self.host.current_time_nanos().unwrap_or(0);
        let id = self
            .host
            .dispatch_http_call(
                cluster,
                &refs,
                &call.body,
                Duration::from_millis(timeout_ms as u64),
            )
            .or_else(|s| {
                err(format!(
                    "{f}(): the proxy refused the call to cluster '{cluster}' ({s:?}): \
                     is the cluster defined, and are :method, :path and :authority set?"
                ))
            })?;
        self.awaits(PendingCall {
            id,
            phase,
            callback: call.callback,
            deadline_nanos: sent.saturating_add(timeout_ms as u64 * 1_000_000),
            redis: false,
            detached: false,
        });
        Ok(i64::from(id))
    }

    /// An error for `f` when the request made its `limits.max_callouts` calls already.
    pub(super) fn room_for_call(&self, f: &str) -> ScriptResult<()> {
        let max = self.limits.max_callouts;
        if self.frame.borrow().stream.callouts_made >= max {
            return err(format!(
                "{f}(): this request already made {max} callouts (limits.max_callouts)"
            ));
        }
        Ok(())
    }

    /// The request waits for `call` (a callout or a Redis call) to be answered.
    pub(super) fn awaits(&self, call: PendingCall) {
        let stream = &mut self.frame.borrow_mut().stream;
        stream.callouts_made += 1;
        stream.calls.push(call);
    }
}
