//! Config stores: where the control plane keeps resources, the global revision and the history.
//!
//! Every backend (SQLite now; Postgres and etcd next) implements [`ConfigStore`] with the same
//! guarantees, checked by one conformance suite (`tests.rs`):
//! - a write is one transaction that bumps the single global revision, writes the resource,
//!   checks references and appends to the history — all or nothing;
//! - a rejected write (bad reference, failed precondition, resource in use) changes nothing and
//!   leaves the revision where it was;
//! - an acknowledged write is durable (it survives `kill -9` of the CP right after the answer);
//! - every committed revision is announced on [`ConfigStore::subscribe`].

mod etcd;
mod postgres;
mod sql;
mod sqlite;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use postern_proto::model::ResourceKind;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

pub use etcd::EtcdStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// One resource as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredResource {
    pub kind: ResourceKind,
    pub id: String,
    /// The body as accepted (Admin API shape), with `id` set to the resource's id.
    pub value: Value,
    /// Revision that created it.
    pub create_revision: u64,
    /// Revision of its latest change; `If-Match` compares against this.
    pub mod_revision: u64,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// A reference from the resource being written to another resource (checked in the write's
/// transaction, so a concurrent delete cannot leave it dangling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedReference {
    /// The referencing field, for the error message (`upstream_id`).
    pub field: &'static str,
    pub kind: ResourceKind,
    pub id: String,
}

/// A credential the resource being written holds, which no other resource may hold (a consumer's
/// jwt-auth or key-auth key). Checked and recorded in the write's transaction, like references,
/// so two concurrent writers cannot both claim it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedClaim {
    /// The credential plugin (`jwt-auth`): values are unique per plugin.
    pub plugin: &'static str,
    /// The body field that holds it, for the error message (`plugins.jwt-auth.key`).
    pub field: &'static str,
    /// SHA-256 of the value, hex: key-auth keys are secrets, so stores index only digests.
    pub digest: String,
}

impl OwnedClaim {
    pub fn new(plugin: &'static str, field: &'static str, value: &str) -> OwnedClaim {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(value.as_bytes());
        OwnedClaim {
            plugin,
            field,
            digest: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// What a write must find before it applies (`If-Match` and POST's create-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    #[default]
    None,
    /// The resource must not exist yet (POST with a generated id).
    MustNotExist,
    /// The resource must exist with exactly this `mod_revision` (`If-Match: <revision>`).
    ModRevision(u64),
}

#[derive(Debug, Clone)]
pub struct PutRequest {
    pub kind: ResourceKind,
    pub id: String,
    pub value: Value,
    pub references: Vec<OwnedReference>,
    /// Credentials this resource holds (empty for every kind but consumers).
    pub claims: Vec<OwnedClaim>,
    pub precondition: Precondition,
    /// Who wrote it (admin key name), recorded in the history.
    pub actor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub kind: ResourceKind,
    pub id: String,
    pub precondition: Precondition,
    pub actor: Option<String>,
}

/// The result of an accepted write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// The global revision this write created.
    pub revision: u64,
    /// The resource after a put; before, for a delete.
    pub resource: StoredResource,
    /// A put that created the resource (201) rather than replaced it (200).
    pub created: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryOp {
    Put,
    Delete,
}

/// One accepted write, as the history table records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub revision: u64,
    /// Unix seconds.
    pub at: i64,
    pub kind: ResourceKind,
    pub id: String,
    pub op: HistoryOp,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub actor: Option<String>,
}

/// Everything in the store at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSnapshot {
    /// Random per store, fixed at its creation (see `ConfigStore::store_id`).
    pub store_id: String,
    pub revision: u64,
    /// All resources, ordered by kind (dependency order) then id (see [`sort_resources`]).
    pub resources: Vec<StoredResource>,
}

/// What changed in a store after one revision: enough to bring a copy of the store at that
/// revision up to `revision` without reading every resource again.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreChanges {
    pub store_id: String,
    pub revision: u64,
    /// Resources created or updated after the revision, as they are at `revision`.
    pub changed: Vec<StoredResource>,
    /// Keys of resources deleted after the revision; one deleted and created again is also in
    /// `changed`.
    pub deleted: Vec<(ResourceKind, String)>,
    /// How many resources the store holds at `revision`: a check that the changes account for
    /// every write (a write the history missed would show as a count that does not add up).
    pub count: u64,
}

impl StoreChanges {
    /// `resources` (the store at the revision these changes start from, as
    /// [`sort_resources`] orders them) with the changes applied; unchanged resources are shared,
    /// not copied. `None` when the result does not hold `count` resources.
    pub fn apply_to(self, resources: &[Arc<StoredResource>]) -> Option<Vec<Arc<StoredResource>>> {
        let touched: std::collections::HashSet<(ResourceKind, &str), foldhash::fast::RandomState> =
            self.changed
                .iter()
                .map(|r| (r.kind, r.id.as_str()))
                .chain(self.deleted.iter().map(|(kind, id)| (*kind, id.as_str())))
                .collect();
        let mut out: Vec<Arc<StoredResource>> = resources
            .iter()
            .filter(|r| !touched.contains(&(r.kind, r.id.as_str())))
            .cloned()
            .collect();
        drop(touched);
        out.extend(self.changed.into_iter().map(Arc::new));
        sort_resources(&mut out);
        (u64::try_from(out.len()).ok() == Some(self.count)).then_some(out)
    }
}

