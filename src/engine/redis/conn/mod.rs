//! Connections to the Redis / Valkey servers.
//!
//! Per server, a small pool of synchronous connections with timeouts
//! ([`Pool`]); a connection that failed is dropped and the next call
//! connects again. [`Nodes`] knows which primary serves which hash slot:
//! the one server, the primary a Sentinel names (`sentinel`), or a
//! cluster's slot owners (`cluster`). A call runs on the primary of its
//! bucket's slot and is retried there, until `Config::redis_timeout` from
//! its start, while the servers fail over; each retry first learns the
//! topology again. [`failed`] is the one place that decides what counts as
//! "the server is down".

mod cluster;
mod sentinel;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::{Client, Connection, ConnectionAddr, ConnectionInfo, RedisError};

use crate::backoff::Backoff;
use crate::config::{connection_info, RedisSettings, RedisTarget};
use crate::error::{Error, Result, StorageError};

/// How many idle connections a pool keeps.
const IDLE: usize = 64;
/// The pause before a call is retried: 10 ms doubling up to 200 ms.
const RETRY: Backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
/// The topology is asked again at most this often.
const REFRESH_EVERY: Duration = Duration::from_millis(50);

/// What a failed call tells the caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// The server is unreachable, too slow, or cannot take writes now (a
    /// replica, a failover or a load under way): learn the topology again
    /// and retry until the deadline, then `Error::Unavailable`.
    Down,
    /// The slot moved to the node at this address for good (`MOVED`).
    Moved(String),
    /// The slot is moving; this one command goes to the node at this
    /// address, after `ASKING`.
    Ask(String),
    /// Credentials refused: `Error::InvalidConfig`.
    Refused,
    /// Anything else: a storage failure.
    Failed,
}

