//! The node side of config streaming: a [`ConfigFollower`] keeps a data-plane node's `Registry`
//! equal to the control plane's, and a [`RemoteApiKeyAuthority`] checks app API keys there.
//!
//! The follower runs `Watch` and applies what arrives (a snapshot replaces everything, a delta
//! changes one thing), persists the config to `<cache_dir>/config-cache.pb` after changes
//! (debounced; write-temp-then-rename, so a crash leaves the old file or the new one), and
//! reconnects with exponential backoff, resuming from its `(epoch, version)`.
//!
//! Static stability: when the control plane cannot be reached at start, the cached file is
//! loaded into the registry and the node serves with it (status `serving_from_cache`, gauge
//! `aviary_config_stale` = 1) until a stream delivers a fresh snapshot. A live stream that goes
//! silent for `stale_after` (3 missed heartbeats) counts as dead. The registry is never
//! cleared on a disconnect: the last known config stays in force.
//!
//! Token verification never calls the control plane (it uses the streamed public keys); only
//! REST publish on a node needs [`RemoteApiKeyAuthority`], whose short positive cache is cleared
//! as soon as the registry learns of a revocation.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aviary_core::FailureLimiter;
use aviary_core::auth::{ApiKeyAuthority, ApiKeyError, VerifiedApiKey};
use aviary_core::failures::{FAILURES_BURST, FAILURES_PER_S};
use aviary_core::sealing::SecretBox;
use aviary_core::{ConfigEvent, Registry};
use aviary_proto::convert::{
    app_config_from_pb, capabilities_from_pb, change_of, pusher_credential_from_pb, snapshot_of, verifying_key_from_pb,
    webhook_from_pb,
};
use aviary_proto::{ControlPlaneClient, NODE_MAX_RECEIVE_BYTES, pb};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use prost::Message;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::link::{ControlPlaneLink, authorized};

/// Name of the cached config inside the cache directory.
pub const CACHE_FILE: &str = "config-cache.pb";

/// How a node follows the control plane.
#[derive(Clone)]
pub struct FollowerConfig {
    /// The control plane's gRPC listener (`http://HOST:PORT`, or `https://` with TLS).
    pub endpoint: ControlPlaneLink,
    /// The node credential (`--node-token`); never logged.
    pub node_token: String,
    /// This node's name, for the control plane's logs.
    pub node_id: String,
    /// Where the config cache file lives (created if missing).
    pub cache_dir: PathBuf,
    /// A stream with no message for this long is dead (the control plane heartbeats every 5 s).
    pub stale_after: Duration,
    /// How long to wait for the first snapshot before serving from the cache file.
    pub connect_timeout: Duration,
    /// Writes of the cache file are at most this frequent.
    pub persist_debounce: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl std::fmt::Debug for FollowerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerConfig")
            .field("endpoint", &self.endpoint)
            .field("node_id", &self.node_id)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl FollowerConfig {
    /// Defaults: 15 s stale, 3 s connect timeout, 250 ms debounce, 10 s max backoff.
    pub fn new(
        endpoint: impl Into<ControlPlaneLink>,
        node_token: impl Into<String>,
        node_id: impl Into<String>,
        cache_dir: impl Into<PathBuf>,
    ) -> Self {
        FollowerConfig {
            endpoint: endpoint.into(),
            node_token: node_token.into(),
            node_id: node_id.into(),
            cache_dir: cache_dir.into(),
            stale_after: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(3),
            persist_debounce: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Where the node's config comes from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// Nothing yet: not connected and no cache file.
    None,
    /// A live stream from the control plane.
    Stream,
    /// The last config received (stream lost, or loaded from the cache file at start).
    Cache,
}

/// The follower's state, for `/readyz` detail and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowerStatus {
    pub source: ConfigSource,
    /// Since when `source` holds (when the stream was lost, for `Cache`).
    pub since: DateTime<Utc>,
    /// Epoch and version of the config applied.
    pub epoch: String,
    pub version: u64,
    /// Set when the config in force was loaded from the cache file at start.
    pub loaded_from_file: bool,
    /// Version last written to the cache file (0 before the first write).
    pub cached_version: u64,
    /// The last connection error, if the last attempt failed.
    pub last_error: Option<String>,
}

impl FollowerStatus {
    /// The node has a config to serve with (live or cached).
    pub fn has_config(&self) -> bool {
        self.source != ConfigSource::None
    }

    /// Connected to a live stream.
    pub fn connected(&self) -> bool {
        self.source == ConfigSource::Stream
    }
}

struct Shared {
    config: FollowerConfig,
    registry: Arc<Registry>,
    /// Opens the Pusher secrets on the stream and seals them again in the cache file.
    stream_box: SecretBox,
    status: watch::Sender<FollowerStatus>,
    dirty: Notify,
}

/// Follows the control plane's config into a node's [`Registry`]. Stops when dropped.
pub struct ConfigFollower {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ConfigFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFollower").field("status", &self.status()).finish()
    }
}

impl Drop for ConfigFollower {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ConfigFollower {
    /// Starts following: creates the cache directory, then connects in the background. Returns
    /// at once; see [`ConfigFollower::wait_for_config`] to wait until the node has a config.
    pub fn start(config: FollowerConfig, registry: Arc<Registry>) -> Result<ConfigFollower> {
        std::fs::create_dir_all(&config.cache_dir)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", config.cache_dir.display())))?;
        config.endpoint.endpoint()?;
        let (status, _) = watch::channel(FollowerStatus {
            source: ConfigSource::None,
            since: Utc::now(),
            epoch: String::new(),
            version: 0,
            loaded_from_file: false,
            cached_version: 0,
            last_error: None,
        });
        let stream_box = SecretBox::for_config_stream(&config.node_token);
        let shared = Arc::new(Shared { config, registry, stream_box, status, dirty: Notify::new() });
        set_gauges(&shared.status.borrow());
        let tasks = vec![tokio::spawn(follow(shared.clone())), tokio::spawn(persist(shared.clone()))];
        Ok(ConfigFollower { shared, tasks })
    }

