//! The Redis engine's key layout (see the README's "More than one machine").
//!
//! Every key starts with the configured prefix. Session keys carry a hash
//! tag naming a bucket derived from the actor id, `{prefix}{<bucket>}:...`,
//! so that every key one actor's operation touches is in one hash slot:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:meta` | hash | `format`, `buckets` (fixed when the store is created) |
//! | `P{b}:s:<digest hex>` | hash | `r`: the encoded record (`codec`), `v`: its revision |
//! | `P{b}:e` | sorted set | member `<digest hex>:<actor id>`, score: expiry (ms) |
//! | `P{b}:a:<actor id>` | set | the digests (hex) of the actor's sessions |
//! | `P{b}:n` | string | how many sessions the bucket holds |
//! | `P{b}:x` | stream | the bucket's events, fields `n` (sequence) and `e` (JSON) |
//! | `P{b}:xn` | string | the bucket's last event sequence number |
//! | `P{b}:q` | hash | digest hex → bytes of records moved aside by repair |
//! | `P{b}:done:<id>` | string | a committed plan's marker (60 s), for idempotent retries |
//!
//! No key carries a Redis TTL but the done markers: expiry is sessiondb's.

use sha2::{Digest as _, Sha256};

use crate::key::{hex, Digest, DIGEST_LEN};

/// The layout version of a Redis store, kept in `P:meta` under `format`.
/// Format 2: an expiry entry may be filed before its session's expiry
/// (record format 2's `filed_at`). A format 1 store is upgraded on open; its
/// entries, at their expiries, already hold format 2's invariant.
pub(crate) const REDIS_FORMAT: u32 = 2;

/// Buckets of a store created without `Config::redis_buckets`.
pub(crate) const DEFAULT_BUCKETS: u32 = 16;

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    buckets: u32,
}

impl Keys {
    pub fn new(prefix: &str, buckets: u32) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            buckets: buckets.max(1),
        }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    pub fn meta(prefix: &str) -> String {
        format!("{prefix}:meta")
    }

    /// The bucket an actor's keys live in: SHA-256 of the actor id, so that
    /// every node and every build agrees.
    pub fn bucket(&self, actor_id: &str) -> u32 {
        let hash = Sha256::digest(actor_id.as_bytes());
        let first = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
        first % self.buckets
    }

    fn tagged(&self, bucket: u32, rest: &str) -> String {
        format!("{}{{{bucket}}}:{rest}", self.prefix)
    }

    pub fn session(&self, actor_id: &str, digest: &Digest) -> String {
        self.tagged(self.bucket(actor_id), &format!("s:{}", digest.hex()))
    }

    pub fn expiries(&self, bucket: u32) -> String {
        self.tagged(bucket, "e")
    }

    pub fn actor(&self, actor_id: &str) -> String {
        self.tagged(self.bucket(actor_id), &format!("a:{actor_id}"))
    }

    pub fn count(&self, bucket: u32) -> String {
        self.tagged(bucket, "n")
    }

    pub fn stream(&self, bucket: u32) -> String {
        self.tagged(bucket, "x")
    }

    pub fn sequence(&self, bucket: u32) -> String {
        self.tagged(bucket, "xn")
    }

    pub fn quarantine(&self, bucket: u32) -> String {
        self.tagged(bucket, "q")
    }

    pub fn done(&self, bucket: u32, id: &str) -> String {
        self.tagged(bucket, &format!("done:{id}"))
    }

    /// The glob matching every session hash of every bucket.
    pub fn sessions_pattern(&self) -> String {
        format!("{}{{*}}:s:*", self.prefix)
    }

    /// The glob matching every actor set of every bucket.
    pub fn actors_pattern(&self) -> String {
        format!("{}{{*}}:a:*", self.prefix)
    }

    /// The bucket and the rest of a key of this store, if it is one.
    pub fn split<'k>(&self, key: &'k str) -> Option<(u32, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('{')?;
        let (bucket, rest) = rest.split_once("}:")?;
        Some((bucket.parse().ok()?, rest))
    }
}

/// The expiry index member of a session: fixed-width digest hex, then the
/// actor id, so that a due entry names where its record is.
pub(crate) fn expiry_member(digest: &Digest, actor_id: &str) -> String {
    format!("{}:{actor_id}", digest.hex())
}

pub(crate) fn parse_expiry_member(member: &[u8]) -> Option<(Digest, String)> {
    let member = std::str::from_utf8(member).ok()?;
    let (digest, actor) = (member.get(..DIGEST_LEN * 2)?, member.get(DIGEST_LEN * 2..)?);
    let actor = actor.strip_prefix(':')?;
    if actor.is_empty() {
        return None;
    }
    Some((Digest::from_hex(digest)?, actor.to_owned()))
}

pub(crate) fn digest_hex(digest: &Digest) -> String {
    hex(&digest.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_per_actor_and_parse_back() {
        let keys = Keys::new("game", 16);
        let d = Digest::of_secret("s");
        let b = keys.bucket("p1");
        assert!(b < 16);
        let tag = format!("game{{{b}}}:");
        for k in [
            keys.session("p1", &d),
            keys.actor("p1"),
            keys.expiries(b),
            keys.count(b),
            keys.stream(b),
        ] {
            assert!(k.starts_with(&tag), "{k}");
        }
        assert_eq!(keys.split(&keys.actor("p1")), Some((b, "a:p1")));
        assert_eq!(keys.split("other{1}:a:p1"), None);
        let member = expiry_member(&d, "p:1");
        assert_eq!(
            parse_expiry_member(member.as_bytes()),
            Some((d, "p:1".into()))
        );
        assert_eq!(parse_expiry_member(b"zz"), None);
    }
}
