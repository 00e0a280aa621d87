//! Store configuration: a plain value with documented defaults, checked when
//! the store opens; where the store is (`Location`); Redis URLs in
//! `redis_url`.

#[cfg(feature = "redis")]
mod redis_url;

#[cfg(feature = "redis")]
pub(crate) use self::redis_url::connection_info;
#[cfg(feature = "redis")]
pub use self::redis_url::{redact_url, url_passwords};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};

/// Smallest accepted key length: 22 URL-safe characters carry 132 bits.
pub const MIN_KEY_LENGTH: usize = 22;
/// Longest accepted key length.
pub const MAX_KEY_LENGTH: usize = 128;

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// sled flushes in the background every interval. A crash loses at most
    /// the writes acknowledged during the last interval (plus the time one
    /// flush takes), and never leaves the store inconsistent. On Redis: the
    /// server's own fsync policy (the interval is not used).
    Periodic(Duration),
    /// A call returns only after its write is on disk (sled flush plus an
    /// fsync of the database file; concurrent writers share one flush). On
    /// Redis: `WAITAOF` where the server has it, else a server running
    /// `appendfsync always`; `open` refuses any other server. Whenever the
    /// primary has a replica attached (in sync or still in its initial
    /// sync), the call also waits until one replica has the write; a wait
    /// that times out fails with [`Error::Unavailable`] (the change may have
    /// committed), never acknowledged on the primary alone.
    Immediate,
}

impl Default for Durability {
    /// `Periodic(500 ms)`.
    fn default() -> Self {
        Durability::Periodic(Duration::from_millis(500))
    }
}

/// Parses a MAGE-style time code such as `"10m"`, `"30s"`, `"1h 30m"` or `"2d"`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(sessiondb::parse_time_code("10m").unwrap(), Duration::from_secs(600));
/// assert!(sessiondb::parse_time_code("ten minutes").is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] (setting `ttl`) when the code does not parse or is zero.
pub fn parse_time_code(code: &str) -> Result<Duration> {
    let d = humantime::parse_duration(code.trim()).map_err(|e| Error::InvalidConfig {
        setting: "ttl",
        problem: format!("{code:?} is not a time code like \"10m\", \"30s\" or \"1h\": {e}"),
    })?;
    if d.is_zero() {
        return Err(Error::InvalidConfig {
            setting: "ttl",
            problem: "a time code of zero would expire every session at once".into(),
        });
    }
    Ok(d)
}

/// The key prefix of a store on Redis unless [`Config::redis_prefix`] says
/// otherwise.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_REDIS_PREFIX: &str = "sessiondb";

/// Where the sessions live: the storage engine and its address. Made by
/// the [`Config`] constructors ([`Config::new`], and with the `redis`
/// feature `Config::redis`, `Config::redis_cluster` and
/// `Config::redis_sentinel`), or directly for [`Config::at`].
///
/// Its `Display` is what messages show: the directory, or the Redis servers
/// without their passwords.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// The embedded sled engine in this directory.
    Directory(PathBuf),
    /// The shared Redis / Valkey engine on these servers.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    Redis(RedisTarget),
}

impl Location {
    /// The engine's name, for logs and reports: `"sled"` or `"redis"`.
    pub fn engine(&self) -> &'static str {
        match self {
            Location::Directory(_) => "sled",
            #[cfg(feature = "redis")]
            Location::Redis(_) => "redis",
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Directory(path) => write!(f, "{}", path.display()),
            #[cfg(feature = "redis")]
            Location::Redis(target) => fmt::Display::fmt(target, f),
        }
    }
}

/// Which Redis / Valkey servers hold a shared store. Its `Debug` and
/// `Display` show the URLs without their passwords.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a managed endpoint that fails over behind one name).
    Server(String),
    /// A Redis Cluster, found through any of these seed URLs.
    Cluster(Vec<String>),
    /// The primary that the sentinels at these URLs know as `master`.
    Sentinel {
        /// The sentinels' URLs.
        sentinels: Vec<String>,
        /// The name under which the sentinels manage the primary.
        master: String,
    },
}

#[cfg(feature = "redis")]
impl RedisTarget {
    /// The URLs it names: the server's, the cluster's seeds or the
    /// sentinels'.
    pub fn urls(&self) -> &[String] {
        match self {
            RedisTarget::Server(url) => std::slice::from_ref(url),
            RedisTarget::Cluster(urls) => urls,
            RedisTarget::Sentinel { sentinels, .. } => sentinels,
        }
    }
}

