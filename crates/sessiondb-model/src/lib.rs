//! A plain in-memory model of sessiondb's session semantics: the oracle that
//! the property test (`tests/model.rs`) and the fuzz target `ops_vs_model`
//! compare the real store against.
//!
//! Everything lives in one `BTreeMap` from secret to session, and every
//! operation is written out in the most direct way, so that it can be
//! trusted by reading. The model takes the public ids and secrets the store
//! generated (they are random there) and is told the time; given those, its
//! answers and the events it emits are exactly what the store must do.
//!
//! The rules, as the design notes and `src/write.rs` of sessiondb lay them down:
//! - A full key is `actorId:secret`, split at the last `:`.
//! - A key is valid when its secret names a session of that actor that has
//!   not expired (`expires_at <= now` is expired) and, when the app has a
//!   version, was made by the same `major.minor`. Otherwise the reason is
//!   `expired`, `badVersion`, or, when the secret names no session of that
//!   actor, `keyMismatch` if the actor has some live session, else `noSession`.
//! - An actor's sessions are ordered oldest first by `(created_at, id)`.
//! - Ending a session that has already expired always says `expired`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

pub mod ops;

#[cfg(feature = "driver")]
pub mod driver;

/// Why a key was rejected (sessiondb's `Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Malformed full key.
    InvalidSessionKey,
    /// The actor has no live session.
    NoSession,
    /// The actor has a live session, but not this one.
    KeyMismatch,
    /// Made by an app version outside the current `major.minor`.
    BadVersion,
    /// Past its expiry, not reaped yet.
    Expired,
}

/// Why a session ended (sessiondb's `UnsetReason`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum UnsetReason {
    /// `expired`
    Expired,
    /// `loggedOut`
    LoggedOut,
    /// `replaced`
    Replaced,
    /// `reassigned`
    Reassigned,
    /// `rotated`
    Rotated,
    /// A custom reason.
    Other(String),
}

/// `session.set` / `session.unset`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// A session was registered, restored or reassigned.
    Set {
        /// Public id.
        id: String,
        /// Holder.
        actor_id: String,
        /// Language.
        language: String,
        /// Stored expiry, ms.
        expires_at: u64,
    },
    /// A session ended.
    Unset {
        /// Public id.
        id: String,
        /// Holder.
        actor_id: String,
        /// Why.
        reason: UnsetReason,
    },
}

/// The errors the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A rejected key.
    Invalid(Reason),
    /// Empty, over-long or control characters.
    InvalidActorId,
    /// Reassigning a session to the actor that holds it.
    ReassignToSelf,
    /// Empty, over-long or not `[A-Za-z0-9_-]`.
    InvalidLanguage,
    /// Empty or over-long data name.
    InvalidDataName,
    /// A malformed custom unset reason.
    InvalidReason,
    /// A public session id that is not 1..=64 URL-safe characters.
    InvalidSessionId,
    /// Metadata out of its bounds.
    InvalidMeta,
    /// Data over the limit.
    DataTooLarge {
        /// The size the data would have.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// Outcome of a model operation.
pub type Result<T> = std::result::Result<T, Error>;

/// A session's data: names mapped to JSON text.
pub type Data = BTreeMap<String, String>;

/// A session's metadata from the game server.
pub type Meta = BTreeMap<String, String>;

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Public id.
    pub id: String,
    /// Holder.
    pub actor_id: String,
    /// Language.
    pub language: String,
    /// Creation time, ms.
    pub created_at: u64,
    /// Idle expiry, ms.
    pub expires_at: u64,
    /// Absolute deadline, ms.
    pub deadline: Option<u64>,
    /// App version that made it.
    pub app_version: Option<String>,
    /// Node that made it.
    pub node_id: Option<String>,
    /// Bumped on every write.
    pub revision: u64,
    /// Data.
    pub data: Data,
    /// The game server's metadata, given at register.
    pub meta: Meta,
}

/// What `actor_addresses` reports per actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The actor.
    pub actor_id: String,
    /// Node of its newest live session.
    pub node_id: Option<String>,
    /// Public id of its newest live session.
    pub session_id: String,
    /// Language of that session.
    pub language: String,
}

/// The store's settings, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Idle TTL.
    pub ttl_ms: u64,
    /// A use writes the expiry only when it moves by at least this much (and at least 1 ms).
    pub touch_ms: u64,
    /// Absolute cap on a session's life.
    pub max_lifetime_ms: Option<u64>,
    /// Sessions one actor may hold.
    pub max_per_actor: usize,
    /// Limit on names plus JSON texts.
    pub max_data_bytes: usize,
    /// The app's `major.minor.patch`, if checked.
    pub app_version: Option<String>,
    /// This node's id.
    pub node_id: Option<String>,
}

