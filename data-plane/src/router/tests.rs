use std::time::Instant;

use super::*;

fn route(id: &str, paths: &[&str], hosts: &[&str], methods: &[&str], priority: i32) -> RouteSpec {
    RouteSpec {
        id: id.into(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        methods: (!methods.is_empty()).then(|| {
            methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).expect("test method"))
                .collect()
        }),
        priority,
    }
}

fn path(id: &str, paths: &[&str]) -> RouteSpec {
    route(id, paths, &[], &[], 0)
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).expect("test method")
}

/// `(method, host, path, expected route id)`.
type Case<'a> = (&'a str, Option<&'a str>, &'a str, Option<&'a str>);

fn check(routes: &[RouteSpec], cases: &[Case<'_>]) {
    let router = Router::build(routes).expect("routes compile");
    for &(m, host, p, want) in cases {
        let got = router
            .find(&method(m), host, p)
            .map(|i| routes[i].id.as_str());
        assert_eq!(got, want, "{m} host={host:?} path={p:?}");
    }
}

#[test]
fn send_sync() {
    fn assert<T: Send + Sync>() {}
    assert::<Router>();
}

#[test]
fn empty_router() {
    let router = Router::build::<RouteSpec>(&[]).expect("empty is fine");
    assert!(router.is_empty());
    assert_eq!(router.len(), 0);
    assert_eq!(router.find(&Method::GET, None, "/"), None);
}

#[test]
fn path_kinds() {
    let routes = [
        path("exact", &["/a/b"]),
        path("api", &["/api/*"]),
        path("foo", &["/foo*"]),
        path("multi", &["/m1", "/m2/*"]),
    ];
    check(
        &routes,
        &[
            ("GET", None, "/a/b", Some("exact")),
            ("GET", None, "/a/b/", None),
            ("GET", None, "/a", None),
            ("GET", None, "/a/bc", None),
            ("GET", None, "/api/", Some("api")),
            ("GET", None, "/api/x/y", Some("api")),
            ("GET", None, "/api", None),
            ("GET", None, "/apix", None),
            ("GET", None, "/foo", Some("foo")),
            ("GET", None, "/foobar", Some("foo")),
            ("GET", None, "/foo/x", Some("foo")),
            ("GET", None, "/fo", None),
            ("GET", None, "/m1", Some("multi")),
            ("GET", None, "/m1/x", None),
            ("GET", None, "/m2/x", Some("multi")),
            ("GET", None, "/", None),
            ("GET", None, "", None),
        ],
    );
}

#[test]
fn catch_all() {
    check(
        &[path("all", &["/*"]), path("x", &["/x"])],
        &[
            ("GET", None, "/", Some("all")),
            ("GET", None, "/anything/at/all", Some("all")),
            ("GET", None, "/x", Some("x")),
            ("GET", None, "", None),
        ],
    );
}

#[test]
fn exact_before_prefix_and_longer_prefix_first() {
    let routes = [
        route("all", &["/*"], &[], &[], 100),
        route("api", &["/api/*"], &[], &[], 50),
        path("v1", &["/api/v1/*"]),
        path("health", &["/api/health"]),
        route("v1-post", &["/api/v1/orders*"], &[], &["POST"], 0),
    ];
    check(
        &routes,
        &[
            // Exact wins even over a higher-priority prefix.
            ("GET", None, "/api/health", Some("health")),
            ("GET", None, "/api/healthz", Some("api")),
            ("GET", None, "/api/v1/x", Some("v1")),
            ("GET", None, "/api/v1/orders/7", Some("v1")),
            ("POST", None, "/api/v1/orders/7", Some("v1-post")),
            ("GET", None, "/api/v2", Some("api")),
            ("GET", None, "/other", Some("all")),
        ],
    );
}

#[test]
fn falls_back_to_shorter_prefix_when_constraints_reject() {
    let routes = [
        path("all", &["/*"]),
        route("api-host", &["/api/*"], &["api.example.com"], &[], 0),
        route("v1-post", &["/api/v1/*"], &[], &["POST"], 0),
        route("exact-put", &["/api/v1/x"], &[], &["PUT"], 0),
    ];
    check(
        &routes,
        &[
            ("PUT", None, "/api/v1/x", Some("exact-put")),
            ("POST", None, "/api/v1/x", Some("v1-post")),
            (
                "GET",
                Some("api.example.com"),
                "/api/v1/x",
                Some("api-host"),
            ),
            ("GET", Some("other.example.com"), "/api/v1/x", Some("all")),
            ("GET", None, "/api/v1/x", Some("all")),
        ],
    );
}

#[test]
fn order_within_a_path() {
    let p = &["/p"];
    let routes = [
        route("any", p, &[], &[], 0),
        route("methods", p, &[], &["GET"], 0),
        route("wild", p, &["*.example.com"], &[], 0),
        route("exact-host", p, &["a.example.com"], &[], 0),
        route("hi-any", p, &[], &[], 5),
        route("hi-host-post", p, &["a.example.com"], &["POST"], 5),
        route("b", &["/q"], &[], &[], 0),
        route("a", &["/q"], &[], &[], 0),
        route("lo", &["/r"], &[], &[], -1),
        route("zero", &["/r"], &["r.example.com"], &[], 0),
    ];
    check(
        &routes,
        &[
            // Priority first, then host kind within it.
            ("POST", Some("a.example.com"), "/p", Some("hi-host-post")),
            ("GET", Some("a.example.com"), "/p", Some("hi-any")),
            ("GET", None, "/p", Some("hi-any")),
            // Ties broken by id.
            ("GET", None, "/q", Some("a")),
            // Negative priority loses to 0, but 0 needs its host.
            ("GET", Some("r.example.com"), "/r", Some("zero")),
            ("GET", None, "/r", Some("lo")),
        ],
    );
    // Without the priority-5 routes: exact host, wildcard host, methods, any.
    let routes = &routes[..4];
    check(
        routes,
        &[
            ("GET", Some("a.example.com"), "/p", Some("exact-host")),
            ("GET", Some("b.example.com"), "/p", Some("wild")),
            ("GET", Some("other.org"), "/p", Some("methods")),
            ("POST", Some("other.org"), "/p", Some("any")),
            ("POST", None, "/p", Some("any")),
        ],
    );
}

#[test]
fn exact_host_beats_wildcard_even_within_one_route() {
    let routes = [
        route("both", &["/"], &["*.example.com", "a.example.com"], &[], 0),
        route("a-wild", &["/"], &["*.example.com"], &[], 0),
        route("b-exact", &["/"], &["b.example.com"], &[], 0),
    ];
    check(
        &routes,
        &[
            ("GET", Some("a.example.com"), "/", Some("both")),
            // "both" only matches through its wildcard here, so the id decides among wildcards.
            ("GET", Some("c.example.com"), "/", Some("a-wild")),
            ("GET", Some("b.example.com"), "/", Some("b-exact")),
        ],
    );
}

#[test]
fn host_matching() {
    let routes = [
        route("exact", &["/"], &["a.example.com"], &[], 0),
        route("wild", &["/"], &["*.Example.COM"], &[], 0),
        route("ip", &["/"], &["10.0.0.1"], &[], 0),
        route("fallback", &["/*"], &[], &[], 0),
    ];
    let cases: &[Case<'_>] = &[
        ("GET", Some("a.example.com"), "/", Some("exact")),
        ("GET", Some("A.Example.Com"), "/", Some("exact")),
        ("GET", Some("a.example.com:8080"), "/", Some("exact")),
        ("GET", Some("a.example.com."), "/", Some("exact")),
        ("GET", Some("a.example.com.:443"), "/", Some("exact")),
        ("GET", Some("b.example.com"), "/", Some("wild")),
        ("GET", Some("x.y.example.com"), "/", Some("wild")),
        ("GET", Some("X.Y.EXAMPLE.COM:1"), "/", Some("wild")),
        ("GET", Some("example.com"), "/", Some("fallback")),
        ("GET", Some(".example.com"), "/", Some("fallback")),
        ("GET", Some("aexample.com"), "/", Some("fallback")),
        ("GET", Some("a.example.com.evil"), "/", Some("fallback")),
        ("GET", Some("10.0.0.1:80"), "/", Some("ip")),
        ("GET", Some("[::1]:8080"), "/", Some("fallback")),
        ("GET", Some("[::1]"), "/", Some("fallback")),
        ("GET", Some("[a.example.com]"), "/", Some("fallback")),
        ("GET", Some(""), "/", Some("fallback")),
        ("GET", Some(":80"), "/", Some("fallback")),
        ("GET", None, "/", Some("fallback")),
    ];
    check(&routes, cases);
    let long = format!("{}.example.com", "a".repeat(300));
    check(&routes, &[("GET", Some(&long), "/", Some("fallback"))]);
}

#[test]
fn method_matching() {
    let routes = [
        route("get", &["/m"], &[], &["GET"], 0),
        route("purge", &["/m"], &[], &["PURGE", "POST"], 0),
        RouteSpec {
            methods: Some(vec![]),
            ..path("empty-list-is-any", &["/m"])
        },
    ];
    check(
        &routes,
        &[
            ("GET", None, "/m", Some("get")),
            ("HEAD", None, "/m", Some("empty-list-is-any")),
            ("PURGE", None, "/m", Some("purge")),
            ("POST", None, "/m", Some("purge")),
            ("DELETE", None, "/m", Some("empty-list-is-any")),
        ],
    );
}

#[test]
fn result_does_not_depend_on_input_order() {
    let routes = vec![
        route("r3", &["/x/*"], &[], &[], 0),
        route("r1", &["/x/*"], &[], &[], 0),
        route("r2", &["/x/*"], &["*.a.com"], &["GET"], 0),
        route("r4", &["/x/y"], &[], &["POST"], 0),
        route("r5", &["/x/y*"], &[], &[], 1),
    ];
    let requests = [
        ("GET", Some("b.a.com"), "/x/z"),
        ("GET", None, "/x/z"),
        ("GET", None, "/x/y"),
        ("POST", None, "/x/y"),
    ];
    let winners = |routes: &[RouteSpec]| -> Vec<Option<String>> {
        let router = Router::build(routes).expect("routes compile");
        requests
            .iter()
            .map(|&(m, h, p)| router.find(&method(m), h, p).map(|i| routes[i].id.clone()))
            .collect()
    };
    let want = winners(&routes);
    assert_eq!(
        want,
        [Some("r2"), Some("r1"), Some("r5"), Some("r4")].map(|s| s.map(String::from))
    );
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..20 {
        let mut shuffled = routes.clone();
        rng.shuffle(&mut shuffled);
        assert_eq!(winners(&shuffled), want);
    }
}

#[test]
fn build_errors_name_the_route() {
    let ok = path("ok", &["/"]);
    let cases: &[(RouteSpec, &str)] = &[
        (path("none", &[]), "no paths"),
        (path("empty", &[""]), "must start with '/'"),
        (path("rel", &["api"]), "must start with '/'"),
        (path("mid", &["/a*b"]), "'*' is only allowed once"),
        (path("double", &["/a**"]), "'*' is only allowed once"),
        (path("space", &["/a b"]), "whitespace"),
        (
            route("h1", &["/"], &["a.*.com"], &[], 0),
            "not a valid host",
        ),
        (route("h2", &["/"], &[""], &[], 0), "not a valid host"),
        (
            route("h3", &["/"], &["a.com:80"], &[], 0),
            "not a valid host",
        ),
        (route("h4", &["/"], &["*"], &[], 0), "not a valid host"),
    ];
    for (bad, reason) in cases {
        let err = Router::build(&[ok.clone(), bad.clone()]).expect_err(&bad.id);
        let RouterError::InvalidRoute { index, id, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!((*index, id.as_str()), (1, bad.id.as_str()));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("route '{}' (#1): ", bad.id)),
            "{msg}"
        );
        assert!(msg.contains(reason), "{msg} should say {reason}");
    }
}

