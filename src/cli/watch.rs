//! `proxy-rhai run --watch`: the run again each time one of its files changes.
//!
//! The files are polled (their contents, every 300 ms): nothing to install, and an editor
//! that saves by renaming a new file over the old one is seen like any other.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{out, run, RunArgs};

const POLL: Duration = Duration::from_millis(300);

/// Runs `args` once, then again whenever the script, a configuration, request, response or
/// callout answer file changes, until interrupted (Ctrl-C).
pub fn watch(args: &RunArgs) -> Result<bool, String> {
    if args.script.as_os_str() == "-" {
        return Err("--watch needs the script in a file (it can't watch standard input)".into());
    }
    let files = watched(args);
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let clear = std::io::stdout().is_terminal();
    let mut seen: Vec<Option<Vec<u8>>> = files.iter().map(|f| std::fs::read(f).ok()).collect();
    let mut why = format!("watching {} (Ctrl-C ends)", names.join(", "));
    loop {
        if clear {
            // The screen shows the latest run only.
            out("\x1b[2J\x1b[H");
        }
        out(&format!("=== {why}, at {} UTC\n", clock()));
        if let Err(message) = run(args) {
            out(&format!("proxy-rhai: {message}\n"));
        }
        out("=== waiting for a change\n");
        let changed = loop {
            std::thread::sleep(POLL);
            let now: Vec<Option<Vec<u8>>> = files.iter().map(|f| std::fs::read(f).ok()).collect();
            // A file missing for a moment (an editor replacing it) is not a change yet.
            if now.iter().any(Option::is_none) || now == seen {
                continue;
            }
            let changed: Vec<&str> = names
                .iter()
                .zip(now.iter().zip(&seen))
                .filter(|(_, (new, old))| new != old)
                .map(|(name, _)| name.as_str())
                .collect();
            let changed = changed.join(", ");
            seen = now;
            break changed;
        };
        why = format!("{changed} changed");
    }
}

/// The files a run reads: the script, and each argument that names a file rather than
/// holding JSON (configuration, requests, response, `@FILE` callout answers).
fn watched(args: &RunArgs) -> Vec<PathBuf> {
    let mut files = vec![args.script.clone()];
    let given = [
        &args.configuration.config,
        &args.configuration.plugin_config,
        &args.response,
    ];
    let named = given
        .into_iter()
        .flatten()
        .chain(&args.request)
        .filter(|arg| serde_json::from_str::<serde_json::Value>(arg).is_err())
        .map(String::as_str)
        .chain(args.callout.iter().filter_map(|arg| {
            arg.split_once('=')
                .and_then(|(_, answer)| answer.strip_prefix('@'))
        }));
    for name in named {
        let path = Path::new(name);
        if path.is_file() && !files.iter().any(|f| f == path) {
            files.push(path.to_path_buf());
        }
    }
    files
}

/// The time of day, UTC, as HH:MM:SS.
fn clock() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}
