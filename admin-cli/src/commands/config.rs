//! Whole-config commands: `backup`, `validate`, `diff`, `apply`, `restore`, `rollback`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postern_proto::model::ResourceKind;
use serde_json::Value;

use super::diff::{changes, print_diff, summary, unified};
use crate::client::Admin;
use crate::document::Document;

/// Exit status when `diff --exit-code` found differences.
pub const EXIT_DIFFERENT: u8 = 2;

pub async fn live(admin: &Admin) -> anyhow::Result<Document> {
    Document::from_value(&admin.get("/admin/config").await?).context("GET /admin/config")
}

/// Serialises for a file: JSON for `*.json`, YAML otherwise.
fn render(doc: &Value, path: Option<&Path>) -> anyhow::Result<String> {
    if path.is_some_and(|p| p.extension().is_some_and(|e| e == "json")) {
        Ok(serde_json::to_string_pretty(doc)? + "\n")
    } else {
        Ok(serde_yaml_ng::to_string(doc)?)
    }
}

/// Writes `text` to `path` readable by its owner only (configs carry plugin credentials).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub async fn backup(
    admin: &Admin,
    out: Option<&Path>,
    include_secrets: bool,
    format: crate::output::Format,
) -> anyhow::Result<()> {
    let mut doc = live(admin).await?;
    if !include_secrets {
        let redacted: usize = doc
            .resources
            .values_mut()
            .flat_map(|m| m.values_mut())
            .map(crate::secrets::redact)
            .sum();
        if redacted > 0 {
            eprintln!(
                "{redacted} secrets redacted: this backup cannot be restored as is \
                 (take it with --include-secrets to restore credentials)"
            );
        }
    }
    let text = match (out, format) {
        (None, crate::output::Format::Json) => {
            serde_json::to_string_pretty(&doc.to_value())? + "\n"
        }
        _ => render(&doc.to_value(), out)?,
    };
    match out {
        None => print!("{text}"),
        Some(path) => {
            write_private(path, &text)?;
            eprintln!(
                "backed up {} resources at revision {} to {}",
                doc.len(),
                doc.revision.unwrap_or(0),
                path.display()
            );
        }
    }
    Ok(())
}

/// Reads and validates a file offline; every problem is printed before failing.
pub fn load_valid(path: &Path) -> anyhow::Result<Document> {
    let doc = Document::read(path)?;
    let errors = doc.validate(&path.display().to_string());
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        bail!("{} is not valid ({} errors)", path.display(), errors.len());
    }
    Ok(doc)
}

pub fn validate(path: &Path) -> anyhow::Result<()> {
    let doc = load_valid(path)?;
    println!("{}: {} resources, valid", path.display(), doc.len());
    Ok(())
}

/// Prints the diff from `from` to `to`; `Ok(true)` when they differ.
fn show_diff(from: &Document, to: &Document, from_label: &str, to_label: &str) -> bool {
    let plan = changes(from, to);
    print_diff(&unified(&plan, from_label, to_label));
    !plan.is_empty()
}

pub async fn diff_file(admin: &Admin, path: &Path) -> anyhow::Result<bool> {
    let file = Document::read(path)?;
    for kind in file.unknown.keys() {
        eprintln!(
            "{}: resources.{kind}: unknown resource kind, not compared",
            path.display()
        );
    }
    let live = live(admin).await?;
    Ok(show_diff(&live, &file, "live", "file"))
}

pub async fn diff_revisions(admin: &Admin, a: u64, b: u64) -> anyhow::Result<bool> {
    let from = config_at(admin, a).await?;
    let to = config_at(admin, b).await?;
    Ok(show_diff(
        &from,
        &to,
        &format!("rev{a}"),
        &format!("rev{b}"),
    ))
}

/// How `apply`, `restore` and `rollback` write.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Print the plan, write nothing.
    pub dry_run: bool,
    /// After the write, wait this long at most for every connected data plane to serve it.
    pub wait: Option<Duration>,
}

/// Makes the live config equal `target` in one transaction (`PUT /admin/config`, guarded by
/// the revision the plan was computed against).
async fn converge(admin: &Admin, target: &Document, opts: WriteOptions) -> anyhow::Result<()> {
    let live = live(admin).await?;
    let plan = changes(&live, target);
    println!("{}", summary(&plan));
    if plan.is_empty() || opts.dry_run {
        return Ok(());
    }
    let mut body = target.to_value();
    if let Some(obj) = body.as_object_mut() {
        obj.remove("revision");
    }
    let writing =
        crate::progress::spinner(format!("writing {} changes in one transaction", plan.len()));
    let answer = admin.put_config(&body, live.revision).await;
    writing.finish_and_clear();
    let answer = answer?;
    println!(
        "applied as revision {} ({} created, {} updated, {} deleted)",
        answer["revision"], answer["created"], answer["updated"], answer["deleted"]
    );
    if let (Some(timeout), Some(revision)) = (opts.wait, answer["revision"].as_u64()) {
        wait_for_data_planes(admin, revision, timeout).await?;
    }
    Ok(())
}

