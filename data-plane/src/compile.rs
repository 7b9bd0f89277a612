//! Turns a snapshot into a `CompiledConfig`: every resource parsed and validated with the model
//! crate, references resolved, the router built and each upstream's balancer prepared. Runs once
//! per snapshot, off the request path; the proxy only reads the result.
//!
//! Compiling is incremental: when nothing but routes changed since the previous snapshot (the
//! common case at scale: one route edited among thousands), a route whose body is byte-for-byte
//! the previous one is neither parsed nor compiled again; its compiled form and router spec are
//! taken over. Any other change (a service, an upstream, a consumer, a global rule…) recompiles
//! every route, still reusing unchanged upstreams and plugin state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http::uri::Authority;
use postern_proto::model::plugins::{self, prometheus::PrometheusConfig};
use postern_proto::model::{
    BalancerType, ConfigSet, HashOn, PassHost, Resource, ResourceKind, RouteConfig, Timeout,
    UpstreamConfig, ValidationError,
};
use postern_proto::sync::Snapshot;
use smallvec::SmallVec;

use crate::balancer::{Balancer, NodeLoad};
use crate::health::{Health, Target};
use crate::observability::metrics::RouteMetrics;
use crate::plugins::consumers::Consumers;
use crate::plugins::grpc_transcode::Transcoder;
use crate::plugins::{BuildEnv, PluginChain, PluginStates, StateScope};
use crate::router::vars::{Conditions, RequestVars, VarSource};
use crate::router::{RouteSpec, Router};

/// Compile tables hash with foldhash, as the router's do (see `router`).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// APISIX's default for each of connect, send and read.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("resource {kind}/{id}: {source}")]
    Invalid {
        kind: String,
        id: String,
        source: ValidationError,
    },
    #[error("unknown resource kind '{0}'")]
    UnknownKind(String),
    #[error("resource {0}/{1}: body is not valid JSON: {2}")]
    BadJson(String, String, serde_json::Error),
    #[error("inconsistent snapshot: {0}")]
    Inconsistent(ValidationError),
    #[error("router: {0}")]
    Router(String),
}

/// Everything the proxy needs for one config version. Immutable once built; the compiled part
/// is shared, so a new version with the same resources (a write that changed nothing the DP
/// sees) is served by [`CompiledConfig::relabel`] without compiling anything.
pub struct CompiledConfig {
    pub version: u64,
    /// The config store the snapshot came from; with `version`, names the config exactly.
    pub store_id: String,
    /// Routes this compile built anew rather than took over from the previous config: how much
    /// the change was (all of them for a first or whole-context compile; 0 for a relabel).
    pub rebuilt_routes: usize,
    compiled: Arc<Compiled>,
}

impl std::ops::Deref for CompiledConfig {
    type Target = Compiled;

    fn deref(&self) -> &Compiled {
        &self.compiled
    }
}

/// The compiled part of a [`CompiledConfig`].
pub struct Compiled {
    /// Shared with the previous config when no route's matching changed (see `compile`).
    pub router: Arc<Router>,
    /// Indexed by the router's match result.
    /// Each in an `Arc`: a request holds its route by one reference count, not five, and a
    /// recompile takes unchanged routes over by pointer.
    pub routes: Vec<Arc<CompiledRoute>>,
    /// Whether any route has `vars` (when none has, the proxy skips the predicate).
    pub any_vars: bool,
    /// Certificates for the TLS listener, by SNI (`ssls`).
    pub tls: crate::tls::SniCerts,
    /// Every runtime upstream, by what defines it, so the next compile can reuse the unchanged
    /// ones (and with them their balancer position and, later, health and breaker state).
    upstreams: HashMap<UpstreamKey, Arc<Upstream>>,
    /// The upstreams with health checks, sorted by key: the health report walks these each
    /// tick, not every upstream (at 10,000 routes a walk of all of them evicted much of the
    /// request path's data from the caches, for upstreams that have nothing to report).
    checked: Vec<(UpstreamKey, Arc<Upstream>)>,
    /// What each route in `routes` was compiled from (same positions), for the next compile to
    /// take unchanged routes over; shared with it, so taking one over allocates nothing.
    sources: Vec<Arc<RouteSource>>,
    /// Position in `routes` by route id.
    by_id: HashMap<Arc<str>, usize>,
    /// Every resource that is not a route, as (kind, id, body) sorted: when the next snapshot's
    /// are the same, unchanged routes compile to what they compiled to here.
    context: Vec<(String, String, Bytes)>,
}

/// One enabled route as compiled: what it was compiled from and what the next compile needs to
/// take it over without compiling it.
struct RouteSource {
    body: Bytes,
    /// What the router is built from.
    spec: RouteSpec,
    /// Its inline upstream's key, so a reused route's upstream stays among the runtime ones.
    upstream_key: Option<UpstreamKey>,
    /// Plugin state that outlives a snapshot (breakers), carried to the next compile.
    plugin_states: PluginStates,
}

impl CompiledConfig {
    /// The same compiled config under another version: for a snapshot whose resources are
    /// exactly those of this one.
    pub fn relabel(&self, version: u64) -> CompiledConfig {
        CompiledConfig {
            version,
            store_id: self.store_id.clone(),
            rebuilt_routes: 0,
            compiled: self.compiled.clone(),
        }
    }

    /// Node health of every upstream with health checks, for the control plane (sorted, so two
    /// reports of the same state compare equal).
    pub fn health_report(&self) -> postern_proto::sync::HealthReport {
        let upstreams = self
            .checked
            .iter()
            .map(|(key, u)| postern_proto::sync::UpstreamHealth {
                owner: key.owner.as_str().to_string(),
                id: key.id.to_string(),
                nodes: u
                    .health
                    .snapshot()
                    .map(|(address, healthy)| postern_proto::sync::NodeHealth {
                        address: address.to_string(),
                        healthy,
                    })
                    .collect(),
            })
            .collect();
        postern_proto::sync::HealthReport { upstreams }
    }

