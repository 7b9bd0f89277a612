//! The conformance suite every [`ConfigStore`] backend must pass.
//!
//! Each `pub(super)` async function takes a fresh, empty store and checks one guarantee of the
//! trait, so another backend runs the same suite by calling them with its own store (see the
//! `sqlite` module at the bottom for the wiring).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_proto::model::ResourceKind;
use serde_json::{Value, json};

use super::{
    ConfigStore, DeleteRequest, HistoryEntry, HistoryOp, OwnedReference, Precondition, PutRequest,
    StoreError, StoreSnapshot, StoredResource, WriteOutcome,
};

const UP: ResourceKind = ResourceKind::Upstreams;
const SVC: ResourceKind = ResourceKind::Services;
const ROUTE: ResourceKind = ResourceKind::Routes;

/// How long a test waits for something that should be immediate.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers

fn put_req(kind: ResourceKind, id: &str, value: Value) -> PutRequest {
    PutRequest {
        kind,
        id: id.to_string(),
        value,
        references: Vec::new(),
        precondition: Precondition::None,
        actor: None,
    }
}

fn del_req(kind: ResourceKind, id: &str) -> DeleteRequest {
    DeleteRequest {
        kind,
        id: id.to_string(),
        precondition: Precondition::None,
        actor: None,
    }
}

fn reference(field: &'static str, kind: ResourceKind, id: &str) -> OwnedReference {
    OwnedReference {
        field,
        kind,
        id: id.to_string(),
    }
}

/// `value` with `"id"` set, as the store must return it.
fn with_id(mut value: Value, id: &str) -> Value {
    value
        .as_object_mut()
        .expect("test bodies are objects")
        .insert("id".to_string(), json!(id));
    value
}

async fn put_ok(store: &dyn ConfigStore, req: PutRequest) -> WriteOutcome {
    let what = format!("{}/{}", req.kind, req.id);
    match store.put(req).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("put {what} was rejected: {e:?}"),
    }
}

async fn delete_ok(store: &dyn ConfigStore, req: DeleteRequest) -> WriteOutcome {
    let what = format!("{}/{}", req.kind, req.id);
    match store.delete(req).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("delete {what} was rejected: {e:?}"),
    }
}

async fn put_err(store: &dyn ConfigStore, req: PutRequest) -> StoreError {
    let what = format!("{}/{}", req.kind, req.id);
    match store.put(req).await {
        Ok(outcome) => panic!("put {what} should have been rejected, got {outcome:?}"),
        Err(e) => e,
    }
}

async fn delete_err(store: &dyn ConfigStore, req: DeleteRequest) -> StoreError {
    let what = format!("{}/{}", req.kind, req.id);
    match store.delete(req).await {
        Ok(outcome) => panic!("delete {what} should have been rejected, got {outcome:?}"),
        Err(e) => e,
    }
}

async fn revision(store: &dyn ConfigStore) -> u64 {
    store.revision().await.expect("revision")
}

async fn all_history(store: &dyn ConfigStore) -> Vec<HistoryEntry> {
    store.history(0, u32::MAX).await.expect("history")
}

/// Everything observable about a store, to show that a rejected write changed nothing.
async fn observe(store: &dyn ConfigStore) -> (u64, StoreSnapshot, Vec<HistoryEntry>) {
    let snapshot = store.snapshot().await.expect("snapshot");
    (revision(store).await, snapshot, all_history(store).await)
}

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("sane clock")
}

fn ids(resources: &[StoredResource]) -> Vec<(ResourceKind, &str)> {
    resources.iter().map(|r| (r.kind, r.id.as_str())).collect()
}

// ---------------------------------------------------------------------------------------------
// Conformance functions

