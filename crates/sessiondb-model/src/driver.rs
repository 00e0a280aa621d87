//! Runs [`Op`]s against a real `SessionStore` (manual clock, no reaper
//! thread) and against the [`Model`], and reports the first disagreement in
//! a result, a rejection reason or the events emitted.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use sessiondb::{Config, ManualClock, SessionStore};
use tempfile::TempDir;

use crate::ops::{Actor, Change, Key, Op, Setup, Value, Version, MALFORMED, NODE_ID, T0};
use crate::ops::{Payload, UNKNOWN_SECRET};
use crate::{Address, Data, Error, Event, Model, Reason, Session, UnsetReason};

/// What went wrong: a disagreement between store and model, or a store
/// failure the model does not predict.
pub type Mismatch = String;

/// Where the driver's store lives.
#[derive(Clone)]
pub enum Place {
    /// The embedded engine, in a fresh temporary directory.
    Directory,
    /// A store shared through servers (the Redis engine): the configuration
    /// of the store under the key prefix given, so that many drivers can
    /// share one server or cluster.
    Shared(Arc<dyn Fn(&str) -> Config + Send + Sync>),
}

impl Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Directory => f.write_str("Directory"),
            Place::Shared(_) => f.write_str("Shared"),
        }
    }
}

/// A store and its model, side by side.
pub struct Driver {
    setup: Setup,
    place: Place,
    /// The Redis key prefix of this driver's store.
    prefix: String,
    dir: TempDir,
    clock: ManualClock,
    store: Option<SessionStore>,
    events: Receiver<sessiondb::Event>,
    model: Model,
    /// Every full key the store handed out, in order.
    keys: Vec<String>,
}

impl Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("setup", &self.setup)
            .field("model", &self.model)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Compares one result.
fn same<T: Debug + PartialEq>(what: &str, store: T, model: T) -> Result<(), Mismatch> {
    if store == model {
        Ok(())
    } else {
        Err(format!("{what}: store {store:?}, model {model:?}"))
    }
}

fn reason_of(r: sessiondb::Reason) -> Result<Reason, Mismatch> {
    Ok(match r {
        sessiondb::Reason::InvalidSessionKey => Reason::InvalidSessionKey,
        sessiondb::Reason::NoSession => Reason::NoSession,
        sessiondb::Reason::KeyMismatch => Reason::KeyMismatch,
        sessiondb::Reason::BadVersion => Reason::BadVersion,
        sessiondb::Reason::Expired => Reason::Expired,
        other => return Err(format!("a reason the model does not know: {other}")),
    })
}

/// The model's view of a store error; errors it never predicts are mismatches.
fn error_of(e: sessiondb::Error) -> Result<Error, Mismatch> {
    Ok(match e {
        sessiondb::Error::Invalid(r) => Error::Invalid(reason_of(r)?),
        sessiondb::Error::InvalidActorId { .. } => Error::InvalidActorId,
        sessiondb::Error::ReassignToSelf { .. } => Error::ReassignToSelf,
        sessiondb::Error::InvalidLanguage { .. } => Error::InvalidLanguage,
        sessiondb::Error::InvalidDataName { .. } => Error::InvalidDataName,
        sessiondb::Error::InvalidReason { .. } => Error::InvalidReason,
        sessiondb::Error::DataTooLarge { size, limit } => Error::DataTooLarge { size, limit },
        other => return Err(format!("unexpected store error: {other} ({other:?})")),
    })
}

/// A store result in the model's terms.
fn outcome<T, U>(
    r: sessiondb::Result<T>,
    f: impl FnOnce(T) -> U,
) -> Result<crate::Result<U>, Mismatch> {
    match r {
        Ok(v) => Ok(Ok(f(v))),
        Err(e) => Ok(Err(error_of(e)?)),
    }
}

fn unset_of(r: &sessiondb::UnsetReason) -> UnsetReason {
    match r {
        sessiondb::UnsetReason::Expired => UnsetReason::Expired,
        sessiondb::UnsetReason::LoggedOut => UnsetReason::LoggedOut,
        sessiondb::UnsetReason::Replaced => UnsetReason::Replaced,
        sessiondb::UnsetReason::Reassigned => UnsetReason::Reassigned,
        other => UnsetReason::Other(other.as_str().to_owned()),
    }
}

