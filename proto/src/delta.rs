//! Incremental snapshots (the delta idea of xDS): after the first, whole snapshot on a stream,
//! the control plane sends only the resources added or changed since the version it sent last
//! and the keys of those removed; the data plane rebuilds the whole set from the one it holds.
//! Both sides use these two functions, so `apply(base, diff(base, next)) == next` is the contract
//! (tested below).

use std::collections::HashMap;

use crate::model::ResourceKind;
use crate::sync::{Resource, ResourceKey};

/// The change from `base` to `next`: resources added or whose body changed (a write that left a
/// body as it was ships nothing), and the keys of those gone.
pub fn diff(base: &[Resource], next: &[Resource]) -> (Vec<Resource>, Vec<ResourceKey>) {
    let before: HashMap<(&str, &str), &Resource> = base
        .iter()
        .map(|r| ((r.kind.as_str(), r.id.as_str()), r))
        .collect();
    let changed = next
        .iter()
        .filter(|r| {
            before
                .get(&(r.kind.as_str(), r.id.as_str()))
                .is_none_or(|b| b.body != r.body)
        })
        .cloned()
        .collect();
    let after: HashMap<(&str, &str), ()> = next
        .iter()
        .map(|r| ((r.kind.as_str(), r.id.as_str()), ()))
        .collect();
    let removed = base
        .iter()
        .filter(|r| !after.contains_key(&(r.kind.as_str(), r.id.as_str())))
        .map(|r| ResourceKey {
            kind: r.kind.clone(),
            id: r.id.clone(),
        })
        .collect();
    (changed, removed)
}

/// `base` with `changed` put in (replacing the same kind and id) and `removed` taken out, in the
/// control plane's order: kinds in dependency order, then ids.
pub fn apply(base: &[Resource], changed: Vec<Resource>, removed: &[ResourceKey]) -> Vec<Resource> {
    let mut by_key: HashMap<(String, String), Resource> = base
        .iter()
        .map(|r| ((r.kind.clone(), r.id.clone()), r.clone()))
        .collect();
    for key in removed {
        by_key.remove(&(key.kind.clone(), key.id.clone()));
    }
    for r in changed {
        by_key.insert((r.kind.clone(), r.id.clone()), r);
    }
    let mut out: Vec<Resource> = by_key.into_values().collect();
    out.sort_by(|a, b| (kind_rank(&a.kind), &a.id).cmp(&(kind_rank(&b.kind), &b.id)));
    out
}

/// A kind's place in dependency order; unknown kinds last (the compiler refuses them anyway).
fn kind_rank(kind: &str) -> usize {
    ResourceKind::ALL
        .iter()
        .position(|k| k.as_str() == kind)
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(kind: &str, id: &str, body: &str, rev: u64) -> Resource {
        Resource {
            kind: kind.into(),
            id: id.into(),
            mod_revision: rev,
            body: body.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn apply_of_diff_gives_the_next_set() {
        let base = vec![
            res("upstreams", "u1", "{}", 1),
            res("routes", "a", r#"{"uri":"/a"}"#, 2),
            res("routes", "b", r#"{"uri":"/b"}"#, 3),
            res("routes", "c", r#"{"uri":"/c"}"#, 4),
        ];
        let next = vec![
            res("upstreams", "u1", "{}", 1),
            res("upstreams", "u2", "{}", 7),
            // Rewritten with the same body: not shipped.
            res("routes", "a", r#"{"uri":"/a"}"#, 5),
            res("routes", "b", r#"{"uri":"/b2"}"#, 6),
        ];
        let (changed, removed) = diff(&base, &next);
        let ids = |v: &[Resource]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&changed), ["u2", "b"]);
        assert_eq!(
            removed,
            [ResourceKey {
                kind: "routes".into(),
                id: "c".into()
            }]
        );
        let rebuilt = apply(&base, changed, &removed);
        let bodies = |v: &[Resource]| {
            v.iter()
                .map(|r| (r.kind.clone(), r.id.clone(), r.body.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bodies(&rebuilt), bodies(&next));
        assert_eq!(diff(&next, &next), (vec![], vec![]));
        assert_eq!(bodies(&apply(&next, vec![], &[])), bodies(&next));
    }
}
