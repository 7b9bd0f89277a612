//! The connection to the Admin API: where (`--url`, `POSTERN_ADMIN_URL`, a context of the config
//! file) and with which key, plus the few HTTP calls every command uses.
//!
//! The config file (`~/.config/postern/cli.toml`, or `POSTERN_CLI_CONFIG`) holds named contexts:
//!
//! ```toml
//! current = "prod"
//! [contexts.prod]
//! url = "https://cp.example.com:9180"
//! key = "..."
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

pub const DEFAULT_URL: &str = "http://127.0.0.1:9180";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// The context used when `--context` is not given.
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, ContextConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextConfig {
    pub url: Option<String>,
    pub key: Option<String>,
}

pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("POSTERN_CLI_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(home.join("postern").join("cli.toml"))
}

impl CliConfig {
    pub fn parse(text: &str) -> anyhow::Result<CliConfig> {
        Ok(toml::from_str(text)?)
    }

    fn load() -> anyhow::Result<CliConfig> {
        let Some(path) = config_path() else {
            return Ok(CliConfig::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => CliConfig::parse(&text).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The context named on the command line, else `current`, else none.
    pub fn context(&self, name: Option<&str>) -> anyhow::Result<ContextConfig> {
        match name.or(self.current.as_deref()) {
            None => Ok(ContextConfig::default()),
            Some(n) => match self.contexts.get(n) {
                Some(c) => Ok(c.clone()),
                None => bail!(
                    "no context '{n}' in the CLI config (known: {})",
                    self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            },
        }
    }
}

/// `--url`/`--key` (clap already folds in the environment) win over the context's values.
pub fn resolve(
    url: Option<String>,
    key: Option<String>,
    context: Option<&str>,
) -> anyhow::Result<(String, Option<String>)> {
    let ctx = CliConfig::load()?.context(context)?;
    let url = url.or(ctx.url).unwrap_or_else(|| DEFAULT_URL.to_string());
    Ok((url, key.or(ctx.key)))
}

pub struct Admin {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
}

impl Admin {
    pub fn new(url: String, key: Option<String>) -> Admin {
        Admin {
            http: reqwest::Client::new(),
            url,
            key,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> anyhow::Result<Value> {
        let Some(key) = &self.key else {
            bail!("no admin key: pass --key, set POSTERN_ADMIN_KEY or use a context with a key");
        };
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut req = self.http.request(method, &url).header("x-api-key", key);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(rev) = if_match {
            req = req.header("if-match", rev.to_string());
        }
        let resp = req
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
            match body.get("field").and_then(Value::as_str) {
                Some(f) if !f.is_empty() && !msg.contains(f) => bail!("{url}: {status} {f}: {msg}"),
                _ => bail!("{url}: {status} {msg}"),
            }
        }
        Ok(body)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body), None)
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::DELETE, path, None, None).await
    }

    /// `PUT /admin/config`: the whole config in one transaction; `if_match` = the revision the
    /// plan was computed against, so a concurrent change fails the apply instead of being lost.
    pub async fn put_config(&self, doc: &Value, if_match: Option<u64>) -> anyhow::Result<Value> {
        self.call(reqwest::Method::PUT, "/admin/config", Some(doc), if_match)
            .await
    }

    /// Every history entry with `after < revision <= upto`, oldest first.
    pub async fn history_upto(&self, upto: u64) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut after = 0;
        while after < upto {
            let page = self
                .get(&format!("/admin/history?after={after}&limit=1000"))
                .await?;
            let list = page["list"].as_array().cloned().unwrap_or_default();
            let Some(last) = list.last().and_then(|e| e["revision"].as_u64()) else {
                break;
            };
            out.extend(
                list.into_iter()
                    .filter(|e| e["revision"].as_u64().is_some_and(|r| r <= upto)),
            );
            after = last;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_pick_current_or_named() {
        let cfg = CliConfig::parse(
            "current = \"a\"\n[contexts.a]\nurl = \"http://a\"\nkey = \"ka\"\n[contexts.b]\nurl = \"http://b\"\n",
        )
        .unwrap();
        assert_eq!(cfg.context(None).unwrap().url.as_deref(), Some("http://a"));
        let b = cfg.context(Some("b")).unwrap();
        assert_eq!((b.url.as_deref(), b.key), (Some("http://b"), None));
        let err = cfg.context(Some("c")).unwrap_err().to_string();
        assert!(
            err.contains("no context 'c'") && err.contains("a, b"),
            "{err}"
        );
        assert!(CliConfig::parse("[contexts.a]\nuri = \"x\"\n").is_err());
    }
}
