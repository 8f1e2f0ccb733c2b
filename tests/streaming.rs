//! Chunk phases: bodies seen and changed piece by piece as they pass, the choice between a
//! buffered and a streamed body, and the `sse_events` / `lines` splitters.

use proxy_rhai::emulator::{Emulator, Reply, Request, Response};
use serde_json::json;

fn plugin(script: &str) -> Emulator {
    Emulator::with_script(script, json!({})).expect("script configures")
}

fn response(body: &str, sizes: &[usize]) -> Response {
    let mut response = Response::ok(body);
    response.chunk_sizes = sizes.to_vec();
    response
}

fn messages(o: &proxy_rhai::emulator::Outcome) -> Vec<String> {
    o.log.iter().map(|l| l.message.clone()).collect()
}

#[test]
fn each_chunk_is_seen_in_order_and_passes_when_its_call_returns() {
    let p = plugin(
        r#"fn on_response_chunk(chunk, last) {
            log_info(`${chunk}|${last}|${get_response_body()}|${get_response_body_bytes().len()}`);
        }"#,
    );
    let o = p.run(&Request::get("/"), &mut response("abcdefgh", &[3, 3]));
    assert_eq!(
        messages(&o),
        ["abc|false|abc|3", "def|false|def|3", "gh|true|gh|2"]
    );
    assert_eq!(
        o.response.chunks,
        [b"abc".to_vec(), b"def".to_vec(), b"gh".to_vec()]
    );
    assert_eq!(o.response.body, b"abcdefgh");
    assert!(o.script_errors().is_empty());
}

#[test]
fn a_chunk_is_replaced_dropped_or_framed() {
    let p = plugin(
        r#"fn on_request_chunk(chunk, last) {
            if chunk == "drop" { replace_request_body(""); return; }
            replace_request_body(chunk.to_upper());
            prepend_request_body("<");
            append_request_body(">");
            if last { append_request_body("END"); }
        }"#,
    );
    let mut request = Request::post("/", "abdropcd");
    request.chunk_sizes = vec![2, 4];
    let o = p.run(&request, &mut Response::ok(""));
    assert_eq!(
        o.upstream_header("content-length"),
        None,
        "rewritten: no stale length"
    );
    let up = o.upstream.unwrap();
    assert_eq!(up.chunks, [b"<AB>".to_vec(), b"<CD>END".to_vec()]);
    assert_eq!(up.body, b"<AB><CD>END");
}

#[test]
fn a_body_the_script_cannot_change_keeps_its_content_length() {
    // Only the request's body is written: the response keeps its length and its framing.
    let p = plugin(
        r#"fn on_request_chunk(chunk, last) { replace_request_body(chunk.to_upper()); }
        fn on_response_chunk(chunk, last) { log_info(chunk); }"#,
    );
    let mut request = Request::post("/", "abcd");
    request.chunk_sizes = vec![2];
    let o = p.run(&request, &mut response("efgh", &[2]));
    assert_eq!(o.upstream_header("content-length"), None);
    assert_eq!(o.upstream.as_ref().unwrap().body, b"ABCD");
    assert_eq!(o.response_header("content-length").as_deref(), Some("4"));
    assert_eq!(o.response.body, b"efgh");
    assert_eq!(messages(&o), ["ef", "gh"]);
}

#[test]
fn a_chunk_never_splits_a_utf8_character() {
    // "é" is two bytes: the first chunk ends inside it.
    let p = plugin(
        r#"fn on_response_chunk(chunk, last) {
            log_info(`${chunk}:${get_response_body_bytes().len()}`);
            replace_response_body(`[${chunk}]`);
        }"#,
    );
    let o = p.run(&Request::get("/"), &mut response("caf\u{e9}s", &[4]));
    assert_eq!(messages(&o), ["caf:3", "\u{e9}s:3"]);
    // The incomplete character was held back with the bytes after it, and went on with the
    // next chunk: replacing a chunk never cuts a character.
    assert_eq!(
        String::from_utf8(o.response.body).unwrap(),
        "[caf][\u{e9}s]"
    );
}

#[test]
fn binary_chunks_are_not_held_back() {
    let p = plugin(
        r#"fn on_response_chunk(chunk, last) { log_info(get_response_body_bytes().len()); }"#,
    );
    // Not text (0xff): the lead byte 0xc3 at the end is not held.
    let mut body = vec![0xff, b'a', 0xc3];
    body.extend_from_slice(b"xyz");
    let mut r = Response::ok(body.clone());
    r.chunk_sizes = vec![3];
    let o = p.run(&Request::get("/"), &mut r);
    assert_eq!(messages(&o), ["3", "3"]);
    assert_eq!(o.response.body, body);
}

