//! Session events for subscribers, and the hub that delivers them.
//!
//! Slow-subscriber policy: each subscriber has a bounded channel
//! (`Config::event_capacity`). The store never blocks on a subscriber. When a
//! channel is full, the event is not queued for that subscriber; the miss is
//! counted (in `Stats::events_missed`) and, as soon as the channel has room
//! again, the subscriber first receives `Event::Lagged { missed }` so that it
//! knows it must resynchronise. Nothing is lost silently and the store never
//! stalls. A subscriber whose receiver is dropped is removed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::{clip, Error, Result};

/// Why a session was removed, as told to the client with `session.unset`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnsetReason {
    /// The session passed its expiry (`"expired"`).
    Expired,
    /// The client logged out (`"loggedOut"`).
    LoggedOut,
    /// A newer session of the same actor took its place (`"replaced"`).
    Replaced,
    /// The session was moved to another actor (`"reassigned"`).
    Reassigned,
    /// A reason of the game's own; build it with [`UnsetReason::parse`].
    Other(String),
}

/// Longest custom unset reason, in bytes.
pub const MAX_REASON_LEN: usize = 64;

impl UnsetReason {
    /// The wire form: `expired`, `loggedOut`, `replaced`, `reassigned`, or
    /// the custom string.
    pub fn as_str(&self) -> &str {
        match self {
            UnsetReason::Expired => "expired",
            UnsetReason::LoggedOut => "loggedOut",
            UnsetReason::Replaced => "replaced",
            UnsetReason::Reassigned => "reassigned",
            UnsetReason::Other(s) => s,
        }
    }

    /// Reads a reason: the four standard strings map to their variants,
    /// anything else becomes `Other` when it is 1..=64 bytes of
    /// `[A-Za-z0-9_.-]`.
    ///
    /// # Errors
    /// [`Error::InvalidReason`] for an empty, over-long or oddly spelt reason.
    pub fn parse(s: &str) -> Result<UnsetReason> {
        Ok(match s {
            "expired" => UnsetReason::Expired,
            "loggedOut" => UnsetReason::LoggedOut,
            "replaced" => UnsetReason::Replaced,
            "reassigned" => UnsetReason::Reassigned,
            other => {
                check_custom(other)?;
                UnsetReason::Other(other.to_owned())
            }
        })
    }

    /// Checks a reason built by hand (an `Other` must obey `parse`'s rules).
    pub(crate) fn check(&self) -> Result<()> {
        match self {
            UnsetReason::Other(s) => check_custom(s),
            _ => Ok(()),
        }
    }
}

fn check_custom(s: &str) -> Result<()> {
    let problem = if s.is_empty() {
        "must not be empty"
    } else if s.len() > MAX_REASON_LEN {
        "must be at most 64 bytes"
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "must be letters, digits, '_', '.' or '-'"
    } else {
        return Ok(());
    };
    Err(Error::InvalidReason {
        reason: clip(s),
        problem,
    })
}

impl fmt::Display for UnsetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change a client must hear about, sent to subscribers after it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// `session.set`: a session was registered, restored or reassigned to an actor.
    Set {
        /// Public session id.
        id: String,
        /// The actor now holding the session.
        actor_id: String,
        /// The actor's language.
        language: String,
        /// The stored expiry, Unix milliseconds.
        expires_at: u64,
    },
    /// `session.unset`: a session ended.
    Unset {
        /// Public session id.
        id: String,
        /// The actor that held the session.
        actor_id: String,
        /// Why it ended.
        reason: UnsetReason,
    },
    /// This subscriber's channel was full and it missed `missed` events
    /// before this one; resynchronise (for instance with `actor_session`).
    Lagged {
        /// How many events were not delivered.
        missed: u64,
    },
}

impl Event {
    /// MAGE's event name: `session.set`, `session.unset`, or `session.lagged`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Set { .. } => "session.set",
            Event::Unset { .. } => "session.unset",
            Event::Lagged { .. } => "session.lagged",
        }
    }
}

