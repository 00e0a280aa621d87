//! The shared engine: Redis 7.x or Valkey 8.x/9.x, for several game-server
//! nodes sharing one store.
//!
//! Each plan commits as one Lua script (`commit.lua`) that checks the plan's
//! preconditions, then applies its record and index changes and appends its
//! events to the streams, or changes nothing and reports a conflict. Planning
//! reads on the caller's side (no lock is held across nodes); the store plans
//! again on a conflict. Sessions carry no Redis TTL: expiry is sessiondb's.
//! Key layout: `keys`.

mod conn;
mod events;
mod keys;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{Connection, IntoConnectionInfo};

use self::conn::{failed, Pool};
use self::events::Reader;
use self::keys::{digest_hex, expiry_member, parse_expiry_member, Keys, REDIS_FORMAT};
use crate::config::{Config, Durability};
use crate::engine::gate::{Gate, Turns};
use crate::engine::{
    Change, Commit, CommitCounts, Count, Due, Engine, Fix, Index, IndexVisit, Opened, Plan,
    Precondition, RecordVisit, Stored, Task, Ticket, Upkeep, View, WritesHeld,
};
use crate::error::{Error, Result, StorageError};
use crate::events::EventHub;
use crate::key::{random_bytes, Digest};
use crate::worker::Poison;

/// How long a committed plan's marker is kept for idempotent retries.
const MARKER_TTL_MS: u64 = 60_000;
/// Keys asked for per SCAN step.
const SCAN_COUNT: usize = 1_000;

/// `url` with its password replaced by `***`, for messages and logs: the
/// `user:password@` part, and `pass=` / `password=` query parameters (unix
/// sockets).
///
/// ```
/// assert_eq!(
///     sessiondb::redact_url("redis://app:s3cret@db:6379/2"),
///     "redis://app:***@db:6379/2"
/// );
/// ```
pub fn redacted(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            let auth = &base[scheme + 3..at];
            match auth.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &base[..scheme + 3], &base[at..]),
                // A user name alone: no password to hide.
                None => base.to_owned(),
            }
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((name, _))
                    if name.eq_ignore_ascii_case("pass")
                        || name.eq_ignore_ascii_case("password") =>
                {
                    format!("{name}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out = format!("{out}?{}", params.join("&"));
    }
    out
}

/// How a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// The server's own fsync policy (`Durability::Periodic`).
    Server,
    /// `WAITAOF 1 0` after each commit: the server fsynced it.
    WaitAof,
    /// The server runs `appendfsync always`: a reply means it is on disk.
    AlwaysFsync,
}

pub(crate) struct RedisEngine {
    pool: Arc<Pool>,
    keys: Keys,
    script: redis::Script,
    sync: Sync,
    timeout: Duration,
    retention: u64,
    reader: Mutex<Option<Reader>>,
    progress: Arc<events::Progress>,
    events: Arc<EventHub>,
    gate: Arc<Gate>,
    turns: Turns,
    /// The bucket this node's reaper starts from.
    reap_start: u32,
    commits: AtomicU64,
    plans: AtomicU64,
    syncs: AtomicU64,
}

fn bad_url(url: &str, problem: impl std::fmt::Display) -> Error {
    Error::InvalidConfig {
        setting: "redis_url",
        problem: format!("{}: {problem}", redacted(url)),
    }
}

/// The value of `name` in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// `CONFIG GET name`, or `None` where the server refuses CONFIG.
fn config_get(con: &mut Connection, name: &str) -> Option<String> {
    let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query(con).ok()?;
    pair.into_iter().nth(1)
}

