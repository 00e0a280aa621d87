//! Committing a plan: the plan as a program of the commit script
//! (`commit.lua`), run on the primary of the plan's one bucket, and made
//! durable on the connection that ran it.
//!
//! `WAITAOF` and `WAIT` cover only the writes of the connection they run
//! on, so the durability wait is pipelined after the script on the same
//! connection (one round trip for both).
//!
//! With `Durability::Immediate` a write is never acknowledged on the
//! primary alone while a replica is attached to it, in sync or still in its
//! initial sync: the wait asks for one replica's acknowledgement, and a
//! wait that times out is `Error::Unavailable` ("may have committed").
//! Neither `WAIT` nor `WAITAOF` counts a replica before its initial sync is
//! done (measured on Redis 7.0 and Valkey 8.1; `docs/redis.md`), so while a
//! new replica syncs such writes fail. `min_replicas` refuses writes, in
//! either durability, while fewer replicas are attached.

use std::time::Duration;

use redis::{Connection, Value};

use super::conn::{replicas_attached, Nodes, Pool};
use super::events::{self, parse_id, Appended};
use super::keys::{digest_hex, expiry_member, Keys};
use crate::engine::{Change, Commit, Plan, Precondition};
use crate::error::{Error, Result, StorageError};
use crate::key::random_bytes;

/// How a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// The server's own fsync policy (`Durability::Periodic`).
    Server,
    /// `WAITAOF 1 r` after each commit: fsynced on the primary, and on `r`
    /// replicas (one where the primary has any attached).
    WaitAof,
    /// The servers run `appendfsync always`, so a reply means fsynced on the
    /// primary; `WAIT 1` after each commit where it has any replica
    /// attached.
    AlwaysFsync,
}

/// What a committed plan left: its outcome and where its events went (none
/// when it had none, or when a call sent again found the first one had
/// committed: the reader publishes those).
pub(crate) struct Committed {
    pub outcome: Commit,
    pub appended: Option<Appended>,
}

/// Runs plans as script calls.
pub(crate) struct Committer {
    script: redis::Script,
    pub sync: Sync,
    /// Writes are refused while a primary has fewer replicas attached.
    min_replicas: u32,
    retention: u64,
    /// Tags this node's events in the streams.
    origin: String,
    timeout: Duration,
}

impl Committer {
    pub fn new(
        sync: Sync,
        min_replicas: u32,
        retention: u64,
        origin: String,
        timeout: Duration,
    ) -> Self {
        Committer {
            script: redis::Script::new(include_str!("commit.lua")),
            sync,
            min_replicas,
            retention,
            origin,
            timeout,
        }
    }

    /// Commits `plan` as one script call on its bucket's primary, with its
    /// durability wait. A call whose answer was lost (a dropped connection,
    /// a failover) is sent again saying so, and finds whether the first one
    /// committed, so it applies at most once; a durability wait that times
    /// out is an error saying the change may have committed. A plan that
    /// changes nothing is sent only when `verify` (its preconditions rest
    /// on what this node knew rather than read: they are checked).
    pub fn commit(
        &self,
        nodes: &Nodes,
        keys: &Keys,
        plan: &Plan,
        verify: bool,
    ) -> Result<Committed> {
        let writes = !plan.changes.is_empty() || !plan.events.is_empty();
        let checks = verify && !plan.preconditions.is_empty();
        if !writes && !checks {
            return Ok(Committed {
                outcome: Commit::Done,
                appended: None,
            });
        }
        let mut program = Program::build(
            keys,
            plan,
            &self.origin,
            self.retention,
            self.timeout * 2 + Duration::from_secs(1),
        )?;
        let slot = keys.slot(program.bucket);
        let mut sent = false;
        let (reply, durable) = nodes.run(slot, "committing a change", |pool, con| {
            if std::mem::replace(&mut sent, true) {
                program.retried();
            }
            self.call(pool, con, &program, writes)
        })?;
        durable?;
        let appended = match reply.as_slice() {
            [ok, id, last, prev] if ok == "ok" => {
                let appended = parse_id(id).zip(parse_id(prev)).zip(last.parse().ok()).map(
                    |((id, prev), sequence)| Appended {
                        bucket: program.bucket,
                        id,
                        prev,
                        sequence,
                        count: program.events,
                    },
                );
                if appended.is_none() {
                    return Err(unexpected(&reply));
                }
                appended
            }
            [ok] if ok == "ok" || ok == "done" => None,
            [conflict] if conflict == "conflict" => {
                return Ok(Committed {
                    outcome: Commit::Conflict,
                    appended: None,
                })
            }
            _ => return Err(unexpected(&reply)),
        };
        Ok(Committed {
            outcome: Commit::Done,
            appended,
        })
    }