#[cfg(feature = "redis")]
impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls().iter().map(|u| redact_url(u)).collect();
        match self {
            RedisTarget::Server(_) => f.debug_tuple("Server").field(&urls[0]).finish(),
            RedisTarget::Cluster(_) => f.debug_tuple("Cluster").field(&urls).finish(),
            RedisTarget::Sentinel { master, .. } => f
                .debug_struct("Sentinel")
                .field("sentinels", &urls)
                .field("master", master)
                .finish(),
        }
    }
}

/// What it is, without passwords: `redis://h:6379`, `the Redis Cluster at
/// redis://a, redis://b`, `the primary "m" of the sentinels at ...`.
#[cfg(feature = "redis")]
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls = self
            .urls()
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            RedisTarget::Server(_) => f.write_str(&urls),
            RedisTarget::Cluster(_) => write!(f, "the Redis Cluster at {urls}"),
            RedisTarget::Sentinel { master, .. } => {
                write!(f, "the primary {master:?} of the sentinels at {urls}")
            }
        }
    }
}

/// The Redis engine's settings (see the `redis_*` setters).
#[cfg(feature = "redis")]
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub prefix: String,
    pub tls_ca: Option<PathBuf>,
    pub buckets: Option<u32>,
    pub timeout: Duration,
    pub event_retention: u64,
    pub min_replicas: u32,
}

