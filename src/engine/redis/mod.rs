//! The shared engine: Redis 7.x or Valkey 8.x/9.x, for several game-server
//! nodes sharing one store: one server, a Sentinel-managed primary, or a
//! Redis Cluster.
//!
//! The store's keys are spread over buckets, each under one hash tag, so
//! each bucket is one hash slot (`keys`); an actor's sessions live in one
//! bucket. Each plan names the sessions of one bucket and commits as one
//! Lua script on the primary serving it (`commit`): preconditions checked,
//! then records, indexes and events changed together, or nothing. Planning
//! reads on the caller's side (no lock is held across nodes), from what the
//! node knows where it can, so that a write is one round trip; the store
//! plans again on a conflict. Sessions carry no Redis TTL: expiry is
//! sessiondb's.
//!
//! - `conn`: pools per server, the topology (which primary serves which
//!   slot), retries until the deadline while servers fail over;
//! - `open`: the servers' settings and the store's meta;
//! - `commit`: a plan as a script program, with its durability wait;
//! - `events`: the streams and shard channels every node follows;
//! - `known`: what this node last read or wrote, which plans start from;
//! - `reaping`: which node reaps which bucket, and when;
//! - `upkeep`: scans and guarded repair;
//! - `keys`: the key layout and the buckets' hash tags.

mod commit;
mod conn;
mod events;
mod keys;
mod known;
mod open;
mod reaping;
mod upkeep;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use self::commit::Committer;
use self::conn::Nodes;
use self::events::{Progress, Reader};
use self::keys::{parse_expiry_member, Keys};
use self::known::{Actor, Knowledge};
use self::reaping::Schedule;
use crate::config::{Config, RedisTarget};
use crate::engine::gate::{Gate, Turns};
use crate::engine::{
    Change, Commit, CommitCounts, Count, Due, Engine, Opened, Plan, Precondition, Task, Ticket,
    View,
};
use crate::error::{Error, Result};
use crate::events::EventHub;
use crate::key::{random_bytes, Digest};
use crate::worker::Poison;

pub(crate) struct RedisEngine {
    nodes: Arc<Nodes>,
    keys: Keys,
    known: Knowledge,
    committer: Committer,
    repair_script: redis::Script,
    reader: Mutex<Option<Reader>>,
    progress: Arc<Progress>,
    events: Arc<EventHub>,
    gate: Arc<Gate>,
    turns: Turns,
    /// Which buckets this node reaps, and when (shared with the reader).
    schedule: Arc<Schedule>,
    /// The buckets the reaper's current pass looked at.
    scanned: Mutex<BTreeSet<u32>>,
    commits: AtomicU64,
    plans: AtomicU64,
    syncs: AtomicU64,
}