struct Subscriber {
    tx: Sender<Event>,
    missed: u64,
}

/// Delivers events to every subscriber without ever blocking the store.
pub(crate) struct EventHub {
    capacity: usize,
    subscribers: Mutex<Vec<Subscriber>>,
    missed_total: AtomicU64,
}

impl EventHub {
    pub fn new(capacity: usize) -> Self {
        EventHub {
            capacity,
            subscribers: Mutex::new(Vec::new()),
            missed_total: AtomicU64::new(0),
        }
    }

    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = crossbeam_channel::bounded(self.capacity);
        self.lock().push(Subscriber { tx, missed: 0 });
        rx
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().len()
    }

    pub fn missed_total(&self) -> u64 {
        self.missed_total.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        // A panic while holding this lock cannot leave the list half-changed
        // (every change is a single push/retain), so a poisoned lock is usable.
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells every subscriber that `missed` events never reached this node
    /// (an engine's event log dropped them before they were read). Each
    /// hears it as [`Event::Lagged`], added to what it missed itself.
    #[cfg(feature = "redis")]
    pub fn publish_gap(&self, missed: u64) {
        if missed == 0 {
            return;
        }
        self.missed_total.fetch_add(missed, Ordering::Relaxed);
        self.lock().retain_mut(|sub| {
            sub.missed += missed;
            match sub.tx.try_send(Event::Lagged { missed: sub.missed }) {
                Ok(()) => sub.missed = 0,
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return false,
            }
            true
        });
    }

    /// Sends `events`, in order, to every subscriber.
    pub fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut subs = self.lock();
        let mut missed_now = 0;
        subs.retain_mut(|sub| {
            for event in events {
                if sub.missed > 0 {
                    match sub.tx.try_send(Event::Lagged { missed: sub.missed }) {
                        Ok(()) => sub.missed = 0,
                        Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Disconnected(_)) => return false,
                    }
                }
                if sub.missed > 0 {
                    sub.missed += 1;
                    missed_now += 1;
                    continue;
                }
                match sub.tx.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        sub.missed += 1;
                        missed_now += 1;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            true
        });
        if missed_now > 0 {
            self.missed_total.fetch_add(missed_now, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unset(n: usize) -> Event {
        Event::Unset {
            id: n.to_string(),
            actor_id: "a".into(),
            reason: UnsetReason::Expired,
        }
    }

    #[test]
    fn a_full_subscriber_is_told_how_many_it_missed() {
        let hub = EventHub::new(2);
        let slow = hub.subscribe();
        let events: Vec<Event> = (0..5).map(unset).collect();
        hub.publish(&events);
        assert_eq!(hub.missed_total(), 3);
        assert_eq!(slow.try_recv().unwrap(), unset(0));
        assert_eq!(slow.try_recv().unwrap(), unset(1));
        hub.publish(&[unset(5)]);
        assert_eq!(slow.try_recv().unwrap(), Event::Lagged { missed: 3 });
        assert_eq!(slow.try_recv().unwrap(), unset(5));
    }

    #[test]
    fn dropped_subscribers_are_removed() {
        let hub = EventHub::new(4);
        drop(hub.subscribe());
        let kept = hub.subscribe();
        hub.publish(&[unset(1)]);
        assert_eq!(hub.subscriber_count(), 1);
        assert_eq!(kept.try_recv().unwrap(), unset(1));
    }

    #[test]
    fn custom_reasons_are_checked() {
        assert_eq!(
            UnsetReason::parse("loggedOut").unwrap(),
            UnsetReason::LoggedOut
        );
        assert_eq!(UnsetReason::parse("banned").unwrap().as_str(), "banned");
        assert!(UnsetReason::parse("").is_err());
        assert!(UnsetReason::parse("has space").is_err());
        assert!(UnsetReason::parse(&"x".repeat(65)).is_err());
    }
}
