//! Limits on what a script makes the proxy keep (issue 23, item 5): callouts per request,
//! metric names, shared data. Each ends in a script error that says which limit; what was
//! there before keeps working.

use proxy_rhai::emulator::{Callout, Emulator, Reply, Request, Response};
use serde_json::{json, Value};

fn configure(script: &str, limits: Value) -> Emulator {
    let e = Emulator::new(&json!({"script": script, "limits": limits}).to_string())
        .expect("configures");
    e.add_cluster("auth");
    e
}

fn ok(_: &Callout) -> Reply {
    Reply::Answer {
        status: 200,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// Callbacks that dispatch again made one request send ~3,800 callouts in Envoy.
#[test]
fn callouts_per_request_count_those_of_callbacks() {
    let script = r#"
        fn again(n) {
            http_get("auth", `/${n}`, [], 100, |status| { set_context("made", n); again(n + 1); });
        }
        fn on_request_headers() { again(1); }
        fn on_response_headers() { add_response_header("x-made", `${get_context("made")}`); }
    "#;
    let p = configure(script, json!({"max_callouts": 3}));
    let o = p.run_with(&Request::get("/"), &mut Response::ok("up"), &mut ok);
    assert_eq!(o.callouts.len(), 3);
    assert_eq!(o.response.status, 500);
    assert_eq!(o.script_errors().len(), 1);
    assert!(
        o.script_errors()[0]
            .contains("http_get(): this request already made 3 callouts (limits.max_callouts)"),
        "{:?}",
        o.script_errors()
    );
    // The limit is per request: the next one has its own.
    let o = p.run_with(&Request::get("/"), &mut Response::ok("up"), &mut ok);
    assert_eq!(o.callouts.len(), 3);

    // The default, 32.
    let p = configure(script, json!({}));
    let o = p.run_with(&Request::get("/"), &mut Response::ok("up"), &mut ok);
    assert_eq!(o.callouts.len(), 32);
    assert!(o.script_errors()[0].contains("already made 32 callouts"));
}

/// A metric name made from client input grew Envoy by one stat per request.
#[test]
fn metric_names_are_limited_and_those_defined_keep_working() {
    let p = configure(
        r#"fn on_request_headers() {
            let name = get_request_header("x-name");
            increment_counter(name, 1);
            add_request_header("x-count", `${get_counter(name)}`);
        }"#,
        json!({"max_metrics": 2, "max_operations": 1000}),
    );
    let run = |name: &str| {
        p.run(
            &Request::get("/").header("x-name", name),
            &mut Response::ok("up"),
        )
    };
    assert_eq!(run("a").upstream_header("x-count").as_deref(), Some("1"));
    assert_eq!(run("b").upstream_header("x-count").as_deref(), Some("1"));
    let o = run("c");
    assert_eq!(o.response.status, 500);
    assert!(
        o.script_errors()[0].contains(
            "increment_counter(): the script already defined 2 metrics (limits.max_metrics): \
             no new metric 'c'"
        ),
        "{:?}",
        o.script_errors()
    );
    // The old ones still count; the plugin's own error counter is not the script's.
    assert_eq!(run("a").upstream_header("x-count").as_deref(), Some("2"));
    let names: Vec<String> = p.metrics().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["a", "b", "proxy_rhai_script_errors"]);
    // A gauge of the same name is another metric.
    let p = configure(
        r#"fn on_request_headers() { increment_counter("n", 1); set_gauge("n", 1); }"#,
        json!({"max_metrics": 1}),
    );
    let o = p.run(&Request::get("/"), &mut Response::ok("up"));
    assert!(o.script_errors()[0].contains("set_gauge(): the script already defined 1 metrics"));
}

const SHARED: &str = r#"
    fn on_request_headers() {
        let key = get_request_header("x-key");
        let value = get_request_header("x-value") ?? "";
        let result = "";
        try { result = shared_set(key, value, 0); } catch (e) { result = e; }
        add_request_header("x-result", `${result}`);
        add_request_header("x-read", `${shared_get(key).value}`);
        add_request_header("x-usage", `${shared_get("proxy-rhai:shared-bytes").value}`);
    }
"#;

