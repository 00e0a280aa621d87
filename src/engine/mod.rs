//! The storage seam: what the session logic asks of a storage engine, in
//! std types only.
//!
//! The session logic (`plan`) reads through a [`View`], decides, and hands
//! the engine a [`Plan`]: the preconditions it relied on, the record and
//! index changes, and the events they cause. An engine commits each plan
//! atomically if its preconditions still hold, or reports
//! [`Commit::Conflict`] and the store plans again. How an engine keeps its
//! indexes, counts sessions, groups commits or makes them durable is its own
//! business, behind [`Engine`]. `docs/architecture.md` lists what a new
//! engine must implement.

pub(crate) mod gate;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod sled;

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::config::{Config, Location};
use crate::error::Result;
use crate::events::{Event, EventHub};
use crate::key::Digest;
use crate::worker::Poison;

/// An expiry entry found due: where it is filed, and the actor and digest
/// of the session it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    pub at: u64,
    pub digest: Digest,
    pub actor_id: String,
}

/// A fact a plan relied on when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// The record of `actor_id`'s session `digest` is at `revision`;
    /// `None`: no record is there.
    Record {
        actor_id: String,
        digest: Digest,
        revision: Option<u64>,
    },
    /// The actor's index lists exactly `sessions`, in any order.
    Actor {
        actor_id: String,
        sessions: Vec<Digest>,
    },
    /// The arrival of intent `id` is (or is not) noted in `actor_id`'s
    /// shard.
    Arrival {
        actor_id: String,
        id: String,
        present: bool,
    },
}

impl Precondition {
    /// The actor whose shard holds what it names (for engines with shards).
    #[cfg(feature = "redis")]
    pub fn actor_id(&self) -> &str {
        match self {
            Precondition::Record { actor_id, .. }
            | Precondition::Actor { actor_id, .. }
            | Precondition::Arrival { actor_id, .. } => actor_id,
        }
    }
}

/// One change to the store. The engine keeps its indexes (a session's
/// expiry entry and actor entry) and its session count in step with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Stores a session that is not stored yet, with its index entries (its
    /// expiry entry at `filed_at`).
    Insert {
        digest: Digest,
        actor_id: String,
        filed_at: u64,
        revision: u64,
        record: Vec<u8>,
    },
    /// Rewrites a stored session's record; its actor stays the same, and its
    /// expiry entry moves from `filed_at_was` to `filed_at` when they differ.
    Update {
        digest: Digest,
        actor_id: String,
        filed_at_was: u64,
        filed_at: u64,
        revision: u64,
        record: Vec<u8>,
    },
    /// Deletes a stored session and its index entries (its expiry entry is
    /// at `filed_at`).
    Delete {
        digest: Digest,
        actor_id: String,
        filed_at: u64,
    },
    /// Drops an expiry entry that no session stands behind (its session is
    /// gone, expires at another time, or does not decode).
    DropExpiry {
        digest: Digest,
        actor_id: String,
        at: u64,
    },
    /// Stores an intent (`intent::Intent`, encoded) in `actor_id`'s shard:
    /// a change across shards under way, which any node rolls forward.
    /// Only engines with more than one shard meet these three.
    PutIntent {
        actor_id: String,
        id: String,
        value: Vec<u8>,
    },
    /// Drops intent `id` from `actor_id`'s shard.
    DropIntent { actor_id: String, id: String },
    /// Notes in `actor_id`'s shard that intent `id` arrived there, kept
    /// `keep_ms` (longer than any intent can wait).
    Arrival {
        actor_id: String,
        id: String,
        keep_ms: u64,
    },
}

impl Plan {
    /// The plan's preconditions alone: what an operation that failed
    /// relied on.
    pub fn preconditions_only(self) -> Plan {
        Plan {
            preconditions: self.preconditions,
            ..Plan::default()
        }
    }
}