#[test]
fn duplicates_are_harmless() {
    let routes = [
        route("dup", &["/d", "/d", "/d*"], &["a.com", "A.com"], &[], 0),
        route("dup", &["/d"], &[], &[], 0),
    ];
    check(
        &routes,
        &[
            ("GET", Some("a.com"), "/d", Some("dup")),
            ("GET", Some("a.com"), "/dd", Some("dup")),
            ("GET", None, "/dd", None),
        ],
    );
    let router = Router::build(&routes).expect("compiles");
    // Same id: the earlier route wins on a tie.
    assert_eq!(router.find(&Method::GET, Some("a.com"), "/d"), Some(0));
    assert_eq!(router.find(&Method::GET, None, "/d"), Some(1));
}

#[test]
fn many_virtual_hosts_on_one_path() {
    let mut routes: Vec<RouteSpec> = (0..2_000)
        .map(|i| {
            route(
                &format!("vh{i}"),
                &["/*"],
                &[&format!("h{i}.example.com")],
                &[],
                0,
            )
        })
        .collect();
    routes.push(route("wild", &["/*"], &["*.tenant.example.com"], &[], 0));
    routes.push(route(
        "deep-wild",
        &["/*"],
        &["*.x.tenant.example.com"],
        &["POST"],
        0,
    ));
    routes.push(route("get-only", &["/*"], &["h7.example.com"], &["GET"], 0));
    routes.push(route("hi", &["/*"], &["h9.example.com"], &[], 1));
    routes.push(path("default", &["/*"]));
    let router = Router::build(&routes).expect("compiles");
    let bucket = router.nodes[0]
        .children
        .first()
        .and_then(|&(_, n)| router.nodes[n as usize].bucket)
        .expect("'/' bucket");
    assert!(router.buckets[bucket as usize].index.is_some());
    check(
        &routes,
        &[
            ("GET", Some("h0.example.com"), "/a", Some("vh0")),
            ("GET", Some("H1999.Example.Com:8443"), "/a", Some("vh1999")),
            ("GET", Some("h7.example.com"), "/a", Some("get-only")),
            ("POST", Some("h7.example.com"), "/a", Some("vh7")),
            ("GET", Some("h9.example.com"), "/a", Some("hi")),
            ("GET", Some("h2000.example.com"), "/a", Some("default")),
            ("GET", Some("a.tenant.example.com"), "/a", Some("wild")),
            ("GET", Some("a.x.tenant.example.com"), "/a", Some("wild")),
            (
                "POST",
                Some("a.x.tenant.example.com"),
                "/a",
                Some("deep-wild"),
            ),
            ("GET", Some("tenant.example.com"), "/a", Some("default")),
            ("GET", None, "/a", Some("default")),
        ],
    );
}

