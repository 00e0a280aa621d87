//! The open sled database: its trees, reads outside transactions, the
//! batch transaction, flushes, and whole-tree scans and repairs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use super::files::{self, DurableFiles};
use super::layout::{self, decode_count, META_CLEAN, META_COUNT};
use super::txn::SledTxn;
use crate::codec;
use crate::engine::{Count, Due, Fix, Index, IndexVisit, RecordVisit, Stored, View};
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
    /// A recount in progress (see `scan_records`); taken by every
    /// transaction, so that a commit and a step of the scan never interleave.
    recount: Mutex<Option<Recount>>,
    files: DurableFiles,
    /// Held for the store's life; declared last so that it is released
    /// after sled's handles are dropped.
    _lock: File,
}

/// Planning's view of the trees outside a transaction (`Trees::view`). It
/// keeps the records it read, so that a rewrite planned on them can be
/// made only if they still hold (`Trees::rewrite_if`).
pub(crate) struct TreesView<'a> {
    trees: &'a Trees,
    read: RefCell<Vec<(Digest, sled::IVec)>>,
}

impl TreesView<'_> {
    /// The record last read for `digest`, as it was read.
    pub fn read(&self, digest: &Digest) -> Option<sled::IVec> {
        let read = self.read.borrow();
        read.iter()
            .rev()
            .find(|(d, _)| d == digest)
            .map(|(_, v)| v.clone())
    }
}

impl View for TreesView<'_> {
    fn record(&self, _actor_id: &str, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let found = self
            .trees
            .sessions
            .get(digest.0)
            .map_err(sled_err("reading a session"))?;
        Ok(found.map(|v| {
            let bytes = v.to_vec();
            self.read.borrow_mut().push((*digest, v));
            bytes
        }))
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        self.trees.actor_sessions(actor_id)
    }
}

/// How many records a step of a whole-tree scan reads.
const SCAN_STEP: usize = 1024;

/// A count of the sessions tree made by a scan in key order while writes go
/// on: a write below the scan's position is one the scan will not see, so it
/// is counted here; one at or above it, the scan will see.
struct Recount {
    /// Every key below this one has been read.
    read_below: Vec<u8>,
    /// Records the scan has read.
    scanned: u64,
    /// Sessions stored (+1) and deleted (-1) below the scan's position
    /// since it began.
    behind: i64,
}

/// Ends an unfinished recount when its scan stops early.
struct RecountRunning<'a>(&'a Trees);

