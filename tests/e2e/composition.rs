//! The plugin with Envoy's own filters around it: what filters before it decided (dynamic
//! metadata from `set_metadata`, `jwt_authn` with a key pair and tokens made here with
//! openssl, `ext_authz` against a small auth service of the test), the route's and the
//! cluster's metadata, and what the script tells the access log (filter state). Each case
//! also runs in the emulator, given what Envoy gave, and must end the same.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proxy_rhai::emulator::{Emulator, Metadata, Outcome, Request, Response};
use serde_json::{json, Value};

use crate::support::{assert_status, Envoy};

fn metadata(value: Value) -> Metadata {
    serde_json::from_value(value).unwrap()
}

fn emulate(script: &str, config: Value, request: Request) -> Outcome {
    let p = Emulator::with_script(script, config).unwrap();
    p.run(&request, &mut Response::ok(""))
}

/// A filter state value as the access log shows it (`-` when absent).
fn shown(outcome: &Outcome, key: &str) -> String {
    outcome
        .filter_state
        .iter()
        .find(|(k, _)| k == key)
        .map_or("-".into(), |(_, v)| String::from_utf8_lossy(v).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Metadata: every type, every phase
// ---------------------------------------------------------------------------------------------

const READ_METADATA: &str = r#"
fn all() {
    to_json([get_metadata("acme"), get_route_metadata("acme"), get_cluster_metadata("acme"),
             get_metadata("acme", "i"), get_metadata("none"), get_route_metadata("acme", "none")])
}
fn raw(path) {
    let bytes = get_property_bytes(path);
    if bytes == () { "absent" } else { `${bytes.len()} bytes` }
}
fn on_request_headers() {
    add_request_header("x-meta", all());
    add_request_header("x-int", type_of(get_metadata("acme", "big")));
    add_request_header("x-raw", `${raw("xds.route_metadata")}, ${raw("xds.cluster_metadata")}`);
}
fn on_response_headers() { add_response_header("x-meta", all()); }
fn on_log() { log_warn(`on_log metadata: ${all()}`); }
"#;

#[test]
fn metadata_of_the_stream_route_and_cluster_decodes_alike_in_envoy_and_the_emulator() {
    let acme = json!({
        "s": "x", "i": 7, "f": 1.5, "b": true, "z": null, "big": 1767229200,
        "l": [1, "two", false, [], {}], "m": {"k": "v", "n": {"deep": -2.25}}
    });
    let route = json!({"tier": "gold", "n": 3});
    let cluster = json!({"zone": "eu"});
    let envoy = Envoy::builder(json!({ "script": READ_METADATA }))
        .filter_before(json!({
            "name": "envoy.filters.http.set_metadata",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
                "metadata": [{"metadata_namespace": "acme", "value": acme}]
            }
        }))
        .route_metadata(json!({"filter_metadata": {"acme": route}}))
        .upstream_metadata(json!({"filter_metadata": {"acme": cluster}}))
        .route("bare", "/bare", "callout")
        .start();
    let reply = envoy.get("/");
    assert_status(&reply, 200);
    let echo = reply.echo();
    let in_envoy = echo.header("x-meta").unwrap().to_string();
    assert_eq!(reply.header("x-meta"), Some(in_envoy.as_str()));
    assert_eq!(echo.header("x-int"), Some("i64"));
    let line = envoy.wait_for_log("on_log metadata: ");
    assert!(line.ends_with(&in_envoy), "{line}");
    // A route and a cluster without metadata: an empty Metadata, which decodes as none.
    let bare = envoy.get("/bare").echo();
    assert_eq!(bare.header("x-raw"), Some("0 bytes, 0 bytes"));
    let bare_meta: Value = serde_json::from_str(bare.header("x-meta").unwrap()).unwrap();
    assert_eq!(bare_meta, json!([acme, null, null, 7, null, null]));

    let mut request = Request::get("/");
    request.metadata = metadata(json!({ "acme": acme }));
    request.route_metadata = metadata(json!({ "acme": route }));
    request.cluster_metadata = metadata(json!({ "acme": cluster }));
    let emulated = emulate(READ_METADATA, json!({}), request);
    assert_eq!(emulated.upstream_header("x-meta"), Some(in_envoy.clone()));
    assert_eq!(
        serde_json::from_str::<Value>(&in_envoy).unwrap(),
        json!([acme, route, cluster, 7, null, null])
    );
    let mut request = Request::get("/bare");
    request.metadata = metadata(json!({ "acme": acme }));
    let emulated = emulate(READ_METADATA, json!({}), request);
    assert_eq!(
        emulated.upstream_header("x-raw"),
        Some("0 bytes, 0 bytes".into())
    );
    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// jwt_authn: tokens signed here, claims read by scripts/jwt_claims.rhai
// ---------------------------------------------------------------------------------------------

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// An RS256 key pair made by openssl, in a folder of its own.
struct Key {
    dir: PathBuf,
    pem: PathBuf,
}

impl Key {
    fn new() -> Key {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("proxy-rhai-jwt-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("key.pem");
        openssl(&["genrsa", "-out", pem.to_str().unwrap(), "2048"], None);
        Key { dir, pem }
    }

    /// The public key as a JWKS (`n` and `e` from openssl's own view of the key).
    fn jwks(&self, kid: &str) -> String {
        let pem = self.pem.to_str().unwrap();
        let modulus = openssl(&["rsa", "-in", pem, "-noout", "-modulus"], None);
        let modulus = String::from_utf8(modulus).unwrap();
        let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
        let text =
            String::from_utf8(openssl(&["rsa", "-in", pem, "-noout", "-text"], None)).unwrap();
        let exponent: u64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("publicExponent: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|e| e.parse().ok())
            .expect("openssl shows the public exponent");
        let e = exponent.to_be_bytes();
        let e = &e[e.iter().position(|b| *b != 0).unwrap_or(7)..];
        json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(from_hex(hex)),
            "e": URL_SAFE_NO_PAD.encode(e),
        }]})
        .to_string()
    }

    /// A token with these claims, signed with `openssl dgst -sha256 -sign`.
    fn sign(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let pem = self.pem.to_str().unwrap();
        let signature = openssl(&["dgst", "-sha256", "-sign", pem], Some(input.as_bytes()));
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (Debian's openssl package) is on the PATH");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.unwrap_or_default()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

const DECISION_LOG: &str = "%RESPONSE_CODE% tenant=%FILTER_STATE(wasm.tenant:PLAIN)% \
    decision=%FILTER_STATE(wasm.decision:PLAIN)% \
    sni=%FILTER_STATE(envoy.network.upstream_server_name:PLAIN)%";

#[test]
fn jwt_authn_claims_reach_the_script_and_its_decision_the_access_log() {
    let key = Key::new();
    let script = std::fs::read_to_string(scripts().join("jwt_claims.rhai")).unwrap();
    let config = json!({"scope": "orders:read"});
    let envoy = Envoy::builder(json!({ "script": script, "config": config }))
        .filter_before(json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"test": {
                    "issuer": "https://issuer.test",
                    "audiences": ["orders"],
                    "local_jwks": {"inline_string": key.jwks("k1")},
                    "payload_in_metadata": "jwt_payload"
                }},
                "rules": [
                    {"match": {"prefix": "/public"}, "requires": {"requires_any": {"requirements": [
                        {"provider_name": "test"}, {"allow_missing": {}}
                    ]}}},
                    {"match": {"prefix": "/"}, "requires": {"provider_name": "test"}}
                ]
            }
        }))
        .access_log(DECISION_LOG)
        .start();
    let claims = |sub: &str, scope: &str| {
        json!({
            "iss": "https://issuer.test", "aud": "orders", "sub": sub, "tenant": "acme",
            "scope": scope, "exp": now_s() + 3600
        })
    };
    let bearer = |token: &str| format!("Bearer {token}");
    let get = |path: &str, token: Option<&str>| {
        let auth = token.map(bearer);
        let mut headers = vec![("x-user", "forged")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        envoy.request("GET", path, &headers, b"")
    };

    // A verified token with the scope: the caller goes upstream, the decision to the log.
    let good = claims("ann", "orders:read orders:write");
    let r = get("/orders", Some(&key.sign("k1", &good)));
    assert_status(&r, 200);
    assert_eq!(r.echo().header_all("x-user"), vec!["ann"]);
    // Without the scope: the script's 403.
    let no_scope = claims("bob", "orders:write");
    let r = get("/orders", Some(&key.sign("k1", &no_scope)));
    assert_status(&r, 403);
    assert_eq!(r.text(), "the token lacks the scope orders:read\n");
    // A token whose signature doesn't verify: jwt_authn's 401; the script never runs.
    let signed = key.sign("k1", &claims("mallory", "orders:read"));
    let good_token = key.sign("k1", &good);
    let (signed, good_token): (Vec<&str>, Vec<&str>) =
        (signed.split('.').collect(), good_token.split('.').collect());
    let forged = format!("{}.{}.{}", signed[0], signed[1], good_token[2]);
    let r = get("/orders", Some(&forged));
    assert_status(&r, 401);
    assert_eq!(r.text(), "Jwt verification fails");
    // No token where jwt_authn allows it: the script's own 401.
    let r = get("/public", None);
    assert_status(&r, 401);
    assert_eq!(r.text(), "a token is required\n");
    assert_eq!(envoy.upstream.hits("/orders"), 1);

    let log = envoy.access_log(4);
    assert_eq!(
        log,
        vec![
            "200 tenant=acme decision=allowed sni=-",
            "403 tenant=acme decision=missing-scope sni=-",
            "401 tenant=- decision=- sni=-",
            "401 tenant=- decision=no-token sni=-",
        ]
    );

    // The emulator, given the claims jwt_authn verified, decides the same.
    for (claims, line) in [(&good, &log[0]), (&no_scope, &log[1])] {
        let mut request = Request::get("/orders");
        request.metadata =
            metadata(json!({"envoy.filters.http.jwt_authn": {"jwt_payload": claims}}));
        let o = emulate(&script, config.clone(), request);
        let decided = format!(
            "{} tenant={} decision={} sni=-",
            o.response.status,
            shown(&o, "wasm.tenant"),
            shown(&o, "wasm.decision")
        );
        assert_eq!(&decided, line);
    }
    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// ext_authz (HTTP) against the test's auth service
// ---------------------------------------------------------------------------------------------

/// An auth service: `authorization: Bearer TENANT-ok` is allowed, with `x-auth-tenant:
/// TENANT` and `x-auth-plan: gold`; anything else is 403. Stops when dropped.
struct AuthService {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl AuthService {
    fn start() -> AuthService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    thread::spawn(move || serve_auth(conn));
                }
            }
        });
        AuthService { port, stop }
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_auth(conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut tenant = None;
        let mut saw_line = false;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                if saw_line {
                    break;
                }
                continue;
            }
            saw_line = true;
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("authorization") {
                    tenant = value
                        .trim()
                        .strip_prefix("Bearer ")
                        .and_then(|t| t.strip_suffix("-ok"))
                        .map(str::to_string);
                }
            }
        }
        let answer = match tenant {
            Some(t) => format!(
                "HTTP/1.1 200 OK\r\nx-auth-tenant: {t}\r\nx-auth-plan: gold\r\ncontent-length: 0\r\n\r\n"
            ),
            None => "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_string(),
        };
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Envoy's dynamic host object, and where a name without an object would have gone.
const DYNAMIC_HOST_LOG: &str = "host=%FILTER_STATE(envoy.upstream.dynamic_host:PLAIN)% \
    fallback=%FILTER_STATE(wasm.envoy.upstream.dynamic_host:PLAIN)%";

