//! Redis: a `redis-server` the harness starts on a free 127.0.0.1 port
//! (`--save "" --appendonly no` for the plain rows, `--appendonly yes
//! --appendfsync always` for the durable row). Register is one Lua script
//! (SET with expiry + time-index ZADD + actor-index SADD); resolve is GETEX.
//! One connection per client thread, one round trip per operation.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::Connection;

use super::{System, Worker};
use crate::clock::BenchClock;
use crate::shape::{self, Key, Record};

/// Due sessions one reap script call deletes.
const REAP_BATCH: usize = 1_000;
/// Registers per pipelined round trip when preloading (not timed).
const PRELOAD_PIPELINE: usize = 1_000;

const REGISTER: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
";

const EXTEND: &str = r"
local v = redis.call('GETEX', KEYS[1], 'PX', ARGV[1])
if not v then return false end
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[3])
return v
";

const SET_DATA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
redis.call('SET', KEYS[1], string.sub(v, 1, tonumber(ARGV[2])) .. ARGV[1], 'KEEPTTL')
return 1
";

// The actor id sits at byte 18 of the record, its length at byte 17
// (Lua strings count from 1); see `shape::Record`.
const REAP: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, d in ipairs(due) do
  local k = 's:' .. d
  local v = redis.call('GET', k)
  if v then
    local n = string.byte(v, 17)
    redis.call('SREM', 'a:' .. string.sub(v, 18, 17 + n), d)
    redis.call('DEL', k)
  end
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return #due
";

/// Whether `redis-server` is on PATH.
pub fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `redis-server` child on 127.0.0.1, stopped on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts a server keeping its files in `dir`; `durable` turns on the
    /// append-only file with an fsync per write.
    pub fn start(dir: &Path, durable: bool) -> Result<RedisServer> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--protected-mode", "yes", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir)
                .args(["--logfile", "redis.log", "--loglevel", "warning"])
                .arg("--unixsocket")
                .arg(dir.join("redis.sock"))
                .args(["--save", ""]);
            if durable {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
            } else {
                cmd.args(["--appendonly", "no"]);
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server")?;
            let mut server = RedisServer {
                child,
                port,
                dir: dir.to_path_buf(),
            };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e), // most likely the port was taken meanwhile
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("redis-server exited at start ({status})");
            }
            if let Ok(mut c) = self.connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL a client (sessiondb's Redis engine) connects with.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The URL of the server's unix socket.
    pub fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }

    pub fn connection(&self) -> Result<Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        Ok(client.get_connection()?)
    }

    /// The server's peak resident set (VmHWM), in bytes.
    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn peak_rss(&self) -> Result<u64> {
        crate::rss::peak_rss_of(self.child.id())
    }

    /// Writes an RDB snapshot (`SAVE`) and returns its size: what this
    /// Redis would put on disk for its data.
    pub fn snapshot_bytes(&self) -> Result<u64> {
        let mut c = self.connection()?;
        redis::cmd("SAVE").query::<String>(&mut c)?;
        Ok(std::fs::metadata(self.dir.join("dump.rdb"))?.len())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(mut c) = self.connection() {
            let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").exec(&mut c);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Scripts {
    register: String,
    extend: String,
    set_data: String,
    reap: String,
}

pub struct Redis {
    name: &'static str,
    pub server: RedisServer,
    scripts: Scripts,
    clock: BenchClock,
}

fn load(c: &mut Connection, code: &str) -> Result<String> {
    Ok(redis::cmd("SCRIPT").arg("LOAD").arg(code).query(c)?)
}

impl Redis {
    pub fn new(name: &'static str, server: RedisServer, clock: &BenchClock) -> Result<Redis> {
        let mut c = server.connection()?;
        let scripts = Scripts {
            register: load(&mut c, REGISTER)?,
            extend: load(&mut c, EXTEND)?,
            set_data: load(&mut c, SET_DATA)?,
            reap: load(&mut c, REAP)?,
        };
        Ok(Redis {
            name,
            server,
            scripts,
            clock: clock.clone(),
        })
    }

    fn register_cmd(&self, actor: &str) -> Result<(redis::Cmd, String)> {
        let secret = shape::new_secret()?;
        let d = shape::digest(&secret);
        let rec = Record::new(actor, self.clock.now_ms())?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.scripts.register)
            .arg(3)
            .arg(session_key(&d))
            .arg("exp")
            .arg(format!("a:{actor}"))
            .arg(rec.encode())
            .arg(shape::ttl_ms())
            .arg(rec.expires_at)
            .arg(&d[..]);
        Ok((cmd, format!("{actor}:{secret}")))
    }
}

