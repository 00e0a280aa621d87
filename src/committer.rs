//! The single writer. Callers queue operations on a channel; one named
//! thread drains whatever is waiting (up to `Config::max_batch`) and commits it as
//! one transaction, then, in immediate mode, makes it durable with one
//! flush + fsync shared by every caller in the batch (group commit). Events
//! are published after the commit (and flush), before callers are answered.
//!
//! Being the only writer also means the transaction never conflicts, and
//! reads it makes outside the transaction (actor lists) stay current.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result, StorageError};
use crate::events::EventHub;
use crate::handoff;
use crate::rules::Rules;
use crate::storage::Backend;
use crate::write::{self, Op, Output};

pub(crate) struct Request {
    pub op: Op,
    pub reply: Sender<Result<Output>>,
}

/// Work that needs the store to itself.
pub(crate) type ExclusiveJob = Box<dyn FnOnce(&dyn Backend) + Send>;

// Almost every message is a `Write`; boxing it would add an allocation per
// operation to save a few bytes per queued message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    Write(Request),
    /// Runs with the store to itself (no write is in progress or starts
    /// meanwhile): used by `check` and `repair`.
    Exclusive(ExclusiveJob),
    /// Commit what is queued before this message, then stop.
    Shutdown,
}

/// Counters kept by the committer.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    pub syncs: AtomicU64,
    /// Operations answered with `Error::Corrupt`.
    pub corrupt: AtomicU64,
}

pub(crate) struct Committer {
    pub backend: Arc<dyn Backend>,
    pub rules: Arc<Rules>,
    pub events: Arc<EventHub>,
    pub stats: Arc<CommitStats>,
    /// Immediate durability: flush + fsync after every batch.
    pub sync: bool,
    /// Most operations in one transaction (`Config::max_batch`).
    pub max_batch: usize,
}

impl Committer {
    pub fn spawn(self, rx: Receiver<Msg>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("sessiondb-committer".into())
            .spawn(move || self.run(&rx))
    }

    fn run(&self, rx: &Receiver<Msg>) {
        let mut batch = Vec::with_capacity(self.max_batch);
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
                Msg::Exclusive(job) => job(self.backend.as_ref()),
                Msg::Write(first) => {
                    batch.push(first);
                    while batch.len() < self.max_batch {
                        match rx.try_recv() {
                            Ok(Msg::Write(r)) => batch.push(r),
                            // Shutdown or exclusive work waits for this batch.
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
        let actors: Vec<&str> = batch.iter().flat_map(|r| r.op.actors()).collect();
        let outputs = RefCell::new(Vec::with_capacity(batch.len()));
        let events = RefCell::new(Vec::new());
        let committed = self.backend.transact(&actors, &|txn| {
            let mut outputs = outputs.borrow_mut();
            let mut events = events.borrow_mut();
            outputs.clear();
            events.clear();
            for request in batch.iter() {
                let output = write::apply(&request.op, txn, &self.rules, &mut events);
                if let Err(Error::Storage(e)) = output {
                    return Err(Error::Storage(e));
                }
                outputs.push(output);
            }
            Ok(())
        });
        let committed = committed.and_then(|()| {
            if self.sync {
                self.backend.flush(true)?;
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .ops
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match committed {
            Ok(()) => {
                self.events.publish(&events.into_inner());
                let outputs = outputs.into_inner();
                let corrupt = outputs
                    .iter()
                    .filter(|o| matches!(o, Err(Error::Corrupt { .. })))
                    .count();
                if corrupt > 0 {
                    self.stats
                        .corrupt
                        .fetch_add(corrupt as u64, Ordering::Relaxed);
                }
                for (request, output) in batch.drain(..).zip(outputs) {
                    // A caller that gave up waiting is no error.
                    let _ = request.reply.send(output);
                }
            }
            Err(e) => {
                log::error!("a batch of {} writes failed: {e}", batch.len());
                let message = e.to_string();
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(Error::Storage(StorageError::new(
                        "committing a batch",
                        message.clone(),
                    ))));
                }
            }
        }
    }
}
