//! The routes of HTTP API v1 (the crate's README) and their OpenAPI document, both
//! from one list: [`routes`] registers each handler with its
//! `#[utoipa::path]`, so the router and the document cannot differ.
//!
//! The handlers are grouped by who calls them: `client` (a game client
//! with its session key), `admin` (game servers with the admin token) and
//! `service` (health, metrics, the document). Each takes its inputs through
//! the extractors of `extract`, calls the store through `blocking`, and
//! returns `Result<Response, ApiError>`; `wire` holds the shapes they share
//! and `doc` what the document says about all of them.

mod admin;
mod client;
mod doc;
mod service;
mod wire;

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::cors;
use crate::error::{ApiError, EngineUnavailable};
use crate::state::AppState;

/// Every route, each with its part of the document.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(admin::register))
        .routes(routes!(admin::resolve))
        .routes(routes!(admin::extend))
        .routes(routes!(admin::expire_session))
        .routes(routes!(admin::actor_session))
        .routes(routes!(admin::addresses))
        .routes(routes!(admin::expire_actor))
        .routes(routes!(admin::reassign))
        .routes(routes!(admin::events))
        .routes(routes!(client::is_valid))
        .routes(routes!(client::restore))
        .routes(routes!(client::logout))
        .routes(routes!(
            client::get_data,
            client::put_data,
            client::delete_data
        ))
        .routes(routes!(client::session_events))
        .routes(routes!(service::healthz))
        .routes(routes!(service::metrics))
        .routes(routes!(service::openapi))
}

/// The OpenAPI 3.1 document of HTTP API v1.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// [`openapi`] as pretty JSON (what `GET /v1/openapi.json` answers and
/// `docs/openapi.json` holds), made once.
///
/// # Errors
/// The document does not serialise (a bug).
pub fn openapi_json() -> Result<&'static str, ApiError> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    JSON.get_or_init(|| openapi().to_pretty_json().map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| ApiError::internal(format!("the OpenAPI document does not serialise: {e}")))
}

/// The HTTP service of `state`: every route, the JSON errors of unknown
/// routes and methods, CORS, and request metrics.
pub fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::auth::AdminPolicy;
    use crate::metrics::Metrics;
    use crate::session_events::SessionStreams;

    /// The quoted paths in the router's `Debug` text (axum prints its
    /// route table there), less the two of its fallback router (`/` and
    /// `/{*__private__axum_fallback}`); empty if axum ever stops printing
    /// them, which fails the test below rather than passing it.
    fn router_paths(router: &Router) -> BTreeSet<String> {
        let text = format!("{router:?}");
        text.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with('/') && *s != "/" && !s.contains("__private__axum"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_router_serves_exactly_the_documented_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = sessiondb::SessionStore::open(sessiondb::Config::new(dir.path())).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let state = AppState {
            store: store.clone(),
            admin: AdminPolicy::new(None),
            session_streams: Arc::new(SessionStreams::new(8, metrics.clone())),
            metrics,
            streams: Arc::default(),
            cors: cors::CorsPolicy::default(),
            shutdown,
        };
        let served = router_paths(&router(state));
        let documented: BTreeSet<String> = openapi().paths.paths.keys().cloned().collect();
        assert!(documented.len() >= 15, "{documented:?}");
        assert_eq!(served, documented);
        store.close().unwrap();
    }
}
