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

/// A configuration that passed every check.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Rhai source of the script.
    pub script: String,
    /// The user's own settings, handed to the script by `config()`.
    pub user_config: Value,
    /// Sandbox limits.
    pub limits: Limits,
    /// What happens to a request when its script fails.
    pub error_policy: ErrorPolicy,
}

/// Sandbox limits; each is checked against [`Limits::RANGES`] when configured.
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
    /// Bytes of a request or response body the plugin buffers for a body phase; a larger
    /// request body is answered 413, a larger response body 502.
    pub max_body_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 500_000,
            max_call_depth: 32,
            max_expr_depth: 64,
            max_string_size: 8 << 20,
            max_array_size: 100_000,
            max_map_size: 10_000,
            max_body_size: 4 << 20,
        }
    }
}

impl Limits {
    /// Allowed range of each limit, inclusive.
    pub const RANGES: [(&'static str, u64, u64); 7] = [
        ("max_operations", 1_000, 100_000_000),
        ("max_call_depth", 1, 200),
        ("max_expr_depth", 8, 1_000),
        ("max_string_size", 1_024, 256 << 20),
        ("max_array_size", 16, 10_000_000),
        ("max_map_size", 16, 1_000_000),
        ("max_body_size", 0, 256 << 20),
    ];

    fn values(&self) -> [u64; 7] {
        [
            self.max_operations,
            self.max_call_depth as u64,
            self.max_expr_depth as u64,
            self.max_string_size as u64,
            self.max_array_size as u64,
            self.max_map_size as u64,
            self.max_body_size as u64,
        ]
    }

    fn check(&self) -> Result<(), String> {
        for ((name, min, max), value) in Self::RANGES.iter().zip(self.values()) {
            if value < *min || value > *max {
                return Err(format!(
                    "limits.{name} = {value} is out of range {min}..={max}"
                ));
            }
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
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_slice(bytes)
            .map_err(|e| format!("plugin configuration is not valid: {e}"))?;
        let script = raw
            .script
            .ok_or("plugin configuration has no \"script\" (the Rhai source to run)")?;
        raw.limits.check()?;
        if !(200..=599).contains(&raw.error_policy.status) {
            return Err(format!(
                "error_policy.status = {} is not an HTTP status (200..=599)",
                raw.error_policy.status
            ));
        }
        Ok(Self {
            script,
            user_config: raw.config,
            limits: raw.limits,
            error_policy: raw.error_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_configuration_gets_defaults() {
        let c = PluginConfig::parse(br#"{"script": "x"}"#).unwrap();
        assert_eq!(c.script, "x");
        assert_eq!(c.user_config, Value::Null);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.error_policy, ErrorPolicy::default());
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let err = |json: &str| PluginConfig::parse(json.as_bytes()).unwrap_err();
        assert!(err("{").contains("not valid"));
        assert!(err(r#"{"config": {}}"#).contains("no \"script\""));
        assert!(err(r#"{"script": "", "scirpt": ""}"#).contains("unknown field `scirpt`"));
        assert!(err(r#"{"script": "", "limits": {"max_ops": 1}}"#).contains("max_ops"));
        assert!(err(r#"{"script": "", "limits": {"max_operations": 5}}"#)
            .contains("limits.max_operations = 5 is out of range"));
        assert!(err(r#"{"script": "", "error_policy": {"mode": "maybe"}}"#).contains("maybe"));
        assert!(err(r#"{"script": "", "error_policy": {"status": 99}}"#).contains("99"));
    }

    #[test]
    fn reads_every_setting() {
        let c = PluginConfig::parse(
            br#"{"script": "s", "config": [1],
                 "limits": {"max_operations": 2000, "max_body_size": 10},
                 "error_policy": {"mode": "fail_open", "status": 503, "body": "busy"}}"#,
        )
        .unwrap();
        assert_eq!(c.user_config, serde_json::json!([1]));
        assert_eq!(c.limits.max_operations, 2000);
        assert_eq!(c.limits.max_body_size, 10);
        assert_eq!(c.limits.max_call_depth, 32);
        assert_eq!(c.error_policy.mode, FailMode::FailOpen);
        assert_eq!(c.error_policy.status, 503);
        assert_eq!(c.error_policy.body, "busy");
    }
}
