//! Webhook events raised by operations: client events and published messages (appended to the
//! app's delivery queue), and presence membership (counted per user by the webhook tracker,
//! whose cluster-wide zero crossings become `member_added`/`member_removed`). Channel
//! occupancy needs no call: the hub reports every change of a channel's local subscribers.
//!
//! **For front ends** (the Pusher WebSocket front end, and any protocol to come): call
//! [`client_event`] once for every client event you accept and publish; that is the only call
//! needed for `client_event` webhooks. Subscriptions made through the hub and presence entered
//! through [`super::presence`] are tracked already.

use aviary_broker::ChannelKey;
use aviary_broker::StreamPosition;
use aviary_broker::webhooks::NewEvent;
use aviary_core::webhook::WebhookEvent;

use crate::NodeState;

/// A client event a client sent on a channel, as webhooks report it.
#[derive(Debug, Clone, Copy)]
pub struct ClientEvent<'a> {
    pub app_id: &'a str,
    pub tenant_id: &'a str,
    /// The Aviary channel name (the webhook shows Pusher's name in the `pusher` format).
    pub channel: &'a str,
    /// The event name (`client-typing`).
    pub event: &'a str,
    /// The event's data, any JSON value (the `pusher` format sends it as JSON text).
    pub data: &'a serde_json::value::RawValue,
    /// The sending connection (`socket_id` in Pusher's words).
    pub socket_id: &'a str,
    /// The sender's user id on presence channels.
    pub user_id: Option<&'a str>,
}

/// Queues a `client_event` webhook if an endpoint of the app wants one on this channel. Never
/// fails the client's event: a queue that cannot take it is logged and counted as dropped.
pub async fn client_event(node: &NodeState, event: ClientEvent<'_>) {
    let Some(webhooks) = node.webhooks.get() else { return };
    if !wanted(node, event.app_id, WebhookEvent::ClientEvent, event.channel) {
        return;
    }
    let mut detail = serde_json::Map::new();
    detail.insert("event".into(), event.event.into());
    detail.insert("data".into(), serde_json::from_str(event.data.get()).unwrap_or(serde_json::Value::Null));
    detail.insert("socket_id".into(), event.socket_id.into());
    if let Some(user) = event.user_id {
        detail.insert("user_id".into(), user.into());
    }
    let queued = NewEvent {
        name: "client_event".into(),
        channel: event.channel.to_owned(),
        user_id: None,
        time_ms: 0,
        detail: Some(serde_json::Value::Object(detail).to_string()),
    };
    if let Err(e) = webhooks.append(event.tenant_id, event.app_id, &[queued]).await {
        tracing::warn!(app_id = %event.app_id, error = %e, "client_event webhook not queued");
        crate::webhooks::metrics::dropped(event.tenant_id, event.app_id, 1);
    }
}

/// Queues a `message_published` webhook (opt-in per endpoint) for a publication the broker
/// accepted: without waiting, through the node's bounded queue to the ledger
/// (`webhooks::published`), unless that queue is configured off (then the append is awaited).
pub(crate) async fn published(
    node: &NodeState,
    tenant_id: &str,
    key: &ChannelKey,
    position: &StreamPosition,
    data: &[u8],
    client_id: Option<&str>,
) {
    let Some(webhooks) = node.webhooks.get() else { return };
    if !wanted(node, &key.app_id, WebhookEvent::MessagePublished, &key.channel) {
        return;
    }
    let mut detail = serde_json::Map::new();
    detail.insert("data".into(), serde_json::from_slice(data).unwrap_or(serde_json::Value::Null));
    detail.insert("position".into(), serde_json::json!({ "epoch": position.epoch, "offset": position.offset }));
    if let Some(client) = client_id {
        detail.insert("client_id".into(), client.into());
    }
    let queued = NewEvent {
        name: "message_published".into(),
        channel: key.channel.to_string(),
        user_id: None,
        time_ms: 0,
        detail: Some(serde_json::Value::Object(detail).to_string()),
    };
    if let Some(queue) = &webhooks.published {
        if !queue.offer(tenant_id, &key.app_id, queued) {
            tracing::debug!(app_id = %key.app_id, "message_published webhook shed: the node's queue is full");
        }
    } else if let Err(e) = webhooks.append(tenant_id, &key.app_id, &[queued]).await {
        tracing::warn!(app_id = %key.app_id, error = %e, "message_published webhook not queued");
        crate::webhooks::metrics::dropped(tenant_id, &key.app_id, 1);
    }
}

/// A connection entered a channel's presence as `user_id`.
pub(crate) fn member_entered(node: &NodeState, key: &ChannelKey, user_id: &str, connection_id: &std::sync::Arc<str>) {
    if let Some(webhooks) = node.webhooks.get() {
        webhooks.tracker.member_entered(key, user_id, connection_id);
    }
}

/// A connection left a channel's presence.
pub(crate) fn member_left(node: &NodeState, key: &ChannelKey, connection_id: &str) {
    if let Some(webhooks) = node.webhooks.get() {
        webhooks.tracker.member_left(key, connection_id);
    }
}

fn wanted(node: &NodeState, app_id: &str, event: WebhookEvent, channel: &str) -> bool {
    node.registry.any_webhook_wants(app_id, event)
        && node.registry.webhooks_of(app_id).iter().any(|w| w.wants(event, channel))
}
