//! Request routing: compiled once per config snapshot, queried per request without allocating
//! or locking.
//!
//! # Precedence
//!
//! For a request, candidate routes are tried in this order and the first one whose host and
//! method constraints (and, with [`Router::find_with`], the caller's predicate) accept the
//! request wins:
//!
//! 1. An exact path (`/a/b`), then parameterised paths (`/a/:id`), then regular expressions
//!    (`~/a/v\d+/`), then prefix paths (`/a/*`, `/a*`).
//! 2. Among parameterised paths matching the request, the more literal one first, compared
//!    segment by segment from the left (`/users/me/:x` before `/users/:id/posts` before
//!    `/:kind/1/posts`), then by the path text.
//! 3. Among regular expressions matching the request, the one whose routes have the higher
//!    `priority` first, then the longer pattern, then by pattern text.
//! 4. Among prefixes, the longer prefix first (`/api/v1/*` before `/api/*` before `/*`).
//! 5. Within one path:
//!    1. higher `priority` first;
//!    2. then routes matched through an exact host (`a.example.com`), then through a wildcard
//!       host (`*.example.com`), then host-less routes (a route listing both kinds counts as
//!       exact-host when the exact one matches);
//!    3. then routes with `methods` before routes accepting any method;
//!    4. then by route id, then by position in the route list (stable, independent of how the
//!       snapshot happened to be ordered apart from duplicate ids).
//!
//! If the best candidate of a path rejects the request (wrong host or method, or the caller's
//! `accept` predicate — the route's `vars` — says no), the search goes on to the next candidate
//! of that path, then to the next path in the order above (next parameterised path, next
//! shorter prefix).
//!
//! # Matching rules
//!
//! * Paths: `/a/b` matches only `/a/b`. A path ending in `*` is a byte prefix: `/api/*` matches
//!   `/api/` and `/api/x/y` but not `/api`; `/foo*` matches `/foo` and `/foobar`. A `:name`
//!   segment matches exactly one non-empty segment: `/users/:id` matches `/users/42`, not
//!   `/users`, `/users/` or `/users/42/x` (nor `/users/42/`, which has an empty third segment).
//!   `~pattern` is a regular expression matched from the start of the path (an implicit `^`,
//!   as in Kong; end it with `$` to match the whole path).
//! * Hosts: compared case-insensitively after dropping a `:port` (`[v6]:port` too) and a
//!   trailing dot. `*.example.com` matches `a.example.com` and `a.b.example.com`, not
//!   `example.com`. A route without hosts accepts any host, and requests without a Host.
//! * Methods: a route without methods (or with an empty list) accepts any method; otherwise the
//!   method must be listed (no implicit HEAD for GET).
//!
//! # Cost
//!
//! `find` does one hash lookup for exact paths and one walk of a byte-level radix tree along the
//! request path, so it does not grow with the number of routes. Parameterised paths are grouped
//! by segment count, then by their literal first segment (or "first segment is a parameter"):
//! a request looks at one group (a hash lookup on its segment count and one on its first
//! segment) and scans only the patterns in it, never all parameterised routes. Within a path,
//! candidates are scanned in order; paths shared by many routes (e.g. thousands of virtual hosts
//! on `/*`) get a per-host index so that case stays flat too. Regular expressions are indexed
//! by their literal prefix (`~/api/v\d+` by `/api/v`) in a radix tree like the prefixes': a
//! request walks it once along its path and runs only the patterns whose literal prefix it
//! starts with (plus those without one, e.g. `~(?i)/x` or `~/a|/b`, which every request runs).

use std::fmt;

use http::Method;

use postern_proto::model::validate::{
    check_host_pattern, check_uri, compile_uri_regex, uri_has_params, uri_regex,
};

/// Router tables hash with foldhash (seeded per process): most of a snapshot's build time and
/// every exact-path lookup is hashing, and SipHash is several times slower.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests;
pub mod vars;

/// One route as the router sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    pub id: String,
    /// Exact paths, parameterised paths (`/users/:id`), or prefixes ending in `*`.
    pub paths: Vec<String>,
    /// Exact (`a.example.com`) or wildcard (`*.example.com`) hosts; empty = any host.
    pub hosts: Vec<String>,
    /// `None` (or empty) = any method.
    pub methods: Option<Vec<Method>>,
    /// Higher wins among routes sharing a path.
    pub priority: i32,
}

/// A route that could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    #[error("route '{id}' (#{index}): {reason}")]
    InvalidRoute {
        index: usize,
        id: String,
        reason: String,
    },
    #[error("too many routes: {count} (at most {MAX_ROUTES})")]
    TooManyRoutes { count: usize },
}

