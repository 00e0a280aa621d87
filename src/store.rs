//! `SessionStore`: the public API over the committer, the reaper and the
//! storage backend.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clock::Clock;
use crate::codec;
use crate::committer::{CommitStats, Committer, Msg, Request};
use crate::config::{Config, Durability};
use crate::error::{clip, Error, Result};
use crate::events::{Event, EventHub, UnsetReason};
use crate::handoff;
use crate::key::{self, Digest, FullKey};
use crate::reaper::{self, Reaper};
use crate::recovery::{self, CheckReport, RecoveryReport};
use crate::rules::{newest_live, Facts, Rules};
use crate::session::{check_data_name, ActorAddress, Data, Record, Session};
use crate::storage::sled::SledBackend;
use crate::storage::{Backend, Space};
use crate::write::{DataChange, Op, Output, Touch};

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
    /// Transactions committed since open.
    pub commits: u64,
    /// Operations committed since open; `committed_ops / commits` is the
    /// batching factor.
    pub committed_ops: u64,
    /// fsyncs made by immediate durability since open.
    pub syncs: u64,
    /// Resolves that did not write because the expiry moved less than the
    /// touch interval.
    pub touches_skipped: u64,
    /// Operations that met a session record that does not decode (each
    /// answered with `Error::Corrupt`); `check` and `repair` deal with them.
    pub corrupt_records: u64,
}

/// What the reaper thread, the committer's callers and the API share.
pub(crate) struct Shared {
    pub backend: Arc<dyn Backend>,
    pub rules: Arc<Rules>,
    pub events: Arc<EventHub>,
    pub reap_batch: usize,
    clock: Arc<dyn Clock>,
    commit_stats: Arc<CommitStats>,
    to_committer: Sender<Msg>,
    /// Callers waiting for the committer's answer.
    waiting: AtomicUsize,
    /// How long a lone waiting caller polls for its answer (see `handoff`):
    /// zero in immediate mode, where the fsync outlasts any sensible spin.
    reply_spin: Duration,
    closed: AtomicBool,
    reaped: AtomicU64,
    touches_skipped: AtomicU64,
    corrupt_reads: AtomicU64,
    key_length: usize,
    node_id: Option<String>,
    app_version: Option<String>,
}

impl Shared {
    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn stopped(&self) -> Error {
        if self.closed.load(Ordering::SeqCst) {
            Error::Closed
        } else {
            Error::WorkerFailed {
                worker: "committer",
            }
        }
    }

    /// Refuses work once the store is closed. Reads check it as well as
    /// writes: a clone kept after `close` must not go on serving a store
    /// whose shutdown was already recorded as clean.
    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Queues `op` for the committer; `wait` gives its outcome.
    pub fn queue(&self, op: Op) -> Result<Receiver<Result<Output>>> {
        self.ensure_open()?;
        let (reply, outcome) = crossbeam_channel::bounded(1);
        self.to_committer
            .send(Msg::Write(Request { op, reply }))
            .map_err(|_| self.stopped())?;
        Ok(outcome)
    }

    /// The outcome of a queued operation.
    pub fn wait(&self, outcome: &Receiver<Result<Output>>) -> Result<Output> {
        // Only a lone caller polls: concurrent ones are batched anyway, and
        // their polling would take the cores from the committer.
        let alone = self.waiting.fetch_add(1, Ordering::Relaxed) == 0;
        let spin = if alone {
            self.reply_spin
        } else {
            Duration::ZERO
        };
        let answer = handoff::recv(outcome, spin);
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        answer.map_err(|_| self.stopped())?
    }

    /// Queues `op` for the committer and waits for its outcome.
    pub fn submit(&self, op: Op) -> Result<Output> {
        self.wait(&self.queue(op)?)
    }

