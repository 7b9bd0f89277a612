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
    ConfigStore, DeleteRequest, HistoryEntry, HistoryOp, OwnedClaim, OwnedReference, Precondition,
    PutRequest, ReplaceItem, ReplaceOutcome, ReplaceRequest, StoreError, StoreSnapshot,
    StoredResource, WriteOutcome,
};

const UP: ResourceKind = ResourceKind::Upstreams;
const SVC: ResourceKind = ResourceKind::Services;
const ROUTE: ResourceKind = ResourceKind::Routes;
const GLOBAL: ResourceKind = ResourceKind::GlobalRules;

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
        claims: Vec::new(),
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

fn item(kind: ResourceKind, id: &str, value: Value, refs: Vec<OwnedReference>) -> ReplaceItem {
    ReplaceItem {
        kind,
        id: id.to_string(),
        value,
        references: refs,
        claims: Vec::new(),
    }
}

/// `replace_all` keeps the credential index: the replaced set's credentials are exactly the ones
/// held afterwards, so a later put of the same credential by someone else is refused, and a key
/// moved from one consumer to another within one replace is free for its new holder.
pub(super) async fn replace_all_keeps_credentials(store: Arc<dyn ConfigStore>) {
    const CONSUMER: ResourceKind = ResourceKind::Consumers;
    let s = store.as_ref();
    // The key is in the body too, as in real consumers: a resource whose body is unchanged is
    // left alone by a replace.
    let consumer = |id: &str, key: &str| {
        let body = json!({"username": id, "plugins": {"key-auth": {"key": key}}});
        let mut it = item(CONSUMER, id, body, vec![]);
        it.claims = vec![OwnedClaim::new("key-auth", "plugins.key-auth.key", key)];
        it
    };
    let replace = |resources: Vec<ReplaceItem>| ReplaceRequest {
        resources,
        expected_revision: None,
        actor: None,
    };
    s.replace_all(replace(vec![consumer("a", "k1"), consumer("b", "k2")]))
        .await
        .expect("first replace");
    let mut taken = put_req(CONSUMER, "c", json!({"username": "c"}));
    taken.claims = vec![OwnedClaim::new("key-auth", "plugins.key-auth.key", "k1")];
    let err = put_err(s, taken).await;
    assert!(
        matches!(&err, StoreError::CredentialTaken { holder, .. } if holder == "consumers/a"),
        "{err:?}"
    );
    // k1 moves from a to c, b keeps k2, a goes away.
    s.replace_all(replace(vec![consumer("c", "k1"), consumer("b", "k2")]))
        .await
        .expect("second replace");
    let mut again = put_req(CONSUMER, "a", json!({"username": "a"}));
    again.claims = vec![OwnedClaim::new("key-auth", "plugins.key-auth.key", "k1")];
    let err = put_err(s, again).await;
    assert!(
        matches!(&err, StoreError::CredentialTaken { holder, .. } if holder == "consumers/c"),
        "{err:?}"
    );
    // Two consumers swap keys in one replace.
    s.replace_all(replace(vec![consumer("c", "k2"), consumer("b", "k1")]))
        .await
        .expect("swap");
    let mut swapped = put_req(CONSUMER, "z", json!({"username": "z"}));
    swapped.claims = vec![OwnedClaim::new("key-auth", "plugins.key-auth.key", "k1")];
    let err = put_err(s, swapped).await;
    assert!(
        matches!(&err, StoreError::CredentialTaken { holder, .. } if holder == "consumers/b"),
        "{err:?}"
    );
    // Emptying the store frees everything.
    s.replace_all(replace(vec![])).await.expect("empty replace");
    let mut free = put_req(CONSUMER, "a", json!({"username": "a"}));
    free.claims = vec![OwnedClaim::new("key-auth", "plugins.key-auth.key", "k1")];
    put_ok(s, free).await;
}

/// `replace_all`: creates, updates and deletes so the store holds exactly the given set, in one
/// transaction; unchanged resources are untouched; a bad reference or a stale expected revision
/// changes nothing.
pub(super) async fn replace_all_is_all_or_nothing(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    let mut rx = s.subscribe();
    put_ok(s, put_req(UP, "u1", json!({"nodes": {"a:1": 1}}))).await;
    let mut svc = put_req(SVC, "s1", json!({"upstream_id": "u1"}));
    svc.references = vec![reference("upstream_id", UP, "u1")];
    put_ok(s, svc).await;
    put_ok(s, put_req(ROUTE, "old", json!({"uri": "/old"}))).await;
    let mut keep = put_req(ROUTE, "keep", json!({"uri": "/keep"}));
    keep.references = vec![reference("service_id", SVC, "s1")];
    put_ok(s, keep).await;
    let before = revision(s).await;
    let keep_before = s.get(ROUTE, "keep").await.unwrap().unwrap();

    let desired = ReplaceRequest {
        resources: vec![
            // Listed out of dependency order on purpose.
            item(
                ROUTE,
                "keep",
                json!({"uri": "/keep"}),
                vec![reference("service_id", SVC, "s1")],
            ),
            item(
                SVC,
                "s1",
                json!({"upstream_id": "u2"}),
                vec![reference("upstream_id", UP, "u2")],
            ),
            item(UP, "u2", json!({"nodes": {"b:1": 1}}), vec![]),
            item(GLOBAL, "g", json!({"plugins": {}}), vec![]),
        ],
        expected_revision: Some(before),
        actor: Some("restore".to_string()),
    };
    let outcome = s.replace_all(desired.clone()).await.expect("replace");
    // created u2 and g, updated s1, deleted old and u1: all of it one new revision.
    let after = before + 1;
    assert_eq!(
        outcome,
        ReplaceOutcome {
            revision: after,
            created: 2,
            updated: 1,
            deleted: 2,
        }
    );
    assert_eq!(revision(s).await, after);
    tokio::time::timeout(WAIT, rx.wait_for(|r| *r == after))
        .await
        .expect("the replace is announced")
        .expect("store alive");
    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        ids(&snap.resources),
        vec![(UP, "u2"), (SVC, "s1"), (ROUTE, "keep"), (GLOBAL, "g")]
    );
    let s1 = snap.resources.iter().find(|r| r.id == "s1").unwrap();
    assert_eq!(s1.value, with_id(json!({"upstream_id": "u2"}), "s1"));
    assert_eq!((s1.mod_revision, snap.revision), (after, after));
    // Unchanged resources keep their mod_revision.
    assert_eq!(s.get(ROUTE, "keep").await.unwrap().unwrap(), keep_before);
    let history: Vec<_> = all_history(s)
        .await
        .into_iter()
        .filter(|h| h.revision > before)
        .map(|h| (h.revision, h.kind, h.id, h.op, h.actor))
        .collect();
    let actor = Some("restore".to_string());
    // One row per change, in the order applied: creates and updates in dependency order,
    // then deletes, dependents first.
    assert_eq!(
        history,
        vec![
            (after, UP, "u2".into(), HistoryOp::Put, actor.clone()),
            (after, SVC, "s1".into(), HistoryOp::Put, actor.clone()),
            (after, GLOBAL, "g".into(), HistoryOp::Put, actor.clone()),
            (after, ROUTE, "old".into(), HistoryOp::Delete, actor.clone()),
            (after, UP, "u1".into(), HistoryOp::Delete, actor.clone()),
        ]
    );
    // A page never splits a revision: a limit that ends inside the replace's rows gets all of
    // them, and the next page starts after it.
    let page = s.history(before - 1, 2).await.expect("history page");
    assert_eq!(
        page.iter().map(|h| h.revision).collect::<Vec<_>>(),
        [before, after, after, after, after, after]
    );
    let page = s.history(before, 1).await.expect("history page");
    assert_eq!(page.len(), 5);
    assert!(s.history(after, 1).await.expect("history page").is_empty());
    // u1 no longer holds refs: deleting u2 is refused (s1 uses it), u1 is simply gone.
    assert!(matches!(
        delete_err(s, del_req(UP, "u2")).await,
        StoreError::InUse { .. }
    ));

    // The same set again changes nothing.
    let mut again = desired.clone();
    again.expected_revision = None;
    let outcome = s.replace_all(again).await.expect("replace again");
    assert_eq!(
        (
            outcome.revision,
            outcome.created,
            outcome.updated,
            outcome.deleted
        ),
        (after, 0, 0, 0)
    );

    // Rejected replaces leave everything as it was.
    let seen = observe(s).await;
    let mut stale = desired.clone();
    stale.resources.truncate(1);
    stale.expected_revision = Some(before);
    assert!(matches!(
        s.replace_all(stale).await,
        Err(StoreError::RevisionMismatch { expected, actual }) if expected == before && actual == after
    ));
    let dangling = ReplaceRequest {
        resources: vec![
            item(UP, "u9", json!({"nodes": {}}), vec![]),
            item(
                ROUTE,
                "r",
                json!({"uri": "/r"}),
                vec![reference("service_id", SVC, "nope")],
            ),
        ],
        ..Default::default()
    };
    assert!(matches!(
        s.replace_all(dangling).await,
        Err(StoreError::DanglingReference {
            field: "service_id",
            ..
        })
    ));
    assert_eq!(observe(s).await, seen);

    // An empty set deletes everything, dependents first.
    let outcome = s
        .replace_all(ReplaceRequest::default())
        .await
        .expect("wipe");
    assert_eq!((outcome.deleted, outcome.revision), (4, after + 1));
    assert!(s.snapshot().await.unwrap().resources.is_empty());
}

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

