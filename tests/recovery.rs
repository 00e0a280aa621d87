//! Open-time recovery, the consistency check and repair, corrupt records,
//! format versioning and the fixture stores of formats 1 to 3.
//!
//! Broken states are made by writing sled's trees directly while the store
//! is closed, as a crash or a bug would leave them.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sessiondb::{
    Data, Error, Event, ManualClock, Reason, Session, SessionStore, UnsetReason, STORE_FORMAT,
};

/// A format 3 `expiries` key: time, then the record key (actor length,
/// actor, digest).
fn expiry_key(at: u64, actor: &str, digest_byte: u8) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.push(actor.len() as u8);
    k.extend_from_slice(actor.as_bytes());
    k.extend_from_slice(&[digest_byte; 32]);
    k
}

/// Opens the store directory with sled itself and hands `f` the trees.
/// sled releases its lock on a directory asynchronously after a close in
/// the same process, so a held lock is retried for a while, as
/// `SessionStore::open` does.
fn with_raw(dir: &Path, f: impl FnOnce(&sled::Db)) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let db = loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("raw open: {e:?}"),
        }
    };
    f(&db);
    db.flush().expect("raw flush");
}

/// Removes the clean-shutdown marker, as a crash would have left it.
fn mark_unclean(db: &sled::Db) {
    db.open_tree("meta").unwrap().remove("clean").unwrap();
}

fn first_key(db: &sled::Db, tree: &str) -> Vec<u8> {
    db.open_tree(tree)
        .unwrap()
        .iter()
        .next()
        .unwrap()
        .unwrap()
        .0
        .to_vec()
}

/// A store with two sessions (actors a and b), closed; returns their keys.
fn two_sessions() -> (Fixture, String, String) {
    let f = Fixture::new();
    let mut data = Data::new();
    data.insert("gold", &7).unwrap();
    let a = f
        .store
        .register("a", "en", data)
        .unwrap()
        .key()
        .unwrap()
        .to_owned();
    let b = f
        .store
        .register("b", "en", Data::new())
        .unwrap()
        .key()
        .unwrap()
        .to_owned();
    (f, a, b)
}

/// Closes the fixture's store, lets `damage` write the trees, and opens again.
fn damage_and_reopen(f: Fixture, damage: impl FnOnce(&sled::Db)) -> Fixture {
    damage_and_reopen_with(f, damage, |c| c)
}

fn damage_and_reopen_with(
    f: Fixture,
    damage: impl FnOnce(&sled::Db),
    configure: impl FnOnce(sessiondb::Config) -> sessiondb::Config,
) -> Fixture {
    let Fixture {
        dir, clock, store, ..
    } = f;
    store.close().unwrap();
    with_raw(dir.path(), damage);
    let store = SessionStore::open(configure(config(&dir, &clock))).unwrap();
    Fixture::on_sled(dir, clock, store)
}

#[test]
fn a_clean_close_skips_the_check_and_an_unclean_one_runs_it() {
    let (f, _, _) = two_sessions();
    let f = f.reopen(|c| c);
    let report = f.store.recovery_report().clone();
    assert!(report.clean_shutdown);
    assert!(report.check.is_none());

    let f = damage_and_reopen(f, mark_unclean);
    let report = f.store.wait_for_recovery();
    assert!(!report.clean_shutdown);
    assert!(!report.checking);
    assert!(!f.store.stats().unwrap().checking);
    let check = report.check.as_ref().expect("unclean open checks");
    assert!(check.is_healthy(), "{check:?}");
    assert_eq!(check.sessions, 2);

    // With the check in the foreground, `open` returns after it.
    let f = damage_and_reopen_with(f, mark_unclean, |c| c.check_in_background(false));
    let report = f.store.recovery_report();
    assert!(!report.checking);
    assert!(report.check.expect("checked during open").is_healthy());
}

