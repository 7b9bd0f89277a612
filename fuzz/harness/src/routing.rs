//! The route table: compiling arbitrary route specs, and matching requests against a fixed table.

use std::sync::LazyLock;

use http::Method;
use postern_data_plane::router::{RouteSpec, Router};

use crate::bytes::Gen;

/// Characters route paths are made of: enough for exact, prefix (`*`), parameter (`:id`),
/// regex (`~`) and odd paths.
const PATH_CHARS: &str = "/ab:*~.%{}()[]+?^$\\-";
const HOST_CHARS: &str = "ab.*-:";
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "PURGE"];

fn spec(g: &mut Gen, id: usize) -> RouteSpec {
    let paths = (0..1 + g.int(3))
        .map(|_| format!("/{}", g.string(PATH_CHARS, 12)))
        .collect();
    let hosts = (0..g.int(3)).map(|_| g.string(HOST_CHARS, 10)).collect();
    let methods = g.bool().then(|| {
        (0..1 + g.int(3))
            .map(|_| g.pick(&METHODS).parse().unwrap())
            .collect()
    });
    RouteSpec {
        id: format!("r{id}"),
        paths,
        hosts,
        methods,
        priority: g.int(5) as i32 - 2,
    }
}

/// An exact path: no prefix, parameter or regex syntax.
fn is_exact(path: &str) -> bool {
    !path.starts_with("/~") && !path.contains(['*', ':', '{'])
}

/// Compiles a table of up to 16 routes. When it compiles, a route that takes any host and any
/// method is found (itself, or a route of higher precedence) at each of its exact paths.
pub fn route_table(data: &[u8]) {
    let mut g = Gen::new(data);
    let specs: Vec<RouteSpec> = (0..g.int(16) as usize).map(|i| spec(&mut g, i)).collect();
    let Ok(router) = Router::build(&specs) else {
        return;
    };
    for spec in &specs {
        for path in &spec.paths {
            let found = router.find(&Method::GET, Some("a"), path);
            assert!(found.is_none_or(|i| i < specs.len()));
            if spec.hosts.is_empty() && spec.methods.is_none() && is_exact(path) {
                assert!(found.is_some(), "{path:?} of {} not found", spec.id);
            }
        }
    }
}

/// The fixed table `router_match` searches: every kind of path, host and method matcher.
static TABLE: LazyLock<Router> = LazyLock::new(|| {
    let r =
        |id: &str, paths: &[&str], hosts: &[&str], methods: Option<&[&str]>, priority| RouteSpec {
            id: id.to_string(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            methods: methods.map(|m| m.iter().map(|m| m.parse().unwrap()).collect()),
            priority,
        };
    Router::build(&[
        r("exact", &["/a", "/a/b"], &[], None, 0),
        r("prefix", &["/a/*", "/*"], &[], None, 0),
        r(
            "param",
            &["/users/:id", "/users/:id/x/:y"],
            &[],
            Some(&["GET"]),
            0,
        ),
        r(
            "hosted",
            &["/a"],
            &["a.example.com", "*.b.example.com"],
            None,
            1,
        ),
        r("post", &["/a/*"], &[], Some(&["POST", "PUT"]), 5),
        r("regex", &["~^/re/[0-9]+$"], &[], None, 0),
    ])
    .expect("the fixed table compiles")
});

/// Matches a request (method byte, host, path) against the fixed table: an answer is a route of
/// the table, and a predicate that accepts nothing finds nothing.
pub fn router_match(data: &[u8]) {
    let mut g = Gen::new(data);
    let method: Method = g.pick(&METHODS).parse().unwrap();
    let host = g.bool().then(|| g.string("ab.*-:example0123", 24));
    let rest = g.0.take_rest();
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let found = TABLE.find(&method, host.as_deref(), path);
    assert!(found.is_none_or(|i| i < 6), "{found:?}");
    assert_eq!(
        TABLE.find_with(&method, host.as_deref(), path, |_| false),
        None
    );
}