/// Create, read, list (ordered by id, per kind), replace and delete.
pub(super) async fn crud_and_ordering(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    assert_eq!(revision(s).await, 0, "a new store starts at revision 0");
    assert_eq!(s.get(UP, "a").await.expect("get"), None);
    assert!(s.list(UP).await.expect("list").is_empty());
    assert!(all_history(s).await.is_empty());

    for id in ["b", "c", "a"] {
        put_ok(s, put_req(UP, id, json!({"name": format!("up-{id}")}))).await;
    }
    // A body naming another id is stored under the resource's own id.
    let svc = put_ok(s, put_req(SVC, "s", json!({"id": "other", "x": 1}))).await;
    assert_eq!(svc.resource.value, json!({"id": "s", "x": 1}));

    let ups = s.list(UP).await.expect("list");
    assert_eq!(ids(&ups), vec![(UP, "a"), (UP, "b"), (UP, "c")]);
    for r in &ups {
        assert_eq!(
            r.value,
            with_id(json!({"name": format!("up-{}", r.id)}), &r.id)
        );
    }
    assert_eq!(ids(&s.list(SVC).await.expect("list")), vec![(SVC, "s")]);
    assert!(s.list(ROUTE).await.expect("list").is_empty());

    let b = s.get(UP, "b").await.expect("get").expect("b exists");
    assert_eq!(b, ups[1]);
    assert_eq!(
        s.get(SVC, "b").await.expect("get"),
        None,
        "kinds are separate"
    );

    let replaced = put_ok(s, put_req(UP, "b", json!({"name": "new"}))).await;
    assert_eq!(replaced.resource.value, json!({"name": "new", "id": "b"}));
    assert_eq!(
        s.get(UP, "b").await.expect("get"),
        Some(replaced.resource.clone())
    );

    let deleted = delete_ok(s, del_req(UP, "b")).await;
    assert_eq!(
        deleted.resource, replaced.resource,
        "a delete returns the old resource"
    );
    assert!(!deleted.created);
    assert_eq!(s.get(UP, "b").await.expect("get"), None);
    assert_eq!(
        ids(&s.list(UP).await.expect("list")),
        vec![(UP, "a"), (UP, "c")]
    );

    let err = delete_err(s, del_req(UP, "b")).await;
    assert!(
        matches!(&err, StoreError::NotFound { kind: UP, id } if id == "b"),
        "{err:?}"
    );
}

/// Every accepted write bumps the revision by exactly one; every rejected write leaves the
/// revision, the resources and the history untouched.
pub(super) async fn revision_moves_only_on_accepted_writes(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    let mut expected = 0;
    let accepted = |outcome: WriteOutcome, expected: &mut u64| {
        *expected += 1;
        assert_eq!(
            outcome.revision, *expected,
            "one bump per write: {outcome:?}"
        );
    };
    accepted(put_ok(s, put_req(UP, "u", json!({}))).await, &mut expected);
    accepted(
        put_ok(s, put_req(UP, "u", json!({"v": 2}))).await,
        &mut expected,
    );
    let mut route = put_req(ROUTE, "r", json!({}));
    route.references = vec![reference("upstream_id", UP, "u")];
    accepted(put_ok(s, route).await, &mut expected);
    accepted(
        put_ok(s, put_req(UP, "gone", json!({}))).await,
        &mut expected,
    );
    accepted(delete_ok(s, del_req(UP, "gone")).await, &mut expected);
    assert_eq!(revision(s).await, expected);

    let before = observe(s).await;
    let mut create_only = put_req(UP, "u", json!({"v": 3}));
    create_only.precondition = Precondition::MustNotExist;
    put_err(s, create_only).await;
    let mut stale = put_req(UP, "u", json!({"v": 3}));
    stale.precondition = Precondition::ModRevision(1);
    put_err(s, stale).await;
    let mut absent = put_req(UP, "nope", json!({}));
    absent.precondition = Precondition::ModRevision(2);
    put_err(s, absent).await;
    // Passes its precondition, then fails on the reference: nothing of it may remain.
    let mut dangling = put_req(ROUTE, "r", json!({"v": 3}));
    dangling.precondition = Precondition::ModRevision(3);
    dangling.references = vec![reference("upstream_id", UP, "missing")];
    put_err(s, dangling).await;
    delete_err(s, del_req(UP, "u")).await; // in use by routes/r
    delete_err(s, del_req(UP, "missing")).await;
    let mut stale_delete = del_req(ROUTE, "r");
    stale_delete.precondition = Precondition::ModRevision(1);
    delete_err(s, stale_delete).await;
    assert_eq!(
        observe(s).await,
        before,
        "rejected writes changed the store"
    );

    // The failed re-point above must not have cleared r's reference to u either.
    delete_err(s, del_req(UP, "u")).await;
    accepted(put_ok(s, put_req(UP, "u2", json!({}))).await, &mut expected);
    assert_eq!(revision(s).await, expected);
}

