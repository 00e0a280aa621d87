//! Whole-store upkeep on Redis: the scans of the consistency check and
//! export (every primary's keys by `SCAN`, each bucket's expiry index), and
//! repair (`repair.lua`: each fix applied only while what it repairs is
//! still as the check found it).

use std::collections::BTreeSet;

use super::conn::failed;
use super::keys::{digest_hex, expiry_member, parse_expiry_member};
use super::RedisEngine;
use crate::engine::{Fix, Index, IndexVisit, RecordVisit, Stored, Upkeep, WritesHeld};
use crate::error::Result;
use crate::key::Digest;

/// Keys asked for per SCAN step, and records read per pipeline.
const SCAN_COUNT: usize = 1_000;

impl RedisEngine {
    /// Every key matching `pattern` on every primary, with the primary's
    /// index in `Nodes::primaries` order.
    fn scan_keys(&self, pattern: &str) -> Result<Vec<(usize, Vec<String>)>> {
        let fail = failed("scanning keys");
        let mut out = Vec::new();
        for (i, primary) in self.nodes.primaries().into_iter().enumerate() {
            let mut keys = BTreeSet::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = primary
                    .pool
                    .with(|con| {
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT)
                            .query(con)
                    })
                    .map_err(&fail)?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            out.push((i, keys.into_iter().collect()));
        }
        Ok(out)
    }

    /// Runs `per_key` for each of `keys` on the `i`th primary, pipelined.
    fn read_keys<T: redis::FromRedisValue>(
        &self,
        i: usize,
        keys: &[String],
        context: &'static str,
        per_key: impl Fn(&mut redis::Pipeline, &str),
    ) -> Result<Vec<T>> {
        let Some(primary) = self.nodes.primaries().into_iter().nth(i) else {
            return Ok(Vec::new());
        };
        primary
            .pool
            .with(|con| {
                let mut pipe = redis::pipe();
                for key in keys {
                    per_key(&mut pipe, key);
                }
                pipe.query(con)
            })
            .map_err(failed(context))
    }

    /// Applies one repair on the primary of `bucket`; whether it applied.
    fn repair_one(&self, bucket: u32, keys: &[String], args: &[String]) -> Result<bool> {
        let script = &self.repair_script;
        self.nodes
            .run(self.keys.slot(bucket), "repairing", |_, con| {
                let mut call = script.prepare_invoke();
                for k in keys {
                    call.key(k);
                }
                for a in args {
                    call.arg(a);
                }
                call.invoke::<i64>(con)
            })
            .map(|applied| applied == 1)
    }

    /// A guarded index edit: `edit` on `index`, if `actor_id`'s session
    /// `digest` is still at `revision`.
    fn guarded(
        &self,
        actor_id: &str,
        digest: &Digest,
        revision: Option<u64>,
        index: String,
        edit: &[&str],
    ) -> Result<bool> {
        let k = &self.keys;
        let mut args = vec![
            "index".to_owned(),
            revision.map(|r| r.to_string()).unwrap_or_default(),
        ];
        args.extend(edit.iter().map(|s| (*s).to_owned()));
        self.repair_one(
            k.bucket(actor_id),
            &[k.session(actor_id, digest), index],
            &args,
        )
    }
}

impl Upkeep for RedisEngine {
    fn quarantined(&self) -> Result<u64> {
        let buckets = self.all_buckets();
        let lens = self
            .nodes
            .across(&buckets, 1, "counting the quarantine", |pipe, b| {
                pipe.cmd("HLEN").arg(self.keys.quarantine(b));
            })?;
        Ok(lens
            .into_iter()
            .flat_map(|(_, v)| v)
            .filter_map(|v| redis::from_redis_value::<u64>(v).ok())
            .sum())
    }

    fn hold_writes(&self) -> Result<WritesHeld> {
        Ok(WritesHeld(Box::new(self.gate.hold())))
    }

