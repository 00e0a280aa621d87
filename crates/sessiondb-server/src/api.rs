//! The routes of the HTTP API v1 (DESIGN.md) and their handlers. Every
//! handler takes its inputs through the extractors of `extract`, calls the
//! store through `blocking`, and returns `Result<Response, ApiError>`.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sessiondb::{Data, Reason, Session, UnsetReason};

use crate::auth::{bearer, Admin, MetricsReader};
use crate::blocking::{blocking, outcome, run};
use crate::clock::now_ms;
use crate::cors;
use crate::error::{json_response, ApiError, EngineUnavailable, ErrorCode};
use crate::events::stream as event_stream;
use crate::extract::{Body, Param, SessionKey};
use crate::state::AppState;

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

// ----- helpers -----

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

async fn register(
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
    Ok(session_response(StatusCode::CREATED, &session))
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

async fn is_valid(
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

async fn restore(
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
    Ok(session_response(StatusCode::OK, &restored?))
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
            ErrorCode::NoData,
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
            ErrorCode::NoSession,
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
            ErrorCode::NoSession,
            "the actor has no live session to reassign",
        )),
        Err(e) => Err(e.into()),
    }
}

async fn session_events(
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

async fn events(State(state): State<AppState>, _: Admin) -> Result<Response, ApiError> {
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
async fn healthz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let pinged = blocking(move || store.ping()).await?;
    state.metrics.pinged(&pinged);
    match pinged {
        Ok(_) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        Err(e) => {
            let failed = ApiError::from(e);
            if failed.status == StatusCode::SERVICE_UNAVAILABLE {
                Err(failed)
            } else {
                // Whatever failed, the store cannot serve: not healthy.
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    failed.message,
                ))
            }
        }
    }
}
