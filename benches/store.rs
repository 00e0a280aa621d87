//! Criterion benches of the public operations, so regressions show in review.
//!
//! `cargo bench --bench store` (all), or e.g. `cargo bench --bench store -- resolve`.
//! The write benches run with one caller and with 8 concurrent callers; the
//! `durable_register` group registers with immediate durability from 64
//! callers, whose writes share flushes + fsyncs (the write group).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sessiondb::{Config, Data, Durability, ManualClock, SessionStore};
use tempfile::TempDir;

const T0: u64 = 1_700_000_000_000;

fn open(tune: impl FnOnce(Config) -> Config) -> (TempDir, ManualClock, SessionStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new(T0);
    let config = Config::new(dir.path())
        .clock(Arc::new(clock.clone()))
        .reaper_thread(false);
    let store = SessionStore::open(tune(config)).expect("open");
    (dir, clock, store)
}

/// About 150 bytes of data, the session shape of the comparison harness.
fn payload() -> Data {
    let mut data = Data::new();
    data.insert("name", "Adventurer").expect("data");
    data.insert("inventory", &["sword", "shield", "potion", "map", "rope"])
        .expect("data");
    data.insert(
        "stats",
        &[("level", 12), ("hp", 87), ("mp", 40), ("xp", 123_456)],
    )
    .expect("data");
    data
}

/// Runs `per_thread` operations on each of `threads` threads; returns the wall time.
fn concurrently(threads: usize, per_thread: u64, op: impl Fn(u64) + Sync) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let op = &op;
            s.spawn(move || {
                for i in 0..per_thread {
                    op(t * per_thread + i);
                }
            });
        }
    });
    started.elapsed()
}

/// Registers `iters` new sessions from `callers` threads; returns the wall time.
fn register_from(store: &SessionStore, next: &AtomicU64, callers: usize, iters: u64) -> Duration {
    concurrently(callers, iters.div_ceil(callers as u64), |_| {
        let n = next.fetch_add(1, Ordering::Relaxed);
        store
            .register(&format!("p{n}"), "en", payload())
            .expect("register");
    })
}

fn writes(c: &mut Criterion) {
    let next = AtomicU64::new(0);
    let mut g = c.benchmark_group("register");
    g.throughput(Throughput::Elements(1));
    let (_d, _c, store) = open(|c| c);
    g.bench_function("1_caller", |b| {
        b.iter(|| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            store
                .register(&format!("p{n}"), "en", payload())
                .expect("register")
        })
    });
    g.bench_function("8_callers", |b| {
        b.iter_custom(|iters| register_from(&store, &next, 8, iters))
    });
    g.finish();

    let mut g = c.benchmark_group("set_data");
    g.throughput(Throughput::Elements(1));
    let keys: Vec<String> = (0..8)
        .map(|i| {
            store
                .register(&format!("d{i}"), "en", payload())
                .expect("register")
                .key()
                .expect("key")
                .to_owned()
        })
        .collect();
    g.bench_function("1_caller", |b| {
        b.iter(|| {
            store
                .set_data(&keys[0], "score", &next.fetch_add(1, Ordering::Relaxed))
                .expect("set")
        })
    });
    g.bench_function("8_callers", |b| {
        b.iter_custom(|iters| {
            concurrently(8, iters.div_ceil(8), |i| {
                store
                    .set_data(&keys[(i % 8) as usize], "score", &i)
                    .expect("set");
            })
        })
    });
    g.finish();
}

fn reads(c: &mut Criterion) {
    let (_d, clock, store) = open(|c| c);
    let key = store
        .register("reader", "en", payload())
        .expect("register")
        .key()
        .expect("key")
        .to_owned();
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(1));
    // The expiry moves by less than the touch interval: no write.
    g.bench_function("resolve_hot", |b| {
        b.iter(|| store.resolve(&key).expect("resolve"))
    });
    g.bench_function("is_valid", |b| {
        b.iter(|| store.is_valid(&key).expect("valid"))
    });
    g.bench_function("get_data", |b| {
        b.iter(|| store.get_data::<String>(&key, "name").expect("get"))
    });
    g.bench_function("actor_session", |b| {
        b.iter(|| store.actor_session("reader").expect("actor"))
    });
    g.bench_function("resolve_hot_2_threads", |b| {
        b.iter_custom(|iters| {
            concurrently(2, iters.div_ceil(2), |_| {
                store.resolve(&key).expect("resolve");
            })
        })
    });
    // Every resolve moves the expiry past the touch interval: one write each.
    g.bench_function("resolve_extend", |b| {
        b.iter(|| {
            clock.advance(Duration::from_secs(61));
            store.resolve(&key).expect("resolve")
        })
    });
    g.bench_function("extend", |b| b.iter(|| store.extend(&key).expect("extend")));
    g.finish();
}

fn reap(c: &mut Criterion) {
    let mut g = c.benchmark_group("reap");
    g.sample_size(10);
    const DUE: u64 = 10_000;
    g.throughput(Throughput::Elements(DUE));
    g.bench_function("pass_10k_due", |b| {
        b.iter_batched(
            || {
                let (dir, clock, store) = open(|c| c);
                concurrently(8, DUE / 8, |i| {
                    store
                        .register(&format!("r{i}"), "en", payload())
                        .expect("register");
                });
                clock.advance(Duration::from_secs(601));
                (dir, store)
            },
            |(_dir, store)| assert_eq!(store.reap_expired().expect("reap"), DUE as usize),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn durable(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable_register");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    let (_d, _c, store) = open(|c| c.durability(Durability::Immediate));
    let next = AtomicU64::new(0);
    g.bench_function("64_callers", |b| {
        b.iter_custom(|iters| register_from(&store, &next, 64, iters))
    });
    let s = store.stats().expect("stats");
    eprintln!(
        "immediate durability, 64 callers: {:.1} acknowledged registers per fsync",
        s.committed_ops as f64 / s.syncs.max(1) as f64
    );
    g.finish();
}

criterion_group!(benches, writes, reads, reap, durable);
criterion_main!(benches);
