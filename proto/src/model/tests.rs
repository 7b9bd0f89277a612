use serde_json::json;

use super::*;

fn route_err(body: Value) -> ValidationError {
    Resource::parse(ResourceKind::Routes, &body).expect_err("should be rejected")
}

#[test]
fn guide_route_parses() {
    let body = json!({
        "uri": "/api/v1/products/*",
        "methods": ["GET"],
        "host": "a.example",
        "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:8080": 1},
                     "timeout": {"connect": 3, "send": 10, "read": 30}}
    });
    let Resource::Route(r) = Resource::parse(ResourceKind::Routes, &body).unwrap() else {
        panic!("not a route")
    };
    assert_eq!(r.uri.as_deref(), Some("/api/v1/products/*"));
    let nodes = r.upstream.unwrap().resolved_nodes().unwrap();
    assert_eq!(
        nodes,
        vec![Node {
            host: "127.0.0.1".into(),
            port: 8080,
            weight: 1
        }]
    );
}

#[test]
fn bad_routes_name_the_field() {
    let up = json!({"nodes": {"127.0.0.1:80": 1}});
    let cases = [
        (json!({"uri": 5, "upstream": up}), "uri"),
        (json!({"uri": "/a", "upstream": up, "bogus": 1}), "bogus"),
        (
            json!({"uri": "/a", "upstream": {"nodes": {"127.0.0.1:80": 1}, "bogus": 1}}),
            "upstream.bogus",
        ),
        (
            json!({"uri": "/a", "upstream": {"nodes": {"nohost:99999": 1}}}),
            "upstream.nodes.nohost:99999",
        ),
        (
            json!({"uri": "/a", "upstream": {"nodes": {"a b:80": 1}}}),
            "upstream.nodes.a b:80",
        ),
        (
            json!({"uri": "/a", "upstream": {"nodes": {"h:80": "x"}}}),
            "upstream.nodes",
        ),
        (
            json!({"uri": "/a", "upstream": {"nodes": {}}}),
            "upstream.nodes",
        ),
        (
            json!({"uri": "/a", "upstream": up, "plugins": {"no-such-plugin": {}}}),
            "plugins.no-such-plugin",
        ),
        (
            json!({"uri": "/a", "upstream": up, "plugins": {"request-termination": {"status_code": 42}}}),
            "plugins.request-termination.status_code",
        ),
        (
            json!({"uri": "/a", "upstream": up, "plugins": {"request-termination": {"colour": 1}}}),
            "plugins.request-termination.colour",
        ),
        (
            json!({"uri": "/a", "upstream": up, "plugins": {"request-termination": []}}),
            "plugins.request-termination",
        ),
        (
            json!({"uri": "/a", "upstream": up, "methods": ["FETCH"]}),
            "methods.0",
        ),
        (json!({"uri": "a", "upstream": up}), "uri"),
        (json!({"upstream": up}), "uri"),
        (json!({"uri": "/a"}), "upstream"),
        (
            json!({"uri": "/a", "upstream": up, "host": "bad host"}),
            "host",
        ),
        (json!({"uri": "/a", "upstream_id": "../x"}), "upstream_id"),
        (
            json!({"uri": "/a", "upstream": {"nodes": {"h:80": 1}, "timeout": {"connect": 0, "send": 1, "read": 1}}}),
            "upstream.timeout.connect",
        ),
        (
            json!({"uri": "/a", "upstream": {"type": "chash", "nodes": {"h:80": 1}}}),
            "upstream.key",
        ),
        (
            json!({"uri": "/a", "upstream": {"type": "chash", "key": "nope", "nodes": {"h:80": 1}}}),
            "upstream.key",
        ),
        (
            json!({"uri": "/a", "upstream": {"nodes": {"h:80": 1}, "max_concurrent": 0}}),
            "upstream.max_concurrent",
        ),
        (
            json!({"uri": "/a", "upstream": {"nodes": {"h:80": 1}, "keepalive_pool": {"requests": 0}}}),
            "upstream.keepalive_pool.requests",
        ),
        (
            json!({"uri": "/a", "upstream": {"nodes": {"h:80": 1}, "keepalive_pool": {"idle_timeout": -1}}}),
            "upstream.keepalive_pool.idle_timeout",
        ),
        (
            json!({"uri": "/a", "upstream": {"nodes": {"h:80": 1}, "checks": {"active": {"timeout": 0}}}}),
            "upstream.checks.active.timeout",
        ),
        (
            json!({"uri": "/a", "upstream": {"type": "nope", "nodes": {"h:80": 1}}}),
            "upstream.type",
        ),
        (json!([1, 2]), ""),
    ];
    for (body, field) in cases {
        let e = route_err(body.clone());
        assert_eq!(e.field, field, "{body} -> {e}");
    }
}

