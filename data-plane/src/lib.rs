//! Aviary's data plane: what browsers and backends connect to.
//!
//! A [`DataPlane`] serves WebSocket (`/v1/connect`), Server-Sent Events (`/v1/sse`) and the
//! backend REST API (`/v1/apps/{app_id}/...`) from the live [`Registry`], a [`Broker`] (the
//! engine that orders, stores and fans out publications) and an [`ApiKeyAuthority`]. It reads
//! no database on the message path: config arrives through the registry, messages through the
//! broker.
//!
//! Code map: [`protocol`] (wire frames), `transport` (WebSocket and SSE byte pumps and
//! heartbeats), `session` (one client's state; decodes its commands), `ops` (every operation
//! once, with every rule: the front ends' shared core), `hub` (channel -> local subscribers,
//! fan-out), [`quota_enforcer`] (admission), [`rest`] (backend API), [`pusher`] (the Pusher front end: the
//! `/app/{key}` WebSocket, its HTTP API, channel-name mapping, data rule and frame codec), `signals` (node
//! signals through the broker), [`metrics`], [`error`].
//! `docs/protocol.md` documents the wire protocol for SDK authors.
//!
//! The path of a publication: a client `publish` (session) or a REST call (rest) becomes
//! `ops::publish`, which runs the checks in their documented order (channel, namespace,
//! capability, idempotency key, size, rate), then `Broker::publish` orders it, stores it and
//! hands it to every node's hub (`BrokerEvents::on_publication`); the hub encodes the `message`
//! frame once and `try_send`s a clone of its bytes into each local subscriber's bounded queue;
//! each connection's writer task drains its queue into the socket.
//!
//! In a cluster the binary adds two Redis-backed pieces beside the `RedisBroker`: cluster-wide
//! quotas ([`ClusterQuotas`] passed to [`DataPlane::with_quotas`]) and the cluster-wide channel
//! listing ([`DataPlane::enable_cluster_channel_listing`]).

pub mod admission;
pub mod error;
pub(crate) mod hub;
pub mod metrics;
mod openapi;
pub(crate) mod ops;
pub(crate) mod outbound;
pub(crate) mod outbox;
pub mod protocol;
pub mod pusher;
pub mod quota_enforcer;
pub mod rest;
pub(crate) mod session;
pub(crate) mod session_handle;
pub(crate) mod signals;
pub(crate) mod transport;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aviary_broker::Broker;
use aviary_broker::channels::RedisChannelCounts;
use aviary_core::usage::UsageMeter;
use aviary_core::{ApiKeyAuthority, ConfigEvent, Registry};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use dashmap::DashMap;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

pub use error::Error;
pub use ops::webhooks::ClientEvent;
pub use quota_enforcer::{ClusterQuotas, LocalQuotas, QuotaEnforcer};
pub use webhooks::WebhookConfig;

use crate::hub::Hub;
use crate::protocol::{CloseReason, close};
use crate::session_handle::{Identity, SessionHandle};

/// Room a WebSocket frame may take beyond the app's `max_message_bytes`: the JSON around the
/// payload (type, id, channel name up to 255 bytes, idempotency key).
pub const FRAME_ENVELOPE_BYTES: usize = 4096;

/// Shortest presence TTL honoured: refreshes every third of it must stay affordable.
pub const MIN_PRESENCE_TTL: Duration = Duration::from_secs(3);