#[test]
fn a_streamed_body_is_not_limited_by_max_body_size() {
    let p = Emulator::new(
        &json!({
            "script": r#"fn on_request_chunk(chunk, last) {
                set_context("n", (get_context("n") ?? 0) + chunk.len());
                if last { log_info(get_context("n")); }
            }"#,
            "limits": { "max_body_size": 1000 }
        })
        .to_string(),
    )
    .unwrap();
    let mut request = Request::post("/", vec![b'x'; 100_000]);
    request.chunk_size = 700;
    let o = p.run(&request, &mut Response::ok(""));
    assert_eq!(messages(&o), ["100000"]);
    assert_eq!(o.upstream.unwrap().body.len(), 100_000);
}

#[test]
fn the_header_phase_chooses_buffered_or_streamed() {
    let script = r#"
        fn on_request_headers() {
            let how = get_request_header("x-how");
            if how == "buffer" { buffer_request_body(); }
            if how == "stream" { stream_request_body(); }
            if how == "skip" { skip_request_body(); }
        }
        fn on_request_body() { log_info("body " + get_request_body().len()); }
        fn on_request_chunk(chunk, last) { log_info("chunk " + chunk.len()); }
    "#;
    let p = plugin(script);
    let run = |how: &str| {
        let mut request = Request::post("/", "0123456789").header("x-how", how);
        request.chunk_size = 4;
        messages(&p.run(&request, &mut Response::ok("")))
    };
    assert_eq!(run("buffer"), ["body 10"]);
    assert_eq!(run("stream"), ["chunk 4", "chunk 4", "chunk 2"]);
    assert_eq!(run("default"), ["chunk 4", "chunk 4", "chunk 2"]);
    assert!(run("skip").is_empty());

    // Choosing a phase the script doesn't define is an error.
    let p = plugin(
        r#"fn on_request_headers() { buffer_request_body(); }
           fn on_request_chunk(chunk, last) { }"#,
    );
    let o = p.run(&Request::post("/", "x"), &mut Response::ok(""));
    let errors = o.script_errors();
    assert_eq!(errors.len(), 1, "{:?}", o.log);
    assert!(
        errors[0].contains("buffer_request_body(): the script defines no on_request_body"),
        "{}",
        errors[0]
    );
    let p = plugin(
        r#"fn on_response_headers() { stream_response_body(); }
           fn on_response_body() { }"#,
    );
    let o = p.run(&Request::get("/"), &mut Response::ok("x"));
    assert!(o.script_errors()[0].contains("the script defines no on_response_chunk"));
}

#[test]
fn with_trailers_the_last_call_comes_with_them() {
    let p = plugin(
        r#"fn on_request_headers() { set_context("add", get_request_header("x-add") == "1"); }
        fn on_request_chunk(chunk, last) {
            log_info(`${chunk}|${last}`);
            if last && get_context("add") { append_request_body("more"); }
        }
        fn on_request_trailers() { log_info("trailers"); }"#,
    );
    let mut request = Request::post("/", "abcd");
    request.chunk_size = 2;
    request.trailers.push(("x-sum".into(), b"1".to_vec()));
    let o = p.run(&request, &mut Response::ok(""));
    assert_eq!(messages(&o), ["ab|false", "cd|false", "|true", "trailers"]);
    assert_eq!(o.upstream.unwrap().body, b"abcd");

    // With the data gone on, nothing can be added at the trailers: a clear error (and the
    // default error policy answers 500).
    let o = p.run(&request.clone().header("x-add", "1"), &mut Response::ok(""));
    let errors = o.script_errors();
    assert_eq!(errors.len(), 1, "{:?}", o.log);
    assert!(
        errors[0].contains("can't add body data once the trailers came"),
        "{}",
        errors[0]
    );
    assert_eq!(o.response.status, 500);
}

