//! What following the events costs the Redis server: its CPU per register
//! while 1, 2, 4 and 8 nodes follow the store (each a `SessionStore` on one
//! redis-server, as game-server nodes are, each with a subscriber), 20,000
//! registers made through the first, one at a time. Measured from the
//! server's `INFO cpu` and `INFO commandstats` before and after, once every
//! node has heard every register. A row's ops/s is registers per second of
//! server CPU. Over loopback TCP (`sessiondb_redis`) the kernel charges the
//! server for the receiving side of every message it sends too; over its
//! unix socket (`sessiondb_redis_unix`) much less.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sessiondb::{Data, Event, SessionStore};

use crate::clock::{unix_ms, BenchClock};
use crate::compare::{remove_dir, Ctx};
use crate::measure::Row;
use crate::server_cpu::{commands_per_op, server_use};
use crate::systems::redis::RedisServer;
use crate::systems::sessiondb as sdb;

/// Registers per measurement: enough for a few seconds of server CPU, so
/// that the server's own timers and the scheduler's noise are a small part
/// of it (2,000 gave per-register figures 30% apart between runs); fewer
/// with `--quick`.
const REGISTERS: usize = 20_000;
const QUICK_REGISTERS: usize = 2_000;
/// The numbers of following nodes.
pub const NODES: [usize; 4] = [1, 2, 4, 8];

/// The write-family system calls the process has made (`syscw` of
/// `/proc/PID/io`): a message sent to a subscriber is one, unless the
/// server had more than one for it in the same turn of its event loop.
fn write_calls(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no syscw in /proc/{pid}/io"))
}

/// One measurement: `nodes` stores follow, one registers; over TCP, or
/// the server's unix socket; its row is `system`'s.
fn measure(ctx: &Ctx, nodes: usize, unix: bool, system: &str) -> Result<Row> {
    let registers = if ctx.plan.quick {
        QUICK_REGISTERS
    } else {
        REGISTERS
    };
    let dir = ctx.work.join(format!("follow-{nodes}"));
    let server = RedisServer::start(&dir, false)?;
    let clock = BenchClock::starting_at(unix_ms());
    let url = if unix {
        server.unix_url()
    } else {
        server.url()
    };
    let config = || {
        sdb::redis_config(&url, &clock)
            .reaper_thread(false)
            .event_capacity(2 * registers)
    };
    let stores: Vec<SessionStore> = (0..nodes)
        .map(|_| SessionStore::open(config()))
        .collect::<std::result::Result<_, _>>()?;
    let heard: Vec<_> = stores.iter().map(SessionStore::subscribe).collect();
    // Let every node's subscriptions settle.
    std::thread::sleep(Duration::from_millis(500));
    let (cpu_before, calls_before) = server_use(&server)?;
    let writes_before = write_calls(server.pid())?;
    for i in 0..registers {
        stores[0].register(&format!("f{i}"), "en", Data::new())?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for rx in &heard {
        let mut sets = 0;
        while sets < registers {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Event::Set { .. }) => sets += 1,
                Ok(_) => {}
                Err(_) => bail!("a node heard {sets} of {registers} registers within 60 s"),
            }
        }
    }
    let (cpu_after, calls_after) = server_use(&server)?;
    let writes = write_calls(server.pid())? - writes_before;
    for s in stores {
        s.close()?;
    }
    drop(server);
    remove_dir(&dir);
    let cpu = cpu_after - cpu_before;
    let (_, calls) = commands_per_op(&calls_before, &calls_after, registers);
    let mut row = Row::new("follow_cpu", system, Some(nodes)).note(format!(
        "server CPU per register {:.1} µs, write(2) calls {:.2}; commands per register: {calls}",
        cpu / registers as f64 * 1e6,
        writes as f64 / registers as f64
    ));
    row.ops_per_sec = Some(registers as f64 / cpu.max(1e-9));
    row.seconds = Some(cpu);
    Ok(row)
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    if !ctx.plan.runs("follow_cpu") || !ctx.plan.has("sessiondb_redis") {
        return Ok(());
    }
    for (unix, system) in [(false, "sessiondb_redis"), (true, "sessiondb_redis_unix")] {
        for nodes in NODES {
            let row = if ctx.redis {
                measure(ctx, nodes, unix, system)
            } else {
                Ok(Row::new("follow_cpu", system, Some(nodes)).skipped("redis-server not on PATH"))
            };
            match row {
                Ok(row) => ctx.push(row),
                Err(e) => ctx.failed("follow_cpu", system, &[("follow_cpu", Some(nodes))], &e),
            }
        }
    }
    Ok(())
}
