//! The API's error shape: `{"error": "<reason>", "message": "<human text>"}`
//! with a fitting status. Session-key rejections use MAGE's reason strings
//! (`invalidSessionKey`, `noSession`, `keyMismatch`, `badVersion`,
//! `expired`); the server's own reasons are listed in the README.
//!
//! Also [`AnyResult`], what the commands return when they fail before or
//! outside a request.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sessiondb::Error;

/// Any error, with its source chain.
pub type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
    /// The storage engine's server was unreachable or too slow
    /// ([`Error::Unavailable`]); the response then carries
    /// [`EngineUnavailable`], which the metrics count.
    pub engine_down: bool,
}

/// A response extension: this request failed because the storage engine's
/// server (Redis / Valkey) was unavailable.
#[derive(Debug, Clone, Copy)]
pub struct EngineUnavailable;

/// What a client is told to wait before retrying a `503 unavailable`.
const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
            engine_down: false,
        }
    }

    /// `503 unavailable`: the storage engine's server could not be reached
    /// or did not answer in time (the store reconnects by itself).
    pub fn engine_unavailable(message: impl Into<String>) -> Self {
        ApiError {
            engine_down: true,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    pub fn not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "notFound",
            "no such route; see the HTTP API v1 in the README",
        )
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "methodNotAllowed",
            "this route does not take that method",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A session key rejected for `reason` (401, MAGE's reason string).
    pub fn invalid_key(reason: sessiondb::Reason) -> Self {
        let message = match reason {
            sessiondb::Reason::InvalidSessionKey => {
                "the session key is missing or malformed; send the full key `actorId:secret`"
            }
            sessiondb::Reason::NoSession => "the actor has no session; register again",
            sessiondb::Reason::KeyMismatch => {
                "the actor has a session, but not this one; register again"
            }
            sessiondb::Reason::BadVersion => {
                "the session was made by another version of the game; register again"
            }
            sessiondb::Reason::Expired => "the session has expired; register again",
            _ => "the session key was rejected",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, reason.as_str(), message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let bad = |error| ApiError::new(StatusCode::BAD_REQUEST, error, e.to_string());
        match &e {
            Error::Invalid(reason) => ApiError::invalid_key(*reason),
            // The HTTP code API v1 has always given this refusal.
            Error::InvalidActorId { .. } | Error::ReassignToSelf { .. } => bad("invalidActorId"),
            Error::InvalidLanguage { .. } => bad("invalidLanguage"),
            Error::InvalidDataName { .. } => bad("invalidDataName"),
            Error::InvalidReason { .. } => bad("invalidReason"),
            Error::Data { .. } => bad("malformedJson"),
            Error::DataTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "dataTooLarge", e.to_string())
            }
            Error::Closed | Error::WorkerFailed { .. } => {
                tracing::error!(error = %e, "the store is not accepting requests");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the session store is shutting down or stopped; retry later",
                )
            }
            Error::Unavailable { source } => {
                tracing::warn!(error = %e, "the storage server is unavailable");
                ApiError::engine_unavailable(format!(
                    "the session store's server cannot be reached ({source}); retry shortly"
                ))
            }
            Error::Contention { .. } => {
                tracing::warn!(error = %e, "a change did not settle");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "contention", e.to_string())
            }
            Error::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt record");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "store failure");
                ApiError::internal(format!("the session store failed: {e}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.error,
            message: &self.message,
        };
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.engine_down {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
            response.extensions_mut().insert(EngineUnavailable);
        }
        response
    }
}

/// A JSON response; serialising our own types cannot fail, but if it did
/// the client would still get the JSON error shape.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({
                "error": "internal",
                "message": format!("could not encode the response: {e}"),
            })
            .to_string()
            .into_bytes(),
        ),
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}