/// The precedence rules written out naively: rank every route, take the smallest.
fn reference(
    routes: &[RouteSpec],
    m: &Method,
    host: Option<&str>,
    p: &str,
    accept: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let host = host.and_then(|h| {
        let h = match h.strip_prefix('[') {
            Some(rest) => match rest.find(']') {
                Some(i) => &h[..i + 2],
                None => h,
            },
            None => h.split(':').next().unwrap_or(h),
        };
        let h = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
        (!h.is_empty() && h.len() <= MAX_HOST_LEN).then_some(h)
    });
    let mut best = None;
    for (i, r) in routes.iter().enumerate() {
        if !accept(i) {
            continue;
        }
        // (kind: exact < param < prefix, param specificity, param text, prefix length rank)
        let path_rank = r
            .paths
            .iter()
            .filter_map(|rp| match rp.strip_suffix('*') {
                Some(pre) => p
                    .starts_with(pre)
                    .then(|| (2, vec![], String::new(), usize::MAX - pre.len())),
                None if rp.contains("/:") => {
                    let pat: Vec<&str> = rp[1..].split('/').collect();
                    let req: Vec<&str> = p.strip_prefix('/')?.split('/').collect();
                    let ok = pat.len() == req.len()
                        && pat.iter().zip(&req).all(|(a, b)| match a.starts_with(':') {
                            true => !b.is_empty(),
                            false => a == b,
                        });
                    let spec: Vec<bool> = pat.iter().map(|s| s.starts_with(':')).collect();
                    ok.then(|| (1, spec, rp.clone(), 0))
                }
                None => (rp == p).then(|| (0, vec![], String::new(), 0)),
            })
            .min();
        let Some(path_rank) = path_rank else { continue };
        let methods = r.methods.as_ref().filter(|m| !m.is_empty());
        if methods.is_some_and(|ms| !ms.contains(m)) {
            continue;
        }
        let host_rank = if r.hosts.is_empty() {
            Some(2)
        } else {
            host.as_ref().and_then(|h| {
                r.hosts
                    .iter()
                    .filter_map(|pat| {
                        let pat = pat.to_ascii_lowercase();
                        match pat.strip_prefix("*.") {
                            Some(s) => (h.len() > s.len() + 1 && h.ends_with(&format!(".{s}")))
                                .then_some(1),
                            None => (pat == *h).then_some(0),
                        }
                    })
                    .min()
            })
        };
        let Some(host_rank) = host_rank else { continue };
        let key = (
            path_rank,
            -i64::from(r.priority),
            host_rank,
            methods.is_none(),
            r.id.as_str(),
            i,
        );
        if best.as_ref().is_none_or(|b| key < *b) {
            best = Some(key);
        }
    }
    best.map(|k| k.5)
}