fn set(p: &Emulator, key: &str, value: &str) -> (String, String, String) {
    let o = p.run(
        &Request::get("/")
            .header("x-key", key)
            .header("x-value", value),
        &mut Response::ok("up"),
    );
    let h = |n: &str| o.upstream_header(n).unwrap_or_default();
    (h("x-result"), h("x-read"), h("x-usage"))
}

/// A path-keyed cache took Envoy from 131 MB to 2.9 GB: keys, values and the whole store are
/// limited, the store counted in itself (one store for every worker).
#[test]
fn shared_data_sizes_and_total_are_limited() {
    let p = configure(
        SHARED,
        json!({"max_shared_key_size": 8, "max_shared_value_size": 10, "max_shared_bytes": 40}),
    );
    let (result, ..) = set(&p, "a-very-long-key", "v");
    assert!(
        result.contains("a key of 15 bytes is over limits.max_shared_key_size (8)"),
        "{result}"
    );
    let (result, ..) = set(&p, "k", "a value too long");
    assert!(
        result.contains("a value of 16 bytes is over limits.max_shared_value_size (10)"),
        "{result}"
    );
    // Key and value bytes add up: 2 + 10, three times, is 36.
    for key in ["k1", "k2", "k3"] {
        let (result, read, _) = set(&p, key, "0123456789");
        assert_eq!((result.as_str(), read.as_str()), ("true", "0123456789"));
    }
    assert_eq!(set(&p, "k3", "0123456789").2, "36");
    // A new key would go past 40: refused, with what is in use.
    let (result, read, usage) = set(&p, "k4", "012");
    assert!(
        result.contains(
            "shared data is full: 36 of limits.max_shared_bytes (40) bytes in use, 5 more asked"
        ),
        "{result}"
    );
    assert_eq!((read.as_str(), usage.as_str()), ("", "36"));
    // Reads, and overwrites that don't grow the store, still work; shrinking gives back.
    assert_eq!(set(&p, "k1", "abcdefghij").0, "true");
    assert_eq!(set(&p, "k1", "abcdefghij").1, "abcdefghij");
    let (result, _, usage) = set(&p, "k2", "x");
    assert_eq!((result.as_str(), usage.as_str()), ("true", "27"));
    assert_eq!(set(&p, "k4", "01").0, "true");
    // The count is the plugin's: a script can't write it.
    let (result, ..) = set(&p, "proxy-rhai:shared-bytes", "0");
    assert!(result.contains("is the plugin's own key"), "{result}");
    assert_eq!(p.shared("proxy-rhai:shared-bytes").unwrap().0, b"31");
}

/// Compare-and-swap keeps its meaning under the count.
#[test]
fn shared_set_with_a_version_still_compares() {
    let p = configure(
        r#"fn on_request_headers() {
            shared_set("c", "1", 0);
            let v = shared_get("c").version;
            add_request_header("x-stale", `${shared_set("c", "2", v + 1000)}`);
            add_request_header("x-fresh", `${shared_set("c", "22", v)}`);
            add_request_header("x-value", shared_get("c").value);
        }"#,
        json!({}),
    );
    let o = p.run(&Request::get("/"), &mut Response::ok("up"));
    assert_eq!(o.upstream_header("x-stale").as_deref(), Some("false"));
    assert_eq!(o.upstream_header("x-fresh").as_deref(), Some("true"));
    assert_eq!(o.upstream_header("x-value").as_deref(), Some("22"));
    assert_eq!(p.shared("proxy-rhai:shared-bytes").unwrap().0, b"3");
}

#[test]
fn host_limits_out_of_range_are_refused() {
    for (limit, value) in [
        ("max_callouts", 1_001),
        ("max_metrics", 10_001),
        ("max_shared_key_size", 0),
        ("max_shared_value_size", (16 << 20) + 1),
        ("max_shared_bytes", (1 << 30) + 1),
    ] {
        let e = Emulator::new(
            &json!({"script": "fn on_request_headers() {}", "limits": {limit: value}}).to_string(),
        )
        .err()
        .expect("refused");
        assert!(
            e.contains(&format!("limits.{limit} = {value} is out of range")),
            "{e}"
        );
    }
}
