//! Crash safety under SIGKILL, with real processes.
//!
//! The parent runs this same binary as a child (`--child`) that opens a
//! store and hammers it from several threads, printing a line before
//! (`B`) and after (`A`) every operation. The parent kills the child with
//! SIGKILL at a random moment (during open, during the background check
//! after an unclean shutdown, during a reaper pass, during writes), or,
//! on sled, between two steps of a write: the engine commits a change as
//! ordered single-key writes, and the child (built with the crate's
//! `test-hooks`) stops one of them after a chosen step and says so (`P`),
//! which is when the parent kills it. Twice per round; then it reopens the
//! store and checks:
//! - the store opens, and the check after the crash (which runs in the
//!   background while the child writes) found nothing but what a write
//!   stopped between its steps leaves (an expiry entry whose record is
//!   missing or filed elsewhere, an actor over its cap), repaired it, and
//!   announced each session it ended over a cap (`replaced`); then
//!   `check()` is healthy;
//! - per child thread, the store holds exactly the effect of a prefix of
//!   that thread's operations (plus sessions the reaper legitimately ended),
//!   and no session that no operation explains (the session count);
//! - immediate durability: that prefix covers every acknowledged operation;
//! - periodic durability: the operations lost are a suffix, and the age of
//!   the oldest lost one is reported (the loss window).
//!
//! The child registers, sets data, logs out, expires, rotates keys and
//! reassigns. A rotation moves a session to a new record, and commits whole
//! on sled (one transaction): a kill leaves the session under its old key
//! or its new one, never both, so an actor is never seen over its cap.
//!
//! With the `redis` feature, the same runs on the Redis engine (mode
//! `redis`, a server of the test's own, and mode `cluster`, a Redis Cluster
//! of three primaries and three replicas): there the killed process is a
//! game-server node, and since the servers outlive it, every acknowledged
//! operation must be present (a reassign across buckets that a kill cut
//! short is finished by the next store to open).
//!
//! The parent's bookkeeping does not grow with the kills or with the
//! operations a child makes before its kill (tens of thousands per thread in
//! periodic mode): it writes each child's lines to a file and replays them
//! one at a time, keeping per child thread only the state after the
//! operations replayed so far and after the longest prefix that explains
//! the store, and of earlier rounds only the sessions still live. Each
//! mode's summary line gives the parent's peak resident memory.
//!
//! `SESSIONDB_CRASH_CYCLES` sets the kills per durability mode (default 150);
//! `SESSIONDB_CRASH_SEED` the random seed.

#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sessiondb::{Config, Data, Durability, Event, ManualClock, SessionStore, UnsetReason};

const THREADS: usize = 3;
const ACTORS_PER_THREAD: usize = 5;
const TTL: Duration = Duration::from_millis(1500);
const PERIODIC: Duration = Duration::from_millis(100);
const KILLS_PER_ROUND: usize = 2;

/// A small deterministic generator (xorshift64*), so runs can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn durability(name: &str) -> Durability {
    match name {
        "immediate" => Durability::Immediate,
        _ => Durability::Periodic(PERIODIC),
    }
}

/// The store's configuration: `place` is a directory, a Redis URL in mode
/// `redis`, or the cluster's seed URLs, comma-separated, in mode `cluster`.
fn place_config(place: &str, mode: &str) -> Config {
    match mode {
        #[cfg(feature = "redis")]
        "redis" => Config::redis(place),
        #[cfg(feature = "redis")]
        "cluster" => Config::redis_cluster(place.split(',')),
        _ => Config::new(place),
    }
}

fn child_config(place: &str, mode: &str) -> Config {
    place_config(place, mode)
        .ttl(TTL)
        .durability(durability(mode))
        .reap_interval(Duration::from_millis(20))
        .reap_batch(50)
}

// ---------------------------------------------------------------- child --

