//! Control-plane settings: CLI flags > `POSTERN_*` env vars > TOML file (`--config`) > defaults.
//!
//! One struct serves both clap and serde, so a flag and its TOML key can never drift apart
//! (`--admin-listen` ⇔ `admin-listen = "…"`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser};
use postern_data_plane::proxy::real_ip::{self, Cidr};
use serde::Deserialize;

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";
pub const DEFAULT_SYNC_LISTEN: &str = "127.0.0.1:9280";
pub const DEFAULT_DEV_PROXY_LISTEN: &str = "127.0.0.1:9080";
pub const DEFAULT_DATA_DIR: &str = "./postern-data";

#[derive(Debug, Parser)]
#[command(
    name = "control-plane",
    version,
    about = "Postern control plane: Admin API, config store and snapshot sync"
)]
pub struct Cli {
    /// TOML file with any of the settings below (keys as the flags, without `--`).
    #[arg(long, env = "POSTERN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: CpOptions,
}

#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CpOptions {
    /// Directory for the SQLite store and the generated admin key [default: ./postern-data]
    #[arg(long, env = "POSTERN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Config store URL: `sqlite://PATH`, `postgres://USER@HOST/DB` or
    /// `etcd://HOST:PORT[,HOST:PORT…]/PREFIX` [default: sqlite://<data-dir>/postern.db]
    #[arg(long, env = "POSTERN_STORE")]
    pub store: Option<String>,
    /// Admin API address [default: 127.0.0.1:9180]
    #[arg(long, env = "POSTERN_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// gRPC sync address data planes connect to [default: 127.0.0.1:9280]
    #[arg(long, env = "POSTERN_SYNC_LISTEN")]
    pub sync_listen: Option<SocketAddr>,
    /// Admin API key (at least 32 characters). Without one, a random key is generated at first
    /// start, kept in <data-dir>/admin.key (mode 0600) and printed once.
    #[arg(long, env = "POSTERN_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// TOML file with more Admin API keys, each with a name and a role (`admin`: read and
    /// write; `viewer`: read only): `[[keys]]` tables of `name`, `key`, `role`. The writes of each
    /// key are recorded in the history under its name.
    #[arg(long, env = "POSTERN_ADMIN_KEYS_FILE")]
    pub admin_keys_file: Option<PathBuf>,
    /// Also run one data plane in this process, synced over the real gRPC path (quick start).
    #[arg(long, env = "POSTERN_DEV", num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
    /// With --dev: the data plane's proxy address [default: 127.0.0.1:9080]
    #[arg(long, env = "POSTERN_PROXY_LISTEN")]
    pub proxy_listen: Option<SocketAddr>,
    /// With --dev: the data plane's status address (/healthz, /readyz) [default: 127.0.0.1:9091]
    #[arg(long, env = "POSTERN_STATUS_LISTEN")]
    pub status_listen: Option<SocketAddr>,
    /// Log format: `text` or `json` [default: text]
    #[arg(long, env = "POSTERN_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// PEM certificate for the sync listener (enables TLS; needs --tls-key)
    #[arg(long, env = "POSTERN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, env = "POSTERN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: data planes must present a client certificate it signed (mutual TLS)
    #[arg(long, env = "POSTERN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Networks allowed to use the Admin API, comma-separated CIDRs (`10.0.0.0/8,127.0.0.1/32`);
    /// others get 403 before any key check. The key is required either way [default: any]
    #[arg(long, env = "POSTERN_ADMIN_ALLOW")]
    pub admin_allow: Option<String>,
    /// PEM certificate chain for the Admin API: serve it over TLS (needs --admin-tls-key)
    #[arg(long, env = "POSTERN_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key for --admin-tls-cert
    #[arg(long, env = "POSTERN_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<PathBuf>,
}

