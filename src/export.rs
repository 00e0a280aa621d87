//! Whole-store access for tools: visiting every session, finding one by its
//! public id, and moving sessions between stores as JSON lines (export and
//! import) that carry each session's digest, so that keys handed out before
//! an export keep working after the import.
//!
//! The export format (version [`EXPORT_FORMAT`]) is one JSON object per
//! line. The first line is a header, `{"format":"sessiondb-export","version":2}`;
//! every further line is one session:
//!
//! ```text
//! {"digest":"<64 hex digits>","id":"…","actorId":"…","language":"en",
//!  "createdAt":<ms>,"expiresAt":<ms>,"deadline":<ms>|null,
//!  "appVersion":"…"|null,"nodeId":"…"|null,"revision":<n>,
//!  "data":{"<name>":"<the value's JSON text>"},"meta":{"<name>":"<value>"}}
//! ```
//!
//! `meta` (version 2) is left out when the session has none; version 1
//! exports, which never have it, are still read.
//!
//! Data values are written as the JSON *text* the store holds (a string per
//! value) rather than as nested JSON, so that an import restores them byte
//! for byte, whatever key order or number spelling they had.

use std::io::{BufRead, BufWriter, Write};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::engine::Stored;
use crate::error::{clip, Error, Result};
use crate::key::{self, Digest, DIGEST_LEN};
use crate::meta::Meta;
use crate::plan::Imported;
use crate::session::{check_data_name, Data, Record, Session};
use crate::shared::About;
use crate::store::SessionStore;

/// The version of the export format that [`SessionStore::export`] writes and
/// [`SessionStore::import`] reads.
pub const EXPORT_FORMAT: u32 = 2;

const HEADER_NAME: &str = "sessiondb-export";

/// Sessions imported by one change.
const IMPORT_BATCH: usize = 256;

/// What [`SessionStore::export`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSummary {
    /// Sessions written (expired ones not yet reaped included).
    pub sessions: u64,
    /// Records left out because they do not decode (`check` reports them).
    pub corrupt: u64,
}

/// What [`SessionStore::import`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportSummary {
    /// Sessions read from the input and stored.
    pub imported: u64,
    /// Of those, how many replaced a stored session with the same digest.
    pub replaced: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
}

/// One exported session.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Line {
    digest: String,
    id: String,
    actor_id: String,
    language: String,
    created_at: u64,
    expires_at: u64,
    deadline: Option<u64>,
    app_version: Option<String>,
    node_id: Option<String>,
    revision: u64,
    data: Data,
    /// Checked as it is read (`Meta`'s `Deserialize`).
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    meta: Meta,
}

impl Line {
    fn new(digest: &Digest, r: Record) -> Line {
        Line {
            digest: digest.hex(),
            id: r.id,
            actor_id: r.actor_id,
            language: r.language,
            created_at: r.created_at,
            expires_at: r.expires_at,
            deadline: r.deadline,
            app_version: r.app_version,
            node_id: r.node_id,
            revision: r.revision,
            data: r.data,
            meta: r.meta,
        }
    }

    /// Checks every field as the store's own inputs are checked.
    fn into_record(self, max_data_bytes: usize) -> std::result::Result<(Digest, Record), String> {
        let digest = Digest::from_hex(&self.digest)
            .ok_or_else(|| format!("digest {:?} is not 64 hex digits", clip(&self.digest)))?;
        if key::check_session_id(&self.id).is_err() {
            return Err(format!(
                "id {:?} is not 1..=64 URL-safe characters",
                clip(&self.id)
            ));
        }
        key::check_actor_id(&self.actor_id).map_err(|e| e.to_string())?;
        key::check_language(&self.language).map_err(|e| e.to_string())?;
        if let Some(node) = &self.node_id {
            if node.is_empty() || node.len() > 255 {
                return Err("nodeId must be 1..=255 bytes".into());
            }
        }
        for (name, json) in self.data.iter() {
            check_data_name(name).map_err(|e| e.to_string())?;
            serde_json::from_str::<serde::de::IgnoredAny>(json).map_err(|e| {
                format!(
                    "data value {:?} is not JSON text: {e} (values are exported as strings holding JSON)",
                    clip(name)
                )
            })?;
        }
        if self.data.size() > max_data_bytes {
            return Err(Error::DataTooLarge {
                size: self.data.size(),
                limit: max_data_bytes,
            }
            .to_string());
        }
        Ok((
            digest,
            Record {
                actor_id: self.actor_id,
                expires_at: self.expires_at,
                // Filed where it expires; `Planner::import` keeps a stored
                // session's entry where it is when that is still early enough.
                filed_at: self.expires_at,
                app_version: self.app_version,
                revision: self.revision,
                id: self.id,
                language: self.language,
                created_at: self.created_at,
                deadline: self.deadline,
                node_id: self.node_id,
                data: self.data,
                meta: self.meta,
            },
        ))
    }
}