/// After a crash the store serves at once: the check runs beside the
/// writes, its findings are checked again with writes held, and only real
/// damage is reported and repaired; the count comes out exact.
#[test]
fn the_background_check_repairs_real_damage_while_writes_go_on() {
    let (f, a, b) = two_sessions();
    let f = damage_and_reopen(f, |db| {
        let key = first_key(db, "expiries");
        db.open_tree("expiries").unwrap().remove(key).unwrap();
        db.open_tree("expiries")
            .unwrap()
            .insert(expiry_key(5, "ghost", 3), &[])
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("sessions", &99u64.to_be_bytes())
            .unwrap();
        mark_unclean(db);
    });
    // Writes while the check runs (or after it, on a fast machine: the
    // outcome must be the same either way).
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let store = f.store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let s = store
                        .register(&format!("w{t}-{i}"), "en", Data::new())
                        .unwrap();
                    if i % 2 == 0 {
                        store.logout(s.key().unwrap()).unwrap();
                    }
                }
            })
        })
        .collect();
    f.store.is_valid(&a).unwrap();
    f.store.is_valid(&b).unwrap();
    for w in writers {
        w.join().unwrap();
    }
    let report = f.store.wait_for_recovery();
    assert_eq!(report.check_error, None);
    let check = report.check.expect("the background check ended");
    assert_eq!(
        (
            check.missing_expiries,
            check.stale_actors,
            check.stale_expiries,
            check.missing_actors,
            check.corrupt
        ),
        (1, 0, 1, 0, 0),
        "only the damage done before the crash: {check:?}"
    );
    assert!(check.repaired);
    assert_eq!(f.store.stats().unwrap().sessions, 2 + 4 * 25);
    let after = f.store.check().unwrap();
    assert!(after.is_healthy(), "{after:?}");
    assert_eq!(after.sessions, 2 + 4 * 25);
}

#[test]
fn recovery_restores_a_missing_expiry_entry() {
    let (f, a, _) = two_sessions();
    let f = damage_and_reopen(f, |db| {
        let key = first_key(db, "expiries");
        db.open_tree("expiries").unwrap().remove(key).unwrap();
        mark_unclean(db);
    });
    let check = f.store.wait_for_recovery().check.unwrap();
    assert_eq!(check.missing_expiries, 1);
    assert!(check.repaired);
    // The restored entry works: both sessions are reaped when due.
    f.advance(Duration::from_secs(601));
    assert_eq!(f.store.reap_expired().unwrap(), 2);
    assert_eq!(
        f.store.is_valid(&a).unwrap_err().reason(),
        Some(Reason::NoSession)
    );
    assert!(f.store.check().unwrap().is_healthy());
}

#[test]
fn recovery_removes_stale_and_misdated_expiry_entries() {
    let (f, a, _) = two_sessions();
    let f = damage_and_reopen(f, |db| {
        let expiries = db.open_tree("expiries").unwrap();
        // One session whose entry is at the wrong time...
        let real = first_key(db, "expiries");
        expiries.remove(&real).unwrap();
        let mut wrong = real.clone();
        wrong[..8].copy_from_slice(&6u64.to_be_bytes());
        expiries.insert(wrong, &[]).unwrap();
        // ...and one entry for a session that does not exist.
        expiries.insert(expiry_key(5, "ghost", 9), &[]).unwrap();
        mark_unclean(db);
    });
    let check = f.store.wait_for_recovery().check.unwrap();
    assert_eq!(
        (check.stale_expiries, check.missing_expiries),
        (2, 1),
        "{check:?}"
    );
    // Nothing is reaped early because of the bad entries.
    assert_eq!(f.store.reap_expired().unwrap(), 0);
    f.store.is_valid(&a).unwrap();
    assert!(f.store.check().unwrap().is_healthy());
}

/// Store format 3 keys a record by its actor: a record found under
/// another actor's key names nobody's session, and repair moves it aside.
#[test]
fn a_record_filed_under_another_actors_key_is_quarantined() {
    let (f, a, b) = two_sessions();
    let f = damage_and_reopen(f, |db| {
        let records = db.open_tree("records").unwrap();
        let (key, value) = records.iter().next().unwrap().unwrap();
        let mut moved = vec![5];
        moved.extend_from_slice(b"ghost");
        moved.extend_from_slice(&key[key.len() - 32..]);
        records.insert(moved, value).unwrap();
        records.remove(key).unwrap();
        mark_unclean(db);
    });
    let check = f.store.wait_for_recovery().check.unwrap();
    assert_eq!((check.corrupt, check.stale_expiries), (1, 1), "{check:?}");
    assert_eq!(f.store.quarantined().unwrap(), 1);
    assert!(f.store.actor_session("ghost").unwrap().is_none());
    // One of the two sessions is gone, the other untouched.
    let valid = [&a, &b]
        .iter()
        .filter(|k| f.store.is_valid(k).is_ok())
        .count();
    assert_eq!(valid, 1);
    assert_eq!(f.store.stats().unwrap().sessions, 1);
    assert!(f.store.check().unwrap().is_healthy());
}

