//! Command-line arguments (clap derive). Every serve setting can also come
//! from the environment (`SESSIONDB_<NAME>`) and from a TOML config file;
//! `settings` merges them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// Exit codes, shown in the help text.
const AFTER_HELP: &str = "\
Exit codes: 0 success (for `check`: healthy), 1 `check` found problems, 2 error.

The store is a data directory (--data-dir, the embedded engine) or a shared
Redis/Valkey store (--redis-url, with --redis-prefix), never both. On a data
directory the offline tools (everything but `serve`) need the store to
themselves: stop the server first; on Redis they work alongside running
servers. Settings come from flags, then SESSIONDB_<NAME> environment
variables, then the `serve --config` file, then defaults.";

/// sessiondb: a persistent session store for game servers (MAGE's session
/// module), served over HTTP, with offline tools.
#[derive(Debug, Parser)]
#[command(name = "sessiondb", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Made once at start: boxing the serve flags would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Serve the HTTP API v1 until SIGINT or SIGTERM.
    ///
    /// Prints `listening on <address>` on stdout once ready; logs go to
    /// stderr. On SIGINT/SIGTERM, stops accepting connections, finishes the
    /// requests in flight and closes the store cleanly.
    Serve(ServeArgs),
    /// Print counts about a store: sessions (live and expired), actors,
    /// earliest expiry, quarantined records, size on disk.
    Stats(StatsArgs),
    /// List the sessions of a store (no keys: only digests of them are
    /// stored).
    List(ListArgs),
    /// Show one session of a store, found by its public id.
    Show(ShowArgs),
    /// End every session of an actor.
    Expire(ExpireArgs),
    /// Check a store's invariants and, with --repair, fix them.
    ///
    /// Exits 0 when the store is healthy (after repairing, with --repair),
    /// 1 when problems remain.
    Check(CheckArgs),
    /// Write every session of a store as JSON lines (a consistent snapshot
    /// of a data directory, with digests, so that keys keep working after
    /// an import).
    Export(ExportArgs),
    /// Read JSON lines written by `export` into a store (a stopped or new
    /// data directory, or Redis).
    ///
    /// Sessions keep their digests, ids, expiries, revisions and data; a
    /// stored session with the same digest is replaced.
    Import(ImportArgs),
    /// Rewrite a stopped store into a fresh directory, reclaiming the space
    /// of deleted sessions. The source is left untouched. Data directories
    /// only: Redis manages its own memory.
    Compact(CompactArgs),
}

/// When writes count as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// Flush in the background every 500 ms; a crash loses at most that.
    Periodic,
    /// Answer only once the write is on disk (writers share one fsync).
    Immediate,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below as snake_case keys
    /// (`data_dir`, `redis_url`, `redis_cluster`, `redis_sentinel`,
    /// `redis_sentinel_master`, `redis_prefix`, `redis_tls_ca`, `listen`, `ttl`,
    /// `durability`, `admin_token`, `log_level`, `app_version`, `node_id`,
    /// `max_sessions_per_actor`, `min_replicas`, `reaper`, `cors_origin` as
    /// a list, `header_timeout`, `max_connections`, `event_history`,
    /// `event_history_age`). Flags and environment variables override it.
    #[arg(long, env = "SESSIONDB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where the sessions are: a data directory (created if missing) or a
    /// Redis / Valkey URL; several `serve` processes on one URL and prefix
    /// share every session and hear every event.
    #[command(flatten)]
    pub store: StoreArgs,

    /// Address to listen on; port 0 picks a free port (the real address is
    /// printed) [default: 127.0.0.1:7420]
    #[arg(long, env = "SESSIONDB_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Idle time after which a session expires, as a time code such as
    /// `30s`, `10m`, `1h 30m` [default: 10m]
    #[arg(long, env = "SESSIONDB_TTL", value_name = "TIME")]
    pub ttl: Option<String>,

    /// When a write counts as done [default: periodic]
    #[arg(long, env = "SESSIONDB_DURABILITY", value_enum)]
    pub durability: Option<DurabilityArg>,

    /// Token that admin routes require as `Authorization: Bearer <token>`.
    /// Without one, admin routes (and /metrics) answer loopback clients only.
    #[arg(
        long,
        env = "SESSIONDB_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,

    /// Log filter for stderr: a level (`error`, `warn`, `info`, `debug`,
    /// `trace`) or tracing directives such as `sessiondb=debug,info`
    /// [default: info]
    #[arg(long, env = "SESSIONDB_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// The game's version (semver); keys of sessions made by another
    /// `major.minor` are rejected with `badVersion` [default: none, no check]
    #[arg(long, env = "SESSIONDB_APP_VERSION", value_name = "SEMVER")]
    pub app_version: Option<String>,

    /// This node's id (MAGE's cluster id), reported by
    /// /v1/actors/addresses [default: none]
    #[arg(long, env = "SESSIONDB_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// How many sessions one actor may hold; a register beyond it replaces
    /// the oldest [default: 1, as MAGE]
    #[arg(long, env = "SESSIONDB_MAX_SESSIONS_PER_ACTOR", value_name = "N")]
    pub max_sessions_per_actor: Option<usize>,

    /// Redis: refuse writes (503 with Retry-After) while the primary has
    /// fewer replicas attached, in sync or still syncing; reads go on. In
    /// either durability; not for a data directory [default: 0]
    #[arg(long, env = "SESSIONDB_MIN_REPLICAS", value_name = "N")]
    pub min_replicas: Option<u32>,

    /// A browser origin allowed to call the session routes (CORS), as
    /// `scheme://host[:port]`, e.g. `https://game.example.com`; repeat the
    /// flag (or separate with commas) for several. Admin routes never answer
    /// web pages [default: none, no CORS headers]
    #[arg(
        long = "cors-origin",
        env = "SESSIONDB_CORS_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    /// How long a connection may take to send a request's head (then its
    /// body), as a time code, counted from when the server is ready for
    /// one: slow clients and idle keep-alive connections are closed after
    /// it; event streams in progress are not [default: 10s]
    #[arg(long, env = "SESSIONDB_HEADER_TIMEOUT", value_name = "TIME")]
    pub header_timeout: Option<String>,

    /// Most connections open at once, event streams included; more are
    /// answered 503 tooManyConnections and closed. Keep it below the
    /// open-file limit (`ulimit -n`) [default: 10000]
    #[arg(long, env = "SESSIONDB_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// How many events the server keeps for event streams that reconnect
    /// with `Last-Event-ID` (their history); a stream that resumes from
    /// further back hears `session.lagged` first [default: 10000]
    #[arg(long, env = "SESSIONDB_EVENT_HISTORY", value_name = "N")]
    pub event_history: Option<usize>,

    /// How long the server keeps an event for streams that reconnect, as a
    /// time code such as `10m` [default: 10m]
    #[arg(long, env = "SESSIONDB_EVENT_HISTORY_AGE", value_name = "TIME")]
    pub event_history_age: Option<String>,

    /// Do not run the background reaper: expired sessions are refused on
    /// read (`expired`) but neither deleted nor announced. For tests and
    /// debugging (config file: `reaper = false`).
    #[arg(long, env = "SESSIONDB_NO_REAPER")]
    pub no_reaper: bool,
}

