use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AdminState;

/// `GET /admin/data-planes`: every known DP, and how many serve the current version.
pub async fn list(State(state): State<AdminState>) -> Json<Value> {
    let version = state.snapshots.borrow().as_ref().map(|s| s.version);
    let list = state.registry.list();
    let connected = list.iter().filter(|d| d.connected).count();
    let applied = list
        .iter()
        .filter(|d| d.connected && Some(d.applied_version) == version)
        .count();
    Json(json!({
        "version": version,
        "total": list.len(),
        "connected": connected,
        "applied_current": applied,
        "list": list,
    }))
}
