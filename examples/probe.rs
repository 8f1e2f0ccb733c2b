use proxy_rhai::emulator::{Emulator, Request, Response};
fn main() {
    for script in [
        "fn on_request_headers() { let m = #{}; for i in 0..1000 { m[`k${i}`] = i; } }",
        "fn on_request_headers() { let m = #{}; for i in 0..1000 { let x = #{}; x[`k${i}`] = i; m += x; } }",
        "fn on_request_headers() { let m = #{}; for i in 0..1000 { m.mixin(#{}); m[`k${i}`] = i; let y = m; } }",
        "fn on_request_headers() { let m = #{}; for i in 0..1000 { m[`k${i}`] = i; } let z = m; log_info(z.len()); }",
    ] {
        let p = Emulator::new(&serde_json::json!({"script": script, "limits": {"max_map_size": 100}}).to_string()).unwrap();
        let o = p.run(&Request::get("/"), &mut Response::ok("up"));
        println!("{:?} {:?}", o.log, o.script_errors());
    }
}
