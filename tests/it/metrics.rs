//! `GET /metrics` scraped during and after a load, parsed by the official Prometheus Python
//! client's strict OpenMetrics parser, and checked against what the test sent and what the
//! receivers got; the gauges against a known in-flight and waiting state; `metrics.token`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::clients::python_env;
use crate::support::receiver::{Receiver, Reply, eventually};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The samples of a scrape, parsed by `prometheus_client`: (name, labels, value).
struct Scrape(Vec<(String, serde_json::Map<String, Value>, f64)>);

impl Scrape {
    fn take(d: &TestDaemon, token: Option<&str>) -> Scrape {
        let r = d.req("GET", "/metrics", token, None);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.header("content-type").unwrap_or("").starts_with("application/openmetrics-text"));
        let mut child = Command::new(python_env())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/parse_metrics.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&r.body).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the parser refused the text: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&r.body)
        );
        let samples: Vec<(String, serde_json::Map<String, Value>, f64)> =
            serde_json::from_slice(&out.stdout).unwrap();
        Scrape(samples)
    }

    /// The value of the sample `name` whose labels include `labels` (0 if there is none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels.iter().all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} matches {matching:?}");
        matching.first().copied().unwrap_or(0.0)
    }
}

#[test]
fn metrics_count_what_was_sent_and_delivered() {
    let ok = Receiver::start(0, |_, _| Reply::Status(200));
    let failing = Receiver::start(0, |_, _| Reply::Status(503));
    let d = TestDaemon::start(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = [10]\n[retention]\nfinished_max_age_ms = 2000\n",
    );
    d.create_webhook(ALICE_TOKEN, &webhook_body("good", &ok.url("/")));
    d.create_webhook(ALICE_TOKEN, &webhook_body("bad", &failing.url("/")));
    // 40 requests of 10 events from 4 threads, scraping while they run: 300 events reach the
    // good target, 100 the failing one (two calls each: one retry).
    let requests = 40;
    std::thread::scope(|s| {
        for t in 0..4 {
            let d = &d;
            s.spawn(move || {
                for i in 0..requests / 4 {
                    let actor = if (t * 10 + i) % 4 == 0 { "bad" } else { "good" };
                    let events: Vec<Value> = (0..10)
                        .map(|_| run_event("ACTOR.RUN.SUCCEEDED", actor, None, "r"))
                        .collect();
                    d.post_events(ALICE_TOKEN, &json!(events));
                }
            });
        }
        for _ in 0..3 {
            Scrape::take(&d, None);
        }
    });
    eventually(WAIT, "every delivery", || ok.count() == 300 && failing.count() == 200);
    let m = wait_until(WAIT, "every dispatch to end", || {
        let m = Scrape::take(&d, None);
        (m.value("hookd_dispatches_active", &[]) == 0.0
            && m.value("hookd_dispatches_ended_total", &[("status", "FAILED")]) == 100.0)
            .then_some(m)
    });
    assert_eq!(m.value("hookd_events_accepted_total", &[]), 400.0);
    assert_eq!(m.value("hookd_dispatches_created_total", &[]), 400.0);
    assert_eq!(m.value("hookd_calls_total", &[("outcome", "2xx")]), 300.0);
    assert_eq!(m.value("hookd_calls_total", &[("outcome", "5xx")]), 200.0);
    assert_eq!(m.value("hookd_dispatches_ended_total", &[("status", "SUCCEEDED")]), 300.0);
    assert_eq!(m.value("hookd_calls_in_flight", &[]), 0.0);
    let events = [("route", "/v2/webhook-events"), ("code", "2xx")];
    assert_eq!(m.value("hookd_http_requests_total", &events), requests as f64);
    let route = [("route", "/v2/webhook-events")];
    assert_eq!(m.value("hookd_http_request_duration_seconds_count", &route), requests as f64);
    assert_eq!(
        m.value("hookd_http_requests_total", &[("route", "/v2/webhooks"), ("code", "2xx")]),
        2.0
    );
    // Every write went through a group commit: at least the 40 ingests and 500 outcomes.
    assert!(m.value("hookd_group_commit_ops_sum", &[]) >= 540.0);
    assert!(m.value("hookd_group_commit_duration_seconds_count", &[]) >= 1.0);
    // The log says it too: each FAILED dispatch at warn, failed calls at info but at most one
    // line per target per 10 s (this run is shorter), a line per request.
    let log = d.log();
    assert_eq!(log.matches("dispatch FAILED: no more retries").count(), 100);
    let failed_call_lines = log.matches("call failed (at most one line per target").count();
    assert!((1..=2).contains(&failed_call_lines), "{failed_call_lines} lines");
    assert!(log.matches("hookd::access").count() >= requests + 2);
    if !d.on_postgres() {
        let file = std::fs::metadata(d.data_dir().join("hookd.redb")).unwrap().len();
        assert_eq!(m.value("hookd_store_file_bytes", &[]), file as f64);
    }
    // Retention (2 s) deletes all 400 dispatches and their 400 events.
    let m = wait_until(WAIT, "retention to delete everything", || {
        let m = Scrape::take(&d, None);
        (m.value("hookd_retention_deleted_total", &[("record", "event")]) == 400.0).then_some(m)
    });
    assert_eq!(m.value("hookd_retention_deleted_total", &[("record", "dispatch")]), 400.0);
    assert!(d.all_dispatches(ALICE_TOKEN).is_empty());
}

#[test]
fn gauges_show_calls_in_flight_and_how_late_the_oldest_due_dispatch_is() {
    // One call at a time per target, and the target hangs: the first dispatch is in flight,
    // the second is due and waits.
    let hanging = Receiver::start(0, |_, _| Reply::Hang(Duration::from_secs(60)));
    let d = TestDaemon::start(
        "[delivery]\nallow_private_targets = true\nper_target_inflight_max = 1\ntimeout_ms = 600000\n[limits]\nshutdown_grace_ms = 100\n",
    );
    d.create_webhook(ALICE_TOKEN, &webhook_body("a", &hanging.url("/")));
    d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r1"));
    d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r2"));
    eventually(WAIT, "the first call", || hanging.count() == 1);
    let m = wait_until(WAIT, "the waiting dispatch to be a second late", || {
        let m = Scrape::take(&d, None);
        (m.value("hookd_oldest_due_dispatch_age_seconds", &[]) >= 1.0).then_some(m)
    });
    assert_eq!(m.value("hookd_dispatches_active", &[]), 2.0);
    assert_eq!(m.value("hookd_calls_in_flight", &[]), 1.0);
    assert!(m.value("hookd_oldest_due_dispatch_age_seconds", &[]) < 30.0);
}

#[test]
fn metrics_token_is_the_only_key_when_set() {
    let d = TestDaemon::start("[metrics]\ntoken = \"scrape-secret-123\"\n");
    assert_eq!(d.req("GET", "/metrics", None, None).status, 401);
    assert_eq!(d.req("GET", "/metrics", Some(ALICE_TOKEN), None).status, 401);
    Scrape::take(&d, Some("scrape-secret-123"));
}
