//! The data plane's Prometheus metrics, served at `/metrics` on the status listener.
//!
//! One process-wide registry (`METRICS`): a DP process runs one proxy, and plugins (breaker,
//! limiters, auth) count into it without being handed a reference. Labels are bounded by the
//! config, never by the traffic: route and service ids, status codes, plugin names — never raw
//! paths or client addresses.
//!
//! The request path pays for no lookup it can avoid: each compiled route holds a
//! [`RouteMetrics`] whose per-route series are resolved on first use and then reused, so a
//! request costs a few atomic adds.

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The guide's latency buckets (seconds), as APISIX's `default_buckets`.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub struct Metrics {
    registry: Registry,
    /// `postern_http_requests_total{route, service, code}`.
    requests: IntCounterVec,
    /// `postern_http_request_duration_seconds{route, service}`: first byte in to last byte out.
    request_duration: HistogramVec,
    /// `postern_upstream_duration_seconds{route, service}`: until the upstream's response head.
    upstream_duration: HistogramVec,
    /// `postern_bandwidth_bytes_total{route, service, direction}` (`ingress`: request bodies,
    /// `egress`: response bodies).
    bandwidth: IntCounterVec,
    /// Version of the config being served (0 before the first).
    pub config_version: IntGauge,
    /// Unix time the served config was applied.
    pub config_applied_timestamp: IntGauge,
    /// Snapshots refused (NACKed) because they did not compile.
    pub config_rejected: IntCounter,
    /// 1 while a sync stream to a control plane is open.
    pub sync_connected: IntGauge,
    /// 1 while the served config came from the disk cache, unconfirmed by a control plane.
    pub config_stale: IntGauge,
    /// Client connections open on the proxy listener.
    pub connections_open: IntGauge,
    pub connections_accepted: IntCounter,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// `postern_breaker_state{route}`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// `postern_breaker_transitions_total{route, to}`.
    pub breaker_transitions: IntCounterVec,
    /// `postern_rate_limit_rejections_total{route, plugin}`.
    pub rate_limit_rejections: IntCounterVec,
    /// `postern_rate_limit_degradations_total{plugin, mode}`: decisions taken without the shared
    /// counter store (Redis down or slow), by what was done instead.
    pub rate_limit_degradations: IntCounterVec,
    /// `postern_auth_failures_total{route, plugin, reason}`.
    pub auth_failures: IntCounterVec,
    /// `postern_upstream_node_healthy{upstream, node}`: 1 healthy, 0 not.
    pub upstream_node_healthy: IntGaugeVec,
    /// `postern_otlp_spans_total{result}`: exported, export_failed, queue_full, no_collector.
    pub otlp_spans: IntCounterVec,
    /// `proxy-cache`: `postern_cache_{hits,misses,expired,bypasses,stale,stores,evictions}_total{route}`
    /// and `postern_cache_bytes{route}`.
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_expired: IntCounterVec,
    cache_bypasses: IntCounterVec,
    cache_stale: IntCounterVec,
    cache_stores: IntCounterVec,
    cache_evictions: IntCounterVec,
    cache_bytes: IntGaugeVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            requests: counter_vec(
                &r,
                "postern_http_requests_total",
                "Requests answered, by route, service and status code",
                &["route", "service", "code"],
            ),
            request_duration: histogram_vec(
                &r,
                "postern_http_request_duration_seconds",
                "Time from the request's arrival to the last byte of the response",
                &["route", "service"],
            ),
            upstream_duration: histogram_vec(
                &r,
                "postern_upstream_duration_seconds",
                "Time from sending the request upstream to receiving the response head",
                &["route", "service"],
            ),
            bandwidth: counter_vec(
                &r,
                "postern_bandwidth_bytes_total",
                "Body bytes proxied, by direction (ingress: from clients, egress: to clients)",
                &["route", "service", "direction"],
            ),
            config_version: gauge(
                &r,
                "postern_config_version",
                "Version of the config being served",
            ),
            config_applied_timestamp: gauge(
                &r,
                "postern_config_applied_timestamp_seconds",
                "Unix time the config being served was applied",
            ),
            config_rejected: counter(
                &r,
                "postern_config_rejected_total",
                "Snapshots refused because they did not compile",
            ),
            sync_connected: gauge(
                &r,
                "postern_sync_connected",
                "1 while a sync stream to a control plane is open",
            ),
            config_stale: gauge(
                &r,
                "postern_config_stale",
                "1 while the config served came from the disk cache, unconfirmed",
            ),
            connections_open: gauge(
                &r,
                "postern_connections_open",
                "Client connections open on the proxy listener",
            ),
            connections_accepted: counter(
                &r,
                "postern_connections_accepted_total",
                "Client connections accepted on the proxy listener",
            ),
            access_log_dropped: counter(
                &r,
                "postern_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind",
            ),
            breaker_state: gauge_vec(
                &r,
                "postern_breaker_state",
                "api-breaker state by route: 0 closed, 1 open, 2 half-open",
                &["route"],
            ),
            breaker_transitions: counter_vec(
                &r,
                "postern_breaker_transitions_total",
                "api-breaker state changes, by route and new state",
                &["route", "to"],
            ),
            rate_limit_rejections: counter_vec(
                &r,
                "postern_rate_limit_rejections_total",
                "Requests rejected by a rate-limiting plugin",
                &["route", "plugin"],
            ),
            rate_limit_degradations: counter_vec(
                &r,
                "postern_rate_limit_degradations_total",
                "Rate-limit decisions taken without the shared counter store, by fallback mode",
                &["plugin", "mode"],
            ),
            auth_failures: counter_vec(
                &r,
                "postern_auth_failures_total",
                "Requests refused by an authentication plugin, by reason",
                &["route", "plugin", "reason"],
            ),
            upstream_node_healthy: gauge_vec(
                &r,
                "postern_upstream_node_healthy",
                "Health of each upstream node as this data plane sees it (1 healthy)",
                &["upstream", "node"],
            ),
            otlp_spans: counter_vec(
                &r,
                "postern_otlp_spans_total",
                "Trace spans by what became of them (exported, export_failed, queue_full, no_collector)",
                &["result"],
            ),
            cache_hits: counter_vec(
                &r,
                "postern_cache_hits_total",
                "proxy-cache: responses served from the cache",
                &["route"],
            ),
            cache_misses: counter_vec(
                &r,
                "postern_cache_misses_total",
                "proxy-cache: cacheable requests not found in the cache",
                &["route"],
            ),
            cache_expired: counter_vec(
                &r,
                "postern_cache_expired_total",
                "proxy-cache: requests whose entry had expired (fetched again)",
                &["route"],
            ),
            cache_bypasses: counter_vec(
                &r,
                "postern_cache_bypasses_total",
                "proxy-cache: requests that skipped the cache (cache_bypass)",
                &["route"],
            ),
            cache_stale: counter_vec(
                &r,
                "postern_cache_stale_total",
                "proxy-cache: expired entries answered because the upstream failed",
                &["route"],
            ),
            cache_stores: counter_vec(
                &r,
                "postern_cache_stores_total",
                "proxy-cache: responses stored",
                &["route"],
            ),
            cache_evictions: counter_vec(
                &r,
                "postern_cache_evictions_total",
                "proxy-cache: entries evicted to stay within cache_size",
                &["route"],
            ),
            cache_bytes: gauge_vec(
                &r,
                "postern_cache_bytes",
                "proxy-cache: bytes held in the route's store",
                &["route"],
            ),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric data, which registration excludes.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Status codes whose counter a route keeps at hand; others are looked up per request.
const COMMON_CODES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 413, 429, 500, 502, 503, 504,
];

