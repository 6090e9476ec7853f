//! Signed deliveries, verified by the official Standard Webhooks libraries (Python from PyPI,
//! JS from npm, pinned in tests/clients/ and installed under target/ like the Apify clients):
//! every delivery verifies with the webhook's key; a tampered body or a timestamp outside the
//! libraries' tolerance does not; after a rotation the old key verifies only during the
//! overlap; a given key is used as given; the key never shows in the webhook, its list, the
//! dispatch or the log.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::clients::{js_modules, python_env};
use crate::support::receiver::{Received, Receiver, Reply};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);
/// The rotation overlap in this test: long enough to deliver within, short enough to wait out.
const OVERLAP_MS: u64 = 3000;

/// A case for the verifier scripts: one delivery, a key, and what the library must say.
fn case(label: &str, secret: &str, r: &Received, expect: bool) -> (Value, bool) {
    let headers: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|n| (n.to_string(), json!(r.header(n).unwrap_or_else(|| panic!("no {n} header")))))
            .collect();
    let body = String::from_utf8(r.body.clone()).expect("UTF-8 body");
    (json!({"label": label, "secret": secret, "body": body, "headers": headers}), expect)
}

fn secret(d: &TestDaemon, webhook: &str) -> String {
    let r =
        d.req("GET", &format!("/v2/webhooks/{webhook}/signing-secret"), Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]["key"].as_str().expect("key").to_string()
}

/// Posts an event for `actor` and returns the delivery it causes at `rx` (the n-th, 1-based).
fn deliver(d: &TestDaemon, rx: &Receiver, actor: &str, run: &str, n: usize) -> Received {
    d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", actor, None, run));
    wait_until(WAIT, "the delivery", || (rx.count() >= n).then_some(()));
    rx.received()[n - 1].clone()
}

/// Runs both verifiers on `cases` and checks each answer against the expectation.
fn verify_with_both_libraries(cases: &[(Value, bool)]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    let list: Vec<&Value> = cases.iter().map(|(c, _)| c).collect();
    std::fs::write(file.path(), serde_json::to_vec(&list).unwrap()).unwrap();
    let clients = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let mut python = Command::new(python_env());
    python.arg(clients.join("verify_signatures.py")).arg(file.path());
    let mut node = Command::new("node");
    node.arg(clients.join("verify_signatures.js")).arg(file.path()).env("NODE_PATH", js_modules());
    for (what, mut cmd) in [("python standardwebhooks", python), ("js standardwebhooks", node)] {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{what}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let answers: Vec<Value> = serde_json::from_str(stdout.trim()).expect("a JSON answer");
        assert_eq!(answers.len(), cases.len(), "{what}: {stdout}");
        for ((c, expect), a) in cases.iter().zip(&answers) {
            assert_eq!(a["label"], c["label"]);
            assert_eq!(a["verified"], json!(expect), "{what}, case {}: {a}", c["label"]);
        }
    }
}

