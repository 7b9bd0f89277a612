//! The data plane's Prometheus metrics, served at `/metrics` on the status listener.
//!
//! One process-wide registry (`METRICS`): a DP process runs one proxy, and plugins (breaker,
//! limiters, auth) count into it without being handed a reference. Labels are bounded by the
//! config, never by the traffic: route and service ids, status codes, plugin names — never raw
//! paths or client addresses.
//!
//! The request path pays for no lookup it can avoid: each compiled route holds its
//! [`RouteMetrics`], the route's request series (status codes, two latency histograms, bytes)
//! as plain atomics in one allocation, so a request costs a few atomic adds on a few cache
//! lines. These four families are written out by [`Metrics::render`] itself rather than kept
//! in the `prometheus` registry: a registry series costs about 1 KiB (label pairs, two
//! histogram shards, a map entry) and its own cache lines per request, which at 10,000 routes
//! was 35 MiB of a DP's memory and a cache miss per series per request. A route's series live
//! as long as a compiled config uses them: a route recompiled keeps counting on (the series is
//! found again by route and service id), a deleted route's series leave `/metrics` with it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The guide's latency buckets (seconds), as APISIX's `default_buckets`.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub struct Metrics {
    registry: Registry,
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

    /// The text exposition of every metric: the registry's, then the routes' series.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric data, which registration excludes.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut text = String::from_utf8(buf).unwrap_or_default();
        render_routes(&mut text);
        text
    }
}

/// Status codes a route counts in an atomic of its own; others go to a small locked map.
const COMMON_CODES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 413, 429, 500, 502, 503, 504,
];

/// A latency histogram as plain atomics: one count per bucket (the last: above every bound),
/// and the sum in nanoseconds. Buckets are made cumulative when written out.
#[derive(Default)]
struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// One route's request series: `postern_http_requests_total`,
/// `postern_http_request_duration_seconds`, `postern_upstream_duration_seconds` and
/// `postern_bandwidth_bytes_total`, labelled with the route and service ids.
pub struct RouteMetrics {
    route: Arc<str>,
    service: Arc<str>,
    codes: [AtomicU64; COMMON_CODES.len()],
    other_codes: Mutex<BTreeMap<u16, u64>>,
    duration: LatencyHistogram,
    upstream: LatencyHistogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// Every route's series that a compiled config still holds, by (route, service).
type SeriesMap = HashMap<(Arc<str>, Arc<str>), Weak<RouteMetrics>>;
static ROUTE_SERIES: LazyLock<Mutex<SeriesMap>> = LazyLock::new(Mutex::default);

impl RouteMetrics {
    /// The series of `route` under `service`: the ones a config already counts into, or new
    /// ones.
    pub fn shared(route: Arc<str>, service: Option<&str>) -> Arc<RouteMetrics> {
        let service: Arc<str> = Arc::from(service.unwrap_or(""));
        let mut map = ROUTE_SERIES.lock().unwrap_or_else(|p| p.into_inner());
        let key = (route, service);
        if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        // Entries of dropped series are swept when the map has doubled since the last sweep.
        static SWEPT_AT: AtomicU64 = AtomicU64::new(1024);
        if map.len() as u64 >= SWEPT_AT.load(Ordering::Relaxed) {
            map.retain(|_, w| w.strong_count() > 0);
            SWEPT_AT.store((map.len() as u64 * 2).max(1024), Ordering::Relaxed);
        }
        let series = Arc::new(RouteMetrics::new(key.0.clone(), key.1.clone()));
        map.insert(key, Arc::downgrade(&series));
        series
    }

