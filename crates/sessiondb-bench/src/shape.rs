//! The session shape every system stores: an actor id, about 150 bytes of
//! data, a 10-minute TTL; and the record layout the baselines use.
//!
//! sessiondb keeps its own record format (`docs/format.md`). The baselines
//! store a hand-packed record of the same fields and about the same size
//! (no serde, no canonical-encoding check), which flatters them a little;
//! the ratios are therefore conservative for sessiondb.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// Session TTL (MAGE's default `10m`).
pub const TTL: Duration = Duration::from_secs(600);
/// sessiondb's default touch interval (a tenth of the TTL); the baselines
/// follow the same rule so that a hot resolve costs no write anywhere.
pub const TOUCH: Duration = Duration::from_secs(60);
/// Characters of the secret part of a key (sessiondb's default, 192 bits).
pub const SECRET_LEN: usize = 32;
/// The language every session gets.
pub const LANGUAGE: &str = "en";

pub fn ttl_ms() -> u64 {
    TTL.as_millis() as u64
}

pub fn touch_ms() -> u64 {
    TOUCH.as_millis() as u64
}

/// The profile text stored in every session; with the score and the JSON
/// punctuation the data comes to about 150 bytes.
const PROFILE: &str = "guild=ember-wolves;class=ranger;level=42;zone=north-marsh;\
                       party=p-83b1c0;flags=tutorial-done,chat-on;skin=forest-07;mount=none";

static ACTOR_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh actor id, unique within the process (`prefix` keeps children
/// and the parent apart).
pub fn next_actor(prefix: &str) -> String {
    format!("{prefix}{:09}", ACTOR_SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The data of a new session, as sessiondb takes it.
pub fn sessiondb_data(score: u64) -> sessiondb::Data {
    let mut data = sessiondb::Data::new();
    // Both values serialise; an error here would be a bug in the harness.
    let _ = data.insert("profile", PROFILE);
    let _ = data.insert("score", &score);
    data
}

/// The same data as JSON text, for the baselines.
pub fn data_bytes(score: u64) -> Vec<u8> {
    format!("{{\"profile\":\"{PROFILE}\",\"score\":{score}}}").into_bytes()
}

/// 32 URL-safe characters from the operating system's CSPRNG, as sessiondb
/// makes its secrets.
pub fn new_secret() -> Result<String> {
    let mut bytes = [0u8; SECRET_LEN / 4 * 3];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A 16-character public session id.
pub fn new_public_id() -> Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of a secret: the storage key in every system, so that no
/// system keeps usable keys at rest.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits `actorId:secret` at the last `:`.
pub fn split_key(full: &str) -> Result<(&str, &str)> {
    full.rsplit_once(':')
        .filter(|(a, s)| !a.is_empty() && !s.is_empty())
        .context("malformed session key")
}

/// The digest a full key is stored under.
pub fn key_digest(full: &str) -> Result<[u8; 32]> {
    Ok(digest(split_key(full)?.1))
}

/// A session key as the workloads hold it: the full key a client would
/// send, and its digest (used only by the raw-get reference row).
#[derive(Debug, Clone)]
pub struct Key {
    pub full: String,
    pub digest: [u8; 32],
}

impl Key {
    pub fn new(full: String) -> Result<Key> {
        let digest = key_digest(&full)?;
        Ok(Key { full, digest })
    }
}

/// The baselines' record:
/// `expires_at u64 BE | created_at u64 BE | actor len u8 | actor |
///  id (16) | language len u8 | language | data`.
/// The data comes last so that Redis scripts can replace it by offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub expires_at: u64,
    pub created_at: u64,
    pub actor: String,
    pub id: String,
    pub language: String,
    pub data: Vec<u8>,
}

impl Record {
    pub fn new(actor: &str, now: u64) -> Result<Record> {
        Ok(Record {
            expires_at: now + ttl_ms(),
            created_at: now,
            actor: actor.to_owned(),
            id: new_public_id()?,
            language: LANGUAGE.to_owned(),
            data: data_bytes(0),
        })
    }

    /// Bytes before the data.
    pub fn header_len(actor: &str) -> usize {
        8 + 8 + 1 + actor.len() + 16 + 1 + LANGUAGE.len()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Record::header_len(&self.actor) + self.data.len());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out.push(self.actor.len() as u8);
        out.extend_from_slice(self.actor.as_bytes());
        out.extend_from_slice(self.id.as_bytes());
        out.push(self.language.len() as u8);
        out.extend_from_slice(self.language.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let take = |at: usize, n: usize| -> Result<&[u8]> {
            bytes.get(at..at + n).context("truncated record")
        };
        let u64_at =
            |at: usize| -> Result<u64> { Ok(u64::from_be_bytes(take(at, 8)?.try_into()?)) };
        let expires_at = u64_at(0)?;
        let created_at = u64_at(8)?;
        let actor_len = usize::from(take(16, 1)?[0]);
        let actor = std::str::from_utf8(take(17, actor_len)?)?.to_owned();
        let mut at = 17 + actor_len;
        let id = std::str::from_utf8(take(at, 16)?)?.to_owned();
        at += 16;
        let lang_len = usize::from(take(at, 1)?[0]);
        let language = std::str::from_utf8(take(at + 1, lang_len)?)?.to_owned();
        at += 1 + lang_len;
        Ok(Record {
            expires_at,
            created_at,
            actor,
            id,
            language,
            data: bytes[at..].to_vec(),
        })
    }

    /// Checks the record against the key's actor and the time, as a
    /// resolve must.
    pub fn check(&self, actor: &str, now: u64) -> Result<()> {
        if self.actor != actor {
            bail!("keyMismatch");
        }
        if self.expires_at <= now {
            bail!("expired");
        }
        Ok(())
    }

    /// Whether a resolve at `now` must write the expiry (the touch rule).
    pub fn needs_touch(&self, now: u64) -> bool {
        now + ttl_ms() >= self.expires_at + touch_ms()
    }
}

/// `expires_at` BE ++ digest: the time index key of the sled baseline.
pub fn expiry_key(expires_at: u64, digest: &[u8; 32]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..].copy_from_slice(digest);
    k
}

/// Length-prefixed actor ++ digest: the actor index key of the sled baseline.
pub fn actor_key(actor: &str, digest: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + actor.len() + 32);
    k.push(actor.len() as u8);
    k.extend_from_slice(actor.as_bytes());
    k.extend_from_slice(digest);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_data_is_about_150_bytes() {
        let r = Record::new("a000000001", 1_700_000_000_000).unwrap();
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        assert_eq!(&bytes[Record::header_len("a000000001")..], &r.data[..]);
        assert!((140..=170).contains(&r.data.len()), "{}", r.data.len());
        assert!((140..=170).contains(&sessiondb_data(0).size()));
    }

    #[test]
    fn touch_rule_matches_sessiondb() {
        let r = Record::new("a", 0).unwrap();
        assert!(!r.needs_touch(0));
        assert!(!r.needs_touch(touch_ms() - 1));
        assert!(r.needs_touch(touch_ms()));
    }

    #[test]
    fn secrets_are_32_chars_and_keys_split_at_the_last_colon() {
        let s = new_secret().unwrap();
        assert_eq!(s.len(), 32);
        assert_eq!(split_key("a:b:c").unwrap(), ("a:b", "c"));
        assert!(split_key("nocolon").is_err());
    }
}
