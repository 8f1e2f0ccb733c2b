//! `proxy-rhai repl`: Rhai with the plugin's API, over the emulator `run` uses.
//!
//! Each entry runs as top-level code of the plugin (what a script's top level may call, a line
//! may call); its variables stay in the session's scope, its functions become the plugin's
//! script, so phase functions defined here apply to the next `:request`. The session's
//! constants are the script's top-level constants, as in a script.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use clap::Args;
use rhai::{Dynamic, Scope, AST};
use serde_json::{Map, Value};

use proxy_rhai::emulator::{self, Emulator, Outcome};
use proxy_rhai::run::{input, show_metrics, show_outcome, show_shared, Answers, Kept};
use proxy_rhai::testing::spec;

use super::{out, read_script, Configuration};

/// Plays with a script interactively: Rhai with the plugin's whole API, in an emulated Envoy.
///
/// Each line runs as a script's top level does (with `config()`, JSON, encodings, logs,
/// metrics, shared data, the sandbox's limits); an expression shows its value. Variables and
/// functions stay; phase functions defined here apply to `:request`, which shows the trace
/// `run` shows. An unfinished line (an open block, list or string) goes on on the next one.
/// `:help` lists the commands. History is kept in $XDG_STATE_HOME/proxy-rhai/repl_history (or
/// ~/.local/state/…). With standard input not a terminal, lines are read as they come, with
/// no prompt.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  proxy-rhai repl\n  proxy-rhai repl scripts/hello.rhai --config '{\"mockEnable\": true}'\n  \
                  echo 'base64_encode(\"hi\")' | proxy-rhai repl"
)]
pub struct ReplArgs {
    /// A script to start from (run as `:load` would; `:reset` loads it again).
    script: Option<PathBuf>,
    #[command(flatten)]
    configuration: Configuration,
    /// The proxy's clock at the start, in milliseconds since the Unix epoch (as `run --now`).
    #[arg(long, value_name = "MS")]
    now: Option<u64>,
}

const HELP: &str = "\
Rhai lines run as a script's top level: `let`, `const`, `fn`, expressions (their value is shown).
A line left open (`{`, `[`, `(`, a string) goes on on the next one; Ctrl-C drops it.
  :request [METHOD PATH [-H 'Name: value']... [-d BODY]]   send a request (default GET /), show the trace
  :request @FILE | JSON   a request from a file (HTTP/1.1 or JSON, as run --request) or inline JSON
  :response FILE|JSON     what the upstream answers from now on (as run --response)
  :callout CLUSTER[PATH]=ANSWER   answer callouts (as run --callout)
  :metrics                the metrics, by name
  :shared                 the shared data
  :context                the last request's context (set_context) when it ended
  :functions              the functions defined, phase functions marked
  :config                 the plugin configuration (config, limits, error policy)
  :time [MS]              the proxy's clock (now_ms()), or set it
  :advance MS             move the clock on, running on_tick() as its periods pass
  :load FILE              run a script file here, as if typed
  :reset                  start over (variables, functions, metrics, shared data, clock)
  :help                   this
  :quit                   end (or Ctrl-D)";

/// Runs the session on a thread with a deep stack, as the test runner does: Rhai evaluates by
/// recursion, and a debug build needs far more stack per call than the wasm plugin.
pub fn repl(args: &ReplArgs) -> Result<bool, String> {
    let settings = args.configuration.settings()?;
    let (script, now) = (args.script.clone(), args.now);
    std::thread::Builder::new()
        .name("repl".into())
        .stack_size(proxy_rhai::testing::STACK_SIZE)
        .spawn(move || session(settings, script, now))
        .map_err(|e| format!("cannot start the session: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the session crashed".into()))
}