fn session_key(d: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(34);
    k.extend_from_slice(b"s:");
    k.extend_from_slice(d);
    k
}

struct RedisWorker<'a> {
    redis: &'a Redis,
    conn: Connection,
}

fn check_actor(value: Option<Vec<u8>>, actor: &str) -> Result<()> {
    let rec = Record::decode(&value.context("noSession")?)?;
    if rec.actor != actor {
        bail!("keyMismatch");
    }
    Ok(())
}

impl Worker for RedisWorker<'_> {
    fn register(&mut self, actor: &str) -> Result<String> {
        let (cmd, key) = self.redis.register_cmd(actor)?;
        cmd.exec(&mut self.conn)?;
        Ok(key)
    }

    fn resolve(&mut self, key: &Key) -> Result<()> {
        let (actor, secret) = shape::split_key(&key.full)?;
        let value: Option<Vec<u8>> = redis::cmd("GETEX")
            .arg(session_key(&shape::digest(secret)))
            .arg("PX")
            .arg(shape::ttl_ms())
            .query(&mut self.conn)?;
        check_actor(value, actor)
    }

    fn extend(&mut self, key: &Key) -> Result<()> {
        let (actor, secret) = shape::split_key(&key.full)?;
        let d = shape::digest(secret);
        let value: Option<Vec<u8>> = redis::cmd("EVALSHA")
            .arg(&self.redis.scripts.extend)
            .arg(2)
            .arg(session_key(&d))
            .arg("exp")
            .arg(shape::ttl_ms())
            .arg(self.redis.clock.now_ms() + shape::ttl_ms())
            .arg(&d[..])
            .query(&mut self.conn)?;
        check_actor(value, actor)
    }

    fn set_data(&mut self, key: &Key, score: u64) -> Result<()> {
        let (actor, secret) = shape::split_key(&key.full)?;
        let d = shape::digest(secret);
        let changed: i64 = redis::cmd("EVALSHA")
            .arg(&self.redis.scripts.set_data)
            .arg(1)
            .arg(session_key(&d))
            .arg(shape::data_bytes(score))
            .arg(Record::header_len(actor))
            .query(&mut self.conn)?;
        if changed != 1 {
            bail!("noSession");
        }
        Ok(())
    }
}

impl System for Redis {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    fn worker(&self) -> Result<Box<dyn Worker + '_>> {
        Ok(Box::new(RedisWorker {
            redis: self,
            conn: self.server.connection()?,
        }))
    }

    fn reap(&self) -> Result<usize> {
        let mut c = self.server.connection()?;
        let mut total = 0;
        loop {
            let n: usize = redis::cmd("EVALSHA")
                .arg(&self.scripts.reap)
                .arg(1)
                .arg("exp")
                .arg(self.clock.now_ms())
                .arg(REAP_BATCH)
                .query(&mut c)?;
            total += n;
            if n < REAP_BATCH {
                return Ok(total);
            }
        }
    }

    /// Pipelined script calls: loading is not what is measured.
    fn preload(
        &self,
        n: usize,
        _threads: usize,
        actor_prefix: &str,
        keep: bool,
    ) -> Result<Vec<Key>> {
        let mut c = self.server.connection()?;
        let mut keys = Vec::new();
        let mut done = 0;
        while done < n {
            let mut pipe = redis::pipe();
            for _ in 0..PRELOAD_PIPELINE.min(n - done) {
                let (cmd, key) = self.register_cmd(&shape::next_actor(actor_prefix))?;
                pipe.add_command(cmd).ignore();
                if keep {
                    keys.push(Key::new(key)?);
                }
                done += 1;
            }
            pipe.exec(&mut c)?;
        }
        Ok(keys)
    }
}
