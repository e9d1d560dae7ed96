//! The broker contract test suite: one set of behaviours every [`Broker`] implementation must
//! show, run by `tests/contract_memory.rs` and `tests/contract_redis.rs`.
//!
//! Each case is a `pub async fn` taking a fresh broker (each registers its own event sink).
//! Cases use unique app ids, so they never interfere even when brokers share a backing store.
//! [`broker_contract_tests!`](crate::broker_contract_tests) expands to one `#[tokio::test]`
//! per case, named after the behaviour. Events are awaited with a timeout, never slept for;
//! the only waiting on the clock is where expiry itself is under test (TTLs of 1 to 3 s).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{
    Broker, BrokerError, BrokerEvents, ChannelKey, PresenceAction, PresenceMember, Publication, PublishRequest,
    StreamPosition,
};

/// How long a case waits for an event or a state before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Expands to one `#[tokio::test]` per contract case. `$make` is an async fn (or closure
/// returning a future) producing a fresh broker; `$make2` (optional) produces a second node
/// sharing the first one's backing store, enabling the cross-node cases.
#[macro_export]
macro_rules! broker_contract_tests {
    ($make:expr) => {
        $crate::broker_contract_tests!(@cases $make;
            offsets_are_gap_free_and_ordered_under_concurrent_publishers,
            history_returns_publications_since_a_position_up_to_a_limit,
            resume_from_another_epoch_is_not_recovered,
            zero_history_size_keeps_nothing_but_offsets_advance,
            expired_stream_starts_a_new_epoch,
            idempotency_key_returns_the_earlier_position_and_fans_out_once,
            events_reach_only_subscribed_channels_in_order,
            unsubscribe_stops_events,
            subscribe_then_read_misses_nothing_published_concurrently,
            position_is_stable_until_the_stream_is_lost,
            presence_join_update_leave_fan_out_events,
            presence_refuses_members_beyond_max,
            presence_member_expires_with_a_leave_event_without_any_call,
            touched_presence_members_stay_while_untouched_ones_expire,
            apps_with_the_same_channel_name_are_isolated,
            event_names_and_exclusions_travel_with_publications,
        );
    };
    (@cases $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::contract::$name(($make)().await).await;
            }
        )+
    };
}

/// What a broker handed to the node's sink, recorded for assertions.
#[derive(Debug, Clone)]
pub enum Event {
    Publication(ChannelKey, Arc<Publication>),
    Presence(ChannelKey, PresenceAction, PresenceMember),
}

/// A [`BrokerEvents`] sink that forwards everything to an [`Events`] receiver. Unbounded, as
/// befits a test sink that must never block the broker.
pub struct Recorder {
    tx: mpsc::UnboundedSender<Event>,
}

/// The receiving end of a [`Recorder`].
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

/// A recorder to register with [`Broker::set_events`] and the events it receives.
pub fn recorder() -> (Arc<Recorder>, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Recorder { tx }), Events { rx })
}

impl BrokerEvents for Recorder {
    fn on_publication(&self, channel: &ChannelKey, publication: Arc<Publication>) {
        let _ = self.tx.send(Event::Publication(channel.clone(), publication));
    }

    fn on_presence(&self, channel: &ChannelKey, action: PresenceAction, member: &PresenceMember) {
        let _ = self.tx.send(Event::Presence(channel.clone(), action, member.clone()));
    }
}

impl Events {
    /// The next event, failing the test after [`EVENT_TIMEOUT`].
    pub async fn next(&mut self) -> Event {
        match tokio::time::timeout(EVENT_TIMEOUT, self.rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("event sink dropped"),
            Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
        }
    }

    /// The next event, which must be a publication; returns its channel and publication.
    pub async fn next_publication(&mut self) -> (ChannelKey, Arc<Publication>) {
        match self.next().await {
            Event::Publication(channel, publication) => (channel, publication),
            other => panic!("expected a publication, got {other:?}"),
        }
    }

    /// The next event, which must be a presence event.
    pub async fn next_presence(&mut self) -> (ChannelKey, PresenceAction, PresenceMember) {
        match self.next().await {
            Event::Presence(channel, action, member) => (channel, action, member),
            other => panic!("expected a presence event, got {other:?}"),
        }
    }

