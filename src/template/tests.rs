//! Table-driven and property tests of the template language (apify-compat.md 4.3–4.6).

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn ctx() -> Context {
    Context::new(
        "u1",
        1_795_353_255_123,
        "2026-11-22T13:14:15.123Z",
        "ACTOR.RUN.SUCCEEDED",
        json!({"actorId": "a1", "actorRunId": "r1"}),
        json!({
            "id": "r1", "exitCode": 0, "ok": false, "empty": "", "name": "run",
            "items": [1, 2, 3], "nested": {"deep": {"v": 5}}, "nothing": null,
            "arr2": [[1, 2], [3]], "obj": {"a": 1}, "float": 2.5, "whole": 3.0, "neg": -1,
            "withNull": [1, null, 2]
        }),
    )
}

const MAX: usize = 1 << 20;

#[derive(Debug, Clone)]
enum Want {
    Json(&'static str),
    InvalidJson,
    InvalidVariable(&'static str),
}

#[track_caller]
fn check(template: &str, interpolate: bool, want: Want) {
    let got = Template::parse(template, interpolate).and_then(|t| t.render(&ctx(), MAX));
    match (want, got) {
        (Want::Json(expected), Ok(v)) => {
            let expected: Value = serde_json::from_str(expected).expect("expected is JSON");
            assert_eq!(v, expected, "template {template:?}");
            // Key order matters on the wire: compare the text too.
            assert_eq!(v.to_string(), expected.to_string(), "template {template:?}");
        }
        (Want::InvalidJson, Err(TemplateError::InvalidJson(_))) => {}
        (Want::InvalidVariable(name), Err(TemplateError::InvalidVariable(got))) => {
            assert_eq!(got, name, "template {template:?}");
        }
        (want, got) => panic!("template {template:?}: want {want:?}, got {got:?}"),
    }
}

#[test]
fn default_template_renders_the_event() {
    check(
        crate::model::DEFAULT_PAYLOAD_TEMPLATE,
        false,
        Want::Json(
            r#"{"userId":"u1","createdAt":"2026-11-22T13:14:15.123Z","eventType":"ACTOR.RUN.SUCCEEDED","eventData":{"actorId":"a1","actorRunId":"r1"},"resource":{"id":"r1","exitCode":0,"ok":false,"empty":"","name":"run","items":[1,2,3],"nested":{"deep":{"v":5}},"nothing":null,"arr2":[[1,2],[3]],"obj":{"a":1},"float":2.5,"whole":3.0,"neg":-1,"withNull":[1,null,2]}}"#,
        ),
    );
}

#[test]
fn raw_position_table() {
    use Want::*;
    let cases: &[(&str, Want)] = &[
        // Falsy values in raw position render null (4.3).
        (r#"{"a": {{resource.exitCode}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{resource.ok}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{resource.empty}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{resource.nothing}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{resource.missing}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{resource.neg}}}"#, Json(r#"{"a":-1}"#)),
        (r#"{"a": {{resource.float}}}"#, Json(r#"{"a":2.5}"#)),
        // Paths: nested properties, array indexes, JS quirks.
        (r#"{"a": {{resource.items}}}"#, Json(r#"{"a":[1,2,3]}"#)),
        (r#"{"a": {{resource.items.1}}}"#, Json(r#"{"a":2}"#)),
        (r#"{"a": {{resource.items.01}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{resource.items.5}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{resource.items.length}}}"#, Json(r#"{"a":3}"#)),
        (r#"{"a": {{resource.arr2.0.1}}}"#, Json(r#"{"a":2}"#)),
        (r#"{"a": {{resource.nested.deep.v}}}"#, Json(r#"{"a":5}"#)),
        (r#"{"a": {{resource.name.length}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{resource.nothing.x}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{resource.missing.x.y}}}"#, Json(r#"{"a":null}"#)),
        (r#"{"a": {{eventData}}}"#, Json(r#"{"a":{"actorId":"a1","actorRunId":"r1"}}"#)),
        (
            r#"{"a": {{globals.dateUnix}}, "b": {{globals.dateISO}}}"#,
            Json(r#"{"a":1795353255,"b":"2026-11-22T13:14:15.123Z"}"#),
        ),
        (
            r#"{"e": {{eventType}}, "c": {{createdAt}}}"#,
            Json(r#"{"e":"ACTOR.RUN.SUCCEEDED","c":"2026-11-22T13:14:15.123Z"}"#),
        ),
        // Non-object templates.
        ("{{userId}}", Json(r#""u1""#)),
        ("[{{userId}}, {{resource.items.2}}]", Json(r#"["u1",3]"#)),
        ("[{{resource.missing}}]", Json("[null]")),
        // Variables inside strings stay literal without interpolation, valid or not.
        (r#"{"t": "run {{resource.id}}"}"#, Json(r#"{"t":"run {{resource.id}}"}"#)),
        (r#"{"t": "{{bogus}}"}"#, Json(r#"{"t":"{{bogus}}"}"#)),
        // Escaped quotes do not end a string.
        (
            r#"{"a": "say \"{{userId}}\"", "b": {{userId}}}"#,
            Json(r#"{"a":"say \"{{userId}}\"","b":"u1"}"#),
        ),
        // Plain JSON is kept, whitespace dropped, key order kept.
        (r#"{ "z": 1.5, "a": true, "m": [ ] }"#, Json(r#"{"z":1.5,"a":true,"m":[]}"#)),
        // Unknown top-level names and unusual spellings are invalid variables.
        (r#"{"a": {{bogus}}}"#, InvalidVariable("bogus")),
        (r#"{"a": {{bogus.x}}}"#, InvalidVariable("bogus.x")),
        (r#"{"a": {{ resource.id }}}"#, InvalidVariable(" resource.id ")),
        (r#"{"a": {{}}}"#, InvalidVariable("")),
        ("{{{userId}}}", InvalidVariable("{userId")),
        (r#"{"a": {{Resource}}}"#, InvalidVariable("Resource")),
        // Broken JSON around variables.
        ("", InvalidJson),
        (r#"{"a": }"#, InvalidJson),
        (r#"{"a": {{userId}}"#, InvalidJson),
        (r#"{"a": {{userId}"#, InvalidJson),
        (r#"{"a": {{userId}} {{userId}}}"#, InvalidJson),
        (r#"{"a": "unterminated }"#, InvalidJson),
        ("not json", InvalidJson),
    ];
    for (template, want) in cases {
        check(template, false, want.clone());
    }
}

#[test]
fn interpolated_strings_table() {
    use Want::*;
    let cases: &[(&str, Want)] = &[
        // Exactly "{{x}}": the typed value.
        (r#"{"t": "{{resource.id}}"}"#, Json(r#"{"t":"r1"}"#)),
        (r#"{"t": "{{resource.exitCode}}"}"#, Json(r#"{"t":0}"#)),
        (r#"{"t": "{{resource.ok}}"}"#, Json(r#"{"t":false}"#)),
        (r#"{"t": "{{resource.nothing}}"}"#, Json(r#"{"t":null}"#)),
        (r#"{"t": "{{resource.obj}}"}"#, Json(r#"{"t":{"a":1}}"#)),
        (r#"{"t": "{{resource.arr2}}"}"#, Json(r#"{"t":[[1,2],[3]]}"#)),
        (r#"{"t": "{{resource.items.length}}"}"#, Json(r#"{"t":3}"#)),
        ("\"{{resource.id}}\"", Json(r#""r1""#)),
        // A missing value drops the key; in an array it becomes null.
        (r#"{"t": "{{resource.missing}}", "u": 1}"#, Json(r#"{"u":1}"#)),
        (r#"{"a": ["{{resource.missing}}", 2]}"#, Json(r#"{"a":[null,2]}"#)),
        (
            r#"{"a": {{resource.nothing}}, "b": "{{resource.nothing.x}}"}"#,
            Json(r#"{"a":null,"b":null}"#),
        ),
        // Surrounding text: JavaScript string conversion.
        (r#"{"t": "My user id is {{userId}}"}"#, Json(r#"{"t":"My user id is u1"}"#)),
        (r#"{"t": "x {{resource.obj}}"}"#, Json(r#"{"t":"x [object Object]"}"#)),
        (r#"{"t": "x {{resource.items}}"}"#, Json(r#"{"t":"x 1,2,3"}"#)),
        (r#"{"t": "x {{resource.arr2}}"}"#, Json(r#"{"t":"x 1,2,3"}"#)),
        (r#"{"t": "x {{resource.withNull}}"}"#, Json(r#"{"t":"x 1,,2"}"#)),
        (r#"{"t": "x {{resource.missing}}"}"#, Json(r#"{"t":"x undefined"}"#)),
        (r#"{"t": "x {{resource.nothing}}"}"#, Json(r#"{"t":"x null"}"#)),
        (r#"{"t": "x {{resource.ok}}"}"#, Json(r#"{"t":"x false"}"#)),
        (r#"{"t": "{{resource.whole}} x"}"#, Json(r#"{"t":"3 x"}"#)),
        (r#"{"t": "{{resource.float}}!"}"#, Json(r#"{"t":"2.5!"}"#)),
        (r#"{"t": "{{userId}}{{eventType}}"}"#, Json(r#"{"t":"u1ACTOR.RUN.SUCCEEDED"}"#)),
        (r#"{"t": "{{{userId}}}"}"#, Json(r#"{"t":"{u1}"}"#)),
        // Only [a-zA-Z0-9.]+ names are recognised inside strings.
        (r#"{"t": "{{ resource.id }}"}"#, Json(r#"{"t":"{{ resource.id }}"}"#)),
        (r#"{"t": "{{}}"}"#, Json(r#"{"t":"{{}}"}"#)),
        // Keys are never interpolated.
        (r#"{"{{userId}}": "{{userId}}"}"#, Json(r#"{"{{userId}}":"u1"}"#)),
        // Raw and string variables together.
        (r#"{"a": {{resource.id}}, "b": "id={{resource.id}}"}"#, Json(r#"{"a":"r1","b":"id=r1"}"#)),
        // Unknown names inside strings are errors when interpolating.
        (r#"{"t": "{{bogus}}"}"#, InvalidVariable("bogus")),
        (r#"{"t": "a {{bogus.x}} b"}"#, InvalidVariable("bogus.x")),
        (r#"{"t": "{{.resource}}"}"#, InvalidVariable(".resource")),
    ];
    for (template, want) in cases {
        check(template, true, want.clone());
    }
}

#[test]
fn headers_templates() {
    let h = |t: &str, i: bool| Template::parse_headers(t, i);
    assert!(h(r#"{"X-A": "b"}"#, false).is_ok());
    assert_eq!(h("[1]", false), Err(TemplateError::HeadersNotObject));
    assert_eq!(h(r#"{"X": 1}"#, false), Err(TemplateError::HeaderValueNotString("X".into())));
    assert_eq!(
        h(r#"{"bad name": "x"}"#, false),
        Err(TemplateError::InvalidHeaderName("bad name".into()))
    );
    let t = h(r#"{"X": {{userId}}, "Y": "lit"}"#, false).expect("valid");
    assert_eq!(
        t.render_headers(&ctx(), MAX),
        Ok(vec![("X".into(), "u1".into()), ("Y".into(), "lit".into())])
    );
    let t = h(r#"{"X": {{resource.exitCode}}}"#, false).expect("valid");
    assert_eq!(t.render_headers(&ctx(), MAX), Err(TemplateError::HeaderValueNotString("X".into())));
    let t =
        h(r#"{"X-Run": "{{resource.id}}", "X-T": "run {{resource.id}}"}"#, true).expect("valid");
    assert_eq!(
        t.render_headers(&ctx(), MAX),
        Ok(vec![("X-Run".into(), "r1".into()), ("X-T".into(), "run r1".into())])
    );
}

#[test]
fn headers_a_sender_cannot_send_are_refused() {
    let h = |t: &str, i: bool| Template::parse_headers(t, i);
    for name in [
        "Content-Length",
        "transfer-encoding",
        "Connection",
        "Upgrade",
        "Expect",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Proxy-Authorization",
    ] {
        let text = format!(r#"{{"{name}": "5"}}"#);
        assert_eq!(h(&text, false), Err(TemplateError::HeaderNotAllowed(name.into())), "{name}");
    }
    for value in [r#""a\rb""#, r#""a\nb""#, r#""a\u0000b""#, r#""caf\u00e9""#, r#""\u007f""#] {
        let text = format!(r#"{{"X": {value}}}"#);
        assert_eq!(h(&text, false), Err(TemplateError::InvalidHeaderValue("X".into())), "{text}");
    }
    assert!(h(r#"{"X": "a\tb ~!"}"#, false).is_ok());
    // Values from variables are checked when rendered: the dispatch fails with the reason.
    let t = h(r#"{"X": "{{resource.bad}}"}"#, true).expect("valid");
    let mut vars = Map::new();
    vars.insert("resource".into(), json!({"bad": "a\r\nInjected: 1"}));
    let bad_ctx = Context::from_map(vars);
    assert_eq!(t.render_headers(&bad_ctx, MAX), Err(TemplateError::InvalidHeaderValue("X".into())));
}

#[test]
fn output_is_capped() {
    let t = Template::parse("[{{resource}}, {{resource}}, {{resource}}]", false).expect("valid");
    assert!(matches!(t.render(&ctx(), 100), Err(TemplateError::TooLarge(_))));
    let t = Template::parse(r#"["{{resource}}", "x{{resource.items}}"]"#, true).expect("valid");
    assert!(matches!(t.render(&ctx(), 20), Err(TemplateError::TooLarge(_))));
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::String),
        "\\PC{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z{}\"]{0,6}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn never_panics_and_is_deterministic(
        text in "([{}\\[\\]\":,. a-z0-9\\\\]|\\{\\{|\\}\\}|userId|resource|eventData){0,40}",
        interpolate in any::<bool>(),
    ) {
        if let Ok(t) = Template::parse(&text, interpolate) {
            let a = t.render(&ctx(), MAX);
            let b = t.render(&ctx(), MAX);
            prop_assert_eq!(a, b);
        }
        let _ = Template::parse_headers(&text, interpolate);
    }

    #[test]
    fn plain_json_renders_to_itself(v in json_value()) {
        let text = v.to_string();
        let t = Template::parse(&text, false).expect("plain JSON is a valid template");
        prop_assert_eq!(t.render(&ctx(), MAX).expect("renders"), v.clone());
        let pretty = serde_json::to_string_pretty(&v).expect("serialises");
        let t = Template::parse(&pretty, false).expect("pretty JSON is a valid template");
        prop_assert_eq!(t.render_to_string(&ctx(), MAX).expect("renders"), text);
    }

    #[test]
    fn random_contexts_never_panic(resource in json_value(), path in "[a-z0-9.]{0,12}") {
        let c = Context::new("u", 0, "1970-01-01T00:00:00.000Z", "TEST", Value::Null, resource);
        let raw = format!("{{\"a\": {{{{resource.{path}}}}}}}");
        let in_strings =
            format!("{{\"a\": \"{{{{resource.{path}}}}}\", \"b\": \"x{{{{resource}}}}\"}}");
        for text in [&raw, &in_strings] {
            // Every generated path is a valid variable: parsing must succeed, and so must
            // rendering (the values are far below the cap).
            let t = Template::parse(text, true).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            let out = t.render(&c, MAX).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert!(out.is_object(), "{text}: {out}");
        }
        // Without interpolation, the direct form and the slow path give the same bytes.
        let t = Template::parse(&raw, false).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(t.render_to_string(&c, MAX), slow(&t, &c));
    }

    /// The resource is read from its text by path: the same as walking its parsed tree.
    #[test]
    fn paths_read_from_the_resource_text_match_the_tree(
        resource in json_value(),
        picks in prop::collection::vec(0usize..8, 0..5),
    ) {
        // A path through the value's own keys and indexes (and sometimes `length` or a miss).
        let mut path = String::new();
        let mut cur = Some(&resource);
        for pick in picks {
            let step = match cur {
                Some(Value::Object(m)) if !m.is_empty() && pick < 6 => {
                    m.keys().nth(pick % m.len()).cloned().unwrap_or_default()
                }
                Some(Value::Array(a)) if pick == 7 => "length".to_string(),
                Some(Value::Array(a)) if !a.is_empty() => (pick % a.len()).to_string(),
                _ => "missing".to_string(),
            };
            if !step.bytes().all(|b| b.is_ascii_alphanumeric()) || step.is_empty() {
                break;
            }
            cur = match cur {
                Some(Value::Object(m)) => m.get(&step),
                Some(Value::Array(a)) => step.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            path.push('.');
            path.push_str(&step);
        }
        let c = Context::new("u", 0, "1970-01-01T00:00:00.000Z", "TEST", Value::Null, resource.clone());
        let text = format!("{{\"a\": {{{{resource{path}}}}}}}");
        let t = Template::parse(&text, false).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let got = t.render(&c, MAX).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let want = reference_lookup(&resource, &path);
        prop_assert_eq!(&got["a"], &want, "{}", text);
    }
}

/// What `{{resource<path>}}` renders to in raw position, computed on the parsed tree the way
/// `@apify/utilities` does: a missing member is undefined, a step into a non-object is null,
/// `length` of an array is its length, and a falsy result renders `null`.
fn reference_lookup(resource: &Value, path: &str) -> Value {
    let mut cur: Option<Value> = Some(resource.clone());
    for step in path.split('.').skip(1) {
        cur = match cur {
            Some(Value::Object(m)) => m.get(step).cloned(),
            Some(Value::Array(a)) if step == "length" => Some(Value::from(a.len())),
            Some(Value::Array(a)) => step.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
            _ => Some(Value::Null),
        };
    }
    let truthy = match &cur {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    };
    if truthy { cur.unwrap_or(Value::Null) } else { Value::Null }
}

/// The slow path: render, then serialise the value (what `render_to_string` did before the
/// direct form existed).
fn slow(t: &Template, c: &Context) -> Result<String, TemplateError> {
    t.render(c, MAX).map(|v| v.to_string())
}

#[test]
fn direct_form_is_used_for_the_default_template_and_matches_the_slow_path() {
    let t = Template::parse(crate::model::DEFAULT_PAYLOAD_TEMPLATE, false).expect("parses");
    assert!(matches!(t.direct, Some(Direct::Raw(_))));
    assert_eq!(t.render_to_string(&ctx(), MAX), slow(&t, &ctx()));
    // Repeated keys and non-canonical numbers or escapes take the slow path.
    for text in [
        "{\"a\": {{resource}}, \"a\": 1}",
        "{\"a\": 1e2, \"b\": {{resource}}}",
        "{\"a\": \"\\u0041\", \"b\": {{resource}}}",
    ] {
        let t = Template::parse(text, false).expect("parses");
        assert!(t.direct.is_none(), "{text}");
        assert_eq!(t.render_to_string(&ctx(), MAX), slow(&t, &ctx()), "{text}");
    }
}

proptest! {
    #[test]
    fn direct_form_gives_the_bytes_of_the_slow_path(
        text in "([{}\\[\\]\":,. a-z0-9\\\\]|\\{\\{|\\}\\}|userId|resource|eventData|  |\n|1\\.0|\\\\u0041){0,40}",
        resource in json_value(),
        path in "[a-z0-9.]{0,8}",
    ) {
        let c = Context::new("u", 0, "1970-01-01T00:00:00.000Z", "TEST", Value::Null, resource);
        let with_path = format!("{{\"p\": {{{{resource.{path}}}}}, \"q\": [ {{{{resource}}}} , 1 ]}}");
        for t in [text.as_str(), with_path.as_str()] {
            if let Ok(t) = Template::parse(t, false) {
                prop_assert_eq!(t.render_to_string(&c, MAX), slow(&t, &c));
            }
        }
    }
}
