//! The embedded default engine: sled 0.34.7, in one process.
//!
//! Every write commits on its caller's thread, planned against the trees
//! and committed as ordered single-key writes (`commit`) while the caller
//! holds the turns of the actors it touches; only a plan that moves a
//! session between actors (reassign) commits as one sled transaction.
//!
//! sled facts this engine designs around:
//! - a transaction takes sled's concurrency-control lock exclusively,
//!   writes its log buffer twice and costs some 19k instructions per key,
//!   while a single-key compare-and-swap takes that lock shared and costs
//!   several times less: so the common path writes one key at a time, in an
//!   order whose every prefix the check after a crash can complete (`commit`);
//! - a committed write is on disk only after `flush()`, which uses
//!   `sync_file_range`, so durable flushes also fsync (`files`), and callers
//!   of immediate durability share them (`write_group`);
//! - a leftover `snap.*.generating` file makes the next open fail, so open
//!   removes such files first (`files`);
//! - `cache_capacity` defaults to 1 GiB, so it is always set.

mod commit;
mod files;
#[cfg(feature = "test-hooks")]
pub(crate) mod hooks;
pub(crate) mod layout;
mod migrate;
mod trees;
mod upkeep;
mod write_group;

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use self::commit::TreesView;
use self::layout::{META_CLEAN, META_FORMAT, STORE_FORMAT};
use self::trees::Trees;
use self::write_group::{writer_failed, WriteGroup, WRITER};
use crate::config::{millis, Config, Durability};
use crate::engine::gate::{Gate, Turns};
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
    events: Arc<EventHub>,
    poison: Arc<Poison>,
    /// Immediate durability: callers share flushes (`None`: periodic, sled
    /// flushes in the background).
    group: Option<WriteGroup>,
    /// Every writer of an actor's records holds the actor's turn, from
    /// planning to its last write (and, with immediate durability, until it
    /// joined the write group).
    turns: Turns,
    /// Held closed by whole-store work (`hold_writes`) and by `close`.
    gate: Arc<Gate>,
    /// Closed: no more writes.
    stopped: AtomicBool,
    /// Plans committed, and of those the ones that wrote.
    plans: AtomicU64,
    commits: AtomicU64,
}

impl SledEngine {
    /// Opens (or creates) the store directory, checks its format (moving
    /// an older one to format 3), takes and clears the clean-shutdown
    /// marker.
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
        let group = (config.durability == Durability::Immediate).then(|| {
            let trees = trees.clone();
            WriteGroup::new(
                Box::new(move || trees.flush(true)),
                events.clone(),
                poison.clone(),
            )
        });
        let engine = SledEngine {
            trees,
            events,
            poison,
            group,
            turns: Turns::default(),
            gate: Arc::new(Gate::default()),
            stopped: AtomicBool::new(false),
            plans: AtomicU64::new(0),
            commits: AtomicU64::new(0),
        };
        let opened = Opened {
            created: dir.created,
            clean_shutdown,
            stale_files_removed: dir.stale_snapshots_removed,
        };
        Ok((engine, opened))
    }
}

/// Checks the store format (writing it into a new store, moving an older
/// store to it) and takes the clean-shutdown marker: from here until a
/// clean close, a crash must be seen as unclean. Returns whether the last
/// run closed cleanly.
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
            if found < 3 {
                // Until format 3 or later is written, every open moves what
                // is left.
                let moved = migrate::to_format_3(trees)?;
                trees.count_write(None, &[], -i64::try_from(moved.quarantined).unwrap_or(0));
                trees.flush(true)?;
                log::info!(
                    "store format {found} -> {STORE_FORMAT}: {} records moved, {} quarantined",
                    moved.records,
                    moved.quarantined
                );
            }
            if found < STORE_FORMAT {
                // Format 3's trees are format 4's. From here an older build
                // refuses the store.
                trees.set_meta(META_FORMAT, Some(&STORE_FORMAT.to_be_bytes()))?;
                if found == 3 {
                    log::info!("store format 3 -> {STORE_FORMAT}: nothing to move");
                }
            }
        }
    }
    let clean = trees.meta(META_CLEAN)?.is_some_and(|v| v == [1]);
    trees.set_meta(META_CLEAN, None)?;
    trees.flush(true)?;
    Ok(clean)
}

