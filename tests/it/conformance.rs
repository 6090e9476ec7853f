//! Apify's own OpenAPI description of the webhook routes (tests/conformance/), run against the
//! real daemon with schemathesis: generated valid and invalid requests on all 11 operations,
//! each answer checked for a listed status, a body matching the schema, and no 5xx.

use std::path::Path;
use std::process::Command;

use crate::clients::python_env_from;
use crate::support::*;

#[test]
fn apify_openapi_description_finds_no_violation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let python = python_env_from("schemathesis-env", &dir.join("requirements.txt"));
    let st = python.with_file_name("st");
    let d = TestDaemon::start("");
    let examples = std::env::var("HOOKD_CONFORMANCE_EXAMPLES").unwrap_or_else(|_| "50".into());
    let seed = std::env::var("HOOKD_CONFORMANCE_SEED").unwrap_or_else(|_| "1".into());
    let reports = tempfile::tempdir().unwrap();
    let out = Command::new(&st)
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(dir.join("webhooks.openapi.json"))
        .args(["--url", &format!("http://{}", d.addr)])
        .args(["-H", &format!("Authorization: Bearer {ALICE_TOKEN}")])
        .args(["--max-examples", &examples, "--seed", &seed, "--no-color"])
        .args(["--request-timeout", "30"])
        .current_dir(reports.path())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found violations:\n{text}");
    // It ran every operation of the description, not none.
    assert!(text.contains("Tested: 11"), "{text}");
    assert!(text.contains(" passed"), "{text}");
}
