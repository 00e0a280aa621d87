//! `GET /v1/session/events`: one session's own events, for its game client.
//!
//! Built for thousands of open streams: the server holds ONE store
//! subscription, read by the `sessiondb-session-events` thread (the
//! dispatcher), which hands each event to the streams of its actor (keyed
//! by actor id, then filtered by the session's public id). A stream is a
//! small mailbox and an async task, no thread.
//!
//! What a client hears, in order:
//! 1. `session.set` with the session's current state (`actorId`, `id`,
//!    `language`, `expiresAt`), at once: the key was valid when the stream
//!    opened (opening it resolves the key, which slides the expiry like any
//!    use of the key). A client that reconnects learns the same way that its
//!    key still works.
//! 2. A `session.set` each time this session's state changes (a `restore`
//!    that moved the expiry; one that changed nothing is not repeated), and
//!    at last its `session.unset` with the reason, after which the stream
//!    ends.
//!
//! No other session's events reach it, not even another session of the
//! same actor. An invalid key gets `401 {"error": reason}` instead.
//!
//! Slow clients (the store's slow-subscriber policy, per stream): a
//! stream's queue holds [`STREAM_CAPACITY`] events; when it is full, later
//! `session.set` events are counted, not queued, and the client hears
//! `session.lagged {"missed": n}` once it has read the queue. The dispatcher
//! never waits, so the store never does. A stream's `session.unset` is never
//! dropped: it is kept beside the queue and sent after it.
//!
//! When the dispatcher's own subscription falls behind the store (the
//! store's `Lagged`), any stream may have missed anything: each hears
//! `session.lagged` with the number the server missed (an upper bound for
//! that stream), then the server checks its key again; if the session is
//! gone, the stream sends `session.unset` with the check's reason (such as
//! `noSession`) and ends.
//!
//! Subscribing comes before the key check, so that an `unset` racing with
//! the open is either seen by the check (401) or delivered. On graceful
//! shutdown every stream ends (without an `unset`: the client reconnects).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use futures_util::Stream;
use sessiondb::{Event, Reason, SessionStore};
use tokio::sync::{watch, Notify};

use crate::error::ApiError;
use crate::events::{sse, to_sse, UnsetEvent};
use crate::metrics::Metrics;

/// Events a stream's queue holds before it counts misses instead.
pub const STREAM_CAPACITY: usize = 64;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data whole, so a poisoned lock
    // (a panic elsewhere while holding it) is still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The open per-session streams, by actor id.
pub struct SessionStreams {
    by_actor: Mutex<HashMap<String, Vec<Arc<Mailbox>>>>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

/// What one stream has not sent yet.
#[derive(Default)]
struct Inbox {
    /// The session's public id, known once the open check passed; until
    /// then every event of the actor is kept, to be sorted by `identify`.
    id: Option<String>,
    queue: VecDeque<Event>,
    /// The last `session.set` queued (at first the state the open check
    /// found): a `set` equal to it tells nothing new and is not queued.
    last_set: Option<Event>,
    /// Events not queued since the last `session.lagged`.
    missed: u64,
    /// The server's subscription lagged: check the key again.
    resync: bool,
    /// The session's `session.unset`, sent after the queue.
    end: Option<Event>,
}

struct Mailbox {
    inbox: Mutex<Inbox>,
    wake: Notify,
}

/// The next thing a stream sends.
enum Item {
    Event(Event),
    Lagged { missed: u64, resync: bool },
    End(Event),
}

impl Mailbox {
    /// Queues `event` if it is this stream's; returns how many events this
    /// stream missed because of it (0 or 1).
    fn deliver(&self, event: &Event, capacity: usize) -> u64 {
        let mut missed_now = 0;
        {
            let mut inbox = lock(&self.inbox);
            match event {
                Event::Set { id, .. } | Event::Unset { id, .. } => match inbox.id.as_deref() {
                    None => inbox.queue.push_back(event.clone()),
                    Some(mine) if mine != id => return 0,
                    Some(_) if matches!(event, Event::Unset { .. }) => {
                        if inbox.end.is_none() {
                            inbox.end = Some(event.clone());
                        }
                    }
                    Some(_) if inbox.last_set.as_ref() == Some(event) => return 0,
                    Some(_) if inbox.missed > 0 || inbox.queue.len() >= capacity => {
                        inbox.missed += 1;
                        missed_now = 1;
                    }
                    Some(_) => {
                        inbox.queue.push_back(event.clone());
                        inbox.last_set = Some(event.clone());
                    }
                },
                Event::Lagged { missed } => {
                    inbox.missed += missed;
                    inbox.resync = true;
                }
                _ => return 0,
            }
        }
        self.wake.notify_one();
        missed_now
    }

