//! The one error type of the crate, and the validation outcomes clients see.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// Why a session key was rejected. The string forms are MAGE's, so clients
/// that already handle MAGE's session errors keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The full key has no `:` separating the actor id from the secret, or
    /// either part is malformed. (`"invalidSessionKey"`)
    InvalidSessionKey,
    /// The actor has no session. (`"noSession"`)
    NoSession,
    /// The actor has a session, but not the one this key names. (`"keyMismatch"`)
    KeyMismatch,
    /// The session was made by an app version outside the current
    /// `major.minor.x`. (`"badVersion"`)
    BadVersion,
    /// The session has passed its expiry and is waiting to be reaped. (`"expired"`)
    Expired,
}

impl Reason {
    /// All reasons, in declaration order.
    pub const ALL: [Reason; 5] = [
        Reason::InvalidSessionKey,
        Reason::NoSession,
        Reason::KeyMismatch,
        Reason::BadVersion,
        Reason::Expired,
    ];

    /// MAGE's string for this reason, such as `"noSession"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSessionKey => "invalidSessionKey",
            Reason::NoSession => "noSession",
            Reason::KeyMismatch => "keyMismatch",
            Reason::BadVersion => "badVersion",
            Reason::Expired => "expired",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = Error;

    /// Parses MAGE's string form (`"noSession"`, ...).
    ///
    /// # Errors
    /// [`Error::InvalidReason`] for any other string.
    fn from_str(s: &str) -> Result<Self, Error> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::InvalidReason {
                reason: s.chars().take(64).collect(),
                problem:
                    "not one of invalidSessionKey, noSession, keyMismatch, badVersion, expired",
            })
    }
}

