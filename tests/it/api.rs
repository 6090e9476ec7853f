//! The webhook API over real HTTP against the real binary: the happy paths, pagination, and a
//! table of bad inputs, each answered with its documented status and error type while the
//! store stays unchanged.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Every webhook of alice and bob, in full, as the API shows them.
fn snapshot(d: &TestDaemon) -> Value {
    let mut all = Vec::new();
    for token in [ALICE_TOKEN, BOB_TOKEN] {
        let list = d.req("GET", "/v2/webhooks?limit=1000", Some(token), None).json();
        for item in list["data"]["items"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap();
            all.push(d.req("GET", &format!("/v2/webhooks/{id}"), Some(token), None).json());
        }
    }
    Value::Array(all)
}

#[test]
fn crud_round_trip() {
    let d = TestDaemon::start("");
    let created = d.req(
        "POST",
        "/v2/webhooks",
        Some(ALICE_TOKEN),
        Some(&json!({
            "eventTypes": ["ACTOR.RUN.SUCCEEDED", "ACTOR.RUN.FAILED"],
            "condition": {"actorId": "act1"},
            "requestUrl": "https://example.com/hook",
            "description": "d",
            "headersTemplate": "{\"X-A\": \"b\"}",
            "unknownField": 1
        })),
    );
    assert_eq!(created.status, 201, "{:?}", created.json());
    assert_eq!(created.header("content-type"), Some("application/json; charset=utf-8"));
    let w = created.json()["data"].clone();
    let id = w["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 17);
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(created.header("location"), Some(format!("/v2/webhooks/{id}").as_str()));
    assert_eq!(w["userId"], "alice");
    assert_eq!(w["isAdHoc"], false);
    assert_eq!(w["isEnabled"], true);
    assert_eq!(w["actionType"], "HTTP_REQUEST");
    assert_eq!(w["isApifyIntegration"], false);
    assert_eq!(w["lastDispatch"], Value::Null);
    assert_eq!(w["stats"], json!({"totalDispatches": 0}));
    assert_eq!(w["headersTemplate"], "{\"X-A\": \"b\"}");
    assert!(w["payloadTemplate"].as_str().unwrap().contains("{{resource}}"));
    let ts = w["createdAt"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z'));

    let got = d.req("GET", &format!("/v2/webhooks/{id}"), Some(ALICE_TOKEN), None);
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["data"], w);

    // Partial update: absent fields keep their value, null resets to the default.
    std::thread::sleep(Duration::from_millis(5));
    let updated = d.req(
        "PUT",
        &format!("/v2/webhooks/{id}"),
        Some(ALICE_TOKEN),
        Some(&json!({"requestUrl": "https://example.com/new", "headersTemplate": null})),
    );
    assert_eq!(updated.status, 200, "{:?}", updated.json());
    let u = updated.json()["data"].clone();
    assert_eq!(u["requestUrl"], "https://example.com/new");
    assert_eq!(u["headersTemplate"], Value::Null);
    assert_eq!(u["description"], "d");
    assert_eq!(u["eventTypes"], w["eventTypes"]);
    assert_ne!(u["modifiedAt"], w["modifiedAt"]);
    assert_eq!(u["createdAt"], w["createdAt"]);

    // List items leave out the templates.
    let list = d.req("GET", "/v2/webhooks", Some(ALICE_TOKEN), None).json()["data"].clone();
    assert_eq!(list["total"], 1);
    assert!(list["items"][0].get("payloadTemplate").is_none());
    assert!(list["items"][0].get("headersTemplate").is_none());
    assert_eq!(list["items"][0]["requestUrl"], "https://example.com/new");

    // Bob sees nothing of alice's.
    let bobs = d.req("GET", "/v2/webhooks", Some(BOB_TOKEN), None).json();
    assert_eq!(bobs["data"]["total"], 0);

    let del = d.req("DELETE", &format!("/v2/webhooks/{id}"), Some(ALICE_TOKEN), None);
    assert_eq!(del.status, 204);
    assert!(del.body.is_empty());
    let gone = d.req("GET", &format!("/v2/webhooks/{id}"), Some(ALICE_TOKEN), None);
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error_type(), "record-not-found");
}

