//! Health of an upstream's nodes (`upstream.checks`), shared by the balancer (unhealthy nodes get
//! no traffic), the proxy (passive checks: every real response or failure is reported) and one
//! active checker task per runtime upstream (probes on a timer).
//!
//! Counting follows lua-resty-healthcheck, which APISIX uses: a success resets the failure
//! counters and counts towards `healthy.successes`; a failure of one kind (HTTP status, TCP
//! connect, timeout) resets the success counter and counts towards that kind's threshold; a
//! threshold of 0 disables that counter. Every node starts healthy.
//!
//! When every node is unhealthy the upstream **fails open** by default: requests are spread over
//! all nodes as if none were checked (APISIX does the same), since refusing everything would turn
//! a checker mistake (wrong `http_path`) into a full outage. `checks.on_all_unhealthy: reject`
//! (a Postern extension) answers 503 instead.
//!
//! The active checker stops when the runtime upstream is dropped (a `CancellationToken` drop
//! guard): an upstream that a new snapshot reuses keeps its checker and its health; a changed one
//! gets a new checker and starts healthy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use postern_proto::model::checks::{
    ActiveCheck, AllUnhealthy, CheckType, HealthChecks, PassiveCheck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::proxy::upstream_tls::UpstreamTlsSettings;

/// What one request or probe to a node came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// A `tcp` probe connected.
    Connected,
    /// Connection refused or reset, or an answer that is not HTTP.
    TcpFailure,
    Timeout,
}

#[derive(Debug, Default)]
struct NodeHealth {
    unhealthy: AtomicBool,
    successes: AtomicU32,
    http_failures: AtomicU32,
    tcp_failures: AtomicU32,
    timeouts: AtomicU32,
}

/// Thresholds of one kind of check (active or passive).
#[derive(Debug, Clone)]
struct Rules {
    healthy_statuses: Vec<u16>,
    successes: u32,
    unhealthy_statuses: Vec<u16>,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
}

impl Rules {
    fn active(a: &ActiveCheck) -> Rules {
        Rules {
            healthy_statuses: a.healthy.http_statuses.clone(),
            successes: a.healthy.successes,
            unhealthy_statuses: a.unhealthy.http_statuses.clone(),
            http_failures: a.unhealthy.http_failures,
            tcp_failures: a.unhealthy.tcp_failures,
            timeouts: a.unhealthy.timeouts,
        }
    }

    fn passive(p: &PassiveCheck) -> Rules {
        Rules {
            healthy_statuses: p.healthy.http_statuses.clone(),
            successes: p.healthy.successes,
            unhealthy_statuses: p.unhealthy.http_statuses.clone(),
            http_failures: p.unhealthy.http_failures,
            tcp_failures: p.unhealthy.tcp_failures,
            timeouts: p.unhealthy.timeouts,
        }
    }
}

/// Health checks since the process started, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct HealthMetrics {
    pub marked_unhealthy: std::sync::atomic::AtomicU64,
    pub marked_healthy: std::sync::atomic::AtomicU64,
    pub probes: std::sync::atomic::AtomicU64,
}

pub static HEALTH_METRICS: HealthMetrics = HealthMetrics {
    marked_unhealthy: std::sync::atomic::AtomicU64::new(0),
    marked_healthy: std::sync::atomic::AtomicU64::new(0),
    probes: std::sync::atomic::AtomicU64::new(0),
};

/// The health of one upstream's nodes.
#[derive(Debug)]
pub struct Health {
    nodes: Box<[NodeHealth]>,
    /// Node addresses, for logs.
    names: Box<[String]>,
    /// `postern_upstream_node_healthy{upstream, node}` per node (only when checks are on).
    gauges: Box<[prometheus::IntGauge]>,
    active: Option<Rules>,
    passive: Option<Rules>,
    /// Every node unhealthy: spread over all of them (`true`) or answer 503.
    fail_open: bool,
}

impl Health {
    pub fn new(checks: Option<&HealthChecks>, names: Vec<String>, upstream: &str) -> Health {
        let gauges = if checks.is_some() {
            names
                .iter()
                .map(|n| {
                    let g = crate::observability::metrics::METRICS
                        .upstream_node_healthy
                        .with_label_values(&[upstream, n.as_str()]);
                    g.set(1);
                    g
                })
                .collect()
        } else {
            Box::default()
        };
        Health {
            gauges,
            nodes: names.iter().map(|_| NodeHealth::default()).collect(),
            names: names.into_boxed_slice(),
            active: checks.and_then(|c| c.active.as_ref()).map(Rules::active),
            passive: checks.and_then(|c| c.passive.as_ref()).map(Rules::passive),
            fail_open: checks.is_none_or(|c| c.on_all_unhealthy == AllUnhealthy::FailOpen),
        }
    }

    pub fn is_healthy(&self, node: usize) -> bool {
        self.nodes
            .get(node)
            .is_none_or(|n| !n.unhealthy.load(Ordering::Relaxed))
    }

