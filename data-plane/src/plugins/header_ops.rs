//! `headers` operations of `proxy-rewrite` and `response-rewrite`, compiled once: names and
//! values parsed, applied in APISIX's order (add, set, remove) with no parsing per request.

use http::{HeaderMap, HeaderName, HeaderValue};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::header_ops::{HeaderOp, HeaderRewrite};

#[derive(Debug, Default)]
pub struct HeaderOps {
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

fn name(op: &HeaderOp) -> Result<HeaderName, ValidationError> {
    HeaderName::from_bytes(op.name.as_bytes())
        .map_err(|_| ValidationError::new(op.field.as_str(), "not a valid header name"))
}

fn pair(op: &HeaderOp) -> Result<(HeaderName, HeaderValue), ValidationError> {
    let value = HeaderValue::from_bytes(op.value.as_bytes())
        .map_err(|_| ValidationError::new(op.field.as_str(), "not a valid header value"))?;
    Ok((name(op)?, value))
}

impl HeaderOps {
    /// Errors are named inside `headers` (the caller nests them).
    pub fn compile(config: Option<&HeaderRewrite>) -> Result<HeaderOps, ValidationError> {
        let Some(c) = config else {
            return Ok(HeaderOps::default());
        };
        let under = |e: ValidationError| e.under("headers");
        Ok(HeaderOps {
            add: c
                .add
                .iter()
                .map(pair)
                .collect::<Result<_, _>>()
                .map_err(under)?,
            set: c
                .set
                .iter()
                .map(pair)
                .collect::<Result<_, _>>()
                .map_err(under)?,
            remove: c
                .remove
                .iter()
                .map(name)
                .collect::<Result<_, _>>()
                .map_err(under)?,
        })
    }

    /// `add` appends a value, `set` replaces every value, `remove` drops every value.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn applies_in_apisix_order() {
        let cases = [
            // add, then set: set wins over the added value.
            (
                json!({"add": {"X-A": "added"}, "set": {"X-A": "set"}}),
                vec![("x-a", vec!["set"]), ("x-keep", vec!["k"])],
            ),
            (
                json!({"add": {"X-Multi": "2"}, "remove": ["X-Drop"]}),
                vec![("x-multi", vec!["1", "2"]), ("x-drop", vec![])],
            ),
            (
                json!({"X-New": "n", "X-Drop": ""}),
                vec![
                    ("x-new", vec!["n"]),
                    ("x-drop", vec![]),
                    ("x-multi", vec!["1"]),
                ],
            ),
            (
                json!({"set": {"X-Multi": "only"}}),
                vec![("x-multi", vec!["only"])],
            ),
        ];
        for (config, want) in cases {
            let rewrite: HeaderRewrite = serde_json::from_value(config.clone()).unwrap();
            let ops = HeaderOps::compile(Some(&rewrite)).unwrap();
            let mut headers = HeaderMap::new();
            headers.insert("x-keep", HeaderValue::from_static("k"));
            headers.insert("x-drop", HeaderValue::from_static("d"));
            headers.insert("x-multi", HeaderValue::from_static("1"));
            ops.apply(&mut headers);
            for (name, values) in want {
                let got: Vec<_> = headers.get_all(name).iter().collect();
                assert_eq!(got, values, "{config}: {name}");
            }
        }
    }
}
