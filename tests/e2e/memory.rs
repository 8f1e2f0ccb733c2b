//! The VM's heap has one budget for all requests together (`limits.max_vm_memory`). Requests
//! that keep large values while they wait fail one by one once it is spent; the VM and the
//! other requests go on, and the heap comes back.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::support::{assert_status, Envoy, Reply};

/// A callout target that holds every request it gets until the test releases them, so that
/// the requests waiting on it keep what they hold for as long as the test needs.
struct HoldServer {
    port: u16,
    arrived: Arc<AtomicUsize>,
    /// The number of releases so far: a request waits for the next one after it arrived.
    released: Arc<(Mutex<usize>, Condvar)>,
}

impl HoldServer {
    fn start() -> HoldServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let arrived = Arc::new(AtomicUsize::new(0));
        let released = Arc::new((Mutex::new(0), Condvar::new()));
        let (a, r) = (arrived.clone(), released.clone());
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (a, r) = (a.clone(), r.clone());
                thread::spawn(move || {
                    let _ = hold_connection(conn, &a, &r);
                });
            }
        });
        HoldServer {
            port,
            arrived,
            released,
        }
    }

    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    fn release(&self) {
        let (lock, cv) = &*self.released;
        *lock.lock().unwrap() += 1;
        cv.notify_all();
    }
}

fn hold_connection(
    conn: TcpStream,
    arrived: &AtomicUsize,
    released: &(Mutex<usize>, Condvar),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    loop {
        // A callout is a GET: its head, then nothing.
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
        }
        let (lock, cv) = released;
        let generation = *lock.lock().unwrap();
        arrived.fetch_add(1, Ordering::SeqCst);
        let mut now = lock.lock().unwrap();
        while *now == generation {
            now = cv.wait(now).unwrap();
        }
        drop(now);
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
    }
}

/// Each request keeps its parsed body while its callout is held.
const SCRIPT: &str = r#"
fn on_request_body() {
    set_context("doc", parse_json(get_request_body()));
    http_get("hold", "/hold", [], 60000, |status| {});
}
fn on_response_headers() {
    add_response_header("x-items", `${get_context("doc")?.len()}`);
}
"#;

const HEAP: &str = "wasmcustom.proxy_rhai_heap_bytes";

/// One flood: requests sent one after the other, each left waiting (holding its document) or
/// refused before the next is sent; then all released. Returns how many were held.
fn flood(envoy: &Envoy, hold: &HoldServer, requests: usize, doc: &[u8]) -> usize {
    let before = hold.arrived();
    let replies: Vec<Reply> = thread::scope(|s| {
        let mut handles = Vec::new();
        for _ in 0..requests {
            let waiting = hold.arrived();
            let handle = s.spawn(|| envoy.request("POST", "/flood", &[], doc));
            // Wait until this request is held, or answered (refused by the budget).
            while hold.arrived() == waiting && !handle.is_finished() {
                thread::sleep(Duration::from_millis(5));
            }
            handles.push(handle);
        }
        let held = hold.arrived() - before;
        // With the heap spent, a request that keeps nothing is still served.
        assert_status(&envoy.get("/light"), 200);
        assert_eq!(held, handles.iter().filter(|h| !h.is_finished()).count());
        hold.release();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let held = replies.iter().filter(|r| r.status == 200).count();
    for r in &replies {
        match r.status {
            200 => assert_eq!(r.header("x-items"), Some("20000")),
            500 => {}
            status => panic!("unexpected status {status}: {}", r.text()),
        }
    }
    assert!(held >= 2, "only {held} of {requests} requests were held");
    assert!(held < requests, "the budget refused none of {requests}");
    held
}

#[test]
fn requests_share_one_heap_budget_and_the_heap_comes_back() {
    let hold = HoldServer::start();
    let envoy = Envoy::builder(json!({
        "script": SCRIPT,
        "limits": {"max_vm_memory": 16 << 20, "max_memory": 8 << 20},
    }))
    .cluster("hold", hold.port)
    .buffer_limit(4 << 20)
    .start();
    // 20,000 short strings: 540 kB of text, a few MB once parsed.
    let items: Vec<String> = (0..20_000).map(|i| format!(r#""item-{i:020}""#)).collect();
    let doc = format!("[{}]", items.join(",")).into_bytes();

    assert_status(&envoy.get("/warm"), 200);
    let baseline = envoy.wait_for_stat(HEAP, |_| true);
    let first = flood(&envoy, &hold, 16, &doc);
    envoy.wait_for_log("limits.max_vm_memory");
    let after_first = envoy.wait_for_stat(HEAP, |v| v < baseline + (1 << 20));
    // A second flood finds the same room: nothing of the first was left behind.
    let second = flood(&envoy, &hold, 16, &doc);
    assert!(first.abs_diff(second) <= 1, "held {first}, then {second}");
    let after_second = envoy.wait_for_stat(HEAP, |v| v < baseline + (1 << 20));
    eprintln!(
        "heap: baseline {baseline}, after the floods {after_first} and {after_second}; \
         held {first} and {second} of 16"
    );
    envoy.assert_healthy();
}

/// At the highest `max_memory` and `max_vm_memory` (512 MiB each), one call keeping 4 MB
/// blobs until it can't is stopped by the budget, well before the VM's 1 GiB, and the heap
/// is given back when its request ends.
#[test]
fn one_call_at_the_highest_limits_is_stopped_before_the_vm_is() {
    let envoy = Envoy::start(json!({
        "script": r#"
            fn on_request_headers() {
                if get_request_header("x-op") != "pile" { return; }
                for i in 0..1000 { set_context(`k${i}`, blob(4000000)); }
            }
        "#,
        "limits": {"max_vm_memory": 512 << 20, "max_memory": 512 << 20,
                   "max_operations": 100_000_000},
    }));
    assert_status(&envoy.get("/warm"), 200);
    let baseline = envoy.wait_for_stat(HEAP, |_| true);
    for _ in 0..2 {
        let r = envoy.request("GET", "/pile", &[("x-op", "pile")], b"");
        assert_status(&r, 500);
        envoy.wait_for_stat(HEAP, |v| v < baseline + (1 << 20));
    }
    // The call's own limit comes first here: it is as high as the VM's.
    envoy.wait_for_log("memory limit: the call added over 536870912 bytes");
    assert_status(&envoy.get("/after"), 200);
    envoy.assert_healthy();
}
