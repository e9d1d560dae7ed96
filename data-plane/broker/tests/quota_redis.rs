//! [`RedisQuotas`] against the Redis at 127.0.0.1:6379: limits that hold across nodes, and the
//! connections of a node that stops heartbeating released. Each test uses a unique prefix.

use std::time::Duration;

use aviary_broker::contract::EVENT_TIMEOUT;
use aviary_broker::redis_quotas::RedisQuotas;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

fn unique_prefix() -> String {
    format!("aviary-test-{}", uuid::Uuid::new_v4().simple())
}

fn node(prefix: &str) -> RedisQuotas {
    RedisQuotas::new(&[REDIS_URL.to_owned()], prefix).expect("quotas")
}

#[tokio::test]
async fn tenant_connection_limit_holds_across_nodes() {
    let prefix = unique_prefix();
    let (node1, node2) = (node(&prefix), node(&prefix));
    assert!(node1.try_acquire_connection("ten", "app1", 3, 10).await.expect("acquire"));
    assert!(node2.try_acquire_connection("ten", "app2", 3, 10).await.expect("acquire"));
    assert!(node1.try_acquire_connection("ten", "app1", 3, 10).await.expect("acquire"));
    assert!(!node2.try_acquire_connection("ten", "app2", 3, 10).await.expect("acquire"), "tenant is at 3");
    assert!(!node1.try_acquire_connection("ten", "app1", 3, 10).await.expect("acquire"), "refusals count nothing");
    node1.release_connection("ten", "app1").await.expect("release");
    assert!(node2.try_acquire_connection("ten", "app2", 3, 10).await.expect("acquire"), "a slot was released");
    assert!(node1.try_acquire_connection("other-tenant", "app9", 1, 1).await.expect("acquire"), "tenants are separate");
}

#[tokio::test]
async fn app_connection_limit_is_checked_with_the_tenant_limit() {
    let prefix = unique_prefix();
    let (node1, node2) = (node(&prefix), node(&prefix));
    assert!(node1.try_acquire_connection("ten", "small", 10, 1).await.expect("acquire"));
    assert!(!node2.try_acquire_connection("ten", "small", 10, 1).await.expect("acquire"), "app is at 1");
    assert!(node2.try_acquire_connection("ten", "big", 10, 5).await.expect("acquire"), "sibling app unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_a_silent_node_are_released_after_its_ttl() {
    let prefix = unique_prefix();
    // The doomed node's counts must outlive the steps before its crash: its heartbeat renews
    // them every TTL/3, on a worker of its own.
    let ttl = Duration::from_secs(3);
    let doomed = RedisQuotas::with_node_ttl(&[REDIS_URL.to_owned()], &prefix, ttl).expect("quotas");
    let survivor = RedisQuotas::with_node_ttl(&[REDIS_URL.to_owned()], &prefix, ttl).expect("quotas");
    assert!(doomed.try_acquire_connection("ten", "app", 2, 2).await.expect("acquire"));
    assert!(doomed.try_acquire_connection("ten", "app", 2, 2).await.expect("acquire"));
    assert!(!survivor.try_acquire_connection("ten", "app", 2, 2).await.expect("acquire"));
    drop(doomed); // crashes: no release, no heartbeat
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while !survivor.try_acquire_connection("ten", "app", 2, 2).await.expect("acquire") {
        assert!(tokio::time::Instant::now() < deadline, "the silent node's connections were never released");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// Multi-threaded, so the node's heartbeat task runs beside the test's own steps rather than
// only when they yield.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_nodes_keep_their_connections_counted_past_the_ttl() {
    let prefix = unique_prefix();
    // The heartbeat runs every TTL/3 (1 s): only a stall of the whole process longer than
    // two of its periods could let the count lapse. A 1 s TTL left a third of that.
    let ttl = Duration::from_secs(3);
    let live = RedisQuotas::with_node_ttl(&[REDIS_URL.to_owned()], &prefix, ttl).expect("quotas");
    let other = RedisQuotas::with_node_ttl(&[REDIS_URL.to_owned()], &prefix, ttl).expect("quotas");
    assert!(live.try_acquire_connection("ten", "app", 1, 1).await.expect("acquire"));
    let started = tokio::time::Instant::now();
    // Checked over more than two TTLs.
    while started.elapsed() < ttl * 2 + ttl / 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !other.try_acquire_connection("ten", "app", 1, 1).await.expect("acquire"),
            "heartbeat keeps it counted"
        );
    }
}

#[tokio::test]
async fn message_rate_is_shared_by_nodes_and_takes_from_both_levels_or_neither() {
    // Buckets refill continuously (app 2/s, tenant 4/s, one second of burst each), so the
    // "spent" answers below hold only if the five calls take less than 250 ms (a quarter of
    // a tenant token); a run that took longer proves nothing either way and is run again on a
    // fresh prefix. Only a wrong answer from a run that was quick enough fails.
    const QUICK_ENOUGH: Duration = Duration::from_millis(250);
    for attempt in 1..=10 {
        let prefix = unique_prefix();
        let (node1, node2) = (node(&prefix), node(&prefix));
        let started = std::time::Instant::now();
        let answers = [
            node1.try_acquire_messages("ten", "app", 4, 2, 1).await.expect("take"),
            node2.try_acquire_messages("ten", "app", 4, 2, 1).await.expect("take"),
            // The app's budget is spent across both nodes.
            node2.try_acquire_messages("ten", "app", 4, 2, 1).await.expect("take"),
            // The refusal took nothing from the tenant: a sibling app gets all 2 it has left.
            node1.try_acquire_messages("ten", "sibling", 4, 1_000, 2).await.expect("take"),
            // Now the tenant is spent.
            node1.try_acquire_messages("ten", "sibling", 4, 1_000, 1).await.expect("take"),
        ];
        let took = started.elapsed();
        if took < QUICK_ENOUGH {
            assert_eq!(answers, [true, true, false, true, false], "run {attempt} took {took:?}");
            return;
        }
        eprintln!("run {attempt} took {took:?} (buckets may have refilled): run again");
    }
    panic!("ten runs in a row took {QUICK_ENOUGH:?} or more: the machine is too loaded to check a rate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_redis_lost_are_restored_by_the_nodes_that_hold_them() {
    let prefix = unique_prefix();
    // Long enough that the holder's own heartbeat (every TTL/3) keeps its counts alive through
    // this test's steps however slow they are; the restore comes from that same heartbeat.
    let ttl = Duration::from_secs(3);
    let holder = RedisQuotas::with_node_ttl(&[REDIS_URL.to_owned()], &prefix, ttl).expect("quotas");
    let other = RedisQuotas::with_node_ttl(&[REDIS_URL.to_owned()], &prefix, ttl).expect("quotas");
    assert!(holder.try_acquire_connection("ten", "app", 2, 2).await.expect("acquire"));
    assert!(holder.try_acquire_connection("ten", "app", 2, 2).await.expect("acquire"));

    // Redis loses everything under the prefix (a restart without persistence, a flush).
    let client = redis::Client::open(REDIS_URL).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.expect("keys");
    assert!(!keys.is_empty());
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("del");

    // The holder's heartbeat writes its two connections back; then the limit holds again.
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{prefix}:qt:*")).query_async(&mut conn).await.expect("keys");
        if !keys.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "counts were never restored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!other.try_acquire_connection("ten", "app", 2, 2).await.expect("acquire"), "restored counts hold");
    holder.release_connection("ten", "app").await.expect("release");
    assert!(other.try_acquire_connection("ten", "app", 2, 2).await.expect("acquire"));
}
