//! The Redis backend: each algorithm's Lua script (in its own file) run with `EVALSHA` — the
//! `redis` crate's `Script` falls back to `SCRIPT LOAD` on `NOSCRIPT` — so a decision is one
//! atomic round trip, timed by Redis' own clock (`TIME`) so every data plane shares one clock.
//! Keys expire with their state, and each is wrapped in a hash tag (`{…}`) so a Redis Cluster
//! keeps it on one slot.
//!
//! One client per server (address, database, credentials, timeout), shared by every route that
//! names it and created on first use: a `ConnectionManager` (one multiplexed connection that
//! reconnects) or a cluster connection. Every call is bounded by the limit's `redis_timeout`.
//! After a failure, calls for the next `PROBE_INTERVAL` fail at once instead of each waiting
//! for the timeout; then one call probes Redis again. A failure episode is logged once when it
//! starts and once when it ends, and counted in [`DEGRADED_EPISODES`]; every decision taken
//! without Redis is counted in [`DEGRADED_DECISIONS`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use postern_proto::model::plugins::limits::RedisSettings;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script};

use super::{
    Clock, Decision, Rule, SystemClock, WindowQuota, fixed_window, leaky_bucket,
    sliding_window_counter, sliding_window_log, token_bucket,
};

/// Decisions taken without Redis (allowed by `fault_tolerant`/`allow_degradation`, or answered
/// 503). For the metrics endpoint.
pub static DEGRADED_DECISIONS: AtomicU64 = AtomicU64::new(0);
/// Times a Redis server went from working to failing.
pub static DEGRADED_EPISODES: AtomicU64 = AtomicU64::new(0);

/// How long calls fail fast after a failure before one probes Redis again.
const PROBE_INTERVAL_MS: u64 = 250;

static FIXED_WINDOW: LazyLock<Script> = LazyLock::new(|| Script::new(fixed_window::LUA));
static SLIDING_LOG: LazyLock<Script> = LazyLock::new(|| Script::new(sliding_window_log::LUA));
static SLIDING_COUNTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(sliding_window_counter::LUA));
static TOKEN_BUCKET: LazyLock<Script> = LazyLock::new(|| Script::new(token_bucket::LUA));
static LEAKY_BUCKET: LazyLock<Script> = LazyLock::new(|| Script::new(leaky_bucket::LUA));

#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("failing since a recent error; retrying shortly")]
    Cooling,
    #[error("unexpected reply from the limiter script: {0:?}")]
    BadReply(Vec<i64>),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// One Redis server (or cluster) as limits use it.
pub struct RedisBackend {
    settings: RedisSettings,
    timeout: Duration,
    conn: tokio::sync::OnceCell<Conn>,
    degraded: AtomicBool,
    /// While degraded: no call before this instant (ms) probes Redis.
    probe_at_ms: AtomicU64,
}

impl RedisBackend {
    /// The process-wide backend for these settings, created on first use.
    pub fn shared(settings: &RedisSettings) -> Arc<RedisBackend> {
        static BACKENDS: LazyLock<Mutex<HashMap<RedisSettings, Arc<RedisBackend>>>> =
            LazyLock::new(Mutex::default);
        let mut map = BACKENDS.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(settings.clone())
            .or_insert_with(|| Arc::new(RedisBackend::new(settings.clone())))
            .clone()
    }

