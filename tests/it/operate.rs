//! Operating the real binary: `hookd backup` under load and a start on the copy, `hookd
//! check`, store files copied with `cp` while the daemon writes and truncated ones (each opens
//! with every record readable or is refused with a message; nothing panics), SIGHUP reloading
//! users with requests in flight, `hookd --help`, and a start after kill -9 before any write.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::receiver::{Receiver, Reply, eventually};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

fn hookd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hookd")).args(args).output().expect("run hookd")
}

/// `hookd check FILE`: (exit code, output). A panic would be exit code 101.
fn check(file: &Path) -> (i32, String) {
    let out = hookd(&["check", file.to_str().unwrap()]);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Sets `stop` when dropped, so a failing assertion in a scope ends its load threads too
/// (a scope waits for them before it reports the panic).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Posts single events from a thread until `stop`; returns the ids of the events acknowledged.
fn load(d: &TestDaemon, stop: &AtomicBool, acked: &Mutex<Vec<(Instant, String)>>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let e = run_event("ACTOR.RUN.SUCCEEDED", "a", None, &format!("run-{n}"));
        let r = d.req("POST", "/v2/webhook-events", Some(ALICE_TOKEN), Some(&e));
        if r.status == 202 {
            let id = r.json()["data"]["dispatchIds"][0].as_str().unwrap().to_string();
            acked.lock().unwrap().push((Instant::now(), id));
        }
    }
}

