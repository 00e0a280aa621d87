//! The Redis engine's key layout (see `docs/redis.md`).
//!
//! Every key starts with the configured prefix. Session keys carry a hash
//! tag naming a bucket derived from the actor id, `{prefix}{<tag>}:...`,
//! so that every key one actor's operation touches is in one hash slot; a
//! Redis Cluster spreads the buckets over its primaries by their slots.
//! A bucket's tag is its number in stores made before format 3; from format
//! 3 on it is chosen so that the buckets' slots are evenly spaced over the
//! 16,384 (`Tags::Spread`), so every primary of a cluster gets its share.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:meta` | hash | `format`, `buckets`, `tags` (fixed when the store is created) |
//! | `P{b}:s:<digest hex>` | hash | `r`: the encoded record (`codec`), `v`: its revision, `m`: the id of the last commit that wrote it (a call sent again looks for it) |
//! | `P{b}:e` | sorted set | member `<digest hex>:<actor id>`, score: expiry (ms) |
//! | `P{b}:a:<actor id>` | set | the digests (hex) of the actor's sessions |
//! | `P{b}:x` | stream | the bucket's events, an entry per commit: fields `n` (the number of its last event), `k` (how many), `p` (the entry before), `o` (origin node), `e` (one JSON per line); trimmed to about `Config::event_retention` entries |
//! | `P{b}:xh` | hash | the events' head: `n` (the last event's number), `p` (the last entry's id) |
//! | `P{b}:c` | shard channel | each entry as it is appended (`events`) |
//! | `P{b}:q` | hash | digest hex → bytes of records moved aside by repair |
//! | `P{b}:i` | hash | intent id → a reassign across buckets under way (`intent`) |
//! | `P{b}:ar:<id>` | string | the note that intent `<id>` arrived (7 days) |
//! | `P{b}:done:<id>` | string | the id of a commit that wrote no session hash (twice the call's timeout, plus a second), for a call sent again |
//! | `P{b}:alive` | string | the last health probe's write (10 s) |
//! | `P{0}:nodes` | hash | the store's nodes: origin → when it joined (`reaping`) |
//! | `P{0}:m` | shard channel | nodes joining and leaving |
//! | `P{0}:here:<origin>` | shard channel | a node's presence: it listens while it is alive |
//!
//! No key carries a Redis TTL but the done markers, the arrival notes and
//! the probe: expiry is sessiondb's. A bucket's session count is its expiry
//! index's size (one entry per session).

use sha2::{Digest as _, Sha256};

use crate::key::{hex, Digest, DIGEST_LEN};

/// The layout version of a Redis store, kept in `P:meta` under `format`.
/// Format 2: an expiry entry may be filed before its session's expiry
/// (record format 2's `filed_at`). Format 3: stream entries name the entry
/// before them (`p`) and every event is also published on its bucket's
/// shard channel; new stores spread their buckets' tags over the slots
/// (`tags` = `spread` in meta). A format 1 or 2 store is upgraded on open:
/// its entries already hold the invariants, its tags stay numbers, and an
/// entry without `p` is read as following the entry before it. Format 5:
/// a stream entry holds a commit's events (`k` of them, numbered up to
/// `n`), the head `P{b}:xh` holds the last number and entry id (in place
/// of `P{b}:xn`), the count keys `P{b}:n` are gone (the expiry indexes
/// count), and a session hash keeps its last commit's id (`m`); a store of
/// an earlier format is upgraded on open. Format 6: format 5's keys, whose
/// records may be of record format 3 (with metadata), which builds of
/// format 5 cannot read; a format 5 store is format 6 as it is.
pub(crate) const REDIS_FORMAT: u32 = 6;

/// Buckets of a store created without `Config::redis_buckets` on one
/// server (or behind Sentinel).
pub(crate) const DEFAULT_BUCKETS: u32 = 16;
/// Buckets of a store created without `Config::redis_buckets` on a
/// cluster: enough to spread over many primaries evenly.
pub(crate) const DEFAULT_CLUSTER_BUCKETS: u32 = 256;

/// Redis Cluster's hash slots.
pub(crate) const SLOTS: u16 = 16_384;

/// How a bucket's number becomes its hash tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tags {
    /// The tag is the bucket's number (stores made before format 3).
    Numbers,
    /// The tag is the first decimal number whose slot is the bucket's share
    /// of the slots: bucket `b` of `n` lands on slot `b * 16384 / n`.
    Spread,
}

impl Tags {
    /// The name stored in meta.
    pub fn name(self) -> &'static str {
        match self {
            Tags::Numbers => "numbers",
            Tags::Spread => "spread",
        }
    }

    pub fn parse(name: &str) -> Option<Tags> {
        match name {
            "numbers" => Some(Tags::Numbers),
            "spread" => Some(Tags::Spread),
            _ => None,
        }
    }
}

/// CRC16 (XMODEM) as Redis Cluster computes it.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of `key`: of its hash tag (the text between the first `{`
/// and the next `}`, when not empty), else of the whole key.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// For every slot, the first decimal number (as text) whose slot it is
/// (found by counting up from 0, once per process: some 200,000 numbers).
fn tag_of_slot() -> &'static [u32] {
    static TABLE: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![u32::MAX; usize::from(SLOTS)];
        let mut left = usize::from(SLOTS);
        let mut n: u32 = 0;
        while left > 0 {
            let s = usize::from(slot(n.to_string().as_bytes()));
            if table[s] == u32::MAX {
                table[s] = n;
                left -= 1;
            }
            n += 1;
        }
        table
    })
}

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    buckets: u32,
    /// Each bucket's tag.
    tags: Vec<String>,
    /// Tag → bucket.
    by_tag: std::collections::HashMap<String, u32>,
}

