//! `GET /v1/session/events`: one session's own events, for its game client.
//!
//! Built for thousands of open streams: the server holds ONE store
//! subscription, read by the `sessiondb-event-log` thread ([`spawn_feeder`]), which
//! numbers each event, keeps it in the history and hands it to the streams
//! of its actor (keyed by actor id, then filtered by the session's public
//! id). A stream is a small mailbox and an async task, no thread.
//!
//! What a client hears, in order:
//! 1. On a new stream, `session.set` with the session's current state
//!    (`actorId`, `id`, `language`, `expiresAt`), at once: the key was
//!    valid when the stream opened (opening it resolves the key, which
//!    slides the expiry like any use of the key). A stream that resumes
//!    (`Last-Event-ID`, below) hears instead an id-only message (its
//!    position: it is connected) and the events it missed. The first
//!    event's id is the history's position when the stream opened (taken
//!    before the key is resolved, so nothing after it is missed): a change
//!    committed just before, not yet in the history, is in the state, and
//!    its `session.set` may still follow, or come again on a resume from
//!    that id.
//! 2. A `session.set` each time this session's state changes (a `restore`
//!    that moved the expiry; one that changed nothing is not repeated), and
//!    at last its `session.unset` with the reason, after which the stream
//!    ends. A `session.unset` with reason `rotated` ends the stream only if
//!    its key is the one rotated away: the server checks the stream's key
//!    when it hears one, and a stream opened with the new key goes on.
//!
//! Every event has an SSE id (`history`). A client that reconnects with the
//! last one (`Last-Event-ID`, or `lastEventId` in the query) hears every
//! event of its session after it, once, in order, then the live ones. When
//! the history no longer holds them all, it hears `session.lagged` with how
//! many events the server dropped since (an upper bound for this session),
//! then the current state; for an id of another server process (a restart,
//! another node), `session.reset`, then the current state. A key that no
//! longer works still hears how its session ended, when the id it brings is
//! tagged for that key and the history holds the end: those events, then
//! the stream ends; otherwise `401` as below.
//!
//! No other session's events reach it, not even another session of the
//! same actor. An invalid key gets `401 {"error": reason}` instead.
//!
//! Slow clients (the store's slow-subscriber policy, per stream): a
//! stream's queue holds [`STREAM_CAPACITY`] events; when it is full, later
//! `session.set` events are counted, not queued, and the client hears
//! `session.lagged {"missed": n}` once it has read the queue. The event log
//! never waits, so the store never does. A stream's `session.unset` is never
//! dropped: it is kept beside the queue and sent after it.
//!
//! When the server's own subscription falls behind the store (the store's
//! `Lagged`), any stream may have missed anything: each hears
//! `session.lagged` with the number the server missed (an upper bound for
//! that stream), then the server checks its key again; if the session is
//! gone, the stream sends `session.unset` with the check's reason (such as
//! `noSession`) and ends.
//!
//! Subscribing comes before the key check, so that an `unset` racing with
//! the open is either seen by the check (401) or delivered. On graceful
//! shutdown every stream ends (without an `unset`: the client reconnects).

mod mailbox;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use sessiondb::{Event, Reason, SessionStore};
use tokio::sync::watch;

pub use self::mailbox::{spawn_feeder, SessionStreams, STREAM_CAPACITY};
use self::mailbox::{Item, Registration};
use crate::error::ApiError;
use crate::events::{lagged_sse, reset_sse, sse, to_sse, UnsetEvent};
use crate::history::{History, Resume};
use crate::metrics::Metrics;

/// What a session stream needs of the server.
pub struct Opening<'a> {
    pub store: &'a SessionStore,
    pub streams: &'a Arc<SessionStreams>,
    pub history: &'a Arc<History>,
    pub metrics: &'a Metrics,
    pub shutdown: watch::Receiver<bool>,
}

