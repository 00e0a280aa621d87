//! Whole-store access: listing, finding by public id, export and import.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sessiondb::{Config, Data, Error, Event, ManualClock, Meta, SessionStore, EXPORT_FORMAT};
use tempfile::TempDir;

const T0: u64 = 1_700_000_000_000;

fn open(dir: &TempDir, clock: &ManualClock) -> SessionStore {
    SessionStore::open(
        Config::new(dir.path())
            .clock(Arc::new(clock.clone()))
            .reaper_thread(false)
            .max_sessions_per_actor(3),
    )
    .expect("open")
}

/// A struct whose fields are not in alphabetical order, so that a JSON
/// round trip through a sorted map would change its text.
#[derive(Serialize)]
struct Loadout {
    zweihander: u32,
    axe: f64,
}

/// A store with varied sessions; returns their keys.
fn populate(store: &SessionStore, clock: &ManualClock) -> Vec<String> {
    let mut keys = Vec::new();
    let mut data = Data::new();
    data.insert(
        "loadout",
        &Loadout {
            zweihander: 2,
            axe: 0.1,
        },
    )
    .unwrap();
    data.insert("name", "Zoë \"the\" ✓").unwrap();
    data.insert("nothing", &()).unwrap();
    keys.push(
        store
            .register("p1", "en", data)
            .unwrap()
            .key()
            .unwrap()
            .to_owned(),
    );
    let meta = Meta::from_pairs([("device", "Zoë's phone"), ("address", "203.0.113.7")]).unwrap();
    keys.push(
        store
            .register_with_meta("p1", "pt-BR", Data::new(), meta)
            .unwrap()
            .key()
            .unwrap()
            .to_owned(),
    );
    keys.push(
        store
            .register("guild:7", "fr", Data::new())
            .unwrap()
            .key()
            .unwrap()
            .to_owned(),
    );
    store.set_data(&keys[2], "big", &u64::MAX).unwrap();
    // One that will be past its expiry (but not reaped) when exported.
    keys.push(
        store
            .register("ghost", "en", Data::new())
            .unwrap()
            .key()
            .unwrap()
            .to_owned(),
    );
    clock.advance(Duration::from_secs(300));
    for k in &keys[..3] {
        store.extend(k).unwrap();
    }
    clock.advance(Duration::from_secs(400));
    keys
}

fn export_bytes(store: &SessionStore) -> Vec<u8> {
    let mut out = Vec::new();
    store.export(&mut out).unwrap();
    out
}

#[test]
fn export_then_import_restores_every_session_exactly_and_keys_keep_working() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = ManualClock::new(T0);
    let source = open(&a, &clock);
    let keys = populate(&source, &clock);
    let exported = export_bytes(&source);
    let text = String::from_utf8(exported.clone()).unwrap();
    assert_eq!(text.lines().count(), 1 + 4, "{text}");
    assert!(text.starts_with(&format!(
        "{{\"format\":\"sessiondb-export\",\"version\":{EXPORT_FORMAT}}}\n"
    )));
    assert!(!keys
        .iter()
        .any(|k| text.contains(k.rsplit_once(':').unwrap().1)));

    let copy = open(&b, &clock);
    let events = copy.subscribe();
    let summary = copy.import(exported.as_slice()).unwrap();
    assert_eq!((summary.imported, summary.replaced), (4, 0));
    assert!(events.try_recv().is_err(), "import must not send events");
    assert_eq!(export_bytes(&copy), exported, "a second export differs");
    assert!(copy.check().unwrap().is_healthy());
    assert_eq!(copy.stats().unwrap().sessions, 4);

    for k in &keys[..3] {
        assert_eq!(copy.resolve(k).unwrap(), source.resolve(k).unwrap());
    }
    assert_eq!(
        copy.data(&keys[0]).unwrap().get_json("loadout"),
        Some(r#"{"zweihander":2,"axe":0.1}"#)
    );
    assert_eq!(
        copy.is_valid(&keys[3]).unwrap_err().reason(),
        Some(sessiondb::Reason::Expired)
    );
    // The expired one is reaped with its event after the import.
    assert_eq!(copy.reap_expired().unwrap(), 1);
    assert!(matches!(events.try_recv(), Ok(Event::Unset { .. })));
    source.close().unwrap();
    copy.close().unwrap();
}

