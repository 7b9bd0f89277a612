//! admin-cli: Postern's command line over the Admin API.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "admin-cli",
    version,
    about = "Command line for Postern's Admin API"
)]
struct Cli {
    /// Admin API base URL
    #[arg(
        long,
        env = "POSTERN_ADMIN_URL",
        default_value = "http://127.0.0.1:9180",
        global = true
    )]
    url: String,
    /// Admin API key (sent as X-API-KEY)
    #[arg(long, env = "POSTERN_ADMIN_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    /// Print raw JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Data planes, the version each one serves, and their last ACK/NACK
    Status,
    /// Routes
    Routes {
        #[command(subcommand)]
        action: ListAction,
    },
}

#[derive(Debug, Subcommand)]
enum ListAction {
    /// List every route
    List,
}

struct Admin {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Admin {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let resp = self
            .http
            .get(&url)
            .header("x-api-key", &self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the Admin API at {}", self.url))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("bad answer from {url}"))?;
        if !status.is_success() {
            let msg = body.get("error_msg").and_then(Value::as_str).unwrap_or("");
            bail!("{url}: {status} {msg}");
        }
        Ok(body)
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let key = cli
        .key
        .context("no admin key: pass --key or set POSTERN_ADMIN_KEY")?;
    let admin = Admin {
        http: reqwest::Client::new(),
        url: cli.url,
        key,
    };
    match cli.command {
        Command::Status => {
            let v = admin.get("/admin/data-planes").await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
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
        }
        Command::Routes {
            action: ListAction::List,
        } => {
            let v = admin.get("/admin/routes").await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows = v["list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
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
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("admin-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}
