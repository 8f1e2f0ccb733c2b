//! Compressed bodies: a gzip-encoded upstream response reaches the plugin as compressed bytes
//! with its `content-encoding`; Envoy's `decompressor` filter (gzip or brotli) listed after the
//! plugin (responses pass the filters in reverse order) hands a chunk function the plain
//! bytes, and a `compressor` listed before it compresses what the script produced.
//!
//! Not tested here, measured by hand in Envoy 1.40: a decompressor after the plugin with a
//! buffered body phase (`on_response_body`, or a chunk function returning `PAUSE`) never
//! ends the response. The decompressor ends the body with trailers it adds (its byte counts),
//! and Envoy's filter manager hands those to no filter that held the body, so the plugin never
//! learns the body ended (see the README, "Compressed bodies").

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::support::{assert_status, Envoy, GZIP_JSON};

fn json_rewrite() -> Value {
    let script = std::fs::read_to_string("scripts/json_rewrite.rhai").unwrap();
    json!({ "script": script, "config": {"add_fields": {"served_by": "edge"}} })
}

/// Envoy's `compressor` or `decompressor` filter (`proto`: its message's name), with the
/// `library` (`gzip`, `brotli`) of that kind.
fn coding_filter(kind: &str, proto: &str, library: &str) -> Value {
    let capitalized = library[..1].to_uppercase() + &library[1..];
    let mut config = serde_json::Map::new();
    config.insert(
        format!("{kind}_library"),
        json!({"name": library, "typed_config": {"@type": format!(
            "type.googleapis.com/envoy.extensions.compression.{library}.{kind}.v3.{capitalized}"
        )}}),
    );
    config.insert(
        "@type".into(),
        json!(format!(
            "type.googleapis.com/envoy.extensions.filters.http.{kind}.v3.{proto}"
        )),
    );
    json!({"name": format!("envoy.filters.http.{kind}"), "typed_config": config})
}

/// Decompresses gzip with Python's `gzip` module (the test has no compression library).
fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not gzip: {data:?}");
    out.stdout
}

#[test]
fn without_a_decompressor_the_script_sees_the_encoding_and_leaves_the_body() {
    let envoy = Envoy::start(json_rewrite());
    let reply = envoy.get("/gzip-json");
    assert_status(&reply, 200);
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    // Untouched: still gzip, the password still there.
    assert_eq!(gunzip(&reply.body), GZIP_JSON.as_bytes());
    envoy.wait_for_log("json_rewrite: the response body is compressed: left untouched");
    envoy.assert_healthy();
}

#[test]
fn a_gzip_decompressor_after_the_plugin_hands_a_chunk_function_the_plain_bytes() {
    decompressed_for_a_chunk_function("gzip", "/gzip-json");
}

#[test]
fn a_brotli_decompressor_after_the_plugin_hands_a_chunk_function_the_plain_bytes() {
    decompressed_for_a_chunk_function("brotli", "/br-json");
}

fn decompressed_for_a_chunk_function(library: &str, path: &str) {
    let script = r#"
        fn on_response_headers() {
            add_response_header("x-seen-encoding", get_response_header("content-encoding") ?? "none");
        }
        fn on_response_chunk(chunk, last) {
            // Rhai's `replace` changes the string in place.
            chunk.replace("hunter2", "*******");
            if chunk != "" { replace_response_body(chunk); }
        }
    "#;
    let envoy = Envoy::builder(json!({ "script": script }))
        .filter_after(coding_filter("decompressor", "Decompressor", library))
        .start();
    let reply = envoy.get(path);
    assert_status(&reply, 200);
    assert_eq!(reply.header("x-seen-encoding"), Some("none"));
    assert_eq!(reply.header("content-encoding"), None, "{reply:?}");
    assert_eq!(reply.text(), GZIP_JSON.replace("hunter2", "*******"));
    envoy.assert_healthy();
}

#[test]
fn a_compressor_before_the_plugin_compresses_what_json_rewrite_wrote() {
    let envoy = Envoy::builder(json_rewrite())
        .filter_before(coding_filter("compressor", "Compressor", "gzip"))
        .start();
    let reply = envoy.request("GET", "/echo", &[("accept-encoding", "gzip")], b"");
    assert_status(&reply, 200);
    assert_eq!(reply.header("content-encoding"), Some("gzip"), "{reply:?}");
    let body: Value = serde_json::from_slice(&gunzip(&reply.body)).unwrap();
    assert_eq!(body["served_by"], "edge", "{body}");
    // json_rewrite asked the upstream for identity: it dropped the client's accept-encoding.
    let upstream_headers = body["headers"].to_string();
    assert!(
        !upstream_headers.contains("accept-encoding"),
        "{upstream_headers}"
    );
    envoy.assert_healthy();
}
