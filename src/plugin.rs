//! A configured plugin: the checked configuration, its compiled scripts and their engine.
//!
//! Built once per plugin configuration; every stream of that configuration shares it. With
//! Higress rules, each distinct script is compiled once however many rules use it.

use std::cell::RefCell;
use std::rc::Rc;

use rhai::{
    ASTNode, Dynamic, Engine, EvalAltResult, Expr, FnCallCache, FnPtr, PhaseFn, Scope, SharedCells,
    Stmt, AST,
};

use crate::bindings::{Api, Constant, Constants};
use crate::config::{
    ConfigError, ConfigErrorKind, Matcher, PluginConfig, RequestFacts, ScriptEngine,
};
use crate::host::{Host, LogLevel, MapType};
use crate::phase::{Phase, Phases};
use crate::redact::Redactor;
use crate::sandbox;
use crate::stream::{Framing, Side};

/// Name of the plugin-level timer function.
pub const TICK_FUNCTION: &str = "on_tick";
/// Period of `on_tick` when the configuration gives none.
pub const DEFAULT_TICK_PERIOD_MS: u32 = 1_000;

/// A compiled script and the phase functions it defines (the others never enter Rhai).
pub struct Script {
    pub(crate) ast: AST,
    /// Its phase functions (by `Phase as usize`) and `on_tick`, found once: a call by name
    /// would search the script's functions for them on every call.
    functions: [Option<PhaseFn>; Phase::ALL.len()],
    /// `on_request_chunk(chunk, last)` and `on_response_chunk(chunk, last)`.
    request_chunk: Option<PhaseFn>,
    response_chunk: Option<PhaseFn>,
    phases: Phases,
    tick: Option<PhaseFn>,
    /// Whether the script can change the request's and the response's body: see
    /// [`body_writers`].
    changes_request_body: bool,
    changes_response_body: bool,
    /// A stream's framing state before its first event, made once from the above.
    framing: Framing,
    /// What calls into the script keep from one request to the next.
    calls: RefCell<Calls>,
}

/// Kept across calls into one script.
#[derive(Default)]
struct Calls {
    /// Which function each call in the script resolved to: without it every phase call would
    /// search Rhai's modules for each function it calls.
    resolved: FnCallCache,
    /// The scope the called function's variables live in, emptied after each call: a new one
    /// would allocate its lists again on every call.
    scope: Scope<'static>,
}

/// Past this many resolutions [`Calls::resolved`] is emptied. A script's own call sites make
/// far fewer; names made at run time (`is_def_fn(get_request_header("x"), 0)`) would otherwise
/// add one per request for as long as the VM lives.
const MAX_RESOLVED: usize = 1024;

impl Script {
    /// Calls the script's function for `phase`, or `on_tick` for `None`; one it doesn't
    /// define returns `()`.
    pub(crate) fn call(
        &self,
        engine: &Engine,
        phase: Option<Phase>,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        let function = match phase {
            Some(phase) => self.functions.get(phase as usize).and_then(Option::as_ref),
            None => self.tick.as_ref(),
        };
        match function {
            Some(function) => self.run(engine, function, &mut []),
            None => Ok(Dynamic::UNIT),
        }
    }

    /// Calls the chunk function of `phase` with one piece of the body.
    pub(crate) fn call_chunk(
        &self,
        engine: &Engine,
        phase: Phase,
        chunk: Dynamic,
        last: bool,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        match self.chunk_function(phase) {
            Some(function) => self.run(engine, function, &mut [chunk, last.into()]),
            None => Ok(Dynamic::UNIT),
        }
    }

    /// Runs a function found at configuration, with the resolutions kept from earlier calls.
    fn run(
        &self,
        engine: &Engine,
        function: &PhaseFn,
        args: &mut [Dynamic],
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        match self.calls.try_borrow_mut() {
            Ok(mut calls) => {
                let Calls { resolved, scope } = &mut *calls;
                let result = engine.call_phase_fn(scope, &self.ast, function, args, resolved);
                scope.clear();
                bound(resolved);
                result
            }
            // A call made from inside another (none is today) resolves on its own.
            Err(_) => engine.call_phase_fn(
                &mut Scope::new(),
                &self.ast,
                function,
                args,
                &mut FnCallCache::default(),
            ),
        }
    }

    fn chunk_function(&self, phase: Phase) -> Option<&PhaseFn> {
        match phase {
            Phase::RequestChunk => self.request_chunk.as_ref(),
            Phase::ResponseChunk => self.response_chunk.as_ref(),
            _ => None,
        }
    }

    /// Whether the script defines the function of `phase` (the others never enter Rhai).
    pub(crate) fn defines(&self, phase: Phase) -> bool {
        self.phases.contains(phase)
    }

    /// The phase functions the script defines.
    pub(crate) fn phases(&self) -> Phases {
        self.phases
    }

    /// Whether the script can change the body of `side`'s message; when it can't, the message
    /// keeps its `content-length`.
    pub(crate) fn changes_body(&self, side: Side) -> bool {
        match side {
            Side::Request => self.changes_request_body,
            Side::Response => self.changes_response_body,
        }
    }

