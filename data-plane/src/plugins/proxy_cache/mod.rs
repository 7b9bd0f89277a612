//! `proxy-cache`: answers from a per-route cache in the `access` phase; on a miss, the upstream's
//! response is copied into the cache as it streams to the client (a [`BodyTap`] on the
//! upstream body), when its status, method and `Cache-Control` allow and its body fits
//! `cache_max_body`. Responses that will not be stored are never buffered.
//!
//! Concurrent misses for one key wait for the first one's response (request coalescing): one
//! upstream request fills the entry, the others are answered from it. On a route where an auth
//! plugin identified a consumer, the consumer is part of the stored variant unless `cache_key`
//! names `$consumer_name` itself, so one consumer's response never reaches another.
//!
//! The store outlives snapshots that leave the plugin's config alone; purges (`cache_purges`
//! resources) are applied by each data plane when a snapshot brings them.

mod control;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::proxy_cache::{
    CachePart, CacheStrategy, ProxyCacheConfig, parse_parts,
};
use serde_json::Value;

use super::{BodyTap, BuildEnv, Flow, Plugin, PluginResponse, RequestCtx, StateScope, Step};
use crate::observability::metrics::CacheMetrics;
use crate::ratelimit::key::{Var, compile, push_var};
use store::{BodyAt, Entry, FillGuard, Filled, Join, Store};

/// The response header that says what the cache did.
pub const STATUS_HEADER: HeaderName = HeaderName::from_static("x-postern-cache-status");
/// Longest a miss waits for another request fetching the same key before going upstream itself.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

enum Part {
    Text(String),
    RequestUri,
    Var(Var),
}

fn compile_parts(field: &str, items: &[String]) -> Result<Vec<Part>, ValidationError> {
    parse_parts(field, items)?
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(match p {
                CachePart::Text(t) => Part::Text(t),
                CachePart::RequestUri => Part::RequestUri,
                CachePart::Var(v) => {
                    Part::Var(compile(v).map_err(|e| e.under(&format!("{field}.{i}")))?)
                }
            })
        })
        .collect()
}

/// The parts' values concatenated (a missing variable is empty).
fn resolve(parts: &[Part], req: &http::request::Parts, ctx: &RequestCtx) -> String {
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Text(t) => out.push_str(t),
            Part::RequestUri => out.push_str(
                req.uri
                    .path_and_query()
                    .map_or_else(|| req.uri.path(), |pq| pq.as_str()),
            ),
            Part::Var(v) => {
                push_var(&mut out, v, req, ctx);
            }
        }
    }
    out
}

/// `cache_bypass` / `no_cache`: any piece with a value other than empty or `0`.
fn any_set(parts: &[Part], req: &http::request::Parts, ctx: &RequestCtx) -> bool {
    parts.iter().any(|p| {
        let v = resolve(std::slice::from_ref(p), req, ctx);
        !v.is_empty() && v != "0"
    })
}

/// What the cache did for one request (the `X-Postern-Cache-Status` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Hit,
    Miss,
    Expired,
    Bypass,
    /// An expired entry answered because the upstream failed.
    Stale,
}

impl Status {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Expired => "EXPIRED",
            Status::Bypass => "BYPASS",
            Status::Stale => "STALE",
        })
    }
}

/// Per-request state, in `RequestCtx::cache`.
pub struct CacheCtx {
    status: Status,
    fill: Option<Fill>,
    /// The expired entry, answered instead of an upstream error (`stale_on_error`).
    stale: Option<Arc<Entry>>,
}

/// A miss that may be stored once the response is in.
struct Fill {
    key: String,
    /// Method and (when added automatically) consumer: the variant before `Vary`.
    base: String,
    request_headers: HeaderMap,
    /// The upstream's head as it came, before other plugins' response phases changed it.
    head: Option<(StatusCode, HeaderMap)>,
    head_request: bool,
    /// Leads the fetch for coalesced requests (none: the lock was not taken).
    guard: Option<FillGuard>,
}