#[test]
fn deliveries_verify_with_the_standard_webhooks_libraries() {
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let d = TestDaemon::start(&format!(
        "[delivery]\nallow_private_targets = true\nsigning_rotation_overlap_ms = {OVERLAP_MS}\n"
    ));
    let mut templated = webhook_body("a", &rx.url("/a"));
    // A template cannot set the signing headers: they are reserved.
    templated["headersTemplate"] = json!(
        "{\"X-Mine\": \"1\", \"webhook-id\": \"forged\", \"Webhook-Signature\": \"v1,forged\"}"
    );
    let webhook = d.create_webhook(ALICE_TOKEN, &templated);
    let old_key = secret(&d, &webhook);
    assert!(old_key.starts_with("whsec_"), "{old_key}");

    let mut cases = Vec::new();
    let first = deliver(&d, &rx, "a", "run-1", 1);
    let dispatch_id = first.header("x-apify-webhook-dispatch-id").unwrap().to_string();
    assert_eq!(first.header("webhook-id"), Some(dispatch_id.as_str()), "the dispatch id");
    assert_eq!(first.header("x-mine"), Some("1"));
    assert_eq!(first.header("webhook-signature").unwrap().split(' ').count(), 1);
    cases.push(case("delivery", &old_key, &first, true));
    let mut tampered = case("tampered body", &old_key, &first, false);
    tampered.0["body"] = json!(tampered.0["body"].as_str().unwrap().replace("run-1", "run-2"));
    cases.push(tampered);
    let mut other_key =
        case("another webhook's key", &secret_of_new_webhook(&d, &rx), &first, false);
    other_key.0["label"] = json!("another webhook's key");
    cases.push(other_key);
    let mut stale =
        case("timestamp 10 minutes old, signed by the library", &old_key, &first, false);
    stale.0["resign_offset_s"] = json!(-600);
    cases.push(stale);
    let mut fresh = case("timestamp now, signed by the library", &old_key, &first, true);
    fresh.0["resign_offset_s"] = json!(0);
    cases.push(fresh);

    // Rotation: both keys sign during the overlap, then only the new one.
    let rotated = d.req(
        "POST",
        &format!("/v2/webhooks/{webhook}/signing-secret/rotate"),
        Some(ALICE_TOKEN),
        None,
    );
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let new_key = rotated.json()["data"]["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, old_key);
    assert_eq!(secret(&d, &webhook), new_key);
    let during = deliver(&d, &rx, "a", "run-2", 2);
    assert_eq!(during.header("webhook-signature").unwrap().split(' ').count(), 2);
    cases.push(case("overlap, new key", &new_key, &during, true));
    cases.push(case("overlap, old key", &old_key, &during, true));
    std::thread::sleep(Duration::from_millis(OVERLAP_MS + 200));
    let after = deliver(&d, &rx, "a", "run-3", 3);
    assert_eq!(after.header("webhook-signature").unwrap().split(' ').count(), 1);
    cases.push(case("after the overlap, new key", &new_key, &after, true));
    cases.push(case("after the overlap, old key", &old_key, &after, false));

    // A key given to rotate is the key.
    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let r = d.req(
        "POST",
        &format!("/v2/webhooks/{webhook}/signing-secret/rotate"),
        Some(ALICE_TOKEN),
        Some(&json!({"key": given})),
    );
    assert_eq!(r.json()["data"]["key"], given, "{}", r.text());
    let with_given = deliver(&d, &rx, "a", "run-4", 4);
    cases.push(case("a given key", given, &with_given, true));
    verify_with_both_libraries(&cases);

    // The key shows nowhere else.
    let raw_keys: Vec<String> = [&old_key, &new_key, &given.to_string()]
        .iter()
        .map(|k| k.trim_start_matches("whsec_").to_string())
        .collect();
    let shown = [
        d.req("GET", &format!("/v2/webhooks/{webhook}"), Some(ALICE_TOKEN), None).text(),
        d.req("GET", "/v2/webhooks", Some(ALICE_TOKEN), None).text(),
        d.req("GET", &format!("/v2/webhook-dispatches/{dispatch_id}"), Some(ALICE_TOKEN), None)
            .text(),
        d.log(),
    ];
    for text in &shown {
        for k in &raw_keys {
            assert!(!text.contains(k.as_str()), "a key shows in: {text}");
        }
    }
    // Another user's webhook: 404 for both routes; bad keys are refused by name.
    let r = d.req("GET", &format!("/v2/webhooks/{webhook}/signing-secret"), Some(BOB_TOKEN), None);
    assert_eq!(r.status, 404);
    let rotate = format!("/v2/webhooks/{webhook}/signing-secret/rotate");
    assert_eq!(d.req("POST", &rotate, Some(BOB_TOKEN), None).status, 404);
    for bad in [json!({"key": "nope"}), json!({"key": "whsec_AAAA"}), json!({"key": 5})] {
        let r = d.req("POST", &rotate, Some(ALICE_TOKEN), Some(&bad));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.text().contains("key"), "{}", r.text());
    }
    assert_eq!(secret(&d, &webhook), given, "a refused rotation changes nothing");
}

/// The key of a second webhook (on another actor, so it gets no delivery here).
fn secret_of_new_webhook(d: &TestDaemon, rx: &Receiver) -> String {
    let other = d.create_webhook(ALICE_TOKEN, &webhook_body("unused", &rx.url("/b")));
    secret(d, &other)
}

#[test]
fn signing_can_be_switched_off() {
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let d = TestDaemon::start("[delivery]\nallow_private_targets = true\nsign = false\n");
    d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/a")));
    let r = deliver(&d, &rx, "a", "run-1", 1);
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert_eq!(r.header(name), None, "{name}");
    }
    assert!(r.header("x-apify-webhook-dispatch-id").is_some());
}