/// Sorts a client error.
pub(crate) fn trouble(e: &RedisError) -> Trouble {
    // A server's reply, or the first failed reply of a pipeline (redis-rs
    // gives no code for a pipeline's error it has no name for, such as
    // UNBLOCKED).
    let (code, detail) = match e.clone().into_server_errors() {
        Some(errors) => match errors.first() {
            Some((_, s)) => (Some(s.code().to_owned()), s.details().map(str::to_owned)),
            None => (None, None),
        },
        None => (e.code().map(str::to_owned), e.detail().map(str::to_owned)),
    };
    let code = code.as_deref();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(code, Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        return Trouble::Refused;
    }
    // A redirection: `MOVED <slot> <addr>` or `ASK <slot> <addr>`.
    if let Some(code @ ("MOVED" | "ASK")) = code {
        let addr = detail
            .and_then(|d| d.split_ascii_whitespace().nth(1).map(str::to_owned))
            .unwrap_or_default();
        return match code {
            "MOVED" => Trouble::Moved(addr),
            _ if addr.is_empty() => Trouble::Down,
            _ => Trouble::Ask(addr),
        };
    }
    // A server that cannot take writes now: a primary demoted to replica
    // in a failover (READONLY, and UNBLOCKED for a WAIT it was blocked in),
    // one still loading its data (LOADING), a replica cut off from its
    // primary (MASTERDOWN), a cluster without a quorum or a slot's owner
    // (CLUSTERDOWN), or keys caught mid-migration (TRYAGAIN).
    let not_now = matches!(
        code,
        Some("READONLY" | "UNBLOCKED" | "LOADING" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN")
    );
    let down = not_now
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error();
    if down {
        Trouble::Down
    } else {
        Trouble::Failed
    }
}

/// Maps a client error: refused credentials are `InvalidConfig`; a server
/// that is down or cannot take writes now is `Unavailable`; anything else a
/// storage failure.
pub(crate) fn failed(context: &'static str) -> impl Fn(RedisError) -> Error {
    move |e| match trouble(&e) {
        Trouble::Refused => Error::InvalidConfig {
            setting: "redis_url",
            problem: format!(
                "the server refused the URL's user name or password ({context}: {e}); check them"
            ),
        },
        Trouble::Down | Trouble::Moved(_) | Trouble::Ask(_) => Error::Unavailable {
            source: StorageError::new(context, e),
        },
        Trouble::Failed => Error::Storage(StorageError::new(context, e)),
    }
}

/// A pool of connections to one server.
pub(crate) struct Pool {
    client: Client,
    /// `host:port` (or the socket's path), as the cluster names it.
    addr: String,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    /// How many replicas were attached to the server, when that was asked,
    /// if it was more than none.
    replicas: Mutex<Option<(u32, Instant)>>,
}

/// How long a count of attached replicas (one or more) is trusted before
/// it is asked again. A count of none is never kept: see
/// [`Pool::replicas`].
const REPLICAS_FOR: Duration = Duration::from_secs(5);

impl Pool {
    fn new(client: Client, timeout: Duration) -> Self {
        let addr = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                format!("{host}:{port}")
            }
            ConnectionAddr::Unix(path) => path.display().to_string(),
            other => format!("{other:?}"),
        };
        Pool {
            client,
            addr,
            timeout,
            idle: Mutex::new(Vec::new()),
            replicas: Mutex::new(None),
        }
    }

    /// How many replicas are attached to the server, in sync or still in
    /// their initial sync, as counted less than [`REPLICAS_FOR`] ago; `None`
    /// when that is not known, or was none.
    ///
    /// Only a count of one or more is kept. A kept count can only be too
    /// high (a replica left since), which makes a write wait for a replica
    /// that is gone: it fails as unavailable, never acknowledged on the
    /// primary alone, and the count is forgotten. A kept zero would be the
    /// unsafe kind of stale: a write right after a replica attached would
    /// skip the wait for it. So a count of none is asked again, after the
    /// write, by every write that waits on it (see `Wait` in `commit`).
    pub fn replicas(&self) -> Option<u32> {
        let known = *self.known_replicas();
        known
            .filter(|(_, at)| at.elapsed() < REPLICAS_FOR)
            .map(|(n, _)| n)
    }

    /// Asks the server on `con` how many replicas are attached, and notes
    /// the answer.
    pub fn ask_replicas(&self, con: &mut Connection) -> redis::RedisResult<u32> {
        let info: String = redis::cmd("INFO").arg("replication").query(con)?;
        let n = replicas_attached(&info);
        self.note_replicas(n);
        Ok(n)
    }

    /// Notes a count of attached replicas the server gave (from an
    /// `INFO replication` reply).
    pub fn note_replicas(&self, n: u32) {
        *self.known_replicas() = (n > 0).then(|| (n, Instant::now()));
    }

    /// Forgets the replica count: a failover changes it, and a wait for a
    /// replica that timed out may mean it left.
    pub fn forget_replicas(&self) {
        *self.known_replicas() = None;
    }

    fn known_replicas(&self) -> std::sync::MutexGuard<'_, Option<(u32, Instant)>> {
        self.replicas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A new connection for a subscription, speaking RESP3: its messages
    /// are push values, which redis-rs hands back as they come even after a
    /// read timed out (a timed-out read of a RESP2 reply makes it drop the
    /// next reply, taking it for the late answer).
    pub fn subscriber(&self, read_timeout: Duration) -> Result<Connection> {
        let info = self.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let connected = Client::open(info.set_redis_settings(settings))
            .and_then(|c| c.get_connection_with_timeout(self.timeout))
            .and_then(|con| {
                con.set_read_timeout(Some(read_timeout))?;
                con.set_write_timeout(Some(self.timeout))?;
                Ok(con)
            });
        connected.map_err(failed("subscribing to the server"))
    }

    /// A new connection with this pool's timeouts.
    fn connect(&self) -> redis::RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(con)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on a pooled connection. The connection goes back to the
    /// pool unless the call failed for want of the server (or was sent to
    /// the wrong one), so the next call connects afresh.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let pooled = self.idle().pop();
        let mut con = match pooled {
            Some(con) => con,
            None => self.connect()?,
        };
        let out = f(&mut con);
        let keep = match &out {
            Ok(_) => true,
            Err(e) => trouble(e) == Trouble::Failed,
        };
        if keep {
            let mut idle = self.idle();
            if idle.len() < IDLE {
                idle.push(con);
            }
        }
        out
    }
}

