//! The JSON shapes that several routes of HTTP API v1 share, each with its
//! OpenAPI schema (a session's own: `session_json`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use sessiondb::Session;
use utoipa::ToSchema;

use crate::error::{json_response, ApiError};
use crate::session_json::{session_body, StoredJsonError};

/// A stored JSON text as a JSON value, exactly as stored.
pub fn raw(json: &str) -> Result<Box<RawValue>, ApiError> {
    crate::session_json::raw(json).map_err(ApiError::from)
}

impl From<StoredJsonError> for ApiError {
    fn from(e: StoredJsonError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// `status` with the session as its JSON body.
pub fn session_response(status: StatusCode, s: &Session) -> Result<Response, ApiError> {
    Ok(json_response(status, &session_body(s)?))
}

/// A body naming a session by its full key.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRequest {
    /// The full session key `actorId:secret`.
    #[schema(example = "player-7:3q2-7wEm1cJXyKQ0a9u5Hn8rTsYbZvPd")]
    pub session_key: Option<String>,
}

/// `204 No Content`.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}
