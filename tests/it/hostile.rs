//! Hostile input: seeded fuzzing of the template parser and of the HTTP request handling of
//! the real binary, plus the named nasty cases (deeply nested JSON, huge numbers, invalid
//! UTF-8, 10 MB strings, many and huge headers). Nothing may panic, hang, answer 5xx, or grow
//! the daemon's memory without bound.
//!
//! `FUZZ_SECONDS` (default 2) is each fuzzer's time budget; `FUZZ_SEED` picks the seed (default
//! from the clock, printed). A failure prints the seed and the input.

use std::time::{Duration, Instant};

use hookd::template::{Context, Template};
use serde_json::{Value, json};

use crate::support::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn budget() -> Duration {
    Duration::from_secs(
        std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2),
    )
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }) | 1
}

const TEMPLATE_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\\"",
    "\\\\",
    ":",
    ",",
    " ",
    "\n",
    "{{",
    "}}",
    "{{{",
    "}}}",
    "userId",
    "resource",
    "resource.id",
    "resource.items.1",
    "resource.items.length",
    "eventData",
    "globals",
    "globals.dateUnix",
    "createdAt",
    "eventType",
    "bogus",
    ".",
    "0",
    "1e400",
    "-0",
    "null",
    "true",
    "false",
    "\"a\"",
    "\"{{resource}}\"",
    "\"x {{userId}} y\"",
    "\u{1F600}",
    "\u{0}",
    "é",
    "\\u0000",
    "\\ud800",
    "12345678901234567890123",
    "{{resource.nested.deep}}",
];

fn random_template(rng: &mut Rng) -> String {
    let n = rng.below(40);
    (0..n).map(|_| *rng.pick(TEMPLATE_PIECES)).collect()
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!((rng.next() as f64) / 7.0),
        4 => Value::String((*rng.pick(TEMPLATE_PIECES)).to_string()),
        5 | 6 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| {
                    (
                        (*rng.pick(&["id", "items", "nested", "a", "length", "0"])).to_string(),
                        random_value(rng, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

#[test]
fn template_fuzz() {
    let seed = seed();
    let mut rng = Rng(seed);
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    let cap = 64 * 1024;
    while Instant::now() < deadline {
        let text = random_template(&mut rng);
        let interpolate = rng.below(2) == 0;
        let resource = random_value(&mut rng, 0);
        let ctx = Context::new(
            "u",
            1,
            "1970-01-01T00:00:00.001Z",
            "ACTOR.RUN.SUCCEEDED",
            json!({"actorId": "a"}),
            resource,
        );
        // The context's lazily built indexes are discarded with it after a panic.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Ok(t) = Template::parse(&text, interpolate) {
                let a = t.render_to_string(&ctx, cap);
                assert_eq!(a, t.render_to_string(&ctx, cap), "rendering is deterministic");
                if let Ok(s) = &a {
                    assert!(s.len() <= cap);
                    serde_json::from_str::<Value>(s).expect("output is JSON");
                }
            }
            if let Ok(t) = Template::parse_headers(&text, interpolate) {
                let _ = t.render_headers(&ctx, cap);
            }
        }));
        if outcome.is_err() {
            panic!(
                "template fuzz FUZZ_SEED={seed}: panicked on {text:?} (interpolate {interpolate})"
            );
        }
        runs += 1;
    }
    println!("template fuzz: seed {seed}, {runs} templates, no panic");
}

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v2/webhooks"),
    ("PUT", "/v2/webhooks/AAAAAAAAAAAAAAAAA"),
    ("POST", "/v2/actors/act1/webhooks"),
    ("POST", "/v2/webhook-events"),
    ("PUT", "/v2/actor-runs/run1"),
    ("PUT", "/v2/actor-builds/b1"),
    ("GET", "/v2/webhooks?limit=3&offset=1&desc=1"),
    ("POST", "/v2/webhooks/AAAAAAAAAAAAAAAAA/test"),
];

