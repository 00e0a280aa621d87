//! An actor's sessions as players and operators see them: the game
//! server's metadata on each, the list of an actor's live sessions, ending
//! one by its public id or all the others of a key, and a new key for a
//! session (rotate), with the events each announces.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use sessiondb::*;

fn device(name: &str) -> Meta {
    Meta::from_pairs([("device", name), ("address", "203.0.113.7")]).unwrap()
}

/// A store whose actors may hold three sessions.
fn three_per_actor() -> Fixture {
    Fixture::with(|c| c.max_sessions_per_actor(3))
}

on_every_engine! {
    fn metadata_is_kept_with_the_session_and_shown_wherever_it_is_read() {
        let f = Fixture::new();
        let session = f
            .store
            .register_with_meta("p1", "en", Data::new(), device("phone"))
            .unwrap();
        let key = key_of(&session);
        assert_eq!(session.meta(), &device("phone"));
        assert_eq!(f.store.resolve(&key).unwrap().meta().get("device"), Some("phone"));
        assert_eq!(
            f.store.actor_session("p1").unwrap().unwrap().meta(),
            &device("phone")
        );
        // Writes to the session keep it.
        f.store.set_data(&key, "level", &2).unwrap();
        f.advance(Duration::from_secs(120));
        f.store.extend(&key).unwrap();
        let moved = f.store.reassign("p1", "p2").unwrap();
        assert_eq!(moved.meta(), &device("phone"));
        // And so does a reopen.
        let f = f.reopen(|c| c);
        assert_eq!(
            f.store.resolve(&key_of(&moved)).unwrap().meta(),
            &device("phone")
        );
        // A register without metadata has none.
        let plain = f.store.register("p3", "en", Data::new()).unwrap();
        assert!(plain.meta().is_empty());
        assert!(f.store.check().unwrap().is_healthy());
    }

    fn actor_sessions_lists_the_live_sessions_newest_first_without_keys() {
        let f = three_per_actor();
        assert_eq!(f.store.actor_sessions("p1").unwrap(), vec![]);
        let phone = f
            .store
            .register_with_meta("p1", "en", Data::new(), device("phone"))
            .unwrap();
        f.advance(Duration::from_secs(1));
        let desktop = f
            .store
            .register_with_meta("p1", "fr", Data::new(), device("desktop"))
            .unwrap();
        f.store.register("p2", "en", Data::new()).unwrap();

        let listed = f.store.actor_sessions("p1").unwrap();
        let ids: Vec<&str> = listed.iter().map(Session::id).collect();
        assert_eq!(ids, [desktop.id(), phone.id()]);
        assert!(listed.iter().all(|s| s.key().is_none()), "never a key");
        assert_eq!(listed[0].language(), "fr");
        assert_eq!(listed[0].meta().get("device"), Some("desktop"));
        assert_eq!(listed[1].created_at(), phone.created_at());
        assert_eq!(listed[1].expires_at(), phone.expires_at());

        // An expired session is not listed, reaped or not.
        f.advance(Duration::from_secs(599));
        let listed = f.store.actor_sessions("p1").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id(), desktop.id());
        assert!(matches!(
            f.store.actor_sessions(""),
            Err(Error::InvalidActorId { .. })
        ));
    }

    fn expire_session_ends_one_session_by_its_public_id() {
        let f = three_per_actor();
        let phone = f.store.register("p1", "en", Data::new()).unwrap();
        let desktop = f.store.register("p1", "en", Data::new()).unwrap();
        let rx = f.store.subscribe();

        f.store
            .expire_session("p1", phone.id(), UnsetReason::parse("stolen").unwrap())
            .unwrap();
        assert_eq!(
            drain(&rx),
            vec![unset_event(&phone, UnsetReason::parse("stolen").unwrap())]
        );
        assert_eq!(rejected(f.store.is_valid(&key_of(&phone))), Reason::KeyMismatch);
        f.store.is_valid(&key_of(&desktop)).unwrap();

        // Gone now: noSession, as for an id never issued or of another actor.
        for (actor, id) in [("p1", phone.id()), ("p1", "AAAAAAAAAAAAAAAA"), ("p2", desktop.id())] {
            assert_eq!(
                rejected(f.store.expire_session(actor, id, UnsetReason::Expired)),
                Reason::NoSession
            );
        }
        // Past its expiry, not reaped yet: expired, and it stays for the reaper.
        f.advance(Duration::from_secs(600));
        assert_eq!(
            rejected(f.store.expire_session("p1", desktop.id(), UnsetReason::Expired)),
            Reason::Expired
        );
        assert_eq!(drain(&rx), vec![]);
        assert_eq!(f.store.reap_expired().unwrap(), 1);
        assert_eq!(drain(&rx), vec![unset_event(&desktop, UnsetReason::Expired)]);

        // Bad input is refused before anything is read.
        assert!(matches!(
            f.store.expire_session("p1", "not an id!", UnsetReason::Expired),
            Err(Error::InvalidSessionId { .. })
        ));
        assert!(matches!(
            f.store.expire_session("p1", &"A".repeat(65), UnsetReason::Expired),
            Err(Error::InvalidSessionId { .. })
        ));
        assert!(matches!(
            f.store.expire_session("", "AAAAAAAAAAAAAAAA", UnsetReason::Expired),
            Err(Error::InvalidActorId { .. })
        ));
        assert!(matches!(
            f.store.expire_session(
                "p1",
                "AAAAAAAAAAAAAAAA",
                UnsetReason::Other("has space".into())
            ),
            Err(Error::InvalidReason { .. })
        ));
        assert!(f.store.check().unwrap().is_healthy());
    }

    fn expire_others_ends_every_other_session_of_the_actor() {
        let f = three_per_actor();
        let old = f.store.register("p1", "en", Data::new()).unwrap();
        f.advance(Duration::from_secs(300));
        let phone = f.store.register("p1", "en", Data::new()).unwrap();
        let mine = f.store.register("p1", "en", Data::new()).unwrap();
        let other_actor = f.store.register("p2", "en", Data::new()).unwrap();
        let rx = f.store.subscribe();
        // The oldest has expired by now: it ends as `expired`, uncounted.
        f.advance(Duration::from_secs(300));

        let ended = f.store.expire_others(&key_of(&mine), UnsetReason::LoggedOut).unwrap();
        assert_eq!(ended, 1);
        assert_eq!(
            drain(&rx),
            vec![
                unset_event(&old, UnsetReason::Expired),
                unset_event(&phone, UnsetReason::LoggedOut),
            ]
        );
        let listed = f.store.actor_sessions("p1").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id(), mine.id());
        // The key's own session goes on, untouched; other actors too.
        let still = f.store.resolve(&key_of(&mine)).unwrap();
        assert_eq!(still.revision(), mine.revision() + 1, "only the resolve wrote");
        f.store.is_valid(&key_of(&other_actor)).unwrap();
        // Nothing left to end.
        assert_eq!(f.store.expire_others(&key_of(&mine), UnsetReason::LoggedOut).unwrap(), 0);
        // A key that is not valid ends nothing.
        assert_eq!(
            rejected(f.store.expire_others(&key_of(&phone), UnsetReason::LoggedOut)),
            Reason::KeyMismatch
        );
        assert_eq!(
            rejected(f.store.expire_others("p1", UnsetReason::LoggedOut)),
            Reason::InvalidSessionKey
        );
        assert!(matches!(
            f.store.expire_others(&key_of(&mine), UnsetReason::Other("".into())),
            Err(Error::InvalidReason { .. })
        ));
        assert_eq!(drain(&rx), vec![]);
        assert!(f.store.check().unwrap().is_healthy());
    }

    fn rotate_gives_the_session_a_new_key_and_the_old_one_stops_at_once() {
        let f = Fixture::with(|c| c.max_lifetime(Duration::from_secs(3600)));
        let mut data = Data::new();
        data.insert("gold", &7).unwrap();
        let old = f
            .store
            .register_with_meta("p1", "de", data, device("phone"))
            .unwrap();
        let old_key = key_of(&old);
        f.advance(Duration::from_secs(120));
        let rx = f.store.subscribe();

        let new = f.store.rotate(&old_key).unwrap();
        let new_key = key_of(&new);
        let (actor, secret) = new_key.rsplit_once(':').unwrap();
        assert_eq!(actor, "p1");
        assert_ne!(secret, old_key.rsplit_once(':').unwrap().1);
        assert_eq!(secret.len(), 32);

        // The same session: id, data, metadata, language, creation, expiry
        // and lifetime cap kept; a write, so the revision moves on.
        assert_eq!(new.id(), old.id());
        assert_eq!(new.get::<u32>("gold").unwrap(), Some(7));
        assert_eq!(new.meta(), &device("phone"));
        assert_eq!(new.language(), "de");
        assert_eq!(new.created_at(), old.created_at());
        assert_eq!(new.expires_at(), old.expires_at());
        assert_eq!(new.deadline(), old.deadline());
        assert_eq!(new.revision(), old.revision() + 1);

        // Announced: the old key is dead (`rotated`), the session goes on.
        assert_eq!(
            drain(&rx),
            vec![unset_event(&old, UnsetReason::Rotated), set_event(&new)]
        );
        // The old key stops at once; the new one works, data and all.
        assert_eq!(rejected(f.store.resolve(&old_key)), Reason::KeyMismatch);
        assert_eq!(rejected(f.store.rotate(&old_key)), Reason::KeyMismatch);
        assert_eq!(f.store.get_data::<u32>(&new_key, "gold").unwrap(), Some(7));
        assert_eq!(f.store.stats().unwrap().sessions, 1);
        let listed = f.store.actor_sessions("p1").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id(), old.id());
        assert!(f.store.check().unwrap().is_healthy());

        // The lifetime cap still counts from creation: sliding stops there.
        let mut last = new.clone();
        for _ in 0..8 {
            f.advance(Duration::from_secs(400));
            last = f.store.extend(&new_key).unwrap();
        }
        assert_eq!(last.expires_at(), old.deadline().unwrap());

        // It survives a reopen, under the new key only.
        let f = f.reopen(|c| c.max_lifetime(Duration::from_secs(3600)));
        f.store.is_valid(&new_key).unwrap();
        assert_eq!(rejected(f.store.is_valid(&old_key)), Reason::KeyMismatch);
    }

    fn rotate_refuses_keys_that_are_not_valid_and_writes_nothing() {
        let f = Fixture::new();
        let session = f.store.register("p1", "en", Data::new()).unwrap();
        let rx = f.store.subscribe();
        assert_eq!(rejected(f.store.rotate("no-colon")), Reason::InvalidSessionKey);
        assert_eq!(
            rejected(f.store.rotate("p2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
            Reason::NoSession
        );
        f.advance(Duration::from_secs(600));
        assert_eq!(rejected(f.store.rotate(&key_of(&session))), Reason::Expired);
        assert_eq!(drain(&rx), vec![]);
        assert_eq!(f.store.reap_expired().unwrap(), 1);
    }

    fn a_rotated_session_is_reaped_once_at_its_expiry() {
        let f = Fixture::new();
        let old = f.store.register("p1", "en", Data::new()).unwrap();
        let new = f.store.rotate(&key_of(&old)).unwrap();
        let rx = f.store.subscribe();
        f.advance(Duration::from_secs(599));
        assert_eq!(f.store.reap_expired().unwrap(), 0);
        f.advance(Duration::from_secs(1));
        assert_eq!(f.store.reap_expired().unwrap(), 1);
        assert_eq!(drain(&rx), vec![unset_event(&new, UnsetReason::Expired)]);
        assert_eq!(f.store.stats().unwrap().sessions, 0);
        assert!(f.store.check().unwrap().is_healthy());
    }
}
