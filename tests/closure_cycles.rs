//! Closures that capture themselves make reference cycles `Rc` never frees; the plugin frees
//! them with their request, so such a script costs no memory per request.
//!
//! This file is its own test binary with one test: it counts the heap, which other tests
//! running in parallel would disturb.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use proxy_rhai::emulator::{Callout, Emulator, Reply, Request, Response};
use serde_json::json;

static IN_USE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as isize, Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size() as isize, Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn cycles_among_closures_are_freed_with_their_request() {
    // Cycles made in a phase, in an object map, across phases (held by a pending callout) and in
    // a callback; the callback still sees its captured variables.
    let p = Emulator::with_script(
        r#"fn on_request_headers() {
            let f = 0; f = || f;
            let m = #{ big: blob(1000) }; m.me = || m;
            let user = get_request_header("x-user");
            let again = 0;
            again = || again;
            dispatch_http_call("auth", [[":method", "GET"], [":path", "/"], [":authority", "auth"]], "", 1000, |status| {
                let g = 0; g = || g;
                add_request_header("x-user-seen", user);
                again;
            });
        }"#,
        json!({}),
    )
    .unwrap();
    p.add_cluster("auth");
    let request = Request::get("/").header("x-user", "ann");
    let mut answer = |_: &Callout| Reply::Answer {
        status: 200,
        headers: vec![],
        body: vec![],
    };
    let mut run = || {
        let o = p.run_with(&request, &mut Response::ok("up"), &mut answer);
        assert_eq!(
            o.upstream_header("x-user-seen").as_deref(),
            Some("ann"),
            "{:?}",
            o.log
        );
    };
    for _ in 0..20 {
        run(); // warm up: caches, interned strings, the log
    }
    let before = IN_USE.load(Relaxed);
    for _ in 0..500 {
        run();
    }
    let grown = IN_USE.load(Relaxed) - before;
    // Without the release each request leaked its cycles: over 1 kB, so 500 kB here.
    assert!(grown < 20_000, "heap grew {grown} bytes over 500 requests");
}