#[test]
fn rewriting_every_chunk_works_when_trailers_end_the_body() {
    // The call at the trailers has an empty chunk: replacing it with nothing changes nothing.
    let p =
        plugin(r#"fn on_request_chunk(chunk, last) { replace_request_body(chunk.to_upper()); }"#);
    let mut request = Request::post("/", "abcd");
    request.chunk_size = 3;
    request.trailers.push(("x-sum".into(), b"1".to_vec()));
    let o = p.run(&request, &mut Response::ok(""));
    assert!(o.script_errors().is_empty(), "{:?}", o.log);
    let up = o.upstream.unwrap();
    assert_eq!(up.body, b"ABCD");
    assert_eq!(up.trailers, [("x-sum".to_string(), b"1".to_vec())]);
}

#[test]
fn pause_holds_chunks_until_a_later_call_lets_them_go() {
    let p = plugin(
        r#"fn on_response_chunk(chunk, last) {
            log_info(`${chunk}:${get_response_body()}`);
            if chunk.contains("hold") { return PAUSE; }
        }"#,
    );
    let o = p.run(&Request::get("/"), &mut response("hold1hold2rest", &[5, 5]));
    assert_eq!(messages(&o), ["hold1:hold1", "hold2:hold2", "rest:rest"]);
    assert_eq!(o.response.chunks, [b"hold1hold2rest".to_vec()]);
}

#[test]
fn a_late_header_callback_after_an_early_resume_leaves_the_chunks_alone() {
    // The first callback resumes the request; the second answers after a chunk held by
    // `PAUSE`. That chunk went on with the next one, never given to the function twice.
    let p = plugin(
        r#"fn on_request_headers() {
            http_get("auth", "/a", [], 100, |status| { resume_http_request(); });
            http_get("auth", "/b", [], 100, |status| { log_info("late callback"); });
        }
        fn on_request_chunk(chunk, last) {
            log_info(`chunk ${chunk} ${last}`);
            if !last { return PAUSE; }
        }"#,
    );
    p.add_cluster("auth");
    let mut request = Request::post("/", "helloworld");
    request.chunk_sizes = vec![5];
    let answer = |_: &proxy_rhai::emulator::Callout| Reply::Answer {
        status: 200,
        headers: vec![],
        body: vec![],
    };
    let o = p.run_with(&request, &mut Response::ok(""), &mut answer.clone());
    assert!(o.script_errors().is_empty(), "{:?}", o.log);
    assert_eq!(
        messages(&o),
        ["chunk hello false", "late callback", "chunk world true"]
    );
    assert_eq!(o.upstream.unwrap().body, b"helloworld");
}

#[test]
fn a_callout_from_a_chunk_holds_the_stream_until_its_callback() {
    let script = r#"
        fn on_request_chunk(chunk, last) {
            log_info(`chunk ${chunk} ${last}`);
            if chunk.starts_with("check") {
                http_get("auth", "/", [], 100,
                    |status, headers, body| {
                        log_info(`callback ${status} sees ${get_request_body()}`);
                        replace_request_body("checked");
                    });
            }
        }
    "#;
    let answer = |_: &proxy_rhai::emulator::Callout| Reply::Answer {
        status: 200,
        headers: vec![],
        body: vec![],
    };
    let mut request = Request::post("/", "check123456");
    request.chunk_sizes = vec![5, 2, 2];

    // Answered before the next chunk arrives.
    let mut p = plugin(script);
    p.add_cluster("auth");
    let o = p.run_with(&request, &mut Response::ok(""), &mut answer.clone());
    assert_eq!(
        messages(&o),
        [
            "chunk check false",
            "callback 200 sees check",
            "chunk 12 false",
            "chunk 34 false",
            "chunk 56 true"
        ]
    );
    assert_eq!(o.upstream.as_ref().unwrap().chunks[0], b"checked");
    assert_eq!(o.upstream.unwrap().body, b"checked123456");

    // Answered after two more chunks arrived: the proxy held them, and they go through the
    // chunk function (as one chunk) before the stream resumes.
    p.callout_delay_chunks = 2;
    let o = p.run_with(&request, &mut Response::ok(""), &mut answer.clone());
    assert_eq!(
        messages(&o),
        [
            "chunk check false",
            "callback 200 sees check",
            "chunk 1234 false",
            "chunk 56 true"
        ]
    );
    let up = o.upstream.unwrap();
    assert_eq!(up.chunks, [b"checked1234".to_vec(), b"56".to_vec()]);
}