impl Keys {
    pub fn new(prefix: &str, buckets: u32, scheme: Tags) -> Self {
        let buckets = buckets.clamp(1, u32::from(SLOTS));
        let tags: Vec<String> = (0..buckets)
            .map(|b| match scheme {
                Tags::Numbers => b.to_string(),
                Tags::Spread => {
                    let s = u64::from(b) * u64::from(SLOTS) / u64::from(buckets);
                    tag_of_slot()[s as usize].to_string()
                }
            })
            .collect();
        let by_tag = tags
            .iter()
            .enumerate()
            .map(|(b, t)| (t.clone(), b as u32))
            .collect();
        Keys {
            prefix: prefix.to_owned(),
            buckets,
            tags,
            by_tag,
        }
    }

    /// The hash slot of a bucket's keys.
    pub fn slot(&self, bucket: u32) -> u16 {
        slot(self.tagged(bucket, "").as_bytes())
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
        let tag = self.tags.get(bucket as usize).map_or("", String::as_str);
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + 3 + rest.len());
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(tag);
        key.push_str("}:");
        key.push_str(rest);
        key
    }

    pub fn session(&self, actor_id: &str, digest: &Digest) -> String {
        self.session_in(self.bucket(actor_id), digest)
    }

    /// A session's key, its actor's bucket known.
    pub fn session_in(&self, bucket: u32, digest: &Digest) -> String {
        let mut rest = String::with_capacity(2 + 2 * DIGEST_LEN);
        rest.push_str("s:");
        rest.push_str(&digest.hex());
        self.tagged(bucket, &rest)
    }

    pub fn expiries(&self, bucket: u32) -> String {
        self.tagged(bucket, "e")
    }

    pub fn actor(&self, actor_id: &str) -> String {
        self.actor_in(self.bucket(actor_id), actor_id)
    }

    /// An actor's set, its bucket known.
    pub fn actor_in(&self, bucket: u32, actor_id: &str) -> String {
        let mut rest = String::with_capacity(2 + actor_id.len());
        rest.push_str("a:");
        rest.push_str(actor_id);
        self.tagged(bucket, &rest)
    }

    /// A bucket's session count, in stores before format 5.
    pub fn old_count(&self, bucket: u32) -> String {
        self.tagged(bucket, "n")
    }

    pub fn stream(&self, bucket: u32) -> String {
        self.tagged(bucket, "x")
    }

    /// The bucket's events' head: `n`, the number of its last event, and
    /// `p`, the id of its last stream entry.
    pub fn head(&self, bucket: u32) -> String {
        self.tagged(bucket, "xh")
    }

    /// A bucket's last event number, in stores before format 5.
    pub fn old_sequence(&self, bucket: u32) -> String {
        self.tagged(bucket, "xn")
    }

    pub fn quarantine(&self, bucket: u32) -> String {
        self.tagged(bucket, "q")
    }

    pub fn done(&self, bucket: u32, id: &str) -> String {
        self.tagged(bucket, &format!("done:{id}"))
    }

    pub fn channel(&self, bucket: u32) -> String {
        self.tagged(bucket, "c")
    }

    pub fn intents(&self, bucket: u32) -> String {
        self.tagged(bucket, "i")
    }

    pub fn arrival(&self, bucket: u32, id: &str) -> String {
        self.tagged(bucket, &format!("ar:{id}"))
    }

    pub fn alive(&self, bucket: u32) -> String {
        self.tagged(bucket, "alive")
    }

    /// The nodes of the store (origin → when it joined), in bucket 0.
    pub fn members(&self) -> String {
        self.tagged(0, "nodes")
    }

    /// Where nodes say that they join or leave, in bucket 0's slot.
    pub fn members_channel(&self) -> String {
        self.tagged(0, "m")
    }

    /// The channel a node listens on while it is alive, in bucket 0's slot:
    /// `PUBSUB SHARDNUMSUB` tells whether it still does.
    pub fn presence(&self, origin: &str) -> String {
        self.tagged(0, &format!("here:{origin}"))
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
        let (tag, rest) = rest.split_once("}:")?;
        Some((*self.by_tag.get(tag)?, rest))
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
        let keys = Keys::new("game", 16, Tags::Numbers);
        let d = Digest::of_secret("s");
        let b = keys.bucket("p1");
        assert!(b < 16);
        let tag = format!("game{{{b}}}:");
        for k in [
            keys.session("p1", &d),
            keys.actor("p1"),
            keys.expiries(b),
            keys.old_count(b),
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

    #[test]
    fn slots_are_redis_clusters() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"p{7}:x"), 1716);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        // An empty first tag means no tag; the first `}` ends a tag.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
    }

    #[test]
    fn spread_tags_space_the_buckets_evenly_over_the_slots() {
        for buckets in [1, 3, 16, 256, 16_384] {
            let keys = Keys::new("game", buckets, Tags::Spread);
            for b in 0..buckets {
                let want = u64::from(b) * u64::from(SLOTS) / u64::from(buckets);
                assert_eq!(u64::from(keys.slot(b)), want);
                let key = keys.stream(b);
                assert_eq!(keys.split(&key), Some((b, "x")));
            }
        }
        // A three-primary cluster's default ranges each get a third of 256.
        let keys = Keys::new("game", 256, Tags::Spread);
        let mut per_range = [0; 3];
        for b in 0..256 {
            per_range[match keys.slot(b) {
                0..=5460 => 0,
                5461..=10922 => 1,
                _ => 2,
            }] += 1;
        }
        assert_eq!(per_range, [86, 85, 85]);
        // Stores made before format 3 keep their numbered tags.
        let old = Keys::new("game", 16, Tags::Numbers);
        assert_eq!(old.stream(7), "game{7}:x");
    }
}
