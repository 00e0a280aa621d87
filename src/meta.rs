//! Session metadata: a small map of strings the game server attaches to a
//! session at register (MAGE's `register(actorId, language, meta)`): the
//! device, the platform, the address it came from. Unlike data, it is not
//! the client's to change, and it is bounded tightly, because listings of an
//! actor's sessions show it for every session.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{clip, Error, Result};

/// Most entries a session's metadata holds.
pub const MAX_META_ENTRIES: usize = 16;
/// Longest metadata name, in bytes (names are 1 to 64 bytes of
/// `[A-Za-z0-9_.-]`).
pub const MAX_META_NAME_LEN: usize = 64;
/// Longest metadata value, in bytes (values are UTF-8 without control
/// characters, possibly empty).
pub const MAX_META_VALUE_LEN: usize = 256;

/// A session's metadata from the game server: names mapped to strings,
/// at most [`MAX_META_ENTRIES`] of them, each name 1 to
/// [`MAX_META_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`, each value at most
/// [`MAX_META_VALUE_LEN`] bytes of UTF-8 without control characters. So a
/// session's metadata is never more than 5 KiB.
///
/// ```
/// use sessiondb::Meta;
/// let mut meta = Meta::new();
/// meta.insert("device", "Pixel 8")?.insert("platform", "android")?;
/// assert_eq!(meta.get("platform"), Some("android"));
/// assert!(meta.insert("bad name", "x").is_err());
/// # Ok::<(), sessiondb::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Meta(BTreeMap<String, String>);

impl Meta {
    /// No entries.
    pub fn new() -> Meta {
        Meta::default()
    }

    /// Metadata from `(name, value)` pairs; a name given twice keeps its
    /// last value.
    ///
    /// # Errors
    /// As [`Meta::insert`], for the first pair it refuses.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Meta> {
        let mut meta = Meta::new();
        for (name, value) in pairs {
            meta.insert(name.as_ref(), value.as_ref())?;
        }
        Ok(meta)
    }

    /// Sets `name` to `value`, replacing any old value.
    ///
    /// # Errors
    /// [`Error::InvalidMeta`] for a name that is empty, longer than
    /// [`MAX_META_NAME_LEN`] or not `[A-Za-z0-9_.-]`; a value longer than
    /// [`MAX_META_VALUE_LEN`] or holding a control character; or a new
    /// name beyond [`MAX_META_ENTRIES`].
    pub fn insert(&mut self, name: &str, value: &str) -> Result<&mut Self> {
        check_entry(name, value)?;
        if !self.0.contains_key(name) && self.0.len() >= MAX_META_ENTRIES {
            return Err(Error::InvalidMeta {
                name: clip(name),
                problem: "more than 16 entries (MAX_META_ENTRIES)",
            });
        }
        self.0.insert(name.to_owned(), value.to_owned());
        Ok(self)
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Names and values, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many names are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no name is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks every bound, for metadata that did not come through
    /// `insert` (decoded, or deserialised from an import).
    pub(crate) fn check(&self) -> Result<()> {
        if self.0.len() > MAX_META_ENTRIES {
            return Err(Error::InvalidMeta {
                name: self
                    .0
                    .keys()
                    .nth(MAX_META_ENTRIES)
                    .map_or_else(String::new, |n| clip(n)),
                problem: "more than 16 entries (MAX_META_ENTRIES)",
            });
        }
        self.0.iter().try_for_each(|(n, v)| check_entry(n, v))
    }

    /// The entries, for the codec.
    pub(crate) fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Metadata decoded from a record, its bounds checked.
    pub(crate) fn from_entries(entries: BTreeMap<String, String>) -> Result<Meta> {
        let meta = Meta(entries);
        meta.check()?;
        Ok(meta)
    }
}

impl<'de> Deserialize<'de> for Meta {
    /// Reads a map of strings and checks every bound.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Meta, D::Error> {
        let entries = BTreeMap::<String, String>::deserialize(deserializer)?;
        Meta::from_entries(entries).map_err(serde::de::Error::custom)
    }
}

fn check_entry(name: &str, value: &str) -> Result<()> {
    let problem = if name.is_empty() {
        "the name must not be empty"
    } else if name.len() > MAX_META_NAME_LEN {
        "the name must be at most 64 bytes (MAX_META_NAME_LEN)"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "the name must be letters, digits, '_', '.' or '-'"
    } else if value.len() > MAX_META_VALUE_LEN {
        "the value must be at most 256 bytes (MAX_META_VALUE_LEN)"
    } else if value.chars().any(char::is_control) {
        "the value must not hold control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidMeta {
        name: clip(name),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(result: Result<Meta>) -> &'static str {
        match result {
            Err(Error::InvalidMeta { problem, .. }) => problem,
            other => panic!("expected InvalidMeta, got {other:?}"),
        }
    }

    #[test]
    fn every_bound_is_checked_with_its_own_message() {
        let long_name = "n".repeat(MAX_META_NAME_LEN + 1);
        let long_value = "v".repeat(MAX_META_VALUE_LEN + 1);
        assert!(problem(Meta::from_pairs([("", "x")])).contains("empty"));
        assert!(problem(Meta::from_pairs([(long_name.as_str(), "x")])).contains("64 bytes"));
        assert!(problem(Meta::from_pairs([("a b", "x")])).contains("letters"));
        assert!(problem(Meta::from_pairs([("a", long_value.as_str())])).contains("256 bytes"));
        assert!(problem(Meta::from_pairs([("a", "line\nbreak")])).contains("control"));
        let seventeen: Vec<(String, String)> = (0..=MAX_META_ENTRIES)
            .map(|i| (format!("k{i:02}"), String::new()))
            .collect();
        assert!(problem(Meta::from_pairs(seventeen)).contains("16 entries"));
    }

    #[test]
    fn the_largest_metadata_fits_and_replacing_a_name_does_not_count_twice() {
        let value = "é".repeat(MAX_META_VALUE_LEN / 2);
        let mut meta = Meta::new();
        for i in 0..MAX_META_ENTRIES {
            let name = format!("{i:0>64}");
            meta.insert(&name, &value).unwrap();
        }
        assert_eq!(meta.len(), MAX_META_ENTRIES);
        meta.insert(&format!("{:0>64}", 0), "again").unwrap();
        assert_eq!(meta.len(), MAX_META_ENTRIES);
        meta.check().unwrap();
    }

    #[test]
    fn deserialising_checks_the_bounds() {
        let ok: Meta = serde_json::from_str(r#"{"device":"phone"}"#).unwrap();
        assert_eq!(ok.get("device"), Some("phone"));
        let bad = serde_json::from_str::<Meta>(r#"{"no spaces":"x"}"#).unwrap_err();
        assert!(bad.to_string().contains("letters"), "{bad}");
    }
}