impl CacheCtx {
    /// Keeps the upstream's response head (called before any response phase runs).
    pub fn capture_head(&mut self, resp: &http::response::Parts) {
        if let Some(f) = self.fill.as_mut() {
            f.head = Some((resp.status, resp.headers.clone()));
        }
    }
}

pub struct ProxyCache {
    store: Arc<Store>,
    key: Vec<Part>,
    bypass: Vec<Part>,
    no_cache: Vec<Part>,
    get: bool,
    head: bool,
    statuses: Vec<u16>,
    ttl: Duration,
    follow_ttl: bool,
    hide_headers: bool,
    stale_on_error: bool,
    max_body: u64,
    /// Add the consumer to the variant (the key does not name it).
    add_consumer: bool,
}

impl ProxyCache {
    pub fn new(
        config: &Value,
        env: &BuildEnv,
        scope: &mut StateScope<'_>,
    ) -> Result<ProxyCache, ValidationError> {
        let c: ProxyCacheConfig = postern_proto::model::plugins::parse(config)?;
        let route = scope.route_id.to_string();
        let dir = match (c.cache_strategy, &c.cache_dir) {
            (CacheStrategy::Disk, Some(d)) => {
                // One directory per process, route and config: stores never share files.
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                config.to_string().hash(&mut h);
                let safe: String = route
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                Some(std::path::Path::new(d).join(format!(
                    "{}-{safe}-{:016x}",
                    std::process::id(),
                    h.finish()
                )))
            }
            _ => None,
        };
        let store = scope.state("proxy-cache", config, || {
            let metrics = Arc::new(CacheMetrics::new(&route));
            Store::new(c.cache_size, c.cache_max_body, dir, metrics)
        });
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (id, purge) in env.cache_purges.iter() {
            if purge.route_id == route && purge.expires_at > now {
                store.apply_purge(id, purge.key.as_deref());
            }
        }
        Ok(ProxyCache {
            store,
            key: compile_parts("cache_key", &c.cache_key)?,
            bypass: compile_parts("cache_bypass", &c.cache_bypass)?,
            no_cache: compile_parts("no_cache", &c.no_cache)?,
            get: c.cache_method.iter().any(|m| m == "GET"),
            head: c.cache_method.iter().any(|m| m == "HEAD"),
            statuses: c.cache_http_status.clone(),
            ttl: Duration::from_secs(c.cache_ttl),
            follow_ttl: c.cache_control,
            hide_headers: c.hide_cache_headers,
            stale_on_error: c.stale_on_error,
            max_body: c.cache_max_body,
            add_consumer: !c.key_names_consumer(),
        })
    }

