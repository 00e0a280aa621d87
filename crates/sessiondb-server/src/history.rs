//! The server's event history: every store event this process hears,
//! numbered in the order it hears them and kept for a while (at most
//! [`HistoryLimits::events`] events, none older than
//! [`HistoryLimits::age`]), so that an event stream that reconnects with the
//! last id it saw (`Last-Event-ID`) resumes after it: every later event
//! once, in order, then the live ones.
//!
//! An event's id is `<epoch>-<n>`: the epoch is 16 random hex digits drawn
//! when the process starts, `n` the event's number (from 1; `<epoch>-0` is
//! the position before the first). So an id that another process issued (a
//! server restarted, another node behind a load balancer: on Redis each
//! node numbers the events it hears itself) is told apart, and the stream
//! says so (`session.reset`) instead of guessing.
//!
//! The ids of a session's own stream (`/v1/session/events`) carry a tag
//! after the number, `<epoch>-<n>.<tag>`: a MAC, under a key drawn at start,
//! of the session key and the session's public id. When a client comes back
//! with a key that has meanwhile stopped working, the tag lets the server
//! find, in the history, the session that key held and tell the client how
//! it ended (`session.unset` with its real reason, `banned` say), which only
//! the key's holder can ask for.
//!
//! One thread (`sessiondb-event-log`, `session_events::spawn_feeder`) reads
//! the server's store subscription, appends each event here and hands it,
//! with its number, to the per-session streams; `/v1/events` streams read
//! from here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sessiondb::{Clock, Event};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

/// How much history the server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most events kept [default: 10,000].
    pub events: usize,
    /// Longest an event is kept [default: 10 minutes].
    pub age: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            events: 10_000,
            age: Duration::from_secs(600),
        }
    }
}

/// One event as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its number: 1 for the first event this process heard.
    pub seq: u64,
    /// When the history heard it (Unix ms).
    pub at: u64,
    pub event: Event,
}

/// Where a stream starts, from the `Last-Event-ID` it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No id: a new stream, from now on.
    Fresh,
    /// An id of this process: go on after event `seq`. `tag` is the
    /// session stream's tag, when the id had one.
    After { seq: u64, tag: Option<String> },
    /// An id this process never issued.
    Unknown(ResetReason),
}

/// Why a stream cannot go on from the id it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Another server process issued it: this one restarted since, or the
    /// client reached another node (each keeps its own history).
    OtherServer,
    /// Not an id a sessiondb server issues.
    UnknownId,
}

impl ResetReason {
    /// The wire form, as `session.reset` tells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::OtherServer => "otherServer",
            ResetReason::UnknownId => "unknownId",
        }
    }
}

/// The events after a position.
#[derive(Debug, Default)]
pub struct After {
    /// Events after the position that the history no longer holds (too
    /// many events since, or too old): they come before `entries`.
    pub missed: u64,
    /// The events held, in order.
    pub entries: Vec<Entry>,
}

struct Ring {
    entries: VecDeque<Entry>,
    /// The last number given; 0 before the first event.
    head: u64,
}

type HmacSha256 = Hmac<Sha256>;

/// The numbered events of this process (see the module docs).
pub struct History {
    epoch: String,
    /// The key of the session streams' tags.
    secret: [u8; 32],
    ring: Mutex<Ring>,
    limits: HistoryLimits,
    clock: Arc<dyn Clock>,
    head: watch::Sender<u64>,
}

/// Longest `Last-Event-ID` read; a longer one is not an id of ours.
const MAX_ID_LEN: usize = 128;

/// Bytes of the tag kept (hex: twice as many characters).
const TAG_BYTES: usize = 16;

