//! The webhook ledger contract against [`MemoryLedger`], [`SqliteLedger`] (a fresh file per
//! test) and, on the Redis at 127.0.0.1:6379, [`RedisLedger`] (one per simulated node, a fresh
//! key prefix per test).

use std::time::Duration;

use aviary_broker::webhooks::contract;
use aviary_broker::webhooks::memory::MemoryLedger;
use aviary_broker::webhooks::redis::RedisLedger;
use aviary_broker::webhooks::sqlite::SqliteLedger;
use aviary_broker::webhooks::{Counter, WebhookLedger};

const REDIS: &str = "redis://127.0.0.1:6379";

fn redis_nodes(n: usize, ttl: Duration) -> Vec<RedisLedger> {
    let prefix = format!("test-wh-{}", uuid::Uuid::new_v4().simple());
    (0..n).map(|i| RedisLedger::new(&[REDIS.to_owned()], &prefix, &format!("node{i}"), ttl).unwrap()).collect()
}

/// A fresh ledger file, removed on drop.
struct SqliteFile(std::path::PathBuf);

impl SqliteFile {
    fn new() -> SqliteFile {
        let dir = std::env::temp_dir().join(format!("aviary-ledger-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        SqliteFile(dir)
    }

    async fn open(&self) -> SqliteLedger {
        SqliteLedger::open(&self.0.join("webhooks.db")).await.unwrap().0
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

#[tokio::test]
async fn sqlite_crossings_of_zero_are_events() {
    let file = SqliteFile::new();
    contract::crossings_of_zero_are_events(&file.open().await, "app_1").await;
}

#[tokio::test]
async fn sqlite_queue_keeps_what_is_not_acknowledged() {
    let file = SqliteFile::new();
    contract::the_queue_keeps_what_is_not_acknowledged(&file.open().await, "app_1").await;
}

#[tokio::test]
async fn sqlite_attempts_are_kept_newest_first_and_capped() {
    let file = SqliteFile::new();
    let ledger = file.open().await;
    contract::attempts_are_kept_newest_first_and_capped(&ledger, &ledger, "app_1").await;
}

#[tokio::test]
async fn sqlite_queue_outlives_the_ledger() {
    let file = SqliteFile::new();
    let first = file.open().await;
    contract::the_queue_outlives_the_ledger(first, |_| file.open(), "app_1").await;
}

#[tokio::test]
async fn redis_queue_outlives_the_ledger() {
    let prefix = format!("test-wh-{}", uuid::Uuid::new_v4().simple());
    let open = |node: &str| RedisLedger::new(&[REDIS.to_owned()], &prefix, node, Duration::from_secs(30)).unwrap();
    contract::the_queue_outlives_the_ledger(open("node0"), |_| async { open("node1") }, "app_1").await;
}

/// The shares of a process that died are reaped when the next one opens the file, with the
/// down events of every counter they held up; counters at zero are not touched.
#[tokio::test]
async fn sqlite_a_restart_vacates_what_the_earlier_process_held() {
    let file = SqliteFile::new();
    let first = file.open().await;
    let occupancy = |c: &str| Counter::Occupancy { channel: c.into() };
    let member = Counter::Member { channel: "room".into(), user_id: "ann".into() };
    first.set_shares("app_1", &[(occupancy("room"), 1), (member.clone(), 2), (occupancy("gone"), 1)]).await.unwrap();
    first.set_shares("app_1", &[(occupancy("gone"), 0)]).await.unwrap();
    let before = contract::drain(&first, "app_1").await.len();
    assert_eq!(before, 4, "occupied x2, member_added, vacated");
    drop(first);
    let (second, reaped) = SqliteLedger::open(&file.0.join("webhooks.db")).await.unwrap();
    assert_eq!(reaped, 2);
    let mut got: Vec<(String, String)> =
        contract::drain(&second, "app_1").await.into_iter().map(|e| (e.name, e.channel)).collect();
    got.sort();
    assert_eq!(got, [("channel_vacated".into(), "room".into()), ("member_removed".into(), "room".into())]);
    // The new process starts from zero: its first share is a new occupancy.
    second.set_shares("app_1", &[(occupancy("room"), 1)]).await.unwrap();
    let again = contract::drain(&second, "app_1").await;
    assert_eq!(again.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["channel_occupied"]);
    assert_eq!(SqliteLedger::open(&file.0.join("webhooks.db")).await.unwrap().1, 1);
}
