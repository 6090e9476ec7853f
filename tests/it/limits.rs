//! Budgets and validation at the door: a request over a configured limit, or one a sender could
//! not carry out, is refused whole with a 4xx that names the limit, and nothing is stored.

use serde_json::{Value, json};

use crate::support::*;

/// Everything a user's requests can change: their webhooks (full objects) and dispatches.
fn stored(d: &TestDaemon, token: &str) -> (Value, Value) {
    let list = d.req("GET", "/v2/webhooks?limit=1000", Some(token), None).json();
    let mut hooks = Vec::new();
    for item in list["data"]["items"].as_array().unwrap() {
        let id = item["id"].as_str().unwrap();
        hooks.push(d.req("GET", &format!("/v2/webhooks/{id}"), Some(token), None).json());
    }
    let dispatches = d.req("GET", "/v2/webhook-dispatches?limit=1000", Some(token), None).json();
    (Value::Array(hooks), dispatches["data"]["items"].clone())
}

/// Sends `body` and checks the refusal: status, error type, and every text in `message_has`.
fn refused(
    d: &TestDaemon,
    what: &str,
    (method, path): (&str, &str),
    body: &Value,
    (status, error_type): (u16, &str),
    message_has: &[&str],
) {
    let r = d.req(method, path, Some(ALICE_TOKEN), Some(body));
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, status, "{what}: {text}");
    assert_eq!(r.error_type(), error_type, "{what}: {text}");
    for part in message_has {
        assert!(r.json()["error"]["message"].as_str().unwrap().contains(part), "{what}: {text}");
    }
}

fn create_with(field: &str, value: Value) -> Value {
    let mut b = webhook_body("act1", "https://e.com/h");
    b[field] = value;
    b
}

