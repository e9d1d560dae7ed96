//! The shared, thread-safe face of a session: what the hub (to cut a slow consumer), the
//! config-event listener (to close revoked connections) and drain may touch. Closing is a
//! one-shot signal; the first reason wins. A leaf module below the session and the hub, so
//! neither needs the other to name it.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics::ConnectionMetrics;
use crate::outbox::Outbox;
use crate::protocol::CloseReason;

/// Who a connection is, as the config-event listener needs it to apply revocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant_id: String,
    pub app_id: String,
    pub client_id: String,
    pub key_id: String,
    /// When the token was issued, in Unix milliseconds (compared with client revocations).
    pub issued_at: i64,
}

/// The shared, thread-safe face of a session.
#[derive(Debug)]
pub struct SessionHandle {
    pub connection_id: Arc<str>,
    /// Pusher's name for the connection (`<digits>.<digits>`): what a publisher names to be
    /// left out of a publication's live delivery. Every connection has one, whatever its
    /// protocol, so the Pusher HTTP API's `socket_id` exclusion applies to Aviary clients too.
    pub socket_id: Arc<str>,
    /// Set once, by the first [`SessionHandle::close`].
    close_reason: OnceLock<CloseReason>,
    /// Wakes the connection's tasks when `close_reason` is set.
    closing: Notify,
    identity: Mutex<Option<Identity>>,
    metrics: OnceLock<Arc<ConnectionMetrics>>,
    /// What waits to be written to the client; the transport's writer drains it.
    pub outbox: Outbox,
}

/// A fresh socket id of Pusher's `<digits>.<digits>` form, from 92 random bits: unguessable,
/// and unique among a node's connections in practice (exclusion compares within a channel).
fn new_socket_id() -> String {
    let r = uuid::Uuid::new_v4().as_u128();
    let high = (r >> 64) as u64 % 10_000_000_000;
    let low = r as u64 % 10_000_000_000_000;
    format!("{high}.{low}")
}

impl SessionHandle {
    /// A handle whose outbound queue holds up to `queue_capacity` items.
    pub fn new(queue_capacity: usize) -> Arc<Self> {
        Arc::new(SessionHandle {
            connection_id: format!("conn_{}", uuid::Uuid::now_v7().simple()).into(),
            socket_id: new_socket_id().into(),
            close_reason: OnceLock::new(),
            closing: Notify::new(),
            identity: Mutex::new(None),
            metrics: OnceLock::new(),
            outbox: Outbox::new(queue_capacity),
        })
    }

    /// Asks the connection to close with `reason`. Returns false if it was already closing
    /// (the earlier reason stands).
    pub fn close(&self, reason: CloseReason) -> bool {
        let first = self.close_reason.set(reason).is_ok();
        if first {
            self.closing.notify_waiters();
        }
        first
    }

    /// The reason the connection is closing, once it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().cloned()
    }

    /// Completes once the connection starts closing (at once if it already has).
    pub async fn closed(&self) {
        loop {
            // Register before looking, so a close between the look and the wait is not missed.
            let notified = self.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.close_reason.get().is_some() {
                return;
            }
            notified.await;
        }
    }

    pub fn identity(&self) -> Option<Identity> {
        self.identity.lock().clone()
    }

    /// Records who the connection is, once it is authenticated.
    pub fn set_identity(&self, identity: Identity) {
        *self.identity.lock() = Some(identity);
    }

    /// Records the key and issue time (Unix ms) of the token a `refresh` installed, so revocations
    /// apply to the token in force.
    pub fn refreshed(&self, key_id: &str, issued_at: i64) {
        if let Some(identity) = self.identity.lock().as_mut() {
            identity.key_id = key_id.to_owned();
            identity.issued_at = issued_at;
        }
    }

    /// Records the user a Pusher connection signed in as: client revocations and
    /// `terminate_connections` of that user apply to it from now on.
    pub fn signed_in(&self, user_id: &str) {
        if let Some(identity) = self.identity.lock().as_mut() {
            identity.client_id = user_id.to_owned();
        }
    }

    /// Sets the connection's metric handles (once; later calls are ignored).
    pub fn set_metrics(&self, metrics: Arc<ConnectionMetrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The connection's metric handles, once it is authenticated.
    pub fn metrics(&self) -> Option<&Arc<ConnectionMetrics>> {
        self.metrics.get()
    }
}
