//! Data-plane settings: CLI flags > `POSTERN_*` env vars > TOML file (`--config`) > defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use serde::Deserialize;

use crate::observability::access_log;
use crate::proxy::normalize::EncodedSlash;
use crate::proxy::real_ip::{self, Cidr};

pub const DEFAULT_CONTROL_PLANE: &str = "http://127.0.0.1:9280";
pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:9080";
pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:9091";
pub const DEFAULT_CACHE_DIR: &str = "./postern-cache";
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_OTLP_SERVICE_NAME: &str = "postern";

#[derive(Debug, Parser)]
#[command(
    name = "data-plane",
    version,
    about = "Postern data plane: syncs config from the control plane and proxies traffic"
)]
pub struct Cli {
    /// TOML file with any of the settings below (keys as the flags, without `--`).
    #[arg(long, env = "POSTERN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: DpOptions,
}

#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DpOptions {
    /// Control plane sync URL, or several comma-separated: the DP streams from one and moves to
    /// the next when it fails or shuts down [default: http://127.0.0.1:9280]
    #[arg(long, env = "POSTERN_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// Proxy address [default: 0.0.0.0:9080]
    #[arg(long, env = "POSTERN_PROXY_LISTEN")]
    pub proxy_listen: Option<SocketAddr>,
    /// TLS proxy address (certificates from the `ssls` resources, by SNI) [default: none]
    #[arg(long, env = "POSTERN_PROXY_LISTEN_TLS")]
    pub proxy_listen_tls: Option<SocketAddr>,
    /// Proxy worker threads, each with its own runtime, accept loop (SO_REUSEPORT) and
    /// upstream connections [default: the number of CPUs]
    #[arg(long, env = "POSTERN_WORKERS")]
    pub workers: Option<usize>,
    /// Status address: /healthz, /readyz, /metrics [default: 127.0.0.1:9091]
    #[arg(long, env = "POSTERN_STATUS_LISTEN")]
    pub status_listen: Option<SocketAddr>,
    /// Where the last applied snapshot is kept, to serve it after a restart while the control
    /// plane is unreachable [default: ./postern-cache]
    #[arg(long, env = "POSTERN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Name of this data plane in the control plane's registry [default: <hostname>-<random>]
    #[arg(long, env = "POSTERN_NODE_ID")]
    pub node_id: Option<String>,
    /// Log format: `text` or `json` [default: text]
    #[arg(long, env = "POSTERN_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// What to do with `%2F` in request paths: `keep` it as data (not a separator) or `reject`
    /// the request with 400 [default: keep]
    #[arg(long, env = "POSTERN_ENCODED_SLASH")]
    pub encoded_slash: Option<String>,
    /// Networks of proxies in front of this DP (comma-separated CIDRs, e.g. `10.0.0.0/8`): from
    /// their connections the client address is taken from `X-Forwarded-For` [default: none]
    #[arg(long, env = "POSTERN_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// PEM CA bundle that signed the control plane's certificate (needed for an https:// URL)
    #[arg(long, env = "POSTERN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to the control plane (mutual TLS; needs --tls-key)
    #[arg(long, env = "POSTERN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, env = "POSTERN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Name to verify in the control plane's certificate [default: the URL's host]
    #[arg(long, env = "POSTERN_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Access log: `off`, `stdout`, or a file path (appended to), one JSON object a line
    /// [default: off]
    #[arg(long, env = "POSTERN_ACCESS_LOG")]
    pub access_log: Option<String>,
    /// Access-log fields, comma-separated, in order [default: time, client, method, host, path,
    /// protocol, status, route, upstream, upstream_ms, duration_ms, bytes_out, request_id,
    /// user_agent]
    #[arg(long, env = "POSTERN_ACCESS_LOG_FIELDS")]
    pub access_log_fields: Option<String>,
    /// On SIGTERM, seconds to keep serving with /readyz answering 503 before the proxy stops
    /// accepting connections, so load balancers take this DP out first [default: 0]
    #[arg(long, env = "POSTERN_SHUTDOWN_DELAY")]
    pub shutdown_delay: Option<f64>,
    /// Seconds in-flight requests get to finish once the proxy stopped accepting [default: 10]
    #[arg(long, env = "POSTERN_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<f64>,
    /// OTLP/gRPC collector for the `opentelemetry` plugin's spans, e.g. `http://otel:4317`
    /// [default: none: spans are counted as dropped]
    #[arg(long, env = "POSTERN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans [default: postern]
    #[arg(long, env = "POSTERN_OTLP_SERVICE_NAME")]
    pub otlp_service_name: Option<String>,
}

