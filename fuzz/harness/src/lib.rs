//! What each fuzz target runs. The cargo-fuzz project (`fuzz/libfuzzer`, built with libFuzzer's
//! instrumentation by `scripts/fuzz.sh`) calls these functions with its inputs; this crate's own
//! tests replay every input kept in `fuzz/regressions/<target>/` (and the seeds) on the stable
//! toolchain, so a crash once found stays fixed. Each function panics on a broken invariant.

mod bytes;
mod config_updates;
mod jwt;
mod routing;

use postern_data_plane::proxy::normalize::{EncodedSlash, normalize_path};
use postern_proto::model::{Resource, ResourceKind, secrets};
use prost::Message;

pub use config_updates::config_updates;
pub use jwt::jwt;
pub use routing::{route_table, router_match};

/// What a fuzz target runs on one input; it panics on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target, by the name of its file in `fuzz/libfuzzer/fuzz_targets/`.
pub const TARGETS: [(&str, Target); 7] = [
    ("route_table", route_table),
    ("router_match", router_match),
    ("normalize_path", normalize),
    ("admin_body", admin_body),
    ("jwt", jwt),
    ("snapshot_decode", snapshot_decode),
    ("config_updates", config_updates),
];

/// The path normaliser: a normal form is absolute and normal already (normalising it again
/// changes nothing), with either treatment of `%2F`.
pub fn normalize(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for mode in [EncodedSlash::Keep, EncodedSlash::Reject] {
        if let Ok(normal) = normalize_path(path, mode) {
            assert!(normal.starts_with('/'), "{path:?} → {normal:?}");
            let again = normalize_path(&normal, mode);
            assert_eq!(
                again.as_deref().ok(),
                Some(&*normal),
                "{path:?} → {normal:?} is not a fixed point ({mode:?})"
            );
        }
    }
}

/// Admin API body validation: the first byte picks the kind, the rest is the JSON body. What
/// the model accepts has references, claims and redaction that do not panic.
pub fn admin_body(data: &[u8]) {
    let Some((&k, body)) = data.split_first() else {
        return;
    };
    let kind = ResourceKind::ALL[usize::from(k) % ResourceKind::ALL.len()];
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    if let Ok(resource) = Resource::parse(kind, &value) {
        let _ = resource.references();
        let _ = resource.claims();
        secrets::redact(kind, &mut value);
    }
}

/// A snapshot as a data plane receives it: protobuf decode, then the data plane's compile (the
/// same as a NACK-or-apply on a real DP); what compiles routes every route's own path. The same
/// bytes are tried as a packed snapshot's frame too: refused or unpacked, never a panic (a
/// frame that claims more than the limit is refused before anything is allocated).
pub fn snapshot_decode(data: &[u8]) {
    let packed = postern_proto::sync::PackedSnapshot {
        zstd: data.to_vec().into(),
        nonce: String::new(),
    };
    let _ = postern_proto::packing::unpack(packed, 1 << 20);
    let Ok(snapshot) = postern_proto::sync::Snapshot::decode(data) else {
        return;
    };
    if let Ok(config) = postern_data_plane::compile::compile(&snapshot, None) {
        let method = http::Method::GET;
        for route in &config.routes {
            let found = config.router.find(&method, None, &format!("/{}", route.id));
            assert!(found.is_none_or(|i| i < config.routes.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::TARGETS;

    /// Every kept crash and every seed, through its target: none may panic any more.
    #[test]
    fn regressions_and_seeds_replay_clean() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            for dir in ["regressions", "seeds"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.unwrap().path();
                    let data = std::fs::read(&path).unwrap();
                    println!("{name}: {}", path.display());
                    target(&data);
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
        println!("{replayed} inputs replayed");
    }
}
