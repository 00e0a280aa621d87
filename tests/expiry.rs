//! Sliding expiry, the touch interval, the absolute lifetime and reaping,
//! driven by a manual clock: no test sleeps to let time pass.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use sessiondb::*;

const TTL_MS: u64 = 600_000;

fn expired_event(session: &Session) -> Event {
    unset_event(session, UnsetReason::Expired)
}

/// Events in a fixed order, for comparing sets of events whose order
/// among sessions due at the same millisecond is not specified.
fn sorted(mut events: Vec<Event>) -> Vec<Event> {
    events.sort_by_key(|e| format!("{e:?}"));
    events
}

fn register(f: &Fixture, actor: &str) -> Session {
    f.store.register(actor, "en", Data::new()).unwrap()
}

#[test]
fn the_ttl_can_be_a_time_code() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    for (code, ms) in [("10m", 600_000), ("90s", 90_000), ("1h 30m", 5_400_000)] {
        let store = SessionStore::open(config(&dir, &clock).ttl_code(code)).unwrap();
        let s = store
            .register(&format!("p-{ms}"), "en", Data::new())
            .unwrap();
        assert_eq!(s.expires_at_ms(), T0 + ms, "{code}");
        store.close().unwrap();
    }
    assert_eq!(parse_time_code("10m").unwrap(), Duration::from_secs(600));
    assert_eq!(parse_time_code("2d").unwrap(), Duration::from_secs(172_800));
}

#[test]
fn a_bad_time_code_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    for code in ["ten minutes", "", "10", "-5m", "0s"] {
        match SessionStore::open(config(&dir, &clock).ttl_code(code)) {
            Err(Error::InvalidConfig { setting, problem }) => {
                assert_eq!(setting, "ttl", "{code:?}");
                assert!(!problem.is_empty());
            }
            other => panic!("{code:?}: expected InvalidConfig, got {other:?}"),
        }
        assert!(matches!(
            parse_time_code(code),
            Err(Error::InvalidConfig { setting: "ttl", .. })
        ));
    }
    // The later of `ttl` and `ttl_code` wins.
    let store = SessionStore::open(
        config(&dir, &clock)
            .ttl_code("bad")
            .ttl(Duration::from_secs(60)),
    )
    .unwrap();
    let s = store.register("p1", "en", Data::new()).unwrap();
    assert_eq!(s.expires_at_ms(), T0 + 60_000);
}

