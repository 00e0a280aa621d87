//! What this node last read or wrote of the store: session records (with
//! their revisions) and actors' session lists. Planning reads here first,
//! so that a write is one round trip (the commit script) in the common
//! case: a session this node just resolved, registered or changed, and an
//! actor it has never seen, which is taken to have no session.
//!
//! Knowledge may be stale (another node changed the session since): every
//! plan names what it relied on as preconditions, which the commit script
//! checks, so a stale entry costs a conflict, after which the plan's
//! subjects are forgotten and read afresh; it never makes a wrong commit.
//! The read path (resolve, is_valid, data) never answers from here.
//!
//! Bounded by bytes (`Config::cache_capacity`, 64 MiB by default): records
//! weigh their length plus their keys; least recently used go first.

use std::sync::Arc;

use moka::sync::Cache;

use crate::key::Digest;

/// A record as this node knows it: its revision and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Known {
    pub revision: u64,
    pub bytes: Arc<[u8]>,
}

/// What a node knows of an actor's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Actor {
    /// The list, as this node last read or wrote it.
    Sessions(Arc<Vec<Digest>>),
    /// What it knew proved wrong (a conflict): read it before planning.
    Stale,
}

/// What a node knows, by digest and by actor.
pub(crate) struct Knowledge {
    records: Cache<Digest, Known>,
    actors: Cache<String, Actor>,
}

/// The weight of an entry beside its payload: keys, the map's own slot.
const OVERHEAD: u32 = 96;

impl Knowledge {
    /// Knowledge of at most `bytes` (at least 1 MiB), a tenth of it for
    /// actors' lists.
    pub fn new(bytes: u64) -> Knowledge {
        let bytes = bytes.max(1 << 20);
        Knowledge {
            records: Cache::builder()
                .max_capacity(bytes - bytes / 10)
                .weigher(|_, k: &Known| {
                    u32::try_from(k.bytes.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(OVERHEAD)
                })
                .build(),
            actors: Cache::builder()
                .max_capacity(bytes / 10)
                .weigher(|actor: &String, known: &Actor| {
                    let listed = match known {
                        Actor::Sessions(list) => list.len(),
                        Actor::Stale => 0,
                    };
                    u32::try_from(actor.len() + listed * 32)
                        .unwrap_or(u32::MAX)
                        .saturating_add(OVERHEAD)
                })
                .build(),
        }
    }

    pub fn record(&self, digest: &Digest) -> Option<Known> {
        self.records.get(digest)
    }

    /// Learns a record read from the server, unless a newer one is known
    /// (a read racing a commit of this node).
    pub fn saw(&self, digest: Digest, revision: u64, bytes: &[u8]) {
        if self
            .records
            .get(&digest)
            .is_some_and(|k| k.revision >= revision)
        {
            return;
        }
        self.records.insert(
            digest,
            Known {
                revision,
                bytes: bytes.into(),
            },
        );
    }

    /// Learns a record as a commit of this node wrote it.
    pub fn wrote(&self, digest: Digest, revision: u64, bytes: &[u8]) {
        self.records.insert(
            digest,
            Known {
                revision,
                bytes: bytes.into(),
            },
        );
    }

    pub fn forget_record(&self, digest: &Digest) {
        self.records.invalidate(digest);
    }

    /// What the node knows of the actor's sessions (`None`: nothing).
    pub fn actor(&self, actor_id: &str) -> Option<Actor> {
        self.actors.get(actor_id)
    }

    pub fn set_actor(&self, actor_id: &str, sessions: Vec<Digest>) {
        self.actors
            .insert(actor_id.to_owned(), Actor::Sessions(Arc::new(sessions)));
    }

    /// Marks what the node knew of the actor as wrong: it is read afresh
    /// (not taken to be empty) the next time a plan needs it.
    pub fn forget_actor(&self, actor_id: &str) {
        self.actors.insert(actor_id.to_owned(), Actor::Stale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_never_replaces_a_newer_record() {
        let k = Knowledge::new(1 << 20);
        let d = Digest([1; 32]);
        k.wrote(d, 5, b"five");
        k.saw(d, 4, b"four");
        assert_eq!(k.record(&d).map(|r| r.revision), Some(5));
        k.saw(d, 6, b"six");
        assert_eq!(&*k.record(&d).unwrap().bytes, b"six");
        k.forget_record(&d);
        assert_eq!(k.record(&d), None);
        assert_eq!(k.actor("a"), None);
        k.set_actor("a", vec![d]);
        assert_eq!(k.actor("a"), Some(Actor::Sessions(Arc::new(vec![d]))));
        k.forget_actor("a");
        assert_eq!(k.actor("a"), Some(Actor::Stale));
    }
}
