//! The stored record format, in one place. `docs/format.md` describes every
//! byte; fixtures in `tests/fixtures/` hold encoded records of each released
//! format and must keep decoding.
//!
//! The layout is the field order of the private wire structs below, encoded
//! with bincode; the domain types (`Record`, `RecordHead`) know nothing of it.

use std::collections::BTreeMap;

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::key::Digest;
use crate::session::{Data, Record, RecordHead, Text};

/// The record format this build writes, stored as the first byte of every
/// session record. Format 2 appends the expiry entry's lead (`expires_at -
/// filed_at`) to format 1's fields; format 1 records (whose entry is at their
/// expiry) are still read, and written as format 2 when next changed.
pub const RECORD_FORMAT: u8 = 2;

/// The oldest record format this build reads.
const OLDEST_RECORD_FORMAT: u8 = 1;

/// Largest record accepted by the decoder; guards allocations against
/// corrupt length prefixes.
pub(crate) const MAX_RECORD_BYTES: usize = 32 * 1024 * 1024;

/// The one bincode configuration of the stored format: little-endian,
/// variable-length integers, at most `MAX_RECORD_BYTES` per record.
fn config() -> Configuration<LittleEndian, Varint, Limit<MAX_RECORD_BYTES>> {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
}

/// A record as written: field order is the stored format. The fields a
/// validity check needs come first, so that they decode without the data.
#[derive(Serialize)]
struct WireOut<'a> {
    actor_id: &'a str,
    expires_at: u64,
    app_version: Option<&'a str>,
    revision: u64,
    id: &'a str,
    language: &'a str,
    created_at: u64,
    deadline: Option<u64>,
    node_id: Option<&'a str>,
    // Then the data (`encode_data`), the last field of format 1.
}

impl<'a> From<&'a Record> for WireOut<'a> {
    fn from(r: &'a Record) -> Self {
        WireOut {
            actor_id: &r.actor_id,
            expires_at: r.expires_at,
            app_version: r.app_version.as_deref(),
            revision: r.revision,
            id: &r.id,
            language: &r.language,
            created_at: r.created_at,
            deadline: r.deadline,
            node_id: r.node_id.as_deref(),
        }
    }
}

/// A record as read; the same fields as [`WireOut`], in the same order.
#[derive(Deserialize)]
struct WireIn {
    #[serde(deserialize_with = "text")]
    actor_id: String,
    expires_at: u64,
    #[serde(deserialize_with = "optional_text")]
    app_version: Option<String>,
    revision: u64,
    #[serde(deserialize_with = "text")]
    id: String,
    #[serde(deserialize_with = "text")]
    language: String,
    created_at: u64,
    deadline: Option<u64>,
    #[serde(deserialize_with = "optional_text")]
    node_id: Option<String>,
    // Then the data, checked by `data_len` and kept as it is stored.
}

impl WireIn {
    fn with_data(self, data: Data) -> Record {
        let w = self;
        Record {
            actor_id: w.actor_id,
            expires_at: w.expires_at,
            // Format 1 files every entry at its expiry; format 2 reads its lead.
            filed_at: w.expires_at,
            app_version: w.app_version,
            revision: w.revision,
            id: w.id,
            language: w.language,
            created_at: w.created_at,
            deadline: w.deadline,
            node_id: w.node_id,
            data,
        }
    }
}

/// The leading fields of [`WireIn`].
#[derive(Deserialize)]
struct WireHead {
    #[serde(deserialize_with = "text")]
    actor_id: String,
    expires_at: u64,
    #[serde(deserialize_with = "optional_text")]
    app_version: Option<String>,
}

// Strings are read as borrowed text and copied once: bincode reads an owned
// `String` through a zeroed temporary buffer, and every resolve decodes a
// record (a fifth fewer instructions per decode, callgrind).
fn text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Text::deserialize(d).map(|t| t.0)
}

fn optional_text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Option::<Text>::deserialize(d).map(|t| t.map(|t| t.0))
}

/// How far before its expiry a record's expiry entry is filed (format 2's
/// last field). Never negative: an entry after the expiry would let the
/// session outlive it.
fn lead(record: &Record) -> u64 {
    record.expires_at.saturating_sub(record.filed_at)
}

