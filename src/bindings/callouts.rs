//! Local responses, resuming, and callouts with their answers.

use std::borrow::Cow;
use std::time::Duration;

use rhai::{Dynamic, FnPtr};

use crate::stream::PendingCall;

use super::*;

pub(super) fn register<H: Host + 'static>(reg: &mut Registrar<'_, H>) {
    use Allowed::{Callback, In};

    // A text a function makes (a body, JSON) is a string: no longer than a string may be.
    let max_string = reg.engine.max_string_size();

    // Local responses and resuming.
    bind!(reg, "send_http_response", In(Phases::BEFORE_RESPONSE_BODY), "()",
        "Answers the client locally with `status` (200..=599), `headers` (pairs or map) and `body` (string, blob or ()); the request goes no further and later phases don't run. It doesn't stop the running function: `return` after it when nothing else should happen. Once per request: a second call, or a status out of range, is an error; so is a header HTTP does not allow (see `add_request_header`; no pseudo-header), or more than 1,024 headers or 1 MiB of them. Too late once the response body is streaming (the response headers are gone).",
        r#"fn on_request_headers() {
    if get_request_header("x-api-key") != config().api_key {
        send_http_response(401, #{ "www-authenticate": "ApiKey" }, "missing or wrong API key");
    }
}"#,
        |a as f, status: i64, headers: Dynamic, body: Dynamic| a.send_local_response(f, status, &headers, &body));
    bind!(reg, "resume_http_request", Callback, "bool: whether the request was paused",
        "Lets a request paused for callouts go on now, without waiting for the other calls. The plugin resumes by itself after the last callback; calling this is never needed, and never resumes twice.",
        r#"fn on_request_headers() {
    http_get("flags", "/flags", [], 200, |status, headers, body| {
        set_context("flags", body);
        resume_http_request(); // don't wait for the slow audit call below
    });
    http_post("audit", "/log", [], get_request_header(":path"), 5000, |status, headers, body| {});
}"#,
        |a as f| a.resume(Side::Request).or_else(|s| refused(f, s)));
    bind!(
        reg,
        "resume_http_response",
        Callback,
        "bool: whether the response was paused",
        "Lets a response paused for callouts go on now (see `resume_http_request`).",
        r#"fn on_response_headers() {
    http_get("stats", "/hit", [], 100, |status, headers, body| {
        resume_http_response();
    });
}"#,
        |a as f| a
            .resume(Side::Response)
            .or_else(|s| refused(f, s))
    );

    // Callouts.
    bind!(reg, "dispatch_http_call", ALL, "int: the call id",
    "Sends `body` (string, blob or ()) with `headers` (pairs or map, with `:method`, `:path` and `:authority`) to `cluster`, waiting at most `timeout_ms` (1..=600000). The phase pauses; `callback` runs as `|status, headers, body|` (or takes just `|status|` or `|status, headers|`: what it doesn't take is never converted) when the answer arrives — when none comes in time, Envoy's own 504 `upstream request timeout`, on time; when the target can't be reached, Envoy's own 503; status 0 with empty headers and body when the call fails with no response at all, in the phase that dispatched it, and the stream resumes after the last callback. A callback that takes a fourth parameter, `|status, headers, body, failure|`, is told which of these it got: `failure` is `\"timeout\"`, `\"connect_failure\"` (the target can't be reached), `\"reset\"` (the connection was reset, before or after the answer began), or `()` for a real answer, even a target's own 504 or 503 (the plugin recognises Envoy's own answers by their exact headers and text, and a timeout also by the call's own deadline: a 504 that comes more than 100 ms before it is the target's). A refused call (unknown cluster, missing pseudo-header) is an error the script can catch; so is a timeout out of range, a header HTTP does not allow (see `add_request_header`), `content-length` or `transfer-encoding` (the proxy frames the body itself), more than 1,024 headers or 1 MiB of them, and a call past `limits.max_callouts` (the request's callouts, its callbacks' included).",
    r#"fn on_request_headers() {
    let headers = [[":method", "POST"], [":path", "/token"], [":authority", "auth"], ["content-type", "application/json"]];
    dispatch_http_call("auth", headers, `{"user":"${get_request_header("x-user")}"}`, 1000, |status, headers, body| {
        if status != 200 {
            send_http_response(403, [], "forbidden");
            return;
        }
        add_request_header("authorization", "Bearer " + parse_json(body).token);
    });
}"#,
    |a as f, cluster: &str, headers: Dynamic, body: Dynamic, timeout_ms: i64, callback: FnPtr| {
        a.dispatch(f, Callout::new(cluster, header_pairs(f, &headers)?, timeout_ms, callback).body(f, &body)?)
    });
    bind!(reg, "http_get", ALL, "int: the call id",
    "GET `path` from `cluster` (`:authority` is the cluster name unless `headers` set it), then `callback(status, headers, body)`. See `dispatch_http_call`.",
    r#"fn on_request_headers() {
    http_get("users", "/users/" + get_request_header("x-user"), #{ accept: "application/json" }, 300, |status, headers, body| {
        if status == 200 {
            add_request_header("x-user-plan", parse_json(body).plan);
        }
    });
}"#,
    |a as f, cluster: &str, path: &str, headers: Dynamic, timeout_ms: i64, callback: FnPtr| {
        a.dispatch(f, Callout::new(cluster, header_pairs(f, &headers)?, timeout_ms, callback).to("GET", path))
    });
    bind!(
        reg,
        "http_get",
        ALL,
        "int: the call id",
        "`http_get` with the default timeout (500 ms).",
        r#"fn on_request_headers() {
    http_get("flags", "/flags/checkout", [], |status, headers, body| {
        set_context("checkout_v2", status == 200 && body == "on");
    });
}"#,
        |a as f, cluster: &str, path: &str, headers: Dynamic, callback: FnPtr| {
            let call = Callout::new(cluster, header_pairs(f, &headers)?, DEFAULT_CALL_TIMEOUT_MS, callback);
            a.dispatch(f, call.to("GET", path))
        }
    );
    bind!(reg, "http_post", ALL, "int: the call id",
    "POST `body` to `path` on `cluster`, then `callback(status, headers, body)`. See `dispatch_http_call`.",
    r#"fn on_request_headers() {
    http_post("audit", "/events", #{ "content-type": "application/json" }, to_json(#{ path: get_request_header(":path") }), 1000, |status, headers, body| {
        if status != 202 { log_warn(`audit answered ${status}`); }
    });
}"#,
    |a as f, cluster: &str, path: &str, headers: Dynamic, body: Dynamic, timeout_ms: i64, callback: FnPtr| {
        let call = Callout::new(cluster, header_pairs(f, &headers)?, timeout_ms, callback);
        a.dispatch(f, call.to("POST", path).body(f, &body)?)
    });
    bind!(
        reg,
        "http_post",
        ALL,
        "int: the call id",
        "`http_post` with the default timeout (500 ms).",
        r#"fn on_request_body() {
    http_post("scanner", "/scan", [], get_request_body_bytes(), |status, headers, body| {
        if body == "infected" { send_http_response(422, [], "rejected by the scanner"); }
    });
}"#,
        |a as f, cluster: &str, path: &str, headers: Dynamic, body: Dynamic, callback: FnPtr| {
            let call = Callout::new(cluster, header_pairs(f, &headers)?, DEFAULT_CALL_TIMEOUT_MS, callback);
            a.dispatch(f, call.to("POST", path).body(f, &body)?)
        }
    );
    bind!(reg, "http_call", ALL, "int: the call id",
    "Any `method` (PUT, PATCH, DELETE, …) to `path` on `cluster`, then `callback(status, headers, body)`. See `dispatch_http_call`.",
    r#"fn on_request_headers() {
    http_call("DELETE", "sessions", "/sessions/" + get_request_header("x-session"), [], (), 500, |status, headers, body| {
        log_info(`session delete: ${status}`);
    });
}"#,
    |a as f, method: &str, cluster: &str, path: &str, headers: Dynamic, body: Dynamic, timeout_ms: i64, callback: FnPtr| {
        let call = Callout::new(cluster, header_pairs(f, &headers)?, timeout_ms, callback);
        a.dispatch(f, call.to(method, path).body(f, &body)?)
    });
    bind!(
        reg,
        "get_http_call_response_headers",
        Callback,
        "array of [name, value]",
        "Headers of the callout answer being handled (empty when it got none).",
        r#"fn on_request_headers() {
    http_get("auth", "/whoami", [], 500, |status, headers, body| {
        for h in get_http_call_response_headers() {
            if h[0] == "x-user-id" { add_request_header("x-user-id", h[1]); }
        }
    });
}"#,
        |a as f| a.get_headers(
            f,
            MapType::HttpCallResponseHeaders
        )
    );
    bind!(
        reg,
        "get_http_call_response_trailers",
        Callback,
        "array of [name, value]",
        "Trailers of the callout answer being handled.",
        r#"fn on_request_headers() {
    http_get("grpc-gw", "/check", [], 500, |status, headers, body| {
        log_debug(get_http_call_response_trailers());
    });
}"#,
        |a as f| a.get_headers(
            f,
            MapType::HttpCallResponseTrailers
        )
    );
    bind!(
        reg,
        "get_http_call_response_body",
        Callback,
        "string",
        "Body of the callout answer being handled, as a string (the same text the callback gets as `body`).",
        r#"fn on_request_headers() {
    http_get("auth", "/token", [], 500, |status, headers, body| {
        let token = parse_json(get_http_call_response_body()).token;
        add_request_header("authorization", `Bearer ${token}`);
    });
}"#,
        |a as f| text_within("get_http_call_response_body()", call_body(a, f)?, max_string)
    );
    bind!(
        reg,
        "get_http_call_response_body_bytes",
        Callback,
        "blob",
        "Body of the callout answer being handled, byte for byte.",
        r#"fn on_request_headers() {
    http_get("keys", "/key.bin", [], 500, |status, headers, body| {
        set_context("key_size", get_http_call_response_body_bytes().len());
    });
}"#,
        |a as f| call_body(a, f)
    );

    bind!(
        reg,
        "get_http_call_response_header",
        Callback,
        "string, or () when absent",
        "One header of the callout answer being handled (the first value; name case-insensitive).",
        r#"fn on_request_headers() {
    http_get("auth", "/token", [], 500, |status, headers, body| {
        let token = get_http_call_response_header("x-token");
        if token != () { add_request_header("authorization", token); }
    });
}"#,
        |a as f, name: &str| a.get_header(
            f,
            MapType::HttpCallResponseHeaders,
            name
        )
    );
}

