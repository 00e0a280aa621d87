//! # sessiondb
//!
//! A persistent session store for game servers: the session module of the
//! MAGE game framework, embedded in Rust on sled. A game server registers a
//! session for an actor (player), hands the client the session key, and
//! resolves that key on every request; sessions expire after an idle TTL that
//! slides forward with use, carry the actor's language and arbitrary data,
//! survive restarts and crashes, and tell subscribers why they ended.
//!
//! ```
//! use sessiondb::{Config, Data, Event, Reason, SessionStore, UnsetReason};
//!
//! # fn main() -> Result<(), sessiondb::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = SessionStore::open(Config::new(dir.path()))?;
//! let events = store.subscribe();
//!
//! // Log a player in and hand the full key ("actorId:secret") to the client.
//! let session = store.register("player-7", "en", Data::new())?;
//! let key = session.key().unwrap().to_owned();
//!
//! // On every request: resolve the key (sliding the expiry) and use the data.
//! store.set_data(&key, "level", &3)?;
//! let session = store.resolve(&key)?;
//! assert_eq!(session.actor_id(), "player-7");
//! assert_eq!(session.get::<u32>("level")?, Some(3));
//!
//! // Logging out ends the session; the client hears why.
//! store.logout(&key)?;
//! assert_eq!(store.resolve(&key).unwrap_err().reason(), Some(Reason::NoSession));
//! assert!(matches!(events.recv().unwrap(), Event::Set { .. }));
//! assert!(matches!(events.recv().unwrap(), Event::Unset { reason: UnsetReason::LoggedOut, .. }));
//!
//! store.close()?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Features
//!
//! | feature | default | gives |
//! | --- | --- | --- |
//! | (none) | yes | the embedded store on sled (`Config::new`): the whole session API, events, crash recovery, export and import; no network client, no TLS stack |
//! | `redis` | no | the same store shared through Redis or Valkey: one server (`Config::redis`), a Redis Cluster (`Config::redis_cluster`) or a primary behind Sentinel (`Config::redis_sentinel`), with redis-rs and rustls (for `rediss://`) |
//!
//! sled comes as `sessiondb-sled`: sled 0.34.7 with one fix (a file
//! truncation that could deadlock sled's IO pool), the same on-disk format.
//!
//! ## Guarantees
//! - Reads never return an expired session, whether or not the reaper ran.
//! - Only a SHA-256 digest of each secret is stored.
//! - With [`Durability::Immediate`] a call returns only once its write is on
//!   disk (on Redis: fsynced, and received by a replica when one is
//!   attached); with [`Durability::Periodic`] a crash loses at most the last
//!   interval's writes.
//! - After a crash the store reopens consistent: each session has its
//!   expiry entry, no actor is over its cap, and every session the check
//!   ends is announced.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod backoff;
mod clock;
mod codec;
mod config;
mod engine;
mod error;
mod events;
mod export;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod intent;
mod key;
mod meta;
mod plan;
mod reaper;
mod recovery;
mod roll_forward;
mod rules;
mod session;
mod shared;
mod store;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks;
mod worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::RECORD_FORMAT;
pub use config::{parse_time_code, Config, Durability, Location, MAX_KEY_LENGTH, MIN_KEY_LENGTH};
#[cfg(feature = "redis")]
pub use config::{redact_url, url_passwords, RedisTarget, DEFAULT_REDIS_PREFIX};
pub use engine::sled::layout::STORE_FORMAT;
pub use error::{Error, Reason, Result, StorageError};
pub use events::{Event, UnsetReason, MAX_REASON_LEN};
pub use export::{ExportSummary, ImportSummary, EXPORT_FORMAT};
pub use key::{MAX_ACTOR_ID_LEN, MAX_LANGUAGE_LEN, MAX_SESSION_ID_LEN};
pub use meta::{Meta, MAX_META_ENTRIES, MAX_META_NAME_LEN, MAX_META_VALUE_LEN};
pub use recovery::{CheckReport, RecoveryReport};
pub use session::{ActorAddress, Data, Session, MAX_DATA_NAME_LEN};
pub use store::{SessionStore, Stats};

/// MAGE's default language for a session.
pub const DEFAULT_LANGUAGE: &str = "en";

/// Compiles and runs every Rust block of `README.md` as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The Rust blocks of the guides under `docs/`, compiled and run as
/// doctests like the README's.
#[cfg(doctest)]
pub mod guide_doctests {
    #[doc = include_str!("../docs/configuration.md")]
    pub struct Configuration;
    #[doc = include_str!("../docs/events.md")]
    pub struct Events;
    #[doc = include_str!("../docs/errors.md")]
    pub struct Errors;
    #[cfg(feature = "redis")]
    #[doc = include_str!("../docs/redis.md")]
    pub struct Redis;
}
