use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{Result, ValidationError};
use super::validate::{check_host, check_id, check_text};

/// An upstream: a set of nodes and how to pick one, in APISIX's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Load-balancing algorithm: `roundrobin` (smooth weighted), `chash` (consistent hashing on
    /// `hash_on`/`key`), `least_conn` (fewest in-flight requests per weight), `ewma` (peak-EWMA
    /// latency, power of two choices).
    #[serde(rename = "type", default)]
    pub balancer: BalancerType,
    /// What `chash` hashes [default: vars].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// `chash`'s key: for `vars` one of `remote_addr`, `uri`, `request_uri`, `host`,
    /// `arg_<name>`, `http_<name>`, `cookie_<name>`; for `header` a header name; for `cookie`
    /// a cookie name. Required with `chash` (except `hash_on: consumer`, which hashes the client
    /// address until authentication plugins name consumers). A request without the key hashes its
    /// client address, as in APISIX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Active and passive health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<super::checks::HealthChecks>,
    /// How many times a failed request is tried again on another node [default: number of
    /// nodes - 1]. Only requests without a body are retried: always after a connect failure,
    /// and after a timeout or broken response only when idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds after the first try within which retries may start [default: 0, no limit].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timeout: Option<f64>,
    /// Idle keepalive connections to the nodes: `{size, idle_timeout, requests}` as in APISIX.
    /// Without it the data plane's shared pool applies (256 idle per node, 60 s, no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_pool: Option<KeepalivePool>,
    /// Postern extension (bulkhead): most requests in flight to this upstream per data plane;
    /// more are answered 503 at once [default: no limit].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Postern extension (with `max_concurrent`): requests that may wait for a place when the
    /// upstream is full, each at most `queue_timeout`; beyond, 503 at once [default: 0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
    /// Seconds a queued request waits for a place before its 503 [default: 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<f64>,
    pub nodes: Nodes,
    /// `http`, `https` (HTTP/1.1 over TLS), `grpc` (HTTP/2 without TLS), `grpcs` (HTTP/2 over
    /// TLS, ALPN h2).
    #[serde(default)]
    pub scheme: Scheme,
    /// TLS to the nodes (`https`/`grpcs`): verification, trusted CAs, SNI, client certificate.
    /// Without it, `https`/`grpcs` verify against the system's trusted CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// How the `Host` header reaches the upstream: `pass` (client's), `node` (the node's address),
    /// `rewrite` (`upstream_host`).
    #[serde(default)]
    pub pass_host: PassHost,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Accepted so that objects read back from the Admin API can be written again unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerType {
    #[default]
    Roundrobin,
    Chash,
    LeastConn,
    Ewma,
}

/// TLS towards an upstream's nodes (APISIX's `tls` object, plus `ca` and `sni`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Verify the node's certificate chain and name [default: true]. `false` accepts any
    /// certificate (encryption without authentication: a test-only setting).
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM certificates of the CAs to trust instead of the system's (e.g. an internal CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The server name sent (SNI) and verified [default: `upstream_host` with `pass_host:
    /// rewrite`, else the node's host; an IP node is verified against the certificate's IP
    /// addresses].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM client certificate (chain) for mutual TLS with the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert` (write-only: never shown by the Admin API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

fn yes() -> bool {
    true
}

/// Largest PEM text accepted in `tls` fields (a CA bundle of a few hundred certificates).
const MAX_PEM_LEN: usize = 1 << 20;

impl UpstreamTls {
    fn validate(&self) -> Result<()> {
        for (field, pem) in [
            ("ca", &self.ca),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ] {
            if let Some(pem) = pem {
                if pem.len() > MAX_PEM_LEN {
                    return Err(ValidationError::new(
                        field,
                        format!("longer than {MAX_PEM_LEN} bytes"),
                    ));
                }
                if !pem.contains("-----BEGIN ") {
                    return Err(ValidationError::new(field, "must be PEM text"));
                }
            }
        }
        super::secrets::check_not_marker("client_key", self.client_key.as_deref())?;
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(ValidationError::new(
                "client_key",
                "client_cert and client_key go together",
            ));
        }
        if let Some(sni) = &self.sni {
            check_host(sni).map_err(|e| e.under("sni"))?;
        }
        Ok(())
    }
}