const AUTHZ_SCRIPT: &str = r#"
fn on_request_headers() {
    let tenant = get_request_header("x-auth-tenant");
    let authz = get_metadata("envoy.filters.http.ext_authz");
    replace_request_header("x-authz-metadata", to_json(authz));
    replace_request_header("x-plan", `${authz?["x-auth-plan"]}`);
    set_filter_state("tenant", tenant);
    set_filter_state("decision", "allowed");
    set_filter_state("envoy.network.upstream_server_name", `${tenant}.backend.internal`);
    set_filter_state("envoy.upstream.dynamic_host", `${tenant}.internal`);
    let refused = "accepted";
    try { set_filter_state("envoy.upstream.dynamic_port", "https"); } catch (e) { refused = e; }
    replace_request_header("x-refused", refused);
}
"#;

#[test]
fn ext_authz_headers_and_metadata_reach_the_script_and_filter_state_the_access_log() {
    let auth = AuthService::start();
    let envoy = Envoy::builder(json!({ "script": AUTHZ_SCRIPT }))
        .cluster("authz", auth.port)
        .filter_before(json!({
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "http_service": {
                    "server_uri": {"uri": "http://127.0.0.1", "cluster": "authz", "timeout": "5s"},
                    "authorization_response": {
                        "allowed_upstream_headers": {"patterns": [{"prefix": "x-auth-"}]},
                        "dynamic_metadata_from_headers": {"patterns": [{"exact": "x-auth-plan"}]}
                    }
                }
            }
        }))
        .access_log(&format!("{DECISION_LOG} {DYNAMIC_HOST_LOG}"))
        .start();
    let r = envoy.request(
        "GET",
        "/orders",
        &[("authorization", "Bearer acme-ok")],
        b"",
    );
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-auth-tenant"), Some("acme"));
    assert_eq!(echo.header("x-plan"), Some("gold"));
    // ext_authz's namespace: the headers `dynamic_metadata_from_headers` picks, and (measured
    // in Envoy 1.40) `ext_authz_duration`, the check's milliseconds.
    let in_envoy = echo.header("x-authz-metadata").unwrap().to_string();
    let authz: Value = serde_json::from_str(&in_envoy).unwrap();
    assert_eq!(authz["x-auth-plan"], "gold");
    assert!(authz["ext_authz_duration"].is_i64(), "{authz}");
    assert_eq!(authz.as_object().unwrap().len(), 2, "{authz}");
    let refused = echo.header("x-refused").unwrap().to_string();
    assert!(refused.contains("set_filter_state(): Envoy's object for \"envoy.upstream.dynamic_port\" can't be made from \"https\""), "{refused}");
    let r = envoy.request("GET", "/orders", &[("authorization", "Bearer nope")], b"");
    assert_status(&r, 403);
    let log = envoy.access_log(2);
    assert_eq!(
        log,
        vec![
            "200 tenant=acme decision=allowed sni=acme.backend.internal host=acme.internal fallback=-",
            "403 tenant=- decision=- sni=- host=- fallback=-",
        ]
    );

    // The emulator, given the header and the metadata ext_authz left, ends the same.
    let mut request = Request::get("/orders").header("x-auth-tenant", "acme");
    request.metadata = metadata(json!({ "envoy.filters.http.ext_authz": authz }));
    let o = emulate(AUTHZ_SCRIPT, json!({}), request);
    assert_eq!(o.upstream_header("x-authz-metadata"), Some(in_envoy));
    assert_eq!(o.upstream_header("x-refused"), Some(refused));
    let decided = format!(
        "{} tenant={} decision={} sni={} host={} fallback={}",
        o.response.status,
        shown(&o, "wasm.tenant"),
        shown(&o, "wasm.decision"),
        shown(&o, "envoy.network.upstream_server_name"),
        shown(&o, "envoy.upstream.dynamic_host"),
        shown(&o, "wasm.envoy.upstream.dynamic_host"),
    );
    assert_eq!(decided, log[0]);
    envoy.assert_healthy();
}
