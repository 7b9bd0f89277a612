//! The etcd config store: everything under one key prefix of an etcd (v3) cluster.
//!
//! Key layout under `<prefix>/`:
//! - `meta/revision`: our global revision, in decimal (missing means 0);
//! - `meta/store_id`: random hex, created once (`create_revision == 0` guard);
//! - `resources/<kind>/<id>`: a [`ResourceRecord`] (JSON);
//! - `refs/<to_kind>/<to_id>/<from_kind>/<from_id>/<field>`: one per reference, valued
//!   `<from_kind>/<from_id>`, so "is it in use" is one prefix read;
//! - `credentials/<plugin>/<sha-256 hex>`: one per credential a resource holds (a consumer's
//!   jwt-auth or key-auth key), valued `<kind>/<id>`, so a second holder is one key read;
//! - `history/<revision, 20 digits>`: a [`HistoryRecord`] (JSON); a whole-config replace is one
//!   revision with one record per change, under `history/<revision>/<seq, 6 digits>`.
//!
//! Ids are escaped in keys (`%` → `%25`, `/` → `%2F`) so a key always splits at its slashes.
//!
//! Writes use optimistic concurrency: one read transaction fetches the counter (with its etcd
//! `mod_revision`) and whatever the checks need, then one write transaction applies the
//! counter + 1, the resource, the reference changes and the history entry only if the counter's
//! `mod_revision` is still the one read. Every write moves the counter, so a transaction that
//! passes its compare saw exactly the state it checked; one that fails is retried from the read.
//! Writers of one store queue on a local lock, so only other control planes compete with them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, GetResponse, KeyValue,
    KvClient, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchClient, WatchOptions,
};
use postern_proto::model::ResourceKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::{
    ConfigStore, DeleteRequest, HistoryEntry, HistoryOp, OwnedReference, Precondition, PutRequest,
    StoreChanges, StoreError, StoreResult, StoreSnapshot, StoredResource, WriteOutcome,
};
use super::{ReplaceOutcome, ReplaceRequest, Write, plan_replace, run_detached};

/// `changes_since` reads at most this many changed resources (one read each, in one
/// transaction with three more: within etcd's default `--max-txn-ops` of 128); more, and the
/// builder reads the store whole.
pub(super) const MAX_CHANGES_READ: usize = 100;

/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take, retries included, before the store answers `Unavailable`: a dead
/// cluster is reported after this long rather than never.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on open streams, so a dead connection under the watch is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Large stores come back in one range response.
const MAX_MESSAGE_SIZE: usize = 256 << 20;
/// How often a write retries after losing its compare to another control plane.
const MAX_WRITE_ATTEMPTS: u32 = 50;
/// The safety net under the watch: the counter is re-read this often.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait between attempts to re-establish the watch.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);
/// How many referrers an `InUse` error names.
const IN_USE_LIMIT: usize = 10;

/// The etcd [`ConfigStore`]. All methods take `&self`; dropping it stops its background watch.
pub struct EtcdStore {
    inner: Arc<Inner>,
    follower: JoinHandle<()>,
}

struct Inner {
    kv: KvClient,
    watch: WatchClient,
    keys: Keys,
    /// Serialises this store's writers: they would only make each other retry.
    write_lock: Mutex<()>,
    announcer: Announcer,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl EtcdStore {
    /// Connects to the cluster behind `endpoints` (all of them are used) and keeps the store
    /// under `prefix`, creating its store id on first use.
    pub async fn connect(endpoints: &[String], prefix: &str) -> StoreResult<EtcdStore> {
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable(
                "no etcd endpoints given".to_string(),
            ));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            // etcd answers pings without an open stream with GOAWAY ("too many pings").
            .with_keep_alive_while_idle(false);
        let client =
            tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(endpoints, Some(options)))
                .await
                .map_err(|_| StoreError::Unavailable("etcd connect: timed out".to_string()))?
                .map_err(|e| StoreError::Unavailable(format!("etcd connect: {e}")))?;
        let inner = Arc::new(Inner {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
            keys: Keys::new(prefix),
            write_lock: Mutex::new(()),
            announcer: Announcer {
                tx: watch::channel(0).0,
                last_etcd_revision: Mutex::new(0),
            },
        });
        inner.ensure_store_id().await?;
        let seen = inner.resync().await?;
        let follower = tokio::spawn(inner.clone().follow(seen));
        Ok(EtcdStore { inner, follower })
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and records

struct Keys {
    root: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            root: prefix.trim_end_matches('/').to_string(),
        }
    }

    fn revision(&self) -> String {
        format!("{}/meta/revision", self.root)
    }

    fn store_id(&self) -> String {
        format!("{}/meta/store_id", self.root)
    }

    fn resources(&self) -> String {
        format!("{}/resources/", self.root)
    }

    fn resources_of(&self, kind: ResourceKind) -> String {
        format!("{}/resources/{kind}/", self.root)
    }

    fn resource(&self, kind: ResourceKind, id: &str) -> String {
        format!("{}/resources/{kind}/{}", self.root, escape(id))
    }

    /// The prefix of every reference to `kind/id`.
    fn refs_to(&self, kind: ResourceKind, id: &str) -> String {
        format!("{}/refs/{kind}/{}/", self.root, escape(id))
    }

    fn reference(&self, from_kind: ResourceKind, from_id: &str, r: &RefRecord) -> String {
        format!(
            "{}{from_kind}/{}/{}",
            self.refs_to(r.kind, &r.id),
            escape(from_id),
            escape(&r.field)
        )
    }

    fn credential(&self, c: &ClaimRecord) -> String {
        format!(
            "{}/credentials/{}/{}",
            self.root,
            escape(&c.plugin),
            escape(&c.digest)
        )
    }

    fn history(&self) -> String {
        format!("{}/history/", self.root)
    }

    fn history_at(&self, revision: u64) -> String {
        format!("{}/history/{revision:020}", self.root)
    }

    /// Change `seq` of the replace that made `revision` (sorts after `history_at(revision)`
    /// and before `history_at(revision + 1)`).
    fn history_entry(&self, revision: u64, seq: usize) -> String {
        format!("{}/history/{revision:020}/{seq:06}", self.root)
    }
}

