//! PostgreSQL for the tests: a fresh database per test on the server the test command started
//! (`scripts/postgres` exports its URL), or, for tests that stop and crash it, a private server.
//! Without PostgreSQL a test says it is skipped; under CI (`CI` set) that is a failure instead.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's URL from the test command, or `None` (after saying so) where PostgreSQL is
/// not available. Panics under CI, which must run every test.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var("HOOKD_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: HOOKD_TEST_POSTGRES_URL is not set; run the tests with `bash scripts/test`"
            );
            eprintln!("{test}: skipped: no PostgreSQL (run `bash scripts/test`, which starts one)");
            None
        }
    }
}

/// A new, empty database on the test server; its URL. `None` where PostgreSQL is missing.
pub fn fresh_database(test: &str) -> Option<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = server_url(test)?;
    let name = format!(
        "t_{}_{}_{}",
        test.replace(|c: char| !c.is_ascii_alphanumeric(), "_").to_lowercase(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let name: String = name.chars().take(60).collect();
    psql(&url, &format!("CREATE DATABASE {name}"));
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b).to_string();
    Some(format!("{base}/{name}"))
}

/// Runs one SQL command with psql; panics with its output if it fails.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new(bin_dir().join("psql"))
        .args([url, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// PostgreSQL's programs (initdb, pg_ctl, psql).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOOKD_TEST_POSTGRES_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from("/usr/bin"))
}
