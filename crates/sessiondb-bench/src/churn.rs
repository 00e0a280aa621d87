//! The churn workload (`disk_churn`): a day of steady traffic in simulated
//! time, then the bytes on disk. Each simulated minute, new players log in
//! (register), every player still playing is seen (extend, every
//! [`SEEN_EVERY`] minutes), players leave after [`PLAYS`] minutes (their
//! sessions then expire a TTL later), and the reaper ends what is due. The
//! store then holds a steady population, and what it has on disk after a day
//! shows how it reuses the space of ended sessions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::clock::{unix_ms, BenchClock};
use crate::compare::{remove_dir, Ctx};
use crate::measure::Row;
use crate::rss;
use crate::shape::{self, Key};
use crate::systems::sessiondb::{self as sdb, Sessiondb};
use crate::systems::sled_naive::SledNaive;
use crate::systems::sqlite::{Sqlite, Synchronous};
use crate::systems::System;

/// How long a player plays, in minutes.
const PLAYS: u64 = 30;
/// How often a playing player's session is seen (extended), in minutes.
const SEEN_EVERY: u64 = 5;

/// The churn workload on the embedded systems.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    if !ctx.plan.runs("disk_churn") {
        return Ok(());
    }
    for system in ["sessiondb", "sled_naive", "sqlite_normal"] {
        if !ctx.plan.has(system) {
            continue;
        }
        if let Err(e) = churn(ctx, system) {
            ctx.failed(
                &format!("{system} churn"),
                system,
                &[("disk_churn", None)],
                &e,
            );
        }
    }
    Ok(())
}

fn churn(ctx: &mut Ctx, system: &'static str) -> Result<()> {
    let dir = ctx.dir(&format!("churn-{system}"));
    let clock = BenchClock::starting_at(unix_ms());
    let (minutes, per_minute) = (ctx.plan.churn_minutes, ctx.plan.churn_logins);
    ctx.say(format!(
        "{system}: churn, {minutes} simulated minutes of {per_minute} logins each"
    ));
    let started = Instant::now();
    {
        let store: Box<dyn System> = match system {
            "sessiondb" => Box::new(Sessiondb::open(
                "sessiondb",
                sdb::config(&dir, &clock, sdb::PERIODIC).reaper_thread(false),
            )?),
            "sled_naive" => Box::new(SledNaive::open(&dir, &clock)?),
            _ => Box::new(Sqlite::open(&dir, Synchronous::Normal, &clock)?),
        };
        let mut worker = store.worker()?;
        // Players playing, with the minute they logged in.
        let mut playing: VecDeque<(u64, Key)> = VecDeque::new();
        for minute in 0..minutes {
            for _ in 0..per_minute {
                let key = worker.register(&shape::next_actor("c"))?;
                playing.push_back((minute, Key::new(key)?));
            }
            while playing
                .front()
                .is_some_and(|(since, _)| minute - since >= PLAYS)
            {
                playing.pop_front();
            }
            for (since, key) in &playing {
                let played = minute - since;
                if played > 0 && played % SEEN_EVERY == 0 {
                    worker.extend(key)?;
                }
            }
            clock.jump(Duration::from_secs(60));
            store.reap()?;
        }
    }
    // Closed (dropped): the bytes a restart would find.
    let bytes = rss::disk_bytes(&dir)?;
    ctx.push(
        Row {
            bytes: Some(bytes),
            seconds: Some(started.elapsed().as_secs_f64()),
            ..Row::new("disk_churn", system, None)
        }
        .note(format!(
            "after {minutes} simulated minutes: {per_minute} logins a minute, each playing \
         {PLAYS} min (extended every {SEEN_EVERY} min), reaped a TTL later; \
         about {} sessions stored at the end",
            per_minute * (PLAYS + shape::TTL.as_secs() / 60)
        )),
    );
    remove_dir(&dir);
    Ok(())
}
