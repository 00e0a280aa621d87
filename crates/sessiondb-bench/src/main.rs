//! `sessiondb-bench compare [--quick] [--json] [--chart PATH]`: measures
//! sessiondb against sled used directly, Redis and SQLite in one run on
//! one machine, prints a table with ratios and checks the targets of
//! issues 11 and 12. See the crate's README for what each row means.

mod bulk;
mod chart;
mod churn;
mod clock;
mod compare;
mod follow;
mod idle;
mod measure;
mod plan;
mod report;
mod rss;
mod server_cpu;
mod shape;
mod systems;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Compares sessiondb with sled, Redis and SQLite on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs every workload on every system and prints the table and targets.
    Compare {
        /// Smaller counts and shorter runs (a few minutes on 2 cores, against about half an hour).
        #[arg(long)]
        quick: bool,
        /// Print one JSON object per row on stdout (the table goes to stderr).
        #[arg(long)]
        json: bool,
        /// Write an SVG chart of ops/s per workload and system here.
        #[arg(long, value_name = "PATH")]
        chart: Option<PathBuf>,
        /// Run only these workloads (comma-separated), e.g. `register,reap`.
        #[arg(long, value_delimiter = ',', value_name = "WORKLOADS")]
        only: Option<Vec<String>>,
        /// Run only these systems (comma-separated), e.g. `sessiondb,sled_naive`.
        #[arg(long, value_delimiter = ',', value_name = "SYSTEMS")]
        systems: Option<Vec<String>>,
        /// Where the stores live during the run (a temporary directory is
        /// made inside and removed after). Default: the system temp dir.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// sled's cache for the sessiondb rows, in MiB (default: the
        /// library's, 64 MiB).
        #[arg(long, value_name = "MIB")]
        cache_mib: Option<u64>,
    },
    /// Prints the table and targets again, and draws the chart, from the
    /// rows `compare --json` printed. With several files (runs of parts of
    /// the plan), a later file's row replaces an earlier one's for the same
    /// workload, system and client count.
    Chart {
        /// JSON lines from `compare --json` (repeatable).
        #[arg(long, value_name = "FILE", required = true)]
        from: Vec<PathBuf>,
        /// The SVG to write.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// The chart's title.
        #[arg(
            long,
            default_value = "sessiondb vs sled, Redis, SQLite (one run, one machine)"
        )]
        title: String,
    },
    /// Loads sessions into a store and reports peak RSS (run by `compare`).
    #[command(hide = true)]
    ChildLoad {
        #[arg(long)]
        system: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        n: usize,
        #[arg(long)]
        t0: u64,
        #[arg(long)]
        threads: usize,
    },
    /// Holds a sessiondb store open until killed (run by `compare`).
    #[command(hide = true)]
    ChildHold {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        n: usize,
        #[arg(long)]
        t0: u64,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("sessiondb-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Compare {
            quick,
            json,
            chart,
            only,
            systems,
            work_dir,
            cache_mib,
        } => {
            if let Some(mib) = cache_mib {
                // Read by every sessiondb configuration, here and in the
                // child processes (which inherit it). Set before any thread
                // of the run starts.
                std::env::set_var(systems::sessiondb::CACHE_ENV, mib.to_string());
            }
            compare(quick, json, chart, only, systems, work_dir)
        }
        Cmd::ChildLoad {
            system,
            dir,
            n,
            t0,
            threads,
        } => bulk::child_load(&system, &dir, n, t0, threads),
        Cmd::ChildHold { dir, n, t0 } => bulk::child_hold(&dir, n, t0),
        Cmd::Chart { from, out, title } => {
            let mut rows: Vec<measure::Row> = Vec::new();
            for file in &from {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let row: measure::Row = serde_json::from_str(line).with_context(|| {
                        format!("{} is not `compare --json` output", file.display())
                    })?;
                    rows.retain(|r| {
                        (&r.workload, &r.system, r.threads)
                            != (&row.workload, &row.system, row.threads)
                    });
                    rows.push(row);
                }
            }
            let mut ctx = compare::Ctx::new(plan::Plan::new(false, None, None), PathBuf::new());
            ctx.acks_per_fsync = compare::acks_per_fsync(&rows);
            ctx.rows = rows;
            let table = report::table(&ctx.rows);
            let targets = report::targets_text(&report::targets(&ctx));
            println!("{table}\n{targets}");
            chart::write(&ctx.rows, &out, &title)
        }
    }
}

fn compare(
    quick: bool,
    json: bool,
    chart: Option<PathBuf>,
    only: Option<Vec<String>>,
    systems: Option<Vec<String>>,
    work_dir: Option<PathBuf>,
) -> Result<()> {
    if let Some(only) = &only {
        for w in only {
            if !plan::WORKLOADS.contains(&w.as_str()) {
                anyhow::bail!(
                    "unknown workload {w:?}; known: {}",
                    plan::WORKLOADS.join(", ")
                );
            }
        }
    }
    if let Some(systems) = &systems {
        for s in systems {
            if !plan::SYSTEMS.contains(&s.as_str()) {
                anyhow::bail!("unknown system {s:?}; known: {}", plan::SYSTEMS.join(", "));
            }
        }
    }
    let plan = plan::Plan::new(quick, only, systems);
    let parent = work_dir.unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let work = tempfile::Builder::new()
        .prefix("sessiondb-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("making a work directory in {}", parent.display()))?;
    let mut ctx = compare::Ctx::new(plan, work.path().to_path_buf());
    ctx.json = json;
    ctx.say(format!(
        "sessiondb-bench compare{}: {} cores, work dir {}, redis-server {}",
        if quick { " --quick" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        work.path().display(),
        if ctx.redis {
            "found"
        } else {
            "not on PATH: Redis rows skipped"
        }
    ));
    compare::run(&mut ctx)?;
    bulk::run(&mut ctx)?;
    churn::run(&mut ctx)?;
    follow::run(&mut ctx)?;
    server_cpu::run(&mut ctx)?;
    idle::run(&mut ctx)?;

    let table = report::table(&ctx.rows);
    let targets = report::targets_text(&report::targets(&ctx));
    let title = if quick {
        "sessiondb vs sled, Redis, SQLite (--quick, one run, one machine)"
    } else {
        "sessiondb vs sled, Redis, SQLite (one run, one machine)"
    };
    if json {
        // The rows went to stdout as they were measured.
        eprintln!("\n{table}\n{targets}");
    } else {
        println!("\n{table}\n{targets}");
    }
    if let Some(path) = chart {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        chart::write(&ctx.rows, &path, title)?;
        ctx.say(format!("chart written to {}", path.display()));
    }
    if !ctx.failures.is_empty() {
        anyhow::bail!(
            "{} part(s) of the run failed (their rows say `failed:`): {}",
            ctx.failures.len(),
            ctx.failures.join("; ")
        );
    }
    Ok(())
}