/// One route's series, resolved on first use (a route that never sees traffic exports nothing).
pub struct RouteMetrics {
    route: Arc<str>,
    service: Arc<str>,
    codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
    duration: OnceLock<Histogram>,
    upstream: OnceLock<Histogram>,
    bytes_in: OnceLock<IntCounter>,
    bytes_out: OnceLock<IntCounter>,
}

impl RouteMetrics {
    pub fn new(route: Arc<str>, service: Option<&str>) -> RouteMetrics {
        RouteMetrics {
            route,
            service: Arc::from(service.unwrap_or("")),
            codes: Default::default(),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
            bytes_in: OnceLock::new(),
            bytes_out: OnceLock::new(),
        }
    }

    /// The series of requests that matched no route (404s, and 400s before routing).
    pub fn unmatched() -> Arc<RouteMetrics> {
        static UNMATCHED: LazyLock<Arc<RouteMetrics>> =
            LazyLock::new(|| Arc::new(RouteMetrics::new(Arc::from(""), None)));
        UNMATCHED.clone()
    }

    fn labels<'a>(&'a self, extra: &'a str) -> [&'a str; 3] {
        [&self.route, &self.service, extra]
    }

    /// Counts one finished request.
    pub fn finished(&self, code: u16, duration: Duration, bytes_out: u64) {
        match COMMON_CODES.iter().position(|c| *c == code) {
            Some(i) => self.codes[i]
                .get_or_init(|| METRICS.requests.with_label_values(&self.labels(itoa(code))))
                .inc(),
            None => METRICS
                .requests
                .with_label_values(&self.labels(itoa(code)))
                .inc(),
        }
        self.duration
            .get_or_init(|| {
                METRICS
                    .request_duration
                    .with_label_values(&[&*self.route, &*self.service])
            })
            .observe(duration.as_secs_f64());
        if bytes_out > 0 {
            self.bytes_out
                .get_or_init(|| METRICS.bandwidth.with_label_values(&self.labels("egress")))
                .inc_by(bytes_out);
        }
    }

    pub fn upstream_responded(&self, duration: Duration) {
        self.upstream
            .get_or_init(|| {
                METRICS
                    .upstream_duration
                    .with_label_values(&[&*self.route, &*self.service])
            })
            .observe(duration.as_secs_f64());
    }

    pub fn request_body(&self, bytes: u64) {
        if bytes > 0 {
            self.bytes_in
                .get_or_init(|| METRICS.bandwidth.with_label_values(&self.labels("ingress")))
                .inc_by(bytes);
        }
    }
}

