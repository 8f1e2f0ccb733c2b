//! The plugin configuration: parsed and checked once, at configure time, into typed settings.
//!
//! ```json
//! { "script": "fn on_request_headers() { ... }",
//!   "config": { "mockEnable": false },
//!   "limits": { "max_operations": 500000 },
//!   "error_policy": { "mode": "fail_closed", "status": 500, "body": "internal error" } }
//! ```

use serde::Deserialize;
use serde_json::Value;

/// Why a plugin configuration is refused: the kind of mistake, where in the script it is (for
/// the script's own errors) and the one line that says it.
///
/// ```
/// use proxy_rhai::config::{ConfigErrorKind, PluginConfig};
/// let e = PluginConfig::parse(b"{not json").unwrap_err();
/// assert_eq!(e.kind, ConfigErrorKind::Invalid);
/// assert!(e.to_string().starts_with("plugin configuration is not valid"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub kind: ConfigErrorKind,
    /// Line of the script (1-based) a compile error or a top-level failure points at.
    pub line: Option<usize>,
    /// Column (1-based) on that line, when known.
    pub column: Option<usize>,
    message: String,
}

/// See [`ConfigError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// Not JSON, an unknown key, no script, a limit out of range, a bad rule or error policy.
    Invalid,
    /// A script that doesn't compile.
    Compile,
    /// A script whose top-level statements fail when they run, at configuration.
    Load,
    /// A script without a phase function, or with one that takes parameters.
    Phases,
}

impl ConfigError {
    pub(crate) fn new(kind: ConfigErrorKind, message: String) -> Self {
        Self {
            kind,
            line: None,
            column: None,
            message,
        }
    }

    /// The same error, pointing at `line` and `column` of the script.
    pub(crate) fn at(mut self, line: Option<usize>, column: Option<usize>) -> Self {
        (self.line, self.column) = (line, column);
        self
    }

    /// The same error with its message passed through `f` (to take secrets out of it).
    pub(crate) fn map_message(mut self, f: impl FnOnce(&str) -> String) -> Self {
        self.message = f(&self.message);
        self
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The checks of the configuration's JSON say what is wrong as text.
impl From<String> for ConfigError {
    fn from(message: String) -> Self {
        Self::new(ConfigErrorKind::Invalid, message)
    }
}

/// A configuration that passed every check.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Rhai source of the script; `None` only when every rule brings its own (then a request
    /// that matches no rule passes untouched).
    pub script: Option<String>,
    /// The user's own settings, handed to the script by `config()`.
    pub user_config: Value,
    /// Higress `_rules_`: the first rule matching a request chooses its script and config.
    pub rules: Vec<Rule>,
    /// Period of `on_tick()`, in milliseconds; 0 when the script defines no `on_tick`.
    pub tick_period_ms: u32,
    /// Sandbox limits.
    pub limits: Limits,
    /// What happens to a request when its script fails.
    pub error_policy: ErrorPolicy,
    /// The proxy runs the plugin with Envoy's `allow_on_headers_stop_iteration` (the plugin
    /// can't read Envoy's own setting): a message whose body a body phase buffers keeps its
    /// headers until that phase has run, so the phase may write them.
    pub allow_on_headers_stop_iteration: bool,
    /// How the script's functions run.
    pub engine: ScriptEngine,
    /// The Redis clusters the script calls, by cluster name (`"redis"`), in name order.
    pub redis: Vec<(String, RedisSettings)>,
}

/// How a script's functions run: the same results either way (see `src/compiled.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptEngine {
    /// Rhai's evaluator walks each function's syntax tree on every call.
    Rhai,
    /// Each function is compiled once, at configuration, into Rust closures; what the
    /// compiler does not handle yet is run by Rhai's evaluator.
    #[default]
    Compiled,
}

impl ScriptEngine {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rhai => "rhai",
            Self::Compiled => "compiled",
        }
    }
}

/// One cluster of the `"redis"` key: how the plugin signs in to it (Higress's
/// `proxy_redis_init`). A cluster the script calls without an entry gets the defaults.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Redis 6 ACL user; empty: none (`AUTH password` alone).
    pub username: String,
    /// Empty: no `AUTH`. Never logged (it is one of the configuration's secrets).
    pub password: String,
    /// How long a call may wait for its reply.
    pub timeout_ms: u32,
    /// The database to `SELECT` (Higress's `?db=N` suffix of the cluster name).
    pub database: u32,
}

