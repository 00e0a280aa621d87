//! One sled transaction as the session logic sees it: a [`View`] for
//! planning, and the place where a plan's changes are applied.

use std::cell::{Cell, RefCell};

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::layout;
use crate::engine::{Change, View};
use crate::error::{Error, Result, StorageError};
use crate::key::Digest;

pub(crate) struct SledTxn<'a> {
    sessions: &'a TransactionalTree,
    expiries: &'a TransactionalTree,
    actors: &'a TransactionalTree,
    count_delta: Cell<i64>,
    /// Sessions stored (+1) or deleted (-1), kept while a recount runs
    /// (`Trees::scan_records`).
    counted: Option<RefCell<Vec<(Digest, i64)>>>,
    /// The first sled error (a conflict or an I/O failure); it decides how
    /// the transaction ends, whatever planning returns.
    failure: RefCell<Option<UnabortableTransactionError>>,
}

impl<'a> SledTxn<'a> {
    pub fn new(
        sessions: &'a TransactionalTree,
        expiries: &'a TransactionalTree,
        actors: &'a TransactionalTree,
        recounting: bool,
    ) -> Self {
        SledTxn {
            sessions,
            expiries,
            actors,
            count_delta: Cell::new(0),
            counted: recounting.then(|| RefCell::new(Vec::new())),
            failure: RefCell::new(None),
        }
    }
    pub fn take_failure(&self) -> Option<UnabortableTransactionError> {
        self.failure.take()
    }

    /// How much the changes applied so far move the session count, and,
    /// while a recount runs, which sessions they stored or deleted.
    pub fn count_changes(&self) -> (i64, Vec<(Digest, i64)>) {
        let counted = self.counted.as_ref().map(|c| c.take()).unwrap_or_default();
        (self.count_delta.get(), counted)
    }

    fn count(&self, digest: &Digest, delta: i64) {
        self.count_delta.set(self.count_delta.get() + delta);
        if let Some(counted) = &self.counted {
            counted.borrow_mut().push((*digest, delta));
        }
    }

    fn check<T>(&self, r: std::result::Result<T, UnabortableTransactionError>) -> Result<T> {
        r.map_err(|e| {
            let message = e.to_string();
            self.failure.borrow_mut().get_or_insert(e);
            Error::Storage(StorageError::new("in a transaction", message))
        })
    }

    /// Applies one planned change: the record, its index entries and the count.
    pub fn apply(&self, change: &Change) -> Result<()> {
        match change {
            Change::Insert {
                digest,
                actor_id,
                filed_at,
                record,
                ..
            } => {
                self.check(self.sessions.insert(&digest.0, record.as_slice()))?;
                self.insert_expiry(*filed_at, digest)?;
                self.edit_list(actor_id, |list| {
                    if !list.contains(digest) {
                        list.push(*digest);
                    }
                })?;
                self.count(digest, 1);
            }
            Change::Update {
                digest,
                filed_at_was,
                filed_at,
                record,
                ..
            } => {
                self.check(self.sessions.insert(&digest.0, record.as_slice()))?;
                if filed_at_was != filed_at {
                    self.remove_expiry(*filed_at_was, digest)?;
                    self.insert_expiry(*filed_at, digest)?;
                }
            }
            Change::Delete {
                digest,
                actor_id,
                filed_at,
            } => {
                self.check(self.sessions.remove(&digest.0))?;
                self.remove_expiry(*filed_at, digest)?;
                self.edit_list(actor_id, |list| list.retain(|d| d != digest))?;
                self.count(digest, -1);
            }
            Change::DropExpiry { digest, at, .. } => self.remove_expiry(*at, digest)?,
            // One shard: the session logic never moves a session between
            // shards here.
            Change::PutIntent { .. } | Change::DropIntent { .. } | Change::Arrival { .. } => {
                return Err(Error::Storage(StorageError::new(
                    "in a transaction",
                    "the sled engine has one shard and stores no intents (a bug in sessiondb)",
                )))
            }
        }
        Ok(())
    }

    /// The digests the actor's entry lists (a damaged list reads as empty:
    /// the check reports and repairs it).
    fn list(&self, actor_id: &str) -> Result<Vec<Digest>> {
        let value = self.check(self.actors.get(layout::actor_key(actor_id)))?;
        Ok(value
            .and_then(|v| layout::parse_actor_list(&v))
            .unwrap_or_default())
    }

    /// Rewrites the actor's list with `edit`; an empty list is removed.
    fn edit_list(&self, actor_id: &str, edit: impl FnOnce(&mut Vec<Digest>)) -> Result<()> {
        let mut list = self.list(actor_id)?;
        edit(&mut list);
        let key = layout::actor_key(actor_id);
        if list.is_empty() {
            self.check(self.actors.remove(key)).map(drop)
        } else {
            let value = layout::encode_actor_list(&list);
            self.check(self.actors.insert(key, value)).map(drop)
        }
    }

    fn insert_expiry(&self, at: u64, digest: &Digest) -> Result<()> {
        self.check(
            self.expiries
                .insert(&layout::expiry_key(at, digest)[..], &[]),
        )
        .map(drop)
    }

    fn remove_expiry(&self, at: u64, digest: &Digest) -> Result<()> {
        self.check(self.expiries.remove(&layout::expiry_key(at, digest)[..]))
            .map(drop)
    }
}

impl View for SledTxn<'_> {
    fn record(&self, _actor_id: &str, digest: &Digest) -> Result<Option<Vec<u8>>> {
        Ok(self.check(self.sessions.get(digest.0))?.map(|v| v.to_vec()))
    }

    fn actor_sessions(&self, actor_id: &str) -> Result<Vec<Digest>> {
        self.list(actor_id)
    }
}