#[test]
fn pagination_follows_the_apify_rules() {
    let d = TestDaemon::start("");
    let mut ids = Vec::new();
    for i in 0..7 {
        let r = d.req(
            "POST",
            "/v2/webhooks",
            Some(ALICE_TOKEN),
            Some(&webhook_body(&format!("a{}", i % 2), "https://e.com/h")),
        );
        assert_eq!(r.status, 201);
        let w = r.json()["data"].clone();
        ids.push((
            w["createdAt"].as_str().unwrap().to_string(),
            w["id"].as_str().unwrap().to_string(),
        ));
    }
    // The order is createdAt, then id (two creates in one millisecond are ordered by id).
    ids.sort();
    let ids: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    let page = |q: &str| {
        d.req("GET", &format!("/v2/webhooks?{q}"), Some(ALICE_TOKEN), None).json()["data"].clone()
    };
    let item_ids = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let p = page("limit=0");
    assert_eq!(
        (p["total"].clone(), p["limit"].clone(), p["count"].clone()),
        (json!(7), json!(1000), json!(7))
    );
    assert_eq!(item_ids(&p), ids);
    let p = page("limit=3&offset=2");
    assert_eq!(item_ids(&p), ids[2..5].to_vec());
    assert_eq!(
        (p["offset"].clone(), p["limit"].clone(), p["count"].clone(), p["desc"].clone()),
        (json!(2), json!(3), json!(3), json!(false))
    );
    let p = page("limit=2&desc=1");
    let mut rev = ids.clone();
    rev.reverse();
    assert_eq!(item_ids(&p), rev[..2].to_vec());
    assert_eq!(p["desc"], true);
    assert_eq!(item_ids(&page("desc=true&offset=6")), rev[6..].to_vec());
    let p = page("offset=100");
    assert_eq!((p["count"].clone(), p["total"].clone()), (json!(0), json!(7)));
    assert_eq!(page("limit=5000")["limit"], 1000);

    // Scoped lists: by actor (both prefixes) and by task.
    for prefix in ["actors", "acts"] {
        let p = d.req("GET", &format!("/v2/{prefix}/a0/webhooks"), Some(ALICE_TOKEN), None).json();
        assert_eq!(p["data"]["total"], 4, "{prefix}");
    }
    let r = d.req(
        "POST",
        "/v2/actor-tasks/t1/webhooks",
        Some(ALICE_TOKEN),
        Some(&json!({"eventTypes": ["ACTOR.RUN.FAILED"], "requestUrl": "https://e.com/t"})),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["data"]["condition"], json!({"actorTaskId": "t1"}));
    let p = d.req("GET", "/v2/actor-tasks/t1/webhooks", Some(ALICE_TOKEN), None).json();
    assert_eq!(p["data"]["total"], 1);
    let p = d.req("GET", "/v2/actor-tasks/t1/webhooks", Some(BOB_TOKEN), None).json();
    assert_eq!(p["data"]["total"], 0);
}

