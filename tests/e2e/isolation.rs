//! What one request does never reaches another, however the requests interleave on the
//! worker.

use std::thread;

use crate::support::{assert_status, Envoy};

/// Requests held at a barrier in the callout server, so that every request's header phase
/// runs (and changes what it can) before any callback reads.
const CONCURRENT: usize = 16;

/// Issue 23's attack: top-level values changed by a request through a closure's captured
/// variable, methods, indexing, `this` and function-call style.
const SCRIPT: &str = r#"
let seen = #{ last: "" };
const REMEMBER = |x| { let prev = seen.last; seen.last = x; prev };
const LIST = [1, 2];
const CACHE = #{ users: [] };
fn grow() { this.push(9); }

fn on_request_headers() {
    let user = get_request_header("x-user");
    let refused = 0;
    try { LIST.push(3); } catch { refused += 1; }
    try { CACHE.users.push(user); } catch { refused += 1; }
    try { LIST[0] = user; } catch { refused += 1; }
    try { LIST.grow(); } catch { refused += 1; }
    push(LIST, 4);
    let first = REMEMBER.call(user);
    let n = get_request_header("x-n");
    http_get("callout", `/barrier/iso/${n}`, [], 20000, |status, headers, body| {
        add_request_header("x-barrier", parse_json(body).barrier);
        add_request_header("x-first", `${first}`);
        add_request_header("x-prev", `${REMEMBER.call(user)}`);
        add_request_header("x-list", `${LIST}`);
        add_request_header("x-cache", `${CACHE}`);
        add_request_header("x-refused", `${refused}`);
    });
}
"#;

#[test]
fn top_level_values_are_the_same_for_every_interleaved_request() {
    let envoy = Envoy::with_script(SCRIPT);
    let n = CONCURRENT.to_string();
    let replies: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let (envoy, n) = (&envoy, &n);
                s.spawn(move || {
                    let user = format!("user-{i}");
                    let r = envoy.request("GET", "/", &[("x-user", &user), ("x-n", n)], b"");
                    (user, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (user, r) in &replies {
        assert_status(r, 200);
        let echo = r.echo();
        assert_eq!(
            echo.header("x-barrier"),
            Some("reached"),
            "the requests were not all in flight together"
        );
        assert_eq!(echo.header("x-first"), Some(""), "{user} saw another's id");
        assert_eq!(echo.header("x-prev"), Some(""), "{user} saw another's id");
        assert_eq!(echo.header("x-list"), Some("[1, 2]"), "{user}");
        assert_eq!(echo.header("x-cache"), Some(r#"#{"users": []}"#), "{user}");
        assert_eq!(echo.header("x-refused"), Some("4"), "{user}");
    }
    envoy.assert_healthy();
}