/// One key segment: no `/` inside, and distinct ids stay distinct.
fn escape(segment: &str) -> String {
    segment.replace('%', "%25").replace('/', "%2F")
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// A resource as stored under `resources/<kind>/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResourceRecord {
    kind: ResourceKind,
    id: String,
    value: Value,
    create_revision: u64,
    mod_revision: u64,
    created_at: i64,
    updated_at: i64,
    /// Its references, so the next write knows which `refs/` keys to remove.
    #[serde(default)]
    refs: Vec<RefRecord>,
    /// Its credentials, so the next write knows which `credentials/` keys to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    claims: Vec<ClaimRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClaimRecord {
    plugin: String,
    digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RefRecord {
    field: String,
    kind: ResourceKind,
    id: String,
}

impl From<ResourceRecord> for StoredResource {
    fn from(r: ResourceRecord) -> StoredResource {
        StoredResource {
            kind: r.kind,
            id: r.id,
            value: r.value,
            create_revision: r.create_revision,
            mod_revision: r.mod_revision,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// One history entry as stored under `history/<revision>`.
#[derive(Debug, Serialize, Deserialize)]
struct HistoryRecord {
    revision: u64,
    at: i64,
    kind: ResourceKind,
    id: String,
    /// `put` or `delete`.
    op: String,
    before: Option<Value>,
    after: Option<Value>,
    actor: Option<String>,
}

fn decode_resource(kv: &KeyValue) -> StoreResult<ResourceRecord> {
    serde_json::from_slice(kv.value()).map_err(|e| {
        StoreError::Corrupt(format!(
            "{}: not a resource record: {e}",
            String::from_utf8_lossy(kv.key())
        ))
    })
}

fn decode_history(kv: &KeyValue) -> StoreResult<HistoryEntry> {
    let key = String::from_utf8_lossy(kv.key());
    let h: HistoryRecord = serde_json::from_slice(kv.value())
        .map_err(|e| StoreError::Corrupt(format!("{key}: not a history record: {e}")))?;
    let own_key = format!("/{:020}", h.revision);
    let seq_key = key.rsplit_once('/').filter(|(rest, seq)| {
        rest.ends_with(&own_key) && seq.len() == 6 && seq.bytes().all(|b| b.is_ascii_digit())
    });
    if !key.ends_with(&own_key) && seq_key.is_none() {
        return Err(StoreError::Corrupt(format!(
            "{key}: holds revision {}",
            h.revision
        )));
    }
    let op = match h.op.as_str() {
        "put" => HistoryOp::Put,
        "delete" => HistoryOp::Delete,
        other => {
            return Err(StoreError::Corrupt(format!("{key}: unknown op '{other}'")));
        }
    };
    Ok(HistoryEntry {
        revision: h.revision,
        at: h.at,
        kind: h.kind,
        id: h.id,
        op,
        before: h.before,
        after: h.after,
        actor: h.actor,
    })
}

/// The counter and its etcd `mod_revision` (both 0 when it does not exist yet).
fn decode_counter(kv: Option<&KeyValue>) -> StoreResult<(u64, i64)> {
    let Some(kv) = kv else {
        return Ok((0, 0));
    };
    let value = parse_counter(kv.value())?;
    Ok((value, kv.mod_revision()))
}

fn parse_counter(bytes: &[u8]) -> StoreResult<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "meta/revision is not a number: {:?}",
                String::from_utf8_lossy(bytes)
            ))
        })
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn random_hex() -> StoreResult<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Unavailable(format!("no OS randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether a failed call may simply be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, and writes guarded so that a second application changes nothing: retried on any
    /// `UNAVAILABLE` answer.
    Safe,
    /// A write that must not apply twice: retried only when it never left this process.
    IfNotSent,
}

/// Runs one etcd call, sent again while it fails in a way `retry` allows, within
/// [`REQUEST_TIMEOUT`] in all; every failure is `Unavailable`. Retrying matters with several
/// endpoints: the client's balancer keeps handing requests to a dead endpoint, which fails them
/// with a connect error rather than passing them to a live one.
async fn call<T, F, Fut>(what: &str, retry: Retry, mut request: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut pause = Duration::from_millis(10);
    loop {
        let error = match tokio::time::timeout_at(deadline, request()).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd {what}: no answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )));
            }
        };
        let again = match &error {
            etcd_client::Error::GRpcStatus(status) => match retry {
                Retry::Safe => status.code() == tonic::Code::Unavailable,
                Retry::IfNotSent => never_sent(status),
            },
            _ => false,
        };
        if !again || tokio::time::Instant::now() + pause >= deadline {
            return Err(StoreError::Unavailable(format!("etcd {what}: {error}")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The call failed while connecting, so the request did not reach etcd.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The answers of a transaction made only of reads, in order.
fn read_answers(resp: &TxnResponse, expected: usize) -> StoreResult<Vec<GetResponse>> {
    let answers = resp
        .op_responses()
        .into_iter()
        .map(|op| match op {
            TxnOpResponse::Get(get) => Ok(get),
            other => Err(StoreError::Corrupt(format!(
                "etcd answered a read with {other:?}"
            ))),
        })
        .collect::<StoreResult<Vec<_>>>()?;
    if answers.len() != expected {
        return Err(StoreError::Corrupt(format!(
            "etcd answered {} of {expected} reads",
            answers.len()
        )));
    }
    Ok(answers)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> StoreResult<i64> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Corrupt("etcd answered without a header".to_string()))
}

fn check_mod_revision(
    kind: ResourceKind,
    id: &str,
    expected: u64,
    current: &Option<ResourceRecord>,
) -> StoreResult<()> {
    let actual = current.as_ref().map(|c| c.mod_revision);
    if actual == Some(expected) {
        Ok(())
    } else {
        Err(StoreError::PreconditionFailed {
            kind,
            id: id.to_string(),
            expected,
            actual,
        })
    }
}

/// A short, growing, jittered pause before a write retries.
async fn backoff(attempt: u32) {
    let ceiling = 2 * u64::from(attempt.min(10));
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=ceiling.max(2)))).await;
}

