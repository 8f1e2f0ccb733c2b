//! `proxy-rhai check`: a script compiled as the plugin would, plus warnings worth having.
//!
//! Errors come from [`Plugin::configure`] itself (same limits, same phase rules). Warnings:
//! - a function whose name is close to a phase function's but isn't one
//!   (`on_request_header`, `onRequestHeaders`, `on_response_bodies`): it would never run;
//! - a call to a function that exists neither in the script nor in the engine (the script API
//!   and Rhai's standard library), or with a number of arguments no such function takes.
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

use crate::bindings::Api;
use crate::config::Limits;
use crate::emulator::EmulatorHost;
use crate::phase::Phase;
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
    let engine = with_api(crate::sandbox::std_engine());
    if let Ok(ast) = engine.compile(script) {
        let mut warnings = misspelled_phases(script, &ast);
        warnings.extend(unknown_calls(&engine, &ast));
        warnings.sort_by_key(|d| (d.line, d.column));
        found.extend(warnings);
    }
    found
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
/// functions.
pub(crate) fn with_api(engine: Engine) -> Engine {
    let limits = Limits::default();
    let api = Api::new(EmulatorHost::default(), &limits, Rc::default());
    crate::sandbox::engine(engine, &limits, Rc::new(api), None)
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

/// Functions named almost like a phase function: the proxy would never call them.
fn misspelled_phases(source: &str, ast: &AST) -> Vec<Diagnostic> {
    let normal = |s: &str| s.to_ascii_lowercase().replace('_', "");
    let entry_points: Vec<&str> = Phase::ALL
        .iter()
        .map(|p| p.function_name())
        .chain([TICK_FUNCTION])
        .collect();
    let mut found = Vec::new();
    for f in ast.iter_functions() {
        if f.name.contains('$') || entry_points.contains(&f.name) {
            continue;
        }
        // The closest entry point, when close enough for its length (a short name like
        // `on_log` tolerates one slip).
        let name = normal(f.name);
        let near = entry_points
            .iter()
            .map(|phase| (crate::sandbox::edit_distance(&name, &normal(phase)), phase))
            .filter(|(d, phase)| *d <= (normal(phase).len() / 4).min(3))
            .min();
        if let Some((_, phase)) = near {
            let (line, column) = definition_position(source, f.name).unzip();
            found.push(Diagnostic {
                severity: Severity::Warning,
                line,
                column,
                message: format!(
                    "`{}` is not a phase function and will never be called by the proxy: \
                     did you mean `{phase}`?",
                    f.name
                ),
            });
        }
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

/// Calls to functions that exist neither in the script nor in the engine.
fn unknown_calls(engine: &Engine, ast: &AST) -> Vec<Diagnostic> {
    // Every function of the engine, by name: the numbers of arguments it takes.
    let mut known: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let metadata: Value = engine
        .gen_fn_metadata_to_json(true)
        .ok()
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    for f in metadata["functions"].as_array().into_iter().flatten() {
        if let (Some(name), Some(n)) = (f["name"].as_str(), f["numParams"].as_u64()) {
            known
                .entry(name.to_string())
                .or_default()
                .insert(n as usize);
        }
    }
    let mut script: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut variables: BTreeSet<String> = BTreeSet::new();
    for f in ast.iter_functions() {
        script
            .entry(f.name.to_string())
            .or_default()
            .insert(f.params.len());
        variables.extend(f.params.iter().map(|p| p.to_string()));
    }
    let mut calls: Vec<(bool, Box<FnCallExpr>, Position)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Stmt(Stmt::FnCall(call, pos)))
            | Some(ASTNode::Expr(Expr::FnCall(call, pos))) => {
                calls.push((false, call.clone(), *pos))
            }
            Some(ASTNode::Expr(Expr::MethodCall(call, pos))) => {
                calls.push((true, call.clone(), *pos))
            }
            Some(ASTNode::Stmt(Stmt::Var(var, ..))) => {
                variables.insert(var.0.name.to_string());
            }
            Some(ASTNode::Stmt(Stmt::For(var, ..))) => {
                variables.insert(var.0.name.to_string());
            }
            _ => {}
        }
        true
    });
    let mut found = Vec::new();
    for (method, call, pos) in calls {
        let name = call.name.as_str();
        if call.is_operator_call()
            || !rhai::is_valid_function_name(name)
            || KEYWORDS.contains(&name)
            || variables.contains(name)
        {
            continue;
        }
        // A method call passes its object as the first argument of a native function, and
        // as `this` to a script function.
        let args = call.args.len();
        let native = args + usize::from(method);
        let takes = |set: Option<&BTreeSet<usize>>, n: usize| set.is_some_and(|s| s.contains(&n));
        if takes(known.get(name), native) || takes(script.get(name), args) {
            continue;
        }
        let mut arities: BTreeSet<usize> = known.get(name).cloned().unwrap_or_default();
        arities.extend(script.get(name).into_iter().flatten());
        let what = if method { "method" } else { "function" };
        let message = if arities.is_empty() {
            format!("no {what} `{name}` exists in the script or in the API")
        } else {
            let given = if method { native - 1 } else { args };
            let takes: Vec<String> = arities
                .iter()
                .map(|n| (n - usize::from(method).min(*n)).to_string())
                .collect();
            format!(
                "`{name}` is called with {given} argument(s), but takes {}",
                takes.join(" or ")
            )
        };
        found.push(Diagnostic {
            severity: Severity::Warning,
            line: pos.line(),
            column: pos.position(),
            message,
        });
    }
    found
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
    fn misspelled_phases_are_warned_about() {
        let found = messages(
            "fn on_request_headers() {}\n\
             fn on_request_header() {}\n\
             fn onResponseHeaders() {}\n\
             fn on_response_bodies() {}\n\
             fn on_request_trailers() {}\n\
             fn on_tik() {}\n\
             fn helper() {}",
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[3].contains("did you mean `on_tick`"), "{}", found[3]);
        assert!(
            found[0].starts_with("2:1: warning: `on_request_header`"),
            "{}",
            found[0]
        );
        assert!(found[0].contains("did you mean `on_request_headers`"));
        assert!(found[1].contains("`onResponseHeaders`"));
        assert!(found[2].contains("did you mean `on_response_body`"));
    }

    #[test]
    fn unknown_functions_and_wrong_arities_are_warned_about() {
        let found = messages(
            "fn on_request_headers() {\n  add_header(\"a\", \"b\");\n  get_request_header();\n  \"x\".frobnicate();\n}",
        );
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found[0].starts_with("2:3: warning: no function `add_header`"),
            "{}",
            found[0]
        );
        assert!(found[1].contains("`get_request_header` is called with 0 argument(s), but takes 1"));
        assert!(found[2].contains("no method `frobnicate`"), "{}", found[2]);
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
