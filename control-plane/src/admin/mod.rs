//! The Admin API: REST over the config store, authenticated by `X-API-KEY`.
//!
//! Native paths are `/admin/<kind>/<id>`; `/apisix/admin/...` is an alias so existing APISIX
//! scripts run unchanged. `app()` builds the router without a socket so tests can drive it.

mod cache;
mod config;
mod data_planes;
mod error;
mod explain;
mod extract;
pub mod listener;
pub mod openapi;
mod resources;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use error::AdminError;

use crate::admin_key::{AdminKeys, Role};
use crate::snapshot::SnapshotHub;
use crate::store::ConfigStore;
use crate::sync::DataPlaneRegistry;

/// Everything the handlers need, shared.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn ConfigStore>,
    pub keys: Arc<AdminKeys>,
    pub registry: Arc<DataPlaneRegistry>,
    pub hub: Arc<SnapshotHub>,
}

/// The name of the admin key that authenticated a request, for the history's `actor`.
#[derive(Clone, Debug)]
pub struct Actor(pub String);

/// Largest Admin API body accepted.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

pub fn app(state: AdminState) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi::get))
        .route("/config", get(config::get).put(config::put))
        .route("/explain", axum::routing::post(explain::explain))
        .route("/data-planes", get(data_planes::list))
        .route("/history", get(resources::history))
        .route("/status", get(status::status))
        .route("/store/adopt", axum::routing::post(status::adopt))
        .route("/routes/{id}/cache", axum::routing::any(cache::purge))
        .route(
            "/{kind}",
            get(resources::list)
                .post(resources::create)
                .put(resources::put_by_body),
        )
        .route(
            "/{kind}/{id}",
            get(resources::get_one)
                .put(resources::put)
                .patch(resources::patch)
                .delete(resources::delete),
        )
        .route("/{kind}/{id}/health", get(data_planes::upstream_health))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(audit_writes))
        .with_state(state.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
        .nest("/admin", api.clone())
        .nest("/apisix/admin", api)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// `GET /metrics`: Prometheus text, no key needed (no configuration in it).
async fn metrics(State(state): State<AdminState>) -> Response {
    let text = crate::metrics::METRICS.render(&state.registry);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

/// Counts every write (refused ones included) by resource kind, method and status code, and
/// writes one audit line for it (target `postern::audit`): who (the key's name), from where,
/// what, the answer, and the revision it made (the `ETag` of a resource write; the history has
/// every revision with its actor).
async fn audit_writes(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        return next.run(request).await;
    }
    // The full path (inside the nest, axum strips `/admin`).
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(
            || request.uri().path().to_string(),
            |u| u.path().to_string(),
        );
    let peer = request
        .extensions()
        .get::<listener::Peer>()
        .map(|p| p.0.to_string());
    // The path inside the nest: `/<kind>[/<id>]`. Unknown kinds share one label value.
    let kind = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .and_then(|k| k.parse::<postern_proto::model::ResourceKind>().ok())
        .map_or("other", |k| k.as_str());
    let response = next.run(request).await;
    crate::metrics::METRICS
        .admin_writes
        .with_label_values(&[kind, method.as_str(), response.status().as_str()])
        .inc();
    let actor = response.extensions().get::<Actor>().map(|a| a.0.as_str());
    let revision = response
        .headers()
        .get(axum::http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"'));
    tracing::info!(
        target: "postern::audit",
        actor = actor.unwrap_or("-"),
        client = peer.as_deref().unwrap_or("-"),
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        revision = revision.unwrap_or("-"),
        "admin write"
    );
    response
}

/// Rejects requests without a valid `X-API-KEY` (401), and writes with a viewer's key (403),
/// before any handler runs.
async fn authenticate(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let presented = request
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let (name, role) = state
        .keys
        .check(presented)
        .ok_or(AdminError::Unauthorized)?;
    let reads = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if role == Role::Viewer && !reads {
        return Err(AdminError::Forbidden(format!(
            "the key '{name}' has the viewer role: read only"
        )));
    }
    let actor = Actor(name.to_string());
    request.extensions_mut().insert(actor.clone());
    let mut response = next.run(request).await;
    // For the audit line written outside this layer.
    response.extensions_mut().insert(actor);
    Ok(response)
}
