//! `proxy-rewrite`: change the request sent to the upstream — its path (`uri` or `regex_uri`),
//! `Host`, method and headers — without changing what the route matched.

use regex::{Captures, Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::header_ops::{HeaderRewrite, HeaderTarget, check_literal};
use crate::model::error::{Result, ValidationError};
use crate::model::validate::check_host;

/// Methods `method` may name (APISIX's list).
pub const METHODS: [&str; 14] = [
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK",
    "UNLOCK", "PATCH", "TRACE",
];

use crate::model::validate::REGEX_SIZE_LIMIT;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRewriteConfig {
    /// New upstream path, literally (no `$variables`). The client's query string is kept unless
    /// this has one of its own. Wins over `regex_uri` when both are given, as in APISIX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `[regex, replacement, regex, replacement, …]`: the first regex that matches the request
    /// path replaces its match with the replacement (`$1`, `${1}` for groups, `$0` for the whole
    /// match, `$$` for a dollar). No match: the path is left alone. The query string is kept
    /// unless the replacement has one of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_uri: Option<Vec<String>>,
    /// `Host` header for the upstream (`name` or `name:port`); overrides the upstream's
    /// `pass_host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Method for the upstream request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers to add, set or remove (see `header_ops`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderRewrite>,
}

/// A `regex_uri` replacement, parsed once: literal text and capture-group references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Literal(String),
    Group(usize),
}

impl UriTemplate {
    /// Parses NGINX `ngx.re.sub` template syntax: `$N`, `${N}`, `$$`.
    pub fn parse(template: &str) -> Result<UriTemplate> {
        let err = |m: String| Err(ValidationError::new("", m));
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (digits, consumed) = if let Some(inner) = after.strip_prefix('{') {
                match inner.find('}') {
                    Some(end) => (&inner[..end], end + 2),
                    None => return err("'${' without a closing '}'".into()),
                }
            } else if let Some(after_dollar) = after.strip_prefix('$') {
                literal.push('$');
                rest = after_dollar;
                continue;
            } else {
                let end = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            let Ok(group) = digits.parse::<usize>() else {
                return err(format!(
                    "'${digits}': after '$' only group numbers ($1, ${{1}}) and '$$' are supported"
                ));
            };
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(TemplatePart::Group(group));
            rest = &after[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        Ok(UriTemplate { parts })
    }

    /// The highest group it refers to.
    pub fn max_group(&self) -> Option<usize> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                TemplatePart::Group(g) => Some(*g),
                TemplatePart::Literal(_) => None,
            })
            .max()
    }

    /// The literal text, concatenated (for checking it is fit for a URI).
    fn literals(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                TemplatePart::Literal(s) => Some(s.as_str()),
                TemplatePart::Group(_) => None,
            })
            .collect()
    }

    /// Appends the replacement for `caps` to `out`; a group that did not take part is empty.
    pub fn expand(&self, caps: &Captures<'_>, out: &mut String) {
        for part in &self.parts {
            match part {
                TemplatePart::Literal(s) => out.push_str(s),
                TemplatePart::Group(g) => {
                    if let Some(m) = caps.get(*g) {
                        out.push_str(m.as_str());
                    }
                }
            }
        }
    }

    /// Length of the literal parts (a lower bound of the expansion).
    pub fn literal_len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                TemplatePart::Literal(s) => s.len(),
                TemplatePart::Group(_) => 0,
            })
            .sum()
    }
}

/// Text that goes into a request target: printable ASCII without spaces or `#`.
fn check_target_text(text: &str) -> Result<()> {
    if let Some(c) = text.chars().find(|c| {
        !c.is_ascii_graphic()
            || matches!(
                c,
                '#' | '"' | '<' | '>' | '\\' | '^' | '`' | '{' | '|' | '}'
            )
    }) {
        return Err(ValidationError::new(
            "",
            format!("'{c}' cannot appear in a request path; percent-encode it"),
        ));
    }
    Ok(())
}

impl ProxyRewriteConfig {
    /// The `regex_uri` pairs, compiled; errors name the item (`regex_uri.0`, `regex_uri.1`).
    pub fn compile_regex_uri(&self) -> Result<Vec<(Regex, UriTemplate)>> {
        let Some(items) = &self.regex_uri else {
            return Ok(Vec::new());
        };
        if items.is_empty() || items.len() % 2 != 0 {
            return Err(ValidationError::new(
                "regex_uri",
                "must be [regex, replacement] pairs: an even, non-zero number of strings",
            ));
        }
        let mut out = Vec::with_capacity(items.len() / 2);
        for (i, pair) in items.chunks_exact(2).enumerate() {
            let (re_field, tpl_field) = (format!("{}", 2 * i), format!("{}", 2 * i + 1));
            let re = RegexBuilder::new(&pair[0])
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    ValidationError::new(re_field, format!("not a valid regular expression: {e}"))
                        .under("regex_uri")
                })?;
            let tpl =
                UriTemplate::parse(&pair[1]).map_err(|e| e.under(&tpl_field).under("regex_uri"))?;
            check_target_text(&tpl.literals())
                .map_err(|e| e.under(&tpl_field).under("regex_uri"))?;
            let groups = re.captures_len() - 1;
            if let Some(g) = tpl.max_group()
                && g > groups
            {
                return Err(ValidationError::new(
                    tpl_field,
                    format!("refers to group ${g} but the regex has {groups} group(s)"),
                )
                .under("regex_uri"));
            }
            out.push((re, tpl));
        }
        Ok(out)
    }
}

