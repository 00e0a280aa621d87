//! The shared engine on a real Redis server: several store instances (the
//! game-server nodes) on one server, and the faults a networked store
//! meets. Each test starts its own server (`common::redis`).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{find, RedisServer};
use common::{key_of, T0};
use sessiondb::{Config, Data, Durability, Error, Event, ManualClock, SessionStore, UnsetReason};

const FSYNC_ALWAYS: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

fn server(test: &str, args: &[&str]) -> Option<RedisServer> {
    find("redis-server", test).map(|binary| RedisServer::start(&binary, args))
}

fn config(server: &RedisServer, clock: &ManualClock) -> Config {
    Config::redis(&server.url)
        .clock(Arc::new(clock.clone()))
        .reaper_thread(false)
}

/// Events until `pred` holds of what was heard, or a 20 s deadline (which
/// only bounds a hang: the events come from another node's commits).
fn hear(rx: &crossbeam_channel::Receiver<Event>, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut heard = Vec::new();
    while !pred(&heard) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => heard.push(e),
            Err(_) => panic!("gave up waiting for events; heard {heard:?}"),
        }
    }
    heard
}

#[test]
fn two_nodes_share_sessions_and_hear_each_others_changes() {
    let Some(server) = server("two_nodes_share_sessions", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let a = SessionStore::open(config(&server, &clock).node_id("node-a")).unwrap();
    let b = SessionStore::open(config(&server, &clock).node_id("node-b")).unwrap();
    let (heard_a, heard_b) = (a.subscribe(), b.subscribe());

    let s = a.register("p1", "en", Data::new()).unwrap();
    let key = key_of(&s);
    // The other node resolves it, changes it, and ends it.
    assert_eq!(b.resolve(&key).unwrap().node_id(), Some("node-a"));
    b.set_data(&key, "gold", &5).unwrap();
    assert_eq!(a.get_data::<u32>(&key, "gold").unwrap(), Some(5));
    b.logout(&key).unwrap();
    assert_eq!(
        a.is_valid(&key).unwrap_err().reason(),
        Some(sessiondb::Reason::NoSession)
    );

    for rx in [&heard_a, &heard_b] {
        let events = hear(rx, |h| h.len() == 2);
        assert!(matches!(&events[0], Event::Set { id, .. } if id == s.id()));
        assert!(matches!(
            &events[1],
            Event::Unset { id, reason: UnsetReason::LoggedOut, .. } if id == s.id()
        ));
    }
    assert_eq!(a.stats().unwrap().sessions, 0);
    assert!(b.check().unwrap().is_healthy());
}

/// A node's subscription waits for messages in short reads; a quiet spell
/// (reads that time out) must not cost it the next message.
#[test]
fn a_change_after_a_quiet_spell_is_heard_on_the_other_node() {
    let Some(server) = server("a_change_after_a_quiet_spell", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let a = SessionStore::open(config(&server, &clock)).unwrap();
    let b = SessionStore::open(config(&server, &clock)).unwrap();
    let heard = b.subscribe();
    for round in 0..3 {
        let s = a.register(&format!("p{round}"), "en", Data::new()).unwrap();
        let events = hear(&heard, |h| !h.is_empty());
        assert!(matches!(&events[0], Event::Set { id, .. } if id == s.id()));
        // Several of the subscription's reads time out meanwhile (real
        // time: the network's, not the store's clock).
        std::thread::sleep(Duration::from_millis(350));
    }
}

#[test]
fn racing_registers_at_the_cap_leave_exactly_the_cap() {
    let Some(server) = server("racing_registers_at_the_cap", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let nodes: Vec<SessionStore> = (0..2)
        .map(|_| SessionStore::open(config(&server, &clock).max_sessions_per_actor(2)).unwrap())
        .collect();
    let heard = nodes[0].subscribe();
    const PER_THREAD: usize = 20;
    std::thread::scope(|scope| {
        for node in &nodes {
            for _ in 0..3 {
                scope.spawn(move || {
                    for _ in 0..PER_THREAD {
                        node.register("hero", "en", Data::new()).unwrap();
                    }
                });
            }
        }
    });
    let total = 2 * 3 * PER_THREAD;
    let events = hear(&heard, |h| h.len() == 2 * total - 2);
    let (sets, replaced) = common::sets_and_replaced(&events);
    assert_eq!((sets, replaced), (total, total - 2));
    for node in &nodes {
        assert_eq!(node.stats().unwrap().sessions, 2);
    }
    assert!(nodes[1].check().unwrap().is_healthy());
}

#[test]
fn racing_updates_of_one_session_lose_nothing() {
    let Some(server) = server("racing_updates_of_one_session", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let nodes: Vec<SessionStore> = (0..2)
        .map(|_| SessionStore::open(config(&server, &clock)).unwrap())
        .collect();
    let key = key_of(&nodes[0].register("p1", "en", Data::new()).unwrap());
    std::thread::scope(|scope| {
        for node in &nodes {
            for _ in 0..3 {
                let key = &key;
                scope.spawn(move || {
                    for _ in 0..20 {
                        node.update(key, |d| {
                            let n: u64 = d.get("n").ok().flatten().unwrap_or(0);
                            d.insert("n", &(n + 1)).map(drop)
                        })
                        .unwrap()
                        .unwrap();
                    }
                });
            }
        }
    });
    assert_eq!(nodes[1].get_data::<u64>(&key, "n").unwrap(), Some(120));
}

#[test]
fn reapers_on_two_nodes_end_each_session_exactly_once() {
    let Some(server) = server("reapers_on_two_nodes", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let nodes: Vec<SessionStore> = (0..2)
        .map(|_| SessionStore::open(config(&server, &clock).reap_batch(7)).unwrap())
        .collect();
    let heard = nodes[0].subscribe();
    let heard_1 = nodes[1].subscribe();
    let ids: BTreeSet<String> = (0..150)
        .map(|i| {
            nodes[i % 2]
                .register(&format!("p{i}"), "en", Data::new())
                .unwrap()
                .id()
                .to_owned()
        })
        .collect();
    // Each node learns of the other's sessions from their events.
    hear(&heard_1, |h| h.len() == 150);
    clock.advance(Duration::from_secs(3600));
    let reaped: usize = std::thread::scope(|scope| {
        let passes: Vec<_> = nodes
            .iter()
            .map(|n| scope.spawn(move || n.reap_expired().unwrap()))
            .collect();
        passes.into_iter().map(|p| p.join().unwrap()).sum()
    });
    assert_eq!(reaped, 150, "each session reaped by exactly one node");
    let events = hear(&heard, |h| {
        h.iter()
            .filter(|e| matches!(e, Event::Unset { .. }))
            .count()
            == 150
    });
    let ended: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Unset { id, reason, .. } => {
                assert_eq!(*reason, UnsetReason::Expired);
                Some(id.as_str())
            }
            _ => None,
        })
        .collect();
    let unique: BTreeSet<String> = ended.iter().map(|s| s.to_string()).collect();
    assert_eq!(unique.len(), ended.len(), "no session announced twice");
    assert_eq!(unique, ids);
    assert_eq!(nodes[1].stats().unwrap().sessions, 0);
    assert!(nodes[1].check().unwrap().is_healthy());
}

/// The commands a server ran between two readings, the readings excluded.
fn commands_run(raw: &mut redis::Connection) -> u64 {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(raw).unwrap();
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Each bucket is reaped by one node: every node reaps some of the due
/// sessions, none twice, and a node with nothing due sends the server
/// nothing however often its reaper looks.
#[test]
fn nodes_share_the_buckets_and_an_idle_reaper_costs_nothing() {
    let Some(server) = server("nodes_share_the_buckets", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let nodes: Vec<SessionStore> = (0..3)
        .map(|_| SessionStore::open(config(&server, &clock)).unwrap())
        .collect();
    let heard: Vec<_> = nodes.iter().map(SessionStore::subscribe).collect();
    for i in 0..120 {
        nodes[0]
            .register(&format!("p{i}"), "en", Data::new())
            .unwrap();
    }
    for rx in &heard[1..] {
        hear(rx, |h| h.len() == 120);
    }
    let mut raw = server.connection();
    // A node's first pass reads its buckets' intents (as after a lost
    // subscription); after it, nothing due costs nothing.
    for n in &nodes {
        assert_eq!(n.reap_expired().unwrap(), 0);
    }
    let before = commands_run(&mut raw);
    for _ in 0..5 {
        for n in &nodes {
            assert_eq!(n.reap_expired().unwrap(), 0);
        }
    }
    assert_eq!(commands_run(&mut raw), before, "idle reapers sent commands");
    clock.advance(Duration::from_secs(3600));
    let reaped: Vec<usize> = nodes.iter().map(|n| n.reap_expired().unwrap()).collect();
    assert_eq!(reaped.iter().sum::<usize>(), 120, "{reaped:?}");
    assert!(
        reaped.iter().all(|&r| r > 0),
        "each node reaps its own buckets: {reaped:?}"
    );
    let ended = hear(&heard[0], |h| {
        h.iter()
            .filter(|e| matches!(e, Event::Unset { .. }))
            .count()
            == 120
    });
    let ids: Vec<&str> = ended
        .iter()
        .filter_map(|e| match e {
            Event::Unset { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no expiry announced twice");
    // Nothing due any more: idle again.
    let before = commands_run(&mut raw);
    for n in &nodes {
        assert_eq!(n.reap_expired().unwrap(), 0);
    }
    assert_eq!(commands_run(&mut raw), before, "idle reapers sent commands");
}

#[test]
fn a_reader_behind_the_stream_retention_hears_lagged_with_the_exact_count() {
    let Some(server) = server("lagged_with_the_exact_count", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let config = config(&server, &clock).event_retention(5).redis_buckets(1);
    let store = SessionStore::open(config).unwrap();
    let rx = store.subscribe();
    let first = store.register("p0", "en", Data::new()).unwrap();
    hear(&rx, |h| h.len() == 1);
    // 40 more events are appended to the bucket's stream, as a writer
    // elsewhere appends them (one entry each), but their messages never
    // reach this node (as while its subscription was down): by the time it
    // reads the stream, only the last 5 are left.
    let mut raw = server.connection();
    let (stream, head) = (
        only_key(&mut raw, "sessiondb{*}:x"),
        only_key(&mut raw, "sessiondb{*}:xh"),
    );
    let burst = r#"
        for i = 1, 40 do
          local h = redis.call('HMGET', KEYS[2], 'n', 'p')
          local n = tonumber(h[1]) + 1
          local e = '{"t":"unset","id":"burst' .. i .. '","actorId":"p0","reason":"expired"}'
          local id = redis.call('XADD', KEYS[1], 'MAXLEN', 5, '*',
            'n', n, 'k', 1, 'p', h[2], 'o', 'elsewhere', 'e', e)
          redis.call('HSET', KEYS[2], 'n', n, 'p', id)
        end
        return 1"#;
    let _: i64 = redis::cmd("EVAL")
        .arg(burst)
        .arg(2)
        .arg(&stream)
        .arg(&head)
        .query(&mut raw)
        .unwrap();
    // The next change's message does not follow what this node heard: it
    // reads the stream, and reports what the stream no longer holds (the
    // change's own entry trims only whole blocks of entries, so the 5 stay).
    store.logout(&key_of(&first)).unwrap();
    let events = hear(&rx, |h| h.len() == 7);
    assert_eq!(events[0], Event::Lagged { missed: 35 });
    for (i, e) in events[1..6].iter().enumerate() {
        let want = format!("burst{}", 36 + i);
        assert!(matches!(e, Event::Unset { id, .. } if *id == want), "{e:?}");
    }
    assert!(
        matches!(
            &events[6],
            Event::Unset {
                reason: UnsetReason::LoggedOut,
                ..
            }
        ),
        "{events:?}"
    );
    // Events after the gap flow as before.
    store.register("p1", "en", Data::new()).unwrap();
    assert!(matches!(&hear(&rx, |h| h.len() == 1)[0], Event::Set { .. }));
}

/// The one key of the test's store matching `pattern`.
fn only_key(raw: &mut redis::Connection, pattern: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(raw).unwrap();
    assert_eq!(keys.len(), 1, "{pattern}: {keys:?}");
    keys[0].clone()
}

#[test]
fn an_unreachable_server_gives_a_typed_error_in_time_and_the_store_reconnects() {
    let Some(mut server) = server("an_unreachable_server", FSYNC_ALWAYS) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store =
        SessionStore::open(config(&server, &clock).redis_timeout(Duration::from_millis(300)))
            .unwrap();
    let key = key_of(&store.register("p1", "en", Data::new()).unwrap());
    server.kill();
    let started = Instant::now();
    for outcome in [
        store.register("p2", "en", Data::new()).map(drop),
        store.resolve(&key).map(drop),
        store.stats().map(drop),
    ] {
        assert!(
            matches!(outcome, Err(Error::Unavailable { .. })),
            "{outcome:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let message = store.resolve(&key).unwrap_err().to_string();
    assert!(message.contains("reconnects by itself"), "{message}");

    server.restart();
    // Back: the same store carries on, and the session was kept.
    let deadline = Instant::now() + Duration::from_secs(20);
    let resolved = loop {
        match store.resolve(&key) {
            Err(Error::Unavailable { .. }) if Instant::now() < deadline => std::thread::yield_now(),
            other => break other,
        }
    };
    assert_eq!(resolved.unwrap().actor_id(), "p1");
    store.register("p2", "en", Data::new()).unwrap();
    assert!(store.check().unwrap().is_healthy());
}

#[test]
fn a_flushed_script_cache_is_loaded_again() {
    let Some(server) = server("a_flushed_script_cache", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = SessionStore::open(config(&server, &clock)).unwrap();
    let mut raw = server.connection();
    for i in 0..3 {
        let _: String = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw).unwrap();
        store.register(&format!("p{i}"), "en", Data::new()).unwrap();
    }
    assert_eq!(store.stats().unwrap().sessions, 3);
}

#[test]
fn immediate_writes_survive_a_server_killed_and_restarted_under_load() {
    let Some(mut server) = server("immediate_writes_survive_a_server_kill", FSYNC_ALWAYS) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = SessionStore::open(
        config(&server, &clock)
            .durability(Durability::Immediate)
            .redis_timeout(Duration::from_millis(500)),
    )
    .unwrap();
    const WRITERS: usize = 4;
    const ACKED_PER_WRITER: usize = 40;
    let acked = std::sync::atomic::AtomicUsize::new(0);
    let restarted = std::sync::atomic::AtomicBool::new(false);
    let (keys, failures) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let (store, acked, restarted) = (&store, &acked, &restarted);
                scope.spawn(move || {
                    let (mut keys, mut failures, mut after_restart) = (Vec::new(), 0, 0);
                    let mut i = 0;
                    // Writing on through the kill and the restart, and on
                    // after it.
                    while keys.len() < ACKED_PER_WRITER || after_restart < 5 {
                        i += 1;
                        let back = restarted.load(std::sync::atomic::Ordering::SeqCst);
                        match store.register(&format!("p{t}-{i}"), "en", Data::new()) {
                            Ok(s) => {
                                keys.push(key_of(&s));
                                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                after_restart += usize::from(back);
                            }
                            // The only failure the server's absence may cause.
                            Err(Error::Unavailable { .. }) => failures += 1,
                            Err(e) => panic!("writer {t}: {e:?}"),
                        }
                    }
                    (keys, failures)
                })
            })
            .collect();
        // SIGKILL the server in the middle of the writes, then bring it back.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(std::sync::atomic::Ordering::SeqCst) < WRITERS * ACKED_PER_WRITER / 3 {
            assert!(Instant::now() < deadline, "the writers made no progress");
            std::thread::yield_now();
        }
        server.restart();
        restarted.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut keys = Vec::new();
        let mut failures = 0;
        for w in writers {
            let (k, f) = w.join().unwrap();
            keys.extend(k);
            failures += f;
        }
        (keys, failures)
    });
    // Calls that met the dead server failed with `Unavailable` (any other
    // error panics its writer); how many did depends on timing.
    println!("{failures} calls met the dead server");
    // Every acknowledged register is there, and only those that committed.
    let store = SessionStore::open(config(&server, &clock)).unwrap();
    for key in &keys {
        store.is_valid(key).unwrap();
    }
    let count = store.stats().unwrap().sessions;
    assert!(count >= keys.len() as u64, "{count} < {}", keys.len());
    assert!(count <= (keys.len() + failures) as u64);
    assert!(store.check().unwrap().is_healthy());
}

#[test]
fn open_refuses_what_would_break_its_guarantees() {
    let Some(binary) = find("redis-server", "open_refuses") else {
        return;
    };
    let clock = ManualClock::new(T0);
    let refused = |server: &RedisServer, config: Config| -> (&'static str, String) {
        match SessionStore::open(config) {
            Err(Error::InvalidConfig { setting, problem }) => (setting, problem),
            other => panic!("{} should be refused: {other:?}", server.url),
        }
    };
    let evicting = RedisServer::start(&binary, &["--maxmemory-policy", "allkeys-lru"]);
    let (setting, problem) = refused(&evicting, config(&evicting, &clock));
    assert_eq!(setting, "redis_url");
    assert!(problem.contains("maxmemory-policy noeviction"), "{problem}");

    let no_aof = RedisServer::start(&binary, &["--appendonly", "no"]);
    let immediate = config(&no_aof, &clock).durability(Durability::Immediate);
    let (setting, problem) = refused(&no_aof, immediate);
    assert_eq!(setting, "durability");
    assert!(problem.contains("appendonly yes"), "{problem}");

    // AOF without fsync on every write: fine where WAITAOF exists (Redis
    // 7.2+, Valkey), refused where it does not (Redis 7.0).
    let everysec = RedisServer::start(
        &binary,
        &["--appendonly", "yes", "--appendfsync", "everysec"],
    );
    let waitaof: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("WAITAOF")
        .query(&mut everysec.connection())
        .unwrap();
    let has_waitaof = matches!(&waitaof, redis::Value::Array(v) if v.first().is_some_and(|c| *c != redis::Value::Nil));
    let immediate = config(&everysec, &clock).durability(Durability::Immediate);
    if has_waitaof {
        SessionStore::open(immediate).unwrap().close().unwrap();
    } else {
        let (setting, problem) = refused(&everysec, immediate);
        assert_eq!(setting, "durability");
        assert!(problem.contains("appendfsync always"), "{problem}");
    }

    let buckets = RedisServer::start(&binary, &[]);
    SessionStore::open(config(&buckets, &clock).redis_buckets(8))
        .unwrap()
        .close()
        .unwrap();
    let (setting, problem) = refused(&buckets, config(&buckets, &clock).redis_buckets(4));
    assert_eq!(setting, "redis_buckets");
    assert!(problem.contains("created with 8 buckets"), "{problem}");
    // Without an explicit count the store's own is used.
    SessionStore::open(config(&buckets, &clock)).unwrap();

    for url in ["http://127.0.0.1:6379", "redis://[::1", ""] {
        match SessionStore::open(Config::redis(url)) {
            Err(Error::InvalidConfig {
                setting: "redis_url",
                ..
            }) => {}
            other => panic!("{url:?} should be refused: {other:?}"),
        }
    }
    // A password never shows in a message.
    let e = SessionStore::open(
        Config::redis("redis://user:hunter2@127.0.0.1:1/0")
            .redis_timeout(Duration::from_millis(200)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
}

#[test]
fn stores_under_different_prefixes_share_a_server_without_meeting() {
    let Some(server) = server("stores_under_different_prefixes", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let game = SessionStore::open(config(&server, &clock).redis_prefix("game")).unwrap();
    let staging = SessionStore::open(config(&server, &clock).redis_prefix("staging")).unwrap();
    let key = key_of(&game.register("p1", "en", Data::new()).unwrap());
    assert_eq!(
        staging.is_valid(&key).unwrap_err().reason(),
        Some(sessiondb::Reason::NoSession)
    );
    assert_eq!(
        (
            game.stats().unwrap().sessions,
            staging.stats().unwrap().sessions
        ),
        (1, 0)
    );
    // No session key carries a Redis TTL: expiry is sessiondb's.
    let mut raw = server.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("game{*}:s:*")
        .query(&mut raw)
        .unwrap();
    assert_eq!(keys.len(), 1);
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut raw).unwrap();
    assert_eq!(ttl, -1);
}

#[test]
fn export_from_sled_imports_into_redis_and_back() {
    let Some(server) = server("export_from_sled_imports_into_redis", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let sled = SessionStore::open(common::config(&dir, &clock)).unwrap();
    let mut keys = HashMap::new();
    for i in 0..30 {
        let mut data = Data::new();
        data.insert("level", &i).unwrap();
        let s = sled.register(&format!("p{i}"), "en", data).unwrap();
        keys.insert(key_of(&s), i);
    }
    let mut export = Vec::new();
    sled.export(&mut export).unwrap();
    let redis = SessionStore::open(config(&server, &clock)).unwrap();
    let summary = redis.import(export.as_slice()).unwrap();
    assert_eq!(summary.imported, 30);
    for (key, level) in &keys {
        assert_eq!(redis.get_data::<i32>(key, "level").unwrap(), Some(*level));
    }
    assert!(redis.check().unwrap().is_healthy());
    let mut back = Vec::new();
    redis.export(&mut back).unwrap();
    let other = tempfile::tempdir().unwrap();
    let again = SessionStore::open(common::config(&other, &clock)).unwrap();
    assert_eq!(again.import(back.as_slice()).unwrap().imported, 30);
    for key in keys.keys() {
        again.is_valid(key).unwrap();
    }
}

#[test]
fn check_finds_and_repair_fixes_broken_redis_indexes() {
    let Some(server) = server("check_and_repair_on_redis", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = SessionStore::open(config(&server, &clock).redis_buckets(1)).unwrap();
    for i in 0..5 {
        store.register(&format!("p{i}"), "en", Data::new()).unwrap();
    }
    let mut raw = server.connection();
    // The one bucket's keys: `sessiondb{<tag>}:...`.
    let expiries = only_key(&mut raw, "sessiondb{*}:e");
    let bucket = expiries.trim_end_matches(":e");
    // A dangling expiry entry (so a count one too high: a bucket's count
    // is its expiry index's size), a missing actor entry and a corrupt
    // record, made behind the store's back.
    let member = format!("{}:ghost", "ab".repeat(32));
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{bucket}:e"))
        .arg(1)
        .arg(member)
        .query(&mut raw)
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{bucket}:a:p0"))
        .query(&mut raw)
        .unwrap();
    let p1: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{bucket}:a:p1"))
        .query(&mut raw)
        .unwrap();
    let p1_record = format!("{bucket}:s:{}", p1[0]);
    let _: i64 = redis::cmd("HSET")
        .arg(&p1_record)
        .arg("r")
        .arg("garbage")
        .query(&mut raw)
        .unwrap();

    let report = store.check().unwrap();
    // The ghost's expiry entry, and the corrupt record's two entries.
    assert_eq!(
        (report.stale_expiries, report.stale_actors),
        (2, 1),
        "{report:?}"
    );
    assert_eq!(
        (report.corrupt, report.missing_actors),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(report.count_was, Some(6), "{report:?}");
    let repaired = store.repair().unwrap();
    assert!(repaired.repaired);
    assert!(store.check().unwrap().is_healthy());
    assert_eq!(store.quarantined().unwrap(), 1);
    assert_eq!(store.stats().unwrap().sessions, 4);
}

#[test]
fn valkey_makes_immediate_writes_durable_with_waitaof() {
    let Some(binary) = find("valkey-server", "valkey_waitaof") else {
        return;
    };
    let server = RedisServer::start(
        &binary,
        &["--appendonly", "yes", "--appendfsync", "everysec"],
    );
    let clock = ManualClock::new(T0);
    let store =
        SessionStore::open(config(&server, &clock).durability(Durability::Immediate)).unwrap();
    for i in 0..5 {
        store.register(&format!("p{i}"), "en", Data::new()).unwrap();
    }
    let stats = store.stats().unwrap();
    assert_eq!(
        stats.syncs, 5,
        "one WAITAOF per acknowledged write: {stats:?}"
    );
    store.flush().unwrap();
}

/// `WAITAOF` covers only the writes of the connection it runs on: each
/// commit's wait must follow its own script on the same connection, or an
/// unsynced change could be acknowledged. Watched with `MONITOR` while
/// eight threads write (the store's connections are told apart by their
/// TCP ports).
#[test]
fn each_durability_wait_runs_on_the_connection_that_wrote() {
    let Some(binary) = find("valkey-server", "wait_on_the_connection_that_wrote") else {
        return;
    };
    let port = common::redis::free_ports(1)[0].to_string();
    let server = RedisServer::start(
        &binary,
        &[
            "--port",
            &port,
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ],
    );
    let url = format!("redis://127.0.0.1:{port}");
    let store = SessionStore::open(
        Config::redis(&url)
            .reaper_thread(false)
            .durability(Durability::Immediate),
    )
    .unwrap();
    // Every command the server runs, with the client that sent it.
    let mut monitor = server.connection();
    monitor
        .send_packed_command(&redis::cmd("MONITOR").get_packed_command())
        .unwrap();
    let _: redis::Value = monitor.recv_response().unwrap();
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    store
                        .register(&format!("t{t}p{i}"), "en", Data::new())
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    store.register("last", "en", Data::new()).unwrap();
    // Per client: a script was sent and its wait is due next.
    let mut due: HashMap<String, bool> = HashMap::new();
    let mut waits = 0;
    monitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        let line: String = match monitor.recv_response() {
            Ok(v) => redis::from_redis_value(v).unwrap(),
            Err(e) => panic!("the monitor stopped before the last register: {e}"),
        };
        // `<time> [<db> <client>] "<command>" ...`
        let Some((client, command)) = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(who, what)| (who.to_owned(), what.trim().to_owned()))
        else {
            continue;
        };
        if client.ends_with("lua") {
            continue;
        }
        let name = command
            .split(' ')
            .next()
            .unwrap_or("")
            .trim_matches('"')
            .to_ascii_uppercase();
        let wait_due = due.get(&client).copied().unwrap_or(false);
        match name.as_str() {
            "WAITAOF" => {
                assert!(
                    wait_due,
                    "client {client} ran WAITAOF after no script of its own"
                );
                waits += 1;
            }
            _ => assert!(
                !wait_due,
                "client {client} ran {name} between a script and its wait"
            ),
        }
        due.insert(client, matches!(name.as_str(), "EVALSHA" | "EVAL"));
        if name == "WAITAOF" && waits > 8 * 40 {
            break;
        }
    }
}

/// A primary demoted to replica (as in any failover) answers writes with
/// READONLY: that is "unavailable", not a storage failure, and the store
/// writes again, on fresh connections, as soon as the server is a primary.
#[test]
fn a_server_demoted_to_replica_is_unavailable_until_it_is_a_primary_again() {
    let Some(server) = server("demoted_to_replica", &[]) else {
        return;
    };
    // Another server, on a TCP port (REPLICAOF names host and port).
    let port = common::redis::free_ports(1)[0].to_string();
    let Some(_primary) = self::server("demoted_to_replica", &["--port", &port]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = SessionStore::open(config(&server, &clock)).unwrap();
    store.register("p1", "en", Data::new()).unwrap();
    assert!(store.ping().is_ok());

    let mut raw = server.connection();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(&port)
        .query(&mut raw)
        .unwrap();
    let started = Instant::now();
    let err = store.register("p2", "en", Data::new()).unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("read only")
            || err.to_string().contains("READONLY"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(store.ping(), Err(Error::Unavailable { .. })));

    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut raw)
        .unwrap();
    store.register("p3", "en", Data::new()).unwrap();
    assert!(store.ping().is_ok());
}

#[test]
fn ping_answers_while_the_server_does_and_fails_typed_when_it_does_not() {
    let Some(mut server) = server("ping", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store =
        SessionStore::open(config(&server, &clock).redis_timeout(Duration::from_millis(300)))
            .unwrap();
    assert!(store.ping().unwrap() < Duration::from_secs(5));
    server.kill();
    assert!(matches!(store.ping(), Err(Error::Unavailable { .. })));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.ping().is_err() {
        assert!(Instant::now() < deadline, "ping never recovered");
        std::thread::yield_now();
    }
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it in `dir`, with
/// the `openssl` command; `None` (after saying so) where it is missing.
fn tls_files(dir: &std::path::Path) -> Option<()> {
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    };
    if openssl(&["version"]).is_err() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("openssl is not installed, and CI=true requires it");
        }
        println!("skipped: the rediss:// test needs the openssl command (apt-get install openssl)");
        return None;
    }
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for args in [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ][..],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    ] {
        assert!(openssl(args).unwrap().success(), "openssl {args:?}");
    }
    Some(())
}

#[test]
fn a_rediss_url_talks_tls_to_a_server_signed_by_a_private_ca() {
    let Some(binary) = common::redis::find_with_tls("rediss") else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    if tls_files(certs.path()).is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = |name: &str| certs.path().join(name).display().to_string();
    let server = RedisServer::start(
        &binary,
        &[
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    let clock = ManualClock::new(T0);
    let url = format!("rediss://127.0.0.1:{port}/0");
    let store = SessionStore::open(
        Config::redis(&url)
            .redis_tls_ca(certs.path().join("ca.pem"))
            .clock(Arc::new(clock.clone()))
            .reaper_thread(false),
    )
    .unwrap();
    let key = key_of(&store.register("p1", "en", Data::new()).unwrap());
    assert_eq!(store.resolve(&key).unwrap().actor_id(), "p1");
    // The session is on the server the unix socket reaches too.
    let plain = SessionStore::open(config(&server, &clock)).unwrap();
    plain.is_valid(&key).unwrap();
    // A certificate nobody vouches for is refused.
    let untrusted = SessionStore::open(
        Config::redis(&url)
            .clock(Arc::new(clock.clone()))
            .redis_timeout(Duration::from_millis(500)),
    );
    assert!(untrusted.is_err(), "{untrusted:?}");
}

#[test]
fn a_password_and_a_database_index_in_the_url_are_used() {
    let Some(server) = server("password_and_database_index", &["--requirepass", "s3cret"]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let in_db3 = Config::redis(format!("{}&db=3", server.url))
        .clock(Arc::new(clock.clone()))
        .reaper_thread(false);
    let store = SessionStore::open(in_db3).unwrap();
    let key = key_of(&store.register("p1", "en", Data::new()).unwrap());
    store.is_valid(&key).unwrap();
    // The keys are in database 3, not 0.
    let mut raw = server.connection();
    let count = |raw: &mut redis::Connection| -> usize {
        let keys: Vec<String> = redis::cmd("KEYS").arg("sessiondb*").query(raw).unwrap();
        keys.len()
    };
    assert_eq!(count(&mut raw), 0);
    let _: () = redis::cmd("SELECT").arg(3).query(&mut raw).unwrap();
    assert!(count(&mut raw) > 0);
    // A wrong or missing password is a configuration error, not an outage,
    // and the password is not shown.
    let wrong = server.url.replace("s3cret", "wrong-pass");
    let missing = server.url.replace("?pass=s3cret", "");
    for url in [wrong, missing] {
        let e = SessionStore::open(Config::redis(&url).redis_timeout(Duration::from_millis(500)))
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { setting: "redis_url", problem } if problem.contains("password")),
            "{e:?}"
        );
        assert!(!format!("{e} {e:?}").contains("wrong-pass"), "{e:?}");
    }
}

/// A failover can lose the last entries of a bucket's stream that a node
/// had already heard (its replica had not received them); the new
/// primary's next entry then names a predecessor the nodes never heard.
/// Each node reports what it heard that the store lost as `Lagged`, then
/// hears the new history: never a silent gap, never an event twice.
#[test]
fn entries_a_failover_lost_are_reported_as_lagged() {
    let Some(server) = server("entries_a_failover_lost", &[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let config = config(&server, &clock).redis_buckets(1);
    let a = SessionStore::open(config.clone()).unwrap();
    let b = SessionStore::open(config).unwrap();
    let heard = b.subscribe();
    for i in 0..5 {
        a.register(&format!("p{i}"), "en", Data::new()).unwrap();
    }
    hear(&heard, |h| h.len() == 5);
    // The failover, as the nodes see it: the new primary's stream ends two
    // entries earlier, and its head with it.
    let mut raw = server.connection();
    let (stream, head) = (
        only_key(&mut raw, "sessiondb{*}:x"),
        only_key(&mut raw, "sessiondb{*}:xh"),
    );
    let lost: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(2)
        .query(&mut raw)
        .unwrap();
    for entry in &lost.ids {
        let _: i64 = redis::cmd("XDEL")
            .arg(&stream)
            .arg(&entry.id)
            .query(&mut raw)
            .unwrap();
    }
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut raw)
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(&head)
        .arg("n")
        .arg(3)
        .arg("p")
        .arg(&last.ids[0].id)
        .query(&mut raw)
        .unwrap();
    let next = a.register("p5", "en", Data::new()).unwrap();
    let events = hear(&heard, |h| {
        h.iter()
            .any(|e| matches!(e, Event::Set { id, .. } if id == next.id()))
    });
    assert_eq!(events[0], Event::Lagged { missed: 2 }, "{events:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    // Nothing more: the lost entries are not heard again.
    assert!(heard.recv_timeout(Duration::from_millis(300)).is_err());
}
