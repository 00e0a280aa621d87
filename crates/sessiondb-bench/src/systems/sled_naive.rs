//! sled 0.34.7 used directly, the obvious way: the same three trees as
//! sessiondb (`sessions`, `expiries`, `actors`), one multi-tree transaction
//! per operation from the caller's thread, plain `Tree::get` for reads.
//! Also the `sled_raw_get` reference row: `Tree::get` of sessiondb's own
//! records (its directory opened with sled after a close) by a precomputed
//! digest, nothing else.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use super::{System, Worker};
use crate::clock::BenchClock;
use crate::shape::{self, actor_key, expiry_key, Key, Record};

/// The cache sessiondb configures by default (64 MiB), so that both hold
/// the same amount in memory.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Sessions the reaper collects per scan (each then deleted in its own
/// transaction).
const REAP_SCAN: usize = 1_000;

/// Opens a sled database the way sessiondb does (same cache, same flush
/// interval). sled releases its file lock asynchronously after a close, so
/// a directory just closed (by sessiondb or by this harness) is retried for
/// up to 10 s, as `SessionStore::open` does.
pub fn open_db(dir: &Path) -> Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(Some(500))
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.with_context(|| format!("opening sled at {}", dir.display())),
        }
    }
}

#[derive(Clone)]
struct Trees {
    sessions: Tree,
    expiries: Tree,
    actors: Tree,
}

pub struct SledNaive {
    pub db: sled::Db,
    trees: Trees,
    clock: BenchClock,
}

fn txn_err(e: TransactionError<String>) -> anyhow::Error {
    match e {
        TransactionError::Abort(reason) => anyhow!(reason),
        TransactionError::Storage(e) => anyhow!(e).context("sled transaction"),
    }
}

fn abort(e: impl std::fmt::Display) -> ConflictableTransactionError<String> {
    ConflictableTransactionError::Abort(e.to_string())
}

impl SledNaive {
    pub fn open(dir: &Path, clock: &BenchClock) -> Result<SledNaive> {
        let db = open_db(dir)?;
        let trees = Trees {
            sessions: db.open_tree("sessions")?,
            expiries: db.open_tree("expiries")?,
            actors: db.open_tree("actors")?,
        };
        Ok(SledNaive {
            db,
            trees,
            clock: clock.clone(),
        })
    }
}

struct SledWorker {
    t: Trees,
    clock: BenchClock,
}

impl SledWorker {
    /// Moves the session's expiry to now + TTL in one transaction.
    fn touch(&self, key: &Key) -> Result<()> {
        let (actor, secret) = shape::split_key(&key.full)?;
        let d = shape::digest(secret);
        let now = self.clock.now_ms();
        let t = &self.t;
        (&t.sessions, &t.expiries, &t.actors)
            .transaction(|(s, e, _a)| {
                let bytes = s.get(d)?.ok_or_else(|| abort("noSession"))?;
                let mut rec = Record::decode(&bytes).map_err(abort)?;
                rec.check(actor, now).map_err(abort)?;
                e.remove(&expiry_key(rec.expires_at, &d)[..])?;
                rec.expires_at = now + shape::ttl_ms();
                e.insert(&expiry_key(rec.expires_at, &d)[..], &[][..])?;
                s.insert(&d[..], rec.encode())?;
                Ok(())
            })
            .map_err(txn_err)
    }
}

impl Worker for SledWorker {
    fn register(&mut self, actor: &str) -> Result<String> {
        let secret = shape::new_secret()?;
        let d = shape::digest(&secret);
        let rec = Record::new(actor, self.clock.now_ms())?;
        let bytes = rec.encode();
        let ek = expiry_key(rec.expires_at, &d);
        let ak = actor_key(actor, &d);
        let t = &self.t;
        (&t.sessions, &t.expiries, &t.actors)
            .transaction(|(s, e, a)| {
                s.insert(&d[..], bytes.as_slice())?;
                e.insert(&ek[..], &[][..])?;
                a.insert(ak.as_slice(), &[][..])?;
                Ok(())
            })
            .map_err(txn_err)?;
        Ok(format!("{actor}:{secret}"))
    }

    fn resolve(&mut self, key: &Key) -> Result<()> {
        let (actor, secret) = shape::split_key(&key.full)?;
        let now = self.clock.now_ms();
        let bytes = self
            .t
            .sessions
            .get(shape::digest(secret))?
            .context("noSession")?;
        let rec = Record::decode(&bytes)?;
        rec.check(actor, now)?;
        if rec.needs_touch(now) {
            self.touch(key)?;
        }
        Ok(())
    }