/// Settings after precedence and defaults are applied.
#[derive(Debug, Clone)]
pub struct DpConfig {
    pub control_plane: String,
    pub proxy_listen: SocketAddr,
    pub proxy_listen_tls: Option<SocketAddr>,
    /// Proxy worker threads (thread per core: see `workers`).
    pub workers: usize,
    pub status_listen: SocketAddr,
    pub node_id: String,
    pub cache_dir: PathBuf,
    pub json_logs: bool,
    /// TLS to the control plane (`https://` URL).
    pub tls: Option<ClientTls>,
    pub encoded_slash: EncodedSlash,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    pub access_log: Option<access_log::Target>,
    pub access_log_fields: Vec<access_log::Field>,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    pub otlp_endpoint: Option<String>,
    pub otlp_service_name: String,
}

/// PEM files for TLS to the control plane.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("built-in default address")
}

impl Default for DpConfig {
    fn default() -> Self {
        DpConfig {
            control_plane: DEFAULT_CONTROL_PLANE.to_string(),
            proxy_listen: addr(DEFAULT_PROXY_LISTEN),
            proxy_listen_tls: None,
            workers: default_workers(),
            status_listen: addr(DEFAULT_STATUS_LISTEN),
            node_id: default_node_id(),
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            json_logs: false,
            tls: None,
            encoded_slash: EncodedSlash::Keep,
            trusted_proxies: Vec::new(),
            access_log: None,
            access_log_fields: access_log::Field::ALL.to_vec(),
            shutdown_delay: Duration::ZERO,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            otlp_endpoint: None,
            otlp_service_name: DEFAULT_OTLP_SERVICE_NAME.to_string(),
        }
    }
}

/// One proxy worker per CPU this process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `<hostname>-<6 random hex digits>`: unique across restarts, still readable.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "data-plane".to_string());
    format!("{host}-{:06x}", fastrand::u32(..0x100_0000))
}

impl DpOptions {
    fn or(self, file: DpOptions) -> DpOptions {
        DpOptions {
            control_plane: self.control_plane.or(file.control_plane),
            proxy_listen: self.proxy_listen.or(file.proxy_listen),
            proxy_listen_tls: self.proxy_listen_tls.or(file.proxy_listen_tls),
            workers: self.workers.or(file.workers),
            status_listen: self.status_listen.or(file.status_listen),
            node_id: self.node_id.or(file.node_id),
            cache_dir: self.cache_dir.or(file.cache_dir),
            log_format: self.log_format.or(file.log_format),
            encoded_slash: self.encoded_slash.or(file.encoded_slash),
            trusted_proxies: self.trusted_proxies.or(file.trusted_proxies),
            tls_ca: self.tls_ca.or(file.tls_ca),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_server_name: self.tls_server_name.or(file.tls_server_name),
            access_log: self.access_log.or(file.access_log),
            access_log_fields: self.access_log_fields.or(file.access_log_fields),
            shutdown_delay: self.shutdown_delay.or(file.shutdown_delay),
            drain_timeout: self.drain_timeout.or(file.drain_timeout),
            otlp_endpoint: self.otlp_endpoint.or(file.otlp_endpoint),
            otlp_service_name: self.otlp_service_name.or(file.otlp_service_name),
        }
    }
}