#[test]
fn matches_the_reference_model() {
    const ROUTE_PATHS: [&str; 21] = [
        "/", "/*", "/a", "/a*", "/a/*", "/a/b", "/a/b*", "/a/b/*", "/ab", "/ab*", "/b/*", "/a/b/c",
        "/abc*", "/c", "/a/:x", "/:k", "/:k/b", "/a/:x/c", "/:k/:y/c", "/a/:y", "/b/:x/",
    ];
    const REQUEST_PATHS: [&str; 18] = [
        "/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/ab", "/abc", "/abcd", "/b", "/b/x", "",
        "/c", "/d", "/x/b", "/a/z/c", "/b/x/", "/a//c",
    ];
    const HOSTS: [&str; 8] = [
        "a.example.com",
        "b.example.com",
        "*.example.com",
        "*.b.example.com",
        "example.com",
        "A.Example.Com",
        "*.other.org",
        "x.other.org",
    ];
    const REQUEST_HOSTS: [Option<&str>; 11] = [
        None,
        Some("a.example.com"),
        Some("A.EXAMPLE.COM:8080"),
        Some("b.example.com"),
        Some("c.b.example.com"),
        Some("example.com"),
        Some("example.com."),
        Some("x.other.org:1"),
        Some("[::1]:80"),
        Some("other.org"),
        Some(""),
    ];
    const METHODS: [&str; 4] = ["GET", "POST", "PUT", "PURGE"];
    let mut rng = fastrand::Rng::with_seed(42);
    let mut indexed = 0;
    for round in 0..400 {
        // Some rounds crowd many routes onto few paths to exercise the host index.
        let path_pool = if round % 3 == 0 { 3 } else { ROUTE_PATHS.len() };
        let n = rng.usize(1..if round % 3 == 0 { 80 } else { 40 });
        let pick = |rng: &mut fastrand::Rng, pool: &[&'static str], max: usize| {
            let k = rng.usize(0..=max);
            (0..k)
                .map(|_| pool[rng.usize(0..pool.len())])
                .collect::<Vec<_>>()
        };
        let routes: Vec<RouteSpec> = (0..n)
            .map(|_| {
                let id = format!("r{}", rng.usize(0..8));
                let mut paths = pick(&mut rng, &ROUTE_PATHS[..path_pool], 2);
                if paths.is_empty() {
                    paths.push(ROUTE_PATHS[0]);
                }
                let hosts = pick(&mut rng, &HOSTS, 2);
                let methods = pick(&mut rng, &METHODS, 2);
                route(&id, &paths, &hosts, &methods, rng.i32(-1..=1))
            })
            .collect();
        let router = Router::build(&routes).expect("compiles");
        indexed += router.buckets.iter().filter(|b| b.index.is_some()).count();
        // Every other round, a `vars`-like predicate turns some routes down.
        let rejected: Vec<bool> = (0..n).map(|_| round % 2 == 1 && rng.bool()).collect();
        let accept = |i: usize| !rejected[i];
        for m in METHODS {
            let m = method(m);
            for h in REQUEST_HOSTS {
                for p in REQUEST_PATHS {
                    let got = router.find_with(&m, h, p, accept);
                    let want = reference(&routes, &m, h, p, &accept);
                    assert_eq!(got, want, "round {round}: {m} {h:?} {p:?}\n{routes:#?}");
                }
            }
        }
    }
    assert!(indexed > 50, "host index exercised only {indexed} times");
}