impl Drop for RecountRunning<'_> {
    fn drop(&mut self) {
        *self.0.lock_recount() = None;
    }
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
            recount: Mutex::new(None),
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

    /// The digests the actor's entry lists (a damaged list reads as empty:
    /// the check reports and repairs it).
    pub fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        Ok(self
            .actors
            .get(layout::actor_key(actor_id))
            .map_err(sled_err("listing an actor's sessions"))?
            .and_then(|v| layout::parse_actor_list(&v))
            .unwrap_or_default())
    }

    pub fn session_count(&self) -> Count {
        Count {
            sessions: self.count.load(Ordering::Relaxed),
            exact: self.count_known.load(Ordering::Relaxed),
        }
    }

    fn lock_recount(&self) -> MutexGuard<'_, Option<Recount>> {
        // Nothing panics while holding it.
        self.recount
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// The store as planning outside a transaction sees it (the write group
    /// is the only writer, so nothing changes under it).
    pub fn view(&self) -> TreesView<'_> {
        TreesView {
            trees: self,
            read: RefCell::new(Vec::new()),
        }
    }

    /// Rewrites a stored record in place, outside a transaction (one key),
    /// if it still holds `was`; returns whether it did. A transaction
    /// excludes it (sled's concurrency-control lock), so a rewrite lands
    /// wholly before or after any transaction.
    pub fn rewrite_if(&self, digest: &Digest, was: &[u8], record: &[u8]) -> Result<bool> {
        self.sessions
            .compare_and_swap(digest.0, Some(was), Some(record))
            .map(|swapped| swapped.is_ok())
            .map_err(sled_err("rewriting a session"))
    }

    /// Runs `body` in one sled transaction over every tree the session logic
    /// writes, and moves the session count by what it stored and deleted.
    pub fn transact(&self, body: &dyn Fn(&SledTxn<'_>) -> Result<()>) -> Result<()> {
        let mut recount = self.lock_recount();
        let recounting = recount.is_some();
        let outcome = (&self.sessions, &self.expiries, &self.actors).transaction(|(s, e, a)| {
            let txn = SledTxn::new(s, e, a, recounting);
            let result = body(&txn);
            if let Some(failure) = txn.take_failure() {
                return Err(failure.into());
            }
            if let Err(e) = result {
                return Err(ConflictableTransactionError::Abort(e));
            }
            Ok(txn.count_changes())
        });
        let (delta, counted) = match outcome {
            Ok(changes) => changes,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => {
                return Err(Error::Storage(StorageError::new("committing a batch", e)))
            }
        };
        // One group commits at a time, so nothing else moves it.
        let count = self.count.load(Ordering::Relaxed);
        self.count
            .store(count.saturating_add_signed(delta), Ordering::Relaxed);
        if let Some(recount) = recount.as_mut() {
            for (digest, delta) in counted {
                if digest.0.as_slice() < recount.read_below.as_slice() {
                    recount.behind += delta;
                }
            }
        }
        Ok(())
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

    /// Visits every record, in steps of [`SCAN_STEP`] keys. While the
    /// count is not known (after an unclean shutdown), a whole scan also
    /// recounts the sessions, exactly, though writes go on meanwhile.
    pub fn scan_records(&self, visit: &mut RecordVisit<'_>) -> Result<()> {
        let recounting = {
            let mut recount = self.lock_recount();
            let start = recount.is_none() && !self.count_known.load(Ordering::Relaxed);
            if start {
                *recount = Some(Recount {
                    read_below: Vec::new(),
                    scanned: 0,
                    behind: 0,
                });
            }
            start.then(|| RecountRunning(self))
        };
        let mut from = Vec::new();
        loop {
            let step = {
                let mut recount = self.lock_recount();
                let step = self
                    .sessions
                    .range(from.as_slice()..)
                    .take(SCAN_STEP)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(sled_err("scanning sessions"))?;
                if let Some((last, _)) = step.last() {
                    from = last.to_vec();
                    from.push(0);
                }
                if let (Some(_), Some(r)) = (&recounting, recount.as_mut()) {
                    r.read_below.clone_from(&from);
                    r.scanned += step.len() as u64;
                    if step.is_empty() {
                        let count = r.scanned.saturating_add_signed(r.behind);
                        self.count.store(count, Ordering::Relaxed);
                        self.count_known.store(true, Ordering::Relaxed);
                    }
                }
                step
            };
            if step.is_empty() {
                return Ok(());
            }
            for (k, v) in &step {
                let stored = Stored {
                    id: k,
                    digest: Digest::from_slice(k),
                    bytes: v,
                };
                if !visit(stored)? {
                    return Ok(());
                }
            }
        }
    }

    pub fn scan_expiries(&self, visit: &mut IndexVisit<'_, (u64, Digest)>) -> Result<()> {
        for kv in self.expiries.iter() {
            let (k, _) = kv.map_err(sled_err("scanning expiries"))?;
            if !visit(&k, layout::parse_expiry_key(&k))? {
                break;
            }
        }
        Ok(())
    }

    /// Visits each actor entry by its name (`layout::actor_entry`); a key or
    /// list that does not parse is visited once, by its key, unparsed.
    pub fn scan_actors(&self, visit: &mut IndexVisit<'_, (String, Digest)>) -> Result<()> {
        for kv in self.actors.iter() {
            let (k, v) = kv.map_err(sled_err("scanning actors"))?;
            let actor = k
                .split_first()
                .filter(|(len, rest)| usize::from(**len) == rest.len() && !rest.is_empty())
                .and_then(|(_, rest)| std::str::from_utf8(rest).ok());
            let entries = actor.zip(layout::parse_actor_list(&v));
            match entries {
                Some((actor, digests)) => {
                    for d in digests {
                        let entry = layout::actor_entry(actor, &d);
                        if !visit(&entry, Some((actor.to_owned(), d)))? {
                            return Ok(());
                        }
                    }
                }
                None => {
                    if !visit(&k, None)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes an actor entry named as `scan_actors` names it: a damaged
    /// key whole (a stored key is never shaped like an entry's name, so one
    /// that is stored under `id` is damaged), or one digest from its actor's
    /// list.
    fn drop_actor_entry(&self, id: &[u8]) -> sled::Result<()> {
        if self.actors.remove(id)?.is_some() {
            return Ok(());
        }
        match layout::parse_actor_entry(id) {
            Some((actor, digest)) => self.edit_actor_list(&actor, |l| l.retain(|d| *d != digest)),
            None => Ok(()),
        }
    }

    /// Rewrites an actor's list outside a transaction (repair: writes are held).
    fn edit_actor_list(
        &self,
        actor_id: &str,
        edit: impl FnOnce(&mut Vec<Digest>),
    ) -> sled::Result<()> {
        let key = layout::actor_key(actor_id);
        let mut list = self
            .actors
            .get(&key)?
            .and_then(|v| layout::parse_actor_list(&v))
            .unwrap_or_default();
        edit(&mut list);
        if list.is_empty() {
            self.actors.remove(key).map(drop)
        } else {
            self.actors
                .insert(key, layout::encode_actor_list(&list))
                .map(drop)
        }
    }

    /// Whether the actor's list names `digest`.
    fn lists(&self, actor_id: &str, digest: &Digest) -> Result<bool> {
        Ok(self.actor_sessions(actor_id)?.contains(digest))
    }

    /// Turns store format 1's actor index (one empty key per session,
    /// `len ++ actor ++ digest`) into format 2's (one list per actor),
    /// in batches. Safe to run again after a crash part-way: format 1 keys
    /// and format 2 lists are told apart by their length and merged.
    pub fn migrate_actors_from_format_1(&self) -> Result<u64> {
        let fail = || sled_err("migrating the actor index to store format 2");
        let mut moved = 0;
        loop {
            let mut lists: HashMap<String, Vec<Digest>> = HashMap::new();
            let mut batch = sled::Batch::default();
            for kv in self.actors.iter() {
                let (k, _) = kv.map_err(fail())?;
                if let Some((actor, digest)) = layout::parse_actor_entry(&k) {
                    lists.entry(actor).or_default().push(digest);
                    batch.remove(k);
                    moved += 1;
                    if lists.len() >= 10_000 {
                        break;
                    }
                }
            }
            if lists.is_empty() {
                return Ok(moved);
            }
            for (actor, digests) in lists {
                let key = layout::actor_key(&actor);
                let mut list = self
                    .actors
                    .get(&key)
                    .map_err(fail())?
                    .and_then(|v| layout::parse_actor_list(&v))
                    .unwrap_or_default();
                for d in digests {
                    if !list.contains(&d) {
                        list.push(d);
                    }
                }
                batch.insert(key, layout::encode_actor_list(&list));
            }
            self.actors.apply_batch(batch).map_err(fail())?;
        }
    }

    /// The session stored under `digest`, if it decodes.
    fn decoded(&self, digest: &Digest) -> Result<Option<crate::session::Record>> {
        Ok(self
            .sessions
            .get(digest.0)
            .map_err(sled_err("re-checking a session"))?
            .and_then(|bytes| codec::decode(&bytes).ok()))
    }

    /// Checks each fix again with point reads (writes are held): a fix found
    /// while writes went on may describe a write the scans met half-way.
    pub fn still_needed(&self, fixes: Vec<Fix>) -> Result<Vec<Fix>> {
        let fail = || sled_err("re-checking an index entry");
        let mut needed = Vec::new();
        for fix in fixes {
            let still = match &fix {
                Fix::Quarantine { id } => {
                    self.sessions.get(id).map_err(fail())?.is_some_and(|bytes| {
                        Digest::from_slice(id).is_none() || codec::decode(&bytes).is_err()
                    })
                }
                Fix::AddExpiry { at, digest, .. } => {
                    self.decoded(digest)?.is_some_and(|r| r.filed_at == *at)
                        && !self
                            .expiries
                            .contains_key(layout::expiry_key(*at, digest))
                            .map_err(fail())?
                }
                Fix::AddActor {
                    actor_id, digest, ..
                } => {
                    self.decoded(digest)?
                        .is_some_and(|r| r.actor_id == *actor_id)
                        && !self.lists(actor_id, digest)?
                }
                Fix::Drop {
                    index: Index::Expiries,
                    id,
                    ..
                } => {
                    self.expiries.contains_key(id).map_err(fail())?
                        && match layout::parse_expiry_key(id) {
                            Some((at, d)) => self.decoded(&d)?.is_none_or(|r| r.filed_at != at),
                            None => true,
                        }
                }
                Fix::Drop {
                    index: Index::Actors,
                    id,
                    ..
                } => {
                    // A damaged key (see `drop_actor_entry`), or a listed digest
                    // whose session is gone or another actor's.
                    self.actors.contains_key(id).map_err(fail())?
                        || match layout::parse_actor_entry(id) {
                            Some((a, d)) => {
                                self.lists(&a, &d)?
                                    && self.decoded(&d)?.is_none_or(|r| r.actor_id != a)
                            }
                            None => false,
                        }
                }
                // The record scan recounts (`scan_records`).
                Fix::Count(_) => false,
            };
            if still {
                needed.push(fix);
            }
        }
        Ok(needed)
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
                Fix::AddActor {
                    actor_id, digest, ..
                } => {
                    self.edit_actor_list(actor_id, |l| {
                        if !l.contains(digest) {
                            l.push(*digest);
                        }
                    })
                    .map_err(fail())?;
                }
                Fix::Drop {
                    index: Index::Expiries,
                    id,
                    ..
                } => {
                    self.expiries.remove(id).map_err(fail())?;
                }
                Fix::Drop {
                    index: Index::Actors,
                    id,
                    ..
                } => self.drop_actor_entry(id).map_err(fail())?,
                Fix::Count(n) => {
                    self.count.store(*n, Ordering::Relaxed);
                    self.count_known.store(true, Ordering::Relaxed);
                }
            }
        }
        self.flush(true)
    }
}