    pub fn new(settings: RedisSettings) -> RedisBackend {
        RedisBackend {
            timeout: Duration::from_millis(settings.timeout_ms),
            settings,
            conn: tokio::sync::OnceCell::new(),
            degraded: AtomicBool::new(false),
            probe_at_ms: AtomicU64::new(0),
        }
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Decides one request for `key` (already unique to the route and limit). At most
    /// `redis_timeout` is spent.
    pub async fn decide(&self, key: &str, rule: &Rule) -> Result<Decision, RedisFailure> {
        let now = SystemClock.now_ms();
        if self.is_degraded() {
            let probe_at = self.probe_at_ms.load(Ordering::Relaxed);
            // One caller wins the probe; the others fail fast until it is over.
            if now < probe_at
                || self
                    .probe_at_ms
                    .compare_exchange(
                        probe_at,
                        now + PROBE_INTERVAL_MS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                DEGRADED_DECISIONS.fetch_add(1, Ordering::Relaxed);
                return Err(RedisFailure::Cooling);
            }
        }
        let result = match tokio::time::timeout(self.timeout, self.call(key, rule)).await {
            Ok(r) => r,
            Err(_) => Err(RedisFailure::Timeout(self.settings.timeout_ms)),
        };
        match &result {
            Ok(_) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %self.settings.nodes.join(","), "rate limits: Redis answers again");
                }
            }
            Err(e) => {
                DEGRADED_DECISIONS.fetch_add(1, Ordering::Relaxed);
                self.probe_at_ms
                    .store(SystemClock.now_ms() + PROBE_INTERVAL_MS, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    DEGRADED_EPISODES.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(redis = %self.settings.nodes.join(","), error = %e,
                        "rate limits: Redis unavailable; limits using it fail open or closed as configured until it answers");
                }
            }
        }
        result
    }

    async fn connection(&self) -> Result<Conn, RedisFailure> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let s = &self.settings;
                let mut redis_info = RedisConnectionInfo::default().set_db(i64::from(s.database));
                if let Some(u) = &s.username {
                    redis_info = redis_info.set_username(u);
                }
                if let Some(p) = &s.password {
                    redis_info = redis_info.set_password(p);
                }
                if s.cluster {
                    let mut b = redis::cluster::ClusterClient::builder(
                        s.nodes
                            .iter()
                            .map(|n| addr(n).into_connection_info())
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .retries(1);
                    if let Some(u) = &s.username {
                        b = b.username(u);
                    }
                    if let Some(p) = &s.password {
                        b = b.password(p);
                    }
                    let client = b.build()?;
                    Ok::<_, RedisFailure>(Conn::Cluster(client.get_async_connection().await?))
                } else {
                    let info = addr(&s.nodes[0])
                        .into_connection_info()?
                        .set_redis_settings(redis_info);
                    let client = redis::Client::open(info)?;
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_millis(500));
                    Ok(Conn::Single(
                        ConnectionManager::new_with_config(client, config).await?,
                    ))
                }
            })
            .await?;
        Ok(conn.clone())
    }

    async fn call(&self, key: &str, rule: &Rule) -> Result<Decision, RedisFailure> {
        let conn = self.connection().await?;
        let invocation = match rule {
            Rule::FixedWindow(windows) => {
                let mut inv = FIXED_WINDOW.key(key);
                for w in windows {
                    inv.arg(w.limit).arg(w.window_ms);
                }
                inv
            }
            Rule::SlidingWindowLog(w) => {
                // A unique member per request: two requests in one millisecond both count.
                let member = format!("{:016x}", fastrand::u64(..));
                let mut inv = SLIDING_LOG.key(key);
                inv.arg(w.limit).arg(w.window_ms).arg(member);
                inv
            }
            Rule::SlidingWindowCounter(w) => {
                let mut inv = SLIDING_COUNTER.key(key);
                inv.arg(w.limit).arg(w.window_ms);
                inv
            }
            Rule::TokenBucket { rate, capacity } => {
                let mut inv = TOKEN_BUCKET.key(key);
                inv.arg(rate.to_string()).arg(capacity.to_string());
                inv
            }
            Rule::LeakyBucket {
                rate,
                burst,
                nodelay,
            } => {
                let mut inv = LEAKY_BUCKET.key(key);
                inv.arg(rate.to_string())
                    .arg(burst.to_string())
                    .arg(if *nodelay { "1" } else { "0" });
                inv
            }
        };
        let reply: Vec<i64> = match conn {
            Conn::Single(mut c) => invocation.invoke_async(&mut c).await?,
            Conn::Cluster(mut c) => invocation.invoke_async(&mut c).await?,
        };
        decision_from(rule, reply)
    }
}

/// `host:port` (IPv6 in brackets) as a TCP address.
fn addr(node: &str) -> ConnectionAddr {
    let (host, port) = node
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .unwrap_or((node, 6379));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ConnectionAddr::Tcp(host.to_string(), port)
}

/// Reads a script's `{allowed, retry_after_ms, delay_ms, remaining, reset_ms, …}`.
fn decision_from(rule: &Rule, reply: Vec<i64>) -> Result<Decision, RedisFailure> {
    let windows = match rule {
        Rule::FixedWindow(w) => w.len(),
        _ => 1,
    };
    if reply.len() != 3 + 2 * windows || reply.iter().any(|v| *v < 0) {
        return Err(RedisFailure::BadReply(reply));
    }
    let allowed = reply[0] == 1;
    let retry_after_ms = reply[1] as u64;
    let delay_ms = reply[2] as u64;
    let quota = |i: usize, limit: u64| WindowQuota {
        limit,
        remaining: reply[3 + 2 * i] as u64,
        reset_ms: reply[4 + 2 * i] as u64,
    };
    let single = |limit: u64| {
        let q = quota(0, limit);
        Decision {
            allowed,
            limit,
            remaining: q.remaining,
            reset_ms: q.reset_ms,
            retry_after_ms,
            delay_ms,
            windows: Vec::new(),
        }
    };
    Ok(match rule {
        Rule::FixedWindow(ws) => fixed_window::summarise(
            allowed,
            retry_after_ms,
            ws.iter()
                .enumerate()
                .map(|(i, w)| quota(i, w.limit))
                .collect(),
        ),
        Rule::SlidingWindowLog(w) | Rule::SlidingWindowCounter(w) => single(w.limit),
        Rule::TokenBucket { capacity, .. } => single(capacity.floor() as u64),
        Rule::LeakyBucket { burst, .. } => single(burst.floor() as u64 + 1),
    })
}

#[cfg(test)]
mod tests {
    //! Against the Redis on 127.0.0.1:6379 (`redis-server` must run; the tests say so if not).
    //! Every test uses keys of its own, so they run in parallel.