/// The order every store lists a whole config in: by kind (dependency order), then by id as
/// bytes (not a database collation, so every backend and an incremental read agree).
pub fn sort_resources<R: std::borrow::Borrow<StoredResource>>(resources: &mut [R]) {
    resources.sort_by(|a, b| {
        let (a, b) = (a.borrow(), b.borrow());
        (a.kind, a.id.as_str()).cmp(&(b.kind, b.id.as_str()))
    });
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind}/{id} not found")]
    NotFound { kind: ResourceKind, id: String },
    #[error("{kind}/{id} already exists")]
    AlreadyExists { kind: ResourceKind, id: String },
    #[error("{kind}/{id} has mod_revision {actual:?}, not the expected {expected}")]
    PreconditionFailed {
        kind: ResourceKind,
        id: String,
        expected: u64,
        /// `None` when the resource does not exist.
        actual: Option<u64>,
    },
    #[error("{field} references {kind} '{id}' which does not exist")]
    DanglingReference {
        field: &'static str,
        kind: ResourceKind,
        id: String,
    },
    #[error("{kind}/{id} is still used by {}", used_by.join(", "))]
    InUse {
        kind: ResourceKind,
        id: String,
        /// `kind/id` of (some of) the resources that reference it.
        used_by: Vec<String>,
    },
    /// Another resource already holds this credential; the Admin API answers 409.
    #[error("{field}: this {plugin} credential already belongs to {holder}")]
    CredentialTaken {
        field: &'static str,
        plugin: &'static str,
        /// `kind/id` of the resource that holds it.
        holder: String,
    },
    /// The backend cannot be reached or failed; the Admin API answers 503.
    #[error("config store unavailable: {0}")]
    Unavailable(String),
    /// A whole-config replace expected another global revision (`If-Match` on `PUT /admin/config`).
    #[error("the config is at revision {actual}, not the expected {expected}")]
    RevisionMismatch { expected: u64, actual: u64 },
    /// Stored data that cannot be read back (corruption, manual edits).
    #[error("config store returned bad data: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One resource of a whole configuration given to [`ConfigStore::replace_all`].
#[derive(Debug, Clone)]
pub struct ReplaceItem {
    pub kind: ResourceKind,
    pub id: String,
    pub value: Value,
    pub references: Vec<OwnedReference>,
    /// The credentials it holds (unique across the whole set: checked by the caller with
    /// `ConfigSet::check_references`, and by the store against nothing else, since the set
    /// replaces everything).
    pub claims: Vec<OwnedClaim>,
}

/// Make the store hold exactly `resources` (`PUT /admin/config`: restore, apply, rollback).
#[derive(Debug, Clone, Default)]
pub struct ReplaceRequest {
    pub resources: Vec<ReplaceItem>,
    /// Refuse unless the global revision is exactly this (`If-Match`).
    pub expected_revision: Option<u64>,
    pub actor: Option<String>,
}

/// What a replace changed. The whole replace is one new revision: every change is a history row
/// of that revision (in the order applied), all committed in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplaceOutcome {
    /// The global revision after the replace (unchanged when nothing differed).
    pub revision: u64,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
}

