//! The server and the offline tools on the shared Redis / Valkey engine:
//! real `sessiondb` processes on a real `redis-server` (started per test on
//! a unix socket by the library's harness). Without `redis-server` these
//! tests print one line saying so and pass, unless `CI=true`.
//!
//! The bad-input tests at the end need no server.

mod common;

#[path = "../../../tests/common/redis.rs"]
mod redis_server;

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;
use redis_server::RedisServer;
use serde_json::{json, Value};
use sessiondb::{Config, Data, SessionStore};

/// A password that must never show in any output.
const PASSWORD: &str = "hunter22-very-secret";

/// A fresh server with an append-only file (so a restart keeps the data),
/// or `None` (after one line saying why) without `redis-server`.
fn redis(test: &str) -> Option<RedisServer> {
    let binary = redis_server::find("redis-server", test)?;
    Some(RedisServer::start(&binary, &["--appendonly", "yes"]))
}

/// `url` with a username and password in its query: the default user of a
/// test server has no password, so it accepts any.
fn with_password(url: &str) -> String {
    format!("{url}?user=default&pass={PASSWORD}")
}

/// Reads events until `done` says the wanted one arrived; fails after
/// `limit` with what did arrive.
fn events_until(rx: &Receiver<Sse>, limit: Duration, done: impl Fn(&Sse) -> bool) -> Vec<Sse> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(event) => {
                let last = done(&event);
                seen.push(event);
                if last {
                    return seen;
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!("not heard within {limit:?}; heard {seen:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the stream ended; heard {seen:?}"),
        }
    }
}

