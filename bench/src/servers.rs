//! Starting the servers under test as child processes and provisioning them: `aviary dev`, an
//! Aviary cluster (control plane on Postgres + data-plane nodes on Redis), either driven over
//! Aviary's protocol or over Pusher's (a Pusher credential of the same app), Sockudo with its
//! in-memory adapter or as nodes joined by its Redis adapter, and the Socket.io peer alone or as
//! nodes joined by `@socket.io/redis-adapter`. Every child is killed when its [`Server`] drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::client::{Auth, Endpoint, Kind};

/// Where the server binaries are.
#[derive(Debug, Clone, clap::Args)]
pub struct Binaries {
    /// The `aviary` binary (build it with `cargo build --release -p aviary`).
    #[arg(long, global = true, env = "AVIARY_BENCH_AVIARY_BIN", default_value = "target/release/aviary")]
    pub aviary_bin: PathBuf,
    /// The `sockudo` binary (`cargo install sockudo`).
    #[arg(long, global = true, env = "AVIARY_BENCH_SOCKUDO_BIN", default_value = "sockudo")]
    pub sockudo_bin: PathBuf,
    /// Directory of the Socket.io peer (`npm ci` done in it).
    #[arg(long, global = true, env = "AVIARY_BENCH_SOCKETIO_DIR", default_value = "bench/peers/socketio")]
    pub socketio_dir: PathBuf,
    /// Postgres server for the multi-node scenario (a fresh database is created in it).
    #[arg(
        long,
        global = true,
        env = "AVIARY_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres: String,
    /// Redis for the multi-node scenario.
    #[arg(long, global = true, env = "AVIARY_BENCH_REDIS", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
}

/// A running server (one or several processes) and how to reach it.
pub struct Server {
    pub endpoint: Endpoint,
    /// The processes whose RSS and CPU are measured (the control plane of a cluster is not).
    pub pids: Vec<u32>,
    children: Vec<Child>,
    scratch: Option<PathBuf>,
    database: Option<(String, String)>,
}

