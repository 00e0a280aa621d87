//! The embedded default backend: sled 0.34.7.
//!
//! sled facts this module designs around:
//! - a transaction serialises the whole process and forces a log-buffer
//!   write, so the committer batches many operations into one;
//! - a committed transaction is only on disk after `flush()`, and `flush()`
//!   uses `sync_file_range`, so durable flushes also fsync the `db` file;
//! - a `snap.*.generating` file left by a crash during open makes the next
//!   open fail, so `open` removes such files first;
//! - touching a `Tree` inside a transaction closure deadlocks, so the actor
//!   lists a batch needs are read before the transaction starts;
//! - `cache_capacity` defaults to 1 GiB, so it is always set;
//! - a page larger than a quarter segment (~128 KiB: a leaf of up to 17
//!   large records) is written to a file under `blobs/` that sled never
//!   fsyncs, so durable flushes fsync new blob files and their directory.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{Transactional, Tree};

use super::{decode_count, Backend, Space, Txn, Value, Visit, META_COUNT};
use crate::error::{Error, Result, StorageError};
use crate::index;
use crate::key::Digest;

fn sled_err(context: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |e| Error::Storage(StorageError::new(context, e))
}

/// How long `open` retries a directory whose lock is held before it reports
/// `InUse`. sled's background threads can hold its lock for a moment after
/// the last handle of a store closed in this same process is dropped, so an
/// immediate reopen would otherwise fail now and then.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// The store's own lock file. It is taken before anything in the directory
/// is touched (stale snapshots are removed before sled, which takes its own
/// lock, opens), and held until the backend is dropped.
const LOCK_FILE: &str = "sessiondb.lock";

/// Retries `attempt` while it reports a held lock, for up to `LOCK_WAIT`.
fn with_lock_wait<T, E>(
    mut attempt: impl FnMut() -> std::result::Result<T, E>,
    held: impl Fn(&E) -> bool,
) -> std::result::Result<T, E> {
    let started = Instant::now();
    loop {
        match attempt() {
            Err(e) if held(&e) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => return other,
        }
    }
}

