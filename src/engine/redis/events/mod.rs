//! Events on Redis.
//!
//! The commit script appends a plan's events to its bucket's stream as one
//! entry, numbered by a per-bucket sequence (each event a number: an entry
//! holds the number of its last event and how many it holds), and
//! publishes the same entry on the bucket's shard channel (`SPUBLISH`) in
//! the same step. Every node subscribes to every bucket's channel on the
//! primary that serves it (`reader`), so a change costs the server one
//! message per node instead of a stream read per node. A node publishes
//! its own changes' events itself, in its plan's order, as soon as
//! everything before them in their stream has been published
//! ([`Progress::publish_own`]); the reader publishes everyone else's.
//!
//! An entry is published only right after the one numbered before it, so
//! each node hears every change exactly once, in commit order per bucket
//! (so per actor). When a message does not follow the
//! last entry heard (messages lost while a connection was down, a node
//! that fell behind), the reader reads the stream from there; what the
//! stream no longer holds (trimmed past `Config::event_retention`, or lost
//! in a failover) becomes `Event::Lagged`, never a silent gap or an event
//! heard twice.

mod reader;

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub(crate) use self::reader::Reader;
use crate::events::{Event, EventHub, UnsetReason};

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
pub(crate) type EntryId = (u64, u64);

pub(crate) fn parse_id(id: &str) -> Option<EntryId> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub(crate) fn format_id((ms, seq): EntryId) -> String {
    format!("{ms}-{seq}")
}

/// One entry of a bucket's events, as a stream or a channel holds it: the
/// events of one commit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub id: EntryId,
    /// The entry before it in the stream; `None` in entries written before
    /// store format 3, which follow the entry whose last event is numbered
    /// one less than their first.
    pub prev: Option<EntryId>,
    /// The number of its last event.
    pub sequence: u64,
    /// How many events it holds (numbered up to `sequence`).
    pub count: u64,
    pub origin: String,
    /// Its events that decode (one that does not is logged, and counted
    /// as heard so that order goes on).
    pub events: Vec<Event>,
}

/// The events of an entry's `e` (one JSON per line), those that decode.
fn decode_all(lines: &str, id: &str) -> Vec<Event> {
    lines
        .lines()
        .filter_map(|json| {
            let event = decode(json);
            if event.is_none() {
                log::error!("an event of entry {id} does not decode; skipped");
            }
            event
        })
        .collect()
}

impl Entry {
    /// The number of its first event.
    pub fn first(&self) -> u64 {
        self.sequence.saturating_sub(self.count.max(1) - 1)
    }

    /// A channel message: `n \n k \n prev \n id \n origin \n events`.
    pub fn from_message(message: &[u8]) -> Option<Entry> {
        let text = std::str::from_utf8(message).ok()?;
        let mut parts = text.splitn(6, '\n');
        let sequence = parts.next()?.parse().ok()?;
        let count = parts.next()?.parse().ok()?;
        let prev = parse_id(parts.next()?)?;
        let id_text = parts.next()?;
        let id = parse_id(id_text)?;
        let origin = parts.next()?.to_owned();
        Some(Entry {
            id,
            prev: Some(prev),
            sequence,
            count,
            origin,
            events: decode_all(parts.next()?, id_text),
        })
    }

    /// A stream entry, from its id and fields.
    pub fn from_stream(id: &str, field: impl Fn(&str) -> Option<String>) -> Option<Entry> {
        Some(Entry {
            id: parse_id(id)?,
            prev: field("p").and_then(|p| parse_id(&p)),
            sequence: field("n")?.parse().ok()?,
            count: field("k").map_or(Some(1), |k| k.parse().ok())?,
            origin: field("o").unwrap_or_default(),
            events: field("e").map(|e| decode_all(&e, id)).unwrap_or_default(),
        })
    }
}