/// How the store is set up. Build it with [`Config::new`] (the embedded
/// engine in a directory), or with the `redis` feature `Config::redis`,
/// `Config::redis_cluster` or `Config::redis_sentinel` (a store shared
/// through Redis or Valkey), and the chained setters; values are checked by
/// [`SessionStore::open`](crate::SessionStore::open).
///
/// ```
/// use std::time::Duration;
/// use sessiondb::{Config, Durability};
/// let config = Config::new("./sessions")
///     .ttl(Duration::from_secs(30 * 60))
///     .max_sessions_per_actor(3)
///     .durability(Durability::Immediate);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Config {
    pub(crate) location: Location,
    #[cfg(feature = "redis")]
    pub(crate) redis: RedisSettings,
    pub(crate) ttl: Duration,
    pub(crate) ttl_code: Option<String>,
    pub(crate) key_length: usize,
    pub(crate) touch_interval: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) max_sessions_per_actor: usize,
    pub(crate) app_version: Option<String>,
    pub(crate) node_id: Option<String>,
    pub(crate) reap_interval: Duration,
    pub(crate) reap_batch: Option<usize>,
    pub(crate) reaper_thread: bool,
    pub(crate) check_in_background: bool,
    pub(crate) durability: Durability,
    pub(crate) cache_capacity: u64,
    pub(crate) max_data_bytes: usize,
    pub(crate) event_capacity: usize,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Config {
    /// A configuration for a store in directory `path` (created if missing),
    /// with every other setting at its default.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Config::at(Location::Directory(path.as_ref().to_path_buf()))
    }

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    /// A configuration for a store shared through the Redis or Valkey server
    /// at `url`: `redis://[user:password@]host[:port][/db]`, `rediss://` for
    /// TLS, or `redis+unix:///path/to/socket`. Several game-server nodes open
    /// the same URL to share one store. Every other setting at its default.
    ///
    /// ```
    /// let config = sessiondb::Config::redis("redis://127.0.0.1:6379/0");
    /// assert_eq!(config.redis_url(), Some("redis://127.0.0.1:6379/0"));
    /// assert!(config.path().is_none());
    /// ```
    pub fn redis(url: impl Into<String>) -> Self {
        Config::at(Location::Redis(RedisTarget::Server(url.into())))
    }

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    /// A configuration for a store shared through a Redis Cluster (or
    /// Valkey Cluster), found through any of `seed_urls` (`redis://` or
    /// `rediss://`, each with the user and password the nodes take; one is
    /// enough, more help while a node is down). The store's keys are spread
    /// over the cluster's primaries in buckets (256 unless
    /// [`Config::redis_buckets`] says otherwise), and each operation runs on
    /// the primary of one bucket. Every other setting at its default.
    ///
    /// ```
    /// let config = sessiondb::Config::redis_cluster([
    ///     "redis://10.0.0.1:6379",
    ///     "redis://10.0.0.2:6379",
    /// ]);
    /// assert_eq!(config.redis_urls().len(), 2);
    /// assert!(config.redis_url().is_none());
    /// ```
    pub fn redis_cluster<I>(seed_urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let urls = seed_urls.into_iter().map(Into::into).collect();
        Config::at(Location::Redis(RedisTarget::Cluster(urls)))
    }

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    /// A configuration for a store on the primary that Redis Sentinel
    /// manages as `master_name`, asked of any of `sentinel_urls`
    /// (`redis://host:26379`, with the user and password of the sentinels).
    /// The primary is reached with the user, password, database index and
    /// TLS of the sentinel URL that named it. When the primary fails over,
    /// the store asks the sentinels again and goes on with the new one.
    /// Every other setting at its default.
    ///
    /// ```
    /// let config = sessiondb::Config::redis_sentinel(
    ///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"],
    ///     "sessions",
    /// );
    /// assert_eq!(config.redis_urls().len(), 2);
    /// ```
    pub fn redis_sentinel<I>(sentinel_urls: I, master_name: impl Into<String>) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Config::at(Location::Redis(RedisTarget::Sentinel {
            sentinels: sentinel_urls.into_iter().map(Into::into).collect(),
            master: master_name.into(),
        }))
    }

    /// A configuration for a store at `location`, every other setting at
    /// its default: what [`Config::new`] and the Redis constructors give,
    /// for a location chosen at run time (from flags or a file, say).
    ///
    /// ```
    /// use sessiondb::{Config, Location};
    /// let config = Config::at(Location::Directory("./sessions".into()));
    /// assert_eq!(config.path(), Some(std::path::Path::new("./sessions")));
    /// ```
    pub fn at(location: Location) -> Self {
        Config {
            location,
            #[cfg(feature = "redis")]
            redis: RedisSettings {
                prefix: DEFAULT_REDIS_PREFIX.into(),
                tls_ca: None,
                buckets: None,
                timeout: Duration::from_secs(2),
                event_retention: 100_000,
                min_replicas: 0,
            },
            ttl: Duration::from_secs(600),
            ttl_code: None,
            key_length: 32,
            touch_interval: None,
            max_lifetime: None,
            max_sessions_per_actor: 1,
            app_version: None,
            node_id: None,
            reap_interval: Duration::from_secs(1),
            reap_batch: None,
            reaper_thread: true,
            check_in_background: true,
            durability: Durability::default(),
            cache_capacity: 64 * 1024 * 1024,
            max_data_bytes: 64 * 1024,
            event_capacity: 1_024,
            clock: Arc::new(SystemClock),
        }
    }

    /// Where the store is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The store directory, for the embedded engine.
    pub fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::Directory(path) => Some(path),
            #[cfg(feature = "redis")]
            Location::Redis(_) => None,
        }
    }

    /// The Redis / Valkey URL of a store on one server ([`Config::redis`]).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_url(&self) -> Option<&str> {
        match &self.location {
            Location::Redis(RedisTarget::Server(url)) => Some(url),
            _ => None,
        }
    }

    /// Every Redis URL the configuration names: the one server's, the
    /// cluster's seeds, or the sentinels'; empty for a directory.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_urls(&self) -> &[String] {
        match &self.location {
            Location::Redis(target) => target.urls(),
            Location::Directory(_) => &[],
        }
    }

    /// Where the store is, for messages: the directory, or the Redis
    /// servers without their passwords and the key prefix
    /// (`redis://h:6379/0 (prefix "sessiondb")`).
    ///
    /// ```
    /// let config = sessiondb::Config::new("./sessions");
    /// assert_eq!(config.describe(), "./sessions");
    /// ```
    pub fn describe(&self) -> String {
        match &self.location {
            Location::Directory(path) => path.display().to_string(),
            #[cfg(feature = "redis")]
            Location::Redis(target) => format!("{target} (prefix {:?})", self.redis.prefix),
        }
    }

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    /// Redis engine: the prefix of every key, so that several games (or
    /// environments) can share one server. Default `sessiondb`; 1..=64
    /// bytes, without `{`, `}` or whitespace.
    pub fn redis_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.prefix = prefix.into();
        self
    }

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    /// Redis engine, `rediss://` URLs: trust the server certificates signed
    /// by the CA in this PEM file (a private CA), instead of the operating
    /// system's trusted roots. Default: the system's roots.
    pub fn redis_tls_ca(mut self, pem: impl AsRef<Path>) -> Self {
        self.redis.tls_ca = Some(pem.as_ref().to_path_buf());
        self
    }

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    /// Redis engine: how many buckets (hash tags) the keys are spread over.
    /// Used when the store is created, and recorded in its meta; a later
    /// open with another explicit value is refused. Default 16 on one
    /// server or behind Sentinel, 256 on a cluster; 1..=16384.
    pub fn redis_buckets(mut self, buckets: u32) -> Self {
        self.redis.buckets = Some(buckets);
        self
    }

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    /// Redis engine: how long a connection attempt or a command may take
    /// before the call fails with [`Error::Unavailable`]. Default 2 s.
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis.timeout = timeout;
        self
    }

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    /// Redis engine: how many events each bucket's stream keeps. A node
    /// whose event reader falls further behind than this gets
    /// [`Event::Lagged`](crate::Event::Lagged) with the exact count of what
    /// it missed. Default 100,000; at least 1.
    pub fn event_retention(mut self, events: u64) -> Self {
        self.redis.event_retention = events;
        self
    }

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    /// Redis engine: refuse writes while a primary has fewer than `replicas`
    /// replicas attached (online, or still in their initial sync), in
    /// either durability: such a write fails with [`Error::Unavailable`]
    /// saying how many are attached and how many are required, and is not
    /// written; reads go on. Default 0 (writes go on without a replica).
    ///
    /// The count comes from the primary's `INFO replication`: asked again
    /// before each write while too few are attached, and trusted for up to
    /// 5 s while enough are (a replica that left within that time is noticed
    /// by a write with `Durability::Immediate` as a wait that times out).
    /// With [`Durability::Immediate`] a write waits for one replica's
    /// acknowledgement whenever any is attached, whatever this says; 1 here
    /// adds that a write is never taken with no replica at all. On a
    /// cluster it holds for each bucket's primary. `open` refuses a value
    /// above 0 for a store in a directory, and logs a warning for each
    /// primary with fewer replicas attached.
    pub fn min_replicas(mut self, replicas: u32) -> Self {
        self.redis.min_replicas = replicas;
        self
    }

    /// Idle time after which a session expires; every resolve slides it
    /// forward. Default 10 minutes. Under 60 s a warning is logged, as MAGE did.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.ttl_code = None;
        self
    }

    /// The TTL as a time code such as `"10m"` or `"1h"`; checked at open.
    pub fn ttl_code(mut self, code: impl Into<String>) -> Self {
        self.ttl_code = Some(code.into());
        self
    }

    /// Length of the secret part of session keys, in URL-safe characters
    /// (6 bits each). Default 32 (192 bits); at least 22 (132 bits), at most 128.
    pub fn key_length(mut self, chars: usize) -> Self {
        self.key_length = chars;
        self
    }

    /// How far a resolve must move the expiry before it is written; smaller
    /// moves are skipped so that hot sessions do not cost a write per read.
    /// Default one tenth of the TTL. Must be below the TTL.
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.touch_interval = Some(interval);
        self
    }

    /// An absolute cap on a session's life from its creation, whatever its
    /// use. Default none.
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = Some(lifetime);
        self
    }

    /// How many sessions one actor may hold. Default 1 (MAGE's behaviour: a
    /// new register replaces the old session). Above the cap the oldest
    /// session is replaced.
    pub fn max_sessions_per_actor(mut self, max: usize) -> Self {
        self.max_sessions_per_actor = max;
        self
    }

    /// The app's version (semver). When set, sessions record it and a key
    /// whose session was made by a version outside the current
    /// `major.minor.x` is rejected with `badVersion`. Default none (no check).
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// This node's id (MAGE's cluster id), recorded in the sessions it
    /// creates and reported by `actor_addresses`. Default none.
    pub fn node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// Longest time the reaper sleeps between passes. Default 1 s.
    pub fn reap_interval(mut self, interval: Duration) -> Self {
        self.reap_interval = interval;
        self
    }

    /// Most sessions the reaper ends in one change; foreground writes are
    /// interleaved between batches. Default 64 on the embedded engine (a
    /// batch's writes hold its actors' turns), 512 on Redis (one script
    /// call per batch, which the server runs alone: about 2 ms at the
    /// default).
    pub fn reap_batch(mut self, batch: usize) -> Self {
        self.reap_batch = Some(batch);
        self
    }

    /// The reap batch in use: the one set, else the engine's default.
    pub(crate) fn reap_batch_or_default(&self) -> usize {
        self.reap_batch.unwrap_or(match self.location {
            Location::Directory(_) => 64,
            #[cfg(feature = "redis")]
            Location::Redis(_) => 512,
        })
    }

    /// Whether `open` starts the background reaper thread. Default true.
    /// With it off, call `SessionStore::reap_expired` yourself.
    pub fn reaper_thread(mut self, enabled: bool) -> Self {
        self.reaper_thread = enabled;
        self
    }

    /// Whether the check after an unclean shutdown runs in the background.
    /// Default true: `open` returns as soon as the engine has recovered its
    /// own log, and the store serves while a thread checks the indexes
    /// against the records; writes wait only while what it found is checked
    /// again and repaired (`Stats::checking`, `SessionStore::wait_for_recovery`).
    /// With false, `open` returns after the check.
    pub fn check_in_background(mut self, enabled: bool) -> Self {
        self.check_in_background = enabled;
        self
    }

    /// When writes count as done. Default `Durability::Periodic(500 ms)`.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// sled's page cache size in bytes. Default 64 MiB (sled's own default
    /// would be 1 GiB).
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// Most bytes a session's data may take, names and JSON values counted.
    /// Default 64 KiB; at most 16 MiB.
    pub fn max_data_bytes(mut self, bytes: usize) -> Self {
        self.max_data_bytes = bytes;
        self
    }

    /// How many events a subscriber's channel holds before further events
    /// are counted as missed (see `Event::Lagged`). Default 1,024.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// The clock the store reads; tests pass a [`ManualClock`](crate::ManualClock).
    /// Default the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks every setting and returns the resolved values.
    pub(crate) fn validate(&self) -> Result<Settings> {
        let bad =
            |setting: &'static str, problem: String| Error::InvalidConfig { setting, problem };
        let ttl = match &self.ttl_code {
            Some(code) => parse_time_code(code)?,
            None => self.ttl,
        };
        if ttl.as_millis() == 0 {
            return Err(bad("ttl", "must be at least 1 ms".into()));
        }
        if ttl.as_millis() > u128::from(u32::MAX) * 1000 {
            return Err(bad("ttl", "must be under 136 years".into()));
        }
        if ttl < Duration::from_secs(60) {
            log::warn!(
                "session TTL of {ttl:?} is under 60 s; sessions may expire between requests"
            );
        }
        if !(MIN_KEY_LENGTH..=MAX_KEY_LENGTH).contains(&self.key_length) {
            return Err(bad(
                "key_length",
                format!(
                    "{} characters; it must be {MIN_KEY_LENGTH}..={MAX_KEY_LENGTH} (22 characters carry 128+ bits)",
                    self.key_length
                ),
            ));
        }
        let touch = self.touch_interval.unwrap_or(ttl / 10);
        if touch >= ttl {
            return Err(bad(
                "touch_interval",
                format!("{touch:?} must be below the TTL {ttl:?}"),
            ));
        }
        if let Some(l) = self.max_lifetime {
            if l.is_zero() {
                return Err(bad("max_lifetime", "must be above zero".into()));
            }
        }
        if self.max_sessions_per_actor == 0 || self.max_sessions_per_actor > 1_000 {
            return Err(bad(
                "max_sessions_per_actor",
                format!("{} must be 1..=1000", self.max_sessions_per_actor),
            ));
        }
        let app_version = match &self.app_version {
            Some(v) => Some(semver::Version::parse(v).map_err(|e| {
                bad(
                    "app_version",
                    format!("{v:?} is not a semantic version like 1.4.2: {e}"),
                )
            })?),
            None => None,
        };
        if let Some(node) = &self.node_id {
            if node.is_empty() || node.len() > 255 {
                return Err(bad("node_id", "must be 1..=255 bytes".into()));
            }
        }
        if self.reap_interval.is_zero() {
            return Err(bad("reap_interval", "must be above zero".into()));
        }
        if let Some(batch) = self.reap_batch.filter(|b| *b == 0 || *b > 100_000) {
            return Err(bad("reap_batch", format!("{batch} must be 1..=100000")));
        }
        if let Durability::Periodic(i) = self.durability {
            if i.is_zero() || i > Duration::from_secs(3600) {
                return Err(bad(
                    "durability",
                    "the periodic flush interval must be 1 ms..=1 h".into(),
                ));
            }
        }
        if self.cache_capacity < 1024 * 1024 {
            return Err(bad("cache_capacity", "must be at least 1 MiB".into()));
        }
        if self.max_data_bytes == 0 || self.max_data_bytes > 16 * 1024 * 1024 {
            return Err(bad(
                "max_data_bytes",
                format!("{} must be 1..=16 MiB", self.max_data_bytes),
            ));
        }
        if self.event_capacity == 0 {
            return Err(bad("event_capacity", "must be at least 1".into()));
        }
        #[cfg(feature = "redis")]
        self.validate_redis()?;
        Ok(Settings {
            ttl_ms: millis(ttl),
            touch_ms: millis(touch),
            max_lifetime_ms: self.max_lifetime.map(millis),
            max_per_actor: self.max_sessions_per_actor,
            app_version,
            max_data_bytes: self.max_data_bytes,
        })
    }

    /// Checks the Redis engine's settings.
    #[cfg(feature = "redis")]
    fn validate_redis(&self) -> Result<()> {
        let bad =
            |setting: &'static str, problem: String| Error::InvalidConfig { setting, problem };
        let prefix = &self.redis.prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "redis_prefix",
                format!("{prefix:?} must be 1..=64 bytes without braces or spaces"),
            ));
        }
        if let Location::Redis(target) = &self.location {
            let setting = match target {
                RedisTarget::Server(_) => "redis_url",
                RedisTarget::Cluster(_) => "redis_cluster",
                RedisTarget::Sentinel { .. } => "redis_sentinel",
            };
            if target.urls().is_empty() {
                return Err(bad(setting, "no URL given".into()));
            }
            if let RedisTarget::Sentinel { master, .. } = target {
                if master.trim().is_empty() {
                    return Err(bad(
                        "redis_sentinel_master",
                        "the name of the primary the sentinels manage is empty".into(),
                    ));
                }
            }
        }
        if let Some(b) = self.redis.buckets {
            if b == 0 || b > 16_384 {
                return Err(bad("redis_buckets", format!("{b} must be 1..=16384")));
            }
        }
        if self.redis.timeout.is_zero() {
            return Err(bad("redis_timeout", "must be above zero".into()));
        }
        if self.redis.event_retention == 0 {
            return Err(bad("event_retention", "must be at least 1".into()));
        }
        if self.redis.min_replicas > 0 && matches!(self.location, Location::Directory(_)) {
            return Err(bad(
                "min_replicas",
                format!(
                    "{} replicas required, but a store in a directory has no replicas: \
                     min_replicas counts the replicas of a Redis / Valkey primary",
                    self.redis.min_replicas
                ),
            ));
        }
        Ok(())
    }
}

