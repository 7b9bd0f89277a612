use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AdminState;

/// `GET /admin/data-planes`: every known DP, and how many serve the current version.
pub async fn list(State(state): State<AdminState>) -> Json<Value> {
    let version = state.hub.current().map(|s| s.version);
    let list: Vec<Value> = state
        .registry
        .list()
        .into_iter()
        .map(|d| {
            let lag = state.hub.lag_seconds(d.applied_version);
            let mut v = serde_json::to_value(&d).unwrap_or_default();
            v["lag_seconds"] = json!(lag);
            v
        })
        .collect();
    let connected = list.iter().filter(|d| d["connected"] == true).count();
    let applied = list
        .iter()
        .filter(|d| d["connected"] == true && d["applied_version"].as_u64() == version)
        .count();
    Json(json!({
        "version": version,
        "total": list.len(),
        "connected": connected,
        "applied_current": applied,
        "list": list,
    }))
}
