//! Delivery attempts: recorded where every node and the control plane read them, and test
//! events sent on request.
//!
//! Each POST a deliverer makes is recorded in the webhook ledger ([`Attempts::record`]), which
//! keeps the last 50 per endpoint: one capped Redis list per endpoint in a cluster (whichever
//! node held the app's lease), memory in `aviary dev`. The control plane reads them through the
//! [`WebhookDeliveries`] seam, which [`Attempts`] implements over the same ledger, and sends
//! test events through it too: signed by the same [`super::body::sign`] and POSTed by the same
//! [`WebhookClient`] as every delivery, so a test proves exactly what a delivery would do.

use std::sync::Arc;

use async_trait::async_trait;
use aviary_broker::webhooks::{QueuedEvent, WebhookLedger};
use aviary_core::PusherCredential;
use aviary_core::webhook::{
    AttemptedEvent, DeliveriesUnavailable, DeliveryAttempt, WebhookDeliveries, WebhookEndpoint,
};

use super::WebhookConfig;
use super::body;
use super::http::{Attempt, WebhookClient};

/// Records and reads attempts, sends test events; see the module docs.
#[derive(Clone)]
pub struct Attempts {
    ledger: Arc<dyn WebhookLedger>,
    client: WebhookClient,
}

impl std::fmt::Debug for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts").field("client", &self.client).finish_non_exhaustive()
    }
}

/// The attempt record of one POST of `events`.
pub fn attempt_of(events: &[&QueuedEvent], outcome: &Attempt, time_ms: i64, test: bool) -> DeliveryAttempt {
    DeliveryAttempt {
        time_ms,
        events: events
            .iter()
            .map(|e| AttemptedEvent { id: e.id.clone(), name: e.name.clone(), channel: e.channel.clone() })
            .collect(),
        status: outcome.status,
        latency_ms: u64::try_from(outcome.latency.as_millis()).unwrap_or(u64::MAX),
        error: outcome.error.clone(),
        test,
    }
}

impl Attempts {
    /// Over `ledger`, POSTing tests with the timeouts and address rule of `config`.
    pub fn new(ledger: Arc<dyn WebhookLedger>, config: &WebhookConfig) -> Self {
        Attempts { ledger, client: WebhookClient::new(config.timeout, config.allow_private_targets) }
    }

    pub(crate) fn with_client(ledger: Arc<dyn WebhookLedger>, client: WebhookClient) -> Self {
        Attempts { ledger, client }
    }

    /// Records one attempt of an endpoint of `app_id`. A ledger that cannot take it is logged:
    /// the record is for inspection, never a reason to hold up delivery.
    pub async fn record(&self, app_id: &str, endpoint_id: &str, attempt: &DeliveryAttempt) {
        let json = serde_json::to_string(attempt).expect("attempts serialize");
        if let Err(e) = self.ledger.record_attempt(app_id, endpoint_id, &json).await {
            tracing::warn!(app_id = %app_id, webhook_id = %endpoint_id, error = %e, "webhook attempt not recorded");
        }
    }
}

#[async_trait]
impl WebhookDeliveries for Attempts {
    async fn send_test(&self, endpoint: &WebhookEndpoint, pusher: Option<&PusherCredential>) -> DeliveryAttempt {
        let now_ms = aviary_core::unix_now_ms();
        let event = QueuedEvent {
            id: format!("test-{}", uuid::Uuid::new_v4().simple()),
            name: "test".into(),
            channel: String::new(),
            user_id: None,
            time_ms: now_ms,
            detail: None,
        };
        let events = [&event];
        let outcome = match body::sign(endpoint, pusher, &events, now_ms) {
            Ok(signed) => self.client.post(&endpoint.url, &signed).await,
            Err(e) => Attempt { status: None, latency: std::time::Duration::ZERO, error: Some(e.to_string()) },
        };
        let attempt = attempt_of(&events, &outcome, now_ms, true);
        self.record(&endpoint.app_id, &endpoint.id, &attempt).await;
        attempt
    }

    async fn recent(&self, app_id: &str, endpoint_id: &str) -> Result<Vec<DeliveryAttempt>, DeliveriesUnavailable> {
        let stored =
            self.ledger.attempts(app_id, endpoint_id).await.map_err(|e| DeliveriesUnavailable(e.to_string()))?;
        Ok(stored.iter().filter_map(|json| serde_json::from_str(json).ok()).collect())
    }
}