    /// A new stream's framing state for this script.
    pub(crate) fn framing(&self) -> Framing {
        self.framing
    }

    /// Whether the script defines `on_tick()`.
    pub(crate) fn has_tick(&self) -> bool {
        self.tick.is_some()
    }

    /// Calls a callback of the script (a closure, or a `Fn` of one of its functions).
    pub(crate) fn call_back(
        &self,
        engine: &Engine,
        callback: &FnPtr,
        args: Vec<Dynamic>,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        match self.calls.try_borrow_mut() {
            Ok(mut calls) => {
                let Calls { resolved, scope } = &mut *calls;
                let result = callback.call_with_cache(engine, &self.ast, scope, args, resolved);
                scope.clear();
                bound(resolved);
                result
            }
            Err(_) => callback.call(engine, &self.ast, args),
        }
    }
}

fn bound(cache: &mut FnCallCache) {
    if cache.len() > MAX_RESOLVED {
        cache.clear();
    }
}

/// The script and `config()` value a stream runs with.
#[derive(Clone)]
pub(crate) struct Selection {
    pub script: Rc<Script>,
    pub config: Dynamic,
    /// The constants the script's top level defined with this config.
    pub constants: Constants,
}

/// Everything the streams of one configuration share.
pub struct Plugin<H> {
    pub(crate) engine: Engine,
    pub(crate) api: Rc<Api<H>>,
    pub(crate) config: PluginConfig,
    /// Script and config for requests no rule matches; `None`: such requests pass untouched.
    pub(crate) global: Option<Selection>,
    /// Higress rules, in order: the first that matches wins.
    pub(crate) rules: Vec<(Matcher, Selection)>,
}

