//! `headers` as `proxy-rewrite` and `response-rewrite` take it, in both of APISIX's shapes:
//!
//! - 3.x: `{"add": {name: value}, "set": {name: value}, "remove": [name]}`; `response-rewrite`'s
//!   `add` may also be a list of `"Name: value"` strings, as APISIX writes it there;
//! - older: a flat `{name: value}` map, meaning `set`, where an empty value removes the header.
//!
//! Which shape a map is follows APISIX: it is 3.x as soon as `add`, `set` or `remove` holds an
//! object or a list. Operations apply in APISIX's order: every `add`, then every `set`, then every
//! `remove`. Values are literals: APISIX's `$variables` are not expanded, so a value that would use
//! one is refused instead of being sent as written.

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::model::error::{Result, ValidationError};

/// One header operation, with where it was written (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOp {
    pub name: String,
    /// Empty for `remove`.
    pub value: String,
    /// Path of the entry inside `headers` (`set.X-Foo`, `remove.0`, `X-Foo`).
    pub field: String,
}

/// A parsed `headers` map, either shape.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRewrite {
    pub add: Vec<HeaderOp>,
    pub set: Vec<HeaderOp>,
    pub remove: Vec<HeaderOp>,
}

/// Which message the headers belong to: decides which names are off limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderTarget {
    /// The request to the upstream (`Host` has its own setting there).
    Request,
    /// The response to the client.
    Response,
}

/// Framing and hop-by-hop headers: the proxy owns them, a rewrite would break or be dropped.
const MANAGED: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Checks a header name a plugin writes; errors have an empty field for the caller to fill.
pub fn check_header_name(name: &str, target: HeaderTarget) -> Result<()> {
    let parsed = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ValidationError::new("", format!("'{name}' is not a valid header name")))?;
    let lower = parsed.as_str();
    if MANAGED.contains(&lower) {
        return Err(ValidationError::new(
            "",
            format!("'{name}' is managed by the proxy and cannot be rewritten"),
        ));
    }
    if target == HeaderTarget::Request && lower == "host" {
        return Err(ValidationError::new(
            "",
            "the upstream Host is set with the plugin's 'host' field",
        ));
    }
    Ok(())
}

/// Checks a header value a plugin writes: valid for HTTP, and a literal.
pub fn check_header_value(value: &str) -> Result<()> {
    if http::HeaderValue::from_bytes(value.as_bytes()).is_err() {
        return Err(ValidationError::new(
            "",
            "not a valid header value (no control characters or line breaks)",
        ));
    }
    check_literal(value)
}

/// Refuses APISIX/NGINX variables (`$uri`, `${1}`, `$remote_addr`): they are not expanded here,
/// and sending them as written would be a silent misconfiguration.
pub fn check_literal(text: &str) -> Result<()> {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'$'
            && let Some(&next) = bytes.get(i + 1)
            && (next.is_ascii_alphanumeric() || next == b'_' || next == b'{')
        {
            let var: String = text[i..]
                .chars()
                .take_while(|c| {
                    *c == '$' || *c == '{' || *c == '}' || c.is_alphanumeric() || *c == '_'
                })
                .collect();
            return Err(ValidationError::new(
                "",
                format!("variables ('{var}') are not supported here; write the value literally"),
            ));
        }
    }
    Ok(())
}

impl HeaderRewrite {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }

    /// Checks every name and value; errors name the entry (`set.X-Foo`, `remove.0`).
    pub fn validate(&self, target: HeaderTarget) -> Result<()> {
        for op in self.add.iter().chain(&self.set) {
            check_header_name(&op.name, target).map_err(|e| e.under(&op.field))?;
            check_header_value(&op.value).map_err(|e| e.under(&op.field))?;
        }
        for op in &self.remove {
            check_header_name(&op.name, target).map_err(|e| e.under(&op.field))?;
        }
        Ok(())
    }

    fn from_map(map: Map<String, Value>) -> Result<HeaderRewrite, String> {
        let structured = ["add", "set", "remove"]
            .iter()
            .any(|k| map.get(*k).is_some_and(|v| v.is_object() || v.is_array()));
        let mut out = HeaderRewrite::default();
        if !structured {
            for (name, value) in map {
                let value = scalar(&value).ok_or_else(|| format!("{name}: {NOT_SCALAR}"))?;
                let op = HeaderOp {
                    field: name.clone(),
                    name,
                    value,
                };
                if op.value.is_empty() {
                    out.remove.push(op);
                } else {
                    out.set.push(op);
                }
            }
            return Ok(out);
        }
        for (key, value) in map {
            match (key.as_str(), value) {
                ("set", Value::Object(m)) => out.set = named_values("set", m)?,
                ("add", Value::Object(m)) => out.add = named_values("add", m)?,
                ("add", Value::Array(items)) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let line = item
                            .as_str()
                            .ok_or_else(|| format!("add.{i}: {NOT_LINE}"))?;
                        let (name, value) = line
                            .split_once(':')
                            .ok_or_else(|| format!("add.{i}: {NOT_LINE}"))?;
                        out.add.push(HeaderOp {
                            name: name.trim().to_string(),
                            value: value.trim().to_string(),
                            field: format!("add.{i}"),
                        });
                    }
                }
                ("remove", Value::Array(items)) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let Value::String(name) = item else {
                            return Err(format!("remove.{i}: must be a header name"));
                        };
                        out.remove.push(HeaderOp {
                            name,
                            value: String::new(),
                            field: format!("remove.{i}"),
                        });
                    }
                }
                ("set", _) => return Err("set: must be an object of header names to values".into()),
                ("add", _) => return Err(format!("add: {NOT_ADD}")),
                ("remove", _) => return Err("remove: must be a list of header names".into()),
                (other, _) => {
                    // Worded as serde words it, so the 400 names `headers.<other>`.
                    return Err(format!(
                        "unknown field `{other}`, expected one of `add`, `set`, `remove` \
                         (or the flat {{name: value}} form alone)"
                    ));
                }
            }
        }
        Ok(out)
    }
}

