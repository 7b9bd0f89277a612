//! Data planes that outlive the control plane: a DP restarted while the CP is down serves its
//! cached snapshot (flagged stale until a CP confirms it); a damaged cache is reported and
//! skipped without hanging the DP.

use std::time::Duration;

use postern_tests::*;
use serde_json::json;

/// The version in a cache file's header (after the 8-byte magic), if the file is there.
fn cached_version(path: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    Some(u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?))
}

#[tokio::test]
async fn restarted_dp_serves_from_its_cache_while_the_cp_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("cached").await;
    let mut cp = ControlPlane::start(dir.path()).await;
    let mut dp = DataPlane::start(dir.path(), "dp-cache", &cp.sync_url()).await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/x", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp.status, rev).await;
    // The cache is written off the sync path, at most once a second: wait for this version.
    let cache_file = dp.cache_dir.join("snapshot.bin");
    wait_for(
        "the snapshot cache file to hold the route",
        Duration::from_secs(5),
        || async { (cached_version(&cache_file) == Some(rev)).then_some(()) },
    )
    .await;

    cp.kill();
    dp.restart().await;
    let (code, body) = readyz(dp.status).await.expect("readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["version"], rev);
    assert_eq!(body["stale"], true, "{body}");
    assert_eq!(body["control_plane_connected"], false);
    assert_eq!(
        get_via(dp.proxy, "/x", None).await.unwrap(),
        (200, "cached".to_string())
    );

    // The CP returns with the same version: the DP confirms it and is no longer stale.
    cp.restart().await;
    wait_for(
        "the DP to be confirmed by the CP",
        Duration::from_secs(20),
        || async {
            let (_, body) = readyz(dp.status).await?;
            (body["stale"] == false && body["control_plane_connected"] == true).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_damaged_cache_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("fresh").await;
    let cp = ControlPlane::start(dir.path()).await;
    let mut dp = DataPlane::start(dir.path(), "dp-corrupt", &cp.sync_url()).await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/x", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp.status, rev).await;
    let cache_file = dp.cache_dir.join("snapshot.bin");
    wait_for(
        "the snapshot cache file",
        Duration::from_secs(5),
        || async { cache_file.exists().then_some(()) },
    )
    .await;

    // Stop the DP first (a running DP may still be writing a newer snapshot over the file), flip
    // a byte in the payload, then start it again. The CP is still up: the DP must skip the cache
    // with a clear log line and get the config from the CP.
    dp.process.kill();
    let mut bytes = std::fs::read(&cache_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&cache_file, &bytes).unwrap();
    dp.restart().await;
    wait_applied(dp.status, rev).await;
    assert_eq!(
        get_via(dp.proxy, "/x", None).await.unwrap(),
        (200, "fresh".to_string())
    );
    let log = dp.process.log_text();
    assert!(
        log.contains("ignoring the snapshot cache") && log.contains("checksum mismatch"),
        "log:\n{log}"
    );

    // Garbage and no CP at all: up (healthz), not ready, no hang, still trying the CP. (The
    // garbage goes straight into the new DP's own cache: dp-corrupt may still rewrite its file.)
    let mut lonely =
        DataPlane::start(dir.path(), "dp-lonely", &format!("http://{}", free_addr())).await;
    std::fs::create_dir_all(&lonely.cache_dir).unwrap();
    std::fs::write(lonely.cache_dir.join("snapshot.bin"), b"garbage").unwrap();
    lonely.restart().await;
    let (code, body) = readyz(lonely.status).await.expect("readyz answers");
    assert_eq!(code, 503, "{body}");
    assert_eq!(get_via(lonely.proxy, "/x", None).await.unwrap().0, 503);
    wait_for(
        "a log line about retrying the control plane",
        Duration::from_secs(5),
        || async {
            lonely
                .process
                .log_text()
                .contains("sync with the control plane failed")
                .then_some(())
        },
    )
    .await;
    assert!(
        lonely
            .process
            .log_text()
            .contains("not a Postern snapshot cache")
    );
}
