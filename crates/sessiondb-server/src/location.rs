//! Where the store is, for `serve` and every tool: a directory (the
//! embedded sled engine) or Redis / Valkey servers (the shared engine):
//! one server (`--redis-url`), a cluster (`--redis-cluster`, repeatable) or
//! a primary behind Sentinel (`--redis-sentinel`, repeatable, with
//! `--redis-sentinel-master`). The source of highest precedence (flags,
//! then the environment, then the config file) that names one decides; a
//! source naming two is refused. What it names becomes the library's
//! [`Config`] (its `Location`), which every later step works with.
//!
//! Redis URLs may carry a password, so they are shown only through
//! [`redact_url`] (the library's), and errors that may quote them go
//! through a [`Redactor`].

use std::fmt;
use std::path::PathBuf;

pub use sessiondb::redact_url;
use sessiondb::{Config, Location, RedisTarget};

use crate::cli::StoreArgs;
use crate::error::AnyResult;

pub const DEFAULT_DATA_DIR: &str = "./sessiondb-data";

/// The environment variables naming the store. clap does not read these:
/// which one wins depends on where each came from (see [`locate`]). The
/// cluster's and the sentinels' hold comma-separated URLs.
pub const ENV_DATA_DIR: &str = "SESSIONDB_DATA_DIR";
pub const ENV_REDIS_URL: &str = "SESSIONDB_REDIS_URL";
pub const ENV_REDIS_CLUSTER: &str = "SESSIONDB_REDIS_CLUSTER";
pub const ENV_REDIS_SENTINEL: &str = "SESSIONDB_REDIS_SENTINEL";

/// Settings that name the store in a way that cannot be used, explained.
#[derive(Debug)]
pub struct LocationError(String);

impl fmt::Display for LocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LocationError {}

/// How to use the Redis servers: the key prefix (the library's default
/// when `None`), for `rediss://` a private CA to trust, and for Sentinel
/// the name of the primary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisOptions {
    pub prefix: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub sentinel_master: Option<String>,
}

/// A source of settings, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flags,
    Environment,
    ConfigFile,
}

impl Source {
    /// How this source spells the data directory, the Redis URL, the
    /// cluster and the sentinels.
    fn names(self) -> [&'static str; 4] {
        match self {
            Source::Flags => [
                "--data-dir",
                "--redis-url",
                "--redis-cluster",
                "--redis-sentinel",
            ],
            Source::Environment => [
                ENV_DATA_DIR,
                ENV_REDIS_URL,
                ENV_REDIS_CLUSTER,
                ENV_REDIS_SENTINEL,
            ],
            Source::ConfigFile => [
                "data_dir (config file)",
                "redis_url (config file)",
                "redis_cluster (config file)",
                "redis_sentinel (config file)",
            ],
        }
    }
}

/// What one source says about the store's location.
#[derive(Debug, Clone)]
pub struct Named {
    pub source: Source,
    pub data_dir: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub redis_cluster: Vec<String>,
    pub redis_sentinel: Vec<String>,
}

impl Named {
    pub fn new(source: Source) -> Named {
        Named {
            source,
            data_dir: None,
            redis_url: None,
            redis_cluster: Vec::new(),
            redis_sentinel: Vec::new(),
        }
    }

    /// The names of the places this source gives, as it spells them.
    fn given(&self) -> Vec<&'static str> {
        let names = self.source.names();
        [
            self.data_dir.is_some(),
            self.redis_url.is_some(),
            !self.redis_cluster.is_empty(),
            !self.redis_sentinel.is_empty(),
        ]
        .iter()
        .zip(names)
        .filter(|(given, _)| **given)
        .map(|(_, name)| name)
        .collect()
    }
}

/// The store that the source of highest precedence names (a directory, a
/// Redis URL, a cluster or sentinels), else the default directory, as the
/// library's configuration with the `redis` options applied and every
/// other setting at its default. Also returns notes on settings that are
/// not used, for the caller to show.
///
/// # Errors
/// One source names two places, an empty URL, or sentinels without the
/// primary's name.
pub fn locate(
    sources: &[Named],
    redis: RedisOptions,
) -> Result<(Config, Vec<String>), LocationError> {
    let mut notes = Vec::new();
    let chosen = sources.iter().position(|s| !s.given().is_empty());
    let location = match chosen.map(|i| &sources[i]) {
        None => Location::Directory(DEFAULT_DATA_DIR.into()),
        Some(s) => place(s, &redis)?,
    };
    let on_redis = matches!(location, Location::Redis(_));
    let mut config = Config::at(location);
    if on_redis {
        if let Some(prefix) = redis.prefix {
            config = config.redis_prefix(prefix);
        }
        if let Some(ca) = redis.tls_ca {
            config = config.redis_tls_ca(ca);
        }
    } else if redis != RedisOptions::default() {
        notes.push(
            "the Redis settings (--redis-prefix, --redis-tls-ca, --redis-sentinel-master and \
             their environment variables and config keys) are not used with a data directory"
                .into(),
        );
    }
    // Sources of lower precedence that name another place lose.
    let below = chosen.map_or(sources.len(), |i| i + 1);
    let store = config.describe();
    for s in &sources[below..] {
        for name in s.given() {
            notes.push(format!(
                "{name} is not used: the store is {store}, given with higher precedence"
            ));
        }
    }
    Ok((config, notes))
}

