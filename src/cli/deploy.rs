//! `proxy-rhai deploy`: the configuration that deploys a script, for Envoy, Higress or Istio,
//! written as [`proxy_rhai::deploy`] writes documents (JSON that YAML readers take as it is).

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Subcommand};
use serde_json::{Map, Value};

use proxy_rhai::check::{check, Severity};
use proxy_rhai::deploy::{self, map, plugin_settings, render, Doc, STOP_ITERATION};
use proxy_rhai::run::input;

use super::{read_script, Configuration};

/// Prints the configuration that deploys a script: an Envoy HTTP filter, a Higress
/// WasmPlugin resource or an Istio WasmPlugin resource.
///
/// The script is read, checked as `proxy-rhai check` does (its findings go to standard error;
/// an error refuses the deployment unless `--force`), and embedded. A configuration the plugin
/// would refuse is always refused. The output is JSON, which YAML readers (Envoy, kubectl)
/// take as YAML.
#[derive(Args)]
pub(super) struct DeployArgs {
    #[command(subcommand)]
    target: Target,
    /// Deploy even when `check` finds errors in the script (a configuration the plugin would
    /// refuse is still refused).
    #[arg(long, global = true)]
    force: bool,
}

#[derive(Subcommand)]
enum Target {
    Envoy(EnvoyArgs),
    Higress(HigressArgs),
    Istio(IstioArgs),
}

/// Prints an Envoy HTTP filter (an entry of the HTTP connection manager's `http_filters`,
/// before `envoy.filters.http.router`) running the script.
#[derive(Args)]
#[command(
    after_help = "Example:\n  proxy-rhai deploy envoy scripts/hello.rhai --config '{\"mockEnable\": false}' \\\n    \
                  --wasm /etc/envoy/proxy_rhai.wasm > filter.yaml"
)]
struct EnvoyArgs {
    /// The script (a .rhai file).
    script: PathBuf,
    #[command(flatten)]
    configuration: Configuration,
    /// Where Envoy finds the plugin (`vm_config.code.local.filename`).
    #[arg(long, value_name = "PATH", default_value = deploy::DEFAULT_WASM)]
    wasm: String,
    /// The plugin's name (`config.name`): Envoy's log lines and stats name the plugin by it.
    #[arg(long, default_value = deploy::DEFAULT_NAME)]
    name: String,
}

/// Prints a Higress WasmPlugin resource running the script.
///
/// `spec.defaultConfig` holds the script and the configuration; each `--rule` adds an entry of
/// `spec.matchRules`, with the `--rule-config` and `--rule-script` given after it (before the
/// next `--rule`).
#[derive(Args)]
#[command(
    after_help = "Example:\n  proxy-rhai deploy higress auth.rhai --config '{\"realm\": \"public\"}' \\\n    \
                  --rule 'domain=*.example.com,api.example.org' --rule-config '{\"realm\": \"example\"}' \\\n    \
                  --rule 'ingress=default/admin' --rule-script admin.rhai"
)]
struct HigressArgs {
    /// The script (a .rhai file).
    script: PathBuf,
    #[command(flatten)]
    configuration: Configuration,
    /// The plugin image (`spec.url`).
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    url: String,
    /// The resource's name.
    #[arg(long, default_value = "proxy-rhai")]
    name: String,
    /// The resource's namespace.
    #[arg(long, default_value = "higress-system")]
    namespace: String,
    /// `spec.phase` (AUTHN, AUTHZ, STATS or UNSPECIFIED_PHASE); Higress's default when absent.
    #[arg(long)]
    phase: Option<String>,
    /// `spec.priority` among plugins of the same phase.
    #[arg(long)]
    priority: Option<i64>,
    /// A match rule: `domain=PATTERN,...` (`*.example.com`, `example.*`, exact),
    /// `ingress=NAME,...` (route names; `route=` is the same) or `service=NAME[:PORT],...`.
    /// May be repeated.
    #[arg(long, value_name = "KIND=VALUE,...")]
    rule: Vec<String>,
    /// What `config()` returns for the requests of the `--rule` before it: JSON, inline or in
    /// a file.
    #[arg(long, value_name = "FILE|JSON")]
    rule_config: Vec<String>,
    /// The script of the requests of the `--rule` before it (default: the main script).
    #[arg(long, value_name = "FILE")]
    rule_script: Vec<PathBuf>,
}

