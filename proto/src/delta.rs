//! Incremental snapshots (the delta idea of xDS): after the first, whole snapshot on a stream,
//! the control plane sends only the resources added or changed since the version it sent last
//! and the keys of those removed; the data plane rebuilds the whole set from the one it holds.
//! Both sides use these two functions, so `apply(base, diff(base, next)) == next` is the contract
//! (tested below).

/// Keys are hashed with foldhash: a delta is computed per data plane per change, over every
/// resource of the config, and SipHash would be most of that work.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

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
                .is_none_or(|b| !same_body(b, r))
        })
        .cloned()
        .collect();
    let after: HashSet<(&str, &str)> = next
        .iter()
        .map(|r| (r.kind.as_str(), r.id.as_str()))
        .collect();
    let removed = base
        .iter()
        .filter(|r| !after.contains(&(r.kind.as_str(), r.id.as_str())))
        .map(|r| ResourceKey {
            kind: r.kind.clone(),
            id: r.id.clone(),
        })
        .collect();
    (changed, removed)
}

/// Whether two versions of a resource have the same body. A control plane keeps an unchanged
/// resource's encoding from one snapshot to the next, so most are the same bytes, not just
/// equal ones: that is checked first, without comparing them.
fn same_body(a: &Resource, b: &Resource) -> bool {
    (a.body.as_ptr() == b.body.as_ptr() && a.body.len() == b.body.len()) || a.body == b.body
}

/// `base` with `changed` put in (replacing the same kind and id) and `removed` taken out, in the
/// control plane's order: kinds in dependency order, then ids. Costs a copy of each unchanged
/// resource's key (bodies are shared) and no more: a delta is a handful of resources on top of
/// thousands.
pub fn apply(base: &[Resource], changed: Vec<Resource>, removed: &[ResourceKey]) -> Vec<Resource> {
    let touched: HashSet<(&str, &str)> = changed
        .iter()
        .map(|r| (r.kind.as_str(), r.id.as_str()))
        .chain(removed.iter().map(|k| (k.kind.as_str(), k.id.as_str())))
        .collect();
    let mut out: Vec<Resource> = Vec::with_capacity(base.len() + changed.len());
    out.extend(
        base.iter()
            .filter(|r| !touched.contains(&(r.kind.as_str(), r.id.as_str())))
            .cloned(),
    );
    drop(touched);
    // Reversed, so that of two changes to one resource the later is first, and kept.
    out.extend(changed.into_iter().rev());
    // `base` is in order already: this (stable) sort merges the few changed resources in.
    out.sort_by(|a, b| (kind_rank(&a.kind), &a.id).cmp(&(kind_rank(&b.kind), &b.id)));
    out.dedup_by(|a, b| a.kind == b.kind && a.id == b.id);
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
