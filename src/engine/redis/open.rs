//! What `open` checks on the servers, and the store's meta.

use std::collections::HashMap;

use redis::Connection;

use super::commit::Sync;
use super::conn::{failed, Nodes};
use super::keys::{self, Keys, Tags, REDIS_FORMAT};
use crate::config::Durability;
use crate::error::{Error, Result};

/// The value of `name` in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// `CONFIG GET name`, or `None` where the server refuses CONFIG.
fn config_get(con: &mut Connection, name: &str) -> Option<String> {
    let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query(con).ok()?;
    pair.into_iter().nth(1)
}

/// How one primary can make a write durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Fsync {
    /// No append-only file.
    #[default]
    None,
    /// An append-only file, fsynced by the server's own policy.
    Policy,
    /// `appendfsync always`.
    Always,
    /// `WAITAOF` (Redis 7.2+, Valkey 8+).
    WaitAof,
}

/// Checks that every primary offers what the store needs, and returns how
/// commits are made durable. A primary with fewer replicas attached than
/// `min_replicas` is no reason to refuse the store (reads go on, and
/// writes once a replica attaches): it is logged.
pub(crate) fn check_servers(
    nodes: &Nodes,
    durability: Durability,
    min_replicas: u32,
) -> Result<Sync> {
    let mut found = Vec::new();
    for primary in nodes.primaries() {
        let pool = primary.pool.clone();
        let (fsync, attached) = pool
            .with(|con| {
                let fsync = check_server(con, nodes.is_cluster(), pool.addr())?;
                Ok((fsync, pool.ask_replicas(con)?))
            })
            .map_err(failed("reading the server's settings"))?;
        let fsync = fsync?;
        if attached < min_replicas {
            log::warn!(
                "the primary at {} has {attached} replica(s) attached and min_replicas requires \
                 {min_replicas}: writes are refused until enough replicas attach",
                pool.addr()
            );
        }
        found.push((pool.addr().to_owned(), fsync));
    }
    if durability != Durability::Immediate {
        return Ok(Sync::Server);
    }
    if found.iter().all(|(_, f)| *f == Fsync::WaitAof) {
        return Ok(Sync::WaitAof);
    }
    if found
        .iter()
        .all(|(_, f)| matches!(f, Fsync::Always | Fsync::WaitAof))
    {
        return Ok(Sync::AlwaysFsync);
    }
    let (addr, fsync) = found
        .iter()
        .find(|(_, f)| !matches!(f, Fsync::Always | Fsync::WaitAof))
        .cloned()
        .unwrap_or_default();
    Err(Error::InvalidConfig {
        setting: "durability",
        problem: if fsync == Fsync::Policy {
            format!(
                "Durability::Immediate needs every primary to fsync each write: the server at \
                 {addr} has no WAITAOF (Redis 7.2+, Valkey 8+), so set `appendfsync always` on it"
            )
        } else {
            format!(
                "Durability::Immediate needs the servers' append-only file: set `appendonly yes` \
                 (and, without WAITAOF, `appendfsync always`) on the server at {addr}"
            )
        },
    })
}

/// One primary's settings: refused when they would break the store's
/// guarantees; how it can fsync.
fn check_server(
    con: &mut Connection,
    cluster: bool,
    addr: &str,
) -> redis::RedisResult<Result<Fsync>> {
    let info: String = redis::cmd("INFO").arg("memory").query(con)?;
    if let Some(policy) = info_field(&info, "maxmemory_policy") {
        if policy.starts_with("allkeys-") {
            return Ok(Err(Error::InvalidConfig {
                setting: "redis_url",
                problem: format!(
                    "the server at {addr} has maxmemory-policy {policy}: it may evict sessions \
                     and their indexes; set `maxmemory-policy noeviction` (or a volatile-* \
                     policy) on the server"
                ),
            }));
        }
    }
    let info: String = redis::cmd("INFO").arg("cluster").query(con)?;
    if !cluster && info_field(&info, "cluster_enabled") == Some("1") {
        return Ok(Err(Error::InvalidConfig {
            setting: "redis_url",
            problem: format!(
                "the server at {addr} is a node of a Redis Cluster: give its nodes as \
                 redis_cluster (--redis-cluster) instead of redis_url"
            ),
        }));
    }
    let persistence: String = redis::cmd("INFO").arg("persistence").query(con)?;
    if info_field(&persistence, "aof_enabled") != Some("1") {
        return Ok(Ok(Fsync::None));
    }
    let waitaof: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("WAITAOF")
        .query(con)?;
    let has_waitaof = matches!(&waitaof, redis::Value::Array(v) if v.first().is_some_and(|c| *c != redis::Value::Nil));
    Ok(Ok(if has_waitaof {
        Fsync::WaitAof
    } else if config_get(con, "appendfsync").as_deref() == Some("always") {
        Fsync::Always
    } else {
        Fsync::Policy
    }))
}

