//! The subcommands of `proxy-rhai`.

mod deploy;
mod playground;
mod repl;
mod watch;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{Map, Value};

use proxy_rhai::check::{check, Severity};
use proxy_rhai::config::ScriptEngine;
use proxy_rhai::emulator::{self, Emulator, Request};
use proxy_rhai::run::{input, Answers, Report};
use proxy_rhai::testing;

/// Run, test, check, document and play with proxy-rhai scripts, with no proxy: the plugin's own
/// code runs in an emulated Envoy. Then `deploy` prints the Envoy or Higress configuration that
/// runs one.
#[derive(Parser)]
#[command(name = "proxy-rhai", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(RunArgs),
    Test(TestArgs),
    Check(CheckArgs),
    Docs(DocsArgs),
    Deploy(deploy::DeployArgs),
    Repl(repl::ReplArgs),
    Playground(playground::PlaygroundArgs),
}

/// Runs a script against one request and shows what it did.
///
/// Prints every host call the script made, in order, and the outcome: the request forwarded
/// to the upstream, the response the client got, or the local response. With no options: `GET /` for `example.com`, and an upstream answering 200. Exits 1 when
/// the script failed on the request (a script error, or a request left paused).
#[derive(Args)]
#[command(
    after_help = "Examples:\n  proxy-rhai run scripts/hello.rhai --config '{\"mockEnable\": true}'\n  \
                  proxy-rhai run auth.rhai --request req.http --callout 'auth/token=200:{\"token\":\"t\"}'\n  \
                  proxy-rhai run auth.rhai --callout auth=timeout --json\n  \
                  proxy-rhai run scripts/hello.rhai --request req.http --watch"
)]
struct RunArgs {
    /// The script (a .rhai file; `-` reads it from standard input).
    script: PathBuf,
    #[command(flatten)]
    configuration: Configuration,
    /// The request: JSON ({"method", "path", "authority", "headers", "body", "chunks",
    /// "trailers", "metadata", "route_metadata", "cluster_metadata", "peer_address", "tls"})
    /// given inline or in a file, or a file holding an HTTP/1.1 request. May be repeated, and a JSON
    /// array holds several: they run in order against the one configured plugin (its shared
    /// data and metrics carry from one to the next).
    #[arg(long, value_name = "FILE|JSON")]
    request: Vec<String>,
    /// Runs the requests this many times over.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: usize,
    /// What the upstream answers: JSON ({"status", "headers", "body", "trailers"}) given inline
    /// or in a file, or a file holding an HTTP/1.1 response.
    #[arg(long, value_name = "FILE|JSON")]
    response: Option<String>,
    /// The request body arrives in chunks of these sizes, in bytes (`5,100,7`; what is left
    /// comes in 16 KiB chunks). Each chunk shows in the trace.
    #[arg(long, value_name = "SIZES", value_delimiter = ',')]
    request_chunks: Vec<usize>,
    /// The response body arrives in chunks of these sizes (e.g. an SSE file given with
    /// `--response`, cut where its events should be split).
    #[arg(long, value_name = "SIZES", value_delimiter = ',')]
    response_chunks: Vec<usize>,
    /// Answers callouts to CLUSTER (and PATH: exact, or a prefix ending with `*`); ANSWER is
    /// STATUS, STATUS:BODY, a failure as a callback's `failure` names it (timeout,
    /// connect_failure, reset) or `failure` (no response at all), JSON, or @FILE (JSON or an
    /// HTTP response). May be repeated. A call to a cluster named here that no rule answers times out; a call to any
    /// other cluster is refused, as Envoy refuses an unknown cluster.
    #[arg(long, value_name = "CLUSTER[PATH]=ANSWER")]
    callout: Vec<String>,
    /// The proxy's clock, in milliseconds since the Unix epoch (`now_ms()`); by default
    /// 1767225600000 (2026-01-01T00:00:00Z), the same on every run.
    #[arg(long, value_name = "MS")]
    now: Option<u64>,
    #[command(flatten)]
    redis: RedisArgs,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// Print a test case (a *.test.rhai file, for `proxy-rhai test`) that sends the request
    /// again, answered the same way, and checks what the script did; one request.
    #[arg(long, conflicts_with_all = ["json", "watch", "repeat", "request_chunks", "response_chunks"])]
    as_test: bool,
    /// Run again each time the script, or a file given for its configuration, requests,
    /// response or callout answers, changes; a header line says what changed and when. Ctrl-C
    /// ends it.
    #[arg(long)]
    watch: bool,
}

