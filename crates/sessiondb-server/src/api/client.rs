//! The routes a game client calls with its session key: MAGE's user
//! commands (`isValid`, `restore`, `logout`), the session's data, and the
//! session's own event stream.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::value::RawValue;
use sessiondb::Reason;
use utoipa::ToSchema;

use super::doc::{BodyRefused, KeyRefused, StoreFailed};
use super::wire::{no_content, raw, session_response, KeyRequest};
use crate::auth::bearer;
use crate::blocking::{blocking, outcome};
use crate::error::{json_response, ApiError, ErrorBody, ErrorCode};
use crate::extract::{Body, Param, SessionKey};
use crate::schemas::DataName;
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
/// which the stream ends. A client that reads too slowly hears
/// `session.lagged` with the number of `session.set`s it missed. The data
/// of each event is JSON: `SetEvent`, `UnsetEvent`, `LaggedEvent`.
#[utoipa::path(
    get,
    path = "/v1/session/events",
    operation_id = "sessionEvents",
    tag = "game client",
    security(("sessionKey" = [])),
    responses(
        (status = 200, description = "A stream of `session.set`, `session.unset` and `session.lagged` events.", content_type = "text/event-stream", body = String),
        KeyRefused,
        StoreFailed,
    )
)]
pub async fn session_events(
    State(state): State<AppState>,
    SessionKey(key): SessionKey,
) -> Result<Response, ApiError> {
    crate::session_events::open(
        &state.store,
        &state.session_streams,
        &state.metrics,
        state.shutdown.clone(),
        key,
    )
    .await
}
