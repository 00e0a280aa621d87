//! Open time of a large store after a clean close and after a crash.
//!
//! `cargo bench --bench open` fills a store with 1,000,000 sessions
//! (`SESSIONDB_OPEN_SESSIONS` to change), then times, median of 5 runs each:
//! - `raw sled open`: sled opening the same directory (the floor);
//! - `after clean close`: `SessionStore::open` after `close` (no check);
//! - `after kill -9`: a child process opens the store and is killed with
//!   SIGKILL, so the next open replays sled's log and runs the full
//!   consistency check.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sessiondb::{Config, Data, SessionStore};

const RUNS: usize = 5;

fn config(dir: &Path) -> Config {
    Config::new(dir).reaper_thread(false)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn fill(dir: &Path, sessions: u64) -> Result<(), Box<dyn std::error::Error>> {
    let store = SessionStore::open(config(dir))?;
    let mut data = Data::new();
    data.insert("inventory", &["sword", "shield", "potion", "map", "rope"])?;
    data.insert(
        "stats",
        &[("level", 12), ("hp", 87), ("mp", 40), ("xp", 123_456)],
    )?;
    let threads = 8;
    let started = Instant::now();
    std::thread::scope(|s| -> Result<(), sessiondb::Error> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (store, data) = (&store, &data);
                s.spawn(move || -> Result<(), sessiondb::Error> {
                    for i in (t..sessions).step_by(threads as usize) {
                        store.register(&format!("player-{i}"), "en", data.clone())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| sessiondb::Error::Closed)??;
        }
        Ok(())
    })?;
    println!(
        "filled {sessions} sessions in {:.1} s ({:.0} registers/s, 8 threads)",
        started.elapsed().as_secs_f64(),
        sessions as f64 / started.elapsed().as_secs_f64()
    );
    store.close()?;
    Ok(())
}

/// Child mode: open the store, say so, and wait to be killed.
fn hold(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let _store = SessionStore::open(config(dir))?;
    println!("open");
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

fn crash(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--hold", &dir.to_string_lossy()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    if line.trim() != "open" {
        return Err(format!("child said {line:?}").into());
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir] = args.as_slice() {
        if flag == "--hold" {
            return hold(Path::new(dir));
        }
    }
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let sessions: u64 = std::env::var("SESSIONDB_OPEN_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    fill(dir.path(), sessions)?;

    let mut raw = Vec::new();
    let mut clean = Vec::new();
    let mut unclean = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(64 << 20)
            .open()?;
        raw.push(started.elapsed());
        drop(db);

        let started = Instant::now();
        let store = SessionStore::open(config(dir.path()))?;
        clean.push(started.elapsed());
        assert!(store.recovery_report().clean_shutdown);
        store.close()?;

        crash(dir.path())?;
        let started = Instant::now();
        let store = SessionStore::open(config(dir.path()))?;
        unclean.push(started.elapsed());
        let check = store
            .recovery_report()
            .check
            .clone()
            .ok_or("no check after a crash")?;
        assert!(check.is_healthy(), "{check:?}");
        assert_eq!(check.sessions, sessions);
        store.close()?;
    }
    let (raw, clean, unclean) = (median(raw), median(clean), median(unclean));
    println!("open with {sessions} sessions, median of {RUNS}:");
    println!("  raw sled open      {:>9.1} ms", raw.as_secs_f64() * 1e3);
    println!(
        "  after clean close  {:>9.1} ms  ({:.2}x raw sled)",
        clean.as_secs_f64() * 1e3,
        clean.as_secs_f64() / raw.as_secs_f64()
    );
    println!(
        "  after kill -9      {:>9.1} ms  (sled log replay + full check of every invariant)",
        unclean.as_secs_f64() * 1e3
    );
    Ok(())
}
