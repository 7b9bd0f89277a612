//! `global_rules` through a real control plane and data plane: a global rule's plugins run on
//! every route, a route's own config of the same plugin wins, and deleting the rule takes its
//! plugins off every route within the propagation time.

use std::net::SocketAddr;
use std::time::Duration;

use postern_tests::*;
use reqwest::Method;
use serde_json::json;

/// `(status, x-global header)` of a GET through the proxy.
async fn global_header(proxy: SocketAddr, path: &str) -> (u16, Option<String>) {
    let resp = reqwest::get(format!("http://{proxy}{path}")).await.unwrap();
    let h = resp
        .headers()
        .get("x-global")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), h)
}

#[tokio::test]
async fn a_global_rule_reaches_every_route_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("backend").await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();
    let up = json!({"nodes": {backend.to_string(): 1}});

    admin
        .put_ok("/admin/routes/a", json!({"uri": "/a", "upstream": up}))
        .await;
    admin
        .put_ok("/admin/routes/b", json!({"uri": "/b", "upstream": up}))
        .await;
    admin
        .put_ok(
            "/admin/routes/own",
            json!({"uri": "/own", "upstream": up, "plugins": {"response-rewrite":
                {"headers": {"set": {"X-Global": "route"}}}}}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/global_rules/g1",
            json!({"plugins": {"response-rewrite": {"headers": {"set": {"X-Global": "on"}}}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;

    for path in ["/a", "/b"] {
        assert_eq!(
            global_header(proxy, path).await,
            (200, Some("on".into())),
            "{path}"
        );
    }
    assert_eq!(
        global_header(proxy, "/own").await,
        (200, Some("route".into())),
        "the route's own response-rewrite wins"
    );
    // No route matches: still Postern's plain 404, no plugin runs (APISIX would run the rule).
    assert_eq!(global_header(proxy, "/none").await, (404, None));

    let (status, del) = admin
        .request(Method::DELETE, "/admin/global_rules/g1", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{del}");
    wait_for("the header gone", Duration::from_secs(5), || async {
        let gone = global_header(proxy, "/a").await == (200, None)
            && global_header(proxy, "/b").await == (200, None);
        gone.then_some(())
    })
    .await;
    assert_eq!(
        global_header(proxy, "/own").await,
        (200, Some("route".into()))
    );
}
