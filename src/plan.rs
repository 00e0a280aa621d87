//! The session logic of every change, written once for every engine.
//!
//! An operation reads what it needs through the engine's [`View`], decides
//! by the [`Rules`], and writes nothing itself: it returns its reply and
//! leaves a [`Plan`] (preconditions, changes, events) for the engine to
//! commit. Every read is recorded as a precondition on the spot, so a plan
//! always names what it relied on. An operation that fails leaves no plan.

use crate::codec;
use crate::engine::{Change, Due, Plan, Precondition, View};
use crate::error::{Error, Reason, Result};
use crate::events::{Event, UnsetReason};
use crate::intent::{Intent, ARRIVAL_KEPT_MS};
use crate::key::Digest;
use crate::rules::{newest_live, Facts, Rules};
use crate::session::{ActorAddress, Data, Record};

/// How a use of a session treats its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Touch {
    /// Slide the expiry, but only write when it moves by the touch interval.
    Slide,
    /// Slide (coalesced) and tell subscribers `session.set` again.
    Restore,
    /// Always recompute and write the expiry.
    Extend,
}

/// Whether a data edit may make the data larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataEdit {
    /// Sets or replaces values: checked against the size limit.
    Add,
    /// Only removes.
    Remove,
}

/// An imported session, with the line of the input it came from.
#[derive(Debug, Clone)]
pub(crate) struct Imported {
    pub line: u64,
    pub digest: Digest,
    pub record: Record,
}

/// Plans one operation against a view of the store.
pub(crate) struct Planner<'a> {
    view: &'a dyn View,
    rules: &'a Rules,
    plan: Plan,
}

impl<'a> Planner<'a> {
    pub fn new(view: &'a dyn View, rules: &'a Rules) -> Self {
        Planner {
            view,
            rules,
            plan: Plan::default(),
        }
    }

    pub fn into_plan(self) -> Plan {
        self.plan
    }

    fn relied_on(&mut self, precondition: Precondition) {
        let same_subject = |p: &Precondition| match (p, &precondition) {
            (Precondition::Record { digest: a, .. }, Precondition::Record { digest: b, .. }) => {
                a == b
            }
            (Precondition::Actor { actor_id: a, .. }, Precondition::Actor { actor_id: b, .. }) => {
                a == b
            }
            _ => false,
        };
        if !self.plan.preconditions.iter().any(same_subject) {
            self.plan.preconditions.push(precondition);
        }
    }

    /// The session stored under `digest`. A record that does not decode is
    /// `Error::Corrupt` and no precondition: nothing is planned on it.
    fn load(&mut self, actor_id: &str, digest: &Digest) -> Result<Option<Record>> {
        let record = match self.view.record(actor_id, digest)? {
            None => None,
            Some(bytes) => Some(codec::decode_stored(digest, &bytes)?),
        };
        self.relied_on(Precondition::Record {
            actor_id: actor_id.to_owned(),
            digest: *digest,
            revision: record.as_ref().map(|r| r.revision),
        });
        Ok(record)
    }

    /// Several sessions at once, in one read where the engine can: each
    /// as `load` gives it (a record that does not decode is its own error).
    fn load_all(&mut self, wanted: &[(&str, Digest)]) -> Result<Vec<Result<Option<Record>>>> {
        let asked: Vec<(&str, &Digest)> = wanted.iter().map(|(a, d)| (*a, d)).collect();
        let bytes = self.view.records(&asked)?;
        let mut out = Vec::with_capacity(bytes.len());
        for ((actor_id, digest), bytes) in wanted.iter().zip(bytes) {
            let record = bytes.map(|b| codec::decode_stored(digest, &b)).transpose();
            if let Ok(record) = &record {
                self.relied_on(Precondition::Record {
                    actor_id: (*actor_id).to_owned(),
                    digest: *digest,
                    revision: record.as_ref().map(|r| r.revision),
                });
            }
            out.push(record);
        }
        Ok(out)
    }

