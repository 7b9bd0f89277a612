//! Plugins through a real data plane: answered by a plugin with no upstream, inherited from a
//! service, overridden by the route.

use postern_tests::*;
use serde_json::json;

#[tokio::test]
async fn request_termination_route_service_and_override() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("backend").await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();
    admin
        .put_ok("/admin/routes/maint", json!({"uri": "/maint", "plugins": {"request-termination": {"status_code": 503, "body": "down for maintenance"}}}))
        .await;
    admin
        .put_ok(
            "/admin/services/s1",
            json!({"upstream": {"nodes": {backend.to_string(): 1}}, "plugins": {"request-termination": {"status_code": 410, "message": "retired"}}}),
        )
        .await;
    admin
        .put_ok(
            "/admin/routes/old",
            json!({"uri": "/old", "service_id": "s1"}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/new",
            json!({"uri": "/new", "service_id": "s1", "plugins": {"request-termination": {"status_code": 200, "body": "{\"ok\":true}"}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;

    let resp = reqwest::get(format!("http://{proxy}/maint")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.text().await.unwrap(), "down for maintenance");
    assert_eq!(
        get_via(proxy, "/old", None).await.unwrap(),
        (410, r#"{"error_msg":"retired"}"#.to_string())
    );
    assert_eq!(
        get_via(proxy, "/new", None).await.unwrap(),
        (200, r#"{"ok":true}"#.to_string())
    );

    // Without the plugin the service's upstream answers.
    let rev = admin
        .put_ok(
            "/admin/services/s1",
            json!({"upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    assert_eq!(
        get_via(proxy, "/old", None).await.unwrap(),
        (200, "backend".to_string())
    );
}