/// Route indexes are stored as `u32` to keep buckets compact.
pub const MAX_ROUTES: usize = u32::MAX as usize / 4;

/// Longer Host values cannot match any pattern (names are at most 253 bytes, a wildcard needs
/// one more label), so they are treated as matching no host pattern.
const MAX_HOST_LEN: usize = 256;

/// Buckets with more entries than this get a host index instead of a plain scan.
const INDEX_MIN_ENTRIES: usize = 16;

/// The compiled route table. Cheap to query from many threads at once.
#[derive(Clone)]
pub struct Router {
    routes: Vec<RouteData>,
    buckets: Vec<Bucket>,
    exact: HashMap<PathKey, ExactPath>,
    /// Radix tree of prefixes; node 0 is the root (empty label).
    nodes: Vec<Node>,
    /// Parameterised paths.
    params: ParamIndex,
    /// `~` paths, if any.
    regexes: Option<RegexIndex>,
}

/// An exact path as the table's key: held in the table's own slot up to 24 bytes (most
/// paths), so a lookup compares against the slot it probed instead of following a pointer to
/// a separate allocation (a cold cache line and TLB entry per request when requests spread
/// over thousands of routes).
type PathKey = smallvec::SmallVec<[u8; 24]>;

/// An exact path's bucket, and its one route when that route takes any host and method (most
/// exact paths): then a lookup answers from the table's slot alone, without reading the bucket
/// or the route's data.
#[derive(Debug, Clone, Copy)]
struct ExactPath {
    bucket: u32,
    sole: Option<u32>,
}

/// Regular-expression paths.
#[derive(Clone)]
struct RegexIndex {
    /// In precedence order: the compiled pattern (anchored at the start) and its routes' bucket.
    patterns: Box<[(regex::Regex, u32)]>,
    /// Radix tree of the patterns' literal prefixes (node 0: the empty prefix); a node's
    /// `bucket` indexes `lists`.
    nodes: Vec<Node>,
    /// Positions in `patterns`, ascending, of the patterns sharing one literal prefix.
    lists: Vec<Vec<u32>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.len())
            .field("exact_paths", &self.exact.len())
            .field("prefix_nodes", &self.nodes.len())
            .field("param_paths", &self.params.patterns.len())
            .field(
                "regex_paths",
                &self.regexes.as_ref().map_or(0, |r| r.patterns.len()),
            )
            .finish()
    }
}

#[derive(Debug, Clone)]
struct RouteData {
    /// Lowercase host names.
    exact_hosts: Box<[Box<[u8]>]>,
    /// Lowercase suffixes including the dot: `*.example.com` → `.example.com`.
    wildcard_suffixes: Box<[Box<[u8]>]>,
    methods: Option<Box<[Method]>>,
}

impl RouteData {
    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// How an entry's host constraint is checked; the order is the precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostKind {
    Exact,
    Wildcard,
    Any,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    route: u32,
    kind: HostKind,
}

/// A normalised request as the matcher needs it.
struct Request<'a> {
    method: &'a Method,
    /// Lowercase, port-less host; `None` if absent or unmatchable.
    host: Option<&'a [u8]>,
}

impl Entry {
    fn accepts(&self, routes: &[RouteData], req: &Request<'_>) -> bool {
        let Some(r) = routes.get(self.route as usize) else {
            return false;
        };
        r.allows(req.method)
            && match self.kind {
                HostKind::Any => true,
                HostKind::Exact => req
                    .host
                    .is_some_and(|h| r.exact_hosts.iter().any(|p| **p == *h)),
                HostKind::Wildcard => req.host.is_some_and(|h| {
                    r.wildcard_suffixes
                        .iter()
                        .any(|s| h.len() > s.len() && h.ends_with(s))
                }),
            }
    }
}

/// The routes sharing one path, in precedence order.
#[derive(Debug, Clone)]
struct Bucket {
    /// Held in the bucket up to two (most paths have one route), for the reason of `PathKey`.
    entries: smallvec::SmallVec<[Entry; 2]>,
    index: Option<Box<HostIndex>>,
}

/// Positions into `Bucket::entries`, ascending, grouped by what host they accept.
#[derive(Debug, Clone, Default)]
struct HostIndex {
    exact: HashMap<Box<[u8]>, Vec<u32>>,
    wildcard: HashMap<Box<[u8]>, Vec<u32>>,
    any: Vec<u32>,
}