/// Prints an Istio WasmPlugin resource (`extensions.istio.io/v1alpha1`) running the script.
///
/// Istio fetches the `.wasm` itself from `--url`: an OCI image (`oci://…`, the module as its
/// only layer) or an `https://` URL, whose `--sha256` Istio checks; `file://` for a module
/// already on the proxies' disk. `spec.pluginConfig` holds the script and its configuration.
#[derive(Args)]
#[command(
    after_help = "Example:\n  proxy-rhai deploy istio auth.rhai --config '{\"realm\": \"public\"}' \\\n    \
                  --url https://example.com/proxy_rhai.wasm --sha256 target/proxy_rhai.wasm \\\n    \
                  --selector istio=ingressgateway --phase AUTHN --port 8443"
)]
struct IstioArgs {
    /// The script (a .rhai file).
    script: PathBuf,
    #[command(flatten)]
    configuration: Configuration,
    /// Where Istio fetches the plugin (`spec.url`): oci://, https://, http:// or file://.
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    url: String,
    /// `spec.sha256`: 64 hex digits, or the path of the `.wasm` to compute them from.
    #[arg(long, value_name = "HEX|FILE")]
    sha256: Option<String>,
    /// The resource's name.
    #[arg(long, default_value = "proxy-rhai")]
    name: String,
    /// The resource's namespace (the root namespace, e.g. istio-system, for every workload).
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// A label the workloads must have (`spec.selector.matchLabels`), `KEY=VALUE`. May be
    /// repeated.
    #[arg(long, value_name = "KEY=VALUE")]
    selector: Vec<String>,
    /// `spec.phase`: AUTHN, AUTHZ or STATS (Istio's default, after its own filters, when
    /// absent).
    #[arg(long)]
    phase: Option<String>,
    /// `spec.priority` among plugins of the same phase.
    #[arg(long)]
    priority: Option<i32>,
    /// The traffic the plugin sees (`spec.match[].mode`): CLIENT, SERVER or CLIENT_AND_SERVER.
    #[arg(long)]
    mode: Option<String>,
    /// Only traffic to this port (`spec.match[].ports`). May be repeated.
    #[arg(long)]
    port: Vec<u16>,
    /// `spec.failStrategy: FAIL_OPEN`: if the plugin can't be fetched or started, traffic goes
    /// on without it (Istio's default refuses it).
    #[arg(long)]
    fail_open: bool,
}

/// `spec.url` when `--url` is not given: where the release image would be pushed.
const DEFAULT_URL: &str = concat!(
    "oci://registry.example.com/proxy-rhai:",
    env!("CARGO_PKG_VERSION")
);

/// `spec.url` of `deploy higress` for a script that calls Redis, when `--url` is not given:
/// the image of the Higress build (`target/proxy_rhai_higress.wasm`).
const DEFAULT_HIGRESS_URL: &str = concat!(
    "oci://registry.example.com/proxy-rhai-higress:",
    env!("CARGO_PKG_VERSION")
);

/// Runs `deploy`; `matches` are the `deploy` subcommand's (they order `--rule` options).
pub(super) fn deploy(args: &DeployArgs, matches: Option<&ArgMatches>) -> Result<bool, String> {
    let mut findings = Findings::default();
    let text = match &args.target {
        Target::Envoy(a) => envoy(a, &mut findings)?,
        Target::Higress(a) => {
            let higress = matches.and_then(|m| m.subcommand_matches("higress"));
            higress_resource(a, higress, &mut findings)?
        }
        Target::Istio(a) => istio_resource(a, &mut findings)?,
    };
    eprint!("{}", findings.text);
    if findings.errors > 0 && !args.force {
        eprintln!(
            "proxy-rhai: not deployed: `check` found {} error(s) (--force deploys anyway)",
            findings.errors
        );
        return Ok(false);
    }
    super::out(&text);
    Ok(true)
}

/// What `check` found in the scripts of a deployment.
#[derive(Default)]
struct Findings {
    text: String,
    errors: usize,
}

impl Findings {
    /// Checks `script` (from `path`) with the plugin settings it runs with.
    fn check(&mut self, path: &Path, script: &str, settings: &Map<String, Value>) {
        let mut settings = settings.clone();
        settings.remove("script");
        for d in check(script, &Value::Object(settings)) {
            self.text.push_str(&super::finding(path, &d));
            self.errors += usize::from(d.severity == Severity::Error);
        }
    }
}