/// Polls `check` until it holds, failing after `limit`.
/// A primary demoted to replica (a failover) cannot take writes: health
/// says so (503) and writes answer 503 with `Retry-After`, until the server
/// is a primary again, when the same process serves again.
#[test]
fn health_and_writes_are_unavailable_while_the_server_is_a_replica() {
    let Some(redis) = redis("health_while_a_replica") else {
        return;
    };
    // Another server, on a TCP port (REPLICAOF names host and port).
    let port = redis_server::free_ports(1)[0].to_string();
    let Some(binary) = redis_server::find("redis-server", "health_while_a_replica") else {
        return;
    };
    let _primary = RedisServer::start(&binary, &["--port", &port]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_redis(dir.path(), &redis.url, &[]);
    assert_eq!(get(&server.url("/healthz"), None).status, 200);
    register(&server, "p1");

    let mut raw = redis.connection();
    let _: () = ::redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(&port)
        .query(&mut raw)
        .unwrap();
    let health = get(&server.url("/healthz"), None);
    assert_eq!(health.status, 503, "{}", health.body);
    let r = post(
        &server.url("/v1/sessions"),
        None,
        &json!({"actorId": "p2"}).to_string(),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"], "unavailable");

    let _: () = ::redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut raw)
        .unwrap();
    assert_eq!(get(&server.url("/healthz"), None).status, 200);
    register(&server, "p3");
}

/// `--min-replicas` (or `SESSIONDB_MIN_REPLICAS`, or `min_replicas` in the
/// config file): while the primary has fewer replicas attached, writes
/// answer 503 with `Retry-After`, saying how many are attached and how many
/// are required, `/healthz` answers 503, and reads go on. A data directory,
/// which has no replicas, refuses the setting before the server listens.
#[test]
fn min_replicas_refuses_writes_while_too_few_replicas_are_attached() {
    let Some(redis) = redis("min_replicas_refuses_writes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessiondb.toml");
    std::fs::write(&config, "min_replicas = 1\n").unwrap();
    let config = config.to_str().unwrap();
    let refused = |server: &Server| {
        let r = post(&server.url("/v1/sessions"), None, r#"{"actorId":"p1"}"#);
        r.assert_error(503, "unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
        let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains("has no replica attached and min_replicas requires 1"),
            "{message}"
        );
        get(&server.url("/healthz"), None).assert_error(503, "unavailable");
        let read = get(&server.url("/v1/actors/p1/session"), None);
        assert_eq!(read.status, 404, "reads go on: {}", read.body);
    };
    let server = Server::start_redis(dir.path(), &redis.url, &["--min-replicas", "1"]);
    refused(&server);
    assert_eq!(server.terminate().code(), Some(0));
    let server = Server::start_redis_with(dir.path(), &redis.url, &[], |cmd| {
        cmd.env("SESSIONDB_MIN_REPLICAS", "1");
    });
    refused(&server);
    assert_eq!(server.terminate().code(), Some(0));
    let server = Server::start_redis(dir.path(), &redis.url, &["--config", config]);
    refused(&server);
    assert_eq!(server.terminate().code(), Some(0));
    // The flag over the file.
    let server = Server::start_redis(
        dir.path(),
        &redis.url,
        &["--config", config, "--min-replicas", "0"],
    );
    register(&server, "p1");
    assert_eq!(get(&server.url("/healthz"), None).status, 200);
    assert_eq!(server.terminate().code(), Some(0));

    let data = dir.path().join("data");
    let out = tool(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--min-replicas",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("min_replicas"),
        "{}",
        text(&out.stderr)
    );
}

/// On a Redis Cluster: serve takes its seeds from flags, and every tool
/// from its flags or the environment (comma-separated); the tools scan
/// every primary; a store moves from the cluster to a data directory.
#[test]
fn serve_and_the_tools_work_on_a_cluster() {
    let Some(cluster) = redis_server::RedisCluster::shared("serve_and_the_tools_work_on_a_cluster")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tools{}", std::process::id());
    let server = Server::start_cluster(dir.path(), &cluster.seeds, &["--redis-prefix", &prefix]);
    let sessions: Vec<Value> = (0..30)
        .map(|i| register(&server, &format!("p{i}")))
        .collect();
    let r = post(
        &server.url("/v1/actors/addresses"),
        None,
        &json!({"actorIds": ["p0", "p29", "nobody", "p7"]}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    let actors: Vec<&str> = answer["addresses"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["actorId"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(actors, ["p0", "p29", "p7"], "{}", r.body);
    let r = post(
        &server.url("/v1/actors/p3/reassign"),
        None,
        &json!({"to": "p30"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    drop(server);

    let flags: Vec<&str> = cluster
        .seeds
        .iter()
        .flat_map(|s| ["--redis-cluster", s.as_str()])
        .chain(["--redis-prefix", prefix.as_str()])
        .collect();
    let out = tool(&[&["stats", "--json"][..], &flags].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stats: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(stats["sessions"], sessions.len(), "{stats}");
    // The seeds from the environment, comma-separated.
    let out = command()
        .args(["check", "--redis-prefix", &prefix])
        .env("SESSIONDB_REDIS_CLUSTER", cluster.seeds.join(","))
        .output()
        .unwrap();
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}{}", text(&out.stderr));
    assert!(report.contains("healthy"), "{report}");
    // From the cluster to a data directory.
    let file = dir.path().join("sessions.jsonl");
    let out = tool(&[&["export", "-o", file.to_str().unwrap()][..], &flags].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let data = dir.path().join("data");
    let out = tool(&[
        "import",
        "--data-dir",
        data.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let store = SessionStore::open(Config::new(&data).reaper_thread(false)).unwrap();
    assert_eq!(store.stats().unwrap().sessions, sessions.len() as u64);
    assert!(store.actor_session("p30").unwrap().is_some());
    assert!(store.actor_session("p3").unwrap().is_none());
}

#[test]
fn two_nodes_on_one_redis_share_sessions_and_hear_each_others_events() {
    let Some(redis) = redis("two_nodes_on_one_redis_share_sessions") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let url = with_password(&redis.url);
    let a = Server::start_redis(&dir_a, &url, &["--node-id", "node-a"]);
    let b = Server::start_redis(&dir_b, &url, &["--node-id", "node-b"]);
    let (status, heard_on_a) = events(&a, None);
    assert_eq!(status, 200);

    // Register on A (admin API), use the key on B.
    let session = register(&a, "p1");
    let key = key_of(&session);
    let id = session["id"].as_str().unwrap().to_owned();
    assert_eq!(session["nodeId"], "node-a");
    let r = post(
        &b.url("/v1/session/isValid"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    assert_eq!(r.json(), json!({"valid": true}), "{}", r.body);
    let r = post(
        &b.url("/v1/session/restore"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], id.as_str());
    assert_eq!(r.json()["key"], key.as_str());
    let found = get(&b.url("/v1/actors/p1/session"), None);
    assert_eq!(found.json()["nodeId"], "node-a", "{}", found.body);
    // Data written through one node reads back through the other.
    let put = call(
        "PUT",
        &b.url("/v1/session/data/gold"),
        Some(&key),
        Some("{\"coins\":5}"),
    );
    assert_eq!(put.status, 204, "{}", put.body);
    let value = get(&a.url("/v1/session/data/gold"), Some(&key));
    assert_eq!(value.json(), json!({"value": {"coins": 5}}));

    // Logout on B; A hears every change, B's included.
    let r = post(&b.url("/v1/session/logout"), Some(&key), "");
    assert_eq!(r.status, 204, "{}", r.body);
    let heard = events_until(&heard_on_a, Duration::from_secs(30), |e| {
        e.event == "session.unset"
    });
    let for_p1: Vec<&Sse> = heard
        .iter()
        .filter(|e| e.data["id"] == id.as_str())
        .collect();
    let sets = for_p1.iter().filter(|e| e.event == "session.set").count();
    assert!(
        sets >= 2,
        "the register on A and the restore on B: {heard:?}"
    );
    let last = for_p1.last().unwrap();
    assert_eq!(last.event, "session.unset");
    assert_eq!(
        last.data,
        json!({"actorId": "p1", "id": id, "reason": "loggedOut"})
    );
    let r = post(
        &a.url("/v1/session/isValid"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    assert_eq!(r.json(), json!({"valid": false, "reason": "noSession"}));

    // Neither node's output shows the password.
    let (log_a, log_b) = (a.log_text(), b.log_text());
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(b.terminate().code(), Some(0));
    for log in [log_a, log_b] {
        assert!(log.contains("engine=\"redis\""), "{log}");
        assert!(!log.contains(PASSWORD), "{log}");
    }
}

/// Each bucket's due sessions are reaped by one node (see the library's
/// `engine/redis/reaping.rs`). When a node dies (SIGKILL, so it cannot
/// say that it leaves), the others find it gone once its buckets' sessions
/// are overdue, take its buckets, and announce each expiry exactly once,
/// soon after its time (the reap interval, 1 s, plus a second; the bound
/// below leaves room for a busy machine).
#[test]
fn when_a_node_dies_the_others_reap_its_sessions() {
    let Some(redis) = redis("when_a_node_dies") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let ttl = Duration::from_secs(3);
    let a = Server::start_redis(&dir_a, &redis.url, &["--ttl", "3s"]);
    let b = Server::start_redis(&dir_b, &redis.url, &["--ttl", "3s"]);
    let (status, heard_on_a) = events(&a, None);
    assert_eq!(status, 200);
    let registered = Instant::now();
    let ids: std::collections::BTreeSet<String> = (0..40)
        .map(|i| {
            register(&b, &format!("p{i}"))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let due = registered + ttl;
    b.kill9();
    let heard = events_until(&heard_on_a, Duration::from_secs(30), {
        let ids = ids.clone();
        move |e| e.event == "session.unset" && e.data["id"] == ids.iter().last().unwrap().as_str()
    });
    // The rest, until every session was announced.
    let mut unset: Vec<String> = heard
        .iter()
        .filter(|e| e.event == "session.unset")
        .map(|e| e.data["id"].as_str().unwrap().to_owned())
        .collect();
    while unset.len() < ids.len() {
        let more = events_until(&heard_on_a, Duration::from_secs(30), |e| {
            e.event == "session.unset"
        });
        unset.extend(
            more.iter()
                .filter(|e| e.event == "session.unset")
                .map(|e| e.data["id"].as_str().unwrap().to_owned()),
        );
    }
    let late = Instant::now().saturating_duration_since(due);
    let once: std::collections::BTreeSet<String> = unset.iter().cloned().collect();
    assert_eq!(
        once.len(),
        unset.len(),
        "an expiry announced twice: {unset:?}"
    );
    assert_eq!(once, ids);
    assert!(
        late < Duration::from_secs(10),
        "the last expiry was announced {late:?} after its time"
    );
    eprintln!("the dead node's sessions were all announced within {late:?} of their time");
    assert_eq!(a.terminate().code(), Some(0));
}

#[test]
fn a_sessions_own_stream_hears_changes_made_on_any_node_and_no_other_session() {
    let Some(redis) = redis("a_sessions_own_stream_hears_changes_made_on_any_node") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let a = Server::start_redis(&dir_a, &redis.url, &[]);
    let b = Server::start_redis(&dir_b, &redis.url, &[]);
    let mine = register(&a, "p1");
    let other = register(&b, "p2");
    let key = key_of(&mine);
    let id = mine["id"].as_str().unwrap().to_owned();
    let url = a.url("/v1/session/events");
    get(&url, Some("p1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")).assert_error(401, "keyMismatch");
    get(&url, Some("ghost:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")).assert_error(401, "noSession");
    let (status, rx) = session_events(&a, &key);
    assert_eq!(status, 200);
    let (status, rx_other) = session_events(&b, &key_of(&other));
    assert_eq!(status, 200);
    let next = |rx: &Receiver<Sse>| rx.recv_timeout(Duration::from_secs(30)).expect("an event");
    let first = next(&rx);
    assert_eq!(
        (first.event.as_str(), &first.data["id"]),
        ("session.set", &mine["id"])
    );
    assert_eq!(next(&rx_other).data["id"], other["id"]);

    // A restore on B that moves nothing is not repeated; p2's end does not
    // reach p1's stream either.
    let r = post(&b.url("/v1/session/restore"), Some(&key), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &a.url("/v1/actors/p2/expire"),
        None,
        r#"{"reason":"kicked"}"#,
    );
    assert_eq!(r.json(), json!({"expired": 1}));
    let ended = next(&rx_other);
    assert_eq!(ended.data["reason"], "kicked");
    // The admin expire on B with the game's own reason ends the stream on A
    // (the next event it hears).
    let r = post(
        &b.url("/v1/actors/p1/expire"),
        None,
        r#"{"reason":"banned"}"#,
    );
    assert_eq!(r.json(), json!({"expired": 1}));
    let unset = next(&rx);
    assert_eq!(unset.event, "session.unset");
    assert_eq!(
        unset.data,
        json!({"actorId": "p1", "id": id, "reason": "banned"})
    );
    for stream in [&rx, &rx_other] {
        match stream.recv_timeout(Duration::from_secs(30)) {
            Err(RecvTimeoutError::Disconnected) => {}
            other => panic!("the stream should have ended after its unset: {other:?}"),
        }
    }
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(b.terminate().code(), Some(0));
}

#[test]
fn healthz_and_requests_answer_503_while_redis_is_down_and_recover_after() {
    let Some(mut redis) = redis("healthz_and_requests_answer_503_while_redis_is_down") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_redis(dir.path(), &redis.url, &[]);
    let key = key_of(&register(&server, "p1"));
    let health = get(&server.url("/healthz"), None);
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json(), json!({"status": "ok"}));
    let text = get(&server.url("/metrics"), None).body;
    assert!(metric(&text, "sessiondb_engine_ping_seconds_count") >= 2.0);
    assert_eq!(metric(&text, "sessiondb_engine_up"), 1.0);
    assert_eq!(metric(&text, "sessiondb_engine_unavailable_total"), 0.0);

    redis.kill();
    get(&server.url("/healthz"), None).assert_error(503, "unavailable");
    let is_valid = post(
        &server.url("/v1/session/isValid"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    is_valid.assert_error(503, "unavailable");
    let registered = post(&server.url("/v1/sessions"), None, r#"{"actorId":"p2"}"#);
    registered.assert_error(503, "unavailable");
    let data = get(&server.url("/v1/session/data/gold"), Some(&key));
    data.assert_error(503, "unavailable");
    // Scrapes still answer, and say the engine is down.
    let down = get(&server.url("/metrics"), None);
    assert_eq!(down.status, 200);
    assert_eq!(metric(&down.body, "sessiondb_engine_up"), 0.0);
    assert_eq!(
        metric(&down.body, "sessiondb_engine_unavailable_total"),
        4.0,
        "healthz, isValid, register and data"
    );

    redis.restart();
    wait_until(
        Duration::from_secs(30),
        "healthz 200 after the restart",
        || get(&server.url("/healthz"), None).status == 200,
    );
    // The append-only file kept the session.
    let r = post(
        &server.url("/v1/session/isValid"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    assert_eq!(r.json(), json!({"valid": true}), "{}", r.body);
    let up = get(&server.url("/metrics"), None).body;
    assert_eq!(metric(&up, "sessiondb_engine_up"), 1.0);
    assert!(metric(&up, "sessiondb_active_sessions") >= 1.0);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn serve_takes_the_redis_url_from_the_environment_and_the_config_file() {
    let Some(redis) = redis("serve_takes_the_redis_url_from_the_environment") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("data");
    let config = dir.path().join("sessiondb.toml");
    // The environment's Redis URL beats the file's data directory; the
    // file's prefix applies.
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nredis_prefix = \"game1\"\n",
            unused.display()
        ),
    )
    .unwrap();
    let url = with_password(&redis.url);
    let serve = |log: &str, env_url: Option<&str>| {
        let log = dir.path().join(log);
        let mut cmd = command();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(url) = env_url {
            cmd.env("SESSIONDB_REDIS_URL", url);
        }
        Server::spawn(cmd, unused.clone(), log)
    };
    let server = serve("env.log", Some(&url));
    register(&server, "p1");
    assert_eq!(server.terminate().code(), Some(0));
    assert!(!unused.exists(), "the data directory is not used");
    let log = std::fs::read_to_string(dir.path().join("env.log")).unwrap();
    assert!(log.contains("data_dir (config file) is not used"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    let stats = |prefix: &str| -> Value {
        let out = tool(&[
            "stats",
            "--redis-url",
            &redis.url,
            "--redis-prefix",
            prefix,
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_str(&text(&out.stdout)).unwrap()
    };
    assert_eq!(stats("game1")["sessions"], 1);

    // The file alone: its URL and prefix.
    std::fs::write(
        &config,
        format!("redis_url = \"{url}\"\nredis_prefix = \"game2\"\n"),
    )
    .unwrap();
    let server = serve("file.log", None);
    register(&server, "p1");
    register(&server, "p2");
    assert_eq!(server.terminate().code(), Some(0));
    assert_eq!(stats("game2")["sessions"], 2);
    assert_eq!(stats("game1")["sessions"], 1, "prefixes keep games apart");
    assert!(!unused.exists());
}

/// A stopped sled store with three sessions (p1 with data); their keys.
fn sled_store(dir: &Path) -> Vec<String> {
    let store = open_with(Config::new(dir).reaper_thread(false));
    let mut keys = Vec::new();
    for actor in ["p1", "p2", "guild:7"] {
        let mut data = Data::new();
        if actor == "p1" {
            data.insert("gold", &5).unwrap();
        }
        keys.push(
            store
                .register(actor, "en", data)
                .unwrap()
                .key()
                .unwrap()
                .to_owned(),
        );
    }
    store.close().unwrap();
    keys
}

#[track_caller]
fn ok(args: &[&str]) -> (String, String) {
    let out = tool(args);
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}): {}",
        out.status,
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

#[test]
fn tools_work_on_redis_and_migrate_a_data_directory_there_and_back() {
    let Some(redis) = redis("tools_work_on_redis_and_migrate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sled_dir = dir.path().join("sled");
    let keys = sled_store(&sled_dir);
    let sled_arg = sled_dir.to_str().unwrap();
    let url = with_password(&redis.url);

    // export --data-dir A > f; import --redis-url URL < f
    let (exported, _) = ok(&["export", "--data-dir", sled_arg]);
    assert_eq!(exported.lines().count(), 4);
    let out = command()
        .args(["import", "--redis-url", &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(exported.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("imported 3 session(s)"), "{err}");
    assert!(err.contains("pass=***"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");

    let out = tool(&["check", "--redis-url", &url]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}{}", text(&out.stderr));
    assert!(report.contains("healthy"), "{report}");
    assert!(!report.contains(PASSWORD), "{report}");

    // A dangling expiry entry, made behind the store's back: check sees
    // it, repair removes it.
    let mut raw = redis.connection();
    let indexes: Vec<String> = ::redis::cmd("KEYS")
        .arg("sessiondb{*}:e")
        .query(&mut raw)
        .unwrap();
    let _: i64 = ::redis::cmd("ZADD")
        .arg(&indexes[0])
        .arg(1)
        .arg(format!("{}:ghost", "ab".repeat(32)))
        .query(&mut raw)
        .unwrap();
    let out = tool(&["check", "--redis-url", &url]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("stale expiries    1"), "{report}");
    let out = tool(&["check", "--redis-url", &url, "--repair"]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    // The ghost entry, and the count it makes one too high (a bucket's
    // count is its expiry index's size).
    assert!(
        report.contains("2 problem(s) found and repaired"),
        "{report}"
    );
    assert!(
        text(&out.stderr).contains("stop them"),
        "{}",
        text(&out.stderr)
    );

    let (stats, _) = ok(&["stats", "--redis-url", &url]);
    assert!(stats.contains("3 (3 live, 0 expired"), "{stats}");
    assert!(stats.contains("actors           3"), "{stats}");
    assert!(!stats.contains("size on disk"), "{stats}");
    assert!(!stats.contains(PASSWORD), "{stats}");
    let (json, _) = ok(&["stats", "--redis-url", &url, "--json"]);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["engine"], "redis");
    assert_eq!(json["sessions"], 3);
    assert_eq!(json["sizeBytes"], Value::Null);

    let (list, _) = ok(&["list", "--redis-url", &url, "--json"]);
    let ids: Vec<String> = list
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 3);
    let p1 = list
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|s| s["actorId"] == "p1")
        .unwrap();
    let (show, _) = ok(&["show", "--redis-url", &url, p1["id"].as_str().unwrap()]);
    assert!(show.contains("gold = 5"), "{show}");

    // The keys made on sled work on Redis.
    let store = SessionStore::open(Config::redis(redis.url.clone()).reaper_thread(false)).unwrap();
    for key in &keys {
        store.is_valid(key).unwrap();
    }
    drop(store);

    // And back: export --redis-url, import --data-dir, the same export.
    let back_file = dir.path().join("back.jsonl");
    ok(&[
        "export",
        "--redis-url",
        &url,
        "--output",
        back_file.to_str().unwrap(),
    ]);
    let back = dir.path().join("back");
    ok(&[
        "import",
        "--data-dir",
        back.to_str().unwrap(),
        back_file.to_str().unwrap(),
    ]);
    assert_eq!(
        ok(&["export", "--data-dir", back.to_str().unwrap()]).0,
        exported
    );

    // expire works on Redis, and a prefix is a store of its own.
    let (out, _) = ok(&["expire", "--redis-url", &url, "p2", "--reason", "banned"]);
    assert!(out.contains("ended 1 session(s)"), "{out}");
    let (stats, warned) = ok(&["stats", "--redis-url", &url, "--redis-prefix", "other"]);
    assert!(stats.contains("sessions         0"), "{stats}");
    assert!(warned.contains("there was no store"), "{warned}");

    // compact is for data directories only.
    let out = tool(&[
        "compact",
        "--redis-url",
        &url,
        "--into",
        dir.path().join("c").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("compact rewrites a data directory"), "{err}");
    assert!(!dir.path().join("c").exists());
}

// ----- bad input (no server needed) -----

#[track_caller]
fn fails_clearly(out: &std::process::Output, says: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains(says), "wanted {says:?} in: {stderr}");
    assert!(
        !stdout.contains(PASSWORD) && !stderr.contains(PASSWORD),
        "the password shows: {stdout}{stderr}"
    );
    assert!(!stdout.contains("listening on"), "{stdout}");
}

#[test]
fn both_a_data_dir_and_a_redis_url_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let url = format!("redis://admin:{PASSWORD}@127.0.0.1:1/0");
    for command in ["stats", "list", "check", "export", "import", "serve"] {
        let out = tool(&[command, "--data-dir", data, "--redis-url", &url]);
        fails_clearly(&out, "cannot be used with");
    }
    let out = command()
        .args(["stats"])
        .env("SESSIONDB_DATA_DIR", data)
        .env("SESSIONDB_REDIS_URL", &url)
        .output()
        .unwrap();
    fails_clearly(&out, "both SESSIONDB_DATA_DIR and SESSIONDB_REDIS_URL");
    let config = dir.path().join("both.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{data}\"\nredis_url = \"{url}\"\n"),
    )
    .unwrap();
    let out = tool(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ]);
    fails_clearly(
        &out,
        "both data_dir (config file) and redis_url (config file)",
    );
    assert!(!Path::new(data).exists(), "nothing was created");
}

#[test]
fn an_unparseable_redis_url_is_a_clear_error_without_its_password() {
    for url in [
        format!("redis://admin:{PASSWORD}@[::1/0"),
        format!("http://admin:{PASSWORD}@127.0.0.1:6379/0"),
        format!("redis://admin:{PASSWORD}@127.0.0.1:6379/not-a-number"),
    ] {
        let out = tool(&["stats", "--redis-url", &url]);
        fails_clearly(&out, "redis_url");
        assert!(
            text(&out.stderr).contains("admin:***@"),
            "{}",
            text(&out.stderr)
        );
        let out = tool(&["serve", "--listen", "127.0.0.1:0", "--redis-url", &url]);
        fails_clearly(&out, "redis_url");
    }
    let out = tool(&["stats", "--redis-url", ""]);
    fails_clearly(&out, "--redis-url is empty");
}

#[test]
fn an_unreachable_redis_url_is_a_clear_error_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-listens.sock");
    let urls = [
        format!("redis://admin:{PASSWORD}@127.0.0.1:1/0"),
        format!("redis+unix://{}?pass={PASSWORD}", socket.display()),
    ];
    for url in &urls {
        for args in [
            vec!["stats", "--redis-url", url],
            vec!["export", "--redis-url", url],
            vec!["import", "--redis-url", url, "/dev/null"],
            vec!["check", "--redis-url", url, "--repair"],
            vec!["serve", "--listen", "127.0.0.1:0", "--redis-url", url],
        ] {
            let out = tool(&args);
            fails_clearly(&out, "cannot reach the Redis/Valkey server at");
        }
        // From the environment too, with serve's log lines.
        let out = command()
            .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "debug"])
            .env("SESSIONDB_REDIS_URL", url)
            .output()
            .unwrap();
        fails_clearly(&out, "cannot reach the Redis/Valkey server at");
    }
}
