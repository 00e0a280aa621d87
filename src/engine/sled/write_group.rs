//! Group commit without a writer thread: a leader/follower write group in
//! the manner of RocksDB's write thread (`db/write_thread.cc`).
//!
//! A caller queues its task (`submit`) and then waits for it (`wait`). The
//! first waiting caller to find no leader becomes the leader: it takes what
//! is queued (up to `Config::max_batch`, its own task among it), plans and
//! commits it as one sled transaction on its own thread, makes it durable
//! with one flush + fsync in immediate mode, publishes the events in commit
//! order, answers every caller in the group, and steps down. Callers that
//! queued meanwhile wait; the first of them to wake leads the next group.
//!
//! So a lone caller commits on its own thread, with no hand-off to another
//! thread and back (each costs a sleeping thread's wake-up, some 85 µs on a
//! virtual machine), and concurrent callers still share transactions and
//! fsyncs: while one group commits, the next gathers.
//!
//! A waiting caller parks its thread, and only callers with a reason to
//! wake are woken: a leader wakes each caller of its group once its answer
//! is sent, and, stepping down, the caller at the head of the queue, who
//! leads next. (Waking every waiting caller at each step-down, as a shared
//! condition variable did, cost 64 callers some 60 wake-ups per group of 3.)
//! Waking a parked thread costs the same 85 µs, and with two callers taking
//! turns every write would pay it. So one waiting caller at a time polls
//! (yielding its core between polls) for up to [`SPIN`] before it parks: it
//! sees the leader step down at once and leads the next group itself. Only
//! one polls: with two cores, more pollers would take the cores from the
//! leader.
//!
//! One group commits at a time, and its transaction excludes every other
//! write (sled's concurrency-control lock), so a plan's preconditions hold
//! by construction: each task is planned inside the transaction, against
//! the group's earlier changes; nothing is re-checked and nothing conflicts.
//!
//! A use or a data edit needs no group at all when durability is periodic
//! (`commit_alone`): its plan rewrites one record and publishes nothing, so
//! it commits on its caller's thread as one compare-and-swap of the record
//! planning read (a write that came between sends it through a group after
//! all). Concurrent callers then use both cores instead of taking turns
//! through wake-ups.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::trees::Trees;
use crate::engine::gate::{Gate, Hold};
use crate::engine::{Answer, Change, Commit, CommitCounts, Polled, Task, Ticket};
use crate::error::{Error, Result, SharedError, StorageError};
use crate::events::{Event, EventHub};
use crate::worker::Poison;

/// The name a failed write group poisons the store with: the role the
/// committer thread had before there was a write group.
pub(crate) const WRITER: &str = "committer";

/// How long one waiting caller polls before it sleeps: a commit of one
/// operation takes some 30 µs (more with an fsync, where polling longer
/// would only burn a core).
const SPIN: Duration = Duration::from_micros(150);

fn writer_failed() -> Error {
    Error::WorkerFailed { worker: WRITER }
}

struct Request {
    task: Arc<dyn Task>,
    reply: Answer,
    /// The caller's thread, parked in `wait` (which runs on the thread that
    /// submitted).
    waiter: Thread,
}

