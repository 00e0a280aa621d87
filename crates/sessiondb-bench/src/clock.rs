//! The one clock every system in a run reads.
//!
//! Time runs in real time (so that `extend` always moves an expiry, as it
//! would in a game server), from a base the harness can jump forward (so
//! that a million sessions fall due at once without waiting ten minutes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now, from the system clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `base + time elapsed since the clock was made`, in Unix milliseconds.
/// Clones share the same time.
#[derive(Debug, Clone)]
pub struct BenchClock {
    base_ms: Arc<AtomicU64>,
    started: Instant,
}

impl BenchClock {
    /// A clock that reads `start_ms` now and runs from there.
    pub fn starting_at(start_ms: u64) -> Self {
        BenchClock {
            base_ms: Arc::new(AtomicU64::new(start_ms)),
            started: Instant::now(),
        }
    }

    /// Moves the clock forward by `by` at once.
    pub fn jump(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.base_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// The clock's time in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.load(Ordering::SeqCst).saturating_add(elapsed)
    }
}

impl sessiondb::Clock for BenchClock {
    fn now_ms(&self) -> u64 {
        BenchClock::now_ms(self)
    }
}
