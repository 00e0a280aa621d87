//! Redis servers failing over under the store: a cluster primary killed
//! with SIGKILL or handed over with `CLUSTER FAILOVER`, and a primary
//! behind Sentinel killed (with its replica in sync, or still in its
//! initial sync), while game-server nodes (stores in this process) write;
//! and the copies a write is taken with: a replica that just attached, and
//! `min_replicas`. Each test starts servers of its own (`common::redis`);
//! without `redis-server` they say so and pass, unless `CI=true`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::redis::{
    find, free_ports, replica_state, RedisCluster, RedisSentinel, RedisServer, SENTINEL_MASTER,
};
use common::T0;
use sessiondb::{Config, Data, Durability, Error, Event, ManualClock, SessionStore, UnsetReason};

/// How long after a failover began every node must be writing again.
const BACK_WITHIN: Duration = Duration::from_secs(10);

/// Writers registering sessions of fresh actors on every store until told
/// to stop, through whatever the servers do: each returns the sessions it
/// was told were stored (actor, id). Every outcome is logged with its time
/// and store.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(usize, Instant, bool)>>>,
    stores: usize,
    writers: Vec<JoinHandle<Vec<(String, String)>>>,
}

impl Load {
    fn start(stores: &[SessionStore], per_store: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for (s, store) in stores.iter().enumerate() {
            for t in 0..per_store {
                let (store, stop, log) = (store.clone(), stop.clone(), log.clone());
                writers.push(std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let actor = format!("s{s}w{t}-{i}");
                        let ok = match store.register(&actor, "en", Data::new()) {
                            Ok(session) => {
                                acked.push((actor, session.id().to_owned()));
                                true
                            }
                            // A failover under way: the only failure allowed.
                            Err(Error::Unavailable { .. }) => false,
                            Err(e) => panic!("store {s} writer {t}: {e:?}"),
                        };
                        log.lock().unwrap().push((s, Instant::now(), ok));
                        if !ok {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    acked
                }));
            }
        }
        Load {
            stop,
            log,
            stores: stores.len(),
            writers,
        }
    }

    /// Waits until every store has written without a failure for half a
    /// second since its last failure after `since`, and returns how long
    /// after `since` the last failure came: the outage the writers saw.
    fn all_back(&self, since: Instant) -> Duration {
        let deadline = since + BACK_WITHIN + Duration::from_secs(1);
        loop {
            let log = self.log.lock().unwrap().clone();
            let mut outage = Duration::ZERO;
            let back = (0..self.stores).all(|s| {
                let mine = log.iter().filter(|(i, t, _)| *i == s && *t > since);
                let last_failure = mine
                    .clone()
                    .filter(|(_, _, ok)| !ok)
                    .map(|(_, t, _)| *t)
                    .max();
                let quiet_from = last_failure.unwrap_or(since);
                outage = outage.max(quiet_from - since);
                mine.filter(|(_, _, ok)| *ok)
                    .any(|(_, t, _)| *t > quiet_from)
                    && quiet_from.elapsed() >= Duration::from_millis(500)
            });
            if back {
                return outage;
            }
            assert!(
                Instant::now() < deadline,
                "not every node wrote again within {BACK_WITHIN:?} of the failover"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::SeqCst);
        self.writers
            .into_iter()
            .flat_map(|w| w.join().expect("writer"))
            .collect()
    }
}

/// Every acknowledged session is stored, as every node sees it.
fn all_present(stores: &[SessionStore], acked: &[(String, String)]) {
    for store in stores {
        for (actor, id) in acked {
            let found = store.actor_session(actor).unwrap();
            assert_eq!(
                found.as_ref().map(|s| s.id()),
                Some(id.as_str()),
                "{actor}'s acknowledged session"
            );
        }
    }
}

/// What one node heard of each session: `session.set`s and `session.unset`s
/// (with reason `expired`), and how many events it was told it missed.
#[derive(Default, Debug)]
struct Heard {
    sets: HashMap<String, usize>,
    expired: HashMap<String, usize>,
    lagged: u64,
}

