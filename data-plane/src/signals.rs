//! Node signals: instructions every node of a cluster must carry out on its own connections
//! (today: close a user's connections), sent through the broker like a publication.
//!
//! Signals travel on one reserved stream, [`signals_key`], whose app id is empty (real app ids
//! are never empty, so no app can name it) and which keeps no history. Every node subscribes to
//! it at start ([`subscribe`]), so with the Redis broker a signal reaches every node, and with
//! the memory broker the one node. Delivery is at most once and best effort: a node cut off from
//! the broker when a signal is sent misses it (its connections, cut off too, are the broker's
//! disconnect handling's concern).

use std::sync::{Arc, Weak};
use std::time::Duration;

use aviary_broker::{Broker, ChannelKey, PublishRequest};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::NodeState;
use crate::error::Result;

/// The reserved stream signals travel on.
pub fn signals_key() -> ChannelKey {
    ChannelKey::new("", "aviary.node-signals")
}

/// What every node is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    /// Close every connection of `client_id` in `app_id` (Pusher's `terminate_connections`).
    TerminateUser { app_id: String, client_id: String },
}

/// Sends `signal` to every node, this one included.
pub async fn send(broker: &dyn Broker, signal: &Signal) -> Result<()> {
    let data = Bytes::from(serde_json::to_vec(signal).map_err(|e| crate::Error::Internal(e.to_string()))?);
    let request = PublishRequest {
        data,
        client_id: None,
        event: None,
        exclude: None,
        idempotency_key: None,
        history_size: 0,
        history_ttl_s: 60,
    };
    broker.publish(&signals_key(), request).await?;
    Ok(())
}

/// Carries out a signal's raw bytes on this node (called by the hub as the broker delivers it).
pub fn received(node: &Weak<NodeState>, data: &[u8]) {
    let Some(node) = node.upgrade() else { return };
    match serde_json::from_slice::<Signal>(data) {
        Ok(Signal::TerminateUser { app_id, client_id }) => {
            let closed = crate::ops::connections::close_user(&node, &app_id, &client_id);
            tracing::debug!(app_id, closed, "terminated a user's connections on a signal");
        }
        Err(e) => tracing::warn!(error = %e, "undecodable node signal"),
    }
}

/// Subscribes the node to the signals stream, retrying every second until the broker accepts
/// (the Redis broker keeps the subscription across reconnects from then on).
pub async fn subscribe(broker: Arc<dyn Broker>, shutdown: tokio_util::sync::CancellationToken) {
    let key = signals_key();
    loop {
        match broker.subscribe(&key).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "node signals subscription failed; retrying in 1 s"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
