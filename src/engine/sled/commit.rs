//! How a plan reaches the trees: planned against a view that keeps what it
//! read, then committed as ordered single-key writes, or, for a plan that
//! moves a session between actors, as one sled transaction.
//!
//! The order (`docs/format.md`, section 6): first the expiry entries the
//! plan files; then each record, by compare-and-swap from "absent" or from
//! the bytes planning read; then each deleted record, by compare-and-swap,
//! followed by its expiry entry; last, the entries that rewritten records
//! moved away from. A crash may stop it after any write. Each prefix leaves
//! a store that the check after an unclean shutdown brings back to every
//! invariant: an entry whose record is missing or filed elsewhere is
//! dropped (the reaper drops it too, when it comes due), and an actor left
//! over its cap by a register keeps its newest session.
//!
//! The caller holds the turns of every actor the plan touches, and every
//! writer of an actor's records holds its turn: so nothing changes what a
//! plan read before its writes land, and the swaps do not fail. A swap that
//! fails anyway before any record was written is a conflict (the store
//! plans again); one that fails later is an error, and what was written is
//! left for the check.

use std::cell::RefCell;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{IVec, Transactional};

use super::layout;
use super::trees::{sled_err, Trees};
use crate::engine::{Change, Commit, View};
use crate::error::{Error, Result, StorageError};
use crate::key::Digest;

/// Planning's view of the trees. It keeps the records it read, by key, so
/// that the writes planned on them are made only if they still hold, and
/// an actor's records listed once need no second read.
pub(crate) struct TreesView<'a> {
    trees: &'a Trees,
    read: RefCell<Vec<(Vec<u8>, Option<IVec>)>>,
}

impl<'a> TreesView<'a> {
    pub fn new(trees: &'a Trees) -> Self {
        TreesView {
            trees,
            read: RefCell::new(Vec::new()),
        }
    }

    /// The record under `key` as planning read it: `None` when planning
    /// never read it, `Some(None)` when it read none there.
    fn as_read(&self, key: &[u8]) -> Option<Option<IVec>> {
        self.read
            .borrow()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn keep(&self, key: Vec<u8>, value: Option<IVec>) {
        let mut read = self.read.borrow_mut();
        if !read.iter().any(|(k, _)| *k == key) {
            read.push((key, value));
        }
    }
}

impl View for TreesView<'_> {
    fn record(&self, actor_id: &str, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let key = layout::record_key(actor_id, digest);
        if let Some(value) = self.as_read(&key) {
            return Ok(value.map(|v| v.to_vec()));
        }
        let value = self
            .trees
            .records
            .get(&key)
            .map_err(sled_err("reading a session"))?;
        let bytes = value.as_ref().map(|v| v.to_vec());
        self.keep(key, value);
        Ok(bytes)
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for (key, value) in self.trees.actor_records(actor_id)? {
            if let Some((_, digest)) = layout::parse_record_key(&key) {
                digests.push(digest);
                self.keep(key.to_vec(), Some(value));
            }
        }
        Ok(digests)
    }
}

/// Whether a plan must commit whole: it moves a session from one actor to
/// another (reassign), where a crash between its writes could end the
/// session under one actor without storing it under the other, or leave
/// it under both.
pub(crate) fn needs_transaction(changes: &[Change]) -> bool {
    let stores: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Insert { actor_id, .. } => Some(actor_id.as_str()),
            _ => None,
        })
        .collect();
    !stores.is_empty()
        && changes.iter().any(|c| {
            matches!(c, Change::Delete { actor_id, .. } if !stores.contains(&actor_id.as_str()))
        })
}

/// What the change does to its record: its key, the bytes planning read
/// there (`None`: absent), and the bytes it leaves (`None`: deleted).
struct RecordWrite<'c> {
    key: Vec<u8>,
    was: Option<IVec>,
    new: Option<&'c [u8]>,
}

fn record_write<'c>(view: &TreesView<'_>, change: &'c Change) -> Result<Option<RecordWrite<'c>>> {
    let (actor_id, digest, new) = match change {
        Change::Insert {
            actor_id,
            digest,
            record,
            ..
        }
        | Change::Update {
            actor_id,
            digest,
            record,
            ..
        } => (actor_id, digest, Some(record.as_slice())),
        Change::Delete {
            actor_id, digest, ..
        } => (actor_id, digest, None),
        Change::DropExpiry { .. }
        | Change::PutIntent { .. }
        | Change::DropIntent { .. }
        | Change::Arrival { .. } => return Ok(None),
    };
    let key = layout::record_key(actor_id, digest);
    let was = match change {
        Change::Insert { .. } => None,
        // Planning rewrites or deletes only what it read.
        _ => Some(view.as_read(&key).flatten().ok_or_else(|| {
            Error::Storage(StorageError::new(
                "committing a change",
                "a change names a record its plan did not read (a bug)",
            ))
        })?),
    };
    Ok(Some(RecordWrite { key, was, new }))
}

fn changed_under_turn() -> Error {
    Error::Storage(StorageError::new(
        "committing a change",
        "a session changed while its actor's turn was held (a bug); \
         the check after a restart repairs what was written",
    ))
}

