//! Test harness: runs the real `sessiondb` binary on 127.0.0.1 with a
//! temporary data directory, and talks to it with a real HTTP client.
//! Every server is killed when its guard drops, so no test leaves one behind.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_sessiondb");

/// The environment variables the binary reads; cleared for every child so
/// that the developer's environment cannot leak into a test.
pub const ENV_NAMES: [&str; 20] = [
    "SESSIONDB_CONFIG",
    "SESSIONDB_DATA_DIR",
    "SESSIONDB_REDIS_URL",
    "SESSIONDB_REDIS_PREFIX",
    "SESSIONDB_REDIS_TLS_CA",
    "SESSIONDB_LISTEN",
    "SESSIONDB_TTL",
    "SESSIONDB_DURABILITY",
    "SESSIONDB_ADMIN_TOKEN",
    "SESSIONDB_LOG_LEVEL",
    "SESSIONDB_APP_VERSION",
    "SESSIONDB_NODE_ID",
    "SESSIONDB_MAX_SESSIONS_PER_ACTOR",
    "SESSIONDB_MIN_REPLICAS",
    "SESSIONDB_NO_REAPER",
    "SESSIONDB_CORS_ORIGIN",
    "SESSIONDB_HEADER_TIMEOUT",
    "SESSIONDB_MAX_CONNECTIONS",
    "SESSIONDB_EVENT_HISTORY",
    "SESSIONDB_EVENT_HISTORY_AGE",
];

/// A `sessiondb` command with a clean environment.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for name in ENV_NAMES {
        cmd.env_remove(name);
    }
    cmd
}