    /// Asserts that no event arrived (or is still on its way) before a marker published now on
    /// `channel`, which this node must be subscribed to. Events of a channel arrive in order,
    /// so anything delivered for it before this call comes before the marker; a look at the
    /// queue alone would miss an event still in flight.
    pub async fn assert_none_before_marker<B: Broker + ?Sized>(&mut self, broker: &B, channel: &ChannelKey) {
        let marker = Bytes::from_static(b"\"end-of-case marker\"");
        broker.publish(channel, request("\"end-of-case marker\"")).await.expect("publish the marker");
        match self.next().await {
            Event::Publication(c, p) if &c == channel && p.data == marker => {}
            other => panic!("unexpected event before the marker: {other:?}"),
        }
    }
}

/// A channel in a fresh, unique app, so cases never share state.
pub fn unique_channel(name: &str) -> ChannelKey {
    ChannelKey::new(&format!("app-{}", uuid::Uuid::new_v4().simple()), name)
}

/// A publish request with generous history.
pub fn request(data: &str) -> PublishRequest {
    PublishRequest {
        data: Bytes::from(data.to_owned()),
        client_id: None,
        event: None,
        exclude: None,
        idempotency_key: None,
        history_size: 100,
        history_ttl_s: 300,
    }
}

fn member(connection_id: &str, data: serde_json::Value) -> PresenceMember {
    PresenceMember {
        client_id: format!("client-{connection_id}"),
        connection_id: connection_id.to_owned(),
        data: Some(data),
    }
}

fn offsets(publications: &[Publication]) -> Vec<u64> {
    publications.iter().map(|p| p.offset).collect()
}

/// Polls `check` every 100 ms until it returns `Some`, failing after [`EVENT_TIMEOUT`]. Only
/// for waiting on expiry, where there is no event to await.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Many tasks publishing at once get offsets 1..=n, each exactly once; the node receives them
/// in offset order and history holds them in order.
pub async fn offsets_are_gap_free_and_ordered_under_concurrent_publishers<B: Broker>(broker: B) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 40;
    let broker = Arc::new(broker);
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let channel = unique_channel("concurrent");
    broker.subscribe(&channel).await.expect("subscribe");

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (broker, channel) = (Arc::clone(&broker), channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..PER_TASK {
                let mut req = request(&format!("{{\"task\":{task},\"i\":{i}}}"));
                req.history_size = 1_000;
                positions.push(broker.publish(&channel, req).await.expect("publish").position);
            }
            positions
        }));
    }
    let mut seen = HashSet::new();
    let mut epochs = HashSet::new();
    for task in tasks {
        for position in task.await.expect("publisher task") {
            assert!(seen.insert(position.offset), "offset {} assigned twice", position.offset);
            epochs.insert(position.epoch);
        }
    }
    let total = (TASKS * PER_TASK) as u64;
    assert_eq!(seen, (1..=total).collect::<HashSet<_>>(), "offsets must be exactly 1..={total}");
    assert_eq!(epochs.len(), 1, "one epoch for one stream");

    for expected in 1..=total {
        let (got_channel, publication) = events.next_publication().await;
        assert_eq!(got_channel, channel);
        assert_eq!(publication.offset, expected, "events must arrive in offset order");
    }
    let page = broker.history(&channel, None, 1_000).await.expect("history");
    assert_eq!(offsets(&page.publications), (1..=total).collect::<Vec<_>>());
    assert_eq!(page.position.offset, total);
}

