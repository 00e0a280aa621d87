//! The reaper: a named thread that sleeps until the earliest expiry or its
//! interval, whichever is sooner, then runs one pass. The pass itself is
//! `SessionStore::reap_expired`, callable on demand.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error::{Error, Result};
use crate::shared::{About, Shared};
use crate::worker;

/// How many due entries one scan of the expiry index takes, in batches.
const SCAN_BATCHES: usize = 16;

/// Ends every session due at the clock's "now", `reap_batch` per change;
/// foreground writes are committed between the batches. Returns how many
/// were reaped.
///
/// Batches are pipelined: a batch is queued before the previous one is
/// waited for, so that, with immediate durability, one flush can cover both
/// (the sled engine's write group). Between queueing a batch and waiting for
/// it this thread does nothing long: the write group would not hold up
/// other callers for it anyway (it wakes only callers already waiting to
/// lead a flush).
pub(crate) fn pass(shared: &Shared) -> Result<usize> {
    let now = shared.now();
    let scan = shared.reap_batch.saturating_mul(SCAN_BATCHES);
    let mut total = 0;
    let finish = |queued| -> Result<usize> {
        let n = shared.finish(queued)?;
        shared
            .counters
            .reaped
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    };
    loop {
        let due = shared.engine.due(now, scan)?;
        let full = due.len() == scan;
        let mut queued = None;
        // A change commits within one shard: batches are cut per shard.
        let shards = shared.by_shard(due, |d| &d.actor_id);
        for batch in shards.iter().flat_map(|s| s.chunks(shared.reap_batch)) {
            // One batch queued at a time.
            if let Some(previous) = queued.take() {
                total += finish(previous)?;
            }
            let batch = batch.to_vec();
            let about = About::of(batch.iter().map(|d| d.actor_id.clone()).collect());
            queued = Some(shared.queue(about, move |p| p.reap(&batch, now))?);
        }
        if let Some(last) = queued {
            total += finish(last)?;
        }
        if !full {
            break;
        }
    }
    shared.engine.reaped()?;
    // Reassigns across shards that a node left half-way.
    crate::roll_forward::stuck(shared, now, Some(crate::intent::GRACE_MS))?;
    Ok(total)
}

pub(crate) struct Reaper {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

impl Reaper {
    pub fn spawn(shared: Arc<Shared>, interval: Duration) -> std::io::Result<Reaper> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let poison = shared.poison.clone();
        let handle = worker::spawn("reaper", poison, move || run(&shared, interval, &stopped))?;
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
            if matches!(e, Error::Unavailable { .. }) {
                // The server is down or failing over: the next pass retries.
                log::warn!("reaper pass failed: {e}");
            } else {
                log::error!("reaper pass failed: {e}");
            }
        }
        let wait = match shared.engine.next_expiry() {
            Ok(Some(at)) => interval.min(Duration::from_millis(at.saturating_sub(shared.now()))),
            _ => interval,
        };
        // Spread: nodes sharing a store (Redis) then do not all wake at the
        // same instant; each due session is still ended exactly once.
        let wait = wait.mul_f64(0.75 + 0.5 * crate::key::unit_random());
        match stopped.recv_timeout(wait.max(Duration::from_millis(1))) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
