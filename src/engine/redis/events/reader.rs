//! The event reader: a supervisor thread (`sessiondb-events`) and, per
//! primary, a subscriber thread (`sessiondb-events-sub`) holding one
//! connection subscribed to the shard channels of the buckets that primary
//! serves.
//!
//! A subscriber publishes what it hears through [`Progress::offer`]; after
//! subscribing, and whenever a message does not follow the last entry
//! heard, it reads the bucket's stream from there (`catch_up`). It stops
//! when its connection fails, when its server drops the subscription (the
//! slots moved: a cluster failover) or when the topology changed; the
//! supervisor then learns the topology again and starts subscribers for the
//! primaries it finds. Behind Sentinel the supervisor also asks the
//! sentinels for the primary every second (a Sentinel failover tells
//! subscribers nothing); a cluster is asked only when something failed.
//!
//! The subscriber of bucket 0's primary also listens on the members
//! channel and on this node's presence channel, and every subscriber hands
//! the reaping hints it hears to the schedule (`reaping`); after
//! subscribing it reads its buckets' earliest expiries. A quiet
//! subscription costs the server one PING every half minute.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use redis::{Connection, Value};

use super::{format_id, Entry, EntryId, Mark, Offered, Progress};
use crate::backoff::Backoff;
use crate::engine::redis::conn::{Nodes, Pool, Primary};
use crate::engine::redis::keys::Keys;
use crate::engine::redis::reaping::{self, Hint, Membership, Schedule};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::events::EventHub;
use crate::worker::{self, Poison};

/// How long a subscriber's read waits when nothing is pending.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long it waits while an own event is left to its writer.
const PENDING_WAIT: Duration = Duration::from_millis(1);
/// How often the supervisor looks at its subscribers (and asks the
/// sentinels for the primary).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a subscription may stay quiet before it is pinged: a dead
/// server whose connection did not close is found within this.
const PING_AFTER: Duration = Duration::from_secs(30);
/// Most entries one stream read returns.
const READ_COUNT: usize = 512;
/// The pause before subscribing again after failures in a row: 20 ms
/// doubling up to 320 ms, so a server that is down (a failover takes
/// seconds) is not asked a hundred times a second.
const RETRY: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(320));

/// What the reader needs of the engine.
#[derive(Clone)]
struct Shared {
    nodes: Arc<Nodes>,
    keys: Keys,
    events: Arc<EventHub>,
    progress: Arc<Progress>,
    schedule: Arc<Schedule>,
    poison: Arc<Poison>,
}