/// One route's `proxy-cache` series, resolved when the cache is created.
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub expired: IntCounter,
    pub bypasses: IntCounter,
    pub stale: IntCounter,
    stores: IntCounter,
    evictions: IntCounter,
    bytes: IntGauge,
}

impl CacheMetrics {
    pub fn new(route: &str) -> CacheMetrics {
        let m = &*METRICS;
        CacheMetrics {
            hits: m.cache_hits.with_label_values(&[route]),
            misses: m.cache_misses.with_label_values(&[route]),
            expired: m.cache_expired.with_label_values(&[route]),
            bypasses: m.cache_bypasses.with_label_values(&[route]),
            stale: m.cache_stale.with_label_values(&[route]),
            stores: m.cache_stores.with_label_values(&[route]),
            evictions: m.cache_evictions.with_label_values(&[route]),
            bytes: m.cache_bytes.with_label_values(&[route]),
        }
    }

    /// `added` bytes stored (0: nothing stored), `removed` bytes dropped.
    pub fn stored(&self, added: u64, removed: u64) {
        if added > 0 {
            self.stores.inc();
        }
        self.bytes.add(added as i64 - removed as i64);
    }

    pub fn evicted(&self, n: u64) {
        self.evictions.inc_by(n);
    }
}

/// A status code as a label value without allocating.
fn itoa(code: u16) -> &'static str {
    static CODES: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..1000).map(|c| c.to_string()).collect());
    CODES.get(code as usize).map_or("other", |s| s.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_counts_codes_durations_and_bytes_under_its_labels() {
        let m = RouteMetrics::new(Arc::from("metrics-test-route"), Some("svc-1"));
        m.finished(200, Duration::from_millis(3), 10);
        m.finished(200, Duration::from_millis(30), 5);
        m.finished(418, Duration::from_millis(1), 0);
        m.request_body(7);
        let text = METRICS.render();
        assert!(text.contains(
            r#"postern_http_requests_total{code="200",route="metrics-test-route",service="svc-1"} 2"#
        ), "{text}");
        assert!(text.contains(
            r#"postern_http_requests_total{code="418",route="metrics-test-route",service="svc-1"} 1"#
        ));
        assert!(text.contains(
            r#"postern_http_request_duration_seconds_bucket{route="metrics-test-route",service="svc-1",le="0.005"} 2"#
        ));
        assert!(text.contains(
            r#"postern_bandwidth_bytes_total{direction="egress",route="metrics-test-route",service="svc-1"} 15"#
        ));
        assert!(text.contains(
            r#"postern_bandwidth_bytes_total{direction="ingress",route="metrics-test-route",service="svc-1"} 7"#
        ));
    }

    #[test]
    fn a_route_without_traffic_exports_nothing() {
        let _m = RouteMetrics::new(Arc::from("metrics-idle-route"), None);
        assert!(!METRICS.render().contains("metrics-idle-route"));
    }
}
