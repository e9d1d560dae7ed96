//! Listing an app's active channels with their subscriber counts, and one channel's count.

use std::collections::BTreeMap;

use super::{Needs, Principal, admit, counted};
use crate::NodeState;
use crate::error::Result;

/// The app's channels whose name starts with `prefix` and their subscriber counts, sorted by
/// name: across the cluster when the node reports to Redis (other nodes' counts lag by up to
/// a couple of seconds), else this node's.
pub async fn list(node: &NodeState, principal: Principal<'_>, prefix: &str) -> Result<Vec<(String, usize)>> {
    counted(
        principal,
        async {
            let app = principal.app(node)?;
            counts(node, &app.app_id, prefix).await
        }
        .await,
    )
}

/// The subscribers of one channel (0 when it is not occupied), counted like [`list`]. Checks
/// 1 to 3 (app, channel name, namespace); reading counts needs no capability, as for [`list`].
pub async fn subscribers(node: &NodeState, principal: Principal<'_>, channel: &str) -> Result<usize> {
    counted(
        principal,
        async {
            let admitted = admit(node, principal, channel, Needs::Nothing, &[])?;
            let counted = counts(node, &admitted.app.app_id, channel).await?;
            Ok(counted.into_iter().find(|(c, _)| c == channel).map_or(0, |(_, n)| n))
        }
        .await,
    )
}

/// Channels of `app_id` starting with `prefix` and their subscribers, sorted by name.
async fn counts(node: &NodeState, app_id: &str, prefix: &str) -> Result<Vec<(String, usize)>> {
    let local = node.hub.channels(app_id, prefix);
    let Some(counts) = node.channel_counts.get() else {
        return Ok(local);
    };
    // Other nodes' reported counts plus this node's live ones.
    let mut sums: BTreeMap<String, usize> = counts
        .others(app_id, prefix)
        .await?
        .into_iter()
        .map(|(channel, n)| (channel, usize::try_from(n).unwrap_or(usize::MAX)))
        .collect();
    for (channel, n) in local {
        *sums.entry(channel).or_default() += n;
    }
    Ok(sums.into_iter().collect())
}