/// The one place source `s` names.
fn place(s: &Named, redis: &RedisOptions) -> Result<Location, LocationError> {
    let given = s.given();
    if given.len() > 1 {
        return Err(LocationError(format!(
            "both {} are given: a store is either a data directory (the embedded engine) or one \
             Redis/Valkey server, cluster or Sentinel-managed primary (the shared engine); \
             give one",
            given.join(" and ")
        )));
    }
    let [_, url_name, cluster_name, sentinel_name] = s.source.names();
    let checked = |name: &str, urls: &[String]| -> Result<Vec<String>, LocationError> {
        let urls: Vec<String> = urls.iter().map(|u| u.trim().to_owned()).collect();
        if urls.iter().any(String::is_empty) {
            return Err(LocationError(format!(
                "{name} is empty; give a URL such as redis://127.0.0.1:6379/0"
            )));
        }
        Ok(urls)
    };
    if let Some(url) = &s.redis_url {
        let mut urls = checked(url_name, std::slice::from_ref(url))?;
        return Ok(Location::Redis(RedisTarget::Server(urls.remove(0))));
    }
    if !s.redis_cluster.is_empty() {
        let urls = checked(cluster_name, &s.redis_cluster)?;
        return Ok(Location::Redis(RedisTarget::Cluster(urls)));
    }
    if !s.redis_sentinel.is_empty() {
        let sentinels = checked(sentinel_name, &s.redis_sentinel)?;
        let master = redis
            .sentinel_master
            .clone()
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| {
                LocationError(format!(
                    "{sentinel_name} needs the name of the primary the sentinels manage: give \
                     --redis-sentinel-master NAME (or SESSIONDB_REDIS_SENTINEL_MASTER, or \
                     redis_sentinel_master in the config file)"
                ))
            })?;
        return Ok(Location::Redis(RedisTarget::Sentinel { sentinels, master }));
    }
    Ok(Location::Directory(
        s.data_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
    ))
}

/// An environment variable's value; unset and empty are both `None`.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub fn env_text(name: &'static str) -> Result<Option<String>, LocationError> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(LocationError(format!("{name} is not valid UTF-8")))
        }
    }
}