#[test]
fn local_responses_from_chunks() {
    let p = plugin(
        r#"fn on_request_chunk(chunk, last) {
            if chunk.contains("EVIL") { send_http_response(403, [], "refused"); }
        }
        fn on_response_chunk(chunk, last) {
            try { send_http_response(500, [], "late"); } catch (e) { log_info(e); }
        }"#,
    );
    let mut request = Request::post("/", "fine EVIL more");
    request.chunk_size = 5;
    let o = p.run(&request, &mut Response::ok(""));
    assert_eq!(o.response.status, 403);
    assert!(o.upstream.is_none());

    let o = p.run(&Request::post("/", "ok"), &mut Response::ok("body"));
    assert_eq!(o.response.status, 200);
    assert_eq!(o.response.body, b"body");
    assert!(
        messages(&o)[0].contains("send_http_response"),
        "{:?}",
        o.log
    );
}

#[test]
fn sse_events_are_complete_when_split_across_chunks() {
    let p = plugin(
        r#"fn on_response_chunk(chunk, last) {
            for e in sse_events(chunk, last) {
                log_info(`event=${e.event} data=${e.data} id=${e.id} retry=${e.retry}`);
            }
        }"#,
    );
    let stream = "event: greet\r\ndata: h\u{e9}llo\r\ndata: world\r\n\r\n: comment\n\nid: 7\nretry: 150\ndata:x\n\ndata: {\"done\":1}\r\rdata: incomplete";
    for sizes in [vec![], vec![1; 200], vec![9, 15, 3, 7, 20], vec![14, 1, 30]] {
        let o = p.run(&Request::get("/"), &mut response(stream, &sizes));
        assert_eq!(
            messages(&o),
            [
                "event=greet data=h\u{e9}llo\nworld id= retry=",
                "event= data=x id=7 retry=150",
                "event= data={\"done\":1} id= retry=",
            ],
            "chunks {sizes:?}"
        );
    }
}

#[test]
fn lines_keep_the_incomplete_line_for_the_next_chunk() {
    let p = plugin(
        r#"fn on_request_chunk(chunk, last) {
            for l in lines(chunk, last) { log_info(`[${l}]`); }
        }"#,
    );
    let mut request = Request::post("/", "{\"a\":1}\r\n{\"b\":\u{e9}}\n\nlast");
    for size in [1, 2, 3, 5, 100] {
        request.chunk_size = size;
        let o = p.run(&request, &mut Response::ok(""));
        assert_eq!(
            messages(&o),
            ["[{\"a\":1}]", "[{\"b\":\u{e9}}]", "[]", "[last]"],
            "{size}"
        );
    }
    // Without `last`, a final line with no ending is not returned.
    let p = plugin(
        r#"fn on_request_chunk(chunk, last) { for l in lines(blob(0) + chunk) { log_info(l); } }"#,
    );
    let o = p.run(&Request::post("/", "one\ntwo"), &mut Response::ok(""));
    assert_eq!(messages(&o), ["one"]);
}

#[test]
fn splitters_work_only_in_chunk_phases_and_are_bounded() {
    let p = plugin(
        r#"fn on_request_headers() { try { lines("a\n"); } catch (e) { log_info(e); } }
           fn on_request_chunk(chunk, last) { }"#,
    );
    let o = p.run(&Request::post("/", "x"), &mut Response::ok(""));
    assert!(messages(&o)[0].contains("lines"), "{:?}", o.log);
    assert!(messages(&o)[0].contains("on_request_chunk"), "{:?}", o.log);

    // A stream that never ends a line can't grow the carried tail past the string limit.
    let p = Emulator::new(
        &json!({
            "script": r#"fn on_response_chunk(chunk, last) { try { sse_events(chunk); } catch (e) { log_info(e); } }"#,
            "limits": { "max_string_size": 10000 }
        })
        .to_string(),
    )
    .unwrap();
    let mut r = Response::ok(vec![b'x'; 30_000]);
    r.chunk_size = 4000;
    let o = p.run(&Request::get("/"), &mut r);
    let log = messages(&o);
    assert!(
        !log.is_empty() && log[0].contains("longer than limits.max_string_size"),
        "{log:?}"
    );
    assert_eq!(o.response.body.len(), 30_000);
}

