//! The one backoff: how long to pause before retrying something that
//! failed, doubling from a first pause up to a bound, optionally jittered so
//! that callers retrying together spread out. The write path (a conflict
//! planned again), the Redis engine's calls (a server failing over) and its
//! event subscribers (a server that is down) each use one with bounds of
//! their own.

use std::time::Duration;

/// Pauses of `first`, doubling per retry, at most `most`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    most: Duration,
    /// Each pause drawn uniformly from zero up to its bound.
    jitter: bool,
}

impl Backoff {
    pub const fn new(first: Duration, most: Duration) -> Backoff {
        Backoff {
            first,
            most,
            jitter: false,
        }
    }

    /// The same bounds, each pause drawn at random below its bound.
    pub const fn jittered(self) -> Backoff {
        Backoff {
            jitter: true,
            ..self
        }
    }

    /// The pause before retry `n` (1 for the first retry).
    pub fn pause(&self, n: u32) -> Duration {
        let bound = self
            .first
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(self.most);
        if self.jitter {
            bound.mul_f64(crate::key::unit_random())
        } else {
            bound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_their_bound() {
        let b = Backoff::new(Duration::from_millis(20), Duration::from_millis(320));
        let pauses: Vec<u128> = (1..=8).map(|n| b.pause(n).as_millis()).collect();
        assert_eq!(pauses, [20, 40, 80, 160, 320, 320, 320, 320]);
        assert_eq!(b.pause(u32::MAX), Duration::from_millis(320));
        assert_eq!(b.pause(0), Duration::from_millis(20));
    }

    #[test]
    fn jittered_pauses_stay_below_their_bound() {
        let b = Backoff::new(Duration::from_micros(200), Duration::from_millis(5)).jittered();
        for n in 1..40 {
            let bound = Backoff::new(Duration::from_micros(200), Duration::from_millis(5)).pause(n);
            assert!(b.pause(n) <= bound);
        }
    }
}
