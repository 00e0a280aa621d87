//! Shared set-up for the scenario tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use sessiondb::{Config, Event, ManualClock, Session, SessionStore, UnsetReason};
use tempfile::TempDir;

/// The manual clock's starting time: 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000;

/// A store in a fresh directory with a manual clock and no reaper thread,
/// so that tests decide when time moves and when reaping happens.
pub struct Fixture {
    pub dir: TempDir,
    pub clock: ManualClock,
    pub store: SessionStore,
}

pub fn config(dir: &TempDir, clock: &ManualClock) -> Config {
    Config::new(dir.path())
        .clock(Arc::new(clock.clone()))
        .reaper_thread(false)
        .ttl(Duration::from_secs(600))
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with(|c| c)
    }

    pub fn with(tune: impl FnOnce(Config) -> Config) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let store = SessionStore::open(tune(config(&dir, &clock))).expect("open");
        Fixture { dir, clock, store }
    }

    /// Closes the store and opens it again on the same directory and clock.
    pub fn reopen(self, tune: impl FnOnce(Config) -> Config) -> Fixture {
        let Fixture { dir, clock, store } = self;
        store.close().expect("close");
        let store = SessionStore::open(tune(config(&dir, &clock))).expect("reopen");
        Fixture { dir, clock, store }
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

/// Every event waiting on `rx`, without blocking.
pub fn drain(rx: &crossbeam_channel::Receiver<Event>) -> Vec<Event> {
    rx.try_iter().collect()
}

/// The full key of a session that has one (registered, resolved, reassigned).
pub fn key_of(session: &sessiondb::Session) -> String {
    session
        .key()
        .expect("a session obtained through a key carries it")
        .to_owned()
}

/// The validation reason of a call that must have rejected its key.
pub fn rejected<T: std::fmt::Debug>(result: sessiondb::Result<T>) -> sessiondb::Reason {
    match result {
        Err(e) => e
            .reason()
            .unwrap_or_else(|| panic!("expected a rejected key, got the error {e:?}")),
        Ok(v) => panic!("expected a rejected key, got Ok({v:?})"),
    }
}

/// The `session.set` event a subscriber gets for `session`.
pub fn set_event(session: &Session) -> Event {
    Event::Set {
        id: session.id().to_owned(),
        actor_id: session.actor_id().to_owned(),
        language: session.language().to_owned(),
        expires_at: session.expires_at_ms(),
    }
}

/// The `session.unset` event a subscriber gets when `session` ends for `reason`.
pub fn unset_event(session: &Session, reason: UnsetReason) -> Event {
    Event::Unset {
        id: session.id().to_owned(),
        actor_id: session.actor_id().to_owned(),
        reason,
    }
}
