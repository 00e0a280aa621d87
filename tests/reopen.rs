//! What survives closing, dropping and reopening a store, and what a
//! closed store answers. (Unclean shutdowns, damaged records and newer
//! formats are `recovery.rs`'s concern.)

mod common;

use std::time::Duration;

use common::*;
use sessiondb::*;

/// Sessions of several shapes, to compare before and after a reopen.
struct World {
    alice: Session,
    bob_old: Session,
    bob_new: Session,
    replaced: Session,
    replacement: Session,
}

fn populate(f: &Fixture) -> World {
    let mut data = Data::new();
    data.insert("gold", &100).unwrap();
    let alice = f.store.register("alice", "en", data).unwrap();
    f.store
        .set_data(&key_of(&alice), "inventory", &["sword"])
        .unwrap();
    let bob_old = f.store.register("bob", "fr", Data::new()).unwrap();
    f.advance(Duration::from_secs(1));
    let bob_new = f.store.register("bob", "de", Data::new()).unwrap();
    let replaced = f.store.register("carol", "en", Data::new()).unwrap();
    // Carol's later sessions push out her first (cap 2).
    f.advance(Duration::from_secs(1));
    f.store.register("carol", "en", Data::new()).unwrap();
    f.advance(Duration::from_secs(1));
    let replacement = f.store.register("carol", "en", Data::new()).unwrap();
    World {
        alice,
        bob_old,
        bob_new,
        replaced,
        replacement,
    }
}

