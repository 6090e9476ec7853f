//! A JSON value kept as its compact text (an event's `resource`), read by path without ever
//! building a tree of it: a parsed `serde_json::Value` takes tens of times the bytes of its
//! text, so an attacker's `[0,0,0,...]` would turn a body of megabytes into a gigabyte.
//! Objects and arrays are indexed on first use (member names or element positions -> spans
//! of the text), once per node, so a template with many variables reads each node once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// A span of the text: [start, end).
pub type Span = (usize, usize);

/// The members of an object (the last of a repeated name wins, as `JSON.parse` does) or the
/// elements of an array.
enum Node {
    Object(HashMap<String, Span>),
    Array(Vec<Span>),
}

/// A JSON value as compact text, with the indexes of the nodes read so far.
pub struct RawJson {
    text: String,
    nodes: RefCell<HashMap<usize, Node>>,
}

impl Clone for RawJson {
    fn clone(&self) -> RawJson {
        RawJson::from_compact(self.text.clone())
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawJson").field(&self.text).finish()
    }
}

impl RawJson {
    /// From text that is already compact, valid JSON (no whitespace outside strings).
    pub fn from_compact(text: String) -> RawJson {
        RawJson { text, nodes: RefCell::new(HashMap::new()) }
    }

    /// From a parsed value (tests, small values).
    pub fn from_value(v: &Value) -> RawJson {
        RawJson::from_compact(v.to_string())
    }

    /// The whole compact text.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn whole(&self) -> Span {
        (0, self.text.len())
    }

    pub fn slice(&self, span: Span) -> &str {
        self.text.get(span.0..span.1).unwrap_or("null")
    }

    /// The member `name` of the object at `span`; `None` if it has none or is not an object.
    pub fn member(&self, span: Span, name: &str) -> Option<Span> {
        self.with_node(span, |node| match node {
            Node::Object(members) => members.get(name).copied(),
            Node::Array(_) => None,
        })
        .flatten()
    }

    /// The element `i` of the array at `span`.
    pub fn element(&self, span: Span, i: usize) -> Option<Span> {
        self.with_node(span, |node| match node {
            Node::Array(items) => items.get(i).copied(),
            Node::Object(_) => None,
        })
        .flatten()
    }

    /// The length of the array at `span` (0 if it is not one).
    pub fn length(&self, span: Span) -> usize {
        self.with_node(span, |node| match node {
            Node::Array(items) => items.len(),
            Node::Object(_) => 0,
        })
        .unwrap_or(0)
    }

    /// Runs `f` on the index of the object or array at `span`, building it on first use.
    fn with_node<T>(&self, span: Span, f: impl FnOnce(&Node) -> T) -> Option<T> {
        let text = self.slice(span);
        if !(text.starts_with('{') || text.starts_with('[')) {
            return None;
        }
        let mut nodes = self.nodes.borrow_mut();
        let node = match nodes.entry(span.0) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(index_node(text, span.0)?),
        };
        Some(f(node))
    }
}

/// Where `part` starts within `base` (it is a sub-slice of it).
fn offset_in(base: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize)
}

/// Indexes the object or array `text`, which starts at `at` in the whole text.
fn index_node(text: &str, at: usize) -> Option<Node> {
    struct NodeVisitor<'t> {
        text: &'t str,
        at: usize,
    }
    impl<'de, 't> Visitor<'de> for NodeVisitor<'t>
    where
        'de: 't,
    {
        type Value = Node;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object or an array")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
            let mut members = HashMap::new();
            while let Some(name) = map.next_key::<String>()? {
                let v: &'de RawValue = map.next_value()?;
                let start = self.at + offset_in(self.text, v.get());
                members.insert(name, (start, start + v.get().len()));
            }
            Ok(Node::Object(members))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
            let mut items = Vec::new();
            while let Some(v) = seq.next_element::<&'de RawValue>()? {
                let start = self.at + offset_in(self.text, v.get());
                items.push((start, start + v.get().len()));
            }
            Ok(Node::Array(items))
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_any(NodeVisitor { text, at }).ok()
}

/// Checks that `text` is one JSON value (no tree is built) and returns it without whitespace
/// outside strings: the compact text every template variable copies.
pub fn compact(text: &str) -> Result<String, serde_json::Error> {
    serde_json::from_str::<IgnoredAny>(text)?;
    Ok(compact_valid(text))
}

/// `text`, which is valid JSON, without whitespace outside strings. Works on bytes: the bytes
/// that matter (whitespace, quote, backslash) are ASCII and never part of a longer UTF-8
/// character, so spans between them are copied whole.
pub fn compact_valid(text: &str) -> String {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for (i, b) in outside_strings(text) {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push_str(text.get(from..i).unwrap_or_default());
            from = i + 1;
        }
    }
    out.push_str(text.get(from..).unwrap_or_default());
    out
}

/// Whether `text`, valid JSON, nests objects and arrays deeper than `max`.
pub fn nests_deeper_than(text: &str, max: usize) -> bool {
    let mut depth = 0usize;
    for (_, b) in outside_strings(text) {
        match b {
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The bytes of a JSON text that are not inside strings (quotes included), with their
/// positions: the ones that are whitespace or structure.
fn outside_strings(text: &str) -> impl Iterator<Item = (usize, u8)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    text.bytes().enumerate().filter(move |&(_, b)| {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            false
        } else {
            in_string = b == b'"';
            true
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_by_path_without_a_tree() {
        let v = json!({"a": {"b": [1, {"c": "x"}, null]}, "s": "q\"{", "a2": 1, "n": -0.5});
        let raw = RawJson::from_value(&v);
        let root = raw.whole();
        let a = raw.member(root, "a").expect("a");
        let b = raw.member(a, "b").expect("b");
        assert_eq!(raw.length(b), 3);
        assert_eq!(raw.slice(raw.element(b, 0).expect("0")), "1");
        let c = raw.member(raw.element(b, 1).expect("1"), "c").expect("c");
        assert_eq!(raw.slice(c), "\"x\"");
        assert_eq!(raw.slice(raw.member(root, "s").expect("s")), "\"q\\\"{\"");
        assert_eq!(raw.member(root, "missing"), None);
        assert_eq!(raw.element(b, 3), None);
        assert_eq!(raw.member(b, "0"), None, "an array has no members");
        assert_eq!(raw.length(a), 0, "an object has no length");
    }

    #[test]
    fn a_repeated_name_reads_its_last_value() {
        let raw = RawJson::from_compact(compact(r#"{"k": 1, "k": 2}"#).expect("valid"));
        assert_eq!(raw.slice(raw.member(raw.whole(), "k").expect("k")), "2");
    }

    #[test]
    fn compact_strips_whitespace_outside_strings_only() {
        assert_eq!(
            compact(" { \"a b\" : [ 1 , \"\\\" x\" ] } ").expect("valid"),
            r#"{"a b":[1,"\" x"]}"#
        );
        assert!(compact("{\"a\": }").is_err());
        assert!(compact("[1] [2]").is_err());
    }

    #[test]
    fn nesting_is_counted_outside_strings() {
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(nests_deeper_than(&deep, 128));
        assert!(!nests_deeper_than(&deep[1..deep.len() - 1], 128));
        assert!(!nests_deeper_than(r#"["[[[[", {"a": "{{{{"}]"#, 2));
        assert!(nests_deeper_than(r#"[[["\"["]]]"#, 2));
    }
}
