//! Throughput and latency figures for the engines, printed, never asserted (the machine is
//! shared). Ignored by default; run with
//! `cargo test -p aviary-broker --test bench_broker -- --ignored --nocapture --test-threads 1`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aviary_broker::contract::{request, unique_channel};
use aviary_broker::memory::MemoryBroker;
use aviary_broker::redis::RedisBroker;
use aviary_broker::{Broker, BrokerEvents, ChannelKey, PresenceAction, PresenceMember, Publication};
use tokio::sync::mpsc;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Counts publications and reports each one's publish-to-deliver latency.
struct Probe {
    base: Instant,
    received: AtomicU64,
    latencies: mpsc::UnboundedSender<Duration>,
}

impl BrokerEvents for Probe {
    fn on_publication(&self, _: &ChannelKey, publication: Arc<Publication>) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let sent_ns: u64 = std::str::from_utf8(&publication.data).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let now_ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let _ = self.latencies.send(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
    }
    fn on_presence(&self, _: &ChannelKey, _: PresenceAction, _: &PresenceMember) {}
}

fn probe() -> (Arc<Probe>, mpsc::UnboundedReceiver<Duration>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Probe { base: Instant::now(), received: AtomicU64::new(0), latencies: tx }), rx)
}

/// Publishes `total` messages from `publishers` tasks on `publisher_node` and waits for all of
/// them at `receiver`'s probe; prints publishes/s and delivery latency percentiles.
async fn run(
    label: &str,
    publisher_node: Arc<dyn Broker>,
    probe: Arc<Probe>,
    mut latencies: mpsc::UnboundedReceiver<Duration>,
    channel: ChannelKey,
    publishers: usize,
    total: usize,
) {
    let started = Instant::now();
    let per_task = total / publishers;
    let tasks: Vec<_> = (0..publishers)
        .map(|_| {
            let (node, channel, probe) = (Arc::clone(&publisher_node), channel.clone(), Arc::clone(&probe));
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let sent = probe.base.elapsed().as_nanos().to_string();
                    node.publish(&channel, request(&sent)).await.expect("publish");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher");
    }
    let published = started.elapsed();
    let expected = (per_task * publishers) as u64;
    let mut samples = Vec::with_capacity(expected as usize);
    while (samples.len() as u64) < expected {
        match tokio::time::timeout(Duration::from_secs(30), latencies.recv()).await {
            Ok(Some(latency)) => samples.push(latency),
            _ => break,
        }
    }
    let delivered = started.elapsed();
    samples.sort_unstable();
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{label}: {expected} publications by {publishers} publishers: {:.0} publishes/s, all delivered in {:?} ({:.0}/s); latency p50 {:?} p99 {:?} max {:?}",
        expected as f64 / published.as_secs_f64(),
        delivered,
        samples.len() as f64 / delivered.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; prints figures"]
async fn memory_broker_one_channel() {
    let broker = Arc::new(MemoryBroker::new());
    let (probe, latencies) = probe();
    broker.set_events(probe.clone());
    let channel = unique_channel("bench");
    broker.subscribe(&channel).await.expect("subscribe");
    run("memory", broker, probe, latencies, channel, 8, 200_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; prints figures"]
async fn redis_broker_one_channel_same_node() {
    let broker = Arc::new(RedisBroker::new(&[REDIS_URL.to_owned()], "aviary-bench-1").expect("broker"));
    let (probe, latencies) = probe();
    broker.set_events(probe.clone());
    let channel = unique_channel("bench");
    broker.subscribe(&channel).await.expect("subscribe");
    run("redis, same node", broker, probe, latencies, channel, 32, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; prints figures"]
async fn redis_broker_one_channel_across_nodes() {
    let publisher: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(&[REDIS_URL.to_owned()], "aviary-bench-2").expect("broker"));
    let receiver = RedisBroker::new(&[REDIS_URL.to_owned()], "aviary-bench-2").expect("broker");
    let (probe, latencies) = probe();
    receiver.set_events(probe.clone());
    let channel = unique_channel("bench");
    receiver.subscribe(&channel).await.expect("subscribe");
    run("redis, node to node", publisher, probe, latencies, channel, 32, 20_000).await;
}
