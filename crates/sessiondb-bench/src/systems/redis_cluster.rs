//! A Redis Cluster the harness starts: three primaries, each with a
//! replica, on free 127.0.0.1 ports (each below 55535: the cluster bus is
//! 10000 above), without persistence (as the `redis` rows), formed with
//! `redis-cli --cluster create`. Stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct RedisCluster {
    nodes: Vec<(u16, Child)>,
}

/// Six free ports in a row with their bus ports free, below 55535.
fn free_ports() -> Result<Vec<u16>> {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    for base in (start..start + 5_000).step_by(7) {
        let ports: Vec<u16> = (base..base + 6).collect();
        if ports.iter().all(|&p| free(p) && free(p + 10_000)) {
            return Ok(ports);
        }
    }
    bail!("no six free ports with free cluster bus ports below 55535")
}

fn connect(port: u16) -> Option<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .ok()?
        .get_connection_with_timeout(Duration::from_millis(200))
        .ok()
}

impl RedisCluster {
    pub fn start(dir: &Path) -> Result<RedisCluster> {
        let ports = free_ports()?;
        let mut cluster = RedisCluster { nodes: Vec::new() };
        for &port in &ports {
            let node_dir: PathBuf = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir)?;
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", "1000"])
                .arg("--dir")
                .arg(&node_dir)
                .args(["--logfile", "redis.log", "--loglevel", "warning"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server")?;
            cluster.nodes.push((port, child));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ports.iter().all(|&p| connect(p).is_some()) {
            if Instant::now() > deadline {
                bail!("the cluster's nodes did not start within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let state_ok = self.nodes.iter().all(|(p, _)| {
                connect(*p).is_some_and(|mut c| {
                    redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query::<String>(&mut c)
                        .is_ok_and(|i| i.contains("cluster_state:ok"))
                })
            });
            let replicas = self
                .nodes
                .iter()
                .filter(|(p, _)| {
                    connect(*p).is_some_and(|mut c| {
                        redis::cmd("INFO")
                            .arg("replication")
                            .query::<String>(&mut c)
                            .is_ok_and(|i| i.contains("role:master") && i.contains("state=online"))
                    })
                })
                .count();
            if state_ok && replicas == 3 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster did not become healthy within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    /// The nodes' URLs, the seeds a store is given.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (port, child) in &mut self.nodes {
            if let Some(mut c) = connect(*port) {
                let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").exec(&mut c);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
