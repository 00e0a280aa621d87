//! The routes for operators and monitoring: health, metrics, and the
//! OpenAPI document of the API.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::MetricsReader;
use crate::blocking::blocking;
use crate::clock::now_ms;
use crate::error::{json_response, ApiError, ErrorBody, ErrorCode};
use crate::state::AppState;

/// The store answers.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Whether the store can serve.
///
/// Pings the store (on Redis, one round trip to the server).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "service",
    security(()),
    responses(
        (status = 200, description = "`{\"status\":\"ok\"}`.", body = Health),
        (status = 503, description = "`unavailable`: the store does not answer (its Redis server is down or too slow, or the store stopped).", body = ErrorBody),
    )
)]
pub async fn healthz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let pinged = blocking(move || store.ping()).await?;
    state.metrics.pinged(&pinged);
    match pinged {
        Ok(_) => Ok(json_response(StatusCode::OK, &Health { status: "ok" })),
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

/// Prometheus metrics (OpenMetrics text).
///
/// Answers loopback clients, and others with the admin token.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "service",
    security((), ("adminToken" = [])),
    responses(
        (status = 200, description = "The metrics.", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "`unauthorized`: a remote client without the admin token.", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden` (a wrong token, or a remote client and no token configured) or `crossOrigin` (a web page).", body = ErrorBody),
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
    _: MetricsReader,
) -> Result<Response, ApiError> {
    let backlog = state.streams.backlog(state.history.head());
    state.metrics.history_size(state.history.len());
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

/// This document.
///
/// The OpenAPI 3.1 document of HTTP API v1, generated from the server's
/// code (`docs/openapi.json` holds the same).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "service",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI document.", content_type = "application/json", body = Object),
    )
)]
pub async fn openapi() -> Result<Response, ApiError> {
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        super::openapi_json()?,
    )
        .into_response())
}
