//! The five scenarios. Each starts its server, drives it for a bounded time, and returns an
//! [`Outcome`]: named metrics, latency percentiles, and the sampled time series.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Backend, Conn, Endpoint, Kind, Publishing};
use crate::servers::{self, Binaries, Server};
use crate::stats::{self, CpuWindow, Percentiles, Sample, Stats};

/// Sizes and durations of every scenario.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Sizes {
    /// Scenario 1: idle connections to hold.
    #[arg(long, global = true, default_value_t = 19_000)]
    pub idle_connections: usize,
    /// Scenario 2: subscribers of the one channel.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub fanout_subscribers: usize,
    /// Scenario 2 (and 5): publications per second.
    #[arg(long, global = true, default_value_t = 50)]
    pub fanout_rate: u32,
    /// Scenario 2 (and 5): seconds of publishing.
    #[arg(long, global = true, default_value_t = 10)]
    pub fanout_duration_s: u64,
    /// Scenario 3: connections, each publishing once a second to its room.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub rooms_connections: usize,
    /// Scenario 3: connections per room.
    #[arg(long, global = true, default_value_t = 10)]
    pub room_size: usize,
    /// Scenario 3: seconds of publishing.
    #[arg(long, global = true, default_value_t = 10)]
    pub rooms_duration_s: u64,
    /// Scenario 4: seconds per measured operation.
    #[arg(long, global = true, default_value_t = 5)]
    pub rest_duration_s: u64,
    /// Scenario 4: requests in flight.
    #[arg(long, global = true, default_value_t = 32)]
    pub rest_concurrency: usize,
    /// Scenario 5: data-plane nodes.
    #[arg(long, global = true, default_value_t = 3)]
    pub nodes: usize,
    /// Payload size of each publication, bytes.
    #[arg(long, global = true, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Loopback source addresses to spread connections over (127.0.0.2 and up).
    #[arg(long, global = true, default_value_t = 8)]
    pub sources: u8,
    /// Connection handshakes in flight while connecting.
    #[arg(long, global = true, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds to wait for the last deliveries after publishing stops.
    #[arg(long, global = true, default_value_t = 10)]
    pub drain_s: u64,
}

/// One named figure.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    /// Which direction is better, for the ratio column.
    pub higher_is_better: Option<bool>,
}

fn m(name: &'static str, value: f64, unit: &'static str, higher_is_better: Option<bool>) -> Metric {
    Metric { name, value, unit, higher_is_better }
}

/// The result of one scenario against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub target: String,
    pub metrics: Vec<Metric>,
    pub latency: Option<Percentiles>,
    pub series: Vec<Sample>,
    pub error: Option<String>,
}

impl Outcome {
    fn failed(scenario: &'static str, target: String, e: &anyhow::Error) -> Outcome {
        Outcome {
            scenario,
            target,
            metrics: Vec::new(),
            latency: None,
            series: Vec::new(),
            error: Some(format!("{e:#}")),
        }
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.name == name).map(|m| m.value)
    }
}

fn source(i: usize, sources: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % sources.max(1) as usize) as u8))
}

