//! The Aviary control plane: tenants, apps, API keys and connection tokens, over REST and gRPC,
//! on Postgres or SQLite.
//!
//! Code map:
//! - [`store`]: the `Store` trait (its docs are the contract), Postgres and SQLite implementations,
//!   and the contract suite both pass.
//! - [`auth`]: operator token, admin keys (`avt_`), API keys (`avk_`), argon2id, the verified-key
//!   cache, axum extractors.
//! - [`tokens`]: signing keyring (rotation, JWKS) and minting connection tokens.
//! - [`service`]: every domain operation (validation, store write, registry push), shared by
//!   REST and gRPC so both apply the same rules.
//! - [`sync`]: mirrors the store into the `aviary_core::Registry` the data plane reads.
//! - [`api`]: the REST surface (`router()`, `openapi()`); [`grpc`]: `aviary.v1.ControlPlane`.
//! - [`watch`]: the numbered change log behind the `Watch` config stream nodes follow (its
//!   messages and their conversions: the `aviary-proto` crate).
//! - [`usage`]: usage ingestion, the usage series API and the over-quota rule; [`clock`]: the
//!   "now" they read (pinned by tests).
//!
//! The node side of the link (`ConfigFollower`, `RemoteApiKeyAuthority`, `UsageReporter`) runs
//! inside data-plane processes and lives in `aviary-follower` (`data-plane/follower/`), which
//! does not depend on this crate.
//!
//! Invariants: after any successful mutation returns, this process's registry already reflects
//! it, so an in-process data plane (`aviary dev`) never sees a revoked key or a deleted app as
//! live; changes made through other replicas arrive at once through the store's change
//! announcements (Postgres `NOTIFY`), and at the latest within `refresh_interval` (see
//! [`ControlPlaneState::resync_registry`]). A refused request writes nothing.
//!
//! Wiring (done by the `aviary` binary): build a [`ControlPlaneState`], serve [`api::router`]
//! with `into_make_service_with_connect_info::<SocketAddr>()` (per-IP limits need the peer),
//! add [`grpc::grpc_router`] to a tonic server, hand [`ControlPlaneState::api_key_authority`]
//! and [`ControlPlaneState::registry`] to the data plane, and install a `metrics` recorder.
//! Separate data-plane processes instead run `aviary-follower`'s `ConfigFollower` into their
//! own registry, a `RemoteApiKeyAuthority` and a `UsageReporter` over gRPC; `aviary dev`
//! reports usage in process ([`ControlPlaneState::ingest_usage`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aviary_core::Registry;
use aviary_core::sealing::SecretBox;

pub mod api;
pub mod auth;
pub mod clock;
mod demo;
pub mod error;
pub mod grpc;
pub mod metrics;
mod rate_limit;
pub mod service;
pub mod store;
pub mod sync;
pub mod tokens;
pub mod usage;
pub mod watch;

pub use auth::KeyVerifier;
pub use clock::{Clock, SystemClock};
pub use demo::DemoCredentials;
pub use error::{Error, Result};
pub use rate_limit::RateLimitConfig;
pub use store::{PgStore, SqliteStore, Store};

/// Settings of one control plane process.
#[derive(Clone)]
pub struct ControlPlaneConfig {
    /// The secret that administers tenants. Compared in constant time; never logged.
    pub operator_token: String,
    /// Ceiling on any app's `max_token_ttl_s`; also how long a rotated-out signing key stays in
    /// the JWKS.
    pub max_token_ttl_s: u32,
    /// How long a verified API/admin key is trusted without re-running argon2.
    pub key_cache_ttl: Duration,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    pub rate_limits: RateLimitConfig,
    /// How often the store is re-read for changes made elsewhere (other replicas, expired
    /// signing keys); see [`ControlPlaneState::resync_registry`].
    pub refresh_interval: Duration,
    /// The shared secret data-plane nodes present (`authorization: Bearer <token>`) to `Watch`,
    /// `VerifyApiKey` and `ReportUsage`. `None` refuses every node. Compared in constant time;
    /// never logged.
    pub node_token: Option<String>,
    /// How often an idle `Watch` stream carries a heartbeat (nodes treat 3 missed as a dead
    /// stream).
    pub watch_heartbeat: Duration,
    /// "Now" for usage: the default usage window, the over-quota hour, batch id retention.
    /// [`SystemClock`] unless a test pins the time.
    pub clock: Arc<dyn Clock>,
    /// Seals Pusher credential secrets at rest (see [`aviary_core::sealing`]). `None` refuses to create
    /// Pusher credentials and leaves stored ones unloaded. Never logged.
    pub credentials_key: Option<Arc<SecretBox>>,
    /// Whether webhook URLs may point at loopback, private or link-local addresses
    /// (`--webhook-allow-private-targets`; see [`aviary_core::webhook::target`]).
    pub webhook_allow_private_targets: bool,
    /// Most webhook endpoints a tenant may have, over all its apps.
    pub max_webhooks_per_tenant: u32,
    /// Sends webhook test events and reads delivery attempts (the data plane's delivery code
    /// over the nodes' webhook ledger, handed in by the binary). `None` answers 503
    /// `deliveries-unavailable` on `.../test` and `.../deliveries`.
    pub webhook_deliveries: Option<Arc<dyn aviary_core::webhook::WebhookDeliveries>>,
}