/// The callout answer's body, for `f`.
fn call_body<H: Host>(a: &Api<H>, f: &str) -> ScriptResult<Vec<u8>> {
    let size = a.frame.borrow().answer.map_or(0, |x| x.body_size);
    a.reserve(f, size)?;
    let body = a
        .host
        .get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .or_else(|s| refused(f, s))?;
    Ok(body.unwrap_or_default())
}

/// Longest timeout a callout may ask for.
/// What a callout callback is given, in order; it takes as many as it names (`check` says
/// when it takes more).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) const CALLBACK_PARAMETERS: [&str; 4] = ["status", "headers", "body", "failure"];

const MAX_CALL_TIMEOUT_MS: i64 = 600_000;
/// Timeout of `http_get`, `http_post`, … when the script gives none (as Higress's HttpClient).
const DEFAULT_CALL_TIMEOUT_MS: i64 = 500;

/// One outgoing call, as a callout function builds it from the script's arguments.
struct Callout<'a> {
    cluster: &'a str,
    /// `:method`, `:path` and `:authority` of a convenience function (`http_get`, …), sent
    /// unless the script's `headers` set them too; `dispatch_http_call` has none.
    pseudo: Option<[(&'a str, &'a str); 3]>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout_ms: i64,
    callback: FnPtr,
}

