//! `proxy-rhai check`: a script compiled as the plugin would, and the mistakes that would make
//! it fail every time a request reaches them.
//!
//! Errors come from [`Plugin::configure`] itself (same limits, same phase rules) and from
//! reading the script's calls, each function with the phases that run it (its own, or those of
//! the functions that call it or make a closure or `Fn("name")` of it):
//! - a function whose name is close to a phase function's but isn't one
//!   (`on_request_header`, `onRequestHeaders`, `on_response_bodies`): it would never run;
//! - a call to a function that exists neither in the script nor in the engine (the script API
//!   and Rhai's standard library), or with a number of arguments no such function takes;
//! - an API function called where it never works (`get_response_header` in
//!   `on_request_headers`, a callback's getter outside a callback, a request's function in
//!   `on_tick`);
//! - a callout callback taking more parameters than it is given;
//! - a literal argument of a type the API function doesn't take (`send_http_response("403", …)`).
//!
//! Warnings: a function nothing calls; a body phase reading or writing its message's headers,
//! which works only when the configuration says the proxy holds them
//! (`allow_on_headers_stop_iteration`, which `deploy envoy` sets).
//!
//! ```
//! use proxy_rhai::check::{check, Severity};
//! let found = check("fn on_request_header() { add_header(\"a\", \"b\"); }", &serde_json::json!({}));
//! assert_eq!(found.len(), 3); // no phase function; a misspelled phase; an unknown function
//! assert_eq!(found[0].severity, Severity::Error);
//! assert!(found[2].message.contains("add_header"));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

use rhai::{ASTNode, Engine, Expr, FnCallExpr, Position, Stmt, AST};
use serde_json::Value;

use crate::bindings::{Allowed, Api, FnDoc, CALLBACK_PARAMETERS, REDIS_CALLBACK_PARAMETERS};
use crate::config::Limits;
use crate::emulator::EmulatorHost;
use crate::phase::{Phase, Phases};
use crate::plugin::{Plugin, TICK_FUNCTION};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The plugin refuses the script.
    Error,
    /// The script loads, but something in it looks wrong.
    Warning,
}

/// One finding, with its place in the script when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// What is wrong, in one line.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `LINE:COLUMN: error: MESSAGE`, as compilers write it (the caller puts the file first).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{l}:{c}: ")?,
            (Some(l), None) => write!(f, "{l}: ")?,
            _ => {}
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}", self.message)
    }
}

/// Checks `script` with the rest of a plugin configuration (`config`, `limits`,
/// `error_policy`; `{}` for the defaults): errors first, then warnings in script order.
pub fn check(script: &str, settings: &Value) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    let mut configuration = match settings {
        Value::Object(map) => map.clone(),
        Value::Null => serde_json::Map::new(),
        other => {
            found.push(error(format!(
                "the plugin configuration must be a JSON object, got {other}"
            )));
            return found;
        }
    };
    configuration.insert("script".into(), script.into());
    let bytes = Value::Object(configuration).to_string();
    if let Err(e) = Plugin::configure(EmulatorHost::default(), bytes.as_bytes()) {
        found.push(Diagnostic {
            severity: Severity::Error,
            line: e.line,
            column: e.column,
            message: e.to_string(),
        });
    }
    let mut api = Vec::new();
    let engine = with_api(crate::sandbox::std_engine(), Some(&mut api));
    if let Ok(ast) = engine.compile(script) {
        let parsed = Script::of(&ast);
        let held = settings.get("allow_on_headers_stop_iteration") == Some(&Value::Bool(true));
        let mut more = uncalled_functions(script, &parsed);
        more.extend(mistakes(&parsed, &Known::of(&engine, api), held));
        more.sort_by_key(|d| (d.line, d.column));
        found.extend(more);
    }
    found
}

