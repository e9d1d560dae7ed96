//! Load figures for the data plane on this machine, over loopback. Ignored by default (they
//! take a while and assert nothing about speed); run them with:
//!
//! ```text
//! ulimit -n 20000
//! cargo test --release -p aviary-data-plane --test load -- --ignored --nocapture --test-threads=1
//! ```
//!
//! `idle_connections_memory` opens the clients in a child process (this test binary re-run in
//! client mode), so the server's resident memory growth per connection is measured alone.
//! `fan_out_to_one_thousand_subscribers` keeps clients in-process: both sides share the cores,
//! which makes the figures a lower bound for a dedicated node.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aviary_broker::memory::MemoryBroker;
use aviary_core::token::claims_for;
use aviary_core::{
    ApiKeyAuthority, ApiKeyError, AppConfig, Capabilities, Namespace, Quotas, Registry, SigningKey, VerifiedApiKey,
};
use aviary_data_plane::{DataPlane, DataPlaneConfig};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const CLIENT_MODE: &str = "AVIARY_LOAD_CLIENT_URL";

struct OneKey(String, VerifiedApiKey);

#[async_trait]
impl ApiKeyAuthority for OneKey {
    async fn verify_api_key(&self, presented: &str) -> Result<VerifiedApiKey, ApiKeyError> {
        if presented == self.0 { Ok(self.1.clone()) } else { Err(ApiKeyError::Invalid) }
    }
}

struct Node {
    dp: DataPlane,
    ws: String,
    base: String,
    app: AppConfig,
    api_key: String,
    token: String,
}

async fn start(queue: usize) -> Node {
    let unlimited = Quotas {
        max_connections: 1_000_000,
        max_messages_per_s: 10_000_000,
        max_message_bytes: 64 * 1024,
        max_subscriptions_per_connection: 128,
        max_presence_members: 1000,
    };
    let app = AppConfig {
        app_id: "app_load".into(),
        tenant_id: "ten_load".into(),
        name: "load".into(),
        enabled: true,
        allowed_origins: vec![],
        max_token_ttl_s: 3600,
        namespaces: vec![Namespace::default_namespace()],
        tenant_quotas: unlimited,
        quotas: unlimited,
    };
    let registry = Arc::new(Registry::new());
    let signing = SigningKey::generate();
    registry.set_verifying_keys([signing.verifying_key()]);
    registry.upsert_app(app.clone());
    let api_key = "avk_load".to_owned();
    let key = VerifiedApiKey {
        key_id: "key_load".into(),
        tenant_id: app.tenant_id.clone(),
        app_id: app.app_id.clone(),
        capabilities: Capabilities::all(),
    };
    let config = DataPlaneConfig { outbound_queue_capacity: queue, ..DataPlaneConfig::default() };
    let dp = DataPlane::new(
        registry,
        Arc::new(MemoryBroker::new()),
        Arc::new(OneKey(api_key.clone(), key)),
        config,
        CancellationToken::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, dp.router()).into_future());
    let token =
        signing.sign(&claims_for(&app.tenant_id, &app.app_id, "key_load", "load-client", 3600, Capabilities::all()));
    Node { dp, ws: format!("ws://{addr}/v1/connect"), base: format!("http://{addr}"), app, api_key, token }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn open_client(
    url: &str,
    token: &str,
    channel: Option<&str>,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(json!({"type": "connect", "token": token}).to_string())).await.unwrap();
    let _connected = ws.next().await.unwrap().unwrap();
    if let Some(channel) = channel {
        ws.send(Message::text(json!({"type": "subscribe", "channel": channel, "id": 1}).to_string())).await.unwrap();
        let _ok = ws.next().await.unwrap().unwrap();
    }
    ws
}

/// Child mode: open N idle connections, say so, hold them until stdin closes.
async fn run_clients(url: String) {
    let token = std::env::var("AVIARY_LOAD_TOKEN").unwrap();
    let n: usize = std::env::var("AVIARY_LOAD_N").unwrap().parse().unwrap();
    let mut held = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let batch = (chunk * 100..((chunk + 1) * 100).min(n)).map(|_| open_client(&url, &token, None));
        held.extend(futures::future::join_all(batch).await);
    }
    // stderr: unbuffered and never captured by the test harness.
    eprintln!("READY {}", held.len());
    // Keep answering pings while the parent measures.
    let readers: Vec<_> =
        held.into_iter().map(|mut ws| tokio::spawn(async move { while ws.next().await.is_some() {} })).collect();
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await
    .unwrap();
    drop(readers);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load figures; run explicitly"]