    pub fn any_healthy(&self) -> bool {
        (0..self.nodes.len()).any(|i| self.is_healthy(i))
    }

    /// Whether requests go to all nodes when none is healthy (else they get 503).
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    pub fn checked(&self) -> bool {
        self.active.is_some() || self.passive.is_some()
    }

    /// A real response (or failure) from `node`.
    pub fn report_passive(&self, node: usize, outcome: Outcome) {
        if let Some(rules) = &self.passive {
            self.report(node, outcome, rules, "passive");
        }
    }

    fn report_active(&self, node: usize, outcome: Outcome) {
        if let Some(rules) = &self.active {
            self.report(node, outcome, rules, "active");
        }
    }

    fn report(&self, node: usize, outcome: Outcome, rules: &Rules, how: &'static str) {
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        let bump = |c: &AtomicU32| c.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let success = match outcome {
            Outcome::Connected => true,
            Outcome::Status(s) => rules.healthy_statuses.contains(&s),
            _ => false,
        };
        let (counter, threshold) = match outcome {
            _ if success => {
                n.http_failures.store(0, Ordering::Relaxed);
                n.tcp_failures.store(0, Ordering::Relaxed);
                n.timeouts.store(0, Ordering::Relaxed);
                let count = bump(&n.successes);
                if rules.successes > 0
                    && count >= rules.successes
                    && n.unhealthy.swap(false, Ordering::Relaxed)
                {
                    HEALTH_METRICS
                        .marked_healthy
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(g) = self.gauges.get(node) {
                        g.set(1);
                    }
                    tracing::info!(node = %self.names[node], check = how, "upstream node healthy again");
                }
                return;
            }
            Outcome::Status(s) if rules.unhealthy_statuses.contains(&s) => {
                (&n.http_failures, rules.http_failures)
            }
            Outcome::Status(_) | Outcome::Connected => return,
            Outcome::TcpFailure => (&n.tcp_failures, rules.tcp_failures),
            Outcome::Timeout => (&n.timeouts, rules.timeouts),
        };
        n.successes.store(0, Ordering::Relaxed);
        let count = bump(counter);
        if threshold > 0 && count >= threshold && !n.unhealthy.swap(true, Ordering::Relaxed) {
            HEALTH_METRICS
                .marked_unhealthy
                .fetch_add(1, Ordering::Relaxed);
            if let Some(g) = self.gauges.get(node) {
                g.set(0);
            }
            tracing::warn!(node = %self.names[node], check = how, ?outcome, "upstream node unhealthy");
        }
    }

    /// Per node: address and health, for the status listener.
    pub fn snapshot(&self) -> impl Iterator<Item = (&str, bool)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), self.is_healthy(i)))
    }
}

/// Where and how to probe one node.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub connect: String,
    /// `Host` header of HTTP probes.
    pub host: String,
}