const NOT_SCALAR: &str = "a header value must be a string or a number";
const NOT_LINE: &str = "must be a \"Name: value\" string";
const NOT_ADD: &str =
    "must be an object of header names to values, or a list of \"Name: value\" strings";

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn named_values(op: &str, map: Map<String, Value>) -> Result<Vec<HeaderOp>, String> {
    map.into_iter()
        .map(|(name, value)| {
            let value = scalar(&value).ok_or_else(|| format!("{op}.{name}: {NOT_SCALAR}"))?;
            Ok(HeaderOp {
                field: format!("{op}.{name}"),
                name,
                value,
            })
        })
        .collect()
}

impl<'de> Deserialize<'de> for HeaderRewrite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        HeaderRewrite::from_map(map).map_err(D::Error::custom)
    }
}

/// Written back in the 3.x shape (a flat map's empty values become `remove`).
impl Serialize for HeaderRewrite {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Named<'a>(&'a [HeaderOp]);
        impl Serialize for Named<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for op in self.0 {
                    m.serialize_entry(&op.name, &op.value)?;
                }
                m.end()
            }
        }
        let names: Vec<&str> = self.remove.iter().map(|op| op.name.as_str()).collect();
        let mut m = s.serialize_map(None)?;
        if !self.add.is_empty() {
            m.serialize_entry("add", &Named(&self.add))?;
        }
        if !self.set.is_empty() {
            m.serialize_entry("set", &Named(&self.set))?;
        }
        if !names.is_empty() {
            m.serialize_entry("remove", &names)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<HeaderRewrite, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    fn names(ops: &[HeaderOp]) -> Vec<(&str, &str)> {
        ops.iter()
            .map(|o| (o.name.as_str(), o.value.as_str()))
            .collect()
    }

    #[test]
    fn both_shapes() {
        let h =
            parse(json!({"set": {"X-A": "1", "X-N": 5}, "add": {"X-B": "2"}, "remove": ["X-C"]}))
                .unwrap();
        assert_eq!(names(&h.set), [("X-A", "1"), ("X-N", "5")]);
        assert_eq!(names(&h.add), [("X-B", "2")]);
        assert_eq!(names(&h.remove), [("X-C", "")]);
        assert_eq!(h.remove[0].field, "remove.0");

        let h = parse(json!({"add": ["Set-Cookie: a=1; Path=/", "X-D:2"]})).unwrap();
        assert_eq!(names(&h.add), [("Set-Cookie", "a=1; Path=/"), ("X-D", "2")]);

        // Flat: set, and an empty value removes. `set` with a string is a header named "set".
        let h = parse(json!({"X-A": "1", "X-Gone": "", "set": "x"})).unwrap();
        assert_eq!(names(&h.set), [("X-A", "1"), ("set", "x")]);
        assert_eq!(names(&h.remove), [("X-Gone", "")]);
        assert_eq!(h.set[0].field, "X-A");

        let back = serde_json::to_value(parse(json!({"X-A": "1", "X-Gone": ""})).unwrap()).unwrap();
        assert_eq!(back, json!({"set": {"X-A": "1"}, "remove": ["X-Gone"]}));
    }

    #[test]
    fn bad_shapes_and_values() {
        let shape_errors = [
            (json!({"set": {"X-A": true}}), "set.X-A"),
            (
                json!({"set": {"X-A": "1"}, "X-B": "2"}),
                "unknown field `X-B`",
            ),
            (json!({"remove": [1]}), "remove.0"),
            (json!({"add": ["no colon"]}), "add.0"),
            (json!({"X-A": []}), "X-A"),
            (json!([]), "invalid type"),
        ];
        for (v, want) in shape_errors {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
        let value_errors = [
            (
                json!({"set": {"bad name": "1"}}),
                HeaderTarget::Request,
                "set.bad name",
            ),
            (
                json!({"set": {"X-A": "a\nb"}}),
                HeaderTarget::Request,
                "set.X-A",
            ),
            (json!({"X-A": "$remote_addr"}), HeaderTarget::Request, "X-A"),
            (
                json!({"add": {"X-A": "${1}"}}),
                HeaderTarget::Response,
                "add.X-A",
            ),
            (
                json!({"set": {"Host": "a"}}),
                HeaderTarget::Request,
                "set.Host",
            ),
            (
                json!({"remove": ["content-length"]}),
                HeaderTarget::Response,
                "remove.0",
            ),
            (
                json!({"Transfer-Encoding": "x"}),
                HeaderTarget::Response,
                "Transfer-Encoding",
            ),
        ];
        for (v, target, field) in value_errors {
            let e = parse(v.clone()).unwrap().validate(target).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
        for ok in [
            json!({"set": {"Host": "a"}}),
            json!({"X-Price": "5$"}),
            json!({"X-Price": "$$"}),
        ] {
            let target = HeaderTarget::Response;
            parse(ok.clone()).unwrap().validate(target).unwrap();
        }
    }
}
