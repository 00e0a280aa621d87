//! The sled store's layout (see `docs/format.md`): its trees, their key
//! layouts, and the `meta` entries.
//!
//! - `records`: actor id length as 1 byte ++ actor id ++ digest → encoded
//!   record (`codec`). An actor's sessions are the keys under its prefix
//!   (`actor_prefix`), and a full key `actorId:secret` names its record
//!   directly;
//! - `expiries`: `filed_at` as 8 big-endian bytes ++ the record's key, so a
//!   range scan from the start up to `now` yields every session due, oldest
//!   first (and sessions whose expiry slid later since they were filed,
//!   which the reaper files again), and each entry names its record;
//! - `meta`: the store format, the clean-shutdown marker, the session count;
//! - `quarantine`: the key → bytes of records that failed to decode, moved
//!   aside by repair.
//!
//! Store formats 1 and 2 kept records by digest alone (tree `sessions`),
//! expiry entries as `filed_at ++ digest` and an `actors` index; `legacy`
//! reads them for the move to format 3 (`migrate`).

use crate::key::{Digest, DIGEST_LEN, MAX_ACTOR_ID_LEN};

/// The on-disk layout version of the whole store (trees and keys), kept in
/// the `meta` tree under the key `format`. Format 3: records keyed by actor
/// and digest, expiry entries naming their record, no actor index. Formats 1
/// and 2 are moved to it on open (`migrate`).
pub const STORE_FORMAT: u32 = 3;

/// Tree names.
pub(crate) const RECORDS: &str = "records";
pub(crate) const EXPIRIES: &str = "expiries";
pub(crate) const META: &str = "meta";
pub(crate) const QUARANTINE: &str = "quarantine";

/// Meta key of the store format (4 bytes, big-endian).
pub(crate) const META_FORMAT: &[u8] = b"format";
/// Meta key of the clean-shutdown marker (`[1]`), present only while closed
/// cleanly.
pub(crate) const META_CLEAN: &[u8] = b"clean";
/// Meta key of the session count (8 bytes, big-endian), written at a clean
/// close: exact only while the clean-shutdown marker is there.
pub(crate) const META_COUNT: &[u8] = b"sessions";

/// Reads the stored session count; absent means zero.
pub(crate) fn decode_count(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The prefix every record key of `actor_id` starts with. Actor ids are
/// 1..=255 bytes (checked on every input), so the length fits one byte and
/// no actor's prefix is a prefix of another's keys.
pub(crate) fn actor_prefix(actor_id: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + actor_id.len() + DIGEST_LEN);
    p.push(u8::try_from(actor_id.len()).unwrap_or(u8::MAX));
    p.extend_from_slice(actor_id.as_bytes());
    p
}

/// The key of `actor_id`'s session `digest` in `records`.
pub(crate) fn record_key(actor_id: &str, digest: &Digest) -> Vec<u8> {
    let mut k = actor_prefix(actor_id);
    k.extend_from_slice(&digest.0);
    k
}

/// A `records` key built on the stack, for the read path (no allocation).
pub(crate) struct RecordKey {
    buf: [u8; 1 + MAX_ACTOR_ID_LEN + DIGEST_LEN],
    len: usize,
}

impl RecordKey {
    pub fn new(actor_id: &str, digest: &Digest) -> Self {
        let mut buf = [0u8; 1 + MAX_ACTOR_ID_LEN + DIGEST_LEN];
        let actor = &actor_id.as_bytes()[..actor_id.len().min(MAX_ACTOR_ID_LEN)];
        buf[0] = actor.len() as u8;
        buf[1..=actor.len()].copy_from_slice(actor);
        buf[1 + actor.len()..1 + actor.len() + DIGEST_LEN].copy_from_slice(&digest.0);
        RecordKey {
            buf,
            len: 1 + actor.len() + DIGEST_LEN,
        }
    }
}