#[test]
fn ten_thousand_routes() {
    const N: usize = 10_000;
    let mut routes = Vec::with_capacity(2 * N);
    for i in 0..N {
        // `/p{i}*` nest (`/p1*` ⊂ `/p12*` ⊂ ...); every 7th also needs a host.
        let hosts: &[&str] = if i % 7 == 0 { &["h.example.com"] } else { &[] };
        routes.push(route(
            &format!("p{i}"),
            &[&format!("/p{i}*")],
            hosts,
            &[],
            0,
        ));
        routes.push(path(&format!("e{i}"), &[&format!("/exact/{i}")]));
    }
    let started = Instant::now();
    let router = Router::build(&routes).expect("compiles");
    let built = started.elapsed();
    println!(
        "built {} routes in {built:?} ({} exact paths, {} tree nodes)",
        router.len(),
        router.exact.len(),
        router.nodes.len()
    );
    assert_eq!(router.len(), 2 * N);
    let id = |host: Option<&str>, p: &str| {
        router
            .find(&Method::GET, host, p)
            .map(|i| routes[i].id.as_str())
    };
    assert_eq!(id(None, "/p1234/x"), Some("p1234"));
    assert_eq!(id(None, "/p12345"), Some("p1234"));
    // p1400, p140 and p14 all need the host: falls back along the chain to p1.
    assert_eq!(id(None, "/p1400"), Some("p1"));
    assert_eq!(id(None, "/p7x"), None);
    assert_eq!(id(Some("h.example.com"), "/p1400"), Some("p1400"));
    assert_eq!(id(None, "/p"), None);
    assert_eq!(id(None, "/q1"), None);
    assert_eq!(id(None, "/exact/9999"), Some("e9999"));
    assert_eq!(id(None, "/exact/9999/"), None);
    assert_eq!(id(None, "/exact/10000"), None);

    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..200 {
        let i = rng.usize(0..2 * N);
        let p = match rng.u8(0..3) {
            0 => format!("/p{i}"),
            1 => format!("/p{i}/tail"),
            _ => format!("/exact/{i}"),
        };
        let host = rng.bool().then_some("H.example.com:80");
        let got = router.find(&Method::GET, host, &p);
        assert_eq!(
            got,
            reference(&routes, &Method::GET, host, &p, &|_| true),
            "{host:?} {p}"
        );
    }

    // Informational (not asserted): the same lookup against a router holding only the
    // routes on its chain, to show the cost follows the path, not the route count.
    let small = Router::build(&[
        path("p1", &["/p1*"]),
        path("p12", &["/p12*"]),
        path("p123", &["/p123*"]),
        path("p1234", &["/p1234*"]),
        path("e1", &["/exact/1"]),
    ])
    .expect("compiles");
    let time = |r: &Router| {
        let started = Instant::now();
        for _ in 0..100_000 {
            std::hint::black_box(r.find(&Method::GET, Some("h.example.com"), "/p1234/x"));
        }
        started.elapsed() / 100_000
    };
    println!(
        "find: {:?} with {} routes, {:?} with {} routes",
        time(&small),
        small.len(),
        time(&router),
        router.len()
    );
}

