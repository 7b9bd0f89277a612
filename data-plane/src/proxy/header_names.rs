//! Header names remembered per connection. A client, and even more an upstream, sends the same
//! header names in the same order on every message of a connection (`Server`, `Date`,
//! `Content-Type`, ...). `HeaderName::from_bytes` lowercases each name into a buffer and looks
//! it up among the standard names: about 150 instructions a name, most of the parse's own cost
//! after httparse. A name whose bytes are exactly those seen at its place in the connection's
//! last head is taken from the memo instead, for one comparison.

use http::header::{HeaderName, InvalidHeaderName};

/// The names of the last head parsed on one connection, in order.
#[derive(Default)]
pub struct NameMemo {
    /// The names' bytes as they came, one after another.
    raw: Vec<u8>,
    /// Each name's end in `raw`, and the name.
    names: Vec<(usize, HeaderName)>,
}

/// Names beyond this many bytes in all are parsed without being remembered, so a head of many
/// odd names does not keep a large memo alive for its connection.
const MEMO_BYTES: usize = 2048;

impl NameMemo {
    /// The header name at place `at` (0 for a head's first header) of a head, whose bytes are
    /// `raw`. Places must be asked for in order within a head, starting at 0.
    pub fn name(&mut self, at: usize, raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        // Where this place's bytes start in `raw`; a place after the memo's last is not kept.
        let start = match at.checked_sub(1) {
            None => 0,
            Some(before) => match self.names.get(before) {
                Some(&(end, _)) => end,
                None => return HeaderName::from_bytes(raw),
            },
        };
        if let Some((end, name)) = self.names.get(at)
            && &self.raw[start..*end] == raw
        {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw)?;
        // From this place on, the memo follows this head.
        self.names.truncate(at);
        self.raw.truncate(start);
        if start + raw.len() <= MEMO_BYTES {
            self.raw.extend_from_slice(raw);
            self.names.push((self.raw.len(), name.clone()));
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use http::header;

    use super::*;

    fn names(memo: &mut NameMemo, head: &[&str]) -> Vec<HeaderName> {
        head.iter()
            .enumerate()
            .map(|(i, n)| memo.name(i, n.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn the_same_names_as_from_bytes_whatever_came_before() {
        let mut memo = NameMemo::default();
        let heads: &[&[&str]] = &[
            &["Server", "Date", "Content-Length", "X-Custom"],
            // The same again: from the memo.
            &["Server", "Date", "Content-Length", "X-Custom"],
            // A different case is different bytes, the same name.
            &["server", "DATE", "Content-Length"],
            // Fewer, more, other names, and a name moved to another place.
            &["Date"],
            &["Date", "X-Other", "Server", "Via", "X-Custom"],
            &["X-Custom", "Date"],
            &[],
            &["Content-Length"],
        ];
        for head in heads {
            let want: Vec<HeaderName> = head
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
                .collect();
            assert_eq!(names(&mut memo, head), want, "{head:?}");
        }
        assert_eq!(
            memo.name(0, b"content-length").unwrap(),
            header::CONTENT_LENGTH
        );
    }

    #[test]
    fn an_invalid_name_is_refused_even_where_a_valid_one_was() {
        let mut memo = NameMemo::default();
        names(&mut memo, &["Server", "Date"]);
        assert!(memo.name(0, b"Serv er").is_err());
        assert!(memo.name(0, b"").is_err());
        // The memo is not left claiming a name for that place.
        assert_eq!(memo.name(0, b"Server").unwrap(), header::SERVER);
        assert_eq!(memo.name(1, b"Date").unwrap(), header::DATE);
    }

    #[test]
    fn long_heads_are_parsed_but_not_kept_past_the_cap() {
        let mut memo = NameMemo::default();
        let long: Vec<String> = (0..100).map(|i| format!("x-{i:0>40}")).collect();
        for (i, n) in long.iter().enumerate() {
            assert_eq!(memo.name(i, n.as_bytes()).unwrap().as_str(), n);
        }
        assert!(memo.raw.len() <= MEMO_BYTES);
        for (i, n) in long.iter().enumerate() {
            assert_eq!(memo.name(i, n.as_bytes()).unwrap().as_str(), n);
        }
    }
}
