//! The processes of a chaos run, all on loopback: a redis-server of its own on a free port, the
//! control plane on a fresh Postgres database (stopped and started again on the same ports), and
//! data-plane nodes that can be killed, frozen and restarted, each reaching Redis through a TCP
//! proxy of its own. Every child gets SIGKILL when the runner dies (PR_SET_PDEATHSIG, so even a
//! killed runner leaves nothing behind) and when the [`Cluster`] drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::proxy::Proxy;
use crate::spawn;

const OPERATOR_TOKEN: &str = "avo_aviary_chaos_operator_token_0123456789abcdef";

pub struct Cluster {
    pub app_id: String,
    /// The API key publishers use and tokens are minted with (replaced by [`Cluster::rotate_key`]).
    pub api_key: String,
    api_key_id: String,
    tenant_id: String,
    tenant_admin: String,
    pub control_plane: String,
    pub nodes: Vec<Node>,
    /// Between node `i` and Redis.
    pub redis_proxies: Vec<Proxy>,
    node_args: Vec<String>,
    control_args: Vec<String>,
    aviary: PathBuf,
    pub scratch: PathBuf,
    redis: Option<Child>,
    redis_port: u16,
    control: Option<Child>,
    database: Option<(String, String)>,
}

pub struct Node {
    pub addr: SocketAddr,
    child: Option<Child>,
    pub starts: u32,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn command(bin: &Path, log: &Path) -> anyhow::Result<Command> {
    let mut c = Command::new(bin);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    c.stdin(Stdio::null()).stderr(log).kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok(c)
}

/// Bound on a process's start (a debug build on a loaded machine is slow).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Spawns `c` and waits for its `listening on` line; the rest of its stdout (its log) is
/// appended to `log`.
async fn spawn_listening(mut c: Command, what: &str, log: &Path) -> anyhow::Result<(Child, SocketAddr)> {
    let level = std::env::var("AVIARY_CHAOS_NODE_LOG").unwrap_or_else(|_| "warn".to_owned());
    c.env("AVIARY_LOG", level);
    spawn::spawn_listening(c, what, START_TIMEOUT, Some(log)).await
}

async fn post(http: &reqwest::Client, url: String, bearer: &str, body: Value) -> anyhow::Result<Value> {
    let res = http.post(&url).bearer_auth(bearer).json(&body).send().await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status} {body}");
    }
    Ok(body)
}

impl Cluster {
    pub async fn start(aviary: &Path, postgres: &str, nodes: usize) -> anyhow::Result<Cluster> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let scratch = std::env::temp_dir().join(format!("aviary-chaos-{run}"));
        std::fs::create_dir_all(&scratch)?;
        let mut cluster = Cluster {
            app_id: String::new(),
            api_key: String::new(),
            api_key_id: String::new(),
            tenant_id: String::new(),
            tenant_admin: String::new(),
            control_plane: String::new(),
            nodes: Vec::new(),
            redis_proxies: Vec::new(),
            node_args: Vec::new(),
            control_args: Vec::new(),
            aviary: aviary.to_path_buf(),
            scratch: scratch.clone(),
            redis: None,
            redis_port: 0,
            control: None,
            database: None,
        };

        // Redis of our own, without persistence.
        cluster.redis_port = free_port()?;
        cluster.start_redis().await?;
        let redis_port = cluster.redis_port;