/// The writes that turn `current` into `req.resources`: creates and updates in dependency order,
/// then deletes in reverse dependency order; unchanged resources are left alone. Fails if a
/// resource references one that is not in the new configuration.
pub(super) fn plan_replace(
    current: &[StoredResource],
    req: &ReplaceRequest,
) -> StoreResult<(Vec<Write>, ReplaceOutcome)> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut desired: BTreeMap<(ResourceKind, &str), &ReplaceItem> = BTreeMap::new();
    for item in &req.resources {
        if desired.insert((item.kind, &item.id), item).is_some() {
            return Err(StoreError::AlreadyExists {
                kind: item.kind,
                id: item.id.clone(),
            });
        }
    }
    for item in &req.resources {
        if let Some(r) = item
            .references
            .iter()
            .find(|r| !desired.contains_key(&(r.kind, r.id.as_str())))
        {
            return Err(StoreError::DanglingReference {
                field: r.field,
                kind: r.kind,
                id: r.id.clone(),
            });
        }
    }
    let live: BTreeMap<(ResourceKind, &str), &StoredResource> = current
        .iter()
        .map(|r| ((r.kind, r.id.as_str()), r))
        .collect();
    let mut outcome = ReplaceOutcome {
        revision: 0,
        created: 0,
        updated: 0,
        deleted: 0,
    };
    let mut writes = Vec::new();
    for kind in ResourceKind::ALL {
        for ((_, id), item) in desired
            .range((kind, "")..)
            .take_while(|((k, _), _)| *k == kind)
        {
            let mut value = item.value.clone();
            if let Value::Object(map) = &mut value {
                map.insert("id".to_string(), Value::String(id.to_string()));
            }
            match live.get(&(kind, *id)) {
                Some(cur) if cur.value == value => continue,
                Some(_) => outcome.updated += 1,
                None => outcome.created += 1,
            }
            writes.push(Write::Put(PutRequest {
                kind,
                id: id.to_string(),
                value,
                references: item.references.clone(),
                claims: item.claims.clone(),
                precondition: Precondition::None,
                actor: req.actor.clone(),
            }));
        }
    }
    let keep: BTreeSet<(ResourceKind, &str)> = desired.keys().copied().collect();
    for kind in ResourceKind::ALL.iter().rev() {
        for r in current.iter().filter(|r| r.kind == *kind) {
            if !keep.contains(&(r.kind, r.id.as_str())) {
                outcome.deleted += 1;
                writes.push(Write::Delete(DeleteRequest {
                    kind: r.kind,
                    id: r.id.clone(),
                    precondition: Precondition::None,
                    actor: req.actor.clone(),
                }));
            }
        }
    }
    Ok((writes, outcome))
}

/// The revision a write takes. A single write moves the global revision by one; the writes of
/// one replace all take the one revision the replace moved to, each as the next row (`seq`) of
/// that revision's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteRevision {
    Next,
    Shared { revision: u64, at: i64, seq: u32 },
}

/// One write, for backends that run puts and deletes through the same transaction wrapper.
pub(super) enum Write {
    Put(PutRequest),
    Delete(DeleteRequest),
}

/// Runs a write on its own task: if the caller is dropped mid-way (client gone), the write still
/// either commits and is announced, or does not happen — it never commits unannounced.
pub(super) async fn run_detached<Fut>(write: Fut) -> StoreResult<WriteOutcome>
where
    Fut: std::future::Future<Output = StoreResult<WriteOutcome>> + Send + 'static,
{
    match tokio::spawn(write).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Unavailable(format!("write task failed: {e}"))),
    }
}

/// A config store backend. All methods are safe to call concurrently.
#[async_trait]
pub trait ConfigStore: Send + Sync + 'static {
    /// A short name for logs and `/admin/status` (`sqlite`, `postgres`, `etcd`).
    fn backend(&self) -> &'static str;

    /// The current global revision (0 for an empty, never written store).
    async fn revision(&self) -> StoreResult<u64>;

    /// A random id fixed when the store was created. If it changes under a running control plane,
    /// the store was wiped or replaced (revisions may have gone back), which the CP reports
    /// instead of pushing "everything deleted" to data planes.
    async fn store_id(&self) -> StoreResult<String>;

    async fn get(&self, kind: ResourceKind, id: &str) -> StoreResult<Option<StoredResource>>;

    /// All resources of one kind, ordered by id.
    async fn list(&self, kind: ResourceKind) -> StoreResult<Vec<StoredResource>>;

    /// Every resource, read in one consistent transaction, with the revision it reflects.
    async fn snapshot(&self) -> StoreResult<StoreSnapshot>;

    /// What changed after revision `after`, read in one consistent transaction like
    /// [`ConfigStore::snapshot`]: for a reader that holds the store at `after` and wants it at
    /// the current revision without reading every resource. `None` when this store cannot tell
    /// (the default; etcd when its history does not reach back to `after`). SQLite answers the
    /// revision after its own last write's from what that write recorded, without reading:
    /// current unless another process wrote to the file since, which the builder's periodic
    /// re-read then picks up, as it would a write just after the read.
    async fn changes_since(&self, after: u64) -> StoreResult<Option<StoreChanges>> {
        let _ = after;
        Ok(None)
    }

    /// Creates or replaces a resource (see the module docs for the guarantees).
    async fn put(&self, req: PutRequest) -> StoreResult<WriteOutcome>;

    /// Deletes a resource; fails with `InUse` while others reference it.
    async fn delete(&self, req: DeleteRequest) -> StoreResult<WriteOutcome>;

    /// Makes the store hold exactly the given resources, in one transaction: all or nothing.
    async fn replace_all(&self, req: ReplaceRequest) -> StoreResult<ReplaceOutcome>;

    /// History entries with `revision > after`, oldest first: at most `limit`, except that a
    /// page never splits a revision (a replace writes several rows under one revision), so the
    /// last revision of a page comes whole and `after = <its revision>` fetches the next page.
    async fn history(&self, after: u64, limit: u32) -> StoreResult<Vec<HistoryEntry>>;

    /// Announces every committed revision (latest wins; a slow reader sees only the newest).
    fn subscribe(&self) -> watch::Receiver<u64>;
}
