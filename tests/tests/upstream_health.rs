//! Node health aggregated on the control plane: each data plane reports what its own checks
//! see over the sync stream, and `GET /admin/upstreams/<id>/health` puts the reports together.

use std::time::{Duration, Instant};

use postern_tests::*;
use serde_json::{Value, json};

#[tokio::test]
async fn control_plane_aggregates_node_health_from_every_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream("up").await;
    // Nothing listens here: probes fail.
    let down = free_addr();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let rev = admin
        .put_ok(
            "/admin/upstreams/u",
            json!({"nodes": {up.to_string(): 1, down.to_string(): 1},
                   "checks": {"active": {"type": "http", "http_path": "/",
                       "healthy": {"interval": 1, "successes": 1},
                       "unhealthy": {"interval": 1, "tcp_failures": 1}}}}),
        )
        .await;
    // Without checks, nothing is reported: `checked` is false.
    admin
        .put_ok(
            "/admin/upstreams/plain",
            json!({"nodes": {up.to_string(): 1}}),
        )
        .await;
    let dp1 = DataPlane::start(dir.path(), "dp-a", &cp.sync_url()).await;
    let dp2 = DataPlane::start(dir.path(), "dp-b", &cp.sync_url()).await;
    wait_applied(dp1.status, rev).await;
    wait_applied(dp2.status, rev).await;

    let started = Instant::now();
    let health: Value = wait_for(
        "both data planes to report the down node",
        Duration::from_secs(15),
        || async {
            let (status, v) = admin.get("/admin/upstreams/u/health").await.ok()?;
            assert_eq!(status, 200, "{v}");
            (v["reporting_data_planes"] == 2
                && v["nodes"]
                    .as_array()?
                    .iter()
                    .any(|n| n["address"] == down.to_string() && n["unhealthy_on"] == 2))
            .then_some(v)
        },
    )
    .await;
    println!("aggregated health after {:?}: {health}", started.elapsed());
    assert_eq!(health["checked"], true);
    assert_eq!(health["connected_data_planes"], 2);
    let node = |addr: std::net::SocketAddr| {
        health["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["address"] == addr.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("{addr} missing: {health}"))
    };
    assert_eq!(node(up)["status"], "healthy");
    assert_eq!(node(up)["healthy_on"], 2);
    assert_eq!(node(down)["status"], "unhealthy");
    let ids: Vec<&str> = health["data_planes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dp-a", "dp-b"]);

    let (_, plain) = admin.get("/admin/upstreams/plain/health").await.unwrap();
    assert_eq!(plain["checked"], false, "{plain}");
    assert_eq!(plain["nodes"], json!([]));
    assert_eq!(
        admin.get("/admin/upstreams/nope/health").await.unwrap().0,
        404
    );
    assert_eq!(admin.get("/admin/consumers/x/health").await.unwrap().0, 404);

    // A DP that goes away stops counting.
    drop(dp2);
    wait_for("dp-b to drop out", Duration::from_secs(30), || async {
        let (_, v) = admin.get("/admin/upstreams/u/health").await.ok()?;
        (v["reporting_data_planes"] == 1).then_some(())
    })
    .await;
    drop(dp1);
}