/// Whether `script` calls a Redis function (`redis_*` of the API, not a function of its own
/// of that name): it needs the plugin's Higress build. A script that doesn't compile calls none.
pub fn calls_redis(script: &str) -> bool {
    let engine = with_api(crate::sandbox::std_engine(), None);
    let Ok(ast) = engine.compile(script) else {
        return false;
    };
    let parsed = Script::of(&ast);
    parsed.calls.iter().any(|c| {
        let name = c.call.name.as_str();
        name.starts_with("redis_") && parsed.named(name, None).next().is_none()
    })
}

fn error(message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        line: None,
        column: None,
        message,
    }
}

/// `engine` in the plugin's sandbox (default limits, the script API), for analysis and
/// documentation, never to run a request: [`crate::sandbox::std_engine`] gives the plugin's set of
/// functions. `docs`, when given, collects the API's reference.
pub(crate) fn with_api(engine: Engine, docs: Option<&mut Vec<FnDoc>>) -> Engine {
    let limits = Limits::default();
    let api = Api::new(EmulatorHost::default(), &limits, Rc::default());
    crate::sandbox::engine(engine, &limits, Rc::new(api), docs)
}

/// Where `fn NAME(` is defined in `source` (1-based line and column of `fn`).
pub(crate) fn definition_position(source: &str, name: &str) -> Option<(usize, usize)> {
    for (i, line) in source.lines().enumerate() {
        let line = line.split("//").next().unwrap_or_default();
        let mut from = 0;
        while let Some(at) = line[from..].find("fn ") {
            let start = from + at;
            from = start + 3;
            if start > 0 && line[..start].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = line[from..].trim_start();
            if let Some(after) = rest.strip_prefix(name) {
                if after.trim_start().starts_with('(') {
                    return Some((i + 1, start + 1));
                }
            }
        }
    }
    None
}

/// The phase function (or `on_tick`) that `name` is almost named like, when close enough for
/// its length (a short name like `on_log` tolerates one slip).
fn near_phase(name: &str) -> Option<&'static str> {
    let normal = |s: &str| s.to_ascii_lowercase().replace('_', "");
    let entry_points = Phase::ALL
        .iter()
        .map(|p| p.function_name())
        .chain([TICK_FUNCTION]);
    if name.contains('$') || entry_points.clone().any(|e| e == name) {
        return None;
    }
    let name = normal(name);
    entry_points
        .map(|phase| (crate::sandbox::edit_distance(&name, &normal(phase)), phase))
        .filter(|(d, phase)| *d <= (normal(phase).len() / 4).min(3))
        .min()
        .map(|(_, phase)| phase)
}

/// Functions named almost like a phase function (the proxy would never call them), and
/// functions nothing calls.
fn uncalled_functions(source: &str, script: &Script) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    for (i, f) in script.fns.iter().enumerate() {
        let (severity, message) = if let Some(phase) = near_phase(&f.name) {
            let message = format!(
                "`{}` is not a phase function and will never be called by the proxy: did you \
                 mean `{phase}`?",
                f.name
            );
            (Severity::Error, message)
        } else if f.name.contains('$')
            || f.phases != Phases::default()
            || f.tick
            || f.pointer
            // Any number of arguments: a wrong one is an error of its own.
            || script.calls.iter().any(|c| c.within != Some(i) && c.call.name == f.name)
        {
            continue;
        } else {
            (Severity::Warning, format!("`{}` is never called", f.name))
        };
        let (line, column) = definition_position(source, &f.name).unzip();
        found.push(Diagnostic {
            severity,
            line,
            column,
            message,
        });
    }
    found
}

/// Names Rhai handles itself, with any number of arguments.
const KEYWORDS: &[&str] = &[
    "print",
    "debug",
    "type_of",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_var",
    "is_def_fn",
    "eval",
];

/// One function of the script, with what runs it.
struct ScriptFn {
    name: String,
    params: usize,
    /// The phases it runs in: its own if it is a phase function, and those of the functions
    /// that call it or make a function pointer (a closure, `Fn("name")`) to it.
    phases: Phases,
    /// Whether `on_tick` runs it.
    tick: bool,
    /// Whether it runs as a function pointer (a callout callback, a closure given to `map`, …).
    pointer: bool,
}