impl<H: Host + 'static> Plugin<H> {
    /// Parses the configuration and compiles its scripts; the error is one line that says why
    /// (for a script, with line and column), without the configuration's secrets.
    pub fn configure(host: H, configuration: &[u8]) -> Result<Self, ConfigError> {
        Self::configure_parsed(host, PluginConfig::parse(configuration)?)
    }

    fn configure_parsed(host: H, config: PluginConfig) -> Result<Self, ConfigError> {
        let rule_configs = config.rules.iter().filter_map(|r| r.config.as_ref());
        let passwords = config.redis.iter().map(|(_, s)| s.password.clone());
        let redactor = Rc::new(
            Redactor::new(std::iter::once(&config.user_config).chain(rule_configs))
                .with_secrets(passwords),
        );
        Self::build(host, config, redactor.clone())
            .map_err(|e| e.map_message(|m| redactor.redact(m).into_owned()))
    }

    fn build(host: H, config: PluginConfig, redactor: Rc<Redactor>) -> Result<Self, ConfigError> {
        let mut api = Api::new(host, &config.limits, redactor);
        api.headers_held = config.allow_on_headers_stop_iteration;
        api.redis = crate::bindings::redis::RedisClusters::new(&config.redis);
        api.init_redis();
        let api = Rc::new(api);
        let mut engine = sandbox::engine(sandbox::std_engine(), &config.limits, api.clone(), None);
        let mut compiled: Vec<(String, Rc<Script>)> = Vec::new();
        let mut compile = |source: &str, what: &str| -> Result<Rc<Script>, ConfigError> {
            if let Some((_, script)) = compiled.iter().find(|(s, _)| s == source) {
                return Ok(script.clone());
            }
            let script = compile(&engine, source, config.engine, &api.bindings.borrow())
                .map_err(|e| e.map_message(|m| format!("{what}{m}")))?;
            let script = Rc::new(script);
            compiled.push((source.to_string(), script.clone()));
            Ok(script)
        };
        let global_config = to_rhai(&config.user_config, "config")?;
        let global = match &config.script {
            Some(source) => Some(Selection {
                script: compile(source, "")?,
                config: global_config.clone(),
                constants: Constants::default(),
            }),
            None => None,
        };
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.iter().enumerate() {
            let script = match (&rule.script, &global) {
                (Some(source), _) => compile(source, &format!("_rules_[{i}]: "))?,
                (None, Some(global)) => global.script.clone(),
                (None, None) => {
                    return Err(
                        format!("_rules_[{i}] has no script and there is no global one").into(),
                    )
                }
            };
            let config = match &rule.config {
                Some(value) => to_rhai(value, &format!("_rules_[{i}].config"))?,
                None => global_config.clone(),
            };
            rules.push((
                rule.matcher.clone(),
                Selection {
                    script,
                    config,
                    constants: Constants::default(),
                },
            ));
        }
        // Interning shares the parser's names and literals; at run time it would hash every
        // string a `let` or an assignment stores, and keep the ones seen twice.
        engine.set_max_strings_interned(0);
        let mut plugin = Self {
            engine,
            api,
            config,
            global,
            rules,
        };
        // Top-level statements run once, here; the constants they define are what the
        // script's functions see under those names.
        let mut any_constants = false;
        let selections = plugin
            .global
            .iter_mut()
            .chain(plugin.rules.iter_mut().map(|(_, s)| s));
        for selection in selections {
            selection.constants = run_top_level(&plugin.engine, &plugin.api, selection)?;
            any_constants |= !selection.constants.is_empty();
        }
        if any_constants {
            // Only then: a resolver costs every variable lookup a call.
            plugin.resolve_constants();
        }
        Ok(plugin)
    }

    /// Has the engine find the running script's top-level constants by name.
    fn resolve_constants(&mut self) {
        let api = self.api.clone();
        // (Rhai marks `on_var` "volatile", not deprecated.)
        #[allow(deprecated)]
        self.engine
            .on_var(move |name, index, _| Ok(if index > 0 { None } else { api.constant(name) }));
    }

    /// The tick period to ask the proxy for, when the global script defines `on_tick`.
    pub fn tick_period_ms(&self) -> Option<u32> {
        let global = self.global.as_ref()?;
        global
            .script
            .has_tick()
            .then_some(match self.config.tick_period_ms {
                0 => DEFAULT_TICK_PERIOD_MS,
                period => period,
            })
    }

    /// The plugin-level timer: runs the global script's `on_tick()`; an error is logged.
    pub fn on_tick(&self) {
        let Some(global) = self.global.as_ref().filter(|g| g.script.has_tick()) else {
            return;
        };
        self.api
            .begin_call(None, global.config.clone(), global.constants.clone());
        // A tick can't dispatch callouts, so nothing it makes outlives it: cycles among its
        // closures' cells are freed at once.
        let mut cells = SharedCells::default();
        let result = cells.record(|| global.script.call(&self.engine, None));
        self.api.end_call();
        cells.release();
        if let Err(e) = result {
            self.api.count_script_error();
            self.api.log_plugin(
                LogLevel::Error,
                &format!(
                    "script error in {TICK_FUNCTION}: {}",
                    self.api.describe_error(&e)
                ),
            );
        }
    }

    /// The script and config for a new request: the first matching rule's, else the global
    /// ones. Only the facts some rule needs are asked of the proxy.
    pub(crate) fn select(&self) -> Option<Selection> {
        if self.rules.is_empty() {
            return self.global.clone();
        }
        let (mut need_host, mut need_route, mut need_cluster) = (false, false, false);
        for (matcher, _) in &self.rules {
            let (h, r, c) = matcher.needs();
            (need_host, need_route, need_cluster) =
                (need_host || h, need_route || r, need_cluster || c);
        }
        let host = &self.api.host;
        let text = |bytes: Option<Vec<u8>>| {
            bytes
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        // Envoy names them `xds.route_name` / `xds.cluster_name`; Higress also `route_name`.
        let property = |xds: &str, plain: &str| {
            let value = text(host.get_property(&["xds", xds]).ok().flatten());
            if value.is_empty() {
                text(host.get_property(&[plain]).ok().flatten())
            } else {
                value
            }
        };
        let authority = if need_host {
            text(
                host.get_map_value(MapType::HttpRequestHeaders, ":authority")
                    .ok()
                    .flatten(),
            )
        } else {
            String::new()
        };
        let route = if need_route {
            property("route_name", "route_name")
        } else {
            String::new()
        };
        let cluster = if need_cluster {
            property("cluster_name", "cluster_name")
        } else {
            String::new()
        };
        let facts = RequestFacts {
            host: &authority,
            route_name: &route,
            cluster_name: &cluster,
        };
        self.rules
            .iter()
            .find(|(matcher, _)| matcher.matches(&facts))
            .map(|(_, selection)| selection.clone())
            .or_else(|| self.global.clone())
    }
}

/// A script given piece by piece, as `proxy-rhai repl` gives it: its functions, its top-level
/// statements run one entry at a time.
#[cfg(tools)]
impl<H: Host + 'static> Plugin<H> {
    /// The plugin of `configuration` with its global "script" left out: requests pass
    /// untouched until [`Plugin::set_script`] gives it one.
    pub(crate) fn without_script(host: H, configuration: &[u8]) -> Result<Self, ConfigError> {
        let mut config = PluginConfig::parse(configuration)?;
        config.script = None;
        Self::configure_parsed(host, config)
    }

    /// Parses `source` with the plugin's engine (its limits, its API); the error says why,
    /// and whether `source` only stops early (more of it would complete it).
    pub(crate) fn parse(&self, source: &str) -> Result<AST, (String, bool)> {
        self.engine.compile(source).map_err(|e| {
            let message = compile_error(source, &e).to_string();
            (
                self.api.redactor.redact(&message).into_owned(),
                unfinished(source, &e),
            )
        })
    }

    /// Makes `ast`'s functions the global script, and `constants` its top-level constants.
    pub(crate) fn set_script(
        &mut self,
        ast: AST,
        constants: Vec<(rhai::ImmutableString, Dynamic)>,
    ) -> Result<(), ConfigError> {
        let bindings = self.api.bindings.borrow();
        let script = script_of(&self.engine, ast, self.config.engine, &bindings)?;
        drop(bindings);
        let config = to_rhai(&self.config.user_config, "config")?;
        let constants: Vec<Constant> = constants
            .into_iter()
            .map(|(name, value)| Constant::new(name, value))
            .collect();
        if !constants.is_empty() {
            self.resolve_constants();
        }
        self.global = Some(Selection {
            script: Rc::new(script),
            config,
            constants: Constants(constants.into()),
        });
        Ok(())
    }

    /// Runs `ast` as the global script's top level runs, with `scope` as its variables: it
    /// may call what top-level code may. The error is described as a script error is.
    pub(crate) fn eval_top_level(&self, scope: &mut Scope, ast: &AST) -> Result<Dynamic, String> {
        let config = match &self.global {
            Some(global) => global.config.clone(),
            None => to_rhai(&self.config.user_config, "config").map_err(|e| e.to_string())?,
        };
        top_level(&self.engine, &self.api, config, scope, ast).map_err(|e| {
            self.api
                .redactor
                .redact(&self.api.describe_error(&e))
                .into_owned()
        })
    }
}