fn seed_bodies() -> Vec<Value> {
    vec![
        json!({"eventTypes": ["ACTOR.RUN.SUCCEEDED"], "condition": {"actorId": "act1"}, "requestUrl": "http://127.0.0.1:9/x",
               "payloadTemplate": "{\"a\": {{resource}}}", "headersTemplate": "{\"X\": \"{{userId}}\"}",
               "shouldInterpolateStrings": true, "idempotencyKey": "k", "description": "d"}),
        json!({"eventType": "ACTOR.RUN.SUCCEEDED", "eventData": {"actorId": "act1", "actorRunId": "r"}, "resource": {"id": "r"}}),
        json!([{"eventType": "ACTOR.BUILD.FAILED", "eventData": {"actorId": "act1", "actorBuildId": "b"}}]),
        json!({"actId": "act1", "status": "RUNNING", "actorTaskId": "t"}),
    ]
}

/// Replaces a random part of `v` with a hostile value.
fn mutate(rng: &mut Rng, v: &mut Value) {
    let hostile = |rng: &mut Rng| -> Value {
        match rng.below(9) {
            0 => json!(1e300),
            1 => serde_json::from_str("123456789012345678901234567890").unwrap_or(Value::Null),
            2 => json!(-1),
            3 => json!("x".repeat(rng.below(3000))),
            4 => json!([[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]),
            5 => json!({}),
            6 => json!(
                TEMPLATE_PIECES
                    .iter()
                    .take(rng.below(TEMPLATE_PIECES.len()))
                    .copied()
                    .collect::<String>()
            ),
            7 => Value::Null,
            _ => random_value(rng, 0),
        }
    };
    match v {
        Value::Object(m) if !m.is_empty() && rng.below(3) > 0 => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = rng.pick(&keys).clone();
            if rng.below(2) == 0 {
                let replacement = hostile(rng);
                m.insert(k, replacement);
            } else if let Some(inner) = m.get_mut(&k) {
                mutate(rng, inner);
            }
        }
        Value::Array(a) if !a.is_empty() && rng.below(3) > 0 => {
            let i = rng.below(a.len());
            mutate(rng, &mut a[i]);
        }
        other => *other = hostile(rng),
    }
}

/// Flips, drops or inserts a few bytes.
fn damage(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            bytes.push(rng.next() as u8);
            continue;
        }
        let i = rng.below(bytes.len());
        match rng.below(3) {
            0 => bytes[i] = rng.next() as u8,
            1 => {
                bytes.remove(i);
            }
            _ => bytes.insert(i, *rng.pick(b"{}[]\",:\\\xff\xc3")),
        }
    }
}

#[test]
fn request_fuzz() {
    let seed = seed();
    let mut rng = Rng(seed);
    let d = TestDaemon::start(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = [10]\ntimeout_ms = 200\n[limits]\nbody_bytes_max = 100000\n",
    );
    let auth = format!("Bearer {ALICE_TOKEN}");
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    let mut statuses = std::collections::BTreeMap::new();
    while Instant::now() < deadline {
        let (method, path) = *rng.pick(ROUTES);
        let mut body = rng.pick(&seed_bodies()).clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut body);
        }
        let mut bytes = body.to_string().into_bytes();
        if rng.below(4) == 0 {
            damage(&mut rng, &mut bytes);
        }
        let mut headers: Vec<(&str, &str)> =
            vec![("Authorization", &auth), ("Content-Type", "application/json")];
        let encodings = ["gzip", "br", "deflate", "identity", "gzip, br", "zstd", ""];
        let enc = *rng.pick(&encodings);
        if rng.below(5) == 0 {
            headers.push(("Content-Encoding", enc));
        }
        let r = try_raw_request(d.addr, method, path, &headers, &bytes).unwrap_or_else(|e| {
            panic!(
                "request fuzz FUZZ_SEED={seed}: no answer ({e}) to {method} {path} {:?}\nlog:\n{}",
                String::from_utf8_lossy(&bytes),
                d.log()
            )
        });
        assert!(
            r.status < 500 || r.status == 503,
            "request fuzz FUZZ_SEED={seed}: {} to {method} {path} {:?}: {:?}",
            r.status,
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&r.body)
        );
        if r.status >= 400 {
            assert!(
                !r.error_type().is_empty(),
                "an error without a type: {:?}",
                String::from_utf8_lossy(&r.body)
            );
        }
        *statuses.entry(r.status).or_insert(0u64) += 1;
        runs += 1;
    }
    // Still healthy afterwards.
    assert_eq!(d.req("GET", "/v2/webhooks?limit=1", Some(ALICE_TOKEN), None).status, 200);
    let peak_kb = d.proc_status_kb("VmHWM");
    assert!(peak_kb < 256 * 1024, "peak RSS {peak_kb} kB");
    println!(
        "request fuzz: seed {seed}, {runs} requests, statuses {statuses:?}, peak RSS {peak_kb} kB"
    );
}

