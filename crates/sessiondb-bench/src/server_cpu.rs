//! What each write costs the Redis server: its CPU per operation (`INFO
//! cpu`, user + system) and the commands it ran, for sessiondb's Redis
//! engine (one node, which also follows its own events) and for the
//! hand-written one-script baseline, each on a fresh `redis-server`: 20,000
//! registers, then a set_data and an extend of each of those sessions, one
//! at a time from one client. A row's ops/s is operations per second of
//! server CPU, so `sdb÷this` is the baseline's CPU per operation over
//! sessiondb's.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;

use crate::clock::{unix_ms, BenchClock};
use crate::compare::{remove_dir, Ctx};
use crate::measure::Row;
use crate::shape::{self, Key};
use crate::systems::redis::{Redis, RedisServer};
use crate::systems::sessiondb::{self as sdb, Sessiondb};
use crate::systems::{System, Worker};

/// Operations per measurement: enough for a few seconds of server CPU.
const OPS: usize = 20_000;
const QUICK_OPS: usize = 2_000;

/// The workloads, one row each per system.
pub const WORKLOADS: [&str; 3] = ["cpu_register", "cpu_set_data", "cpu_extend"];

/// Per command, its calls and the microseconds the server counted in it.
pub type Calls = HashMap<String, (u64, u64)>;

/// The server's CPU seconds (user + system), and its commands' [`Calls`].
pub fn server_use(server: &RedisServer) -> Result<(f64, Calls)> {
    let mut c = server.connection()?;
    let cpu: String = redis::cmd("INFO").arg("cpu").query(&mut c)?;
    let field = |name: &str| -> f64 {
        cpu.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let seconds = field("used_cpu_user") + field("used_cpu_sys");
    let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut c)?;
    let calls = stats
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect();
    Ok((seconds, calls))
}

/// The commands run per operation between two `server_use` readings, the
/// most frequent first, as `name n (µs in it per op), ...` (a script's
/// time includes the commands it calls).
pub fn commands_per_op(before: &Calls, after: &Calls, ops: usize) -> (f64, String) {
    let mut per: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(name, &(n, usec))| {
            let (was, was_usec) = before.get(name).copied().unwrap_or((0, 0));
            let ops = ops as f64;
            (
                name.clone(),
                (n - was) as f64 / ops,
                (usec - was_usec) as f64 / ops,
            )
        })
        // The two INFO calls of the reading itself are not the workload's.
        .filter(|(name, n, _)| *n >= 0.01 && name != "info")
        .collect();
    per.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));
    let total = per.iter().map(|(_, n, _)| n).sum();
    let text = per
        .iter()
        .map(|(name, n, usec)| format!("{name} {n:.2} ({usec:.1} µs)"))
        .collect::<Vec<_>>()
        .join(", ");
    (total, text)
}

/// Runs `op` `n` times and returns the row of what it cost the server.
fn cost(
    server: &RedisServer,
    workload: &str,
    system: &str,
    n: usize,
    mut op: impl FnMut(usize) -> Result<()>,
) -> Result<Row> {
    let (cpu_before, calls_before) = server_use(server)?;
    for i in 0..n {
        op(i)?;
    }
    // The node's own subscriber hears the events a little later.
    std::thread::sleep(Duration::from_millis(200));
    let (cpu_after, calls_after) = server_use(server)?;
    let cpu = cpu_after - cpu_before;
    let (total, calls) = commands_per_op(&calls_before, &calls_after, n);
    let mut row = Row::new(workload, system, None).note(format!(
        "server CPU {:.1} µs per op, {total:.1} commands per op: {calls}",
        cpu / n as f64 * 1e6
    ));
    row.ops_per_sec = Some(n as f64 / cpu.max(1e-9));
    row.seconds = Some(cpu);
    Ok(row)
}

/// The three rows of `system`, whose server is `server`.
fn rows_of(ctx: &Ctx, system: &dyn System, server: &RedisServer) -> Result<Vec<Row>> {
    let n = if ctx.plan.quick { QUICK_OPS } else { OPS };
    let name = system.name();
    let mut worker: Box<dyn Worker + '_> = system.worker()?;
    let mut keys: Vec<Key> = Vec::with_capacity(n);
    let register = cost(server, "cpu_register", &name, n, |_| {
        let actor = shape::next_actor("cpu");
        keys.push(Key::new(worker.register(&actor)?)?);
        Ok(())
    })?;
    let set_data = cost(server, "cpu_set_data", &name, n, |i| {
        worker.set_data(&keys[i], i as u64)
    })?;
    let extend = cost(server, "cpu_extend", &name, n, |i| worker.extend(&keys[i]))?;
    Ok(vec![register, set_data, extend])
}

/// The three rows of one system on a fresh server of its own.
fn measure(ctx: &Ctx, system: &str) -> Result<Vec<Row>> {
    let dir = ctx.work.join(format!("server-cpu-{system}"));
    let clock = BenchClock::starting_at(unix_ms());
    let server = RedisServer::start(&dir, false)?;
    let rows = if system == "redis" {
        let redis = Redis::new("redis", server, &clock)?;
        rows_of(ctx, &redis, &redis.server)
    } else {
        let store = Sessiondb::open(
            "sessiondb_redis",
            sdb::redis_config(&server.url(), &clock).reaper_thread(false),
        )?;
        let rows = rows_of(ctx, &store, &server);
        store.close()?;
        drop(server);
        rows
    };
    remove_dir(&dir);
    rows
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let systems = ["redis", "sessiondb_redis"];
    if !WORKLOADS.iter().any(|w| ctx.plan.runs(w)) {
        return Ok(());
    }
    for system in systems {
        if !ctx.plan.has(system) {
            continue;
        }
        let rows = if ctx.redis {
            measure(ctx, system)
        } else {
            Ok(WORKLOADS
                .iter()
                .map(|w| Row::new(w, system, None).skipped("redis-server not on PATH"))
                .collect())
        };
        match rows {
            Ok(rows) => {
                for row in rows {
                    ctx.push(row);
                }
            }
            Err(e) => {
                let cells: Vec<(&str, Option<usize>)> =
                    WORKLOADS.iter().map(|w| (*w, None)).collect();
                ctx.failed("cpu_register", system, &cells, &e);
            }
        }
    }
    Ok(())
}