impl RedisEngine {
    pub fn open(
        url: &str,
        config: &Config,
        events: Arc<EventHub>,
        poison: Arc<Poison>,
    ) -> Result<(RedisEngine, Opened)> {
        let settings = &config.redis;
        let info = url.into_connection_info().map_err(|e| bad_url(url, e))?;
        let client = match &settings.tls_ca {
            None => redis::Client::open(info),
            Some(pem) => {
                let root_cert = std::fs::read(pem).map_err(|source| Error::Io {
                    action: "reading the Redis CA certificate",
                    path: pem.clone(),
                    source,
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(info, certificates)
            }
        }
        .map_err(|e| bad_url(url, e))?;
        let pool = Arc::new(Pool::new(client, settings.timeout));
        let (sync, created, buckets) = pool.with(|con| {
            let sync = check_server(con, config.durability)?;
            let (created, buckets) = meta(con, &settings.prefix, settings.buckets)?;
            Ok((sync, created, buckets))
        })?;
        let keys = Keys::new(&settings.prefix, buckets);
        let origin = crate::key::hex(&random_bytes::<8>()?);
        let reader = Reader::start(
            pool.clone(),
            keys.clone(),
            events.clone(),
            poison,
            origin,
            settings.timeout,
        )?;
        let engine = RedisEngine {
            progress: reader.progress.clone(),
            reader: Mutex::new(Some(reader)),
            events,
            pool,
            keys,
            script: redis::Script::new(include_str!("commit.lua")),
            sync,
            timeout: settings.timeout,
            retention: settings.event_retention,
            gate: Arc::new(Gate::default()),
            turns: Turns::default(),
            reap_start: u32::from_le_bytes(random_bytes::<4>()?) % buckets,
            commits: AtomicU64::new(0),
            plans: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        };
        // Every change is one atomic script, so a node's crash never leaves
        // the store inconsistent: there is no unclean shutdown to recover.
        let opened = Opened {
            created,
            clean_shutdown: true,
            stale_files_removed: 0,
        };
        Ok((engine, opened))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        self.pool.with(f)
    }

    /// Commits `plan` as one script call. A call whose answer was lost to
    /// a dropped connection is sent again with the same marker, so it
    /// applies at most once.
    fn commit(&self, plan: &Plan) -> Result<Commit> {
        if plan.changes.is_empty() && plan.events.is_empty() && plan.preconditions.is_empty() {
            return Ok(Commit::Done);
        }
        let program = self.program(plan)?;
        let deadline = Instant::now() + self.timeout;
        let reply: Vec<String> = loop {
            let sent = self.with(|con| {
                let mut call = self.script.prepare_invoke();
                for k in &program.keys {
                    call.key(k);
                }
                for a in &program.args {
                    call.arg(a.as_slice());
                }
                call.invoke(con).map_err(failed("committing a change"))
            });
            match sent {
                Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other?,
            }
        };
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.plans.fetch_add(1, Ordering::Relaxed);
        match reply.first().map(String::as_str) {
            Some("conflict") => return Ok(Commit::Conflict),
            Some("ok") => {}
            Some("done") => return Ok(Commit::Done),
            _ => {
                return Err(Error::Storage(StorageError::new(
                    "committing a change",
                    format!("unexpected reply from the commit script: {reply:?}"),
                )))
            }
        }
        if self.sync == Sync::WaitAof {
            self.wait_aof()?;
        }
        // This node publishes its own change's events, in the plan's order,
        // before the call returns (as on every engine); the reader leaves
        // them to it. Each waits until everything before it in its stream
        // is published, so per-actor commit order holds across nodes.
        let appended = plan.events.iter().filter(|e| events::encode(e).is_some());
        let wait_until = deadline.max(Instant::now() + self.timeout);
        for (event, group) in appended.zip(reply[1..].chunks(4)) {
            let Some(entry) = events::Appended::parse(&self.keys, group) else {
                continue;
            };
            let published = self
                .progress
                .publish_own(&self.events, entry, event, wait_until);
            if !published {
                // The reader publishes it once its patience runs out.
                log::warn!("the events of a committed change are late; they will follow");
                break;
            }
        }
        Ok(Commit::Done)
    }

    fn wait_aof(&self) -> Result<()> {
        let timeout = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let (local, _): (u64, u64) = self.with(|con| {
            redis::cmd("WAITAOF")
                .arg(1)
                .arg(0)
                .arg(timeout)
                .query(con)
                .map_err(failed("waiting for the server's fsync"))
        })?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if local < 1 {
            return Err(Error::Unavailable {
                source: StorageError::new(
                    "waiting for the server's fsync",
                    format!("the change was not fsynced within {:?}", self.timeout),
                ),
            });
        }
        Ok(())
    }

    /// The script's keys and arguments for `plan` (see `commit.lua`).
    fn program(&self, plan: &Plan) -> Result<Program> {
        let k = &self.keys;
        let mut p = Program::default();
        let first_actor =
            plan.preconditions
                .iter()
                .map(|c| match c {
                    Precondition::Record { actor_id, .. }
                    | Precondition::Actor { actor_id, .. } => actor_id.as_str(),
                })
                .chain(plan.changes.iter().map(|c| match c {
                    Change::Insert { actor_id, .. }
                    | Change::Update { actor_id, .. }
                    | Change::Delete { actor_id, .. }
                    | Change::DropExpiry { actor_id, .. } => actor_id.as_str(),
                }))
                .next()
                .unwrap_or("");
        let id = random_bytes::<12>()?;
        let marker = p.key(k.done(k.bucket(first_actor), &crate::key::hex(&id)));
        p.args = vec![
            marker.to_string().into_bytes(),
            MARKER_TTL_MS.to_string().into_bytes(),
            self.retention.to_string().into_bytes(),
            self.progress.origin().as_bytes().to_vec(),
        ];
        for c in &plan.preconditions {
            match c {
                Precondition::Record {
                    actor_id,
                    digest,
                    revision,
                } => {
                    let s = p.key(k.session(actor_id, digest));
                    p.op(
                        "R",
                        &[
                            &s.to_string(),
                            &revision.map(|r| r.to_string()).unwrap_or_default(),
                        ],
                    );
                }
                Precondition::Actor { actor_id, sessions } => {
                    let a = p.key(k.actor(actor_id));
                    p.op("A", &[&a.to_string(), &sessions.len().to_string()]);
                    for d in sessions {
                        p.args.push(digest_hex(d).into_bytes());
                    }
                }
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
                } => {
                    let (s, e, a, n) = p.session_keys(k, actor_id, digest);
                    p.op(
                        "I",
                        &[
                            &s.to_string(),
                            &e.to_string(),
                            &a.to_string(),
                            &n.to_string(),
                            &expiry_member(digest, actor_id),
                            &digest_hex(digest),
                            &filed_at.to_string(),
                            &revision.to_string(),
                        ],
                    );
                    p.args.push(record.clone());
                }
                Change::Update {
                    digest,
                    actor_id,
                    filed_at,
                    revision,
                    record,
                    ..
                } => {
                    let (s, e) = (
                        p.key(k.session(actor_id, digest)),
                        p.key(k.expiries(k.bucket(actor_id))),
                    );
                    p.op(
                        "U",
                        &[
                            &s.to_string(),
                            &e.to_string(),
                            &expiry_member(digest, actor_id),
                            &filed_at.to_string(),
                            &revision.to_string(),
                        ],
                    );
                    p.args.push(record.clone());
                }
                Change::Delete {
                    digest, actor_id, ..
                } => {
                    let (s, e, a, n) = p.session_keys(k, actor_id, digest);
                    p.op(
                        "D",
                        &[
                            &s.to_string(),
                            &e.to_string(),
                            &a.to_string(),
                            &n.to_string(),
                            &expiry_member(digest, actor_id),
                            &digest_hex(digest),
                        ],
                    );
                }
                Change::DropExpiry {
                    digest, actor_id, ..
                } => {
                    let e = p.key(k.expiries(k.bucket(actor_id)));
                    p.op("X", &[&e.to_string(), &expiry_member(digest, actor_id)]);
                }
            }
        }
        for event in &plan.events {
            if let Some((actor, json)) = events::encode(event) {
                let b = k.bucket(actor);
                let (x, q) = (p.key(k.stream(b)), p.key(k.sequence(b)));
                p.op("E", &[&x.to_string(), &q.to_string()]);
                p.args.push(json.into_bytes());
            }
        }
        Ok(p)
    }

    /// Every key matching `pattern`, by SCAN.
    fn scan_keys(&self, pattern: &str) -> Result<Vec<String>> {
        let fail = failed("scanning keys");
        self.with(|con| {
            let mut out = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query(con)
                    .map_err(&fail)?;
                out.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            out.sort();
            out.dedup();
            Ok(out)
        })
    }

    /// Sets each bucket's count to the sessions it holds.
    fn recount(&self) -> Result<()> {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for key in self.scan_keys(&self.keys.sessions_pattern())? {
            if let Some((bucket, _)) = self.keys.split(&key) {
                *counts.entry(bucket).or_default() += 1;
            }
        }
        let fail = failed("repairing the counts");
        self.with(|con| {
            let mut pipe = redis::pipe();
            for b in 0..self.keys.buckets() {
                pipe.cmd("SET")
                    .arg(self.keys.count(b))
                    .arg(counts.get(&b).copied().unwrap_or(0))
                    .ignore();
            }
            pipe.query::<()>(con).map_err(&fail)
        })
    }
}

/// The script's keys (each once) and arguments.
#[derive(Default)]
struct Program {
    keys: Vec<String>,
    index: HashMap<String, usize>,
    args: Vec<Vec<u8>>,
}

impl Program {
    /// The 1-based index of `key` in KEYS.
    fn key(&mut self, key: String) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        self.keys.push(key.clone());
        let i = self.keys.len();
        self.index.insert(key, i);
        i
    }

