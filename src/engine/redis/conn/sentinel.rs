//! A primary that Redis Sentinel manages: its address, asked of the
//! sentinels in turn, and asked again after a call met a read-only or
//! unreachable server (a failover).

use std::sync::{Arc, RwLock};

use super::{failed, Dialer, Pool, Pools};
use crate::error::{Error, Result, StorageError};

pub(super) struct Sentinel {
    sentinels: Vec<Dialer>,
    master: String,
    pools: Pools,
    primary: RwLock<Arc<Pool>>,
}

impl Sentinel {
    pub fn discover(sentinels: Vec<Dialer>, master: String) -> Result<Sentinel> {
        let pools = Pools::default();
        let primary = locate(&sentinels, &master, &pools)?;
        Ok(Sentinel {
            sentinels,
            master,
            pools,
            primary: RwLock::new(primary),
        })
    }

    pub fn primary(&self) -> Arc<Pool> {
        self.primary
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Asks the sentinels again; returns whether the primary changed.
    pub fn refresh(&self) -> bool {
        let Ok(found) = locate(&self.sentinels, &self.master, &self.pools) else {
            return false;
        };
        let mut primary = self
            .primary
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if Arc::ptr_eq(&primary, &found) {
            return false;
        }
        log::warn!(
            "the sentinels name a new primary for {:?}: {} (was {})",
            self.master,
            found.addr(),
            primary.addr()
        );
        *primary = found;
        true
    }
}

/// The current primary's pool, from the first sentinel that knows it.
fn locate(sentinels: &[Dialer], master: &str, pools: &Pools) -> Result<Arc<Pool>> {
    let mut last = None;
    for sentinel in sentinels {
        let asked = sentinel.pool().and_then(|pool| {
            pool.with(|con| {
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(master)
                    .query::<Option<(String, u16)>>(con)
            })
            .map_err(failed("asking a sentinel for the primary"))
        });
        match asked {
            Ok(Some((host, port))) => return pools.get(sentinel, &host, port),
            Ok(None) => {
                last = Some(Error::InvalidConfig {
                    setting: "redis_sentinel_master",
                    problem: format!("the sentinels know no primary named {master:?}"),
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Unavailable {
        source: StorageError::new("asking a sentinel for the primary", "no sentinel URL given"),
    }))
}
