//! Publishing: one message, or a batch checked whole before any of it is published.

use aviary_broker::{ChannelKey, PublishRequest, StreamPosition};
use aviary_core::{AppConfig, Operation};
use bytes::Bytes;
use serde_json::value::RawValue;
use tracing::Instrument;

use super::{Needs, Principal, admit_in, counted};
use crate::NodeState;
use crate::error::{Error, Result};
use crate::metrics;
use crate::protocol::validate_idempotency_key;

/// Most messages one batch may carry.
pub const MAX_BATCH: usize = 100;

/// One message to publish, as every front end decodes it.
#[derive(Debug)]
pub struct Message<'a> {
    pub channel: &'a str,
    /// Any JSON value, stored and delivered verbatim.
    pub data: &'a RawValue,
    pub idempotency_key: Option<String>,
    /// An event name delivered with the message (Pusher's `event`); see [`MAX_EVENT_NAME`].
    pub event: Option<&'a str>,
    /// The socket id of a connection that must not receive it live (Pusher's `socket_id`).
    pub exclude: Option<&'a str>,
}

/// Longest event name, in bytes (Pusher's limit is 200 characters).
pub const MAX_EVENT_NAME: usize = 200;

/// Publishes `message`; returns where it landed (the first result again for a repeated
/// idempotency key).
///
/// Idempotency keys belong to their publisher: a client's keys are scoped to its client id, a
/// backend's to its API key, so nobody can suppress another publisher's message by using its
/// key first. A repeat whose payload differs from the first publication (still in history) is
/// refused with [`Error::IdempotencyConflict`] rather than answered with the earlier position.
pub async fn publish(node: &NodeState, principal: Principal<'_>, message: Message<'_>) -> Result<StreamPosition> {
    // `debug`: disabled (and free) unless traces are exported or asked for in the log.
    let span = tracing::debug_span!(
        "publish",
        tenant_id = principal.tenant_id(),
        app_id = principal.app_id(),
        channel = message.channel,
        source = principal.source(),
        connection_id = principal.connection_id(),
    );
    counted(
        principal,
        async {
            let app = principal.app(node)?;
            let checked = check(&app, principal, message)?;
            take_rate(node, &app, 1).await?;
            send(node, principal, checked).await
        }
        .instrument(span)
        .await,
    )
}

/// Publishes up to [`MAX_BATCH`] messages in order. Every message passes checks 2 to 6 and the
/// rate quota is taken for the whole batch before any is published, so a refused check
/// publishes nothing; an engine failure part-way leaves the earlier ones published (retry with
/// the same idempotency keys). Results are in request order.
pub async fn publish_batch(
    node: &NodeState,
    principal: Principal<'_>,
    messages: Vec<Message<'_>>,
) -> Result<Vec<(ChannelKey, StreamPosition)>> {
    let span = tracing::debug_span!(
        "publish_batch",
        tenant_id = principal.tenant_id(),
        app_id = principal.app_id(),
        messages = messages.len(),
        source = principal.source(),
    );
    counted(
        principal,
        async {
            let app = principal.app(node)?;
            if messages.is_empty() || messages.len() > MAX_BATCH {
                return Err(Error::BadRequest(format!("send between 1 and {MAX_BATCH} messages")));
            }
            let mut checked = Vec::with_capacity(messages.len());
            for m in messages {
                checked.push(check(&app, principal, m)?);
            }
            take_rate(node, &app, u32::try_from(checked.len()).unwrap_or(u32::MAX)).await?;
            let mut results = Vec::with_capacity(checked.len());
            for c in checked {
                let key = c.key.clone();
                results.push((key, send(node, principal, c).await?));
            }
            Ok(results)
        }
        .instrument(span)
        .await,
    )
}

/// A message that passed checks 2 to 6, ready for the broker.
struct Checked {
    key: ChannelKey,
    request: PublishRequest,
}

