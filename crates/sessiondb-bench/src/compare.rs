//! The per-operation workloads (register, resolve_hot, extend, set_data,
//! durable_register): each system gets a fresh store holding the same
//! number of preloaded sessions, then every workload runs at every client
//! count in the plan.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use sessiondb::{Durability, SessionStore, Stats};

use crate::clock::{unix_ms, BenchClock};
use crate::measure::{closed_loop, Row, Timing};
use crate::plan::Plan;
use crate::shape::{self, Key};
use crate::systems::redis::{self as redis_sys, Redis, RedisServer};
use crate::systems::redis_cluster::RedisCluster;
use crate::systems::sessiondb::{self as sdb, Sessiondb};
use crate::systems::sled_naive::{RawGet, SledNaive};
use crate::systems::sqlite::{Sqlite, Synchronous};
use crate::systems::{System, Worker};

/// Everything a run shares.
pub struct Ctx {
    pub plan: Plan,
    pub work: PathBuf,
    pub rows: Vec<Row>,
    pub redis: bool,
    /// Print each row as a JSON line on stdout as soon as it is measured.
    pub json: bool,
    /// Systems (or steps) that failed; the run carried on past them.
    pub failures: Vec<String>,
    /// sessiondb Immediate: acknowledged registers per fsync.
    pub acks_per_fsync: Option<f64>,
    started: Instant,
}

impl Ctx {
    pub fn new(plan: Plan, work: PathBuf) -> Ctx {
        Ctx {
            plan,
            work,
            rows: Vec::new(),
            redis: redis_sys::available(),
            json: false,
            failures: Vec::new(),
            acks_per_fsync: None,
            started: Instant::now(),
        }
    }