#[test]
fn node_addresses() {
    let ok = [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("Svc.Default:80", ("svc.default", 80)),
        ("example.com", ("example.com", 80)),
        ("[::1]:9000", ("::1", 9000)),
        ("[::1]", ("::1", 80)),
    ];
    for (addr, (host, port)) in ok {
        assert_eq!(
            parse_address(addr, 80),
            Ok((host.to_string(), port)),
            "{addr}"
        );
    }
    for bad in [
        "", ":80", "h:0", "h:65536", "h:+80", "h:x", "[::1", "[zz]:80", "h:80:90", "a/b:80",
    ] {
        assert!(parse_address(bad, 80).is_err(), "{bad}");
    }
}

#[test]
fn node_list_form() {
    let body = json!({"nodes": [{"host": "10.0.0.1", "port": 81, "weight": 3}, {"host": "b", "weight": 0}]});
    let Resource::Upstream(u) = Resource::parse(ResourceKind::Upstreams, &body).unwrap() else {
        panic!()
    };
    let nodes = u.resolved_nodes().unwrap();
    assert_eq!(nodes[0].authority(), "10.0.0.1:81");
    assert_eq!(nodes[1].authority(), "b:80");
    assert_eq!(nodes[1].weight, 0);
}

#[test]
fn references_are_checked_as_a_whole() {
    let mut set = ConfigSet::default();
    let route = Resource::parse(
        ResourceKind::Routes,
        &json!({"uri": "/a", "upstream_id": "u1"}),
    )
    .unwrap();
    assert_eq!(
        route.references(),
        vec![Reference {
            field: "upstream_id",
            kind: ResourceKind::Upstreams,
            id: "u1"
        }]
    );
    set.insert("r1", route);
    let e = set.check_references().unwrap_err();
    assert_eq!(e.field, "routes/r1.upstream_id");
    let up = Resource::parse(ResourceKind::Upstreams, &json!({"nodes": {"h:1": 1}})).unwrap();
    set.insert("u1", up);
    set.check_references().unwrap();
}

/// The BFF routes of the guide, plugins as written (less the auth and limit plugins).
#[test]
fn guide_rewrite_plugins_parse() {
    let up = json!({"nodes": {"127.0.0.1:3000": 1}});
    let plugin_sets = [
        json!({"proxy-rewrite": {"regex_uri": ["^/api/web/(.*)", "/$1"]},
               "request-id": {"header_name": "X-Request-ID"}}),
        json!({"proxy-rewrite": {"regex_uri": ["^/api/mobile/(.*)", "/$1"]},
               "response-rewrite": {"headers": {"set": {"X-Content-Optimized": "mobile"}}}}),
        json!({"proxy-rewrite": {"regex_uri": ["^/api/iot/(.*)", "/$1"]}}),
    ];
    for plugins in plugin_sets {
        let body = json!({"uri": "/api/x/*", "upstream": up, "plugins": plugins});
        Resource::parse(ResourceKind::Routes, &body).unwrap_or_else(|e| panic!("{plugins}: {e}"));
    }
}

#[test]
fn bad_rewrite_plugins_name_the_field() {
    let up = json!({"nodes": {"127.0.0.1:80": 1}});
    let cases = [
        (
            json!({"proxy-rewrite": {"regex_uri": ["^/api/(.*", "/$1"]}}),
            "plugins.proxy-rewrite.regex_uri.0",
        ),
        (
            json!({"proxy-rewrite": {"regex_uri": ["^/api/(.*)", "/$2"]}}),
            "plugins.proxy-rewrite.regex_uri.1",
        ),
        (
            json!({"proxy-rewrite": {"regex_uri": ["^/api/(.*)"]}}),
            "plugins.proxy-rewrite.regex_uri",
        ),
        (
            json!({"proxy-rewrite": {"uri": "v2"}}),
            "plugins.proxy-rewrite.uri",
        ),
        (
            json!({"proxy-rewrite": {"headers": {"set": {"X Bad": "1"}}}}),
            "plugins.proxy-rewrite.headers.set.X Bad",
        ),
        (json!({"proxy-rewrite": {}}), "plugins.proxy-rewrite"),
        (
            json!({"response-rewrite": {"status_code": 42}}),
            "plugins.response-rewrite.status_code",
        ),
        (
            json!({"response-rewrite": {"body": "%%", "body_base64": true}}),
            "plugins.response-rewrite.body",
        ),
        (
            json!({"response-rewrite": {"headers": {"X-A": "a\r\nb"}}}),
            "plugins.response-rewrite.headers.X-A",
        ),
        (
            json!({"request-id": {"header_name": "X Request"}}),
            "plugins.request-id.header_name",
        ),
        (
            json!({"request-id": {"algorithm": "snowflake"}}),
            "plugins.request-id.algorithm",
        ),
    ];
    for (plugins, field) in cases {
        let e = route_err(json!({"uri": "/a", "upstream": up, "plugins": plugins}));
        assert_eq!(e.field, field, "{plugins} -> {e}");
    }
}

