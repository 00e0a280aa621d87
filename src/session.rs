//! The session as stored (`Record`) and as handed to callers (`Session`),
//! and the data map a session carries.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{clip, Error, Result};

/// Longest data name accepted, in bytes.
pub const MAX_DATA_NAME_LEN: usize = 255;

/// A session's data: names mapped to JSON values. Values written through the
/// Rust API read back equal through the HTTP API and the other way round,
/// because both store the value's JSON text.
///
/// ```
/// use sessiondb::Data;
/// let mut data = Data::new();
/// data.insert("score", &42)?;
/// assert_eq!(data.get::<u32>("score")?, Some(42));
/// assert_eq!(data.get_json("score"), Some("42"));
/// # Ok::<(), sessiondb::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Data {
    /// The entries, decoded. Left empty while the data is only `stored`: a
    /// resolve answers with the whole session, but most callers never look
    /// at its data, and decoding it was a third of a hot resolve's time
    /// (criterion `read/resolve_hot`).
    map: OnceLock<BTreeMap<String, String>>,
    /// The data's stored encoding, when it came from a stored record and
    /// was not changed since: checked when the record was decoded
    /// (`codec::data_len`), decoded on first use, and written back as it
    /// is when the record is stored again.
    stored: Option<Stored>,
}

/// A stored data encoding and the codec's decoder for it, handed over
/// together so that the domain types do not depend on the codec.
#[derive(Clone)]
struct Stored {
    bytes: Box<[u8]>,
    entries: DecodeEntries,
}

/// Decodes a data encoding that passed the codec's checks into its entries.
pub(crate) type DecodeEntries = fn(&[u8]) -> BTreeMap<String, String>;

impl Data {
    /// Data read from a record: `stored` must have passed
    /// `codec::data_len`; `entries` decodes it on first use.
    pub(crate) fn from_stored(stored: &[u8], entries: DecodeEntries) -> Data {
        Data {
            map: OnceLock::new(),
            stored: Some(Stored {
                bytes: stored.into(),
                entries,
            }),
        }
    }

    /// The stored encoding, while the data is unchanged since it was read.
    pub(crate) fn stored(&self) -> Option<&[u8]> {
        self.stored.as_ref().map(|s| &*s.bytes)
    }

    fn map(&self) -> &BTreeMap<String, String> {
        self.map.get_or_init(|| match &self.stored {
            Some(stored) => (stored.entries)(&stored.bytes),
            None => BTreeMap::new(),
        })
    }

    /// The entries, to change: the stored encoding no longer holds.
    fn map_mut(&mut self) -> &mut BTreeMap<String, String> {
        self.map();
        self.stored = None;
        match self.map.get_mut() {
            Some(map) => map,
            None => unreachable!("Data::map initialises the map"),
        }
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        match (self.stored(), other.stored()) {
            (Some(a), Some(b)) => a == b,
            _ => self.map() == other.map(),
        }
    }
}

impl Eq for Data {}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.map().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Data;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of data names to JSON texts")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Data, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some((Text(name), Text(json))) = map.next_entry()? {
                    entries.insert(name, json);
                }
                Ok(Data {
                    map: OnceLock::from(entries),
                    stored: None,
                })
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

impl Data {
    /// An empty map.
    pub fn new() -> Self {
        Data::default()
    }

    /// Sets `name` to `value` (converted to JSON), replacing any old value.
    ///
    /// # Errors
    /// [`Error::InvalidDataName`] for an empty or over-long name;
    /// [`Error::Data`] when `value` cannot be converted to JSON.
    pub fn insert<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<&mut Self> {
        check_data_name(name)?;
        let json = serde_json::to_string(value).map_err(|source| Error::Data {
            name: clip(name),
            source,
        })?;
        self.map_mut().insert(name.to_owned(), json);
        Ok(self)
    }

    /// Sets `name` to JSON text, which is checked to be valid JSON and
    /// stored in compact form.
    ///
    /// # Errors
    /// [`Error::InvalidDataName`] for a bad name; [`Error::Data`] when `json`
    /// is not JSON.
    pub fn insert_json(&mut self, name: &str, json: &str) -> Result<&mut Self> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|source| Error::Data {
                name: clip(name),
                source,
            })?;
        self.insert(name, &value)
    }

    /// The value under `name`, converted from JSON into `T`.
    ///
    /// # Errors
    /// [`Error::Data`] when the stored JSON does not fit `T`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.map()
            .get(name)
            .map(|json| {
                serde_json::from_str(json).map_err(|source| Error::Data {
                    name: clip(name),
                    source,
                })
            })
            .transpose()
    }

    /// The JSON text stored under `name`.
    pub fn get_json(&self, name: &str) -> Option<&str> {
        self.map().get(name).map(String::as_str)
    }

    /// Sets already-checked JSON text (from `insert`/`insert_json`).
    pub(crate) fn set_json_unchecked(&mut self, name: &str, json: &str) {
        self.map_mut().insert(name.to_owned(), json.to_owned());
    }

    /// Removes `name`; returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.map_mut().remove(name).is_some()
    }

    /// Whether `name` is set.
    pub fn contains(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }

    /// Names and JSON texts, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map().iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many names are set.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no name is set.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// The size counted against `Config::max_data_bytes`: names plus JSON texts.
    pub fn size(&self) -> usize {
        self.map().iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Checks what `insert` checks, for data that may not have come through
    /// it: a deserialised `Data` (or one swapped whole in `update`) can hold
    /// any names and texts, and the store must not keep a name `insert`
    /// refuses or a value that is not JSON.
    pub(crate) fn check(&self) -> Result<()> {
        for (name, json) in self.map() {
            check_data_name(name)?;
            serde_json::from_str::<serde::de::IgnoredAny>(json).map_err(|source| Error::Data {
                name: clip(name),
                source,
            })?;
        }
        Ok(())
    }
}