    /// Every runtime upstream with its nodes' health and load, for `GET /status/upstreams`:
    /// `{"upstreams": [{"owner": "upstreams", "id": "u1", "in_flight": 0, "nodes":
    /// [{"address": "10.0.0.1:80", "healthy": true, "in_flight": 0, "ewma_ms": 1.2}]}]}`.
    pub fn upstreams_status(&self) -> serde_json::Value {
        let mut list: Vec<(&UpstreamKey, &Arc<Upstream>)> = self.upstreams.iter().collect();
        list.sort_by(|a, b| (a.0.owner.as_str(), &a.0.id).cmp(&(b.0.owner.as_str(), &b.0.id)));
        let upstreams: Vec<serde_json::Value> = list
            .into_iter()
            .map(|(key, u)| {
                let nodes: Vec<serde_json::Value> = u
                    .health
                    .snapshot()
                    .zip(&u.loads)
                    .map(|((address, healthy), load)| {
                        serde_json::json!({
                            "address": address,
                            "healthy": healthy,
                            "in_flight": load.in_flight(),
                            "ewma_ms": load.ewma().as_secs_f64() * 1e3,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "owner": key.owner.as_str(),
                    "id": &*key.id,
                    "checked": u.health.checked(),
                    "in_flight": u.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                    "nodes": nodes,
                })
            })
            .collect();
        use std::sync::atomic::Ordering::Relaxed;
        let b = &crate::plugins::api_breaker::BREAKER_METRICS;
        let h = &crate::health::HEALTH_METRICS;
        serde_json::json!({
            "version": self.version,
            "upstreams": upstreams,
            // Process-wide counters since start.
            "breaker_transitions": {
                "opened": b.opened.load(Relaxed),
                "half_opened": b.half_opened.load(Relaxed),
                "closed": b.closed.load(Relaxed),
                "rejected_requests": b.rejected.load(Relaxed),
            },
            "health_checks": {
                "probes": h.probes.load(Relaxed),
                "marked_unhealthy": h.marked_unhealthy.load(Relaxed),
                "marked_healthy": h.marked_healthy.load(Relaxed),
            },
        })
    }
}

/// Which resource defines an upstream (an upstream, or a route/service with an inline one) and
/// a hash of its config: equal keys mean an identical upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UpstreamKey {
    owner: ResourceKind,
    id: Arc<str>,
    config_hash: u64,
}

impl UpstreamKey {
    fn new(owner: ResourceKind, id: &str, cfg: &UpstreamConfig) -> UpstreamKey {
        use std::hash::{Hash, Hasher};
        // The typed config serialises canonically (fixed field order, sorted maps).
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(cfg).unwrap_or_default().hash(&mut h);
        UpstreamKey {
            owner,
            id: id.into(),
            config_hash: h.finish(),
        }
    }
}

/// Builds runtime upstreams, reusing the previous config's where nothing changed.
struct UpstreamBuilder<'a> {
    previous: Option<&'a CompiledConfig>,
    built: HashMap<UpstreamKey, Arc<Upstream>>,
    /// The nodes built so far, by address: upstreams with the same node share its address
    /// bytes, so the clones and compares of a request's node touch one hot allocation rather
    /// than one per upstream.
    nodes: HashMap<String, UpstreamNode>,
}

impl UpstreamBuilder<'_> {
    fn get(
        &mut self,
        owner: ResourceKind,
        id: &str,
        cfg: &UpstreamConfig,
    ) -> Result<Arc<Upstream>, ValidationError> {
        self.get_keyed(UpstreamKey::new(owner, id, cfg), cfg)
    }

    fn get_keyed(
        &mut self,
        key: UpstreamKey,
        cfg: &UpstreamConfig,
    ) -> Result<Arc<Upstream>, ValidationError> {
        if let Some(u) = self.built.get(&key) {
            return Ok(u.clone());
        }
        let reused = self.previous.and_then(|p| p.upstreams.get(&key)).cloned();
        let upstream = match reused {
            Some(u) => u,
            None => Arc::new(Upstream::build(
                cfg,
                &format!("{}/{}", key.owner, key.id),
                &mut self.nodes,
            )?),
        };
        self.built.insert(key, upstream.clone());
        Ok(upstream)
    }
}

#[derive(Clone)]
pub struct CompiledRoute {
    pub id: Arc<str>,
    /// `None` when only plugins answer on this route.
    pub upstream: Option<Arc<Upstream>>,
    pub plugins: Arc<PluginChain>,
    /// `!plugins.is_empty()`, kept here so that a route without plugins never reads `plugins`.
    pub has_plugins: bool,
    pub timeouts: Timeouts,
    /// The route's `vars`; empty when it has none.
    pub vars: Conditions,
    pub metrics: Arc<RouteMetrics>,
    /// `grpc-transcode` (the route's, else its service's): the upstream is called over gRPC.
    pub transcode: Option<Arc<Transcoder>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub send: Duration,
    pub read: Duration,
}

impl Timeouts {
    fn from_config(t: Option<&Timeout>) -> Option<Timeouts> {
        t.map(|t| Timeouts {
            connect: Duration::from_secs_f64(t.connect),
            send: Duration::from_secs_f64(t.send),
            read: Duration::from_secs_f64(t.read),
        })
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_TIMEOUT,
            send: DEFAULT_TIMEOUT,
            read: DEFAULT_TIMEOUT,
        }
    }
}

/// A runtime upstream: its nodes, ready-made for building requests, its balancer, the nodes'
/// load and health, and its active health checker (stopped when this is dropped).
pub struct Upstream {
    // The per-node lists hold one node inline (the usual inline upstream), so a request to an
    // upstream reads one allocation, not four: with thousands of routes, each a cold cache line
    // and TLB entry (scenario d).
    pub nodes: SmallVec<[UpstreamNode; 1]>,
    pub balancer: Balancer,
    weights: SmallVec<[u32; 1]>,
    /// Per node: in-flight requests and latency EWMA.
    pub loads: SmallVec<[NodeLoad; 1]>,
    pub health: Arc<Health>,
    /// `health.checked()`, kept here so that an upstream without checks never reads `health`.
    health_checked: bool,
    pub timeouts: Timeouts,
    pub pass_host: PassHost,
    pub upstream_host: Option<http::HeaderValue>,
    /// `http` (HTTP/1.1) or `grpc` (HTTP/2 without TLS).
    pub scheme: postern_proto::model::Scheme,
    /// What `chash` hashes; `None` for other balancers.
    hash_key: Option<HashKey>,
    /// Further tries after a failed one.
    pub retries: u32,
    /// Retries may start only this long after the first try; `None`: no limit.
    pub retry_timeout: Option<Duration>,
    /// Bulkhead: most requests in flight to this upstream; `None`: no limit.
    pub max_concurrent: Option<u32>,
    /// Requests that may wait for a place beyond `max_concurrent`, and for how long.
    pub max_queue: u32,
    pub queue_timeout: Duration,
    /// Waiting now.
    pub queued: std::sync::atomic::AtomicU32,
    /// Signalled when a request leaves (for the queue).
    pub slot_freed: tokio::sync::Notify,
    /// This upstream's own client (pool) and its requests-per-connection cap, for a
    /// `keepalive_pool` or TLS to the nodes; `None`: the proxy's shared pool. (Boxed: a client
    /// is large and most upstreams have none; thousands of inline upstreams add up.)
    pub pool: Option<Box<(crate::proxy::UpstreamClient, u32)>>,
    /// Requests in flight to this upstream (counted for the bulkhead and the status page).
    pub in_flight: std::sync::atomic::AtomicU32,
    _checker: Option<tokio_util::sync::DropGuard>,
}

