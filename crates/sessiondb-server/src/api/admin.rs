//! The admin routes, for game servers holding the admin token: MAGE's
//! server side of the session module (register, resolve, `session.extend`,
//! `session.expire`), the actor look-ups, reassign, and every session's
//! events.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sessiondb::{Data, Reason, Session, SessionStore, UnsetReason};
use utoipa::ToSchema;

use super::doc::{BodyRefused, NotAdmin, NotAdminOrKeyRefused, StoreFailed};
use super::wire::{no_content, session_response};
use crate::auth::Admin;
use crate::blocking::{blocking, outcome, run};
use crate::error::{json_response, ApiError, ErrorBody, ErrorCode};
use crate::events::stream as event_stream;
use crate::extract::{Body, Param};
use crate::schemas::{ActorId, Language, SessionData, UnsetReasonName};
use crate::session_json::SessionBody;
use crate::state::AppState;

/// A new session for an actor.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    #[schema(value_type = ActorId)]
    actor_id: String,
    /// [default: `en`]
    #[schema(value_type = Option<Language>)]
    language: Option<String>,
    /// The session's first data [default: none].
    #[schema(value_type = Option<SessionData>)]
    data: Option<BTreeMap<String, Box<RawValue>>>,
}

/// MAGE's `register(actorId, language, meta)`.
///
/// Creates a session for the actor and answers it with its full key, the
/// one time the key is told (the store keeps only a digest). Above the
/// actor's session cap (1 by default, as MAGE) the oldest session ends
/// with `replaced`. Announces `session.set`.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    operation_id = "register",
    tag = "game server",
    request_body = RegisterRequest,
    security(("adminToken" = [])),
    responses(
        (status = 201, description = "The new session, with its `key`.", body = SessionBody,
            links(
                ("isValid" = (operation_id = "isValid", request_body = json!({"sessionKey": "$response.body#/key"}))),
                ("restore" = (operation_id = "restore", request_body = json!({"sessionKey": "$response.body#/key"}))),
                ("resolve" = (operation_id = "resolve", request_body = json!({"sessionKey": "$response.body#/key"}))),
                ("extend" = (operation_id = "extend", request_body = json!({"sessionKey": "$response.body#/key"}))),
                ("expireSession" = (operation_id = "expireSession", request_body = json!({"sessionKey": "$response.body#/key"}))),
                ("getData" = (operation_id = "getData", parameters(("header.Authorization" = "Bearer {$response.body#/key}")))),
                ("putData" = (operation_id = "putData", parameters(("header.Authorization" = "Bearer {$response.body#/key}")))),
                ("deleteData" = (operation_id = "deleteData", parameters(("header.Authorization" = "Bearer {$response.body#/key}")))),
                ("logout" = (operation_id = "logout", parameters(("header.Authorization" = "Bearer {$response.body#/key}")))),
                ("getActorSession" = (operation_id = "getActorSession", parameters(("actorId" = "$response.body#/actorId")))),
                ("expireActor" = (operation_id = "expireActor", parameters(("actorId" = "$response.body#/actorId")))),
                ("reassign" = (operation_id = "reassign", parameters(("actorId" = "$response.body#/actorId")))),
                ("getActorAddresses" = (operation_id = "getActorAddresses", request_body = json!({"actorIds": ["$response.body#/actorId"]}))),
            )
        ),
        BodyRefused,
        NotAdmin,
        StoreFailed,
    )
)]
pub async fn register(
    State(state): State<AppState>,
    _: Admin,
    body: Body,
) -> Result<Response, ApiError> {
    let req: RegisterRequest = body.json()?;
    let mut data = Data::new();
    for (name, value) in req.data.unwrap_or_default() {
        data.insert_json(&name, value.get())?;
    }
    let language = req
        .language
        .unwrap_or_else(|| sessiondb::DEFAULT_LANGUAGE.to_owned());
    let store = state.store.clone();
    let session = run(move || store.register(&req.actor_id, &language, data)).await?;
    state.metrics.registered();
    session_response(StatusCode::CREATED, &session)
}

/// A body naming a session by its full key.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionKeyRequest {
    /// The full session key `actorId:secret`.
    #[schema(example = "player-7:3q2-7wEm1cJXyKQ0a9u5Hn8rTsYbZvPd")]
    session_key: String,
}

