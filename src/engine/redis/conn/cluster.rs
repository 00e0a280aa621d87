//! A Redis Cluster's topology: which primary serves which slots, learned
//! with `CLUSTER SLOTS` from any node that answers (the known primaries
//! first, then the seed URLs), and learned again after a failover or a
//! slot's move.

use std::sync::{Arc, RwLock};

use redis::Value;

use super::{failed, Dialer, Pool, Pools, Primary};
use crate::error::{Error, Result, StorageError};

pub(super) struct Cluster {
    seeds: Vec<Dialer>,
    pools: Pools,
    primaries: RwLock<Vec<Primary>>,
}

/// A slot range and the address of the primary serving it.
type Range = (u16, u16, String, u16);

impl Cluster {
    /// Asks the seeds in turn for the slot map.
    pub fn discover(seeds: Vec<Dialer>) -> Result<Cluster> {
        let cluster = Cluster {
            seeds,
            pools: Pools::default(),
            primaries: RwLock::new(Vec::new()),
        };
        let mut last = None;
        for seed in &cluster.seeds {
            match seed.pool().and_then(|pool| slots_of(&pool)) {
                Ok(ranges) => {
                    cluster.install(ranges)?;
                    return Ok(cluster);
                }
                // A seed that is not a cluster node is the configuration's
                // fault: say so at once.
                Err(e @ Error::InvalidConfig { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidConfig {
            setting: "redis_cluster",
            problem: "no seed URL given".into(),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Primary>> {
        self.primaries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn primaries(&self) -> Vec<Primary> {
        self.read().clone()
    }

    pub fn primary_for(&self, slot: u16) -> Option<Arc<Pool>> {
        self.read()
            .iter()
            .find(|p| p.serves(slot))
            .map(|p| p.pool.clone())
    }

    /// The pool of the node at `addr` (`host:port`), as a redirection names it.
    pub fn pool_named(&self, addr: &str) -> Option<Arc<Pool>> {
        let (host, port) = addr.rsplit_once(':')?;
        let dialer = self.seeds.first()?;
        self.pools.get(dialer, host, port.parse().ok()?).ok()
    }

    /// Asks the known primaries, then the seeds, for the slot map; returns
    /// whether a slot's primary changed.
    pub fn refresh(&self) -> bool {
        let known: Vec<Arc<Pool>> = self.read().iter().map(|p| p.pool.clone()).collect();
        let asked = known
            .into_iter()
            .map(Ok)
            .chain(self.seeds.iter().map(Dialer::pool));
        for pool in asked {
            let Ok(ranges) = pool.and_then(|p| slots_of(&p)) else {
                continue;
            };
            let before = self.shape();
            if self.install(ranges).is_ok() {
                return self.shape() != before;
            }
        }
        false
    }

    /// Which address serves which slots, for comparing maps.
    fn shape(&self) -> Vec<(String, Vec<(u16, u16)>)> {
        let mut shape: Vec<_> = self
            .read()
            .iter()
            .map(|p| (p.pool.addr().to_owned(), p.slots.clone()))
            .collect();
        shape.sort();
        shape
    }

    fn install(&self, ranges: Vec<Range>) -> Result<()> {
        let dialer = self.seeds.first().ok_or_else(|| Error::InvalidConfig {
            setting: "redis_cluster",
            problem: "no seed URL given".into(),
        })?;
        let mut primaries: Vec<Primary> = Vec::new();
        for (start, end, host, port) in ranges {
            let pool = self.pools.get(dialer, &host, port)?;
            match primaries.iter_mut().find(|p| Arc::ptr_eq(&p.pool, &pool)) {
                Some(p) => p.slots.push((start, end)),
                None => primaries.push(Primary {
                    pool,
                    slots: vec![(start, end)],
                }),
            }
        }
        *self
            .primaries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = primaries;
        Ok(())
    }
}

/// The slot map as `pool`'s node sees it. A node without cluster support
/// is `InvalidConfig`.
fn slots_of(pool: &Pool) -> Result<Vec<Range>> {
    let reply: Value = pool
        .with(|con| redis::cmd("CLUSTER").arg("SLOTS").query(con))
        .map_err(|e| {
            if e.to_string().contains("cluster support disabled") {
                Error::InvalidConfig {
                    setting: "redis_cluster",
                    problem: format!(
                        "the server at {} is not part of a cluster (it has cluster support \
                         disabled); give it as redis_url instead",
                        pool.addr()
                    ),
                }
            } else {
                failed("reading the cluster's slots")(e)
            }
        })?;
    let asked_host = pool
        .addr()
        .rsplit_once(':')
        .map_or("", |(host, _)| host)
        .to_owned();
    let ranges = parse_slots(&reply, &asked_host).ok_or_else(|| {
        Error::Storage(StorageError::new(
            "reading the cluster's slots",
            format!("unexpected CLUSTER SLOTS reply from {}", pool.addr()),
        ))
    })?;
    if ranges.is_empty() {
        return Err(Error::Unavailable {
            source: StorageError::new(
                "reading the cluster's slots",
                format!("the node at {} knows no slot owners yet", pool.addr()),
            ),
        });
    }
    Ok(ranges)
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`;
/// an empty host means the node asked.
fn parse_slots(reply: &Value, asked_host: &str) -> Option<Vec<Range>> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else {
            return None;
        };
        let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
        let Value::Array(primary) = fields.get(2)? else {
            return None;
        };
        let host = text(primary.first()?)?;
        let host = if host.is_empty() || host == "?" {
            asked_host.to_owned()
        } else {
            host
        };
        out.push((start, end, host, int(primary.get(1)?)?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_slot_map_names_each_ranges_primary() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7001), bulk("id1")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7004), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7002), bulk("id2")]),
            ]),
        ]);
        assert_eq!(
            parse_slots(&reply, "10.0.0.9"),
            Some(vec![
                (0, 5460, "127.0.0.1".into(), 7001),
                (5461, 16383, "10.0.0.9".into(), 7002),
            ])
        );
        assert_eq!(parse_slots(&Value::Nil, "h"), None);
    }
}
