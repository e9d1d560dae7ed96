//! Metric names and per-connection handles, through the `metrics` facade.
//!
//! The binary installs the exporter (Prometheus); this crate only records. Every series carries
//! `tenant` and `app` labels. Handles are resolved once per connection ([`ConnectionMetrics`])
//! so the delivery path records without building label sets or allocating.

use std::sync::Arc;

use aviary_core::usage::AppUsage;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Open connections (gauge). Labels: tenant, app, transport (`ws` | `sse`).
pub const CONNECTIONS: &str = "aviary_connections";
/// Connections accepted (counter). Labels: tenant, app, transport.
pub const CONNECTIONS_TOTAL: &str = "aviary_connections_total";
/// Active channel subscriptions (gauge). Labels: tenant, app.
pub const SUBSCRIPTIONS: &str = "aviary_subscriptions";
/// Messages accepted for publishing (counter). Labels: tenant, app, source (`client` | `rest` |
/// `pusher`, the Pusher HTTP API).
pub const MESSAGES_IN: &str = "aviary_messages_in_total";
/// Payload bytes accepted for publishing (counter). Labels: tenant, app, source.
pub const BYTES_IN: &str = "aviary_bytes_in_total";
/// Messages written to client connections (counter). Labels: tenant, app.
pub const MESSAGES_OUT: &str = "aviary_messages_out_total";
/// Frame bytes written to client connections (counter). Labels: tenant, app.
pub const BYTES_OUT: &str = "aviary_bytes_out_total";
/// Refused operations and forced disconnects (counter). Labels: tenant, app, reason.
pub const REJECTIONS: &str = "aviary_rejections_total";
/// Seconds from the broker accepting a publication to its frame being written to a client's
/// socket (histogram). Labels: tenant, app. Recorded once per write burst, with the age of the
/// burst's oldest publication (an upper bound for the rest of the burst), so the sample count
/// is the number of bursts, not of messages (that is `aviary_messages_out_total`).
pub const PUBLISH_TO_DELIVER: &str = "aviary_publish_to_deliver_seconds";
/// Authenticated connections that ended (counter). Labels: tenant, app, transport, reason
/// (`client` when the client left, else why the server closed it: [`disconnect_reason`]).
pub const DISCONNECTS: &str = "aviary_disconnects_total";

/// Describes every series this crate records (their Prometheus `# HELP` lines). Call once,
/// after the recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS, "Open WebSocket and SSE connections, per tenant, app and transport.");
    describe_counter!(CONNECTIONS_TOTAL, "Connections authenticated since start, per tenant, app and transport.");
    describe_gauge!(SUBSCRIPTIONS, "Active channel subscriptions, per tenant and app.");
    describe_counter!(MESSAGES_IN, "Messages accepted for publishing, per tenant, app and source (client or rest).");
    describe_counter!(BYTES_IN, Unit::Bytes, "Payload bytes accepted for publishing, per tenant, app and source.");
    describe_counter!(MESSAGES_OUT, "Messages written to client connections (deliveries), per tenant and app.");
    describe_counter!(BYTES_OUT, Unit::Bytes, "Frame bytes written to client connections, per tenant and app.");
    describe_counter!(
        REJECTIONS,
        "Refused operations and connections and forced disconnects, per tenant, app and reason (e.g. \
         quota_exceeded, rate_limited, connection_quota, forbidden)."
    );
    describe_histogram!(
        PUBLISH_TO_DELIVER,
        Unit::Seconds,
        "Seconds from the broker accepting a publication to its frame being written to a client socket, once \
         per write burst (its oldest publication)."
    );
    describe_counter!(
        DISCONNECTS,
        "Authenticated connections that ended, per tenant, app, transport and reason (client, slow_consumer, \
         token_expired, quota_exceeded, revoked, app_unavailable, protocol_error, draining, ...)."
    );
}

/// The `reason` label of a connection that ended with close code `code` (`None`: the client
/// left without one).
pub fn disconnect_reason(code: Option<u16>) -> &'static str {
    use crate::protocol::close;
    match code {
        None | Some(1000) => "client",
        Some(close::GOING_AWAY) => "draining",
        Some(close::WS_PROTOCOL_ERROR | close::INVALID_PAYLOAD | close::TOO_BIG | close::PROTOCOL_ERROR) => {
            "protocol_error"
        }
        Some(close::TRY_AGAIN_LATER) => "try_again_later",
        Some(close::INVALID_TOKEN) => "invalid_token",
        Some(close::TOKEN_EXPIRED) => "token_expired",
        Some(close::FORBIDDEN) => "forbidden",
        Some(close::APP_UNAVAILABLE) => "app_unavailable",
        Some(close::SLOW_CONSUMER) => "slow_consumer",
        Some(close::QUOTA_EXCEEDED) => "quota_exceeded",
        Some(close::REVOKED) => "revoked",
        Some(_) => "other",
    }
}

