//! The access log: one JSON object a line per request, to stdout or a file.
//!
//! The request path only fills a record and hands it to a bounded channel (`try_send`, never a
//! wait); a writer task formats and writes. When the writer falls behind, lines are dropped and
//! counted (`postern_access_log_dropped_total`) rather than slowing traffic down. Query strings
//! are never logged: tokens and API keys travel there (`?jwt=`, `?apikey=`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::Authority;
use http::{HeaderValue, Method};
use serde_json::{Map, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::metrics::METRICS;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 64 * 1024;

/// Where lines go.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

/// The fields a line may carry, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Time,
    Client,
    Method,
    Host,
    Path,
    Protocol,
    Status,
    Route,
    Upstream,
    UpstreamMs,
    DurationMs,
    BytesOut,
    RequestId,
    UserAgent,
}

impl Field {
    pub const ALL: [Field; 14] = [
        Field::Time,
        Field::Client,
        Field::Method,
        Field::Host,
        Field::Path,
        Field::Protocol,
        Field::Status,
        Field::Route,
        Field::Upstream,
        Field::UpstreamMs,
        Field::DurationMs,
        Field::BytesOut,
        Field::RequestId,
        Field::UserAgent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Time => "time",
            Field::Client => "client",
            Field::Method => "method",
            Field::Host => "host",
            Field::Path => "path",
            Field::Protocol => "protocol",
            Field::Status => "status",
            Field::Route => "route",
            Field::Upstream => "upstream",
            Field::UpstreamMs => "upstream_ms",
            Field::DurationMs => "duration_ms",
            Field::BytesOut => "bytes_out",
            Field::RequestId => "request_id",
            Field::UserAgent => "user_agent",
        }
    }

    /// A comma-separated list of field names (`time,status,route`).
    pub fn parse_list(list: &str) -> Result<Vec<Field>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                Field::ALL
                    .into_iter()
                    .find(|f| f.name() == name)
                    .ok_or_else(|| {
                        let known: Vec<_> = Field::ALL.iter().map(|f| f.name()).collect();
                        format!("unknown field '{name}' (known: {})", known.join(", "))
                    })
            })
            .collect()
    }
}

/// What is known of one request when its response is done.
pub struct Record {
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: Method,
    pub host: Option<HeaderValue>,
    /// The path as the client sent it, without the query.
    pub path: String,
    pub protocol: http::Version,
    pub status: u16,
    /// `None` when no route matched.
    pub route: Option<Arc<str>>,
    pub upstream: Option<Authority>,
    pub upstream_time: Option<Duration>,
    pub duration: Duration,
    pub bytes_out: u64,
    pub request_id: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

/// The request path's handle on the log.
pub struct AccessLog {
    tx: mpsc::Sender<Box<Record>>,
}

impl AccessLog {
    /// Opens the target and starts the writer task (which ends when every handle is dropped).
    pub async fn start(target: Target, fields: Vec<Field>) -> std::io::Result<Arc<AccessLog>> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = match &target {
            Target::Stdout => Box::new(tokio::io::stdout()),
            Target::File(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?,
            ),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, out, fields));
        Ok(Arc::new(AccessLog { tx }))
    }

    pub fn log(&self, record: Box<Record>) {
        if self.tx.try_send(record).is_err() {
            METRICS.access_log_dropped.inc();
        }
    }
}

async fn write_lines(
    mut rx: mpsc::Receiver<Box<Record>>,
    out: Box<dyn AsyncWrite + Send + Unpin>,
    fields: Vec<Field>,
) {
    let mut out = tokio::io::BufWriter::new(out);
    let mut line = Vec::with_capacity(512);
    while let Some(record) = rx.recv().await {
        line.clear();
        // Serialising a map of plain values cannot fail.
        let _ = serde_json::to_writer(&mut line, &to_json(&record, &fields));
        line.push(b'\n');
        if let Err(e) = out.write_all(&line).await {
            tracing::error!(error = %e, "access log: write failed; lines are being lost");
        }
        // Flush once the queue is drained, not per line.
        if rx.is_empty() {
            let _ = out.flush().await;
        }
    }
    let _ = out.flush().await;
}

fn text(v: &Option<HeaderValue>) -> Value {
    v.as_ref().map_or(Value::Null, |v| {
        String::from_utf8_lossy(v.as_bytes()).into()
    })
}

fn millis(d: Duration) -> Value {
    // Three decimals: microsecond resolution in milliseconds.
    Value::from((d.as_secs_f64() * 1_000_000.0).round() / 1000.0)
}

pub fn to_json(r: &Record, fields: &[Field]) -> Map<String, Value> {
    let mut m = Map::new();
    for f in fields {
        let v = match f {
            Field::Time => humantime::format_rfc3339_millis(r.time).to_string().into(),
            Field::Client => r.client.to_string().into(),
            Field::Method => r.method.as_str().into(),
            Field::Host => text(&r.host),
            Field::Path => r.path.clone().into(),
            Field::Protocol => format!("{:?}", r.protocol).into(),
            Field::Status => r.status.into(),
            Field::Route => r.route.as_deref().map_or(Value::Null, Value::from),
            Field::Upstream => r
                .upstream
                .as_ref()
                .map_or(Value::Null, |a| a.as_str().into()),
            Field::UpstreamMs => r.upstream_time.map_or(Value::Null, millis),
            Field::DurationMs => millis(r.duration),
            Field::BytesOut => r.bytes_out.into(),
            Field::RequestId => text(&r.request_id),
            Field::UserAgent => text(&r.user_agent),
        };
        m.insert(f.name().to_string(), v);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: "10.1.2.3".parse().unwrap(),
            method: Method::POST,
            host: Some(HeaderValue::from_static("api.example.com")),
            path: "/api/v1/orders".into(),
            protocol: http::Version::HTTP_11,
            status: 201,
            route: Some(Arc::from("orders")),
            upstream: Some("127.0.0.1:8080".parse().unwrap()),
            upstream_time: Some(Duration::from_micros(1500)),
            duration: Duration::from_micros(2250),
            bytes_out: 42,
            request_id: None,
            user_agent: Some(HeaderValue::from_static("curl/8")),
        }
    }

    #[test]
    fn every_field_renders() {
        let line = serde_json::to_string(&to_json(&record(), &Field::ALL)).unwrap();
        assert_eq!(
            line,
            r#"{"time":"2023-11-14T22:13:20.123Z","client":"10.1.2.3","method":"POST","host":"api.example.com","path":"/api/v1/orders","protocol":"HTTP/1.1","status":201,"route":"orders","upstream":"127.0.0.1:8080","upstream_ms":1.5,"duration_ms":2.25,"bytes_out":42,"request_id":null,"user_agent":"curl/8"}"#
        );
    }

    #[test]
    fn fields_are_chosen_and_ordered_by_the_list() {
        let fields = Field::parse_list("status, route").unwrap();
        let line = serde_json::to_string(&to_json(&record(), &fields)).unwrap();
        assert_eq!(line, r#"{"status":201,"route":"orders"}"#);
        assert!(
            Field::parse_list("status,query")
                .unwrap_err()
                .contains("query")
        );
    }

    #[tokio::test]
    async fn lines_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(
            Target::File(path.clone()),
            Field::parse_list("status").unwrap(),
        )
        .await
        .unwrap();
        log.log(Box::new(record()));
        log.log(Box::new(record()));
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(text, "{\"status\":201}\n{\"status\":201}\n");
    }
}
