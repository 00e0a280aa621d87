//! What the public API, the reaper and the tools share: the engine, the
//! rules, the event hub and the clock, the write path (plan, commit, plan
//! again on conflict) and the read path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::codec;
use crate::engine::{Commit, Engine, Plan, Task, Ticket, View};
use crate::error::{Error, Reason, Result, StorageError};
use crate::events::EventHub;
use crate::key::{Digest, FullKey};
use crate::plan::Planner;
use crate::rules::{Facts, Rules};
use crate::session::{Record, RecordHead};
use crate::worker::Poison;

/// How many times a change is planned before [`Error::Contention`]. An engine
/// reports a conflict only when another writer changed what the plan read,
/// so each retry means another writer made progress.
pub(crate) const MAX_ATTEMPTS: u32 = 32;

/// The pause before planning a conflicted change again: random below a
/// bound of 200 µs doubled per attempt, at most 5 ms, so that writers
/// racing for the same sessions stop colliding in lock step.
const CONFLICT_BACKOFF: Backoff =
    Backoff::new(Duration::from_micros(200), Duration::from_millis(5)).jittered();

/// Counters of the store's own (engine-neutral) work.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub reaped: AtomicU64,
    pub touches_skipped: AtomicU64,
    /// Operations (reads or writes) that met a record that does not decode.
    pub corrupt: AtomicU64,
}

pub(crate) struct Shared {
    pub engine: Arc<dyn Engine>,
    pub rules: Arc<Rules>,
    pub events: Arc<EventHub>,
    pub poison: Arc<Poison>,
    pub clock: Arc<dyn Clock>,
    pub counters: Counters,
    pub closed: AtomicBool,
    pub reap_batch: usize,
    pub key_length: usize,
    pub node_id: Option<String>,
    pub app_version: Option<String>,
}

/// The actors an operation may read or change the sessions of
/// (`Task::subjects`).
#[derive(Debug, Clone, Default)]
pub(crate) struct About {
    subjects: Vec<String>,
}

impl About {
    pub fn of(actors: Vec<String>) -> Self {
        About { subjects: actors }
    }
}

/// One operation handed to the engine: its planning function, and the
/// reply of its last planning.
struct Job<F, R> {
    about: About,
    rules: Arc<Rules>,
    plan: F,
    reply: Mutex<Option<Result<R>>>,
}

