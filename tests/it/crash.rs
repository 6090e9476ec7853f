//! A 2xx means on disk: creates racing a SIGKILL, then a restart; every webhook that got a 201
//! reads back byte for byte the same. Also SIGTERM exits 0 and the next start is clean.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

#[test]
fn kill9_keeps_every_acknowledged_create() {
    let mut d = TestDaemon::start("");
    let addr = d.addr;
    let acked: Arc<Mutex<Vec<Value>>> = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..64)
        .map(|w| {
            let (acked, attempts, stop) = (acked.clone(), attempts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let mut body = webhook_body(&format!("actor-{w}"), "https://e.com/h");
                    body["description"] = Value::String(format!("worker {w} create {i}"));
                    if i % 3 == 0 {
                        body["idempotencyKey"] = Value::String(format!("k-{w}-{i}"));
                    }
                    let auth = format!("Bearer {ALICE_TOKEN}");
                    let Ok(r) = try_raw_request(
                        addr,
                        "POST",
                        "/v2/webhooks",
                        &[("Authorization", &auth), ("Content-Type", "application/json")],
                        body.to_string().as_bytes(),
                    ) else {
                        break; // the daemon is gone
                    };
                    if r.status == 201 {
                        acked.lock().unwrap().push(r.json()["data"].clone());
                    }
                }
            })
        })
        .collect();
    // Kill mid-way: once a good number of creates were acknowledged and more are in flight.
    wait_until(Duration::from_secs(60), "200 acknowledged creates", || {
        (acked.lock().unwrap().len() >= 200).then_some(())
    });
    d.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let tried = attempts.load(Ordering::SeqCst);
    assert!(tried > acked.len(), "the kill should interrupt some creates");

    d.restart();
    for w in &acked {
        let id = w["id"].as_str().unwrap();
        let r = d.req("GET", &format!("/v2/webhooks/{id}"), Some(ALICE_TOKEN), None);
        assert_eq!(r.status, 200, "acknowledged webhook {id} lost after kill -9");
        assert_eq!(r.json()["data"], *w, "webhook {id} changed across kill -9");
    }
    let total =
        d.req("GET", "/v2/webhooks?limit=1", Some(ALICE_TOKEN), None).json()["data"]["total"]
            .as_u64()
            .unwrap();
    assert!(total as usize >= acked.len());
    println!("kill -9: {} acknowledged, {} stored, {tried} attempted", acked.len(), total);
}

#[test]
fn sigterm_exits_zero_and_the_next_start_is_clean() {
    let mut d = TestDaemon::start("");
    let r = d.req(
        "POST",
        "/v2/webhooks",
        Some(ALICE_TOKEN),
        Some(&webhook_body("a", "https://e.com/h")),
    );
    assert_eq!(r.status, 201);
    let status = d.sigterm(Duration::from_secs(15)).expect("exits within 15 s");
    assert!(status.success(), "exit status {status:?}");
    assert!(d.log().contains("stopped cleanly"), "{}", d.log());
    d.restart();
    let id = r.json()["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(d.req("GET", &format!("/v2/webhooks/{id}"), Some(ALICE_TOKEN), None).status, 200);
}

#[test]
fn default_config_creates_the_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
            .current_dir(dir.path())
            .env("HOOKD_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(line.starts_with("ready listen=127.0.0.1:"), "{line:?}");
        let addr: std::net::SocketAddr =
            line.trim().trim_start_matches("ready listen=").parse().unwrap();
        (child, addr)
    };
    let (mut child, addr) = start();
    let token_path = dir.path().join("data/admin.token");
    let token = std::fs::read_to_string(&token_path).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(token.len() >= 32);
    let r = raw_request(
        addr,
        "GET",
        "/v2/webhooks",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["total"], 0);
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, _) = start();
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap().trim(),
        token,
        "token is written once"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bad_config_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[delivery]\ntimeout_msec = 5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timeout_msec"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .env("HOOKD_LIMITS_CONNECTIONS_MAX", "0")
        .env("HOOKD_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.connections_max"));
}

#[test]
fn systemd_readiness_and_stopping_are_notified() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .env("HOOKD_LISTEN", "127.0.0.1:0")
        .env("HOOKD_DATA_DIR", dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    send_signal(child.id(), "TERM");
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}
