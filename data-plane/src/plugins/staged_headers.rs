//! Headers plugins stage for the response to the client, whatever produces it (the upstream or
//! a plugin's answer). A request stages a handful at most (a limit's three, CORS's four), so a
//! `Vec` searched by name costs less than a `HeaderMap`: one allocation, no hashing, and the
//! names are hashed once, when they reach the response's own map.

use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Default)]
pub struct StagedHeaders {
    entries: Vec<Staged>,
}

#[derive(Debug)]
struct Staged {
    name: HeaderName,
    value: HeaderValue,
    /// Appended after an earlier value of the same name: added to the response, not replacing.
    repeat: bool,
}

impl StagedHeaders {
    /// Stages `value` as `name`'s only value, replacing what was staged for it before.
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        match self.entries.iter().position(|e| e.name == name) {
            Some(i) => {
                self.entries[i].value = value;
                // A name staged several times with `append` keeps one value.
                self.entries.retain(|e| !(e.repeat && e.name == name));
            }
            None => {
                if self.entries.capacity() == 0 {
                    self.entries.reserve_exact(4);
                }
                self.entries.push(Staged {
                    name,
                    value,
                    repeat: false,
                });
            }
        }
    }

    /// Stages one more value for `name`, after those staged before.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        let repeat = self.entries.iter().any(|e| e.name == name);
        self.entries.push(Staged {
            name,
            value,
            repeat,
        });
    }

    /// The first value staged for `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.entries
            .iter()
            .find(|e| e.name.as_str() == name)
            .map(|e| &e.value)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Moves the staged headers into `headers`: a staged name replaces the values `headers` had
    /// for it, and keeps every value staged for it, in order.
    pub fn apply_to(&mut self, headers: &mut HeaderMap) {
        headers.reserve(self.entries.len());
        for e in self.entries.drain(..) {
            if e.repeat {
                headers.append(e.name, e.value);
            } else {
                headers.insert(e.name, e.value);
            }
        }
    }
}

impl std::ops::Index<&str> for StagedHeaders {
    type Output = HeaderValue;

    /// The first value staged for `name`; panics when none is (as `HeaderMap`'s index does).
    fn index(&self, name: &str) -> &HeaderValue {
        self.get(name)
            .unwrap_or_else(|| panic!("no header {name} staged"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_name_replaces_the_responses_values_and_keeps_its_own() {
        let mut staged = StagedHeaders::default();
        staged.insert(HeaderName::from_static("x-a"), HeaderValue::from(1u64));
        staged.append(
            HeaderName::from_static("vary"),
            HeaderValue::from_static("Origin"),
        );
        staged.append(
            HeaderName::from_static("vary"),
            HeaderValue::from_static("Cookie"),
        );
        staged.insert(HeaderName::from_static("x-a"), HeaderValue::from(2u64));
        assert_eq!(staged.len(), 3);
        assert_eq!(staged["x-a"], "2");
        assert!(staged.get("x-b").is_none());

        let mut response = HeaderMap::new();
        response.insert("x-a", HeaderValue::from_static("upstream"));
        response.insert("vary", HeaderValue::from_static("Accept-Encoding"));
        response.insert("server", HeaderValue::from_static("up"));
        staged.apply_to(&mut response);
        assert!(staged.is_empty());
        assert_eq!(response.get_all("x-a").iter().collect::<Vec<_>>(), ["2"]);
        assert_eq!(
            response.get_all("vary").iter().collect::<Vec<_>>(),
            ["Origin", "Cookie"]
        );
        assert_eq!(response["server"], "up");
    }

    #[test]
    fn insert_after_append_leaves_one_value() {
        let mut staged = StagedHeaders::default();
        let vary = HeaderName::from_static("vary");
        staged.append(vary.clone(), HeaderValue::from_static("a"));
        staged.append(
            HeaderName::from_static("x-b"),
            HeaderValue::from_static("b"),
        );
        staged.append(vary.clone(), HeaderValue::from_static("c"));
        staged.insert(vary, HeaderValue::from_static("d"));
        let mut response = HeaderMap::new();
        staged.apply_to(&mut response);
        assert_eq!(response.get_all("vary").iter().collect::<Vec<_>>(), ["d"]);
        assert_eq!(response["x-b"], "b");
    }
}
