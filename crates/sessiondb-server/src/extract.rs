//! What the handlers take from a request, with every rejection in the
//! API's JSON error shape: the body (at most [`MAX_BODY_BYTES`], read as
//! JSON on demand), a path parameter, and the session key of a session-key
//! route.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use sessiondb::Reason;

use crate::auth::bearer;
use crate::connections::BodyTimeout;
use crate::error::{ApiError, ErrorCode};

/// Largest request body accepted; larger ones get `413 payloadTooLarge`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How much of an oversized body is read (and dropped) before answering
/// 413, so that the client gets to read the answer: a server that answers
/// and closes while the client is still sending makes the client's socket
/// fail with "broken pipe" or "connection reset" instead.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;

/// The request body, at most `MAX_BODY_BYTES`.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let timeout = req.extensions().get::<BodyTimeout>().map(|t| t.0);
        let read = read_body(req);
        match timeout {
            None => read.await,
            Some(limit) => tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
                Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::RequestTimeout,
                    format!("the request body did not arrive within {limit:?}"),
                ))
            }),
        }
    }
}

/// Reads a body of at most `MAX_BODY_BYTES`.
async fn read_body(req: Request) -> Result<Body, ApiError> {
    let mut stream = req.into_body().into_data_stream();
    let mut body = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
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
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(Body(Bytes::from(body)))
}

impl Body {
    fn is_empty(&self) -> bool {
        self.0.iter().all(u8::is_ascii_whitespace)
    }

    /// The body as JSON of type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::MalformedJson,
                "the request body is empty; send a JSON object",
            ));
        }
        serde_json::from_slice(&self.0).map_err(|e| {
            let error = match e.classify() {
                serde_json::error::Category::Data => ErrorCode::BadRequest,
                _ => ErrorCode::MalformedJson,
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                error,
                format!("the request body: {e}"),
            )
        })
    }

    /// As `json`, with an empty body read as `T::default()`.
    pub fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.is_empty() {
            Ok(T::default())
        } else {
            self.json()
        }
    }
}

/// A path parameter, with rejections in the JSON error shape.
pub struct Param(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Param {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Param(p))
            .map_err(|e: PathRejection| {
                ApiError::new(e.status(), ErrorCode::BadRequest, e.body_text())
            })
    }
}

/// The full session key of a session-key route, from `Authorization: Bearer`.
pub struct SessionKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SessionKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        bearer(&parts.headers)
            .map(|k| SessionKey(k.to_owned()))
            .ok_or_else(|| ApiError::invalid_key(Reason::InvalidSessionKey))
    }
}