/// TLS for `https` active probes: the upstream's own `tls` (CA, SNI, client certificate) when
/// it has one, verification as `https_verify_certificate` says; the name checked is the
/// probe's `host`, else as for requests.
fn probe_tls(
    cfg: &UpstreamConfig,
) -> Result<Option<crate::proxy::upstream_tls::UpstreamTlsSettings>, ValidationError> {
    let Some(active) = cfg.checks.as_ref().and_then(|c| c.active.as_ref()) else {
        return Ok(None);
    };
    if active.check_type != postern_proto::model::checks::CheckType::Https {
        return Ok(None);
    }
    let mut tls = cfg
        .tls
        .clone()
        .unwrap_or(postern_proto::model::UpstreamTls {
            verify: true,
            ca: None,
            sni: None,
            client_cert: None,
            client_key: None,
        });
    tls.verify &= active.https_verify_certificate;
    let name = active.host.as_deref().or(match cfg.pass_host {
        PassHost::Rewrite => cfg.upstream_host.as_deref(),
        _ => None,
    });
    crate::proxy::upstream_tls::settings(Some(&tls), false, name)
        .map(Some)
        .map_err(|(field, e)| ValidationError::new(field, e).under("tls"))
}

/// The upstream's own client, when it needs one: TLS settings are per upstream (a pool shared
/// with other upstreams could hand out a connection made for another name), and so is a
/// `keepalive_pool`.
fn own_client(
    cfg: &UpstreamConfig,
) -> Result<Option<(crate::proxy::UpstreamClient, u32)>, ValidationError> {
    use crate::proxy::{POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST, TimedConnector, pooled_client};
    if !cfg.scheme.is_tls() && cfg.keepalive_pool.is_none() {
        return Ok(None);
    }
    let connector = if cfg.scheme.is_tls() {
        let sni_default = match cfg.pass_host {
            PassHost::Rewrite => cfg.upstream_host.as_deref(),
            _ => None,
        };
        let tls = crate::proxy::upstream_tls::settings(
            cfg.tls.as_ref(),
            cfg.scheme.is_grpc(),
            sni_default,
        )
        .map_err(|(field, e)| ValidationError::new(field, e).under("tls"))?;
        TimedConnector::with_tls(tls)
    } else {
        TimedConnector::new()
    };
    let (size, idle, requests) = match cfg.keepalive_pool {
        Some(p) => (
            usize::try_from(p.size).unwrap_or(usize::MAX),
            Duration::from_secs_f64(p.idle_timeout),
            p.requests,
        ),
        None => (POOL_MAX_IDLE_PER_HOST, POOL_IDLE_TIMEOUT, u32::MAX),
    };
    Ok(Some((
        pooled_client(size, idle, connector, cfg.scheme.is_grpc()),
        requests,
    )))
}

/// `chash`'s key, resolved once.
enum HashKey {
    Var(VarSource),
    /// `hash_on: consumer`: the consumer's name (the client address without one).
    Consumer,
}

#[derive(Clone)]
pub struct UpstreamNode {
    pub authority: Authority,
    /// The `Host` header value for `pass_host: node`.
    pub host_header: http::HeaderValue,
}

impl UpstreamNode {
    fn new(address: &str) -> Result<UpstreamNode, ValidationError> {
        let invalid = |what| ValidationError::new(format!("nodes.{address}"), what);
        Ok(UpstreamNode {
            authority: address
                .parse()
                .map_err(|_| invalid("not a valid authority"))?,
            host_header: http::HeaderValue::from_str(address)
                .map_err(|_| invalid("not a valid Host header"))?,
        })
    }
}

impl Upstream {
    /// `label` names the upstream in metrics: `upstreams/<id>`, or `routes/<id>` / `services/<id>`
    /// for an inline one. `known` holds the nodes this compile built so far, by address, and
    /// gets this upstream's new ones.
    fn build(
        cfg: &UpstreamConfig,
        label: &str,
        known: &mut HashMap<String, UpstreamNode>,
    ) -> Result<Upstream, ValidationError> {
        let resolved = cfg.resolved_nodes().map_err(|e| e.under("nodes"))?;
        let weights: SmallVec<[u32; 1]> = resolved.iter().map(|n| n.weight).collect();
        let names: Vec<String> = resolved.iter().map(|n| n.authority()).collect();
        let nodes = names
            .iter()
            .map(|a| match known.get(a) {
                Some(node) => Ok(node.clone()),
                None => {
                    let node = UpstreamNode::new(a)?;
                    known.insert(a.clone(), node.clone());
                    Ok(node)
                }
            })
            .collect::<Result<SmallVec<_>, ValidationError>>()?;
        let upstream_host = cfg
            .upstream_host
            .as_deref()
            .map(http::HeaderValue::from_str)
            .transpose()
            .map_err(|_| ValidationError::new("upstream_host", "not a valid Host header"))?;
        let hash_key = if cfg.balancer == BalancerType::Chash {
            let key = cfg.key.as_deref().unwrap_or("remote_addr");
            let var = match cfg.hash_on.unwrap_or_default() {
                HashOn::Consumer => None,
                HashOn::Vars | HashOn::VarsCombinations => {
                    Some(postern_proto::model::vars::parse_var(key).map_err(|e| e.under("key"))?)
                }
                HashOn::Header => Some(postern_proto::model::vars::Var::Header(
                    key.to_ascii_lowercase(),
                )),
                HashOn::Cookie => Some(postern_proto::model::vars::Var::Cookie(key.to_string())),
            };
            Some(match var {
                Some(v) => HashKey::Var(VarSource::new(v).map_err(|e| e.under("key"))?),
                None => HashKey::Consumer,
            })
        } else {
            None
        };
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let health = Arc::new(Health::new(cfg.checks.as_ref(), names.clone(), label));
        let health_checked = health.checked();
        let targets = resolved
            .iter()
            .map(|n| {
                let port = cfg
                    .checks
                    .as_ref()
                    .and_then(|c| c.active.as_ref())
                    .and_then(|a| a.port)
                    .unwrap_or(n.port);
                let addr = postern_proto::model::Node { port, ..n.clone() }.authority();
                Target {
                    connect: addr,
                    host: n.authority(),
                }
            })
            .collect();
        let checker = crate::health::spawn_checker(
            &health,
            cfg.checks.as_ref(),
            targets,
            probe_tls(cfg).map_err(|e| e.under("checks.active"))?,
        );
        Ok(Upstream {
            balancer: Balancer::new(cfg.balancer, &weights, &name_refs),
            loads: nodes.iter().map(|_| NodeLoad::default()).collect(),
            nodes,
            weights,
            health,
            health_checked,
            timeouts: Timeouts::from_config(cfg.timeout.as_ref()).unwrap_or_default(),
            pass_host: cfg.pass_host,
            upstream_host,
            scheme: cfg.scheme,
            hash_key,
            retries: cfg
                .retries
                .unwrap_or_else(|| u32::try_from(resolved.len().saturating_sub(1)).unwrap_or(0)),
            retry_timeout: cfg
                .retry_timeout
                .filter(|&t| t > 0.0)
                .map(Duration::from_secs_f64),
            max_concurrent: cfg.max_concurrent,
            max_queue: cfg.max_queue.unwrap_or(0),
            queue_timeout: Duration::from_secs_f64(cfg.queue_timeout.unwrap_or(1.0)),
            queued: std::sync::atomic::AtomicU32::new(0),
            slot_freed: tokio::sync::Notify::new(),
            pool: own_client(cfg)?.map(Box::new),
            in_flight: std::sync::atomic::AtomicU32::new(0),
            _checker: checker,
        })
    }