#[test]
fn named_hostile_inputs_are_refused_within_bounds() {
    let d = TestDaemon::start("");
    let auth = format!("Bearer {ALICE_TOKEN}");
    let post = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
        let mut h = vec![("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        raw_request(d.addr, "POST", path, &h, body)
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object =
        format!("{{\"eventTypes\": {}{}}}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let huge_number = format!(
        "{{\"eventTypes\": [{}], \"condition\": {{\"actorId\": 1e999999}}}}",
        "9".repeat(100_000)
    );
    let ten_mb = format!("{{\"description\": \"{}\"}}", "d".repeat(10 * 1024 * 1024));
    let eight_mb = json!({"eventTypes": ["ACTOR.RUN.SUCCEEDED"], "condition": {"actorId": "a"}, "requestUrl": "https://e.com",
                          "description": "d".repeat(8 * 1024 * 1024)}).to_string();
    let eight_mb_template = json!({"eventTypes": ["ACTOR.RUN.SUCCEEDED"], "condition": {"actorId": "a"}, "requestUrl": "https://e.com",
                          "payloadTemplate": format!("\"{}\"", "t".repeat(8 * 1024 * 1024))}).to_string();
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("deeply nested array", "/v2/webhooks", deep.clone().into_bytes(), 400, "invalid-request"),
        ("deeply nested event", "/v2/webhook-events", deep.into_bytes(), 400, "invalid-request"),
        ("deeply nested object", "/v2/webhooks", deep_object.into_bytes(), 400, "invalid-request"),
        ("huge numbers", "/v2/webhooks", huge_number.into_bytes(), 400, "invalid-request"),
        (
            "invalid UTF-8",
            "/v2/webhooks",
            b"{\"description\": \"\xff\xfe\xc3\x28\"}".to_vec(),
            400,
            "invalid-request",
        ),
        (
            "invalid UTF-8 event",
            "/v2/webhook-events",
            b"{\"eventType\": \"\xc0\xaf\"}".to_vec(),
            400,
            "invalid-request",
        ),
        ("10 MB string", "/v2/webhooks", ten_mb.into_bytes(), 413, "request-too-large"),
        // The tree a webhook body parses into is charged to the byte budget: past what it can
        // ever hold, refused before parsing.
        ("8 MB description", "/v2/webhooks", eight_mb.into_bytes(), 413, "request-too-large"),
        ("8 MB template", "/v2/webhooks", eight_mb_template.into_bytes(), 413, "request-too-large"),
        (
            "number as eventTypes",
            "/v2/webhooks",
            b"{\"eventTypes\": 1e400}".to_vec(),
            400,
            "invalid-request",
        ),
    ];
    for (name, path, body, status, kind) in cases {
        let r = post(path, &[], &body);
        assert_eq!(
            r.status,
            status,
            "{name}: {:?}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        );
        assert_eq!(r.error_type(), kind, "{name}");
    }
    // Many headers, and one huge header: refused by the HTTP layer, connection closed.
    let many: Vec<(String, String)> =
        (0..200).map(|i| (format!("X-H{i}"), "v".to_string())).collect();
    let many_refs: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let r = try_raw_request(d.addr, "GET", "/v2/webhooks", &many_refs, b"");
    assert!(r.map_or(true, |r| r.status == 431 || r.status == 400), "200 headers");
    let big = "v".repeat(200 * 1024);
    let r = try_raw_request(d.addr, "GET", "/v2/webhooks", &[("X-Big", &big)], b"");
    assert!(r.map_or(true, |r| r.status == 431 || r.status == 400), "a 200 KB header");
    // The daemon is fine, and its memory stayed bounded by the body limit, not the input.
    assert_eq!(d.req("GET", "/v2/webhooks", Some(ALICE_TOKEN), None).status, 200);
    let peak_kb = d.proc_status_kb("VmHWM");
    assert!(peak_kb < 200 * 1024, "peak RSS {peak_kb} kB");
    assert_eq!(d.req("GET", "/v2/webhooks", Some(ALICE_TOKEN), None).json()["data"]["total"], 0);
}
