//! The load benchmark: starts the release daemon on a temp data dir, its own receiver and load
//! generator on loopback, runs a named scenario for a bounded time and prints one table.
//! It also measures a trivial hyper server (answering 202) with the same load generator, and
//! prints hookd's ingest rate as a share of it.
//!
//!   cargo bench --bench load -- [burst|batch|steady|fanout|many-webhooks|backlog|all|smoke|soak]
//!
//! `smoke` is a few-second run of every scenario at tiny sizes (part of the test command, so the
//! benchmark cannot rot); it checks only that numbers were produced.
//!
//! With `BENCH_POSTGRES_URL` set (a database URL whose user may create databases), each daemon
//! runs on PostgreSQL instead of redb, on a fresh database made with `psql` (found on PATH or
//! in `BENCH_POSTGRES_BIN`). The CPU column counts hookd only, not PostgreSQL. `BENCH_NODES`
//! daemons share that database, `BENCH_TARGETS` receivers share the events, and
//! `BENCH_STEADY_RATES` (e.g. `5000`) picks `steady`'s rates. `BENCH_RECEIVER_DELAY_MS` makes
//! every receiver answer that long after it read a call (slow receivers: then a node's call
//! slots, `delivery.inflight_max`, bound its delivery rate, not the CPU or the store).

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

const TOKEN: &str = "bench-token-0123456789";

/// Sizes of one run; `smoke` shrinks everything.
#[derive(Clone, Copy)]
struct Sizes {
    burst_requests: usize,
    batch_events: usize,
    steady_seconds: u64,
    steady_rates: &'static [u64],
    many_webhooks: usize,
    backlog_events: usize,
    connections: usize,
    /// The soak: rate, length and retention window (each can be set by a variable).
    soak_rate: u64,
    soak_seconds: u64,
    soak_window_ms: u64,
}

const FULL: Sizes = Sizes {
    burst_requests: 200_000,
    batch_events: 200_000,
    steady_seconds: 20,
    steady_rates: &[1_000, 5_000, 10_000, 20_000],
    many_webhooks: 100_000,
    backlog_events: 1_000_000,
    connections: 64,
    soak_rate: 5_000,
    soak_seconds: 600,
    soak_window_ms: 60_000,
};

const SMOKE: Sizes = Sizes {
    burst_requests: 2_000,
    batch_events: 2_000,
    steady_seconds: 1,
    steady_rates: &[500],
    many_webhooks: 200,
    backlog_events: 2_000,
    connections: 16,
    soak_rate: 1_000,
    soak_seconds: 15,
    soak_window_ms: 2_000,
};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------- the receiver

/// Records every delivery's latency (event sent to payload received, from `sentNs`).
struct Sink {
    delivered: AtomicUsize,
    latencies_us: Mutex<Vec<u32>>,
    up: AtomicBool,
}

