//! The README's snippets run as written against the daemon started by its run command's
//! defaults (no users: the `admin` token in `data/admin.token`, in the current directory).
//! Only the address differs: the test's daemon listens on a free port instead of 8080.

use std::path::Path;
use std::process::Command;

use crate::clients::{js_modules, python_env};
use crate::support::start_on_defaults;

/// The fenced blocks of README.md: (language, text).
fn snippets() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (line.strip_prefix("```"), current.take()) {
            (Some(lang), None) => current = Some((lang.trim().to_string(), String::new())),
            (Some(_), Some(block)) => out.push(block),
            (None, Some((lang, mut body))) => {
                body.push_str(line);
                body.push('\n');
                current = Some((lang, body));
            }
            (None, None) => {}
        }
    }
    out
}

/// Runs `cmd` in `dir`; its output on success.
fn run_in(dir: &Path, mut cmd: Command, what: &str) -> String {
    let out = cmd.current_dir(dir).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

#[test]
fn readme_snippets_run_as_written() {
    let (python, modules) = (python_env(), js_modules());
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_on_defaults(dir.path());
    let addr = addr.to_string();
    let blocks = snippets();
    let with_addr = |text: &str| text.replace("127.0.0.1:8080", &addr);
    let mut ran = Vec::new();
    for (lang, text) in &blocks {
        let text = with_addr(text);
        match lang.as_str() {
            "python" => {
                let mut cmd = Command::new(&python);
                cmd.args(["-c", &text]);
                let out = run_in(dir.path(), cmd, "the README's Python snippet");
                assert!(out.contains("https://example.com/hook"), "{out}");
                ran.push("python");
            }
            "js" => {
                let mut cmd = Command::new("node");
                cmd.args(["-e", &text]).env("NODE_PATH", &modules);
                let out = run_in(dir.path(), cmd, "the README's JS snippet");
                assert!(
                    out.contains("1 webhooks"),
                    "the Python snippet's webhook is listed: {out}"
                );
                ran.push("js");
            }
            "sh" if text.contains("backend = \"postgres\"") => {
                ran.extend(run_two_nodes(&text).then_some("two nodes"));
            }
            "sh" if text.contains("curl") => {
                let mut cmd = Command::new("bash");
                cmd.args(["-euo", "pipefail", "-c", &text]);
                let out = run_in(dir.path(), cmd, "the README's curl snippet");
                assert!(
                    out.contains("dispatchIds") && out.contains("\"status\":\"SUCCEEDED\""),
                    "{out}"
                );
                ran.push("curl");
            }
            _ => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut expected = vec!["python", "js", "curl"];
    if crate::support::postgres::server_url("readme").is_some() {
        expected.push("two nodes");
    }
    assert_eq!(ran, expected, "every runnable snippet ran, in order");
}

/// The two-node snippet, on a fresh database of the test PostgreSQL, with free ports and the
/// binary under test; `false` where PostgreSQL is not available.
fn run_two_nodes(text: &str) -> bool {
    let Some(url) = crate::support::postgres::fresh_database("readme_two_nodes") else {
        return false;
    };
    let free_port = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port().to_string()
    };
    let text = text
        .replace("postgres://hookd@127.0.0.1:5432/hookd", &url)
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{}", free_port()))
        .replace("target/release/hookd", env!("CARGO_BIN_EXE_hookd"));
    let dir = tempfile::tempdir().unwrap();
    // Bounded, and no node outlives a failed step.
    let mut cmd = Command::new("timeout");
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{text}\nwait");
    cmd.args(["60", "bash", "-euo", "pipefail", "-c", &script]);
    let out = run_in(dir.path(), cmd, "the README's two-node snippet");
    let id = out.split("\"id\":\"").nth(1).and_then(|rest| rest.get(..17)).unwrap_or("?");
    assert_eq!(out.matches(id).count(), 2, "the other node lists the webhook: {out}");
    assert_eq!(out.matches("\"total\":1").count(), 1, "{out}");
    true
}