    fn variant(base: &str, vary: &[HeaderName], headers: &HeaderMap) -> String {
        let mut v = base.to_string();
        for name in vary {
            v.push('\n');
            for (i, value) in headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    v.push(',');
                }
                v.push_str(&String::from_utf8_lossy(value.as_bytes()));
            }
        }
        v
    }

    /// The cached entry for this request, fresh or expired.
    fn lookup(&self, key: &str, base: &str, headers: &HeaderMap) -> Option<Arc<Entry>> {
        self.store
            .get(key, |vary| Self::variant(base, vary, headers))
    }

    /// The stored response as an answer; `None` when its file is gone (evicted meanwhile).
    async fn answer(&self, entry: &Entry, head_request: bool) -> Option<PluginResponse> {
        let body = match &entry.body {
            BodyAt::Memory(b) => b.clone(),
            BodyAt::File(path) => Bytes::from(tokio::fs::read(path).await.ok()?),
        };
        let mut headers = entry.headers.clone();
        let age = entry.stored.elapsed().as_secs();
        headers.insert(header::AGE, HeaderValue::from(age));
        Some(PluginResponse {
            status: entry.status,
            headers,
            body: if head_request { Bytes::new() } else { body },
        })
    }

    async fn serve_or_fill(
        &self,
        key: String,
        base: String,
        req: &http::request::Parts,
        ctx: &mut RequestCtx,
        store_it: bool,
    ) -> Flow {
        let head_request = req.method == Method::HEAD;
        let found = self.lookup(&key, &base, &req.headers);
        let now = Instant::now();
        if let Some(entry) = found.as_ref().filter(|e| e.expires > now)
            && let Some(answer) = self.answer(entry, head_request).await
        {
            return self.hit(ctx, answer);
        }
        let mut status = if found.is_some() {
            Status::Expired
        } else {
            Status::Miss
        };
        let mut guard = None;
        let lock_key = format!("{key}\n{base}");
        if store_it && !self.store.is_pass(&lock_key) {
            match self.store.join(lock_key.clone()) {
                Join::Lead(g) => guard = Some(g),
                Join::Wait(mut rx) => {
                    let filled = tokio::time::timeout(LOCK_TIMEOUT, async {
                        rx.wait_for(|f| *f != Filled::Pending).await.map(|f| *f)
                    })
                    .await;
                    if let Ok(Ok(Filled::Stored)) = filled
                        && let Some(entry) = self.lookup(&key, &base, &req.headers)
                        && let Some(answer) = self.answer(&entry, head_request).await
                    {
                        return self.hit(ctx, answer);
                    }
                    // Not stored (or varied differently): fetch for ourselves and store if we
                    // can; lead later misses only if nobody else has taken the lead already.
                    if let Join::Lead(g) = self.store.join(lock_key) {
                        guard = Some(g);
                    }
                    status = Status::Miss;
                }
            }
        }
        match status {
            Status::Expired => self.store.metrics.expired.inc(),
            _ => self.store.metrics.misses.inc(),
        }
        let stale = found.filter(|_| self.stale_on_error && status == Status::Expired);
        ctx.cache = Some(Box::new(CacheCtx {
            status,
            stale,
            fill: store_it.then(|| Fill {
                key,
                base,
                request_headers: req.headers.clone(),
                head: None,
                head_request,
                guard,
            }),
        }));
        Flow::Continue
    }

    fn hit(&self, ctx: &mut RequestCtx, answer: PluginResponse) -> Flow {
        self.store.metrics.hits.inc();
        ctx.cache = Some(Box::new(CacheCtx {
            status: Status::Hit,
            fill: None,
            stale: None,
        }));
        Flow::Respond(answer)
    }

    /// The body tap that stores this response, when it may be stored.
    fn tap_for(&self, fill: Fill, ctx: &RequestCtx) -> Option<Tap> {
        let (status, mut headers) = fill.head?;
        if !self.statuses.contains(&status.as_u16()) {
            return None;
        }
        // A consumer identified by an auth plugin is part of the variant: its credentials
        // cannot leak, so `Authorization` (jwt-auth's) does not forbid storing.
        let authorized =
            fill.request_headers.contains_key(header::AUTHORIZATION) && ctx.consumer_name.is_none();
        let ttl = match control::storable(&headers, authorized, self.follow_ttl, SystemTime::now())
        {
            control::Storable::Yes(ttl) => ttl.unwrap_or(self.ttl),
            control::Storable::No(why) => {
                tracing::debug!(route = %ctx.route_id, why, "proxy-cache: response not stored");
                return None;
            }
        };
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if !fill.head_request && length.is_some_and(|l| l > self.max_body) {
            return None;
        }
        let vary: Arc<[HeaderName]> = control::vary(&headers)?.into();
        let variant = Self::variant(&fill.base, &vary, &fill.request_headers);
        headers.remove(header::TRANSFER_ENCODING);
        headers.remove(STATUS_HEADER);
        Some(Tap {
            store: self.store.clone(),
            key: fill.key,
            vary,
            variant,
            status,
            headers,
            body: BytesMut::new(),
            max: if fill.head_request { 0 } else { self.max_body },
            keep_length: fill.head_request,
            ttl,
            guard: None,
        })
    }
}