/// An upstream's own keepalive pool, with APISIX's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepalivePool {
    /// Most idle connections kept per node [default: 320].
    #[serde(default = "default_pool_size")]
    pub size: u32,
    /// Seconds an idle connection is kept [default: 60].
    #[serde(default = "default_pool_idle")]
    pub idle_timeout: f64,
    /// Requests served by one connection before it is closed [default: 1000].
    #[serde(default = "default_pool_requests")]
    pub requests: u32,
}

fn default_pool_size() -> u32 {
    320
}
fn default_pool_idle() -> f64 {
    60.0
}
fn default_pool_requests() -> u32 {
    1000
}

/// What `chash` hashes, as in APISIX.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    #[default]
    Vars,
    Header,
    Cookie,
    Consumer,
    VarsCombinations,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    #[default]
    Http,
    Https,
    Grpc,
    Grpcs,
}

impl Scheme {
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Grpcs)
    }

    /// gRPC: HTTP/2 end to end, with or without TLS.
    pub fn is_grpc(self) -> bool {
        matches!(self, Scheme::Grpc | Scheme::Grpcs)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassHost {
    #[default]
    Pass,
    Node,
    Rewrite,
}

/// Timeouts in seconds (fractions allowed), as in APISIX: `{"connect": 3, "send": 10, "read": 30}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    pub connect: f64,
    pub send: f64,
    pub read: f64,
}

/// Nodes as APISIX accepts them: a map `{"host:port": weight}` or a list of objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Nodes {
    Map(BTreeMap<String, u32>),
    List(Vec<NodeConfig>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// A node after validation: host (name, IPv4 or bracket-less IPv6), port and weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

impl Node {
    /// `host:port`, with brackets around an IPv6 host: the form used in URIs and `Host`.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Largest weight a node may have (as in APISIX).
pub const MAX_WEIGHT: u32 = 65_535;
/// Largest timeout accepted, in seconds: one hour.
pub const MAX_TIMEOUT_SECS: f64 = 3600.0;

impl Timeout {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("connect", self.connect),
            ("send", self.send),
            ("read", self.read),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= MAX_TIMEOUT_SECS) {
                return Err(ValidationError::new(
                    name,
                    format!("must be a number of seconds in (0, {MAX_TIMEOUT_SECS}]"),
                ));
            }
        }
        Ok(())
    }
}

