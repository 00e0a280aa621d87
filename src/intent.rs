//! Moving a session between shards (a reassign whose two actors live in
//! different buckets of a Redis store), in steps that any node can finish.
//!
//! A plan commits within one shard, so a reassign across shards is three
//! changes:
//! 1. in the old actor's shard: its sessions end (`session.unset`
//!    `reassigned`), and an intent holding the moved session is stored;
//! 2. in the new actor's shard: the moved session is stored (making room
//!    as a register does), with a note that the intent arrived; a second
//!    run finds the note and changes nothing;
//! 3. the intent goes.
//!
//! So the session is never live under both actors. Between steps 1 and 2
//! it is live under neither: a round trip normally. A node stopped between
//! the steps leaves its intent, which the next store to open, or any
//! node's reaper once the intent is [`GRACE_MS`] old, rolls forward from
//! where it stopped (`roll_forward.rs`); every step may run twice, so a roll-forward racing
//! the node that began it does no harm. The arrival note is kept for
//! [`ARRIVAL_KEPT_MS`]: an intent left longer than that (every node down
//! for a week between steps 2 and 3) would place its session again. A
//! roll-forward cannot return the moved session's key: it was only in the
//! failed call's reply, so the player logs in again.

use crate::error::{Error, Result};
use crate::key::Digest;
use crate::session::Record;

/// How old an intent must be before a reaper rolls it forward: a node
/// that is alive finishes its own within a few round trips.
pub(crate) const GRACE_MS: u64 = 2_000;

/// How long a shard keeps the note that an intent arrived.
pub(crate) const ARRIVAL_KEPT_MS: u64 = 7 * 24 * 3600 * 1000;

/// The stored form's version.
const INTENT_FORMAT: u8 = 1;

/// A session on its way from one actor (and shard) to another.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Intent {
    pub id: String,
    pub from: String,
    pub to: String,
    /// The moved session's new digest.
    pub digest: Digest,
    /// The moved session, as it is stored under `to`.
    pub record: Record,
    /// When the reassign began (the store's clock).
    pub created_at: u64,
}

impl Intent {
    /// `[format][created_at u64][id, from, to: u16 length + bytes]
    /// [digest: 32 bytes][the record, as codec encodes it]`.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let record = crate::codec::encode(&self.record)?;
        let mut out = Vec::with_capacity(64 + record.len());
        out.push(INTENT_FORMAT);
        out.extend_from_slice(&self.created_at.to_be_bytes());
        for text in [&self.id, &self.from, &self.to] {
            let len = u16::try_from(text.len()).map_err(|_| Error::Corrupt {
                what: format!("intent {}", self.id),
                problem: "a name longer than 65,535 bytes".into(),
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&self.digest.0);
        out.extend_from_slice(&record);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Intent, String> {
        let mut rest = bytes;
        let mut take = |n: usize| -> std::result::Result<&[u8], String> {
            if rest.len() < n {
                return Err("truncated intent".into());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(1)?[0] != INTENT_FORMAT {
            return Err("unknown intent format".into());
        }
        let created_at = u64::from_be_bytes(take(8)?.try_into().map_err(|_| "bad time")?);
        let mut text = || -> std::result::Result<String, String> {
            let len = u16::from_be_bytes(take(2)?.try_into().map_err(|_| "bad length")?);
            String::from_utf8(take(usize::from(len))?.to_vec()).map_err(|e| e.to_string())
        };
        let (id, from, to) = (text()?, text()?, text()?);
        let digest = Digest(
            take(crate::key::DIGEST_LEN)?
                .try_into()
                .map_err(|_| "bad digest")?,
        );
        let record = crate::codec::decode(rest)?;
        Ok(Intent {
            id,
            from,
            to,
            digest,
            record,
            created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_reads_back_as_written() {
        let mut data = crate::session::Data::new();
        data.insert("level", &3).unwrap();
        let record = Record {
            actor_id: "player:2".into(),
            expires_at: 1_700_000_600_000,
            filed_at: 1_700_000_600_000,
            app_version: None,
            revision: 4,
            id: "AbCdEfGhIjKlMnOp".into(),
            language: "en".into(),
            created_at: 1_700_000_000_000,
            deadline: None,
            node_id: None,
            data,
        };
        // As stored: its data kept as read.
        let record = crate::codec::decode(&crate::codec::encode(&record).unwrap()).unwrap();
        let intent = Intent {
            id: "0a1b".into(),
            from: "player:1".into(),
            to: "player:2".into(),
            digest: Digest::of_secret("s"),
            record,
            created_at: 1_700_000_000_000,
        };
        let bytes = intent.encode().unwrap();
        assert_eq!(Intent::decode(&bytes).unwrap(), intent);
        assert!(Intent::decode(&bytes[..20]).is_err());
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert!(Intent::decode(&newer).is_err());
    }
}
