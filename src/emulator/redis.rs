//! The emulator's Redis: a small RESP client over TCP to a real `redis-server`, behaving as
//! Higress's Envoy does (its `source/common/redis` client, see `/work/redis-abi.md` in the
//! issue's notes): one connection per cluster, made at the first call; on a new connection
//! `AUTH` (when there is a password) and `SELECT` (database ≠ 0) go first and their replies are
//! dropped, so a wrong password shows as the command's own `NOAUTH` reply; a reply must come
//! within the cluster's timeout, else the call fails and the connection is closed. Native only:
//! no socket reaches a wasm build.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::host::RedisOutcome;

/// The most the client reads for one reply; the plugin refuses far smaller ones
/// (`limits.max_string_size`), this only keeps a runaway server from filling the memory.
const MAX_REPLY: usize = 256 << 20;

/// One Redis cluster of the emulated proxy.
#[derive(Debug)]
pub(crate) struct RedisTarget {
    /// `host:port` of its server.
    pub address: String,
    pub username: String,
    pub password: String,
    pub timeout: Duration,
    pub database: u32,
    connection: Option<TcpStream>,
}

impl RedisTarget {
    /// A server with the defaults Envoy gives a cluster nobody initialised: no `AUTH`,
    /// database 0, a 1 s timeout.
    pub fn new(address: &str) -> Self {
        Self {
            address: address.to_string(),
            username: String::new(),
            password: String::new(),
            timeout: Duration::from_millis(1_000),
            database: 0,
            connection: None,
        }
    }

    /// New settings (`proxy_redis_init`): the connection is closed, the next call signs in
    /// with them.
    pub fn configure(&mut self, username: &str, password: &str, timeout_ms: u32, database: u32) {
        self.username = username.to_string();
        self.password = password.to_string();
        self.timeout = Duration::from_millis(u64::from(timeout_ms));
        self.database = database;
        self.connection = None;
    }

    /// Sends one command (RESP) and waits for its reply.
    pub fn call(&mut self, query: &[u8]) -> RedisOutcome {
        let deadline = Instant::now() + self.timeout;
        let outcome = self.exchange(query, deadline);
        if !matches!(outcome, RedisOutcome::Reply(_)) {
            self.connection = None;
        }
        outcome
    }

    fn exchange(&mut self, query: &[u8], deadline: Instant) -> RedisOutcome {
        let (mut stream, (mut sent, dropped)) = match self.connection.take() {
            Some(stream) => (stream, (Vec::new(), 0)),
            None => match self.connect(deadline) {
                Ok(stream) => (stream, self.sign_in()),
                Err(outcome) => return outcome,
            },
        };
        sent.extend_from_slice(query);
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = stream
            .set_write_timeout(Some(left.max(Duration::from_millis(1))))
            .and_then(|()| stream.write_all(&sent))
        {
            return RedisOutcome::Failed(format!("write: {e}"));
        }
        let mut buffer = Vec::new();
        // The sign-in's replies are dropped, as Envoy's client drops them.
        for _ in 0..dropped {
            if let Err(outcome) = read_reply(&mut stream, &mut buffer, deadline) {
                return outcome;
            }
        }
        match read_reply(&mut stream, &mut buffer, deadline) {
            Ok(reply) => {
                self.connection = Some(stream);
                RedisOutcome::Reply(reply)
            }
            Err(outcome) => outcome,
        }
    }

    /// The commands a new connection starts with (`AUTH`, `SELECT`), as one pipeline, and
    /// how many they are.
    fn sign_in(&self) -> (Vec<u8>, usize) {
        let mut commands = Vec::new();
        let word = |s: &str| s.as_bytes().to_vec();
        if !self.username.is_empty() {
            commands.push(vec![
                word("AUTH"),
                word(&self.username),
                word(&self.password),
            ]);
        } else if !self.password.is_empty() {
            commands.push(vec![word("AUTH"), word(&self.password)]);
        }
        if self.database != 0 {
            commands.push(vec![word("SELECT"), self.database.to_string().into_bytes()]);
        }
        let bytes = commands
            .iter()
            .flat_map(|c| crate::resp::encode(c))
            .collect();
        (bytes, commands.len())
    }

    fn connect(&self, deadline: Instant) -> Result<TcpStream, RedisOutcome> {
        let addresses = self
            .address
            .to_socket_addrs()
            .map_err(|e| RedisOutcome::Failed(format!("{}: {e}", self.address)))?;
        let mut last = format!("{}: no address", self.address);
        for address in addresses {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RedisOutcome::Timeout);
            }
            match TcpStream::connect_timeout(&address, left) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(RedisOutcome::Timeout)
                }
                Err(e) => last = format!("{address}: {e}"),
            }
        }
        Err(RedisOutcome::Failed(last))
    }
}

/// Reads one whole reply (RESP) before `deadline`, keeping what follows it in `buffer`.
fn read_reply(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, RedisOutcome> {
    let mut chunk = [0u8; 16 << 10];
    loop {
        match crate::resp::complete_len(buffer) {
            Ok(Some(len)) => {
                let rest = buffer.split_off(len);
                return Ok(std::mem::replace(buffer, rest));
            }
            Ok(None) if buffer.len() > MAX_REPLY => {
                return Err(RedisOutcome::Failed(format!(
                    "the reply is over {MAX_REPLY} bytes"
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(RedisOutcome::Failed(format!("not a RESP reply: {e}"))),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RedisOutcome::Timeout);
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return Err(RedisOutcome::Failed("the socket refused a timeout".into()));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(RedisOutcome::Failed("Redis closed the connection".into())),
            Ok(n) => buffer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(RedisOutcome::Timeout)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RedisOutcome::Failed(format!("read: {e}"))),
        }
    }
}
