//! Highly available control planes: two CPs on one Postgres or one etcd, each with its own data
//! plane; a write on either CP reaches the DP of the other. And every acknowledged write
//! survives a `kill -9` of the CP in the middle of a burst of writes, on every store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_tests::*;
use serde_json::json;
use tokio::sync::Mutex;

/// CP A and CP B share `store`; DP 1 follows A, DP 2 follows B. Writes alternate between the
/// CPs; each must be served by both DPs. Returns the propagation times.
async fn two_cps_two_dps(dir: &std::path::Path, store: &str) -> Vec<Duration> {
    let cp_a = ControlPlane::start_with(&dir.join("a"), false, &["--store", store]).await;
    let cp_b = ControlPlane::start_with(&dir.join("b"), false, &["--store", store]).await;
    let dp1 = DataPlane::start(dir, "dp-1", &cp_a.sync_url()).await;
    let dp2 = DataPlane::start(dir, "dp-2", &cp_b.sync_url()).await;
    let backends = [upstream("one").await, upstream("two").await];

    let mut figures = Vec::new();
    for round in 0..6 {
        let (cp, name) = if round % 2 == 0 {
            (&cp_a, "A")
        } else {
            (&cp_b, "B")
        };
        let target = round % 2;
        let body = ["one", "two"][target];
        let started = Instant::now();
        cp.client()
            .put_ok(
                "/admin/routes/r1",
                json!({"uri": "/x", "upstream": {"nodes": {backends[target].to_string(): 1}}}),
            )
            .await;
        for dp in [&dp1, &dp2] {
            wait_for(
                &format!("{} to serve the write made on CP {name}", dp.node_id),
                Duration::from_secs(5),
                || async {
                    let (_, b) = get_via(dp.proxy, "/x", None).await.ok()?;
                    (b == body).then_some(())
                },
            )
            .await;
        }
        figures.push(started.elapsed());
    }
    // Each CP's registry shows its own DP with the current version.
    for (cp, node) in [(&cp_a, "dp-1"), (&cp_b, "dp-2")] {
        let (_, v) = cp.client().get("/admin/data-planes").await.unwrap();
        assert_eq!(v["list"][0]["node_id"], node);
        assert_eq!(v["applied_current"], 1, "{v}");
    }
    figures
}

#[tokio::test]
async fn two_control_planes_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgDatabase::create().await;
    let figures = two_cps_two_dps(dir.path(), &db.url).await;
    let worst = figures.iter().max().unwrap();
    println!(
        "postgres: write on one CP → served by the DPs of both CPs: {figures:?} (worst {worst:?})"
    );
    assert!(*worst < Duration::from_secs(1), "{worst:?}");
}

#[tokio::test]
async fn two_control_planes_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path(), "etcd").await;
    let figures = two_cps_two_dps(dir.path(), &etcd.store_url("ha")).await;
    let worst = figures.iter().max().unwrap();
    println!(
        "etcd: write on one CP → served by the DPs of both CPs: {figures:?} (worst {worst:?})"
    );
    assert!(*worst < Duration::from_secs(1), "{worst:?}");
}

/// Writers PUT distinct upstreams as fast as they can; the CP is killed with SIGKILL midway.
/// Every PUT that got a 2xx must be there, with its content, after the restart.
async fn acknowledged_writes_survive_kill9(dir: &std::path::Path, store: Option<&str>) {
    let extra: Vec<&str> = store.map(|s| vec!["--store", s]).unwrap_or_default();
    let mut cp = ControlPlane::start_with(dir, false, &extra).await;
    let admin = cp.client();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let admin = admin.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{w}-{i}");
                let body = json!({"nodes": {"127.0.0.1:80": 1}, "labels": {"seq": i.to_string()}})
                    .to_string();
                match admin
                    .request(
                        reqwest::Method::PUT,
                        &format!("/admin/upstreams/{id}"),
                        Some(&body),
                    )
                    .await
                {
                    Ok((201, v)) => acked
                        .lock()
                        .await
                        .push((id, v["revision"].as_u64().unwrap())),
                    // The CP is gone: this writer is done.
                    _ => return,
                }
            }
        }));
    }
    wait_for(
        "40 acknowledged writes",
        Duration::from_secs(20),
        || async { (acked.lock().await.len() >= 40).then_some(()) },
    )
    .await;
    cp.kill();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    cp.restart().await;
    let admin = cp.client();
    for (id, revision) in &acked {
        let (status, v) = admin.get(&format!("/admin/upstreams/{id}")).await.unwrap();
        assert_eq!(
            status, 200,
            "acknowledged write {id} (revision {revision}) was lost"
        );
        assert_eq!(v["mod_revision"].as_u64(), Some(*revision), "{id}");
    }
    println!(
        "{} acknowledged writes, all present after kill -9",
        acked.len()
    );
}

#[tokio::test]
async fn kill9_loses_no_acknowledged_write_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    acknowledged_writes_survive_kill9(dir.path(), None).await;
}

#[tokio::test]
async fn kill9_loses_no_acknowledged_write_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgDatabase::create().await;
    acknowledged_writes_survive_kill9(dir.path(), Some(&db.url)).await;
}

#[tokio::test]
async fn kill9_loses_no_acknowledged_write_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path(), "etcd").await;
    acknowledged_writes_survive_kill9(dir.path(), Some(&etcd.store_url("k9"))).await;
}
