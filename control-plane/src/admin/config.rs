//! `GET|PUT /admin/config`: the whole configuration as one document, for backups, `restore`,
//! declarative `apply` and `rollback` (admin-cli). A PUT is validated as a whole (every body, then
//! every reference within the new set) and applied in one store transaction: all or nothing.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use postern_proto::model::{ConfigSet, Resource, ResourceKind};
use serde_json::{Map, Value, json};

use super::resources::{parse_json, prepare_put};
use super::{Actor, AdminError, AdminState};
use crate::store::{Precondition, ReplaceItem, ReplaceRequest};

/// The version of the document's shape (`postern_backup`).
pub const FORMAT_VERSION: u64 = 1;

/// `GET /admin/config`: every resource, from one consistent snapshot, with its revision.
pub async fn get(State(state): State<AdminState>) -> Result<Json<Value>, AdminError> {
    let snap = state.store.snapshot().await?;
    let mut resources = Map::new();
    for kind in ResourceKind::ALL {
        let list: Vec<Value> = snap
            .resources
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.value.clone())
            .collect();
        resources.insert(kind.as_str().to_string(), Value::Array(list));
    }
    Ok(Json(json!({
        "postern_backup": FORMAT_VERSION,
        "revision": snap.revision,
        "resources": resources,
    })))
}

/// `If-Match: 12` → the global revision must still be 12.
fn expected_revision(headers: &HeaderMap) -> Result<Option<u64>, AdminError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
        .and_then(|s| s.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| AdminError::invalid("If-Match", "must be the global revision, e.g. \"12\""))
}

/// `PUT /admin/config`: `{"resources": {"<kind>": [{"id": ..., ...}, ...]}}` (a backup document
/// is accepted as is). Kinds left out are emptied: the live config becomes exactly the body.
pub async fn put(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let expected = expected_revision(&headers)?;
    let doc = parse_json(&body)?;
    let items = parse_document(&doc, &actor)?;
    let outcome = state
        .store
        .replace_all(ReplaceRequest {
            resources: items,
            expected_revision: expected,
            actor: Some(actor.0),
        })
        .await?;
    Ok(Json(json!({
        "revision": outcome.revision,
        "created": outcome.created,
        "updated": outcome.updated,
        "deleted": outcome.deleted,
    })))
}

/// Validates the whole document; every error names `<kind>/<id>.<field>` (or the list index).
fn parse_document(doc: &Value, actor: &Actor) -> Result<Vec<ReplaceItem>, AdminError> {
    let Some(obj) = doc.as_object() else {
        return Err(AdminError::invalid("", "the body must be a JSON object"));
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "resources" | "postern_backup" | "revision") {
            return Err(AdminError::invalid(key.as_str(), "unknown field"));
        }
    }
    if let Some(v) = obj.get("postern_backup")
        && v.as_u64() != Some(FORMAT_VERSION)
    {
        return Err(AdminError::invalid(
            "postern_backup",
            format!("unsupported version {v} (this control plane reads {FORMAT_VERSION})"),
        ));
    }
    let resources = match obj.get("resources") {
        Some(Value::Object(m)) => m.clone(),
        None => Map::new(),
        Some(_) => return Err(AdminError::invalid("resources", "must be an object")),
    };
    let mut set = ConfigSet::default();
    let mut items = Vec::new();
    for (name, list) in &resources {
        let kind: ResourceKind = name
            .parse()
            .map_err(|e: postern_proto::model::UnknownKind| {
                AdminError::invalid(format!("resources.{name}"), e.to_string())
            })?;
        let Some(list) = list.as_array() else {
            return Err(AdminError::invalid(
                format!("resources.{name}"),
                "must be a list",
            ));
        };
        for (i, value) in list.iter().enumerate() {
            let id = match value.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => {
                    return Err(AdminError::invalid(
                        format!("resources.{name}[{i}].id"),
                        "every resource needs an id",
                    ));
                }
            };
            let req =
                prepare_put(kind, &id, value.clone(), Precondition::None, actor).map_err(|e| {
                    match e {
                        AdminError::Invalid(v) => {
                            AdminError::Invalid(v.under(&format!("{kind}/{id}")))
                        }
                        other => other,
                    }
                })?;
            set.insert(&id, Resource::parse(kind, &req.value)?);
            items.push(ReplaceItem {
                kind,
                id: req.id,
                value: req.value,
                references: req.references,
                claims: req.claims,
            });
        }
    }
    set.check_references()?;
    Ok(items)
}
