//! Browsers: which origins may call the session routes (CORS), and the
//! refusal of browser requests to the admin routes.
//!
//! - **Session routes** (`/v1/session/…`): a request whose `Origin` is one
//!   of the configured origins gets `Access-Control-Allow-Origin: <origin>`
//!   (echoed, never `*`), and a preflight (`OPTIONS` with
//!   `Access-Control-Request-Method`) from it is answered `204` allowing the
//!   session routes' methods and the `Authorization` and `Content-Type`
//!   headers. A preflight from any other origin gets `403 originNotAllowed`
//!   without CORS headers, so the browser refuses the call. With origins
//!   configured, every session-route response carries `Vary: Origin`. With
//!   none configured, no CORS header is ever sent.
//! - **Admin routes** (the rest of `/v1/…` and `/metrics`) are for game
//!   servers and operators, not browsers: a request carrying `Origin`, or
//!   `Sec-Fetch-Site: cross-site` / `same-site`, gets `403 crossOrigin`
//!   (a preflight included), whatever origins are configured. This also
//!   keeps a web page from driving a loopback server's token-less admin
//!   routes. A reverse proxy that serves them to a page must drop those
//!   headers.
//! - `/healthz`, `/v1/openapi.json` and unknown routes are left alone.

use std::fmt;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};

/// The methods the session routes use, allowed in preflights.
const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE";
/// The request headers the session routes read. `Last-Event-ID` is not
/// CORS-safelisted: a page's client that resumes its session's event
/// stream sends it, and the preflight must allow it.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Last-Event-ID";
/// Response headers a page may read besides the CORS-safelisted ones.
const EXPOSE_HEADERS: &str = "WWW-Authenticate, Retry-After";
/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE: &str = "600";

/// A configured origin that is not a browser origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidOrigin {
    /// The origin as given.
    pub origin: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl fmt::Display for InvalidOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a browser origin: {}; write it as scheme://host[:port], \
             e.g. https://game.example.com or http://localhost:8080",
            self.origin, self.problem
        )
    }
}

impl std::error::Error for InvalidOrigin {}

/// Which browser origins may call the session routes: the rules at the
/// top of this module. The default allows none (and sends no CORS
/// headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsPolicy {
    /// Normalised origins: lower case, no default port.
    origins: Vec<String>,
}

impl CorsPolicy {
    /// A policy allowing `origins`, each `http://` or `https://`, a host
    /// name or IP address (IPv6 in brackets) and an optional port, without
    /// a path: the form browsers send in `Origin`. Letters are lower-cased
    /// and a default port (80, 443) is dropped, as browsers do.
    ///
    /// # Errors
    /// [`InvalidOrigin`] naming the first origin that is not of that form
    /// (`*` and `null` included: list each origin).
    pub fn new<S: AsRef<str>>(
        origins: impl IntoIterator<Item = S>,
    ) -> Result<CorsPolicy, InvalidOrigin> {
        let mut parsed = Vec::new();
        for origin in origins {
            let origin = normalise(origin.as_ref())?;
            if !parsed.contains(&origin) {
                parsed.push(origin);
            }
        }
        Ok(CorsPolicy { origins: parsed })
    }

    /// Whether any origin is allowed.
    pub fn is_enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    /// The allowed origins, normalised.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// Whether a request's `Origin` value is allowed. Browsers send origins
    /// in their normal form, so the comparison is exact.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == origin)
    }
}

/// `origin` in the form browsers send, or why it is not an origin.
fn normalise(origin: &str) -> Result<String, InvalidOrigin> {
    let bad = |problem| InvalidOrigin {
        origin: origin.chars().take(200).collect(),
        problem,
    };
    let text = origin.trim();
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text == "*" {
        return Err(bad(
            "`*` is not accepted: list each origin that may call the session routes",
        ));
    }
    if text.eq_ignore_ascii_case("null") {
        return Err(bad(
            "`null` is the origin of sandboxed and local pages, which any page can forge",
        ));
    }
    let lower = text.to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or_else(|| bad("it has no scheme (http:// or https://)"))?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return Err(bad("the scheme must be http or https")),
    };
    if rest.is_empty() {
        return Err(bad("it has no host"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad(
            "an origin has no path, query or fragment (not even a trailing /)",
        ));
    }
    if rest.contains('@') {
        return Err(bad("an origin has no user name or password"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (address, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address must end with ]"))?;
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("the IPv6 address does not parse"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("only :port may follow the IPv6 address"))?,
            ),
        };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad(
                "the host must be a name of letters, digits, '-' and '.' (punycode for others) or an IP address",
            ));
        }
        (host.to_owned(), port)
    };
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("the port must be a number"));
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad("the port must be 1 to 65535")),
                Ok(n) if n.to_string() == default_port => Ok(format!("{scheme}://{host}")),
                Ok(n) => Ok(format!("{scheme}://{host}:{n}")),
            }
        }
    }
}