/// The plugin configuration for the script, checked as the plugin would load it.
fn plugin_configuration(
    script_path: &Path,
    configuration: &Configuration,
) -> Result<Map<String, Value>, String> {
    let script = read_script(script_path)?;
    let mut settings = configuration.settings()?;
    settings.insert("script".into(), script.into());
    Ok(settings)
}

/// `configuration` for `script_path`, refused as the plugin would refuse it, and checked.
fn checked(
    script_path: &Path,
    configuration: Map<String, Value>,
    findings: &mut Findings,
) -> Result<Map<String, Value>, String> {
    validate(script_path, &configuration)?;
    let script = configuration
        .get("script")
        .and_then(Value::as_str)
        .unwrap_or_default();
    findings.check(script_path, script, &configuration);
    Ok(configuration)
}

/// Refuses the key on a `target` that can't set Envoy's option: without it, a request whose
/// body a body phase buffers would wait until Envoy's timeouts.
fn refuse_stop_iteration(target: &str, configuration: &Map<String, Value>) -> Result<(), String> {
    if configuration.get(STOP_ITERATION) == Some(&Value::Bool(true)) {
        return Err(format!(
            "--plugin-config: {target} doesn't set Envoy's {STOP_ITERATION}, which \
             \"{STOP_ITERATION}\": true needs (without it a request whose body a body phase \
             buffers waits until Envoy's timeouts): leave it out"
        ));
    }
    Ok(())
}

fn validate(what: &Path, configuration: &Map<String, Value>) -> Result<(), String> {
    deploy::validate(configuration).map_err(|e| format!("{}: {e}", what.display()))
}

fn envoy(args: &EnvoyArgs, findings: &mut Findings) -> Result<String, String> {
    let configuration = plugin_configuration(&args.script, &args.configuration)?;
    let configuration = checked(&args.script, deploy::for_envoy(configuration), findings)?;
    Ok(deploy::envoy_filter(&configuration, &args.name, &args.wasm))
}

/// One `--rule` with what follows it.
struct MatchRule {
    kind: &'static str,
    values: Vec<String>,
    config: Option<Value>,
    script: Option<(PathBuf, String)>,
}

/// The `--rule` options, each with the `--rule-config` / `--rule-script` given after it.
fn match_rules(args: &HigressArgs, matches: Option<&ArgMatches>) -> Result<Vec<MatchRule>, String> {
    let indices = |id: &str, count: usize| -> Vec<usize> {
        // Without the parser's positions (not expected), the n-th option goes to the n-th rule.
        matches.and_then(|m| m.indices_of(id)).map_or_else(
            || (0..count).map(|i| i * 3 + 1).collect(),
            Iterator::collect,
        )
    };
    let rule_at = indices("rule", args.rule.len());
    let mut rules = args
        .rule
        .iter()
        .map(|r| rule(r))
        .collect::<Result<Vec<_>, _>>()?;
    // The rule a --rule-config or --rule-script belongs to: the last --rule before it.
    let owner = |option: &str, at: usize| -> Result<usize, String> {
        rule_at
            .iter()
            .rposition(|&r| r < at)
            .ok_or_else(|| format!("{option} must follow the --rule it belongs to"))
    };
    for (arg, at) in args
        .rule_config
        .iter()
        .zip(indices("rule_config", args.rule_config.len()))
    {
        let i = owner("--rule-config", at)?;
        if rules[i].config.is_some() {
            return Err(format!("--rule {:?} has two --rule-config", args.rule[i]));
        }
        rules[i].config = Some(input::json_arg("--rule-config", arg)?);
    }
    for (path, at) in args
        .rule_script
        .iter()
        .zip(indices("rule_script", args.rule_script.len()))
    {
        let i = owner("--rule-script", at)?;
        if rules[i].script.is_some() {
            return Err(format!("--rule {:?} has two --rule-script", args.rule[i]));
        }
        rules[i].script = Some((path.clone(), read_script(path)?));
    }
    for (r, text) in rules.iter().zip(&args.rule) {
        if r.config.is_none() && r.script.is_none() {
            return Err(format!(
                "--rule {text:?} needs a --rule-config or a --rule-script after it"
            ));
        }
    }
    Ok(rules)
}

