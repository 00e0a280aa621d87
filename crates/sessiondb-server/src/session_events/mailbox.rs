//! The session streams' mailboxes: one per open stream, in a map keyed by
//! actor id, filled by the event log (`spawn_feeder`) with each event and
//! its number in the history, read by the stream's task (`super::Follow`).
//! The event log never waits for a stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use sessiondb::{Event, UnsetReason};
use tokio::sync::Notify;

use crate::history::History;
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

/// A queued event, with its number in the history.
#[derive(Debug, Clone)]
enum Queued {
    /// Sent as it is.
    Event(u64, Event),
    /// A `session.unset` `rotated` of the stream's session: it ends the
    /// stream only if the stream's key no longer works.
    Rotated(u64, Event),
}

/// What one stream has not sent yet.
#[derive(Default)]
struct Inbox {
    /// The session's public id, known once the open check passed; until
    /// then every event of the actor is kept, to be sorted by `identify`
    /// or `resume`.
    id: Option<String>,
    /// Events up to this number are told already (by the first event, or
    /// a replay from the history): they are not queued again.
    told: u64,
    queue: VecDeque<Queued>,
    /// The last `session.set` queued (at first the state the open check
    /// found): a `set` equal to it tells nothing new and is not queued.
    last_set: Option<Event>,
    /// Events not queued since the last `session.lagged`.
    missed: u64,
    /// The number of the last of them.
    missed_upto: u64,
    /// The server's subscription lagged: check the key again.
    resync: bool,
    /// The session's `session.unset`, sent after the queue.
    end: Option<(u64, Event)>,
}

pub(super) struct Mailbox {
    inbox: Mutex<Inbox>,
    pub(super) wake: Notify,
}

/// The next thing a stream sends.
pub(super) enum Item {
    Event(u64, Event),
    Rotated(u64, Event),
    Lagged { missed: u64, resync: bool, seq: u64 },
    End(u64, Event),
}

fn is_rotated(event: &Event) -> bool {
    matches!(
        event,
        Event::Unset {
            reason: UnsetReason::Rotated,
            ..
        }
    )
}

impl Inbox {
    /// Queues (or keeps as the end) an event of this stream's session.
    fn keep(&mut self, seq: u64, event: Event) {
        match &event {
            Event::Unset { .. } if is_rotated(&event) => {
                self.queue.push_back(Queued::Rotated(seq, event));
            }
            Event::Unset { .. } => {
                if self.end.is_none() {
                    self.end = Some((seq, event));
                }
            }
            _ => {
                if self.last_set.as_ref() != Some(&event) {
                    self.last_set = Some(event.clone());
                    self.queue.push_back(Queued::Event(seq, event));
                }
            }
        }
    }
}

impl Mailbox {
    /// Queues `event` (number `seq`) if it is this stream's; returns how
    /// many events this stream missed because of it (0 or 1).
    fn deliver(&self, seq: u64, event: &Event, capacity: usize) -> u64 {
        let mut missed_now = 0;
        {
            let mut inbox = lock(&self.inbox);
            if seq <= inbox.told {
                return 0;
            }
            match event {
                Event::Set { id, .. } | Event::Unset { id, .. } => match inbox.id.as_deref() {
                    None => inbox.queue.push_back(Queued::Event(seq, event.clone())),
                    Some(mine) if mine != id => return 0,
                    Some(_) if matches!(event, Event::Unset { .. }) => {
                        inbox.keep(seq, event.clone());
                    }
                    Some(_) if inbox.last_set.as_ref() == Some(event) => return 0,
                    Some(_) if inbox.missed > 0 || inbox.queue.len() >= capacity => {
                        inbox.missed += 1;
                        inbox.missed_upto = seq;
                        missed_now = 1;
                    }
                    Some(_) => inbox.keep(seq, event.clone()),
                },
                Event::Lagged { missed } => {
                    inbox.missed += missed;
                    inbox.missed_upto = seq;
                    inbox.resync = true;
                }
                _ => return 0,
            }
        }
        self.wake.notify_one();
        missed_now
    }

    /// The open check found `state` (the stream's first event), which tells
    /// everything up to event `told`: keeps, of what arrived before, the
    /// session's `unset` and its `set`s with a later expiry than that.
    pub(super) fn identify(&self, state: &Event, told: u64) {
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
        inbox.told = told;
        for queued in pending {
            let Queued::Event(seq, event) = queued else {
                continue;
            };
            if seq <= told {
                continue;
            }
            match &event {
                Event::Set {
                    id, expires_at: at, ..
                } if id == session_id && at > expires_at => inbox.keep(seq, event),
                Event::Unset { id, .. } if id == session_id => inbox.keep(seq, event),
                _ => {}
            }
        }
        inbox.id = Some(session_id.clone());
    }