/// Whether `source` failed to parse only because it ends too early: an open block, list or
/// string, a missing `}` or `)` at its end.
#[cfg(tools)]
fn unfinished(source: &str, e: &rhai::ParseError) -> bool {
    use rhai::{LexError, ParseErrorType};
    let at_end = match (e.position().line(), e.position().position()) {
        (None, _) => true,
        (Some(line), column) => {
            let lines = source.trim_end().lines().count().max(1);
            let last = source.trim_end().lines().last().unwrap_or_default();
            line > lines || (line == lines && column.is_none_or(|c| c > last.chars().count()))
        }
    };
    match e.err_type() {
        ParseErrorType::UnexpectedEOF => true,
        ParseErrorType::BadInput(LexError::UnterminatedString) => true,
        ParseErrorType::MissingToken(..) => at_end,
        _ => false,
    }
}

/// Runs a script's top-level statements, so that a script failing there is refused at
/// configure time rather than on every request; returns the constants they defined.
fn run_top_level<H: Host + 'static>(
    engine: &Engine,
    api: &Api<H>,
    selection: &Selection,
) -> Result<Constants, ConfigError> {
    let mut scope = Scope::new();
    let config = selection.config.clone();
    let ast = &selection.script.ast;
    let _value = top_level(engine, api, config, &mut scope, ast).map_err(|e| {
        let message = format!("script failed while loading: {}", api.describe_error(&e));
        let at = sandbox::error_position(&e);
        ConfigError::new(ConfigErrorKind::Load, message).at(at.line(), at.position())
    })?;
    let constants: Vec<Constant> = scope
        .iter_raw()
        .filter(|(_, is_constant, _)| *is_constant)
        .map(|(name, _, value)| Constant::new(name.into(), value.clone()))
        .collect();
    Ok(Constants(constants.into()))
}

/// Runs `ast`'s statements as a script's top level runs: outside any phase, with `config`.
fn top_level<H: Host + 'static>(
    engine: &Engine,
    api: &Api<H>,
    config: Dynamic,
    scope: &mut Scope,
    ast: &AST,
) -> Result<Dynamic, Box<EvalAltResult>> {
    api.begin_call(None, config, Constants::default());
    let result = engine.eval_ast_with_scope::<Dynamic>(scope, ast);
    api.end_call();
    result
}

fn to_rhai(value: &serde_json::Value, what: &str) -> Result<Dynamic, ConfigError> {
    let value = rhai::serde::to_dynamic(value)
        .map_err(|e| format!("plugin configuration: {what} cannot be given to Rhai: {e}"))?;
    // Shared and read-only: `config()` hands out the same value to every call, uncopied.
    Ok(value.into_shared().into_read_only())
}

/// Compiles one script and finds its phase functions.
fn compile(
    engine: &Engine,
    source: &str,
    kind: ScriptEngine,
    bindings: &crate::compiled::Bindings,
) -> Result<Script, ConfigError> {
    let script = script_of(engine, parse(engine, source)?, kind, bindings)?;
    if script.phases.iter().next().is_none() && script.tick.is_none() {
        return Err(ConfigError::new(
            ConfigErrorKind::Phases,
            "script defines no phase function: define at least one of on_request_headers(), \
             on_request_body(), on_request_chunk(chunk, last), on_request_trailers(), \
             on_response_headers(), on_response_body(), on_response_chunk(chunk, last), \
             on_response_trailers(), on_log(), on_tick()"
                .into(),
        ));
    }
    Ok(script)
}

/// Parses a script; the error says where, and what to write instead for common mistakes.
fn parse(engine: &Engine, source: &str) -> Result<AST, ConfigError> {
    engine
        .compile(source)
        .map_err(|e| compile_error(source, &e))
}

fn compile_error(source: &str, e: &rhai::ParseError) -> ConfigError {
    let at = e.position();
    let message = format!(
        "script does not compile: {} at {}{}",
        e.err_type(),
        position(at),
        compile_hint(source, e)
    );
    ConfigError::new(ConfigErrorKind::Compile, message).at(at.line(), at.position())
}

