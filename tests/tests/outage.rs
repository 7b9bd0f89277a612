//! Config store outages under proxy load: traffic through the data plane is unaffected, Admin API
//! writes get a clear 503, reads are answered from the served snapshot (flagged stale), and
//! everything recovers when the store returns, with no restart of the CP or the DP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postern_tests::*;
use serde_json::json;

/// Steady GETs through `proxy` until stopped; counts answers that are not 200 "ok".
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(proxy: std::net::SocketAddr) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !s.load(Ordering::Relaxed) {
                let good = match client.get(format!("http://{proxy}/x")).send().await {
                    Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|b| b == "ok"),
                    _ => false,
                };
                if good { &o } else { &f }.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Load {
            stop,
            ok,
            failed,
            task,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The shared part: config in place, load running, then `stop_store`, checks, `resume_store`,
/// checks. Returns (requests ok, requests failed, seconds to recover).
async fn outage<S, R, RF>(
    dir: &std::path::Path,
    store_url: &str,
    stop_store: S,
    resume_store: R,
) -> (u64, u64, f64)
where
    S: FnOnce(),
    R: FnOnce() -> RF,
    RF: std::future::Future<Output = ()>,
{
    let backend = upstream("ok").await;
    let cp = ControlPlane::start_with(dir, false, &["--store", store_url]).await;
    let dp = DataPlane::start(dir, "dp", &cp.sync_url()).await;
    let admin = cp.client();
    let rev = admin
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/x", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp.status, rev).await;
    let load = Load::start(dp.proxy);
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop_store();
    let body = json!({"uri": "/y", "upstream": {"nodes": {backend.to_string(): 1}}}).to_string();
    let (status, v) = wait_for(
        "a write to be refused with 503",
        Duration::from_secs(15),
        || async {
            let (status, v) = admin
                .request(reqwest::Method::PUT, "/admin/routes/r2", Some(&body))
                .await
                .ok()?;
            (status == 503).then_some((status, v))
        },
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(v["code"], "store_unavailable");
    assert!(
        v["error_msg"]
            .as_str()
            .unwrap()
            .contains("config store unavailable"),
        "{v}"
    );
    // Reads come from the served snapshot, flagged stale.
    let (status, list) = admin.get("/admin/routes").await.unwrap();
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["stale"], true);
    assert_eq!(list["list"][0]["id"], "r1");
    let (_, st) = admin.get("/admin/status").await.unwrap();
    assert_eq!(st["store"]["reachable"], false, "{st}");
    // The outage lasts a while under load.
    tokio::time::sleep(Duration::from_secs(2)).await;

    resume_store().await;
    let resumed = Instant::now();
    let rev2 = wait_for(
        "writes to be accepted again",
        Duration::from_secs(30),
        || async {
            let (status, v) = admin
                .request(reqwest::Method::PUT, "/admin/routes/r2", Some(&body))
                .await
                .ok()?;
            (status == 201 || status == 200)
                .then(|| v["revision"].as_u64())
                .flatten()
        },
    )
    .await;
    let recovered = resumed.elapsed().as_secs_f64();
    wait_applied(dp.status, rev2).await;
    assert_eq!(
        get_via(dp.proxy, "/y", None).await.unwrap().0,
        200,
        "the DP got the post-outage write"
    );
    let (_, st) = admin.get("/admin/status").await.unwrap();
    assert_eq!(st["store"]["reachable"], true, "{st}");
    let (ok, failed) = load.finish().await;
    (ok, failed, recovered)
}

#[tokio::test]
async fn postgres_outage_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgServer::start(dir.path()).await;
    let url = pg.url("postgres");
    let (ok, failed, recovered) = outage(dir.path(), &url, || pg.stop(), || pg.resume()).await;
    println!(
        "postgres outage: {ok} proxied requests ok, {failed} failed; writes accepted {recovered:.2}s after the restart"
    );
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert_eq!(failed, 0);
}

#[tokio::test]
async fn etcd_outage_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Arc::new(tokio::sync::Mutex::new(
        EtcdServer::start(dir.path(), "etcd").await,
    ));
    let url = etcd.lock().await.store_url("outage");
    let stopper = etcd.clone();
    let (ok, failed, recovered) = outage(
        dir.path(),
        &url,
        move || stopper.try_lock().expect("etcd is not in use").kill(),
        || async { etcd.lock().await.restart().await },
    )
    .await;
    println!(
        "etcd outage: {ok} proxied requests ok, {failed} failed; writes accepted {recovered:.2}s after the restart"
    );
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert_eq!(failed, 0);
}