/// History with and without `since`, capped by `history_size` and `limit`; data and client id
/// round-trip; `recovered` is false once history no longer reaches back to `since`.
pub async fn history_returns_publications_since_a_position_up_to_a_limit<B: Broker>(broker: B) {
    let channel = unique_channel("history");
    let mut epoch = String::new();
    for i in 1..=10 {
        let mut req = request(&format!("{{\"n\":{i}}}"));
        req.history_size = 5;
        req.client_id = Some("alice".into());
        let result = broker.publish(&channel, req).await.expect("publish");
        assert_eq!(result.position.offset, i);
        assert!(!result.duplicate);
        epoch = result.position.epoch;
    }
    let at = |offset| StreamPosition { epoch: epoch.clone(), offset };

    let latest = broker.history(&channel, None, 3).await.expect("history");
    assert_eq!(offsets(&latest.publications), vec![8, 9, 10]);
    assert!(latest.recovered);
    assert_eq!(latest.position, at(10));
    let last = &latest.publications[2];
    assert_eq!(last.data, Bytes::from_static(b"{\"n\":10}"));
    assert_eq!(last.client_id.as_deref(), Some("alice"));
    assert_eq!(&*last.epoch, epoch.as_str());
    assert!(last.ts > 0);

    let all = broker.history(&channel, None, 100).await.expect("history");
    assert_eq!(offsets(&all.publications), vec![6, 7, 8, 9, 10], "history is capped at history_size");

    let since5 = broker.history(&channel, Some(&at(5)), 100).await.expect("history");
    assert_eq!(offsets(&since5.publications), vec![6, 7, 8, 9, 10]);
    assert!(since5.recovered, "history still reaches back to offset 6");

    let limited = broker.history(&channel, Some(&at(6)), 2).await.expect("history");
    assert_eq!(offsets(&limited.publications), vec![7, 8]);
    assert!(limited.recovered, "a limit is paging, not a gap");

    let too_old = broker.history(&channel, Some(&at(2)), 100).await.expect("history");
    assert!(!too_old.recovered, "offsets 3..=5 are gone from history");

    let current = broker.history(&channel, Some(&at(10)), 100).await.expect("history");
    assert!(current.publications.is_empty());
    assert!(current.recovered, "nothing was missed");
}

/// A client resuming with an epoch the stream does not have is told `recovered: false`.
pub async fn resume_from_another_epoch_is_not_recovered<B: Broker>(broker: B) {
    let channel = unique_channel("epochs");
    for _ in 0..3 {
        broker.publish(&channel, request("1")).await.expect("publish");
    }
    let stale = StreamPosition { epoch: "not-this-epoch".into(), offset: 1 };
    let page = broker.history(&channel, Some(&stale), 100).await.expect("history");
    assert!(!page.recovered);
    assert_eq!(page.position.offset, 3);
    assert_ne!(page.position.epoch, stale.epoch);
}

/// With `history_size` 0 nothing is kept, yet offsets advance and resuming from the current
/// position is still recovered.
pub async fn zero_history_size_keeps_nothing_but_offsets_advance<B: Broker>(broker: B) {
    let channel = unique_channel("no-history");
    let mut position = None;
    for i in 1..=3 {
        let mut req = request("{}");
        req.history_size = 0;
        let result = broker.publish(&channel, req).await.expect("publish");
        assert_eq!(result.position.offset, i);
        position = Some(result.position);
    }
    let position = position.expect("published");
    let page = broker.history(&channel, None, 100).await.expect("history");
    assert!(page.publications.is_empty());
    assert_eq!(page.position, position);
    let from_start = StreamPosition { epoch: position.epoch.clone(), offset: 0 };
    assert!(!broker.history(&channel, Some(&from_start), 100).await.expect("history").recovered);
    assert!(broker.history(&channel, Some(&position), 100).await.expect("history").recovered);
}

/// When the stream's TTL passes after its last publication, the stream is lost: a new epoch,
/// offsets restart, and resuming from the old epoch is not recovered.
pub async fn expired_stream_starts_a_new_epoch<B: Broker>(broker: B) {
    let channel = unique_channel("ttl");
    let mut req = request("{}");
    req.history_ttl_s = 1;
    let old = broker.publish(&channel, req.clone()).await.expect("publish").position;
    let new_epoch = eventually("the stream to expire", || async {
        let position = broker.position(&channel).await.expect("position");
        (position.epoch != old.epoch).then_some(position)
    })
    .await;
    assert_eq!(new_epoch.offset, 0, "a new stream starts empty");
    let page = broker.history(&channel, Some(&old), 100).await.expect("history");
    assert!(!page.recovered, "the old stream is gone");
    let next = broker.publish(&channel, req).await.expect("publish").position;
    assert_eq!(next, StreamPosition { epoch: new_epoch.epoch, offset: 1 });
}