/// MAGE's `resolve(fullKey)`.
///
/// Resolves a key a game client handed to its game server: the session,
/// its expiry slid forward (written only when it moved by more than the
/// touch interval). Unlike `restore`, announces nothing.
#[utoipa::path(
    post,
    path = "/v1/sessions/resolve",
    operation_id = "resolve",
    tag = "game server",
    request_body = SessionKeyRequest,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The session, with `key` echoed.", body = SessionBody),
        BodyRefused,
        NotAdminOrKeyRefused,
        StoreFailed,
    )
)]
pub async fn resolve(
    State(state): State<AppState>,
    _: Admin,
    body: Body,
) -> Result<Response, ApiError> {
    use_key(&state, &body, "resolve", SessionStore::resolve).await
}

/// MAGE's `session.extend()`.
///
/// Recomputes the session's expiry from now and writes it.
#[utoipa::path(
    post,
    path = "/v1/sessions/extend",
    operation_id = "extend",
    tag = "game server",
    request_body = SessionKeyRequest,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The session, with its new `expiresAt` and `key` echoed.", body = SessionBody),
        BodyRefused,
        NotAdminOrKeyRefused,
        StoreFailed,
    )
)]
pub async fn extend(
    State(state): State<AppState>,
    _: Admin,
    body: Body,
) -> Result<Response, ApiError> {
    use_key(&state, &body, "extend", SessionStore::extend).await
}

/// Runs `call` (a use of a key) with the key `body` names, counts its
/// outcome as `op` and answers the session.
async fn use_key(
    state: &AppState,
    body: &Body,
    op: &'static str,
    call: fn(&SessionStore, &str) -> sessiondb::Result<Session>,
) -> Result<Response, ApiError> {
    let req: SessionKeyRequest = body.json()?;
    let store = state.store.clone();
    let used = blocking(move || call(&store, &req.session_key)).await?;
    state.metrics.resolved(op, outcome(&used));
    session_response(StatusCode::OK, &used?)
}

/// A session to end, and why.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpireSessionRequest {
    /// The full session key `actorId:secret`.
    #[schema(example = "player-7:3q2-7wEm1cJXyKQ0a9u5Hn8rTsYbZvPd")]
    session_key: String,
    /// [default: `expired`]
    #[schema(value_type = Option<UnsetReasonName>)]
    reason: Option<String>,
}

/// MAGE's `session.expire(reason)`.
///
/// Ends this one session and announces `session.unset` with the reason.
#[utoipa::path(
    post,
    path = "/v1/sessions/expire",
    operation_id = "expireSession",
    tag = "game server",
    request_body = ExpireSessionRequest,
    security(("adminToken" = [])),
    responses(
        (status = 204, description = "The session ended."),
        BodyRefused,
        NotAdminOrKeyRefused,
        StoreFailed,
    )
)]
pub async fn expire_session(
    State(state): State<AppState>,
    _: Admin,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ExpireSessionRequest = body.json()?;
    let reason = UnsetReason::parse(req.reason.as_deref().unwrap_or("expired"))?;
    let store = state.store.clone();
    let done = blocking(move || store.expire(&req.session_key, reason)).await?;
    state.metrics.resolved("expire", outcome(&done));
    done?;
    Ok(no_content())
}

/// MAGE's `getActorSession(actorId)`.
///
/// The actor's newest live session, without its key.
#[utoipa::path(
    get,
    path = "/v1/actors/{actorId}/session",
    operation_id = "getActorSession",
    tag = "game server",
    params(("actorId" = ActorId, Path, description = "The actor: 1 to 255 bytes, no control characters.")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The session, without `key`.", body = SessionBody),
        (status = 400, description = "`invalidActorId`.", body = ErrorBody),
        NotAdmin,
        (status = 404, description = "`noSession`: the actor has no live session.", body = ErrorBody),
        StoreFailed,
    )
)]
pub async fn actor_session(
    State(state): State<AppState>,
    _: Admin,
    Param(actor_id): Param,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let found = run(move || store.actor_session(&actor_id)).await?;
    match found {
        Some(s) => session_response(StatusCode::OK, &s),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NoSession,
            "the actor has no live session",
        )),
    }
}

/// Actors to look up.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressesRequest {
    #[schema(value_type = Vec<ActorId>)]
    actor_ids: Vec<String>,
}

/// Where an actor's session is.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressBody {
    actor_id: String,
    /// The node (MAGE's cluster id) that made the session, if configured.
    node_id: Option<String>,
    /// The public session id.
    session_id: String,
    language: String,
}

/// The actors that have a live session, in one snapshot.
#[derive(Serialize, ToSchema)]
pub struct AddressesBody {
    addresses: Vec<AddressBody>,
}

