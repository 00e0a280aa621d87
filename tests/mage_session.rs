//! The behaviours of MAGE's session module (`/work/shared/seeds`), as a
//! game server written against MAGE relies on them: register, the full key,
//! resolve, isValid, restore, logout, expire, extend, session data, the
//! actor look-ups, and every rejection reason with its MAGE string.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use sessiondb::*;

const TTL_MS: u64 = 600_000;

on_every_engine! {
    fn reason_bad_version_outside_major_minor() {
        let f = Fixture::with(|c| c.app_version("1.2.0"));
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        assert_eq!(s.version(), Some("1.2.0"));
        let key = key_of(&s);
        f.store.set_data(&key, "gold", &5).unwrap();

        // A patch release keeps sessions valid.
        let mut f = f.reopen(|c| c.app_version("1.2.9"));
        f.store.is_valid(&key).unwrap();
        assert_eq!(f.store.resolve(&key).unwrap().version(), Some("1.2.0"));

        // Another minor or major version rejects them, by every key-taking call.
        for version in ["1.3.0", "1.1.0", "2.2.0"] {
            f = f.reopen(|c| c.app_version(version));
            assert_eq!(rejected(f.store.is_valid(&key)), Reason::BadVersion);
            assert_eq!(rejected(f.store.resolve(&key)), Reason::BadVersion);
            assert_eq!(rejected(f.store.restore(&key)), Reason::BadVersion);
            assert_eq!(
                rejected(f.store.get_data::<u32>(&key, "gold")),
                Reason::BadVersion
            );
            assert_eq!(
                rejected(f.store.set_data(&key, "gold", &6)),
                Reason::BadVersion
            );
            // New sessions record the running version.
            let fresh = f.store.register("p9", "en", Data::new()).unwrap();
            assert_eq!(fresh.version(), Some(version));
            f.store.logout(&key_of(&fresh)).unwrap();
        }

        // Rejected is not deleted: back on 1.2.x the session and data are there.
        let f = f.reopen(|c| c.app_version("1.2.3"));
        assert_eq!(f.store.get_data::<u32>(&key, "gold").unwrap(), Some(5));
        // Without a configured version there is no check.
        let f = f.reopen(|c| c);
        f.store.is_valid(&key).unwrap();
    }

    fn register_creates_a_session_with_the_callers_language() {
        let f = Fixture::new();
        let rx = f.store.subscribe();
        // MAGE's default language is the caller's to pass; sessiondb names it.
        assert_eq!(DEFAULT_LANGUAGE, "en");
        let en = f
            .store
            .register("p-en", DEFAULT_LANGUAGE, Data::new())
            .unwrap();
        let ja = f.store.register("p-ja", "ja", Data::new()).unwrap();

        assert_eq!(en.language(), "en");
        assert_eq!(ja.language(), "ja");
        assert_eq!(en.actor_id(), "p-en");
        assert_eq!(en.revision(), 1);
        assert_eq!(en.created_at().timestamp_millis(), T0 as i64);
        assert_eq!(en.expires_at_ms(), T0 + TTL_MS);
        assert_eq!(en.expires_at().timestamp_millis(), (T0 + TTL_MS) as i64);
        assert_eq!(en.deadline(), None);
        assert_eq!(en.version(), None);
        assert_eq!(en.node_id(), None);
        assert!(en.data().is_empty());

        // The key is `actorId:secret`; the secret is 32 URL-safe characters by
        // default and is not the public id.
        let key = key_of(&en);
        let secret = key.strip_prefix("p-en:").unwrap();
        assert_eq!(secret.len(), 32);
        assert!(secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(!en.id().is_empty());
        assert!(!key.contains(en.id()));
        assert_ne!(en.id(), ja.id());
        assert_ne!(key_of(&en), key_of(&ja));

        // The language is what later reads report too.
        assert_eq!(f.store.resolve(&key_of(&ja)).unwrap().language(), "ja");
        assert_eq!(
            f.store.actor_session("p-en").unwrap().unwrap().language(),
            "en"
        );
        // `session.set` is told for each register.
        assert_eq!(drain(&rx), vec![set_event(&en), set_event(&ja)]);
    }

    fn register_stores_the_initial_data() {
        let f = Fixture::new();
        let mut data = Data::new();
        data.insert("level", &7).unwrap();
        data.insert("name", "Alice").unwrap();
        let s = f.store.register("p1", "en", data.clone()).unwrap();
        assert_eq!(s.data(), &data);
        let key = key_of(&s);
        assert_eq!(f.store.data(&key).unwrap(), data);
        assert_eq!(f.store.get_data::<u32>(&key, "level").unwrap(), Some(7));
        assert_eq!(
            f.store.get_data::<String>(&key, "name").unwrap().as_deref(),
            Some("Alice")
        );
    }

    fn the_full_key_splits_at_the_last_colon() {
        let f = Fixture::new();
        let s = f
            .store
            .register("guild:7:alice", "en", Data::new())
            .unwrap();
        let key = key_of(&s);
        let secret = key.rsplit_once(':').unwrap().1;
        assert_eq!(key, format!("guild:7:alice:{secret}"));

        let resolved = f.store.resolve(&key).unwrap();
        assert_eq!(resolved.actor_id(), "guild:7:alice");
        assert_eq!(resolved.id(), s.id());
        f.store.is_valid(&key).unwrap();
        f.store.set_data(&key, "x", &1).unwrap();
        assert_eq!(f.store.get_data::<i32>(&key, "x").unwrap(), Some(1));

        // The same secret under another actor id names nobody's session.
        for other in ["guild:7", "guild:7:bob", "alice"] {
            assert_eq!(
                rejected(f.store.resolve(&format!("{other}:{secret}"))),
                Reason::NoSession,
                "{other}"
            );
        }
        f.store.logout(&key).unwrap();
        assert_eq!(f.store.actor_session("guild:7:alice").unwrap(), None);
    }

    fn resolve_returns_the_session_of_a_key() {
        let f = Fixture::new();
        let mut data = Data::new();
        data.insert("coins", &10).unwrap();
        let s = f.store.register("p1", "fr", data).unwrap();
        let key = key_of(&s);
        let r = f.store.resolve(&key).unwrap();
        assert_eq!(r.key(), Some(key.as_str()));
        assert_eq!(r.id(), s.id());
        assert_eq!(r.actor_id(), "p1");
        assert_eq!(r.language(), "fr");
        assert_eq!(r.get::<u32>("coins").unwrap(), Some(10));
        assert_eq!(r.created_at(), s.created_at());
    }

    fn is_valid_checks_without_moving_the_expiry() {
        let f = Fixture::new();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);
        f.advance(Duration::from_secs(300));
        f.store.is_valid(&key).unwrap();
        let stored = f.store.actor_session("p1").unwrap().unwrap();
        assert_eq!(stored.expires_at_ms(), T0 + TTL_MS);
        assert_eq!(stored.revision(), 1);
        // A key is valid up to its expiry, not at it.
        f.advance(Duration::from_millis(TTL_MS - 300_000 - 1));
        f.store.is_valid(&key).unwrap();
        f.advance(Duration::from_millis(1));
        assert_eq!(rejected(f.store.is_valid(&key)), Reason::Expired);
    }

    fn restore_resolves_and_tells_session_set_again() {
        let f = Fixture::new();
        let s = f.store.register("p1", "de", Data::new()).unwrap();
        let key = key_of(&s);
        let rx = f.store.subscribe();

        f.advance(Duration::from_secs(120));
        let restored = f.store.restore(&key).unwrap();
        assert_eq!(restored.key(), Some(key.as_str()));
        assert_eq!(restored.id(), s.id());
        assert_eq!(restored.language(), "de");
        // Restoring is a use: the expiry slides as with resolve.
        assert_eq!(restored.expires_at_ms(), T0 + 120_000 + TTL_MS);
        assert_eq!(drain(&rx), vec![set_event(&restored)]);

        // Restoring within the touch interval does not write, but still tells
        // the client its session.
        let again = f.store.restore(&key).unwrap();
        assert_eq!(again.revision(), restored.revision());
        assert_eq!(drain(&rx), vec![set_event(&again)]);

        // An invalid key is not restored and nothing is told.
        f.store.logout(&key).unwrap();
        drain(&rx);
        assert_eq!(rejected(f.store.restore(&key)), Reason::NoSession);
        assert_eq!(drain(&rx), vec![]);
    }

    fn logout_ends_the_session_with_logged_out() {
        let f = Fixture::new();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);
        let rx = f.store.subscribe();
        f.store.logout(&key).unwrap();
        assert_eq!(drain(&rx), vec![unset_event(&s, UnsetReason::LoggedOut)]);
        assert_eq!(rejected(f.store.is_valid(&key)), Reason::NoSession);
        assert_eq!(rejected(f.store.resolve(&key)), Reason::NoSession);
        assert_eq!(f.store.actor_session("p1").unwrap(), None);
        assert_eq!(f.store.stats().unwrap().sessions, 0);
        // A second logout with the same key is rejected, not repeated.
        assert_eq!(rejected(f.store.logout(&key)), Reason::NoSession);
        assert_eq!(drain(&rx), vec![]);
    }

    fn expire_tells_the_given_reason() {
        let f = Fixture::new();
        let a = f.store.register("a", "en", Data::new()).unwrap();
        let b = f.store.register("b", "en", Data::new()).unwrap();
        let rx = f.store.subscribe();

        let banned = UnsetReason::parse("banned").unwrap();
        assert_eq!(banned, UnsetReason::Other("banned".into()));
        f.store.expire(&key_of(&a), banned.clone()).unwrap();
        // MAGE's default reason is `expired`.
        f.store.expire(&key_of(&b), UnsetReason::Expired).unwrap();
        assert_eq!(
            drain(&rx),
            vec![
                unset_event(&a, banned),
                unset_event(&b, UnsetReason::Expired)
            ]
        );
        assert_eq!(rejected(f.store.is_valid(&key_of(&a))), Reason::NoSession);
        assert_eq!(rejected(f.store.is_valid(&key_of(&b))), Reason::NoSession);
    }

    fn expire_actor_ends_every_session_of_the_actor() {
        let f = Fixture::with(|c| c.max_sessions_per_actor(3));
        let s1 = f.store.register("p1", "en", Data::new()).unwrap();
        f.advance(Duration::from_secs(1));
        let s2 = f.store.register("p1", "en", Data::new()).unwrap();
        let other = f.store.register("p2", "en", Data::new()).unwrap();
        let rx = f.store.subscribe();
        let kicked = UnsetReason::parse("kicked").unwrap();
        assert_eq!(f.store.expire_actor("p1", kicked.clone()).unwrap(), 2);
        assert_eq!(
            drain(&rx),
            vec![unset_event(&s1, kicked.clone()), unset_event(&s2, kicked)]
        );
        assert_eq!(rejected(f.store.is_valid(&key_of(&s1))), Reason::NoSession);
        assert_eq!(rejected(f.store.is_valid(&key_of(&s2))), Reason::NoSession);
        f.store.is_valid(&key_of(&other)).unwrap();
        // An actor without sessions: nothing ends.
        assert_eq!(f.store.expire_actor("p1", UnsetReason::Expired).unwrap(), 0);
    }

    fn extend_rewrites_the_expiry_from_now() {
        let f = Fixture::new();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);
        // Far below the touch interval (default ttl / 10 = 60 s): resolve would
        // not write, extend does.
        f.advance(Duration::from_secs(5));
        let resolved = f.store.resolve(&key).unwrap();
        assert_eq!(resolved.expires_at_ms(), T0 + TTL_MS);
        let extended = f.store.extend(&key).unwrap();
        assert_eq!(extended.expires_at_ms(), T0 + 5_000 + TTL_MS);
        assert_eq!(extended.revision(), s.revision() + 1);
        assert_eq!(extended.key(), Some(key.as_str()));
        let stored = f.store.actor_session("p1").unwrap().unwrap();
        assert_eq!(stored.expires_at_ms(), T0 + 5_000 + TTL_MS);
        // The extended session lives past the original expiry.
        f.clock.set(T0 + TTL_MS + 1_000);
        f.store.is_valid(&key).unwrap();
        f.clock.set(T0 + 5_000 + TTL_MS);
        assert_eq!(rejected(f.store.extend(&key)), Reason::Expired);
    }

    fn get_set_and_del_data() {
        let f = Fixture::new();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);

        assert_eq!(f.store.get_data::<u32>(&key, "level").unwrap(), None);
        f.store.set_data(&key, "level", &3).unwrap();
        f.store.set_data(&key, "name", "Alice").unwrap();
        f.store
            .set_data(&key, "inventory", &vec!["sword", "shield"])
            .unwrap();
        f.store
            .set_data_json(&key, "pos", r#"{ "x": 1.5, "y": -2 }"#)
            .unwrap();
        assert_eq!(f.store.get_data::<u32>(&key, "level").unwrap(), Some(3));
        assert_eq!(
            f.store.get_data::<String>(&key, "name").unwrap().as_deref(),
            Some("Alice")
        );
        assert_eq!(
            f.store.get_data::<Vec<String>>(&key, "inventory").unwrap(),
            Some(vec!["sword".to_owned(), "shield".to_owned()])
        );
        assert_eq!(
            f.store
                .get_data::<serde_json::Value>(&key, "pos")
                .unwrap()
                .unwrap(),
            serde_json::json!({"x": 1.5, "y": -2})
        );
        // JSON text is stored compact, so it reads back equal through any interface.
        let all = f.store.data(&key).unwrap();
        assert_eq!(all.get_json("pos"), Some(r#"{"x":1.5,"y":-2}"#));
        assert_eq!(
            all.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["inventory", "level", "name", "pos"]
        );

        // Setting again overwrites; every write bumps the revision.
        f.store.set_data(&key, "level", &4).unwrap();
        assert_eq!(f.store.get_data::<u32>(&key, "level").unwrap(), Some(4));
        assert_eq!(f.store.resolve(&key).unwrap().revision(), 1 + 5);

        assert!(f.store.del_data(&key, "level").unwrap());
        assert_eq!(f.store.get_data::<u32>(&key, "level").unwrap(), None);
        assert!(!f.store.del_data(&key, "level").unwrap());
        assert_eq!(f.store.data(&key).unwrap().len(), 3);
        // Deleting a missing name is not a write.
        assert_eq!(f.store.resolve(&key).unwrap().revision(), 1 + 6);

        // Data is the session's: another session does not see it.
        let other = f.store.register("p2", "en", Data::new()).unwrap();
        assert_eq!(
            f.store.get_data::<String>(&key_of(&other), "name").unwrap(),
            None
        );
    }

    fn actor_session_finds_the_newest_live_session_without_its_key() {
        let f = Fixture::with(|c| c.max_sessions_per_actor(2));
        assert_eq!(f.store.actor_session("p1").unwrap(), None);
        let old = f.store.register("p1", "en", Data::new()).unwrap();
        f.advance(Duration::from_secs(1));
        let new = f.store.register("p1", "fr", Data::new()).unwrap();
        let found = f.store.actor_session("p1").unwrap().unwrap();
        assert_eq!(found.id(), new.id());
        assert_eq!(found.language(), "fr");
        // The store keeps only a digest of the secret: no key to show.
        assert_eq!(found.key(), None);

        f.store.logout(&key_of(&new)).unwrap();
        assert_eq!(f.store.actor_session("p1").unwrap().unwrap().id(), old.id());
        // An expired session is not returned, reaped or not.
        f.clock.set(old.expires_at_ms());
        assert_eq!(f.store.actor_session("p1").unwrap(), None);
    }

    fn actor_addresses_answers_a_batch_in_one_call() {
        let f = Fixture::with(|c| c.node_id("node-a"));
        let p1 = f.store.register("p1", "en", Data::new()).unwrap();
        let p2 = f.store.register("p2", "ja", Data::new()).unwrap();
        let gone = f.store.register("gone", "en", Data::new()).unwrap();
        f.store.logout(&key_of(&gone)).unwrap();
        assert_eq!(p1.node_id(), Some("node-a"));

        let addresses = f
            .store
            .actor_addresses(&["p2", "nobody", "p1", "gone"])
            .unwrap();
        assert_eq!(
            addresses,
            vec![
                ActorAddress {
                    actor_id: "p2".into(),
                    node_id: Some("node-a".into()),
                    session_id: p2.id().into(),
                    language: "ja".into(),
                },
                ActorAddress {
                    actor_id: "p1".into(),
                    node_id: Some("node-a".into()),
                    session_id: p1.id().into(),
                    language: "en".into(),
                },
            ]
        );
        let none: [&str; 0] = [];
        assert_eq!(f.store.actor_addresses(&none).unwrap(), vec![]);
        // Owned strings work as well.
        let owned = vec!["p1".to_owned()];
        assert_eq!(f.store.actor_addresses(&owned).unwrap().len(), 1);

        // Expired sessions are left out before the reaper runs.
        f.clock.set(p1.expires_at_ms());
        assert_eq!(f.store.actor_addresses(&["p1", "p2"]).unwrap(), vec![]);
    }

    fn actor_addresses_without_a_node_id_reports_none() {
        let f = Fixture::new();
        f.store.register("p1", "en", Data::new()).unwrap();
        let a = f.store.actor_addresses(&["p1"]).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].node_id, None);
    }

    fn reason_invalid_session_key() {
        let f = Fixture::new();
        f.store.register("p1", "en", Data::new()).unwrap();
        for bad in ["", "nocolon", ":secret", "p1:", "p1:not a secret"] {
            assert_eq!(
                rejected(f.store.resolve(bad)),
                Reason::InvalidSessionKey,
                "{bad:?}"
            );
            assert_eq!(
                rejected(f.store.is_valid(bad)),
                Reason::InvalidSessionKey,
                "{bad:?}"
            );
        }
    }

    fn reason_no_session() {
        let f = Fixture::new();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        // A well-formed key of an actor that has no session.
        let secret = key_of(&s).rsplit_once(':').unwrap().1.to_owned();
        assert_eq!(
            rejected(f.store.resolve(&format!("p2:{secret}"))),
            Reason::NoSession
        );
        assert_eq!(
            rejected(f.store.is_valid("p2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
            Reason::NoSession
        );
    }

    /// Writes through a dead key tell the same reasons as reads. The committer
    /// lists the actor's sessions only when a session is gone, so this is the
    /// path where it lists them on demand.
    fn writes_through_a_dead_key_tell_key_mismatch_from_no_session() {
        let f = Fixture::new();
        let old = f.store.register("p1", "en", Data::new()).unwrap();
        let new = f.store.register("p1", "en", Data::new()).unwrap();
        let old = key_of(&old);
        assert_eq!(rejected(f.store.extend(&old)), Reason::KeyMismatch);
        assert_eq!(rejected(f.store.restore(&old)), Reason::KeyMismatch);
        assert_eq!(
            rejected(f.store.set_data(&old, "a", &1)),
            Reason::KeyMismatch
        );
        assert_eq!(rejected(f.store.del_data(&old, "a")), Reason::KeyMismatch);
        assert_eq!(rejected(f.store.logout(&old)), Reason::KeyMismatch);
        f.store.logout(&key_of(&new)).unwrap();
        assert_eq!(rejected(f.store.extend(&old)), Reason::NoSession);
        assert_eq!(rejected(f.store.set_data(&old, "a", &1)), Reason::NoSession);
        assert_eq!(rejected(f.store.logout(&old)), Reason::NoSession);
        assert_eq!(f.store.stats().unwrap().sessions, 0);
    }

    fn reason_key_mismatch_when_the_actor_holds_another_live_session() {
        let f = Fixture::new();
        let old = f.store.register("p1", "en", Data::new()).unwrap();
        let new = f.store.register("p1", "en", Data::new()).unwrap();
        // The old key names a session that was replaced; the actor has another.
        assert_eq!(
            rejected(f.store.resolve(&key_of(&old))),
            Reason::KeyMismatch
        );
        assert_eq!(
            rejected(f.store.is_valid(&key_of(&old))),
            Reason::KeyMismatch
        );
        // A key that never existed, for an actor with a session: also a mismatch.
        assert_eq!(
            rejected(f.store.is_valid("p1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
            Reason::KeyMismatch
        );
        f.store.is_valid(&key_of(&new)).unwrap();
        // Once the actor's other session has expired, it has none: noSession.
        f.clock.set(new.expires_at_ms());
        assert_eq!(rejected(f.store.is_valid(&key_of(&old))), Reason::NoSession);
        assert_eq!(rejected(f.store.is_valid(&key_of(&new))), Reason::Expired);
    }

    fn reason_expired_before_the_reaper_runs() {
        let f = Fixture::new();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);
        f.clock.set(s.expires_at_ms());
        assert_eq!(rejected(f.store.is_valid(&key)), Reason::Expired);
        assert_eq!(rejected(f.store.resolve(&key)), Reason::Expired);
        assert_eq!(rejected(f.store.restore(&key)), Reason::Expired);
        assert_eq!(rejected(f.store.extend(&key)), Reason::Expired);
        assert_eq!(rejected(f.store.logout(&key)), Reason::Expired);
        assert_eq!(rejected(f.store.data(&key)), Reason::Expired);
        // Still stored until the reaper runs.
        assert_eq!(f.store.stats().unwrap().sessions, 1);
    }

    fn reason_strings_are_mages() {
        let forms = [
            (Reason::InvalidSessionKey, "invalidSessionKey"),
            (Reason::NoSession, "noSession"),
            (Reason::KeyMismatch, "keyMismatch"),
            (Reason::BadVersion, "badVersion"),
            (Reason::Expired, "expired"),
        ];
        assert_eq!(Reason::ALL.len(), forms.len());
        for (reason, text) in forms {
            assert_eq!(reason.as_str(), text);
            assert_eq!(reason.to_string(), text);
            assert_eq!(text.parse::<Reason>().unwrap(), reason);
            assert!(Reason::ALL.contains(&reason));
            // The error of a rejected key carries the reason and names it.
            let e = Error::Invalid(reason);
            assert_eq!(e.reason(), Some(reason));
            assert!(e.to_string().contains(text), "{e}");
        }
        assert!(matches!(
            "NoSession".parse::<Reason>(),
            Err(Error::InvalidReason { .. })
        ));
    }

    fn unset_reason_strings_are_mages() {
        let forms = [
            (UnsetReason::Expired, "expired"),
            (UnsetReason::LoggedOut, "loggedOut"),
            (UnsetReason::Replaced, "replaced"),
            (UnsetReason::Reassigned, "reassigned"),
            (UnsetReason::Other("banned".into()), "banned"),
            (
                UnsetReason::Other("maint.2024-01_a".into()),
                "maint.2024-01_a",
            ),
        ];
        for (reason, text) in forms {
            assert_eq!(reason.as_str(), text);
            assert_eq!(reason.to_string(), text);
            assert_eq!(UnsetReason::parse(text).unwrap(), reason);
        }
        assert_eq!(
            Event::Set {
                id: String::new(),
                actor_id: String::new(),
                language: String::new(),
                expires_at: 0
            }
            .name(),
            "session.set"
        );
        assert_eq!(
            Event::Unset {
                id: String::new(),
                actor_id: String::new(),
                reason: UnsetReason::Expired
            }
            .name(),
            "session.unset"
        );
    }
}
