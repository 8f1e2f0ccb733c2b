//! The plugin's core: header and body phases, local responses, context, the error policy,
//! limits, configurations Envoy refuses, and Envoy's header map rules.

use serde_json::{json, Value};

use crate::support::{assert_status, pattern, Envoy, Reply};

/// Every value of a header joined by `,` (HTTP's equivalence for repeated headers).
fn joined(values: Vec<&str>) -> String {
    values.join(",")
}

/// The `[name, value]` pairs of a JSON array of pairs.
fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array of pairs: {v}"))
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn only<'a>(pairs: &'a [(String, String)], names: &[&str]) -> Vec<(&'a str, &'a str)> {
    pairs
        .iter()
        .filter(|(n, _)| names.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Request headers: every row of the table
// ---------------------------------------------------------------------------------------------

const REQUEST_HEADERS_SCRIPT: &str = r#"
fn on_request_headers() {
    switch get_request_header("x-op") {
        "get-all" => replace_request_header("x-all", to_json(get_request_headers())),
        "get-one" => {
            replace_request_header("x-got-b", get_request_header("X-B"));
            replace_request_header("x-absent", type_of(get_request_header("x-nope")));
            replace_request_header("x-got-path", get_request_header(":path"));
        }
        "remove" => {
            remove_request_header("x-gone");
            remove_request_header("x-never-there");
        }
        "replace" => {
            replace_request_header("x-one", "new");
            replace_request_header("x-added", "yes");
        }
        "add" => add_request_header("x-dup", "2"),
        "pairs" => {
            let h = get_request_headers().filter(|p| p[0] != "x-drop");
            h.push(["x-new", "1"]);
            h.push(["x-new", "2"]);
            replace_request_headers(h);
        }
        "map" => {
            let m = #{};
            for p in get_request_headers() {
                if p[0] != "x-drop" { m[p[0]] = p[1]; }
            }
            m["x-m"] = "v";
            m["x-multi"] = ["1", "2"];
            replace_request_headers(m);
        }
        "non-utf8" => {
            replace_request_header("x-raw-seen", get_request_header("x-raw"));
            replace_request_header("x-raw-all", to_json(get_request_headers().filter(|p| p[0] == "x-raw")));
        }
    }
}
"#;

#[test]
fn request_headers_every_row() {
    let envoy = Envoy::with_script(REQUEST_HEADERS_SCRIPT);

    // get_request_headers: pseudo-headers first, then the client's order, duplicates kept.
    let r = envoy.request(
        "GET",
        "/rqh/all",
        &[
            ("x-op", "get-all"),
            ("x-b", "1"),
            ("X-A", "2"),
            ("x-b", "3"),
        ],
        b"",
    );
    assert_status(&r, 200);
    let all = pairs(&serde_json::from_str(r.echo().header("x-all").expect("x-all")).unwrap());
    let first_plain = all.iter().position(|(n, _)| !n.starts_with(':')).unwrap();
    assert!(
        all[first_plain..].iter().all(|(n, _)| !n.starts_with(':')),
        "pseudo-headers not first: {all:?}"
    );
    for pseudo in [":method", ":path", ":authority"] {
        assert!(
            all[..first_plain].iter().any(|(n, _)| n == pseudo),
            "{pseudo} missing: {all:?}"
        );
    }
    assert_eq!(
        only(&all, &["x-a", "x-b"]),
        [("x-b", "1"), ("x-a", "2"), ("x-b", "3")]
    );

    // get_request_header: case-insensitive name, pseudo-headers, `()` when absent.
    let r = envoy.request(
        "GET",
        "/rqh/one",
        &[("x-op", "get-one"), ("x-b", "only")],
        b"",
    );
    let echo = r.echo();
    assert_eq!(echo.header("x-got-b"), Some("only"));
    assert_eq!(echo.header("x-absent"), Some("()"));
    assert_eq!(echo.header("x-got-path"), Some("/rqh/one"));

    // remove_request_header: every value goes; an absent name is no error.
    let r = envoy.request(
        "GET",
        "/rqh/remove",
        &[
            ("x-op", "remove"),
            ("x-gone", "1"),
            ("x-gone", "2"),
            ("x-keep", "k"),
        ],
        b"",
    );
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-gone"), None, "{echo:?}");
    assert_eq!(echo.header("x-keep"), Some("k"));

    // replace_request_header: replaces every value; adds when absent.
    let r = envoy.request(
        "GET",
        "/rqh/replace",
        &[("x-op", "replace"), ("x-one", "a"), ("x-one", "b")],
        b"",
    );
    let echo = r.echo();
    assert_eq!(echo.header_all("x-one"), ["new"]);
    assert_eq!(echo.header_all("x-added"), ["yes"]);

    // add_request_header: the value it had is kept.
    let r = envoy.request("GET", "/rqh/add", &[("x-op", "add"), ("x-dup", "1")], b"");
    assert_eq!(joined(r.echo().header_all("x-dup")), "1,2");

    // replace_request_headers with an array of pairs (duplicates kept).
    let r = envoy.request(
        "GET",
        "/rqh/pairs",
        &[("x-op", "pairs"), ("x-drop", "d"), ("x-keep", "k")],
        b"",
    );
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.path, "/rqh/pairs");
    assert_eq!(echo.header("x-drop"), None);
    assert_eq!(echo.header("x-keep"), Some("k"));
    assert_eq!(joined(echo.header_all("x-new")), "1,2");

    // replace_request_headers with a map (an array value gives one header per item).
    let r = envoy.request(
        "GET",
        "/rqh/map",
        &[("x-op", "map"), ("x-drop", "d"), ("x-keep", "k")],
        b"",
    );
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.path, "/rqh/map");
    assert_eq!(echo.header("x-drop"), None);
    assert_eq!(echo.header("x-keep"), Some("k"));
    assert_eq!(echo.header("x-m"), Some("v"));
    assert_eq!(joined(echo.header_all("x-multi")), "1,2");

    envoy.assert_healthy();
}

