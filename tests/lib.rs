//! Harness for Postern's integration tests: starts the real `control-plane` and `data-plane`
//! binaries on free loopback ports, plus small in-test upstream servers, and cleans up after.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which the test script
//! does); a missing binary fails the test with that instruction.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A test admin key (32+ characters; the CP refuses shorter ones).
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef-0123";

/// Path of a workspace binary next to the test executable's target dir.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago, for a process the test starts.
///
/// Taken below the kernel's ephemeral range (32768+), so a port-0 bind elsewhere (an upstream
/// in another test, an outgoing connection) never lands on it between this check and the
/// child's own bind; test processes pick from a random start to keep out of each other's way.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU64, Ordering};
    const LOW: u64 = 20_000;
    const SPAN: u64 = 12_000;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one((std::process::id(), Instant::now()))
    };
    let _ = NEXT.compare_exchange(0, seed % SPAN + 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        if let Ok(l) = StdListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().expect("addr");
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed on drop, with its output in a log file shown on failure.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    name: String,
}

impl Process {
    fn spawn(name: &str, bin: &str, args: &[String], log: PathBuf) -> Process {
        Self::spawn_program(name, binary(bin), args, log)
    }

    /// Any program (a path or a name on PATH), with output to `log`.
    pub fn spawn_program(
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[String],
        log: PathBuf,
    ) -> Process {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program.as_ref())
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("POSTERN_ADMIN_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            child,
            log,
            name: name.to_string(),
        }
    }

    /// A prepared command (arguments, environment), with output to `log`.
    pub fn spawn_command(name: &str, mut command: Command, log: PathBuf) -> Process {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            child,
            log,
            name: name.to_string(),
        }
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// A control plane with its own data dir and ports.
pub struct ControlPlane {
    process: Option<Process>,
    log: PathBuf,
    pub admin: SocketAddr,
    pub sync: SocketAddr,
    /// With `--dev`: the in-process data plane's proxy and status addresses.
    pub proxy: Option<SocketAddr>,
    pub status: Option<SocketAddr>,
    pub data_dir: PathBuf,
    extra: Vec<String>,
}

impl ControlPlane {
    pub async fn start(dir: &Path) -> ControlPlane {
        Self::start_with(dir, false, &[]).await
    }

    pub async fn start_dev(dir: &Path) -> ControlPlane {
        Self::start_with(dir, true, &[]).await
    }

    pub async fn start_with(dir: &Path, dev: bool, extra: &[&str]) -> ControlPlane {
        std::fs::create_dir_all(dir).expect("test dir");
        // A port `free_addr` found free can still be taken by another test process before the
        // child binds it (seen once in CI): then the child exits, and it starts again on others.
        for attempt in 1..=3 {
            let mut cp = ControlPlane {
                process: None,
                log: dir.join("cp.log"),
                admin: free_addr(),
                sync: free_addr(),
                proxy: dev.then(free_addr),
                status: dev.then(free_addr),
                data_dir: dir.join("cp-data"),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            if cp.spawn_and_wait().await {
                return cp;
            }
            eprintln!("control plane: a port was taken meanwhile (attempt {attempt}); other ports");
            cp.kill();
            let _ = std::fs::remove_file(&cp.log);
        }
        panic!("the control plane found no free ports in 3 attempts")
    }

    /// SIGKILL the control plane (its data dir and ports are kept for `restart`).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the control plane process.
    pub fn signal(&self, signal: &str) {
        let pid = self.process.as_ref().expect("running").child.id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// The control plane's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (Re)starts the process on the same data dir and ports.
    pub async fn restart(&mut self) {
        assert!(
            self.spawn_and_wait().await,
            "the control plane could not bind its ports:\n{}",
            self.log_text()
        );
    }

    /// Starts the process and waits for its Admin API; `false` when it could not bind a port.
    async fn spawn_and_wait(&mut self) -> bool {
        self.kill();
        let mut args = vec![
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
            "--admin-listen".into(),
            self.admin.to_string(),
            "--sync-listen".into(),
            self.sync.to_string(),
            "--admin-key".into(),
            ADMIN_KEY.into(),
        ];
        if let (Some(p), Some(s)) = (self.proxy, self.status) {
            args.extend([
                "--dev".into(),
                "--proxy-listen".into(),
                p.to_string(),
                "--status-listen".into(),
                s.to_string(),
            ]);
        }
        args.extend(self.extra.iter().cloned());
        self.process = Some(Process::spawn(
            "cp",
            "control-plane",
            &args,
            self.log.clone(),
        ));
        let admin = self.client();
        let log = self.log.clone();
        wait_for("the Admin API", Duration::from_secs(15), || async {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            if log.contains("Address already in use") {
                return Some(false);
            }
            admin
                .get("/admin/routes")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| true)
        })
        .await
    }

    pub fn client(&self) -> AdminClient {
        AdminClient {
            http: reqwest::Client::new(),
            base: format!("http://{}", self.admin),
            key: Some(ADMIN_KEY.to_string()),
        }
    }

    /// The running process's id (with `--dev`, the data plane's too: it runs inside).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("running").child.id()
    }

