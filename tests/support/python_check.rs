//! A check written in Python (on `tools/proxy_wasm_host.py`), run from a Rust test.

use std::process::Command;

/// Runs `script` (a path from the repository's root) with python3; it must exit 0 and print
/// "all passed".
pub fn run(script: &str) {
    let out = Command::new("python3")
        .arg(script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all passed"), "{stdout}");
}
