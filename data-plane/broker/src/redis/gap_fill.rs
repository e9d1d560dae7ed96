//! Filling what a node missed from history: after its pub/sub connection came back, and when a
//! publication arrives with a gap in its offsets. Best effort within [`MAX_GAP_FILL`].

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream;

use super::broker::Inner;
use super::presence::SWEEP_CONCURRENCY;
use super::pubsub::{Delivered, deliver};
use crate::{BrokerEvents, ChannelKey, HistoryPage, StreamPosition};

/// Publications fetched at most to fill a gap after a reconnect.
pub(super) const MAX_GAP_FILL: usize = 10_000;

/// Reads what `channel` published after `since`, at most `limit` (and [`MAX_GAP_FILL`]).
pub(super) async fn fetch_gap(
    inner: &Inner,
    channel: &ChannelKey,
    since: StreamPosition,
    limit: usize,
) -> Option<HistoryPage> {
    match inner.read_history(channel, Some(&since), limit.min(MAX_GAP_FILL)).await {
        Ok(page) => Some(page),
        Err(e) => {
            tracing::warn!(?channel, error = %e, "could not fill a gap from history");
            None
        }
    }
}

/// Delivers a gap read by [`fetch_gap`], in order, skipping what was delivered meanwhile and
/// stopping before `until`. Best effort: where history no longer reaches back or the epoch
/// changed, the hub sees the jump in positions.
pub(super) fn fill_gap(
    delivered: &mut HashMap<String, Delivered>,
    topic: &str,
    events: &Arc<dyn BrokerEvents>,
    channel: &ChannelKey,
    page: HistoryPage,
    until: Option<u64>,
) {
    for publication in page.publications {
        if until.is_some_and(|u| publication.offset >= u) {
            break;
        }
        let Some(entry) = delivered.get(topic) else { return };
        if entry.last.as_ref().is_some_and(|(e, last)| **e == *publication.epoch && publication.offset <= *last) {
            continue;
        }
        deliver(delivered, topic, events, channel, publication);
    }
}

/// After a reconnect: delivers, per channel, what was published while the node was not
/// subscribed. History is read concurrently; each channel's gap is delivered in order.
pub(super) async fn catch_up_all(inner: &Inner, delivered: &mut HashMap<String, Delivered>) {
    let Some(events) = inner.events.get() else { return };
    let gaps: Vec<(String, ChannelKey, StreamPosition)> = delivered
        .iter()
        .filter_map(|(topic, d)| {
            let (epoch, offset) = d.last.as_ref()?;
            Some((topic.clone(), d.channel.clone(), StreamPosition { epoch: epoch.to_string(), offset: *offset }))
        })
        .collect();
    let mut pages = stream::iter(gaps)
        .map(|(topic, channel, since)| async move {
            let page = fetch_gap(inner, &channel, since, MAX_GAP_FILL).await;
            (topic, channel, page)
        })
        .buffer_unordered(SWEEP_CONCURRENCY);
    while let Some((topic, channel, page)) = pages.next().await {
        let Some(page) = page else { continue };
        let since_epoch = delivered.get(&topic).and_then(|d| d.last.as_ref()).map(|(e, _)| Arc::clone(e));
        let new_epoch = since_epoch.is_some_and(|e| *e != *page.position.epoch) && page.position.offset > 0;
        let position = page.position.clone();
        fill_gap(delivered, &topic, events, &channel, page, None);
        if new_epoch {
            // The stream was lost (Redis restarted empty) and the new epoch already has
            // publications: deliver them from its start, so the hub sees the jump now and
            // announces it, instead of at the next live publication, which may never come.
            let start = StreamPosition { epoch: position.epoch, offset: 0 };
            if let Some(page) = fetch_gap(inner, &channel, start, MAX_GAP_FILL).await {
                fill_gap(delivered, &topic, events, &channel, page, None);
            }
        }
    }
}
