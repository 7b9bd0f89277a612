//! The Admin API: REST over the config store, authenticated by `X-API-KEY`.
//!
//! Native paths are `/admin/<kind>/<id>`; `/apisix/admin/...` is an alias so existing APISIX
//! scripts run unchanged. `app()` builds the router without a socket so tests can drive it.

mod config;
mod data_planes;
mod error;
mod explain;
mod resources;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use error::AdminError;

use crate::admin_key::AdminKeys;
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
        .route("/config", get(config::get).put(config::put))
        .route("/explain", axum::routing::post(explain::explain))
        .route("/data-planes", get(data_planes::list))
        .route("/history", get(resources::history))
        .route("/status", get(status::status))
        .route("/store/adopt", axum::routing::post(status::adopt))
        .route("/{kind}", get(resources::list).post(resources::create))
        .route(
            "/{kind}/{id}",
            get(resources::get_one)
                .put(resources::put)
                .patch(resources::patch)
                .delete(resources::delete),
        )
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(count_writes))
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

/// Counts every write (refused ones included) by resource kind, method and status code.
async fn count_writes(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        return next.run(request).await;
    }
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
    response
}

/// Rejects requests without a valid `X-API-KEY` before any handler runs.
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
    let name = state
        .keys
        .check(presented)
        .ok_or(AdminError::Unauthorized)?;
    let actor = Actor(name.to_string());
    request.extensions_mut().insert(actor);
    Ok(next.run(request).await)
}
