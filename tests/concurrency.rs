//! Many threads on one store: read-modify-write without lost updates,
//! concurrent registers, and, in immediate durability, callers that share
//! fsyncs.

#[macro_use]
mod common;

use std::sync::Barrier;

use common::*;
use sessiondb::*;

const THREADS: usize = 8;

on_every_engine! {
    fn concurrent_updates_of_one_session_lose_nothing() {
        const UPDATES: u64 = 200;
        let f = Fixture::new();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);
        let start = Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (store, key, start) = (f.store.clone(), key.clone(), &start);
                scope.spawn(move || {
                    start.wait();
                    for _ in 0..UPDATES {
                        store
                            .update(&key, |d| {
                                let n: u64 = d.get("counter").unwrap().unwrap_or(0);
                                d.insert("counter", &(n + 1)).map(drop)
                            })
                            .unwrap()
                            .unwrap();
                        // Interleave plain writes to other names: they too bump
                        // the revision, and must neither be lost nor lose updates.
                        store.set_data(&key, &format!("t{t}"), &t).unwrap();
                    }
                });
            }
        });
        let total = THREADS as u64 * UPDATES;
        assert_eq!(
            f.store.get_data::<u64>(&key, "counter").unwrap(),
            Some(total)
        );
        for t in 0..THREADS {
            assert_eq!(
                f.store.get_data::<usize>(&key, &format!("t{t}")).unwrap(),
                Some(t)
            );
        }
        // Every update and every set_data was one write.
        assert_eq!(f.store.resolve(&key).unwrap().revision(), 1 + 2 * total);
    }

    fn concurrent_registers_all_succeed() {
        const PER_THREAD: usize = 500;
        // Room for every event, so that the subscriber can check them all.
        let f = Fixture::with(|c| c.event_capacity(THREADS * PER_THREAD));
        let rx = f.store.subscribe();
        let before = f.store.stats().unwrap();
        let start = Barrier::new(THREADS);
        let sessions: Vec<Vec<Session>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (store, start) = (f.store.clone(), &start);
                    scope.spawn(move || {
                        start.wait();
                        (0..PER_THREAD)
                            .map(|i| {
                                store
                                    .register(&format!("t{t}-p{i}"), "en", Data::new())
                                    .unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });

        let total = THREADS * PER_THREAD;
        let sessions: Vec<Session> = sessions.into_iter().flatten().collect();
        assert_eq!(sessions.len(), total);
        for s in sessions.iter().step_by(37) {
            f.store.is_valid(&key_of(s)).unwrap();
        }
        let mut ids: Vec<&str> = sessions.iter().map(Session::id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), total, "public ids are unique");

        let stats = f.store.stats().unwrap();
        assert_eq!(stats.sessions, total as u64);
        assert_eq!(stats.committed_ops - before.committed_ops, total as u64);
        assert_eq!(stats.commits - before.commits, total as u64);
        // Every register was told, once.
        let events = drain(&rx);
        assert_eq!(events.len(), total);
        assert!(f.store.check().unwrap().is_healthy());
    }

    fn concurrent_registers_of_one_actor_leave_exactly_one_session() {
        const PER_THREAD: usize = 50;
        let total = THREADS * PER_THREAD;
        let f = Fixture::with(|c| c.event_capacity(2 * total));
        let rx = f.store.subscribe();
        let start = Barrier::new(THREADS);
        let sessions: Vec<Session> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (store, start) = (f.store.clone(), &start);
                    scope.spawn(move || {
                        start.wait();
                        (0..PER_THREAD)
                            .map(|_| store.register("p1", "en", Data::new()).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });

        // Registers of one actor in one batch still replace each other: the
        // cap of 1 holds, and every key but the survivor's is a mismatch.
        let survivor = f.store.actor_session("p1").unwrap().unwrap();
        let mut valid = 0;
        for s in &sessions {
            match f.store.is_valid(&key_of(s)) {
                Ok(()) => {
                    assert_eq!(s.id(), survivor.id());
                    valid += 1;
                }
                Err(e) => assert_eq!(e.reason(), Some(Reason::KeyMismatch)),
            }
        }
        assert_eq!(valid, 1);
        assert_eq!(f.store.stats().unwrap().sessions, 1);

        // Every session was set once and, but the survivor, replaced once.
        let events = drain(&rx);
        let (sets, replaced) = common::sets_and_replaced(&events);
        assert_eq!(
            (sets, replaced, events.len()),
            (total, total - 1, 2 * total - 1)
        );
        assert!(f.store.check().unwrap().is_healthy());
    }

    fn writes_racing_a_logout_never_bring_the_session_back() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let f = Fixture::with(|c| c.event_capacity(64));
        let rx = f.store.subscribe();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);
        let written = AtomicU64::new(0);
        // Set before the logout is asked for, and after it returned.
        let (logging_out, logged_out) = (AtomicBool::new(false), AtomicBool::new(false));
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (store, key, written) = (f.store.clone(), key.clone(), &written);
                let (logging_out, logged_out) = (&logging_out, &logged_out);
                scope.spawn(move || {
                    for i in 0u64.. {
                        let after_logout = logged_out.load(Ordering::Acquire);
                        // Data edits and uses, both rewrites of the record alone.
                        let done = if i % 2 == 0 {
                            store.set_data(&key, &format!("t{t}"), &i)
                        } else {
                            store.extend(&key).map(drop)
                        };
                        match done {
                            Ok(()) => {
                                assert!(!after_logout, "a write after the logout succeeded");
                                written.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                assert_eq!(e.reason(), Some(Reason::NoSession), "{e}");
                                assert!(logging_out.load(Ordering::Acquire));
                                return;
                            }
                        }
                    }
                });
            }
            while written.load(Ordering::Relaxed) < 100 * THREADS as u64 {
                std::thread::yield_now();
            }
            logging_out.store(true, Ordering::Release);
            f.store.logout(&key).unwrap();
            logged_out.store(true, Ordering::Release);
        });
        assert_eq!(rejected(f.store.resolve(&key)), Reason::NoSession);
        assert_eq!(f.store.actor_session("p1").unwrap(), None);
        assert_eq!(f.store.stats().unwrap().sessions, 0);
        assert!(f.store.check().unwrap().is_healthy());
        // Told once of the register and once of the logout, in that order.
        let events = drain(&rx);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[1], unset_event(&s, UnsetReason::LoggedOut));
    }
}

