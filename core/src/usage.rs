//! Usage metering for billing: what each app used, counted on the data plane's hot path and
//! drained into reports on an interval.
//!
//! Counting must cost next to nothing per message, so an [`AppUsage`] is a handful of atomics a
//! connection resolves once and then only `fetch_add`s. [`UsageMeter::drain`] turns the counts
//! since the previous drain into [`UsageRecord`]s; the reporter sends them to the control plane,
//! which stores them in hourly buckets.
//!
//! Connection time is integrated exactly, without timers: opening a connection at `t` subtracts
//! `t` from an accumulator and closing it at `t'` adds `t'`, so the accumulator plus
//! `live * now` is the total connected time of the window.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// Counters of one app on one node. Cheap to share (`Arc`), updated with relaxed atomics.
#[derive(Debug)]
pub struct AppUsage {
    pub tenant_id: Arc<str>,
    pub app_id: Arc<str>,
    live: AtomicI64,
    peak: AtomicI64,
    /// Sum of close times minus open times (ms) of this window's connections.
    connection_ms: AtomicI64,
    published: AtomicU64,
    delivered: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    webhook_events: AtomicU64,
}

impl AppUsage {
    fn new(tenant_id: &str, app_id: &str) -> Self {
        AppUsage {
            tenant_id: tenant_id.into(),
            app_id: app_id.into(),
            live: AtomicI64::new(0),
            peak: AtomicI64::new(0),
            connection_ms: AtomicI64::new(0),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            webhook_events: AtomicU64::new(0),
        }
    }

    /// A connection of this app was accepted at `now_ms`.
    pub fn connection_opened(&self, now_ms: i64) {
        let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(live, Ordering::Relaxed);
        self.connection_ms.fetch_sub(now_ms, Ordering::Relaxed);
    }