#[test]
fn param_paths() {
    let routes = [
        path("user", &["/users/:id"]),
        path("me", &["/users/me"]),
        path("posts", &["/users/:id/posts"]),
        path("post", &["/users/:id/posts/:post_id"]),
        path("kind", &["/:kind/:id"]),
        path("users-prefix", &["/users/*"]),
        path("root", &["/:top"]),
    ];
    check(
        &routes,
        &[
            ("GET", None, "/users/42", Some("user")),
            // Exact before parameterised.
            ("GET", None, "/users/me", Some("me")),
            ("GET", None, "/users/42/posts", Some("posts")),
            ("GET", None, "/users/42/posts/7", Some("post")),
            // A literal first segment beats a parameter there.
            ("GET", None, "/items/3", Some("kind")),
            // A parameter never matches an empty segment or several: prefixes take over.
            ("GET", None, "/users/", Some("users-prefix")),
            ("GET", None, "/users//posts", Some("users-prefix")),
            ("GET", None, "/users/42/", Some("users-prefix")),
            ("GET", None, "/users/42/comments", Some("users-prefix")),
            ("GET", None, "/users", Some("root")),
            ("GET", None, "/", None),
            ("GET", None, "/a/b/c/d", None),
        ],
    );
}

#[test]
fn param_precedence_is_by_literal_segments_from_the_left() {
    let routes = [
        route("any", &["/:a/:b/:c"], &[], &[], 100),
        path("mid", &["/:a/x/:c"]),
        path("left", &["/v/:b/:c"]),
        path("left-mid", &["/v/x/:c"]),
        route("post-only", &["/v/x/:id"], &[], &["POST"], 0),
    ];
    check(
        &routes,
        &[
            ("GET", None, "/v/x/1", Some("left-mid")),
            // `/v/x/:c` and `/v/x/:id` are different paths of equal specificity: text order.
            ("POST", None, "/v/x/1", Some("left-mid")),
            ("GET", None, "/v/y/1", Some("left")),
            ("GET", None, "/w/x/1", Some("mid")),
            // Priority only orders routes within one path.
            ("GET", None, "/w/y/1", Some("any")),
        ],
    );
}

#[test]
fn exact_then_param_then_prefix_with_fallback() {
    let routes = [
        route("exact", &["/api/users/list"], &[], &["GET"], 0),
        route("param", &["/api/users/:id"], &["a.example.com"], &[], 0),
        route("prefix", &["/api/*"], &[], &[], 0),
    ];
    check(
        &routes,
        &[
            (
                "GET",
                Some("a.example.com"),
                "/api/users/list",
                Some("exact"),
            ),
            // The exact route rejects POST: the parameterised one is next.
            (
                "POST",
                Some("a.example.com"),
                "/api/users/list",
                Some("param"),
            ),
            (
                "POST",
                Some("b.example.com"),
                "/api/users/list",
                Some("prefix"),
            ),
            ("GET", Some("a.example.com"), "/api/users/9", Some("param")),
            ("GET", None, "/api/users/9", Some("prefix")),
        ],
    );
}

#[test]
fn accept_predicate_moves_to_the_next_candidate() {
    let routes = [
        route("mobile", &["/app"], &[], &[], 10),
        path("web", &["/app"]),
        path("user", &["/u/:id"]),
        path("prefix", &["/*"]),
    ];
    let router = Router::build(&routes).expect("compiles");
    let find = |p: &str, rejected: &[&str]| {
        router
            .find_with(&Method::GET, None, p, |i| {
                !rejected.contains(&routes[i].id.as_str())
            })
            .map(|i| routes[i].id.as_str())
    };
    assert_eq!(find("/app", &[]), Some("mobile"));
    assert_eq!(find("/app", &["mobile"]), Some("web"));
    assert_eq!(find("/app", &["mobile", "web"]), Some("prefix"));
    assert_eq!(find("/u/1", &["user"]), Some("prefix"));
    assert_eq!(find("/u/1", &["user", "prefix"]), None);
}