    /// The script call and, for a plan that writes, its durability wait,
    /// pipelined on `con`; the script's reply, and whether the wait
    /// confirmed it.
    fn call(
        &self,
        pool: &Pool,
        con: &mut Connection,
        program: &Program,
        writes: bool,
    ) -> redis::RedisResult<(Vec<String>, Result<()>)> {
        let wait = if writes {
            match self.wait_command(pool, con)? {
                Ok(wait) => wait,
                Err(refused) => return Ok((Vec::new(), Err(refused))),
            }
        } else {
            None
        };
        let mut sent = self.pipeline(program, true, wait.as_ref()).query(con);
        if matches!(&sent, Err(e) if e.code() == Some("NOSCRIPT")) {
            // The server lost its script cache (a restart, a failover, a
            // SCRIPT FLUSH): send the script itself, which caches it again.
            sent = self.pipeline(program, false, wait.as_ref()).query(con);
        }
        let replies: Vec<Value> = sent?;
        let mut replies = replies.into_iter();
        let reply: Vec<String> = match replies.next() {
            Some(v) => redis::from_redis_value(v)?,
            None => Vec::new(),
        };
        let durable = match &wait {
            None => Ok(()),
            Some(w) => w.finish(pool, con, &mut replies, self.timeout)?,
        };
        Ok((reply, durable))
    }

    fn pipeline(&self, program: &Program, cached: bool, wait: Option<&Wait>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let call = if cached {
            pipe.cmd("EVALSHA").arg(self.script.get_hash())
        } else {
            pipe.cmd("EVAL").arg(include_str!("commit.lua"))
        };
        call.arg(program.keys.len()).arg(&program.keys);
        for a in &program.args {
            call.arg(a.as_slice());
        }
        if let Some(wait) = wait {
            wait.add_to(&mut pipe, self.timeout);
        }
        pipe
    }

    /// Whether a write on `pool`'s server may go ahead: `Ok` with the count
    /// of attached replicas if it is known to be one or more, or an
    /// `Unavailable` error while fewer than `min_replicas` are attached.
    /// Counts them on `con` (one round trip) only when `min_replicas` is set
    /// and the count kept is missing or too low: a write refused goes on
    /// being refused until the server itself says enough are attached.
    pub fn admit(
        &self,
        pool: &Pool,
        con: &mut Connection,
    ) -> redis::RedisResult<Result<Option<u32>>> {
        let known = pool.replicas();
        if self.min_replicas == 0 || known.is_some_and(|n| n >= self.min_replicas) {
            return Ok(Ok(known));
        }
        let attached = pool.ask_replicas(con)?;
        if attached < self.min_replicas {
            return Ok(Err(too_few(pool.addr(), attached, self.min_replicas)));
        }
        Ok(Ok(Some(attached)))
    }

    /// The durability wait a commit on `pool`'s server needs, if any; or
    /// why it must not be written (too few replicas attached).
    fn wait_command(
        &self,
        pool: &Pool,
        con: &mut Connection,
    ) -> redis::RedisResult<Result<Option<Wait>>> {
        let attached = match self.admit(pool, con)? {
            Ok(attached) => attached,
            Err(refused) => return Ok(Err(refused)),
        };
        let how = match self.sync {
            Sync::Server => return Ok(Ok(None)),
            Sync::WaitAof => How::Aof,
            Sync::AlwaysFsync => How::Replicas,
        };
        Ok(Ok(Some(Wait {
            how,
            replicas: attached.map_or(0, |n| n.min(1)),
            recount: attached.is_none(),
        })))
    }

