//! The ledger contract suite: every [`WebhookLedger`] passes these (`tests/webhook_ledger.rs`
//! runs them against the memory and the Redis ledger). Multi-node cases take one ledger per
//! node over the same backing store.

use std::time::Duration;

use super::{Counter, NewEvent, QueuedEvent, WebhookLedger};

fn occupancy(channel: &str) -> Counter {
    Counter::Occupancy { channel: channel.into() }
}

fn member(channel: &str, user: &str) -> Counter {
    Counter::Member { channel: channel.into(), user_id: user.into() }
}

/// Everything queued and not yet handed out, acknowledged at once.
pub async fn drain(ledger: &dyn WebhookLedger, app: &str) -> Vec<QueuedEvent> {
    let mut all = Vec::new();
    loop {
        let got = ledger.read(app, false, None, 100).await.unwrap();
        if got.is_empty() {
            return all;
        }
        let ids: Vec<String> = got.iter().map(|e| e.id.clone()).collect();
        ledger.ack(app, &ids).await.unwrap();
        all.extend(got);
    }
}

fn names(events: &[QueuedEvent]) -> Vec<(String, String, Option<String>)> {
    events.iter().map(|e| (e.name.clone(), e.channel.clone(), e.user_id.clone())).collect()
}

fn ev(name: &str, channel: &str, user: Option<&str>) -> (String, String, Option<String>) {
    (name.into(), channel.into(), user.map(str::to_owned))
}

/// One node: a counter's zero crossings, and only those, are events, in order.
pub async fn crossings_of_zero_are_events(ledger: &dyn WebhookLedger, app: &str) {
    ledger.set_shares(app, &[(occupancy("room"), 1), (member("room", "alice"), 1)]).await.unwrap();
    ledger.set_shares(app, &[(member("room", "alice"), 2), (occupancy("room"), 1)]).await.unwrap();
    ledger.set_shares(app, &[(member("room", "alice"), 1)]).await.unwrap();
    ledger.set_shares(app, &[(member("room", "alice"), 0), (occupancy("room"), 0)]).await.unwrap();
    ledger.set_shares(app, &[(occupancy("room"), 0)]).await.unwrap();
    assert_eq!(
        names(&drain(ledger, app).await),
        [
            ev("channel_occupied", "room", None),
            ev("member_added", "room", Some("alice")),
            ev("member_removed", "room", Some("alice")),
            ev("channel_vacated", "room", None),
        ]
    );
}

/// Several nodes: the total is the sum of shares; one event per crossing of the total.
pub async fn totals_add_up_across_nodes(nodes: &[&dyn WebhookLedger], app: &str) {
    let [a, b, ..] = nodes else { panic!("two nodes at least") };
    a.set_shares(app, &[(occupancy("room"), 1)]).await.unwrap();
    b.set_shares(app, &[(occupancy("room"), 1), (member("room", "bob"), 1)]).await.unwrap();
    a.set_shares(app, &[(occupancy("room"), 0), (member("room", "bob"), 1)]).await.unwrap();
    b.set_shares(app, &[(member("room", "bob"), 0)]).await.unwrap();
    a.set_shares(app, &[(member("room", "bob"), 0)]).await.unwrap();
    b.set_shares(app, &[(occupancy("room"), 0)]).await.unwrap();
    assert_eq!(
        names(&drain(*a, app).await),
        [
            ev("channel_occupied", "room", None),
            ev("member_added", "room", Some("bob")),
            ev("member_removed", "room", Some("bob")),
            ev("channel_vacated", "room", None),
        ]
    );
}

/// A node that stops renewing is reaped by another: its shares leave with their down events.
pub async fn a_silent_node_is_reaped_with_its_events(
    dead: &dyn WebhookLedger,
    alive: &dyn WebhookLedger,
    app: &str,
    ttl: Duration,
) {
    dead.set_shares(app, &[(occupancy("room"), 1), (member("room", "carol"), 1), (occupancy("solo"), 1)])
        .await
        .unwrap();
    alive.set_shares(app, &[(occupancy("room"), 1)]).await.unwrap();
    drain(alive, app).await;
    assert_eq!(alive.reap(app).await.unwrap(), 0, "nobody is late yet");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(alive.keep_alive(app).await.unwrap());
    assert_eq!(alive.reap(app).await.unwrap(), 1);
    let mut got = names(&drain(alive, app).await);
    got.sort();
    assert_eq!(got, [ev("channel_vacated", "solo", None), ev("member_removed", "room", Some("carol"))]);
    assert!(!dead.keep_alive(app).await.unwrap(), "the reaped node learns it must report again");
}