/// A comma-separated list of URLs from the environment.
fn env_list(name: &'static str) -> Result<Vec<String>, LocationError> {
    Ok(env_text(name)?
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

/// What the environment says about the store.
pub fn from_environment() -> Result<Named, LocationError> {
    Ok(Named {
        data_dir: env_path(ENV_DATA_DIR),
        redis_url: env_text(ENV_REDIS_URL)?,
        redis_cluster: env_list(ENV_REDIS_CLUSTER)?,
        redis_sentinel: env_list(ENV_REDIS_SENTINEL)?,
        ..Named::new(Source::Environment)
    })
}

/// What the flags say about the store.
pub fn from_flags(args: &StoreArgs) -> Named {
    Named {
        data_dir: args.data_dir.clone(),
        redis_url: args.redis_url.clone(),
        redis_cluster: args.redis_cluster.clone(),
        redis_sentinel: args.redis_sentinel.clone(),
        ..Named::new(Source::Flags)
    }
}

/// Every Redis URL the flags and the environment name, for hiding their
/// passwords before anything else runs.
pub fn named_urls(args: &StoreArgs) -> Vec<String> {
    let flags = from_flags(args);
    let env = from_environment().unwrap_or_else(|_| Named::new(Source::Environment));
    [flags, env]
        .into_iter()
        .flat_map(|n| {
            n.redis_url
                .into_iter()
                .chain(n.redis_cluster)
                .chain(n.redis_sentinel)
        })
        .collect()
}

/// The store an offline tool works on, from its flags and the
/// environment; with notes on settings that are not used.
///
/// # Errors
/// As [`locate`].
pub fn tool_store(args: &StoreArgs) -> Result<(Config, Vec<String>), LocationError> {
    locate(
        &[from_flags(args), from_environment()?],
        RedisOptions {
            prefix: args.redis_prefix.clone(),
            tls_ca: args.redis_tls_ca.clone(),
            sentinel_master: args.redis_sentinel_master.clone(),
        },
    )
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
    /// Hides the passwords of the store's Redis URLs.
    pub fn for_store(config: &Config) -> Redactor {
        Redactor::for_urls(config.redis_urls().iter().map(String::as_str))
    }

    pub fn for_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut replacements = Vec::new();
        for url in urls {
            let secrets = sessiondb::url_passwords(url);
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

/// Explains a failed open: unreachable Redis servers are named (without
/// their passwords); other errors pass through.
pub fn open_error(
    config: &Config,
    error: sessiondb::Error,
) -> Box<dyn std::error::Error + Send + Sync> {
    match error {
        sessiondb::Error::Unavailable { source } => {
            let store = config.describe();
            match config.location() {
                Location::Redis(RedisTarget::Server(_)) => {
                    format!("cannot reach the Redis/Valkey server at {store}: {source}").into()
                }
                _ => format!("cannot reach {store}: {source}").into(),
            }
        }
        other => other.into(),
    }
}

/// Opens the store `config` names, explaining failures as [`open_error`]
/// does.
pub fn open_store(config: Config) -> AnyResult<sessiondb::SessionStore> {
    sessiondb::SessionStore::open(config.clone()).map_err(|e| open_error(&config, e))
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
            data_dir: dir.map(PathBuf::from),
            redis_url: url.map(str::to_owned),
            ..Named::new(source)
        }
    }

    #[test]
    fn the_store_comes_from_the_source_of_highest_precedence() {
        let redis = |url: &str| Location::Redis(RedisTarget::Server(url.into()));
        let (l, notes) = locate(
            &[
                named(Source::Flags, None, None),
                named(Source::Environment, None, Some("redis://e")),
                named(Source::ConfigFile, Some("/file"), None),
            ],
            RedisOptions::default(),
        )
        .unwrap();
        assert_eq!(l.location(), &redis("redis://e"));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("data_dir (config file) is not used"));

        let (l, notes) = locate(
            &[
                named(Source::Flags, Some("/flag"), None),
                named(Source::Environment, None, Some("redis://e")),
            ],
            RedisOptions {
                prefix: Some("game1".into()),
                ..RedisOptions::default()
            },
        )
        .unwrap();
        assert_eq!(l.location(), &Location::Directory("/flag".into()));
        assert_eq!(notes.len(), 2, "{notes:?}");

        let (l, _) = locate(&[named(Source::Flags, None, None)], RedisOptions::default()).unwrap();
        assert_eq!(l.location(), &Location::Directory(DEFAULT_DATA_DIR.into()));

        let e = locate(
            &[named(Source::Environment, Some("/d"), Some("redis://e"))],
            RedisOptions::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("both SESSIONDB_DATA_DIR and SESSIONDB_REDIS_URL are given"),
            "{e}"
        );
        let e = locate(
            &[named(Source::Flags, None, Some(" "))],
            RedisOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--redis-url is empty"), "{e}");
    }

    #[test]
    fn the_redis_options_become_the_librarys_settings() {
        let options = RedisOptions {
            prefix: Some("game1".into()),
            ..RedisOptions::default()
        };
        let (config, notes) = locate(
            &[named(Source::Flags, None, Some("redis://u:pw@h:6379/0"))],
            options,
        )
        .unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            config.describe(),
            "redis://u:***@h:6379/0 (prefix \"game1\")"
        );
        assert_eq!(
            Redactor::for_store(&config).text("auth pw@h failed for redis://u:pw@h:6379/0"),
            "auth pw@h failed for redis://u:***@h:6379/0"
        );
    }

    #[test]
    fn a_cluster_or_sentinels_are_a_place_of_their_own() {
        let cluster = Named {
            redis_cluster: vec!["redis://a:7000".into(), "redis://b:7000".into()],
            ..Named::new(Source::Environment)
        };
        let (l, _) = locate(std::slice::from_ref(&cluster), RedisOptions::default()).unwrap();
        assert_eq!(
            l.location(),
            &Location::Redis(RedisTarget::Cluster(vec![
                "redis://a:7000".into(),
                "redis://b:7000".into()
            ]))
        );
        assert_eq!(
            l.describe(),
            "the Redis Cluster at redis://a:7000, redis://b:7000 (prefix \"sessiondb\")"
        );

        let both = Named {
            redis_url: Some("redis://c".into()),
            ..cluster
        };
        let e = locate(&[both], RedisOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("both SESSIONDB_REDIS_URL and SESSIONDB_REDIS_CLUSTER are given"),
            "{e}"
        );

        let sentinels = Named {
            redis_sentinel: vec!["redis://s:26379".into()],
            ..Named::new(Source::Flags)
        };
        let e = locate(std::slice::from_ref(&sentinels), RedisOptions::default()).unwrap_err();
        assert!(
            e.to_string().contains("--redis-sentinel-master NAME"),
            "{e}"
        );
        let options = RedisOptions {
            sentinel_master: Some("sessions".into()),
            ..RedisOptions::default()
        };
        let (l, _) = locate(&[sentinels], options).unwrap();
        assert!(matches!(
            l.location(),
            Location::Redis(RedisTarget::Sentinel { master, .. }) if master == "sessions"
        ));
    }
}