    /// Makes every change committed on `pool`'s server before now durable
    /// as a commit would be: one write of this connection's own (the
    /// bucket's probe key) and the wait after it, which covers everything
    /// before it in the server's log.
    pub fn flush_on(
        &self,
        pool: &Pool,
        con: &mut Connection,
        probe: &str,
    ) -> redis::RedisResult<Result<()>> {
        let wait = match self.wait_command(pool, con)? {
            Ok(wait) => wait,
            Err(refused) => return Ok(Err(refused)),
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(probe)
            .arg(&self.origin)
            .arg("PX")
            .arg(10_000)
            .ignore();
        let Some(wait) = wait else {
            pipe.query::<()>(con)?;
            return Ok(Ok(()));
        };
        wait.add_to(&mut pipe, self.timeout);
        let answers: Vec<Value> = pipe.query(con)?;
        wait.finish(pool, con, &mut answers.into_iter(), self.timeout)
    }
}

/// How a wait confirms a write.
#[derive(Clone, Copy)]
enum How {
    /// `WAITAOF 1 replicas`.
    Aof,
    /// `WAIT replicas` (the primary fsyncs every write itself).
    Replicas,
}

/// A durability wait after a write.
struct Wait {
    how: How,
    /// How many replicas must acknowledge the write: one if any is known to
    /// be attached, else none.
    replicas: u32,
    /// No replica was known to be attached: the server is asked after the
    /// write (in the same round trip), and a replica found attached then is
    /// waited for before the write is acknowledged. A replica that attaches
    /// later gets a copy made after the write.
    recount: bool,
}

impl Wait {
    /// Adds the wait's commands to `pipe`, after the write: the wait (none
    /// for `WAIT 0`, since the primary fsyncs every write itself), then
    /// `INFO replication` if the replicas are to be counted again.
    fn add_to(&self, pipe: &mut redis::Pipeline, timeout: Duration) {
        if self.waits() {
            pipe.add_command(self.command(timeout));
        }
        if self.recount {
            pipe.cmd("INFO").arg("replication");
        }
    }

    fn waits(&self) -> bool {
        matches!(self.how, How::Aof) || self.replicas > 0
    }

    /// The wait, with a timeout inside the connection's read timeout.
    fn command(&self, timeout: Duration) -> redis::Cmd {
        let ms = u64::try_from(timeout.as_millis() * 3 / 4)
            .unwrap_or(u64::MAX)
            .max(1);
        match self.how {
            How::Aof => {
                let mut c = redis::cmd("WAITAOF");
                c.arg(1).arg(self.replicas).arg(ms);
                c
            }
            How::Replicas => {
                let mut c = redis::cmd("WAIT");
                c.arg(self.replicas).arg(ms);
                c
            }
        }
    }

    /// Reads the answers to [`Wait::add_to`]'s commands: whether the write
    /// is durable. A replica the count after the write found attached is
    /// waited for now, on `con` (a wait covers every earlier write of its
    /// connection). A wait that timed out forgets `pool`'s count of
    /// replicas: one may have left.
    fn finish(
        &self,
        pool: &Pool,
        con: &mut Connection,
        answers: &mut impl Iterator<Item = Value>,
        timeout: Duration,
    ) -> redis::RedisResult<Result<()>> {
        if self.waits() {
            let confirmed = match answers.next() {
                Some(answer) => self.confirmed(answer, timeout),
                None => Err(unconfirmed("the server sent no answer to the wait")),
            };
            if let Err(e) = confirmed {
                pool.forget_replicas();
                return Ok(Err(e));
            }
        }
        if !self.recount {
            return Ok(Ok(()));
        }
        let Some(info) = answers.next() else {
            return Ok(Err(unconfirmed(
                "the server did not say whether a replica is attached",
            )));
        };
        let attached = replicas_attached(&redis::from_redis_value::<String>(info)?);
        pool.note_replicas(attached);
        if attached == 0 {
            return Ok(Ok(()));
        }
        let again = Wait {
            how: self.how,
            replicas: 1,
            recount: false,
        };
        let answer: Value = again.command(timeout).query(con)?;
        let confirmed = again.confirmed(answer, timeout);
        if confirmed.is_err() {
            pool.forget_replicas();
        }
        Ok(confirmed)
    }

