//! The `"compiled"` engine: each script function compiled once, at configuration, into a tree
//! of Rust closures that Rhai runs in place of walking the function's AST (vendor patch 19,
//! `ScriptFuncDef::compiled`).
//!
//! A compiled node does exactly what Rhai's evaluator does for it: the same operations counted
//! at the same positions, the same calls through the engine (`exec_fn_call`, with a call site
//! that remembers its native function), the same errors. A node the compiler does not handle
//! yet is handed to the evaluator as it is (`eval_stmt`, `eval_expr`), decided here once, never
//! per request, so a function runs partly compiled, partly evaluated, with the same meaning.
//! The locals stay in Rhai's `Scope`, where the evaluated nodes look for them.
//!
//! Because the body sits in the function's definition, every way Rhai calls the function runs
//! it: a phase call, a call from another function (compiled or evaluated), a closure called
//! back by a native function or by the plugin.
//!
//! A call of one of the script's own functions is resolved here too (`ScriptFn`): it enters
//! the function as `exec_fn_call` would (`Engine::call_script_fn_at_site`), past the
//! resolution.
//!
//! A call to one of the plugin's bindings ([`Bindings`]) is resolved here, once: the compiled
//! call checks its arguments' types and calls the function Rhai registered for the binding,
//! with what Rhai does around a native call (`Engine::call_native_by_value`), past Rhai's
//! resolution. Arguments of other types take Rhai's way, with its errors.

use std::any::TypeId;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::rc::{Rc, Weak};

use rhai::{
    ASTFlags, BinaryExpr, Caches, CallSite, Dynamic, Engine, EvalAltResult, Expr, FnArgsVec,
    FnCallExpr, FnPtr, GlobalRuntimeState, Module, OpAssignment, Position, RhaiFunc, Scope,
    ScriptFuncDef, ScriptFuncPayload, Stmt, Target, Token, AST,
};

type RhaiResult = Result<Dynamic, Box<EvalAltResult>>;

/// A compiled statement; the `bool` is the evaluator's `rewind_scope` for it.
type StmtFn = Box<
    dyn Fn(
        &Engine,
        &mut GlobalRuntimeState,
        &mut Caches,
        &mut Scope,
        Option<&mut Dynamic>,
        bool,
    ) -> RhaiResult,
>;
/// A compiled expression.
type ExprFn = Box<
    dyn Fn(
        &Engine,
        &mut GlobalRuntimeState,
        &mut Caches,
        &mut Scope,
        Option<&mut Dynamic>,
    ) -> RhaiResult,
>;

/// What the compiler made of a script: how many nodes it compiled, and which kinds it left
/// to Rhai's evaluator, with how often each occurs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Script functions (phases, helpers, closures) given a compiled body.
    pub functions: usize,
    /// Statements and expressions compiled.
    pub compiled: usize,
    /// Calls compiled to call a binding directly.
    pub direct_calls: usize,
    /// Statements and expressions run by the evaluator, by kind (`Stmt::Var`, `Expr::Dot`, …).
    pub evaluated: BTreeMap<String, usize>,
}

impl Coverage {
    fn evaluate(&mut self, kind: String) {
        *self.evaluated.entry(kind).or_default() += 1;
    }
}

/// One binding a compiled call may call directly.
pub struct Binding {
    /// The type Rhai matches each argument by; `None` for a `Dynamic` parameter (any value).
    params: Box<[Option<TypeId>]>,
    /// The function as Rhai registered it.
    func: RhaiFunc,
}

impl Binding {
    /// Whether Rhai would call this function with `args` (the types it was registered with).
    fn accepts(&self, args: &[Dynamic]) -> bool {
        self.params.len() == args.len()
            && self
                .params
                .iter()
                .zip(args)
                .all(|(param, arg)| param.is_none_or(|t| t == arg.type_id()))
    }
}