impl Change {
    /// The actor whose shard it changes (for engines with shards).
    #[cfg(feature = "redis")]
    pub fn actor_id(&self) -> &str {
        match self {
            Change::Insert { actor_id, .. }
            | Change::Update { actor_id, .. }
            | Change::Delete { actor_id, .. }
            | Change::DropExpiry { actor_id, .. }
            | Change::PutIntent { actor_id, .. }
            | Change::DropIntent { actor_id, .. }
            | Change::Arrival { actor_id, .. } => actor_id,
        }
    }
}

/// What one operation decided: commit all of it or none of it.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub preconditions: Vec<Precondition>,
    pub changes: Vec<Change>,
    /// Published, in order, once the changes are committed.
    pub events: Vec<Event>,
    /// The changes must land together even on an engine that otherwise
    /// commits a plan as ordered single-key writes whose every prefix its
    /// check completes (the sled engine): the plan moves a session to a new
    /// record of the same actor (rotate), and a prefix holding both records
    /// would leave one session under two keys. An engine that commits every
    /// plan whole (Redis: one script) needs not look.
    pub whole: bool,
}

/// What planning reads: the store as the engine sees it at that moment
/// (inside a batch, with the changes of the batch's earlier plans applied).
///
/// Records are named by the actor a key or index names and the digest, as
/// both engines file them (sled: keyed by actor and digest; Redis: in the
/// actor's bucket). A record filed under another actor is not the key's
/// session.
pub(crate) trait View {
    /// The encoded record of `actor_id`'s session `digest`.
    fn record(&self, actor_id: &str, digest: &Digest) -> Result<Option<Vec<u8>>>;
    /// Several records at once, in the order asked: a networked engine reads
    /// them in one round trip. The default reads them one by one.
    fn records(&self, wanted: &[(&str, &Digest)]) -> Result<Vec<Option<Vec<u8>>>> {
        wanted.iter().map(|(a, d)| self.record(a, d)).collect()
    }
    /// The digests the actor's index lists.
    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>>;
    /// Whether `actor_id`'s shard notes the arrival of intent `id`. An
    /// engine with one shard stores no intents.
    fn arrived(&self, _actor_id: &str, _id: &str) -> Result<bool> {
        Ok(false)
    }
}

/// One operation, ready to be planned by an engine. Planning may run more
/// than once (a batch retried, a conflict); only the last run counts.
pub(crate) trait Task: Send + Sync {
    /// Every actor whose sessions the operation may read or change, where
    /// known; an engine whose commits can conflict may order its own plans
    /// per actor with it.
    fn subjects(&self) -> &[String];
    /// Plans the operation against `view`. The operation's own failures (an
    /// invalid key, too much data) are kept by the task and give an empty
    /// plan; an error returned here is a storage failure that fails every
    /// plan committed with this one.
    fn plan(&self, view: &dyn View) -> Result<Plan>;
}

/// How a submitted plan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// Committed (and durable, where the durability mode asks).
    Done,
    /// A precondition no longer held; nothing changed. Only engines with
    /// other writers than this process report it: the sled engine plans and
    /// commits with the turns of the plan's actors held, and every writer of
    /// an actor holds its turn.
    #[cfg_attr(not(test), allow(dead_code))]
    Conflict,
}

/// A submitted task; [`Engine::wait`] gives its outcome: answered on
/// submission (an engine that commits on the caller's thread), or later
/// through the [`Answer`] made with it (the sled write group).
pub(crate) enum Ticket {
    Answered(Result<Commit>),
    Pending(Receiver<Result<Commit>>),
}

/// Where an engine gives a submitted task's outcome. Dropped unanswered (a
/// panic in the engine), its ticket's channel is disconnected.
pub(crate) struct Answer(Sender<Result<Commit>>);

impl Ticket {
    /// A ticket still to be answered, and where to answer it.
    pub fn pending() -> (Answer, Ticket) {
        let (answer, ticket) = crossbeam_channel::bounded(1);
        (Answer(answer), Ticket::Pending(ticket))
    }

    /// A ticket answered already: the task was committed on submission.
    pub fn answered(outcome: Result<Commit>) -> Ticket {
        Ticket::Answered(outcome)
    }

    /// Waits for the outcome; `None` if the engine dropped the task
    /// unanswered.
    pub fn take(self) -> Option<Result<Commit>> {
        match self {
            Ticket::Answered(outcome) => Some(outcome),
            Ticket::Pending(rx) => rx.recv().ok(),
        }
    }
}