/// Starts the active checker of `health` when `checks.active` is set and a runtime is
/// available; the checker stops when the returned guard is dropped.
/// `tls`: how `https` probes secure their connection.
pub fn spawn_checker(
    health: &Arc<Health>,
    checks: Option<&HealthChecks>,
    targets: Vec<Target>,
    tls: Option<UpstreamTlsSettings>,
) -> Option<DropGuard> {
    let active = checks?.active.clone()?;
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let token = CancellationToken::new();
    let stop = token.clone();
    let health = health.clone();
    handle.spawn(async move {
        let probes = targets.into_iter().enumerate().map(|(i, target)| {
            let health = health.clone();
            let active = active.clone();
            let tls = tls.clone();
            async move {
                // Each node is probed every `healthy.interval` while healthy and every
                // `unhealthy.interval` while unhealthy, looked up every second, so a node that
                // passive checks just marked down is probed on the unhealthy schedule at once.
                let mut last_probe: Option<tokio::time::Instant> = None;
                loop {
                    let secs = if health.is_healthy(i) {
                        active.healthy.interval
                    } else {
                        active.unhealthy.interval
                    };
                    let due = last_probe
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(u64::from(secs)));
                    if due {
                        last_probe = Some(tokio::time::Instant::now());
                        let outcome = probe(&active, &target, tls.as_ref()).await;
                        HEALTH_METRICS.probes.fetch_add(1, Ordering::Relaxed);
                        health.report_active(i, outcome);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        tokio::select! {
            _ = futures_util::future::join_all(probes) => {}
            _ = stop.cancelled() => {}
        }
    });
    Some(token.drop_guard())
}

/// One probe: TCP connect, then for `http` a `GET http_path` whose status is judged; `https`
/// does the same after a TLS handshake (a failed handshake counts as a TCP failure).
async fn probe(check: &ActiveCheck, target: &Target, tls: Option<&UpstreamTlsSettings>) -> Outcome {
    let timeout = Duration::from_secs_f64(check.timeout);
    let attempt = async {
        let Ok(stream) = TcpStream::connect(target.connect.as_str()).await else {
            return Outcome::TcpFailure;
        };
        let host = check.host.as_deref().unwrap_or(&target.host);
        match (check.check_type, tls) {
            (CheckType::Tcp, _) => Outcome::Connected,
            (CheckType::Https, Some(tls)) => {
                let name_host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                let Ok(name) = tls.name_for(name_host) else {
                    return Outcome::TcpFailure;
                };
                match tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(name, stream)
                    .await
                {
                    Ok(stream) => http_status(check, host, stream).await,
                    Err(_) => Outcome::TcpFailure,
                }
            }
            // No TLS settings for an https check cannot be built (see compile); probe as http.
            _ => http_status(check, host, stream).await,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Outcome::Timeout)
}

/// `GET http_path` on `stream`, judged by the status line.
async fn http_status<S>(check: &ActiveCheck, host: &str, mut stream: S) -> Outcome
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    {
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: postern-healthcheck\r\nConnection: close\r\n",
            check.http_path
        );
        for h in &check.req_headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        if stream.write_all(req.as_bytes()).await.is_err() {
            return Outcome::TcpFailure;
        }
        // Only the status line is needed: "HTTP/1.1 200 OK".
        let mut buf = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => return Outcome::TcpFailure,
                Ok(n) => len += n,
            }
        }
        let line = &buf[..len];
        match (
            line.starts_with(b"HTTP/1."),
            std::str::from_utf8(&line[9..12]),
        ) {
            (true, Ok(code)) => code
                .parse()
                .map(Outcome::Status)
                .unwrap_or(Outcome::TcpFailure),
            _ => Outcome::TcpFailure,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn health(checks: serde_json::Value) -> Health {
        let c: HealthChecks = serde_json::from_value(checks).unwrap();
        Health::new(Some(&c), vec!["a:1".into(), "b:1".into()], "upstreams/test")
    }

    #[test]
    fn passive_counts_consecutive_outcomes() {
        // The guide's passive block.
        let h = health(json!({
            "active": {"http_path": "/health"},
            "passive": {
                "healthy": {"http_statuses": [200, 201], "successes": 3},
                "unhealthy": {"http_statuses": [500, 502, 503], "http_failures": 5, "tcp_failures": 2}
            }
        }));
        // (outcome, healthy afterwards)
        let steps = [
            (Outcome::Status(500), true),
            (Outcome::Status(500), true),
            (Outcome::Status(404), true), // neither list: changes nothing
            (Outcome::Status(503), true),
            (Outcome::Status(200), true), // a success resets the failures
            (Outcome::Status(500), true),
            (Outcome::Status(500), true),
            (Outcome::Status(500), true),
            (Outcome::Status(500), true),
            (Outcome::Status(502), false), // fifth in a row
            (Outcome::Status(200), false),
            (Outcome::Status(200), false),
            (Outcome::Status(201), true), // third success in a row
            (Outcome::TcpFailure, true),
            (Outcome::TcpFailure, false), // tcp_failures: 2
        ];
        for (i, (outcome, healthy)) in steps.into_iter().enumerate() {
            h.report_passive(0, outcome);
            assert_eq!(h.is_healthy(0), healthy, "step {i}: {outcome:?}");
            assert!(h.is_healthy(1), "the other node is untouched");
        }
        assert!(h.any_healthy());
    }

    #[test]
    fn active_defaults_and_disabled_passive() {
        let h = health(json!({"active": {}}));
        // Active defaults: 3 timeouts, then 2 successes (200 or 302).
        for _ in 0..2 {
            h.report_active(1, Outcome::Timeout);
        }
        assert!(h.is_healthy(1));
        h.report_active(1, Outcome::Timeout);
        assert!(!h.is_healthy(1));
        h.report_active(1, Outcome::Status(302));
        assert!(!h.is_healthy(1));
        h.report_active(1, Outcome::Status(200));
        assert!(h.is_healthy(1));
        // No passive block: real responses change nothing.
        for _ in 0..20 {
            h.report_passive(0, Outcome::Status(500));
        }
        assert!(h.is_healthy(0));
    }

    async fn server(answer: &'static str) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn probes_judge_status_connect_and_time() {
        let ok = server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let bad = server("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let http: ActiveCheck =
            serde_json::from_value(json!({"http_path": "/health", "timeout": 0.3})).unwrap();
        let tcp: ActiveCheck = serde_json::from_value(json!({"type": "tcp"})).unwrap();
        let t = |a: std::net::SocketAddr| Target {
            connect: a.to_string(),
            host: a.to_string(),
        };
        assert_eq!(probe(&http, &t(ok), None).await, Outcome::Status(200));
        assert_eq!(probe(&http, &t(bad), None).await, Outcome::Status(503));
        assert_eq!(probe(&http, &t(closed), None).await, Outcome::TcpFailure);
        assert_eq!(
            probe(&http, &t(silent.local_addr().unwrap()), None).await,
            Outcome::Timeout
        );
        assert_eq!(
            probe(&tcp, &t(silent.local_addr().unwrap()), None).await,
            Outcome::Connected
        );
    }
}
