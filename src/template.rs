//! Apify payload and headers templates: parse once (when a webhook is saved), render per event.
//! Pure: no I/O, no clock. Semantics follow `@apify/utilities` `WebhookPayloadTemplate`
//! (research/apify-compat.md 4.1–4.6), including its quirks: a falsy value in raw position
//! renders `null`, and with `shouldInterpolateStrings` a string that is exactly `"{{x}}"`
//! becomes the typed value (a missing one drops the key).

use serde_json::{Map, Value};

/// The top-level variable names a template may use.
pub const ALLOWED_VARIABLES: [&str; 6] =
    ["userId", "createdAt", "eventType", "eventData", "resource", "globals"];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "Aside from variables enclosed in double curly braces, the template must be valid JSON ({0})"
    )]
    InvalidJson(String),
    #[error("Invalid payload template variable: {0}")]
    InvalidVariable(String),
    #[error("Rendered template is larger than {0} bytes")]
    TooLarge(usize),
    #[error("Headers template must be a JSON object")]
    HeadersNotObject,
    #[error("Header \"{0}\" must be a string")]
    HeaderValueNotString(String),
    #[error("Header name \"{0}\" is not a valid HTTP header name")]
    InvalidHeaderName(String),
    #[error("Header \"{0}\" is set by the HTTP connection itself and cannot be templated")]
    HeaderNotAllowed(String),
    #[error(
        "Header \"{0}\" has a value that cannot be sent: only visible ASCII characters, spaces and tabs are allowed (no CR, LF or NUL)"
    )]
    InvalidHeaderValue(String),
}

/// Headers that frame the message or belong to one connection (RFC 9110 section 7.6.1):
/// a template that set them would corrupt the request (a wrong `Content-Length` truncates the
/// body the receiver reads), so they are refused at create. `Proxy-*` is refused too.
pub const FRAMING_HEADERS: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "expect",
    "keep-alive",
    "te",
    "trailer",
];

/// Whether a headers template may not set `name` (compared without case).
pub fn is_framing_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    FRAMING_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-")
}

/// A value an HTTP/1.1 sender can put on the wire: visible ASCII, space and tab.
fn check_header_value(name: &str, value: &str) -> Result<(), TemplateError> {
    if value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        Ok(())
    } else {
        Err(TemplateError::InvalidHeaderValue(name.to_string()))
    }
}

mod raw;
mod resolve;
pub use raw::{RawJson, compact, compact_valid, nests_deeper_than};
use resolve::{Resolved, resolve};

/// The values a template can reference. The resource is kept as text (`RawJson`): it is the
/// one value of an event that can be large, and is mostly copied whole.
#[derive(Clone, Debug)]
pub struct Context {
    vars: Map<String, Value>,
    resource: Option<RawJson>,
}

impl From<Value> for RawJson {
    fn from(v: Value) -> RawJson {
        RawJson::from_value(&v)
    }
}

impl Context {
    /// The context of one event: `globals` is derived from the event time.
    pub fn new(
        user_id: &str,
        created_at_ms: u64,
        created_at_iso: &str,
        event_type: &str,
        event_data: Value,
        resource: impl Into<RawJson>,
    ) -> Context {
        let mut globals = Map::new();
        globals.insert("dateISO".into(), Value::String(created_at_iso.to_string()));
        globals.insert("dateUnix".into(), Value::from(created_at_ms / 1000));
        let mut vars = Map::new();
        vars.insert("userId".into(), Value::String(user_id.to_string()));
        vars.insert("createdAt".into(), Value::String(created_at_iso.to_string()));
        vars.insert("eventType".into(), Value::String(event_type.to_string()));
        vars.insert("eventData".into(), event_data);
        vars.insert("globals".into(), Value::Object(globals));
        Context { vars, resource: Some(resource.into()) }
    }

