//! Each shard's pub/sub connection, owned by one actor task: subscribe and unsubscribe
//! commands applied in call order, topic messages decoded and delivered once, and reconnects
//! that resubscribe and catch up (see [`super::gap_fill`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};

use super::broker::{Inner, Shard};
use super::codec::{Message, decode_message};
use super::connection::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, MAX_BACKOFF, MIN_BACKOFF, counted, with_timeout};
use super::gap_fill::{MAX_GAP_FILL, catch_up_all, fetch_gap, fill_gap};
use crate::{BrokerError, BrokerEvents, ChannelKey, PresenceAction, Publication, StreamPosition};

/// How often an idle pub/sub connection is checked with `PING`.
const PUBSUB_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Pending subscribe/unsubscribe commands per shard.
pub(super) const PUBSUB_QUEUE: usize = 4_096;
/// Topics per `SUBSCRIBE`/`UNSUBSCRIBE` command when batching.
const TOPICS_PER_COMMAND: usize = 256;

pub(super) enum PubSubCommand {
    Subscribe { topic: String, channel: ChannelKey, done: oneshot::Sender<Result<(), BrokerError>> },
    Unsubscribe { topic: String, done: oneshot::Sender<Result<(), BrokerError>> },
}

impl Inner {
    pub(super) async fn pubsub_command(&self, channel: &ChannelKey, subscribe: bool) -> Result<(), BrokerError> {
        let keys = self.keys(channel);
        let shard = self.shard(&keys);
        let (done, result) = oneshot::channel();
        let command = if subscribe {
            PubSubCommand::Subscribe { topic: keys.topic, channel: channel.clone(), done }
        } else {
            PubSubCommand::Unsubscribe { topic: keys.topic, done }
        };
        let sent = tokio::time::timeout(COMMAND_TIMEOUT, shard.pubsub.send(command)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(counted(BrokerError::Unavailable("pub/sub command queue is full".into())));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT * 2, result).await {
            Ok(Ok(result)) => result,
            // The actor dropped the command: its connection was reset meanwhile.
            Ok(Err(_)) => Err(counted(BrokerError::Unavailable("Redis pub/sub connection was reset".into()))),
            Err(_) => Err(counted(BrokerError::Unavailable("Redis pub/sub did not answer in time".into()))),
        }
    }
}

/// What the pub/sub actor tracks per subscribed topic: the last position it delivered.
pub(super) struct Delivered {
    pub(super) channel: ChannelKey,
    pub(super) last: Option<(Arc<str>, u64)>,
}