/// The child: `--child DIR MODE RUN SEED PAUSE`. Prints `O <checking>`
/// once open (`1` while the check after an unclean shutdown runs in the
/// background), `C <stale entries> <over cap> <other problems>` when that
/// check ends, `B`/`A` lines per operation, and, with `PAUSE` = `STEP:N`,
/// when a write has made its `N`th step of kind `STEP` (`filed`, `stored`,
/// `deleted`, `unfiled`) and another step follows, `P <step>`, after which
/// that write waits to be killed (`PAUSE` = `-`: never).
fn child(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [place, mode, run, seed, pause] = args else {
        return Err("usage: --child PLACE MODE RUN SEED PAUSE".into());
    };
    let out = Arc::new(Mutex::new(std::io::stdout()));
    if let Some((kind, n)) = pause.split_once(':') {
        let (out, kind, n, seen) = (
            out.clone(),
            kind.to_owned(),
            n.parse::<u64>()?,
            AtomicU64::new(0),
        );
        sessiondb::test_hooks::between_steps(move |what| {
            if what == kind && seen.fetch_add(1, Ordering::Relaxed) + 1 == n {
                say(&out, &format!("P {what}"));
                std::thread::sleep(Duration::from_secs(30));
            }
        });
    }
    let store = SessionStore::open(child_config(place, mode))?;
    let checking = store.recovery_report().checking;
    say(&out, &format!("O {}", u8::from(checking)));
    {
        let (store, out) = (store.clone(), out.clone());
        std::thread::spawn(move || {
            let report = store.wait_for_recovery();
            let found = match (&report.check, &report.check_error) {
                (_, Some(e)) => format!("failed:{}", e.replace(' ', "_")),
                (Some(c), None) => {
                    let (stale, over) = (c.stale_expiries, c.over_cap);
                    format!("{stale} {over} {}", c.problems() - stale - over)
                }
                (None, None) => "0 0 0".into(),
            };
            say(&out, &format!("C {found}"));
        });
    }
    let seed: u64 = seed.parse()?;
    let mut workers = Vec::new();
    for t in 0..THREADS {
        let (store, out, run) = (store.clone(), out.clone(), run.clone());
        workers.push(std::thread::spawn(move || {
            child_thread(
                &store,
                &out,
                &run,
                t,
                seed.wrapping_add(t as u64 * 7919) | 1,
            )
        }));
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn say(out: &Mutex<std::io::Stdout>, line: &str) {
    let out = out
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = out.lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The `i`th actor of child thread `t` in run `run`: no two runs or threads
/// share an actor.
fn actor_name(run: impl std::fmt::Display, t: usize, i: usize) -> String {
    format!("r{run}t{t}a{i}")
}

fn child_thread(
    store: &SessionStore,
    out: &Mutex<std::io::Stdout>,
    run: &str,
    t: usize,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let actor = |i: usize| actor_name(run, t, i);
    let mut keys: Vec<Option<String>> = vec![None; ACTORS_PER_THREAD];
    for seq in 0u64.. {
        let a = rng.below(ACTORS_PER_THREAD as u64) as usize;
        let b = (a + 1 + rng.below(ACTORS_PER_THREAD as u64 - 1) as usize) % ACTORS_PER_THREAD;
        let op = match (rng.below(11), &keys[a]) {
            (0..=2, _) | (_, None) => "register",
            (3..=6, Some(_)) => "set",
            (7, Some(_)) => "logout",
            (8, Some(_)) => "expire",
            (9, Some(_)) => "rotate",
            _ => "reassign",
        };
        say(out, &format!("B {t} {seq} {op} {a} {b}"));
        let key = keys[a].clone().unwrap_or_default();
        let result = match op {
            "register" => store.register(&actor(a), "en", Data::new()).map(Some),
            "set" => store.set_data(&key, "n", &seq).map(|()| None),
            "logout" => store.logout(&key).map(|()| None),
            "rotate" => store.rotate(&key).map(Some),
            "expire" => store
                .expire(&key, UnsetReason::Other("kicked".into()))
                .map(|()| None),
            _ => store.reassign(&actor(a), &actor(b)).map(Some),
        };
        match result {
            Ok(session) => {
                let extra = session.as_ref().map_or(String::new(), |s| {
                    format!(" {} {}", s.id(), s.expires_at_ms())
                });
                match op {
                    "register" | "rotate" => {
                        keys[a] = session.and_then(|s| s.key().map(str::to_owned));
                    }
                    "reassign" => {
                        keys[b] = session.and_then(|s| s.key().map(str::to_owned));
                        keys[a] = None;
                    }
                    "logout" | "expire" => keys[a] = None,
                    _ => {}
                }
                say(out, &format!("A {t} {seq} ok{extra}"));
            }
            Err(e) => {
                if matches!(op, "reassign") {
                    keys[a] = None;
                }
                say(out, &format!("A {t} {seq} err {e}"));
            }
        }
    }
}

// --------------------------------------------------------------- parent --

/// What one actor should hold, as far as the parent knows.
#[derive(Debug, Clone, PartialEq)]
struct Expect {
    /// None while the id is unknown (an operation in flight at the kill).
    id: Option<String>,
    data: Option<u64>,
    /// None while unknown; such a session cannot have been reaped yet.
    expires_at: Option<u64>,
}

/// A session as stored.
#[derive(Debug, Clone)]
struct Found {
    id: String,
    data: Option<u64>,
    expires_at: u64,
}

/// One operation of a child thread, as printed.
#[derive(Debug, Clone)]
struct Step {
    op: String,
    /// The thread's actors it names (by index): `a`, and `b` for a reassign.
    a: usize,
    b: usize,
    seq: u64,
    /// `Some(true)` ok, `Some(false)` failed, None: no answer before the kill.
    ok: Option<bool>,
    id: Option<String>,
    expires_at: Option<u64>,
    /// When the parent read the answer, in microseconds since the child started.
    acked_at: Option<u64>,
}

/// What each actor of one child thread holds, by the actor's index.
type State = Vec<Option<Expect>>;

fn apply(state: &mut State, step: &Step) {
    if step.ok == Some(false) {
        return;
    }
    match step.op.as_str() {
        "register" => {
            state[step.a] = Some(Expect {
                id: step.id.clone(),
                data: None,
                expires_at: step.expires_at,
            });
        }
        "set" => {
            if let Some(e) = &mut state[step.a] {
                e.data = Some(step.seq);
            }
        }
        "logout" | "expire" => state[step.a] = None,
        // The same session under a new key: its id, data and expiry kept,
        // whether the kill came before or after the rotation.
        "rotate" => {}
        _ => {
            if let Some(mut moved) = state[step.a].take() {
                moved.expires_at = step.expires_at;
                state[step.b] = Some(moved);
            } else if step.ok.is_none() {
                // In flight and unknown: the parent cannot say what moved.
                state[step.b] = None;
            }
        }
    }
}

/// Whether the stored session agrees with what is expected, allowing for
/// the reaper having ended a session due before the kill.
fn agrees(expected: &Option<Expect>, got: &Option<Found>, killed_at: u64) -> bool {
    match (expected, got) {
        (None, None) => true,
        (Some(e), None) => e.expires_at.is_some_and(|at| at <= killed_at),
        (None, Some(_)) => false,
        (Some(e), Some(f)) => e.id.as_ref().is_none_or(|want| *want == f.id) && e.data == f.data,
    }
}

struct RunLog {
    run: usize,
    opened: bool,
    /// The check after an unclean shutdown ran in the background.
    checking: bool,
    /// What that check found (`C` line), once it ended.
    check_result: Option<String>,
    /// The step after which a write stopped to be killed (`P` line).
    paused: Option<String>,
    /// The child's `B` and `A` lines, each after the microseconds since
    /// `started` at which the parent read it: on disk, not in memory, as a
    /// child may make hundreds of thousands of operations before its kill.
    ops: PathBuf,
    started: Instant,
    killed: Instant,
}

/// Whether the mode runs the sled engine, whose writes are ordered steps
/// (on Redis each change is one script).
fn on_sled(mode: &str) -> bool {
    matches!(mode, "immediate" | "periodic")
}

/// When the parent kills a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// In the first 40 ms: during start-up, open and recovery (including
    /// the first reaper pass over sessions that expired while no process
    /// ran).
    Early,
    /// As soon as the store is open, while the check after the previous
    /// kill runs in the background beside the child's first writes.
    Opened,
    /// When a write stops after the `n`th single-key write of a kind with
    /// another write to follow (sled only).
    BetweenSteps(&'static str, u64),
    /// At a random moment in the first 700 ms.
    Later,
}

fn run_child(place: &str, mode: &str, run: usize, rng: &mut Rng, scratch: &Path) -> (RunLog, u64) {
    let kill = match rng.below(4) {
        0 => Kill::Early,
        1 => Kill::Opened,
        2 if on_sled(mode) => {
            let kinds = ["filed", "stored", "deleted", "unfiled"];
            Kill::BetweenSteps(kinds[rng.below(4) as usize], 1 + rng.below(20))
        }
        _ => Kill::Later,
    };
    let pause = match kill {
        Kill::BetweenSteps(kind, n) => format!("{kind}:{n}"),
        _ => "-".to_owned(),
    };
    let exe = std::env::current_exe().expect("own executable");
    let mut child = Command::new(exe)
        .args([
            "--child",
            place,
            mode,
            &run.to_string(),
            &rng.next().to_string(),
            &pause,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let (paused_tx, paused) = std::sync::mpsc::channel();
    let ops = scratch.join(format!("{run}.ops"));
    let mut ops_file = BufWriter::new(File::create(&ops).expect("operations file"));
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut log = RunLog {
            run,
            opened: false,
            checking: false,
            check_result: None,
            paused: None,
            ops,
            started,
            killed: Instant::now(),
        };
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        // A line without its end was cut by the kill.
        while lines
            .read_line(&mut line)
            .is_ok_and(|_| line.ends_with('\n'))
        {
            let f: Vec<&str> = line.trim_end().splitn(2, ' ').collect();
            match f.as_slice() {
                ["O", checking] => {
                    log.opened = true;
                    log.checking = *checking == "1";
                    let _ = opened_tx.send(());
                }
                ["C", found] => log.check_result = Some((*found).to_owned()),
                ["P", step] => {
                    log.paused = Some((*step).to_owned());
                    let _ = paused_tx.send(());
                }
                ["B" | "A", _] => {
                    let at = started.elapsed().as_micros();
                    write!(ops_file, "{at} {line}").expect("write the operations file");
                }
                _ => {}
            }
            line.clear();
        }
        ops_file.flush().expect("write the operations file");
        log
    });
    match kill {
        Kill::Early => std::thread::sleep(Duration::from_millis(rng.below(40))),
        Kill::Opened => {
            let _ = opened.recv_timeout(Duration::from_secs(10));
        }
        Kill::BetweenSteps(..) => {
            let _ = paused.recv_timeout(Duration::from_secs(10));
        }
        Kill::Later => std::thread::sleep(Duration::from_millis(rng.below(700))),
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let killed = Instant::now();
    let killed_at = now_ms();
    let mut log = reader.join().expect("reader");
    log.killed = killed;
    (log, killed_at)
}

#[derive(Default)]
struct Tally {
    kills: usize,
    kills_before_open: usize,
    /// Kills while the background check after an unclean shutdown ran.
    kills_during_check: usize,
    /// Kills of a write stopped between two of its steps, by the step.
    kills_between_steps: HashMap<String, usize>,
    /// What the checks after the kills repaired: expiry entries dropped,
    /// sessions ended over their actor's cap.
    stale_entries: u64,
    ended_over_cap: u64,
    acked: usize,
    lost: usize,
    worst_loss: Duration,
    /// The most operations one child thread made before its kill.
    most_ops: usize,
}

/// Kills `kills` children in rounds and verifies after each round.
fn crash_mode(mode: &str, place: &str, kills: usize, seed: u64) -> Result<Tally, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
    let mut rng = Rng(seed | 1);
    let mut known = HashMap::new();
    let mut tally = Tally::default();
    let mut run = 0;
    while tally.kills < kills {
        let mut logs = Vec::new();
        let mut killed_at = 0;
        for _ in 0..KILLS_PER_ROUND {
            let (log, at) = run_child(place, mode, run, &mut rng, scratch.path());
            run += 1;
            tally.kills += 1;
            killed_at = at;
            if !log.opened {
                tally.kills_before_open += 1;
            }
            if log.checking && log.check_result.is_none() {
                tally.kills_during_check += 1;
            }
            if let Some(step) = &log.paused {
                *tally.kills_between_steps.entry(step.clone()).or_default() += 1;
            }
            if let Some(result) = &log.check_result {
                let found: Vec<u64> = result.split(' ').filter_map(|n| n.parse().ok()).collect();
                match found.as_slice() {
                    [stale, over, 0] => {
                        tally.stale_entries += stale;
                        tally.ended_over_cap += over;
                    }
                    _ => {
                        return Err(format!(
                            "run {}: the check after a kill found more than a stopped \
                             write leaves (stale entries, over cap, other): {result}",
                            run - 1
                        ))
                    }
                }
            }
            logs.push(log);
        }
        verify(place, mode, &logs, killed_at, &mut known, &mut tally)
            .map_err(|e| format!("{mode}, round ending at run {}: {e}", run - 1))?;
        for log in &logs {
            let _ = std::fs::remove_file(&log.ops);
        }
    }
    Ok(tally)
}

/// One child thread's operations replayed, one at a time, against what the
/// store holds for the thread's actors after the kill. Only the state after
/// the operations replayed so far is kept, and a copy of it for the longest
/// prefix that explained the store, so memory does not grow with the
/// number of operations.
struct Replay {
    actors: Vec<String>,
    found: Vec<Option<Found>>,
    state: State,
    /// Operations replayed so far.
    replayed: usize,
    /// An operation begun and not yet answered.
    pending: Option<Step>,
    /// The longest prefix so far after which every actor agrees with the store.
    matched: Option<Matched>,
}

struct Matched {
    ops: usize,
    state: State,
    /// When the parent read the answer to the operation after the prefix
    /// (the first one the store lost, if acknowledged).
    next_acked_at: Option<u64>,
}

impl Replay {
    fn new(actors: Vec<String>, found: Vec<Option<Found>>, killed_at: u64) -> Replay {
        let mut replay = Replay {
            state: vec![None; actors.len()],
            actors,
            found,
            replayed: 0,
            pending: None,
            matched: None,
        };
        replay.compare(killed_at);
        replay
    }

    /// Notes the current prefix if it explains the store.
    fn compare(&mut self, killed_at: u64) {
        let agree = (self.state.iter().zip(&self.found)).all(|(e, f)| agrees(e, f, killed_at));
        if agree {
            self.matched = Some(Matched {
                ops: self.replayed,
                state: self.state.clone(),
                next_acked_at: None,
            });
        }
    }

    fn replay(&mut self, step: &Step, killed_at: u64) {
        if let Some(m) = &mut self.matched {
            if m.ops == self.replayed {
                m.next_acked_at = step.acked_at;
            }
        }
        apply(&mut self.state, step);
        self.replayed += 1;
        self.compare(killed_at);
    }

    /// Pairs for a failure's message: each actor with its state.
    fn named<'a, T>(&'a self, of: &'a [T]) -> Vec<(&'a str, &'a T)> {
        self.actors.iter().map(String::as_str).zip(of).collect()
    }
}

/// Replays a child's operations file against the stored state of every
/// one of its threads' actors.
fn replay_log(
    log: &RunLog,
    mut stored: impl FnMut(&str) -> Result<Option<Found>, String>,
    killed_at: u64,
) -> Result<Vec<Replay>, String> {
    let mut replays = Vec::new();
    for t in 0..THREADS {
        let actors: Vec<String> = (0..ACTORS_PER_THREAD)
            .map(|i| actor_name(log.run, t, i))
            .collect();
        let found = actors.iter().map(|a| stored(a)).collect::<Result<_, _>>()?;
        replays.push(Replay::new(actors, found, killed_at));
    }
    let file = File::open(&log.ops).map_err(|e| format!("{}: {e}", log.ops.display()))?;
    let mut lines = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("{}: {e}", log.ops.display())),
        }
        let bad = || format!("run {}: unexpected line {line:?}", log.run);
        let f: Vec<&str> = line.trim_end().split(' ').collect();
        let (at, thread) = match f.as_slice() {
            [at, _, t, ..] => (at.parse::<u64>(), t.parse::<usize>()),
            _ => return Err(bad()),
        };
        let (Ok(at), Ok(t)) = (at, thread) else {
            return Err(bad());
        };
        let replay = replays.get_mut(t).ok_or_else(bad)?;
        match f.as_slice() {
            [_, "B", _, seq, op, a, b] if replay.pending.is_none() => {
                let index = |s: &str| s.parse().ok().filter(|&i| i < ACTORS_PER_THREAD);
                let (Ok(seq), Some(a), Some(b)) = (seq.parse(), index(a), index(b)) else {
                    return Err(bad());
                };
                replay.pending = Some(Step {
                    op: (*op).into(),
                    a,
                    b,
                    seq,
                    ok: None,
                    id: None,
                    expires_at: None,
                    acked_at: None,
                });
            }
            [_, "A", _, seq, result, rest @ ..] => {
                let Some(mut step) = replay.pending.take() else {
                    return Err(bad());
                };
                if seq.parse() != Ok(step.seq) {
                    return Err(bad());
                }
                step.ok = Some(*result == "ok");
                step.acked_at = Some(at);
                if let (true, [id, expires_at]) = (*result == "ok", rest) {
                    step.id = Some((*id).into());
                    step.expires_at = expires_at.parse().ok();
                }
                replay.replay(&step, killed_at);
            }
            _ => return Err(bad()),
        }
    }
    Ok(replays)
}