fn unset_to_store(r: &UnsetReason) -> sessiondb::UnsetReason {
    match r {
        UnsetReason::Expired => sessiondb::UnsetReason::Expired,
        UnsetReason::LoggedOut => sessiondb::UnsetReason::LoggedOut,
        UnsetReason::Replaced => sessiondb::UnsetReason::Replaced,
        UnsetReason::Reassigned => sessiondb::UnsetReason::Reassigned,
        // Built by hand, not parsed, so that the store's own check runs.
        UnsetReason::Other(s) => sessiondb::UnsetReason::Other(s.clone()),
    }
}

fn event_of(e: sessiondb::Event) -> Result<Event, Mismatch> {
    Ok(match e {
        sessiondb::Event::Set {
            id,
            actor_id,
            language,
            expires_at,
        } => Event::Set {
            id,
            actor_id,
            language,
            expires_at,
        },
        sessiondb::Event::Unset {
            id,
            actor_id,
            reason,
        } => Event::Unset {
            id,
            actor_id,
            reason: unset_of(&reason),
        },
        other => return Err(format!("unexpected event {other:?}")),
    })
}

fn data_of(d: &sessiondb::Data) -> Data {
    d.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Unix milliseconds from chrono's signed count.
fn ms(millis: i64) -> u64 {
    u64::try_from(millis).unwrap_or(0)
}

fn session_of(s: &sessiondb::Session) -> Session {
    Session {
        id: s.id().to_owned(),
        actor_id: s.actor_id().to_owned(),
        language: s.language().to_owned(),
        created_at: ms(s.created_at().timestamp_millis()),
        expires_at: s.expires_at_ms(),
        deadline: s.deadline().map(|d| ms(d.timestamp_millis())),
        app_version: s.version().map(str::to_owned),
        node_id: s.node_id().map(str::to_owned),
        revision: s.revision(),
        data: data_of(s.data()),
    }
}

/// The secret part of a full key.
fn secret_of(full_key: Option<&str>) -> String {
    full_key
        .and_then(|k| k.rsplit_once(':'))
        .map_or_else(String::new, |(_, s)| s.to_owned())
}

impl Driver {
    /// A fresh store in a temporary directory, and an empty model.
    ///
    /// # Errors
    /// When the store does not open.
    pub fn new(setup: Setup) -> Result<Driver, Mismatch> {
        Driver::new_at(Place::Directory, setup)
    }

    /// A fresh store at `place`, and an empty model.
    ///
    /// # Errors
    /// When the store does not open.
    pub fn new_at(place: Place, setup: Setup) -> Result<Driver, Mismatch> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static STORES: AtomicU64 = AtomicU64::new(0);
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let clock = ManualClock::new(T0);
        let prefix = format!(
            "model-{}-{}",
            std::process::id(),
            STORES.fetch_add(1, Ordering::Relaxed)
        );
        let base = base(&place, &dir, &prefix);
        let store = SessionStore::open(config(base, &setup, &clock, setup.version))
            .map_err(|e| format!("open: {e}"))?;
        let events = store.subscribe();
        Ok(Driver {
            model: Model::new(setup.settings(), T0),
            setup,
            place,
            prefix,
            dir,
            clock,
            store: Some(store),
            events,
            keys: Vec::new(),
        })
    }

    /// Applies `ops` in order from a fresh store and stops at the first
    /// disagreement, naming its step.
    ///
    /// # Errors
    /// The first mismatch, as `step N Op: what`.
    pub fn run(setup: Setup, ops: &[Op]) -> Result<(), Mismatch> {
        Driver::run_at(Place::Directory, setup, ops)
    }

    /// As [`Driver::run`], with the store at `place`.
    ///
    /// # Errors
    /// The first mismatch, as `step N Op: what`.
    pub fn run_at(place: Place, setup: Setup, ops: &[Op]) -> Result<(), Mismatch> {
        let mut driver = Driver::new_at(place, setup)?;
        for (i, op) in ops.iter().enumerate() {
            driver
                .apply(op)
                .map_err(|e| format!("step {i} {op:?}: {e}"))?;
        }
        driver.finish()
    }

    /// Closes the store; a failure to close is a mismatch.
    ///
    /// # Errors
    /// When `close` fails.
    pub fn finish(mut self) -> Result<(), Mismatch> {
        match self.store.take() {
            Some(store) => store.close().map_err(|e| format!("close: {e}")),
            None => Ok(()),
        }
    }

    /// The model, as it stands.
    pub fn model(&self) -> &Model {
        &self.model
    }

    fn store(&self) -> Result<&SessionStore, Mismatch> {
        self.store
            .as_ref()
            .ok_or_else(|| "no open store".to_owned())
    }

    /// The full key a [`Key`] stands for now.
    pub fn key(&self, key: Key) -> String {
        let seen = |i: u8| self.keys.get(usize::from(i) % self.keys.len().max(1));
        match key {
            Key::Seen(i) => seen(i)
                .cloned()
                .unwrap_or_else(|| format!("a:{UNKNOWN_SECRET}")),
            Key::Malformed(i) => MALFORMED[usize::from(i) % MALFORMED.len()].to_owned(),
            Key::Unknown(actor) => format!("{}:{UNKNOWN_SECRET}", actor.id()),
            Key::Swapped(i, actor) => {
                let secret = seen(i).map_or_else(
                    || UNKNOWN_SECRET.to_owned(),
                    |k| secret_of(Some(k.as_str())),
                );
                format!("{}:{secret}", actor.id())
            }
        }
    }

    /// Applies one operation to both sides and compares the results, then
    /// the events each emitted.
    ///
    /// # Errors
    /// The first disagreement.
    pub fn apply(&mut self, op: &Op) -> Result<(), Mismatch> {
        let mut due = None;
        match op {
            Op::Register(actor, lang, payload) => self.register(*actor, lang.code(), *payload)?,
            Op::Resolve(k) => {
                let key = self.key(*k);
                let got = self.store()?.resolve(&key);
                self.same_session("resolve", &key, got, |m| m.resolve(&key))?;
            }
            Op::IsValid(k) => {
                let key = self.key(*k);
                let got = outcome(self.store()?.is_valid(&key), drop)?;
                same("is_valid", got, self.model.is_valid(&key))?;
            }
            Op::Restore(k) => {
                let key = self.key(*k);
                let got = self.store()?.restore(&key);
                self.same_session("restore", &key, got, |m| m.restore(&key))?;
            }
            Op::Extend(k) => {
                let key = self.key(*k);
                let got = self.store()?.extend(&key);
                self.same_session("extend", &key, got, |m| m.extend(&key))?;
            }
            Op::Logout(k) => {
                let key = self.key(*k);
                let got = outcome(self.store()?.logout(&key), drop)?;
                same(
                    "logout",
                    got,
                    self.model.expire(&key, UnsetReason::LoggedOut),
                )?;
            }
            Op::Expire(k, why) => {
                let key = self.key(*k);
                let reason = why.reason();
                let got = outcome(self.store()?.expire(&key, unset_to_store(&reason)), drop)?;
                same("expire", got, self.model.expire(&key, reason))?;
            }
            Op::ExpireActor(actor, why) => {
                let reason = why.reason();
                let got = self
                    .store()?
                    .expire_actor(actor.id(), unset_to_store(&reason));
                let got = outcome(got, |n| n)?;
                same(
                    "expire_actor",
                    got,
                    self.model.expire_actor(actor.id(), reason),
                )?;
            }
            Op::Data(k) => {
                let key = self.key(*k);
                let got = outcome(self.store()?.data(&key), |d| data_of(&d))?;
                same("data", got, self.model.data(&key))?;
            }
            Op::SetData(k, name, value) => {
                let key = self.key(*k);
                let store = self.store()?;
                let got = match value {
                    Value::Int(n) => store.set_data(&key, name.as_str(), n),
                    Value::Word => store.set_data(&key, name.as_str(), "hello"),
                    Value::Big => store.set_data(&key, name.as_str(), &"x".repeat(80)),
                };
                let want = self.model.set_data(&key, name.as_str(), &value.json());
                same("set_data", outcome(got, drop)?, want)?;
            }
            Op::DelData(k, name) => {
                let key = self.key(*k);
                let got = outcome(self.store()?.del_data(&key, name.as_str()), |r| r)?;
                same("del_data", got, self.model.del_data(&key, name.as_str()))?;
            }
            Op::Update(k, change) => {
                let key = self.key(*k);
                let got = self
                    .store()?
                    .update(&key, |d| change_store_data(*change, d));
                let want = self.model.update(&key, |d| change.apply(d));
                same("update", outcome(got, drop)?, want)?;
            }
            Op::Reassign(from, to) => self.reassign(*from, *to)?,
            Op::ActorSession(actor) => {
                let got = self.store()?.actor_session(actor.id());
                if let Ok(Some(s)) = &got {
                    same("actor_session key", s.key(), None)?;
                }
                let got = outcome(got, |s| s.as_ref().map(session_of))?;
                same("actor_session", got, self.model.actor_session(actor.id()))?;
            }
            Op::ActorAddresses(actors) => {
                let ids: Vec<&str> = actors.iter().map(|a| a.id()).collect();
                let got = outcome(self.store()?.actor_addresses(&ids), |list| {
                    list.into_iter()
                        .map(|a| Address {
                            actor_id: a.actor_id,
                            node_id: a.node_id,
                            session_id: a.session_id,
                            language: a.language,
                        })
                        .collect::<Vec<_>>()
                })?;
                same("actor_addresses", got, self.model.actor_addresses(&ids))?;
            }
            Op::Advance(step) => {
                let ms = step.ms(&self.model.settings);
                self.clock.advance(Duration::from_millis(ms));
                self.model.advance(ms);
            }
            Op::Reap => {
                due = Some(self.model.due());
                let got = outcome(self.store()?.reap_expired(), |n| n)?;
                same("reap_expired", got, Ok(self.model.reap()))?;
            }
            Op::Check => self.check()?,
            Op::Reopen(version) => {
                self.expect_no_events()?;
                let store = self.store.take().ok_or("no open store")?;
                store.close().map_err(|e| format!("close: {e}"))?;
                self.open(*version)?;
            }
            Op::DropReopen(version) => {
                self.expect_no_events()?;
                drop(self.store.take());
                self.open(*version)?;
            }
        }
        self.compare_events(due)
    }

    fn register(&mut self, actor: Actor, language: &str, payload: Payload) -> Result<(), Mismatch> {
        let mut data = sessiondb::Data::new();
        for (name, json) in payload.data() {
            data.insert_json(&name, &json)
                .map_err(|e| format!("building data: {e}"))?;
        }
        let got = self.store()?.register(actor.id(), language, data);
        let (id, secret) = match &got {
            Ok(s) => (s.id().to_owned(), secret_of(s.key())),
            Err(_) => (String::new(), String::new()),
        };
        if let Ok(s) = &got {
            let key = format!("{}:{secret}", actor.id());
            same("register key", s.key(), Some(key.as_str()))?;
            self.keys.push(key);
        }
        let want = self
            .model
            .register(actor.id(), language, payload.data(), &id, &secret);
        same("register", outcome(got, |s| session_of(&s))?, want)
    }

    fn reassign(&mut self, from: Actor, to: Actor) -> Result<(), Mismatch> {
        let got = self.store()?.reassign(from.id(), to.id());
        let secret = match &got {
            Ok(s) => secret_of(s.key()),
            Err(_) => String::new(),
        };
        if let Ok(s) = &got {
            let key = format!("{}:{secret}", to.id());
            same("reassign key", s.key(), Some(key.as_str()))?;
            self.keys.push(key);
        }
        let want = self.model.reassign(from.id(), to.id(), &secret);
        same("reassign", outcome(got, |s| session_of(&s))?, want)
    }

    /// Compares a session-returning call on `key`, whose session must echo the key.
    fn same_session(
        &mut self,
        what: &str,
        key: &str,
        got: sessiondb::Result<sessiondb::Session>,
        model: impl FnOnce(&mut Model) -> crate::Result<Session>,
    ) -> Result<(), Mismatch> {
        if let Ok(s) = &got {
            same(&format!("{what} key"), s.key(), Some(key))?;
        }
        let got = outcome(got, |s| session_of(&s))?;
        same(what, got, model(&mut self.model))
    }

    /// Broad agreement: the store is consistent, counts the same sessions,
    /// and every actor and every key seen reads the same.
    fn check(&mut self) -> Result<(), Mismatch> {
        let store = self.store()?;
        let report = store.check().map_err(|e| format!("check: {e}"))?;
        if !report.is_healthy() {
            return Err(format!("check found problems: {report:?}"));
        }
        let stats = store.stats().map_err(|e| format!("stats: {e}"))?;
        same(
            "stats().sessions",
            stats.sessions,
            self.model.session_count() as u64,
        )?;
        for actor in [Actor::A, Actor::B, Actor::C, Actor::Guild] {
            let got = outcome(store.actor_session(actor.id()), |s| {
                s.as_ref().map(session_of)
            })?;
            same(
                &format!("actor_session({actor:?})"),
                got,
                self.model.actor_session(actor.id()),
            )?;
        }
        for key in &self.keys {
            let got = outcome(store.is_valid(key), drop)?;
            same(&format!("is_valid({key})"), got, self.model.is_valid(key))?;
            let got = outcome(store.data(key), |d| data_of(&d))?;
            same(&format!("data({key})"), got, self.model.data(key))?;
        }
        Ok(())
    }

    fn open(&mut self, version: Version) -> Result<(), Mismatch> {
        let base = base(&self.place, &self.dir, &self.prefix);
        let config = config(base, &self.setup, &self.clock, version);
        let store = SessionStore::open(config).map_err(|e| format!("reopen: {e}"))?;
        same(
            "recovery_report().clean_shutdown",
            store.recovery_report().clean_shutdown,
            true,
        )?;
        self.events = store.subscribe();
        self.store = Some(store);
        self.model.settings.app_version = version.as_str().map(str::to_owned);
        Ok(())
    }

    fn expect_no_events(&mut self) -> Result<(), Mismatch> {
        let left: Vec<sessiondb::Event> = self.events.try_iter().collect();
        same("events left before closing", left, Vec::new())
    }

    /// Compares the events of one step. A reap ends sessions in the order
    /// the expiry index files them, which the model does not know (an entry
    /// may be filed before its session's expiry: store format 2), so there
    /// the events are compared as a set.
    fn compare_events(&mut self, due: Option<Vec<(u64, String)>>) -> Result<(), Mismatch> {
        let mut got = self
            .events
            .try_iter()
            .map(event_of)
            .collect::<Result<Vec<_>, _>>()?;
        let mut want = self.model.take_events();
        if let Some(due) = due {
            let expiry: BTreeMap<&str, u64> =
                due.iter().map(|(at, id)| (id.as_str(), *at)).collect();
            let order = |e: &Event| match e {
                Event::Unset { id, .. } => expiry.get(id.as_str()).copied(),
                Event::Set { .. } => None,
            };
            got.sort_by_key(|e| (order(e), e.clone()));
            want.sort_by_key(|e| (order(e), e.clone()));
        }
        if matches!(self.place, Place::Directory) {
            same("events", got, want)
        } else {
            same(
                "events per actor",
                by_actor(&got, true),
                by_actor(&want, true),
            )
        }
    }
}

