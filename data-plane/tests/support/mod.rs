//! Helpers shared by the Pusher tests: a data-plane node (or several on one Redis) with an app,
//! a Pusher credential and an Aviary token signer; and [`PusherJs`], the real pusher-js client
//! from npm, driven through `tests/pusher-js/driver.mjs` (one JSON command per line in, one
//! JSON observation per line out). Observations are awaited with a timeout, never slept for.

#![allow(dead_code)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aviary_broker::Broker;
use aviary_broker::memory::MemoryBroker;
use aviary_broker::redis::RedisBroker;
use aviary_core::token::claims_for;
use aviary_core::{
    ApiKeyAuthority, ApiKeyError, AppConfig, Capabilities, Namespace, PusherCredential, Quotas, Registry, SigningKey,
    VerifiedApiKey,
};
use aviary_data_plane::{DataPlane, DataPlaneConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

/// How long an expected observation may take.
pub const WAIT: Duration = Duration::from_secs(15);

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// No API keys: these tests publish through clients.
pub struct NoKeys;

#[async_trait::async_trait]
impl ApiKeyAuthority for NoKeys {
    async fn verify_api_key(&self, _: &str) -> Result<VerifiedApiKey, ApiKeyError> {
        Err(ApiKeyError::Invalid)
    }
}

/// One app with a Pusher credential, served by one or more nodes.
pub struct Setup {
    pub app: AppConfig,
    pub credential: PusherCredential,
    pub signing: SigningKey,
    /// Redis key prefix shared by the nodes (`None`: one node on the memory broker).
    pub redis_prefix: Option<String>,
    pub config: DataPlaneConfig,
}

/// A running node.
pub struct Node {
    pub dp: DataPlane,
    pub registry: Arc<Registry>,
    pub host: String,
    pub port: u16,
}

impl Node {
    pub fn aviary_ws(&self) -> String {
        format!("ws://{}:{}/v1/connect", self.host, self.port)
    }
}

fn hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

impl Setup {
    /// A fresh app (default namespace, plus `chat` for namespaced names) and credential with
    /// client events on.
    pub fn new() -> Setup {
        let tenant = format!("ten_{}", uuid::Uuid::new_v4().simple());
        let app_id = format!("app_{}", uuid::Uuid::new_v4().simple());
        let app = AppConfig {
            app_id: app_id.clone(),
            tenant_id: tenant.clone(),
            name: app_id.clone(),
            enabled: true,
            allowed_origins: vec![],
            max_token_ttl_s: 3600,
            namespaces: vec![
                Namespace::default_namespace(),
                Namespace { name: "chat".into(), ..Namespace::default_namespace() },
            ],
            tenant_quotas: Quotas::default(),
            quotas: Quotas::default(),
        };
        let credential = PusherCredential {
            key: hex(20),
            app_id,
            tenant_id: tenant,
            pusher_app_id: 1000 + u64::from(uuid::Uuid::new_v4().as_u128() as u32),
            secret: hex(40),
            capabilities: Capabilities::all(),
            client_events: true,
        };
        let config = DataPlaneConfig {
            ws_heartbeat_interval: Duration::from_secs(5),
            drain_deadline: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            ..DataPlaneConfig::default()
        };
        Setup { app, credential, signing: SigningKey::generate(), redis_prefix: None, config }
    }

    /// Nodes share Redis (a fresh key prefix) instead of each having a memory broker.
    pub fn on_redis(mut self) -> Setup {
        self.redis_prefix = Some(format!("test_pusher_{}", uuid::Uuid::new_v4().simple()));
        self
    }

    /// Starts a node serving the app and the credential on 127.0.0.1:0.
    pub async fn node(&self) -> Node {
        let registry = Arc::new(Registry::new());
        registry.set_verifying_keys([self.signing.verifying_key()]);
        registry.upsert_app(self.app.clone());
        registry.upsert_pusher_credential(self.credential.clone());
        let broker: Arc<dyn Broker> = match &self.redis_prefix {
            Some(prefix) => Arc::new(RedisBroker::new(&[REDIS_URL.to_owned()], prefix).expect("Redis broker")),
            None => Arc::new(MemoryBroker::new()),
        };
        let dp =
            DataPlane::new(registry.clone(), broker, Arc::new(NoKeys), self.config.clone(), CancellationToken::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(axum::serve(listener, dp.router()).into_future());
        Node { dp, registry, host: addr.ip().to_string(), port: addr.port() }
    }

    /// An Aviary connection token for `client` with every capability.
    pub fn token(&self, client: &str) -> String {
        let key_id = format!("key_{}", self.app.app_id);
        self.signing.sign(&claims_for(&self.app.tenant_id, &self.app.app_id, &key_id, client, 600, Capabilities::all()))
    }
}

/// The real pusher-js, in a Node process, driving any number of named clients.
pub struct PusherJs {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Observations read while waiting for another one, in arrival order.
    seen: Vec<Value>,
}

impl PusherJs {
    /// Starts the driver. `npm ci` in `data-plane/tests/pusher-js` must have run (scripts/test
    /// does it): a missing pusher-js fails the test rather than skipping it.
    pub fn start() -> PusherJs {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher-js");
        assert!(
            std::path::Path::new(dir).join("node_modules/pusher-js").exists(),
            "pusher-js is not installed: run `npm ci` in {dir} (scripts/test does)"
        );
        let mut child = Command::new("node")
            .arg("driver.mjs")
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        PusherJs { child, stdin, lines, seen: Vec::new() }
    }

    pub async fn send(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.expect("driver reads commands");
    }

    /// Connects client `name` to `node` with `setup`'s credential; returns its socket id.
    pub async fn connect(&mut self, name: &str, setup: &Setup, node: &Node, extra: Value) -> String {
        let mut command = json!({
            "cmd": "connect", "client": name, "key": setup.credential.key, "secret": setup.credential.secret,
            "host": node.host, "port": node.port,
        });
        merge(&mut command, extra);
        self.send(command).await;
        let connected = self.expect(name, |o| o["type"] == "connected").await;
        connected["socket_id"].as_str().expect("a socket id").to_owned()
    }

    /// Subscribes `name` to `channel` and waits for `pusher:subscription_succeeded`.
    pub async fn subscribe(&mut self, name: &str, channel: &str, extra: Value) -> Value {
        let mut command = json!({ "cmd": "subscribe", "client": name, "channel": channel });
        merge(&mut command, extra);
        self.send(command).await;
        self.expect(name, |o| {
            o["channel"] == channel && (o["type"] == "subscribed" || o["type"] == "subscription_error")
        })
        .await
    }

    /// The first observation of `client` matching `pred` (earlier unmatched ones are kept for
    /// later calls). Fails the test after [`WAIT`].
    pub async fn expect(&mut self, client: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let matches = |o: &Value| o["client"] == client && pred(o);
        if let Some(at) = self.seen.iter().position(matches) {
            return self.seen.remove(at);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{client}: no matching observation within {WAIT:?}; seen: {:#?}", self.seen))
                .expect("driver output is readable")
                .expect("driver is running");
            let observation: Value = serde_json::from_str(&line).expect("driver writes JSON lines");
            assert_ne!(observation["type"], "driver_error", "{observation}");
            if matches(&observation) {
                return observation;
            }
            self.seen.push(observation);
        }
    }

    /// The next channel events `client` receives on `channel`, `n` of them, in order.
    pub async fn events(&mut self, client: &str, channel: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.expect(client, |o| o["type"] == "event" && o["channel"] == channel).await);
        }
        out
    }

    /// Asserts `client` has received no channel event on `channel` so far (of the observations
    /// read; call after an event that was sent later has arrived).
    pub fn assert_no_event(&self, client: &str, channel: &str) {
        let unexpected: Vec<&Value> = self
            .seen
            .iter()
            .filter(|o| o["client"] == client && o["type"] == "event" && o["channel"] == channel)
            .collect();
        assert!(unexpected.is_empty(), "{client} received {unexpected:#?}");
    }
}

impl Drop for PusherJs {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// The channel authorization a backend would return (for raw-protocol tests).
pub fn channel_auth(setup: &Setup, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    aviary_core::pusher::signature::channel_auth(
        &setup.credential.key,
        &setup.credential.secret,
        socket_id,
        channel,
        channel_data,
    )
}
