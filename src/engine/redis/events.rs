//! Events on Redis: the commit script appends each event to its actor's
//! bucket stream, numbered by a per-bucket sequence; one reader thread per
//! node follows every bucket's stream and publishes what it reads through
//! the node's `EventHub`, so every node hears every change, in commit order
//! per actor. A gap in the sequence (the stream was trimmed past what the
//! reader had read) becomes `Event::Lagged` with the exact count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::streams::StreamReadReply;
use redis::Connection;
use serde::{Deserialize, Serialize};

use super::conn::{failed, Pool};
use super::keys::Keys;
use crate::error::{Error, Result, StorageError};
use crate::events::{Event, EventHub, UnsetReason};
use crate::worker::{self, Poison};

/// How long one blocking read of the streams waits.
const BLOCK_MS: u64 = 100;
/// Most entries one read returns per stream.
const READ_COUNT: usize = 512;

/// An event as stored in a stream entry's `e` field.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "camelCase")]
enum Payload {
    #[serde(rename_all = "camelCase")]
    Set {
        id: String,
        actor_id: String,
        language: String,
        expires_at: u64,
    },
    #[serde(rename_all = "camelCase")]
    Unset {
        id: String,
        actor_id: String,
        reason: String,
    },
}

/// The JSON stored for `event`, and the actor whose bucket it goes to.
pub(crate) fn encode(event: &Event) -> Option<(&str, String)> {
    let (actor, payload) = match event {
        Event::Set {
            id,
            actor_id,
            language,
            expires_at,
        } => (
            actor_id.as_str(),
            Payload::Set {
                id: id.clone(),
                actor_id: actor_id.clone(),
                language: language.clone(),
                expires_at: *expires_at,
            },
        ),
        Event::Unset {
            id,
            actor_id,
            reason,
        } => (
            actor_id.as_str(),
            Payload::Unset {
                id: id.clone(),
                actor_id: actor_id.clone(),
                reason: reason.as_str().to_owned(),
            },
        ),
        Event::Lagged { .. } => return None,
    };
    serde_json::to_string(&payload)
        .ok()
        .map(|json| (actor, json))
}

fn decode(json: &str) -> Option<Event> {
    Some(match serde_json::from_str(json).ok()? {
        Payload::Set {
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
        Payload::Unset {
            id,
            actor_id,
            reason,
        } => Event::Unset {
            id,
            actor_id,
            reason: UnsetReason::parse(&reason).ok()?,
        },
    })
}

/// A stream entry id, `<ms>-<seq>`, as a comparable pair.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Where the reader is in each bucket's stream.
struct Position {
    id: String,
    sequence: u64,
}

/// The last entry of a bucket's stream that was published on this node:
/// its id and sequence number. Everything before it was published too (or
/// reported as missed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Mark {
    id: (u64, u64),
    sequence: u64,
}

/// Where the commit script appended one event: its bucket's stream, the
/// entry before it, its own entry id and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub bucket: u32,
    pub prev: (u64, u64),
    pub id: (u64, u64),
    pub sequence: u64,
}

impl Appended {
    /// One `stream, prev, id, n` group of the script's reply.
    pub fn parse(keys: &Keys, group: &[String]) -> Option<Appended> {
        let [stream, prev, id, sequence] = group else {
            return None;
        };
        Some(Appended {
            bucket: keys.split(stream)?.0,
            prev: parse_id(prev)?,
            id: parse_id(id)?,
            sequence: sequence.parse().ok()?,
        })
    }
}