impl Bucket {
    fn new(mut entries: Vec<Entry>, routes: &[RouteData], specs: &[&RouteSpec]) -> Bucket {
        entries.sort_by(|a, b| {
            let (sa, sb) = (&specs[a.route as usize], &specs[b.route as usize]);
            let (ra, rb) = (&routes[a.route as usize], &routes[b.route as usize]);
            sb.priority
                .cmp(&sa.priority)
                .then(a.kind.cmp(&b.kind))
                .then(ra.methods.is_none().cmp(&rb.methods.is_none()))
                .then_with(|| sa.id.cmp(&sb.id))
                .then(a.route.cmp(&b.route))
        });
        let index = (entries.len() > INDEX_MIN_ENTRIES).then(|| {
            let mut ix = HostIndex::default();
            for (pos, e) in (0u32..).zip(&entries) {
                let r = &routes[e.route as usize];
                match e.kind {
                    HostKind::Any => ix.any.push(pos),
                    HostKind::Exact => {
                        for h in &r.exact_hosts {
                            ix.exact.entry(h.clone()).or_default().push(pos);
                        }
                    }
                    HostKind::Wildcard => {
                        for s in &r.wildcard_suffixes {
                            ix.wildcard.entry(s.clone()).or_default().push(pos);
                        }
                    }
                }
            }
            Box::new(ix)
        });
        Bucket {
            entries: smallvec::SmallVec::from_slice(&entries),
            index,
        }
    }

    fn find(
        &self,
        routes: &[RouteData],
        req: &Request<'_>,
        accept: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let Some(ix) = &self.index else {
            return self
                .entries
                .iter()
                .find(|e| e.accepts(routes, req) && accept(e.route as usize))
                .map(|e| e.route as usize);
        };
        // Each list already matches the host; take the earliest position whose method fits.
        let mut best = u32::MAX;
        let mut consider = |list: &[u32]| {
            for &pos in list {
                if pos >= best {
                    break;
                }
                let fits = self.entries.get(pos as usize).is_some_and(|e| {
                    routes
                        .get(e.route as usize)
                        .is_some_and(|r| r.allows(req.method))
                        && accept(e.route as usize)
                });
                if fits {
                    best = pos;
                    break;
                }
            }
        };
        consider(&ix.any);
        if let Some(h) = req.host {
            if let Some(list) = ix.exact.get(h) {
                consider(list);
            }
            if !ix.wildcard.is_empty() {
                // Every proper suffix starting at a dot, with at least one byte before it.
                let dots = h.iter().enumerate().skip(1).filter(|&(_, &b)| b == b'.');
                for (i, _) in dots {
                    if let Some(list) = ix.wildcard.get(&h[i..]) {
                        consider(list);
                    }
                }
            }
        }
        self.entries.get(best as usize).map(|e| e.route as usize)
    }
}

#[derive(Debug, Clone)]
struct Node {
    label: Box<[u8]>,
    /// Sorted by first byte of the child's label.
    children: Vec<(u8, u32)>,
    bucket: Option<u32>,
    /// Nearest proper ancestor that has a bucket: the next shorter matching prefix.
    up: Option<u32>,
}

impl Node {
    fn new(label: &[u8], bucket: Option<u32>) -> Node {
        Node {
            label: label.into(),
            children: Vec::new(),
            bucket,
            up: None,
        }
    }

    fn child(&self, b: u8) -> Option<u32> {
        self.children
            .binary_search_by_key(&b, |&(c, _)| c)
            .ok()
            .and_then(|i| self.children.get(i))
            .map(|&(_, n)| n)
    }
}

impl Router {
    /// Compiles `routes`; `routes[i]` is reported by [`Router::find`] as `i`. Fails only for a
    /// route that cannot be compiled (bad path or host pattern, no paths), naming it.
    /// (`S` is `RouteSpec` or a reference to one: a compile that keeps its specs elsewhere
    /// passes references.)
    pub fn build<S: std::borrow::Borrow<RouteSpec>>(routes: &[S]) -> Result<Router, RouterError> {
        let specs: Vec<&RouteSpec> = routes.iter().map(std::borrow::Borrow::borrow).collect();
        Router::build_from(&specs)
    }