    /// The current status.
    pub fn status(&self) -> FollowerStatus {
        self.shared.status.borrow().clone()
    }

    /// Changes of the status (e.g. for logging transitions).
    pub fn subscribe(&self) -> watch::Receiver<FollowerStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until the node has a config (live or cached), at most `timeout`.
    pub async fn wait_for_config(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, FollowerStatus::has_config).await
    }

    /// Waits until a live stream delivered its first event, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, FollowerStatus::connected).await
    }

    /// Waits until the status satisfies `ok`, at most `timeout`.
    pub async fn wait_until(&self, timeout: Duration, ok: impl Fn(&FollowerStatus) -> bool) -> bool {
        let mut rx = self.shared.status.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| ok(s))).await.is_ok_and(|r| r.is_ok())
    }

    /// Path of the cache file.
    pub fn cache_file(&self) -> PathBuf {
        self.shared.config.cache_dir.join(CACHE_FILE)
    }
}

fn set_gauges(status: &FollowerStatus) {
    metrics::gauge!("aviary_config_stale").set(if status.connected() { 0.0 } else { 1.0 });
    metrics::gauge!("aviary_config_version").set(status.version as f64);
}

/// The connect-reconnect loop.
async fn follow(shared: Arc<Shared>) {
    let initial = Duration::from_millis(100);
    let mut backoff = initial;
    loop {
        let result = session(&shared).await;
        let was_connected = shared.status.borrow().connected();
        let error = match result {
            Ok(()) => "stream ended".to_owned(),
            Err(e) => e.to_string(),
        };
        if was_connected {
            tracing::warn!(error = %error, "config stream lost; serving the last config");
            backoff = initial;
        } else {
            tracing::debug!(error = %error, "control plane unreachable");
        }
        // Unreachable before any config arrived: serve the cached one while retrying.
        let no_config = !shared.status.borrow().has_config();
        if no_config {
            load_cache(&shared).await;
        }
        shared.status.send_modify(|s| {
            if s.source == ConfigSource::Stream {
                s.source = ConfigSource::Cache;
                s.since = Utc::now();
            }
            s.last_error = Some(error);
        });
        set_gauges(&shared.status.borrow());
        // Full jitter keeps a fleet of nodes from reconnecting in lockstep after an outage.
        let jitter = rand::random::<f64>();
        tokio::time::sleep(backoff.mul_f64(0.5 + jitter / 2.0)).await;
        backoff = (backoff * 2).min(shared.config.max_backoff);
    }
}

