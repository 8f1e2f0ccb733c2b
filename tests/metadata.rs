//! What other filters decided (dynamic, route and cluster metadata, decoded from the protobuf
//! Envoy gives) and what the script tells them (filter state), against the emulator.

use proxy_rhai::emulator::{Emulator, Outcome, Request, Response};
use serde_json::json;

fn run(script: &str, request: Request) -> Outcome {
    let p = Emulator::with_script(script, json!({})).unwrap();
    p.run(&request, &mut Response::ok(""))
}

fn with_metadata() -> Request {
    let mut r = Request::get("/");
    let ns = |v: serde_json::Value| serde_json::from_value(v).unwrap();
    r.metadata = ns(json!({
        "envoy.filters.http.jwt_authn": {"jwt_payload": {
            "sub": "ann", "exp": 1767229200, "ratio": 0.5, "admin": false, "nothing": null,
            "roles": ["a", 2, {"x": true}], "org": {"name": "acme"}
        }},
        "other": {"k": "v"}
    }));
    r.route_metadata = ns(json!({"acme": {"tier": "gold"}}));
    r.cluster_metadata = ns(json!({"acme": {"zone": "eu-1"}}));
    r
}

#[test]
fn metadata_decodes_into_script_values() {
    let script = r#"
        fn on_request_headers() {
            let jwt = get_metadata("envoy.filters.http.jwt_authn");
            let c = jwt.jwt_payload;
            add_request_header("x-sub", c.sub);
            add_request_header("x-types", `${type_of(c.exp)} ${type_of(c.ratio)} ${type_of(c.admin)} ${type_of(c.nothing)} ${type_of(c.roles)}`);
            add_request_header("x-exp", `${c.exp + 1}`);
            add_request_header("x-roles", to_json(c.roles));
            add_request_header("x-org", get_metadata("envoy.filters.http.jwt_authn", "jwt_payload").org.name);
            add_request_header("x-absent", `${get_metadata("nope")} ${get_metadata("other", "nope")}`);
            add_request_header("x-route", get_route_metadata("acme").tier);
            add_request_header("x-cluster", get_cluster_metadata("acme", "zone"));
            add_request_header("x-none", `${get_route_metadata("other")}|${get_cluster_metadata("x", "y")}`);
        }"#;
    let o = run(script, with_metadata());
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    let h = |name| o.upstream_header(name).unwrap_or_default();
    assert_eq!(h("x-sub"), "ann");
    assert_eq!(h("x-types"), "i64 f64 bool () array");
    assert_eq!(h("x-exp"), "1767229201");
    assert_eq!(h("x-roles"), r#"["a",2,{"x":true}]"#);
    assert_eq!(h("x-org"), "acme");
    assert_eq!(h("x-absent"), " ");
    assert_eq!(h("x-route"), "gold");
    assert_eq!(h("x-cluster"), "eu-1");
    assert_eq!(h("x-none"), "|");
}

#[test]
fn metadata_is_there_in_every_phase_but_not_at_the_top_level() {
    let script = r#"
        fn on_response_headers() { add_response_header("x-zone", get_cluster_metadata("acme", "zone")); }
        fn on_log() { log_info(`log: ${get_metadata("other", "k")} ${get_route_metadata("acme", "tier")}`); }"#;
    let o = run(script, with_metadata());
    assert_eq!(o.response_header("x-zone").as_deref(), Some("eu-1"));
    assert!(
        o.log.iter().any(|l| l.message == "log: v gold"),
        "{:?}",
        o.log
    );
    let top = Emulator::with_script(
        r#"const X = get_metadata("a"); fn on_request_headers() {}"#,
        json!({}),
    );
    let e = top.err().unwrap();
    assert!(
        e.contains("get_metadata() can only be called while a request is handled"),
        "{e}"
    );
}

#[test]
fn a_value_past_the_limits_is_a_script_error() {
    let mut deep = json!("bottom");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let mut r = Request::get("/");
    r.route_metadata = serde_json::from_value(json!({"acme": {"deep": deep}})).unwrap();
    let script = r#"
        fn on_request_headers() {
            try { get_route_metadata("acme"); } catch (e) { log_warn(`${e}`); }
            add_request_header("x-other", `${get_route_metadata("acme", "missing")}`);
        }"#;
    let o = run(script, r);
    assert!(
        o.log.iter().any(|l| l.message.contains("get_route_metadata(): the proxy's xds.route_metadata is not valid: the value is nested deeper than 128 levels (limits.max_value_depth)")),
        "{:?}",
        o.log
    );
    assert_eq!(o.upstream_header("x-other").as_deref(), Some(""));
}

#[test]
fn set_filter_state_makes_envoy_objects_or_wasm_properties() {
    let script = r#"
        fn on_request_headers() {
            set_filter_state("envoy.network.upstream_server_name", "backend.internal");
            set_filter_state("envoy.upstream.dynamic_port", "8443");
            set_filter_state("tenant", "acme");
            set_filter_state("decision.reason", blob(2, 0x41));
            add_request_header("x-tenant", get_property(["tenant"]));
            try { set_filter_state("envoy.upstream.dynamic_port", "https"); } catch (e) { log_warn(`${e}`); }
        }"#;
    let o = run(script, Request::get("/"));
    assert_eq!(
        o.filter_state,
        vec![
            (
                "envoy.network.upstream_server_name".into(),
                b"backend.internal".to_vec()
            ),
            ("envoy.upstream.dynamic_port".into(), b"8443".to_vec()),
            ("wasm.decision.reason".into(), b"AA".to_vec()),
            ("wasm.tenant".into(), b"acme".to_vec()),
        ]
    );
    assert_eq!(o.upstream_header("x-tenant").as_deref(), Some("acme"));
    assert!(
        o.log.iter().any(|l| l.message.contains(
            r#"set_filter_state(): Envoy's object for "envoy.upstream.dynamic_port" can't be made from "https""#
        )),
        "{:?}",
        o.log
    );
    assert!(o
        .trace
        .iter()
        .any(|c| c == r#"set_envoy_filter_state("tenant", "acme"): NotFound (Envoy has no object for that name)"#));
}