    /// The hash of this request's `chash` key (0 for other balancers). A request without the
    /// key hashes its client address, as APISIX does.
    pub fn request_hash(
        &self,
        parts: &http::request::Parts,
        client: std::net::IpAddr,
        consumer: Option<&str>,
    ) -> u64 {
        let Some(key) = &self.hash_key else {
            return 0;
        };
        let req = RequestVars { parts, client };
        let value = match key {
            HashKey::Var(v) => v.value(&req),
            HashKey::Consumer => consumer.map(std::borrow::Cow::Borrowed),
        };
        match value {
            Some(v) => crate::balancer::stable_hash(v.as_bytes()),
            None => crate::balancer::stable_hash(client.to_canonical().to_string().as_bytes()),
        }
    }

    /// A node for a request whose key hashes to `hash`, other than those in `tried`: a healthy
    /// one, or any one when no node is healthy (fail open, unless `on_all_unhealthy: reject`). `None` when every node was tried or
    /// has weight 0.
    pub fn pick_node(&self, hash: u64, tried: &[usize]) -> Option<usize> {
        let untried = |i: usize| !tried.contains(&i);
        if !self.health_checked {
            // Without checks no node is ever marked unhealthy.
            return self
                .balancer
                .pick(hash, &self.weights, &self.loads, untried);
        }
        let healthy = self.balancer.pick(hash, &self.weights, &self.loads, |i| {
            untried(i) && self.health.is_healthy(i)
        });
        if healthy.is_some()
            || !self.health.checked()
            || self.health.any_healthy()
            || !self.health.fail_open()
        {
            return healthy;
        }
        self.balancer
            .pick(hash, &self.weights, &self.loads, untried)
    }

    /// A real response (or failure) from node `idx`, for passive health checks.
    pub fn report_passive(&self, idx: usize, outcome: crate::health::Outcome) {
        if self.health_checked {
            self.health.report_passive(idx, outcome);
        }
    }

    /// The next node, as the first try of a request without a hash key would get it.
    pub fn pick(&self) -> Option<&UpstreamNode> {
        self.pick_node(0, &[]).and_then(|i| self.nodes.get(i))
    }
}

/// Parses and validates one resource with the model crate.
fn parse_resource(r: &postern_proto::sync::Resource) -> Result<Resource, CompileError> {
    let kind: ResourceKind = r
        .kind
        .parse()
        .map_err(|_| CompileError::UnknownKind(r.kind.clone()))?;
    let value: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| CompileError::BadJson(r.kind.clone(), r.id.clone(), e))?;
    Resource::parse(kind, &value).map_err(|source| CompileError::Invalid {
        kind: r.kind.clone(),
        id: r.id.clone(),
        source,
    })
}

/// Parses every resource of a snapshot but its routes into a `ConfigSet`, and checks it as a
/// whole. Routes are parsed one at a time as they are compiled (and checked against this set
/// with [`ConfigSet::check_route`]), so that thousands of them are never all held parsed.
fn parse_context(snapshot: &Snapshot) -> Result<ConfigSet, CompileError> {
    let mut set = ConfigSet::default();
    for r in &snapshot.resources {
        if r.kind != ResourceKind::Routes.as_str() {
            set.insert(&r.id, parse_resource(r)?);
        }
    }
    set.check_references().map_err(CompileError::Inconsistent)?;
    Ok(set)
}

/// Every resource of `snapshot` but its routes, as (kind, id, body), sorted.
fn context_of(snapshot: &Snapshot) -> Vec<(String, String, Bytes)> {
    let mut context: Vec<(String, String, Bytes)> = snapshot
        .resources
        .iter()
        .filter(|r| r.kind != ResourceKind::Routes.as_str())
        .map(|r| (r.kind.clone(), r.id.clone(), r.body.clone()))
        .collect();
    context.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    context
}

/// `items` sorted by id, one per id (the last, as a map would keep). A control plane sends
/// routes sorted by id already: then this only checks.
fn by_id_order<T>(mut items: Vec<(&str, T)>) -> Vec<(&str, T)> {
    if items.is_sorted_by(|a, b| a.0 < b.0) {
        return items;
    }
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut out: Vec<(&str, T)> = Vec::with_capacity(items.len());
    for item in items {
        match out.last_mut() {
            Some(last) if last.0 == item.0 => *last = item,
            _ => out.push(item),
        }
    }
    out
}

/// A route to compile, or one compiled before to take over.
enum RouteInput<'a> {
    Source(&'a postern_proto::sync::Resource),
    Reused(&'a Arc<RouteSource>, &'a Arc<CompiledRoute>),
}

