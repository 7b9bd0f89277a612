//! Chaos under load: two data planes behind HAProxy (deploy/haproxy/haproxy.cfg), one control
//! plane on a Postgres of the test's own, a Redis of the test's own behind a cluster-wide
//! `limit-count`, steady proxied load and a steady stream of Admin API writes. One fault at a
//! time — kill Redis, kill Postgres, kill -9 the CP, kill -9 a DP — each restarted after a while.
//! For each fault the test reports the requests that failed, the mode that applied and the time
//! to recover, and at the end checks that no acknowledged config write was lost.
//!
//! `scripts/chaos.sh` runs it alone and prints the report; it also runs with the suite.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postern_tests::*;
use serde_json::json;
use tokio::sync::Mutex;

const CLIENTS: usize = 8;
/// How long each fault lasts under load before the faulty part is started again.
const OUTAGE: Duration = Duration::from_secs(3);

/// A Redis server of the test's own (nothing kept on disk), so killing it touches no one else.
struct Redis {
    process: Option<Process>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    async fn start(dir: &std::path::Path) -> Redis {
        let mut redis = Redis {
            process: None,
            port: free_addr().port(),
            dir: dir.to_path_buf(),
        };
        redis.restart().await;
        redis
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &self.dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.process = Some(Process::spawn_program(
            "redis-server",
            "redis-server",
            &args,
            self.dir.join("redis.log"),
        ));
        let port = self.port;
        wait_for("Redis to listen", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
    }

    /// Keys held now (the limiter's counters), or `None` while it cannot be asked.
    async fn keys(&self) -> Option<i64> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("DBSIZE").query_async(&mut conn).await.ok()
    }
}

/// Admin API writes at a steady pace (a new upstream each), remembering every acknowledged one.
struct Writer {
    acked: Arc<Mutex<Vec<String>>>,
    refused: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(admin: std::net::SocketAddr) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, r, s) = (acked.clone(), refused.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("w-{n}");
                let answer = http
                    .put(format!("http://{admin}/admin/upstreams/{id}"))
                    .header("x-api-key", ADMIN_KEY)
                    .json(&json!({"nodes": {"127.0.0.1:9": 1}}))
                    .send()
                    .await;
                match answer {
                    Ok(resp) if resp.status().is_success() => a.lock().await.push(id),
                    _ => {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Writer {
            acked,
            refused,
            stop,
            task,
        }
    }

    async fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let acked = self.acked.lock().await.clone();
        (acked, self.refused.load(Ordering::Relaxed))
    }
}

/// One line of the report.
struct Fault {
    name: &'static str,
    failed: u64,
    served: u64,
    /// How long the phase ran (fault, outage, recovery).
    lasted: Duration,
    mode: String,
    recovered_in: Duration,
    recovery: &'static str,
}

/// Writes one upstream through the Admin API until it is accepted, then waits until both data
/// planes serve that revision: the time it took is the time to recover.
async fn write_and_propagate(
    cp: &ControlPlane,
    dps: [&DataPlane; 2],
    id: &str,
    timeout: Duration,
) -> u64 {
    let admin = cp.client();
    let body = json!({"nodes": {"127.0.0.1:9": 1}}).to_string();
    let rev = wait_for("an Admin API write to be accepted", timeout, || async {
        let (status, v) = admin
            .request(
                reqwest::Method::PUT,
                &format!("/admin/upstreams/{id}"),
                Some(&body),
            )
            .await
            .ok()?;
        (status == 200 || status == 201)
            .then(|| v["revision"].as_u64())
            .flatten()
    })
    .await;
    for dp in dps {
        wait_applied(dp.status, rev).await;
    }
    rev
}

