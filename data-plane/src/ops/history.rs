//! Reading a channel's history: the `history` operation, and the reads a subscription's
//! resume replay makes after its admission.

use aviary_broker::{ChannelKey, HistoryPage, StreamPosition};
use aviary_core::Operation;

use super::{ClientPrincipal, Needs, Principal, admit, counted};
use crate::NodeState;
use crate::error::Result;
use crate::metrics;

/// Most publications one history read returns, and the page size of a resume replay.
pub const MAX_HISTORY_PAGE: usize = 1000;
/// Publications a history read returns when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// Publications of `channel` after `since` (or the latest ones), oldest first, at most `limit`
/// (default [`DEFAULT_HISTORY_LIMIT`], clamped to 1..=[`MAX_HISTORY_PAGE`]).
pub async fn history(
    node: &NodeState,
    principal: Principal<'_>,
    channel: &str,
    since: Option<&StreamPosition>,
    limit: Option<usize>,
) -> Result<HistoryPage> {
    counted(
        principal,
        async {
            let admitted = admit(node, principal, channel, Needs::Nothing, &[Operation::History])?;
            let limit = limit.unwrap_or(DEFAULT_HISTORY_LIMIT).clamp(1, MAX_HISTORY_PAGE);
            Ok(node.broker.history(&admitted.key, since, limit).await?)
        }
        .await,
    )
}

/// The channel's current position, for a subscription admitted by
/// [`super::subscribe::admit`].
pub async fn position(node: &NodeState, key: &ChannelKey) -> Result<StreamPosition> {
    Ok(node.broker.position(key).await?)
}

/// One page of a resume replay after `since`, for a subscription admitted by
/// [`super::subscribe::admit`].
///
/// Resuming is reading history, so it is limited by the capabilities on every transport
/// (WebSocket `since`, SSE `Last-Event-ID`): a client with the `history` capability on the
/// channel resumes from any position still retained; one without it only over what it could
/// have received live, i.e. publications made after its token was issued. A replay that would reach further back is answered `recovered: false` with
/// nothing replayed, as when history no longer reaches back: the client reloads its state.
pub async fn replay_page(
    node: &NodeState,
    client: &ClientPrincipal,
    key: &ChannelKey,
    since: &StreamPosition,
) -> Result<HistoryPage> {
    let page = node.broker.history(key, Some(since), MAX_HISTORY_PAGE).await?;
    if client.claims.cap.allows(&key.channel, Operation::History) {
        return Ok(page);
    }
    // No leeway: a clock skew between the minting control plane and the broker errs towards
    // `recovered: false`, never towards reading further back.
    let floor = client.claims.issued_at_ms();
    // Timestamps grow with offsets, so the first publication decides for the page.
    if page.publications.first().is_some_and(|p| p.ts < floor) {
        metrics::rejection(&client.tenant_id, &client.app_id, "resume_beyond_capability");
        return Ok(HistoryPage { publications: Vec::new(), position: page.position, recovered: false });
    }
    Ok(page)
}
