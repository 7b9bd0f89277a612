//! The Admin API: REST over the config store, authenticated by `X-API-KEY`.
//!
//! Native paths are `/admin/<kind>/<id>`; `/apisix/admin/...` is an alias so existing APISIX
//! scripts run unchanged. `app()` builds the router without a socket so tests can drive it.

mod data_planes;
mod error;
mod resources;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
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
        .route("/data-planes", get(data_planes::list))
        .route("/history", get(resources::history))
        .route("/status", get(status::status))
        .route("/store/adopt", axum::routing::post(status::adopt))
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
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state);
    Router::new()
        .nest("/admin", api.clone())
        .nest("/apisix/admin", api)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
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
    request.extensions_mut().insert(actor);
    Ok(next.run(request).await)
}
