//! What a run reads: JSON given inline or in a file, HTTP/1.1 messages, and `--callout`
//! answers (`proxy-rhai run`'s options, the playground's fields).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::emulator::{Reply, Request, Response};
use crate::testing::spec;

/// A JSON value given as text, or the JSON in the file it names.
pub fn json_arg(what: &str, arg: &str) -> Result<Value, String> {
    if let Ok(value) = serde_json::from_str(arg) {
        return Ok(value);
    }
    let text = read(what, Path::new(arg))?;
    serde_json::from_str(&text).map_err(|e| format!("{what}: {arg} is not valid JSON: {e}"))
}

fn read(what: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{what}: {} is neither JSON nor a readable file ({e})",
            path.display()
        )
    })
}

/// Requests: JSON (inline or in a file; an array holds several), or an HTTP/1.1 request in a
/// file.
pub fn requests(arg: &str) -> Result<Vec<Request>, String> {
    request_values(arg)?
        .iter()
        .map(|r| spec::request(r).map_err(|e| format!("--request: {e}")))
        .collect()
}

/// [`requests`] as the JSON [`spec::request`] reads (an HTTP message read as one).
pub fn request_values(arg: &str) -> Result<Vec<Value>, String> {
    let several = |value: &Value| match value {
        Value::Array(items) => Ok(items.clone()),
        one => Ok(vec![one.clone()]),
    };
    message("--request", arg, http_request, several)
}

/// A request given as words, as on a command line: `METHOD PATH`, then any number of
/// `-H 'Name: value'`, and `-d BODY`; read as the HTTP/1.1 request it stands for.
pub fn request_words(words: &[String]) -> Result<Request, String> {
    let mut words = words.iter();
    let method = words.next().map_or("GET", String::as_str);
    let path = words.next().map_or("/", String::as_str);
    let mut head = format!("{method} {path} HTTP/1.1\n");
    let mut body = "";
    while let Some(word) = words.next() {
        let mut value = || {
            words
                .next()
                .ok_or_else(|| format!("{word} wants a value after it"))
        };
        match word.as_str() {
            "-H" | "--header" => {
                let header = value()?;
                if header.contains(['\r', '\n']) {
                    return Err(format!("the header {header:?} holds a line break"));
                }
                head.push_str(header);
                head.push('\n');
            }
            "-d" | "--data" => body = value()?,
            other => {
                return Err(format!(
                    "`{other}`: expected -H 'Name: value' or -d BODY after METHOD PATH"
                ))
            }
        }
    }
    spec::request(&http_request(&format!("{head}\n{body}"))?)
}

/// An upstream response: JSON (inline or in a file), or an HTTP/1.1 response in a file.
pub fn response(arg: &str) -> Result<Response, String> {
    spec::response(&response_value(arg)?).map_err(|e| format!("--response: {e}"))
}

/// [`response`] as the JSON [`spec::response`] reads (an HTTP message read as one).
pub fn response_value(arg: &str) -> Result<Value, String> {
    message("--response", arg, http_response, |v| Ok(v.clone()))
}

fn message<T>(
    what: &str,
    arg: &str,
    http: fn(&str) -> Result<Value, String>,
    from_json: fn(&Value) -> Result<T, String>,
) -> Result<T, String> {
    let value = match serde_json::from_str::<Value>(arg) {
        Ok(value) => value,
        Err(_) => {
            let text = read(what, Path::new(arg))?;
            if text.trim_start().starts_with(['{', '[']) {
                serde_json::from_str(&text)
                    .map_err(|e| format!("{what}: {arg} is not valid JSON: {e}"))?
            } else {
                http(&text).map_err(|e| format!("{what}: {arg}: {e}"))?
            }
        }
    };
    from_json(&value).map_err(|e| format!("{what}: {e}"))
}

/// An HTTP/1.1 message: its first line, its headers (names lowercased), its body.
struct Message<'a> {
    first: &'a str,
    headers: Vec<(String, String)>,
    body: &'a str,
}

/// Header lines up to the empty line, then the body.
fn split_message(text: &str) -> Result<Message<'_>, String> {
    let (head, body) = match text.find("\r\n\r\n") {
        Some(i) => (&text[..i], &text[i + 4..]),
        None => match text.find("\n\n") {
            Some(i) => (&text[..i], &text[i + 2..]),
            None => (text.trim_end_matches(['\r', '\n']), ""),
        },
    };
    let mut lines = head.lines().map(|l| l.trim_end_matches('\r'));
    let first = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("`{line}` is not a `Name: value` header line"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Message {
        first,
        headers,
        body,
    })
}

/// `METHOD PATH [HTTP/1.1]`, headers (`Host` is the authority), a blank line, the body: as
/// the JSON request [`spec::request`] reads.
pub fn http_request(text: &str) -> Result<Value, String> {
    let Message {
        first,
        headers,
        body,
    } = split_message(text)?;
    let mut words = first.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        return Err(format!(
            "`{first}` is not a request line (METHOD PATH HTTP/1.1)"
        ));
    };
    let mut request = json!({"method": method, "path": path, "body": body});
    let mut pairs = Vec::new();
    for (name, value) in headers {
        if name == "host" {
            request["authority"] = value.into();
        } else {
            pairs.push(json!([name, value]));
        }
    }
    request["headers"] = pairs.into();
    Ok(request)
}