/// A register stopped by a crash after it stored its session and before it
/// ended the actor's older one leaves the actor over its cap; the check
/// after the crash ends the older one, as the register would have, and
/// announces it to a subscription made by `open_subscribed`, whether the
/// check runs in the background or before `open` returns.
#[test]
fn the_check_after_a_crash_ends_sessions_over_the_actors_cap_and_announces_them() {
    for in_background in [true, false] {
        over_cap_after_a_crash(in_background);
    }
}

fn over_cap_after_a_crash(in_background: bool) {
    // Two sessions of one actor, as such a crash leaves them (made here
    // with a cap of 2).
    let f = Fixture::with(|c| c.max_sessions_per_actor(2));
    let old = f.store.register("a", "en", Data::new()).unwrap();
    f.advance(Duration::from_secs(1));
    let new = f.store.register("a", "en", Data::new()).unwrap();
    let other = f.store.register("b", "en", Data::new()).unwrap();
    let Fixture {
        dir, clock, store, ..
    } = f;
    store.close().unwrap();
    with_raw(dir.path(), mark_unclean);
    let config = config(&dir, &clock).check_in_background(in_background);
    let (store, events) = SessionStore::open_subscribed(config).unwrap();
    let check = store.wait_for_recovery().check.unwrap();
    assert_eq!(check.over_cap, 1, "{check:?}");
    assert_eq!(check.problems(), 1, "{check:?}");
    assert_eq!(
        drain(&events),
        vec![Event::Unset {
            id: old.id().to_owned(),
            actor_id: "a".into(),
            reason: UnsetReason::Replaced,
        }],
        "in the background: {in_background}"
    );
    assert_eq!(rejected(store.resolve(&key_of(&old))), Reason::KeyMismatch);
    assert_eq!(store.resolve(&key_of(&new)).unwrap().id(), new.id());
    store.resolve(&key_of(&other)).unwrap();
    assert_eq!(store.stats().unwrap().sessions, 2);
    assert!(store.check().unwrap().is_healthy());
}

/// `check` reports an actor over its cap (the cap was lowered, say), and
/// `repair` ends its oldest sessions as a register would.
#[test]
fn check_reports_and_repair_ends_sessions_over_the_cap() {
    let f = Fixture::with(|c| c.max_sessions_per_actor(3));
    let sessions: Vec<Session> = (0..3)
        .map(|i| {
            f.advance(Duration::from_secs(i));
            f.store.register("a", "en", Data::new()).unwrap()
        })
        .collect();
    let f = f.reopen(|c| c.max_sessions_per_actor(1));
    let rx = f.store.subscribe();
    let check = f.store.check().unwrap();
    assert_eq!((check.over_cap, check.repaired), (2, false));
    assert!(drain(&rx).is_empty());
    let repaired = f.store.repair().unwrap();
    assert_eq!(repaired.over_cap, 2);
    let ended: Vec<Event> = sessions[..2]
        .iter()
        .map(|s| unset_event(s, UnsetReason::Replaced))
        .collect();
    assert_eq!(drain(&rx), ended);
    f.store.is_valid(&key_of(&sessions[2])).unwrap();
    assert!(f.store.check().unwrap().is_healthy());
}

#[test]
fn repair_fixes_a_wrong_session_count() {
    let (f, _, _) = two_sessions();
    // The count stored at a clean close is trusted, so a wrong one is a
    // problem that check reports and repair fixes.
    let f = damage_and_reopen(f, |db| {
        db.open_tree("meta")
            .unwrap()
            .insert("sessions", &99u64.to_be_bytes())
            .unwrap();
    });
    assert_eq!(f.store.stats().unwrap().sessions, 99);
    assert_eq!(f.store.check().unwrap().count_was, Some(99));
    assert_eq!(f.store.repair().unwrap().count_was, Some(99));
    assert_eq!(f.store.stats().unwrap().sessions, 2);
    assert!(f.store.check().unwrap().is_healthy());
}