impl<F, R> Job<F, R> {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Result<R>>> {
        // Planning never panics while holding the lock (it only stores).
        self.reply
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<F, R> Task for Job<F, R>
where
    F: Fn(&mut Planner<'_>) -> Result<R> + Send + Sync,
    R: Send,
{
    fn subjects(&self) -> &[String] {
        &self.about.subjects
    }

    fn plan(&self, view: &dyn View) -> Result<Plan> {
        let mut planner = Planner::new(view, &self.rules);
        let outcome = (self.plan)(&mut planner);
        let plan = match &outcome {
            // Fails the batch; the engine reports it to every caller.
            Err(Error::Storage(_)) => return outcome.map(|_| Plan::default()),
            Ok(_) => planner.into_plan(),
            // The operation's own failure: nothing to commit, but the
            // failure rests on what planning read as much as a change
            // would (an engine that planned from what it knew checks it).
            Err(_) => planner.into_plan().preconditions_only(),
        };
        *self.slot() = Some(outcome);
        Ok(plan)
    }
}

/// A change queued with the engine; [`Shared::finish`] gives its reply.
pub(crate) struct Queued<F, R> {
    job: Arc<Job<F, R>>,
    ticket: Ticket,
}

/// Waits for `first`; on a conflict submits again, up to [`MAX_ATTEMPTS`]
/// plannings in all.
fn settle(
    first: Ticket,
    mut wait: impl FnMut(Ticket) -> Result<Commit>,
    mut resubmit: impl FnMut() -> Result<Ticket>,
) -> Result<()> {
    let mut ticket = first;
    let mut attempts = 1;
    loop {
        match wait(ticket)? {
            Commit::Done => return Ok(()),
            Commit::Conflict if attempts < MAX_ATTEMPTS => {
                attempts += 1;
                // Attempt 2 is the first retry.
                std::thread::sleep(CONFLICT_BACKOFF.pause(attempts - 1));
                ticket = resubmit()?;
            }
            Commit::Conflict => return Err(Error::Contention { attempts }),
        }
    }
}

impl Shared {
    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Refuses work once the store is closed or a worker thread died. Reads
    /// check it as well as writes: a clone kept after `close` must not go on
    /// serving a store whose shutdown was already recorded as clean.
    pub fn ensure_open(&self) -> Result<()> {
        if let Some(worker) = self.poison.failed() {
            Err(Error::WorkerFailed { worker })
        } else if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// An engine error, or the poisoned store's own error when a worker's
    /// death is what broke the call.
    fn engine_failed(&self, e: Error) -> Error {
        self.ensure_open().err().unwrap_or(e)
    }

    /// Queues a change: `plan` will be run by the engine (perhaps more than
    /// once) against its view of the store. `about` names the actors it is
    /// about.
    pub fn queue<F, R>(&self, about: About, plan: F) -> Result<Queued<F, R>>
    where
        F: Fn(&mut Planner<'_>) -> Result<R> + Send + Sync + 'static,
        R: Send + 'static,
    {
        self.ensure_open()?;
        let job = Arc::new(Job {
            about,
            rules: self.rules.clone(),
            plan,
            reply: Mutex::new(None),
        });
        let ticket = self
            .engine
            .submit(job.clone())
            .map_err(|e| self.engine_failed(e))?;
        Ok(Queued { job, ticket })
    }

    /// The reply of a queued change once it is committed, planning it again
    /// while the engine reports conflicts.
    pub fn finish<F, R>(&self, queued: Queued<F, R>) -> Result<R>
    where
        F: Fn(&mut Planner<'_>) -> Result<R> + Send + Sync + 'static,
        R: Send + 'static,
    {
        let Queued { job, ticket } = queued;
        settle(
            ticket,
            |t| self.engine.wait(t),
            || self.engine.submit(job.clone()),
        )
        .map_err(|e| self.engine_failed(e))?;
        let reply = job.slot().take().unwrap_or_else(|| {
            Err(Error::Storage(StorageError::new(
                "committing",
                "the engine reported a commit it never planned (a bug in the engine)",
            )))
        });
        self.counted(reply)
    }

    /// `items` split into groups of one shard each (an engine commits a
    /// plan within one shard), each group in the items' order, the groups
    /// in the order their first items came.
    pub fn by_shard<T>(&self, items: Vec<T>, actor_of: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
        let mut groups: Vec<(u32, Vec<T>)> = Vec::new();
        for item in items {
            let shard = self.engine.shard(actor_of(&item));
            match groups.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, group)) => group.push(item),
                None => groups.push((shard, vec![item])),
            }
        }
        groups.into_iter().map(|(_, group)| group).collect()
    }

    /// Plans and commits one change; returns its reply.
    pub fn write<F, R>(&self, about: About, plan: F) -> Result<R>
    where
        F: Fn(&mut Planner<'_>) -> Result<R> + Send + Sync + 'static,
        R: Send + 'static,
    {
        self.finish(self.queue(about, plan)?)
    }

    /// Counts a corrupt record met by an operation.
    pub fn counted<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(Error::Corrupt { .. }) = result {
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Decodes the record stored under `digest` with `decode`, outside any
    /// change (the read path).
    fn read<T>(
        &self,
        actor_id: &str,
        digest: &Digest,
        decode: impl Fn(&Digest, &[u8]) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut decoded = None;
        self.engine.read_record(actor_id, digest, &mut |bytes| {
            decoded = Some(decode(digest, bytes))
        })?;
        self.counted(decoded.transpose())
    }

    pub fn load(&self, actor_id: &str, digest: &Digest) -> Result<Option<Record>> {
        self.read(actor_id, digest, codec::decode_stored)
    }

    pub fn load_head(&self, actor_id: &str, digest: &Digest) -> Result<Option<RecordHead>> {
        self.read(actor_id, digest, codec::decode_stored_head)
    }

    fn has_live(&self, actor_id: &str, now: u64) -> Result<bool> {
        for d in self.engine.actor_sessions(actor_id)? {
            let mut live = false;
            self.engine.read_record(actor_id, &d, &mut |bytes| {
                // A corrupt record is not a live session; `check` reports it.
                live = codec::decode_head(bytes).is_ok_and(|h| h.expires_at > now);
            })?;
            if live {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Checks a key against the stored facts of its session (`Rules::check`).
    pub fn check_key(&self, key: FullKey<'_>, facts: Option<Facts<'_>>, now: u64) -> Result<()> {
        self.rules.check(facts, key.actor_id, now, || {
            self.has_live(key.actor_id, now)
        })
    }

    /// The session a key names, if the key is valid now; no write.
    pub fn read_valid(&self, key: FullKey<'_>, now: u64) -> Result<Record> {
        self.ensure_open()?;
        let record = self.load(key.actor_id, &key.digest())?;
        let facts = record.as_ref().map(|r| Facts {
            actor_id: &r.actor_id,
            expires_at: r.expires_at,
            app_version: r.app_version.as_deref(),
        });
        self.check_key(key, facts, now)?;
        record.ok_or(Error::Invalid(Reason::NoSession))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(outcome: Result<Commit>) -> Ticket {
        Ticket::answered(outcome)
    }

    fn wait(t: Ticket) -> Result<Commit> {
        t.take().unwrap()
    }

    #[test]
    fn a_conflict_is_planned_again_until_it_commits() {
        let mut outcomes = vec![Commit::Done, Commit::Conflict].into_iter().rev();
        let mut resubmitted = 0;
        let settled = settle(ticket(Ok(Commit::Conflict)), wait, || {
            resubmitted += 1;
            Ok(ticket(Ok(outcomes.next().unwrap())))
        });
        assert!(settled.is_ok());
        assert_eq!(resubmitted, 2);
    }

    #[test]
    fn a_change_that_never_settles_is_a_typed_error() {
        let mut resubmitted = 0;
        let settled = settle(ticket(Ok(Commit::Conflict)), wait, || {
            resubmitted += 1;
            Ok(ticket(Ok(Commit::Conflict)))
        });
        assert!(matches!(
            settled,
            Err(Error::Contention { attempts }) if attempts == MAX_ATTEMPTS
        ));
        assert_eq!(resubmitted, MAX_ATTEMPTS - 1);
    }

    #[test]
    fn an_engine_failure_ends_the_attempts() {
        let settled = settle(ticket(Err(Error::Closed)), wait, || unreachable!());
        assert!(matches!(settled, Err(Error::Closed)));
    }
}