impl PluginConfig for ProxyRewriteConfig {
    fn validate(&self) -> Result<()> {
        if self.uri.is_none()
            && self.regex_uri.is_none()
            && self.host.is_none()
            && self.method.is_none()
            && self.headers.is_none()
        {
            return Err(ValidationError::new(
                "",
                "give at least one of uri, regex_uri, host, method, headers",
            ));
        }
        if let Some(uri) = &self.uri {
            let field = |m: String| ValidationError::new("uri", m);
            if !uri.starts_with('/') {
                return Err(field(format!("'{uri}' must start with '/'")));
            }
            if uri.len() > 4096 {
                return Err(field("longer than 4096 bytes".into()));
            }
            check_target_text(uri).map_err(|e| e.under("uri"))?;
            check_literal(uri).map_err(|e| e.under("uri"))?;
        }
        self.compile_regex_uri()?;
        if let Some(host) = &self.host {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host.as_str(), None),
            };
            let port_ok = port.is_none_or(|p| {
                p.len() <= 5
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if check_host(name).is_err() || !port_ok {
                return Err(ValidationError::new(
                    "host",
                    format!("'{host}' is not a host name with an optional :port"),
                ));
            }
        }
        if let Some(m) = &self.method
            && !METHODS.contains(&m.as_str())
        {
            return Err(ValidationError::new(
                "method",
                format!("'{m}' is not one of {}", METHODS.join(", ")),
            ));
        }
        if let Some(h) = &self.headers {
            h.validate(HeaderTarget::Request)
                .map_err(|e| e.under("headers"))?;
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
    fn templates() {
        let re = Regex::new("^/api/(?<svc>[a-z]+)/(.*)$").unwrap();
        let caps = re.captures("/api/web/x/y").unwrap();
        let cases = [
            ("/$1", "/web"),
            ("/${2}/v1", "/x/y/v1"),
            ("/$2$1", "/x/yweb"),
            ("$0", "/api/web/x/y"),
            ("/cost$$", "/cost$"),
            ("/plain", "/plain"),
        ];
        for (tpl, want) in cases {
            let t = UriTemplate::parse(tpl).unwrap();
            let mut out = String::new();
            t.expand(&caps, &mut out);
            assert_eq!(out, want, "{tpl}");
        }
        for bad in ["/$x", "/${1", "/${name}", "/$"] {
            assert!(UriTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (json!({}), ""),
            (json!({"uri": "x"}), "uri"),
            (json!({"uri": "/a b"}), "uri"),
            (json!({"uri": "/$uri"}), "uri"),
            (json!({"regex_uri": ["^/(.*"]}), "regex_uri"),
            (json!({"regex_uri": []}), "regex_uri"),
            (json!({"regex_uri": ["^/(.*", "/$1"]}), "regex_uri.0"),
            (json!({"regex_uri": ["^/(.*)", "/$2"]}), "regex_uri.1"),
            (json!({"regex_uri": ["^/(.*)", "/$name"]}), "regex_uri.1"),
            (
                json!({"regex_uri": ["^/a", "/b", "^/(?=x)", "/c"]}),
                "regex_uri.2",
            ),
            (json!({"regex_uri": ["^/a", "/b c"]}), "regex_uri.1"),
            (json!({"host": "a b"}), "host"),
            (json!({"host": "a:99999"}), "host"),
            (json!({"method": "FETCH"}), "method"),
            (json!({"headers": {"set": {"X A": "1"}}}), "headers.set.X A"),
            (json!({"headers": {"X-A": "a\u{7}"}}), "headers.X-A"),
            (
                json!({"headers": {"set": {"X-A": "1"}, "oops": 1}}),
                "headers.oops",
            ),
            (json!({"scheme": "https"}), "scheme"),
        ];
        for (config, field) in cases {
            let e = crate::model::decode::<ProxyRewriteConfig>(&config)
                .and_then(|c| c.validate())
                .expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
        }
    }

    #[test]
    fn good_configs() {
        for ok in [
            json!({"regex_uri": ["^/api/web/(.*)", "/$1"]}),
            json!({"uri": "/v2/items?src=gw"}),
            json!({"host": "svc.internal:8443", "method": "POST"}),
            json!({"headers": {"X-Api-Version": "v1", "X-Remove": ""}}),
            json!({"headers": {"add": {"X-A": "1"}, "set": {"X-B": 2}, "remove": ["X-C"]}}),
        ] {
            parse::<ProxyRewriteConfig>(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }
}