async fn idle_connections_memory() {
    if let Ok(url) = std::env::var(CLIENT_MODE) {
        return run_clients(url).await;
    }
    let n: usize = std::env::var("AVIARY_LOAD_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let node = start(1024).await;
    // Warm up allocator arenas and lazily initialised state with a few connections.
    let warm: Vec<_> = futures::future::join_all((0..50).map(|_| open_client(&node.ws, &node.token, None))).await;
    drop(warm);
    while node.dp.connection_count() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("warm-up done");
    let before = rss_kib();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "idle_connections_memory", "--nocapture", "--test-threads=1"])
        .env(CLIENT_MODE, &node.ws)
        .env("AVIARY_LOAD_TOKEN", &node.token)
        .env("AVIARY_LOAD_N", n.to_string())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr).lines().map_while(Result::ok).find(|l| l.starts_with("READY"))
    })
    .await
    .unwrap();
    assert!(ready.is_some(), "client process failed");
    eprintln!("client process ready");
    while node.dp.connection_count() < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    println!(
        "idle connections held: {n}; server RSS {before} KiB -> {after} KiB; {:.1} KiB per idle connection",
        (after.saturating_sub(before)) as f64 / n as f64
    );
    drop(child.stdin.take());
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load figures; run explicitly"]
async fn fan_out_to_one_thousand_subscribers() {
    const SUBSCRIBERS: usize = 1000;
    let node = start(4096).await;
    let mut clients = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS / 100 {
        clients
            .extend(futures::future::join_all((0..100).map(|_| open_client(&node.ws, &node.token, Some("fan")))).await);
    }
    let http = reqwest::Client::new();
    let url = format!("{}/v1/apps/{}/messages", node.base, node.app.app_id);
    let base = Instant::now();

    // Each subscriber counts the throughput phase, then records its latencies for the
    // latency phase in its own Vec (no shared channel to contend on). Only the `"t":` field is
    // extracted, so client-side parsing stays cheap.
    const THROUGHPUT: usize = 2_000;
    const PROBES: usize = 200;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::with_capacity(SUBSCRIBERS);
    for mut ws in clients {
        let done_tx = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = 0usize;
            let mut latencies = Vec::with_capacity(PROBES);
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(t) = msg else { continue };
                let Some(rest) = t.split_once(r#""t":"#).map(|(_, r)| r) else { continue };
                seen += 1;
                if seen == THROUGHPUT {
                    let _ = done_tx.send(());
                } else if seen > THROUGHPUT {
                    let sent: u64 = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
                    latencies.push((base.elapsed().as_micros() as u64).saturating_sub(sent));
                    if latencies.len() == PROBES {
                        return latencies;
                    }
                }
            }
            latencies
        }));
    }
    drop(done_tx);

    let publish = |count: usize| {
        let http = http.clone();
        let url = url.clone();
        let key = node.api_key.clone();
        async move {
            let messages: Vec<_> = (0..count)
                .map(|_| json!({"channel": "fan", "data": {"t": base.elapsed().as_micros() as u64}}))
                .collect();
            let r = http.post(&url).bearer_auth(&key).json(&json!({"messages": messages})).send().await.unwrap();
            assert_eq!(r.status(), 201);
        }
    };

    // Throughput: publications in batches of 100, as fast as they go.
    let start = Instant::now();
    for _ in 0..THROUGHPUT / 100 {
        publish(100).await;
    }
    for _ in 0..SUBSCRIBERS {
        done_rx.recv().await.unwrap();
    }
    let elapsed = start.elapsed();
    let deliveries = THROUGHPUT * SUBSCRIBERS;
    println!(
        "fan-out: {THROUGHPUT} publications x {SUBSCRIBERS} subscribers = {deliveries} deliveries in {:.2} s = {:.0} deliveries/s",
        elapsed.as_secs_f64(),
        deliveries as f64 / elapsed.as_secs_f64()
    );

    // Latency at a moderate rate: one publication every 10 ms.
    for _ in 0..PROBES {
        publish(1).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut latencies = Vec::with_capacity(PROBES * SUBSCRIBERS);
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    assert_eq!(latencies.len(), PROBES * SUBSCRIBERS);
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0;
    println!(
        "publish-to-deliver (REST call start -> client read frame), 100 msg/s to {SUBSCRIBERS} subscribers: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}