#[test]
fn a_chunk_past_the_string_limit_is_a_script_error_that_names_it() {
    let p = Emulator::new(
        &json!({
            "script": "fn on_response_chunk(chunk, last) { log_info(chunk.len); }",
            "limits": { "max_string_size": 2000 }
        })
        .to_string(),
    )
    .unwrap();
    let mut r = Response::ok(vec![b'x'; 5000]);
    r.chunk_size = 3000;
    let o = p.run(&Request::get("/"), &mut r);
    let errors = o.script_errors();
    let expected = "the chunk given to on_response_chunk: the text would be 3000 bytes, \
                    more than limits.max_string_size (2000)";
    assert!(errors.iter().any(|e| e.contains(expected)), "{errors:?}");
    assert!(messages(&o).iter().all(|m| m != "3000"), "{:?}", o.log);
}

#[test]
fn a_chunk_function_must_take_chunk_and_last() {
    let e = Emulator::with_script("fn on_response_chunk(chunk) { }", json!({}))
        .err()
        .unwrap();
    assert!(
        e.contains("on_response_chunk(chunk, last) must take two parameters"),
        "{e}"
    );
}

/// A plugin with `script` and the error policy `fail_open`, with a cluster `auth` for callouts.
fn fail_open(script: &str) -> Emulator {
    with_auth(script, true)
}

fn answered(_: &proxy_rhai::emulator::Callout) -> Reply {
    Reply::Answer {
        status: 200,
        headers: vec![],
        body: vec![],
    }
}

#[test]
fn fail_open_a_chunk_callback_that_throws_leaves_the_next_pieces_to_the_function() {
    let p = fail_open(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`chunk [${chunk}] ${last}`);
            if get_context("asked") == () {
                set_context("asked", true);
                http_get("auth", "/", [], 100, |s| { append_request_body("|undone"); throw "boom"; });
            }
            replace_request_body(chunk.to_upper());
        }"#,
    );
    let mut request = Request::post("/", "helloworld");
    request.chunk_sizes = vec![5, 5];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    assert_eq!(o.script_errors().len(), 1, "{:?}", o.log);
    assert_eq!(o.upstream.unwrap().body, b"HELLOWORLD");
}

#[test]
fn fail_open_a_chunk_call_that_throws_after_a_pause_keeps_the_next_pieces_whole() {
    let p = fail_open(
        r#"fn on_request_chunk(chunk, last) {
            if chunk.starts_with("p") { return PAUSE; }
            if chunk.starts_with("t") { throw "boom"; }
            replace_request_body(chunk.to_upper());
        }"#,
    );
    let mut request = Request::post("/", "ppppttttabcdefgh");
    request.chunk_sizes = vec![4, 4, 4, 4];
    let o = p.run(&request, &mut Response::ok(""));
    assert_eq!(o.upstream.unwrap().body, b"ppppttttABCDEFGH");
}

#[test]
fn fail_open_a_chunk_callback_that_throws_still_runs_the_trailers() {
    let mut p = fail_open(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`chunk [${chunk}] ${last}`);
            if !last { http_get("auth", "/", [], 100, |s| { throw "boom"; }); }
        }
        fn on_request_trailers() { add_request_trailer("x-t", "1"); }"#,
    );
    p.callout_delay_chunks = 1;
    let mut request = Request::post("/", "hello");
    request.trailers = vec![("x-sum".into(), b"5".to_vec())];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    assert_eq!(
        messages(&o)[..2],
        [
            "chunk [hello] false".to_string(),
            "chunk [] true".to_string()
        ]
    );
    let up = o.upstream.unwrap();
    assert_eq!(up.body, b"hello");
    assert_eq!(up.trailers.last().map(|t| t.0.as_str()), Some("x-t"));
}

#[test]
fn a_chunk_callback_that_resumes_keeps_a_split_character_for_the_next_piece() {
    let mut p = plugin(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`chunk [${chunk}] ${last}`);
            if get_context("asked") == () {
                set_context("asked", true);
                http_get("auth", "/", [], 100, |s| { resume_http_request(); });
            }
            replace_request_body(chunk.to_upper());
        }"#,
    );
    p.add_cluster("auth");
    p.callout_delay_chunks = 1;
    let mut request = Request::post("/", "firstab\u{e9}cdef");
    request.chunk_sizes = vec![5, 3, 5];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    assert_eq!(
        messages(&o),
        [
            "chunk [first] false",
            "chunk [ab] false",
            "chunk [\u{e9}cdef] true"
        ]
    );
    assert_eq!(o.upstream.unwrap().body, "FIRSTAB\u{c9}CDEF".as_bytes());
}