/// `KIND=VALUE,...` → the WasmPlugin matcher and its values.
fn rule(text: &str) -> Result<MatchRule, String> {
    let bad = |why: &str| {
        format!("--rule {text:?}: {why} (expected domain=..., ingress=... or service=...)")
    };
    let (kind, values) = text.split_once('=').ok_or_else(|| bad("no '='"))?;
    let kind = match kind.trim() {
        "domain" => "domain",
        "ingress" | "route" => "ingress",
        "service" => "service",
        other => return Err(bad(&format!("unknown kind {other:?}"))),
    };
    let values: Vec<String> = values
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect();
    if values.is_empty() {
        return Err(bad("no value"));
    }
    Ok(MatchRule {
        kind,
        values,
        config: None,
        script: None,
    })
}

/// The `_rules_` entry Higress makes of a match rule (what the plugin will be given).
fn plugin_rule(r: &MatchRule) -> Value {
    let key = match r.kind {
        "domain" => "_match_domain_",
        "ingress" => "_match_route_",
        _ => "_match_service_",
    };
    let mut entry = Map::new();
    entry.insert(key.into(), r.values.clone().into());
    if let Some(config) = &r.config {
        entry.insert("config".into(), config.clone());
    }
    if let Some((_, script)) = &r.script {
        entry.insert("script".into(), script.clone().into());
    }
    Value::Object(entry)
}

fn higress_resource(
    args: &HigressArgs,
    matches: Option<&ArgMatches>,
    findings: &mut Findings,
) -> Result<String, String> {
    let configuration = plugin_configuration(&args.script, &args.configuration)?;
    if configuration.contains_key("_rules_") {
        return Err("--plugin-config: give Higress rules with --rule, not \"_rules_\" (Higress makes them from spec.matchRules)".into());
    }
    refuse_stop_iteration("Higress", &configuration)?;
    let rules = match_rules(args, matches)?;
    // Check what Higress will hand the plugin: the default configuration and the rules.
    let mut effective = configuration.clone();
    if !rules.is_empty() {
        effective.insert(
            "_rules_".into(),
            rules.iter().map(plugin_rule).collect::<Vec<_>>().into(),
        );
    }
    validate(&args.script, &effective)?;
    let script = configuration
        .get("script")
        .and_then(Value::as_str)
        .unwrap_or_default();
    findings.check(&args.script, script, &configuration);
    for r in &rules {
        let mut settings = configuration.clone();
        if let Some(config) = &r.config {
            settings.insert("config".into(), config.clone());
        }
        match &r.script {
            Some((path, script)) => findings.check(path, script, &settings),
            None if r.config.is_some() => findings.check(&args.script, script, &settings),
            None => {}
        }
    }

    let scripts = std::iter::once(script).chain(
        rules
            .iter()
            .filter_map(|r| r.script.as_ref().map(|(_, s)| s.as_str())),
    );
    let url = higress_url(args, matches, scripts, findings);
    let mut spec = vec![("url", Doc::Str(url))];
    if let Some(phase) = &args.phase {
        spec.push(("phase", Doc::Str(phase.clone())));
    }
    if let Some(priority) = args.priority {
        spec.push(("priority", Doc::Raw(priority.to_string())));
    }
    spec.push(("defaultConfig", plugin_settings(&configuration)));
    if !rules.is_empty() {
        let list = rules
            .iter()
            .map(|r| {
                let mut config = Map::new();
                if let Some((_, script)) = &r.script {
                    config.insert("script".into(), script.clone().into());
                }
                if let Some(c) = &r.config {
                    config.insert("config".into(), c.clone());
                }
                let values = Doc::List(r.values.iter().map(|v| Doc::Str(v.clone())).collect());
                map([(r.kind, values), ("config", plugin_settings(&config))])
            })
            .collect();
        spec.push(("matchRules", Doc::List(list)));
    }
    Ok(wasm_plugin(
        "extensions.higress.io/v1alpha1",
        &args.name,
        &args.namespace,
        spec,
    ))
}

/// `spec.url`: a script calling Redis needs the Higress build, whose image is the default
/// then; the note saying so goes with `check`'s findings.
fn higress_url<'a>(
    args: &HigressArgs,
    matches: Option<&ArgMatches>,
    mut scripts: impl Iterator<Item = &'a str>,
    findings: &mut Findings,
) -> String {
    if !scripts.any(proxy_rhai::check::calls_redis) {
        return args.url.clone();
    }
    let given = matches.and_then(|m| m.value_source("url")) == Some(ValueSource::CommandLine);
    if given {
        findings.text.push_str(
            "proxy-rhai: note: the script calls Redis: --url must be the plugin's Higress build \
             (target/proxy_rhai_higress.wasm; the default build has no Redis)\n",
        );
        return args.url.clone();
    }
    findings.text.push_str(&format!(
        "proxy-rhai: note: the script calls Redis: spec.url is the image of the plugin's \
         Higress build, {DEFAULT_HIGRESS_URL} (push target/proxy_rhai_higress.wasm there)\n"
    ));
    DEFAULT_HIGRESS_URL.into()
}

