//! `admin-cli` driven as a binary against a real control plane (and its data plane): status and
//! lists, contexts, backup → wipe → restore, apply (twice), rollback, diffs between revisions,
//! and imports from Kong and APISIX applied and served.

use std::path::Path;
use std::process::Command;

use postern_tests::*;
use serde_json::{Value, json};

fn admin_cli(cp: &ControlPlane, args: &[&str]) -> (bool, String, String) {
    let (code, out, err) = run_cli(cp, args);
    (code == 0, out, err)
}

/// Runs the CLI with `--url` and the key in the environment; `(exit code, stdout, stderr)`.
fn run_cli(cp: &ControlPlane, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("admin-cli"))
        .args(["--url", &format!("http://{}", cp.admin)])
        .args(args)
        .env("POSTERN_ADMIN_KEY", ADMIN_KEY)
        .env("POSTERN_CLI_CONFIG", "/nonexistent/cli.toml")
        .output()
        .expect("run admin-cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI and insists on exit code 0; returns stdout.
fn cli_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let (code, out, err) = run_cli(cp, args);
    assert_eq!(code, 0, "admin-cli {args:?} failed:\n{out}\n{err}");
    out
}

async fn live_config(cp: &ControlPlane) -> Value {
    let (status, v) = cp.client().get("/admin/config").await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

/// The `+`/`-` lines of a unified diff, headers left out.
fn changed_lines(diff: &str) -> Vec<&str> {
    diff.lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect()
}

#[tokio::test]
async fn status_and_routes_list() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let dp = DataPlane::start(dir.path(), "dp-cli", &cp.sync_url()).await;
    let rev = cp
        .client()
        .put_ok("/admin/routes/products", json!({"uri": "/api/v1/products/*", "methods": ["GET"], "upstream": {"nodes": {"127.0.0.1:9": 1}}}))
        .await;
    wait_applied(dp.status, rev).await;

    let (ok, out, err) = wait_for(
        "the ACK to reach the CP",
        std::time::Duration::from_secs(5),
        || async {
            let r = admin_cli(&cp, &["-O", "table", "status"]);
            r.1.contains(&format!("version {rev} applied on 1 of 1"))
                .then_some(r)
        },
    )
    .await;
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("dp-cli"))
        .unwrap_or_else(|| panic!("no dp-cli row:\n{out}"));
    assert!(
        row.contains(" yes ") && row.contains(&format!(" {rev} ")),
        "{row}"
    );

    let (ok, out, err) = admin_cli(&cp, &["--output", "table", "routes", "list"]);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("products"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("/api/v1/products/*") && row.contains("GET"),
        "{row}"
    );

    // Not on a terminal (stdout is a pipe here), the default is JSON; --json is its old name.
    for args in [&["routes", "list"][..], &["--json", "routes", "list"]] {
        let (ok, out, _) = admin_cli(&cp, args);
        assert!(ok);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["total"], 1, "{args:?}");
    }
    let (ok, out, _) = admin_cli(&cp, &["--output", "yaml", "get", "routes", "products"]);
    assert!(ok);
    assert!(out.contains("uri: /api/v1/products/*"), "{out}");

    // A wrong key fails with a clear message and a non-zero exit.
    let out = Command::new(binary("admin-cli"))
        .args([
            "--url",
            &format!("http://{}", cp.admin),
            "--key",
            "wrong",
            "status",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Connection from a named context of the config file, nothing on the command line.
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "current = \"broken\"\n[contexts.broken]\nurl = \"http://127.0.0.1:9\"\nkey = \"x\"\n\
             [contexts.test]\nurl = \"http://{}\"\nkey = \"{ADMIN_KEY}\"\n",
            cp.admin
        ),
    )
    .unwrap();
    let with_context = |args: &[&str]| {
        Command::new(binary("admin-cli"))
            .args(args)
            .env("POSTERN_CLI_CONFIG", &config)
            .env_remove("POSTERN_ADMIN_KEY")
            .env_remove("POSTERN_ADMIN_URL")
            .output()
            .unwrap()
    };
    let out = with_context(&["--context", "test", "--json", "list", "routes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("products"));
    // Without --context the file's current one is used (here unreachable).
    let out = with_context(&["list", "routes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"));
}

#[tokio::test]
async fn backup_wipe_restore_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let backend = upstream("from backend").await;
    let admin = cp.client();
    admin
        .put_ok(
            "/admin/upstreams/u1",
            json!({"nodes": {backend.to_string(): 1}}),
        )
        .await;
    admin
        .put_ok(
            "/admin/services/s1",
            json!({"upstream_id": "u1", "plugins": {"cors": {}}}),
        )
        .await;
    admin
        .put_ok(
            "/admin/routes/api",
            json!({"uri": "/api/*", "service_id": "s1", "name": "api"}),
        )
        .await;
    admin
        .put_ok("/admin/routes/closed", json!({"uri": "/closed", "plugins": {"request-termination": {"status_code": 503, "body": "closed"}}}))
        .await;
    admin
        .put_ok(
            "/admin/global_rules/g1",
            json!({"plugins": {"cors": {"allow_origins": "https://a.example"}}}),
        )
        .await;
    let before = live_config(&cp).await;

    let file = dir.path().join("backup.yaml");
    cli_ok(&cp, &["backup", "-o", file.to_str().unwrap()]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("postern_backup: 1\n"), "{text}");
    let file = file.to_str().unwrap();
    cli_ok(&cp, &["validate", file]);
    let (code, out, _) = run_cli(&cp, &["diff", "--exit-code", file]);
    assert_eq!((code, out.as_str()), (0, ""));

    // Wipe, dependents first, with the CLI's delete.
    for (kind, id) in [
        ("global_rules", "g1"),
        ("routes", "closed"),
        ("routes", "api"),
        ("services", "s1"),
        ("upstreams", "u1"),
    ] {
        cli_ok(&cp, &["delete", kind, id]);
    }
    let wiped = live_config(&cp).await;
    assert!(
        wiped["resources"]
            .as_object()
            .unwrap()
            .values()
            .all(|l| l.as_array().unwrap().is_empty()),
        "{wiped}"
    );
    let (code, out, _) = run_cli(&cp, &["diff", "--exit-code", file]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--- /dev/null\n+++ file/routes/api\n"),
        "{out}"
    );

    // A restore that cannot apply as a whole changes nothing.
    let bad = write(
        &dir.path().join("bad.yaml"),
        "resources:\n  routes:\n  - {id: ok, uri: /ok, upstream: {nodes: {\"127.0.0.1:9\": 1}}}\n  - {id: dangling, uri: /d, service_id: missing}\n",
    );
    let (code, _, err) = run_cli(&cp, &["restore", &bad]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.yaml: routes/dangling.service_id: references services 'missing'"),
        "{err}"
    );
    assert_eq!(live_config(&cp).await["revision"], wiped["revision"]);

    let out = cli_ok(&cp, &["restore", file]);
    assert!(
        out.contains("5 to create, 0 to update, 0 to delete"),
        "{out}"
    );
    let after = live_config(&cp).await;
    assert_eq!(after["resources"], before["resources"]);
    let (code, out, _) = run_cli(&cp, &["diff", "--exit-code", file]);
    assert_eq!((code, out.as_str()), (0, ""));
    // One write of five changes: one new revision, with a history row per change.
    let rev = after["revision"].as_u64().unwrap();
    assert_eq!(rev, wiped["revision"].as_u64().unwrap() + 1);
    let (_, history) = cp
        .client()
        .get(&format!("/admin/history?after={}", rev - 1))
        .await
        .unwrap();
    let rows = history["list"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{history}");
    assert!(rows.iter().all(|r| r["revision"] == rev), "{history}");
    wait_applied(cp.status.unwrap(), rev).await;
    let proxy = cp.proxy.unwrap();
    assert_eq!(
        get_via(proxy, "/api/x", None).await.unwrap(),
        (200, "from backend".to_string())
    );
    assert_eq!(
        get_via(proxy, "/closed", None).await.unwrap(),
        (503, "closed".to_string())
    );
}

#[tokio::test]
async fn apply_is_idempotent_and_rollback_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let backend = upstream("v1").await;
    let first = write(
        &dir.path().join("first.yaml"),
        &format!(
            "resources:\n  upstreams:\n  - id: be\n    nodes: {{\"{backend}\": 1}}\n  routes:\n  - id: a\n    uri: /a\n    methods: [GET]\n    upstream_id: be\n    priority: 3\n  - id: b\n    uri: /b\n    upstream_id: be\n"
        ),
    );
    let out = cli_ok(&cp, &["apply", "--dry-run", &first]);
    assert!(
        out.contains("create upstreams/be\ncreate routes/a\ncreate routes/b\n"),
        "{out}"
    );
    assert_eq!(
        live_config(&cp).await["revision"],
        0,
        "a dry run writes nothing"
    );
    cli_ok(&cp, &["apply", &first]);
    let rev1 = live_config(&cp).await["revision"].as_u64().unwrap();
    assert_eq!(rev1, 1, "one apply, one revision");
    let out = cli_ok(&cp, &["apply", &first]);
    assert_eq!(out.trim(), "no changes");
    assert_eq!(live_config(&cp).await["revision"], rev1);
    let routes_at_rev1 = live_config(&cp).await["resources"]["routes"].clone();

    let second = write(
        &dir.path().join("second.yaml"),
        &format!(
            "resources:\n  upstreams:\n  - id: be\n    nodes: {{\"{backend}\": 1}}\n  routes:\n  - id: a\n    uri: /a2\n    methods: [GET]\n    upstream_id: be\n    priority: 3\n  - id: c\n    uri: /c\n    upstream_id: be\n"
        ),
    );
    let out = cli_ok(&cp, &["apply", "--wait", &second]);
    assert!(out.contains("update routes/a\ncreate routes/c\ndelete routes/b\n1 to create, 1 to update, 1 to delete"), "{out}");
    let rev2 = live_config(&cp).await["revision"].as_u64().unwrap();
    assert_eq!(rev2, rev1 + 1);
    // --wait returned only once the (dev) data plane served the new revision.
    assert!(
        out.contains(&format!("revision {rev2} served by 1 of 1 data planes")),
        "{out}"
    );

    // The diff between the two revisions: exactly the changed field of `a`, all of `b` and `c`.
    let (code, diff, err) = run_cli(
        &cp,
        &[
            "diff",
            "--exit-code",
            "--from-rev",
            &rev1.to_string(),
            "--to-rev",
            &rev2.to_string(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    let sections: Vec<&str> = diff.split("--- ").filter(|s| !s.is_empty()).collect();
    assert_eq!(sections.len(), 3, "{diff}");
    assert!(
        sections[0].starts_with(&format!("rev{rev1}/routes/a\n+++ rev{rev2}/routes/a\n")),
        "{diff}"
    );
    assert_eq!(
        changed_lines(sections[0]),
        ["-  \"uri\": \"/a\"", "+  \"uri\": \"/a2\""],
        "{diff}"
    );
    assert!(
        sections[1].starts_with(&format!("/dev/null\n+++ rev{rev2}/routes/c\n")),
        "{diff}"
    );
    assert!(
        sections[2].starts_with(&format!("rev{rev1}/routes/b\n+++ /dev/null\n")),
        "{diff}"
    );
    assert!(
        changed_lines(sections[2])
            .iter()
            .all(|l| l.starts_with('-')),
        "{diff}"
    );
    let (code, diff, _) = run_cli(
        &cp,
        &["diff", "--exit-code", "--from-rev", "1", "--to-rev", "1"],
    );
    assert_eq!((code, diff.as_str()), (0, ""));

    // Rollback: the route table of rev1 exactly, as one new revision, served by the data plane.
    let out = cli_ok(&cp, &["rollback", "--to-rev", &rev1.to_string()]);
    assert!(
        out.contains("1 to create, 1 to update, 1 to delete"),
        "{out}"
    );
    let live = live_config(&cp).await;
    assert_eq!(live["resources"]["routes"], routes_at_rev1);
    let rev3 = live["revision"].as_u64().unwrap();
    assert_eq!(rev3, rev2 + 1);
    wait_applied(cp.status.unwrap(), rev3).await;
    let proxy = cp.proxy.unwrap();
    assert_eq!(get_via(proxy, "/b", None).await.unwrap().0, 200);
    assert_eq!(get_via(proxy, "/c", None).await.unwrap().0, 404);
    let out = cli_ok(&cp, &["rollback", "--to-rev", &rev1.to_string()]);
    assert_eq!(out.trim(), "no changes");
    let (code, _, err) = run_cli(&cp, &["rollback", "--to-rev", "999"]);
    assert_eq!(code, 1);
    assert!(err.contains("in the future"), "{err}");
}

#[tokio::test]
async fn kong_and_apisix_imports_apply_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let backend = upstream("from backend").await;
    let kong = write(
        &dir.path().join("kong.yml"),
        &format!(
            "_format_version: '3.0'\nservices:\n- name: users\n  url: http://{backend}/internal\n  routes:\n  - name: users-route\n    paths: [/api/v1/users]\n  - name: closed\n    paths: [/closed]\n    plugins:\n    - name: request-termination\n      config: {{status_code: 403, message: nope}}\n  plugins:\n  - name: bot-detection\n"
        ),
    );
    // The guide's kong.yml maps completely (applied and served in the next test).
    let guide = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../admin-cli/tests/kong-guide.yml"
    );
    let (code, out, err) = run_cli(&cp, &["import", "--from", "kong", guide]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.trim(), "0 items could not be mapped");
    assert!(
        out.contains("rate-limiting:") && out.contains("- /api/v1/users/*"),
        "{out}"
    );

    let out_file = dir.path().join("postern.yaml");
    let (code, _, err) = run_cli(
        &cp,
        &[
            "import",
            "--from",
            "kong",
            &kong,
            "-o",
            out_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("not mapped: services/users.plugins.bot-detection"),
        "{err}"
    );
    cli_ok(&cp, &["apply", out_file.to_str().unwrap()]);
    let rev = live_config(&cp).await["revision"].as_u64().unwrap();
    wait_applied(cp.status.unwrap(), rev).await;
    let proxy = cp.proxy.unwrap();
    let resp = reqwest::get(format!("http://{proxy}/api/v1/users/42?x=1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Kong strips the route's prefix and puts the service's path in front.
    assert_eq!(resp.headers()["x-seen-path"], "/internal/42?x=1");
    assert_eq!(resp.headers()["x-seen-host"], backend.to_string().as_str());
    let (status, body) = get_via(proxy, "/closed", None).await.unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("nope"), "{body}");

    let apisix = write(
        &dir.path().join("apisix.yaml"),
        &format!(
            "routes:\n  - id: 1\n    uri: /hello\n    upstream_id: 1\n    plugin_config_id: pc\nupstreams:\n  - id: 1\n    nodes:\n      \"{backend}\": 1\n    type: roundrobin\nplugin_configs:\n  - id: pc\n    plugins:\n      cors: {{allow_origins: \"https://a.example\"}}\n#END\n"
        ),
    );
    let (code, imported, err) = run_cli(&cp, &["import", "--from", "apisix", &apisix]);
    assert_eq!(code, 0, "{err}");
    let out_file = write(&dir.path().join("from-apisix.yaml"), &imported);
    let out = cli_ok(&cp, &["apply", &out_file]);
    // What the Kong import created and the APISIX file does not have goes.
    assert!(out.contains("delete routes/users-route"), "{out}");
    let rev = live_config(&cp).await["revision"].as_u64().unwrap();
    wait_applied(cp.status.unwrap(), rev).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{proxy}/hello"))
        .header("origin", "https://a.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://a.example"
    );
    assert_eq!(
        get_via(proxy, "/api/v1/users/1", None).await.unwrap().0,
        404
    );
}

/// `PUT /admin/config` itself: validated as a whole (errors name kind/id and field), guarded by
/// `If-Match` on the global revision, recorded in the history with the key's name.
#[tokio::test]
async fn config_endpoint_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    admin
        .put_ok(
            "/admin/routes/keep",
            json!({"uri": "/k", "upstream": {"nodes": {"127.0.0.1:9": 1}}}),
        )
        .await;
    let put = |body: Value, if_match: Option<&str>| {
        let http = admin.http.clone();
        let url = format!("{}/admin/config", admin.base);
        let if_match = if_match.map(str::to_string);
        async move {
            let mut req = http.put(url).header("x-api-key", ADMIN_KEY).json(&body);
            if let Some(m) = if_match {
                req = req.header("if-match", m);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let route = json!({"id": "r", "uri": "/r", "upstream_id": "u"});
    let upstream = json!({"id": "u", "nodes": {"127.0.0.1:9": 1}});

    let (status, body) = put(
        json!({"resources": {"routes": [{"id": "r", "uri": 5}]}}),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "routes/r.uri", "{body}");
    let (status, body) = put(json!({"resources": {"routes": [route.clone()]}}), None).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("routes/r.upstream_id")),
        "{body}"
    );
    let (status, body) = put(json!({"resources": {"widgets": []}}), None).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("resources.widgets")),
        "{body}"
    );
    let (status, body) = put(
        json!({"resources": {"upstreams": [upstream.clone()], "routes": [route.clone()]}}),
        Some("\"7\""),
    )
    .await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(admin.revision().await, 1, "rejected bodies change nothing");

    let doc = json!({"resources": {"upstreams": [upstream], "routes": [route]}});
    let (status, body) = put(doc.clone(), Some("1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"revision": 2, "created": 2, "updated": 0, "deleted": 1}),
        "three changes, one revision"
    );
    let (status, body) = put(doc, None).await;
    assert_eq!(
        (status, &body["revision"], &body["created"]),
        (200, &json!(2), &json!(0))
    );
    let (_, history) = admin.get("/admin/history?after=1").await.unwrap();
    let ops: Vec<String> = history["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}/{} {}",
                e["revision"],
                e["op"].as_str().unwrap(),
                e["kind"].as_str().unwrap(),
                e["id"].as_str().unwrap(),
                e["actor"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(ops[0].starts_with("2 put upstreams/u "), "{ops:?}");
    assert!(ops[1].starts_with("2 put routes/r "), "{ops:?}");
    assert!(ops[2].starts_with("2 delete routes/keep "), "{ops:?}");
    assert!(
        ops.iter().all(|o| !o.ends_with(" -")),
        "the key's name is the actor: {ops:?}"
    );
}

/// `explain` answers with the data plane's own router: precedence, hosts, vars, plugin order.
#[tokio::test]
async fn explain_uses_the_data_plane_router() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    admin
        .put_ok(
            "/admin/upstreams/u",
            json!({"nodes": {"127.0.0.1:7001": 1, "127.0.0.1:7002": 2}}),
        )
        .await;
    admin
        .put_ok(
            "/admin/routes/wide",
            json!({"uri": "/api/*", "upstream_id": "u"}),
        )
        .await;
    admin
        .put_ok("/admin/routes/beta", json!({"uri": "/api/*", "upstream_id": "u", "vars": [["http_x_beta", "==", "1"]], "priority": 5,
            "plugins": {"cors": {}, "proxy-rewrite": {"uri": "/x"}, "request-id": {}}}))
        .await;
    let rev = admin
        .put_ok("/admin/routes/host", json!({"uri": "/api/v1", "hosts": ["a.example"], "upstream": {"nodes": {"127.0.0.1:7003": 1}}}))
        .await;
    wait_for(
        "the snapshot",
        std::time::Duration::from_secs(5),
        || async {
            let (_, v) = admin.get("/admin/status").await.ok()?;
            (v["snapshot"]["version"].as_u64() == Some(rev)).then_some(())
        },
    )
    .await;

    let out = cli_ok(
        &cp,
        &["-O", "table", "explain", "GET", "http://b.example/api/v1"],
    );
    assert!(out.contains("route: wide "), "{out}");
    assert!(
        out.contains("upstream nodes: 127.0.0.1:7001, 127.0.0.1:7002"),
        "{out}"
    );
    let out = cli_ok(
        &cp,
        &["-O", "table", "explain", "GET", "http://a.example/api/v1"],
    );
    assert!(out.contains("route: host "), "{out}");
    let out = cli_ok(
        &cp,
        &[
            "--output",
            "json",
            "explain",
            "get",
            "/api/v1",
            "-H",
            "Host: b.example",
            "-H",
            "X-Beta: 1",
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["route"]["id"], "beta", "{v}");
    // Highest priority first, as the data plane runs them.
    let plugins: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(plugins, ["request-id", "cors", "proxy-rewrite"], "{v}");
    assert_eq!(
        v["route"]["matched_by"]["vars"],
        json!([["http_x_beta", "==", "1"]])
    );
    let out = cli_ok(
        &cp,
        &["-O", "table", "explain", "GET", "http://b.example/other"],
    );
    assert!(out.contains("no route matches"), "{out}");
}

/// The guide's kong.yml, with only its host names pointed at real servers (the service at the
/// test's upstream, `redis-cluster` at the local Redis), imported, applied and rate-limiting as
/// intended: 100 requests a minute per caller (no consumer here, so per client address), the
/// 101st refused with Kong's 429 and headers.
#[tokio::test]
async fn guide_kong_file_imported_and_applied_rate_limits() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let redis = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        redis.get_multiplexed_async_connection(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .expect(
        "this test needs Redis on 127.0.0.1:6379: start it with `redis-server --daemonize yes`",
    );
    // Counters left by an earlier run of this test (same route, same config) would count.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("postern:rl:{rate-limiting:*:user-route:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let backend = upstream("users").await;
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../admin-cli/tests/kong-guide.yml"
    ))
    .unwrap()
    .replace("user-service:8080", &backend.to_string())
    .replace("host: redis-cluster", "host: 127.0.0.1");
    let kong = write(&dir.path().join("kong.yml"), &guide);
    let out_file = dir.path().join("postern.yaml");
    let (code, _, err) = run_cli(
        &cp,
        &[
            "import",
            "--from",
            "kong",
            &kong,
            "-o",
            out_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    cli_ok(&cp, &["apply", out_file.to_str().unwrap()]);
    let rev = live_config(&cp).await["revision"].as_u64().unwrap();
    wait_applied(cp.status.unwrap(), rev).await;

    // A fixed minute window: keep the 101 requests inside one minute.
    let into_minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute > 40 {
        tokio::time::sleep(std::time::Duration::from_secs(61 - into_minute)).await;
    }
    let proxy = cp.proxy.unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{proxy}/api/v1/users/7");
    for i in 0..100 {
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        if i == 0 {
            assert_eq!(resp.headers()["x-ratelimit-limit-minute"], "100");
            assert_eq!(resp.headers()["x-ratelimit-remaining-minute"], "99");
            assert_eq!(resp.headers()["x-seen-path"], "/7");
        }
    }
    let refused = http.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
}
