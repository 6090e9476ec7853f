//! The web console: its files are served without a token under a strict Content-Security-Policy,
//! and `tests/console/e2e.js` drives it in Debian's chromium through playwright-core (installed
//! under target/ from tests/clients' lock): sign in, a template error shown inline, a webhook
//! made through the form, its failed dispatch with the receiver's answer, Redeliver to
//! SUCCEEDED, another user's ids unreachable, no request leaving the daemon's origin. Screenshots
//! of each page go to `target/console-screenshots/`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::clients::js_modules;
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

#[test]
fn the_console_is_served_without_a_token_under_a_strict_policy() {
    let d = TestDaemon::start("");
    let page = d.req("GET", "/console/", None, None);
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").unwrap_or("");
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(page.text().contains("console.js"));
    for (asset, kind) in [("console.js", "text/javascript"), ("console.css", "text/css")] {
        let r = d.req("GET", &format!("/console/{asset}"), None, None);
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap_or("").starts_with(kind));
        assert!(r.header("content-security-policy").is_some());
    }
    let r = d.req("GET", "/console", None, None);
    assert_eq!((r.status, r.header("location")), (308, Some("/console/")));
    let r = d.req("GET", "/console/secrets.txt", None, None);
    assert_eq!((r.status, r.error_type().as_str()), (404, "record-not-found"), "{}", r.text());
    // The overview's route: a token, then the version and the store.
    assert_eq!(d.req("GET", "/v2/hookd/status", None, None).status, 401);
    let status = d.req("GET", "/v2/hookd/status", Some(ALICE_TOKEN), None).json();
    assert_eq!(status["data"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["data"]["storeBackend"].is_string(), "{status}");
    // The page's script sets API texts as text only.
    let js = d.req("GET", "/console/console.js", None, None).text();
    assert!(!js.contains("innerHTML") && !js.contains("eval("));
}

/// Debian's chromium, installed by the test command where it can be; `None` (the test says it
/// is skipped) elsewhere, never under CI.
fn chromium() -> Option<&'static str> {
    let path = "/usr/bin/chromium";
    if Path::new(path).exists() {
        return Some(path);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have chromium (scripts/test installs it)");
    eprintln!(
        "SKIPPED: the console's browser test needs /usr/bin/chromium (apt-get install chromium)"
    );
    None
}

#[test]
fn the_console_in_a_browser_creates_shows_and_redelivers() {
    let Some(chromium) = chromium() else { return };
    let fixed = Arc::new(AtomicBool::new(false));
    let fix = fixed.clone();
    let rx = Receiver::start(0, move |req, _| {
        if req.path == "/fix" {
            fix.store(true, Ordering::SeqCst);
            return Reply::Status(200);
        }
        if fix.load(Ordering::SeqCst) {
            return Reply::Status(200);
        }
        let body = "receiver is down";
        let answer = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        Reply::Raw(answer.into_bytes(), Duration::ZERO)
    });
    let d = TestDaemon::start("[delivery]\nallow_private_targets = true\n");
    let shots = target_dir().join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let modules = js_modules();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/e2e.js");
    let out = Command::new("node")
        .arg(script)
        .env("NODE_PATH", &modules)
        .env("CHROMIUM", chromium)
        .env("HOOKD_URL", format!("http://{}", d.addr))
        .env("HOOKD_TOKEN", ALICE_TOKEN)
        .env("HOOKD_TOKEN2", BOB_TOKEN)
        .env("HOOKD_RECEIVER", rx.url("/hook"))
        .env("HOOKD_RECEIVER_FIX", rx.url("/fix"))
        .env("SCREENSHOTS", &shots)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}\ndaemon log:\n{}",
        d.log()
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    assert!(fixed.load(Ordering::SeqCst), "the receiver was never fixed");
    for page in [
        "sign-in",
        "overview",
        "webhook-form-error",
        "webhook",
        "dispatches",
        "dispatch-failed",
        "dispatch-succeeded",
    ] {
        assert!(shots.join(format!("{page}.png")).exists(), "no screenshot of {page}");
    }
    println!("{}", stdout.trim());
}