impl History {
    /// An empty history with a fresh epoch and tag key, from the operating
    /// system's random generator.
    ///
    /// # Errors
    /// The random generator failed.
    pub fn new(limits: HistoryLimits, clock: Arc<dyn Clock>) -> std::io::Result<History> {
        let mut random = [0u8; 40];
        getrandom::fill(&mut random).map_err(std::io::Error::other)?;
        let (epoch, secret) = random.split_at(8);
        let mut key = [0u8; 32];
        key.copy_from_slice(secret);
        Ok(History {
            epoch: hex(epoch),
            secret: key,
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                head: 0,
            }),
            limits: HistoryLimits {
                events: limits.events.max(1),
                age: limits.age,
            },
            clock,
            head: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Every critical section leaves the ring whole.
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The id of position `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// The id of position `seq` on a session stream with `tag`.
    pub fn tagged_id(&self, seq: u64, tag: &str) -> String {
        format!("{}-{seq}.{tag}", self.epoch)
    }

    /// The tag of a session stream: a MAC of the session key and the
    /// session's public id.
    pub fn tag(&self, key: &str, session_id: &str) -> String {
        hex(&self.mac(key, session_id))
    }

    fn mac(&self, key: &str, session_id: &str) -> [u8; TAG_BYTES] {
        let mut mac = match HmacSha256::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            // HMAC takes a key of any length.
            Err(_) => unreachable!("HMAC accepts a 32-byte key"),
        };
        mac.update(key.as_bytes());
        mac.update(&[0]);
        mac.update(session_id.as_bytes());
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&mac.finalize().into_bytes()[..TAG_BYTES]);
        tag
    }

    /// Whether `tag` (as a client sent it) is the tag of `key` and
    /// `session_id`, compared in constant time.
    pub fn tag_matches(&self, tag: &str, key: &str, session_id: &str) -> bool {
        match unhex::<TAG_BYTES>(tag) {
            Some(given) => bool::from(given.ct_eq(&self.mac(key, session_id))),
            None => false,
        }
    }

    /// Where a stream given `last_event_id` starts.
    pub fn resume(&self, last_event_id: Option<&str>) -> Resume {
        let Some(id) = last_event_id.map(str::trim) else {
            return Resume::Fresh;
        };
        if id.is_empty() {
            return Resume::Fresh;
        }
        let unknown = Resume::Unknown(ResetReason::UnknownId);
        if id.len() > MAX_ID_LEN {
            return unknown;
        }
        let Some((epoch, rest)) = id.split_once('-') else {
            return unknown;
        };
        let (number, tag) = match rest.split_once('.') {
            Some((n, t)) => (n, Some(t)),
            None => (rest, None),
        };
        let well_formed = epoch.len() == 16
            && epoch.bytes().all(|b| b.is_ascii_hexdigit())
            && !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && tag.is_none_or(|t| t.len() == TAG_BYTES * 2);
        let Some(seq) = number.parse::<u64>().ok().filter(|_| well_formed) else {
            return unknown;
        };
        if epoch != self.epoch {
            return Resume::Unknown(ResetReason::OtherServer);
        }
        if seq > self.head() {
            return unknown;
        }
        Resume::After {
            seq,
            tag: tag.map(str::to_owned),
        }
    }

    /// The number of the last event appended (0 before the first).
    pub fn head(&self) -> u64 {
        self.lock().head
    }

    /// Events appended from now on wake the receiver (it holds the head).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// How many events the history holds.
    pub fn len(&self) -> usize {
        let mut ring = self.lock();
        self.prune(&mut ring);
        ring.entries.len()
    }

    /// Drops what is past the limits.
    fn prune(&self, ring: &mut Ring) {
        while ring.entries.len() > self.limits.events {
            ring.entries.pop_front();
        }
        let age = u64::try_from(self.limits.age.as_millis()).unwrap_or(u64::MAX);
        let oldest_kept = self.clock.now_ms().saturating_sub(age);
        while ring.entries.front().is_some_and(|e| e.at < oldest_kept) {
            ring.entries.pop_front();
        }
    }

    /// Appends `event`; returns its number.
    pub fn append(&self, event: Event) -> u64 {
        let seq = {
            let mut ring = self.lock();
            ring.head += 1;
            let seq = ring.head;
            ring.entries.push_back(Entry {
                seq,
                at: self.clock.now_ms(),
                event,
            });
            self.prune(&mut ring);
            seq
        };
        self.head.send_replace(seq);
        seq
    }

    /// Up to `limit` events after position `seq`, and how many events after
    /// it the history no longer holds.
    pub fn after(&self, seq: u64, limit: usize) -> After {
        self.select(seq, limit, |_| true)
    }

    /// As [`History::after`], keeping only the events `wanted` picks (one
    /// session's, say), so that a resume copies no other event.
    pub fn select(&self, seq: u64, limit: usize, wanted: impl Fn(&Event) -> bool) -> After {
        let mut ring = self.lock();
        self.prune(&mut ring);
        let first = ring.entries.front().map_or(ring.head + 1, |e| e.seq);
        let missed = first.saturating_sub(seq.saturating_add(1));
        let skip = usize::try_from(seq.saturating_sub(first - 1)).unwrap_or(usize::MAX);
        After {
            missed,
            entries: ring
                .entries
                .iter()
                .skip(skip)
                .filter(|e| wanted(&e.event))
                .take(limit)
                .cloned()
                .collect(),
        }
    }
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `N` bytes from `2N` hex digits.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiondb::{ManualClock, UnsetReason};

    fn unset(n: u64) -> Event {
        Event::Unset {
            id: format!("S{n}"),
            actor_id: "p1".into(),
            reason: UnsetReason::Expired,
        }
    }

    fn history(events: usize, age_secs: u64) -> (History, ManualClock) {
        let clock = ManualClock::new(1_700_000_000_000);
        let limits = HistoryLimits {
            events,
            age: Duration::from_secs(age_secs),
        };
        (
            History::new(limits, Arc::new(clock.clone())).unwrap(),
            clock,
        )
    }

    fn seqs(after: &After) -> Vec<u64> {
        after.entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_are_numbered_and_read_after_a_position() {
        let (h, _) = history(100, 600);
        assert_eq!(h.head(), 0);
        for n in 1..=5 {
            assert_eq!(h.append(unset(n)), n);
        }
        let after = h.after(2, 10);
        assert_eq!((after.missed, seqs(&after)), (0, vec![3, 4, 5]));
        assert_eq!(after.entries[0].event, unset(3));
        assert_eq!(seqs(&h.after(0, 2)), [1, 2]);
        assert!(h.after(5, 10).entries.is_empty());
    }

    #[test]
    fn a_selection_copies_only_the_events_wanted_and_still_counts_the_missed() {
        let (h, _) = history(3, 600);
        for n in 1..=6 {
            h.append(unset(n));
        }
        let fifth = |e: &Event| matches!(e, Event::Unset { id, .. } if id == "S5");
        let after = h.select(1, 10, fifth);
        assert_eq!((after.missed, seqs(&after)), (2, vec![5]));
    }

    #[test]
    fn the_count_bound_drops_the_oldest_and_a_reader_is_told_how_many() {
        let (h, _) = history(3, 600);
        for n in 1..=10 {
            h.append(unset(n));
        }
        assert_eq!(h.len(), 3);
        let after = h.after(4, 10);
        assert_eq!((after.missed, seqs(&after)), (3, vec![8, 9, 10]));
        let after = h.after(7, 10);
        assert_eq!((after.missed, seqs(&after)), (0, vec![8, 9, 10]));
    }

    #[test]
    fn the_age_bound_drops_old_events_even_without_new_ones() {
        let (h, clock) = history(100, 60);
        h.append(unset(1));
        clock.advance(Duration::from_secs(30));
        h.append(unset(2));
        clock.advance(Duration::from_secs(31));
        let after = h.after(0, 10);
        assert_eq!((after.missed, seqs(&after)), (1, vec![2]));
        clock.advance(Duration::from_secs(30));
        let after = h.after(0, 10);
        assert_eq!((after.missed, seqs(&after)), (2, vec![]));
        assert_eq!(h.len(), 0);
        // The numbering goes on.
        assert_eq!(h.append(unset(3)), 3);
    }

    #[test]
    fn ids_of_this_process_resume_and_others_are_told_apart() {
        let (h, _) = history(100, 600);
        h.append(unset(1));
        h.append(unset(2));
        assert_eq!(h.resume(None), Resume::Fresh);
        assert_eq!(h.resume(Some("  ")), Resume::Fresh);
        assert_eq!(
            h.resume(Some(&h.id(1))),
            Resume::After { seq: 1, tag: None }
        );
        let tag = h.tag("p1:secret", "S1");
        assert_eq!(
            h.resume(Some(&h.tagged_id(2, &tag))),
            Resume::After {
                seq: 2,
                tag: Some(tag.clone())
            }
        );
        let (other, _) = history(100, 600);
        assert_eq!(
            h.resume(Some(&other.id(1))),
            Resume::Unknown(ResetReason::OtherServer)
        );
        let future = h.id(3);
        let long = "1".repeat(200);
        for bad in [
            future.as_str(),
            "nonsense",
            "0123456789abcdef-",
            "0123456789abcdef-x1",
            "0123-1",
            "0123456789abcdef-1.short",
            long.as_str(),
        ] {
            assert_eq!(
                h.resume(Some(bad)),
                Resume::Unknown(ResetReason::UnknownId),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_tag_names_one_key_and_one_session() {
        let (h, _) = history(10, 600);
        let (other, _) = history(10, 600);
        let tag = h.tag("p1:secret", "S1");
        assert_eq!(tag.len(), 32);
        assert!(h.tag_matches(&tag, "p1:secret", "S1"));
        assert!(!h.tag_matches(&tag, "p1:other", "S1"));
        assert!(!h.tag_matches(&tag, "p1:secret", "S2"));
        assert!(
            !other.tag_matches(&tag, "p1:secret", "S1"),
            "another process's key"
        );
        assert!(!h.tag_matches("zz", "p1:secret", "S1"));
    }
}
