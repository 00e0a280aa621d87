//! The routes of the HTTP API v1 (DESIGN.md) and their handlers.
//!
//! Store calls block (a write waits for its commit, and for the fsync in
//! immediate mode), so every one runs on tokio's blocking pool.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sessiondb::{Data, Reason, Session, UnsetReason};

use crate::auth::{bearer, Admin, MetricsReader};
use crate::clock::now_ms;
use crate::cors;
use crate::error::{json_response, ApiError, EngineUnavailable};
use crate::events::stream as event_stream;
use crate::state::AppState;

/// Largest request body accepted; larger ones get `413 payloadTooLarge`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/sessions", post(register))
        .route("/v1/session/isValid", post(is_valid))
        .route("/v1/session/restore", post(restore))
        .route("/v1/session/logout", post(logout))
        .route(
            "/v1/session/data/{name}",
            get(get_data).put(put_data).delete(delete_data),
        )
        .route("/v1/actors/addresses", post(addresses))
        .route("/v1/actors/{actor_id}/session", get(actor_session))
        .route("/v1/actors/{actor_id}/expire", post(expire_actor))
        .route("/v1/actors/{actor_id}/reassign", post(reassign))
        .route("/v1/session/events", get(session_events))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(
            state.cors.clone(),
            cors::layer,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Records each request's latency (and whether the engine's server was
/// unavailable) and logs it.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    if response.extensions().get::<EngineUnavailable>().is_some() {
        state.metrics.engine_unavailable();
    }
    state
        .metrics
        .request(method.as_str(), &route, status, elapsed.as_secs_f64());
    tracing::debug!(%method, route, status, micros = elapsed.as_micros() as u64, "request");
    response
}

// ----- extractors and helpers -----

/// The request body, at most `MAX_BODY_BYTES`.
pub struct Body(Bytes);

/// How much of an oversized body is read (and dropped) before answering
/// 413, so that the client gets to read the answer: a server that answers
/// and closes while the client is still sending makes the client's socket
/// fail with "broken pipe" or "connection reset" instead.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payloadTooLarge",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        };
        let mut stream = req.into_body().into_data_stream();
        let mut body = Vec::new();
        let mut total = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "badRequest",
                    format!("reading the request body failed: {e}"),
                )
            })?;
            total = total.saturating_add(chunk.len());
            if total <= MAX_BODY_BYTES {
                body.extend_from_slice(&chunk);
            } else if total > MAX_BODY_BYTES + DRAIN_BYTES {
                break;
            }
        }
        if total > MAX_BODY_BYTES {
            return Err(too_large());
        }
        Ok(Body(Bytes::from(body)))
    }
}

impl Body {
    fn is_empty(&self) -> bool {
        self.0.iter().all(u8::is_ascii_whitespace)
    }

    /// The body as JSON of type `T`.
    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformedJson",
                "the request body is empty; send a JSON object",
            ));
        }
        serde_json::from_slice(&self.0).map_err(|e| {
            let error = match e.classify() {
                serde_json::error::Category::Data => "badRequest",
                _ => "malformedJson",
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                error,
                format!("the request body: {e}"),
            )
        })
    }

    /// As `json`, with an empty body read as `T::default()`.
    fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.is_empty() {
            Ok(T::default())
        } else {
            self.json()
        }
    }
}

/// A path parameter, with rejections in the JSON error shape.
pub struct Param(String);

impl<S: Send + Sync> FromRequestParts<S> for Param {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Param(p))
            .map_err(|e: PathRejection| ApiError::new(e.status(), "badRequest", e.body_text()))
    }
}

/// The full session key of a session-key route, from `Authorization: Bearer`.
pub struct SessionKey(String);

impl<S: Send + Sync> FromRequestParts<S> for SessionKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        bearer(&parts.headers)
            .map(|k| SessionKey(k.to_owned()))
            .ok_or_else(|| ApiError::invalid_key(Reason::InvalidSessionKey))
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> sessiondb::Result<T> + Send + 'static,
) -> Result<sessiondb::Result<T>, ApiError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| ApiError::internal(format!("a request worker failed: {e}")))
}