/// A call found in the script: to a function, or a method (its object is the first argument).
struct Call {
    /// The script function it is in; `None` at the top level.
    within: Option<usize>,
    method: bool,
    call: Box<FnCallExpr>,
    pos: Position,
}

/// Everything [`mistakes`] knows of the script: its functions and the calls they make.
struct Script {
    fns: Vec<ScriptFn>,
    calls: Vec<Call>,
    /// Function pointers made in each function (by index): the name they point to.
    pointers: Vec<(Option<usize>, String)>,
    variables: BTreeSet<String>,
}

impl Script {
    fn of(ast: &AST) -> Self {
        let mut script = Script {
            fns: Vec::new(),
            calls: Vec::new(),
            pointers: Vec::new(),
            variables: BTreeSet::new(),
        };
        script.visit(None, &ast.clone_statements_only());
        let fns: Vec<(String, usize)> = ast
            .iter_fn_def()
            .map(|f| (f.name.to_string(), f.params.len()))
            .collect();
        for (name, params) in fns {
            let phase = Phase::ALL.into_iter().find(|p| p.function_name() == name);
            script.fns.push(ScriptFn {
                phases: phase.map_or_else(Phases::default, |p| Phases::of(&[p])),
                tick: name == TICK_FUNCTION,
                pointer: false,
                name: name.clone(),
                params,
            });
            // A closure is a function of its own (`anon$…`): walked alone, its calls are its.
            let mut alone = ast.clone_functions_only();
            alone.retain_functions(|_, _, n, p| n == name && p == params);
            script.visit(Some(script.fns.len() - 1), &alone);
        }
        for f in ast.iter_fn_def() {
            script
                .variables
                .extend(f.params.iter().map(|p| p.to_string()));
        }
        script.spread_phases();
        script
    }

    /// Collects the calls, function pointers and variables of `part` (the top level, or one
    /// function), found in the function `within`.
    fn visit(&mut self, within: Option<usize>, part: &AST) {
        part.walk(&mut |path: &[ASTNode]| {
            match path.last() {
                Some(ASTNode::Stmt(Stmt::FnCall(call, pos)))
                | Some(ASTNode::Expr(Expr::FnCall(call, pos))) => {
                    let (method, call, pos) = (false, call.clone(), *pos);
                    self.calls.push(Call {
                        within,
                        method,
                        call,
                        pos,
                    });
                }
                Some(ASTNode::Expr(Expr::MethodCall(call, pos))) => {
                    let (method, call, pos) = (true, call.clone(), *pos);
                    self.calls.push(Call {
                        within,
                        method,
                        call,
                        pos,
                    });
                }
                Some(ASTNode::Expr(e @ Expr::DynamicConstant(..))) => {
                    if let Some((name, _)) = pointer_of(e) {
                        self.pointers.push((within, name));
                    }
                }
                Some(ASTNode::Stmt(Stmt::Var(var, ..))) => {
                    self.variables.insert(var.0.name.to_string());
                }
                Some(ASTNode::Stmt(Stmt::For(var, ..))) => {
                    self.variables.insert(var.0.name.to_string());
                }
                _ => {}
            }
            true
        });
    }

    /// The functions `name` may mean when called with `args` arguments (a function pointer
    /// passes any number).
    fn named(&self, name: &str, args: Option<usize>) -> impl Iterator<Item = usize> + '_ {
        let name = name.to_string();
        self.fns
            .iter()
            .enumerate()
            .filter(move |(_, f)| f.name == name && args.is_none_or(|n| n == f.params))
            .map(|(i, _)| i)
    }

    /// Gives each function the phases (and the tick) of everything that runs it.
    fn spread_phases(&mut self) {
        let mut edges: Vec<(usize, usize)> = Vec::new();
        for c in &self.calls {
            if let Some(from) = c.within {
                for to in self.named(c.call.name.as_str(), Some(c.call.args.len())) {
                    edges.push((from, to));
                }
            }
        }
        let mut pointed = Vec::new();
        for (within, name) in &self.pointers {
            for to in self.named(name, None) {
                if let Some(from) = *within {
                    edges.push((from, to));
                }
                pointed.push(to);
            }
        }
        for to in pointed {
            if let Some(f) = self.fns.get_mut(to) {
                f.pointer = true;
            }
        }
        let mut changed = true;
        while changed {
            changed = false;
            for &(from, to) in &edges {
                let Some((phases, tick)) = self.fns.get(from).map(|f| (f.phases, f.tick)) else {
                    continue;
                };
                if let Some(f) = self.fns.get_mut(to) {
                    let before = (f.phases, f.tick);
                    f.phases = f.phases.union(phases);
                    f.tick |= tick;
                    changed |= before != (f.phases, f.tick);
                }
            }
        }
    }
}

