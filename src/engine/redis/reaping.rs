//! Which node reaps which bucket, and when: idle nodes cost the servers
//! nothing, and each due session is looked for by one node.
//!
//! - **Members.** Each node registers in `P{0}:nodes` when it opens, says
//!   so on `P{0}:m` (`join`), and listens on its presence channel while it
//!   lives; it says `leave` when it closes. Every node hears the channel,
//!   so all share one list of members.
//! - **Owners.** Each bucket belongs to one member, chosen by rendezvous
//!   hashing of (member, bucket): every node computes the same owner from
//!   the same list, and a member joining or leaving moves only its share.
//! - **When.** Each node keeps every bucket's earliest expiry entry as it
//!   knows it: read once per bucket when it (re)subscribes, lowered by the
//!   `session.set` events it hears (a new session's entry is filed at its
//!   expiry) and by hints of entries filed without an event (an import),
//!   and set by the hint an owner publishes after reaping a bucket (its
//!   earliest entry then, read in the same script as the hint). The reaper
//!   sleeps until the earliest expiry of its own buckets: nothing due,
//!   no command.
//! - **Deaths.** A node that sees a bucket's earliest entry overdue by the
//!   grace (the reap interval, at most a second) asks whether its owner is
//!   still listening (`PUBSUB SHARDNUMSUB`); a dead owner is struck from
//!   the members (and said to have left), and its buckets move to the
//!   others, which reap them at once. An owner that listens but still has
//!   not reaped ten graces after it was first asked after has its buckets
//!   reaped by whoever asked.
//!   Reaping twice is harmless: each session ends in one script, once.
//! - **Intents.** A reassign across buckets left half-way is an intent;
//!   storing and dropping one is announced on its bucket's channel, so the
//!   bucket's owner knows which to roll forward without scanning; every
//!   bucket is read once at open and after a subscription is lost.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use super::conn::Nodes;
use super::keys::Keys;
use crate::clock::{Clock, SystemClock};
use crate::error::Result;

/// A hint on a bucket's channel (beside its event entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hint {
    /// After a reap: the bucket's earliest entry now (`None`: empty).
    Next(Option<u64>),
    /// An entry filed at this time without an event.
    Filed(u64),
    /// An intent stored in the bucket.
    Intent(String),
    /// An intent dropped from the bucket.
    IntentDone(String),
}

impl Hint {
    /// A channel message that is a hint (an event entry starts with a
    /// number, a hint with a letter).
    pub fn parse(message: &[u8]) -> Option<Hint> {
        let text = std::str::from_utf8(message).ok()?;
        let mut parts = text.split('\n');
        let time = |t: Option<&str>| -> Option<Option<u64>> {
            match t? {
                "" => Some(None),
                t => t.parse::<f64>().ok().map(|v| Some(v as u64)),
            }
        };
        match parts.next()? {
            "d" => Some(Hint::Next(time(parts.next())?)),
            "f" => Some(Hint::Filed(time(parts.next())??)),
            "i" => Some(Hint::Intent(parts.next()?.to_owned())),
            "j" => Some(Hint::IntentDone(parts.next()?.to_owned())),
            _ => None,
        }
    }
}

/// A message on the members channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Membership {
    Join(String),
    Leave(String),
}

impl Membership {
    pub fn parse(message: &[u8]) -> Option<Membership> {
        let (kind, origin) = std::str::from_utf8(message).ok()?.split_once('\n')?;
        match kind {
            "join" => Some(Membership::Join(origin.to_owned())),
            "leave" => Some(Membership::Leave(origin.to_owned())),
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Membership::Join(o) => format!("join\n{o}"),
            Membership::Leave(o) => format!("leave\n{o}"),
        }
    }
}

/// What the due scan should look at now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// This node's buckets whose earliest entry is due.
    pub owned: Vec<u32>,
    /// Other members' buckets overdue by the grace: (bucket, its owner).
    pub overdue: Vec<(u32, String)>,
}

