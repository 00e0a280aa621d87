//! `SessionStore`: the public API. Each call checks its input, then reads
//! through the shared read path or hands a planning function to the write
//! path (`shared`); the session logic itself is in `plan` and `rules`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Receiver;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Config;
use crate::engine;
use crate::error::{clip, Error, Result};
use crate::events::{Event, EventHub, UnsetReason};
use crate::key::{self, Digest, FullKey};
use crate::meta::Meta;
use crate::plan::{DataEdit, Touch};
use crate::reaper::{self, Reaper};
use crate::recovery::{self, CheckReport, Recovering, RecoveryReport};
use crate::roll_forward;
use crate::rules::{newest_live, Facts, Rules};
use crate::session::{check_data_name, ActorAddress, Data, Record, Session};
use crate::shared::{About, Counters, Shared};
use crate::worker::{self, Poison};

/// Counters describing a running store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Sessions stored (expired ones not yet reaped included).
    pub sessions: u64,
    /// Live event subscribers.
    pub subscribers: usize,
    /// Events not delivered to full subscriber channels (see `Event::Lagged`).
    pub events_missed: u64,
    /// Sessions deleted by the reaper since open.
    pub reaped: u64,
    /// Changes committed since open that wrote something (on sled, each
    /// writing call is one; on Redis, one script each).
    pub commits: u64,
    /// Operations committed since open, those that wrote nothing included.
    pub committed_ops: u64,
    /// fsyncs made by immediate durability since open;
    /// `committed_ops / syncs` is how many operations share one.
    pub syncs: u64,
    /// Resolves that did not write because the expiry moved less than the
    /// touch interval.
    pub touches_skipped: u64,
    /// Operations that met a session record that does not decode (each
    /// answered with `Error::Corrupt`); `check` and `repair` deal with them.
    pub corrupt_records: u64,
    /// The check after an unclean shutdown is still running: the store
    /// serves meanwhile, and `sessions` may be off until it ends.
    pub checking: bool,
}

/// Owns the reaper and the engine; dropping the last handle closes the store.
struct Handle {
    shared: Arc<Shared>,
    reaper: Mutex<Option<Reaper>>,
    /// The background check after an unclean shutdown, while it runs.
    checker: Mutex<Option<JoinHandle<()>>>,
    /// Set once `close` has run.
    closing: AtomicBool,
    recovery: Arc<Recovering>,
}

impl Handle {
    fn close(&self) -> Result<()> {
        if self.closing.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let shared = &self.shared;
        shared.closed.store(true, Ordering::SeqCst);
        // The check finishes first: it may be holding writes the reaper waits for.
        let checker = self
            .checker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .map_or(Ok(()), |h| {
                h.join()
                    .map_err(|_| Error::WorkerFailed { worker: "checker" })
            });
        let reaper = self
            .reaper
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .map_or(Ok(()), Reaper::stop);
        // A store whose worker died, or whose check failed, is not marked
        // clean: the next open checks it.
        let recovery = self.recovery.report();
        let healthy = reaper.is_ok()
            && checker.is_ok()
            && shared.poison.failed().is_none()
            && !recovery.checking
            && recovery.check_error.is_none();
        shared.engine.close(healthy)?;
        reaper?;
        checker?;
        match shared.poison.failed() {
            Some(worker) => Err(Error::WorkerFailed { worker }),
            None => Ok(()),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            log::error!("closing the session store on drop failed: {e}");
        }
    }
}

