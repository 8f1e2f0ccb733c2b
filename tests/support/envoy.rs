//! A real Envoy with the plugin, as a child process: start and stop, its admin interface, log,
//! stats and memory, and whether the plugin's VM stayed healthy.
//!
//! # A configuration the plugin refuses (measured with Envoy 1.40, V8)
//!
//! When `on_configure` returns false, **Envoy refuses to start**: with a static configuration it
//! logs, in this order,
//!
//! ```text
//! [error][wasm] wasm log: proxy-rhai: configuration refused: <reason>
//! [error][wasm] Wasm VM failed Failed to configure base Wasm plugin
//! [critical][wasm] Plugin proxy-rhai failed to load
//! [critical][wasm] Plugin configured to fail closed failed to load
//! [critical][main] error `Unable to create Wasm plugin proxy-rhai` initializing config '...'
//! ```
//!
//! and exits with status 1; no listener ever opens, so there is no 500 or 503 to observe. The
//! same happens with the filter's `fail_open: true` (only the "fail closed" line is missing) and
//! with `failure_policy: FAIL_OPEN` (every line as above): neither lets Envoy start without the
//! plugin. [`EnvoyBuilder::try_start`] returns that log as its error, so a test can assert the
//! refusal.
//!
//! # A VM that fails while serving (same Envoy)
//!
//! A trap (e.g. `Uncaught RuntimeError: unreachable` after a failed allocation, or `memory
//! access out of bounds` after a stack overflow) is logged as
//! `Function: proxy_on_request_headers failed: Uncaught RuntimeError: ...` with an in-VM
//! backtrace; that request and every later one get `503` with an empty body, and the stats
//! count nothing (`wasm.proxy-rhai.vm_reload*` stay 0). So [`Envoy::assert_healthy`] reads the
//! log.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::bootstrap::{set_plugin_config, write_atomically, EnvoyBuilder, ACCESS_LOG};
use super::http::{exchange, request_head, Reply};
use super::upstream::Upstream;

/// Longest wait for Envoy to compile the plugin and become ready (V8 compiles the wasm in
/// 1–3 s alone; several Envoys starting at once on a small machine share the CPU).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Envoy writes its log file every this many milliseconds (`--file-flush-interval-msec`).
const LOG_FLUSH_MS: u64 = 20;

impl EnvoyBuilder {
    /// Starts Envoy and waits until it serves; panics with the tail of its log when it doesn't.
    pub fn start(self) -> Envoy {
        self.try_start()
            .unwrap_or_else(|log| panic!("Envoy did not start:\n{}", tail(&log, 60)))
    }

