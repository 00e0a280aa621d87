//! Shared set-up for the scenario tests, on every engine: a test written
//! inside `on_every_engine! { ... }` runs on the embedded sled engine and,
//! with the crate's `redis` feature, on a real Redis server of its own and
//! on a Redis Cluster (three primaries, three replicas) that the test
//! process's cluster tests share, each store under a key prefix of its own
//! (`redis.rs`).
#![allow(dead_code, unused_macros)]

#[cfg(feature = "redis")]
pub mod redis;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use sessiondb::{Config, Event, ManualClock, Session, SessionStore, UnsetReason};
use tempfile::TempDir;

#[cfg(feature = "redis")]
use self::redis::{RedisCluster, RedisServer};

/// The engines a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sled,
    #[cfg(feature = "redis")]
    Redis,
    #[cfg(feature = "redis")]
    Cluster,
}

thread_local! {
    static ENGINE: Cell<Engine> = const { Cell::new(Engine::Sled) };
}

/// The engine the current test runs on (sled unless `on_every_engine!`
/// says otherwise).
pub fn engine() -> Engine {
    ENGINE.with(Cell::get)
}

/// Runs `test` with fixtures on `engine`; on Redis without a server binary,
/// says what it skipped instead (and fails when `CI=true`).
pub fn run_on(engine: Engine, name: &str, test: impl FnOnce()) {
    let missing = match engine {
        Engine::Sled => false,
        #[cfg(feature = "redis")]
        Engine::Redis => redis::find("redis-server", name).is_none(),
        #[cfg(feature = "redis")]
        Engine::Cluster => RedisCluster::shared(name).is_none(),
    };
    #[cfg(not(feature = "redis"))]
    let _ = name;
    if missing {
        return;
    }
    ENGINE.with(|e| e.set(engine));
    test();
}

/// Runs each test inside once per engine, in modules `sled_engine`, and
/// with the `redis` feature `redis_engine` and `cluster_engine`.
macro_rules! on_every_engine {
    ($( $(#[$m:meta])* fn $name:ident() $body:block )*) => {
        mod sled_engine {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$m])* #[test] fn $name() {
                crate::common::run_on(crate::common::Engine::Sled, stringify!($name), || $body)
            } )*
        }
        #[cfg(feature = "redis")]
        mod redis_engine {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$m])* #[test] fn $name() {
                crate::common::run_on(crate::common::Engine::Redis, stringify!($name), || $body)
            } )*
        }
        #[cfg(feature = "redis")]
        mod cluster_engine {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$m])* #[test] fn $name() {
                crate::common::run_on(crate::common::Engine::Cluster, stringify!($name), || $body)
            } )*
        }
    };
}

/// The manual clock's starting time: 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000;

/// A fresh store (a directory, or a Redis server of its own) with a manual
/// clock and no reaper thread, so that tests decide when time moves and
/// when reaping happens.
pub struct Fixture {
    pub dir: TempDir,
    pub clock: ManualClock,
    pub store: SessionStore,
    /// Keeps the store's server (if any) running while held.
    pub place: Place,
}

/// Where a fixture's store is, past its directory: on the Redis engine its
/// server, on the cluster engine its key prefix on the shared cluster.
#[derive(Default)]
pub struct Place {
    #[cfg(feature = "redis")]
    server: Option<RedisServer>,
    #[cfg(feature = "redis")]
    prefix: Option<String>,
}

impl Place {
    /// A place on the current test's engine.
    fn start() -> Place {
        match engine() {
            Engine::Sled => Place::default(),
            #[cfg(feature = "redis")]
            Engine::Redis => {
                let binary = redis::find("redis-server", "fixture").expect("redis-server");
                // An append-only file fsynced on every write, so that
                // `Durability::Immediate` works on any Redis 7.
                let server = RedisServer::start(
                    &binary,
                    &["--appendonly", "yes", "--appendfsync", "always"],
                );
                Place {
                    server: Some(server),
                    prefix: None,
                }
            }
            #[cfg(feature = "redis")]
            Engine::Cluster => Place {
                server: None,
                prefix: Some(unique_prefix()),
            },
        }
    }

    /// The settings of a store here (or in `dir` on sled).
    fn config(&self, dir: &TempDir, clock: &ManualClock) -> Config {
        #[cfg(feature = "redis")]
        if let Some(server) = &self.server {
            return settings(Config::redis(&server.url), clock);
        }
        #[cfg(feature = "redis")]
        if let Some(prefix) = &self.prefix {
            let cluster = RedisCluster::shared("fixture").expect("a cluster");
            let location = Config::redis_cluster(cluster.seeds.clone()).redis_prefix(prefix);
            return settings(location, clock);
        }
        config(dir, clock)
    }
}

/// The settings every fixture starts from, for a sled store in `dir`.
pub fn config(dir: &TempDir, clock: &ManualClock) -> Config {
    settings(Config::new(dir.path()), clock)
}

/// A key prefix no other store of this test process uses.
pub fn unique_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{}-{n}", std::process::id())
}

fn settings(config: Config, clock: &ManualClock) -> Config {
    config
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
        let place = Place::start();
        let store = SessionStore::open(tune(place.config(&dir, &clock))).expect("open");
        Fixture {
            dir,
            clock,
            store,
            place,
        }
    }

    /// A fixture around a sled store the test opened itself in `dir`.
    pub fn on_sled(dir: TempDir, clock: ManualClock, store: SessionStore) -> Fixture {
        Fixture {
            dir,
            clock,
            store,
            place: Place::default(),
        }
    }

    /// The settings of this fixture's store (its engine, clock and defaults).
    pub fn config(&self) -> Config {
        self.place.config(&self.dir, &self.clock)
    }

    /// Closes the store and opens it again on the same engine and clock.
    pub fn reopen(self, tune: impl FnOnce(Config) -> Config) -> Fixture {
        let config = tune(self.config());
        let Fixture {
            dir,
            clock,
            store,
            place,
        } = self;
        store.close().expect("close");
        let store = SessionStore::open(config).expect("reopen");
        Fixture {
            dir,
            clock,
            store,
            place,
        }
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

/// Every event waiting on `rx`, without blocking.
pub fn drain(rx: &crossbeam_channel::Receiver<Event>) -> Vec<Event> {
    rx.try_iter().collect()
}

/// How many `session.set` events, and how many `session.unset` with reason
/// `replaced`, are among `events`.
pub fn sets_and_replaced(events: &[Event]) -> (usize, usize) {
    let sets = events
        .iter()
        .filter(|e| matches!(e, Event::Set { .. }))
        .count();
    let replaced = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Unset {
                    reason: UnsetReason::Replaced,
                    ..
                }
            )
        })
        .count();
    (sets, replaced)
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
