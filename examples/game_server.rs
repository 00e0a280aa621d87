//! A small game server whose player session survives a restart.
//!
//! ```text
//! cargo run --release --example game_server              # store in ./sessiondb-data
//! cargo run --release --example game_server -- /tmp/game # store in another directory
//! ```
//!
//! The first run registers a session for a player and saves the session key
//! in the data directory, as a game client would keep it in local storage.
//! Every later run (within the 10-minute session TTL) finds the saved key,
//! restores the session and counts the visit: the session, its data and its
//! expiry live in the store, not in the process.

use std::error::Error;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use sessiondb::{Config, Data, Event, Session, SessionStore};

/// The player this example plays.
const PLAYER: &str = "player-7";
/// Where the client-side copy of the session key is kept, in the data directory.
const KEY_FILE: &str = "player-7.key";

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("./sessiondb-data"), PathBuf::from);

    let store = SessionStore::open(Config::new(&dir))?;
    report_open(&store, &dir);
    let events = store.subscribe();

    let key_path = dir.join(KEY_FILE);
    let key = match fs::read_to_string(&key_path) {
        Ok(saved) => match restore(&store, saved.trim())? {
            Some(key) => key,
            None => register(&store, &key_path)?,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => register(&store, &key_path)?,
        Err(e) => return Err(format!("reading {}: {e}", key_path.display()).into()),
    };
    print_events(&events);

    // A few requests from the client: each one presents the key, which is
    // resolved (sliding the expiry forward), and then changes the game state.
    for (n, action) in ["move north", "pick up a coin", "move east"]
        .into_iter()
        .enumerate()
    {
        let session = store.resolve(&key)?;
        let (x, y): (i64, i64) = session.get("position")?.unwrap_or((0, 0));
        let coins: u64 = session.get("coins")?.unwrap_or(0);
        match action {
            "move north" => store.set_data(&key, "position", &(x, y + 1))?,
            "move east" => store.set_data(&key, "position", &(x + 1, y))?,
            _ => store.set_data(&key, "coins", &(coins + 1))?,
        }
        let data = store.data(&key)?;
        println!(
            "request {}: {action:<14} -> position {}, coins {}",
            n + 1,
            data.get_json("position").unwrap_or("none"),
            data.get_json("coins").unwrap_or("0"),
        );
    }

    // Someone guessing at the key gets MAGE's reason, and the real session
    // is untouched.
    let forged = format!("{PLAYER}:{}", "x".repeat(32));
    if let Err(e) = store.resolve(&forged) {
        let reason = e.reason().map_or("error", |r| r.as_str());
        println!("a forged key is rejected: {reason}");
    }

    print_events(&events);
    let sessions = store.stats()?.sessions;
    store.close()?;
    println!(
        "store closed cleanly ({sessions} session(s) stored); run again to see the session survive"
    );
    Ok(())
}

/// Says what `open` found.
fn report_open(store: &SessionStore, dir: &Path) {
    let report = store.recovery_report();
    if report.created {
        println!("created a new store in {}", dir.display());
    } else if report.clean_shutdown {
        println!(
            "opened the store in {} (the last run closed it cleanly)",
            dir.display()
        );
    } else if let Some(check) = &report.check {
        println!(
            "opened the store in {} after an unclean shutdown: {} session(s), {} problem(s) repaired",
            dir.display(),
            check.sessions,
            check.problems()
        );
    }
}

/// Restores the session of a saved key and counts the visit. Returns `None`
/// when the key is no longer valid (expired, logged out, replaced).
fn restore(store: &SessionStore, key: &str) -> Result<Option<String>, Box<dyn Error>> {
    // MAGE's `restore`: resolve the key, slide its expiry, and tell
    // subscribers `session.set` again.
    let session = match store.restore(key) {
        Ok(session) => session,
        Err(e) => match e.reason() {
            Some(reason) => {
                println!("the saved key is no longer valid ({reason}); logging in again");
                return Ok(None);
            }
            None => return Err(e.into()),
        },
    };
    let visits = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    store.set_data(key, "visits", &visits)?;
    println!(
        "restored session for {}, visits = {visits}",
        session.actor_id()
    );
    describe(&session);
    Ok(Some(key.to_owned()))
}

/// Logs the player in and saves the key where the next run finds it.
fn register(store: &SessionStore, key_path: &Path) -> Result<String, Box<dyn Error>> {
    let mut data = Data::new();
    data.insert("visits", &1)?;
    let session = store.register(PLAYER, "en", data)?;
    let key = session
        .key()
        .ok_or("register returned a session without its key")?
        .to_owned();
    save_key(key_path, &key)?;
    println!(
        "registered a new session for {}, visits = 1; key saved to {}",
        session.actor_id(),
        key_path.display()
    );
    describe(&session);
    Ok(key)
}

fn describe(session: &Session) {
    println!(
        "  session id {}, language {}, expires {}, revision {}",
        session.id(),
        session.language(),
        session.expires_at().format("%H:%M:%S UTC"),
        session.revision()
    );
}

/// Writes the key readable by its owner only: it is a password.
fn save_key(path: &Path, key: &str) -> Result<(), Box<dyn Error>> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("saving the key to {}: {e}", path.display()))?;
    writeln!(file, "{key}")?;
    Ok(())
}

/// Prints the events waiting on `events`. They are published before the
/// call that caused them returns, so nothing is still in flight here.
fn print_events(events: &Receiver<Event>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for event in events.try_iter() {
        match &event {
            Event::Set {
                id,
                actor_id,
                language,
                expires_at,
            } => println!(
                "  event {}: {actor_id} holds session {id} ({language}), expires in {} s",
                event.name(),
                expires_at.saturating_sub(now) / 1000
            ),
            Event::Unset {
                id,
                actor_id,
                reason,
            } => println!(
                "  event {}: session {id} of {actor_id} ended: {reason}",
                event.name()
            ),
            Event::Lagged { missed } => {
                println!("  event {}: {missed} event(s) missed", event.name());
            }
            other => println!("  event {}", other.name()),
        }
    }
}
