//! Write-only fields: credential secrets that the Admin API accepts but never shows again.
//!
//! Reads (one resource, lists, history, write answers) show [`REDACTED`] in place of each secret.
//! A write that sends the marker back keeps the stored secret, so GET → edit → PUT round trips
//! work without the client ever holding the secret. The snapshot sent to data planes carries the
//! real values.

use serde_json::Value;

use super::error::{Result, ValidationError};
use super::kind::ResourceKind;

/// Shown instead of a secret; sent back, it means "keep the stored one". Refused as a real value.
pub const REDACTED: &str = "<redacted>";

/// The path (object keys from the body's root) of every write-only field of a consumer.
const CONSUMER_SECRETS: &[&[&str]] = &[
    &["plugins", "jwt-auth", "secret"],
    &["plugins", "jwt-auth", "private_key"],
    &["plugins", "key-auth", "key"],
];

/// Plugin secrets of routes, services and global rules.
const PLUGIN_SECRETS: &[&[&str]] = &[&["plugins", "openid-connect", "client_secret"]];

/// An `ssls` resource's private key.
const SSL_SECRETS: &[&[&str]] = &[&["key"]];

/// An upstream's TLS client key.
const UPSTREAM_SECRETS: &[&[&str]] = &[&["tls", "client_key"]];

/// Routes and services: plugin secrets, and the TLS client key of an inline upstream.
const ROUTE_SECRETS: &[&[&str]] = &[
    &["plugins", "openid-connect", "client_secret"],
    &["upstream", "tls", "client_key"],
];

fn secret_paths(kind: ResourceKind) -> &'static [&'static [&'static str]] {
    match kind {
        ResourceKind::Consumers => CONSUMER_SECRETS,
        ResourceKind::Ssls => SSL_SECRETS,
        ResourceKind::Upstreams => UPSTREAM_SECRETS,
        ResourceKind::Routes | ResourceKind::Services => ROUTE_SECRETS,
        ResourceKind::GlobalRules => PLUGIN_SECRETS,
        _ => &[],
    }
}

/// Refuses the marker as a real secret (it would read back as "keep the stored one").
pub fn check_not_marker(field: &str, value: Option<&str>) -> Result<()> {
    if value == Some(REDACTED) {
        return Err(ValidationError::new(
            field,
            format!("'{REDACTED}' stands for a stored secret and cannot be one"),
        ));
    }
    Ok(())
}

fn slot<'a>(body: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(body, |v, key| v.get_mut(*key))
}

fn get<'a>(body: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(body, |v, key| v.get(*key))
}

/// Replaces every secret of a `kind` body by [`REDACTED`] (for anything the Admin API shows).
pub fn redact(kind: ResourceKind, body: &mut Value) {
    for path in secret_paths(kind) {
        if let Some(v) = slot(body, path)
            && !v.is_null()
        {
            *v = Value::String(REDACTED.to_string());
        }
    }
}

/// Whether an incoming body sends the marker back anywhere (then the stored body is needed).
pub fn has_marker(kind: ResourceKind, body: &Value) -> bool {
    secret_paths(kind)
        .iter()
        .any(|path| get(body, path).and_then(Value::as_str) == Some(REDACTED))
}

/// Puts the stored secret back wherever an incoming body has the marker. Fails, naming the
/// field, when there is no stored secret to keep.
pub fn restore(kind: ResourceKind, body: &mut Value, stored: Option<&Value>) -> Result<()> {
    for path in secret_paths(kind) {
        let Some(v) = slot(body, path) else {
            continue;
        };
        if v.as_str() != Some(REDACTED) {
            continue;
        }
        let kept = stored
            .and_then(|s| get(s, path))
            .and_then(Value::as_str)
            .filter(|s| *s != REDACTED);
        match kept {
            Some(secret) => *v = Value::String(secret.to_string()),
            None => {
                return Err(ValidationError::new(
                    path.join("."),
                    format!(
                        "'{REDACTED}' keeps the stored secret, but none is stored; send the \
                         secret itself"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn redact_then_restore_round_trips() {
        let stored = json!({"username": "a", "plugins": {
            "jwt-auth": {"key": "k", "secret": "s3cret"},
            "key-auth": {"key": "api-key-0001"}}});
        let mut shown = stored.clone();
        redact(ResourceKind::Consumers, &mut shown);
        assert_eq!(shown["plugins"]["jwt-auth"]["secret"], REDACTED);
        assert_eq!(
            shown["plugins"]["jwt-auth"]["key"], "k",
            "the key id is not secret"
        );
        assert_eq!(shown["plugins"]["key-auth"]["key"], REDACTED);
        assert!(!shown.to_string().contains("s3cret"));
        assert!(has_marker(ResourceKind::Consumers, &shown));

        let mut edited = shown.clone();
        edited["desc"] = json!("edited");
        restore(ResourceKind::Consumers, &mut edited, Some(&stored)).unwrap();
        assert_eq!(edited["plugins"]["jwt-auth"]["secret"], "s3cret");
        assert_eq!(edited["plugins"]["key-auth"]["key"], "api-key-0001");

        // Nothing stored to keep: refused, naming the field.
        let e = restore(ResourceKind::Consumers, &mut shown.clone(), None).unwrap_err();
        assert_eq!(e.field, "plugins.jwt-auth.secret");
        // Other kinds have other secrets (a route's key-auth config holds none).
        let mut route = json!({"plugins": {"key-auth": {"key": "x"},
            "openid-connect": {"client_id": "gw", "client_secret": "oidc-s3cret"}}});
        let stored = route.clone();
        redact(ResourceKind::Routes, &mut route);
        assert_eq!(route["plugins"]["key-auth"]["key"], "x");
        assert_eq!(
            route["plugins"]["openid-connect"]["client_secret"],
            REDACTED
        );
        assert_eq!(route["plugins"]["openid-connect"]["client_id"], "gw");
        restore(ResourceKind::Routes, &mut route, Some(&stored)).unwrap();
        assert_eq!(route, stored);
    }
}