    fn new(route: Arc<str>, service: Arc<str>) -> RouteMetrics {
        RouteMetrics {
            route,
            service,
            codes: Default::default(),
            other_codes: Mutex::default(),
            duration: LatencyHistogram::default(),
            upstream: LatencyHistogram::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    /// The series of requests that matched no route (404s, and 400s before routing).
    pub fn unmatched() -> Arc<RouteMetrics> {
        static UNMATCHED: LazyLock<Arc<RouteMetrics>> =
            LazyLock::new(|| RouteMetrics::shared(Arc::from(""), None));
        UNMATCHED.clone()
    }

    /// Counts one finished request.
    pub fn finished(&self, code: u16, duration: Duration, bytes_out: u64) {
        match COMMON_CODES.iter().position(|c| *c == code) {
            Some(i) => {
                self.codes[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let mut other = self.other_codes.lock().unwrap_or_else(|p| p.into_inner());
                *other.entry(code).or_default() += 1;
            }
        }
        self.duration.observe(duration);
        if bytes_out > 0 {
            self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        }
    }

    pub fn upstream_responded(&self, duration: Duration) {
        self.upstream.observe(duration);
    }

    pub fn request_body(&self, bytes: u64) {
        if bytes > 0 {
            self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Status codes counted so far, in code order, without zeros.
    fn code_counts(&self) -> Vec<(u16, u64)> {
        let mut counts: Vec<(u16, u64)> = COMMON_CODES
            .iter()
            .zip(&self.codes)
            .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let other = self.other_codes.lock().unwrap_or_else(|p| p.into_inner());
        counts.extend(other.iter().map(|(c, n)| (*c, *n)));
        counts.sort_unstable();
        counts
    }
}

/// Appends the routes' four families in the text format (labels in name order, as the
/// `prometheus` crate writes them). A series with nothing counted is left out.
fn render_routes(out: &mut String) {
    let mut routes: Vec<Arc<RouteMetrics>> = {
        let map = ROUTE_SERIES.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter_map(Weak::upgrade).collect()
    };
    routes.sort_by(|a, b| (&a.route, &a.service).cmp(&(&b.route, &b.service)));

    let mut family = String::new();
    for r in &routes {
        let (route, service) = (escape(&r.route), escape(&r.service));
        for (code, n) in r.code_counts() {
            let code = itoa(code);
            let _ = writeln!(
                family,
                "postern_http_requests_total{{code=\"{code}\",route=\"{route}\",service=\"{service}\"}} {n}"
            );
        }
    }
    write_family(
        out,
        "postern_http_requests_total",
        "Requests answered, by route, service and status code",
        "counter",
        &family,
    );

    for (name, help, pick) in [
        (
            "postern_http_request_duration_seconds",
            "Time from the request's arrival to the last byte of the response",
            (|r: &RouteMetrics| &r.duration) as fn(&RouteMetrics) -> &LatencyHistogram,
        ),
        (
            "postern_upstream_duration_seconds",
            "Time from sending the request upstream to receiving the response head",
            |r: &RouteMetrics| &r.upstream,
        ),
    ] {
        family.clear();
        for r in &routes {
            let h = pick(r);
            let counts: Vec<u64> = h
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let labels = format!(
                "route=\"{}\",service=\"{}\"",
                escape(&r.route),
                escape(&r.service)
            );
            let mut cumulative = 0;
            for (le, n) in LATENCY_BUCKETS.iter().zip(&counts) {
                cumulative += n;
                let _ = writeln!(family, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(family, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(family, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(family, "{name}_count{{{labels}}} {total}");
        }
        write_family(out, name, help, "histogram", &family);
    }

    family.clear();
    for r in &routes {
        let (route, service) = (escape(&r.route), escape(&r.service));
        for (direction, n) in [("egress", &r.bytes_out), ("ingress", &r.bytes_in)] {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    family,
                    "postern_bandwidth_bytes_total{{direction=\"{direction}\",route=\"{route}\",service=\"{service}\"}} {n}"
                );
            }
        }
    }
    write_family(
        out,
        "postern_bandwidth_bytes_total",
        "Body bytes proxied, by direction (ingress: from clients, egress: to clients)",
        "counter",
        &family,
    );
}

/// One family: its `# HELP` and `# TYPE` lines and its samples (nothing if it has none).
fn write_family(out: &mut String, name: &str, help: &str, kind: &str, samples: &str) {
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    out.push_str(samples);
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    std::borrow::Cow::Owned(
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
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
        let m = RouteMetrics::shared(Arc::from("metrics-test-route"), Some("svc-1"));
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
        let _m = RouteMetrics::shared(Arc::from("metrics-idle-route"), None);
        assert!(!METRICS.render().contains("metrics-idle-route"));
    }
}
