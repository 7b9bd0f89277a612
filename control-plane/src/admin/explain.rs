//! `POST /admin/explain`: which route the current snapshot gives a request, with the data
//! plane's own compiler and router (the same code, not a re-implementation), the plugins that
//! run in order, and the upstream nodes that are candidates. Backs `admin-cli explain`.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use postern_data_plane::router::vars::RequestVars;
use postern_proto::sync::Snapshot as WireSnapshot;
use serde::Deserialize;
use serde_json::{Value, json};

use super::resources::parse_json;
use super::{AdminError, AdminState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainRequest {
    #[serde(default = "default_method")]
    method: String,
    /// `http://host/path?query` or just `/path?query` (then give a `Host` header).
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// The client address `vars` such as `remote_addr` see.
    #[serde(default = "default_client")]
    client: IpAddr,
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_client() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

pub async fn explain(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let req: ExplainRequest = serde_json::from_value(parse_json(&body)?)
        .map_err(|e| AdminError::invalid("", e.to_string()))?;
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(req.url.as_str());
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let (parts, ()) = builder
        .body(())
        .map_err(|e| AdminError::invalid("", format!("not a usable request: {e}")))?
        .into_parts();
    let snap = state
        .hub
        .current()
        .ok_or_else(|| AdminError::Unavailable("no snapshot built yet".to_string()))?;
    let wire = WireSnapshot {
        version: snap.version,
        nonce: String::new(),
        resources: snap.resources.clone(),
        store_id: snap.store_id.clone(),
        ..WireSnapshot::default()
    };
    let config = postern_data_plane::compile::compile(&wire, None)
        .map_err(|e| AdminError::Internal(format!("the snapshot does not compile: {e}")))?;
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let vars = RequestVars {
        parts: &parts,
        client: req.client,
    };
    let found = config
        .router
        .find_with(&parts.method, host, parts.uri.path(), |i| {
            config.routes.get(i).is_some_and(|r| r.vars.matches(&vars))
        });
    let mut answer = json!({
        "version": snap.version,
        "request": {"method": parts.method.as_str(), "host": host, "path": parts.uri.path()},
    });
    let Some(route) = found.and_then(|i| config.routes.get(i)) else {
        answer["matched"] = json!(false);
        return Ok(Json(answer));
    };
    let body = snap
        .stored
        .iter()
        .find(|r| r.kind == postern_proto::model::ResourceKind::Routes && *r.id == *route.id)
        .map(|r| r.value.clone())
        .unwrap_or(Value::Null);
    let matchers: serde_json::Map<String, Value> = [
        "uri", "uris", "hosts", "host", "methods", "vars", "priority",
    ]
    .iter()
    .filter_map(|k| body.get(*k).map(|v| (k.to_string(), v.clone())))
    .collect();
    answer["matched"] = json!(true);
    answer["route"] = json!({
        "id": &*route.id,
        "name": body.get("name"),
        "service_id": body.get("service_id"),
        "matched_by": matchers,
    });
    answer["plugins"] = json!(route.plugins.names().collect::<Vec<_>>());
    // Not a phase plugin, so not in the list above: the gRPC method the route calls instead.
    if let Some(t) = &route.transcode {
        answer["grpc_transcode"] = json!(t.path.as_str());
    }
    answer["upstream_nodes"] = json!(
        route
            .upstream
            .iter()
            .flat_map(|u| u.nodes.iter().map(|n| n.authority.to_string()))
            .collect::<Vec<_>>()
    );
    Ok(Json(answer))
}
