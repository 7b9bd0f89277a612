//! The embedded SQLite config store: one file, WAL journal, `synchronous=FULL`.
//!
//! Writers are serialised by a mutex in the store (SQLite has a single writer anyway) around
//! one connection of their own, and each runs in one `BEGIN IMMEDIATE` transaction, so the
//! revision read at its start cannot move under it. Readers use the pool's connections and,
//! thanks to WAL, never wait on writers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use postern_proto::model::ResourceKind;
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, Sqlite, SqliteConnection};
use tokio::sync::{Mutex, watch};

use crate::lock;

use super::sql::{
    HistoryRow, RowAccess, check_mod_revision, decode_changes, decode_history, decode_resource,
    encode, from_db, op_text, to_db,
};
use super::{
    ConfigStore, DeleteRequest, HistoryEntry, HistoryOp, OwnedClaim, OwnedReference, Precondition,
    PutRequest, StoreChanges, StoreError, StoreResult, StoreSnapshot, StoredResource, WriteOutcome,
};
use super::{
    ReplaceOutcome, ReplaceRequest, Write, WriteRevision, plan_replace, run_detached,
    sort_resources,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a statement waits on a lock held by another connection (or process) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent readers (snapshots, Admin API reads); writes have a connection of their own.
const MAX_CONNECTIONS: u32 = 4;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many referrers an `InUse` error names.
const IN_USE_LIMIT: i64 = 10;

const RESOURCE_COLUMNS: &str =
    "kind, id, body, create_revision, mod_revision, created_at, updated_at";

/// The SQLite [`ConfigStore`]. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    /// Serialises writers so they queue here instead of spinning on `SQLITE_BUSY`.
    writer: Mutex<Writer>,
    revision_tx: watch::Sender<u64>,
    /// What the last single write committed, for `changes_since` (see [`LastWrite`]).
    last_write: std::sync::Mutex<Option<LastWrite>>,
}

/// The changes one committed single write made, as `changes_since(base)` would read them back:
/// the snapshot builder asks exactly that after every write, and answering it from here saves
/// a read on a pool connection (a round trip to that connection's thread, its locks and page
/// reads) per Admin API write. Revisions only move forward and each is one transaction, so this
/// stays true of revision `base + 1` whatever is written after it; but it answers only while
/// it is the latest revision announced (a later write replaces it; after a replace, which
/// records nothing, the database answers), and any other `after` reads the database.
struct LastWrite {
    base: u64,
    changes: StoreChanges,
}

/// The connection every write goes through, and what the last write left on it.
///
/// A single write begins its transaction in its first statement and commits it in its last
/// (`fetch_for_write`, `record_write`), rather than by sqlx's `begin` and `commit`: each
/// query is a round trip to the connection's thread, and sqlx's `BEGIN` and `COMMIT` each wait
/// for an acknowledgement on top. Folding them in saved about a tenth of the control plane's
/// CPU per Admin API write (bench/results/2026-12-01-session19.md). Without sqlx's
/// `Transaction` to roll back on drop, this struct keeps the connection out of an open
/// transaction instead.
struct Writer {
    options: SqliteConnectOptions,
    /// `None` before the first write, after `close`, or after a failed write whose transaction
    /// could not be rolled back (a fresh connection is cheaper than a wedged writer).
    conn: Option<SqliteConnection>,
    closed: bool,
    /// A write began and has not ended (it panicked): its transaction may still be open.
    in_doubt: bool,
}