/// `created` tells a create from a replace; a replace keeps `create_revision` and `created_at`.
pub(super) async fn create_versus_replace(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    let t0 = unix_now();
    let first = put_ok(s, put_req(SVC, "s", json!({"a": 1, "old": true}))).await;
    assert!(first.created);
    assert_eq!(first.resource.create_revision, first.revision);
    assert_eq!(first.resource.mod_revision, first.revision);
    assert!(first.resource.created_at >= t0 && first.resource.created_at <= unix_now());
    assert_eq!(first.resource.updated_at, first.resource.created_at);

    put_ok(s, put_req(UP, "unrelated", json!({}))).await;
    let second = put_ok(s, put_req(SVC, "s", json!({"a": 2}))).await;
    assert!(!second.created, "replacing is not creating");
    assert_eq!(second.revision, first.revision + 2);
    assert_eq!(second.resource.create_revision, first.revision);
    assert_eq!(second.resource.mod_revision, second.revision);
    assert_eq!(second.resource.created_at, first.resource.created_at);
    assert!(second.resource.updated_at >= first.resource.updated_at);
    // A replace is whole: fields missing from the new body are gone.
    assert_eq!(second.resource.value, json!({"a": 2, "id": "s"}));
    assert_eq!(
        s.get(SVC, "s").await.expect("get"),
        Some(second.resource.clone())
    );

    // Deleting and creating again starts a new life.
    delete_ok(s, del_req(SVC, "s")).await;
    let third = put_ok(s, put_req(SVC, "s", json!({"a": 3}))).await;
    assert!(third.created);
    assert_eq!(third.resource.create_revision, third.revision);
}

/// `MustNotExist` and `ModRevision` on puts and deletes.
pub(super) async fn preconditions(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    let mut create = put_req(UP, "u", json!({"v": 1}));
    create.precondition = Precondition::MustNotExist;
    let created = put_ok(s, create.clone()).await;
    assert!(created.created);

    let err = put_err(s, create).await;
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind: UP, id } if id == "u"),
        "{err:?}"
    );

    let mut matching = put_req(UP, "u", json!({"v": 2}));
    matching.precondition = Precondition::ModRevision(created.revision);
    let updated = put_ok(s, matching).await;
    assert!(!updated.created);

    let mut stale = put_req(UP, "u", json!({"v": 3}));
    stale.precondition = Precondition::ModRevision(created.revision);
    let err = put_err(s, stale).await;
    match &err {
        StoreError::PreconditionFailed {
            kind: UP,
            id,
            expected,
            actual,
        } => {
            assert_eq!(id, "u");
            assert_eq!(*expected, created.revision);
            assert_eq!(*actual, Some(updated.revision));
        }
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
    assert_eq!(
        s.get(UP, "u").await.expect("get").map(|r| r.value),
        Some(json!({"v": 2, "id": "u"}))
    );

    let mut absent = put_req(UP, "nope", json!({}));
    absent.precondition = Precondition::ModRevision(updated.revision);
    let err = put_err(s, absent).await;
    assert!(
        matches!(&err, StoreError::PreconditionFailed { kind: UP, id, actual: None, .. } if id == "nope"),
        "{err:?}"
    );
    assert_eq!(
        s.get(UP, "nope").await.expect("get"),
        None,
        "If-Match never creates"
    );

    let mut stale_delete = del_req(UP, "u");
    stale_delete.precondition = Precondition::ModRevision(created.revision);
    let err = delete_err(s, stale_delete).await;
    assert!(
        matches!(&err, StoreError::PreconditionFailed { actual: Some(a), .. } if *a == updated.revision),
        "{err:?}"
    );
    assert!(s.get(UP, "u").await.expect("get").is_some());

    let mut absent_delete = del_req(UP, "nope");
    absent_delete.precondition = Precondition::ModRevision(1);
    let err = delete_err(s, absent_delete).await;
    assert!(
        matches!(
            &err,
            StoreError::PreconditionFailed {
                actual: None,
                expected: 1,
                ..
            }
        ),
        "{err:?}"
    );

    let mut delete = del_req(UP, "u");
    delete.precondition = Precondition::ModRevision(updated.revision);
    delete_ok(s, delete).await;
    assert_eq!(s.get(UP, "u").await.expect("get"), None);
}