fn session(
    settings: Map<String, Value>,
    script: Option<PathBuf>,
    now: Option<u64>,
) -> Result<bool, String> {
    let mut session = Session::new(settings, script, now.unwrap_or(emulator::START_TIME_MS))?;
    let mut lines = Lines::open();
    if lines.terminal() {
        out(
            "proxy-rhai repl: Rhai with the plugin's API, in an emulated Envoy. :help lists the \
             commands, :quit or Ctrl-D ends.\n",
        );
    }
    if let Some(text) = session.start() {
        out(&text);
    }
    let mut entry = String::new();
    loop {
        let prompt = if entry.is_empty() { "rhai> " } else { "  ... " };
        let line = match lines.read(prompt) {
            Read::Line(line) => line,
            Read::Interrupted => {
                entry.clear();
                continue;
            }
            Read::End => break,
        };
        if entry.is_empty() && line.trim_start().starts_with(':') {
            lines.remember(line.trim());
            match session.command(line.trim()) {
                Some(text) => out(&text),
                None => break,
            }
            continue;
        }
        if entry.is_empty() && line.trim().is_empty() {
            continue;
        }
        entry.push_str(&line);
        entry.push('\n');
        if let Some(text) = session.entry(&entry, false) {
            lines.remember(entry.trim_end());
            out(&text);
            entry.clear();
        }
    }
    if !entry.trim().is_empty() {
        // Input ended inside an unfinished entry: say why it never ran.
        if let Some(text) = session.entry(&entry, true) {
            out(&text);
        }
    }
    lines.save();
    Ok(true)
}

/// What the session keeps between entries.
struct Session {
    settings: Map<String, Value>,
    script: Option<PathBuf>,
    start_ms: u64,
    emulator: Emulator,
    scope: Scope<'static>,
    /// The functions defined so far: the plugin's script.
    functions: AST,
    answers: Answers,
    /// The last request's outcome (for `:context`).
    last: Option<Outcome>,
    /// Log lines already shown.
    log_shown: usize,
}

impl Session {
    fn new(
        settings: Map<String, Value>,
        script: Option<PathBuf>,
        start_ms: u64,
    ) -> Result<Self, String> {
        let mut configuration = settings.clone();
        configuration.insert("script".into(), "".into());
        let emulator =
            Emulator::without_script(&Value::Object(configuration).to_string(), start_ms)?;
        Ok(Self {
            settings,
            script,
            start_ms,
            emulator,
            scope: Scope::new(),
            functions: AST::empty(),
            answers: Answers::default(),
            last: None,
            log_shown: 0,
        })
    }

    /// Loads the script given on the command line, if any.
    fn start(&mut self) -> Option<String> {
        let path = self.script.clone()?;
        Some(self.load(&path))
    }

    fn load(&mut self, path: &Path) -> String {
        match read_script(path) {
            Ok(source) => self.entry(&source, true).unwrap_or_default(),
            Err(e) => format!("error: {e}\n"),
        }
    }

    /// Runs one entry; `None` when it is unfinished and may go on (unless `whole`).
    fn entry(&mut self, source: &str, whole: bool) -> Option<String> {
        let ast = match self.emulator.parse(source) {
            Ok(ast) => ast,
            Err(e) if e.unfinished && !whole => return None,
            Err(e) => return Some(format!("error: {}\n", e.message)),
        };
        let mut text = String::new();
        if ast.iter_functions().next().is_some() {
            let functions = self.functions.merge(&ast.clone_functions_only());
            if let Err(e) = self.emulator.set_script(functions.clone(), &self.scope) {
                return Some(format!("error: {e}\n"));
            }
            self.functions = functions;
            for f in ast.iter_functions() {
                text.push_str(&format!("defined {}\n", signature(f.name, &f.params)));
            }
        }
        let result = self
            .emulator
            .eval(&mut self.scope, &self.functions.merge(&ast));
        // Constants it defined are the script's from now on. The functions passed above.
        let _ = self
            .emulator
            .set_script(self.functions.clone(), &self.scope);
        text.push_str(&self.new_log());
        match result {
            Ok(value) if value.is_unit() => {}
            Ok(value) => text.push_str(&format!("=> {}\n", show_value(&value))),
            Err(e) => text.push_str(&format!("error: {e}\n")),
        }
        Some(text)
    }

    /// The log lines written since the last shown.
    fn new_log(&mut self) -> String {
        let log = self.emulator.log();
        let mut text = String::new();
        for l in log.get(self.log_shown..).unwrap_or_default() {
            text.push_str(&format!("[{}] {}\n", spec::level_name(l.level), l.message));
        }
        self.log_shown = log.len();
        text
    }

