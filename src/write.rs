//! Every change to the store, written once against the [`Txn`] seam.
//!
//! Each operation first reads and decodes everything it needs, and only then
//! writes. Its own failures (an invalid key, too much data, a corrupt record)
//! are returned as values before any write, so one failing operation never
//! leaves half of its changes in the batch it shares with others. A storage
//! failure aborts the whole batch.

use crate::codec;
use crate::error::{Error, Reason, Result};
use crate::events::{Event, UnsetReason};
use crate::key::Digest;
use crate::rules::{newest_live, Facts, Rules};
use crate::session::{ActorAddress, Data, Record};
use crate::storage::Txn;

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

#[derive(Debug, Clone)]
pub(crate) enum DataChange {
    Set { name: String, json: String },
    Remove { name: String },
    Replace(Data),
}

/// One change, queued to the committer.
#[derive(Debug)]
pub(crate) enum Op {
    Register {
        digest: Digest,
        record: Record,
    },
    Use {
        digest: Digest,
        actor_id: String,
        now: u64,
        touch: Touch,
    },
    Expire {
        digest: Digest,
        actor_id: String,
        now: u64,
        reason: UnsetReason,
    },
    ExpireActor {
        actor_id: String,
        now: u64,
        reason: UnsetReason,
    },
    Data {
        digest: Digest,
        actor_id: String,
        now: u64,
        change: DataChange,
        expected_revision: Option<u64>,
    },
    Reassign {
        from: String,
        to: String,
        new_digest: Digest,
        now: u64,
    },
    Reap {
        due: Vec<(u64, Digest)>,
        now: u64,
    },
    /// A read that must be consistent across actors, so it runs in a batch.
    Addresses {
        actor_ids: Vec<String>,
        now: u64,
    },
    /// Restores exported sessions exactly (digest, id, expiry, revision and
    /// data kept) with all their index entries; a stored session under the
    /// same digest is replaced. No events: no client-visible change happened.
    /// Digests must be distinct within one op. Returns `Output::Count` of
    /// sessions that were new.
    Import {
        sessions: Vec<(Digest, Record)>,
    },
}

impl Op {
    /// The actors whose session lists this operation always reads.
    pub fn actors(&self) -> impl Iterator<Item = &str> {
        let (one, two, many): (Option<&str>, Option<&str>, &[String]) = match self {
            Op::Register { record, .. } => (Some(&record.actor_id), None, &[]),
            // These list the actor only when the session is gone or names
            // another actor (to tell noSession from keyMismatch); the
            // backend lists it then and runs the batch again.
            Op::Use { .. } | Op::Expire { .. } | Op::Data { .. } => (None, None, &[]),
            Op::ExpireActor { actor_id, .. } => (Some(actor_id), None, &[]),
            Op::Reassign { from, to, .. } => (Some(from), Some(to), &[]),
            Op::Reap { .. } => (None, None, &[]),
            Op::Addresses { actor_ids, .. } => (None, None, actor_ids),
            // Import never lists an actor's sessions; the index changes it
            // makes keep any list another operation of the batch holds current.
            Op::Import { .. } => (None, None, &[]),
        };
        one.into_iter()
            .chain(two)
            .chain(many.iter().map(String::as_str))
    }
}

/// What an operation returns.
#[derive(Debug)]
pub(crate) enum Output {
    Session(Record),
    Done,
    Count(usize),
    Removed(bool),
    /// The session's revision was not the expected one.
    Conflict,
    Addresses(Vec<ActorAddress>),
}

/// Applies `op` inside `txn`, appending the events it causes to `events`.
pub(crate) fn apply(
    op: &Op,
    txn: &dyn Txn,
    rules: &Rules,
    events: &mut Vec<Event>,
) -> Result<Output> {
    let mut w = Writer { txn, rules, events };
    match op {
        Op::Register { digest, record } => w.register(digest, record),
        Op::Use {
            digest,
            actor_id,
            now,
            touch,
        } => w.use_session(digest, actor_id, *now, *touch),
        Op::Expire {
            digest,
            actor_id,
            now,
            reason,
        } => {
            let record = w.validated(digest, actor_id, *now)?;
            w.delete(digest, &record, reason.clone())?;
            Ok(Output::Done)
        }
        Op::ExpireActor {
            actor_id,
            now,
            reason,
        } => {
            let mut ended = 0;
            for (d, r) in &w.sessions_of(actor_id)? {
                // One that has already expired ends as `expired`, as in
                // register and reassign, and is not counted.
                if r.expires_at <= *now {
                    w.delete(d, r, UnsetReason::Expired)?;
                } else {
                    w.delete(d, r, reason.clone())?;
                    ended += 1;
                }
            }
            Ok(Output::Count(ended))
        }
        Op::Data {
            digest,
            actor_id,
            now,
            change,
            expected_revision,
        } => w.change_data(digest, actor_id, *now, change, *expected_revision),
        Op::Reassign {
            from,
            to,
            new_digest,
            now,
        } => w.reassign(from, to, new_digest, *now),
        Op::Reap { due, now } => w.reap(due, *now),
        Op::Addresses { actor_ids, now } => w.addresses(actor_ids, *now),
        Op::Import { sessions } => w.import(sessions),
    }
}

