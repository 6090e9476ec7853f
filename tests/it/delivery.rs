//! Delivery against real receivers on loopback: payloads byte for byte, templates, reserved
//! headers, retries and their outcomes, ad-hoc webhooks, conditions, user isolation, TLS,
//! the SSRF guard and fairness between targets.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::receiver::{Receiver, Reply, eventually, free_port};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

/// Test config: private targets allowed, retries a few milliseconds apart.
fn fast(retry_delays_ms: &str, timeout_ms: u64) -> String {
    format!(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = {retry_delays_ms}\ntimeout_ms = {timeout_ms}\n"
    )
}

fn ok_receiver() -> Receiver {
    Receiver::start(0, |_, _| Reply::Status(200))
}

#[test]
fn default_payload_arrives_byte_for_byte_with_the_reserved_headers() {
    let rx = ok_receiver();
    let d = TestDaemon::start(&fast("[10]", 5000));
    let hook = d.create_webhook(ALICE_TOKEN, &webhook_body("actA", &rx.url("/hook")));
    let answer = d.post_events(
        ALICE_TOKEN,
        &json!({
            "eventType": "ACTOR.RUN.SUCCEEDED",
            "eventData": {"actorId": "actA", "actorRunId": "run1", "extra": "dropped"},
            "resource": {"id": "run1", "actId": "actA", "status": "SUCCEEDED", "exitCode": 0, "nested": {"a": [1, 2.5, null]}},
            "createdAt": "2026-11-22T13:14:15.123Z",
        }),
    );
    assert_eq!(answer["eventType"], "ACTOR.RUN.SUCCEEDED");
    assert_eq!(answer["createdAt"], "2026-11-22T13:14:15.123Z");
    let dispatch_id = answer["dispatchIds"][0].as_str().unwrap().to_string();
    assert_eq!(answer["dispatchIds"].as_array().unwrap().len(), 1);
    eventually(WAIT, "the delivery", || rx.count() == 1);
    let got = &rx.received()[0];
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        r#"{"userId":"alice","createdAt":"2026-11-22T13:14:15.123Z","eventType":"ACTOR.RUN.SUCCEEDED","eventData":{"actorId":"actA","actorRunId":"run1"},"resource":{"id":"run1","actId":"actA","status":"SUCCEEDED","exitCode":0,"nested":{"a":[1,2.5,null]}}}"#
    );
    assert_eq!(got.path, "/hook");
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-apify-webhook"), Some(hook.as_str()));
    assert_eq!(got.header("x-apify-webhook-dispatch-id"), Some(dispatch_id.as_str()));
    assert_eq!(got.header("x-apify-request-origin"), Some("WEBHOOK"));
    assert!(got.header("user-agent").unwrap().starts_with("hookd/"));
    let dispatch = d.wait_ended(ALICE_TOKEN, &dispatch_id, WAIT);
    assert_eq!(dispatch["status"], "SUCCEEDED");
    assert_eq!(dispatch["webhookId"], hook);
    assert_eq!(dispatch["eventData"], json!({"actorId": "actA", "actorRunId": "run1"}));
    assert_eq!(dispatch["webhook"]["requestUrl"], rx.url("/hook"));
    let calls = dispatch["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["responseStatus"], 200);
    assert_eq!(calls[0]["errorMessage"], Value::Null);
    assert_eq!(calls[0]["responseBody"], "ok");
    let w = d.req("GET", &format!("/v2/webhooks/{hook}"), Some(ALICE_TOKEN), None).json()["data"]
        .clone();
    assert_eq!(w["stats"]["totalDispatches"], 1);
    assert_eq!(w["lastDispatch"]["status"], "SUCCEEDED");
    assert!(w["lastDispatch"]["finishedAt"].is_string());
}

