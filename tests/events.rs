//! `session.set` / `session.unset` events: which changes produce them, in
//! what order and with what content; that they follow the committed change;
//! fan-out to several subscribers; and the slow-subscriber policy.

#[macro_use]
mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use sessiondb::*;

const WAIT: Duration = Duration::from_secs(10);

on_every_engine! {
    fn every_change_a_client_must_hear_about_in_order() {
        let f = Fixture::new();
        let rx = f.store.subscribe();

        let a = f.store.register("a", "en", Data::new()).unwrap();
        let b = f.store.register("b", "pt-BR", Data::new()).unwrap();
        f.advance(Duration::from_secs(120));
        let a_restored = f.store.restore(&key_of(&a)).unwrap();
        f.store.logout(&key_of(&a)).unwrap();
        let banned = UnsetReason::parse("banned").unwrap();
        f.store.expire(&key_of(&b), banned.clone()).unwrap();
        let c1 = f.store.register("c", "en", Data::new()).unwrap();
        let c2 = f.store.register("c", "en", Data::new()).unwrap();
        let d = f.store.reassign("c", "d").unwrap();
        let e = f.store.register("e", "en", Data::new()).unwrap();
        f.clock.set(e.expires_at_ms());
        assert_eq!(f.store.reap_expired().unwrap(), 2);

        let got = drain(&rx);
        let want = vec![
            set_event(&a),
            set_event(&b),
            set_event(&a_restored),
            unset_event(&a, UnsetReason::LoggedOut),
            unset_event(&b, banned),
            set_event(&c1),
            unset_event(&c1, UnsetReason::Replaced),
            set_event(&c2),
            unset_event(&c2, UnsetReason::Reassigned),
            set_event(&d),
            set_event(&e),
        ];
        // The last two expire together; the reaper's order among them is free.
        let reaped = [
            unset_event(&d, UnsetReason::Expired),
            unset_event(&e, UnsetReason::Expired),
        ];
        assert_eq!(got.len(), want.len() + 2, "{got:#?}");
        assert_eq!(got[..want.len()], want[..]);
        assert!(got[want.len()..].iter().all(|ev| reaped.contains(ev)));
        assert_ne!(got[want.len()], got[want.len() + 1]);

        // The event's content is the session's.
        match &got[1] {
            Event::Set {
                id,
                actor_id,
                language,
                expires_at,
            } => {
                assert_eq!(id, b.id());
                assert_eq!(actor_id, "b");
                assert_eq!(language, "pt-BR");
                assert_eq!(*expires_at, T0 + 600_000);
            }
            other => panic!("{other:?}"),
        }
        // A restore reports the slid expiry.
        assert_eq!(a_restored.expires_at_ms(), T0 + 120_000 + 600_000);
        assert_eq!(got[0].name(), "session.set");
        assert_eq!(got[3].name(), "session.unset");
    }

    fn reads_writes_and_failures_that_change_nothing_tell_nothing() {
        let f = Fixture::new();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);
        let rx = f.store.subscribe();

        f.store.is_valid(&key).unwrap();
        f.advance(Duration::from_secs(120));
        f.store.resolve(&key).unwrap();
        f.store.extend(&key).unwrap();
        f.store.set_data(&key, "x", &1).unwrap();
        f.store.set_data_json(&key, "y", "[1]").unwrap();
        f.store.del_data(&key, "x").unwrap();
        f.store
            .update(&key, |d| d.insert("z", &2).map(drop))
            .unwrap()
            .unwrap();
        f.store.data(&key).unwrap();
        f.store.actor_session("p1").unwrap();
        f.store.actor_addresses(&["p1"]).unwrap();
        f.store.reap_expired().unwrap();
        assert!(f.store.logout("p1:wrongwrongwrongwrongwrongwrong").is_err());
        assert!(f.store.reassign("nobody", "p2").is_err());
        assert!(f.store.register("", "en", Data::new()).is_err());
        assert_eq!(
            f.store
                .expire_actor("nobody", UnsetReason::Expired)
                .unwrap(),
            0
        );
        assert_eq!(drain(&rx), vec![]);
    }

    fn an_event_arrives_only_after_its_change_is_visible() {
        let f = Fixture::new();
        let rx = f.store.subscribe();
        let (ack_tx, ack_rx) = mpsc::channel::<()>();
        let reader = f.store.clone();
        // The subscriber reads the store the moment each event arrives, while
        // the writer waits for it: nothing else changes the store meanwhile.
        let checker = std::thread::spawn(move || {
            let mut seen = 0;
            while seen < 40 {
                let event = rx.recv_timeout(WAIT).expect("an event");
                match &event {
                    Event::Set {
                        id,
                        actor_id,
                        expires_at,
                        ..
                    } => {
                        let s = reader
                            .actor_session(actor_id)
                            .unwrap()
                            .unwrap_or_else(|| panic!("{event:?} told before it was visible"));
                        assert_eq!(s.id(), id);
                        assert_eq!(s.expires_at_ms(), *expires_at);
                    }
                    Event::Unset { id, actor_id, .. } => {
                        let s = reader.actor_session(actor_id).unwrap();
                        assert!(
                            s.is_none_or(|s| s.id() != id),
                            "{event:?} told before it was visible"
                        );
                    }
                    Event::Lagged { .. } => panic!("{event:?}"),
                    _ => {}
                }
                seen += 1;
                ack_tx.send(()).unwrap();
            }
        });

        for i in 0..10 {
            let actor = format!("p{i}");
            let s = f.store.register(&actor, "en", Data::new()).unwrap();
            ack_rx.recv_timeout(WAIT).unwrap();
            // A replace: Unset of the old session, Set of the new one.
            let s2 = f.store.register(&actor, "en", Data::new()).unwrap();
            ack_rx.recv_timeout(WAIT).unwrap();
            ack_rx.recv_timeout(WAIT).unwrap();
            assert_ne!(s.id(), s2.id());
            f.store.logout(&key_of(&s2)).unwrap();
            ack_rx.recv_timeout(WAIT).unwrap();
        }
        checker.join().unwrap();
    }

    fn every_subscriber_gets_every_event() {
        let f = Fixture::new();
        let subscribers: Vec<_> = (0..3).map(|_| f.store.subscribe()).collect();
        assert_eq!(f.store.stats().unwrap().subscribers, 3);
        let a = f.store.register("a", "en", Data::new()).unwrap();
        let b = f.store.register("b", "en", Data::new()).unwrap();
        f.store.logout(&key_of(&a)).unwrap();
        let want = vec![
            set_event(&a),
            set_event(&b),
            unset_event(&a, UnsetReason::LoggedOut),
        ];
        for rx in &subscribers {
            assert_eq!(drain(rx), want);
        }
        // A late subscriber hears only what comes after it subscribed.
        let late = f.store.subscribe();
        f.store.logout(&key_of(&b)).unwrap();
        assert_eq!(drain(&late), vec![unset_event(&b, UnsetReason::LoggedOut)]);
        for rx in &subscribers {
            assert_eq!(drain(rx), vec![unset_event(&b, UnsetReason::LoggedOut)]);
        }
    }

    fn a_slow_subscriber_never_stalls_the_store_and_is_told_what_it_missed() {
        let f = Fixture::with(|c| c.event_capacity(2));
        let slow = f.store.subscribe();
        let fast = f.store.subscribe();

        // Ten events while `slow` reads nothing. Run them on another thread so
        // that a store blocked on the subscriber fails the test instead of
        // hanging it.
        let store = f.store.clone();
        let (done_tx, done_rx) = mpsc::channel();
        let (fast_tx, fast_rx) = mpsc::channel();
        let writer = std::thread::spawn(move || {
            let mut sessions = Vec::new();
            for i in 0..10 {
                sessions.push(store.register(&format!("p{i}"), "en", Data::new()).unwrap());
                // `fast` keeps up; `slow` does not.
                fast_tx
                    .send(fast.recv_timeout(WAIT).expect("fast subscriber event"))
                    .unwrap();
            }
            done_tx.send(sessions).unwrap();
            fast
        });
        let sessions = done_rx
            .recv_timeout(WAIT)
            .expect("the store blocked on a full subscriber");
        let fast = writer.join().unwrap();
        let fast_got: Vec<Event> = fast_rx.try_iter().collect();
        assert_eq!(fast_got, sessions.iter().map(set_event).collect::<Vec<_>>());

        let stats = f.store.stats().unwrap();
        assert_eq!(stats.events_missed, 8);
        assert_eq!(stats.subscribers, 2);

        // The channel kept the first two events; the rest were counted, not queued.
        assert_eq!(
            drain(&slow),
            vec![set_event(&sessions[0]), set_event(&sessions[1])]
        );
        // The next event is preceded by how many were missed.
        let next = f.store.register("p10", "en", Data::new()).unwrap();
        assert_eq!(
            drain(&slow),
            vec![Event::Lagged { missed: 8 }, set_event(&next)]
        );
        assert_eq!(drain(&fast), vec![set_event(&next)]);
        assert_eq!(Event::Lagged { missed: 8 }.name(), "session.lagged");
        // Caught up: nothing more is missed.
        f.store.logout(&key_of(&next)).unwrap();
        assert_eq!(
            drain(&slow),
            vec![unset_event(&next, UnsetReason::LoggedOut)]
        );
        assert_eq!(f.store.stats().unwrap().events_missed, 8);
    }

    fn a_dropped_receiver_is_removed() {
        let f = Fixture::with(|c| c.event_capacity(1));
        let kept = f.store.subscribe();
        let dropped = f.store.subscribe();
        assert_eq!(f.store.stats().unwrap().subscribers, 2);
        drop(dropped);
        let a = f.store.register("a", "en", Data::new()).unwrap();
        assert_eq!(f.store.stats().unwrap().subscribers, 1);
        assert_eq!(drain(&kept), vec![set_event(&a)]);
        // The dropped receiver counts no misses, however many events follow.
        for i in 0..5 {
            f.store
                .register(&format!("p{i}"), "en", Data::new())
                .unwrap();
            drain(&kept);
        }
        assert_eq!(f.store.stats().unwrap().events_missed, 0);
        drop(kept);
        f.store.register("b", "en", Data::new()).unwrap();
        assert_eq!(f.store.stats().unwrap().subscribers, 0);
    }
}