#[test]
fn many_param_routes_are_grouped() {
    const N: usize = 5_000;
    let routes: Vec<RouteSpec> = (0..N)
        .map(|i| path(&format!("r{i}"), &[&format!("/svc{i}/:id/items/:item")]))
        .collect();
    let router = Router::build(&routes).expect("compiles");
    assert_eq!(router.params.groups.len(), 1);
    let group = router.params.groups.values().next().expect("one group");
    assert_eq!(group.by_first.len(), N);
    for i in [0, 17, N - 1] {
        let got = router.find(&Method::GET, None, &format!("/svc{i}/7/items/9"));
        assert_eq!(got, Some(i));
    }
    assert_eq!(router.find(&Method::GET, None, "/svc1/7/items"), None);
}

#[test]
fn regex_paths_rank_between_params_and_prefixes() {
    let routes = [
        path("exact", &["/api/v1/users"]),
        path("param", &["/api/v1/:what"]),
        path("versioned", &[r"~/api/v\d+/users$"]),
        path("any-version", &[r"~/api/v\d+/"]),
        route("urgent", &[r"~/api/v9"], &[], &[], 5),
        route("get-only", &[r"~/reports/\d{4}$"], &[], &["GET"], 0),
        path("prefix", &["/api/*"]),
    ];
    check(
        &routes,
        &[
            ("GET", None, "/api/v1/users", Some("exact")),
            ("GET", None, "/api/v1/orders", Some("param")),
            ("GET", None, "/api/v2/users", Some("versioned")),
            // `$` anchors the end; without it the pattern is a prefix.
            ("GET", None, "/api/v2/users/7", Some("any-version")),
            ("GET", None, "/api/v22/x/y", Some("any-version")),
            // A higher priority wins over a longer pattern.
            ("GET", None, "/api/v9/users", Some("urgent")),
            // Anchored at the start: the pattern must match from the first byte.
            ("GET", None, "/x/api/v2/users", None),
            ("GET", None, "/api/vx/users", Some("prefix")),
            ("GET", None, "/reports/2026", Some("get-only")),
            ("POST", None, "/reports/2026", None),
            ("GET", None, "/reports/20261", None),
        ],
    );
}

#[test]
fn a_bad_regex_path_names_the_route() {
    let err = Router::build(&[path("ok", &["/a"]), path("bad", &["~/a("])]).unwrap_err();
    assert!(
        matches!(&err, RouterError::InvalidRoute { id, .. } if id == "bad"),
        "{err}"
    );
}

#[test]
fn regex_literal_prefixes() {
    for (pattern, literal) in [
        (r"/api/v\d+/users$", "/api/v"),
        ("/exact", "/exact"),
        ("/files/a?b", "/files/"),
        ("/x*", "/"),
        ("/ab{2}", "/a"),
        ("/a.c", "/a"),
        ("(?i)/api", ""),
        ("/a|/b", ""),
        ("/caf\u{e9}s?", "/caf\u{e9}"),
        (r"\/escaped", ""),
    ] {
        assert_eq!(literal_prefix(pattern), literal, "{pattern}");
    }
}

#[test]
fn many_regex_paths_cost_what_their_literal_prefixes_select() {
    // 2,000 regex routes plus a catch-all one without a literal prefix; every request is
    // answered by the right one, and a lookup runs only the few patterns sharing its prefix.
    let mut routes: Vec<RouteSpec> = (0..2000)
        .map(|i| path(&format!("re{i}"), &[&format!(r"~/svc{i}/v\d+/")]))
        .collect();
    routes.push(path("anything-json", &[r"~(?i)/.*\.JSON$"]));
    let router = Router::build(&routes).expect("compiles");
    let id = |p: &str| {
        router
            .find(&Method::GET, None, p)
            .map(|i| routes[i].id.as_str())
    };
    assert_eq!(id("/svc7/v2/x"), Some("re7"));
    assert_eq!(id("/svc1999/v10/"), Some("re1999"));
    assert_eq!(id("/svc7/vx/"), None);
    assert_eq!(id("/data/report.json"), Some("anything-json"));
    // Both match; the longer pattern ranks first.
    assert_eq!(id("/svc7/v2/x.json"), Some("anything-json"));
    let rx = router.regexes.as_ref().expect("regex index");
    assert!(
        rx.candidates("/svc7/v2/x").len() <= 3,
        "{:?}",
        rx.candidates("/svc7/v2/x")
    );
}

