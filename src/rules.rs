//! The session rules that reads and writes share: when a key is valid, and
//! where a session's expiry goes.

use crate::config::Settings;
use crate::error::{Error, Reason, Result};
use crate::session::Record;

/// The leading facts of a stored session that validity depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    pub actor_id: &'a str,
    pub expires_at: u64,
    pub app_version: Option<&'a str>,
}

/// The newest of `records` still live at `now`: the session that speaks for
/// its actor (`actor_session`, `actor_addresses`).
pub(crate) fn newest_live(records: impl IntoIterator<Item = Record>, now: u64) -> Option<Record> {
    records
        .into_iter()
        .filter(|r| r.expires_at > now)
        .max_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
}

#[derive(Debug)]
pub(crate) struct Rules {
    pub settings: Settings,
}

impl Rules {
    /// The expiry a session gets when used at `now`: `now + ttl`, but never
    /// past its absolute deadline.
    pub fn expiry_at(&self, now: u64, deadline: Option<u64>) -> u64 {
        let idle = now.saturating_add(self.settings.ttl_ms);
        deadline.map_or(idle, |d| idle.min(d))
    }

    /// The absolute deadline of a session created at `now`, if configured.
    pub fn deadline_for(&self, now: u64) -> Option<u64> {
        self.settings.max_lifetime_ms.map(|l| now.saturating_add(l))
    }

    /// Whether a use at `now` moves the expiry far enough to be written.
    pub fn should_touch(&self, stored: u64, wanted: u64) -> bool {
        wanted >= stored.saturating_add(self.settings.touch_ms.max(1))
    }

    /// Whether a session made by `version` may be used by this app version:
    /// the same `major.minor`, as MAGE's `major.minor.x` range.
    pub fn version_ok(&self, version: Option<&str>) -> bool {
        let Some(current) = &self.settings.app_version else {
            return true;
        };
        version
            .and_then(|v| semver::Version::parse(v).ok())
            .is_some_and(|v| v.major == current.major && v.minor == current.minor)
    }

    /// Decides whether a key naming `key_actor` is valid at `now`, given the
    /// session stored under its digest (if any). `actor_has_live` is asked
    /// only when the session is missing or belongs to someone else, to tell
    /// `noSession` from `keyMismatch`.
    pub fn check(
        &self,
        stored: Option<Facts<'_>>,
        key_actor: &str,
        now: u64,
        actor_has_live: impl FnOnce() -> Result<bool>,
    ) -> Result<()> {
        match stored {
            Some(f) if f.actor_id == key_actor => {
                if f.expires_at <= now {
                    Err(Error::Invalid(Reason::Expired))
                } else if !self.version_ok(f.app_version) {
                    Err(Error::Invalid(Reason::BadVersion))
                } else {
                    Ok(())
                }
            }
            _ if actor_has_live()? => Err(Error::Invalid(Reason::KeyMismatch)),
            _ => Err(Error::Invalid(Reason::NoSession)),
        }
    }
}
