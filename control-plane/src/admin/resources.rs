//! CRUD handlers for every resource kind: validate with the model crate, write through the store.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use postern_proto::model::secrets;
use postern_proto::model::validate::check_id;
use postern_proto::model::{Resource, ResourceKind};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{AdminPath, AdminQuery};
use super::{Actor, AdminError, AdminState};
use crate::store::{
    DeleteRequest, OwnedClaim, OwnedReference, Precondition, PutRequest, StoreError,
    StoredResource, WriteOutcome,
};

fn parse_kind(kind: &str) -> Result<ResourceKind, AdminError> {
    kind.parse()
        .map_err(|_| AdminError::NotFound(format!("unknown resource kind '{kind}'")))
}

fn parse_id(id: &str) -> Result<(), AdminError> {
    check_id(id).map_err(|e| AdminError::Invalid(e.under("id")))
}

/// `If-Match: 12` or `If-Match: "12"` → the resource must be at mod_revision 12.
fn if_match(headers: &HeaderMap) -> Result<Option<Precondition>, AdminError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|rev| Some(Precondition::ModRevision(rev)))
        .ok_or_else(|| {
            AdminError::invalid("If-Match", "must be a resource's mod_revision, e.g. \"12\"")
        })
}

/// A resource as the Admin API shows it: secrets redacted (see `model::secrets`).
fn resource_json(r: &StoredResource) -> Value {
    let mut value = r.value.clone();
    secrets::redact(r.kind, &mut value);
    json!({
        "kind": r.kind,
        "id": r.id,
        "value": value,
        "create_revision": r.create_revision,
        "mod_revision": r.mod_revision,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    })
}

fn etag(r: &StoredResource) -> [(header::HeaderName, HeaderValue); 1] {
    let tag = HeaderValue::from_str(&format!("\"{}\"", r.mod_revision))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    [(header::ETAG, tag)]
}

fn write_response(outcome: WriteOutcome) -> Response {
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut body = resource_json(&outcome.resource);
    body["revision"] = json!(outcome.revision);
    (status, etag(&outcome.resource), Json(body)).into_response()
}

/// Parses a body, checks its `id` against the path, validates it as `kind` and turns it into a
/// store write. Nothing is written if any step fails.
pub(super) fn prepare_put(
    kind: ResourceKind,
    id: &str,
    mut value: Value,
    precondition: Precondition,
    actor: &Actor,
) -> Result<PutRequest, AdminError> {
    let Some(obj) = value.as_object_mut() else {
        return Err(AdminError::invalid("", "the body must be a JSON object"));
    };
    match obj.get("id") {
        None => {}
        Some(Value::String(s)) if s == id => {}
        // APISIX accepts numeric ids (`"id": 1` at `/routes/1`).
        Some(Value::Number(n)) if n.to_string() == id => {}
        Some(other) => {
            return Err(AdminError::invalid(
                "id",
                format!("the body's id {other} does not match the path's id '{id}'"),
            ));
        }
    }
    if kind == ResourceKind::Consumers {
        // APISIX's consumers have no id but a username; here the id is the username.
        match obj.get("username") {
            None => {
                obj.insert("username".into(), Value::String(id.to_string()));
            }
            Some(Value::String(s)) if s == id => {}
            Some(other) => {
                return Err(AdminError::invalid(
                    "username",
                    format!("the body's username {other} does not match the path's '{id}'"),
                ));
            }
        }
    }
    obj.insert("id".into(), Value::String(id.to_string()));
    let resource = Resource::parse(kind, &value)?;
    // A certificate and key that do not belong together would be refused by every DP (NACK):
    // refuse them here, with the reason.
    if let Resource::Ssl(ssl) = &resource {
        postern_data_plane::tls::certified_key(ssl).map_err(|e| {
            let field = if e.starts_with("cert") { "cert" } else { "key" };
            AdminError::invalid(field, e)
        })?;
    }
    // Likewise an upstream's CA bundle or client certificate that rustls cannot use.
    let upstream = match &resource {
        Resource::Upstream(u) => Some(("tls", u)),
        Resource::Route(r) => r.upstream.as_ref().map(|u| ("upstream.tls", u)),
        Resource::Service(s) => s.upstream.as_ref().map(|u| ("upstream.tls", u)),
        _ => None,
    };
    if let Some((under, u)) = upstream
        && u.scheme.is_tls()
    {
        postern_data_plane::proxy::upstream_tls::settings(u.tls.as_ref(), u.scheme.is_grpc(), None)
            .map_err(|(field, e)| {
                let field = if field.is_empty() {
                    under.to_string()
                } else {
                    format!("{under}.{field}")
                };
                AdminError::invalid(field, e)
            })?;
    }
    let claims = resource
        .claims()
        .into_iter()
        .map(|c| OwnedClaim::new(c.plugin, c.field, c.value))
        .collect();
    let references = resource
        .references()
        .into_iter()
        .map(|r| OwnedReference {
            field: r.field,
            kind: r.kind,
            id: r.id.to_string(),
        })
        .collect();
    Ok(PutRequest {
        kind,
        id: id.to_string(),
        value,
        references,
        claims,
        precondition,
        actor: Some(actor.0.clone()),
    })
}

