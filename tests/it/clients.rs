//! The official Apify clients against the real daemon: the Python `apify-client` 3.4.0 (in a
//! virtualenv under target/) and the JS `apify-client` 2.25.0 (npm, under target/), both
//! installed here from the pinned lists in tests/clients/ on first use (the same lists pin the
//! Standard Webhooks verifiers and the metrics parser).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A virtualenv with the pinned Python client; reinstalled when requirements.txt changes.
pub fn python_env() -> PathBuf {
    python_env_from("pyenv", &clients_dir().join("requirements.txt"))
}

/// A virtualenv `target/<name>` with the packages pinned in `requirements`; reinstalled when
/// that list changes.
pub fn python_env_from(name: &str, requirements: &Path) -> PathBuf {
    // Tests run in parallel: one of them installs, the others wait for it.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let venv = target_dir().join(name);
    let pinned = std::fs::read_to_string(requirements).unwrap();
    let marker = venv.join("installed-requirements.txt");
    let python = venv.join("bin/python");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(pinned.as_str()) || !python.exists()
    {
        run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv), "python3 -m venv");
        run(
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(requirements),
            "pip install",
        );
        std::fs::write(&marker, &pinned).unwrap();
    }
    python
}

/// node_modules with the pinned JS client; reinstalled when the lock file changes.
pub fn js_modules() -> PathBuf {
    // Tests run in parallel: one of them installs, the others wait for it (an `npm ci` under
    // way empties node_modules first).
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = target_dir().join("jsclient");
    let lock = std::fs::read_to_string(clients_dir().join("package-lock.json")).unwrap();
    let marker = dir.join("installed-lock.json");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(lock.as_str()) {
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(clients_dir().join(f), dir.join(f)).unwrap();
        }
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--silent"])
                .current_dir(&dir),
            "npm ci",
        );
        std::fs::write(&marker, &lock).unwrap();
    }
    dir.join("node_modules")
}

/// Delivery settings for the suites: their receiver is on loopback.
const DAEMON_CONFIG: &str =
    "[delivery]\nallow_private_targets = true\nretry_delays_ms = [20, 20, 20]\n";

fn run_suite(mut cmd: Command, d: &TestDaemon, rx: &Receiver, what: &str) {
    cmd.env("HOOKD_URL", format!("http://{}", d.addr))
        .env("HOOKD_RECEIVER", rx.url("/hook"))
        .env("HOOKD_TOKEN", ALICE_TOKEN)
        .env("HOOKD_TOKEN2", BOB_TOKEN);
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}\ndaemon log:\n{}", d.log());
    assert!(stdout.contains("checks passed"), "{what} printed no result: {stdout}");
    println!("{}", stdout.trim());
}

#[test]
fn official_python_client() {
    let python = python_env();
    let d = TestDaemon::start(DAEMON_CONFIG);
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let mut cmd = Command::new(python);
    cmd.arg(clients_dir().join("python_suite.py"));
    run_suite(cmd, &d, &rx, "python client suite");
    // The suite's large templates must have arrived compressed, as the client does it.
    assert!(d.log().contains("encoding=\"gzip\""), "no gzip body seen:\n{}", d.log());
    assert!(d.log().contains("encoding=\"br\""), "no brotli body seen:\n{}", d.log());
}

#[test]
fn official_js_client() {
    let modules = js_modules();
    let d = TestDaemon::start(DAEMON_CONFIG);
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let mut cmd = Command::new("node");
    cmd.arg(clients_dir().join("js_suite.js")).env("NODE_PATH", modules);
    run_suite(cmd, &d, &rx, "js client suite");
    assert!(d.log().contains("encoding=\"br\""), "no brotli body seen:\n{}", d.log());
}

/// The daemon's config for a test on PostgreSQL (a fresh database); `None` where there is none.
pub fn on_postgres(test: &str, config: &str) -> Option<String> {
    let url = crate::support::postgres::fresh_database(test)?;
    Some(format!("{config}\n[store]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n"))
}

/// The Python suite against a daemon on PostgreSQL.
#[test]
fn official_python_client_on_postgres() {
    let Some(config) = on_postgres("python_client", DAEMON_CONFIG) else { return };
    let python = python_env();
    let d = TestDaemon::start(&config);
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let mut cmd = Command::new(python);
    cmd.arg(clients_dir().join("python_suite.py"));
    run_suite(cmd, &d, &rx, "python client suite on PostgreSQL");
}

/// The JS suite against a daemon on PostgreSQL.
#[test]
fn official_js_client_on_postgres() {
    let Some(config) = on_postgres("js_client", DAEMON_CONFIG) else { return };
    let modules = js_modules();
    let d = TestDaemon::start(&config);
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let mut cmd = Command::new("node");
    cmd.arg(clients_dir().join("js_suite.js")).env("NODE_PATH", modules);
    run_suite(cmd, &d, &rx, "js client suite on PostgreSQL");
}
