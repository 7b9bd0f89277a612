//! Headers plugins stage for the response to the client, whatever produces it (the upstream or
//! a plugin's answer). A request stages a handful at most (a limit's three, CORS's four), so a
//! `Vec` searched by name costs less than a `HeaderMap`: one allocation, no hashing, and the
//! names are hashed once, when they reach the response's own map.

use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Default)]
pub struct StagedHeaders {
    entries: Vec<(HeaderName, HeaderValue)>,
}

impl StagedHeaders {
    /// Stages `value` as `name`'s value, replacing what was staged for it before.
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some((_, staged)) => *staged = value,
            None => {
                if self.entries.capacity() == 0 {
                    self.entries.reserve_exact(4);
                }
                self.entries.push((name, value));
            }
        }
    }

    /// The value staged for `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.entries
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Moves the staged headers into `headers`, each replacing the values `headers` had for it.
    pub fn apply_to(&mut self, headers: &mut HeaderMap) {
        headers.reserve(self.entries.len());
        for (name, value) in self.entries.drain(..) {
            headers.insert(name, value);
        }
    }
}

impl std::ops::Index<&str> for StagedHeaders {
    type Output = HeaderValue;

    /// The value staged for `name`; panics when none is (as `HeaderMap`'s index does).
    fn index(&self, name: &str) -> &HeaderValue {
        self.get(name)
            .unwrap_or_else(|| panic!("no header {name} staged"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_name_replaces_its_earlier_value_and_the_responses() {
        let mut staged = StagedHeaders::default();
        staged.insert(HeaderName::from_static("x-a"), HeaderValue::from(1u64));
        staged.insert(
            HeaderName::from_static("vary"),
            HeaderValue::from_static("Origin"),
        );
        staged.insert(HeaderName::from_static("x-a"), HeaderValue::from(2u64));
        assert_eq!(staged["x-a"], "2");
        assert_eq!(staged["vary"], "Origin");
        assert!(staged.get("x-b").is_none());

        let mut response = HeaderMap::new();
        response.insert("x-a", HeaderValue::from_static("upstream"));
        response.append("vary", HeaderValue::from_static("Accept-Encoding"));
        response.append("vary", HeaderValue::from_static("Cookie"));
        response.insert("server", HeaderValue::from_static("up"));
        staged.apply_to(&mut response);
        assert!(staged.is_empty());
        assert_eq!(response.get_all("x-a").iter().collect::<Vec<_>>(), ["2"]);
        assert_eq!(
            response.get_all("vary").iter().collect::<Vec<_>>(),
            ["Origin"]
        );
        assert_eq!(response["server"], "up");
    }
}