impl Default for RedisSettings {
    /// As Higress's guide: no credentials, 1 s, database 0.
    fn default() -> Self {
        Self {
            username: String::new(),
            password: String::new(),
            timeout_ms: 1_000,
            database: 0,
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    /// Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("username", &self.username)
            .field("password", &format_args!("<{} bytes>", self.password.len()))
            .field("timeout_ms", &self.timeout_ms)
            .field("database", &self.database)
            .finish()
    }
}

impl RedisSettings {
    /// Longest `timeout_ms` (as a callout's).
    pub const MAX_TIMEOUT_MS: u32 = 600_000;

    fn check(&self, cluster: &str) -> Result<(), String> {
        if cluster.is_empty() || cluster.contains('?') {
            return Err(format!(
                "redis: {cluster:?} is not a cluster name (empty, or with a `?`: give the \
                 database as \"database\")"
            ));
        }
        if !(1..=Self::MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(format!(
                "redis.{cluster}.timeout_ms = {} is out of range 1..={}",
                self.timeout_ms,
                Self::MAX_TIMEOUT_MS
            ));
        }
        Ok(())
    }
}

/// How much of the VM's heap the limits together may plan for: the host caps a wasm VM's
/// memory at 1 GiB (V8's 16,384 pages), and a failed allocation traps the VM. The quarter
/// left is for what no limit counts: the plugin itself, the allocator's fragmentation.
pub const SAFE_VM_HEAP: u64 = 768 << 20;

/// Sandbox limits; each is checked against [`Limits::RANGES`] when configured, and together
/// against [`SAFE_VM_HEAP`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Rhai operations allowed in one phase function or callback call.
    pub max_operations: u64,
    /// Depth of nested function calls.
    pub max_call_depth: usize,
    /// Depth of nested expressions (in the script and in its functions).
    pub max_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Items in one array or bytes in one blob.
    pub max_array_size: usize,
    /// Entries in one object map.
    pub max_map_size: usize,
    /// Levels of arrays, maps and closures nested in one another in one value.
    pub max_value_depth: usize,
    /// Bytes of a request or response body the plugin buffers for a body phase; a larger
    /// request body is answered 413, a larger response is reset.
    pub max_body_size: usize,
    /// Bytes one phase call or callback may add to the VM's heap (enforced in the proxy,
    /// where the heap is counted; not in the emulator).
    pub max_memory: usize,
    /// Bytes of heap the whole VM may use, for every request in flight together: past it, a
    /// call that asks for more fails (enforced in the proxy, like `max_memory`).
    pub max_vm_memory: usize,
    /// Callouts one request may make, counting those its callbacks make.
    pub max_callouts: usize,
    /// Distinct metrics (kind and name) a script may define in one plugin configuration.
    pub max_metrics: usize,
    /// Bytes in one shared-data key.
    pub max_shared_key_size: usize,
    /// Bytes in one shared-data value.
    pub max_shared_value_size: usize,
    /// Bytes of keys and values in the VM's shared data (one store for every worker).
    pub max_shared_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 500_000,
            max_call_depth: 32,
            max_expr_depth: 64,
            max_string_size: 8 << 20,
            max_array_size: 4 << 20,
            max_map_size: 10_000,
            max_value_depth: 128,
            max_body_size: 4 << 20,
            max_memory: 64 << 20,
            max_vm_memory: 256 << 20,
            max_callouts: 32,
            max_metrics: 256,
            max_shared_key_size: 256,
            max_shared_value_size: 64 << 10,
            max_shared_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// Allowed range of each limit, inclusive.
    pub const RANGES: [(&'static str, u64, u64); 15] = [
        ("max_operations", 1_000, 100_000_000),
        // Rhai recurses on the VM's native stack (V8 gives wasm about 1 MiB): measured in Envoy,
        // 32 levels with the deepest expressions max_expr_depth allows run; 48 levels trap.
        ("max_call_depth", 1, 32),
        ("max_expr_depth", 8, 64),
        ("max_string_size", 1_024, 128 << 20),
        ("max_array_size", 16, 10_000_000),
        ("max_map_size", 16, 1_000_000),
        // Dropping, copying or printing a value recurses once per level on the same stack:
        // measured in Envoy, 512 levels at the deepest call level run.
        ("max_value_depth", 8, 512),
        ("max_body_size", 0, 128 << 20),
        ("max_memory", 1 << 20, 512 << 20),
        ("max_vm_memory", 16 << 20, 512 << 20),
        ("max_callouts", 0, 1_000),
        ("max_metrics", 0, 10_000),
        ("max_shared_key_size", 1, 64 << 10),
        ("max_shared_value_size", 0, 16 << 20),
        ("max_shared_bytes", 0, 1 << 30),
    ];

    fn values(&self) -> [u64; 15] {
        [
            self.max_operations,
            self.max_call_depth as u64,
            self.max_expr_depth as u64,
            self.max_string_size as u64,
            self.max_array_size as u64,
            self.max_map_size as u64,
            self.max_value_depth as u64,
            self.max_body_size as u64,
            self.max_memory as u64,
            self.max_vm_memory as u64,
            self.max_callouts as u64,
            self.max_metrics as u64,
            self.max_shared_key_size as u64,
            self.max_shared_value_size as u64,
            self.max_shared_bytes as u64,
        ]
    }

    /// The most a call can add to the heap past `max_vm_memory` before a check stops it:
    /// the largest value it can make in one step, with the copy a step makes of it. A string
    /// grows into a new buffer while the old one is alive; an array doubles its items
    /// (`Dynamic`s) while copying them; a body is read as bytes and may be given as text
    /// (at most three bytes per byte, U+FFFD for each invalid one).
    pub fn largest_step(&self) -> u64 {
        let item = std::mem::size_of::<rhai::Dynamic>() as u64;
        (3 * self.max_string_size as u64)
            .max(3 * self.max_array_size as u64 * item)
            .max(4 * self.max_body_size as u64)
    }

    fn check(&self) -> Result<(), String> {
        for ((name, min, max), value) in Self::RANGES.iter().zip(self.values()) {
            if value < *min || value > *max {
                return Err(format!(
                    "limits.{name} = {value} is out of range {min}..={max}"
                ));
            }
        }
        if self.max_memory > self.max_vm_memory {
            return Err(format!(
                "limits.max_memory ({}) is more than limits.max_vm_memory ({})",
                self.max_memory, self.max_vm_memory
            ));
        }
        let peak = self.max_vm_memory as u64 + self.largest_step();
        if peak > SAFE_VM_HEAP {
            return Err(format!(
                "limits: max_vm_memory ({}) plus the largest step one call can take past it \
                 ({}: 3 x max_string_size, 3 x max_array_size x {} bytes, or 4 x max_body_size) \
                 is {peak} bytes, more than the {SAFE_VM_HEAP} the VM can safely reach",
                self.max_vm_memory,
                self.largest_step(),
                std::mem::size_of::<rhai::Dynamic>()
            ));
        }
        Ok(())
    }
}

/// What the plugin does with a request whose script failed (threw, hit a limit, …).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorPolicy {
    /// `fail_closed` answers locally; `fail_open` lets the request through untouched.
    pub mode: FailMode,
    /// Status of the local answer when failing closed.
    pub status: u32,
    /// Body of the local answer when failing closed; never contains script internals.
    pub body: String,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        Self {
            mode: FailMode::FailClosed,
            status: 500,
            body: "Internal Server Error\n".into(),
        }
    }
}

