//! `GET /v1/events`: the store's events as server-sent events, read from
//! the server's event history (`history`).
//!
//! Every event carries its SSE id. A stream starts with an id-only message
//! (no event: the SSE standard has the client keep the id): its position,
//! so that even a client that disconnects before any event can resume, and
//! a sign that it is connected. A
//! client that reconnects with the last id it saw (`Last-Event-ID`, or
//! `lastEventId` in the query) hears every event after it, once, in order,
//! then the live ones; if the history no longer holds them all, first
//! `session.lagged` with how many it dropped; for an id of another server
//! process, first `session.reset`.
//!
//! A stream reads the history at its own pace; the store never waits for
//! it, and a stream that falls further behind than the history reaches
//! hears `session.lagged` with the exact number it missed. Streams stop
//! when the client goes away or the server shuts down (which also ends the
//! stream, so that graceful shutdown is not held up by open streams).
//!
//! Event data (JSON): `session.set` `{"actorId","id","language","expiresAt"}`,
//! `session.unset` `{"actorId","id","reason"}`, `session.lagged` `{"missed"}`,
//! `session.reset` `{"reason"}`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;
use serde_json::json;
use sessiondb::Event;
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::history::{History, ResetReason, Resume};
use crate::metrics::Metrics;

/// Most event streams open at once.
pub const MAX_STREAMS: usize = 64;

/// Events a stream takes from the history at a time.
const BATCH: usize = 256;

/// The open streams' positions, for the backlog metric.
#[derive(Default)]
pub struct Streams {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<AtomicU64>>>,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicU64>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Events in the history that open streams have not sent yet.
    pub fn backlog(&self, head: u64) -> i64 {
        self.lock()
            .values()
            .map(|at| i64::try_from(head.saturating_sub(at.load(Ordering::Relaxed))).unwrap_or(0))
            .sum()
    }
}

/// The data of a `session.set` event: a session was registered, restored,
/// rotated or reassigned to this actor, or its expiry moved.
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

/// The data of a `session.unset` event: the session ended, or (`rotated`)
/// its key did and the session goes on under a new one.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnsetEvent<'a> {
    actor_id: &'a str,
    /// The public session id.
    id: &'a str,
    /// Why: `expired`, `loggedOut`, `replaced`, `reassigned`, `rotated`
    /// (a new key: a `session.set` of the same id follows), or the game's
    /// own (such as `banned`); on a session's own stream also a key reason
    /// (`noSession`, ...) when the server found the session gone.
    #[schema(example = "loggedOut")]
    reason: &'a str,
}

/// The data of a `session.lagged` event: this stream missed events (it
/// read too slowly, or resumed from an id older than the history kept);
/// resynchronise.
#[derive(Serialize, ToSchema)]
pub struct LaggedEvent {
    /// How many.
    missed: u64,
}

/// The data of a `session.reset` event: the stream was asked to resume
/// from an id this server process did not issue, so it cannot tell what
/// was missed; resynchronise. It then goes on from now.
#[derive(Serialize, ToSchema)]
pub struct ResetEvent {
    /// `otherServer`: another server process issued the id (this one
    /// restarted since, or the client reached another node: each keeps its
    /// own history); `unknownId`: not an id a sessiondb server issues.
    #[schema(example = "otherServer")]
    reason: &'static str,
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

/// `session.lagged {"missed": missed}`.
pub fn lagged_sse(missed: u64) -> SseEvent {
    sse("session.lagged", &LaggedEvent { missed })
}

/// `session.reset {"reason": reason}`.
pub fn reset_sse(reason: ResetReason) -> SseEvent {
    sse(
        "session.reset",
        &ResetEvent {
            reason: reason.as_str(),
        },
    )
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
        Event::Lagged { missed } => lagged_sse(*missed),
        other => sse(event.name(), &json!({ "unknown": format!("{other:?}") })),
    }
}

/// What an events stream needs of the server.
pub struct Following<'a> {
    pub history: &'a Arc<History>,
    pub streams: &'a Arc<Streams>,
    pub metrics: &'a Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
}

/// Opens a stream of the store's events for one client, from
/// `last_event_id` if given.
pub fn stream(at: Following<'_>, last_event_id: Option<&str>) -> Result<Response, ApiError> {
    let Following {
        history,
        streams,
        metrics,
        shutdown,
    } = at;
    if streams.lock().len() >= MAX_STREAMS {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManyStreams,
            format!("at most {MAX_STREAMS} event streams may be open at once"),
        ));
    }
    let head = history.head();
    let mut prelude = VecDeque::new();
    let cursor = match history.resume(last_event_id) {
        Resume::Fresh => {
            prelude.push_back(SseEvent::default().id(history.id(head)));
            head
        }
        Resume::After { seq, .. } => {
            // Its position again: the client hears at once that it is back.
            prelude.push_back(SseEvent::default().id(history.id(seq)));
            seq
        }
        Resume::Unknown(reason) => {
            prelude.push_back(reset_sse(reason).id(history.id(head)));
            head
        }
    };
    let id = streams.next_id.fetch_add(1, Ordering::Relaxed);
    let position = Arc::new(AtomicU64::new(cursor));
    streams.lock().insert(id, position.clone());
    metrics.event_streams().inc();
    let reader = Reader {
        history: history.clone(),
        wake: history.subscribe(),
        position,
        cursor,
        batch: prelude,
        shutdown,
        open: Open {
            streams: streams.clone(),
            metrics: metrics.clone(),
            id,
        },
    };
    Ok(Sse::new(reader.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// An open stream's place in [`Streams`]; removed when the stream goes.
struct Open {
    streams: Arc<Streams>,
    metrics: Arc<Metrics>,
    id: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.id);
        self.metrics.event_streams().dec();
    }
}

/// One stream's reading of the history.
struct Reader {
    history: Arc<History>,
    wake: watch::Receiver<u64>,
    /// `cursor`, for the backlog metric.
    position: Arc<AtomicU64>,
    /// The number of the last event sent (or skipped as missed).
    cursor: u64,
    /// Ready to send.
    batch: VecDeque<SseEvent>,
    shutdown: watch::Receiver<bool>,
    #[allow(dead_code)] // Held for its Drop.
    open: Open,
}

impl Reader {
    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures_util::stream::unfold(self, |mut r| async move {
            let event = r.next().await?;
            Some((Ok(event), r))
        })
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            if let Some(event) = self.batch.pop_front() {
                return Some(event);
            }
            // Marked seen before reading, so that an append in between wakes.
            self.wake.borrow_and_update();
            let after = self.history.after(self.cursor, BATCH);
            if after.missed > 0 {
                self.cursor += after.missed;
                self.batch
                    .push_back(lagged_sse(after.missed).id(self.history.id(self.cursor)));
            }
            for entry in after.entries {
                self.cursor = entry.seq;
                self.batch
                    .push_back(to_sse(&entry.event).id(self.history.id(entry.seq)));
            }
            self.position.store(self.cursor, Ordering::Relaxed);
            if !self.batch.is_empty() {
                continue;
            }
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                changed = self.shutdown.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }
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