impl UpstreamConfig {
    /// Checks everything serde cannot: supported features, node addresses, ranges.
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            check_id(id).map_err(|e| e.under("id"))?;
        }
        check_text("name", self.name.as_deref())?;
        check_text("desc", self.desc.as_deref())?;
        self.validate_hashing()?;
        if let Some(c) = &self.checks {
            c.validate().map_err(|e| e.under("checks"))?;
        }
        if let Some(t) = self.retry_timeout
            && !(t.is_finite() && (0.0..=MAX_TIMEOUT_SECS).contains(&t))
        {
            return Err(ValidationError::new(
                "retry_timeout",
                format!("must be a number of seconds in [0, {MAX_TIMEOUT_SECS}]"),
            ));
        }
        if let Some(p) = &self.keepalive_pool {
            if p.size == 0 {
                return Err(ValidationError::new(
                    "keepalive_pool.size",
                    "must be at least 1",
                ));
            }
            if p.requests == 0 {
                return Err(ValidationError::new(
                    "keepalive_pool.requests",
                    "must be at least 1",
                ));
            }
            if !(p.idle_timeout.is_finite() && (0.0..=MAX_TIMEOUT_SECS).contains(&p.idle_timeout)) {
                return Err(ValidationError::new(
                    "keepalive_pool.idle_timeout",
                    format!("must be a number of seconds in [0, {MAX_TIMEOUT_SECS}]"),
                ));
            }
        }
        if self.max_concurrent == Some(0) {
            return Err(ValidationError::new("max_concurrent", "must be at least 1"));
        }
        if self.max_queue.is_some_and(|q| q > 0) && self.max_concurrent.is_none() {
            return Err(ValidationError::new(
                "max_queue",
                "needs max_concurrent (the queue is for requests over it)",
            ));
        }
        if let Some(t) = self.queue_timeout
            && !(t.is_finite() && t > 0.0 && t <= 60.0)
        {
            return Err(ValidationError::new(
                "queue_timeout",
                "must be a number of seconds in (0, 60]",
            ));
        }
        if let Some(tls) = &self.tls {
            if !self.scheme.is_tls() {
                return Err(ValidationError::new(
                    "tls",
                    "applies to scheme 'https' or 'grpcs' only",
                ));
            }
            tls.validate().map_err(|e| e.under("tls"))?;
        }
        if let Some(t) = &self.timeout {
            t.validate().map_err(|e| e.under("timeout"))?;
        }
        let nodes = self.resolved_nodes().map_err(|e| e.under("nodes"))?;
        if nodes.is_empty() {
            return Err(ValidationError::new(
                "nodes",
                "at least one node is required",
            ));
        }
        match (self.pass_host, &self.upstream_host) {
            (PassHost::Rewrite, None) => {
                return Err(ValidationError::new(
                    "upstream_host",
                    "required when pass_host is 'rewrite'",
                ));
            }
            (_, Some(h)) => check_host(h).map_err(|e| e.under("upstream_host"))?,
            _ => {}
        }
        Ok(())
    }

    fn validate_hashing(&self) -> Result<()> {
        if self.balancer != BalancerType::Chash {
            return Ok(());
        }
        let hash_on = self.hash_on.unwrap_or_default();
        let key = self.key.as_deref().unwrap_or("");
        match hash_on {
            HashOn::Consumer => Ok(()),
            HashOn::VarsCombinations => Err(ValidationError::new(
                "hash_on",
                "'vars_combinations' is not supported by this version of Postern",
            )),
            _ if key.is_empty() => {
                Err(ValidationError::new("key", "required when type is 'chash'"))
            }
            HashOn::Vars => super::vars::parse_var(key)
                .map(|_| ())
                .map_err(|e| ValidationError::new("key", e.message)),
            HashOn::Header => http::HeaderName::from_bytes(key.as_bytes())
                .map(|_| ())
                .map_err(|_| ValidationError::new("key", "not a valid header name")),
            HashOn::Cookie => {
                if key
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
                {
                    Ok(())
                } else {
                    Err(ValidationError::new("key", "not a valid cookie name"))
                }
            }
        }
    }

    /// The nodes in one shape, each address parsed and checked; default port by scheme.
    pub fn resolved_nodes(&self) -> Result<Vec<Node>> {
        let default_port = match self.scheme {
            Scheme::Https | Scheme::Grpcs => 443,
            Scheme::Http | Scheme::Grpc => 80,
        };
        let nodes: Vec<Node> = match &self.nodes {
            Nodes::Map(map) => map
                .iter()
                .map(|(addr, &weight)| {
                    let (host, port) = parse_address(addr, default_port)
                        .map_err(|m| ValidationError::new(addr.as_str(), m))?;
                    Ok(Node { host, port, weight })
                })
                .collect::<Result<_>>()?,
            Nodes::List(list) => list
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let (host, port) = parse_address(&n.host, default_port)
                        .map_err(|m| ValidationError::new(format!("{i}.host"), m))?;
                    let port = match (n.port, host_has_port(&n.host)) {
                        (Some(_), true) => {
                            return Err(ValidationError::new(
                                format!("{i}.port"),
                                "port given twice (in host and port)",
                            ));
                        }
                        (Some(0), _) => {
                            return Err(ValidationError::new(
                                format!("{i}.port"),
                                "must be 1-65535",
                            ));
                        }
                        (Some(p), false) => p,
                        (None, _) => port,
                    };
                    Ok(Node {
                        host,
                        port,
                        weight: n.weight,
                    })
                })
                .collect::<Result<_>>()?,
        };
        if let Some(n) = nodes.iter().find(|n| n.weight > MAX_WEIGHT) {
            return Err(ValidationError::new(
                n.authority(),
                format!("weight must be 0-{MAX_WEIGHT}"),
            ));
        }
        Ok(nodes)
    }
}

fn host_has_port(addr: &str) -> bool {
    match addr.strip_prefix('[') {
        Some(rest) => rest.contains("]:"),
        None => addr.matches(':').count() == 1,
    }
}

/// Parses `host`, `host:port`, `[v6]` or `[v6]:port`. Returns the host without brackets.
pub fn parse_address(addr: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("'{addr}' is not a valid node address (expected host:port)");
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match addr.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (addr, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("'{addr}': port must be a number 1-65535")),
        },
    };
    if !host.contains(':') {
        check_host(host).map_err(|_| bad())?;
    }
    Ok((host.to_ascii_lowercase(), port))
}