    fn build_from(routes: &[&RouteSpec]) -> Result<Router, RouterError> {
        if routes.len() > MAX_ROUTES {
            return Err(RouterError::TooManyRoutes {
                count: routes.len(),
            });
        }
        let mut data = Vec::with_capacity(routes.len());
        let mut exact: HashMap<&str, Vec<Entry>> = HashMap::default();
        let mut prefix: HashMap<&str, Vec<Entry>> = HashMap::default();
        let mut param: HashMap<&str, Vec<Entry>> = HashMap::default();
        let mut regex: HashMap<&str, Vec<Entry>> = HashMap::default();
        for (i, spec) in routes.iter().enumerate() {
            let err = |reason: String| RouterError::InvalidRoute {
                index: i,
                id: spec.id.clone(),
                reason,
            };
            let route = compile_route(spec).map_err(err)?;
            if spec.paths.is_empty() {
                return Err(err("no paths".into()));
            }
            let mut paths: Vec<&str> = Vec::with_capacity(spec.paths.len());
            for p in &spec.paths {
                check_uri(p).map_err(|e| err(format!("path {}", e.message)))?;
                paths.push(p);
            }
            paths.sort_unstable();
            paths.dedup();
            let kinds = host_kinds(&route);
            // `i` < MAX_ROUTES, checked above.
            let index = u32::try_from(i).map_err(|_| err("index out of range".into()))?;
            for p in paths {
                let bucket = match p.strip_suffix('*') {
                    _ if uri_regex(p).is_some() => regex.entry(p).or_default(),
                    Some(pre) => prefix.entry(pre).or_default(),
                    None if uri_has_params(p) => param.entry(p).or_default(),
                    None => exact.entry(p).or_default(),
                };
                bucket.extend(
                    kinds
                        .iter()
                        .flatten()
                        .map(|&kind| Entry { route: index, kind }),
                );
            }
            data.push(route);
        }

        let mut buckets =
            Vec::with_capacity(exact.len() + prefix.len() + param.len() + regex.len());
        let mut add = |entries: Vec<Entry>| {
            buckets.push(Bucket::new(entries, &data, routes));
            (buckets.len() - 1) as u32
        };
        // Each path's bucket now; whether it has a sole route once every bucket is built.
        let exact: Vec<(PathKey, u32)> = exact
            .into_iter()
            .map(|(p, entries)| (PathKey::from_slice(p.as_bytes()), add(entries)))
            .collect();
        let mut nodes = vec![Node::new(b"", None)];
        for (p, entries) in prefix {
            insert(&mut nodes, p.as_bytes(), add(entries));
        }
        link(&mut nodes);
        let params = ParamIndex::build(param.into_iter().map(|(p, entries)| (p, add(entries))));
        let regexes = RegexIndex::build(regex, routes, &mut add)?;
        let exact = exact
            .into_iter()
            .map(|(p, bucket)| {
                let sole = sole_route(&buckets, &data, bucket);
                (p, ExactPath { bucket, sole })
            })
            .collect();
        Ok(Router {
            routes: data,
            buckets,
            exact,
            nodes,
            params,
            regexes,
        })
    }