/// The plugin's bindings by name and number of parameters: those a compiled call can call
/// directly. Only a function that is the one Rhai knows by its name and arity is here: a name
/// registered twice with one arity (an overload by type) is marked, and calls to it go through
/// Rhai, which picks by type.
#[derive(Default)]
pub struct Bindings(HashMap<(&'static str, usize), Option<Rc<Binding>>>);

impl Bindings {
    /// Adds `func` (one `Engine::global_native_fn` gave), whose parameters Rhai matches by
    /// `params`.
    pub fn add(&mut self, name: &'static str, params: &[Option<TypeId>], func: RhaiFunc) {
        let binding = Binding {
            params: params.into(),
            func,
        };
        self.0
            .entry((name, binding.params.len()))
            .and_modify(|known| *known = None)
            .or_insert_with(|| Some(Rc::new(binding)));
    }

    /// Marks `name` with `arity` as registered another way too: Rhai chooses among them.
    pub fn add_overload(&mut self, name: &'static str, arity: usize) {
        self.0.insert((name, arity), None);
    }

    /// The name and arity of each direct binding, and whether one of its parameters takes
    /// any value (`Dynamic`).
    pub fn direct(&self) -> impl Iterator<Item = (&'static str, usize, bool)> + '_ {
        self.0.iter().filter_map(|((name, arity), binding)| {
            let takes_any = binding.as_ref()?.params.iter().any(Option::is_none);
            Some((*name, *arity, takes_any))
        })
    }
}

/// What compiling a script needs besides its AST: the coverage being counted, the engine's
/// options that change what a node does, and what a call resolves to.
struct Compiler<'a> {
    coverage: Coverage,
    /// `Engine::fast_operators`: operators on built-in types run their built-in versions.
    fast_operators: bool,
    bindings: &'a Bindings,
    /// The script's own functions, by name and arity: a call Rhai resolves to one of them.
    /// With the one a function call (not a method call) resolves to: not a method with a
    /// `this` type, which only a method call finds.
    script_fns: HashMap<(String, usize), Option<Rc<ScriptFuncDef>>>,
    /// The module that holds them.
    lib: Weak<Module>,
}

impl<'a> Compiler<'a> {
    fn new(engine: &Engine, ast: &AST, bindings: &'a Bindings) -> Self {
        let mut script_fns: HashMap<_, Option<Rc<ScriptFuncDef>>> = HashMap::new();
        for f in ast.iter_fn_def() {
            let called = script_fns
                .entry((f.name.to_string(), f.params.len()))
                .or_default();
            if f.this_type.is_none() {
                *called = Some(f.clone());
            }
        }
        Self {
            coverage: Coverage::default(),
            fast_operators: engine.fast_operators(),
            bindings,
            script_fns,
            lib: Rc::downgrade(ast.shared_lib()),
        }
    }

    /// The binding a call of `name` with `arity` arguments resolves to, when it is one.
    fn binding(&self, name: &str, arity: usize) -> Option<Rc<Binding>> {
        if self.script_fns.contains_key(&(name.to_string(), arity)) {
            return None;
        }
        let bindings: &HashMap<(&str, usize), Option<Rc<Binding>>> = &self.bindings.0;
        bindings.get(&(name, arity))?.clone()
    }

    /// The function of the script `call` resolves to, when Rhai's `exec_fn_call` would call
    /// it as it is: not a name it answers itself, a body that is not empty (Rhai returns `()`
    /// for one, without a call).
    fn script_fn(&self, call: &FnCallExpr) -> Option<ScriptFn> {
        let name = call.name.as_str();
        if call.hashes.is_native_only() || SYNTACTIC_CALLS.contains(&name) {
            return None;
        }
        let function = self.script_fns.get(&(name.to_string(), call.args.len()))?;
        let function = function.as_ref().filter(|f| {
            let ScriptFuncPayload::Statements(body) = &f.body;
            !body.is_empty()
        })?;
        Some(ScriptFn {
            lib: self.lib.clone(),
            function: Rc::downgrade(function),
            scope: Cell::default(),
        })
    }
}

/// Compiles every script function of `ast`, to run on `engine`, and installs the bodies where
/// Rhai calls them; calls to `bindings` call them directly.
///
/// `engine`'s variable resolver, if it has one, must decline every variable the parser gave a
/// scope offset (`index > 0`), as the plugin's and the test runner's do: compiled code reads
/// those from the scope without asking it.
pub fn install(engine: &Engine, ast: &AST, bindings: &Bindings) -> Coverage {
    let mut cx = Compiler::new(engine, ast, bindings);
    for function in ast.iter_fn_def() {
        let ScriptFuncPayload::Statements(body) = &function.body;
        let block = Rc::new(compile_block(body.statements(), &mut cx));
        let compiled: Rc<rhai::CompiledBody> =
            Rc::new(move |engine, global, caches, scope, this, restore| {
                run_block(&block, engine, global, caches, scope, this, restore)
            });
        // A function is compiled once: its AST is compiled once per configuration.
        if function.compiled.set(compiled) {
            cx.coverage.functions += 1;
        }
    }
    cx.coverage
}

/// What the compiler would make of `ast` for `engine`, without installing anything.
pub fn coverage(engine: &Engine, ast: &AST, bindings: &Bindings) -> Coverage {
    let mut cx = Compiler::new(engine, ast, bindings);
    for function in ast.iter_fn_def() {
        let ScriptFuncPayload::Statements(body) = &function.body;
        compile_block(body.statements(), &mut cx);
        cx.coverage.functions += 1;
    }
    cx.coverage
}

fn compile_block(statements: &[Stmt], cx: &mut Compiler) -> Vec<StmtFn> {
    statements.iter().map(|s| compile_stmt(s, cx)).collect()
}

/// Rhai's `eval_stmt_block`: the statements in order, the block's variables dropped after it
/// when `restore` (a nested block), as the evaluator does.
fn run_block(
    block: &[StmtFn],
    engine: &Engine,
    global: &mut GlobalRuntimeState,
    caches: &mut Caches,
    scope: &mut Scope,
    mut this: Option<&mut Dynamic>,
    restore: bool,
) -> RhaiResult {
    if block.is_empty() {
        return Ok(Dynamic::UNIT);
    }
    let scope_len = scope.len();
    let always_search_scope = global.always_search_scope;
    if restore {
        global.scope_level += 1;
    }
    if caches.fn_resolution_caches_len() == 0 {
        caches.push_fn_resolution_cache();
    }
    let caches_len = caches.fn_resolution_caches_len();
    let mut result = Ok(Dynamic::UNIT);
    for statement in block {
        result = statement(engine, global, caches, scope, this.as_deref_mut(), restore);
        if result.is_err() {
            break;
        }
    }
    caches.rewind_fn_resolution_caches(caches_len);
    if restore {
        global.scope_level -= 1;
        global.always_search_scope = always_search_scope;
        scope.rewind(scope_len);
    }
    result
}

fn compile_stmt(stmt: &Stmt, cx: &mut Compiler) -> StmtFn {
    // Each statement counts one operation first, reported at the statement.
    let at = stmt.position();
    match stmt {
        Stmt::Noop(..) => {
            cx.coverage.compiled += 1;
            Box::new(move |engine, global, _, _, _, _| {
                engine.track_operation(global, at)?;
                Ok(Dynamic::UNIT)
            })
        }
        Stmt::FnCall(call, pos) => match compile_call(call, *pos, cx) {
            Some(call) => {
                cx.coverage.compiled += 1;
                Box::new(move |engine, global, caches, scope, this, _| {
                    engine.track_operation(global, at)?;
                    call(engine, global, caches, scope, this)
                })
            }
            None => evaluated_stmt(stmt, cx),
        },
        Stmt::Expr(expr) => {
            cx.coverage.compiled += 1;
            let expr = compile_expr(expr, cx);
            Box::new(move |engine, global, caches, scope, this, _| {
                engine.track_operation(global, at)?;
                expr(engine, global, caches, scope, this).map(Dynamic::flatten)
            })
        }
        Stmt::Block(statements, ..) => {
            cx.coverage.compiled += 1;
            let block = compile_block(statements.statements(), cx);
            Box::new(move |engine, global, caches, scope, this, _| {
                engine.track_operation(global, at)?;
                run_block(&block, engine, global, caches, scope, this, true)
            })
        }
        Stmt::If(flow, ..) => {
            cx.coverage.compiled += 1;
            let guard_at = flow.expr.position();
            let guard = compile_expr(&flow.expr, cx);
            let body = compile_block(flow.body.statements(), cx);
            let branch = compile_block(flow.branch.statements(), cx);
            Box::new(move |engine, global, caches, scope, mut this, _| {
                engine.track_operation(global, at)?;
                let value = guard(engine, global, caches, scope, this.as_deref_mut())?
                    .as_bool()
                    .map_err(|typ| engine.make_type_mismatch_err::<bool>(typ, guard_at))?;
                let taken = if value { &body } else { &branch };
                run_block(taken, engine, global, caches, scope, this, true)
            })
        }
        // `return`; with `BREAK`, `throw`.
        Stmt::Return(value, flags, pos) => {
            cx.coverage.compiled += 1;
            let value = value.as_deref().map(|e| compile_expr(e, cx));
            let (is_throw, pos) = (flags.contains(ASTFlags::BREAK), *pos);
            Box::new(move |engine, global, caches, scope, this, _| {
                engine.track_operation(global, at)?;
                let value = match &value {
                    Some(value) => value(engine, global, caches, scope, this)?.flatten(),
                    None => Dynamic::UNIT,
                };
                Err(match is_throw {
                    true => EvalAltResult::ErrorRuntime(value, pos),
                    false => EvalAltResult::Return(value, pos),
                }
                .into())
            })
        }
        Stmt::Var(definition, options, pos) => {
            cx.coverage.compiled += 1;
            let (name, value, index) = &**definition;
            let (name, index, options, pos) = (name.clone(), *index, *options, *pos);
            let value = compile_expr(value, cx);
            Box::new(move |engine, global, caches, scope, this, restore| {
                engine.track_operation(global, at)?;
                let definition = (&name, index, options, pos);
                engine.eval_var_def(
                    global,
                    caches,
                    scope,
                    this,
                    definition,
                    restore,
                    |e, g, c, s, t| value(e, g, c, s, t),
                )
            })
        }
        // `x = value`, `x += value`, …: to a variable (an index or a property: evaluated).
        Stmt::Assignment(assignment) if matches!(assignment.1.lhs, Expr::Variable(..)) => {
            cx.coverage.compiled += 1;
            let (op, BinaryExpr { lhs, rhs }) = &**assignment;
            let (op, lhs) = (op.clone(), lhs.clone());
            let rhs = compile_expr(rhs, cx);
            Box::new(move |engine, global, caches, scope, mut this, _| {
                engine.track_operation(global, at)?;
                let value = rhs(engine, global, caches, scope, this.as_deref_mut())?.flatten();
                engine.assign_to_variable(global, caches, scope, this, &op, &lhs, value)?;
                Ok(Dynamic::UNIT)
            })
        }
        // `x.p = value`, `x[i] += value`, …: the chain as Rhai walks it, with the new value.
        Stmt::Assignment(assignment) => {
            let (op, BinaryExpr { lhs, rhs }) = &**assignment;
            let Some(chain) = compile_chain(lhs, cx).filter(|c| c.is_place()) else {
                return evaluated_stmt(stmt, cx);
            };
            cx.coverage.compiled += 1;
            let op = op.clone();
            let rhs = compile_expr(rhs, cx);
            Box::new(move |engine, global, caches, scope, mut this, _| {
                engine.track_operation(global, at)?;
                let value = rhs(engine, global, caches, scope, this.as_deref_mut())?.flatten();
                let value = engine.intern_string(value);
                let new_value = Some((value, &op));
                // An assignment's value is `()`.
                chain
                    .run(engine, global, caches, scope, this, new_value)
                    .map(|_| Dynamic::UNIT)
            })
        }
        Stmt::While(flow, _) => {
            cx.coverage.compiled += 1;
            let forever = matches!(flow.expr, Expr::Unit(..) | Expr::BoolConstant(true, ..));
            let guard_at = flow.expr.position();
            let guard = (!forever).then(|| compile_expr(&flow.expr, cx));
            let body_at = flow.body.position();
            let body = compile_block(flow.body.statements(), cx);
            Box::new(move |engine, global, caches, scope, mut this, _| {
                engine.track_operation(global, at)?;
                loop {
                    if let Some(guard) = &guard {
                        let go_on = guard(engine, global, caches, scope, this.as_deref_mut())?
                            .as_bool()
                            .map_err(|typ| engine.make_type_mismatch_err::<bool>(typ, guard_at))?;
                        if !go_on {
                            return Ok(Dynamic::UNIT);
                        }
                    }
                    if body.is_empty() {
                        // `loop {}` counts an operation a round; `while c {}` only its guard's.
                        if guard.is_none() {
                            engine.track_operation(global, body_at)?;
                        }
                        continue;
                    }
                    let this = this.as_deref_mut();
                    match run_block(&body, engine, global, caches, scope, this, true) {
                        Ok(_) => (),
                        Err(err) => match *err {
                            EvalAltResult::LoopBreak(false, ..) => (),
                            EvalAltResult::LoopBreak(true, value, ..) => return Ok(value),
                            _ => return Err(err),
                        },
                    }
                }
            })
        }
        Stmt::For(for_loop, _) => {
            cx.coverage.compiled += 1;
            let (name, counter, flow) = &**for_loop;
            let (name, counter) = (name.clone(), counter.clone());
            let positions = (
                flow.expr.start_position(),
                flow.expr.position(),
                flow.body.is_empty(),
                flow.body.position(),
            );
            let iterable = compile_expr(&flow.expr, cx);
            let body = compile_block(flow.body.statements(), cx);
            Box::new(move |engine, global, caches, scope, this, _| {
                engine.track_operation(global, at)?;
                let names = (&name, counter.as_ref());
                engine.eval_for(
                    global,
                    caches,
                    scope,
                    this,
                    names,
                    positions,
                    &*iterable,
                    |e, g, c, s, t| run_block(&body, e, g, c, s, t, true),
                )
            })
        }
        // `do { … } while c`, `do { … } until c`
        Stmt::Do(flow, options, _) => {
            cx.coverage.compiled += 1;
            let is_while = !options.contains(ASTFlags::NEGATED);
            let guard_at = flow.expr.position();
            let guard = compile_expr(&flow.expr, cx);
            let body = compile_block(flow.body.statements(), cx);
            Box::new(move |engine, global, caches, scope, mut this, _| {
                engine.track_operation(global, at)?;
                loop {
                    if !body.is_empty() {
                        let this = this.as_deref_mut();
                        match run_block(&body, engine, global, caches, scope, this, true) {
                            Ok(_) => (),
                            Err(err) => match *err {
                                // As Rhai: `continue` skips the condition.
                                EvalAltResult::LoopBreak(false, ..) => continue,
                                EvalAltResult::LoopBreak(true, value, ..) => return Ok(value),
                                _ => return Err(err),
                            },
                        }
                    }
                    let condition = guard(engine, global, caches, scope, this.as_deref_mut())?
                        .as_bool()
                        .map_err(|typ| engine.make_type_mismatch_err::<bool>(typ, guard_at))?;
                    if condition ^ is_while {
                        return Ok(Dynamic::UNIT);
                    }
                }
            })
        }
        Stmt::Switch(switch, _) => {
            cx.coverage.compiled += 1;
            let (value, cases) = &**switch;
            let value = compile_expr(value, cx);
            // Each case's condition (none when it is a constant) and value.
            let compiled: Vec<(Option<ExprFn>, ExprFn)> = cases
                .expressions
                .iter()
                .map(|case| {
                    let condition = match case.lhs {
                        Expr::BoolConstant(..) => None,
                        ref condition => Some(compile_expr(condition, cx)),
                    };
                    (condition, compile_expr(&case.rhs, cx))
                })
                .collect();
            // What Rhai reads of the cases: their structure, constant conditions, positions.
            let mut cases = cases.clone();
            for case in &mut cases.expressions {
                if !matches!(case.lhs, Expr::BoolConstant(..)) {
                    case.lhs = Expr::Unit(case.lhs.position());
                }
                case.rhs = Expr::Unit(case.rhs.position());
            }
            Box::new(move |engine, global, caches, scope, this, _| {
                engine.track_operation(global, at)?;
                engine.eval_switch(
                    global,
                    caches,
                    scope,
                    this,
                    &cases,
                    &*value,
                    |e, g, c, s, t, index, condition| match (compiled.get(index), condition) {
                        (Some((Some(condition), _)), true) => condition(e, g, c, s, t),
                        (Some((_, value)), false) => value(e, g, c, s, t),
                        // Rhai asks only for these.
                        _ => Ok(Dynamic::UNIT),
                    },
                )
            })
        }
        Stmt::TryCatch(flow, _) => {
            cx.coverage.compiled += 1;
            // `()` when the error is not named.
            let catch_var = flow.expr.clone();
            let body = compile_block(flow.body.statements(), cx);
            let catch = compile_block(flow.branch.statements(), cx);
            Box::new(move |engine, global, caches, scope, this, _| {
                engine.track_operation(global, at)?;
                engine.eval_try_catch(
                    global,
                    caches,
                    scope,
                    this,
                    &catch_var,
                    |e, g, c, s, t| run_block(&body, e, g, c, s, t, true),
                    |e, g, c, s, t| run_block(&catch, e, g, c, s, t, true),
                )
            })
        }
        // The variables closures capture, made shared.
        Stmt::Share(variables) => {
            cx.coverage.compiled += 1;
            let variables = variables.clone();
            Box::new(move |engine, global, caches, scope, this, _| {
                engine.track_operation(global, at)?;
                engine.share_variables(global, caches, scope, this, &variables)
            })
        }
        // `break`, `continue`
        Stmt::BreakLoop(value, options, pos) => {
            cx.coverage.compiled += 1;
            let is_break = options.contains(ASTFlags::BREAK);
            let value = value.as_deref().map(|e| compile_expr(e, cx));
            let pos = *pos;
            Box::new(move |engine, global, caches, scope, this, _| {
                engine.track_operation(global, at)?;
                let value = match &value {
                    Some(value) => value(engine, global, caches, scope, this)?,
                    None => Dynamic::UNIT,
                };
                Err(EvalAltResult::LoopBreak(is_break, value, pos).into())
            })
        }
        _ => evaluated_stmt(stmt, cx),
    }
}

/// A statement left to the evaluator.
fn evaluated_stmt(stmt: &Stmt, cx: &mut Compiler) -> StmtFn {
    cx.coverage.evaluate(format!("Stmt::{}", variant(stmt)));
    let stmt = stmt.clone();
    Box::new(move |engine, global, caches, scope, this, restore| {
        engine.eval_stmt(global, caches, scope, this, &stmt, restore)
    })
}

/// An expression left to the evaluator.
fn evaluated_expr(expr: &Expr, cx: &mut Compiler) -> ExprFn {
    cx.coverage.evaluate(match expr {
        Expr::FnCall(call, _) if call.op_token.is_some() => "Expr::FnCall (operator)".into(),
        Expr::FnCall(..) => "Expr::FnCall".into(),
        _ => format!("Expr::{}", variant(expr)),
    });
    let expr = expr.clone();
    Box::new(move |engine, global, caches, scope, this| {
        engine.eval_expr(global, caches, scope, this, &expr)
    })
}

/// The name of the variant a value's `Debug` text begins with; the formatting stops there
/// (a node's text would show its whole subtree).
fn variant(value: &impl std::fmt::Debug) -> String {
    struct FirstWord(String);
    impl std::fmt::Write for FirstWord {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = s
                .find(|c: char| !c.is_alphanumeric() && c != '_')
                .unwrap_or(s.len());
            self.0.push_str(&s[..end]);
            if end < s.len() {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut word = FirstWord(String::new());
    // Stopped on purpose after the first word.
    let _ = std::fmt::write(&mut word, format_args!("{value:?}"));
    word.0
}

/// Each of `exprs` compiled, with its position.
fn compile_each(exprs: &[Expr], cx: &mut Compiler) -> Vec<(ExprFn, Position)> {
    exprs
        .iter()
        .map(|e| (compile_expr(e, cx), e.position()))
        .collect()
}

/// Rhai's `eval_expr`: one operation reported at the expression, then its value.
fn compile_expr(expr: &Expr, cx: &mut Compiler) -> ExprFn {
    let at = expr.position();
    let simple_constant = matches!(
        expr,
        Expr::DynamicConstant(..)
            | Expr::IntegerConstant(..)
            | Expr::CharConstant(..)
            | Expr::StringConstant(..)
            | Expr::BoolConstant(..)
            | Expr::Unit(..)
            | Expr::FloatConstant(..)
    );
    if simple_constant {
        if let Some(value) = expr.get_literal_value(None) {
            cx.coverage.compiled += 1;
            return Box::new(move |engine, global, _, _, _| {
                engine.track_operation(global, at)?;
                Ok(value.clone())
            });
        }
    }
    if let Expr::And(operands, _) | Expr::Or(operands, _) = expr {
        cx.coverage.compiled += 1;
        // `&&` stops at the first `false`, `||` at the first `true`: that is its value.
        let stop_at = matches!(expr, Expr::Or(..));
        let operands = compile_each(operands, cx);
        return Box::new(move |engine, global, caches, scope, mut this| {
            engine.track_operation(global, at)?;
            for (operand, pos) in &operands {
                let value = operand(engine, global, caches, scope, this.as_deref_mut())?
                    .as_bool()
                    .map_err(|typ| engine.make_type_mismatch_err::<bool>(typ, *pos))?;
                if value == stop_at {
                    return Ok(stop_at.into());
                }
            }
            Ok((!stop_at).into())
        });
    }
    match expr {
        Expr::Variable(..) => {
            cx.coverage.compiled += 1;
            let variable = expr.clone();
            let local = local_offset(expr);
            return Box::new(move |engine, global, caches, scope, this| {
                engine.track_operation(global, at)?;
                // A local's value, cloned at once; a shared one is locked on the way.
                if local > 0 && !global.always_search_scope {
                    match scope.local_from_end_mut(local) {
                        Some(value) if !value.is_shared() => return Ok(value.clone()),
                        _ => {}
                    }
                }
                find_variable(engine, global, caches, scope, this, &variable)
                    .map(Target::take_or_clone)
            });
        }
        Expr::ThisPtr(pos) => {
            cx.coverage.compiled += 1;
            let pos = *pos;
            return Box::new(move |engine, global, _, _, this| {
                engine.track_operation(global, at)?;
                this.ok_or_else(|| EvalAltResult::ErrorUnboundThis(pos).into())
                    .cloned()
            });
        }
        // `a ?? b ?? c`: the first value that is not `()`.
        Expr::Coalesce(operands, _) => {
            cx.coverage.compiled += 1;
            let operands: Vec<ExprFn> = operands.iter().map(|e| compile_expr(e, cx)).collect();
            return Box::new(move |engine, global, caches, scope, mut this| {
                engine.track_operation(global, at)?;
                let mut value = Dynamic::UNIT;
                for operand in &operands {
                    value = operand(engine, global, caches, scope, this.as_deref_mut())?;
                    if !value.is_unit() {
                        break;
                    }
                }
                Ok(value)
            });
        }
        // `` `text ${value} text` ``
        Expr::InterpolatedString(pieces, _) => {
            cx.coverage.compiled += 1;
            let pieces = compile_each(pieces, cx);
            return Box::new(move |engine, global, caches, scope, this| {
                engine.track_operation(global, at)?;
                engine.eval_interpolated_string(
                    global,
                    caches,
                    scope,
                    this,
                    &pieces,
                    |e, g, c, s, t, (piece, _)| piece(e, g, c, s, t),
                    |(_, pos)| *pos,
                )
            });
        }
        Expr::Array(items, _) => {
            cx.coverage.compiled += 1;
            let items = compile_each(items, cx);
            return Box::new(move |engine, global, caches, scope, this| {
                engine.track_operation(global, at)?;
                engine.eval_array(
                    global,
                    caches,
                    scope,
                    this,
                    &items,
                    |e, g, c, s, t, (item, _)| item(e, g, c, s, t),
                    |(_, pos)| *pos,
                )
            });
        }
        Expr::Map(map, _) => {
            cx.coverage.compiled += 1;
            let (entries, template) = &**map;
            let template = template.clone();
            let entries: Vec<(rhai::ImmutableString, ExprFn, Position)> = entries
                .iter()
                .map(|(key, e)| (key.name.clone(), compile_expr(e, cx), e.position()))
                .collect();
            return Box::new(move |engine, global, caches, scope, this| {
                engine.track_operation(global, at)?;
                engine.eval_map(
                    global,
                    caches,
                    scope,
                    this,
                    &template,
                    &entries,
                    |(key, ..)| key.as_str(),
                    |e, g, c, s, t, (_, value, _)| value(e, g, c, s, t),
                    |(.., pos)| *pos,
                )
            });
        }
        // A block as an expression, `{ …; value }`.
        Expr::Stmt(block) => {
            cx.coverage.compiled += 1;
            let block = compile_block(block.statements(), cx);
            return Box::new(move |engine, global, caches, scope, this| {
                engine.track_operation(global, at)?;
                run_block(&block, engine, global, caches, scope, this, true)
            });
        }
        Expr::Dot(chain, options, _) => {
            if let Some(call) = compile_method_call(chain, *options, cx) {
                cx.coverage.compiled += 1;
                return Box::new(move |engine, global, caches, scope, this| {
                    engine.track_operation(global, at)?;
                    call(engine, global, caches, scope, this)
                });
            }
        }
        _ => (),
    }
    if let Some(chain) = compile_chain(expr, cx) {
        cx.coverage.compiled += 1;
        return Box::new(move |engine, global, caches, scope, this| {
            engine.track_operation(global, at)?;
            chain.run(engine, global, caches, scope, this, None)
        });
    }
    if let Expr::FnCall(call, pos) = expr {
        if let Some(call) = compile_call(call, *pos, cx) {
            cx.coverage.compiled += 1;
            return Box::new(move |engine, global, caches, scope, this| {
                engine.track_operation(global, at)?;
                call(engine, global, caches, scope, this)
            });
        }
    }
    evaluated_expr(expr, cx)
}

/// Names `make_function_call` treats apart from other calls.
const SPECIAL_CALLS: [&str; 6] = ["call", "Fn", "curry", "is_shared", "is_def_var", "eval"];

/// Names `exec_fn_call` answers itself (`exec_syntactic_fn_call`) before any script function.
const SYNTACTIC_CALLS: [&str; 8] = [
    "type_of",
    "is_shared",
    "is_def_fn",
    "is_def_var",
    "Fn",
    "eval",
    "call",
    "curry",
];

/// Rhai's `eval_fn_call_expr` for a call with up to six arguments: an operator (under fast
/// operators), a call whose first argument is a variable (which Rhai may pass by reference), or
/// a plain call: the arguments as `get_arg_value` evaluates them, then `exec_fn_call` with a call
/// site of its own (Rhai's `call_with_values` up to three arguments, its general case past them:
/// the same steps). `None` for the calls Rhai treats apart (`call`, `Fn`, `curry`, …, capturing
/// calls).
fn compile_call(call: &FnCallExpr, pos: Position, cx: &mut Compiler) -> Option<ExprFn> {
    if call.capture_parent_scope || call.args.len() > 6 {
        return None;
    }
    if let Some(op) = &call.op_token {
        return compile_operator(call, op, pos, cx);
    }
    if call.name == "curry" && call.args.len() > 1 {
        return Some(compile_curry(call, pos, cx));
    }
    if SPECIAL_CALLS.contains(&call.name.as_str()) {
        return None;
    }
    let target = Callee {
        name: call.name.clone(),
        hashes: call.hashes,
        site: CallSite::default(),
        pos,
        script: cx.script_fn(call),
    };
    match call.args.split_first() {
        Some((variable @ (Expr::Variable(..) | Expr::ThisPtr(..)), rest)) => {
            let rest: Vec<ExprFn> = rest.iter().map(|a| compile_arg(a, cx)).collect();
            let first = variable.clone();
            Some(call_on_variable_with(target, first, rest))
        }
        _ => {
            let args: Vec<ExprFn> = call.args.iter().map(|a| compile_arg(a, cx)).collect();
            let binding = cx.binding(&call.name, args.len());
            if binding.is_some() {
                cx.coverage.direct_calls += 1;
            }
            match args.len() {
                0 => call_with::<0>(target, binding, args),
                1 => call_with::<1>(target, binding, args),
                2 => call_with::<2>(target, binding, args),
                3 => call_with::<3>(target, binding, args),
                4 => call_with::<4>(target, binding, args),
                5 => call_with::<5>(target, binding, args),
                _ => call_with::<6>(target, binding, args),
            }
        }
    }
}

/// `curry(f, values…)`, as `make_function_call` makes it (a closure that captures variables
/// is made this way): the function pointer, then the values, as they are (a captured
/// variable's shared cell), then the size check of the result.
fn compile_curry(call: &FnCallExpr, pos: Position, cx: &mut Compiler) -> ExprFn {
    let function_at = call.args.first().map_or(pos, Expr::start_position);
    let mut args = call.args.iter().map(|a| compile_arg(a, cx));
    let function = args.next();
    let values: Vec<ExprFn> = args.collect();
    Box::new(move |engine, global, caches, scope, mut this| {
        let Some(function) = &function else {
            return Ok(Dynamic::UNIT);
        };
        let mut pointer = function(engine, global, caches, scope, this.as_deref_mut())?
            .try_cast_result::<FnPtr>()
            .map_err(|v| {
                engine.make_type_mismatch_err::<FnPtr>(
                    engine.map_type_name(v.type_name()),
                    function_at,
                )
            })?;
        for value in &values {
            pointer.add_curry(value(engine, global, caches, scope, this.as_deref_mut())?);
        }
        engine.check_data_size(Dynamic::from(pointer), pos)
    })
}

/// An operator under fast operators (`eval_fn_call_expr`'s short cuts): its operands as
/// `get_arg_value` evaluates them, then the built-in version for built-in types, else the
/// function (`Engine::call_unary_operator`, `call_binary_operator`).
fn compile_operator(
    call: &FnCallExpr,
    op: &Token,
    pos: Position,
    cx: &mut Compiler,
) -> Option<ExprFn> {
    if !cx.fast_operators {
        return None;
    }
    let (name, op, hashes, site) = (
        call.name.clone(),
        op.clone(),
        call.hashes,
        CallSite::default(),
    );
    match &call.args[..] {
        [operand] => {
            let operand = compile_arg(operand, cx);
            Some(Box::new(move |engine, global, caches, scope, this| {
                let value = operand(engine, global, caches, scope, this)?.flatten();
                engine.call_unary_operator(global, caches, &name, &op, hashes, value, &site, pos)
            }))
        }
        [lhs, rhs] => {
            let (lhs, rhs) = (compile_arg(lhs, cx), compile_arg(rhs, cx));
            Some(Box::new(move |engine, global, caches, scope, mut this| {
                let lhs = lhs(engine, global, caches, scope, this.as_deref_mut())?.flatten();
                let rhs = rhs(engine, global, caches, scope, this)?.flatten();
                engine
                    .call_binary_operator(global, caches, &name, &op, hashes, lhs, rhs, &site, pos)
            }))
        }
        _ => None,
    }
}

/// Rhai's `make_function_call` for `f(x, …)`, `x` a variable or `this`: one operation at `x`,
/// the other arguments, then `x` itself, passed by reference unless it is a constant or shared
/// (then its value is). A shared or unbound `this` is an argument as any other, evaluated
/// first.
fn call_on_variable_with(callee: Callee, variable: Expr, rest: Vec<ExprFn>) -> ExprFn {
    let variable_at = variable.position();
    Box::new(move |engine, global, caches, scope, mut this| {
        engine.track_operation(global, variable_at)?;
        let mut values = [const { Dynamic::UNIT }; MAX_VALUES];
        let count = rest.len() + 1;
        if let Expr::ThisPtr(_) = variable {
            let plain_this = this.as_deref().is_some_and(|this| !this.is_shared());
            if !plain_this {
                let value = this
                    .as_deref()
                    .ok_or_else(|| EvalAltResult::ErrorUnboundThis(variable_at))?
                    .clone()
                    .flatten();
                if let Some(first) = values.first_mut() {
                    *first = value;
                }
            }
            for (value, arg) in values.iter_mut().skip(1).zip(&rest) {
                *value = arg(engine, global, caches, scope, this.as_deref_mut())?.flatten();
            }
            let mut refs = values.each_mut();
            let args = refs.get_mut(..count).unwrap_or_default();
            if let (Some(first), Some(this), true) = (args.first_mut(), this, plain_this) {
                *first = this;
            }
            return callee.call_with_first(engine, global, caches, args, plain_this);
        }
        for (value, arg) in values.iter_mut().skip(1).zip(&rest) {
            *value = arg(engine, global, caches, scope, this.as_deref_mut())?.flatten();
        }
        let mut target = find_variable(engine, global, caches, scope, this, &variable)?;
        if target.as_ref().is_read_only() {
            target = target.into_owned();
        }
        let mut refs = values.each_mut();
        let args = refs.get_mut(..count).unwrap_or_default();
        let by_reference = match target {
            Target::RefMut(value) if !value.is_shared() => {
                if let Some(first) = args.first_mut() {
                    *first = value;
                }
                true
            }
            target => {
                if let Some(first) = args.first_mut() {
                    **first = target.take_or_clone().flatten();
                }
                false
            }
        };
        callee.call_with_first(engine, global, caches, args, by_reference)
    })
}

/// The most values a compiled call passes: six arguments and a method's object.
const MAX_VALUES: usize = 7;

/// What a method call is called on.
enum Object {
    /// A variable or `this`, which the method gets by reference.
    Place(Expr),
    /// Any other expression's value.
    Value(ExprFn),
}

/// A method call `object.f(args)` (or `object?.f(args)`).
struct MethodCall {
    callee: Callee,
    object: Object,
    /// Where the arguments are counted as one operation (the call's position).
    args_at: Position,
    first_arg_at: Position,
    /// `?.`: `()` for an object that is `()`.
    elvis: bool,
    /// Not one of the methods `make_method_call` treats apart (`call`, `curry`, `is_shared`).
    plain: bool,
    /// How many values the call passes: the object and its arguments.
    values: usize,
}

impl MethodCall {
    /// Rhai's `eval_dot_index_chain` once the arguments are evaluated (`values` past the
    /// first, which is the object's place): the object, then `make_method_call`.
    fn call(
        &self,
        engine: &Engine,
        global: &mut GlobalRuntimeState,
        caches: &mut Caches,
        scope: &mut Scope,
        this: Option<&mut Dynamic>,
        values: &mut [Dynamic; MAX_VALUES],
    ) -> RhaiResult {
        match &self.object {
            Object::Value(object) => {
                let value = object(engine, global, caches, scope, this)?.flatten();
                self.call_on(engine, global, caches, &mut value.into(), values)
            }
            Object::Place(Expr::ThisPtr(pos)) => {
                engine.track_operation(global, *pos)?;
                let this = this.ok_or_else(|| EvalAltResult::ErrorUnboundThis(*pos))?;
                let target = &mut Target::try_from(this)?;
                self.call_on(engine, global, caches, target, values)
            }
            Object::Place(variable) => {
                engine.track_operation(global, variable.position())?;
                let target = &mut find_variable(engine, global, caches, scope, this, variable)?;
                self.call_on(engine, global, caches, target, values)
            }
        }
    }

    fn call_on(
        &self,
        engine: &Engine,
        global: &mut GlobalRuntimeState,
        caches: &mut Caches,
        target: &mut Target,
        values: &mut [Dynamic; MAX_VALUES],
    ) -> RhaiResult {
        let count = self.values;
        if self.elvis && target.as_ref().is_unit() {
            return Ok(Dynamic::UNIT);
        }
        let Callee {
            name,
            hashes,
            site,
            pos,
            ..
        } = &self.callee;
        // What `make_method_call` does for any other method of any other value than a map
        // (which may hold a function of that name): the call with the object first, at once
        // when the site remembers the function.
        if self.plain && !target.as_ref().is_map() {
            let by_reference = target.is_ref();
            let mut refs = values.each_mut();
            let args = refs.get_mut(..count).unwrap_or_default();
            if let Some(first) = args.first_mut() {
                *first = target.as_mut();
            }
            let called =
                engine.call_method_at_site(global, caches, name, args, by_reference, site, *pos);
            if let Some(result) = called {
                return result;
            }
        }
        let args = values.get_mut(1..count).unwrap_or_default();
        engine
            .make_method_call(
                global,
                caches,
                name,
                *hashes,
                target,
                args,
                self.first_arg_at,
                Some(site),
                *pos,
            )
            .map(|(value, _)| value)
    }
}

/// Rhai's `eval_dot_index_chain_arguments`: the values a chain's method calls and indexes
/// need, evaluated before its object, one operation at each level of the chain.
type ChainArgsFn = Box<
    dyn Fn(
        &Engine,
        &mut GlobalRuntimeState,
        &mut Caches,
        &mut Scope,
        Option<&mut Dynamic>,
        &mut FnArgsVec<Dynamic>,
    ) -> Result<(), Box<EvalAltResult>>,
>;

/// What a level of a chain needs evaluated before the levels after it.
enum ChainLevel {
    /// A property: nothing.
    Property,
    /// A method call's arguments.
    Arguments(Vec<ExprFn>),
    /// An index.
    Index(ExprFn),
}

impl ChainLevel {
    fn of(expr: &Expr, dotting: bool, cx: &mut Compiler) -> Option<Self> {
        Some(match (expr, dotting) {
            (Expr::Property(..), true) => Self::Property,
            (Expr::MethodCall(call, _), true) => {
                Self::Arguments(call.args.iter().map(|a| compile_arg(a, cx)).collect())
            }
            (index, false) => Self::Index(compile_expr(index, cx)),
            _ => return None,
        })
    }

    fn push(
        &self,
        engine: &Engine,
        global: &mut GlobalRuntimeState,
        caches: &mut Caches,
        scope: &mut Scope,
        mut this: Option<&mut Dynamic>,
        values: &mut FnArgsVec<Dynamic>,
    ) -> Result<(), Box<EvalAltResult>> {
        match self {
            Self::Property => (),
            Self::Arguments(args) => {
                for arg in args {
                    values.push(arg(engine, global, caches, scope, this.as_deref_mut())?.flatten());
                }
            }
            Self::Index(index) => {
                values.push(index(engine, global, caches, scope, this)?.flatten())
            }
        }
        Ok(())
    }
}

/// `expr` (the `rhs` of `parent`) as `eval_dot_index_chain_arguments` evaluates it; `None`
/// for a shape it would not accept.
fn compile_chain_args(parent: &Expr, expr: &Expr, cx: &mut Compiler) -> Option<ChainArgsFn> {
    let at = expr.position();
    let dotting = matches!(parent, Expr::Dot(..));
    match expr {
        Expr::Index(x, ..) | Expr::Dot(x, ..) if !parent.options().intersects(ASTFlags::BREAK) => {
            let level = ChainLevel::of(&x.lhs, dotting, cx)?;
            let rest = compile_chain_args(expr, &x.rhs, cx)?;
            Some(Box::new(
                move |engine, global, caches, scope, mut this, values| {
                    engine.track_operation(global, at)?;
                    // This level's values go after the next levels': the chain takes them from
                    // the end.
                    let mut own = FnArgsVec::new();
                    level.push(engine, global, caches, scope, this.as_deref_mut(), &mut own)?;
                    rest(engine, global, caches, scope, this, values)?;
                    values.extend(own);
                    Ok(())
                },
            ))
        }
        Expr::Index(..) | Expr::Dot(..) if dotting => None,
        _ => {
            let level = ChainLevel::of(expr, dotting, cx)?;
            Some(Box::new(
                move |engine, global, caches, scope, this, values| {
                    engine.track_operation(global, at)?;
                    level.push(engine, global, caches, scope, this, values)
                },
            ))
        }
    }
}

/// What `eval_dot_index_chain` evaluates before the chain's object.
enum ChainArgs {
    /// Nothing (`x.prop`, `x.f()`).
    None,
    /// A literal index (`x[1]`), no operation.
    Literal(Dynamic),
    Evaluated(ChainArgsFn),
}

/// A dot or index chain (`x.a.b`, `f()[1].c`, `this.m(1).p`): its arguments and its object
/// compiled, the walk through it Rhai's (`eval_dot_index_chain_raw`).
struct Chain {
    /// The chain itself, which the walk reads.
    expr: Expr,
    args: ChainArgs,
    object: Object,
}

impl Chain {
    /// Whether the chain's object is a variable or `this`, which can be assigned through it.
    fn is_place(&self) -> bool {
        matches!(self.object, Object::Place(..))
    }

    /// Rhai's `eval_dot_index_chain`, with the new value when the chain is assigned to.
    fn run(
        &self,
        engine: &Engine,
        global: &mut GlobalRuntimeState,
        caches: &mut Caches,
        scope: &mut Scope,
        mut this: Option<&mut Dynamic>,
        new_value: Option<(Dynamic, &OpAssignment)>,
    ) -> RhaiResult {
        let (Expr::Dot(chain, ..) | Expr::Index(chain, ..)) = &self.expr else {
            return Ok(Dynamic::UNIT);
        };
        let BinaryExpr { lhs, rhs } = &**chain;
        let values = &mut FnArgsVec::new();
        match &self.args {
            ChainArgs::None => (),
            ChainArgs::Literal(value) => values.push(value.clone()),
            ChainArgs::Evaluated(args) => {
                args(engine, global, caches, scope, this.as_deref_mut(), values)?
            }
        }
        let expr = &self.expr;
        match &self.object {
            Object::Place(Expr::ThisPtr(pos)) => {
                engine.track_operation(global, *pos)?;
                let this = this.ok_or_else(|| EvalAltResult::ErrorUnboundThis(*pos))?;
                let target = &mut Target::try_from(this)?;
                let scope = Some(scope);
                engine.eval_dot_index_chain_raw(
                    global, caches, scope, None, lhs, expr, target, rhs, values, new_value,
                )
            }
            Object::Place(variable) => {
                engine.track_operation(global, variable.position())?;
                let target = &mut find_variable(engine, global, caches, scope, this, variable)?;
                engine.eval_dot_index_chain_raw(
                    global, caches, None, None, lhs, expr, target, rhs, values, new_value,
                )
            }
            // Never assigned to (`is_place`).
            Object::Value(object) => {
                let value = object(engine, global, caches, scope, this.as_deref_mut())?.flatten();
                let target = &mut value.into();
                let scope = Some(scope);
                engine.eval_dot_index_chain_raw(
                    global, caches, scope, this, lhs, expr, target, rhs, values, None,
                )
            }
        }
        .map(|(value, _)| value)
    }
}

/// The offset from the scope's end the parser gave a local variable; 0: found by name.
fn local_offset(variable: &Expr) -> usize {
    // (No namespaces: the plugin's engine is built without modules.)
    match variable {
        Expr::Variable(_, Some(offset), _) => usize::from(offset.get()),
        Expr::Variable(v, None, _) => v.0.map_or(0, NonZeroUsize::get),
        _ => 0,
    }
}

/// A variable, as Rhai's `search_namespace` finds it. A local the parser gave an offset from
/// the scope's end is taken at that offset, past the variable resolver, which declines locals
/// (see [`install`]), and the rest of Rhai's search.
fn find_variable<'s>(
    engine: &Engine,
    global: &mut GlobalRuntimeState,
    caches: &mut Caches,
    scope: &'s mut Scope,
    this: Option<&'s mut Dynamic>,
    variable: &Expr,
) -> Result<Target<'s>, Box<EvalAltResult>> {
    let local = local_offset(variable);
    if local == 0 || local > scope.len() || global.always_search_scope {
        return engine.search_namespace(global, caches, scope, this, variable);
    }
    match scope.local_from_end_mut(local) {
        Some(value) => Target::try_from(value),
        // (Not reached: the scope is longer than `local`.)
        None => Err(EvalAltResult::ErrorVariableNotFound(
            format!("{variable:?}"),
            variable.position(),
        )
        .into()),
    }
}

/// A dot or index chain, `None` for any other expression.
fn compile_chain(expr: &Expr, cx: &mut Compiler) -> Option<Chain> {
    let (Expr::Dot(chain, ..) | Expr::Index(chain, ..)) = expr else {
        return None;
    };
    let BinaryExpr { lhs, rhs } = &**chain;
    let dotting = matches!(expr, Expr::Dot(..));
    let args = match rhs {
        Expr::Property(..) if dotting => ChainArgs::None,
        Expr::MethodCall(call, _) if dotting && call.args.is_empty() => ChainArgs::None,
        literal if !dotting && literal.get_literal_value(None).is_some() => {
            ChainArgs::Literal(literal.get_literal_value(None)?)
        }
        _ => ChainArgs::Evaluated(compile_chain_args(expr, rhs, cx)?),
    };
    let object = match lhs {
        place @ (Expr::Variable(..) | Expr::ThisPtr(..)) => Object::Place(place.clone()),
        value => Object::Value(compile_expr(value, cx)),
    };
    Some(Chain {
        expr: expr.clone(),
        args,
        object,
    })
}

/// `lhs.f(args)` with up to six arguments (a dot chain of one method call): `None` for
/// anything else (properties, indexing, longer chains).
fn compile_method_call(chain: &BinaryExpr, options: ASTFlags, cx: &mut Compiler) -> Option<ExprFn> {
    let Expr::MethodCall(call, pos) = &chain.rhs else {
        return None;
    };
    if call.args.len() > 6 {
        return None;
    }
    let args: Vec<ExprFn> = call.args.iter().map(|a| compile_arg(a, cx)).collect();
    let object = match &chain.lhs {
        place @ (Expr::Variable(..) | Expr::ThisPtr(..)) => Object::Place(place.clone()),
        value => Object::Value(compile_expr(value, cx)),
    };
    let method = MethodCall {
        callee: Callee {
            name: call.name.clone(),
            hashes: call.hashes,
            site: CallSite::default(),
            pos: *pos,
            script: None,
        },
        object,
        args_at: chain.rhs.position(),
        first_arg_at: call.args.first().map_or(Position::NONE, Expr::position),
        elvis: options.intersects(ASTFlags::NEGATED),
        plain: !["call", "curry", "is_shared"].contains(&call.name.as_str()),
        values: args.len() + 1,
    };
    method_with(method, args)
}

/// A method call with `args`: one operation for them (when there are any), each as
/// `get_arg_value` evaluates it, then the call (the first of the values is the object's
/// place).
fn method_with(method: MethodCall, args: Vec<ExprFn>) -> Option<ExprFn> {
    if args.len() >= MAX_VALUES {
        return None;
    }
    Some(Box::new(move |engine, global, caches, scope, mut this| {
        let mut values = [const { Dynamic::UNIT }; MAX_VALUES];
        if !args.is_empty() {
            engine.track_operation(global, method.args_at)?;
            for (value, arg) in values.iter_mut().skip(1).zip(&args) {
                *value = arg(engine, global, caches, scope, this.as_deref_mut())?.flatten();
            }
        }
        method.call(engine, global, caches, scope, this, &mut values)
    }))
}

/// The function a compiled call calls, and where.
struct Callee {
    name: rhai::ImmutableString,
    hashes: rhai::FnCallHashes,
    /// Remembers the native function the call resolved to, for the argument types it had.
    site: CallSite,
    pos: Position,
    /// The function of the script the call resolves to, when it is one.
    script: Option<ScriptFn>,
}

impl Callee {
    /// Rhai's `exec_fn_call` with the arguments evaluated; a native function the site
    /// remembers for these types is called at once.
    fn call(
        &self,
        engine: &Engine,
        global: &mut GlobalRuntimeState,
        caches: &mut Caches,
        args: &mut [&mut Dynamic],
    ) -> RhaiResult {
        let Self {
            name, site, pos, ..
        } = self;
        // A site remembers no native function for a call that resolves to a script's.
        if self.script.is_none() {
            if let Some(result) = engine.call_at_site(global, caches, name, args, site, *pos) {
                return result;
            }
        }
        self.call_with_first(engine, global, caches, args, false)
    }

    /// Rhai's `exec_fn_call` with the arguments evaluated, the first one by reference when
    /// `by_reference`: the script's function at once, when the call resolves to it.
    fn call_with_first(
        &self,
        engine: &Engine,
        global: &mut GlobalRuntimeState,
        caches: &mut Caches,
        args: &mut [&mut Dynamic],
        by_reference: bool,
    ) -> RhaiResult {
        let Self {
            name,
            hashes,
            site,
            pos,
            script,
        } = self;
        let called = script
            .as_ref()
            .and_then(|script| script.call(engine, global, caches, args, by_reference, *pos));
        if let Some(result) = called {
            return result;
        }
        engine
            .exec_fn_call(
                global,
                caches,
                None,
                name,
                None,
                *hashes,
                args,
                by_reference,
                false,
                Some(site),
                *pos,
            )
            .map(|(value, _)| value)
    }
}

/// A function of the script a compiled call resolves to, found at configuration.
struct ScriptFn {
    /// The module of the script's functions, and the function. Weak: the compiled body that
    /// holds this is in the function's definition, which is in the module.
    lib: Weak<Module>,
    function: Weak<ScriptFuncDef>,
    /// The new, empty scope Rhai makes for each call, for the function's variables, kept from
    /// call to call: made anew, its lists would be allocated on every call.
    scope: Cell<Scope<'static>>,
}

impl ScriptFn {
    /// Rhai's `exec_fn_call` for a call that resolves to the function
    /// (`Engine::call_script_fn_at_site`); `None` when the call would not resolve to it: the
    /// script's functions are not the module a call searches first.
    fn call(
        &self,
        engine: &Engine,
        global: &mut GlobalRuntimeState,
        caches: &mut Caches,
        args: &mut [&mut Dynamic],
        by_reference: bool,
        pos: Position,
    ) -> Option<RhaiResult> {
        let first = global.lib.last()?;
        if !std::ptr::eq(Rc::as_ptr(first), self.lib.as_ptr()) {
            return None;
        }
        let function = self.function.upgrade()?;
        let mut scope = self.scope.take();
        let result = engine.call_script_fn_at_site(
            global,
            caches,
            &mut scope,
            &function,
            args,
            by_reference,
            pos,
        );
        // The call leaves it empty; a scope that is not would show its variables to the next.
        scope.clear();
        self.scope.set(scope);
        Some(result)
    }
}

/// A call with `N` arguments: each evaluated as `get_arg_value` does, then the call: to the
/// binding itself when it takes arguments of these types, else through Rhai.
fn call_with<const N: usize>(
    callee: Callee,
    binding: Option<Rc<Binding>>,
    args: Vec<ExprFn>,
) -> Option<ExprFn> {
    let args = <[ExprFn; N]>::try_from(args).ok()?;
    let Some(binding) = binding else {
        return Some(Box::new(move |engine, global, caches, scope, this| {
            let mut values = [const { Dynamic::UNIT }; N];
            eval_args(&args, &mut values, engine, global, caches, scope, this)?;
            callee.call(engine, global, caches, &mut values.each_mut())
        }));
    };
    Some(Box::new(move |engine, global, caches, scope, this| {
        let mut values = [const { Dynamic::UNIT }; N];
        eval_args(&args, &mut values, engine, global, caches, scope, this)?;
        if binding.accepts(&values) {
            let args = &mut values.each_mut();
            return engine.call_native_by_value(global, &binding.func, args, callee.pos);
        }
        callee.call(engine, global, caches, &mut values.each_mut())
    }))
}

/// The arguments' values, in order, into `values`.
fn eval_args(
    args: &[ExprFn],
    values: &mut [Dynamic],
    engine: &Engine,
    global: &mut GlobalRuntimeState,
    caches: &mut Caches,
    scope: &mut Scope,
    mut this: Option<&mut Dynamic>,
) -> Result<(), Box<EvalAltResult>> {
    for (value, arg) in values.iter_mut().zip(args) {
        *value = arg(engine, global, caches, scope, this.as_deref_mut())?.flatten();
    }
    Ok(())
}

/// Rhai's `get_arg_value`: a literal counts one operation at its position and is its value;
/// anything else is evaluated as an expression.
fn compile_arg(arg: &Expr, cx: &mut Compiler) -> ExprFn {
    let at = match arg {
        Expr::StringConstant(_, pos) | Expr::IntegerConstant(_, pos) => *pos,
        _ => arg.start_position(),
    };
    match arg.get_literal_value(None) {
        Some(value) => {
            cx.coverage.compiled += 1;
            Box::new(move |engine, global, _, _, _| {
                engine.track_operation(global, at)?;
                Ok(value.clone())
            })
        }
        None => compile_expr(arg, cx),
    }
}
