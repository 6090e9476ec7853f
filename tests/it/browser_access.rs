//! What a browser page and a GET-only client need, as Apify's API gives it: CORS headers on
//! every answer, preflights answered without a token, and the `?method=` override.

use serde_json::json;

use crate::support::*;

#[test]
fn every_answer_may_be_read_from_any_origin_and_preflights_need_no_token() {
    let d = TestDaemon::start("");
    let auth = format!("Bearer {ALICE_TOKEN}");
    let origin = ("Origin", "https://console.example");
    // A success, an error without a token, and an unknown id all carry the header.
    for (path, headers, status) in [
        ("/v2/webhooks", vec![origin, ("Authorization", auth.as_str())], 200),
        ("/v2/webhooks", vec![origin], 401),
        ("/v2/webhooks/nope", vec![origin, ("Authorization", auth.as_str())], 404),
    ] {
        let r = raw_request(d.addr, "GET", path, &headers, b"");
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path} {status}");
    }
    // The preflight a page sends before a create with a token and a JSON body.
    let r = raw_request(
        d.addr,
        "OPTIONS",
        "/v2/webhooks",
        &[
            origin,
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization,content-type"),
        ],
        b"",
    );
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-methods"), Some("OPTIONS,GET,POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("authorization,content-type"));
    assert!(r.header("access-control-max-age").is_some());
    let r = raw_request(d.addr, "OPTIONS", "/v2/webhook-dispatches/x", &[origin], b"");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-methods"), Some("OPTIONS,GET"));
    // A 405 lists the methods as Apify does, the preflight's first.
    let r = raw_request(d.addr, "PATCH", "/v2/webhooks", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 405);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.ends_with("HTTP methods: OPTIONS,GET,POST"), "{message}");
}

#[test]
fn a_get_with_a_method_parameter_acts_as_that_method() {
    let rx = crate::support::receiver::Receiver::start(0, |_, _| {
        crate::support::receiver::Reply::Status(200)
    });
    let d = TestDaemon::start("[delivery]\nallow_private_targets = true\n");
    let id = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/hook")));
    let path = format!("/v2/webhooks/{id}");
    // Without a body a PUT or POST is refused as such: the override reached the route.
    let r = d.req("GET", &format!("{path}?method=put"), Some(ALICE_TOKEN), None);
    assert_eq!((r.status, r.error_type().as_str()), (400, "invalid-request"), "{:?}", r.json());
    let r = d.req("GET", "/v2/webhooks?method=POST", Some(ALICE_TOKEN), None);
    assert_eq!((r.status, r.error_type().as_str()), (400, "invalid-request"), "{:?}", r.json());
    // A method the route lacks is a 405, an unknown one a 400 naming it; neither changes anything.
    let r = d.req("GET", "/v2/webhook-dispatches?method=DELETE", Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 405);
    let r = d.req("GET", &format!("{path}?method=PATCH"), Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("\"PATCH\""));
    assert_eq!(d.req("GET", &path, Some(ALICE_TOKEN), None).status, 200);
    // Another user's id stays unreachable through the override.
    let r = d.req("GET", &format!("{path}?method=DELETE"), Some(BOB_TOKEN), None);
    assert_eq!(r.status, 404);
    // Only a GET is overridden: a POST with ?method=DELETE is a POST (405 on a webhook).
    let r = d.req("POST", &format!("{path}?method=DELETE"), Some(ALICE_TOKEN), Some(&json!({})));
    assert_eq!(r.status, 405);
    // The delete, through a GET, answers as a DELETE does and is done.
    let r = d.req("GET", &format!("{path}?method=DELETE"), Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(d.req("GET", &path, Some(ALICE_TOKEN), None).status, 404);
}