    /// A connection counted by [`AppUsage::connection_opened`] ended at `now_ms`.
    pub fn connection_closed(&self, now_ms: i64) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.connection_ms.fetch_add(now_ms, Ordering::Relaxed);
    }

    /// `count` messages carrying `bytes` payload bytes were accepted for publishing.
    pub fn published(&self, count: u64, bytes: u64) {
        self.published.fetch_add(count, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `count` messages carrying `bytes` bytes were handed to subscribers' connections.
    pub fn delivered(&self, count: u64, bytes: u64) {
        self.delivered.fetch_add(count, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `count` webhook events were delivered to a receiver that answered 2xx (each event
    /// counts once per endpoint; test events do not count).
    pub fn webhook_events_delivered(&self, count: u64) {
        self.webhook_events.fetch_add(count, Ordering::Relaxed);
    }

    /// Connections open right now.
    pub fn live_connections(&self) -> i64 {
        self.live.load(Ordering::Relaxed)
    }
}

/// One app's usage over one window `[from_ms, to_ms)`, as reported to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub tenant_id: String,
    pub app_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Most connections open at once during the window (on this node).
    pub peak_connections: u64,
    /// Connected time summed over connections, in milliseconds.
    pub connection_ms: u64,
    pub messages_published: u64,
    pub messages_delivered: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Webhook events delivered (2xx), once per event and endpoint.
    #[serde(default)]
    pub webhook_events: u64,
}

impl UsageRecord {
    /// True when the window saw no activity and no connection was open.
    pub fn is_empty(&self) -> bool {
        self.peak_connections == 0
            && self.connection_ms == 0
            && self.messages_published == 0
            && self.messages_delivered == 0
            && self.bytes_in == 0
            && self.bytes_out == 0
            && self.webhook_events == 0
    }
}

/// Every app's counters on this node.
#[derive(Debug)]
pub struct UsageMeter {
    apps: DashMap<Arc<str>, Arc<AppUsage>>,
    window_start_ms: AtomicI64,
}

impl UsageMeter {
    pub fn new(now_ms: i64) -> Self {
        UsageMeter { apps: DashMap::new(), window_start_ms: AtomicI64::new(now_ms) }
    }

    /// The counters of `app_id`, created on first use. Resolve once per connection, not per
    /// message.
    pub fn app(&self, tenant_id: &str, app_id: &str) -> Arc<AppUsage> {
        if let Some(usage) = self.apps.get(app_id) {
            return usage.clone();
        }
        self.apps.entry(Arc::from(app_id)).or_insert_with(|| Arc::new(AppUsage::new(tenant_id, app_id))).clone()
    }

    /// Takes the counts since the previous drain as one record per app with activity, and
    /// starts a new window at `now_ms`. Idle apps produce no record. Entries stay in the meter
    /// (one per app ever seen on this node) because live connections hold their `Arc`.
    pub fn drain(&self, now_ms: i64) -> Vec<UsageRecord> {
        let from_ms = self.window_start_ms.swap(now_ms, Ordering::AcqRel);
        let mut records = Vec::with_capacity(self.apps.len());
        for entry in self.apps.iter() {
            let u = entry.value();
            let live = u.live.load(Ordering::Relaxed);
            // Connections still open count up to `now`; the next window starts their clock again.
            let connection_ms = u.connection_ms.swap(-live * now_ms, Ordering::Relaxed) + live * now_ms;
            let peak = u.peak.swap(live, Ordering::Relaxed);
            let record = UsageRecord {
                tenant_id: u.tenant_id.to_string(),
                app_id: u.app_id.to_string(),
                from_ms,
                to_ms: now_ms,
                peak_connections: peak.max(0) as u64,
                connection_ms: connection_ms.max(0) as u64,
                messages_published: u.published.swap(0, Ordering::Relaxed),
                messages_delivered: u.delivered.swap(0, Ordering::Relaxed),
                bytes_in: u.bytes_in.swap(0, Ordering::Relaxed),
                bytes_out: u.bytes_out.swap(0, Ordering::Relaxed),
                webhook_events: u.webhook_events.swap(0, Ordering::Relaxed),
            };
            if !record.is_empty() {
                records.push(record);
            }
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrates_connection_time_across_windows() {
        let meter = UsageMeter::new(0);
        let app = meter.app("ten_1", "app_1");
        app.connection_opened(1_000);
        app.connection_opened(2_000);
        app.connection_closed(5_000); // first: 4 s
        let first = meter.drain(10_000); // second still open: 8 s so far
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].connection_ms, 12_000);
        assert_eq!(first[0].peak_connections, 2);
        app.connection_closed(12_000); // second: 2 more seconds in this window
        let second = meter.drain(20_000);
        assert_eq!(second[0].connection_ms, 2_000);
        assert_eq!(second[0].peak_connections, 1, "peak starts at what was open");
        assert!(meter.drain(30_000).is_empty(), "an idle app reports nothing");
    }

    #[test]
    fn counts_messages_and_bytes_once() {
        let meter = UsageMeter::new(0);
        let app = meter.app("ten_1", "app_1");
        app.published(2, 100);
        app.delivered(10, 500);
        app.webhook_events_delivered(3);
        let r = &meter.drain(1_000)[0];
        assert_eq!(r.webhook_events, 3);
        assert_eq!((r.messages_published, r.bytes_in, r.messages_delivered, r.bytes_out), (2, 100, 10, 500));
        assert_eq!((r.from_ms, r.to_ms), (0, 1_000));
        assert!(meter.drain(2_000).is_empty());
    }
}

/// The price of metering on the delivery path, for the record (not a timed assertion):
/// `cargo test --release -p aviary-core usage::cost -- --ignored --nocapture`.
#[cfg(test)]
mod cost {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore = "a measurement, run by hand"]
    fn nanoseconds_per_delivery_counted() {
        let meter = UsageMeter::new(0);
        let app = meter.app("ten_1", "app_1");
        const N: u64 = 20_000_000;
        for threads in [1u64, 2] {
            let started = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let app = app.clone();
                    s.spawn(move || {
                        for _ in 0..N {
                            app.delivered(1, std::hint::black_box(120));
                        }
                    });
                }
            });
            let per_op = started.elapsed().as_nanos() as f64 / (N * threads) as f64;
            println!("{threads} thread(s) counting into one app: {per_op:.2} ns per delivery");
        }
        assert_eq!(meter.drain(1)[0].messages_delivered, 3 * N);
    }
}