struct State {
    members: BTreeSet<String>,
    /// Each bucket's owner (an index into the members, in order).
    owners: Vec<usize>,
    /// Each bucket's earliest entry as this node knows it.
    next: Vec<Option<u64>>,
    /// When this node first and last asked after each bucket's overdue
    /// owner (since the bucket was last reaped).
    asked: Vec<Option<(u64, u64)>>,
    /// Intents announced and not yet dropped: id → bucket.
    intents: HashMap<String, u32>,
    /// Every intent of this node's buckets is to be read (at open, after a
    /// subscription was lost).
    read_intents: bool,
}

/// The members, the owners and what is due, shared by the engine and its
/// event reader.
pub(crate) struct Schedule {
    me: String,
    grace_ms: u64,
    state: Mutex<State>,
}

/// Rendezvous weight of `member` for `bucket`: the same on every node.
fn weight(member: &str, bucket: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update(bucket.to_be_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl Schedule {
    /// A schedule for node `me` over `buckets`, with no member but itself.
    pub fn new(me: String, buckets: u32, grace_ms: u64) -> Schedule {
        let n = buckets as usize;
        let schedule = Schedule {
            me: me.clone(),
            grace_ms,
            state: Mutex::new(State {
                members: BTreeSet::from([me]),
                owners: vec![0; n],
                next: vec![None; n],
                asked: vec![None; n],
                intents: HashMap::new(),
                read_intents: true,
            }),
        };
        schedule.reassign(&mut schedule.lock());
        schedule
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Computes every bucket's owner from the members.
    fn reassign(&self, state: &mut State) {
        let members: Vec<&String> = state.members.iter().collect();
        for (b, owner) in state.owners.iter_mut().enumerate() {
            *owner = (0..members.len())
                .max_by_key(|&i| (weight(members[i], b as u32), i))
                .unwrap_or(0);
        }
    }

    /// Sets the members (this node always among them).
    pub fn set_members(&self, members: impl IntoIterator<Item = String>) {
        let mut state = self.lock();
        state.members = members.into_iter().collect();
        state.members.insert(self.me.clone());
        self.reassign(&mut state);
    }

    /// A member joins or leaves. Returns true when this node was said to
    /// have left (it must say again that it is here).
    pub fn heard(&self, m: &Membership) -> bool {
        let mut state = self.lock();
        let changed = match m {
            Membership::Join(o) => state.members.insert(o.clone()),
            Membership::Leave(o) if *o == self.me => return true,
            Membership::Leave(o) => state.members.remove(o),
        };
        if changed {
            self.reassign(&mut state);
        }
        false
    }

    /// The owner of `bucket`.
    pub fn owner(&self, bucket: u32) -> String {
        let state = self.lock();
        let i = state.owners.get(bucket as usize).copied().unwrap_or(0);
        state.members.iter().nth(i).cloned().unwrap_or_default()
    }

    fn owns(&self, state: &State, bucket: u32) -> bool {
        let i = state.owners.get(bucket as usize).copied().unwrap_or(0);
        state.members.iter().nth(i) == Some(&self.me)
    }

    /// The buckets this node owns.
    #[cfg(test)]
    pub fn owned(&self) -> Vec<u32> {
        let state = self.lock();
        (0..state.owners.len() as u32)
            .filter(|&b| self.owns(&state, b))
            .collect()
    }

    /// A bucket's earliest entry read from the server.
    pub fn read_next(&self, bucket: u32, at: Option<u64>) {
        if let Some(slot) = self.lock().next.get_mut(bucket as usize) {
            *slot = at;
        }
    }

    /// A hint heard on `bucket`'s channel.
    pub fn hint(&self, bucket: u32, hint: Hint) {
        let mut state = self.lock();
        let b = bucket as usize;
        if b >= state.next.len() {
            return;
        }
        match hint {
            Hint::Next(at) => {
                state.next[b] = at;
                state.asked[b] = None;
            }
            Hint::Filed(at) => state.next[b] = Some(state.next[b].map_or(at, |n| n.min(at))),
            Hint::Intent(id) => {
                state.intents.insert(id, bucket);
            }
            Hint::IntentDone(id) => {
                state.intents.remove(&id);
            }
        }
    }

    /// What is due at `now`: this node's buckets, and others overdue by the
    /// grace whose owner it has not asked after within the grace.
    pub fn due(&self, now: u64) -> Due {
        let mut state = self.lock();
        let mut due = Due::default();
        for b in 0..state.next.len() {
            let Some(at) = state.next[b] else { continue };
            if at > now {
                continue;
            }
            if self.owns(&state, b as u32) {
                due.owned.push(b as u32);
            } else if at.saturating_add(self.grace_ms) <= now
                && state.asked[b].is_none_or(|(_, t)| t.saturating_add(self.grace_ms) <= now)
            {
                let first = state.asked[b].map_or(now, |(first, _)| first);
                state.asked[b] = Some((first, now));
                let owner = state.members.iter().nth(state.owners[b]).cloned();
                due.overdue.push((b as u32, owner.unwrap_or_default()));
            }
        }
        due
    }

    /// Whether an overdue bucket whose owner still listens has waited so
    /// long since this node first asked after it that this node reaps it
    /// anyway.
    pub fn long_overdue(&self, bucket: u32, now: u64) -> bool {
        let state = self.lock();
        state.asked[bucket as usize]
            .is_some_and(|(first, _)| first.saturating_add(10 * self.grace_ms) <= now)
    }

    /// When the reaper should look again: the earliest entry of this
    /// node's buckets, or another's plus the grace.
    pub fn next_wake(&self) -> Option<u64> {
        let state = self.lock();
        (0..state.next.len())
            .filter_map(|b| {
                let at = state.next[b]?;
                Some(if self.owns(&state, b as u32) {
                    at
                } else {
                    at.saturating_add(self.grace_ms)
                })
            })
            .min()
    }

    /// The buckets whose intents this node is to read: every one it owns
    /// when all are to be read, else its buckets holding an intent
    /// announced and not yet dropped.
    pub fn intent_buckets(&self) -> Vec<u32> {
        let mut state = self.lock();
        let all = std::mem::replace(&mut state.read_intents, false);
        let mut out: BTreeSet<u32> = state.intents.values().copied().collect();
        if all {
            out.extend(0..state.owners.len() as u32);
        }
        out.into_iter().filter(|&b| self.owns(&state, b)).collect()
    }

    /// Every intent of this node's buckets is to be read at the next look
    /// (a subscription was lost: hints may have been missed).
    pub fn read_all_intents(&self) {
        self.lock().read_intents = true;
    }
}

// ---------------------------------------------------------------------------
// The commands behind the schedule.

/// Publishes a bucket's earliest entry after a reap, read in the same
/// script, so that a session filed meanwhile is never left out of it.
const NEXT_HINT: &str = "local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES') \
     local at = first[2] or '' \
     redis.call('SPUBLISH', ARGV[1], 'd\\n' .. at) \
     return at";

/// A score as Redis prints it, as milliseconds.
fn score(text: &str) -> Option<u64> {
    text.parse::<f64>().ok().map(|v| v as u64)
}

/// Reads `buckets`' earliest entries into the schedule (one round trip per
/// primary).
pub(crate) fn read_earliest(
    nodes: &Nodes,
    keys: &Keys,
    schedule: &Schedule,
    buckets: &[u32],
) -> Result<()> {
    let asked: Vec<(u32, u16)> = buckets.iter().map(|&b| (b, keys.slot(b))).collect();
    let replies = nodes.across(&asked, 1, "reading the earliest expiries", |pipe, b| {
        pipe.cmd("ZRANGE")
            .arg(keys.expiries(b))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
    })?;
    for (b, reply) in replies {
        let first: Vec<(String, String)> = reply
            .into_iter()
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        schedule.read_next(b, first.first().and_then(|(_, s)| score(s)));
    }
    Ok(())
}

/// Tells every node that each of `buckets` was reaped, with its earliest
/// entry now, and learns it.
pub(crate) fn announce_next(
    nodes: &Nodes,
    keys: &Keys,
    schedule: &Schedule,
    buckets: &[u32],
) -> Result<()> {
    let asked: Vec<(u32, u16)> = buckets.iter().map(|&b| (b, keys.slot(b))).collect();
    let replies = nodes.across(&asked, 1, "telling what is due next", |pipe, b| {
        pipe.cmd("EVAL")
            .arg(NEXT_HINT)
            .arg(1)
            .arg(keys.expiries(b))
            .arg(keys.channel(b));
    })?;
    for (b, reply) in replies {
        let at: Option<String> = reply
            .into_iter()
            .next()
            .and_then(|v| redis::from_redis_value(v).ok());
        schedule.read_next(b, at.as_deref().and_then(score));
    }
    Ok(())
}

/// The members of `members` that no longer listen on their presence
/// channel (one `PUBSUB SHARDNUMSUB` on bucket 0's primary).
pub(crate) fn gone(nodes: &Nodes, keys: &Keys, members: &[String]) -> Result<Vec<String>> {
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let counts: Vec<(String, u64)> =
        nodes.run(keys.slot(0), "asking which nodes are alive", |_, con| {
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("SHARDNUMSUB");
            for m in members {
                cmd.arg(keys.presence(m));
            }
            cmd.query(con)
        })?;
    Ok(members
        .iter()
        .filter(|m| {
            let channel = keys.presence(m);
            !counts.iter().any(|(c, n)| *c == channel && *n > 0)
        })
        .cloned()
        .collect())
}

/// Strikes `dead` from the store's members and says so on the members
/// channel; learns it.
pub(crate) fn strike(
    nodes: &Nodes,
    keys: &Keys,
    schedule: &Schedule,
    dead: &[String],
) -> Result<()> {
    if dead.is_empty() {
        return Ok(());
    }
    nodes.run(keys.slot(0), "striking nodes that died", |_, con| {
        let mut pipe = redis::pipe();
        for d in dead {
            pipe.cmd("HDEL").arg(keys.members()).arg(d).ignore();
            pipe.cmd("SPUBLISH")
                .arg(keys.members_channel())
                .arg(Membership::Leave(d.clone()).message())
                .ignore();
        }
        pipe.query::<()>(con)
    })?;
    for d in dead {
        log::warn!("node {d} stopped listening: its buckets move to the others");
        schedule.heard(&Membership::Leave(d.clone()));
    }
    Ok(())
}

/// Joins the store's members: learns the members registered and still
/// listening (striking those that are not), then registers this node and
/// says so.
pub(crate) fn join(nodes: &Nodes, keys: &Keys, schedule: &Schedule) -> Result<()> {
    let listed: Vec<String> = nodes.run(keys.slot(0), "reading the store's nodes", |_, con| {
        redis::cmd("HKEYS").arg(keys.members()).query(con)
    })?;
    let others: Vec<String> = listed.into_iter().filter(|m| m != schedule.me()).collect();
    let dead = gone(nodes, keys, &others)?;
    schedule.set_members(others.iter().filter(|m| !dead.contains(m)).cloned());
    strike(nodes, keys, schedule, &dead)?;
    let me = schedule.me().to_owned();
    nodes.run(keys.slot(0), "joining the store's nodes", |_, con| {
        redis::pipe()
            .cmd("HSET")
            .arg(keys.members())
            .arg(&me)
            .arg(SystemClock.now_ms())
            .ignore()
            .cmd("SPUBLISH")
            .arg(keys.members_channel())
            .arg(Membership::Join(me.clone()).message())
            .ignore()
            .query::<()>(con)
    })
}

/// Leaves the store's members (a clean close): the others take this node's
/// buckets at once.
pub(crate) fn leave(nodes: &Nodes, keys: &Keys, schedule: &Schedule) -> Result<()> {
    let me = schedule.me().to_owned();
    nodes.run(keys.slot(0), "leaving the store's nodes", |_, con| {
        redis::pipe()
            .cmd("HDEL")
            .arg(keys.members())
            .arg(&me)
            .ignore()
            .cmd("SPUBLISH")
            .arg(keys.members_channel())
            .arg(Membership::Leave(me.clone()).message())
            .ignore()
            .query::<()>(con)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_parse_as_the_scripts_write_them() {
        assert_eq!(
            Hint::parse(b"d\n1700000000000"),
            Some(Hint::Next(Some(1_700_000_000_000)))
        );
        assert_eq!(Hint::parse(b"d\n"), Some(Hint::Next(None)));
        assert_eq!(Hint::parse(b"f\n17"), Some(Hint::Filed(17)));
        assert_eq!(Hint::parse(b"i\nab01"), Some(Hint::Intent("ab01".into())));
        assert_eq!(
            Hint::parse(b"j\nab01"),
            Some(Hint::IntentDone("ab01".into()))
        );
        assert_eq!(Hint::parse(b"7\n1\n1-0\no\n{}"), None);
        let join = Membership::Join("n1".into());
        assert_eq!(Membership::parse(join.message().as_bytes()), Some(join));
    }

    #[test]
    fn every_bucket_has_one_owner_and_a_leaving_member_moves_only_its_share() {
        let nodes: Vec<Schedule> = ["a", "b", "c"]
            .iter()
            .map(|me| {
                let s = Schedule::new((*me).into(), 256, 1_000);
                s.set_members(["a", "b", "c"].map(String::from));
                s
            })
            .collect();
        let mut owned: Vec<u32> = nodes.iter().flat_map(|s| s.owned()).collect();
        owned.sort_unstable();
        assert_eq!(owned, (0..256).collect::<Vec<_>>());
        for s in &nodes {
            assert!(s.owned().len() > 40, "{} owns {}", s.me(), s.owned().len());
        }
        let a_had = nodes[0].owned();
        let b_had = nodes[1].owned();
        for s in &nodes {
            s.heard(&Membership::Leave("c".into()));
        }
        assert!(a_had.iter().all(|b| nodes[0].owned().contains(b)));
        assert!(b_had.iter().all(|b| nodes[1].owned().contains(b)));
        assert_eq!(nodes[0].owned().len() + nodes[1].owned().len(), 256);
        assert!(nodes[0].heard(&Membership::Leave("a".into())));
    }

    #[test]
    fn owners_reap_when_due_and_others_ask_after_them_once_overdue() {
        let a = Schedule::new("a".into(), 4, 1_000);
        a.set_members(["a", "b"].map(String::from));
        let mine = a.owned()[0];
        let theirs = (0..4).find(|b| !a.owned().contains(b)).unwrap();
        assert_eq!(a.next_wake(), None);
        a.read_next(mine, Some(5_000));
        a.hint(theirs, Hint::Filed(5_000));
        a.hint(theirs, Hint::Filed(7_000));
        assert_eq!(a.next_wake(), Some(5_000));
        assert_eq!(a.due(4_999), Due::default());
        assert_eq!(a.due(5_000).owned, vec![mine]);
        a.hint(mine, Hint::Next(None));
        assert_eq!(a.next_wake(), Some(6_000));
        let due = a.due(6_000);
        assert_eq!(due.overdue, vec![(theirs, "b".to_owned())]);
        // Asked once per grace; reaped by this node ten graces after it
        // first asked (however late the bucket was when it first looked).
        assert!(a.due(6_500).overdue.is_empty());
        assert_eq!(a.due(7_000).overdue.len(), 1);
        assert!(!a.long_overdue(theirs, 7_000));
        assert!(!a.long_overdue(theirs, 15_999));
        assert!(a.long_overdue(theirs, 16_000));
        a.hint(theirs, Hint::Next(Some(99_000)));
        assert!(!a.long_overdue(theirs, 50_000));
    }

    #[test]
    fn intents_are_read_where_announced_and_all_after_a_loss() {
        let a = Schedule::new("a".into(), 4, 1_000);
        assert_eq!(a.intent_buckets(), vec![0, 1, 2, 3]);
        assert!(a.intent_buckets().is_empty());
        a.hint(2, Hint::Intent("x".into()));
        assert_eq!(a.intent_buckets(), vec![2]);
        a.hint(2, Hint::IntentDone("x".into()));
        assert!(a.intent_buckets().is_empty());
        a.read_all_intents();
        assert_eq!(a.intent_buckets().len(), 4);
    }
}