/// Waits until every connected data plane serves `revision` (or a newer one), with a bar;
/// fails after `timeout` naming how many do.
async fn wait_for_data_planes(
    admin: &Admin,
    revision: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut bar = None;
    loop {
        let v = admin.get("/admin/data-planes").await?;
        let connected: Vec<&Value> = v["list"]
            .as_array()
            .map(|l| l.iter().filter(|d| d["connected"] == true).collect())
            .unwrap_or_default();
        if connected.is_empty() {
            println!("no data plane is connected: nothing to wait for");
            return Ok(());
        }
        let serving = connected
            .iter()
            .filter(|d| d["applied_version"].as_u64().is_some_and(|a| a >= revision))
            .count();
        let total = connected.len();
        let bar = bar.get_or_insert_with(|| {
            crate::progress::bar(
                total as u64,
                format!("data planes serving revision {revision}"),
            )
        });
        bar.set_length(total as u64);
        bar.set_position(serving as u64);
        if serving == total {
            bar.finish_and_clear();
            println!(
                "revision {revision} served by {serving} of {total} data planes ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() >= timeout {
            bar.abandon();
            bail!(
                "revision {revision} is served by {serving} of {total} connected data planes \
                 after {} s (see `admin-cli status`)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn apply(admin: &Admin, path: &Path, opts: WriteOptions) -> anyhow::Result<()> {
    let doc = load_valid(path)?;
    converge(admin, &doc, opts).await
}

pub async fn restore(admin: &Admin, path: &Path, opts: WriteOptions) -> anyhow::Result<()> {
    let doc = load_valid(path)?;
    if doc.revision.is_none() {
        eprintln!(
            "note: {} has no revision; restoring it anyway",
            path.display()
        );
    }
    converge(admin, &doc, opts).await
}

pub async fn rollback(admin: &Admin, rev: u64, opts: WriteOptions) -> anyhow::Result<()> {
    let target = config_at(admin, rev).await?;
    converge(admin, &target, opts).await
}

/// The config as it was at revision `rev`, replayed from the CP's history (every change is a
/// history row with the body after it; a whole-config write is one revision of several rows).
pub async fn config_at(admin: &Admin, rev: u64) -> anyhow::Result<Document> {
    let now = admin.get("/admin/config").await?["revision"]
        .as_u64()
        .unwrap_or(0);
    if rev > now {
        bail!("revision {rev} is in the future (the store is at {now})");
    }
    let entries = admin.history_upto(rev).await?;
    replay(&entries, rev)
}

pub fn replay(entries: &[Value], rev: u64) -> anyhow::Result<Document> {
    if rev > 0 && entries.first().and_then(|e| e["revision"].as_u64()) != Some(1) {
        bail!("the history does not start at revision 1, so revision {rev} cannot be rebuilt");
    }
    let mut doc = Document {
        revision: Some(rev),
        ..Document::default()
    };
    for e in entries {
        let kind: ResourceKind = e["kind"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("history entry {}", e["revision"]))?;
        let id = e["id"].as_str().unwrap_or_default().to_string();
        let by_id = doc.resources.entry(kind).or_default();
        match (e["op"].as_str(), e.get("after")) {
            (Some("put"), Some(after)) if after.is_object() => {
                by_id.insert(id, after.clone());
            }
            (Some("delete"), _) => {
                by_id.remove(&id);
            }
            _ => bail!("history entry {} cannot be read: {e}", e["revision"]),
        }
    }
    doc.resources.retain(|_, m| !m.is_empty());
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replay_rebuilds_a_revision() {
        let h = [
            json!({"revision": 1, "kind": "routes", "id": "a", "op": "put", "after": {"id": "a", "uri": "/a"}}),
            json!({"revision": 2, "kind": "routes", "id": "b", "op": "put", "after": {"id": "b", "uri": "/b"}}),
            json!({"revision": 3, "kind": "routes", "id": "a", "op": "put", "after": {"id": "a", "uri": "/a2"}}),
            json!({"revision": 4, "kind": "routes", "id": "b", "op": "delete", "after": null}),
        ];
        let at = |r: u64| {
            let entries: Vec<Value> = h
                .iter()
                .filter(|e| e["revision"].as_u64().unwrap() <= r)
                .cloned()
                .collect();
            replay(&entries, r).unwrap()
        };
        let routes = |d: &Document| {
            d.resources
                .get(&ResourceKind::Routes)
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(routes(&at(2)).len(), 2);
        assert_eq!(routes(&at(2))["a"]["uri"], "/a");
        assert_eq!(routes(&at(4)).keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(routes(&at(4))["a"]["uri"], "/a2");
        assert!(at(0).resources.is_empty());
        assert!(replay(&h[1..], 4).is_err());
    }
}
