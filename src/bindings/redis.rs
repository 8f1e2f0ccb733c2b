//! Redis, as Higress's gateway offers it to plugins: commands sent to a Redis cluster of the
//! proxy, each reply handed to a callback, queued and resumed like a callout's.
//!
//! The clusters are made ready as Higress's Go wrapper (`wasm-go` `pkg/wrapper/redis_wrapper.go`)
//! makes them: `proxy_redis_init` once at configure time, a failure only logged; a cluster that
//! isn't ready is initialised again before its next call, and that call fails if it still can't
//! be; a reply `NOAUTH Authentication required` makes the cluster not ready, and the call is
//! sent again once after a new init.

use std::cell::{Cell, RefCell};

use rhai::{Array, Dynamic, FnPtr};

use crate::config::RedisSettings;
use crate::stream::{PendingCall, RedisQuery};

use super::*;

/// The Redis clusters of a configuration, and whether each is ready.
#[derive(Default)]
pub(crate) struct RedisClusters(RefCell<Vec<Cluster>>);

struct Cluster {
    name: String,
    settings: RedisSettings,
    ready: Cell<bool>,
}

impl RedisClusters {
    pub(crate) fn new(configured: &[(String, RedisSettings)]) -> Self {
        let clusters = configured
            .iter()
            .map(|(name, settings)| Cluster {
                name: name.clone(),
                settings: settings.clone(),
                ready: Cell::new(false),
            })
            .collect();
        Self(RefCell::new(clusters))
    }
}

/// What a callback is given for a call that got no reply in time (its deadline passed, give or
/// take the proxy's timer slack) and for one whose connection failed.
const TIMEOUT: &str = "timeout";
const CONNECTION: &str = "connection";