/// Tunables of a data-plane node. [`Default`] gives production values.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    /// Identifies this node in logs and metrics.
    pub node_id: String,
    /// WebSocket ping interval; a connection silent for two intervals is closed.
    pub ws_heartbeat_interval: Duration,
    /// Interval of SSE comment heartbeats.
    pub sse_heartbeat_interval: Duration,
    /// Capacity of each connection's outbound queue; a full queue closes it with 4008.
    pub outbound_queue_capacity: usize,
    /// Longest time one write to a client (a WebSocket frame or flush, an SSE chunk) may make
    /// no progress: past it the client stopped draining, and the connection is closed with
    /// 4008 (slow consumer) like one whose queue overflowed.
    pub write_timeout: Duration,
    /// How long `drain` waits for connections to close after telling them to go.
    pub drain_deadline: Duration,
    /// How long a WebSocket may stay open without a successful `connect`.
    pub connect_timeout: Duration,
    /// Longest time spent writing the farewell (`disconnect` frame and close) to a client.
    pub close_timeout: Duration,
    /// TTL of presence entries. A live connection refreshes its entries every third of it
    /// (independently of the WebSocket ping interval), so a node that dies loses its members,
    /// with `leave` events, within this time plus the engine's sweep interval (~1 s). At
    /// least [`MIN_PRESENCE_TTL`].
    pub presence_ttl: Duration,
    /// Hard cap on an incoming WebSocket frame before the app (and its limit) is known.
    pub max_frame_bytes: usize,
    /// Consecutive malformed frames tolerated before closing with 4000.
    pub max_malformed_frames: u32,
    /// How often a node with the cluster channel listing enabled
    /// ([`DataPlane::enable_cluster_channel_listing`]) reports its per-channel subscriber
    /// counts; other nodes' listings lag by at most this, and a crashed node's channels leave
    /// them within five intervals.
    pub channel_report_interval: Duration,
    /// Initial read buffer of each WebSocket. Small, because most connections are idle and
    /// client frames are small; it grows on demand for larger frames.
    pub ws_read_buffer_bytes: usize,
    /// The `activity_timeout` announced to Pusher clients: one silent for this long gets a
    /// `pusher:ping`, and is closed with 4201 if it still sends nothing within
    /// [`pusher::socket::pong_timeout`] (at most 30 s).
    pub pusher_activity_timeout: Duration,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            node_id: format!("node_{}", uuid::Uuid::new_v4().simple()),
            ws_heartbeat_interval: Duration::from_secs(25),
            sse_heartbeat_interval: Duration::from_secs(15),
            outbound_queue_capacity: 1024,
            write_timeout: Duration::from_secs(30),
            drain_deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(25),
            max_frame_bytes: 1024 * 1024,
            max_malformed_frames: 10,
            ws_read_buffer_bytes: 1024,
            channel_report_interval: Duration::from_secs(2),
            pusher_activity_timeout: Duration::from_secs(120),
        }
    }
}

/// State shared by every connection and request of a node.
pub(crate) struct NodeState {
    pub(crate) registry: Arc<Registry>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) api_keys: Arc<dyn ApiKeyAuthority>,
    pub(crate) config: DataPlaneConfig,
    pub(crate) hub: Arc<Hub>,
    pub(crate) quotas: Arc<dyn QuotaEnforcer>,
    /// Per-app usage for billing, drained by the binary's usage reporter.
    pub(crate) usage: Arc<UsageMeter>,
    /// Cluster-wide channel listing, when enabled; `None` lists this node's channels only.
    pub(crate) channel_counts: OnceLock<Arc<RedisChannelCounts>>,
    /// Webhook events and delivery, once started ([`DataPlane::start_webhooks`]).
    pub(crate) webhooks: OnceLock<Arc<webhooks::Webhooks>>,
    /// Open connections by connection id, for drain and revocations.
    pub(crate) sessions: DashMap<Arc<str>, Arc<SessionHandle>>,
    pub(crate) shutdown: CancellationToken,
    draining: AtomicBool,
    /// Woken whenever a session ends, so `drain` can wait for zero without polling.
    session_ended: Notify,
}

impl NodeState {
    fn presence_ttl(&self) -> Duration {
        self.config.presence_ttl.max(MIN_PRESENCE_TTL)
    }

    /// Presence TTL in whole seconds, as the engine takes it.
    pub(crate) fn presence_ttl_s(&self) -> u32 {
        self.presence_ttl().as_secs().clamp(1, u64::from(u32::MAX)) as u32
    }

    /// How often a connection refreshes its presence entries: three times per TTL, so one or
    /// two refreshes lost to an engine hiccup do not make a live member flap.
    pub(crate) fn presence_touch_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.presence_ttl_s())) / 3
    }

    pub(crate) fn forget(&self, connection_id: &str) {
        self.sessions.remove(connection_id);
        self.session_ended.notify_waiters();
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire) || self.shutdown.is_cancelled()
    }
}

