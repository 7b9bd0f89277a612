//! The Postern config file that `backup` writes and `validate`, `diff`, `apply` and `restore`
//! read: `{"postern_backup": 1, "revision": N, "resources": {"<kind>": [{"id": ..}, ..]}}`, as
//! YAML or JSON. `revision` is informational; `apply` files may leave it and `postern_backup` out.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use postern_proto::model::{ConfigSet, Resource, ResourceKind};
use serde_json::{Map, Value, json};

pub const FORMAT_VERSION: u64 = 1;

/// Resources by kind then id; bodies carry their `id` (as the store returns them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Document {
    pub revision: Option<u64>,
    pub resources: BTreeMap<ResourceKind, BTreeMap<String, Value>>,
    /// Kinds this binary does not know (`consumers` from an import, before that branch lands):
    /// kept so `validate` can name them rather than drop them.
    pub unknown: BTreeMap<String, Value>,
}

impl Document {
    /// Reads YAML or JSON (JSON is YAML, so one parser would do; JSON errors read better).
    pub fn read(path: &Path) -> anyhow::Result<Document> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Document::parse(&text).with_context(|| path.display().to_string())
    }

    pub fn parse(text: &str) -> anyhow::Result<Document> {
        let v: Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text)?
        } else {
            serde_yaml_ng::from_str(text)?
        };
        Document::from_value(&v)
    }

    pub fn from_value(v: &Value) -> anyhow::Result<Document> {
        let Some(obj) = v.as_object() else {
            bail!("the file must hold an object with `resources`");
        };
        for key in obj.keys() {
            if !matches!(key.as_str(), "resources" | "postern_backup" | "revision") {
                bail!(
                    "unknown top-level field `{key}` (expected postern_backup, revision, resources)"
                );
            }
        }
        if let Some(ver) = obj.get("postern_backup")
            && ver.as_u64() != Some(FORMAT_VERSION)
        {
            bail!(
                "postern_backup: unsupported version {ver} (this admin-cli reads {FORMAT_VERSION})"
            );
        }
        let mut doc = Document {
            revision: obj.get("revision").and_then(Value::as_u64),
            ..Document::default()
        };
        let empty = Map::new();
        let resources = match obj.get("resources") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => bail!("resources: must be an object of lists by kind"),
        };
        for (name, list) in resources {
            let Ok(kind) = name.parse::<ResourceKind>() else {
                doc.unknown.insert(name.clone(), list.clone());
                continue;
            };
            let items = match list {
                Value::Null => Vec::new(),
                Value::Array(items) => items.clone(),
                _ => bail!("resources.{name}: must be a list"),
            };
            let by_id = doc.resources.entry(kind).or_default();
            for (i, mut item) in items.into_iter().enumerate() {
                let id = match item.get("id") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => bail!("resources.{name}[{i}]: every resource needs an `id`"),
                };
                let Some(map) = item.as_object_mut() else {
                    bail!("{name}/{id}: must be an object");
                };
                map.insert("id".to_string(), Value::String(id.clone()));
                if by_id.insert(id.clone(), item).is_some() {
                    bail!("{name}/{id}: listed twice");
                }
            }
        }
        // An empty list and a missing kind are the same configuration.
        doc.resources.retain(|_, m| !m.is_empty());
        Ok(doc)
    }

    /// The versioned document, every known kind present (empty lists included).
    pub fn to_value(&self) -> Value {
        let mut resources = Map::new();
        for kind in ResourceKind::ALL {
            let list: Vec<Value> = self
                .resources
                .get(&kind)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            resources.insert(kind.as_str().to_string(), Value::Array(list));
        }
        for (name, v) in &self.unknown {
            resources.insert(name.clone(), v.clone());
        }
        let mut doc = json!({"postern_backup": FORMAT_VERSION});
        if let Some(rev) = self.revision {
            doc["revision"] = json!(rev);
        }
        doc["resources"] = Value::Object(resources);
        doc
    }

    /// Every resource as `(kind, id, body)`, kinds in dependency order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceKind, &str, &Value)> {
        ResourceKind::ALL.into_iter().flat_map(move |k| {
            self.resources
                .get(&k)
                .into_iter()
                .flat_map(move |m| m.iter().map(move |(id, v)| (k, id.as_str(), v)))
        })
    }

    pub fn len(&self) -> usize {
        self.resources.values().map(BTreeMap::len).sum()
    }

    /// Offline validation with the model crate: every body, then references across the set.
    /// Errors read `<file>: <kind>/<id>: <field>: <message>`.
    pub fn validate(&self, file: &str) -> Vec<String> {
        let mut errors = Vec::new();
        for name in self.unknown.keys() {
            errors.push(format!(
                "{file}: resources.{name}: unknown resource kind '{name}' (known: {})",
                ResourceKind::ALL.map(|k| k.as_str()).join(", ")
            ));
        }
        let mut set = ConfigSet::default();
        for (kind, id, body) in self.iter() {
            let mut redacted = Vec::new();
            crate::secrets::redacted_paths(body, "", &mut redacted);
            for path in redacted {
                errors.push(format!(
                    "{file}: {kind}/{id}: {path}: redacted in this backup; take the backup with --include-secrets"
                ));
            }
            if let Err(e) = postern_proto::model::validate::check_id(id) {
                errors.push(format!("{file}: {kind}/{id}: id: {}", e.message));
            }
            match Resource::parse(kind, body) {
                Ok(r) => set.insert(id, r),
                Err(e) if e.field.is_empty() => {
                    errors.push(format!("{file}: {kind}/{id}: {}", e.message))
                }
                Err(e) => errors.push(format!("{file}: {kind}/{id}: {}: {}", e.field, e.message)),
            }
        }
        if errors.is_empty()
            && let Err(e) = set.check_references()
        {
            errors.push(format!("{file}: {}: {}", e.field, e.message));
        }
        errors
    }
}