impl Writer {
    /// The connection, for one write, with no transaction left open by an earlier one.
    async fn begin_write(&mut self) -> StoreResult<&mut SqliteConnection> {
        if self.closed {
            return Err(StoreError::Unavailable(
                "the config store is closed".to_string(),
            ));
        }
        if self.in_doubt {
            self.roll_back().await;
        }
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.options.connect().await.map_err(db_err)?,
        };
        self.in_doubt = true;
        Ok(self.conn.insert(conn))
    }

    /// The write committed (or never began a transaction).
    fn end_write(&mut self) {
        self.in_doubt = false;
    }

    /// The write failed after `begin_write`: rolls back whatever it left open. Explicitly, so
    /// the write lock is released only once SQLite's own lock is, and the next writer does not
    /// hit `SQLITE_BUSY`.
    async fn roll_back(&mut self) {
        self.in_doubt = false;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
            // Usually nothing was open (the write failed at its `BEGIN`); but a connection in a
            // state we cannot tell is replaced rather than trusted.
            tracing::debug!(error = %e, "config store rollback failed; reconnecting the writer");
            self.conn = None;
        }
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) and migrates the store at `path`.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL fsyncs the WAL on every commit: an acknowledged write survives a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // No ping before each use: a connection is a file handle in this process that
            // nothing closes between uses, and the ping is a round trip to its thread.
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        MIGRATOR.run(&pool).await.map_err(|e| {
            StoreError::Unavailable(format!("cannot migrate {}: {e}", path.display()))
        })?;
        let revision = {
            let mut conn = pool.acquire().await.map_err(db_err)?;
            read_revision(&mut conn).await?
        };
        let (revision_tx, _) = watch::channel(revision);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                pool,
                writer: Mutex::new(Writer {
                    options,
                    conn: None,
                    closed: false,
                    in_doubt: false,
                }),
                revision_tx,
                last_write: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Closes the connections (checkpointing the WAL); later calls fail with `Unavailable`.
    pub async fn close(&self) {
        let writer = {
            let mut writer = self.inner.writer.lock().await;
            writer.closed = true;
            writer.conn.take()
        };
        if let Some(conn) = writer
            && let Err(e) = conn.close().await
        {
            tracing::warn!(error = %e, "closing the config store's writer failed");
        }
        self.inner.pool.close().await;
    }

    /// `changes_since` read from the database.
    pub(super) async fn read_changes_since(&self, after: u64) -> StoreResult<Option<StoreChanges>> {
        let Ok(after) = i64::try_from(after) else {
            return Ok(None);
        };
        // One statement reads one consistent state without a transaction, in one round trip to
        // the connection's thread (a transaction of three reads took five, on every config
        // change). Its rows, told apart by `part`: 0 the meta row, 1 the resources changed since
        // (they carry a newer, indexed `mod_revision`), 2 the deletions since (only in the
        // history).
        let rows = sqlx::query(
            "SELECT 0 AS part, NULL AS kind, NULL AS id, NULL AS body, \
                    NULL AS create_revision, NULL AS mod_revision, NULL AS created_at, \
                    NULL AS updated_at, store_id, revision, \
                    (SELECT COUNT(*) FROM resources) AS resources \
             FROM meta WHERE id = 1 \
             UNION ALL \
             SELECT 1, kind, id, body, create_revision, mod_revision, created_at, updated_at, \
                    NULL, NULL, NULL \
             FROM resources WHERE mod_revision > ?1 \
             UNION ALL \
             SELECT DISTINCT 2, kind, id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
             FROM history WHERE revision > ?1 AND op = 'delete'",
        )
        .bind(after)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(db_err)?;
        let (mut meta, mut changed, mut deleted) = (None, Vec::new(), Vec::new());
        for row in rows {
            match column::<i64>(&row, "part")? {
                0 => meta = Some(row),
                1 => changed.push(row),
                _ => deleted.push(row),
            }
        }
        let meta = meta.ok_or_else(|| StoreError::Corrupt("the meta row is missing".into()))?;
        let revision = from_db(column(&meta, "revision")?, "meta.revision")?;
        let count = column(&meta, "resources")?;
        decode_changes(
            column(&meta, "store_id")?,
            revision,
            &changed,
            &deleted,
            count,
        )
        .map(Some)
    }

    /// The migrations up to and including `version`, to build a store as an older Postern left it.
    #[cfg(test)]
    pub(super) fn migrator_upto(version: i64) -> Migrator {
        let mut migrator = sqlx::migrate!("../migrations/sqlite");
        migrator.migrations = MIGRATOR
            .migrations
            .iter()
            .filter(|m| m.version <= version)
            .cloned()
            .collect();
        migrator
    }

    /// The changes after `after` as the last single write recorded them, if it began there.
    #[cfg(test)]
    pub(super) fn recorded_changes(&self, after: u64) -> Option<StoreChanges> {
        self.inner.recorded_changes(after)
    }

    #[cfg(test)]
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Runs `sql` on the writers' connection as a write that then dies without ending (as a
    /// panic mid-write would leave it).
    #[cfg(test)]
    pub(super) async fn abandon_write(&self, sql: &str) {
        let mut writer = self.inner.writer.lock().await;
        let conn = writer.begin_write().await.expect("the writer's connection");
        sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .expect("the abandoned write's statements");
    }
}