#[test]
fn after_an_unclean_shutdown_the_count_is_recounted_not_trusted() {
    let (f, _, _) = two_sessions();
    // Store format 2 keeps the count out of transactions: after a crash the
    // stored count is stale by design, and recovery counts the sessions.
    let f = damage_and_reopen(f, |db| {
        db.open_tree("meta")
            .unwrap()
            .insert("sessions", &99u64.to_be_bytes())
            .unwrap();
        mark_unclean(db);
    });
    let check = f.store.wait_for_recovery().check.unwrap();
    assert!(check.is_healthy(), "{check:?}");
    assert_eq!(check.sessions, 2);
    assert_eq!(f.store.stats().unwrap().sessions, 2);
}

#[test]
fn a_corrupt_record_affects_only_its_session_until_repair_quarantines_it() {
    let (f, a, b) = two_sessions();
    let f = damage_and_reopen(f, |db| {
        let records = db.open_tree("records").unwrap();
        // Corrupt the record of actor a: format byte, then actor id "a"
        // (length 1), see docs/format.md.
        for kv in records.iter() {
            let (k, v) = kv.unwrap();
            if v[1..3] == [1, b'a'] {
                records.insert(k, &[2, 0xff, 0xff, 0xff][..]).unwrap();
            }
        }
    });
    // Clean shutdown marker was left: no automatic check, so reads meet it.
    let err = f.store.resolve(&a).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("check"),
        "the message says what to do: {err}"
    );
    assert!(matches!(
        f.store.set_data(&a, "x", &1),
        Err(Error::Corrupt { .. })
    ));
    // Everything else keeps working.
    f.store.resolve(&b).unwrap();
    f.store.register("c", "en", Data::new()).unwrap();
    assert!(f.store.stats().unwrap().corrupt_records >= 2);

    let check = f.store.check().unwrap();
    assert_eq!(check.corrupt, 1);
    assert!(!check.repaired);
    let repaired = f.store.repair().unwrap();
    assert_eq!(repaired.corrupt, 1);
    assert_eq!(f.store.quarantined().unwrap(), 1);
    assert_eq!(
        f.store.resolve(&a).unwrap_err().reason(),
        Some(Reason::NoSession)
    );
    assert!(f.store.check().unwrap().is_healthy());
    assert_eq!(f.store.stats().unwrap().sessions, 2);
}