/// Pretty JSON with keys sorted at every level: the text that diffs compare.
pub fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sort(v)).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_and_json_alike() {
        let yaml = "postern_backup: 1\nrevision: 7\nresources:\n  routes:\n  - id: r1\n    uri: /a\n  upstreams:\n  - id: 2\n    nodes: {\"a:1\": 1}\n";
        let json = r#"{"postern_backup":1,"revision":7,"resources":{"routes":[{"id":"r1","uri":"/a"}],"upstreams":[{"id":2,"nodes":{"a:1":1}}]}}"#;
        let a = Document::parse(yaml).unwrap();
        assert_eq!(a, Document::parse(json).unwrap());
        assert_eq!(a.revision, Some(7));
        // Numeric ids become strings, as the Admin API stores them.
        assert_eq!(a.resources[&ResourceKind::Upstreams]["2"]["id"], json!("2"));
        let kinds: Vec<_> = a.iter().map(|(k, id, _)| format!("{k}/{id}")).collect();
        assert_eq!(kinds, ["upstreams/2", "routes/r1"]);
        // Round trip through the versioned shape.
        assert_eq!(Document::from_value(&a.to_value()).unwrap(), a);
    }

    #[test]
    fn rejects_bad_shapes() {
        for (text, wanted) in [
            (
                "resources: {routes: [{uri: /a}]}",
                "resources.routes[0]: every resource needs an `id`",
            ),
            (
                "resources: {routes: [{id: a}, {id: a}]}",
                "routes/a: listed twice",
            ),
            ("postern_backup: 2\nresources: {}", "unsupported version 2"),
            ("resource: {}", "unknown top-level field `resource`"),
            (
                "resources: {routes: {id: a}}",
                "resources.routes: must be a list",
            ),
        ] {
            let err = format!("{:#}", Document::parse(text).unwrap_err());
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn validate_names_file_resource_and_field() {
        let doc = Document::parse(
            "resources:\n  routes:\n  - {id: r1, uri: /a, upstream: {nodes: {\"a:1\": \"x\"}}}\n  - {id: r2, uri: /b, service_id: nope}\n  widgets: []\n",
        )
        .unwrap();
        let errors = doc.validate("cfg.yaml");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("cfg.yaml: resources.widgets: unknown resource kind 'widgets'"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("cfg.yaml: routes/r1: upstream.nodes"),
            "{errors:?}"
        );
        // References are checked once every body is valid.
        let doc =
            Document::parse("resources:\n  routes:\n  - {id: r2, uri: /b, service_id: nope}\n")
                .unwrap();
        let errors = doc.validate("cfg.yaml");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("routes/r2.service_id") && errors[0].contains("'nope'"),
            "{errors:?}"
        );
        assert!(
            Document::parse(
                "resources: {routes: [{id: ok, uri: /x, upstream: {nodes: {\"a:1\": 1}}}]}"
            )
            .unwrap()
            .validate("f")
            .is_empty()
        );
    }

    #[test]
    fn validate_refuses_redacted_secrets() {
        let mut doc = Document::parse(
            "resources: {routes: [{id: r, uri: /x, upstream: {nodes: {\"a:1\": 1}}}]}",
        )
        .unwrap();
        let route = doc
            .resources
            .get_mut(&ResourceKind::Routes)
            .unwrap()
            .get_mut("r")
            .unwrap();
        route["plugins"] = json!({"cors": {"allow_origins": crate::secrets::REDACTED}});
        let errors = doc.validate("b.yaml");
        assert!(
            errors[0].starts_with(
                "b.yaml: routes/r: plugins.cors.allow_origins: redacted in this backup"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn canonical_sorts_keys() {
        assert_eq!(
            canonical(&json!({"b": 1, "a": {"d": 1, "c": 2}})),
            "{\n  \"a\": {\n    \"c\": 2,\n    \"d\": 1\n  },\n  \"b\": 1\n}\n"
        );
    }
}
