//! Who may call what: the admin token rules (the server's README, "Who may
//! call what"), and the bearer credentials of requests.
//!
//! - With an admin token configured, admin routes need
//!   `Authorization: Bearer <token>` from every client: none gives `401
//!   unauthorized`, a wrong one `403 forbidden`.
//! - Without one, admin routes answer loopback clients only (others get
//!   `403 forbidden`).
//! - `/metrics` answers loopback clients, and others with the admin token.
//!
//! Tokens are compared as SHA-256 digests in constant time, so neither the
//! content nor the length of the configured token leaks through timing.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorCode};

/// Who may use the admin routes and read `/metrics`: the admin token
/// policy described at the top of this module.
#[derive(Clone)]
pub struct AdminPolicy {
    token: Option<[u8; 32]>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `ip` is a loopback address (IPv4-mapped IPv6 included).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The credentials of `Authorization: Bearer <credentials>`, if present.
///
/// Read as UTF-8, not only visible ASCII, so that keys of actors whose ids
/// are not ASCII work too.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|s| !s.is_empty())
}

impl AdminPolicy {
    /// The policy for `token`: `None` lets loopback clients use the admin
    /// routes without credentials; `Some` requires the token from everyone.
    pub fn new(token: Option<&str>) -> Self {
        AdminPolicy {
            token: token.map(digest),
        }
    }

    /// Whether an admin token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token
            .is_some_and(|expected| bool::from(digest(given).ct_eq(&expected)))
    }

    /// May a client at `peer` presenting `credentials` use an admin route?
    pub fn admin(&self, peer: IpAddr, credentials: Option<&str>) -> Result<(), ApiError> {
        if self.token.is_none() {
            return if is_loopback(peer) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden,
                    "no admin token is configured, so admin routes answer loopback clients only",
                ))
            };
        }
        match credentials {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "admin route: send `Authorization: Bearer <admin token>`",
            )),
            Some(given) if self.token_matches(given) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "the admin token is wrong",
            )),
        }
    }

    /// May a client at `peer` presenting `credentials` read `/metrics`?
    pub fn metrics(&self, peer: IpAddr, credentials: Option<&str>) -> Result<(), ApiError> {
        if is_loopback(peer) {
            Ok(())
        } else {
            self.admin(peer, credentials)
        }
    }
}

fn peer(parts: &Parts) -> Result<IpAddr, ApiError> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .ok_or_else(|| ApiError::internal("the client's address is unknown"))
}

/// Extractor: the request passed the admin check. Works with any router
/// state that holds an [`AdminPolicy`] (`FromRef`).
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    AdminPolicy: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        AdminPolicy::from_ref(state).admin(peer(parts)?, bearer(&parts.headers))?;
        Ok(Admin)
    }
}

/// Extractor: the request may read `/metrics`.
pub struct MetricsReader;

impl<S> FromRequestParts<S> for MetricsReader
where
    S: Send + Sync,
    AdminPolicy: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        AdminPolicy::from_ref(state).metrics(peer(parts)?, bearer(&parts.headers))?;
        Ok(MetricsReader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn without_a_token_only_loopback_clients_are_admins() {
        let policy = AdminPolicy::new(None);
        assert!(policy.admin(LOOPBACK, None).is_ok());
        assert!(policy.admin("::1".parse().unwrap(), None).is_ok());
        assert!(policy
            .admin("::ffff:127.0.0.1".parse().unwrap(), None)
            .is_ok());
        let e = policy.admin(REMOTE, Some("anything")).unwrap_err();
        assert_eq!(
            (e.status, e.error),
            (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
        );
        assert!(policy.metrics(REMOTE, None).is_err());
        assert!(policy.metrics(LOOPBACK, None).is_ok());
    }

    #[test]
    fn with_a_token_everyone_must_present_it() {
        let policy = AdminPolicy::new(Some("s3cret-token"));
        let e = policy.admin(LOOPBACK, None).unwrap_err();
        assert_eq!(
            (e.status, e.error),
            (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
        );
        let e = policy.admin(REMOTE, Some("s3cret-tokeN")).unwrap_err();
        assert_eq!(
            (e.status, e.error),
            (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
        );
        assert!(policy.admin(REMOTE, Some("s3cret")).is_err());
        assert!(policy.admin(REMOTE, Some("s3cret-token")).is_ok());
        assert!(policy.metrics(REMOTE, Some("s3cret-token")).is_ok());
        assert!(policy.metrics(REMOTE, None).is_err());
        assert!(policy.metrics(LOOPBACK, None).is_ok());
    }

    #[test]
    fn bearer_credentials_are_parsed_leniently() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer   p1:xyz ", Some("p1:xyz")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer  ", None),
        ] {
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&h), expected, "{value:?}");
        }
        let utf8 = "Bearer Zoë:abc";
        h.insert(
            header::AUTHORIZATION,
            axum::http::HeaderValue::from_bytes(utf8.as_bytes()).unwrap(),
        );
        assert_eq!(bearer(&h), Some("Zoë:abc"));
    }
}
