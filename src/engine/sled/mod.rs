//! The embedded default engine: sled 0.34.7, in one process.
//!
//! sled facts this engine designs around:
//! - a transaction serialises the whole process and forces two log-buffer
//!   writes, so the committer groups many plans into one (`committer`);
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

mod committer;
mod files;
mod handoff;
pub(crate) mod layout;
mod trees;
mod txn;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use self::committer::{CommitStats, Committer, Msg, Request};
use self::layout::{META_CLEAN, META_FORMAT, STORE_FORMAT};
use self::trees::Trees;
use crate::codec;
use crate::config::{millis, Config, Durability};
use crate::engine::{
    Commit, CommitCounts, Due, Engine, Fix, Index, IndexVisit, Opened, RecordVisit, Task, Ticket,
    WritesHeld,
};
use crate::error::{Error, Result};
use crate::events::EventHub;
use crate::key::Digest;
use crate::worker::{self, Poison};

pub(crate) struct SledEngine {
    trees: Arc<Trees>,
    to_committer: Sender<Msg>,
    committer: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<CommitStats>,
    /// Callers waiting for the committer's answer.
    waiting: AtomicUsize,
    /// How long a lone waiting caller polls for its answer (see `handoff`):
    /// zero in immediate mode, where the fsync outlasts any sensible spin.
    reply_spin: Duration,
}

fn committer_failed() -> Error {
    Error::WorkerFailed {
        worker: "committer",
    }
}

impl SledEngine {
    /// Opens (or creates) the store directory, checks its format, takes
    /// and clears the clean-shutdown marker, and starts the committer.
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
        let stats = Arc::new(CommitStats::default());
        let committer = Committer {
            trees: trees.clone(),
            events,
            stats: stats.clone(),
            sync: config.durability == Durability::Immediate,
            max_batch: config.max_batch,
            poison: poison.clone(),
        };
        let (to_committer, from_callers) = crossbeam_channel::unbounded();
        let handle = worker::spawn("committer", poison, move || {
            committer.run(&from_callers);
        })
        .map_err(|source| Error::WorkerStart {
            worker: "committer",
            source,
        })?;
        let engine = SledEngine {
            trees,
            to_committer,
            committer: Mutex::new(Some(handle)),
            stats,
            waiting: AtomicUsize::new(0),
            reply_spin: match config.durability {
                Durability::Periodic(_) => handoff::SPIN,
                Durability::Immediate => Duration::ZERO,
            },
        };
        let opened = Opened {
            created: dir.created,
            clean_shutdown,
            stale_files_removed: dir.stale_snapshots_removed,
        };
        Ok((engine, opened))
    }

    /// Stops the committer after what is queued; idempotent.
    fn stop_committer(&self) -> Result<()> {
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(handle) = handle else {
            return Ok(());
        };
        let _ = self.to_committer.send(Msg::Shutdown);
        handle.join().map_err(|_| committer_failed())
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
                // Format 1 needs no migration (see `STORE_FORMAT`); from
                // here an older build refuses the store.
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

    fn session_count(&self) -> Result<Option<u64>> {
        Ok(self.trees.session_count())
    }

    fn quarantined(&self) -> Result<u64> {
        Ok(self.trees.quarantined())
    }

    fn submit(&self, task: Arc<dyn Task>) -> Result<Ticket> {
        let (reply, outcome) = crossbeam_channel::bounded(1);
        self.to_committer
            .send(Msg::Write(Request { task, reply }))
            .map_err(|_| committer_failed())?;
        Ok(Ticket(outcome))
    }

    fn wait(&self, ticket: Ticket) -> Result<Commit> {
        // Only a lone caller polls: concurrent ones are batched anyway, and
        // their polling would take the cores from the committer.
        let alone = self.waiting.fetch_add(1, Ordering::Relaxed) == 0;
        let spin = if alone {
            self.reply_spin
        } else {
            Duration::ZERO
        };
        let answer = handoff::recv(&ticket.0, spin);
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        answer.map_err(|_| committer_failed())?
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
                let _ = self.trees.actors.get(layout::actor_key(&actor, digest));
            }
        }
    }

    fn flush(&self) -> Result<()> {
        self.trees.flush(true)
    }

    fn ping(&self) -> Result<()> {
        // In process, nothing to reach: a dead committer has already
        // poisoned the store, which the caller checks.
        Ok(())
    }

    fn commit_counts(&self) -> CommitCounts {
        self.stats.counts()
    }

    fn hold_writes(&self) -> Result<WritesHeld> {
        let (ready, is_ready) = crossbeam_channel::bounded(1);
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        self.to_committer
            .send(Msg::Hold {
                ready,
                release: released,
            })
            .map_err(|_| committer_failed())?;
        is_ready.recv().map_err(|_| committer_failed())?;
        Ok(WritesHeld(Box::new(release)))
    }

    fn scan_records(&self, visit: &mut RecordVisit<'_>) -> Result<()> {
        self.trees.scan_records(visit)
    }

    fn scan_expiries(&self, visit: &mut IndexVisit<'_, (u64, Digest)>) -> Result<()> {
        self.trees
            .scan_index(Index::Expiries, layout::parse_expiry_key, visit)
    }

    fn scan_actors(&self, visit: &mut IndexVisit<'_, (String, Digest)>) -> Result<()> {
        self.trees
            .scan_index(Index::Actors, layout::parse_actor_key, visit)
    }

    fn repair(&self, fixes: &[Fix]) -> Result<()> {
        self.trees.repair(fixes)
    }

    fn close(&self, clean: bool) -> Result<()> {
        self.stop_committer()?;
        if clean {
            self.trees.store_count()?;
            self.trees.flush(true)?;
            self.trees.set_meta(META_CLEAN, Some(&[1]))?;
        }
        self.trees.flush(true)
    }
}

impl Drop for SledEngine {
    fn drop(&mut self) {
        // A store whose open failed after the engine started is never
        // closed; its committer still stops, and releases the directory.
        let _ = self.stop_committer();
    }
}
