//! The routes a game client calls with its session key: MAGE's user
//! commands (`isValid`, `restore`, `logout`), ending the actor's other
//! sessions, the session's data, and the session's own event stream.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sessiondb::{Reason, UnsetReason};
use utoipa::ToSchema;

use super::doc::{BodyRefused, KeyRefused, StoreFailed};
use super::wire::{no_content, raw, session_response, KeyRequest};
use crate::auth::bearer;
use crate::blocking::{blocking, outcome};
use crate::error::{json_response, ApiError, ErrorBody, ErrorCode};
use crate::extract::{Body, LastEventId, Param, SessionKey};
use crate::schemas::{DataName, UnsetReasonName};
use crate::session_events::Opening;
use crate::session_json::SessionBody;
use crate::state::AppState;

/// The key of `isValid`/`restore`: `sessionKey` in the body, else the
/// bearer credentials.
fn body_key(headers: &HeaderMap, body: &Body) -> Result<Option<String>, ApiError> {
    // No body, and a JSON `null`, both mean "no key in the body".
    let req: Option<KeyRequest> = body.json_or_default()?;
    Ok(req
        .and_then(|r| r.session_key)
        .or_else(|| bearer(headers).map(str::to_owned)))
}

/// MAGE's reasons a session key is refused.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum KeyReason {
    InvalidSessionKey,
    NoSession,
    KeyMismatch,
    BadVersion,
    Expired,
}

impl From<Reason> for KeyReason {
    fn from(reason: Reason) -> KeyReason {
        match reason {
            Reason::NoSession => KeyReason::NoSession,
            Reason::KeyMismatch => KeyReason::KeyMismatch,
            Reason::BadVersion => KeyReason::BadVersion,
            Reason::Expired => KeyReason::Expired,
            _ => KeyReason::InvalidSessionKey,
        }
    }
}

/// Whether a key names a live session; `reason` when it does not.
#[derive(Serialize, ToSchema)]
pub struct Validity {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<KeyReason>,
}

/// `{"valid":true}` or `{"valid":false,"reason":"<MAGE reason>"}`.
fn validity(rejected: Option<Reason>) -> Response {
    json_response(
        StatusCode::OK,
        &Validity {
            valid: rejected.is_none(),
            reason: rejected.map(KeyReason::from),
        },
    )
}

/// MAGE's `isValid(sessionKey)`.
///
/// Whether the key names a live session. The key comes from `sessionKey`
/// in the body, else from `Authorization: Bearer`. The session's expiry is
/// not moved.
#[utoipa::path(
    post,
    path = "/v1/session/isValid",
    operation_id = "isValid",
    tag = "game client",
    request_body(content = Option<KeyRequest>, description = "The key; or send it as the bearer credentials."),
    security((), ("sessionKey" = [])),
    responses(
        (status = 200, description = "`{\"valid\":true}`, or `{\"valid\":false,\"reason\":<MAGE reason>}`.", body = Validity),
        BodyRefused,
        StoreFailed,
    )
)]
pub async fn is_valid(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(key) = body_key(&headers, &body)? else {
        state
            .metrics
            .resolved("isValid", Reason::InvalidSessionKey.as_str());
        return Ok(validity(Some(Reason::InvalidSessionKey)));
    };
    let store = state.store.clone();
    let checked = blocking(move || store.is_valid(&key)).await?;
    state.metrics.resolved("isValid", outcome(&checked));
    match checked {
        Ok(()) => Ok(validity(None)),
        Err(sessiondb::Error::Invalid(reason)) => Ok(validity(Some(reason))),
        Err(e) => Err(e.into()),
    }
}