/// See [`ErrorPolicy::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    FailClosed,
    FailOpen,
}

/// One Higress rule: a matcher, and the script and config it selects.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub matcher: Matcher,
    /// The rule's own script; `None` runs the global one.
    pub script: Option<String>,
    /// The rule's own `config`; `None` keeps the global one.
    pub config: Option<Value>,
}

/// What a rule matches on; each list matches when any of its entries does.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// `_match_route_`: route names, exactly.
    Route(Vec<String>),
    /// `_match_route_prefix_`: route names starting with one of these.
    RoutePrefix(Vec<String>),
    /// `_match_domain_`: the request's host (`:authority` without port).
    Domain(Vec<DomainPattern>),
    /// `_match_service_`: the upstream service, from the cluster name.
    Service(Vec<ServicePattern>),
}

/// A `_match_domain_` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainPattern {
    /// `*.example.com`: any host ending with `.example.com`.
    Suffix(String),
    /// `example.*`: any host starting with `example.`.
    Prefix(String),
    Exact(String),
}

/// A `_match_service_` entry: `name` or `name:port`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePattern {
    pub name: String,
    pub port: Option<u16>,
}

/// What a request offers to rule matching.
#[derive(Debug, Default)]
pub struct RequestFacts<'a> {
    pub host: &'a str,
    pub route_name: &'a str,
    pub cluster_name: &'a str,
}

