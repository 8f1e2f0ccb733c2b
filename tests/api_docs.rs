//! api-docs/ is generated from the binding layer: these tests fail when the checked-in files
//! are out of date, when a binding is not documented, or when an example does not hold up.
//! `cargo run -- docs` (or `proxy-rhai docs`) brings the files up to date.

use std::path::Path;

use proxy_rhai::check::check;
use proxy_rhai::docs;
use proxy_rhai::emulator::EmulatorHost;
use proxy_rhai::plugin::api_reference;

#[test]
fn checked_in_api_docs_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(docs::DIR);
    let differences = docs::differences(&dir);
    assert!(
        differences.is_empty(),
        "api-docs/ is out of date; run `cargo run -- docs` and commit the result:\n{}",
        differences.join("\n")
    );
}

#[test]
fn every_registered_function_is_documented() {
    let missing = docs::undocumented();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn every_function_has_an_example_that_checks_clean() {
    let mut problems = Vec::new();
    for doc in api_reference(EmulatorHost::default()) {
        if doc.example.is_empty() {
            problems.push(format!("{}: no example (add one to its bind!)", doc.name));
            continue;
        }
        let config = serde_json::json!({"config": {}});
        for d in check(doc.example, &config) {
            problems.push(format!("{}: example {d}", doc.name));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reference_covers_every_function_and_constant() {
    let (_, readme) = docs::generate()
        .into_iter()
        .find(|(path, _)| path == "README.md")
        .expect("README.md is generated");
    for doc in api_reference(EmulatorHost::default()) {
        for name in doc.name.split(" / ") {
            assert!(
                readme.contains(&format!("`{name}(")),
                "{name} is not in README.md"
            );
        }
    }
    for c in proxy_rhai::bindings::CONSTANTS.iter() {
        assert!(readme.contains(&format!("### `{}`", c.name)), "{}", c.name);
    }
}