    /// All sessions the actor's index lists, each as `load` gives it.
    fn load_listed(&mut self, actor_id: &str) -> Result<Vec<(Digest, Result<Option<Record>>)>> {
        let digests = self.listed(actor_id)?;
        let wanted: Vec<(&str, Digest)> = digests.iter().map(|d| (actor_id, *d)).collect();
        let loaded = self.load_all(&wanted)?;
        Ok(digests.into_iter().zip(loaded).collect())
    }

    fn listed(&mut self, actor_id: &str) -> Result<Vec<Digest>> {
        let sessions = self.view.actor_sessions(actor_id)?;
        self.relied_on(Precondition::Actor {
            actor_id: actor_id.to_owned(),
            sessions: sessions.clone(),
        });
        Ok(sessions)
    }

    /// All of an actor's sessions, oldest first.
    fn sessions_of(&mut self, actor_id: &str) -> Result<Vec<(Digest, Record)>> {
        let mut out = Vec::new();
        for (d, r) in self.load_listed(actor_id)? {
            if let Some(r) = r? {
                out.push((d, r));
            }
        }
        out.sort_by(|a, b| (a.1.created_at, &a.1.id).cmp(&(b.1.created_at, &b.1.id)));
        Ok(out)
    }

    fn has_live(&mut self, actor_id: &str, now: u64) -> Result<bool> {
        for (_, r) in self.load_listed(actor_id)? {
            // A corrupt record is not a live session; `check` reports it.
            match r {
                Ok(Some(r)) if r.expires_at > now => return Ok(true),
                Ok(_) | Err(Error::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// The session a key names, if the key is valid at `now`.
    fn validated(&mut self, digest: &Digest, actor_id: &str, now: u64) -> Result<Record> {
        let record = self.load(actor_id, digest)?;
        let facts = record.as_ref().map(|r| Facts {
            actor_id: &r.actor_id,
            expires_at: r.expires_at,
            app_version: r.app_version.as_deref(),
        });
        let rules = self.rules;
        rules.check(facts, actor_id, now, || self.has_live(actor_id, now))?;
        record.ok_or(Error::Invalid(Reason::NoSession))
    }

    fn insert(&mut self, digest: &Digest, record: &Record) -> Result<()> {
        self.plan.changes.push(Change::Insert {
            digest: *digest,
            actor_id: record.actor_id.clone(),
            filed_at: record.filed_at,
            revision: record.revision,
            record: codec::encode(record)?,
        });
        self.plan.events.push(set_event(record));
        Ok(())
    }

    fn delete(&mut self, digest: &Digest, record: &Record, reason: UnsetReason) {
        self.plan.changes.push(Change::Delete {
            digest: *digest,
            actor_id: record.actor_id.clone(),
            filed_at: record.filed_at,
        });
        self.plan.events.push(Event::Unset {
            id: record.id.clone(),
            actor_id: record.actor_id.clone(),
            reason,
        });
    }

    /// Rewrites a stored record (same actor) whose expiry entry is filed at
    /// `filed_at_was`. The entry stays there while that is at or before the
    /// new expiry (the reaper files it again when it finds the session not
    /// due); an expiry moved earlier than it takes the entry along.
    fn update(&mut self, digest: &Digest, filed_at_was: u64, record: &mut Record) -> Result<()> {
        record.filed_at = filed_at_was.min(record.expires_at);
        self.file_update(digest, filed_at_was, record)
    }

    /// Rewrites a stored record, its expiry entry moving from `filed_at_was`
    /// to where the record says.
    fn file_update(&mut self, digest: &Digest, filed_at_was: u64, record: &Record) -> Result<()> {
        self.plan.changes.push(Change::Update {
            digest: *digest,
            actor_id: record.actor_id.clone(),
            filed_at_was,
            filed_at: record.filed_at,
            revision: record.revision,
            record: codec::encode(record)?,
        });
        Ok(())
    }

    /// Ends an actor's expired sessions, and its oldest live ones until
    /// `keep` remain.
    fn make_room(&mut self, sessions: Vec<(Digest, Record)>, keep: usize, now: u64) {
        let (expired, live): (Vec<_>, Vec<_>) =
            sessions.into_iter().partition(|(_, r)| r.expires_at <= now);
        for (d, r) in &expired {
            self.delete(d, r, UnsetReason::Expired);
        }
        let excess = live.len().saturating_sub(keep);
        for (d, r) in &live[..excess] {
            self.delete(d, r, UnsetReason::Replaced);
        }
    }

    /// A new session; the actor's oldest ones beyond the cap end `replaced`.
    pub fn register(&mut self, digest: &Digest, record: &Record) -> Result<Record> {
        let existing = self.sessions_of(&record.actor_id)?;
        let keep = self.rules.settings.max_per_actor - 1;
        self.make_room(existing, keep, record.created_at);
        self.insert(digest, record)?;
        Ok(record.clone())
    }

    /// A use of the session a key names: resolve, restore or extend.
    pub fn use_session(
        &mut self,
        digest: &Digest,
        actor_id: &str,
        now: u64,
        touch: Touch,
    ) -> Result<Record> {
        let mut record = self.validated(digest, actor_id, now)?;
        let wanted = self.rules.expiry_at(now, record.deadline);
        let write = match touch {
            Touch::Slide | Touch::Restore => self.rules.should_touch(record.expires_at, wanted),
            Touch::Extend => wanted != record.expires_at,
        };
        if write {
            record.expires_at = wanted;
            record.revision += 1;
            self.update(digest, record.filed_at, &mut record)?;
        }
        if touch == Touch::Restore {
            self.plan.events.push(set_event(&record));
        }
        Ok(record)
    }

    /// Ends the session a key names with `reason`.
    pub fn expire(
        &mut self,
        digest: &Digest,
        actor_id: &str,
        now: u64,
        reason: UnsetReason,
    ) -> Result<()> {
        let record = self.validated(digest, actor_id, now)?;
        self.delete(digest, &record, reason);
        Ok(())
    }

    /// Ends the actor's sessions beyond its cap as a register makes room
    /// (expired ones, then the oldest live ones); returns how many. The
    /// check after an unclean shutdown calls it for an actor it found over
    /// its cap: a register stopped after it stored its session.
    pub fn keep_cap(&mut self, actor_id: &str, now: u64) -> Result<usize> {
        let sessions = self.sessions_of(actor_id)?;
        let cap = self.rules.settings.max_per_actor;
        if sessions.len() <= cap {
            return Ok(0);
        }
        let before = self.plan.changes.len();
        self.make_room(sessions, cap, now);
        Ok(self.plan.changes.len() - before)
    }

    /// Ends every session of an actor; returns how many were live.
    pub fn expire_actor(
        &mut self,
        actor_id: &str,
        now: u64,
        reason: &UnsetReason,
    ) -> Result<usize> {
        let mut ended = 0;
        for (d, r) in &self.sessions_of(actor_id)? {
            // One that has already expired ends as `expired`, as in register
            // and reassign, and is not counted.
            if r.expires_at <= now {
                self.delete(d, r, UnsetReason::Expired);
            } else {
                self.delete(d, r, reason.clone());
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Changes the data of the session a key names with `edit`, which says
    /// whether it changed anything. With `expected_revision`, nothing is
    /// written unless the session is still at that revision. A `DataEdit::Add`
    /// is held to `Config::max_data_bytes`; a removal never is. Returns
    /// whether the data was written.
    pub fn edit_data(
        &mut self,
        digest: &Digest,
        actor_id: &str,
        now: u64,
        expected_revision: Option<u64>,
        kind: DataEdit,
        edit: impl FnOnce(&mut Data) -> bool,
    ) -> Result<bool> {
        let mut record = self.validated(digest, actor_id, now)?;
        if expected_revision.is_some_and(|r| r != record.revision) {
            return Ok(false);
        }
        if !edit(&mut record.data) {
            return Ok(false);
        }
        let size = record.data.size();
        let limit = self.rules.settings.max_data_bytes;
        if kind == DataEdit::Add && size > limit {
            return Err(Error::DataTooLarge { size, limit });
        }
        record.revision += 1;
        self.update(digest, record.filed_at, &mut record)?;
        Ok(true)
    }

    /// MAGE's reassign: every session of `from` ends; its newest live one
    /// goes on under `to` with a new digest.
    pub fn reassign(
        &mut self,
        from: &str,
        to: &str,
        new_digest: &Digest,
        now: u64,
    ) -> Result<Record> {
        let moved = self.move_out(from, to, now)?;
        let to_sessions = self.sessions_of(to)?;
        let keep = self.rules.settings.max_per_actor - 1;
        self.make_room(to_sessions, keep, now);
        self.insert(new_digest, &moved)?;
        Ok(moved)
    }

    /// Ends `from`'s sessions for a reassign to `to`; returns the newest
    /// live one as it is to be stored under `to`.
    fn move_out(&mut self, from: &str, to: &str, now: u64) -> Result<Record> {
        let from_sessions = self.sessions_of(from)?;
        let Some((_, newest)) = from_sessions.iter().rev().find(|(_, r)| r.expires_at > now) else {
            return Err(Error::Invalid(Reason::NoSession));
        };
        let mut moved = newest.clone();
        for (d, r) in &from_sessions {
            let reason = if r.expires_at <= now {
                UnsetReason::Expired
            } else {
                UnsetReason::Reassigned
            };
            self.delete(d, r, reason);
        }
        moved.actor_id = to.to_owned();
        moved.revision += 1;
        moved.expires_at = self.rules.expiry_at(now, moved.deadline);
        moved.filed_at = moved.expires_at;
        Ok(moved)
    }

    /// Step 1 of a reassign across shards (`intent`): `from`'s sessions
    /// end, and an intent holding the moved session is stored in `from`'s
    /// shard.
    pub fn reassign_out(
        &mut self,
        from: &str,
        to: &str,
        new_digest: &Digest,
        now: u64,
        intent_id: &str,
    ) -> Result<Intent> {
        let record = self.move_out(from, to, now)?;
        let intent = Intent {
            id: intent_id.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            digest: *new_digest,
            record,
            created_at: now,
        };
        self.plan.changes.push(Change::PutIntent {
            actor_id: from.to_owned(),
            id: intent.id.clone(),
            value: intent.encode()?,
        });
        Ok(intent)
    }

    /// Step 2 of a reassign across shards: the moved session is stored
    /// under its new actor (room made as a register makes it), with a note
    /// in that shard that it arrived. Once the note is there, this plans
    /// nothing and returns the session as stored.
    pub fn reassign_in(&mut self, intent: &Intent, now: u64) -> Result<Record> {
        let to = intent.to.as_str();
        let arrived = self.view.arrived(to, &intent.id)?;
        self.plan.preconditions.push(Precondition::Arrival {
            actor_id: to.to_owned(),
            id: intent.id.clone(),
            present: arrived,
        });
        if arrived {
            // Placed by an earlier run; since ended, if it is gone.
            return self
                .load(to, &intent.digest)?
                .ok_or(Error::Invalid(Reason::NoSession));
        }
        let to_sessions = self.sessions_of(to)?;
        let keep = self.rules.settings.max_per_actor - 1;
        self.make_room(to_sessions, keep, now);
        self.insert(&intent.digest, &intent.record)?;
        self.plan.changes.push(Change::Arrival {
            actor_id: to.to_owned(),
            id: intent.id.clone(),
            keep_ms: ARRIVAL_KEPT_MS,
        });
        Ok(intent.record.clone())
    }

    /// Step 3 of a reassign across shards: the intent goes.
    pub fn drop_intent(&mut self, intent: &Intent) {
        self.plan.changes.push(Change::DropIntent {
            actor_id: intent.from.clone(),
            id: intent.id.clone(),
        });
    }

    /// Ends the due sessions the reaper found; returns how many.
    pub fn reap(&mut self, due: &[Due], now: u64) -> Result<usize> {
        let mut reaped = 0;
        let wanted: Vec<(&str, Digest)> = due
            .iter()
            .map(|d| (d.actor_id.as_str(), d.digest))
            .collect();
        let loaded = self.load_all(&wanted)?;
        for (
            Due {
                at,
                digest,
                actor_id,
            },
            record,
        ) in due.iter().zip(loaded)
        {
            match record {
                // Re-checked here: a use may have slid the expiry later since
                // the entry was filed (or since the reaper scanned the index).
                Ok(Some(r)) if r.filed_at == *at => {
                    if r.expires_at <= now {
                        self.delete(digest, &r, UnsetReason::Expired);
                        reaped += 1;
                    } else if r.filed_at <= now {
                        // Not due: file the entry again at the real expiry.
                        let mut r = r;
                        r.filed_at = r.expires_at;
                        self.file_update(digest, *at, &r)?;
                    }
                }
                // A stale entry (no session, or one filed elsewhere), or a
                // record that does not decode: drop the entry so the reaper
                // does not return to it; `check` deals with the record.
                Ok(_) | Err(Error::Corrupt { .. }) => self.plan.changes.push(Change::DropExpiry {
                    digest: *digest,
                    actor_id: actor_id.clone(),
                    at: *at,
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(reaped)
    }

    /// MAGE's getActorAddresses, read as one consistent snapshot.
    pub fn addresses(&mut self, actor_ids: &[String], now: u64) -> Result<Vec<ActorAddress>> {
        let mut out = Vec::with_capacity(actor_ids.len());
        for actor_id in actor_ids {
            let mut records = Vec::new();
            for (_, r) in self.load_listed(actor_id)? {
                // A corrupt record is skipped here; `check` reports it.
                match r {
                    Ok(r) => records.extend(r),
                    Err(Error::Corrupt { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if let Some(r) = newest_live(records, now) {
                out.push(ActorAddress {
                    actor_id: r.actor_id,
                    node_id: r.node_id,
                    session_id: r.id,
                    language: r.language,
                });
            }
        }
        Ok(out)
    }

    /// Restores exported sessions exactly (digest, id, expiry, revision and
    /// data kept) with their index entries; a stored session under the same
    /// digest is replaced. No events: no client-visible change happened.
    /// Digests must be distinct. Returns how many were new.
    pub fn import(&mut self, sessions: &[Imported]) -> Result<usize> {
        let mut new = 0;
        let wanted: Vec<(&str, Digest)> = sessions
            .iter()
            .map(|s| (s.record.actor_id.as_str(), s.digest))
            .collect();
        let loaded = self.load_all(&wanted)?;
        for (s, old) in sessions.iter().zip(loaded) {
            match old? {
                Some(old) if old.actor_id != s.record.actor_id => {
                    return Err(Error::Import {
                        line: s.line,
                        problem: format!(
                            "the session's digest is already stored for another actor ({:?})",
                            crate::error::clip(&old.actor_id)
                        ),
                    })
                }
                Some(old) => self.update(&s.digest, old.filed_at, &mut s.record.clone())?,
                None => {
                    new += 1;
                    self.plan.changes.push(Change::Insert {
                        digest: s.digest,
                        actor_id: s.record.actor_id.clone(),
                        filed_at: s.record.filed_at,
                        revision: s.record.revision,
                        record: codec::encode(&s.record)?,
                    });
                }
            }
        }
        Ok(new)
    }
}

fn set_event(record: &Record) -> Event {
    Event::Set {
        id: record.id.clone(),
        actor_id: record.actor_id.clone(),
        language: record.language.clone(),
        expires_at: record.expires_at,
    }
}