#[test]
fn importing_again_replaces_by_digest_and_keeps_indexes_consistent() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = ManualClock::new(T0);
    let source = open(&a, &clock);
    let keys = populate(&source, &clock);
    let first = export_bytes(&source);
    source.set_data(&keys[0], "level", &9).unwrap();
    clock.advance(Duration::from_secs(100));
    source.extend(&keys[0]).unwrap();
    let second = export_bytes(&source);

    let copy = open(&b, &clock);
    copy.import(first.as_slice()).unwrap();
    let summary = copy.import(second.as_slice()).unwrap();
    assert_eq!((summary.imported, summary.replaced), (4, 4));
    assert!(copy.check().unwrap().is_healthy(), "{:?}", copy.check());
    assert_eq!(copy.stats().unwrap().sessions, 4);
    assert_eq!(copy.get_data::<u32>(&keys[0], "level").unwrap(), Some(9));
    assert_eq!(export_bytes(&copy), second);
    // Repeated lines in one input: the later one wins.
    let mut doubled = second.clone();
    doubled.extend(second.split(|&b| b == b'\n').nth(1).unwrap());
    doubled.push(b'\n');
    let summary = copy.import(doubled.as_slice()).unwrap();
    assert_eq!((summary.imported, summary.replaced), (5, 5));
    assert!(copy.check().unwrap().is_healthy());
}

#[test]
fn bad_import_lines_are_refused_with_their_line_number() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = ManualClock::new(T0);
    let source = open(&a, &clock);
    populate(&source, &clock);
    let good = String::from_utf8(export_bytes(&source)).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let empty_data = lines
        .iter()
        .find(|l| l.contains("\"data\":{}"))
        .expect("a session without data");
    let with_meta = lines
        .iter()
        .find(|l| l.contains("\"meta\":{"))
        .expect("a session with metadata");
    let copy = open(&b, &clock);

    let cases: Vec<(String, &str)> = vec![
        (String::new(), "line 1"),
        (lines[1..].join("\n"), "line 1"),
        (
            lines[0].replace(&format!(":{EXPORT_FORMAT}}}"), ":99}"),
            "newer than this sessiondb",
        ),
        (format!("{}\n{{\"digest\":1}}", lines[0]), "line 2"),
        (
            format!(
                "{}\n{}",
                lines[0],
                lines[1].replacen("\"digest\":\"", "\"digest\":\"zz", 1)
            ),
            "not 64 hex digits",
        ),
        (
            format!(
                "{}\n{}",
                lines[0],
                lines[1].replacen("\"actorId\":\"", "\"actorId\":\"\\u0007", 1)
            ),
            "control characters",
        ),
        (
            format!(
                "{}\n{}\n{}",
                lines[0],
                lines[1],
                lines[2].replacen("\"language\":\"", "\"language\":\"e n", 1)
            ),
            "line 3",
        ),
        (
            format!(
                "{}\n{}",
                lines[0],
                empty_data.replacen("\"data\":{}", "\"data\":{\"broken\":\"{nope\"}", 1)
            ),
            "is not JSON text",
        ),
        (
            format!(
                "{}\n{}",
                lines[0],
                with_meta.replacen("\"meta\":{", "\"meta\":{\"no spaces\":\"x\",", 1)
            ),
            "letters, digits",
        ),
    ];
    for (input, expected) in cases {
        let err = copy.import(input.as_bytes()).unwrap_err();
        assert!(matches!(err, Error::Import { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    assert_eq!(copy.stats().unwrap().sessions, 0);
    assert!(copy.check().unwrap().is_healthy());
}

#[test]
fn listing_and_finding_by_public_id() {
    let a = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(&a, &clock);
    let keys = populate(&store, &clock);
    let mut seen = Vec::new();
    store
        .for_each_session(|s| {
            seen.push(s.unwrap());
            true
        })
        .unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|s| s.key().is_none()));
    let mut actors: Vec<&str> = seen.iter().map(|s| s.actor_id()).collect();
    actors.sort_unstable();
    assert_eq!(actors, ["ghost", "guild:7", "p1", "p1"]);

    let mut visited = 0;
    store
        .for_each_session(|_| {
            visited += 1;
            false
        })
        .unwrap();
    assert_eq!(visited, 1, "returning false must stop the walk");

    let wanted = store.resolve(&keys[2]).unwrap();
    let found = store.find_by_id(wanted.id()).unwrap().unwrap();
    assert_eq!(found.actor_id(), "guild:7");
    assert_eq!(found.data(), wanted.data());
    assert!(store.find_by_id("no-such-id").unwrap().is_none());

    let ghost = seen.iter().find(|s| s.actor_id() == "ghost").unwrap();
    assert_eq!(
        store.earliest_expiry().unwrap(),
        Some(ghost.expires_at_ms())
    );
    store.reap_expired().unwrap();
    assert!(store.find_by_id(ghost.id()).unwrap().is_none());
}

#[test]
fn export_is_consistent_while_writers_run() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = SessionStore::open(Config::new(a.path()).max_sessions_per_actor(1)).unwrap();
    for i in 0..300 {
        store.register(&format!("p{i}"), "en", Data::new()).unwrap();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Re-registering replaces, so the store holds 300 sessions at every
        // commit; a torn snapshot would show more or fewer.
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .register(&format!("p{}", i % 300), "en", Data::new())
                    .unwrap();
                i += 1;
            }
        });
        for _ in 0..5 {
            let mut out = Vec::new();
            let summary = store.export(&mut out).unwrap();
            assert_eq!(summary.sessions, 300);
            let copy_dir = tempfile::tempdir_in(b.path()).unwrap();
            let copy = SessionStore::open(Config::new(copy_dir.path())).unwrap();
            assert_eq!(copy.import(out.as_slice()).unwrap().imported, 300);
            assert!(copy.check().unwrap().is_healthy());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

#[test]
fn an_export_whose_output_fails_reports_it_and_leaves_the_store_working() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let a = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(&a, &clock);
    for i in 0..1000 {
        store.register(&format!("p{i}"), "en", Data::new()).unwrap();
    }
    let err = store.export(Broken).unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    store.register("after", "en", Data::new()).unwrap();
    assert_eq!(store.stats().unwrap().sessions, 1001);
}

