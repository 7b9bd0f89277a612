//! `explain METHOD URL [-H 'Name: value']…`: asks the control plane which route the current
//! snapshot gives this request (`POST /admin/explain`, evaluated with the data plane's router).

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::Admin;
use crate::output::{Format, cell, structured};

pub async fn explain(
    admin: &Admin,
    method: &str,
    url: &str,
    headers: &[String],
    format: Format,
) -> anyhow::Result<()> {
    let mut pairs = Vec::new();
    for h in headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("-H {h}: expected 'Name: value'");
        };
        pairs.push(json!([name.trim(), value.trim()]));
    }
    let body = json!({"method": method.to_uppercase(), "url": url, "headers": pairs});
    let v = admin
        .post("/admin/explain", &body)
        .await
        .context("explain")?;
    if structured(format, &v)? {
        return Ok(());
    }
    let req = &v["request"];
    println!(
        "{} {} (host {}) against config version {}",
        cell(req.get("method")),
        cell(req.get("path")),
        cell(req.get("host")),
        cell(v.get("version"))
    );
    if v["matched"] != json!(true) {
        println!("no route matches: the gateway answers 404");
        return Ok(());
    }
    let route = &v["route"];
    println!(
        "route: {} (name {}, service {})",
        cell(route.get("id")),
        cell(route.get("name")),
        cell(route.get("service_id"))
    );
    if let Some(m) = route["matched_by"].as_object() {
        for (k, val) in m {
            println!("  {k}: {}", cell(Some(val)));
        }
    }
    let list = |key: &str| {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".to_string())
    };
    println!("plugins, in order: {}", list("plugins"));
    println!("upstream nodes: {}", list("upstream_nodes"));
    Ok(())
}
