//! The webhook ledger: cluster-wide counters whose zero crossings are webhook events, and the
//! durable queue of events waiting for delivery.
//!
//! # Contract
//! - **Counters.** A counter of an app is a channel's occupancy (`share` = 1 when the node has
//!   local subscribers, else 0) or a user's membership of a presence channel (`share` = the
//!   user's connections on the node). [`WebhookLedger::set_shares`] sets this node's shares;
//!   the cluster-wide total is the sum over live nodes. When a total goes from 0 to positive
//!   the ledger appends exactly one *up* event (`channel_occupied`, `member_added`), and from
//!   positive to 0 exactly one *down* event (`channel_vacated`, `member_removed`), in the same
//!   atomic step as the change, whatever the node count and the interleaving.
//! - **Liveness.** A node's shares count while it is alive: every `set_shares` and
//!   [`WebhookLedger::keep_alive`] extend its deadline by the node TTL. [`WebhookLedger::reap`]
//!   (any node may call it) removes the shares of nodes whose deadline passed, appending the
//!   down events their removal causes. `keep_alive` answers `false` when this node's shares
//!   were reaped: it must set them again.
//! - **Queue.** Every event gets an id unique within the app and is appended to the app's
//!   queue in one step with whatever produced it. [`WebhookLedger::read`] hands out events in
//!   append order; an event stays queued until [`WebhookLedger::ack`]. With `from_start`, a
//!   read hands out again the events handed out earlier and not acknowledged (a deliverer that
//!   died, on any node), then continues with new ones.
//! - **Lease.** At most one node at a time holds an app's delivery lease
//!   ([`WebhookLedger::lease`]); a node that stops renewing loses it after its TTL. Only the
//!   holder reads, so per-channel order holds across the cluster.
//! - **Durability.** Redis and SQLite keep the queue across a restart of the
//!   process: every event whose append returned is handed out again until acknowledged.
//!   [`memory::MemoryLedger`] does not.
//! - **Attempts.** [`WebhookLedger::record_attempt`] keeps the last [`RECENT_ATTEMPTS`]
//!   delivery attempts of each endpoint (opaque JSON written by the delivering side), newest
//!   first, whichever node made them; [`WebhookLedger::attempts`] reads them. In Redis they are
//!   one capped list per endpoint that expires [`ATTEMPTS_TTL`] after the last attempt, so a
//!   control plane reading the same Redis sees every node's attempts.

pub mod contract;
pub mod memory;
pub mod redis;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::BrokerError;

/// Attempts kept per endpoint.
pub const RECENT_ATTEMPTS: usize = 50;
/// How long an endpoint's attempts are kept after its last one.
pub const ATTEMPTS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A cluster-wide counter of an app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Nodes with local subscribers on the channel.
    Occupancy { channel: String },
    /// A user's connections in a channel's presence set.
    Member { channel: String, user_id: String },
}

impl Counter {
    /// The field naming the counter in the ledger: `o|<channel>` or `m|<channel>|<user>`
    /// (channel names never contain `|`; a user id may, and comes last).
    pub fn field(&self) -> String {
        match self {
            Counter::Occupancy { channel } => format!("o|{channel}"),
            Counter::Member { channel, user_id } => format!("m|{channel}|{user_id}"),
        }
    }

    /// The inverse of [`Counter::field`].
    pub fn parse(field: &str) -> Option<Counter> {
        let (kind, rest) = field.split_once('|')?;
        match kind {
            "o" => Some(Counter::Occupancy { channel: rest.to_owned() }),
            "m" => {
                let (channel, user_id) = rest.split_once('|')?;
                Some(Counter::Member { channel: channel.to_owned(), user_id: user_id.to_owned() })
            }
            _ => None,
        }
    }

    pub fn channel(&self) -> &str {
        match self {
            Counter::Occupancy { channel } | Counter::Member { channel, .. } => channel,
        }
    }
}