#[test]
fn backup_under_load_then_restore_delivers_everything_acknowledged_before_it() {
    // The target hangs while the first daemon runs: every dispatch stays due, none recorded.
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let rx = Receiver::start(0, move |_, _| {
        if flag.load(Ordering::Relaxed) {
            Reply::Status(200)
        } else {
            Reply::Hang(Duration::from_secs(120))
        }
    });
    let mut d = TestDaemon::start(
        "[delivery]\nallow_private_targets = true\nper_target_inflight_max = 2\ntimeout_ms = 600000\n[limits]\nshutdown_grace_ms = 100\n",
    );
    d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/hook")));
    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Vec::new());
    let backup = d.dir.path().join("copy.redb");
    let started = std::thread::scope(|s| {
        s.spawn(|| load(&d, &stop, &acked));
        s.spawn(|| load(&d, &stop, &acked));
        let _stop = StopOnDrop(&stop);
        eventually(WAIT, "some load", || acked.lock().unwrap().len() >= 200);
        let started = Instant::now();
        let out = hookd(&[
            "backup",
            "--to",
            backup.to_str().unwrap(),
            "--config",
            d.config_path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
        // The load goes on a little after the backup.
        eventually(WAIT, "more load", || acked.lock().unwrap().len() >= 400);
        stop.store(true, Ordering::Relaxed);
        started
    });
    let before: Vec<String> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t < started)
        .map(|(_, id)| id.clone())
        .collect();
    assert!(before.len() >= 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the backup holds secrets");
    let leftovers: Vec<_> = std::fs::read_dir(d.data_dir().join("backups")).unwrap().collect();
    assert!(leftovers.is_empty(), "the daemon's copy is moved, not left behind");
    let (code, text) = check(&backup);
    assert_eq!(code, 0, "{text}");
    d.kill9();

    // Restore: a daemon on the copy; the target answers now.
    up.store(true, Ordering::Relaxed);
    let restored =
        TestDaemon::start_on_store("[delivery]\nallow_private_targets = true\n", &backup);
    let got = || -> HashSet<String> {
        rx.received()
            .iter()
            .filter_map(|r| r.header("x-apify-webhook-dispatch-id").map(String::from))
            .collect()
    };
    wait_until(WAIT, "every dispatch acknowledged before the backup to arrive", || {
        let got = got();
        before.iter().all(|id| got.contains(id)).then_some(())
    });
    for id in &before {
        assert_eq!(restored.dispatch(ALICE_TOKEN, id)["status"], "SUCCEEDED");
    }
}

/// Starts the binary on a copy of `store`: `Ok(addr)` once ready, `Err((exit code, stderr))`
/// if it exits first.
fn start_on(store: &Path, dir: &Path) -> Result<(std::process::Child, SocketAddr), (i32, String)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(store, data.join("hookd.redb")).unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[[users]]\nid = \"{ALICE}\"\ntoken = \"{ALICE_TOKEN}\"\n",
        data.display()
    );
    std::fs::write(dir.join("hookd.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["--config", dir.join("hookd.toml").to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    if let Some(addr) = line.trim().strip_prefix("ready listen=") {
        return Ok((child, addr.parse().unwrap()));
    }
    let out = child.wait_with_output().unwrap();
    Err((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// Every webhook and dispatch listed is readable by id.
fn all_readable(addr: SocketAddr) -> usize {
    let auth = format!("Bearer {ALICE_TOKEN}");
    let get = |path: &str| {
        let r = raw_request(addr, "GET", path, &[("Authorization", auth.as_str())], b"");
        assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let hooks = get("/v2/webhooks?limit=1000");
    for w in hooks["data"]["items"].as_array().unwrap() {
        get(&format!("/v2/webhooks/{}", w["id"].as_str().unwrap()));
    }
    let mut n = 0;
    let mut offset = 0;
    loop {
        let page = get(&format!("/v2/webhook-dispatches?limit=1000&offset={offset}"));
        let items = page["data"]["items"].as_array().unwrap().clone();
        if items.is_empty() {
            return n;
        }
        for d in &items {
            get(&format!("/v2/webhook-dispatches/{}", d["id"].as_str().unwrap()));
            n += 1;
        }
        offset += items.len();
    }
}

/// A daemon started by a test, killed when the test lets go of it (or panics).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Each damaged file is either opened whole or refused with a message; never a panic.
fn opens_or_is_refused(file: &Path, what: &str) -> bool {
    let (code, text) = check(file);
    assert!(code == 0 || code == 1, "{what}: check exited {code}: {text}");
    assert!(!text.contains("panicked"), "{what}: {text}");
    let dir = tempfile::tempdir().unwrap();
    match start_on(file, dir.path()) {
        Ok((child, addr)) => {
            // Killed however this ends, a failed assertion included.
            let _running = KillOnDrop(child);
            all_readable(addr);
            true
        }
        Err((code, stderr)) => {
            assert_eq!(code, 1, "{what}: exit {code}: {stderr}");
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
            assert!(stderr.contains("store"), "{what}: the message names the store: {stderr}");
            assert_ne!(check(file).0, 0, "{what}: refused at start, so check flags it");
            false
        }
    }
}

#[test]
fn copies_of_a_live_store_and_truncated_files_open_whole_or_are_refused() {
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let mut d = TestDaemon::start("[delivery]\nallow_private_targets = true\n");
    d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/hook")));
    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Vec::new());
    let live = d.data_dir().join("hookd.redb");
    let mut copies: Vec<PathBuf> = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| load(&d, &stop, &acked));
        let _stop = StopOnDrop(&stop);
        for i in 0..16 {
            eventually(WAIT, "load", || acked.lock().unwrap().len() >= 100 + 25 * i);
            let copy = d.dir.path().join(format!("cp-{i}.redb"));
            // A plain cp of the file while the daemon writes to it.
            let status = Command::new("cp").arg(&live).arg(&copy).status().unwrap();
            assert!(status.success());
            copies.push(copy);
        }
        stop.store(true, Ordering::Relaxed);
    });
    // The worst a cp can do, made certain: the first page (the header, naming a commit) of an
    // earlier copy, the rest of a later copy of the same length, whose commits reused pages
    // that commit names.
    let mut torn = Vec::new();
    for (i, early) in copies.iter().enumerate() {
        let early = std::fs::read(early).unwrap();
        let Some(late) = copies[i + 1..]
            .iter()
            .rev()
            .map(|c| std::fs::read(c).unwrap())
            .find(|late| late.len() == early.len())
        else {
            continue;
        };
        let mut spliced = early[..4096].to_vec();
        spliced.extend_from_slice(&late[4096..]);
        let path = d.dir.path().join(format!("spliced-{i}.redb"));
        std::fs::write(&path, spliced).unwrap();
        torn.push(path);
    }
    assert!(!torn.is_empty(), "copies of the same length to splice");
    copies.extend(torn);
    // And one certain to hold pages that do not check: a live copy whose dispatch state
    // records (the only records that begin `{"webhook_id"`) all have a version byte flipped.
    // Opened unverified, its dispatches would answer 500; verified, it is refused.
    let mut rotted = std::fs::read(&copies[0]).unwrap();
    let pattern = b"\x01{\"webhook_id\":\"";
    let mut flipped = 0;
    for at in 0..rotted.len().saturating_sub(pattern.len()) {
        if rotted[at..].starts_with(pattern) {
            rotted[at] = 9;
            flipped += 1;
        }
    }
    assert!(flipped > 0, "state records found");
    let rotted_path = d.dir.path().join("rotted.redb");
    std::fs::write(&rotted_path, rotted).unwrap();
    copies.push(rotted_path);
    for (i, copy) in copies.iter().enumerate() {
        opens_or_is_refused(copy, &format!("live copy {i}"));
    }
    // A cleanly closed file, truncated at seeded points.
    assert!(d.sigterm(Duration::from_secs(10)).is_some_and(|s| s.success()));
    let whole = std::fs::read(&live).unwrap();
    let (code, text) = check(&live);
    assert_eq!(code, 0, "{text}");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut refused = 0;
    for i in 0..16 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = match i {
            0 => 0,
            1 => 100,
            _ => (seed % whole.len() as u64) as usize,
        };
        let cut = d.dir.path().join(format!("cut-{i}.redb"));
        std::fs::write(&cut, &whole[..at]).unwrap();
        if !opens_or_is_refused(&cut, &format!("truncated at {at} of {}", whole.len())) {
            refused += 1;
        }
    }
    assert!(refused >= 1, "some truncations must be refused");
}