/// `HTTP/1.1 STATUS [REASON]`, headers, a blank line, the body: as the JSON response
/// [`spec::response`] reads.
pub fn http_response(text: &str) -> Result<Value, String> {
    let Message {
        first,
        headers,
        body,
    } = split_message(text)?;
    let status = first
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| format!("`{first}` is not a status line (HTTP/1.1 200 OK)"))?;
    let pairs: Vec<Value> = headers.iter().map(|(k, v)| json!([k, v])).collect();
    Ok(json!({"status": status, "headers": pairs, "body": body}))
}

/// One `--callout CLUSTER[PATH]=ANSWER`.
pub struct CalloutRule {
    pub cluster: String,
    pub path: Option<String>,
    pub reply: Reply,
}

/// Parses `CLUSTER[PATH]=ANSWER`: ANSWER is `STATUS`, `STATUS:BODY`, `timeout`, `connect_failure`, `reset`, `failure`,
/// JSON (`{"status": …, "headers": …, "body": …}`), or `@FILE` (JSON or an HTTP response).
pub fn callout(arg: &str) -> Result<CalloutRule, String> {
    let bad = |why: &str| format!("--callout {arg}: {why} (expected CLUSTER[PATH]=ANSWER)");
    let (target, answer) = arg.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let (cluster, path) = match target.find('/') {
        Some(i) => (&target[..i], Some(target[i..].to_string())),
        None => (target, None),
    };
    if cluster.is_empty() {
        return Err(bad("no cluster"));
    }
    let value = if let Some(file) = answer.strip_prefix('@') {
        let text = read("--callout", Path::new(file))?;
        if text.trim_start().starts_with('{') {
            serde_json::from_str(&text).map_err(|e| bad(&format!("{file}: {e}")))?
        } else {
            http_response(&text).map_err(|e| bad(&format!("{file}: {e}")))?
        }
    } else if ["timeout", "connect_failure", "reset", "failure"].contains(&answer) {
        Value::String(answer.into())
    } else if answer.trim_start().starts_with('{') {
        serde_json::from_str(answer).map_err(|e| bad(&e.to_string()))?
    } else {
        let (status, body) = answer.split_once(':').unwrap_or((answer, ""));
        let status: u32 = status.parse().map_err(|_| {
            bad(&format!(
                "`{status}` is not a status, timeout, connect_failure, reset or failure"
            ))
        })?;
        let mut fields = Map::new();
        fields.insert("status".into(), status.into());
        fields.insert("body".into(), body.into());
        Value::Object(fields)
    };
    let reply = spec::reply(&value).map_err(|e| bad(&e))?;
    Ok(CalloutRule {
        cluster: cluster.to_string(),
        path,
        reply,
    })
}

/// A `--redis CLUSTER=HOST:PORT` argument: the cluster, and its server's address.
pub fn redis(arg: &str) -> Result<(String, String), String> {
    let bad = || format!("--redis {arg:?}: give CLUSTER=HOST:PORT (e.g. redis=127.0.0.1:6379)");
    let (cluster, address) = arg.split_once('=').ok_or_else(bad)?;
    let port = address
        .rsplit_once(':')
        .map(|(_, port)| port.parse::<u16>());
    if cluster.is_empty() || !matches!(port, Some(Ok(p)) if p > 0) {
        return Err(bad());
    }
    Ok((cluster.to_string(), address.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_messages_are_read() {
        let r = http_request("POST /a?b=1 HTTP/1.1\nHost: api\nX-A: 1\n\n{\"k\":1}").unwrap();
        assert_eq!(r["method"], "POST");
        assert_eq!(r["authority"], "api");
        assert_eq!(r["headers"], json!([["x-a", "1"]]));
        assert_eq!(r["body"], "{\"k\":1}");
        let r =
            http_response("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno").unwrap();
        assert_eq!(
            (r["status"].as_u64(), r["body"].as_str()),
            (Some(404), Some("no"))
        );
        assert!(http_request("GET").is_err());
        assert!(http_response("HTTP/1.1 x").is_err());
        assert!(http_request("GET / HTTP/1.1\nbad header").is_err());
    }

    #[test]
    fn requests_are_read_from_words() {
        let words = |w: &[&str]| w.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let r = request_words(&words(&[
            "POST",
            "/a",
            "-H",
            "Host: api",
            "-H",
            "x-a: 1",
            "-d",
            "a\n\nb",
        ]))
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/a"));
        assert_eq!(r.authority, "api");
        assert_eq!(r.headers, vec![("x-a".to_string(), b"1".to_vec())]);
        assert_eq!(r.body, b"a\n\nb");
        assert_eq!(request_words(&[]).unwrap().path, "/");
        assert!(request_words(&words(&["GET", "/", "-H"])).is_err());
        assert!(request_words(&words(&["GET", "/", "-H", "bad"])).is_err());
        assert!(request_words(&words(&["GET", "/", "--what"])).is_err());
    }

    #[test]
    fn callout_answers_are_read() {
        let c = callout("auth/token=200:{\"t\":1}").unwrap();
        assert_eq!(
            (c.cluster.as_str(), c.path.as_deref()),
            ("auth", Some("/token"))
        );
        assert_eq!(
            c.reply,
            Reply::Answer {
                status: 200,
                headers: vec![],
                body: b"{\"t\":1}".to_vec()
            }
        );
        assert_eq!(callout("auth=timeout").unwrap().reply, Reply::NoAnswer);
        assert_eq!(callout("auth=reset").unwrap().reply, Reply::Reset);
        assert_eq!(
            callout("auth=connect_failure").unwrap().reply,
            Reply::ConnectFailure
        );
        assert!(callout("auth").is_err());
        assert!(callout("=200").is_err());
        assert!(callout("auth=soon").is_err());
    }
}
