//! TLS for the end-to-end tests: [`TestCerts`], a CA and certificates made with the `openssl`
//! command, and [`tls_request`], a request to Envoy's TLS listener with `curl`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::http::Reply;
use super::Envoy;

/// The name the server certificate is for, and the SNI the client sends.
pub const SERVER_NAME: &str = "proxy.test";
pub const CLIENT_URI_SAN: &str = "spiffe://example.org/client";
pub const CLIENT_DNS_SAN: &str = "client.example.org";

/// A CA (`ca.crt`), a server certificate for [`SERVER_NAME`] (`server.crt`, `server.key`) and
/// a client certificate (`client.crt`, `client.key`: subject `CN=client,O=Example`, SANs
/// [`CLIENT_URI_SAN`] and [`CLIENT_DNS_SAN`], then a second DNS SAN), all signed by the CA,
/// in a directory removed on drop.
pub struct TestCerts {
    pub dir: PathBuf,
}

/// Runs `cmd` (`tool`, which tools/setup.sh installs) and returns its output; panics when it
/// fails.
fn run(tool: &str, cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (tools/setup.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{tool} {cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    run(
        "openssl",
        Command::new("openssl").args(args).current_dir(dir),
    )
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "proxy-rhai-certs-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TestCerts { dir }.signed()
    }

    /// Makes the CA, then the server and client certificates signed by it.
    fn signed(self) -> TestCerts {
        let dir = &self.dir;
        let ca = [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=proxy-rhai test CA",
        ];
        openssl(dir, &ca);
        let sans = [
            (
                "server",
                "/CN=proxy".to_string(),
                format!("DNS:{SERVER_NAME},IP:127.0.0.1"),
            ),
            (
                "client",
                "/O=Example/CN=client".to_string(),
                format!("URI:{CLIENT_URI_SAN},DNS:{CLIENT_DNS_SAN},DNS:second.example.org"),
            ),
        ];
        for (name, subject, san) in sans {
            let (key, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            fs::write(dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
            openssl(
                dir,
                &[
                    "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                    &subject,
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        self
    }

    /// The client certificate's SHA-256, lowercase hex (as Envoy reports it).
    pub fn client_sha256(&self) -> String {
        let out = openssl(
            &self.dir,
            &[
                "x509",
                "-in",
                "client.crt",
                "-noout",
                "-fingerprint",
                "-sha256",
            ],
        );
        let text = String::from_utf8_lossy(&out);
        let hex = text.trim().rsplit('=').next().unwrap_or_default();
        hex.replace(':', "").to_ascii_lowercase()
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// GET `path` (POST `body`, when given) from Envoy's TLS listener with `curl` (trusting the
/// test CA, sending SNI [`SERVER_NAME`]), with the client certificate when `client_cert`.
pub fn tls_request(
    envoy: &Envoy,
    certs: &TestCerts,
    client_cert: bool,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let port = envoy.addr().port();
    let url = format!("https://{SERVER_NAME}:{port}{path}");
    let resolve = format!("{SERVER_NAME}:{port}:127.0.0.1");
    let mut cmd = Command::new("curl");
    cmd.current_dir(&certs.dir)
        .args([
            "-sS",
            "-i",
            "--max-time",
            "30",
            "--cacert",
            "ca.crt",
            "--resolve",
        ])
        .arg(&resolve);
    if client_cert {
        cmd.args(["--cert", "client.crt", "--key", "client.key"]);
    }
    if let Some(body) = body {
        cmd.args(["--data-binary", body]);
    }
    parse_reply(&run("curl", cmd.arg(&url)))
}

/// An HTTP/1.1 response as `curl -i` prints it.
fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
        trailers: Vec::new(),
    }
}

/// [`Envoy::assert_healthy`] for a TLS listener: the VM never failed and Envoy still answers
/// a client with a certificate.
pub fn assert_healthy_tls(envoy: &Envoy, certs: &TestCerts) {
    let failures = super::vm_failures(&envoy.log())
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(failures.is_empty(), "VM failures:\n{}", failures.join("\n"));
    let reply = tls_request(envoy, certs, true, "/__healthcheck", None);
    assert_eq!(reply.status, 200, "after the test: {reply:?}");
}
