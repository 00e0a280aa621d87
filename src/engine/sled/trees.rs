//! The open sled database: its trees, reads outside transactions, the
//! batch transaction, flushes, and whole-tree scans and repairs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use super::files::{self, DurableFiles};
use super::layout::{self, decode_count, META_CLEAN, META_COUNT};
use super::txn::SledTxn;
use crate::engine::{Due, Fix, Index, IndexVisit, RecordVisit, Stored};
use crate::error::{Error, Result, StorageError};
use crate::key::Digest;

pub(crate) fn sled_err(context: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |e| Error::Storage(StorageError::new(context, e))
}

/// Whether sled failed to open because another handle holds the lock.
fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

pub(crate) struct Trees {
    db: sled::Db,
    pub sessions: Tree,
    pub expiries: Tree,
    pub actors: Tree,
    pub meta: Tree,
    quarantine: Tree,
    /// The session count, kept here rather than in every transaction (one
    /// key fewer written per insert or delete); stored at a clean close,
    /// recounted by the check after an unclean one.
    count: AtomicU64,
    /// Whether `count` is exact: after a clean close, or once the check has
    /// recounted.
    count_known: AtomicBool,
    files: DurableFiles,
    /// Held for the store's life; declared last so that it is released
    /// after sled's handles are dropped.
    _lock: File,
}

/// What opening the directory found before sled started.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DirFacts {
    pub created: bool,
    pub stale_snapshots_removed: usize,
}

impl Trees {
    pub fn open(
        path: &Path,
        cache_capacity: u64,
        flush_every_ms: Option<u64>,
    ) -> Result<(Trees, DirFacts)> {
        // A store is new when sled has not written its config yet, whether or
        // not the directory already existed (a tempdir, a mounted volume).
        let mut facts = DirFacts {
            created: !path.join("conf").exists(),
            ..DirFacts::default()
        };
        files::ensure_dir(path)?;
        let lock = files::lock_store(path)?;
        facts.stale_snapshots_removed = files::remove_stale_snapshots(path)?;
        let open_sled = || {
            sled::Config::new()
                .path(path)
                .cache_capacity(cache_capacity)
                .flush_every_ms(flush_every_ms)
                .open()
        };
        let db = files::with_lock_wait(open_sled, is_lock_conflict).map_err(|e| match e {
            e if is_lock_conflict(&e) => Error::InUse {
                path: path.to_path_buf(),
                source: StorageError::new("locking the store", e),
            },
            other => Error::Storage(StorageError::new("opening the store", other)),
        })?;
        let tree = |name: &str| db.open_tree(name).map_err(sled_err("opening a tree"));
        let meta = tree("meta")?;
        // Exact in a new store, and after a clean close.
        let count_known = facts.created
            || meta
                .get(META_CLEAN)
                .map_err(sled_err("reading the store's meta"))?
                .is_some_and(|v| v == [1]);
        let count = decode_count(
            meta.get(META_COUNT)
                .map_err(sled_err("reading the session count"))?
                .as_deref(),
        );
        let trees = Trees {
            sessions: tree("sessions")?,
            expiries: tree("expiries")?,
            actors: tree("actors")?,
            meta,
            quarantine: tree("quarantine")?,
            count: AtomicU64::new(count),
            count_known: AtomicBool::new(count_known),
            files: DurableFiles::open(path)?,
            db,
            _lock: lock,
        };
        if facts.created {
            trees.flush(true)?;
            files::fsync_dir(path)?;
        }
        Ok((trees, facts))
    }