/// A data-plane node. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct DataPlane {
    inner: Arc<NodeState>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("node_id", &self.inner.config.node_id)
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// Builds a node with node-local quotas; see [`DataPlane::with_quotas`].
    pub fn new(
        registry: Arc<Registry>,
        broker: Arc<dyn Broker>,
        api_keys: Arc<dyn ApiKeyAuthority>,
        config: DataPlaneConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_quotas(registry, broker, api_keys, config, shutdown, Arc::new(LocalQuotas::new()))
    }

    /// Builds a node, registers its hub as the broker's event sink and starts listening to
    /// registry changes (revocations and app removal close connections). Cancelling
    /// `shutdown` has the same effect on connections as [`DataPlane::drain`]. Must be called
    /// inside a Tokio runtime.
    pub fn with_quotas(
        registry: Arc<Registry>,
        broker: Arc<dyn Broker>,
        api_keys: Arc<dyn ApiKeyAuthority>,
        config: DataPlaneConfig,
        shutdown: CancellationToken,
        quotas: Arc<dyn QuotaEnforcer>,
    ) -> Self {
        let hub = Arc::new(Hub::new(broker.clone()));
        broker.set_events(hub.clone());
        let events = registry.subscribe();
        let inner = Arc::new(NodeState {
            registry,
            broker,
            api_keys,
            config,
            hub,
            quotas,
            usage: Arc::new(UsageMeter::new(aviary_core::unix_now_ms())),
            channel_counts: OnceLock::new(),
            webhooks: OnceLock::new(),
            sessions: DashMap::new(),
            shutdown,
            draining: AtomicBool::new(false),
            session_ended: Notify::new(),
        });
        tokio::spawn(watch_config(Arc::downgrade(&inner), events, inner.shutdown.clone()));
        let node = Arc::downgrade(&inner);
        inner.hub.on_signal(move |data| signals::received(&node, data));
        tokio::spawn(signals::subscribe(inner.broker.clone(), inner.shutdown.clone()));
        DataPlane { inner }
    }

    /// All routes of the data plane (WebSocket, SSE, REST); the binary adds health, metrics
    /// and the demo page.
    pub fn router(&self) -> Router {
        router(self.clone())
    }

    /// True once draining started: new connections are refused.
    pub fn is_draining(&self) -> bool {
        self.inner.is_draining()
    }

    /// Open connections (WebSocket and SSE, authenticated or not).
    pub fn connection_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// This node's usage counters (connection time, messages and bytes in and out, per app).
    /// Hand it to the usage reporter, which drains it on an interval.
    pub fn usage_meter(&self) -> &Arc<UsageMeter> {
        &self.inner.usage
    }

    /// Makes `GET /v1/apps/{app_id}/channels` list channels cluster-wide: this node reports its
    /// per-channel subscriber counts to Redis (`redis_urls` and `prefix` as for the broker)
    /// every [`DataPlaneConfig::channel_report_interval`], and the listing adds up every live
    /// node's counts. Without it (e.g. `aviary dev` on the memory broker) the listing shows
    /// this node's channels only. Call once, inside a Tokio runtime; a second call is an error.
    pub fn enable_cluster_channel_listing(&self, redis_urls: &[String], prefix: &str) -> Result<(), Error> {
        let interval = self.inner.config.channel_report_interval.max(Duration::from_millis(100));
        let counts = Arc::new(RedisChannelCounts::new(redis_urls, prefix, &self.inner.config.node_id, interval * 5)?);
        self.inner
            .channel_counts
            .set(counts.clone())
            .map_err(|_| Error::Internal("cluster channel listing is already enabled".into()))?;
        tokio::spawn(report_channels(Arc::downgrade(&self.inner), counts, interval, self.inner.shutdown.clone()));
        Ok(())
    }

    /// Starts webhooks on this node over `ledger`: the memory ledger on a single node, the
    /// Redis ledger (same URLs and prefix as the broker) in a cluster, where it also makes the
    /// queue durable. Shares of a node count for `presence_ttl` after its last sign of life, so a
    /// dead node's members and channels leave within the presence TTL. Call once, inside a Tokio
    /// runtime; without it no webhook is sent.
    pub fn start_webhooks(
        &self,
        ledger: Arc<dyn aviary_broker::webhooks::WebhookLedger>,
        config: WebhookConfig,
    ) -> Result<(), Error> {
        let webhooks = webhooks::Webhooks::start(
            self.inner.registry.clone(),
            &self.inner.hub,
            ledger,
            self.inner.usage.clone(),
            config,
            self.inner.presence_ttl(),
            self.inner.shutdown.clone(),
        );
        self.inner.webhooks.set(webhooks).map_err(|_| Error::Internal("webhooks are already started".into()))
    }

    /// Reports a client event for `client_event` webhooks (front ends inside this crate call
    /// `ops::webhooks::client_event` directly).
    pub async fn client_event_webhook(&self, event: ClientEvent<'_>) {
        ops::webhooks::client_event(&self.inner, event).await;
    }

    /// The recent delivery attempts of a webhook endpoint of `app_id` (from every node sharing
    /// the ledger), newest first; empty before webhooks are started.
    pub async fn webhook_attempts(
        &self,
        app_id: &str,
        endpoint_id: &str,
    ) -> Vec<aviary_core::webhook::DeliveryAttempt> {
        use aviary_core::webhook::WebhookDeliveries as _;
        match self.inner.webhooks.get() {
            Some(w) => w.deliveries.attempts().recent(app_id, endpoint_id).await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.inner.hub.channel_count()
    }

    /// Stops accepting connections, tells every client to reconnect elsewhere (`disconnect`
    /// 1001, `reconnect: true`) and waits until they are closed or the drain deadline passes.
    /// Returns the number of connections still open at the deadline.
    pub async fn drain(&self) -> usize {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        let reason = CloseReason::new(close::GOING_AWAY, "node draining");
        for s in self.inner.sessions.iter() {
            s.value().close(reason.clone());
        }
        let deadline = tokio::time::Instant::now() + self.inner.config.drain_deadline;
        loop {
            // Register interest before checking, so a session ending in between still wakes us.
            let ended = self.inner.session_ended.notified();
            let open = self.inner.sessions.len();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                let open = self.inner.sessions.len();
                tracing::warn!(open, "drain deadline passed with connections still open");
                return open;
            }
        }
    }

    pub(crate) fn inner(&self) -> &Arc<NodeState> {
        &self.inner
    }
}