impl Plugin for ProxyCache {
    fn name(&self) -> &'static str {
        "proxy-cache"
    }

    fn access<'a>(
        &'a self,
        req: &'a mut http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        let cacheable = match req.method {
            Method::GET => self.get,
            Method::HEAD => self.head,
            _ => false,
        };
        if !cacheable {
            return Step::Ready(Flow::Continue);
        }
        let key = resolve(&self.key, req, ctx);
        let mut base = req.method.as_str().to_string();
        if self.add_consumer
            && let Some(c) = &ctx.consumer_name
        {
            base.push('\n');
            base.push_str(c);
        }
        let store_it = !any_set(&self.no_cache, req, ctx);
        if any_set(&self.bypass, req, ctx) {
            // As nginx's proxy_cache_bypass: not read from the cache, but the answer is stored
            // (a way to refresh an entry), without waiting for other misses.
            self.store.metrics.bypasses.inc();
            ctx.cache = Some(Box::new(CacheCtx {
                stale: None,
                status: Status::Bypass,
                fill: store_it.then(|| Fill {
                    key,
                    base,
                    request_headers: req.headers.clone(),
                    head: None,
                    head_request: req.method == Method::HEAD,
                    guard: None,
                }),
            }));
            return Step::Ready(Flow::Continue);
        }
        Step::Pending(Box::pin(self.serve_or_fill(key, base, req, ctx, store_it)))
    }

    fn response(&self, resp: &mut http::response::Parts, ctx: &mut RequestCtx) {
        let Some(mut state) = ctx.cache.take() else {
            return;
        };
        if let Some(mut fill) = state.fill.take()
            && ctx.upstream_called
        {
            let guard = fill.guard.take();
            match self.tap_for(fill, ctx) {
                Some(mut tap) => {
                    tap.guard = guard;
                    ctx.body_tap = Some(Box::new(tap));
                }
                // Requests for this key stop waiting for each other for a while.
                None => guard.into_iter().for_each(FillGuard::uncacheable),
            }
        }
        if let Some(stale) = state.stale.take()
            && ctx.upstream_called
            && resp.status.is_server_error()
            && let Some(body) = stale_body(&stale)
        {
            self.store.metrics.stale.inc();
            resp.status = stale.status;
            resp.headers = stale.headers.clone();
            resp.headers.insert(
                header::AGE,
                HeaderValue::from(stale.stored.elapsed().as_secs()),
            );
            ctx.replace_body = Some(body);
            state.status = Status::Stale;
        }
        resp.headers.insert(STATUS_HEADER, state.status.header());
        if self.hide_headers {
            resp.headers.remove(header::CACHE_CONTROL);
            resp.headers.remove(header::EXPIRES);
        }
    }
}

/// An entry's body for a stale answer (from a `response` phase, which cannot wait: a disk
/// entry's file is read in place, at most `cache_max_body`).
fn stale_body(entry: &Entry) -> Option<Bytes> {
    match &entry.body {
        BodyAt::Memory(b) => Some(b.clone()),
        BodyAt::File(path) => std::fs::read(path).ok().map(Bytes::from),
    }
}

/// Copies a response body into the store as it streams; gives up (keeping nothing) when it
/// outgrows `max` or the stream fails.
struct Tap {
    store: Arc<Store>,
    key: String,
    vary: Arc<[HeaderName]>,
    variant: String,
    status: StatusCode,
    headers: HeaderMap,
    body: BytesMut,
    max: u64,
    /// A HEAD answer: keep the upstream's Content-Length (of the body it did not send).
    keep_length: bool,
    ttl: Duration,
    guard: Option<FillGuard>,
}

