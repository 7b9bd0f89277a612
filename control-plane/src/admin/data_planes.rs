use axum::Json;
use axum::extract::State;
use postern_proto::model::ResourceKind;
use serde_json::{Value, json};

use super::AdminState;
use super::error::AdminError;
use super::extract::AdminPath;

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

/// `GET /admin/{upstreams,routes,services}/{id}/health`: the node health that the connected
/// data planes report for that upstream (a route's or service's inline one), node by node:
/// `healthy` when every reporting DP sees it healthy, `unhealthy` when none does, `partial`
/// otherwise (each DP checks on its own).
pub async fn upstream_health(
    State(state): State<AdminState>,
    AdminPath((kind, id)): AdminPath<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let kind: ResourceKind = kind
        .parse()
        .map_err(|_| AdminError::NotFound(format!("unknown resource kind '{kind}'")))?;
    if !matches!(
        kind,
        ResourceKind::Upstreams | ResourceKind::Routes | ResourceKind::Services
    ) {
        return Err(AdminError::NotFound(format!(
            "{kind} have no upstream health; try upstreams, routes or services"
        )));
    }
    if state.store.get(kind, &id).await?.is_none() {
        return Err(AdminError::NotFound(format!("{kind}/{id} not found")));
    }
    let reports = state.registry.upstream_health(kind.as_str(), &id);
    // address → (healthy on, unhealthy on), in the order the first report lists them.
    let mut nodes: Vec<(String, usize, usize)> = Vec::new();
    for r in &reports {
        for (address, healthy) in &r.nodes {
            let i = match nodes.iter().position(|n| &n.0 == address) {
                Some(i) => i,
                None => {
                    nodes.push((address.clone(), 0, 0));
                    nodes.len() - 1
                }
            };
            if *healthy {
                nodes[i].1 += 1;
            } else {
                nodes[i].2 += 1;
            }
        }
    }
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|(address, up, down)| {
            let status = match (up, down) {
                (_, 0) => "healthy",
                (0, _) => "unhealthy",
                _ => "partial",
            };
            json!({"address": address, "status": status, "healthy_on": up, "unhealthy_on": down})
        })
        .collect();
    let data_planes: Vec<Value> = reports
        .iter()
        .map(|r| {
            let nodes: Vec<Value> = r
                .nodes
                .iter()
                .map(|(a, h)| json!({"address": a, "healthy": h}))
                .collect();
            json!({"node_id": r.node_id, "nodes": nodes})
        })
        .collect();
    Ok(Json(json!({
        "kind": kind.as_str(),
        "id": id,
        "checked": !reports.is_empty(),
        "connected_data_planes": state.registry.connected_count(),
        "reporting_data_planes": reports.len(),
        "nodes": nodes,
        "data_planes": data_planes,
    })))
}
