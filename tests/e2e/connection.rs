//! Who is calling: `downstream_tls()` and `downstream_address()` in real Envoy, over a TLS
//! listener with certificates the test makes (`openssl`) and `curl` as the client, and over
//! plain HTTP; the emulator, given the same connection, hands the script the same values.

use proxy_rhai::emulator::{Emulator, Request, Response};
use proxy_rhai::testing::spec;
use serde_json::{json, Value};

use crate::support::{
    assert_healthy_tls, assert_status, tls_request, Envoy, Reply, TestCerts, CLIENT_DNS_SAN,
    CLIENT_URI_SAN, SERVER_NAME,
};

/// Tells the upstream what the script saw, and logs whether every later phase sees the same.
const PROBE: &str = r#"
fn on_request_headers() {
    let tls = to_json(downstream_tls());
    set_context("tls", tls);
    add_request_header("x-tls", tls);
    add_request_header("x-addr", to_json(downstream_address()));
    add_request_header("x-mtls-raw", hex_encode(get_property_bytes("connection.mtls") ?? ""));
    http_get("callout", "/", [], 5000, |status, headers, body| same("callback"));
}
fn same(phase) {
    let now = to_json(downstream_tls());
    log_info(`tls-probe ${phase}: ${if now == get_context("tls") { "same" } else { now }}`);
}
fn on_request_body() { same("request body"); }
fn on_response_headers() { same("response headers"); }
fn on_response_body() { same("response body"); }
fn on_log() { same("log"); }
"#;

fn seen(reply: &Reply, header: &str) -> Value {
    assert_status(reply, 200);
    let echo = reply.echo();
    let text = echo
        .header(header)
        .unwrap_or_else(|| panic!("no {header} upstream: {echo:?}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{header}: {text:?}: {e}"))
}

/// The probe in the emulator, with Envoy's `callout` cluster (left unanswered: the callback
/// sees a timeout).
fn probe_emulator() -> Emulator {
    let emulator = Emulator::new(&json!({ "script": PROBE }).to_string()).expect("configures");
    emulator.add_cluster("callout");
    emulator
}

/// What the emulator gives the probe for a connection described as `run`'s `tls` field.
fn emulated(tls: Value) -> Value {
    let emulator = probe_emulator();
    let request = spec::request(&json!({"method": "POST", "path": "/", "body": "x", "tls": tls}))
        .expect("a request");
    let outcome = emulator.run(&request, &mut Response::ok("{}"));
    let forwarded = outcome.upstream.expect("forwarded");
    let text = proxy_rhai::emulator::header(&forwarded.headers, "x-tls").expect("x-tls");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn downstream_tls_reports_the_client_certificate_in_every_phase() {
    let certs = TestCerts::generate();
    let envoy = Envoy::builder(json!({ "script": PROBE }))
        .tls_listener(&certs)
        .start();

    let reply = tls_request(&envoy, &certs, true, "/mtls", Some("hello"));
    let expected = json!({
        "version": "TLSv1.3",
        "sni": SERVER_NAME,
        "peer_certificate_presented": true,
        "peer_subject": "CN=client,O=Example",
        "subject": "CN=proxy",
        // The certificate has a second DNS SAN: Envoy reports only the first.
        "uri_sans": [CLIENT_URI_SAN],
        "dns_sans": [CLIENT_DNS_SAN],
        "peer_certificate_sha256": certs.client_sha256(),
    });
    assert_eq!(seen(&reply, "x-tls"), expected);
    assert_eq!(reply.echo().header("x-mtls-raw"), Some("01"));
    // Over TLS Envoy tells the upstream the request came as https.
    assert_eq!(reply.echo().header("x-forwarded-proto"), Some("https"));
    for phase in [
        "callback",
        "request body",
        "response headers",
        "response body",
        "log",
    ] {
        envoy.wait_for_log(&format!("tls-probe {phase}: same"));
    }
    assert_eq!(emulated(expected.clone()), expected, "the emulator agrees");

    let reply = tls_request(&envoy, &certs, false, "/tls", None);
    let expected = json!({
        "version": "TLSv1.3",
        "sni": SERVER_NAME,
        "peer_certificate_presented": false,
        "peer_subject": null,
        "subject": "CN=proxy",
        "uri_sans": [],
        "dns_sans": [],
        "peer_certificate_sha256": null,
    });
    assert_eq!(seen(&reply, "x-tls"), expected);
    assert_eq!(reply.echo().header("x-mtls-raw"), Some("00"));
    let given = json!({"sni": SERVER_NAME, "subject": "CN=proxy"});
    assert_eq!(emulated(given), expected, "the emulator agrees");
    assert_healthy_tls(&envoy, &certs);
}

#[test]
fn plain_http_has_no_tls_and_the_address_follows_forwarded_for() {
    let envoy = Envoy::with_script(PROBE);
    let reply = envoy.request("POST", "/", &[], b"hello");
    assert_eq!(seen(&reply, "x-tls"), Value::Null);
    assert_eq!(reply.echo().header("x-mtls-raw"), Some("00"));
    let addr = seen(&reply, "x-addr");
    assert_eq!(addr["ip"], "127.0.0.1");
    let port = addr["port"].as_i64().expect("a port");
    assert!(port > 0, "{addr}");
    assert_eq!(addr["address"], format!("127.0.0.1:{port}"));
    assert_eq!(emulated(Value::Null), Value::Null, "the emulator agrees");

    // With the connection manager's defaults (`use_remote_address: false`) Envoy takes the
    // client's address from the last `x-forwarded-for` entry, which the client wrote.
    let xff = [("x-forwarded-for", "203.0.113.7, 198.51.100.2")];
    let reply = envoy.request("GET", "/", &xff, b"");
    let expected = json!({"address": "198.51.100.2:0", "ip": "198.51.100.2", "port": 0});
    assert_eq!(seen(&reply, "x-addr"), expected);
    let emulator = probe_emulator();
    let request = Request::get("/").header(xff[0].0, xff[0].1);
    let outcome = emulator.run(&request, &mut Response::ok("{}"));
    let text = proxy_rhai::emulator::header(&outcome.upstream.unwrap().headers, "x-addr").unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        expected,
        "the emulator agrees"
    );
    envoy.assert_healthy();
}

#[test]
fn mtls_identity_forwards_the_client_and_refuses_others() {
    let certs = TestCerts::generate();
    let script = std::fs::read_to_string("scripts/mtls_identity.rhai").unwrap();
    let config = json!({ "script": script, "config": {"allowed_ids": [CLIENT_URI_SAN]} });
    let envoy = Envoy::builder(config).tls_listener(&certs).start();

    let reply = tls_request(&envoy, &certs, true, "/orders", None);
    assert_status(&reply, 200);
    let echo = reply.echo();
    assert_eq!(echo.header("x-client-spiffe-id"), Some(CLIENT_URI_SAN));
    assert_eq!(echo.header("x-client-dns"), Some(CLIENT_DNS_SAN));
    assert_eq!(echo.header("x-client-subject"), Some("CN=client,O=Example"));
    let sha = certs.client_sha256();
    assert_eq!(echo.header("x-client-cert-sha256"), Some(sha.as_str()));

    let reply = tls_request(&envoy, &certs, false, "/orders", None);
    assert_status(&reply, 403);
    assert_eq!(reply.text(), "forbidden: client certificate required\n");
    assert_healthy_tls(&envoy, &certs);
}