async fn run<T: Send + 'static>(
    job: impl FnOnce() -> sessiondb::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(job).await?.map_err(ApiError::from)
}

fn outcome<T>(result: &sessiondb::Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.reason().map_or("error", Reason::as_str),
    }
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A session in the API's JSON shape.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    id: String,
    actor_id: String,
    language: String,
    created_at: i64,
    expires_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    revision: u64,
    data: BTreeMap<String, Box<RawValue>>,
}

/// A stored JSON text as a JSON value, exactly as stored.
fn raw(json: &str) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(json.to_owned())
        .map_err(|e| ApiError::internal(format!("a stored data value is not JSON: {e}")))
}

pub fn data_json(data: &Data) -> Result<BTreeMap<String, Box<RawValue>>, ApiError> {
    data.iter()
        .map(|(name, json)| Ok((name.to_owned(), raw(json)?)))
        .collect()
}

pub fn session_body(s: &Session) -> Result<SessionBody, ApiError> {
    Ok(SessionBody {
        key: s.key().map(str::to_owned),
        id: s.id().to_owned(),
        actor_id: s.actor_id().to_owned(),
        language: s.language().to_owned(),
        created_at: s.created_at().timestamp_millis(),
        expires_at: s.expires_at_ms(),
        deadline: s.deadline().map(|d| d.timestamp_millis()),
        node_id: s.node_id().map(str::to_owned),
        version: s.version().map(str::to_owned),
        revision: s.revision(),
        data: data_json(s.data())?,
    })
}

fn session_response(status: StatusCode, s: &Session) -> Response {
    match session_body(s) {
        Ok(body) => json_response(status, &body),
        Err(e) => e.into_response(),
    }
}

// ----- handlers -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterRequest {
    actor_id: String,
    language: Option<String>,
    data: Option<BTreeMap<String, Box<RawValue>>>,
}

async fn register(State(state): State<AppState>, _: Admin, body: Body) -> Response {
    let result: Result<Response, ApiError> = async {
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
        Ok(session_response(StatusCode::CREATED, &session))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KeyRequest {
    session_key: Option<String>,
}

/// The key of `isValid`/`restore`: `sessionKey` in the body, else the
/// bearer credentials.
fn body_key(headers: &HeaderMap, body: &Body) -> Result<Option<String>, ApiError> {
    let req: KeyRequest = body.json_or_default()?;
    Ok(req
        .session_key
        .or_else(|| bearer(headers).map(str::to_owned)))
}

/// `{"valid":true}` or `{"valid":false,"reason":"<MAGE reason>"}`.
fn validity(rejected: Option<Reason>) -> Response {
    #[derive(Serialize)]
    struct Validity {
        valid: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    }
    json_response(
        StatusCode::OK,
        &Validity {
            valid: rejected.is_none(),
            reason: rejected.map(Reason::as_str),
        },
    )
}

async fn is_valid(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<Response, ApiError> = async {
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
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn restore(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<Response, ApiError> = async {
        let Some(key) = body_key(&headers, &body)? else {
            state
                .metrics
                .resolved("restore", Reason::InvalidSessionKey.as_str());
            return Err(ApiError::invalid_key(Reason::InvalidSessionKey));
        };
        let store = state.store.clone();
        let restored = blocking(move || store.restore(&key)).await?;
        state.metrics.resolved("restore", outcome(&restored));
        Ok(session_response(StatusCode::OK, &restored?))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn logout(
    State(state): State<AppState>,
    SessionKey(key): SessionKey,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let done = blocking(move || store.logout(&key)).await?;
    state.metrics.resolved("logout", outcome(&done));
    done?;
    Ok(no_content())
}

#[derive(Serialize)]
struct ValueBody {
    value: Box<RawValue>,
}

async fn get_data(
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
            "noData",
            format!("the session has no data value {name:?}"),
        )),
    }
}

async fn put_data(
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
            "malformedJson",
            "the request body is not UTF-8",
        )
    })?;
    let store = state.store.clone();
    let done = blocking(move || store.set_data_json(&key, &name, &json)).await?;
    state.metrics.resolved("data", outcome(&done));
    done?;
    Ok(no_content())
}