/// Several values of one request header: `get_request_header` gives the first, as Envoy does.
#[test]
fn request_header_with_several_values_gives_the_first() {
    let envoy = Envoy::with_script(REQUEST_HEADERS_SCRIPT);
    let r = envoy.request(
        "GET",
        "/rqh/one",
        &[("x-op", "get-one"), ("x-b", "1"), ("x-b", "2")],
        b"",
    );
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(
        joined(echo.header_all("x-b")),
        "1,2",
        "the upstream gets both values"
    );
    assert_eq!(
        echo.header("x-got-b"),
        Some("1"),
        "get_request_header(\"X-B\") gives the first value, as Envoy's get_header_map_value does"
    );
    envoy.assert_healthy();
}

#[test]
fn non_utf8_request_header_values_are_read_lossily() {
    let envoy = Envoy::with_script(REQUEST_HEADERS_SCRIPT);
    let r = envoy.raw(b"GET /rqh/raw HTTP/1.1\r\nhost: localhost\r\nx-op: non-utf8\r\nx-raw: caf\xe9 \xff!\r\n\r\n");
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.path, "/rqh/raw");
    assert_eq!(echo.header("x-raw-seen"), Some("caf\u{fffd} \u{fffd}!"));
    let all = pairs(&serde_json::from_str(echo.header("x-raw-all").expect("x-raw-all")).unwrap());
    assert_eq!(only(&all, &["x-raw"]), [("x-raw", "caf\u{fffd} \u{fffd}!")]);
    // The original bytes go upstream untouched (the echo shows them lossily too).
    assert_eq!(echo.header("x-raw"), Some("caf\u{fffd} \u{fffd}!"));
    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Response headers: every row, seen by the client
// ---------------------------------------------------------------------------------------------

const RESPONSE_HEADERS_SCRIPT: &str = r#"
fn on_request_headers() {
    set_context("op", get_request_header("x-op"));
}

fn on_response_headers() {
    switch get_context("op") {
        "get-all" => add_response_header("x-all", to_json(get_response_headers())),
        "get-one" => {
            add_response_header("x-got-b", get_response_header("X-B"));
            add_response_header("x-absent", type_of(get_response_header("x-nope")));
            add_response_header("x-got-status", get_response_header(":status"));
        }
        "remove" => {
            remove_response_header("x-gone");
            remove_response_header("x-never-there");
        }
        "replace" => {
            replace_response_header("x-one", "new");
            replace_response_header("x-added", "yes");
        }
        "add" => add_response_header("x-dup", "2"),
        "pairs" => {
            let h = get_response_headers().filter(|p| p[0] != "x-gone");
            h.push(["x-new", "1"]);
            h.push(["x-new", "2"]);
            replace_response_headers(h);
        }
        "map" => {
            let m = #{};
            for p in get_response_headers() {
                if p[0] != "x-gone" { m[p[0]] = p[1]; }
            }
            m[":status"] = "203";
            m["x-m"] = "v";
            m["x-multi"] = ["1", "2"];
            replace_response_headers(m);
        }
    }
}
"#;