    fn confirmed(&self, answer: Value, timeout: Duration) -> Result<()> {
        let ok = match self.how {
            How::Aof => redis::from_redis_value::<(u32, u32)>(answer)
                .is_ok_and(|(local, acked)| local >= 1 && acked >= self.replicas),
            How::Replicas => {
                redis::from_redis_value::<u32>(answer).is_ok_and(|acked| acked >= self.replicas)
            }
        };
        if ok {
            Ok(())
        } else {
            let what = match (self.how, self.replicas) {
                (How::Aof, 0) => "fsynced by the server",
                (How::Aof, _) => {
                    "fsynced by the server and received by a replica (a replica still in its \
                     initial sync acknowledges nothing until the sync is done)"
                }
                (How::Replicas, _) => {
                    "received by a replica (a replica still in its initial sync acknowledges \
                     nothing until the sync is done)"
                }
            };
            Err(unconfirmed(&format!(
                "it was not {what} within {timeout:?}"
            )))
        }
    }
}

/// The commit script answered what it never answers.
fn unexpected(reply: &[String]) -> Error {
    Error::Storage(StorageError::new(
        "committing a change",
        format!("unexpected reply from the commit script: {reply:?}"),
    ))
}

/// A write refused: fewer replicas are attached to the primary than
/// `min_replicas` requires.
fn too_few(addr: &str, attached: u32, required: u32) -> Error {
    let attached = match attached {
        0 => "no replica".to_owned(),
        1 => "1 replica".to_owned(),
        n => format!("{n} replicas"),
    };
    Error::Unavailable {
        source: StorageError::new(
            "checking the primary's replicas",
            format!(
                "the primary at {addr} has {attached} attached and min_replicas requires \
                 {required}: writes are refused until enough replicas attach (reads go on)"
            ),
        ),
    }
}

/// A change whose durability was not confirmed: it may have committed.
fn unconfirmed(why: &str) -> Error {
    Error::Unavailable {
        source: StorageError::new(
            "making a change durable",
            format!(
                "the change may have committed, but {why}; it is not known to survive a \
                 failover or a crash of the server"
            ),
        ),
    }
}

/// The script's keys and arguments for one plan, and the one bucket every
/// key is in.
pub(crate) struct Program {
    pub bucket: u32,
    /// How many events it appends.
    pub events: u64,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

/// Where ARGV says whether the call is sent again (`commit.lua`).
const RETRY_ARG: usize = 1;

impl Program {
    /// The program for `plan`. A plan must stay in one bucket (every key in
    /// one hash slot); the session logic cuts its batches so. `marker_ttl`:
    /// how long the commit's id is kept where it has no session hash to
    /// live in (a call is sent again only within its deadline).
    pub fn build(
        k: &Keys,
        plan: &Plan,
        origin: &str,
        retention: u64,
        marker_ttl: Duration,
    ) -> Result<Program> {
        let bucket = plan_bucket(k, plan)?;
        let id = crate::key::hex(&random_bytes::<12>()?);
        // Where the commit's id is left for a call sent again: in the first
        // session hash the plan writes, else in a key of its own.
        let first_written = plan.changes.iter().find_map(|c| match c {
            Change::Insert { digest, .. } | Change::Update { digest, .. } => {
                Some(k.session_in(bucket, digest))
            }
            _ => None,
        });
        let (marker, mode) = match first_written {
            Some(key) => (key, "h"),
            None if plan.changes.is_empty() => (k.done(bucket, &id), "-"),
            None => (k.done(bucket, &id), "k"),
        };
        let mut p = Program {
            bucket,
            events: 0,
            keys: vec![marker],
            args: Vec::new(),
        };
        p.push(&id);
        p.push("0");
        p.push(mode);
        p.push(&marker_ttl.as_millis().max(1).to_string());
        for c in &plan.preconditions {
            p.precondition(k, c);
        }
        for c in &plan.changes {
            p.change(k, c);
        }
        let events: Vec<String> = plan
            .events
            .iter()
            .filter_map(|e| events::encode(e).map(|(_, json)| json))
            .collect();
        // Entries filed without an event (an import): the reapers hear of
        // them by a hint (`reaping`).
        let silent = plan.changes.iter().filter_map(|c| match c {
            Change::Insert { filed_at, .. } => Some(*filed_at),
            _ => None,
        });
        if let Some(earliest) = silent.min().filter(|_| events.is_empty()) {
            p.push("F");
            p.push(&k.channel(bucket));
            p.push(&earliest.to_string());
        }
        if !events.is_empty() {
            p.events = events.len() as u64;
            p.push("E");
            p.keys.push(k.stream(bucket));
            p.keys.push(k.head(bucket));
            p.push(&k.channel(bucket));
            p.push(origin);
            p.push(&retention.to_string());
            p.push(&events.len().to_string());
            p.push(&events.join("\n"));
        }
        Ok(p)
    }

    /// Marks the program as sent again after its answer was lost.
    fn retried(&mut self) {
        self.args[RETRY_ARG] = b"1".to_vec();
    }