impl Inner {
    /// One write in one transaction (begun and committed by its own statements, see
    /// [`Writer`]); announced after commit.
    async fn write(&self, write: Write) -> StoreResult<WriteOutcome> {
        let mut writer = self.writer.lock().await;
        let conn = writer.begin_write().await?;
        let is_delete = matches!(write, Write::Delete(_));
        let result = match write {
            Write::Put(req) => put_in(conn, req, WriteRevision::Next).await,
            Write::Delete(req) => delete_in(conn, req, WriteRevision::Next).await,
        };
        match result {
            Ok((outcome, found)) => {
                writer.end_write();
                if let Some(found) = found {
                    self.record_last_write(&outcome, found, is_delete);
                }
                // Still under the write lock, so announcements are in revision order (and come
                // after the write's record).
                self.revision_tx.send_replace(outcome.revision);
                Ok(outcome)
            }
            Err(e) => {
                writer.roll_back().await;
                Err(e)
            }
        }
    }

    fn record_last_write(&self, outcome: &WriteOutcome, found: StoreFound, is_delete: bool) {
        let r = &outcome.resource;
        let (changed, deleted, count) = if is_delete {
            // A delete's outcome is the resource as it was.
            (Vec::new(), vec![(r.kind, r.id.clone())], found.count - 1)
        } else {
            let count = found.count + u64::from(outcome.created);
            (vec![r.clone()], Vec::new(), count)
        };
        let record = LastWrite {
            base: outcome.revision - 1,
            changes: StoreChanges {
                store_id: found.store_id,
                revision: outcome.revision,
                changed,
                deleted,
                count,
            },
        };
        *lock(&self.last_write) = Some(record);
    }

    /// The changes after `after` when they are the last single write's (see [`LastWrite`]) and
    /// nothing was announced after it: a reader that already saw a later revision (a replace
    /// records nothing) must get that one, or it would wait for the next re-read.
    fn recorded_changes(&self, after: u64) -> Option<StoreChanges> {
        let announced = *self.revision_tx.borrow();
        lock(&self.last_write)
            .as_ref()
            .filter(|w| w.base == after && w.changes.revision == announced)
            .map(|w| w.changes.clone())
    }

    /// A whole-config replace: every write of the plan in one transaction, announced once.
    async fn replace(&self, req: ReplaceRequest) -> StoreResult<ReplaceOutcome> {
        let mut writer = self.writer.lock().await;
        let conn = writer.begin_write().await?;
        let result = match conn.begin_with("BEGIN IMMEDIATE").await {
            Ok(mut tx) => match replace_in(&mut tx, &req).await {
                Ok(outcome) => tx.commit().await.map(|()| outcome).map_err(db_err),
                Err(e) => {
                    rollback(tx).await;
                    Err(e)
                }
            },
            Err(e) => Err(db_err(e)),
        };
        // sqlx's `Transaction` ended what it began (a failed commit or rollback is rolled back
        // when it drops, before the connection's next statement).
        writer.end_write();
        let outcome = result?;
        self.revision_tx.send_replace(outcome.revision);
        Ok(outcome)
    }
}