/// Where the commit script appended a plan's events: its bucket, the
/// stream entry and the one before it, the number of its last event and
/// how many it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub bucket: u32,
    pub id: EntryId,
    pub prev: EntryId,
    pub sequence: u64,
    pub count: u64,
}

/// The last entry of a bucket's stream that was published on this node:
/// its id and sequence number. Everything before it was published too (or
/// reported as missed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    pub id: EntryId,
    pub sequence: u64,
}

/// What became of an entry offered to [`Progress::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Published now.
    Published,
    /// Heard before (or published by its writer): dropped.
    Heard,
    /// It does not follow the last entry heard: read the stream.
    Gap,
    /// This node's own event, left to its writer for now.
    Own,
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
    pub fn new(origin: String, patience: Duration) -> Self {
        Progress {
            published: Mutex::new(HashMap::new()),
            moved: Condvar::new(),
            origin,
            patience,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Mark>> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// Starts `bucket` at `mark` (the stream's end when the node opened).
    pub fn start(&self, bucket: u32, mark: Mark) {
        self.lock().insert(bucket, mark);
        self.moved.notify_all();
    }

    pub fn published(&self, bucket: u32) -> Mark {
        self.lock().get(&bucket).copied().unwrap_or_default()
    }

    /// A writer's own events, appended as `entry`: published once
    /// everything before them in their stream has been, so that per-actor
    /// order holds. Returns whether they are published (now, or earlier by
    /// the reader), or false when `deadline` passed.
    pub fn publish_own(
        &self,
        hub: &EventHub,
        entry: Appended,
        events: &[Event],
        deadline: Instant,
    ) -> bool {
        let mut published = self.lock();
        loop {
            let at = published.get(&entry.bucket).copied().unwrap_or_default();
            if at.id >= entry.id {
                return true;
            }
            if entry.prev == at.id {
                hub.publish(events);
                published.insert(
                    entry.bucket,
                    Mark {
                        id: entry.id,
                        sequence: entry.sequence,
                    },
                );
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

    /// The reader's entry of `bucket`: published if it follows the last
    /// one published, unless it is this node's own and `own_since` (when the
    /// reader first met it) is within the writer's patience.
    pub fn offer(
        &self,
        hub: &EventHub,
        bucket: u32,
        entry: &Entry,
        own_since: Option<Instant>,
    ) -> Offered {
        let mut published = self.lock();
        let at = published.get(&bucket).copied().unwrap_or_default();
        // An entry written before store format 3 names no predecessor: it
        // follows when it is numbered next.
        let follows = entry.id > at.id
            && match entry.prev {
                Some(prev) => prev == at.id,
                None => entry.first() == at.sequence + 1,
            };
        if !follows {
            // Heard already: older, and no further on in the numbering. (An
            // entry that is older but numbered further on comes from a
            // history that diverged in a failover: read the stream.)
            if entry.id <= at.id && entry.sequence <= at.sequence {
                return Offered::Heard;
            }
            return Offered::Gap;
        }
        if entry.origin == self.origin && own_since.is_none_or(|t| t.elapsed() < self.patience) {
            return Offered::Own;
        }
        hub.publish(&entry.events);
        published.insert(
            bucket,
            Mark {
                id: entry.id,
                sequence: entry.sequence,
            },
        );
        self.moved.notify_all();
        Offered::Published
    }

    /// Reports what a bucket's stream cannot give any more before `entry`
    /// (trimmed, or lost in a failover) as `Lagged`, and publishes `entry`
    /// in its place: the reader goes on from there.
    pub fn skip_to(&self, hub: &EventHub, bucket: u32, entry: &Entry) {
        let mut published = self.lock();
        let at = published.get(&bucket).copied().unwrap_or_default();
        if entry.id <= at.id && entry.sequence <= at.sequence {
            return;
        }
        // Numbered past what was heard: the entries between were missed.
        // Numbered at or before it: the entries heard since that number
        // were lost in a failover and this is a new history.
        let first = entry.first();
        let missed = if first > at.sequence {
            first - at.sequence - 1
        } else {
            at.sequence - first + 1
        };
        log::warn!(
            "events of bucket {bucket} before {} are gone from its stream: {missed} reported as \
             lagged",
            format_id(entry.id)
        );
        hub.publish_gap(missed.max(1));
        hub.publish(&entry.events);
        published.insert(
            bucket,
            Mark {
                id: entry.id,
                sequence: entry.sequence,
            },
        );
        self.moved.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unset(n: u64) -> Event {
        Event::Unset {
            id: format!("s{n}"),
            actor_id: "a".into(),
            reason: UnsetReason::Expired,
        }
    }

    /// An entry of one event, numbered `sequence`.
    fn entry(id: u64, sequence: u64, origin: &str) -> Entry {
        Entry {
            id: (id, 0),
            prev: None,
            sequence,
            count: 1,
            origin: origin.into(),
            events: vec![unset(id)],
        }
    }

    #[test]
    fn entries_are_published_in_order_once_and_gaps_found() {
        let hub = EventHub::new(64);
        let rx = hub.subscribe();
        let p = Progress::new("me".into(), Duration::from_secs(1));
        p.start(
            0,
            Mark {
                id: (10, 0),
                sequence: 1,
            },
        );
        assert_eq!(
            p.offer(&hub, 0, &entry(11, 2, "them"), None),
            Offered::Published
        );
        assert_eq!(
            p.offer(&hub, 0, &entry(11, 2, "them"), None),
            Offered::Heard
        );
        // Not after the last heard: the stream must say what came between.
        assert_eq!(p.offer(&hub, 0, &entry(13, 4, "them"), None), Offered::Gap);
        // This node's own: its writer publishes it, unless it takes too long.
        assert_eq!(p.offer(&hub, 0, &entry(12, 3, "me"), None), Offered::Own);
        let long_ago = Instant::now() - Duration::from_secs(2);
        assert_eq!(
            p.offer(&hub, 0, &entry(12, 3, "me"), Some(long_ago)),
            Offered::Published
        );
        assert_eq!(rx.try_iter().count(), 2);
        // Trimmed past: the exact count of what was missed.
        p.skip_to(&hub, 0, &entry(20, 9, "them"));
        let got: Vec<Event> = rx.try_iter().collect();
        assert_eq!(got[0], Event::Lagged { missed: 5 });
        assert_eq!(got.len(), 2);
        // A failover lost entries 8 and 9, and the new primary numbered
        // its own from 8: lagged, never taken for heard.
        assert_eq!(p.offer(&hub, 0, &entry(21, 8, "them"), None), Offered::Gap);
        p.skip_to(&hub, 0, &entry(21, 8, "them"));
        let got: Vec<Event> = rx.try_iter().collect();
        assert_eq!(got[0], Event::Lagged { missed: 2 });
        assert_eq!(
            p.published(0),
            Mark {
                id: (21, 0),
                sequence: 8
            }
        );
    }

    #[test]
    fn a_writer_publishes_its_own_event_after_what_came_before() {
        let hub = EventHub::new(64);
        let rx = hub.subscribe();
        let p = Progress::new("me".into(), Duration::from_secs(1));
        p.start(
            3,
            Mark {
                id: (10, 0),
                sequence: 1,
            },
        );
        let mine = Appended {
            bucket: 3,
            id: (12, 0),
            prev: (11, 0),
            sequence: 3,
            count: 1,
        };
        let events = entry(12, 3, "me").events;
        let soon = Instant::now() + Duration::from_millis(20);
        // The entry before it is not published yet: it waits, then gives up.
        assert!(!p.publish_own(&hub, mine, &events, soon));
        assert_eq!(
            p.offer(&hub, 3, &entry(11, 2, "them"), None),
            Offered::Published
        );
        assert!(p.publish_own(&hub, mine, &events, Instant::now()));
        assert_eq!(p.offer(&hub, 3, &entry(12, 3, "me"), None), Offered::Heard);
        assert_eq!(rx.try_iter().count(), 2);
    }

    #[test]
    fn messages_parse_as_the_script_writes_them() {
        let json = |n| encode(&unset(n)).unwrap().1;
        let message = format!("7\n2\n5-3\n6-0\nnode\n{}\n{}", json(1), json(2));
        let e = Entry::from_message(message.as_bytes()).unwrap();
        assert_eq!((e.sequence, e.count, e.first(), e.id), (7, 2, 6, (6, 0)));
        assert_eq!(e.prev, Some((5, 3)));
        assert_eq!(e.origin, "node");
        assert_eq!(e.events, vec![unset(1), unset(2)]);
        assert_eq!(Entry::from_message(b"7\nnot a count"), None);
    }

    /// A commit's events are one entry: it follows the entry it names (or,
    /// naming none, the one whose last event is numbered one less than its
    /// first), and a gap counts events.
    #[test]
    fn an_entry_of_several_events_is_published_whole_in_order() {
        let hub = EventHub::new(64);
        let rx = hub.subscribe();
        let p = Progress::new("me".into(), Duration::from_secs(1));
        p.start(
            0,
            Mark {
                id: (10, 0),
                sequence: 4,
            },
        );
        let batch = |id: u64, last: u64, count: u64| Entry {
            count,
            events: (last + 1 - count..=last).map(unset).collect(),
            ..entry(id, last, "them")
        };
        assert_eq!(p.offer(&hub, 0, &batch(11, 7, 3), None), Offered::Published);
        assert_eq!(rx.try_iter().count(), 3);
        assert_eq!(p.offer(&hub, 0, &batch(13, 12, 2), None), Offered::Gap);
        p.skip_to(&hub, 0, &batch(13, 12, 2));
        let got: Vec<Event> = rx.try_iter().collect();
        assert_eq!(got[0], Event::Lagged { missed: 3 });
        assert_eq!(got.len(), 3);
    }

    /// A failover lost the last entries and the new primary numbered its
    /// own from where it had got: a writer's own entry numbered next to
    /// what was heard does not follow it (it names another entry), so it
    /// is never published ahead of the entries before it.
    #[test]
    fn an_entry_numbered_next_but_naming_another_does_not_follow() {
        let hub = EventHub::new(64);
        let rx = hub.subscribe();
        let p = Progress::new("me".into(), Duration::from_secs(1));
        p.start(
            0,
            Mark {
                id: (10, 0),
                sequence: 4,
            },
        );
        // The new primary's entries 1 to 4 (ids 20 to 23), then this node's
        // entry 5 (id 24), which names entry 23.
        let mine = Appended {
            bucket: 0,
            id: (24, 0),
            prev: (23, 0),
            sequence: 5,
            count: 1,
        };
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!p.publish_own(&hub, mine, &[unset(24)], soon));
        assert_eq!(rx.try_iter().count(), 0);
        let renumbered = Entry {
            prev: Some((0, 0)),
            ..entry(20, 1, "them")
        };
        assert_eq!(p.offer(&hub, 0, &renumbered, None), Offered::Gap);
    }

    /// Entries of store formats 3 and 4 name the entry before them.
    #[test]
    fn entries_of_earlier_formats_still_read() {
        let json = encode(&unset(1)).unwrap().1;
        let fields: HashMap<&str, String> = [
            ("n", "5".to_owned()),
            ("p", "9-0".to_owned()),
            ("o", "node".to_owned()),
            ("e", json),
        ]
        .into_iter()
        .collect();
        let e = Entry::from_stream("10-0", |f| fields.get(f).cloned()).unwrap();
        assert_eq!((e.prev, e.sequence, e.count), (Some((9, 0)), 5, 1));
        assert_eq!(e.events, vec![unset(1)]);
    }
}
