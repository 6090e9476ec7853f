//! One user cannot hurt the others: each test is one attack by an authenticated user
//! ("alice"), run against the real daemon on its default limits, and asserts the bound: the
//! refusal or the work done within its budget, the daemon's peak RSS, and the latency of a
//! second user's ("bob") requests measured during the attack.
//!
//! Scaled to seconds in the test command; `ABUSE_FULL=1 cargo test --release --test it abuse
//! -- --nocapture --test-threads 1` runs every attack at the size it was first tried at and
//! prints the figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

fn full() -> bool {
    std::env::var("ABUSE_FULL").is_ok_and(|v| v == "1")
}

/// `scaled` in the test command, `full_size` with ABUSE_FULL=1.
fn size(scaled: usize, full_size: usize) -> usize {
    if full() { full_size } else { scaled }
}

/// Bob's requests, made one after another on a thread while an attack runs.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<Duration>, Vec<String>)>,
}

/// Latencies of a probe: p50, p99, max, and the failed requests.
struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
    count: usize,
    failures: Vec<String>,
}

impl Probe {
    /// `make` sends one request and says whether it succeeded (or why not).
    fn start(make: impl Fn() -> Result<(), String> + Send + 'static) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut times, mut failures) = (Vec::new(), Vec::new());
            while !flag.load(Ordering::SeqCst) {
                let t = Instant::now();
                if let Err(e) = make() {
                    failures.push(e);
                }
                times.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            (times, failures)
        });
        Probe { stop, thread }
    }

    /// Bob listing his webhooks.
    fn bob_lists(addr: SocketAddr) -> Probe {
        Probe::start(move || {
            let auth = format!("Bearer {BOB_TOKEN}");
            let r = try_raw_request(addr, "GET", "/v2/webhooks", &[("Authorization", &auth)], b"")
                .map_err(|e| e.to_string())?;
            if r.status == 200 { Ok(()) } else { Err(format!("status {}", r.status)) }
        })
    }

    fn finish(self) -> Latency {
        self.stop.store(true, Ordering::SeqCst);
        let (mut times, failures) = self.thread.join().unwrap();
        assert!(!times.is_empty(), "the probe made no request");
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        Latency { p50: at(0.5), p99: at(0.99), max: at(1.0), count: times.len(), failures }
    }
}

impl Latency {
    /// Every request succeeded, p99 and max within the bounds.
    fn assert_within(&self, what: &str, p99_ms: u64, max_ms: u64) {
        println!(
            "{what}: bob {} requests, p50 {:?}, p99 {:?}, max {:?}, {} failed",
            self.count,
            self.p50,
            self.p99,
            self.max,
            self.failures.len()
        );
        assert!(self.failures.is_empty(), "{what}: bob's requests failed: {:?}", self.failures);
        assert!(self.p99 <= Duration::from_millis(p99_ms), "{what}: bob's p99 {:?}", self.p99);
        assert!(self.max <= Duration::from_millis(max_ms), "{what}: bob's max {:?}", self.max);
    }
}

/// The answer is `status` and its message names the limit that was hit.
fn assert_refused(r: &Resp, status: u16, limit: &str) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "{body}");
    assert!(body.contains(limit), "the answer names {limit}: {body}");
}

/// The daemon's peak resident set so far, asserted under `mb` MiB.
fn assert_peak_rss(d: &TestDaemon, what: &str, mb: u64) {
    let kb = d.proc_status_kb("VmHWM");
    println!("{what}: daemon peak RSS {:.1} MiB", kb as f64 / 1024.0);
    assert!(kb > 0 && kb < mb * 1024, "{what}: peak RSS {kb} kB");
}

/// Delivery to loopback is allowed; the delivery target is a closed port unless given.
const PRIVATE: &str = "[delivery]\nallow_private_targets = true\n";

/// A URL nothing listens on: calls fail at once and wait a minute for their retry.
fn closed_url() -> String {
    let port = crate::support::receiver::free_port();
    format!("http://127.0.0.1:{port}/hook")
}

fn create_many(d: &TestDaemon, n: usize, body: impl Fn(usize) -> Value) {
    for i in 0..n {
        d.create_webhook(ALICE_TOKEN, &body(i));
    }
}