/// What has been published of each bucket's stream, shared by the reader
/// and this node's writers, which publish their own events themselves.
pub(crate) struct Progress {
    published: Mutex<HashMap<u32, Mark>>,
    moved: Condvar,
    /// Tags this node's own events in the streams.
    origin: String,
    /// How long the reader leaves an own event to its writer.
    patience: Duration,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Mark>> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn new(origin: String, patience: Duration) -> Self {
        Progress {
            published: Mutex::new(HashMap::new()),
            moved: Condvar::new(),
            origin,
            patience,
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn advance(&self, bucket: u32, id: (u64, u64), sequence: u64) {
        self.lock().insert(bucket, Mark { id, sequence });
        self.moved.notify_all();
    }

    fn published(&self, bucket: u32) -> Mark {
        self.lock().get(&bucket).copied().unwrap_or_default()
    }

    /// A writer's own event, appended as `entry`: published once
    /// everything before it in its stream has been, so that per-actor order
    /// holds. Returns whether it is published (now, or earlier by the
    /// reader), or false when `deadline` passed.
    pub fn publish_own(
        &self,
        hub: &EventHub,
        entry: Appended,
        event: &Event,
        deadline: Instant,
    ) -> bool {
        let Appended {
            bucket,
            prev,
            id,
            sequence,
        } = entry;
        let mut published = self.lock();
        loop {
            let at = published.get(&bucket).copied().unwrap_or_default().id;
            if at >= id {
                return true;
            }
            if at >= prev {
                hub.publish(std::slice::from_ref(event));
                published.insert(bucket, Mark { id, sequence });
                self.moved.notify_all();
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            published = self
                .moved
                .wait_timeout(published, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Waits a little for a writer to publish its own event.
    fn wait_a_little(&self) {
        let published = self.lock();
        let _ = self
            .moved
            .wait_timeout(published, Duration::from_millis(1))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }

    /// The reader's event, entry `id` of `bucket`'s stream: published
    /// unless a writer already did.
    fn publish_read(&self, hub: &EventHub, bucket: u32, mark: Mark, event: Option<Event>) {
        let mut published = self.lock();
        if published.get(&bucket).is_some_and(|at| at.id >= mark.id) {
            return;
        }
        if let Some(event) = event {
            hub.publish(&[event]);
        }
        published.insert(bucket, mark);
        self.moved.notify_all();
    }
}

pub(crate) struct Reader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub progress: Arc<Progress>,
}

impl Reader {
    /// Starts following every bucket's stream from its current end. This
    /// node's own events (tagged `origin`) are left to their writers for up
    /// to `patience`.
    pub fn start(
        pool: Arc<Pool>,
        keys: Keys,
        events: Arc<EventHub>,
        poison: Arc<Poison>,
        origin: String,
        patience: Duration,
    ) -> Result<Reader> {
        let positions = pool.with(|con| current_ends(con, &keys))?;
        let progress = Arc::new(Progress::new(origin, patience));
        for (bucket, p) in positions.iter().enumerate() {
            if let Some(id) = parse_id(&p.id) {
                progress.advance(bucket as u32, id, p.sequence);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut follow = Follow {
            pool,
            keys,
            events,
            progress: progress.clone(),
            stop: stop.clone(),
            positions,
            deferred: HashMap::new(),
        };
        let handle = worker::spawn("events", poison, move || follow.run()).map_err(|source| {
            Error::WorkerStart {
                worker: "events",
                source,
            }
        })?;
        Ok(Reader {
            stop,
            handle: Some(handle),
            progress,
        })
    }

    /// Stops the reader and waits for it.
    pub fn stop(&mut self) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().is_none_or(|h| h.join().is_ok())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Each bucket's last stream entry and sequence number.
fn current_ends(con: &mut Connection, keys: &Keys) -> Result<Vec<Position>> {
    let fail = failed("reading the event streams' ends");
    let mut pipe = redis::pipe();
    for b in 0..keys.buckets() {
        pipe.cmd("XREVRANGE")
            .arg(keys.stream(b))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("GET")
            .arg(keys.sequence(b));
    }
    let replies: Vec<redis::Value> = pipe.query(con).map_err(&fail)?;
    let mut out = Vec::with_capacity(keys.buckets() as usize);
    for pair in replies.chunks(2) {
        let parse = |e| Error::Storage(StorageError::new("reading the event streams' ends", e));
        let last: redis::streams::StreamRangeReply =
            redis::from_redis_value(pair[0].clone()).map_err(parse)?;
        let sequence: Option<u64> = redis::from_redis_value(pair[1].clone()).map_err(parse)?;
        out.push(match last.ids.first() {
            Some(entry) => Position {
                id: entry.id.clone(),
                sequence: entry.get("n").unwrap_or(0),
            },
            None => Position {
                id: "0-0".into(),
                sequence: sequence.unwrap_or(0),
            },
        });
    }
    Ok(out)
}

struct Follow {
    pool: Arc<Pool>,
    keys: Keys,
    events: Arc<EventHub>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    positions: Vec<Position>,
    /// Own events left to their writers: bucket → (entry id, since when).
    deferred: HashMap<u32, (String, Instant)>,
}

impl Follow {
    fn run(&mut self) {
        let mut con = None;
        let mut backoff = Duration::from_millis(10);
        while !self.stop.load(Ordering::SeqCst) {
            if con.is_none() {
                match self
                    .pool
                    .connect(Some(Duration::from_millis(BLOCK_MS) + self.pool_timeout()))
                {
                    Ok(c) => {
                        con = Some(c);
                        backoff = Duration::from_millis(10);
                    }
                    Err(e) => {
                        log::warn!("event reader cannot reach the server: {e}");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            if let Some(c) = con.as_mut() {
                if let Err(e) = self.read(c) {
                    log::warn!("event reader lost its connection: {e}");
                    con = None;
                }
            }
        }
    }

    fn pool_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn read(&mut self, con: &mut Connection) -> std::result::Result<(), redis::RedisError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS");
        for b in 0..self.keys.buckets() {
            cmd.arg(self.keys.stream(b));
        }
        for p in &self.positions {
            cmd.arg(&p.id);
        }
        let reply: Option<StreamReadReply> = cmd.query(con)?;
        let Some(reply) = reply else {
            return Ok(());
        };
        let mut waiting = false;
        for stream in reply.keys {
            let Some((bucket, _)) = self.keys.split(&stream.key) else {
                continue;
            };
            let Some(position) = self.positions.get_mut(bucket as usize) else {
                continue;
            };
            for entry in &stream.ids {
                let Some(id) = parse_id(&entry.id) else {
                    continue;
                };
                let origin: Option<String> = entry.get("o");
                let mark = self.progress.published(bucket);
                if id > mark.id && origin.as_deref() == Some(self.progress.origin()) {
                    // This node's writer publishes it, in its plan's order;
                    // read on from here once it has (or has taken too long).
                    let since = match self.deferred.get(&bucket) {
                        Some((d, since)) if *d == entry.id => *since,
                        _ => {
                            let now = Instant::now();
                            self.deferred.insert(bucket, (entry.id.clone(), now));
                            now
                        }
                    };
                    if since.elapsed() < self.progress.patience {
                        waiting = true;
                        break;
                    }
                }
                self.deferred.remove(&bucket);
                // What came before this entry was read here, or published
                // by this node's writers: whichever got further.
                let before = position.sequence.max(
                    mark.sequence
                        .min(entry.get::<u64>("n").unwrap_or(u64::MAX).saturating_sub(1)),
                );
                let sequence: u64 = entry.get("n").unwrap_or(before + 1);
                let missed = sequence.saturating_sub(before + 1);
                if missed > 0 {
                    self.events.publish_gap(missed);
                }
                let json: Option<String> = entry.get("e");
                let event = json.as_deref().and_then(decode);
                if event.is_none() {
                    log::error!("event {} in {} does not decode", entry.id, stream.key);
                }
                self.progress
                    .publish_read(&self.events, bucket, Mark { id, sequence }, event);
                position.sequence = sequence;
                position.id = entry.id.clone();
            }
        }
        if waiting {
            self.progress.wait_a_little();
        }
        Ok(())
    }
}