on_every_engine! {
    /// With the reaper thread on, its first pass runs inside `open`; a
    /// subscription made by `open_subscribed` still hears the `session.unset`
    /// of every session that expired while the store was closed.
    fn open_subscribed_hears_the_expiries_of_the_first_pass() {
        let f = Fixture::new();
        let a = register(&f, "a");
        let b = register(&f, "b");
        let config = f.config().reaper_thread(true);
        let Fixture {
            clock,
            store,
            place: _place,
            ..
        } = f;
        store.close().unwrap();
        clock.advance(Duration::from_millis(TTL_MS + 1));
        let (store, events) = SessionStore::open_subscribed(config).unwrap();
        let heard: Vec<Event> = (0..2)
            .map(|_| {
                events
                    .recv_timeout(Duration::from_secs(10))
                    .expect("an expiry event")
            })
            .collect();
        assert_eq!(
            sorted(heard),
            sorted(vec![expired_event(&a), expired_event(&b)])
        );
        assert_eq!(store.stats().unwrap().sessions, 0);
    }

    fn the_reaper_thread_reaps_on_its_own() {
        let f = Fixture::with(|c| c.reaper_thread(true).reap_interval(Duration::from_millis(10)));
        let (store, clock) = (&f.store, &f.clock);
        let rx = store.subscribe();
        let s = store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);

        clock.set(s.expires_at_ms() + 1);
        // Wait for the event, not for a time: the deadline only bounds a hang.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(Event::Unset { id, reason, .. }) => {
                    assert_eq!(id, s.id());
                    assert_eq!(reason, UnsetReason::Expired);
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("the reaper thread did not reap within 10 s: {e}"),
            }
        }
        // Reaped, not merely expired: the event follows the committed delete.
        // (`Stats::reaped` is counted when the pass ends, which may be just
        // after the event arrives, so it is not asserted here.)
        assert_eq!(rejected(store.is_valid(&key)), Reason::NoSession);
        assert_eq!(store.stats().unwrap().sessions, 0);
    }

    fn sessions_that_expired_while_closed_are_reaped_on_the_first_pass() {
        let f = Fixture::new();
        let due: Vec<Session> = (0..3).map(|i| register(&f, &format!("p{i}"))).collect();
        f.advance(Duration::from_secs(300));
        let later = register(&f, "later");

        f.clock.set(T0 + TTL_MS + 60_000);
        let f = f.reopen(|c| c);
        let rx = f.store.subscribe();
        // Not returned before the pass either.
        assert_eq!(
            rejected(f.store.is_valid(&key_of(&due[0]))),
            Reason::Expired
        );
        assert_eq!(f.store.reap_expired().unwrap(), 3);
        assert_eq!(
            sorted(drain(&rx)),
            sorted(due.iter().map(expired_event).collect())
        );
        f.store.is_valid(&key_of(&later)).unwrap();
        assert_eq!(f.store.stats().unwrap().sessions, 1);
        assert_eq!(f.store.reap_expired().unwrap(), 0);
    }

    /// A use that slides the expiry later leaves the session's expiry entry
    /// where it was filed (one key written); the reaper, meeting the entry
    /// before the session is due, files it again at the real expiry and ends
    /// nothing, and ends the session when it is really due. The store stays
    /// consistent at every step.
    fn a_slid_expiry_is_filed_again_by_the_reaper_not_ended() {
        let f = Fixture::new();
        let s = register(&f, "p1");
        let key = key_of(&s);
        let rx = f.store.subscribe();
        f.advance(Duration::from_secs(300));
        let slid = f.store.extend(&key).unwrap();
        assert_eq!(slid.expires_at_ms(), T0 + 300_000 + TTL_MS);
        assert!(f.store.check().unwrap().is_healthy());

        // Past the first expiry: the entry is met, the session is not due.
        f.clock.set(s.expires_at_ms() + 1);
        assert_eq!(f.store.reap_expired().unwrap(), 0);
        assert!(drain(&rx).is_empty(), "nothing ended, nothing announced");
        f.store.is_valid(&key).unwrap();
        assert!(f.store.check().unwrap().is_healthy());
        // Filed again: the next pass meets nothing.
        assert_eq!(f.store.reap_expired().unwrap(), 0);
        assert_eq!(f.store.stats().unwrap().sessions, 1);

        // At the real expiry it ends, once, as expired.
        f.clock.set(slid.expires_at_ms());
        assert_eq!(f.store.reap_expired().unwrap(), 1);
        assert_eq!(drain(&rx), vec![expired_event(&s)]);
        assert_eq!(f.store.stats().unwrap().sessions, 0);
        assert!(f.store.check().unwrap().is_healthy());
    }

    /// Ending a session whose entry was filed before its expiry removes that
    /// entry too: nothing is left for the reaper or the check to find.
    fn ending_a_slid_session_leaves_no_entry_behind() {
        let f = Fixture::new();
        let s = register(&f, "p1");
        f.advance(Duration::from_secs(300));
        f.store.extend(&key_of(&s)).unwrap();
        f.store.logout(&key_of(&s)).unwrap();
        let check = f.store.check().unwrap();
        assert!(check.is_healthy(), "{check:?}");
        f.clock.set(T0 + 10 * TTL_MS);
        assert_eq!(f.store.reap_expired().unwrap(), 0);
    }

    fn register_expires_a_ttl_from_now() {
        let f = Fixture::new();
        f.advance(Duration::from_millis(1_234));
        let s = register(&f, "p1");
        assert_eq!(s.expires_at_ms(), T0 + 1_234 + TTL_MS);

        let f = Fixture::with(|c| c.ttl(Duration::from_secs(90)));
        let s = register(&f, "p1");
        assert_eq!(s.expires_at_ms(), T0 + 90_000);
    }

    fn a_resolve_within_the_touch_interval_does_not_write() {
        // The default touch interval is a tenth of the TTL: 60 s.
        let f = Fixture::new();
        let s = register(&f, "p1");
        let key = key_of(&s);
        let before = f.store.stats().unwrap();

        f.advance(Duration::from_millis(59_999));
        let r = f.store.resolve(&key).unwrap();
        assert_eq!(r.revision(), s.revision());
        assert_eq!(r.expires_at_ms(), s.expires_at_ms());
        let stats = f.store.stats().unwrap();
        assert_eq!(stats.touches_skipped, before.touches_skipped + 1);
        assert_eq!(
            stats.commits, before.commits,
            "a skipped touch commits nothing"
        );
        let stored = f.store.actor_session("p1").unwrap().unwrap();
        assert_eq!(stored.revision(), s.revision());
        assert_eq!(stored.expires_at_ms(), s.expires_at_ms());

        // At the touch interval the new expiry is written.
        f.advance(Duration::from_millis(1));
        let r = f.store.resolve(&key).unwrap();
        assert_eq!(r.revision(), s.revision() + 1);
        assert_eq!(r.expires_at_ms(), T0 + 60_000 + TTL_MS);
        let stats = f.store.stats().unwrap();
        assert_eq!(stats.touches_skipped, before.touches_skipped + 1);
        assert_eq!(stats.commits, before.commits + 1);
        let stored = f.store.actor_session("p1").unwrap().unwrap();
        assert_eq!(stored.revision(), s.revision() + 1);
        assert_eq!(stored.expires_at_ms(), T0 + 60_000 + TTL_MS);

        // The slid expiry is the one that counts: valid past the first expiry,
        // expired at the new one.
        f.clock.set(T0 + TTL_MS);
        f.store.is_valid(&key).unwrap();
        assert_eq!(f.store.reap_expired().unwrap(), 0);
        f.clock.set(T0 + 60_000 + TTL_MS);
        assert_eq!(rejected(f.store.is_valid(&key)), Reason::Expired);
    }

    fn the_touch_interval_is_configurable() {
        let f = Fixture::with(|c| c.touch_interval(Duration::from_secs(5)));
        let s = register(&f, "p1");
        let key = key_of(&s);
        f.advance(Duration::from_millis(4_999));
        assert_eq!(f.store.resolve(&key).unwrap().revision(), 1);
        f.advance(Duration::from_millis(1));
        let r = f.store.resolve(&key).unwrap();
        assert_eq!(r.revision(), 2);
        assert_eq!(r.expires_at_ms(), T0 + 5_000 + TTL_MS);
    }

    fn reads_never_return_an_expired_session() {
        let f = Fixture::new();
        let s = register(&f, "p1");
        let key = key_of(&s);
        f.store.set_data(&key, "gold", &5).unwrap();

        f.clock.set(s.expires_at_ms());
        assert_eq!(rejected(f.store.resolve(&key)), Reason::Expired);
        assert_eq!(rejected(f.store.is_valid(&key)), Reason::Expired);
        assert_eq!(
            rejected(f.store.get_data::<u32>(&key, "gold")),
            Reason::Expired
        );
        assert_eq!(rejected(f.store.data(&key)), Reason::Expired);
        assert_eq!(
            rejected(f.store.set_data(&key, "gold", &6)),
            Reason::Expired
        );
        assert_eq!(rejected(f.store.del_data(&key, "gold")), Reason::Expired);
        assert_eq!(
            rejected(f.store.update(&key, |d| d.remove("gold"))),
            Reason::Expired
        );
        assert_eq!(f.store.actor_session("p1").unwrap(), None);
        assert_eq!(f.store.actor_addresses(&["p1"]).unwrap(), vec![]);
        // Not reaped yet: still stored, and a resolve did not bring it back.
        assert_eq!(f.store.stats().unwrap().sessions, 1);
        assert_eq!(f.store.stats().unwrap().reaped, 0);

        assert_eq!(f.store.reap_expired().unwrap(), 1);
        assert_eq!(rejected(f.store.is_valid(&key)), Reason::NoSession);
        assert_eq!(f.store.stats().unwrap().sessions, 0);
    }

    fn reap_expired_removes_exactly_the_sessions_due() {
        let f = Fixture::new();
        let early: Vec<Session> = (0..3).map(|i| register(&f, &format!("e{i}"))).collect();
        f.advance(Duration::from_secs(300));
        let late: Vec<Session> = (0..2).map(|i| register(&f, &format!("l{i}"))).collect();
        // Used in time: its expiry slides past the first wave's.
        f.advance(Duration::from_secs(100));
        let kept = f.store.resolve(&key_of(&early[2])).unwrap();
        assert_eq!(kept.expires_at_ms(), T0 + 400_000 + TTL_MS);
        let rx = f.store.subscribe();

        f.clock.set(T0 + TTL_MS - 1);
        assert_eq!(f.store.reap_expired().unwrap(), 0);
        f.clock.set(T0 + TTL_MS);
        assert_eq!(f.store.reap_expired().unwrap(), 2);
        assert_eq!(
            sorted(drain(&rx)),
            sorted(vec![expired_event(&early[0]), expired_event(&early[1])])
        );
        assert_eq!(f.store.reap_expired().unwrap(), 0);

        f.clock.set(late[0].expires_at_ms());
        assert_eq!(f.store.reap_expired().unwrap(), 2);
        assert_eq!(
            sorted(drain(&rx)),
            sorted(vec![expired_event(&late[0]), expired_event(&late[1])])
        );

        f.clock.set(kept.expires_at_ms());
        assert_eq!(f.store.reap_expired().unwrap(), 1);
        assert_eq!(drain(&rx), vec![expired_event(&kept)]);

        let stats = f.store.stats().unwrap();
        assert_eq!(stats.reaped, 5);
        assert_eq!(stats.sessions, 0);
        assert!(f.store.check().unwrap().is_healthy());
    }

    fn reaping_goes_in_bounded_batches_until_all_due_are_gone() {
        let f = Fixture::with(|c| c.reap_batch(3));
        // 100 due: more than one scan of the index (16 batches of 3) holds.
        let sessions: Vec<Session> = (0..100).map(|i| register(&f, &format!("p{i}"))).collect();
        // One session that is not due must survive the pass.
        f.advance(Duration::from_secs(1));
        let survivor = register(&f, "survivor");
        let rx = f.store.subscribe();
        let before = f.store.stats().unwrap();

        f.clock.set(T0 + TTL_MS);
        assert_eq!(f.store.reap_expired().unwrap(), 100);
        assert_eq!(
            sorted(drain(&rx)),
            sorted(sessions.iter().map(expired_event).collect())
        );
        let stats = f.store.stats().unwrap();
        assert_eq!(stats.reaped, 100);
        assert_eq!(stats.sessions, 1);
        // At most 3 deletions per transaction: 100 take at least 34.
        assert!(
            stats.commits - before.commits >= 34,
            "{} commits for 100 sessions in batches of 3",
            stats.commits - before.commits
        );
        f.store.is_valid(&key_of(&survivor)).unwrap();
        assert!(f.store.check().unwrap().is_healthy());
    }

    fn max_lifetime_caps_the_sliding_expiry() {
        let f = Fixture::with(|c| c.max_lifetime(Duration::from_secs(900)));
        let s = register(&f, "p1");
        let key = key_of(&s);
        let deadline = T0 + 900_000;
        assert_eq!(s.deadline().unwrap().timestamp_millis(), deadline as i64);
        assert_eq!(s.expires_at_ms(), T0 + TTL_MS);

        // Sliding stops at the deadline, however the session is used.
        f.advance(Duration::from_secs(500));
        assert_eq!(f.store.resolve(&key).unwrap().expires_at_ms(), deadline);
        f.advance(Duration::from_secs(100));
        assert_eq!(f.store.extend(&key).unwrap().expires_at_ms(), deadline);
        assert_eq!(f.store.restore(&key).unwrap().expires_at_ms(), deadline);
        f.clock.set(deadline - 1);
        f.store.is_valid(&key).unwrap();
        f.clock.set(deadline);
        assert_eq!(rejected(f.store.resolve(&key)), Reason::Expired);
        assert_eq!(f.store.reap_expired().unwrap(), 1);

        // A lifetime below the TTL caps the very first expiry.
        let f = Fixture::with(|c| c.max_lifetime(Duration::from_secs(30)));
        let s = register(&f, "p1");
        assert_eq!(s.expires_at_ms(), T0 + 30_000);
    }
}