    /// A context from arbitrary top-level values (tests, tools).
    pub fn from_map(mut vars: Map<String, Value>) -> Context {
        let resource = vars.remove("resource").map(|v| RawJson::from_value(&v));
        Context { vars, resource }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Text(String),
    Var(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Body {
    /// The template is plain JSON: nothing in raw position. Kept as text, not as a `Value`
    /// (a parsed tree is many times its text), and parsed only on the slow path.
    Static(String),
    /// Text with `{{name}}` in raw (outside-string) positions.
    Raw(Vec<Segment>),
}

/// A parsed, validated template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    body: Body,
    interpolate_strings: bool,
    /// Raw variables, plus those inside strings when strings are interpolated.
    variables: usize,
    /// The compact output written directly, when that gives the same bytes as rendering,
    /// parsing and re-serialising (see `direct_form`).
    direct: Option<Direct>,
}

/// A template whose compact output can be written without building a `Value`.
#[derive(Clone, Debug, PartialEq)]
enum Direct {
    /// Plain JSON: the output never changes.
    Static(String),
    /// Minified text around raw variables: each variable's compact JSON goes where `null` was.
    Raw(Vec<Segment>),
}

fn check_variable(name: &str) -> Result<(), TemplateError> {
    let first = name.split('.').next().unwrap_or("");
    if ALLOWED_VARIABLES.contains(&first) {
        Ok(())
    } else {
        Err(TemplateError::InvalidVariable(name.to_string()))
    }
}

impl Template {
    /// Parses and validates `text`. Variables inside strings are checked only when
    /// `interpolate_strings` is on, as Apify does.
    pub fn parse(text: &str, interpolate_strings: bool) -> Result<Template, TemplateError> {
        Template::parse_with_skeleton(text, interpolate_strings).map(|(t, _)| t)
    }

    /// Parses, and also returns the template's JSON with every raw variable read as `null`.
    fn parse_with_skeleton(
        text: &str,
        interpolate_strings: bool,
    ) -> Result<(Template, Value), TemplateError> {
        let (body, skeleton) = match serde_json::from_str::<Value>(text) {
            Ok(v) => (Body::Static(text.to_string()), v),
            Err(first_err) => {
                let segments = split_raw_variables(text)?;
                if !segments.iter().any(|s| matches!(s, Segment::Var(_))) {
                    return Err(TemplateError::InvalidJson(first_err.to_string()));
                }
                let mut with_nulls = String::with_capacity(text.len());
                for s in &segments {
                    match s {
                        Segment::Text(t) => with_nulls.push_str(t),
                        Segment::Var(_) => with_nulls.push_str("null"),
                    }
                }
                let skeleton = serde_json::from_str::<Value>(&with_nulls)
                    .map_err(|e| TemplateError::InvalidJson(e.to_string()))?;
                (Body::Raw(segments), skeleton)
            }
        };
        let mut variables = match &body {
            Body::Static(_) => 0,
            Body::Raw(segments) => segments.iter().filter(|s| matches!(s, Segment::Var(_))).count(),
        };
        if interpolate_strings {
            variables += check_string_variables(&skeleton)?;
        }
        let direct = direct_form(&body, interpolate_strings, &skeleton);
        Ok((Template { body, interpolate_strings, variables, direct }, skeleton))
    }

    /// Parses a headers template: like [`Template::parse`], and it must be a JSON object whose
    /// literal values are strings (values from variables are checked when rendering).
    pub fn parse_headers(text: &str, interpolate_strings: bool) -> Result<Template, TemplateError> {
        let (t, skeleton) = Template::parse_with_skeleton(text, interpolate_strings)?;
        let Value::Object(map) = skeleton else {
            return Err(TemplateError::HeadersNotObject);
        };
        for (name, value) in &map {
            check_header_name(name)?;
            if is_framing_header(name) {
                return Err(TemplateError::HeaderNotAllowed(name.clone()));
            }
            match value {
                // A literal value whose variables are interpolated later is checked then.
                Value::String(s) if !(interpolate_strings && s.contains("{{")) => {
                    check_header_value(name, s)?
                }
                Value::String(_) | Value::Null => {}
                _ => return Err(TemplateError::HeaderValueNotString(name.clone())),
            }
        }
        Ok(t)
    }

    /// Whether rendering writes the output directly; otherwise it parses the output into a
    /// tree (string interpolation, or JSON that is not in compact canonical form).
    pub fn renders_directly(&self) -> bool {
        self.direct.is_some()
    }

    /// How many `{{variables}}` the template has (raw ones, and those in strings when strings
    /// are interpolated): what a render costs beyond copying the template, so it is bounded
    /// at create.
    pub fn variable_count(&self) -> usize {
        self.variables
    }

    /// Renders to a JSON value; errors if the raw text grows past `output_bytes_max`.
    pub fn render(&self, ctx: &Context, output_bytes_max: usize) -> Result<Value, TemplateError> {
        let value = match &self.body {
            Body::Static(text) => serde_json::from_str::<Value>(text)
                .map_err(|e| TemplateError::InvalidJson(e.to_string()))?,
            Body::Raw(segments) => {
                let out = fill(segments, ctx, output_bytes_max)?;
                serde_json::from_str::<Value>(&out)
                    .map_err(|e| TemplateError::InvalidJson(e.to_string()))?
            }
        };
        if !self.interpolate_strings {
            return Ok(value);
        }
        let mut budget = output_bytes_max;
        // A top-level string that is exactly a missing variable is `undefined` in JS;
        // JSON.stringify(undefined) is no JSON at all, so send `null`.
        Ok(interpolate(value, ctx, &mut budget)?.unwrap_or(Value::Null))
    }

    /// Renders to compact JSON text (what is sent on the wire).
    pub fn render_to_string(
        &self,
        ctx: &Context,
        output_bytes_max: usize,
    ) -> Result<String, TemplateError> {
        let s = match &self.direct {
            Some(Direct::Static(text)) => text.clone(),
            Some(Direct::Raw(segments)) => fill(segments, ctx, output_bytes_max)?,
            None => self.render(ctx, output_bytes_max)?.to_string(),
        };
        if s.len() > output_bytes_max {
            return Err(TemplateError::TooLarge(output_bytes_max));
        }
        Ok(s)
    }

    /// Renders a headers template to (name, value) pairs, in template order.
    pub fn render_headers(
        &self,
        ctx: &Context,
        output_bytes_max: usize,
    ) -> Result<Vec<(String, String)>, TemplateError> {
        let Value::Object(map) = self.render(ctx, output_bytes_max)? else {
            return Err(TemplateError::HeadersNotObject);
        };
        let mut out = Vec::with_capacity(map.len());
        for (name, value) in map {
            check_header_name(&name)?;
            if is_framing_header(&name) {
                return Err(TemplateError::HeaderNotAllowed(name));
            }
            match value {
                Value::String(s) => {
                    check_header_value(&name, &s)?;
                    out.push((name, s))
                }
                _ => return Err(TemplateError::HeaderValueNotString(name)),
            }
        }
        Ok(out)
    }
}

/// The text of raw segments with each variable's compact JSON (`null` when falsy, as Apify
/// does), failing once it grows past `output_bytes_max`.
fn fill(
    segments: &[Segment],
    ctx: &Context,
    output_bytes_max: usize,
) -> Result<String, TemplateError> {
    // Bytes, not a String: checking UTF-8 after every variable would make the fill quadratic.
    let mut out: Vec<u8> = Vec::with_capacity(256);
    for s in segments {
        match s {
            Segment::Text(t) => out.extend_from_slice(t.as_bytes()),
            Segment::Var(name) => {
                let r = resolve(ctx, name);
                if r.is_truthy() {
                    r.write_json(&mut out);
                } else {
                    out.extend_from_slice(b"null");
                }
            }
        }
        if out.len() > output_bytes_max {
            return Err(TemplateError::TooLarge(output_bytes_max));
        }
    }
    // Text segments are &str and serde_json writes UTF-8: this never fails.
    String::from_utf8(out).map_err(|e| TemplateError::InvalidJson(e.to_string()))
}

/// The direct form of a template without string interpolation, if it gives exactly the bytes
/// of the slow path (render the text, parse it, serialise it compactly). The text around the
/// variables is minified; that is exact when the skeleton (every variable read as `null`)
/// serialises to the minified text with `null` for each variable: then no key repeats, every
/// number and string is already in canonical form, and each variable sits where one value
/// goes, so its compact JSON takes the place of its `null`.
fn direct_form(body: &Body, interpolate_strings: bool, skeleton: &Value) -> Option<Direct> {
    if interpolate_strings {
        return None;
    }
    let canonical = skeleton.to_string();
    match body {
        Body::Static(_) => Some(Direct::Static(canonical)),
        Body::Raw(segments) => {
            let minified: Vec<Segment> = segments
                .iter()
                .map(|s| match s {
                    Segment::Text(t) => Segment::Text(minify(t)),
                    Segment::Var(n) => Segment::Var(n.clone()),
                })
                .collect();
            let mut with_nulls = String::with_capacity(canonical.len());
            for s in &minified {
                match s {
                    Segment::Text(t) => with_nulls.push_str(t),
                    Segment::Var(_) => with_nulls.push_str("null"),
                }
            }
            (with_nulls == canonical).then_some(Direct::Raw(minified))
        }
    }
}

/// `text` without JSON whitespace outside strings. A text segment starts outside a string:
/// variables in raw position are outside strings.
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// RFC 9110 token characters.
fn check_header_name(name: &str) -> Result<(), TemplateError> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(()) } else { Err(TemplateError::InvalidHeaderName(name.to_string())) }
}