        // A fresh database.
        let name = format!("aviary_chaos_{run}");
        let status = std::process::Command::new("psql")
            .args([postgres, "-qc", &format!("CREATE DATABASE {name}")])
            .stdout(Stdio::null())
            .status()
            .context("running psql")?;
        if !status.success() {
            bail!("psql could not create database {name}");
        }
        cluster.database = Some((postgres.to_owned(), name.clone()));
        let db_url = match postgres.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => bail!("--postgres must end with /<database>"),
        };

        // Fixed ports, so that a control plane started again is where nodes and clients look.
        let grpc = format!("127.0.0.1:{}", free_port()?);
        let http = format!("127.0.0.1:{}", free_port()?);
        let node_token = format!("avn_chaos_{run}");
        cluster.control_args = [
            "control-plane",
            "--database-url",
            &db_url,
            "--listen",
            &http,
            "--grpc-listen",
            &grpc,
            // A fixed --listen port would put metrics on the default 9464.
            "--metrics-listen",
            "127.0.0.1:0",
            "--operator-token",
            OPERATOR_TOKEN,
            "--node-token",
            &node_token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cluster.start_control_plane().await?;
        cluster.provision().await?;

        cluster.node_args = [
            "data-plane",
            "--control-plane",
            &format!("http://{grpc}"),
            "--node-token",
            &node_token,
            "--listen",
            "127.0.0.1:0",
            // Usage reaches the usage API within a second: the end compares it with the oracle.
            "--usage-interval-s",
            "1",
            "--redis-prefix",
            &format!("chaos{run}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..nodes {
            let proxy = Proxy::start(format!("127.0.0.1:{redis_port}").parse()?).await?;
            cluster.redis_proxies.push(proxy);
        }
        for i in 0..nodes {
            let (child, addr) = cluster.spawn_node(i).await?;
            cluster.nodes.push(Node { addr, child: Some(child), starts: 1 });
        }
        Ok(cluster)
    }

    async fn provision(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let base = &self.control_plane;
        let quotas = json!({
            "max_connections": 100_000,
            "max_messages_per_s": 1_000_000,
            "max_message_bytes": 65_536,
            "max_subscriptions_per_connection": 128,
            "max_presence_members": 1_000,
        });
        let tenant =
            post(&http, format!("{base}/v1/tenants"), OPERATOR_TOKEN, json!({"name": "chaos", "quotas": quotas}))
                .await?;
        let tenant_id = tenant["tenant"]["id"].as_str().ok_or_else(|| anyhow!("no tenant id: {tenant}"))?.to_owned();
        let admin = tenant["admin_key"]["secret"].as_str().ok_or_else(|| anyhow!("no admin key: {tenant}"))?.to_owned();
        self.tenant_admin = admin.clone();
        self.tenant_id = tenant_id.clone();
        // History long enough that a resume normally recovers: the oracle then checks exact
        // replay, not only the `recovered: false` path.
        let app = post(
            &http,
            format!("{base}/v1/tenants/{tenant_id}/apps"),
            &admin,
            json!({"name": "chaos", "namespaces": [{"name": ""}, {"name": "chaos", "history_size": 10_000}]}),
        )
        .await?;
        self.app_id = app["id"].as_str().ok_or_else(|| anyhow!("no app id: {app}"))?.to_owned();
        self.rotate_key_inner().await
    }

    /// Mints a new all-powerful API key and makes it the one in use; returns the previous one's id.
    async fn rotate_key_inner(&mut self) -> anyhow::Result<()> {
        let key = post(
            &reqwest::Client::new(),
            format!("{}/v1/apps/{}/keys", self.control_plane, self.app_id),
            &self.tenant_admin,
            json!({"name": "chaos", "capabilities": {"*": ["subscribe", "publish", "presence", "history"]}}),
        )
        .await?;
        self.api_key = key["secret"].as_str().ok_or_else(|| anyhow!("no key secret: {key}"))?.to_owned();
        self.api_key_id = key["key"]["id"].as_str().ok_or_else(|| anyhow!("no key id: {key}"))?.to_owned();
        Ok(())
    }

    /// Key revocation: a new key takes over, then the one in use is revoked. Connections whose
    /// token it minted are closed (4010) and its publishes refused (401).
    pub async fn rotate_key(&mut self) -> anyhow::Result<()> {
        let old = self.api_key_id.clone();
        self.rotate_key_inner().await?;
        let url = format!("{}/v1/apps/{}/keys/{old}", self.control_plane, self.app_id);
        let res = reqwest::Client::new().delete(&url).bearer_auth(&self.tenant_admin).send().await?;
        if !res.status().is_success() {
            bail!("DELETE {url}: {}", res.status());
        }
        Ok(())
    }

    /// Client revocation: every token of `client_id` issued up to now is refused, its live
    /// connections are closed (4010).
    pub async fn revoke_client(&self, client_id: &str) -> anyhow::Result<()> {
        post(
            &reqwest::Client::new(),
            format!("{}/v1/apps/{}/clients/{client_id}/revoke", self.control_plane, self.app_id),
            &self.tenant_admin,
            json!({}),
        )
        .await?;
        Ok(())
    }

    pub async fn start_control_plane(&mut self) -> anyhow::Result<()> {
        let log = self.scratch.join("control-plane.log");
        let mut cp = command(&self.aviary, &log)?;
        cp.args(&self.control_args).env("AVIARY_RATE_LIMIT_PER_IP", "0").env("AVIARY_RATE_LIMIT_PER_KEY", "0");
        let (child, addr) = spawn_listening(cp, "aviary control-plane", &log).await?;
        self.control = Some(child);
        self.control_plane = format!("http://{addr}");
        Ok(())
    }

    /// The tenant's usage totals (`GET /v1/tenants/{id}/usage`, default window).
    pub async fn usage(&self) -> anyhow::Result<Value> {
        let url = format!("{}/v1/tenants/{}/usage", self.control_plane, self.tenant_id);
        let res = reqwest::Client::new().get(&url).bearer_auth(OPERATOR_TOKEN).send().await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {url}: {status} {body}");
        }
        Ok(body["totals"].clone())
    }

    /// SIGKILLs the control plane (nodes keep serving from their config).
    pub async fn stop_control_plane(&mut self) {
        if let Some(mut child) = self.control.take() {
            let _ = child.kill().await;
        }
    }

    /// `CLIENT PAUSE <hold> ALL`: Redis answers no client for `hold` (its connections stay up).
    pub async fn pause_redis(&self, hold: Duration) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.redis_port)).await?;
        conn.write_all(format!("CLIENT PAUSE {} ALL\r\n", hold.as_millis()).as_bytes()).await?;
        let mut reply = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut reply)).await??;
        if !reply[..n].starts_with(b"+OK") {
            bail!("CLIENT PAUSE: {}", String::from_utf8_lossy(&reply[..n]));
        }
        Ok(())
    }

    async fn start_redis(&mut self) -> anyhow::Result<()> {
        let port = self.redis_port;
        let mut redis = command(Path::new("redis-server"), &self.scratch.join("redis.log"))?;
        redis.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        redis.stdout(Stdio::null());
        self.redis = Some(redis.spawn().context("starting redis-server")?);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!("redis-server did not listen on {port} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// SIGKILLs Redis (everything in it is lost: streams, idempotency keys, presence), keeps it
    /// down for `hold`, and starts an empty one on the same port.
    pub async fn restart_redis(&mut self, hold: Duration) -> anyhow::Result<()> {
        if let Some(mut child) = self.redis.take() {
            let _ = child.kill().await;
        }
        tokio::time::sleep(hold).await;
        self.start_redis().await
    }

    async fn spawn_node(&self, i: usize) -> anyhow::Result<(Child, SocketAddr)> {
        let log = self.scratch.join(format!("node-{i}.log"));
        let mut n = command(&self.aviary, &log)?;
        n.args(&self.node_args)
            .arg("--redis-url")
            .arg(format!("redis://{}", self.redis_proxies[i].addr))
            .arg("--cache-dir")
            .arg(self.scratch.join(format!("node-{i}-cache")));
        spawn_listening(n, &format!("aviary data-plane {i}"), &log).await
    }

    fn pid(&self, i: usize) -> Option<i32> {
        self.nodes[i].child.as_ref().and_then(|c| c.id()).map(|p| p as i32)
    }

    fn signal(&self, i: usize, sig: i32) {
        if let Some(pid) = self.pid(i) {
            // SAFETY: a plain kill(2) on a child we own and have not reaped.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill().await;
        }
    }

    pub async fn restart(&mut self, i: usize) -> anyhow::Result<SocketAddr> {
        let (child, addr) = self.spawn_node(i).await?;
        let node = &mut self.nodes[i];
        node.child = Some(child);
        node.addr = addr;
        node.starts += 1;
        Ok(addr)
    }

    pub fn freeze(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    pub fn thaw(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// Whether any node exited by itself (a crash: the runner's own kills take the child first).
    pub fn crashed(&mut self) -> Option<String> {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Some(format!("data-plane node {i} exited by itself ({status})"));
            }
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        for child in [self.control.as_mut(), self.redis.as_mut()].into_iter().flatten() {
            let _ = child.start_kill();
        }
        if let Some((admin_url, name)) = &self.database {
            let _ = std::process::Command::new("psql")
                .args([admin_url.as_str(), "-qc", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
