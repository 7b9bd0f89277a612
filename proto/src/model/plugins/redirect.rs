//! `redirect`: answer with a redirect instead of proxying, as APISIX's plugin of the same name:
//! to HTTPS (`http_to_https`), to a fixed target with variables (`uri`), or to a target built
//! from the path by a regex (`regex_uri`, requests it does not match go on to the upstream).

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::model::error::{Result, ValidationError};

use crate::model::validate::REGEX_SIZE_LIMIT;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// Redirect plain-HTTP requests to `https://$host$request_uri` (301 for GET and HEAD, 308
    /// otherwise, so the method and body are kept); `ret_code` does not apply.
    #[serde(default)]
    pub http_to_https: bool,
    /// Target, with variables: `$uri` (path), `$request_uri` (path and query), `$host`, `$args`
    /// (query), `$is_args` (`?` when there is a query), `$scheme`; `${name}` to glue a variable
    /// to following letters; `\$name` for a literal `$name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `[regex, replacement]`: the first match of the regex in the path is replaced (`$1`,
    /// `${1}`, `${name}` for captures, `$$` for `$`); a path it does not match is proxied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_uri: Option<Vec<String>>,
    /// Status for `uri` and `regex_uri` redirects, 300-399 [default: 302].
    #[serde(default = "default_ret_code")]
    pub ret_code: u16,
    /// Percent-encode what is not valid in a URI (spaces, quotes, non-ASCII…) in the target's
    /// path; `%` is kept, so an already encoded path is not encoded twice [default: false].
    #[serde(default)]
    pub encode_uri: bool,
    /// Append the request's query string to the target [default: false].
    #[serde(default)]
    pub append_query_string: bool,
}

fn default_ret_code() -> u16 {
    302
}

/// A request variable usable in `uri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriVar {
    /// The path, without the query.
    Uri,
    /// The path and the query, as requested.
    RequestUri,
    /// The host the client asked for, lower-cased, without its port.
    Host,
    /// The query string, without `?`.
    Args,
    /// `?` when the request has a query, else empty.
    IsArgs,
    Scheme,
}

impl UriVar {
    fn from_name(name: &str) -> Option<UriVar> {
        Some(match name {
            "uri" => UriVar::Uri,
            "request_uri" => UriVar::RequestUri,
            "host" => UriVar::Host,
            "args" | "query_string" => UriVar::Args,
            "is_args" => UriVar::IsArgs,
            "scheme" => UriVar::Scheme,
            _ => return None,
        })
    }
}

/// One piece of a parsed `uri` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriPart {
    Literal(String),
    Var(UriVar),
}

/// One piece of a parsed `regex_uri` replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplacementPart {
    Literal(String),
    /// A capture group by index (named groups are resolved to theirs).
    Group(usize),
}

/// What a redirect config does, compiled.
#[derive(Debug, Clone)]
pub enum RedirectTarget {
    HttpToHttps,
    Uri(Vec<UriPart>),
    Regex(Regex, Vec<ReplacementPart>),
}

fn name_len(s: &str) -> usize {
    s.bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count()
}

fn push_literal(parts: &mut Vec<UriPart>, s: &str) {
    if s.is_empty() {
        return;
    }
    match parts.last_mut() {
        Some(UriPart::Literal(l)) => l.push_str(s),
        _ => parts.push(UriPart::Literal(s.to_string())),
    }
}

/// Parses a `uri` template (APISIX syntax: `$name`, `${name}`, `\$name`; a `$` not followed by a
/// name is literal). Unknown variables are refused rather than left empty.
pub fn parse_uri_template(template: &str) -> std::result::Result<Vec<UriPart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(pos) = rest.find(['$', '\\']) {
        push_literal(&mut parts, &rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("\\$") {
            let n = name_len(after);
            if n > 0 {
                push_literal(&mut parts, &tail[1..2 + n]);
                rest = &after[n..];
            } else {
                push_literal(&mut parts, "\\");
                rest = &tail[1..];
            }
        } else if let Some(after) = tail.strip_prefix('\\') {
            push_literal(&mut parts, "\\");
            rest = after;
        } else if let Some(braced) = tail.strip_prefix("${") {
            let end = braced
                .find('}')
                .ok_or_else(|| "'${' without its closing '}'".to_string())?;
            let name = &braced[..end];
            if name.is_empty() || name_len(name) != name.len() {
                return Err(format!("'${{{name}}}' is not a variable name"));
            }
            parts.push(UriPart::Var(var(name)?));
            rest = &braced[end + 1..];
        } else {
            let after = &tail[1..];
            let n = name_len(after);
            if n > 0 {
                parts.push(UriPart::Var(var(&after[..n])?));
            } else {
                push_literal(&mut parts, "$");
            }
            rest = &after[n..];
        }
    }
    push_literal(&mut parts, rest);
    Ok(parts)
}

