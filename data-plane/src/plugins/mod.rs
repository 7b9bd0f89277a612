//! Plugins: one file per plugin, each implementing [`Plugin`] for the phases it needs. A route's
//! plugins are compiled once per snapshot into a [`PluginChain`] ordered by the priority table
//! of the model crate (`postern_proto::model::plugins::PLUGINS`); the proxy runs the chain's
//! phases in order for every request of the route.
//!
//! Phases, in the order they run:
//! 1. `rewrite` — change the request (path, headers) before anything judges it;
//! 2. `access` — authenticate, authorise, limit: continue or answer early (401, 403, 429…);
//! 3. the upstream call (skipped when a plugin answered);
//! 4. `response` — change the response head (status, headers) or replace its body;
//! 5. `log` — after the response is sent.

pub mod api_breaker;
mod client_control;
mod consumer_restriction;
pub mod consumers;
mod cors;
pub mod grpc_transcode;
mod header_ops;
pub mod idp_client;
pub mod jwks;
pub mod jwt_auth;
mod key_auth;
mod limit_conn;
mod limit_count;
mod limit_req;
mod limiting;
mod openid_connect;
mod opentelemetry;
pub mod proxy_cache;
mod proxy_rewrite;
mod rate_limiting;
mod redirect;
pub mod request_id;
mod request_termination;
mod response_rewrite;
mod staged_headers;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use postern_proto::model::plugins::find_plugin;
use serde_json::Value;
pub use staged_headers::StagedHeaders;

/// Per-request state shared by the plugins of one request.
pub struct RequestCtx {
    pub client_addr: SocketAddr,
    /// The matched route's id.
    pub route_id: Arc<str>,
    /// The server span being recorded, when `opentelemetry` sampled this request.
    pub span: Option<Box<opentelemetry::SpanDraft>>,
    /// Headers to add to the response to the client, whatever produced it (upstream or plugin).
    pub response_headers: StagedHeaders,
    /// Set by a `response` phase to replace the upstream's body.
    pub replace_body: Option<Bytes>,
    /// This request's id, once `request-id` gave it one (for later plugins and logs).
    pub request_id: Option<HeaderValue>,
    /// `Host` for the upstream request, set by `proxy-rewrite`; wins over the upstream's
    /// `pass_host`, which the proxy applies after the plugins ran.
    pub upstream_host: Option<HeaderValue>,
    /// Largest request body the upstream may receive, set by `client-control`: the proxy cuts
    /// off a body that outgrows it (one without `Content-Length`) and answers 413.
    pub max_body_size: Option<u64>,
    /// Set by an auth plugin once it identified the caller; used by limits, restrictions and
    /// the X-Consumer-* headers.
    pub consumer_name: Option<Arc<str>>,
    pub consumer_group: Option<Arc<str>>,
    pub credential_id: Option<Arc<str>>,
    /// Set by the proxy when it tried the upstream (whatever came of it): `response` phases
    /// that judge the upstream (api-breaker) ignore answers given by plugins.
    pub upstream_called: bool,
    /// Held until the request is done with: the proxy moves these into the response body, so
    /// they are dropped once the body has been sent, or when the client goes away mid-request
    /// (e.g. `limit-conn`'s in-flight slot).
    pub held: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// `proxy-cache`'s state for this request (what it found, what it may store).
    pub cache: Option<Box<proxy_cache::CacheCtx>>,
    /// Set by a `response` phase to see the upstream's body as it streams to the client.
    pub body_tap: Option<Box<dyn BodyTap>>,
}

/// Sees an upstream response body's chunks as they go to the client (`proxy-cache` copies
/// them). Dropped without `end` when the body failed, was replaced or the client went away.
pub trait BodyTap: Send + Sync {
    /// One chunk; false to stop seeing the rest (the tap is then dropped).
    fn data(&mut self, chunk: &Bytes) -> bool;
    /// The body ended normally.
    fn end(self: Box<Self>);
}

impl RequestCtx {
    pub fn new(client_addr: SocketAddr, route_id: Arc<str>) -> RequestCtx {
        RequestCtx {
            client_addr,
            route_id,
            span: None,
            response_headers: StagedHeaders::default(),
            replace_body: None,
            request_id: None,
            upstream_host: None,
            max_body_size: None,
            consumer_name: None,
            consumer_group: None,
            credential_id: None,
            upstream_called: false,
            held: Vec::new(),
            cache: None,
            body_tap: None,
        }
    }
}

/// A response a plugin gives instead of the upstream's.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl PluginResponse {
    /// `{"error_msg": message}` with `status`.
    pub fn error(status: StatusCode, message: &str) -> PluginResponse {
        let body = serde_json::json!({ "error_msg": message }).to_string();
        PluginResponse::json(status, Bytes::from(body))
    }

    pub fn json(status: StatusCode, body: Bytes) -> PluginResponse {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        PluginResponse {
            status,
            headers,
            body,
        }
    }
}

/// What a `rewrite` or `access` phase decided.
pub enum Flow {
    Continue,
    /// Answer now; later phases and the upstream are skipped (the `response` and `log` phases
    /// still run).
    Respond(PluginResponse),
}

