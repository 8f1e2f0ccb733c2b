//! `proxy-rhai playground`: serves the built playground (static files) on 127.0.0.1.
//!
//! A small HTTP/1.1 file server: GET and HEAD, one request per connection, the files of one
//! folder and nothing outside it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use clap::Args;

/// Serves the browser playground (built by tools/build-playground.sh) on 127.0.0.1.
///
/// Prints the URL to open on its first line, then serves the folder's files until Ctrl-C.
/// When the playground isn't built, says how to build it (exit status 2).
#[derive(Args)]
pub(super) struct PlaygroundArgs {
    /// The port (0: any free port; the first line says which).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The built playground.
    #[arg(long, value_name = "DIR", default_value = "target/playground")]
    dir: PathBuf,
}

/// The files that make a built playground.
const BUILT: [&str; 2] = ["index.html", "playground.wasm"];

/// A request line and headers larger than this are refused.
const MAX_HEAD: usize = 16 * 1024;

pub(super) fn playground(args: &PlaygroundArgs) -> Result<bool, String> {
    if let Some(missing) = BUILT.iter().find(|f| !args.dir.join(f).is_file()) {
        return Err(format!(
            "the playground is not built ({} has no {missing}): run tools/build-playground.sh \
             (it writes target/playground/), or give --dir",
            args.dir.display()
        ));
    }
    let root = args
        .dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    super::out(&format!(
        "http://127.0.0.1:{port}/\nserving {} (Ctrl-C stops)\n",
        root.display()
    ));
    for stream in listener.incoming().flatten() {
        let root = root.clone();
        // One thread per connection: a client that sends nothing holds only its own.
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = serve(stream, &root);
        });
    }
    Ok(true)
}

/// Answers one request.
fn serve(stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if head.len() + line.len() > MAX_HEAD {
            return respond(
                stream,
                431,
                "text/plain",
                b"request header too large\n",
                true,
            );
        }
        if line.trim_end().is_empty() {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let mut words = head.first().map(|l| l.split(' ')).into_iter().flatten();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        return respond(stream, 405, "text/plain", b"only GET and HEAD\n", body);
    }
    match file_of(root, target) {
        Some(path) => match std::fs::read(&path) {
            Ok(bytes) => respond(stream, 200, content_type(&path), &bytes, body),
            Err(_) => respond(stream, 404, "text/plain", b"not found\n", body),
        },
        None => respond(stream, 404, "text/plain", b"not found\n", body),
    }
}

/// The file under `root` that `target` (the request's path) names: `/` is `index.html`. `None`
/// for a path that would leave `root` (`..`, an absolute part, a link out of it) or isn't a
/// file.
fn file_of(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    let relative = decoded.trim_start_matches('/');
    let relative = if relative.is_empty() {
        "index.html"
    } else {
        relative
    };
    let mut file = root.to_path_buf();
    for part in Path::new(relative).components() {
        match part {
            Component::Normal(name) => file.push(name),
            _ => return None,
        }
    }
    let file = file.canonicalize().ok()?;
    (file.starts_with(root) && file.is_file()).then_some(file)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" | "rhai" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn respond(
    mut stream: TcpStream,
    status: u16,
    content_type: &str,
    bytes: &[u8],
    body: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-cache\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n",
        bytes.len()
    );
    stream.write_all(head.as_bytes())?;
    if body {
        stream.write_all(bytes)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_folder() {
        let root =
            std::env::temp_dir().join(format!("proxy-rhai-playground-{}", std::process::id()));
        std::fs::create_dir_all(root.join("assets")).unwrap();
        std::fs::write(root.join("index.html"), "i").unwrap();
        std::fs::write(root.join("assets/a b.js"), "a").unwrap();
        let root = root.canonicalize().unwrap();
        let found = |target| file_of(&root, target);
        assert_eq!(found("/"), Some(root.join("index.html")));
        assert_eq!(found("/?x=1"), Some(root.join("index.html")));
        assert_eq!(found("/assets/a%20b.js"), Some(root.join("assets/a b.js")));
        for bad in [
            "/../index.html",
            "/assets/../../x",
            "/%2e%2e/x",
            "//etc/passwd",
            "/assets",
            "/missing",
            "/%ff",
        ] {
            assert_eq!(found(bad), None, "{bad}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