    use super::super::Window;
    use super::*;

    fn settings(port: u16, timeout_ms: u64) -> RedisSettings {
        RedisSettings {
            cluster: false,
            nodes: vec![format!("127.0.0.1:{port}")],
            username: None,
            password: None,
            database: 0,
            timeout_ms,
        }
    }

    async fn backend() -> RedisBackend {
        let b = RedisBackend::new(settings(6379, 2000));
        if let Err(e) = b.connection().await {
            panic!(
                "these tests need Redis on 127.0.0.1:6379 ({e}); start it with \
                 `redis-server --daemonize yes` or `apt-get install redis-server`"
            );
        }
        b
    }

    fn key(name: &str) -> String {
        format!("postern:test:{{{name}:{:x}}}", fastrand::u64(..))
    }

    async fn admitted(b: &RedisBackend, key: &str, rule: &Rule, n: usize) -> Vec<Decision> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(b.decide(key, rule).await.expect("redis decision"));
        }
        out
    }

    #[tokio::test]
    async fn every_script_admits_its_quota_then_refuses() {
        let b = backend().await;
        let hour = Window {
            limit: 5,
            window_ms: 3_600_000,
        };
        let cases = [
            ("fixed", Rule::FixedWindow(vec![hour]), 5),
            (
                "fixed2",
                Rule::FixedWindow(vec![
                    Window {
                        limit: 3,
                        window_ms: 3_600_000,
                    },
                    hour,
                ]),
                3,
            ),
            ("log", Rule::SlidingWindowLog(hour), 5),
            ("counter", Rule::SlidingWindowCounter(hour), 5),
            (
                "token",
                Rule::TokenBucket {
                    rate: 0.001,
                    capacity: 5.0,
                },
                5,
            ),
            (
                "leaky",
                Rule::LeakyBucket {
                    rate: 0.001,
                    burst: 4.0,
                    nodelay: true,
                },
                5,
            ),
        ];
        for (name, rule, quota) in cases {
            let k = key(name);
            let ds = admitted(&b, &k, &rule, quota + 3).await;
            let allowed = ds.iter().filter(|d| d.allowed).count();
            assert_eq!(allowed, quota, "{name}: {ds:?}");
            assert!(ds[..quota].iter().all(|d| d.allowed), "{name}");
            let last_ok = &ds[quota - 1];
            assert_eq!(last_ok.remaining, 0, "{name}");
            let refused = &ds[quota];
            assert!(refused.retry_after_ms > 0, "{name}: {refused:?}");
            assert!(refused.reset_ms > 0, "{name}: {refused:?}");
            // The state expires.
            let mut conn = match b.connection().await.unwrap() {
                Conn::Single(c) => c,
                Conn::Cluster(_) => unreachable!(),
            };
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0, "{name}: ttl {ttl}");
        }
    }

    #[tokio::test]
    async fn leaky_bucket_delays_without_nodelay() {
        let b = backend().await;
        let rule = Rule::LeakyBucket {
            rate: 10.0,
            burst: 2.0,
            nodelay: false,
        };
        let ds = admitted(&b, &key("leaky-delay"), &rule, 4).await;
        let delays: Vec<(bool, u64)> = ds.iter().map(|d| (d.allowed, d.delay_ms)).collect();
        // 100 ms apart (a few ms of drain between calls may shave the later delays).
        assert!(delays[0] == (true, 0), "{delays:?}");
        assert!(
            delays[1].0 && (80..=100).contains(&delays[1].1),
            "{delays:?}"
        );
        assert!(
            delays[2].0 && (180..=200).contains(&delays[2].1),
            "{delays:?}"
        );
        assert!(!delays[3].0, "{delays:?}");
    }

    #[tokio::test]
    async fn a_flushed_script_cache_is_reloaded() {
        let b = backend().await;
        let rule = Rule::SlidingWindowCounter(Window {
            limit: 10,
            window_ms: 60_000,
        });
        let k = key("noscript");
        assert!(b.decide(&k, &rule).await.unwrap().allowed);
        let Conn::Single(mut conn) = b.connection().await.unwrap() else {
            unreachable!()
        };
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        let d = b.decide(&k, &rule).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 8);
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_within_the_timeout_and_then_fast() {
        // Nothing listens on a port we just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let b = RedisBackend::new(settings(port, 300));
        let rule = Rule::FixedWindow(vec![Window {
            limit: 1,
            window_ms: 1000,
        }]);
        let before = DEGRADED_EPISODES.load(Ordering::Relaxed);
        let t = std::time::Instant::now();
        assert!(b.decide("k", &rule).await.is_err());
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert!(b.is_degraded());
        let t = std::time::Instant::now();
        assert!(matches!(
            b.decide("k", &rule).await,
            Err(RedisFailure::Cooling)
        ));
        assert!(t.elapsed() < Duration::from_millis(5));
        assert!(DEGRADED_EPISODES.load(Ordering::Relaxed) > before);
    }
}