    /// The router for `routes` when it differs from the one `self` was built for only in the
    /// routes at the positions `changed` names (with their old specs), same positions and count
    /// otherwise: a copy of `self` with only the changed routes' paths re-sorted, instead of a
    /// build of every route (a one-route path change at 10,000 routes: about a tenth of the
    /// time). It finds what `Router::build(routes)` finds. `None` when a changed route has, or
    /// had, a parameterised or regex path (those indexes are built whole): build instead.
    pub fn patched<S: std::borrow::Borrow<RouteSpec>>(
        &self,
        routes: &[S],
        changed: &[(usize, &RouteSpec)],
    ) -> Option<Result<Router, RouterError>> {
        let specs: Vec<&RouteSpec> = routes.iter().map(std::borrow::Borrow::borrow).collect();
        let plain = |s: &RouteSpec| {
            s.paths
                .iter()
                .all(|p| uri_regex(p).is_none() && !uri_has_params(p))
        };
        let patchable = specs.len() == self.routes.len()
            && changed
                .iter()
                .all(|&(i, old)| plain(old) && specs.get(i).is_some_and(|s| plain(s)));
        if !patchable {
            return None;
        }
        let mut next = self.clone();
        let mut relink = false;
        for &(i, old) in changed {
            let spec = specs[i];
            let err = |reason: String| RouterError::InvalidRoute {
                index: i,
                id: spec.id.clone(),
                reason,
            };
            let route = match compile_route(spec) {
                Ok(route) => route,
                Err(reason) => return Some(Err(err(reason))),
            };
            if spec.paths.is_empty() {
                return Some(Err(err("no paths".into())));
            }
            for p in &spec.paths {
                if let Err(e) = check_uri(p) {
                    return Some(Err(err(format!("path {}", e.message))));
                }
            }
            let kinds = host_kinds(&route);
            next.routes[i] = route;
            let index = i as u32;
            let mut new_paths: Vec<&str> = spec.paths.iter().map(String::as_str).collect();
            new_paths.sort_unstable();
            new_paths.dedup();
            let mut paths: Vec<&str> = old.paths.iter().map(String::as_str).collect();
            paths.extend(&new_paths);
            paths.sort_unstable();
            paths.dedup();
            for p in paths {
                let here = new_paths.binary_search(&p).is_ok();
                let existing = next.bucket_of(p);
                let mut entries: Vec<Entry> = existing
                    .and_then(|b| next.buckets.get(b as usize))
                    .map(|b| {
                        b.entries
                            .iter()
                            .copied()
                            .filter(|e| e.route != index)
                            .collect()
                    })
                    .unwrap_or_default();
                if here {
                    entries.extend(
                        kinds
                            .iter()
                            .flatten()
                            .map(|&kind| Entry { route: index, kind }),
                    );
                }
                let bucket = match existing {
                    Some(b) => b,
                    None if entries.is_empty() => continue,
                    None => {
                        next.buckets
                            .push(Bucket::new(Vec::new(), &next.routes, &specs));
                        let b = (next.buckets.len() - 1) as u32;
                        match p.strip_suffix('*') {
                            Some(prefix) => {
                                insert(&mut next.nodes, prefix.as_bytes(), b);
                                relink = true;
                            }
                            None => {
                                let at = ExactPath {
                                    bucket: b,
                                    sole: None,
                                };
                                next.exact.insert(PathKey::from_slice(p.as_bytes()), at);
                            }
                        }
                        b
                    }
                };
                if entries.is_empty() {
                    // The path is gone: unhook it (its slot stays, empty, until a build).
                    next.buckets[bucket as usize] = Bucket::new(Vec::new(), &next.routes, &specs);
                    match p.strip_suffix('*') {
                        Some(prefix) => {
                            if let Some(n) = node_of(&next.nodes, prefix.as_bytes()) {
                                next.nodes[n].bucket = None;
                                relink = true;
                            }
                        }
                        None => {
                            next.exact.remove(p.as_bytes());
                        }
                    }
                } else {
                    next.buckets[bucket as usize] = Bucket::new(entries, &next.routes, &specs);
                    let sole = sole_route(&next.buckets, &next.routes, bucket);
                    if let Some(at) = next.exact.get_mut(p.as_bytes()) {
                        at.sole = sole;
                    }
                }
            }
        }
        if relink {
            link(&mut next.nodes);
        }
        Some(Ok(next))
    }

    /// The bucket of an exact or prefix path, if the router has it.
    fn bucket_of(&self, path: &str) -> Option<u32> {
        match path.strip_suffix('*') {
            Some(prefix) => node_of(&self.nodes, prefix.as_bytes())
                .and_then(|n| self.nodes.get(n))
                .and_then(|n| n.bucket),
            None => self.exact.get(path.as_bytes()).map(|at| at.bucket),
        }
    }

    /// The index of the route that handles this request, by the precedence in the module docs.
    /// `host` is the raw Host header (any case, optional `:port`); `path` excludes the query.
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<usize> {
        self.find_with(method, host, path, |_| true)
    }