/// One stream, from connecting until it fails or goes silent.
async fn session(shared: &Shared) -> Result<()> {
    let config = &shared.config;
    let channel = config
        .endpoint
        .endpoint_with(config.connect_timeout)?
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Error::Upstream(format!("connecting to {}: {e}", config.endpoint)))?;
    let mut client = ControlPlaneClient::new(channel).max_decoding_message_size(NODE_MAX_RECEIVE_BYTES);
    let (epoch, version) = {
        let s = shared.status.borrow();
        if s.has_config() { (s.epoch.clone(), s.version) } else { (String::new(), 0) }
    };
    let request = authorized(pb::WatchRequest { node_id: config.node_id.clone(), epoch, version }, &config.node_token)?;
    let mut stream = tokio::time::timeout(config.stale_after, client.watch(request))
        .await
        .map_err(|_| Error::Upstream("Watch was not answered".into()))?
        .map_err(|s| Error::Upstream(format!("Watch refused: {} {}", s.code(), s.message())))?
        .into_inner();
    loop {
        let event = match tokio::time::timeout(config.stale_after, stream.message()).await {
            Err(_) => return Err(Error::Upstream(format!("no message for {:?}", config.stale_after))),
            Ok(Err(s)) => return Err(Error::Upstream(format!("stream failed: {} {}", s.code(), s.message()))),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(event))) => event,
        };
        apply_event(shared, event)?;
    }
}

/// Applies one stream event and records the new position.
fn apply_event(shared: &Shared, event: pb::WatchEvent) -> Result<()> {
    use pb::watch_event::Event;
    let _span = change_of(&event).map(|(change, tenant_id, app_id)| {
        tracing::info_span!("config_apply", version = event.version, change, tenant_id, app_id).entered()
    });
    let changed = match event.event {
        Some(Event::Snapshot(snapshot)) => {
            apply_snapshot(&shared.registry, snapshot, &shared.stream_box);
            true
        }
        Some(Event::Delta(delta)) => {
            let (epoch, version) = {
                let s = shared.status.borrow();
                (s.epoch.clone(), s.version)
            };
            if epoch != event.epoch || event.version != version + 1 {
                // Cannot happen with a correct server; a fresh stream will start with a snapshot.
                shared.status.send_modify(|s| s.epoch.clear());
                return Err(Error::Upstream(format!("delta {} does not follow version {version}", event.version)));
            }
            apply_delta(&shared.registry, delta, &shared.stream_box);
            true
        }
        Some(Event::Heartbeat(_)) | None => false,
    };
    shared.status.send_if_modified(|s| {
        let before = s.clone();
        if s.source != ConfigSource::Stream {
            s.source = ConfigSource::Stream;
            s.since = Utc::now();
            s.loaded_from_file = false;
            s.last_error = None;
            tracing::info!(epoch = %event.epoch, version = event.version, "config stream connected");
        }
        if changed {
            s.epoch = event.epoch.clone();
            s.version = event.version;
        }
        *s != before
    });
    set_gauges(&shared.status.borrow());
    if changed {
        shared.dirty.notify_one();
    }
    Ok(())
}

/// Makes `registry` equal to `snapshot`: apps, Pusher credentials and webhook endpoints not in it are removed, keys
/// replaced, revocations added (revocations are never withdrawn). `stream_box` opens the
/// credentials' secrets.
pub fn apply_snapshot(registry: &Registry, snapshot: pb::ConfigSnapshot, stream_box: &SecretBox) {
    let present: HashSet<String> = snapshot.apps.iter().map(|a| a.app_id.clone()).collect();
    for app in registry.apps() {
        if !present.contains(&app.app_id) {
            registry.remove_app(&app.app_id);
        }
    }
    for app in snapshot.apps {
        registry.upsert_app(app_config_from_pb(app));
    }
    registry.set_verifying_keys(snapshot.keys.iter().filter_map(verifying_key_from_pb));
    for k in snapshot.revoked_api_keys {
        registry.revoke_api_key(&k.app_id, &k.key_id);
    }
    for c in snapshot.revoked_clients {
        if !registry.client_revoked(&c.app_id, &c.client_id, c.issued_before) {
            registry.revoke_client(&c.app_id, &c.client_id, c.issued_before);
        }
    }
    let listed: HashSet<String> = snapshot.pusher_credentials.iter().map(|c| c.key.clone()).collect();
    for c in registry.pusher_credentials() {
        if !listed.contains(&c.key) {
            registry.remove_pusher_credential(&c.key);
        }
    }
    for c in snapshot.pusher_credentials.into_iter().filter_map(|c| pusher_credential_from_pb(c, stream_box)) {
        registry.upsert_pusher_credential(c);
    }
    let listed: HashSet<String> = snapshot.webhooks.iter().map(|w| w.id.clone()).collect();
    for w in registry.webhooks() {
        if !listed.contains(&w.id) {
            registry.remove_webhook(&w.id);
        }
    }
    for w in snapshot.webhooks.into_iter().filter_map(|w| webhook_from_pb(w, stream_box)) {
        registry.upsert_webhook(w);
    }
}