/// MAGE's `restore(sessionKey)`.
///
/// Resolves the key, slides the session's expiry and announces
/// `session.set` again. The key comes from `sessionKey` in the body, else
/// from `Authorization: Bearer`; the answer echoes it.
#[utoipa::path(
    post,
    path = "/v1/session/restore",
    operation_id = "restore",
    tag = "game client",
    request_body(content = Option<KeyRequest>, description = "The key; or send it as the bearer credentials."),
    security((), ("sessionKey" = [])),
    responses(
        (status = 200, description = "The session, with `key` echoed.", body = SessionBody),
        KeyRefused,
        BodyRefused,
        StoreFailed,
    )
)]
pub async fn restore(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(key) = body_key(&headers, &body)? else {
        state
            .metrics
            .resolved("restore", Reason::InvalidSessionKey.as_str());
        return Err(ApiError::invalid_key(Reason::InvalidSessionKey));
    };
    let store = state.store.clone();
    let restored = blocking(move || store.restore(&key)).await?;
    state.metrics.resolved("restore", outcome(&restored));
    session_response(StatusCode::OK, &restored?)
}

/// MAGE's `logout()`.
///
/// Ends the session with reason `loggedOut`.
#[utoipa::path(
    post,
    path = "/v1/session/logout",
    operation_id = "logout",
    tag = "game client",
    security(("sessionKey" = [])),
    responses(
        (status = 204, description = "The session ended."),
        KeyRefused,
        StoreFailed,
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    SessionKey(key): SessionKey,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let done = blocking(move || store.logout(&key)).await?;
    state.metrics.resolved("logout", outcome(&done));
    done?;
    Ok(no_content())
}

/// Why the actor's other sessions end.
#[derive(Deserialize, ToSchema, Default)]
pub struct ExpireOthersRequest {
    /// [default: `loggedOut`]
    #[schema(value_type = Option<UnsetReasonName>)]
    reason: Option<String>,
}

/// How many other sessions ended.
#[derive(Serialize, ToSchema)]
pub struct ExpiredOthersBody {
    expired: usize,
}

/// Ends the actor's other sessions ("log out my other devices").
///
/// Every other session of the key's actor ends with the reason (default
/// `loggedOut`), and each holder hears `session.unset` with it on its own
/// stream; this key's session goes on, untouched. Sessions already past
/// their expiry end with `expired` and are not counted.
#[utoipa::path(
    post,
    path = "/v1/session/expireOthers",
    operation_id = "expireOtherSessions",
    tag = "game client",
    request_body(content = Option<ExpireOthersRequest>, description = "The reason; an empty body means `loggedOut`."),
    security(("sessionKey" = [])),
    responses(
        (status = 200, description = "How many live sessions ended.", body = ExpiredOthersBody),
        BodyRefused,
        KeyRefused,
        StoreFailed,
    )
)]
pub async fn expire_others(
    State(state): State<AppState>,
    SessionKey(key): SessionKey,
    body: Body,
) -> Result<Response, ApiError> {
    // No body, and a JSON `null`, both mean the default reason.
    let req: Option<ExpireOthersRequest> = body.json_or_default()?;
    let reason = req.and_then(|r| r.reason);
    let reason = UnsetReason::parse(reason.as_deref().unwrap_or("loggedOut"))?;
    let store = state.store.clone();
    let done = blocking(move || store.expire_others(&key, reason)).await?;
    state.metrics.resolved("expireOthers", outcome(&done));
    Ok(json_response(
        StatusCode::OK,
        &ExpiredOthersBody { expired: done? },
    ))
}

/// A data value.
#[derive(Serialize, ToSchema)]
pub struct ValueBody {
    /// The JSON value, exactly as stored.
    #[schema(value_type = serde_json::Value)]
    value: Box<RawValue>,
}

/// MAGE's `session.getData(name)`.
#[utoipa::path(
    get,
    path = "/v1/session/data/{name}",
    operation_id = "getData",
    tag = "game client",
    params(("name" = DataName, Path, description = "The data value's name.")),
    security(("sessionKey" = [])),
    responses(
        (status = 200, description = "The value.", body = ValueBody),
        (status = 400, description = "`invalidDataName`: the name is empty or too long.", body = ErrorBody),
        KeyRefused,
        (status = 404, description = "`noData`: the session has no value of that name.", body = ErrorBody),
        StoreFailed,
    )
)]
pub async fn get_data(
    State(state): State<AppState>,
    SessionKey(key): SessionKey,
    Param(name): Param,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let data = blocking(move || store.data(&key)).await?;
    state.metrics.resolved("data", outcome(&data));
    match data?.get_json(&name) {
        // A struct, not `json!`: a `Value` would reorder the stored text.
        Some(json) => Ok(json_response(
            StatusCode::OK,
            &ValueBody { value: raw(json)? },
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NoData,
            format!("the session has no data value {name:?}"),
        )),
    }
}

