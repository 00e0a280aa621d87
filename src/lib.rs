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
//! ## Guarantees
//! - Every change that touches several trees is one transaction: after any
//!   crash each session has exactly one expiry entry and one actor entry.
//! - Reads never return an expired session, whether or not the reaper ran.
//! - Only a SHA-256 digest of each secret is stored.
//! - With [`Durability::Immediate`] a call returns only once its write is on
//!   disk; with [`Durability::Periodic`] a crash loses at most the last
//!   interval's writes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

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
pub use config::{
    parse_time_code, redact_url, url_passwords, Config, Durability, MAX_KEY_LENGTH, MIN_KEY_LENGTH,
};
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
    #[doc = include_str!("../docs/redis.md")]
    pub struct Redis;
}