/// Compiles a snapshot; upstreams identical to ones in `previous` are shared with it, and so
/// are unchanged routes when nothing but routes changed (see the module's doc).
pub fn compile(
    snapshot: &Snapshot,
    previous: Option<&CompiledConfig>,
) -> Result<CompiledConfig, CompileError> {
    let context = context_of(snapshot);
    let set = parse_context(snapshot)?;
    // Routes by id (the router's tie-break order): each to compile, or to take over when
    // nothing it is compiled against changed.
    let reusable = previous.filter(|p| p.context == context);
    let mut inputs: Vec<(&str, RouteInput)> = Vec::new();
    for r in &snapshot.resources {
        if r.kind != ResourceKind::Routes.as_str() {
            continue;
        }
        let reused = reusable.and_then(|p| {
            let &index = p.by_id.get(r.id.as_str())?;
            let source = p.sources.get(index).filter(|s| s.body == r.body)?;
            Some(RouteInput::Reused(source, p.routes.get(index)?))
        });
        inputs.push((&r.id, reused.unwrap_or(RouteInput::Source(r))));
    }
    let inputs = by_id_order(inputs);
    let rebuilt_routes = inputs
        .iter()
        .filter(|(_, input)| matches!(input, RouteInput::Source(_)))
        .count();
    let mut builder = UpstreamBuilder {
        previous,
        built: HashMap::default(),
        nodes: HashMap::default(),
    };
    let invalid = |kind: &str, id: &str, source: ValidationError| CompileError::Invalid {
        kind: kind.to_string(),
        id: id.to_string(),
        source,
    };

    // Shared upstreams are built once, so every route using one shares its balancer.
    let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::default();
    for (id, cfg) in &set.upstreams {
        let u = builder
            .get(ResourceKind::Upstreams, id, cfg)
            .map_err(|e| invalid("upstreams", id, e))?;
        upstreams.insert(id.as_str(), u);
    }
    let mut service_upstreams: HashMap<&str, Arc<Upstream>> = HashMap::default();
    for (id, svc) in &set.services {
        let u = match (&svc.upstream, &svc.upstream_id) {
            (Some(cfg), _) => Some(
                builder
                    .get(ResourceKind::Services, id, cfg)
                    .map_err(|e| invalid("services", id, e.under("upstream")))?,
            ),
            (None, Some(uid)) => upstreams.get(uid.as_str()).cloned(),
            (None, None) => None,
        };
        if let Some(u) = u {
            service_upstreams.insert(id.as_str(), u);
        }
    }

    // Consumers first: the auth plugins of this snapshot look credentials up in its index.
    let consumers = Consumers::build(&set).map_err(|(id, e)| invalid("consumers", &id, e))?;
    let env = BuildEnv {
        consumers: Arc::new(consumers),
        cache_purges: Arc::new(set.cache_purges.clone()),
    };

    // Each global rule's plugins are built on their own first, so a bad one is reported
    // against the rule rather than against every route.
    for (id, rule) in &set.global_rules {
        PluginChain::build([&rule.plugins], &env).map_err(|e| {
            invalid(
                "global_rules",
                id,
                ValidationError::new("plugins", e.to_string()),
            )
        })?;
    }
    let global_plugins: Vec<&BTreeMap<String, serde_json::Value>> =
        set.global_rules.values().map(|g| &g.plugins).collect();

    let mut routes = Vec::with_capacity(inputs.len());
    let mut sources: Vec<Arc<RouteSource>> = Vec::with_capacity(inputs.len());
    let mut by_id = HashMap::with_capacity_and_hasher(inputs.len(), Default::default());
    for (id, input) in inputs {
        let index = routes.len();
        let source = match input {
            RouteInput::Reused(source, compiled) => {
                if let (Some(key), Some(u)) = (&source.upstream_key, &compiled.upstream) {
                    builder.built.insert(key.clone(), u.clone());
                }
                by_id.insert(compiled.id.clone(), index);
                routes.push(compiled.clone());
                sources.push(source.clone());
                continue;
            }
            RouteInput::Source(r) => r,
        };
        let Resource::Route(route) = parse_resource(source)? else {
            unreachable!("a resource of kind routes parses as a route");
        };
        set.check_route(id, &route)
            .map_err(CompileError::Inconsistent)?;
        if route.status != 1 {
            continue;
        }
        let route = &route;
        let service = route
            .service_id
            .as_deref()
            .and_then(|s| set.services.get(s));
        let mut upstream_key = None;
        let upstream = match (&route.upstream, &route.upstream_id) {
            (Some(cfg), _) => {
                let key = UpstreamKey::new(ResourceKind::Routes, id, cfg);
                upstream_key = Some(key.clone());
                Some(
                    builder
                        .get_keyed(key, cfg)
                        .map_err(|e| invalid("routes", id, e.under("upstream")))?,
                )
            }
            (None, Some(uid)) => Some(upstreams.get(uid.as_str()).cloned().ok_or_else(|| {
                invalid(
                    "routes",
                    id,
                    ValidationError::new("upstream_id", "no such upstream"),
                )
            })?),
            // None: only plugins answer on this route (request-termination, redirect…); the
            // model crate refuses a route with neither an upstream nor plugins.
            (None, None) => route
                .service_id
                .as_deref()
                .and_then(|s| service_upstreams.get(s))
                .cloned(),
        };
        let timeouts = Timeouts::from_config(route.timeout.as_ref())
            .or(upstream.as_ref().map(|u| u.timeouts))
            .unwrap_or_default();
        let no_plugins = BTreeMap::new();
        let service_plugins = service.map(|s| &s.plugins).unwrap_or(&no_plugins);
        // Layers: global rules (by id), the service, the route; a later layer's plugin of the
        // same name replaces an earlier one's.
        let layers = global_plugins
            .iter()
            .copied()
            .chain([service_plugins, &route.plugins]);
        let mut plugin_states = PluginStates::default();
        let mut scope = StateScope {
            route_id: id,
            previous: previous
                .and_then(|p| p.sources.get(*p.by_id.get(id)?))
                .map(|s| &s.plugin_states),
            next: &mut plugin_states,
        };
        let plugins = PluginChain::build_with(layers, &env, &mut scope)
            .map_err(|e| invalid("routes", id, ValidationError::new("plugins", e.to_string())))?;
        let hosts: Vec<String> = if route.host_patterns().next().is_some() {
            route.host_patterns().map(str::to_ascii_lowercase).collect()
        } else {
            service
                .and_then(|s| s.hosts.clone())
                .unwrap_or_default()
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect()
        };
        let spec = RouteSpec {
            id: id.to_string(),
            paths: route.paths().map(str::to_string).collect(),
            hosts,
            methods: methods(route).map_err(|e| invalid("routes", id, e))?,
            priority: route.priority,
        };
        let vars = Conditions::compile(route.vars.as_deref().unwrap_or_default())
            .map_err(|e| invalid("routes", id, e.under("vars")))?;
        let route_id: Arc<str> = id.into();
        // `prometheus.prefer_name` (the nearest layer's) labels the series with the route's name.
        let prefer_name = global_plugins
            .iter()
            .copied()
            .chain([service_plugins, &route.plugins])
            .filter_map(|layer| layer.get("prometheus"))
            .next_back()
            .and_then(|c| plugins::parse::<PrometheusConfig>(c).ok())
            .is_some_and(|c| c.prefer_name);
        let label = match (&route.name, prefer_name) {
            (Some(name), true) => Arc::from(name.as_str()),
            _ => route_id.clone(),
        };
        // Descriptors come compiled with the snapshot's protos (once per snapshot).
        let transcode = [&route.plugins, service_plugins]
            .into_iter()
            .find_map(|layer| layer.get("grpc-transcode"))
            .map(|config| Transcoder::new(config, &set.protos, route.paths()))
            .transpose()
            .map_err(|e| invalid("routes", id, e.under("plugins.grpc-transcode")))?
            .map(Arc::new);
        routes.push(Arc::new(CompiledRoute {
            transcode,
            metrics: RouteMetrics::shared(label, route.service_id.as_deref()),
            id: route_id.clone(),
            upstream,
            timeouts,
            has_plugins: !plugins.is_empty(),
            plugins: Arc::new(plugins),
            vars,
        }));
        by_id.insert(route_id, index);
        sources.push(Arc::new(RouteSource {
            body: source.body.clone(),
            spec,
            upstream_key,
            plugin_states,
        }));
    }
    let router = route_table(previous, &sources)?;
    let any_vars = routes.iter().any(|r| !r.vars.is_empty());
    let tls = crate::tls::SniCerts::build(&set.ssls)
        .map_err(|(id, e)| invalid("ssls", &id, ValidationError::new("key", e)))?;
    let mut checked: Vec<(UpstreamKey, Arc<Upstream>)> = builder
        .built
        .iter()
        .filter(|(_, u)| u.health.checked())
        .map(|(k, u)| (k.clone(), u.clone()))
        .collect();
    checked.sort_by(|a, b| (a.0.owner.as_str(), &a.0.id).cmp(&(b.0.owner.as_str(), &b.0.id)));
    Ok(CompiledConfig {
        version: snapshot.version,
        store_id: snapshot.store_id.clone(),
        rebuilt_routes,
        compiled: Arc::new(Compiled {
            tls,
            router,
            routes,
            any_vars,
            upstreams: builder.built,
            checked,
            sources,
            by_id,
            context,
        }),
    })
}

