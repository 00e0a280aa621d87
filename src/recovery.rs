//! Open-time recovery and the consistency check.
//!
//! Invariants (see `docs/format.md`): every decodable session has exactly
//! one `expiries` entry (at its stored expiry) and one `actors` entry; no
//! index entry points at a missing session or disagrees with it; the stored
//! session count equals the number of sessions. A clean close records a
//! marker; an open that does not find it runs the full check with repair.

use std::time::{Duration, Instant};

use crate::codec;
use crate::error::{Error, Result};
use crate::index;
use crate::key::Digest;
use crate::storage::sled::OpenFacts;
use crate::storage::{decode_count, Backend, Space, META_COUNT};

/// The on-disk layout version of the whole store (trees and keys), kept in
/// the `meta` tree under `format`.
pub const STORE_FORMAT: u32 = 1;

const META_FORMAT: &[u8] = b"format";
const META_CLEAN: &[u8] = b"clean";

/// What a consistency check found (and, when repairing, fixed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Sessions whose records decode.
    pub sessions: u64,
    /// Records that failed to decode (moved to the quarantine when repairing).
    pub corrupt: u64,
    /// Sessions that had no expiry entry at their stored expiry.
    pub missing_expiries: u64,
    /// Expiry entries that pointed at nothing, at another expiry, or were malformed.
    pub stale_expiries: u64,
    /// Sessions that had no actor entry.
    pub missing_actors: u64,
    /// Actor entries that pointed at nothing, at another actor, or were malformed.
    pub stale_actors: u64,
    /// The stored count, when it differed from `sessions`.
    pub count_was: Option<u64>,
    /// Whether the problems were repaired.
    pub repaired: bool,
    /// How long the walk took.
    pub duration: Duration,
}

impl CheckReport {
    /// How many problems were found.
    pub fn problems(&self) -> u64 {
        self.corrupt
            + self.missing_expiries
            + self.stale_expiries
            + self.missing_actors
            + self.stale_actors
            + u64::from(self.count_was.is_some())
    }

    /// Whether the store was found consistent.
    pub fn is_healthy(&self) -> bool {
        self.problems() == 0
    }
}

/// What `SessionStore::open` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// The store was new: the directory was missing or held no sled files.
    pub created: bool,
    /// The previous run closed the store cleanly, so the full check was skipped.
    pub clean_shutdown: bool,
    /// `snap.*.generating` files from a crash during open that were removed.
    pub stale_snapshots_removed: usize,
    /// The check run after an unclean shutdown.
    pub check: Option<CheckReport>,
    /// Time from the start of `open` to a ready store.
    pub duration: Duration,
}

/// Checks the format, reads and clears the clean-shutdown marker, and
/// repairs the store if the last run did not close it.
pub(crate) fn recover(
    backend: &dyn Backend,
    facts: OpenFacts,
    started: Instant,
) -> Result<RecoveryReport> {
    match backend.raw_get(Space::Meta, META_FORMAT)? {
        None => backend.raw_insert(Space::Meta, META_FORMAT, &STORE_FORMAT.to_be_bytes())?,
        Some(v) => {
            let found = <[u8; 4]>::try_from(v.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| Error::Corrupt {
                    what: "meta entry `format`".into(),
                    problem: format!("{} bytes instead of 4", v.len()),
                })?;
            if found > STORE_FORMAT {
                return Err(Error::NewerFormat {
                    found,
                    supported: STORE_FORMAT,
                });
            }
        }
    }
    let clean = backend
        .raw_get(Space::Meta, META_CLEAN)?
        .is_some_and(|v| v == [1]);
    let check = if clean || facts.created {
        None
    } else {
        let report = check(backend, true)?;
        if !report.is_healthy() {
            log::warn!("recovered from an unclean shutdown: {report:?}");
        }
        Some(report)
    };
    // From here until a clean close, a crash must be detected as unclean.
    backend.raw_remove(Space::Meta, META_CLEAN)?;
    backend.flush(true)?;
    Ok(RecoveryReport {
        created: facts.created,
        clean_shutdown: clean,
        stale_snapshots_removed: facts.stale_snapshots_removed,
        check,
        duration: started.elapsed(),
    })
}