/// Opens the stream of the session `key` names, from `last_event_id` if
/// given: subscribes, checks the key (answering `401 {"error": reason}`
/// when it is not valid and the history cannot tell how its session
/// ended), then streams as described at the top of this module.
pub async fn open(
    at: Opening<'_>,
    key: String,
    last_event_id: Option<&str>,
) -> Result<Response, ApiError> {
    let Opening {
        store,
        streams,
        history,
        metrics,
        shutdown,
    } = at;
    // MAGE's keys are `actorId:secret`, split at the last `:`; the store
    // checks the rest.
    let Some((actor_id, _)) = key.rsplit_once(':') else {
        metrics.resolved("events", Reason::InvalidSessionKey.as_str());
        return Err(ApiError::invalid_key(Reason::InvalidSessionKey));
    };
    let actor_id = actor_id.to_owned();
    let resume = history.resume(last_event_id);
    let registration = streams.register(&actor_id);
    // Every event after this one reaches the mailbox registered above.
    let told = history.head();
    let checked = {
        let (store, key) = (store.clone(), key.clone());
        crate::blocking::blocking(move || store.resolve(&key)).await?
    };
    metrics.resolved("events", crate::blocking::outcome(&checked));
    let session = match checked {
        Ok(session) => session,
        Err(sessiondb::Error::Invalid(reason)) => {
            if let Resume::After {
                seq,
                tag: Some(tag),
            } = &resume
            {
                if let Some(told) = ended_while_away(history, &actor_id, &key, *seq, tag) {
                    let events =
                        futures_util::stream::iter(told.into_iter().map(Ok::<_, Infallible>));
                    return Ok(Sse::new(events).into_response());
                }
            }
            return Err(ApiError::invalid_key(reason));
        }
        Err(e) => return Err(e.into()),
    };
    let tag = history.tag(&key, session.id());
    let state = Event::Set {
        id: session.id().to_owned(),
        actor_id: session.actor_id().to_owned(),
        language: session.language().to_owned(),
        expires_at: session.expires_at_ms(),
    };
    let mut prelude = VecDeque::new();
    let snapshot = |prelude: &mut VecDeque<SseEvent>| {
        registration.mailbox.identify(&state, told);
        prelude.push_back(to_sse(&state).id(history.tagged_id(told, &tag)));
    };
    match resume {
        Resume::Fresh => snapshot(&mut prelude),
        Resume::Unknown(reason) => {
            prelude.push_back(reset_sse(reason).id(history.tagged_id(told, &tag)));
            snapshot(&mut prelude);
        }
        Resume::After { seq, .. } => {
            // This session's events (and the log's own gaps) only.
            let mine = |e: &Event| match e {
                Event::Set { id, actor_id, .. } | Event::Unset { id, actor_id, .. } => {
                    id == session.id() && actor_id == session.actor_id()
                }
                _ => true,
            };
            let after = history.select(seq, usize::MAX, mine);
            if after.missed > 0 {
                let lost_upto = seq + after.missed;
                prelude.push_back(lagged_sse(after.missed).id(history.tagged_id(lost_upto, &tag)));
                snapshot(&mut prelude);
            } else {
                // Where it resumes from, at once: it is connected.
                prelude.push_back(SseEvent::default().id(history.tagged_id(seq, &tag)));
                let replay = after
                    .entries
                    .into_iter()
                    .filter(|e| e.seq <= told)
                    .map(|e| (e.seq, e.event))
                    .collect();
                registration.mailbox.resume(session.id(), replay, told);
            }
        }
    }
    let follow = Follow {
        registration,
        store: store.clone(),
        key,
        actor_id: session.actor_id().to_owned(),
        id: session.id().to_owned(),
        history: history.clone(),
        tag,
        last_seq: told,
        shutdown,
        prelude,
        check: false,
        done: false,
    };
    Ok(Sse::new(follow.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The events a client missed of the session `key` held, when the key no
/// longer works: found by `tag` (the key's and the session's) among the
/// unsets of the key's actor after event `seq`. `None` when the history
/// does not hold that session's end.
fn ended_while_away(
    history: &History,
    actor_id: &str,
    key: &str,
    seq: u64,
    tag: &str,
) -> Option<Vec<SseEvent>> {
    // The key's actor's events (and the log's own gaps) only.
    let of_actor = |e: &Event| match e {
        Event::Set { actor_id: a, .. } | Event::Unset { actor_id: a, .. } => a == actor_id,
        _ => true,
    };
    let after = history.select(seq, usize::MAX, of_actor);
    let (end, session_id) = after.entries.iter().find_map(|e| match &e.event {
        Event::Unset {
            id, actor_id: a, ..
        } if a == actor_id && history.tag_matches(tag, key, id) => Some((e.seq, id.clone())),
        _ => None,
    })?;
    let mut told = Vec::new();
    if after.missed > 0 {
        told.push(lagged_sse(after.missed).id(history.tagged_id(seq + after.missed, tag)));
    }
    for entry in after.entries.iter().take_while(|e| e.seq <= end) {
        match &entry.event {
            Event::Set {
                id, actor_id: a, ..
            }
            | Event::Unset {
                id, actor_id: a, ..
            } if *id == session_id && a == actor_id => {
                told.push(to_sse(&entry.event).id(history.tagged_id(entry.seq, tag)));
            }
            Event::Lagged { missed } => {
                told.push(lagged_sse(*missed).id(history.tagged_id(entry.seq, tag)));
            }
            _ => {}
        }
    }
    Some(told)
}

/// The state of one open stream.
struct Follow {
    registration: Registration,
    store: SessionStore,
    key: String,
    actor_id: String,
    id: String,
    history: Arc<History>,
    /// This stream's tag, in every id it sends.
    tag: String,
    /// The number of the last event told.
    last_seq: u64,
    shutdown: watch::Receiver<bool>,
    /// Sent before anything from the mailbox.
    prelude: VecDeque<SseEvent>,
    /// Check the key once the queue is read (after the server lagged).
    check: bool,
    done: bool,
}

impl Follow {
    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures_util::stream::unfold(self, |mut f| async move {
            let event = f.next().await?;
            Some((Ok(event), f))
        })
    }

    /// `event`, number `seq`, with its id.
    fn told(&mut self, seq: u64, event: SseEvent) -> SseEvent {
        self.last_seq = self.last_seq.max(seq);
        event.id(self.history.tagged_id(seq, &self.tag))
    }

    async fn next(&mut self) -> Option<SseEvent> {
        if self.done {
            return None;
        }
        if let Some(first) = self.prelude.pop_front() {
            return Some(first);
        }
        let mailbox = self.registration.mailbox.clone();
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            // Made before looking, so that a wake-up in between is kept.
            let woken = mailbox.wake.notified();
            match mailbox.take() {
                Some(Item::Event(seq, event)) => return Some(self.told(seq, to_sse(&event))),
                Some(Item::Rotated(seq, event)) => {
                    // Another key of this session may have been rotated
                    // away; this stream ends only if its own key did.
                    if self.gone().await.is_some() {
                        self.done = true;
                        return Some(self.told(seq, to_sse(&event)));
                    }
                    continue;
                }
                Some(Item::Lagged {
                    missed,
                    resync,
                    seq,
                }) => {
                    self.check |= resync;
                    return Some(self.told(seq, lagged_sse(missed)));
                }
                Some(Item::End(seq, event)) => {
                    self.done = true;
                    return Some(self.told(seq, to_sse(&event)));
                }
                None => {}
            }
            if self.check {
                self.check = false;
                if let Some(reason) = self.gone().await {
                    // The real `unset`, if it arrived meanwhile, says more.
                    if mailbox.has_end() {
                        continue;
                    }
                    self.done = true;
                    let unset = sse(
                        "session.unset",
                        &UnsetEvent::new(&self.actor_id, &self.id, reason),
                    );
                    return Some(self.told(self.last_seq, unset));
                }
                continue;
            }
            tokio::select! {
                () = woken => {}
                changed = self.shutdown.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Whether the session has ended, by checking its key (without moving
    /// its expiry): the reason if so. A store that cannot answer is taken
    /// as "still there"; the client hears the truth from its next request.
    async fn gone(&self) -> Option<&'static str> {
        let (store, key) = (self.store.clone(), self.key.clone());
        match crate::blocking::blocking(move || store.is_valid(&key)).await {
            Ok(Err(sessiondb::Error::Invalid(reason))) => Some(reason.as_str()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "checking a session's key for its stream failed");
                None
            }
            Ok(Ok(())) | Err(_) => None,
        }
    }
}