    fn extend(&mut self, key: &Key) -> Result<()> {
        self.touch(key)
    }

    fn set_data(&mut self, key: &Key, score: u64) -> Result<()> {
        let (actor, secret) = shape::split_key(&key.full)?;
        let d = shape::digest(secret);
        let now = self.clock.now_ms();
        let data = shape::data_bytes(score);
        let t = &self.t;
        (&t.sessions, &t.expiries, &t.actors)
            .transaction(|(s, _e, _a)| {
                let bytes = s.get(d)?.ok_or_else(|| abort("noSession"))?;
                let mut rec = Record::decode(&bytes).map_err(abort)?;
                rec.check(actor, now).map_err(abort)?;
                rec.data.clone_from(&data);
                s.insert(&d[..], rec.encode())?;
                Ok(())
            })
            .map_err(txn_err)
    }
}

impl System for SledNaive {
    fn name(&self) -> String {
        "sled_naive".into()
    }

    fn worker(&self) -> Result<Box<dyn Worker + '_>> {
        Ok(Box::new(SledWorker {
            t: self.trees.clone(),
            clock: self.clock.clone(),
        }))
    }

    fn reap(&self) -> Result<usize> {
        let t = &self.trees;
        let mut total = 0;
        loop {
            let now = self.clock.now_ms();
            let end = (now + 1).to_be_bytes();
            let due: Vec<sled::IVec> = t
                .expiries
                .range(..&end[..])
                .keys()
                .take(REAP_SCAN)
                .collect::<std::result::Result<_, _>>()?;
            if due.is_empty() {
                return Ok(total);
            }
            for ek in &due {
                let d: [u8; 32] = ek[8..].try_into()?;
                (&t.sessions, &t.expiries, &t.actors)
                    .transaction(|(s, e, a)| {
                        if let Some(bytes) = s.remove(&d[..])? {
                            let rec = Record::decode(&bytes).map_err(abort)?;
                            a.remove(actor_key(&rec.actor, &d))?;
                        }
                        e.remove(ek)?;
                        Ok(())
                    })
                    .map_err(txn_err)?;
            }
            total += due.len();
        }
    }
}

/// `Tree::get` of a session record by its key: what a read costs sled with
/// no key parsing, hashing, decoding or checking.
pub struct RawGet {
    _db: sled::Db,
    records: Tree,
}

impl RawGet {
    /// Opens the `records` tree of a closed sessiondb store with sled
    /// itself, so that the row reads sessiondb's very records.
    pub fn open_sessiondb_dir(dir: &Path) -> Result<RawGet> {
        let db = open_db(dir)?;
        let records = db.open_tree("records")?;
        Ok(RawGet { _db: db, records })
    }
}

/// sessiondb's key of a session's record (store format 3,
/// `docs/format.md`): actor id length, actor id, digest.
fn sessiondb_record_key(key: &Key) -> Vec<u8> {
    let actor = key.full.rsplit_once(':').map_or("", |(a, _)| a);
    let mut k = Vec::with_capacity(1 + actor.len() + key.digest.len());
    k.push(actor.len() as u8);
    k.extend_from_slice(actor.as_bytes());
    k.extend_from_slice(&key.digest);
    k
}

struct RawGetWorker {
    records: Tree,
}

impl Worker for RawGetWorker {
    fn register(&mut self, _actor: &str) -> Result<String> {
        anyhow::bail!("sled_raw_get only reads")
    }

    fn resolve(&mut self, key: &Key) -> Result<()> {
        self.records
            .get(sessiondb_record_key(key))?
            .context("missing record")?;
        Ok(())
    }

    fn extend(&mut self, _key: &Key) -> Result<()> {
        anyhow::bail!("sled_raw_get only reads")
    }

    fn set_data(&mut self, _key: &Key, _score: u64) -> Result<()> {
        anyhow::bail!("sled_raw_get only reads")
    }
}

impl System for RawGet {
    fn name(&self) -> String {
        "sled_raw_get".into()
    }

    fn worker(&self) -> Result<Box<dyn Worker + '_>> {
        Ok(Box::new(RawGetWorker {
            records: self.records.clone(),
        }))
    }
}
