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
pub(crate) fn check(backend: &dyn Backend, repair: bool) -> Result<CheckReport> {
    let started = Instant::now();
    let mut report = CheckReport {
        repaired: repair,
        ..CheckReport::default()
    };

    backend.scan(Space::Sessions, &mut |key, value| {
        let record = Digest::from_slice(key)
            .ok_or(())
            .and_then(|d| codec::decode(value).map(|r| (d, r)).map_err(drop));
        let Ok((digest, record)) = record else {
            report.corrupt += 1;
            log::warn!("corrupt session record under key {}", hex(key));
            if repair {
                backend.raw_insert(Space::Quarantine, key, value)?;
                backend.raw_remove(Space::Sessions, key)?;
            }
            return Ok(true);
        };
        report.sessions += 1;
        let expiry = index::expiry_key(record.expires_at, &digest);
        if backend.raw_get(Space::Expiries, &expiry)?.is_none() {
            report.missing_expiries += 1;
            if repair {
                backend.raw_insert(Space::Expiries, &expiry, &[])?;
            }
        }
        let actor = index::actor_key(&record.actor_id, &digest);
        if backend.raw_get(Space::Actors, &actor)?.is_none() {
            report.missing_actors += 1;
            if repair {
                backend.raw_insert(Space::Actors, &actor, &[])?;
            }
        }
        Ok(true)
    })?;

    let head_of = |digest: &Digest| -> Result<Option<crate::session::RecordHead>> {
        Ok(backend
            .raw_get(Space::Sessions, &digest.0)?
            .and_then(|v| codec::decode_head(&v).ok()))
    };
    backend.scan(Space::Expiries, &mut |key, _| {
        let ok = match index::parse_expiry_key(key) {
            Some((at, d)) => head_of(&d)?.is_some_and(|h| h.expires_at == at),
            None => false,
        };
        if !ok {
            report.stale_expiries += 1;
            if repair {
                backend.raw_remove(Space::Expiries, key)?;
            }
        }
        Ok(true)
    })?;
    backend.scan(Space::Actors, &mut |key, _| {
        let ok = match index::parse_actor_key(key) {
            Some((actor, d)) => head_of(&d)?.is_some_and(|h| h.actor_id == actor),
            None => false,
        };
        if !ok {
            report.stale_actors += 1;
            if repair {
                backend.raw_remove(Space::Actors, key)?;
            }
        }
        Ok(true)
    })?;

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(40).map(|b| format!("{b:02x}")).collect()
}