    pub fn sync_url(&self) -> String {
        format!("http://{}", self.sync)
    }
}

/// A standalone data-plane process.
pub struct DataPlane {
    pub process: Process,
    pub proxy: SocketAddr,
    pub status: SocketAddr,
    pub node_id: String,
    pub cache_dir: PathBuf,
    args: Vec<String>,
}

impl DataPlane {
    pub async fn start(dir: &Path, node_id: &str, control_plane: &str) -> DataPlane {
        Self::start_with(dir, node_id, control_plane, &[]).await
    }

    /// Starts a DP whose snapshot cache is `<dir>/<node_id>-cache`, with extra flags.
    pub async fn start_with(
        dir: &Path,
        node_id: &str,
        control_plane: &str,
        extra: &[&str],
    ) -> DataPlane {
        let log = dir.join(format!("{node_id}.log"));
        // As for the control plane: a port `free_addr` found free can be taken by another test
        // process before the child binds it; then the child exits, and it starts on others.
        for attempt in 1..=3 {
            let proxy = free_addr();
            let status = free_addr();
            let mut args = vec![
                "--control-plane".to_string(),
                control_plane.to_string(),
                "--proxy-listen".into(),
                proxy.to_string(),
                "--status-listen".into(),
                status.to_string(),
                "--node-id".into(),
                node_id.to_string(),
                "--cache-dir".into(),
                dir.join(format!("{node_id}-cache")).display().to_string(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let process = Process::spawn(node_id, "data-plane", &args, log.clone());
            let dp = DataPlane {
                process,
                proxy,
                status,
                node_id: node_id.to_string(),
                cache_dir: dir.join(format!("{node_id}-cache")),
                args,
            };
            if dp.started().await {
                return dp;
            }
            eprintln!(
                "data plane {node_id}: a port was taken meanwhile (attempt {attempt}); other ports"
            );
            drop(dp);
            let _ = std::fs::remove_file(&log);
        }
        panic!("the data plane {node_id} found no free ports in 3 attempts")
    }

    /// Waits for `/healthz`; `false` when the process could not bind a port.
    async fn started(&self) -> bool {
        let http = reqwest::Client::new();
        let url = format!("http://{}/healthz", self.status);
        wait_for(
            "the data plane's /healthz",
            Duration::from_secs(15),
            || async {
                if self.process.log_text().contains("Address already in use") {
                    return Some(false);
                }
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| true)
            },
        )
        .await
    }

    /// SIGKILL and start again with the same flags, ports and cache.
    pub async fn restart(&mut self) {
        self.process.kill();
        let log = self.process.log.clone();
        self.process = Process::spawn(&self.node_id, "data-plane", &self.args, log);
        assert!(
            self.started().await,
            "the data plane {} could not bind its ports again after a restart",
            self.node_id
        );
    }
}

/// The readiness and applied version a DP's `/readyz` reports.
pub async fn readyz(status: SocketAddr) -> Option<(u16, Value)> {
    let resp = reqwest::get(format!("http://{status}/readyz")).await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.json().await.ok()?))
}

