//! The control plane's Prometheus metrics, served at `GET /metrics` on the Admin listener — the
//! one path there that needs no key, because it carries no configuration: counts, versions and
//! timings only. Labels are bounded: resource kinds, methods, status codes, config versions.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::sync::DataPlaneRegistry;

pub static METRICS: LazyLock<CpMetrics> = LazyLock::new(CpMetrics::new);

pub struct CpMetrics {
    registry: Registry,
    /// `postern_cp_admin_writes_total{kind, method, code}`.
    pub admin_writes: IntCounterVec,
    /// `postern_cp_snapshot_build_seconds`.
    pub snapshot_build: Histogram,
    /// `postern_cp_snapshot_version`: the version being streamed to data planes.
    pub snapshot_version: IntGauge,
    /// `postern_cp_store_errors_total{source}`: failed store calls (`admin`, `builder`).
    pub store_errors: IntCounterVec,
    /// `postern_cp_data_planes{version}`: connected data planes by the version they serve.
    data_planes: IntGaugeVec,
}

impl CpMetrics {
    fn new() -> CpMetrics {
        let r = Registry::new();
        let admin_writes = IntCounterVec::new(
            Opts::new(
                "postern_cp_admin_writes_total",
                "Admin API writes, by resource kind, method and status code",
            ),
            &["kind", "method", "code"],
        )
        .expect("valid metric");
        let snapshot_build = Histogram::with_opts(
            HistogramOpts::new(
                "postern_cp_snapshot_build_seconds",
                "Time to validate and encode a snapshot",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )
        .expect("valid metric");
        let snapshot_version = IntGauge::new(
            "postern_cp_snapshot_version",
            "Version of the snapshot served to data planes",
        )
        .expect("valid metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "postern_cp_store_errors_total",
                "Failed config store calls, by caller",
            ),
            &["source"],
        )
        .expect("valid metric");
        let data_planes = IntGaugeVec::new(
            Opts::new(
                "postern_cp_data_planes",
                "Connected data planes, by the config version they serve",
            ),
            &["version"],
        )
        .expect("valid metric");
        for m in [
            Box::new(admin_writes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(snapshot_build.clone()),
            Box::new(snapshot_version.clone()),
            Box::new(store_errors.clone()),
            Box::new(data_planes.clone()),
        ] {
            r.register(m).expect("unique metric");
        }
        CpMetrics {
            registry: r,
            admin_writes,
            snapshot_build,
            snapshot_version,
            store_errors,
            data_planes,
        }
    }

    /// The text exposition, with the data-plane gauges read from the registry now.
    pub fn render(&self, registry: &DataPlaneRegistry) -> String {
        self.data_planes.reset();
        for dp in registry.list().iter().filter(|d| d.connected) {
            self.data_planes
                .with_label_values(&[dp.applied_version.to_string()])
                .inc();
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