/// A credential belongs to one resource: a second holder is refused with nothing written;
/// re-writing the holder is fine; deleting or re-keying it frees the credential. Two writers
/// racing for one credential: exactly one wins.
pub(super) async fn credentials_are_unique(store: Arc<dyn ConfigStore>) {
    const CONSUMER: ResourceKind = ResourceKind::Consumers;
    let s = store.as_ref();
    let consumer = |id: &str, keys: &[(&'static str, &str)]| {
        let mut r = put_req(CONSUMER, id, json!({"username": id}));
        r.claims = keys
            .iter()
            .map(|(plugin, value)| OwnedClaim::new(plugin, "plugins.x.key", value))
            .collect();
        r
    };
    put_ok(
        s,
        consumer("a", &[("jwt-auth", "k1"), ("key-auth", "secret-1")]),
    )
    .await;
    let before = observe(s).await;
    let err = put_err(s, consumer("b", &[("jwt-auth", "k1")])).await;
    assert!(
        matches!(&err, StoreError::CredentialTaken { plugin: "jwt-auth", holder, .. } if holder == "consumers/a"),
        "{err:?}"
    );
    assert_eq!(observe(s).await, before, "a refused write changes nothing");
    // The same value under another plugin is another credential.
    put_ok(s, consumer("b", &[("key-auth", "k1")])).await;
    // Re-writing the holder keeps its credentials.
    put_ok(
        s,
        consumer("a", &[("jwt-auth", "k1"), ("key-auth", "secret-1")]),
    )
    .await;
    // Re-keying frees the old key; deleting frees the rest.
    put_ok(s, consumer("a", &[("jwt-auth", "k2")])).await;
    put_ok(s, consumer("c", &[("jwt-auth", "k1")])).await;
    delete_ok(s, del_req(CONSUMER, "a")).await;
    put_ok(
        s,
        consumer("d", &[("jwt-auth", "k2"), ("key-auth", "secret-1")]),
    )
    .await;

    // Racing writers: one gets the credential.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put(consumer(&format!("racer{i}"), &[("jwt-auth", "contested")]))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(StoreError::CredentialTaken { .. }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(won, 1);
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
    // `global_rules` sorts first by name but comes last in dependency order.
    put_ok(s, put_req(GLOBAL, "g", json!({}))).await;
    put_ok(s, put_req(ROUTE, "a", json!({}))).await;
    put_ok(s, put_req(SVC, "z", json!({}))).await;
    put_ok(s, put_req(UP, "y", json!({}))).await;
    put_ok(s, put_req(UP, "x", json!({}))).await;
    put_ok(s, put_req(SVC, "a", json!({}))).await;
    delete_ok(s, del_req(SVC, "a")).await;

    let snap = s.snapshot().await.expect("snapshot");
    assert_eq!(snap.revision, 8);
    assert_eq!(snap.revision, revision(s).await);
    assert_eq!(
        ids(&snap.resources),
        vec![
            (UP, "x"),
            (UP, "y"),
            (SVC, "z"),
            (ROUTE, "a"),
            (ROUTE, "b"),
            (GLOBAL, "g")
        ]
    );
    let mut listed = Vec::new();
    for kind in ResourceKind::ALL {
        listed.extend(s.list(kind).await.expect("list"));
    }
    assert_eq!(snap.resources, listed);
}

/// `changes_since` brings the snapshot at one revision to the current
/// one: what it yields applied to the earlier snapshot is exactly a whole snapshot read now,
/// through updates, deletes, a delete and create again, and a replace.
pub(super) async fn changes_since_bring_a_snapshot_up_to_date(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    let shared = |snap: StoreSnapshot| -> Vec<Arc<StoredResource>> {
        snap.resources.into_iter().map(Arc::new).collect()
    };
    put_ok(s, put_req(UP, "x", json!({"n": 1}))).await;
    put_ok(s, put_req(SVC, "z", json!({}))).await;
    put_ok(s, put_req(ROUTE, "a", json!({"n": 1}))).await;
    put_ok(s, put_req(ROUTE, "b", json!({}))).await;
    let before = s.snapshot().await.expect("snapshot");
    let none_yet = s
        .changes_since(before.revision)
        .await
        .expect("changes")
        .expect("every backend tells what changed");
    assert_eq!(none_yet.revision, before.revision);
    assert!(none_yet.changed.is_empty() && none_yet.deleted.is_empty());
    assert_eq!(none_yet.count, 4);

    put_ok(s, put_req(ROUTE, "a", json!({"n": 2}))).await;
    delete_ok(s, del_req(ROUTE, "b")).await;
    put_ok(s, put_req(ROUTE, "c", json!({}))).await;
    delete_ok(s, del_req(SVC, "z")).await;
    put_ok(s, put_req(SVC, "z", json!({"again": true}))).await;
    put_ok(s, put_req(UP, "gone", json!({}))).await;
    delete_ok(s, del_req(UP, "gone")).await;
    let changes = s
        .changes_since(before.revision)
        .await
        .expect("changes")
        .expect("the same store still tells");
    let now = s.snapshot().await.expect("snapshot");
    assert_eq!(changes.revision, now.revision);
    assert_eq!(changes.store_id, now.store_id);
    let mut changed = ids(&changes.changed);
    changed.sort();
    assert_eq!(changed, vec![(SVC, "z"), (ROUTE, "a"), (ROUTE, "c")]);
    let applied = changes
        .apply_to(&shared(before.clone()))
        .expect("the count adds up");
    let applied: Vec<StoredResource> = applied.iter().map(|r| (**r).clone()).collect();
    assert_eq!(applied, now.resources);

    // A replace (several changes under one revision) on top.
    let replace = ReplaceRequest {
        resources: vec![
            item(UP, "x", json!({"n": 1}), vec![]),
            item(ROUTE, "d", json!({}), vec![]),
        ],
        expected_revision: None,
        actor: None,
    };
    s.replace_all(replace).await.expect("replace");
    let after_replace = s.snapshot().await.expect("snapshot");
    let changes = s
        .changes_since(now.revision)
        .await
        .expect("changes")
        .expect("the same store still tells");
    let applied = changes.apply_to(&shared(now)).expect("the count adds up");
    let applied: Vec<StoredResource> = applied.iter().map(|r| (**r).clone()).collect();
    assert_eq!(applied, after_replace.resources);
    assert_eq!(ids(&applied), vec![(UP, "x"), (ROUTE, "d")]);
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

/// Changes whose result does not hold the count the store reported (a delete its history did
/// not record, say by an older control plane) are refused, so the reader reads whole instead.
#[test]
fn changes_that_do_not_add_up_are_refused() {
    let stored = |kind, id: &str, rev| StoredResource {
        kind,
        id: id.to_string(),
        value: json!({"id": id}),
        create_revision: rev,
        mod_revision: rev,
        created_at: 0,
        updated_at: 0,
    };
    let before: Vec<Arc<StoredResource>> = vec![
        Arc::new(stored(UP, "u", 1)),
        Arc::new(stored(ROUTE, "a", 2)),
        Arc::new(stored(ROUTE, "b", 3)),
    ];
    let changes = |count| super::StoreChanges {
        store_id: "s".into(),
        revision: 5,
        changed: vec![stored(ROUTE, "0", 5)],
        deleted: vec![(ROUTE, "a".into())],
        count,
    };
    // "b" was deleted too, but the changes do not say so: 3 resources, the store holds 2.
    assert_eq!(changes(2).apply_to(&before), None);
    let applied = changes(3).apply_to(&before).expect("adds up");
    assert_eq!(
        applied
            .iter()
            .map(|r| (r.kind, r.id.as_str()))
            .collect::<Vec<_>>(),
        [(UP, "u"), (ROUTE, "0"), (ROUTE, "b")]
    );
    // Unchanged resources are shared, not copied.
    assert!(Arc::ptr_eq(&applied[0], &before[0]));
}

mod sqlite {

    use super::*;
    use crate::store::SqliteStore;

    async fn fresh_sqlite() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("config.db"))
            .await
            .expect("open");
        (dir, store)
    }

    async fn fresh() -> (tempfile::TempDir, Arc<dyn ConfigStore>) {
        let (dir, store) = fresh_sqlite().await;
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
        credentials_are_unique,
        history_entries,
        snapshot_consistency,
        changes_since_bring_a_snapshot_up_to_date,
        snapshot_under_concurrent_writes,
        subscribe_sees_revisions,
        concurrent_writers,
        replace_all_is_all_or_nothing,
        replace_all_keeps_credentials,
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

    /// A store written before history was keyed by (revision, seq) opens with its history
    /// intact, and takes a replace as one revision afterwards.
    #[tokio::test]
    async fn history_of_an_older_store_survives_the_upgrade() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.db");
        {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.expect("pool");
            SqliteStore::migrator_upto(2)
                .run(&pool)
                .await
                .expect("old schema");
            for (revision, id) in [(1, "a"), (2, "b")] {
                sqlx::query(
                    "INSERT INTO history (revision, at, kind, id, op, before, after, actor) \
                     VALUES (?, 0, 'routes', ?, 'put', NULL, '{}', NULL)",
                )
                .bind(revision)
                .bind(id)
                .execute(&pool)
                .await
                .expect("old history row");
            }
            sqlx::query("UPDATE meta SET revision = 2")
                .execute(&pool)
                .await
                .expect("revision");
            pool.close().await;
        }
        let store = SqliteStore::open(&path).await.expect("open and migrate");
        let history = store.history(0, 100).await.expect("history");
        assert_eq!(
            history
                .iter()
                .map(|h| (h.revision, h.id.as_str()))
                .collect::<Vec<_>>(),
            [(1, "a"), (2, "b")]
        );
        let outcome = store
            .replace_all(ReplaceRequest {
                resources: vec![
                    item(UP, "u1", json!({}), vec![]),
                    item(UP, "u2", json!({}), vec![]),
                ],
                ..Default::default()
            })
            .await
            .expect("replace");
        assert_eq!((outcome.revision, outcome.created), (3, 2));
        assert_eq!(store.history(2, 100).await.expect("history").len(), 2);
    }

    /// A single write begins and commits its transaction in its own statements: one that fails
    /// between the two (here its history row is refused, after its resource row was written)
    /// changes nothing, and the next write goes through.
    #[tokio::test]
    async fn a_write_failing_mid_way_changes_nothing() {
        let (_dir, store) = fresh_sqlite().await;
        put_ok(&store, put_req(UP, "u1", json!({}))).await;
        sqlx::query(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON history WHEN NEW.id = 'boom' \
             BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
        )
        .execute(store.pool())
        .await
        .expect("trigger");
        let before = observe(&store).await;

        let err = put_err(&store, put_req(UP, "boom", json!({}))).await;
        assert!(err.to_string().contains("boom refused"), "{err:?}");
        assert_eq!(
            observe(&store).await,
            before,
            "a failed write changed the store"
        );
        assert!(store.get(UP, "boom").await.expect("get").is_none());

        let outcome = put_ok(&store, put_req(UP, "u2", json!({}))).await;
        assert_eq!(outcome.revision, before.0 + 1);
    }

    /// A write that died inside its transaction (a panic) leaves it open on the writers'
    /// connection: the next write rolls it back first, and one that left none open is no
    /// obstacle either.
    #[tokio::test]
    async fn a_write_left_open_is_rolled_back_by_the_next() {
        let (_dir, store) = fresh_sqlite().await;
        put_ok(&store, put_req(UP, "u1", json!({}))).await;
        let before = observe(&store).await;

        store
            .abandon_write(
                "BEGIN IMMEDIATE; UPDATE meta SET revision = revision + 100; \
                 INSERT INTO resources \
                 (kind, id, body, create_revision, mod_revision, created_at, updated_at) \
                 VALUES ('upstreams', 'ghost', '{}', 101, 101, 0, 0)",
            )
            .await;
        assert_eq!(
            observe(&store).await,
            before,
            "readers see an uncommitted write"
        );
        let outcome = put_ok(&store, put_req(UP, "u2", json!({}))).await;
        assert_eq!(outcome.revision, before.0 + 1);
        assert!(store.get(UP, "ghost").await.expect("get").is_none());

        store.abandon_write("SELECT 1").await;
        let outcome = delete_ok(&store, del_req(UP, "u2")).await;
        assert_eq!(outcome.revision, before.0 + 2);
        assert_eq!(revision(&store).await, before.0 + 2);
    }

    /// After each single write the snapshot builder asks for the changes since the revision
    /// before it; the store answers from what the write recorded, and that answer must be the
    /// database's, for a create, an update, a delete and a write that failed.
    #[tokio::test]
    async fn the_last_writes_recorded_changes_are_the_databases() {
        let (_dir, store) = fresh_sqlite().await;
        async fn recorded_is_read(store: &SqliteStore, revision: u64) {
            let recorded = store
                .recorded_changes(revision - 1)
                .expect("the write's changes recorded");
            let read = store
                .read_changes_since(revision - 1)
                .await
                .expect("read")
                .expect("changes");
            assert_eq!(recorded, read, "after revision {}", revision - 1);
            let answered = store.changes_since(revision - 1).await.expect("changes");
            assert_eq!(answered, Some(read));
            // Only the last write's base is answered from memory.
            if let Some(older) = revision.checked_sub(2) {
                assert!(store.recorded_changes(older).is_none());
            }
        }
        let body = json!({"nodes": {"127.0.0.1:1980": 1}, "ratio": 0.1, "big": u64::MAX});
        let created = put_ok(&store, put_req(UP, "u1", body)).await;
        recorded_is_read(&store, created.revision).await;
        let updated = put_ok(
            &store,
            put_req(UP, "u1", json!({"nodes": {}, "t": [1.5e300]})),
        )
        .await;
        recorded_is_read(&store, updated.revision).await;
        let mut route = put_req(ROUTE, "r1", json!({"uri": "/r1", "upstream_id": "u1"}));
        route.references = vec![reference("upstream_id", UP, "u1")];
        let route = put_ok(&store, route).await;
        recorded_is_read(&store, route.revision).await;

        // Refused (the route uses u1): nothing new is recorded.
        delete_err(&store, del_req(UP, "u1")).await;
        recorded_is_read(&store, route.revision).await;

        let deleted = delete_ok(&store, del_req(ROUTE, "r1")).await;
        recorded_is_read(&store, deleted.revision).await;
        let read = store.read_changes_since(deleted.revision - 1).await;
        let read = read.expect("read").expect("changes");
        assert_eq!(
            (read.changed.len(), read.deleted.len(), read.count),
            (0, 1, 1)
        );

        // A replace records nothing: the changes since the revision before it are read.
        let replaced = store
            .replace_all(ReplaceRequest {
                resources: vec![item(UP, "u2", json!({}), vec![])],
                ..Default::default()
            })
            .await
            .expect("replace");
        assert!(store.recorded_changes(replaced.revision - 1).is_none());
        // A reader still at the delete's base, which saw the replace announced, gets the
        // replace too, not the delete's record alone.
        let caught_up = store
            .changes_since(deleted.revision - 1)
            .await
            .expect("changes");
        assert_eq!(caught_up.map(|c| c.revision), Some(replaced.revision));
        let changes = store
            .changes_since(replaced.revision - 1)
            .await
            .expect("changes");
        assert_eq!(changes.map(|c| c.count), Some(1));
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
        let (_dir, store) = fresh_sqlite().await;
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
}

// ---------------------------------------------------------------------------------------------
// The suite against PostgreSQL

/// Every test gets a database of its own (`postern_test_<hex>`) on the server at
/// `POSTERN_TEST_PG_URL` (default: the local one, trust auth), dropped when the test ends, so the
/// tests run in parallel.
mod postgres {
    use std::time::Instant;

    use sqlx::{Connection, PgConnection};
    use tokio::sync::watch;

    use super::*;
    use crate::store::PostgresStore;

    const SERVER_ENV: &str = "POSTERN_TEST_PG_URL";
    const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
    const START_HINT: &str =
        "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";
    /// How fast another replica must see a write through LISTEN/NOTIFY.
    const NOTIFY_WITHIN: Duration = Duration::from_secs(1);
    /// The store's revision poll (2 s) plus slack.
    const POLL_WITHIN: Duration = Duration::from_secs(6);

    fn server_url() -> String {
        std::env::var(SERVER_ENV).unwrap_or_else(|_| DEFAULT_SERVER.to_string())
    }

    /// `server` with its database replaced by `database`.
    fn database_url(server: &str, database: &str) -> String {
        let (base, query) = match server.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (server, String::new()),
        };
        let authority = base.find("://").map_or(0, |i| i + 3);
        let end = base[authority..]
            .find('/')
            .map_or(base.len(), |i| authority + i);
        format!("{}/{database}{query}", &base[..end])
    }

    async fn connect_admin(url: &str) -> PgConnection {
        match tokio::time::timeout(WAIT, PgConnection::connect(url)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => panic!(
                "cannot reach PostgreSQL at {url} ({e}); these tests need a server: {START_HINT} \
                 (or point {SERVER_ENV} at another one)"
            ),
            Err(_) => panic!(
                "PostgreSQL at {url} did not answer within {WAIT:?}; {START_HINT} \
                 (or point {SERVER_ENV} at another one)"
            ),
        }
    }

    /// A fresh database, dropped (sessions included) when this is dropped — also when the test
    /// fails.
    struct TestDb {
        server: String,
        name: String,
        url: String,
    }

    impl TestDb {
        async fn create() -> TestDb {
            let server = server_url();
            let name = format!("postern_test_{:016x}", fastrand::u64(..));
            let mut admin = connect_admin(&server).await;
            sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("create database {name}: {e}"));
            admin.close().await.expect("close the admin connection");
            let url = database_url(&server, &name);
            TestDb { server, name, url }
        }

        async fn store(&self) -> PostgresStore {
            PostgresStore::connect(&self.url)
                .await
                .unwrap_or_else(|e| panic!("connect to {}: {e:?}", self.url))
        }

        async fn shared(&self) -> Arc<dyn ConfigStore> {
            Arc::new(self.store().await)
        }

        /// The number of sessions the stores hold on this database.
        async fn store_sessions(&self) -> i64 {
            let mut admin = connect_admin(&self.server).await;
            let n = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'postern-control-plane'",
            )
            .bind(&self.name)
            .fetch_one(&mut admin)
            .await
            .expect("count sessions");
            admin.close().await.expect("close the admin connection");
            n
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let server = self.server.clone();
            let name = self.name.clone();
            // Drop cannot await, and may run on a runtime thread: use a thread of its own.
            let dropped = std::thread::spawn(move || -> Result<(), String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let drop_once = || async {
                    let mut admin = PgConnection::connect(&server).await?;
                    sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                        .execute(&mut admin)
                        .await?;
                    admin.close().await
                };
                runtime.block_on(async {
                    // A busy server may not end the sessions in time: try again.
                    let mut attempt = 1;
                    loop {
                        match drop_once().await {
                            Ok(()) => return Ok(()),
                            Err(e) if attempt == 3 => return Err(e.to_string()),
                            Err(_) => {
                                attempt += 1;
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the drop thread panicked".to_string()));
            if let Err(e) = dropped {
                let message = format!(
                    "cannot drop test database {} ({e}); drop it by hand: \
                     psql {} -c 'DROP DATABASE \"{}\" WITH (FORCE)'",
                    self.name, self.server, self.name
                );
                if std::thread::panicking() {
                    eprintln!("{message}");
                } else {
                    panic!("{message}");
                }
            }
        }
    }

    /// Waits until `rx` shows `wanted`; returns how long that took.
    async fn wait_for_revision(
        rx: &mut watch::Receiver<u64>,
        wanted: u64,
        within: Duration,
    ) -> Result<Duration, u64> {
        let started = Instant::now();
        let reached = tokio::time::timeout(within, rx.wait_for(|r| *r == wanted))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(started.elapsed())
        } else {
            Err(*rx.borrow())
        }
    }

    macro_rules! conformance {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let db = TestDb::create().await;
                super::$name(db.shared().await).await;
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
        credentials_are_unique,
        history_entries,
        snapshot_consistency,
        changes_since_bring_a_snapshot_up_to_date,
        snapshot_under_concurrent_writes,
        subscribe_sees_revisions,
        concurrent_writers,
        replace_all_is_all_or_nothing,
        replace_all_keeps_credentials,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durability_across_reopen() {
        let db = TestDb::create().await;
        super::durability_across_reopen(|| db.shared()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_store_has_its_own_id() {
        let (a, b) = (TestDb::create().await, TestDb::create().await);
        let a = a.store().await.store_id().await.expect("store_id");
        let b = b.store().await.store_id().await.expect("store_id");
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert!(
                id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "32 lowercase hex digits, like SQLite's: {id:?}"
            );
        }
    }

    /// Two control planes starting at once on a fresh database: the migrator's advisory lock
    /// lets one migrate while the other waits, and both come up on the same store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_migrate_one_fresh_database_concurrently() {
        let db = TestDb::create().await;
        let (a, b) = tokio::join!(
            PostgresStore::connect(&db.url),
            PostgresStore::connect(&db.url)
        );
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => panic!("both stores must start: {:?} / {:?}", a.err(), b.err()),
        };
        assert_eq!(
            a.store_id().await.expect("store_id"),
            b.store_id().await.expect("store_id")
        );
        let migrations: Vec<(i64, bool)> =
            sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(a.pool())
                .await
                .expect("migrations");
        assert_eq!(
            migrations,
            vec![(1, true), (2, true), (3, true), (4, true)],
            "each migration applied once"
        );
        let meta_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM meta")
            .fetch_one(a.pool())
            .await
            .expect("meta");
        assert_eq!(meta_rows, 1);
        let written = put_ok(&a, put_req(UP, "u", json!({}))).await;
        assert_eq!(written.revision, 1);
        assert_eq!(
            b.get(UP, "u").await.expect("get"),
            Some(written.resource),
            "one store, two handles"
        );
    }

    /// Another replica's writes reach `subscribe()` through LISTEN/NOTIFY alone (the watcher
    /// does not poll) well within a second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notify_reaches_another_store_within_a_second() {
        let db = TestDb::create().await;
        let writer = db.store().await;
        let watcher = PostgresStore::connect_polling(&db.url, None)
            .await
            .expect("connect");
        let mut rx = watcher.subscribe();
        assert_eq!(*rx.borrow_and_update(), 0);
        // From the writer's acknowledgement, and from the start of the write.
        let (mut after_ack, mut end_to_end) = (Vec::new(), Vec::new());
        for i in 0..10 {
            let started = Instant::now();
            let written = put_ok(&writer, put_req(UP, &format!("u{i}"), json!({}))).await;
            match wait_for_revision(&mut rx, written.revision, NOTIFY_WITHIN).await {
                Ok(delay) => {
                    after_ack.push(delay);
                    end_to_end.push(started.elapsed());
                }
                Err(seen) => panic!(
                    "revision {} not seen by the other store within {NOTIFY_WITHIN:?} \
                     (it shows {seen})",
                    written.revision
                ),
            }
        }
        let summary = |delays: &[Duration]| {
            let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
            let max = delays.iter().max().copied().unwrap_or_default();
            format!("mean {mean:?}, max {max:?}")
        };
        println!(
            "NOTIFY delay to another store: after the writer's ack {}; from the start of the \
             write {}",
            summary(&after_ack),
            summary(&end_to_end)
        );
        assert_eq!(watcher.revision().await.expect("revision"), 10);
    }

    /// Changes that come with no notification (lost while the listener reconnected) are found by
    /// the poll, and a revision that went back (restore, wipe) is announced too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poll_catches_silent_changes_and_revisions_going_back() {
        let db = TestDb::create().await;
        let store = db.store().await;
        // The control: without the poll, nothing announces a silent change.
        let listener_only = PostgresStore::connect_polling(&db.url, None)
            .await
            .expect("connect");
        let mut rx = store.subscribe();
        let silent = |sql: &'static str| sqlx::query(sql).execute(store.pool());

        silent("UPDATE meta SET revision = revision + 3")
            .await
            .expect("update");
        let took = wait_for_revision(&mut rx, 3, POLL_WITHIN)
            .await
            .unwrap_or_else(|seen| panic!("the poll missed revision 3 (shows {seen})"));
        println!("silent change seen by the poll after {took:?}");
        assert_eq!(
            *listener_only.subscribe().borrow(),
            0,
            "nothing but the poll can have announced it"
        );

        // Restored from a backup taken at revision 1.
        silent("UPDATE meta SET revision = 1")
            .await
            .expect("update");
        wait_for_revision(&mut rx, 1, POLL_WITHIN)
            .await
            .unwrap_or_else(|seen| panic!("a revision going back was not announced ({seen})"));
        let next = put_ok(&store, put_req(UP, "u", json!({}))).await;
        assert_eq!(next.revision, 2);
        assert_eq!(*rx.borrow_and_update(), 2, "and it moves on from there");
    }

    /// Writers on two stores (two replicas) share one gapless sequence of revisions, and each
    /// store's `subscribe()` only moves forward, to the last one — even with its revision poll
    /// racing the writes (a poll that read the revision just before a commit must not announce
    /// it as the revision going back).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_on_two_stores() {
        const TASKS: usize = 8;
        const PUTS: usize = 10;
        let db = TestDb::create().await;
        let busy_poll = || async {
            let store = PostgresStore::connect_polling(&db.url, Some(Duration::from_millis(1)))
                .await
                .expect("connect");
            Arc::new(store) as Arc<dyn ConfigStore>
        };
        let stores = [busy_poll().await, busy_poll().await];
        let total = (TASKS * PUTS + PUTS) as u64;
        let watchers: Vec<_> = stores
            .iter()
            .map(|s| {
                let mut rx = s.subscribe();
                tokio::spawn(async move {
                    let mut seen = vec![*rx.borrow_and_update()];
                    while seen.last() != Some(&total) {
                        match tokio::time::timeout(WAIT, rx.changed()).await {
                            Ok(Ok(())) => seen.push(*rx.borrow_and_update()),
                            _ => break,
                        }
                    }
                    seen
                })
            })
            .collect();

        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let store = stores[t % 2].clone();
                tokio::spawn(async move {
                    let s = store.as_ref();
                    let mut accepted = Vec::new();
                    for i in 0..PUTS {
                        let own =
                            put_ok(s, put_req(UP, &format!("w{t:02}-{i}"), json!({"t": t}))).await;
                        accepted.push((own.revision, own.resource.id));
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
        assert_eq!(
            accepted.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>(),
            "revisions must be unique and gapless across stores"
        );
        let history = all_history(stores[1].as_ref()).await;
        assert_eq!(
            history
                .iter()
                .map(|h| (h.revision, h.id.clone()))
                .collect::<Vec<_>>(),
            accepted
        );
        for s in &stores {
            assert_eq!(revision(s.as_ref()).await, total);
            assert_eq!(s.list(SVC).await.expect("list").len(), PUTS);
        }
        for watcher in watchers {
            let seen = watcher.await.expect("watcher");
            assert_eq!(seen.last(), Some(&total), "{seen:?}");
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "announced revisions went backwards: {seen:?}"
            );
        }
    }

    /// When the server drops every session, the pool reconnects on the next call and the
    /// listener re-listens by itself (and catches up on what it missed meanwhile).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listener_and_pool_recover_from_dropped_connections() {
        let db = TestDb::create().await;
        let writer = db.store().await;
        let watcher = PostgresStore::connect_polling(&db.url, None)
            .await
            .expect("connect");
        let mut rx = watcher.subscribe();
        put_ok(&writer, put_req(UP, "before", json!({}))).await;
        wait_for_revision(&mut rx, 1, NOTIFY_WITHIN)
            .await
            .expect("seen before the cut");

        let mut admin = connect_admin(&db.server).await;
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
        )
        .bind(&db.name)
        .fetch_one(&mut admin)
        .await
        .expect("terminate");
        assert!(killed >= 3, "the pools and both listeners: {killed}");

        // Written at once: probably before the watcher listens again, so only its catch-up read
        // can find it.
        let written = put_ok(&writer, put_req(UP, "during", json!({}))).await;
        assert_eq!(written.revision, 2);
        wait_for_revision(&mut rx, 2, Duration::from_secs(3))
            .await
            .unwrap_or_else(|seen| panic!("missed the write made during the cut ({seen})"));
        // And notifications flow again.
        let after = put_ok(&writer, put_req(UP, "after", json!({}))).await;
        wait_for_revision(&mut rx, after.revision, NOTIFY_WITHIN)
            .await
            .unwrap_or_else(|seen| panic!("no notification after re-listening ({seen})"));
        assert_eq!(
            watcher.get(UP, "during").await.expect("get").map(|r| r.id),
            Some("during".to_string())
        );
        admin.close().await.expect("close");
    }

    /// A server that is not there is `Unavailable` within a few seconds, and the error does not
    /// carry the password.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_server_is_unavailable_quickly() {
        // Bind then free a port, so nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let started = Instant::now();
        let result =
            PostgresStore::connect(&format!("postgres://postern:s3cret@127.0.0.1:{port}/db")).await;
        let took = started.elapsed();
        match result {
            Err(StoreError::Unavailable(message)) => {
                assert!(!message.contains("s3cret"), "{message}");
                assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
            }
            Err(e) => panic!("expected Unavailable, got {e:?}"),
            Ok(_) => panic!("connected to a closed port"),
        }
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }

    /// Calls on a store whose database went away fail with `Unavailable`, promptly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_fail_unavailable_when_the_database_is_gone() {
        let db = TestDb::create().await;
        let store = db.store().await;
        put_ok(&store, put_req(UP, "u", json!({}))).await;
        let mut admin = connect_admin(&db.server).await;
        sqlx::query(&format!(r#"DROP DATABASE "{}" WITH (FORCE)"#, db.name))
            .execute(&mut admin)
            .await
            .expect("drop database");
        admin.close().await.expect("close");

        let started = Instant::now();
        let err = store.revision().await.expect_err("no database");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = put_err(&store, put_req(UP, "v", json!({}))).await;
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = store.snapshot().await.expect_err("no database");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }

    /// Dropping the store ends its background tasks: its sessions close and subscribers see
    /// the sender gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_store_ends_its_tasks_and_sessions() {
        let db = TestDb::create().await;
        let store = db.store().await;
        let mut rx = store.subscribe();
        put_ok(&store, put_req(UP, "u", json!({}))).await;
        let open = db.store_sessions().await;
        assert!(open >= 2, "the pool and the listener: {open}");

        drop(store);
        let closed =
            tokio::time::timeout(WAIT, async { while rx.changed().await.is_ok() {} }).await;
        assert!(closed.is_ok(), "the revision sender outlived the store");
        let started = Instant::now();
        loop {
            let open = db.store_sessions().await;
            if open == 0 {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "{open} sessions still open after the store was dropped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undecodable_rows_are_corrupt() {
        let db = TestDb::create().await;
        let store = db.store().await;
        let insert = |kind: &'static str, id: &'static str, body: &'static str| {
            sqlx::query(
                "INSERT INTO resources \
                 (kind, id, body, create_revision, mod_revision, created_at, updated_at) \
                 VALUES ($1, $2, $3, 1, 1, 0, 0)",
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

        // Postgres types hold no 'seven'; a negative revision is the bad number it can hold.
        sqlx::query("ALTER TABLE meta DROP CONSTRAINT meta_revision_check")
            .execute(store.pool())
            .await
            .expect("alter");
        sqlx::query("UPDATE meta SET revision = -7")
            .execute(store.pool())
            .await
            .expect("update");
        let err = store.revision().await.expect_err("negative revision");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        // A write must not build on a bad revision either, and leaves nothing behind.
        let err = put_err(&store, put_req(UP, "u", json!({}))).await;
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        let left: i64 = sqlx::query_scalar("SELECT revision FROM meta")
            .fetch_one(store.pool())
            .await
            .expect("meta");
        assert_eq!(left, -7);
    }

    #[test]
    fn database_url_replaces_the_database() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "t"),
            "postgres://postgres@127.0.0.1:5432/t"
        );
        assert_eq!(
            database_url("postgres://u:p@h/db?sslmode=disable", "t"),
            "postgres://u:p@h/t?sslmode=disable"
        );
        assert_eq!(database_url("postgres://h:1", "t"), "postgres://h:1/t");
    }
}