/// Waits until the DP at `status` serves `version` (or newer).
pub async fn wait_applied(status: SocketAddr, version: u64) {
    wait_for(
        &format!("version {version} applied"),
        Duration::from_secs(10),
        || async {
            let (_, body) = readyz(status).await?;
            (body["version"].as_u64()? >= version).then_some(())
        },
    )
    .await
}

/// A minimal Admin API client for tests.
#[derive(Clone)]
pub struct AdminClient {
    pub http: reqwest::Client,
    pub base: String,
    pub key: Option<String>,
}

impl AdminClient {
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("x-api-key", k);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, json))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.request(reqwest::Method::GET, path, None).await
    }

    /// PUT that must succeed; returns the new global revision.
    pub async fn put_ok(&self, path: &str, body: Value) -> u64 {
        let (status, resp) = self
            .request(reqwest::Method::PUT, path, Some(&body.to_string()))
            .await
            .expect("admin request");
        assert!(
            status == 200 || status == 201,
            "PUT {path} → {status}: {resp}"
        );
        resp["revision"].as_u64().expect("revision in response")
    }

    /// The store's current revision, as the last history entry says.
    pub async fn revision(&self) -> u64 {
        let (_, v) = self
            .get("/admin/history?after=0&limit=1000")
            .await
            .expect("history");
        v["list"]
            .as_array()
            .and_then(|l| l.last())
            .and_then(|e| e["revision"].as_u64())
            .unwrap_or(0)
    }
}

/// One operation of the Admin API's OpenAPI document, made concrete: a path to request (with
/// its server prefix, path parameters filled in), its method, and whether it needs the key.
#[derive(Debug, Clone)]
pub struct DocumentedOperation {
    /// The path as documented (`/routes/{id}`), without a server prefix.
    pub template: String,
    /// The full request path (`/admin/routes/some-id`).
    pub path: String,
    pub method: reqwest::Method,
    pub needs_key: bool,
}

/// The HTTP methods an OpenAPI path item can name that the Admin API uses.
pub const OPENAPI_METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

