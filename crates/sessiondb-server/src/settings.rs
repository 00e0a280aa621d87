//! The serve settings, merged from flags, environment variables (both read
//! by clap, except the store's location), an optional TOML config file, and
//! defaults, in that order.
//!
//! The store is either a directory (the embedded sled engine) or a Redis /
//! Valkey URL (the shared engine): [`Location`]. The source of highest
//! precedence that names one decides; a source naming both is refused.
//! Redis URLs may carry a password, so they are shown only through
//! [`redact_url`], and errors that may quote them go through a [`Redactor`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sessiondb::{Config, Durability};

use crate::cli::{DurabilityArg, ServeArgs, StoreArgs};
use crate::connections::{HEADER_TIMEOUT, MAX_CONNECTIONS};
use crate::cors::CorsPolicy;
use crate::error::AnyResult;

pub const DEFAULT_DATA_DIR: &str = "./sessiondb-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
pub const DEFAULT_TTL: &str = "10m";
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// The library's default key prefix on Redis, for messages.
pub const DEFAULT_REDIS_PREFIX: &str = "sessiondb";

/// The environment variables naming the store. clap does not read these
/// two: which one wins depends on where each came from (see [`locate`]).
pub const ENV_DATA_DIR: &str = "SESSIONDB_DATA_DIR";
pub const ENV_REDIS_URL: &str = "SESSIONDB_REDIS_URL";

/// The config file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    redis_url: Option<String>,
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
    reaper: Option<bool>,
    cors_origin: Option<Vec<String>>,
    header_timeout: Option<String>,
    max_connections: Option<usize>,
}

// ----- where the store is -----

/// Where the sessions live.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded sled engine in this directory.
    Directory(PathBuf),
    /// The shared Redis / Valkey engine at `url`.
    Redis { url: String, options: RedisOptions },
}

/// How to use a Redis server: the key prefix (the library's default when
/// `None`) and, for `rediss://`, a private CA to trust.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisOptions {
    pub prefix: Option<String>,
    pub tls_ca: Option<PathBuf>,
}

impl Location {
    /// The library configuration for this location, every other setting
    /// at its default.
    pub fn config(&self) -> Config {
        match self {
            Location::Directory(dir) => Config::new(dir),
            Location::Redis { url, options } => {
                let mut config = Config::redis(url.clone());
                if let Some(p) = &options.prefix {
                    config = config.redis_prefix(p.clone());
                }
                if let Some(ca) = &options.tls_ca {
                    config = config.redis_tls_ca(ca);
                }
                config
            }
        }
    }

    /// The directory, for the embedded engine.
    pub fn directory(&self) -> Option<&Path> {
        match self {
            Location::Directory(dir) => Some(dir),
            Location::Redis { .. } => None,
        }
    }

    /// `sled` or `redis`, for logs and reports.
    pub fn engine(&self) -> &'static str {
        match self {
            Location::Directory(_) => "sled",
            Location::Redis { .. } => "redis",
        }
    }

    /// Hides this location's password in texts (nothing to hide for a
    /// directory).
    pub fn redactor(&self) -> Redactor {
        match self {
            Location::Directory(_) => Redactor::default(),
            Location::Redis { url, .. } => Redactor::for_urls([url.as_str()]),
        }
    }
}

/// The directory, or the Redis URL without its password and the prefix.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Directory(dir) => write!(f, "{}", dir.display()),
            Location::Redis { url, options } => write!(
                f,
                "{} (prefix {:?})",
                redact_url(url),
                options.prefix.as_deref().unwrap_or(DEFAULT_REDIS_PREFIX)
            ),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({self})", self.engine())
    }
}

/// A source of settings, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flags,
    Environment,
    ConfigFile,
}

impl Source {
    /// How this source spells the data directory and the Redis URL.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Source::Flags => ("--data-dir", "--redis-url"),
            Source::Environment => (ENV_DATA_DIR, ENV_REDIS_URL),
            Source::ConfigFile => ("data_dir (config file)", "redis_url (config file)"),
        }
    }
}

/// What one source says about the store's location.
pub struct Named {
    pub source: Source,
    pub data_dir: Option<PathBuf>,
    pub redis_url: Option<String>,
}