/// The data plane's routes over `state`.
pub fn router(state: DataPlane) -> Router {
    Router::new()
        .route("/v1/connect", get(transport::ws::upgrade))
        .route("/v1/sse", get(transport::sse::stream))
        .route("/v1/apps/{app_id}/channels/{channel}/messages", post(rest::publish))
        .route("/v1/apps/{app_id}/messages", post(rest::publish_batch))
        .route("/v1/apps/{app_id}/channels/{channel}/history", get(rest::history))
        .route("/v1/apps/{app_id}/channels/{channel}/presence", get(rest::presence))
        .route("/v1/apps/{app_id}/channels", get(rest::channels))
        .route("/app/{key}", get(pusher::socket::upgrade))
        .route("/apps/{app_id}/events", post(pusher::http::events))
        .route("/apps/{app_id}/batch_events", post(pusher::http::batch_events))
        .route("/apps/{app_id}/channels", get(pusher::http::channels))
        .route("/apps/{app_id}/channels/{channel}", get(pusher::http::channel_info))
        .route("/apps/{app_id}/channels/{channel}/users", get(pusher::http::channel_users))
        .route("/apps/{app_id}/users/{user_id}/terminate_connections", post(pusher::http::terminate_connections))
        .route("/users/{user_id}/terminate_connections", post(pusher::http::terminate_connections_of_key_app))
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(rest::MAX_BODY_BYTES))
        .with_state(state)
}

/// The OpenAPI document of the REST API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::document()
}