#[test]
fn what_a_sender_cannot_send_is_refused_at_the_door() {
    let d = TestDaemon::start("[limits]\ntemplate_bytes_max = 2000\ntemplate_variables_max = 10");
    let id = d.create_webhook(ALICE_TOKEN, &webhook_body("act1", "https://e.com/h"));
    let before = stored(&d, ALICE_TOKEN);
    let post = ("POST", "/v2/webhooks");
    let put_path = format!("/v2/webhooks/{id}");
    let put = ("PUT", put_path.as_str());
    let bad = (400, "invalid-input");
    for name in ["Content-Length", "transfer-encoding", "Connection", "TE", "Proxy-Authorization"] {
        let t = json!(format!(r#"{{"{name}": "5"}}"#));
        refused(&d, name, post, &create_with("headersTemplate", t.clone()), bad, &[name]);
        refused(&d, name, put, &json!({"headersTemplate": t}), bad, &[name]);
    }
    for value in [r#""a\rb""#, r#""a\nX-Injected: 1""#, r#""a\u0000""#, r#""caf\u00e9""#] {
        let t = json!(format!(r#"{{"X-A": {value}}}"#));
        refused(&d, value, post, &create_with("headersTemplate", t), bad, &["X-A", "CR"]);
    }
    for url in ["http://127.0.0.1:8080\\@evil/", "http://e.com\\x/"] {
        refused(&d, url, post, &create_with("requestUrl", json!(url)), bad, &["requestUrl"]);
        refused(&d, url, put, &json!({"requestUrl": url}), bad, &["requestUrl"]);
    }
    let big = json!(format!("[{}1]", "1,".repeat(1000)));
    let limit = ["2000", "limits.template_bytes_max"];
    refused(&d, "big template", post, &create_with("payloadTemplate", big.clone()), bad, &limit);
    refused(&d, "big template", put, &json!({"payloadTemplate": big}), bad, &limit);
    let many = json!(format!("[{}]", ["{{resource}}"; 11].join(",")));
    let limit = ["11", "10", "limits.template_variables_max"];
    refused(&d, "variables", post, &create_with("payloadTemplate", many.clone()), bad, &limit);
    refused(&d, "variables", put, &json!({"payloadTemplate": many}), bad, &limit);
    // Variables inside strings count when strings are interpolated.
    let in_strings = json!(format!(r#"{{"a": "{}"}}"#, "{{userId}}".repeat(11)));
    let mut body = create_with("payloadTemplate", in_strings.clone());
    body["shouldInterpolateStrings"] = json!(true);
    refused(&d, "string variables", post, &body, bad, &limit);
    let ok = d.req(
        "POST",
        "/v2/webhooks",
        Some(BOB_TOKEN),
        Some(&create_with("payloadTemplate", in_strings)),
    );
    assert_eq!(ok.status, 201, "not interpolated: the braces are text");
    for offset in ["+18:01", "-19:00", "+99:99"] {
        let mut event = run_event("ACTOR.RUN.SUCCEEDED", "act1", None, "r1");
        event["createdAt"] = json!(format!("2026-11-22T13:14:15{offset}"));
        refused(&d, offset, ("POST", "/v2/webhook-events"), &event, bad, &["createdAt", "18:00"]);
    }
    assert_eq!(stored(&d, ALICE_TOKEN), before, "nothing changed");
    let mut event = run_event("ACTOR.RUN.SUCCEEDED", "act1", None, "r1");
    event["createdAt"] = json!("2026-11-22T13:14:15+18:00");
    assert_eq!(d.post_events(ALICE_TOKEN, &event)["dispatchIds"].as_array().unwrap().len(), 1);
}

#[test]
fn budgets_refuse_a_request_whole_and_store_nothing() {
    let mut d = TestDaemon::start(
        "[limits]\nwebhooks_per_user_max = 20\ndispatches_per_request_max = 50\nrendered_bytes_per_request_max = 300000\ntemplate_output_bytes_max = 20000",
    );
    let twice = json!("[{{resource}}, {{resource}}]");
    for i in 0..20 {
        let mut body = webhook_body("act1", "https://e.com/h");
        if i == 0 {
            body["payloadTemplate"] = twice.clone();
        }
        d.create_webhook(ALICE_TOKEN, &body);
    }
    let before = stored(&d, ALICE_TOKEN);
    let post = ("POST", "/v2/webhooks");
    let limit = ["20", "limits.webhooks_per_user_max"];
    let body = webhook_body("act1", "https://e.com/h");
    refused(&d, "21st webhook", post, &body, (400, "too-many-webhooks"), &limit);
    let mut keyed = body.clone();
    keyed["idempotencyKey"] = json!("k1");
    refused(&d, "21st webhook with a key", post, &keyed, (400, "too-many-webhooks"), &limit);
    assert_eq!(d.req("POST", "/v2/webhooks", Some(BOB_TOKEN), Some(&body)).status, 201, "bob");
    // The count is the stored one, after a restart too.
    d.restart();
    refused(&d, "21st webhook after a restart", post, &body, (400, "too-many-webhooks"), &limit);

    let events = ("POST", "/v2/webhook-events");
    let too_large = (413, "request-too-large");
    let event = |resource: Value| {
        let mut e = run_event("ACTOR.RUN.SUCCEEDED", "act1", None, "r1");
        e["resource"] = resource;
        e
    };
    // 3 events x 20 matching webhooks = 60 dispatches.
    let three = json!([event(json!({})), event(json!({})), event(json!({}))]);
    let limit = ["more than 50", "limits.dispatches_per_request_max"];
    refused(&d, "fan-out", events, &three, too_large, &limit);
    // 2 events x 20 webhooks x ~9 KB (one webhook renders it twice) > 300,000 bytes.
    let nine_kb = json!({"blob": "x".repeat(9000)});
    let two = json!([event(nine_kb.clone()), event(nine_kb)]);
    let limit = ["300000", "limits.rendered_bytes_per_request_max"];
    refused(&d, "rendered bytes", events, &two, too_large, &limit);
    // A resource whose default payload could not be rendered is refused, not FAILED later.
    let huge = event(json!({"blob": "x".repeat(20_000)}));
    let limit = ["20000", "limits.template_output_bytes_max"];
    refused(&d, "default payload", events, &huge, too_large, &limit);
    let job = json!({"actId": "act1", "status": "SUCCEEDED", "blob": "x".repeat(20_000)});
    refused(&d, "job report", ("PUT", "/v2/actor-runs/r9"), &job, too_large, &limit);
    assert_eq!(d.req("GET", "/v2/actor-runs/r9", Some(ALICE_TOKEN), None).status, 404);
    assert_eq!(stored(&d, ALICE_TOKEN), before, "nothing changed");

    // Within every budget: accepted, one dispatch per webhook.
    let ok = d.post_events(ALICE_TOKEN, &json!([event(json!({"n": 1})), event(json!({"n": 2}))]));
    let ids: usize =
        ok.as_array().unwrap().iter().map(|a| a["dispatchIds"].as_array().unwrap().len()).sum();
    assert_eq!(ids, 40);
    // A delete frees a place under the limit.
    let list = d.req("GET", "/v2/webhooks?limit=1", Some(ALICE_TOKEN), None).json();
    let first = list["data"]["items"][0]["id"].as_str().unwrap().to_string();
    let deleted = d.req("DELETE", &format!("/v2/webhooks/{first}"), Some(ALICE_TOKEN), None);
    assert_eq!(deleted.status, 204);
    d.create_webhook(ALICE_TOKEN, &body);
    refused(&d, "21st again", post, &body, (400, "too-many-webhooks"), &["20"]);
}
