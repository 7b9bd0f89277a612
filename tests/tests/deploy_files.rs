//! deploy/ stays true: the alert rules and the Grafana dashboard name only metrics that Postern
//! exports, and the HAProxy config is valid for the HAProxy the tests run. (The alert rules
//! themselves are checked and unit-tested by promtool in scripts/test.sh.)

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `postern_…` word in `text`, without the histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("postern_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
                .count();
        let name = &text[start..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        i = end;
    }
    names
}

#[test]
fn dashboards_and_alerts_use_exported_metrics() {
    // The registries: every metric is declared by name in these two files.
    let exported = metric_names(
        &(read("data-plane/src/observability/metrics.rs") + &read("control-plane/src/metrics.rs")),
    );
    assert!(exported.contains("postern_http_requests_total"));
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/postern.json",
    ] {
        let used = metric_names(&read(file));
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics Postern does not export: {unknown:?}"
        );
    }
}

#[test]
fn haproxy_config_is_valid() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg");
    let out = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(&cfg)
        .env("POSTERN_LB_BIND", "127.0.0.1:8080")
        .env("POSTERN_DP1", "127.0.0.1:9080")
        .env("POSTERN_DP2", "127.0.0.1:9081")
        .env("POSTERN_DP1_STATUS_PORT", "9091")
        .env("POSTERN_DP2_STATUS_PORT", "9092")
        .output()
        .expect("haproxy is not installed: apt-get install -y haproxy (scripts/test.sh does it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
