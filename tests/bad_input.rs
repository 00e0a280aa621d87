//! Every bad input a caller can pass gets its typed error, and harms
//! nothing already stored: after each refused call, an existing session and
//! its data are exactly as they were, and no event was told.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use crossbeam_channel::Receiver;
use sessiondb::*;

/// A store holding one session with data, and a subscriber to see that
/// refused calls tell nothing.
struct Guarded {
    f: Fixture,
    key: String,
    before: Session,
    rx: Receiver<Event>,
}

impl Guarded {
    fn new() -> Guarded {
        Guarded::with(|c| c)
    }

    fn with(tune: impl FnOnce(Config) -> Config) -> Guarded {
        let f = Fixture::with(tune);
        let mut data = Data::new();
        data.insert("gold", &5).unwrap();
        data.insert("name", "Alice").unwrap();
        let s = f.store.register("keeper", "en", data).unwrap();
        let key = key_of(&s);
        let before = f.store.resolve(&key).unwrap();
        let rx = f.store.subscribe();
        Guarded { f, key, before, rx }
    }

    /// The session, its data and the store are as they were.
    fn unharmed(&self, after: &str) {
        let s = self.f.store.resolve(&self.key).unwrap_or_else(|e| {
            panic!("after {after}: the existing session is gone: {e}");
        });
        assert_eq!(s, self.before, "after {after}");
        assert_eq!(
            self.f.store.get_data::<u32>(&self.key, "gold").unwrap(),
            Some(5),
            "after {after}"
        );
        assert_eq!(self.f.store.stats().unwrap().sessions, 1, "after {after}");
        assert_eq!(drain(&self.rx), vec![], "after {after}");
    }
}

/// Asserts that `result` is the error `matches` accepts, and that its
/// message says something.
macro_rules! refused {
    ($what:expr, $result:expr, $pattern:pat) => {{
        match $result {
            Err(e @ $pattern) => {
                assert!(!e.to_string().is_empty());
                e
            }
            other => panic!(
                "{}: expected {}, got {:?}",
                $what,
                stringify!($pattern),
                other
            ),
        }
    }};
}

fn bad_actor_ids() -> Vec<(String, &'static str)> {
    vec![
        (String::new(), "must not be empty"),
        ("x".repeat(256), "at most 255 bytes"),
        // 128 two-byte characters: the limit is in bytes.
        ("é".repeat(128), "at most 255 bytes"),
        ("a\nb".into(), "control characters"),
        ("tab\there".into(), "control characters"),
        ("nul\0".into(), "control characters"),
        ("del\u{7f}".into(), "control characters"),
    ]
}

type Tune = Box<dyn Fn(Config) -> Config>;

fn case(setting: &'static str, tune: impl Fn(Config) -> Config + 'static) -> (&'static str, Tune) {
    (setting, Box::new(tune))
}