    /// The open check found `state` (the stream's first event): keeps, of
    /// what arrived before, the session's `unset` and its `set`s with a
    /// later expiry than that.
    fn identify(&self, state: &Event) {
        let Event::Set {
            id: session_id,
            expires_at,
            ..
        } = state
        else {
            return;
        };
        let mut inbox = lock(&self.inbox);
        let pending = std::mem::take(&mut inbox.queue);
        inbox.last_set = Some(state.clone());
        for event in pending {
            match &event {
                Event::Set {
                    id, expires_at: at, ..
                } if id == session_id
                    && at > expires_at
                    && inbox.last_set.as_ref() != Some(&event) =>
                {
                    inbox.last_set = Some(event.clone());
                    inbox.queue.push_back(event);
                }
                Event::Unset { id, .. } if id == session_id && inbox.end.is_none() => {
                    inbox.end = Some(event);
                }
                _ => {}
            }
        }
        inbox.id = Some(session_id.clone());
    }

    fn take(&self) -> Option<Item> {
        let mut inbox = lock(&self.inbox);
        if let Some(event) = inbox.queue.pop_front() {
            return Some(Item::Event(event));
        }
        if inbox.missed > 0 || inbox.resync {
            let item = Item::Lagged {
                missed: inbox.missed,
                resync: inbox.resync,
            };
            inbox.missed = 0;
            inbox.resync = false;
            return Some(item);
        }
        inbox.end.take().map(Item::End)
    }

    fn has_end(&self) -> bool {
        lock(&self.inbox).end.is_some()
    }
}

impl SessionStreams {
    /// No streams yet; each will queue up to `capacity` events (at least 1).
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> SessionStreams {
        SessionStreams {
            by_actor: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            metrics,
        }
    }

    /// Open streams.
    pub fn len(&self) -> usize {
        lock(&self.by_actor).values().map(Vec::len).sum()
    }

    /// A new stream for `actor_id`'s events; it stops receiving them when
    /// the returned registration drops.
    fn register(self: &Arc<Self>, actor_id: &str) -> Registration {
        let mailbox = Arc::new(Mailbox {
            inbox: Mutex::new(Inbox::default()),
            wake: Notify::new(),
        });
        lock(&self.by_actor)
            .entry(actor_id.to_owned())
            .or_default()
            .push(mailbox.clone());
        self.metrics.session_streams().inc();
        Registration {
            streams: self.clone(),
            actor_id: actor_id.to_owned(),
            mailbox,
        }
    }

    /// Hands `event` to the streams it concerns; never waits for one.
    pub fn dispatch(&self, event: &Event) {
        let by_actor = lock(&self.by_actor);
        let mut missed = 0;
        match event {
            Event::Set { actor_id, .. } | Event::Unset { actor_id, .. } => {
                for mailbox in by_actor.get(actor_id).into_iter().flatten() {
                    missed += mailbox.deliver(event, self.capacity);
                }
            }
            Event::Lagged { .. } => {
                for mailbox in by_actor.values().flatten() {
                    mailbox.deliver(event, self.capacity);
                }
            }
            _ => {}
        }
        drop(by_actor);
        if missed > 0 {
            self.metrics.session_events_dropped(missed);
        }
    }
}

/// A stream's place in [`SessionStreams`]; removes it when dropped.
struct Registration {
    streams: Arc<SessionStreams>,
    actor_id: String,
    mailbox: Arc<Mailbox>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_actor = lock(&self.streams.by_actor);
        if let Some(list) = by_actor.get_mut(&self.actor_id) {
            list.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
            if list.is_empty() {
                by_actor.remove(&self.actor_id);
            }
        }
        drop(by_actor);
        self.streams.metrics.session_streams().dec();
    }
}