// ---------------------------------------------------------------------------------------------
// Announcing revisions

/// Publishes the counter, from own commits, the watch and re-reads, in etcd order.
struct Announcer {
    tx: watch::Sender<u64>,
    /// The etcd revision of the newest published observation. Held across a re-read, so a re-read
    /// never sees an older state than one already published (reads are linearizable).
    last_etcd_revision: Mutex<i64>,
}

impl Announcer {
    /// The counter was `value` at etcd revision `etcd_revision`; older news is ignored.
    async fn observed(&self, value: u64, etcd_revision: i64) {
        let mut last = self.last_etcd_revision.lock().await;
        if etcd_revision > *last {
            *last = etcd_revision;
            self.set(value);
        }
    }

    /// Notifies only on a change: a re-read that finds nothing new wakes no one.
    fn set(&self, value: u64) {
        self.tx.send_if_modified(|current| {
            let changed = *current != value;
            *current = value;
            changed
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Reads and writes

/// What a put checks, read at one etcd revision.
struct PutView {
    counter: u64,
    counter_mod: i64,
    current: Option<ResourceRecord>,
    /// Whether each of the request's references exists, in order.
    targets_exist: Vec<bool>,
    /// Who holds each of the request's credentials (`kind/id`), in order.
    claim_holders: Vec<Option<String>>,
}

/// What a delete checks, read at one etcd revision.
struct DeleteView {
    counter: u64,
    counter_mod: i64,
    current: Option<ResourceRecord>,
    /// `kind/id` of every other resource referencing it.
    referrers: BTreeSet<String>,
}

impl Inner {
    async fn get(
        &self,
        what: &str,
        key: String,
        options: Option<GetOptions>,
    ) -> StoreResult<GetResponse> {
        call(what, Retry::Safe, || {
            let (mut kv, key, options) = (self.kv.clone(), key.clone(), options.clone());
            async move { kv.get(key, options).await }
        })
        .await
    }

    async fn txn(&self, what: &str, retry: Retry, txn: Txn) -> StoreResult<TxnResponse> {
        call(what, retry, || {
            let (mut kv, txn) = (self.kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// Creates the store id unless there is one; returns the one in force.
    async fn ensure_store_id(&self) -> StoreResult<String> {
        let key = self.keys.store_id();
        for _ in 0..3 {
            let fresh = random_hex()?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), fresh.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            // Guarded by the compare: sending it twice cannot create two ids.
            let resp = self.txn("create store id", Retry::Safe, txn).await?;
            if resp.succeeded() {
                return Ok(fresh);
            }
            let answers = read_answers(&resp, 1)?;
            if let Some(kv) = answers[0].kvs().first() {
                return decode_store_id(kv);
            }
            // Deleted between the compare and the read: try again.
        }
        Err(StoreError::Unavailable(
            "the store id keeps disappearing".to_string(),
        ))
    }

    /// The counter with the etcd revision it was read at.
    async fn read_counter(&self) -> StoreResult<(u64, i64)> {
        let resp = self.get("get revision", self.keys.revision(), None).await?;
        let (value, _) = decode_counter(resp.kvs().first())?;
        Ok((value, header_revision(resp.header())?))
    }

    /// Re-reads the counter and publishes it, even if it went back (the store was wiped).
    /// Returns the etcd revision it was read at.
    async fn resync(&self) -> StoreResult<i64> {
        let mut last = self.announcer.last_etcd_revision.lock().await;
        let (value, etcd_revision) = self.read_counter().await?;
        *last = etcd_revision;
        self.announcer.set(value);
        Ok(etcd_revision)
    }

    /// Runs until aborted: follows `meta/revision` with a watch from after etcd revision `seen`,
    /// re-reads it every [`POLL_INTERVAL`], and after any loss of the watch re-reads before
    /// watching again from the revision of that read, so no change is missed.
    async fn follow(self: Arc<Self>, mut seen: i64) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.watch_from(seen).await {
                Ok(reason) => tracing::debug!(%reason, "etcd watch ended; re-reading"),
                Err(e) => tracing::warn!(error = %e, "etcd watch failed; re-reading"),
            }
            loop {
                match self.resync().await {
                    Ok(revision) => {
                        seen = revision;
                        delay = Duration::from_millis(100);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-read the etcd store revision");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RETRY_DELAY);
                    }
                }
            }
            // A watch that keeps breaking right away is not retried in a tight loop.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(10..=100))).await;
        }
    }

    /// One watch on the counter from etcd revision `seen + 1`, until it is lost or cancelled
    /// (returned as `Ok(reason)`) or a call fails.
    async fn watch_from(&self, seen: i64) -> StoreResult<String> {
        let options = WatchOptions::new().with_start_revision(seen + 1);
        let key = self.keys.revision();
        let mut stream = call("watch", Retry::Safe, || {
            let (mut client, key, options) = (self.watch.clone(), key.clone(), options.clone());
            async move { client.watch(key, Some(options)).await }
        })
        .await?;
        let mut poll =
            tokio::time::interval_at(tokio::time::Instant::now() + POLL_INTERVAL, POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The etcd revision up to which this watch has reported.
        let mut progress = seen;
        loop {
            tokio::select! {
                message = stream.message() => {
                    let resp = match message {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Ok("the stream ended".to_string()),
                        Err(e) => return Err(StoreError::Unavailable(format!("etcd watch: {e}"))),
                    };
                    if resp.canceled() {
                        return Ok(format!(
                            "cancelled (compacted at {}): {}",
                            resp.compact_revision(),
                            resp.cancel_reason()
                        ));
                    }
                    if let Some(header) = resp.header() {
                        progress = progress.max(header.revision());
                    }
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        let value = match event.event_type() {
                            EventType::Put => parse_counter(kv.value())?,
                            // Deleted: the store was wiped.
                            EventType::Delete => 0,
                        };
                        progress = progress.max(kv.mod_revision());
                        self.announcer.observed(value, kv.mod_revision()).await;
                    }
                }
                _ = poll.tick() => {
                    let revision = self.resync().await?;
                    if revision < progress {
                        // etcd's own revisions went back: another cluster (or a restored one)
                        // answers now, and this watch would wait for revisions it never reaches.
                        return Ok(format!("etcd went back from revision {progress} to {revision}"));
                    }
                }
            }
        }
    }

    /// The write transaction: applies `ops` if the counter is still at `counter_mod`.
    /// `Some(etcd revision)` when it committed, `None` when another write came first.
    async fn commit(&self, counter_mod: i64, ops: Vec<TxnOp>) -> StoreResult<Option<i64>> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.keys.revision(),
                CompareOp::Equal,
                counter_mod,
            )])
            .and_then(ops);
        // A write applied but unanswered must not be sent again: its retry would fail the
        // compare and then apply the same change under the next revision.
        let resp = self.txn("write", Retry::IfNotSent, txn).await?;
        if resp.succeeded() {
            Ok(Some(header_revision(resp.header())?))
        } else {
            Ok(None)
        }
    }

    async fn read_for_put(
        &self,
        kind: ResourceKind,
        id: &str,
        references: &[OwnedReference],
        claims: &[ClaimRecord],
    ) -> StoreResult<PutView> {
        let mut ops = vec![
            TxnOp::get(self.keys.revision(), None),
            TxnOp::get(self.keys.resource(kind, id), None),
        ];
        for r in references {
            ops.push(TxnOp::get(
                self.keys.resource(r.kind, &r.id),
                Some(GetOptions::new().with_keys_only()),
            ));
        }
        for c in claims {
            ops.push(TxnOp::get(self.keys.credential(c), None));
        }
        let expected = ops.len();
        let resp = self
            .txn("read", Retry::Safe, Txn::new().and_then(ops))
            .await?;
        let answers = read_answers(&resp, expected)?;
        let (counter, counter_mod) = decode_counter(answers[0].kvs().first())?;
        let current = answers[1].kvs().first().map(decode_resource).transpose()?;
        let (target_answers, claim_answers) = answers[2..].split_at(references.len());
        let targets_exist = target_answers.iter().map(|a| !a.kvs().is_empty()).collect();
        let claim_holders = claim_answers
            .iter()
            .map(|a| {
                a.kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect();
        Ok(PutView {
            counter,
            counter_mod,
            current,
            targets_exist,
            claim_holders,
        })
    }

    async fn read_for_delete(&self, kind: ResourceKind, id: &str) -> StoreResult<DeleteView> {
        let ops = vec![
            TxnOp::get(self.keys.revision(), None),
            TxnOp::get(self.keys.resource(kind, id), None),
            TxnOp::get(
                self.keys.refs_to(kind, id),
                Some(GetOptions::new().with_prefix()),
            ),
        ];
        let resp = self
            .txn("read", Retry::Safe, Txn::new().and_then(ops))
            .await?;
        let answers = read_answers(&resp, 3)?;
        let (counter, counter_mod) = decode_counter(answers[0].kvs().first())?;
        let current = answers[1].kvs().first().map(decode_resource).transpose()?;
        let own = format!("{kind}/{id}");
        let referrers = answers[2]
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            // A resource's references to itself go away with it, so they do not hold it.
            .filter(|from| *from != own)
            .collect();
        Ok(DeleteView {
            counter,
            counter_mod,
            current,
            referrers,
        })
    }

    async fn put(&self, req: PutRequest) -> StoreResult<WriteOutcome> {
        let PutRequest {
            kind,
            id,
            mut value,
            references,
            claims,
            precondition,
            actor,
        } = req;
        let claim_records: Vec<ClaimRecord> = claims
            .iter()
            .map(|c| ClaimRecord {
                plugin: c.plugin.to_string(),
                digest: c.digest.clone(),
            })
            .collect();
        let new_claim_keys: BTreeSet<String> = claim_records
            .iter()
            .map(|c| self.keys.credential(c))
            .collect();
        if let Value::Object(map) = &mut value {
            map.insert("id".to_string(), Value::String(id.clone()));
        }
        // The same reference listed twice is one key.
        let mut refs: Vec<RefRecord> = Vec::new();
        for r in &references {
            let record = RefRecord {
                field: r.field.to_string(),
                kind: r.kind,
                id: r.id.clone(),
            };
            if !refs.contains(&record) {
                refs.push(record);
            }
        }
        let new_ref_keys: BTreeSet<String> = refs
            .iter()
            .map(|r| self.keys.reference(kind, &id, r))
            .collect();

        let _writer = self.write_lock.lock().await;
        for attempt in 1..=MAX_WRITE_ATTEMPTS {
            let view = self
                .read_for_put(kind, &id, &references, &claim_records)
                .await?;
            match (precondition, &view.current) {
                (Precondition::None, _) | (Precondition::MustNotExist, None) => {}
                (Precondition::MustNotExist, Some(_)) => {
                    return Err(StoreError::AlreadyExists { kind, id });
                }
                (Precondition::ModRevision(expected), current) => {
                    check_mod_revision(kind, &id, expected, current)?
                }
            }
            if let Some((r, _)) = references
                .iter()
                .zip(&view.targets_exist)
                .find(|(_, exists)| !**exists)
            {
                return Err(StoreError::DanglingReference {
                    field: r.field,
                    kind: r.kind,
                    id: r.id.clone(),
                });
            }
            let own = format!("{kind}/{id}");
            if let Some((c, holder)) = claims
                .iter()
                .zip(&view.claim_holders)
                .find_map(|(c, h)| h.as_ref().filter(|h| **h != own).map(|h| (c, h)))
            {
                return Err(StoreError::CredentialTaken {
                    field: c.field,
                    plugin: c.plugin,
                    holder: holder.clone(),
                });
            }

            let revision = view
                .counter
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt("revision overflow".to_string()))?;
            let now = unix_now();
            let (create_revision, created_at) = match &view.current {
                Some(c) => (c.create_revision, c.created_at),
                None => (revision, now),
            };
            let record = ResourceRecord {
                kind,
                id: id.clone(),
                value: value.clone(),
                create_revision,
                mod_revision: revision,
                created_at,
                updated_at: now,
                refs: refs.clone(),
                claims: claim_records.clone(),
            };
            let history = HistoryRecord {
                revision,
                at: now,
                kind,
                id: id.clone(),
                op: "put".to_string(),
                before: view.current.as_ref().map(|c| c.value.clone()),
                after: Some(value.clone()),
                actor: actor.clone(),
            };
            let old_ref_keys: BTreeSet<String> = view
                .current
                .iter()
                .flat_map(|c| &c.refs)
                .map(|r| self.keys.reference(kind, &id, r))
                .collect();

            let mut ops = vec![
                TxnOp::put(self.keys.revision(), revision.to_string(), None),
                TxnOp::put(self.keys.resource(kind, &id), encode(&record)?, None),
                TxnOp::put(self.keys.history_at(revision), encode(&history)?, None),
            ];
            let from = format!("{kind}/{id}");
            // etcd refuses a transaction that touches a key twice: only the differences.
            for key in old_ref_keys.difference(&new_ref_keys) {
                ops.push(TxnOp::delete(key.as_str(), None));
            }
            for key in new_ref_keys.difference(&old_ref_keys) {
                ops.push(TxnOp::put(key.as_str(), from.as_str(), None));
            }
            let old_claim_keys: BTreeSet<String> = view
                .current
                .iter()
                .flat_map(|c| &c.claims)
                .map(|c| self.keys.credential(c))
                .collect();
            for key in old_claim_keys.difference(&new_claim_keys) {
                ops.push(TxnOp::delete(key.as_str(), None));
            }
            for key in new_claim_keys.difference(&old_claim_keys) {
                ops.push(TxnOp::put(key.as_str(), from.as_str(), None));
            }

            if let Some(etcd_revision) = self.commit(view.counter_mod, ops).await? {
                self.announcer.observed(revision, etcd_revision).await;
                return Ok(WriteOutcome {
                    revision,
                    created: view.current.is_none(),
                    resource: record.into(),
                });
            }
            backoff(attempt).await;
        }
        Err(contended())
    }

    async fn delete(&self, req: DeleteRequest) -> StoreResult<WriteOutcome> {
        let DeleteRequest {
            kind,
            id,
            precondition,
            actor,
        } = req;
        let _writer = self.write_lock.lock().await;
        for attempt in 1..=MAX_WRITE_ATTEMPTS {
            let view = self.read_for_delete(kind, &id).await?;
            if let Precondition::ModRevision(expected) = precondition {
                check_mod_revision(kind, &id, expected, &view.current)?;
            }
            let Some(current) = view.current else {
                return Err(StoreError::NotFound { kind, id });
            };
            if precondition == Precondition::MustNotExist {
                return Err(StoreError::AlreadyExists { kind, id });
            }
            if !view.referrers.is_empty() {
                let used_by = view.referrers.into_iter().take(IN_USE_LIMIT).collect();
                return Err(StoreError::InUse { kind, id, used_by });
            }

            let revision = view
                .counter
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt("revision overflow".to_string()))?;
            let history = HistoryRecord {
                revision,
                at: unix_now(),
                kind,
                id: id.clone(),
                op: "delete".to_string(),
                before: Some(current.value.clone()),
                after: None,
                actor: actor.clone(),
            };
            let mut ops = vec![
                TxnOp::put(self.keys.revision(), revision.to_string(), None),
                TxnOp::delete(self.keys.resource(kind, &id), None),
                TxnOp::put(self.keys.history_at(revision), encode(&history)?, None),
            ];
            let own_refs: BTreeSet<String> = current
                .refs
                .iter()
                .map(|r| self.keys.reference(kind, &id, r))
                .collect();
            for key in own_refs {
                ops.push(TxnOp::delete(key, None));
            }
            for c in &current.claims {
                ops.push(TxnOp::delete(self.keys.credential(c), None));
            }

            if let Some(etcd_revision) = self.commit(view.counter_mod, ops).await? {
                self.announcer.observed(revision, etcd_revision).await;
                return Ok(WriteOutcome {
                    revision,
                    resource: current.into(),
                    created: false,
                });
            }
            backoff(attempt).await;
        }
        Err(contended())
    }
}

impl Inner {
    /// A whole-config replace: the plan's writes as one etcd transaction (one counter move to one
    /// new revision, one history key per change under it), applied only if the counter did not
    /// move.
    /// etcd caps the operations per transaction (`--max-txn-ops`, 128 by default): a replace
    /// that changes more than that needs the cluster's limit raised.
    async fn replace(&self, req: ReplaceRequest) -> StoreResult<ReplaceOutcome> {
        let _writer = self.write_lock.lock().await;
        for attempt in 1..=MAX_WRITE_ATTEMPTS {
            let txn = Txn::new().and_then([
                TxnOp::get(self.keys.revision(), None),
                TxnOp::get(self.keys.resources(), Some(GetOptions::new().with_prefix())),
            ]);
            let resp = self.txn("read", Retry::Safe, txn).await?;
            let answers = read_answers(&resp, 2)?;
            let (counter, counter_mod) = decode_counter(answers[0].kvs().first())?;
            if let Some(expected) = req.expected_revision.filter(|e| *e != counter) {
                return Err(StoreError::RevisionMismatch {
                    expected,
                    actual: counter,
                });
            }
            let records = answers[1]
                .kvs()
                .iter()
                .map(decode_resource)
                .collect::<StoreResult<Vec<_>>>()?;
            let current: Vec<StoredResource> =
                records.iter().cloned().map(StoredResource::from).collect();
            let (writes, mut outcome) = plan_replace(&current, &req)?;
            outcome.revision = counter;
            if writes.is_empty() {
                return Ok(outcome);
            }
            let now = unix_now();
            let revision = counter
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt("revision overflow".to_string()))?;
            outcome.revision = revision;
            let mut ops = Vec::new();
            for (seq, write) in writes.into_iter().enumerate() {
                let (kind, id) = match &write {
                    Write::Put(p) => (p.kind, p.id.clone()),
                    Write::Delete(d) => (d.kind, d.id.clone()),
                };
                let old = records.iter().find(|r| r.kind == kind && r.id == id);
                let old_ref_keys: BTreeSet<String> = old
                    .iter()
                    .flat_map(|c| &c.refs)
                    .map(|r| self.keys.reference(kind, &id, r))
                    .collect();
                let (record, refs, after, op) = match write {
                    Write::Put(p) => {
                        let mut refs: Vec<RefRecord> = Vec::new();
                        for r in &p.references {
                            let record = RefRecord {
                                field: r.field.to_string(),
                                kind: r.kind,
                                id: r.id.clone(),
                            };
                            if !refs.contains(&record) {
                                refs.push(record);
                            }
                        }
                        let (create_revision, created_at) = match old {
                            Some(c) => (c.create_revision, c.created_at),
                            None => (revision, now),
                        };
                        let record = ResourceRecord {
                            kind,
                            id: id.clone(),
                            value: p.value.clone(),
                            create_revision,
                            mod_revision: revision,
                            created_at,
                            updated_at: now,
                            refs: refs.clone(),
                            claims: p
                                .claims
                                .iter()
                                .map(|c| ClaimRecord {
                                    plugin: c.plugin.to_string(),
                                    digest: c.digest.clone(),
                                })
                                .collect(),
                        };
                        (Some(record), refs, Some(p.value), "put")
                    }
                    Write::Delete(_) => (None, Vec::new(), None, "delete"),
                };
                let history = HistoryRecord {
                    revision,
                    at: now,
                    kind,
                    id: id.clone(),
                    op: op.to_string(),
                    before: old.map(|c| c.value.clone()),
                    after,
                    actor: req.actor.clone(),
                };
                match &record {
                    Some(record) => ops.push(TxnOp::put(
                        self.keys.resource(kind, &id),
                        encode(record)?,
                        None,
                    )),
                    None => ops.push(TxnOp::delete(self.keys.resource(kind, &id), None)),
                }
                ops.push(TxnOp::put(
                    self.keys.history_entry(revision, seq),
                    encode(&history)?,
                    None,
                ));
                let new_ref_keys: BTreeSet<String> = refs
                    .iter()
                    .map(|r| self.keys.reference(kind, &id, r))
                    .collect();
                let from = format!("{kind}/{id}");
                for key in old_ref_keys.difference(&new_ref_keys) {
                    ops.push(TxnOp::delete(key.as_str(), None));
                }
                for key in new_ref_keys.difference(&old_ref_keys) {
                    ops.push(TxnOp::put(key.as_str(), from.as_str(), None));
                }
            }
            // Credentials: the set replaces everything, so the credential keys become exactly
            // the desired set's (each key touched once, as etcd requires).
            let holders = |claims: Vec<(String, String)>| -> BTreeMap<String, String> {
                claims.into_iter().collect()
            };
            let old_claims = holders(
                records
                    .iter()
                    .flat_map(|r| {
                        let from = format!("{}/{}", r.kind, r.id);
                        r.claims
                            .iter()
                            .map(move |c| (self.keys.credential(c), from.clone()))
                    })
                    .collect(),
            );
            let new_claims = holders(
                req.resources
                    .iter()
                    .flat_map(|item| {
                        let from = format!("{}/{}", item.kind, item.id);
                        item.claims.iter().map(move |c| {
                            let record = ClaimRecord {
                                plugin: c.plugin.to_string(),
                                digest: c.digest.clone(),
                            };
                            (self.keys.credential(&record), from.clone())
                        })
                    })
                    .collect(),
            );
            for key in old_claims.keys().filter(|k| !new_claims.contains_key(*k)) {
                ops.push(TxnOp::delete(key.as_str(), None));
            }
            for (key, holder) in &new_claims {
                if old_claims.get(key) != Some(holder) {
                    ops.push(TxnOp::put(key.as_str(), holder.as_str(), None));
                }
            }
            ops.push(TxnOp::put(
                self.keys.revision(),
                outcome.revision.to_string(),
                None,
            ));
            let op_count = ops.len();
            let committed = match self.commit(counter_mod, ops).await {
                Err(StoreError::Unavailable(m)) if m.contains("too many operations") => {
                    return Err(StoreError::Unavailable(format!(
                        "this replace needs {op_count} operations in one etcd transaction, more \
                         than the cluster's --max-txn-ops allows (128 by default): raise it, \
                         or apply the change in smaller steps ({m})"
                    )));
                }
                other => other?,
            };
            if let Some(etcd_revision) = committed {
                self.announcer
                    .observed(outcome.revision, etcd_revision)
                    .await;
                return Ok(outcome);
            }
            backoff(attempt).await;
        }
        Err(contended())
    }
}

