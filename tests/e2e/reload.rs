//! Configuration faults while Envoy runs: a refused configuration leaves the running one
//! serving, and a later good one loads (the listener comes from an LDS file).

use serde_json::json;

use crate::support::Envoy;

fn marker(envoy: &Envoy) -> Option<String> {
    envoy
        .get("/reload")
        .echo()
        .header("x-generation")
        .map(str::to_string)
}

#[test]
fn a_refused_configuration_keeps_the_running_one_and_a_later_good_one_loads() {
    let script = |generation: u32| {
        format!(
            r#"fn on_request_headers() {{ add_request_header("x-generation", "{generation}"); }}"#
        )
    };
    let envoy = Envoy::builder(json!({"script": script(1)}))
        .dynamic_listener()
        .start();
    assert_eq!(marker(&envoy).as_deref(), Some("1"));

    for bad in [
        json!({"script": "fn on_request_headers() { let x = ; }"}),
        json!({"script": script(9), "limits": {"max_operations": 1}}),
        json!({"script": script(9), "unknown_key": true}),
    ] {
        assert!(
            !envoy.reconfigure(bad.clone()),
            "Envoy took a configuration the plugin refuses: {bad}"
        );
        assert_eq!(
            marker(&envoy).as_deref(),
            Some("1"),
            "the running configuration keeps serving"
        );
    }
    envoy.wait_for_log("proxy-rhai: configuration refused: script does not compile: Unexpected ';' at line 1, column 35");
    envoy.wait_for_log("limits.max_operations = 1 is out of range");
    envoy.wait_for_log("unknown field `unknown_key`");

    assert!(
        envoy.reconfigure(json!({"script": script(2)})),
        "a good configuration loads"
    );
    let mut seen = None;
    // In-flight connections drain on the old filter chain; new ones get the new plugin.
    for _ in 0..50 {
        seen = marker(&envoy);
        if seen.as_deref() == Some("2") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen.as_deref(), Some("2"));
    // The refusals log "Wasm VM failed Failed to configure base Wasm plugin" (a refused
    // configuration, as intended); nothing else may fail, and nothing may trap.
    let log = envoy.log();
    let failures: Vec<&str> = crate::support::vm_failures(&log)
        .into_iter()
        .filter(|l| !l.contains("Failed to configure base Wasm plugin"))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(envoy.get("/after").status, 200);
}
