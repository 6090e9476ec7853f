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
    fresh_database_with(test, "")
}

/// Like [`fresh_database`], made with `options` after `CREATE DATABASE name`.
pub fn fresh_database_with(test: &str, options: &str) -> Option<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = server_url(test)?;
    let name = format!(
        "t_{}_{}_{}",
        test.replace(|c: char| !c.is_ascii_alphanumeric(), "_").to_lowercase(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let name: String = name.chars().take(60).collect();
    psql(&url, &format!("CREATE DATABASE {name} {options}"));
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

/// A PostgreSQL server of one test's own, in a temp dir on a free loopback port, for tests
/// that crash it; stopped and removed on drop.
pub struct PrivateServer {
    dir: PathBuf,
    port: u16,
}

impl PrivateServer {
    /// `None` (after saying so) where PostgreSQL is not available; panics under CI.
    pub fn start(test: &str) -> Option<PrivateServer> {
        server_url(test)?;
        let dir = std::env::temp_dir().join(format!(
            "hookd-pg-{}-{}",
            std::process::id(),
            test.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("make the server's dir");
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(&dir));
        }
        let data = dir.join("data");
        run(as_postgres(bin_dir().join("initdb")).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "hookd",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = PrivateServer { dir, port };
        server.resume();
        Some(server)
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://hookd@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it the way a power cut would: no checkpoint, no goodbye to the clients
    /// (`pg_ctl stop -m immediate`).
    pub fn crash(&self) {
        run(self.pg_ctl().args(["-m", "immediate", "-w", "-s", "stop"]));
    }

    /// Starts it (again) on its port.
    pub fn resume(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
            self.port,
            self.dir.display()
        );
        run(self
            .pg_ctl()
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-s", "-o", &options])
            .arg("start"));
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = as_postgres(bin_dir().join("pg_ctl"));
        cmd.arg("-D").arg(self.dir.join("data"));
        cmd
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl().args(["-m", "immediate", "-w", "-s", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `program`, run as the `postgres` user when the tests run as root (initdb refuses root).
fn as_postgres(program: PathBuf) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