fn contended() -> StoreError {
    StoreError::Unavailable(format!(
        "etcd write lost to other writers {MAX_WRITE_ATTEMPTS} times in a row"
    ))
}

fn decode_store_id(kv: &KeyValue) -> StoreResult<String> {
    kv.value_str()
        .map(str::to_string)
        .map_err(|e| StoreError::Corrupt(format!("meta/store_id is not text: {e}")))
}

#[async_trait]
impl ConfigStore for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn revision(&self) -> StoreResult<u64> {
        Ok(self.inner.read_counter().await?.0)
    }

    async fn store_id(&self) -> StoreResult<String> {
        let inner = &self.inner;
        let resp = inner
            .get("get store id", inner.keys.store_id(), None)
            .await?;
        match resp.kvs().first() {
            Some(kv) => decode_store_id(kv),
            // Wiped under us: the store starts a new life with a new id.
            None => inner.ensure_store_id().await,
        }
    }

    async fn get(&self, kind: ResourceKind, id: &str) -> StoreResult<Option<StoredResource>> {
        let inner = &self.inner;
        let resp = inner
            .get("get", inner.keys.resource(kind, id), None)
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(decode_resource)
            .transpose()?
            .map(StoredResource::from))
    }

    async fn list(&self, kind: ResourceKind) -> StoreResult<Vec<StoredResource>> {
        let inner = &self.inner;
        let options = GetOptions::new().with_prefix();
        let resp = inner
            .get("list", inner.keys.resources_of(kind), Some(options))
            .await?;
        let mut resources = resp
            .kvs()
            .iter()
            .map(|kv| decode_resource(kv).map(StoredResource::from))
            .collect::<StoreResult<Vec<_>>>()?;
        // Escaping can change the order of ids holding `%` or `/`.
        resources.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(resources)
    }

    async fn snapshot(&self) -> StoreResult<StoreSnapshot> {
        let inner = &self.inner;
        for _ in 0..3 {
            // One transaction: every read sees the same etcd revision.
            let txn = Txn::new().and_then([
                TxnOp::get(inner.keys.revision(), None),
                TxnOp::get(inner.keys.store_id(), None),
                TxnOp::get(
                    inner.keys.resources(),
                    Some(GetOptions::new().with_prefix()),
                ),
            ]);
            let resp = inner.txn("snapshot", Retry::Safe, txn).await?;
            let answers = read_answers(&resp, 3)?;
            let Some(store_id) = answers[1].kvs().first() else {
                inner.ensure_store_id().await?;
                continue;
            };
            let store_id = decode_store_id(store_id)?;
            let (revision, _) = decode_counter(answers[0].kvs().first())?;
            let mut resources = answers[2]
                .kvs()
                .iter()
                .map(|kv| decode_resource(kv).map(StoredResource::from))
                .collect::<StoreResult<Vec<_>>>()?;
            super::sort_resources(&mut resources);
            return Ok(StoreSnapshot {
                store_id,
                revision,
                resources,
            });
        }
        Err(StoreError::Unavailable(
            "the store id keeps disappearing".to_string(),
        ))
    }

    async fn changes_since(&self, after: u64) -> StoreResult<Option<StoreChanges>> {
        let inner = &self.inner;
        let Some(next) = after.checked_add(1).filter(|_| after > 0) else {
            return Ok(None);
        };
        // Which resources the history says were written since. (A range filtered by etcd
        // `mod_revision` would do in one read, but etcd reads every value of the range to
        // filter it: 30 ms at 10,000 routes.)
        let history = inner
            .get(
                "changes",
                inner.keys.history_at(next),
                Some(GetOptions::new().with_range(prefix_end(&inner.keys.history()))),
            )
            .await?;
        let mut touched = BTreeSet::new();
        let mut last = after;
        for kv in history.kvs() {
            let h = decode_history(kv)?;
            last = last.max(h.revision);
            touched.insert((h.kind, h.id));
            if touched.len() > MAX_CHANGES_READ {
                return Ok(None);
            }
        }
        let touched: Vec<(ResourceKind, String)> = touched.into_iter().collect();
        // Those resources as they are now, in one transaction with the revision they are at.
        let mut reads = vec![
            TxnOp::get(inner.keys.revision(), None),
            TxnOp::get(inner.keys.store_id(), None),
            TxnOp::get(
                inner.keys.resources(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        ];
        reads.extend(
            touched
                .iter()
                .map(|(kind, id)| TxnOp::get(inner.keys.resource(*kind, id), None)),
        );
        let resp = inner
            .txn("changes", Retry::Safe, Txn::new().and_then(reads))
            .await?;
        let answers = read_answers(&resp, 3 + touched.len())?;
        let (revision, _) = decode_counter(answers[0].kvs().first())?;
        let Some(store_id) = answers[1].kvs().first() else {
            return Ok(None);
        };
        if revision != last {
            // A write landed between the two reads (or the history misses one): read whole.
            return Ok(None);
        }
        let (mut changed, mut deleted) = (Vec::new(), Vec::new());
        for ((kind, id), answer) in touched.into_iter().zip(&answers[3..]) {
            match answer.kvs().first() {
                Some(kv) => changed.push(decode_resource(kv)?.into()),
                None => deleted.push((kind, id)),
            }
        }
        Ok(Some(StoreChanges {
            store_id: decode_store_id(store_id)?,
            revision,
            changed,
            deleted,
            count: u64::try_from(answers[2].count()).unwrap_or(0),
        }))
    }

    async fn put(&self, req: PutRequest) -> StoreResult<WriteOutcome> {
        run_detached({
            let inner = self.inner.clone();
            async move { inner.put(req).await }
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> StoreResult<WriteOutcome> {
        run_detached({
            let inner = self.inner.clone();
            async move { inner.delete(req).await }
        })
        .await
    }

    async fn replace_all(&self, req: ReplaceRequest) -> StoreResult<ReplaceOutcome> {
        let inner = self.inner.clone();
        match tokio::spawn(async move { inner.replace(req).await }).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Unavailable(format!("write task failed: {e}"))),
        }
    }

    async fn history(&self, after: u64, limit: u32) -> StoreResult<Vec<HistoryEntry>> {
        // etcd reads a limit of 0 as "no limit".
        let Some(first) = after.checked_add(1).filter(|_| limit > 0) else {
            return Ok(Vec::new());
        };
        let inner = &self.inner;
        let options = GetOptions::new()
            .with_range(prefix_end(&inner.keys.history()))
            .with_limit(i64::from(limit));
        let resp = inner
            .get("history", inner.keys.history_at(first), Some(options))
            .await?;
        let mut entries = resp
            .kvs()
            .iter()
            .map(decode_history)
            .collect::<StoreResult<Vec<_>>>()?;
        // A page never splits a replace: when it ends inside one revision's changes, the rest of
        // that revision comes too.
        if let (Some(last_kv), Some(last)) = (resp.kvs().last(), entries.last())
            && resp.more()
        {
            let revision_prefix = format!("{}/", inner.keys.history_at(last.revision));
            if last_kv.key().starts_with(revision_prefix.as_bytes()) {
                // The first key after the page's last one.
                let from = format!("{}\0", String::from_utf8_lossy(last_kv.key()));
                let rest = inner
                    .get(
                        "history",
                        from,
                        Some(GetOptions::new().with_range(prefix_end(&revision_prefix))),
                    )
                    .await?;
                for kv in rest.kvs() {
                    entries.push(decode_history(kv)?);
                }
            }
        }
        Ok(entries)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.announcer.tx.subscribe()
    }
}
