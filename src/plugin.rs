//! A configured plugin: the checked configuration, the compiled script and its engine.
//!
//! Built once per plugin configuration; every stream of that configuration shares it.

use std::rc::Rc;

use rhai::module_resolvers::DummyModuleResolver;
use rhai::{Dynamic, Engine, OptimizationLevel, Scope, AST};

use crate::bindings::{self, Api, FnDoc, Registrar};
use crate::config::{Limits, PluginConfig};
use crate::host::Host;
use crate::phase::{Phase, Phases};

/// A compiled script with everything a stream needs.
pub struct Plugin<H> {
    pub(crate) engine: Engine,
    pub(crate) ast: AST,
    pub(crate) api: Rc<Api<H>>,
    /// The phase functions the script defines; the others never enter Rhai.
    pub(crate) phases: Phases,
    pub(crate) config: PluginConfig,
}

impl<H: Host + 'static> Plugin<H> {
    /// Parses the configuration and compiles its script; the error is one line that says why
    /// (for a script, with line and column).
    pub fn configure(host: H, configuration: &[u8]) -> Result<Self, String> {
        let config = PluginConfig::parse(configuration)?;
        let user_config = rhai::serde::to_dynamic(&config.user_config)
            .map_err(|e| format!("plugin configuration: config cannot be given to Rhai: {e}"))?;
        let api = Rc::new(Api::new(host, user_config));
        let engine = new_engine(&config.limits, api.clone(), None);
        let ast = engine.compile(&config.script).map_err(|e| {
            format!(
                "script does not compile: {} at {}",
                e.err_type(),
                position(e.position())
            )
        })?;
        let phases = phases_of(&ast)?;
        let plugin = Self {
            engine,
            ast,
            api,
            phases,
            config,
        };
        plugin.run_top_level()?;
        Ok(plugin)
    }

    /// Runs the script's top-level statements once, so that a script failing there is refused
    /// at configure time rather than on every request.
    fn run_top_level(&self) -> Result<(), String> {
        self.engine
            .run_ast_with_scope(&mut Scope::new(), &self.ast)
            .map_err(|e| {
                format!(
                    "script failed while loading: {}",
                    crate::stream::describe_error(&e)
                )
            })
    }

    /// The user's configuration, as given.
    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    /// Whether the script defines a function for `phase`.
    pub fn handles(&self, phase: Phase) -> bool {
        self.phases.contains(phase)
    }
}

/// The API reference, as the bindings declare it.
pub fn api_reference<H: Host + 'static>(host: H) -> Vec<FnDoc> {
    let mut docs = Vec::new();
    new_engine(
        &Limits::default(),
        Rc::new(Api::new(host, Dynamic::UNIT)),
        Some(&mut docs),
    );
    docs
}

/// An engine with the sandbox limits and the script API, and nothing else: no module loading,
/// no `eval`.
fn new_engine<H: Host + 'static>(
    limits: &Limits,
    api: Rc<Api<H>>,
    docs: Option<&mut Vec<FnDoc>>,
) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_modules(0)
        .set_module_resolver(DummyModuleResolver::new())
        .set_optimization_level(OptimizationLevel::Simple)
        .disable_symbol("eval")
        .disable_symbol("import");
    bindings::register(&mut Registrar {
        engine: &mut engine,
        api,
        docs,
    });
    engine
}

/// The phase functions `ast` defines; a phase function with parameters is an error, and so is
/// a script with none.
fn phases_of(ast: &AST) -> Result<Phases, String> {
    let mut phases = Phases::NONE;
    for f in ast.iter_functions() {
        if let Some(phase) = Phase::ALL.into_iter().find(|p| p.function_name() == f.name) {
            if !f.params.is_empty() {
                return Err(format!(
                    "script error: {}() must take no parameters",
                    f.name
                ));
            }
            phases.insert(phase);
        }
    }
    if phases.is_empty() {
        return Err("script defines no phase function: define at least one of \
                    on_request_headers(), on_request_body(), on_response_headers(), on_response_body()"
            .into());
    }
    Ok(phases)
}

fn position(pos: rhai::Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(column)) => format!("line {line}, column {column}"),
        (Some(line), None) => format!("line {line}"),
        _ => "end of script".into(),
    }
}
