//! Moving a store of format 1 or 2 to format 3, during `open`, resumably.
//!
//! Formats 1 and 2 kept each record under its digest alone (tree
//! `sessions`), each expiry entry as `filed_at ++ digest`, and an actor
//! index (`actors`). Format 3 keys each record by actor and digest
//! (`records`), and its expiry entry names that key; the actor index goes.
//!
//! The move takes `sessions` in batches. For each record of a batch it
//! stores the record under its new key and files its new expiry entry, then
//! removes the old entry, and last the batch's records from `sessions`
//! (each step one sled batch on one tree). A crash part-way leaves some
//! records moved and some not, and the store still says format 1 or 2, so
//! the next open moves the rest: a record moved but still in `sessions` is
//! moved again, to the same key. Once `sessions` is empty, the old entries
//! left (only damaged ones) are removed, `sessions` and `actors` dropped,
//! and the caller flushes, fsyncs, and writes format 3.

use sled::Batch;

use super::layout::{self, legacy};
use super::trees::{sled_err, Trees};
use crate::codec;
use crate::key::{Digest, MAX_ACTOR_ID_LEN};

/// Records moved per batch.
const BATCH: usize = 10_000;

/// What a move did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub records: u64,
    /// Records that could not be placed (they do not decode, or their key
    /// or actor id is damaged): moved to the quarantine as they were.
    pub quarantined: u64,
}

/// Moves a format 1 or 2 store's trees to format 3's (see the module docs).
pub(crate) fn to_format_3(trees: &Trees) -> crate::error::Result<Moved> {
    let fail = || sled_err("moving the store to format 3");
    let mut moved = Moved::default();
    let has = |name: &str| trees.db.tree_names().iter().any(|n| n == name.as_bytes());
    if has(legacy::SESSIONS) {
        let sessions = trees.db.open_tree(legacy::SESSIONS).map_err(fail())?;
        loop {
            let batch = sessions
                .iter()
                .take(BATCH)
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail())?;
            if batch.is_empty() {
                break;
            }
            let (mut records, mut expiries, mut quarantine, mut gone) = (
                Batch::default(),
                Batch::default(),
                Batch::default(),
                Batch::default(),
            );
            for (key, value) in &batch {
                let placed = Digest::from_slice(key).zip(codec::decode(value).ok());
                match placed {
                    Some((digest, r))
                        if !r.actor_id.is_empty() && r.actor_id.len() <= MAX_ACTOR_ID_LEN =>
                    {
                        let new_key = layout::record_key(&r.actor_id, &digest);
                        expiries.insert(layout::expiry_key(r.filed_at, &new_key), &[]);
                        expiries.remove(&legacy::expiry_key(r.filed_at, &digest)[..]);
                        records.insert(new_key, value);
                        moved.records += 1;
                    }
                    _ => {
                        quarantine.insert(key, value);
                        moved.quarantined += 1;
                    }
                }
                gone.remove(key);
            }
            trees.records.apply_batch(records).map_err(fail())?;
            trees.expiries.apply_batch(expiries).map_err(fail())?;
            trees.quarantine.apply_batch(quarantine).map_err(fail())?;
            sessions.apply_batch(gone).map_err(fail())?;
        }
    }
    let mut stale = Batch::default();
    for kv in trees.expiries.iter() {
        let (key, _) = kv.map_err(fail())?;
        if key.len() == legacy::EXPIRY_KEY_LEN {
            stale.remove(key);
        }
    }
    trees.expiries.apply_batch(stale).map_err(fail())?;
    for name in [legacy::SESSIONS, legacy::ACTORS] {
        if has(name) {
            trees.db.drop_tree(name).map_err(fail())?;
        }
    }
    Ok(moved)
}