/// One queued event, as the ledger stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedEvent {
    /// Unique within the app's queue; receivers dedupe by it.
    pub id: String,
    /// `channel_occupied`, `member_added`, `client_event`, ...
    pub name: String,
    pub channel: String,
    /// For member events: the user.
    pub user_id: Option<String>,
    /// Milliseconds since the Unix epoch when the event happened.
    pub time_ms: i64,
    /// Event-specific fields as a JSON object (client events, messages); `None` for
    /// transitions.
    pub detail: Option<String>,
}

/// An event to append (the ledger assigns its id and, when `time_ms` is 0, its time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub name: String,
    pub channel: String,
    pub user_id: Option<String>,
    pub time_ms: i64,
    pub detail: Option<String>,
}

/// The event name a counter's zero crossing produces.
pub fn transition_name(counter: &Counter, up: bool) -> &'static str {
    match (counter, up) {
        (Counter::Occupancy { .. }, true) => "channel_occupied",
        (Counter::Occupancy { .. }, false) => "channel_vacated",
        (Counter::Member { .. }, true) => "member_added",
        (Counter::Member { .. }, false) => "member_removed",
    }
}

/// The ledger contract; see the module docs.
#[async_trait]
pub trait WebhookLedger: Send + Sync + 'static {
    /// Sets this node's share of each counter of `app_id`, appending the events of every zero
    /// crossing of a total; atomic per call. Extends this node's liveness.
    async fn set_shares(&self, app_id: &str, shares: &[(Counter, u64)]) -> Result<(), BrokerError>;

    /// Extends this node's liveness for `app_id`; `false` when its shares were reaped (set
    /// them again).
    async fn keep_alive(&self, app_id: &str) -> Result<bool, BrokerError>;

    /// Removes the shares of `app_id`'s nodes whose liveness lapsed, with their down events.
    /// Returns how many nodes were reaped.
    async fn reap(&self, app_id: &str) -> Result<usize, BrokerError>;

    /// Appends events to `app_id`'s queue (in order, atomically).
    async fn append(&self, app_id: &str, events: &[NewEvent]) -> Result<(), BrokerError>;

    /// Takes or renews `app_id`'s delivery lease for `ttl`; `true` while this node holds it.
    async fn lease(&self, app_id: &str, ttl: Duration) -> Result<bool, BrokerError>;

    /// Gives up the lease if this node holds it (a draining node).
    async fn release(&self, app_id: &str) -> Result<(), BrokerError>;

    /// Up to `max` queued events, oldest first. `from_start` re-reads those handed out and not
    /// acknowledged, after the id `after` (`None`: from the first), and returns an empty list
    /// when there are no more of them; otherwise only events never handed out are returned.
    async fn read(
        &self,
        app_id: &str,
        from_start: bool,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<QueuedEvent>, BrokerError>;

    /// Removes delivered (or given up) events from the queue.
    async fn ack(&self, app_id: &str, ids: &[String]) -> Result<(), BrokerError>;

    /// Events queued and not acknowledged (for metrics and tests).
    async fn backlog(&self, app_id: &str) -> Result<u64, BrokerError>;

    /// Records one delivery attempt (JSON) of `endpoint_id`, an endpoint of `app_id`, keeping
    /// the last [`RECENT_ATTEMPTS`].
    async fn record_attempt(&self, app_id: &str, endpoint_id: &str, attempt: &str) -> Result<(), BrokerError>;

    /// The recorded attempts of `endpoint_id`, newest first.
    async fn attempts(&self, app_id: &str, endpoint_id: &str) -> Result<Vec<String>, BrokerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_fields_round_trip_with_any_user_id() {
        for c in [
            Counter::Occupancy { channel: "chat:lobby".into() },
            Counter::Member { channel: "presence-room".into(), user_id: "a|b".into() },
        ] {
            assert_eq!(Counter::parse(&c.field()), Some(c));
        }
        assert_eq!(Counter::parse("x|y"), None);
    }
}