/// Immediate durability: a call returns once its write is on disk, and
/// callers whose writes are done share one flush + fsync (sled's write
/// group), so eight threads need fewer fsyncs than writes. Every register
/// is told once, in each actor's order.
#[test]
fn concurrent_durable_writes_share_fsyncs() {
    const PER_THREAD: usize = 100;
    let total = THREADS * PER_THREAD;
    let f = Fixture::with(|c| {
        c.durability(Durability::Immediate)
            .event_capacity(4 * total)
    });
    let rx = f.store.subscribe();
    let before = f.store.stats().unwrap();
    let start = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (store, start) = (f.store.clone(), &start);
            scope.spawn(move || {
                start.wait();
                for i in 0..PER_THREAD {
                    let s = store.register(&format!("t{t}"), "en", Data::new()).unwrap();
                    if i % 2 == 1 {
                        store.logout(&key_of(&s)).unwrap();
                    }
                }
            });
        }
    });
    let stats = f.store.stats().unwrap();
    let writes = stats.committed_ops - before.committed_ops;
    let syncs = stats.syncs - before.syncs;
    assert_eq!(writes, (total + total / 2) as u64);
    assert!(
        syncs > 0 && syncs < writes,
        "{syncs} fsyncs for {writes} writes"
    );
    // Per actor: set, then (every other time) unset of that same session, and
    // a register replacing a live session first ends it.
    let events = drain(&rx);
    for t in 0..THREADS {
        let actor = format!("t{t}");
        let mine: Vec<&Event> = events
            .iter()
            .filter(|e| match e {
                Event::Set { actor_id, .. } | Event::Unset { actor_id, .. } => *actor_id == actor,
                _ => false,
            })
            .collect();
        let sets = mine
            .iter()
            .filter(|e| matches!(e, Event::Set { .. }))
            .count();
        assert_eq!(sets, PER_THREAD);
        let mut live: Option<&str> = None;
        for e in mine {
            match e {
                Event::Set { id, .. } => {
                    assert_eq!(live, None, "{actor}: a set before the last session ended");
                    live = Some(id);
                }
                Event::Unset { id, .. } => {
                    assert_eq!(live, Some(id.as_str()), "{actor}: an unset out of order");
                    live = None;
                }
                _ => {}
            }
        }
    }
    assert!(f.store.check().unwrap().is_healthy());
}