impl Drop for Request {
    /// Answered, or dropped unanswered (the store is poisoned or closed):
    /// either way its caller has something to see.
    fn drop(&mut self) {
        self.waiter.unpark();
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Request>,
    /// A leader is committing a group.
    leading: bool,
    /// `close` callers asleep until a leader steps down.
    sleeping: usize,
}

/// Counters kept by the leaders.
#[derive(Debug, Default)]
struct CommitStats {
    commits: AtomicU64,
    plans: AtomicU64,
    syncs: AtomicU64,
}

pub(crate) struct WriteGroup {
    trees: Arc<Trees>,
    events: Arc<EventHub>,
    stats: CommitStats,
    /// Immediate durability: flush + fsync after every group.
    sync: bool,
    /// Most tasks in one transaction (`Config::max_batch`).
    max_batch: usize,
    poison: Arc<Poison>,
    /// Held closed by whole-store work (`hold_writes`); a leader commits
    /// inside it.
    gate: Arc<Gate>,
    state: Mutex<State>,
    /// Signalled when a leader steps down, for `close`.
    stepped_down: Condvar,
    /// `State::leading`, readable without the lock, for the poller.
    leading: AtomicBool,
    /// A waiting caller is polling.
    polling: AtomicBool,
    /// Closed: no more tasks are taken. Set under the state's lock, so a
    /// task queued before it is committed by `close`; read without it by
    /// `commit_alone`, which `close` waits for at the gate.
    stopped: AtomicBool,
}

impl WriteGroup {
    pub fn new(
        trees: Arc<Trees>,
        events: Arc<EventHub>,
        sync: bool,
        max_batch: usize,
        poison: Arc<Poison>,
    ) -> Self {
        WriteGroup {
            trees,
            events,
            stats: CommitStats::default(),
            sync,
            max_batch: max_batch.max(1),
            poison,
            gate: Arc::new(Gate::default()),
            state: Mutex::new(State::default()),
            stepped_down: Condvar::new(),
            leading: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it: leaders commit with it released.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `task`; it commits when its caller (or another) leads a group.
    /// The caller waits for it (`wait`) on this same thread.
    pub fn submit(&self, task: Arc<dyn Task>) -> Result<Ticket> {
        if let Some(answer) = self.commit_alone(&*task) {
            return Ok(Ticket::answered(answer));
        }
        let (reply, ticket) = Ticket::pending();
        let mut state = self.lock();
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        state.queue.push_back(Request {
            task,
            reply,
            waiter: std::thread::current(),
        });
        Ok(ticket)
    }

    /// Waits, on the thread that submitted it, for a task's outcome,
    /// leading groups while no one else does.
    pub fn wait(&self, ticket: &Ticket) -> Result<Commit> {
        loop {
            match ticket.poll() {
                Polled::Ready(outcome) => return outcome,
                // Its group failed in a panic: the store is poisoned.
                Polled::Abandoned => return Err(writer_failed()),
                Polled::Pending => {}
            }
            // A task not answered is queued or in the leader's group.
            let state = self.lock();
            if !state.leading && !state.queue.is_empty() {
                drop(self.lead(state));
                continue;
            }
            drop(state);
            if !self.polling.swap(true, Ordering::Acquire) {
                self.poll(ticket);
                self.polling.store(false, Ordering::Release);
            } else {
                // Unparked when the task is answered or heads the queue
                // as a leader steps down; an unpark that came before the
                // park (or a spurious wake-up) only costs a turn of the loop.
                std::thread::park();
            }
        }
    }

    /// Commits `task` on the caller's thread, outside any group, when it
    /// can: durability is periodic (with an fsync per write, sharing it in a
    /// group pays more), and its plan rewrites its one record where it is
    /// filed and publishes no events (a group publishes in commit order).
    /// The record is swapped only if it still holds what planning read.
    /// `None`: the task goes through a group.
    fn commit_alone(&self, task: &dyn Task) -> Option<Result<Commit>> {
        if self.sync || !task.in_place() {
            return None;
        }
        let _inside = self.gate.enter();
        // `close` stops writes before it waits for those inside the gate.
        if self.stopped.load(Ordering::Acquire) {
            return Some(Err(Error::Closed));
        }
        if self.poison.failed().is_some() {
            return Some(Err(writer_failed()));
        }
        let view = self.trees.view();
        let plan = match panic::catch_unwind(AssertUnwindSafe(|| task.plan(&view))) {
            Ok(Ok(plan)) => plan,
            Ok(Err(e)) => return Some(Err(e)),
            Err(_) => {
                log::error!("planning a write panicked; the store is poisoned");
                self.poison.set(WRITER);
                return Some(Err(writer_failed()));
            }
        };
        if !plan.events.is_empty() {
            return None;
        }
        let committed = match plan.changes.as_slice() {
            // An operation that failed, or a use that did not move the expiry.
            [] => Ok(Commit::Done),
            [change] => match in_place(change) {
                Some((digest, record)) => {
                    let was = view.read(digest)?;
                    match self.trees.rewrite_if(digest, &was, record) {
                        Ok(true) => Ok(Commit::Done),
                        // Written meanwhile: a group plans it again, and
                        // commits it whatever else writes (its transaction
                        // excludes them), so a hot session's callers never
                        // see contention.
                        Ok(false) => return None,
                        Err(e) => Err(e),
                    }
                }
                None => return None,
            },
            _ => return None,
        };
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.plans.fetch_add(1, Ordering::Relaxed);
        Some(committed)
    }

    /// Sleeps until a leader steps down (`close`).
    fn sleep<'a>(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.sleeping += 1;
        let mut state = self
            .stepped_down
            .wait(state)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.sleeping -= 1;
        state
    }

    /// Polls, for up to [`SPIN`], until the task is answered or no group is
    /// being led.
    fn poll(&self, ticket: &Ticket) {
        let started = Instant::now();
        while started.elapsed() < SPIN {
            if ticket.is_answered() || !self.leading.load(Ordering::Acquire) {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Commits the queue's head as one group, with the state unlocked, and
    /// steps down.
    fn lead<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.leading = true;
        self.leading.store(true, Ordering::Release);
        let take = state.queue.len().min(self.max_batch);
        let mut group: Vec<Request> = state.queue.drain(..take).collect();
        drop(state);
        {
            let _inside = self.gate.enter();
            if self.poison.failed().is_some() {
                // Dropping the group answers its callers: the store is poisoned.
                group.clear();
            } else if panic::catch_unwind(AssertUnwindSafe(|| self.commit(&mut group))).is_err() {
                // A bug in planning. The store is poisoned before the group's
                // callers hear of it (their answers are dropped below).
                log::error!("a write group panicked; the store is poisoned");
                self.poison.set(WRITER);
                group.clear();
            }
        }
        let mut state = self.lock();
        state.leading = false;
        self.leading.store(false, Ordering::Release);
        if self.poison.failed().is_some() {
            // Dropping them wakes their callers, who find the store poisoned.
            state.queue.clear();
        }
        if let Some(next) = state.queue.front() {
            // Leads the next group, unless another caller takes the lead first.
            next.waiter.unpark();
        }
        if state.sleeping > 0 {
            self.stepped_down.notify_all();
        }
        state
    }

    /// Plans and commits a group. Plans that only rewrite records where they
    /// are (a use that slides the expiry later, a data change: one key, the
    /// expiry entry left where it is filed) are applied one by one without a
    /// transaction, as long as the group starts with them: a sled
    /// transaction excludes sled's periodic flusher and rolls the log buffer
    /// twice, a single insert does neither, and one key needs no transaction
    /// to be atomic. The rest of the group commits in one transaction, whose
    /// plans see the rewrites before them.
    fn commit(&self, group: &mut Vec<Request>) {
        let mut events = Vec::new();
        let (in_place, failed) = self.rewrite_in_place(group, &mut events);
        let mut committed = Ok(in_place);
        if let Some(e) = failed {
            committed = Err(e);
        } else if in_place < group.len() {
            committed = self
                .transact(&group[in_place..], &mut events)
                .map(|()| group.len());
        }
        // How many of the group are committed; the others failed with `e`.
        let (done, failure) = match committed {
            Ok(n) => (n, None),
            Err(e) => (in_place, Some(Arc::new(e))),
        };
        let (done, failure) = match (self.sync && done > 0, failure) {
            (true, failure) => match self.trees.flush(true) {
                Ok(()) => {
                    self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                    (done, failure)
                }
                // Nothing of the group is known to be on disk.
                Err(e) => (0, Some(Arc::new(e))),
            },
            (false, failure) => (done, failure),
        };
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .plans
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        if done > 0 {
            self.events.publish(&events);
        }
        if let Some(e) = &failure {
            log::error!(
                "{} of a group of {} writes failed: {e}",
                group.len() - done,
                group.len()
            );
        }
        for (n, request) in group.drain(..).enumerate() {
            let answer = match &failure {
                Some(cause) if n >= done => {
                    // Every caller gets the failure with its source chain.
                    Err(Error::Storage(StorageError::new(
                        "committing a batch",
                        SharedError::new(cause.clone()),
                    )))
                }
                _ => Ok(Commit::Done),
            };
            // A caller that gave up waiting is no error.
            request.reply.give(answer);
        }
    }

    /// Applies the group's leading plans that only rewrite records in place;
    /// returns how many, and the error that stopped it, if one did.
    fn rewrite_in_place(
        &self,
        group: &[Request],
        events: &mut Vec<Event>,
    ) -> (usize, Option<Error>) {
        let view = self.trees.view();
        for (n, request) in group.iter().enumerate() {
            if !request.task.in_place() {
                return (n, None);
            }
            let plan = match request.task.plan(&view) {
                Ok(plan) => plan,
                Err(e) => return (n, Some(e)),
            };
            let rewrite = match plan.changes.as_slice() {
                [] => None,
                [change] => match in_place(change) {
                    Some(rewrite) => Some(rewrite),
                    // Planned again inside the transaction.
                    None => return (n, None),
                },
                _ => return (n, None),
            };
            if let Some((digest, record)) = rewrite {
                let Some(was) = view.read(digest) else {
                    return (n, None);
                };
                match self.trees.rewrite_if(digest, &was, record) {
                    Ok(true) => {}
                    // Changed by a write outside the group since it was read
                    // (`commit_alone`): planned again inside the transaction.
                    Ok(false) => return (n, None),
                    Err(e) => return (n, Some(e)),
                }
            }
            events.extend(plan.events);
        }
        (group.len(), None)
    }

    /// Plans and commits `group` in one transaction.
    fn transact(&self, group: &[Request], events: &mut Vec<Event>) -> Result<()> {
        let planned = RefCell::new(Vec::new());
        self.trees.transact(&|txn| {
            let mut planned = planned.borrow_mut();
            planned.clear();
            for request in group {
                let plan = request.task.plan(txn)?;
                for change in &plan.changes {
                    txn.apply(change)?;
                }
                planned.extend(plan.events);
            }
            Ok(())
        })?;
        events.append(&mut planned.into_inner());
        Ok(())
    }

    /// Stops writes until the returned hold is dropped.
    pub fn hold(&self) -> Hold {
        self.gate.hold()
    }

    /// Commits what is queued, then takes no more tasks and waits for the
    /// writes committing outside a group; idempotent.
    pub fn close(&self) {
        let mut state = self.lock();
        loop {
            if state.leading {
                state = self.sleep(state);
            } else if !state.queue.is_empty() {
                state = self.lead(state);
            } else {
                self.stopped.store(true, Ordering::Release);
                break;
            }
        }
        drop(state);
        drop(self.gate.hold());
    }

    pub fn counts(&self) -> CommitCounts {
        CommitCounts {
            commits: self.stats.commits.load(Ordering::Relaxed),
            plans: self.stats.plans.load(Ordering::Relaxed),
            syncs: self.stats.syncs.load(Ordering::Relaxed),
        }
    }
}

/// The record a change rewrites where it is filed (its expiry entry left
/// where it is: one key written), if that is all it does.
fn in_place(change: &Change) -> Option<(&crate::key::Digest, &[u8])> {
    match change {
        Change::Update {
            digest,
            filed_at_was,
            filed_at,
            record,
            ..
        } if filed_at_was == filed_at => Some((digest, record)),
        _ => None,
    }
}
