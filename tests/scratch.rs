use proxy_rhai::emulator::*;
use serde_json::json;

#[test]
fn scratch() {
    let e = Emulator::with_script(r#"
        fn on_request_headers() {
            add_request_header("hello", "world");
            let c = config();
            if c.mockEnable { send_http_response(200, [], "hello world"); }
        }
        fn on_response_headers() { add_response_header("x-r", "1"); }
        fn on_request_body() { let b = get_request_body(); replace_request_body(b + "!"); }
    "#, json!({"mockEnable": false})).unwrap();
    let o = e.run(&Request::post("/x", "abc"), &mut Response::ok("fine"));
    println!("{:?} {:?} {:?}", o.response.status, o.log, o.stalled);
    assert_eq!(o.upstream_header("hello").as_deref(), Some("world"));
    assert_eq!(o.upstream.as_ref().unwrap().body, b"abc!");
    let e = Emulator::with_script(r#"
        fn on_request_headers() { let c = config(); c.mockEnable = 5; log_info(config()); if config().mockEnable { send_http_response(200, [], "hello world"); } return PAUSE; }
    "#, json!({"mockEnable": true})).unwrap();
    let o = e.run(&Request::get("/x"), &mut Response::ok("fine"));
    println!("{:?} {:?} {:?}", o.response.status, o.log, o.stalled);
    let e = Emulator::with_script("fn on_request_headers() { while true {} }", json!({})).unwrap();
    let t = std::time::Instant::now();
    let o = e.run(&Request::get("/x"), &mut Response::ok("fine"));
    println!("{:?} {:?} {:?}", t.elapsed(), o.response.status, o.log);
    println!("{:?}", Emulator::with_script("fn on_request_headers() { let x = ; }", json!({})).err());
    println!("{:?}", Emulator::with_script("fn foo() { }", json!({})).err());
    println!("{:?}", Emulator::with_script("fn on_request_headers() { eval(\"1\") }", json!({})).err());
    println!("{:?}", Emulator::with_script("import \"x\" as y; fn on_request_headers() { }", json!({})).err());
}
#[test]
fn errs() {
    for s in ["fn on_request_headers() {\n let x = 1;\n while true { x += 1; } }", "fn f(n) { f(n+1) }\nfn on_request_headers() {\n  f(1) }", "fn on_request_headers() {\n  throw \"boom\"; }", "fn on_request_headers() {\n  let x = 1 + \"a\" * 2; }", "fn on_request_headers() {\n  get_request_body(); }"] {
        let e = Emulator::with_script(s, json!({})).unwrap();
        let o = e.run(&Request::get("/x"), &mut Response::ok("fine"));
        println!("{:?}", o.log);
    }
}