/// Applies registry changes to live connections: closes those of removed or disabled apps
/// (4004) and those whose API key or client tokens were revoked (4010).
async fn watch_config(
    inner: std::sync::Weak<NodeState>,
    mut events: broadcast::Receiver<ConfigEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        let Some(inner) = inner.upgrade() else { return };
        match event {
            Ok(event) => apply_config_event(&inner, &event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // Events were lost: re-check every connection against the registry's state.
                tracing::warn!(missed, "config events lagged; re-checking all connections");
                recheck_all(&inner);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn close_matching(inner: &NodeState, reason: CloseReason, matches: impl Fn(&Identity) -> bool) {
    for s in inner.sessions.iter() {
        if s.value().identity().is_some_and(|id| matches(&id)) {
            s.value().close(reason.clone());
        }
    }
}

fn apply_config_event(inner: &NodeState, event: &ConfigEvent) {
    match event {
        ConfigEvent::AppChanged(app) if !app.enabled => {
            close_matching(inner, CloseReason::new(close::APP_UNAVAILABLE, "app disabled"), |id| {
                id.app_id == app.app_id
            })
        }
        ConfigEvent::AppRemoved { app_id, .. } => {
            close_matching(inner, CloseReason::new(close::APP_UNAVAILABLE, "app deleted"), |id| &id.app_id == app_id)
        }
        ConfigEvent::ApiKeyRevoked { key_id, .. } => {
            close_matching(inner, CloseReason::new(close::REVOKED, "API key revoked"), |id| &id.key_id == key_id)
        }
        ConfigEvent::ClientRevoked { app_id, client_id, issued_before } => {
            close_matching(inner, CloseReason::new(close::REVOKED, "client tokens revoked"), |id| {
                &id.app_id == app_id && &id.client_id == client_id && id.issued_at <= *issued_before
            })
        }
        ConfigEvent::PusherCredentialChanged(credential) => {
            // Its capabilities or client-events switch changed: its connections reconnect (Pusher
            // 4200) and subscribe again under the new rules, on every node.
            let key_id = pusher::connection::credential_key_id(&credential.key);
            let reason = CloseReason::new(close::GOING_AWAY, "Pusher credential changed; reconnect");
            close_matching(inner, reason, |id| id.key_id == key_id)
        }
        ConfigEvent::AppChanged(_)
        | ConfigEvent::KeysChanged
        | ConfigEvent::WebhookChanged(_)
        | ConfigEvent::WebhookRemoved { .. } => {}
        ConfigEvent::PusherCredentialRevoked { key, .. } => {
            let key_id = pusher::connection::credential_key_id(key);
            close_matching(inner, CloseReason::new(close::REVOKED, "Pusher credential revoked"), |id| {
                id.key_id == key_id
            })
        }
    }
}

fn recheck_all(inner: &NodeState) {
    for s in inner.sessions.iter() {
        let Some(id) = s.value().identity() else { continue };
        let reason = match inner.registry.app(&id.app_id) {
            None => Some(CloseReason::new(close::APP_UNAVAILABLE, "app deleted")),
            Some(app) if !app.enabled => Some(CloseReason::new(close::APP_UNAVAILABLE, "app disabled")),
            _ if id
                .key_id
                .strip_prefix("pusher:")
                .is_some_and(|key| inner.registry.pusher_credential(key).is_none()) =>
            {
                Some(CloseReason::new(close::REVOKED, "Pusher credential revoked"))
            }
            _ if inner.registry.api_key_revoked(&id.key_id)
                || inner.registry.client_revoked(&id.app_id, &id.client_id, id.issued_at) =>
            {
                Some(CloseReason::new(close::REVOKED, "credentials revoked"))
            }
            _ => None,
        };
        if let Some(reason) = reason {
            s.value().close(reason);
        }
    }
}

/// Reports this node's per-channel subscriber counts for the cluster-wide listing: an app's
/// counts are rewritten when they changed since the last accepted report and only confirmed
/// otherwise. A failed report is retried on the next tick. On shutdown the node withdraws its
/// counts (best effort; otherwise they expire with the node TTL).
async fn report_channels(
    inner: std::sync::Weak<NodeState>,
    counts: Arc<RedisChannelCounts>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: HashMap<Arc<str>, Vec<(Arc<str>, u64)>> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(snapshot) = inner.upgrade().map(|inner| inner.hub.snapshot()) else { return };
        let apps: Vec<Arc<str>> = snapshot
            .keys()
            .chain(reported.keys())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for app in apps {
            let now: &[(Arc<str>, u64)] = snapshot.get(&app).map_or(&[], Vec::as_slice);
            let result = if reported.get(&app).map(Vec::as_slice) == Some(now) {
                match counts.report(&app, None).await {
                    Ok(true) => Ok(()),
                    // Redis lost the last report (restart, flush): write it again.
                    Ok(false) => counts.report(&app, Some(now)).await.map(drop),
                    Err(e) => Err(e),
                }
            } else {
                counts.report(&app, Some(now)).await.map(drop)
            };
            match result {
                Ok(()) if now.is_empty() => {
                    reported.remove(&app);
                }
                Ok(()) => {
                    reported.insert(app, now.to_vec());
                }
                Err(e) => tracing::debug!(app_id = %app, error = %e, "channel count report failed; retrying next tick"),
            }
        }
    }
    for app in reported.keys() {
        let _ = counts.report(app, Some(&[])).await;
    }
}