fn var(name: &str) -> std::result::Result<UriVar, String> {
    UriVar::from_name(name).ok_or_else(|| {
        format!(
            "unknown variable '${name}' (known: $uri, $request_uri, $host, $args, $is_args, \
             $scheme; write ${{name}} to put letters right after one)"
        )
    })
}

/// Parses a `regex_uri` replacement (ngx.re.sub syntax: `$0`…`$9…`, `${1}`, `$$`; plus
/// `${name}` for named groups), checking every group exists in `re`.
pub fn parse_replacement(
    template: &str,
    re: &Regex,
) -> std::result::Result<Vec<ReplacementPart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    let group = |name: &str| -> std::result::Result<usize, String> {
        let index = match name.parse::<usize>() {
            Ok(i) => Some(i),
            Err(_) => re.capture_names().position(|n| n == Some(name)),
        };
        index
            .filter(|i| *i < re.captures_len())
            .ok_or_else(|| format!("the regex has no capture group '{name}'"))
    };
    while let Some(pos) = rest.find('$') {
        literal.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (index, consumed) = if let Some(after_dollar) = after.strip_prefix('$') {
            literal.push('$');
            rest = after_dollar;
            continue;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| "'${' without its closing '}'".to_string())?;
            (group(&braced[..end])?, end + 2)
        } else {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err("'$' must be followed by a group number, '{group}' or '$'".into());
            }
            (group(&after[..digits])?, digits)
        };
        if !literal.is_empty() {
            parts.push(ReplacementPart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(ReplacementPart::Group(index));
        rest = &after[consumed..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(ReplacementPart::Literal(literal));
    }
    Ok(parts)
}

fn has_control(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_control())
}

impl RedirectConfig {
    /// Checks that exactly one kind of redirect is configured and compiles it.
    pub fn target(&self) -> Result<RedirectTarget> {
        let given = [
            ("http_to_https", self.http_to_https),
            ("uri", self.uri.is_some()),
            ("regex_uri", self.regex_uri.is_some()),
        ];
        let mut set = given.iter().filter(|(_, on)| *on).map(|(name, _)| *name);
        let first = set.next();
        if let Some(second) = set.next() {
            return Err(ValidationError::new(
                second,
                "give only one of 'http_to_https', 'uri' and 'regex_uri'",
            ));
        }
        if first.is_none() {
            return Err(ValidationError::new(
                "",
                "one of 'http_to_https', 'uri' or 'regex_uri' is required",
            ));
        }
        if self.http_to_https {
            return Ok(RedirectTarget::HttpToHttps);
        }
        if let Some(uri) = &self.uri {
            if uri.is_empty() || has_control(uri) {
                return Err(ValidationError::new(
                    "uri",
                    "must be a non-empty URI without control characters",
                ));
            }
            let parts = parse_uri_template(uri).map_err(|e| ValidationError::new("uri", e))?;
            return Ok(RedirectTarget::Uri(parts));
        }
        let Some([pattern, replacement]) = self.regex_uri.as_deref() else {
            return Err(ValidationError::new(
                "regex_uri",
                "must be [regex, replacement]",
            ));
        };
        let re = RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| ValidationError::new("regex_uri.0", format!("not a valid regex: {e}")))?;
        if has_control(replacement) {
            return Err(ValidationError::new(
                "regex_uri.1",
                "must not contain control characters",
            ));
        }
        let parts = parse_replacement(replacement, &re)
            .map_err(|e| ValidationError::new("regex_uri.1", e))?;
        Ok(RedirectTarget::Regex(re, parts))
    }
}