async fn delete_data(
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

async fn actor_session(
    State(state): State<AppState>,
    _: Admin,
    Param(actor_id): Param,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let found = run(move || store.actor_session(&actor_id)).await?;
    match found {
        Some(s) => Ok(session_response(StatusCode::OK, &s)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "noSession",
            "the actor has no live session",
        )),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddressesRequest {
    actor_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AddressBody {
    actor_id: String,
    node_id: Option<String>,
    session_id: String,
    language: String,
}

async fn addresses(
    State(state): State<AppState>,
    _: Admin,
    body: Body,
) -> Result<Response, ApiError> {
    let req: AddressesRequest = body.json()?;
    let store = state.store.clone();
    let found = run(move || store.actor_addresses(&req.actor_ids)).await?;
    let addresses: Vec<AddressBody> = found
        .into_iter()
        .map(|a| AddressBody {
            actor_id: a.actor_id,
            node_id: a.node_id,
            session_id: a.session_id,
            language: a.language,
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "addresses": addresses }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ExpireRequest {
    reason: Option<String>,
}

async fn expire_actor(
    State(state): State<AppState>,
    _: Admin,
    Param(actor_id): Param,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ExpireRequest = body.json_or_default()?;
    let reason = UnsetReason::parse(req.reason.as_deref().unwrap_or("expired"))?;
    let store = state.store.clone();
    let n = run(move || store.expire_actor(&actor_id, reason)).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "expired": n }),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReassignRequest {
    to: String,
}

async fn reassign(
    State(state): State<AppState>,
    _: Admin,
    Param(from): Param,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ReassignRequest = body.json()?;
    let store = state.store.clone();
    match blocking(move || store.reassign(&from, &req.to)).await? {
        Ok(s) => Ok(session_response(StatusCode::OK, &s)),
        Err(sessiondb::Error::Invalid(Reason::NoSession)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "noSession",
            "the actor has no live session to reassign",
        )),
        Err(e) => Err(e.into()),
    }
}

async fn session_events(State(state): State<AppState>, SessionKey(key): SessionKey) -> Response {
    crate::session_events::open(
        &state.store,
        &state.session_streams,
        &state.metrics,
        state.shutdown.clone(),
        key,
    )
    .await
}

async fn events(State(state): State<AppState>, _: Admin) -> Response {
    event_stream(
        &state.store,
        &state.streams,
        &state.metrics,
        state.shutdown.clone(),
    )
}

async fn metrics(State(state): State<AppState>, _: MetricsReader) -> Result<Response, ApiError> {
    let backlog = state.streams.backlog();
    let (metrics, store) = (state.metrics.clone(), state.store.clone());
    let text = tokio::task::spawn_blocking(move || metrics.render(&store, backlog, now_ms()))
        .await
        .map_err(|e| ApiError::internal(format!("rendering metrics failed: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// `200 {"status":"ok"}` when the store answers a ping (on Redis, one round
/// trip to the server), else `503 unavailable`.
async fn healthz(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let pinged = match blocking(move || store.ping()).await {
        Ok(pinged) => pinged,
        Err(e) => return e.into_response(),
    };
    state.metrics.pinged(&pinged);
    match pinged {
        Ok(_) => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        Err(e) => {
            let failed = ApiError::from(e);
            if failed.status == StatusCode::SERVICE_UNAVAILABLE {
                failed.into_response()
            } else {
                // Whatever failed, the store cannot serve: not healthy.
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    failed.message,
                )
                .into_response()
            }
        }
    }
}
