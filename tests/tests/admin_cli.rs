//! `admin-cli status` and `admin-cli routes list` against a real control plane and data plane.

use std::process::Command;

use postern_tests::*;
use serde_json::json;

fn admin_cli(cp: &ControlPlane, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("admin-cli"))
        .args(["--url", &format!("http://{}", cp.admin)])
        .args(args)
        .env("POSTERN_ADMIN_KEY", ADMIN_KEY)
        .output()
        .expect("run admin-cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
            let r = admin_cli(&cp, &["status"]);
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

    let (ok, out, err) = admin_cli(&cp, &["routes", "list"]);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("products"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("/api/v1/products/*") && row.contains("GET"),
        "{row}"
    );

    let (ok, out, _) = admin_cli(&cp, &["--json", "routes", "list"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"], 1);

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
}