/// Settings after precedence and defaults are applied.
#[derive(Debug, Clone)]
pub struct CpConfig {
    pub data_dir: PathBuf,
    pub store: StoreUrl,
    pub admin_listen: SocketAddr,
    pub sync_listen: SocketAddr,
    pub admin_key: Option<String>,
    pub admin_keys_file: Option<PathBuf>,
    pub dev: bool,
    pub proxy_listen: SocketAddr,
    pub status_listen: SocketAddr,
    pub json_logs: bool,
    /// TLS on the sync listener.
    pub sync_tls: Option<SyncTls>,
    /// Networks allowed to reach the Admin API; empty: any.
    pub admin_allow: Vec<Cidr>,
    /// `(certificate, key)` PEM files: the Admin API over TLS.
    pub admin_tls: Option<(PathBuf, PathBuf)>,
}

/// PEM files for TLS on the sync listener; with `client_ca`, mutual TLS.
#[derive(Debug, Clone)]
pub struct SyncTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    /// The URL as given (sqlx parses it).
    Postgres(String),
    Etcd {
        /// `http://host:port` for each host in the URL; all are used.
        endpoints: Vec<String>,
        /// Key prefix, e.g. `/postern`.
        prefix: String,
    },
}

/// Key prefix when an etcd URL names none.
pub const DEFAULT_ETCD_PREFIX: &str = "/postern";

impl StoreUrl {
    pub fn parse(url: &str) -> anyhow::Result<StoreUrl> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            anyhow::ensure!(
                !path.is_empty(),
                "sqlite:// needs a file path, e.g. sqlite://./postern.db"
            );
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("etcd://") {
            let (hosts, prefix) = match rest.split_once('/') {
                Some((h, p)) if !p.trim_matches('/').is_empty() => {
                    (h, format!("/{}", p.trim_matches('/')))
                }
                Some((h, _)) => (h, DEFAULT_ETCD_PREFIX.to_string()),
                None => (rest, DEFAULT_ETCD_PREFIX.to_string()),
            };
            let endpoints: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("http://{h}"))
                .collect();
            anyhow::ensure!(
                !endpoints.is_empty(),
                "etcd:// needs at least one host:port, e.g. etcd://127.0.0.1:2379/postern"
            );
            return Ok(StoreUrl::Etcd { endpoints, prefix });
        }
        anyhow::bail!(
            "unknown store URL '{}': expected sqlite://PATH, postgres://… or etcd://HOST:PORT[,HOST:PORT]/PREFIX",
            redact(url)
        )
    }
}