/// The in-memory session store.
#[derive(Debug, Clone)]
pub struct Model {
    /// The settings in force (the app version may change on reopen).
    pub settings: Settings,
    now: u64,
    /// secret → session
    sessions: BTreeMap<String, Session>,
    events: Vec<Event>,
}

/// Splits a full key at its last `:` and checks both parts.
pub fn parse_key(full_key: &str) -> Result<(&str, &str)> {
    let invalid = Error::Invalid(Reason::InvalidSessionKey);
    let (actor, secret) = full_key.rsplit_once(':').ok_or(invalid.clone())?;
    let secret_ok = !secret.is_empty()
        && secret.len() <= 128
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if check_actor_id(actor).is_err() || !secret_ok {
        return Err(invalid);
    }
    Ok((actor, secret))
}

/// 1..=255 bytes, no control characters.
pub fn check_actor_id(actor_id: &str) -> Result<()> {
    if actor_id.is_empty() || actor_id.len() > 255 || actor_id.chars().any(char::is_control) {
        return Err(Error::InvalidActorId);
    }
    Ok(())
}

/// 1..=35 bytes of `[A-Za-z0-9_-]`.
pub fn check_language(language: &str) -> Result<()> {
    let ok = !language.is_empty()
        && language.len() <= 35
        && language
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidLanguage)
    }
}

/// Custom reasons: 1..=64 bytes of `[A-Za-z0-9_.-]`.
pub fn check_reason(reason: &UnsetReason) -> Result<()> {
    match reason {
        UnsetReason::Other(s)
            if s.is_empty()
                || s.len() > 64
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) =>
        {
            Err(Error::InvalidReason)
        }
        _ => Ok(()),
    }
}

/// Public session ids: 1..=64 bytes of `[A-Za-z0-9_-]`.
pub fn check_session_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSessionId)
    }
}

/// Metadata: at most 16 entries; names 1..=64 bytes of `[A-Za-z0-9_.-]`;
/// values at most 256 bytes without control characters.
pub fn check_meta(meta: &Meta) -> Result<()> {
    let entry_ok = |name: &str, value: &str| {
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && value.len() <= 256
            && !value.chars().any(char::is_control)
    };
    if meta.len() > 16 || !meta.iter().all(|(n, v)| entry_ok(n, v)) {
        return Err(Error::InvalidMeta);
    }
    Ok(())
}

/// 1..=255 bytes.
pub fn check_data_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(Error::InvalidDataName);
    }
    Ok(())
}

/// Names plus JSON texts.
pub fn data_size(data: &Data) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn oldest_first(s: &Session) -> (u64, &str) {
    (s.created_at, &s.id)
}

