//! Small checks shared by every resource type.

use super::error::{Result, ValidationError};

/// Longest id accepted (ids become store keys and metric labels).
pub const MAX_ID_LEN: usize = 64;
/// Longest `name`/`desc` accepted.
pub const MAX_TEXT_LEN: usize = 256;

/// Ids: 1-64 characters of `A-Z a-z 0-9 _ - .`, not `.` or `..`.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "",
            format!("'{id}' is not a valid id: use 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 _ - ."),
        ))
    }
}

pub fn check_text(field: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(v) if v.len() > MAX_TEXT_LEN => Err(ValidationError::new(
            field,
            format!("longer than {MAX_TEXT_LEN} bytes"),
        )),
        _ => Ok(()),
    }
}

/// A DNS name or an IPv4 address: labels of `A-Z a-z 0-9 -` (and `_`, which real deployments use),
/// at most 253 characters.
pub fn check_host(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "",
            format!("'{host}' is not a valid host name"),
        ))
    }
}

/// A route/service host: a host name, optionally starting with `*.` for any subdomain.
pub fn check_host_pattern(pattern: &str) -> Result<()> {
    check_host(pattern.strip_prefix("*.").unwrap_or(pattern))
}

/// HTTP methods a route may name.
pub const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

pub fn check_method(m: &str) -> Result<()> {
    if METHODS.contains(&m) {
        Ok(())
    } else {
        Err(ValidationError::new(
            "",
            format!(
                "'{m}' is not a supported method (one of {})",
                METHODS.join(", ")
            ),
        ))
    }
}

/// Compiled-size cap for every regular expression taken from config (the regex crate's default
/// is 10 MiB per regex; a snapshot may hold thousands).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A route uri written as a regular expression: `~` then the pattern (Kong's notation), matched
/// from the start of the normalised path (an implicit `^`; end it with `$` to match the whole
/// path). `None` for other uris.
pub fn uri_regex(uri: &str) -> Option<&str> {
    uri.strip_prefix('~')
}

/// The regex a `~` route uri compiles to: anchored at the start, size-bounded.
pub fn compile_uri_regex(pattern: &str) -> std::result::Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// A route uri: `~regex` (see [`uri_regex`]), or a path that starts with `/`, may end with
/// `*` (prefix match), no `*` elsewhere, no whitespace or control characters. A whole segment `:name` (name = `[A-Za-z_][A-Za-z0-9_]*`)
/// matches any one non-empty request segment; such a parameterised uri cannot also be a prefix,
/// and `:` is not allowed anywhere else.
pub fn check_uri(uri: &str) -> Result<()> {
    let err = |m: &str| Err(ValidationError::new("", format!("'{uri}': {m}")));
    if uri.len() > 4096 {
        return err("longer than 4096 bytes");
    }
    if let Some(pattern) = uri_regex(uri) {
        if pattern.is_empty() {
            return err("'~' needs a regular expression after it");
        }
        return match compile_uri_regex(pattern) {
            Ok(_) => Ok(()),
            Err(e) => err(&format!("invalid regular expression: {e}")),
        };
    }
    if !uri.starts_with('/') {
        return err("must start with '/' (or '~' for a regular expression)");
    }
    if uri
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return err("must not contain whitespace or control characters");
    }
    if uri.trim_end_matches('*').contains('*') || uri.ends_with("**") {
        return err("'*' is only allowed once, at the end (prefix match)");
    }
    let mut params = false;
    for seg in uri.split('/') {
        match seg.strip_prefix(':') {
            Some(name) => {
                if !is_param_name(name) {
                    return err(
                        "a ':' segment needs a parameter name of [A-Za-z_][A-Za-z0-9_]* \
                         filling the segment",
                    );
                }
                params = true;
            }
            None if seg.contains(':') => {
                return err("':' is only allowed at the start of a segment (':name' parameter)");
            }
            None => {}
        }
    }
    if params && uri.ends_with('*') {
        return err("a uri with ':name' parameters cannot also be a prefix ('*')");
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_param_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Whether a (valid) route uri has `:name` segments.
pub fn uri_has_params(uri: &str) -> bool {
    uri.split('/').any(|seg| seg.starts_with(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["1", "r1", "user-service", "a.b_c", &"x".repeat(64)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "a.example",
            "localhost",
            "127.0.0.1",
            "user_service.default.svc",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", "a b", "a/b", ".a", "a:80"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("a.*.com").is_err());
    }

    #[test]
    fn uris() {
        for ok in [
            "/",
            "/*",
            "/api/v1/products/*",
            "/exact",
            "/foo*",
            r"~/api/v\d+/users$",
            "~/a|/b",
        ] {
            assert!(check_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "api",
            "/a*b",
            "/a**",
            "/a b",
            "/a\n",
            "~",
            "~/a(",
            "~/a{1000000}",
        ] {
            assert!(check_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn param_uris() {
        for ok in [
            "/users/:id",
            "/:kind",
            "/users/:id/posts/:post_id",
            "/a/:_x9/b",
            "/users/:id/",
        ] {
            assert!(check_uri(ok).is_ok(), "{ok}");
            assert!(uri_has_params(ok), "{ok}");
        }
        for bad in [
            "/users/:",
            "/users/:/x",
            "/users/:1d",
            "/users/:id-x",
            "/users/:id:x",
            "/users/a:b",
            "/a:",
            "/users/x:id",
            "/users/::id",
            "/users/:id/*",
            "/users/:id*",
        ] {
            assert!(check_uri(bad).is_err(), "{bad}");
        }
        assert!(!uri_has_params("/users/*"));
    }
}
