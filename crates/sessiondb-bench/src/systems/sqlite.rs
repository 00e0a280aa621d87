//! SQLite (rusqlite, bundled) the usual way: one table with an indexed
//! expiry column and an indexed actor column, WAL, one transaction per
//! operation, one connection per client thread.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{System, Worker};
use crate::clock::BenchClock;
use crate::shape::{self, Key, Record};

/// Rows the reaper deletes per transaction.
const REAP_BATCH: usize = 1_000;
/// Rows per transaction when preloading (not timed).
const PRELOAD_BATCH: usize = 10_000;

/// `PRAGMA synchronous` of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// WAL with `synchronous=NORMAL`: durable up to the last checkpoint-ish
    /// fsync; a power loss may lose the latest commits.
    Normal,
    /// `synchronous=FULL`: every commit fsyncs the WAL.
    Full,
}

pub struct Sqlite {
    path: PathBuf,
    sync: Synchronous,
    clock: BenchClock,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    digest     BLOB PRIMARY KEY,
    actor      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    id         TEXT NOT NULL,
    language   TEXT NOT NULL,
    data       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions(expires_at);
CREATE INDEX IF NOT EXISTS sessions_by_actor ON sessions(actor);
";

impl Sqlite {
    /// Opens (or creates) `dir/sessions.db`.
    pub fn open(dir: &Path, sync: Synchronous, clock: &BenchClock) -> Result<Sqlite> {
        std::fs::create_dir_all(dir)?;
        let s = Sqlite {
            path: dir.join("sessions.db"),
            sync,
            clock: clock.clone(),
        };
        s.connect()?.execute_batch(SCHEMA)?;
        Ok(s)
    }

    /// A new connection with the row's settings.
    pub fn connect(&self) -> Result<Connection> {
        let c = Connection::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        c.busy_timeout(Duration::from_secs(60))?;
        let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("SQLite refused WAL mode ({mode})");
        }
        let sync = match self.sync {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        c.pragma_update(None, "synchronous", sync)?;
        Ok(c)
    }

    /// Open as a server would at start: a connection and its first query.
    pub fn open_and_query(dir: &Path, sync: Synchronous, clock: &BenchClock) -> Result<()> {
        let s = Sqlite {
            path: dir.join("sessions.db"),
            sync,
            clock: clock.clone(),
        };
        let c = s.connect()?;
        let _: Option<i64> = c
            .query_row("SELECT expires_at FROM sessions LIMIT 1", [], |r| r.get(0))
            .optional()?;
        Ok(())
    }
}

struct SqliteWorker {
    conn: Connection,
    clock: BenchClock,
}

fn insert(conn: &Connection, actor: &str, digest: &[u8; 32], rec: &Record) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions (digest, actor, expires_at, created_at, id, language, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        &digest[..],
        actor,
        rec.expires_at as i64,
        rec.created_at as i64,
        rec.id,
        rec.language,
        rec.data,
    ])?;
    Ok(())
}

impl SqliteWorker {
    fn touch(&mut self, key: &Key) -> Result<()> {
        let (actor, secret) = shape::split_key(&key.full)?;
        let d = shape::digest(secret);
        let now = self.clock.now_ms() as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let data: Option<Vec<u8>> = tx
            .prepare_cached(
                "UPDATE sessions SET expires_at = ?1
                 WHERE digest = ?2 AND actor = ?3 AND expires_at > ?4 RETURNING data",
            )?
            .query_row(
                params![now + shape::ttl_ms() as i64, &d[..], actor, now],
                |r| r.get(0),
            )
            .optional()?;
        tx.commit()?;
        data.map(drop).context("noSession")
    }
}

impl Worker for SqliteWorker {
    fn register(&mut self, actor: &str) -> Result<String> {
        let secret = shape::new_secret()?;
        let d = shape::digest(&secret);
        let rec = Record::new(actor, self.clock.now_ms())?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert(&tx, actor, &d, &rec)?;
        tx.commit()?;
        Ok(format!("{actor}:{secret}"))
    }

    fn resolve(&mut self, key: &Key) -> Result<()> {
        let (actor, secret) = shape::split_key(&key.full)?;
        let d = shape::digest(secret);
        let now = self.clock.now_ms();
        let (stored_actor, expires_at, _data): (String, i64, Vec<u8>) = self
            .conn
            .prepare_cached("SELECT actor, expires_at, data FROM sessions WHERE digest = ?1")?
            .query_row(params![&d[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .context("noSession")?;
        if stored_actor != actor {
            bail!("keyMismatch");
        }
        let expires_at = expires_at as u64;
        if expires_at <= now {
            bail!("expired");
        }
        if now + shape::ttl_ms() >= expires_at + shape::touch_ms() {
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
        let now = self.clock.now_ms() as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx
            .prepare_cached(
                "UPDATE sessions SET data = ?1 WHERE digest = ?2 AND actor = ?3 AND expires_at > ?4",
            )?
            .execute(params![shape::data_bytes(score), &d[..], actor, now])?;
        tx.commit()?;
        if changed != 1 {
            bail!("noSession");
        }
        Ok(())
    }
}

impl System for Sqlite {
    fn name(&self) -> String {
        match self.sync {
            Synchronous::Normal => "sqlite_normal".into(),
            Synchronous::Full => "sqlite_full".into(),
        }
    }

    fn worker(&self) -> Result<Box<dyn Worker + '_>> {
        Ok(Box::new(SqliteWorker {
            conn: self.connect()?,
            clock: self.clock.clone(),
        }))
    }

    fn reap(&self) -> Result<usize> {
        let mut conn = self.connect()?;
        let mut total = 0;
        loop {
            let now = self.clock.now_ms() as i64;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx
                .prepare_cached(
                    "DELETE FROM sessions WHERE digest IN
                     (SELECT digest FROM sessions WHERE expires_at <= ?1 LIMIT ?2)",
                )?
                .execute(params![now, REAP_BATCH as i64])?;
            tx.commit()?;
            total += n;
            if n < REAP_BATCH {
                return Ok(total);
            }
        }
    }

    /// Batched inserts from one connection: loading is not what is measured.
    fn preload(
        &self,
        n: usize,
        _threads: usize,
        actor_prefix: &str,
        keep: bool,
    ) -> Result<Vec<Key>> {
        let mut conn = self.connect()?;
        let mut keys = Vec::new();
        let mut done = 0;
        while done < n {
            let tx = conn.transaction()?;
            for _ in 0..PRELOAD_BATCH.min(n - done) {
                let actor = shape::next_actor(actor_prefix);
                let secret = shape::new_secret()?;
                let d = shape::digest(&secret);
                insert(&tx, &actor, &d, &Record::new(&actor, self.clock.now_ms())?)?;
                if keep {
                    keys.push(Key {
                        full: format!("{actor}:{secret}"),
                        digest: d,
                    });
                }
                done += 1;
            }
            tx.commit()?;
        }
        Ok(keys)
    }
}
