//! The storage seam. The session logic (`write`, `rules`), the reaper and the
//! events only see these traits; `sled` implements them, and a networked
//! backend (Redis) can slot in beside it.

pub(crate) mod sled;

use crate::error::Result;
use crate::key::Digest;

/// Meta key of the stored session count (8 bytes, big-endian).
pub(crate) const META_COUNT: &[u8] = b"sessions";

/// Reads the stored session count; absent means zero.
pub(crate) fn decode_count(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The stores' named key spaces (sled trees; Redis key prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// digest → encoded session record
    Sessions,
    /// big-endian expiry ms ++ digest → empty
    Expiries,
    /// length-prefixed actor id ++ digest → empty
    Actors,
    /// format version, clean-shutdown marker, counters
    Meta,
    /// digest → bytes of records that failed to decode, moved aside by repair
    Quarantine,
}

/// A transactional view over all spaces, used by the write logic. Every
/// change made through one `Txn` commits atomically or not at all.
///
/// An error from any method means the transaction is lost and the whole
/// batch will be reported as failed; the write logic just propagates it.
pub(crate) trait Txn {
    /// The encoded record stored under `digest`.
    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>>;
    fn put(&self, digest: &Digest, record: Vec<u8>) -> Result<()>;
    fn remove(&self, digest: &Digest) -> Result<()>;
    fn insert_expiry(&self, expires_at: u64, digest: &Digest) -> Result<()>;
    fn remove_expiry(&self, expires_at: u64, digest: &Digest) -> Result<()>;
    /// The digests of `actor_id`'s sessions as this transaction sees them.
    /// An actor not named to `Backend::transact` ends the attempt (see there).
    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>>;
    fn insert_actor(&self, actor_id: &str, digest: &Digest) -> Result<()>;
    fn remove_actor(&self, actor_id: &str, digest: &Digest) -> Result<()>;
    /// Adds `delta` to the stored session count.
    fn add_count(&self, delta: i64);
}

/// A visitor of raw entries; returns whether to go on.
pub(crate) type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// A stored value as the engine hands it out. sled's own shared buffer, so
/// that a read (one per resolve) does not copy the record; another engine
/// builds one from a `Vec<u8>`.
pub(crate) type Value = ::sled::IVec;

/// What the store needs from a storage engine.
pub(crate) trait Backend: Send + Sync {
    /// The encoded record stored under `digest`.
    fn get(&self, digest: &Digest) -> Result<Option<Value>>;
    /// The digests of `actor_id`'s sessions.
    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>>;
    /// Up to `limit` `(expires_at, digest)` entries with `expires_at <= now`,
    /// earliest first.
    fn due(&self, now: u64, limit: usize) -> Result<Vec<(u64, Digest)>>;
    /// The earliest stored expiry.
    fn next_expiry(&self) -> Result<Option<u64>>;
    /// The stored session count.
    fn session_count(&self) -> Result<u64>;
    /// Runs `body` in one atomic transaction. `actors` names the actors
    /// whose sessions `body` is expected to list, so they can be read up
    /// front; listing another ends the attempt with a storage error, and the
    /// backend runs `body` again with that actor listed too. `body` may run
    /// more than once.
    fn transact(&self, actors: &[&str], body: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()>;
    /// Makes every committed write durable: with `sync`, also fsyncs.
    fn flush(&self, sync: bool) -> Result<()>;

    /// Raw access for recovery, checks, export and import.
    fn scan(&self, space: Space, f: &mut Visit<'_>) -> Result<()>;
    fn raw_get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn raw_insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<()>;
    fn raw_remove(&self, space: Space, key: &[u8]) -> Result<()>;
}