    /// The open check found session `session_id`, and the stream resumes:
    /// `replay` (its events from the history, up to event `told`) comes
    /// first, then what arrived since, of this session, each once.
    pub(super) fn resume(&self, session_id: &str, replay: Vec<(u64, Event)>, told: u64) {
        let mut inbox = lock(&self.inbox);
        let pending = std::mem::take(&mut inbox.queue);
        inbox.told = told;
        let arrived = pending.into_iter().filter_map(|q| match q {
            Queued::Event(seq, event) if seq > told => Some((seq, event)),
            _ => None,
        });
        for (seq, event) in replay.into_iter().chain(arrived) {
            match &event {
                Event::Lagged { missed } => {
                    inbox.missed += missed;
                    inbox.missed_upto = seq;
                    inbox.resync = true;
                }
                Event::Set { id, .. } | Event::Unset { id, .. } if id == session_id => {
                    inbox.keep(seq, event);
                }
                _ => {}
            }
        }
        inbox.id = Some(session_id.to_owned());
    }

    pub(super) fn take(&self) -> Option<Item> {
        let mut inbox = lock(&self.inbox);
        match inbox.queue.pop_front() {
            Some(Queued::Event(seq, event)) => return Some(Item::Event(seq, event)),
            Some(Queued::Rotated(seq, event)) => return Some(Item::Rotated(seq, event)),
            None => {}
        }
        if inbox.missed > 0 || inbox.resync {
            let item = Item::Lagged {
                missed: inbox.missed,
                resync: inbox.resync,
                seq: inbox.missed_upto,
            };
            inbox.missed = 0;
            inbox.resync = false;
            return Some(item);
        }
        inbox.end.take().map(|(seq, event)| Item::End(seq, event))
    }