/// The checked, resolved settings the store works with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub ttl_ms: u64,
    pub touch_ms: u64,
    pub max_lifetime_ms: Option<u64>,
    pub max_per_actor: usize,
    pub app_version: Option<semver::Version>,
    pub max_data_bytes: usize,
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_chosen_at_run_time_is_what_the_constructors_give() {
        let config = Config::at(Location::Directory("/srv/sessions".into()));
        assert_eq!(config.location(), Config::new("/srv/sessions").location());
        assert_eq!(config.location().engine(), "sled");
        assert_eq!(config.describe(), "/srv/sessions");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_redis_location_never_shows_its_password() {
        let url = "redis://game:s3cret@10.0.0.1:6379/0";
        let config =
            Config::at(Location::Redis(RedisTarget::Server(url.into()))).redis_prefix("game1");
        assert_eq!(config.location(), Config::redis(url).location());
        assert_eq!(config.location().engine(), "redis");
        assert_eq!(
            config.describe(),
            "redis://game:***@10.0.0.1:6379/0 (prefix \"game1\")"
        );
        let cluster = Config::redis_cluster([url, "redis://:pw2@10.0.0.2:6379"]);
        let sentinel = Config::redis_sentinel([url], "sessions");
        for shown in [
            format!("{config:?}"),
            format!("{cluster:?}"),
            cluster.describe(),
            format!("{sentinel:?}"),
            sentinel.describe(),
        ] {
            assert!(
                !shown.contains("s3cret") && !shown.contains("pw2"),
                "{shown}"
            );
        }
        assert_eq!(
            sentinel.describe(),
            "the primary \"sessions\" of the sentinels at redis://game:***@10.0.0.1:6379/0 \
             (prefix \"sessiondb\")"
        );
    }
}