    /// Prints progress on stderr.
    pub fn say(&self, what: impl AsRef<str>) {
        eprintln!(
            "[{:>6.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }

    /// Records a row (rows of workloads left out with `--only` are dropped).
    pub fn push(&mut self, row: Row) {
        if !self.plan.runs(&row.workload) {
            return;
        }
        let figure = match (row.ops_per_sec, row.seconds, row.bytes) {
            (Some(o), _, _) => format!("{o:.0} ops/s"),
            (None, _, Some(b)) => format!("{b} bytes"),
            (None, Some(s), None) => format!("{s:.3} s"),
            _ => String::new(),
        };
        self.say(format!(
            "{} {} {}: {figure} {}",
            row.workload,
            row.system,
            row.threads.map_or(String::new(), |t| format!("x{t}")),
            row.note.as_deref().unwrap_or("")
        ));
        if self.json {
            // At once, so that a run that dies later keeps what it measured.
            use std::io::Write as _;
            let line = serde_json::to_string(&row.rounded()).unwrap_or_default();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        self.rows.push(row);
    }

    /// Records that `what` failed, and marks each of `cells` of `system`
    /// that has no row yet as failed, so the run can carry on.
    pub fn failed(
        &mut self,
        what: &str,
        system: &str,
        cells: &[(&str, Option<usize>)],
        error: &anyhow::Error,
    ) {
        let why = format!("failed: {error:#}");
        self.say(format!("{what} {why}"));
        for &(workload, threads) in cells {
            let measured = self
                .rows
                .iter()
                .any(|r| r.workload == workload && r.system == system && r.threads == threads);
            if !measured && self.plan.runs(workload) {
                self.push(Row::new(workload, system, threads).note(why.clone()));
            }
        }
        self.failures.push(format!("{what}: {error:#}"));
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    Sessiondb,
    SessiondbImmediate,
    SledNaive,
    Redis,
    SessiondbRedis,
    SessiondbRedisCluster,
    SqliteNormal,
    SqliteFull,
}

impl Spec {
    const ALL: [Spec; 8] = [
        Spec::Sessiondb,
        Spec::SessiondbImmediate,
        Spec::SledNaive,
        Spec::Redis,
        Spec::SessiondbRedis,
        Spec::SessiondbRedisCluster,
        Spec::SqliteNormal,
        Spec::SqliteFull,
    ];

    fn name(self) -> &'static str {
        match self {
            Spec::Sessiondb => "sessiondb",
            Spec::SessiondbImmediate => "sessiondb_immediate",
            Spec::SledNaive => "sled_naive",
            Spec::Redis => "redis",
            Spec::SessiondbRedis => "sessiondb_redis",
            Spec::SessiondbRedisCluster => "sessiondb_redis_cluster",
            Spec::SqliteNormal => "sqlite_normal",
            Spec::SqliteFull => "sqlite_full",
        }
    }

    /// Rows whose durability setting changes nothing for reads are left
    /// out of resolve_hot.
    fn reads(self) -> bool {
        matches!(
            self,
            Spec::Sessiondb
                | Spec::SledNaive
                | Spec::Redis
                | Spec::SessiondbRedis
                | Spec::SessiondbRedisCluster
                | Spec::SqliteNormal
        )
    }

    /// The rows that acknowledge a write only once it is on disk.
    fn durable(self) -> bool {
        matches!(self, Spec::SessiondbImmediate | Spec::SqliteFull)
    }

    /// Whether the plan runs any workload this row takes part in.
    fn has_work(self, plan: &Plan) -> bool {
        (self.reads() && plan.runs("resolve_hot"))
            || (self.durable() && plan.runs("durable_register"))
            || (self == Spec::SessiondbImmediate && plan.runs("durable_cpu"))
            || ["extend", "set_data", "register"]
                .iter()
                .any(|w| plan.runs(w))
    }

    fn preload_threads(self) -> usize {
        match self {
            Spec::Sessiondb | Spec::SessiondbRedis | Spec::SessiondbRedisCluster => 8,
            Spec::SessiondbImmediate => 64,
            _ => 2,
        }
    }
}

/// Resolves every key once from one client, so that every row starts
/// with its caches as warm as the others'.
fn warm(system: &dyn System, keys: &[Key]) -> Result<()> {
    let mut w = system.worker()?;
    for k in keys {
        w.resolve(k)
            .with_context(|| format!("warming {}", system.name()))?;
    }
    Ok(())
}

fn stats(store: Option<&SessionStore>) -> Option<Stats> {
    store.and_then(|s| s.stats().ok())
}

/// Notes what sessiondb's counters say about a cell.
/// The acknowledged registers per fsync of sessiondb's durable_register row,
/// read back from its note (`compare --json` rows, `chart --from`).
pub fn acks_per_fsync(rows: &[Row]) -> Option<f64> {
    rows.iter()
        .find(|r| r.workload == "durable_register" && r.system == "sessiondb_immediate")
        .and_then(|r| r.note.as_deref())
        .and_then(|note| note.split(", ").find_map(|p| p.strip_suffix(" ops/fsync")))
        .and_then(|n| n.parse().ok())
}

fn sessiondb_note(workload: &str, ops: u64, before: &Stats, after: &Stats) -> String {
    let commits = after.commits - before.commits;
    let committed = after.committed_ops - before.committed_ops;
    let syncs = after.syncs - before.syncs;
    match workload {
        "resolve_hot" => {
            let skipped = after.touches_skipped - before.touches_skipped;
            format!(
                "{} of {} resolves wrote",
                ops.saturating_sub(skipped.min(ops)),
                ops
            )
        }
        _ if syncs > 0 => format!(
            "{:.1} ops/commit, {:.1} ops/fsync",
            committed as f64 / commits.max(1) as f64,
            committed as f64 / syncs as f64
        ),
        _ => format!("{:.1} ops/commit", committed as f64 / commits.max(1) as f64),
    }
}

/// Runs one workload at one client count and records the row.
fn cell(
    ctx: &mut Ctx,
    system: &dyn System,
    store: Option<&SessionStore>,
    workload: &str,
    threads: usize,
    timing: Timing,
    keys: &[Key],
) -> Result<()> {
    let pick = |rng: &mut fastrand::Rng| &keys[rng.usize(..keys.len())];
    let op: Box<crate::measure::Op<'_>> = match workload {
        "resolve_hot" => {
            Box::new(move |w: &mut dyn Worker, rng: &mut fastrand::Rng| w.resolve(pick(rng)))
        }
        "extend" => {
            Box::new(move |w: &mut dyn Worker, rng: &mut fastrand::Rng| w.extend(pick(rng)))
        }
        "set_data" => Box::new(move |w: &mut dyn Worker, rng: &mut fastrand::Rng| {
            let score = rng.u64(..1_000_000);
            w.set_data(pick(rng), score)
        }),
        _ => Box::new(|w: &mut dyn Worker, _: &mut fastrand::Rng| {
            w.register(&shape::next_actor("r")).map(drop)
        }),
    };
    let before = stats(store);
    let name = system.name();
    let row = match closed_loop(system, threads, timing, op.as_ref()) {
        Ok(sample) => {
            let mut row = Row::sample(workload, &name, threads, &sample);
            if workload.starts_with("durable") && !sample.client_wall.is_zero() {
                let share = sample.client_cpu.as_secs_f64() / sample.client_wall.as_secs_f64();
                let per_op = sample.client_cpu.as_secs_f64() * 1e6 / sample.ops.max(1) as f64;
                row.cpu_us_per_op = Some(per_op);
                row = row.note(format!(
                    "callers on CPU {:.1}% of their time, {per_op:.0} µs CPU per op",
                    share * 100.0
                ));
            }
            if let (Some(b), Some(a)) = (before, stats(store)) {
                if workload == "durable_register" && a.syncs > b.syncs {
                    ctx.acks_per_fsync = Some(
                        (a.committed_ops - b.committed_ops) as f64 / (a.syncs - b.syncs) as f64,
                    );
                }
                row = row.note(sessiondb_note(workload, sample.ops, &b, &a));
            }
            row
        }
        Err(e) => Row::new(workload, &name, Some(threads)).note(format!("error: {e:#}")),
    };
    ctx.push(row);
    Ok(())
}

/// The per-operation workloads on one store.
fn run_workloads(
    ctx: &mut Ctx,
    spec: Spec,
    system: &dyn System,
    store: Option<&SessionStore>,
    keys: &[Key],
) -> Result<()> {
    let plan = ctx.plan.clone();
    for workload in ["extend", "set_data", "register"] {
        if plan.runs(workload) {
            for &t in &plan.write_threads {
                cell(ctx, system, store, workload, t, plan.cell, keys)?;
            }
        }
    }
    if spec.durable() && plan.runs("durable_register") {
        let t = plan.durable_callers;
        cell(
            ctx,
            system,
            store,
            "durable_register",
            t,
            plan.durable,
            keys,
        )?;
    }
    // The CPU a durable register costs its caller alone, and with a second
    // caller, where each mostly waits on the other's fsync.
    if spec == Spec::SessiondbImmediate && plan.runs("durable_cpu") {
        for t in [1, 2] {
            cell(ctx, system, store, "durable_cpu", t, plan.durable, keys)?;
        }
    }
    Ok(())
}

fn resolve_hot(
    ctx: &mut Ctx,
    system: &dyn System,
    store: Option<&SessionStore>,
    keys: &[Key],
) -> Result<()> {
    let plan = ctx.plan.clone();
    if plan.runs("resolve_hot") {
        warm(system, keys)?;
        for &t in &plan.read_threads {
            cell(ctx, system, store, "resolve_hot", t, plan.cell, keys)?;
        }
    }
    Ok(())
}

fn skipped_rows(ctx: &mut Ctx, spec: Spec, why: &str) {
    let plan = ctx.plan.clone();
    let mut add = |workload: &str, threads: &[usize]| {
        if plan.runs(workload) {
            for &t in threads {
                ctx.push(Row::new(workload, spec.name(), Some(t)).skipped(why));
            }
        }
    };
    if spec.reads() {
        add("resolve_hot", &plan.read_threads);
    }
    for w in ["extend", "set_data", "register"] {
        add(w, &plan.write_threads);
    }
}

fn one_system(ctx: &mut Ctx, spec: Spec, clock: &BenchClock) -> Result<()> {
    let dir = ctx.dir(spec.name());
    let n = ctx.plan.preload;
    ctx.say(format!("{}: preloading {n} sessions", spec.name()));
    match spec {
        Spec::Sessiondb | Spec::SessiondbImmediate => {
            let durability = if spec == Spec::Sessiondb {
                sdb::PERIODIC
            } else {
                Durability::Immediate
            };
            let config = || sdb::config(&dir, clock, durability);
            let mut system = Sessiondb::open(spec.name(), config())?;
            let keys = system.preload(n, spec.preload_threads(), "p", true)?;
            if spec.reads() {
                resolve_hot(ctx, &system, Some(&system.store), &keys)?;
                if ctx.plan.runs("resolve_hot") {
                    // The reference: sled's own get of the very same records.
                    system.close()?;
                    let raw = RawGet::open_sessiondb_dir(&dir)?;
                    resolve_hot(ctx, &raw, None, &keys)?;
                    drop(raw);
                    system = Sessiondb::open(spec.name(), config())?;
                }
            }
            run_workloads(ctx, spec, &system, Some(&system.store), &keys)?;
            system.close()?;
        }
        Spec::SledNaive => {
            let system = SledNaive::open(&dir, clock)?;
            let keys = system.preload(n, spec.preload_threads(), "p", true)?;
            resolve_hot(ctx, &system, None, &keys)?;
            run_workloads(ctx, spec, &system, None, &keys)?;
            let t = Instant::now();
            drop(system);
            ctx.say(format!(
                "sled_naive: dropped in {:.1} s",
                t.elapsed().as_secs_f64()
            ));
        }
        Spec::Redis => {
            let server = RedisServer::start(&dir, false)?;
            let system = Redis::new(spec.name(), server, clock)?;
            let keys = system.preload(n, 1, "p", true)?;
            resolve_hot(ctx, &system, None, &keys)?;
            run_workloads(ctx, spec, &system, None, &keys)?;
        }
        Spec::SessiondbRedis => {
            // The same server settings as the `redis` row.
            let server = RedisServer::start(&dir, false)?;
            let system = Sessiondb::open(spec.name(), sdb::redis_config(&server.url(), clock))?;
            let keys = system.preload(n, spec.preload_threads(), "p", true)?;
            resolve_hot(ctx, &system, Some(&system.store), &keys)?;
            run_workloads(ctx, spec, &system, Some(&system.store), &keys)?;
            system.close()?;
        }
        Spec::SessiondbRedisCluster => {
            // Three primaries with a replica each, without persistence (as
            // the `redis` row's server).
            let cluster = RedisCluster::start(&dir)?;
            let config = sdb::redis_cluster_config(cluster.seeds(), clock);
            let system = Sessiondb::open(spec.name(), config)?;
            let keys = system.preload(n, spec.preload_threads(), "p", true)?;
            resolve_hot(ctx, &system, Some(&system.store), &keys)?;
            run_workloads(ctx, spec, &system, Some(&system.store), &keys)?;
            system.close()?;
        }
        Spec::SqliteNormal | Spec::SqliteFull => {
            let sync = if spec == Spec::SqliteNormal {
                Synchronous::Normal
            } else {
                Synchronous::Full
            };
            let system = Sqlite::open(&dir, sync, clock)?;
            let keys = system.preload(n, 1, "p", true)?;
            if spec.reads() {
                resolve_hot(ctx, &system, None, &keys)?;
            }
            run_workloads(ctx, spec, &system, None, &keys)?;
        }
    }
    remove_dir(&dir);
    Ok(())
}

pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("could not remove {}: {e}", dir.display());
        }
    }
}