#[test]
fn sighup_reloads_users_without_dropping_a_request() {
    let mut d = TestDaemon::start("");
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let answered = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match try_raw_request(
                        d.addr,
                        "GET",
                        "/v2/webhooks",
                        &[("Authorization", &format!("Bearer {ALICE_TOKEN}"))],
                        b"",
                    ) {
                        Ok(r) if r.status == 200 => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        eventually(WAIT, "requests", || answered.load(Ordering::Relaxed) > 50);
        // Bob is replaced by carol; alice stays.
        let config = std::fs::read_to_string(d.config_path()).unwrap().replace(
            &format!("id = \"{BOB}\"\ntoken = \"{BOB_TOKEN}\""),
            "id = \"carol\"\ntoken = \"tok-carol-0123456789\"",
        );
        std::fs::write(d.config_path(), config).unwrap();
        send_signal(d.pid(), "HUP");
        eventually(WAIT, "carol's token to work", || {
            d.req("GET", "/v2/webhooks", Some("tok-carol-0123456789"), None).status == 200
        });
        let before = answered.load(Ordering::Relaxed);
        eventually(WAIT, "more requests after the reload", || {
            answered.load(Ordering::Relaxed) > before + 50
        });
        stop.store(true, Ordering::Relaxed);
    });
    assert!(failures.lock().unwrap().is_empty(), "{:?}", failures.lock().unwrap());
    assert_eq!(d.req("GET", "/v2/webhooks", Some(BOB_TOKEN), None).status, 401);
    // A config that does not load changes nothing.
    std::fs::write(d.config_path(), "this is = = not toml").unwrap();
    send_signal(d.pid(), "HUP");
    eventually(WAIT, "the failed reload to be logged", || d.log().contains("config not reloaded"));
    assert_eq!(d.req("GET", "/v2/webhooks", Some("tok-carol-0123456789"), None).status, 200);
    assert!(d.sigterm(Duration::from_secs(10)).is_some_and(|s| s.success()));
}

#[test]
fn help_lists_the_subcommands_settings_and_files() {
    let out = hookd(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "serve",
        "backup --to FILE",
        "check FILE",
        "--config",
        "HOOKD_<SECTION>_<KEY>",
        "HOOKD_RETENTION_",
        "HOOKD_LOG_LEVEL",
        "RUST_LOG",
        "hookd.redb",
        "admin.token",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn a_kill_right_after_a_start_leaves_no_long_repair() {
    // A store of some size, closed cleanly.
    let mut d = TestDaemon::start("[delivery]\nallow_private_targets = true\n");
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/hook")));
    let mut pad = webhook_body("a", &rx.url("/hook"));
    pad["payloadTemplate"] = json!(format!("{{\"pad\":\"{}\"}}", "x".repeat(30_000)));
    d.create_webhook(ALICE_TOKEN, &pad);
    for _ in 0..20 {
        let events: Vec<Value> =
            (0..100).map(|_| run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r")).collect();
        d.post_events(ALICE_TOKEN, &json!(events));
    }
    eventually(WAIT, "deliveries", || rx.count() == 4000);
    assert!(d.sigterm(Duration::from_secs(10)).is_some_and(|s| s.success()));
    // Start, kill -9 at once (no write after the start), start again.
    d.restart();
    d.kill9();
    let started = Instant::now();
    d.restart();
    let ready = started.elapsed();
    assert!(!d.log().contains("repairing"), "a full repair ran:\n{}", d.log());
    // The file the killed run left is trusted as a crash in place, not verified as a copy.
    assert!(!d.log().contains("verifying every page"), "verified:\n{}", d.log());
    assert!(ready < Duration::from_secs(2), "ready after {ready:?}");
}
