//! Listing an app's active channels with their subscriber counts.

use std::collections::BTreeMap;

use super::{Principal, counted};
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
            let local = node.hub.channels(&app.app_id, prefix);
            let Some(counts) = node.channel_counts.get() else {
                return Ok(local);
            };
            // Other nodes' reported counts plus this node's live ones.
            let mut sums: BTreeMap<String, usize> = counts
                .others(&app.app_id, prefix)
                .await?
                .into_iter()
                .map(|(channel, n)| (channel, usize::try_from(n).unwrap_or(usize::MAX)))
                .collect();
            for (channel, n) in local {
                *sums.entry(channel).or_default() += n;
            }
            Ok(sums.into_iter().collect())
        }
        .await,
    )
}