fn istio_resource(args: &IstioArgs, findings: &mut Findings) -> Result<String, String> {
    let configuration = plugin_configuration(&args.script, &args.configuration)?;
    refuse_stop_iteration("Istio's WasmPlugin", &configuration)?;
    let configuration = checked(&args.script, configuration, findings)?;

    let scheme = args.url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("oci" | "https" | "http" | "file")) {
        return Err(format!(
            "--url {}: give oci://, https://, http:// or file:// (Istio's schemes)",
            args.url
        ));
    }
    let mut spec = vec![("url", Doc::Str(args.url.clone()))];
    if let Some(sha) = &args.sha256 {
        spec.push(("sha256", Doc::Str(sha256_of(sha)?)));
    }
    if !args.selector.is_empty() {
        let mut labels = Vec::new();
        for label in &args.selector {
            let (key, value) = label
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !label.contains('*') && v.len() <= 63)
                .ok_or_else(|| {
                    format!(
                        "--selector {label}: give KEY=VALUE (no `*`, a value of at most 63 \
                         characters)"
                    )
                })?;
            labels.push((key.to_string(), Doc::Str(value.to_string())));
        }
        spec.push(("selector", map([("matchLabels", Doc::Map(labels))])));
    }
    if let Some(phase) = &args.phase {
        let phase = one_of("--phase", phase, &["AUTHN", "AUTHZ", "STATS"])?;
        spec.push(("phase", phase.into()));
    }
    if let Some(priority) = args.priority {
        spec.push(("priority", Doc::Raw(priority.to_string())));
    }
    if args.mode.is_some() || !args.port.is_empty() {
        let mut entry = Vec::new();
        if let Some(mode) = &args.mode {
            let modes = ["CLIENT", "SERVER", "CLIENT_AND_SERVER"];
            entry.push(("mode".to_string(), one_of("--mode", mode, &modes)?.into()));
        }
        if !args.port.is_empty() {
            let mut ports: Vec<u16> = args.port.clone();
            ports.sort_unstable();
            ports.dedup();
            if ports.first() == Some(&0) {
                return Err("--port 0: give a port in 1..=65535".into());
            }
            let ports = ports
                .iter()
                .map(|p| map([("number", Doc::Raw(p.to_string()))]))
                .collect();
            entry.push(("ports".to_string(), Doc::List(ports)));
        }
        spec.push(("match", Doc::List(vec![Doc::Map(entry)])));
    }
    if args.fail_open {
        spec.push(("failStrategy", "FAIL_OPEN".into()));
    }
    spec.push(("type", "HTTP".into()));
    spec.push(("pluginConfig", plugin_settings(&configuration)));
    Ok(wasm_plugin(
        "extensions.istio.io/v1alpha1",
        &args.name,
        &args.namespace,
        spec,
    ))
}

/// A `WasmPlugin` resource (Higress's and Istio's have the same frame).
fn wasm_plugin(api_version: &str, name: &str, namespace: &str, spec: Vec<(&str, Doc)>) -> String {
    let doc = map([
        ("apiVersion", api_version.into()),
        ("kind", "WasmPlugin".into()),
        (
            "metadata",
            map([("name", name.into()), ("namespace", namespace.into())]),
        ),
        (
            "spec",
            Doc::Map(spec.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        ),
    ]);
    render(&doc)
}

/// `value` when it is one of `allowed` (in any case), as written there.
fn one_of<'a>(option: &str, value: &str, allowed: &[&'a str]) -> Result<&'a str, String> {
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value))
        .copied()
        .ok_or_else(|| format!("{option} {value}: give one of {}", allowed.join(", ")))
}

/// 64 lowercase hex digits: `arg` itself when it is that, else the SHA-256 of the file `arg`.
fn sha256_of(arg: &str) -> Result<String, String> {
    if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(arg.to_ascii_lowercase());
    }
    let bytes = std::fs::read(arg).map_err(|e| {
        format!("--sha256 {arg}: neither 64 hex digits nor a file that can be read ({e})")
    })?;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&bytes);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}
