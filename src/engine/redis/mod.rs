//! The shared engine: Redis 7.x or Valkey 8.x/9.x, for several game-server
//! nodes sharing one store: one server, a Sentinel-managed primary, or a
//! Redis Cluster.
//!
//! The store's keys are spread over buckets, each under one hash tag, so
//! each bucket is one hash slot (`keys`); an actor's sessions live in one
//! bucket. Each plan names the sessions of one bucket and commits as one
//! Lua script on the primary serving it (`commit`): preconditions checked,
//! then records, indexes and events changed together, or nothing. Planning
//! reads on the caller's side (no lock is held across nodes); the store
//! plans again on a conflict. Sessions carry no Redis TTL: expiry is
//! sessiondb's.
//!
//! - `conn`: pools per server, the topology (which primary serves which
//!   slot), retries until the deadline while servers fail over;
//! - `open`: the servers' settings and the store's meta;
//! - `commit`: a plan as a script program, with its durability wait;
//! - `events`: the streams and shard channels every node follows;
//! - `upkeep`: scans and guarded repair;
//! - `keys`: the key layout and the buckets' hash tags.

mod commit;
mod conn;
mod events;
mod keys;
mod open;
mod upkeep;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use self::commit::Committer;
use self::conn::Nodes;
use self::events::{Progress, Reader};
use self::keys::{parse_expiry_member, Keys};
use crate::config::{Config, RedisTarget};
use crate::engine::gate::{Gate, Turns};
use crate::engine::{Commit, CommitCounts, Count, Due, Engine, Opened, Task, Ticket, View};
use crate::error::{Error, Result};
use crate::events::EventHub;
use crate::key::{random_bytes, Digest};
use crate::worker::Poison;

pub(crate) struct RedisEngine {
    nodes: Arc<Nodes>,
    keys: Keys,
    committer: Committer,
    repair_script: redis::Script,
    reader: Mutex<Option<Reader>>,
    progress: Arc<Progress>,
    events: Arc<EventHub>,
    gate: Arc<Gate>,
    turns: Turns,
    /// The bucket this node's reaper starts from.
    reap_start: u32,
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
        let reader = Reader::start(
            nodes.clone(),
            keys.clone(),
            events.clone(),
            progress.clone(),
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
            reader: Mutex::new(Some(reader)),
            progress,
            events,
            nodes,
            reap_start: u32::from_le_bytes(random_bytes::<4>()?) % meta.buckets,
            keys,
            gate: Arc::new(Gate::default()),
            turns: Turns::default(),
            commits: AtomicU64::new(0),
            plans: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        };
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

