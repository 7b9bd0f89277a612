//! Differences between two configurations, per resource: the plan `apply` prints and the unified
//! diffs `diff` shows (of canonical JSON, so only changed fields appear as changed lines).

use std::io::IsTerminal;

use postern_proto::model::ResourceKind;
use serde_json::Value;
use similar::TextDiff;

use crate::document::{Document, canonical};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub op: Op,
    pub kind: ResourceKind,
    pub id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// What turns `from` into `to`: creates and updates in dependency order, then deletes in
/// reverse dependency order (the order the control plane applies them in).
pub fn changes(from: &Document, to: &Document) -> Vec<Change> {
    let mut out = Vec::new();
    for (kind, id, after) in to.iter() {
        let before = from.resources.get(&kind).and_then(|m| m.get(id));
        let op = match before {
            Some(b) if b == after => continue,
            Some(_) => Op::Update,
            None => Op::Create,
        };
        out.push(Change {
            op,
            kind,
            id: id.to_string(),
            before: before.cloned(),
            after: Some(after.clone()),
        });
    }
    let mut deletes: Vec<Change> = from
        .iter()
        .filter(|(kind, id, _)| !to.resources.get(kind).is_some_and(|m| m.contains_key(*id)))
        .map(|(kind, id, before)| Change {
            op: Op::Delete,
            kind,
            id: id.to_string(),
            before: Some(before.clone()),
            after: None,
        })
        .collect();
    deletes.sort_by_key(|c| std::cmp::Reverse(ResourceKind::ALL.iter().position(|k| *k == c.kind)));
    out.extend(deletes);
    out
}

/// One unified diff per changed resource, headed `--- <from>/<kind>/<id>` / `+++ <to>/...`.
pub fn unified(changes: &[Change], from: &str, to: &str) -> String {
    let text = |v: &Option<Value>| v.as_ref().map(canonical).unwrap_or_default();
    let mut out = String::new();
    for c in changes {
        let (old, new) = (text(&c.before), text(&c.after));
        let a = format!("{from}/{}/{}", c.kind, c.id);
        let b = format!("{to}/{}/{}", c.kind, c.id);
        let a = if c.before.is_none() {
            "/dev/null".to_string()
        } else {
            a
        };
        let b = if c.after.is_none() {
            "/dev/null".to_string()
        } else {
            b
        };
        let diff = TextDiff::from_lines(&old, &new);
        out.push_str(
            &diff
                .unified_diff()
                .context_radius(3)
                .header(&a, &b)
                .to_string(),
        );
    }
    out
}

/// Colours `+`/`-` lines when stdout is a terminal.
pub fn print_diff(text: &str) {
    if !std::io::stdout().is_terminal() {
        print!("{text}");
        return;
    }
    for line in text.lines() {
        let colour = if line.starts_with("+++") || line.starts_with("---") {
            "1"
        } else if line.starts_with('+') {
            "32"
        } else if line.starts_with('-') {
            "31"
        } else if line.starts_with("@@") {
            "36"
        } else {
            ""
        };
        if colour.is_empty() {
            println!("{line}");
        } else {
            println!("\x1b[{colour}m{line}\x1b[0m");
        }
    }
}

/// `create routes/r1` lines plus a count, or "no changes".
pub fn summary(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no changes".to_string();
    }
    let mut out = String::new();
    for c in changes {
        let op = match c.op {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        };
        out.push_str(&format!("{op} {}/{}\n", c.kind, c.id));
    }
    let count = |op| changes.iter().filter(|c| c.op == op).count();
    out.push_str(&format!(
        "{} to create, {} to update, {} to delete",
        count(Op::Create),
        count(Op::Update),
        count(Op::Delete)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Document {
        Document::parse(text).unwrap()
    }

    #[test]
    fn plan_orders_creates_by_dependency_and_deletes_in_reverse() {
        let from = doc(
            "resources:\n  upstreams: [{id: u1, nodes: {\"a:1\": 1}}]\n  routes: [{id: old, uri: /old, upstream_id: u1}, {id: same, uri: /s}]\n",
        );
        let to = doc(
            "resources:\n  routes: [{id: new, uri: /n, service_id: s}, {id: same, uri: /s}]\n  services: [{id: s, upstream: {nodes: {\"b:1\": 1}}}]\n",
        );
        let plan: Vec<_> = changes(&from, &to)
            .into_iter()
            .map(|c| (c.op, format!("{}/{}", c.kind, c.id)))
            .collect();
        assert_eq!(
            plan,
            vec![
                (Op::Create, "services/s".to_string()),
                (Op::Create, "routes/new".to_string()),
                (Op::Delete, "routes/old".to_string()),
                (Op::Delete, "upstreams/u1".to_string()),
            ]
        );
        assert!(changes(&to, &to).is_empty());
        assert_eq!(summary(&[]), "no changes");
    }

    #[test]
    fn unified_diff_shows_only_changed_fields() {
        let from =
            doc("resources:\n  routes: [{id: r, uri: /a, methods: [GET], priority: 1, name: x}]\n");
        let to =
            doc("resources:\n  routes: [{id: r, name: x, uri: /b, methods: [GET], priority: 1}]\n");
        let text = unified(&changes(&from, &to), "live", "file");
        let changed: Vec<&str> = text
            .lines()
            .filter(|l| {
                (l.starts_with('+') || l.starts_with('-'))
                    && !l.starts_with("+++")
                    && !l.starts_with("---")
            })
            .collect();
        assert_eq!(
            changed,
            ["-  \"uri\": \"/a\"", "+  \"uri\": \"/b\""],
            "{text}"
        );
        assert!(
            text.starts_with("--- live/routes/r\n+++ file/routes/r\n"),
            "{text}"
        );
        // Key order alone is no difference.
        let reordered =
            doc("resources:\n  routes: [{priority: 1, methods: [GET], uri: /a, name: x, id: r}]\n");
        assert!(changes(&from, &reordered).is_empty());
        // A deleted resource diffs against /dev/null.
        let text = unified(&changes(&from, &doc("resources: {}")), "live", "file");
        assert!(
            text.starts_with("--- live/routes/r\n+++ /dev/null\n"),
            "{text}"
        );
    }
}
