//! The Prometheus `# HELP` text of every series this crate records, on the control plane and
//! (the follower and the usage reporter) on data-plane nodes.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Describes every series this crate records. Call once, after the recorder is installed.
pub fn describe() {
    describe_counter!(
        "aviary_http_requests_total",
        "Control-plane REST requests, per method, route template and status."
    );
    describe_histogram!(
        "aviary_http_request_duration_seconds",
        Unit::Seconds,
        "Control-plane REST request duration, per method and route template."
    );
    describe_counter!("aviary_grpc_requests_total", "Control-plane gRPC requests, per method and status code.");
    describe_histogram!(
        "aviary_grpc_request_duration_seconds",
        Unit::Seconds,
        "Control-plane gRPC request duration, per method."
    );
    describe_counter!(
        "aviary_key_verifications_total",
        "API and admin key checks, per kind and result (cached, verified, refused, known_wrong, throttled, \
         source_limited)."
    );
    describe_counter!("aviary_tokens_minted_total", "Connection tokens minted, per tenant.");
    describe_counter!(
        "aviary_usage_batches_total",
        "Usage batches received from nodes, per result (applied or duplicate)."
    );
    describe_counter!(
        "aviary_usage_messages_published_total",
        "Messages published, as nodes reported for billing, per tenant and app."
    );
    describe_counter!(
        "aviary_usage_messages_delivered_total",
        "Messages delivered, as nodes reported for billing, per tenant and app."
    );
    describe_counter!(
        "aviary_usage_webhook_events_total",
        "Webhook events delivered (2xx), as nodes reported for billing, per tenant and app."
    );
    describe_counter!(
        "aviary_usage_bytes_in_total",
        Unit::Bytes,
        "Bytes published, as nodes reported for billing, per tenant and app."
    );
    describe_counter!(
        "aviary_usage_bytes_out_total",
        Unit::Bytes,
        "Bytes delivered, as nodes reported for billing, per tenant and app."
    );
    describe_counter!(
        "aviary_usage_connection_seconds_total",
        Unit::Seconds,
        "Connection time, as nodes reported for billing, per tenant and app."
    );
    describe_gauge!("aviary_watch_streams", "Config streams (Watch) open to data-plane nodes.");
    describe_gauge!("aviary_config_log_version", "Version of the last change in this control plane's config log.");
    describe_gauge!(
        "aviary_config_version",
        "Config version this node has applied (compare aviary_config_log_version)."
    );
    describe_gauge!(
        "aviary_config_stale",
        "1 while this node's config stream is down (serving its last config), else 0."
    );
    describe_gauge!(
        "aviary_usage_pending_batches",
        "Usage batches this node holds that the control plane has not acknowledged."
    );
}