/// `grpc-transcode` names a method inside a proto: a reference the store cannot check by id
/// alone. Writing a route or service checks its method against the stored proto; writing a
/// proto checks every route and service that uses it. (Not in the store's transaction: a race
/// between two such writes is caught by the snapshot builder, which never publishes a config
/// whose transcodes do not resolve.)
async fn check_transcodes(state: &AdminState, req: &PutRequest) -> Result<(), AdminError> {
    use postern_proto::model::plugins::grpc_transcode::GrpcTranscodeConfig;
    use postern_proto::model::plugins::parse;
    use postern_proto::model::protos::find_method;
    let transcode_of = |value: &Value| {
        value
            .get("plugins")
            .and_then(|p| p.get("grpc-transcode"))
            .and_then(|c| parse::<GrpcTranscodeConfig>(c).ok())
    };
    match req.kind {
        ResourceKind::Routes | ResourceKind::Services => {
            let Some(config) = transcode_of(&req.value) else {
                return Ok(());
            };
            // A missing proto is the store's to refuse (dangling reference), in its transaction.
            let Some(stored) = state
                .store
                .get(ResourceKind::Protos, &config.proto_id)
                .await?
            else {
                return Ok(());
            };
            let Resource::Proto(proto) = Resource::parse(ResourceKind::Protos, &stored.value)?
            else {
                return Ok(());
            };
            if let Some(pool) = proto.pool() {
                find_method(pool, &config.service, &config.method).map_err(|e| {
                    AdminError::invalid(
                        format!("plugins.grpc-transcode.{}", e.field),
                        format!("{} (protos/{})", e.message, config.proto_id),
                    )
                })?;
            }
            Ok(())
        }
        ResourceKind::Protos => {
            let Resource::Proto(proto) = Resource::parse(ResourceKind::Protos, &req.value)? else {
                return Ok(());
            };
            let Some(pool) = proto.pool() else {
                return Ok(());
            };
            for kind in [ResourceKind::Services, ResourceKind::Routes] {
                for user in state.store.list(kind).await? {
                    let Some(config) = transcode_of(&user.value).filter(|c| c.proto_id == req.id)
                    else {
                        continue;
                    };
                    find_method(pool, &config.service, &config.method).map_err(|e| {
                        AdminError::invalid(
                            "content",
                            format!("{kind}/{} uses it: {}", user.id, e.message),
                        )
                    })?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

pub(super) fn parse_json(body: &Bytes) -> Result<Value, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::invalid("", format!("invalid JSON: {e}")))
}

/// Marks a read answered from the last snapshot because the store is unreachable.
const STALE_HEADER: &str = "x-postern-stale";

/// While the store is unreachable, reads are answered from the snapshot being served (what the
/// data planes run), flagged stale; `None` when there is no snapshot either.
fn from_snapshot(state: &AdminState, kind: ResourceKind) -> Option<(u64, Vec<StoredResource>)> {
    let snap = state.hub.current()?;
    let items = snap
        .stored
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| StoredResource::clone(r))
        .collect();
    Some((snap.version, items))
}

pub async fn list(
    State(state): State<AdminState>,
    AdminPath(kind): AdminPath<String>,
) -> Result<Response, AdminError> {
    let kind = parse_kind(&kind)?;
    let (items, stale_version) = match state.store.list(kind).await {
        Ok(items) => (items, None),
        Err(e @ StoreError::Unavailable(_)) => match from_snapshot(&state, kind) {
            Some((version, items)) => (items, Some(version)),
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    let list: Vec<Value> = items.iter().map(resource_json).collect();
    let mut body = json!({"total": list.len(), "list": list});
    Ok(match stale_version {
        None => Json(body).into_response(),
        Some(v) => {
            body["stale"] = json!(true);
            body["version"] = json!(v);
            ([(STALE_HEADER, "true")], Json(body)).into_response()
        }
    })
}

pub async fn get_one(
    State(state): State<AdminState>,
    AdminPath((kind, id)): AdminPath<(String, String)>,
) -> Result<Response, AdminError> {
    let kind = parse_kind(&kind)?;
    parse_id(&id)?;
    let not_found = || AdminError::NotFound(format!("{kind}/{id} not found"));
    match state.store.get(kind, &id).await {
        Ok(r) => {
            let r = r.ok_or_else(not_found)?;
            Ok((etag(&r), Json(resource_json(&r))).into_response())
        }
        Err(e @ StoreError::Unavailable(_)) => {
            let (_, items) = from_snapshot(&state, kind).ok_or(AdminError::from(e))?;
            let r = items
                .into_iter()
                .find(|r| r.id == id)
                .ok_or_else(not_found)?;
            Ok(([(STALE_HEADER, "true")], etag(&r), Json(resource_json(&r))).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn put(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    AdminPath((kind, id)): AdminPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let kind = parse_kind(&kind)?;
    parse_id(&id)?;
    put_value(&state, &actor, kind, &id, &headers, parse_json(&body)?).await
}

/// `PUT /admin/<kind>` with the id in the body: `username` for consumers (APISIX's way of
/// writing them), `id` for the other kinds.
pub async fn put_by_body(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    AdminPath(kind): AdminPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let kind = parse_kind(&kind)?;
    let value = parse_json(&body)?;
    let field = if kind == ResourceKind::Consumers {
        "username"
    } else {
        "id"
    };
    let id = match value.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if field == "id" => n.to_string(),
        _ => {
            return Err(AdminError::invalid(
                field,
                format!(
                    "PUT /admin/{kind} needs the {field} in the body (or use /admin/{kind}/<id>)"
                ),
            ));
        }
    };
    check_id(&id).map_err(|e| AdminError::Invalid(e.under(field)))?;
    put_value(&state, &actor, kind, &id, &headers, value).await
}

/// Writes a whole body. Where it sends a redacted secret back, the stored secret is kept: the
/// stored body is read and the write is made conditional on it, retried if it changed.
async fn put_value(
    state: &AdminState,
    actor: &Actor,
    kind: ResourceKind,
    id: &str,
    headers: &HeaderMap,
    value: Value,
) -> Result<Response, AdminError> {
    let explicit = if_match(headers)?;
    if !secrets::has_marker(kind, &value) {
        let req = prepare_put(kind, id, value, explicit.unwrap_or_default(), actor)?;
        check_transcodes(state, &req).await?;
        return Ok(write_response(state.store.put(req).await?));
    }
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let current = state.store.get(kind, id).await?;
        let mut merged = value.clone();
        secrets::restore(kind, &mut merged, current.as_ref().map(|c| &c.value))?;
        // restore() fails when nothing is stored, so `current` is there.
        let rev = current.map(|c| c.mod_revision).unwrap_or_default();
        let precondition = explicit.unwrap_or(Precondition::ModRevision(rev));
        let req = prepare_put(kind, id, merged, precondition, actor)?;
        check_transcodes(state, &req).await?;
        match state.store.put(req).await {
            Err(StoreError::PreconditionFailed { .. })
                if explicit.is_none() && attempt < ATTEMPTS => {}
            r => return Ok(write_response(r?)),
        }
    }
    Err(AdminError::Conflict(format!(
        "{kind}/{id} kept changing during the write; try again"
    )))
}

/// `POST /admin/<kind>`: create with a generated id.
pub async fn create(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    AdminPath(kind): AdminPath<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let kind = parse_kind(&kind)?;
    if kind == ResourceKind::Consumers {
        return Err(AdminError::invalid(
            "username",
            "a consumer's id is its username: use PUT /admin/consumers with a username",
        ));
    }
    let value = parse_json(&body)?;
    if value.get("id").is_some() {
        return Err(AdminError::invalid(
            "id",
            "POST generates the id; use PUT /admin/<kind>/<id> to choose one",
        ));
    }
    // Time-ordered, so generated ids list in creation order.
    let id = uuid::Uuid::now_v7().simple().to_string();
    let req = prepare_put(kind, &id, value, Precondition::MustNotExist, &actor)?;
    check_transcodes(&state, &req).await?;
    Ok(write_response(state.store.put(req).await?))
}

/// `PATCH`: an RFC 7386 JSON merge patch applied to the stored body, then validated as a whole.
pub async fn patch(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    AdminPath((kind, id)): AdminPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let kind = parse_kind(&kind)?;
    parse_id(&id)?;
    let explicit = if_match(&headers)?;
    let patch = parse_json(&body)?;
    if !patch.is_object() {
        return Err(AdminError::invalid(
            "",
            "a merge patch must be a JSON object",
        ));
    }
    // Without If-Match, a concurrent write between our read and our write is retried on the new
    // state rather than silently overwritten.
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let current = state
            .store
            .get(kind, &id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("{kind}/{id} not found")))?;
        let mut merged = current.value.clone();
        merge_patch(&mut merged, &patch);
        // A redacted secret sent back in the patch keeps the stored one.
        secrets::restore(kind, &mut merged, Some(&current.value))?;
        let precondition = explicit.unwrap_or(Precondition::ModRevision(current.mod_revision));
        let req = prepare_put(kind, &id, merged, precondition, &actor)?;
        check_transcodes(&state, &req).await?;
        match state.store.put(req).await {
            Err(StoreError::PreconditionFailed { .. })
                if explicit.is_none() && attempt < ATTEMPTS => {}
            r => return Ok(write_response(r?)),
        }
    }
    Err(AdminError::Conflict(format!(
        "{kind}/{id} kept changing during the patch; try again"
    )))
}

pub async fn delete(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    AdminPath((kind, id)): AdminPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    let kind = parse_kind(&kind)?;
    parse_id(&id)?;
    let outcome = state
        .store
        .delete(DeleteRequest {
            kind,
            id: id.clone(),
            precondition: if_match(&headers)?.unwrap_or_default(),
            actor: Some(actor.0),
        })
        .await?;
    Ok(Json(json!({
        "deleted": true,
        "kind": kind,
        "id": id,
        "revision": outcome.revision,
    })))
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_history_limit")]
    limit: u32,
}

fn default_history_limit() -> u32 {
    100
}

/// `GET /admin/history?after=N&limit=M`: accepted writes after revision N, oldest first.
pub async fn history(
    State(state): State<AdminState>,
    AdminQuery(q): AdminQuery<HistoryQuery>,
) -> Result<Json<Value>, AdminError> {
    if q.limit == 0 || q.limit > 1000 {
        return Err(AdminError::invalid("limit", "must be 1-1000"));
    }
    let mut list = state.store.history(q.after, q.limit).await?;
    for entry in &mut list {
        for body in [&mut entry.before, &mut entry.after].into_iter().flatten() {
            secrets::redact(entry.kind, body);
        }
    }
    Ok(Json(json!({"total": list.len(), "list": list})))
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [1]}),
                json!({"a": [2, 3]}),
                json!({"a": [2, 3]}),
            ),
            (
                json!({"a": "b"}),
                json!({"a": {"x": 1}}),
                json!({"a": {"x": 1}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }
}