/// Writes a record's body in the current format: format 1's fields, then
/// the lead.
fn encode_body<W: bincode::enc::write::Writer>(
    record: &Record,
    mut out: W,
) -> std::result::Result<(), bincode::error::EncodeError> {
    encode_format_1(record, &mut out)?;
    bincode::encode_into_writer(lead(record), out, config())
}

/// Writes format 1's fields: the leading ones, then the data.
fn encode_format_1<W: bincode::enc::write::Writer>(
    record: &Record,
    mut out: W,
) -> std::result::Result<(), bincode::error::EncodeError> {
    bincode::serde::encode_into_writer(WireOut::from(record), &mut out, config())?;
    match record.data.stored() {
        // Unchanged since it was read: its bytes, checked then, as they are.
        Some(bytes) => out.write(bytes),
        None => bincode::serde::encode_into_writer(&record.data, out, config()),
    }
}

/// Encodes a record: the format byte, then the bincode body.
pub(crate) fn encode(record: &Record) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128 + record.data.size());
    out.push(RECORD_FORMAT);
    encode_body(record, VecWriter(&mut out)).map_err(|e| Error::Corrupt {
        what: format!("session {}", record.id),
        problem: format!("could not be encoded: {e}"),
    })?;
    Ok(out)
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// The record's format byte and its body.
fn body(bytes: &[u8]) -> std::result::Result<(u8, &[u8]), String> {
    match bytes.split_first() {
        Some((&v, body)) if (OLDEST_RECORD_FORMAT..=RECORD_FORMAT).contains(&v) => Ok((v, body)),
        Some((v, _)) => Err(format!(
            "unknown record format {v} (this build reads {OLDEST_RECORD_FORMAT} to {RECORD_FORMAT})"
        )),
        None => Err("empty record".into()),
    }
}

/// Decodes a whole record. The whole input must be consumed.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Record, String> {
    let (format, body) = body(bytes)?;
    let (wire, mut used): (WireIn, usize) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| e.to_string())?;
    let data = &body[used..];
    let data_len = data_len(data)?;
    used += data_len;
    let mut record = wire.with_data(Data::from_stored(&data[..data_len], data_map));
    if format >= 2 {
        let (lead, n): (u64, usize) =
            bincode::decode_from_slice(&body[used..], config()).map_err(|e| e.to_string())?;
        used += n;
        record.filed_at = record
            .expires_at
            .checked_sub(lead)
            .ok_or_else(|| format!("expiry entry filed {lead} ms before time 0"))?;
    }
    if used != body.len() {
        return Err(format!(
            "{} trailing bytes after the record",
            body.len() - used
        ));
    }
    // bincode also reads integers in a wider form than needed; the stored
    // format has one encoding per record, so any other is corruption
    // (`data_len` checks the data's part).
    if !encodes_to(&record, body, format) {
        return Err(
            "not in the canonical encoding (an integer wider than needed, \
                    or data names out of order or repeated)"
                .into(),
        );
    }
    Ok(record)
}

/// Whether `record` encodes to exactly `body`, checked by encoding into a
/// writer that compares as it goes: no buffer, and it stops at the first
/// difference.
fn encodes_to(record: &Record, body: &[u8], format: u8) -> bool {
    struct Compare<'a> {
        rest: &'a [u8],
    }
    impl bincode::enc::write::Writer for Compare<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
            match self.rest.strip_prefix(bytes) {
                Some(rest) => {
                    self.rest = rest;
                    Ok(())
                }
                None => Err(bincode::error::EncodeError::Other("differs")),
            }
        }
    }
    let mut compare = Compare { rest: body };
    let encoded = if format >= 2 {
        encode_body(record, &mut compare)
    } else {
        encode_format_1(record, &mut compare)
    };
    encoded.is_ok() && compare.rest.is_empty()
}

