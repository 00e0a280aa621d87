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

/// Two path parameters, with rejections in the JSON error shape.
pub struct Params(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((a, b))| Params(a, b))
            .map_err(|e: PathRejection| {
                ApiError::new(e.status(), ErrorCode::BadRequest, e.body_text())
            })
    }
}

/// Where an event stream resumes: the `Last-Event-ID` header (what a
/// browser's `EventSource` sends when it reconnects), else the
/// `lastEventId` query parameter (for a first connection, which cannot set
/// headers there). A value that is not UTF-8 is kept as one no server
/// issued.
pub struct LastEventId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if let Some(value) = parts.headers.get("last-event-id") {
            let text = std::str::from_utf8(value.as_bytes()).unwrap_or("\u{fffd}");
            return Ok(LastEventId(Some(text.to_owned())));
        }
        let from_query = parts.uri.query().and_then(|query| {
            query.split('&').find_map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name == "lastEventId").then(|| percent_decoded(value))
            })
        });
        Ok(LastEventId(from_query))
    }
}

/// A query value with `%XX` escapes and `+` decoded; what does not decode
/// to UTF-8 keeps a replacement character.
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (other, None) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decoded("0123abcd-7.ff"), "0123abcd-7.ff");
        assert_eq!(percent_decoded("a%2Db+c"), "a-b c");
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz%e2%82%ac"), "%zz\u{20ac}");
        assert_eq!(percent_decoded("%ff"), "\u{fffd}");
    }
}