#[test]
fn idempotency_key_gives_one_webhook_even_when_creates_race() {
    let d = TestDaemon::start("");
    let addr = d.addr;
    let body = json!({
        "eventTypes": ["ACTOR.RUN.CREATED"], "condition": {"actorRunId": "run1"},
        "requestUrl": "https://e.com/h", "isAdHoc": true, "idempotencyKey": "race-key"
    })
    .to_string();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                raw_request(
                    addr,
                    "POST",
                    "/v2/webhooks",
                    &[
                        ("Authorization", &format!("Bearer {ALICE_TOKEN}")),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                )
            })
        })
        .collect();
    let responses: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let first = responses[0].json()["data"].clone();
    for r in &responses {
        assert_eq!(r.status, 201);
        assert_eq!(r.json()["data"], first);
    }
    let list = d.req("GET", "/v2/webhooks", Some(ALICE_TOKEN), None).json();
    assert_eq!(list["data"]["total"], 1);
    // Bob's key space is his own.
    let r =
        d.req("POST", "/v2/webhooks", Some(BOB_TOKEN), Some(&serde_json::from_str(&body).unwrap()));
    assert_eq!(r.status, 201);
    assert_ne!(r.json()["data"]["id"], first["id"]);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
        w.write_all(bytes).unwrap();
    }
    out
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn compressed_bodies_are_decoded() {
    let d = TestDaemon::start("");
    let mut body = webhook_body("zip", "https://e.com/h");
    body["description"] = json!("x".repeat(300));
    let raw = body.to_string().into_bytes();
    for (enc, bytes) in [
        ("gzip", gzip(&raw)),
        ("br", brotli(&raw)),
        ("deflate", deflate(&raw)),
        ("identity", raw.clone()),
    ] {
        let r = raw_request(
            d.addr,
            "POST",
            "/v2/webhooks",
            &[
                ("Authorization", &format!("Bearer {ALICE_TOKEN}")),
                ("Content-Type", "application/json"),
                ("Content-Encoding", enc),
            ],
            &bytes,
        );
        assert_eq!(r.status, 201, "{enc}: {:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["data"]["description"], body["description"]);
    }
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    error_type: &'static str,
    message_has: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &str,
    body: Vec<u8>,
    status: u16,
    error_type: &'static str,
    message_has: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        headers: vec![
            ("Authorization", format!("Bearer {ALICE_TOKEN}")),
            ("Content-Type", "application/json".into()),
        ],
        body,
        status,
        error_type,
        message_has,
    }
}