/// Splits `text` into literal text and `{{name}}` in raw position. "Inside a string" is
/// Apify's rule: an odd number of `"` not preceded by `\` before the braces.
fn split_raw_variables(text: &str) -> Result<Vec<Segment>, TemplateError> {
    let bytes = text.as_bytes();
    let mut segments = Vec::new();
    let mut quotes = 0usize;
    let mut literal_start = 0usize;
    let mut i = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' && (i == 0 || bytes[i - 1] != b'\\') {
            quotes += 1;
            i += 1;
            continue;
        }
        if b == b'{' && bytes.get(i + 1) == Some(&b'{') && quotes.is_multiple_of(2) {
            let Some(close) = text[i..].find("}}").map(|p| p + i) else {
                return Err(TemplateError::InvalidJson(format!(
                    "unterminated variable at byte {i}"
                )));
            };
            // `{{}}`: the closing braces may start right after the opening ones.
            let name_end = close.max(i + 2);
            let name = &text[i + 2..name_end];
            check_variable(name)?;
            if literal_start < i {
                segments.push(Segment::Text(text[literal_start..i].to_string()));
            }
            segments.push(Segment::Var(name.to_string()));
            i = name_end + 2;
            literal_start = i;
            continue;
        }
        i += 1;
    }
    if literal_start < bytes.len() {
        segments.push(Segment::Text(text[literal_start..].to_string()));
    }
    Ok(segments)
}