fn event_for(actor: &str, run: &str, resource: Value) -> Value {
    let mut e = run_event("ACTOR.RUN.SUCCEEDED", actor, None, run);
    e["resource"] = resource;
    e
}

fn post_alice(d: &TestDaemon, body: &[u8]) -> Resp {
    let auth = format!("Bearer {ALICE_TOKEN}");
    raw_request(
        d.addr,
        "POST",
        "/v2/webhook-events",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body,
    )
}

/// Row 1: many webhooks on one actor, then one array of events for it.
#[test]
fn a_fan_out_past_the_budget_is_refused_and_one_within_it_does_not_slow_others() {
    let d = TestDaemon::start(PRIVATE);
    let (webhooks, events) = (size(100, 1000), size(200, 1000));
    let url = closed_url();
    create_many(&d, webhooks, |_| webhook_body("fan", &url));
    let probe = Probe::bob_lists(d.addr);
    let array =
        Value::Array((0..events).map(|i| event_for("fan", &format!("r{i}"), json!({}))).collect());
    let started = Instant::now();
    let r = post_alice(&d, array.to_string().as_bytes());
    let took = started.elapsed();
    assert_refused(&r, 413, "limits.dispatches_per_request_max");
    println!("fan-out {webhooks}x{events}: refused in {took:?}");
    // The largest fan-out the default budget allows: 10,000 dispatches in one request.
    let within = Value::Array(
        (0..10_000 / webhooks).map(|i| event_for("fan", &format!("ok{i}"), json!({}))).collect(),
    );
    let started = Instant::now();
    let r = post_alice(&d, within.to_string().as_bytes());
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let created: usize = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["dispatchIds"].as_array().unwrap().len())
        .sum();
    assert_eq!(created, 10_000);
    println!("fan-out within the budget: 10000 dispatches stored in {:?}", started.elapsed());
    probe.finish().assert_within("fan-out", 1000, 3000);
    let listed = d.req("GET", "/v2/webhook-dispatches?limit=1", Some(ALICE_TOKEN), None).json();
    assert_eq!(listed["data"]["total"], 10_000, "only the accepted request's dispatches exist");
    assert_peak_rss(&d, "fan-out", 512);
}

/// Row 2: a template that copies the resource hundreds of times, on many webhooks.
#[test]
fn a_template_that_multiplies_the_resource_stops_at_the_rendered_budget() {
    let d = TestDaemon::start(PRIVATE);
    let webhooks = size(20, 1000);
    let url = closed_url();
    let template = format!("[{}]", vec!["{{resource}}"; 950].join(","));
    create_many(&d, webhooks, |_| {
        let mut b = webhook_body("copy", &url);
        b["payloadTemplate"] = json!(template);
        b
    });
    let probe = Probe::bob_lists(d.addr);
    let event = event_for("copy", "r1", json!({"blob": "x".repeat(4000)}));
    let started = Instant::now();
    let r = post_alice(&d, event.to_string().as_bytes());
    assert_refused(&r, 413, "limits.rendered_bytes_per_request_max");
    println!("render x950 on {webhooks} webhooks: refused in {:?}", started.elapsed());
    probe.finish().assert_within("render multiply", 1000, 3000);
    let listed = d.req("GET", "/v2/webhook-dispatches?limit=1", Some(ALICE_TOKEN), None).json();
    assert_eq!(listed["data"]["total"], 0, "nothing stored");
    assert_peak_rss(&d, "render multiply", 512);
}

