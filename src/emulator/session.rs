//! A plugin whose script is written one piece at a time, as in `proxy-rhai repl`: each piece
//! runs as top-level code of the plugin, and the functions defined so far are its script.

use rhai::{Dynamic, Scope, AST};

use super::Emulator;
use crate::plugin::Plugin;

/// Why a piece of script doesn't parse.
#[derive(Debug, Clone, PartialEq)]
pub struct Unparsed {
    pub message: String,
    /// It only ends too early (an open block, list or string): more lines may complete it.
    pub unfinished: bool,
}

impl Emulator {
    /// Configures the plugin as [`Emulator::new_at`] does, leaving out its global "script":
    /// requests pass untouched until [`Emulator::set_script`] gives it one.
    pub fn without_script(configuration: &str, now_ms: u64) -> Result<Self, String> {
        Self::configured(now_ms, |host| {
            Plugin::without_script(host, configuration.as_bytes())
        })
        .map_err(|e| e.to_string())
    }

    /// Parses `source` as the plugin parses its script (same engine, same messages).
    pub fn parse(&self, source: &str) -> Result<AST, Unparsed> {
        self.plugin
            .parse(source)
            .map_err(|(message, unfinished)| Unparsed {
                message,
                unfinished,
            })
    }

    /// Runs `ast` as top-level code of the plugin (as its script's top level runs at configure
    /// time: with `config()`, the bindings that work outside a phase, the plugin's limits),
    /// with `scope`'s variables; returns its value. The error is described as a script error
    /// is in the log.
    pub fn eval(&self, scope: &mut Scope<'static>, ast: &AST) -> Result<Dynamic, String> {
        self.plugin.eval_top_level(scope, ast)
    }

    /// Makes `functions` (an AST's functions; its statements are not run) the plugin's script,
    /// and the constants of `scope` its top-level constants. The clock, metrics, shared data
    /// and log stay.
    pub fn set_script(&mut self, functions: AST, scope: &Scope) -> Result<(), String> {
        let constants = scope
            .iter_raw()
            .filter(|(_, constant, _)| *constant)
            .map(|(name, _, value)| (name.into(), value.clone()))
            .collect();
        let Some(plugin) = std::rc::Rc::get_mut(&mut self.plugin) else {
            return Err("the script can't change while a request runs".into());
        };
        plugin
            .set_script(functions, constants)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_pieces_are_told_apart() {
        let emulator = Emulator::without_script(r#"{"script": ""}"#, 0).unwrap();
        let unfinished = |source: &str| emulator.parse(source).err().map(|e| e.unfinished);
        assert_eq!(unfinished("1 + 1"), None);
        for open in [
            "fn f() {",
            "let a = [1,",
            "let s = \"ab",
            "if x {\n  1",
            "foo(1,",
            "let m = #{",
        ] {
            assert_eq!(unfinished(open), Some(true), "{open}");
        }
        for wrong in ["1 +* 2", "let = 3", "fn f() { } }", "null"] {
            assert_eq!(unfinished(wrong), Some(false), "{wrong}");
        }
    }
}
