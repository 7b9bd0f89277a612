//! OTLP/gRPC span export. The `opentelemetry` plugin hands finished spans to [`export`]; a
//! background task batches them (up to `BATCH` spans or `FLUSH_EVERY`) and sends each batch to
//! the collector given by `--otlp-endpoint`. The request path never waits: when the queue is
//! full or no collector is configured, spans are dropped and counted
//! (`postern_otlp_spans_total{result}`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio::sync::mpsc;

use super::metrics::METRICS;

const QUEUE: usize = 8192;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

static EXPORTER: OnceLock<mpsc::Sender<Span>> = OnceLock::new();

/// A string attribute.
pub fn attribute(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub fn int_attribute(key: impl Into<String>, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// Queues a finished span for export.
pub fn export(span: Span) {
    let result = match EXPORTER.get() {
        None => "no_collector",
        Some(tx) => match tx.try_send(span) {
            Ok(()) => return,
            Err(_) => "queue_full",
        },
    };
    METRICS.otlp_spans.with_label_values(&[result]).inc();
}

/// Starts the exporter (once per process). `endpoint` is the collector's gRPC URL,
/// `http://host:4317`.
pub fn start(endpoint: &str, service_name: &str, node_id: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint '{endpoint}': {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(EXPORT_TIMEOUT)
        .connect_lazy();
    let resource = Resource {
        attributes: vec![
            attribute("service.name", service_name),
            attribute("service.instance.id", node_id),
        ],
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    if EXPORTER.set(tx).is_err() {
        anyhow::bail!("the OTLP exporter is already running");
    }
    tokio::spawn(run(TraceServiceClient::new(channel), resource, rx));
    Ok(())
}

async fn run(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    resource: Resource,
    mut rx: mpsc::Receiver<Span>,
) {
    // Logged once per outage, not once per batch.
    let failing = AtomicBool::new(false);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        let open = loop {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(s) => {
                        batch.push(s);
                        if batch.len() >= BATCH {
                            break true;
                        }
                    }
                    None => break false,
                },
                _ = &mut deadline => break true,
            }
        };
        if !batch.is_empty() {
            let spans = std::mem::take(&mut batch);
            let n = spans.len() as u64;
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "postern".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            match client.export(request).await {
                Ok(_) => {
                    METRICS
                        .otlp_spans
                        .with_label_values(&["exported"])
                        .inc_by(n);
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("OTLP export works again");
                    }
                }
                Err(e) => {
                    METRICS
                        .otlp_spans
                        .with_label_values(&["export_failed"])
                        .inc_by(n);
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "OTLP export failed; spans are dropped until the collector answers");
                    }
                }
            }
        }
        if !open {
            return;
        }
    }
}