/// Reads `rx` until `done` holds of what was heard (or 30 s pass, failing),
/// then for a quiet half second more, so that a duplicate would show.
fn listen(rx: &crossbeam_channel::Receiver<Event>, done: impl Fn(&Heard) -> bool) -> Heard {
    let mut heard = Heard::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_until = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Set { id, .. }) => *heard.sets.entry(id).or_default() += 1,
            Ok(Event::Unset {
                id,
                reason: UnsetReason::Expired,
                ..
            }) => *heard.expired.entry(id).or_default() += 1,
            Ok(Event::Lagged { missed }) => heard.lagged += missed,
            Ok(_) => {}
            Err(_) => {}
        }
        match quiet_until {
            None if done(&heard) => quiet_until = Some(Instant::now() + Duration::from_millis(500)),
            Some(t) if Instant::now() >= t => return heard,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "gave up listening: {} sets, {} expiries and {} lagged heard",
            heard.sets.len(),
            heard.expired.len(),
            heard.lagged
        );
    }
}

/// Each acknowledged session was heard exactly once on this node, and no
/// session more than once.
fn once_each(heard: &HashMap<String, usize>, acked: &[(String, String)], what: &str) {
    for (actor, id) in acked {
        assert_eq!(heard.get(id), Some(&1), "{what} of {actor}'s session {id}");
    }
    if let Some((id, n)) = heard.iter().find(|(_, n)| **n > 1) {
        panic!("{what} of {id} heard {n} times");
    }
}

/// Events every test keeps: the listeners read only once the writers are
/// done, and each write is one event.
const EVENTS_KEPT: usize = 1 << 20;

fn cluster_config(cluster: &RedisCluster, clock: &ManualClock, durability: Durability) -> Config {
    Config::redis_cluster(cluster.seeds.clone())
        .clock(Arc::new(clock.clone()))
        .reaper_thread(false)
        .durability(durability)
        .ttl(Duration::from_secs(600))
        .event_capacity(EVENTS_KEPT)
}

/// A cluster primary killed with SIGKILL while two nodes write with
/// `Durability::Immediate` (each write fsynced and on a replica before it
/// is acknowledged): its replica takes over, both nodes write again within
/// ten seconds without a restart, nothing acknowledged is lost, and each
/// node hears each session's `set` and, once it expires, its `unset` exactly
/// once.
#[test]
fn a_killed_cluster_primary_loses_no_acknowledged_write() {
    let Some(binary) = find("redis-server", "a_killed_cluster_primary") else {
        return;
    };
    let cluster = RedisCluster::start(&binary);
    let clock = ManualClock::new(T0);
    let config = cluster_config(&cluster, &clock, Durability::Immediate);
    let stores = [
        SessionStore::open(config.clone()).unwrap(),
        SessionStore::open(config).unwrap(),
    ];
    let listeners: Vec<_> = stores.iter().map(SessionStore::subscribe).collect();
    let load = Load::start(&stores, 2);
    std::thread::sleep(Duration::from_millis(700));
    let victim = cluster.primaries()[0];
    let heir = cluster.replica_of(victim).expect("a replica");
    let killed = Instant::now();
    cluster.kill(victim);
    while cluster.role(heir).as_deref() != Some("master") {
        assert!(
            killed.elapsed() < BACK_WITHIN,
            "the replica did not take over"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let promoted = killed.elapsed();
    let outage = load.all_back(killed);
    assert!(outage < BACK_WITHIN, "writes failed for {outage:?}");
    let acked = load.finish();
    println!(
        "killed primary {victim}: {heir} promoted after {promoted:?}; the last failed write \
         {outage:?} after the kill; {} acknowledged",
        acked.len()
    );
    all_present(&stores, &acked);
    // Every acknowledged session heard once by every node...
    for rx in &listeners {
        let heard = listen(rx, |h| acked.iter().all(|(_, id)| h.sets.contains_key(id)));
        once_each(&heard.sets, &acked, "session.set");
    }
    // ...and, once expired, its end too, whichever node reaps it.
    clock.advance(Duration::from_secs(601));
    let reapers: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = s.clone();
            std::thread::spawn(move || s.reap_expired().unwrap())
        })
        .collect();
    let reaped: usize = reapers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reaped >= acked.len(), "{reaped} reaped of {}", acked.len());
    for rx in &listeners {
        let heard = listen(rx, |h| {
            acked.iter().all(|(_, id)| h.expired.contains_key(id))
        });
        once_each(&heard.expired, &acked, "session.unset expired");
    }
    for store in &stores {
        assert_eq!(store.stats().unwrap().sessions, 0);
        assert!(store.check().unwrap().is_healthy());
    }
}