/// Commits a plan's changes as ordered single-key writes (see the module
/// docs).
pub(crate) fn ordered(trees: &Trees, view: &TreesView<'_>, changes: &[Change]) -> Result<Commit> {
    let entries: Vec<_> = changes.iter().map(entries).collect();
    let records = changes
        .iter()
        .filter(|c| {
            matches!(
                c,
                Change::Insert { .. } | Change::Update { .. } | Change::Delete { .. }
            )
        })
        .count();
    let mut steps = Steps {
        left: entries.iter().flat_map(|(f, u)| [f, u]).flatten().count() + records,
    };
    // 1. The expiry entries the plan files.
    for (file, _) in &entries {
        if let Some(entry) = file {
            trees.file(entry)?;
            steps.made("filed");
        }
    }
    // 2. The records stored or rewritten; 3. the records deleted.
    let mut written = false;
    for deletes in [false, true] {
        for change in changes {
            if matches!(change, Change::Delete { .. }) != deletes {
                continue;
            }
            let Some(w) = record_write(view, change)? else {
                continue;
            };
            if !trees.swap_record(&w.key, w.was.as_deref(), w.new)? {
                if written {
                    return Err(changed_under_turn());
                }
                for entry in entries.iter().filter_map(|(file, _)| file.as_ref()) {
                    trees.unfile(entry)?;
                }
                return Ok(Commit::Conflict);
            }
            written = true;
            steps.made(if deletes { "deleted" } else { "stored" });
        }
    }
    // 4. The entries of deleted records, stale entries, and the entries
    // rewritten records moved away from.
    for (_, unfile) in &entries {
        if let Some(entry) = unfile {
            trees.unfile(entry)?;
            steps.made("unfiled");
        }
    }
    Ok(Commit::Done)
}

/// The single-key writes of an ordered commit still to make.
struct Steps {
    left: usize,
}

impl Steps {
    /// One write made: between it and the next (if one follows), the crash
    /// test may stop the write to kill the process there (feature
    /// `test-hooks`).
    fn made(&mut self, what: &'static str) {
        self.left = self.left.saturating_sub(1);
        #[cfg(feature = "test-hooks")]
        if self.left > 0 {
            super::hooks::step(what);
        }
        #[cfg(not(feature = "test-hooks"))]
        let _ = what;
    }
}

/// Commits a plan's changes in one sled transaction over the records and
/// the expiry entries, if every record still holds what planning read.
pub(crate) fn whole(trees: &Trees, view: &TreesView<'_>, changes: &[Change]) -> Result<Commit> {
    let mut writes = Vec::with_capacity(changes.len());
    for change in changes {
        writes.push(record_write(view, change)?);
    }
    let counting = trees.counting();
    let outcome = (&trees.records, &trees.expiries).transaction(|(records, expiries)| {
        for (change, write) in changes.iter().zip(&writes) {
            if let Some(w) = write {
                if records.get(&w.key)? != w.was {
                    return Err(ConflictableTransactionError::Abort(()));
                }
                match w.new {
                    Some(bytes) => records.insert(w.key.as_slice(), bytes)?,
                    None => records.remove(w.key.as_slice())?,
                };
            }
            let (file, unfile) = entries(change);
            if let Some(key) = unfile {
                expiries.remove(key)?;
            }
            if let Some(key) = file {
                expiries.insert(key, &[])?;
            }
        }
        Ok(())
    });
    match outcome {
        Ok(()) => {}
        Err(TransactionError::Abort(())) => return Ok(Commit::Conflict),
        Err(TransactionError::Storage(e)) => {
            return Err(sled_err("committing a change in a transaction")(e))
        }
    }
    for w in writes.iter().flatten() {
        let delta = i64::from(w.new.is_some()) - i64::from(w.was.is_some());
        if delta != 0 {
            trees.count_write(counting.as_ref(), &w.key, delta);
        }
    }
    Ok(Commit::Done)
}

/// The expiry entries a change files and removes (`expiries` keys).
fn entries(change: &Change) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    match change {
        Change::Insert {
            actor_id,
            digest,
            filed_at,
            ..
        } => (
            Some(layout::expiry_key(
                *filed_at,
                &layout::record_key(actor_id, digest),
            )),
            None,
        ),
        Change::Update {
            actor_id,
            digest,
            filed_at_was,
            filed_at,
            ..
        } if filed_at_was != filed_at => {
            let key = layout::record_key(actor_id, digest);
            (
                Some(layout::expiry_key(*filed_at, &key)),
                Some(layout::expiry_key(*filed_at_was, &key)),
            )
        }
        Change::Update { .. } => (None, None),
        Change::Delete {
            actor_id,
            digest,
            filed_at,
        } => (
            None,
            Some(layout::expiry_key(
                *filed_at,
                &layout::record_key(actor_id, digest),
            )),
        ),
        Change::DropExpiry {
            actor_id,
            digest,
            at,
        } => (
            None,
            Some(layout::expiry_key(
                *at,
                &layout::record_key(actor_id, digest),
            )),
        ),
        // Refused before any write (`one_shard`).
        Change::PutIntent { .. } | Change::DropIntent { .. } | Change::Arrival { .. } => {
            (None, None)
        }
    }
}

/// Refuses a plan that changes intents: the sled engine has one shard, and
/// the session logic moves sessions between shards only on engines with
/// more than one.
pub(crate) fn one_shard(changes: &[Change]) -> Result<()> {
    let intents = changes.iter().any(|c| {
        matches!(
            c,
            Change::PutIntent { .. } | Change::DropIntent { .. } | Change::Arrival { .. }
        )
    });
    if intents {
        return Err(Error::Storage(StorageError::new(
            "committing a change",
            "the sled engine has one shard and stores no intents (a bug in sessiondb)",
        )));
    }
    Ok(())
}
