//! The production topology of deploy/, as plain processes: two control planes on one Postgres,
//! two data planes (each following both CPs), HAProxy in TCP mode in front of the DPs with
//! deploy/haproxy/haproxy.cfg as committed. Under steady load through HAProxy:
//! - SIGTERM one DP and start it again (a rolling restart): no request fails;
//! - SIGTERM a CP: its DPs move to the other and keep receiving config;
//! - kill -9 one DP: only requests in flight on it fail, and HAProxy stops sending to it.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use postern_tests::*;
use serde_json::json;

const CLIENTS: usize = 8;

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn rolling_restart_and_crash_behind_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgDatabase::create().await;
    let cp_a = ControlPlane::start_with(&dir.path().join("a"), false, &["--store", &db.url]).await;
    let mut cp_b =
        ControlPlane::start_with(&dir.path().join("b"), false, &["--store", &db.url]).await;
    let both = format!("{},{}", cp_a.sync_url(), cp_b.sync_url());
    let both_reversed = format!("{},{}", cp_b.sync_url(), cp_a.sync_url());
    // Above HAProxy's inter 1s × fall 2, as deploy/haproxy/haproxy.cfg asks.
    let drain = ["--shutdown-delay", "3", "--drain-timeout", "5"];
    let mut dp1 = DataPlane::start_with(dir.path(), "dp-1", &both, &drain).await;
    let mut dp2 = DataPlane::start_with(dir.path(), "dp-2", &both_reversed, &drain).await;
    let node = upstream("ok").await;
    let rev = cp_a
        .client()
        .put_ok(
            "/admin/routes/api",
            json!({"uri": "/api/*", "upstream": {"nodes": {node.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp1.status, rev).await;
    wait_applied(dp2.status, rev).await;

    let (lb, _haproxy) = haproxy_in_front(dir.path(), [&dp1, &dp2], "/api/x").await;
    let (load, tasks) = start_load(lb, "/api/x", CLIENTS);
    flowing(&load, 200).await;

    // 1. Rolling restart of dp-1: SIGTERM, wait for it to exit, start it again.
    let before = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    let signalled = Instant::now();
    sigterm(dp1.process.child.id());
    wait_for("dp-1 to exit", Duration::from_secs(15), || {
        let exited = dp1.process.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    let drained_in = signalled.elapsed();
    dp1.restart().await;
    wait_applied(dp1.status, rev).await;
    // Let HAProxy see it healthy again (rise 2 × inter 1s) and send it traffic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    flowing(&load, 200).await;
    let after = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    println!(
        "rolling restart of dp-1 (exit after {drained_in:?}): {} requests served, {} failed",
        after.0 - before.0,
        after.1 - before.1
    );
    assert_eq!(
        after.1 - before.1,
        0,
        "requests failed during a rolling restart"
    );

    // 2. SIGTERM the CP that dp-2 follows first: it moves to the other CP and gets new config.
    cp_b.signal("TERM");
    let moved = Instant::now();
    let node2 = upstream("ok").await;
    let rev2 = cp_a
        .client()
        .put_ok(
            "/admin/routes/api",
            json!({"uri": "/api/*", "upstream": {"nodes": {node2.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp2.status, rev2).await;
    wait_applied(dp1.status, rev2).await;
    println!(
        "CP B stopped: dp-2 applied the next write through CP A {:?} later",
        moved.elapsed()
    );
    cp_b.kill();

    // 3. kill -9 dp-2: only what was in flight on it fails; then traffic flows without errors.
    let before_failed = load.failed.load(Ordering::Relaxed);
    let killed_at = now_ms();
    dp2.process.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failed = load.failed.load(Ordering::Relaxed) - before_failed;
    let last = load.last_failure.load(Ordering::Relaxed);
    let failing_for = last.saturating_sub(killed_at);
    let steady_from = load.failed.load(Ordering::Relaxed);
    flowing(&load, 500).await;
    println!(
        "kill -9 dp-2: {failed} requests failed (at most the {CLIENTS} in flight), \
         the last {failing_for} ms after the kill"
    );
    assert!(
        failed <= CLIENTS as u64,
        "{failed} failures for {CLIENTS} requests in flight"
    );
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        steady_from,
        "requests kept failing after the crash"
    );

    load.stop();
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "total: {} served, {} failed",
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed)
    );
}