    pub(super) fn has_end(&self) -> bool {
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
    pub(super) fn register(self: &Arc<Self>, actor_id: &str) -> Registration {
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

    /// Hands `event`, number `seq` in the history, to the streams it
    /// concerns; never waits for one.
    pub fn dispatch(&self, seq: u64, event: &Event) {
        let by_actor = lock(&self.by_actor);
        let mut missed = 0;
        match event {
            Event::Set { actor_id, .. } | Event::Unset { actor_id, .. } => {
                for mailbox in by_actor.get(actor_id).into_iter().flatten() {
                    missed += mailbox.deliver(seq, event, self.capacity);
                }
            }
            Event::Lagged { .. } => {
                for mailbox in by_actor.values().flatten() {
                    mailbox.deliver(seq, event, self.capacity);
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
pub(super) struct Registration {
    streams: Arc<SessionStreams>,
    actor_id: String,
    pub(super) mailbox: Arc<Mailbox>,
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

/// Reads the server's store subscription until `stop` is set or the store
/// closes: appends each event to `history`, then hands it, with its
/// number, to the per-session streams. The thread is named
/// `sessiondb-event-log`.
pub fn spawn_feeder(
    events: Receiver<Event>,
    history: Arc<History>,
    streams: Arc<SessionStreams>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sessiondb-event-log".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match events.recv_timeout(Duration::from_millis(200)) {
                    Ok(event) => {
                        if let Event::Lagged { missed } = &event {
                            tracing::warn!(
                                missed,
                                "the server's event history fell behind the store; streams are told so"
                            );
                        }
                        let seq = history.append(event.clone());
                        streams.dispatch(seq, &event);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
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

    /// Hands `events` to `streams`, numbered from `first`.
    fn dispatch_all(streams: &SessionStreams, first: u64, events: &[Event]) {
        for (seq, event) in (first..).zip(events) {
            streams.dispatch(seq, event);
        }
    }

    /// Everything a mailbox would send now, as names and short data, each
    /// with its number.
    fn drain(mailbox: &Mailbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(item) = mailbox.take() {
            out.push(match item {
                Item::Event(n, Event::Set { id, expires_at, .. }) => {
                    format!("{n}: set {id} {expires_at}")
                }
                Item::Event(n, e) | Item::End(n, e) => match e {
                    Event::Unset { id, reason, .. } => format!("{n}: unset {id} {reason}"),
                    other => format!("{n}: {other:?}"),
                },
                Item::Rotated(n, _) => format!("{n}: rotated?"),
                Item::Lagged {
                    missed,
                    resync,
                    seq,
                } => format!("{seq}: lagged {missed} {resync}"),
            });
        }
        out
    }

    fn identified(streams: &Arc<SessionStreams>, actor: &str, id: &str) -> Registration {
        let r = streams.register(actor);
        r.mailbox.identify(&set(id, actor, 100), 0);
        r
    }

    #[test]
    fn only_the_streams_own_session_is_delivered() {
        let s = streams(8);
        let mine = identified(&s, "p1", "A");
        let same_actor = identified(&s, "p1", "B");
        let other = identified(&s, "p2", "C");
        dispatch_all(
            &s,
            1,
            &[
                set("A", "p1", 200),
                set("B", "p1", 200),
                set("C", "p2", 200),
                unset("B", "p1", "replaced"),
                unset("A", "p1", "banned"),
                set("A", "p3", 300), // reassigned to p3: another actor
            ],
        );
        assert_eq!(drain(&mine.mailbox), ["1: set A 200", "5: unset A banned"]);
        assert_eq!(
            drain(&same_actor.mailbox),
            ["2: set B 200", "4: unset B replaced"]
        );
        assert_eq!(drain(&other.mailbox), ["3: set C 200"]);
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
            s.dispatch(t, &set("A", "p1", 100 + t));
        }
        s.dispatch(6, &unset("A", "p1", "loggedOut"));
        assert_eq!(
            drain(&r.mailbox),
            [
                "1: set A 101",
                "2: set A 102",
                "5: lagged 3 false",
                "6: unset A loggedOut"
            ]
        );
    }

    #[test]
    fn after_a_lag_delivery_resumes_in_order() {
        let s = streams(1);
        let r = identified(&s, "p1", "A");
        s.dispatch(1, &set("A", "p1", 101));
        s.dispatch(2, &set("A", "p1", 102)); // missed
        assert!(matches!(r.mailbox.take(), Some(Item::Event(1, _))));
        // Room again, but the client has not heard of the miss: still missed.
        s.dispatch(3, &set("A", "p1", 103));
        assert_eq!(drain(&r.mailbox), ["3: lagged 2 false"]);
        s.dispatch(4, &set("A", "p1", 104));
        assert_eq!(drain(&r.mailbox), ["4: set A 104"]);
    }

    #[test]
    fn a_set_that_changes_nothing_is_not_repeated() {
        let s = streams(8);
        let r = identified(&s, "p1", "A");
        dispatch_all(
            &s,
            1,
            &[
                set("A", "p1", 100), // the open's own state, late
                set("A", "p1", 200),
                set("A", "p1", 200), // a restore that moved nothing
                set("A", "p1", 300),
            ],
        );
        assert_eq!(drain(&r.mailbox), ["2: set A 200", "4: set A 300"]);
    }

    #[test]
    fn a_lagging_server_tells_every_stream_to_resynchronise() {
        let s = streams(4);
        let a = identified(&s, "p1", "A");
        let b = identified(&s, "p2", "B");
        s.dispatch(9, &Event::Lagged { missed: 7 });
        assert_eq!(drain(&a.mailbox), ["9: lagged 7 true"]);
        assert_eq!(drain(&b.mailbox), ["9: lagged 7 true"]);
    }

    #[test]
    fn events_before_the_check_are_sorted_when_it_passes() {
        let s = streams(4);
        let r = s.register("p1");
        dispatch_all(
            &s,
            1,
            &[
                set("X", "p1", 50), // told by the first event already
                unset("OLD", "p1", "replaced"),
                set("A", "p1", 100), // the register: as of the check
                set("A", "p1", 150), // a restore after the check's read
                set("B", "p1", 150),
            ],
        );
        r.mailbox.identify(&set("A", "p1", 100), 1);
        s.dispatch(1, &set("A", "p1", 175)); // told: dropped
        s.dispatch(6, &unset("A", "p1", "expired"));
        assert_eq!(drain(&r.mailbox), ["4: set A 150", "6: unset A expired"]);
    }

    #[test]
    fn a_resumed_stream_replays_then_goes_on_each_event_once() {
        let s = streams(2);
        let r = s.register("p1");
        // Heard live while the stream was opening: 4 and 5 (5 is also in
        // the replay, which ends at the head read at open, 5).
        dispatch_all(&s, 4, &[set("A", "p1", 400), set("B", "p1", 400)]);
        s.dispatch(6, &set("A", "p1", 600));
        let replay = vec![
            (2, set("A", "p1", 200)),
            (3, Event::Lagged { missed: 1 }),
            (4, set("A", "p1", 400)),
        ];
        r.mailbox.resume("A", replay, 5);
        s.dispatch(5, &set("A", "p1", 400)); // late: told already
        s.dispatch(7, &unset("A", "p1", "loggedOut"));
        // A replay is not held to the queue's capacity.
        assert_eq!(
            drain(&r.mailbox),
            [
                "2: set A 200",
                "4: set A 400",
                "6: set A 600",
                "3: lagged 1 true",
                "7: unset A loggedOut"
            ]
        );
    }

    #[test]
    fn a_rotated_unset_waits_for_the_key_check_and_is_never_dropped() {
        let s = streams(1);
        let r = identified(&s, "p1", "A");
        s.dispatch(1, &set("A", "p1", 200));
        s.dispatch(2, &unset("A", "p1", "rotated"));
        s.dispatch(3, &set("A", "p1", 200));
        s.dispatch(4, &unset("A", "p1", "rotated"));
        assert_eq!(
            drain(&r.mailbox),
            ["1: set A 200", "2: rotated?", "4: rotated?"]
        );
        assert!(!r.mailbox.has_end());
    }
}