impl RedisEngine {
    pub fn open(
        target: &RedisTarget,
        config: &Config,
        events: Arc<EventHub>,
        poison: Arc<Poison>,
    ) -> Result<(RedisEngine, Opened)> {
        let settings = &config.redis;
        let nodes = Arc::new(Nodes::open(target, settings)?);
        let sync = open::check_servers(&nodes, config.durability, settings.min_replicas)?;
        let meta = open::meta(&nodes, &settings.prefix, settings.buckets)?;
        let keys = Keys::new(&settings.prefix, meta.buckets, meta.tags);
        let origin = crate::key::hex(&random_bytes::<8>()?);
        let progress = Arc::new(Progress::new(origin.clone(), settings.timeout));
        // Another node's overdue bucket is asked after once the reap
        // interval has passed (at most a second): an expiry is announced
        // within the interval plus a second of its time, a node's death
        // included.
        let grace = config.reap_interval.min(std::time::Duration::from_secs(1));
        let schedule = Arc::new(Schedule::new(
            origin.clone(),
            meta.buckets,
            crate::config::millis(grace).max(1),
        ));
        let reader = Reader::start(
            nodes.clone(),
            keys.clone(),
            events.clone(),
            progress.clone(),
            schedule.clone(),
            poison,
        )?;
        let engine = RedisEngine {
            committer: Committer::new(
                sync,
                settings.min_replicas,
                settings.event_retention,
                origin,
                settings.timeout,
            ),
            repair_script: redis::Script::new(include_str!("repair.lua")),
            known: Knowledge::new(config.cache_capacity),
            reader: Mutex::new(Some(reader)),
            progress,
            events,
            nodes,
            keys,
            schedule,
            scanned: Mutex::new(BTreeSet::new()),
            gate: Arc::new(Gate::default()),
            turns: Turns::default(),
            commits: AtomicU64::new(0),
            plans: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        };
        let all: Vec<u32> = (0..meta.buckets).collect();
        reaping::read_earliest(&engine.nodes, &engine.keys, &engine.schedule, &all)?;
        reaping::join(&engine.nodes, &engine.keys, &engine.schedule)?;
        // Every change is one atomic script, so a node's crash never leaves
        // the store inconsistent: there is no unclean shutdown to recover.
        // (A reassign across buckets cut short is an intent, which the
        // reapers roll forward.)
        let opened = Opened {
            created: meta.created,
            clean_shutdown: true,
            stale_files_removed: 0,
        };
        Ok((engine, opened))
    }

    /// Every bucket, with its slot.
    fn all_buckets(&self) -> Vec<(u32, u16)> {
        (0..self.keys.buckets())
            .map(|b| (b, self.keys.slot(b)))
            .collect()
    }

    /// The bucket's slot of `actor_id`.
    fn slot_of(&self, actor_id: &str) -> u16 {
        self.keys.slot(self.keys.bucket(actor_id))
    }

    /// Publishes a committed change's own events, once everything before
    /// them in their stream is published, so that per-actor order holds
    /// across nodes. Waits at most the timeout; the reader publishes them
    /// after that.
    fn publish_own(&self, plan_events: &[crate::events::Event], appended: events::Appended) {
        let deadline = Instant::now() + self.progress.patience();
        if !self
            .progress
            .publish_own(&self.events, appended, plan_events, deadline)
        {
            log::warn!("the events of a committed change are late; they will follow");
        }
    }

    /// Updates what this node knows after `plan` committed: the records it
    /// wrote, and each actor's list it relied on, changed as the plan
    /// changed it (the script checked that list, so it is exact now).
    fn learn(&self, plan: &Plan) {
        // A plan stays in one bucket.
        let mut bucket = None;
        for p in &plan.preconditions {
            if let Precondition::Actor { actor_id, sessions } = p {
                let mut now = sessions.clone();
                for c in &plan.changes {
                    match c {
                        Change::Insert {
                            digest,
                            actor_id: a,
                            ..
                        } if a == actor_id => now.push(*digest),
                        Change::Delete {
                            digest,
                            actor_id: a,
                            ..
                        } if a == actor_id => now.retain(|d| d != digest),
                        _ => {}
                    }
                }
                self.known.set_actor(actor_id, now);
            }
        }
        for c in &plan.changes {
            match c {
                Change::Insert {
                    digest,
                    actor_id,
                    filed_at,
                    revision,
                    record,
                }
                | Change::Update {
                    digest,
                    actor_id,
                    filed_at,
                    revision,
                    record,
                    ..
                } => {
                    self.known.wrote(*digest, *revision, record);
                    // The reaper of this node hears of its own entries at
                    // once (the other nodes' by their events and hints).
                    let b = *bucket.get_or_insert_with(|| self.keys.bucket(actor_id));
                    self.schedule.hint(b, reaping::Hint::Filed(*filed_at));
                }
                Change::Delete { digest, .. } => self.known.forget_record(digest),
                _ => {}
            }
        }
    }