/// MAGE's `session.setData(name, value)`.
///
/// The body is the value: any JSON value.
#[utoipa::path(
    put,
    path = "/v1/session/data/{name}",
    operation_id = "putData",
    tag = "game client",
    params(("name" = DataName, Path, description = "The data value's name.")),
    request_body(content = serde_json::Value, description = "The value: any JSON value.", content_type = "application/json"),
    security(("sessionKey" = [])),
    responses(
        (status = 204, description = "Stored."),
        BodyRefused,
        KeyRefused,
        StoreFailed,
    )
)]
pub async fn put_data(
    State(state): State<AppState>,
    SessionKey(key): SessionKey,
    Param(name): Param,
    body: Body,
) -> Result<Response, ApiError> {
    // Checked here so that bad JSON gets the same answer on every route.
    body.json::<serde::de::IgnoredAny>()?;
    let json = String::from_utf8(body.0.to_vec()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedJson,
            "the request body is not UTF-8",
        )
    })?;
    let store = state.store.clone();
    let done = blocking(move || store.set_data_json(&key, &name, &json)).await?;
    state.metrics.resolved("data", outcome(&done));
    done?;
    Ok(no_content())
}

/// MAGE's `session.delData(name)`.
#[utoipa::path(
    delete,
    path = "/v1/session/data/{name}",
    operation_id = "deleteData",
    tag = "game client",
    params(("name" = DataName, Path, description = "The data value's name.")),
    security(("sessionKey" = [])),
    responses(
        (status = 204, description = "Deleted (also when it was not set)."),
        (status = 400, description = "`invalidDataName`: the name is empty or too long.", body = ErrorBody),
        KeyRefused,
        StoreFailed,
    )
)]
pub async fn delete_data(
    State(state): State<AppState>,
    SessionKey(key): SessionKey,
    Param(name): Param,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let done = blocking(move || store.del_data(&key, &name)).await?;
    state.metrics.resolved("data", outcome(&done));
    done?;
    Ok(no_content())
}

/// The session's own events, as server-sent events.
///
/// First the session's current state as `session.set` (opening the stream
/// resolves the key, sliding its expiry), then a `session.set` for each
/// change of it, and at last its `session.unset` with the reason, after
/// which the stream ends (`rotated` ends only the stream of the key rotated
/// away). Every event has an SSE `id`: reconnect with the last one
/// (`Last-Event-ID`, or `lastEventId` in the query) to hear, after an
/// id-only message (its position), the events missed meanwhile instead of
/// the current state, once each, in order;
/// first `session.lagged` (then the state) when the server no longer holds
/// them all, or `session.reset` (then the state) for an id of another
/// server process. A key that stopped working meanwhile still hears how its
/// session ended, when the server holds that end; else `401`. A client
/// that reads too slowly hears `session.lagged` with the number of
/// `session.set`s it missed. The data of each event is JSON: `SetEvent`,
/// `UnsetEvent`, `LaggedEvent`, `ResetEvent`.
#[utoipa::path(
    get,
    path = "/v1/session/events",
    operation_id = "sessionEvents",
    tag = "game client",
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event heard: the stream goes on after it."),
        ("lastEventId" = Option<String>, Query, description = "As `Last-Event-ID`, for clients that cannot set headers; the header wins."),
    ),
    security(("sessionKey" = [])),
    responses(
        (status = 200, description = "A stream of `session.set`, `session.unset`, `session.lagged` and `session.reset` events.", content_type = "text/event-stream", body = String),
        KeyRefused,
        StoreFailed,
    )
)]
pub async fn session_events(
    State(state): State<AppState>,
    SessionKey(key): SessionKey,
    LastEventId(last): LastEventId,
) -> Result<Response, ApiError> {
    crate::session_events::open(
        Opening {
            store: &state.store,
            streams: &state.session_streams,
            history: &state.history,
            metrics: &state.metrics,
            shutdown: state.shutdown.clone(),
        },
        key,
        last.as_deref(),
    )
    .await
}
