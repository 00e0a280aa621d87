//! One actor, several registers: the per-actor cap and which session is
//! replaced; and MAGE's `reassign`, which moves a session to another actor.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use sessiondb::*;

fn data(name: &str, value: i64) -> Data {
    let mut d = Data::new();
    d.insert(name, &value).unwrap();
    d
}

on_every_engine! {
    fn reassign_moves_the_session_to_another_actor() {
        let f = Fixture::new();
        let from = f.store.register("guest-1", "ko", data("gold", 42)).unwrap();
        let from_key = key_of(&from);
        f.store.set_data(&from_key, "level", &3).unwrap();
        let rx = f.store.subscribe();
        f.advance(Duration::from_secs(30));

        let moved = f.store.reassign("guest-1", "user-9").unwrap();
        let to_key = key_of(&moved);
        let (actor, secret) = to_key.rsplit_once(':').unwrap();
        assert_eq!(actor, "user-9");
        assert_ne!(secret, from_key.rsplit_once(':').unwrap().1);

        // Same session: public id, language, data and creation time kept.
        assert_eq!(moved.id(), from.id());
        assert_eq!(moved.actor_id(), "user-9");
        assert_eq!(moved.language(), "ko");
        assert_eq!(moved.created_at(), from.created_at());
        assert_eq!(moved.get::<i64>("gold").unwrap(), Some(42));
        assert_eq!(moved.get::<i64>("level").unwrap(), Some(3));
        // A write: the revision moves on and the expiry is recomputed.
        assert_eq!(moved.revision(), from.revision() + 2);
        assert_eq!(moved.expires_at_ms(), T0 + 30_000 + 600_000);

        assert_eq!(
            drain(&rx),
            vec![
                unset_event(&from, UnsetReason::Reassigned),
                set_event(&moved)
            ]
        );
        // The old key stops working; the new one works, data and all.
        assert_eq!(rejected(f.store.resolve(&from_key)), Reason::NoSession);
        assert_eq!(f.store.actor_session("guest-1").unwrap(), None);
        let resolved = f.store.resolve(&to_key).unwrap();
        assert_eq!(resolved.id(), from.id());
        assert_eq!(f.store.get_data::<i64>(&to_key, "gold").unwrap(), Some(42));
        assert_eq!(
            f.store.actor_session("user-9").unwrap().unwrap().id(),
            from.id()
        );
        assert_eq!(
            f.store.actor_addresses(&["guest-1", "user-9"]).unwrap()[0].actor_id,
            "user-9"
        );
        assert_eq!(f.store.stats().unwrap().sessions, 1);
        assert!(f.store.check().unwrap().is_healthy());

        // It survives a reopen under its new actor.
        let f = f.reopen(|c| c);
        assert_eq!(f.store.get_data::<i64>(&to_key, "level").unwrap(), Some(3));
        assert_eq!(rejected(f.store.is_valid(&from_key)), Reason::NoSession);
    }

    fn a_second_register_replaces_the_first_by_default() {
        let f = Fixture::new();
        let first = f.store.register("p1", "en", data("gold", 1)).unwrap();
        let rx = f.store.subscribe();
        let second = f.store.register("p1", "fr", Data::new()).unwrap();

        assert_eq!(
            drain(&rx),
            vec![
                unset_event(&first, UnsetReason::Replaced),
                set_event(&second)
            ]
        );
        assert_eq!(
            rejected(f.store.resolve(&key_of(&first))),
            Reason::KeyMismatch
        );
        assert_eq!(
            rejected(f.store.get_data::<i64>(&key_of(&first), "gold")),
            Reason::KeyMismatch
        );
        // An old client acting on its stale key cannot touch the new session.
        assert_eq!(
            rejected(f.store.set_data(&key_of(&first), "gold", &9)),
            Reason::KeyMismatch
        );
        assert_eq!(
            rejected(f.store.logout(&key_of(&first))),
            Reason::KeyMismatch
        );
        assert_eq!(
            rejected(f.store.expire(&key_of(&first), UnsetReason::Expired)),
            Reason::KeyMismatch
        );
        assert_eq!(drain(&rx), vec![]);
        f.store.is_valid(&key_of(&second)).unwrap();
        // The new session starts fresh: the old one's data is gone with it.
        assert_eq!(f.store.data(&key_of(&second)).unwrap(), Data::new());
        assert_eq!(
            f.store.actor_session("p1").unwrap().unwrap().id(),
            second.id()
        );
        assert_eq!(f.store.stats().unwrap().sessions, 1);
        assert!(f.store.check().unwrap().is_healthy());
    }

    fn above_the_cap_only_the_oldest_is_replaced() {
        let f = Fixture::with(|c| c.max_sessions_per_actor(3));
        let mut sessions = Vec::new();
        for _ in 0..3 {
            sessions.push(f.store.register("p1", "en", Data::new()).unwrap());
            f.advance(Duration::from_secs(1));
        }
        let other = f.store.register("p2", "en", Data::new()).unwrap();
        for s in &sessions {
            f.store.is_valid(&key_of(s)).unwrap();
        }
        let rx = f.store.subscribe();

        let fourth = f.store.register("p1", "en", Data::new()).unwrap();
        assert_eq!(
            drain(&rx),
            vec![
                unset_event(&sessions[0], UnsetReason::Replaced),
                set_event(&fourth)
            ]
        );
        assert_eq!(
            rejected(f.store.is_valid(&key_of(&sessions[0]))),
            Reason::KeyMismatch
        );
        for s in sessions[1..].iter().chain([&fourth, &other]) {
            f.store.is_valid(&key_of(s)).unwrap();
        }
        assert_eq!(f.store.stats().unwrap().sessions, 4);

        // "Oldest" is by creation, not by use: using the second session does
        // not save it from being next.
        f.advance(Duration::from_secs(120));
        f.store.resolve(&key_of(&sessions[1])).unwrap();
        f.store.register("p1", "en", Data::new()).unwrap();
        assert_eq!(
            rejected(f.store.is_valid(&key_of(&sessions[1]))),
            Reason::KeyMismatch
        );
        f.store.is_valid(&key_of(&sessions[2])).unwrap();
    }

    fn expired_sessions_make_room_before_live_ones_are_replaced() {
        let f = Fixture::with(|c| c.max_sessions_per_actor(2));
        let old = f.store.register("p1", "en", Data::new()).unwrap();
        f.advance(Duration::from_secs(300));
        let live = f.store.register("p1", "en", Data::new()).unwrap();
        f.clock.set(old.expires_at_ms());
        let rx = f.store.subscribe();
        let new = f.store.register("p1", "en", Data::new()).unwrap();
        // The expired one ends as expired; the live one is kept.
        assert_eq!(
            drain(&rx),
            vec![unset_event(&old, UnsetReason::Expired), set_event(&new)]
        );
        f.store.is_valid(&key_of(&live)).unwrap();
        f.store.is_valid(&key_of(&new)).unwrap();
    }

    fn reassign_replaces_the_targets_session() {
        let f = Fixture::new();
        let from = f.store.register("a", "en", data("gold", 1)).unwrap();
        let target = f.store.register("b", "en", data("gold", 2)).unwrap();
        let rx = f.store.subscribe();

        let moved = f.store.reassign("a", "b").unwrap();
        assert_eq!(
            drain(&rx),
            vec![
                unset_event(&from, UnsetReason::Reassigned),
                unset_event(&target, UnsetReason::Replaced),
                set_event(&moved),
            ]
        );
        // `b` now holds `a`'s session; its own is gone.
        assert_eq!(
            rejected(f.store.is_valid(&key_of(&target))),
            Reason::KeyMismatch
        );
        assert_eq!(
            f.store.get_data::<i64>(&key_of(&moved), "gold").unwrap(),
            Some(1)
        );
        assert_eq!(f.store.stats().unwrap().sessions, 1);
        assert!(f.store.check().unwrap().is_healthy());
    }

    fn reassign_moves_the_newest_live_session_and_ends_the_rest() {
        let f = Fixture::with(|c| c.max_sessions_per_actor(3));
        let expired = f.store.register("a", "en", Data::new()).unwrap();
        f.advance(Duration::from_secs(300));
        let older = f.store.register("a", "en", data("n", 1)).unwrap();
        f.advance(Duration::from_secs(1));
        let newest = f.store.register("a", "en", data("n", 2)).unwrap();
        f.clock.set(expired.expires_at_ms());
        let rx = f.store.subscribe();

        let moved = f.store.reassign("a", "b").unwrap();
        assert_eq!(moved.id(), newest.id());
        assert_eq!(moved.get::<i64>("n").unwrap(), Some(2));
        assert_eq!(
            drain(&rx),
            vec![
                unset_event(&expired, UnsetReason::Expired),
                unset_event(&older, UnsetReason::Reassigned),
                unset_event(&newest, UnsetReason::Reassigned),
                set_event(&moved),
            ]
        );
        for s in [&expired, &older, &newest] {
            assert_eq!(rejected(f.store.is_valid(&key_of(s))), Reason::NoSession);
        }
        assert_eq!(f.store.stats().unwrap().sessions, 1);
    }

    fn reassign_needs_a_live_session_to_move() {
        let f = Fixture::new();
        let bystander = f.store.register("b", "en", Data::new()).unwrap();
        let rx = f.store.subscribe();
        assert_eq!(rejected(f.store.reassign("nobody", "b")), Reason::NoSession);

        // An expired session cannot be moved either.
        let a = f.store.register("a", "en", Data::new()).unwrap();
        drain(&rx);
        f.clock.set(a.expires_at_ms());
        assert_eq!(rejected(f.store.reassign("a", "c")), Reason::NoSession);
        assert_eq!(drain(&rx), vec![]);
        assert_eq!(f.store.actor_session("c").unwrap(), None);
        f.clock.set(T0);
        f.store.is_valid(&key_of(&bystander)).unwrap();
    }

    fn reassign_to_the_same_actor_is_refused() {
        let f = Fixture::new();
        let s = f.store.register("a", "en", Data::new()).unwrap();
        let rx = f.store.subscribe();
        match f.store.reassign("a", "a") {
            Err(e @ Error::ReassignToSelf { .. }) => {
                assert!(matches!(&e, Error::ReassignToSelf { actor_id } if actor_id == "a"));
                assert!(e.to_string().contains("to itself"), "{e}");
            }
            other => panic!("expected ReassignToSelf, got {other:?}"),
        }
        f.store.is_valid(&key_of(&s)).unwrap();
        assert_eq!(drain(&rx), vec![]);
    }
}
