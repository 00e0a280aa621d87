//! The workloads at a million sessions (100,000 with `--quick`): peak RSS
//! and disk bytes after loading, open after a clean close and after an
//! unclean shutdown, and reaping them all while a foreground client
//! resolves live sessions.
//!
//! Loading runs in a child process (this binary, hidden subcommand
//! `child-load`), so that its peak RSS is the store's alone; the parent
//! then reuses the loaded directory for the other workloads.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sessiondb::SessionStore;

use crate::clock::{unix_ms, BenchClock};
use crate::compare::{remove_dir, Ctx};
use crate::measure::{self, p_us, Row};
use crate::rss;
use crate::shape::{self, Key};
use crate::systems::redis::{Redis, RedisServer};
use crate::systems::sessiondb::{self as sdb, Sessiondb};
use crate::systems::sled_naive::{self, SledNaive};
use crate::systems::sqlite::{Sqlite, Synchronous};
use crate::systems::{preload_with_workers, System};

/// What a `child-load` reports on its last stdout line.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoadReport {
    pub peak_rss: u64,
    pub seconds: f64,
    /// The child's clock when it finished: every session it made expires
    /// before this + TTL.
    pub end_ms: u64,
}

/// The `child-load` subcommand: loads `n` sessions into `dir` and prints a
/// [`LoadReport`].
pub fn child_load(system: &str, dir: &Path, n: usize, t0: u64, threads: usize) -> Result<()> {
    let clock = BenchClock::starting_at(t0);
    let started = Instant::now();
    match system {
        "sessiondb" => {
            let s = Sessiondb::open("sessiondb", sdb::config(dir, &clock, sdb::PERIODIC))?;
            preload_with_workers(&s, n, threads, "b", false)?;
            s.close()?;
        }
        "sled_naive" => {
            let s = SledNaive::open(dir, &clock)?;
            preload_with_workers(&s, n, threads, "b", false)?;
            s.db.flush()?;
        }
        "sqlite_normal" => {
            let s = Sqlite::open(dir, Synchronous::Normal, &clock)?;
            s.preload(n, threads, "b", false)?;
        }
        other => bail!("child-load knows no system {other:?}"),
    }
    let report = LoadReport {
        peak_rss: rss::peak_rss_self()?,
        seconds: started.elapsed().as_secs_f64(),
        end_ms: clock.now_ms(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The `child-hold` subcommand: opens the sessiondb store in `dir`,
/// registers `n` more sessions, prints `ready` and waits to be killed.
/// Should the parent die first, its end of stdin closes and the child
/// exits (still without closing the store).
pub fn child_hold(dir: &Path, n: usize, t0: u64) -> Result<()> {
    let clock = BenchClock::starting_at(t0);
    let s = Sessiondb::open("sessiondb", sdb::config(dir, &clock, sdb::PERIODIC))?;
    preload_with_workers(&s, n, 8, "h", false)?;
    println!("ready");
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(1);
}

/// What the `sessiondb` binary caps glibc's malloc arenas at
/// (`crates/sessiondb-server/src/main.rs`).
const SERVER_MALLOC_ARENAS: &str = "2";

fn load_in_child(ctx: &Ctx, system: &str, dir: &Path, threads: usize) -> Result<LoadReport> {
    load_in_child_with(ctx, system, dir, threads, &[])
}

fn load_in_child_with(
    ctx: &Ctx,
    system: &str,
    dir: &Path,
    threads: usize,
    env: &[(&str, &str)],
) -> Result<LoadReport> {
    let n = ctx.plan.bulk;
    ctx.say(format!("{system}: loading {n} sessions in a child process"));
    let out = Command::new(std::env::current_exe()?)
        .envs(env.iter().copied())
        .arg("child-load")
        .args(["--system", system])
        .arg("--dir")
        .arg(dir)
        .args(["--n", &n.to_string()])
        .args(["--t0", &unix_ms().to_string()])
        .args(["--threads", &threads.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running child-load")?;
    if !out.status.success() {
        bail!("child-load {system} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().context("child-load printed nothing")?;
    serde_json::from_str(last).with_context(|| format!("child-load printed {last:?}"))
}

fn count_note(ctx: &Ctx) -> String {
    let n = ctx.plan.bulk;
    if ctx.plan.quick {
        format!("{n} sessions (--quick; the full run uses 1,000,000)")
    } else {
        format!("{n} sessions")
    }
}

fn rss_row(ctx: &Ctx, system: &str, load: &LoadReport, how: &str) -> Row {
    Row {
        bytes: Some(load.peak_rss),
        seconds: Some(load.seconds),
        ..Row::new("peak_rss", system, None)
    }
    .note(format!("{}; {how}", count_note(ctx)))
}

fn disk_row(ctx: &Ctx, system: &str, bytes: u64, how: &str) -> Row {
    Row {
        bytes: Some(bytes),
        ..Row::new("disk_bytes", system, None)
    }
    .note(format!("{}; {how}", count_note(ctx)))
}

fn open_row(ctx: &Ctx, workload: &str, system: &str, seconds: f64, how: &str) -> Row {
    Row {
        seconds: Some(seconds),
        ..Row::new(workload, system, None)
    }
    .note(format!("{}; {how}", count_note(ctx)))
}

/// Times `f`, best of `times`.
fn best_of(times: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..times {
        best = best.min(f()?);
    }
    Ok(best)
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

/// The trees sessiondb opens, opened with sled itself.
fn raw_sled_open(dir: &Path) -> Result<f64> {
    let ((db, _trees), secs) = timed(|| {
        let db = sled_naive::open_db(dir)?;
        let trees = ["records", "expiries", "meta", "quarantine"]
            .iter()
            .map(|t| db.open_tree(t))
            .collect::<sled::Result<Vec<_>>>()?;
        Ok((db, trees))
    })?;
    drop(db);
    Ok(secs)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Reaps everything due while one foreground client resolves `hot` keys;
/// `reap` runs on this thread.
fn reap_row(
    ctx: &Ctx,
    system: &dyn System,
    hot: &[Key],
    reap: &dyn Fn() -> Result<usize>,
) -> Result<Row> {
    let mut w = system.worker()?;
    for k in hot {
        w.resolve(k)?;
    }
    let done = AtomicBool::new(false);
    let (reaped, secs, fg) = std::thread::scope(|scope| -> Result<_> {
        let fg = scope.spawn(|| -> Result<(u64, hdrhistogram::Histogram<u64>)> {
            let mut hist = measure::histogram()?;
            let mut rng = fastrand::Rng::with_seed(7);
            let mut ops = 0;
            while !done.load(Ordering::Acquire) {
                let t = Instant::now();
                w.resolve(&hot[rng.usize(..hot.len())])?;
                measure::record(&mut hist, t.elapsed());
                ops += 1;
            }
            Ok((ops, hist))
        });
        let result = timed(reap);
        done.store(true, Ordering::Release);
        let fg = fg
            .join()
            .map_err(|_| anyhow::anyhow!("the foreground thread panicked"))?;
        let (reaped, secs) = result?;
        Ok((reaped, secs, fg?))
    })?;
    let (fg_ops, hist) = fg;
    Ok(Row {
        ops_per_sec: Some(reaped as f64 / secs.max(1e-9)),
        p50_us: p_us(&hist, 0.50),
        p99_us: p_us(&hist, 0.99),
        seconds: Some(secs),
        ..Row::new("reap", &system.name(), Some(1))
    }
    .note(format!(
        "{reaped} due sessions reaped ({}); p50/p99 are of {fg_ops} foreground resolves \
         at 1 thread during the reap (slowest {:.0} µs)",
        if ctx.plan.quick {
            "--quick; the full run reaps 1,000,000"
        } else {
            "full run"
        },
        hist.max() as f64 / 1_000.0
    )))
}

/// The clock of a store whose loaded sessions are all due.
fn due_clock(load: &LoadReport) -> BenchClock {
    BenchClock::starting_at(load.end_ms + shape::ttl_ms() + 1_000)
}

fn bulk_sessiondb(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir("bulk-sessiondb");
    let load = load_in_child(ctx, "sessiondb", &dir, 8)?;
    ctx.push(rss_row(
        ctx,
        "sessiondb",
        &load,
        "child process that registered them (8 threads) and closed",
    ));
    if ctx.plan.runs("peak_rss") && ctx.plan.has("sessiondb_2_arenas") {
        // The same load with glibc's malloc arenas capped as the `sessiondb`
        // binary caps them; a game server embedding the library can do the
        // same with MALLOC_ARENA_MAX.
        let capped_dir = ctx.dir("bulk-sessiondb-2-arenas");
        let env = [("MALLOC_ARENA_MAX", SERVER_MALLOC_ARENAS)];
        let capped = load_in_child_with(ctx, "sessiondb", &capped_dir, 8, &env)?;
        remove_dir(&capped_dir);
        ctx.push(rss_row(
            ctx,
            "sessiondb_2_arenas",
            &capped,
            "as the sessiondb row, with MALLOC_ARENA_MAX=2 (what the sessiondb binary sets)",
        ));
    }
    ctx.push(disk_row(
        ctx,
        "sessiondb",
        rss::disk_bytes(&dir)?,
        "after a clean close",
    ));

    // sled holding the very same records (and nothing else).
    let raw_dir = ctx.dir("bulk-sled-raw");
    {
        let src = sled_naive::open_db(&dir)?.open_tree("records")?;
        let dst_db = sled_naive::open_db(&raw_dir)?;
        let dst = dst_db.open_tree("records")?;
        for kv in src.iter() {
            let (k, v) = kv?;
            dst.insert(k, v)?;
        }
        dst_db.flush()?;
    }
    let raw_bytes = rss::disk_bytes(&raw_dir)?;
    ctx.push(disk_row(
        ctx,
        "sled_raw",
        raw_bytes,
        "sled holding the same session records (one tree), flushed",
    ));
    remove_dir(&raw_dir);

    let clock = BenchClock::starting_at(load.end_ms);
    if ctx.plan.runs("open_clean") {
        let mut raw = f64::INFINITY;
        let mut ours = f64::INFINITY;
        for _ in 0..2 {
            raw = raw.min(raw_sled_open(&dir)?);
            let (store, secs) = timed(|| {
                Ok(SessionStore::open(sdb::config(
                    &dir,
                    &clock,
                    sdb::PERIODIC,
                ))?)
            })?;
            ours = ours.min(secs);
            if !store.recovery_report().clean_shutdown {
                bail!("sessiondb did not see its clean shutdown");
            }
            store.close()?;
        }
        ctx.push(open_row(
            ctx,
            "open_clean",
            "sessiondb",
            ours,
            "SessionStore::open after close, best of 2",
        ));
        ctx.push(open_row(
            ctx,
            "open_clean",
            "sled_raw",
            raw,
            "sled open of the same directory + its 4 trees, best of 2",
        ));
    }

    if ctx.plan.runs("open_unclean") {
        ctx.say("sessiondb: a child holds the store and is killed");
        let mut child = Command::new(std::env::current_exe()?)
            .arg("child-hold")
            .arg("--dir")
            .arg(&dir)
            .args(["--n", "1000", "--t0", &load.end_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
        child.kill()?;
        child.wait()?;
        if line.trim() != "ready" {
            bail!("child-hold said {line:?}");
        }
        let copy = ctx.dir("bulk-sessiondb-unclean-copy");
        copy_dir(&dir, &copy)?;
        let raw = raw_sled_open(&copy)?;
        remove_dir(&copy);
        let (store, secs) = timed(|| {
            Ok(SessionStore::open(sdb::config(
                &dir,
                &clock,
                sdb::PERIODIC,
            ))?)
        })?;
        // Open returned before the check; wait for it to report on it.
        let report = store.wait_for_recovery();
        store.close()?;
        let check = match (&report.check, &report.check_error) {
            (Some(c), _) => format!(
                "open returned before the check, which then ran in the background for {:.2} s \
                 beside the store's serving: {} sessions, {} problems",
                c.duration.as_secs_f64(),
                c.sessions,
                c.problems()
            ),
            (None, Some(e)) => format!("the background check failed: {e}"),
            (None, None) => "no check ran".to_owned(),
        };
        ctx.push(open_row(
            ctx,
            "open_unclean",
            "sessiondb",
            secs,
            &format!("after SIGKILL of the process holding it; {check}"),
        ));
        ctx.push(open_row(
            ctx,
            "open_unclean",
            "sled_raw",
            raw,
            "sled open of a copy of the same killed directory + 4 trees",
        ));
    }

    if ctx.plan.runs("reap") {
        let clock = due_clock(&load);
        let s = Sessiondb::open(
            "sessiondb",
            sdb::config(&dir, &clock, sdb::PERIODIC).reaper_thread(false),
        )?;
        let hot = preload_with_workers(&s, ctx.plan.hot, 8, "hot", true)?;
        let store = s.store.clone();
        let row = reap_row(ctx, &s, &hot, &|| Ok(store.reap_expired()?))?;
        ctx.push(row);
        drop(store);
        s.close()?;
    }
    remove_dir(&dir);
    Ok(())
}

fn bulk_sled_naive(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir("bulk-sled-naive");
    let load = load_in_child(ctx, "sled_naive", &dir, 2)?;
    ctx.push(rss_row(
        ctx,
        "sled_naive",
        &load,
        "child process that registered them (2 threads)",
    ));
    ctx.push(disk_row(
        ctx,
        "sled_naive",
        rss::disk_bytes(&dir)?,
        "after flush and drop",
    ));
    let clock = due_clock(&load);
    if ctx.plan.runs("open_clean") {
        let secs = best_of(2, || Ok(timed(|| SledNaive::open(&dir, &clock))?.1))?;
        ctx.push(open_row(
            ctx,
            "open_clean",
            "sled_naive",
            secs,
            "sled open + 3 trees, best of 2",
        ));
    }
    if ctx.plan.runs("reap") {
        let s = SledNaive::open(&dir, &clock)?;
        let hot = s.preload(ctx.plan.hot, 2, "hot", true)?;
        let row = reap_row(ctx, &s, &hot, &|| s.reap())?;
        ctx.push(row);
    }
    remove_dir(&dir);
    Ok(())
}

fn bulk_sqlite(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir("bulk-sqlite");
    let load = load_in_child(ctx, "sqlite_normal", &dir, 1)?;
    ctx.push(rss_row(
        ctx,
        "sqlite_normal",
        &load,
        "child process that inserted them (batched transactions)",
    ));
    ctx.push(disk_row(
        ctx,
        "sqlite_normal",
        rss::disk_bytes(&dir)?,
        "database + WAL after the last connection closed",
    ));
    let clock = due_clock(&load);
    if ctx.plan.runs("open_clean") {
        let secs = best_of(2, || {
            Ok(timed(|| Sqlite::open_and_query(&dir, Synchronous::Normal, &clock))?.1)
        })?;
        ctx.push(open_row(
            ctx,
            "open_clean",
            "sqlite_normal",
            secs,
            "connection + first query, best of 2",
        ));
    }
    if ctx.plan.runs("reap") {
        let s = Sqlite::open(&dir, Synchronous::Normal, &clock)?;
        let hot = s.preload(ctx.plan.hot, 1, "hot", true)?;
        let row = reap_row(ctx, &s, &hot, &|| s.reap())?;
        ctx.push(row);
    }
    remove_dir(&dir);
    Ok(())
}

fn bulk_redis(ctx: &mut Ctx) -> Result<()> {
    if !ctx.redis {
        for w in ["peak_rss", "disk_bytes", "reap"] {
            if ctx.plan.runs(w) {
                ctx.push(Row::new(w, "redis", None).skipped("redis-server not on PATH"));
            }
        }
        return Ok(());
    }
    let dir = ctx.dir("bulk-redis");
    {
        let clock = BenchClock::starting_at(unix_ms());
        let n = ctx.plan.bulk;
        ctx.say(format!("redis: loading {n} sessions (pipelined)"));
        let s = Redis::new("redis", RedisServer::start(&dir, false)?, &clock)?;
        let started = Instant::now();
        s.preload(n, 1, "b", false)?;
        let load = LoadReport {
            peak_rss: s.server.peak_rss()?,
            seconds: started.elapsed().as_secs_f64(),
            end_ms: clock.now_ms(),
        };
        ctx.push(rss_row(
            ctx,
            "redis",
            &load,
            "the redis-server process (VmHWM)",
        ));
        ctx.push(disk_row(
            ctx,
            "redis",
            s.server.snapshot_bytes()?,
            "RDB snapshot written by SAVE (the plain rows keep nothing on disk)",
        ));
        if ctx.plan.runs("reap") {
            // Every loaded session expires by load.end_ms + TTL.
            clock.jump(shape::TTL + Duration::from_secs(1));
            let hot = s.preload(ctx.plan.hot, 1, "hot", true)?;
            let row = reap_row(ctx, &s, &hot, &|| s.reap())?;
            ctx.push(row);
        }
    }
    remove_dir(&dir);
    Ok(())
}

/// The reap workload on the Redis engine: two store instances (two nodes)
/// on one server reap the same due sessions at once.
fn bulk_sessiondb_redis(ctx: &mut Ctx) -> Result<()> {
    if !ctx.plan.runs("reap") {
        return Ok(());
    }
    if !ctx.redis {
        ctx.push(Row::new("reap", "sessiondb_redis", Some(1)).skipped("redis-server not on PATH"));
        return Ok(());
    }
    let dir = ctx.dir("bulk-sessiondb-redis");
    {
        let server = RedisServer::start(&dir, false)?;
        let clock = BenchClock::starting_at(unix_ms());
        let config = || sdb::redis_config(&server.url(), &clock).reaper_thread(false);
        let a = Sessiondb::open("sessiondb_redis", config())?;
        let b = Sessiondb::open("sessiondb_redis", config())?;
        let n = ctx.plan.bulk;
        ctx.say(format!("sessiondb_redis: registering {n} sessions"));
        preload_with_workers(&a, n, 8, "b", false)?;
        clock.jump(shape::TTL + Duration::from_secs(1));
        let hot = preload_with_workers(&a, ctx.plan.hot, 8, "hot", true)?;
        let (sa, sb) = (a.store.clone(), b.store.clone());
        let both = || -> Result<usize> {
            std::thread::scope(|scope| {
                let other = scope.spawn(|| sb.reap_expired());
                let here = sa.reap_expired()?;
                let there = other
                    .join()
                    .map_err(|_| anyhow::anyhow!("a reaper thread panicked"))??;
                Ok(here + there)
            })
        };
        let row = reap_row(ctx, &a, &hot, &both)?;
        ctx.push(row.note("two store instances (nodes) reaping at once"));
        a.close()?;
        b.close()?;
    }
    remove_dir(&dir);
    Ok(())
}

/// One system's million-session workloads.
type BulkStep = fn(&mut Ctx) -> Result<()>;

/// Runs the million-session workloads on every system.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    if !ctx.plan.runs_bulk() {
        return Ok(());
    }
    let steps: [(&str, BulkStep); 5] = [
        ("sessiondb", bulk_sessiondb),
        ("sled_naive", bulk_sled_naive),
        ("redis", bulk_redis),
        ("sessiondb_redis", bulk_sessiondb_redis),
        ("sqlite_normal", bulk_sqlite),
    ];
    for (system, step) in steps {
        if !ctx.plan.has(system) {
            continue;
        }
        // One system's fault marks its cells failed; the run carries on.
        if let Err(e) = step(ctx) {
            let cells = ["peak_rss", "disk_bytes", "open_clean", "open_unclean"]
                .map(|w| (w, None))
                .into_iter()
                .chain([("reap", Some(1))])
                .collect::<Vec<_>>();
            ctx.failed(&format!("{system} at scale"), system, &cells, &e);
        }
    }
    Ok(())
}
