//! The embedded default engine: sled 0.34.7, in one process.
//!
//! sled facts this engine designs around:
//! - a transaction serialises the whole process and forces two log-buffer
//!   writes, so concurrent writers share transactions (`write_group`);
//! - a transaction holds a process-wide lock that every read waits on, so
//!   transactions stay short and the reaper's batches are read ahead
//!   (`prefetch`) outside it;
//! - touching a `Tree` inside a transaction closure deadlocks, so the actor
//!   lists a batch needs are read before it starts (`trees`);
//! - a committed transaction is on disk only after `flush()`, which uses
//!   `sync_file_range`, so durable flushes also fsync (`files`);
//! - a leftover `snap.*.generating` file makes the next open fail, so open
//!   removes such files first (`files`);
//! - `cache_capacity` defaults to 1 GiB, so it is always set.

mod files;
pub(crate) mod layout;
mod trees;
mod txn;
mod write_group;

use std::path::Path;
use std::sync::Arc;

use self::layout::{META_CLEAN, META_FORMAT, STORE_FORMAT};
use self::trees::Trees;
use self::write_group::WriteGroup;
use crate::codec;
use crate::config::{millis, Config, Durability};
use crate::engine::{
    Commit, CommitCounts, Count, Due, Engine, Fix, IndexVisit, Opened, RecordVisit, Task, Ticket,
    Upkeep, WritesHeld,
};
use crate::error::{Error, Result};
use crate::events::EventHub;
use crate::key::Digest;
use crate::worker::Poison;

pub(crate) struct SledEngine {
    trees: Arc<Trees>,
    writes: WriteGroup,
}

impl SledEngine {
    /// Opens (or creates) the store directory, checks its format, takes
    /// and clears the clean-shutdown marker.
    pub fn open(
        path: &Path,
        config: &Config,
        events: Arc<EventHub>,
        poison: Arc<Poison>,
    ) -> Result<(SledEngine, Opened)> {
        let flush_every = match config.durability {
            Durability::Periodic(i) => Some(millis(i).max(1)),
            Durability::Immediate => None,
        };
        let (trees, dir) = Trees::open(path, config.cache_capacity, flush_every)?;
        let clean_shutdown = open_meta(&trees)?;
        let trees = Arc::new(trees);
        let writes = WriteGroup::new(
            trees.clone(),
            events,
            config.durability == Durability::Immediate,
            config.max_batch,
            poison,
        );
        let engine = SledEngine { trees, writes };
        let opened = Opened {
            created: dir.created,
            clean_shutdown,
            stale_files_removed: dir.stale_snapshots_removed,
        };
        Ok((engine, opened))
    }
}

/// Checks the store format (writing it into a new store) and takes the
/// clean-shutdown marker: from here until a clean close, a crash must be
/// seen as unclean. Returns whether the last run closed cleanly.
fn open_meta(trees: &Trees) -> Result<bool> {
    match trees.meta(META_FORMAT)? {
        None => trees.set_meta(META_FORMAT, Some(&STORE_FORMAT.to_be_bytes()))?,
        Some(v) => {
            let found = <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| Error::Corrupt {
                    what: "meta entry `format`".into(),
                    problem: format!("{} bytes instead of 4", v.len()),
                })?;
            if found > STORE_FORMAT {
                return Err(Error::NewerFormat {
                    found,
                    supported: STORE_FORMAT,
                });
            }
            if found < STORE_FORMAT {
                // Format 1's records and expiry entries hold as they are; its
                // actor index is rewritten (see `STORE_FORMAT`). From here an
                // older build refuses the store.
                let moved = trees.migrate_actors_from_format_1()?;
                trees.flush(true)?;
                log::info!("store format {found} -> {STORE_FORMAT}: {moved} actor entries moved");
                trees.set_meta(META_FORMAT, Some(&STORE_FORMAT.to_be_bytes()))?;
            }
        }
    }
    let clean = trees.meta(META_CLEAN)?.is_some_and(|v| v == [1]);
    trees.set_meta(META_CLEAN, None)?;
    trees.flush(true)?;
    Ok(clean)
}

impl Engine for SledEngine {
    fn read_record(
        &self,
        _actor_id: &str,
        digest: &Digest,
        read: &mut dyn FnMut(&[u8]),
    ) -> Result<bool> {
        self.trees.read_record(digest, read)
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        self.trees.actor_sessions(actor_id)
    }

    fn due(&self, now: u64, limit: usize) -> Result<Vec<Due>> {
        self.trees.due(now, limit)
    }

    fn next_expiry(&self) -> Result<Option<u64>> {
        self.trees.next_expiry()
    }

    fn session_count(&self) -> Result<Count> {
        Ok(self.trees.session_count())
    }

    fn submit(&self, task: Arc<dyn Task>) -> Result<Ticket> {
        self.writes.submit(task)
    }

    fn wait(&self, ticket: Ticket) -> Result<Commit> {
        self.writes.wait(&ticket)
    }

    /// Reads each due session's record and actor entry, so that the
    /// transaction deleting them finds them in sled's cache: a transaction
    /// blocks every read in the process while it waits for the disk.
    /// Errors are left for the transaction to meet and report.
    fn prefetch(&self, due: &[Due]) {
        for Due { digest, .. } in due {
            let mut actor = None;
            let _ = self.trees.read_record(digest, &mut |bytes| {
                actor = codec::decode_head(bytes).ok().map(|h| h.actor_id);
            });
            if let Some(actor) = actor {
                let _ = self.trees.actors.get(layout::actor_key(&actor));
            }
        }
    }

    fn flush(&self) -> Result<()> {
        self.trees.flush(true)
    }

    fn ping(&self) -> Result<()> {
        // In process, nothing to reach: a write group that panicked has
        // already poisoned the store, which the caller checks.
        Ok(())
    }

    fn commit_counts(&self) -> CommitCounts {
        self.writes.counts()
    }

    fn close(&self, clean: bool) -> Result<()> {
        self.writes.close();
        if clean {
            self.trees.store_count()?;
            self.trees.flush(true)?;
            self.trees.set_meta(META_CLEAN, Some(&[1]))?;
        }
        self.trees.flush(true)
    }
}

impl Upkeep for SledEngine {
    fn quarantined(&self) -> Result<u64> {
        Ok(self.trees.quarantined())
    }

    fn hold_writes(&self) -> Result<WritesHeld> {
        Ok(WritesHeld(Box::new(self.writes.hold())))
    }

    fn scan_records(&self, visit: &mut RecordVisit<'_>) -> Result<()> {
        self.trees.scan_records(visit)
    }

    fn scan_expiries(&self, visit: &mut IndexVisit<'_, (u64, Digest)>) -> Result<()> {
        self.trees.scan_expiries(visit)
    }

    fn scan_actors(&self, visit: &mut IndexVisit<'_, (String, Digest)>) -> Result<()> {
        self.trees.scan_actors(visit)
    }

    fn repair(&self, fixes: &[Fix]) -> Result<()> {
        self.trees.repair(fixes)
    }

    fn still_needed(&self, fixes: Vec<Fix>) -> Result<Vec<Fix>> {
        self.trees.still_needed(fixes)
    }
}