/// Opens `n` connections (subscribing connection `i` to `channel(i)` if any), `concurrency` at
/// a time. Returns the open connections (with their index) and the number that failed.
async fn connect_many(
    ep: &Endpoint,
    n: usize,
    sizes: &Sizes,
    channel: impl Fn(usize) -> Option<String>,
) -> (Vec<(usize, Conn)>, usize, Option<String>) {
    let results: Vec<(usize, anyhow::Result<Conn>)> = futures::stream::iter(0..n)
        .map(|i| {
            let ch = channel(i);
            async move {
                let r = async {
                    let mut c = client::open(ep, i, source(i, sizes.sources)).await?;
                    if let Some(ch) = ch {
                        c.subscribe(ep, &ch).await?;
                    }
                    Ok(c)
                }
                .await;
                (i, r)
            }
        })
        .buffer_unordered(sizes.connect_concurrency.max(1))
        .collect()
        .await;
    let mut conns = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    for (i, r) in results {
        match r {
            Ok(c) => conns.push((i, c)),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    (conns, failed, first_error)
}

/// Runs every connection's read loop (and publisher) on its own task.
fn spawn_all(
    conns: Vec<(usize, Conn)>,
    stats: &Arc<Stats>,
    stop: &CancellationToken,
    publishing: impl Fn(usize) -> Option<Publishing>,
) -> JoinSet<anyhow::Result<u64>> {
    let mut set = JoinSet::new();
    for (i, conn) in conns {
        let stats = stats.clone();
        let stop = stop.clone();
        let p = publishing(i);
        set.spawn(async move {
            let r = conn.run(&stats, i, stop, p).await;
            if r.is_err() {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            r
        });
    }
    set
}

async fn stop_all(stop: &CancellationToken, mut set: JoinSet<anyhow::Result<u64>>) {
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), async { while set.join_next().await.is_some() {} }).await;
    set.abort_all();
}

/// Waits until `stats` counted `expected` deliveries or `grace` passed; returns when the last
/// counted delivery arrived (approximately: the poll instant that saw the final count).
async fn drain(stats: &Stats, expected: impl Fn() -> u64, grace: Duration) -> Instant {
    let deadline = Instant::now() + grace;
    let mut last = stats.delivered();
    let mut last_change = Instant::now();
    loop {
        let now = stats.delivered();
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if now >= expected() || Instant::now() >= deadline {
            return last_change;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Scenario 1: hold many idle connections; RSS per connection and connect rate.
pub async fn idle(kind: Kind, bins: &Binaries, sizes: &Sizes) -> Outcome {
    run_guarded("idle", kind.label().to_owned(), async {
        let server = servers::start(kind, bins).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_before = stats::total_rss_kib(&server.pids);
        let stats = Stats::new();
        let stop = CancellationToken::new();
        let sampler =
            tokio::spawn(stats::sample(server.pids.clone(), stats.clone(), Duration::from_millis(500), stop.clone()));
        let started = Instant::now();
        let (conns, failed, first_error) =
            connect_many(&server.endpoint, sizes.idle_connections, sizes, |_| None).await;
        let connect_s = started.elapsed().as_secs_f64();
        let open = conns.len();
        let set = spawn_all(conns, &stats, &stop, |_| None);
        // Let allocators settle before reading RSS; measure the CPU of doing nothing meanwhile.
        let cpu = CpuWindow::start(&server.pids);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_cpu = cpu.percent(&server.pids);
        let rss_after = stats::total_rss_kib(&server.pids);
        let dropped = stats.dropped.load(Ordering::Relaxed);
        stop_all(&stop, set).await;
        let series = sampler.await.unwrap_or_default();
        let per_conn = rss_after.saturating_sub(rss_before) as f64 / open.max(1) as f64;
        drop(server);
        Ok(Outcome {
            scenario: "idle",
            target: kind.label().to_owned(),
            metrics: vec![
                m("connections held", open as f64, "", Some(true)),
                m("failed connects", (failed as u64 + dropped) as f64, "", Some(false)),
                m("connect rate", open as f64 / connect_s.max(1e-9), "conn/s", Some(true)),
                m("server RSS per connection", per_conn, "KiB", Some(false)),
                m("server RSS idle (before)", rss_before as f64 / 1024.0, "MiB", Some(false)),
                m("server RSS with connections", rss_after as f64 / 1024.0, "MiB", Some(false)),
                m("server CPU while idle", idle_cpu, "% of a core", Some(false)),
            ],
            latency: None,
            series,
            error: first_error.map(|e| format!("{failed} connects failed, first: {e}")),
        })
    })
    .await
}

/// Scenario 2: one channel, many subscribers, fixed publish rate.
pub async fn fanout(kind: Kind, bins: &Binaries, sizes: &Sizes) -> Outcome {
    let target = kind.label().to_owned();
    run_guarded("fanout", target.clone(), async {
        let server = servers::start(kind, bins).await?;
        run_fanout("fanout", target, &server, sizes).await
    })
    .await
}

/// Scenario 5: scenario 2 over `sizes.nodes` nodes of `kind` joined through Redis (subscribers
/// round-robin over the nodes, publications to node 0).
pub async fn multinode(kind: Kind, bins: &Binaries, sizes: &Sizes) -> Outcome {
    let target = multinode_target(kind, sizes.nodes);
    run_guarded("multinode", target.clone(), async {
        let server = servers::start_cluster(kind, bins, sizes.nodes).await?;
        run_fanout("multinode", target, &server, sizes).await
    })
    .await
}

/// The column label of a multi-node target: `Aviary ×3 nodes (Redis)`.
pub fn multinode_target(kind: Kind, nodes: usize) -> String {
    format!("{} ×{nodes} nodes (Redis)", kind.label())
}

/// Connections subscribed to one channel, each reading on its own task and counting every
/// delivery into `stats` (the setup of the fan-out and multi-node scenarios).
struct Subscribers {
    stats: Arc<Stats>,
    stop: CancellationToken,
    set: JoinSet<anyhow::Result<u64>>,
    /// How many subscribed (each publication is expected this many times).
    count: u64,
    failed: usize,
    first_error: Option<String>,
}

/// Opens `n` connections to `ep` (round-robin over its nodes), subscribes each to `channel`
/// and starts counting deliveries.
async fn subscribe_and_count(ep: &Endpoint, n: usize, channel: &str, sizes: &Sizes) -> Subscribers {
    let stats = Stats::new();
    let stop = CancellationToken::new();
    let (conns, failed, first_error) = connect_many(ep, n, sizes, |_| Some(channel.to_owned())).await;
    let count = conns.len() as u64;
    let set = spawn_all(conns, &stats, &stop, |_| None);
    Subscribers { stats, stop, set, count, failed, first_error }
}

async fn run_fanout(scenario: &'static str, target: String, server: &Server, sizes: &Sizes) -> anyhow::Result<Outcome> {
    let ep = &server.endpoint;
    let channel = "fanout";
    let Subscribers { stats, stop, set, count: subscribers, failed, first_error } =
        subscribe_and_count(ep, sizes.fanout_subscribers, channel, sizes).await;
    let sampler_stop = CancellationToken::new();
    let sampler = tokio::spawn(stats::sample(
        server.pids.clone(),
        stats.clone(),
        Duration::from_millis(250),
        sampler_stop.clone(),
    ));
    let backend = Backend::new(ep)?;
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let timed_out = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let cpu = CpuWindow::start(&server.pids);
    let client_cpu = CpuWindow::start(&[std::process::id()]);
    let started = Instant::now();
    let total = sizes.fanout_rate as u64 * sizes.fanout_duration_s;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / sizes.fanout_rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publishers = JoinSet::new();
    for _ in 0..total {
        tick.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let (backend, stats, accepted, rejected, timed_out) =
            (backend.clone(), stats.clone(), accepted.clone(), rejected.clone(), timed_out.clone());
        let size = sizes.payload_bytes;
        publishers.spawn(async move {
            let _permit = permit;
            match backend.publish(channel, &stats.payload(size)).await {
                Ok(200..=299) => accepted.fetch_add(1, Ordering::Relaxed),
                Ok(_) => rejected.fetch_add(1, Ordering::Relaxed),
                // No answer in time: the server may still deliver it.
                Err(_) => timed_out.fetch_add(1, Ordering::Relaxed),
            };
        });
    }
    while publishers.join_next().await.is_some() {}
    // A publication whose request timed out may still be delivered: expect it too, so late
    // deliveries are not miscounted (a server that drops it shows it as lost).
    let expected = || (accepted.load(Ordering::Relaxed) + timed_out.load(Ordering::Relaxed)) * subscribers;
    let done = drain(&stats, expected, Duration::from_secs(sizes.drain_s)).await;
    let window = done.duration_since(started).as_secs_f64().max(1e-9);
    let server_cpu = cpu.percent(&server.pids);
    let delivered = stats.delivered();
    let dropped = stats.dropped.load(Ordering::Relaxed);
    sampler_stop.cancel();
    let series = sampler.await.unwrap_or_default();
    stop_all(&stop, set).await;
    let expected = expected();
    let peak_rss = series.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    Ok(Outcome {
        scenario,
        target,
        metrics: vec![
            m("subscribers", subscribers as f64, "", Some(true)),
            m("publications accepted", accepted.load(Ordering::Relaxed) as f64, "", None),
            m("publications refused", rejected.load(Ordering::Relaxed) as f64, "", Some(false)),
            m("publish requests timed out", timed_out.load(Ordering::Relaxed) as f64, "", Some(false)),
            m("deliveries expected", expected as f64, "", None),
            m("deliveries", delivered as f64, "", None),
            m("lost", expected.saturating_sub(delivered) as f64, "", Some(false)),
            m("deliveries/s", delivered as f64 / window, "msg/s", Some(true)),
            m("server CPU", server_cpu, "% of a core", Some(false)),
            m("server peak RSS", peak_rss as f64 / 1024.0, "MiB", Some(false)),
            m("bench client CPU", client_cpu.percent(&[std::process::id()]), "% of a core", None),
            m("connections failed or dropped", (failed as u64 + dropped) as f64, "", Some(false)),
        ],
        latency: stats.percentiles(),
        series,
        error: first_error.map(|e| format!("{failed} connects failed, first: {e}")),
    })
}

/// Scenario 3: rooms of `room_size`; every connection publishes once a second to its room.
pub async fn rooms(kind: Kind, bins: &Binaries, sizes: &Sizes) -> Outcome {
    run_guarded("rooms", kind.label().to_owned(), async {
        let server = servers::start(kind, bins).await?;
        let ep = &server.endpoint;
        let room_size = sizes.room_size.max(1);
        let room_of = |i: usize| kind.room_channel(&format!("r{}", i / room_size));
        let stats = Stats::new();
        let stop = CancellationToken::new();
        let (conns, failed, first_error) = connect_many(ep, sizes.rooms_connections, sizes, |i| Some(room_of(i))).await;
        let rooms = sizes.rooms_connections.div_ceil(room_size);
        let mut members = vec![0u64; rooms];
        for (i, _) in &conns {
            members[i / room_size] += 1;
        }
        let sent: Vec<Arc<AtomicU64>> = (0..rooms).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let sampler_stop = CancellationToken::new();
        let sampler = tokio::spawn(stats::sample(
            server.pids.clone(),
            stats.clone(),
            Duration::from_millis(250),
            sampler_stop.clone(),
        ));
        let cpu = CpuWindow::start(&server.pids);
        let client_cpu = CpuWindow::start(&[std::process::id()]);
        let started = Instant::now();
        let until = tokio::time::Instant::now() + Duration::from_secs(sizes.rooms_duration_s);
        let n = sizes.rooms_connections.max(1);
        let refused = Arc::new(AtomicU64::new(0));
        let over_http = kind.rooms_publish_over_http();
        let http_publishers = if over_http {
            let publishers: Vec<(usize, String)> = conns.iter().map(|(i, _)| (*i, room_of(*i))).collect();
            let backend = Backend::new(ep)?;
            let job =
                RoomsOverHttp { backend, publishers, n, room_size, until, stats: stats.clone(), sent: sent.clone() };
            Some(tokio::spawn(job.run(sizes.rest_concurrency.max(1), sizes.payload_bytes, refused.clone())))
        } else {
            None
        };
        let set = spawn_all(conns, &stats, &stop, |i| {
            if over_http {
                return None;
            }
            Some(Publishing {
                channel: room_of(i),
                every: Duration::from_secs(1),
                // Spread the publishers evenly over each second.
                offset: Duration::from_micros((i as u64 * 1_000_000) / n as u64),
                size: sizes.payload_bytes,
                until,
                sent: sent[i / room_size].clone(),
            })
        });
        tokio::time::sleep_until(until).await;
        if let Some(publishers) = http_publishers {
            publishers.await??;
        }
        // Every publication reaches every member of its room, the publisher included (Aviary
        // echoes publications to their sender, so does the Socket.io peer's `io.to(room)`, and
        // the Pusher HTTP API delivers to every subscriber when no `socket_id` is excluded).
        let expected = || sent.iter().zip(&members).map(|(s, m)| s.load(Ordering::Relaxed) * m).sum::<u64>();
        let done = drain(&stats, expected, Duration::from_secs(sizes.drain_s)).await;
        let window = done.duration_since(started).as_secs_f64().max(1e-9);
        let server_cpu = cpu.percent(&server.pids);
        let delivered = stats.delivered();
        let dropped = stats.dropped.load(Ordering::Relaxed);
        sampler_stop.cancel();
        let series = sampler.await.unwrap_or_default();
        stop_all(&stop, set).await;
        let published: u64 = sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        let expected = expected();
        let peak_rss = series.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        drop(server);
        Ok(Outcome {
            scenario: "rooms",
            target: kind.label().to_owned(),
            metrics: vec![
                m("connections", members.iter().sum::<u64>() as f64, "", Some(true)),
                m("rooms", rooms as f64, "", None),
                m("publications", published as f64, "", None),
                m("publications refused", refused.load(Ordering::Relaxed) as f64, "", Some(false)),
                m("deliveries expected", expected as f64, "", None),
                m("deliveries", delivered as f64, "", None),
                m("lost", expected.saturating_sub(delivered) as f64, "", Some(false)),
                m("deliveries/s", delivered as f64 / window, "msg/s", Some(true)),
                m("server CPU", server_cpu, "% of a core", Some(false)),
                m("server peak RSS", peak_rss as f64 / 1024.0, "MiB", Some(false)),
                m("bench client CPU", client_cpu.percent(&[std::process::id()]), "% of a core", None),
                m("connections failed or dropped", (failed as u64 + dropped) as f64, "", Some(false)),
            ],
            latency: stats.percentiles(),
            series,
            error: first_error.map(|e| format!("{failed} connects failed, first: {e}")),
        })
    })
    .await
}

/// The rooms scenario's publications over a Pusher server's HTTP API: each connection's
/// publication once a second (spread over the second as the WebSocket publishers are), sent by
/// `workers` lean keep-alive connections ([`RawHttp`](crate::client::RawHttp)) in the order
/// they fall due. The payload is stamped when it falls due, so latency includes any wait for a
/// free worker.
struct RoomsOverHttp {
    backend: Backend,
    /// `(connection index, its room's channel)` of every connection that publishes.
    publishers: Vec<(usize, String)>,
    /// Connections the scenario asked for (the spread of offsets over a second).
    n: usize,
    room_size: usize,
    until: tokio::time::Instant,
    stats: Arc<Stats>,
    /// Accepted publications per room.
    sent: Vec<Arc<AtomicU64>>,
}

impl RoomsOverHttp {
    /// Slots per second the publications are grouped into.
    const SLOTS: usize = 100;

    async fn run(self, workers: usize, size: usize, refused: Arc<AtomicU64>) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel::<(String, usize, String)>(65_536);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut set = JoinSet::new();
        for _ in 0..workers {
            let (rx, backend, sent, refused) = (rx.clone(), self.backend.clone(), self.sent.clone(), refused.clone());
            let mut conn = backend.raw_connection().await?;
            set.spawn(async move {
                loop {
                    let Some((channel, room, payload)) = rx.lock().await.recv().await else { break };
                    match backend.publish_on(&mut conn, &channel, &payload).await {
                        Ok(200..=299) => {
                            sent[room].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            // The connection is in an unknown state: start a fresh one.
                            if let Ok(fresh) = backend.raw_connection().await {
                                conn = fresh;
                            }
                        }
                    }
                }
            });
        }
        // Connection `i` publishes at offset i/n of each second, in slot i * SLOTS / n.
        let mut slots: Vec<Vec<usize>> = vec![Vec::new(); Self::SLOTS];
        for (k, (i, _)) in self.publishers.iter().enumerate() {
            slots[(i * Self::SLOTS / self.n.max(1)).min(Self::SLOTS - 1)].push(k);
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1) / Self::SLOTS as u32);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        'outer: for slot in (0..Self::SLOTS).cycle() {
            tick.tick().await;
            if tokio::time::Instant::now() >= self.until {
                break;
            }
            for &k in &slots[slot] {
                let (i, channel) = &self.publishers[k];
                let room = i / self.room_size;
                if tx.send((channel.clone(), room, self.stats.payload(size))).await.is_err() {
                    break 'outer;
                }
            }
        }
        drop(tx);
        while let Some(r) = set.join_next().await {
            r?;
        }
        Ok(())
    }
}

/// Counts of a [`hammer`] run.
struct Hammered {
    ok: u64,
    /// Refused with 429 by a rate limiter.
    limited: u64,
    failed: u64,
    secs: f64,
    /// The first failure, for the report.
    first_error: Option<String>,
}

/// Runs `op` (returning an HTTP status) from `concurrency` workers for `duration`, recording
/// each round trip into `stats`.
async fn hammer<F, Fut>(concurrency: usize, duration: Duration, stats: &Arc<Stats>, op: F) -> Hammered
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u16>> + Send,
{
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for w in 0..concurrency.max(1) {
        let (op, ok, limited, bad, stats) = (op.clone(), ok.clone(), limited.clone(), bad.clone(), stats.clone());
        let first_error = first_error.clone();
        set.spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < duration {
                let t = Instant::now();
                let outcome = op(w as u64 * 1_000_000_000 + n).await;
                match outcome {
                    Ok(200..=299) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(429) => limited.fetch_add(1, Ordering::Relaxed),
                    other => {
                        let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                        if first.is_none() {
                            *first = Some(match other {
                                Ok(status) => format!("HTTP {status}"),
                                Err(e) => format!("{e:#}"),
                            });
                        }
                        bad.fetch_add(1, Ordering::Relaxed)
                    }
                };
                stats.record_latency(w, t.elapsed().as_micros() as u64);
                n += 1;
            }
        });
    }
    while set.join_next().await.is_some() {}
    Hammered {
        ok: ok.load(Ordering::Relaxed),
        limited: limited.load(Ordering::Relaxed),
        failed: bad.load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
        first_error: first_error.lock().unwrap_or_else(|e| e.into_inner()).take(),
    }
}