/// The Redis servers of the emulated proxy.
#[derive(Args)]
struct RedisArgs {
    /// The Redis cluster CLUSTER is the server at HOST:PORT (e.g. `redis=127.0.0.1:6379`): the
    /// script's redis_* calls to it go there, for real. May be repeated. Such a cluster needs no
    /// entry under the configuration's "redis" key (then no password, a 1000 ms timeout,
    /// database 0).
    #[arg(long = "redis", value_name = "CLUSTER=HOST:PORT")]
    servers: Vec<String>,
}

impl RedisArgs {
    fn servers(&self) -> Result<Vec<(String, String)>, String> {
        self.servers.iter().map(|arg| input::redis(arg)).collect()
    }
}

/// What configures the plugin besides its script.
#[derive(Args)]
struct Configuration {
    /// What the script's `config()` returns: JSON, inline or in a file.
    #[arg(long, value_name = "FILE|JSON")]
    config: Option<String>,
    /// A whole plugin configuration ({"config", "limits", "error_policy"}), inline or in a
    /// file; its "script" is ignored. `--config` replaces its "config".
    #[arg(long, value_name = "FILE|JSON")]
    plugin_config: Option<String>,
}

impl Configuration {
    /// The plugin configuration without its script.
    fn settings(&self) -> Result<Map<String, Value>, String> {
        let mut settings = match &self.plugin_config {
            Some(arg) => match input::json_arg("--plugin-config", arg)? {
                Value::Object(map) => map,
                other => {
                    return Err(format!(
                        "--plugin-config must be a JSON object, got {other}"
                    ))
                }
            },
            None => Map::new(),
        };
        settings.remove("script");
        if let Some(arg) = &self.config {
            settings.insert("config".into(), input::json_arg("--config", arg)?);
        }
        Ok(settings)
    }
}

/// Runs the tests written in Rhai (*.test.rhai).
///
/// Every `fn test_*()` of the files found is a test. Prints each test's result and a last line `N passed, N failed`; exits 1 when a test failed.
#[derive(Args)]
struct TestArgs {
    /// Test files, or folders to search for *.test.rhai (default: the current folder).
    paths: Vec<PathBuf>,
    /// Run only the tests whose name contains this.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Also show what passing tests printed.
    #[arg(long, short)]
    verbose: bool,
    #[command(flatten)]
    redis: RedisArgs,
    /// The engine every plugin the tests load runs its script on, `compiled` or `rhai`, unless
    /// a test's settings choose one (default: the configuration's default, `compiled`).
    #[arg(long, value_name = "ENGINE", value_parser = parse_engine)]
    engine: Option<ScriptEngine>,
}

/// An `"engine"` of the plugin configuration, as the configuration spells it.
fn parse_engine(name: &str) -> Result<ScriptEngine, String> {
    serde_json::from_value(Value::String(name.into()))
        .map_err(|_| format!("`{name}` is not an engine: `compiled` or `rhai`"))
}