/// At most this many changed specs are patched into the previous router; more, and it is built
/// whole (a patch copies the router, then redoes each changed route's paths).
const MAX_PATCHED_ROUTES: usize = 64;

/// The router for `sources`. Most edits (plugins, upstream, `desc`) leave every route's paths,
/// hosts, methods and priority as they were: the same specs in the same positions make the
/// same router, which is kept. A few routes changed in place (same ids in the same positions,
/// say a path edited) are patched into a copy of it; anything else builds it whole.
fn route_table(
    previous: Option<&CompiledConfig>,
    sources: &[Arc<RouteSource>],
) -> Result<Arc<Router>, CompileError> {
    let specs = || sources.iter().map(|s| &s.spec).collect::<Vec<&RouteSpec>>();
    let built = |router: Result<Router, crate::router::RouterError>| {
        router
            .map(Arc::new)
            .map_err(|e| CompileError::Router(e.to_string()))
    };
    let Some(p) = previous.filter(|p| p.sources.len() == sources.len()) else {
        return built(Router::build(&specs()));
    };
    let mut changed: Vec<(usize, &RouteSpec)> = Vec::new();
    for (i, (a, b)) in p.sources.iter().zip(sources).enumerate() {
        if Arc::ptr_eq(a, b) || a.spec == b.spec {
            continue;
        }
        if a.spec.id != b.spec.id || changed.len() == MAX_PATCHED_ROUTES {
            return built(Router::build(&specs()));
        }
        changed.push((i, &a.spec));
    }
    if changed.is_empty() {
        return Ok(p.router.clone());
    }
    let specs = specs();
    built(
        p.router
            .patched(&specs, &changed)
            .unwrap_or_else(|| Router::build(&specs)),
    )
}

