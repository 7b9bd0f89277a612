//! `status`: data planes, the version each serves, lag and last NACK; `list|get|delete`.

use postern_proto::model::ResourceKind;
use serde_json::Value;

use crate::client::Admin;
use crate::output::{Format, cell, structured, table};

pub async fn status(admin: &Admin, format: Format) -> anyhow::Result<()> {
    let v = admin.get("/admin/data-planes").await?;
    if structured(format, &v)? {
        return Ok(());
    }
    let list = v["list"].as_array().cloned().unwrap_or_default();
    println!(
        "version {} applied on {} of {} connected data planes",
        cell(v.get("version")),
        cell(v.get("applied_current")),
        cell(v.get("connected")),
    );
    let rows = list
        .iter()
        .map(|d| {
            vec![
                cell(d.get("node_id")),
                cell(d.get("address")),
                if d["connected"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
                cell(d.get("applied_version")),
                format!("{}s", cell(d.get("lag_seconds"))),
                cell(d.get("last_seen")),
                cell(d.pointer("/last_nack/error")),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "ADDRESS",
            "CONNECTED",
            "APPLIED",
            "LAG",
            "LAST SEEN",
            "LAST NACK",
        ],
        rows,
    );
    Ok(())
}

pub async fn list(admin: &Admin, kind: ResourceKind, format: Format) -> anyhow::Result<()> {
    let v = admin.get(&format!("/admin/{kind}")).await?;
    if structured(format, &v)? {
        return Ok(());
    }
    let items = v["list"].as_array().cloned().unwrap_or_default();
    if kind == ResourceKind::Routes {
        let rows = items
            .iter()
            .map(|r| {
                let val = &r["value"];
                let uris = val.get("uri").cloned().or_else(|| val.get("uris").cloned());
                vec![
                    cell(r.get("id")),
                    cell(val.get("name")),
                    cell(uris.as_ref()),
                    cell(val.get("methods")),
                    cell(val.get("host").or(val.get("hosts"))),
                    cell(r.get("mod_revision")),
                ]
            })
            .collect();
        table(&["ID", "NAME", "URI", "METHODS", "HOST", "REVISION"], rows);
    } else {
        let rows = items
            .iter()
            .map(|r| {
                let val = &r["value"];
                let plugins = val
                    .get("plugins")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().cloned().collect::<Vec<_>>().join(","));
                vec![
                    cell(r.get("id")),
                    cell(val.get("name")),
                    plugins
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "-".into()),
                    cell(r.get("mod_revision")),
                ]
            })
            .collect();
        table(&["ID", "NAME", "PLUGINS", "REVISION"], rows);
    }
    Ok(())
}

pub async fn get(
    admin: &Admin,
    kind: ResourceKind,
    id: &str,
    format: Format,
) -> anyhow::Result<()> {
    let v = admin.get(&format!("/admin/{kind}/{id}")).await?;
    // One resource reads best as its body; a "table" of one body is its YAML.
    let format = if format == Format::Table {
        Format::Yaml
    } else {
        format
    };
    structured(format, &v["value"])?;
    Ok(())
}

pub async fn delete(admin: &Admin, kind: ResourceKind, id: &str) -> anyhow::Result<()> {
    let v = admin.delete(&format!("/admin/{kind}/{id}")).await?;
    println!("deleted {kind}/{id} (revision {})", cell(v.get("revision")));
    Ok(())
}