/// A phase that may have to wait (a Redis round trip, a JWKS fetch). Plugins that never wait
/// return `Ready` and cost no allocation.
pub enum Step<'a> {
    Ready(Flow),
    Pending(Pin<Box<dyn Future<Output = Flow> + Send + 'a>>),
}

impl Step<'_> {
    pub async fn resolve(self) -> Flow {
        match self {
            Step::Ready(f) => f,
            Step::Pending(f) => f.await,
        }
    }
}

/// One compiled plugin instance: its config parsed and checked once, shared by every request.
/// Every method has a default that does nothing, so a plugin implements only its phases.
pub trait Plugin: Send + Sync + 'static {
    /// The name users write (`request-termination`).
    fn name(&self) -> &'static str;

    /// Authenticates or authorises: its refusals count in `postern_auth_failures_total`.
    fn is_auth(&self) -> bool {
        false
    }

    /// Runs first, before any access check: may change the request or answer it.
    fn rewrite(&self, _req: &mut http::request::Parts, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// Runs after every `rewrite`: authentication, authorisation, limits.
    fn access<'a>(
        &'a self,
        _req: &'a mut http::request::Parts,
        _ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        Step::Ready(Flow::Continue)
    }

    /// Runs on the response head (the upstream's, or a plugin's answer) before it is sent.
    fn response(&self, _resp: &mut http::response::Parts, _ctx: &mut RequestCtx) {}

    /// Runs after the response was handed to the client.
    fn log(&self, _ctx: &RequestCtx, _status: StatusCode) {}
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("unknown plugin '{0}'")]
    Unknown(String),
    #[error("plugin '{0}': {1}")]
    Invalid(String, String),
}

/// What plugins may need, when they are built, from the rest of their snapshot.
#[derive(Clone, Default)]
pub struct BuildEnv {
    /// The snapshot's consumers (the auth plugins look credentials up here).
    pub consumers: Arc<consumers::Consumers>,
    /// The snapshot's `cache_purges`, by id: `proxy-cache` applies its route's new ones.
    pub cache_purges: Arc<BTreeMap<String, postern_proto::model::CachePurgeConfig>>,
}

/// State of plugin instances that must outlive one snapshot (a breaker's counters), keyed by
/// route id, plugin name and a hash of the plugin's config: a snapshot that leaves a route's
/// plugin config alone hands the new instance the old one's state; a changed config starts
/// afresh. Built per compile; only the states still in use are carried to the next one.
#[derive(Default, Clone)]
pub struct PluginStates {
    map: HashMap<StateKey, Arc<dyn Any + Send + Sync>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StateKey {
    route: String,
    plugin: &'static str,
    config_hash: u64,
}

/// Where one route's plugins find their state while a snapshot compiles.
pub struct StateScope<'a> {
    pub route_id: &'a str,
    pub previous: Option<&'a PluginStates>,
    pub next: &'a mut PluginStates,
}

impl StateScope<'_> {
    /// The state of `plugin` with `config` on this route: the previous snapshot's if it had
    /// one, else `make()`.
    pub fn state<T: Any + Send + Sync>(
        &mut self,
        plugin: &'static str,
        config: &Value,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        config.to_string().hash(&mut h);
        let key = StateKey {
            route: self.route_id.to_string(),
            plugin,
            config_hash: h.finish(),
        };
        let found = self
            .next
            .map
            .get(&key)
            .or_else(|| self.previous.and_then(|p| p.map.get(&key)))
            .cloned()
            .and_then(|s| s.downcast::<T>().ok());
        let state = found.unwrap_or_else(|| Arc::new(make()));
        self.next.map.insert(key, state.clone());
        state
    }
}