async fn replace_in(
    conn: &mut SqliteConnection,
    req: &ReplaceRequest,
) -> StoreResult<ReplaceOutcome> {
    let actual = read_revision(conn).await?;
    if let Some(expected) = req.expected_revision.filter(|e| *e != actual) {
        return Err(StoreError::RevisionMismatch { expected, actual });
    }
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources");
    let rows = sqlx::query(&sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    let current = rows
        .iter()
        .map(decode_resource)
        .collect::<StoreResult<Vec<_>>>()?;
    let (writes, mut outcome) = plan_replace(&current, req)?;
    // Credentials may move between the resources written here (a key handed from a deleted
    // consumer to a new one, or swapped between two): release every one they hold first; each
    // put then claims its own again, and a clash with an untouched resource is still refused.
    for write in &writes {
        let (kind, id) = match write {
            Write::Put(p) => (p.kind, p.id.as_str()),
            Write::Delete(d) => (d.kind, d.id.as_str()),
        };
        sqlx::query("DELETE FROM credentials WHERE kind = ? AND id = ?")
            .bind(kind.as_str())
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    outcome.revision = actual;
    if writes.is_empty() {
        return Ok(outcome);
    }
    outcome.revision = bump_revision(conn).await?;
    let at = unix_now();
    for (seq, write) in (0u32..).zip(writes) {
        let rev = WriteRevision::Shared {
            revision: outcome.revision,
            at,
            seq,
        };
        match write {
            Write::Put(req) => put_in(conn, req, rev).await?,
            Write::Delete(req) => delete_in(conn, req, rev).await?,
        };
    }
    Ok(outcome)
}

/// Rolls back explicitly (rather than on drop) so the write lock is released only once SQLite's
/// own lock is, and the next writer does not hit `SQLITE_BUSY`.
async fn rollback(tx: sqlx::Transaction<'_, Sqlite>) {
    if let Err(e) = tx.rollback().await {
        // The connection rolls back when it is dropped or reused anyway; the caller's error is
        // the one that matters.
        tracing::warn!(error = %e, "config store rollback failed");
    }
}

async fn put_in(
    conn: &mut SqliteConnection,
    req: PutRequest,
    rev: WriteRevision,
) -> StoreResult<(WriteOutcome, Option<StoreFound>)> {
    let PutRequest {
        kind,
        id,
        mut value,
        references,
        claims,
        precondition,
        actor,
    } = req;
    let (current, stamp) = fetch_for_write(conn, kind, &id, rev).await?;
    match (precondition, &current) {
        (Precondition::None, _) | (Precondition::MustNotExist, None) => {}
        (Precondition::MustNotExist, Some(_)) => {
            return Err(StoreError::AlreadyExists { kind, id });
        }
        (Precondition::ModRevision(expected), _) => {
            check_mod_revision(kind, &id, expected, &current)?
        }
    }
    for r in &references {
        if !resource_exists(conn, r.kind, &r.id).await? {
            return Err(StoreError::DanglingReference {
                field: r.field,
                kind: r.kind,
                id: r.id.clone(),
            });
        }
    }
    check_claims(conn, kind, &id, &claims).await?;
    let (revision, now) = (stamp.revision, stamp.at);

    if let Value::Object(map) = &mut value {
        map.insert("id".to_string(), Value::String(id.clone()));
    }
    let body = encode(&value)?;
    let (create_revision, created_at) = match &current {
        Some(c) => (c.create_revision, c.created_at),
        None => (revision, now),
    };
    let db_revision = to_db(revision)?;
    let before = current.as_ref().map(|c| encode(&c.value)).transpose()?;
    let row = if current.is_some() {
        RowChange::Update
    } else {
        RowChange::Insert
    };
    record_write(
        conn,
        stamp.moves_revision,
        row,
        &references,
        &claims,
        HistoryRow {
            revision: db_revision,
            seq: stamp.seq,
            at: now,
            kind,
            id: &id,
            op: HistoryOp::Put,
            before: before.as_deref(),
            after: Some(&body),
            actor: actor.as_deref(),
        },
    )
    .await?;

    let outcome = WriteOutcome {
        revision,
        created: current.is_none(),
        resource: StoredResource {
            kind,
            id,
            value,
            create_revision,
            mod_revision: revision,
            created_at,
            updated_at: now,
        },
    };
    Ok((outcome, stamp.found))
}

async fn delete_in(
    conn: &mut SqliteConnection,
    req: DeleteRequest,
    rev: WriteRevision,
) -> StoreResult<(WriteOutcome, Option<StoreFound>)> {
    let DeleteRequest {
        kind,
        id,
        precondition,
        actor,
    } = req;
    let (current, stamp) = fetch_for_write(conn, kind, &id, rev).await?;
    if let Precondition::ModRevision(expected) = precondition {
        check_mod_revision(kind, &id, expected, &current)?;
    }
    let Some(current) = current else {
        return Err(StoreError::NotFound { kind, id });
    };
    if precondition == Precondition::MustNotExist {
        return Err(StoreError::AlreadyExists { kind, id });
    }

    // A resource's references to itself go away with it, so they do not hold it.
    let rows = sqlx::query(
        "SELECT DISTINCT from_kind, from_id FROM refs \
         WHERE to_kind = ? AND to_id = ? AND NOT (from_kind = ? AND from_id = ?) \
         ORDER BY from_kind, from_id LIMIT ?",
    )
    .bind(kind.as_str())
    .bind(&id)
    .bind(kind.as_str())
    .bind(&id)
    .bind(IN_USE_LIMIT)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    if !rows.is_empty() {
        let used_by = rows
            .iter()
            .map(|row| {
                let from_kind: String = column(row, "from_kind")?;
                let from_id: String = column(row, "from_id")?;
                Ok(format!("{from_kind}/{from_id}"))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        return Err(StoreError::InUse { kind, id, used_by });
    }

    let (revision, now) = (stamp.revision, stamp.at);
    let before = encode(&current.value)?;
    record_write(
        conn,
        stamp.moves_revision,
        RowChange::Delete,
        &[],
        &[],
        HistoryRow {
            revision: to_db(revision)?,
            seq: stamp.seq,
            at: now,
            kind,
            id: &id,
            op: HistoryOp::Delete,
            before: Some(&before),
            after: None,
            actor: actor.as_deref(),
        },
    )
    .await?;

    let outcome = WriteOutcome {
        revision,
        resource: current,
        created: false,
    };
    Ok((outcome, stamp.found))
}

/// The revision, time and history row number a write records.
struct Stamp {
    revision: u64,
    at: i64,
    seq: i64,
    /// The write moves the global revision to `revision` itself (a single write, which also
    /// began its transaction in `fetch_for_write` and commits it in `record_write`); false when
    /// it shares the one a replace moved to, inside the replace's transaction.
    moves_revision: bool,
    /// The store as a single write found it (`None` in a replace).
    found: Option<StoreFound>,
}

/// The store's id and resource count before a single write, read in its first statement.
struct StoreFound {
    store_id: String,
    count: u64,
}

/// The current row of `kind/id`, and the revision the write records. A single write begins its
/// transaction here and takes the store's revision + 1, read in the same query as the row;
/// `record_write` stores it with the write's other statements and commits (under
/// `BEGIN IMMEDIATE` no other writer can move it in between).
/// A replace's writes share the revision it moved to.
async fn fetch_for_write(
    conn: &mut SqliteConnection,
    kind: ResourceKind,
    id: &str,
    rev: WriteRevision,
) -> StoreResult<(Option<StoredResource>, Stamp)> {
    if let WriteRevision::Shared { revision, at, seq } = rev {
        let current = fetch_resource(conn, kind, id).await?;
        let stamp = Stamp {
            revision,
            at,
            seq: i64::from(seq),
            moves_revision: false,
            found: None,
        };
        return Ok((current, stamp));
    }
    // A single write's first statement: it also begins the write's transaction (`Writer`).
    let row = sqlx::query(
        "BEGIN IMMEDIATE; \
         SELECT m.revision AS store_revision, m.store_id, \
                (SELECT COUNT(*) FROM resources) AS resource_count, r.kind, r.id, r.body, \
                r.create_revision, r.mod_revision, r.created_at, r.updated_at \
         FROM meta m LEFT JOIN resources r ON r.kind = ? AND r.id = ? WHERE m.id = 1",
    )
    .bind(kind.as_str())
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?
    .ok_or_else(|| StoreError::Corrupt("the meta row is missing".to_string()))?;
    let store_revision: i64 = column(&row, "store_revision")?;
    let next = store_revision
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("the store's revision overflows".to_string()))?;
    let found: Option<String> = column(&row, "kind")?;
    let current = match found {
        Some(_) => Some(decode_resource(&row)?),
        None => None,
    };
    let stamp = Stamp {
        revision: from_db(next, "meta.revision")?,
        at: unix_now(),
        seq: 0,
        moves_revision: true,
        found: Some(StoreFound {
            store_id: column(&row, "store_id")?,
            count: from_db(column(&row, "resource_count")?, "resource count")?,
        }),
    };
    Ok((current, stamp))
}

/// Increments the global revision inside the caller's write transaction and returns the new one
/// (one statement: each is a round trip to the connection's thread).
async fn bump_revision(conn: &mut SqliteConnection) -> StoreResult<u64> {
    let row = sqlx::query(
        "UPDATE meta SET revision = revision + 1 WHERE id = 1 AND revision < ? RETURNING revision",
    )
    .bind(i64::MAX)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?
    .ok_or_else(|| {
        StoreError::Corrupt("the meta row is missing or its revision overflows".into())
    })?;
    from_db(column(&row, "revision")?, "meta.revision")
}

async fn read_store_id(conn: &mut SqliteConnection) -> StoreResult<String> {
    let row = sqlx::query("SELECT store_id FROM meta WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::Corrupt("the meta row is missing".to_string()))?;
    column(&row, "store_id")
}

async fn read_revision(conn: &mut SqliteConnection) -> StoreResult<u64> {
    let row = sqlx::query("SELECT revision FROM meta WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::Corrupt("the meta row is missing".to_string()))?;
    from_db(column(&row, "revision")?, "meta.revision")
}

async fn resource_exists(
    conn: &mut SqliteConnection,
    kind: ResourceKind,
    id: &str,
) -> StoreResult<bool> {
    let row = sqlx::query("SELECT 1 FROM resources WHERE kind = ? AND id = ?")
        .bind(kind.as_str())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(row.is_some())
}

async fn fetch_resource(
    conn: &mut SqliteConnection,
    kind: ResourceKind,
    id: &str,
) -> StoreResult<Option<StoredResource>> {
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE kind = ? AND id = ?");
    let row = sqlx::query(&sql)
        .bind(kind.as_str())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    row.as_ref().map(decode_resource).transpose()
}

/// Fails if another resource holds one of `claims` (the same resource re-claiming its own
/// credential is fine).
async fn check_claims(
    conn: &mut SqliteConnection,
    kind: ResourceKind,
    id: &str,
    claims: &[OwnedClaim],
) -> StoreResult<()> {
    for c in claims {
        let row = sqlx::query("SELECT kind, id FROM credentials WHERE plugin = ? AND digest = ?")
            .bind(c.plugin)
            .bind(&c.digest)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        if let Some(row) = row {
            let holder_kind: String = column(&row, "kind")?;
            let holder_id: String = column(&row, "id")?;
            if holder_kind != kind.as_str() || holder_id != id {
                return Err(StoreError::CredentialTaken {
                    field: c.field,
                    plugin: c.plugin,
                    holder: format!("{holder_kind}/{holder_id}"),
                });
            }
        }
    }
    Ok(())
}

/// What a write does to the `resources` row of `kind/id`.
enum RowChange {
    /// Inserts it with the history row's `after`, revision and time.
    Insert,
    /// Sets its body, `mod_revision` and `updated_at` from the history row.
    Update,
    Delete,
}

/// Everything a write of `kind/id` changes once its checks passed, as one query: the store's
/// revision (when `move_revision`, a single write: set to the history row's, and the write's
/// transaction committed), the resource row, its history entry, and its `refs` and
/// `credentials` rows made exactly `references` and `claims` (none for a delete). Each query
/// is a round trip to the connection's thread (two context switches), which costs more than
/// the statements themselves.
async fn record_write(
    conn: &mut SqliteConnection,
    move_revision: bool,
    row: RowChange,
    references: &[OwnedReference],
    claims: &[OwnedClaim],
    h: HistoryRow<'_>,
) -> StoreResult<()> {
    let (kind, id) = (h.kind.as_str(), h.id);
    let mut sql = String::with_capacity(1024);
    if move_revision {
        sql.push_str("UPDATE meta SET revision = ? WHERE id = 1; ");
    }
    sql.push_str(match row {
        RowChange::Insert => {
            "INSERT INTO resources \
             (kind, id, body, create_revision, mod_revision, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?); "
        }
        RowChange::Update => {
            "UPDATE resources SET body = ?, mod_revision = ?, updated_at = ? \
             WHERE kind = ? AND id = ?; "
        }
        RowChange::Delete => "DELETE FROM resources WHERE kind = ? AND id = ?; ",
    });
    sql.push_str(
        "DELETE FROM refs WHERE from_kind = ? AND from_id = ?; \
         DELETE FROM credentials WHERE kind = ? AND id = ?; \
         INSERT INTO history (revision, seq, at, kind, id, op, before, after, actor) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?);",
    );
    for _ in references {
        // The same reference listed twice is one row.
        sql.push_str(
            " INSERT INTO refs (from_kind, from_id, from_field, to_kind, to_id) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING;",
        );
    }
    for _ in claims {
        sql.push_str(" INSERT INTO credentials (plugin, digest, kind, id) VALUES (?, ?, ?, ?);");
    }
    if move_revision {
        // A single write's last statement (`Writer`); on an error before it, the caller rolls
        // back.
        sql.push_str(" COMMIT;");
    }
    let mut query = sqlx::query(&sql);
    if move_revision {
        query = query.bind(h.revision);
    }
    query = match row {
        RowChange::Insert => query
            .bind(kind)
            .bind(id)
            .bind(h.after)
            .bind(h.revision)
            .bind(h.revision)
            .bind(h.at)
            .bind(h.at),
        RowChange::Update => query
            .bind(h.after)
            .bind(h.revision)
            .bind(h.at)
            .bind(kind)
            .bind(id),
        RowChange::Delete => query.bind(kind).bind(id),
    };
    query = query
        .bind(kind)
        .bind(id)
        .bind(kind)
        .bind(id)
        .bind(h.revision)
        .bind(h.seq)
        .bind(h.at)
        .bind(kind)
        .bind(id)
        .bind(op_text(h.op))
        .bind(h.before)
        .bind(h.after)
        .bind(h.actor);
    for r in references {
        query = query
            .bind(kind)
            .bind(id)
            .bind(r.field)
            .bind(r.kind.as_str())
            .bind(&r.id);
    }
    for c in claims {
        query = query.bind(c.plugin).bind(&c.digest).bind(kind).bind(id);
    }
    query.execute(&mut *conn).await.map_err(db_err)?;
    Ok(())
}

impl RowAccess for SqliteRow {
    fn text(&self, name: &str) -> StoreResult<String> {
        column(self, name)
    }

    fn opt_text(&self, name: &str) -> StoreResult<Option<String>> {
        column(self, name)
    }

    fn int(&self, name: &str) -> StoreResult<i64> {
        column(self, name)
    }
}

fn column<'r, T>(row: &'r SqliteRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Bad bytes on disk are `Corrupt`; anything else (I/O, locks, pool) is `Unavailable`.
fn db_err(e: sqlx::Error) -> StoreError {
    const SQLITE_CORRUPT: i32 = 11;
    const SQLITE_NOTADB: i32 = 26;
    match &e {
        sqlx::Error::Database(db) => {
            // SQLite reports extended codes; the primary code is the low byte.
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            if matches!(primary, Some(SQLITE_CORRUPT | SQLITE_NOTADB)) {
                StoreError::Corrupt(e.to_string())
            } else {
                StoreError::Unavailable(e.to_string())
            }
        }
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl SqliteStore {
    /// A transaction in which every statement reads the same database state (WAL mode), with
    /// the revision, store id and number of resources it sees, read in one statement (each is a
    /// round trip to the connection's thread): how `snapshot` begins.
    async fn begin_consistent_read(
        &self,
    ) -> StoreResult<(sqlx::Transaction<'static, Sqlite>, u64, String, i64)> {
        let mut tx = self.inner.pool.begin().await.map_err(db_err)?;
        let row = sqlx::query(
            "SELECT revision, store_id, (SELECT COUNT(*) FROM resources) AS resources \
             FROM meta WHERE id = 1",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::Corrupt("the meta row is missing".to_string()))?;
        let revision = from_db(column(&row, "revision")?, "meta.revision")?;
        let resources = column(&row, "resources")?;
        Ok((tx, revision, column(&row, "store_id")?, resources))
    }
}

#[async_trait]
impl ConfigStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn revision(&self) -> StoreResult<u64> {
        let mut conn = self.inner.pool.acquire().await.map_err(db_err)?;
        read_revision(&mut conn).await
    }

    async fn store_id(&self) -> StoreResult<String> {
        let mut conn = self.inner.pool.acquire().await.map_err(db_err)?;
        read_store_id(&mut conn).await
    }

    async fn get(&self, kind: ResourceKind, id: &str) -> StoreResult<Option<StoredResource>> {
        let mut conn = self.inner.pool.acquire().await.map_err(db_err)?;
        fetch_resource(&mut conn, kind, id).await
    }

    async fn list(&self, kind: ResourceKind) -> StoreResult<Vec<StoredResource>> {
        let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE kind = ? ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(kind.as_str())
            .fetch_all(&self.inner.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(decode_resource).collect()
    }

    async fn snapshot(&self) -> StoreResult<StoreSnapshot> {
        let (mut tx, revision, store_id, _) = self.begin_consistent_read().await?;
        let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources ORDER BY kind, id");
        let rows = sqlx::query(&sql)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let mut resources = rows
            .iter()
            .map(decode_resource)
            .collect::<StoreResult<Vec<_>>>()?;
        sort_resources(&mut resources);
        Ok(StoreSnapshot {
            store_id,
            revision,
            resources,
        })
    }

    async fn changes_since(&self, after: u64) -> StoreResult<Option<StoreChanges>> {
        if let Some(changes) = self.inner.recorded_changes(after) {
            return Ok(Some(changes));
        }
        self.read_changes_since(after).await
    }

    async fn put(&self, req: PutRequest) -> StoreResult<WriteOutcome> {
        run_detached({
            let inner = self.inner.clone();
            async move { inner.write(Write::Put(req)).await }
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> StoreResult<WriteOutcome> {
        run_detached({
            let inner = self.inner.clone();
            async move { inner.write(Write::Delete(req)).await }
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
        // Revisions are stored as i64; nothing lies beyond its range.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        // The first `limit` rows after `after`, then the rest of the last revision they reach:
        // a page never splits a replace.
        let rows = sqlx::query(
            "SELECT revision, at, kind, id, op, before, after, actor FROM history \
             WHERE revision > ? AND revision <= (SELECT MAX(revision) FROM \
             (SELECT revision FROM history WHERE revision > ? ORDER BY revision, seq LIMIT ?)) \
             ORDER BY revision, seq",
        )
        .bind(after)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(decode_history).collect()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.revision_tx.subscribe()
    }
}