/// Scenario 4: REST publish throughput (every target) and token mint throughput (Aviary).
pub async fn rest(kind: Kind, bins: &Binaries, sizes: &Sizes) -> Outcome {
    run_guarded("rest", kind.label().to_owned(), async {
        let server = servers::start(kind, bins).await?;
        let backend = Backend::new(&server.endpoint)?;
        let duration = Duration::from_secs(sizes.rest_duration_s);
        let publish_stats = Stats::new();
        let cpu = CpuWindow::start(&server.pids);
        let size = sizes.payload_bytes;
        // One lean keep-alive connection per worker (see `RawHttp`), opened before the clock
        // starts.
        let mut conns = Vec::with_capacity(sizes.rest_concurrency.max(1));
        for _ in 0..sizes.rest_concurrency.max(1) {
            conns.push(Arc::new(tokio::sync::Mutex::new(backend.raw_connection().await?)));
        }
        let (b, s) = (backend.clone(), publish_stats.clone());
        let publish = hammer(sizes.rest_concurrency, duration, &publish_stats, move |n| {
            let (b, s) = (b.clone(), s.clone());
            // `hammer` numbers each worker's calls from worker * 1e9.
            let conn = conns[(n / 1_000_000_000) as usize % conns.len()].clone();
            async move { b.publish_on(&mut *conn.lock().await, "rest", &s.payload(size)).await }
        })
        .await;
        let publish_cpu = cpu.percent(&server.pids);
        let lat = publish_stats.percentiles();
        let mut metrics = vec![
            m("publish requests/s", publish.ok as f64 / publish.secs, "req/s", Some(true)),
            m("publish p50", lat.as_ref().map_or(0.0, |l| l.p50_ms), "ms", Some(false)),
            m("publish p99", lat.as_ref().map_or(0.0, |l| l.p99_ms), "ms", Some(false)),
            m("publish errors", (publish.failed + publish.limited) as f64, "", Some(false)),
            m("server CPU (publish)", publish_cpu, "% of a core", Some(false)),
        ];
        let mut errors: Vec<String> = publish.first_error.iter().map(|e| format!("first publish error: {e}")).collect();
        if kind == Kind::Aviary {
            let mint_stats = Stats::new();
            let b = backend.clone();
            let mint = hammer(sizes.rest_concurrency, duration, &mint_stats, move |n| {
                let b = b.clone();
                async move { b.mint_token(&format!("user-{n}")).await }
            })
            .await;
            let lat = mint_stats.percentiles();
            metrics.push(m("token mints/s", mint.ok as f64 / mint.secs, "req/s", Some(true)));
            metrics.push(m("token mint p99", lat.as_ref().map_or(0.0, |l| l.p99_ms), "ms", Some(false)));
            // The bench starts the control plane without request rate limits; a 429 here would
            // be a limiter working, not a failure.
            metrics.push(m("token mints refused by the rate limiter (429)", mint.limited as f64, "", None));
            metrics.push(m("token mint errors", mint.failed as f64, "", Some(false)));
            if let Some(e) = mint.first_error {
                errors.push(format!("first token mint error: {e}"));
            }
        }
        drop(server);
        Ok(Outcome {
            scenario: "rest",
            target: kind.label().to_owned(),
            metrics,
            latency: lat,
            series: Vec::new(),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        })
    })
    .await
}

async fn run_guarded(
    scenario: &'static str,
    target: String,
    fut: impl std::future::Future<Output = anyhow::Result<Outcome>>,
) -> Outcome {
    eprintln!("[aviary-bench] {scenario} / {target}: running");
    let outcome = match fut.await {
        Ok(o) => o,
        Err(e) => Outcome::failed(scenario, target.clone(), &e),
    };
    match &outcome.error {
        Some(e) => eprintln!("[aviary-bench] {scenario} / {target}: {e}"),
        None => eprintln!("[aviary-bench] {scenario} / {target}: done"),
    }
    // Let the killed server's sockets leave the table before the next server starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    outcome
}