/// The store that the source of highest precedence names (a directory or
/// a Redis URL), else the default directory; with `prefix` for Redis. Also
/// returns notes on settings that are not used, for the caller to show.
///
/// # Errors
/// One source names both a directory and a Redis URL, or an empty URL.
pub fn locate(
    sources: &[Named],
    redis: RedisOptions,
) -> Result<(Location, Vec<String>), SettingsError> {
    let mut notes = Vec::new();
    let chosen = sources
        .iter()
        .position(|s| s.data_dir.is_some() || s.redis_url.is_some());
    let location = match chosen.map(|i| &sources[i]) {
        None => Location::Directory(DEFAULT_DATA_DIR.into()),
        Some(s) => {
            let (dir_name, url_name) = s.source.names();
            match (&s.data_dir, &s.redis_url) {
                (Some(_), Some(_)) => {
                    return Err(SettingsError::Usage(format!(
                        "both {dir_name} and {url_name} are given: a store is either a data \
                         directory (the embedded engine) or a Redis/Valkey URL (the shared \
                         engine); give one"
                    )))
                }
                (_, Some(url)) if url.trim().is_empty() => {
                    return Err(SettingsError::Usage(format!(
                        "{url_name} is empty; give a URL such as redis://127.0.0.1:6379/0"
                    )))
                }
                (_, Some(url)) => Location::Redis {
                    url: url.trim().to_owned(),
                    options: redis.clone(),
                },
                (Some(dir), None) => Location::Directory(dir.clone()),
                (None, None) => Location::Directory(DEFAULT_DATA_DIR.into()),
            }
        }
    };
    // Sources of lower precedence that name the other engine lose.
    for s in sources.iter().skip(chosen.map_or(sources.len(), |i| i + 1)) {
        let (dir_name, url_name) = s.source.names();
        match &location {
            Location::Redis { .. } if s.data_dir.is_some() => notes.push(format!(
                "{dir_name} is not used: the store is the Redis URL given with higher precedence"
            )),
            Location::Directory(_) if s.redis_url.is_some() => notes.push(format!(
                "{url_name} is not used: the store is the data directory given with higher precedence"
            )),
            _ => {}
        }
    }
    if matches!(location, Location::Directory(_)) && redis != RedisOptions::default() {
        notes.push(
            "the Redis settings (--redis-prefix, --redis-tls-ca and their environment variables \
             and config keys) are not used with a data directory"
                .into(),
        );
    }
    Ok((location, notes))
}

/// An environment variable's value; unset and empty are both `None`.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn env_text(name: &'static str) -> Result<Option<String>, SettingsError> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(SettingsError::Usage(format!("{name} is not valid UTF-8")))
        }
    }
}

/// What the environment says about the store.
fn from_environment() -> Result<Named, SettingsError> {
    Ok(Named {
        source: Source::Environment,
        data_dir: env_path(ENV_DATA_DIR),
        redis_url: env_text(ENV_REDIS_URL)?,
    })
}

/// The store an offline tool works on, from its flags and the
/// environment; with notes on settings that are not used.
///
/// # Errors
/// As [`locate`].
pub fn tool_store(args: &StoreArgs) -> Result<(Location, Vec<String>), SettingsError> {
    locate(
        &[
            Named {
                source: Source::Flags,
                data_dir: args.data_dir.clone(),
                redis_url: args.redis_url.clone(),
            },
            from_environment()?,
        ],
        RedisOptions {
            prefix: args.redis_prefix.clone(),
            tls_ca: args.redis_tls_ca.clone(),
        },
    )
}

// ----- hiding passwords -----

/// `url` with its password replaced by `***` (`redis://user:***@host`,
/// and `pass=***` / `password=***` in a query), for messages and logs.
pub fn redact_url(url: &str) -> String {
    sessiondb::redact_url(url)
}

fn is_password_param(name: &str) -> bool {
    name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password")
}