/// A reference to a missing resource rejects the write and names the field.
pub(super) async fn dangling_reference_rejected(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    let route = |refs: Vec<OwnedReference>| {
        let mut req = put_req(ROUTE, "r", json!({"uri": "/"}));
        req.references = refs;
        req
    };
    let err = put_err(s, route(vec![reference("upstream_id", UP, "u")])).await;
    match &err {
        StoreError::DanglingReference { field, kind, id } => {
            assert_eq!(*field, "upstream_id");
            assert_eq!(*kind, UP);
            assert_eq!(id, "u");
        }
        other => panic!("expected DanglingReference, got {other:?}"),
    }
    assert_eq!(s.get(ROUTE, "r").await.expect("get"), None);
    assert_eq!(revision(s).await, 0);

    // Same id, other kind: still dangling.
    put_ok(s, put_req(SVC, "u", json!({}))).await;
    let err = put_err(s, route(vec![reference("upstream_id", UP, "u")])).await;
    assert!(
        matches!(&err, StoreError::DanglingReference { .. }),
        "{err:?}"
    );

    put_ok(s, put_req(UP, "u", json!({}))).await;
    // The second reference is the bad one: it is still reported.
    let err = put_err(
        s,
        route(vec![
            reference("upstream_id", UP, "u"),
            reference("service_id", SVC, "missing"),
        ]),
    )
    .await;
    assert!(
        matches!(&err, StoreError::DanglingReference { field: "service_id", kind: SVC, id } if id == "missing"),
        "{err:?}"
    );
    let ok = put_ok(s, route(vec![reference("upstream_id", UP, "u")])).await;
    assert!(ok.created);
}

/// Deleting a referenced resource fails with `InUse` until every referrer is gone or re-pointed.
pub(super) async fn delete_in_use(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    for id in ["u1", "u2"] {
        put_ok(s, put_req(UP, id, json!({}))).await;
    }
    let mut svc = put_req(SVC, "s1", json!({}));
    svc.references = vec![reference("upstream_id", UP, "u1")];
    put_ok(s, svc).await;
    let mut route = put_req(ROUTE, "r1", json!({}));
    route.references = vec![
        reference("upstream_id", UP, "u1"),
        reference("service_id", SVC, "s1"),
    ];
    put_ok(s, route).await;

    let used_by = |err: StoreError| match err {
        StoreError::InUse { used_by, .. } => used_by.into_iter().collect::<BTreeSet<_>>(),
        other => panic!("expected InUse, got {other:?}"),
    };
    let err = delete_err(s, del_req(UP, "u1")).await;
    assert!(
        matches!(&err, StoreError::InUse { kind: UP, id, .. } if id == "u1"),
        "{err:?}"
    );
    assert_eq!(
        used_by(err),
        BTreeSet::from(["routes/r1".to_string(), "services/s1".to_string()])
    );
    assert_eq!(
        used_by(delete_err(s, del_req(SVC, "s1")).await),
        BTreeSet::from(["routes/r1".to_string()])
    );

    // Re-point r1 at u2 only: its rows for u1 and s1 must go.
    let mut repoint = put_req(ROUTE, "r1", json!({}));
    repoint.references = vec![reference("upstream_id", UP, "u2")];
    put_ok(s, repoint).await;
    delete_ok(s, del_req(SVC, "s1")).await;
    delete_ok(s, del_req(UP, "u1")).await;

    assert_eq!(
        used_by(delete_err(s, del_req(UP, "u2")).await),
        BTreeSet::from(["routes/r1".to_string()])
    );
    delete_ok(s, del_req(ROUTE, "r1")).await;
    delete_ok(s, del_req(UP, "u2")).await;

    // Many referrers: the error names some (at most 10), all real.
    put_ok(s, put_req(UP, "hub", json!({}))).await;
    let mut referrers = BTreeSet::new();
    for i in 0..12 {
        let mut r = put_req(ROUTE, &format!("r{i:02}"), json!({}));
        r.references = vec![reference("upstream_id", UP, "hub")];
        put_ok(s, r).await;
        referrers.insert(format!("routes/r{i:02}"));
    }
    let named = used_by(delete_err(s, del_req(UP, "hub")).await);
    assert!(!named.is_empty() && named.len() <= 10, "{named:?}");
    assert!(named.is_subset(&referrers), "{named:?}");
}

