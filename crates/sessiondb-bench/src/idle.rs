//! What idle game-server nodes cost a Redis Cluster: the commands per
//! second its six servers run (`total_commands_processed` of `INFO stats`,
//! summed, the harness's own `INFO` calls left out) while 1 and then 8
//! sessiondb nodes (stores with their reaper threads, 256 buckets, as
//! `Config::redis_cluster` makes them) hold the store and do nothing, over
//! 20 s (5 s with `--quick`) after they settle; and with no node, what the
//! cluster costs itself (replicas acknowledging, pings). The store holds
//! 10,000 sessions, due in an hour. A row's ops/s is those commands per
//! second.

use std::time::Duration;

use anyhow::Result;
use sessiondb::{Data, SessionStore};

use crate::clock::{unix_ms, BenchClock};
use crate::compare::{remove_dir, Ctx};
use crate::measure::Row;
use crate::systems::redis_cluster::RedisCluster;
use crate::systems::sessiondb as sdb;

/// The numbers of idle nodes measured.
pub const NODES: [usize; 3] = [0, 1, 8];
const SESSIONS: usize = 10_000;

/// The commands the cluster's servers have run, and how many readings
/// (one `INFO` per server each) that took.
fn commands(cluster: &RedisCluster) -> Result<u64> {
    let mut total = 0;
    for port in cluster.ports() {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?.get_connection()?;
        let stats: String = redis::cmd("INFO").arg("stats").query(&mut c)?;
        total += stats
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn measure(ctx: &Ctx, cluster: &RedisCluster, nodes: usize, prefix: &str) -> Result<Row> {
    let clock = BenchClock::starting_at(unix_ms());
    let config = || sdb::redis_cluster_config(cluster.seeds(), &clock).redis_prefix(prefix);
    let stores: Vec<SessionStore> = (0..nodes)
        .map(|_| SessionStore::open(config()))
        .collect::<std::result::Result<_, _>>()?;
    // Let subscriptions and first passes settle.
    std::thread::sleep(Duration::from_secs(3));
    let window = if ctx.plan.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(20)
    };
    let before = commands(cluster)?;
    std::thread::sleep(window);
    let after = commands(cluster)?;
    for s in stores {
        s.close()?;
    }
    // The readings' own INFO calls: one per server per reading, counted in
    // the second reading (the first counts itself as it runs).
    let readings = cluster.ports().len() as u64;
    let run = after.saturating_sub(before).saturating_sub(readings);
    let per_second = run as f64 / window.as_secs_f64();
    let note = if nodes == 0 {
        format!("{per_second:.1} commands/s with no node: the cluster's own")
    } else {
        format!("{per_second:.1} commands/s across the six servers with {nodes} idle node(s)")
    };
    let mut row = Row::new("idle_cost", "sessiondb_redis_cluster", Some(nodes)).note(note);
    row.ops_per_sec = Some(per_second);
    row.seconds = Some(window.as_secs_f64());
    Ok(row)
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    if !ctx.plan.runs("idle_cost") || !ctx.plan.has("sessiondb_redis_cluster") {
        return Ok(());
    }
    if !ctx.redis {
        for n in NODES {
            ctx.push(
                Row::new("idle_cost", "sessiondb_redis_cluster", Some(n))
                    .skipped("redis-server not on PATH"),
            );
        }
        return Ok(());
    }
    let dir = ctx.work.join("idle-cluster");
    let outcome = (|| -> Result<Vec<Row>> {
        let cluster = RedisCluster::start(&dir)?;
        let prefix = "idle";
        // The sessions, registered by a node that then closes.
        let clock = BenchClock::starting_at(unix_ms());
        let loader = SessionStore::open(
            sdb::redis_cluster_config(cluster.seeds(), &clock).redis_prefix(prefix),
        )?;
        for i in 0..SESSIONS {
            loader.register(&format!("idle{i}"), "en", Data::new())?;
        }
        loader.close()?;
        NODES
            .iter()
            .map(|&n| measure(ctx, &cluster, n, prefix))
            .collect()
    })();
    remove_dir(&dir);
    match outcome {
        Ok(rows) => {
            for row in rows {
                ctx.push(row);
            }
        }
        Err(e) => {
            let cells: Vec<(&str, Option<usize>)> =
                NODES.iter().map(|&n| ("idle_cost", Some(n))).collect();
            ctx.failed("idle_cost", "sessiondb_redis_cluster", &cells, &e);
        }
    }
    Ok(())
}
