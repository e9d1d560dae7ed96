//! Reading a channel's history: the `history` operation, and the reads a subscription's
//! resume replay makes after its admission.

use aviary_broker::{ChannelKey, HistoryPage, StreamPosition};
use aviary_core::Operation;

use super::{Needs, Principal, admit, counted};
use crate::NodeState;
use crate::error::Result;

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
pub async fn replay_page(node: &NodeState, key: &ChannelKey, since: &StreamPosition) -> Result<HistoryPage> {
    Ok(node.broker.history(key, Some(since), MAX_HISTORY_PAGE).await?)
}