struct Writer<'a, 'e> {
    txn: &'a dyn Txn,
    rules: &'a Rules,
    events: &'e mut Vec<Event>,
}

impl Writer<'_, '_> {
    fn load(&self, digest: &Digest) -> Result<Option<Record>> {
        match self.txn.get(digest)? {
            None => Ok(None),
            Some(bytes) => codec::decode_stored(digest, &bytes).map(Some),
        }
    }

    /// All of an actor's sessions, oldest first.
    fn sessions_of(&self, actor_id: &str) -> Result<Vec<(Digest, Record)>> {
        let mut out = Vec::new();
        for d in self.txn.actor_sessions(actor_id)? {
            if let Some(r) = self.load(&d)? {
                out.push((d, r));
            }
        }
        out.sort_by(|a, b| (a.1.created_at, &a.1.id).cmp(&(b.1.created_at, &b.1.id)));
        Ok(out)
    }

    fn has_live(&self, actor_id: &str, now: u64) -> Result<bool> {
        for d in self.txn.actor_sessions(actor_id)? {
            // A corrupt record is not a live session; `check` reports it.
            if let Ok(Some(r)) = self.load(&d) {
                if r.expires_at > now {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The session a key names, if the key is valid at `now`.
    fn validated(&self, digest: &Digest, actor_id: &str, now: u64) -> Result<Record> {
        let record = self.load(digest)?;
        let facts = record.as_ref().map(|r| Facts {
            actor_id: &r.actor_id,
            expires_at: r.expires_at,
            app_version: r.app_version.as_deref(),
        });
        self.rules
            .check(facts, actor_id, now, || self.has_live(actor_id, now))?;
        record.ok_or(Error::Invalid(Reason::NoSession))
    }

    fn insert(&mut self, digest: &Digest, record: &Record) -> Result<()> {
        self.txn.put(digest, codec::encode(record)?)?;
        self.txn.insert_expiry(record.expires_at, digest)?;
        self.txn.insert_actor(&record.actor_id, digest)?;
        self.txn.add_count(1);
        self.events.push(Event::Set {
            id: record.id.clone(),
            actor_id: record.actor_id.clone(),
            language: record.language.clone(),
            expires_at: record.expires_at,
        });
        Ok(())
    }

    fn delete(&mut self, digest: &Digest, record: &Record, reason: UnsetReason) -> Result<()> {
        self.txn.remove(digest)?;
        self.txn.remove_expiry(record.expires_at, digest)?;
        self.txn.remove_actor(&record.actor_id, digest)?;
        self.txn.add_count(-1);
        self.events.push(Event::Unset {
            id: record.id.clone(),
            actor_id: record.actor_id.clone(),
            reason,
        });
        Ok(())
    }

    /// Rewrites a record in place, moving its expiry entry if it changed.
    fn rewrite(&self, digest: &Digest, old_expiry: u64, record: &Record) -> Result<()> {
        self.txn.put(digest, codec::encode(record)?)?;
        if old_expiry != record.expires_at {
            self.txn.remove_expiry(old_expiry, digest)?;
            self.txn.insert_expiry(record.expires_at, digest)?;
        }
        Ok(())
    }

    /// Ends an actor's expired sessions, and its oldest live ones until
    /// `keep` remain.
    fn make_room(&mut self, sessions: Vec<(Digest, Record)>, keep: usize, now: u64) -> Result<()> {
        let (expired, live): (Vec<_>, Vec<_>) =
            sessions.into_iter().partition(|(_, r)| r.expires_at <= now);
        for (d, r) in &expired {
            self.delete(d, r, UnsetReason::Expired)?;
        }
        let excess = live.len().saturating_sub(keep);
        for (d, r) in &live[..excess] {
            self.delete(d, r, UnsetReason::Replaced)?;
        }
        Ok(())
    }

    fn register(&mut self, digest: &Digest, record: &Record) -> Result<Output> {
        let existing = self.sessions_of(&record.actor_id)?;
        let keep = self.rules.settings.max_per_actor - 1;
        self.make_room(existing, keep, record.created_at)?;
        self.insert(digest, record)?;
        Ok(Output::Session(record.clone()))
    }

    fn use_session(
        &mut self,
        digest: &Digest,
        actor_id: &str,
        now: u64,
        touch: Touch,
    ) -> Result<Output> {
        let mut record = self.validated(digest, actor_id, now)?;
        let wanted = self.rules.expiry_at(now, record.deadline);
        let write = match touch {
            Touch::Slide | Touch::Restore => self.rules.should_touch(record.expires_at, wanted),
            Touch::Extend => wanted != record.expires_at,
        };
        if write {
            let old = record.expires_at;
            record.expires_at = wanted;
            record.revision += 1;
            self.rewrite(digest, old, &record)?;
        }
        if touch == Touch::Restore {
            self.events.push(Event::Set {
                id: record.id.clone(),
                actor_id: record.actor_id.clone(),
                language: record.language.clone(),
                expires_at: record.expires_at,
            });
        }
        Ok(Output::Session(record))
    }

    fn change_data(
        &mut self,
        digest: &Digest,
        actor_id: &str,
        now: u64,
        change: &DataChange,
        expected_revision: Option<u64>,
    ) -> Result<Output> {
        let mut record = self.validated(digest, actor_id, now)?;
        if expected_revision.is_some_and(|r| r != record.revision) {
            return Ok(Output::Conflict);
        }
        let removed = match change {
            DataChange::Set { name, json } => {
                record.data.set_json_unchecked(name, json);
                None
            }
            DataChange::Remove { name } => Some(record.data.remove(name)),
            DataChange::Replace(data) => {
                record.data = data.clone();
                None
            }
        };
        if removed == Some(false) {
            return Ok(Output::Removed(false));
        }
        let size = record.data.size();
        let limit = self.rules.settings.max_data_bytes;
        if removed.is_none() && size > limit {
            return Err(Error::DataTooLarge { size, limit });
        }
        record.revision += 1;
        self.rewrite(digest, record.expires_at, &record)?;
        Ok(match removed {
            Some(r) => Output::Removed(r),
            None => Output::Session(record),
        })
    }

    fn reassign(&mut self, from: &str, to: &str, new_digest: &Digest, now: u64) -> Result<Output> {
        let from_sessions = self.sessions_of(from)?;
        let to_sessions = self.sessions_of(to)?;
        let Some((_, newest)) = from_sessions.iter().rev().find(|(_, r)| r.expires_at > now) else {
            return Err(Error::Invalid(Reason::NoSession));
        };
        let mut moved = newest.clone();
        // Every session of `from` ends; its newest live one goes on under `to`.
        for (d, r) in &from_sessions {
            let reason = if r.expires_at <= now {
                UnsetReason::Expired
            } else {
                UnsetReason::Reassigned
            };
            self.delete(d, r, reason)?;
        }
        let keep = self.rules.settings.max_per_actor - 1;
        self.make_room(to_sessions, keep, now)?;
        moved.actor_id = to.to_owned();
        moved.revision += 1;
        moved.expires_at = self.rules.expiry_at(now, moved.deadline);
        self.insert(new_digest, &moved)?;
        Ok(Output::Session(moved))
    }

    fn reap(&mut self, due: &[(u64, Digest)], now: u64) -> Result<Output> {
        let mut reaped = 0;
        for (at, digest) in due {
            match self.load(digest) {
                // Re-checked here: a resolve may have moved the expiry since
                // the reaper scanned the index.
                Ok(Some(r)) if r.expires_at == *at => {
                    if r.expires_at <= now {
                        self.delete(digest, &r, UnsetReason::Expired)?;
                        reaped += 1;
                    }
                }
                // A stale entry (no session, or one with another expiry), or a
                // record that does not decode: drop the entry so the reaper
                // does not return to it; `check` deals with the record.
                Ok(_) | Err(Error::Corrupt { .. }) => self.txn.remove_expiry(*at, digest)?,
                Err(e) => return Err(e),
            }
        }
        Ok(Output::Count(reaped))
    }

    fn import(&mut self, sessions: &[(Digest, Record)]) -> Result<Output> {
        // Reads and checks first, so that a refused import writes nothing.
        let mut stored = Vec::with_capacity(sessions.len());
        for (digest, record) in sessions {
            let old = self.load(digest)?;
            if let Some(old) = &old {
                if old.actor_id != record.actor_id {
                    return Err(Error::InvalidActorId {
                        actor_id: crate::error::clip(&record.actor_id),
                        problem: "the imported session's digest is stored for another actor",
                    });
                }
            }
            stored.push((codec::encode(record)?, old));
        }
        let mut new = 0;
        for ((digest, record), (bytes, old)) in sessions.iter().zip(stored) {
            match old {
                Some(old) => self.txn.remove_expiry(old.expires_at, digest)?,
                None => {
                    new += 1;
                    self.txn.add_count(1);
                }
            }
            self.txn.put(digest, bytes)?;
            self.txn.insert_expiry(record.expires_at, digest)?;
            self.txn.insert_actor(&record.actor_id, digest)?;
        }
        Ok(Output::Count(new))
    }

    fn addresses(&self, actor_ids: &[String], now: u64) -> Result<Output> {
        let mut out = Vec::with_capacity(actor_ids.len());
        for actor_id in actor_ids {
            // A corrupt record is skipped here; `check` reports it.
            let records = self
                .txn
                .actor_sessions(actor_id)?
                .iter()
                .filter_map(|d| self.load(d).ok().flatten())
                .collect::<Vec<_>>();
            if let Some(r) = newest_live(records, now) {
                out.push(ActorAddress {
                    actor_id: r.actor_id,
                    node_id: r.node_id,
                    session_id: r.id,
                    language: r.language,
                });
            }
        }
        Ok(Output::Addresses(out))
    }
}