#[test]
fn a_store_of_a_newer_format_is_refused_and_left_alone() {
    let (f, _, _) = two_sessions();
    let Fixture {
        dir, clock, store, ..
    } = f;
    store.close().unwrap();
    with_raw(dir.path(), |db| {
        db.open_tree("meta")
            .unwrap()
            .insert("format", &(STORE_FORMAT + 1).to_be_bytes())
            .unwrap();
    });
    match SessionStore::open(config(&dir, &clock)) {
        Err(Error::NewerFormat { found, supported }) => {
            assert_eq!((found, supported), (STORE_FORMAT + 1, STORE_FORMAT));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    with_raw(dir.path(), |db| {
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(
            meta.get("format").unwrap().unwrap().as_ref(),
            (STORE_FORMAT + 1).to_be_bytes()
        );
        assert_eq!(db.open_tree("records").unwrap().len(), 2);
    });
}

#[test]
fn a_stale_generating_snapshot_from_a_crash_during_open_is_removed() {
    let (f, a, _) = two_sessions();
    let Fixture {
        dir, clock, store, ..
    } = f;
    store.close().unwrap();
    let stale = dir.path().join("snap.00000000000000A0.generating");
    std::fs::write(&stale, b"half-written").unwrap();
    let store = SessionStore::open(config(&dir, &clock)).unwrap();
    assert_eq!(store.recovery_report().stale_snapshots_removed, 1);
    assert!(!stale.exists());
    store.is_valid(&a).unwrap();
}

// ------------------------------------------------------------- fixtures --

const FIXTURE: &str = "tests/fixtures/store-v1";
const FIXTURE_V2: &str = "tests/fixtures/store-v2";
const FIXTURE_V3: &str = "tests/fixtures/store-v3";
const FIXTURE_V4: &str = "tests/fixtures/store-v4";

fn fixture_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// A copy of a fixture store's directory, with its keys.
fn copy_fixture(name: &str) -> (tempfile::TempDir, Vec<String>) {
    let fixture = fixture_path(name);
    let keys: Vec<String> = std::fs::read_to_string(fixture.join("keys.txt"))
        .expect("fixture keys")
        .lines()
        .map(str::to_owned)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture.join("db"), dir.path());
    (dir, keys)
}

/// A copy of a fixture store, opened, with its keys.
fn open_fixture(name: &str) -> (tempfile::TempDir, ManualClock, SessionStore, Vec<String>) {
    let (dir, keys) = copy_fixture(name);
    let clock = ManualClock::new(T0);
    let store = SessionStore::open(config(&dir, &clock).app_version("1.0.0")).unwrap();
    assert!(store.recovery_report().clean_shutdown);
    assert!(store.check().unwrap().is_healthy());
    (dir, clock, store, keys)
}

/// The fixtures' two sessions, as `write_fixture` made them.
fn assert_fixture_sessions(store: &SessionStore, keys: &[String]) -> Session {
    let first = store.resolve(&keys[0]).unwrap();
    assert_eq!(first.actor_id(), "fixture-player");
    assert_eq!(first.language(), "pt-BR");
    assert_eq!(first.get::<u32>("level").unwrap(), Some(12));
    assert_eq!(
        first.get::<Vec<String>>("items").unwrap(),
        Some(vec!["sword".to_owned(), "map".to_owned()])
    );
    assert_eq!(first.version(), Some("1.0.0"));
    assert_eq!(first.node_id(), Some("node-1"));
    let second = store.resolve(&keys[1]).unwrap();
    assert_eq!(second.actor_id(), "actor:with:colons");
    assert!(second.data().is_empty());
    assert_eq!(store.stats().unwrap().sessions, 2);
    first
}

/// After a close, the store is in this build's format, with format 3's
/// trees only (format 4 keeps them): records by actor and digest, expiry
/// entries naming them.
fn assert_format_3_trees(dir: &Path, sessions: usize) {
    with_raw(dir, |db| {
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(
            meta.get("format").unwrap().unwrap().as_ref(),
            STORE_FORMAT.to_be_bytes()
        );
        let names: Vec<String> = db
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n == "sessions" || n == "actors"),
            "{names:?}"
        );
        assert_eq!(db.open_tree("records").unwrap().len(), sessions);
        let expiries = db.open_tree("expiries").unwrap();
        assert_eq!(expiries.len(), sessions);
        for kv in expiries.iter() {
            let (k, _) = kv.unwrap();
            assert!(
                db.open_tree("records")
                    .unwrap()
                    .contains_key(&k[8..])
                    .unwrap(),
                "an entry names its record"
            );
        }
    });
}

/// The format 1 fixture store: written once by format 1, then opened by
/// every later build, which moves it to this build's format on open.
#[test]
fn the_format_1_fixture_store_opens_and_decodes() {
    let (dir, clock, store, keys) = open_fixture(FIXTURE);
    let first = assert_fixture_sessions(&store, &keys);
    let listed = store.actor_session("fixture-player").unwrap().unwrap();
    assert_eq!(listed.id(), first.id());
    store.logout(&keys[1]).unwrap();
    assert_eq!(store.actor_session("actor:with:colons").unwrap(), None);
    store.close().unwrap();
    assert_format_3_trees(dir.path(), 1);
    let store = SessionStore::open(config(&dir, &clock)).unwrap();
    assert!(store.check().unwrap().is_healthy());
    assert_eq!(store.resolve(&keys[0]).unwrap().id(), first.id());
}

/// The format 2 fixture store (set `SESSIONDB_WRITE_FIXTURES=2` to write
/// it, which only a change of format 2 itself may do): its first session's
/// expiry slid after its entry was filed. Format 3 moves it on open.
#[test]
fn the_format_2_fixture_store_opens_and_decodes() {
    let (dir, clock, store, keys) = open_fixture(FIXTURE_V2);
    let first = assert_fixture_sessions(&store, &keys);
    assert_eq!(first.expires_at_ms(), T0 + 300_000 + 600_000);
    // Its entry, filed at the first expiry, is met early and filed again.
    clock.set(T0 + 600_000);
    assert_eq!(store.reap_expired().unwrap(), 1, "only the second session");
    store.is_valid(&keys[0]).unwrap();
    assert!(store.check().unwrap().is_healthy());
    store.close().unwrap();
    assert_format_3_trees(dir.path(), 1);
    let store = SessionStore::open(config(&dir, &clock)).unwrap();
    clock.set(first.expires_at_ms());
    assert_eq!(store.reap_expired().unwrap(), 1);
}