/// `events` in order, split by actor when `per_actor` (else one group).
fn by_actor(events: &[Event], per_actor: bool) -> BTreeMap<String, Vec<&Event>> {
    let mut groups: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    for e in events {
        let actor = match e {
            Event::Set { actor_id, .. } | Event::Unset { actor_id, .. } if per_actor => {
                actor_id.clone()
            }
            _ => String::new(),
        };
        groups.entry(actor).or_default().push(e);
    }
    groups
}

/// Where the store is: `dir` for sled, else the shared store under `prefix`.
fn base(place: &Place, dir: &TempDir, prefix: &str) -> Config {
    match place {
        Place::Directory => Config::new(dir.path()),
        Place::Shared(config) => config(prefix),
    }
}

/// The store's configuration for `setup`, opened with app version `version`.
fn config(base: Config, setup: &Setup, clock: &ManualClock, version: Version) -> Config {
    let mut config = base
        .clock(Arc::new(clock.clone()))
        .reaper_thread(false)
        .ttl(Duration::from_millis(setup.ttl_ms()))
        .touch_interval(Duration::from_millis(setup.touch_ms()))
        .max_sessions_per_actor(setup.max_per_actor())
        .reap_batch(setup.reap_batch())
        .max_data_bytes(setup.max_data_bytes())
        .node_id(NODE_ID);
    if let Some(l) = setup.max_lifetime_ms() {
        config = config.max_lifetime(Duration::from_millis(l));
    }
    if let Some(v) = version.as_str() {
        config = config.app_version(v);
    }
    config
}

/// `Change::apply` on the store's data type.
fn change_store_data(change: Change, data: &mut sessiondb::Data) {
    match change {
        Change::Incr => {
            let n: i64 = data.get("n").ok().flatten().unwrap_or(0);
            let _ = data.insert("n", &(n + 1));
        }
        Change::Clear => {
            let names: Vec<String> = data.iter().map(|(k, _)| k.to_owned()).collect();
            for name in names {
                data.remove(&name);
            }
        }
        Change::Same => {}
        Change::Grow => {
            let _ = data.insert("w", &"x".repeat(80));
        }
    }
}