impl SledEngine {
    /// Plans `task` and commits its plan, on the caller's thread, with the
    /// turns of its actors held; then publishes its events or, with
    /// immediate durability, joins the write group with them.
    fn commit(&self, task: &dyn Task) -> Result<Ticket> {
        let _turns = self.turns.take(task.subjects());
        let _inside = self.gate.enter();
        // `close` stops writes before it waits for those inside the gate.
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self.poison.failed().is_some() {
            return Err(writer_failed());
        }
        let view = TreesView::new(&self.trees);
        let plan = match panic::catch_unwind(AssertUnwindSafe(|| task.plan(&view))) {
            Ok(plan) => plan?,
            Err(_) => {
                // A bug in planning: the store is poisoned before its caller
                // hears of it.
                log::error!("planning a write panicked; the store is poisoned");
                self.poison.set(WRITER);
                return Err(writer_failed());
            }
        };
        commit::one_shard(&plan.changes)?;
        let committed = if plan.changes.is_empty() {
            Commit::Done
        } else if plan.whole || commit::needs_transaction(&plan.changes) {
            commit::whole(&self.trees, &view, &plan.changes)?
        } else {
            commit::ordered(&self.trees, &view, &plan.changes)?
        };
        if committed == Commit::Conflict {
            return Ok(Ticket::answered(Ok(Commit::Conflict)));
        }
        self.plans.fetch_add(1, Ordering::Relaxed);
        if !plan.changes.is_empty() {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        match &self.group {
            // Its events wait for the flush, behind every earlier write's.
            Some(group) if !plan.changes.is_empty() || !plan.events.is_empty() => {
                Ok(group.join(plan.events))
            }
            _ => {
                self.events.publish(&plan.events);
                Ok(Ticket::answered(Ok(Commit::Done)))
            }
        }
    }
}

impl Engine for SledEngine {
    fn read_record(
        &self,
        actor_id: &str,
        digest: &Digest,
        read: &mut dyn FnMut(&[u8]),
    ) -> Result<bool> {
        self.trees.read_record(actor_id, digest, read)
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
        self.commit(&*task)
    }

    fn wait(&self, ticket: Ticket) -> Result<Commit> {
        match &self.group {
            Some(group) => group.wait(ticket),
            None => ticket.take().unwrap_or_else(|| Err(writer_failed())),
        }
    }

    fn flush(&self) -> Result<()> {
        self.trees.flush(true)
    }

    fn ping(&self) -> Result<()> {
        // In process, nothing to reach: a write that panicked has already
        // poisoned the store, which the caller checks.
        Ok(())
    }

    fn commit_counts(&self) -> CommitCounts {
        CommitCounts {
            commits: self.commits.load(Ordering::Relaxed),
            plans: self.plans.load(Ordering::Relaxed),
            syncs: self.group.as_ref().map_or(0, WriteGroup::syncs),
        }
    }

    fn close(&self, clean: bool) -> Result<()> {
        self.stopped.store(true, Ordering::Release);
        // Waits for the writes inside; later ones find the store stopped.
        drop(self.gate.hold());
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
        Ok(WritesHeld(Box::new(self.gate.hold())))
    }

    fn scan_records(&self, visit: &mut RecordVisit<'_>) -> Result<()> {
        upkeep::scan_records(&self.trees, visit)
    }

    fn scan_expiries(&self, visit: &mut IndexVisit<'_, (u64, Digest)>) -> Result<()> {
        upkeep::scan_expiries(&self.trees, visit)
    }

    /// Format 3 keeps no actor index: an actor's sessions are the records
    /// under its key prefix.
    fn keeps_actor_index(&self) -> bool {
        false
    }

    fn scan_actors(&self, _visit: &mut IndexVisit<'_, (String, Digest)>) -> Result<()> {
        Ok(())
    }

    fn repair(&self, fixes: &[Fix]) -> Result<()> {
        upkeep::repair(&self.trees, fixes)
    }

    fn still_needed(&self, fixes: Vec<Fix>) -> Result<Vec<Fix>> {
        upkeep::still_needed(&self.trees, fixes)
    }
}