fn methods(route: &RouteConfig) -> Result<Option<Vec<Method>>, ValidationError> {
    route
        .methods
        .as_ref()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    Method::from_bytes(m.as_bytes())
                        .map_err(|_| ValidationError::new("methods", format!("bad method '{m}'")))
                })
                .collect()
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use postern_proto::sync::Resource;
    use serde_json::json;

    use super::*;

    fn snapshot(version: u64, resources: &[(&str, &str, serde_json::Value)]) -> Snapshot {
        Snapshot {
            version,
            nonce: String::new(),
            resources: resources
                .iter()
                .map(|(kind, id, body)| Resource {
                    kind: kind.to_string(),
                    id: id.to_string(),
                    mod_revision: version,
                    body: body.to_string().into_bytes().into(),
                })
                .collect(),
            store_id: "test".to_string(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_health_report_has_the_checked_upstreams_sorted() {
        let checks = json!({"active": {"http_path": "/health"}});
        let checked = |node: &str| json!({"nodes": {node: 1}, "checks": checks.clone()});
        let config = compile(
            &snapshot(
                1,
                &[
                    ("upstreams", "u2", checked("127.0.0.1:2")),
                    ("upstreams", "u1", checked("127.0.0.1:1")),
                    ("upstreams", "plain", json!({"nodes": {"127.0.0.1:3": 1}})),
                    ("routes", "r1", json!({"uri": "/a", "upstream_id": "u2"})),
                    ("routes", "r2", json!({"uri": "/b", "upstream_id": "plain"})),
                    (
                        "routes",
                        "r3",
                        json!({"uri": "/c", "upstream": checked("127.0.0.1:4")}),
                    ),
                    ("routes", "r4", json!({"uri": "/d", "upstream_id": "u1"})),
                ],
            ),
            None,
        )
        .unwrap();
        let report = config.health_report();
        let listed: Vec<String> = report
            .upstreams
            .iter()
            .map(|u| {
                let nodes: Vec<String> = u
                    .nodes
                    .iter()
                    .map(|n| format!("{} {}", n.address, n.healthy))
                    .collect();
                format!("{}/{}: {}", u.owner, u.id, nodes.join(", "))
            })
            .collect();
        assert_eq!(
            listed,
            [
                "routes/r3: 127.0.0.1:4 true",
                "upstreams/u1: 127.0.0.1:1 true",
                "upstreams/u2: 127.0.0.1:2 true",
            ]
        );
    }

    #[test]
    fn unchanged_upstreams_are_reused_changed_ones_rebuilt() {
        let u1 = json!({"nodes": {"127.0.0.1:1": 1}});
        let r1 = json!({"uri": "/a", "upstream_id": "u1"});
        let r2 = json!({"uri": "/b", "upstream": {"nodes": {"127.0.0.1:2": 1}}});
        let first = compile(
            &snapshot(
                1,
                &[
                    ("upstreams", "u1", u1.clone()),
                    ("routes", "r1", r1.clone()),
                    ("routes", "r2", r2.clone()),
                ],
            ),
            None,
        )
        .unwrap();
        // An unrelated route is added; u1 and r2's inline upstream are unchanged.
        let r3 = json!({"uri": "/c", "upstream_id": "u1"});
        let second = compile(
            &snapshot(
                2,
                &[
                    ("upstreams", "u1", u1),
                    ("routes", "r1", r1.clone()),
                    ("routes", "r2", r2),
                    ("routes", "r3", r3),
                ],
            ),
            Some(&first),
        )
        .unwrap();
        let by_id = |c: &CompiledConfig, id: &str| {
            c.routes
                .iter()
                .find(|r| &*r.id == id)
                .unwrap()
                .upstream
                .clone()
                .unwrap()
        };
        // What each compile built anew: everything, then only the added route.
        assert_eq!((first.rebuilt_routes, second.rebuilt_routes), (2, 1));
        assert_eq!(second.relabel(9).rebuilt_routes, 0);
        assert!(Arc::ptr_eq(&by_id(&first, "r1"), &by_id(&second, "r1")));
        assert!(Arc::ptr_eq(&by_id(&first, "r2"), &by_id(&second, "r2")));
        assert!(
            Arc::ptr_eq(&by_id(&second, "r1"), &by_id(&second, "r3")),
            "one upstream, one balancer"
        );
        // u1 changes: rebuilt, for every route that uses it.
        let third = compile(
            &snapshot(
                3,
                &[
                    ("upstreams", "u1", json!({"nodes": {"127.0.0.1:9": 1}})),
                    ("routes", "r1", r1),
                ],
            ),
            Some(&second),
        )
        .unwrap();
        assert!(!Arc::ptr_eq(&by_id(&second, "r1"), &by_id(&third, "r1")));
        assert_eq!(third.upstreams.len(), 1, "no stale upstream carried over");
        // Another context (an upstream changed): every route is built anew.
        assert_eq!(third.rebuilt_routes, 1);
    }

    #[test]
    fn routes_inherit_from_services_and_disabled_routes_are_left_out() {
        let c = compile(
            &snapshot(
                1,
                &[
                    ("services", "s1", json!({"upstream": {"nodes": {"127.0.0.1:3": 1}}, "hosts": ["svc.example"]})),
                    ("routes", "r1", json!({"uri": "/a", "service_id": "s1"})),
                    ("routes", "off", json!({"uri": "/b", "service_id": "s1", "status": 0})),
                ],
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.routes.len(), 1);
        let m = Method::GET;
        assert_eq!(c.router.find(&m, Some("svc.example"), "/a"), Some(0));
        assert_eq!(
            c.router.find(&m, Some("other.example"), "/a"),
            None,
            "the service's hosts apply"
        );
        assert_eq!(c.router.find(&m, Some("svc.example"), "/b"), None);
        assert_eq!(
            c.routes[0]
                .upstream
                .as_ref()
                .unwrap()
                .pick()
                .unwrap()
                .authority
                .as_str(),
            "127.0.0.1:3"
        );
    }

    fn route<'a>(c: &'a CompiledConfig, id: &str) -> &'a CompiledRoute {
        c.routes.iter().find(|r| &*r.id == id).unwrap()
    }

    #[test]
    fn upstreams_to_one_node_share_its_address_bytes() {
        let node = |c: &CompiledConfig, id: &str, i: usize| {
            let u = route(c, id).upstream.clone().unwrap();
            let a = u.nodes[i].authority.as_str();
            (a.to_string(), a.as_ptr() as usize)
        };
        let c = compile(
            &snapshot(
                1,
                &[
                    ("routes", "r1", json!({"uri": "/a", "upstream": {"nodes": {"127.0.0.1:3": 1}}})),
                    ("routes", "r2", json!({"uri": "/b", "upstream": {"nodes": {"127.0.0.1:3": 1, "127.0.0.1:4": 1}}})),
                    ("routes", "r3", json!({"uri": "/c", "upstream": {"nodes": {"127.0.0.1:4": 1}}})),
                ],
            ),
            None,
        )
        .unwrap();
        let (r1, r2, r3) = (node(&c, "r1", 0), node(&c, "r2", 0), node(&c, "r3", 0));
        assert_eq!(r1.0, "127.0.0.1:3");
        assert_eq!(r1, r2, "one allocation for 127.0.0.1:3");
        assert_eq!(r3, node(&c, "r2", 1), "one allocation for 127.0.0.1:4");
        assert_ne!(r1.1, r3.1);
        // Requests still go to each upstream's own nodes, without health checks.
        let picked = |id: &str| {
            let u = route(&c, id).upstream.clone().unwrap();
            u.pick().unwrap().authority.to_string()
        };
        assert_eq!(picked("r1"), "127.0.0.1:3");
        assert_eq!(picked("r3"), "127.0.0.1:4");
    }

    #[test]
    fn routes_are_ordered_by_id_and_a_repeated_id_keeps_the_last() {
        assert_eq!(
            by_id_order(vec![("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)]),
            vec![("a", 5), ("b", 3), ("c", 4)]
        );
        assert_eq!(
            by_id_order(vec![("a", 1), ("b", 2)]),
            vec![("a", 1), ("b", 2)]
        );
    }

    #[test]
    fn unchanged_routes_are_taken_over_when_only_routes_change() {
        let up = json!({"nodes": {"127.0.0.1:1": 1}});
        let limited = |uri: &str| {
            json!({"uri": uri, "upstream": up,
                   "plugins": {"limit-count": {"count": 5, "time_window": 60}}})
        };
        let first = compile(
            &snapshot(
                1,
                &[
                    ("upstreams", "u1", up.clone()),
                    ("routes", "a", limited("/a")),
                    ("routes", "b", limited("/b")),
                    ("routes", "c", json!({"uri": "/c", "upstream_id": "u1"})),
                ],
            ),
            None,
        )
        .unwrap();
        // b moves to /b2, d is added, c is removed: a is taken over as it was.
        let second = compile(
            &snapshot(
                2,
                &[
                    ("upstreams", "u1", up.clone()),
                    ("routes", "a", limited("/a")),
                    ("routes", "b", limited("/b2")),
                    ("routes", "d", json!({"uri": "/d", "upstream_id": "u1"})),
                ],
            ),
            Some(&first),
        )
        .unwrap();
        let same_chain = |x: &CompiledConfig, y: &CompiledConfig, id: &str| {
            Arc::ptr_eq(&route(x, id).plugins, &route(y, id).plugins)
        };
        assert!(same_chain(&first, &second, "a"), "a is taken over");
        assert!(!same_chain(&first, &second, "b"), "b is compiled again");
        assert!(Arc::ptr_eq(
            route(&first, "a").upstream.as_ref().unwrap(),
            route(&second, "a").upstream.as_ref().unwrap()
        ));
        let find = |c: &CompiledConfig, path: &str| {
            c.router
                .find(&Method::GET, None, path)
                .map(|i| c.routes[i].id.to_string())
        };
        assert_eq!(find(&second, "/a").as_deref(), Some("a"));
        assert_eq!(find(&second, "/b"), None);
        assert_eq!(find(&second, "/b2").as_deref(), Some("b"));
        assert_eq!(find(&second, "/c"), None);
        assert_eq!(find(&second, "/d").as_deref(), Some("d"));
        assert!(
            !Arc::ptr_eq(&first.router, &second.router),
            "b's path changed"
        );
        // A change that leaves every route's matching alone keeps the router.
        let described = compile(
            &snapshot(
                3,
                &[
                    ("upstreams", "u1", up.clone()),
                    ("routes", "a", limited("/a")),
                    (
                        "routes",
                        "b",
                        json!({"uri": "/b2", "upstream": up, "desc": "moved"}),
                    ),
                    ("routes", "d", json!({"uri": "/d", "upstream_id": "u1"})),
                ],
            ),
            Some(&second),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&second.router, &described.router));
        assert!(!same_chain(&second, &described, "b"), "b is compiled again");
        assert_eq!(find(&described, "/b2").as_deref(), Some("b"));
        // The runtime upstreams are exactly those in use: a's and b's inline ones, and u1.
        assert_eq!(second.upstreams.len(), 3);
        assert_eq!(second.sources.len(), 3);

        // A global rule changes what every route runs: nothing is taken over.
        let third = compile(
            &snapshot(
                3,
                &[
                    ("upstreams", "u1", up.clone()),
                    ("routes", "a", limited("/a")),
                    ("routes", "b", limited("/b2")),
                    ("routes", "d", json!({"uri": "/d", "upstream_id": "u1"})),
                    ("global_rules", "g", json!({"plugins": {"request-id": {}}})),
                ],
            ),
            Some(&second),
        )
        .unwrap();
        assert!(!same_chain(&second, &third, "a"));
        for id in ["a", "b", "d"] {
            assert!(
                route(&third, id).plugins.names().any(|n| n == "request-id"),
                "{id} runs the global rule"
            );
        }
        // Upstreams are still shared where unchanged.
        assert!(Arc::ptr_eq(
            route(&second, "d").upstream.as_ref().unwrap(),
            route(&third, "d").upstream.as_ref().unwrap()
        ));
    }

    /// 10,000 routes of `bench/control_plane.py`'s shape: a full compile, then a one-route change
    /// compiled on top of it. Prints the times (`cargo test --release -p postern-data-plane
    /// ten_thousand -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn ten_thousand_routes_full_and_one_route_change() {
        let up = json!({"nodes": {"127.0.0.1:9": 1}});
        let routes: Vec<(String, serde_json::Value)> = (0..10_000)
            .map(|i| {
                (
                    format!("big{i}"),
                    json!({"uri": format!("/big/{i}/*"), "upstream": up}),
                )
            })
            .collect();
        let snap = |version: u64, routes: &[(String, serde_json::Value)]| {
            let list: Vec<(&str, &str, serde_json::Value)> = routes
                .iter()
                .map(|(id, body)| ("routes", id.as_str(), body.clone()))
                .collect();
            snapshot(version, &list)
        };
        let first_snap = snap(1, &routes);
        // Resident pages (of this test process) before and after: what the compiled config
        // costs in memory, allocator slack included.
        let resident_mib = || {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
            let pages: f64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0.0);
            pages * 4096.0 / (1024.0 * 1024.0)
        };
        let before = resident_mib();
        let started = std::time::Instant::now();
        let first = compile(&first_snap, None).unwrap();
        let full = started.elapsed();
        let compiled_mib = resident_mib() - before;
        // 100 one-route changes, each on top of the one before, as a DP applies them: every
        // other one changes only `desc` (the router is kept), the others the route's path (the
        // router is rebuilt).
        let mut current = first;
        let (mut same_paths, mut new_paths, mut assemble) = (Vec::new(), Vec::new(), Vec::new());
        let mut current_snap = first_snap;
        for n in 0..100 {
            let i = n * 7;
            let body = if n % 2 == 0 {
                json!({"uri": format!("/big/{i}/*"), "upstream": up, "desc": format!("change {n}")})
            } else {
                json!({"uri": format!("/big/{i}/v{n}/*"), "upstream": up})
            };
            // As the DP gets it: a delta of one resource, applied to the snapshot it holds.
            let changed = snap(2 + n as u64, &[(routes[i].0.clone(), body)]).resources;
            let started = std::time::Instant::now();
            let resources = postern_proto::delta::apply(&current_snap.resources, changed, &[]);
            assemble.push(started.elapsed().as_secs_f64() * 1e3);
            let next_snap = Snapshot {
                version: 2 + n as u64,
                resources,
                ..current_snap.clone()
            };
            let started = std::time::Instant::now();
            let next = compile(&next_snap, Some(&current)).unwrap();
            let ms = started.elapsed().as_secs_f64() * 1e3;
            current_snap = next_snap;
            if n % 2 == 0 {
                &mut same_paths
            } else {
                &mut new_paths
            }
            .push(ms);
            assert_eq!(next.routes.len(), 10_000);
            current = next;
        }
        let p50 = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[v.len() - 1])
        };
        let (same, same_max) = p50(&mut same_paths);
        let (new, new_max) = p50(&mut new_paths);
        let (delta, delta_max) = p50(&mut assemble);
        println!(
            "10,000 routes: full compile {:.1} ms ({compiled_mib:.1} MiB resident); one-route \
             change p50 / max: delta applied to the snapshot {delta:.2} / {delta_max:.2} ms, \
             then compiled: same paths {same:.1} / {same_max:.1} ms, new path {new:.1} / \
             {new_max:.1} ms",
            full.as_secs_f64() * 1e3,
        );
    }

    /// The response headers a route's plugin chain leaves on an empty 200.
    fn response_headers(c: &CompiledConfig, route: &str) -> http::HeaderMap {
        let r = c.routes.iter().find(|r| &*r.id == route).unwrap();
        let (mut resp, _) = http::Response::new(()).into_parts();
        let mut ctx = crate::plugins::RequestCtx::new("127.0.0.1:1".parse().unwrap(), r.id.clone());
        r.plugins.response(&mut resp, &mut ctx);
        resp.headers
    }

    #[test]
    fn global_rules_reach_every_route_and_route_config_wins() {
        let up = json!({"nodes": {"127.0.0.1:1": 1}});
        let c = compile(
            &snapshot(
                1,
                &[
                    ("services", "s1", json!({"upstream": up})),
                    ("routes", "plain", json!({"uri": "/a", "upstream": up})),
                    ("routes", "in-svc", json!({"uri": "/b", "service_id": "s1"})),
                    (
                        "routes",
                        "own",
                        json!({"uri": "/c", "upstream": up, "plugins": {"response-rewrite":
                            {"headers": {"set": {"X-Route": "own"}}}}}),
                    ),
                    (
                        "global_rules",
                        "g1",
                        json!({"plugins": {"response-rewrite":
                            {"headers": {"set": {"X-Global": "g1"}}}}}),
                    ),
                    ("global_rules", "g2", json!({"plugins": {"request-id": {}}})),
                ],
            ),
            None,
        )
        .unwrap();
        for route in ["plain", "in-svc"] {
            let h = response_headers(&c, route);
            assert_eq!(h.get("x-global").unwrap(), "g1", "{route}");
            let r = c.routes.iter().find(|r| &*r.id == route).unwrap();
            assert!(
                r.plugins.names().any(|n| n == "request-id"),
                "{route}: g2 too"
            );
        }
        // The route's own response-rewrite replaces the global rule's (one instance, not both).
        let h = response_headers(&c, "own");
        assert_eq!(h.get("x-route").unwrap(), "own");
        assert_eq!(h.get("x-global"), None);
        let own = c.routes.iter().find(|r| &*r.id == "own").unwrap();
        assert_eq!(
            own.plugins
                .names()
                .filter(|n| *n == "response-rewrite")
                .count(),
            1
        );
    }
}