    /// Starts Envoy; `Err` holds its whole log (and stderr) when it exits or never gets ready.
    pub fn try_start(self) -> Result<Envoy, String> {
        let upstream = Upstream::start();
        let callout = Upstream::start();
        let dir = fresh_dir();
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("envoy.log");
        let (config_path, lds) = self.write_config(&dir, upstream.port(), callout.port());

        // A shell stands between the test and Envoy: when this process ends, however it ends,
        // the pipe on the shell's fd 3 closes and the shell ends Envoy, so no Envoy outlives
        // the tests. `wait` makes the shell exit with Envoy's own status.
        let script = r#"exec 3<&0
"$0" "$@" </dev/null &
pid=$!
echo "$pid" > "$ENVOY_PID_FILE"
( read _ <&3; kill "$pid" 2>/dev/null ) &
wait "$pid""#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("envoy")
            .args(["-c".as_ref(), config_path.as_os_str()])
            .args([
                "--concurrency",
                &self.concurrency.to_string(),
                "--disable-hot-restart",
            ])
            .args(["--admin-address-path".as_ref(), admin_path.as_os_str()])
            .args(["-l", "info", "--component-log-level", "wasm:debug"])
            .args(["--log-path".as_ref(), log_path.as_os_str()])
            .args(["--file-flush-interval-msec", &LOG_FLUSH_MS.to_string()])
            .env("ENVOY_PID_FILE", dir.join("envoy.pid"))
            .stdin(Stdio::piped())
            .stdout(fs::File::create(dir.join("stdout")).unwrap())
            .stderr(fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh to start envoy: {e}"));
        let stdin = child.stdin.take();

        let mut envoy = Envoy {
            child: Mutex::new(child),
            watchdog: Mutex::new(stdin),
            dir,
            log_path,
            admin: "127.0.0.1:0".parse().unwrap(),
            addr: "127.0.0.1:0".parse().unwrap(),
            upstream,
            callout,
            lds: Mutex::new(lds),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = envoy.child.lock().unwrap().try_wait().unwrap() {
                let log = envoy.full_output();
                envoy.cleanup_dir();
                return Err(format!("{log}\n(envoy exited: {status})"));
            }
            if let Some(admin) = fs::read_to_string(&admin_path)
                .ok()
                .and_then(|a| a.trim().parse().ok())
            {
                envoy.admin = admin;
                if envoy.admin_get("/ready").is_ok_and(|r| r.status == 200) {
                    break;
                }
            }
            if Instant::now() > deadline {
                let log = envoy.full_output();
                return Err(format!("{log}\n(envoy not ready after {READY_TIMEOUT:?})"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        let listeners = envoy
            .admin_get("/listeners?format=json")
            .map_err(|e| format!("admin /listeners: {e}"))?;
        let port = listeners.json()["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .ok_or_else(|| format!("no listener port in {}", listeners.text()))?;
        envoy.addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        Ok(envoy)
    }
}

fn fresh_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "proxy-rhai-e2e-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running Envoy with the plugin; dropping it stops Envoy and both servers.
pub struct Envoy {
    child: Mutex<Child>,
    /// The write end of the shell's watchdog pipe: closing it ends Envoy.
    watchdog: Mutex<Option<ChildStdin>>,
    dir: PathBuf,
    log_path: PathBuf,
    admin: SocketAddr,
    addr: SocketAddr,
    /// The route's target (cluster `upstream`).
    pub upstream: Upstream,
    /// The second server (cluster `callout`).
    pub callout: Upstream,
    /// With [`EnvoyBuilder::dynamic_listener`]: the LDS file and the listener it holds.
    lds: Mutex<Option<(PathBuf, Value)>>,
}

/// The lines of a log that say the VM failed (a trap, an uncaught exception, a Rust panic).
pub fn vm_failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            (l.contains("Function: proxy_on_") && l.contains("failed"))
                || l.contains("Uncaught RuntimeError")
                || l.contains("Uncaught RangeError")
                || l.contains("panicked at")
                || l.contains("memory allocation of")
                || l.contains("Wasm VM failed")
        })
        .collect()
}

impl Envoy {
    /// An Envoy whose plugin configuration is `plugin_config` (serialized as JSON text).
    pub fn builder(plugin_config: Value) -> EnvoyBuilder {
        Self::builder_raw(plugin_config.to_string())
    }

    /// An Envoy whose plugin configuration is this exact text (it may be invalid JSON).
    pub fn builder_raw(plugin_config: impl Into<String>) -> EnvoyBuilder {
        EnvoyBuilder::new(plugin_config.into())
    }

    pub fn start(plugin_config: Value) -> Envoy {
        Self::builder(plugin_config).start()
    }

    pub fn try_start(plugin_config: Value) -> Result<Envoy, String> {
        Self::builder(plugin_config).try_start()
    }

    /// The plugin configuration `{"script": script}`.
    pub fn with_script(script: &str) -> Envoy {
        Self::start(json!({ "script": script }))
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn admin_get(&self, path: &str) -> io::Result<Reply> {
        self.admin_request("GET", path)
    }

    /// Gives the plugin a new configuration through LDS (needs
    /// [`EnvoyBuilder::dynamic_listener`]); returns whether Envoy accepted the update, after
    /// waiting for it to take it or reject it.
    pub fn reconfigure(&self, plugin_config: Value) -> bool {
        let counter = |name: &str| -> u64 {
            let stats = self
                .admin_get("/stats?filter=listener_manager.lds")
                .map(|r| r.text())
                .unwrap_or_default();
            stats
                .lines()
                .find_map(|l| l.strip_prefix(&format!("listener_manager.lds.{name}: ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let (success, rejected) = (counter("update_success"), counter("update_rejected"));
        {
            let mut lds = self.lds.lock().unwrap();
            let (path, listener) = lds
                .as_mut()
                .expect("reconfigure needs EnvoyBuilder::dynamic_listener");
            set_plugin_config(listener, &plugin_config);
            write_atomically(path, &json!({"resources": [listener.clone()]}));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if counter("update_success") > success {
                return true;
            }
            if counter("update_rejected") > rejected {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "Envoy neither took nor rejected the new listener in 60 s:\n{}",
            tail(&self.log(), 40)
        );
    }

    /// A request to Envoy's admin interface (e.g. `GET /clusters`, `GET /stats`).
    pub fn admin_request(&self, method: &str, path: &str) -> io::Result<Reply> {
        let body_len = (method == "POST").then_some(0);
        exchange(self.admin, false, |s| {
            s.write_all(&request_head(method, path, &[], body_len))
        })
    }

    fn read_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Envoy's log, up to now: everything logged before this call is in it.
    ///
    /// Envoy writes its log file every few milliseconds, so this first asks the admin
    /// interface to log a line of its own (`POST /logging?misc=info` logs "change log level")
    /// and waits (at most 10 s) until that line is written: every line logged before it, e.g.
    /// while a request that already got its response was handled, is written too.
    pub fn log(&self) -> String {
        const MARKER: &str = "change log level: name='misc'";
        let before = self.read_log().matches(MARKER).count();
        if self.admin_request("POST", "/logging?misc=info").is_err() {
            // Envoy is gone: its last lines are written already, or soon.
            thread::sleep(Duration::from_millis(LOG_FLUSH_MS * 5));
            return self.read_log();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.read_log();
            if log.matches(MARKER).count() > before || Instant::now() > deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(LOG_FLUSH_MS / 2));
        }
    }

    /// The access log's lines ([`EnvoyBuilder::access_log`]), once it has at least `count`
    /// (waits at most 10 s: Envoy writes it every few milliseconds, after each response).
    pub fn access_log(&self, count: usize) -> Vec<String> {
        let path = self.dir.join(ACCESS_LOG);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= count || Instant::now() > deadline {
                return lines;
            }
            thread::sleep(Duration::from_millis(LOG_FLUSH_MS / 2));
        }
    }

    /// Waits (at most 10 s) until the log has a line containing `needle`; returns that line.
    /// (A line logged before this call is found at once; this also waits for later ones.)
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line contains {needle:?}; log tail:\n{}",
                    tail(&log, 40)
                );
            }
        }
    }

    /// Plugin log lines (`wasm log ...`) containing `needle`.
    pub fn plugin_log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("wasm log") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// The value of one stat (`/stats?filter=^NAME$`), or `None` when Envoy has no such stat.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = self
            .admin_request("GET", &format!("/stats?filter=^{name}$"))
            .expect("admin /stats")
            .text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}: {v}")))
    }

    /// Waits (at most 10 s) until the stat exists and `ok` holds for it; returns its value.
    pub fn wait_for_stat(&self, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.stat(name);
            if let Some(v) = value.filter(|v| ok(*v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "stat {name} is {value:?}; wasm stats:\n{}",
                    self.wasm_stats()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Admin `/stats` lines about wasm.
    pub fn wasm_stats(&self) -> String {
        match self.admin_get("/stats") {
            Ok(r) => r
                .text()
                .lines()
                .filter(|l| l.contains("wasm"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("(admin /stats failed: {e})"),
        }
    }

    /// Envoy's resident memory (`VmRSS`), in bytes. A wasm VM's memory never shrinks, so what a
    /// request made the VM take shows here for good.
    pub fn rss_bytes(&self) -> u64 {
        let pid = fs::read_to_string(self.dir.join("envoy.pid")).expect("Envoy's pid file");
        let status = fs::read_to_string(format!("/proc/{}/status", pid.trim()))
            .expect("Envoy's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect("VmRSS in Envoy's /proc status")
    }

    /// Asserts the plugin's VM never failed (the log is the only witness: Envoy 1.40 counts no
    /// failed VM in its stats) and Envoy still answers.
    pub fn assert_healthy(&self) {
        let running = self.child.lock().unwrap().try_wait().unwrap().is_none();
        let served = self.try_request("GET", "/__healthcheck", &[], b"");
        let log = self.log();
        let failures = vm_failures(&log);
        if !running || served.is_err() || !failures.is_empty() {
            panic!(
                "Envoy is not healthy: running={running}, request after the test: {:?}\n\
                 VM failure lines:\n{}\nwasm stats:\n{}\nlog tail:\n{}",
                served.map(|r| r.status),
                failures.join("\n"),
                self.wasm_stats(),
                tail(&log, 40)
            );
        }
    }

    /// Envoy's log file, stdout and stderr.
    fn full_output(&self) -> String {
        let read = |name: &str| {
            fs::read(self.dir.join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let mut out = read("envoy.log");
        for extra in ["stderr", "stdout"] {
            let text = read(extra);
            if !text.trim().is_empty() {
                let _ = write!(out, "\n--- envoy {extra} ---\n{text}");
            }
        }
        out
    }

    fn cleanup_dir(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    fn stop(&self) {
        // Closing the watchdog pipe makes the shell end Envoy.
        self.watchdog.lock().unwrap().take();
        let mut child = self.child.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                if let Ok(pid) = fs::read_to_string(self.dir.join("envoy.pid")) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("Envoy files kept in {}", self.dir.display());
        } else {
            self.cleanup_dir();
        }
    }
}