/// A repeated idempotency key returns the earlier position, publishes nothing and fans out
/// nothing; the next publication continues right after.
pub async fn idempotency_key_returns_the_earlier_position_and_fans_out_once<B: Broker>(broker: B) {
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let channel = unique_channel("idempotent");
    broker.subscribe(&channel).await.expect("subscribe");

    let mut req = request("\"first\"");
    req.idempotency_key = Some("order-42".into());
    let first = broker.publish(&channel, req.clone()).await.expect("publish");
    assert!(!first.duplicate);
    req.data = Bytes::from_static(b"\"retry\"");
    let again = broker.publish(&channel, req).await.expect("publish");
    assert!(again.duplicate);
    assert_eq!(again.position, first.position);

    let next = broker.publish(&channel, request("\"next\"")).await.expect("publish");
    assert_eq!(next.position.offset, first.position.offset + 1);

    let (_, p1) = events.next_publication().await;
    assert_eq!((p1.offset, p1.data.clone()), (1, Bytes::from_static(b"\"first\"")));
    let (_, p2) = events.next_publication().await;
    assert_eq!(p2.offset, 2, "the duplicate must not be fanned out");
    let page = broker.history(&channel, None, 100).await.expect("history");
    assert_eq!(offsets(&page.publications), vec![1, 2]);
}

/// A node receives events only for channels it subscribed to, in offset order, with the
/// channel they belong to; publishing works on any channel.
pub async fn events_reach_only_subscribed_channels_in_order<B: Broker>(broker: B) {
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let watched = unique_channel("watched");
    let other = ChannelKey::new(&watched.app_id, "other");
    broker.subscribe(&watched).await.expect("subscribe");
    broker.subscribe(&watched).await.expect("subscribe is idempotent");

    for i in 1..=5u64 {
        broker.publish(&other, request("\"elsewhere\"")).await.expect("publish on an unsubscribed channel");
        let result = broker.publish(&watched, request(&i.to_string())).await.expect("publish");
        assert_eq!(result.position.offset, i);
    }
    for i in 1..=5u64 {
        let (channel, publication) = events.next_publication().await;
        assert_eq!(channel, watched, "no events for a channel this node did not subscribe to");
        assert_eq!(publication.offset, i);
        assert_eq!(publication.data, Bytes::from(i.to_string()));
    }
    events.assert_none_before_marker(&broker, &watched).await;
}

/// After `unsubscribe`, a node gets nothing for the channel; after subscribing again it gets
/// only what is published from then on.
pub async fn unsubscribe_stops_events<B: Broker>(broker: B) {
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let channel = unique_channel("unsubscribed");
    broker.subscribe(&channel).await.expect("subscribe");
    broker.publish(&channel, request("1")).await.expect("publish");
    assert_eq!(events.next_publication().await.1.offset, 1);

    broker.unsubscribe(&channel).await.expect("unsubscribe");
    broker.publish(&channel, request("2")).await.expect("publish");
    broker.presence_join(&channel, member("c1", serde_json::json!({})), 60, 10).await.expect("join while unsubscribed");

    broker.subscribe(&channel).await.expect("subscribe again");
    broker.publish(&channel, request("3")).await.expect("publish");
    let (_, publication) = events.next_publication().await;
    assert_eq!(publication.offset, 3, "offset 2 and the join happened while unsubscribed");
    events.assert_none_before_marker(&broker, &channel).await;
}