impl Model {
    /// An empty store at time `now`.
    pub fn new(settings: Settings, now: u64) -> Model {
        Model {
            settings,
            now,
            sessions: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// The model's time, ms.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Moves time forward.
    pub fn advance(&mut self, ms: u64) {
        self.now = self.now.saturating_add(ms);
    }

    /// Events emitted since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Sessions stored, expired ones not yet reaped included.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Every actor that holds a stored session.
    pub fn actors(&self) -> Vec<String> {
        let mut actors: Vec<String> = self.sessions.values().map(|s| s.actor_id.clone()).collect();
        actors.sort();
        actors.dedup();
        actors
    }

    fn live(&self, s: &Session) -> bool {
        s.expires_at > self.now
    }

    fn version_ok(&self, s: &Session) -> bool {
        match &self.settings.app_version {
            None => true,
            Some(current) => {
                s.app_version.as_deref().and_then(major_minor) == major_minor(current)
                    && major_minor(current).is_some()
            }
        }
    }

    /// `now + ttl`, but never past the deadline.
    fn expiry_at(&self, deadline: Option<u64>) -> u64 {
        let idle = self.now.saturating_add(self.settings.ttl_ms);
        deadline.map_or(idle, |d| idle.min(d))
    }

    /// The secrets of an actor's sessions, oldest first.
    fn sessions_of(&self, actor_id: &str) -> Vec<String> {
        let mut of: Vec<(&String, &Session)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.actor_id == actor_id)
            .collect();
        of.sort_by(|a, b| oldest_first(a.1).cmp(&oldest_first(b.1)));
        of.into_iter().map(|(k, _)| k.clone()).collect()
    }

    fn newest_live(&self, actor_id: &str) -> Option<&Session> {
        self.sessions
            .values()
            .filter(|s| s.actor_id == actor_id && self.live(s))
            .max_by(|a, b| oldest_first(a).cmp(&oldest_first(b)))
    }

    /// The secret of the session `full_key` names, if valid now.
    fn validate(&self, full_key: &str) -> Result<String> {
        let (actor, secret) = parse_key(full_key)?;
        match self.sessions.get(secret) {
            Some(s) if s.actor_id == actor => {
                if !self.live(s) {
                    Err(Error::Invalid(Reason::Expired))
                } else if !self.version_ok(s) {
                    Err(Error::Invalid(Reason::BadVersion))
                } else {
                    Ok(secret.to_owned())
                }
            }
            _ if self.newest_live(actor).is_some() => Err(Error::Invalid(Reason::KeyMismatch)),
            _ => Err(Error::Invalid(Reason::NoSession)),
        }
    }

    fn session_mut(&mut self, secret: &str) -> &mut Session {
        self.sessions
            .get_mut(secret)
            .unwrap_or_else(|| panic!("the model lost session {secret}"))
    }

    fn set_event(s: &Session) -> Event {
        Event::Set {
            id: s.id.clone(),
            actor_id: s.actor_id.clone(),
            language: s.language.clone(),
            expires_at: s.expires_at,
        }
    }

    fn insert(&mut self, secret: &str, session: Session) {
        self.events.push(Model::set_event(&session));
        self.sessions.insert(secret.to_owned(), session);
    }

    /// Removes a session; one that has already expired always ends with `expired`.
    fn end(&mut self, secret: &str, reason: UnsetReason) {
        let s = self
            .sessions
            .remove(secret)
            .unwrap_or_else(|| panic!("the model lost session {secret}"));
        let reason = if self.live(&s) {
            reason
        } else {
            UnsetReason::Expired
        };
        self.events.push(Event::Unset {
            id: s.id,
            actor_id: s.actor_id,
            reason,
        });
    }

    /// Ends the actor's expired sessions, then its oldest live ones until
    /// `keep` live ones remain (reason `replaced`).
    fn make_room(&mut self, actor_id: &str, keep: usize) {
        let all = self.sessions_of(actor_id);
        let (expired, live): (Vec<String>, Vec<String>) =
            all.into_iter().partition(|k| !self.live(&self.sessions[k]));
        for k in expired {
            self.end(&k, UnsetReason::Expired);
        }
        let excess = live.len().saturating_sub(keep);
        for k in &live[..excess] {
            self.end(k, UnsetReason::Replaced);
        }
    }

    /// `register`: a new session with the given (store-made) id and secret.
    pub fn register(
        &mut self,
        actor_id: &str,
        language: &str,
        data: Data,
        id: &str,
        secret: &str,
    ) -> Result<Session> {
        self.register_with_meta(actor_id, language, data, Meta::new(), id, secret)
    }

    /// `register_with_meta`: as `register`, with the game server's metadata.
    pub fn register_with_meta(
        &mut self,
        actor_id: &str,
        language: &str,
        data: Data,
        meta: Meta,
        id: &str,
        secret: &str,
    ) -> Result<Session> {
        check_actor_id(actor_id)?;
        check_language(language)?;
        check_meta(&meta)?;
        let limit = self.settings.max_data_bytes;
        if data_size(&data) > limit {
            return Err(Error::DataTooLarge {
                size: data_size(&data),
                limit,
            });
        }
        let deadline = self
            .settings
            .max_lifetime_ms
            .map(|l| self.now.saturating_add(l));
        let session = Session {
            id: id.to_owned(),
            actor_id: actor_id.to_owned(),
            language: language.to_owned(),
            created_at: self.now,
            expires_at: self.expiry_at(deadline),
            deadline,
            app_version: self.settings.app_version.clone(),
            node_id: self.settings.node_id.clone(),
            revision: 1,
            data,
            meta,
        };
        self.make_room(actor_id, self.settings.max_per_actor - 1);
        self.insert(secret, session.clone());
        Ok(session)
    }

    /// Slides (`Slide`/`Restore`: only by at least the touch interval) or
    /// recomputes (`extend`) the expiry of a valid key's session.
    fn use_key(&mut self, full_key: &str, always: bool, tell: bool) -> Result<Session> {
        let secret = self.validate(full_key)?;
        let touch = self.settings.touch_ms.max(1);
        let wanted = self.expiry_at(self.sessions[&secret].deadline);
        let s = self.session_mut(&secret);
        let write = if always {
            wanted != s.expires_at
        } else {
            wanted >= s.expires_at.saturating_add(touch)
        };
        if write {
            s.expires_at = wanted;
            s.revision += 1;
        }
        let s = s.clone();
        if tell {
            self.events.push(Model::set_event(&s));
        }
        Ok(s)
    }

    /// `resolve`: validate and slide the expiry.
    pub fn resolve(&mut self, full_key: &str) -> Result<Session> {
        self.use_key(full_key, false, false)
    }

    /// `restore`: resolve, and `session.set` again.
    pub fn restore(&mut self, full_key: &str) -> Result<Session> {
        self.use_key(full_key, false, true)
    }

    /// `extend`: recompute the expiry and write it if it changed.
    pub fn extend(&mut self, full_key: &str) -> Result<Session> {
        self.use_key(full_key, true, false)
    }

    /// `is_valid`: validate, no write.
    pub fn is_valid(&self, full_key: &str) -> Result<()> {
        self.validate(full_key).map(drop)
    }

    /// `expire(key, reason)` (and `logout`, with `LoggedOut`).
    pub fn expire(&mut self, full_key: &str, reason: UnsetReason) -> Result<()> {
        check_reason(&reason)?;
        let secret = self.validate(full_key)?;
        self.end(&secret, reason);
        Ok(())
    }

    /// `expire_actor`: ends every live session of the actor with `reason`
    /// and returns how many; its expired ones end with `expired`, uncounted.
    pub fn expire_actor(&mut self, actor_id: &str, reason: UnsetReason) -> Result<usize> {
        check_actor_id(actor_id)?;
        check_reason(&reason)?;
        let mut ended = 0;
        for k in self.sessions_of(actor_id) {
            if self.live(&self.sessions[&k]) {
                ended += 1;
            }
            self.end(&k, reason.clone());
        }
        Ok(ended)
    }

    /// `data`: the valid key's data.
    pub fn data(&self, full_key: &str) -> Result<Data> {
        let secret = self.validate(full_key)?;
        Ok(self.sessions[&secret].data.clone())
    }

    /// `set_data` with the value's JSON text.
    pub fn set_data(&mut self, full_key: &str, name: &str, json: &str) -> Result<()> {
        check_data_name(name)?;
        let limit = self.settings.max_data_bytes;
        if name.len() + json.len() > limit {
            return Err(Error::DataTooLarge {
                size: name.len() + json.len(),
                limit,
            });
        }
        let secret = self.validate(full_key)?;
        let mut data = self.sessions[&secret].data.clone();
        data.insert(name.to_owned(), json.to_owned());
        if data_size(&data) > limit {
            return Err(Error::DataTooLarge {
                size: data_size(&data),
                limit,
            });
        }
        let s = self.session_mut(&secret);
        s.data = data;
        s.revision += 1;
        Ok(())
    }

    /// `del_data`: whether `name` was set.
    pub fn del_data(&mut self, full_key: &str, name: &str) -> Result<bool> {
        check_data_name(name)?;
        let secret = self.validate(full_key)?;
        let s = self.session_mut(&secret);
        let removed = s.data.remove(name).is_some();
        if removed {
            s.revision += 1;
        }
        Ok(removed)
    }

    /// `update`: applies `change` to the data; writes only if it changed.
    pub fn update(&mut self, full_key: &str, change: impl FnOnce(&mut Data)) -> Result<()> {
        let secret = self.validate(full_key)?;
        let mut data = self.sessions[&secret].data.clone();
        change(&mut data);
        if data == self.sessions[&secret].data {
            return Ok(());
        }
        let limit = self.settings.max_data_bytes;
        if data_size(&data) > limit {
            return Err(Error::DataTooLarge {
                size: data_size(&data),
                limit,
            });
        }
        let s = self.session_mut(&secret);
        s.data = data;
        s.revision += 1;
        Ok(())
    }

    /// `reassign`: every session of `from` ends (`reassigned`, or `expired`
    /// if it had); its newest live one goes on under `to` with the given new
    /// secret, its id, data and creation time kept, its expiry from now;
    /// `to`'s sessions beyond the cap are replaced.
    pub fn reassign(&mut self, from: &str, to: &str, secret: &str) -> Result<Session> {
        check_actor_id(from)?;
        check_actor_id(to)?;
        if from == to {
            return Err(Error::ReassignToSelf);
        }
        let Some(newest) = self.newest_live(from).cloned() else {
            return Err(Error::Invalid(Reason::NoSession));
        };
        for k in self.sessions_of(from) {
            self.end(&k, UnsetReason::Reassigned);
        }
        self.make_room(to, self.settings.max_per_actor - 1);
        let moved = Session {
            actor_id: to.to_owned(),
            revision: newest.revision + 1,
            expires_at: self.expiry_at(newest.deadline),
            ..newest
        };
        self.insert(secret, moved.clone());
        Ok(moved)
    }

    /// `rotate`: the valid key's session goes on under `new_secret`,
    /// everything kept but its revision, which moves on; `session.unset`
    /// (`rotated`) then `session.set` for the same id.
    pub fn rotate(&mut self, full_key: &str, new_secret: &str) -> Result<Session> {
        let secret = self.validate(full_key)?;
        let mut session = self
            .sessions
            .remove(&secret)
            .unwrap_or_else(|| panic!("the model lost session {secret}"));
        self.events.push(Event::Unset {
            id: session.id.clone(),
            actor_id: session.actor_id.clone(),
            reason: UnsetReason::Rotated,
        });
        session.revision += 1;
        self.insert(new_secret, session.clone());
        Ok(session)
    }

    /// `actor_sessions`: the actor's live sessions, newest first.
    pub fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Session>> {
        check_actor_id(actor_id)?;
        let mut live: Vec<Session> = self
            .sessions
            .values()
            .filter(|s| s.actor_id == actor_id && self.live(s))
            .cloned()
            .collect();
        live.sort_by(|a, b| oldest_first(b).cmp(&oldest_first(a)));
        Ok(live)
    }

    /// `expire_session`: ends the actor's session with public id
    /// `session_id`; `noSession` when there is none, `expired` when it has
    /// expired.
    pub fn expire_session(
        &mut self,
        actor_id: &str,
        session_id: &str,
        reason: UnsetReason,
    ) -> Result<()> {
        check_actor_id(actor_id)?;
        check_session_id(session_id)?;
        check_reason(&reason)?;
        let found = self
            .sessions
            .iter()
            .find(|(_, s)| s.actor_id == actor_id && s.id == session_id)
            .map(|(k, s)| (k.clone(), self.live(s)));
        match found {
            None => Err(Error::Invalid(Reason::NoSession)),
            Some((_, false)) => Err(Error::Invalid(Reason::Expired)),
            Some((secret, true)) => {
                self.end(&secret, reason);
                Ok(())
            }
        }
    }

    /// `expire_others`: ends every session of the valid key's actor but its
    /// own, oldest first; returns how many were live (expired ones end with
    /// `expired`, uncounted).
    pub fn expire_others(&mut self, full_key: &str, reason: UnsetReason) -> Result<usize> {
        check_reason(&reason)?;
        let mine = self.validate(full_key)?;
        let actor = self.sessions[&mine].actor_id.clone();
        let mut ended = 0;
        for k in self.sessions_of(&actor) {
            if k == mine {
                continue;
            }
            if self.live(&self.sessions[&k]) {
                ended += 1;
            }
            self.end(&k, reason.clone());
        }
        Ok(ended)
    }

    /// `actor_session`: the actor's newest live session.
    pub fn actor_session(&self, actor_id: &str) -> Result<Option<Session>> {
        check_actor_id(actor_id)?;
        Ok(self.newest_live(actor_id).cloned())
    }

    /// `actor_addresses`: one entry per listed actor with a live session.
    pub fn actor_addresses(&self, actor_ids: &[&str]) -> Result<Vec<Address>> {
        for a in actor_ids {
            check_actor_id(a)?;
        }
        Ok(actor_ids
            .iter()
            .filter_map(|a| self.newest_live(a))
            .map(|s| Address {
                actor_id: s.actor_id.clone(),
                node_id: s.node_id.clone(),
                session_id: s.id.clone(),
                language: s.language.clone(),
            })
            .collect())
    }

    /// The sessions due now as `(expires_at, id)`, in the order a reap ends
    /// them (the store breaks ties by digest, which the model does not know).
    pub fn due(&self) -> Vec<(u64, String)> {
        let mut due: Vec<(u64, String)> = self
            .sessions
            .values()
            .filter(|s| !self.live(s))
            .map(|s| (s.expires_at, s.id.clone()))
            .collect();
        due.sort();
        due
    }

    /// `reap_expired`: ends every session due now with `expired`.
    pub fn reap(&mut self) -> usize {
        let mut due: Vec<(u64, String, String)> = self
            .sessions
            .iter()
            .filter(|(_, s)| !self.live(s))
            .map(|(k, s)| (s.expires_at, s.id.clone(), k.clone()))
            .collect();
        due.sort();
        for (_, _, k) in &due {
            self.end(k, UnsetReason::Expired);
        }
        due.len()
    }
}
