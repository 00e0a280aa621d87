//! The offline tools: commands that open a store, do one thing and close it
//! cleanly. On a data directory the store must be stopped: a running server
//! holds its lock, and the tools then say so and change nothing. On Redis
//! (`--redis-url`) there is no lock: the tools work alongside running
//! servers, and what they change, running servers see (and announce).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sessiondb::{CheckReport, Config, Error, Session, SessionStore, UnsetReason};

use crate::cli::{
    CheckArgs, CompactArgs, ExpireArgs, ExportArgs, ImportArgs, ListArgs, ShowArgs, StatsArgs,
    StoreArgs,
};
use crate::clock::now_ms;
use crate::error::AnyResult;
use crate::location::{open_error, tool_store};
use crate::session_json::session_body;

/// `check` found problems it did not (or could not) repair.
pub const EXIT_PROBLEMS: u8 = 1;
/// Anything went wrong.
pub const EXIT_ERROR: u8 = 2;

/// Stores at least this large get a progress bar (on a terminal).
const PROGRESS_FROM: u64 = 10_000;

/// The store the tool's flags and environment name; notes on settings
/// that are not used go to stderr.
fn locate(args: &StoreArgs) -> AnyResult<Config> {
    let (location, notes) = tool_store(args)?;
    for note in notes {
        eprintln!("warning: {note}");
    }
    Ok(location)
}

fn open(location: &Config) -> AnyResult<SessionStore> {
    // No reaper: a tool sees and writes exactly what is stored.
    let config = location.clone().reaper_thread(false);
    SessionStore::open(config).map_err(|e| match e {
        Error::InUse { path, .. } => format!(
            "the store at {} is in use: a running `sessiondb serve` (or another tool) holds it. \
             Offline tools need the store to themselves; stop the server first",
            path.display()
        )
        .into(),
        other => open_error(location, other),
    })
}

/// Opens a store that must already exist. A directory without a store is
/// an error (and is not created); on Redis, opening an unused prefix makes
/// an empty store, which is said on stderr.
fn open_existing(location: &Config) -> AnyResult<SessionStore> {
    if let Some(dir) = location.path() {
        if !dir.join("db").is_file() {
            return Err(format!(
                "no store at {} (give its directory with --data-dir or SESSIONDB_DATA_DIR, \
                 or a Redis store with --redis-url)",
                dir.display()
            )
            .into());
        }
    }
    let store = open(location)?;
    if store.recovery_report().created && location.path().is_none() {
        eprintln!(
            "warning: there was no store at {}; it is empty now \
             (check --redis-url and --redis-prefix)",
            location.describe()
        );
    }
    Ok(store)
}

fn time(ms: u64) -> String {
    std::time::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .map_or_else(
            || format!("{ms} ms"),
            |t| humantime::format_rfc3339_millis(t).to_string(),
        )
}

/// `in 9m 58s` or `3s ago`.
fn relative(ms: u64, now: u64) -> String {
    let round = |d: u64| Duration::from_secs(d / 1000);
    if ms > now {
        format!("in {}", humantime::format_duration(round(ms - now)))
    } else {
        format!("{} ago", humantime::format_duration(round(now - ms)))
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn progress(total: u64, what: &str) -> ProgressBar {
    if total < PROGRESS_FROM || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} ({{per_sec}}, {{eta}} left)"
    )) {
        bar.set_style(style);
    }
    bar
}

fn close(store: SessionStore) -> AnyResult<()> {
    store.close().map_err(Into::into)
}

// ----- stats -----

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct StatsReport {
    /// The directory, or the Redis URL (without its password) and prefix.
    store: String,
    /// `sled` or `redis`.
    engine: &'static str,
    sessions: u64,
    live: u64,
    expired: u64,
    actors: u64,
    corrupt: u64,
    quarantined: u64,
    earliest_expiry: Option<u64>,
    /// Size on disk, for a data directory.
    size_bytes: Option<u64>,
    last_shutdown_clean: bool,
}