    /// Like [`Router::find`], but a candidate route also needs `accept(index)` to hold (the
    /// route's `vars`); when it does not, the search goes on as if the route's host or method
    /// had not matched. `accept` is only asked about routes whose path, host and method match,
    /// in precedence order, and may be asked about the same route more than once.
    pub fn find_with(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        accept: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let accept: &dyn Fn(usize) -> bool = &accept;
        let mut buf = [0u8; MAX_HOST_LEN];
        let req = Request {
            method,
            host: host.and_then(|h| normalize_host(h, &mut buf)),
        };
        match self.exact.get(path.as_bytes()) {
            Some(&ExactPath { sole: Some(r), .. }) if accept(r as usize) => {
                return Some(r as usize);
            }
            Some(&ExactPath { sole: None, bucket }) => {
                if let Some(i) = self.bucket_find(bucket, &req, accept) {
                    return Some(i);
                }
            }
            _ => {}
        }
        if let Some(i) = self
            .params
            .candidates(path)
            .find_map(|b| self.bucket_find(b, &req, accept))
        {
            return Some(i);
        }
        if let Some(rx) = &self.regexes {
            for k in rx.candidates(path) {
                let Some((regex, bucket)) = rx.patterns.get(k as usize) else {
                    continue;
                };
                if regex.is_match(path)
                    && let Some(i) = self.bucket_find(*bucket, &req, accept)
                {
                    return Some(i);
                }
            }
        }
        let mut next = self.deepest_prefix(path.as_bytes());
        while let Some(n) = next.and_then(|n| self.nodes.get(n as usize)) {
            if let Some(i) = n.bucket.and_then(|b| self.bucket_find(b, &req, accept)) {
                return Some(i);
            }
            next = n.up;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn bucket_find(
        &self,
        bucket: u32,
        req: &Request<'_>,
        accept: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        self.buckets
            .get(bucket as usize)
            .and_then(|b| b.find(&self.routes, req, accept))
    }

    /// The deepest tree node with a bucket whose prefix starts `path`.
    fn deepest_prefix(&self, path: &[u8]) -> Option<u32> {
        deepest(&self.nodes, path)
    }
}

/// The deepest node of a radix tree (`nodes[0]` its root) with a bucket whose key starts
/// `path`; its `up` links lead to the shorter ones.
fn deepest(nodes: &[Node], path: &[u8]) -> Option<u32> {
    let mut deepest = None;
    let mut id = 0u32;
    let mut rest = path;
    while let Some(node) = nodes.get(id as usize) {
        if node.bucket.is_some() {
            deepest = Some(id);
        }
        let Some(child) = rest.first().and_then(|&b| node.child(b)) else {
            break;
        };
        let label = match nodes.get(child as usize) {
            Some(c) if rest.starts_with(&c.label) => &c.label,
            _ => break,
        };
        rest = &rest[label.len()..];
        id = child;
    }
    deepest
}

/// One segment of a parameterised path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param,
}

#[derive(Debug, Clone)]
struct ParamPattern {
    /// The segments after the leading `/`.
    segments: Box<[Segment]>,
    bucket: u32,
}

impl ParamPattern {
    /// `rest` is the request path without its leading `/`, with as many segments as `self`.
    fn matches(&self, rest: &str) -> bool {
        self.segments
            .iter()
            .zip(rest.split('/'))
            .all(|(s, r)| match s {
                Segment::Literal(l) => **l == *r,
                Segment::Param => !r.is_empty(),
            })
    }
}

/// Patterns with the same number of segments, in precedence order.
#[derive(Debug, Clone, Default)]
struct ParamGroup {
    /// Patterns whose first segment is this literal.
    by_first: HashMap<Box<str>, Box<[u32]>>,
    /// Patterns whose first segment is a parameter (all less specific than `by_first`'s).
    any_first: Box<[u32]>,
}

impl RegexIndex {
    /// `None` when no route has a `~` path.
    fn build(
        paths: HashMap<&str, Vec<Entry>>,
        specs: &[&RouteSpec],
        add: &mut impl FnMut(Vec<Entry>) -> u32,
    ) -> Result<Option<RegexIndex>, RouterError> {
        if paths.is_empty() {
            return Ok(None);
        }
        let top_priority = |entries: &[Entry]| {
            entries
                .iter()
                .filter_map(|e| specs.get(e.route as usize))
                .map(|s| s.priority)
                .max()
                .unwrap_or(0)
        };
        let mut paths: Vec<(&str, Vec<Entry>)> = paths.into_iter().collect();
        paths.sort_by(|(pa, ea), (pb, eb)| {
            top_priority(eb)
                .cmp(&top_priority(ea))
                .then(pb.len().cmp(&pa.len()))
                .then(pa.cmp(pb))
        });
        let mut patterns = Vec::with_capacity(paths.len());
        let mut by_literal: HashMap<&str, Vec<u32>> = HashMap::default();
        for (k, (p, entries)) in (0u32..).zip(paths) {
            let source = uri_regex(p).unwrap_or_default();
            let regex = compile_uri_regex(source).map_err(|e| {
                let index = entries.first().map_or(0, |e| e.route as usize);
                RouterError::InvalidRoute {
                    index,
                    id: specs.get(index).map(|s| s.id.clone()).unwrap_or_default(),
                    reason: format!("path '{p}': invalid regular expression: {e}"),
                }
            })?;
            patterns.push((regex, add(entries)));
            by_literal
                .entry(literal_prefix(source))
                .or_default()
                .push(k);
        }
        let mut nodes = vec![Node::new(b"", None)];
        let mut lists = Vec::with_capacity(by_literal.len());
        for (literal, list) in by_literal {
            lists.push(list);
            insert(&mut nodes, literal.as_bytes(), (lists.len() - 1) as u32);
        }
        link(&mut nodes);
        Ok(Some(RegexIndex {
            patterns: patterns.into_boxed_slice(),
            nodes,
            lists,
        }))
    }