/// The replicas an `INFO replication` reply says are attached, whatever
/// their state: online, or still in their initial sync (`wait_bgsave`,
/// `send_bulk`). The larger of `connected_slaves` and the count of
/// `slaveN:` lines (the server leaves out a line it cannot describe).
pub(crate) fn replicas_attached(info: &str) -> u32 {
    let connected = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let listed = info
        .lines()
        .filter(|l| {
            l.strip_prefix("slave").is_some_and(|rest| {
                rest.split_once(':')
                    .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .count();
    connected.max(u32::try_from(listed).unwrap_or(u32::MAX))
}

/// Makes clients for the servers a topology names, with the credentials,
/// database and TLS settings of the URL that led to them.
#[derive(Clone)]
struct Dialer {
    info: ConnectionInfo,
    root_cert: Option<Vec<u8>>,
    timeout: Duration,
}

impl Dialer {
    fn new(url: &str, setting: &'static str, settings: &RedisSettings) -> Result<Dialer> {
        let info = connection_info(url, setting)?;
        let root_cert = match &settings.tls_ca {
            None => None,
            Some(pem) => Some(std::fs::read(pem).map_err(|source| Error::Io {
                action: "reading the Redis CA certificate",
                path: pem.clone(),
                source,
            })?),
        };
        Ok(Dialer {
            info,
            root_cert,
            timeout: settings.timeout,
        })
    }

    /// A pool for the server this dialer's URL names.
    fn pool(&self) -> Result<Arc<Pool>> {
        self.pool_for(self.info.clone())
    }

    /// A pool for `host:port`, reached as this dialer's URL says.
    fn pool_at(&self, host: &str, port: u16) -> Result<Arc<Pool>> {
        let addr = match self.info.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        self.pool_for(self.info.clone().set_addr(addr))
    }

    fn pool_for(&self, info: ConnectionInfo) -> Result<Arc<Pool>> {
        let fail = |e| Error::InvalidConfig {
            setting: "redis_url",
            problem: format!("cannot make a client for the server: {e}"),
        };
        let client = match &self.root_cert {
            None => Client::open(info).map_err(fail)?,
            Some(root_cert) => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert.clone()),
                },
            )
            .map_err(fail)?,
        };
        Ok(Arc::new(Pool::new(client, self.timeout)))
    }
}

/// A primary and the slots it serves (every slot, off a cluster).
#[derive(Clone)]
pub(crate) struct Primary {
    pub pool: Arc<Pool>,
    /// Inclusive slot ranges.
    pub slots: Vec<(u16, u16)>,
}

impl Primary {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

enum Topology {
    Server(Arc<Pool>),
    Sentinel(sentinel::Sentinel),
    Cluster(cluster::Cluster),
}

/// The servers of a store and the way to each bucket's primary.
pub(crate) struct Nodes {
    topology: Topology,
    timeout: Duration,
    /// When the topology was last asked.
    asked: Mutex<Option<Instant>>,
    /// Bumped whenever a refresh finds another primary for some slot.
    generation: AtomicU64,
}

impl Nodes {
    /// Connects to `target` and learns which primaries serve which slots.
    pub fn open(target: &RedisTarget, settings: &RedisSettings) -> Result<Nodes> {
        let topology = match target {
            RedisTarget::Server(url) => {
                Topology::Server(Dialer::new(url, "redis_url", settings)?.pool()?)
            }
            RedisTarget::Cluster(seeds) => {
                let dialers = seeds
                    .iter()
                    .map(|url| Dialer::new(url, "redis_cluster", settings))
                    .collect::<Result<Vec<_>>>()?;
                Topology::Cluster(cluster::Cluster::discover(dialers)?)
            }
            RedisTarget::Sentinel { sentinels, master } => {
                let dialers = sentinels
                    .iter()
                    .map(|url| Dialer::new(url, "redis_sentinel", settings))
                    .collect::<Result<Vec<_>>>()?;
                Topology::Sentinel(sentinel::Sentinel::discover(dialers, master.clone())?)
            }
        };
        Ok(Nodes {
            topology,
            timeout: settings.timeout,
            asked: Mutex::new(None),
            generation: AtomicU64::new(0),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster(_))
    }

    /// Whether the primaries change without their clients being told (a
    /// Sentinel failover demotes a primary that may keep its clients): the
    /// topology must then be asked for now and then. A cluster's clients
    /// hear of it (`MOVED`, a dropped subscription, a connection that
    /// fails).
    pub fn changes_silently(&self) -> bool {
        matches!(self.topology, Topology::Sentinel(_))
    }

    /// How many times the topology has changed since open.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every primary, with the slots it serves.
    pub fn primaries(&self) -> Vec<Primary> {
        match &self.topology {
            Topology::Server(pool) => vec![Primary {
                pool: pool.clone(),
                slots: vec![(0, crate::engine::redis::keys::SLOTS - 1)],
            }],
            Topology::Sentinel(s) => vec![Primary {
                pool: s.primary(),
                slots: vec![(0, crate::engine::redis::keys::SLOTS - 1)],
            }],
            Topology::Cluster(c) => c.primaries(),
        }
    }

    /// The primary serving `slot`.
    pub fn primary_for(&self, slot: u16) -> Result<Arc<Pool>> {
        match &self.topology {
            Topology::Server(pool) => Ok(pool.clone()),
            Topology::Sentinel(s) => Ok(s.primary()),
            Topology::Cluster(c) => c.primary_for(slot).ok_or_else(|| Error::Unavailable {
                source: StorageError::new(
                    "routing a command",
                    format!("no primary of the cluster serves slot {slot}"),
                ),
            }),
        }
    }

    /// Learns the topology again (at most every [`REFRESH_EVERY`], and one
    /// caller at a time): after a call met a server that is down, read-only
    /// or not the slot's owner. Returns whether a primary changed.
    pub fn refresh(&self) -> bool {
        {
            let mut asked = self
                .asked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if asked.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
                return false;
            }
            *asked = Some(Instant::now());
        }
        let changed = match &self.topology {
            Topology::Server(_) => false,
            Topology::Sentinel(s) => s.refresh(),
            Topology::Cluster(c) => c.refresh(),
        };
        if changed {
            for p in self.primaries() {
                p.pool.forget_replicas();
            }
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    /// Runs `f` on a connection to the primary serving `slot`, retrying
    /// while the call meets a server that is down or read-only, or was sent
    /// to the wrong node, until `Config::redis_timeout` from now. Every `f`
    /// given here must be safe to run twice: a read, a write that sets what
    /// it sets, or a script call carrying its done marker.
    pub fn run<T>(
        &self,
        slot: u16,
        context: &'static str,
        mut f: impl FnMut(&Pool, &mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + self.timeout;
        let mut retries = 0;
        let mut ask: Option<Arc<Pool>> = None;
        loop {
            let outcome = match ask.take() {
                Some(pool) => pool.with(|con| {
                    redis::cmd("ASKING").query::<()>(con)?;
                    f(&pool, con)
                }),
                None => match self.primary_for(slot) {
                    Ok(pool) => pool.with(|con| f(&pool, con)),
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => {
                        self.refresh();
                        retries += 1;
                        std::thread::sleep(RETRY.pause(retries));
                        continue;
                    }
                },
            };
            let e = match outcome {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let late = Instant::now() >= deadline;
            match trouble(&e) {
                Trouble::Moved(_) if !late => {
                    self.refresh_now();
                }
                Trouble::Ask(addr) if !late => ask = self.pool_at(&addr),
                Trouble::Down if !late => {
                    self.refresh();
                    retries += 1;
                    std::thread::sleep(
                        RETRY
                            .pause(retries)
                            .min(deadline.saturating_duration_since(Instant::now())),
                    );
                }
                _ => return Err(failed(context)(e)),
            }
        }
    }

    /// Runs `per` commands for each of `buckets` (each given with its slot),
    /// pipelined: one round trip per primary, retried as [`Nodes::run`]
    /// retries. Returns each bucket's replies, in the order asked.
    pub fn across(
        &self,
        buckets: &[(u32, u16)],
        per: usize,
        context: &'static str,
        add: impl Fn(&mut redis::Pipeline, u32),
    ) -> Result<Vec<(u32, Vec<redis::Value>)>> {
        let mut out: Vec<Option<Vec<redis::Value>>> = vec![None; buckets.len()];
        let mut left: Vec<usize> = (0..buckets.len()).collect();
        let deadline = Instant::now() + self.timeout;
        let mut retries = 0;
        while !left.is_empty() {
            // Group what is left by the primary that serves it now.
            let primaries = self.primaries();
            let mut groups: Vec<(Arc<Pool>, Vec<usize>)> = Vec::new();
            let mut unserved = Vec::new();
            for &i in &left {
                match primaries.iter().find(|p| p.serves(buckets[i].1)) {
                    Some(p) => match groups
                        .iter_mut()
                        .find(|(pool, _)| Arc::ptr_eq(pool, &p.pool))
                    {
                        Some((_, g)) => g.push(i),
                        None => groups.push((p.pool.clone(), vec![i])),
                    },
                    None => unserved.push(i),
                }
            }
            let mut failure = None;
            left = unserved;
            for (pool, group) in groups {
                let sent = pool.with(|con| {
                    let mut pipe = redis::pipe();
                    for &i in &group {
                        add(&mut pipe, buckets[i].0);
                    }
                    pipe.query::<Vec<redis::Value>>(con)
                });
                match sent {
                    Ok(values) if values.len() == group.len() * per => {
                        let mut values = values.into_iter();
                        for &i in &group {
                            out[i] = Some(values.by_ref().take(per).collect());
                        }
                    }
                    Ok(values) => {
                        return Err(Error::Storage(StorageError::new(
                            context,
                            format!("{} replies to {} commands", values.len(), group.len() * per),
                        )))
                    }
                    Err(e) => {
                        left.extend(group);
                        failure = Some(e);
                    }
                }
            }
            if left.is_empty() {
                break;
            }
            let retry = failure
                .as_ref()
                .is_none_or(|e| trouble(e) != Trouble::Failed);
            if !retry || Instant::now() >= deadline {
                return Err(match failure {
                    Some(e) => failed(context)(e),
                    None => Error::Unavailable {
                        source: StorageError::new(context, "no primary serves some buckets"),
                    },
                });
            }
            self.refresh_now();
            retries += 1;
            std::thread::sleep(
                RETRY
                    .pause(retries)
                    .min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        Ok(buckets
            .iter()
            .zip(out)
            .map(|((b, _), v)| (*b, v.unwrap_or_default()))
            .collect())
    }

    /// Learns the topology again now, whenever it was last asked: a `MOVED`
    /// reply proves it stale.
    fn refresh_now(&self) {
        *self
            .asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.refresh();
    }

    /// The pool of a cluster node named by a redirection.
    fn pool_at(&self, addr: &str) -> Option<Arc<Pool>> {
        match &self.topology {
            Topology::Cluster(c) => c.pool_named(addr),
            _ => None,
        }
    }
}

/// A pool for each address, kept while the topology names it.
#[derive(Default)]
struct Pools(RwLock<Vec<Arc<Pool>>>);

impl Pools {
    /// The pool for `host:port`, made with `dialer` the first time.
    fn get(&self, dialer: &Dialer, host: &str, port: u16) -> Result<Arc<Pool>> {
        let addr = format!("{host}:{port}");
        if let Some(p) = self.find(&addr) {
            return Ok(p);
        }
        let pool = dialer.pool_at(host, port)?;
        let mut pools = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = pools.iter().find(|p| p.addr() == addr) {
            return Ok(p.clone());
        }
        pools.push(pool.clone());
        Ok(pool)
    }

    fn find(&self, addr: &str) -> Option<Arc<Pool>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|p| p.addr() == addr)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::ErrorKind;

    fn server_error(code: &str, detail: &str) -> RedisError {
        // What redis-rs makes of a server's error reply.
        let reply = format!("-{code} {detail}\r\n");
        let value = redis::parse_redis_value(reply.as_bytes()).expect("an error reply");
        match value.extract_error() {
            Err(e) => e,
            Ok(v) => panic!("{code} parsed as {v:?}"),
        }
    }

    #[test]
    fn a_server_that_cannot_take_writes_now_is_down() {
        for code in [
            "READONLY",
            "UNBLOCKED",
            "LOADING",
            "MASTERDOWN",
            "CLUSTERDOWN",
            "TRYAGAIN",
        ] {
            let e = server_error(code, "not now");
            assert_eq!(trouble(&e), Trouble::Down, "{code}");
            assert!(
                matches!(failed("writing")(e), Error::Unavailable { .. }),
                "{code}"
            );
        }
        let e = server_error("MOVED", "3999 127.0.0.1:6381");
        assert_eq!(trouble(&e), Trouble::Moved("127.0.0.1:6381".into()));
        let e = server_error("ASK", "3999 127.0.0.1:6381");
        assert_eq!(trouble(&e), Trouble::Ask("127.0.0.1:6381".into()));
        let e = server_error("WRONGPASS", "invalid username-password pair");
        assert!(matches!(failed("x")(e), Error::InvalidConfig { .. }));
        let e = server_error("ERR", "wrong number of arguments");
        assert!(matches!(failed("x")(e), Error::Storage(_)));
        let e = RedisError::from((ErrorKind::Io, "connection reset"));
        assert_eq!(trouble(&e), Trouble::Down);
    }

    #[test]
    fn every_attached_replica_counts_whatever_its_state() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:3\r\n\
                    slave0:ip=127.0.0.1,port=7004,state=online,offset=10,lag=0\r\n\
                    slave1:ip=127.0.0.1,port=7005,state=wait_bgsave,offset=0,lag=0\r\n\
                    slave2:ip=127.0.0.1,port=7006,state=send_bulk,offset=0,lag=0\r\n\
                    slave_read_repl_offset:10\r\nmaster_replid:abc\r\n";
        assert_eq!(replicas_attached(info), 3);
        // A replica the server could not describe still counts.
        let info = "role:master\r\nconnected_slaves:1\r\nmaster_failover_state:no-failover\r\n";
        assert_eq!(replicas_attached(info), 1);
        assert_eq!(
            replicas_attached("role:master\r\nconnected_slaves:0\r\n"),
            0
        );
        // A replica's own reply: its `slave_*` fields name no replica.
        let info = "role:slave\r\nmaster_host:127.0.0.1\r\nslave_repl_offset:10\r\n\
                    slave_priority:100\r\nslave_read_only:1\r\nconnected_slaves:0\r\n";
        assert_eq!(replicas_attached(info), 0);
    }
}
