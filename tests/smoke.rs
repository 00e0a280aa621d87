mod common;
use common::*;
use sessiondb::*;
use std::time::Duration;

#[test]
fn register_resolve_logout_with_events() {
    let f = Fixture::new();
    let rx = f.store.subscribe();
    let s = f.store.register("p1", "en", Data::new()).unwrap();
    let key = s.key().unwrap().to_owned();
    assert!(key.starts_with("p1:"));
    f.store.is_valid(&key).unwrap();
    f.store.set_data(&key, "gold", &5).unwrap();
    assert_eq!(f.store.get_data::<i32>(&key, "gold").unwrap(), Some(5));
    f.advance(Duration::from_secs(120));
    let r = f.store.resolve(&key).unwrap();
    assert_eq!(r.expires_at_ms(), T0 + 120_000 + 600_000);
    f.store.logout(&key).unwrap();
    assert_eq!(
        f.store.is_valid(&key).unwrap_err().reason(),
        Some(Reason::NoSession)
    );
    let ev = drain(&rx);
    assert_eq!(ev.len(), 2, "{ev:?}");
    f.advance(Duration::from_secs(3600));
    let s2 = f.store.register("p1", "fr", Data::new()).unwrap();
    f.advance(Duration::from_secs(601));
    assert_eq!(
        f.store.is_valid(s2.key().unwrap()).unwrap_err().reason(),
        Some(Reason::Expired)
    );
    assert_eq!(f.store.reap_expired().unwrap(), 1);
    assert_eq!(f.store.stats().unwrap().sessions, 0);
    let f = f.reopen(|c| c);
    assert!(f.store.recovery_report().clean_shutdown);
    assert!(f.store.check().unwrap().is_healthy());
}