#[tokio::test]
async fn faults_under_load_lose_no_request_they_need_not_and_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgServer::start(dir.path()).await;
    let mut redis = Redis::start(dir.path()).await;
    let mut cp =
        ControlPlane::start_with(dir.path(), false, &["--store", &pg.url("postgres")]).await;
    let dp1 = DataPlane::start(dir.path(), "dp-1", &cp.sync_url()).await;
    let mut dp2 = DataPlane::start(dir.path(), "dp-2", &cp.sync_url()).await;
    let backend = upstream("ok").await;
    // A cluster-wide limit far above the load, counted in Redis; while Redis is down each DP
    // counts its share locally (`degrade: local`).
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/api",
            json!({"uri": "/api/*", "upstream": {"nodes": {backend.to_string(): 1}},
                   "plugins": {"limit-count": {"count": 100_000_000, "time_window": 60,
                       "key_type": "constant", "key": "all", "policy": "redis",
                       "redis_host": "127.0.0.1", "redis_port": redis.port,
                       "redis_timeout": 200, "degrade": "local"}}}),
        )
        .await;
    wait_applied(dp1.status, rev).await;
    wait_applied(dp2.status, rev).await;
    let (lb, _haproxy) = haproxy_in_front(dir.path(), [&dp1, &dp2], "/api/x").await;
    let (load, tasks) = start_load(lb, "/api/x", CLIENTS);
    flowing(&load, 200).await;
    let writer = Writer::start(cp.admin);
    wait_for(
        "the limiter to count in Redis",
        Duration::from_secs(10),
        || async { (redis.keys().await? > 0).then_some(()) },
    )
    .await;
    let mut report = Vec::new();

    // 1. Redis dies: the limiter degrades to local counting; nothing fails.
    let before = load.counts();
    let phase = Instant::now();
    redis.kill();
    tokio::time::sleep(OUTAGE).await;
    redis.restart().await;
    let restarted = Instant::now();
    wait_for(
        "the limiter to count in Redis again",
        Duration::from_secs(20),
        || async { (redis.keys().await? > 0).then_some(()) },
    )
    .await;
    let after = load.counts();
    report.push(Fault {
        name: "kill Redis",
        served: after.0 - before.0,
        failed: after.1 - before.1,
        lasted: phase.elapsed(),
        mode: "limit-count `degrade: local`: each DP counts its share of the limit".into(),
        recovered_in: restarted.elapsed(),
        recovery: "restart → counters in Redis again",
    });

    // 2. Postgres dies: DPs keep serving the config they have; writes answer 503.
    let before = load.counts();
    let phase = Instant::now();
    pg.stop();
    let (status, _) = wait_for(
        "a write to be refused while the store is down",
        Duration::from_secs(15),
        || async {
            let r = cp
                .client()
                .request(
                    reqwest::Method::PUT,
                    "/admin/upstreams/during-pg",
                    Some(&json!({"nodes": {"127.0.0.1:9": 1}}).to_string()),
                )
                .await
                .ok()?;
            (r.0 == 503).then_some(r)
        },
    )
    .await;
    tokio::time::sleep(OUTAGE).await;
    pg.resume().await;
    let restarted = Instant::now();
    write_and_propagate(&cp, [&dp1, &dp2], "after-pg", Duration::from_secs(30)).await;
    let after = load.counts();
    report.push(Fault {
        name: "kill Postgres",
        served: after.0 - before.0,
        failed: after.1 - before.1,
        lasted: phase.elapsed(),
        mode: format!("DPs serve their snapshot; Admin API writes answer {status}"),
        recovered_in: restarted.elapsed(),
        recovery: "restart → a write accepted and served by both DPs",
    });

    // 3. kill -9 the CP: DPs serve their snapshot (stale) and reconnect when it is back.
    let before = load.counts();
    let phase = Instant::now();
    cp.kill();
    tokio::time::sleep(OUTAGE).await;
    let (_, ready) = readyz(dp1.status).await.expect("dp-1 /readyz");
    assert_eq!(
        ready["ready"], true,
        "a DP without its CP stays ready: {ready}"
    );
    assert_eq!(ready["control_plane_connected"], false, "{ready}");
    cp.restart().await;
    let restarted = Instant::now();
    write_and_propagate(&cp, [&dp1, &dp2], "after-cp", Duration::from_secs(30)).await;
    let after = load.counts();
    report.push(Fault {
        name: "kill -9 the CP",
        served: after.0 - before.0,
        failed: after.1 - before.1,
        lasted: phase.elapsed(),
        mode: "DPs serve their snapshot (readyz: ready, control_plane_connected false)".into(),
        recovered_in: restarted.elapsed(),
        recovery: "restart → a write served by both DPs",
    });

    // 4. kill -9 a DP: what was in flight on it fails; HAProxy sends the rest to the other.
    let before = load.counts();
    let phase = Instant::now();
    let killed_at = now_ms();
    dp2.process.kill();
    tokio::time::sleep(OUTAGE).await;
    let last_failure = load.last_failure.load(Ordering::Relaxed);
    let failing_for = Duration::from_millis(last_failure.saturating_sub(killed_at));
    dp2.restart().await;
    let rev = cp.client().revision().await;
    wait_applied(dp2.status, rev).await;
    // HAProxy takes it back after `rise 2 × inter 1s`.
    tokio::time::sleep(Duration::from_secs(3)).await;
    flowing(&load, 200).await;
    let after = load.counts();
    report.push(Fault {
        name: "kill -9 a DP",
        served: after.0 - before.0,
        failed: after.1 - before.1,
        lasted: phase.elapsed(),
        mode: "HAProxy health checks take it out; the other DP serves".into(),
        recovered_in: failing_for,
        recovery: "kill → last failed request",
    });

    load.stop();
    for t in tasks {
        let _ = t.await;
    }
    let (acked, refused) = writer.finish().await;
    let (status, list) = cp.client().get("/admin/upstreams").await.unwrap();
    assert_eq!(status, 200, "{list}");
    let stored: std::collections::HashSet<String> = list["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();

    let mut text = String::from(
        "\n| fault | requests served (req/s) | failed | mode | time to recover |\n| --- | ---: | ---: | --- | --- |\n",
    );
    for f in &report {
        let _ = writeln!(
            text,
            "| {} | {} ({:.0}) | {} | {} | {:.2} s ({}) |",
            f.name,
            f.served,
            f.served as f64 / f.lasted.as_secs_f64(),
            f.failed,
            f.mode,
            f.recovered_in.as_secs_f64(),
            f.recovery
        );
    }
    let _ = writeln!(
        text,
        "\nAdmin API writes during the run: {} acknowledged, {} refused or unanswered \
         (store or CP down); acknowledged writes lost: {}",
        acked.len(),
        refused,
        lost.len()
    );
    println!("{text}");

    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(acked.len() > 20, "the writer ran ({} writes)", acked.len());
    assert!(refused > 0, "some writes met a fault ({refused})");
    for f in &report[..3] {
        assert_eq!(f.failed, 0, "{}: requests failed:{text}", f.name);
        assert!(f.served > 100, "{}: the load ran:{text}", f.name);
    }
    assert!(
        report[3].failed <= CLIENTS as u64,
        "kill -9 a DP: more failures than requests in flight:{text}"
    );
}