// ---------------------------------------------------------------------------------------------
// The suite against etcd

mod etcd {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{ChildStdin, Command, Stdio};
    use std::sync::OnceLock;
    use std::time::Instant;

    use tokio::sync::watch;

    use super::*;
    use crate::store::EtcdStore;

    const NOT_INSTALLED: &str =
        "etcd not installed: apt-get install -y etcd-server (scripts/test.sh does this)";
    /// How long a fresh etcd may take to answer its health check.
    const START_TIMEOUT: Duration = Duration::from_secs(30);

    /// The etcd process shared by the tests of this binary; each test keeps to its own prefix.
    struct Etcd {
        endpoint: String,
        /// Never closed by hand: when this process exits (however it dies), the wrapper shell
        /// reads EOF on its stdin, stops etcd and removes its data dir.
        _lifeline: ChildStdin,
    }

    static ETCD: OnceLock<Result<Etcd, String>> = OnceLock::new();

    /// Starts etcd on first use (blocking; a second or so).
    fn etcd() -> &'static Etcd {
        match ETCD.get_or_init(start_etcd) {
            Ok(etcd) => etcd,
            Err(e) => panic!("{e}"),
        }
    }

    fn endpoints() -> Vec<String> {
        vec![etcd().endpoint.clone()]
    }

    fn start_etcd() -> Result<Etcd, String> {
        match Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NOT_INSTALLED.to_string());
            }
            Err(e) => return Err(format!("cannot run etcd: {e}")),
            Ok(_) => {}
        }
        // A port taken between choosing and binding it makes etcd exit: choose again.
        let mut error = String::new();
        for _ in 0..3 {
            match try_start_etcd() {
                Ok(etcd) => return Ok(etcd),
                Err(e) => error = e,
            }
        }
        Err(error)
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port()
    }

    /// Runs etcd under `sh`, which waits for EOF on its stdin (this process's end of the pipe
    /// closes only when this process exits), then kills etcd and deletes the data dir.
    const WRAPPER: &str = r#"dir=$1; shift