#[test]
fn every_config_setting_out_of_range_is_refused_at_open() {
    let g = Guarded::new();
    let ttl = Duration::from_secs(600);
    let cases: Vec<(&str, Tune)> = vec![
        case("key_length", |c| c.key_length(MIN_KEY_LENGTH - 1)),
        case("key_length", |c| c.key_length(MAX_KEY_LENGTH + 1)),
        case("key_length", |c| c.key_length(0)),
        case("touch_interval", move |c| c.touch_interval(ttl)),
        case("touch_interval", move |c| c.touch_interval(ttl * 2)),
        case("touch_interval", |c| {
            c.ttl(Duration::from_secs(30))
                .touch_interval(Duration::from_secs(60))
        }),
        case("max_sessions_per_actor", |c| c.max_sessions_per_actor(0)),
        case("max_sessions_per_actor", |c| {
            c.max_sessions_per_actor(1_001)
        }),
        case("reap_batch", |c| c.reap_batch(0)),
        case("reap_batch", |c| c.reap_batch(100_001)),
        case("reap_interval", |c| c.reap_interval(Duration::ZERO)),
        case("cache_capacity", |c| c.cache_capacity(1_024)),
        case("cache_capacity", |c| c.cache_capacity(0)),
        case("max_data_bytes", |c| c.max_data_bytes(0)),
        case("max_data_bytes", |c| c.max_data_bytes(16 * 1024 * 1024 + 1)),
        case("event_capacity", |c| c.event_capacity(0)),
        case("app_version", |c| c.app_version("1.2")),
        case("app_version", |c| c.app_version("v1.2.0")),
        case("app_version", |c| c.app_version("")),
        case("ttl", |c| c.ttl(Duration::ZERO)),
        case("ttl", |c| c.ttl(Duration::from_micros(999))),
        case("ttl", |c| c.ttl_code("0s")),
        case("ttl", |c| c.ttl_code("soon")),
        case("max_lifetime", |c| c.max_lifetime(Duration::ZERO)),
        case("node_id", |c| c.node_id("")),
        case("node_id", |c| c.node_id("n".repeat(256))),
        case("durability", |c| {
            c.durability(Durability::Periodic(Duration::ZERO))
        }),
        case("durability", |c| {
            c.durability(Durability::Periodic(Duration::from_secs(3_601)))
        }),
    ];
    let fresh = tempfile::tempdir().unwrap();
    for (i, (setting, tune)) in cases.iter().enumerate() {
        // On the directory of the open store: checked before it is touched.
        let what = format!("case {i} ({setting}) on the open store's directory");
        let e = refused!(
            &what,
            SessionStore::open(tune(config(&g.f.dir, &g.f.clock))),
            Error::InvalidConfig { .. }
        );
        let Error::InvalidConfig {
            setting: named,
            problem,
        } = &e
        else {
            unreachable!()
        };
        assert_eq!(named, setting, "{what}: {problem}");
        assert!(e.to_string().contains(setting), "{what}: {e}");
        g.unharmed(&what);

        // On a missing directory: it is not created.
        let path = fresh.path().join(format!("case-{i}"));
        let what = format!("case {i} ({setting}) on a new directory");
        refused!(
            &what,
            SessionStore::open(tune(Config::new(&path).reaper_thread(false))),
            Error::InvalidConfig { .. }
        );
        assert!(!path.exists(), "{what}: the directory was created");
    }
}

#[test]
fn a_store_path_that_is_a_file_is_refused() {
    let g = Guarded::new();
    let file = g.f.dir.path().join("not-a-directory");
    std::fs::write(&file, b"hello").unwrap();
    let e = refused!(
        "a file as the store directory",
        SessionStore::open(Config::new(&file).reaper_thread(false)),
        Error::Io { .. }
    );
    let Error::Io { path, .. } = &e else {
        unreachable!()
    };
    assert_eq!(path, &file);
    assert!(e.to_string().contains("not-a-directory"), "{e}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"hello",
        "the file is untouched"
    );
    g.unharmed("opening a file");
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let g = Guarded::new();
    // sled locks the directory with flock, which also conflicts within one
    // process: a second open here is refused as another process's would be.
    let e = refused!(
        "a second open",
        SessionStore::open(config(&g.f.dir, &g.f.clock)),
        Error::InUse { .. }
    );
    let message = e.to_string();
    assert!(message.contains("in use"), "{message}");
    assert!(
        message.contains(&g.f.dir.path().display().to_string()),
        "{message}"
    );
    // The lock error is kept as the source.
    assert!(std::error::Error::source(&e).is_some());
    g.unharmed("a second open");
    // The first store goes on working, and once it is closed the directory opens.
    g.f.store.set_data(&g.key, "x", &1).unwrap();
    let Guarded { f, key, .. } = g;
    let f = f.reopen(|c| c);
    assert_eq!(f.store.get_data::<u32>(&key, "x").unwrap(), Some(1));
}

