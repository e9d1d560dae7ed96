//! `message_published` off the publisher's path: a bounded per-node queue drained into the
//! ledger by one task.
//!
//! Appending to the ledger is a Redis round trip (300–400 µs); a publisher waiting for it would
//! pay that on every message of an app with a `message_published` endpoint. Instead the
//! publish operation puts the event in this queue without waiting ([`PublishedQueue::offer`])
//! and one task appends what is queued, in order, several events per round trip.
//!
//! The trade-off, as documented in `docs/webhooks.md`: an event is *accepted* when it is in
//! the ledger. Between the publish answer and the append (normally under a millisecond, longer
//! while Redis is slow) it lives only in this process, so a SIGKILL in that window loses it; a
//! full queue (the ledger unreachable for long) refuses new events, which are counted in
//! `aviary_webhook_events_dropped_total` and `aviary_webhook_published_shed_total`. With a
//! capacity of 0 the publish operation awaits the append instead (strict, slower).

use std::sync::Arc;
use std::time::Duration;

use aviary_broker::webhooks::{NewEvent, WebhookLedger};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::delivery::Deliveries;
use super::metrics;

/// Most events one append carries.
const APPEND_BATCH: usize = 256;

struct Queued {
    tenant_id: String,
    app_id: String,
    event: NewEvent,
}

/// See the module docs.
pub struct PublishedQueue {
    tx: mpsc::Sender<Queued>,
}

impl PublishedQueue {
    /// A queue of `capacity` events (at least 1) and its drain task, until `shutdown`.
    pub(crate) fn start(
        capacity: usize,
        ledger: Arc<dyn WebhookLedger>,
        deliveries: Arc<Deliveries>,
        shutdown: CancellationToken,
    ) -> PublishedQueue {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(drain(rx, ledger, deliveries, shutdown));
        PublishedQueue { tx }
    }

    /// Queues the event without waiting; `false` (counted) when the queue is full.
    pub fn offer(&self, tenant_id: &str, app_id: &str, event: NewEvent) -> bool {
        match self.tx.try_send(Queued { tenant_id: tenant_id.to_owned(), app_id: app_id.to_owned(), event }) {
            Ok(()) => true,
            Err(_) => {
                metrics::shed(tenant_id, app_id);
                metrics::dropped(tenant_id, app_id, 1);
                false
            }
        }
    }
}

async fn drain(
    mut rx: mpsc::Receiver<Queued>,
    ledger: Arc<dyn WebhookLedger>,
    deliveries: Arc<Deliveries>,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(APPEND_BATCH);
    loop {
        // On shutdown, drain what is queued before leaving (best effort: the ledger may be gone).
        let first = tokio::select! {
            biased;
            got = rx.recv() => got,
            _ = shutdown.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < APPEND_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        // One append per app, each app's events in queue order.
        let mut start = 0;
        while start < batch.len() {
            let app = batch[start].app_id.clone();
            let end = batch[start..].iter().position(|q| q.app_id != app).map_or(batch.len(), |p| start + p);
            let events: Vec<NewEvent> = batch[start..end].iter().map(|q| q.event.clone()).collect();
            let tenant = batch[start].tenant_id.clone();
            let mut delay = Duration::from_millis(50);
            loop {
                match ledger.append(&app, &events).await {
                    Ok(()) => {
                        metrics::queued(&tenant, &app, events.len());
                        deliveries.appended(&app);
                        break;
                    }
                    Err(e) if !shutdown.is_cancelled() => {
                        // Keep the events and retry; meanwhile the queue fills and sheds.
                        tracing::warn!(app_id = %app, error = %e, "message_published webhooks not appended yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        tracing::warn!(app_id = %app, error = %e, events = events.len(), "message_published webhooks lost at shutdown");
                        metrics::dropped(&tenant, &app, events.len());
                        break;
                    }
                }
            }
            start = end;
        }
        batch.clear();
    }
}
