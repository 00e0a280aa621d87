//! The serve settings, merged from flags, environment variables (both read
//! by clap, except the store's location), an optional TOML config file, and
//! defaults, in that order, into the library's [`Config`] (the store's
//! settings) and the server's own. Where the store is: `location`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sessiondb::{Config, Durability};

use crate::cli::{DurabilityArg, ServeArgs};
use crate::connections::{HEADER_TIMEOUT, MAX_CONNECTIONS};
use crate::cors::CorsPolicy;
use crate::history::HistoryLimits;
use crate::location::{
    from_environment, from_flags, locate, LocationError, Named, RedisOptions, Source,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
pub const DEFAULT_TTL: &str = "10m";
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The config file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    redis_url: Option<String>,
    redis_cluster: Option<Vec<String>>,
    redis_sentinel: Option<Vec<String>>,
    redis_sentinel_master: Option<String>,
    redis_prefix: Option<String>,
    redis_tls_ca: Option<PathBuf>,
    listen: Option<String>,
    ttl: Option<String>,
    durability: Option<DurabilityArg>,
    admin_token: Option<String>,
    log_level: Option<String>,
    app_version: Option<String>,
    node_id: Option<String>,
    max_sessions_per_actor: Option<usize>,
    min_replicas: Option<u32>,
    reaper: Option<bool>,
    cors_origin: Option<Vec<String>>,
    header_timeout: Option<String>,
    max_connections: Option<usize>,
    event_history: Option<usize>,
    event_history_age: Option<String>,
}

// ----- the serve settings -----

/// The resolved settings of `sessiondb serve`.
#[derive(Clone)]
pub struct Settings {
    /// The store's: where it is, and how it runs.
    pub store: Config,
    pub listen: String,
    pub admin_token: Option<String>,
    pub log_level: String,
    /// The browser origins allowed to call the session routes.
    pub cors: CorsPolicy,
    /// What a connection may hold.
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// How much event history streams can resume from.
    pub event_history: HistoryLimits,
    /// Settings given but not used, to be logged as warnings.
    pub notes: Vec<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("store", &self.store.describe())
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("log_level", &self.log_level)
            .field("cors_origins", &self.cors.origins())
            .field("header_timeout", &self.header_timeout)
            .field("max_connections", &self.max_connections)
            .field("event_history", &self.event_history)
            .finish()
    }
}

/// A problem with the settings, reported before anything starts.
#[derive(Debug)]
pub enum SettingsError {
    ConfigFile {
        path: PathBuf,
        problem: String,
    },
    Invalid {
        setting: &'static str,
        problem: String,
    },
    /// Settings that do not go together, explained.
    Usage(String),
}

impl From<LocationError> for SettingsError {
    fn from(e: LocationError) -> Self {
        SettingsError::Usage(e.to_string())
    }
}

impl std::error::Error for SettingsError {}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingsError::ConfigFile { path, problem } => {
                write!(f, "config file {}: {problem}", path.display())
            }
            SettingsError::Invalid { setting, problem } => write!(f, "--{setting}: {problem}"),
            SettingsError::Usage(problem) => f.write_str(problem),
        }
    }
}

fn read_file(path: &Path) -> Result<FileSettings, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError::ConfigFile {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| SettingsError::ConfigFile {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

impl Settings {
    /// Merges flags and environment (already in `args`) over the config
    /// file over the defaults, and checks what can be checked before the
    /// store opens.
    pub fn resolve(args: ServeArgs) -> Result<Settings, SettingsError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let (store, notes) = locate(
            &[
                from_flags(&args.store),
                from_environment()?,
                Named {
                    data_dir: file.data_dir,
                    redis_url: file.redis_url,
                    redis_cluster: file.redis_cluster.unwrap_or_default(),
                    redis_sentinel: file.redis_sentinel.unwrap_or_default(),
                    ..Named::new(Source::ConfigFile)
                },
            ],
            RedisOptions {
                prefix: args.store.redis_prefix.or(file.redis_prefix),
                tls_ca: args.store.redis_tls_ca.or(file.redis_tls_ca),
                sentinel_master: args
                    .store
                    .redis_sentinel_master
                    .or(file.redis_sentinel_master),
            },
        )?;
        // The flags' (or the environment's) list replaces the file's.
        let origins = if args.cors_origin.is_empty() {
            file.cors_origin.unwrap_or_default()
        } else {
            args.cors_origin
        };
        let cors = CorsPolicy::new(&origins).map_err(|e| SettingsError::Invalid {
            setting: "cors-origin",
            problem: e.to_string(),
        })?;
        let header_timeout = args.header_timeout.or(file.header_timeout);
        let header_timeout = match header_timeout {
            None => HEADER_TIMEOUT,
            Some(code) => sessiondb::parse_time_code(&code)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| SettingsError::Invalid {
                    setting: "header-timeout",
                    problem: format!("{code:?} is not a time code above 0, such as \"10s\""),
                })?,
        };
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(SettingsError::Invalid {
                setting: "max-connections",
                problem: "must be at least 1".into(),
            });
        }
        let event_history = HistoryLimits {
            events: args
                .event_history
                .or(file.event_history)
                .unwrap_or(HistoryLimits::default().events),
            age: match args.event_history_age.or(file.event_history_age) {
                None => HistoryLimits::default().age,
                Some(code) => {
                    sessiondb::parse_time_code(&code).map_err(|e| SettingsError::Invalid {
                        setting: "event-history-age",
                        problem: e.to_string(),
                    })?
                }
            },
        };
        if event_history.events == 0 {
            return Err(SettingsError::Invalid {
                setting: "event-history",
                problem: "must be at least 1".into(),
            });
        }
        let ttl = args.ttl.or(file.ttl).unwrap_or_else(|| DEFAULT_TTL.into());
        sessiondb::parse_time_code(&ttl).map_err(|e| SettingsError::Invalid {
            setting: "ttl",
            problem: e.to_string(),
        })?;
        let durability = match args
            .durability
            .or(file.durability)
            .unwrap_or(DurabilityArg::Periodic)
        {
            DurabilityArg::Periodic => Durability::default(),
            DurabilityArg::Immediate => Durability::Immediate,
        };
        let mut store = store
            .ttl_code(ttl)
            .durability(durability)
            .reaper_thread(!args.no_reaper && file.reaper.unwrap_or(true));
        if let Some(v) = args.app_version.or(file.app_version) {
            store = store.app_version(v);
        }
        if let Some(n) = args.node_id.or(file.node_id) {
            store = store.node_id(n);
        }
        if let Some(m) = args.max_sessions_per_actor.or(file.max_sessions_per_actor) {
            store = store.max_sessions_per_actor(m);
        }
        // Checked when the store opens: a data directory has no replicas.
        if let Some(n) = args.min_replicas.or(file.min_replicas) {
            store = store.min_replicas(n);
        }
        let admin_token = args.admin_token.or(file.admin_token);
        if admin_token.as_deref() == Some("") {
            return Err(SettingsError::Invalid {
                setting: "admin-token",
                problem: "must not be empty (leave it unset to serve admin routes to loopback clients only)".into(),
            });
        }
        Ok(Settings {
            store,
            notes,
            cors,
            header_timeout,
            max_connections,
            event_history,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            admin_token,
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.into()),
        })
    }
}
