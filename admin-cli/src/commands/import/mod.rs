//! `import --from kong|apisix FILE`: turns another gateway's declarative config into a Postern
//! file for `apply`. Whatever has no Postern equivalent is reported (on stderr by the command),
//! never dropped silently.

pub mod apisix;
pub mod kong;

use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    Kong,
    Apisix,
}

/// The Postern file and the list of what could not be mapped (`<where>: <what>`).
#[derive(Debug, Default)]
pub struct Imported {
    pub doc: Value,
    pub unmapped: Vec<String>,
}

/// Collects resources by kind plus the unmapped notes while a mapper runs.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub resources: Map<String, Value>,
    pub unmapped: Vec<String>,
}

impl Out {
    pub fn push(&mut self, kind: &str, value: Value) {
        self.resources
            .entry(kind.to_string())
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("kinds hold lists")
            .push(value);
    }

    pub fn note(&mut self, at: &str, what: impl std::fmt::Display) {
        self.unmapped.push(format!("{at}: {what}"));
    }

    /// Notes every key of `obj` not in `handled`.
    pub fn rest(&mut self, at: &str, obj: &Map<String, Value>, handled: &[&str]) {
        for (k, v) in obj {
            if !handled.contains(&k.as_str()) {
                self.note(at, format!("`{k}: {}` not mapped", short(v)));
            }
        }
    }

    pub fn finish(mut self) -> Imported {
        // Every kind Postern has today, present even when empty: `apply` then also deletes
        // what the source does not have.
        for kind in postern_proto::model::ResourceKind::ALL {
            self.resources
                .entry(kind.as_str().to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
        }
        Imported {
            doc: json!({"postern_backup": 1, "resources": self.resources}),
            unmapped: self.unmapped,
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

pub fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // APISIX standalone files end with `#END`, which YAML reads as a comment.
    serde_yaml_ng::from_str(&text).with_context(|| path.display().to_string())
}

pub fn import(source: Source, input: &Value) -> anyhow::Result<Imported> {
    match source {
        Source::Kong => kong::import(input),
        Source::Apisix => apisix::import(input),
    }
}