/// `CLUSTER FAILOVER` (a planned hand-over, as in maintenance) under load,
/// with either durability: nothing acknowledged is lost, no node misses an
/// event, and the nodes go on writing.
#[test]
fn a_planned_cluster_failover_loses_nothing() {
    let Some(binary) = find("redis-server", "a_planned_cluster_failover") else {
        return;
    };
    let cluster = RedisCluster::start(&binary);
    for durability in [Durability::default(), Durability::Immediate] {
        let clock = ManualClock::new(T0);
        let config = cluster_config(&cluster, &clock, durability)
            .redis_prefix(format!("{durability:?}").replace(['(', ')', ' '], ""));
        let stores = [
            SessionStore::open(config.clone()).unwrap(),
            SessionStore::open(config).unwrap(),
        ];
        let listeners: Vec<_> = stores.iter().map(SessionStore::subscribe).collect();
        let load = Load::start(&stores, 2);
        std::thread::sleep(Duration::from_millis(500));
        let primary = cluster.primaries()[0];
        let replica = cluster.replica_of(primary).expect("a replica");
        let handed = Instant::now();
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut cluster.connection(replica))
            .unwrap();
        while cluster.role(replica).as_deref() != Some("master") {
            assert!(
                handed.elapsed() < BACK_WITHIN,
                "the replica did not take over"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let outage = load.all_back(handed);
        assert!(outage < BACK_WITHIN, "writes failed for {outage:?}");
        let acked = load.finish();
        println!(
            "{durability:?}: {primary} handed over to {replica}; the last failed write {outage:?} \
             after; {} acknowledged",
            acked.len()
        );
        all_present(&stores, &acked);
        for rx in &listeners {
            let heard = listen(rx, |h| acked.iter().all(|(_, id)| h.sets.contains_key(id)));
            once_each(&heard.sets, &acked, "session.set");
            assert_eq!(heard.lagged, 0, "a planned failover loses no event");
        }
        cluster.wait_healthy(Duration::from_secs(30));
    }
}

/// The primary behind Sentinel killed with SIGKILL while a node writes with
/// `Durability::Immediate`: the sentinels promote the replica, the store
/// finds it by itself and writes again within ten seconds, and nothing
/// acknowledged is lost.
#[test]
fn a_killed_primary_behind_sentinel_is_followed_by_itself() {
    let Some(binary) = find("redis-server", "a_killed_primary_behind_sentinel") else {
        return;
    };
    let sentinel = RedisSentinel::start(&binary);
    let clock = ManualClock::new(T0);
    let config = Config::redis_sentinel(sentinel.urls.clone(), SENTINEL_MASTER)
        .clock(Arc::new(clock.clone()))
        .reaper_thread(false)
        .durability(Durability::Immediate)
        .event_capacity(EVENTS_KEPT);
    let stores = [SessionStore::open(config).unwrap()];
    let listener = stores[0].subscribe();
    let load = Load::start(&stores, 3);
    std::thread::sleep(Duration::from_millis(500));
    let old = sentinel.primary().expect("a primary");
    let killed = Instant::now();
    sentinel.kill(old);
    let new = loop {
        match sentinel.primary() {
            Some(p) if p != old => break p,
            _ => {}
        }
        assert!(
            killed.elapsed() < BACK_WITHIN,
            "the sentinels promoted no replica"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let promoted = killed.elapsed();
    let outage = load.all_back(killed);
    assert!(outage < BACK_WITHIN, "writes failed for {outage:?}");
    let acked = load.finish();
    println!(
        "killed primary {old}: {new} promoted after {promoted:?}; the last failed write \
         {outage:?} after the kill; {} acknowledged",
        acked.len()
    );
    all_present(&stores, &acked);
    let heard = listen(&listener, |h| {
        let missing: Vec<_> = acked
            .iter()
            .filter(|(_, id)| !h.sets.contains_key(id))
            .collect();
        if !missing.is_empty() && std::env::var("DBG").is_ok() {
            eprintln!(
                "missing {} {:?} lagged {}",
                missing.len(),
                &missing[..missing.len().min(3)],
                h.lagged
            );
        }
        missing.is_empty()
    });
    once_each(&heard.sets, &acked, "session.set");
    assert!(stores[0].check().unwrap().is_healthy());
}

/// The primary behind Sentinel has a replica attached but still in its
/// initial sync (the primary delays it, as Redis delays a diskless sync by
/// 5 s by default), and a node writes with `Durability::Immediate`. The
/// replica holds none of those writes yet, so none may be acknowledged on
/// the primary alone: when the primary is killed with SIGKILL and the
/// sentinels promote the replica (with nothing in it), every acknowledged
/// write is still there, and the node writes again on the new primary.
#[test]
fn immediate_writes_while_the_replica_syncs_survive_its_promotion() {
    let Some(binary) = find("redis-server", "immediate_writes_while_the_replica_syncs") else {
        return;
    };
    let sentinel = RedisSentinel::start_syncing(&binary);
    let clock = ManualClock::new(T0);
    let config = Config::redis_sentinel(sentinel.urls.clone(), SENTINEL_MASTER)
        .clock(Arc::new(clock.clone()))
        .reaper_thread(false)
        .durability(Durability::Immediate)
        .redis_timeout(Duration::from_secs(1))
        .event_capacity(EVENTS_KEPT);
    let stores = [SessionStore::open(config).unwrap()];
    let listener = stores[0].subscribe();
    let old = sentinel.primary().expect("a primary");
    let load = Load::start(&stores, 4);
    std::thread::sleep(Duration::from_secs(2));
    let state = sentinel.replica_state(old);
    assert_eq!(
        state.as_deref(),
        Some("wait_bgsave"),
        "the replica should still be in its initial sync when the primary is killed"
    );
    let before_kill = load.log.lock().unwrap().clone();
    let killed = Instant::now();
    sentinel.kill(old);
    let new = loop {
        match sentinel.primary() {
            Some(p) if p != old => break p,
            _ => {}
        }
        assert!(
            killed.elapsed() < BACK_WITHIN,
            "the sentinels promoted no replica"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let promoted = killed.elapsed();
    let outage = load.all_back(killed);
    assert!(outage < BACK_WITHIN, "writes failed for {outage:?}");
    let acked = load.finish();
    let ok = before_kill.iter().filter(|(_, _, ok)| *ok).count();
    println!(
        "while the replica synced: {ok} of {} writes acknowledged; killed primary {old}: {new} \
         promoted after {promoted:?}; the last failed write {outage:?} after the kill; {} \
         acknowledged in all",
        before_kill.len(),
        acked.len()
    );
    all_present(&stores, &acked);
    let heard = listen(&listener, |h| {
        acked.iter().all(|(_, id)| h.sets.contains_key(id))
    });
    println!(
        "heard {} session.set, {} lagged",
        heard.sets.len(),
        heard.lagged
    );
    once_each(&heard.sets, &acked, "session.set");
}

/// A replica attaches to a primary that had none, and stays in its initial
/// sync: the very next `Durability::Immediate` write waits for it (however
/// recently the store counted none) and, as the replica acknowledges
/// nothing until its sync is done, fails as unavailable saying the change
/// may have committed. Once the replica is in sync, writes are
/// acknowledged again.
#[test]
fn an_immediate_write_right_after_a_replica_attaches_waits_for_it() {
    let Some(binary) = find(
        "redis-server",
        "an_immediate_write_right_after_a_replica_attaches",
    ) else {
        return;
    };
    let port = free_ports(1)[0].to_string();
    let primary = RedisServer::start(
        &binary,
        &[
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "120",
        ],
    );
    let store = SessionStore::open(
        Config::redis(&primary.url)
            .reaper_thread(false)
            .durability(Durability::Immediate)
            .redis_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    // No replica: the write is on the primary's disk, and acknowledged.
    store.register("alone", "en", Data::new()).unwrap();

    // With its own append-only file: WAITAOF counts no replica without one.
    let _replica = RedisServer::start(
        &binary,
        &["--appendonly", "yes", "--replicaof", "127.0.0.1", &port],
    );
    let mut raw = primary.connection();
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica_state(&mut raw).as_deref() != Some("wait_bgsave") {
        assert!(Instant::now() < deadline, "the replica did not attach");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let err = store
        .register("synced", "en", Data::new())
        .expect_err("a write taken on the primary alone while a replica syncs");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("may have committed") && message.contains("initial sync"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{started:?}");

    // The primary starts the sync now; once the replica is in sync (and,
    // with WAITAOF, has its own append-only file), writes go through.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-sync-delay")
        .arg(0)
        .query(&mut raw)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.register("later", "en", Data::new()) {
            Ok(_) => break,
            Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("no write went through once the replica synced: {e}"),
        }
    }
    assert_eq!(replica_state(&mut raw).as_deref(), Some("online"));
}

/// `min_replicas`: while fewer replicas are attached to the primary, writes
/// are refused (unavailable, saying how many are attached and how many are
/// required), reads go on and the health check fails; a replica still in
/// its initial sync counts as attached. It holds in `Durability::Periodic`
/// too: it is about copies, not fsync. A store in a directory refuses it.
#[test]
fn min_replicas_refuses_writes_until_enough_replicas_are_attached() {
    let Some(binary) = find("redis-server", "min_replicas_refuses_writes") else {
        return;
    };
    let port = free_ports(1)[0].to_string();
    let primary = RedisServer::start(
        &binary,
        &[
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "120",
        ],
    );
    let config = Config::redis(&primary.url).reaper_thread(false);
    let plain = SessionStore::open(config.clone()).unwrap();
    let kept = plain.register("kept", "en", Data::new()).unwrap();
    let store = SessionStore::open(config.clone().min_replicas(1)).unwrap();

    let err = store.register("p1", "en", Data::new()).unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("has no replica attached and min_replicas requires 1"),
        "{message}"
    );
    assert!(
        plain.actor_session("p1").unwrap().is_none(),
        "nothing written"
    );
    // Reads go on; the health check says writes cannot.
    assert_eq!(
        store
            .actor_session("kept")
            .unwrap()
            .map(|s| s.id().to_owned()),
        Some(kept.id().to_owned())
    );
    assert!(matches!(store.ping(), Err(Error::Unavailable { .. })));

    let dir = tempfile::tempdir().unwrap();
    let refused = SessionStore::open(Config::new(dir.path()).min_replicas(1)).unwrap_err();
    assert!(
        matches!(
            refused,
            Error::InvalidConfig {
                setting: "min_replicas",
                ..
            }
        ),
        "{refused:?}"
    );

    // A replica attaches: still in its initial sync, it counts.
    let _replica = RedisServer::start(&binary, &["--replicaof", "127.0.0.1", &port]);
    let mut raw = primary.connection();
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica_state(&mut raw).as_deref() != Some("wait_bgsave") {
        assert!(Instant::now() < deadline, "the replica did not attach");
        std::thread::sleep(Duration::from_millis(10));
    }
    let session = store.register("p1", "en", Data::new()).unwrap();
    assert!(store.ping().is_ok());
    assert_eq!(
        plain
            .actor_session("p1")
            .unwrap()
            .map(|s| s.id().to_owned()),
        Some(session.id().to_owned())
    );

    // Two required, one attached.
    let two = SessionStore::open(config.min_replicas(2)).unwrap();
    let message = two
        .register("p2", "en", Data::new())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("has 1 replica attached and min_replicas requires 2"),
        "{message}"
    );
    assert!(two.actor_session("p1").unwrap().is_some());
}
