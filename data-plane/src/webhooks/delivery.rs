//! Delivery: from an app's queue in the ledger to its endpoints.
//!
//! A supervisor keeps one deliverer task per app with endpoints. A deliverer works only while
//! it holds the app's lease, so one node at a time reads the app's queue: on taking the lease it
//! first re-reads what the previous holder was handed and did not acknowledge (a SIGKILLed
//! node's events are delivered by another), then new events, in queue order. Each event goes to
//! every endpoint that wants it through that endpoint's own bounded queue and sender task, so
//! a failing receiver holds up only its own endpoint (and, once its queue is full, the app's
//! reading); other endpoints, other tenants and message delivery never wait for it. An event is
//! acknowledged (removed from the queue) once every endpoint it went to has delivered it or
//! given up on it.
//!
//! A sender batches what is queued for its endpoint within a short window, POSTs it signed, and
//! on failure retries the same batch with exponential backoff and full jitter until the retry
//! window passes; then the batch is dropped and counted. The next batch waits for the current
//! one, which keeps each channel's events in order. Before each batch a sender takes its events
//! from its tenant's delivery rate ([`super::rate`]), waiting when the tenant is over it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aviary_broker::webhooks::{QueuedEvent, WebhookLedger};
use aviary_core::Registry;
use aviary_core::usage::UsageMeter;
use aviary_core::webhook::{WebhookEndpoint, WebhookEvent};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::WebhookConfig;
use super::attempts::{Attempts, attempt_of};
use super::body;
use super::http::{Attempt, WebhookClient};
use super::metrics;
use super::rate::TenantRate;

/// Events read from the queue per call.
const READ_BATCH: usize = 256;
/// Events waiting per endpoint before the app's reading pauses.
const ENDPOINT_QUEUE: usize = 4096;
/// How often a deliverer without news looks at the queue (other nodes append too).
const POLL: Duration = Duration::from_millis(100);

/// An event handed to one or more endpoints; acknowledged when the last is done with it.
struct Tracked {
    event: QueuedEvent,
    remaining: AtomicUsize,
    acks: mpsc::UnboundedSender<String>,
}

impl Tracked {
    fn done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.acks.send(self.event.id.clone());
        }
    }
}

