//! What the two SQL backends (SQLite, Postgres) share: the schema is the same, so decoding rows,
//! converting revisions and checking preconditions are the same too. Each backend keeps only
//! what really differs: its SQL dialect, connections and change notifications.

use std::str::FromStr;

use postern_proto::model::ResourceKind;
use serde_json::Value;

use super::{HistoryEntry, HistoryOp, StoreChanges, StoreError, StoreResult, StoredResource};

/// Typed access to the columns of one row, implemented by each backend for its row type.
pub(super) trait RowAccess {
    fn text(&self, column: &str) -> StoreResult<String>;
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>>;
    fn int(&self, column: &str) -> StoreResult<i64>;
}

/// One history row about to be written.
pub(super) struct HistoryRow<'a> {
    pub revision: i64,
    /// The row's place within its revision (0 but for the changes of one replace).
    pub seq: i64,
    pub at: i64,
    pub kind: ResourceKind,
    pub id: &'a str,
    pub op: HistoryOp,
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
    pub actor: Option<&'a str>,
}

pub(super) fn op_text(op: HistoryOp) -> &'static str {
    match op {
        HistoryOp::Put => "put",
        HistoryOp::Delete => "delete",
    }
}

pub(super) fn decode_resource(row: &impl RowAccess) -> StoreResult<StoredResource> {
    let kind = decode_kind(row.text("kind")?)?;
    let id = row.text("id")?;
    let body = row.text("body")?;
    let value = serde_json::from_str(&body)
        .map_err(|e| StoreError::Corrupt(format!("{kind}/{id}: body is not JSON: {e}")))?;
    Ok(StoredResource {
        create_revision: from_db(row.int("create_revision")?, "create_revision")?,
        mod_revision: from_db(row.int("mod_revision")?, "mod_revision")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        kind,
        id,
        value,
    })
}

/// What `changes_since` read in its transaction: the rows changed since (all columns), the
/// `(kind, id)` rows of the deletions since, and the count of resources.
pub(super) fn decode_changes<R: RowAccess>(
    store_id: String,
    revision: u64,
    changed: &[R],
    deleted: &[R],
    count: i64,
) -> StoreResult<StoreChanges> {
    Ok(StoreChanges {
        store_id,
        revision,
        changed: changed
            .iter()
            .map(decode_resource)
            .collect::<StoreResult<_>>()?,
        deleted: deleted
            .iter()
            .map(|row| Ok((decode_kind(row.text("kind")?)?, row.text("id")?)))
            .collect::<StoreResult<_>>()?,
        count: from_db(count, "resource count")?,
    })
}

pub(super) fn decode_history(row: &impl RowAccess) -> StoreResult<HistoryEntry> {
    let revision = from_db(row.int("revision")?, "history.revision")?;
    let op = match row.text("op")?.as_str() {
        "put" => HistoryOp::Put,
        "delete" => HistoryOp::Delete,
        other => {
            return Err(StoreError::Corrupt(format!(
                "history {revision}: unknown op '{other}'"
            )));
        }
    };
    let json = |col: &str| -> StoreResult<Option<Value>> {
        row.opt_text(col)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| {
                    StoreError::Corrupt(format!("history {revision}: {col} is not JSON: {e}"))
                })
            })
            .transpose()
    };
    Ok(HistoryEntry {
        revision,
        at: row.int("at")?,
        kind: decode_kind(row.text("kind")?)?,
        id: row.text("id")?,
        op,
        before: json("before")?,
        after: json("after")?,
        actor: row.opt_text("actor")?,
    })
}

pub(super) fn decode_kind(text: String) -> StoreResult<ResourceKind> {
    ResourceKind::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_db(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {value}")))
}

pub(super) fn to_db(value: u64) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("revision {value} overflows")))
}

pub(super) fn encode(value: &Value) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a body: {e}")))
}

/// `If-Match`: the resource must exist at exactly `expected`.
pub(super) fn check_mod_revision(
    kind: ResourceKind,
    id: &str,
    expected: u64,
    current: &Option<StoredResource>,
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