impl BodyTap for Tap {
    fn data(&mut self, chunk: &Bytes) -> bool {
        if (self.body.len() + chunk.len()) as u64 > self.max {
            if let Some(g) = self.guard.take() {
                g.uncacheable();
            }
            return false;
        }
        self.body.extend_from_slice(chunk);
        true
    }

    fn end(self: Box<Self>) {
        let mut tap = *self;
        let body = std::mem::take(&mut tap.body).freeze();
        if !tap.keep_length {
            tap.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let header_bytes: usize = tap
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        let size = (body.len() + header_bytes + tap.key.len() + tap.variant.len()) as u64 + 128;
        let now = Instant::now();
        let mut entry = Entry {
            status: tap.status,
            headers: std::mem::take(&mut tap.headers),
            body: BodyAt::Memory(Bytes::new()),
            stored: now,
            expires: now + tap.ttl,
            size,
        };
        if !tap.store.is_disk() {
            entry.body = BodyAt::Memory(body);
            tap.store
                .insert(&tap.key, tap.vary.clone(), tap.variant.clone(), entry);
            if let Some(g) = tap.guard.as_mut() {
                g.stored();
            }
            return;
        }
        // Files are written off the async workers; waiters wake when the entry is in.
        tokio::task::spawn_blocking(move || {
            let Some(path) = tap.store.file_path() else {
                return;
            };
            if let Err(e) = std::fs::write(&path, &body) {
                tracing::warn!(path = %path.display(), error = %e, "proxy-cache: cannot write an entry");
                return;
            }
            entry.body = BodyAt::File(path);
            tap.store
                .insert(&tap.key, tap.vary.clone(), tap.variant.clone(), entry);
            if let Some(g) = tap.guard.as_mut() {
                g.stored();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_conditions_resolve_from_the_request() {
        let (parts, _) = http::Request::builder()
            .uri("/p/q?page=2&off=0")
            .header("host", "Example.com:8080")
            .header("x-tenant", "blue")
            .body(())
            .unwrap()
            .into_parts();
        let mut ctx = RequestCtx::new("10.0.0.7:5555".parse().unwrap(), "r1".into());
        ctx.consumer_name = Some("alice".into());
        let items = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (cache_key pieces, resolved key)
        let keys: [(&[&str], &str); 5] = [
            (&["$host", "$request_uri"], "example.com/p/q?page=2&off=0"),
            (&["$uri", "-", "$arg_page"], "/p/q-2"),
            (&["$http_x_tenant", ":", "$consumer_name"], "blue:alice"),
            (&["$http_x_missing", "$route_id"], "r1"),
            (&["$request_method", " ", "$remote_addr"], "GET 10.0.0.7"),
        ];
        for (pieces, want) in keys {
            let parts_c = compile_parts("cache_key", &items(pieces)).unwrap();
            assert_eq!(resolve(&parts_c, &parts, &ctx), want, "{pieces:?}");
        }
        // (cache_bypass / no_cache pieces, set?)
        let conditions: [(&[&str], bool); 5] = [
            (&[], false),
            (&["$arg_page"], true),
            (&["$arg_off"], false),
            (&["$arg_none", "$http_x_none"], false),
            (&["$arg_off", "$http_x_tenant"], true),
        ];
        for (pieces, want) in conditions {
            let parts_c = compile_parts("cache_bypass", &items(pieces)).unwrap();
            assert_eq!(any_set(&parts_c, &parts, &ctx), want, "{pieces:?}");
        }
    }

    #[test]
    fn variants_take_the_vary_headers_values() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let cases: [(Vec<HeaderName>, &str); 3] = [
            (vec![], "GET"),
            (vec![header::ACCEPT], "GET\ntext/html"),
            (
                vec![
                    header::ACCEPT,
                    HeaderName::from_static("x-a"),
                    header::COOKIE,
                ],
                "GET\ntext/html\n1,2\n",
            ),
        ];
        for (vary, want) in cases {
            assert_eq!(ProxyCache::variant("GET", &vary, &headers), want);
        }
    }
}