/// Applies one change to `registry`.
pub fn apply_delta(registry: &Registry, delta: pb::ConfigDelta, stream_box: &SecretBox) {
    use pb::config_delta::Change;
    match delta.change {
        Some(Change::AppChanged(app)) => registry.upsert_app(app_config_from_pb(app)),
        Some(Change::AppRemoved(r)) => registry.remove_app(&r.app_id),
        Some(Change::ApiKeyRevoked(k)) => registry.revoke_api_key(&k.app_id, &k.key_id),
        Some(Change::ClientRevoked(c)) if !registry.client_revoked(&c.app_id, &c.client_id, c.issued_before) => {
            registry.revoke_client(&c.app_id, &c.client_id, c.issued_before)
        }
        Some(Change::ClientRevoked(_)) => {}
        Some(Change::KeysChanged(keys)) => {
            registry.set_verifying_keys(keys.keys.iter().filter_map(verifying_key_from_pb))
        }
        Some(Change::PusherCredentialChanged(c)) => {
            if let Some(c) = pusher_credential_from_pb(c, stream_box) {
                registry.upsert_pusher_credential(c);
            }
        }
        Some(Change::PusherCredentialRevoked(r)) => registry.remove_pusher_credential(&r.key),
        Some(Change::WebhookChanged(w)) => {
            if let Some(w) = webhook_from_pb(w, stream_box) {
                registry.upsert_webhook(w);
            }
        }
        Some(Change::WebhookRemoved(r)) => registry.remove_webhook(&r.id),
        None => {}
    }
}

/// Loads the cache file into the registry (the control plane is unreachable at start).
async fn load_cache(shared: &Shared) {
    let path = shared.config.cache_dir.join(CACHE_FILE);
    let read = tokio::fs::read(&path).await;
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the config cache");
            return;
        }
    };
    let event = match pb::WatchEvent::decode(bytes.as_slice()) {
        Ok(pb::WatchEvent { epoch, version, event: Some(pb::watch_event::Event::Snapshot(snapshot)) }) => {
            (epoch, version, snapshot)
        }
        _ => {
            tracing::warn!(path = %path.display(), "the config cache is corrupt; ignoring it");
            return;
        }
    };
    let (epoch, version, snapshot) = event;
    let apps = snapshot.apps.len();
    apply_snapshot(&shared.registry, snapshot, &shared.stream_box);
    let modified: Option<DateTime<Utc>> =
        std::fs::metadata(&path).and_then(|m| m.modified()).ok().map(DateTime::<Utc>::from);
    tracing::warn!(apps, version, written_at = ?modified, "control plane unreachable: serving the cached config");
    shared.status.send_modify(|s| {
        s.source = ConfigSource::Cache;
        s.since = Utc::now();
        s.epoch = epoch;
        s.version = version;
        s.loaded_from_file = true;
    });
}

/// Writes the cache file after changes, at most once per debounce interval.
async fn persist(shared: Arc<Shared>) {
    loop {
        shared.dirty.notified().await;
        tokio::time::sleep(shared.config.persist_debounce).await;
        // Position first, then the registry: the file may hold changes newer than its version
        // (replayed harmlessly on resume) but never miss one its version claims.
        let (epoch, version) = {
            let s = shared.status.borrow();
            (s.epoch.clone(), s.version)
        };
        let event = pb::WatchEvent {
            epoch,
            version,
            event: Some(pb::watch_event::Event::Snapshot(snapshot_of(&shared.registry, Some(&shared.stream_box)))),
        };
        let bytes = event.encode_to_vec();
        let dir = shared.config.cache_dir.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&dir, &bytes)).await;
        match written {
            Ok(Ok(())) => {
                tracing::debug!(version, "config cache written");
                shared.status.send_modify(|s| s.cached_version = version);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the config cache"),
            Err(e) => tracing::warn!(error = %e, "config cache writer failed"),
        }
    }
}

