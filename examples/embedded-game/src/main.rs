//! A small game server that embeds sessiondb the way a game's own crate
//! does: a path dependency with default features, outside sessiondb's
//! workspace. It logs two players in, serves a few of their requests,
//! logs one out, restarts (closes and reopens the store) and finds the
//! other's session still there with its data.
//!
//! ```text
//! cargo run                  # a store in a new temporary directory
//! cargo run -- ./game-data   # or in this directory
//! ```
//!
//! It exits with an error if anything a game relies on does not hold.

use std::error::Error;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use sessiondb::{Config, Data, Event, Reason, SessionStore, UnsetReason};

fn main() -> Result<(), Box<dyn Error>> {
    let given = std::env::args_os().nth(1).map(PathBuf::from);
    let dir = match &given {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "embedded-game-{}-{}",
            std::process::id(),
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
        )),
    };
    println!("store in {}", dir.display());

    // Start-up: open (or create) the store and follow its events.
    let store = SessionStore::open(Config::new(&dir))?;
    let events = store.subscribe();

    // Two players log in; each client gets its full session key.
    let mut data = Data::new();
    data.insert("level", &1)?;
    let alice = store.register("alice", "en", data)?;
    let alice_key = alice.key().ok_or("register returns the key")?.to_owned();
    let bob = store.register("bob", "fr", Data::new())?;
    let bob_key = bob.key().ok_or("register returns the key")?.to_owned();
    println!("alice and bob logged in");

    // The game loop: every request resolves its key, then plays.
    for request in 1..=3 {
        let session = store.resolve(&alice_key)?;
        let level: u32 = session.get("level")?.unwrap_or(0);
        store.set_data(&alice_key, "level", &(level + 1))?;
        let coins: u32 = store.get_data(&bob_key, "coins")?.unwrap_or(0);
        store.set_data(&bob_key, "coins", &(coins + 10))?;
        println!(
            "request {request}: alice reaches level {}, bob has {} coins",
            level + 1,
            coins + 10
        );
    }

    // A forged key is refused with MAGE's reason.
    let forged = format!("alice:{}", "x".repeat(32));
    let refused = store.resolve(&forged).err().and_then(|e| e.reason());
    expect(
        refused == Some(Reason::KeyMismatch),
        "a forged key is refused as keyMismatch",
    )?;

    // Bob logs out; subscribers hear every change, and why sessions end.
    store.logout(&bob_key)?;
    let heard: Vec<Event> = events.try_iter().collect();
    let sets = heard
        .iter()
        .filter(|e| matches!(e, Event::Set { .. }))
        .count();
    let logged_out = heard.iter().any(|e| {
        matches!(e, Event::Unset { actor_id, reason: UnsetReason::LoggedOut, .. } if actor_id == "bob")
    });
    expect(
        sets == 2 && logged_out,
        "two session.set events and bob's loggedOut",
    )?;
    println!("events: {sets} session.set, bob's session.unset (loggedOut)");

    // A restart: the store is closed cleanly and opened again.
    store.close()?;
    let store = SessionStore::open(Config::new(&dir))?;
    let session = store.resolve(&alice_key)?;
    let level: Option<u32> = session.get("level")?;
    expect(
        level == Some(4),
        "alice's session and data survive the restart",
    )?;
    let gone = store.resolve(&bob_key).err().and_then(|e| e.reason());
    expect(gone == Some(Reason::NoSession), "bob's session stays ended")?;
    println!("after a restart: alice is still logged in at level 4; bob is not");
    store.close()?;
    if given.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    println!("embedded game: ok");
    Ok(())
}

fn expect(holds: bool, what: &str) -> Result<(), Box<dyn Error>> {
    if holds {
        Ok(())
    } else {
        Err(format!("expected: {what}").into())
    }
}