/// A persistent session store. Cheap to clone; every clone is the same store.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct SessionStore {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("recovery", &self.handle.recovery)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    /// Opens (or creates) the store described by `config`, recovers it if
    /// the previous run did not close it cleanly (in the background, by
    /// default), and starts the reaper thread (unless disabled).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a setting out of range; [`Error::InUse`]
    /// when another process holds the directory; [`Error::NewerFormat`] for a
    /// store written by a newer sessiondb; [`Error::Io`] / [`Error::Storage`]
    /// when the directory cannot be read or written.
    pub fn open(config: Config) -> Result<SessionStore> {
        Self::start(config, false).map(|(store, _)| store)
    }

    /// As [`SessionStore::open`], with a subscription made before the check
    /// after an unclean shutdown and the reaper start. The check ends the
    /// sessions a crash left over their actor's cap (`replaced`), and the
    /// reaper's first pass the sessions that expired while the store was
    /// closed; only a subscription made this way hears all their
    /// `session.unset` events.
    ///
    /// # Errors
    /// As [`SessionStore::open`].
    pub fn open_subscribed(config: Config) -> Result<(SessionStore, Receiver<Event>)> {
        Self::start(config, true)
            .map(|(store, events)| (store, events.unwrap_or_else(crossbeam_channel::never)))
    }

    fn start(config: Config, subscribe: bool) -> Result<(SessionStore, Option<Receiver<Event>>)> {
        let started = Instant::now();
        let settings = config.validate()?;
        let events = Arc::new(EventHub::new(config.event_capacity));
        let poison = Arc::new(Poison::default());
        let (engine, opened) = engine::open(&config, events.clone(), poison.clone())?;
        let recovery = recovery::recover(opened, started);
        let shared = Arc::new(Shared {
            engine,
            rules: Arc::new(Rules { settings }),
            events,
            poison,
            clock: config.clock.clone(),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            reap_batch: config.reap_batch_or_default(),
            key_length: config.key_length,
            node_id: config.node_id.clone(),
            app_version: config.app_version.clone(),
        });
        // Before the check starts: the sessions it ends are announced once,
        // when it ends them, and a subscription made later misses them.
        let events = subscribe.then(|| shared.events.subscribe());
        // Built before the reaper starts, so that a failure to start it
        // still closes the engine (through Drop).
        let checking = recovery.checking;
        let handle = Arc::new(Handle {
            shared: shared.clone(),
            reaper: Mutex::new(None),
            checker: Mutex::new(None),
            closing: AtomicBool::new(false),
            recovery: Arc::new(Recovering::new(recovery)),
        });
        if checking && config.check_in_background {
            let (recovery, shared) = (handle.recovery.clone(), shared.clone());
            let checker = worker::spawn("checker", shared.poison.clone(), move || {
                recovery.check(&shared);
            })
            .map_err(|source| Error::WorkerStart {
                worker: "checker",
                source,
            })?;
            *handle
                .checker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(checker);
        } else if checking {
            handle.recovery.check(&shared);
            handle.recovery.opened_in(started.elapsed());
        }
        log::info!(
            "opened session store at {}: {:?}",
            config.describe(),
            handle.recovery.report()
        );
        // Reassigns across shards that a stopped node left half-way.
        match roll_forward::stuck(&shared, shared.now(), None) {
            Ok(0) => {}
            Ok(n) => log::warn!("finished {n} reassigns that stopped nodes left half-way"),
            Err(e) => log::warn!("half-way reassigns are left to the reaper: {e}"),
        }
        if config.reaper_thread {
            let reaper = Reaper::spawn(shared, config.reap_interval).map_err(|source| {
                Error::WorkerStart {
                    worker: "reaper",
                    source,
                }
            })?;
            *handle
                .reaper
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reaper);
        }
        Ok((SessionStore { handle }, events))
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// What `open` found and repaired. After an unclean shutdown the check
    /// may still be running (`checking`); its report is here once it ends.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.handle.recovery.report()
    }

    /// Waits until the check after an unclean shutdown has finished (at
    /// once if none runs) and returns the report, with the check's.
    pub fn wait_for_recovery(&self) -> RecoveryReport {
        self.handle.recovery.wait()
    }

    /// Creates a session for `actor_id` with `language` (MAGE's default is
    /// `"en"`) and `data`, and tells subscribers `session.set`. When the
    /// actor already holds `max_sessions_per_actor` sessions, the oldest is
    /// ended with reason `replaced`. The returned session's [`Session::key`]
    /// is the full key `actorId:secret`; it is shown only here.
    ///
    /// # Errors
    /// [`Error::InvalidActorId`], [`Error::InvalidLanguage`],
    /// [`Error::DataTooLarge`]; [`Error::InvalidDataName`] / [`Error::Data`]
    /// for deserialised data holding a name or value `Data::insert` refuses;
    /// [`Error::Closed`] after `close`; storage errors.
    pub fn register(&self, actor_id: &str, language: &str, data: Data) -> Result<Session> {
        self.register_with_meta(actor_id, language, data, Meta::new())
    }

    /// As [`SessionStore::register`], with the game server's metadata for
    /// the session (MAGE's `register(actorId, language, meta)`): a device,
    /// a platform, the address the player came from. It is stored with the
    /// session, kept by every later change (rotate and reassign included),
    /// and shown by [`Session::meta`] wherever the session is read, in
    /// [`SessionStore::actor_sessions`] too. [`Meta`] holds its bounds.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = sessiondb::SessionStore::open(sessiondb::Config::new(dir.path()))?;
    /// use sessiondb::{Data, Meta};
    /// let meta = Meta::from_pairs([("device", "Pixel 8"), ("address", "203.0.113.7")])?;
    /// let session = store.register_with_meta("player-7", "en", Data::new(), meta)?;
    /// let listed = store.actor_sessions("player-7")?;
    /// assert_eq!(listed[0].meta().get("device"), Some("Pixel 8"));
    /// # let _ = session;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`SessionStore::register`]. ([`Meta`] checks its own bounds as it
    /// is built.)
    pub fn register_with_meta(
        &self,
        actor_id: &str,
        language: &str,
        data: Data,
        meta: Meta,
    ) -> Result<Session> {
        key::check_actor_id(actor_id)?;
        key::check_language(language)?;
        data.check()?;
        let shared = self.shared();
        let limit = shared.rules.settings.max_data_bytes;
        if data.size() > limit {
            return Err(Error::DataTooLarge {
                size: data.size(),
                limit,
            });
        }
        let now = shared.now();
        let (secret, id) = key::new_secret_and_public_id(shared.key_length)?;
        let deadline = shared.rules.deadline_for(now);
        let expires_at = shared.rules.expiry_at(now, deadline);
        let record = Record {
            actor_id: actor_id.to_owned(),
            expires_at,
            filed_at: expires_at,
            app_version: shared.app_version.clone(),
            revision: 1,
            id,
            language: language.to_owned(),
            created_at: now,
            deadline,
            node_id: shared.node_id.clone(),
            data,
            meta,
        };
        let digest = Digest::of_secret(&secret);
        let record = shared.write(About::of(vec![actor_id.to_owned()]), move |p| {
            p.register(&digest, &record)
        })?;
        Ok(Session {
            key: Some(key::full_key(actor_id, &secret)),
            record,
        })
    }

    /// Validates a full key and returns its session, sliding the expiry
    /// forward. The expiry is only written when it moves by at least the
    /// touch interval, so hot sessions cost no write per resolve.
    ///
    /// # Errors
    /// [`Error::Invalid`] with `invalidSessionKey`, `noSession`,
    /// `keyMismatch`, `badVersion` or `expired`; [`Error::Corrupt`] when the
    /// session's record does not decode; storage errors.
    pub fn resolve(&self, full_key: &str) -> Result<Session> {
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        let now = shared.now();
        let record = shared.read_valid(key, now)?;
        let wanted = shared.rules.expiry_at(now, record.deadline);
        if !shared.rules.should_touch(record.expires_at, wanted) {
            shared
                .counters
                .touches_skipped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Session {
                key: Some(full_key.to_owned()),
                record,
            });
        }
        self.use_key(key, full_key, now, Touch::Slide)
    }

    /// Whether `full_key` names a live session (MAGE's `isValid`); the
    /// expiry is not moved.
    ///
    /// # Errors
    /// `Ok(())` when valid; [`Error::Invalid`] with the reason otherwise;
    /// storage errors.
    pub fn is_valid(&self, full_key: &str) -> Result<()> {
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        shared.ensure_open()?;
        let now = shared.now();
        let head = shared.load_head(key.actor_id, &key.digest())?;
        let facts = head.as_ref().map(|h| Facts {
            actor_id: &h.actor_id,
            expires_at: h.expires_at,
            app_version: h.app_version.as_deref(),
        });
        shared.check_key(key, facts, now)
    }

    /// MAGE's `restore`: resolves the key (sliding the expiry) and tells
    /// subscribers `session.set` again.
    ///
    /// # Errors
    /// As [`SessionStore::resolve`].
    pub fn restore(&self, full_key: &str) -> Result<Session> {
        let key = FullKey::parse(full_key)?;
        self.use_key(key, full_key, self.shared().now(), Touch::Restore)
    }

    /// MAGE's `session.extend`: recomputes the expiry from now and writes it.
    ///
    /// # Errors
    /// As [`SessionStore::resolve`].
    pub fn extend(&self, full_key: &str) -> Result<Session> {
        let key = FullKey::parse(full_key)?;
        self.use_key(key, full_key, self.shared().now(), Touch::Extend)
    }

    fn use_key(&self, key: FullKey<'_>, full_key: &str, now: u64, touch: Touch) -> Result<Session> {
        let (digest, actor_id) = (key.digest(), key.actor_id.to_owned());
        let about = About::of(vec![actor_id.clone()]);
        let record = self.shared().write(about, move |p| {
            p.use_session(&digest, &actor_id, now, touch)
        })?;
        Ok(Session {
            key: Some(full_key.to_owned()),
            record,
        })
    }

    /// MAGE's `logout`: ends the session with reason `loggedOut`.
    ///
    /// # Errors
    /// As [`SessionStore::expire`].
    pub fn logout(&self, full_key: &str) -> Result<()> {
        self.expire(full_key, UnsetReason::LoggedOut)
    }

    /// MAGE's `session.expire(reason)`: deletes the session and tells
    /// subscribers `session.unset` with `reason`.
    ///
    /// # Errors
    /// [`Error::InvalidReason`] for a malformed custom reason;
    /// [`Error::Invalid`] when the key is not valid; storage errors.
    pub fn expire(&self, full_key: &str, reason: UnsetReason) -> Result<()> {
        reason.check()?;
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        let (digest, actor_id, now) = (key.digest(), key.actor_id.to_owned(), shared.now());
        let about = About::of(vec![actor_id.clone()]);
        shared.write(about, move |p| {
            p.expire(&digest, &actor_id, now, reason.clone())
        })
    }

    /// Ends every live session of `actor_id` with `reason` (an admin action)
    /// and returns how many; sessions that had already expired end with
    /// `expired` and are not counted.
    ///
    /// # Errors
    /// [`Error::InvalidActorId`], [`Error::InvalidReason`]; storage errors.
    pub fn expire_actor(&self, actor_id: &str, reason: UnsetReason) -> Result<usize> {
        key::check_actor_id(actor_id)?;
        reason.check()?;
        let shared = self.shared();
        let (actor, now) = (actor_id.to_owned(), shared.now());
        shared.write(About::of(vec![actor_id.to_owned()]), move |p| {
            p.expire_actor(&actor, now, &reason)
        })
    }

    /// Ends one session of `actor_id`, named by its public id (as
    /// [`SessionStore::actor_sessions`] lists it), with `reason`: an admin
    /// ending one device's session without its key. Its holder hears
    /// `session.unset` with the reason.
    ///
    /// # Errors
    /// [`Error::Invalid`] with [`Reason::NoSession`](crate::Reason::NoSession)
    /// when the actor has no session of that id, or
    /// [`Reason::Expired`](crate::Reason::Expired) when it has passed its
    /// expiry (the reaper ends it); [`Error::InvalidActorId`],
    /// [`Error::InvalidSessionId`], [`Error::InvalidReason`]; storage errors.
    pub fn expire_session(
        &self,
        actor_id: &str,
        session_id: &str,
        reason: UnsetReason,
    ) -> Result<()> {
        key::check_actor_id(actor_id)?;
        key::check_session_id(session_id)?;
        reason.check()?;
        let shared = self.shared();
        let (actor, id, now) = (actor_id.to_owned(), session_id.to_owned(), shared.now());
        shared.write(About::of(vec![actor_id.to_owned()]), move |p| {
            p.expire_by_id(&actor, &id, now, &reason)
        })
    }

    /// Ends every other session of the key's actor ("log out my other
    /// devices") with `reason`, and returns how many live ones ended; the
    /// key's own session goes on, untouched. Sessions that had already
    /// expired end with `expired` and are not counted. Each holder hears
    /// `session.unset` with the reason.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the key is not valid; [`Error::InvalidReason`];
    /// storage errors.
    pub fn expire_others(&self, full_key: &str, reason: UnsetReason) -> Result<usize> {
        reason.check()?;
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        let (digest, actor_id, now) = (key.digest(), key.actor_id.to_owned(), shared.now());
        shared.write(About::of(vec![actor_id.clone()]), move |p| {
            p.expire_others(&digest, &actor_id, now, &reason)
        })
    }

    /// A new key for the key's session, as OWASP asks on every change of
    /// privilege (a guest who logs in, say): the old key stops working at
    /// once, and the session goes on under the new one (in the returned
    /// session's [`Session::key`]) with its public id, data, metadata,
    /// language, creation time, expiry and deadline; its revision moves on.
    /// Only the new secret's digest is stored. Subscribers hear
    /// `session.unset` with [`UnsetReason::Rotated`] (the old key is dead:
    /// its holder must drop it), then `session.set` for the same session
    /// id.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = sessiondb::SessionStore::open(sessiondb::Config::new(dir.path()))?;
    /// let old = store.register("player-7", "en", sessiondb::Data::new())?;
    /// let new = store.rotate(old.key().unwrap())?;
    /// assert_eq!(new.id(), old.id());
    /// assert!(store.is_valid(old.key().unwrap()).is_err());
    /// store.is_valid(new.key().unwrap())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`] when the key is not valid; [`Error::Random`];
    /// storage errors.
    pub fn rotate(&self, full_key: &str) -> Result<Session> {
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        let secret = key::new_secret(shared.key_length)?;
        let new_digest = Digest::of_secret(&secret);
        let (digest, actor_id, now) = (key.digest(), key.actor_id.to_owned(), shared.now());
        let about = About::of(vec![actor_id.clone()]);
        let record = shared.write(about, move |p| {
            p.rotate(&digest, &actor_id, &new_digest, now)
        })?;
        Ok(Session {
            key: Some(key::full_key(key.actor_id, &secret)),
            record,
        })
    }

    /// The data value `name` of the key's session, converted into `T`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the key is not valid; [`Error::Data`] when
    /// the stored value does not fit `T`; storage errors.
    pub fn get_data<T: DeserializeOwned>(&self, full_key: &str, name: &str) -> Result<Option<T>> {
        check_data_name(name)?;
        self.data(full_key)?.get(name)
    }

    /// All data of the key's session.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the key is not valid; storage errors.
    pub fn data(&self, full_key: &str) -> Result<Data> {
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        Ok(shared.read_valid(key, shared.now())?.data)
    }

    /// Sets data value `name` of the key's session to `value` (as JSON).
    ///
    /// # Errors
    /// [`Error::InvalidDataName`], [`Error::Data`] (not convertible to
    /// JSON), [`Error::DataTooLarge`], [`Error::Invalid`]; storage errors.
    pub fn set_data<T: Serialize + ?Sized>(
        &self,
        full_key: &str,
        name: &str,
        value: &T,
    ) -> Result<()> {
        check_data_name(name)?;
        let json = serde_json::to_string(value).map_err(|source| Error::Data {
            name: clip(name),
            source,
        })?;
        self.set_json(full_key, name, json)
    }

    /// Sets data value `name` from JSON text (validated and stored compact),
    /// as the HTTP API does.
    ///
    /// # Errors
    /// As [`SessionStore::set_data`]; [`Error::Data`] when `json` is not JSON.
    pub fn set_data_json(&self, full_key: &str, name: &str, json: &str) -> Result<()> {
        check_data_name(name)?;
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|source| Error::Data {
                name: clip(name),
                source,
            })?;
        self.set_data(full_key, name, &value)
    }

    fn set_json(&self, full_key: &str, name: &str, json: String) -> Result<()> {
        let limit = self.shared().rules.settings.max_data_bytes;
        if name.len() + json.len() > limit {
            return Err(Error::DataTooLarge {
                size: name.len() + json.len(),
                limit,
            });
        }
        let name = name.to_owned();
        self.edit_data(full_key, None, DataEdit::Add, move |data| {
            data.set_json_unchecked(&name, &json);
            true
        })
        .map(drop)
    }

    /// Deletes data value `name`; returns whether it was set.
    ///
    /// # Errors
    /// [`Error::InvalidDataName`], [`Error::Invalid`]; storage errors.
    pub fn del_data(&self, full_key: &str, name: &str) -> Result<bool> {
        check_data_name(name)?;
        let name = name.to_owned();
        self.edit_data(full_key, None, DataEdit::Remove, move |data| {
            data.remove(&name)
        })
    }

    /// Changes the key's data with `edit` (see `Planner::edit_data`);
    /// returns whether it was written.
    fn edit_data(
        &self,
        full_key: &str,
        expected_revision: Option<u64>,
        kind: DataEdit,
        edit: impl Fn(&mut Data) -> bool + Send + Sync + 'static,
    ) -> Result<bool> {
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        let (digest, actor_id, now) = (key.digest(), key.actor_id.to_owned(), shared.now());
        let about = About::of(vec![actor_id.clone()]);
        shared.write(about, move |p| {
            p.edit_data(&digest, &actor_id, now, expected_revision, kind, &edit)
        })
    }

    /// Read-modify-write of the key's data without lost updates: `f` gets
    /// the current data and changes it; the change is stored only if no
    /// other write reached the session meanwhile, else `f` runs again on
    /// the newer data. Returns what `f` returned the last time.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = sessiondb::SessionStore::open(sessiondb::Config::new(dir.path()))?;
    /// # let key = store.register("p1", "en", sessiondb::Data::new())?.key().unwrap().to_owned();
    /// store.update(&key, |data| {
    ///     let coins: u64 = data.get("coins").ok().flatten().unwrap_or(0);
    ///     data.insert("coins", &(coins + 10)).map(drop)
    /// })??;
    /// assert_eq!(store.get_data::<u64>(&key, "coins")?, Some(10));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`], [`Error::DataTooLarge`]; [`Error::InvalidDataName`]
    /// / [`Error::Data`] when `f` leaves a name or value `Data::insert` refuses
    /// (by replacing the data with a deserialised `Data`); storage errors.
    pub fn update<R>(&self, full_key: &str, mut f: impl FnMut(&mut Data) -> R) -> Result<R> {
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        loop {
            let record = shared.read_valid(key, shared.now())?;
            let mut data = record.data.clone();
            let result = f(&mut data);
            if data == record.data {
                return Ok(result);
            }
            data.check()?;
            let limit = shared.rules.settings.max_data_bytes;
            if data.size() > limit {
                return Err(Error::DataTooLarge {
                    size: data.size(),
                    limit,
                });
            }
            let replace = move |stored: &mut Data| {
                *stored = data.clone();
                true
            };
            if self.edit_data(full_key, Some(record.revision), DataEdit::Add, replace)? {
                return Ok(result);
            }
        }
    }

    /// The actor's newest live session (MAGE's `getActorSession`), without its key.
    ///
    /// # Errors
    /// [`Error::InvalidActorId`]; [`Error::Corrupt`]; storage errors.
    pub fn actor_session(&self, actor_id: &str) -> Result<Option<Session>> {
        key::check_actor_id(actor_id)?;
        let shared = self.shared();
        shared.ensure_open()?;
        let now = shared.now();
        let mut records = Vec::new();
        for d in shared.engine.actor_sessions(actor_id)? {
            records.extend(shared.load(actor_id, &d)?);
        }
        Ok(newest_live(records, now).map(|record| Session { key: None, record }))
    }

    /// Every live session of the actor, newest first (by creation), each
    /// without its key: what a player sees as "my devices", with each
    /// session's public id (for [`SessionStore::expire_session`]),
    /// language, creation, expiry and metadata. Empty when the actor has
    /// none. A record that does not decode is left out (`check` reports it).
    ///
    /// # Errors
    /// [`Error::InvalidActorId`]; storage errors.
    pub fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Session>> {
        key::check_actor_id(actor_id)?;
        let shared = self.shared();
        shared.ensure_open()?;
        let now = shared.now();
        let mut records = Vec::new();
        for d in shared.engine.actor_sessions(actor_id)? {
            match shared.load(actor_id, &d) {
                Ok(Some(r)) if r.expires_at > now => records.push(r),
                Ok(_) => {}
                Err(Error::Corrupt { .. }) => {
                    log::warn!(
                        "a session of actor {actor_id:?} does not decode; `check` reports it"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        records.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(records
            .into_iter()
            .map(|record| Session { key: None, record })
            .collect())
    }

    /// MAGE's `getActorAddresses`: for each actor with a live session, its
    /// node id, public session id and language, read as one consistent
    /// snapshot. Actors without a session are left out.
    ///
    /// # Errors
    /// [`Error::InvalidActorId`] for any bad id; storage errors.
    pub fn actor_addresses<S: AsRef<str>>(&self, actor_ids: &[S]) -> Result<Vec<ActorAddress>> {
        let actor_ids: Vec<String> = actor_ids.iter().map(|a| a.as_ref().to_owned()).collect();
        for a in &actor_ids {
            key::check_actor_id(a)?;
        }
        let shared = self.shared();
        let now = shared.now();
        // Planned as changes with nothing to commit, so that the engine
        // reads the actors of each shard in one consistent view (an actor's
        // sessions are always in one shard).
        let mut found = std::collections::HashMap::new();
        for actors in shared.by_shard(actor_ids.clone(), |a| a) {
            let about = About::of(actors.clone());
            for address in shared.write(about, move |p| p.addresses(&actors, now))? {
                found.insert(address.actor_id.clone(), address);
            }
        }
        Ok(actor_ids
            .iter()
            .filter_map(|a| found.get(a).cloned())
            .collect())
    }

    /// MAGE's `reassign`: every session of `from` ends with reason
    /// `reassigned`; its newest live one goes on under `to` with a new
    /// secret (returned in the session's key), its data and id kept, and
    /// subscribers hear `session.set`. Sessions of `to` beyond its cap end
    /// with `replaced`.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`noSession`) when `from` has no live session;
    /// [`Error::InvalidActorId`] for a bad id or `from == to`; storage errors.
    pub fn reassign(&self, from: &str, to: &str) -> Result<Session> {
        key::check_actor_id(from)?;
        key::check_actor_id(to)?;
        if from == to {
            return Err(Error::ReassignToSelf { actor_id: clip(to) });
        }
        let shared = self.shared();
        let secret = key::new_secret(shared.key_length)?;
        let new_digest = Digest::of_secret(&secret);
        let now = shared.now();
        let (f, t) = (from.to_owned(), to.to_owned());
        let record = if shared.engine.shard(from) == shared.engine.shard(to) {
            let about = About::of(vec![f.clone(), t.clone()]);
            shared.write(about, move |p| p.reassign(&f, &t, &new_digest, now))?
        } else {
            // The two actors live in different shards: step by step, so
            // that the session is never live under both (`intent`).
            let id = key::hex(&key::random_bytes::<12>()?);
            let about = About::of(vec![f.clone()]);
            let intent = shared.write(about, move |p| {
                p.reassign_out(&f, &t, &new_digest, now, &id)
            })?;
            roll_forward::one(shared, intent, now)?
        };
        Ok(Session {
            key: Some(key::full_key(to, &secret)),
            record,
        })
    }

    /// A new subscription to `session.set` / `session.unset` events, sent
    /// after each change is committed. The channel holds
    /// `Config::event_capacity` events; when it is full, later events are
    /// counted as missed and an [`Event::Lagged`] tells the subscriber how
    /// many before delivery resumes. The store never waits for a subscriber.
    pub fn subscribe(&self) -> Receiver<Event> {
        self.shared().events.subscribe()
    }

    /// One reaper pass: deletes every session due now (in batches of
    /// `reap_batch`), each with an `Unset(expired)` event. Returns how many.
    ///
    /// # Errors
    /// [`Error::Closed`]; storage errors.
    pub fn reap_expired(&self) -> Result<usize> {
        self.shared().ensure_open()?;
        reaper::pass(self.shared())
    }

    /// Counters describing the store.
    ///
    /// # Errors
    /// [`Error::Closed`]; storage errors reading the session count.
    pub fn stats(&self) -> Result<Stats> {
        let s = self.shared();
        s.ensure_open()?;
        let commits = s.engine.commit_counts();
        Ok(Stats {
            sessions: s.engine.session_count()?.sessions,
            subscribers: s.events.subscriber_count(),
            events_missed: s.events.missed_total(),
            reaped: s.counters.reaped.load(Ordering::Relaxed),
            commits: commits.commits,
            committed_ops: commits.plans,
            syncs: commits.syncs,
            touches_skipped: s.counters.touches_skipped.load(Ordering::Relaxed),
            corrupt_records: s.counters.corrupt.load(Ordering::Relaxed),
            checking: self.handle.recovery.checking(),
        })
    }

    /// Checks that the store can serve and returns how long that took: on
    /// Redis one round trip to the server, on sled a check that the store is
    /// open and its writer alive. For health checks and latency metrics.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server does not answer in time;
    /// [`Error::Closed`]; [`Error::WorkerFailed`].
    pub fn ping(&self) -> Result<std::time::Duration> {
        let started = Instant::now();
        self.shared().ensure_open()?;
        self.shared().engine.ping()?;
        Ok(started.elapsed())
    }

    /// Makes every acknowledged write durable (flush plus fsync).
    ///
    /// # Errors
    /// Storage and I/O errors.
    pub fn flush(&self) -> Result<()> {
        self.shared().ensure_open()?;
        self.shared().engine.flush()
    }

    /// Walks the whole store and reports broken invariants and corrupt
    /// records, changing nothing. Writes wait while it runs.
    ///
    /// # Errors
    /// [`Error::Closed`]; storage errors.
    pub fn check(&self) -> Result<CheckReport> {
        self.check_with(false)
    }

    /// As [`SessionStore::check`], and repairs what it finds: missing index
    /// entries are added, stale ones removed, the count fixed, and records
    /// that do not decode are moved to the quarantine tree.
    ///
    /// # Errors
    /// [`Error::Closed`]; storage errors.
    pub fn repair(&self) -> Result<CheckReport> {
        self.check_with(true)
    }

    /// How many records repair has moved to the quarantine.
    ///
    /// # Errors
    /// [`Error::Closed`]; storage errors.
    pub fn quarantined(&self) -> Result<u64> {
        self.shared().ensure_open()?;
        self.shared().engine.quarantined()
    }

    /// Waits for a running recovery check, stops the reaper, commits the
    /// queued writes, flushes, and records a clean shutdown so that the next open
    /// skips the full check. Other clones of this handle get
    /// [`Error::Closed`] afterwards; the directory is released when the last
    /// clone is dropped. Dropping the last handle without `close` does the same.
    ///
    /// # Errors
    /// [`Error::WorkerFailed`] if a background thread had panicked (the
    /// store is then not marked clean); storage errors.
    pub fn close(self) -> Result<()> {
        self.handle.close()
    }

    fn check_with(&self, repair: bool) -> Result<CheckReport> {
        let shared = self.shared();
        shared.ensure_open()?;
        let cap = shared.rules.settings.max_per_actor;
        let (mut report, over_cap) = {
            let _held = shared.engine.hold_writes()?;
            recovery::check(shared.engine.as_ref(), repair, cap)?
        };
        // Planned and committed as writes, once writes go on again.
        if repair && !over_cap.is_empty() {
            report.over_cap = recovery::end_over_cap(shared, &over_cap)?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_on_the_committer_thread_poisons_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(Config::new(dir.path()).reaper_thread(false)).unwrap();
        let key = store.register("p1", "en", Data::new()).unwrap();
        let key = key.key().unwrap().to_owned();
        // Planning runs in the write group's leader (a caller's thread here):
        // a bug there poisons the store under the committer's old name.
        let panicked = store.shared().write(About::default(), |_| -> Result<()> {
            panic!("a bug (on purpose)")
        });
        assert!(matches!(
            panicked,
            Err(Error::WorkerFailed {
                worker: "committer"
            })
        ));
        for outcome in [
            store.resolve(&key).map(drop),
            store.is_valid(&key),
            store.register("p2", "en", Data::new()).map(drop),
            store.stats().map(drop),
        ] {
            assert!(matches!(
                outcome,
                Err(Error::WorkerFailed {
                    worker: "committer"
                })
            ));
        }
        assert!(store.close().is_err());
        let store = SessionStore::open(Config::new(dir.path()).reaper_thread(false)).unwrap();
        assert!(!store.recovery_report().clean_shutdown);
        assert_eq!(store.resolve(&key).unwrap().actor_id(), "p1");
    }
}