/// Row 3: concurrent large bodies whose JSON would expand many times when parsed.
#[test]
fn large_bodies_of_tiny_values_take_memory_in_proportion_to_their_bytes() {
    let d = TestDaemon::start(PRIVATE);
    let (clients, mb) = (size(16, 60), size(2, 9));
    let zeros = vec!["0"; mb * 1_000_000 / 2].join(",");
    let body = format!(
        r#"{{"eventType":"ACTOR.RUN.SUCCEEDED","eventData":{{"actorId":"z","actorRunId":"r"}},"resource":{{"a":[{zeros}]}}}}"#
    );
    let body = Arc::new(body.into_bytes());
    let probe = Probe::bob_lists(d.addr);
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (body, d_addr) = (body.clone(), d.addr);
            std::thread::spawn(move || {
                let auth = format!("Bearer {ALICE_TOKEN}");
                let h = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                raw_request(d_addr, "POST", "/v2/webhook-events", &h, &body).status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    println!("{clients} bodies of {mb} MB: answers {statuses:?} in {:?}", started.elapsed());
    // Accepted (2 MB resources render), refused as too large to render (9 MB), or 503 when
    // the shared byte budget is spent: never more memory than the bytes allow.
    assert!(statuses.iter().all(|s| [202, 413, 503].contains(s)), "{statuses:?}");
    probe.finish().assert_within("large bodies", 1000, 3000);
    assert_peak_rss(&d, "large bodies", 1024);
}

/// Row 4: templates with a huge number of variables, and the costliest template allowed.
#[test]
fn costly_templates_are_refused_at_create_and_the_allowed_ones_render_off_the_workers() {
    let d = TestDaemon::start(PRIVATE);
    let url = closed_url();
    let mut body = webhook_body("cpu", &url);
    body["payloadTemplate"] = json!(format!("[{}]", vec!["{{eventData}}"; 70_000].join(",")));
    let r = d.req("POST", "/v2/webhooks", Some(ALICE_TOKEN), Some(&body));
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    // Refused for its size before its variables are counted: 70,000 variables is 900 KB.
    assert!(r.error_type() == "invalid-input");
    // The costliest the defaults allow: 1000 interpolated variables, each a 4 KB string, on
    // 10 webhooks (4 in the test command), 2 requests at once: 80 MB rendered.
    let template = format!(r#"{{"a": "{}"}}"#, "{{resource.s}}".repeat(1000));
    let mut body = webhook_body("cpu", &url);
    body["payloadTemplate"] = json!(template);
    body["shouldInterpolateStrings"] = json!(true);
    create_many(&d, size(4, 10), |_| body.clone());
    let event = event_for("cpu", "r1", json!({"s": "y".repeat(4000)})).to_string();
    let probe = Probe::bob_lists(d.addr);
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (event, addr) = (event.clone(), d.addr);
            std::thread::spawn(move || {
                let auth = format!("Bearer {ALICE_TOKEN}");
                let h = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                raw_request(addr, "POST", "/v2/webhook-events", &h, event.as_bytes()).status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    println!("costliest allowed render, twice at once: {statuses:?} in {:?}", started.elapsed());
    assert_eq!(statuses, [202, 202]);
    probe.finish().assert_within("render cpu", 1000, 3000);
    assert_peak_rss(&d, "render cpu", 1024);
}

/// Row 5: alice's targets accept and never answer; bob's healthy target keeps its pace.
#[test]
fn hanging_targets_of_one_user_do_not_hold_up_another_users_delivery() {
    let d = TestDaemon::start(PRIVATE);
    let hanging: Vec<Receiver> =
        (0..20).map(|_| Receiver::start(0, |_, _| Reply::Hang(Duration::from_secs(600)))).collect();
    for (i, r) in hanging.iter().enumerate() {
        d.create_webhook(ALICE_TOKEN, &webhook_body(&format!("h{i}"), &r.url("/")));
    }
    for i in 0..20 {
        let array: Vec<Value> =
            (0..20).map(|j| event_for(&format!("h{i}"), &format!("r{j}"), json!({}))).collect();
        d.post_events(ALICE_TOKEN, &Value::Array(array));
    }
    // Alice's calls take the slots they may: wait until her targets hold connections.
    wait_until(Duration::from_secs(20), "alice's calls to start", || {
        (hanging.iter().map(Receiver::count).sum::<usize>() >= 64).then_some(())
    });
    let healthy = Receiver::start(0, |_, _| Reply::Status(200));
    let id = d.create_webhook(BOB_TOKEN, &webhook_body("bob-actor", &healthy.url("/")));
    let sent = Instant::now();
    let answer = d.post_events(BOB_TOKEN, &event_for("bob-actor", "b1", json!({})));
    let dispatch = answer["dispatchIds"][0].as_str().unwrap().to_string();
    let ended = d.wait_ended(BOB_TOKEN, &dispatch, Duration::from_secs(30));
    let took = sent.elapsed();
    println!(
        "20 hanging targets x 20 events: bob's dispatch {} after {took:?}; alice holds {} calls",
        ended["status"],
        hanging.iter().map(Receiver::count).sum::<usize>()
    );
    assert_eq!(ended["status"], "SUCCEEDED", "{id}");
    assert!(took < Duration::from_secs(5), "bob's delivery took {took:?}");
    // Alice holds no more than her share of the call slots.
    let holding: usize = hanging.iter().map(Receiver::count).sum();
    assert!(holding <= 64, "alice's hanging targets hold {holding} calls");
}

/// Row 6: sockets from one address trickling a byte at a time; another client is served.
#[test]
fn trickling_connections_from_one_address_leave_room_for_others() {
    let d = TestDaemon::start(&format!(
        "[limits]\nconnections_max = {}\nconnections_per_peer_max = {}\n",
        size(64, 1024),
        size(16, 256)
    ));
    let sockets = size(200, 2000);
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, addr) = (stop.clone(), d.addr);
        std::thread::spawn(move || trickle(addr, sockets, &stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let probe = Probe::bob_lists(d.addr);
    std::thread::sleep(Duration::from_secs(size(3, 20) as u64));
    let latency = probe.finish();
    stop.store(true, Ordering::SeqCst);
    let held = attacker.join().unwrap();
    println!("{sockets} trickling sockets from 127.0.0.2: at most {held} held open at once");
    latency.assert_within("slowloris", 500, 2000);
}

/// Opens `sockets` connections from 127.0.0.2, each sending one byte of a request head every
/// 2 s (reconnecting when closed), until `stop`; returns the most that were open at once.
fn trickle(addr: SocketAddr, sockets: usize, stop: &AtomicBool) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..sockets {
            let (open, most) = (open.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                loop {
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else { return };
                    if socket.bind("127.0.0.2:0".parse().unwrap()).is_err() {
                        return;
                    }
                    let Ok(mut stream) = socket.connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let n = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    for b in b"GET /v2/webhooks HTTP/1.1\r\nX-Slow: ".iter().cycle() {
                        if stream.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for t in tasks {
            t.abort();
        }
        most.load(Ordering::SeqCst)
    })
}

/// Row 7: large static templates on many webhooks.
#[test]
fn large_templates_are_refused_and_the_largest_allowed_stay_within_memory() {
    let d = TestDaemon::start(PRIVATE);
    let url = closed_url();
    let mut body = webhook_body("big", &url);
    body["payloadTemplate"] = json!(format!("[{}1]", "1,".repeat(500_000)));
    let r = d.req("POST", "/v2/webhooks", Some(ALICE_TOKEN), Some(&body));
    assert_refused(&r, 400, "limits.template_bytes_max");
    // The largest allowed: 64 KiB templates of tiny values (a parsed tree of one would be
    // megabytes), each different, on as many webhooks as the user may have.
    let webhooks = size(100, 1000);
    create_many(&d, webhooks, |i| {
        let mut b = webhook_body("big", &url);
        b["payloadTemplate"] = json!(format!("[{i}{}]", ",1".repeat(32_000)));
        b
    });
    assert_peak_rss(&d, "64 KiB templates, idle", 512);
    let probe = Probe::bob_lists(d.addr);
    let r = post_alice(&d, event_for("big", "r1", json!({})).to_string().as_bytes());
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    probe.finish().assert_within("64 KiB templates", 1000, 3000);
    assert_peak_rss(&d, "64 KiB templates, rendered", 768);
}

/// Row 8: deleting a webhook with a long history of ACTIVE dispatches.
#[test]
fn deleting_a_webhook_with_many_active_dispatches_never_stalls_the_writer() {
    let mut d = TestDaemon::start(PRIVATE);
    let dispatches = size(5000, 300_000);
    let id = d.create_webhook(ALICE_TOKEN, &webhook_body("del", &closed_url()));
    for chunk in 0..dispatches / 1000 {
        let array: Vec<Value> =
            (0..1000).map(|j| event_for("del", &format!("r{chunk}-{j}"), json!({}))).collect();
        d.post_events(ALICE_TOKEN, &Value::Array(array));
    }
    // Bob writes all along: each create waits for the writer.
    let probe = Probe::start({
        let addr = d.addr;
        move || {
            let auth = format!("Bearer {BOB_TOKEN}");
            let body = webhook_body("bob", "http://127.0.0.1:9/x").to_string();
            let h = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
            let r = try_raw_request(addr, "POST", "/v2/webhooks", &h, body.as_bytes())
                .map_err(|e| e.to_string())?;
            let r = if r.status == 201 { r } else { return Err(format!("status {}", r.status)) };
            let id = r.json()["data"]["id"].as_str().unwrap_or_default().to_string();
            let del = try_raw_request(addr, "DELETE", &format!("/v2/webhooks/{id}"), &h[..1], b"")
                .map_err(|e| e.to_string())?;
            if del.status == 204 { Ok(()) } else { Err(format!("delete status {}", del.status)) }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let r = d.req("DELETE", &format!("/v2/webhooks/{id}"), Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 204);
    println!(
        "delete of a webhook with {dispatches} ACTIVE dispatches answered in {:?}",
        started.elapsed()
    );
    let failed = |d: &TestDaemon| {
        d.all_dispatches(ALICE_TOKEN).iter().filter(|i| i["status"] == "FAILED").count()
    };
    wait_until(Duration::from_secs(size(30, 600) as u64), "every dispatch to end", || {
        (failed(&d) == dispatches).then_some(())
    });
    println!("all {dispatches} ended {:?} after the delete", started.elapsed());
    probe.finish().assert_within("delete", 1000, 3000);
    // One of them, read back: ended by the removal.
    let listed = d.req("GET", "/v2/webhook-dispatches?limit=1", Some(ALICE_TOKEN), None).json();
    let one = listed["data"]["items"][0]["id"].as_str().unwrap().to_string();
    let calls = d.dispatch(ALICE_TOKEN, &one)["calls"].as_array().unwrap().clone();
    assert_eq!(calls.last().unwrap()["errorMessage"], "Webhook was removed.");
    // A kill during a sweep: the next start finishes it.
    let id = d.create_webhook(ALICE_TOKEN, &webhook_body("del2", &closed_url()));
    for chunk in 0..3 {
        let array: Vec<Value> =
            (0..1000).map(|j| event_for("del2", &format!("k{chunk}-{j}"), json!({}))).collect();
        d.post_events(ALICE_TOKEN, &Value::Array(array));
    }
    assert_eq!(d.req("DELETE", &format!("/v2/webhooks/{id}"), Some(ALICE_TOKEN), None).status, 204);
    d.restart();
    let total = dispatches + 3000;
    wait_until(Duration::from_secs(30), "the sweep to finish after a restart", || {
        (failed(&d) == total).then_some(())
    });
}

/// Row 11: a resource too large for its default payload (rows 9 and 10, headers and URLs a
/// sender cannot send, are in limits.rs; row 12, a half-written token file, in app.rs).
#[test]
fn a_resource_too_large_to_render_is_refused_at_ingest() {
    let d = TestDaemon::start(PRIVATE);
    d.create_webhook(ALICE_TOKEN, &webhook_body("huge", &closed_url()));
    let probe = Probe::bob_lists(d.addr);
    let mb = size(5, 8);
    let event = event_for("huge", "r1", json!({"blob": "x".repeat(mb * 1_000_000)}));
    let r = post_alice(&d, event.to_string().as_bytes());
    assert_refused(&r, 413, "limits.template_output_bytes_max");
    let listed = d.req("GET", "/v2/webhook-dispatches?limit=1", Some(ALICE_TOKEN), None).json();
    assert_eq!(listed["data"]["total"], 0, "refused, not accepted and FAILED");
    println!("a {mb} MB resource: 413 at ingest");
    probe.finish().assert_within("large resource", 1000, 3000);
    assert_peak_rss(&d, "large resource", 256);
}