    /// Forgets what `plan` relied on: it met a conflict, so some of it is
    /// stale, and the plan made again reads it afresh.
    fn forget(&self, plan: &Plan) {
        for p in &plan.preconditions {
            match p {
                Precondition::Record { digest, .. } => self.known.forget_record(digest),
                Precondition::Actor { actor_id, .. } => self.known.forget_actor(actor_id),
                Precondition::Arrival { .. } => {}
            }
        }
    }

    /// Makes every change committed on every primary durable (see
    /// `Committer::flush_on`).
    fn flush_all(&self) -> Result<()> {
        if self.committer.sync == commit::Sync::Server {
            return Ok(());
        }
        for b in self.bucket_per_primary() {
            let probe = self.keys.alive(b);
            self.nodes.run(
                self.keys.slot(b),
                "waiting for the server's fsync",
                |pool, con| self.committer.flush_on(pool, con, &probe),
            )??;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One bucket served by each primary that serves any.
    fn bucket_per_primary(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for p in self.nodes.primaries() {
            if let Some(b) = (0..self.keys.buckets()).find(|&b| p.serves(self.keys.slot(b))) {
                out.push(b);
            }
        }
        if out.is_empty() {
            out.push(0);
        }
        out
    }
}

/// Planning's view of the store: what this node knows, else plain reads
/// (one round trip, a batch of records in one), which it learns. An actor
/// it knows nothing of is taken to have no session. Notes whether any
/// answer came from knowledge rather than the server: such a plan's
/// preconditions must be checked even when it changes nothing.
struct RedisView<'a> {
    engine: &'a RedisEngine,
    from_knowledge: Cell<bool>,
}

impl<'a> RedisView<'a> {
    fn new(engine: &'a RedisEngine) -> Self {
        RedisView {
            engine,
            from_knowledge: Cell::new(false),
        }
    }
}

impl RedisEngine {
    /// Reads records of one bucket (`HMGET r v` each, pipelined), learning
    /// each found.
    fn read_records(&self, wanted: &[(&str, &Digest)]) -> Result<Vec<Option<Vec<u8>>>> {
        let Some((first, _)) = wanted.first() else {
            return Ok(Vec::new());
        };
        // The hot read path: one bucket (its SHA-256 once), the keys made
        // once whatever the retries, one command for one record.
        let bucket = self.keys.bucket(first);
        let keys: Vec<String> = wanted
            .iter()
            .map(|(_, digest)| self.keys.session_in(bucket, digest))
            .collect();
        let replies: Vec<(Option<Vec<u8>>, Option<u64>)> =
            self.nodes
                .run(self.keys.slot(bucket), "reading sessions", |_, con| {
                    if let [key] = keys.as_slice() {
                        let one = redis::cmd("HMGET").arg(key).arg("r").arg("v").query(con)?;
                        return Ok(vec![one]);
                    }
                    let mut pipe = redis::pipe();
                    for key in &keys {
                        pipe.cmd("HMGET").arg(key).arg("r").arg("v");
                    }
                    pipe.query(con)
                })?;
        Ok(wanted
            .iter()
            .zip(replies)
            .map(|((_, digest), (bytes, revision))| {
                if let (Some(bytes), Some(revision)) = (&bytes, revision) {
                    self.known.saw(**digest, revision, bytes);
                }
                bytes
            })
            .collect())
    }
}

impl View for RedisView<'_> {
    fn record(&self, actor_id: &str, digest: &Digest) -> Result<Option<Vec<u8>>> {
        Ok(self.records(&[(actor_id, digest)])?.pop().flatten())
    }