pub(crate) struct Reader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts following every bucket from its stream's current end. This
    /// node's own events are left to their writers for up to the
    /// progress's patience.
    pub fn start(
        nodes: Arc<Nodes>,
        keys: Keys,
        events: Arc<EventHub>,
        progress: Arc<Progress>,
        schedule: Arc<Schedule>,
        poison: Arc<Poison>,
    ) -> Result<Reader> {
        for (bucket, mark) in current_ends(&nodes, &keys)? {
            progress.start(bucket, mark);
        }
        let shared = Shared {
            nodes,
            keys,
            events,
            progress,
            schedule,
            poison: poison.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = worker::spawn("events", poison, move || supervise(&shared, &stopping))
            .map_err(|source| Error::WorkerStart {
                worker: "events",
                source,
            })?;
        Ok(Reader {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the reader and waits for it; false if it had panicked.
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

/// Each bucket's last stream entry and event number, from its head.
fn current_ends(nodes: &Nodes, keys: &Keys) -> Result<Vec<(u32, Mark)>> {
    let buckets: Vec<(u32, u16)> = (0..keys.buckets()).map(|b| (b, keys.slot(b))).collect();
    let replies = nodes.across(&buckets, 1, "reading the event streams' ends", |pipe, b| {
        pipe.cmd("HMGET").arg(keys.head(b)).arg("n").arg("p");
    })?;
    Ok(replies
        .into_iter()
        .map(|(bucket, reply)| {
            let (n, p): (Option<u64>, Option<String>) = reply
                .into_iter()
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let mark = Mark {
                id: p.as_deref().and_then(super::parse_id).unwrap_or((0, 0)),
                sequence: n.unwrap_or(0),
            };
            (bucket, mark)
        })
        .collect())
}

/// The entries of an `XRANGE` / `XREVRANGE` reply.
fn entries(reply: Value) -> Vec<Entry> {
    let Ok(range) = redis::from_redis_value::<redis::streams::StreamRangeReply>(reply) else {
        return Vec::new();
    };
    range
        .ids
        .iter()
        .filter_map(|e| {
            let entry = Entry::from_stream(&e.id, |f| e.get::<String>(f));
            if entry.is_none() {
                log::error!("stream entry {} is malformed; skipped", e.id);
            }
            entry
        })
        .collect()
}

/// Why a subscriber stopped.
enum Exit {
    Stopped,
    /// Its server dropped the subscription, or the topology changed.
    Moved,
    Failed(String),
}

/// Starts a subscriber per primary, and starts them again whenever one
/// stops or the topology changes, until told to stop.
fn supervise(shared: &Shared, stop: &AtomicBool) {
    // Failures in a row, and when the first of them came: one warning per
    // outage, and one line when the subscription is back.
    let mut outage: Option<(u32, Instant)> = None;
    while !stop.load(Ordering::SeqCst) {
        let generation = shared.nodes.generation();
        let quit = Arc::new(AtomicBool::new(false));
        let (exits, exited) = crossbeam_channel::unbounded();
        let mut children = Vec::new();
        for primary in shared.nodes.primaries() {
            let buckets: Vec<u32> = (0..shared.keys.buckets())
                .filter(|&b| primary.serves(shared.keys.slot(b)))
                .collect();
            if buckets.is_empty() {
                continue;
            }
            let (shared, quit, exits) = (shared.clone(), quit.clone(), exits.clone());
            let poison = shared.poison.clone();
            let spawned = worker::spawn("events-sub", poison, move || {
                let exit = Subscriber::new(shared, primary, buckets, generation).run(&quit);
                let _ = exits.send(exit);
            });
            match spawned {
                Ok(h) => children.push(h),
                Err(e) => log::error!("cannot start an event subscriber: {e}"),
            }
        }
        let mut last_refresh = Instant::now();
        // Until the next attempt: longer after each failure in a row.
        let mut pause_for = RETRY.pause(1);
        let started = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            match exited.recv_timeout(Duration::from_millis(100)) {
                Ok(Exit::Stopped) | Err(RecvTimeoutError::Disconnected) => {}
                Ok(Exit::Moved) => break,
                Ok(Exit::Failed(why)) => {
                    let (failures, _) = outage.get_or_insert_with(|| {
                        log::warn!("event subscriber stopped: {why}");
                        (0, Instant::now())
                    });
                    *failures += 1;
                    if *failures > 1 {
                        log::debug!("event subscriber stopped again: {why}");
                    }
                    pause_for = RETRY.pause(*failures);
                    break;
                }
                Err(RecvTimeoutError::Timeout) if started.elapsed() >= HEARTBEAT => {
                    // Every subscriber has run a heartbeat without failing.
                    if let Some((failures, since)) = outage.take() {
                        log::info!(
                            "event subscriber back after {failures} failed attempt(s) over {:.1} s",
                            since.elapsed().as_secs_f64()
                        );
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if shared.nodes.changes_silently() && last_refresh.elapsed() >= HEARTBEAT {
                last_refresh = Instant::now();
                shared.nodes.refresh();
            }
            if shared.nodes.generation() != generation {
                break;
            }
        }
        quit.store(true, Ordering::SeqCst);
        for h in children {
            let _ = h.join();
        }
        if !stop.load(Ordering::SeqCst) {
            shared.nodes.refresh();
            // A server that just went away is not asked again at once.
            pause(stop, pause_for);
        }
    }
}

/// Sleeps for `pause`, or until told to stop.
fn pause(stop: &AtomicBool, pause: Duration) {
    let end = Instant::now() + pause;
    while !stop.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// One primary's subscription.
struct Subscriber {
    shared: Shared,
    primary: Primary,
    buckets: Vec<u32>,
    /// The topology generation it was started for.
    generation: u64,
    /// Channel name → bucket.
    channels: HashMap<String, u32>,
    /// Whether it serves bucket 0, where the members channel and this
    /// node's presence channel are.
    members: bool,
    /// Messages heard but not yet published, per bucket, in order.
    pending: HashMap<u32, VecDeque<Entry>>,
    /// Buckets whose stream reading stopped at an own entry left to its
    /// writer: read on once it is published (or the writer's patience ends).
    behind: HashSet<u32>,
    /// When each own entry was first met.
    own_seen: HashMap<EntryId, Instant>,
}

impl Subscriber {
    fn new(shared: Shared, primary: Primary, buckets: Vec<u32>, generation: u64) -> Self {
        let channels = buckets
            .iter()
            .map(|&b| (shared.keys.channel(b), b))
            .collect();
        let members = buckets.contains(&0);
        Subscriber {
            shared,
            primary,
            buckets,
            generation,
            channels,
            members,
            pending: HashMap::new(),
            behind: HashSet::new(),
            own_seen: HashMap::new(),
        }
    }

    fn run(mut self, quit: &AtomicBool) -> Exit {
        let pool: Arc<Pool> = self.primary.pool.clone();
        let con = match pool.subscriber(IDLE_WAIT) {
            Ok(con) => con,
            Err(e) => return Exit::Failed(format!("{}: {e}", pool.addr())),
        };
        match self.follow(con, quit) {
            Ok(exit) => exit,
            Err(e) => Exit::Failed(format!("{}: {e}", pool.addr())),
        }
    }

    fn follow(&mut self, mut con: Connection, quit: &AtomicBool) -> redis::RedisResult<Exit> {
        let keys = &self.shared.keys;
        let mut channels: Vec<String> = self.buckets.iter().map(|&b| keys.channel(b)).collect();
        if self.members {
            channels.push(keys.members_channel());
            channels.push(keys.presence(self.shared.schedule.me()));
        }
        let mut waiting = channels.len();
        for channel in &channels {
            let cmd = redis::cmd("SSUBSCRIBE").arg(channel).get_packed_command();
            con.send_packed_command(&cmd)?;
        }
        // The confirmations, then whatever was published meanwhile.
        while waiting > 0 {
            if quit.load(Ordering::SeqCst) {
                return Ok(Exit::Stopped);
            }
            match recv(&mut con) {
                Ok(Some(v)) => match self.heard(v) {
                    Heard::Subscribed => waiting -= 1,
                    Heard::Dropped => return Ok(Exit::Moved),
                    Heard::Message | Heard::Other => {}
                },
                Ok(None) => {}
                Err(e) if e.code() == Some("MOVED") => return Ok(Exit::Moved),
                Err(e) => return Err(e),
            }
        }
        for b in self.buckets.clone() {
            if self.catch_up(b, None) == CatchUp::Failed {
                return Ok(Exit::Moved);
            }
        }
        // Hints may have gone by while it was not subscribed.
        let (nodes, schedule) = (&self.shared.nodes, &self.shared.schedule);
        if let Err(e) = reaping::read_earliest(nodes, &self.shared.keys, schedule, &self.buckets) {
            log::warn!("cannot read the earliest expiries: {e}");
            return Ok(Exit::Moved);
        }
        schedule.read_all_intents();
        if self.members {
            // Members may have come or gone meanwhile; this node is among
            // them again if it was struck off.
            if let Err(e) = reaping::join(nodes, &self.shared.keys, schedule) {
                log::warn!("cannot join the store's nodes: {e}");
                return Ok(Exit::Moved);
            }
        }
        let mut pinged = Instant::now();
        let mut wait = IDLE_WAIT;
        loop {
            if quit.load(Ordering::SeqCst) {
                return Ok(Exit::Stopped);
            }
            if self.shared.nodes.generation() != self.generation {
                return Ok(Exit::Moved);
            }
            if !self.publish_pending() {
                return Ok(Exit::Moved);
            }
            let want = if !self.behind.is_empty() || self.pending.values().any(|q| !q.is_empty()) {
                PENDING_WAIT
            } else {
                IDLE_WAIT
            };
            if want != wait {
                con.set_read_timeout(Some(want))?;
                wait = want;
            }
            let heard = recv(&mut con)?.map(|v| self.heard(v));
            if heard == Some(Heard::Dropped) {
                return Ok(Exit::Moved);
            }
            if heard.is_none() && pinged.elapsed() >= PING_AFTER {
                // A dead server is found within a heartbeat; a live one
                // answers with a pong among the messages.
                pinged = Instant::now();
                con.send_packed_command(&redis::cmd("PING").get_packed_command())?;
            }
        }
    }

    /// Sorts one value read from the subscription.
    fn heard(&mut self, value: Value) -> Heard {
        let (kind, channel, payload) = match value {
            Value::Push { kind, data } => {
                let mut data = data.into_iter();
                (kind.to_string(), data.next(), data.next())
            }
            Value::Array(items) => {
                let mut items = items.into_iter();
                let kind = match items.next() {
                    Some(Value::BulkString(k)) => String::from_utf8_lossy(&k).into_owned(),
                    Some(Value::SimpleString(k)) => k,
                    _ => return Heard::Other,
                };
                (kind, items.next(), items.next())
            }
            _ => return Heard::Other,
        };
        let channel = match channel {
            Some(Value::BulkString(c)) => String::from_utf8_lossy(&c).into_owned(),
            _ => String::new(),
        };
        match kind.to_ascii_lowercase().as_str() {
            "ssubscribe" => Heard::Subscribed,
            "sunsubscribe" => Heard::Dropped,
            "smessage" => {
                let bytes = match payload {
                    Some(Value::BulkString(bytes)) => bytes,
                    _ => Vec::new(),
                };
                let Some(&bucket) = self.channels.get(&channel) else {
                    if channel == self.shared.keys.members_channel() {
                        self.membership(&bytes);
                    }
                    return Heard::Other;
                };
                if let Some(hint) = Hint::parse(&bytes) {
                    self.shared.schedule.hint(bucket, hint);
                    return Heard::Other;
                }
                match Entry::from_message(&bytes) {
                    Some(entry) => {
                        // A new session's expiry entry is filed at its expiry.
                        for e in &entry.events {
                            if let Event::Set { expires_at, .. } = e {
                                self.shared.schedule.hint(bucket, Hint::Filed(*expires_at));
                            }
                        }
                        self.pending.entry(bucket).or_default().push_back(entry);
                    }
                    None => log::error!("a malformed event message on {channel}; ignored"),
                }
                Heard::Message
            }
            _ => Heard::Other,
        }
    }

    /// A node joined or left; this one, said to have left (its presence
    /// was missed, say while its subscription moved), joins again.
    fn membership(&mut self, message: &[u8]) {
        let Some(m) = Membership::parse(message) else {
            log::error!("a malformed message on the members channel; ignored");
            return;
        };
        let (nodes, keys, schedule) =
            (&self.shared.nodes, &self.shared.keys, &self.shared.schedule);
        if schedule.heard(&m) {
            if let Err(e) = reaping::join(nodes, keys, schedule) {
                log::warn!("cannot join the store's nodes again: {e}");
            }
        }
    }

    /// Publishes what is pending, bucket by bucket, as far as order allows.
    /// False when a stream could not be read (the node's slots moved).
    fn publish_pending(&mut self) -> bool {
        for b in self.behind.clone() {
            match self.catch_up(b, None) {
                CatchUp::Failed => return false,
                CatchUp::Done => {
                    self.behind.remove(&b);
                }
                CatchUp::Waiting => {}
            }
        }
        let buckets: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(&b, _)| b)
            .collect();
        for b in buckets {
            while let Some(entry) = self.pending.get(&b).and_then(|q| q.front().cloned()) {
                match self.offer(b, &entry) {
                    Offered::Published | Offered::Heard => {
                        self.pop(b);
                    }
                    Offered::Own => break,
                    Offered::Gap => {
                        match self.catch_up(b, Some(&entry)) {
                            CatchUp::Failed => return false,
                            CatchUp::Waiting => break,
                            CatchUp::Done => {}
                        }
                        // Published now, or skipped to.
                        if self.offer(b, &entry) == Offered::Own {
                            break;
                        }
                        self.pop(b);
                    }
                }
            }
        }
        true
    }

    fn pop(&mut self, bucket: u32) {
        if let Some(e) = self.pending.get_mut(&bucket).and_then(VecDeque::pop_front) {
            self.own_seen.remove(&e.id);
        }
    }

    fn offer(&mut self, bucket: u32, entry: &Entry) -> Offered {
        let own = entry.origin == self.shared.progress.origin();
        let since = own.then(|| *self.own_seen.entry(entry.id).or_insert_with(Instant::now));
        let offered = self
            .shared
            .progress
            .offer(&self.shared.events, bucket, entry, since);
        if offered != Offered::Own {
            self.own_seen.remove(&entry.id);
        }
        offered
    }

    /// Publishes what `bucket`'s stream holds after the last entry heard,
    /// reporting what it no longer holds as lagged; then `trigger` (the
    /// message that did not follow), if the stream could not explain it.
    /// Stops at an own entry left to its writer (the bucket is then behind,
    /// and read on from the loop).
    fn catch_up(&mut self, bucket: u32, trigger: Option<&Entry>) -> CatchUp {
        let (nodes, keys) = (self.shared.nodes.clone(), self.shared.keys.clone());
        let stream = keys.stream(bucket);
        loop {
            let from = self.shared.progress.published(bucket).id;
            let read = nodes.run(keys.slot(bucket), "reading events", |_, con| {
                redis::cmd("XRANGE")
                    .arg(&stream)
                    .arg(format!("({}", format_id(from)))
                    .arg("+")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .query::<Value>(con)
            });
            let batch = match read {
                Ok(v) => entries(v),
                Err(e) => {
                    log::warn!("cannot read the events of bucket {bucket}: {e}");
                    return CatchUp::Failed;
                }
            };
            let full = batch.len() == READ_COUNT;
            for entry in &batch {
                match self.offer(bucket, entry) {
                    Offered::Published | Offered::Heard => {}
                    // Its writer publishes it; read on once it has.
                    Offered::Own => {
                        self.behind.insert(bucket);
                        return CatchUp::Waiting;
                    }
                    Offered::Gap => {
                        self.shared
                            .progress
                            .skip_to(&self.shared.events, bucket, entry)
                    }
                }
            }
            if !full {
                break;
            }
        }
        if let Some(entry) = trigger {
            // The whole stream was read and did not lead to it: a history
            // that diverged in a failover (or an entry trimmed at once).
            let at = self.shared.progress.published(bucket);
            if entry.id > at.id || entry.sequence > at.sequence {
                self.shared
                    .progress
                    .skip_to(&self.shared.events, bucket, entry);
            }
        }
        CatchUp::Done
    }
}

/// How reading a bucket's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CatchUp {
    /// Everything it held is published.
    Done,
    /// It stopped at an own entry left to its writer.
    Waiting,
    /// It could not be read.
    Failed,
}

/// What a value read from a subscription was.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    Subscribed,
    /// The server dropped a subscription: its slots moved.
    Dropped,
    Message,
    Other,
}

/// One value from the subscription, or `None` when the read timed out.
fn recv(con: &mut Connection) -> redis::RedisResult<Option<Value>> {
    match con.recv_response() {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_timeout() => Ok(None),
        Err(e) => Err(e),
    }
}
