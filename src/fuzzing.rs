//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): thin
//! wrappers over crate-private decoders. Not part of the API.

use crate::engine::sled::layout as index;
use crate::{codec, key};

/// Decodes `bytes` as a session record and encodes it again, in the
/// record's own format: `None` when it does not decode. An older record is
/// written in this build's format, whose body is the older one's plus what
/// the older one lacks, each one byte `00` here: a lead of 0 (what format 2
/// adds to format 1) and empty metadata (what format 3 adds to format 2).
/// Those bytes are taken off again to compare with the input.
pub fn reencode_record(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut again = codec::encode(&codec::decode(bytes).ok()?).ok()?;
    let format = *bytes.first()?;
    let added = usize::from(codec::RECORD_FORMAT.saturating_sub(format));
    if added > 0 && again.len() > added && again[again.len() - added..].iter().all(|b| *b == 0) {
        again.truncate(again.len() - added);
        again[0] = format;
    }
    Some(again)
}

/// Whether `codec::decode_head` reads the same leading fields as
/// `codec::decode` (true when the whole record does not decode).
pub fn record_head_agrees(bytes: &[u8]) -> bool {
    let head = codec::decode_head(bytes);
    codec::decode(bytes).map_or(true, |r| {
        head.is_ok_and(|h| {
            (h.actor_id, h.expires_at, h.app_version) == (r.actor_id, r.expires_at, r.app_version)
        })
    })
}

/// Parses `bytes` as an `expiries` key and builds the key again.
pub fn reencode_expiry_key(bytes: &[u8]) -> Option<Vec<u8>> {
    let (at, record) = index::parse_expiry_key(bytes)?;
    let (actor, digest) = index::parse_record_key(record)?;
    Some(index::expiry_key(at, &index::record_key(actor, &digest)))
}

/// Parses `bytes` as a `records` key (`actor prefix ++ digest`) and builds
/// the key again.
pub fn reencode_record_key(bytes: &[u8]) -> Option<Vec<u8>> {
    let (actor, digest) = index::parse_record_key(bytes)?;
    Some(index::record_key(actor, &digest))
}

/// Splits a full key into actor id and secret, as every key-taking call does.
pub fn split_full_key(full_key: &str) -> Option<(&str, &str)> {
    key::FullKey::parse(full_key)
        .ok()
        .map(|k| (k.actor_id, k.secret))
}