    /// The indexes of a session's record, its bucket's expiry index, its
    /// actor's set and its bucket's count.
    fn session_keys(
        &mut self,
        k: &Keys,
        actor_id: &str,
        digest: &Digest,
    ) -> (usize, usize, usize, usize) {
        let b = k.bucket(actor_id);
        (
            self.key(k.session(actor_id, digest)),
            self.key(k.expiries(b)),
            self.key(k.actor(actor_id)),
            self.key(k.count(b)),
        )
    }

    fn op(&mut self, code: &str, operands: &[&str]) {
        self.args.push(code.as_bytes().to_vec());
        self.args
            .extend(operands.iter().map(|o| o.as_bytes().to_vec()));
    }
}

/// Checks what the server must offer, and returns how commits are made
/// durable.
fn check_server(con: &mut Connection, durability: Durability) -> Result<Sync> {
    let fail = failed("reading the server's settings");
    let info: String = redis::cmd("INFO").arg("memory").query(con).map_err(&fail)?;
    if let Some(policy) = info_field(&info, "maxmemory_policy") {
        if policy.starts_with("allkeys-") {
            return Err(Error::InvalidConfig {
                setting: "redis_url",
                problem: format!(
                    "the server's maxmemory-policy is {policy}: it may evict sessions and their \
                     indexes; set `maxmemory-policy noeviction` (or a volatile-* policy) on the server"
                ),
            });
        }
    }
    if durability != Durability::Immediate {
        return Ok(Sync::Server);
    }
    let persistence: String = redis::cmd("INFO")
        .arg("persistence")
        .query(con)
        .map_err(&fail)?;
    let aof = info_field(&persistence, "aof_enabled") == Some("1");
    let waitaof: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("WAITAOF")
        .query(con)
        .map_err(&fail)?;
    let has_waitaof = matches!(&waitaof, redis::Value::Array(v) if v.first().is_some_and(|c| *c != redis::Value::Nil));
    if aof && has_waitaof {
        return Ok(Sync::WaitAof);
    }
    if aof && config_get(con, "appendfsync").as_deref() == Some("always") {
        return Ok(Sync::AlwaysFsync);
    }
    Err(Error::InvalidConfig {
        setting: "durability",
        problem: if aof {
            "Durability::Immediate needs the server to fsync each write: this server has no \
             WAITAOF (Redis 7.2+, Valkey 8+), so set `appendfsync always` on it"
                .into()
        } else {
            "Durability::Immediate needs the server's append-only file: set `appendonly yes` \
             (and, without WAITAOF, `appendfsync always`) on the server"
                .into()
        },
    })
}