    fn records(&self, wanted: &[(&str, &Digest)]) -> Result<Vec<Option<Vec<u8>>>> {
        let e = self.engine;
        let mut out: Vec<Option<Option<Vec<u8>>>> = wanted
            .iter()
            .map(|(_, d)| e.known.record(d).map(|k| Some(k.bytes.to_vec())))
            .collect();
        if out.iter().any(Option::is_some) {
            self.from_knowledge.set(true);
        }
        // What is not known is read, bucket by bucket (a plan reads within
        // one; an actors' addresses may read several).
        let mut missing: Vec<usize> = (0..wanted.len()).filter(|&i| out[i].is_none()).collect();
        while let Some(&first) = missing.first() {
            let bucket = e.keys.bucket(wanted[first].0);
            let (here, rest): (Vec<usize>, Vec<usize>) = missing
                .into_iter()
                .partition(|&i| e.keys.bucket(wanted[i].0) == bucket);
            let asked: Vec<(&str, &Digest)> = here.iter().map(|&i| wanted[i]).collect();
            for (i, read) in here.into_iter().zip(e.read_records(&asked)?) {
                out[i] = Some(read);
            }
            missing = rest;
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        // Known, or taken to be none, unless what the node knew proved
        // wrong: the plan's precondition on the list makes the script
        // check it.
        match self.engine.known.actor(actor_id) {
            Some(Actor::Stale) => self.engine.actor_sessions(actor_id),
            Some(Actor::Sessions(list)) => {
                self.from_knowledge.set(true);
                Ok(list.to_vec())
            }
            None => {
                self.from_knowledge.set(true);
                Ok(Vec::new())
            }
        }
    }

    fn arrived(&self, actor_id: &str, id: &str) -> Result<bool> {
        let e = self.engine;
        let key = e.keys.arrival(e.keys.bucket(actor_id), id);
        e.nodes
            .run(e.slot_of(actor_id), "reading an arrival note", |_, con| {
                redis::cmd("EXISTS").arg(&key).query(con)
            })
    }
}

impl Engine for RedisEngine {
    fn read_record(
        &self,
        actor_id: &str,
        digest: &Digest,
        read: &mut dyn FnMut(&[u8]),
    ) -> Result<bool> {
        // The read path: always the server, never this node's knowledge
        // (which it teaches).
        match self.read_records(&[(actor_id, digest)])?.pop().flatten() {
            Some(bytes) => {
                read(&bytes);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        let key = self.keys.actor(actor_id);
        let members: Vec<String> = self.nodes.run(
            self.slot_of(actor_id),
            "listing an actor's sessions",
            |_, con| redis::cmd("SMEMBERS").arg(&key).query(con),
        )?;
        let sessions: Vec<Digest> = members.iter().filter_map(|m| Digest::from_hex(m)).collect();
        self.known.set_actor(actor_id, sessions.clone());
        Ok(sessions)
    }

    /// The due entries of the buckets this node reaps (see `reaping`):
    /// its own that are due, and another node's overdue ones when that node
    /// stopped listening (or, listening, let them wait ten graces).
    fn due(&self, now: u64, limit: usize) -> Result<Vec<Due>> {
        let plan = self.schedule.due(now);
        let mut buckets: BTreeSet<u32> = plan.owned.into_iter().collect();
        if !plan.overdue.is_empty() {
            let owners: BTreeSet<String> = plan.overdue.iter().map(|(_, o)| o.clone()).collect();
            let owners: Vec<String> = owners.into_iter().collect();
            let dead = reaping::gone(&self.nodes, &self.keys, &owners)?;
            reaping::strike(&self.nodes, &self.keys, &self.schedule, &dead)?;
            let me = self.schedule.me();
            for (b, _) in &plan.overdue {
                if self.schedule.owner(*b) == me || self.schedule.long_overdue(*b, now) {
                    buckets.insert(*b);
                }
            }
        }
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        self.scanned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(buckets.iter().copied());
        // A share of what is left of the limit per bucket, so that a scan
        // returns no more than is asked for; the buckets that filled their
        // share are asked again for the rest, so that fewer than `limit`
        // entries means nothing more is due.
        let mut due = Vec::new();
        let mut open: Vec<(u32, usize)> = buckets.iter().map(|&b| (b, 0)).collect();
        while !open.is_empty() && due.len() < limit {
            let share = (limit - due.len()).div_ceil(open.len()).max(1);
            let asked: Vec<(u32, u16)> =
                open.iter().map(|&(b, _)| (b, self.keys.slot(b))).collect();
            let offsets: std::collections::HashMap<u32, usize> = open.iter().copied().collect();
            let replies = self
                .nodes
                .across(&asked, 1, "scanning expiries", |pipe, b| {
                    pipe.cmd("ZRANGE")
                        .arg(self.keys.expiries(b))
                        .arg("-inf")
                        .arg(now)
                        .arg("BYSCORE")
                        .arg("LIMIT")
                        .arg(offsets.get(&b).copied().unwrap_or(0))
                        .arg(share)
                        .arg("WITHSCORES");
                })?;
            open.clear();
            for (b, reply) in replies {
                let entries: Vec<(Vec<u8>, f64)> = reply
                    .into_iter()
                    .next()
                    .and_then(|v| redis::from_redis_value(v).ok())
                    .unwrap_or_default();
                if entries.len() == share {
                    open.push((b, offsets.get(&b).copied().unwrap_or(0) + share));
                }
                due.extend(entries.into_iter().filter_map(|(member, score)| {
                    let (digest, actor_id) = parse_expiry_member(&member)?;
                    Some(Due {
                        at: score as u64,
                        digest,
                        actor_id,
                    })
                }));
            }
        }
        due.truncate(limit);
        Ok(due)
    }

    /// From what the node knows: no command.
    fn next_expiry(&self) -> Result<Option<u64>> {
        Ok(self.schedule.next_wake())
    }

    /// Tells the other nodes what is due next in each bucket the pass
    /// looked at.
    fn reaped(&self) -> Result<()> {
        let scanned: Vec<u32> = std::mem::take(
            &mut *self
                .scanned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        if scanned.is_empty() {
            return Ok(());
        }
        reaping::announce_next(&self.nodes, &self.keys, &self.schedule, &scanned)
    }

    fn session_count(&self) -> Result<Count> {
        // Every session has exactly one expiry entry (each script keeps
        // them together), so the expiry indexes count the sessions.
        let counts = self.nodes.across(
            &self.all_buckets(),
            1,
            "reading the session count",
            |pipe, b| {
                pipe.cmd("ZCARD").arg(self.keys.expiries(b));
            },
        )?;
        let sessions = counts
            .into_iter()
            .flat_map(|(_, v)| v)
            .filter_map(|v| redis::from_redis_value::<Option<i64>>(v).ok().flatten())
            .map(|c| u64::try_from(c).unwrap_or(0))
            .sum();
        Ok(Count {
            sessions,
            exact: true,
        })
    }

    fn shard(&self, actor_id: &str) -> u32 {
        self.keys.bucket(actor_id)
    }

    /// The intents of this node's buckets that were announced and not
    /// yet dropped (every one of its buckets' at open and after a lost
    /// subscription).
    fn intents(&self) -> Result<Vec<Vec<u8>>> {
        let buckets = self.schedule.intent_buckets();
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let asked: Vec<(u32, u16)> = buckets.iter().map(|&b| (b, self.keys.slot(b))).collect();
        let replies = self.nodes.across(&asked, 1, "reading intents", |pipe, b| {
            pipe.cmd("HVALS").arg(self.keys.intents(b));
        })?;
        Ok(replies
            .into_iter()
            .flat_map(|(_, v)| v)
            .filter_map(|v| redis::from_redis_value::<Vec<Vec<u8>>>(v).ok())
            .flatten()
            .collect())
    }

    fn submit(&self, task: Arc<dyn Task>) -> Result<Ticket> {
        let outcome = {
            let _inside = self.gate.enter();
            let committed = {
                // This node's plans for the same actors take turns:
                // optimistic commits of many local callers on one hot actor
                // would otherwise keep conflicting with each other, and what
                // the node knows of them changes in commit order. The turn
                // ends with the commit: publishing waits for other nodes'
                // events, and keeps order by the streams, not by it.
                let _turn = self.turns.take(task.subjects());
                let view = RedisView::new(self);
                task.plan(&view).and_then(|plan| {
                    let verify = view.from_knowledge.get();
                    let committed = self
                        .committer
                        .commit(&self.nodes, &self.keys, &plan, verify);
                    match &committed {
                        Ok(c) if c.outcome == Commit::Done => self.learn(&plan),
                        // A conflict, or an answer lost: what the plan
                        // relied on is read afresh next time.
                        _ => self.forget(&plan),
                    }
                    Ok((plan, committed?))
                })
            };
            committed.map(|(plan, committed)| {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.plans.fetch_add(1, Ordering::Relaxed);
                if self.committer.sync != commit::Sync::Server && committed.outcome == Commit::Done
                {
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(appended) = committed.appended {
                    self.publish_own(&plan.events, appended);
                }
                committed.outcome
            })
        };
        Ok(Ticket::answered(outcome))
    }

    fn wait(&self, ticket: Ticket) -> Result<Commit> {
        ticket
            .take()
            .unwrap_or(Err(Error::WorkerFailed { worker: "events" }))
    }

    fn flush(&self) -> Result<()> {
        self.flush_all()
    }

    /// Whether every primary takes writes now: one write of a probe key on
    /// each (a replica, a server still loading, a cluster without a quorum
    /// or out of memory fail it), unless it has fewer replicas attached than
    /// `min_replicas` (then the store refuses writes).
    fn ping(&self) -> Result<()> {
        for b in self.bucket_per_primary() {
            let probe = self.keys.alive(b);
            let origin = self.progress.origin();
            self.nodes
                .run(self.keys.slot(b), "writing to the server", |pool, con| {
                    if let Err(refused) = self.committer.admit(pool, con)? {
                        return Ok(Err(refused));
                    }
                    redis::cmd("SET")
                        .arg(&probe)
                        .arg(origin)
                        .arg("PX")
                        .arg(10_000)
                        .query::<()>(con)
                        .map(Ok)
                })??;
        }
        Ok(())
    }

    fn commit_counts(&self) -> CommitCounts {
        CommitCounts {
            commits: self.commits.load(Ordering::Relaxed),
            plans: self.plans.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }

    fn close(&self, _clean: bool) -> Result<()> {
        // No shutdown marker: a node's crash cannot leave the store
        // half-changed. Leave the nodes (the others take this one's buckets
        // at once; a node that cannot say so is found gone when its buckets
        // fall due), and stop following the streams.
        if let Err(e) = reaping::leave(&self.nodes, &self.keys, &self.schedule) {
            log::warn!("closing: could not tell the other nodes: {e}");
        }
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match reader.map(|mut r| r.stop()) {
            Some(false) => Err(Error::WorkerFailed { worker: "events" }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "../../../tests/common/redis.rs"]
mod test_server;

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::test_server::{find, RedisServer};
    use super::*;
    use crate::codec;
    use crate::engine::{Change, Fix, Index, Plan};
    use crate::events::Event;
    use crate::key::FullKey;
    use crate::session::{Data, Record};
    use crate::{Clock, Config, ManualClock, SessionStore};

    /// The digest and stored revision of the session a full key names.
    fn stored(store: &SessionStore, key: &str) -> (Digest, u64) {
        let digest = FullKey::parse(key).unwrap().digest();
        let mut revision = None;
        let actor = key.rsplit_once(':').unwrap().0;
        store
            .shared()
            .engine
            .read_record(actor, &digest, &mut |b| {
                revision = Some(codec::decode(b).unwrap().revision)
            })
            .unwrap();
        (digest, revision.expect("a stored session"))
    }

    /// A check runs beside other nodes' writes: a fix it found must not
    /// undo a change made after it looked.
    #[test]
    fn repair_leaves_alone_what_changed_since_the_check() {
        let Some(binary) = find("redis-server", "repair_leaves_alone_what_changed") else {
            return;
        };
        let server = RedisServer::start(&binary, &[]);
        // A clock of the test's own: the extend below must move the expiry
        // (and so the revision) even when it runs within the register's
        // millisecond.
        let clock = ManualClock::new(crate::clock::SystemClock.now_ms());
        let store = SessionStore::open(
            Config::redis(&server.url)
                .reaper_thread(false)
                .clock(Arc::new(clock.clone())),
        )
        .unwrap();
        let engine = store.shared().engine.clone();
        let gone = store.register("p1", "en", Data::new()).unwrap();
        let gone_key = gone.key().unwrap().to_owned();
        let (gone_digest, gone_revision) = stored(&store, &gone_key);
        let kept = store.register("p2", "en", Data::new()).unwrap();
        let (kept_digest, kept_revision) = stored(&store, kept.key().unwrap());
        // What a check saw: p1's session without its entries, p2's expiry
        // entry pointing at no session. Then p1 logs out, and p2 is used.
        store.logout(&gone_key).unwrap();
        clock.advance(Duration::from_secs(1));
        store.extend(kept.key().unwrap()).unwrap();
        let mut expiry_entry = None;
        engine
            .scan_expiries(&mut |id, entry| {
                if entry.is_some_and(|(_, d)| d == kept_digest) {
                    expiry_entry = Some(id.to_vec());
                }
                Ok(true)
            })
            .unwrap();
        let expiry_entry = expiry_entry.expect("p2's expiry entry");
        engine
            .repair(&[
                Fix::AddActor {
                    actor_id: "p1".into(),
                    digest: gone_digest,
                    revision: gone_revision,
                },
                Fix::AddExpiry {
                    at: 1,
                    actor_id: "p1".into(),
                    digest: gone_digest,
                    revision: gone_revision,
                },
                Fix::Drop {
                    index: Index::Expiries,
                    id: expiry_entry,
                    revision: Some(kept_revision),
                },
            ])
            .unwrap();
        assert!(engine.actor_sessions("p1").unwrap().is_empty());
        assert_eq!(engine.next_expiry().unwrap().map(|at| at > 1), Some(true));
        store.is_valid(kept.key().unwrap()).unwrap();
        assert!(store.check().unwrap().is_healthy());
        store.close().unwrap();
    }

    /// A server's error inside a pipeline (the script's reply, or its
    /// durability wait's) is sorted by its code like any other, whether
    /// redis-rs has a name for it or not.
    #[test]
    fn errors_inside_a_pipeline_are_sorted_by_their_code() {
        let Some(binary) = find("redis-server", "errors_inside_a_pipeline") else {
            return;
        };
        let server = RedisServer::start(&binary, &[]);
        let mut con = server.connection();
        for (reply, want) in [
            ("UNBLOCKED force unblock", conn::Trouble::Down),
            (
                "READONLY You cannot write against a read only replica.",
                conn::Trouble::Down,
            ),
            (
                "MOVED 3999 127.0.0.1:6381",
                conn::Trouble::Moved("127.0.0.1:6381".into()),
            ),
            ("ERR something else", conn::Trouble::Failed),
        ] {
            let script = format!("return redis.error_reply('{reply}')");
            let e = redis::pipe()
                .cmd("PING")
                .cmd("EVAL")
                .arg(&script)
                .arg(0)
                .query::<Vec<redis::Value>>(&mut con)
                .unwrap_err();
            assert_eq!(conn::trouble(&e), want, "{reply}");
        }
    }

    /// A plan inserting one session of `actor` with its `session.set`.
    struct Insert {
        actor: String,
        subjects: Vec<String>,
    }

    impl Task for Insert {
        fn subjects(&self) -> &[String] {
            &self.subjects
        }

        fn plan(&self, _view: &dyn View) -> Result<Plan> {
            let digest = Digest::of_secret(&self.actor);
            let record = Record {
                actor_id: self.actor.clone(),
                expires_at: u64::MAX / 2,
                filed_at: u64::MAX / 2,
                app_version: None,
                revision: 1,
                id: format!("id-{}", self.actor),
                language: "en".into(),
                created_at: 1,
                deadline: None,
                node_id: None,
                data: Data::new(),
                meta: crate::meta::Meta::new(),
            };
            Ok(Plan {
                preconditions: Vec::new(),
                changes: vec![Change::Insert {
                    digest,
                    actor_id: self.actor.clone(),
                    filed_at: record.filed_at,
                    revision: 1,
                    record: codec::encode(&record)?,
                }],
                events: vec![Event::Set {
                    id: record.id.clone(),
                    actor_id: self.actor.clone(),
                    language: "en".into(),
                    expires_at: record.expires_at,
                }],
                whole: false,
            })
        }
    }

    fn insert(actor: &str) -> Arc<dyn Task> {
        Arc::new(Insert {
            actor: actor.into(),
            subjects: vec![actor.into()],
        })
    }

    /// A node waits for its events to publish after the entries before
    /// them; meanwhile it must not hold the turn of unrelated actors that
    /// happen to share a stripe of the per-actor turns.
    #[test]
    fn a_write_waiting_to_publish_holds_up_no_other_actor() {
        let Some(binary) = find("redis-server", "a_write_waiting_to_publish") else {
            return;
        };
        let server = RedisServer::start(&binary, &[]);
        let patience = Duration::from_millis(1500);
        let config = Config::redis(&server.url).redis_timeout(patience);
        let events = Arc::new(EventHub::new(64));
        let target = match &config.location {
            crate::config::Location::Redis(t) => t.clone(),
            crate::config::Location::Directory(_) => unreachable!(),
        };
        let (engine, _) =
            RedisEngine::open(&target, &config, events, Arc::new(Poison::default())).unwrap();
        let engine = Arc::new(engine);
        // Two actors in different buckets whose turns share a stripe.
        let a = "a0".to_owned();
        let b = (1..)
            .map(|i| format!("b{i}"))
            .find(|b| {
                engine.turns.stripe(b) == engine.turns.stripe(&a)
                    && engine.keys.bucket(b) != engine.keys.bucket(&a)
            })
            .unwrap();
        // An entry this node has not heard, before a's next one: with its
        // reader stopped, a's events wait their whole patience.
        engine.reader.lock().unwrap().take().map(|mut r| r.stop());
        let bucket = engine.keys.bucket(&a);
        let mut raw = server.connection();
        let added: String = redis::cmd("XADD")
            .arg(engine.keys.stream(bucket))
            .arg("*")
            .arg("n")
            .arg(1)
            .arg("k")
            .arg(1)
            .arg("p")
            .arg("0-0")
            .arg("o")
            .arg("elsewhere")
            .arg("e")
            .arg("{}")
            .query(&mut raw)
            .unwrap();
        let _: i64 = redis::cmd("HSET")
            .arg(engine.keys.head(bucket))
            .arg("n")
            .arg(1)
            .arg("p")
            .arg(&added)
            .query(&mut raw)
            .unwrap();
        let (done, finished) = mpsc::channel();
        let slow = {
            let (engine, done) = (engine.clone(), done.clone());
            std::thread::spawn(move || {
                let t = engine.submit(insert("a0")).unwrap();
                engine.wait(t).unwrap();
                done.send("a").unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let t = engine.submit(insert(&b)).unwrap();
        engine.wait(t).unwrap();
        done.send("b").unwrap();
        slow.join().unwrap();
        let order: Vec<&str> = finished.try_iter().collect();
        assert_eq!(order, ["b", "a"], "b waited for a's turn");
    }
}
