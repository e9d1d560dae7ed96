//! Webhooks on a node: turning what happens in channels into events, and delivering them.
//!
//! - [`tracker`]: this node's share of the cluster-wide counters (channel occupancy from the
//!   hub, presence membership per user from the presence operations), reported to the ledger,
//!   whose zero crossings are `channel_occupied`/`channel_vacated`/`member_added`/
//!   `member_removed`, exactly once per transition whatever the node count.
//! - `client_event` is appended to the ledger's queue directly by the operations
//!   (`ops::webhooks`); `message_published` goes through a bounded per-node queue drained into
//!   the ledger by a task ([`published`]), so publishers never wait for it.
//! - [`delivery`]: the app's lease holder reads its queue and POSTs signed batches ([`body`])
//!   through a client that refuses private addresses ([`http`]), with retries; [`metrics`].
//! - [`attempts`]: every POST recorded in the ledger (the last 50 per endpoint, seen by every
//!   node and the control plane), and test events sent on the control plane's request.
//!
//! The ledger (`aviary_broker::webhooks`) is Redis in a cluster (durable: a node killed with
//! SIGKILL loses nothing it accepted, another node delivers it) and in memory on a single node
//! without Redis (lost when the process stops).

pub mod attempts;
pub mod body;
pub mod delivery;
pub mod http;
pub mod metrics;
pub mod published;
pub mod rate;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use aviary_broker::webhooks::{NewEvent, WebhookLedger};
use aviary_core::Registry;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// Tunables of webhook delivery. [`Default`] gives production values.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Call loopback, private and link-local addresses too (`aviary dev`, tests).
    pub allow_private_targets: bool,
    /// Longest a POST may take.
    pub timeout: Duration,
    /// How long a batch waits for more events before it is sent.
    pub batch_window: Duration,
    /// Most events in one POST.
    pub max_batch: usize,
    /// First retry delay; doubles per attempt (with full jitter) up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How long a batch is retried before it is dropped (and counted).
    pub retry_window: Duration,
    /// The delivery lease: a holder that dies is replaced within this.
    pub lease_ttl: Duration,
    /// `message_published` events a node holds on their way to the ledger (see
    /// [`published`]); beyond it they are dropped and counted. 0: publishers await the append.
    pub published_queue: usize,
    /// Most events per second a node sends for one tenant (all its apps and endpoints);
    /// 0 is unlimited. See [`rate`].
    pub max_events_per_s_per_tenant: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow_private_targets: false,
            timeout: Duration::from_secs(10),
            batch_window: Duration::from_millis(50),
            max_batch: 100,
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(60),
            retry_window: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(10),
            published_queue: 65_536,
            max_events_per_s_per_tenant: 1_000,
        }
    }
}

/// A node's webhook machinery; see the module docs.
pub struct Webhooks {
    pub(crate) tracker: Arc<tracker::Tracker>,
    pub(crate) ledger: Arc<dyn WebhookLedger>,
    pub(crate) deliveries: Arc<delivery::Deliveries>,
    /// `None` when publishers await the append (`published_queue` 0).
    pub(crate) published: Option<published::PublishedQueue>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Starts tracking (the hub reports to it) and delivering, until `shutdown`.
    pub(crate) fn start(
        registry: Arc<Registry>,
        hub: &Arc<Hub>,
        ledger: Arc<dyn WebhookLedger>,
        usage: Arc<aviary_core::usage::UsageMeter>,
        config: WebhookConfig,
        node_ttl: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Webhooks> {
        metrics::describe();
        let tracker = tracker::Tracker::new(registry.clone(), hub.clone());
        hub.set_occupancy_listener(tracker.clone());
        tokio::spawn(tracker.clone().run(ledger.clone(), node_ttl, shutdown.clone()));
        let capacity = config.published_queue;
        let deliveries = delivery::Deliveries::new(registry, ledger.clone(), usage, config, shutdown.clone());
        tokio::spawn(deliveries.clone().supervise());
        let published = (capacity > 0)
            .then(|| published::PublishedQueue::start(capacity, ledger.clone(), deliveries.clone(), shutdown));
        Arc::new(Webhooks { tracker, ledger, deliveries, published })
    }

    /// Appends events to the app's queue (durably with Redis) and wakes its deliverer.
    pub(crate) async fn append(
        &self,
        tenant_id: &str,
        app_id: &str,
        events: &[NewEvent],
    ) -> Result<(), aviary_broker::BrokerError> {
        self.ledger.append(app_id, events).await?;
        metrics::queued(tenant_id, app_id, events.len());
        self.deliveries.appended(app_id);
        Ok(())
    }
}
