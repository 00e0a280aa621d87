//! Open-time recovery and the consistency check, through the engine seam,
//! so the same check and repair serve every engine.
//!
//! Invariants (see `docs/format.md`): every decodable session has exactly
//! one expiry entry, at the time its record says it is filed (`filed_at`,
//! at or before its expiry), and one actor entry; no index
//! entry points at a missing session or disagrees with it; the stored
//! session count equals the number of sessions. An engine that finds its
//! last run did not close cleanly has `open` run the full check with repair.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::codec;
use crate::engine::{Engine, Fix, Index, Opened};
use crate::error::Result;
use crate::key::{hex, Digest};

/// What a consistency check found (and, when repairing, fixed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Sessions whose records decode.
    pub sessions: u64,
    /// Records that failed to decode (moved to the quarantine when repairing).
    pub corrupt: u64,
    /// Sessions that had no expiry entry where their record files it.
    pub missing_expiries: u64,
    /// Expiry entries that pointed at nothing, were filed at another time
    /// than their record says, or were malformed.
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
    /// The check run after an unclean shutdown, once it has finished.
    pub check: Option<CheckReport>,
    /// The check after an unclean shutdown is running in the background
    /// (`SessionStore::wait_for_recovery` waits for it).
    pub checking: bool,
    /// Why the background check failed, if it did (the store stays marked
    /// unclean, so the next open checks again).
    pub check_error: Option<String>,
    /// Time from the start of `open` to a ready store.
    pub duration: Duration,
}

/// Reports what `open` found; when the engine's last run did not close
/// cleanly, runs the full check with repair, or, `in_background`, leaves it
/// to `check_while_serving` and says so (`checking`).
pub(crate) fn recover(
    engine: &dyn Engine,
    opened: Opened,
    started: Instant,
    in_background: bool,
) -> Result<RecoveryReport> {
    let unclean = !(opened.clean_shutdown || opened.created);
    let check = if unclean && !in_background {
        Some(logged(check(engine, true)?))
    } else {
        None
    };
    Ok(RecoveryReport {
        created: opened.created,
        clean_shutdown: opened.clean_shutdown,
        stale_snapshots_removed: opened.stale_files_removed,
        check,
        checking: unclean && in_background,
        check_error: None,
        duration: started.elapsed(),
    })
}

/// The recovery report of an open store, completed by the background check.
#[derive(Debug)]
pub(crate) struct Recovering {
    report: Mutex<RecoveryReport>,
    finished: Condvar,
}

