//! Route matchers beyond the path: `vars` conditions (a route whose conditions fail lets the
//! next candidate match) and `:name` path parameters.

use postern_tests::*;
use serde_json::{Value, json};

/// GET through the proxy with extra headers; `(status, body)`.
async fn get(proxy: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("http://{proxy}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("proxy request");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn route(uri: &str, vars: Option<Value>, backend: std::net::SocketAddr, priority: i32) -> Value {
    let mut r = json!({"uri": uri, "priority": priority,
                       "upstream": {"nodes": {backend.to_string(): 1}}});
    if let Some(v) = vars {
        r["vars"] = v;
    }
    r
}

#[tokio::test]
async fn vars_and_path_parameters_route_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mobile = upstream("mobile").await;
    let web = upstream("web").await;
    let later = upstream("later-pages").await;
    let first = upstream("first-page").await;
    let local = upstream("local-only").await;
    let users = upstream("user").await;
    let me = upstream("me").await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();

    // Guide-style split: the same uri, mobile clients to one upstream, everyone else to another.
    let mobile_vars = json!([["http_x_client", "==", "mobile"]]);
    admin
        .put_ok(
            "/admin/routes/app-mobile",
            route("/app", Some(mobile_vars), mobile, 10),
        )
        .await;
    admin
        .put_ok("/admin/routes/app-web", route("/app", None, web, 0))
        .await;
    // A query argument, numerically.
    let page_vars = json!([["arg_page", ">", "1"]]);
    admin
        .put_ok(
            "/admin/routes/list-later",
            route("/list", Some(page_vars), later, 10),
        )
        .await;
    admin
        .put_ok("/admin/routes/list", route("/list", None, first, 0))
        .await;
    // The client address: only loopback may reach /internal; nobody matches /elsewhere.
    admin
        .put_ok(
            "/admin/routes/internal",
            route(
                "/internal",
                Some(json!([["remote_addr", "in", ["127.0.0.1", "::1"]]])),
                local,
                0,
            ),
        )
        .await;
    admin
        .put_ok(
            "/admin/routes/elsewhere",
            route(
                "/elsewhere",
                Some(json!([["remote_addr", "in", ["10.9.9.9"]]])),
                local,
                0,
            ),
        )
        .await;
    // A path parameter, with an exact path beside it.
    admin
        .put_ok("/admin/routes/user", route("/users/:id", None, users, 0))
        .await;
    let rev = admin
        .put_ok("/admin/routes/me", route("/users/me", None, me, 0))
        .await;
    wait_applied(cp.status.unwrap(), rev).await;

    /// `(path, headers, status, upstream body)`.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: &[Case<'_>] = &[
        ("/app", &[("x-client", "mobile")], 200, "mobile"),
        ("/app", &[("X-Client", "web")], 200, "web"),
        ("/app", &[], 200, "web"),
        ("/list?page=2", &[], 200, "later-pages"),
        ("/list?page=1", &[], 200, "first-page"),
        ("/list?page=abc", &[], 200, "first-page"),
        ("/list", &[], 200, "first-page"),
        ("/internal", &[], 200, "local-only"),
        ("/elsewhere", &[], 404, ""),
        ("/users/42", &[], 200, "user"),
        ("/users/me", &[], 200, "me"),
        ("/users/", &[], 404, ""),
        ("/users/42/posts", &[], 404, ""),
    ];
    for &(path, headers, status, body) in cases {
        let (got_status, got_body) = get(proxy, path, headers).await;
        assert_eq!(got_status, status, "{path} {headers:?}: {got_body}");
        if status == 200 {
            assert_eq!(got_body, body, "{path} {headers:?}");
        }
    }
}

#[tokio::test]
async fn bad_vars_and_params_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let up = json!({"nodes": {"127.0.0.1:9": 1}});
    let cases = [
        (
            json!({"uri": "/a", "upstream": up, "vars": [["http_x", "=", "a"]]}),
            "vars.0.1",
        ),
        (
            json!({"uri": "/a", "upstream": up,
                   "vars": [["http_x", "==", "a"], ["uri", "~~", "(oops"]]}),
            "vars.1.2",
        ),
        (
            json!({"uri": "/a", "upstream": up, "vars": [["nope", "==", "a"]]}),
            "vars.0.0",
        ),
        (json!({"uri": "/users/:", "upstream": up}), "uri"),
        (json!({"uri": "/a:b", "upstream": up}), "uri"),
    ];
    for (body, field) in cases {
        let (status, err) = admin
            .request(
                reqwest::Method::PUT,
                "/admin/routes/bad",
                Some(&body.to_string()),
            )
            .await
            .expect("admin request");
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["field"], field, "{body}: {err}");
    }
}