/// A router patched with a few changed routes finds, for every request, what a router built
/// from scratch on the changed routes finds: random tables of up to 120 routes on exact and
/// prefix paths (with hosts, methods and priorities; some paths shared by enough routes to get
/// a host index) beside fixed parameterised and regex routes; random edits (paths moved,
/// added, dropped, hosts and methods changed); a grid of requests.
#[test]
fn a_patched_router_finds_what_a_built_one_finds() {
    let paths = [
        "/", "/a", "/a/b", "/a/b/c", "/b", "/*", "/a*", "/a/*", "/a/b/*", "/b/*", "/ab*", "/c/*",
    ];
    let hosts = ["a.example", "*.example", "b.example", "*.b.example"];
    let methods = ["GET", "POST"];
    let random_spec = |rng: &mut fastrand::Rng, id: String| {
        let mut p: Vec<String> = (0..rng.usize(1..=3))
            .map(|_| paths[rng.usize(..paths.len())].to_string())
            .collect();
        p.sort();
        p.dedup();
        let h: Vec<String> = (0..rng.usize(0..=2))
            .map(|_| hosts[rng.usize(..hosts.len())].to_string())
            .collect();
        let m = rng
            .bool()
            .then(|| vec![method(methods[rng.usize(..methods.len())])]);
        RouteSpec {
            id,
            paths: p,
            hosts: h,
            methods: m,
            priority: rng.i32(0..3),
        }
    };
    let requests: Vec<(Method, Option<&str>, &str)> = {
        let req_paths = [
            "/", "/a", "/a/b", "/a/b/c", "/a/x", "/ab", "/abc", "/b", "/b/x", "/c/d", "/b/12",
            "/z/b",
        ];
        let req_hosts = [
            None,
            Some("a.example"),
            Some("x.example"),
            Some("x.b.example"),
        ];
        let mut out = Vec::new();
        for p in req_paths {
            for h in req_hosts {
                for m in ["GET", "POST", "PUT"] {
                    out.push((method(m), h, p));
                }
            }
        }
        out
    };
    let mut compared = 0;
    let mut soles = 0;
    for seed in 0..300 {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Up to 120 routes on 12 paths: some buckets get a host index (more than 16 entries).
        let count = rng.usize(1..120);
        let mut specs: Vec<RouteSpec> = (0..count)
            .map(|i| random_spec(&mut rng, format!("r{i:03}")))
            .collect();
        // Parameterised and regex routes stay as they are (a patch leaves their indexes be).
        specs.push(path("p1", &["/a/:x"]));
        specs.push(path("p2", &["/:k/b"]));
        specs.push(route("x1", &["~/b/[0-9]+"], &["a.example"], &[], 1));
        let mut router = Router::build(&specs).expect("builds");
        // Several rounds of edits on the patched router, as a DP applies change after change.
        for _ in 0..4 {
            let mut changed = Vec::new();
            let before = specs.clone();
            for _ in 0..rng.usize(1..=3) {
                let i = rng.usize(..count);
                if changed.iter().any(|&(j, _)| j == i) {
                    continue;
                }
                specs[i] = random_spec(&mut rng, specs[i].id.clone());
                changed.push((i, &before[i]));
            }
            router = router
                .patched(&specs, &changed)
                .expect("plain paths patch")
                .expect("valid routes");
            let built = Router::build(&specs).expect("builds");
            // An exact path answered from the table alone in one is so in the other.
            for (key, at) in &built.exact {
                let patched = router
                    .exact
                    .get(key)
                    .map(|a| a.sole.map(|r| specs[r as usize].id.clone()));
                assert_eq!(
                    patched,
                    Some(at.sole.map(|r| specs[r as usize].id.clone())),
                    "seed {seed}"
                );
                soles += usize::from(at.sole.is_some());
            }
            for (m, h, p) in &requests {
                assert_eq!(
                    router.find(m, *h, p),
                    built.find(m, *h, p),
                    "seed {seed}: {m} {h:?} {p}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 100_000);
    assert!(soles > 20, "exact paths with a sole route: {soles}");
}

/// A change that involves a parameterised or regex path is not patched (those indexes are
/// built whole); an invalid changed route is refused as a build would refuse it.
#[test]
fn a_patch_declines_param_and_regex_paths_and_refuses_invalid_routes() {
    let specs = vec![path("a", &["/a"]), path("b", &["/b/:id"])];
    let router = Router::build(&specs).unwrap();
    let mut moved = specs.clone();
    moved[0] = path("a", &["/a/:x"]);
    assert!(router.patched(&moved, &[(0, &specs[0])]).is_none());
    let mut moved = specs.clone();
    moved[1] = path("b", &["/b"]);
    assert!(router.patched(&moved, &[(1, &specs[1])]).is_none());
    let mut bad = specs.clone();
    bad[0] = path("a", &["no-slash"]);
    let err = router
        .patched(&bad, &[(0, &specs[0])])
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, RouterError::InvalidRoute { index: 0, .. }),
        "{err}"
    );
}
