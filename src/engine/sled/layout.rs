//! The sled store's layout (see `docs/format.md`): its trees, the key
//! layouts of the two index trees, and the `meta` entries.
//!
//! - `sessions`: digest → encoded record (`codec`);
//! - `expiries`: `filed_at` as 8 big-endian bytes ++ digest, so a range scan
//!   from the start up to `now` yields every session due, oldest first (and
//!   sessions whose expiry slid later since they were filed, which the
//!   reaper files again).
//! - `actors`: actor id length as 1 byte ++ actor id → the digests of the
//!   actor's sessions, 32 bytes each: one point read lists an actor's
//!   sessions, inside a transaction too (store format 1 kept one key per
//!   session, `len ++ actor id ++ digest`, listed by a prefix scan);
//! - `meta`: the store format, the clean-shutdown marker, the session count;
//! - `quarantine`: digest → bytes of records that failed to decode, moved
//!   aside by repair.

use crate::key::{Digest, DIGEST_LEN};

/// The on-disk layout version of the whole store (trees and keys), kept in
/// the `meta` tree under [`META_FORMAT`]. Format 2: an expiry entry may be
/// filed before its session's expiry (record format 2's `filed_at`), the
/// session count is stored at a clean close only, and the actor index holds
/// one list of digests per actor. A format 1 store's records, expiry entries
/// and count (exact after a clean close) hold as they are; its actor index
/// is rewritten on open, and the store is marked format 2.
pub const STORE_FORMAT: u32 = 2;

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

/// Length of an `expiries` key.
pub(crate) const EXPIRY_KEY_LEN: usize = 8 + DIGEST_LEN;

pub(crate) fn expiry_key(expires_at: u64, digest: &Digest) -> [u8; EXPIRY_KEY_LEN] {
    let mut k = [0u8; EXPIRY_KEY_LEN];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..].copy_from_slice(&digest.0);
    k
}

/// The exclusive upper bound of the scan for sessions due at `now`: every
/// key with `expires_at <= now` sorts below it.
pub(crate) fn expiry_scan_end(now: u64) -> [u8; 8] {
    now.saturating_add(1).to_be_bytes()
}

pub(crate) fn parse_expiry_key(key: &[u8]) -> Option<(u64, Digest)> {
    if key.len() != EXPIRY_KEY_LEN {
        return None;
    }
    let (time, digest) = key.split_at(8);
    Some((
        u64::from_be_bytes(time.try_into().ok()?),
        Digest::from_slice(digest)?,
    ))
}

/// An actor's key in `actors`. Actor ids are at most 255 bytes (checked on
/// input), so the length fits one byte.
pub(crate) fn actor_key(actor_id: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + actor_id.len() + DIGEST_LEN);
    p.push(u8::try_from(actor_id.len()).unwrap_or(u8::MAX));
    p.extend_from_slice(actor_id.as_bytes());
    p
}

/// The digests an `actors` value lists; `None` when it is not a whole
/// number of digests.
pub(crate) fn parse_actor_list(value: &[u8]) -> Option<Vec<Digest>> {
    if !value.len().is_multiple_of(DIGEST_LEN) {
        return None;
    }
    value
        .chunks_exact(DIGEST_LEN)
        .map(Digest::from_slice)
        .collect()
}

pub(crate) fn encode_actor_list(digests: &[Digest]) -> Vec<u8> {
    digests.iter().flat_map(|d| d.0).collect()
}

/// What names one actor entry in a scan or a repair: `actor_key ++ digest`
/// (store format 1's key of the entry).
pub(crate) fn actor_entry(actor_id: &str, digest: &Digest) -> Vec<u8> {
    let mut k = actor_key(actor_id);
    k.extend_from_slice(&digest.0);
    k
}

/// The actor and digest an actor entry's name holds.
pub(crate) fn parse_actor_entry(key: &[u8]) -> Option<(String, Digest)> {
    let (&len, rest) = key.split_first()?;
    let len = usize::from(len);
    if len == 0 || rest.len() != len + DIGEST_LEN {
        return None;
    }
    let actor = std::str::from_utf8(&rest[..len]).ok()?.to_owned();
    Some((actor, Digest::from_slice(&rest[len..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_keys_sort_by_time_and_round_trip() {
        let d = Digest([7; DIGEST_LEN]);
        let early = expiry_key(5, &d);
        let late = expiry_key(256, &Digest([0; DIGEST_LEN]));
        assert!(early < late);
        assert!(early.as_slice() < expiry_scan_end(5).as_slice());
        assert!(late.as_slice() >= expiry_scan_end(255).as_slice());
        assert_eq!(parse_expiry_key(&early), Some((5, d)));
        assert_eq!(parse_expiry_key(&early[1..]), None);
    }

    #[test]
    fn actor_keys_lists_and_entries_round_trip() {
        let d = Digest([1; DIGEST_LEN]);
        let e = Digest([2; DIGEST_LEN]);
        // "ab" and "abc" have keys of their own.
        assert_ne!(actor_key("ab"), actor_key("abc")[..3].to_vec());
        assert_eq!(
            parse_actor_entry(&actor_entry("ab", &d)),
            Some(("ab".into(), d))
        );
        // An actor's key is no entry name (the length byte says so).
        assert_eq!(parse_actor_entry(&actor_key("ab")), None);
        assert_eq!(parse_actor_entry(&[3, b'a']), None);
        let list = encode_actor_list(&[d, e]);
        assert_eq!(parse_actor_list(&list), Some(vec![d, e]));
        assert_eq!(parse_actor_list(&list[1..]), None);
        assert_eq!(parse_actor_list(&[]), Some(vec![]));
    }
}
