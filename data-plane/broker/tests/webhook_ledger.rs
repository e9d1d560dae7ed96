//! The webhook ledger contract against [`MemoryLedger`] and, on the Redis at 127.0.0.1:6379,
//! [`RedisLedger`] (one per simulated node, a fresh key prefix per test).

use std::time::Duration;

use aviary_broker::webhooks::contract;
use aviary_broker::webhooks::memory::MemoryLedger;
use aviary_broker::webhooks::redis::RedisLedger;

const REDIS: &str = "redis://127.0.0.1:6379";

fn redis_nodes(n: usize, ttl: Duration) -> Vec<RedisLedger> {
    let prefix = format!("test-wh-{}", uuid::Uuid::new_v4().simple());
    (0..n).map(|i| RedisLedger::new(&[REDIS.to_owned()], &prefix, &format!("node{i}"), ttl).unwrap()).collect()
}

#[tokio::test]
async fn memory_crossings_of_zero_are_events() {
    contract::crossings_of_zero_are_events(&MemoryLedger::new(), "app_1").await;
}

#[tokio::test]
async fn memory_queue_keeps_what_is_not_acknowledged() {
    contract::the_queue_keeps_what_is_not_acknowledged(&MemoryLedger::new(), "app_1").await;
}

#[tokio::test]
async fn redis_crossings_of_zero_are_events() {
    contract::crossings_of_zero_are_events(&redis_nodes(1, Duration::from_secs(30))[0], "app_1").await;
}

#[tokio::test]
async fn redis_totals_add_up_across_nodes() {
    let nodes = redis_nodes(2, Duration::from_secs(30));
    contract::totals_add_up_across_nodes(&[&nodes[0], &nodes[1]], "app_1").await;
}

#[tokio::test]
async fn redis_a_silent_node_is_reaped_with_its_events() {
    let ttl = Duration::from_millis(700);
    let nodes = redis_nodes(2, ttl);
    contract::a_silent_node_is_reaped_with_its_events(&nodes[0], &nodes[1], "app_1", ttl).await;
}

#[tokio::test]
async fn redis_queue_keeps_what_is_not_acknowledged() {
    contract::the_queue_keeps_what_is_not_acknowledged(&redis_nodes(1, Duration::from_secs(30))[0], "app_1").await;
}

#[tokio::test]
async fn redis_one_lease_holder_at_a_time() {
    let nodes = redis_nodes(2, Duration::from_secs(30));
    contract::one_lease_holder_at_a_time(&nodes[0], &nodes[1], "app_1").await;
}

#[tokio::test]
async fn memory_attempts_are_kept_newest_first_and_capped() {
    let ledger = MemoryLedger::new();
    contract::attempts_are_kept_newest_first_and_capped(&ledger, &ledger, "app_1").await;
}

#[tokio::test]
async fn redis_attempts_are_kept_newest_first_and_capped() {
    let nodes = redis_nodes(2, Duration::from_secs(30));
    contract::attempts_are_kept_newest_first_and_capped(&nodes[0], &nodes[1], "app_1").await;
}