#[test]
fn global_rules_parse_and_bad_ones_name_the_field() {
    assert_eq!(
        "global_rules".parse::<ResourceKind>(),
        Ok(ResourceKind::GlobalRules)
    );
    let body = json!({"id": "g1", "name": "all", "labels": {"team": "edge"},
        "plugins": {"response-rewrite": {"headers": {"set": {"X-Gw": "postern"}}}}});
    let r = Resource::parse(ResourceKind::GlobalRules, &body).unwrap();
    let Resource::GlobalRule(g) = &r else {
        panic!("not a global rule")
    };
    assert_eq!(g.plugins.len(), 1);
    assert!(r.references().is_empty());
    let mut set = ConfigSet::default();
    set.insert("g1", r);
    set.check_references().unwrap();
    assert_eq!(set.global_rules.len(), 1);

    let cases = [
        (json!({}), "plugins"),
        (json!({"plugins": {}}), "plugins"),
        (json!({"name": "x"}), "plugins"),
        (
            json!({"plugins": {"no-such-plugin": {}}}),
            "plugins.no-such-plugin",
        ),
        (
            json!({"plugins": {"response-rewrite": {"status_code": "x"}}}),
            "plugins.response-rewrite.status_code",
        ),
        (json!({"plugins": {"request-id": {}}, "uri": "/a"}), "uri"),
    ];
    for (body, field) in cases {
        let e = Resource::parse(ResourceKind::GlobalRules, &body).expect_err("rejected");
        assert_eq!(e.field, field, "{body}: {e}");
    }
}

#[test]
fn consumers_parse_reference_their_group_and_hold_unique_credentials() {
    let consumer = |name: &str, body: Value| {
        Resource::parse(ResourceKind::Consumers, &body).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let mut set = ConfigSet::default();
    let a = consumer(
        "a",
        json!({"username": "a", "group_id": "g",
               "plugins": {"jwt-auth": {"key": "shared", "secret": "s"},
                           "key-auth": {"key": "api-key-a-1"}}}),
    );
    assert_eq!(
        a.references(),
        vec![Reference {
            field: "group_id",
            kind: ResourceKind::ConsumerGroups,
            id: "g"
        }]
    );
    assert_eq!(a.claims().len(), 2);
    set.insert("a", a);
    let e = set.check_references().unwrap_err();
    assert_eq!(e.field, "consumers/a.group_id");
    set.insert(
        "g",
        Resource::parse(ResourceKind::ConsumerGroups, &json!({"plugins": {}})).unwrap(),
    );
    set.check_references().unwrap();

    // The same jwt key on a second consumer: the snapshot is refused, without the value.
    set.insert(
        "b",
        consumer(
            "b",
            json!({"username": "b", "plugins": {"jwt-auth": {"key": "shared", "secret": "t"}}}),
        ),
    );
    let e = set.check_references().unwrap_err();
    assert_eq!(e.field, "consumers/b.plugins.jwt-auth.key");
    assert!(e.message.contains("consumers/a"), "{e}");
    // The same key-auth key: refused too, and the key (a secret) is not in the message.
    set.insert(
        "b",
        consumer(
            "b",
            json!({"username": "b", "plugins": {"key-auth": {"key": "api-key-a-1"}}}),
        ),
    );
    let e = set.check_references().unwrap_err();
    assert!(!e.to_string().contains("api-key-a-1"), "{e}");

    for (body, field) in [
        (json!({}), "username"),
        (json!({"username": "a/b"}), "username"),
        (json!({"username": "a", "id": "b"}), "id"),
        (
            json!({"username": "a", "plugins": {"cors": {}}}),
            "plugins.cors",
        ),
        (
            json!({"username": "a", "plugins": {"nope": {}}}),
            "plugins.nope",
        ),
        (
            json!({"username": "a", "plugins": {"key-auth": {}}}),
            "plugins.key-auth.key",
        ),
    ] {
        let e = Resource::parse(ResourceKind::Consumers, &body).expect_err(&body.to_string());
        assert_eq!(e.field, field, "{body}: {e}");
    }
}