    fn scan_records(&self, visit: &mut RecordVisit<'_>) -> Result<()> {
        for (i, keys) in self.scan_keys(&self.keys.sessions_pattern())? {
            for chunk in keys.chunks(SCAN_COUNT) {
                let records: Vec<Option<Vec<u8>>> =
                    self.read_keys(i, chunk, "scanning sessions", |pipe, key| {
                        pipe.cmd("HGET").arg(key).arg("r");
                    })?;
                for (key, record) in chunk.iter().zip(records) {
                    let digest = self
                        .keys
                        .split(key)
                        .and_then(|(_, rest)| rest.strip_prefix("s:"))
                        .and_then(Digest::from_hex);
                    let bytes = record.unwrap_or_default();
                    let stored = Stored {
                        id: key.as_bytes(),
                        digest,
                        bytes: &bytes,
                    };
                    if !visit(stored)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn scan_expiries(&self, visit: &mut IndexVisit<'_, (u64, Digest)>) -> Result<()> {
        for b in 0..self.keys.buckets() {
            let key = self.keys.expiries(b);
            let entries: Vec<(Vec<u8>, f64)> =
                self.nodes
                    .run(self.keys.slot(b), "scanning expiries", |_, con| {
                        redis::cmd("ZRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES")
                            .query(con)
                    })?;
            for (member, score) in entries {
                let parsed = parse_expiry_member(&member)
                    .filter(|(_, actor)| self.keys.bucket(actor) == b)
                    .map(|(d, _)| (score as u64, d));
                if !visit(&entry_id(&key, &member), parsed)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn scan_actors(&self, visit: &mut IndexVisit<'_, (String, Digest)>) -> Result<()> {
        for (i, keys) in self.scan_keys(&self.keys.actors_pattern())? {
            for chunk in keys.chunks(SCAN_COUNT) {
                let lists: Vec<Vec<Vec<u8>>> =
                    self.read_keys(i, chunk, "scanning actor sets", |pipe, key| {
                        pipe.cmd("SMEMBERS").arg(key);
                    })?;
                for (key, members) in chunk.iter().zip(lists) {
                    let actor = self
                        .keys
                        .split(key)
                        .and_then(|(_, rest)| rest.strip_prefix("a:"))
                        .map(str::to_owned);
                    for member in members {
                        let digest = std::str::from_utf8(&member).ok().and_then(Digest::from_hex);
                        let parsed = actor.clone().zip(digest);
                        if !visit(&entry_id(key, &member), parsed)? {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every fix stands as found: `repair` checks each one's precondition
    /// where it applies it, on the server.
    fn still_needed(&self, fixes: Vec<Fix>) -> Result<Vec<Fix>> {
        Ok(fixes)
    }

    fn repair(&self, fixes: &[Fix]) -> Result<()> {
        let k = &self.keys;
        for fix in fixes {
            match fix {
                Fix::Quarantine { id } => {
                    let key = String::from_utf8_lossy(id).into_owned();
                    let Some((bucket, _)) = k.split(&key) else {
                        continue;
                    };
                    let name = key.rsplit(':').next().unwrap_or_default().to_owned();
                    self.repair_one(
                        bucket,
                        &[key.clone(), k.quarantine(bucket)],
                        &["quarantine".into(), name],
                    )?;
                }
                Fix::AddExpiry {
                    at,
                    actor_id,
                    digest,
                    revision,
                } => {
                    let member = expiry_member(digest, actor_id);
                    let at = at.to_string();
                    let index = k.expiries(k.bucket(actor_id));
                    self.guarded(
                        actor_id,
                        digest,
                        Some(*revision),
                        index,
                        &["ZADD", &at, &member],
                    )?;
                }
                Fix::AddActor {
                    actor_id,
                    digest,
                    revision,
                } => {
                    let member = digest_hex(digest);
                    let index = k.actor(actor_id);
                    self.guarded(actor_id, digest, Some(*revision), index, &["SADD", &member])?;
                }
                Fix::Drop {
                    index,
                    id,
                    revision,
                } => {
                    let (key, member) = split_entry_id(id);
                    let key = String::from_utf8_lossy(key).into_owned();
                    let member = String::from_utf8_lossy(member).into_owned();
                    // The session the entry names, where it parses; a
                    // malformed entry names none and stays malformed.
                    let named = match index {
                        Index::Expiries => parse_expiry_member(member.as_bytes()),
                        Index::Actors => k
                            .split(&key)
                            .and_then(|(_, rest)| rest.strip_prefix("a:"))
                            .zip(Digest::from_hex(&member))
                            .map(|(actor, d)| (d, actor.to_owned())),
                    };
                    let edit = match index {
                        Index::Expiries => "ZREM",
                        Index::Actors => "SREM",
                    };
                    match named {
                        Some((digest, actor)) if k.split(&key).is_some() => {
                            self.guarded(&actor, &digest, *revision, key, &[edit, &member])?;
                        }
                        _ => {
                            let Some((bucket, _)) = k.split(&key) else {
                                continue;
                            };
                            // A malformed entry names no session to guard
                            // by, and no change makes it well-formed.
                            self.repair_one(
                                bucket,
                                std::slice::from_ref(&key),
                                &["malformed".into(), edit.into(), member],
                            )?;
                        }
                    }
                }
                // The count is the expiry indexes' size: the fixes above
                // set it right.
                Fix::Count(_) => {}
            }
        }
        self.flush_all()
    }
}

/// An index entry's id: its key, a NUL, its member.
fn entry_id(key: &str, member: &[u8]) -> Vec<u8> {
    let mut id = Vec::with_capacity(key.len() + 1 + member.len());
    id.extend_from_slice(key.as_bytes());
    id.push(0);
    id.extend_from_slice(member);
    id
}

fn split_entry_id(id: &[u8]) -> (&[u8], &[u8]) {
    match id.iter().position(|&b| b == 0) {
        Some(at) => (&id[..at], &id[at + 1..]),
        None => (id, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_split_back() {
        let id = entry_id("k:x", b"m\x01");
        assert_eq!(split_entry_id(&id), (&b"k:x"[..], &b"m\x01"[..]));
    }
}