/// Every operation of the served document (`GET /admin/openapi.json`), once per server prefix
/// (a path's own `servers` override the document's), with `{id}` replaced by `id`.
pub fn documented_operations(doc: &Value, id: &str) -> Vec<DocumentedOperation> {
    let server_urls = |servers: &Value| -> Vec<String> {
        servers
            .as_array()
            .expect("servers is a list")
            .iter()
            .map(|s| {
                s["url"]
                    .as_str()
                    .expect("server url")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect()
    };
    let default_servers = server_urls(&doc["servers"]);
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        let servers = item
            .get("servers")
            .map_or_else(|| default_servers.clone(), server_urls);
        for method in OPENAPI_METHODS {
            let Some(op) = item.get(method) else {
                continue;
            };
            // `security: []` on the operation lifts the document-wide key requirement.
            let needs_key = op
                .get("security")
                .and_then(Value::as_array)
                .is_none_or(|s| !s.is_empty());
            for server in &servers {
                ops.push(DocumentedOperation {
                    template: template.clone(),
                    path: format!("{server}{}", template.replace("{id}", id)),
                    method: method.to_uppercase().parse().expect("method"),
                    needs_key,
                });
            }
        }
    }
    ops
}

/// An HTTP/1.1 upstream in the test process whose answers come from `handler`.
pub async fn serve_upstream<H, Fut, B>(handler: H) -> SocketAddr
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that answers `slow` after `delay`.
pub async fn slow_upstream(delay: Duration) -> SocketAddr {
    serve_upstream(move |_req| async move {
        tokio::time::sleep(delay).await;
        hyper::Response::new(Full::new(Bytes::from_static(b"slow")))
    })
    .await
}

/// An HTTP/1.1 upstream in the test process that answers every request with `body` and echoes
/// a few request details in headers (`x-seen-path`, `x-seen-host`, `x-seen-xff`,
/// `x-seen-method`, `x-seen-request-id`, `x-seen-traceparent`, and `x-seen-custom`: every `x-custom` value, joined).
pub async fn upstream(body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let h = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let resp = hyper::Response::builder()
                        .header("x-seen-path", req.uri().to_string())
                        .header("x-seen-host", h("host"))
                        .header("x-seen-xff", h("x-forwarded-for"))
                        .header("x-seen-connection", h("connection"))
                        .header("x-seen-method", req.method().as_str())
                        .header("x-seen-request-id", h("x-request-id"))
                        .header("x-seen-traceparent", h("traceparent"))
                        .header("x-seen-custom", {
                            let all: Vec<&str> = req
                                .headers()
                                .get_all("x-custom")
                                .iter()
                                .filter_map(|v| v.to_str().ok())
                                .collect();
                            all.join(",")
                        })
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .expect("response");
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// GET through a proxy; `(status, body)`.
pub async fn get_via(
    proxy: SocketAddr,
    path: &str,
    host: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut req = reqwest::Client::new().get(format!("http://{proxy}{path}"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

/// Where the tests find PostgreSQL (trust auth); `POSTERN_TEST_PG_URL` overrides.
pub fn pg_server_url() -> String {
    std::env::var("POSTERN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A fresh database on the shared PostgreSQL server, dropped when this is dropped.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sqlx::Connection;
        let server = pg_server_url();
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {server} ({e}). Start it with: \
                 pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
                )
            });
        let name = format!("postern_it_{:016x}", rand_u64());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        PgDatabase {
            url: format!("{server}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs outside any runtime guarantee; use a small one of our own.
        let url = format!("{}/postgres", pg_server_url());
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::query(&sql).execute(&mut c).await.ok()
            })
        })
        .join();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    h.finish()
}

/// An etcd server of the test's own, on free loopback ports, with its data in `dir`.
pub struct EtcdServer {
    process: Option<Process>,
    pub client: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl EtcdServer {
    pub async fn start(dir: &Path, name: &str) -> EtcdServer {
        assert!(
            Command::new("etcd").arg("--version").output().is_ok(),
            "etcd not installed: apt-get install -y etcd-server (scripts/test.sh does this)"
        );
        let mut etcd = EtcdServer {
            process: None,
            client: free_addr(),
            peer: free_addr(),
            data_dir: dir.join(format!("{name}-data")),
            log: dir.join(format!("{name}.log")),
        };
        etcd.restart().await;
        etcd
    }

    /// `etcd://host:port/prefix` for the control plane.
    pub fn store_url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.client)
    }

    /// SIGKILL (data kept for `restart`).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let args: Vec<String> = vec![
            "--name".into(),
            "test".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client.clone(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("test={peer}"),
        ];
        self.process = Some(Process::spawn_program(
            "etcd",
            "etcd",
            &args,
            self.log.clone(),
        ));
        let health = format!("{client}/health");
        wait_for("etcd to answer", Duration::from_secs(20), || async {
            reqwest::get(&health)
                .await
                .ok()
                .filter(|r| r.status() == 200)
        })
        .await;
    }
}

/// A PostgreSQL server of the test's own (initdb in `dir`, run as the `postgres` user), for
/// tests that stop and start the database.
pub struct PgServer {
    pub port: u16,
    data_dir: PathBuf,
    bin: PathBuf,
    log: PathBuf,
}

