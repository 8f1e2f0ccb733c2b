//! The plugin's replacements of Rhai's string functions (`src/sandbox/strings.rs`): a result
//! past the limits is refused before it is made. Rhai's own functions make it, then refuse it
//! with the same error, so each case here measures what the call allocates: the peak of this
//! thread's heap during a request, less that of the same request without the call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proxy_rhai::emulator::{Emulator, Request, Response};
use serde_json::json;

/// Counts each thread's heap in use and its peak (tests run on threads of their own).
struct Counting;

thread_local! {
    static IN_USE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = IN_USE.try_with(|n| {
            n.set(n.get() + layout.size());
            let _ = PEAK.try_with(|p| p.set(p.get().max(n.get())));
        });
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = IN_USE.try_with(|n| n.set(n.get().saturating_sub(layout.size())));
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The heap's peak during one request of a script running `body` in `on_request_headers`, above
/// what was in use when it began, and the request's script errors.
fn peak(body: &str, limits: &serde_json::Value) -> (usize, Vec<String>) {
    let script = format!("fn on_request_headers() {{ {body} }}");
    let p = Emulator::new(&json!({ "script": script, "limits": limits }).to_string()).unwrap();
    let request = Request::get("/");
    let mut response = Response::ok("");
    let start = IN_USE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let outcome = p.run(&request, &mut response);
    let peak = PEAK.with(Cell::get) - start;
    let errors = outcome
        .script_errors()
        .iter()
        .map(|e| e.to_string())
        .collect();
    (peak, errors)
}

/// `call` after `setup` is refused with `error`, and allocates less than 256 kB more than
/// `setup` alone, where Rhai's own function would make a result of `made` bytes or more.
fn refused_before_made(
    setup: &str,
    call: &str,
    limits: serde_json::Value,
    error: &str,
    made: usize,
) {
    let (base, errors) = peak(setup, &limits);
    assert!(errors.is_empty(), "{setup}: {errors:?}");
    let (with_call, errors) = peak(&format!("{setup} {call}"), &limits);
    assert!(
        errors.iter().any(|e| e.contains(error)),
        "{call}: {errors:?}"
    );
    let extra = with_call.saturating_sub(base);
    assert!(
        extra < 256 << 10,
        "{call} allocated {extra} bytes (Rhai's would make {made}+)"
    );
}

#[test]
fn replace_refuses_a_result_past_the_string_size_limit_before_making_it() {
    // 1 MB of `x`; each form makes it 2 MB or more, over a 1.5 MB limit.
    let limits = json!({ "max_string_size": 1_500_000 });
    let setup = "let s = \"\"; s.pad(1000000, 'x');";
    for call in [
        r#"s.replace("x", "xx");"#,
        r#"s.replace("x", 'ΐ');"#,
        r#"s.replace('x', "xx");"#,
        r#"s.replace('x', 'ΐ');"#,
    ] {
        refused_before_made(
            setup,
            call,
            limits.clone(),
            "Length of string too large",
            2_000_000,
        );
    }
}

#[test]
fn splits_refuse_too_many_pieces_before_making_them() {
    // 200,000 pieces (`to_chars`: 400,000) of 16 bytes or more each, over a 100,000 limit.
    let limits = json!({ "max_array_size": 100_000, "max_string_size": 1_000_000 });
    let setup = "let s = \"\"; s.pad(400000, \"a \");";
    for call in [
        "s.to_chars();",
        "s.split();",
        r#"s.split(" ");"#,
        r#"s.split(" ", 1000000);"#,
        "s.split(' ');",
        "s.split(' ', 1000000);",
        r#"s.split_rev(" ");"#,
        r#"s.split_rev(" ", 1000000);"#,
        "s.split_rev(' ');",
        "s.split_rev(' ', 1000000);",
    ] {
        refused_before_made(
            setup,
            call,
            limits.clone(),
            "Size of array/BLOB too large",
            3_200_000,
        );
    }
}

#[test]
fn case_changes_refuse_a_result_past_the_string_size_limit_before_making_it() {
    // `ΐ` (2 bytes) is `Ϊ́` (6) upper-case, `İ` (2) is `i̇` (3) lower-case: 600 kB and 800 kB
    // strings become 1.8 MB and 1.2 MB, over a 1 MB limit.
    let limits = json!({ "max_string_size": 1_000_000 });
    let upper = "let s = \"\"; s.pad(300000, 'ΐ');";
    let lower = "let s = \"\"; s.pad(400000, 'İ');";
    for (setup, call) in [
        (upper, "s.to_upper();"),
        (upper, "s.make_upper();"),
        (lower, "s.to_lower();"),
        (lower, "s.make_lower();"),
    ] {
        refused_before_made(
            setup,
            call,
            limits.clone(),
            "Length of string too large",
            1_200_000,
        );
    }
}