/// Builds one plugin from its config. The model crate has already validated the config; this
/// parses it into the runtime type. `None` for plugins that only configure something the data
/// plane does anyway (`prometheus`: read when the route's metrics are set up).
fn build(
    name: &str,
    config: &Value,
    env: &BuildEnv,
    scope: &mut StateScope<'_>,
) -> Result<Option<Arc<dyn Plugin>>, PluginError> {
    let invalid = |e: postern_proto::model::ValidationError| {
        PluginError::Invalid(name.to_string(), e.to_string())
    };
    Ok(Some(match name {
        "prometheus" => return Ok(None),
        // Not a phase plugin: the route's `Transcoder` (built with the snapshot's protos, see
        // `compile`) changes how the proxy calls the upstream.
        "grpc-transcode" => return Ok(None),
        "request-termination" => {
            Arc::new(request_termination::RequestTermination::new(config).map_err(invalid)?)
        }
        "proxy-rewrite" => Arc::new(proxy_rewrite::ProxyRewrite::new(config).map_err(invalid)?),
        "request-id" => Arc::new(request_id::RequestId::new(config).map_err(invalid)?),
        "response-rewrite" => {
            Arc::new(response_rewrite::ResponseRewrite::new(config).map_err(invalid)?)
        }
        "client-control" => Arc::new(client_control::ClientControl::new(config).map_err(invalid)?),
        "cors" => Arc::new(cors::Cors::new(config).map_err(invalid)?),
        "redirect" => Arc::new(redirect::Redirect::new(config).map_err(invalid)?),
        "opentelemetry" => Arc::new(opentelemetry::OpenTelemetry::new(config).map_err(invalid)?),
        "jwt-auth" => {
            Arc::new(jwt_auth::JwtAuth::new(config, env.consumers.clone()).map_err(invalid)?)
        }
        "key-auth" => {
            Arc::new(key_auth::KeyAuth::new(config, env.consumers.clone()).map_err(invalid)?)
        }
        "openid-connect" => Arc::new(
            openid_connect::OpenIdConnect::new(config, env.consumers.clone(), scope)
                .map_err(invalid)?,
        ),
        "consumer-restriction" => {
            Arc::new(consumer_restriction::ConsumerRestriction::new(config).map_err(invalid)?)
        }
        "api-breaker" => Arc::new(api_breaker::ApiBreaker::new(config, scope).map_err(invalid)?),
        "limit-count" => Arc::new(limit_count::LimitCount::new(config).map_err(invalid)?),
        "limit-req" => Arc::new(limit_req::LimitReq::new(config).map_err(invalid)?),
        "limit-conn" => Arc::new(limit_conn::LimitConn::new(config).map_err(invalid)?),
        "rate-limiting" => Arc::new(rate_limiting::RateLimiting::new(config).map_err(invalid)?),
        "proxy-cache" => {
            Arc::new(proxy_cache::ProxyCache::new(config, env, scope).map_err(invalid)?)
        }
        other => return Err(PluginError::Unknown(other.to_string())),
    }))
}

/// `postern_auth_failures_total{route, plugin, reason}` for an answer an auth plugin gave.
fn count_auth_failure(plugin: &'static str, route: &str, status: StatusCode) {
    let reason = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        s if s.is_server_error() => "unavailable",
        _ => "other",
    };
    crate::observability::metrics::METRICS
        .auth_failures
        .with_label_values(&[route, plugin, reason])
        .inc();
}

/// A route's plugins, highest priority first.
#[derive(Default)]
pub struct PluginChain {
    plugins: Vec<Arc<dyn Plugin>>,
}

impl PluginChain {
    /// Merges plugin maps, later maps overriding earlier ones by name (service, then route), and
    /// orders the result by priority.
    pub fn build<'a>(
        layers: impl IntoIterator<Item = &'a BTreeMap<String, Value>>,
        env: &BuildEnv,
    ) -> Result<PluginChain, PluginError> {
        let mut states = PluginStates::default();
        let mut scope = StateScope {
            route_id: "",
            previous: None,
            next: &mut states,
        };
        PluginChain::build_with(layers, env, &mut scope)
    }

    /// As `build`, with plugin state carried over from the previous snapshot.
    pub fn build_with<'a>(
        layers: impl IntoIterator<Item = &'a BTreeMap<String, Value>>,
        env: &BuildEnv,
        scope: &mut StateScope<'_>,
    ) -> Result<PluginChain, PluginError> {
        let mut merged: BTreeMap<&str, &Value> = BTreeMap::new();
        for layer in layers {
            for (name, config) in layer {
                merged.insert(name, config);
            }
        }
        let mut plugins = Vec::with_capacity(merged.len());
        for (name, config) in merged {
            let spec = find_plugin(name).ok_or_else(|| PluginError::Unknown(name.to_string()))?;
            if let Some(plugin) = build(name, config, env, scope)? {
                plugins.push((spec.priority, plugin));
            }
        }
        plugins.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
        Ok(PluginChain {
            plugins: plugins.into_iter().map(|(_, p)| p).collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.iter().map(|p| p.name())
    }

    /// The `rewrite` then `access` phases; `Some` when a plugin answered.
    pub async fn request(
        &self,
        req: &mut http::request::Parts,
        ctx: &mut RequestCtx,
    ) -> Option<PluginResponse> {
        for p in &self.plugins {
            if let Flow::Respond(r) = p.rewrite(req, ctx) {
                return Some(r);
            }
        }
        for p in &self.plugins {
            // Matched here rather than with `resolve`: its future would copy the step (a
            // `Flow`, 136 bytes) for every plugin, even for the ones that never wait.
            let flow = match p.access(req, ctx) {
                Step::Ready(flow) => flow,
                Step::Pending(wait) => wait.await,
            };
            if let Flow::Respond(r) = flow {
                if p.is_auth() {
                    count_auth_failure(p.name(), &ctx.route_id, r.status);
                }
                return Some(r);
            }
        }
        None
    }

    pub fn response(&self, resp: &mut http::response::Parts, ctx: &mut RequestCtx) {
        // The cache stores the upstream's head as it came, not as later plugins change it.
        if let Some(c) = ctx.cache.as_mut() {
            c.capture_head(resp);
        }
        for p in &self.plugins {
            p.response(resp, ctx);
        }
        ctx.response_headers.apply_to(&mut resp.headers);
    }

    pub fn log(&self, ctx: &RequestCtx, status: StatusCode) {
        for p in &self.plugins {
            p.log(ctx, status);
        }
    }
}