/// The data's encoding: a bincode map of strings, names in ascending byte
/// order (which rules out repeats), every integer in its shortest form.
/// Returns how many bytes of `bytes` it takes; what follows is not data.
/// Checked without building the map: a resolve decodes the data only when
/// its caller reads it (`Data`).
fn data_len(bytes: &[u8]) -> std::result::Result<usize, String> {
    let mut entries = data_entries(bytes);
    let mut last: Option<&str> = None;
    for entry in entries.by_ref() {
        let (name, _) = entry?;
        if last.is_some_and(|last| last >= name) {
            return Err(
                "not in the canonical encoding (data names out of order or repeated)".into(),
            );
        }
        last = Some(name);
    }
    Ok(bytes.len() - entries.rest.len())
}

/// The entries of a data encoding that passed [`data_len`] (so every one
/// decodes), as a map: how `Data` decodes its stored encoding on first use.
fn data_map(bytes: &[u8]) -> BTreeMap<String, String> {
    data_entries(bytes)
        .filter_map(std::result::Result::ok)
        .map(|(name, json)| (name.to_owned(), json.to_owned()))
        .collect()
}

/// The entries of a data encoding (see [`data_len`]), in stored order; an
/// entry that cannot be read ends the iteration with its error.
fn data_entries(bytes: &[u8]) -> DataEntries<'_> {
    DataEntries {
        rest: bytes,
        left: None,
    }
}

struct DataEntries<'a> {
    rest: &'a [u8],
    /// Entries still to read; `None` before the count is read.
    left: Option<u64>,
}

impl<'a> DataEntries<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let (value, used): (u64, usize) =
            bincode::decode_from_slice(self.rest, config()).map_err(|e| e.to_string())?;
        let shortest = match value {
            0..=250 => 1,
            251..=0xffff => 3,
            0x1_0000..=0xffff_ffff => 5,
            _ => 9,
        };
        if used != shortest {
            return Err("not in the canonical encoding (an integer wider than needed)".into());
        }
        self.rest = &self.rest[used..];
        Ok(value)
    }

    fn text(&mut self) -> std::result::Result<&'a str, String> {
        let len = self.varint()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= self.rest.len())
            .ok_or_else(|| format!("data text of {len} bytes runs past the record"))?;
        let (text, rest) = self.rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(text).map_err(|e| format!("data text is not UTF-8: {e}"))
    }

    fn entry(&mut self) -> std::result::Result<Option<(&'a str, &'a str)>, String> {
        let left = match self.left {
            Some(left) => left,
            None => self.varint()?,
        };
        if left == 0 {
            self.left = Some(0);
            return Ok(None);
        }
        self.left = Some(left - 1);
        Ok(Some((self.text()?, self.text()?)))
    }
}

impl<'a> Iterator for DataEntries<'a> {
    type Item = std::result::Result<(&'a str, &'a str), String>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.entry() {
            Ok(entry) => entry.map(Ok),
            Err(e) => {
                // Nothing more can be read after a bad entry.
                self.left = Some(0);
                Some(Err(e))
            }
        }
    }
}

/// Decodes the record stored under `digest`, reporting a failure as
/// corruption of that session.
pub(crate) fn decode_stored(digest: &Digest, bytes: &[u8]) -> Result<Record> {
    decode(bytes).map_err(|problem| corrupt(digest, problem))
}

/// As [`decode_stored`], for the leading fields only.
pub(crate) fn decode_stored_head(digest: &Digest, bytes: &[u8]) -> Result<RecordHead> {
    decode_head(bytes).map_err(|problem| corrupt(digest, problem))
}

fn corrupt(digest: &Digest, problem: String) -> Error {
    Error::Corrupt {
        what: format!("session with digest {}", digest.hex()),
        problem,
    }
}

