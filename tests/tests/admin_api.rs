//! The Admin API against a real control plane: authentication, CRUD semantics, and every kind of
//! bad input answered with a 400 that names the field while the revision stays where it was.

use postern_tests::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn every_path_needs_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let ok = cp.client();
    ok.put_ok("/admin/upstreams/u1", json!({"nodes": {"127.0.0.1:80": 1}}))
        .await;
    let missing = AdminClient {
        key: None,
        ..ok.clone()
    };
    let wrong = AdminClient {
        key: Some(format!("{}x", ADMIN_KEY)),
        ..ok.clone()
    };
    let prefix = AdminClient {
        key: Some(ADMIN_KEY[..ADMIN_KEY.len() - 1].to_string()),
        ..ok.clone()
    };
    let body = json!({"nodes": {"127.0.0.1:80": 2}}).to_string();
    for client in [&missing, &wrong, &prefix] {
        for (method, path) in [
            (Method::GET, "/admin/upstreams"),
            (Method::GET, "/admin/upstreams/u1"),
            (Method::PUT, "/admin/upstreams/u1"),
            (Method::PATCH, "/admin/upstreams/u1"),
            (Method::DELETE, "/admin/upstreams/u1"),
            (Method::POST, "/admin/upstreams"),
            (Method::GET, "/admin/data-planes"),
            (Method::GET, "/admin/history"),
            (Method::GET, "/apisix/admin/upstreams/u1"),
            (Method::PUT, "/apisix/admin/routes/r9"),
        ] {
            let (status, v) = client
                .request(method.clone(), path, Some(&body))
                .await
                .unwrap();
            assert_eq!(
                status, 401,
                "{method} {path} with key {:?}: {v}",
                client.key
            );
            assert_eq!(v["code"], "unauthorized");
        }
    }
    // Nothing changed: the upstream still has weight 1.
    let (_, v) = ok.get("/admin/upstreams/u1").await.unwrap();
    assert_eq!(v["value"]["nodes"]["127.0.0.1:80"], 1);
}