/// Runs an offline tool to completion.
pub fn tool(args: &[&str]) -> Output {
    command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sessiondb")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts `sessiondb serve --listen 127.0.0.1:0 --data-dir <dir>` with
    /// `extra` arguments.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_with(dir, extra, |_| {})
    }

    /// As `start`, letting the caller adjust the command (environment).
    pub fn start_with(dir: &Path, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        let data_dir = dir.join("data");
        let data_arg = data_dir.to_str().expect("a UTF-8 temporary path");
        let args = [&["--data-dir", data_arg][..], extra].concat();
        Server::serve(dir, &args, adjust, data_dir.clone())
    }

    /// Starts `sessiondb serve --listen 127.0.0.1:0 --redis-url <url>` with
    /// `extra` arguments; its log goes to `dir`.
    pub fn start_redis(dir: &Path, url: &str, extra: &[&str]) -> Server {
        Server::start_redis_with(dir, url, extra, |_| {})
    }

    /// As `start_redis`, letting the caller adjust the command.
    pub fn start_redis_with(
        dir: &Path,
        url: &str,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Server {
        let args = [&["--redis-url", url][..], extra].concat();
        Server::serve(dir, &args, adjust, dir.join("unused-data-dir"))
    }

    /// Starts `sessiondb serve --listen 127.0.0.1:0` on the Redis Cluster
    /// at `seeds` (`--redis-cluster`, one per seed) with `extra` arguments;
    /// its log goes to `dir`.
    pub fn start_cluster(dir: &Path, seeds: &[String], extra: &[&str]) -> Server {
        let mut args: Vec<&str> = seeds
            .iter()
            .flat_map(|s| ["--redis-cluster", s.as_str()])
            .collect();
        args.extend_from_slice(extra);
        Server::serve(dir, &args, |_| {}, dir.join("unused-data-dir"))
    }

    /// `sessiondb serve --listen 127.0.0.1:0` with `args`, its log appended
    /// to `dir/server.log`.
    fn serve(
        dir: &Path,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
        data_dir: PathBuf,
    ) -> Server {
        let log = dir.join("server.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut cmd = command();
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        adjust(&mut cmd);
        Server::spawn(cmd, data_dir, log)
    }

    /// Spawns a prepared command and waits for its `listening on` line.
    pub fn spawn(mut cmd: Command, data_dir: PathBuf, log: PathBuf) -> Server {
        let mut child = cmd.spawn().expect("spawn sessiondb");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = Server {
            child: Some(child),
            addr: String::new(),
            data_dir,
            log,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(line)) => {
                let addr = line
                    .strip_prefix("listening on ")
                    .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
                assert!(addr.starts_with("127.0.0.1:"), "{addr}");
                server.addr = addr.to_owned();
            }
            other => panic!(
                "the server did not say it was listening ({other:?}); log:\n{}",
                server.log_text()
            ),
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to end, at most `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if started.elapsed() > limit {
                panic!(
                    "the server did not stop within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for a graceful exit; returns its status.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(30))
    }

    /// SIGINT, then waits for a graceful exit.
    pub fn interrupt(mut self) -> ExitStatus {
        self.signal("INT");
        self.wait(Duration::from_secs(30))
    }

    /// SIGKILL: the process dies at once.
    pub fn kill9(mut self) {
        self.signal("KILL");
        self.wait(Duration::from_secs(30));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ----- HTTP -----

pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub www_authenticate: Option<String>,
    /// Every response header, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether any header's name starts with `access-control-`.
    pub fn has_cors_headers(&self) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.starts_with("access-control-"))
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts the JSON error shape with `status` and `error`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "content type {:?} for {}",
            self.content_type,
            self.body
        );
        let v = self.json();
        assert_eq!(v["error"], error, "{}", self.body);
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {}",
            self.body
        );
        assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{}", self.body);
    }
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn request(method: &str, url: &str, bearer: Option<&str>) -> ureq::http::request::Builder {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    if let Some(token) = bearer {
        b = b.header("Authorization", format!("Bearer {token}"));
    }
    b
}

fn finish(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
    try_finish(result).expect("HTTP request")
}

fn try_finish(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Resp, String> {
    let mut resp = result.map_err(|e| e.to_string())?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let www_authenticate = header("www-authenticate");
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        content_type,
        www_authenticate,
        headers,
        body,
    })
}

/// A POST that may fail at the transport level (the server going away).
pub fn try_post(url: &str, bearer: Option<&str>, body: &str) -> Result<Resp, String> {
    let agent = agent(Duration::from_secs(30));
    try_finish(
        agent.run(
            request("POST", url, bearer)
                .header("Content-Type", "application/json")
                .body(body.to_owned())
                .map_err(|e| e.to_string())?,
        ),
    )
}

/// A PUT that may fail at the transport level.
pub fn try_put(url: &str, bearer: Option<&str>, body: &str) -> Result<Resp, String> {
    let agent = agent(Duration::from_secs(30));
    try_finish(
        agent.run(
            request("PUT", url, bearer)
                .body(body.to_owned())
                .map_err(|e| e.to_string())?,
        ),
    )
}

/// One request; `body` is sent as is (with a JSON content type).
pub fn call(method: &str, url: &str, bearer: Option<&str>, body: Option<&str>) -> Resp {
    call_with(method, url, bearer, &[], body)
}

/// One request with extra headers (`Origin`, say); `body` as in `call`.
pub fn call_with(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let agent = agent(Duration::from_secs(30));
    let mut builder = request(method, url, bearer);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    match body {
        Some(b) => finish(
            agent.run(
                builder
                    .header("Content-Type", "application/json")
                    .body(b.to_owned())
                    .expect("request"),
            ),
        ),
        None => finish(agent.run(builder.body(()).expect("request"))),
    }
}

pub fn get(url: &str, bearer: Option<&str>) -> Resp {
    call("GET", url, bearer, None)
}

pub fn post(url: &str, bearer: Option<&str>, body: &str) -> Resp {
    call("POST", url, bearer, Some(body))
}

/// Registers `actor` through the API (no admin token); returns the 201 body.
pub fn register(server: &Server, actor: &str) -> Value {
    let r = post(
        &server.url("/v1/sessions"),
        None,
        &serde_json::json!({ "actorId": actor }).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

pub fn key_of(session: &Value) -> String {
    session["key"].as_str().expect("key").to_owned()
}

// ----- server-sent events -----

/// One SSE event: its name, its data parsed as JSON, and its id (`None`
/// when it has no `id` field).
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: Value,
    pub id: Option<String>,
}

/// Opens `GET /v1/events`; events arrive on the returned channel. The
/// stream's reader thread ends when the server closes the stream.
pub fn events(server: &Server, bearer: Option<&str>) -> (u16, std::sync::mpsc::Receiver<Sse>) {
    events_at(&server.url("/v1/events"), bearer)
}

/// Opens `GET /v1/session/events` with the session key `key`.
pub fn session_events(server: &Server, key: &str) -> (u16, std::sync::mpsc::Receiver<Sse>) {
    events_at(&server.url("/v1/session/events"), Some(key))
}

/// As `events`, for the events route at `url`.
pub fn events_at(url: &str, bearer: Option<&str>) -> (u16, std::sync::mpsc::Receiver<Sse>) {
    let stream = follow(url, bearer, None);
    (stream.status, stream.events)
}

/// An open event stream, read by a thread of its own.
pub struct Follow {
    pub status: u16,
    /// The events, in order (id-only messages are not events).
    pub events: std::sync::mpsc::Receiver<Sse>,
    /// The last id the stream gave, as a client keeps it (id-only messages
    /// included): what it sends as `Last-Event-ID` when it reconnects.
    pub last_id: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// The answer's body, when it is not a stream (`status` not 200).
    pub body: String,
    /// Set when the server ended the stream (the reader reached its end).
    pub ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Follow {
    /// The last id given, failing the test if none.
    #[track_caller]
    pub fn last_id(&self) -> String {
        self.last_id
            .lock()
            .unwrap()
            .clone()
            .expect("the stream gave an id")
    }

    /// The next event, failing the test after `limit`.
    #[track_caller]
    pub fn next(&self, limit: Duration) -> Sse {
        self.events
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no event within {limit:?}: {e}"))
    }
}

/// Opens the events route at `url`, sending `last_event_id` as
/// `Last-Event-ID` if given.
pub fn follow(url: &str, bearer: Option<&str>, last_event_id: Option<&str>) -> Follow {
    let agent = agent(Duration::from_secs(120));
    let mut builder = request("GET", url, bearer);
    if let Some(id) = last_event_id {
        builder = builder.header("Last-Event-ID", id);
    }
    let resp = agent
        .run(builder.body(()).expect("request"))
        .expect("events request");
    let status = resp.status().as_u16();
    let (tx, rx) = std::sync::mpsc::channel();
    let last_id = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if status != 200 {
        let body = resp.into_body().read_to_string().unwrap_or_default();
        return Follow {
            status,
            events: rx,
            last_id,
            body,
            ended,
        };
    }
    let reader = resp.into_body().into_reader();
    let (keep, done) = (last_id.clone(), ended.clone());
    std::thread::spawn(move || {
        let mut event = String::new();
        let mut data = String::new();
        let mut id = None;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if line.is_empty() {
                if let Some(id) = &id {
                    *keep.lock().unwrap() = Some(String::clone(id));
                }
                if !event.is_empty() {
                    let parsed = serde_json::from_str(&data).unwrap_or(Value::Null);
                    let sse = Sse {
                        event: std::mem::take(&mut event),
                        data: parsed,
                        id: id.clone(),
                    };
                    if tx.send(sse).is_err() {
                        break;
                    }
                }
                id = None;
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_owned());
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Follow {
        status,
        events: rx,
        last_id,
        body: String::new(),
        ended,
    }
}

/// A TCP relay in front of a server, standing for the network (or a load
/// balancer) between a client and it: [`Relay::cut`] closes every
/// connection through it at once, as a server going away or a network
/// failure would, while new connections go through again.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    /// Relays 127.0.0.1:<a free port> to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (upstream, sockets) = (upstream.to_owned(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                };
                let mut kept = sockets.lock().unwrap();
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        kept.push(s);
                    }
                }
                drop(kept);
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    pipe(c, server);
                    pipe(s, client);
                }
            }
        });
        Relay { addr, open }
    }

    /// `path` on the relay.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Closes every connection made through the relay so far.
    pub fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Reads a file, failing the test on error.
pub fn read(path: &Path) -> String {
    let mut s = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    s
}

/// A two-thread tokio runtime and a listener bound to a free loopback port,
/// for a server run in this process (`sessiondb_server::run`).
pub fn loopback_runtime() -> (
    tokio::runtime::Runtime,
    tokio::net::TcpListener,
    std::net::SocketAddr,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    (runtime, listener, addr)
}

/// Opens a store, retrying while it is briefly "in use": a child process
/// that another test forks in the instant after a close inherits the lock
/// until it execs.
pub fn open_with(config: sessiondb::Config) -> sessiondb::SessionStore {
    let started = Instant::now();
    loop {
        match sessiondb::SessionStore::open(config.clone()) {
            Ok(store) => return store,
            Err(sessiondb::Error::InUse { .. }) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open {config:?}: {e}"),
        }
    }
}

/// The value of an unlabelled series in a /metrics text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Polls `check` every 20 ms until it holds, failing after `limit`.
#[track_caller]
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- the server in process -----

/// The server run in process on a store with a manual clock and no reaper
/// thread (tests reap with `SessionStore::reap_expired`); the clock also
/// ages the server's event history.
pub struct InProcess {
    pub runtime: tokio::runtime::Runtime,
    pub addr: std::net::SocketAddr,
    pub store: sessiondb::SessionStore,
    pub clock: std::sync::Arc<sessiondb::ManualClock>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<sessiondb_server::AnyResult<()>>>,
}

impl InProcess {
    pub fn start(dir: &Path, options: sessiondb_server::Options) -> InProcess {
        InProcess::start_with(dir, options, |config| config)
    }

    /// As `start`, with the store's configuration adjusted by `tune`.
    pub fn start_with(
        dir: &Path,
        options: sessiondb_server::Options,
        tune: impl FnOnce(sessiondb::Config) -> sessiondb::Config,
    ) -> InProcess {
        let clock = std::sync::Arc::new(sessiondb::ManualClock::new(1_800_000_000_000));
        let store = open_with(tune(
            sessiondb::Config::new(dir.join("data"))
                .clock(clock.clone())
                .reaper_thread(false),
        ));
        let (runtime, listener, addr) = loopback_runtime();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = options.history_clock(clock.clone());
        let served = runtime.spawn(sessiondb_server::run_with(
            listener,
            store.clone(),
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        InProcess {
            runtime,
            addr,
            store,
            clock,
            stop: Some(stop),
            served: Some(served),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Registers `actor` on the store; the session (`id`, `expiresAt`) as
    /// JSON, and its key.
    pub fn register(&self, actor: &str) -> (Value, String) {
        let s = self
            .store
            .register(actor, "en", sessiondb::Data::new())
            .unwrap();
        let key = s.key().unwrap().to_owned();
        (
            serde_json::json!({"id": s.id(), "expiresAt": s.expires_at_ms()}),
            key,
        )
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let outcome = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(60), served).await });
            if !std::thread::panicking() {
                let outcome = outcome
                    .expect("run returned within 60 s")
                    .expect("run task");
                if let Err(e) = outcome {
                    panic!("run failed: {e}");
                }
            }
        }
    }
}
