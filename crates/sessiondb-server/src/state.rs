//! What every request handler shares.

use std::sync::Arc;

use axum::extract::FromRef;
use sessiondb::SessionStore;
use tokio::sync::watch;

use crate::auth::AdminPolicy;
use crate::cors::CorsPolicy;
use crate::events::Streams;
use crate::history::History;
use crate::metrics::Metrics;
use crate::session_events::SessionStreams;

/// The state of the HTTP service, cloned into every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: SessionStore,
    pub admin: AdminPolicy,
    pub metrics: Arc<Metrics>,
    pub streams: Arc<Streams>,
    /// Every event this process heard lately, numbered: where streams
    /// resume from.
    pub history: Arc<History>,
    /// The open `/v1/session/events` streams.
    pub session_streams: Arc<SessionStreams>,
    /// Which browser origins may call the session routes.
    pub cors: CorsPolicy,
    /// Turns true when shutdown starts; ends event streams.
    pub shutdown: watch::Receiver<bool>,
}

/// Lets the `auth` extractors find the admin policy.
impl FromRef<AppState> for AdminPolicy {
    fn from_ref(state: &AppState) -> Self {
        state.admin.clone()
    }
}

/// Lets the CORS middleware find its policy.
impl FromRef<AppState> for CorsPolicy {
    fn from_ref(state: &AppState) -> Self {
        state.cors.clone()
    }
}
