//! Variables resolved the way `@apify/utilities` does in JavaScript: a dotted path into the
//! context (the resource read from its text), truthiness, `String(x)`, and JSON output.

use serde_json::Value;

use super::Context;
use super::raw::{self, RawJson};

/// What a dotted path resolves to, in JavaScript terms.
pub(super) enum Resolved<'a> {
    Undefined,
    Null,
    Value(&'a Value),
    Length(usize),
    /// A part of the resource's text.
    Raw(&'a RawJson, raw::Span),
}

fn js_index(prop: &str) -> Option<usize> {
    if prop == "0" {
        return Some(0);
    }
    if prop.is_empty() || prop.starts_with('0') || !prop.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    prop.parse().ok()
}

pub(super) fn resolve<'a>(ctx: &'a Context, name: &str) -> Resolved<'a> {
    let mut parts = name.split('.');
    let first = parts.next().unwrap_or("");
    let mut cur = match (first, &ctx.resource) {
        ("resource", Some(r)) => Resolved::Raw(r, r.whole()),
        _ => match ctx.vars.get(first) {
            Some(v) => Resolved::Value(v),
            None => Resolved::Undefined,
        },
    };
    for prop in parts {
        cur = match cur {
            Resolved::Raw(r, span) => match r.slice(span).as_bytes().first() {
                Some(b'{') => {
                    r.member(span, prop).map_or(Resolved::Undefined, |s| Resolved::Raw(r, s))
                }
                Some(b'[') if prop == "length" => Resolved::Length(r.length(span)),
                Some(b'[') => js_index(prop)
                    .and_then(|i| r.element(span, i))
                    .map_or(Resolved::Undefined, |s| Resolved::Raw(r, s)),
                _ => Resolved::Null,
            },
            Resolved::Value(Value::Object(m)) => match m.get(prop) {
                Some(v) => Resolved::Value(v),
                None => Resolved::Undefined,
            },
            Resolved::Value(Value::Array(a)) => {
                if prop == "length" {
                    Resolved::Length(a.len())
                } else {
                    match js_index(prop).and_then(|i| a.get(i)) {
                        Some(v) => Resolved::Value(v),
                        None => Resolved::Undefined,
                    }
                }
            }
            // `if (!ctx || typeof ctx !== 'object') return null;`
            _ => Resolved::Null,
        };
    }
    cur
}

impl Resolved<'_> {
    pub(super) fn is_truthy(&self) -> bool {
        match self {
            Resolved::Undefined | Resolved::Null => false,
            Resolved::Length(n) => *n != 0,
            Resolved::Value(v) => match v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(_) | Value::Object(_) => true,
            },
            Resolved::Raw(r, span) => {
                let text = r.slice(*span);
                match text.as_bytes().first() {
                    Some(b'n' | b'f') | None => false,
                    Some(b't' | b'{' | b'[') => true,
                    Some(b'"') => text != "\"\"",
                    Some(_) => text.parse::<f64>().is_ok_and(|f| f != 0.0),
                }
            }
        }
    }

    pub(super) fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Resolved::Undefined | Resolved::Null => out.extend_from_slice(b"null"),
            Resolved::Length(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Resolved::Value(v) => {
                // Writing into a Vec cannot fail; if it did, `null` keeps the JSON well-formed.
                let len = out.len();
                if serde_json::to_writer(&mut *out, v).is_err() {
                    out.truncate(len);
                    out.extend_from_slice(b"null");
                }
            }
            // Already compact JSON.
            Resolved::Raw(r, span) => out.extend_from_slice(r.slice(*span).as_bytes()),
        }
    }

    /// The bytes this value's JSON takes, without writing it.
    pub(super) fn json_bytes(&self) -> usize {
        match self {
            Resolved::Raw(r, span) => r.slice(*span).len(),
            Resolved::Value(v) => v.to_string().len(),
            _ => 4,
        }
    }

    /// The typed value; `None` is JavaScript's `undefined`.
    pub(super) fn to_value(&self) -> Option<Value> {
        match self {
            Resolved::Undefined => None,
            Resolved::Null => Some(Value::Null),
            Resolved::Length(n) => Some(Value::from(*n)),
            Resolved::Value(v) => Some((*v).clone()),
            Resolved::Raw(r, span) => serde_json::from_str(r.slice(*span)).ok(),
        }
    }

    /// JavaScript `String(x)`.
    pub(super) fn to_js_string(&self, out: &mut String) {
        match self {
            Resolved::Undefined => out.push_str("undefined"),
            Resolved::Null => out.push_str("null"),
            Resolved::Length(n) => out.push_str(&n.to_string()),
            Resolved::Value(v) => js_string_of(v, out),
            Resolved::Raw(r, span) => raw_js_string(r, *span, out),
        }
    }
}

/// JavaScript `String(x)` of a part of the resource, read without building a tree.
fn raw_js_string(r: &RawJson, span: raw::Span, out: &mut String) {
    let text = r.slice(span);
    match text.as_bytes().first() {
        Some(b'"') => out.push_str(&serde_json::from_str::<String>(text).unwrap_or_default()),
        Some(b'{') => out.push_str("[object Object]"),
        Some(b'[') => {
            // Array.prototype.join: null elements become "".
            for i in 0..r.length(span) {
                if i > 0 {
                    out.push(',');
                }
                if let Some(e) = r.element(span, i)
                    && r.slice(e) != "null"
                {
                    raw_js_string(r, e, out);
                }
            }
        }
        Some(b'n' | b't' | b'f') | None => out.push_str(text),
        Some(_) => match serde_json::from_str::<serde_json::Number>(text) {
            Ok(n) => out.push_str(&js_number(&n)),
            Err(_) => out.push_str(text),
        },
    }
}

fn js_string_of(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&js_number(n)),
        Value::String(s) => out.push_str(s),
        Value::Object(_) => out.push_str("[object Object]"),
        Value::Array(a) => {
            // Array.prototype.join: null and undefined elements become "".
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !e.is_null() {
                    js_string_of(e, out);
                }
            }
        }
    }
}

/// A JSON number as JavaScript prints it: integral floats have no `.0`.
fn js_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
        _ => n.to_string(),
    }
}