    /// The patterns `path` may match (those whose literal prefix it starts with), in
    /// precedence order.
    fn candidates(&self, path: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut next = deepest(&self.nodes, path.as_bytes());
        while let Some(n) = next.and_then(|n| self.nodes.get(n as usize)) {
            if let Some(list) = n.bucket.and_then(|b| self.lists.get(b as usize)) {
                out.extend_from_slice(list);
            }
            next = n.up;
        }
        out.sort_unstable();
        out
    }
}

/// The text every match of `pattern` (anchored at the start) begins with: its leading
/// characters up to the first regex syntax, less the last one if a quantifier follows it. Empty
/// when the pattern has an alternation anywhere (its branches need not share a prefix).
fn literal_prefix(pattern: &str) -> &str {
    const SYNTAX: &str = "\\.+*?()[]{}^$|#";
    if pattern.contains('|') {
        return "";
    }
    let end = pattern
        .find(|c: char| SYNTAX.contains(c) || c.is_whitespace())
        .unwrap_or(pattern.len());
    let literal = &pattern[..end];
    match pattern[end..].chars().next() {
        Some('?' | '*' | '{' | '+') => {
            let cut = literal.char_indices().last().map_or(0, |(i, _)| i);
            &literal[..cut]
        }
        _ => literal,
    }
}

/// Parameterised paths, grouped by segment count, then by literal first segment.
#[derive(Debug, Clone, Default)]
struct ParamIndex {
    patterns: Vec<ParamPattern>,
    groups: HashMap<usize, ParamGroup>,
}

impl ParamIndex {
    fn build<'a>(paths: impl Iterator<Item = (&'a str, u32)>) -> ParamIndex {
        let mut sorted: Vec<(Box<[Segment]>, &str, u32)> = paths
            .map(|(p, bucket)| {
                let segments = p
                    .strip_prefix('/')
                    .unwrap_or(p)
                    .split('/')
                    .map(|s| match s.starts_with(':') {
                        true => Segment::Param,
                        false => Segment::Literal(s.into()),
                    })
                    .collect();
                (segments, p, bucket)
            })
            .collect();
        // Specificity: a literal before a parameter at the first position they differ, then
        // the path text (different texts can share segments only through parameter names).
        let kind = |s: &Segment| matches!(s, Segment::Param);
        sorted.sort_by(|a, b| {
            a.0.iter()
                .map(kind)
                .cmp(b.0.iter().map(kind))
                .then_with(|| a.1.cmp(b.1))
        });
        /// A `ParamGroup` being filled: `(by_first, any_first)`.
        type Draft = (HashMap<Box<str>, Vec<u32>>, Vec<u32>);
        let mut groups: HashMap<usize, Draft> = HashMap::default();
        let mut patterns = Vec::with_capacity(sorted.len());
        for (segments, _, bucket) in sorted {
            let at = patterns.len() as u32;
            let group = groups.entry(segments.len()).or_default();
            match segments.first() {
                Some(Segment::Literal(l)) => group.0.entry(l.clone()).or_default().push(at),
                _ => group.1.push(at),
            }
            patterns.push(ParamPattern { segments, bucket });
        }
        let groups = groups
            .into_iter()
            .map(|(n, (by_first, any_first))| {
                let by_first = by_first
                    .into_iter()
                    .map(|(k, v)| (k, v.into_boxed_slice()))
                    .collect();
                let group = ParamGroup {
                    by_first,
                    any_first: any_first.into_boxed_slice(),
                };
                (n, group)
            })
            .collect();
        ParamIndex { patterns, groups }
    }

    /// Buckets of the patterns matching `path`, in precedence order.
    fn candidates<'a>(&'a self, path: &'a str) -> impl Iterator<Item = u32> + 'a {
        let rest = path.strip_prefix('/').filter(|_| !self.groups.is_empty());
        let group = rest.and_then(|r| {
            let count = r.bytes().filter(|&b| b == b'/').count() + 1;
            self.groups.get(&count)
        });
        let (literal, any): (&[u32], &[u32]) = match (group, rest) {
            (Some(g), Some(r)) => {
                let first = r.split('/').next().unwrap_or("");
                (g.by_first.get(first).map_or(&[], |v| v), &g.any_first)
            }
            _ => (&[], &[]),
        };
        let rest = rest.unwrap_or("");
        literal
            .iter()
            .chain(any)
            .filter_map(move |&i| self.patterns.get(i as usize))
            .filter(move |p| p.matches(rest))
            .map(|p| p.bucket)
    }
}

/// Validates and normalises a route's hosts and methods.
fn compile_route(spec: &RouteSpec) -> Result<RouteData, String> {
    let mut exact = Vec::new();
    let mut wildcard = Vec::new();
    for h in &spec.hosts {
        check_host_pattern(h).map_err(|e| format!("host {}", e.message))?;
        let lower = h.to_ascii_lowercase().into_bytes();
        match lower.strip_prefix(b"*") {
            Some(suffix) => wildcard.push(Box::<[u8]>::from(suffix)),
            None => exact.push(lower.into_boxed_slice()),
        }
    }
    for v in [&mut exact, &mut wildcard] {
        v.sort_unstable();
        v.dedup();
    }
    let methods = spec
        .methods
        .as_ref()
        .filter(|m| !m.is_empty())
        .map(|m| m.clone().into_boxed_slice());
    Ok(RouteData {
        exact_hosts: exact.into_boxed_slice(),
        wildcard_suffixes: wildcard.into_boxed_slice(),
        methods,
    })
}

