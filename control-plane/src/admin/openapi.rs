//! `GET /admin/openapi.json`: the Admin API's OpenAPI 3.0 document.
//!
//! The document is maintained by hand in `openapi.json` (the handlers build their answers as
//! `serde_json::Value`, so a derive-based generator would need a parallel set of types to
//! annotate: more code, and no truer). What can be derived is: the per-kind paths are written
//! once, as a template under `x-postern-resource-paths`, and expanded here for every
//! `ResourceKind::ALL`, so a new kind appears in the document by itself. The integration test
//! `tests/tests/admin_openapi.rs` probes the running server with every documented path and
//! method, and `scripts/schemathesis.sh` fuzzes the server against the document.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use postern_proto::model::ResourceKind;
use serde_json::{Map, Value};

const TEMPLATE: &str = include_str!("openapi.json");

/// The kinds whose resources have an upstream, and so a `/{kind}/{id}/health` path.
const HEALTH_KINDS: [ResourceKind; 3] = [
    ResourceKind::Upstreams,
    ResourceKind::Routes,
    ResourceKind::Services,
];

/// The document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| document().to_string());

pub async fn get() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// The template with the resource paths expanded for every kind.
pub fn document() -> Value {
    let mut doc: Value = serde_json::from_str(TEMPLATE).expect("openapi.json is valid JSON");
    let templates = doc
        .as_object_mut()
        .and_then(|d| d.remove("x-postern-resource-paths"))
        .expect("openapi.json has x-postern-resource-paths");
    let kinds: Vec<Value> = ResourceKind::ALL
        .iter()
        .map(|k| Value::String(k.as_str().to_string()))
        .collect();
    doc["components"]["schemas"]["Kind"]["enum"] = Value::Array(kinds);
    let paths = doc["paths"]
        .as_object_mut()
        .expect("openapi.json has paths");
    for kind in ResourceKind::ALL {
        for (template_path, item) in templates.as_object().into_iter().flatten() {
            if template_path.ends_with("/health") && !HEALTH_KINDS.contains(&kind) {
                continue;
            }
            paths.insert(
                template_path.replace("{kind}", kind.as_str()),
                substitute(item, kind.as_str()),
            );
        }
    }
    doc
}

/// A copy of `value` with `{kind}` replaced by `kind` in every string (summaries, operation
/// ids, and the `body_{kind}` schema references).
fn substitute(value: &Value, kind: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("{kind}", kind)),
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute(v, kind)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), substitute(v, kind)))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` points at something in the document (a kind without a `body_<kind>` schema,
    /// or a typo, would otherwise only show when a client tries to use it).
    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 50, "only {} references", refs.len());
        for r in &refs {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn every_kind_has_its_paths_and_unique_operation_ids() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        for kind in ResourceKind::ALL {
            assert!(paths.contains_key(&format!("/{kind}")), "{kind}");
            assert!(paths.contains_key(&format!("/{kind}/{{id}}")), "{kind}");
        }
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op.get("operationId").and_then(Value::as_str))
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "duplicate operationId");
        let text = doc.to_string();
        assert!(!text.contains("{kind}"), "an unexpanded {{kind}} is left");
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|v| collect_refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