/// Decodes only the leading fields a validity check needs.
pub(crate) fn decode_head(bytes: &[u8]) -> std::result::Result<RecordHead, String> {
    let (_, body) = body(bytes)?;
    let (head, _): (WireHead, usize) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| e.to_string())?;
    Ok(RecordHead {
        actor_id: head.actor_id,
        expires_at: head.expires_at,
        app_version: head.app_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Data;

    pub(crate) fn sample() -> Record {
        let mut data = Data::new();
        data.insert("score", &42).unwrap();
        Record {
            actor_id: "player-1".into(),
            expires_at: 1_700_000_600_000,
            filed_at: 1_700_000_300_000,
            app_version: Some("1.2.3".into()),
            revision: 3,
            id: "AAAAAAAAAAAAAAAA".into(),
            language: "en".into(),
            created_at: 1_700_000_000_000,
            deadline: None,
            node_id: Some("node-a".into()),
            data,
        }
    }

    /// The worked example of `docs/format.md`, byte for byte.
    fn documented_example() -> Record {
        let mut data = Data::new();
        data.insert("visits", &3).unwrap();
        data.insert("name", "Ada").unwrap();
        Record {
            actor_id: "p1".into(),
            expires_at: 1_700_000_600_000,
            filed_at: 1_700_000_600_000 - 300,
            app_version: Some("1.2.0".into()),
            revision: 300,
            id: "AbCdEfGhIjKlMnOp".into(),
            language: "en".into(),
            created_at: 1_700_000_000_000,
            deadline: None,
            node_id: None,
            data,
        }
    }

    /// Hex of `documented_example()`, one field per line as in
    /// `docs/format.md`. If this test fails, the stored format changed:
    /// bump `RECORD_FORMAT`, keep a fixture of the old format in
    /// `tests/fixtures/`, and update the document, in that order.
    const DOCUMENTED_HEX: &[&str] = &[
        "02",                                                 // RECORD_FORMAT
        "02 70 31",                                           // actor_id "p1"
        "fd c0 8f ee cf 8b 01 00 00",                         // expires_at 1700000600000
        "01 05 31 2e 32 2e 30",                               // app_version Some("1.2.0")
        "fb 2c 01",                                           // revision 300
        "10 41 62 43 64 45 66 47 68 49 6a 4b 6c 4d 6e 4f 70", // id
        "02 65 6e",                                           // language "en"
        "fd 00 68 e5 cf 8b 01 00 00",                         // created_at 1700000000000
        "00",                                                 // deadline None
        "00",                                                 // node_id None
        "02",                                                 // data: 2 entries
        "04 6e 61 6d 65 05 22 41 64 61 22",                   // "name" => "\"Ada\""
        "06 76 69 73 69 74 73 01 33",                         // "visits" => "3"
        "fb 2c 01", // lead 300: filed_at = expires_at - 300
    ];

    #[test]
    fn encodes_the_documented_example_exactly() {
        let expected: Vec<u8> = DOCUMENTED_HEX
            .iter()
            .flat_map(|line| line.split_whitespace())
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        let record = documented_example();
        let bytes = encode(&record).unwrap();
        assert_eq!(
            bytes, expected,
            "the stored format changed; see docs/format.md"
        );
        assert_eq!(bytes.len(), 78);
        assert_eq!(decode(&expected).unwrap(), record);
        let head = decode_head(&expected).unwrap();
        assert_eq!(head.actor_id, "p1");
        assert_eq!(head.expires_at, 1_700_000_600_000);
        assert_eq!(head.app_version.as_deref(), Some("1.2.0"));
    }

    fn documented_bytes_with(line: usize, replacement: &str) -> Vec<u8> {
        DOCUMENTED_HEX
            .iter()
            .enumerate()
            .map(|(i, l)| if i == line { replacement } else { l })
            .flat_map(|l| l.split_whitespace())
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// Format 1 (before `filed_at`): the same fields without the lead; the
    /// entry is filed at the expiry.
    #[test]
    fn decodes_format_1_with_the_entry_at_the_expiry() {
        let mut v1 = documented_bytes_with(0, "01");
        v1.truncate(v1.len() - 3);
        let record = decode(&v1).unwrap();
        let mut expected = documented_example();
        expected.filed_at = expected.expires_at;
        assert_eq!(record, expected);
        assert_eq!(decode_head(&v1).unwrap().expires_at, expected.expires_at);
        // A format 1 record that carries a lead has trailing bytes.
        let mut with_lead = v1.clone();
        with_lead.push(0);
        assert!(decode(&with_lead).unwrap_err().contains("trailing"));
        // Written again, it is format 2.
        assert_eq!(encode(&record).unwrap()[0], 2);
    }

    #[test]
    fn refuses_an_entry_filed_before_time_zero() {
        let mut r = documented_example();
        r.expires_at = 5;
        r.filed_at = 5;
        let mut bytes = encode(&r).unwrap();
        // Lead 6 > expires_at 5.
        *bytes.last_mut().unwrap() = 6;
        assert!(decode(&bytes).unwrap_err().contains("before time 0"));
    }

    #[test]
    fn rejects_encodings_that_are_not_canonical() {
        // The id's length 16 written in the three-byte form.
        let wide = documented_bytes_with(
            5,
            "fb 10 00 41 62 43 64 45 66 47 68 49 6a 4b 6c 4d 6e 4f 70",
        );
        // The two data entries in the wrong order.
        let mut swapped = documented_bytes_with(11, "06 76 69 73 69 74 73 01 33");
        swapped.truncate(swapped.len() - 9 - 3);
        swapped.extend([
            0x04, 0x6e, 0x61, 0x6d, 0x65, 0x05, 0x22, 0x41, 0x64, 0x61, 0x22, 0xfb, 0x2c, 0x01,
        ]);
        // Both decode field by field, and both are refused.
        for bytes in [wide, swapped] {
            let problem = decode(&bytes).unwrap_err();
            assert!(problem.contains("canonical"), "{problem}");
        }
    }

    #[test]
    fn round_trips_and_head_matches() {
        let r = sample();
        let bytes = encode(&r).unwrap();
        assert_eq!(bytes[0], RECORD_FORMAT);
        assert_eq!(decode(&bytes).unwrap(), r);
        let head = decode_head(&bytes).unwrap();
        assert_eq!(
            (head.actor_id.as_str(), head.expires_at),
            ("player-1", r.expires_at)
        );
        assert_eq!(head.app_version.as_deref(), Some("1.2.3"));
    }

    #[test]
    fn rejects_unknown_format_truncation_and_trailing_bytes() {
        let bytes = encode(&sample()).unwrap();
        assert!(decode(&[]).is_err());
        let mut newer = bytes.clone();
        newer[0] = RECORD_FORMAT + 1;
        assert!(decode(&newer)
            .unwrap_err()
            .contains("unknown record format 3"));
        let mut older = bytes.clone();
        older[0] = 0;
        assert!(decode(&older)
            .unwrap_err()
            .contains("unknown record format 0"));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().contains("trailing"));
    }

    /// A decoded record keeps its data's bytes: written again unchanged, it
    /// is the same bytes; read, it is the same entries; changed, it is
    /// encoded from the entries.
    #[test]
    fn data_is_read_on_use_and_written_back_as_stored() {
        let expected = documented_example();
        let bytes = encode(&expected).unwrap();
        let mut record = decode(&bytes).unwrap();
        assert!(record.data.stored().is_some());
        record.expires_at += 1_000;
        record.filed_at += 1_000;
        let moved = encode(&record).unwrap();
        assert_eq!(decode(&moved).unwrap(), record);
        assert_eq!(record.data.get_json("name"), Some("\"Ada\""));
        assert_eq!(record.data.get::<u32>("visits").unwrap(), Some(3));
        assert_eq!(record.data, expected.data);
        record.data.insert("level", &2).unwrap();
        assert!(record.data.stored().is_none());
        let changed = decode(&encode(&record).unwrap()).unwrap();
        let names: Vec<&str> = changed.data.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["level", "name", "visits"]);
        assert!(record.data.remove("name") && !record.data.contains("name"));
    }

    /// Data is checked when its record is decoded, though it is decoded
    /// only when read: a corrupt data part is refused at once.
    #[test]
    fn refuses_corrupt_data_when_the_record_is_decoded() {
        let cases = [
            // "name" twice.
            (12, "04 6e 61 6d 65 05 22 41 64 61 22", "canonical"),
            // The count in the three-byte form.
            (10, "fb 02 00", "canonical"),
            // A name that is not UTF-8.
            (11, "04 6e 61 6d ff 05 22 41 64 61 22", "UTF-8"),
            // A value running past the record.
            (12, "06 76 69 73 69 74 73 7f 33", "past the record"),
        ];
        for (line, replacement, problem) in cases {
            let bytes = documented_bytes_with(line, replacement);
            let found = decode(&bytes).unwrap_err();
            assert!(found.contains(problem), "{replacement}: {found}");
        }
    }
}
