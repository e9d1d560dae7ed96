//! Subscribe admission: may this connection subscribe to these channels? The subscription
//! itself (joining the hub's fan-out and replaying missed publications) is the session's, since
//! it feeds the connection's queue; it reads the stream through [`super::history`].

use aviary_broker::ChannelKey;
use aviary_core::Operation;

use super::{ClientPrincipal, Needs, Principal, admit, counted};
use crate::NodeState;
use crate::error::{Error, Result};

/// The connection's current subscriptions, as admission needs to see them.
pub trait Held {
    /// Subscriptions the connection holds.
    fn count(&self) -> usize;
    /// Whether it already subscribes to `channel`.
    fn contains(&self, channel: &str) -> bool;
}

/// Checks one subscription (with presence events when `presence`) for a connection holding
/// `held`; returns the channel's key. Checks 1 to 4, then: not subscribed yet, and within the
/// app's subscriptions per connection.
pub fn admit_one(
    node: &NodeState,
    client: &ClientPrincipal,
    channel: &str,
    presence: bool,
    held: &impl Held,
) -> Result<ChannelKey> {
    let principal = Principal::Client(client);
    counted(principal, check(node, principal, channel, presence, held))
}

/// Checks a whole list at once (an SSE stream subscribes its channels together): the list must
/// fit the subscriptions quota, and each channel must pass [`admit_one`] for a fresh
/// connection.
pub fn admit_all(node: &NodeState, client: &ClientPrincipal, channels: &[String]) -> Result<Vec<ChannelKey>> {
    let principal = Principal::Client(client);
    counted(
        principal,
        (|| {
            let mut keys = Vec::with_capacity(channels.len());
            for channel in channels {
                keys.push(check(node, principal, channel, false, &Nothing)?);
            }
            let app = principal.app(node)?;
            if channels.len() > app.quotas.max_subscriptions_per_connection as usize {
                return Err(Error::QuotaExceeded("subscriptions per connection quota exceeded".into()));
            }
            Ok(keys)
        })(),
    )
}

fn check(
    node: &NodeState,
    principal: Principal<'_>,
    channel: &str,
    presence: bool,
    held: &impl Held,
) -> Result<ChannelKey> {
    let admitted = if presence {
        admit(node, principal, channel, Needs::Presence, &[Operation::Subscribe, Operation::Presence])?
    } else {
        admit(node, principal, channel, Needs::Nothing, &[Operation::Subscribe])?
    };
    if held.contains(channel) {
        return Err(Error::BadRequest(format!("already subscribed to {channel:?}")));
    }
    if held.count() >= admitted.app.quotas.max_subscriptions_per_connection as usize {
        return Err(Error::QuotaExceeded("subscriptions per connection quota exceeded".into()));
    }
    Ok(admitted.key)
}

/// Whether a connection's current token still allows `operation` on a channel it already
/// uses (checked after a `refresh`, which may narrow the capabilities).
pub fn still_allowed(client: &ClientPrincipal, channel: &str, operation: Operation) -> bool {
    client.claims.cap.allows(channel, operation)
}

/// A connection with no subscriptions yet.
struct Nothing;

impl Held for Nothing {
    fn count(&self) -> usize {
        0
    }
    fn contains(&self, _: &str) -> bool {
        false
    }
}