/// The history records each accepted write with its op, bodies before/after and actor.
pub(super) async fn history_entries(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    let t0 = unix_now();
    let mut create = put_req(UP, "u", json!({"v": 1}));
    create.actor = Some("alice".to_string());
    let r1 = put_ok(s, create).await.revision;
    let r2 = put_ok(s, put_req(UP, "u", json!({"v": 2}))).await.revision;
    // Rejected: no entry.
    put_err(s, {
        let mut r = put_req(UP, "u", json!({"v": 9}));
        r.precondition = Precondition::MustNotExist;
        r
    })
    .await;
    let mut delete = del_req(UP, "u");
    delete.actor = Some("bob".to_string());
    let r3 = delete_ok(s, delete).await.revision;
    let t1 = unix_now();

    let history = all_history(s).await;
    let stripped: Vec<_> = history
        .iter()
        .map(|h| HistoryEntry { at: 0, ..h.clone() })
        .collect();
    assert_eq!(
        stripped,
        vec![
            HistoryEntry {
                revision: r1,
                at: 0,
                kind: UP,
                id: "u".into(),
                op: HistoryOp::Put,
                before: None,
                after: Some(json!({"v": 1, "id": "u"})),
                actor: Some("alice".into()),
            },
            HistoryEntry {
                revision: r2,
                at: 0,
                kind: UP,
                id: "u".into(),
                op: HistoryOp::Put,
                before: Some(json!({"v": 1, "id": "u"})),
                after: Some(json!({"v": 2, "id": "u"})),
                actor: None,
            },
            HistoryEntry {
                revision: r3,
                at: 0,
                kind: UP,
                id: "u".into(),
                op: HistoryOp::Delete,
                before: Some(json!({"v": 2, "id": "u"})),
                after: None,
                actor: Some("bob".into()),
            },
        ]
    );
    for h in &history {
        assert!(h.at >= t0 && h.at <= t1, "{h:?} not within [{t0}, {t1}]");
    }

    // Paging: strictly after `after`, at most `limit`, oldest first.
    let page = s.history(r1, 1).await.expect("history");
    assert_eq!(page.iter().map(|h| h.revision).collect::<Vec<_>>(), [r2]);
    let rest = s.history(r2, 10).await.expect("history");
    assert_eq!(rest.iter().map(|h| h.revision).collect::<Vec<_>>(), [r3]);
    assert!(s.history(r3, 10).await.expect("history").is_empty());
    assert!(s.history(0, 0).await.expect("history").is_empty());
    assert!(s.history(u64::MAX, 10).await.expect("history").is_empty());
}