/// The store a command works on: a directory, or Redis / Valkey servers
/// (one server, a cluster, or a primary behind Sentinel).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Store directory (the embedded engine)
    /// [env: SESSIONDB_DATA_DIR] [default: ./sessiondb-data]
    #[arg(long, value_name = "DIR", conflicts_with_all = ["redis_url", "redis_cluster", "redis_sentinel"])]
    pub data_dir: Option<PathBuf>,

    /// A store shared through one Redis or Valkey server instead of a
    /// directory: `redis://[user:password@]host[:port][/db]`, `rediss://`
    /// for TLS, or `redis+unix:///path/to/socket`; logs and messages show
    /// it without its password [env: SESSIONDB_REDIS_URL]
    #[arg(long, value_name = "URL", conflicts_with_all = ["redis_cluster", "redis_sentinel"])]
    pub redis_url: Option<String>,

    /// A store shared through a Redis (or Valkey) Cluster: the URL of one
    /// of its nodes, repeatable (more help while a node is down); each with
    /// the user and password the nodes take
    /// [env: SESSIONDB_REDIS_CLUSTER, comma-separated]
    #[arg(long, value_name = "URL", conflicts_with = "redis_sentinel")]
    pub redis_cluster: Vec<String>,

    /// A store on the primary that Redis Sentinel manages: the URL of a
    /// sentinel, repeatable; the primary is reached with the user, password
    /// and database of the sentinel URL that named it. Needs
    /// --redis-sentinel-master [env: SESSIONDB_REDIS_SENTINEL, comma-separated]
    #[arg(long, value_name = "URL")]
    pub redis_sentinel: Vec<String>,

    /// The name under which the sentinels manage the primary
    #[arg(long, env = "SESSIONDB_REDIS_SENTINEL_MASTER", value_name = "NAME")]
    pub redis_sentinel_master: Option<String>,

    /// Prefix of the store's keys on the Redis server, so that several
    /// games (or environments) share one server [default: sessiondb]
    #[arg(long, env = "SESSIONDB_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,

    /// For `rediss://`: trust server certificates signed by the CA in this
    /// PEM file (a private CA) instead of the system's roots
    #[arg(long, env = "SESSIONDB_REDIS_TLS_CA", value_name = "PEM")]
    pub redis_tls_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this actor's sessions.
    #[arg(long, value_name = "ACTOR_ID")]
    pub actor: Option<String>,
    /// Print one JSON object per line (the HTTP API's session shape) instead
    /// of a table.
    #[arg(long)]
    pub json: bool,
    /// Leave out sessions past their expiry (not reaped yet).
    #[arg(long)]
    pub live: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The session's public id (as in events, `list` and the HTTP API);
    /// ids may start with `-`.
    #[arg(allow_hyphen_values = true)]
    pub id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExpireArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The actor whose sessions end.
    #[arg(allow_hyphen_values = true)]
    pub actor: String,
    /// The reason recorded: `expired`, `loggedOut`, `replaced`,
    /// `reassigned` or a custom word (letters, digits, `_.-`).
    #[arg(long, default_value = "expired")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Fix what the check finds: add missing index entries, remove stale
    /// ones, fix the count, quarantine records that do not decode.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// File to write; `-` for stdout.
    #[arg(long, short, value_name = "FILE", default_value = "-")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// File written by `export`; `-` for stdin.
    #[arg(value_name = "FILE", default_value = "-")]
    pub input: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The fresh directory to write the compacted store to; it must not
    /// exist or be empty. Swap it in for the old one while the server is
    /// stopped.
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
}
