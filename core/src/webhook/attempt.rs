//! Delivery attempts as the API shows them, and the seam through which the control plane
//! sends a test event and reads an endpoint's recent attempts.
//!
//! Delivering is the data plane's job (it owns the signing code and the HTTP client that
//! refuses private addresses); the control plane serves `POST .../webhooks/{id}/test` and
//! `GET .../webhooks/{id}/deliveries`. [`WebhookDeliveries`] joins them without either crate
//! depending on the other: the data plane implements it, the binary hands it to the control
//! plane. Attempts are kept where every node and the control plane see them (the webhook
//! ledger: Redis in a cluster, memory in `aviary dev`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::WebhookEndpoint;
use crate::PusherCredential;

/// One event of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptedEvent {
    /// The event id receivers deduplicate on.
    pub id: String,
    /// `channel_occupied`, `client_event`, ... (`test` for a test event).
    pub name: String,
    /// The Aviary channel name (empty for a test event).
    pub channel: String,
}

/// One POST of a batch to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"time_ms": 1765130000000_i64, "events": [{"id": "1765130000000-0", "name": "channel_occupied", "channel": "chat:lobby"}], "status": 200, "latency_ms": 12, "error": null, "test": false}))]
pub struct DeliveryAttempt {
    /// When the POST started, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The events the batch carried.
    pub events: Vec<AttemptedEvent>,
    /// The receiver's HTTP status; absent when it did not answer (timeout, refused address,
    /// connection error) or the batch could not be signed.
    pub status: Option<u16>,
    /// How long the POST took, in milliseconds.
    pub latency_ms: u64,
    /// Why the attempt failed; absent on a 2xx.
    pub error: Option<String>,
    /// Whether this was a test event (`POST .../test`).
    #[serde(default)]
    pub test: bool,
}

impl DeliveryAttempt {
    /// Did the receiver answer 2xx?
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Why the attempts could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DeliveriesUnavailable(pub String);

/// Sends test events and reads recorded attempts; see the module docs.
#[async_trait]
pub trait WebhookDeliveries: Send + Sync + 'static {
    /// POSTs one `test` event to `endpoint` now, signed in its format (`pusher` signs with the
    /// app's Pusher credential), records the attempt with the endpoint's others and returns it.
    async fn send_test(&self, endpoint: &WebhookEndpoint, pusher: Option<&PusherCredential>) -> DeliveryAttempt;

    /// The endpoint's recent attempts from every node, newest first.
    async fn recent(&self, app_id: &str, endpoint_id: &str) -> Result<Vec<DeliveryAttempt>, DeliveriesUnavailable>;
}