/// A parsed script and the phase functions it defines (any number of them).
pub(crate) fn script_of(
    engine: &Engine,
    ast: AST,
    kind: ScriptEngine,
    bindings: &crate::compiled::Bindings,
) -> Result<Script, ConfigError> {
    if kind == ScriptEngine::Compiled {
        crate::compiled::install(engine, &ast, bindings);
    }
    let mut functions: [Option<PhaseFn>; Phase::ALL.len()] = Default::default();
    let mut tick = None;
    let (mut request_chunk, mut response_chunk) = (None, None);
    for f in ast.iter_functions() {
        let phase = Phase::ALL.into_iter().find(|p| p.function_name() == f.name);
        if phase.is_none() && f.name != TICK_FUNCTION {
            continue;
        }
        if let Some(phase) = phase.filter(|p| p.is_chunk()) {
            if f.params.len() != 2 {
                let message = format!(
                    "script error: {}(chunk, last) must take two parameters",
                    f.name
                );
                return Err(ConfigError::new(ConfigErrorKind::Phases, message));
            }
            let function = ast.phase_fn(f.name, 2);
            if phase == Phase::RequestChunk {
                request_chunk = function;
            } else {
                response_chunk = function;
            }
            continue;
        }
        if !f.params.is_empty() {
            let message = format!("script error: {}() must take no parameters", f.name);
            return Err(ConfigError::new(ConfigErrorKind::Phases, message));
        }
        let function = ast.phase_fn(f.name, 0);
        match phase {
            Some(phase) => {
                if let Some(slot) = functions.get_mut(phase as usize) {
                    *slot = function;
                }
            }
            None => tick = function,
        }
    }
    let defined: Vec<Phase> = Phase::ALL
        .into_iter()
        .filter(|p| match p {
            Phase::RequestChunk => request_chunk.is_some(),
            Phase::ResponseChunk => response_chunk.is_some(),
            _ => functions.get(*p as usize).is_some_and(Option::is_some),
        })
        .collect();
    let (changes_request_body, changes_response_body) = body_writers(&ast);
    let mut script = Script {
        ast,
        functions,
        request_chunk,
        response_chunk,
        phases: Phases::of(&defined),
        tick,
        changes_request_body,
        changes_response_body,
        framing: Framing::default(),
        calls: RefCell::default(),
    };
    script.framing = Framing::of(&script);
    Ok(script)
}

/// The functions that change a request's body, then a response's.
const BODY_WRITERS: [[&str; 3]; 2] = [
    [
        "append_request_body",
        "prepend_request_body",
        "replace_request_body",
    ],
    [
        "append_response_body",
        "prepend_response_body",
        "replace_response_body",
    ],
];

/// Whether `ast` can change the request's body, and the response's: whether it names one of
/// their [`BODY_WRITERS`] anywhere (a call, a method call, a function pointer, a string, which
/// `Fn` could make one of), or makes a function pointer of a name known only at run time
/// (`Fn(name)`), which could be any of them. A script without `eval` and `import` can reach a
/// function no other way: a string is not callable, and a pointer to `Fn` itself
/// (`call(Fn("Fn"), name)`) is refused when called, `Fn` being a keyword.
fn body_writers(ast: &AST) -> (bool, bool) {
    let mut writes = [false; 2];
    let mut name = |name: &str| {
        for (side, writers) in writes.iter_mut().zip(BODY_WRITERS) {
            *side |= writers.contains(&name);
        }
    };
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Stmt(Stmt::FnCall(call, _)))
            | Some(ASTNode::Expr(Expr::FnCall(call, _) | Expr::MethodCall(call, _))) => {
                name(&call.name);
                let literal = |arg: &Expr| arg.get_literal_value(None).is_some();
                if call.name == "Fn" && !call.args.iter().all(literal) {
                    name(BODY_WRITERS[0][0]);
                    name(BODY_WRITERS[1][0]);
                }
            }
            // Constants the parser or the optimizer made: `"text"`, `` `a${"b"}` ``, a
            // `Fn("name")`, a constant array or map.
            Some(ASTNode::Expr(
                e @ (Expr::StringConstant(..)
                | Expr::InterpolatedString(..)
                | Expr::DynamicConstant(..)),
            )) => {
                if let Some(value) = e.get_literal_value(None) {
                    names_in(&value, &mut name);
                }
            }
            _ => {}
        }
        true
    });
    let [request, response] = writes;
    (request, response)
}

/// The strings and function pointers' names in `value`, its arrays' and maps' too.
fn names_in(value: &Dynamic, name: &mut impl FnMut(&str)) {
    if let Some(text) = value.read_lock::<rhai::ImmutableString>() {
        name(&text);
    } else if let Some(pointer) = value.read_lock::<FnPtr>() {
        name(pointer.fn_name());
        // `curry(Fn("f"), Fn("writer"))` is folded into one constant pointer to `f`.
        pointer.iter_curry().for_each(|v| names_in(v, name));
    } else if let Some(array) = value.read_lock::<rhai::Array>() {
        array.iter().for_each(|v| names_in(v, name));
    } else if let Some(map) = value.read_lock::<rhai::Map>() {
        map.values().for_each(|v| names_in(v, name));
    }
}

