//! Secrets of the configuration kept out of the lines the plugin logs.
//!
//! An error message quotes what it failed on (`Error parsing integer number 'sk_live_…'`,
//! `Function not found: sk_live_…`): when a script hands a `config` value to such a function,
//! the plugin's own error line would carry it into the proxy log. Every line the plugin itself
//! writes (script errors, warnings, configure-time refusals) goes through [`Redactor::redact`];
//! what a script logs itself (`log_*`, `print`, `debug`) does not.
//!
//! Which values count, in `config` and in every rule's `config`:
//! - every string of at least [`MIN_LEN`] characters, anywhere, unless it reads as a name: only
//!   lowercase ASCII letters and `-_./:` ([`is_name`]: a cluster `token-svc`, a header
//!   `x-tenant-id`, a path `/token`), which an error about it had better show;
//! - under a key whose name looks like a secret's ([`SECRET_NAMES`], any case, anywhere in the
//!   name: `api_key`, `X-Auth-Token`, `passwords`), every string and number of at least
//!   [`MIN_NAMED_LEN`] characters, and the names of the keys of maps nested there (a map of API
//!   keys to tenants).
//!
//! - every Redis password (`redis.<cluster>.password`), whatever its length.
//!
//! Shorter values (`"on"`, `"x-user"`, `42`) and names stay readable in messages. Each occurrence of a
//! secret, as it is or escaped as Rhai quotes strings, becomes [`REDACTED`].

use std::borrow::Cow;

use serde_json::Value;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";
/// Shortest string counted as a secret wherever it is.
pub const MIN_LEN: usize = 8;
/// Shortest value counted as a secret under a key named like one.
pub const MIN_NAMED_LEN: usize = 4;
/// Parts of key names that mark their values as secrets.
pub const SECRET_NAMES: [&str; 12] = [
    "key",
    "secret",
    "token",
    "passw",
    "pwd",
    "auth",
    "credential",
    "private",
    "cookie",
    "session",
    "signature",
    "salt",
];

/// The secrets of one configuration, longest first (so that one inside another goes with it).
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// The secrets of these `config` values.
    pub fn new<'a>(configs: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut secrets = Vec::new();
        for config in configs {
            collect(config, false, &mut secrets);
        }
        Self::default().with_secrets(secrets)
    }

    /// These secrets too, whatever their length (the Redis passwords: a secret by where they
    /// are, not by their shape).
    pub fn with_secrets(mut self, more: impl IntoIterator<Item = String>) -> Self {
        let secrets = &mut self.secrets;
        let added = secrets.len();
        secrets.extend(more.into_iter().filter(|s| !s.is_empty()));
        // Escaped as Rhai's (and Rust's) debug form quotes a string.
        let escaped: Vec<String> = secrets[added..]
            .iter()
            .map(|s| format!("{s:?}").trim_matches('"').to_string())
            .filter(|e| !secrets.contains(e))
            .collect();
        secrets.extend(escaped);
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        self
    }

    /// The secrets of a plugin configuration given as JSON text (`config`, each rule's, the
    /// Redis passwords), for a refusal made before the configuration was checked; none when
    /// it isn't JSON.
    pub fn of_json(configuration: &[u8]) -> Self {
        let Ok(whole) = serde_json::from_slice::<Value>(configuration) else {
            return Self::default();
        };
        let rules = whole.get("_rules_").and_then(Value::as_array);
        let rule_configs = rules.into_iter().flatten().filter_map(|r| r.get("config"));
        let clusters = whole.get("redis").and_then(Value::as_object);
        let passwords = clusters
            .into_iter()
            .flat_map(|c| c.values())
            .filter_map(|c| {
                c.get("password")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        Self::new(whole.get("config").into_iter().chain(rule_configs)).with_secrets(passwords)
    }

    /// `line` with every secret replaced by [`REDACTED`].
    pub fn redact<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let mut line = Cow::Borrowed(line);
        for secret in &self.secrets {
            if line.contains(secret.as_str()) {
                line = Cow::Owned(line.replace(secret.as_str(), REDACTED));
            }
        }
        line
    }
}

/// A string of lowercase letters and `-_./:` only: the shape of cluster, host, header and path
/// names. Keys, tokens and passwords have digits or capitals (or sit under a key named so).
pub fn is_name(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_lowercase() || b"-_./:".contains(&b))
}

fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|part| name.contains(part))
}

fn collect(value: &Value, named: bool, out: &mut Vec<String>) {
    let min = if named { MIN_NAMED_LEN } else { MIN_LEN };
    let keep = |text: &str, out: &mut Vec<String>| {
        if text.chars().count() >= min {
            out.push(text.to_string());
        }
    };
    match value {
        Value::String(s) if named || !is_name(s) => keep(s, out),
        Value::Number(n) if named => keep(&n.to_string(), out),
        Value::Array(items) => {
            for item in items {
                collect(item, named, out);
            }
        }
        Value::Object(map) => {
            for (name, item) in map {
                if named {
                    keep(name, out);
                }
                collect(item, named || is_secret_name(name), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_strings_and_named_values_are_secrets() {
        let r = Redactor::new([&json!({
            "mode": "on",
            "header": "x-user",
            "upstream": "billing-service",
            "backup": "billing-service-2",
            "api_key": "k-12",
            "limits": {"retries": 12345},
            "Auth": {"pin": 98765, "tenants": {"t-001": "acme"}},
            "list": ["short", "a-long-value"],
            "quoted": "say \"hi\" now",
        })]);
        let line = "on x-user billing-service k-12 12345 98765 t-001 acme a-long-value short";
        assert_eq!(
            r.redact(line),
            "on x-user billing-service [redacted] 12345 [redacted] [redacted] [redacted] a-long-value short"
        );
        assert_eq!(r.redact("billing-service-2"), "[redacted]");
        assert_eq!(r.redact(r#"'say \"hi\" now'"#), "'[redacted]'");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_secret_inside_another_goes_with_it() {
        let r = Redactor::new([&json!({"a": "sk_live_1234", "b": "sk_live_1234_extended"})]);
        assert_eq!(r.redact("x sk_live_1234_extended y"), "x [redacted] y");
    }

    #[test]
    fn secrets_of_a_configuration_text() {
        let r = Redactor::of_json(
            br#"{"script": "s", "config": {"k": "global-Secret-1"},
                 "_rules_": [{"_match_route_": ["r"], "config": {"token": "rule1"}}]}"#,
        );
        assert_eq!(
            r.redact("global-Secret-1 rule1 r s"),
            "[redacted] [redacted] r s"
        );
        assert!(Redactor::of_json(b"{not json").secrets.is_empty());
        // A Redis password is a secret however short it is.
        let r = Redactor::of_json(br#"{"script": "s", "redis": {"r": {"password": "p1"}}}"#);
        assert_eq!(r.redact("AUTH p1"), "AUTH [redacted]");
    }
}