/// Owns shard `index`'s pub/sub connection: applies subscribe/unsubscribe commands in order,
/// delivers topic messages to the sink, and reconnects and resubscribes when the connection
/// drops.
pub(super) async fn pubsub_actor(
    inner: Arc<Inner>,
    index: usize,
    client: redis::Client,
    mut commands: mpsc::Receiver<PubSubCommand>,
) {
    let shard = &inner.shards[index];
    let mut delivered: HashMap<String, Delivered> = HashMap::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        // Connect. Commands arriving meanwhile wait for the outcome (at most CONNECT_TIMEOUT),
        // so a node that just started does not refuse its first subscribers.
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub());
        tokio::pin!(connect);
        let mut pending = Vec::new();
        let connected = loop {
            tokio::select! {
                result = &mut connect => break result,
                Some(command) = commands.recv() => {
                    if pending.len() < PUBSUB_QUEUE {
                        pending.push(command);
                    } else {
                        apply_offline(shard, &mut delivered, command);
                    }
                }
            }
        };
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                match failed {
                    Ok(Err(e)) => {
                        tracing::warn!(shard = index, error = %e, "Redis pub/sub connection failed; retrying")
                    }
                    _ => tracing::warn!(shard = index, "Redis pub/sub connection timed out; retrying"),
                }
                for command in pending {
                    apply_offline(shard, &mut delivered, command);
                }
                wait_backoff(shard, &mut delivered, &mut commands, &mut backoff).await;
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();

        // Resubscribe everything wanted, then fill what was published while disconnected.
        let topics: Vec<String> = delivered.keys().cloned().collect();
        if let Err(e) = subscribe_all(&mut sink, &topics).await {
            tracing::warn!(shard = index, error = %e, "Redis resubscribe failed; reconnecting");
            for command in pending {
                apply_offline(shard, &mut delivered, command);
            }
            wait_backoff(shard, &mut delivered, &mut commands, &mut backoff).await;
            continue;
        }
        backoff = MIN_BACKOFF;
        {
            // Leaves may have been missed while disconnected: sweep every topic once more.
            let mut active = shard.presence_topics.lock();
            for topic in &topics {
                *active.entry(topic.clone()).or_default() += 1;
            }
        }
        if !topics.is_empty() {
            tracing::info!(shard = index, topics = topics.len(), "Redis pub/sub resubscribed");
        }
        catch_up_all(&inner, &mut delivered).await;
        if !pending.is_empty() && apply_online(shard, &mut delivered, &mut sink, pending).await.is_err() {
            continue;
        }
        // Redis may have restarted empty: put this node's presence members back (off the actor,
        // so messages keep flowing meanwhile).
        let rejoin = Arc::clone(&inner);
        tokio::spawn(async move { rejoin.rejoin_local_members(index).await });

        let mut ping = tokio::time::interval(PUBSUB_PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => on_message(&inner, shard, &mut delivered, message).await,
                    None => break,
                },
                Some(command) = commands.recv() => {
                    let mut batch = vec![command];
                    while batch.len() < TOPICS_PER_COMMAND {
                        match commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if apply_online(shard, &mut delivered, &mut sink, batch).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!(shard = index, "Redis pub/sub connection lost; reconnecting");
    }
}

async fn wait_backoff(
    shard: &Shard,
    delivered: &mut HashMap<String, Delivered>,
    commands: &mut mpsc::Receiver<PubSubCommand>,
    backoff: &mut Duration,
) {
    let sleep = tokio::time::sleep(*backoff);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => break,
            Some(command) = commands.recv() => apply_offline(shard, delivered, command),
        }
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// While disconnected: subscribes fail (the caller learns Redis is down, and nothing is
/// remembered), unsubscribes succeed (there is nothing to stop on Redis, and the topic will not
/// be resubscribed).
fn apply_offline(shard: &Shard, delivered: &mut HashMap<String, Delivered>, command: PubSubCommand) {
    match command {
        PubSubCommand::Subscribe { done, .. } => {
            let _ = done.send(Err(BrokerError::Unavailable("Redis pub/sub is reconnecting".into())));
        }
        PubSubCommand::Unsubscribe { topic, done } => {
            delivered.remove(&topic);
            shard.topics.lock().remove(&topic);
            shard.presence_topics.lock().remove(&topic);
            let _ = done.send(Ok(()));
        }
    }
}

