//! The Admin API's OpenAPI document (`GET /admin/openapi.json`) is kept true: every documented
//! path and method reaches a handler (an answer that is neither the router's 405 nor its bare
//! 404), every method a documented path does not list is a 405, and paths outside the document
//! are 404s. `scripts/schemathesis.sh` then fuzzes the server against the document's schemas.

use postern_tests::*;
use reqwest::Method;
use serde_json::Value;

/// The router's own 404 (no route) has an empty body; a handler's 404 is the JSON error.
fn reached_a_handler(status: u16, body: &Value) -> bool {
    status != 405 && !(status == 404 && body.get("code").is_none())
}

#[tokio::test]
async fn the_document_lists_exactly_what_the_router_serves() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let (status, doc) = admin.get("/admin/openapi.json").await.unwrap();
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.0.3");
    // Served under the alias too, the same document.
    let (status, alias) = admin.get("/apisix/admin/openapi.json").await.unwrap();
    assert_eq!((status, &alias), (200, &doc));

    let ops = documented_operations(&doc, "probe-id");
    // Every kind's list and item paths, under both prefixes, at least.
    assert!(ops.len() > 2 * 10 * 7, "only {} operations", ops.len());
    for op in &ops {
        // `{}` is a valid JSON body for every write: handlers answer (mostly 400, naming the
        // missing field), which is what this test needs to see.
        let (status, body) = admin
            .request(op.method.clone(), &op.path, Some("{}"))
            .await
            .unwrap();
        assert!(
            reached_a_handler(status, &body),
            "documented {} {} ({}) is not served: {status} {body}",
            op.method,
            op.path,
            op.template
        );
    }
    println!("{} documented operations all reach a handler", ops.len());

    // Methods a documented path does not list: the router refuses them (405).
    let mut refused = 0;
    let paths: std::collections::BTreeSet<&str> = ops.iter().map(|o| o.path.as_str()).collect();
    for path in paths {
        for method in OPENAPI_METHODS {
            let method: Method = method.to_uppercase().parse().unwrap();
            if ops.iter().any(|o| o.path == path && o.method == method) {
                continue;
            }
            let (status, body) = admin.request(method.clone(), path, None).await.unwrap();
            assert_eq!(status, 405, "{method} {path} is not documented: {body}");
            refused += 1;
        }
    }
    assert!(refused > 30, "only {refused} undocumented methods tried");
    println!("{refused} undocumented path+method pairs answer 405");

    // Paths that are not in the document: no handler serves them.
    for path in [
        "/admin",
        "/admin/",
        "/admin/no-such-kind",
        "/admin/no-such-kind/x",
        "/admin/routes/x/y",
        "/admin/routes/x/cache/y",
        "/admin/ssls/x/health",
        "/admin/consumers/x/cache",
        "/admin/store",
        "/admin/store/other",
        "/admin/openapi.yaml",
        "/apisix/admin/no-such-kind/x/health",
        "/metrics/x",
        "/openapi.json",
    ] {
        let (status, body) = admin.get(path).await.unwrap();
        assert_eq!(status, 404, "GET {path} is not documented: {body}");
    }

    // Parameters the router cannot parse get the documented error body, not axum's plain text.
    for path in [
        "/admin/history?limit=abc",
        "/admin/history?after=-1",
        "/admin/routes/%FF",
    ] {
        let (status, body) = admin.get(path).await.unwrap();
        assert_eq!(status, 400, "GET {path}: {body}");
        assert_eq!(body["code"], "invalid", "GET {path}: {body}");
    }
}
