//! Closed-loop measurement: N client threads, each with its own worker,
//! run one operation after another for a fixed time after a warm-up;
//! every operation's latency goes into an HDR histogram.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::systems::{System, Worker};

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Latencies are recorded in nanoseconds, up to an hour, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?)
}

pub fn record(hist: &mut Histogram<u64>, took: Duration) {
    hist.saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1));
}

/// What one measured cell produced.
pub struct Sample {
    pub ops: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    /// CPU time the client threads used while measuring, and the time they
    /// ran: a client waiting on another's work uses CPU only if it spins.
    pub client_cpu: Duration,
    pub client_wall: Duration,
}

/// CPU time the calling thread has used (Linux's per-thread scheduler
/// statistics); zero where they cannot be read.
pub fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

impl Sample {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub fn p_us(hist: &Histogram<u64>, q: f64) -> Option<f64> {
    (!hist.is_empty()).then(|| hist.value_at_quantile(q) as f64 / 1000.0)
}

/// How long a cell warms up and measures.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
}

/// The operation a cell repeats, given the thread's worker and random source.
pub type Op<'a> = dyn Fn(&mut dyn Worker, &mut fastrand::Rng) -> Result<()> + Sync + 'a;

/// Runs `op` from `threads` workers of `system` for `timing`. The first
/// error stops the cell and is returned.
pub fn closed_loop<S: System + ?Sized>(
    system: &S,
    threads: usize,
    timing: Timing,
    op: &Op<'_>,
) -> Result<Sample> {
    let phase = AtomicU8::new(WARMUP);
    let barrier = Barrier::new(threads + 1);
    let first_error = Mutex::new(None::<anyhow::Error>);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (phase, barrier, first_error) = (&phase, &barrier, &first_error);
                scope.spawn(
                    move || -> Option<(u64, Histogram<u64>, Instant, Duration, Duration)> {
                        let worker = system.worker();
                        barrier.wait();
                        let fail = |e: anyhow::Error| {
                            phase.store(STOP, Ordering::SeqCst);
                            first_error
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .get_or_insert(e);
                        };
                        let mut worker = match worker {
                            Ok(w) => w,
                            Err(e) => {
                                fail(e);
                                return None;
                            }
                        };
                        let mut hist = histogram().ok()?;
                        let mut rng = fastrand::Rng::with_seed(0x5e55_10db ^ (t as u64 * 7919));
                        let mut ops = 0;
                        let mut last = Instant::now();
                        let mut measuring = None;
                        loop {
                            let p = phase.load(Ordering::Acquire);
                            if p == STOP {
                                break;
                            }
                            if p == MEASURE && measuring.is_none() {
                                measuring = Some((thread_cpu(), Instant::now()));
                            }
                            let start = Instant::now();
                            if let Err(e) = op(worker.as_mut(), &mut rng) {
                                fail(e);
                                return None;
                            }
                            last = Instant::now();
                            if p == MEASURE {
                                record(&mut hist, last - start);
                                ops += 1;
                            }
                        }
                        let (cpu, wall) = measuring
                            .map_or((Duration::ZERO, Duration::ZERO), |(c, w)| {
                                (thread_cpu().saturating_sub(c), w.elapsed())
                            });
                        Some((ops, hist, last, cpu, wall))
                    },
                )
            })
            .collect();
        barrier.wait();
        let stopped = |d: Duration| {
            let until = Instant::now() + d;
            while Instant::now() < until {
                if phase.load(Ordering::Acquire) == STOP {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        };
        let mut measured_from = Instant::now();
        if !stopped(timing.warmup) {
            phase.store(MEASURE, Ordering::Release);
            measured_from = Instant::now();
            stopped(timing.measure);
        }
        phase.store(STOP, Ordering::Release);
        let mut ops = 0;
        let mut hist = histogram()?;
        let mut end = measured_from;
        let (mut client_cpu, mut client_wall) = (Duration::ZERO, Duration::ZERO);
        for h in handles {
            let joined = h.join().map_err(|_| anyhow!("a client thread panicked"))?;
            if let Some((n, h, last, cpu, wall)) = joined {
                ops += n;
                hist.add(&h)?;
                end = end.max(last);
                client_cpu += cpu;
                client_wall += wall;
            }
        }
        if let Some(e) = first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            return Err(e);
        }
        Ok(Sample {
            ops,
            elapsed: end - measured_from,
            hist,
            client_cpu,
            client_wall,
        })
    })
}

/// One line of the results: a system's figure for one workload. Fields
/// that do not apply are `None` (JSON `null`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub workload: String,
    pub system: String,
    pub threads: Option<usize>,
    pub ops_per_sec: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub seconds: Option<f64>,
    pub bytes: Option<u64>,
    /// The client threads' CPU time per operation, in microseconds (the
    /// durable workloads: a caller waiting on another's fsync that spins
    /// adds its whole wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_op: Option<f64>,
    /// Counts, caveats, "skipped: why"; not one of the fixed fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    pub fn new(workload: &str, system: &str, threads: Option<usize>) -> Row {
        Row {
            workload: workload.to_owned(),
            system: system.to_owned(),
            threads,
            ops_per_sec: None,
            p50_us: None,
            p99_us: None,
            seconds: None,
            bytes: None,
            cpu_us_per_op: None,
            note: None,
        }
    }

    pub fn sample(workload: &str, system: &str, threads: usize, s: &Sample) -> Row {
        Row {
            ops_per_sec: Some(s.ops_per_sec()),
            p50_us: p_us(&s.hist, 0.50),
            p99_us: p_us(&s.hist, 0.99),
            seconds: Some(s.elapsed.as_secs_f64()),
            ..Row::new(workload, system, Some(threads))
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        let note = note.into();
        self.note = Some(match self.note.take() {
            Some(old) => format!("{old}; {note}"),
            None => note,
        });
        self
    }

    /// The row with its figures rounded for printing: ops/s to 0.1,
    /// microseconds to 0.001, seconds to the microsecond.
    pub fn rounded(&self) -> Row {
        let round = |x: Option<f64>, scale: f64| x.map(|x| (x * scale).round() / scale);
        Row {
            ops_per_sec: round(self.ops_per_sec, 10.0),
            p50_us: round(self.p50_us, 1000.0),
            p99_us: round(self.p99_us, 1000.0),
            seconds: round(self.seconds, 1e6),
            cpu_us_per_op: round(self.cpu_us_per_op, 10.0),
            ..self.clone()
        }
    }

    pub fn skipped(self, why: &str) -> Row {
        self.note(format!("skipped: {why}"))
    }
}
