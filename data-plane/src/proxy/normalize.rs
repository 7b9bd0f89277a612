//! Request path normalisation: one canonical path, computed once per request, used for routing,
//! by every plugin and for the upstream request, so that `/api/../admin`, `/api/%2e%2e/admin`,
//! `//admin` and `/%61dmin` cannot mean one thing to the router and another to the upstream.
//!
//! Rules, in order:
//! 1. percent-encodings are validated (`%` followed by two hex digits; `%00` is refused);
//! 2. encodings of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (`%61` → `a`,
//!    `%2e` → `.`); every other encoding is kept, with upper-case hex (`%2f` → `%2F`);
//! 3. an encoded slash (`%2F`) is kept as data (not a separator) or refused, by configuration;
//! 4. runs of slashes collapse to one;
//! 5. dot segments are removed (RFC 3986 §5.2.4); `..` never climbs above the root.

use std::borrow::Cow;

/// What to do with `%2F` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlash {
    /// Keep it encoded: it is part of a segment, not a separator (the default).
    #[default]
    Keep,
    /// Refuse the request with 400.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is not absolute")]
    NotAbsolute,
    #[error("the path has a malformed percent-encoding")]
    BadEncoding,
    #[error("the path contains an encoded NUL")]
    Nul,
    #[error("the path contains an encoded slash (%2F)")]
    EncodedSlash,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` is already in normal form (the common case: no allocation then).
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    for (i, &b) in path.iter().enumerate() {
        if b == b'%' || (b == b'/' && prev == b'/') {
            return false;
        }
        // A segment that starts with '.' may be a dot segment: check it properly.
        if b == b'.' && prev == b'/' {
            let rest = &path[i..];
            let seg_end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
            if matches!(&rest[..seg_end], b"." | b"..") {
                return false;
            }
        }
        prev = b;
    }
    true
}

/// The normal form of `path` (no query), or why it is refused.
pub fn normalize_path(path: &str, encoded_slash: EncodedSlash) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // 1-3: decode unreserved, canonicalise the rest.
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEncoding);
        };
        let c = h * 16 + l;
        match c {
            0 => return Err(PathError::Nul),
            b'/' if encoded_slash == EncodedSlash::Reject => return Err(PathError::EncodedSlash),
            c if is_unreserved(c) => decoded.push(c),
            c => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                decoded.extend_from_slice(&[
                    b'%',
                    HEX[usize::from(c >> 4)],
                    HEX[usize::from(c & 15)],
                ]);
            }
        }
        i += 3;
    }
    // 4-5: split on real slashes, drop empty and "." segments, let ".." pop.
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    // A trailing slash (or a trailing dot segment) names a directory: keep it.
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        // Every byte is ASCII or came from valid UTF-8 input; encoded bytes stayed encoded.
        out.push_str(std::str::from_utf8(s).map_err(|_| PathError::BadEncoding)?);
    }
    if segments.is_empty() || trailing {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_forms() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/api/../admin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/%61dmin", "/admin"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/..", "/"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb/../c", "/c"),
            ("/a%20b", "/a%20b"),
            ("/%7euser", "/~user"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b", "/a/..b"),
            ("/caf%C3%A9", "/caf%C3%A9"),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_path(input, EncodedSlash::Keep).as_deref(),
                Ok(want),
                "{input}"
            );
        }
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for p in ["/", "/a/b", "/a/b/", "/.well-known/x", "/a/..b", "/a.b/c"] {
            assert!(
                matches!(normalize_path(p, EncodedSlash::Keep), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn refused() {
        let cases = [
            ("a/b", EncodedSlash::Keep, PathError::NotAbsolute),
            ("", EncodedSlash::Keep, PathError::NotAbsolute),
            ("/a%", EncodedSlash::Keep, PathError::BadEncoding),
            ("/a%2", EncodedSlash::Keep, PathError::BadEncoding),
            ("/a%zz", EncodedSlash::Keep, PathError::BadEncoding),
            ("/a%00b", EncodedSlash::Keep, PathError::Nul),
            ("/a%2fb", EncodedSlash::Reject, PathError::EncodedSlash),
        ];
        for (input, mode, want) in cases {
            assert_eq!(normalize_path(input, mode), Err(want), "{input}");
        }
    }

    #[test]
    fn idempotent() {
        for p in [
            "/api/%2e%2e/admin",
            "//a/./b/../c/",
            "/%61%2f%62",
            "/x/%7e/..",
        ] {
            let once = normalize_path(p, EncodedSlash::Keep).unwrap().into_owned();
            let twice = normalize_path(&once, EncodedSlash::Keep)
                .unwrap()
                .into_owned();
            assert_eq!(once, twice, "{p}");
        }
    }
}
