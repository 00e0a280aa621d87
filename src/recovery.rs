//! Open-time recovery and the consistency check, through the engine seam,
//! so the same check and repair serve every engine.
//!
//! Invariants (see `docs/format.md`): every decodable session has exactly
//! one expiry entry, at the time its record says it is filed (`filed_at`,
//! at or before its expiry), and one actor entry; no index
//! entry points at a missing session or disagrees with it; the stored
//! session count equals the number of sessions. An engine that finds its
//! last run did not close cleanly has `open` run the full check with repair.

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
    /// The check run after an unclean shutdown.
    pub check: Option<CheckReport>,
    /// Time from the start of `open` to a ready store.
    pub duration: Duration,
}

/// Runs the full check with repair if the engine's last run did not close
/// cleanly, and reports what `open` found.
pub(crate) fn recover(
    engine: &dyn Engine,
    opened: Opened,
    started: Instant,
) -> Result<RecoveryReport> {
    let check = if opened.clean_shutdown || opened.created {
        None
    } else {
        let report = check(engine, true)?;
        if !report.is_healthy() {
            log::warn!("recovered from an unclean shutdown: {report:?}");
        }
        Some(report)
    };
    Ok(RecoveryReport {
        created: opened.created,
        clean_shutdown: opened.clean_shutdown,
        stale_snapshots_removed: opened.stale_files_removed,
        check,
        duration: started.elapsed(),
    })
}

/// A decodable session, as its index entries must name it.
struct Expected {
    digest: Digest,
    filed_at: u64,
    actor_id: String,
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
            None => self.stale.push(Fix::Drop {
                index,
                id: id.to_vec(),
            }),
        }
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
///
/// Each part of the store is read once, by a scan: the records give the
/// index entries that must exist (sorted by digest), and each index entry
/// met is looked up among them. No random reads, so a large store is
/// checked at the speed of a scan (point reads missed the page cache and
/// took a minute at 1,000,000 sessions). Memory: one entry per session.
pub(crate) fn check(engine: &dyn Engine, repair: bool) -> Result<CheckReport> {
    let started = Instant::now();
    let mut report = CheckReport {
        repaired: repair,
        ..CheckReport::default()
    };
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
            }),
            None => {
                report.corrupt += 1;
                let id = stored.id;
                log::warn!("corrupt session record {}", hex(&id[..id.len().min(80)]));
                fixes.push(Fix::Quarantine { id: id.to_vec() });
            }
        }
        Ok(true)
    })?;
    report.sessions = sessions.len() as u64;
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
    report.stale_expiries = expiries.stale.len() as u64;
    report.stale_actors = actors.stale.len() as u64;
    fixes.append(&mut expiries.stale);
    fixes.append(&mut actors.stale);
    for e in expiries.missing() {
        report.missing_expiries += 1;
        fixes.push(Fix::AddExpiry {
            at: e.filed_at,
            actor_id: e.actor_id.clone(),
            digest: e.digest,
        });
    }
    for e in actors.missing() {
        report.missing_actors += 1;
        fixes.push(Fix::AddActor {
            actor_id: e.actor_id.clone(),
            digest: e.digest,
        });
    }
    match engine.session_count()? {
        Some(stored) if stored == report.sessions => {}
        Some(stored) => {
            report.count_was = Some(stored);
            fixes.push(Fix::Count(report.sessions));
        }
        // Not kept through an unclean shutdown: counting is no repair.
        None => fixes.push(Fix::Count(report.sessions)),
    }
    if repair && !fixes.is_empty() {
        engine.repair(&fixes)?;
    }
    report.duration = started.elapsed();
    Ok(report)
}