/// The queue: appended events come out in order with unique ids; a read `from_start` hands
/// out again what was handed out and not acknowledged.
pub async fn the_queue_keeps_what_is_not_acknowledged(ledger: &dyn WebhookLedger, app: &str) {
    let events: Vec<NewEvent> = (0..5)
        .map(|i| NewEvent {
            name: "client_event".into(),
            channel: format!("c{i}"),
            user_id: None,
            time_ms: 0,
            detail: Some(format!("{{\"i\":{i}}}")),
        })
        .collect();
    ledger.append(app, &events).await.unwrap();
    let first = ledger.read(app, false, None, 3).await.unwrap();
    assert_eq!(first.iter().map(|e| e.channel.as_str()).collect::<Vec<_>>(), ["c0", "c1", "c2"]);
    assert!(first.iter().all(|e| e.time_ms > 0 && e.detail.is_some()));
    ledger.ack(app, &[first[1].id.clone()]).await.unwrap();
    assert_eq!(ledger.backlog(app).await.unwrap(), 4);
    // A new deliverer starts from the start: c0 and c2 again, then nothing more pending.
    let again = ledger.read(app, true, None, 10).await.unwrap();
    assert_eq!(again.iter().map(|e| e.channel.as_str()).collect::<Vec<_>>(), ["c0", "c2"]);
    let after = ledger.read(app, true, Some(&again[1].id), 10).await.unwrap();
    assert!(after.is_empty());
    let rest = ledger.read(app, false, None, 10).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.channel.as_str()).collect::<Vec<_>>(), ["c3", "c4"]);
    let mut ids: Vec<String> = first.iter().chain(&rest).map(|e| e.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5, "unique ids");
    ledger.ack(app, &ids).await.unwrap();
    assert_eq!(ledger.backlog(app).await.unwrap(), 0);
}

/// One lease holder at a time; a released lease is free at once.
pub async fn one_lease_holder_at_a_time(a: &dyn WebhookLedger, b: &dyn WebhookLedger, app: &str) {
    let ttl = Duration::from_secs(30);
    assert!(a.lease(app, ttl).await.unwrap());
    assert!(a.lease(app, ttl).await.unwrap(), "renewal");
    assert!(!b.lease(app, ttl).await.unwrap());
    a.release(app).await.unwrap();
    assert!(b.lease(app, ttl).await.unwrap());
}

/// Attempts: newest first, the last [`super::RECENT_ATTEMPTS`] per endpoint, endpoints apart.
pub async fn attempts_are_kept_newest_first_and_capped(a: &dyn WebhookLedger, b: &dyn WebhookLedger, app: &str) {
    let cap = super::RECENT_ATTEMPTS;
    for i in 0..cap + 5 {
        let node = if i % 2 == 0 { a } else { b };
        node.record_attempt(app, "whk_1", &format!("{{\"i\":{i}}}")).await.unwrap();
    }
    b.record_attempt(app, "whk_2", "{}").await.unwrap();
    let got = a.attempts(app, "whk_1").await.unwrap();
    assert_eq!(got.len(), cap);
    assert_eq!(got[0], format!("{{\"i\":{}}}", cap + 4), "newest first, whichever node recorded it");
    assert_eq!(got[cap - 1], "{\"i\":5}");
    assert_eq!(b.attempts(app, "whk_2").await.unwrap(), ["{}"]);
    assert!(a.attempts(app, "whk_3").await.unwrap().is_empty());
}

/// Durable ledgers (Redis, SQLite; not memory): the queue outlives the ledger. A ledger opened
/// again over the same store, as a restarted process or another node would, hands out again
/// what was handed out and not acknowledged, then what was never handed out, with the same
/// ids, and new events get ids never used before.
pub async fn the_queue_outlives_the_ledger<L, F>(first: L, reopen: impl FnOnce(L) -> F, app: &str)
where
    L: WebhookLedger,
    F: std::future::Future<Output = L>,
{
    let event = |i: usize| NewEvent {
        name: "client_event".into(),
        channel: format!("c{i}"),
        user_id: None,
        time_ms: 0,
        detail: None,
    };
    first.append(app, &(0..4).map(event).collect::<Vec<_>>()).await.unwrap();
    let handed = first.read(app, false, None, 2).await.unwrap();
    first.ack(app, &[handed[0].id.clone()]).await.unwrap();
    let second = reopen(first).await;
    assert_eq!(second.backlog(app).await.unwrap(), 3);
    let again = second.read(app, true, None, 10).await.unwrap();
    assert_eq!(again, [handed[1].clone()], "handed out, not acknowledged: handed out again");
    let rest = second.read(app, false, None, 10).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.channel.as_str()).collect::<Vec<_>>(), ["c2", "c3"]);
    let ids: Vec<String> = again.iter().chain(&rest).map(|e| e.id.clone()).collect();
    second.ack(app, &ids).await.unwrap();
    assert_eq!(second.backlog(app).await.unwrap(), 0);
    // An empty queue still never hands out an old id (receivers would drop the event).
    second.append(app, &[event(4)]).await.unwrap();
    let new = second.read(app, false, None, 10).await.unwrap();
    let old: Vec<&str> = handed.iter().chain(&rest).map(|e| e.id.as_str()).collect();
    assert!(!old.contains(&new[0].id.as_str()), "{} reused", new[0].id);
    second.ack(app, &[new[0].id.clone()]).await.unwrap();
}
