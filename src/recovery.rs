//! Open-time recovery and the consistency check, through the engine seam,
//! so the same check and repair serve every engine.
//!
//! Invariants (see `docs/format.md`): every decodable session has exactly
//! one expiry entry, at the time its record says it is filed (`filed_at`,
//! at or before its expiry), and, where the engine keeps an actor index,
//! one actor entry; no index entry points at a missing session or disagrees
//! with it; no actor holds more sessions than its cap; the stored session
//! count equals the number of sessions. An engine that finds its last run
//! did not close cleanly has `open` run the full check with repair.
//!
//! Sessions over an actor's cap (a register stopped by a crash after it
//! stored the new session and before it ended the old ones) are ended by
//! the session logic itself, through the write path, as a register would
//! end them: the oldest go, each announced (`replaced`, or `expired` for
//! one already past its expiry).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::codec;
use crate::engine::{Engine, Fix, Index, Opened};
use crate::error::Result;
use crate::key::{hex, Digest};
use crate::shared::{About, Shared};

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
    /// Sessions beyond their actor's cap (`Config::max_sessions_per_actor`).
    /// A repair ends them as a register would: the actor's oldest, each
    /// announced with `session.unset` (`replaced`, or `expired` for one past
    /// its expiry); then this counts the sessions it ended.
    pub over_cap: u64,
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
            + self.over_cap
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

/// Reports what `open` found. When the engine's last run did not close
/// cleanly, the report says a check is due (`checking`); the store runs it
/// (`Recovering::check`), in the background or before `open` returns.
pub(crate) fn recover(opened: Opened, started: Instant) -> RecoveryReport {
    RecoveryReport {
        created: opened.created,
        clean_shutdown: opened.clean_shutdown,
        stale_snapshots_removed: opened.stale_files_removed,
        check: None,
        checking: !(opened.clean_shutdown || opened.created),
        check_error: None,
        duration: started.elapsed(),
    }
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

    /// Records how long `open` took when it ran the check itself.
    pub fn opened_in(&self, duration: Duration) {
        self.lock().duration = duration;
    }

    /// Runs the check after an unclean shutdown and records how it ended.
    pub fn check(&self, shared: &Shared) {
        let outcome = check_while_serving(shared).map(logged);
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

/// Ends the sessions beyond their cap of each of `actors`, as a register
/// would (`Planner::keep_cap`), through the write path; returns how many
/// ended.
pub(crate) fn end_over_cap(shared: &Shared, actors: &[String]) -> Result<u64> {
    let mut ended = 0;
    for actor in actors {
        let (actor, now) = (actor.clone(), shared.now());
        let about = About::of(vec![actor.clone()]);
        ended += shared.write(about, move |p| p.keep_cap(&actor, now))? as u64;
    }
    Ok(ended)
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
/// what it finds but the actors over their cap, which it returns for
/// `end_over_cap` (it must run once writes go on again). Nothing may write
/// to the store meanwhile.
pub(crate) fn check(
    engine: &dyn Engine,
    repair: bool,
    cap: usize,
) -> Result<(CheckReport, Vec<String>)> {
    let started = Instant::now();
    let Survey {
        mut report,
        mut fixes,
        over_cap,
    } = survey(engine, cap)?;
    let stored = engine.session_count()?;
    // The count counts every record, including ones that do not decode.
    if stored.sessions != report.sessions + report.corrupt {
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
    Ok((report, over_cap))
}

/// The check after an unclean shutdown, made while the store serves: the
/// survey runs beside the writes, so what it finds may be a write it met
/// half-way (a session stored after the records were scanned, say). With
/// writes held, the engine checks each finding again (`still_needed`), and
/// repairs what is still broken. Writes wait only for that, not for the
/// scans. Then the actors found over their cap are planned again, each
/// with its turn held, and their excess sessions ended. The session count
/// comes from the engine, which recounts during the record scan (sled) or
/// never loses it (Redis).
pub(crate) fn check_while_serving(shared: &Shared) -> Result<CheckReport> {
    let started = Instant::now();
    let engine = shared.engine.as_ref();
    let surveyed = survey(engine, shared.rules.settings.max_per_actor)?;
    let mut report = CheckReport {
        sessions: surveyed.report.sessions,
        repaired: true,
        ..CheckReport::default()
    };
    if !surveyed.fixes.is_empty() {
        let _held = engine.hold_writes()?;
        let fixes = engine.still_needed(surveyed.fixes)?;
        if !fixes.is_empty() {
            engine.repair(&fixes)?;
        }
        tally(&mut report, &fixes);
    }
    report.over_cap = end_over_cap(shared, &surveyed.over_cap)?;
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

/// What a survey found.
struct Survey {
    /// The problems, but the count.
    report: CheckReport,
    fixes: Vec<Fix>,
    /// The actors with more sessions than their cap.
    over_cap: Vec<String>,
}

/// Reads the whole store and finds what breaks the invariants between the
/// records and the indexes, and the actors over their cap (the count is the
/// caller's).
///
/// Each part of the store is read once, by a scan: the records give the
/// index entries that must exist (sorted by digest), and each index entry
/// met is looked up among them. No random reads, so a large store is
/// checked at the speed of a scan (point reads missed the page cache and
/// took a minute at 1,000,000 sessions). Memory: one entry per session.
fn survey(engine: &dyn Engine, cap: usize) -> Result<Survey> {
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
    fixes.append(&mut expiries.stale);
    fixes.extend(expiries.missing().map(|e| Fix::AddExpiry {
        at: e.filed_at,
        actor_id: e.actor_id.clone(),
        digest: e.digest,
        revision: e.revision,
    }));
    if engine.keeps_actor_index() {
        let mut actors = Found::new(&sessions);
        engine.scan_actors(&mut |id, entry| {
            let (actor, digest) = entry.map_or((String::new(), None), |(a, d)| (a, Some(d)));
            actors.entry(Index::Actors, id, digest, |e| e.actor_id == actor);
            Ok(true)
        })?;
        fixes.append(&mut actors.stale);
        fixes.extend(actors.missing().map(|e| Fix::AddActor {
            actor_id: e.actor_id.clone(),
            digest: e.digest,
            revision: e.revision,
        }));
    }
    let mut report = CheckReport {
        sessions: sessions.len() as u64,
        ..CheckReport::default()
    };
    tally(&mut report, &fixes);
    // Actors over their cap: runs of one actor, by actor.
    let mut actors: Vec<&str> = sessions.iter().map(|e| e.actor_id.as_str()).collect();
    actors.sort_unstable();
    let mut over_cap = Vec::new();
    for run in actors.chunk_by(|a, b| a == b) {
        if run.len() > cap {
            report.over_cap += (run.len() - cap) as u64;
            over_cap.push(run[0].to_owned());
        }
    }
    Ok(Survey {
        report,
        fixes,
        over_cap,
    })
}