/// The function a function-pointer expression points to, and how many arguments it curried:
/// a closure (`|x| …`, curried with what it captures) or `Fn("name")`.
fn pointer_of(expr: &Expr) -> Option<(String, usize)> {
    match expr {
        Expr::DynamicConstant(value, _) => value
            .read_lock::<rhai::FnPtr>()
            .map(|f| (f.fn_name().to_string(), 0)),
        Expr::FnCall(call, _) if call.name == "curry" => {
            let (name, _) = pointer_of(call.args.first()?)?;
            Some((name, call.args.len() - 1))
        }
        Expr::Stmt(block) => match block.statements().last()? {
            Stmt::Expr(e) => pointer_of(e),
            Stmt::FnCall(call, pos) => pointer_of(&Expr::FnCall(call.clone(), *pos)),
            _ => None,
        },
        _ => None,
    }
}

/// What the engine and the script API know of each function name.
struct Known {
    /// Every function of the engine (the script API and Rhai's standard library), by name: the
    /// numbers of arguments it takes.
    arities: BTreeMap<String, BTreeSet<usize>>,
    /// The script API's own functions: each form's parameters and where it works.
    api: Vec<FnDoc>,
}

impl Known {
    /// What `engine` has, and `api`, the reference of its script API.
    fn of(engine: &Engine, api: Vec<FnDoc>) -> Self {
        let mut arities: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let metadata: Value = engine
            .gen_fn_metadata_to_json(true)
            .ok()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        for f in metadata["functions"].as_array().into_iter().flatten() {
            if let (Some(name), Some(n)) = (f["name"].as_str(), f["numParams"].as_u64()) {
                arities
                    .entry(name.to_string())
                    .or_default()
                    .insert(n as usize);
            }
        }
        Known { arities, api }
    }

    fn forms<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a FnDoc> + 'a {
        self.api.iter().filter(move |d| d.name == name)
    }
}

/// Mistakes that make a call fail every time it runs: an unknown function, a wrong number of
/// arguments, a literal of a type the function doesn't take, a function used in a phase where
/// it never works, a callback with more parameters than the call gives it.
fn mistakes(script: &Script, known: &Known, held: bool) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    let mut push = |pos: Position, (severity, message): (Severity, String)| {
        found.push(Diagnostic {
            severity,
            line: pos.line(),
            column: pos.position(),
            message,
        })
    };
    for c in &script.calls {
        let name = c.call.name.as_str();
        if c.call.is_operator_call()
            || !rhai::is_valid_function_name(name)
            || KEYWORDS.contains(&name)
            || script.variables.contains(name)
        {
            continue;
        }
        if let Some(message) = unknown_or_wrong_arity(script, known, c) {
            push(c.pos, (Severity::Error, message));
            continue;
        }
        let native = c.call.args.len() + usize::from(c.method);
        let forms: Vec<&FnDoc> = known
            .forms(name)
            .filter(|d| d.params.len() == native)
            .collect();
        if forms.is_empty() || script.named(name, Some(c.call.args.len())).next().is_some() {
            continue; // not the API's, or the script's own function of that name
        }
        let args: Vec<&Expr> = c.call.args.iter().collect();
        if let Some(message) = wrong_literal(name, c.method, &args, &forms) {
            push(c.pos, (Severity::Error, message));
        }
        if let Some(finding) = wrong_place(script, c.within, name, forms[0].allowed, held) {
            push(c.pos, finding);
        }
        for (i, arg) in args.iter().enumerate() {
            let Some((pointer, curried)) = pointer_of(arg) else {
                continue;
            };
            let takes_callback = forms
                .iter()
                .any(|d| d.params.get(i).is_some_and(|(_, t)| *t == "FnPtr"));
            let params: Vec<usize> = script
                .named(&pointer, None)
                .filter_map(|f| script.fns.get(f))
                .map(|f| f.params.saturating_sub(curried))
                .collect();
            let (given, kind) = match name.starts_with("redis_") {
                true => (REDIS_CALLBACK_PARAMETERS, "a Redis callback"),
                false => (CALLBACK_PARAMETERS, "a callout callback"),
            };
            let most = given.len();
            if takes_callback && !params.is_empty() && params.iter().all(|n| *n > most) {
                push(
                    arg.position(),
                    (
                        Severity::Error,
                        format!(
                            "the callback of `{name}` takes {} parameters, and {kind} is given \
                             at most {most}: |{}|",
                            params[0],
                            given.join(", ")
                        ),
                    ),
                );
            }
        }
    }
    found
}