/// The passwords in `url`: of the user info and of the query.
fn passwords(url: &str) -> Vec<String> {
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q + 1..]),
        None => (url, ""),
    };
    let mut found = Vec::new();
    if let (Some(scheme), Some(at)) = (base.find("://"), base.rfind('@')) {
        if at > scheme + 3 {
            if let Some((_, password)) = base[scheme + 3..at].split_once(':') {
                found.push(password.to_owned());
            }
        }
    }
    for p in query.split('&') {
        if let Some((k, v)) = p.split_once('=') {
            if is_password_param(k) {
                found.push(v.to_owned());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|p| percent_decode(p)).collect();
    found.extend(decoded);
    found.retain(|p| !p.is_empty());
    found.sort();
    found.dedup();
    found
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Hides the passwords of some Redis URLs in any text: each URL is
/// replaced by its redacted form, and each password by `***` (a password
/// shorter than 6 characters only where it appears as `:password@`, so that
/// a short one does not garble the rest of the text).
#[derive(Clone, Default)]
pub struct Redactor {
    replacements: Vec<(String, String)>,
}

impl Redactor {
    pub fn for_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut replacements = Vec::new();
        for url in urls {
            let secrets = passwords(url);
            if secrets.is_empty() {
                continue;
            }
            replacements.push((url.to_owned(), redact_url(url)));
            for secret in secrets {
                replacements.push((format!(":{secret}@"), ":***@".to_owned()));
                if secret.chars().count() >= 6 {
                    replacements.push((secret, "***".to_owned()));
                }
            }
        }
        // Longer texts first, so that a URL goes before its password.
        replacements.sort_by_key(|(secret, _)| std::cmp::Reverse(secret.len()));
        Redactor { replacements }
    }

    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (secret, shown) in &self.replacements {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), shown);
            }
        }
        out
    }

    /// `error` with every message of its chain redacted (unchanged when
    /// there is nothing to hide).
    pub fn error(
        &self,
        error: Box<dyn std::error::Error + Send + Sync>,
    ) -> Box<dyn std::error::Error + Send + Sync> {
        if self.replacements.is_empty() {
            return error;
        }
        let mut messages = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
        while let Some(e) = next {
            messages.push(self.text(&e.to_string()));
            next = e.source();
        }
        let mut chain: Option<Redacted> = None;
        for message in messages.into_iter().rev() {
            chain = Some(Redacted {
                message,
                source: chain.map(Box::new),
            });
        }
        match chain {
            Some(e) => Box::new(e),
            None => error,
        }
    }
}

/// An error whose messages were redacted, with its chain.
#[derive(Debug)]
struct Redacted {
    message: String,
    source: Option<Box<Redacted>>,
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Redacted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Explains a failed open: an unreachable Redis server is named (without
/// its password); other errors pass through.
pub fn open_error(
    location: &Location,
    error: sessiondb::Error,
) -> Box<dyn std::error::Error + Send + Sync> {
    match error {
        sessiondb::Error::Unavailable { source } => format!(
            "cannot reach the Redis/Valkey server at {}: {source}",
            location
        )
        .into(),
        other => other.into(),
    }
}

/// Opens the store at `config`'s location, explaining failures as
/// [`open_error`] does.
pub fn open_store(location: &Location, config: Config) -> AnyResult<sessiondb::SessionStore> {
    sessiondb::SessionStore::open(config).map_err(|e| open_error(location, e))
}

// ----- the serve settings -----

/// The resolved settings of `sessiondb serve`.
#[derive(Clone)]
pub struct Settings {
    pub store: Location,
    pub listen: String,
    pub ttl: String,
    pub durability: DurabilityArg,
    pub admin_token: Option<String>,
    pub log_level: String,
    pub app_version: Option<String>,
    pub node_id: Option<String>,
    pub max_sessions_per_actor: Option<usize>,
    pub reaper: bool,
    /// The browser origins allowed to call the session routes.
    pub cors: CorsPolicy,
    /// What a connection may hold.
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// Settings given but not used, to be logged as warnings.
    pub notes: Vec<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("store", &self.store)
            .field("listen", &self.listen)
            .field("ttl", &self.ttl)
            .field("durability", &self.durability)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("log_level", &self.log_level)
            .field("app_version", &self.app_version)
            .field("node_id", &self.node_id)
            .field("max_sessions_per_actor", &self.max_sessions_per_actor)
            .field("reaper", &self.reaper)
            .field("cors_origins", &self.cors.origins())
            .field("header_timeout", &self.header_timeout)
            .field("max_connections", &self.max_connections)
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
                Named {
                    source: Source::Flags,
                    data_dir: args.store.data_dir,
                    redis_url: args.store.redis_url,
                },
                from_environment()?,
                Named {
                    source: Source::ConfigFile,
                    data_dir: file.data_dir,
                    redis_url: file.redis_url,
                },
            ],
            RedisOptions {
                prefix: args.store.redis_prefix.or(file.redis_prefix),
                tls_ca: args.store.redis_tls_ca.or(file.redis_tls_ca),
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
        let settings = Settings {
            store,
            notes,
            cors,
            header_timeout,
            max_connections,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            ttl: args.ttl.or(file.ttl).unwrap_or_else(|| DEFAULT_TTL.into()),
            durability: args
                .durability
                .or(file.durability)
                .unwrap_or(DurabilityArg::Periodic),
            admin_token: args.admin_token.or(file.admin_token),
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.into()),
            app_version: args.app_version.or(file.app_version),
            node_id: args.node_id.or(file.node_id),
            max_sessions_per_actor: args.max_sessions_per_actor.or(file.max_sessions_per_actor),
            reaper: !args.no_reaper && file.reaper.unwrap_or(true),
        };
        sessiondb::parse_time_code(&settings.ttl).map_err(|e| SettingsError::Invalid {
            setting: "ttl",
            problem: e.to_string(),
        })?;
        if settings.admin_token.as_deref() == Some("") {
            return Err(SettingsError::Invalid {
                setting: "admin-token",
                problem: "must not be empty (leave it unset to serve admin routes to loopback clients only)".into(),
            });
        }
        Ok(settings)
    }