    pub fn read_record(&self, digest: &Digest, read: &mut dyn FnMut(&[u8])) -> Result<bool> {
        match self
            .sessions
            .get(digest.0)
            .map_err(sled_err("reading a session"))?
        {
            Some(bytes) => {
                read(&bytes);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Due entries; sled keys records by digest alone, so no actor.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<Due>> {
        let mut out = Vec::new();
        for kv in self
            .expiries
            .range(..layout::expiry_scan_end(now))
            .take(limit)
        {
            let (k, _) = kv.map_err(sled_err("scanning expiries"))?;
            if let Some((at, digest)) = layout::parse_expiry_key(&k) {
                out.push(Due {
                    at,
                    digest,
                    actor_id: String::new(),
                });
            }
        }
        Ok(out)
    }

    pub fn next_expiry(&self) -> Result<Option<u64>> {
        Ok(self
            .expiries
            .first()
            .map_err(sled_err("reading the earliest expiry"))?
            .and_then(|(k, _)| layout::parse_expiry_key(&k))
            .map(|(at, _)| at))
    }

    pub fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        let prefix = layout::actor_prefix(actor_id);
        let mut out = Vec::new();
        for kv in self.actors.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(sled_err("listing an actor's sessions"))?;
            if let Some(d) = Digest::from_slice(&k[prefix.len()..]) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The session count, `None` while it is not known (after an unclean
    /// shutdown, until the check recounts).
    pub fn session_count(&self) -> Option<u64> {
        let count = self.count.load(Ordering::Relaxed);
        self.count_known.load(Ordering::Relaxed).then_some(count)
    }

    /// Stores the session count (at a clean close).
    pub fn store_count(&self) -> Result<()> {
        let count = self.count.load(Ordering::Relaxed);
        self.set_meta(META_COUNT, Some(&count.to_be_bytes()))
    }

    pub fn quarantined(&self) -> u64 {
        self.quarantine.len() as u64
    }

    pub fn meta(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        self.meta
            .get(key)
            .map_err(sled_err("reading the store's meta"))
    }

    pub fn set_meta(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        match value {
            Some(v) => self.meta.insert(key, v).map(drop),
            None => self.meta.remove(key).map(drop),
        }
        .map_err(sled_err("writing the store's meta"))
    }

    /// Runs `body` in one sled transaction over every tree the session logic
    /// writes, with `actors`' session lists read up front: a `Tree` touched
    /// inside the closure deadlocks. Only the committer writes, so these
    /// lists stay current until the transaction starts, and the transaction
    /// keeps them current as it changes them. When `body` lists an actor not
    /// read up front, the attempt is abandoned, the actor listed, and `body`
    /// run again (rare: a session that vanished or names another actor,
    /// where the outcome depends on the actor's other sessions).
    pub fn transact(
        &self,
        actors: &[&str],
        body: &dyn Fn(&SledTxn<'_>) -> Result<()>,
    ) -> Result<()> {
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
                Some(actor) if outcome.is_err() => {
                    let list = self.actor_sessions(&actor)?;
                    lists.insert(actor, list);
                }
                _ => {
                    let delta = outcome?;
                    // Only the writer changes the count, one batch at a time.
                    let count = self.count.load(Ordering::Relaxed);
                    let count = count.saturating_add_signed(delta);
                    self.count.store(count, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
    }

    fn transact_with(
        &self,
        lists: &HashMap<String, Vec<Digest>>,
        unlisted: &RefCell<Option<String>>,
        body: &dyn Fn(&SledTxn<'_>) -> Result<()>,
    ) -> Result<i64> {
        let outcome = (&self.sessions, &self.expiries, &self.actors).transaction(|(s, e, a)| {
            let txn = SledTxn::new(s, e, a, lists.clone(), unlisted);
            let result = body(&txn);
            if let Some(failure) = txn.take_failure() {
                return Err(failure.into());
            }
            if let Err(e) = result {
                return Err(ConflictableTransactionError::Abort(e));
            }
            Ok(txn.count_delta())
        });
        match outcome {
            Ok(delta) => Ok(delta),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => {
                Err(Error::Storage(StorageError::new("committing a batch", e)))
            }
        }
    }

    /// Writes every committed transaction to the log; with `sync`, also
    /// fsyncs what sled leaves in the disk cache.
    pub fn flush(&self, sync: bool) -> Result<()> {
        self.db.flush().map_err(sled_err("flushing"))?;
        if sync {
            self.files.sync()?;
        }
        Ok(())
    }

    pub fn scan_records(&self, visit: &mut RecordVisit<'_>) -> Result<()> {
        for kv in self.sessions.iter() {
            let (k, v) = kv.map_err(sled_err("scanning sessions"))?;
            let stored = Stored {
                id: &k,
                digest: Digest::from_slice(&k),
                bytes: &v,
            };
            if !visit(stored)? {
                break;
            }
        }
        Ok(())
    }

    pub fn scan_index<T>(
        &self,
        index: Index,
        parse: impl Fn(&[u8]) -> Option<T>,
        visit: &mut IndexVisit<'_, T>,
    ) -> Result<()> {
        for kv in self.index(index).iter() {
            let (k, _) = kv.map_err(sled_err("scanning an index"))?;
            if !visit(&k, parse(&k))? {
                break;
            }
        }
        Ok(())
    }

    fn index(&self, index: Index) -> &Tree {
        match index {
            Index::Expiries => &self.expiries,
            Index::Actors => &self.actors,
        }
    }

    /// Applies repairs tree by tree (the writers are stopped), then fsyncs.
    pub fn repair(&self, fixes: &[Fix]) -> Result<()> {
        let fail = || sled_err("repairing");
        for fix in fixes {
            match fix {
                Fix::Quarantine { id } => {
                    if let Some(bytes) = self.sessions.remove(id).map_err(fail())? {
                        self.quarantine.insert(id, bytes).map_err(fail())?;
                    }
                }
                Fix::AddExpiry { at, digest, .. } => {
                    self.expiries
                        .insert(layout::expiry_key(*at, digest), &[])
                        .map_err(fail())?;
                }
                Fix::AddActor { actor_id, digest } => {
                    self.actors
                        .insert(layout::actor_key(actor_id, digest), &[])
                        .map_err(fail())?;
                }
                Fix::Drop { index, id } => {
                    self.index(*index).remove(id).map_err(fail())?;
                }
                Fix::Count(n) => {
                    self.count.store(*n, Ordering::Relaxed);
                    self.count_known.store(true, Ordering::Relaxed);
                }
            }
        }
        self.flush(true)
    }
}