fn write_atomically(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{CACHE_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(CACHE_FILE))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Most verified keys a node keeps cached.
const KEY_CACHE_CAPACITY: usize = 10_000;

/// An [`ApiKeyAuthority`] for data-plane nodes: asks the control plane (`VerifyApiKey`) and
/// caches positive answers for `ttl`, keyed by the SHA-256 of the presented key (the secret is
/// never a map key). A revocation the registry learns of (the key, its app removed or disabled)
/// evicts at once; refusals are not cached.
#[derive(Clone)]
pub struct RemoteApiKeyAuthority {
    inner: Arc<AuthorityInner>,
}

struct AuthorityInner {
    client: ControlPlaneClient<Channel>,
    node_token: String,
    ttl: Duration,
    cache: DashMap<[u8; 32], (VerifiedApiKey, Instant)>,
    registry: Arc<Registry>,
    /// Failed verifications per client address, as the control plane limits its own callers
    /// (the control plane sees only this node's address).
    failures: FailureLimiter,
}

impl RemoteApiKeyAuthority {
    /// Connects lazily to `endpoint` (`http://HOST:PORT`, or `https://`); `registry` is the
    /// node's (fed by a [`ConfigFollower`]), watched for revocations. Spawns the eviction task.
    pub fn new(
        endpoint: impl Into<ControlPlaneLink>,
        node_token: &str,
        ttl: Duration,
        registry: Arc<Registry>,
    ) -> Result<Self> {
        let channel =
            endpoint.into().endpoint_with(Duration::from_secs(2))?.timeout(Duration::from_secs(3)).connect_lazy();
        let inner = Arc::new(AuthorityInner {
            client: ControlPlaneClient::new(channel),
            node_token: node_token.to_owned(),
            ttl,
            cache: DashMap::new(),
            registry: registry.clone(),
            failures: FailureLimiter::new(FAILURES_PER_S, FAILURES_BURST),
        });
        let weak = Arc::downgrade(&inner);
        let mut events = registry.subscribe();
        tokio::spawn(async move {
            loop {
                let event = events.recv().await;
                let Some(inner) = weak.upgrade() else { return };
                match event {
                    Ok(ConfigEvent::ApiKeyRevoked { key_id, .. }) => inner.cache.retain(|_, (k, _)| k.key_id != key_id),
                    Ok(ConfigEvent::AppRemoved { app_id, .. }) => inner.cache.retain(|_, (k, _)| k.app_id != app_id),
                    Ok(ConfigEvent::AppChanged(app)) if !app.enabled => {
                        inner.cache.retain(|_, (k, _)| k.app_id != app.app_id)
                    }
                    Ok(_) => {}
                    // Missed events may include revocations: forget everything.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => inner.cache.clear(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(RemoteApiKeyAuthority { inner })
    }

    /// Keys cached right now.
    pub fn cached(&self) -> usize {
        self.inner.cache.len()
    }

    /// The cached answer for `presented`, if fresh and not revoked since.
    fn cached_answer(&self, presented: &str) -> Option<VerifiedApiKey> {
        let inner = &self.inner;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let (key, expires) = inner.cache.get(&digest).map(|e| e.value().clone())?;
        if expires > Instant::now() && !inner.registry.api_key_revoked(&key.key_id) {
            return Some(key);
        }
        inner.cache.remove(&digest);
        None
    }
}

#[async_trait]
impl ApiKeyAuthority for RemoteApiKeyAuthority {
    async fn verify_api_key_from(&self, presented: &str, source: IpAddr) -> Result<VerifiedApiKey, ApiKeyError> {
        if let Some(hit) = self.cached_answer(presented) {
            return Ok(hit);
        }
        self.inner.failures.try_take(source).map_err(|_| ApiKeyError::Throttled)?;
        let result = self.verify_api_key(presented).await;
        if !matches!(result, Err(ApiKeyError::Invalid | ApiKeyError::Throttled)) {
            self.inner.failures.give_back(source);
        }
        result
    }

    async fn verify_api_key(&self, presented: &str) -> Result<VerifiedApiKey, ApiKeyError> {
        let inner = &self.inner;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(hit) = self.cached_answer(presented) {
            return Ok(hit);
        }
        let request = authorized(pb::VerifyApiKeyRequest { api_key: presented.to_owned() }, &inner.node_token)
            .map_err(|_| ApiKeyError::Unavailable)?;
        let answer = match inner.client.clone().verify_api_key(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status) if status.code() == tonic::Code::Unauthenticated => return Err(ApiKeyError::Invalid),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => return Err(ApiKeyError::Throttled),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "control plane could not verify an API key");
                return Err(ApiKeyError::Unavailable);
            }
        };
        let capabilities = capabilities_from_pb(answer.capabilities).map_err(|_| ApiKeyError::Unavailable)?;
        let key =
            VerifiedApiKey { key_id: answer.key_id, tenant_id: answer.tenant_id, app_id: answer.app_id, capabilities };
        if inner.registry.api_key_revoked(&key.key_id) {
            return Err(ApiKeyError::Invalid);
        }
        if inner.cache.len() >= KEY_CACHE_CAPACITY {
            let now = Instant::now();
            inner.cache.retain(|_, (_, expires)| *expires > now);
            if inner.cache.len() >= KEY_CACHE_CAPACITY {
                inner.cache.clear();
            }
        }
        inner.cache.insert(digest, (key.clone(), Instant::now() + inner.ttl));
        Ok(key)
    }
}