/// Records a clean shutdown; the caller has stopped every writer.
pub(crate) fn mark_clean(backend: &dyn Backend) -> Result<()> {
    backend.flush(true)?;
    backend.raw_insert(Space::Meta, META_CLEAN, &[1])?;
    backend.flush(true)
}

/// Walks every tree and checks the invariants; with `repair`, fixes what it
/// finds. Nothing may write to the store meanwhile.
///
/// Each tree is read once, in key order: the sessions tree yields the index
/// entries that must exist, which are sorted and merged with the index trees.
/// No random reads, so a large store is checked at the speed of a scan
/// (point reads missed the page cache and took a minute at 1,000,000
/// sessions). Memory: one expected key per session per index.
pub(crate) fn check(backend: &dyn Backend, repair: bool) -> Result<CheckReport> {
    let started = Instant::now();
    let mut report = CheckReport {
        repaired: repair,
        ..CheckReport::default()
    };
    let mut expiries: Vec<[u8; index::EXPIRY_KEY_LEN]> = Vec::new();
    let mut actors: Vec<Vec<u8>> = Vec::new();
    let mut quarantine = Vec::new();
    backend.scan(Space::Sessions, &mut |key, value| {
        let decoded =
            Digest::from_slice(key).and_then(|d| codec::decode(value).ok().map(|r| (d, r)));
        match decoded {
            Some((digest, record)) => {
                report.sessions += 1;
                expiries.push(index::expiry_key(record.expires_at, &digest));
                actors.push(index::actor_key(&record.actor_id, &digest));
            }
            None => {
                report.corrupt += 1;
                log::warn!("corrupt session record under key {}", hex(key));
                quarantine.push((key.to_vec(), value.to_vec()));
            }
        }
        Ok(true)
    })?;
    if repair {
        for (key, value) in &quarantine {
            backend.raw_insert(Space::Quarantine, key, value)?;
            backend.raw_remove(Space::Sessions, key)?;
        }
    }
    expiries.sort_unstable();
    actors.sort_unstable();
    let (missing, stale) = merge(backend, Space::Expiries, &expiries, repair)?;
    report.missing_expiries = missing;
    report.stale_expiries = stale;
    let (missing, stale) = merge(backend, Space::Actors, &actors, repair)?;
    report.missing_actors = missing;
    report.stale_actors = stale;

    let stored = decode_count(backend.raw_get(Space::Meta, META_COUNT)?.as_deref());
    if stored != report.sessions {
        report.count_was = Some(stored);
        if repair {
            backend.raw_insert(Space::Meta, META_COUNT, &report.sessions.to_be_bytes())?;
        }
    }
    if repair && !report.is_healthy() {
        backend.flush(true)?;
    }
    report.duration = started.elapsed();
    Ok(report)
}

/// Compares the index tree `space` with the sorted keys it must hold: a key
/// only in the tree is stale, a key only in `expected` is missing. With
/// `repair`, stale keys are removed and missing ones inserted (after the
/// scan). Returns (missing, stale).
fn merge<K: AsRef<[u8]>>(
    backend: &dyn Backend,
    space: Space,
    expected: &[K],
    repair: bool,
) -> Result<(u64, u64)> {
    let mut next = 0;
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    backend.scan(space, &mut |key, _| {
        while next < expected.len() && expected[next].as_ref() < key {
            missing.push(next);
            next += 1;
        }
        if next < expected.len() && expected[next].as_ref() == key {
            next += 1;
        } else {
            stale.push(key.to_vec());
        }
        Ok(true)
    })?;
    missing.extend(next..expected.len());
    if repair {
        for key in &stale {
            backend.raw_remove(space, key)?;
        }
        for &i in &missing {
            backend.raw_insert(space, expected[i].as_ref(), &[])?;
        }
    }
    Ok((missing.len() as u64, stale.len() as u64))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(40).map(|b| format!("{b:02x}")).collect()
}