/// The error a script gets where the proxy has no Redis (Envoy, the default build).
fn no_redis<T>(f: &str) -> ScriptResult<T> {
    err(format!(
        "{f}(): Redis needs the plugin's Higress build (proxy_rhai_higress.wasm) in Higress's \
         gateway: this proxy has no Redis host functions"
    ))
}

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    // Where a callout works: a phase or a callback of a request, not `on_log`.
    const REQUEST: Allowed = Allowed::In(Phases::STREAMING);
    bind!(reg, "redis_call", REQUEST, "int: the call id",
    "Sends `command` (an array of strings, ints or blobs: `[\"HINCRBY\", key, field, 1]`) to the Redis cluster `cluster`, then `callback(reply)` with the reply as a Rhai value: a string, an int, an array, `()` for nil. A failure is a map `#{ error: \"message\", kind }`: `kind` is `\"redis\"` for Redis's own error reply (`ERR …`, `WRONGTYPE …`, `NOAUTH …`), `\"timeout\"` when no reply came within the cluster's `timeout_ms`, `\"connection\"` when Redis can't be reached. Like a callout, the phase pauses until the callback ran (the stream resumes after the last one), and counts against `limits.max_callouts`; a reply longer than `limits.max_string_size` is a script error. The cluster's credentials come from the configuration's `\"redis\"` key (a cluster not there gets the defaults). Only in the plugin's Higress build (`proxy_rhai_higress.wasm`): elsewhere every `redis_*` function is an error saying so. A cluster the proxy refuses is an error the script can catch.",
    r#"fn on_request_headers() {
    let user = get_request_header("x-user");
    redis_call("redis", ["HINCRBY", "hits", user, 1], |reply| {
        if type_of(reply) == "map" { log_warn(`redis: ${reply.error}`); return; }
        add_request_header("x-user-hits", `${reply}`);
    });
}"#,
    |a as f, cluster: &str, command: Array, callback: FnPtr| {
        let args = command.iter().map(|arg| redis_arg(f, arg)).collect::<ScriptResult<Vec<_>>>()?;
        a.redis(f, cluster, &args, callback)
    });
    bind!(reg, "redis_get", REQUEST, "int: the call id",
    "`GET key`: the callback gets the value, or `()` when the key doesn't exist. See `redis_call`.",
    r#"fn on_request_headers() {
    redis_get("redis", "flag:" + get_request_header(":path"), |value| {
        if value == "off" { send_http_response(404, [], "disabled"); }
    });
}"#,
    |a as f, cluster: &str, key: Dynamic, callback: FnPtr| {
        a.redis(f, cluster, &[b"GET".to_vec(), redis_arg(f, &key)?], callback)
    });
    bind!(reg, "redis_set", REQUEST, "int: the call id",
    "`SET key value`: the callback gets `\"OK\"`. See `redis_call`.",
    r#"fn on_response_headers() {
    redis_set("redis", "last-status", get_response_header(":status"), |reply| {});
}"#,
    |a as f, cluster: &str, key: Dynamic, value: Dynamic, callback: FnPtr| {
        a.redis(f, cluster, &[b"SET".to_vec(), redis_arg(f, &key)?, redis_arg(f, &value)?], callback)
    });
    bind!(reg, "redis_set", REQUEST, "int: the call id",
    "`SET key value EX ttl_seconds`: the key expires after `ttl_seconds` (at least 1). See `redis_call`.",
    r#"fn on_request_headers() {
    redis_set("redis", "session:" + get_request_header("x-session"), "seen", 300, |reply| {
        if type_of(reply) == "map" { log_warn(reply.error); }
    });
}"#,
    |a as f, cluster: &str, key: Dynamic, value: Dynamic, ttl_seconds: i64, callback: FnPtr| {
        let ttl = seconds(f, "ttl_seconds", ttl_seconds)?;
        let args = [b"SET".to_vec(), redis_arg(f, &key)?, redis_arg(f, &value)?, b"EX".to_vec(), ttl];
        a.redis(f, cluster, &args, callback)
    });
    bind!(reg, "redis_incr", REQUEST, "int: the call id",
    "`INCR key`: the callback gets the new count (1 for a key that didn't exist). See `redis_call`.",
    r#"fn on_request_headers() {
    redis_incr("redis", "hits:" + get_request_header(":path"), |count| {
        set_context("hits", count);
    });
}"#,
    |a as f, cluster: &str, key: Dynamic, callback: FnPtr| {
        a.redis(f, cluster, &[b"INCR".to_vec(), redis_arg(f, &key)?], callback)
    });
    bind!(reg, "redis_expire", REQUEST, "int: the call id",
    "`EXPIRE key seconds`: the callback gets 1, or 0 when the key doesn't exist. See `redis_call`.",
    r#"fn on_request_headers() {
    redis_incr("redis", "burst", |count| {
        if count == 1 { redis_expire("redis", "burst", 10, |set| {}); }
    });
}"#,
    |a as f, cluster: &str, key: Dynamic, seconds: i64, callback: FnPtr| {
        let ttl = self::seconds(f, "seconds", seconds)?;
        a.redis(f, cluster, &[b"EXPIRE".to_vec(), redis_arg(f, &key)?, ttl], callback)
    });
    bind!(reg, "redis_eval", REQUEST, "int: the call id",
    "`EVAL script numkeys keys… args…`: runs the Lua `script` atomically in Redis, with `keys` and `args` (arrays of strings, ints or blobs) as `KEYS` and `ARGV`; the callback gets what the script returns (a Lua table as an array, `false` as `()`). See `redis_call`.",
    r#"const TAKE = "local n = redis.call('DECR', KEYS[1]) if n < 0 then return 0 end return 1";

fn on_request_headers() {
    redis_eval("redis", TAKE, ["tokens"], [], |allowed| {
        if allowed == 0 { send_http_response(429, [], "slow down"); }
    });
}"#,
    |a as f, cluster: &str, script: &str, keys: Array, args: Array, callback: FnPtr| {
        let mut command = Vec::with_capacity(3 + keys.len() + args.len());
        command.extend([b"EVAL".to_vec(), script.as_bytes().to_vec(), keys.len().to_string().into_bytes()]);
        for arg in keys.iter().chain(args.iter()) {
            command.push(redis_arg(f, arg)?);
        }
        a.redis(f, cluster, &command, callback)
    });
}

/// One argument of a command: a string or a blob as its bytes, a number as its digits.
fn redis_arg(f: &str, value: &Dynamic) -> ScriptResult<Vec<u8>> {
    let value = value.flatten_clone();
    if value.is_int() || value.is_float() || value.is_bool() {
        return Ok(value.to_string().into_bytes());
    }
    if value.is_unit() {
        return err(format!(
            "{f}(): a Redis argument is (): give a string, an int or a blob"
        ));
    }
    value_of(f, value).map(crate::batch::Value::into_bytes)
}

/// A TTL argument, at least 1 second.
fn seconds(f: &str, name: &str, value: i64) -> ScriptResult<Vec<u8>> {
    if value < 1 {
        return err(format!(
            "{f}(): {name} {value} is not a number of seconds (1 or more)"
        ));
    }
    Ok(value.to_string().into_bytes())
}