impl std::fmt::Debug for ControlPlaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("max_token_ttl_s", &self.max_token_ttl_s)
            .field("key_cache_ttl", &self.key_cache_ttl)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("rate_limits", &self.rate_limits)
            .field("refresh_interval", &self.refresh_interval)
            .field("node_token", &self.node_token.as_ref().map(|_| "<set>"))
            .field("watch_heartbeat", &self.watch_heartbeat)
            .field("credentials_key", &self.credentials_key.as_ref().map(|_| "<set>"))
            .field("webhook_allow_private_targets", &self.webhook_allow_private_targets)
            .field("max_webhooks_per_tenant", &self.max_webhooks_per_tenant)
            .field("webhook_deliveries", &self.webhook_deliveries.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl ControlPlaneConfig {
    /// Defaults for everything but the operator token: 24 h token TTL ceiling, 60 s key cache,
    /// 64 KiB bodies, [`RateLimitConfig::default`], 30 s store refresh, the system clock.
    pub fn new(operator_token: impl Into<String>) -> Self {
        ControlPlaneConfig {
            operator_token: operator_token.into(),
            max_token_ttl_s: 24 * 3600,
            key_cache_ttl: Duration::from_secs(60),
            body_limit_bytes: 64 * 1024,
            rate_limits: RateLimitConfig::default(),
            refresh_interval: Duration::from_secs(30),
            node_token: None,
            watch_heartbeat: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
            credentials_key: None,
            webhook_allow_private_targets: false,
            max_webhooks_per_tenant: service::webhooks::DEFAULT_MAX_WEBHOOKS_PER_TENANT,
            webhook_deliveries: None,
        }
    }
}

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlaneState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    keys: KeyVerifier,
    keyring: Arc<tokens::Keyring>,
    log: Arc<watch::ConfigLog>,
    config: ControlPlaneConfig,
}

impl ControlPlaneState {
    /// Builds the state: loads (or creates) the signing keys and fills `registry` with every
    /// app, trusted key and revoked API key in the store. The store must be migrated.
    pub async fn new(store: Arc<dyn Store>, registry: Arc<Registry>, config: ControlPlaneConfig) -> Result<Self> {
        if config.operator_token.trim().is_empty() {
            return Err(Error::invalid("the operator token must not be empty"));
        }
        // Log first, so the stream sees every change from here on (keys loaded, apps loaded).
        let stream_box = config.node_token.as_deref().map(SecretBox::for_config_stream);
        let log = watch::ConfigLog::start(registry.clone(), stream_box);
        let keyring = Arc::new(tokens::Keyring::load(store.clone(), registry.clone(), config.max_token_ttl_s).await?);
        let keys = KeyVerifier::new(store.clone(), config.key_cache_ttl);
        let state = ControlPlaneState { inner: Arc::new(Inner { store, registry, keys, keyring, log, config }) };
        state.load_registry().await?;
        state.spawn_change_listener().await;
        state.spawn_refresh(state.config().refresh_interval.max(Duration::from_millis(100)));
        Ok(state)
    }

