//! admin-cli: Postern's command line over the Admin API.
//!
//! Exit codes: 0 ok, 1 error, 2 differences found (`diff --exit-code`).

mod client;
mod commands;
mod document;
mod output;
mod progress;
mod secrets;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postern_proto::model::ResourceKind;

use commands::config as cfg;
use commands::import::Source;
use output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "admin-cli",
    version,
    about = "Command line for Postern's Admin API"
)]
struct Cli {
    /// Admin API base URL [default: the context's, else http://127.0.0.1:9180]
    #[arg(long, env = "POSTERN_ADMIN_URL", global = true)]
    url: Option<String>,
    /// Admin API key (sent as X-API-KEY)
    #[arg(long, env = "POSTERN_ADMIN_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    /// A named context of ~/.config/postern/cli.toml (or $POSTERN_CLI_CONFIG)
    #[arg(long, env = "POSTERN_CONTEXT", global = true)]
    context: Option<String>,
    /// Output format of status, list, get, explain and of backup to stdout [default: table on
    /// a terminal, else json]
    #[arg(long, short = 'O', value_enum, global = true)]
    output: Option<Format>,
    /// Same as --output json
    #[arg(long, global = true, hide = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Data planes, the version each one serves, and their last ACK/NACK
    Status,
    /// Routes (kept for scripts; same as `list routes`)
    Routes {
        #[command(subcommand)]
        action: ListAction,
    },
    /// List every resource of a kind
    List { kind: ResourceKind },
    /// Show one resource's body
    Get { kind: ResourceKind, id: String },
    /// Delete one resource
    Delete { kind: ResourceKind, id: String },
    /// Every resource of every kind plus the revision, as one versioned YAML (or JSON) document
    Backup {
        /// Write to FILE (mode 0600; JSON if it ends in .json) instead of stdout
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// Keep credentials (consumer keys, client secrets, passwords) instead of redacting them
        #[arg(long)]
        include_secrets: bool,
    },
    /// Check a config file offline with the model's validation
    Validate { file: PathBuf },
    /// Per-resource unified diff: live vs FILE, or between two revisions of the history
    Diff {
        #[arg(required_unless_present_all = ["from_rev", "to_rev"], conflicts_with_all = ["from_rev", "to_rev"])]
        file: Option<PathBuf>,
        #[arg(long, requires = "to_rev")]
        from_rev: Option<u64>,
        #[arg(long, requires = "from_rev")]
        to_rev: Option<u64>,
        /// Exit with 2 when there are differences
        #[arg(long)]
        exit_code: bool,
    },
    /// Make the live config equal FILE (creates, updates, deletes) in one transaction
    Apply {
        file: PathBuf,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Restore a backup, all or nothing, in one transaction
    Restore {
        file: PathBuf,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Make the live config equal to revision N, as one new revision
    Rollback {
        #[arg(long)]
        to_rev: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Which route the current config gives a request, why, its plugins in order and its nodes
    Explain {
        method: String,
        /// `http://host/path?query`, or `/path` with `-H 'Host: …'`
        #[arg(value_name = "URL")]
        target: String,
        /// A request header, 'Name: value' (repeatable)
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Convert a Kong or APISIX declarative file into a Postern file for `apply`
    Import {
        #[arg(long, value_enum)]
        from: Source,
        file: PathBuf,
        /// Write to FILE instead of stdout (JSON if it ends in .json, else YAML)
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
    },
}

/// How `apply`, `restore` and `rollback` write.
#[derive(Debug, clap::Args)]
struct WriteArgs {
    /// Print the plan, change nothing
    #[arg(long)]
    dry_run: bool,
    /// After the write, wait for every connected data plane to serve it (exit 1 if they do not
    /// within --wait-timeout)
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 30, requires = "wait")]
    wait_timeout: u64,
}

impl WriteArgs {
    fn options(&self) -> cfg::WriteOptions {
        cfg::WriteOptions {
            dry_run: self.dry_run,
            wait: self.wait.then(|| Duration::from_secs(self.wait_timeout)),
        }
    }
}

#[derive(Debug, Subcommand)]
enum ListAction {
    /// List every route
    List,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let format = Format::pick(cli.output, cli.json, std::io::stdout().is_terminal());
    // Offline commands first: they need no connection.
    match &cli.command {
        Command::Validate { file } => {
            cfg::validate(file)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Import { from, file, out } => {
            let input = commands::import::read_yaml(file)?;
            let imported = commands::import::import(*from, &input)?;
            for u in &imported.unmapped {
                eprintln!("not mapped: {u}");
            }
            let text = if out
                .as_ref()
                .is_some_and(|p| p.extension().is_some_and(|e| e == "json"))
            {
                serde_json::to_string_pretty(&imported.doc)? + "\n"
            } else {
                serde_yaml_ng::to_string(&imported.doc)?
            };
            match out {
                Some(path) => cfg::write_private(path, &text)?,
                None => print!("{text}"),
            }
            eprintln!("{} items could not be mapped", imported.unmapped.len());
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let (url, key) = client::resolve(cli.url, cli.key, cli.context.as_deref())?;
    let admin = client::Admin::new(url, key);
    match cli.command {
        Command::Status => commands::status::status(&admin, format).await?,
        Command::Routes {
            action: ListAction::List,
        } => commands::status::list(&admin, ResourceKind::Routes, format).await?,
        Command::List { kind } => commands::status::list(&admin, kind, format).await?,
        Command::Get { kind, id } => commands::status::get(&admin, kind, &id, format).await?,
        Command::Delete { kind, id } => commands::status::delete(&admin, kind, &id).await?,
        Command::Explain {
            method,
            target,
            headers,
        } => commands::explain::explain(&admin, &method, &target, &headers, format).await?,
        Command::Backup {
            out,
            include_secrets,
        } => cfg::backup(&admin, out.as_deref(), include_secrets, format).await?,
        Command::Diff {
            file,
            from_rev,
            to_rev,
            exit_code,
        } => {
            let different = match (file, from_rev, to_rev) {
                (Some(f), _, _) => cfg::diff_file(&admin, &f).await?,
                (None, Some(a), Some(b)) => cfg::diff_revisions(&admin, a, b).await?,
                _ => anyhow::bail!("give a FILE or --from-rev A --to-rev B"),
            };
            if different && exit_code {
                return Ok(ExitCode::from(cfg::EXIT_DIFFERENT));
            }
        }
        Command::Apply { file, write } => cfg::apply(&admin, &file, write.options()).await?,
        Command::Restore { file, write } => cfg::restore(&admin, &file, write.options()).await?,
        Command::Rollback { to_rev, write } => cfg::rollback(&admin, to_rev, write.options())
            .await
            .with_context(|| format!("rollback to revision {to_rev}"))?,
        Command::Validate { .. } | Command::Import { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("admin-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}
