//! `GET /v1/events`: the store's events as server-sent events.
//!
//! Each stream has a store subscription of its own, so the library's
//! slow-subscriber policy applies per client: the store never waits; a
//! client that falls behind gets a `session.lagged` event telling how many
//! events it missed. A named thread moves events from the subscription's
//! channel to the HTTP stream; it stops when the client goes away or the
//! server shuts down (which also ends the stream, so that graceful shutdown
//! is not held up by open streams).
//!
//! Event data (JSON): `session.set` `{"actorId","id","language","expiresAt"}`,
//! `session.unset` `{"actorId","id","reason"}`, `session.lagged` `{"missed"}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use futures_util::Stream;
use serde::Serialize;
use serde_json::json;
use sessiondb::{Event, SessionStore};
use tokio::sync::{mpsc, watch};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;

/// Most event streams open at once; each holds a thread.
pub const MAX_STREAMS: usize = 64;

/// The open streams' subscriptions, for the backlog metric.
#[derive(Default)]
pub struct Streams {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Receiver<Event>>>,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Receiver<Event>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Events waiting in the open streams' subscriptions.
    pub fn backlog(&self) -> i64 {
        self.lock().values().map(|rx| rx.len() as i64).sum()
    }
}

/// The data of a `session.set` event: a session was registered, restored
/// or reassigned to this actor, or its expiry moved.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetEvent<'a> {
    actor_id: &'a str,
    /// Unix milliseconds.
    expires_at: u64,
    /// The public session id.
    id: &'a str,
    language: &'a str,
}

/// The data of a `session.unset` event: the session ended.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnsetEvent<'a> {
    actor_id: &'a str,
    /// The public session id.
    id: &'a str,
    /// Why: `expired`, `loggedOut`, `replaced`, `reassigned`, or the
    /// game's own (such as `banned`); on a session's own stream also a key
    /// reason (`noSession`, ...) when the server found the session gone.
    #[schema(example = "loggedOut")]
    reason: &'a str,
}

/// The data of a `session.lagged` event: this stream missed events.
#[derive(Serialize, ToSchema)]
pub struct LaggedEvent {
    /// How many.
    missed: u64,
}

impl<'a> UnsetEvent<'a> {
    pub fn new(actor_id: &'a str, id: &'a str, reason: &'a str) -> UnsetEvent<'a> {
        UnsetEvent {
            actor_id,
            id,
            reason,
        }
    }
}

/// An SSE event named `name` with `data` as its JSON data.
pub fn sse(name: &str, data: &impl Serialize) -> SseEvent {
    let event = SseEvent::default().event(name);
    match serde_json::to_string(data) {
        Ok(json) => event.data(json),
        // Our own types always serialise; say so if one ever does not.
        Err(e) => event.data(json!({ "error": e.to_string() }).to_string()),
    }
}

/// The SSE form of a store event.
pub fn to_sse(event: &Event) -> SseEvent {
    match event {
        Event::Set {
            id,
            actor_id,
            language,
            expires_at,
        } => sse(
            event.name(),
            &SetEvent {
                actor_id,
                id,
                language,
                expires_at: *expires_at,
            },
        ),
        Event::Unset {
            id,
            actor_id,
            reason,
        } => sse(
            event.name(),
            &UnsetEvent::new(actor_id, id, reason.as_str()),
        ),
        Event::Lagged { missed } => sse(event.name(), &LaggedEvent { missed: *missed }),
        other => sse(event.name(), &json!({ "unknown": format!("{other:?}") })),
    }
}

/// Opens a stream of the store's events for one client.
pub fn stream(
    store: &SessionStore,
    streams: &Arc<Streams>,
    metrics: &Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<Response, ApiError> {
    if streams.lock().len() >= MAX_STREAMS {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManyStreams,
            format!("at most {MAX_STREAMS} event streams may be open at once"),
        ));
    }
    let id = streams.next_id.fetch_add(1, Ordering::Relaxed);
    let subscription = store.subscribe();
    streams.lock().insert(id, subscription.clone());
    let (tx, rx) = mpsc::channel::<Event>(64);
    let forward = {
        let streams = streams.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        move || {
            metrics.event_streams().inc();
            while !tx.is_closed() && !*shutdown.borrow() {
                match subscription.recv_timeout(Duration::from_millis(250)) {
                    Ok(event) => {
                        if tx.blocking_send(event).is_err() {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            streams.lock().remove(&id);
            metrics.event_streams().dec();
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("sessiondb-sse".into())
        .spawn(forward)
    {
        streams.lock().remove(&id);
        return Err(ApiError::internal(format!(
            "could not start an event stream: {e}"
        )));
    }
    Ok(Sse::new(events(rx, shutdown))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn events(
    rx: mpsc::Receiver<Event>,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold((rx, shutdown), |(mut rx, mut shutdown)| async move {
        if *shutdown.borrow() {
            return None;
        }
        tokio::select! {
            event = rx.recv() => event.map(|e| (Ok(to_sse(&e)), (rx, shutdown))),
            _ = shutdown.changed() => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiondb::UnsetReason;

    /// The bytes an SSE response sends for `events`.
    fn wire(events: Vec<Event>) -> String {
        let stream = futures_util::stream::iter(
            events
                .iter()
                .map(|e| Ok::<_, Infallible>(to_sse(e)))
                .collect::<Vec<_>>(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = Sse::new(stream).into_response().into_body();
        let bytes = runtime
            .block_on(axum::body::to_bytes(body, usize::MAX))
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn every_event_kind_has_its_sse_name_and_json_data() {
        let text = wire(vec![
            Event::Set {
                id: "ID1".into(),
                actor_id: "p1".into(),
                language: "en".into(),
                expires_at: 7,
            },
            Event::Unset {
                id: "ID1".into(),
                actor_id: "p1".into(),
                reason: UnsetReason::parse("kicked").unwrap(),
            },
            Event::Lagged { missed: 3 },
        ]);
        assert_eq!(
            text,
            "event: session.set\n\
             data: {\"actorId\":\"p1\",\"expiresAt\":7,\"id\":\"ID1\",\"language\":\"en\"}\n\n\
             event: session.unset\n\
             data: {\"actorId\":\"p1\",\"id\":\"ID1\",\"reason\":\"kicked\"}\n\n\
             event: session.lagged\n\
             data: {\"missed\":3}\n\n"
        );
    }
}