/// Checks 2 to 6 of one message.
fn check(app: &AppConfig, principal: Principal<'_>, message: Message<'_>) -> Result<Checked> {
    let namespace = admit_in(app, principal, message.channel, Needs::Publish, &[Operation::Publish])?;
    if let Some(k) = &message.idempotency_key {
        validate_idempotency_key(k).map_err(Error::InvalidIdempotencyKey)?;
    }
    if let Some(event) = message.event
        && (event.is_empty() || event.len() > MAX_EVENT_NAME || event.chars().any(char::is_control))
    {
        return Err(Error::BadRequest(format!(
            "event name must be 1 to {MAX_EVENT_NAME} bytes without control characters"
        )));
    }
    let payload = message.data.get().as_bytes();
    if payload.len() > app.quotas.max_message_bytes as usize {
        return Err(Error::PayloadTooLarge { size: payload.len(), limit: app.quotas.max_message_bytes });
    }
    // Stored and passed on verbatim: refuse what recursive parsers downstream cannot read.
    if aviary_core::json::too_deep(payload) {
        return Err(Error::TooDeep { limit: aviary_core::json::MAX_DEPTH });
    }
    Ok(Checked {
        key: ChannelKey::new(&app.app_id, message.channel),
        request: PublishRequest {
            data: Bytes::copy_from_slice(payload),
            client_id: match principal {
                Principal::Client(c) => Some(c.client_id.clone()),
                Principal::ApiKey(_) => None,
            },
            event: message.event.map(Into::into),
            exclude: message.exclude.map(Into::into),
            idempotency_key: message.idempotency_key.map(|k| scoped_idempotency_key(principal, &k)),
            history_size: namespace.history_size,
            history_ttl_s: namespace.history_ttl_s,
        },
    })
}

/// The key the broker deduplicates on (per channel): the publisher's scope, then the key.
/// A client's keys are its own; the backend's are the app's, whichever API key sends them, so a
/// retry after a key rotation is still recognised (found by the chaos runner: scoped per key, a
/// publish whose answer was lost was published again by the retry with the new key). `\u{1f}`
/// cannot occur in a valid key (visible ASCII only), so two scopes never collide.
fn scoped_idempotency_key(principal: Principal<'_>, key: &str) -> String {
    match principal {
        Principal::Client(c) => format!("c:{}\u{1f}{key}", c.client_id),
        Principal::ApiKey(_) => format!("b\u{1f}{key}"),
    }
}

/// Check 7: takes `n` messages from the app's and tenant's rate budgets.
async fn take_rate(node: &NodeState, app: &AppConfig, n: u32) -> Result<()> {
    if node.quotas.try_acquire_messages(app, n).await? {
        Ok(())
    } else {
        Err(Error::RateLimited(app.quotas.max_messages_per_s))
    }
}

/// Hands a checked message to the broker and counts it.
async fn send(node: &NodeState, principal: Principal<'_>, checked: Checked) -> Result<StreamPosition> {
    let size = checked.request.data.len();
    let data = checked.request.data.clone();
    let key = checked.request.idempotency_key.clone();
    let result = node.broker.publish(&checked.key, checked.request).await?;
    // An idempotent retry published nothing new: neither monitored nor billed again.
    if !result.duplicate {
        metrics::message_in(principal.tenant_id(), principal.app_id(), principal.source(), size);
        principal.usage(node).published(1, size as u64);
        let client_id = match principal {
            Principal::Client(c) => Some(&*c.client_id),
            Principal::ApiKey(_) => None,
        };
        super::webhooks::published(node, principal.tenant_id(), &checked.key, &result.position, &data, client_id).await;
    } else if let Some(key) = key {
        // A repeat must carry the same message; one that does not is a bug or an attack, and
        // answering it with the earlier position would hide that its message was dropped.
        let at = &result.position;
        let before = aviary_broker::StreamPosition { epoch: at.epoch.clone(), offset: at.offset.saturating_sub(1) };
        let page = node.broker.history(&checked.key, Some(&before), 1).await?;
        if let Some(first) = page.publications.first().filter(|p| p.offset == at.offset)
            && first.data != data
        {
            let shown = key.rsplit('\u{1f}').next().unwrap_or_default().to_owned();
            return Err(Error::IdempotencyConflict(shown));
        }
    }
    Ok(result.position)
}