    /// Runs `job` on the committer thread with no write in progress.
    pub(crate) fn exclusive<T: Send + 'static>(
        &self,
        job: impl FnOnce(&dyn Backend) -> T + Send + 'static,
    ) -> Result<T> {
        self.ensure_open()?;
        let (reply, outcome) = crossbeam_channel::bounded(1);
        let job = Box::new(move |backend: &dyn Backend| {
            let _ = reply.send(job(backend));
        });
        self.to_committer
            .send(Msg::Exclusive(job))
            .map_err(|_| self.stopped())?;
        outcome.recv().map_err(|_| self.stopped())
    }

    pub fn unexpected(&self, output: &Output) -> Error {
        Error::Storage(crate::error::StorageError::new(
            "internal",
            format!("unexpected committer output {output:?} (a bug in sessiondb)"),
        ))
    }

    pub fn count_reaped(&self, n: usize) {
        self.reaped.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn load(&self, digest: &Digest) -> Result<Option<Record>> {
        match self.backend.get(digest)? {
            None => Ok(None),
            Some(bytes) => self.counted(codec::decode_stored(digest, &bytes)).map(Some),
        }
    }

    /// Counts a corrupt record met on the read path.
    fn counted<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(Error::Corrupt { .. }) = result {
            self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn has_live(&self, actor_id: &str, now: u64) -> Result<bool> {
        for d in self.backend.actor_sessions(actor_id)? {
            if let Some(bytes) = self.backend.get(&d)? {
                if codec::decode_head(&bytes).is_ok_and(|h| h.expires_at > now) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The session a key names, if the key is valid now; no write.
    fn read_valid(&self, key: FullKey<'_>, now: u64) -> Result<Record> {
        self.ensure_open()?;
        let record = self.load(&key.digest())?;
        let facts = record.as_ref().map(|r| Facts {
            actor_id: &r.actor_id,
            expires_at: r.expires_at,
            app_version: r.app_version.as_deref(),
        });
        self.rules.check(facts, key.actor_id, now, || {
            self.has_live(key.actor_id, now)
        })?;
        record.ok_or(Error::Invalid(crate::Reason::NoSession))
    }

    fn expect_session(&self, output: Output, key: Option<String>) -> Result<Session> {
        match output {
            Output::Session(record) => Ok(Session { key, record }),
            other => Err(self.unexpected(&other)),
        }
    }
}

struct Workers {
    committer: JoinHandle<()>,
    reaper: Option<Reaper>,
}

/// Owns the threads; dropping the last handle closes the store.
struct Handle {
    shared: Arc<Shared>,
    workers: Mutex<Option<Workers>>,
    recovery: RecoveryReport,
}

impl Handle {
    fn close(&self) -> Result<()> {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(workers) = workers else {
            return Ok(());
        };
        let shared = &self.shared;
        shared.closed.store(true, Ordering::SeqCst);
        let reaper = workers.reaper.map_or(Ok(()), Reaper::stop);
        let _ = shared.to_committer.send(Msg::Shutdown);
        let committer = workers.committer.join().map_err(|_| Error::WorkerFailed {
            worker: "committer",
        });
        committer?;
        reaper?;
        recovery::mark_clean(shared.backend.as_ref())
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
    /// the previous run did not close it cleanly, and starts the committer
    /// and (unless disabled) the reaper thread.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a setting out of range; [`Error::InUse`]
    /// when another process holds the directory; [`Error::NewerFormat`] for a
    /// store written by a newer sessiondb; [`Error::Io`] / [`Error::Storage`]
    /// when the directory cannot be read or written.
    pub fn open(config: Config) -> Result<SessionStore> {
        Self::start(config, false).map(|(store, _)| store)
    }

    /// As [`SessionStore::open`], with a subscription made before the reaper
    /// starts. The reaper's first pass ends the sessions that expired while
    /// the store was closed; only a subscription made this way hears their
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
        let flush_every = match config.durability {
            Durability::Periodic(i) => Some(crate::config::millis(i).max(1)),
            Durability::Immediate => None,
        };
        let (backend, facts) = SledBackend::open(&config.path, config.cache_capacity, flush_every)?;
        let backend: Arc<dyn Backend> = Arc::new(backend);
        let recovery = recovery::recover(backend.as_ref(), facts, started)?;
        log::info!(
            "opened session store at {}: {recovery:?}",
            config.path.display()
        );

        let rules = Arc::new(Rules { settings });
        let events = Arc::new(EventHub::new(config.event_capacity));
        let commit_stats = Arc::new(CommitStats::default());
        let (to_committer, from_callers) = crossbeam_channel::unbounded();
        let spawn_failed = |source| Error::Io {
            action: "starting a thread for",
            path: config.path.clone(),
            source,
        };
        let committer = Committer {
            backend: backend.clone(),
            rules: rules.clone(),
            events: events.clone(),
            stats: commit_stats.clone(),
            sync: config.durability == Durability::Immediate,
            max_batch: config.max_batch,
        }
        .spawn(from_callers)
        .map_err(spawn_failed)?;
        let shared = Arc::new(Shared {
            backend,
            rules,
            events,
            reap_batch: config.reap_batch,
            clock: config.clock.clone(),
            commit_stats,
            to_committer,
            waiting: AtomicUsize::new(0),
            reply_spin: match config.durability {
                Durability::Periodic(_) => handoff::SPIN,
                Durability::Immediate => Duration::ZERO,
            },
            closed: AtomicBool::new(false),
            reaped: AtomicU64::new(0),
            touches_skipped: AtomicU64::new(0),
            corrupt_reads: AtomicU64::new(0),
            key_length: config.key_length,
            node_id: config.node_id.clone(),
            app_version: config.app_version.clone(),
        });
        // Built before the reaper starts, so that a failure to start it
        // still closes the committer (through Drop).
        let handle = Arc::new(Handle {
            shared: shared.clone(),
            workers: Mutex::new(Some(Workers {
                committer,
                reaper: None,
            })),
            recovery,
        });
        let events = subscribe.then(|| shared.events.subscribe());
        if config.reaper_thread {
            let reaper = Reaper::spawn(shared, config.reap_interval).map_err(spawn_failed)?;
            if let Some(w) = handle
                .workers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_mut()
            {
                w.reaper = Some(reaper);
            }
        }
        Ok((SessionStore { handle }, events))
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// What `open` found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.handle.recovery
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
        let secret = key::new_secret(shared.key_length)?;
        let deadline = shared.rules.deadline_for(now);
        let record = Record {
            actor_id: actor_id.to_owned(),
            expires_at: shared.rules.expiry_at(now, deadline),
            app_version: shared.app_version.clone(),
            revision: 1,
            id: key::new_public_id()?,
            language: language.to_owned(),
            created_at: now,
            deadline,
            node_id: shared.node_id.clone(),
            data,
        };
        let out = shared.submit(Op::Register {
            digest: Digest::of_secret(&secret),
            record,
        })?;
        shared.expect_session(out, Some(key::full_key(actor_id, &secret)))
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
            shared.touches_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Session {
                key: Some(full_key.to_owned()),
                record,
            });
        }
        let out = shared.submit(Op::Use {
            digest: key.digest(),
            actor_id: key.actor_id.to_owned(),
            now,
            touch: Touch::Slide,
        })?;
        shared.expect_session(out, Some(full_key.to_owned()))
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
        let digest = key.digest();
        let bytes = shared.backend.get(&digest)?;
        let head = bytes
            .as_deref()
            .map(|b| shared.counted(codec::decode_stored_head(&digest, b)))
            .transpose()?;
        let facts = head.as_ref().map(|h| Facts {
            actor_id: &h.actor_id,
            expires_at: h.expires_at,
            app_version: h.app_version.as_deref(),
        });
        shared.rules.check(facts, key.actor_id, now, || {
            shared.has_live(key.actor_id, now)
        })
    }

    /// MAGE's `restore`: resolves the key (sliding the expiry) and tells
    /// subscribers `session.set` again.
    ///
    /// # Errors
    /// As [`SessionStore::resolve`].
    pub fn restore(&self, full_key: &str) -> Result<Session> {
        self.use_key(full_key, Touch::Restore)
    }

    /// MAGE's `session.extend`: recomputes the expiry from now and writes it.
    ///
    /// # Errors
    /// As [`SessionStore::resolve`].
    pub fn extend(&self, full_key: &str) -> Result<Session> {
        self.use_key(full_key, Touch::Extend)
    }

    fn use_key(&self, full_key: &str, touch: Touch) -> Result<Session> {
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        let out = shared.submit(Op::Use {
            digest: key.digest(),
            actor_id: key.actor_id.to_owned(),
            now: shared.now(),
            touch,
        })?;
        shared.expect_session(out, Some(full_key.to_owned()))
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
        match shared.submit(Op::Expire {
            digest: key.digest(),
            actor_id: key.actor_id.to_owned(),
            now: shared.now(),
            reason,
        })? {
            Output::Done => Ok(()),
            other => Err(shared.unexpected(&other)),
        }
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
        match self.shared().submit(Op::ExpireActor {
            actor_id: actor_id.to_owned(),
            now: self.shared().now(),
            reason,
        })? {
            Output::Count(n) => Ok(n),
            other => Err(self.shared().unexpected(&other)),
        }
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
        let change = DataChange::Set {
            name: name.to_owned(),
            json,
        };
        self.change_data(full_key, change, None).map(drop)
    }

    /// Deletes data value `name`; returns whether it was set.
    ///
    /// # Errors
    /// [`Error::InvalidDataName`], [`Error::Invalid`]; storage errors.
    pub fn del_data(&self, full_key: &str, name: &str) -> Result<bool> {
        check_data_name(name)?;
        match self.change_data(
            full_key,
            DataChange::Remove {
                name: name.to_owned(),
            },
            None,
        )? {
            Output::Removed(r) => Ok(r),
            other => Err(self.shared().unexpected(&other)),
        }
    }

    fn change_data(
        &self,
        full_key: &str,
        change: DataChange,
        expected_revision: Option<u64>,
    ) -> Result<Output> {
        let key = FullKey::parse(full_key)?;
        let shared = self.shared();
        shared.submit(Op::Data {
            digest: key.digest(),
            actor_id: key.actor_id.to_owned(),
            now: shared.now(),
            change,
            expected_revision,
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
            match self.change_data(full_key, DataChange::Replace(data), Some(record.revision))? {
                Output::Conflict => continue,
                _ => return Ok(result),
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
        for d in shared.backend.actor_sessions(actor_id)? {
            records.extend(shared.load(&d)?);
        }
        Ok(newest_live(records, now).map(|record| Session { key: None, record }))
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
        match shared.submit(Op::Addresses {
            actor_ids,
            now: shared.now(),
        })? {
            Output::Addresses(a) => Ok(a),
            other => Err(shared.unexpected(&other)),
        }
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
            return Err(Error::InvalidActorId {
                actor_id: clip(to),
                problem: "a session cannot be reassigned to the actor that holds it",
            });
        }
        let shared = self.shared();
        let secret = key::new_secret(shared.key_length)?;
        let out = shared.submit(Op::Reassign {
            from: from.to_owned(),
            to: to.to_owned(),
            new_digest: Digest::of_secret(&secret),
            now: shared.now(),
        })?;
        shared.expect_session(out, Some(key::full_key(to, &secret)))
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
        Ok(Stats {
            sessions: s.backend.session_count()?,
            subscribers: s.events.subscriber_count(),
            events_missed: s.events.missed_total(),
            reaped: s.reaped.load(Ordering::Relaxed),
            commits: s.commit_stats.commits.load(Ordering::Relaxed),
            committed_ops: s.commit_stats.ops.load(Ordering::Relaxed),
            syncs: s.commit_stats.syncs.load(Ordering::Relaxed),
            touches_skipped: s.touches_skipped.load(Ordering::Relaxed),
            corrupt_records: s.corrupt_reads.load(Ordering::Relaxed)
                + s.commit_stats.corrupt.load(Ordering::Relaxed),
        })
    }

    /// Makes every acknowledged write durable (flush plus fsync).
    ///
    /// # Errors
    /// Storage and I/O errors.
    pub fn flush(&self) -> Result<()> {
        self.shared().ensure_open()?;
        self.shared().backend.flush(true)
    }

    /// Walks the whole store and reports broken invariants and corrupt
    /// records, changing nothing. Writes wait while it runs.
    ///
    /// # Errors
    /// [`Error::Closed`]; storage errors.
    pub fn check(&self) -> Result<CheckReport> {
        self.shared().exclusive(|b| recovery::check(b, false))?
    }

    /// As [`SessionStore::check`], and repairs what it finds: missing index
    /// entries are added, stale ones removed, the count fixed, and records
    /// that do not decode are moved to the quarantine tree.
    ///
    /// # Errors
    /// [`Error::Closed`]; storage errors.
    pub fn repair(&self) -> Result<CheckReport> {
        self.shared().exclusive(|b| recovery::check(b, true))?
    }

    /// How many records repair has moved to the quarantine.
    ///
    /// # Errors
    /// [`Error::Closed`]; storage errors.
    pub fn quarantined(&self) -> Result<u64> {
        self.shared().ensure_open()?;
        let mut n = 0;
        self.shared().backend.scan(Space::Quarantine, &mut |_, _| {
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }

    /// Stops the reaper and the committer (queued writes are committed
    /// first), flushes, and records a clean shutdown so that the next open
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
}