fn verify(
    place: &str,
    mode: &str,
    logs: &[RunLog],
    killed_at: u64,
    known: &mut HashMap<String, Expect>,
    tally: &mut Tally,
) -> Result<(), String> {
    // A clock at the epoch: every stored session reads as live, so the
    // parent sees exactly what survived.
    let config = place_config(place, mode)
        .clock(Arc::new(ManualClock::new(0)))
        .reaper_thread(false);
    let (store, events) =
        SessionStore::open_subscribed(config).map_err(|e| format!("reopen failed: {e}"))?;
    let recovery = store.wait_for_recovery();
    if let Some(e) = recovery.check_error {
        return Err(format!("the check after a kill failed: {e}"));
    }
    if let Some(check) = recovery.check {
        // What a write stopped between its steps leaves, and nothing else.
        if check.problems() != check.stale_expiries + check.over_cap {
            return Err(format!(
                "the check after a kill found broken invariants: {check:?}"
            ));
        }
        let announced = events
            .try_iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Unset {
                        reason: UnsetReason::Replaced,
                        ..
                    }
                )
            })
            .count() as u64;
        if announced != check.over_cap {
            return Err(format!(
                "the check ended {} sessions over their cap but announced {announced}",
                check.over_cap
            ));
        }
        tally.stale_entries += check.stale_expiries;
        tally.ended_over_cap += check.over_cap;
    }
    let stored = |actor: &str| -> Result<Option<Found>, String> {
        let s = store.actor_session(actor).map_err(|e| e.to_string())?;
        s.map(|s| {
            Ok(Found {
                id: s.id().to_owned(),
                data: s.get::<u64>("n").map_err(|e| e.to_string())?,
                expires_at: s.expires_at_ms(),
            })
        })
        .transpose()
    };
    // Sessions of earlier rounds: unchanged, or reaped once due. One seen
    // gone is gone for good (its actor belongs to an earlier run, and this
    // store closes cleanly), so `known` holds only live sessions; the
    // session count below says that no ended one came back.
    let mut gone = Vec::new();
    for (actor, expected) in known.iter() {
        let expected = Some(expected.clone());
        let got = stored(actor)?;
        if !agrees(&expected, &got, killed_at) {
            return Err(format!(
                "{actor} of an earlier round: expected {expected:?}, found {got:?}"
            ));
        }
        if got.is_none() {
            gone.push(actor.clone());
        }
    }
    for actor in gone {
        known.remove(&actor);
    }
    for log in logs {
        for mut replay in replay_log(log, &stored, killed_at)? {
            let acked = replay.replayed;
            let after_acked = replay.state.clone();
            if let Some(step) = replay.pending.take() {
                replay.replay(&step, killed_at);
            }
            tally.most_ops = tally.most_ops.max(replay.replayed);
            // Only sled's periodic mode may lose acknowledged operations.
            let lowest = if mode == "periodic" { 0 } else { acked };
            let Some(matched) = replay.matched.take().filter(|m| m.ops >= lowest) else {
                return Err(format!(
                    "no prefix of {} ops ({acked} acknowledged) explains the store: found \
                     {:?}, expected after all acknowledged: {:?}",
                    replay.replayed,
                    replay.named(&replay.found),
                    replay.named(&after_acked),
                ));
            };
            tally.acked += acked;
            if matched.ops < acked {
                tally.lost += acked - matched.ops;
                if let Some(at) = matched.next_acked_at {
                    let acked_at = log.started + Duration::from_micros(at);
                    tally.worst_loss = tally.worst_loss.max(log.killed.duration_since(acked_at));
                }
            }
            for ((actor, e), f) in replay.actors.iter().zip(matched.state).zip(&replay.found) {
                // What the store holds is the truth from here on.
                if let (Some(e), Some(f)) = (e, f) {
                    let e = Expect {
                        id: Some(f.id.clone()),
                        data: e.data,
                        expires_at: Some(f.expires_at),
                    };
                    known.insert(actor.clone(), e);
                }
            }
        }
    }
    let check = store.check().map_err(|e| e.to_string())?;
    if !check.is_healthy() {
        return Err(format!("check after recovery is not healthy: {check:?}"));
    }
    if check.sessions != known.len() as u64 {
        return Err(format!(
            "the store holds {} sessions, but {} are expected to live",
            check.sessions,
            known.len()
        ));
    }
    store.close().map_err(|e| e.to_string())
}