/// With allow_on_headers_stop_iteration the body comes while a header callout holds the
/// headers; the callback resumes after the first piece: the body phase still gets it whole.
#[test]
fn an_early_resume_with_part_of_the_body_keeps_the_body_whole() {
    let script = r#"fn on_request_headers() {
            http_get("auth", "/", [], 100, |s| { resume_http_request(); });
        }
        fn on_request_body() { replace_request_body("<" + get_request_body() + ">"); }"#;
    let config = json!({"script": script, "allow_on_headers_stop_iteration": true});
    let mut p = Emulator::new(&config.to_string()).expect("script configures");
    p.add_cluster("auth");
    p.callout_delay_chunks = 1;
    let mut request = Request::post("/", "helloworld").header("content-length", "10");
    request.chunk_sizes = vec![5, 5];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    assert_eq!(o.upstream_header("content-length"), None);
    assert_eq!(o.upstream.unwrap().body, b"<helloworld>");
}

/// fail_open: a late header callback throws while a chunk's callout holds the request. The
/// chunk's callout keeps its hold, and its callback lets the request go.
#[test]
fn fail_open_a_late_header_callback_that_throws_leaves_a_chunk_callout_its_hold() {
    let p = fail_open(
        r#"fn on_request_headers() {
            http_get("auth", "/a", [], 100, |s| { resume_http_request(); });
            http_get("auth", "/b", [], 100, |s| { throw "late boom"; });
        }
        fn on_request_chunk(chunk, last) {
            if get_context("asked") == () {
                set_context("asked", true);
                http_get("auth", "/c", [], 100, |s| { log_info("chunk callback"); });
            }
            replace_request_body(chunk.to_upper());
        }"#,
    );
    let mut request = Request::post("/", "helloworld");
    request.chunk_sizes = vec![5, 5];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    assert!(o.stalled.is_none(), "{:?}", o.log);
    assert!(
        messages(&o).iter().any(|m| m == "chunk callback"),
        "{:?}",
        o.log
    );
    assert_eq!(o.upstream.unwrap().body, b"HELLOWORLD");
}

/// A chunk's two callouts; the first one's callback resumes: the second holds nothing any
/// more. The next piece goes through the chunk function when it comes, and the late callback
/// can't act on a piece that went on (a clear error, not a write into the next piece).
#[test]
fn a_callout_left_behind_by_a_resume_holds_nothing() {
    let p = plugin(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("auth", "/a", [], 100, |s| {
                    replace_request_body("A1");
                    log_info(`early resume: ${resume_http_request()}`);
                });
                http_get("auth", "/b", [], 100, |s| {
                    try { replace_request_body("<late>"); } catch (e) { log_info(`late: ${e}`); }
                });
            } else {
                replace_request_body(chunk.to_upper());
            }
        }"#,
    );
    p.add_cluster("auth");
    let mut request = Request::post("/", "aaaabbbb");
    request.chunk_sizes = vec![4, 4];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    let log = messages(&o);
    assert_eq!(log[..2], ["got [aaaa] false", "early resume: true"]);
    assert!(
        log[2].starts_with(
            "late: replace_request_body(): the body this callback's call was made for went \
             on already"
        ),
        "{log:?}"
    );
    assert_eq!(log[3], "got [bbbb] true");
    assert_eq!(o.upstream.unwrap().body, b"A1BBBB");
}

/// A plugin with `script` (and `fail_open` as its error policy when asked), with a cluster
/// `auth` for callouts.
fn with_auth(script: &str, fail_open: bool) -> Emulator {
    let mut config = json!({ "script": script });
    if fail_open {
        config["error_policy"] = json!({"mode": "fail_open"});
    }
    let p = Emulator::new(&config.to_string()).expect("script configures");
    p.add_cluster("auth");
    p
}

#[test]
fn fail_open_a_detached_callback_that_throws_leaves_a_new_hold_alone() {
    let mut p = with_auth(
        r#"fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("auth", "/a", [], 100, |s| { log_info(`resume: ${resume_http_request()}`); });
                http_get("auth", "/b", [], 100, |s| { log_info("detached throws"); throw "boom"; });
            } else if chunk == "bbbb" {
                http_get("auth", "/c", [], 100, |s| {
                    log_info("hold callback");
                    replace_request_body("<" + get_request_body() + ">");
                });
            }
        }"#,
        true,
    );
    p.callout_delay_chunks = 1;
    let mut request = Request::post("/", "aaaabbbbcccc");
    request.chunk_sizes = vec![4, 4, 4];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    assert!(o.stalled.is_none(), "{:?}", messages(&o));
    assert!(
        messages(&o).iter().any(|m| m == "hold callback"),
        "{:?}",
        messages(&o)
    );
    assert_eq!(o.upstream.unwrap().body, b"aaaa<bbbb>cccc");
}