#[test]
fn custom_templates_interpolate_and_reserved_headers_win() {
    let rx = ok_receiver();
    let d = TestDaemon::start(&fast("[10]", 5000));
    let mut body = webhook_body("actA", &rx.url("/t"));
    body["shouldInterpolateStrings"] = json!(true);
    body["payloadTemplate"] = json!(
        r#"{"run": "{{resource.id}}", "msg": "Run {{resource.id}} of {{eventData.actorId}}", "code": {{resource.exitCode}}, "data": "{{eventData}}", "gone": "{{resource.nothing}}"}"#
    );
    body["headersTemplate"] = json!(
        r#"{"X-Run": "{{resource.id}}", "content-TYPE": "text/plain", "X-Apify-Webhook": "forged", "User-Agent": "nope", "X-Static": "s"}"#
    );
    let hook = d.create_webhook(ALICE_TOKEN, &body);
    let mut event = run_event("ACTOR.RUN.SUCCEEDED", "actA", None, "r9");
    event["resource"]["exitCode"] = json!(3);
    d.post_events(ALICE_TOKEN, &event);
    eventually(WAIT, "the delivery", || rx.count() == 1);
    let got = &rx.received()[0];
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        r#"{"run":"r9","msg":"Run r9 of actA","code":3,"data":{"actorId":"actA","actorRunId":"r9"}}"#
    );
    assert_eq!(got.header("x-run"), Some("r9"));
    assert_eq!(got.header("x-static"), Some("s"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-apify-webhook"), Some(hook.as_str()));
    assert!(got.header("user-agent").unwrap().starts_with("hookd/"));
    assert_eq!(got.headers.iter().filter(|(n, _)| n == "content-type").count(), 1);
}

#[test]
fn retries_after_500_timeout_and_refused_connection_then_succeeds() {
    // 500 once, then 200.
    let rx500 = Receiver::start(0, |_, i| Reply::Status(if i == 0 { 500 } else { 200 }));
    // Hangs past the timeout once, then 200.
    let rx_slow = Receiver::start(0, |_, i| {
        if i == 0 { Reply::Hang(Duration::from_secs(3)) } else { Reply::Status(200) }
    });
    // Nothing listens at first; a receiver starts there after the first call failed.
    let refused_port = free_port();
    let d = TestDaemon::start(&fast("[300, 300, 300, 300]", 700));
    let h500 = d.create_webhook(ALICE_TOKEN, &webhook_body("a500", &rx500.url("/")));
    let hslow = d.create_webhook(ALICE_TOKEN, &webhook_body("aslow", &rx_slow.url("/")));
    let hrefused = d.create_webhook(
        ALICE_TOKEN,
        &webhook_body("aref", &format!("http://127.0.0.1:{refused_port}/")),
    );
    let ids: Vec<String> = ["a500", "aslow", "aref"]
        .iter()
        .map(|a| d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", a, None, "r"))["dispatchIds"][0].as_str().unwrap().to_string())
        .collect();
    eventually(WAIT, "the refused call", || {
        d.dispatch(ALICE_TOKEN, &ids[2])["calls"].as_array().unwrap().len() == 1
    });
    let _rx_late = Receiver::start(refused_port, |_, _| Reply::Status(200));
    for (id, hook) in ids.iter().zip([&h500, &hslow, &hrefused]) {
        let dispatch = d.wait_ended(ALICE_TOKEN, id, WAIT);
        assert_eq!(dispatch["status"], "SUCCEEDED", "{dispatch}");
        let calls = dispatch["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2, "{dispatch}");
        assert_eq!(calls[1]["responseStatus"], 200);
        assert_eq!(calls[1]["errorMessage"], Value::Null);
        assert!(calls[0]["errorMessage"].is_string());
        let w =
            d.req("GET", &format!("/v2/webhooks/{hook}"), Some(ALICE_TOKEN), None).json()["data"]
                .clone();
        assert_eq!(w["lastDispatch"]["status"], "SUCCEEDED");
    }
    let first = |id: &String| d.dispatch(ALICE_TOKEN, id)["calls"][0].clone();
    assert_eq!(first(&ids[0])["responseStatus"], 500);
    assert_eq!(first(&ids[0])["errorMessage"], "Endpoint responded with HTTP status code 500");
    assert_eq!(first(&ids[1])["errorMessage"], "Request timed out after 700 ms");
    assert_eq!(first(&ids[1])["responseStatus"], Value::Null);
    let refused = first(&ids[2])["errorMessage"].as_str().unwrap().to_string();
    assert!(refused.to_lowercase().contains("refused"), "{refused}");
}

#[test]
fn fails_after_the_last_delay_and_do_not_retry_means_one_call() {
    let rx = Receiver::start(0, |_, _| Reply::Status(500));
    let d = TestDaemon::start(&fast("[20, 20]", 5000));
    let hook = d.create_webhook(ALICE_TOKEN, &webhook_body("a1", &rx.url("/")));
    let mut once = webhook_body("a2", &rx.url("/"));
    once["doNotRetry"] = json!(true);
    d.create_webhook(ALICE_TOKEN, &once);
    let retried = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a1", None, "r"))["dispatchIds"][0].as_str().unwrap().to_string();
    let single = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a2", None, "r"))["dispatchIds"][0].as_str().unwrap().to_string();
    let dispatch = d.wait_ended(ALICE_TOKEN, &retried, WAIT);
    assert_eq!(dispatch["status"], "FAILED");
    let calls = dispatch["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3, "{dispatch}");
    assert!(calls.iter().all(|c| c["responseStatus"] == 500 && c["responseBody"] == "ok"));
    let w = d.req("GET", &format!("/v2/webhooks/{hook}"), Some(ALICE_TOKEN), None).json()["data"]
        .clone();
    assert_eq!(w["lastDispatch"]["status"], "FAILED");
    let dispatch = d.wait_ended(ALICE_TOKEN, &single, WAIT);
    assert_eq!(dispatch["status"], "FAILED");
    assert_eq!(dispatch["calls"].as_array().unwrap().len(), 1);
    // Nothing more arrives for either: both have ended, and every call made is stored.
    assert_eq!(d.wait_all_ended(ALICE_TOKEN, WAIT), 4);
    assert_eq!(rx.count(), 4);
}

#[test]
fn retry_after_is_honoured() {
    let rx = Receiver::start(0, |_, i| {
        if i == 0 {
            Reply::StatusWith(429, vec![("Retry-After".into(), "1".into())])
        } else {
            Reply::Status(200)
        }
    });
    let d = TestDaemon::start(&fast("[10]", 5000));
    d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/")));
    let id =
        d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.FAILED", "a", None, "r"))["dispatchIds"]
            .clone();
    assert_eq!(id.as_array().unwrap().len(), 0, "a SUCCEEDED-only webhook does not fire on FAILED");
    let id = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r"))["dispatchIds"][0].as_str().unwrap().to_string();
    let dispatch = d.wait_ended(ALICE_TOKEN, &id, WAIT);
    assert_eq!(dispatch["status"], "SUCCEEDED");
    let got = rx.received();
    assert_eq!(got.len(), 2);
    // The retry waited for the second Retry-After asked for, not the 10 ms schedule.
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(1000));
}

#[test]
fn ad_hoc_webhook_fires_once() {
    let rx = ok_receiver();
    let d = TestDaemon::start(&fast("[10]", 5000));
    let hook = d.create_webhook(
        ALICE_TOKEN,
        &json!({"eventTypes": ["ACTOR.RUN.SUCCEEDED", "ACTOR.RUN.FAILED"], "condition": {"actorRunId": "run7"},
                "isAdHoc": true, "requestUrl": rx.url("/adhoc")}),
    );
    let first = d.post_events(
        ALICE_TOKEN,
        &json!([
            run_event("ACTOR.RUN.SUCCEEDED", "a", None, "run7"),
            run_event("ACTOR.RUN.FAILED", "a", None, "run7"),
        ]),
    );
    let later = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "run7"));
    assert_eq!(first[0]["dispatchIds"].as_array().unwrap().len(), 1);
    assert_eq!(first[1]["dispatchIds"].as_array().unwrap().len(), 0);
    assert_eq!(later["dispatchIds"].as_array().unwrap().len(), 0);
    eventually(WAIT, "the one delivery", || rx.count() == 1);
    let w = d.req("GET", &format!("/v2/webhooks/{hook}"), Some(ALICE_TOKEN), None).json()["data"]
        .clone();
    assert_eq!(w["stats"]["totalDispatches"], 1);
    assert_eq!(d.wait_all_ended(ALICE_TOKEN, WAIT), 1);
    assert_eq!(rx.count(), 1);
}

#[test]
fn conditions_match_exactly_the_right_events_and_users_stay_apart() {
    let rx = ok_receiver();
    let d = TestDaemon::start(&fast("[10]", 5000));
    let all_types = all_event_types();
    let hook = |token: &str, name: &str, condition: Value| {
        d.create_webhook(token, &json!({"eventTypes": all_types, "condition": condition, "requestUrl": rx.url(&format!("/{name}"))}))
    };
    hook(ALICE_TOKEN, "actor", json!({"actorId": "A"}));
    hook(ALICE_TOKEN, "task", json!({"actorTaskId": "T"}));
    hook(ALICE_TOKEN, "run", json!({"actorRunId": "R2"}));
    hook(ALICE_TOKEN, "actor-task", json!({"actorId": "A", "actorTaskId": "T"}));
    hook(ALICE_TOKEN, "other", json!({"actorId": "X"}));
    hook(BOB_TOKEN, "bob", json!({"actorId": "A"}));
    let events = json!([
        run_event("ACTOR.RUN.SUCCEEDED", "A", Some("T"), "R1"),
        run_event("ACTOR.RUN.FAILED", "A", None, "R2"),
        {"eventType": "ACTOR.BUILD.SUCCEEDED", "eventData": {"actorId": "A", "actorBuildId": "B1"}},
        run_event("ACTOR.RUN.CREATED", "Y", None, "R3"),
    ]);
    let answers = d.post_events(ALICE_TOKEN, &events);
    let counts: Vec<usize> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["dispatchIds"].as_array().unwrap().len())
        .collect();
    assert_eq!(counts, vec![3, 2, 1, 0]);
    eventually(WAIT, "six deliveries", || rx.count() == 6);
    assert_eq!(d.wait_all_ended(ALICE_TOKEN, WAIT), 6, "no dispatch is left to call");
    let mut got: Vec<(String, String)> = rx
        .received()
        .iter()
        .map(|r| {
            let b = r.json();
            let id = b["eventData"]["actorRunId"]
                .as_str()
                .or(b["eventData"]["actorBuildId"].as_str())
                .unwrap()
                .to_string();
            (r.path.clone(), id)
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = [
        ("/actor", "B1"),
        ("/actor", "R1"),
        ("/actor", "R2"),
        ("/actor-task", "R1"),
        ("/run", "R2"),
        ("/task", "R1"),
    ]
    .iter()
    .map(|(p, i)| (p.to_string(), i.to_string()))
    .collect();
    assert_eq!(got, want);
    // Bob's event reaches only Bob's webhook.
    d.post_events(BOB_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "A", Some("T"), "R9"));
    eventually(WAIT, "bob's delivery", || rx.count() == 7);
    assert_eq!(d.wait_all_ended(BOB_TOKEN, WAIT), 1);
    assert_eq!(d.wait_all_ended(ALICE_TOKEN, WAIT), 6);
    assert_eq!(rx.count(), 7);
    assert_eq!(rx.received()[6].path, "/bob");
    let bob_dispatches =
        d.req("GET", "/v2/webhook-dispatches", Some(BOB_TOKEN), None).json()["data"].clone();
    assert_eq!(bob_dispatches["total"], 1);
}

#[test]
fn tls_self_signed_is_refused_unless_ssl_errors_are_ignored() {
    let rx = Receiver::start_tls(|_, _| Reply::Status(200));
    let d = TestDaemon::start(&fast("[10]", 5000));
    let url = format!("https://localhost:{}/tls", rx.addr.port());
    let mut strict = webhook_body("strict", &url);
    strict["doNotRetry"] = json!(true);
    let mut lax = webhook_body("lax", &url);
    lax["ignoreSslErrors"] = json!(true);
    d.create_webhook(ALICE_TOKEN, &strict);
    d.create_webhook(ALICE_TOKEN, &lax);
    let id = |actor: &str| {
        d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", actor, None, "r"))["dispatchIds"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (strict_id, lax_id) = (id("strict"), id("lax"));
    let refused = d.wait_ended(ALICE_TOKEN, &strict_id, WAIT);
    assert_eq!(refused["status"], "FAILED");
    let message = refused["calls"][0]["errorMessage"].as_str().unwrap().to_string();
    assert!(message.contains("certificate"), "{message}");
    let reached = d.wait_ended(ALICE_TOKEN, &lax_id, WAIT);
    assert_eq!(reached["status"], "SUCCEEDED", "{reached}");
    assert_eq!(rx.count(), 1);
    assert_eq!(rx.received()[0].path, "/tls");
}

#[test]
fn private_targets_are_refused_before_connecting() {
    let rx = ok_receiver();
    let port = rx.addr.port();
    let d =
        TestDaemon::start("[delivery]\nallow_private_targets = false\nretry_delays_ms = [10]\n");
    let targets = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("http://0x7f.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ];
    for (i, url) in targets.iter().enumerate() {
        let mut body = webhook_body(&format!("a{i}"), url);
        body["doNotRetry"] = json!(true);
        d.create_webhook(ALICE_TOKEN, &body);
    }
    for (i, url) in targets.iter().enumerate() {
        let id = d.post_events(
            ALICE_TOKEN,
            &run_event("ACTOR.RUN.SUCCEEDED", &format!("a{i}"), None, "r"),
        )["dispatchIds"][0]
            .as_str()
            .unwrap()
            .to_string();
        let dispatch = d.wait_ended(ALICE_TOKEN, &id, WAIT);
        assert_eq!(dispatch["status"], "FAILED", "{url}");
        let message = dispatch["calls"][0]["errorMessage"].as_str().unwrap().to_string();
        assert!(
            message.contains("not a public address") || message.contains("non-public"),
            "{url}: {message}"
        );
        assert!(message.contains("allow_private_targets"), "{url}: {message}");
    }
    assert_eq!(rx.connections(), 0, "a forbidden target was connected to");
}

#[test]
fn a_dead_target_does_not_hold_up_a_healthy_one() {
    // The dead target accepts and never answers; each call times out after 2 s.
    let dead = Receiver::start(0, |_, _| Reply::Hang(Duration::from_secs(10)));
    let healthy = ok_receiver();
    let d = TestDaemon::start(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = [50, 50]\ntimeout_ms = 2000\nper_target_inflight_max = 4\ninflight_max = 8\n",
    );
    d.create_webhook(ALICE_TOKEN, &webhook_body("dead", &dead.url("/")));
    d.create_webhook(ALICE_TOKEN, &webhook_body("healthy", &healthy.url("/")));
    let start = std::time::Instant::now();
    // The dead target's events come first, so its dispatches are due first.
    let dead_events: Vec<Value> =
        (0..30).map(|i| run_event("ACTOR.RUN.SUCCEEDED", "dead", None, &format!("d{i}"))).collect();
    let healthy_events: Vec<Value> = (0..30)
        .map(|i| run_event("ACTOR.RUN.SUCCEEDED", "healthy", None, &format!("h{i}")))
        .collect();
    let dead_ids: Vec<String> = d
        .post_events(ALICE_TOKEN, &Value::Array(dead_events))
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["dispatchIds"][0].as_str().unwrap().to_string())
        .collect();
    d.post_events(ALICE_TOKEN, &Value::Array(healthy_events));
    eventually(WAIT, "all healthy deliveries", || healthy.count() == 30);
    // Bound: every healthy delivery arrived before the dead target's first call timed out,
    // while the dead target held only its per-target share of the in-flight slots.
    let elapsed = start.elapsed();
    assert!(dead.count() <= 4, "dead target got {} calls at once", dead.count());
    let completed_dead_calls: usize = dead_ids
        .iter()
        .map(|id| d.dispatch(ALICE_TOKEN, id)["calls"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        completed_dead_calls, 0,
        "healthy deliveries took {elapsed:?}, past the dead target's timeout"
    );
    println!("30 healthy deliveries in {elapsed:?} beside a dead target");
}

#[test]
fn a_dropped_connection_is_a_failed_call_and_is_retried() {
    let rx = Receiver::start(0, |_, i| if i == 0 { Reply::Drop } else { Reply::Status(204) });
    let d = TestDaemon::start(&fast("[20]", 5000));
    d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/")));
    let id = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r"))["dispatchIds"][0]
        .as_str()
        .unwrap()
        .to_string();
    let dispatch = d.wait_ended(ALICE_TOKEN, &id, WAIT);
    assert_eq!(dispatch["status"], "SUCCEEDED");
    let calls = dispatch["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[0]["errorMessage"].as_str().unwrap().starts_with("Cannot send request"),
        "{dispatch}"
    );
    assert_eq!(calls[1]["responseStatus"], 204);
}

#[test]
fn deleting_a_webhook_ends_its_active_dispatches() {
    let rx = Receiver::start(0, |_, _| Reply::Status(500));
    let d = TestDaemon::start(&fast("[60000]", 5000));
    let hook = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/")));
    let id = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r"))["dispatchIds"][0]
        .as_str()
        .unwrap()
        .to_string();
    eventually(WAIT, "the first call", || {
        d.dispatch(ALICE_TOKEN, &id)["calls"].as_array().unwrap().len() == 1
    });
    assert_eq!(d.dispatch(ALICE_TOKEN, &id)["status"], "ACTIVE");
    assert_eq!(
        d.req("DELETE", &format!("/v2/webhooks/{hook}"), Some(ALICE_TOKEN), None).status,
        204
    );
    let dispatch = d.dispatch(ALICE_TOKEN, &id);
    assert_eq!(dispatch["status"], "FAILED");
    let calls = dispatch["calls"].as_array().unwrap();
    assert_eq!(calls.last().unwrap()["errorMessage"], "Webhook was removed.");
    assert_eq!(
        d.req("GET", "/v2/webhook-dispatches", Some(ALICE_TOKEN), None).json()["data"]["total"],
        1
    );
    assert_eq!(
        d.req("GET", &format!("/v2/webhooks/{hook}/dispatches"), Some(ALICE_TOKEN), None).status,
        404
    );
}

#[test]
fn dispatch_routes_test_list_and_get() {
    let rx = ok_receiver();
    let d = TestDaemon::start(&fast("[10]", 5000));
    let hook = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/")));
    // The test route takes any body and content type, or none.
    let r = raw_request(
        d.addr,
        "POST",
        &format!("/v2/webhooks/{hook}/test"),
        &[
            ("Authorization", &format!("Bearer {ALICE_TOKEN}")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"",
    );
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let test = r.json()["data"].clone();
    assert_eq!(test["eventType"], "TEST");
    assert_eq!(test["eventData"], Value::Null);
    assert_eq!(test["status"], "ACTIVE");
    assert_eq!(test["webhook"]["actionType"], "HTTP_REQUEST");
    let r = raw_request(
        d.addr,
        "POST",
        &format!("/v2/webhooks/{hook}/test"),
        &[("Authorization", &format!("Bearer {ALICE_TOKEN}")), ("Content-Type", "text/plain")],
        b"not json at all",
    );
    assert_eq!(r.status, 201);
    eventually(WAIT, "two test deliveries", || rx.count() == 2);
    let body = rx.received()[0].json();
    assert_eq!(body["eventType"], "TEST");
    assert_eq!(body["eventData"], Value::Null);
    assert!(body["resource"].is_object());
    let ended = d.wait_ended(ALICE_TOKEN, test["id"].as_str().unwrap(), WAIT);
    assert_eq!(ended["status"], "SUCCEEDED");
    let event = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r"));
    let list = d
        .req(
            "GET",
            &format!("/v2/webhooks/{hook}/dispatches?desc=1&limit=2"),
            Some(ALICE_TOKEN),
            None,
        )
        .json()["data"]
        .clone();
    assert_eq!(list["total"], 3);
    assert_eq!(list["count"], 2);
    assert_eq!(list["items"][0]["id"], event["dispatchIds"][0]);
    assert_eq!(list["items"][0]["eventType"], "ACTOR.RUN.SUCCEEDED");
    let all =
        d.req("GET", "/v2/webhook-dispatches?offset=1", Some(ALICE_TOKEN), None).json()["data"]
            .clone();
    assert_eq!(all["total"], 3);
    assert_eq!(all["count"], 2);
    // Another user sees none of it.
    assert_eq!(
        d.req("GET", &format!("/v2/webhooks/{hook}/test"), Some(ALICE_TOKEN), None).status,
        405
    );
    assert_eq!(
        d.req("POST", &format!("/v2/webhooks/{hook}/test"), Some(BOB_TOKEN), None).status,
        404
    );
    assert_eq!(
        d.req("GET", &format!("/v2/webhooks/{hook}/dispatches"), Some(BOB_TOKEN), None).status,
        404
    );
    let id = test["id"].as_str().unwrap();
    let r = d.req("GET", &format!("/v2/webhook-dispatches/{id}"), Some(BOB_TOKEN), None);
    assert_eq!((r.status, r.error_type()), (404, "record-not-found".to_string()));
    assert_eq!(
        d.req("GET", "/v2/webhook-dispatches", Some(BOB_TOKEN), None).json()["data"]["total"],
        0
    );
    let w = d.req("GET", &format!("/v2/webhooks/{hook}"), Some(ALICE_TOKEN), None).json()["data"]
        .clone();
    assert_eq!(w["stats"]["totalDispatches"], 3);
}

#[test]
fn event_idempotency_keys_replay_the_first_answer() {
    let rx = ok_receiver();
    let d = TestDaemon::start(&fast("[10]", 5000));
    d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/")));
    let mut e = run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r");
    e["idempotencyKey"] = json!("evt-1");
    let first = d.post_events(ALICE_TOKEN, &e);
    let again = d.post_events(ALICE_TOKEN, &e);
    assert_eq!(first, again);
    let in_array =
        d.post_events(ALICE_TOKEN, &json!([e, run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r2")]));
    assert_eq!(in_array[0], first);
    eventually(WAIT, "two deliveries", || rx.count() == 2);
    assert_eq!(d.wait_all_ended(ALICE_TOKEN, WAIT), 2, "two dispatches, each called once");
    assert_eq!(rx.count(), 2);
    // Bob's keys are his own.
    let bobs = d.post_events(BOB_TOKEN, &e);
    assert_ne!(bobs["id"], first["id"]);
}

#[test]
fn bad_events_are_refused_and_change_nothing() {
    let rx = ok_receiver();
    let d = TestDaemon::start(&fast("[10]", 5000));
    d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/")));
    let good = run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r");
    let with = |k: &str, v: Value| {
        let mut e = good.clone();
        e[k] = v;
        e
    };
    let many: Vec<Value> = (0..1001).map(|_| good.clone()).collect();
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("empty array", json!([]), "invalid-request", "empty"),
        ("too many", Value::Array(many), "invalid-request", "1000"),
        ("a string", json!("x"), "invalid-request", "event"),
        (
            "unknown type",
            with("eventType", json!("ACTOR.RUN.STARTED")),
            "invalid-input",
            "eventType",
        ),
        ("TEST type", with("eventType", json!("TEST")), "invalid-input", "eventType"),
        ("no type", with("eventType", Value::Null), "invalid-input", "eventType"),
        ("no data", with("eventData", Value::Null), "invalid-input", "eventData"),
        (
            "no run id",
            with("eventData", json!({"actorId": "a"})),
            "invalid-input",
            "eventData.actorRunId",
        ),
        (
            "no actor id",
            with("eventData", json!({"actorRunId": "r"})),
            "invalid-input",
            "eventData.actorId",
        ),
        (
            "build without build id",
            json!({"eventType": "ACTOR.BUILD.FAILED", "eventData": {"actorId": "a", "actorRunId": "r"}}),
            "invalid-input",
            "eventData.actorBuildId",
        ),
        ("resource a string", with("resource", json!("x")), "invalid-input", "resource"),
        ("bad createdAt", with("createdAt", json!("yesterday")), "invalid-input", "createdAt"),
        (
            "long key",
            with("idempotencyKey", json!("k".repeat(129))),
            "invalid-input",
            "idempotencyKey",
        ),
        (
            "one bad in an array",
            json!([good, with("eventType", json!("nope"))]),
            "invalid-input",
            "Event 1",
        ),
    ];
    for (name, body, kind, message) in cases {
        let r = d.req("POST", "/v2/webhook-events", Some(ALICE_TOKEN), Some(&body));
        assert_eq!(r.status, 400, "{name}: {:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error_type(), kind, "{name}");
        let m = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(m.contains(message), "{name}: {m}");
    }
    assert_eq!(
        d.req("GET", "/v2/webhook-dispatches", Some(ALICE_TOKEN), None).json()["data"]["total"],
        0
    );
    assert_eq!(d.req("POST", "/v2/webhook-events", None, Some(&good)).status, 401);
    // No dispatch is stored (above), so nothing can ever be sent.
    assert_eq!(d.wait_all_ended(ALICE_TOKEN, WAIT), 0);
    assert_eq!(rx.count(), 0);
}

#[test]
fn run_and_build_state_reports_raise_the_implied_events() {
    let rx = ok_receiver();
    let d = TestDaemon::start(&fast("[10]", 5000));
    let all_types = all_event_types();
    d.create_webhook(
        ALICE_TOKEN,
        &json!({"eventTypes": all_types, "condition": {"actorId": "A"}, "requestUrl": rx.url("/")}),
    );
    // (path, status, HTTP status, events raised)
    let steps: &[(&str, &str, u16, &[&str])] = &[
        ("actor-runs/run1", "READY", 200, &["ACTOR.RUN.CREATED"]),
        ("actor-runs/run1", "RUNNING", 200, &[]),
        ("actor-runs/run1", "SUCCEEDED", 200, &["ACTOR.RUN.SUCCEEDED"]),
        ("actor-runs/run1", "FAILED", 409, &[]),
        ("actor-runs/run1", "RUNNING", 200, &["ACTOR.RUN.RESURRECTED"]),
        ("actor-runs/run1", "TIMING-OUT", 200, &[]),
        ("actor-runs/run1", "TIMED-OUT", 200, &["ACTOR.RUN.TIMED_OUT"]),
        ("actor-runs/run2", "FAILED", 200, &["ACTOR.RUN.CREATED", "ACTOR.RUN.FAILED"]),
        ("actor-runs/run3", "RUNNING", 200, &["ACTOR.RUN.CREATED"]),
        ("actor-runs/run3", "ABORTING", 200, &[]),
        ("actor-runs/run3", "ABORTED", 200, &["ACTOR.RUN.ABORTED"]),
        ("actor-runs/run3", "SUCCEEDED", 409, &[]),
        ("actor-builds/b1", "RUNNING", 200, &["ACTOR.BUILD.CREATED"]),
        ("actor-builds/b1", "SUCCEEDED", 200, &["ACTOR.BUILD.SUCCEEDED"]),
        ("actor-builds/b1", "ABORTED", 409, &[]),
        ("actor-builds/b2", "TIMED-OUT", 200, &["ACTOR.BUILD.CREATED", "ACTOR.BUILD.TIMED_OUT"]),
        ("actor-builds/b3", "RUNNING", 200, &["ACTOR.BUILD.CREATED"]),
        ("actor-builds/b3", "FAILED", 200, &["ACTOR.BUILD.FAILED"]),
    ];
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (path, status, http, raised) in steps {
        let before = d.req("GET", &format!("/v2/{path}"), Some(ALICE_TOKEN), None);
        let body = json!({"actId": "A", "status": status, "defaultDatasetId": "ds1", "startedAt": "2026-11-22T13:00:00.000Z"});
        let r = d.req("PUT", &format!("/v2/{path}"), Some(ALICE_TOKEN), Some(&body));
        assert_eq!(r.status, *http, "{path} -> {status}: {:?}", String::from_utf8_lossy(&r.body));
        let after = d.req("GET", &format!("/v2/{path}"), Some(ALICE_TOKEN), None);
        if *http == 409 {
            assert_eq!(r.error_type(), "invalid-state-transition");
            assert_eq!(after.json(), before.json(), "a refused report changed the stored job");
        } else {
            assert_eq!(after.json()["data"]["status"], *status);
            assert_eq!(after.json()["data"]["defaultDatasetId"], "ds1");
        }
        // The dispatches this report created: every one not seen before.
        let list =
            d.req("GET", "/v2/webhook-dispatches", Some(ALICE_TOKEN), None).json()["data"].clone();
        let mut got: Vec<String> = Vec::new();
        for item in list["items"].as_array().unwrap() {
            if seen.insert(item["id"].as_str().unwrap().to_string()) {
                got.push(item["eventType"].as_str().unwrap().to_string());
            }
        }
        got.sort();
        let mut want: Vec<String> = raised.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{path} -> {status}");
    }
    let expected_total = seen.len();
    eventually(WAIT, "every delivery", || rx.count() == expected_total);
    // The stored run is each event's resource.
    let run = rx
        .received()
        .into_iter()
        .map(|r| r.json())
        .find(|b| b["eventType"] == "ACTOR.RUN.SUCCEEDED")
        .unwrap();
    assert_eq!(run["resource"]["id"], "run1");
    assert_eq!(run["resource"]["status"], "SUCCEEDED");
    assert_eq!(run["eventData"], json!({"actorId": "A", "actorRunId": "run1"}));
    let r = d.req("GET", "/v2/actor-runs/nope", Some(ALICE_TOKEN), None);
    assert_eq!((r.status, r.error_type()), (404, "record-not-found".to_string()));
    assert_eq!(d.req("GET", "/v2/actor-runs/run1", Some(BOB_TOKEN), None).status, 404);
    let r = d.req(
        "PUT",
        "/v2/actor-runs/x",
        Some(ALICE_TOKEN),
        Some(&json!({"actId": "A", "status": "DONE"})),
    );
    assert_eq!((r.status, r.error_type()), (400, "invalid-input".to_string()));
    let r = d.req("PUT", "/v2/actor-runs/x", Some(ALICE_TOKEN), Some(&json!({"status": "READY"})));
    assert_eq!((r.status, r.error_type()), (400, "invalid-input".to_string()));
    // A task run carries actorTaskId in eventData.
    d.req(
        "PUT",
        "/v2/actor-runs/t1",
        Some(ALICE_TOKEN),
        Some(&json!({"actId": "A", "actorTaskId": "T", "status": "RUNNING"})),
    );
    eventually(WAIT, "the task run's delivery", || rx.count() == expected_total + 1);
    let last = rx.received().last().unwrap().json();
    assert_eq!(last["eventData"], json!({"actorId": "A", "actorTaskId": "T", "actorRunId": "t1"}));
}

/// A webhook's `stats.totalDispatches`, its `lastDispatch` and its dispatch list, checked
/// against the dispatch ids the events were answered with (oldest first).
fn check_webhook_dispatches(d: &TestDaemon, hook: &str, ids: &[String], all_ended: bool) {
    let w = d.req("GET", &format!("/v2/webhooks/{hook}"), Some(ALICE_TOKEN), None).json()["data"]
        .clone();
    assert_eq!(w["stats"]["totalDispatches"], ids.len(), "{hook}: {w}");
    if all_ended {
        assert_eq!(w["lastDispatch"]["status"], "SUCCEEDED", "{hook}: {w}");
    }
    let path = format!("/v2/webhooks/{hook}/dispatches");
    let list = d.req("GET", &path, Some(ALICE_TOKEN), None).json()["data"].clone();
    assert_eq!(list["total"], ids.len(), "{hook}");
    let got: Vec<&str> =
        list["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids, "{hook}: the list in createdAt order");
    // A page from the newest end, crossing from the waiting dispatches into the folded ones.
    let page = d
        .req("GET", &format!("{path}?desc=1&offset=1&limit=3"), Some(ALICE_TOKEN), None)
        .json()["data"]
        .clone();
    let got: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = ids.iter().rev().skip(1).take(3).map(String::as_str).collect();
    assert_eq!(got, want, "{hook}: desc page");
}

/// Per-webhook stats and lists are folded into their tables only every
/// `limits.webhook_pending_max` dispatches (3 here); until then they wait in `webhook_pending`
/// and in memory. Reads must be exact at every point: between folds, after folds, after kill -9
/// (the waiting ones are read back from disk), and a delete ends waiting dispatches too.
#[test]
fn webhook_stats_and_lists_are_exact_across_folds_and_restarts() {
    let rx = ok_receiver();
    let config = format!("{}\n[limits]\nwebhook_pending_max = 3\n", fast("[10]", 5000));
    let mut d = TestDaemon::start(&config);
    let a = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/")));
    let b = d.create_webhook(ALICE_TOKEN, &webhook_body("b", &rx.url("/")));
    let (mut ids_a, mut ids_b) = (Vec::new(), Vec::new());
    let mut sent = 0;
    let mut send = |d: &TestDaemon, actor: &str, ids: &mut Vec<String>| {
        sent += 1;
        let answer = d.post_events(
            ALICE_TOKEN,
            &run_event("ACTOR.RUN.SUCCEEDED", actor, None, &format!("r{sent}")),
        );
        ids.push(answer["dispatchIds"][0].as_str().unwrap().to_string());
    };
    for round in 0..5 {
        // Uneven rounds, so that folds fall at different points of each webhook's list.
        for i in 0..(round + 1) {
            send(&d, "a", &mut ids_a);
            if i % 2 == 0 {
                send(&d, "b", &mut ids_b);
            }
        }
        check_webhook_dispatches(&d, &a, &ids_a, false);
        check_webhook_dispatches(&d, &b, &ids_b, false);
    }
    let delivered = ids_a.len() + ids_b.len();
    eventually(WAIT, "every delivery", || rx.count() == delivered);
    eventually(WAIT, "every dispatch SUCCEEDED", || {
        ids_a.iter().chain(&ids_b).all(|id| d.dispatch(ALICE_TOKEN, id)["status"] == "SUCCEEDED")
    });
    check_webhook_dispatches(&d, &a, &ids_a, true);
    check_webhook_dispatches(&d, &b, &ids_b, true);
    // One more for `a` leaves it waiting (the last fold was at a multiple of 3 or not: either
    // way the restart must read the waiting ones back from disk).
    send(&d, "a", &mut ids_a);
    d.kill9();
    d.restart();
    check_webhook_dispatches(&d, &a, &ids_a, false);
    check_webhook_dispatches(&d, &b, &ids_b, true);
    eventually(WAIT, "the last delivery", || {
        d.dispatch(ALICE_TOKEN, ids_a.last().unwrap())["status"] == "SUCCEEDED"
    });
    // A delete ends a waiting ACTIVE dispatch: make one that stays ACTIVE.
    rx.set_script(|_, _| Reply::Status(500));
    let c = d.create_webhook(ALICE_TOKEN, &webhook_body("c", &rx.url("/")));
    let mut ids_c = Vec::new();
    send(&d, "c", &mut ids_c);
    check_webhook_dispatches(&d, &c, &ids_c, false);
    assert_eq!(d.req("DELETE", &format!("/v2/webhooks/{c}"), Some(ALICE_TOKEN), None).status, 204);
    let ended = d.dispatch(ALICE_TOKEN, &ids_c[0]);
    assert_eq!(ended["status"], "FAILED", "{ended}");
    // Folds after the delete skip the deleted webhook's entries and keep the others exact.
    rx.set_script(|_, _| Reply::Status(200));
    for _ in 0..4 {
        send(&d, "a", &mut ids_a);
    }
    check_webhook_dispatches(&d, &a, &ids_a, false);
    check_webhook_dispatches(&d, &b, &ids_b, true);
}
