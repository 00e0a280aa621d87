//! What a run measures and for how long: `--quick` or the full run.

use std::time::Duration;

use crate::measure::Timing;

/// The workloads, in the order the table shows them.
pub const WORKLOADS: &[&str] = &[
    "register",
    "resolve_hot",
    "extend",
    "set_data",
    "durable_register",
    "durable_cpu",
    "reap",
    "open_clean",
    "open_unclean",
    "disk_bytes",
    "disk_churn",
    "peak_rss",
    "follow_cpu",
    "cpu_register",
    "cpu_set_data",
    "cpu_extend",
    "idle_cost",
];

/// The systems, in the order the table shows them.
pub const SYSTEMS: &[&str] = &[
    "sessiondb",
    "sessiondb_immediate",
    "sessiondb_2_arenas",
    "sled_raw",
    "sled_raw_get",
    "sled_naive",
    "redis",
    "redis_aof_always",
    "sessiondb_redis",
    "sessiondb_redis_cluster",
    "sqlite_normal",
    "sqlite_full",
];

#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Each register / resolve_hot / extend / set_data cell.
    pub cell: Timing,
    /// Each durable_register cell.
    pub durable: Timing,
    /// Sessions each system holds before the per-operation workloads.
    pub preload: usize,
    /// Sessions for reap, open, disk bytes and peak RSS.
    pub bulk: usize,
    /// Live sessions the foreground resolver reads while the reaper runs.
    pub hot: usize,
    /// Client threads for the read workloads (the machine has 2 cores).
    pub read_threads: Vec<usize>,
    /// Client threads for the write workloads: sessiondb groups concurrent
    /// writes into one transaction, so concurrency matters.
    pub write_threads: Vec<usize>,
    /// Concurrent callers of durable_register.
    pub durable_callers: usize,
    /// Simulated minutes of the churn workload.
    pub churn_minutes: u64,
    /// Logins per simulated minute of the churn workload.
    pub churn_logins: u64,
    /// Workloads to run (all by default).
    pub only: Option<Vec<String>>,
    /// Systems to run (all by default).
    pub systems: Option<Vec<String>>,
}

impl Plan {
    pub fn new(quick: bool, only: Option<Vec<String>>, systems: Option<Vec<String>>) -> Plan {
        let timing = |warmup_ms, measure_ms| Timing {
            warmup: Duration::from_millis(warmup_ms),
            measure: Duration::from_millis(measure_ms),
        };
        if quick {
            Plan {
                quick,
                cell: timing(150, 400),
                durable: timing(300, 1_200),
                preload: 10_000,
                bulk: 100_000,
                hot: 1_000,
                read_threads: vec![1, 2],
                write_threads: vec![1, 2, 8, 64],
                durable_callers: 64,
                churn_minutes: 120,
                churn_logins: 100,
                only,
                systems,
            }
        } else {
            Plan {
                quick,
                cell: timing(500, 3_000),
                durable: timing(1_000, 5_000),
                preload: 100_000,
                bulk: 1_000_000,
                hot: 10_000,
                read_threads: vec![1, 2],
                write_threads: vec![1, 2, 8, 64],
                durable_callers: 64,
                // A day: 1,440 minutes.
                churn_minutes: 1_440,
                churn_logins: 300,
                only,
                systems,
            }
        }
    }

    pub fn runs(&self, workload: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|w| w == workload))
    }

    pub fn has(&self, system: &str) -> bool {
        self.systems
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == system))
    }

    /// Whether any of the 1M-session workloads runs.
    pub fn runs_bulk(&self) -> bool {
        [
            "reap",
            "open_clean",
            "open_unclean",
            "disk_bytes",
            "peak_rss",
        ]
        .iter()
        .any(|w| self.runs(w))
    }
}
