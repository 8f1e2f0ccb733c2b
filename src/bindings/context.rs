//! Per-request state (`set_context`), the configuration (`config()`) and the log.

use rhai::Dynamic;

use super::*;

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use Allowed::Anywhere;

    // A text a function makes (a body, JSON) is a string: no longer than a string may be.
    let _max_string = reg.engine.max_string_size();

    // Per-request state, configuration, logs, JSON.
    bind!(reg, "set_context", ALL, "()",
    "Keeps `value` under `key` for the rest of this request (every later phase and callback); other requests never see it. Refused (a script error) once the call is past `limits.max_memory` or the VM's heap past `limits.max_vm_memory`: what requests keep while they wait is what fills the heap.",
    r#"fn on_request_headers() {
    set_context("path", get_request_header(":path"));
}
fn on_response_headers() {
    add_response_header("x-original-path", get_context("path"));
}"#,
    |a as f, key: &str, value: Dynamic| {
        // What a request keeps outlives the call: past the heap limits, it keeps no more.
        a.reserve(f, 0)?;
        a.frame.borrow_mut().stream.context.insert(key.into(), value);
        Ok(())
    });
    bind!(
        reg,
        "get_context",
        ALL,
        "the value, or () when unset",
        "The value `set_context` kept under `key` for this request.",
        r#"fn on_request_headers() {
    set_context("started", true);
}
fn on_response_body() {
    if get_context("started") == true {
        log_info("this request went through on_request_headers");
    }
}"#,
        |a, key: &str| Ok(a
            .frame
            .borrow()
            .stream
            .context
            .get(key)
            .cloned()
            .unwrap_or(Dynamic::UNIT))
    );
    bind!(
        reg,
        "config",
        Anywhere,
        "map, array, string, number, bool or ()",
        "The `config` value of the plugin configuration, converted once (JSON objects become maps, `null` becomes ()). Read-only; cheap to call. Also callable at the top level of the script, which runs once when the plugin is configured: throwing there refuses the configuration.",
        r#"// Plugin configuration: {"script": "...", "config": {"header": "x-tenant", "fallback": "public"}}
if type_of(config()) != "map" { throw "config must be a map"; } // runs once, at configure time

fn on_request_headers() {
    let name = config().header ?? "x-tenant";
    if get_request_header(name) == () {
        add_request_header(name, config().fallback ?? "public");
    }
}"#,
        |a| Ok(a.frame.borrow().config.clone())
    );
    for (name, level) in [
        ("log_trace", LogLevel::Trace),
        ("log_debug", LogLevel::Debug),
        ("log_info", LogLevel::Info),
        ("log_warn", LogLevel::Warn),
        ("log_error", LogLevel::Error),
    ] {
        let captured = reg.api.clone();
        reg.engine.register_fn(name, move |message: Dynamic| {
            captured.host.log(level, &message.to_string())
        });
    }
    reg.doc(FnDoc { name: "log_trace / log_debug / log_info / log_warn / log_error", params: &[("message", "any")], returns: "()", allowed: Anywhere,
        doc: "Writes `message` (any value, shown as `to_string` would) to the proxy log at that level. `print(x)` logs at info, `debug(x)` at debug. Never fails.",
        example: r#"fn on_request_headers() {
    log_info(`request for ${get_request_header(":path")}`);
    log_debug(get_request_headers());
}"# });
    let captured = reg.api.clone();
    reg.engine
        .on_print(move |s| captured.host.log(LogLevel::Info, s));
    let captured = reg.api.clone();
    reg.engine
        .on_debug(move |s, _, pos| captured.host.log(LogLevel::Debug, &format!("{s} ({pos})")));
}
