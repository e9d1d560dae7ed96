//! Webhook series (labels `tenant`, `app`), described once so `/metrics` carries HELP text.

use metrics::{counter, histogram};

pub const SENT: &str = "aviary_webhook_events_sent_total";
pub const FAILED: &str = "aviary_webhook_attempts_failed_total";
pub const RETRIED: &str = "aviary_webhook_events_retried_total";
pub const DROPPED: &str = "aviary_webhook_events_dropped_total";
pub const LATENCY: &str = "aviary_webhook_delivery_seconds";
pub const QUEUED: &str = "aviary_webhook_events_queued_total";
pub const SHED: &str = "aviary_webhook_published_shed_total";
pub const THROTTLED: &str = "aviary_webhook_batches_throttled_total";

/// Registers the HELP text of every webhook series (idempotent).
pub fn describe() {
    metrics::describe_counter!(SENT, "Webhook events delivered to a receiver that answered 2xx, per app.");
    metrics::describe_counter!(
        FAILED,
        "Webhook POST attempts that failed (non-2xx, timeout, refused address), per app."
    );
    metrics::describe_counter!(RETRIED, "Webhook events sent again after a failed attempt, per app.");
    metrics::describe_counter!(
        DROPPED,
        "Webhook events given up after the retry window (or whose endpoint could not be signed for or was deleted), per app."
    );
    metrics::describe_histogram!(LATENCY, metrics::Unit::Seconds, "Duration of webhook POST attempts, per app.");
    metrics::describe_counter!(QUEUED, "Webhook events accepted into the delivery queue, per app.");
    metrics::describe_counter!(
        THROTTLED,
        "Webhook batches that waited for their tenant's delivery rate (--webhook-max-events-per-s), per app."
    );
    metrics::describe_counter!(
        SHED,
        "message_published webhook events refused because the node's queue to the ledger was full, per app."
    );
}

fn labels(tenant: &str, app: &str) -> [(&'static str, String); 2] {
    [("tenant", tenant.to_owned()), ("app", app.to_owned())]
}

pub fn sent(tenant: &str, app: &str, n: usize) {
    counter!(SENT, &labels(tenant, app)).increment(n as u64);
}

pub fn failed(tenant: &str, app: &str) {
    counter!(FAILED, &labels(tenant, app)).increment(1);
}

pub fn retried(tenant: &str, app: &str, n: usize) {
    counter!(RETRIED, &labels(tenant, app)).increment(n as u64);
}

pub fn dropped(tenant: &str, app: &str, n: usize) {
    counter!(DROPPED, &labels(tenant, app)).increment(n as u64);
}

pub fn latency(tenant: &str, app: &str, seconds: f64) {
    histogram!(LATENCY, &labels(tenant, app)).record(seconds);
}

pub fn queued(tenant: &str, app: &str, n: usize) {
    counter!(QUEUED, &labels(tenant, app)).increment(n as u64);
}

pub fn shed(tenant: &str, app: &str) {
    counter!(SHED, &labels(tenant, app)).increment(1);
}

pub fn throttled(tenant: &str, app: &str) {
    counter!(THROTTLED, &labels(tenant, app)).increment(1);
}