/// The ways a route's entries accept a host: through its exact hosts, its wildcards, or (with
/// neither) any host.
fn host_kinds(route: &RouteData) -> [Option<HostKind>; 3] {
    let mut kinds = [None; 3];
    if !route.exact_hosts.is_empty() {
        kinds[0] = Some(HostKind::Exact);
    }
    if !route.wildcard_suffixes.is_empty() {
        kinds[1] = Some(HostKind::Wildcard);
    }
    if route.exact_hosts.is_empty() && route.wildcard_suffixes.is_empty() {
        kinds[2] = Some(HostKind::Any);
    }
    kinds
}

/// The route of `bucket` when it is its only one and takes any host and method.
fn sole_route(buckets: &[Bucket], routes: &[RouteData], bucket: u32) -> Option<u32> {
    let b = buckets.get(bucket as usize)?;
    match &b.entries[..] {
        [e] if b.index.is_none()
            && e.kind == HostKind::Any
            && routes.get(e.route as usize)?.methods.is_none() =>
        {
            Some(e.route)
        }
        _ => None,
    }
}

/// The node of a radix tree whose key is exactly `key`, if there is one.
fn node_of(nodes: &[Node], key: &[u8]) -> Option<usize> {
    let mut id = 0usize;
    let mut rest = key;
    while let Some(&first) = rest.first() {
        let child = nodes.get(id)?.child(first)? as usize;
        let label = &nodes.get(child)?.label;
        rest = rest.strip_prefix(&label[..])?;
        id = child;
    }
    Some(id)
}

/// Inserts `key` into the radix tree rooted at `nodes[0]`, splitting edges as needed.
fn insert(nodes: &mut Vec<Node>, key: &[u8], bucket: u32) {
    let mut id = 0usize;
    let mut rest = key;
    loop {
        let Some(&first) = rest.first() else {
            nodes[id].bucket = Some(bucket);
            return;
        };
        let Some(child) = nodes[id].child(first) else {
            let new = nodes.len() as u32;
            nodes.push(Node::new(rest, Some(bucket)));
            let children = &mut nodes[id].children;
            let at = children.partition_point(|&(c, _)| c < first);
            children.insert(at, (first, new));
            return;
        };
        let c = child as usize;
        let common = nodes[c]
            .label
            .iter()
            .zip(rest)
            .take_while(|(a, b)| a == b)
            .count();
        if common < nodes[c].label.len() {
            // Split: `c` keeps the shared part (so its parent's link stays valid), a new node
            // takes the tail with c's children and bucket.
            let tail = Node {
                label: nodes[c].label[common..].into(),
                children: std::mem::take(&mut nodes[c].children),
                bucket: nodes[c].bucket.take(),
                up: None,
            };
            let tail_first = tail.label[0];
            let tail_id = nodes.len() as u32;
            nodes.push(tail);
            nodes[c].label = nodes[c].label[..common].into();
            nodes[c].children = vec![(tail_first, tail_id)];
        }
        id = c;
        rest = &rest[common..];
    }
}

/// Fills `up` links: each node's nearest proper ancestor with a bucket.
fn link(nodes: &mut [Node]) {
    let mut stack = vec![(0usize, None)];
    while let Some((id, up)) = stack.pop() {
        nodes[id].up = up;
        let below = if nodes[id].bucket.is_some() {
            Some(id as u32)
        } else {
            up
        };
        stack.extend(nodes[id].children.iter().map(|&(_, c)| (c as usize, below)));
    }
}

/// Lowercase host without port or trailing dot, copied into `buf`; `None` if empty or longer
/// than any pattern could match.
fn normalize_host<'a>(raw: &str, buf: &'a mut [u8; MAX_HOST_LEN]) -> Option<&'a [u8]> {
    let b = raw.as_bytes();
    let name = if b.first() == Some(&b'[') {
        // `[v6]:port`: the port follows the bracket; v6 literals never match a pattern anyway.
        b.iter().position(|&c| c == b']').map_or(b, |i| &b[..=i])
    } else {
        b.iter().position(|&c| c == b':').map_or(b, |i| &b[..i])
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name);
    out.make_ascii_lowercase();
    Some(out)
}