impl PgServer {
    pub async fn start(dir: &Path) -> PgServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .find(|p| p.join("initdb").exists())
            })
            .expect("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin");
        let root = dir.join("pg");
        std::fs::create_dir_all(&root).unwrap();
        // The server refuses to run as root: hand the folder to the postgres user.
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(status.success());
        let perm = Command::new("chmod")
            .args(["755"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(perm.success());
        let data_dir = root.join("data");
        let out = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                &data_dir.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = PgServer {
            port: free_addr().port(),
            data_dir,
            bin,
            log: root.join("server.log"),
        };
        server.resume().await;
        server
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// `pg_ctl stop -m immediate`: the server is gone at once, as if it crashed.
    pub fn stop(&self) {
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data_dir.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn resume(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.data_dir.display()
        );
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data_dir.display().to_string(),
                "-l",
                &self.log.display().to_string(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data_dir.display().to_string(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

fn as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("runuser")
}

/// Sends `request` as raw bytes on a new connection and returns everything the server sends
/// back until it closes the connection or 5 s pass (use `Connection: close`).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Counts of a [`start_load`] load generator, read while it runs.
#[derive(Default)]
pub struct Load {
    pub ok: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Unix millis of the last failure.
    pub last_failure: std::sync::atomic::AtomicU64,
    stop: std::sync::atomic::AtomicBool,
}

impl Load {
    /// (served, failed) so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.ok.load(Relaxed), self.failed.load(Relaxed))
    }

    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `clients` keepalive clients sending `GET http://addr{path}` back to back; an answer counts as
/// served when it is a 200 with the body `ok` (what [`upstream`]`("ok")` says).
pub fn start_load(
    addr: SocketAddr,
    path: &str,
    clients: usize,
) -> (std::sync::Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    use std::sync::atomic::Ordering::Relaxed;
    let load = std::sync::Arc::new(Load::default());
    let url = format!("http://{addr}{path}");
    let tasks = (0..clients)
        .map(|_| {
            let (load, url) = (load.clone(), url.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                while !load.stop.load(Relaxed) {
                    let ok = match http.get(&url).send().await {
                        Ok(r) => r.status() == 200 && r.text().await.is_ok_and(|b| b == "ok"),
                        Err(_) => false,
                    };
                    if ok {
                        load.ok.fetch_add(1, Relaxed);
                    } else {
                        load.failed.fetch_add(1, Relaxed);
                        load.last_failure.store(now_ms(), Relaxed);
                    }
                }
            })
        })
        .collect();
    (load, tasks)
}

/// Waits until `load` has served `n` more requests (so traffic is really flowing).
pub async fn flowing(load: &Load, n: u64) {
    let start = load.counts().0;
    wait_for(
        "traffic through the load balancer",
        Duration::from_secs(10),
        || async { (load.counts().0 >= start + n).then_some(()) },
    )
    .await;
}

pub fn haproxy_available() -> bool {
    Command::new("haproxy").arg("-v").output().is_ok()
}

/// HAProxy in front of two data planes on a free address, once it routes `path` to one (200).
pub async fn haproxy_in_front(
    dir: &Path,
    dps: [&DataPlane; 2],
    path: &str,
) -> (SocketAddr, Process) {
    let lb = free_addr();
    let haproxy = start_haproxy(dir, lb, dps);
    wait_for(
        "HAProxy to route to a DP",
        Duration::from_secs(10),
        || async {
            get_via(lb, path, None)
                .await
                .ok()
                .filter(|(c, _)| *c == 200)
        },
    )
    .await;
    (lb, haproxy)
}

/// HAProxy in TCP mode on `bind` in front of two data planes, with deploy/haproxy/haproxy.cfg
/// as committed (health checks on each DP's `/readyz`).
pub fn start_haproxy(dir: &Path, bind: SocketAddr, dps: [&DataPlane; 2]) -> Process {
    assert!(
        haproxy_available(),
        "haproxy is not installed: apt-get install -y haproxy (scripts/test.sh does it)"
    );
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy/haproxy.cfg");
    let log = dir.join("haproxy.log");
    let mut command = Command::new("haproxy");
    command
        .args(["-db", "-f", cfg])
        .env("POSTERN_LB_BIND", bind.to_string())
        .env("POSTERN_DP1", dps[0].proxy.to_string())
        .env("POSTERN_DP2", dps[1].proxy.to_string())
        .env("POSTERN_DP1_STATUS_PORT", dps[0].status.port().to_string())
        .env("POSTERN_DP2_STATUS_PORT", dps[1].status.port().to_string());
    Process::spawn_command("haproxy", command, log)
}