/// Store format 3 files a session under its actor and digest, so a digest
/// imported under another actor than the one already holding it is that
/// actor's own session; the stored one is untouched. (The Redis engine
/// files sessions by digest within the actor's bucket and refuses such a
/// line when both actors share a bucket.)
#[test]
fn an_imported_digest_of_another_actor_is_filed_under_its_own_actor() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(&dir, &clock);
    let key = store
        .register("p1", "en", Data::new())
        .unwrap()
        .key()
        .unwrap()
        .to_owned();
    let export = String::from_utf8(export_bytes(&store)).unwrap();
    let lines: Vec<&str> = export.lines().collect();
    let other = lines[1].replacen("\"actorId\":\"p1\"", "\"actorId\":\"p2\"", 1);
    let input = format!("{}\n{other}\n", lines[0]);
    let summary = store.import(input.as_bytes()).unwrap();
    assert_eq!((summary.imported, summary.replaced), (1, 0));
    let p1 = store.resolve(&key).unwrap();
    assert_eq!(p1.actor_id(), "p1");
    let p2 = store
        .actor_session("p2")
        .unwrap()
        .expect("imported under p2");
    assert_eq!(p2.id(), p1.id());
    assert_eq!(store.stats().unwrap().sessions, 2);
    assert!(store.check().unwrap().is_healthy());
}

/// A version 1 export (before metadata: no `meta`, and version 1 in the
/// header) is still read; its sessions have no metadata.
#[test]
fn a_version_1_export_is_still_read() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = ManualClock::new(T0);
    let source = open(&a, &clock);
    let keys = populate(&source, &clock);
    let text = String::from_utf8(export_bytes(&source)).unwrap();
    let version_1: String = text
        .lines()
        .filter(|l| !l.contains("\"meta\""))
        .map(|l| l.replace(&format!("\"version\":{EXPORT_FORMAT}"), "\"version\":1") + "\n")
        .collect();
    assert!(version_1.starts_with("{\"format\":\"sessiondb-export\",\"version\":1}"));
    let copy = open(&b, &clock);
    assert_eq!(copy.import(version_1.as_bytes()).unwrap().imported, 3);
    let first = copy.resolve(&keys[0]).unwrap();
    assert!(first.meta().is_empty());
    assert_eq!(first, source.resolve(&keys[0]).unwrap());
    assert!(copy.check().unwrap().is_healthy());
}