fn decode_entry(stored: &Stored<'_>) -> Result<(Digest, Record)> {
    let digest = stored.digest.ok_or_else(|| Error::Corrupt {
        what: format!("the session stored as {}", key::hex(stored.id)),
        problem: format!("its key does not hold a {DIGEST_LEN}-byte digest"),
    })?;
    let record = codec::decode(stored.bytes).map_err(|problem| Error::Corrupt {
        what: format!("session with digest {}", digest.hex()),
        problem,
    })?;
    Ok((digest, record))
}

fn bad_input(line: u64, problem: impl Into<String>) -> Error {
    Error::Import {
        line,
        problem: problem.into(),
    }
}

fn write_failed(source: std::io::Error) -> Error {
    Error::ExportWrite { source }
}

/// Writes one stored record as an export line; a record that does not
/// decode is left out and counted.
fn write_line(
    out: &mut impl Write,
    stored: &Stored<'_>,
    summary: &mut ExportSummary,
) -> Result<()> {
    match decode_entry(stored) {
        Ok((digest, record)) => {
            serde_json::to_writer(&mut *out, &Line::new(&digest, record))
                .map_err(|e| write_failed(e.into()))?;
            out.write_all(b"\n").map_err(write_failed)?;
            summary.sessions += 1;
        }
        Err(e) => {
            log::warn!("export leaves out a record: {e}");
            summary.corrupt += 1;
        }
    }
    Ok(())
}

impl SessionStore {
    /// Visits every stored session, expired ones not yet reaped included, in
    /// storage (digest) order, until `visit` returns `false`. The sessions
    /// carry no key. A record that does not decode is passed as
    /// [`Error::Corrupt`] and the walk goes on. Writes made meanwhile may or
    /// may not be seen; [`SessionStore::export`] takes a consistent snapshot.
    ///
    /// # Errors
    /// Storage errors reading the store.
    pub fn for_each_session(&self, mut visit: impl FnMut(Result<Session>) -> bool) -> Result<()> {
        self.shared().ensure_open()?;
        self.shared().engine.scan_records(&mut |stored| {
            Ok(visit(
                decode_entry(&stored).map(|(_, record)| Session { key: None, record }),
            ))
        })
    }

    /// The stored session whose public id is `id` (expired or not), found by
    /// walking the store: meant for tools, not for request paths.
    ///
    /// # Errors
    /// Storage errors reading the store (corrupt records are skipped).
    pub fn find_by_id(&self, id: &str) -> Result<Option<Session>> {
        let mut found = None;
        self.for_each_session(|s| match s {
            Ok(s) if s.id() == id => {
                found = Some(s);
                false
            }
            _ => true,
        })?;
        Ok(found)
    }

    /// The earliest stored expiry (Unix milliseconds), reaped or not: when it
    /// lies in the past, the reaper is behind by that much.
    ///
    /// # Errors
    /// Storage errors.
    pub fn earliest_expiry(&self) -> Result<Option<u64>> {
        self.shared().ensure_open()?;
        self.shared().engine.next_expiry()
    }

    /// Writes every stored session (expired ones not yet reaped included) to
    /// `out` as JSON lines (see [`EXPORT_FORMAT`] and the module docs), with
    /// its digest, so that [`SessionStore::import`] restores it exactly and
    /// its key keeps working. The snapshot is consistent: writes wait while
    /// the export runs. Records that do not decode are left out and counted.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let other = tempfile::tempdir()?;
    /// use sessiondb::{Config, Data, SessionStore};
    /// let store = SessionStore::open(Config::new(dir.path()))?;
    /// let key = store.register("p1", "en", Data::new())?.key().unwrap().to_owned();
    /// let mut lines = Vec::new();
    /// store.export(&mut lines)?;
    ///
    /// let copy = SessionStore::open(Config::new(other.path()))?;
    /// copy.import(lines.as_slice())?;
    /// assert_eq!(copy.resolve(&key)?.actor_id(), "p1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ExportWrite`] when writing to `out` fails; [`Error::Closed`]; storage
    /// errors.
    pub fn export(&self, out: impl Write) -> Result<ExportSummary> {
        let mut out = BufWriter::new(out);
        let header = Header {
            format: HEADER_NAME.into(),
            version: EXPORT_FORMAT,
        };
        serde_json::to_writer(&mut out, &header).map_err(|e| write_failed(e.into()))?;
        out.write_all(b"\n").map_err(write_failed)?;

        let shared = self.shared();
        shared.ensure_open()?;
        // No write lands in the middle of the scan.
        let _held = shared.engine.hold_writes()?;
        let mut summary = ExportSummary::default();
        shared.engine.scan_records(&mut |stored| {
            write_line(&mut out, &stored, &mut summary)?;
            Ok(true)
        })?;
        out.flush().map_err(write_failed)?;
        Ok(summary)
    }