/// Shared by every deliverer of the node.
pub struct Deliveries {
    registry: Arc<Registry>,
    ledger: Arc<dyn WebhookLedger>,
    config: WebhookConfig,
    client: WebhookClient,
    attempts: Attempts,
    rate: TenantRate,
    /// Delivered events are counted here for billing.
    usage: Arc<UsageMeter>,
    shutdown: CancellationToken,
    /// Woken when this node appends to an app's queue.
    wakes: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Deliveries {
    pub fn new(
        registry: Arc<Registry>,
        ledger: Arc<dyn WebhookLedger>,
        usage: Arc<UsageMeter>,
        config: WebhookConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let client = WebhookClient::new(config.timeout, config.allow_private_targets);
        let attempts = Attempts::with_client(ledger.clone(), client.clone());
        let rate = TenantRate::new(config.max_events_per_s_per_tenant);
        Arc::new(Deliveries {
            registry,
            ledger,
            config,
            client,
            attempts,
            rate,
            usage,
            shutdown,
            wakes: Mutex::new(HashMap::new()),
        })
    }

    fn wake_of(&self, app_id: &str) -> Arc<Notify> {
        self.wakes.lock().entry(app_id.to_owned()).or_default().clone()
    }

    /// Tells the app's deliverer (if on this node) that events were appended.
    pub fn appended(&self, app_id: &str) {
        if let Some(w) = self.wakes.lock().get(app_id) {
            w.notify_one();
        }
    }

    /// Where attempts are recorded (and read back).
    pub fn attempts(&self) -> &Attempts {
        &self.attempts
    }

    /// Keeps one deliverer per app with endpoints until shutdown.
    pub async fn supervise(self: Arc<Self>) {
        let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut changes = self.registry.subscribe();
        loop {
            let apps: std::collections::HashSet<String> =
                self.registry.webhooks().iter().map(|w| w.app_id.clone()).collect();
            running.retain(|app, task| {
                let keep = apps.contains(app) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for app in apps {
                if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(app) {
                    let task = tokio::spawn(self.clone().deliver_app(slot.key().clone()));
                    slot.insert(task);
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = changes.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        for (app, task) in running {
            task.abort();
            let _ = self.ledger.release(&app).await;
        }
    }

    /// The app's deliverer: see the module docs.
    async fn deliver_app(self: Arc<Self>, app_id: String) {
        let wake = self.wake_of(&app_id);
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let acker = tokio::spawn(ack_loop(self.ledger.clone(), app_id.clone(), acks_rx));
        let mut senders: HashMap<String, (mpsc::Sender<Arc<Tracked>>, JoinHandle<()>)> = HashMap::new();
        let lease_ttl = self.config.lease_ttl;
        let mut held = false;
        let mut renew_at = tokio::time::Instant::now();
        let mut pending_after: Option<Option<String>> = None;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if tokio::time::Instant::now() >= renew_at {
                let now_held = self.ledger.lease(&app_id, lease_ttl).await.unwrap_or_else(|e| {
                    tracing::warn!(app_id = %app_id, error = %e, "webhook lease check failed");
                    false
                });
                if now_held && !held {
                    // Newly held: first what an earlier holder was handed and did not finish.
                    pending_after = Some(None);
                }
                held = now_held;
                renew_at = tokio::time::Instant::now() + lease_ttl / 3;
            }
            if !held {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(renew_at) => {}
                }
                continue;
            }
            let (from_start, after) = match &pending_after {
                Some(after) => (true, after.clone()),
                None => (false, None),
            };
            let events = match self.ledger.read(&app_id, from_start, after.as_deref(), READ_BATCH).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(app_id = %app_id, error = %e, "reading the webhook queue failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if from_start {
                pending_after = if events.is_empty() { None } else { Some(events.last().map(|e| e.id.clone())) };
            } else if events.is_empty() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            for event in events {
                self.dispatch(&app_id, event, &acks_tx, &mut senders).await;
            }
        }
        for (_, (_, task)) in senders {
            task.abort();
        }
        acker.abort();
    }

    async fn dispatch(
        self: &Arc<Self>,
        app_id: &str,
        event: QueuedEvent,
        acks: &mpsc::UnboundedSender<String>,
        senders: &mut HashMap<String, (mpsc::Sender<Arc<Tracked>>, JoinHandle<()>)>,
    ) {
        let kind: Option<WebhookEvent> = serde_json::from_value(serde_json::Value::String(event.name.clone())).ok();
        let targets: Vec<Arc<WebhookEndpoint>> = match kind {
            Some(kind) => {
                self.registry.webhooks_of(app_id).into_iter().filter(|w| w.wants(kind, &event.channel)).collect()
            }
            None => Vec::new(),
        };
        if targets.is_empty() {
            let _ = acks.send(event.id);
            return;
        }
        let tracked = Arc::new(Tracked { event, remaining: AtomicUsize::new(targets.len()), acks: acks.clone() });
        for endpoint in targets {
            let (tx, task) = senders.entry(endpoint.id.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(ENDPOINT_QUEUE);
                (
                    tx,
                    tokio::spawn(self.clone().send_loop(
                        endpoint.id.clone(),
                        endpoint.tenant_id.clone(),
                        app_id.to_owned(),
                        rx,
                    )),
                )
            });
            if task.is_finished() || tx.send(tracked.clone()).await.is_err() {
                tracked.done();
            }
        }
    }

    /// One endpoint's sender: batches, signs, POSTs, retries; see the module docs.
    async fn send_loop(
        self: Arc<Self>,
        endpoint_id: String,
        tenant_id: String,
        app_id: String,
        mut queue: mpsc::Receiver<Arc<Tracked>>,
    ) {
        let max_batch = self.config.max_batch.max(1);
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            let window = tokio::time::Instant::now() + self.config.batch_window;
            while batch.len() < max_batch {
                match tokio::time::timeout_at(window, queue.recv()).await {
                    Ok(Some(more)) => batch.push(more),
                    _ => break,
                }
            }
            // The tenant's rate: only this tenant's senders wait for it.
            let wait = self.rate.reserve(&tenant_id, batch.len());
            if !wait.is_zero() {
                metrics::throttled(&tenant_id, &app_id);
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            self.deliver(&endpoint_id, &tenant_id, &app_id, &batch).await;
            for item in &batch {
                item.done();
            }
        }
    }

    /// Delivers one batch with retries until it succeeds or the retry window passes.
    async fn deliver(&self, endpoint_id: &str, tenant_id: &str, app_id: &str, batch: &[Arc<Tracked>]) {
        let started = tokio::time::Instant::now();
        let mut attempt: u32 = 0;
        let events: Vec<&QueuedEvent> = batch.iter().map(|t| &t.event).collect();
        loop {
            let Some(endpoint) = self.registry.webhook(endpoint_id) else {
                // Deleted meanwhile: nobody to deliver to.
                metrics::dropped(tenant_id, app_id, batch.len());
                return;
            };
            let credential = self.registry.pusher_signing_credential(app_id);
            let now_ms = aviary_core::unix_now_ms();
            let outcome = match body::sign(&endpoint, credential.as_deref(), &events, now_ms) {
                Ok(signed) => self.client.post(&endpoint.url, &signed).await,
                Err(e) => Attempt { status: None, latency: Duration::ZERO, error: Some(e.to_string()) },
            };
            metrics::latency(tenant_id, app_id, outcome.latency.as_secs_f64());
            self.attempts.record(app_id, endpoint_id, &attempt_of(&events, &outcome, now_ms, false)).await;
            if outcome.ok() {
                metrics::sent(tenant_id, app_id, batch.len());
                self.usage.app(tenant_id, app_id).webhook_events_delivered(batch.len() as u64);
                return;
            }
            metrics::failed(tenant_id, app_id);
            let delay = backoff(self.config.retry_base, self.config.retry_cap, attempt);
            if started.elapsed() + delay > self.config.retry_window {
                tracing::warn!(
                    webhook_id = %endpoint_id, app_id = %app_id, events = batch.len(),
                    error = outcome.error.as_deref().unwrap_or(""),
                    "webhook batch dropped after the retry window"
                );
                metrics::dropped(tenant_id, app_id, batch.len());
                return;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            attempt = attempt.saturating_add(1);
            metrics::retried(tenant_id, app_id, batch.len());
        }
    }
}

/// Full jitter: a uniform delay in [base·2^attempt / 2, base·2^attempt], capped.
fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

/// Acknowledges finished events in batches.
async fn ack_loop(ledger: Arc<dyn WebhookLedger>, app_id: String, mut acks: mpsc::UnboundedReceiver<String>) {
    while let Some(first) = acks.recv().await {
        let mut ids = vec![first];
        while ids.len() < 512 {
            match acks.try_recv() {
                Ok(id) => ids.push(id),
                Err(_) => break,
            }
        }
        while let Err(e) = ledger.ack(&app_id, &ids).await {
            tracing::warn!(app_id = %app_id, error = %e, "acknowledging webhook events failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..10 {
            let d = backoff(base, cap, attempt);
            let ceiling = (base * 2u32.pow(attempt)).min(cap);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
    }
}