/// What a route is, for the rules above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Session,
    Admin,
    Other,
}

fn classify(path: &str) -> Class {
    if path.starts_with("/v1/session/") {
        Class::Session
    } else if path == "/v1/openapi.json" {
        // A public document: API browsers may fetch it from any page.
        Class::Other
    } else if path.starts_with("/v1/") || path == "/metrics" {
        Class::Admin
    } else {
        Class::Other
    }
}

/// Whether a request came from a web page of another site: it carries
/// `Origin`, or the browser says it is cross-site.
fn from_a_page(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|v| v == "cross-site" || v == "same-site")
}

fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Middleware applying the rules above; `policy` is the router's state.
pub async fn layer(State(policy): State<CorsPolicy>, request: Request, next: Next) -> Response {
    let class = classify(request.uri().path());
    let headers = request.headers();
    match class {
        Class::Other => next.run(request).await,
        Class::Admin => {
            if from_a_page(headers) {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::CrossOrigin,
                    "admin routes do not answer web pages (requests with an Origin header); \
                     call them from the game server",
                )
                .into_response()
            } else {
                next.run(request).await
            }
        }
        Class::Session => {
            let origin = headers
                .get(header::ORIGIN)
                .filter(|o| o.to_str().is_ok_and(|o| policy.allows(o)))
                .cloned();
            if is_preflight(request.method(), headers) {
                return match origin {
                    Some(origin) => preflight(origin),
                    None => {
                        let mut refused = ApiError::new(
                            StatusCode::FORBIDDEN,
                            ErrorCode::OriginNotAllowed,
                            "this origin may not call the session routes; the server allows \
                             the origins given with --cors-origin",
                        )
                        .into_response();
                        if policy.is_enabled() {
                            vary_origin(refused.headers_mut());
                        }
                        refused
                    }
                };
            }
            let mut response = next.run(request).await;
            let headers = response.headers_mut();
            if policy.is_enabled() {
                vary_origin(headers);
            }
            if let Some(origin) = origin {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                headers.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static(EXPOSE_HEADERS),
                );
            }
            response
        }
    }
}

fn vary_origin(headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// `204` allowing `origin` to send the session routes' requests.
fn preflight(origin: HeaderValue) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    vary_origin(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_read_as_browsers_send_them() {
        let policy = CorsPolicy::new([
            "https://Game.Example.com",
            "http://localhost:8080",
            "https://a.example:443",
            "http://127.0.0.1:80",
            "http://[::1]:3000",
            "http://localhost:8080",
        ])
        .unwrap();
        assert_eq!(
            policy.origins(),
            [
                "https://game.example.com",
                "http://localhost:8080",
                "https://a.example",
                "http://127.0.0.1",
                "http://[::1]:3000",
            ]
        );
        assert!(policy.allows("http://localhost:8080"));
        assert!(!policy.allows("http://localhost:8081"));
        assert!(!policy.allows("https://localhost:8080"));
        assert!(!CorsPolicy::default().is_enabled());
    }

    #[test]
    fn a_bad_origin_is_refused_with_a_reason() {
        for (origin, problem) in [
            ("", "empty"),
            ("*", "list each origin"),
            ("null", "forge"),
            ("localhost:8080", "no scheme"),
            ("ftp://example.com", "http or https"),
            ("https://example.com/", "no path"),
            ("https://example.com/game", "no path"),
            ("https://user@example.com", "user name"),
            ("https://exa mple.com", "host"),
            ("https://example.com:", "port must be a number"),
            ("https://example.com:99999", "1 to 65535"),
            ("https://example.com:0", "1 to 65535"),
            ("http://[::1", "must end with ]"),
            ("http://[nope]", "IPv6"),
            ("http://", "no host"),
        ] {
            let e = CorsPolicy::new([origin]).unwrap_err();
            assert!(e.problem.contains(problem), "{origin:?}: {e}");
            assert!(e.to_string().contains("scheme://host[:port]"), "{e}");
        }
    }

    #[test]
    fn routes_are_classified_by_path() {
        assert_eq!(classify("/v1/session/isValid"), Class::Session);
        assert_eq!(classify("/v1/session/events"), Class::Session);
        assert_eq!(classify("/v1/session/data/gold"), Class::Session);
        assert_eq!(classify("/v1/sessions"), Class::Admin);
        assert_eq!(classify("/v1/events"), Class::Admin);
        assert_eq!(classify("/v1/actors/p1/expire"), Class::Admin);
        assert_eq!(classify("/metrics"), Class::Admin);
        assert_eq!(classify("/healthz"), Class::Other);
        assert_eq!(classify("/v1/openapi.json"), Class::Other);
        assert_eq!(classify("/v1/sessions/resolve"), Class::Admin);
    }
}