    fn push(&mut self, arg: &str) {
        self.args.push(arg.as_bytes().to_vec());
    }

    fn precondition(&mut self, k: &Keys, c: &Precondition) {
        match c {
            Precondition::Record {
                digest, revision, ..
            } => {
                self.keys.push(k.session_in(self.bucket, digest));
                self.push("R");
                self.push(&revision.map(|r| r.to_string()).unwrap_or_default());
            }
            Precondition::Actor { actor_id, sessions } => {
                self.keys.push(k.actor_in(self.bucket, actor_id));
                self.push("A");
                self.push(&sessions.len().to_string());
                for d in sessions {
                    self.push(&digest_hex(d));
                }
            }
            Precondition::Arrival { id, present, .. } => {
                self.keys.push(k.arrival(self.bucket, id));
                self.push("T");
                self.push(if *present { "1" } else { "0" });
            }
        }
    }

    fn change(&mut self, k: &Keys, c: &Change) {
        match c {
            Change::Insert {
                digest,
                actor_id,
                filed_at,
                revision,
                record,
            } => {
                let b = self.bucket;
                self.keys.push(k.session_in(b, digest));
                self.keys.push(k.expiries(b));
                self.keys.push(k.actor_in(self.bucket, actor_id));
                self.push("I");
                self.push(&expiry_member(digest, actor_id));
                self.push(&digest_hex(digest));
                self.push(&filed_at.to_string());
                self.push(&revision.to_string());
                self.args.push(record.clone());
            }
            Change::Update {
                digest,
                actor_id,
                filed_at_was,
                filed_at,
                revision,
                record,
            } => {
                self.keys.push(k.session_in(self.bucket, digest));
                self.keys.push(k.expiries(self.bucket));
                self.push("U");
                self.push(&expiry_member(digest, actor_id));
                // An entry that stays where it is is not written again.
                if filed_at == filed_at_was {
                    self.push("");
                } else {
                    self.push(&filed_at.to_string());
                }
                self.push(&revision.to_string());
                self.args.push(record.clone());
            }
            Change::Delete {
                digest, actor_id, ..
            } => {
                self.keys.push(k.session_in(self.bucket, digest));
                self.keys.push(k.expiries(self.bucket));
                self.keys.push(k.actor_in(self.bucket, actor_id));
                self.push("D");
                self.push(&expiry_member(digest, actor_id));
                self.push(&digest_hex(digest));
            }
            Change::DropExpiry {
                digest, actor_id, ..
            } => {
                self.keys.push(k.expiries(self.bucket));
                self.push("X");
                self.push(&expiry_member(digest, actor_id));
            }
            Change::PutIntent { id, value, .. } => {
                let b = self.bucket;
                self.keys.push(k.intents(b));
                self.push("P");
                self.push(&k.channel(b));
                self.push(id);
                self.args.push(value.clone());
            }
            Change::DropIntent { id, .. } => {
                let b = self.bucket;
                self.keys.push(k.intents(b));
                self.push("Q");
                self.push(&k.channel(b));
                self.push(id);
            }
            Change::Arrival { id, keep_ms, .. } => {
                self.keys.push(k.arrival(self.bucket, id));
                self.push("V");
                self.push(&keep_ms.to_string());
            }
        }
    }
}

/// The one bucket of every actor `plan` names (bucket 0 for a plan that
/// names none).
fn plan_bucket(k: &Keys, plan: &Plan) -> Result<u32> {
    // An actor comes up in a precondition, a change and an event: its
    // bucket (a SHA-256) is computed once.
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let actors = plan
        .preconditions
        .iter()
        .map(Precondition::actor_id)
        .chain(plan.changes.iter().map(Change::actor_id))
        .chain(
            plan.events
                .iter()
                .filter_map(|e| events::encode(e).map(|(a, _)| a)),
        );
    let mut bucket = None;
    for actor in actors {
        if !seen.insert(actor) {
            continue;
        }
        let b = k.bucket(actor);
        match bucket {
            None => bucket = Some(b),
            Some(first) if first == b => {}
            Some(first) => {
                return Err(Error::Storage(StorageError::new(
                    "committing a change",
                    format!(
                        "the plan spans buckets {first} and {b}: a change must stay within one \
                         bucket (a bug in sessiondb)"
                    ),
                )))
            }
        }
    }
    Ok(bucket.unwrap_or(0))
}