impl PluginConfig for RedirectConfig {
    fn validate(&self) -> Result<()> {
        self.target()?;
        if !(300..=399).contains(&self.ret_code) {
            return Err(ValidationError::new("ret_code", "must be 300-399"));
        }
        if self.http_to_https && self.append_query_string {
            return Err(ValidationError::new(
                "append_query_string",
                "cannot be used with 'http_to_https' (which keeps the query already)",
            ));
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
    fn rejects_bad_configs_naming_the_field() {
        let cases = [
            (json!({}), ""),
            (json!({"http_to_https": false}), ""),
            (json!({"http_to_https": true, "uri": "/a"}), "uri"),
            (
                json!({"uri": "/a", "regex_uri": ["^/a", "/b"]}),
                "regex_uri",
            ),
            (json!({"uri": "/a", "ret_code": 200}), "ret_code"),
            (json!({"uri": "/a", "ret_code": 404}), "ret_code"),
            (json!({"uri": "/a", "ret_code": -1}), "ret_code"),
            (json!({"uri": ""}), "uri"),
            (json!({"uri": "/a\nb"}), "uri"),
            (json!({"uri": "/$nope"}), "uri"),
            (json!({"uri": "/${uri"}), "uri"),
            (json!({"uri": "/$uri_x"}), "uri"),
            (json!({"regex_uri": ["^/a"]}), "regex_uri"),
            (json!({"regex_uri": ["^/a", "/b", "/c"]}), "regex_uri"),
            (json!({"regex_uri": "^/a"}), "regex_uri"),
            (json!({"regex_uri": ["(", "/b"]}), "regex_uri.0"),
            (json!({"regex_uri": ["^/(a)", "/$2"]}), "regex_uri.1"),
            (json!({"regex_uri": ["^/(a)", "/$x"]}), "regex_uri.1"),
            (json!({"regex_uri": ["^/(a)", "/${nope}"]}), "regex_uri.1"),
            (
                json!({"http_to_https": true, "append_query_string": true}),
                "append_query_string",
            ),
            (json!({"uri": "/a", "colour": 1}), "colour"),
        ];
        for (config, field) in cases {
            let e = parse::<RedirectConfig>(&config).expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
        }
        for config in [
            json!({"http_to_https": true}),
            json!({"http_to_https": false, "uri": "/a"}),
            json!({"uri": "https://new.example$request_uri", "ret_code": 301}),
            json!({"regex_uri": ["^/(?P<x>a)/(.*)", "/${x}-$2$$"], "append_query_string": true}),
        ] {
            parse::<RedirectConfig>(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        }
    }

    #[test]
    fn parses_uri_templates() {
        use UriPart::{Literal as L, Var as V};
        let cases = [
            ("/new", vec![L("/new".into())]),
            (
                "https://$host$request_uri",
                vec![L("https://".into()), V(UriVar::Host), V(UriVar::RequestUri)],
            ),
            (
                "/a${uri}x$",
                vec![L("/a".into()), V(UriVar::Uri), L("x$".into())],
            ),
            ("/\\$uri/\\x", vec![L("/$uri/\\x".into())]),
            ("/$ ${args}", vec![L("/$ ".into()), V(UriVar::Args)]),
        ];
        for (template, want) in cases {
            assert_eq!(parse_uri_template(template).unwrap(), want, "{template}");
        }
    }

    #[test]
    fn parses_replacements() {
        use ReplacementPart::{Group as G, Literal as L};
        let re = Regex::new("^/(?P<first>[^/]+)/(.*)").unwrap();
        let cases = [
            ("/x/$1", vec![L("/x/".into()), G(1)]),
            ("$2${1}z$$", vec![G(2), G(1), L("z$".into())]),
            (
                "/${first}/$0",
                vec![L("/".into()), G(1), L("/".into()), G(0)],
            ),
        ];
        for (template, want) in cases {
            assert_eq!(
                parse_replacement(template, &re).unwrap(),
                want,
                "{template}"
            );
        }
    }
}
