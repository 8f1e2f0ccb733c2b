//! Who is calling: the downstream connection's TLS identity and the client's address, read
//! from Envoy's `connection.*` and `source.*` properties.

use rhai::{Array, Dynamic, Map};

use super::*;

/// One property's bytes as text, `None` when the proxy has none (or an empty one).
fn text<H: Host>(a: &Api<H>, f: &str, path: &[&str]) -> ScriptResult<Option<String>> {
    match a.host.get_property(path).or_else(|s| refused(f, s))? {
        Some(bytes) if !bytes.is_empty() => Ok(Some(lossy(bytes))),
        _ => Ok(None),
    }
}

fn unit_or(value: Option<String>) -> Dynamic {
    value.map_or(Dynamic::UNIT, Dynamic::from)
}

/// Envoy gives only a certificate's first SAN of each kind: an array of at most one.
fn sans(value: Option<String>) -> Dynamic {
    let array: Array = value.into_iter().map(Dynamic::from).collect();
    array.into()
}

/// `"127.0.0.1:40000"` → `("127.0.0.1", Some(40000))`; `"[::1]:80"` → `("::1", Some(80))`;
/// an address without a port (a pipe's path) stays whole.
fn split_address(address: &str) -> (&str, Option<i64>) {
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.is_empty() => match port.parse::<i64>() {
            Ok(port) if !ip.contains(':') || ip.starts_with('[') => {
                (ip.trim_start_matches('[').trim_end_matches(']'), Some(port))
            }
            _ => (address, None),
        },
        _ => (address, None),
    }
}

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    bind!(reg, "downstream_tls", ALL, "map, or () for plain HTTP",
    "The TLS of the client's connection to the proxy (Envoy's `connection.*` properties), or `()` when it is plain HTTP. The map: `version` (`\"TLSv1.3\"`), `sni` (the server name the client asked for; `()` unless the listener has the `tls_inspector` listener filter, which reads it), `peer_certificate_presented` (bool: the client sent a certificate), `peer_subject` (the client certificate's subject, e.g. `\"CN=client,O=Example\"`, or `()`), `subject` (the proxy's own certificate's subject), `uri_sans` and `dns_sans` (the client certificate's SANs: Envoy gives only the first of each kind, so each is an array of at most one), `peer_certificate_sha256` (lowercase hex of the client certificate's SHA-256, or `()`). A certificate the listener's validation context rejects ends the handshake, so a presented one was validated, unless the listener sets `trust_chain_verification: ACCEPT_UNTRUSTED` (the properties don't say which). The client certificate itself, as PEM: `get_property(\"connection.peer_certificate\")`.",
    r#"fn on_request_headers() {
    let tls = downstream_tls();
    if tls == () || !tls.peer_certificate_presented {
        return send_http_response(403, [], "client certificate required\n");
    }
    add_request_header("x-client-spiffe", tls.uri_sans.get(0) ?? "");
}"#,
    |a as f| {
        // Envoy has `tls_version` exactly when the connection is TLS (measured in 1.40).
        let Some(version) = text(a, f, &["connection", "tls_version"])? else {
            return Ok(Dynamic::UNIT);
        };
        let presented = a
            .host
            .get_property(&["connection", "mtls"])
            .or_else(|s| refused(f, s))?
            .is_some_and(|b| b.first().is_some_and(|&b| b != 0));
        let mut map = Map::new();
        map.insert("version".into(), version.into());
        map.insert("sni".into(), unit_or(text(a, f, &["connection", "requested_server_name"])?));
        map.insert("peer_certificate_presented".into(), presented.into());
        map.insert("peer_subject".into(), unit_or(text(a, f, &["connection", "subject_peer_certificate"])?));
        map.insert("subject".into(), unit_or(text(a, f, &["connection", "subject_local_certificate"])?));
        map.insert("uri_sans".into(), sans(text(a, f, &["connection", "uri_san_peer_certificate"])?));
        map.insert("dns_sans".into(), sans(text(a, f, &["connection", "dns_san_peer_certificate"])?));
        map.insert(
            "peer_certificate_sha256".into(),
            unit_or(text(a, f, &["connection", "sha256_peer_certificate_digest"])?),
        );
        Ok(Dynamic::from_map(map))
    });
    bind!(reg, "downstream_address", ALL, "map, or () when the proxy has none",
    "The client's address as Envoy decided it (property `source.address`): `#{ address: \"203.0.113.7:0\", ip: \"203.0.113.7\", port: 0 }`. That is the connection's peer unless Envoy took it from `x-forwarded-for`: with the connection manager's default `use_remote_address: false`, Envoy takes the last address of the request's `x-forwarded-for`, which the client itself may have written (port 0); with `use_remote_address: true` it is the peer of the connection, or with `xff_num_trusted_hops: N` the address N hops from the right of `x-forwarded-for` (the hops being proxies you trust). Set `use_remote_address: true` on an edge proxy before trusting it.",
    r#"fn on_request_headers() {
    let client = downstream_address();
    if client != () && client.ip.starts_with("10.") {
        add_request_header("x-internal", "true");
    }
}"#,
    |a as f| {
        let Some(address) = text(a, f, &["source", "address"])? else {
            return Ok(Dynamic::UNIT);
        };
        let (ip, port) = split_address(&address);
        let mut map = Map::new();
        map.insert("ip".into(), ip.to_string().into());
        map.insert("port".into(), port.map_or(Dynamic::UNIT, Dynamic::from));
        map.insert("address".into(), address.into());
        Ok(Dynamic::from_map(map))
    });
}

#[cfg(test)]
mod tests {
    use super::split_address;

    #[test]
    fn addresses_split_into_ip_and_port() {
        assert_eq!(split_address("127.0.0.1:40000"), ("127.0.0.1", Some(40000)));
        assert_eq!(split_address("203.0.113.7:0"), ("203.0.113.7", Some(0)));
        assert_eq!(split_address("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_address("/tmp/envoy.sock"), ("/tmp/envoy.sock", None));
        assert_eq!(split_address("::1"), ("::1", None));
    }
}