/// A call to a function that exists neither in the script nor in the engine, or with a number
/// of arguments no such function takes.
fn unknown_or_wrong_arity(script: &Script, known: &Known, c: &Call) -> Option<String> {
    let name = c.call.name.as_str();
    // A method call passes its object as the first argument of a native function, and as
    // `this` to a script function.
    let args = c.call.args.len();
    let native = args + usize::from(c.method);
    if known.arities.get(name).is_some_and(|s| s.contains(&native))
        || script.named(name, Some(args)).next().is_some()
    {
        return None;
    }
    let mut arities: BTreeSet<usize> = known.arities.get(name).cloned().unwrap_or_default();
    arities.extend(script.named(name, None).filter_map(|f| {
        let params = script.fns.get(f)?.params;
        Some(params + usize::from(c.method))
    }));
    let what = if c.method { "method" } else { "function" };
    if arities.is_empty() {
        let mut text = format!("no {what} `{name}` exists in the script or in the API");
        let names = known
            .api
            .iter()
            .map(|d| d.name)
            .chain(script.fns.iter().map(|f| f.name.as_str()));
        if let Some(close) = crate::sandbox::closest(name, names) {
            text.push_str(&format!(": did you mean `{close}`?"));
        }
        return Some(text);
    }
    let given = native - usize::from(c.method);
    let takes: Vec<String> = arities
        .iter()
        .map(|n| n.saturating_sub(usize::from(c.method)).to_string())
        .collect();
    Some(format!(
        "`{name}` is called with {given} argument(s), but takes {}",
        takes.join(" or ")
    ))
}

/// A literal argument of a type no form of the API function takes.
fn wrong_literal(name: &str, method: bool, args: &[&Expr], forms: &[&FnDoc]) -> Option<String> {
    let literal: Vec<Option<&str>> = args.iter().map(|a| literal_type(a)).collect();
    let offset = usize::from(method);
    let fits = |d: &&&FnDoc| {
        literal.iter().enumerate().all(|(i, t)| {
            let expected = d.params.get(i + offset).map(|(_, t)| *t);
            match (t, expected) {
                (Some(t), Some(rust)) => accepts(rust, t),
                _ => true,
            }
        })
    };
    if forms.iter().any(|d| fits(&d)) {
        return None;
    }
    let form = forms.first()?;
    let (i, (given, (param, rust))) = literal
        .iter()
        .zip(form.params.iter().skip(offset))
        .enumerate()
        .find(|(_, (t, (_, rust)))| t.is_some_and(|t| !accepts(rust, t)))?;
    let given = (*given)?;
    let expected = crate::sandbox::plain_type(rust);
    let article = |t: &str| match t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        true => "an",
        false => "a",
    };
    let mut text = format!(
        "argument {} of `{name}` (`{param}`) must be {} {expected}, and this one is {} {given}",
        i + 1,
        article(expected),
        article(given),
    );
    if given == "string" && expected == "int" {
        text.push_str(" (write the number without quotes)");
    }
    Some(text)
}