/// A snapshot holds every resource in dependency order then id, at the revision it reports.
pub(super) async fn snapshot_consistency(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    let empty = s.snapshot().await.expect("snapshot");
    assert_eq!(empty.revision, 0);
    assert!(empty.resources.is_empty());

    // Written out of order, and ids that sort differently across kinds.
    put_ok(s, put_req(ROUTE, "b", json!({}))).await;
    put_ok(s, put_req(ROUTE, "a", json!({}))).await;
    put_ok(s, put_req(SVC, "z", json!({}))).await;
    put_ok(s, put_req(UP, "y", json!({}))).await;
    put_ok(s, put_req(UP, "x", json!({}))).await;
    put_ok(s, put_req(SVC, "a", json!({}))).await;
    delete_ok(s, del_req(SVC, "a")).await;

    let snap = s.snapshot().await.expect("snapshot");
    assert_eq!(snap.revision, 7);
    assert_eq!(snap.revision, revision(s).await);
    assert_eq!(
        ids(&snap.resources),
        vec![(UP, "x"), (UP, "y"), (SVC, "z"), (ROUTE, "a"), (ROUTE, "b")]
    );
    let mut listed = Vec::new();
    for kind in ResourceKind::ALL {
        listed.extend(s.list(kind).await.expect("list"));
    }
    assert_eq!(snap.resources, listed);
}

/// Snapshots taken while writes land are never torn: the resources match the revision.
pub(super) async fn snapshot_under_concurrent_writes(store: Arc<dyn ConfigStore>) {
    const WRITES: u64 = 60;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            // Only creates, so at revision n there are exactly n resources.
            for i in 0..WRITES {
                put_ok(store.as_ref(), put_req(UP, &format!("u{i:03}"), json!({}))).await;
            }
        })
    };
    let mut last = 0;
    let mut taken = 0;
    loop {
        let done = writer.is_finished();
        let snap = store.snapshot().await.expect("snapshot");
        assert!(snap.revision >= last, "revisions go backwards");
        last = snap.revision;
        taken += 1;
        assert_eq!(
            snap.resources.len() as u64,
            snap.revision,
            "torn snapshot at revision {}",
            snap.revision
        );
        let mods: BTreeSet<u64> = snap.resources.iter().map(|r| r.mod_revision).collect();
        assert_eq!(mods, (1..=snap.revision).collect());
        if done {
            break;
        }
        tokio::task::yield_now().await;
    }
    writer.await.expect("writer");
    assert_eq!(last, WRITES);
    assert!(taken > 1);
}

/// `subscribe()` announces committed revisions, and only those.
pub(super) async fn subscribe_sees_revisions(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    let mut rx = s.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);

    let first = put_ok(s, put_req(UP, "u", json!({}))).await;
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("announced in time")
        .expect("sender alive");
    assert_eq!(*rx.borrow_and_update(), first.revision);

    let mut create_only = put_req(UP, "u", json!({}));
    create_only.precondition = Precondition::MustNotExist;
    put_err(s, create_only).await;
    delete_err(s, del_req(UP, "missing")).await;
    assert!(
        !rx.has_changed().expect("sender alive"),
        "a rejected write was announced"
    );

    // A slow reader sees the newest revision.
    put_ok(s, put_req(UP, "v", json!({}))).await;
    let last = delete_ok(s, del_req(UP, "v")).await;
    assert!(rx.has_changed().expect("sender alive"));
    assert_eq!(*rx.borrow_and_update(), last.revision);

    // A late subscriber starts at the current revision.
    assert_eq!(*s.subscribe().borrow(), last.revision);
}

/// Concurrent writers: every accepted write gets its own revision, with no gaps and no lost
/// history; conflicting creates let exactly one through.
pub(super) async fn concurrent_writers(store: Arc<dyn ConfigStore>) {
    const TASKS: usize = 20;
    const PUTS: usize = 10;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = store.as_ref();
                let mut accepted = Vec::new();
                for i in 0..PUTS {
                    let own =
                        put_ok(s, put_req(UP, &format!("w{t:02}-{i}"), json!({"t": t}))).await;
                    accepted.push((own.revision, own.resource.id));
                    // Everyone races for the same create-only id.
                    let mut shared = put_req(SVC, &format!("shared-{i}"), json!({"t": t}));
                    shared.precondition = Precondition::MustNotExist;
                    match s.put(shared).await {
                        Ok(o) => accepted.push((o.revision, o.resource.id)),
                        Err(StoreError::AlreadyExists { .. }) => {}
                        Err(e) => panic!("unexpected error: {e:?}"),
                    }
                }
                accepted
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.expect("writer task"));
    }
    accepted.sort();

    let n = accepted.len() as u64;
    assert_eq!(n, (TASKS * PUTS + PUTS) as u64);
    assert_eq!(
        accepted.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "revisions must be unique and gapless"
    );
    assert_eq!(revision(store.as_ref()).await, n);

    let history = all_history(store.as_ref()).await;
    assert_eq!(
        history
            .iter()
            .map(|h| (h.revision, h.id.clone()))
            .collect::<Vec<_>>(),
        accepted,
        "history must hold every accepted write under its revision"
    );
    // The stored shared-i is the one whose create was accepted.
    for h in history.iter().filter(|h| h.kind == SVC) {
        assert_eq!(h.op, HistoryOp::Put);
        assert_eq!(h.before, None, "{h:?}");
        let stored = store.get(SVC, &h.id).await.expect("get").expect("exists");
        assert_eq!(Some(stored.value), h.after);
    }
    assert_eq!(store.list(UP).await.expect("list").len(), TASKS * PUTS);
    assert_eq!(store.list(SVC).await.expect("list").len(), PUTS);
}