impl Matcher {
    /// Whether the request's facts match.
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        match self {
            Matcher::Route(names) => names.iter().any(|n| n == facts.route_name),
            Matcher::RoutePrefix(prefixes) => prefixes
                .iter()
                .any(|p| facts.route_name.starts_with(p.as_str())),
            Matcher::Domain(patterns) => {
                let host = strip_port(facts.host).to_ascii_lowercase();
                patterns.iter().any(|p| match p {
                    DomainPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
                    DomainPattern::Prefix(prefix) => host.starts_with(prefix.as_str()),
                    DomainPattern::Exact(exact) => host == *exact,
                })
            }
            Matcher::Service(patterns) => {
                let (name, port) = service_of_cluster(facts.cluster_name);
                patterns
                    .iter()
                    .any(|p| p.name == name && p.port.is_none_or(|want| Some(want) == port))
            }
        }
    }

    /// Which request facts this matcher needs (so the others are never fetched).
    pub fn needs(&self) -> (bool, bool, bool) {
        match self {
            Matcher::Domain(_) => (true, false, false),
            Matcher::Route(_) | Matcher::RoutePrefix(_) => (false, true, false),
            Matcher::Service(_) => (false, false, true),
        }
    }
}

/// `host:port` → `host`, keeping IPv6 literals whole.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The service and port of a cluster: Istio's `outbound|80||name.ns.svc.cluster.local`, or
/// the cluster name itself.
fn service_of_cluster(cluster: &str) -> (&str, Option<u16>) {
    let parts: Vec<&str> = cluster.split('|').collect();
    match parts.as_slice() {
        [_, port, _, name] => (name, port.parse().ok()),
        _ => (cluster, None),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    script: Option<String>,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    error_policy: ErrorPolicy,
    #[serde(default, rename = "_rules_")]
    rules: Vec<RawRule>,
    #[serde(default)]
    tick_period_ms: u32,
    #[serde(default)]
    allow_on_headers_stop_iteration: bool,
    #[serde(default)]
    engine: ScriptEngine,
    #[serde(default)]
    redis: std::collections::BTreeMap<String, RedisSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "_match_route_")]
    route: Option<Vec<String>>,
    #[serde(rename = "_match_route_prefix_")]
    route_prefix: Option<Vec<String>>,
    #[serde(rename = "_match_domain_")]
    domain: Option<Vec<String>>,
    #[serde(rename = "_match_service_")]
    service: Option<Vec<String>>,
    script: Option<String>,
    config: Option<Value>,
}

impl RawRule {
    fn check(self, index: usize) -> Result<Rule, String> {
        let what = |m: &str| format!("_rules_[{index}]: {m}");
        let mut matchers = Vec::new();
        if let Some(names) = self.route {
            matchers.push(Matcher::Route(names));
        }
        if let Some(prefixes) = self.route_prefix {
            matchers.push(Matcher::RoutePrefix(prefixes));
        }
        if let Some(domains) = self.domain {
            matchers.push(Matcher::Domain(
                domains.iter().map(|d| domain_pattern(d)).collect(),
            ));
        }
        if let Some(services) = self.service {
            let patterns = services
                .iter()
                .map(|s| service_pattern(s))
                .collect::<Result<_, _>>()
                .map_err(|e| what(&e))?;
            matchers.push(Matcher::Service(patterns));
        }
        let matcher = match <[Matcher; 1]>::try_from(matchers) {
            Ok([m]) => m,
            Err(m) if m.is_empty() => return Err(what(
                "needs one of _match_route_, _match_route_prefix_, _match_domain_, _match_service_",
            )),
            Err(_) => return Err(what("has more than one matcher; use one rule per matcher")),
        };
        let empty = match &matcher {
            Matcher::Route(v) | Matcher::RoutePrefix(v) => v.is_empty(),
            Matcher::Domain(v) => v.is_empty(),
            Matcher::Service(v) => v.is_empty(),
        };
        if empty {
            return Err(what("its matcher list is empty"));
        }
        Ok(Rule {
            matcher,
            script: self.script,
            config: self.config,
        })
    }
}

fn domain_pattern(domain: &str) -> DomainPattern {
    let domain = strip_port(domain).to_ascii_lowercase();
    if let Some(suffix) = domain.strip_prefix('*') {
        DomainPattern::Suffix(suffix.to_string())
    } else if let Some(prefix) = domain.strip_suffix('*') {
        DomainPattern::Prefix(prefix.to_string())
    } else {
        DomainPattern::Exact(domain)
    }
}