/// The store's meta as found or created.
pub(crate) struct Meta {
    pub created: bool,
    pub buckets: u32,
    pub tags: Tags,
}

/// A bucket of a store before format 5 moved on: its count key deleted,
/// its last event number (KEYS[2]) and the stream's last entry (KEYS[3])
/// kept in the head (KEYS[4]). Run again, it changes nothing.
const UPGRADE_TO_5: &str = "redis.call('DEL', KEYS[1]) \
     local n = redis.call('GET', KEYS[2]) \
     if n then \
       local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1] \
       redis.call('HSET', KEYS[4], 'n', n, 'p', last and last[1] or '0-0') \
       redis.call('DEL', KEYS[2]) \
     end \
     return 1";

/// Creates or reads the store's meta atomically (one script: a new store
/// gets the format, its buckets and spread tags; an existing one is left
/// as it is), and moves an older format to the current one.
pub(crate) fn meta(nodes: &Nodes, prefix: &str, wanted: Option<u32>) -> Result<Meta> {
    let key = Keys::meta(prefix);
    let default = if nodes.is_cluster() {
        keys::DEFAULT_CLUSTER_BUCKETS
    } else {
        keys::DEFAULT_BUCKETS
    };
    let script = redis::Script::new(
        "local created = 0 \
         if redis.call('EXISTS', KEYS[1]) == 0 then \
           redis.call('HSET', KEYS[1], 'format', ARGV[1], 'buckets', ARGV[2], 'tags', ARGV[3]) \
           created = 1 \
         end \
         return {created, redis.call('HGETALL', KEYS[1])}",
    );
    let (created, stored): (bool, HashMap<String, String>) = nodes.run(
        keys::slot(key.as_bytes()),
        "reading the store's meta",
        |_, con| {
            script
                .key(&key)
                .arg(REDIS_FORMAT)
                .arg(wanted.unwrap_or(default))
                .arg(Tags::Spread.name())
                .invoke(con)
        },
    )?;
    let corrupt = |what: &str| Error::Corrupt {
        what: format!("meta entry `{what}` of {key}"),
        problem: "missing or not a number".into(),
    };
    let format: u32 = stored
        .get("format")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt("format"))?;
    if format > REDIS_FORMAT {
        return Err(Error::NewerFormat {
            found: format,
            supported: REDIS_FORMAT,
        });
    }
    if format < REDIS_FORMAT {
        // Its entries hold format 3's invariants as they are (and streams
        // of one-event entries naming the one before them still read).
        // Nodes of an older build refuse the store from their next open.
        nodes.run(
            keys::slot(key.as_bytes()),
            "upgrading the store's meta",
            |_, con| {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg("format")
                    .arg(REDIS_FORMAT)
                    .query::<()>(con)
            },
        )?;
        log::info!("Redis store {prefix:?}: format {format} -> {REDIS_FORMAT}");
    }
    let buckets: u32 = stored
        .get("buckets")
        .and_then(|v| v.parse().ok())
        .filter(|b| *b > 0)
        .ok_or_else(|| corrupt("buckets"))?;
    if let Some(w) = wanted.filter(|w| *w != buckets) {
        return Err(Error::InvalidConfig {
            setting: "redis_buckets",
            problem: format!(
                "the store under prefix {prefix:?} was created with {buckets} buckets, not {w}; \
                 leave redis_buckets unset to use the store's own"
            ),
        });
    }
    let tags = match stored.get("tags") {
        None => Tags::Numbers,
        Some(name) => Tags::parse(name).ok_or_else(|| Error::Corrupt {
            what: format!("meta entry `tags` of {key}"),
            problem: format!("{name:?} is not a tag scheme this build knows"),
        })?,
    };
    if format < 5 {
        // Formats before 5 kept a count per bucket (the expiry indexes
        // count now) and the last event number alone: the head takes it,
        // with the stream's last entry.
        let keys = Keys::new(prefix, buckets, tags);
        let all: Vec<(u32, u16)> = (0..buckets).map(|b| (b, keys.slot(b))).collect();
        nodes.across(&all, 1, "moving the event heads to format 5", |pipe, b| {
            pipe.cmd("EVAL")
                .arg(UPGRADE_TO_5)
                .arg(4)
                .arg(keys.old_count(b))
                .arg(keys.old_sequence(b))
                .arg(keys.stream(b))
                .arg(keys.head(b));
        })?;
    }
    Ok(Meta {
        created,
        buckets,
        tags,
    })
}