/// Everything survives closing and reopening the store: resources, refs, history, revision.
pub(super) async fn durability_across_reopen<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn ConfigStore>>,
{
    let store = open().await;
    let s = store.as_ref();
    put_ok(s, put_req(UP, "u", json!({"v": 1}))).await;
    put_ok(s, put_req(UP, "u", json!({"v": 2}))).await;
    let mut route = put_req(ROUTE, "r", json!({"uri": "/"}));
    route.references = vec![reference("upstream_id", UP, "u")];
    route.actor = Some("alice".to_string());
    put_ok(s, route).await;
    put_ok(s, put_req(SVC, "gone", json!({}))).await;
    delete_ok(s, del_req(SVC, "gone")).await;
    let before = observe(s).await;
    let id = s.store_id().await.expect("store_id");
    assert!(id.len() >= 16, "store ids are random and long: {id:?}");
    assert_eq!(before.1.store_id, id, "the snapshot carries the store id");
    drop(store);

    let store = open().await;
    let s = store.as_ref();
    assert_eq!(observe(s).await, before);
    assert_eq!(
        s.store_id().await.expect("store_id"),
        id,
        "the id survives a reopen"
    );
    assert_eq!(*s.subscribe().borrow(), before.0);
    // The refs survived too.
    let err = delete_err(s, del_req(UP, "u")).await;
    assert!(matches!(&err, StoreError::InUse { .. }), "{err:?}");
    let next = put_ok(s, put_req(UP, "w", json!({}))).await;
    assert_eq!(next.revision, before.0 + 1);
}

// ---------------------------------------------------------------------------------------------
// The suite against SQLite