    /// Reads sessions written by [`SessionStore::export`] and stores them
    /// exactly as they were (digest, id, expiry, revision and data), with
    /// all their index entries, in batches of up to 256 sessions (cut per
    /// bucket on Redis, where each batch is atomic). A stored session of the
    /// same actor with the same digest is replaced. No events are sent,
    /// since no client-visible change happened; sessions that are already
    /// past their expiry are reaped (with events) by the next reaper pass.
    /// Every line is checked as the store's own inputs are; the first bad
    /// line stops the import, and the batches before it stay imported (on
    /// sled, a crash may also stop a batch part-way; importing the same input
    /// again gives the same store). An actor left with more sessions than
    /// `Config::max_sessions_per_actor` keeps them until its next register;
    /// `check` reports them (`CheckReport::over_cap`) and `repair` ends the
    /// oldest.
    ///
    /// # Errors
    /// [`Error::Import`] naming the line for unreadable or invalid input (a
    /// missing or newer header included), and, on the Redis engine, when a
    /// digest is already stored for another actor of the same bucket;
    /// [`Error::Closed`]; storage errors.
    pub fn import(&self, input: impl BufRead) -> Result<ImportSummary> {
        let shared = self.shared();
        let max_data_bytes = shared.rules.settings.max_data_bytes;
        let mut summary = ImportSummary::default();
        let mut batch: Vec<Imported> = Vec::with_capacity(IMPORT_BATCH);
        let flush = |batch: &mut Vec<Imported>, summary: &mut ImportSummary| -> Result<()> {
            if batch.is_empty() {
                return Ok(());
            }
            // A change commits within one shard (a Redis bucket).
            for sessions in shared.by_shard(std::mem::take(batch), |s| &s.record.actor_id) {
                let n = sessions.len() as u64;
                let about = About::of(sessions.iter().map(|s| s.record.actor_id.clone()).collect());
                let new = shared.write(about, move |p| p.import(&sessions))?;
                summary.imported += n;
                summary.replaced += n - new as u64;
            }
            Ok(())
        };
        let mut header_seen = false;
        for (i, line) in input.lines().enumerate() {
            let n = i as u64 + 1;
            let line = line.map_err(|e| bad_input(n, e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            if !header_seen {
                let header: Header = serde_json::from_str(&line).map_err(|e| {
                    bad_input(
                        n,
                        format!("expected the header {{\"format\":\"{HEADER_NAME}\",\"version\":{EXPORT_FORMAT}}}: {e}"),
                    )
                })?;
                if header.format != HEADER_NAME {
                    return Err(bad_input(
                        n,
                        format!("format {:?} is not {HEADER_NAME:?}", clip(&header.format)),
                    ));
                }
                if header.version > EXPORT_FORMAT {
                    return Err(bad_input(
                        n,
                        format!(
                            "export format {} is newer than this sessiondb reads ({EXPORT_FORMAT}); upgrade sessiondb",
                            header.version
                        ),
                    ));
                }
                header_seen = true;
                continue;
            }
            let parsed: Line =
                serde_json::from_str(&line).map_err(|e| bad_input(n, e.to_string()))?;
            let (digest, record) = parsed
                .into_record(max_data_bytes)
                .map_err(|problem| bad_input(n, problem))?;
            // One op holds distinct digests; a repeat goes into the next
            // transaction, so the later line wins.
            if batch.len() == IMPORT_BATCH || batch.iter().any(|s| s.digest == digest) {
                flush(&mut batch, &mut summary)?;
            }
            batch.push(Imported {
                line: n,
                digest,
                record,
            });
        }
        flush(&mut batch, &mut summary)?;
        if !header_seen {
            return Err(bad_input(1, "the input is empty (no export header)"));
        }
        Ok(summary)
    }
}
