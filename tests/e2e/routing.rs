//! Re-routing. Measured in Envoy 1.40: every request header write of a wasm filter clears the
//! route cache by itself (`Context::addHeaderMapValue` and the others call `clearRouteCache`), so
//! a script that changes what routes match on in the headers is re-routed with no more to do;
//! `clear_route_cache()` is for routes that match on what a header write doesn't touch, such as
//! filter state the script set.

use serde_json::json;

use crate::support::{assert_status, Envoy, Upstream};

const CANARY: &str = r#"
fn on_request_headers() {
    let cookie = get_request_header("cookie") ?? "";
    if cookie.contains("canary=1") {
        switch config().how {
            "header" => add_request_header("x-canary", "1"),
            "state" => set_property("lane", "canary"),
            "state+clear" => { set_property("lane", "canary"); clear_route_cache(); }
        }
    }
}
"#;

fn start(how: &str, canary: &Upstream) -> Envoy {
    let by_header =
        json!({"prefix": "/", "headers": [{"name": "x-canary", "string_match": {"exact": "1"}}]});
    let by_state = json!({"prefix": "/", "filter_state": [{"key": "wasm.lane", "string_match": {"exact": "canary"}}]});
    Envoy::builder(json!({ "script": CANARY, "config": {"how": how} }))
        .matched_route("canary-by-header", by_header, "canary")
        .matched_route("canary-by-state", by_state, "canary")
        .cluster("canary", canary.port())
        .start()
}

/// Where one request with the canary cookie and one without went: (canary hits, usual hits).
fn sent(envoy: &Envoy, canary: &Upstream, path: &str) -> (usize, usize) {
    let r = envoy.request("GET", path, &[("cookie", "canary=1")], b"");
    assert_status(&r, 200);
    let r = envoy.request("GET", path, &[("cookie", "other=1")], b"");
    assert_status(&r, 200);
    envoy.assert_healthy();
    (canary.hits(path), envoy.upstream.hits(path))
}

#[test]
fn a_header_the_script_sets_reroutes_the_request() {
    let canary = Upstream::start();
    let envoy = start("header", &canary);
    assert_eq!(sent(&envoy, &canary, "/h"), (1, 1));
}

#[test]
fn filter_state_reroutes_only_with_clear_route_cache() {
    let canary = Upstream::start();
    let envoy = start("state", &canary);
    assert_eq!(
        sent(&envoy, &canary, "/s"),
        (0, 2),
        "the route chosen first stays"
    );
    let canary = Upstream::start();
    let envoy = start("state+clear", &canary);
    assert_eq!(sent(&envoy, &canary, "/s"), (1, 1));
}