/// MAGE's `getActorAddresses(actorIds)`.
///
/// One batch look-up: for each actor with a live session, its node id,
/// public session id and language. Actors without one are left out.
#[utoipa::path(
    post,
    path = "/v1/actors/addresses",
    operation_id = "getActorAddresses",
    tag = "game server",
    request_body = AddressesRequest,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The addresses found.", body = AddressesBody),
        BodyRefused,
        NotAdmin,
        StoreFailed,
    )
)]
pub async fn addresses(
    State(state): State<AppState>,
    _: Admin,
    body: Body,
) -> Result<Response, ApiError> {
    let req: AddressesRequest = body.json()?;
    let store = state.store.clone();
    let found = run(move || store.actor_addresses(&req.actor_ids)).await?;
    let addresses = found
        .into_iter()
        .map(|a| AddressBody {
            actor_id: a.actor_id,
            node_id: a.node_id,
            session_id: a.session_id,
            language: a.language,
        })
        .collect();
    Ok(json_response(StatusCode::OK, &AddressesBody { addresses }))
}

/// Why an actor's sessions end.
#[derive(Deserialize, ToSchema)]
pub struct ExpireRequest {
    /// [default: `expired`]
    #[schema(value_type = Option<UnsetReasonName>)]
    reason: Option<String>,
}

/// How many sessions ended.
#[derive(Serialize, ToSchema)]
pub struct ExpiredBody {
    expired: usize,
}

/// Ends every live session of an actor.
///
/// Each ends with `session.unset` and the reason (sessions already past
/// their expiry end with `expired` and are not counted).
#[utoipa::path(
    post,
    path = "/v1/actors/{actorId}/expire",
    operation_id = "expireActor",
    tag = "game server",
    params(("actorId" = ActorId, Path, description = "The actor: 1 to 255 bytes, no control characters.")),
    request_body(content = Option<ExpireRequest>, description = "The reason; an empty body means `expired`."),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "How many live sessions ended.", body = ExpiredBody),
        BodyRefused,
        NotAdmin,
        StoreFailed,
    )
)]
pub async fn expire_actor(
    State(state): State<AppState>,
    _: Admin,
    Param(actor_id): Param,
    body: Body,
) -> Result<Response, ApiError> {
    // No body, and a JSON `null`, both mean the default reason.
    let req: Option<ExpireRequest> = body.json_or_default()?;
    let reason = req.and_then(|r| r.reason);
    let reason = UnsetReason::parse(reason.as_deref().unwrap_or("expired"))?;
    let store = state.store.clone();
    let expired = run(move || store.expire_actor(&actor_id, reason)).await?;
    Ok(json_response(StatusCode::OK, &ExpiredBody { expired }))
}

/// The actor that takes the session over.
#[derive(Deserialize, ToSchema)]
pub struct ReassignRequest {
    /// Not the actor in the path (that is refused with `400 invalidActorId`).
    #[schema(value_type = ActorId)]
    to: String,
}

/// MAGE's `reassign(fromActor, toActor)`.
///
/// The actor's sessions end with `reassigned`; its newest goes on under
/// `to` with a new key (in the answer), keeping its id and data, and
/// `session.set` is announced for `to`.
#[utoipa::path(
    post,
    path = "/v1/actors/{actorId}/reassign",
    operation_id = "reassign",
    tag = "game server",
    params(("actorId" = ActorId, Path, description = "The actor whose session moves.")),
    request_body = ReassignRequest,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The moved session, with its new `key`.", body = SessionBody),
        BodyRefused,
        NotAdmin,
        (status = 404, description = "`noSession`: the actor has no live session.", body = ErrorBody),
        StoreFailed,
    )
)]
pub async fn reassign(
    State(state): State<AppState>,
    _: Admin,
    Param(from): Param,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ReassignRequest = body.json()?;
    let store = state.store.clone();
    match blocking(move || store.reassign(&from, &req.to)).await? {
        Ok(s) => session_response(StatusCode::OK, &s),
        Err(sessiondb::Error::Invalid(Reason::NoSession)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NoSession,
            "the actor has no live session to reassign",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Every session's events, as server-sent events.
///
/// `session.set` and `session.unset` of every session, in commit order
/// (on Redis, from every node); `session.lagged` with the number of events
/// this stream missed when it fell behind. The data of each event is JSON:
/// `SetEvent`, `UnsetEvent`, `LaggedEvent`. At most 64 streams at once.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "events",
    tag = "game server",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "A stream of `session.set`, `session.unset` and `session.lagged` events.", content_type = "text/event-stream", body = String),
        NotAdmin,
        (status = 503, description = "`tooManyStreams`: 64 streams are open.", body = ErrorBody),
    )
)]
pub async fn events(State(state): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    event_stream(
        &state.store,
        &state.streams,
        &state.metrics,
        state.shutdown.clone(),
    )
}
