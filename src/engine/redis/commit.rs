//! Committing a plan: the plan as a program of the commit script
//! (`commit.lua`), run on the primary of the plan's one bucket, and made
//! durable on the connection that ran it.
//!
//! `WAITAOF` and `WAIT` cover only the writes of the connection they run
//! on, so the durability wait is pipelined after the script on the same
//! connection (one round trip for both).

use std::time::Duration;

use redis::{Connection, Value};

use super::conn::{Nodes, Pool};
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
    /// replicas (one where the primary has replicas in sync).
    WaitAof,
    /// The servers run `appendfsync always`, so a reply means fsynced on the
    /// primary; `WAIT 1` after each commit where it has replicas in sync.
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
    retention: u64,
    /// Tags this node's events in the streams.
    origin: String,
    timeout: Duration,
}

impl Committer {
    pub fn new(sync: Sync, retention: u64, origin: String, timeout: Duration) -> Self {
        Committer {
            script: redis::Script::new(include_str!("commit.lua")),
            sync,
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
            [ok, id, last] if ok == "ok" => {
                let appended = parse_id(id)
                    .zip(last.parse().ok())
                    .map(|(id, sequence)| Appended {
                        bucket: program.bucket,
                        id,
                        sequence,
                        count: program.events,
                    });
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
            self.wait_command(pool, con)?
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
        let durable = match (&wait, replies.next()) {
            (None, _) => Ok(()),
            (Some(w), Some(answer)) => w.confirmed(answer, self.timeout),
            (Some(_), None) => Err(unconfirmed("the server sent no answer to the wait")),
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
            pipe.add_command(wait.command(self.timeout));
        }
        pipe
    }

    /// The durability wait a commit on `pool`'s server needs, if any.
    fn wait_command(&self, pool: &Pool, con: &mut Connection) -> redis::RedisResult<Option<Wait>> {
        Ok(match self.sync {
            Sync::Server => None,
            Sync::WaitAof => Some(Wait::Aof {
                replicas: pool.replicas(con)?.min(1),
            }),
            Sync::AlwaysFsync => match pool.replicas(con)?.min(1) {
                0 => None,
                replicas => Some(Wait::Replicas { replicas }),
            },
        })
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
        let wait = self.wait_command(pool, con)?;
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
        pipe.add_command(wait.command(self.timeout));
        let answer: Vec<Value> = pipe.query(con)?;
        Ok(match answer.into_iter().next() {
            Some(a) => wait.confirmed(a, self.timeout),
            None => Err(unconfirmed("the server sent no answer to the wait")),
        })
    }
}

/// A durability wait after a write.
enum Wait {
    /// `WAITAOF 1 replicas`.
    Aof { replicas: u32 },
    /// `WAIT replicas` (the primary fsyncs every write itself).
    Replicas { replicas: u32 },
}

impl Wait {
    /// The command, with a timeout inside the connection's read timeout.
    fn command(&self, timeout: Duration) -> redis::Cmd {
        let ms = u64::try_from(timeout.as_millis() * 3 / 4)
            .unwrap_or(u64::MAX)
            .max(1);
        match self {
            Wait::Aof { replicas } => {
                let mut c = redis::cmd("WAITAOF");
                c.arg(1).arg(*replicas).arg(ms);
                c
            }
            Wait::Replicas { replicas } => {
                let mut c = redis::cmd("WAIT");
                c.arg(*replicas).arg(ms);
                c
            }
        }
    }

    fn confirmed(&self, answer: Value, timeout: Duration) -> Result<()> {
        let ok = match self {
            Wait::Aof { replicas } => redis::from_redis_value::<(u32, u32)>(answer)
                .is_ok_and(|(local, acked)| local >= 1 && acked >= *replicas),
            Wait::Replicas { replicas } => {
                redis::from_redis_value::<u32>(answer).is_ok_and(|acked| acked >= *replicas)
            }
        };
        if ok {
            Ok(())
        } else {
            let what = match self {
                Wait::Aof { replicas: 0 } => "fsynced by the server",
                Wait::Aof { .. } => "fsynced by the server and received by a replica",
                Wait::Replicas { .. } => "received by a replica",
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
            Change::Insert {
                digest, actor_id, ..
            }
            | Change::Update {
                digest, actor_id, ..
            } => Some(k.session(actor_id, digest)),
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
            p.keys.push(k.sequence(bucket));
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
                actor_id,
                digest,
                revision,
            } => {
                self.keys.push(k.session(actor_id, digest));
                self.push("R");
                self.push(&revision.map(|r| r.to_string()).unwrap_or_default());
            }
            Precondition::Actor { actor_id, sessions } => {
                self.keys.push(k.actor(actor_id));
                self.push("A");
                self.push(&sessions.len().to_string());
                for d in sessions {
                    self.push(&digest_hex(d));
                }
            }
            Precondition::Arrival {
                actor_id,
                id,
                present,
            } => {
                self.keys.push(k.arrival(k.bucket(actor_id), id));
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
                let b = k.bucket(actor_id);
                self.keys.push(k.session(actor_id, digest));
                self.keys.push(k.expiries(b));
                self.keys.push(k.actor(actor_id));
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
                self.keys.push(k.session(actor_id, digest));
                self.keys.push(k.expiries(k.bucket(actor_id)));
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
                self.keys.push(k.session(actor_id, digest));
                self.keys.push(k.expiries(k.bucket(actor_id)));
                self.keys.push(k.actor(actor_id));
                self.push("D");
                self.push(&expiry_member(digest, actor_id));
                self.push(&digest_hex(digest));
            }
            Change::DropExpiry {
                digest, actor_id, ..
            } => {
                self.keys.push(k.expiries(k.bucket(actor_id)));
                self.push("X");
                self.push(&expiry_member(digest, actor_id));
            }
            Change::PutIntent {
                actor_id,
                id,
                value,
            } => {
                let b = k.bucket(actor_id);
                self.keys.push(k.intents(b));
                self.push("P");
                self.push(&k.channel(b));
                self.push(id);
                self.args.push(value.clone());
            }
            Change::DropIntent { actor_id, id } => {
                let b = k.bucket(actor_id);
                self.keys.push(k.intents(b));
                self.push("Q");
                self.push(&k.channel(b));
                self.push(id);
            }
            Change::Arrival {
                actor_id,
                id,
                keep_ms,
            } => {
                self.keys.push(k.arrival(k.bucket(actor_id), id));
                self.push("V");
                self.push(&keep_ms.to_string());
            }
        }
    }
}

/// The one bucket of every actor `plan` names (bucket 0 for a plan that
/// names none).
fn plan_bucket(k: &Keys, plan: &Plan) -> Result<u32> {
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
