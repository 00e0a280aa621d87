//! One sled transaction as the session logic sees it: a [`View`] for
//! planning, and the place where a plan's changes are applied.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::layout;
use crate::engine::{Change, View};
use crate::error::{Error, Result, StorageError};
use crate::key::Digest;

pub(crate) struct SledTxn<'a> {
    sessions: &'a TransactionalTree,
    expiries: &'a TransactionalTree,
    actors: &'a TransactionalTree,
    /// Actor lists read before the transaction, kept current by it.
    lists: RefCell<HashMap<String, Vec<Digest>>>,
    /// An actor planning asked to list that is not in `lists`.
    unlisted: &'a RefCell<Option<String>>,
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
        lists: HashMap<String, Vec<Digest>>,
        unlisted: &'a RefCell<Option<String>>,
        recounting: bool,
    ) -> Self {
        SledTxn {
            sessions,
            expiries,
            actors,
            lists: RefCell::new(lists),
            unlisted,
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
                self.check(self.actors.insert(layout::actor_key(actor_id, digest), &[]))?;
                if let Some(list) = self.lists.borrow_mut().get_mut(actor_id) {
                    if !list.contains(digest) {
                        list.push(*digest);
                    }
                }
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
                self.check(self.actors.remove(layout::actor_key(actor_id, digest)))?;
                if let Some(list) = self.lists.borrow_mut().get_mut(actor_id) {
                    list.retain(|d| d != digest);
                }
                self.count(digest, -1);
            }
            Change::DropExpiry { digest, at, .. } => self.remove_expiry(*at, digest)?,
        }
        Ok(())
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
        self.lists.borrow().get(actor_id).cloned().ok_or_else(|| {
            *self.unlisted.borrow_mut() = Some(actor_id.to_owned());
            // A storage error fails this attempt; `Trees::transact` lists the
            // actor and runs the batch again.
            Error::Storage(StorageError::new(
                "in a transaction",
                format!("actor {actor_id:?} must be listed first"),
            ))
        })
    }
}