/// A storage-engine failure. Its source (the engine's own error) is kept for
/// the error chain, but the engine's types stay out of the public API.
#[derive(Debug)]
pub struct StorageError {
    context: &'static str,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl StorageError {
    pub(crate) fn new(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        StorageError {
            context,
            source: source.into(),
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Everything that can go wrong in sessiondb.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The session key was rejected; the reason is what the client should be told.
    #[error("session key rejected: {0}")]
    Invalid(Reason),

    /// The actor id is empty, too long, or contains a control character.
    #[error("invalid actor id {actor_id:?}: {problem}")]
    InvalidActorId {
        /// The offending actor id (cut to 64 characters).
        actor_id: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// The language code is empty, too long, or not `[A-Za-z0-9_-]`.
    #[error("invalid language {language:?}: {problem}")]
    InvalidLanguage {
        /// The offending language code (cut to 64 characters).
        language: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// A data name is empty or too long.
    #[error("invalid data name {name:?}: {problem}")]
    InvalidDataName {
        /// The offending name (cut to 64 characters).
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// The session's data would exceed `Config::max_data_bytes`.
    #[error("session data too large: {size} bytes, the limit is {limit} (Config::max_data_bytes)")]
    DataTooLarge {
        /// Encoded size the data would have.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A value could not be converted to or from JSON.
    #[error("data value {name:?} could not be converted: {source}")]
    Data {
        /// The data name.
        name: String,
        /// The serde_json error.
        #[source]
        source: serde_json::Error,
    },

    /// An unset reason or validation reason string is not acceptable.
    #[error("invalid reason {reason:?}: {problem}")]
    InvalidReason {
        /// The offending reason (cut to 64 characters).
        reason: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// A configuration value is out of range; raised by `SessionStore::open`.
    #[error("invalid configuration: {setting}: {problem}")]
    InvalidConfig {
        /// The setting's name, as in the `Config` setter.
        setting: &'static str,
        /// What is wrong and what is allowed.
        problem: String,
    },

    /// Another process (or another open store in this process) holds the
    /// store directory.
    #[error("store at {path} is in use by another process; stop it or open another directory")]
    InUse {
        /// The store directory.
        path: PathBuf,
        /// The underlying lock error.
        #[source]
        source: StorageError,
    },

    /// The store was written by a newer sessiondb whose format this version
    /// cannot read.
    #[error("store format {found} is newer than this sessiondb supports ({supported}); upgrade sessiondb")]
    NewerFormat {
        /// The format version found in the store.
        found: u32,
        /// The newest format this build reads.
        supported: u32,
    },

    /// A stored record or index entry could not be decoded. Only the named
    /// session is affected; the rest of the store keeps working.
    #[error("corrupt record {what}: {problem} (`check` reports such records, `repair` moves them to the quarantine)")]
    Corrupt {
        /// Which record: a session id where known, else the hex digest or key.
        what: String,
        /// What failed.
        problem: String,
    },

    /// The storage engine failed (disk full, I/O error, ...).
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),

    /// A file-system operation around the store failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An import's input is not what `SessionStore::export` writes, or a
    /// session in it clashes with the store; sessions before this line
    /// were imported in earlier batches.
    #[error("import stopped at line {line}: {problem}")]
    Import {
        /// The line of the input (1 is the header).
        line: u64,
        /// What is wrong with it.
        problem: String,
    },

    /// Writing an export to its output failed.
    #[error("writing the export failed: {source}")]
    ExportWrite {
        /// The output's error.
        #[source]
        source: std::io::Error,
    },

    /// Session metadata breaks its bounds: more than `MAX_META_ENTRIES`
    /// entries, a name that is not 1 to `MAX_META_NAME_LEN` bytes of
    /// `[A-Za-z0-9_.-]`, or a value over `MAX_META_VALUE_LEN` bytes or
    /// holding a control character.
    #[error("invalid session metadata {name:?}: {problem}")]
    InvalidMeta {
        /// The entry's name (cut to 64 characters).
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// A public session id is not 1 to 64 URL-safe characters (`A-Z a-z
    /// 0-9 - _`), so it cannot name a session.
    #[error("invalid session id {id:?}: {problem}")]
    InvalidSessionId {
        /// The offending id (cut to 64 characters).
        id: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// `reassign` was asked to move a session to the actor that holds it.
    #[error("cannot reassign actor {actor_id:?}'s session to itself")]
    ReassignToSelf {
        /// The actor (cut to 64 characters).
        actor_id: String,
    },

    /// The operating system's random generator failed, so no secret could
    /// be made.
    #[error("the operating system's random generator failed: {source}")]
    Random {
        /// The generator's error.
        #[source]
        source: std::io::Error,
    },

    /// Other writers kept changing what an operation read, so its change was
    /// planned again and again without committing; try again later.
    #[error("the change did not settle after {attempts} attempts: other writers kept changing the same sessions")]
    Contention {
        /// How many times the change was planned.
        attempts: u32,
    },

    /// The storage server (Redis / Valkey) could not be reached, or did not
    /// answer within `Config::redis_timeout`. The store reconnects by itself;
    /// the call can be retried.
    #[error("the store's server is unavailable: {source} (the store reconnects by itself; retry)")]
    Unavailable {
        /// What failed.
        #[source]
        source: StorageError,
    },

    /// A background thread could not be started.
    #[error("could not start the store's {worker} thread: {source}")]
    WorkerStart {
        /// Which thread.
        worker: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The store has been closed.
    #[error("the session store is closed")]
    Closed,

    /// A background thread of the store panicked; the store stopped accepting
    /// writes so that nothing is half-written. Reopen it.
    #[error("the store's {worker} thread failed; reopen the store")]
    WorkerFailed {
        /// Which thread.
        worker: &'static str,
    },
}

impl Error {
    /// The validation reason, when this error is a rejected session key.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Error::Invalid(r) => Some(*r),
            _ => None,
        }
    }
}

/// One failure handed to several callers (every operation of a failed
/// batch): each gets the same error, source chain included.
#[derive(Debug, Clone)]
pub(crate) struct SharedError(Arc<Error>);

impl SharedError {
    pub fn new(error: Arc<Error>) -> Self {
        SharedError(error)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Cuts user input for inclusion in an error message.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_caller_of_a_failed_batch_keeps_the_cause_and_its_source() {
        let disk = std::io::Error::other("disk on fire");
        let cause = Arc::new(Error::Storage(StorageError::new("flushing", disk)));
        let callers: Vec<Error> = (0..2)
            .map(|_| {
                Error::Storage(StorageError::new(
                    "committing a batch",
                    SharedError::new(cause.clone()),
                ))
            })
            .collect();
        for e in &callers {
            // The chain: this caller's context, the batch's failure, the disk.
            let mut chain = Vec::new();
            let mut next: Option<&dyn std::error::Error> = Some(e);
            while let Some(err) = next {
                chain.push(err.to_string());
                next = err.source();
            }
            assert!(chain.iter().any(|m| m == "disk on fire"), "{chain:?}");
            assert!(chain[0].contains("committing a batch"), "{chain:?}");
        }
    }
}
