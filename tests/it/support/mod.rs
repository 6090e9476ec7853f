//! Test support: the real `hookd` binary on a temp data dir (`TestDaemon`), a raw HTTP/1.1
//! client over a TCP stream, and polling with a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod postgres;
pub mod receiver;

pub const ALICE: &str = "alice";
pub const ALICE_TOKEN: &str = "tok-alice-0123456789";
pub const BOB: &str = "bob";
pub const BOB_TOKEN: &str = "tok-bob-0123456789";

/// The cargo target directory (the binary lives in target/<profile>/hookd).
pub fn target_dir() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_hookd"));
    bin.parent().and_then(Path::parent).expect("binary is in target/<profile>/").to_path_buf()
}

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    child: Option<Child>,
    extra_config: String,
    log_filter: String,
}

impl TestDaemon {
    /// Starts the daemon with users alice and bob and `extra_config` appended to its config.
    pub fn start(extra_config: &str) -> TestDaemon {
        TestDaemon::start_logging(extra_config, "hookd=debug")
    }

    /// Like [`TestDaemon::start`], on a copy of the store file `store` (a fixture).
    pub fn start_on_store(extra_config: &str, store: &Path) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::copy(store, data.join("hookd.redb")).expect("copy the store");
        let mut d = TestDaemon {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: None,
            extra_config: extra_config.to_string(),
            log_filter: "hookd=debug".to_string(),
        };
        d.spawn();
        d
    }

    /// Like [`TestDaemon::start`], with `RUST_LOG` set to `log_filter`.
    ///
    /// With `HOOKD_TEST_BACKEND=postgres` (the test command's second pass over the API
    /// scenarios), a daemon whose config names no store runs on a fresh PostgreSQL database,
    /// its leases lapsing after 5 s (not 15) so that a restarted daemon takes over soon.
    pub fn start_logging(extra_config: &str, log_filter: &str) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut extra_config = extra_config.to_string();
        if std::env::var("HOOKD_TEST_BACKEND").is_ok_and(|b| b == "postgres")
            && !extra_config.contains("[store]")
        {
            let url = postgres::fresh_database("scenario")
                .expect("HOOKD_TEST_BACKEND=postgres needs the test command's PostgreSQL");
            extra_config.push_str(&format!(
                "\n[store]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\nlease_ttl_ms = 5000\n"
            ));
        }
        let mut d = TestDaemon {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: None,
            extra_config,
            log_filter: log_filter.to_string(),
        };
        d.spawn();
        d
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("hookd.toml")
    }

    /// Whether this daemon runs on PostgreSQL (no store file in its data dir).
    pub fn on_postgres(&self) -> bool {
        self.extra_config.contains("backend = \"postgres\"")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[[users]]\nid = \"{ALICE}\"\ntoken = \"{ALICE_TOKEN}\"\n\n[[users]]\nid = \"{BOB}\"\ntoken = \"{BOB_TOKEN}\"\n\n{}\n",
            self.data_dir().display(),
            self.extra_config
        );
        std::fs::write(self.config_path(), config).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hookd.log"))
            .expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookd"))
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", &self.log_filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn hookd");
        let stdout = child.stdout.take().expect("stdout");
        self.child = Some(child);
        self.addr = wait_ready(stdout).unwrap_or_else(|e| panic!("{e}\nlog:\n{}", self.log()));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hookd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A line of /proc/PID/status in kB (e.g. "VmHWM", the peak resident set).
    pub fn proc_status_kb(&self, field: &str) -> u64 {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `within` for the exit.
    pub fn sigterm(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        send_signal(c.id(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn req(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Resp {
        let mut headers = Vec::new();
        let auth;
        if let Some(t) = token {
            auth = format!("Bearer {t}");
            headers.push(("Authorization", auth.as_str()));
        }
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        raw_request(self.addr, method, path, &headers, &bytes)
    }
}

impl TestDaemon {
    /// A dispatch as the API shows it (`data`), or panics.
    pub fn dispatch(&self, token: &str, id: &str) -> Value {
        let r = self.req("GET", &format!("/v2/webhook-dispatches/{id}"), Some(token), None);
        assert_eq!(r.status, 200, "dispatch {id}: {:?}", String::from_utf8_lossy(&r.body));
        r.json()["data"].clone()
    }

    /// Waits until dispatch `id` has ended (SUCCEEDED or FAILED) and returns it.
    pub fn wait_ended(&self, token: &str, id: &str, within: Duration) -> Value {
        wait_until(within, &format!("dispatch {id} to end"), || {
            let d = self.dispatch(token, id);
            (d["status"] != "ACTIVE").then_some(d)
        })
    }

    /// Creates a webhook from `body` for the user of `token`; returns its id.
    pub fn create_webhook(&self, token: &str, body: &Value) -> String {
        let r = self.req("POST", "/v2/webhooks", Some(token), Some(body));
        assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
        r.json()["data"]["id"].as_str().unwrap().to_string()
    }

    /// Every dispatch of the user as the list route shows it, page by page.
    pub fn all_dispatches(&self, token: &str) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let path = format!("/v2/webhook-dispatches?limit=1000&offset={}", all.len());
            let page = self.req("GET", &path, Some(token), None).json();
            let items = page["data"]["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return all;
            }
            all.extend(items);
        }
    }

    /// Waits until none of the user's dispatches is ACTIVE, so that none will be called again,
    /// and returns the calls stored over all of them: once this returns, a receiver's count is
    /// final (the stored state says so; no sleep).
    pub fn wait_all_ended(&self, token: &str, within: Duration) -> usize {
        wait_until(within, "every dispatch to end", || {
            let page = self.req("GET", "/v2/webhook-dispatches?limit=1000", Some(token), None);
            let items = page.json()["data"]["items"].as_array()?.clone();
            if items.iter().any(|i| i["status"] == "ACTIVE") {
                return None;
            }
            let calls = items.iter().map(|i| {
                let id = i["id"].as_str().unwrap_or_default();
                self.dispatch(token, id)["calls"].as_array().map_or(0, Vec::len)
            });
            Some(calls.sum())
        })
    }

    /// Posts events; returns the 202 answer's `data`.
    pub fn post_events(&self, token: &str, body: &Value) -> Value {
        let r = self.req("POST", "/v2/webhook-events", Some(token), Some(body));
        assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
        r.json()["data"].clone()
    }
}

/// Every event type a webhook can subscribe to.
pub fn all_event_types() -> Value {
    serde_json::json!([
        "ACTOR.RUN.CREATED",
        "ACTOR.RUN.SUCCEEDED",
        "ACTOR.RUN.FAILED",
        "ACTOR.RUN.ABORTED",
        "ACTOR.RUN.TIMED_OUT",
        "ACTOR.RUN.RESURRECTED",
        "ACTOR.BUILD.CREATED",
        "ACTOR.BUILD.SUCCEEDED",
        "ACTOR.BUILD.FAILED",
        "ACTOR.BUILD.ABORTED",
        "ACTOR.BUILD.TIMED_OUT"
    ])
}

/// A run event of `actor` (run `run`, optionally from `task`).
pub fn run_event(event_type: &str, actor: &str, task: Option<&str>, run: &str) -> Value {
    let mut data = serde_json::json!({"actorId": actor, "actorRunId": run});
    if let Some(t) = task {
        data["actorTaskId"] = Value::String(t.to_string());
    }
    serde_json::json!({
        "eventType": event_type,
        "eventData": data,
        "resource": {"id": run, "actId": actor, "status": "SUCCEEDED"},
    })
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `kill -SIG pid` (the unsafe-free way to send a signal).
pub fn send_signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid} failed");
}

fn wait_ready(stdout: std::process::ChildStdout) -> Result<SocketAddr, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep draining so the daemon never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Some(Ok(line))) => line
            .strip_prefix("ready listen=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}")),
        Ok(other) => Err(format!("daemon exited before the ready line: {other:?}")),
        Err(_) => Err("no ready line within 20 s".into()),
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `error.type` of an error body.
    pub fn error_type(&self) -> String {
        self.json()["error"]["type"].as_str().unwrap_or("").to_string()
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_raw_request(addr, method, path, headers, body).expect("request failed")
}

pub fn try_raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    // The server may answer (413) before reading the whole body: a write error is fine then.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!("bad response {:?}", String::from_utf8_lossy(&raw)))
    })
}

fn parse_response(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':').map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Some(Resp { status, headers, body })
}

/// Polls `f` until it returns `Some`, or panics after `within` with the last state seen.
pub fn wait_until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the binary with no config file in `dir` (its built-in defaults: data in `./data`, the
/// `admin` user), on a free port; returns the process and the address of its ready line.
pub fn start_on_defaults(dir: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .current_dir(dir)
        .env("HOOKD_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hookd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    assert!(line.starts_with("ready listen=127.0.0.1:"), "{line:?}");
    let addr = line.trim().trim_start_matches("ready listen=").parse().expect("address");
    (child, addr)
}

/// A webhook create body.
pub fn webhook_body(actor: &str, url: &str) -> Value {
    serde_json::json!({
        "eventTypes": ["ACTOR.RUN.SUCCEEDED"],
        "condition": {"actorId": actor},
        "requestUrl": url,
    })
}
