//! HTTP/2 through the data plane: a gRPC client (tonic) calls a tonic server through the DP over
//! h2c on both sides, with status and message carried in trailers; and a plain HTTP/2 client
//! (prior knowledge) reaches an HTTP/1.1 upstream.

use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use postern_tests::*;
use serde_json::json;

/// Accepts exports with one resource-spans entry; refuses others with a status in trailers.
struct Service;

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let te = request
            .metadata()
            .get("te")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let n = request.into_inner().resource_spans.len();
        if n != 1 {
            return Err(tonic::Status::invalid_argument(format!(
                "want one resource, got {n}"
            )));
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 0,
                // Echoes what the upstream saw, for the test to check.
                error_message: format!("te={te}"),
            }),
        }))
    }
}

async fn grpc_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn grpc_calls_pass_through_with_trailers() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    let node = grpc_upstream().await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/otlp",
            json!({
                "uri": "/opentelemetry.proto.collector.trace.v1.TraceService/*",
                "upstream": {"scheme": "grpc", "nodes": {node.to_string(): 1}}
            }),
        )
        .await;
    wait_applied(status, rev).await;

    let mut client = TraceServiceClient::connect(format!("http://{proxy}"))
        .await
        .expect("h2c to the data plane");
    for _ in 0..3 {
        let ok = client
            .export(ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans::default()],
            })
            .await
            .expect("a successful call through the gateway");
        let echoed = ok.into_inner().partial_success.unwrap().error_message;
        assert_eq!(
            echoed, "te=trailers",
            "TE: trailers must reach a gRPC upstream"
        );
    }
    // An error travels in the trailers (grpc-status, grpc-message).
    let err = client
        .export(ExportTraceServiceRequest {
            resource_spans: vec![],
        })
        .await
        .expect_err("the upstream refuses");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "want one resource, got 0");

    // Counted per route like any request: three successes and the refusal (HTTP 200 with
    // grpc-status in the trailers, as gRPC does). A call is counted when its response body is
    // dropped, which may be just after the client has read the trailers: scraped until then.
    let counted = r#"postern_http_requests_total{code="200",route="otlp",service=""} 4"#;
    wait_for(counted, std::time::Duration::from_secs(5), || async {
        let m = reqwest::get(format!("http://{status}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.contains(counted).then_some(())
    })
    .await;
}

#[tokio::test]
async fn http2_prior_knowledge_clients_reach_http1_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    let node = upstream("over h2").await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/web",
            json!({"uri": "/web/*", "host": "api.example.com",
                   "upstream": {"nodes": {node.to_string(): 1}}}),
        )
        .await;
    wait_applied(status, rev).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // The host comes from :authority, as HTTP/2 has no Host header.
    let resp = h2
        .get(format!("http://{proxy}/web/page"))
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-host"], "api.example.com");
    assert_eq!(resp.text().await.unwrap(), "over h2");
    // HTTP/1.1 clients on the same port are unaffected.
    let (code, body) = get_via(proxy, "/web/page", Some("api.example.com"))
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "over h2"));
}