#[test]
fn a_late_header_callback_chain_does_not_keep_a_chunk_waiting() {
    let p = with_auth(
        r#"fn on_request_headers() {
            http_get("auth", "/a", [], 100, |s| { resume_http_request(); });
            http_get("auth", "/b", [], 100, |s| {
                log_info("late header callback");
                http_get("auth", "/chain", [], 100, |s| { log_info("chain callback"); });
            });
        }
        fn on_request_chunk(chunk, last) {
            log_info(`got [${chunk}] ${last}`);
            if chunk == "aaaa" {
                http_get("auth", "/c", [], 100, |s| {
                    log_info("chunk callback");
                    replace_request_body("<" + get_request_body() + ">");
                });
            }
        }"#,
        false,
    );
    let mut request = Request::post("/", "aaaabbbb");
    request.chunk_sizes = vec![4, 4];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    assert!(o.stalled.is_none(), "{:?}", messages(&o));
    assert_eq!(o.upstream.unwrap().body, b"<aaaa>bbbb");
}

#[test]
fn a_detached_callback_cannot_resume_a_new_hold() {
    let mut p = with_auth(
        r#"fn on_request_chunk(chunk, last) {
            if chunk == "aaaa" {
                http_get("auth", "/a", [], 100, |s| { log_info(`resume: ${resume_http_request()}`); });
                http_get("auth", "/b", [], 100, |s| { log_info(`detached resume: ${resume_http_request()}`); });
            } else if chunk == "bbbb" {
                http_get("auth", "/c", [], 100, |s| { log_info("hold callback"); });
            }
        }"#,
        false,
    );
    p.callout_delay_chunks = 1;
    let mut request = Request::post("/", "aaaabbbbcccc");
    request.chunk_sizes = vec![4, 4, 4];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    let log = messages(&o);
    assert!(log.iter().any(|m| m == "detached resume: false"), "{log:?}");
}

#[test]
fn pause_with_a_callout_holds_the_piece_for_the_trailers() {
    let p = with_auth(
        r#"fn on_request_chunk(chunk, last) {
            if !last {
                http_get("auth", "/a", [], 100, |s| { log_info("callback"); });
                return PAUSE;
            }
            append_request_body("END");
        }"#,
        false,
    );
    let mut request = Request::post("/", "aaaa");
    request.trailers = vec![("x-sum".into(), b"4".to_vec())];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    assert!(o.script_errors().is_empty(), "{:?}", o.script_errors());
    assert_eq!(o.upstream.unwrap().body, b"aaaaEND");
}

/// A callout from the last call, made when the trailers came with nothing held: its
/// callback can't add data either (the same script error as in that call).
#[test]
fn a_last_call_callback_at_the_trailers_cannot_add_data() {
    let p = with_auth(
        r#"fn on_request_chunk(chunk, last) {
            if last {
                http_get("auth", "/", [], 100, |s| {
                    try { append_request_body("!tail"); } catch (e) { log_info(`${e}`); }
                });
            }
        }"#,
        false,
    );
    let mut request = Request::post("/", "hello");
    request.trailers = vec![("x-sum".into(), b"5".to_vec())];
    let o = p.run_with(&request, &mut Response::ok(""), &mut answered);
    assert!(
        messages(&o)[0].starts_with(
            "append_request_body(): the message ended with trailers and its data already went on"
        ),
        "{:?}",
        o.log
    );
    assert_eq!(o.upstream.unwrap().body, b"hello");
}

/// A chunk's `PAUSE` holds its pieces past its callouts, unless a callback resumes: the
/// script's later word lets them go.
#[test]
fn a_resume_in_a_callback_lets_go_pieces_a_pause_held() {
    let p = with_auth(
        r#"fn on_response_chunk(chunk, last) {
            if chunk == "aaaa" {
                http_get("auth", "/", [], 100, |s| { resume_http_response(); });
                return PAUSE;
            }
        }"#,
        false,
    );
    let o = p.run_with(
        &Request::get("/"),
        &mut response("aaaabbbb", &[4, 4]),
        &mut answered,
    );
    assert_eq!(o.response.chunks, [b"aaaa".to_vec(), b"bbbb".to_vec()]);
}
