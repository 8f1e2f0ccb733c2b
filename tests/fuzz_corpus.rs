//! Replays the fuzzers' seed corpora and every crash they found, without the fuzzer: each file
//! of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the same target
//! function `cargo fuzz` runs (`fuzz/src/lib.rs`, included here), which must not panic.
//! How to fuzz: `fuzz/README.md`.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

/// Every file under `fuzz/<dir>/<target>/`, with its target's name.
fn inputs(dir: &str) -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut found = Vec::new();
    let Ok(targets) = fs::read_dir(&root) else {
        return found;
    };
    for target in targets.flatten() {
        let name = target.file_name().to_string_lossy().into_owned();
        let Ok(files) = fs::read_dir(target.path()) else {
            continue;
        };
        for file in files.flatten() {
            if file.path().is_file() && !file.file_name().to_string_lossy().starts_with('.') {
                found.push((name.clone(), file.path()));
            }
        }
    }
    found.sort();
    found
}

/// Runs every input, and reports all that panicked (or name no target) at once.
fn replay(dir: &str) -> usize {
    let inputs = inputs(dir);
    let mut failures = Vec::new();
    for (target, path) in &inputs {
        let data = fs::read(path).unwrap();
        match panic::catch_unwind(|| targets::run_target(target, &data)) {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{}: no fuzz target {target:?}", path.display())),
            Err(e) => {
                let message = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: panicked: {message}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    inputs.len()
}

#[test]
fn seed_corpora_run_clean() {
    let count = replay("corpus");
    for (target, _) in targets::TARGETS {
        let seeds = inputs("corpus").iter().filter(|(t, _)| t == target).count();
        assert!(seeds > 0, "fuzz/corpus/{target}/ has no seed");
    }
    assert!(count > 0);
}

#[test]
fn regressions_stay_fixed() {
    replay("regressions");
}