#[test]
fn response_headers_every_row() {
    let envoy = Envoy::with_script(RESPONSE_HEADERS_SCRIPT);
    let get = |op: &str, query: &str| {
        envoy.request("GET", &format!("/headers?{query}"), &[("x-op", op)], b"")
    };

    // get_response_headers: `:status` first, then the upstream's order, duplicates kept.
    let r = get("get-all", "x-b=1&x-a=2&x-b=3");
    assert_status(&r, 200);
    let all = pairs(&serde_json::from_str(r.header("x-all").expect("x-all")).unwrap());
    assert_eq!(
        all[0],
        (":status".to_string(), "200".to_string()),
        "{all:?}"
    );
    assert_eq!(
        only(&all, &["x-a", "x-b"]),
        [("x-b", "1"), ("x-a", "2"), ("x-b", "3")]
    );
    assert_eq!(
        r.echo().path,
        "/headers?x-b=1&x-a=2&x-b=3",
        "the body is the upstream's"
    );

    // get_response_header: case-insensitive, `:status`, `()` when absent.
    let r = get("get-one", "x-b=only");
    assert_eq!(r.header("x-got-b"), Some("only"));
    assert_eq!(r.header("x-absent"), Some("()"));
    assert_eq!(r.header("x-got-status"), Some("200"));

    // remove_response_header.
    let r = get("remove", "x-gone=1&x-gone=2&x-keep=k");
    assert_status(&r, 200);
    assert_eq!(r.header("x-gone"), None, "{r:?}");
    assert_eq!(r.header("x-keep"), Some("k"));

    // replace_response_header: replace, and add when absent.
    let r = get("replace", "x-one=a&x-one=b");
    assert_eq!(r.header_all("x-one"), ["new"]);
    assert_eq!(r.header_all("x-added"), ["yes"]);

    // add_response_header keeps the value it had.
    let r = get("add", "x-dup=1");
    assert_eq!(joined(r.header_all("x-dup")), "1,2");

    // replace_response_headers with pairs.
    let r = get("pairs", "x-gone=g&x-keep=k");
    assert_status(&r, 200);
    assert_eq!(r.header("x-gone"), None);
    assert_eq!(r.header("x-keep"), Some("k"));
    assert_eq!(joined(r.header_all("x-new")), "1,2");
    assert_eq!(r.echo().path, "/headers?x-gone=g&x-keep=k");

    // replace_response_headers with a map, status included.
    let r = get("map", "x-gone=g&x-keep=k");
    assert_status(&r, 203);
    assert_eq!(r.header("x-gone"), None);
    assert_eq!(r.header("x-keep"), Some("k"));
    assert_eq!(r.header("x-m"), Some("v"));
    assert_eq!(joined(r.header_all("x-multi")), "1,2");
    assert_eq!(r.echo().path, "/headers?x-gone=g&x-keep=k");

    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------------

const REQUEST_BODY_SCRIPT: &str = r#"
fn on_request_headers() {
    set_context("op", get_request_header("x-op"));
}

fn on_request_body() {
    switch get_context("op") {
        "get" => {
            let bytes = get_request_body_bytes();
            replace_request_body(to_json(#{ text: get_request_body(), len: bytes.len(), last: bytes[-1] }));
        }
        "append" => append_request_body("<tail>"),
        "prepend" => prepend_request_body("<head>"),
        "replace" => replace_request_body("replaced"),
        "shrink" => replace_request_body("s"),
        "blob" => {
            let b = blob();
            b.push(0x00);
            b.push(0xff);
            b.push(0x41);
            replace_request_body(b);
        }
        "both" => {
            prepend_request_body("[");
            append_request_body("]");
        }
        "big" => {
            let s = get_request_body();
            replace_request_body(s + "|" + s.len());
        }
        "big-bytes" => {
            let b = get_request_body_bytes();
            replace_request_body(b);
        }
    }
}
"#;

#[test]
fn request_body_read_and_rewritten() {
    let envoy = Envoy::with_script(REQUEST_BODY_SCRIPT);
    let post = |op: &str, body: &[u8]| {
        let r = envoy.request("POST", &format!("/rqb/{op}"), &[("x-op", op)], body);
        assert_status(&r, 200);
        let echo = r.echo();
        echo.assert_framing();
        echo
    };

    // get_request_body (lossy) and get_request_body_bytes (exact).
    let echo = post("get", b"h\xc3\xa9llo \xff");
    let seen: Value = serde_json::from_str(&echo.body).unwrap();
    assert_eq!(
        seen,
        json!({"text": "h\u{e9}llo \u{fffd}", "len": 8, "last": 255})
    );
    assert_eq!(echo.body_len, echo.body.len());

    let echo = post("append", b"body");
    assert_eq!((echo.body.as_str(), echo.body_len), ("body<tail>", 10));
    let echo = post("prepend", b"body");
    assert_eq!((echo.body.as_str(), echo.body_len), ("<head>body", 10));
    let echo = post("replace", b"some body");
    assert_eq!((echo.body.as_str(), echo.body_len), ("replaced", 8));
    let echo = post("shrink", &pattern(5000));
    assert_eq!((echo.body.as_str(), echo.body_len), ("s", 1));
    let echo = post("both", b"x");
    assert_eq!((echo.body.as_str(), echo.body_len), ("[x]", 3));
    let echo = post("blob", b"anything");
    assert_eq!((echo.body.as_str(), echo.body_len), ("\0\u{fffd}A", 3));

    // The same with a chunked request.
    let r = envoy.request_chunked(
        "POST",
        "/rqb/chunked",
        &[("x-op", "both")],
        &[b"ab", b"cd", b"ef"],
    );
    assert_status(&r, 200);
    let echo = r.echo();
    echo.assert_framing();
    assert_eq!((echo.body.as_str(), echo.body_len), ("[abcdef]", 8));

    envoy.assert_healthy();
}

#[test]
fn large_chunked_request_body_is_seen_whole() {
    let envoy = Envoy::with_script(REQUEST_BODY_SCRIPT);
    let body = pattern(400_000);
    let chunks: Vec<&[u8]> = body.chunks(4_000).collect();
    assert_eq!(chunks.len(), 100);
    let r = envoy.request_chunked("POST", "/rqb/big", &[("x-op", "big")], &chunks);
    assert_status(&r, 200);
    let echo = r.echo();
    echo.assert_framing();
    let expected = format!("{}|400000", String::from_utf8_lossy(&body));
    assert_eq!(echo.body_len, expected.len());
    assert!(
        echo.body == expected,
        "upstream body differs (len {} vs {})",
        echo.body.len(),
        expected.len()
    );

    // As a blob too: limits.max_array_size (which also bounds blobs) defaults to
    // max_body_size, so a body the plugin buffers can be read as bytes.
    let r = envoy.request_chunked("POST", "/rqb/big-bytes", &[("x-op", "big-bytes")], &chunks);
    assert_status(&r, 200);
    r.echo().assert_framing();
    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Response bodies
// ---------------------------------------------------------------------------------------------

const RESPONSE_BODY_SCRIPT: &str = r#"
fn on_request_headers() {
    set_context("op", get_request_header("x-op"));
}

fn on_response_body() {
    switch get_context("op") {
        "get" => {
            let bytes = get_response_body_bytes();
            replace_response_body(to_json(#{ text: get_response_body(), len: bytes.len(), last: bytes[-1] }));
        }
        "append" => append_response_body("<tail>"),
        "prepend" => prepend_response_body("<head>"),
        "replace" => replace_response_body("replaced"),
        "blob" => {
            let b = blob();
            b.push(0x00);
            b.push(0xff);
            b.push(0x41);
            replace_response_body(b);
        }
        "big" => {
            let s = get_response_body();
            replace_response_body(s.len() + ":" + s.sub_string(0, 5) + ":" + s.sub_string(s.len() - 3, 3));
        }
    }
}
"#;

/// A body whose framing the client checked: a content-length, when present, is its length.
fn framed_body(r: &Reply) -> String {
    assert_status(r, 200);
    if let Some(len) = r.header("content-length") {
        assert_eq!(len.parse::<usize>().ok(), Some(r.body.len()), "{r:?}");
    }
    r.text()
}

#[test]
fn response_body_read_and_rewritten() {
    let envoy = Envoy::with_script(RESPONSE_BODY_SCRIPT);
    let get = |op: &str, path: &str| envoy.request("GET", path, &[("x-op", op)], b"");

    let seen: Value = serde_json::from_str(&framed_body(&get("get", "/bytes/10"))).unwrap();
    assert_eq!(seen, json!({"text": "abcdefghij", "len": 10, "last": b'j'}));
    assert_eq!(framed_body(&get("append", "/bytes/10")), "abcdefghij<tail>");
    let expected = format!("<head>{}", String::from_utf8(pattern(20)).unwrap());
    assert_eq!(framed_body(&get("prepend", "/chunks/4/5")), expected);
    assert_eq!(framed_body(&get("replace", "/json")), "replaced");
    let r = get("blob", "/json");
    framed_body(&r);
    assert_eq!(r.body, [0x00, 0xff, 0x41]);
    // 200 kB in 50 chunks, seen whole.
    let tail = String::from_utf8(pattern(200_000)[199_997..].to_vec()).unwrap();
    assert_eq!(
        framed_body(&get("big", "/chunks/50/4000")),
        format!("200000:abcde:{tail}")
    );
    // Without a body phase op the body passes untouched.
    assert_eq!(get("none", "/bytes/26").body, pattern(26));

    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Local responses
// ---------------------------------------------------------------------------------------------

const LOCAL_RESPONSE_SCRIPT: &str = r#"
fn on_request_headers() {
    let op = get_request_header("x-op");
    set_context("op", op);
    switch op {
        "rqh-pairs" => send_http_response(201, [["x-a", "1"], ["x-a", "2"], ["content-type", "text/plain"]], "from request headers"),
        "rqh-map" => {
            let b = blob();
            b.push(0x00);
            b.push(0xff);
            b.push(0x41);
            send_http_response(202, #{ "x-m": "v", "x-multi": ["1", "2"] }, b);
        }
        "rqh-empty" => send_http_response(200, [], ()),
    }
}

fn on_request_body() {
    if get_context("op") == "rqb" {
        send_http_response(403, [["x-p", "body"]], "got " + get_request_body());
    }
}

fn on_response_headers() {
    if get_context("op") == "rsh" {
        send_http_response(418, #{ "x-from": "response" }, "teapot after " + get_response_header(":status"));
    }
}
"#;

#[test]
fn send_http_response_from_each_phase() {
    let envoy = Envoy::with_script(LOCAL_RESPONSE_SCRIPT);

    let r = envoy.request("GET", "/local/rqh-pairs", &[("x-op", "rqh-pairs")], b"");
    assert_status(&r, 201);
    assert_eq!(r.header_all("x-a"), ["1", "2"]);
    assert_eq!(r.text(), "from request headers");
    assert_eq!(
        envoy.upstream.hits("/local/rqh-pairs"),
        0,
        "the request went upstream"
    );

    let r = envoy.request("GET", "/local/rqh-map", &[("x-op", "rqh-map")], b"");
    assert_status(&r, 202);
    assert_eq!(r.header("x-m"), Some("v"));
    assert_eq!(joined(r.header_all("x-multi")), "1,2");
    assert_eq!(r.body, [0x00, 0xff, 0x41]);
    assert_eq!(envoy.upstream.hits("/local/rqh-map"), 0);

    let r = envoy.request("GET", "/local/rqh-empty", &[("x-op", "rqh-empty")], b"");
    assert_status(&r, 200);
    assert!(r.body.is_empty(), "{r:?}");
    assert_eq!(envoy.upstream.hits("/local/rqh-empty"), 0);

    let r = envoy.request("POST", "/local/rqb", &[("x-op", "rqb")], b"hello");
    assert_status(&r, 403);
    assert_eq!(r.header("x-p"), Some("body"));
    assert_eq!(r.text(), "got hello");

    // From the response headers: the upstream answered 201; the client sees the local answer,
    // which does not pass through the plugin's response phases again.
    let r = envoy.request("GET", "/status/201", &[("x-op", "rsh")], b"");
    assert_status(&r, 418);
    assert_eq!(r.header("x-from"), Some("response"));
    assert_eq!(r.text(), "teapot after 201");
    assert_eq!(envoy.upstream.hits("/status/201"), 1);

    // And the next request is served normally.
    assert_eq!(envoy.get("/local/after").echo().path, "/local/after");
    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// config(): the Higress hello-world
// ---------------------------------------------------------------------------------------------

const HELLO_WORLD_SCRIPT: &str = r#"
fn on_request_headers() {
    add_request_header("hello", "world");
    if config().mockEnable == true {
        send_http_response(200, [], "hello world");
    }
}
"#;

#[test]
fn hello_world_adds_a_header() {
    let envoy =
        Envoy::start(json!({ "script": HELLO_WORLD_SCRIPT, "config": { "mockEnable": false } }));
    let r = envoy.get("/hello");
    assert_status(&r, 200);
    assert_eq!(r.echo().header("hello"), Some("world"));
    envoy.assert_healthy();
}

#[test]
fn hello_world_mock_answers_locally() {
    let envoy =
        Envoy::start(json!({ "script": HELLO_WORLD_SCRIPT, "config": { "mockEnable": true } }));
    let r = envoy.get("/hello");
    assert_status(&r, 200);
    assert_eq!(r.text(), "hello world");
    assert_eq!(envoy.upstream.hits("/hello"), 0);
    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Per-request context
// ---------------------------------------------------------------------------------------------

#[test]
fn context_is_kept_per_request_across_concurrent_requests() {
    let envoy = Envoy::with_script(
        r#"
        fn on_request_headers() {
            let id = get_request_header("x-id");
            set_context("id", id);
            set_context("map", #{ id: id, n: 1 });
        }
        fn on_response_headers() {
            let m = get_context("map");
            replace_response_header("x-id-back", get_context("id"));
            replace_response_header("x-map-back", m.id + "/" + m.n);
            replace_response_header("x-unset", type_of(get_context("never-set")));
        }
        "#,
    );
    const N: usize = 50;
    // Every request waits upstream until all N arrived: all N are in flight in Envoy at once.
    let replies: Vec<(String, Reply)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let envoy = &envoy;
                s.spawn(move || {
                    let id = format!("id-{i}");
                    let r =
                        envoy.request("GET", &format!("/barrier/ctx/{N}"), &[("x-id", &id)], b"");
                    (id, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, r) in &replies {
        assert_status(r, 200);
        let echo = r.echo();
        assert_eq!(
            echo.raw["barrier"], "reached",
            "the requests were not all in flight together"
        );
        assert_eq!(echo.header("x-id"), Some(id.as_str()));
        assert_eq!(r.header("x-id-back"), Some(id.as_str()), "{r:?}");
        assert_eq!(r.header("x-map-back"), Some(format!("{id}/1").as_str()));
        assert_eq!(r.header("x-unset"), Some("()"));
    }
    assert_eq!(envoy.upstream.max_in_flight(), N);
    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Script failures: the error policy, limits, wrong phases
// ---------------------------------------------------------------------------------------------

const FAILING_SCRIPT: &str = r#"
fn recurse(n) { recurse(n + 1) }

fn on_request_headers() {
    let op = get_request_header("x-op");
    set_context("op", op);
    switch op {
        "throw" => throw "secret-detail-42",
        "loop" => {
            let i = 0;
            loop { i += 1; }
        }
        "recurse" => recurse(0),
        "grow" => {
            let s = "0123456789abcdef";
            loop { s += s; }
        }
        // Work on a large value, and closures a native function calls, count as operations:
        // both loops used to run for minutes within the limits (the client gives up at 30 s).
        "scan" => {
            let s = "x";
            s.pad(1000000, 'x');
            loop { s.to_upper(); }
        }
        "callbacks" => {
            let a = [];
            a.pad(10000, 1);
            loop { a.map(|x| x + 1); }
        }
        // One sort of 1.2 million strings: ~24 million comparisons, which counted as a few
        // operations and held the worker for seconds. It is refused before it starts.
        "sort" => {
            let s = "3,1,2,9,4,7,5,8,6,";
            while s.len() < 2000000 { s += s; }
            let a = s.split(",");
            a.sort();
        }
        "wrong-phase" => get_request_body(),
    }
}

fn on_response_headers() {
    if get_context("op") == "wrong-phase-response" {
        get_request_header("x-op");
    }
}
"#;

/// Sends `op` to an Envoy running [`FAILING_SCRIPT`] (or a variant), returns the reply.
fn fail_with(envoy: &Envoy, op: &str) -> Reply {
    envoy.request("GET", &format!("/fail/{op}"), &[("x-op", op)], b"")
}

#[test]
fn script_errors_answer_with_the_default_error_policy() {
    let envoy = Envoy::with_script(FAILING_SCRIPT);
    let cases = [
        // (op, a phrase of the logged error)
        ("throw", "secret-detail-42"),
        ("loop", "operations"),
        ("recurse", "limits.max_call_depth"),
        ("grow", "too large"),
        ("scan", "operations"),
        ("callbacks", "operations"),
        ("sort", "operations"),
        (
            "wrong-phase",
            "get_request_body() is not available in on_request_headers",
        ),
        (
            "wrong-phase-response",
            "get_request_header() is not available in on_response_headers",
        ),
    ];
    for (op, phrase) in cases {
        let r = fail_with(&envoy, op);
        assert_status(&r, 500);
        assert_eq!(r.text(), "Internal Server Error\n", "{op}");
        assert!(
            !r.text().contains("secret"),
            "the body leaks the script's message"
        );
        let path = format!("/fail/{op}");
        let upstream_hits = if op == "wrong-phase-response" { 1 } else { 0 };
        assert_eq!(
            envoy.upstream.hits(&path),
            upstream_hits,
            "{op}: upstream hits"
        );
        // One line: the plugin's, the phase, the request id, the script's message.
        let phase = if op == "wrong-phase-response" {
            "on_response_headers"
        } else {
            "on_request_headers"
        };
        let line = envoy.wait_for_log(phrase);
        assert!(
            line.contains("wasm log proxy-rhai: script error in "),
            "{line}"
        );
        assert!(
            line.contains(&format!("script error in {phase} (request ")),
            "{line}"
        );
        // The next request is served normally.
        let next = envoy.get(&format!("/after/{op}"));
        assert_status(&next, 200);
        assert_eq!(next.echo().path, format!("/after/{op}"));
    }
    // "loop", "scan", "callbacks" and "sort" each ended on the operations limit.
    assert_eq!(
        envoy.plugin_log_lines("limits.max_operations").len(),
        4,
        "{}",
        envoy.log()
    );
    envoy.assert_healthy();
}

#[test]
fn fail_open_lets_the_request_through() {
    let envoy = Envoy::start(json!({
        "script": r#"
            fn on_request_headers() {
                let op = get_request_header("x-op");
                set_context("op", op);
                if op == "throw" { throw "failing open"; }
            }
            fn on_request_body() {
                if get_context("op") == "throw-body" { throw "failing open in the body"; }
            }
        "#,
        "error_policy": { "mode": "fail_open" }
    }));
    let r = envoy.request("GET", "/open/headers", &[("x-op", "throw")], b"");
    assert_status(&r, 200);
    assert_eq!(r.echo().path, "/open/headers");
    envoy.wait_for_log("failing open");

    let r = envoy.request("POST", "/open/body", &[("x-op", "throw-body")], b"payload");
    assert_status(&r, 200);
    let echo = r.echo();
    echo.assert_framing();
    assert_eq!(
        (echo.path.as_str(), echo.body.as_str()),
        ("/open/body", "payload")
    );
    envoy.wait_for_log("failing open in the body");

    assert_eq!(envoy.get("/open/after").echo().path, "/open/after");
    envoy.assert_healthy();
}

/// A failed call is all or nothing: its trailer writes are undone, and so is a callback that
/// failed after `resume_http_request()` (the resume takes effect when it returns).
#[test]
fn fail_open_forwards_nothing_a_failed_call_wrote() {
    let envoy = Envoy::builder(json!({
        "script": r#"
            fn on_request_headers() {
                if get_request_header("x-op") == "resume" {
                    http_get("callout", "/token", [], 5000, |status| {
                        add_request_header("x-before", "1");
                        resume_http_request();
                        add_request_header("x-after", "1");
                        throw "failing after the resume";
                    });
                }
            }
            fn on_request_trailers() {
                add_request_trailer("x-added", "1");
                remove_request_trailer("x-t");
                throw "failing in the trailers";
            }
        "#,
        "error_policy": { "mode": "fail_open" }
    }))
    .enable_trailers()
    .start();
    let r = envoy.request("GET", "/open/resume", &[("x-op", "resume")], b"");
    assert_status(&r, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-before"), None);
    assert_eq!(echo.header("x-after"), None);
    envoy.wait_for_log("failing after the resume");

    let r = envoy.request_with_trailers("POST", "/open/trailers", &[], b"abc", &[("x-t", "old")]);
    assert_status(&r, 200);
    assert_eq!(r.echo().raw["trailers"], json!([["x-t", "old"]]));
    envoy.wait_for_log("failing in the trailers");
    envoy.assert_healthy();
}

#[test]
fn custom_error_answer_and_body_size_limit() {
    let envoy = Envoy::start(json!({
        "script": r#"
            fn on_request_headers() {
                if get_request_header("x-op") == "throw" { throw "custom"; }
            }
            fn on_request_body() {}
        "#,
        "limits": { "max_body_size": 1000 },
        "error_policy": { "mode": "fail_closed", "status": 503, "body": "busy, try later" }
    }));
    let r = envoy.request("GET", "/custom/throw", &[("x-op", "throw")], b"");
    assert_status(&r, 503);
    assert_eq!(r.text(), "busy, try later");
    assert_eq!(envoy.upstream.hits("/custom/throw"), 0);

    // A body over limits.max_body_size: 413, whatever the error policy.
    let r = envoy.request("POST", "/custom/big", &[], &pattern(5_000));
    assert_status(&r, 413);
    let r = envoy.request("POST", "/custom/small", &[], &pattern(500));
    assert_status(&r, 200);
    assert_eq!(r.echo().body_len, 500);

    assert_eq!(envoy.get("/custom/after").echo().path, "/custom/after");
    envoy.assert_healthy();
}

/// The sandbox must hold at every limit the configuration accepts: with `max_call_depth` at
/// the top of its allowed range, a script recursing past it, with big frames (nested
/// expressions at each level), must end in a script error answered by the error policy, never
/// in a trap of the VM (after a trap Envoy answers every request 503).
#[test]
fn deep_recursion_at_the_highest_allowed_call_depth_does_not_trap_the_vm() {
    let (_, _, max_depth) = proxy_rhai::config::Limits::RANGES
        .into_iter()
        .find(|(name, _, _)| *name == "max_call_depth")
        .unwrap();
    let nested = format!("{}f(n - 1){}", "1 + (".repeat(20), ")".repeat(20));
    let envoy = Envoy::start(json!({
        "script": format!(r#"
            fn f(n) {{ if n > 0 {{ let a = [n, n, n]; a[0] - n + {nested} }} else {{ 0 }} }}
            fn on_request_headers() {{
                let n = get_request_header("x-n");
                if n != () {{ replace_request_header("x-depth", "" + f(parse_int(n))); }}
            }}
        "#),
        "limits": { "max_call_depth": max_depth }
    }));
    let past_the_limit = (max_depth + 10).to_string();
    let r = envoy.request("GET", "/deep", &[("x-n", &past_the_limit)], b"");
    let next = envoy.get("/next");
    envoy.assert_healthy();
    assert_status(&r, 500);
    envoy.wait_for_log("limits.max_call_depth");
    assert_status(&next, 200);
}

/// Values kept with `set_context` live outside Rhai's size checks: a script storing large
/// values in a loop must be stopped by a limit (a script error, answered by the error policy),
/// not exhaust the VM's memory.
#[test]
fn context_values_cannot_exhaust_the_vm_memory() {
    let envoy = Envoy::with_script(
        r#"
        fn on_request_headers() {
            if get_request_header("x-op") == "hog" {
                let s = "0123456789abcdef";
                while s.len() < 1000000 { s += s; }
                let i = 0;
                loop { set_context("k" + i, s + i); i += 1; }
            }
        }
        "#,
    );
    let r = envoy.request("GET", "/hog", &[("x-op", "hog")], b"");
    let next = envoy.get("/next");
    envoy.assert_healthy();
    assert_status(&r, 500);
    assert_eq!(r.text(), "Internal Server Error\n");
    assert_status(&next, 200);
}

// ---------------------------------------------------------------------------------------------
// The harness's own options, and what Envoy does around the plugin
// ---------------------------------------------------------------------------------------------

#[test]
fn builder_options_buffer_limit_route_timeout_extra_cluster_and_http2_listener() {
    let extra = crate::support::Upstream::start();
    let envoy = Envoy::builder(json!({
        "script": r#"
            fn on_request_headers() { add_request_header("x-plugin", "ran"); }
            fn on_request_body() { append_request_body("+"); }
        "#
    }))
    .buffer_limit(64 * 1024)
    .route_timeout(std::time::Duration::from_millis(500))
    .cluster("extra", extra.port())
    .allow_http2()
    .start();

    // HTTP/1.1 still served on a listener that also takes HTTP/2.
    let r = envoy.request("POST", "/opts/small", &[], b"abc");
    assert_status(&r, 200);
    let echo = r.echo();
    echo.assert_framing();
    assert_eq!(
        (echo.body.as_str(), echo.header("x-plugin")),
        ("abc+", Some("ran"))
    );

    // A body the plugin buffers past the connection's buffer limit: Envoy answers 413.
    let r = envoy.request("POST", "/opts/big", &[], &pattern(200_000));
    assert_status(&r, 413);
    assert_eq!(envoy.upstream.hits("/opts/big"), 0);

    // The route's timeout: Envoy answers 504.
    let r = envoy.get("/delay/3000");
    assert_status(&r, 504);

    // The extra cluster is configured.
    let clusters = envoy.admin_request("GET", "/clusters").unwrap().text();
    assert!(
        clusters.contains(&format!("extra::127.0.0.1:{}", extra.port())),
        "{clusters}"
    );

    envoy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Configurations the plugin refuses: Envoy does not start (see tests/support/envoy.rs)
// ---------------------------------------------------------------------------------------------

/// Starts Envoy with a configuration the plugin must refuse; returns the refusal line.
fn refused(builder: crate::support::EnvoyBuilder) -> String {
    let log = match builder.try_start() {
        Ok(envoy) => panic!(
            "Envoy started with a configuration the plugin should refuse; log:\n{}",
            envoy.log()
        ),
        Err(log) => log,
    };
    assert!(
        log.contains("Unable to create Wasm plugin proxy-rhai"),
        "{log}"
    );
    log.lines()
        .find(|l| l.contains("proxy-rhai: configuration refused: "))
        .unwrap_or_else(|| panic!("no refusal line in the log:\n{log}"))
        .to_string()
}

#[test]
fn refuses_invalid_json() {
    let line = refused(Envoy::builder_raw(
        r#"{"script": "fn on_request_headers() {}""#,
    ));
    assert!(line.contains("plugin configuration is not valid"), "{line}");
}

#[test]
fn refuses_a_configuration_without_script() {
    let line = refused(Envoy::builder(json!({ "config": { "a": 1 } })));
    assert!(line.contains(r#"no "script""#), "{line}");
}

#[test]
fn refuses_a_script_that_does_not_compile_and_says_where() {
    let line = refused(Envoy::builder(
        json!({ "script": "fn on_request_headers() {\n    let x = ;\n}\n" }),
    ));
    assert!(line.contains("script does not compile"), "{line}");
    assert!(line.contains("line 2, column"), "{line}");
}

#[test]
fn refuses_a_script_without_phase_function() {
    let line = refused(Envoy::builder(json!({ "script": "fn helper() { 1 }" })));
    assert!(line.contains("script defines no phase function"), "{line}");
}

#[test]
fn refuses_a_script_whose_top_level_fails() {
    let line = refused(Envoy::builder(
        json!({ "script": "throw \"at load\";\nfn on_request_headers() {}" }),
    ));
    assert!(line.contains("script failed while loading"), "{line}");
    assert!(line.contains("at load"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Header map rules: the emulator's (src/header_map.rs) against Envoy's
// ---------------------------------------------------------------------------------------------

/// Header names Envoy 1.40 keeps inline (adding to one appends `,value`), measured with the
/// probe below; `src/header_map.rs` has the same lists.
const INLINE_PROBE: &str = "accept accept-encoding authorization cache-control origin referer \
    user-agent x-forwarded-for x-forwarded-host te expect pragma if-match if-none-match \
    content-encoding grpc-timeout via x-client-trace-id cookie set-cookie \
    accept-language range forwarded x-real-ip traceparent x-b3-traceid x-custom-name \
    access-control-request-method access-control-request-headers";
const INLINE_PROBE_RESPONSE: &str = "cache-control etag vary age expires last-modified location \
    access-control-allow-origin access-control-allow-methods access-control-allow-headers \
    access-control-expose-headers access-control-max-age access-control-allow-credentials \
    content-encoding grpc-status grpc-message x-envoy-degraded set-cookie accept-ranges \
    content-language retry-after www-authenticate x-custom-name";

/// Each `x-op` is a sequence of header operations, on the request headers and then on the
/// response headers; reads made along the way go out in `x-hseen`.
const HEADER_RULES_SCRIPT: &str = r#"
fn ops(op, side) {
    let get = if side == "req" { |n| get_request_header(n) } else { |n| get_response_header(n) };
    let all = if side == "req" { || get_request_headers() } else { || get_response_headers() };
    let add = if side == "req" { |n, v| add_request_header(n, v) } else { |n, v| add_response_header(n, v) };
    let put = if side == "req" { |n, v| replace_request_header(n, v) } else { |n, v| replace_response_header(n, v) };
    let del = if side == "req" { |n| remove_request_header(n) } else { |n| remove_response_header(n) };
    let set = if side == "req" { |h| replace_request_headers(h) } else { |h| replace_response_headers(h) };
    let seen = [];
    switch op {
        // Three writes: sent one by one.
        "few" => {
            seen.push(get.call("x-ha"));
            seen.push(get.call("X-HB"));
            put.call("x-ha", "R");
            add.call("cache-control", "c2");
            add.call("x-hb", "b2");
        }
        // Many writes with reads between them: one map read, one map write.
        "many" => {
            for i in 0..5 { add.call(`x-hadd-${i}`, get.call("x-ha") ?? "none"); }
            put.call("x-ha", "R");
            seen.push(get.call("x-ha"));
            add.call("cache-control", "c2");
            add.call("cache-control", "");
            seen.push(get.call("cache-control"));
            add.call("x-hb", "b2");
            del.call("x-hc");
            seen.push(get.call("x-hc"));
            put.call("x-hc", "back");
            add.call("vary", "v1");
            add.call("vary", "v2");
            seen.push(get.call("vary"));
            seen.push(all.call().filter(|h| h[0].starts_with("x-h")).len());
            if side == "req" { put.call(":path", "/moved"); add.call("user-agent", "u2"); }
            else { add.call("etag", "e2"); }
        }
        // The whole map replaced, then single writes on top.
        "all" => {
            let h = all.call();
            h.push(["cache-control", "c3"]);
            h.push(["x-hb", "b3"]);
            h.insert(0, ["x-hfirst", "f"]);
            set.call(h);
            seen.push(get.call("cache-control"));
            add.call("x-hb", "b4");
            del.call("x-ha");
        }
        // Every probed name gets two values: which ones Envoy joins.
        "probe" => {
            let names = if side == "req" { INLINE } else { INLINE_RESPONSE };
            for n in names.split(" ") { if n != "" { add.call(n, "p1"); add.call(n, "p2"); } }
        }
    }
    add.call("x-hseen", to_json(seen));
}
const INLINE = "__INLINE__";
const INLINE_RESPONSE = "__INLINE_RESPONSE__";
fn on_request_headers() {
    let op = get_request_header("x-op");
    set_context("op", op);
    ops(op, "req");
}
fn on_response_headers() { ops(get_context("op"), "resp"); }
"#;

/// What a filter sees of a request before any script writes, in Envoy and in the emulator:
/// Envoy's connection manager adds `x-forwarded-proto` and an `x-request-id`, a client's
/// `x-forwarded-proto` sets `:scheme`, and a client's `x-request-id` is kept.
#[test]
fn request_headers_a_filter_sees_match_envoy() {
    use proxy_rhai::emulator::{Emulator, Request, Response};

    // The properties that name the same things come along, as pairs too.
    let script = r#"
fn on_request_headers() {
    let seen = get_request_headers();
    seen.push(["request.scheme", get_property("request.scheme")]);
    seen.push(["request.id is x-request-id", `${get_property("request.id") == get_request_header("x-request-id")}`]);
    send_http_response(200, [], to_json(seen));
}"#;
    let envoy = Envoy::with_script(script);
    let emulator = Emulator::with_script(script, json!({})).unwrap();
    // Envoy's own ids are random UUIDs (version 4): compared by their shape.
    let uuid_v4 = |v: &str| {
        let groups: Vec<&str> = v.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups.iter().all(|g| {
                g.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            && groups[2].starts_with('4')
            && groups[3].starts_with(['8', '9', 'a', 'b'])
    };
    let seen = |body: &[u8]| -> Vec<(String, String)> {
        let pairs: Vec<(String, String)> = serde_json::from_slice(body).expect("the header pairs");
        pairs
            .into_iter()
            .map(|(n, v)| match n.as_str() {
                "x-request-id" if uuid_v4(&v) => (n, "<uuid v4>".into()),
                _ => (n, v),
            })
            .collect()
    };
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8]);
    let cases: [Case; 4] = [
        ("GET", &[("accept", "a1"), ("accept", "a2")], b""),
        (
            "GET",
            &[
                ("x-forwarded-proto", "HTTPS"),
                ("x-request-id", "client-id"),
            ],
            b"",
        ),
        ("GET", &[("x-forwarded-proto", "foo")], b""),
        ("POST", &[("content-type", "text/plain")], b"hello"),
    ];
    for (method, headers, body) in cases {
        let r = envoy.request(method, "/seen", headers, body);
        assert_status(&r, 200);

        let mut request = Request::new(method, "/seen", body.to_vec());
        request.authority = "localhost".into();
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let o = emulator.run(&request, &mut Response::ok(""));
        assert_eq!(o.response.status, 200, "{:?}", o.log);
        let emulated = seen(&o.response.body);
        assert_eq!(seen(&r.body), emulated, "{method} {headers:?}");
        // Equal lists could still agree on a wrong id: the id is a UUID or the client's, and
        // the `request.id` property is the header.
        let has = |name: &str, value: &str| emulated.iter().any(|(n, v)| n == name && v == value);
        assert!(has("x-request-id", "<uuid v4>") || has("x-request-id", "client-id"));
        assert!(has("request.id is x-request-id", "true"));
    }
}

#[test]
fn header_map_rules_match_envoy() {
    use proxy_rhai::emulator::{Emulator, Request, Response};

    let script = HEADER_RULES_SCRIPT
        .replace(
            "__INLINE__",
            &INLINE_PROBE
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        )
        .replace(
            "__INLINE_RESPONSE__",
            &INLINE_PROBE_RESPONSE
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        );
    let envoy = Envoy::with_script(&script);
    let emulator = Emulator::with_script(&script, json!({})).unwrap();
    // What the rules decide: the script's names, in order (Envoy adds its own headers too).
    let ours = |pairs: &[(String, String)]| -> Vec<(String, String)> {
        let probed: Vec<&str> = INLINE_PROBE
            .split_whitespace()
            .chain(INLINE_PROBE_RESPONSE.split_whitespace())
            .collect();
        pairs
            .iter()
            .filter(|(n, _)| {
                let n = n.to_ascii_lowercase();
                n.starts_with("x-h") || n == "user-agent" || probed.contains(&n.as_str())
            })
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    let text = |pairs: &[(String, Vec<u8>)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    };
    for op in ["few", "many", "all", "probe"] {
        let headers = [
            ("x-op", op),
            ("x-ha", "1"),
            ("x-hb", "2"),
            ("x-ha", "3"),
            ("x-hc", "4"),
            ("user-agent", "ua"),
            ("cache-control", "c1"),
            // Repeated by the client: Envoy's codec joins an inline header already.
            ("accept", "a1"),
            ("accept", "a2"),
        ];
        let r = envoy.request("GET", "/rules", &headers, b"");
        assert_status(&r, 200);
        let echo = r.echo();

        let mut request = Request::get("/rules");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let mut upstream = Response::ok("{}").header("content-type", "application/json");
        let o = emulator.run(&request, &mut upstream);
        let forwarded = text(&o.upstream.as_ref().expect("reached the upstream").headers);
        let path = forwarded
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.as_str());

        assert_eq!(
            ours(&echo.headers),
            ours(&forwarded),
            "{op}: request headers differ"
        );
        assert_eq!(Some(echo.path.as_str()), path, "{op}: :path differs");
        assert_eq!(
            ours(&r.headers),
            ours(&text(&o.response.headers)),
            "{op}: response headers differ"
        );
        if op == "many" {
            // The batch was used: one map read and one map write per side, no single write.
            let calls = |prefix: &str| o.trace.iter().filter(|c| c.starts_with(prefix)).count();
            assert_eq!(
                (calls("get_map"), calls("set_map")),
                (2, 2),
                "{:?}",
                o.trace
            );
            assert_eq!(
                calls("add_header") + calls("replace_header"),
                0,
                "{:?}",
                o.trace
            );
        }
    }
    envoy.assert_healthy();
}