/// The type of a literal as scripts know it; `None` for anything that isn't a literal.
fn literal_type(expr: &Expr) -> Option<&'static str> {
    Some(match expr {
        Expr::StringConstant(..) | Expr::InterpolatedString(..) => "string",
        Expr::IntegerConstant(..) => "int",
        Expr::FloatConstant(..) => "float",
        Expr::BoolConstant(..) => "bool",
        Expr::CharConstant(..) => "char",
        Expr::Unit(..) => "()",
        Expr::Array(..) => "array",
        Expr::Map(..) => "map",
        Expr::DynamicConstant(value, _) => match value.type_name() {
            "array" => "array",
            "map" => "map",
            "Fn" => "function",
            _ => return None,
        },
        _ => return pointer_of(expr).map(|_| "function"),
    })
}

/// Whether a parameter of Rust type `rust` takes a literal of script type `given`.
fn accepts(rust: &str, given: &str) -> bool {
    match crate::sandbox::plain_type(rust) {
        "any" => true,
        expected => expected == given,
    }
}

/// Why `name` can never work where the function `within` runs, if it can't; a warning when it
/// works only if the proxy holds the headers for the body phase (`held`: the configuration says
/// it does).
fn wrong_place(
    script: &Script,
    within: Option<usize>,
    name: &str,
    allowed: Allowed,
    held: bool,
) -> Option<(Severity, String)> {
    let f = script.fns.get(within?)?;
    let runs_in = match (f.phases == Phases::default(), f.tick) {
        (true, false) => return None, // not run by the proxy (yet): nothing to say
        (true, true) => "on_tick".to_string(),
        (false, false) => f.phases.to_string(),
        (false, true) => format!("{}, on_tick", f.phases),
    };
    let here = match Phase::ALL.iter().any(|p| p.function_name() == f.name) || f.tick {
        true => format!("`{}`", f.name),
        false => format!("`{}` (run from {runs_in})", f.name),
    };
    let error = |message: String| Some((Severity::Error, message));
    match allowed {
        Allowed::Anywhere => None,
        Allowed::In(phases) if f.phases.intersects(phases) => None,
        Allowed::In(_) | Allowed::Callback if f.phases == Phases::default() => error(format!(
            "`{name}` never works in {here}: it is only available while a request is handled"
        )),
        Allowed::In(phases) if f.phases.iter().any(|p| phases.held_in(p)) => (!held).then(|| {
            (
                Severity::Warning,
                format!(
                    "`{name}` in {here} works only when the proxy holds the headers for the \
                     body phase: \"allow_on_headers_stop_iteration\": true, with Envoy's option \
                     of that name (`proxy-rhai deploy envoy` sets both; Istio and Higress \
                     can't); without them it fails every time"
                ),
            )
        }),
        Allowed::In(phases) => error(format!(
            "`{name}` never works in {here}: it is only available in {phases}{}",
            match name.starts_with("get_") {
                true => " (keep what a later phase needs with set_context)",
                false => "",
            }
        )),
        Allowed::Callback if f.pointer => None,
        Allowed::Callback => error(format!(
            "`{name}` never works in {here}: it is only available inside a callout callback"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(script: &str) -> Vec<String> {
        check(script, &serde_json::json!({}))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_good_script_has_nothing_to_say() {
        let found = messages(
            r#"fn on_request_headers() {
                let h = get_request_headers();
                let f = |x| x.len();
                log_info(`${h.len()} ${f.call("ab")} ${helper(1)} ${"a,b".split(",").len()}`);
                http_get("auth", "/", [], 100, |status, headers, body| { print(status); });
            }
            fn helper(x) { x + 1 }"#,
        );
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn misspelled_phases_are_errors() {
        let found = messages(
            "fn on_request_headers() {}\n\
             fn on_request_header() {}\n\
             fn onResponseHeaders() {}\n\
             fn on_response_bodies() {}\n\
             fn on_request_trailers() {}\n\
             fn on_tik() {}\n\
             fn helper() {}",
        );
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found[3].contains("did you mean `on_tick`"), "{}", found[3]);
        assert_eq!(found[4], "7:1: warning: `helper` is never called");
        assert!(
            found[0].starts_with("2:1: error: `on_request_header`"),
            "{}",
            found[0]
        );
        assert!(found[0].contains("did you mean `on_request_headers`"));
        assert!(found[1].contains("`onResponseHeaders`"));
        assert!(found[2].contains("did you mean `on_response_body`"));
    }

    #[test]
    fn unknown_functions_and_wrong_arities_are_errors() {
        let found = messages(
            "fn on_request_headers() {\n  add_reqest_header(\"a\", \"b\");\n  get_request_header();\n  \"x\".frobnicate();\n  helper(1, 2);\n}\nfn helper(x) { x }",
        );
        assert_eq!(
            found,
            [
                "2:3: error: no function `add_reqest_header` exists in the script or in the API: \
                 did you mean `add_request_header`?",
                "3:3: error: `get_request_header` is called with 0 argument(s), but takes 1",
                "4:7: error: no method `frobnicate` exists in the script or in the API",
                "5:3: error: `helper` is called with 2 argument(s), but takes 1",
            ]
        );
    }

    #[test]
    fn functions_used_where_they_never_work_are_errors() {
        let found = messages(
            r#"fn on_request_headers() {
  let v = get_response_header("x");
  let b = get_http_call_response_body();
  http_get("auth", "/", [], 100, |status| log_info(get_http_call_response_body()));
  read_body();
}
fn read_body() { get_response_body() }
fn on_response_headers() { read_body(); }
fn on_response_body() { send_http_response(403, [], ()); }
fn on_tick() { add_request_header("a", "b"); log_info("tick"); }"#,
        );
        assert_eq!(
            found,
            [
                "2:11: error: `get_response_header` never works in `on_request_headers`: it is \
                 only available in on_response_headers, on_log (keep what a later phase needs \
                 with set_context)",
                "3:11: error: `get_http_call_response_body` never works in `on_request_headers`: \
                 it is only available inside a callout callback",
                "7:18: error: `get_response_body` never works in `read_body` (run from \
                 on_request_headers, on_response_headers): it is only available in \
                 on_response_body, on_response_chunk (keep what a later phase needs with \
                 set_context)",
                "9:25: error: `send_http_response` never works in `on_response_body`: it is only \
                 available in on_request_headers, on_request_body, on_request_chunk, \
                 on_request_trailers, on_response_headers",
                "10:16: error: `add_request_header` never works in `on_tick`: it is only \
                 available while a request is handled",
            ]
        );
        // A helper that works in one of the phases that run it may be guarded there.
        let found = messages(
            "fn on_request_headers() { h(); }\nfn on_response_headers() { h(); }\nfn h() { get_response_header(\"a\") }",
        );
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn header_writes_in_a_body_phase_need_the_held_headers() {
        let script = "fn on_response_body() {\n  add_response_header(\"x-n\", \"1\");\n}";
        assert_eq!(
            messages(script),
            [
                "2:3: warning: `add_response_header` in `on_response_body` works only when the \
              proxy holds the headers for the body phase: \"allow_on_headers_stop_iteration\": \
              true, with Envoy's option of that name (`proxy-rhai deploy envoy` sets both; Istio \
              and Higress can't); without them it fails every time"
            ]
        );
        let held = serde_json::json!({"allow_on_headers_stop_iteration": true});
        assert!(check(script, &held).is_empty());
        // Never in another message's body phase.
        let found = check(
            "fn on_request_body() { add_response_header(\"x\", \"1\"); }",
            &held,
        );
        assert_eq!(found[0].severity, Severity::Error, "{found:?}");
    }

    #[test]
    fn callbacks_and_literals_of_the_wrong_shape_are_errors() {
        let found = messages(
            r#"fn on_request_headers() {
  let t = 1;
  http_get("auth", "/", [], 100, |s, h, b, f, extra| t);
  http_get("auth", "/", [], 100, Fn("answer"));
  http_get("auth", "/", [], 100, |status, headers, body, failure| log_info(`${t} ${failure}`));
  send_http_response("403", [], ());
  let x = get_request_header(42);
}
fn answer(a, b, c, d, e) {}"#,
        );
        assert_eq!(
            found,
            [
                "3:34: error: the callback of `http_get` takes 5 parameters, and a callout \
                 callback is given at most 4: |status, headers, body, failure|",
                "4:34: error: the callback of `http_get` takes 5 parameters, and a callout \
                 callback is given at most 4: |status, headers, body, failure|",
                "6:3: error: argument 1 of `send_http_response` (`status`) must be an int, and \
                 this one is a string (write the number without quotes)",
                "7:11: error: argument 1 of `get_request_header` (`name`) must be a string, and \
                 this one is an int",
            ]
        );
    }

    #[test]
    fn scripts_calling_redis_are_found() {
        assert!(calls_redis(
            "fn on_request_headers() { helper(); }\nfn helper() { redis_get(\"r\", \"k\", |v| {}); }"
        ));
        // Not a comment, a string, nor a function of the script's own.
        assert!(!calls_redis(
            "// redis_get(\"r\", \"k\", |v| {})\nfn on_request_headers() { log_info(\"redis_get(\"); redis_thing(); }\nfn redis_thing() {}"
        ));
    }

    #[test]
    fn redis_calls_are_checked_like_callouts() {
        let found = messages(
            r#"fn on_request_headers() {
  redis_incr("redis", "n", |n| log_info(`${n}`));
  redis_incr("redis", "n", |n, extra| log_info(`${n}`));
  redis_inc("redis", "n", |n| {});
  redis_set("redis", "k", "v", "60", |ok| {});
}
fn on_log() { redis_get("redis", "k", |v| {}); }
fn on_tick() { redis_expire("redis", "k", 1, |v| {}); }"#,
        );
        assert_eq!(
            found,
            [
                "3:28: error: the callback of `redis_incr` takes 2 parameters, and a Redis \
                 callback is given at most 1: |reply|",
                "4:3: error: no function `redis_inc` exists in the script or in the API: did you \
                 mean `redis_incr`?",
                "5:3: error: argument 4 of `redis_set` (`ttl_seconds`) must be an int, and this \
                 one is a string (write the number without quotes)",
                "7:15: error: `redis_get` never works in `on_log`: it is only available in \
                 on_request_headers, on_request_body, on_request_chunk, on_request_trailers, \
                 on_response_headers, on_response_body, on_response_chunk, on_response_trailers",
                "8:16: error: `redis_expire` never works in `on_tick`: it is only available \
                 while a request is handled",
            ]
        );
    }

    #[test]
    fn errors_come_from_the_plugin_with_line_and_column() {
        let found = check(
            "fn on_request_headers() {\n  let x = ;\n}",
            &serde_json::json!({}),
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(
            (found[0].severity, found[0].line, found[0].column),
            (Severity::Error, Some(2), Some(11))
        );
        let found = check("fn nothing() {}", &serde_json::json!({}));
        assert!(found[0].message.contains("no phase function"), "{found:#?}");
        let found = check(
            "fn on_request_headers() {}",
            &serde_json::json!({"limits": {"max_operations": 1}}),
        );
        assert!(found[0].message.contains("max_operations"), "{found:#?}");
    }

    #[test]
    fn definitions_are_found_in_the_source() {
        let src = "// fn on_x() in a comment\nlet define = 1;\n  fn  on_x (a) {}";
        assert_eq!(definition_position(src, "on_x"), Some((3, 3)));
        assert_eq!(
            definition_position("fn a() {}\nfn ab() {}", "ab"),
            Some((2, 1))
        );
    }
}