/// Creates or checks the store's meta; returns whether the store is new and
/// its bucket count.
fn meta(con: &mut Connection, prefix: &str, wanted: Option<u32>) -> Result<(bool, u32)> {
    let fail = failed("reading the store's meta");
    let key = Keys::meta(prefix);
    let (created, _, stored): (bool, bool, HashMap<String, String>) = redis::pipe()
        .cmd("HSETNX")
        .arg(&key)
        .arg("format")
        .arg(REDIS_FORMAT)
        .cmd("HSETNX")
        .arg(&key)
        .arg("buckets")
        .arg(wanted.unwrap_or(keys::DEFAULT_BUCKETS))
        .cmd("HGETALL")
        .arg(&key)
        .query(con)
        .map_err(&fail)?;
    let corrupt = |what: &str| Error::Corrupt {
        what: format!("meta entry `{what}` of {key}"),
        problem: "missing or not a number".into(),
    };
    let format: u32 = stored
        .get("format")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt("format"))?;
    if format > REDIS_FORMAT {
        return Err(Error::NewerFormat {
            found: format,
            supported: REDIS_FORMAT,
        });
    }
    if format < REDIS_FORMAT {
        // Nodes of the older build refuse the store from their next open.
        redis::cmd("HSET")
            .arg(&key)
            .arg("format")
            .arg(REDIS_FORMAT)
            .query::<()>(con)
            .map_err(&fail)?;
    }
    let buckets: u32 = stored
        .get("buckets")
        .and_then(|v| v.parse().ok())
        .filter(|b| *b > 0)
        .ok_or_else(|| corrupt("buckets"))?;
    if let Some(w) = wanted.filter(|w| *w != buckets) {
        return Err(Error::InvalidConfig {
            setting: "redis_buckets",
            problem: format!(
                "the store under prefix {prefix:?} was created with {buckets} buckets, not {w}; \
                 leave redis_buckets unset to use the store's own"
            ),
        });
    }
    Ok((created, buckets))
}