    /// Runs a `:command`; `None` ends the session.
    fn command(&mut self, line: &str) -> Option<String> {
        let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let result = match name {
            ":quit" | ":q" | ":exit" => return None,
            ":help" | ":h" | ":?" => Ok(format!("{HELP}\n")),
            ":request" | ":r" => self.request(rest),
            ":response" => input::response(rest).map(|response| {
                self.answers.response = response;
                "the upstream answers this from now on\n".into()
            }),
            ":callout" => self
                .answers
                .add_callout(&self.emulator, rest)
                .map(|()| format!("callouts answered: {rest}\n")),
            ":metrics" => Ok(self.kept(|text, kept| show_metrics(text, &kept.metrics), "metrics")),
            ":shared" => Ok(self.kept(|text, kept| show_shared(text, &kept.shared), "shared data")),
            ":context" => Ok(self.context()),
            ":functions" | ":fns" => Ok(self.functions()),
            ":config" => serde_json::to_string_pretty(&self.settings)
                .map(|json| format!("{json}\n"))
                .map_err(|e| e.to_string()),
            ":time" => self.time(rest),
            ":advance" => match rest.parse::<u64>() {
                Ok(ms) => {
                    self.emulator.advance_ms(ms);
                    Ok(format!(
                        "{}now_ms() is {}\n",
                        self.new_log(),
                        self.emulator.now_ms()
                    ))
                }
                Err(_) => Err(format!("`:advance MS` wants milliseconds, not `{rest}`")),
            },
            ":load" if !rest.is_empty() => Ok(self.load(Path::new(rest))),
            ":reset" => self.reset(),
            _ => Err(format!("unknown command `{line}`: :help lists them")),
        };
        Some(result.unwrap_or_else(|e| format!("error: {e}\n")))
    }

    fn request(&mut self, rest: &str) -> Result<String, String> {
        let requests = if let Some(file) = rest.strip_prefix('@') {
            input::requests(file.trim())?
        } else if rest.starts_with(['{', '[']) {
            input::requests(rest)?
        } else {
            vec![input::request_words(&words(rest)?)?]
        };
        let mut text = String::new();
        let shown = requests.len();
        for (i, request) in requests.iter().enumerate() {
            let outcome = self.answers.run(&self.emulator, request);
            if shown > 1 {
                text.push_str(&format!("\n=== request {} of {shown}\n", i + 1));
            }
            text.push_str(&show_outcome(request, &outcome));
            self.last = Some(outcome);
        }
        // The trace showed its log lines.
        self.log_shown = self.emulator.log().len();
        Ok(text)
    }

    fn kept(&self, show: impl Fn(&mut String, &Kept), what: &str) -> String {
        let mut text = String::new();
        show(&mut text, &Kept::of(&self.emulator, Vec::new()));
        match text.trim_start() {
            "" => format!("(no {what})\n"),
            shown => shown.to_string(),
        }
    }

    fn context(&self) -> String {
        match &self.last {
            None => "(no request yet: :request sends one)\n".into(),
            Some(outcome) if outcome.context.is_empty() => {
                "(the last request set no context)\n".into()
            }
            Some(outcome) => outcome
                .context
                .iter()
                .map(|(k, v)| format!("  {k}: {v}\n"))
                .collect(),
        }
    }

    fn functions(&self) -> String {
        let mut text = String::new();
        for f in self.functions.iter_functions() {
            let phase = if is_phase_function(f.name) {
                "   (phase function)"
            } else {
                ""
            };
            text.push_str(&format!("  {}{phase}\n", signature(f.name, &f.params)));
        }
        if text.is_empty() {
            text.push_str("(no function defined)\n");
        }
        text
    }

    fn time(&mut self, rest: &str) -> Result<String, String> {
        if !rest.is_empty() {
            let ms = rest
                .parse::<u64>()
                .map_err(|_| format!("`:time MS` wants milliseconds, not `{rest}`"))?;
            self.emulator.set_time_ms(ms);
        }
        Ok(format!("now_ms() is {}\n", self.emulator.now_ms()))
    }

