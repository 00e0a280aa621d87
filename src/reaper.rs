//! The reaper: a named thread that sleeps until the earliest expiry or its
//! interval, whichever is sooner, then runs one pass. The pass itself is
//! `SessionStore::reap_expired`, callable on demand.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error::{Error, Result};
use crate::store::Shared;
use crate::write::{Op, Output};

/// Deletes every session due at the clock's "now", `reap_batch` at a time;
/// foreground writes queue between the batches. Returns how many were reaped.
pub(crate) fn pass(shared: &Shared) -> Result<usize> {
    let now = shared.now();
    let mut total = 0;
    loop {
        let due = shared.backend.due(now, shared.reap_batch)?;
        let full = due.len() == shared.reap_batch;
        if due.is_empty() {
            break;
        }
        match shared.submit(Op::Reap { due, now })? {
            Output::Count(n) => {
                shared.count_reaped(n);
                total += n;
            }
            other => return Err(shared.unexpected(&other)),
        }
        if !full {
            break;
        }
    }
    Ok(total)
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