async fn start_receiver(sink: Arc<Sink>) -> SocketAddr {
    let delay = Duration::from_millis(
        std::env::var("BENCH_RECEIVER_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        if !sink.up.load(Ordering::Relaxed) {
                            // "Down": never answer (the daemon's call times out).
                            std::future::pending::<()>().await;
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if let Some(sent) = find_sent_ns(&body) {
                            let us = now_ns().saturating_sub(sent) / 1000;
                            if let Ok(mut l) = sink.latencies_us.lock() {
                                l.push(us.min(u32::MAX as u64) as u32);
                            }
                        }
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        sink.delivered.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn find_sent_ns(body: &[u8]) -> Option<u64> {
    let key = b"\"sentNs\":";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

// ---------------------------------------------------------------- the daemon

struct Daemon {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    config: String,
}

impl Daemon {
    fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[[users]]\nid = \"bench\"\ntoken = \"{TOKEN}\"\n{extra}\n{}",
            dir.path().join("data").display(),
            store_section()
        );
        std::fs::write(dir.path().join("hookd.toml"), &config).expect("config");
        let (child, addr, _) = spawn_daemon(dir.path());
        Daemon { child, addr, dir, config }
    }

    /// Another daemon on the same database (PostgreSQL), in a data dir of its own.
    fn joining(&self) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = self.dir.path().join("data").display().to_string();
        let config = self.config.replace(&data, &dir.path().join("data").display().to_string());
        std::fs::write(dir.path().join("hookd.toml"), &config).expect("config");
        let (child, addr, _) = spawn_daemon(dir.path());
        Daemon { child, addr, dir, config }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        ticks as f64 / 100.0
    }

    fn status_kb(&self, field: &str) -> u64 {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn store_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.path().join("data/hookd.redb")).map(|m| m.len()).unwrap_or(0)
    }

    /// SIGKILL, run `meanwhile`, and start again on the same data; returns the time from
    /// spawn to the ready line.
    fn kill9_and_restart(&mut self, meanwhile: impl FnOnce()) -> Duration {
        let _ = self.child.kill();
        let _ = self.child.wait();
        meanwhile();
        let (child, addr, ready) = spawn_daemon(self.dir.path());
        self.child = child;
        self.addr = addr;
        let _ = &self.config;
        ready
    }

    /// SIGTERM, wait for the exit, and start again on the same data; returns the time from
    /// spawn to the ready line.
    fn stop_and_restart(&mut self) -> Duration {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let _ = self.child.wait();
        let (child, addr, ready) = spawn_daemon(self.dir.path());
        self.child = child;
        self.addr = addr;
        ready
    }

    /// SIGKILL, copy the store file into a new data dir (as a restore of a copy of a crashed
    /// file would), and start a daemon there; returns the time from spawn to the ready line.
    fn kill9_and_start_on_a_copy(&mut self) -> Duration {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        std::fs::copy(self.dir.path().join("data/hookd.redb"), dir.path().join("data/hookd.redb"))
            .expect("copy the store");
        let data = self.dir.path().join("data").display().to_string();
        let config = self.config.replace(&data, &dir.path().join("data").display().to_string());
        std::fs::write(dir.path().join("hookd.toml"), &config).expect("config");
        let (child, addr, ready) = spawn_daemon(dir.path());
        self.child = child;
        self.addr = addr;
        self.dir = dir;
        ready
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[store]` section: empty (redb), or a fresh PostgreSQL database (`BENCH_POSTGRES_URL`).
fn store_section() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let Ok(url) = std::env::var("BENCH_POSTGRES_URL") else { return String::new() };
    let name = format!("bench_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let psql = match std::env::var("BENCH_POSTGRES_BIN") {
        Ok(dir) => std::path::Path::new(&dir).join("psql"),
        Err(_) => "psql".into(),
    };
    let ok = Command::new(psql)
        .args([url.as_str(), "-X", "-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "psql could not create the bench database on BENCH_POSTGRES_URL");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    format!("[store]\nbackend = \"postgres\"\npostgres_url = \"{base}/{name}\"\n")
}

fn spawn_daemon(dir: &std::path::Path) -> (Child, SocketAddr, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["serve", "--config"])
        .arg(dir.join("hookd.toml"))
        // BENCH_RUST_LOG=hookd=debug shows e.g. how long each fold takes.
        .env("RUST_LOG", std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hookd (build it with cargo bench)");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line).expect("ready line");
    let ready = started.elapsed();
    std::thread::spawn(move || for _ in reader.lines() {});
    let addr = line
        .trim()
        .trim_start_matches("ready listen=")
        .parse()
        .expect("ready line names the address");
    (child, addr, ready)
}

/// A trivial hyper server answering 202, in its own process (this binary, re-run).
fn spawn_trivial() -> (Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().expect("bench binary"))
        .arg("__trivial_server")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the trivial server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("port line");
    (child, line.trim().parse().expect("address"))
}

fn run_trivial_server() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"data\":{}}")));
                    *r.status_mut() = hyper::StatusCode::ACCEPTED;
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

// ---------------------------------------------------------------- the load generator

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client(connections: usize) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(connections)
        .build(http)
}

async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: String,
) -> u16 {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }
        Err(_) => 0,
    }
}

fn event(actor: &str, n: usize) -> String {
    format!(
        "{{\"eventType\":\"ACTOR.RUN.SUCCEEDED\",\"eventData\":{{\"actorId\":\"{actor}\",\"actorRunId\":\"run{n}\"}},\"resource\":{{\"id\":\"run{n}\",\"actId\":\"{actor}\",\"status\":\"SUCCEEDED\",\"sentNs\":{}}}}}",
        now_ns()
    )
}

/// Sends `requests` POSTs over `connections` connections, each body from `body(i)`; with
/// `rate_per_s`, paced. Returns (elapsed, requests answered 2xx).
async fn load(
    addr: SocketAddr,
    path: &'static str,
    requests: usize,
    connections: usize,
    rate_per_s: Option<u64>,
    body: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> (Duration, usize) {
    load_on(&[addr], path, requests, connections, rate_per_s, body).await
}

/// [`load`] with the connections spread over several daemons.
async fn load_on(
    addrs: &[SocketAddr],
    path: &'static str,
    requests: usize,
    connections: usize,
    rate_per_s: Option<u64>,
    body: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> (Duration, usize) {
    let c = client(connections);
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..connections {
        let (c, next, ok, body) = (c.clone(), next.clone(), ok.clone(), body.clone());
        let addr = addrs[task % addrs.len()];
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                if let Some(rate) = rate_per_s {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let status = send(&c, addr, "POST", path, body(i)).await;
                if (200..300).contains(&status) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (start.elapsed(), ok.load(Ordering::Relaxed))
}

async fn create_webhooks(
    addr: SocketAddr,
    receiver: SocketAddr,
    actors: impl Iterator<Item = String>,
) {
    let c = client(16);
    let actors: Vec<String> = actors.collect();
    let next = Arc::new(AtomicUsize::new(0));
    let actors = Arc::new(actors);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, next, actors) = (c.clone(), next.clone(), actors.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(actor) = actors.get(i) else { break };
                let body = format!(
                    "{{\"eventTypes\":[\"ACTOR.RUN.SUCCEEDED\"],\"condition\":{{\"actorId\":\"{actor}\"}},\"requestUrl\":\"http://{receiver}/hook\"}}"
                );
                assert_eq!(send(&c, addr, "POST", "/v2/webhooks", body).await, 201, "create webhook");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn wait_delivered(sink: &Sink, want: usize, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while sink.delivered.load(Ordering::Relaxed) < want {
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Some(start.elapsed())
}

// ---------------------------------------------------------------- results

#[derive(Default)]
struct Row {
    scenario: String,
    events_per_s: f64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_s: f64,
    rss_mb: f64,
    store_mb: f64,
    note: String,
}

fn percentiles(sink: &Sink) -> (f64, f64, f64) {
    let mut l = sink.latencies_us.lock().map(|l| l.clone()).unwrap_or_default();
    if l.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    l.sort_unstable();
    let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    (at(0.5), at(0.99), at(1.0))
}

fn new_sink(up: bool) -> Arc<Sink> {
    Arc::new(Sink {
        delivered: AtomicUsize::new(0),
        latencies_us: Mutex::new(Vec::new()),
        up: AtomicBool::new(up),
    })
}

fn finish_row(
    scenario: &str,
    d: &Daemon,
    sink: &Sink,
    events: usize,
    ingest: Duration,
    delivery: Option<Duration>,
    note: String,
) -> Row {
    let (p50, p99, max) = percentiles(sink);
    Row {
        scenario: scenario.into(),
        events_per_s: events as f64 / ingest.as_secs_f64(),
        deliveries_per_s: delivery
            .map_or(f64::NAN, |t| sink.delivered.load(Ordering::Relaxed) as f64 / t.as_secs_f64()),
        p50_ms: p50,
        p99_ms: p99,
        max_ms: max,
        cpu_s: d.cpu_seconds(),
        rss_mb: d.status_kb("VmHWM") as f64 / 1024.0,
        store_mb: d.store_bytes() as f64 / 1_048_576.0,
        note,
    }
}

/// The many-webhooks scenario stores 100,000 webhooks for one user: past the default per-user
/// limit, which is about abuse, not load.
macro_rules! bench_base {
    () => {
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = [1000, 2000, 4000]\ninflight_max = 256\nper_target_inflight_max = 64\n[limits]\nwebhooks_per_user_max = 1000000\n"
    };
}
/// Retention on its default (30 days: nothing is old enough to delete within a run); the
/// `soak` scenario measures it deleting as fast as events arrive.
const BENCH_CONFIG: &str = bench_base!();

// ---------------------------------------------------------------- scenarios

/// The daemons and targets of `burst`, `batch` and `steady`: one daemon and one target, or
/// with `BENCH_NODES` (on PostgreSQL) that many daemons sharing one database and with
/// `BENCH_TARGETS` that many receivers (one webhook each), so that delivery spreads over the
/// nodes' shards.
struct Setup {
    nodes: Vec<Daemon>,
    addrs: Vec<SocketAddr>,
    targets: usize,
}

impl Setup {
    async fn start(sink: &Arc<Sink>) -> Setup {
        let count = |name: &str| {
            std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1)
        };
        let (node_count, targets) = (count("BENCH_NODES"), count("BENCH_TARGETS"));
        let first = Daemon::start(BENCH_CONFIG);
        let mut nodes = vec![first];
        for _ in 1..node_count {
            let joined = nodes[0].joining();
            nodes.push(joined);
        }
        for t in 0..targets {
            let rx = start_receiver(sink.clone()).await;
            create_webhooks(nodes[0].addr, rx, std::iter::once(actor_of(t, targets))).await;
        }
        if node_count > 1 {
            // The first node gives up the shards over its share on its next lease round
            // (every third of the 15 s lease).
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        let addrs = nodes.iter().map(|d| d.addr).collect();
        Setup { nodes, addrs, targets }
    }

    /// The body of event `i`, for the targets in turn.
    fn event(&self, i: usize) -> String {
        event(&actor_of(i % self.targets, self.targets), i)
    }

    /// CPU seconds of all the daemons.
    fn cpu_seconds(&self) -> f64 {
        self.nodes.iter().map(Daemon::cpu_seconds).sum()
    }
}

fn actor_of(t: usize, targets: usize) -> String {
    if targets == 1 { "A".to_string() } else { format!("A{t}") }
}

async fn burst(s: Sizes, name: &str, batch: usize) -> Row {
    let sink = new_sink(true);
    let setup = Arc::new(Setup::start(&sink).await);
    let d = &setup.nodes[0];
    let events = if batch == 1 { s.burst_requests } else { s.batch_events };
    let requests = events / batch;
    let on = setup.clone();
    let body: Arc<dyn Fn(usize) -> String + Send + Sync> = if batch == 1 {
        Arc::new(move |i| on.event(i))
    } else {
        Arc::new(move |i| {
            format!(
                "[{}]",
                (0..batch).map(|k| on.event(i * batch + k)).collect::<Vec<_>>().join(",")
            )
        })
    };
    let start = Instant::now();
    let (ingest, ok) =
        load_on(&setup.addrs, "/v2/webhook-events", requests, s.connections, None, body).await;
    let all =
        wait_delivered(&sink, ok * batch, Duration::from_secs(600)).await.map(|_| start.elapsed());
    let note = match all {
        Some(t) => format!(
            "all {} delivered {:.2} s after the first send ({:.2}x the ingest time)",
            ok * batch,
            t.as_secs_f64(),
            t.as_secs_f64() / ingest.as_secs_f64()
        ),
        None => "not all delivered within 600 s".into(),
    };
    let mut row = finish_row(name, d, &sink, ok * batch, ingest, all, note);
    row.cpu_s = setup.cpu_seconds();
    row
}

async fn steady(s: Sizes) -> Vec<Row> {
    let mut rows = Vec::new();
    // BENCH_STEADY_RATES=5000 (a comma-separated list) runs only those rates.
    let rates: Vec<u64> = match std::env::var("BENCH_STEADY_RATES") {
        Ok(list) => list.split(',').filter_map(|r| r.trim().parse().ok()).collect(),
        Err(_) => s.steady_rates.to_vec(),
    };
    for rate in rates {
        let sink = new_sink(true);
        let setup = Arc::new(Setup::start(&sink).await);
        let d = &setup.nodes[0];
        let requests = (rate * s.steady_seconds) as usize;
        let on = setup.clone();
        let body: Arc<dyn Fn(usize) -> String + Send + Sync> = Arc::new(move |i| on.event(i));
        let (ingest, ok) =
            load_on(&setup.addrs, "/v2/webhook-events", requests, s.connections, Some(rate), body)
                .await;
        // Flat backlog: the rate was reached (the generator is closed-loop, so a slower server
        // shows as a lower rate) and everything sent arrived within a second of the last send.
        let lag = wait_delivered(&sink, ok, Duration::from_secs(60)).await;
        let reached = ok as f64 / ingest.as_secs_f64() >= 0.95 * rate as f64;
        let flat = reached && lag.is_some_and(|l| l < Duration::from_secs(1));
        let note = format!(
            "target {rate}/s for {} s; backlog {} (last delivery {} after the last send)",
            s.steady_seconds,
            if flat {
                "flat"
            } else if reached {
                "GREW"
            } else {
                "GREW (rate not reached)"
            },
            lag.map_or("never".into(), |l| format!("{} ms", l.as_millis()))
        );
        let mut row = finish_row(
            &format!("steady {rate}/s"),
            d,
            &sink,
            ok,
            ingest,
            Some(ingest + lag.unwrap_or_default()),
            note,
        );
        row.cpu_s = setup.cpu_seconds();
        rows.push(row);
    }
    rows
}

async fn fanout(s: Sizes) -> Row {
    let sink = new_sink(true);
    let rx = start_receiver(sink.clone()).await;
    let d = Daemon::start(BENCH_CONFIG);
    // Ten webhooks on the same actor: each event has ten dispatches.
    create_webhooks(d.addr, rx, (0..10).map(|_| "A".to_string())).await;
    let requests = s.burst_requests / 10;
    let body: Arc<dyn Fn(usize) -> String + Send + Sync> = Arc::new(|i| event("A", i));
    let start = Instant::now();
    let (ingest, ok) =
        load(d.addr, "/v2/webhook-events", requests, s.connections, None, body).await;
    let all =
        wait_delivered(&sink, ok * 10, Duration::from_secs(600)).await.map(|_| start.elapsed());
    let note = format!("10 webhooks match each event; {} dispatches", ok * 10);
    finish_row("fanout x10", &d, &sink, ok, ingest, all, note)
}

async fn many_webhooks(s: Sizes) -> Vec<Row> {
    let mut rows = Vec::new();
    for stored in [10usize, s.many_webhooks] {
        let sink = new_sink(true);
        let rx = start_receiver(sink.clone()).await;
        let d = Daemon::start(BENCH_CONFIG);
        let created = Instant::now();
        create_webhooks(d.addr, rx, (0..stored).map(|i| format!("actor{i}"))).await;
        let create_s = created.elapsed().as_secs_f64();
        let requests = s.burst_requests / 4;
        // Each event matches exactly one stored webhook.
        let body: Arc<dyn Fn(usize) -> String + Send + Sync> =
            Arc::new(move |i| event(&format!("actor{}", i % stored), i));
        let start = Instant::now();
        let (ingest, ok) =
            load(d.addr, "/v2/webhook-events", requests, s.connections, None, body).await;
        let all =
            wait_delivered(&sink, ok, Duration::from_secs(600)).await.map(|_| start.elapsed());
        let note = format!(
            "{stored} webhooks stored (created at {:.0}/s), each event matches one",
            stored as f64 / create_s
        );
        rows.push(finish_row(&format!("{stored} webhooks"), &d, &sink, ok, ingest, all, note));
    }
    rows
}

async fn backlog(s: Sizes) -> Row {
    // The receiver is down: it accepts calls and never answers, so every dispatch stays pending.
    let sink = new_sink(false);
    let rx = start_receiver(sink.clone()).await;
    let mut d = Daemon::start(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = [1000, 2000, 4000]\ntimeout_ms = 600000\ninflight_max = 256\nper_target_inflight_max = 64\n[limits]\nshutdown_grace_ms = 100\n",
    );
    create_webhooks(d.addr, rx, std::iter::once("A".to_string())).await;
    let batch = 1000.min(s.backlog_events);
    let requests = s.backlog_events / batch;
    let body: Arc<dyn Fn(usize) -> String + Send + Sync> = Arc::new(move |i| {
        format!("[{}]", (0..batch).map(|k| event("A", i * batch + k)).collect::<Vec<_>>().join(","))
    });
    let (ingest, ok) = load(d.addr, "/v2/webhook-events", requests, 8, None, body).await;
    let pending = ok * batch;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_pending_mb = d.status_kb("VmRSS") as f64 / 1024.0;
    // The dispatch lists with the whole backlog stored: a page and its exact total come from
    // the status indexes, whatever the history.
    let c = client(1);
    let mut lists = Vec::new();
    for (what, path) in [
        ("FAILED (none)", "/v2/webhook-dispatches?status=FAILED"),
        ("latest 100 ACTIVE", "/v2/webhook-dispatches?status=ACTIVE&desc=1&limit=100"),
        ("first 100", "/v2/webhook-dispatches?limit=100"),
    ] {
        let t = Instant::now();
        assert_eq!(send(&c, d.addr, "GET", path, String::new()).await, 200, "{path}");
        lists.push(format!("{what} {:.1} ms", t.elapsed().as_secs_f64() * 1000.0));
    }
    // The receiver is up before the new daemon starts: its first calls go out at once, and a
    // call that reached a receiver still down would hang until its 10-minute timeout.
    let ready = d.kill9_and_restart(|| sink.up.store(true, Ordering::Relaxed));
    let drain_start = Instant::now();
    let drained = wait_delivered(&sink, pending, Duration::from_secs(900)).await;
    let drain_s = drained.map(|t| t.as_secs_f64());
    let mut row = finish_row("backlog", &d, &sink, pending, ingest, drained, String::new());
    let clean_ready = d.stop_and_restart();
    let copy_ready = d.kill9_and_start_on_a_copy();
    row.rss_mb = rss_pending_mb;
    row.p50_ms = f64::NAN;
    row.p99_ms = f64::NAN;
    row.max_ms = f64::NAN;
    row.note = format!(
        "{pending} pending: RSS {rss_pending_mb:.1} MB; lists {}; kill -9, start to ready {:.0} ms; drain {}; then SIGTERM, start to ready {:.0} ms; kill -9, start on a copy (verified) {:.0} ms",
        lists.join(", "),
        ready.as_secs_f64() * 1000.0,
        drain_s.map_or("did not finish".into(), |s| format!("{:.0}/s", pending as f64 / s)),
        clean_ready.as_secs_f64() * 1000.0,
        copy_ready.as_secs_f64() * 1000.0,
    );
    let _ = drain_start;
    row
}

/// Steady load with retention on: the store file must stop growing once the retention window
/// is full, and RSS stay flat. Compares the file and RSS at 30 % of the run (minute 3 of 10)
/// with the end, and asserts both (and that every accepted event was delivered): this runs in
/// the test command at its small size. `SOAK_RATE`, `SOAK_SECONDS`, `SOAK_WINDOW_MS` override.
async fn soak(s: Sizes) -> Row {
    let var = |name: &str, default: u64| {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let rate = var("SOAK_RATE", s.soak_rate);
    let seconds = var("SOAK_SECONDS", s.soak_seconds);
    let window_ms = var("SOAK_WINDOW_MS", s.soak_window_ms);
    let sink = new_sink(true);
    let rx = start_receiver(sink.clone()).await;
    let d = Daemon::start(&format!(
        "{}[retention]\nfinished_max_age_ms = {window_ms}\n",
        bench_base!()
    ));
    create_webhooks(d.addr, rx, std::iter::once("A".to_string())).await;
    let requests = (rate * seconds) as usize;
    let body: Arc<dyn Fn(usize) -> String + Send + Sync> = Arc::new(|i| event("A", i));
    let early = Arc::new(Mutex::new((0u64, 0u64)));
    let sampler = {
        let (early, pid, file) = (early.clone(), d.pid(), d.dir.path().join("data/hookd.redb"));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(seconds as f64 * 0.3)).await;
            let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if let Ok(mut e) = early.lock() {
                *e = (bytes, rss_kb(pid));
            }
        })
    };
    let (ingest, ok) =
        load(d.addr, "/v2/webhook-events", requests, s.connections, Some(rate), body).await;
    let _ = sampler.await;
    let lag = wait_delivered(&sink, ok, Duration::from_secs(60)).await;
    let (early_bytes, early_rss_kb) = early.lock().map(|e| *e).unwrap_or_default();
    let (end_bytes, end_rss_kb) = (d.store_bytes(), d.status_kb("VmRSS"));
    let growth = end_bytes as f64 / early_bytes.max(1) as f64 - 1.0;
    let rss_growth = end_rss_kb as f64 / early_rss_kb.max(1) as f64 - 1.0;
    let note = format!(
        "{rate}/s for {seconds} s, retention {window_ms} ms: store {:.1} MB at 30 % of the run, {:.1} MB at the end ({:+.1} %); RSS {:.1} -> {:.1} MB ({:+.1} %); {} of {ok} delivered",
        early_bytes as f64 / 1_048_576.0,
        end_bytes as f64 / 1_048_576.0,
        growth * 100.0,
        early_rss_kb as f64 / 1024.0,
        end_rss_kb as f64 / 1024.0,
        rss_growth * 100.0,
        sink.delivered.load(Ordering::Relaxed)
    );
    println!("soak: {note}");
    assert!(lag.is_some(), "soak: not every accepted event was delivered: {note}");
    assert!(ok as f64 >= 0.95 * requests as f64, "soak: the rate was not reached: {note}");
    assert!(growth <= 0.10, "soak: the store file kept growing: {note}");
    // Flat: within 10 %, or 4 MB for the small run (allocator noise).
    assert!(
        end_rss_kb as f64 <= early_rss_kb as f64 * 1.10 + 4096.0,
        "soak: RSS kept growing: {note}"
    );
    finish_row("soak", &d, &sink, ok, ingest, Some(ingest + lag.unwrap_or_default()), note)
}

fn rss_kb(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn idle_rss() -> f64 {
    let d = Daemon::start(BENCH_CONFIG);
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.status_kb("VmRSS") as f64 / 1024.0
}

async fn trivial_baseline(s: Sizes) -> f64 {
    let (mut child, addr) = spawn_trivial();
    let body: Arc<dyn Fn(usize) -> String + Send + Sync> = Arc::new(|i| event("A", i));
    let (t, ok) =
        load(addr, "/v2/webhook-events", s.burst_requests, s.connections, None, body).await;
    let _ = child.kill();
    let _ = child.wait();
    ok as f64 / t.as_secs_f64()
}

fn print(rows: &[Row], trivial: f64, idle_mb: f64) {
    println!();
    println!(
        "| scenario | events accepted/s | deliveries/s | e2e p50 ms | p99 ms | max ms | daemon CPU s | peak RSS MB | store MB | notes |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let f =
        |v: f64, digits: usize| if v.is_nan() { "-".to_string() } else { format!("{v:.digits$}") };
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            f(r.events_per_s, 0),
            f(r.deliveries_per_s, 0),
            f(r.p50_ms, 2),
            f(r.p99_ms, 2),
            f(r.max_ms, 1),
            f(r.cpu_s, 2),
            f(r.rss_mb, 1),
            f(r.store_mb, 1),
            r.note
        );
    }
    println!();
    println!("trivial hyper server (202, same load generator): {trivial:.0} requests/s");
    if let Some(b) = rows.iter().find(|r| r.scenario == "burst") {
        println!("hookd burst ingest / trivial server: {:.1}%", 100.0 * b.events_per_s / trivial);
    }
    println!("idle daemon RSS: {idle_mb:.1} MB");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if args.first().map(String::as_str) == Some("__trivial_server") {
        run_trivial_server();
        return;
    }
    let scenario = args.first().cloned().unwrap_or_else(|| "all".into());
    let sizes = if scenario == "smoke" { SMOKE } else { FULL };
    epoch();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let rows_and_more = runtime.block_on(async {
        let mut rows = Vec::new();
        let all = scenario == "all" || scenario == "smoke";
        if all || scenario == "burst" {
            rows.push(burst(sizes, "burst", 1).await);
        }
        if all || scenario == "batch" {
            rows.push(burst(sizes, "batch x100", 100).await);
        }
        if all || scenario == "steady" {
            rows.extend(steady(sizes).await);
        }
        if all || scenario == "fanout" {
            rows.push(fanout(sizes).await);
        }
        if all || scenario == "many-webhooks" {
            rows.extend(many_webhooks(sizes).await);
        }
        if all || scenario == "backlog" {
            rows.push(backlog(sizes).await);
        }
        // Ten minutes at full size: run by name, not in `all`.
        if scenario == "smoke" || scenario == "soak" {
            rows.push(soak(sizes).await);
        }
        let trivial = trivial_baseline(sizes).await;
        let idle = idle_rss().await;
        (rows, trivial, idle)
    });
    let (rows, trivial, idle) = rows_and_more;
    print(&rows, trivial, idle);
    if scenario == "smoke" {
        // The smoke run checks only that every number was produced.
        let ok = !rows.is_empty()
            && rows.iter().all(|r| r.events_per_s > 0.0 && r.cpu_s >= 0.0)
            && trivial > 0.0
            && idle > 0.0;
        assert!(ok, "the smoke run produced no numbers");
        println!("smoke run: every scenario produced its numbers");
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
}