/// A create body with `field` replaced (or removed when `value` is None).
fn create_with(field: &str, value: Option<Value>) -> Vec<u8> {
    let mut b = webhook_body("act1", "https://e.com/h");
    match value {
        Some(v) => b[field] = v,
        None => {
            b.as_object_mut().unwrap().remove(field);
        }
    }
    b.to_string().into_bytes()
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let d = TestDaemon::start("[limits]\nbody_bytes_max = 2000000");
    let alice_hook = d
        .req(
            "POST",
            "/v2/webhooks",
            Some(ALICE_TOKEN),
            Some(&webhook_body("act1", "https://e.com/a")),
        )
        .json()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.req("POST", "/v2/webhooks", Some(BOB_TOKEN), Some(&webhook_body("act2", "https://e.com/b")));
    let before = snapshot(&d);
    let hook_path = format!("/v2/webhooks/{alice_hook}");
    let j = |v: Value| v.to_string().into_bytes();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bomb = gzip(&vec![b' '; 20 * 1024 * 1024]);
    let br_bomb = brotli(&vec![b' '; 20 * 1024 * 1024]);

    let mut cases = vec![
        case(
            "invalid JSON",
            "POST",
            "/v2/webhooks",
            b"{\"eventTypes\":".to_vec(),
            400,
            "invalid-request",
            "JSON",
        ),
        case(
            "array body",
            "POST",
            "/v2/webhooks",
            b"[]".to_vec(),
            400,
            "invalid-request",
            "JSON object",
        ),
        case(
            "empty body",
            "POST",
            "/v2/webhooks",
            Vec::new(),
            400,
            "invalid-request",
            "JSON object",
        ),
        case(
            "string body",
            "POST",
            "/v2/webhooks",
            b"\"x\"".to_vec(),
            400,
            "invalid-request",
            "JSON object",
        ),
        case(
            "deeply nested JSON",
            "POST",
            "/v2/webhooks",
            deep.into_bytes(),
            400,
            "invalid-request",
            "JSON",
        ),
        case(
            "eventTypes a string",
            "POST",
            "/v2/webhooks",
            create_with("eventTypes", Some(json!("ACTOR.RUN.CREATED"))),
            400,
            "invalid-input",
            "eventTypes",
        ),
        case(
            "eventTypes missing",
            "POST",
            "/v2/webhooks",
            create_with("eventTypes", None),
            400,
            "invalid-input",
            "eventTypes",
        ),
        case(
            "eventTypes empty",
            "POST",
            "/v2/webhooks",
            create_with("eventTypes", Some(json!([]))),
            400,
            "invalid-input",
            "eventTypes",
        ),
        case(
            "eventTypes unknown",
            "POST",
            "/v2/webhooks",
            create_with("eventTypes", Some(json!(["ACTOR.RUN.STARTED"]))),
            400,
            "invalid-input",
            "eventTypes",
        ),
        case(
            "eventTypes TEST",
            "POST",
            "/v2/webhooks",
            create_with("eventTypes", Some(json!(["TEST"]))),
            400,
            "invalid-input",
            "eventTypes",
        ),
        case(
            "eventTypes numbers",
            "POST",
            "/v2/webhooks",
            create_with("eventTypes", Some(json!([1]))),
            400,
            "invalid-input",
            "eventTypes",
        ),
        case(
            "condition missing",
            "POST",
            "/v2/webhooks",
            create_with("condition", None),
            400,
            "invalid-input",
            "condition",
        ),
        case(
            "condition a string",
            "POST",
            "/v2/webhooks",
            create_with("condition", Some(json!("act1"))),
            400,
            "invalid-input",
            "condition",
        ),
        case(
            "condition with no key",
            "POST",
            "/v2/webhooks",
            create_with("condition", Some(json!({}))),
            400,
            "invalid-input",
            "condition",
        ),
        case(
            "condition with only nulls",
            "POST",
            "/v2/webhooks",
            create_with("condition", Some(json!({"actorId": null}))),
            400,
            "invalid-input",
            "condition",
        ),
        case(
            "condition empty id",
            "POST",
            "/v2/webhooks",
            create_with("condition", Some(json!({"actorId": ""}))),
            400,
            "invalid-input",
            "condition.actorId",
        ),
        case(
            "condition id a number",
            "POST",
            "/v2/webhooks",
            create_with("condition", Some(json!({"actorTaskId": 5}))),
            400,
            "invalid-input",
            "condition.actorTaskId",
        ),
        case(
            "isAdHoc without actorRunId",
            "POST",
            "/v2/webhooks",
            create_with("isAdHoc", Some(json!(true))),
            400,
            "invalid-input",
            "isAdHoc",
        ),
        case(
            "isAdHoc a string",
            "POST",
            "/v2/webhooks",
            create_with("isAdHoc", Some(json!("true"))),
            400,
            "invalid-input",
            "isAdHoc",
        ),
        case(
            "doNotRetry a number",
            "POST",
            "/v2/webhooks",
            create_with("doNotRetry", Some(json!(1))),
            400,
            "invalid-input",
            "doNotRetry",
        ),
        case(
            "ignoreSslErrors a string",
            "POST",
            "/v2/webhooks",
            create_with("ignoreSslErrors", Some(json!("no"))),
            400,
            "invalid-input",
            "ignoreSslErrors",
        ),
        case(
            "requestUrl missing",
            "POST",
            "/v2/webhooks",
            create_with("requestUrl", None),
            400,
            "invalid-input",
            "requestUrl",
        ),
        case(
            "requestUrl relative",
            "POST",
            "/v2/webhooks",
            create_with("requestUrl", Some(json!("/hook"))),
            400,
            "invalid-input",
            "requestUrl",
        ),
        case(
            "requestUrl ftp",
            "POST",
            "/v2/webhooks",
            create_with("requestUrl", Some(json!("ftp://e.com/x"))),
            400,
            "invalid-input",
            "requestUrl",
        ),
        case(
            "requestUrl a number",
            "POST",
            "/v2/webhooks",
            create_with("requestUrl", Some(json!(5))),
            400,
            "invalid-input",
            "requestUrl",
        ),
        case(
            "requestUrl too long",
            "POST",
            "/v2/webhooks",
            create_with("requestUrl", Some(json!(format!("https://e.com/{}", "a".repeat(500))))),
            400,
            "invalid-input",
            "requestUrl",
        ),
        case(
            "description too long",
            "POST",
            "/v2/webhooks",
            create_with("description", Some(json!("d".repeat(321)))),
            400,
            "invalid-input",
            "description",
        ),
        case(
            "idempotencyKey too long",
            "POST",
            "/v2/webhooks",
            create_with("idempotencyKey", Some(json!("k".repeat(129)))),
            400,
            "invalid-input",
            "idempotencyKey",
        ),
        case(
            "idempotencyKey empty",
            "POST",
            "/v2/webhooks",
            create_with("idempotencyKey", Some(json!(""))),
            400,
            "invalid-input",
            "idempotencyKey",
        ),
        case(
            "idempotencyKey a number",
            "POST",
            "/v2/webhooks",
            create_with("idempotencyKey", Some(json!(7))),
            400,
            "invalid-input",
            "idempotencyKey",
        ),
        case(
            "payloadTemplate too long",
            "POST",
            "/v2/webhooks",
            create_with("payloadTemplate", Some(json!(format!("[{}1]", "1,".repeat(500_001))))),
            400,
            "invalid-input",
            "payloadTemplate",
        ),
        case(
            "payloadTemplate unknown variable",
            "POST",
            "/v2/webhooks",
            create_with("payloadTemplate", Some(json!("{\"a\": {{bogus}}}"))),
            400,
            "invalid-input",
            "payloadTemplate",
        ),
        case(
            "payloadTemplate bad JSON",
            "POST",
            "/v2/webhooks",
            create_with("payloadTemplate", Some(json!("{\"a\": {{resource}}"))),
            400,
            "invalid-input",
            "payloadTemplate",
        ),
        case(
            "payloadTemplate a number",
            "POST",
            "/v2/webhooks",
            create_with("payloadTemplate", Some(json!(5))),
            400,
            "invalid-input",
            "payloadTemplate",
        ),
        case(
            "headersTemplate not an object",
            "POST",
            "/v2/webhooks",
            create_with("headersTemplate", Some(json!("[1]"))),
            400,
            "invalid-input",
            "headersTemplate",
        ),
        case(
            "headersTemplate number value",
            "POST",
            "/v2/webhooks",
            create_with("headersTemplate", Some(json!("{\"X\": 1}"))),
            400,
            "invalid-input",
            "headersTemplate",
        ),
        case(
            "body over the limit",
            "POST",
            "/v2/webhooks",
            vec![b' '; 2_000_001],
            413,
            "request-too-large",
            "2000000",
        ),
        case("gzip bomb", "POST", "/v2/webhooks", bomb, 413, "request-too-large", "limit"),
        case("brotli bomb", "POST", "/v2/webhooks", br_bomb, 413, "request-too-large", "limit"),
        case(
            "unknown Content-Encoding",
            "POST",
            "/v2/webhooks",
            j(webhook_body("a", "https://e.com")),
            415,
            "unsupported-content-encoding",
            "zstd",
        ),
        case(
            "corrupt gzip",
            "POST",
            "/v2/webhooks",
            b"not gzip at all".to_vec(),
            400,
            "invalid-request",
            "decode",
        ),
        case(
            "missing token",
            "POST",
            "/v2/webhooks",
            j(webhook_body("a", "https://e.com")),
            401,
            "token-not-provided",
            "token",
        ),
        case(
            "wrong token",
            "POST",
            "/v2/webhooks",
            j(webhook_body("a", "https://e.com")),
            401,
            "invalid-token",
            "token",
        ),
        case(
            "wrong query token",
            "POST",
            "/v2/webhooks?token=nope",
            j(webhook_body("a", "https://e.com")),
            401,
            "invalid-token",
            "token",
        ),
        case(
            "missing token on GET",
            "GET",
            "/v2/webhooks",
            Vec::new(),
            401,
            "token-not-provided",
            "token",
        ),
        case(
            "another user's webhook: GET",
            "GET",
            &hook_path,
            Vec::new(),
            404,
            "record-not-found",
            "not found",
        ),
        case(
            "another user's webhook: PUT",
            "PUT",
            &hook_path,
            j(json!({"description": "mine"})),
            404,
            "record-not-found",
            "not found",
        ),
        case(
            "another user's webhook: DELETE",
            "DELETE",
            &hook_path,
            Vec::new(),
            404,
            "record-not-found",
            "not found",
        ),
        case(
            "unknown webhook: PUT",
            "PUT",
            "/v2/webhooks/AAAAAAAAAAAAAAAAA",
            j(json!({"description": "x"})),
            404,
            "record-not-found",
            "not found",
        ),
        case(
            "update changes isAdHoc",
            "PUT",
            &hook_path,
            j(json!({"isAdHoc": true})),
            400,
            "invalid-input",
            "isAdHoc",
        ),
        case(
            "update nulls the condition",
            "PUT",
            &hook_path,
            j(json!({"condition": null})),
            400,
            "invalid-input",
            "condition",
        ),
        case(
            "update with an empty condition",
            "PUT",
            &hook_path,
            j(json!({"condition": {}})),
            400,
            "invalid-input",
            "condition",
        ),
        case(
            "update with a bad template",
            "PUT",
            &hook_path,
            j(json!({"payloadTemplate": "{{nope}}"})),
            400,
            "invalid-input",
            "payloadTemplate",
        ),
        case(
            "update with a bad URL",
            "PUT",
            &hook_path,
            j(json!({"requestUrl": "e.com"})),
            400,
            "invalid-input",
            "requestUrl",
        ),
        case(
            "update with invalid JSON",
            "PUT",
            &hook_path,
            b"{".to_vec(),
            400,
            "invalid-request",
            "JSON",
        ),
        case(
            "update turning on interpolation over a bad string variable",
            "PUT",
            &hook_path,
            j(
                json!({"shouldInterpolateStrings": true, "payloadTemplate": "{\"a\": \"{{nope}}\"}"}),
            ),
            400,
            "invalid-input",
            "payloadTemplate",
        ),
        case(
            "bad limit",
            "GET",
            "/v2/webhooks?limit=abc",
            Vec::new(),
            400,
            "invalid-input",
            "limit",
        ),
        case(
            "bad desc",
            "GET",
            "/v2/webhooks?desc=maybe",
            Vec::new(),
            400,
            "invalid-input",
            "desc",
        ),
        case(
            "unknown path",
            "GET",
            "/v2/nothing-here",
            Vec::new(),
            404,
            "record-not-found",
            "endpoint",
        ),
        case(
            "wrong method",
            "PATCH",
            "/v2/webhooks",
            Vec::new(),
            405,
            "method-not-allowed",
            "GET,POST",
        ),
        case(
            "wrong method on a webhook",
            "POST",
            &hook_path,
            Vec::new(),
            405,
            "method-not-allowed",
            "GET,PUT,DELETE",
        ),
    ];
    for c in cases.iter_mut() {
        match c.name {
            "gzip bomb" | "corrupt gzip" => c.headers.push(("Content-Encoding", "gzip".into())),
            "brotli bomb" => c.headers.push(("Content-Encoding", "br".into())),
            "unknown Content-Encoding" => c.headers.push(("Content-Encoding", "zstd".into())),
            "missing token" | "missing token on GET" | "wrong query token" => {
                c.headers.retain(|(n, _)| *n != "Authorization")
            }
            "wrong token" => c.headers[0].1 = "Bearer nope".into(),
            n if n.starts_with("another user's") => c.headers[0].1 = format!("Bearer {BOB_TOKEN}"),
            _ => {}
        }
    }
    assert!(cases.len() >= 50);
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = raw_request(d.addr, c.method, &c.path, &headers, &c.body);
        assert_eq!(r.status, c.status, "{}: {:?}", c.name, String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"), "{}", c.name);
        let body = r.json();
        assert_eq!(body["error"]["type"], c.error_type, "{}: {body}", c.name);
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(c.message_has),
            "{}: message {message:?} lacks {:?}",
            c.name,
            c.message_has
        );
    }
    assert_eq!(snapshot(&d), before, "a refused request changed the store");
}

#[test]
fn probes_answer_without_a_token() {
    let d = TestDaemon::start("");
    for token in [None, Some("wrong-token")] {
        let r = d.req("GET", "/healthz", token, None);
        assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
        let r = d.req("GET", "/readyz", token, None);
        assert_eq!((r.status, r.json()), (200, json!({"status": "ready"})));
    }
    assert_eq!(d.req("HEAD", "/readyz", None, None).status, 200);
    let r = d.req("POST", "/healthz", None, Some(&json!({})));
    assert_eq!((r.status, r.error_type().as_str()), (405, "method-not-allowed"));
    // The API itself still wants one.
    assert_eq!(d.req("GET", "/v2/webhooks", None, None).status, 401);
}