impl Cli {
    pub fn resolve(self) -> anyhow::Result<DpConfig> {
        let file = match &self.config {
            Some(path) => read_toml(path)?,
            None => DpOptions::default(),
        };
        let o = self.options.or(file);
        let control_plane = o
            .control_plane
            .unwrap_or_else(|| DEFAULT_CONTROL_PLANE.to_string());
        let urls = split_control_planes(&control_plane);
        let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_string());
        let first_scheme = urls.first().and_then(|u| scheme(u));
        anyhow::ensure!(
            !urls.is_empty() && urls.iter().all(|u| scheme(u) == first_scheme),
            "--control-plane: give one URL or several, comma-separated, all http:// or all https://"
        );
        let tls = match (first_scheme.as_deref(), o.tls_ca) {
            (Some("http"), None) => None,
            (Some("https"), Some(ca)) => Some(ClientTls {
                ca,
                cert: o.tls_cert,
                key: o.tls_key,
                server_name: o.tls_server_name,
            }),
            (Some("https"), None) => anyhow::bail!("an https:// control plane needs --tls-ca"),
            (Some("http"), Some(_)) => {
                anyhow::bail!("--tls-ca is set but --control-plane is http://; use https://")
            }
            _ => anyhow::bail!(
                "--control-plane must be an http:// or https:// URL, got '{control_plane}'"
            ),
        };
        if let Some(t) = &tls {
            anyhow::ensure!(
                t.cert.is_some() == t.key.is_some(),
                "--tls-cert and --tls-key go together"
            );
        }
        let node_id = o.node_id.unwrap_or_else(default_node_id);
        anyhow::ensure!(
            !node_id.is_empty() && node_id.len() <= 128 && !node_id.chars().any(char::is_control),
            "--node-id must be 1-128 printable characters"
        );
        let json_logs = match o.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => anyhow::bail!("--log-format must be 'text' or 'json', not '{other}'"),
        };
        Ok(DpConfig {
            control_plane,
            proxy_listen: o.proxy_listen.unwrap_or_else(|| addr(DEFAULT_PROXY_LISTEN)),
            proxy_listen_tls: o.proxy_listen_tls,
            workers: match o.workers {
                None => default_workers(),
                Some(n) if (1..=1024).contains(&n) => n,
                Some(n) => anyhow::bail!("--workers must be between 1 and 1024, not {n}"),
            },
            status_listen: o
                .status_listen
                .unwrap_or_else(|| addr(DEFAULT_STATUS_LISTEN)),
            node_id,
            cache_dir: o
                .cache_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR)),
            json_logs,
            tls,
            trusted_proxies: real_ip::parse_list(o.trusted_proxies.as_deref().unwrap_or(""))
                .map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))?,
            access_log: match o.access_log.as_deref() {
                None | Some("off") => None,
                Some("stdout") => Some(access_log::Target::Stdout),
                Some("") => anyhow::bail!("--access-log: give 'off', 'stdout' or a file path"),
                Some(path) => Some(access_log::Target::File(PathBuf::from(path))),
            },
            access_log_fields: match o.access_log_fields.as_deref() {
                None => access_log::Field::ALL.to_vec(),
                Some(list) => {
                    let fields = access_log::Field::parse_list(list)
                        .map_err(|e| anyhow::anyhow!("--access-log-fields: {e}"))?;
                    anyhow::ensure!(
                        !fields.is_empty(),
                        "--access-log-fields: name at least one field"
                    );
                    fields
                }
            },
            shutdown_delay: seconds("--shutdown-delay", o.shutdown_delay, Duration::ZERO)?,
            drain_timeout: seconds("--drain-timeout", o.drain_timeout, DEFAULT_DRAIN_TIMEOUT)?,
            otlp_endpoint: match o.otlp_endpoint {
                Some(e) if !(e.starts_with("http://") || e.starts_with("https://")) => {
                    anyhow::bail!("--otlp-endpoint must be an http:// or https:// URL, got '{e}'")
                }
                e => e,
            },
            otlp_service_name: o
                .otlp_service_name
                .unwrap_or_else(|| DEFAULT_OTLP_SERVICE_NAME.to_string()),
            encoded_slash: match o.encoded_slash.as_deref() {
                None | Some("keep") => EncodedSlash::Keep,
                Some("reject") => EncodedSlash::Reject,
                Some(other) => {
                    anyhow::bail!("--encoded-slash must be 'keep' or 'reject', not '{other}'")
                }
            },
        })
    }
}

/// The control plane URLs of `--control-plane` (comma-separated), in the order they are tried.
pub fn split_control_planes(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A duration flag given in seconds: finite, not negative, at most a day.
fn seconds(flag: &str, value: Option<f64>, default: Duration) -> anyhow::Result<Duration> {
    match value {
        None => Ok(default),
        Some(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("{flag} must be between 0 and 86400 seconds, not {s}"),
    }
}

fn read_toml(path: &Path) -> anyhow::Result<DpOptions> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/data-plane.toml"
        );
        let args = ["data-plane", "--config", example, "--node-id", "n"];
        let from_file = Cli::try_parse_from(args).unwrap().resolve().unwrap();
        let defaults = Cli::try_parse_from(["data-plane", "--node-id", "n"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn workers_default_to_the_cpus_and_can_be_set() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().resolve().unwrap();
        assert_eq!(parse(&["data-plane"]).workers, default_workers());
        assert!(default_workers() >= 1);
        assert_eq!(parse(&["data-plane", "--workers", "3"]).workers, 3);
    }

    #[test]
    fn bad_settings_are_refused() {
        for args in [
            vec!["data-plane", "--control-plane", "ftp://x"],
            vec!["data-plane", "--control-plane", "https://x:1"],
            vec!["data-plane", "--control-plane", "http://a:1,https://b:1"],
            vec!["data-plane", "--control-plane", " , "],
            vec!["data-plane", "--tls-ca", "/ca.pem"],
            vec!["data-plane", "--encoded-slash", "maybe"],
            vec!["data-plane", "--log-format", "xml"],
            vec!["data-plane", "--node-id", ""],
            vec!["data-plane", "--trusted-proxies", "10.0.0.0/33"],
            vec!["data-plane", "--access-log-fields", "time,query"],
            vec!["data-plane", "--access-log-fields", ","],
            vec!["data-plane", "--drain-timeout=-1"],
            vec!["data-plane", "--shutdown-delay", "NaN"],
            vec!["data-plane", "--otlp-endpoint", "otel:4317"],
            vec!["data-plane", "--workers", "0"],
        ] {
            let r = Cli::try_parse_from(&args).unwrap().resolve();
            assert!(r.is_err(), "{args:?} was accepted");
        }
    }
}