pub fn stats(args: &StatsArgs) -> AnyResult<ExitCode> {
    let location = locate(&args.store)?;
    let store = open_existing(&location)?;
    let now = now_ms();
    let mut report = StatsReport {
        store: location.describe(),
        engine: location.location().engine(),
        last_shutdown_clean: store.recovery_report().clean_shutdown,
        ..StatsReport::default()
    };
    let mut actors = HashSet::new();
    store.for_each_session(|s| {
        match s {
            Ok(s) => {
                report.sessions += 1;
                if s.expires_at_ms() > now {
                    report.live += 1;
                } else {
                    report.expired += 1;
                }
                if !actors.contains(s.actor_id()) {
                    actors.insert(s.actor_id().to_owned());
                }
            }
            Err(_) => report.corrupt += 1,
        }
        true
    })?;
    report.actors = actors.len() as u64;
    report.quarantined = store.quarantined()?;
    report.earliest_expiry = store.earliest_expiry()?;
    close(store)?;
    report.size_bytes = location.path().map(dir_size);

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("store            {}", location.describe());
    println!(
        "sessions         {} ({} live, {} expired awaiting the reaper)",
        report.sessions, report.live, report.expired
    );
    println!("actors           {}", report.actors);
    println!("corrupt records  {}", report.corrupt);
    println!("quarantined      {}", report.quarantined);
    match report.earliest_expiry {
        Some(at) => println!("earliest expiry  {} ({})", time(at), relative(at, now)),
        None => println!("earliest expiry  none"),
    }
    if let Some(size) = report.size_bytes {
        println!("size on disk     {}", bytes(size));
        println!(
            "last shutdown    {}",
            if report.last_shutdown_clean {
                "clean"
            } else {
                "not clean (recovered on open)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ----- list / show -----

fn session_json(s: &Session) -> AnyResult<String> {
    let body = session_body(s)?;
    Ok(serde_json::to_string(&body)?)
}

pub fn list(args: &ListArgs) -> AnyResult<ExitCode> {
    let store = open_existing(&locate(&args.store)?)?;
    let now = now_ms();
    let mut sessions = Vec::new();
    let mut corrupt = 0;
    store.for_each_session(|s| {
        match s {
            Ok(s) => {
                let wanted = args.actor.as_deref().is_none_or(|a| a == s.actor_id())
                    && (!args.live || s.expires_at_ms() > now);
                if wanted {
                    sessions.push(s);
                }
            }
            Err(e) => {
                eprintln!("warning: {e}");
                corrupt += 1;
            }
        }
        true
    })?;
    close(store)?;
    sessions.sort_by(|a, b| {
        (a.actor_id(), a.created_at(), a.id()).cmp(&(b.actor_id(), b.created_at(), b.id()))
    });

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        for s in &sessions {
            writeln!(out, "{}", session_json(s)?)?;
        }
    } else {
        writeln!(
            out,
            "{:<16}  {:<24}  {:<8}  {:<24}  {:>4}  DATA",
            "ID", "ACTOR", "LANGUAGE", "EXPIRES", "REV"
        )?;
        for s in &sessions {
            let expires = time(s.expires_at_ms());
            let expires = if s.expires_at_ms() > now {
                expires
            } else {
                format!("{expires} (expired)")
            };
            writeln!(
                out,
                "{:<16}  {:<24}  {:<8}  {:<24}  {:>4}  {}",
                s.id(),
                s.actor_id(),
                s.language(),
                expires,
                s.revision(),
                s.data()
                    .iter()
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
        }
        writeln!(out, "{} session(s)", sessions.len())?;
    }
    out.flush()?;
    if corrupt > 0 {
        eprintln!("{corrupt} record(s) do not decode; run `sessiondb check --repair`");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(args: &ShowArgs) -> AnyResult<ExitCode> {
    let store = open_existing(&locate(&args.store)?)?;
    let found = store.find_by_id(&args.id)?;
    close(store)?;
    let Some(s) = found else {
        return Err(format!("no session with id {:?} in this store", args.id).into());
    };
    if args.json {
        println!("{}", session_json(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    println!("id          {}", s.id());
    println!("actor       {}", s.actor_id());
    println!("language    {}", s.language());
    println!(
        "created     {}",
        time(s.created_at().timestamp_millis().max(0) as u64)
    );
    println!(
        "expires     {} ({}{})",
        time(s.expires_at_ms()),
        relative(s.expires_at_ms(), now),
        if s.expires_at_ms() > now {
            ""
        } else {
            ", expired"
        }
    );
    if let Some(d) = s.deadline() {
        println!("deadline    {}", time(d.timestamp_millis().max(0) as u64));
    }
    println!("version     {}", s.version().unwrap_or("-"));
    println!("node        {}", s.node_id().unwrap_or("-"));
    println!("revision    {}", s.revision());
    println!("data        {} value(s)", s.data().len());
    for (name, json) in s.data().iter() {
        println!("  {name} = {json}");
    }
    Ok(ExitCode::SUCCESS)
}

// ----- expire -----

pub fn expire(args: &ExpireArgs) -> AnyResult<ExitCode> {
    let reason = UnsetReason::parse(&args.reason)?;
    let store = open_existing(&locate(&args.store)?)?;
    let n = store.expire_actor(&args.actor, reason.clone());
    close(store)?;
    let n = n?;
    if n == 0 {
        println!("actor {:?} has no sessions; nothing changed", args.actor);
    } else {
        println!(
            "ended {n} session(s) of actor {:?} with reason {reason}",
            args.actor
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ----- check -----

fn print_report(r: &CheckReport) {
    println!("  sessions          {}", r.sessions);
    println!("  corrupt records   {}", r.corrupt);
    println!("  missing expiries  {}", r.missing_expiries);
    println!("  stale expiries    {}", r.stale_expiries);
    println!("  missing actors    {}", r.missing_actors);
    println!("  stale actors      {}", r.stale_actors);
    match r.count_was {
        Some(was) => println!("  session count     stored {was}, actual {}", r.sessions),
        None => println!("  session count     ok"),
    }
    println!("  took              {:?}", r.duration);
}

pub fn check(args: &CheckArgs) -> AnyResult<ExitCode> {
    let location = locate(&args.store)?;
    let store = open_existing(&location)?;
    if location.path().is_none() {
        eprintln!(
            "note: on Redis, running servers keep writing during the check; stop them for an \
             exact report{}",
            if args.repair {
                ", and before a repair, which could otherwise undo their changes"
            } else {
                ""
            }
        );
    }
    let recovery = store.wait_for_recovery();
    if !recovery.clean_shutdown {
        println!("The store was not closed cleanly; opening it ran recovery, which repaired:");
        match &recovery.check {
            Some(r) => print_report(r),
            None => println!("  nothing (no check ran)"),
        }
    }
    let result = (|| -> AnyResult<(CheckReport, Option<CheckReport>)> {
        if args.repair {
            let found = store.repair()?;
            let after = store.check()?;
            Ok((found, Some(after)))
        } else {
            Ok((store.check()?, None))
        }
    })();
    let quarantined = store.quarantined();
    close(store)?;
    let (found, after) = result?;
    println!(
        "{} {}:",
        if args.repair { "Repair of" } else { "Check of" },
        location.describe()
    );
    print_report(&found);
    println!("  quarantined       {}", quarantined?);
    let problems = found.problems();
    let healthy = match &after {
        Some(after) if problems > 0 => {
            println!(
                "{problems} problem(s) found and repaired; the store now checks {}",
                if after.is_healthy() {
                    "healthy"
                } else {
                    "UNHEALTHY"
                }
            );
            after.is_healthy()
        }
        _ if problems == 0 => {
            println!("healthy");
            true
        }
        _ => {
            println!("{problems} problem(s) found; run `sessiondb check --repair` to fix them");
            false
        }
    };
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEMS)
    })
}

// ----- export / import -----

/// Counts the lines going through, for the progress bar.
struct LineCounter<W> {
    inner: W,
    bar: ProgressBar,
}

impl<W: Write> Write for LineCounter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
        self.bar.inc(lines as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub fn export(args: &ExportArgs) -> AnyResult<ExitCode> {
    let store = open_existing(&locate(&args.store)?)?;
    let to_stdout = args.output.as_os_str() == "-";
    let out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.output)
                .map_err(|e| format!("cannot create {}: {e}", args.output.display()))?,
        )
    };
    let total = store.stats()?.sessions;
    // The header line counts as one.
    let bar = progress(total + 1, "exporting");
    let summary = store.export(LineCounter {
        inner: out,
        bar: bar.clone(),
    });
    bar.finish_and_clear();
    close(store)?;
    let summary = summary?;
    eprintln!(
        "exported {} session(s){}{}",
        summary.sessions,
        if to_stdout {
            String::new()
        } else {
            format!(" to {}", args.output.display())
        },
        if summary.corrupt > 0 {
            format!(
                "; {} corrupt record(s) left out (run `sessiondb check --repair`)",
                summary.corrupt
            )
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn import(args: &ImportArgs) -> AnyResult<ExitCode> {
    let location = locate(&args.store)?;
    let (input, length): (Box<dyn Read>, u64) = if args.input.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), 0)
    } else {
        let file = File::open(&args.input)
            .map_err(|e| format!("cannot open {}: {e}", args.input.display()))?;
        let length = file.metadata().map_or(0, |m| m.len());
        (Box::new(file), length)
    };
    let store = open(&location)?;
    // Roughly 200 bytes a session.
    let bar = progress(length / 200, "importing");
    if !bar.is_hidden() {
        bar.set_length(length);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} importing [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
        ) {
            bar.set_style(style);
        }
    }
    let summary = store.import(BufReader::with_capacity(64 * 1024, bar.wrap_read(input)));
    bar.finish_and_clear();
    close(store)?;
    let summary = summary?;
    eprintln!(
        "imported {} session(s) into {} ({} replaced a stored session)",
        summary.imported,
        location.describe(),
        summary.replaced
    );
    Ok(ExitCode::SUCCESS)
}

// ----- compact -----

/// The writing end of an in-memory pipe between an export and an import.
struct PipeWriter(crossbeam_channel::Sender<Vec<u8>>);

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf.to_vec()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the import stopped")
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reading end; ends when the writer is dropped.
struct PipeReader {
    rx: crossbeam_channel::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub fn compact(args: &CompactArgs) -> AnyResult<ExitCode> {
    let location = locate(&args.store)?;
    let Some(from) = location.path() else {
        return Err(
            "compact rewrites a data directory (--data-dir); a Redis store has nothing to \
                    compact, the server manages its own memory. To copy a Redis store, use \
                    `sessiondb export` and `sessiondb import`"
                .into(),
        );
    };
    let into = &args.into;
    if into.exists()
        && std::fs::read_dir(into)
            .map_err(|e| format!("cannot read {}: {e}", into.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty; compact writes into a new or empty directory",
            into.display()
        )
        .into());
    }
    let source = open_existing(&location)?;
    let quarantined = source.quarantined()?;
    let total = source.stats()?.sessions;
    let target = match open(&Config::new(into)) {
        Ok(t) => t,
        Err(e) => {
            close(source)?;
            return Err(e);
        }
    };
    let bar = progress(total + 1, "compacting");
    let (tx, rx) = crossbeam_channel::bounded(16);
    let (exported, imported) = std::thread::scope(|scope| {
        let exporter = scope.spawn(|| {
            source.export(LineCounter {
                inner: PipeWriter(tx),
                bar: bar.clone(),
            })
        });
        let imported = target.import(BufReader::new(PipeReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }));
        let exported = exporter
            .join()
            .unwrap_or(Err(Error::WorkerFailed { worker: "export" }));
        (exported, imported)
    });
    bar.finish_and_clear();
    let checked = target.check();
    close(source)?;
    close(target)?;
    let incomplete = |why: String| -> AnyResult<ExitCode> {
        Err(format!(
            "{why}; {} is incomplete: delete it and try again (the source is unchanged)",
            into.display()
        )
        .into())
    };
    let exported = match exported {
        Ok(s) => s,
        Err(e) => return incomplete(format!("reading {} failed: {e}", from.display())),
    };
    let imported = match imported {
        Ok(s) => s,
        Err(e) => return incomplete(format!("writing {} failed: {e}", into.display())),
    };
    if imported.imported != exported.sessions {
        return incomplete(format!(
            "{} session(s) read but {} written",
            exported.sessions, imported.imported
        ));
    }
    match checked {
        Ok(r) if r.is_healthy() => {}
        Ok(r) => return incomplete(format!("the new store does not check healthy: {r:?}")),
        Err(e) => return incomplete(format!("checking the new store failed: {e}")),
    }
    let (before, after) = (dir_size(from), dir_size(into));
    println!(
        "compacted {} session(s) from {} ({}) into {} ({})",
        imported.imported,
        from.display(),
        bytes(before),
        into.display(),
        bytes(after)
    );
    if exported.corrupt > 0 || quarantined > 0 {
        println!(
            "left out: {} corrupt and {} quarantined record(s)",
            exported.corrupt, quarantined
        );
    }
    println!(
        "to use it, stop the server and swap the directories (e.g. mv {} {}.old && mv {} {})",
        from.display(),
        from.display(),
        into.display(),
        from.display()
    );
    Ok(ExitCode::SUCCESS)
}
