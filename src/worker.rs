//! Background threads done safely: named, and a panic in one poisons the
//! store, so that every later call fails at once with
//! [`Error::WorkerFailed`](crate::Error::WorkerFailed) instead of running on
//! beside a dead thread.

use std::sync::OnceLock;
use std::thread::JoinHandle;

/// Which worker thread failed, once one has.
#[derive(Debug, Default)]
pub(crate) struct Poison(OnceLock<&'static str>);

impl Poison {
    /// The first worker that panicked.
    pub fn failed(&self) -> Option<&'static str> {
        self.0.get().copied()
    }

    pub(crate) fn set(&self, worker: &'static str) {
        let _ = self.0.set(worker);
    }
}

/// Poisons the store if the thread it lives on unwinds. A worker whose
/// callers wait on values it holds (reply channels) declares one after
/// them, so that it drops first: the store is poisoned before any caller
/// hears of the failure.
pub(crate) struct PoisonOnPanic<'a> {
    poison: &'a Poison,
    worker: &'static str,
}

impl<'a> PoisonOnPanic<'a> {
    pub fn new(poison: &'a Poison, worker: &'static str) -> Self {
        PoisonOnPanic { poison, worker }
    }
}

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            log::error!(
                "the sessiondb {} thread panicked; the store is poisoned",
                self.worker
            );
            self.poison.set(self.worker);
        }
    }
}

/// Starts thread `sessiondb-<worker>` running `work`; a panic in it poisons
/// the store.
pub(crate) fn spawn(
    worker: &'static str,
    poison: std::sync::Arc<Poison>,
    work: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("sessiondb-{worker}"))
        .spawn(move || {
            let _guard = PoisonOnPanic::new(&poison, worker);
            work();
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_worker_poisons_and_a_finishing_one_does_not() {
        let poison = std::sync::Arc::new(Poison::default());
        spawn("calm", poison.clone(), || {})
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(poison.failed(), None);
        let panicked = spawn("doomed", poison.clone(), || panic!("on purpose")).unwrap();
        assert!(panicked.join().is_err());
        assert_eq!(poison.failed(), Some("doomed"));
    }
}
