//! The PostgreSQL config store, for control planes run as several replicas on one database.
//!
//! Every write is one `READ COMMITTED` transaction that starts with
//! `UPDATE meta SET revision = revision + 1 ... RETURNING revision`: the row lock it takes
//! serialises writers across all replicas, and every later statement of the transaction sees
//! everything committed before it, so the checks (precondition, references, in-use) cannot race
//! another replica's write. Inside one process writers also queue on a mutex first, so they hold
//! one pooled connection between them and leave the rest to readers. Snapshots read in one
//! `REPEATABLE READ READ ONLY` transaction.
//!
//! Change notification: each write sends `NOTIFY postern_revision, '<revision>'` in its
//! transaction (delivered on commit). [`ConfigStore::subscribe`] is fed by this process's own
//! commits, by a `LISTEN` on that channel (re-established with backoff when its connection
//! drops, then followed by a read of the revision to catch up) and by a poll of the revision
//! every [`POLL_INTERVAL`], as notifications sent while nobody listened are lost. Announced
//! revisions only move forward, except that a poll finding the revision *lower* than announced
//! (the database was wiped or restored) announces it too, so the control plane notices.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use postern_proto::model::ResourceKind;
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Postgres, Row};
use tokio::sync::{Mutex, MutexGuard, watch};
use tokio_util::sync::CancellationToken;

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

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// The `NOTIFY` channel; the payload is the committed revision in decimal.
const CHANNEL: &str = "postern_revision";
/// One writer plus concurrent readers (snapshots, Admin API reads, the revision poll).
const MAX_CONNECTIONS: u32 = 8;
/// Bounds getting a connection, connecting included: a dead server answers `Unavailable` after
/// this long instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits behind this process's other writes before giving up.
const WRITE_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Server side: a statement waiting on a lock (the `meta` row held by another replica's write,
/// the migrator's advisory lock) fails after this long instead of queueing forever.
const LOCK_TIMEOUT: &str = "10s";
/// Server side: a session left idle inside a transaction (a replica cut off mid-write) is ended
/// after this long, releasing the `meta` row lock it holds.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";
/// The safety net under `LISTEN`: notifications sent while the listener reconnects are lost.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Backoff between attempts to re-establish the listener.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(100);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(5);
/// How many referrers an `InUse` error names.
const IN_USE_LIMIT: i64 = 10;

const RESOURCE_COLUMNS: &str =
    "kind, id, body, create_revision, mod_revision, created_at, updated_at";

/// The PostgreSQL [`ConfigStore`]. Cheap to share behind an `Arc`; all methods take `&self`.
/// Dropping it stops its background tasks (listener and poll) and closes its connections.
pub struct PostgresStore {
    inner: Arc<Inner>,
    /// Stops the background tasks.
    stop: CancellationToken,
}

struct Inner {
    pool: PgPool,
    /// Serialises this process's writers (replicas are serialised by the `meta` row lock).
    write_lock: Mutex<()>,
    revision_tx: watch::Sender<u64>,
    /// Bumped on every change of the announced revision, under the watch's lock: a poll that
    /// saw none during its query knows its result is not older than the announced value.
    announcements: AtomicU64,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`), applies the
    /// migrations (under the migrator's advisory lock, so replicas starting together are safe)
    /// and starts listening for other replicas' writes.
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        PostgresStore::open(url, Some(POLL_INTERVAL)).await
    }

    /// [`connect`](Self::connect) with another revision poll interval, or none (then only
    /// `LISTEN` and this store's own writes move `subscribe()`, so tests can tell them apart).
    #[cfg(test)]
    pub(super) async fn connect_polling(
        url: &str,
        poll_interval: Option<Duration>,
    ) -> StoreResult<PostgresStore> {
        PostgresStore::open(url, poll_interval).await
    }

    async fn open(url: &str, poll_interval: Option<Duration>) -> StoreResult<PostgresStore> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid postgres URL: {e}")))?;
        for (setting, value) in [
            ("lock_timeout", LOCK_TIMEOUT),
            (
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            ),
        ] {
            // A value given in the URL (`?options=-c lock_timeout=...`) wins.
            if !options.get_options().is_some_and(|o| o.contains(setting)) {
                options = options.options([(setting, value)]);
            }
        }
        if options.get_application_name().is_none() {
            options = options.application_name("postern-control-plane");
        }
        // Never the password: it may end up in logs and /admin/status.
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username())
        );
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to {target}: {e}")))?;
        if let Err(e) = MIGRATOR.run(&pool).await {
            // Closing (rather than dropping) the pool ends the sessions right away, releasing
            // the migrator's advisory lock should it still be held by one of them.
            pool.close().await;
            return Err(StoreError::Unavailable(format!(
                "cannot migrate {target}: {e}"
            )));
        }

        // The listener gets its own connection, so a pool busy with writers cannot starve it.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        // LISTEN before reading the revision: every commit after that read is notified.
        let listener = match listen(&listen_pool).await {
            Ok(listener) => listener,
            Err(e) => {
                pool.close().await;
                return Err(StoreError::Unavailable(format!(
                    "cannot listen on {target}: {e}"
                )));
            }
        };
        let revision = match read_revision(&pool).await {
            Ok(revision) => revision,
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        };
        let (revision_tx, _) = watch::channel(revision);
        let inner = Arc::new(Inner {
            pool,
            write_lock: Mutex::new(()),
            revision_tx,
            announcements: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(run_listener(
            inner.clone(),
            listen_pool,
            listener,
            stop.clone(),
        ));
        if let Some(every) = poll_interval {
            tokio::spawn(run_poll(inner.clone(), every, stop.clone()));
        }
        Ok(PostgresStore { inner, stop })
    }

    /// Stops the background tasks and closes the connections; later calls fail with
    /// `Unavailable`.
    pub async fn close(&self) {
        self.stop.cancel();
        self.inner.pool.close().await;
    }

    #[cfg(test)]
    pub(super) fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The tasks hold the last other references to `Inner`; once they end, the pool and the
        // watch sender go (subscribers then see the sender closed).
        self.stop.cancel();
    }
}

impl Inner {
    /// One write in one transaction; announced after commit.
    async fn write(&self, write: Write) -> StoreResult<WriteOutcome> {
        let _writer = self.queue_for_write().await?;
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(db_err)?;
        let result = match write {
            Write::Put(req) => put_in(&mut tx, req, WriteRevision::Next).await,
            Write::Delete(req) => delete_in(&mut tx, req, WriteRevision::Next).await,
        };
        match result {
            Ok(outcome) => {
                tx.commit().await.map_err(db_err)?;
                self.announce(outcome.revision);
                Ok(outcome)
            }
            Err(e) => {
                rollback(tx).await;
                Err(e)
            }
        }
    }

    /// A whole-config replace: every write of the plan in one transaction, announced once.
    async fn replace(&self, req: ReplaceRequest) -> StoreResult<ReplaceOutcome> {
        let _writer = self.queue_for_write().await?;
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(db_err)?;
        match replace_in(&mut tx, &req).await {
            Ok(outcome) => {
                tx.commit().await.map_err(db_err)?;
                self.announce(outcome.revision);
                Ok(outcome)
            }
            Err(e) => {
                rollback(tx).await;
                Err(e)
            }
        }
    }

    async fn queue_for_write(&self) -> StoreResult<MutexGuard<'_, ()>> {
        tokio::time::timeout(WRITE_QUEUE_TIMEOUT, self.write_lock.lock())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "timed out after {WRITE_QUEUE_TIMEOUT:?} behind other writes"
                ))
            })
    }

    /// Announces `revision` if it is newer than the announced one (commits, notifications).
    fn announce(&self, revision: u64) {
        self.revision_tx.send_if_modified(|seen| {
            if revision > *seen {
                *seen = revision;
                self.announcements.fetch_add(1, Ordering::Relaxed);
                true
            } else {
                false
            }
        });
    }

    /// Reads the revision and announces it: if newer, like [`announce`](Self::announce); if
    /// older than the announced one, the database went back (wiped or restored) and that is
    /// announced too — unless something was announced during the read, which it may predate.
    async fn poll(&self) -> StoreResult<()> {
        let before = self.announcements.load(Ordering::Relaxed);
        let current = read_revision(&self.pool).await?;
        self.revision_tx.send_if_modified(|seen| {
            let went_back = current < *seen && self.announcements.load(Ordering::Relaxed) == before;
            if went_back {
                tracing::warn!(
                    announced = *seen,
                    current,
                    "the config store's revision went back: it was wiped or restored"
                );
            }
            if current > *seen || went_back {
                *seen = current;
                self.announcements.fetch_add(1, Ordering::Relaxed);
                true
            } else {
                false
            }
        });
        Ok(())
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection ends the session here (Ok(None)); we reconnect with our own backoff.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Receives other replicas' (and our own) notifications until `stop`; re-listens with backoff
/// when the connection drops, and catches up with a read of the revision after each re-listen.
async fn run_listener(
    inner: Arc<Inner>,
    listen_pool: PgPool,
    first: PgListener,
    stop: CancellationToken,
) {
    let mut next = Some(first);
    let mut delay = LISTEN_RETRY_MIN;
    loop {
        let mut listener = match next.take() {
            Some(listener) => listener,
            None => {
                let attempt = tokio::select! {
                    r = listen(&listen_pool) => r,
                    () = stop.cancelled() => break,
                };
                match attempt {
                    Ok(listener) => {
                        tracing::info!("listening for config store changes again");
                        // Whatever was committed while nobody listened.
                        let caught_up = tokio::select! {
                            r = inner.poll() => r,
                            () = stop.cancelled() => break,
                        };
                        if let Err(e) = caught_up {
                            tracing::warn!(error = %e, "cannot read the config store revision");
                        }
                        listener
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            retry_in_ms = delay.as_millis() as u64,
                            "cannot listen for config store changes"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = stop.cancelled() => break,
                        }
                        delay = (delay * 2).min(LISTEN_RETRY_MAX);
                        continue;
                    }
                }
            }
        };
        let since = Instant::now();
        let ended = loop {
            let received = tokio::select! {
                r = listener.try_recv() => r,
                () = stop.cancelled() => break None,
            };
            match received {
                Ok(Some(notification)) => match notification.payload().parse::<u64>() {
                    Ok(revision) => inner.announce(revision),
                    Err(_) => {
                        tracing::warn!(
                            payload = notification.payload(),
                            "unexpected payload on {CHANNEL}; reading the revision instead"
                        );
                        let caught_up = tokio::select! {
                            r = inner.poll() => r,
                            () = stop.cancelled() => break None,
                        };
                        if let Err(e) = caught_up {
                            tracing::warn!(error = %e, "cannot read the config store revision");
                        }
                    }
                },
                Ok(None) => break Some("connection lost".to_string()),
                Err(e) => break Some(e.to_string()),
            }
        };
        drop(listener);
        let Some(reason) = ended else { break };
        // A session that lasted resets the backoff; one that keeps dropping at once does not.
        if since.elapsed() > LISTEN_RETRY_MAX {
            delay = LISTEN_RETRY_MIN;
        }
        tracing::warn!(
            error = %reason,
            retry_in_ms = delay.as_millis() as u64,
            "lost the config store change listener"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => break,
        }
        delay = (delay * 2).min(LISTEN_RETRY_MAX);
    }
    listen_pool.close().await;
}

/// Reads the revision every `every` until `stop`: catches what the listener missed, and a
/// revision that went back.
async fn run_poll(inner: Arc<Inner>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the revision was just read at connect.
    ticks.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
        let result = tokio::select! {
            r = inner.poll() => r,
            () = stop.cancelled() => break,
        };
        match result {
            Ok(()) if failing => {
                tracing::info!("the config store answers again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot poll the config store revision");
                failing = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot poll the config store revision"),
        }
    }
}

/// Rolls back explicitly (rather than on drop) so the `meta` row lock is released before the
/// next writer in this process starts.
async fn rollback(tx: sqlx::Transaction<'static, Postgres>) {
    if let Err(e) = tx.rollback().await {
        // The connection rolls back when it is dropped or reused anyway; the caller's error is
        // the one that matters.
        tracing::warn!(error = %e, "config store rollback failed");
    }
}

async fn put_in(
    conn: &mut PgConnection,
    req: PutRequest,
    rev: WriteRevision,
) -> StoreResult<WriteOutcome> {
    let PutRequest {
        kind,
        id,
        mut value,
        references,
        claims,
        precondition,
        actor,
    } = req;
    // First, so that everything below sees every write committed before this one.
    let (revision, now, seq) = take_revision(conn, rev).await?;
    let current = fetch_resource(&mut *conn, kind, &id).await?;
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

    if let Value::Object(map) = &mut value {
        map.insert("id".to_string(), Value::String(id.clone()));
    }
    let body = encode(&value)?;
    let (create_revision, created_at) = match &current {
        Some(c) => (c.create_revision, c.created_at),
        None => (revision, now),
    };
    let db_revision = to_db(revision)?;
    if current.is_some() {
        sqlx::query(
            "UPDATE resources SET body = $1, mod_revision = $2, updated_at = $3 \
             WHERE kind = $4 AND id = $5",
        )
        .bind(&body)
        .bind(db_revision)
        .bind(now)
        .bind(kind.as_str())
        .bind(&id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    } else {
        sqlx::query(
            "INSERT INTO resources \
             (kind, id, body, create_revision, mod_revision, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(kind.as_str())
        .bind(&id)
        .bind(&body)
        .bind(db_revision)
        .bind(db_revision)
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    replace_refs(conn, kind, &id, &references).await?;
    replace_claims(conn, kind, &id, &claims).await?;

    let before = current.as_ref().map(|c| encode(&c.value)).transpose()?;
    append_history(
        conn,
        HistoryRow {
            revision: db_revision,
            seq,
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
    if rev == WriteRevision::Next {
        notify(conn, revision).await?;
    }

    Ok(WriteOutcome {
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
    })
}

async fn delete_in(
    conn: &mut PgConnection,
    req: DeleteRequest,
    rev: WriteRevision,
) -> StoreResult<WriteOutcome> {
    let DeleteRequest {
        kind,
        id,
        precondition,
        actor,
    } = req;
    let (revision, now, seq) = take_revision(conn, rev).await?;
    let current = fetch_resource(&mut *conn, kind, &id).await?;
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
         WHERE to_kind = $1 AND to_id = $2 AND NOT (from_kind = $3 AND from_id = $4) \
         ORDER BY from_kind, from_id LIMIT $5",
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

    sqlx::query("DELETE FROM resources WHERE kind = $1 AND id = $2")
        .bind(kind.as_str())
        .bind(&id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    replace_refs(conn, kind, &id, &[]).await?;
    replace_claims(conn, kind, &id, &[]).await?;
    let before = encode(&current.value)?;
    append_history(
        conn,
        HistoryRow {
            revision: to_db(revision)?,
            seq,
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
    if rev == WriteRevision::Next {
        notify(conn, revision).await?;
    }

    Ok(WriteOutcome {
        revision,
        resource: current,
        created: false,
    })
}

async fn replace_in(conn: &mut PgConnection, req: &ReplaceRequest) -> StoreResult<ReplaceOutcome> {
    // The meta row lock first, as every write takes it: what is read below cannot change until
    // commit, in this or any other control plane.
    let row = sqlx::query("SELECT revision FROM meta WHERE id = 1 FOR UPDATE")
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::Corrupt("the meta row is missing".to_string()))?;
    let actual = from_db(column(&row, "revision")?, "meta.revision")?;
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
        sqlx::query("DELETE FROM credentials WHERE kind = $1 AND id = $2")
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
    let (revision, at) = bump_revision(conn).await?;
    outcome.revision = revision;
    for (seq, write) in (0u32..).zip(writes) {
        let rev = WriteRevision::Shared { revision, at, seq };
        match write {
            Write::Put(req) => put_in(conn, req, rev).await?,
            Write::Delete(req) => delete_in(conn, req, rev).await?,
        };
    }
    notify(conn, revision).await?;
    Ok(outcome)
}

/// The revision, time and history row number a write records: a single write moves the global
/// revision; a replace's writes share the one it moved to.
async fn take_revision(
    conn: &mut PgConnection,
    rev: WriteRevision,
) -> StoreResult<(u64, i64, i64)> {
    match rev {
        WriteRevision::Next => {
            let (revision, now) = bump_revision(conn).await?;
            Ok((revision, now, 0))
        }
        WriteRevision::Shared { revision, at, seq } => Ok((revision, at, i64::from(seq))),
    }
}

/// Increments the global revision as the first statement of a write transaction, taking the
/// `meta` row lock that serialises writers across replicas until commit or rollback. Returns the
/// new revision and the database's clock in Unix seconds (one clock for every replica).
async fn bump_revision(conn: &mut PgConnection) -> StoreResult<(u64, i64)> {
    let row = sqlx::query(
        "UPDATE meta SET revision = revision + 1 WHERE id = 1 \
         RETURNING revision, floor(extract(epoch FROM clock_timestamp()))::bigint AS now",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?
    .ok_or_else(|| StoreError::Corrupt("the meta row is missing".to_string()))?;
    let revision = from_db(column(&row, "revision")?, "meta.revision")?;
    Ok((revision, column(&row, "now")?))
}

/// Queues the announcement of `revision`; Postgres delivers it only if the transaction commits.
async fn notify(conn: &mut PgConnection, revision: u64) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(revision.to_string())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

async fn read_store_id<'e, E>(executor: E) -> StoreResult<String>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let row = sqlx::query("SELECT store_id FROM meta WHERE id = 1")
        .fetch_optional(executor)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::Corrupt("the meta row is missing".to_string()))?;
    column(&row, "store_id")
}

async fn read_revision<'e, E>(executor: E) -> StoreResult<u64>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let row = sqlx::query("SELECT revision FROM meta WHERE id = 1")
        .fetch_optional(executor)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::Corrupt("the meta row is missing".to_string()))?;
    from_db(column(&row, "revision")?, "meta.revision")
}

async fn resource_exists(
    conn: &mut PgConnection,
    kind: ResourceKind,
    id: &str,
) -> StoreResult<bool> {
    let row = sqlx::query("SELECT 1 FROM resources WHERE kind = $1 AND id = $2")
        .bind(kind.as_str())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(row.is_some())
}

async fn fetch_resource<'e, E>(
    executor: E,
    kind: ResourceKind,
    id: &str,
) -> StoreResult<Option<StoredResource>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE kind = $1 AND id = $2");
    let row = sqlx::query(&sql)
        .bind(kind.as_str())
        .bind(id)
        .fetch_optional(executor)
        .await
        .map_err(db_err)?;
    row.as_ref().map(decode_resource).transpose()
}

/// Fails if another resource holds one of `claims` (the same resource re-claiming its own
/// credential is fine).
async fn check_claims(
    conn: &mut PgConnection,
    kind: ResourceKind,
    id: &str,
    claims: &[OwnedClaim],
) -> StoreResult<()> {
    for c in claims {
        let row = sqlx::query("SELECT kind, id FROM credentials WHERE plugin = $1 AND digest = $2")
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

/// Makes the `credentials` rows of `kind/id` exactly `claims` (none for a delete).
async fn replace_claims(
    conn: &mut PgConnection,
    kind: ResourceKind,
    id: &str,
    claims: &[OwnedClaim],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM credentials WHERE kind = $1 AND id = $2")
        .bind(kind.as_str())
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    for c in claims {
        sqlx::query("INSERT INTO credentials (plugin, digest, kind, id) VALUES ($1, $2, $3, $4)")
            .bind(c.plugin)
            .bind(&c.digest)
            .bind(kind.as_str())
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Makes the `refs` rows of `kind/id` exactly `references` (none for a delete).
async fn replace_refs(
    conn: &mut PgConnection,
    kind: ResourceKind,
    id: &str,
    references: &[OwnedReference],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM refs WHERE from_kind = $1 AND from_id = $2")
        .bind(kind.as_str())
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    for r in references {
        // The same reference listed twice is one row.
        sqlx::query(
            "INSERT INTO refs (from_kind, from_id, from_field, to_kind, to_id) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(kind.as_str())
        .bind(id)
        .bind(r.field)
        .bind(r.kind.as_str())
        .bind(&r.id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

async fn append_history(conn: &mut PgConnection, h: HistoryRow<'_>) -> StoreResult<()> {
    let op = op_text(h.op);
    sqlx::query(
        "INSERT INTO history (revision, seq, at, kind, id, op, before, after, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(h.revision)
    .bind(h.seq)
    .bind(h.at)
    .bind(h.kind.as_str())
    .bind(h.id)
    .bind(op)
    .bind(h.before)
    .bind(h.after)
    .bind(h.actor)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

impl RowAccess for PgRow {
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

fn column<'r, T>(row: &'r PgRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

/// Bad stored data is `Corrupt`; anything else (connection refused or lost, pool timeout, I/O,
/// lock timeouts, server shutting down) is `Unavailable`.
fn db_err(e: sqlx::Error) -> StoreError {
    /// SQLSTATEs that mean the data itself is bad: `numeric_value_out_of_range` (the revision
    /// cannot be incremented), `data_corrupted`, `index_corrupted`.
    const CORRUPT: [&str; 3] = ["22003", "XX001", "XX002"];
    match &e {
        sqlx::Error::Database(db) if db.code().is_some_and(|c| CORRUPT.contains(&c.as_ref())) => {
            StoreError::Corrupt(e.to_string())
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

impl PostgresStore {
    /// A read-only transaction in which every statement sees the same state (REPEATABLE READ),
    /// with the revision and store id it sees: how `snapshot` and `changes_since` begin.
    async fn begin_consistent_read(
        &self,
    ) -> StoreResult<(sqlx::Transaction<'static, Postgres>, u64, String)> {
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db_err)?;
        let revision = read_revision(&mut *tx).await?;
        let store_id = read_store_id(&mut *tx).await?;
        Ok((tx, revision, store_id))
    }
}

#[async_trait]
impl ConfigStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn revision(&self) -> StoreResult<u64> {
        read_revision(&self.inner.pool).await
    }

    async fn store_id(&self) -> StoreResult<String> {
        read_store_id(&self.inner.pool).await
    }

    async fn get(&self, kind: ResourceKind, id: &str) -> StoreResult<Option<StoredResource>> {
        if id.contains('\0') {
            // Postgres text cannot hold NUL, so no stored id has one (and binding it would fail).
            return Ok(None);
        }
        fetch_resource(&self.inner.pool, kind, id).await
    }

    async fn list(&self, kind: ResourceKind) -> StoreResult<Vec<StoredResource>> {
        let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE kind = $1 ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(kind.as_str())
            .fetch_all(&self.inner.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(decode_resource).collect()
    }

    async fn snapshot(&self) -> StoreResult<StoreSnapshot> {
        let (mut tx, revision, store_id) = self.begin_consistent_read().await?;
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
        let Ok(after) = i64::try_from(after) else {
            return Ok(None);
        };
        // One read transaction, as in `snapshot`. Rows changed since carry a newer
        // `mod_revision` (indexed); deletions are only in the history.
        let (mut tx, revision, store_id) = self.begin_consistent_read().await?;
        let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE mod_revision > $1");
        let changed = sqlx::query(&sql)
            .bind(after)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        let deleted = sqlx::query(
            "SELECT DISTINCT kind, id FROM history WHERE revision > $1 AND op = 'delete'",
        )
        .bind(after)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resources")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        decode_changes(store_id, revision, &changed, &deleted, count).map(Some)
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
             WHERE revision > $1 AND revision <= (SELECT MAX(revision) FROM \
             (SELECT revision FROM history WHERE revision > $1 ORDER BY revision, seq LIMIT $2) \
             AS page) ORDER BY revision, seq",
        )
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
