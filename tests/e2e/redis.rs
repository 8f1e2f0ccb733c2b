//! Redis in real Envoy 1.40, which has none of Higress's Redis host functions: the default
//! build imports none of them and loads; a script calling `redis_*` gets a clear script error
//! (catchable) and the proxy keeps serving. The Higress build imports them, and Envoy refuses
//! it, as it refuses any module importing a function it lacks.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::support::{wasm_path, Envoy};

/// The Higress build: `PROXY_RHAI_HIGRESS_WASM` when set, else what `tools/build-wasm.sh` makes.
fn higress_wasm_path() -> PathBuf {
    let path = match std::env::var_os("PROXY_RHAI_HIGRESS_WASM") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/proxy_rhai_higress.wasm"),
    };
    assert!(
        path.is_file(),
        "the Higress build is missing: {} (tools/build-wasm.sh makes it)",
        path.display()
    );
    path
}

/// A module's imported functions and its exports, by name (the wasm binary format's import
/// and export sections).
fn imports_and_exports(path: &Path) -> (Vec<String>, Vec<String>) {
    let bytes = std::fs::read(path).expect("the module is readable");
    assert_eq!(
        bytes.get(..4),
        Some(&b"\0asm"[..]),
        "{} is not wasm",
        path.display()
    );
    let mut at = 8;
    let leb = |at: &mut usize| {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = bytes[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                return value as usize;
            }
        }
    };
    let name = |at: &mut usize| {
        let len = leb(at);
        let text = String::from_utf8_lossy(&bytes[*at..*at + len]).into_owned();
        *at += len;
        text
    };
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    while at < bytes.len() {
        let id = bytes[at];
        at += 1;
        let size = leb(&mut at);
        let end = at + size;
        match id {
            2 => {
                for _ in 0..leb(&mut at) {
                    let _module = name(&mut at);
                    let field = name(&mut at);
                    let kind = bytes[at];
                    at += 1;
                    match kind {
                        0 => {
                            leb(&mut at); // a function: its type
                            imports.push(field);
                        }
                        1 => {
                            at += 1; // a table: its element type, then limits
                            let flags = leb(&mut at);
                            leb(&mut at);
                            if flags & 1 == 1 {
                                leb(&mut at);
                            }
                        }
                        2 => {
                            let flags = leb(&mut at);
                            leb(&mut at);
                            if flags & 1 == 1 {
                                leb(&mut at);
                            }
                        }
                        _ => at += 2, // a global: its type and mutability
                    }
                }
            }
            7 => {
                for _ in 0..leb(&mut at) {
                    exports.push(name(&mut at));
                    at += 1;
                    leb(&mut at);
                }
            }
            _ => {}
        }
        at = end;
    }
    (imports, exports)
}

const REDIS_IMPORTS: [&str; 2] = ["proxy_redis_init", "proxy_redis_call"];

#[test]
fn only_the_higress_build_imports_redis_functions() {
    let (imports, exports) = imports_and_exports(&wasm_path());
    assert!(imports.iter().any(|i| i == "proxy_log"), "{imports:?}");
    let redis: Vec<&String> = imports.iter().filter(|i| i.contains("redis")).collect();
    assert!(redis.is_empty(), "the default build imports {redis:?}");
    assert!(!exports.iter().any(|e| e.contains("redis")), "{exports:?}");

    let (imports, exports) = imports_and_exports(&higress_wasm_path());
    for wanted in REDIS_IMPORTS {
        assert!(
            imports.iter().any(|i| i == wanted),
            "no {wanted}: {imports:?}"
        );
    }
    assert!(
        exports.iter().any(|e| e == "proxy_on_redis_call_response"),
        "{exports:?}"
    );
}

const SCRIPT: &str = r#"
fn on_request_headers() {
    if get_request_header("x-op") == "catch" {
        try {
            redis_incr("outbound|6379||redis.dns", "hits", |n| add_request_header("x-n", `${n}`));
        } catch (e) {
            add_request_header("x-caught", e);
        }
    } else if get_request_header("x-op") == "throw" {
        redis_get("outbound|6379||redis.dns", "k", |v| {});
    }
    add_request_header("x-ran", "yes");
}
"#;

#[test]
fn redis_in_the_default_build_is_a_clear_script_error_and_envoy_keeps_serving() {
    let envoy = Envoy::start(json!({
        "script": SCRIPT,
        "redis": {"outbound|6379||redis.dns": {"password": "Redis-pw-7", "timeout_ms": 500}},
    }));
    let warning = envoy.wait_for_log("needs the plugin's Higress build");
    assert!(warning.contains("proxy_rhai_higress.wasm"), "{warning}");

    let r = envoy.request("GET", "/", &[("x-op", "catch")], b"");
    assert_eq!(r.status, 200);
    let caught = r.echo().header("x-caught").unwrap_or_default().to_string();
    assert!(
        caught.contains("redis_incr(): Redis needs the plugin's Higress build")
            && caught.contains("no Redis host functions"),
        "{caught}"
    );
    assert_eq!(r.echo().header("x-ran"), Some("yes"));

    // Uncaught: the error policy answers (fail_closed: 500), the log says why.
    let r = envoy.request("GET", "/", &[("x-op", "throw")], b"");
    assert_eq!(r.status, 500);
    let line = envoy.wait_for_log("redis_get(): Redis needs the plugin's Higress build");
    assert!(
        line.contains("script error in on_request_headers"),
        "{line}"
    );

    for _ in 0..3 {
        let r = envoy.request("GET", "/", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.echo().header("x-ran"), Some("yes"));
    }
    assert!(
        !envoy.log().contains("Redis-pw-7"),
        "the Redis password reached Envoy's log"
    );
    envoy.assert_healthy();
}

#[test]
fn envoy_refuses_the_higress_build() {
    let started = Envoy::builder(json!({ "script": SCRIPT }))
        .wasm(higress_wasm_path())
        .try_start();
    let log = match started {
        Ok(envoy) => panic!("Envoy loaded the Higress build:\n{}", envoy.log()),
        Err(log) => log,
    };
    assert!(
        log.contains("proxy_redis_"),
        "Envoy's refusal doesn't name the missing import:\n{log}"
    );
}
