//! `cors`: Cross-Origin Resource Sharing answered by the gateway, with APISIX's config shape.
//! Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered without
//! calling the upstream; other responses get the CORS headers when the request's origin is
//! allowed.

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::model::error::{Result, ValidationError};

use crate::model::validate::REGEX_SIZE_LIMIT;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// `*` (any origin, no credentials), `**` (any origin, echoed, so credentials work), or a
    /// comma-separated list of origins (`https://a.example,https://b.example:8443`)
    /// [default: `*`].
    #[serde(default = "star")]
    pub allow_origins: String,
    /// Regexes an origin must match in full; when given, `allow_origins` is not consulted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origins_by_regex: Option<Vec<String>>,
    /// `Access-Control-Allow-Methods`; `**` lists every method [default: `*`].
    #[serde(default = "star")]
    pub allow_methods: String,
    /// `Access-Control-Allow-Headers`; `**` echoes `Access-Control-Request-Headers`
    /// [default: `*`].
    #[serde(default = "star")]
    pub allow_headers: String,
    /// `Access-Control-Expose-Headers`; not sent when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<String>,
    /// `Access-Control-Max-Age` in seconds; -1 disables caching [default: 5].
    #[serde(default = "default_max_age")]
    pub max_age: i64,
    /// Send `Access-Control-Allow-Credentials: true`; `*` is then refused in the other fields,
    /// as browsers ignore it with credentials [default: false].
    #[serde(default)]
    pub allow_credential: bool,
}

fn star() -> String {
    "*".to_string()
}

fn default_max_age() -> i64 {
    5
}

/// Compiles one `allow_origins_by_regex` entry. The pattern must match the whole origin (it is
/// anchored here), so `.*\.example\.com` does not let `https://a.example.com.evil.net` in.
pub fn origin_regex(pattern: &str) -> std::result::Result<Regex, regex::Error> {
    RegexBuilder::new(&anchored(pattern))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// `pattern` wrapped so that it matches a whole string.
pub fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// The origins of a comma-separated `allow_origins` list, trimmed; `None` for `*` and `**`.
pub fn origin_list(allow_origins: &str) -> Option<Vec<&str>> {
    match allow_origins.trim() {
        "*" | "**" => None,
        list => Some(list.split(',').map(str::trim).collect()),
    }
}

fn check_header_value(field: &str, value: &str) -> Result<()> {
    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(ValidationError::new(field, "not a valid header value"));
    }
    Ok(())
}

/// `scheme://host[:port]`, or `null` (the origin of sandboxed documents and `file:` pages).
fn is_origin(origin: &str) -> bool {
    if origin == "null" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b',' | b'?' | b'#'))
}

impl PluginConfig for CorsConfig {
    fn validate(&self) -> Result<()> {
        if let Some(origins) = origin_list(&self.allow_origins)
            && let Some(bad) = origins.iter().find(|o| !is_origin(o))
        {
            return Err(ValidationError::new(
                "allow_origins",
                format!(
                    "'{bad}' is not an origin: use '*', '**' or a comma-separated list of \
                     scheme://host[:port]"
                ),
            ));
        }
        if let Some(patterns) = &self.allow_origins_by_regex {
            if patterns.is_empty() {
                return Err(ValidationError::new(
                    "allow_origins_by_regex",
                    "give at least one regex, or leave the field out",
                ));
            }
            for (i, p) in patterns.iter().enumerate() {
                let field = format!("allow_origins_by_regex.{i}");
                if p.is_empty() {
                    return Err(ValidationError::new(field, "must not be empty"));
                }
                origin_regex(p)
                    .map_err(|e| ValidationError::new(field, format!("not a valid regex: {e}")))?;
            }
        }
        check_header_value("allow_methods", &self.allow_methods)?;
        check_header_value("allow_headers", &self.allow_headers)?;
        if let Some(expose) = &self.expose_headers {
            check_header_value("expose_headers", expose)?;
        }
        if self.max_age < -1 {
            return Err(ValidationError::new(
                "max_age",
                "must be -1 (no caching) or more",
            ));
        }
        if self.allow_credential {
            // `allow_origins` is not consulted when regexes are given, so its default `*` is
            // no reason to refuse them.
            let origins = (self.allow_origins_by_regex.is_none())
                .then_some(("allow_origins", Some(self.allow_origins.as_str())));
            let fields = origins.into_iter().chain([
                ("allow_methods", Some(self.allow_methods.as_str())),
                ("allow_headers", Some(self.allow_headers.as_str())),
                ("expose_headers", self.expose_headers.as_deref()),
            ]);
            for (field, value) in fields {
                if value.map(str::trim) == Some("*") {
                    return Err(ValidationError::new(
                        field,
                        "'*' cannot be used when 'allow_credential' is true (browsers ignore \
                         it with credentials): use '**' or list the values",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn accepts_apisix_configs() {
        let ok = [
            json!({}),
            json!({"allow_origins": "**", "allow_methods": "**", "allow_headers": "**", "allow_credential": true}),
            json!({"allow_origins": "https://a.example,http://b.example:8080", "allow_methods": "GET,POST", "allow_headers": "x-a", "expose_headers": "x-b", "max_age": 3600, "allow_credential": true}),
            json!({"allow_origins": "null"}),
            json!({"allow_origins_by_regex": [".*\\.example\\.com"], "allow_methods": "GET", "allow_headers": "**", "allow_credential": true}),
            json!({"max_age": -1}),
        ];
        for config in ok {
            parse::<CorsConfig>(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let cases = [
            (json!({"allow_origins": "a.example"}), "allow_origins"),
            (
                json!({"allow_origins": "https://a.example,"}),
                "allow_origins",
            ),
            (
                json!({"allow_origins": "https://a.example/path"}),
                "allow_origins",
            ),
            (json!({"allow_origins": 5}), "allow_origins"),
            (
                json!({"allow_origins_by_regex": []}),
                "allow_origins_by_regex",
            ),
            (
                json!({"allow_origins_by_regex": ["ok", "("]}),
                "allow_origins_by_regex.1",
            ),
            (
                json!({"allow_origins_by_regex": [""]}),
                "allow_origins_by_regex.0",
            ),
            (json!({"allow_methods": "GET\nX: y"}), "allow_methods"),
            (json!({"allow_headers": "a\r\n"}), "allow_headers"),
            (json!({"expose_headers": "\u{0}"}), "expose_headers"),
            (json!({"max_age": -2}), "max_age"),
            (json!({"max_age": "5"}), "max_age"),
            (json!({"allow_credential": true}), "allow_origins"),
            (
                json!({"allow_credential": true, "allow_origins": "**"}),
                "allow_methods",
            ),
            (
                json!({"allow_credential": true, "allow_origins": "**", "allow_methods": "GET"}),
                "allow_headers",
            ),
            (
                json!({"allow_credential": true, "allow_origins": "**", "allow_methods": "GET", "allow_headers": "x", "expose_headers": "*"}),
                "expose_headers",
            ),
            (
                json!({"allow_origins_by_metadata": ["a"]}),
                "allow_origins_by_metadata",
            ),
        ];
        for (config, field) in cases {
            let e = parse::<CorsConfig>(&config).expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
        }
    }

    #[test]
    fn origin_regexes_match_whole_origins() {
        let re = origin_regex(r".*\.example\.com").unwrap();
        assert!(re.is_match("https://a.example.com"));
        assert!(!re.is_match("https://a.example.com.evil.net"));
        assert!(!re.is_match("https://example.com"));
    }
}