    /// Publishes a committed change's own events, in the plan's order: each
    /// once everything before it in its stream is published, so that
    /// per-actor order holds across nodes. Waits at most the timeout; the
    /// reader publishes what is left after that.
    fn publish_own(&self, plan_events: &[crate::events::Event], appended: &[events::Appended]) {
        let encoded = plan_events.iter().filter(|e| events::encode(e).is_some());
        let deadline = Instant::now() + self.progress.patience();
        for (event, entry) in encoded.zip(appended) {
            if !self
                .progress
                .publish_own(&self.events, *entry, event, deadline)
            {
                log::warn!("the events of a committed change are late; they will follow");
                break;
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

/// Planning's view of the store: plain reads, one round trip each (a batch
/// of records in one).
struct RedisView<'a>(&'a RedisEngine);

impl View for RedisView<'_> {
    fn record(&self, actor_id: &str, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let e = self.0;
        let key = e.keys.session(actor_id, digest);
        e.nodes
            .run(e.slot_of(actor_id), "reading a session", |_, con| {
                redis::cmd("HGET").arg(&key).arg("r").query(con)
            })
    }

    fn records(&self, wanted: &[(&str, &Digest)]) -> Result<Vec<Option<Vec<u8>>>> {
        let e = self.0;
        let Some((first, _)) = wanted.first() else {
            return Ok(Vec::new());
        };
        if wanted.len() < 2 {
            return wanted.iter().map(|(a, d)| self.record(a, d)).collect();
        }
        // A plan reads within one bucket; a read of several buckets (an
        // actors' addresses) goes bucket by bucket.
        let bucket = e.keys.bucket(first);
        if wanted.iter().any(|(a, _)| e.keys.bucket(a) != bucket) {
            return wanted.iter().map(|(a, d)| self.record(a, d)).collect();
        }
        e.nodes
            .run(e.keys.slot(bucket), "reading sessions", |_, con| {
                let mut pipe = redis::pipe();
                for (actor_id, digest) in wanted {
                    pipe.cmd("HGET")
                        .arg(e.keys.session(actor_id, digest))
                        .arg("r");
                }
                pipe.query(con)
            })
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        self.0.actor_sessions(actor_id)
    }

    fn arrived(&self, actor_id: &str, id: &str) -> Result<bool> {
        let e = self.0;
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
        match RedisView(self).record(actor_id, digest)? {
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
        Ok(members.iter().filter_map(|m| Digest::from_hex(m)).collect())
    }

    fn due(&self, now: u64, limit: usize) -> Result<Vec<Due>> {
        // Bucket by bucket, from a bucket of this node's own: nodes reaping at
        // once mostly claim different sessions instead of racing for the
        // same earliest ones (each stays exactly-once either way).
        let mut buckets = self.all_buckets();
        let start = self.reap_start as usize % buckets.len().max(1);
        buckets.rotate_left(start);
        let replies = self
            .nodes
            .across(&buckets, 1, "scanning expiries", |pipe, b| {
                pipe.cmd("ZRANGE")
                    .arg(self.keys.expiries(b))
                    .arg("-inf")
                    .arg(now)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .arg("WITHSCORES");
            })?;
        let mut due = Vec::new();
        for (_, reply) in replies {
            for value in reply {
                let entries: Vec<(Vec<u8>, f64)> =
                    redis::from_redis_value(value).unwrap_or_default();
                due.extend(entries.into_iter().filter_map(|(member, score)| {
                    let (digest, actor_id) = parse_expiry_member(&member)?;
                    Some(Due {
                        at: score as u64,
                        digest,
                        actor_id,
                    })
                }));
            }
            if due.len() >= limit {
                break;
            }
        }
        due.truncate(limit);
        Ok(due)
    }

    fn next_expiry(&self) -> Result<Option<u64>> {
        let replies = self.nodes.across(
            &self.all_buckets(),
            1,
            "reading the earliest expiry",
            |pipe, b| {
                pipe.cmd("ZRANGE")
                    .arg(self.keys.expiries(b))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
            },
        )?;
        Ok(replies
            .into_iter()
            .flat_map(|(_, v)| v)
            .filter_map(|v| redis::from_redis_value::<Vec<(Vec<u8>, f64)>>(v).ok())
            .flatten()
            .map(|(_, score)| score as u64)
            .min())
    }

    fn session_count(&self) -> Result<Count> {
        let counts = self.nodes.across(
            &self.all_buckets(),
            1,
            "reading the session count",
            |pipe, b| {
                pipe.cmd("GET").arg(self.keys.count(b));
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

    fn intents(&self) -> Result<Vec<Vec<u8>>> {
        let replies = self
            .nodes
            .across(&self.all_buckets(), 1, "reading intents", |pipe, b| {
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
                // would otherwise keep conflicting with each other. The
                // turn ends with the commit: publishing waits for other
                // nodes' events, and keeps order by the streams, not by it.
                let _turn = self.turns.take(task.subjects());
                task.plan(&RedisView(self)).and_then(|plan| {
                    let committed = self.committer.commit(&self.nodes, &self.keys, &plan)?;
                    Ok((plan, committed))
                })
            };
            committed.map(|(plan, committed)| {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.plans.fetch_add(1, Ordering::Relaxed);
                if self.committer.sync != commit::Sync::Server && committed.outcome == Commit::Done
                {
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                }
                if committed.outcome == Commit::Done {
                    self.publish_own(&plan.events, &committed.appended);
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
        // half-changed. Stop following the streams.
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
        let _: String = redis::cmd("XADD")
            .arg(engine.keys.stream(bucket))
            .arg("*")
            .arg("n")
            .arg(1)
            .arg("p")
            .arg("0-0")
            .arg("o")
            .arg("elsewhere")
            .arg("e")
            .arg("{}")
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