mod sqlite {
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Command, Stdio};

    use sqlx::Row;

    use super::*;
    use crate::store::SqliteStore;

    async fn fresh() -> (tempfile::TempDir, Arc<dyn ConfigStore>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("config.db"))
            .await
            .expect("open");
        (dir, Arc::new(store))
    }

    macro_rules! conformance {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_dir, store) = fresh().await;
                super::$name(store).await;
            }
        )*};
    }

    conformance!(
        crud_and_ordering,
        revision_moves_only_on_accepted_writes,
        create_versus_replace,
        preconditions,
        dangling_reference_rejected,
        delete_in_use,
        history_entries,
        snapshot_consistency,
        snapshot_under_concurrent_writes,
        subscribe_sees_revisions,
        concurrent_writers,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durability_across_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.db");
        super::durability_across_reopen(|| async {
            let store = SqliteStore::open(&path).await.expect("open");
            Arc::new(store) as Arc<dyn ConfigStore>
        })
        .await;
    }

    #[tokio::test]
    async fn each_store_has_its_own_id() {
        let (_a, a) = fresh().await;
        let (_b, b) = fresh().await;
        assert_ne!(a.store_id().await.unwrap(), b.store_id().await.unwrap());
    }

    #[tokio::test]
    async fn open_creates_parent_dirs_and_sets_durable_pragmas() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a/b/config.db");
        let store = SqliteStore::open(&path).await.expect("open");
        assert!(path.is_file());
        assert_eq!(store.backend(), "sqlite");

        let mut conn = store.pool().acquire().await.expect("connection");
        let pragma = |name: &'static str| format!("PRAGMA {name}");
        let journal: String = sqlx::query_scalar(&pragma("journal_mode"))
            .fetch_one(&mut *conn)
            .await
            .expect("journal_mode");
        assert_eq!(journal, "wal");
        // 2 = FULL: the WAL is synced on every commit.
        let synchronous: i64 = sqlx::query_scalar(&pragma("synchronous"))
            .fetch_one(&mut *conn)
            .await
            .expect("synchronous");
        assert_eq!(synchronous, 2);
        let busy: i64 = sqlx::query_scalar(&pragma("busy_timeout"))
            .fetch_one(&mut *conn)
            .await
            .expect("busy_timeout");
        assert!(busy > 0);
    }

    #[tokio::test]
    async fn undecodable_rows_are_corrupt() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("config.db"))
            .await
            .expect("open");
        let insert = |kind: &'static str, id: &'static str, body: &'static str| {
            sqlx::query(
                "INSERT INTO resources \
                 (kind, id, body, create_revision, mod_revision, created_at, updated_at) \
                 VALUES (?, ?, ?, 1, 1, 0, 0)",
            )
            .bind(kind)
            .bind(id)
            .bind(body)
        };
        insert("upstreams", "bad-json", "{not json")
            .execute(store.pool())
            .await
            .expect("insert");
        let err = store.get(UP, "bad-json").await.expect_err("corrupt body");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        let err = store.list(UP).await.expect_err("corrupt body");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");

        sqlx::query("DELETE FROM resources")
            .execute(store.pool())
            .await
            .expect("delete");
        insert("gadgets", "g", "{}")
            .execute(store.pool())
            .await
            .expect("insert");
        let err = store.snapshot().await.expect_err("unknown kind");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");

        sqlx::query("UPDATE meta SET revision = 'seven'")
            .execute(store.pool())
            .await
            .expect("update");
        let err = store
            .revision()
            .await
            .expect_err("revision is not a number");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        // A write must not build on a bad revision either.
        let err = store
            .put(put_req(UP, "u", json!({})))
            .await
            .expect_err("bad revision");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    /// The durability promise itself: writes acknowledged by a process that then gets SIGKILLed
    /// are all there on reopen. The writer is this test binary, re-run as a child on
    /// [`kill9_child_writer`].
    #[test]
    fn acked_writes_survive_kill9() {
        const ACKS: usize = 40;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.db");
        let (_, this_module) = module_path!().split_once("::").expect("crate::path");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                &format!("{this_module}::kill9_child_writer"),
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            if let Some(id) = line.strip_prefix("acked ") {
                acked.push(id.to_string());
                if acked.len() == ACKS {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        assert_eq!(acked.len(), ACKS, "the child stopped early");

        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let store = SqliteStore::open(&path).await.expect("reopen");
            for id in &acked {
                assert!(
                    store.get(UP, id).await.expect("get").is_some(),
                    "acknowledged write {id} was lost"
                );
            }
            assert!(revision(&store).await >= ACKS as u64);
            let check: String = sqlx::query("PRAGMA integrity_check")
                .fetch_one(store.pool())
                .await
                .expect("integrity_check")
                .try_get(0)
                .expect("text");
            assert_eq!(check, "ok");
        });
    }

    const CHILD_DB_ENV: &str = "POSTERN_TEST_KILL9_DB";

    #[tokio::test]
    #[ignore = "child process of acked_writes_survive_kill9"]
    async fn kill9_child_writer() {
        let Some(path) = std::env::var_os(CHILD_DB_ENV) else {
            return;
        };
        let store = SqliteStore::open(Path::new(&path)).await.expect("open");
        // Writes until killed; the parent stops reading after enough acks.
        for i in 0..100_000 {
            let id = format!("u{i:05}");
            put_ok(&store, put_req(UP, &id, json!({"i": i}))).await;
            println!("acked {id}");
        }
    }
}