/// The test process's peak resident memory, in bytes, since the last
/// `reset_peak_memory` (Linux; None elsewhere).
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Starts measuring the peak resident memory afresh (Linux); where that
/// fails, `peak_memory` is the peak since the process started.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// With the `redis` feature, modes `redis` and `cluster` on servers of the
/// test's own (where `redis-server` is installed): their places are added
/// to `places`, and the servers run until the guards returned drop.
#[cfg(feature = "redis")]
fn redis_places(
    places: &mut Vec<(&'static str, String)>,
) -> (
    Option<redis_server::RedisServer>,
    Option<redis_server::RedisCluster>,
) {
    let redis = redis_server::find("redis-server", "crash_under_sigkill (mode redis)")
        .map(|binary| redis_server::RedisServer::start(&binary, &[]));
    if let Some(server) = &redis {
        places.push(("redis", server.url.clone()));
    }
    let cluster = redis_server::find("redis-server", "crash_under_sigkill (mode cluster)")
        .map(|binary| redis_server::RedisCluster::start(&binary));
    if let Some(cluster) = &cluster {
        places.push(("cluster", cluster.seeds.join(",")));
    }
    (redis, cluster)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        if let Err(e) = child(&args[1..]) {
            eprintln!("child: {e}");
            std::process::exit(2);
        }
        return;
    }
    // `cargo test -- --list` and filters: this file has one test.
    if args.iter().any(|a| a == "--list") {
        println!("crash_under_sigkill: test");
        return;
    }
    let kills: usize = std::env::var("SESSIONDB_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let seed: u64 = std::env::var("SESSIONDB_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(now_ms);
    println!(
        "running 1 test (crash under SIGKILL: {kills} kills per durability mode, seed {seed})"
    );
    let started = Instant::now();
    let mut failed = 0;
    let dirs = [tempfile::tempdir(), tempfile::tempdir()].map(|d| d.expect("temp dir"));
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    let mut places = vec![
        ("immediate", dirs[0].path().display().to_string()),
        ("periodic", dirs[1].path().display().to_string()),
    ];
    #[cfg(feature = "redis")]
    let _servers = redis_places(&mut places);
    for (mode, place) in &places {
        reset_peak_memory();
        let mode_started = Instant::now();
        let outcome = crash_mode(mode, place, kills, seed);
        let took = format!(
            "{:.0} s, peak memory of the test process {}",
            mode_started.elapsed().as_secs_f64(),
            peak_memory().map_or("unknown".into(), |b| format!("{} MiB", b >> 20))
        );
        match outcome {
            Ok(t) if on_sled(mode) && t.kills_between_steps.is_empty() => {
                println!(
                    "{mode}: FAILED: no kill landed between the steps of a write (seed {seed})"
                );
                failed += 1;
            }
            Ok(t) => {
                let mut steps: Vec<_> = t.kills_between_steps.iter().collect();
                steps.sort();
                println!(
                    "{mode}: {} kills ({} before open finished, {} during the background check, \
                     {} between the steps of a write: {steps:?}), {} acknowledged ops checked \
                     (up to {} made by one child thread before its kill), {} lost (oldest lost \
                     acknowledged {:?} before its kill); the checks after them dropped {} stale \
                     expiry entries and ended {} sessions over their cap; {took}",
                    t.kills,
                    t.kills_before_open,
                    t.kills_during_check,
                    t.kills_between_steps.values().sum::<usize>(),
                    t.acked,
                    t.most_ops,
                    t.lost,
                    t.worst_loss,
                    t.stale_entries,
                    t.ended_over_cap,
                );
            }
            Err(e) => {
                println!("{mode}: FAILED: {e} (seed {seed}; {took})");
                failed += 1;
            }
        }
    }
    let passed = 1 - failed.min(1);
    println!(
        "test crash_under_sigkill ... {}",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s",
        if failed == 0 { "ok" } else { "FAILED" },
        failed.min(1),
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
