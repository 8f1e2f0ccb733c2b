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
//! A call to one of the plugin's bindings ([`Bindings`]) is resolved here, once: the compiled
//! call checks its arguments' types and calls the function Rhai registered for the binding,
//! with what Rhai does around a native call (`Engine::call_native_by_value`), past Rhai's
//! resolution. Arguments of other types take Rhai's way, with its errors.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use rhai::{
    ASTFlags, Caches, CallSite, Dynamic, Engine, EvalAltResult, Expr, FnCallExpr,
    GlobalRuntimeState, Position, RhaiFunc, Scope, ScriptFuncPayload, Stmt, AST,
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

/// What compiling one script needs besides its nodes.
struct Compiler<'a> {
    coverage: Coverage,
    bindings: &'a Bindings,
    /// The script's own functions, by name and arity: a call Rhai resolves to one of them.
    script_fns: HashSet<(String, usize)>,
}

impl<'a> Compiler<'a> {
    fn new(ast: &AST, bindings: &'a Bindings) -> Self {
        let script_fns = ast
            .iter_fn_def()
            .map(|f| (f.name.to_string(), f.params.len()))
            .collect();
        Self {
            coverage: Coverage::default(),
            bindings,
            script_fns,
        }
    }

    /// The binding a call of `name` with `arity` arguments resolves to, when it is one.
    fn binding(&self, name: &str, arity: usize) -> Option<Rc<Binding>> {
        if self.script_fns.contains(&(name.to_string(), arity)) {
            return None;
        }
        let bindings: &HashMap<(&str, usize), Option<Rc<Binding>>> = &self.bindings.0;
        bindings.get(&(name, arity))?.clone()
    }
}

/// Compiles every script function of `ast` and installs the bodies where Rhai calls them;
/// calls to `bindings` call them directly.
pub fn install(ast: &AST, bindings: &Bindings) -> Coverage {
    let mut cx = Compiler::new(ast, bindings);
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

/// What the compiler would make of `ast`, without installing anything.
pub fn coverage(ast: &AST, bindings: &Bindings) -> Coverage {
    let mut cx = Compiler::new(ast, bindings);
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
        // `return`; with `BREAK` it is a `throw`, left to the evaluator.
        Stmt::Return(value, flags, pos) if !flags.contains(ASTFlags::BREAK) => {
            cx.coverage.compiled += 1;
            let value = value.as_deref().map(|e| compile_expr(e, cx));
            let pos = *pos;
            Box::new(move |engine, global, caches, scope, this, _| {
                engine.track_operation(global, at)?;
                let value = match &value {
                    Some(value) => value(engine, global, caches, scope, this)?.flatten(),
                    None => Dynamic::UNIT,
                };
                Err(EvalAltResult::Return(value, pos).into())
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
        let operands: Vec<(ExprFn, Position)> = operands
            .iter()
            .map(|e| (compile_expr(e, cx), e.position()))
            .collect();
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

/// Rhai's `eval_fn_call_expr` for a plain call with up to six arguments, none of them a
/// variable passed first (which Rhai may pass by reference): the arguments as
/// `get_arg_value` evaluates them, then `exec_fn_call` with a call site of its own (Rhai's
/// `call_with_values` up to three arguments, its general case past them: the same steps). `None`
/// for the calls Rhai treats apart (operators, `call`, `Fn`, `curry`, …, capturing calls).
fn compile_call(call: &FnCallExpr, pos: Position, cx: &mut Compiler) -> Option<ExprFn> {
    if call.op_token.is_some()
        || call.capture_parent_scope
        || call.args.len() > 6
        || SPECIAL_CALLS.contains(&call.name.as_str())
        || matches!(
            call.args.first(),
            Some(Expr::Variable(..) | Expr::ThisPtr(..))
        )
    {
        return None;
    }
    let args: Vec<ExprFn> = call.args.iter().map(|a| compile_arg(a, cx)).collect();
    let binding = cx.binding(&call.name, args.len());
    if binding.is_some() {
        cx.coverage.direct_calls += 1;
    }
    let target = Callee {
        name: call.name.clone(),
        hashes: call.hashes,
        site: CallSite::default(),
        pos,
    };
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

/// The function a compiled call calls, and where.
struct Callee {
    name: rhai::ImmutableString,
    hashes: rhai::FnCallHashes,
    /// Remembers the native function the call resolved to, for the argument types it had.
    site: CallSite,
    pos: Position,
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
            name,
            hashes,
            site,
            pos,
        } = self;
        if let Some(result) = engine.call_at_site(global, caches, name, args, site, *pos) {
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
                false,
                false,
                Some(site),
                *pos,
            )
            .map(|(value, _)| value)
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