    fn reset(&mut self) -> Result<String, String> {
        *self = Session::new(self.settings.clone(), self.script.take(), self.start_ms)?;
        let loaded = self.start().unwrap_or_default();
        Ok(format!("{loaded}started over\n"))
    }
}

fn signature(name: &str, params: &[&str]) -> String {
    format!("{name}({})", params.join(", "))
}

fn is_phase_function(name: &str) -> bool {
    name == proxy_rhai::plugin::TICK_FUNCTION
        || proxy_rhai::phase::Phase::ALL
            .iter()
            .any(|p| p.function_name() == name)
}

/// A value as the session shows it: as `to_debug` does, with its type when that doesn't
/// show it.
fn show_value(value: &Dynamic) -> String {
    // `config()` is shared, read-only: its type is that of what it holds.
    let value = value.flatten_clone();
    let shown = format!("{value:?}");
    match value.type_name() {
        "i64" | "f64" | "bool" | "string" | "char" | "array" | "map" | "Fn" => shown,
        other => format!("{shown} ({other})"),
    }
}

/// A command's arguments: words apart by spaces, '…' and "…" keeping theirs (`\` escapes a
/// character in "…" and outside quotes).
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("a ' is not closed".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.extend(chars.next()),
                        Some(c) => w.push(c),
                        None => return Err("a \" is not closed".into()),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Where lines come from: a line editor with history on a terminal, else standard input as
/// it comes (a pipe, a file).
enum Lines {
    Editor {
        editor: Box<rustyline::DefaultEditor>,
        history: Option<PathBuf>,
    },
    Plain(std::io::StdinLock<'static>),
}

enum Read {
    Line(String),
    /// Ctrl-C: drop the entry being typed.
    Interrupted,
    End,
}

impl Lines {
    fn open() -> Self {
        if std::io::stdin().is_terminal() {
            if let Ok(mut editor) = rustyline::DefaultEditor::new() {
                let history = history_file();
                if let Some(path) = &history {
                    let _ = editor.load_history(path);
                }
                return Lines::Editor {
                    editor: Box::new(editor),
                    history,
                };
            }
        }
        Lines::Plain(std::io::stdin().lock())
    }

    fn terminal(&self) -> bool {
        matches!(self, Lines::Editor { .. })
    }

    fn read(&mut self, prompt: &str) -> Read {
        match self {
            Lines::Editor { editor, .. } => match editor.readline(prompt) {
                Ok(line) => Read::Line(line),
                Err(rustyline::error::ReadlineError::Interrupted) => Read::Interrupted,
                Err(_) => Read::End,
            },
            Lines::Plain(stdin) => {
                let mut line = String::new();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => Read::End,
                    Ok(_) => Read::Line(line.trim_end_matches(['\n', '\r']).to_string()),
                }
            }
        }
    }

    /// Adds an entry (a whole one, however many lines) to the history.
    fn remember(&mut self, entry: &str) {
        if let Lines::Editor { editor, history } = self {
            let _ = editor.add_history_entry(entry);
            if let Some(path) = history {
                let _ = editor.save_history(path);
            }
        }
    }

    fn save(&mut self) {
        if let Lines::Editor {
            editor,
            history: Some(path),
        } = self
        {
            let _ = editor.save_history(path);
        }
    }
}

/// `$XDG_STATE_HOME/proxy-rhai/repl_history`, else `~/.local/state/proxy-rhai/…`; none when
/// neither is set (or the folder can't be made).
fn history_file() -> Option<PathBuf> {
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".local/state")
        }
    };
    let dir = state.join("proxy-rhai");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("repl_history"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quoted_spaces() {
        let w = words(r#"GET /x -H 'a: b c' -d "x \"y\"" plain\ word"#).unwrap();
        assert_eq!(
            w,
            ["GET", "/x", "-H", "a: b c", "-d", "x \"y\"", "plain word"]
        );
        assert!(words("-H 'open").is_err());
        assert_eq!(words("  ").unwrap(), Vec::<String>::new());
    }
}