/// Reads the server's store subscription and dispatches each event, until
/// `stop` is set or the store closes. The thread is named
/// `sessiondb-session-events`.
pub fn spawn_dispatcher(
    events: Receiver<Event>,
    streams: Arc<SessionStreams>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sessiondb-session-events".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match events.recv_timeout(Duration::from_millis(200)) {
                    Ok(event) => {
                        if let Event::Lagged { missed } = &event {
                            tracing::warn!(
                                missed,
                                "session event streams fell behind the store; each is told and checks its session again"
                            );
                        }
                        streams.dispatch(&event);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
}

/// Opens the stream of the session `key` names: subscribes, checks the
/// key (answering `401 {"error": reason}` when it is not valid), then
/// streams as described at the top of this module.
pub async fn open(
    store: &SessionStore,
    streams: &Arc<SessionStreams>,
    metrics: &Metrics,
    shutdown: watch::Receiver<bool>,
    key: String,
) -> Result<Response, ApiError> {
    // MAGE's keys are `actorId:secret`, split at the last `:`; the store
    // checks the rest.
    let Some((actor_id, _)) = key.rsplit_once(':') else {
        metrics.resolved("events", Reason::InvalidSessionKey.as_str());
        return Err(ApiError::invalid_key(Reason::InvalidSessionKey));
    };
    let registration = streams.register(actor_id);
    let checked = {
        let (store, key) = (store.clone(), key.clone());
        crate::blocking::blocking(move || store.resolve(&key)).await?
    };
    metrics.resolved("events", crate::blocking::outcome(&checked));
    let session = checked?;
    let first = Event::Set {
        id: session.id().to_owned(),
        actor_id: session.actor_id().to_owned(),
        language: session.language().to_owned(),
        expires_at: session.expires_at_ms(),
    };
    registration.mailbox.identify(&first);
    let follow = Follow {
        registration,
        store: store.clone(),
        key,
        actor_id: session.actor_id().to_owned(),
        id: session.id().to_owned(),
        shutdown,
        first: Some(first),
        check: false,
        done: false,
    };
    Ok(Sse::new(follow.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The state of one open stream.
struct Follow {
    registration: Registration,
    store: SessionStore,
    key: String,
    actor_id: String,
    id: String,
    shutdown: watch::Receiver<bool>,
    first: Option<Event>,
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

    async fn next(&mut self) -> Option<SseEvent> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(to_sse(&first));
        }
        let mailbox = self.registration.mailbox.clone();
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            // Made before looking, so that a wake-up in between is kept.
            let woken = mailbox.wake.notified();
            match mailbox.take() {
                Some(Item::Event(event)) => return Some(to_sse(&event)),
                Some(Item::Lagged { missed, resync }) => {
                    self.check |= resync;
                    return Some(to_sse(&Event::Lagged { missed }));
                }
                Some(Item::End(event)) => {
                    self.done = true;
                    return Some(to_sse(&event));
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
                    return Some(sse(
                        "session.unset",
                        &UnsetEvent::new(&self.actor_id, &self.id, reason),
                    ));
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
                tracing::warn!(error = %e, "checking a session after its stream lagged failed");
                None
            }
            Ok(Ok(())) | Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiondb::UnsetReason;

    fn set(id: &str, actor: &str, expires_at: u64) -> Event {
        Event::Set {
            id: id.into(),
            actor_id: actor.into(),
            language: "en".into(),
            expires_at,
        }
    }

    fn unset(id: &str, actor: &str, reason: &str) -> Event {
        Event::Unset {
            id: id.into(),
            actor_id: actor.into(),
            reason: UnsetReason::parse(reason).unwrap(),
        }
    }

    fn streams(capacity: usize) -> Arc<SessionStreams> {
        Arc::new(SessionStreams::new(capacity, Arc::new(Metrics::new())))
    }

    /// Everything a mailbox would send now, as names and short data.
    fn drain(mailbox: &Mailbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(item) = mailbox.take() {
            out.push(match item {
                Item::Event(Event::Set { id, expires_at, .. }) => format!("set {id} {expires_at}"),
                Item::Event(e) | Item::End(e) => match e {
                    Event::Unset { id, reason, .. } => format!("unset {id} {reason}"),
                    other => format!("{other:?}"),
                },
                Item::Lagged { missed, resync } => format!("lagged {missed} {resync}"),
            });
        }
        out
    }

    fn identified(streams: &Arc<SessionStreams>, actor: &str, id: &str) -> Registration {
        let r = streams.register(actor);
        r.mailbox.identify(&set(id, actor, 100));
        r
    }

    #[test]
    fn only_the_streams_own_session_is_delivered() {
        let s = streams(8);
        let mine = identified(&s, "p1", "A");
        let same_actor = identified(&s, "p1", "B");
        let other = identified(&s, "p2", "C");
        s.dispatch(&set("A", "p1", 200));
        s.dispatch(&set("B", "p1", 200));
        s.dispatch(&set("C", "p2", 200));
        s.dispatch(&unset("B", "p1", "replaced"));
        s.dispatch(&unset("A", "p1", "banned"));
        s.dispatch(&set("A", "p3", 300)); // reassigned to p3: another actor
        assert_eq!(drain(&mine.mailbox), ["set A 200", "unset A banned"]);
        assert_eq!(
            drain(&same_actor.mailbox),
            ["set B 200", "unset B replaced"]
        );
        assert_eq!(drain(&other.mailbox), ["set C 200"]);
        assert_eq!(s.len(), 3);
        drop((mine, same_actor, other));
        assert_eq!(s.len(), 0);
        assert!(lock(&s.by_actor).is_empty());
    }

    #[test]
    fn a_full_queue_counts_misses_and_never_drops_the_unset() {
        let s = streams(2);
        let r = identified(&s, "p1", "A");
        for t in 1..=5 {
            s.dispatch(&set("A", "p1", 100 + t));
        }
        s.dispatch(&unset("A", "p1", "loggedOut"));
        assert_eq!(
            drain(&r.mailbox),
            [
                "set A 101",
                "set A 102",
                "lagged 3 false",
                "unset A loggedOut"
            ]
        );
    }

    #[test]
    fn after_a_lag_delivery_resumes_in_order() {
        let s = streams(1);
        let r = identified(&s, "p1", "A");
        s.dispatch(&set("A", "p1", 101));
        s.dispatch(&set("A", "p1", 102)); // missed
        assert!(matches!(r.mailbox.take(), Some(Item::Event(_))));
        // Room again, but the client has not heard of the miss: still missed.
        s.dispatch(&set("A", "p1", 103));
        assert_eq!(drain(&r.mailbox), ["lagged 2 false"]);
        s.dispatch(&set("A", "p1", 104));
        assert_eq!(drain(&r.mailbox), ["set A 104"]);
    }

    #[test]
    fn a_set_that_changes_nothing_is_not_repeated() {
        let s = streams(8);
        let r = identified(&s, "p1", "A");
        s.dispatch(&set("A", "p1", 100)); // the open's own state, late
        s.dispatch(&set("A", "p1", 200));
        s.dispatch(&set("A", "p1", 200)); // a restore that moved nothing
        s.dispatch(&set("A", "p1", 300));
        assert_eq!(drain(&r.mailbox), ["set A 200", "set A 300"]);
    }

    #[test]
    fn a_lagging_server_tells_every_stream_to_resynchronise() {
        let s = streams(4);
        let a = identified(&s, "p1", "A");
        let b = identified(&s, "p2", "B");
        s.dispatch(&Event::Lagged { missed: 7 });
        assert_eq!(drain(&a.mailbox), ["lagged 7 true"]);
        assert_eq!(drain(&b.mailbox), ["lagged 7 true"]);
    }

    #[test]
    fn events_before_the_check_are_sorted_when_it_passes() {
        let s = streams(4);
        let r = s.register("p1");
        s.dispatch(&unset("OLD", "p1", "replaced"));
        s.dispatch(&set("A", "p1", 100)); // the register: as of the check
        s.dispatch(&set("A", "p1", 150)); // a restore after the check's read
        s.dispatch(&set("B", "p1", 150));
        r.mailbox.identify(&set("A", "p1", 100));
        s.dispatch(&unset("A", "p1", "expired"));
        assert_eq!(drain(&r.mailbox), ["set A 150", "unset A expired"]);
    }
}