/// The format 3 fixture store (written by a build of store format 3, whose
/// records are of record format 2): the same sessions open as they are,
/// without metadata, and the store says format 4 from then on.
#[test]
fn the_format_3_fixture_store_opens_and_decodes() {
    let (dir, clock, store, keys) = open_fixture(FIXTURE_V3);
    assert!(store.resolve(&keys[0]).unwrap().meta().is_empty());
    let first = assert_fixture_sessions(&store, &keys);
    assert_eq!(first.expires_at_ms(), T0 + 300_000 + 600_000);
    clock.set(T0 + 600_000);
    assert_eq!(store.reap_expired().unwrap(), 1, "only the second session");
    store.is_valid(&keys[0]).unwrap();
    store.close().unwrap();
    assert_format_3_trees(dir.path(), 1);
}

/// A store left part-way through the move of format 1's actor index to
/// format 2's lists (by a build of format 2 that crashed there) holds some
/// actor entries of each shape; the move to format 3, which rebuilds
/// nothing from the actor index, opens it with all its sessions.
#[test]
fn a_format_1_store_whose_migration_was_cut_short_finishes_it() {
    let (dir, keys) = copy_fixture(FIXTURE);
    with_raw(dir.path(), |db| {
        // Move the first actor's entry the way format 2 keeps it.
        let actors = db.open_tree("actors").unwrap();
        let (entry, _) = actors.iter().next().unwrap().unwrap();
        let len = usize::from(entry[0]);
        actors.insert(&entry[..=len], &entry[1 + len..]).unwrap();
        actors.remove(&entry).unwrap();
    });
    let clock = sessiondb::ManualClock::new(T0);
    let store = SessionStore::open(config(&dir, &clock).app_version("1.0.0")).unwrap();
    assert!(store.check().unwrap().is_healthy());
    assert_fixture_sessions(&store, &keys);
    assert!(store.actor_session("fixture-player").unwrap().is_some());
    assert!(store.actor_session("actor:with:colons").unwrap().is_some());
}

/// A crash part-way through the move to format 3 leaves one record moved
/// and still in `sessions` (stored under its new key, not yet removed from
/// the old tree) and its old entry, say; the store still says format 2, so
/// the next open moves the rest, and the moved record once.
#[test]
fn a_format_2_store_whose_move_to_format_3_was_cut_short_finishes_it() {
    let (dir, keys) = copy_fixture(FIXTURE_V2);
    with_raw(dir.path(), |db| {
        // The move of the first record (in key order), up to its removal
        // from `sessions`, as `migrate` makes it.
        let sessions = db.open_tree("sessions").unwrap();
        let (digest, record) = sessions.iter().next().unwrap().unwrap();
        let actor_len = usize::from(record[1]);
        let actor = &record[2..2 + actor_len];
        let mut key = vec![record[1]];
        key.extend_from_slice(actor);
        key.extend_from_slice(&digest);
        db.open_tree("records")
            .unwrap()
            .insert(&key, record)
            .unwrap();
        let expiries = db.open_tree("expiries").unwrap();
        let old = expiries
            .iter()
            .map(|kv| kv.unwrap().0)
            .find(|k| k[8..] == digest[..])
            .unwrap();
        let mut new = old[..8].to_vec();
        new.extend_from_slice(&key);
        expiries.insert(new, &[]).unwrap();
    });
    let clock = sessiondb::ManualClock::new(T0);
    let store = SessionStore::open(config(&dir, &clock).app_version("1.0.0")).unwrap();
    assert!(store.recovery_report().clean_shutdown);
    assert!(store.check().unwrap().is_healthy());
    assert_fixture_sessions(&store, &keys);
    store.close().unwrap();
    assert_format_3_trees(dir.path(), 2);
}

