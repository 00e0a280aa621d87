//! The OpenAPI 3.1 document of HTTP API v1: what every route shares (the
//! title, the tags, the two bearer schemes, the error answers). Each
//! route's own part is the `#[utoipa::path]` on its handler, and `api`
//! collects them from the router itself, so the document lists exactly the
//! routes the server answers.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::error::{ErrorBody, ErrorCode};
use crate::events::{LaggedEvent, ResetEvent, SetEvent, UnsetEvent};
use crate::schemas::{DataName, SessionId};

// The routes' tags ("game client", "game server", "service") and scheme
// names are literals in their `#[utoipa::path]`s: the macro takes no
// constants there.

/// The security scheme of the admin routes.
pub const ADMIN_TOKEN: &str = "adminToken";
/// The security scheme of the session-key routes.
pub const SESSION_KEY: &str = "sessionKey";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessiondb HTTP API v1",
        description = "MAGE's session commands over HTTP: game servers register sessions for \
            actors and hand the full key `actorId:secret` to the game client, which uses it on \
            every call. All bodies are JSON and time values are Unix milliseconds. Every error \
            is `{\"error\": <ErrorCode>, \"message\": <text>}`; a session key that is not valid \
            is refused with MAGE's reasons (`invalidSessionKey`, `noSession`, `keyMismatch`, \
            `badVersion`, `expired`).",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    servers(
        (url = "http://127.0.0.1:7420", description = "`sessiondb serve` with its default `--listen`"),
    ),
    tags(
        (name = "game client", description = "Routes a game client calls with its session key \
            (browsers too, from the origins given with `--cors-origin`)."),
        (name = "game server", description = "Admin routes, for game servers: they need \
            `Authorization: Bearer <admin token>`; without a configured token they answer \
            loopback clients only. They never answer web pages (`403 crossOrigin`)."),
        (name = "service", description = "Health, metrics and this document."),
    ),
    components(schemas(
        ErrorBody,
        ErrorCode,
        DataName,
        SessionId,
        SetEvent,
        UnsetEvent,
        LaggedEvent,
        ResetEvent
    )),
    modifiers(&Security),
)]
pub struct ApiDoc;

/// Adds the two bearer schemes.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            ADMIN_TOKEN,
            bearer(
                "The admin token (`--admin-token` or `SESSIONDB_ADMIN_TOKEN`). Without one \
                 configured, admin routes answer loopback clients without credentials.",
            ),
        );
        components.add_security_scheme(
            SESSION_KEY,
            bearer("A full session key `actorId:secret`, as register answered it."),
        );
    }
}

/// The answers of a route that reads a JSON body and is refused it.
#[derive(IntoResponses)]
#[allow(dead_code)] // Described, never built: handlers answer with ApiError.
pub enum BodyRefused {
    /// `malformedJson` (the body is not JSON, or empty where JSON is
    /// needed), `badRequest` (JSON of the wrong shape), or a value the
    /// store refuses: `invalidActorId`, `invalidLanguage`,
    /// `invalidDataName`, `invalidReason`, `invalidMeta`,
    /// `invalidSessionId`.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `payloadTooLarge` (the body is over 1 MiB) or `dataTooLarge` (the
    /// session's data would exceed the store's limit).
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `requestTimeout`: the body did not arrive within the header
    /// timeout (`--header-timeout`, 10 s by default).
    #[response(status = 408)]
    TooSlow(ErrorBody),
}

/// The answers of an admin route to a caller that may not use it.
#[derive(IntoResponses)]
#[allow(dead_code)] // Described, never built: handlers answer with ApiError.
pub enum NotAdmin {
    /// `unauthorized`: no `Authorization: Bearer <admin token>` while a
    /// token is configured.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(ErrorBody),
    /// `forbidden` (a wrong token, or no token configured and a client
    /// that is not on loopback) or `crossOrigin` (a request from a web
    /// page).
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// The answer of a route given a session key that is not valid.
#[derive(IntoResponses)]
#[allow(dead_code)] // Described, never built: handlers answer with ApiError.
pub enum KeyRefused {
    /// MAGE's reason: `invalidSessionKey` (missing or malformed),
    /// `noSession`, `keyMismatch`, `badVersion` or `expired`.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Refused(ErrorBody),
}

/// The answers of an admin route that takes a session key in its body.
#[derive(IntoResponses)]
#[allow(dead_code)] // Described, never built: handlers answer with ApiError.
pub enum NotAdminOrKeyRefused {
    /// `unauthorized` (no admin token while one is configured), or MAGE's
    /// reason the session key is refused: `invalidSessionKey`,
    /// `noSession`, `keyMismatch`, `badVersion` or `expired`.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(ErrorBody),
    /// `forbidden` or `crossOrigin`, as for every admin route.
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// The answers of a route when the store cannot serve it.
#[derive(IntoResponses)]
#[allow(dead_code)] // Described, never built: handlers answer with ApiError.
pub enum StoreFailed {
    /// `unavailable` (the store's Redis / Valkey server cannot be reached
    /// or did not answer in time, a write could not be confirmed on a
    /// replica, or the primary has fewer replicas than `--min-replicas`;
    /// or the store is shutting down; retry after `Retry-After`) or
    /// `contention` (other writers kept changing the same sessions; retry).
    #[response(
        status = 503,
        headers(("Retry-After" = String, description = "Seconds to wait, when the store's server is unreachable"))
    )]
    Unavailable(ErrorBody),
    /// `corrupt` (a stored record does not decode) or `internal` (a
    /// storage failure or a bug, logged by the server).
    #[response(status = 500)]
    Failed(ErrorBody),
}