impl<'a> Callout<'a> {
    /// A call to `cluster` with the script's `headers` and no body.
    fn new(
        cluster: &'a str,
        headers: Vec<(String, Vec<u8>)>,
        timeout_ms: i64,
        callback: FnPtr,
    ) -> Self {
        Self {
            cluster,
            pseudo: None,
            headers,
            body: Vec::new(),
            timeout_ms,
            callback,
        }
    }

    /// The call as `method` to `path` (its `:authority` is the cluster's name).
    fn to(mut self, method: &'a str, path: &'a str) -> Self {
        self.pseudo = Some([
            (":method", method),
            (":path", path),
            (":authority", self.cluster),
        ]);
        self
    }

    /// The call with `body` (string, blob or ()).
    fn body(mut self, f: &str, body: &Dynamic) -> ScriptResult<Self> {
        self.body = bytes_of(f, body)?;
        Ok(self)
    }
}

impl<H: Host> Api<H> {
    /// Sends `call` for `f`, once it passes the checks (phase, timeout, `limits.max_callouts`,
    /// headers); its callback runs when the answer arrives.
    fn dispatch(&self, f: &str, call: Callout<'_>) -> ScriptResult<i64> {
        let phase = self.enter(f, Allowed::In(Phases::STREAMING))?;
        // Fields read in place: moving them out first costs ~35 wasm instructions a call.
        let (cluster, headers, timeout_ms) = (call.cluster, &call.headers, call.timeout_ms);
        if !(1..=MAX_CALL_TIMEOUT_MS).contains(&timeout_ms) {
            return err(format!(
                "{f}(): timeout_ms {timeout_ms} is not in 1..={MAX_CALL_TIMEOUT_MS}"
            ));
        }
        let max = self.limits.max_callouts;
        if self.frame.borrow().stream.callouts_made >= max {
            return err(format!(
                "{f}(): this request already made {max} callouts (limits.max_callouts)"
            ));
        }
        let pseudo: &[(&str, &str)] = call.pseudo.as_ref().map_or(&[], |p| p);
        let values: Vec<Cow<'_, str>> = headers
            .iter()
            .map(|(_, v)| String::from_utf8_lossy(v))
            .collect();
        let mut refs: Vec<(&str, &str)> = Vec::with_capacity(pseudo.len() + headers.len());
        refs.extend(
            pseudo
                .iter()
                .filter(|(k, _)| !headers.iter().any(|(n, _)| n == k)),
        );
        refs.extend(
            headers
                .iter()
                .zip(&values)
                .map(|((k, _), v)| (k.as_str(), v.as_ref())),
        );
        check_pair_list(
            f,
            Target::Callout,
            refs.iter().map(|(k, v)| (*k, v.as_bytes())),
        )?;
        // Read before the proxy starts the call's timer: the deadline is never late.
        let sent = self.host.current_time_nanos().unwrap_or(0);
        let id = self
            .host
            .dispatch_http_call(
                cluster,
                &refs,
                &call.body,
                Duration::from_millis(timeout_ms as u64),
            )
            .or_else(|s| {
                err(format!(
                    "{f}(): the proxy refused the call to cluster '{cluster}' ({s:?}): \
                     is the cluster defined, and are :method, :path and :authority set?"
                ))
            })?;
        let stream = &mut self.frame.borrow_mut().stream;
        stream.callouts_made += 1;
        stream.calls.push(PendingCall {
            id,
            phase,
            callback: call.callback,
            deadline_nanos: sent.saturating_add(timeout_ms as u64 * 1_000_000),
        });
        Ok(i64::from(id))
    }
}
