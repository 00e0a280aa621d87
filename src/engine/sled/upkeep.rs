//! Whole-store upkeep on the sled trees: the scans of the consistency check
//! (the record scan also recounts the sessions after an unclean shutdown,
//! while writes go on), the re-check of its findings with writes held, and
//! repair.

use std::sync::atomic::{AtomicI64, Ordering};

use super::layout;
use super::trees::{sled_err, Recount, Trees};
use crate::codec;
use crate::engine::{Fix, Index, IndexVisit, RecordVisit, Stored};
use crate::error::Result;
use crate::key::Digest;

/// How many records a step of a whole-tree scan reads.
const SCAN_STEP: usize = 1024;

/// Ends an unfinished recount when its scan stops early.
struct RecountRunning<'a>(&'a Trees);

impl Drop for RecountRunning<'_> {
    fn drop(&mut self) {
        *self.0.lock_recount() = None;
    }
}

/// The digest a `records` entry is filed under, if its key parses and
/// names the actor its record names (a record filed under another actor
/// than its own is damaged: its key names nobody's session).
fn filed_digest(key: &[u8], record: &[u8]) -> Option<Digest> {
    let (actor, digest) = layout::parse_record_key(key)?;
    codec::decode_head(record)
        .is_ok_and(|h| h.actor_id == actor)
        .then_some(digest)
}

/// Visits every record, in steps of [`SCAN_STEP`] keys. While the count is
/// not known (after an unclean shutdown), a whole scan also recounts the
/// sessions, exactly, though writes go on meanwhile: each step holds the
/// recount exclusively, each write it shared (`Trees::counting`).
pub(super) fn scan_records(trees: &Trees, visit: &mut RecordVisit<'_>) -> Result<()> {
    let recounting = {
        let mut recount = trees.lock_recount();
        let start = recount.is_none() && !trees.session_count().exact;
        if start {
            *recount = Some(Recount {
                read_below: Vec::new(),
                scanned: 0,
                behind: AtomicI64::new(0),
            });
        }
        start.then(|| RecountRunning(trees))
    };
    let mut from = Vec::new();
    loop {
        let step = {
            let mut recount = trees.lock_recount();
            let step = trees
                .records
                .range(from.as_slice()..)
                .take(SCAN_STEP)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(sled_err("scanning sessions"))?;
            if let Some((last, _)) = step.last() {
                from = last.to_vec();
                from.push(0);
            }
            if let (Some(_), Some(r)) = (&recounting, recount.as_mut()) {
                r.read_below.clone_from(&from);
                r.scanned += step.len() as u64;
                if step.is_empty() {
                    let behind = r.behind.load(Ordering::Relaxed);
                    trees.set_count(r.scanned.saturating_add_signed(behind));
                }
            }
            step
        };
        if step.is_empty() {
            return Ok(());
        }
        for (k, v) in &step {
            let stored = Stored {
                id: k,
                digest: filed_digest(k, v),
                bytes: v,
            };
            if !visit(stored)? {
                return Ok(());
            }
        }
    }
}

/// Visits every expiry entry by its key, with its time and its record's
/// digest (`None`: a damaged key).
pub(super) fn scan_expiries(
    trees: &Trees,
    visit: &mut IndexVisit<'_, (u64, Digest)>,
) -> Result<()> {
    for kv in trees.expiries.iter() {
        let (k, _) = kv.map_err(sled_err("scanning expiries"))?;
        let parsed = layout::parse_expiry_key(&k).and_then(|(at, record)| {
            layout::parse_record_key(record).map(|(_, digest)| (at, digest))
        });
        if !visit(&k, parsed)? {
            break;
        }
    }
    Ok(())
}

/// The record under `key`, if it decodes.
fn decoded(trees: &Trees, key: &[u8]) -> Result<Option<crate::session::Record>> {
    Ok(trees
        .records
        .get(key)
        .map_err(sled_err("re-checking a session"))?
        .and_then(|bytes| codec::decode(&bytes).ok()))
}

/// Checks each fix again with point reads (writes are held): a fix found
/// while writes went on may describe a write the scans met half-way.
pub(super) fn still_needed(trees: &Trees, fixes: Vec<Fix>) -> Result<Vec<Fix>> {
    let fail = || sled_err("re-checking an index entry");
    let mut needed = Vec::new();
    for fix in fixes {
        let still = match &fix {
            Fix::Quarantine { id } => trees.records.get(id).map_err(fail())?.is_some_and(|bytes| {
                filed_digest(id, &bytes).is_none() || codec::decode(&bytes).is_err()
            }),
            Fix::AddExpiry {
                at,
                actor_id,
                digest,
                ..
            } => {
                let key = layout::record_key(actor_id, digest);
                decoded(trees, &key)?.is_some_and(|r| r.filed_at == *at)
                    && !trees
                        .expiries
                        .contains_key(layout::expiry_key(*at, &key))
                        .map_err(fail())?
            }
            Fix::Drop {
                index: Index::Expiries,
                id,
                ..
            } => {
                trees.expiries.contains_key(id).map_err(fail())?
                    && match layout::parse_expiry_key(id) {
                        Some((at, key)) => decoded(trees, key)?.is_none_or(|r| r.filed_at != at),
                        None => true,
                    }
            }
            // No actor index (`keeps_actor_index`); the record scan recounts.
            Fix::AddActor { .. }
            | Fix::Drop {
                index: Index::Actors,
                ..
            }
            | Fix::Count(_) => false,
        };
        if still {
            needed.push(fix);
        }
    }
    Ok(needed)
}

/// Applies repairs (the writers are stopped), then fsyncs.
pub(super) fn repair(trees: &Trees, fixes: &[Fix]) -> Result<()> {
    let fail = || sled_err("repairing");
    for fix in fixes {
        match fix {
            Fix::Quarantine { id } => {
                if let Some(bytes) = trees.records.remove(id).map_err(fail())? {
                    trees.quarantine.insert(id, bytes).map_err(fail())?;
                    trees.count_write(None, id, -1);
                }
            }
            Fix::AddExpiry {
                at,
                actor_id,
                digest,
                ..
            } => trees.file(&layout::expiry_key(
                *at,
                &layout::record_key(actor_id, digest),
            ))?,
            Fix::Drop {
                index: Index::Expiries,
                id,
                ..
            } => trees.unfile(id)?,
            Fix::AddActor { .. }
            | Fix::Drop {
                index: Index::Actors,
                ..
            } => {}
            Fix::Count(n) => trees.set_count(*n),
        }
    }
    trees.flush(true)
}
