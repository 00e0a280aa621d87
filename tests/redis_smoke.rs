#[macro_use]
mod common;
use common::*;
use sessiondb::Data;

on_every_engine! {
    fn smoke() {
        let f = Fixture::new();
        let rx = f.store.subscribe();
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        let key = key_of(&s);
        f.store.set_data(&key, "level", &3).unwrap();
        assert_eq!(f.store.get_data::<u32>(&key, "level").unwrap(), Some(3));
        f.store.logout(&key).unwrap();
        assert_eq!(drain(&rx).len(), 2);
        assert!(f.store.check().unwrap().is_healthy());
        assert_eq!(f.store.stats().unwrap().sessions, 0);
    }
}