impl Answer {
    /// Gives the task's outcome to its ticket.
    pub fn give(&self, outcome: Result<Commit>) {
        // The ticket's channel has room for its one answer; a ticket
        // dropped meanwhile has no one to tell.
        let _ = self.0.send(outcome);
    }
}

/// The two indexes a store keeps beside its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Index {
    /// Expiry time and digest of every session, scanned in time order by the reaper.
    Expiries,
    /// Actor id and digest of every session, listed per actor.
    Actors,
}

/// A stored record as a whole-store scan meets it.
pub(crate) struct Stored<'a> {
    /// Names the record for [`Fix::Quarantine`].
    pub id: &'a [u8],
    /// The session's digest, `None` when the engine's key for it is damaged.
    pub digest: Option<Digest>,
    /// The encoded record.
    pub bytes: &'a [u8],
}

/// A visitor of stored records; returns whether to go on.
pub(crate) type RecordVisit<'a> = dyn FnMut(Stored<'_>) -> Result<bool> + 'a;

/// An index entry as a whole-store scan meets it: `id` names the entry for
/// [`Fix::Drop`], `parsed` is its content, `None` when it is malformed.
pub(crate) type IndexVisit<'a, T> = dyn FnMut(&[u8], Option<T>) -> Result<bool> + 'a;

/// A repair found by the consistency check. `revision` is the revision
/// of the session the fix is about as the check saw it (`None`: no session
/// had that digest): an engine shared with other processes applies the fix
/// only while the session is still so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fix {
    /// Moves the record a scan named `id` (that does not decode) aside.
    Quarantine { id: Vec<u8> },
    AddExpiry {
        at: u64,
        actor_id: String,
        digest: Digest,
        revision: u64,
    },
    AddActor {
        actor_id: String,
        digest: Digest,
        revision: u64,
    },
    /// Removes the index entry a scan named `id`; `revision` is that of
    /// the session the entry names, if one has its digest.
    Drop {
        index: Index,
        id: Vec<u8>,
        revision: Option<u64>,
    },
    /// Sets the stored session count.
    Count(u64),
}

/// The session count as an engine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count {
    pub sessions: u64,
    /// False while the engine does not know the count exactly (sled after
    /// an unclean shutdown, until a whole scan of the records recounts):
    /// `sessions` is then the count stored at the last clean close moved by
    /// the writes since.
    pub exact: bool,
}

/// Counters an engine keeps about its commits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CommitCounts {
    /// Batches committed.
    pub commits: u64,
    /// Plans committed.
    pub plans: u64,
    /// fsyncs made for immediate durability.
    pub syncs: u64,
}

/// What an engine found when it opened.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Opened {
    /// The store was new.
    pub created: bool,
    /// The previous run closed the store cleanly.
    pub clean_shutdown: bool,
    /// Leftovers of a crash that the engine cleared away before opening.
    pub stale_files_removed: usize,
}