impl<H: Host> Api<H> {
    /// Initialises the configured clusters, at configure time. A failure is only logged: the
    /// cluster is initialised again before its first call (Redis may not be up yet).
    pub(crate) fn init_redis(&self) {
        let clusters = self.redis.0.borrow();
        if !clusters.is_empty() && !self.host.has_redis() {
            self.log_plugin(
                LogLevel::Warn,
                "proxy-rhai: the \"redis\" configuration needs the plugin's Higress build \
                 (proxy_rhai_higress.wasm): this proxy has no Redis host functions, and every \
                 redis_* call fails",
            );
            return;
        }
        for cluster in clusters.iter() {
            match self.redis_init(cluster) {
                Ok(()) => {}
                Err(status) => self.log_plugin(
                    LogLevel::Warn,
                    &format!(
                        "proxy-rhai: Redis cluster '{}' is not ready ({status:?}): initialised \
                         again at its next call",
                        cluster.name
                    ),
                ),
            }
        }
    }

    /// `proxy_redis_init` for `cluster`, with its database as Higress's `?db=N`.
    fn redis_init(&self, cluster: &Cluster) -> Result<(), Status> {
        let s = &cluster.settings;
        let name = match s.database {
            0 => cluster.name.clone(),
            db => format!("{}?db={db}", cluster.name),
        };
        let result = self
            .host
            .redis_init(&name, &s.username, &s.password, s.timeout_ms);
        cluster.ready.set(result.is_ok());
        result
    }

    /// Readies the cluster `name` for a call from `f` (initialising it when it isn't ready,
    /// with the defaults when the configuration doesn't name it); its timeout. A cluster the
    /// configuration doesn't name is kept once the proxy knows it: names a script makes up
    /// can't grow the list.
    fn redis_ready(&self, f: &str, name: &str) -> ScriptResult<u32> {
        let mut clusters = self.redis.0.borrow_mut();
        let found = clusters.iter().position(|c| c.name == name);
        let new = Cluster {
            name: name.to_string(),
            settings: RedisSettings::default(),
            ready: Cell::new(false),
        };
        let cluster = found.and_then(|i| clusters.get(i)).unwrap_or(&new);
        if !cluster.ready.get() {
            if let Err(status) = self.redis_init(cluster) {
                return err(format!(
                    "{f}(): Redis cluster '{name}' is not ready: the proxy refused to \
                     initialise it ({status:?}); is the cluster defined?"
                ));
            }
        }
        let timeout_ms = cluster.settings.timeout_ms;
        if found.is_none() {
            clusters.push(new);
        }
        Ok(timeout_ms)
    }

    /// After a `NOAUTH` reply: the cluster is initialised again and, when that works, the query
    /// sent again; the new call's token.
    pub(crate) fn redis_retry(&self, query: &RedisQuery) -> Option<u32> {
        let clusters = self.redis.0.borrow();
        let cluster = clusters.iter().find(|c| c.name == query.cluster)?;
        cluster.ready.set(false);
        self.redis_init(cluster).ok()?;
        self.host.redis_call(&query.cluster, &query.query).ok()
    }

    /// Sends `command` to `cluster` for `f`; `callback` runs with the reply.
    fn redis(
        &self,
        f: &str,
        cluster: &str,
        command: &[Vec<u8>],
        callback: FnPtr,
    ) -> ScriptResult<i64> {
        let phase = self.enter(f, Allowed::In(Phases::STREAMING))?;
        if !self.host.has_redis() {
            return no_redis(f);
        }
        self.room_for_call(f)?;
        let timeout_ms = self.redis_ready(f, cluster)?;
        let query = crate::resp::encode(command);
        let sent = self.host.current_time_nanos().unwrap_or(0);
        let id = self.host.redis_call(cluster, &query).or_else(|status| {
            err(format!(
                "{f}(): the proxy refused the call to Redis cluster '{cluster}' ({status:?})"
            ))
        })?;
        self.awaits(PendingCall {
            id,
            phase,
            callback,
            deadline_nanos: sent.saturating_add(u64::from(timeout_ms) * 1_000_000),
            redis: true,
            detached: false,
        });
        let query = RedisQuery {
            cluster: cluster.to_string(),
            query,
            retried: false,
        };
        let stream = &mut self.frame.borrow_mut().stream;
        stream.rare_mut().redis_queries.push((id, query));
        Ok(i64::from(id))
    }
}

/// The kind of a failed call: a timeout when its deadline has passed, by the proxy's clock
/// (less `slack`, as a timer may fire a little before), else a connection failure.
pub(crate) fn failure_kind(now_nanos: u64, deadline_nanos: u64, slack: u64) -> &'static str {
    match now_nanos.saturating_add(slack) >= deadline_nanos {
        true => TIMEOUT,
        false => CONNECTION,
    }
}
