//! `DELETE` (or `PURGE`) `/admin/routes/<id>/cache[?key=K]`: purge a route's `proxy-cache`
//! entries on every data plane. The purge is a `cache_purges` resource, so it travels in the
//! next snapshot like any change; expired purges are deleted when a new one is written.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use postern_proto::model::{PURGE_LIFETIME_SECS, ResourceKind};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{AdminPath, AdminQuery};
use super::resources::{parse_json, prepare_put};
use super::{Actor, AdminError, AdminState};
use crate::store::{DeleteRequest, Precondition};

#[derive(Debug, Deserialize)]
pub struct PurgeQuery {
    key: Option<String>,
}

pub async fn purge(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    method: Method,
    AdminPath(id): AdminPath<String>,
    AdminQuery(query): AdminQuery<PurgeQuery>,
    body: Bytes,
) -> Result<Response, AdminError> {
    if method != Method::DELETE && method.as_str() != "PURGE" {
        return Ok(StatusCode::METHOD_NOT_ALLOWED.into_response());
    }
    let body_key = if body.is_empty() {
        None
    } else {
        match parse_json(&body)?.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(AdminError::invalid("key", "must be a string")),
        }
    };
    let key = match (query.key, body_key) {
        (Some(_), Some(_)) => {
            return Err(AdminError::invalid(
                "key",
                "give the key in the query string or in the body, not both",
            ));
        }
        (q, b) => q.or(b),
    };
    if state.store.get(ResourceKind::Routes, &id).await?.is_none() {
        return Err(AdminError::NotFound(format!("routes/{id} does not exist")));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut value = json!({
        "route_id": id,
        "expires_at": now + PURGE_LIFETIME_SECS,
        "create_time": now,
    });
    if let Some(k) = key {
        value["key"] = json!(k);
    }
    // Time-ordered ids: purges list in the order they were made.
    let purge_id = uuid::Uuid::now_v7().simple().to_string();
    let req = prepare_put(
        ResourceKind::CachePurges,
        &purge_id,
        value,
        Precondition::MustNotExist,
        &actor,
    )?;
    let outcome = state.store.put(req).await?;
    prune_expired(&state, &actor, now).await;
    Ok((
        StatusCode::OK,
        Json(json!({
            "purge": outcome.resource.value,
            "id": purge_id,
            "revision": outcome.revision,
        })),
    )
        .into_response())
}

/// Deletes purges past their `expires_at` (data planes ignore them already). Best effort: a
/// failure leaves them for the next purge.
async fn prune_expired(state: &AdminState, actor: &Actor, now: u64) {
    let Ok(purges) = state.store.list(ResourceKind::CachePurges).await else {
        return;
    };
    for p in purges {
        let expired = p.value["expires_at"].as_u64().is_some_and(|t| t <= now);
        if expired {
            let _ = state
                .store
                .delete(DeleteRequest {
                    kind: ResourceKind::CachePurges,
                    id: p.id.clone(),
                    precondition: Precondition::None,
                    actor: Some(actor.0.clone()),
                })
                .await;
        }
    }
}