/// Held while whole-store work (a check, an export) must see no write; writes
/// wait until it is dropped.
pub(crate) struct WritesHeld(#[allow(dead_code)] pub Box<dyn Send>);

/// A storage engine: what the session logic and the reaper ask of it.
/// Whole-store upkeep (the check, repair, export) is its [`Upkeep`].
pub(crate) trait Engine: Upkeep + Send + Sync {
    /// Calls `read` with the encoded record stored under `digest`, if any;
    /// returns whether there was one. The hot read path: no copy needed.
    fn read_record(
        &self,
        actor_id: &str,
        digest: &Digest,
        read: &mut dyn FnMut(&[u8]),
    ) -> Result<bool>;
    /// The digests the actor's index lists.
    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>>;
    /// Up to `limit` expiry entries at or before `now` that this process is
    /// to reap (an engine shared by several processes divides its shards
    /// between them); an actor's entries earliest first (sled: all entries
    /// earliest first).
    fn due(&self, now: u64, limit: usize) -> Result<Vec<Due>>;
    /// When this process's reaper should look again: the earliest expiry
    /// entry it is to reap.
    fn next_expiry(&self) -> Result<Option<u64>>;
    /// Told after each reaper pass, once its batches are committed (an
    /// engine shared by several processes tells the others what is due
    /// next). Nothing by default.
    fn reaped(&self) -> Result<()> {
        Ok(())
    }
    /// How many sessions are stored.
    fn session_count(&self) -> Result<Count>;
    /// The shard an actor's sessions live in. A plan commits within one
    /// shard: the session logic cuts batches per shard, and moves a session
    /// between shards in steps (`codec::Intent`). One shard by default.
    fn shard(&self, _actor_id: &str) -> u32 {
        0
    }
    /// The intents (changes across shards under way, encoded) this process
    /// is to look at: every one stored, or on an engine shared by several
    /// processes those of its shards it has not yet seen finished. An
    /// engine with one shard stores none.
    fn intents(&self) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }

    /// Hands `task` over to be planned and committed.
    fn submit(&self, task: Arc<dyn Task>) -> Result<Ticket>;
    /// Waits for a submitted task's outcome. After `Commit::Done`, the task
    /// has been planned and its plan's events published through the store's
    /// [`EventHub`], in commit order.
    fn wait(&self, ticket: Ticket) -> Result<Commit>;
    /// Makes every committed change durable.
    fn flush(&self) -> Result<()>;
    /// Checks that the engine can serve: one round trip to its server,
    /// where it has one.
    fn ping(&self) -> Result<()>;
    /// Commits counted since open.
    fn commit_counts(&self) -> CommitCounts;

    /// Commits what is queued, stops the engine's threads and, with `clean`,
    /// records a clean shutdown so that the next open skips the check.
    fn close(&self, clean: bool) -> Result<()>;
}

/// Whole-store upkeep: the scans of the consistency check and export, and
/// repair. Slow paths, kept apart from the session path.
pub(crate) trait Upkeep {
    /// How many records repair has moved aside.
    fn quarantined(&self) -> Result<u64>;
    /// Stops this process's writes until the returned value is dropped.
    fn hold_writes(&self) -> Result<WritesHeld>;
    /// Visits every stored record until `visit` returns false.
    fn scan_records(&self, visit: &mut RecordVisit<'_>) -> Result<()>;
    /// Visits every expiry entry.
    fn scan_expiries(&self, visit: &mut IndexVisit<'_, (u64, Digest)>) -> Result<()>;
    /// Whether the engine keeps an actor index apart from its records, for
    /// the check to hold against them (`scan_actors`). The sled engine keys
    /// records by actor, so an actor's sessions are a prefix of its records
    /// and there is no index to check.
    fn keeps_actor_index(&self) -> bool {
        true
    }
    /// Visits every actor entry.
    fn scan_actors(&self, visit: &mut IndexVisit<'_, (String, Digest)>) -> Result<()>;
    /// Applies what the consistency check found, then makes it durable.
    /// This process's writes are held meanwhile (`hold_writes`); an engine
    /// shared with other processes applies each fix only where what it
    /// repairs is still as the check found it, so a change made since the
    /// check is never overwritten.
    fn repair(&self, fixes: &[Fix]) -> Result<()>;
    /// Of the fixes found by a check that ran while writes went on, those
    /// still needed now, with writes held: each is checked again against
    /// what is stored.
    fn still_needed(&self, fixes: Vec<Fix>) -> Result<Vec<Fix>>;
}

/// Opens the engine `config` names.
pub(crate) fn open(
    config: &Config,
    events: Arc<EventHub>,
    poison: Arc<Poison>,
) -> Result<(Arc<dyn Engine>, Opened)> {
    match &config.location {
        Location::Directory(path) => {
            let (engine, opened) = sled::SledEngine::open(path, config, events, poison)?;
            Ok((Arc::new(engine), opened))
        }
        #[cfg(feature = "redis")]
        Location::Redis(target) => {
            let (engine, opened) = redis::RedisEngine::open(target, config, events, poison)?;
            Ok((Arc::new(engine), opened))
        }
    }
}
