//! The emulator must agree with Envoy: every case in `tests/e2e/agreement.json` (script,
//! request, expected outcome) runs in the emulator and in real Envoy, against the same
//! expectations, so a difference between them shows up as a failure of one of the two tests.
//!
//! The upstream is the harness's echo server in Envoy and an echo upstream in the emulator:
//! both answer 200 `application/json`, so expectations only look at what the script decides.

use proxy_rhai::emulator::{Emulator, Forwarded, Request, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::support::Envoy;

#[derive(Deserialize)]
struct Case {
    name: String,
    script: String,
    #[serde(default)]
    settings: Map<String, Value>,
    request: CaseRequest,
    expect: Expect,
}

#[derive(Deserialize)]
struct CaseRequest {
    method: String,
    path: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

#[derive(Deserialize)]
struct Expect {
    status: u32,
    /// Header → value, or `null` for absent.
    #[serde(default)]
    response_headers: Map<String, Value>,
    body: Option<String>,
    body_starts_with: Option<String>,
    #[serde(default)]
    upstream_headers: Map<String, Value>,
    upstream_body: Option<String>,
    reached_upstream: Option<bool>,
}

/// Header pairs, values as text.
type Pairs = Vec<(String, String)>;

/// What one run produced, from either side.
struct Seen {
    status: u32,
    response_headers: Pairs,
    body: String,
    /// Headers and body the upstream received, when the request got there.
    upstream: Option<(Pairs, String)>,
}

/// All values of `name`, joined by `,` (`None` when absent).
fn lookup(pairs: &Pairs, name: &str) -> Option<String> {
    let values: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn text_pairs(pairs: &[(String, Vec<u8>)]) -> Pairs {
    pairs
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/agreement.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn plugin_config(case: &Case) -> Value {
    let mut config = case.settings.clone();
    config.insert("script".into(), json!(case.script));
    Value::Object(config)
}

/// Every difference between `seen` and the case's expectations.
fn check(case: &Case, seen: &Seen) -> Vec<String> {
    let e = &case.expect;
    let mut problems = Vec::new();
    if seen.status != e.status {
        problems.push(format!("status {} (expected {})", seen.status, e.status));
    }
    for (name, want) in &e.response_headers {
        let got = lookup(&seen.response_headers, name);
        if got.as_deref() != want.as_str() {
            problems.push(format!("response header {name}: {got:?} (expected {want})"));
        }
    }
    if let Some(body) = &e.body {
        if seen.body != *body {
            problems.push(format!("body {:?} (expected {body:?})", seen.body));
        }
    }
    if let Some(prefix) = &e.body_starts_with {
        if !seen.body.starts_with(prefix.as_str()) {
            problems.push(format!(
                "body {:?} (expected to start with {prefix:?})",
                seen.body
            ));
        }
    }
    match (&seen.upstream, e.reached_upstream) {
        (Some(_), Some(false)) => problems.push("reached the upstream (expected not)".into()),
        (None, Some(true)) => problems.push("did not reach the upstream".into()),
        (None, None) if !e.upstream_headers.is_empty() || e.upstream_body.is_some() => {
            problems.push("did not reach the upstream".into())
        }
        _ => {}
    }
    if let Some((upstream_headers, upstream_body)) = &seen.upstream {
        for (name, want) in &e.upstream_headers {
            let got = lookup(upstream_headers, name);
            if got.as_deref() != want.as_str() {
                problems.push(format!("upstream header {name}: {got:?} (expected {want})"));
            }
        }
        if let Some(body) = &e.upstream_body {
            if upstream_body != body {
                problems.push(format!(
                    "upstream body {upstream_body:?} (expected {body:?})"
                ));
            }
        }
    }
    problems
}

fn report(side: &str, failures: Vec<(String, Vec<String>)>) {
    let failures: Vec<String> = failures
        .into_iter()
        .filter(|(_, problems)| !problems.is_empty())
        .map(|(name, problems)| format!("{name}:\n    {}", problems.join("\n    ")))
        .collect();
    assert!(
        failures.is_empty(),
        "{side} disagrees with the cases:\n  {}",
        failures.join("\n  ")
    );
}

fn echo(request: &Forwarded) -> Response {
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let body = json!({"headers": headers, "body": String::from_utf8_lossy(&request.body)});
    Response::ok(body.to_string()).header("content-type", "application/json")
}

#[test]
fn cases_in_the_emulator() {
    let mut failures = Vec::new();
    for case in cases() {
        let emulator = Emulator::new(&plugin_config(&case).to_string()).unwrap();
        // The cluster of Envoy's upstream, which callouts may target there too.
        emulator.add_cluster("upstream");
        let mut request = Request::new(
            &case.request.method,
            &case.request.path,
            case.request.body.clone().into_bytes(),
        );
        for (k, v) in &case.request.headers {
            request = request.header(k, v.as_str());
        }
        let o = emulator.run(&request, &mut echo);
        let seen = Seen {
            status: o.response.status,
            response_headers: text_pairs(&o.response.headers),
            body: String::from_utf8_lossy(&o.response.body).into_owned(),
            upstream: o.upstream.map(|u| {
                (
                    text_pairs(&u.headers),
                    String::from_utf8_lossy(&u.body).into_owned(),
                )
            }),
        };
        failures.push((case.name.clone(), check(&case, &seen)));
    }
    report("the emulator", failures);
}

#[test]
fn cases_in_envoy() {
    let cases = cases();
    let failures: Vec<(String, Vec<String>)> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|case| {
                scope.spawn(move || {
                    // Envoy's option goes with the plugin's key, as `deploy envoy` sets them.
                    let stop_iteration = case.settings.get("allow_on_headers_stop_iteration")
                        == Some(&Value::Bool(true));
                    let envoy = Envoy::builder(plugin_config(case))
                        .allow_on_headers_stop_iteration(stop_iteration)
                        .start();
                    let headers: Vec<(&str, &str)> = case
                        .request
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let r = envoy.request(
                        &case.request.method,
                        &case.request.path,
                        &headers,
                        case.request.body.as_bytes(),
                    );
                    let reached = envoy.upstream.hits(&case.request.path) > 0;
                    // The echo is in the response body, unless the script replaced it.
                    let looks_at_upstream = !case.expect.upstream_headers.is_empty()
                        || case.expect.upstream_body.is_some();
                    let upstream = reached.then(|| {
                        if !looks_at_upstream {
                            return (Pairs::new(), String::new());
                        }
                        let echo = r.echo();
                        (echo.headers.clone(), echo.body.clone())
                    });
                    let seen = Seen {
                        status: u32::from(r.status),
                        response_headers: r.headers.clone(),
                        body: r.text(),
                        upstream,
                    };
                    let problems = check(case, &seen);
                    envoy.assert_healthy();
                    (case.name.clone(), problems)
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    report("Envoy", failures);
}
