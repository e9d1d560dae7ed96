//! Presence members this node owns (re-joined after Redis came back) and the sweep that
//! expires members of the channels this node subscribes to.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream;

use super::broker::Inner;
use super::connection::with_timeout;
use super::scripts::{PRESENCE_JOIN, PRESENCE_READ};
use crate::{BrokerError, ChannelKey, PresenceMember};

/// How often each node expires presence members of the channels it subscribes to.
pub const PRESENCE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most members one script call expires, so no single call blocks Redis for long.
pub const SWEEP_BATCH: u32 = 1_000;
/// Sweep scripts (and history reads of a catch-up) in flight at once per shard.
pub(super) const SWEEP_CONCURRENCY: usize = 16;
/// Presence keys outlive their longest member by this much, so sweeps can still announce leaves.
pub(super) const PRESENCE_KEY_SLACK_MS: u64 = 60_000;

pub(super) struct LocalMember {
    pub(super) member: PresenceMember,
    pub(super) ttl_s: u32,
    pub(super) max_members: u32,
    /// Join or last touch plus TTL: a member this node stopped touching is never re-joined.
    pub(super) alive_until: std::time::Instant,
}

impl Inner {
    /// Runs the join script: adds or updates `member`, publishing join/update.
    pub(super) async fn join(
        &self,
        channel: &ChannelKey,
        member: &PresenceMember,
        ttl_s: u32,
        max_members: u32,
    ) -> Result<(), BrokerError> {
        let keys = self.keys(channel);
        let shard = self.shard(&keys);
        let json = serde_json::to_string(member).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let ttl_ms = u64::from(ttl_s.max(1)) * 1_000;
        let mut invocation = PRESENCE_JOIN.prepare_invoke();
        invocation
            .key(&keys.members)
            .key(&keys.expiries)
            .arg(&keys.topic)
            .arg(&member.connection_id)
            .arg(json)
            .arg(ttl_ms)
            .arg(max_members)
            .arg(ttl_ms + PRESENCE_KEY_SLACK_MS)
            .arg(SWEEP_BATCH);
        let mut conn = shard.commands.clone();
        let joined: i64 = with_timeout(invocation.invoke_async(&mut conn)).await?;
        if joined == 1 { Ok(()) } else { Err(BrokerError::PresenceFull) }
    }

    /// Joins again every member this node owns on shard `index`. Idempotent for members Redis
    /// still has (no event); members Redis lost are announced with `join` again.
    pub(super) async fn rejoin_local_members(&self, index: usize) {
        let members: Vec<(ChannelKey, PresenceMember, u32, u32)> = {
            let mut local = self.local_members.lock();
            // Members whose connection stopped heartbeating are gone, not to be revived.
            let now = std::time::Instant::now();
            local.retain(|_, members| {
                members.retain(|_, m| m.alive_until > now);
                !members.is_empty()
            });
            local
                .iter()
                .filter(|(channel, _)| std::ptr::eq(self.shard(&self.keys(channel)), &self.shards[index]))
                .flat_map(|(channel, members)| {
                    members.values().map(|m| (channel.clone(), m.member.clone(), m.ttl_s, m.max_members))
                })
                .collect()
        };
        if members.is_empty() {
            return;
        }
        let count = members.len();
        stream::iter(members)
            .for_each_concurrent(SWEEP_CONCURRENCY, |(channel, member, ttl_s, max_members)| async move {
                if let Err(e) = self.join(&channel, &member, ttl_s, max_members).await {
                    tracing::warn!(?channel, error = %e, "could not re-join a presence member");
                }
            })
            .await;
        tracing::info!(shard = index, members = count, "re-joined local presence members");
    }
}

pub(super) fn alive_until(ttl_s: u32) -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(u64::from(ttl_s.max(1)))
}

/// Expires presence members of this shard's subscribed channels that may have any, every
/// [`PRESENCE_SWEEP_INTERVAL`]; the scripts publish the leave events.
pub(super) async fn presence_sweeper(inner: Arc<Inner>, index: usize) {
    let mut ticker = tokio::time::interval(PRESENCE_SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let shard = &inner.shards[index];
        let candidates: Vec<(String, u64)> =
            shard.presence_topics.lock().iter().map(|(t, g)| (t.clone(), *g)).collect();
        let sweeps: Vec<(String, u64, ChannelKey)> = {
            let topics = shard.topics.lock();
            candidates.into_iter().filter_map(|(t, g)| topics.get(&t).cloned().map(|c| (t, g, c))).collect()
        };
        let inner = &inner;
        stream::iter(sweeps)
            .for_each_concurrent(SWEEP_CONCURRENCY, |(topic, generation, channel)| async move {
                let keys = inner.keys(&channel);
                let mut invocation = PRESENCE_READ.prepare_invoke();
                invocation.key(&keys.members).key(&keys.expiries).arg(&keys.topic).arg(SWEEP_BATCH).arg("0");
                let mut conn = shard.commands.clone();
                match with_timeout(invocation.invoke_async::<i64>(&mut conn)).await {
                    Ok(0) => {
                        let mut active = shard.presence_topics.lock();
                        if active.get(&topic) == Some(&generation) {
                            active.remove(&topic);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(shard = index, ?channel, error = %e, "presence sweep failed"),
                }
            })
            .await;
    }
}