impl Recovering {
    pub fn new(report: RecoveryReport) -> Self {
        Recovering {
            report: Mutex::new(report),
            finished: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecoveryReport> {
        self.report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn report(&self) -> RecoveryReport {
        self.lock().clone()
    }

    pub fn checking(&self) -> bool {
        self.lock().checking
    }

    /// Waits until no check runs; returns the report.
    pub fn wait(&self) -> RecoveryReport {
        let mut report = self.lock();
        while report.checking {
            report = self
                .finished
                .wait(report)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        report.clone()
    }

    /// Runs the background check and records how it ended.
    pub fn check(&self, engine: &dyn Engine) {
        let outcome = check_while_serving(engine).map(logged);
        let mut report = self.lock();
        match outcome {
            Ok(check) => report.check = Some(check),
            Err(e) => {
                log::error!("the check after an unclean shutdown failed: {e}");
                report.check_error = Some(e.to_string());
            }
        }
        report.checking = false;
        self.finished.notify_all();
    }
}

/// Logs what recovery after an unclean shutdown repaired.
pub(crate) fn logged(report: CheckReport) -> CheckReport {
    if !report.is_healthy() {
        log::warn!("recovered from an unclean shutdown: {report:?}");
    }
    report
}

/// A decodable session, as its index entries must name it.
struct Expected {
    digest: Digest,
    filed_at: u64,
    actor_id: String,
    revision: u64,
}

/// Which index entries were found for each expected session.
struct Found<'a> {
    sessions: &'a [Expected],
    seen: Vec<bool>,
    stale: Vec<Fix>,
}

impl<'a> Found<'a> {
    fn new(sessions: &'a [Expected]) -> Self {
        Found {
            sessions,
            seen: vec![false; sessions.len()],
            stale: Vec::new(),
        }
    }

    /// Records an index entry: it counts for the session it names if that
    /// session `agrees` and has no entry yet; otherwise it is stale.
    fn entry(
        &mut self,
        index: Index,
        id: &[u8],
        digest: Option<Digest>,
        agrees: impl Fn(&Expected) -> bool,
    ) {
        // Engines that file sessions by actor may hold one digest under two
        // actors; the entry counts for the first of them it agrees with.
        let at = digest.and_then(|d| {
            let start = self.sessions.partition_point(|e| e.digest < d);
            (start..self.sessions.len())
                .take_while(|&i| self.sessions[i].digest == d)
                .find(|&i| !self.seen[i] && agrees(&self.sessions[i]))
        });
        match at {
            Some(i) => self.seen[i] = true,
            None => {
                let revision = digest.and_then(|d| self.revision_of(&d));
                self.stale.push(Fix::Drop {
                    index,
                    id: id.to_vec(),
                    revision,
                });
            }
        }
    }

    /// The revision of the session with `digest`, if one has it.
    fn revision_of(&self, digest: &Digest) -> Option<u64> {
        let start = self.sessions.partition_point(|e| e.digest < *digest);
        self.sessions
            .get(start)
            .filter(|e| e.digest == *digest)
            .map(|e| e.revision)
    }

    /// The sessions no entry named.
    fn missing(&self) -> impl Iterator<Item = &'a Expected> + '_ {
        self.sessions
            .iter()
            .zip(&self.seen)
            .filter(|(_, seen)| !**seen)
            .map(|(e, _)| e)
    }
}

/// Walks the whole store and checks the invariants; with `repair`, fixes
/// what it finds. Nothing may write to the store meanwhile.
pub(crate) fn check(engine: &dyn Engine, repair: bool) -> Result<CheckReport> {
    let started = Instant::now();
    let (mut report, mut fixes) = survey(engine)?;
    let stored = engine.session_count()?;
    if stored.sessions != report.sessions {
        // Not kept exactly through an unclean shutdown: counting is no repair.
        if stored.exact {
            report.count_was = Some(stored.sessions);
        }
        fixes.push(Fix::Count(report.sessions));
    }
    if repair && !fixes.is_empty() {
        engine.repair(&fixes)?;
    }
    report.repaired = repair;
    report.duration = started.elapsed();
    Ok(report)
}

/// The check after an unclean shutdown, made while the store serves: the
/// survey runs beside the writes, so what it finds may be a write it met
/// half-way (a session stored after the records were scanned, say). With
/// writes held, the engine checks each finding again (`still_needed`), and
/// repairs what is still broken. Writes wait only for that, not for the
/// scans. The session count comes from the engine, which recounts during
/// the record scan (sled) or never loses it (Redis).
pub(crate) fn check_while_serving(engine: &dyn Engine) -> Result<CheckReport> {
    let started = Instant::now();
    let (surveyed, suspects) = survey(engine)?;
    let mut report = CheckReport {
        sessions: surveyed.sessions,
        repaired: true,
        ..CheckReport::default()
    };
    if !suspects.is_empty() {
        let _held = engine.hold_writes()?;
        let fixes = engine.still_needed(suspects)?;
        if !fixes.is_empty() {
            engine.repair(&fixes)?;
        }
        tally(&mut report, &fixes);
    }
    let count = engine.session_count()?;
    if count.exact {
        report.sessions = count.sessions;
    }
    report.duration = started.elapsed();
    Ok(report)
}

/// Adds what `fixes` repair to `report`'s problem counts.
fn tally(report: &mut CheckReport, fixes: &[Fix]) {
    for fix in fixes {
        let counter = match fix {
            Fix::Quarantine { .. } => &mut report.corrupt,
            Fix::AddExpiry { .. } => &mut report.missing_expiries,
            Fix::AddActor { .. } => &mut report.missing_actors,
            Fix::Drop {
                index: Index::Expiries,
                ..
            } => &mut report.stale_expiries,
            Fix::Drop {
                index: Index::Actors,
                ..
            } => &mut report.stale_actors,
            Fix::Count(_) => continue,
        };
        *counter += 1;
    }
}

/// Reads the whole store and finds what breaks the invariants between the
/// records and the indexes (the count is the caller's); returns the report
/// of the problems and the fixes.
///
/// Each part of the store is read once, by a scan: the records give the
/// index entries that must exist (sorted by digest), and each index entry
/// met is looked up among them. No random reads, so a large store is
/// checked at the speed of a scan (point reads missed the page cache and
/// took a minute at 1,000,000 sessions). Memory: one entry per session.
fn survey(engine: &dyn Engine) -> Result<(CheckReport, Vec<Fix>)> {
    let mut sessions = Vec::new();
    let mut fixes = Vec::new();
    engine.scan_records(&mut |stored| {
        let decoded = stored
            .digest
            .and_then(|d| codec::decode(stored.bytes).ok().map(|r| (d, r)));
        match decoded {
            Some((digest, record)) => sessions.push(Expected {
                digest,
                filed_at: record.filed_at,
                actor_id: record.actor_id,
                revision: record.revision,
            }),
            None => {
                let id = stored.id;
                log::warn!("corrupt session record {}", hex(&id[..id.len().min(80)]));
                fixes.push(Fix::Quarantine { id: id.to_vec() });
            }
        }
        Ok(true)
    })?;
    sessions.sort_unstable_by_key(|e| e.digest);

    let mut expiries = Found::new(&sessions);
    engine.scan_expiries(&mut |id, entry| {
        let (at, digest) = entry.map_or((0, None), |(at, d)| (at, Some(d)));
        expiries.entry(Index::Expiries, id, digest, |e| e.filed_at == at);
        Ok(true)
    })?;
    let mut actors = Found::new(&sessions);
    engine.scan_actors(&mut |id, entry| {
        let (actor, digest) = entry.map_or((String::new(), None), |(a, d)| (a, Some(d)));
        actors.entry(Index::Actors, id, digest, |e| e.actor_id == actor);
        Ok(true)
    })?;
    fixes.append(&mut expiries.stale);
    fixes.append(&mut actors.stale);
    fixes.extend(expiries.missing().map(|e| Fix::AddExpiry {
        at: e.filed_at,
        actor_id: e.actor_id.clone(),
        digest: e.digest,
        revision: e.revision,
    }));
    fixes.extend(actors.missing().map(|e| Fix::AddActor {
        actor_id: e.actor_id.clone(),
        digest: e.digest,
        revision: e.revision,
    }));
    let mut report = CheckReport {
        sessions: sessions.len() as u64,
        ..CheckReport::default()
    };
    tally(&mut report, &fixes);
    Ok((report, fixes))
}