impl Server {
    /// Takes over a started node of a cluster: its process is measured and killed with the
    /// server, connections are spread over it, and the first node takes the backend HTTP calls.
    fn adopt_node(&mut self, child: Child, addr: SocketAddr) {
        self.pids.extend(child.id());
        self.children.push(child);
        if self.endpoint.nodes.is_empty() {
            self.endpoint.http = format!("http://{addr}");
        }
        self.endpoint.nodes.push(addr);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((admin_url, name)) = &self.database {
            // Best effort; the processes using it were just killed, hence FORCE.
            let _ = std::process::Command::new("psql")
                .args([admin_url.as_str(), "-qc", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

const OPERATOR_TOKEN: &str = "avo_aviary_bench_operator_token_0123456789abcdef";

fn scratch_dir(label: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("aviary-bench-{label}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Spawns `command` (stderr inherited) and waits up to 60 s for its `listening on` line.
async fn spawn_listening(mut command: Command, what: &str) -> anyhow::Result<(Child, SocketAddr)> {
    command.stderr(Stdio::inherit()).stdin(Stdio::null()).kill_on_drop(true);
    crate::spawn::spawn_listening(command, what, Duration::from_secs(60), None).await
}

fn aviary_command(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("AVIARY_LOG", "warn");
    // The control plane's request rate limits (100 requests/s per API key by default) would
    // cap the token-mint measurement at the limit; the bench measures the mint path itself.
    // Data-plane nodes ignore these variables.
    c.env("AVIARY_RATE_LIMIT_PER_IP", "0").env("AVIARY_RATE_LIMIT_PER_KEY", "0");
    c
}

/// Tenant quotas high enough that the bench measures the engine, not the quota layer.
fn bench_quotas() -> Value {
    json!({
        "max_connections": 1_000_000,
        "max_messages_per_s": 10_000_000,
        "max_message_bytes": 65_536,
        "max_subscriptions_per_connection": 128,
        "max_presence_members": 1_000,
    })
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

/// Creates a tenant, an app and an all-powerful API key through the control-plane REST API at
/// `base`, then mints `tokens` connection tokens; for [`Kind::AviaryPusher`] it also creates a
/// Pusher credential of the app (every operation on every channel) and returns that instead.
async fn provision(base: &str, kind: Kind, tokens: usize) -> anyhow::Result<Auth> {
    let http = reqwest::Client::new();
    let tenant =
        post(&http, format!("{base}/v1/tenants"), OPERATOR_TOKEN, json!({"name": "bench", "quotas": bench_quotas()}))
            .await?;
    let tenant_id = tenant["tenant"]["id"].as_str().ok_or_else(|| anyhow!("no tenant id: {tenant}"))?.to_owned();
    let admin = tenant["admin_key"]["secret"].as_str().ok_or_else(|| anyhow!("no admin key: {tenant}"))?.to_owned();
    let app = post(
        &http,
        format!("{base}/v1/tenants/{tenant_id}/apps"),
        &admin,
        json!({"name": "bench", "namespaces": [{"name": ""}, {"name": "room"}]}),
    )
    .await?;
    let app_id = app["id"].as_str().ok_or_else(|| anyhow!("no app id: {app}"))?.to_owned();
    let key = post(
        &http,
        format!("{base}/v1/apps/{app_id}/keys"),
        &admin,
        json!({"name": "bench", "capabilities": {"*": ["subscribe", "publish", "presence", "history"]}}),
    )
    .await?;
    let api_key = key["secret"].as_str().ok_or_else(|| anyhow!("no key secret: {key}"))?.to_owned();
    let mut minted = Vec::with_capacity(tokens);
    for i in 0..tokens.max(1) {
        let t = post(
            &http,
            format!("{base}/v1/apps/{app_id}/tokens"),
            &api_key,
            json!({"client_id": format!("bench-{i}"), "ttl_s": 600}),
        )
        .await?;
        minted.push(t["token"].as_str().ok_or_else(|| anyhow!("no token: {t}"))?.to_owned());
    }
    if kind == Kind::AviaryPusher {
        let c = post(&http, format!("{base}/v1/apps/{app_id}/pusher-credentials"), &admin, json!({})).await?;
        let field = |name: &str| {
            c[name].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no {name} in the Pusher credential: {c}"))
        };
        return Ok(Auth::Pusher { app_id: field("app_id")?, key: field("key")?, secret: field("secret")? });
    }
    Ok(Auth::Aviary { app_id, api_key, tokens: minted })
}

/// Connection tokens minted per server: connections share them round-robin (each connect still
/// verifies its token's signature and claims).
pub const TOKEN_POOL: usize = 64;

/// `aviary dev` on a scratch data dir, provisioned with a bench tenant; `kind` chooses the
/// protocol ([`Kind::Aviary`] or [`Kind::AviaryPusher`], `/app/<key>` on the same port).
pub async fn aviary_dev(bins: &Binaries, kind: Kind) -> anyhow::Result<Server> {
    let dir = scratch_dir("dev")?;
    let mut c = aviary_command(&bins.aviary_bin);
    c.args(["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--operator-token", OPERATOR_TOKEN])
        .arg("--data-dir")
        .arg(&dir);
    let (child, addr) = spawn_listening(c, "aviary dev").await?;
    let base = format!("http://{addr}");
    let auth = provision(&base, kind, TOKEN_POOL).await?;
    let server = Server {
        endpoint: Endpoint { kind, nodes: vec![addr], http: base, auth },
        pids: child.id().into_iter().collect(),
        children: vec![child],
        scratch: Some(dir),
        database: None,
    };
    await_accepting(&server.endpoint).await?;
    Ok(server)
}

/// Waits until every node of `ep` accepts a connection for the bench app (nodes learn new apps
/// and credentials from the control plane's config stream).
async fn await_accepting(ep: &Endpoint) -> anyhow::Result<()> {
    for (i, _) in ep.nodes.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match crate::client::open(ep, i, "127.0.0.1".parse()?).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(e.context(format!("node {i} not ready")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

/// A control plane on a fresh Postgres database and `nodes` data-plane nodes sharing Redis
/// (the nodes follow the control plane over gRPC), driven over the protocol of `kind`.
pub async fn aviary_cluster(bins: &Binaries, nodes: usize, kind: Kind) -> anyhow::Result<Server> {
    let name = format!("aviary_bench_{}", uuid::Uuid::new_v4().simple());
    let status = std::process::Command::new("psql")
        .args([bins.postgres.as_str(), "-qc", &format!("CREATE DATABASE {name}")])
        .status()
        .context("running psql")?;
    if !status.success() {
        bail!("psql could not create database {name}");
    }
    let db_url = match bins.postgres.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => bail!("--postgres must end with /<database>"),
    };
    let mut server = Server {
        endpoint: Endpoint { kind, nodes: Vec::new(), http: String::new(), auth: Auth::None },
        pids: Vec::new(),
        children: Vec::new(),
        scratch: None,
        database: Some((bins.postgres.clone(), name)),
    };
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let node_token = format!("avn_bench_{}", uuid::Uuid::new_v4().simple());
    // Seals Pusher credential secrets in the store (64 hex digits).
    let credentials_key = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let mut cp = aviary_command(&bins.aviary_bin);
    cp.args(["control-plane", "--database-url", &db_url, "--listen", "127.0.0.1:0", "--grpc-listen", &grpc]).args([
        "--operator-token",
        OPERATOR_TOKEN,
        "--node-token",
        &node_token,
        "--credentials-key",
        &credentials_key,
    ]);
    let (cp_child, cp_addr) = spawn_listening(cp, "aviary control-plane").await?;
    server.children.push(cp_child);
    let auth = provision(&format!("http://{cp_addr}"), kind, TOKEN_POOL).await?;
    let prefix = format!("bench{}", uuid::Uuid::new_v4().simple());
    let scratch = scratch_dir("cluster")?;
    server.scratch = Some(scratch.clone());
    for i in 0..nodes {
        let mut n = aviary_command(&bins.aviary_bin);
        // Nodes stream app config and keys from the control plane over gRPC.
        n.args(["data-plane", "--control-plane", &format!("http://{grpc}"), "--node-token", &node_token])
            .args(["--listen", "127.0.0.1:0", "--redis-url", &bins.redis, "--redis-prefix", &prefix])
            .arg("--cache-dir")
            .arg(scratch.join(format!("node-{i}")));
        let (child, addr) = spawn_listening(n, &format!("aviary data-plane {i}")).await?;
        server.adopt_node(child, addr);
    }
    server.endpoint.auth = auth;
    await_accepting(&server.endpoint).await?;
    await_joined(&server.endpoint).await?;
    Ok(server)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The Pusher app every Sockudo node serves: `(id, key, secret)`.
const SOCKUDO_APP: (&str, &str, &str) = ("bench", "bench-key", "bench-secret");

/// A Sockudo node configured through env: memory app manager holding [`SOCKUDO_APP`], memory
/// cache and queue, no rate limits, metrics off. It runs in `dir`, so no config file is read but
/// `dir/config/config.toml` (if the caller wrote one), and writes its output to `log`.
fn sockudo_command(bins: &Binaries, dir: &Path, port: u16, log: &Path) -> anyhow::Result<Command> {
    let (app_id, key, secret) = SOCKUDO_APP;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut c = Command::new(&bins.sockudo_bin);
    c.current_dir(dir)
        .envs([
            ("HOST", "127.0.0.1"),
            ("PORT", &port.to_string()),
            ("DEBUG", "false"),
            ("ADAPTER_DRIVER", "local"),
            ("CACHE_DRIVER", "memory"),
            ("QUEUE_DRIVER", "memory"),
            ("APP_MANAGER_DRIVER", "memory"),
            ("RATE_LIMITER_ENABLED", "false"),
            ("METRICS_ENABLED", "false"),
            ("SOCKUDO_DEFAULT_APP_ID", app_id),
            ("SOCKUDO_DEFAULT_APP_KEY", key),
            ("SOCKUDO_DEFAULT_APP_SECRET", secret),
            ("SOCKUDO_DEFAULT_APP_ENABLED", "true"),
            ("SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS", "1000000"),
            ("SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND", "10000000"),
            ("SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND", "10000000"),
            ("SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND", "10000000"),
            ("SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true"),
            ("LOG_COLORS_ENABLED", "false"),
            ("RUST_LOG", "warn"),
        ])
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(c)
}

/// The last lines of a child's log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
    if tail.is_empty() { format!("{} is empty", log.display()) } else { format!("{}: {tail}", log.display()) }
}

/// Spawns `command` and waits until `addr` accepts TCP connections; if the process exits first,
/// the error quotes the end of its `log`.
async fn spawn_accepting(mut command: Command, addr: SocketAddr, log: &Path, what: &str) -> anyhow::Result<Child> {
    let mut child = command.spawn().with_context(|| format!("starting {what}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}) before listening on {addr}; {}", log_tail(log));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 30 s; {}", log_tail(log));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(child)
}

fn sockudo_endpoint(nodes: Vec<SocketAddr>) -> Endpoint {
    let (app_id, key, secret) = SOCKUDO_APP;
    Endpoint {
        kind: Kind::Sockudo,
        http: nodes.first().map(|a| format!("http://{a}")).unwrap_or_default(),
        nodes,
        auth: Auth::Pusher { app_id: app_id.to_owned(), key: key.to_owned(), secret: secret.to_owned() },
    }
}

/// Sockudo with its local (in-memory) adapter, memory app manager/cache/queue, no rate limits.
pub async fn sockudo(bins: &Binaries) -> anyhow::Result<Server> {
    let dir = scratch_dir("sockudo")?;
    let port = free_port()?;
    let log = dir.join("sockudo.log");
    let c = sockudo_command(bins, &dir, port, &log)?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let child = spawn_accepting(c, addr, &log, &format!("sockudo ({})", bins.sockudo_bin.display())).await?;
    Ok(Server {
        endpoint: sockudo_endpoint(vec![addr]),
        pids: child.id().into_iter().collect(),
        children: vec![child],
        scratch: Some(dir),
        database: None,
    })
}

/// `nodes` Sockudo nodes joined by its Redis adapter on `--redis` (channels under a prefix unique
/// to this run), each otherwise configured as [`sockudo`] is but for a Redis cache, which Sockudo
/// requires of a cluster. The adapter must be compiled in
/// (`cargo install sockudo --features redis`); falling back to a local adapter is disabled, so a
/// binary without it fails here instead of silently running unjoined nodes.
pub async fn sockudo_cluster(bins: &Binaries, nodes: usize) -> anyhow::Result<Server> {
    let dir = scratch_dir("sockudo-cluster")?;
    let mut server = Server {
        endpoint: sockudo_endpoint(Vec::new()),
        pids: Vec::new(),
        children: Vec::new(),
        scratch: Some(dir.clone()),
        database: None,
    };
    // The adapter's channel prefix has no env variable: it comes from the config file, which
    // Sockudo reads from ./config/config.toml (env variables still override the rest).
    let prefix = format!("aviary_bench_sockudo_{}", uuid::Uuid::new_v4().simple());
    std::fs::create_dir_all(dir.join("config"))?;
    std::fs::write(
        dir.join("config/config.toml"),
        format!(
            "[adapter]\nfallback_to_local = false\n\n[adapter.redis]\nprefix = \"{prefix}\"\n\n\
             [cache.redis]\nprefix = \"{prefix}_cache\"\n"
        ),
    )?;
    for i in 0..nodes {
        let port = free_port()?;
        let log = dir.join(format!("node-{i}.log"));
        let mut c = sockudo_command(bins, &dir, port, &log)?;
        c.envs([
            ("ADAPTER_DRIVER", "redis"),
            ("ADAPTER_FALLBACK_TO_LOCAL", "false"),
            // Sockudo refuses a cluster on node-local caches (its idempotency keys must be
            // shared). Publications without an idempotency key, as here, do not use it; app
            // lookups are cached in it (keys with a 5-minute TTL).
            ("CACHE_DRIVER", "redis"),
            ("REDIS_URL", bins.redis.as_str()),
            ("INSTANCE_PROCESS_ID", &format!("aviary-bench-node-{i}")),
            // Unused while metrics are off, but distinct per node should they be enabled.
            ("METRICS_PORT", &free_port()?.to_string()),
        ]);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = spawn_accepting(c, addr, &log, &format!("sockudo node {i}")).await?;
        server.adopt_node(child, addr);
    }
    await_joined(&server.endpoint).await?;
    Ok(server)
}

fn socketio_command(bins: &Binaries) -> Command {
    let mut c = Command::new("node");
    c.arg("server.js").current_dir(&bins.socketio_dir).env("PORT", "0").env("HOST", "127.0.0.1");
    c
}

fn socketio_endpoint(nodes: Vec<SocketAddr>) -> Endpoint {
    let http = nodes.first().map(|a| format!("http://{a}")).unwrap_or_default();
    Endpoint { kind: Kind::Socketio, http, nodes, auth: Auth::None }
}

/// The Socket.io 4 peer (`bench/peers/socketio/server.js`) on Node.
pub async fn socketio(bins: &Binaries) -> anyhow::Result<Server> {
    let (child, addr) = spawn_listening(socketio_command(bins), "socket.io peer").await?;
    Ok(Server {
        endpoint: socketio_endpoint(vec![addr]),
        pids: child.id().into_iter().collect(),
        children: vec![child],
        scratch: None,
        database: None,
    })
}

/// `nodes` Socket.io peers joined by `@socket.io/redis-adapter` on `--redis` (channels under a
/// prefix unique to this run): `server.js` uses the adapter when `REDIS_URL` is set.
pub async fn socketio_cluster(bins: &Binaries, nodes: usize) -> anyhow::Result<Server> {
    let prefix = format!("aviary_bench_socketio_{}", uuid::Uuid::new_v4().simple());
    let mut server = Server {
        endpoint: socketio_endpoint(Vec::new()),
        pids: Vec::new(),
        children: Vec::new(),
        scratch: None,
        database: None,
    };
    for i in 0..nodes {
        let mut c = socketio_command(bins);
        c.env("REDIS_URL", &bins.redis).env("REDIS_PREFIX", &prefix);
        let (child, addr) = spawn_listening(c, &format!("socket.io peer node {i}")).await?;
        server.adopt_node(child, addr);
    }
    await_joined(&server.endpoint).await?;
    Ok(server)
}

/// Waits until a publication sent through the backend API of node 0 reaches a subscriber on
/// every node, i.e. the nodes are joined through Redis before a scenario counts deliveries.
async fn await_joined(ep: &Endpoint) -> anyhow::Result<()> {
    let channel = "benchprobe";
    let src = "127.0.0.1".parse()?;
    let mut conns = Vec::with_capacity(ep.nodes.len());
    for i in 0..ep.nodes.len() {
        let mut conn = crate::client::open(ep, i, src).await.with_context(|| format!("node {i}"))?;
        conn.subscribe(ep, channel).await.with_context(|| format!("node {i}"))?;
        conns.push(conn);
    }
    let backend = crate::client::Backend::new(ep)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (i, conn) in conns.iter_mut().enumerate() {
        loop {
            let probe = format!("probe-{}", uuid::Uuid::new_v4().simple());
            let status = backend.publish(channel, &probe).await.context("publishing to node 0")?;
            if !(200..300).contains(&status) {
                bail!("node 0 refused a publication: HTTP {status}");
            }
            if conn.wait_for(&probe, Duration::from_millis(500)).await.with_context(|| format!("node {i}"))? {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node {i} received nothing published to node 0 within 20 s: the nodes are not joined");
            }
        }
    }
    Ok(())
}

/// `bin` if it names an existing file, else the first match of a bare name on `PATH`.
pub fn find_binary(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 || bin.is_file() {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(bin)).find(|p| p.is_file())
}

/// Starts the single-node server of `kind`.
pub async fn start(kind: Kind, bins: &Binaries) -> anyhow::Result<Server> {
    match kind {
        Kind::Aviary | Kind::AviaryPusher => aviary_dev(bins, kind).await,
        Kind::Sockudo => sockudo(bins).await,
        Kind::Socketio => socketio(bins).await,
    }
}

/// Starts `nodes` nodes of `kind` joined through Redis (the multi-node scenario).
pub async fn start_cluster(kind: Kind, bins: &Binaries, nodes: usize) -> anyhow::Result<Server> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    match kind {
        Kind::Aviary | Kind::AviaryPusher => aviary_cluster(bins, nodes, kind).await,
        Kind::Sockudo => sockudo_cluster(bins, nodes).await,
        Kind::Socketio => socketio_cluster(bins, nodes).await,
    }
}