    /// Every `every`, re-reads signing keys and app config from the store and republishes what
    /// differs. Mutations through this process are pushed at once; this catches what other
    /// replicas changed, retired keys whose retention ran out, and any push that lost a race.
    /// Stops when the last clone of the state is dropped.
    fn spawn_refresh(&self, every: Duration) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut pruned_at: Option<std::time::Instant> = None;
            loop {
                tick.tick().await;
                let Some(inner) = inner.upgrade() else { return };
                let state = ControlPlaneState { inner };
                if pruned_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
                    pruned_at = Some(std::time::Instant::now());
                    let before = (state.now() - usage::BATCH_ID_RETENTION).timestamp();
                    match state.store().prune_usage_batches(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(forgotten = n, "old usage batch ids pruned"),
                        Err(e) => tracing::warn!(error = %e, "could not prune usage batch ids"),
                    }
                }
                if let Err(e) = state.keyring().reload().await {
                    tracing::warn!(error = %e, "could not reload signing keys");
                }
                if let Err(e) = state.resync_registry().await {
                    tracing::warn!(error = %e, "could not resync the registry");
                }
            }
        });
    }

    /// Re-reads the store as soon as another replica announces a change (Postgres `NOTIFY`),
    /// so nodes following this replica see it within a second, not a refresh interval.
    async fn spawn_change_listener(&self) {
        let mut changes = match self.store().config_changes().await {
            Ok(Some(changes)) => changes,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other replicas' changes; relying on the periodic refresh");
                return;
            }
        };
        let me = self.config_log().epoch().to_owned();
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(origin) = changes.recv().await {
                if origin == me {
                    continue;
                }
                // One re-read covers a burst of announcements.
                while changes.try_recv().is_ok() {}
                let Some(inner) = inner.upgrade() else { return };
                let state = ControlPlaneState { inner };
                if let Err(e) = state.keyring().reload().await {
                    tracing::warn!(error = %e, "could not reload signing keys");
                }
                if let Err(e) = state.resync_registry().await {
                    tracing::warn!(error = %e, "could not resync the registry");
                }
            }
        });
    }

    /// Tells other replicas this process changed config (best effort; see
    /// [`Store::announce_config_change`]).
    pub(crate) async fn announce_change(&self) {
        if let Err(e) = self.store().announce_config_change(self.config_log().epoch()).await {
            tracing::warn!(error = %e, "could not announce a config change to other replicas");
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The live config the data plane reads.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The API key verifier; also an [`aviary_core::ApiKeyAuthority`] for the data plane.
    pub fn keys(&self) -> &KeyVerifier {
        &self.inner.keys
    }

    /// The key verifier as the trait object the data plane takes.
    pub fn api_key_authority(&self) -> Arc<dyn aviary_core::ApiKeyAuthority> {
        Arc::new(self.inner.keys.clone())
    }

    pub fn keyring(&self) -> &tokens::Keyring {
        &self.inner.keyring
    }

    /// The numbered change log `Watch` streams are fed from.
    pub fn config_log(&self) -> &Arc<watch::ConfigLog> {
        &self.inner.log
    }

    pub fn config(&self) -> &ControlPlaneConfig {
        &self.inner.config
    }

    /// The current time as usage sees it ([`ControlPlaneConfig::clock`]).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.config.clock.now()
    }

    /// Is the store reachable? (`/readyz`)
    pub async fn ready(&self) -> bool {
        self.inner.store.ping().await.is_ok()
    }
}

/// Opens the store named by `url` (`postgres://...` or `sqlite:...`), migrating it first when
/// `migrate` is set.
pub async fn open_store(url: &str, migrate: bool) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PgStore::connect(url).await?;
        if migrate {
            store.migrate().await?;
        }
        Ok(Arc::new(store))
    } else if url.starts_with("sqlite:") {
        let store = SqliteStore::connect(url).await?;
        if migrate {
            store.migrate().await?;
        }
        Ok(Arc::new(store))
    } else {
        Err(Error::invalid("database URL must start with postgres://, postgresql:// or sqlite:"))
    }
}

/// Applies the embedded migrations to the database at `url` (`aviary migrate`).
pub async fn migrate(url: &str) -> Result<()> {
    open_store(url, true).await.map(|_| ())
}

/// Opens (creating and migrating) the SQLite store `aviary dev` keeps in `data_dir`.
pub async fn open_dev_store(data_dir: &Path) -> Result<Arc<dyn Store>> {
    std::fs::create_dir_all(data_dir).map_err(|e| Error::Internal(format!("creating {}: {e}", data_dir.display())))?;
    let store = SqliteStore::open(&data_dir.join("aviary.db")).await?;
    store.migrate().await?;
    Ok(Arc::new(store))
}