pub(crate) fn check_data_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_DATA_NAME_LEN {
        "must be at most 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidDataName {
        name: clip(name),
        problem,
    })
}

/// A string read as borrowed text and copied once. Every resolve decodes a
/// whole record, and bincode reads an owned `String` through a zeroed
/// temporary buffer; this path cut the decode's instructions by a fifth
/// (callgrind).
pub(crate) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Chars;
        impl Visitor<'_> for Chars {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Text, E> {
                Ok(Text(s.to_owned()))
            }
        }
        deserializer.deserialize_str(Chars)
    }
}

/// A session as the store knows it. Its stored layout is `codec`'s alone
/// (`docs/format.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub actor_id: String,
    pub expires_at: u64,
    /// Where the session's expiry entry is filed: at or before `expires_at`.
    /// A use that slides the expiry later leaves the entry where it is (one
    /// key written instead of three); the reaper, meeting an entry whose
    /// session is not due yet, files it again at the real expiry.
    pub filed_at: u64,
    pub app_version: Option<String>,
    pub revision: u64,
    pub id: String,
    pub language: String,
    pub created_at: u64,
    pub deadline: Option<u64>,
    pub node_id: Option<String>,
    pub data: Data,
}

/// The facts of a record that key validity depends on, decoded without the
/// rest (`codec::decode_head`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordHead {
    pub actor_id: String,
    pub expires_at: u64,
    pub app_version: Option<String>,
}

/// A session handed to the caller. Two are equal when everything the API
/// shows of them is (where the store files a session's expiry entry is not).
#[derive(Debug, Clone)]
pub struct Session {
    pub(crate) key: Option<String>,
    pub(crate) record: Record,
}

impl PartialEq for Session {
    fn eq(&self, other: &Session) -> bool {
        let (a, b) = (&self.record, &other.record);
        self.key == other.key
            && Record {
                filed_at: b.filed_at,
                ..a.clone()
            } == *b
    }
}

impl Eq for Session {}

fn to_datetime(ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Session {
    /// The full key `actorId:secret`, present on sessions obtained through a
    /// key or just created (`register`, `resolve`, `restore`, `extend`,
    /// `reassign`), absent on sessions found by actor. The store keeps only
    /// a digest of the secret and cannot show the key again.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The public session id: not secret, fit for logs, events and other players.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The actor (player) the session belongs to.
    pub fn actor_id(&self) -> &str {
        &self.record.actor_id
    }

    /// The actor's language code (default `en`).
    pub fn language(&self) -> &str {
        &self.record.language
    }

    /// When the session was registered.
    pub fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.record.created_at)
    }

    /// When the session expires unless used again (the stored expiry).
    pub fn expires_at(&self) -> DateTime<Utc> {
        to_datetime(self.record.expires_at)
    }

    /// The stored expiry in Unix milliseconds.
    pub fn expires_at_ms(&self) -> u64 {
        self.record.expires_at
    }

    /// The absolute deadline set by `Config::max_lifetime`, if any.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.record.deadline.map(to_datetime)
    }

    /// The app version that created the session (`Config::app_version`).
    pub fn version(&self) -> Option<&str> {
        self.record.app_version.as_deref()
    }

    /// The node (MAGE cluster id) that created the session.
    pub fn node_id(&self) -> Option<&str> {
        self.record.node_id.as_deref()
    }

    /// Bumped on every write to the session.
    pub fn revision(&self) -> u64 {
        self.record.revision
    }

    /// The session's data.
    pub fn data(&self) -> &Data {
        &self.record.data
    }

    /// The data value under `name`, converted into `T`.
    ///
    /// # Errors
    /// [`Error::Data`] when the stored JSON does not fit `T`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.record.data.get(name)
    }
}

/// Where an actor can be reached: MAGE's `getActorAddresses` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorAddress {
    /// The actor.
    pub actor_id: String,
    /// The node (MAGE cluster id) holding the actor's session, if known.
    pub node_id: Option<String>,
    /// The public id of the actor's newest live session.
    pub session_id: String,
    /// The actor's language.
    pub language: String,
}