fn service_pattern(service: &str) -> Result<ServicePattern, String> {
    match service.rsplit_once(':') {
        Some((name, port)) => {
            let port = port
                .parse()
                .map_err(|_| format!("_match_service_ entry {service:?}: port is not a number"))?;
            Ok(ServicePattern {
                name: name.to_string(),
                port: Some(port),
            })
        }
        None => Ok(ServicePattern {
            name: service.to_string(),
            port: None,
        }),
    }
}

impl PluginConfig {
    /// Parses and checks a plugin configuration; the error says what is wrong, in one line.
    ///
    /// ```
    /// let config = proxy_rhai::config::PluginConfig::parse(
    ///     br#"{"script": "fn on_request_headers() {}", "config": {"a": 1}}"#,
    /// ).unwrap();
    /// assert_eq!(config.user_config["a"], 1);
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        // A refusal quotes what it refused (serde: `invalid type: string "…"`): never a secret.
        Self::check(bytes).map_err(|e| {
            ConfigError::from(
                crate::redact::Redactor::of_json(bytes)
                    .redact(&e)
                    .into_owned(),
            )
        })
    }

    fn check(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_slice(bytes)
            .map_err(|e| format!("plugin configuration is not valid: {e}"))?;
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.check(i))
            .collect::<Result<Vec<_>, _>>()?;
        if raw.script.is_none() && (rules.is_empty() || rules.iter().any(|r| r.script.is_none())) {
            return Err("plugin configuration has no \"script\" (the Rhai source to run)".into());
        }
        raw.limits.check()?;
        if !(200..=599).contains(&raw.error_policy.status) {
            return Err(format!(
                "error_policy.status = {} is not an HTTP status (200..=599)",
                raw.error_policy.status
            ));
        }
        for (cluster, settings) in &raw.redis {
            settings.check(cluster)?;
        }
        Ok(Self {
            script: raw.script,
            user_config: raw.config,
            rules,
            tick_period_ms: raw.tick_period_ms,
            limits: raw.limits,
            error_policy: raw.error_policy,
            allow_on_headers_stop_iteration: raw.allow_on_headers_stop_iteration,
            engine: raw.engine,
            redis: raw.redis.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_configuration_gets_defaults() {
        let c = PluginConfig::parse(br#"{"script": "x"}"#).unwrap();
        assert_eq!(c.script.as_deref(), Some("x"));
        assert_eq!(c.user_config, Value::Null);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.error_policy, ErrorPolicy::default());
        assert!(!c.allow_on_headers_stop_iteration);
        assert_eq!(c.engine, ScriptEngine::Compiled);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let err = |json: &str| {
            PluginConfig::parse(json.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(err("{").contains("not valid"));
        assert!(err(r#"{"config": {}}"#).contains("no \"script\""));
        assert!(err(r#"{"script": "", "scirpt": ""}"#).contains("unknown field `scirpt`"));
        assert!(err(r#"{"script": "", "limits": {"max_ops": 1}}"#).contains("max_ops"));
        assert!(err(r#"{"script": "", "limits": {"max_operations": 5}}"#)
            .contains("limits.max_operations = 5 is out of range"));
        assert!(err(r#"{"script": "", "error_policy": {"mode": "maybe"}}"#).contains("maybe"));
        assert!(err(r#"{"script": "", "error_policy": {"status": 99}}"#).contains("99"));
        // A flag, not a string that reads like one.
        assert!(
            err(r#"{"script": "", "allow_on_headers_stop_iteration": "true"}"#)
                .contains("expected a boolean")
        );
    }

    #[test]
    fn rules_are_parsed_and_checked() {
        let c = PluginConfig::parse(
            br#"{"script": "g", "_rules_": [
                {"_match_route_": ["r1"], "config": {"a": 1}},
                {"_match_domain_": ["*.example.com", "api.*", "Exact.org:8080"], "script": "s2"},
                {"_match_service_": ["svc.ns.svc.cluster.local:80", "plain"]},
                {"_match_route_prefix_": ["admin-"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.rules.len(), 4);
        assert_eq!(c.rules[0].config, Some(serde_json::json!({"a": 1})));
        assert_eq!(c.rules[1].script.as_deref(), Some("s2"));
        let facts = |host, route, cluster| RequestFacts {
            host,
            route_name: route,
            cluster_name: cluster,
        };
        let m = |i: usize, f: RequestFacts| c.rules[i].matcher.matches(&f);
        assert!(m(0, facts("", "r1", "")));
        assert!(!m(0, facts("", "r10", "")));
        assert!(m(1, facts("www.example.com:443", "", "")));
        assert!(!m(1, facts("example.com", "", "")));
        assert!(m(1, facts("api.other.net", "", "")));
        assert!(m(1, facts("exact.org", "", "")));
        assert!(m(2, facts("", "", "outbound|80||svc.ns.svc.cluster.local")));
        assert!(!m(
            2,
            facts("", "", "outbound|81||svc.ns.svc.cluster.local")
        ));
        assert!(m(2, facts("", "", "plain")));
        assert!(m(3, facts("", "admin-users", "")));

        let err = |json: &str| {
            PluginConfig::parse(json.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"script": "", "_rules_": [{"config": {}}]}"#)
            .contains("_rules_[0]: needs one of"));
        assert!(err(
            r#"{"script": "", "_rules_": [{"_match_route_": ["a"], "_match_domain_": ["b"]}]}"#
        )
        .contains("more than one matcher"));
        assert!(err(r#"{"script": "", "_rules_": [{"_match_route_": []}]}"#).contains("empty"));
        assert!(
            err(r#"{"script": "", "_rules_": [{"_match_route_": ["a"], "bogus": 1}]}"#)
                .contains("unknown field `bogus`")
        );
        assert!(err(r#"{"_rules_": [{"_match_route_": ["a"]}]}"#).contains("no \"script\""));
        assert!(
            PluginConfig::parse(br#"{"_rules_": [{"_match_route_": ["a"], "script": "s"}]}"#)
                .is_ok()
        );
    }

    #[test]
    fn reads_every_setting() {
        let c = PluginConfig::parse(
            br#"{"script": "s", "config": [1],
                 "limits": {"max_operations": 2000, "max_body_size": 10},
                 "error_policy": {"mode": "fail_open", "status": 503, "body": "busy"},
                 "allow_on_headers_stop_iteration": true, "engine": "rhai"}"#,
        )
        .unwrap();
        assert_eq!(c.user_config, serde_json::json!([1]));
        assert_eq!(c.limits.max_operations, 2000);
        assert_eq!(c.limits.max_body_size, 10);
        assert_eq!(c.limits.max_call_depth, 32);
        assert_eq!(c.error_policy.mode, FailMode::FailOpen);
        assert_eq!(c.error_policy.status, 503);
        assert_eq!(c.error_policy.body, "busy");
        assert!(c.allow_on_headers_stop_iteration);
        assert_eq!(c.engine, ScriptEngine::Rhai);
        let engine = PluginConfig::parse(br#"{"script": "s", "engine": "jit"}"#).unwrap_err();
        assert!(
            engine.to_string().contains("unknown variant `jit`"),
            "{engine}"
        );
    }

    #[test]
    fn redis_clusters_are_typed_and_checked() {
        let c = PluginConfig::parse(
            br#"{"script": "s", "redis": {
                "outbound|6379||redis.dns": {"username": "u", "password": "Pw-123", "timeout_ms": 50, "database": 2},
                "cache": {}}}"#,
        )
        .unwrap();
        let (name, dns) = &c.redis[1];
        assert_eq!(name, "outbound|6379||redis.dns");
        assert_eq!(
            (dns.username.as_str(), dns.password.as_str()),
            ("u", "Pw-123")
        );
        assert_eq!((dns.timeout_ms, dns.database), (50, 2));
        assert_eq!(c.redis[0], ("cache".into(), RedisSettings::default()));
        // Debug output (a panic message, a trace) never shows the password.
        assert!(!format!("{c:?}").contains("Pw-123"));

        let err = |json: &str| {
            PluginConfig::parse(json.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"script": "", "redis": {"r": {"timeout_ms": 0}}}"#)
            .contains("redis.r.timeout_ms = 0 is out of range"));
        assert!(err(r#"{"script": "", "redis": {"r?db=1": {}}}"#).contains("\"database\""));
        assert!(err(r#"{"script": "", "redis": {"r": {"pasword": "x"}}}"#)
            .contains("unknown field `pasword`"));
        assert!(err(r#"{"script": "", "redis": {"r": {"database": -1}}}"#).contains("-1"));
    }
}