    /// The library configuration these settings describe.
    pub fn store_config(&self) -> Config {
        let mut config = self
            .store
            .config()
            .ttl_code(self.ttl.clone())
            .durability(match self.durability {
                DurabilityArg::Periodic => Durability::default(),
                DurabilityArg::Immediate => Durability::Immediate,
            })
            .reaper_thread(self.reaper);
        if let Some(v) = &self.app_version {
            config = config.app_version(v.clone());
        }
        if let Some(n) = &self.node_id {
            config = config.node_id(n.clone());
        }
        if let Some(m) = self.max_sessions_per_actor {
            config = config.max_sessions_per_actor(m);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://u:pw@h:1/2", "redis://u:***@h:1/2"),
            ("rediss://:pw@h", "rediss://:***@h"),
            ("redis://user@h", "redis://user@h"),
            ("redis://u:p@ss:w@rd@h/0", "redis://u:***@h/0"),
            (
                "redis+unix:///run/r.sock?db=1&pass=pw",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            ("redis+unix:///run/r.sock", "redis+unix:///run/r.sock"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn the_redactor_hides_passwords_anywhere_in_a_chain() {
        let url = "redis://game:s3cr%40t-pw@10.0.0.1:6379/0";
        let r = Redactor::for_urls([url]);
        assert_eq!(
            r.text(&format!("cannot open {url}: bad")),
            "cannot open redis://game:***@10.0.0.1:6379/0: bad"
        );
        assert_eq!(r.text("auth s3cr@t-pw failed"), "auth *** failed");
        let inner = std::io::Error::other("the password s3cr%40t-pw was refused");
        let outer: Box<dyn std::error::Error + Send + Sync> =
            Box::new(sessiondb::Error::ExportWrite { source: inner });
        let e = r.error(outer);
        let source = e.source().expect("the chain is kept");
        assert_eq!(source.to_string(), "the password *** was refused");
        assert!(!e.to_string().contains("s3cr"), "{e}");
        // A short password is hidden only where it sits in a URL.
        let r = Redactor::for_urls(["redis://u:ab@h"]);
        assert_eq!(r.text("ab in redis://x:ab@y"), "ab in redis://x:***@y");
    }

    fn named(source: Source, dir: Option<&str>, url: Option<&str>) -> Named {
        Named {
            source,
            data_dir: dir.map(PathBuf::from),
            redis_url: url.map(str::to_owned),
        }
    }

    #[test]
    fn the_store_comes_from_the_source_of_highest_precedence() {
        let redis = |url: &str| Location::Redis {
            url: url.into(),
            options: RedisOptions::default(),
        };
        let (l, notes) = locate(
            &[
                named(Source::Flags, None, None),
                named(Source::Environment, None, Some("redis://e")),
                named(Source::ConfigFile, Some("/file"), None),
            ],
            RedisOptions::default(),
        )
        .unwrap();
        assert_eq!(l, redis("redis://e"));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("data_dir (config file) is not used"));

        let (l, notes) = locate(
            &[
                named(Source::Flags, Some("/flag"), None),
                named(Source::Environment, None, Some("redis://e")),
            ],
            RedisOptions {
                prefix: Some("game1".into()),
                tls_ca: None,
            },
        )
        .unwrap();
        assert_eq!(l, Location::Directory("/flag".into()));
        assert_eq!(notes.len(), 2, "{notes:?}");

        let (l, _) = locate(&[named(Source::Flags, None, None)], RedisOptions::default()).unwrap();
        assert_eq!(l, Location::Directory(DEFAULT_DATA_DIR.into()));

        let e = locate(
            &[named(Source::Environment, Some("/d"), Some("redis://e"))],
            RedisOptions::default(),
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("both SESSIONDB_DATA_DIR and SESSIONDB_REDIS_URL"));
        let e = locate(
            &[named(Source::Flags, None, Some(" "))],
            RedisOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--redis-url is empty"), "{e}");
    }
}
