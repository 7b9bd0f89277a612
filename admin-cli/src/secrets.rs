//! Secrets in backups: left out unless `backup --include-secrets`. A redacted value is replaced
//! by a marker that `validate` (so `apply` and `restore` too) refuses, so a redacted backup can
//! never overwrite live credentials with the marker.

use serde_json::Value;

pub const REDACTED: &str = "<redacted: backup taken without --include-secrets>";

/// `(plugin, field)` pairs that hold credentials; any field named `password` anywhere in a
/// plugin's config (Redis passwords of the limiters) is one too.
const SECRET_FIELDS: &[(&str, &str)] = &[
    ("key-auth", "key"),
    ("jwt-auth", "secret"),
    ("jwt-auth", "private_key"),
    ("basic-auth", "password"),
    ("hmac-auth", "secret_key"),
    ("openid-connect", "client_secret"),
    ("openid-connect", "client_rsa_private_key"),
];

/// Replaces every secret in `body` (one resource) by [`REDACTED`]; returns how many.
pub fn redact(body: &mut Value) -> usize {
    let Some(plugins) = body.get_mut("plugins").and_then(Value::as_object_mut) else {
        return 0;
    };
    let mut count = 0;
    for (name, conf) in plugins.iter_mut() {
        if let Some(obj) = conf.as_object_mut() {
            for (plugin, field) in SECRET_FIELDS {
                if plugin == name
                    && let Some(v) = obj.get_mut(*field)
                    && !v.is_null()
                {
                    *v = Value::String(REDACTED.to_string());
                    count += 1;
                }
            }
        }
        count += redact_passwords(conf);
    }
    count
}

fn redact_passwords(v: &mut Value) -> usize {
    match v {
        Value::Object(m) => m
            .iter_mut()
            .map(|(k, v)| match v {
                Value::String(s) if k == "password" && s != REDACTED => {
                    *v = Value::String(REDACTED.to_string());
                    1
                }
                other => redact_passwords(other),
            })
            .sum(),
        Value::Array(a) => a.iter_mut().map(redact_passwords).sum(),
        _ => 0,
    }
}

/// The dotted paths of redacted values in `v`.
pub fn redacted_paths(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s == REDACTED => out.push(at.to_string()),
        Value::Object(m) => {
            for (k, v) in m {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                redacted_paths(v, &path, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                redacted_paths(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_credentials_and_passwords_only() {
        let mut consumer = json!({"username": "a", "plugins": {
            "key-auth": {"key": "k1"},
            "jwt-auth": {"key": "issuer", "secret": "s"},
        }});
        assert_eq!(redact(&mut consumer), 2);
        assert_eq!(consumer["plugins"]["key-auth"]["key"], REDACTED);
        // jwt-auth's `key` names the issuer: not a secret.
        assert_eq!(consumer["plugins"]["jwt-auth"]["key"], "issuer");
        assert_eq!(consumer["plugins"]["jwt-auth"]["secret"], REDACTED);
        let mut route = json!({"uri": "/x", "plugins": {
            "key-auth": {"header": "apikey"},
            "rate-limiting": {"minute": 1, "redis": {"host": "r", "password": "p"}, "password": null},
        }});
        assert_eq!(redact(&mut route), 1);
        assert_eq!(
            route["plugins"]["rate-limiting"]["redis"]["password"],
            REDACTED
        );
        assert_eq!(route["plugins"]["key-auth"]["header"], "apikey");
        let mut paths = Vec::new();
        redacted_paths(&route, "", &mut paths);
        assert_eq!(paths, ["plugins.rate-limiting.redis.password"]);
    }
}
