//! The status listener: `/healthz` (the process is up), `/readyz` (a config is applied and the
//! DP is not shutting down, so traffic can be sent here), `/metrics` (Prometheus) and
//! `/status/upstreams` (every runtime upstream's nodes: health, in-flight requests, latency
//! EWMA). Kept off the proxy port so probes and scrapes never compete with traffic, and so the
//! proxy port can never expose them.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::observability::metrics::METRICS;
use crate::state::DpState;

pub async fn serve(listener: TcpListener, state: Arc<DpState>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = shutdown.cancelled() => return,
        };
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(respond(&state, &req)) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(state: &DpState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/metrics" {
        let mut resp = Response::new(Full::new(Bytes::from(METRICS.render())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return resp;
    }
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" if state.is_draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "ready": false,
                "reason": "shutting down",
                "version": state.applied_version(),
            }),
        ),
        "/readyz" => match state.applied_version() {
            Some(v) => (
                StatusCode::OK,
                serde_json::json!({
                    "ready": true,
                    "version": v,
                    // Served from the disk cache, not yet confirmed by a control plane.
                    "stale": state.is_stale(),
                    "control_plane_connected": state.is_connected(),
                    // As the control plane counts them (`degrade: local` divides by it).
                    "live_data_planes": crate::ratelimit::live_data_planes(),
                }),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "ready": false,
                    "reason": "no configuration applied yet",
                    "control_plane_connected": state.is_connected(),
                }),
            ),
        },
        "/status/upstreams" => match state.config.load().as_ref() {
            Some(c) => (StatusCode::OK, c.upstreams_status()),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error_msg": "no configuration applied yet"}),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error_msg": "not found"}),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