/// Checks the variables inside strings, and counts them.
fn check_string_variables(v: &Value) -> Result<usize, TemplateError> {
    match v {
        Value::String(s) => {
            let mut n = 0;
            for name in string_variables(s) {
                check_variable(name)?;
                n += 1;
            }
            Ok(n)
        }
        Value::Array(a) => a.iter().try_fold(0, |n, e| Ok(n + check_string_variables(e)?)),
        Value::Object(m) => m.values().try_fold(0, |n, e| Ok(n + check_string_variables(e)?)),
        _ => Ok(0),
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.'
}

/// Matches of `/\{\{([a-zA-Z0-9.]+)\}\}/g` in `s`: (start, end, name).
fn string_variable_spans(s: &str) -> Vec<(usize, usize, &str)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = s[i..].find("{{").map(|p| p + i) {
        let mut j = p + 2;
        while j < b.len() && is_name_byte(b[j]) {
            j += 1;
        }
        if j > p + 2 && s[j..].starts_with("}}") {
            out.push((p, j + 2, &s[p + 2..j]));
            i = j + 2;
        } else {
            i = p + 1;
        }
    }
    out
}

fn string_variables(s: &str) -> impl Iterator<Item = &str> {
    string_variable_spans(s).into_iter().map(|(_, _, n)| n)
}

fn interpolate(
    v: Value,
    ctx: &Context,
    budget: &mut usize,
) -> Result<Option<Value>, TemplateError> {
    Ok(match v {
        Value::String(s) => interpolate_string(s, ctx, budget)?,
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for e in a {
                // JSON.stringify turns `undefined` array elements into `null`.
                out.push(interpolate(e, ctx, budget)?.unwrap_or(Value::Null));
            }
            Some(Value::Array(out))
        }
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, e) in m {
                if let Some(e) = interpolate(e, ctx, budget)? {
                    out.insert(k, e);
                }
            }
            Some(Value::Object(out))
        }
        other => Some(other),
    })
}

fn interpolate_string(
    s: String,
    ctx: &Context,
    budget: &mut usize,
) -> Result<Option<Value>, TemplateError> {
    let spans = string_variable_spans(&s);
    if spans.is_empty() {
        return Ok(Some(Value::String(s)));
    }
    if spans.len() == 1 && spans[0].0 == 0 && spans[0].1 == s.len() {
        let name = spans[0].2;
        check_variable(name)?;
        let r = resolve(ctx, name);
        if matches!(r, Resolved::Value(_) | Resolved::Raw(..)) {
            // The value is copied into the output: charge its size against the budget first.
            let size = r.json_bytes();
            *budget = budget.checked_sub(size).ok_or(TemplateError::TooLarge(size))?;
        }
        return Ok(r.to_value());
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (start, end, name) in spans {
        check_variable(name)?;
        out.push_str(&s[last..start]);
        resolve(ctx, name).to_js_string(&mut out);
        last = end;
        if out.len() > *budget {
            return Err(TemplateError::TooLarge(*budget));
        }
    }
    out.push_str(&s[last..]);
    *budget = budget.saturating_sub(out.len());
    Ok(Some(Value::String(out)))
}

#[cfg(test)]
mod tests;