/// Hides a password in `scheme://user:password@host`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl CpOptions {
    /// Fills every unset field from `file`.
    fn or(self, file: CpOptions) -> CpOptions {
        CpOptions {
            data_dir: self.data_dir.or(file.data_dir),
            store: self.store.or(file.store),
            admin_listen: self.admin_listen.or(file.admin_listen),
            sync_listen: self.sync_listen.or(file.sync_listen),
            admin_key: self.admin_key.or(file.admin_key),
            admin_keys_file: self.admin_keys_file.or(file.admin_keys_file),
            dev: self.dev.or(file.dev),
            proxy_listen: self.proxy_listen.or(file.proxy_listen),
            status_listen: self.status_listen.or(file.status_listen),
            log_format: self.log_format.or(file.log_format),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_ca: self.tls_ca.or(file.tls_ca),
            admin_allow: self.admin_allow.or(file.admin_allow),
            admin_tls_cert: self.admin_tls_cert.or(file.admin_tls_cert),
            admin_tls_key: self.admin_tls_key.or(file.admin_tls_key),
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("built-in default address")
}

impl Cli {
    /// Applies the precedence rules; reads the TOML file when one is named.
    pub fn resolve(self) -> anyhow::Result<CpConfig> {
        let file = match &self.config {
            Some(path) => read_toml(path)?,
            None => CpOptions::default(),
        };
        let o = self.options.or(file);
        let data_dir = o
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let store = match &o.store {
            Some(url) => StoreUrl::parse(url)?,
            None => StoreUrl::Sqlite(data_dir.join("postern.db")),
        };
        let json_logs = match o.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => anyhow::bail!("--log-format must be 'text' or 'json', not '{other}'"),
        };
        Ok(CpConfig {
            data_dir,
            store,
            admin_listen: o.admin_listen.unwrap_or_else(|| addr(DEFAULT_ADMIN_LISTEN)),
            sync_listen: o.sync_listen.unwrap_or_else(|| addr(DEFAULT_SYNC_LISTEN)),
            admin_key: o.admin_key,
            admin_keys_file: o.admin_keys_file,
            dev: o.dev.unwrap_or(false),
            proxy_listen: o
                .proxy_listen
                .unwrap_or_else(|| addr(DEFAULT_DEV_PROXY_LISTEN)),
            status_listen: o
                .status_listen
                .unwrap_or_else(|| addr(postern_data_plane::config::DEFAULT_STATUS_LISTEN)),
            json_logs,
            sync_tls: match (o.tls_cert, o.tls_key, o.tls_ca) {
                (Some(cert), Some(key), client_ca) => Some(SyncTls {
                    cert,
                    key,
                    client_ca,
                }),
                (None, None, None) => None,
                (None, None, Some(_)) => anyhow::bail!("--tls-ca needs --tls-cert and --tls-key"),
                _ => anyhow::bail!("--tls-cert and --tls-key go together"),
            },
            admin_allow: real_ip::parse_list(o.admin_allow.as_deref().unwrap_or(""))
                .map_err(|e| anyhow::anyhow!("--admin-allow: {e}"))?,
            admin_tls: match (o.admin_tls_cert, o.admin_tls_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => anyhow::bail!("--admin-tls-cert and --admin-tls-key go together"),
            },
        })
    }
}

fn read_toml(path: &Path) -> anyhow::Result<CpOptions> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cp.toml");
        std::fs::write(
            &file,
            "admin-listen = \"127.0.0.1:1111\"\nsync-listen = \"127.0.0.1:2222\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "control-plane",
            "--config",
            file.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:3333",
        ])
        .unwrap();
        let c = cli.resolve().unwrap();
        assert_eq!(c.admin_listen, addr("127.0.0.1:3333"));
        assert_eq!(c.sync_listen, addr("127.0.0.1:2222"));
        assert_eq!(
            c.store,
            StoreUrl::Sqlite(PathBuf::from("./postern-data/postern.db"))
        );
        assert!(!c.dev);
    }

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/control-plane.toml"
        );
        let from_file = Cli::try_parse_from(["control-plane", "--config", example])
            .unwrap()
            .resolve()
            .unwrap();
        let defaults = Cli::try_parse_from(["control-plane"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn unknown_file_keys_and_stores_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cp.toml");
        std::fs::write(&file, "admin-lisen = \"127.0.0.1:1\"\n").unwrap();
        let cli =
            Cli::try_parse_from(["control-plane", "--config", file.to_str().unwrap()]).unwrap();
        assert!(cli.resolve().is_err());
        assert!(StoreUrl::parse("mysql://x").is_err());
        assert!(StoreUrl::parse("etcd://").is_err());
        assert_eq!(
            StoreUrl::parse("etcd://a:2379,b:2379/gw/").unwrap(),
            StoreUrl::Etcd {
                endpoints: vec!["http://a:2379".into(), "http://b:2379".into()],
                prefix: "/gw".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("etcd://a:2379").unwrap(),
            StoreUrl::Etcd {
                endpoints: vec!["http://a:2379".into()],
                prefix: DEFAULT_ETCD_PREFIX.into()
            }
        );
        assert_eq!(
            StoreUrl::parse("postgres://u@h/db").unwrap(),
            StoreUrl::Postgres("postgres://u@h/db".into())
        );
        let e = StoreUrl::parse("mysql://u:secret@h/db")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