/// Counts an authenticated connection that ended.
pub fn disconnect(tenant: &str, app: &str, transport: &'static str, reason: &'static str) {
    counter!(DISCONNECTS, "tenant" => tenant.to_owned(), "app" => app.to_owned(), "transport" => transport, "reason" => reason)
        .increment(1);
}

/// Counts a refusal with its reason.
pub fn rejection(tenant: &str, app: &str, reason: &'static str) {
    counter!(REJECTIONS, "tenant" => tenant.to_owned(), "app" => app.to_owned(), "reason" => reason).increment(1);
}

/// Counts a message accepted for publishing.
pub fn message_in(tenant: &str, app: &str, source: &'static str, bytes: usize) {
    let labels = [("tenant", tenant.to_owned()), ("app", app.to_owned()), ("source", source.to_owned())];
    counter!(MESSAGES_IN, &labels).increment(1);
    counter!(BYTES_IN, &labels).increment(bytes as u64);
}

/// Handles for one connection, resolved once it knows its tenant and app. Not `Clone`: dropping
/// it closes the connection's gauge, so share it behind an `Arc`.
pub struct ConnectionMetrics {
    connections: Gauge,
    pub subscriptions: Gauge,
    pub messages_out: Counter,
    pub bytes_out: Counter,
    pub latency: Histogram,
    /// The app's billing counters (connection time, deliveries, bytes out).
    pub usage: Arc<AppUsage>,
}

impl ConnectionMetrics {
    /// Resolves the handles and counts the connection as open (until dropped), for monitoring
    /// and in the app's usage.
    pub fn open(tenant: &str, app: &str, transport: &'static str, usage: Arc<AppUsage>) -> Self {
        let base = [("tenant", tenant.to_owned()), ("app", app.to_owned())];
        let with_transport =
            [("tenant", tenant.to_owned()), ("app", app.to_owned()), ("transport", transport.to_owned())];
        counter!(CONNECTIONS_TOTAL, &with_transport).increment(1);
        let connections = gauge!(CONNECTIONS, &with_transport);
        connections.increment(1.0);
        usage.connection_opened(aviary_core::unix_now_ms());
        ConnectionMetrics {
            connections,
            subscriptions: gauge!(SUBSCRIPTIONS, &base),
            messages_out: counter!(MESSAGES_OUT, &base),
            bytes_out: counter!(BYTES_OUT, &base),
            latency: histogram!(PUBLISH_TO_DELIVER, &base),
            usage,
        }
    }

    /// Records the publications of one written burst: counts and bytes summed, and the
    /// latency of its oldest publication.
    pub fn delivered(&self, burst: &Burst) {
        let Some(oldest_ts) = burst.oldest_ts else { return };
        self.messages_out.increment(burst.count);
        self.bytes_out.increment(burst.bytes);
        self.usage.delivered(burst.count, burst.bytes);
        let age_ms = aviary_core::unix_now_ms().saturating_sub(oldest_ts).max(0);
        self.latency.record(age_ms as f64 / 1000.0);
    }
}

/// Publications written to one connection between two flushes of the socket.
#[derive(Debug, Default)]
pub struct Burst {
    count: u64,
    bytes: u64,
    /// The broker timestamp (Unix ms) of the oldest publication in the burst.
    oldest_ts: Option<i64>,
}

impl Burst {
    /// Adds a publication accepted by the broker at `ts_ms` whose frame is `frame_len` bytes.
    pub fn add(&mut self, frame_len: usize, ts_ms: i64) {
        self.count += 1;
        self.bytes += frame_len as u64;
        self.oldest_ts = Some(self.oldest_ts.map_or(ts_ms, |t| t.min(ts_ms)));
    }
}

impl std::fmt::Debug for ConnectionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionMetrics")
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        self.connections.decrement(1.0);
        self.usage.connection_closed(aviary_core::unix_now_ms());
    }
}