/// What to write instead, for the mistakes a newcomer from JavaScript or JSON makes.
fn compile_hint(source: &str, error: &rhai::ParseError) -> &'static str {
    let message = error.err_type().to_string();
    if message.contains("'null'") {
        return ": Rhai has no null, write () for \"no value\"";
    }
    let line = error
        .position()
        .line()
        .and_then(|n| source.lines().nth(n.saturating_sub(1)))
        .unwrap_or_default();
    // `{ a: 1 }` where a map was meant: Rhai reads `{` as a block.
    let block_as_map = line.split('{').skip(1).any(|after| {
        let after = after.trim_start();
        let key: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '"')
            .collect();
        !key.is_empty() && after[key.len()..].trim_start().starts_with(':')
    });
    if block_as_map && !line.contains("#{") {
        return ": a map is written #{ key: value } (a bare { … } is a block)";
    }
    ""
}

impl<H: Host + 'static> Plugin<H> {
    /// What the compiled engine would make of `source` with this plugin's bindings (the
    /// compiler's coverage report).
    #[cfg(tools)]
    pub fn compiler_coverage(
        &self,
        source: &str,
    ) -> Result<crate::compiled::Coverage, ConfigError> {
        let ast = parse(&self.engine, source)?;
        Ok(crate::compiled::coverage(
            &self.engine,
            &ast,
            &self.api.bindings.borrow(),
        ))
    }
}

/// The API reference, as the bindings declare it (not in the plugin, which has no texts).
#[cfg(tools)]
pub fn api_reference<H: Host + 'static>(host: H) -> Vec<crate::bindings::FnDoc> {
    let mut docs = Vec::new();
    let limits = crate::config::Limits::default();
    sandbox::engine(
        sandbox::std_engine(),
        &limits,
        Rc::new(Api::new(host, &limits, Rc::default())),
        Some(&mut docs),
    );
    docs
}

