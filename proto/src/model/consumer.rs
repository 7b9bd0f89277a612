//! Consumers (API users, APISIX shape: the `username` is the id) and consumer groups.
//!
//! A consumer's `plugins` hold its credentials: `jwt-auth` and `key-auth` with the consumer-side
//! config. Other plugins on consumers and consumer groups (APISIX runs them, e.g. a per-consumer
//! `limit-count`) are refused for now rather than accepted and ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{Result, ValidationError};
use super::kind::{Reference, ResourceKind};
use super::plugins::jwt_auth::JwtCredential;
use super::plugins::key_auth::KeyCredential;
use super::plugins::{self, find_plugin};
use super::validate::{check_id, check_text};

/// Plugins whose consumer-side config is a credential.
pub const CREDENTIAL_PLUGINS: [&str; 2] = ["jwt-auth", "key-auth"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Always the username (set by the Admin API); accepted so stored bodies parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The consumer group it belongs to (`consumer-restriction` with `consumer_group_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Credentials: `jwt-auth` ([`JwtCredential`]) and `key-auth` ([`KeyCredential`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

/// One credential value that must belong to one consumer only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialClaim<'a> {
    /// The credential plugin (`jwt-auth`, `key-auth`).
    pub plugin: &'static str,
    /// The field that holds it, from the consumer's body (`plugins.jwt-auth.key`).
    pub field: &'static str,
    pub value: &'a str,
}

impl ConsumerConfig {
    pub fn validate(&self) -> Result<()> {
        check_id(&self.username).map_err(|e| e.under("username"))?;
        if let Some(id) = &self.id
            && *id != self.username
        {
            return Err(ValidationError::new(
                "id",
                format!("a consumer's id is its username '{}'", self.username),
            ));
        }
        check_text("desc", self.desc.as_deref())?;
        if let Some(g) = &self.group_id {
            check_id(g).map_err(|e| e.under("group_id"))?;
        }
        for (name, config) in &self.plugins {
            let field = format!("plugins.{name}");
            match name.as_str() {
                "jwt-auth" => plugins::parse::<JwtCredential>(config)
                    .map(|_| ())
                    .map_err(|e| e.under(&field))?,
                "key-auth" => plugins::parse::<KeyCredential>(config)
                    .map(|_| ())
                    .map_err(|e| e.under(&field))?,
                other if find_plugin(other).is_some() => {
                    return Err(ValidationError::new(
                        field,
                        format!(
                            "only credentials ({}) are applied on consumers so far; configure \
                             '{other}' on the route or service",
                            CREDENTIAL_PLUGINS.join(", ")
                        ),
                    ));
                }
                other => {
                    return Err(ValidationError::new(
                        field,
                        format!("unknown plugin '{other}'"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn references(&self) -> impl Iterator<Item = Reference<'_>> {
        self.group_id
            .as_deref()
            .map(|id| Reference {
                field: "group_id",
                kind: ResourceKind::ConsumerGroups,
                id,
            })
            .into_iter()
    }

    /// The jwt-auth credential, parsed (the body was validated, so this only fails on a body
    /// that was not).
    pub fn jwt_credential(&self) -> Option<Result<JwtCredential>> {
        self.plugins.get("jwt-auth").map(plugins::parse)
    }

    pub fn key_credential(&self) -> Option<Result<KeyCredential>> {
        self.plugins.get("key-auth").map(plugins::parse)
    }

    /// The credential values this consumer holds, each of which no other consumer may hold.
    pub fn claims(&self) -> Vec<CredentialClaim<'_>> {
        let value = |plugin: &str| {
            self.plugins
                .get(plugin)
                .and_then(|c| c.get("key"))
                .and_then(Value::as_str)
        };
        let mut claims = Vec::new();
        if let Some(v) = value("jwt-auth") {
            claims.push(CredentialClaim {
                plugin: "jwt-auth",
                field: "plugins.jwt-auth.key",
                value: v,
            });
        }
        if let Some(v) = value("key-auth") {
            claims.push(CredentialClaim {
                plugin: "key-auth",
                field: "plugins.key-auth.key",
                value: v,
            });
        }
        claims
    }
}

/// A consumer group: consumers name it in `group_id`; `consumer-restriction` can allow or refuse
/// by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroupConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Must be empty for now (group plugins are not applied yet); accepted as `{}` because
    /// APISIX requires the field.
    #[serde(default)]
    pub plugins: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

impl ConsumerGroupConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            check_id(id).map_err(|e| e.under("id"))?;
        }
        check_text("name", self.name.as_deref())?;
        check_text("desc", self.desc.as_deref())?;
        if let Some(name) = self.plugins.keys().next() {
            return Err(ValidationError::new(
                format!("plugins.{name}"),
                "plugins on consumer groups are not applied yet; configure them on the route \
                 or service",
            ));
        }
        Ok(())
    }
}