impl AsRef<[u8]> for RecordKey {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The actor and digest a `records` key names; `None` for a damaged key.
pub(crate) fn parse_record_key(key: &[u8]) -> Option<(&str, Digest)> {
    let (&len, rest) = key.split_first()?;
    let len = usize::from(len);
    if len == 0 || rest.len() != len + DIGEST_LEN {
        return None;
    }
    let actor = std::str::from_utf8(&rest[..len]).ok()?;
    Some((actor, Digest::from_slice(&rest[len..])?))
}

/// The `expiries` key of the record under `record_key`, filed at `at`.
pub(crate) fn expiry_key(at: u64, record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + record_key.len());
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(record_key);
    k
}

/// The exclusive upper bound of the scan for sessions due at `now`: every
/// key filed at or before `now` sorts below it.
pub(crate) fn expiry_scan_end(now: u64) -> [u8; 8] {
    now.saturating_add(1).to_be_bytes()
}

/// The time and the record key an `expiries` key holds; `None` when the
/// record key is damaged.
pub(crate) fn parse_expiry_key(key: &[u8]) -> Option<(u64, &[u8])> {
    let (time, record) = key.split_at_checked(8)?;
    parse_record_key(record)?;
    Some((u64::from_be_bytes(time.try_into().ok()?), record))
}

/// Store formats 1 and 2, read only to move them to format 3.
pub(crate) mod legacy {
    use crate::key::{Digest, DIGEST_LEN};

    /// Records by digest alone.
    pub(crate) const SESSIONS: &str = "sessions";
    /// Format 1: one empty key per session; format 2: a list per actor.
    pub(crate) const ACTORS: &str = "actors";

    /// Length of a format 1 or 2 `expiries` key: `filed_at ++ digest`. A
    /// format 3 key is longer (its record key holds the actor), so the two
    /// are told apart by length while a move is under way.
    pub(crate) const EXPIRY_KEY_LEN: usize = 8 + DIGEST_LEN;

    pub(crate) fn expiry_key(at: u64, digest: &Digest) -> [u8; EXPIRY_KEY_LEN] {
        let mut k = [0u8; EXPIRY_KEY_LEN];
        k[..8].copy_from_slice(&at.to_be_bytes());
        k[8..].copy_from_slice(&digest.0);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_group_an_actor_and_round_trip() {
        let d = Digest([7; DIGEST_LEN]);
        let key = record_key("ab", &d);
        assert!(key.starts_with(&actor_prefix("ab")));
        // "ab" is not a prefix of "abc"'s keys, nor the other way round.
        assert!(!record_key("abc", &d).starts_with(&actor_prefix("ab")));
        assert!(!key.starts_with(&actor_prefix("abc")));
        assert_eq!(parse_record_key(&key), Some(("ab", d)));
        assert_eq!(RecordKey::new("ab", &d).as_ref(), key.as_slice());
        let long = "x".repeat(MAX_ACTOR_ID_LEN);
        assert_eq!(
            RecordKey::new(&long, &d).as_ref(),
            record_key(&long, &d).as_slice()
        );
        assert_eq!(parse_record_key(&key[..key.len() - 1]), None);
        assert_eq!(parse_record_key(&actor_prefix("ab")), None);
        assert_eq!(parse_record_key(&[0; 33]), None);
        let mut bad_utf8 = record_key("ab", &d);
        bad_utf8[1] = 0xff;
        assert_eq!(parse_record_key(&bad_utf8), None);
    }

    #[test]
    fn expiry_keys_sort_by_time_and_name_their_record() {
        let (d, e) = (Digest([7; DIGEST_LEN]), Digest([0; DIGEST_LEN]));
        let early = expiry_key(5, &record_key("zz", &d));
        let late = expiry_key(256, &record_key("aa", &e));
        assert!(early < late);
        assert!(early.as_slice() < expiry_scan_end(5).as_slice());
        assert!(late.as_slice() >= expiry_scan_end(255).as_slice());
        assert_eq!(
            parse_expiry_key(&early),
            Some((5, record_key("zz", &d).as_slice()))
        );
        assert_eq!(parse_expiry_key(&early[..early.len() - 1]), None);
        // Format 2's keys are shorter than any format 3 key.
        assert!(legacy::expiry_key(5, &d).len() < expiry_key(5, &record_key("a", &d)).len());
        assert_eq!(parse_expiry_key(&legacy::expiry_key(5, &d)), None);
    }
}