/// The format 4 fixture store (set `SESSIONDB_WRITE_FIXTURES=4` to write
/// it, which only a change of format 4 itself may do): the same sessions,
/// the first with metadata (record format 3).
#[test]
fn the_format_4_fixture_store_opens_and_decodes() {
    if std::env::var("SESSIONDB_WRITE_FIXTURES").as_deref() == Ok("4") {
        write_fixture(&fixture_path(FIXTURE_V4));
    }
    let (dir, clock, store, keys) = open_fixture(FIXTURE_V4);
    let first = assert_fixture_sessions(&store, &keys);
    assert_eq!(first.meta(), &fixture_meta());
    assert!(store.resolve(&keys[1]).unwrap().meta().is_empty());
    assert_eq!(first.expires_at_ms(), T0 + 300_000 + 600_000);
    clock.set(T0 + 600_000);
    assert_eq!(store.reap_expired().unwrap(), 1, "only the second session");
    store.is_valid(&keys[0]).unwrap();
    store.close().unwrap();
    assert_format_3_trees(dir.path(), 1);
    with_raw(dir.path(), |db| {
        let records = db.open_tree("records").unwrap();
        let (_, record) = records.iter().next().unwrap().unwrap();
        assert_eq!(record[0], sessiondb::RECORD_FORMAT, "record format 3");
    });
}

/// The first fixture session's metadata (format 4 on).
fn fixture_meta() -> sessiondb::Meta {
    sessiondb::Meta::from_pairs([("device", "fixture phone"), ("platform", "android")]).unwrap()
}

fn write_fixture(fixture: &Path) {
    let _ = std::fs::remove_dir_all(fixture);
    let db = fixture.join("db");
    let clock = Arc::new(ManualClock::new(T0));
    let config = sessiondb::Config::new(&db)
        .clock(clock.clone())
        .reaper_thread(false)
        .ttl(Duration::from_secs(600))
        .app_version("1.0.0")
        .node_id("node-1");
    let store = SessionStore::open(config).unwrap();
    let mut data = Data::new();
    data.insert("level", &12).unwrap();
    data.insert("items", &["sword", "map"]).unwrap();
    let first = store
        .register_with_meta("fixture-player", "pt-BR", data, fixture_meta())
        .unwrap();
    let second = store
        .register("actor:with:colons", "en", Data::new())
        .unwrap();
    // The first session's expiry slides later; its entry stays (formats 2
    // and 3).
    clock.advance(Duration::from_secs(300));
    store.extend(first.key().unwrap()).unwrap();
    store.close().unwrap();
    let keys = format!("{}\n{}\n", first.key().unwrap(), second.key().unwrap());
    std::fs::write(fixture.join("keys.txt"), keys).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Large values make sled write pages to `blobs/`, which sled itself never
/// fsyncs; immediate durability fsyncs them. This exercises that path and
/// checks the values come back whole after a reopen.
#[test]
fn large_values_are_written_through_blob_files_in_immediate_mode() {
    let f = Fixture::with(|c| c.durability(sessiondb::Durability::Immediate));
    let big = "x".repeat(60_000);
    let keys: Vec<String> = (0..20)
        .map(|i| {
            let key = f
                .store
                .register(&format!("big{i}"), "en", Data::new())
                .unwrap()
                .key()
                .unwrap()
                .to_owned();
            f.store.set_data(&key, "blob", &big).unwrap();
            key
        })
        .collect();
    let blobs = std::fs::read_dir(f.dir.path().join("blobs"))
        .unwrap()
        .count();
    assert!(
        blobs > 0,
        "no page went to a blob file; the test no longer covers that path"
    );
    let f = f.reopen(|c| c.durability(sessiondb::Durability::Immediate));
    for key in &keys {
        assert_eq!(
            f.store.get_data::<String>(key, "blob").unwrap().as_deref(),
            Some(big.as_str())
        );
    }
}

/// A second opener is refused before it touches the directory: a snapshot
/// the holder is still writing is not taken for a crash leftover.
#[test]
fn a_refused_open_leaves_the_holders_files_alone() {
    let (f, a, _) = two_sessions();
    let in_progress = f.dir.path().join("snap.00000000000000B0.generating");
    std::fs::write(&in_progress, b"being written").unwrap();
    let second = SessionStore::open(config(&f.dir, &f.clock));
    assert!(matches!(second, Err(Error::InUse { .. })), "{second:?}");
    assert!(in_progress.exists());
    f.store.is_valid(&a).unwrap();
}
