//! Group commit, the sled engine's single writer. Callers queue tasks on a
//! channel; one thread drains whatever is waiting (up to `Config::max_batch`)
//! and plans and commits it as one sled transaction, then, in immediate mode,
//! makes it durable with one flush + fsync shared by every caller in the
//! batch. Events are published after the commit (and flush), in commit
//! order, before callers are answered.
//!
//! Being the only writer means a plan's preconditions hold by construction:
//! each task is planned inside the transaction, against the batch's earlier
//! changes, so nothing is re-checked and nothing ever conflicts.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::handoff;
use super::trees::Trees;
use crate::engine::{Commit, CommitCounts, Task};
use crate::error::{Error, Result, SharedError, StorageError};
use crate::events::EventHub;
use crate::worker::{Poison, PoisonOnPanic};

pub(crate) struct Request {
    pub task: Arc<dyn Task>,
    pub reply: Sender<Result<Commit>>,
}

pub(crate) enum Msg {
    Write(Request),
    /// Stops writing: says so on `ready`, then waits until `release`
    /// disconnects. Used by the consistency check and export.
    Hold {
        ready: Sender<()>,
        release: Receiver<()>,
    },
    /// Commit what is queued before this message, then stop.
    Shutdown,
}

/// Counters kept by the committer.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    commits: AtomicU64,
    plans: AtomicU64,
    syncs: AtomicU64,
}

impl CommitStats {
    pub fn counts(&self) -> CommitCounts {
        CommitCounts {
            commits: self.commits.load(Ordering::Relaxed),
            plans: self.plans.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Committer {
    pub trees: Arc<Trees>,
    pub events: Arc<EventHub>,
    pub stats: Arc<CommitStats>,
    /// Immediate durability: flush + fsync after every batch.
    pub sync: bool,
    /// Most tasks in one transaction (`Config::max_batch`).
    pub max_batch: usize,
    pub poison: Arc<Poison>,
}

impl Committer {
    pub fn run(&self, rx: &Receiver<Msg>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // Declared after `batch`, so it drops first if planning panics: the
        // store is poisoned before the batch's callers hear of it.
        let _poison = PoisonOnPanic::new(&self.poison, "committer");
        let mut next = rx.recv().ok();
        // Whether the last batch held a single write: a lone caller, whose
        // next request is worth polling for (see `handoff`). After a larger
        // batch the committer blocks at once: polling would take a core from
        // the callers it just answered, and their requests would trickle in
        // one by one instead of gathering into the next batch.
        let mut lone = false;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Shutdown => break,
                Msg::Hold { ready, release } => {
                    if ready.send(()).is_ok() {
                        let _ = release.recv();
                    }
                }
                Msg::Write(first) => {
                    batch.push(first);
                    while batch.len() < self.max_batch {
                        match rx.try_recv() {
                            Ok(Msg::Write(r)) => batch.push(r),
                            // Shutdown or a hold waits for this batch.
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    lone = batch.len() == 1;
                    self.commit(&mut batch);
                }
            }
            if next.is_none() {
                let spin = if lone { handoff::SPIN } else { Duration::ZERO };
                next = handoff::recv(rx, spin).ok();
            }
        }
    }

    fn commit(&self, batch: &mut Vec<Request>) {
        let actors: Vec<&str> = batch
            .iter()
            .flat_map(|r| r.task.actors().iter().map(String::as_str))
            .collect();
        let events = RefCell::new(Vec::new());
        let committed = self.trees.transact(&actors, &|txn| {
            let mut events = events.borrow_mut();
            events.clear();
            for request in batch.iter() {
                let plan = request.task.plan(txn)?;
                for change in &plan.changes {
                    txn.apply(change)?;
                }
                events.extend(plan.events);
            }
            Ok(())
        });
        let committed = committed.and_then(|()| {
            if self.sync {
                self.trees.flush(true)?;
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .plans
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match committed {
            Ok(()) => {
                self.events.publish(&events.into_inner());
                for request in batch.drain(..) {
                    // A caller that gave up waiting is no error.
                    let _ = request.reply.send(Ok(Commit::Done));
                }
            }
            Err(e) => {
                log::error!("a batch of {} writes failed: {e}", batch.len());
                // Every caller gets the failure with its source chain.
                let cause = Arc::new(e);
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(Error::Storage(StorageError::new(
                        "committing a batch",
                        SharedError::new(cause.clone()),
                    ))));
                }
            }
        }
    }
}