/// Takes the store's lock file, or reports `InUse`.
fn lock_store(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let io = |source| Error::Io {
        action: "opening the lock file",
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match with_lock_wait(
        || file.try_lock(),
        |e| matches!(e, std::fs::TryLockError::WouldBlock),
    ) {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::InUse {
            path: dir.to_path_buf(),
            source: StorageError::new("locking the store", format!("{} is locked", path.display())),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Whether sled failed to open because another handle holds the lock.
fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// A store directory opened with sled.
pub(crate) struct SledBackend {
    db: sled::Db,
    sessions: Tree,
    expiries: Tree,
    actors: Tree,
    meta: Tree,
    quarantine: Tree,
    /// The `db` file, fsynced by durable flushes.
    db_file: File,
    /// The `blobs` directory and the blob files already fsynced.
    blobs: PathBuf,
    synced_blobs: Mutex<HashSet<OsString>>,
    /// Held for the backend's life; declared last so that it is released
    /// after sled's handles are dropped.
    _lock: File,
}

/// What `open` found on disk before sled started.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct OpenFacts {
    pub created: bool,
    pub stale_snapshots_removed: usize,
}

/// Removes `snap.*.generating` files that a crash during a previous open
/// left behind; sled refuses to open while one exists.
fn remove_stale_snapshots(dir: &Path) -> Result<usize> {
    let io = |action: &'static str, path: PathBuf| {
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io("reading store directory", dir.to_path_buf()))? {
        let entry = entry.map_err(io("reading store directory", dir.to_path_buf()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())
                .map_err(io("removing stale snapshot", entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            action: "syncing directory",
            path: dir.to_path_buf(),
            source,
        })
}

impl SledBackend {
    pub fn open(
        path: &Path,
        cache_capacity: u64,
        flush_every_ms: Option<u64>,
    ) -> Result<(SledBackend, OpenFacts)> {
        // A store is new when sled has not written its config yet, whether or
        // not the directory already existed (a tempdir, a mounted volume).
        let mut facts = OpenFacts {
            created: !path.join("conf").exists(),
            ..OpenFacts::default()
        };
        if !path.exists() {
            std::fs::create_dir_all(path).map_err(|source| Error::Io {
                action: "creating store directory",
                path: path.to_path_buf(),
                source,
            })?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent)?;
            }
        } else if !path.is_dir() {
            return Err(Error::Io {
                action: "opening store directory",
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let lock = lock_store(path)?;
        facts.stale_snapshots_removed = remove_stale_snapshots(path)?;
        let open_sled = || {
            sled::Config::new()
                .path(path)
                .cache_capacity(cache_capacity)
                .flush_every_ms(flush_every_ms)
                .open()
        };
        let db = with_lock_wait(open_sled, is_lock_conflict).map_err(|e| match e {
            e if is_lock_conflict(&e) => Error::InUse {
                path: path.to_path_buf(),
                source: StorageError::new("locking the store", e),
            },
            other => Error::Storage(StorageError::new("opening the store", other)),
        })?;
        let tree = |name: &str| db.open_tree(name).map_err(sled_err("opening a tree"));
        let backend = SledBackend {
            sessions: tree("sessions")?,
            expiries: tree("expiries")?,
            actors: tree("actors")?,
            meta: tree("meta")?,
            quarantine: tree("quarantine")?,
            db_file: File::open(path.join("db")).map_err(|source| Error::Io {
                action: "opening for fsync",
                path: path.join("db"),
                source,
            })?,
            blobs: path.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
            db,
            _lock: lock,
        };
        if facts.created {
            backend.flush(true)?;
            fsync_dir(path)?;
        }
        Ok((backend, facts))
    }

    /// fsyncs blob files written since the last durable flush, and the
    /// blobs directory when it gained files. Usually the directory is empty
    /// and this is one `readdir`.
    fn sync_blobs(&self) -> Result<()> {
        let io = |action: &'static str, path: PathBuf| {
            move |source| Error::Io {
                action,
                path,
                source,
            }
        };
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("reading", self.blobs.clone())(e)),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut present = HashSet::with_capacity(synced.len());
        let mut gained = false;
        for entry in entries {
            let entry = entry.map_err(io("reading", self.blobs.clone()))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                File::open(entry.path())
                    .and_then(|f| f.sync_all())
                    .map_err(io("fsyncing", entry.path()))?;
                gained = true;
            }
            present.insert(name);
        }
        // Blobs sled removed are forgotten, so the set stays small.
        *synced = present;
        if gained {
            fsync_dir(&self.blobs)?;
        }
        Ok(())
    }

    fn tree(&self, space: Space) -> &Tree {
        match space {
            Space::Sessions => &self.sessions,
            Space::Expiries => &self.expiries,
            Space::Actors => &self.actors,
            Space::Meta => &self.meta,
            Space::Quarantine => &self.quarantine,
        }
    }

    /// One attempt at a batch: runs `body` in a sled transaction with the
    /// actor lists read so far. When `body` lists an actor not among them,
    /// the attempt is abandoned with that actor left in `unlisted`.
    fn transact_with(
        &self,
        lists: &HashMap<String, Vec<Digest>>,
        unlisted: &RefCell<Option<String>>,
        body: &dyn Fn(&dyn Txn) -> Result<()>,
    ) -> Result<()> {
        let outcome = (&self.sessions, &self.expiries, &self.actors, &self.meta).transaction(
            |(s, e, a, m)| {
                let txn = SledTxn {
                    sessions: s,
                    expiries: e,
                    actors: a,
                    lists: RefCell::new(lists.clone()),
                    unlisted,
                    count_delta: Cell::new(0),
                    failure: RefCell::new(None),
                };
                let result = body(&txn);
                if let Some(failure) = txn.failure.take() {
                    return Err(failure.into());
                }
                if let Err(e) = result {
                    return Err(ConflictableTransactionError::Abort(e));
                }
                let delta = txn.count_delta.get();
                if delta != 0 {
                    let count = decode_count(m.get(META_COUNT)?.as_deref());
                    let count = count.saturating_add_signed(delta);
                    m.insert(META_COUNT, &count.to_be_bytes())?;
                }
                Ok(())
            },
        );
        match outcome {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => {
                Err(Error::Storage(StorageError::new("committing a batch", e)))
            }
        }
    }
}

impl Backend for SledBackend {
    fn get(&self, digest: &Digest) -> Result<Option<Value>> {
        self.sessions
            .get(digest.0)
            .map_err(sled_err("reading a session"))
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        let prefix = index::actor_prefix(actor_id);
        let mut out = Vec::new();
        for kv in self.actors.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(sled_err("listing an actor's sessions"))?;
            if let Some(d) = Digest::from_slice(&k[prefix.len()..]) {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn due(&self, now: u64, limit: usize) -> Result<Vec<(u64, Digest)>> {
        let mut out = Vec::new();
        for kv in self
            .expiries
            .range(..index::expiry_scan_end(now))
            .take(limit)
        {
            let (k, _) = kv.map_err(sled_err("scanning expiries"))?;
            if let Some(entry) = index::parse_expiry_key(&k) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    fn next_expiry(&self) -> Result<Option<u64>> {
        Ok(self
            .expiries
            .first()
            .map_err(sled_err("reading the earliest expiry"))?
            .and_then(|(k, _)| index::parse_expiry_key(&k))
            .map(|(at, _)| at))
    }

    fn session_count(&self) -> Result<u64> {
        Ok(decode_count(
            self.meta
                .get(META_COUNT)
                .map_err(sled_err("reading the session count"))?
                .as_deref(),
        ))
    }

    fn transact(&self, actors: &[&str], body: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        // Read outside the transaction: a Tree touched inside the closure
        // deadlocks. Only the committer writes, so these lists stay current
        // until the transaction starts, and the transaction keeps them
        // current as it changes them.
        let mut lists = HashMap::with_capacity(actors.len());
        for actor in actors {
            if !lists.contains_key(*actor) {
                lists.insert((*actor).to_owned(), self.actor_sessions(actor)?);
            }
        }
        loop {
            let unlisted = RefCell::new(None);
            let outcome = self.transact_with(&lists, &unlisted, body);
            match unlisted.into_inner() {
                // The body asked for an actor nobody named: list it and run
                // the batch again (rare: a session that vanished or names
                // another actor, where the reason depends on the actor).
                Some(actor) if outcome.is_err() => {
                    let list = self.actor_sessions(&actor)?;
                    lists.insert(actor, list);
                }
                _ => return outcome,
            }
        }
    }

    fn flush(&self, sync: bool) -> Result<()> {
        self.db.flush().map_err(sled_err("flushing"))?;
        if sync {
            self.db_file.sync_all().map_err(|source| Error::Io {
                action: "fsyncing",
                path: PathBuf::from("db"),
                source,
            })?;
            self.sync_blobs()?;
        }
        Ok(())
    }

    fn scan(&self, space: Space, f: &mut Visit<'_>) -> Result<()> {
        for kv in self.tree(space).iter() {
            let (k, v) = kv.map_err(sled_err("scanning"))?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn raw_get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree(space)
            .get(key)
            .map_err(sled_err("reading"))?
            .map(|v| v.to_vec()))
    }

    fn raw_insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree(space)
            .insert(key, value)
            .map_err(sled_err("writing"))?;
        Ok(())
    }

    fn raw_remove(&self, space: Space, key: &[u8]) -> Result<()> {
        self.tree(space).remove(key).map_err(sled_err("removing"))?;
        Ok(())
    }
}

/// One sled transaction seen through [`Txn`].
struct SledTxn<'a> {
    sessions: &'a TransactionalTree,
    expiries: &'a TransactionalTree,
    actors: &'a TransactionalTree,
    /// Actor lists read before the transaction, kept current by it.
    lists: RefCell<HashMap<String, Vec<Digest>>>,
    /// An actor the body asked to list that is not in `lists`.
    unlisted: &'a RefCell<Option<String>>,
    count_delta: Cell<i64>,
    /// The first sled error (a conflict or an I/O failure); it decides how
    /// the transaction ends, whatever the body returns.
    failure: RefCell<Option<UnabortableTransactionError>>,
}

impl SledTxn<'_> {
    fn check<T>(&self, r: std::result::Result<T, UnabortableTransactionError>) -> Result<T> {
        r.map_err(|e| {
            let message = e.to_string();
            self.failure.borrow_mut().get_or_insert(e);
            Error::Storage(StorageError::new("in a transaction", message))
        })
    }
}

impl Txn for SledTxn<'_> {
    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        Ok(self.check(self.sessions.get(digest.0))?.map(|v| v.to_vec()))
    }

    fn put(&self, digest: &Digest, record: Vec<u8>) -> Result<()> {
        self.check(self.sessions.insert(&digest.0, record))
            .map(drop)
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        self.check(self.sessions.remove(&digest.0)).map(drop)
    }

    fn insert_expiry(&self, expires_at: u64, digest: &Digest) -> Result<()> {
        self.check(
            self.expiries
                .insert(&index::expiry_key(expires_at, digest)[..], &[]),
        )
        .map(drop)
    }

    fn remove_expiry(&self, expires_at: u64, digest: &Digest) -> Result<()> {
        self.check(
            self.expiries
                .remove(&index::expiry_key(expires_at, digest)[..]),
        )
        .map(drop)
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        self.lists.borrow().get(actor_id).cloned().ok_or_else(|| {
            *self.unlisted.borrow_mut() = Some(actor_id.to_owned());
            // A storage error makes the committer give up this attempt.
            Error::Storage(StorageError::new(
                "in a transaction",
                format!("actor {actor_id:?} must be listed first"),
            ))
        })
    }

    fn insert_actor(&self, actor_id: &str, digest: &Digest) -> Result<()> {
        self.check(self.actors.insert(index::actor_key(actor_id, digest), &[]))?;
        if let Some(list) = self.lists.borrow_mut().get_mut(actor_id) {
            if !list.contains(digest) {
                list.push(*digest);
            }
        }
        Ok(())
    }

    fn remove_actor(&self, actor_id: &str, digest: &Digest) -> Result<()> {
        self.check(self.actors.remove(index::actor_key(actor_id, digest)))?;
        if let Some(list) = self.lists.borrow_mut().get_mut(actor_id) {
            list.retain(|d| d != digest);
        }
        Ok(())
    }

    fn add_count(&self, delta: i64) {
        self.count_delta.set(self.count_delta.get() + delta);
    }
}
