//! The systems under comparison, each behind the same two traits: a
//! `System` (one store, shared) hands out `Worker`s (one per client thread:
//! a store handle, a sled tree set, an SQLite connection, a Redis connection).

pub mod redis;
pub mod redis_cluster;
pub mod sessiondb;
pub mod sled_naive;
pub mod sqlite;

use anyhow::Result;

use crate::shape::Key;

/// One client of a system; every call is one operation as a game server
/// would make it, acknowledged when the call returns.
pub trait Worker: Send {
    /// Creates a session for `actor` and returns its full key.
    fn register(&mut self, actor: &str) -> Result<String>;
    /// Validates a key and reads its session; writes only when the expiry
    /// moved by at least the touch interval.
    fn resolve(&mut self, key: &Key) -> Result<()>;
    /// Validates a key and always moves its expiry to now + TTL.
    fn extend(&mut self, key: &Key) -> Result<()>;
    /// Sets the session's score to `score` (a data write).
    fn set_data(&mut self, key: &Key, score: u64) -> Result<()>;
}

/// One store of one system.
pub trait System: Sync {
    /// The row name.
    fn name(&self) -> String;
    /// A new client.
    fn worker(&self) -> Result<Box<dyn Worker + '_>>;
    /// Deletes every session due now, in bounded batches; returns how many.
    fn reap(&self) -> Result<usize> {
        anyhow::bail!("{} has no reap", self.name())
    }
    /// Registers `n` sessions as fast as the system allows (not timed);
    /// the default registers from `threads` workers. Returns their keys,
    /// or nothing unless `keep` (a million keys would weigh on peak RSS).
    fn preload(
        &self,
        n: usize,
        threads: usize,
        actor_prefix: &str,
        keep: bool,
    ) -> Result<Vec<Key>> {
        preload_with_workers(self, n, threads, actor_prefix, keep)
    }
}

/// Registers `n` sessions from `threads` workers.
pub fn preload_with_workers<S: System + ?Sized>(
    system: &S,
    n: usize,
    threads: usize,
    actor_prefix: &str,
    keep: bool,
) -> Result<Vec<Key>> {
    let threads = threads.max(1);
    let per = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = per.min(n.saturating_sub(t * per));
                scope.spawn(move || -> Result<Vec<Key>> {
                    let mut worker = system.worker()?;
                    let mut keys = Vec::with_capacity(if keep { count } else { 0 });
                    for _ in 0..count {
                        let actor = crate::shape::next_actor(actor_prefix);
                        let key = worker.register(&actor)?;
                        if keep {
                            keys.push(Key::new(key)?);
                        }
                    }
                    Ok(keys)
                })
            })
            .collect();
        let mut keys = Vec::with_capacity(if keep { n } else { 0 });
        for h in handles {
            keys.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a preload thread panicked"))??,
            );
        }
        Ok(keys)
    })
}
