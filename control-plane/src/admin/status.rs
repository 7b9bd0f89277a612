//! `GET /admin/status` (store health, snapshot, pending store reset) and
//! `POST /admin/store/adopt` (accept a wiped or replaced store).

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{AdminError, AdminState};

/// How long `GET /admin/status` waits for the store to answer.
const STORE_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn status(State(state): State<AdminState>) -> Json<Value> {
    let snapshot = state.hub.current().map(|s| {
        json!({
            "version": s.version,
            "store_id": s.store_id,
            "resources": s.resources.len(),
            "published_at": s.published_at,
            "build_ms": s.build_time.as_secs_f64() * 1e3,
        })
    });
    let store = state.hub.status();
    // Asked now rather than taken from the builder's last read, which may be seconds old.
    let probe = tokio::time::timeout(STORE_PROBE_TIMEOUT, state.store.revision()).await;
    let (reachable, error) = match probe {
        Ok(Ok(_)) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (
            false,
            Some(format!("no answer within {STORE_PROBE_TIMEOUT:?}")),
        ),
    };
    Json(json!({
        "store": {
            "backend": state.store.backend(),
            "reachable": reachable,
            "error": error,
            "last_snapshot_read": store.store_last_ok,
        },
        "snapshot": snapshot,
        "store_reset": store.store_reset,
    }))
}

/// Body: `{"store_id": "<id>"}`, the id `GET /admin/status` reports under `store_reset`.
pub async fn adopt(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| AdminError::invalid("", format!("invalid JSON: {e}")))?;
    let id = v
        .get("store_id")
        .and_then(Value::as_str)
        .ok_or_else(|| AdminError::invalid("store_id", "required: the id of the store to adopt"))?;
    state
        .hub
        .adopt(id)
        .map_err(|m| AdminError::Conflict(format!("cannot adopt: {m}")))?;
    Ok(Json(json!({"adopted": id})))
}