fn position(pos: rhai::Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(column)) => format!("line {line}, column {column}"),
        (Some(line), None) => format!("line {line}"),
        _ => "end of script".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which bodies a script can change, as the plugin decides it at configuration: every way
    /// a script can reach a writer counts, on its side only.
    #[test]
    fn a_script_changes_the_bodies_whose_writers_it_names() {
        let engine = sandbox::std_engine();
        let writers = |script: &str| body_writers(&engine.compile(script).unwrap());
        let cases = [
            ("fn on_request_chunk(c, l) { log_info(c); }", (false, false)),
            ("fn on_request_body() { replace_request_body(\"x\"); }", (true, false)),
            ("fn on_response_chunk(c, l) { \"x\".append_response_body(); }", (false, true)),
            ("fn h() { prepend_response_body(\"x\") } fn on_response_headers() { }", (false, true)),
            ("fn on_request_headers() { http_get(\"c\", \"/\", [], 5, || append_request_body(\"x\")); }", (true, false)),
            ("fn on_response_body() { call(Fn(\"replace_response_body\"), \"x\"); }", (false, true)),
            ("fn on_response_body() { let f = \"replace_response_body\"; call(Fn(f), \"x\"); }", (true, true)),
            ("fn on_response_body() { call(Fn(get_request_header(\"f\")), \"x\"); }", (true, true)),
            ("fn on_response_body() { call(Fn(`replace_${\"response\"}_body`), \"x\"); }", (false, true)),
            ("const W = [Fn(\"append_request_body\")]; fn on_request_body() { call(W[0], \"x\"); }", (true, false)),
            ("fn on_request_body() { let m = #{w: \"prepend_request_body\"}; call(Fn(m.w), \"x\"); }", (true, true)),
            ("fn on_response_body() { let body = get_response_body(); log_info(body); }", (false, false)),
            ("fn f(w) { call(w, \"x\") } fn on_request_body() { call(Fn(\"f\").curry(Fn(\"replace_request_body\"))); }", (true, false)),
            ("fn f(w) { call(w, \"x\") } fn on_request_body() { call(curry(Fn(\"f\"), Fn(\"replace_request_body\"))); }", (true, false)),
            ("const W = [curry(Fn(\"f\"), Fn(\"append_response_body\"))]; fn f(w) { call(w, \"x\") } fn on_response_body() { call(W[0]); }", (false, true)),
        ];
        for (script, expected) in cases {
            assert_eq!(writers(script), expected, "{script}");
        }
    }

    /// What keeps `body_writers` whole: a name known only at run time reaches a function
    /// through `Fn` alone, and a pointer to `Fn` itself can't be called.
    #[test]
    fn a_pointer_to_fn_cannot_be_called() {
        let engine = sandbox::std_engine();
        let error = engine
            .run(r#"let name = "to_" + "string"; call(call(Fn("Fn"), name), 1);"#)
            .unwrap_err();
        assert!(
            error.to_string().contains("'Fn' is a reserved keyword"),
            "{error}"
        );
    }

    /// A compiled call calls a binding directly when its arguments have the binding's types;
    /// Rhai must then choose that binding too. It looks for the arguments' exact types first,
    /// in the global namespace (the bindings) first: a binding without a `Dynamic` parameter
    /// is found before any other function of its name and arity. One with a `Dynamic`
    /// parameter must be the only one (another could take that argument's exact type).
    #[test]
    fn direct_bindings_are_the_only_functions_of_their_name_and_arity() {
        let limits = crate::config::Limits::default();
        let api = Rc::new(Api::new(
            crate::emulator::EmulatorHost::default(),
            &limits,
            Rc::default(),
        ));
        let engine = sandbox::engine(sandbox::std_engine(), &limits, api.clone(), None);
        let mut arities: std::collections::HashMap<(String, usize), Vec<String>> =
            Default::default();
        for signature in engine.gen_fn_signatures(true) {
            let (name, rest) = signature.split_once('(').unwrap();
            let params = &rest[..rest.find(')').unwrap()];
            let arity = if params.trim().is_empty() {
                0
            } else {
                params.split(',').filter(|p| p.contains(':')).count()
            };
            arities
                .entry((name.to_string(), arity))
                .or_default()
                .push(signature.clone());
        }
        let bindings = api.bindings.borrow();
        let direct: Vec<_> = bindings.direct().collect();
        assert!(direct.len() > 80, "{} direct bindings", direct.len());
        for (name, arity, takes_any) in direct {
            let found = &arities[&(name.to_string(), arity)];
            if takes_any {
                assert_eq!(found.len(), 1, "{name} with {arity} arguments: {found:?}");
            }
        }
    }

    /// A call into the script ends the same on both engines, as Rhai gives it (the plugin's
    /// messages leave out some of it: `ErrorInFunctionCall`, the position of `exit`): the error
    /// with its wrapping and positions, the value, and the operations counted. Each limit is
    /// tried at every value that makes it trip somewhere else, the call's first operation
    /// included; each call runs twice, the second on what the first left behind. A phase's
    /// value that is a function pointer is called back, as a callout's callback is, with as
    /// many arguments as it takes and with one too many, and must end as a call on a state of
    /// its own (`FnPtr::call`) does; nested calls of the script's functions are made with
    /// their first argument a variable or not, with errors, `exit`, `this` and empty bodies,
    /// down to the call depth limit and the variables limit, and with the script given a
    /// source name, which errors carry.
    #[test]
    fn calls_into_the_script_end_the_same_compiled() {
        let scripts = [
            "fn on_request_headers() { throw \"boom\"; }",
            "fn on_request_headers() { let x = 1; x.nope() }",
            "fn f() { throw 1 } fn on_request_headers() { f() }",
            "fn on_request_headers() { exit(5); }",
            "fn f(n) { if n > 1 { exit(n) } n } fn on_request_headers() { f(1); f(2); 3 }",
            "fn on_request_headers() { if true { return 3; } 4 }",
            "fn f(n) { return n + 1; } fn on_request_headers() { return f(1); }",
            "fn on_request_headers() { }",
            "fn on_request_headers() { let n = 0; for i in 0..4 { n += i; } n }",
            "fn r(n) { if n > 0 { r(n - 1) } else { n } } fn on_request_headers() { r(3) }",
            "fn on_request_chunk(chunk, last) { if last { throw chunk } chunk.len() }",
            "fn on_request_chunk(chunk, last) { return chunk + last; }",
            "fn on_request_headers() { } fn on_tick() { exit() }",
            // Nested calls.
            "fn h(a, b) { let c = a + b; if c > 3 { throw c } c } \
             fn on_request_headers() { let x = h(1, 1); let y = h(x, 1); h(y, x) }",
            "fn inc(a) { a += 1; a } fn on_request_headers() { let x = 1; let y = inc(x); [x, y] }",
            "fn e(a) { } fn r(n) { e(n); if n > 0 { r(n - 1) } } fn on_request_headers() { r(4) }",
            "fn t() { this } fn on_request_headers() { t() }",
            "fn m(a) { this + a } fn on_request_headers() { let n = 1; n.m(2) + m(3) }",
            "fn int.m(a) { this * a } fn m(a) { a + 1 } fn on_request_headers() { m(2) + 2.m(3) }",
            "fn v(a, b) { let c = a; let d = b; c + d } \
             fn on_request_headers() { let x = 1; v(x, 2) + v(3, x) }",
            "fn on_request_chunk(chunk, last) { let s = chunk; s.len() + w(s, last) } \
             fn w(s, last) { if last { exit(s) } s.len() }",
            // Callbacks.
            "fn on_request_headers() { let x = 40; |a| a + x }",
            "fn on_request_headers() { let f = |a, b| a * 10 + b; f.curry(2) }",
            "fn h(n) { if n > 1 { throw n } n } \
             fn on_request_headers() { let s = [1]; |a| { s.push(a); h(s.len()) } }",
            "fn on_request_headers() { |a| { let x = a; x.nope() } }",
            "fn on_request_headers() { |a| this }",
            "fn on_request_headers() { |a| exit(a) }",
            "fn on_request_headers() { |a| { return a; } }",
            "fn d(a) { a * 2 } fn on_request_headers() { Fn(\"d\") }",
            "fn r(n) { if n > 0 { r(n - 1) } else { n } } fn on_request_headers() { |a| r(a + 1) }",
        ];
        // `alone`: callbacks called as on a state of their own, made for the call (`FnPtr::call`).
        let run = |source: &str, kind: ScriptEngine, operations: u64, limits, alone: bool| {
            let mut engine = Engine::new();
            engine.set_max_operations(operations);
            let (levels, variables, named): (usize, usize, bool) = limits;
            engine.set_max_call_levels(levels);
            engine.set_max_variables(variables);
            let counted = Rc::new(std::cell::Cell::new(0));
            let count = counted.clone();
            engine.on_progress(move |n| {
                count.set(n);
                None
            });
            let bindings = crate::compiled::Bindings::default();
            let mut ast = parse(&engine, source).unwrap();
            if named {
                ast.set_source("script.rhai");
            }
            let script = script_of(&engine, ast, kind, &bindings).unwrap();
            let mut seen = Vec::new();
            for _ in 0..2 {
                for phase in [Some(Phase::RequestHeaders), None] {
                    counted.set(0);
                    let result = script.call(&engine, phase);
                    seen.push(format!("{result:?} after {} operations", counted.get()));
                    let Some(callback) = result.ok().and_then(|r| r.try_cast::<FnPtr>()) else {
                        continue;
                    };
                    let takes = callback
                        .num_params()
                        .map_or(1, |n| n - callback.curry().len());
                    for given in [takes, takes + 1] {
                        counted.set(0);
                        let args = (0..given).map(|i| Dynamic::from(i as i64 + 1)).collect();
                        let result = match alone {
                            false => script.call_back(&engine, &callback, args),
                            true => callback.call(&engine, &script.ast, args),
                        };
                        seen.push(format!("{result:?} after {} operations", counted.get()));
                    }
                }
                counted.set(0);
                let chunk = Dynamic::from("abc");
                let result = script.call_chunk(&engine, Phase::RequestChunk, chunk, true);
                seen.push(format!("{result:?} after {} operations", counted.get()));
            }
            // Closures are named by a count of those parsed: each compilation names them anew.
            let closures: Vec<_> = script
                .ast
                .iter_fn_def()
                .map(|f| f.name.to_string())
                .filter(|name| name.starts_with("anon$"))
                .collect();
            let unnamed = |line: String| closures.iter().fold(line, |l, c| l.replace(c, "anon$"));
            seen.into_iter().map(unnamed).collect::<Vec<_>>()
        };
        let limits = (0..5)
            .map(|levels| (levels, usize::MAX, false))
            .chain((0..4).map(|variables| (8, variables, false)))
            .chain([(8, usize::MAX, true)]);
        for source in scripts {
            for operations in 0..24 {
                for limits in limits.clone() {
                    let compiled = run(source, ScriptEngine::Compiled, operations, limits, false);
                    let evaluated = run(source, ScriptEngine::Rhai, operations, limits, false);
                    assert_eq!(
                        compiled, evaluated,
                        "{source} with max_operations {operations}, (max_call_levels, \
                         max_variables, a source name) {limits:?}"
                    );
                    if limits.2 {
                        let alone = run(source, ScriptEngine::Compiled, operations, limits, true);
                        assert_eq!(compiled, alone, "{source} called back alone");
                    }
                }
            }
        }
    }

    /// Each call into a script runs on the state the last one left, renewed in place: it must
    /// be what a new state is (but for the script's functions and source, set by the call).
    #[test]
    fn a_renewed_runtime_state_is_a_new_one() {
        let mut engine = Engine::new();
        *engine.default_tag_mut() = Dynamic::from(7_i64);
        let mut global = engine.new_global_runtime_state();
        global.num_operations = 99.into();
        global.level = 3;
        global.scope_level = 4;
        global.always_search_scope = true;
        global.tag = Dynamic::from("changed");
        engine.renew_global_runtime_state(&mut global);
        assert_eq!(
            format!("{global:?}"),
            format!("{:?}", engine.new_global_runtime_state())
        );
    }

    /// Names made at run time can't grow a script's resolution cache without end.
    #[test]
    fn resolutions_of_names_made_at_run_time_are_bounded() {
        let engine = Engine::new();
        // A closure, as callouts take: it resolves through the script's cache.
        let source = "fn on_request_headers() { |name| is_def_fn(name, 0) }";
        let bindings = crate::compiled::Bindings::default();
        let script = compile(&engine, source, ScriptEngine::Rhai, &bindings).unwrap();
        let probe: FnPtr = script
            .call(&engine, Some(Phase::RequestHeaders))
            .unwrap()
            .cast();
        let mut largest = 0;
        for i in 0..3 * MAX_RESOLVED {
            let name = Dynamic::from(format!("missing_{i}"));
            let found = script.call_back(&engine, &probe, vec![name]).unwrap();
            assert_eq!(found.as_bool(), Ok(false));
            let len = script.calls.borrow().resolved.len();
            assert!(len <= MAX_RESOLVED, "{len} resolutions kept");
            largest = largest.max(len);
        }
        assert!(
            largest > MAX_RESOLVED / 2,
            "the misses were cached: {largest}"
        );
    }
}