fn assert_world(f: &Fixture, w: &World) {
    let alice = f.store.resolve(&key_of(&w.alice)).unwrap();
    assert_eq!(alice.id(), w.alice.id());
    assert_eq!(alice.language(), "en");
    assert_eq!(alice.node_id(), Some("node-1"));
    assert_eq!(alice.created_at(), w.alice.created_at());
    assert_eq!(
        f.store.get_data::<u32>(&key_of(&w.alice), "gold").unwrap(),
        Some(100)
    );
    assert_eq!(
        f.store
            .get_data::<Vec<String>>(&key_of(&w.alice), "inventory")
            .unwrap(),
        Some(vec!["sword".to_owned()])
    );
    // Both of bob's sessions, and the actor index that finds the newest.
    f.store.is_valid(&key_of(&w.bob_old)).unwrap();
    f.store.is_valid(&key_of(&w.bob_new)).unwrap();
    assert_eq!(
        f.store.actor_session("bob").unwrap().unwrap().id(),
        w.bob_new.id()
    );
    // The replaced session stays replaced, and is told apart from no session.
    assert_eq!(
        rejected(f.store.is_valid(&key_of(&w.replaced))),
        Reason::KeyMismatch
    );
    f.store.is_valid(&key_of(&w.replacement)).unwrap();
    let addresses = f
        .store
        .actor_addresses(&["alice", "bob", "nobody"])
        .unwrap();
    assert_eq!(
        addresses
            .iter()
            .map(|a| (
                a.actor_id.as_str(),
                a.session_id.as_str(),
                a.language.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![("alice", w.alice.id(), "en"), ("bob", w.bob_new.id(), "de")]
    );
    assert_eq!(f.store.stats().unwrap().sessions, 5);
    assert!(f.store.check().unwrap().is_healthy());
}

fn tune(c: Config) -> Config {
    c.max_sessions_per_actor(2).node_id("node-1")
}

#[test]
fn a_missing_directory_is_created() {
    let parent = tempfile::tempdir().unwrap();
    let path = parent.path().join("nested").join("store");
    let clock = ManualClock::new(T0);
    let store = SessionStore::open(
        Config::new(&path)
            .clock(std::sync::Arc::new(clock.clone()))
            .reaper_thread(false),
    )
    .unwrap();
    assert!(path.is_dir());
    let report = store.recovery_report();
    assert!(report.created);
    assert_eq!(report.check, None);
    assert_eq!(store.stats().unwrap().sessions, 0);
    let s = store.register("p1", "en", Data::new()).unwrap();
    store.close().unwrap();

    let store = SessionStore::open(
        Config::new(&path)
            .clock(std::sync::Arc::new(clock))
            .reaper_thread(false),
    )
    .unwrap();
    assert!(!store.recovery_report().created);
    assert!(store.recovery_report().clean_shutdown);
    store.is_valid(&key_of(&s)).unwrap();
}

#[test]
fn an_existing_empty_directory_becomes_a_store() {
    // The fixture opens a directory that exists (made by `tempdir`) and is empty.
    let f = Fixture::new();
    assert!(!f.store.recovery_report().clean_shutdown);
    assert_eq!(f.store.stats().unwrap().sessions, 0);
    assert!(f.store.check().unwrap().is_healthy());
}

#[test]
fn everything_survives_close_and_reopen() {
    let f = Fixture::with(tune);
    let w = populate(&f);
    assert_world(&f, &w);

    let f = f.reopen(tune);
    let report = f.store.recovery_report().clone();
    assert!(!report.created);
    assert!(report.clean_shutdown);
    assert_eq!(report.check, None, "a clean close skips the full check");
    assert_world(&f, &w);

    // The expiry index survived too: the reaper finds exactly what is due.
    let f = f.reopen(tune);
    f.clock.set(w.alice.expires_at_ms());
    assert_eq!(f.store.reap_expired().unwrap(), 2, "alice and bob's first");
    assert_eq!(f.store.stats().unwrap().sessions, 3);
    assert!(f.store.check().unwrap().is_healthy());
}

#[test]
fn everything_survives_dropping_the_store_without_close() {
    let f = Fixture::with(tune);
    let w = populate(&f);
    let Fixture {
        dir, clock, store, ..
    } = f;
    // Dropping the last handle closes the store, as the docs promise.
    let clone = store.clone();
    drop(store);
    // A clone keeps it open.
    clone.is_valid(&key_of(&w.alice)).unwrap();
    drop(clone);

    let store = SessionStore::open(tune(config(&dir, &clock))).unwrap();
    assert!(store.recovery_report().clean_shutdown);
    assert_eq!(store.recovery_report().check, None);
    let f = Fixture::on_sled(dir, clock, store);
    assert_world(&f, &w);
}

#[test]
fn a_closed_store_answers_closed_to_every_call() {
    let f = Fixture::new();
    let s = f.store.register("p1", "en", Data::new()).unwrap();
    let key = key_of(&s);
    let clone = f.store.clone();
    let rx = clone.subscribe();
    let Fixture {
        dir, clock, store, ..
    } = f;
    store.close().unwrap();

    fn closed<T: std::fmt::Debug>(what: &str, r: Result<T>) {
        assert!(matches!(r, Err(Error::Closed)), "{what} after close: {r:?}");
    }
    closed("register", clone.register("p2", "en", Data::new()));
    closed("resolve", clone.resolve(&key));
    closed("is_valid", clone.is_valid(&key));
    closed("restore", clone.restore(&key));
    closed("extend", clone.extend(&key));
    closed("logout", clone.logout(&key));
    closed("expire", clone.expire(&key, UnsetReason::Expired));
    closed(
        "expire_actor",
        clone.expire_actor("p1", UnsetReason::Expired),
    );
    closed("get_data", clone.get_data::<u32>(&key, "x"));
    closed("data", clone.data(&key));
    closed("set_data", clone.set_data(&key, "x", &1));
    closed("set_data_json", clone.set_data_json(&key, "x", "1"));
    closed("del_data", clone.del_data(&key, "x"));
    closed("update", clone.update(&key, |d| d.remove("x")));
    closed("actor_session", clone.actor_session("p1"));
    closed("actor_addresses", clone.actor_addresses(&["p1"]));
    closed("reassign", clone.reassign("p1", "p2"));
    closed("reap_expired", clone.reap_expired());
    closed("stats", clone.stats());
    closed("flush", clone.flush());
    closed("check", clone.check());
    closed("repair", clone.repair());
    closed("quarantined", clone.quarantined());
    // Nothing was told about the refused calls.
    assert_eq!(drain(&rx), vec![]);
    // Closing again is harmless.
    clone.clone().close().unwrap();

    // The directory is released when the last clone goes.
    match SessionStore::open(config(&dir, &clock)) {
        Err(Error::InUse { .. }) => {}
        other => panic!("expected InUse while a clone is alive, got {other:?}"),
    }
    drop(clone);
    let store = SessionStore::open(config(&dir, &clock)).unwrap();
    store.is_valid(&key).unwrap();
    assert_eq!(store.stats().unwrap().sessions, 1);
    assert!(store.check().unwrap().is_healthy());
}