#[tokio::test]
async fn crud_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let up = json!({"type": "roundrobin", "nodes": {"127.0.0.1:8080": 1}});

    let (status, created) = admin
        .request(Method::PUT, "/admin/upstreams/u1", Some(&up.to_string()))
        .await
        .unwrap();
    assert_eq!(status, 201);
    assert_eq!(created["revision"], 1);
    assert_eq!(created["value"]["id"], "u1");
    let (status, replaced) = admin
        .request(Method::PUT, "/admin/upstreams/u1", Some(&up.to_string()))
        .await
        .unwrap();
    assert_eq!((status, replaced["revision"].as_u64()), (200, Some(2)));
    assert_eq!(replaced["create_revision"], 1);

    // POST generates an id.
    let (status, posted) = admin
        .request(
            Method::POST,
            "/admin/routes",
            Some(&json!({"uri": "/p", "upstream_id": "u1"}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{posted}");
    let id = posted["id"].as_str().unwrap().to_string();
    assert!(!id.is_empty());
    let (_, list) = admin.get("/admin/routes").await.unwrap();
    assert_eq!(list["total"], 1);
    assert_eq!(list["list"][0]["id"], id.as_str());

    // PATCH merges; null removes.
    let path = format!("/admin/routes/{id}");
    let (status, patched) = admin
        .request(
            Method::PATCH,
            &path,
            Some(&json!({"methods": ["GET"], "name": "n", "uri": "/q"}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["value"]["uri"], "/q");
    assert_eq!(patched["value"]["upstream_id"], "u1");
    let (_, patched) = admin
        .request(
            Method::PATCH,
            &path,
            Some(&json!({"name": null}).to_string()),
        )
        .await
        .unwrap();
    assert!(patched["value"].get("name").is_none());

    // If-Match: the current mod_revision passes, a stale one gets 412.
    let current = patched["mod_revision"].as_u64().unwrap();
    let resp = admin
        .http
        .put(format!("{}{path}", admin.base))
        .header("x-api-key", ADMIN_KEY)
        .header("if-match", format!("\"{}\"", current - 1))
        .body(json!({"uri": "/z", "upstream_id": "u1"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 412);
    let resp = admin
        .http
        .put(format!("{}{path}", admin.base))
        .header("x-api-key", ADMIN_KEY)
        .header("if-match", current.to_string())
        .body(json!({"uri": "/z", "upstream_id": "u1"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // DELETE, then 404.
    let (status, del) = admin.request(Method::DELETE, &path, None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(del["deleted"], true);
    assert_eq!(admin.get(&path).await.unwrap().0, 404);
    assert_eq!(
        admin.request(Method::DELETE, &path, None).await.unwrap().0,
        404
    );
    assert_eq!(admin.get("/admin/widgets").await.unwrap().0, 404);

    // History: one entry per accepted write, with the key's name.
    let (_, h) = admin.get("/admin/history").await.unwrap();
    let ops: Vec<(u64, &str)> = h["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["revision"].as_u64().unwrap(), e["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [
            (1, "put"),
            (2, "put"),
            (3, "put"),
            (4, "put"),
            (5, "put"),
            (6, "put"),
            (7, "delete")
        ]
    );
    assert_eq!(h["list"][6]["actor"], "admin");
    assert_eq!(h["list"][6]["before"]["uri"], "/z");
    assert!(h["list"][6]["after"].is_null());
}

#[tokio::test]
async fn bad_input_is_rejected_naming_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    admin
        .put_ok(
            "/admin/upstreams/u1",
            json!({"nodes": {"127.0.0.1:8080": 1}}),
        )
        .await;
    admin
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/a", "upstream_id": "u1"}),
        )
        .await;
    let before = admin.revision().await;
    assert_eq!(before, 2);

    let up = json!({"nodes": {"127.0.0.1:80": 1}});
    let cases: Vec<(Method, &str, String, u16, &str)> = vec![
        (
            Method::PUT,
            "/admin/routes/r2",
            "{\"uri\": \"/a\",".into(),
            400,
            "",
        ),
        (Method::PUT, "/admin/routes/r2", "[1]".into(), 400, ""),
        (
            Method::PUT,
            "/admin/routes/r2",
            json!({"uri": 5, "upstream": up}).to_string(),
            400,
            "uri",
        ),
        (
            Method::PUT,
            "/admin/routes/r2",
            json!({"uri": "/a", "upstream": up, "colour": "red"}).to_string(),
            400,
            "colour",
        ),
        (
            Method::PUT,
            "/admin/routes/r2",
            json!({"uri": "/a", "upstream": up, "plugins": {"no-such-plugin": {}}}).to_string(),
            400,
            "plugins.no-such-plugin",
        ),
        (
            Method::PUT,
            "/admin/routes/r2",
            json!({"uri": "/a", "upstream": {"nodes": {"127.0.0.1:99999": 1}}}).to_string(),
            400,
            "upstream.nodes.127.0.0.1:99999",
        ),
        (
            Method::PUT,
            "/admin/upstreams/u2",
            json!({"nodes": {"not a host:80": 1}}).to_string(),
            400,
            "nodes.not a host:80",
        ),
        (
            Method::PUT,
            "/admin/routes/r2",
            json!({"uri": "/a", "upstream_id": "missing"}).to_string(),
            400,
            "upstream_id",
        ),
        (
            Method::PUT,
            "/admin/routes/r2",
            json!({"uri": "/a", "service_id": "missing"}).to_string(),
            400,
            "service_id",
        ),
        (
            Method::PUT,
            "/admin/routes/r2",
            json!({"id": "other", "uri": "/a", "upstream": up}).to_string(),
            400,
            "id",
        ),
        (
            Method::PUT,
            "/admin/routes/bad%20id",
            json!({"uri": "/a", "upstream": up}).to_string(),
            400,
            "id",
        ),
        (
            Method::POST,
            "/admin/routes",
            json!({"id": "r9", "uri": "/a", "upstream": up}).to_string(),
            400,
            "id",
        ),
        (
            Method::PATCH,
            "/admin/routes/r1",
            json!({"upstream_id": "missing"}).to_string(),
            400,
            "upstream_id",
        ),
        (
            Method::PATCH,
            "/admin/routes/r1",
            json!({"methods": ["FETCH"]}).to_string(),
            400,
            "methods.0",
        ),
        (
            Method::DELETE,
            "/admin/upstreams/u1",
            String::new(),
            400,
            "id",
        ),
    ];
    for (method, path, body, want_status, want_field) in cases {
        let (status, v) = admin
            .request(method.clone(), path, Some(&body))
            .await
            .unwrap();
        assert_eq!(status, want_status, "{method} {path} {body}: {v}");
        assert_eq!(v["field"], want_field, "{method} {path} {body}: {v}");
        assert!(
            v["error_msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert_eq!(
            admin.revision().await,
            before,
            "{method} {path} {body} moved the revision"
        );
    }
    // The in-use refusal says who uses it.
    let (_, v) = admin
        .request(Method::DELETE, "/admin/upstreams/u1", None)
        .await
        .unwrap();
    assert!(
        v["error_msg"].as_str().unwrap().contains("routes/r1"),
        "{v}"
    );
    // Nothing was written by any of them.
    assert_eq!(admin.get("/admin/routes/r2").await.unwrap().0, 404);
    assert_eq!(admin.get("/admin/routes").await.unwrap().1["total"], 1);
}

#[tokio::test]
async fn global_rules_crud_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let rule = json!({"plugins": {"response-rewrite": {"headers": {"set": {"X-Gw": "postern"}}}}});

    let (status, created) = admin
        .request(
            Method::PUT,
            "/admin/global_rules/g1",
            Some(&rule.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["value"]["id"], "g1");
    let (status, got) = admin.get("/apisix/admin/global_rules/g1").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(got["value"]["plugins"], rule["plugins"]);
    let (_, list) = admin.get("/apisix/admin/global_rules").await.unwrap();
    assert_eq!(list["total"], 1);

    // Replaced through the APISIX path, seen on the native one.
    let (status, _) = admin
        .request(
            Method::PUT,
            "/apisix/admin/global_rules/g1",
            Some(&json!({"plugins": {"request-id": {}}}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, got) = admin.get("/admin/global_rules/g1").await.unwrap();
    assert_eq!(got["value"]["plugins"], json!({"request-id": {}}));

    // Bad rules: a 400 naming the field, nothing written.
    let before = admin.revision().await;
    for (body, field) in [
        (json!({}), "plugins"),
        (json!({"plugins": {}}), "plugins"),
        (
            json!({"plugins": {"no-such-plugin": {}}}),
            "plugins.no-such-plugin",
        ),
    ] {
        let (status, err) = admin
            .request(
                Method::PUT,
                "/admin/global_rules/g2",
                Some(&body.to_string()),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["field"], field, "{body}: {err}");
    }
    assert_eq!(admin.revision().await, before);

    let (status, _) = admin
        .request(Method::DELETE, "/apisix/admin/global_rules/g1", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(admin.get("/admin/global_rules/g1").await.unwrap().0, 404);
}
