//! Shared data: one store per VM id for every worker, with compare-and-swap and a size budget.

use rhai::{Dynamic, Map};

use super::*;

/// The shared-data key where the plugin counts the bytes of keys and values in the store, as
/// decimal text, for `limits.max_shared_bytes`. Scripts may read it, not write it.
pub const SHARED_USAGE_KEY: &str = "proxy-rhai:shared-bytes";

/// Attempts at a compare-and-swap another worker keeps beating before the call gives up.
const SHARED_ATTEMPTS: usize = 32;

/// `shared_set`: within the size limits, and within `limits.max_shared_bytes` over the whole
/// store. The store is one per VM id for every worker and has no delete, so the bytes are
/// counted in the store itself ([`SHARED_USAGE_KEY`]), by every worker, with
/// compare-and-swap: a write that grows the store takes its growth from the budget first, one
/// that shrinks it gives back. The value is then written only over the version that was
/// measured, so the count stays exact (a key two workers create at the same moment may be
/// counted twice: over, never under).
fn shared_set<H: Host>(a: &Api<H>, key: &str, value: &[u8], version: u32) -> ScriptResult<bool> {
    const F: &str = "shared_set";
    let limits = &a.limits;
    if key == SHARED_USAGE_KEY {
        return err(format!(
            "{F}(): '{SHARED_USAGE_KEY}' is the plugin's own key"
        ));
    }
    if key.len() > limits.max_shared_key_size {
        return err(format!(
            "{F}(): a key of {} bytes is over limits.max_shared_key_size ({})",
            key.len(),
            limits.max_shared_key_size
        ));
    }
    if value.len() > limits.max_shared_value_size {
        return err(format!(
            "{F}(): a value of {} bytes is over limits.max_shared_value_size ({})",
            value.len(),
            limits.max_shared_value_size
        ));
    }
    for _ in 0..SHARED_ATTEMPTS {
        let (old, current) = a.host.get_shared_data(key).or_else(|s| refused(F, s))?;
        if version != 0 && old.is_some() && version != current {
            return Ok(false); // what the proxy would answer
        }
        let old_size = old.as_ref().map_or(0, |v| key.len() + v.len());
        let growth = (key.len() + value.len()) as i64 - old_size as i64;
        count_shared_bytes(a, growth)?;
        let cas = if old.is_some() { current } else { version };
        match a.host.set_shared_data(key, value, cas) {
            Ok(()) => return Ok(true),
            Err(status) => {
                let _ = count_shared_bytes(a, -growth);
                match status {
                    Status::CasMismatch if version == 0 => continue,
                    Status::CasMismatch => return Ok(false),
                    other => return refused(F, other),
                }
            }
        }
    }
    err(format!(
        "{F}(): other workers kept changing '{key}'; try again"
    ))
}

/// Adds `growth` (may be negative) to the bytes counted under [`SHARED_USAGE_KEY`]; an error
/// when that would go past `limits.max_shared_bytes`.
fn count_shared_bytes<H: Host>(a: &Api<H>, growth: i64) -> ScriptResult<()> {
    const F: &str = "shared_set";
    if growth == 0 {
        return Ok(());
    }
    let max = a.limits.max_shared_bytes as i64;
    for _ in 0..SHARED_ATTEMPTS {
        let (usage, version) = a
            .host
            .get_shared_data(SHARED_USAGE_KEY)
            .or_else(|s| refused(F, s))?;
        let used: i64 = usage
            .and_then(|u| std::str::from_utf8(&u).ok()?.parse().ok())
            .unwrap_or(0);
        let next = used.saturating_add(growth).max(0);
        if growth > 0 && next > max {
            return err(format!(
                "{F}(): shared data is full: {used} of limits.max_shared_bytes ({max}) bytes \
                 in use, {growth} more asked; reads, and writes that don't grow it, still work"
            ));
        }
        match a
            .host
            .set_shared_data(SHARED_USAGE_KEY, next.to_string().as_bytes(), version)
        {
            Ok(()) => return Ok(()),
            Err(Status::CasMismatch) => continue,
            Err(s) => return refused(F, s),
        }
    }
    err(format!(
        "{F}(): other workers kept changing '{SHARED_USAGE_KEY}'; try again"
    ))
}

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use Allowed::Anywhere;

    // Shared data.
    bind!(reg, "shared_get", Anywhere, "#{value: string or (), version: int}",
    "A value shared by every worker of the proxy, and its version (0 when absent). Pass the version to `shared_set` to update it only if nobody else did meanwhile.",
    r#"fn on_request_headers() {
    let hits = shared_get("hits");
    log_info(`hits so far: ${hits.value ?? "0"}`);
}"#,
    |a as f, key: &str| {
        let (value, version) = a.host.get_shared_data(key).or_else(|s| refused(f, s))?;
        let mut map = Map::new();
        map.insert("value".into(), value.map_or(Dynamic::UNIT, |v| lossy(v).into()));
        map.insert("version".into(), Dynamic::from(i64::from(version)));
        Ok(map)
    });
    bind!(reg, "shared_set", Anywhere, "bool: false when `version` is stale",
    "Stores `value` (string or blob) under `key` for every worker, if its version is still `version` (compare-and-swap). Version 0 stores whatever is there, as Envoy does — so create a key once (e.g. at top level) before updating it with compare-and-swap. The store has no delete: a key may hold `limits.max_shared_key_size` bytes, a value `limits.max_shared_value_size`, and all keys and values together `limits.max_shared_bytes` (for every worker; the plugin keeps the count under `proxy-rhai:shared-bytes`, which scripts may read). Past them the call is an error; reads, and writes that don't grow the store, still work.",
    r#"// Created once, when the plugin loads: from then on every update is a compare-and-swap.
if shared_get("hits").version == 0 { shared_set("hits", "0", 0); }

fn on_request_headers() {
    // A counter without lost updates: retry when another worker came first.
    for attempt in 0..10 {
        let current = shared_get("hits");
        let next = parse_int(current.value ?? "0") + 1;
        if shared_set("hits", next.to_string(), current.version) { break; }
    }
}"#,
    |a as f, key: &str, value: Dynamic, version: i64| {
        let bytes = bytes_of(f, &value)?;
        let version = u32::try_from(version).or_else(|_| err(format!("shared_set(): version {version} is not a version")))?;
        shared_set(a, key, &bytes, version)
    });
}
