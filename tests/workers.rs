//! Background workers: a panic in one poisons the store, so every later call
//! fails at once with `WorkerFailed` instead of running beside a dead thread,
//! and the store is not marked clean.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::T0;
use sessiondb::{Clock, Config, Data, Error, ManualClock, SessionStore};

/// A clock that panics when the reaper thread asks for the time once armed:
/// a stand-in for a bug in the reaper.
#[derive(Debug)]
struct ReaperTrap {
    time: ManualClock,
    armed: AtomicBool,
}

impl Clock for ReaperTrap {
    fn now_ms(&self) -> u64 {
        let on_reaper = std::thread::current().name() == Some("sessiondb-reaper");
        if on_reaper && self.armed.load(Ordering::SeqCst) {
            panic!("a bug in the reaper (on purpose)");
        }
        self.time.now_ms()
    }
}

fn worker_failed(e: Error) -> &'static str {
    match e {
        Error::WorkerFailed { worker } => worker,
        other => panic!("expected WorkerFailed, got {other:?}"),
    }
}

#[test]
fn a_panicking_reaper_poisons_every_later_call_and_the_next_open_checks() {
    let dir = tempfile::tempdir().unwrap();
    let trap = Arc::new(ReaperTrap {
        time: ManualClock::new(T0),
        armed: AtomicBool::new(false),
    });
    let config = || {
        Config::new(dir.path())
            .clock(trap.clone())
            .reap_interval(Duration::from_millis(5))
    };
    let store = SessionStore::open(config()).unwrap();
    let key = common::key_of(&store.register("p1", "en", Data::new()).unwrap());
    trap.armed.store(true, Ordering::SeqCst);

    // The reaper wakes within its interval; wait (bounded) for the poison.
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        match store.stats() {
            Err(e) => break worker_failed(e),
            Ok(_) if Instant::now() < deadline => std::thread::yield_now(),
            Ok(_) => panic!("the reaper's panic never poisoned the store"),
        }
    };
    assert_eq!(failed, "reaper");
    trap.armed.store(false, Ordering::SeqCst);
    // Reads fail as well as writes.
    assert_eq!(worker_failed(store.resolve(&key).unwrap_err()), "reaper");
    assert_eq!(worker_failed(store.is_valid(&key).unwrap_err()), "reaper");
    assert_eq!(
        worker_failed(store.actor_session("p1").unwrap_err()),
        "reaper"
    );
    let refused = store.register("p2", "en", Data::new()).unwrap_err();
    assert_eq!(worker_failed(refused), "reaper");
    let message = Error::WorkerFailed { worker: "reaper" }.to_string();
    assert!(message.contains("reopen"), "{message}");
    assert_eq!(worker_failed(store.close().unwrap_err()), "reaper");

    // Not marked clean: the next open checks, and nothing was lost.
    let store = SessionStore::open(config().reaper_thread(false)).unwrap();
    let report = store.wait_for_recovery();
    assert!(!report.clean_shutdown);
    assert!(report.check.as_ref().is_some_and(|c| c.is_healthy()));
    assert_eq!(store.resolve(&key).unwrap().actor_id(), "p1");
    store.close().unwrap();
}
