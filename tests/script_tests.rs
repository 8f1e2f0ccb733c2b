//! Every `scripts/*.test.rhai` through the Rhai test runner: a failing script test fails here,
//! with the file, the test, the assertion and the line. The Redis examples' tests run against
//! a real `redis-server`, started here as their cluster `redis`.

#[allow(dead_code)]
#[path = "support/redis_server.rs"]
mod redis_server;

use std::path::{Path, PathBuf};

use proxy_rhai::testing::{find_test_files, run_file_with, Setup};

#[test]
fn every_script_test_passes() {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let files = find_test_files(&[scripts]).expect("scripts/ is readable");
    assert!(!files.is_empty(), "no scripts/*.test.rhai found");
    let mut failures = Vec::new();
    let mut passed = 0;
    let redis = redis_server::RedisServer::start();
    let setup = Setup {
        redis: vec![("redis".into(), redis.address())],
        engine: None,
    };
    for file in &files {
        let report = run_file_with(file, None, &setup);
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        if let Some(error) = &report.error {
            failures.push(format!("{name}: {error}"));
        }
        if report.tests.is_empty() && report.error.is_none() {
            failures.push(format!("{name}: no test_* function"));
        }
        for t in &report.tests {
            if let Some(why) = &t.failure {
                failures.push(format!("{name}: {}: {why}", t.name));
            }
        }
        passed += report.passed();
    }
    assert!(
        failures.is_empty(),
        "{} script test(s) failed ({passed} passed):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_script_has_its_tests() {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut untested: Vec<PathBuf> = std::fs::read_dir(&scripts)
        .expect("scripts/ is readable")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".rhai") && !name.ends_with(".test.rhai")
        })
        .filter(|p| !p.with_extension("test.rhai").exists())
        .collect();
    untested.sort();
    assert!(
        untested.is_empty(),
        "scripts without a .test.rhai: {untested:?}"
    );
}
