//! The guide's `opentelemetry` global rule through a real data plane, exporting to an OTLP/gRPC
//! receiver run by the test: W3C context reaches the upstream re-parented on the gateway's span,
//! the sampler follows the caller or the ratio, and header-prefix attributes are recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use postern_tests::*;
use serde_json::json;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_receiver() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, receiver)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string_attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

#[tokio::test]
async fn guide_opentelemetry_global_rule_exports_spans_and_propagates_context() {
    let dir = tempfile::tempdir().unwrap();
    let (otlp, receiver) = start_receiver().await;
    let cp = ControlPlane::start(dir.path()).await;
    let endpoint = format!("http://{otlp}");
    let dp = DataPlane::start_with(
        dir.path(),
        "otel-dp",
        &cp.sync_url(),
        &["--otlp-endpoint", &endpoint, "--otlp-service-name", "edge"],
    )
    .await;
    let node = upstream("ok").await;
    let admin = cp.client();
    // The guide's global rule, as written.
    admin
        .put_ok(
            "/admin/global_rules/1",
            json!({"plugins": {
                "prometheus": {"prefer_name": true},
                "opentelemetry": {
                    "sampler": {"name": "parent_based_traceidratio", "options": {"fraction": 0.1}},
                    "additional_attributes": ["service.version"],
                    "additional_header_prefix_attributes": ["X-Custom-"]
                }
            }}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/orders",
            json!({"uri": "/orders/*", "upstream": {"nodes": {node.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp.status, rev).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/orders/1", dp.proxy);

    // A sampled caller: its trace continues through the gateway's span to the upstream.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = http
        .get(&url)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-custom-team", "payments")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = resp.headers()["x-seen-traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let span = wait_for("the sampled span", Duration::from_secs(5), || {
        let found = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|(_, s)| hex(&s.trace_id) == trace)
            .cloned();
        async move { found }
    })
    .await;
    let (service, span) = span;
    assert_eq!(service, "edge");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(seen, format!("00-{trace}-{}-01", hex(&span.span_id)));
    assert_eq!(
        string_attr(&span, "http.request.header.x-custom-team").as_deref(),
        Some("payments")
    );
    assert_eq!(
        string_attr(&span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(string_attr(&span, "url.path").as_deref(), Some("/orders/1"));
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);

    // An unsampled caller: context still reaches the upstream, nothing is recorded.
    let quiet = "0af7651916cd43dd8448eb211c80319c";
    let resp = http
        .get(&url)
        .header("traceparent", format!("00-{quiet}-b7ad6b7169203331-00"))
        .send()
        .await
        .unwrap();
    let seen = resp.headers()["x-seen-traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        seen.starts_with(&format!("00-{quiet}-")) && seen.ends_with("-00"),
        "{seen}"
    );

    // Traces that start here: about the configured 10 %.
    for _ in 0..400 {
        let resp = http.get(&url).send().await.unwrap();
        let seen = resp.headers()["x-seen-traceparent"].to_str().unwrap();
        assert_eq!(seen.len(), 55, "{seen}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = receiver.spans.lock().unwrap().clone();
    assert!(!spans.iter().any(|(_, s)| hex(&s.trace_id) == quiet));
    let rooted = spans
        .iter()
        .filter(|(_, s)| s.parent_span_id.is_empty())
        .count();
    println!("root traces sampled: {rooted} of 400 at fraction 0.1");
    assert!((10..=80).contains(&rooted), "{rooted} of 400 sampled");
}