/// Runs the per-operation workloads on every system.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    let wanted = [
        "register",
        "resolve_hot",
        "extend",
        "set_data",
        "durable_register",
        "durable_cpu",
    ];
    if !wanted.iter().any(|w| ctx.plan.runs(w)) {
        return Ok(());
    }
    let clock = BenchClock::starting_at(unix_ms());
    for spec in Spec::ALL {
        if !spec.has_work(&ctx.plan) || !ctx.plan.has(spec.name()) {
            continue;
        }
        if matches!(
            spec,
            Spec::Redis | Spec::SessiondbRedis | Spec::SessiondbRedisCluster
        ) && !ctx.redis
        {
            skipped_rows(
                ctx,
                spec,
                "redis-server not on PATH (scripts/install-redis.sh)",
            );
            continue;
        }
        if let Err(e) = one_system(ctx, spec, &clock) {
            let plan = ctx.plan.clone();
            let cells: Vec<(&str, Option<usize>)> =
                ["resolve_hot", "extend", "set_data", "register"]
                    .iter()
                    .flat_map(|w| {
                        let threads = if *w == "resolve_hot" {
                            &plan.read_threads
                        } else {
                            &plan.write_threads
                        };
                        threads.iter().map(move |t| (*w, Some(*t)))
                    })
                    .chain([
                        ("durable_register", Some(plan.durable_callers)),
                        ("durable_cpu", Some(1)),
                        ("durable_cpu", Some(2)),
                    ])
                    .collect();
            ctx.failed(spec.name(), spec.name(), &cells, &e);
        }
    }
    if ctx.plan.runs("durable_register") && ctx.plan.has("redis_aof_always") {
        durable_redis(ctx, &clock)?;
    }
    Ok(())
}

