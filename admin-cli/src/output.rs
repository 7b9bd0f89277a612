//! Printing: `--output table|json|yaml` (tables by default on a terminal, JSON otherwise).

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

impl Format {
    /// `--output` if given (`--json` is the older spelling), else a table for a person at a
    /// terminal and JSON for a script reading a pipe or a file.
    pub fn pick(explicit: Option<Format>, json: bool, terminal: bool) -> Format {
        match (explicit, json) {
            (Some(f), _) => f,
            (None, true) => Format::Json,
            (None, false) if terminal => Format::Table,
            (None, false) => Format::Json,
        }
    }
}

/// Prints `v` as JSON or YAML; `false` when the caller should print its table instead.
pub fn structured(format: Format, v: &Value) -> anyhow::Result<bool> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(v)?),
        Format::Table => return Ok(false),
    }
    Ok(true)
}

pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Prints rows as aligned columns.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_only_on_a_terminal_unless_asked() {
        assert_eq!(Format::pick(None, false, true), Format::Table);
        assert_eq!(Format::pick(None, false, false), Format::Json);
        assert_eq!(Format::pick(None, true, true), Format::Json);
        assert_eq!(
            Format::pick(Some(Format::Table), false, false),
            Format::Table
        );
        assert_eq!(Format::pick(Some(Format::Yaml), true, true), Format::Yaml);
    }
}