/// Checks scripts as the plugin would load them.
///
/// Compiles each script as the plugin would (same limits, same phase rules) and reports, with
/// line and column, the errors that would fail every time a request reaches them: a misspelled
/// phase function, an unknown function or a wrong number of arguments, an API function used in
/// a phase where it never works, a callout callback with too many parameters, a literal of the
/// wrong type; and warnings (a function nothing calls, a body phase using its message's headers
/// without `allow_on_headers_stop_iteration`). Exits 1 when a script has an error (or a
/// warning, with --deny-warnings).
#[derive(Args)]
struct CheckArgs {
    /// The scripts (.rhai files).
    #[arg(required = true)]
    scripts: Vec<PathBuf>,
    #[command(flatten)]
    configuration: Configuration,
    /// Exit 1 on warnings too.
    #[arg(long)]
    deny_warnings: bool,
}

/// Writes the script API reference (api-docs/).
///
/// README.md documents every function and constant; definitions/*.d.rhai let editors with
/// the Rhai language server complete and check scripts.
#[derive(Args)]
struct DocsArgs {
    /// Where to write it.
    #[arg(long, value_name = "DIR", default_value = proxy_rhai::docs::DIR)]
    out: PathBuf,
    /// Write nothing: exit 1 when the folder is not up to date.
    #[arg(long)]
    check: bool,
}

/// Parses the command line and runs the subcommand; an error is one line, exit status 2.
pub fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("proxy-rhai: internal error: {info}");
    }));
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Run(args) if args.watch => watch::watch(&args),
        Command::Run(args) => run(&args),
        Command::Test(args) => test(&args),
        Command::Check(args) => check_scripts(&args),
        Command::Docs(args) => docs(&args),
        Command::Deploy(args) => deploy::deploy(&args, matches.subcommand_matches("deploy")),
        Command::Repl(args) => repl::repl(&args),
        Command::Playground(args) => playground::playground(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("proxy-rhai: {message}");
            ExitCode::from(2)
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn read_script(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

// ---- run -------------------------------------------------------------------------------------

fn run(args: &RunArgs) -> Result<bool, String> {
    let script = if args.script.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| format!("cannot read the script from standard input: {e}"))?;
        text
    } else {
        read_script(&args.script)?
    };
    let configuration = args.configuration.settings()?;
    let mut plugin = configuration.clone();
    plugin.insert("script".into(), script.into());
    let now = args.now.unwrap_or(emulator::START_TIME_MS);
    let redis = args.redis.servers()?;
    let emulator = Emulator::with_redis(&Value::Object(plugin).to_string(), now, &redis)
        .map_err(|e| format!("{}: {e}", args.script.display()))?;
    if args.as_test {
        return as_test(args, &emulator, &configuration);
    }
    let mut requests = Vec::new();
    for arg in &args.request {
        requests.extend(input::requests(arg)?);
    }
    if requests.is_empty() {
        requests.push(Request::get("/"));
    }
    let requests: Vec<Request> = std::iter::repeat_n(requests, args.repeat.max(1))
        .flatten()
        .map(|mut request| {
            if !args.request_chunks.is_empty() {
                request.chunk_sizes.clone_from(&args.request_chunks);
            }
            request
        })
        .collect();
    let mut answers = Answers::default();
    if let Some(arg) = &args.response {
        answers.response = input::response(arg)?;
    }
    if !args.response_chunks.is_empty() {
        answers
            .response
            .chunk_sizes
            .clone_from(&args.response_chunks);
    }
    for arg in &args.callout {
        answers.add_callout(&emulator, arg)?;
    }
    let report = Report::new(&emulator, requests, &answers);
    if args.json {
        let text = serde_json::to_string_pretty(&report.json()).map_err(|e| e.to_string())?;
        out(&format!("{text}\n"));
    } else {
        out(&format!("{}\n", report.text()));
    }
    Ok(report.passed())
}