/// durable_register on Redis with an fsync per write (`appendfsync always`).
fn durable_redis(ctx: &mut Ctx, clock: &BenchClock) -> Result<()> {
    let name = "redis_aof_always";
    let t = ctx.plan.durable_callers;
    if !ctx.redis {
        ctx.push(Row::new("durable_register", name, Some(t)).skipped("redis-server not on PATH"));
        return Ok(());
    }
    let dir = ctx.dir(name);
    {
        let server = RedisServer::start(&dir, true)?;
        let system = Redis::new(name, server, clock)?;
        let timing = ctx.plan.durable;
        cell(ctx, &system, None, "durable_register", t, timing, &[])?;
    }
    remove_dir(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_system_marks_only_its_unmeasured_cells_and_the_run_goes_on() {
        let plan = Plan::new(true, None, None);
        let mut ctx = Ctx::new(plan, std::env::temp_dir());
        ctx.push(Row::new("register", "sqlite_normal", Some(1)));
        let e = anyhow::anyhow!("disk full");
        ctx.failed(
            "sqlite_normal",
            "sqlite_normal",
            &[("register", Some(1)), ("register", Some(2))],
            &e,
        );
        let rows: Vec<_> = ctx
            .rows
            .iter()
            .map(|r| (r.threads, r.note.clone()))
            .collect();
        assert_eq!(
            rows,
            vec![
                (Some(1), None),
                (Some(2), Some("failed: disk full".to_owned()))
            ]
        );
        assert_eq!(ctx.failures, vec!["sqlite_normal: disk full".to_owned()]);
    }
}
