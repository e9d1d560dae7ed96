//! Presence: who is on a channel (any principal), and a connection entering, updating,
//! refreshing and leaving it (client connections only: a member is a connection).

use aviary_broker::{ChannelKey, PresenceMember};
use aviary_core::Operation;

use super::{ClientPrincipal, Needs, Principal, admit, counted};
use crate::NodeState;
use crate::error::{Error, Result};

/// Bytes of presence data one channel may hold in all: each member may have an equal share
/// (this divided by the app's `max_presence_members`, and at most `max_message_bytes`), so a
/// full presence set stays within it whatever its members send. 1 KiB per member at the
/// default 1,000 members.
pub const PRESENCE_DATA_BUDGET_BYTES: usize = 1024 * 1024;

/// The largest presence data one member may have on a channel of `app`.
fn member_data_limit(max_members: u32, max_message_bytes: u32) -> usize {
    (PRESENCE_DATA_BUDGET_BYTES / max_members.max(1) as usize).min(max_message_bytes as usize)
}

/// The channel's current members.
pub async fn members(node: &NodeState, principal: Principal<'_>, channel: &str) -> Result<Vec<PresenceMember>> {
    counted(
        principal,
        async {
            let admitted = admit(node, principal, channel, Needs::Presence, &[Operation::Presence])?;
            Ok(node.broker.presence(&admitted.key).await?)
        }
        .await,
    )
}

/// Enters the connection into the channel's presence set, or updates its data if it is
/// already there. Without `data`, the token's `info` claim is shown. Returns the channel's key
/// for the connection to remember (it leaves on close).
pub async fn enter(
    node: &NodeState,
    client: &ClientPrincipal,
    channel: &str,
    data: Option<serde_json::Value>,
) -> Result<ChannelKey> {
    enter_as(node, client, &client.client_id, channel, data).await
}

/// As [`enter`], shown as member `member_id` instead of the connection's client id: a Pusher
/// connection is a different user per presence channel, each vouched for by the channel's
/// authorization signature (`channel_data.user_id`).
pub async fn enter_as(
    node: &NodeState,
    client: &ClientPrincipal,
    member_id: &str,
    channel: &str,
    data: Option<serde_json::Value>,
) -> Result<ChannelKey> {
    let principal = Principal::Client(client);
    counted(
        principal,
        async {
            let admitted = admit(node, principal, channel, Needs::Presence, &[Operation::Presence])?;
            let data = data.or_else(|| client.claims.info.clone());
            if let Some(d) = &data {
                let encoded = serde_json::to_vec(d).unwrap_or_default();
                let quotas = &admitted.app.quotas;
                let limit = member_data_limit(quotas.max_presence_members, quotas.max_message_bytes);
                if encoded.len() > limit {
                    let members = quotas.max_presence_members;
                    return Err(Error::PresenceDataTooLarge { size: encoded.len(), limit, members });
                }
                if aviary_core::json::too_deep(&encoded) {
                    return Err(Error::TooDeep { limit: aviary_core::json::MAX_DEPTH });
                }
            }
            let member = PresenceMember {
                client_id: member_id.to_owned(),
                connection_id: client.connection_id.to_string(),
                data,
            };
            let max_members = admitted.app.quotas.max_presence_members;
            node.broker.presence_join(&admitted.key, member, node.presence_ttl_s(), max_members).await?;
            super::webhooks::member_entered(node, &admitted.key, &client.client_id, &client.connection_id);
            Ok(admitted.key)
        }
        .await,
    )
}

/// Removes the connection from a presence set it entered (`key` as [`enter`] returned it).
/// No checks: leaving is always allowed, even after the app or the token changed.
pub async fn leave(node: &NodeState, connection_id: &str, key: &ChannelKey) -> Result<()> {
    // Counted out of the webhook membership first: a failed engine call still ends the
    // connection's membership here (its engine entry expires with the presence TTL).
    super::webhooks::member_left(node, key, connection_id);
    Ok(node.broker.presence_leave(key, connection_id).await?)
}

/// Extends the TTL of the connection's presence entries (each heartbeat of the connection).
pub async fn touch<'a>(node: &NodeState, connection_id: &str, keys: impl IntoIterator<Item = &'a ChannelKey>) {
    let ids = [connection_id.to_owned()];
    let ttl = node.presence_ttl_s();
    for key in keys {
        if let Err(e) = node.broker.presence_touch(key, &ids, ttl).await {
            tracing::warn!(channel = ?key, error = %e, "presence touch failed");
        }
    }
}
