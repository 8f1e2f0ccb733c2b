//! A real `redis-server` (Debian package `redis-server`, installed by `tools/setup.sh`) for
//! the tests: on a free loopback port, with no persistence (`--save '' --appendonly no`, its
//! directory a fresh temporary one), stopped when dropped. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl RedisServer {
    /// A server with no password.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with more `redis-server` options (`["--requirepass", "s3cret"]`).
    pub fn start_with(args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "proxy-rhai-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.restart();
        server
    }

    /// `host:port`, as `--redis` and `p.redis` take it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (again, after [`RedisServer::stop`]), on a new free port unless it had one.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("a temporary folder for redis-server");
        // Another process may take the port between the probe and redis-server: try again.
        for _ in 0..5 {
            let port = match self.port {
                0 => free_port(),
                port => port,
            };
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs (tools/setup.sh installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // it exited: the port was taken
                }
                if answers_ping(port) {
                    self.port = port;
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    /// Stops it: calls to it now fail to connect.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One command sent straight to the server (for a test to look at or set up the data);
    /// the reply as Redis sent it (RESP).
    pub fn command(&self, args: &[&str]) -> String {
        let mut query = format!("*{}\r\n", args.len());
        for arg in args {
            query.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let mut stream = TcpStream::connect(self.address()).expect("redis-server answers");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        stream
            .write_all(query.as_bytes())
            .expect("the command is sent");
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        // Replies the tests ask for are one line or one short bulk string.
        while !complete(&reply) {
            let n = stream.read(&mut chunk).expect("redis-server replies");
            assert!(n > 0, "redis-server closed the connection");
            reply.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&reply).into_owned()
    }
}

fn complete(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    let Some(first) = text.find("\r\n") else {
        return false;
    };
    match text
        .strip_prefix('$')
        .and_then(|t| t[..first - 1].parse::<i64>().ok())
    {
        Some(len) if len >= 0 => text.len() >= first + 2 + len as usize + 2,
        _ => true,
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A port no one listens on now (the OS's choice for port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 64];
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && stream
            .read(&mut reply)
            .is_ok_and(|n| reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
