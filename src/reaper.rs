//! The reaper: a named thread that sleeps until the earliest expiry or its
//! interval, whichever is sooner, then runs one pass. The pass itself is
//! `SessionStore::reap_expired`, callable on demand.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::codec;
use crate::error::{Error, Result};
use crate::index;
use crate::key::Digest;
use crate::storage::Space;
use crate::store::Shared;
use crate::write::{Op, Output};

/// How many due entries one scan of the expiry index takes, in batches.
const SCAN_BATCHES: usize = 16;

/// Deletes every session due at the clock's "now", `reap_batch` per
/// transaction; foreground writes queue between the batches. Returns how
/// many were reaped.
///
/// sled runs a transaction under a process-wide lock that blocks every
/// read, so a transaction must not wait for the disk and must stay short:
/// before a batch is queued, this thread reads the records and actor index
/// entries its transaction will touch (warming sled's cache outside the
/// lock), and it warms the next batch while the committer deletes the
/// current one.
pub(crate) fn pass(shared: &Shared) -> Result<usize> {
    let now = shared.now();
    let scan = shared.reap_batch.saturating_mul(SCAN_BATCHES);
    let mut total = 0;
    loop {
        let due = shared.backend.due(now, scan)?;
        let full = due.len() == scan;
        let mut queued = None;
        for batch in due.chunks(shared.reap_batch) {
            warm(shared, batch);
            // One batch in the queue at a time: the committer would merge
            // two into one longer transaction.
            if let Some(previous) = queued.take() {
                total += reaped(shared, &previous)?;
            }
            queued = Some(shared.queue(Op::Reap {
                due: batch.to_vec(),
                now,
            })?);
        }
        if let Some(last) = queued {
            total += reaped(shared, &last)?;
        }
        if !full {
            break;
        }
    }
    Ok(total)
}

fn reaped(shared: &Shared, queued: &Receiver<Result<Output>>) -> Result<usize> {
    match shared.wait(queued)? {
        Output::Count(n) => {
            shared.count_reaped(n);
            Ok(n)
        }
        other => Err(shared.unexpected(&other)),
    }
}

/// Reads each due session's record and actor index entry, so that the
/// transaction deleting them finds them in sled's cache. Errors are left
/// for the transaction to meet and report.
fn warm(shared: &Shared, due: &[(u64, Digest)]) {
    for (_, digest) in due {
        if let Ok(Some(bytes)) = shared.backend.get(digest) {
            if let Ok(head) = codec::decode_head(&bytes) {
                let key = index::actor_key(&head.actor_id, digest);
                let _ = shared.backend.raw_get(Space::Actors, &key);
            }
        }
    }
}

pub(crate) struct Reaper {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

impl Reaper {
    pub fn spawn(shared: Arc<Shared>, interval: Duration) -> std::io::Result<Reaper> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let handle = std::thread::Builder::new()
            .name("sessiondb-reaper".into())
            .spawn(move || run(&shared, interval, &stopped))?;
        Ok(Reaper { stop, handle })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.handle
            .join()
            .map_err(|_| Error::WorkerFailed { worker: "reaper" })
    }
}

fn run(shared: &Shared, interval: Duration, stopped: &Receiver<()>) {
    loop {
        if let Err(e) = pass(shared) {
            if matches!(e, Error::Closed | Error::WorkerFailed { .. }) {
                return;
            }
            log::error!("reaper pass failed: {e}");
        }
        let wait = match shared.backend.next_expiry() {
            Ok(Some(at)) => interval.min(Duration::from_millis(at.saturating_sub(shared.now()))),
            _ => interval,
        };
        match stopped.recv_timeout(wait.max(Duration::from_millis(1))) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