/// `run --as-test`: the case of the run's one request, the script found by its file name (the
/// case is saved next to it).
fn as_test(
    args: &RunArgs,
    emulator: &Emulator,
    settings: &Map<String, Value>,
) -> Result<bool, String> {
    let mut requests = Vec::new();
    for arg in &args.request {
        requests.extend(input::request_values(arg)?);
    }
    let request = match <[Value; 1]>::try_from(requests) {
        Ok([one]) => one,
        Err(none) if none.is_empty() => serde_json::json!({}),
        Err(_) => return Err("--as-test writes the case of one request: give one".into()),
    };
    let response = args
        .response
        .as_deref()
        .map(input::response_value)
        .transpose()?;
    let script_path = match args.script.file_name() {
        Some(name) if args.script.as_os_str() != "-" => name.to_string_lossy().into_owned(),
        _ => "script.rhai".to_string(),
    };
    let case = testing::case::of_run(&testing::case::Run {
        emulator,
        script_path: &script_path,
        settings,
        request: &request,
        response: response.as_ref(),
        callouts: &args.callout,
    })?;
    out(&case);
    Ok(true)
}

// ---- test ------------------------------------------------------------------------------------

fn test(args: &TestArgs) -> Result<bool, String> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let files = testing::find_test_files(&paths)?;
    if files.is_empty() {
        let searched: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(format!("no *.test.rhai file in {}", searched.join(", ")));
    }
    let setup = testing::Setup {
        redis: args.redis.servers()?,
        engine: args.engine,
    };
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let report = testing::run_file_with(file, args.filter.as_deref(), &setup);
        let mut text = format!("{}\n", file.display());
        if let Some(error) = &report.error {
            text.push_str(&format!("  FAIL  {error}\n"));
        }
        for t in &report.tests {
            match &t.failure {
                None => text.push_str(&format!("  ok    {}\n", t.name)),
                Some(why) => {
                    text.push_str(&format!("  FAIL  {}\n", t.name));
                    for line in why.lines() {
                        text.push_str(&format!("        {line}\n"));
                    }
                }
            }
            if t.failure.is_some() || args.verbose {
                for line in &t.output {
                    text.push_str(&format!("        | {line}\n"));
                }
            }
        }
        if report.tests.is_empty() && report.error.is_none() {
            text.push_str("  (no test)\n");
        }
        out(&text);
        passed += report.passed();
        failed += report.failed();
    }
    out(&format!("{passed} passed, {failed} failed\n"));
    Ok(failed == 0)
}

// ---- check -----------------------------------------------------------------------------------

fn check_scripts(args: &CheckArgs) -> Result<bool, String> {
    let settings = Value::Object(args.configuration.settings()?);
    let mut clean = true;
    for path in &args.scripts {
        let script = read_script(path)?;
        let found = check(&script, &settings);
        let mut text = String::new();
        for d in &found {
            text.push_str(&finding(path, d));
        }
        let errors = found
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        let warnings = found.len() - errors;
        if found.is_empty() {
            text.push_str(&format!("{}: ok\n", path.display()));
        }
        clean &= errors == 0 && (warnings == 0 || !args.deny_warnings);
        out(&text);
    }
    Ok(clean)
}

/// One line of what `check` found: `PATH:LINE:COLUMN: error: MESSAGE`.
fn finding(path: &Path, d: &proxy_rhai::check::Diagnostic) -> String {
    let sep = if d.line.is_some() { ":" } else { ": " };
    format!("{}{sep}{d}\n", path.display())
}

// ---- docs ------------------------------------------------------------------------------------

fn docs(args: &DocsArgs) -> Result<bool, String> {
    if args.check {
        let differences = proxy_rhai::docs::differences(&args.out);
        for d in &differences {
            out(&format!("{}/{d}\n", args.out.display()));
        }
        if differences.is_empty() {
            out(&format!("{}: up to date\n", args.out.display()));
        }
        return Ok(differences.is_empty());
    }
    let written = proxy_rhai::docs::write(&args.out)
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    out(&format!(
        "{}: {} files written\n",
        args.out.display(),
        written.len()
    ));
    Ok(true)
}