/// Applies a batch of commands in order, merging runs of the same kind into one Redis command.
/// Returns `Err` when the connection failed (the caller reconnects).
async fn apply_online(
    shard: &Shard,
    delivered: &mut HashMap<String, Delivered>,
    sink: &mut PubSubSink,
    batch: Vec<PubSubCommand>,
) -> Result<(), ()> {
    let mut commands = batch.into_iter().peekable();
    while let Some(first) = commands.next() {
        let subscribing = matches!(first, PubSubCommand::Subscribe { .. });
        let mut run = vec![first];
        while let Some(next) = commands.peek() {
            if matches!(next, PubSubCommand::Subscribe { .. }) != subscribing {
                break;
            }
            run.extend(commands.next());
        }
        if subscribing {
            // A caller that gave up waiting was told "unavailable": do not subscribe behind
            // its back (nobody would unsubscribe).
            run.retain(|command| !matches!(command, PubSubCommand::Subscribe { done, .. } if done.is_closed()));
            if run.is_empty() {
                continue;
            }
            // Wanted before asking Redis, so a message arriving right after the
            // acknowledgement is not dropped.
            let mut topics = Vec::with_capacity(run.len());
            let mut added = Vec::new();
            {
                let mut wanted = shard.topics.lock();
                for command in &run {
                    if let PubSubCommand::Subscribe { topic, channel, .. } = command {
                        wanted.insert(topic.clone(), channel.clone());
                        if !delivered.contains_key(topic) {
                            delivered.insert(topic.clone(), Delivered { channel: channel.clone(), last: None });
                            added.push(topic.clone());
                        }
                        // Members may predate this node's subscription: sweep at least once.
                        *shard.presence_topics.lock().entry(topic.clone()).or_default() += 1;
                        topics.push(topic.clone());
                    }
                }
            }
            let result = with_timeout(sink.subscribe(&topics)).await;
            if result.is_err() {
                // Not acknowledged: forget the new ones, their callers are told to retry.
                // Topics subscribed before stay wanted and are resubscribed on reconnect.
                let mut wanted = shard.topics.lock();
                for topic in &added {
                    wanted.remove(topic);
                    delivered.remove(topic);
                }
            }
            let failed = result.is_err();
            for command in run {
                if let PubSubCommand::Subscribe { done, .. } = command {
                    let _ = done.send(result.clone().map(|_| ()));
                }
            }
            if failed {
                commands.for_each(|rest| apply_offline(shard, delivered, rest));
                return Err(());
            }
        } else {
            // Unwanted at once: nothing more is delivered even before Redis acknowledges.
            let mut topics = Vec::with_capacity(run.len());
            {
                let mut wanted = shard.topics.lock();
                for command in &run {
                    if let PubSubCommand::Unsubscribe { topic, .. } = command {
                        wanted.remove(topic);
                        delivered.remove(topic);
                        shard.presence_topics.lock().remove(topic);
                        topics.push(topic.clone());
                    }
                }
            }
            let result = with_timeout(sink.unsubscribe(&topics)).await;
            for command in run {
                if let PubSubCommand::Unsubscribe { done, .. } = command {
                    // Locally stopped either way; a dropped connection forgets its subscriptions.
                    let _ = done.send(Ok(()));
                }
            }
            if result.is_err() {
                commands.for_each(|rest| apply_offline(shard, delivered, rest));
                return Err(());
            }
        }
    }
    Ok(())
}

async fn subscribe_all(sink: &mut PubSubSink, topics: &[String]) -> Result<(), BrokerError> {
    for chunk in topics.chunks(TOPICS_PER_COMMAND) {
        with_timeout(sink.subscribe(chunk)).await?;
    }
    Ok(())
}

async fn on_message(inner: &Inner, shard: &Shard, delivered: &mut HashMap<String, Delivered>, message: redis::Msg) {
    let topic = message.get_channel_name();
    let Some(entry) = delivered.get(topic) else { return };
    let channel = entry.channel.clone();
    let Some(events) = inner.events.get() else { return };
    match decode_message(message.get_payload_bytes()) {
        Some(Message::Publication(publication)) => {
            if let Some((epoch, last)) = entry.last.clone()
                && *epoch == *publication.epoch
            {
                if publication.offset <= last {
                    return; // already delivered (by a gap fill)
                }
                if publication.offset > last + 1 {
                    let since = StreamPosition { epoch: epoch.to_string(), offset: last };
                    let missing = usize::try_from(publication.offset - last - 1).unwrap_or(MAX_GAP_FILL);
                    if let Some(page) = fetch_gap(inner, &channel, since, missing).await {
                        fill_gap(delivered, topic, events, &channel, page, Some(publication.offset));
                    }
                }
            }
            deliver(delivered, topic, events, &channel, publication);
        }
        Some(Message::Presence(action, member)) => {
            if action != PresenceAction::Leave {
                *shard.presence_topics.lock().entry(topic.to_owned()).or_default() += 1;
            }
            events.on_presence(&channel, action, &member);
        }
        None => tracing::warn!(?channel, "undecodable pub/sub message"),
    }
}

pub(super) fn deliver(
    delivered: &mut HashMap<String, Delivered>,
    topic: &str,
    events: &Arc<dyn BrokerEvents>,
    channel: &ChannelKey,
    publication: Publication,
) {
    if let Some(entry) = delivered.get_mut(topic) {
        entry.last = Some((Arc::clone(&publication.epoch), publication.offset));
        events.on_publication(channel, Arc::new(publication));
    }
}
