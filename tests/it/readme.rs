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
    assert_eq!(ran, ["python", "js", "curl"], "every runnable snippet ran, in order");
}