/// The hub's join sequence, under load: subscribe, then read the position; every publication
/// after that position reaches the node, in order, even while publishers never pause.
/// (Publications at or before it may arrive too; the hub drops those.)
pub async fn subscribe_then_read_misses_nothing_published_concurrently<B: Broker>(broker: B) {
    let broker = Arc::new(broker);
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let channel = unique_channel("racing");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (broker, channel, stop) = (Arc::clone(&broker), channel.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                last = broker.publish(&channel, request("{}")).await.expect("publish").position.offset;
                tokio::task::yield_now().await;
            }
            last
        })
    };
    // Join mid-stream: once some publications exist and more are on their way.
    eventually("publishing to start", || async {
        (broker.position(&channel).await.expect("position").offset >= 20).then_some(())
    })
    .await;
    broker.subscribe(&channel).await.expect("subscribe");
    let joined_at = broker.position(&channel).await.expect("position").offset;
    eventually("more publications after joining", || async {
        (broker.position(&channel).await.expect("position").offset >= joined_at + 100).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = publisher.await.expect("publisher");

    let mut expected = joined_at + 1;
    while expected <= last {
        let (_, publication) = events.next_publication().await;
        if publication.offset <= joined_at {
            continue;
        }
        assert_eq!(publication.offset, expected, "every publication after the read position, in order");
        expected += 1;
    }
}

/// `position` creates the stream on first use and keeps returning the same epoch.
pub async fn position_is_stable_until_the_stream_is_lost<B: Broker>(broker: B) {
    let channel = unique_channel("position");
    let first = broker.position(&channel).await.expect("position");
    assert_eq!(first.offset, 0);
    assert!(!first.epoch.is_empty());
    assert_eq!(broker.position(&channel).await.expect("position"), first);
    let published = broker.publish(&channel, request("{}")).await.expect("publish").position;
    assert_eq!(published, StreamPosition { epoch: first.epoch.clone(), offset: 1 });
    let page = broker.history(&channel, Some(&first), 100).await.expect("history");
    assert!(page.recovered);
    assert_eq!(offsets(&page.publications), vec![1]);
}

/// Join, update (only when the data changes) and leave are fanned out; `presence` lists the
/// current members; leaving twice announces once.
pub async fn presence_join_update_leave_fan_out_events<B: Broker>(broker: B) {
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let channel = unique_channel("presence");
    broker.subscribe(&channel).await.expect("subscribe");

    let alice = member("c1", serde_json::json!({"name": "alice"}));
    broker.presence_join(&channel, alice.clone(), 60, 10).await.expect("join");
    assert_eq!(events.next_presence().await, (channel.clone(), PresenceAction::Join, alice.clone()));

    // Same data again: a refresh, not an update.
    broker.presence_join(&channel, alice.clone(), 60, 10).await.expect("rejoin");
    let renamed = member("c1", serde_json::json!({"name": "alice2"}));
    broker.presence_join(&channel, renamed.clone(), 60, 10).await.expect("update");
    assert_eq!(events.next_presence().await, (channel.clone(), PresenceAction::Update, renamed.clone()));

    // JSON null data is no data, in every engine.
    let mut silent = member("c3", serde_json::Value::Null);
    broker.presence_join(&channel, silent.clone(), 60, 10).await.expect("join");
    silent.data = None;
    assert_eq!(events.next_presence().await, (channel.clone(), PresenceAction::Join, silent.clone()));
    broker.presence_leave(&channel, "c3").await.expect("leave");
    assert_eq!(events.next_presence().await, (channel.clone(), PresenceAction::Leave, silent));

    let bob = member("c2", serde_json::json!({"name": "bob"}));
    broker.presence_join(&channel, bob.clone(), 60, 10).await.expect("join");
    assert_eq!(events.next_presence().await.1, PresenceAction::Join);

    let mut members = broker.presence(&channel).await.expect("presence");
    members.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
    assert_eq!(members, vec![renamed.clone(), bob.clone()]);

    broker.presence_leave(&channel, "c1").await.expect("leave");
    assert_eq!(events.next_presence().await, (channel.clone(), PresenceAction::Leave, renamed));
    broker.presence_leave(&channel, "c1").await.expect("leave again");
    broker.presence_leave(&channel, "never-joined").await.expect("leave unknown");
    broker.presence_leave(&channel, "c2").await.expect("leave");
    assert_eq!(events.next_presence().await, (channel.clone(), PresenceAction::Leave, bob));
    events.assert_none_before_marker(&broker, &channel).await;
    assert!(broker.presence(&channel).await.expect("presence").is_empty());
}

/// A new member beyond `max_members` is refused; existing members may still update.
pub async fn presence_refuses_members_beyond_max<B: Broker>(broker: B) {
    let channel = unique_channel("full");
    for id in ["a", "b"] {
        broker.presence_join(&channel, member(id, serde_json::json!(1)), 60, 2).await.expect("join");
    }
    let refused = broker.presence_join(&channel, member("c", serde_json::json!(1)), 60, 2).await;
    assert_eq!(refused, Err(BrokerError::PresenceFull));
    broker.presence_join(&channel, member("a", serde_json::json!(2)), 60, 2).await.expect("update when full");
    assert_eq!(broker.presence(&channel).await.expect("presence").len(), 2);
    broker.presence_leave(&channel, "b").await.expect("leave");
    broker.presence_join(&channel, member("c", serde_json::json!(1)), 60, 2).await.expect("join after a leave");
}

/// A member nobody touches expires after its TTL with a `leave` event, with no further call
/// on the broker (the engine's own sweep notices).
pub async fn presence_member_expires_with_a_leave_event_without_any_call<B: Broker>(broker: B) {
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let channel = unique_channel("expiring");
    broker.subscribe(&channel).await.expect("subscribe");
    let ghost = member("ghost", serde_json::json!({"status": "away"}));
    broker.presence_join(&channel, ghost.clone(), 1, 10).await.expect("join");
    assert_eq!(events.next_presence().await.1, PresenceAction::Join);
    assert_eq!(events.next_presence().await, (channel.clone(), PresenceAction::Leave, ghost));
    assert!(broker.presence(&channel).await.expect("presence").is_empty());
}

/// Members refreshed by `presence_touch` stay (no leave, no flapping) while an untouched one
/// expires with a `leave` event.
pub async fn touched_presence_members_stay_while_untouched_ones_expire<B: Broker>(broker: B) {
    let broker = Arc::new(broker);
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let channel = unique_channel("touched");
    broker.subscribe(&channel).await.expect("subscribe");
    let live = member("live", serde_json::json!("here"));
    let gone = member("gone", serde_json::json!("away"));
    broker.presence_join(&channel, live.clone(), 3, 10).await.expect("join");
    broker.presence_join(&channel, gone.clone(), 1, 10).await.expect("join");
    assert_eq!(events.next_presence().await.1, PresenceAction::Join);
    assert_eq!(events.next_presence().await.1, PresenceAction::Join);

    // The node heartbeat: touch the live member well within its TTL.
    let heartbeat = {
        let (broker, channel) = (Arc::clone(&broker), channel.clone());
        tokio::spawn(async move {
            loop {
                broker.presence_touch(&channel, &["live".to_owned()], 3).await.expect("touch");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    assert_eq!(events.next_presence().await, (channel.clone(), PresenceAction::Leave, gone));
    // Outlive the live member's original 3 s TTL several times over: it must stay throughout.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(broker.presence(&channel).await.expect("presence"), vec![live.clone()]);
    }
    // No leave and join of the live member meanwhile (checked while it is still touched, as
    // it will expire once the heartbeat stops).
    events.assert_none_before_marker(&*broker, &channel).await;
    heartbeat.abort();
}

/// Two apps with the same channel name have separate streams, history, presence and events.
pub async fn apps_with_the_same_channel_name_are_isolated<B: Broker>(broker: B) {
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let ours = unique_channel("room");
    let theirs = unique_channel("room");
    assert_eq!(ours.channel, theirs.channel);
    broker.subscribe(&ours).await.expect("subscribe");

    broker.publish(&theirs, request("\"theirs\"")).await.expect("publish");
    broker.publish(&theirs, request("\"theirs\"")).await.expect("publish");
    broker.presence_join(&theirs, member("t", serde_json::json!(1)), 60, 10).await.expect("join");
    let result = broker.publish(&ours, request("\"ours\"")).await.expect("publish");
    assert_eq!(result.position.offset, 1, "offsets are per app");

    let (channel, publication) = events.next_publication().await;
    assert_eq!((channel, publication.data.clone()), (ours.clone(), Bytes::from_static(b"\"ours\"")));
    let page = broker.history(&ours, None, 100).await.expect("history");
    assert_eq!(offsets(&page.publications), vec![1]);
    assert!(broker.presence(&ours).await.expect("presence").is_empty());
    assert_eq!(broker.presence(&theirs).await.expect("presence").len(), 1);
    events.assert_none_before_marker(&broker, &ours).await;
}

/// Two nodes sharing one backing store see each other's publications (in order) and presence.
/// Not part of [`broker_contract_tests!`](crate::broker_contract_tests): only shared engines
/// have a second node.
pub async fn nodes_see_each_others_publications_and_presence<B: Broker>(node1: B, node2: B) {
    let (sink1, mut events1) = recorder();
    let (sink2, mut events2) = recorder();
    node1.set_events(sink1);
    node2.set_events(sink2);
    let channel = unique_channel("shared");
    node1.subscribe(&channel).await.expect("subscribe");
    node2.subscribe(&channel).await.expect("subscribe");

    for i in 1..=10u64 {
        let node = if i % 2 == 0 { &node1 } else { &node2 };
        assert_eq!(node.publish(&channel, request(&i.to_string())).await.expect("publish").position.offset, i);
    }
    for events in [&mut events1, &mut events2] {
        for i in 1..=10u64 {
            let (_, publication) = events.next_publication().await;
            assert_eq!(publication.offset, i);
            assert_eq!(publication.data, Bytes::from(i.to_string()));
        }
    }
    let alice = member("a", serde_json::json!({"at": "node2"}));
    node2.presence_join(&channel, alice.clone(), 30, 10).await.expect("join");
    assert_eq!(events1.next_presence().await, (channel.clone(), PresenceAction::Join, alice.clone()));
    assert_eq!(events2.next_presence().await, (channel.clone(), PresenceAction::Join, alice.clone()));
    assert_eq!(node1.presence(&channel).await.expect("presence"), vec![alice.clone()]);
    let page = node1.history(&channel, None, 100).await.expect("history");
    assert_eq!(offsets(&page.publications), (1..=10).collect::<Vec<_>>());
    node1.presence_leave(&channel, "a").await.expect("leave");
    assert_eq!(events2.next_presence().await.1, PresenceAction::Leave);
}

/// A publication's event name and excluded socket id reach the node's sink and history as
/// published, with any bytes in them; publications without them keep `None`.
pub async fn event_names_and_exclusions_travel_with_publications<B: Broker>(broker: B) {
    let (sink, mut events) = recorder();
    broker.set_events(sink);
    let channel = unique_channel("events");
    broker.subscribe(&channel).await.expect("subscribe");
    let mut named = request("{\"a\":1}");
    named.event = Some("order|shipped,é".into());
    named.exclude = Some("123.456".into());
    named.client_id = Some("bob|1".into());
    broker.publish(&channel, named).await.expect("publish");
    let mut only_event = request("\"x|y\"");
    only_event.event = Some("e".into());
    broker.publish(&channel, only_event).await.expect("publish");
    broker.publish(&channel, request("null")).await.expect("publish");
    let expect = |p: &Publication, event: Option<&str>, exclude: Option<&str>, client: Option<&str>, data: &str| {
        assert_eq!(
            (p.event.as_deref(), p.exclude.as_deref(), p.client_id.as_deref(), p.data.as_ref()),
            (event, exclude, client, data.as_bytes()),
            "publication {}",
            p.offset
        );
    };
    let (_, first) = events.next_publication().await;
    expect(&first, Some("order|shipped,é"), Some("123.456"), Some("bob|1"), "{\"a\":1}");
    let (_, second) = events.next_publication().await;
    expect(&second, Some("e"), None, None, "\"x|y\"");
    let (_, third) = events.next_publication().await;
    expect(&third, None, None, None, "null");
    let page = broker.history(&channel, None, 10).await.expect("history");
    assert_eq!(page.publications.len(), 3);
    expect(&page.publications[0], Some("order|shipped,é"), Some("123.456"), Some("bob|1"), "{\"a\":1}");
    expect(&page.publications[1], Some("e"), None, None, "\"x|y\"");
    expect(&page.publications[2], None, None, None, "null");
}