/// Planning's view of the store: plain reads, one round trip each.
struct RedisView<'a>(&'a RedisEngine);

impl View for RedisView<'_> {
    fn record(&self, actor_id: &str, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let key = self.0.keys.session(actor_id, digest);
        self.0.with(|con| {
            redis::cmd("HGET")
                .arg(key)
                .arg("r")
                .query(con)
                .map_err(failed("reading a session"))
        })
    }

    fn records(&self, wanted: &[(&str, &Digest)]) -> Result<Vec<Option<Vec<u8>>>> {
        if wanted.len() < 2 {
            return wanted.iter().map(|(a, d)| self.record(a, d)).collect();
        }
        self.0.with(|con| {
            let mut pipe = redis::pipe();
            for (actor_id, digest) in wanted {
                pipe.cmd("HGET")
                    .arg(self.0.keys.session(actor_id, digest))
                    .arg("r");
            }
            pipe.query(con).map_err(failed("reading sessions"))
        })
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        self.0.actor_sessions(actor_id)
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
        let members: Vec<String> = self.with(|con| {
            redis::cmd("SMEMBERS")
                .arg(self.keys.actor(actor_id))
                .query(con)
                .map_err(failed("listing an actor's sessions"))
        })?;
        Ok(members.iter().filter_map(|m| Digest::from_hex(m)).collect())
    }

    fn due(&self, now: u64, limit: usize) -> Result<Vec<Due>> {
        let replies: Vec<Vec<(Vec<u8>, f64)>> = self.with(|con| {
            let mut pipe = redis::pipe();
            for b in 0..self.keys.buckets() {
                pipe.cmd("ZRANGE")
                    .arg(self.keys.expiries(b))
                    .arg("-inf")
                    .arg(now)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .arg("WITHSCORES");
            }
            pipe.query(con).map_err(failed("scanning expiries"))
        })?;
        // Bucket by bucket, from a bucket of this node's own: nodes reaping at
        // once mostly claim different sessions instead of racing for the
        // same earliest ones (each stays exactly-once either way).
        let mut replies = replies;
        let start = self.reap_start as usize % replies.len().max(1);
        replies.rotate_left(start);
        let mut due: Vec<Due> = replies
            .into_iter()
            .flatten()
            .filter_map(|(member, score)| {
                let (digest, actor_id) = parse_expiry_member(&member)?;
                Some(Due {
                    at: score as u64,
                    digest,
                    actor_id,
                })
            })
            .collect();
        due.truncate(limit);
        Ok(due)
    }

    fn next_expiry(&self) -> Result<Option<u64>> {
        let replies: Vec<Vec<(Vec<u8>, f64)>> = self.with(|con| {
            let mut pipe = redis::pipe();
            for b in 0..self.keys.buckets() {
                pipe.cmd("ZRANGE")
                    .arg(self.keys.expiries(b))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
            }
            pipe.query(con)
                .map_err(failed("reading the earliest expiry"))
        })?;
        Ok(replies
            .into_iter()
            .flatten()
            .map(|(_, score)| score as u64)
            .min())
    }

    fn session_count(&self) -> Result<Count> {
        let counts: Vec<Option<i64>> = self.with(|con| {
            let mut cmd = redis::cmd("MGET");
            for b in 0..self.keys.buckets() {
                cmd.arg(self.keys.count(b));
            }
            cmd.query(con).map_err(failed("reading the session count"))
        })?;
        Ok(Count {
            sessions: counts
                .into_iter()
                .map(|c| u64::try_from(c.unwrap_or(0)).unwrap_or(0))
                .sum(),
            exact: true,
        })
    }

    fn submit(&self, task: Arc<dyn Task>) -> Result<Ticket> {
        let outcome = {
            let _inside = self.gate.enter();
            // This node's plans for the same actors take turns: optimistic
            // commits of many local callers on one hot actor would otherwise
            // keep conflicting with each other.
            let _turn = self.turns.take(task.subjects());
            task.plan(&RedisView(self))
                .and_then(|plan| self.commit(&plan))
        };
        Ok(Ticket::answered(outcome))
    }

    fn wait(&self, ticket: Ticket) -> Result<Commit> {
        ticket
            .take()
            .unwrap_or(Err(Error::WorkerFailed { worker: "events" }))
    }

    fn flush(&self) -> Result<()> {
        match self.sync {
            Sync::WaitAof => self.wait_aof(),
            // Every reply already means fsynced, or the server's own
            // policy governs (`Durability::Periodic`).
            Sync::AlwaysFsync | Sync::Server => Ok(()),
        }
    }

    fn ping(&self) -> Result<()> {
        self.with(|con| {
            redis::cmd("PING")
                .query::<String>(con)
                .map(drop)
                .map_err(failed("pinging the server"))
        })
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

impl Upkeep for RedisEngine {
    fn quarantined(&self) -> Result<u64> {
        let lens: Vec<u64> = self.with(|con| {
            let mut pipe = redis::pipe();
            for b in 0..self.keys.buckets() {
                pipe.cmd("HLEN").arg(self.keys.quarantine(b));
            }
            pipe.query(con).map_err(failed("counting the quarantine"))
        })?;
        Ok(lens.into_iter().sum())
    }

    fn hold_writes(&self) -> Result<WritesHeld> {
        Ok(WritesHeld(Box::new(self.gate.hold())))
    }

    fn scan_records(&self, visit: &mut RecordVisit<'_>) -> Result<()> {
        let keys = self.scan_keys(&self.keys.sessions_pattern())?;
        for chunk in keys.chunks(SCAN_COUNT) {
            let records: Vec<Option<Vec<u8>>> = self.with(|con| {
                let mut pipe = redis::pipe();
                for key in chunk {
                    pipe.cmd("HGET").arg(key).arg("r");
                }
                pipe.query(con).map_err(failed("scanning sessions"))
            })?;
            for (key, record) in chunk.iter().zip(records) {
                let digest = self
                    .keys
                    .split(key)
                    .and_then(|(_, rest)| rest.strip_prefix("s:"))
                    .and_then(Digest::from_hex);
                let bytes = record.unwrap_or_default();
                let stored = Stored {
                    id: key.as_bytes(),
                    digest,
                    bytes: &bytes,
                };
                if !visit(stored)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn scan_expiries(&self, visit: &mut IndexVisit<'_, (u64, Digest)>) -> Result<()> {
        for b in 0..self.keys.buckets() {
            let key = self.keys.expiries(b);
            let entries: Vec<(Vec<u8>, f64)> = self.with(|con| {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query(con)
                    .map_err(failed("scanning expiries"))
            })?;
            for (member, score) in entries {
                let parsed = parse_expiry_member(&member)
                    .filter(|(_, actor)| self.keys.bucket(actor) == b)
                    .map(|(d, _)| (score as u64, d));
                if !visit(&entry_id(&key, &member), parsed)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn scan_actors(&self, visit: &mut IndexVisit<'_, (String, Digest)>) -> Result<()> {
        for key in self.scan_keys(&self.keys.actors_pattern())? {
            let actor = self
                .keys
                .split(&key)
                .and_then(|(_, rest)| rest.strip_prefix("a:"))
                .map(str::to_owned);
            let members: Vec<Vec<u8>> = self.with(|con| {
                redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query(con)
                    .map_err(failed("scanning actor sets"))
            })?;
            for member in members {
                let digest = std::str::from_utf8(&member).ok().and_then(Digest::from_hex);
                let parsed = actor.clone().zip(digest);
                if !visit(&entry_id(&key, &member), parsed)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The Redis engine never opens unclean (every commit is one atomic
    /// script), so its checks run with writes held, where every finding
    /// stands as found.
    fn still_needed(&self, fixes: Vec<Fix>) -> Result<Vec<Fix>> {
        Ok(fixes)
    }

    fn repair(&self, fixes: &[Fix]) -> Result<()> {
        let fail = failed("repairing");
        let k = &self.keys;
        let mut recount = false;
        self.with(|con| {
            for fix in fixes {
                match fix {
                    Fix::Quarantine { id } => {
                        let key = String::from_utf8_lossy(id).into_owned();
                        let bucket = k.split(&key).map_or(0, |(b, _)| b);
                        let name = key.rsplit(':').next().unwrap_or_default().to_owned();
                        let bytes: Option<Vec<u8>> = redis::cmd("HGET")
                            .arg(&key)
                            .arg("r")
                            .query(con)
                            .map_err(&fail)?;
                        redis::pipe()
                            .cmd("HSET")
                            .arg(k.quarantine(bucket))
                            .arg(name)
                            .arg(bytes.unwrap_or_default())
                            .ignore()
                            .cmd("DEL")
                            .arg(&key)
                            .ignore()
                            .query::<()>(con)
                            .map_err(&fail)?;
                        recount = true;
                    }
                    Fix::AddExpiry {
                        at,
                        actor_id,
                        digest,
                    } => redis::cmd("ZADD")
                        .arg(k.expiries(k.bucket(actor_id)))
                        .arg(*at)
                        .arg(expiry_member(digest, actor_id))
                        .query::<()>(con)
                        .map_err(&fail)?,
                    Fix::AddActor { actor_id, digest } => redis::cmd("SADD")
                        .arg(k.actor(actor_id))
                        .arg(digest_hex(digest))
                        .query::<()>(con)
                        .map_err(&fail)?,
                    Fix::Drop { index, id } => {
                        let (key, member) = split_entry_id(id);
                        let op = match index {
                            Index::Expiries => "ZREM",
                            Index::Actors => "SREM",
                        };
                        redis::cmd(op)
                            .arg(key)
                            .arg(member)
                            .query::<()>(con)
                            .map_err(&fail)?;
                    }
                    Fix::Count(_) => recount = true,
                }
            }
            Ok(())
        })?;
        if recount {
            self.recount()?;
        }
        self.flush()
    }
}

/// An index entry's id: its key, a NUL, its member.
fn entry_id(key: &str, member: &[u8]) -> Vec<u8> {
    let mut id = Vec::with_capacity(key.len() + 1 + member.len());
    id.extend_from_slice(key.as_bytes());
    id.push(0);
    id.extend_from_slice(member);
    id
}

fn split_entry_id(id: &[u8]) -> (&[u8], &[u8]) {
    match id.iter().position(|&b| b == 0) {
        Some(at) => (&id[..at], &id[at + 1..]),
        None => (id, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("redis://app:s3cret@db.local:6379/2"),
            "redis://app:***@db.local:6379/2"
        );
        assert_eq!(
            redacted("rediss://:s3cret@db.local"),
            "rediss://:***@db.local"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted("redis+unix:///run/r.sock?db=2&pass=s3cret"),
            "redis+unix:///run/r.sock?db=2&pass=***"
        );
        let id = entry_id("k:x", b"m\x01");
        let (key, member) = split_entry_id(&id);
        assert_eq!((key, member), (&b"k:x"[..], &b"m\x01"[..]));
    }
}