etcd "$@" </dev/null >"$dir/etcd.log" 2>&1 &
pid=$!
echo "$pid"
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir""#;

    fn try_start_etcd() -> Result<Etcd, String> {
        // tmpfs when there is one: etcd fsyncs every write.
        let shm = Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("postern-etcd-");
        let dir = if shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .map_err(|e| format!("cannot create a data dir for etcd: {e}"))?
        // From here on the wrapper removes it.
        .keep();
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data_dir = dir.join("data");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(&dir)
            .args(["--name", "postern-test", "--data-dir"])
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("postern-test={peer_url}"),
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // etcd logs to its data dir; the shell would only report "Terminated".
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start sh for etcd: {e}"))?;
        let lifeline = child.stdin.take().expect("piped stdin");
        let mut pid = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut pid)
            .map_err(|e| format!("no pid from the etcd wrapper: {e}"))?;
        let pid = pid.trim().to_string();

        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if healthy(client) {
                return Ok(Etcd {
                    endpoint: client_url,
                    _lifeline: lifeline,
                });
            }
            if !alive(&pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
        // Dropping `lifeline` makes the wrapper clean up.
        Err(format!(
            "etcd did not become healthy on {client_url}; its log:\n{}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        ))
    }

    /// Whether the process exists and is not a zombie.
    fn alive(pid: &str) -> bool {
        let stat: PathBuf = ["/proc", pid, "stat"].iter().collect();
        std::fs::read_to_string(stat).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    }

    fn healthy(port: u16) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = String::new();
        conn.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .and_then(|()| conn.read_to_string(&mut answer))
            .is_ok()
            && answer.contains(r#""health":"true""#)
    }

    fn prefix(test: &str) -> String {
        format!("/postern-test/{test}-{:016x}", fastrand::u64(..))
    }

    async fn connect(prefix: &str) -> EtcdStore {
        EtcdStore::connect(&endpoints(), prefix)
            .await
            .expect("connect to etcd")
    }

    macro_rules! conformance {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = connect(&prefix(stringify!($name))).await;
                super::$name(Arc::new(store)).await;
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
        credentials_are_unique,
        history_entries,
        snapshot_consistency,
        changes_since_bring_a_snapshot_up_to_date,
        snapshot_under_concurrent_writes,
        subscribe_sees_revisions,
        concurrent_writers,
        replace_all_is_all_or_nothing,
        replace_all_keeps_credentials,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durability_across_reopen() {
        let prefix = prefix("durability_across_reopen");
        super::durability_across_reopen(|| async {
            Arc::new(connect(&prefix).await) as Arc<dyn ConfigStore>
        })
        .await;
    }

    /// More changed resources than one etcd transaction may read: `changes_since` says so
    /// (`None`, the builder reads whole) instead of failing on the cluster's `--max-txn-ops`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_beyond_one_transaction_are_read_whole() {
        let store = connect(&prefix("many_changes")).await;
        let s: &dyn ConfigStore = &store;
        let start = put_ok(s, put_req(UP, "first", json!({}))).await.revision;
        for i in 0..=crate::store::etcd::MAX_CHANGES_READ {
            put_ok(s, put_req(UP, &format!("u{i}"), json!({}))).await;
        }
        assert!(s.changes_since(start).await.expect("changes").is_none());
        // A few changes still come as changes.
        let now = s.revision().await.expect("revision");
        put_ok(s, put_req(UP, "u0", json!({"n": 1}))).await;
        let changes = s.changes_since(now).await.expect("changes").expect("a few");
        assert_eq!(ids(&changes.changed), vec![(UP, "u0")]);
    }

    #[tokio::test]
    async fn store_ids_are_per_prefix() {
        let (p, q) = (prefix("ids"), prefix("ids"));
        let a = connect(&p).await;
        let b = connect(&q).await;
        assert_eq!(a.backend(), "etcd");
        let id = a.store_id().await.expect("store_id");
        assert!(id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, b.store_id().await.expect("store_id"));
        // A second connection to the same prefix finds the id the first one created.
        let again = connect(&p).await;
        assert_eq!(again.store_id().await.expect("store_id"), id);
    }

    /// Waits until `rx` shows `revision`.
    async fn seen_within(rx: &mut watch::Receiver<u64>, revision: u64, limit: Duration) {
        tokio::time::timeout(limit, rx.wait_for(|r| *r >= revision))
            .await
            .unwrap_or_else(|_| panic!("revision {revision} not announced within {limit:?}"))
            .expect("sender alive");
        assert_eq!(*rx.borrow(), revision, "announced past the write");
    }

    /// Two control planes on one prefix: each one's `subscribe()` announces the other's writes,
    /// through the etcd watch, well within a second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_see_each_others_writes() {
        let prefix = prefix("instances_see");
        let a = connect(&prefix).await;
        let b = connect(&prefix).await;
        let (mut rx_a, mut rx_b) = (a.subscribe(), b.subscribe());
        let (mut slowest_write, mut slowest_seen) = (Duration::ZERO, Duration::ZERO);
        for i in 0..5 {
            let (writer, other_rx) = if i % 2 == 0 {
                (&a, &mut rx_b)
            } else {
                (&b, &mut rx_a)
            };
            // Timed from before the write: the other instance has 1 s to announce it.
            let start = Instant::now();
            let outcome = put_ok(writer, put_req(UP, &format!("u{i}"), json!({"i": i}))).await;
            slowest_write = slowest_write.max(start.elapsed());
            assert_eq!(outcome.revision, i + 1);
            seen_within(other_rx, outcome.revision, Duration::from_secs(1)).await;
            slowest_seen = slowest_seen.max(start.elapsed());
            // The write is readable through the other instance too.
            let other: &EtcdStore = if i % 2 == 0 { &b } else { &a };
            assert_eq!(
                other.get(UP, &format!("u{i}")).await.expect("get"),
                Some(outcome.resource)
            );
        }
        println!(
            "etcd: slowest of 5 writes acknowledged after {slowest_write:?}, \
             announced by the other instance {slowest_seen:?} after the write began"
        );
        assert_eq!(*rx_a.borrow(), 5);
        assert_eq!(*rx_b.borrow(), 5);
    }

    /// Writers on two instances (so two etcd clients racing on the counter) still get unique,
    /// gapless revisions, and each instance ends up announcing the last one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_across_instances() {
        const TASKS_PER_INSTANCE: usize = 4;
        const PUTS: usize = 15;
        let prefix = prefix("cross_writers");
        let stores: Vec<Arc<EtcdStore>> = vec![
            Arc::new(connect(&prefix).await),
            Arc::new(connect(&prefix).await),
        ];
        let mut tasks = Vec::new();
        for (s, store) in stores.iter().enumerate() {
            for t in 0..TASKS_PER_INSTANCE {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let mut accepted = Vec::new();
                    for i in 0..PUTS {
                        let id = format!("s{s}-t{t}-{i:02}");
                        let outcome = put_ok(store.as_ref(), put_req(UP, &id, json!({}))).await;
                        accepted.push((outcome.revision, id));
                    }
                    accepted
                }));
            }
        }
        let mut accepted = Vec::new();
        for task in tasks {
            accepted.extend(task.await.expect("writer task"));
        }
        accepted.sort();
        let n = (2 * TASKS_PER_INSTANCE * PUTS) as u64;
        assert_eq!(
            accepted.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "revisions must be unique and gapless"
        );
        for store in &stores {
            assert_eq!(revision(store.as_ref()).await, n);
            seen_within(&mut store.subscribe(), n, WAIT).await;
            let history = all_history(store.as_ref()).await;
            assert_eq!(
                history
                    .iter()
                    .map(|h| (h.revision, h.id.clone()))
                    .collect::<Vec<_>>(),
                accepted
            );
        }
    }

    /// Wiping the prefix under a running store is announced (the revision goes back, not
    /// silently) and gives the store a new id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wiped_prefix_is_announced() {
        let prefix = prefix("wiped");
        let store = connect(&prefix).await;
        put_ok(&store, put_req(UP, "a", json!({}))).await;
        put_ok(&store, put_req(UP, "b", json!({}))).await;
        let old_id = store.store_id().await.expect("store_id");
        let mut rx = store.subscribe();
        assert_eq!(*rx.borrow_and_update(), 2);

        let mut raw = etcd_client::Client::connect(endpoints(), None)
            .await
            .expect("raw client");
        let wiped = raw
            .delete(
                format!("{prefix}/"),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .expect("wipe");
        assert!(wiped.deleted() > 0);

        tokio::time::timeout(WAIT, rx.wait_for(|r| *r == 0))
            .await
            .expect("the wipe is announced")
            .expect("sender alive");
        assert_eq!(revision(&store).await, 0);
        let new_id = store.store_id().await.expect("store_id");
        assert_ne!(new_id, old_id);
        let snap = store.snapshot().await.expect("snapshot");
        assert_eq!(
            (snap.revision, snap.store_id.as_str()),
            (0, new_id.as_str())
        );
        assert!(snap.resources.is_empty());
        let first = put_ok(&store, put_req(UP, "a", json!({}))).await;
        assert_eq!(first.revision, 1);
        assert!(first.created);
    }

    /// Dropping the store stops its background watch, which holds the revision sender.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_store_stops_its_watch() {
        let store = connect(&prefix("dropped")).await;
        put_ok(&store, put_req(UP, "u", json!({}))).await;
        let mut rx = store.subscribe();
        drop(store);
        let closed =
            tokio::time::timeout(WAIT, async { while rx.changed().await.is_ok() {} }).await;
        assert!(closed.is_ok(), "the watch task outlived the store");
    }

    /// Nothing listening: `connect` answers `Unavailable` after the request timeout, not never.
    #[tokio::test]
    async fn unreachable_etcd_is_unavailable() {
        let dead = format!("http://127.0.0.1:{}", free_port());
        let start = Instant::now();
        let result = EtcdStore::connect(&[dead], &prefix("unreachable")).await;
        let elapsed = start.elapsed();
        match result {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("etcd"), "{message}")
            }
            Err(e) => panic!("expected Unavailable, got {e:?}"),
            Ok(_) => panic!("connected to nothing"),
        }
        assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    }

    /// All endpoints are handed to the client: a dead one in the list does not stop the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_endpoint_among_live_ones() {
        let dead = format!("http://127.0.0.1:{}", free_port());
        let list = vec![dead, etcd().endpoint.clone()];
        let store = EtcdStore::connect(&list, &prefix("endpoints"))
            .await
            .expect("connect with one live endpoint");
        for i in 0..5 {
            let outcome = put_ok(&store, put_req(UP, &format!("u{i}"), json!({}))).await;
            assert_eq!(outcome.revision, i + 1);
        }
        assert_eq!(store.list(UP).await.expect("list").len(), 5);
    }
}
