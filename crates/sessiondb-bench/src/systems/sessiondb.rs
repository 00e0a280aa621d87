//! sessiondb itself, through its public API only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sessiondb::{Config, Durability, SessionStore};

use super::{System, Worker};
use crate::clock::BenchClock;
use crate::shape::{self, Key};

/// sessiondb's default periodic flush interval.
pub const PERIODIC: Durability = Durability::Periodic(Duration::from_millis(500));

/// The environment variable `compare --cache-mib` sets for itself and the
/// child processes it runs.
pub const CACHE_ENV: &str = "SESSIONDB_BENCH_CACHE_MIB";

/// The configuration every sessiondb row uses: defaults, except the clock,
/// the durability under test and, with `compare --cache-mib`, sled's cache.
pub fn config(dir: &Path, clock: &BenchClock, durability: Durability) -> Config {
    let config = Config::new(dir)
        .ttl(shape::TTL)
        .clock(Arc::new(clock.clone()))
        .durability(durability);
    match std::env::var(CACHE_ENV)
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
    {
        Some(mib) => config.cache_capacity(mib << 20),
        None => config,
    }
}

/// The same on the Redis engine, on the server at `url`.
pub fn redis_config(url: &str, clock: &BenchClock) -> Config {
    shared_config(Config::redis(url), clock)
}

/// The same settings on a Redis Cluster.
pub fn redis_cluster_config(seeds: Vec<String>, clock: &BenchClock) -> Config {
    shared_config(Config::redis_cluster(seeds), clock)
}

fn shared_config(config: Config, clock: &BenchClock) -> Config {
    config
        .ttl(shape::TTL)
        .clock(Arc::new(clock.clone()))
        .durability(PERIODIC)
}

pub struct Sessiondb {
    pub name: &'static str,
    pub store: SessionStore,
}

impl Sessiondb {
    pub fn open(name: &'static str, config: Config) -> Result<Sessiondb> {
        let store = SessionStore::open(config).context("opening sessiondb")?;
        Ok(Sessiondb { name, store })
    }

    pub fn close(self) -> Result<()> {
        self.store.close().context("closing sessiondb")
    }
}

struct SessiondbWorker {
    store: SessionStore,
}

impl Worker for SessiondbWorker {
    fn register(&mut self, actor: &str) -> Result<String> {
        let session = self
            .store
            .register(actor, shape::LANGUAGE, shape::sessiondb_data(0))?;
        Ok(session
            .key()
            .context("register returned no key")?
            .to_owned())
    }

    fn resolve(&mut self, key: &Key) -> Result<()> {
        self.store.resolve(&key.full)?;
        Ok(())
    }

    fn extend(&mut self, key: &Key) -> Result<()> {
        self.store.extend(&key.full)?;
        Ok(())
    }

    fn set_data(&mut self, key: &Key, score: u64) -> Result<()> {
        self.store.set_data(&key.full, "score", &score)?;
        Ok(())
    }
}

impl System for Sessiondb {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    fn worker(&self) -> Result<Box<dyn Worker + '_>> {
        Ok(Box::new(SessiondbWorker {
            store: self.store.clone(),
        }))
    }

    fn reap(&self) -> Result<usize> {
        Ok(self.store.reap_expired()?)
    }
}