on_every_engine! {
    fn bad_actor_ids_are_refused_everywhere() {
        let g = Guarded::new();
        let s = &g.f.store;
        for (bad, problem_text) in bad_actor_ids() {
            let what = format!("actor id {bad:?}");
            let e = refused!(
                &what,
                s.register(&bad, "en", Data::new()),
                Error::InvalidActorId { .. }
            );
            let Error::InvalidActorId { actor_id, problem } = &e else {
                unreachable!()
            };
            assert!(problem.contains(problem_text), "{what}: {problem}");
            assert!(actor_id.chars().count() <= 64, "clipped in the error");
            assert!(e.to_string().contains(problem_text), "{e}");

            refused!(&what, s.actor_session(&bad), Error::InvalidActorId { .. });
            refused!(
                &what,
                s.actor_addresses(&["keeper", bad.as_str()]),
                Error::InvalidActorId { .. }
            );
            refused!(
                &what,
                s.expire_actor(&bad, UnsetReason::Expired),
                Error::InvalidActorId { .. }
            );
            refused!(&what, s.reassign(&bad, "x"), Error::InvalidActorId { .. });
            refused!(
                &what,
                s.reassign("keeper", &bad),
                Error::InvalidActorId { .. }
            );
            g.unharmed(&what);
        }
        // The limits themselves are accepted.
        for good in ["x".repeat(255), "é".repeat(127), "名前:with spaces".into()] {
            let new = s.register(&good, "en", Data::new()).unwrap();
            s.is_valid(&key_of(&new)).unwrap();
            s.logout(&key_of(&new)).unwrap();
            drain(&g.rx);
        }
        g.unharmed("registering long actor ids");
    }

    fn bad_languages_are_refused() {
        let g = Guarded::new();
        let long = "x".repeat(MAX_LANGUAGE_LEN + 1);
        for bad in ["", "e n", "en/US", "ñ", "en\n", long.as_str()] {
            let what = format!("language {bad:?}");
            let e = refused!(
                &what,
                g.f.store.register("newcomer", bad, Data::new()),
                Error::InvalidLanguage { .. }
            );
            assert!(e.to_string().contains("language"), "{e}");
            assert_eq!(g.f.store.actor_session("newcomer").unwrap(), None);
            g.unharmed(&what);
        }
        for good in ["en", "pt-BR", "zh_Hant", &"x".repeat(MAX_LANGUAGE_LEN)] {
            let s = g.f.store.register("newcomer", good, Data::new()).unwrap();
            assert_eq!(s.language(), good);
        }
    }

    fn malformed_keys_are_refused_by_every_key_taking_call() {
        let g = Guarded::new();
        let s = &g.f.store;
        let long_secret = format!("keeper:{}", "A".repeat(MAX_KEY_LENGTH + 1));
        let bad_actor = format!("{}:{}", "x".repeat(256), "A".repeat(32));
        let malformed = [
            "",
            "nocolon",
            ":x",
            "a:",
            "keeper:",
            "a:bad key",
            "a:bad+key",
            "a:séc",
            "a\n:AAAAAAAAAAAAAAAAAAAAAA",
            long_secret.as_str(),
            bad_actor.as_str(),
        ];
        for bad in malformed {
            let what = format!("key {bad:?}");
            let check = |call: &str, r: Result<()>| {
                assert_eq!(rejected(r), Reason::InvalidSessionKey, "{call} with {what}");
            };
            check("resolve", s.resolve(bad).map(drop));
            check("is_valid", s.is_valid(bad));
            check("restore", s.restore(bad).map(drop));
            check("extend", s.extend(bad).map(drop));
            check("logout", s.logout(bad));
            check("expire", s.expire(bad, UnsetReason::Expired));
            check("get_data", s.get_data::<u32>(bad, "gold").map(drop));
            check("data", s.data(bad).map(drop));
            check("set_data", s.set_data(bad, "gold", &6));
            check("set_data_json", s.set_data_json(bad, "gold", "6"));
            check("del_data", s.del_data(bad, "gold").map(drop));
            check("update", s.update(bad, |d| d.remove("gold")).map(drop));
            g.unharmed(&what);
        }
        // The longest secret is well-formed: it names no session, it is not malformed.
        let longest = format!("keeper:{}", "A".repeat(MAX_KEY_LENGTH));
        assert_eq!(rejected(s.is_valid(&longest)), Reason::KeyMismatch);
        g.unharmed("the longest secret");
    }

    fn bad_data_names_are_refused() {
        let g = Guarded::new();
        let s = &g.f.store;
        let long = "n".repeat(MAX_DATA_NAME_LEN + 1);
        for bad in ["", long.as_str()] {
            let what = format!("data name of {} bytes", bad.len());
            refused!(
                &what,
                s.set_data(&g.key, bad, &1),
                Error::InvalidDataName { .. }
            );
            refused!(
                &what,
                s.set_data_json(&g.key, bad, "1"),
                Error::InvalidDataName { .. }
            );
            refused!(
                &what,
                s.del_data(&g.key, bad),
                Error::InvalidDataName { .. }
            );
            let mut data = Data::new();
            refused!(&what, data.insert(bad, &1), Error::InvalidDataName { .. });
            refused!(
                &what,
                data.insert_json(bad, "1"),
                Error::InvalidDataName { .. }
            );
            assert!(data.is_empty());
            g.unharmed(&what);
        }
        let longest = "n".repeat(MAX_DATA_NAME_LEN);
        s.set_data(&g.key, &longest, &1).unwrap();
        assert_eq!(s.get_data::<u32>(&g.key, &longest).unwrap(), Some(1));
    }

    fn data_over_the_limit_is_refused_and_the_old_value_kept() {
        // The keeper's data is {"gold": 5, "name": "Alice"}: 4+1 + 4+7 = 16 bytes.
        let g = Guarded::with(|c| c.max_data_bytes(100));
        let s = &g.f.store;
        let too_large = |what: &str, r: Result<()>| {
            let e = refused!(what, r, Error::DataTooLarge { .. });
            let Error::DataTooLarge { size, limit } = e else {
                unreachable!()
            };
            assert_eq!(limit, 100, "{what}");
            assert!(size > 100, "{what}: size {size}");
        };
        let big = "x".repeat(200);
        too_large("a new large value", s.set_data(&g.key, "blob", &big));
        too_large(
            "overwriting with a large value",
            s.set_data(&g.key, "gold", &big),
        );
        too_large(
            "large JSON text",
            s.set_data_json(&g.key, "blob", &format!("{big:?}")),
        );
        too_large(
            "an update that grows too large",
            s.update(&g.key, |d| d.insert("blob", &big).map(drop))
                .and_then(|r| r),
        );
        g.unharmed("oversized data");

        // Exactly at the limit is accepted: 16 + 1 + (81 + 2 quotes) = 100 ...
        let fits = "y".repeat(81);
        s.set_data(&g.key, "b", &fits).unwrap();
        assert_eq!(s.data(&g.key).unwrap().size(), 100);
        // ... one byte more is not, and leaves what was there.
        too_large(
            "one byte over",
            s.set_data(&g.key, "b", &format!("{fits}y")),
        );
        too_large("one more name", s.set_data(&g.key, "c", &0));
        assert_eq!(
            s.get_data::<String>(&g.key, "b").unwrap().as_deref(),
            Some(fits.as_str())
        );
        // Deleting always fits.
        assert!(s.del_data(&g.key, "b").unwrap());
        assert_eq!(s.get_data::<u32>(&g.key, "gold").unwrap(), Some(5));
    }

    fn register_with_too_much_data_is_refused() {
        let g = Guarded::with(|c| c.max_data_bytes(100));
        let mut data = Data::new();
        data.insert("blob", &"x".repeat(200)).unwrap();
        refused!(
            "register with 206 bytes of data",
            g.f.store.register("newcomer", "en", data),
            Error::DataTooLarge {
                size: 206,
                limit: 100
            }
        );
        assert_eq!(g.f.store.actor_session("newcomer").unwrap(), None);
        // A register of the keeper itself with too much data does not replace it.
        let mut data = Data::new();
        data.insert("blob", &"x".repeat(200)).unwrap();
        refused!(
            "re-register with too much data",
            g.f.store.register("keeper", "en", data),
            Error::DataTooLarge { .. }
        );
        g.unharmed("registering too much data");
    }

    fn values_that_are_not_json_are_refused() {
        let g = Guarded::new();
        let s = &g.f.store;
        for bad in [
            "",
            "{",
            "[1,]",
            "undefined",
            "'single'",
            "{\"a\":1} trailing",
        ] {
            let what = format!("JSON {bad:?}");
            let e = refused!(
                &what,
                s.set_data_json(&g.key, "gold", bad),
                Error::Data { .. }
            );
            // The serde_json error is kept as the source.
            assert!(std::error::Error::source(&e).is_some(), "{what}");
            let mut data = Data::new();
            refused!(&what, data.insert_json("gold", bad), Error::Data { .. });
            g.unharmed(&what);
        }
        // A value serde_json cannot write: a map with non-string keys.
        let mut map = HashMap::new();
        map.insert((1u8, 2u8), 3u8);
        refused!(
            "a map with tuple keys",
            s.set_data(&g.key, "gold", &map),
            Error::Data { .. }
        );
        g.unharmed("an unserialisable value");
        // Reading a value as the wrong type.
        refused!(
            "gold read as a string",
            s.get_data::<String>(&g.key, "gold"),
            Error::Data { .. }
        );
        refused!(
            "name read as a number",
            s.resolve(&g.key).unwrap().get::<u32>("name"),
            Error::Data { .. }
        );
        g.unharmed("reading as the wrong type");
    }

    fn malformed_custom_reasons_are_refused() {
        let g = Guarded::new();
        let s = &g.f.store;
        let long = "r".repeat(MAX_REASON_LEN + 1);
        for bad in ["", "has spaces", "semi;colon", "é", long.as_str()] {
            let what = format!("reason {bad:?}");
            refused!(&what, UnsetReason::parse(bad), Error::InvalidReason { .. });
            let other = UnsetReason::Other(bad.to_owned());
            refused!(
                &what,
                s.expire(&g.key, other.clone()),
                Error::InvalidReason { .. }
            );
            refused!(
                &what,
                s.expire_actor("keeper", other),
                Error::InvalidReason { .. }
            );
            refused!(&what, bad.parse::<Reason>(), Error::InvalidReason { .. });
            g.unharmed(&what);
        }
        let longest = "r".repeat(MAX_REASON_LEN);
        assert_eq!(
            UnsetReason::parse(&longest).unwrap(),
            UnsetReason::Other(longest.clone())
        );
    }

    fn config_limits_themselves_are_accepted() {
        for len in [MIN_KEY_LENGTH, MAX_KEY_LENGTH] {
            let f = Fixture::with(|c| c.key_length(len));
            let s = f.store.register("p1", "en", Data::new()).unwrap();
            let key = key_of(&s);
            assert_eq!(key.rsplit_once(':').unwrap().1.len(), len);
            f.store.is_valid(&key).unwrap();
        }
        let f = Fixture::with(|c| {
            c.max_sessions_per_actor(1_000)
                .reap_batch(100_000)
                .cache_capacity(1024 * 1024)
                .max_data_bytes(16 * 1024 * 1024)
                .event_capacity(1)
                .touch_interval(Duration::from_millis(599_999))
                .app_version("1.0.0-beta.1+build.5")
                .node_id("n".repeat(255))
                .durability(Durability::Immediate)
        });
        let s = f.store.register("p1", "en", Data::new()).unwrap();
        f.store.is_valid(&key_of(&s)).unwrap();
    }

    fn data_built_by_deserializing_is_checked_like_inserted_data() {
        // `Data` deserialises from names mapped to JSON texts, which bypasses
        // `insert`'s checks; the store must not take what `insert` would refuse.
        let g = Guarded::new();
        let s = &g.f.store;
        let empty_name: Data = serde_json::from_str(r#"{"": "1"}"#).unwrap();
        let long_name: Data =
            serde_json::from_str(&format!(r#"{{"{}": "1"}}"#, "n".repeat(256))).unwrap();
        let not_json: Data = serde_json::from_str(r#"{"gold": "not json"}"#).unwrap();

        for (what, data) in [("an empty name", &empty_name), ("a long name", &long_name)] {
            refused!(
                what,
                s.register("newcomer", "en", data.clone()),
                Error::InvalidDataName { .. }
            );
            refused!(
                what,
                s.update(&g.key, |d| *d = data.clone()),
                Error::InvalidDataName { .. }
            );
            g.unharmed(what);
        }
        refused!(
            "a value that is not JSON",
            s.register("newcomer", "en", not_json.clone()),
            Error::Data { .. }
        );
        refused!(
            "a value that is not JSON",
            s.update(&g.key, |d| *d = not_json.clone()),
            Error::Data { .. }
        );
        assert_eq!(s.actor_session("newcomer").unwrap(), None);
        g.unharmed("data that is not JSON");

        // Well-formed data deserialises and registers as inserted data does.
        let good: Data = serde_json::from_str(r#"{"gold": "7", "tags": "[\"a\"]"}"#).unwrap();
        let new = s.register("newcomer", "en", good).unwrap();
        assert_eq!(
            s.get_data::<Vec<String>>(&key_of(&new), "tags").unwrap(),
            Some(vec!["a".to_owned()])
        );
    }
}
