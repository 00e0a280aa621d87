//! The API's error shape: `{"error": "<reason>", "message": "<human text>"}`
//! with a fitting status. `error` is one of [`ErrorCode`]: session-key
//! rejections use MAGE's reason strings (`invalidSessionKey`, `noSession`,
//! `keyMismatch`, `badVersion`, `expired`), the rest are the server's own.
//!
//! Also [`AnyResult`], what the commands return when they fail before or
//! outside a request.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sessiondb::Error;
use utoipa::ToSchema;

/// Any error, with its source chain.
pub type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What went wrong, as the `error` field of an error answer says it: a
/// closed set, so that clients can match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// The session key is missing or is not `actorId:secret` (MAGE).
    InvalidSessionKey,
    /// The actor has no session (MAGE).
    NoSession,
    /// The actor has a session, but not this one (MAGE).
    KeyMismatch,
    /// The session was made by another `major.minor` of the game (MAGE).
    BadVersion,
    /// The session has expired and is not reaped yet.
    Expired,
    /// An admin route without `Authorization: Bearer <admin token>`.
    Unauthorized,
    /// A wrong admin token, or no token configured and a remote client.
    Forbidden,
    /// An admin route or `/metrics` called from a web page.
    CrossOrigin,
    /// A CORS preflight from an origin not given with `--cors-origin`.
    OriginNotAllowed,
    /// The body is not JSON, or is empty where JSON is needed.
    MalformedJson,
    /// JSON of the wrong shape, or a bad path parameter.
    BadRequest,
    /// An actor id the store refuses (empty, too long, control characters).
    InvalidActorId,
    /// A language the store refuses.
    InvalidLanguage,
    /// A data name the store refuses.
    InvalidDataName,
    /// An unset reason the store refuses.
    InvalidReason,
    /// Session metadata the store refuses (too many entries, a bad name,
    /// a value too long or with control characters).
    InvalidMeta,
    /// A public session id that is not 1 to 64 URL-safe characters.
    InvalidSessionId,
    /// A reassign to the actor that already holds the session.
    ReassignToSelf,
    /// The session has no data value of that name.
    NoData,
    /// No such route.
    NotFound,
    /// The route exists, not with this method.
    MethodNotAllowed,
    /// The request body is over the server's limit.
    PayloadTooLarge,
    /// The request body did not arrive within the header timeout.
    RequestTimeout,
    /// The session's data would exceed the store's limit.
    DataTooLarge,
    /// The store cannot be reached, or is shutting down; retry.
    Unavailable,
    /// Other writers kept changing the same sessions; retry.
    Contention,
    /// The admin event streams are all in use.
    TooManyStreams,
    /// The server is at its connection limit (`--max-connections`).
    TooManyConnections,
    /// A stored record does not decode.
    Corrupt,
    /// A storage failure or a bug in sessiondb.
    Internal,
}

impl ErrorCode {
    /// The code a rejected session key gets: MAGE's reason.
    pub fn of_reason(reason: sessiondb::Reason) -> ErrorCode {
        match reason {
            sessiondb::Reason::NoSession => ErrorCode::NoSession,
            sessiondb::Reason::KeyMismatch => ErrorCode::KeyMismatch,
            sessiondb::Reason::BadVersion => ErrorCode::BadVersion,
            sessiondb::Reason::Expired => ErrorCode::Expired,
            _ => ErrorCode::InvalidSessionKey,
        }
    }
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: ErrorCode,
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

/// Every error answer: what went wrong, for programs, and a message for
/// people.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// What happened and what to do, in English.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: ErrorCode, message: impl Into<String>) -> Self {
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
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                message,
            )
        }
    }

    pub fn not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such route; GET /v1/openapi.json lists every route of the HTTP API v1",
        )
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "this route does not take that method",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
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
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::of_reason(reason),
            message,
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let bad = |error| ApiError::new(StatusCode::BAD_REQUEST, error, e.to_string());
        match &e {
            Error::Invalid(reason) => ApiError::invalid_key(*reason),
            Error::InvalidActorId { .. } => bad(ErrorCode::InvalidActorId),
            // A valid request (the document cannot say that `to` must
            // differ from the path's actor) that the session's state
            // refuses: the session already belongs to that actor.
            Error::ReassignToSelf { .. } => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::ReassignToSelf,
                e.to_string(),
            ),
            Error::InvalidMeta { .. } => bad(ErrorCode::InvalidMeta),
            Error::InvalidSessionId { .. } => bad(ErrorCode::InvalidSessionId),
            Error::InvalidLanguage { .. } => bad(ErrorCode::InvalidLanguage),
            Error::InvalidDataName { .. } => bad(ErrorCode::InvalidDataName),
            Error::InvalidReason { .. } => bad(ErrorCode::InvalidReason),
            Error::Data { .. } => bad(ErrorCode::MalformedJson),
            Error::DataTooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::DataTooLarge,
                e.to_string(),
            ),
            Error::Closed | Error::WorkerFailed { .. } => {
                tracing::error!(error = %e, "the store is not accepting requests");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the session store is shutting down or stopped; retry later",
                )
            }
            Error::Unavailable { source } => {
                tracing::warn!(error = %e, "the storage server is unavailable");
                ApiError::engine_unavailable(format!(
                    "the session store's server is unavailable ({source}); retry shortly"
                ))
            }
            Error::Contention { .. } => {
                tracing::warn!(error = %e, "a change did not settle");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Contention,
                    e.to_string(),
                )
            }
            Error::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt record");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Corrupt,
                    e.to_string(),
                )
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
        let body = ErrorBody {
            error: self.error,
            message: self.message,
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
