//! The open sled database: its trees, reads, the single-key writes a plan
//! commits in order, the session count and its recount, and flushes.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use sled::{IVec, Tree};

use super::files::{self, DurableFiles};
use super::layout::{
    self, decode_count, EXPIRIES, META, META_CLEAN, META_COUNT, QUARANTINE, RECORDS,
};
use crate::engine::Due;
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
    pub db: sled::Db,
    pub records: Tree,
    pub expiries: Tree,
    pub meta: Tree,
    pub quarantine: Tree,
    /// The session count, kept here rather than in the store (no key
    /// written beside each record); stored at a clean close, recounted by
    /// the check after an unclean one.
    count: AtomicU64,
    /// Whether `count` is exact: after a clean close, or once the check has
    /// recounted. Never false again once true.
    count_known: AtomicBool,
    /// A recount in progress (`scan_records`): each of its steps holds it
    /// exclusively, and, while the count is not known, each record write
    /// holds it shared, so that a write and a step never interleave.
    recount: RwLock<Option<Recount>>,
    files: DurableFiles,
    /// Held for the store's life; declared last so that it is released
    /// after sled's handles are dropped.
    _lock: File,
}

/// A count of the records tree made by a scan in key order while writes go
/// on: a write below the scan's position is one the scan will not see, so it
/// is counted here; one at or above it, the scan will see.
pub(crate) struct Recount {
    /// Every key below this one has been read.
    pub read_below: Vec<u8>,
    /// Records the scan has read.
    pub scanned: u64,
    /// Sessions stored (+1) and deleted (-1) below the scan's position
    /// since it began.
    pub behind: AtomicI64,
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
        let meta = tree(META)?;
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
            records: tree(RECORDS)?,
            expiries: tree(EXPIRIES)?,
            meta,
            quarantine: tree(QUARANTINE)?,
            count: AtomicU64::new(count),
            count_known: AtomicBool::new(count_known),
            recount: RwLock::new(None),
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

    pub fn read_record(
        &self,
        actor_id: &str,
        digest: &Digest,
        read: &mut dyn FnMut(&[u8]),
    ) -> Result<bool> {
        match self
            .records
            .get(layout::RecordKey::new(actor_id, digest))
            .map_err(sled_err("reading a session"))?
        {
            Some(bytes) => {
                read(&bytes);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The actor's records, by key: a scan of its prefix.
    pub fn actor_records(&self, actor_id: &str) -> Result<Vec<(IVec, IVec)>> {
        self.records
            .scan_prefix(layout::actor_prefix(actor_id))
            .collect::<std::result::Result<_, _>>()
            .map_err(sled_err("listing an actor's sessions"))
    }

    /// The digests of the actor's sessions.
    pub fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        Ok(self
            .actor_records(actor_id)?
            .iter()
            .filter_map(|(k, _)| layout::parse_record_key(k).map(|(_, d)| d))
            .collect())
    }

    /// Due entries, earliest first, each naming its record (a damaged entry
    /// is left for the check).
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<Due>> {
        let mut out = Vec::new();
        for kv in self
            .expiries
            .range(..layout::expiry_scan_end(now))
            .take(limit)
        {
            let (k, _) = kv.map_err(sled_err("scanning expiries"))?;
            let Some((at, record)) = layout::parse_expiry_key(&k) else {
                continue;
            };
            if let Some((actor_id, digest)) = layout::parse_record_key(record) {
                out.push(Due {
                    at,
                    digest,
                    actor_id: actor_id.to_owned(),
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
            .and_then(|(k, _)| layout::parse_expiry_key(&k).map(|(at, _)| at)))
    }

    pub fn session_count(&self) -> crate::engine::Count {
        crate::engine::Count {
            sessions: self.count.load(Ordering::Relaxed),
            exact: self.count_known.load(Ordering::Acquire),
        }
    }

    /// Sets the count to an exact figure (a recount, a repair).
    pub fn set_count(&self, sessions: u64) {
        self.count.store(sessions, Ordering::Relaxed);
        self.count_known.store(true, Ordering::Release);
    }

    /// Stores the session count (at a clean close).
    pub fn store_count(&self) -> Result<()> {
        let count = self.count.load(Ordering::Relaxed);
        self.set_meta(META_COUNT, Some(&count.to_be_bytes()))
    }

    pub fn quarantined(&self) -> u64 {
        self.quarantine.len() as u64
    }

    pub fn meta(&self, key: &[u8]) -> Result<Option<IVec>> {
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

    pub fn lock_recount_shared(&self) -> RwLockReadGuard<'_, Option<Recount>> {
        // Nothing panics while holding it.
        self.recount
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn lock_recount(&self) -> RwLockWriteGuard<'_, Option<Recount>> {
        self.recount
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds a recount's steps off while a write and its counting are
    /// made; `None` once the count is known (it stays known, and no recount
    /// starts then).
    pub fn counting(&self) -> Option<RwLockReadGuard<'_, Option<Recount>>> {
        (!self.count_known.load(Ordering::Acquire)).then(|| self.lock_recount_shared())
    }

    /// Moves the session count by a record stored (+1) or deleted (-1)
    /// under `key`, with `counting` held since before the write; a write
    /// below a running recount's position is counted by it too.
    pub fn count_write(
        &self,
        counting: Option<&RwLockReadGuard<'_, Option<Recount>>>,
        key: &[u8],
        delta: i64,
    ) {
        if delta > 0 {
            self.count
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else if delta < 0 {
            let _ = self
                .count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    Some(c.saturating_sub(delta.unsigned_abs()))
                });
        }
        if let Some(Some(r)) = counting.map(|c| &**c) {
            if key < r.read_below.as_slice() {
                r.behind.fetch_add(delta, Ordering::Relaxed);
            }
        }
    }

    /// Swaps the record under `key` from `was` to `new` (`None`: absent), one
    /// key, if it still holds `was`; returns whether it did. A sled
    /// transaction excludes it (sled's concurrency-control lock), so it
    /// lands wholly before or after any transaction.
    pub fn swap_record(&self, key: &[u8], was: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool> {
        let counting = self.counting();
        let swapped = self
            .records
            .compare_and_swap(key, was, new)
            .map_err(sled_err("writing a session"))?
            .is_ok();
        if swapped {
            let delta = i64::from(new.is_some()) - i64::from(was.is_some());
            self.count_write(counting.as_ref(), key, delta);
        }
        Ok(swapped)
    }

    /// Inserts an `expiries` entry.
    pub fn file(&self, entry: &[u8]) -> Result<()> {
        self.expiries
            .insert(entry, &[])
            .map(drop)
            .map_err(sled_err("filing an expiry"))
    }

    /// Removes an `expiries` entry.
    pub fn unfile(&self, entry: &[u8]) -> Result<()> {
        self.expiries
            .remove(entry)
            .map(drop)
            .map_err(sled_err("removing an expiry"))
    }

    /// Writes every committed write to the log; with `sync`, also fsyncs
    /// what sled leaves in the disk cache.
    pub fn flush(&self, sync: bool) -> Result<()> {
        self.db.flush().map_err(sled_err("flushing"))?;
        if sync {
            self.files.sync()?;
        }
        Ok(())
    }
}
