//! `aviary-chaos`: starts a real Aviary cluster on this machine (its own redis-server, the
//! control plane on a fresh Postgres database, K data-plane nodes behind TCP proxies it
//! controls), runs a resuming subscriber / retrying publisher workload through the proxies,
//! injects the faults a seed picks, and checks every delivery against an oracle.
//! Exits 0 when every invariant held, 1 on a violation (printing the seed, the schedule and the
//! first diverging event), 2 when the run itself could not be carried out. See docs/chaos.md.

mod cluster;
mod faults;
mod oracle;
mod proxy;
mod rng;
mod schedule;
#[path = "../spawn.rs"]
mod spawn;
mod sse;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use parking_lot::Mutex;

use crate::cluster::Cluster;
use crate::proxy::Proxy;
use crate::workload::Shared;

#[derive(Debug, Parser)]
#[command(name = "aviary-chaos", about = "Seeded fault injection against a real Aviary cluster, checked by an oracle")]
struct Args {
    /// Picks the fault schedule: the same seed replays the same schedule.
    #[arg(long)]
    seed: u64,
    /// Seconds of faults under load (then the cluster heals and the oracle settles).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Data-plane nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The `aviary` binary; default: the one next to this executable, else target/{release,debug}/aviary.
    #[arg(long, env = "AVIARY_CHAOS_AVIARY_BIN")]
    aviary_bin: Option<PathBuf>,
    /// Postgres server (a fresh database is created in it and dropped after).
    #[arg(long, env = "AVIARY_CHAOS_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// WebSocket subscribers (each on every channel).
    #[arg(long, default_value_t = 6)]
    subscribers: usize,
    /// SSE subscribers (each on every channel, resuming with `Last-Event-ID`).
    #[arg(long, default_value_t = 2)]
    sse_subscribers: usize,
    /// REST publishers.
    #[arg(long, default_value_t = 3)]
    publishers: usize,
    /// Channels.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Pause between two publications of one publisher, in milliseconds.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// A subscriber that receives nothing (not even a ping) for this long reconnects, in seconds.
    /// The server pings every 25 s, so by default a connection that stays up but stops
    /// delivering is never rescued by the client: the oracle sees what a real client would miss.
    #[arg(long, default_value_t = 60)]
    idle_s: u64,
    /// Bound on the healing phase (publishers' last retries, subscribers catching up), in seconds.
    #[arg(long, default_value_t = 120)]
    settle_s: u64,
    /// Lifetime of odd-numbered subscribers' tokens, in seconds: they expire mid-stream (4002)
    /// and the subscriber fetches a new one and resumes.
    #[arg(long, default_value_t = 8)]
    token_ttl_s: u64,
    /// Print the seed's fault schedule and exit without starting anything.
    #[arg(long)]
    schedule_only: bool,
}

fn aviary_bin(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(bin) = given {
        return Ok(bin);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.to_path_buf())) {
        candidates.push(dir.join("aviary"));
    }
    candidates.push(PathBuf::from("target/release/aviary"));
    candidates.push(PathBuf::from("target/debug/aviary"));
    candidates.into_iter().find(|c| c.is_file()).context("no aviary binary found: build it or pass --aviary-bin")
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread: every child is spawned from the thread that lives as long as the runner, so
    // PR_SET_PDEATHSIG (tied to the spawning thread) fires only when the runner dies.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        tokio::select! {
            code = run(&args) => code,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("aviary-chaos: interrupted (seed {})", args.seed);
                ExitCode::from(130)
            }
        }
    });
    // Dropping the runtime drops every task, and with them the cluster and its children.
    drop(rt);
    code
}

/// Bound on presence matching the live connections: the 25 s presence TTL, the sweep, slack.
const PRESENCE_BOUND: Duration = Duration::from_secs(45);

/// No ghosts: the presence channel's members become exactly the connections that entered it
/// and are up (a SIGKILLed node's entries expire with the TTL; Redis restarts lose entries that
/// the nodes' refresh must put back). Polled, as subscribers with short tokens keep reconnecting.
async fn check_presence(shared: &Shared) {
    let started = Instant::now();
    let mut last = String::new();
    let mut via = 0;
    while started.elapsed() < PRESENCE_BOUND {
        let expected = shared.oracle.lock().live_members();
        match workload::presence_members(shared, via).await {
            Ok(members) if members == expected && expected == shared.oracle.lock().live_members() => {
                let mut oracle = shared.oracle.lock();
                oracle.counts.presence_members = members.len() as u64;
                oracle.counts.presence_settle_ms = started.elapsed().as_millis() as u64;
                oracle.counts.invariants_checked += 1;
                return;
            }
            Ok(members) => {
                let ghosts: Vec<_> = members.difference(&expected).collect();
                let missing: Vec<_> = expected.difference(&members).collect();
                last = format!("ghosts {ghosts:?}, live members missing {missing:?}");
            }
            Err(e) => last = format!("{e:#}"),
        }
        via += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut oracle = shared.oracle.lock();
    if oracle.violation.is_none() {
        oracle.violation = Some(format!(
            "presence of {} still differs from the live connections after {PRESENCE_BOUND:?}: {last}",
            workload::PRESENCE_CHANNEL
        ));
    }
}

/// Usage counts every publication once: once the nodes flushed (every second), the usage API's
/// `messages_published` equals the publications the oracle knows the broker made (an idempotent
/// retry is not one). A SIGKILLed node loses its unreported second, so with kills nothing is
/// asserted; after a Redis restart a publication may have been made in a lost epoch unseen, so
/// only the lower bound holds.
async fn check_usage(cluster: &Cluster, shared: &Shared, lossy: bool, redis_restarted: bool) {
    let made = shared.oracle.lock().publications_made();
    let never_acked = shared.oracle.lock().counts.never_acked;
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let Ok(totals) = cluster.usage().await else { continue };
        let now =
            (totals["messages_published"].as_u64().unwrap_or(0), totals["messages_delivered"].as_u64().unwrap_or(0));
        if last == Some(now) {
            break;
        }
        last = Some(now);
    }
    let (published, delivered) = last.unwrap_or_default();
    let mut oracle = shared.oracle.lock();
    oracle.counts.usage_published = published;
    oracle.counts.usage_delivered = delivered;
    oracle.counts.publications_made = made;
    if lossy {
        return;
    }
    let ok = if redis_restarted { published >= made } else { published >= made && published <= made + never_acked };
    oracle.counts.invariants_checked += 1;
    if !ok && oracle.violation.is_none() {
        oracle.violation = Some(format!(
            "usage API counts {published} publications, the oracle {made} ({never_acked} never acknowledged{})",
            if redis_restarted { ", Redis restarted: lower bound only" } else { "" }
        ));
    }
}

async fn run(args: &Args) -> ExitCode {
    match run_inner(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aviary-chaos: the run could not be carried out (seed {}): {e:#}", args.seed);
            ExitCode::from(2)
        }
    }
}

async fn run_inner(args: &Args) -> anyhow::Result<ExitCode> {
    if args.nodes == 0 || args.subscribers == 0 || args.publishers == 0 || args.channels == 0 {
        bail!("--nodes, --subscribers, --publishers and --channels must be at least 1");
    }
    let plan = schedule::plan(args.seed, Duration::from_secs(args.duration), args.nodes, args.subscribers);
    println!(
        "aviary-chaos seed {} duration {}s nodes {} subscribers {} (+{} SSE) publishers {} channels {}",
        args.seed, args.duration, args.nodes, args.subscribers, args.sse_subscribers, args.publishers, args.channels
    );
    println!("schedule ({} faults):", plan.len());
    for f in &plan {
        println!("  {f}");
    }
    if args.schedule_only {
        return Ok(ExitCode::SUCCESS);
    }
    let aviary = aviary_bin(args.aviary_bin.clone())?;
    let started = Instant::now();
    let mut cluster = Cluster::start(&aviary, &args.postgres, args.nodes).await?;
    let mut proxies = Vec::new();
    for node in &cluster.nodes {
        proxies.push(Proxy::start(node.addr).await?);
    }
    let channels: Vec<String> = (0..args.channels).map(|i| format!("chaos:c{i}")).collect();
    let shared = Arc::new(Shared {
        oracle: Mutex::new(oracle::Oracle::default()),
        stop_publishing: AtomicBool::new(false),
        stop_all: AtomicBool::new(false),
        proxies: proxies.iter().map(|p| p.addr).collect(),
        channels: channels.clone(),
        app_id: cluster.app_id.clone(),
        api_key: Mutex::new(cluster.api_key.clone()),
        control_plane: cluster.control_plane.clone(),
        control_plane_down: AtomicBool::new(false),
        idle: Duration::from_secs(args.idle_s),
        short_token_ttl: Duration::from_secs(args.token_ttl_s.max(1)),
    });
    // The oracle numbers WebSocket subscribers first, then SSE ones.
    let all_subscribers = args.subscribers + args.sse_subscribers;
    let subscribers: Vec<_> = (0..args.subscribers)
        .map(|s| tokio::spawn(workload::subscriber(shared.clone(), s)))
        .chain((args.subscribers..all_subscribers).map(|s| tokio::spawn(sse::subscriber(shared.clone(), s))))
        .collect();
    // Nodes load the new app from the control plane; wait until every subscriber is on.
    let expected = (all_subscribers * args.channels) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.oracle.lock().counts.subscribes < expected {
        if Instant::now() > deadline {
            bail!("subscribers not all subscribed within 120 s (logs in {})", cluster.scratch.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("cluster up in {:.1}s; logs in {}", started.elapsed().as_secs_f64(), cluster.scratch.display());
    let publishers: Vec<_> = (0..args.publishers)
        .map(|p| tokio::spawn(workload::publisher(shared.clone(), p, Duration::from_millis(args.interval_ms))))
        .collect();

    // Faults under load, stopped early by a violation.
    let stop_faults = AtomicBool::new(false);
    let violated = async {
        loop {
            if shared.oracle.lock().violation.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let injected = tokio::select! {
        r = faults::run(&mut cluster, &proxies, &plan, &stop_faults, &shared) => Some(r?),
        _ = violated => None,
    };
    stop_faults.store(true, Ordering::Relaxed);

    // Heal: publishers finish their retries, subscribers catch up.
    shared.stop_publishing.store(true, Ordering::Relaxed);
    let settle_deadline = Instant::now() + Duration::from_secs(args.settle_s);
    for p in publishers {
        let left = settle_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, p).await.is_err() {
            break;
        }
    }
    while shared.oracle.lock().violation.is_none()
        && shared.oracle.lock().uncovered(all_subscribers).is_some()
        && Instant::now() < settle_deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if shared.oracle.lock().violation.is_none() {
        check_presence(&shared).await;
    }
    shared.stop_all.store(true, Ordering::Relaxed);
    if shared.oracle.lock().violation.is_none() {
        let lossy = injected
            .as_ref()
            .is_none_or(|i| i.contains_key(&schedule::Kind::KillRestart) || plan.iter().any(|f| f.node_restart));
        let restarts = injected.as_ref().is_some_and(|i| i.contains_key(&schedule::Kind::RedisRestart));
        check_usage(&cluster, &shared, lossy, restarts).await;
    }
    if let Some(crash) = cluster.crashed() {
        let mut oracle = shared.oracle.lock();
        if oracle.violation.is_none() {
            oracle.violation = Some(crash);
        }
    }
    let (violation, counts) = {
        let mut oracle = shared.oracle.lock();
        oracle.finish(all_subscribers);
        (oracle.violation.clone(), oracle.counts.clone())
    };
    for s in subscribers {
        s.abort();
    }
    let injected = injected.unwrap_or_default();
    println!("faults injected: {}", injected.values().sum::<u32>());
    for (kind, n) in &injected {
        println!("  {:<20} {n}", kind.label());
    }
    let c = &counts;
    println!(
        "publications: {} attempted, {} acknowledged, {} never acknowledged ({} of them delivered), {} retries",
        c.attempted, c.acked, c.never_acked, c.never_acked_delivered, c.publish_retries
    );
    println!(
        "deliveries: {}; subscribes: {} ({} resumed with recovery, {} with recovered:false); discontinuities: {}; republished after a lost stream: {}; disconnects: {} ({} after silence)",
        c.deliveries,
        c.subscribes,
        c.resumes_recovered,
        c.resumes_not_recovered,
        c.discontinuities,
        c.republished_after_loss,
        c.disconnects,
        c.idle_reconnects
    );
    println!(
        "credentials: {} closes for token expiry, {} for revocation, {} for an invalid token; {} publish attempts refused 401; {} publications acknowledged while the control plane was down",
        c.closed_token_expired,
        c.closed_revoked,
        c.closed_invalid_token,
        c.publish_unauthorized,
        c.acked_while_control_plane_down
    );
    println!(
        "presence: {} members equal to the live connections, {} ms after the run healed",
        c.presence_members, c.presence_settle_ms
    );
    println!(
        "usage: {} published and {} delivered in the usage API; {} publications made by the oracle's count, {} deliveries received",
        c.usage_published, c.usage_delivered, c.publications_made, c.deliveries
    );
    println!("node starts: {:?}", cluster.nodes.iter().map(|n| n.starts).collect::<Vec<_>>());
    println!("invariants checked: {}", c.invariants_checked);
    println!("elapsed: {:.1}s", started.elapsed().as_secs_f64());
    match violation {
        None if c.acked == 0 => {
            println!("FAIL seed {}: no publication was acknowledged", args.seed);
            Ok(ExitCode::from(1))
        }
        None => {
            println!("OK seed {}", args.seed);
            let _ = std::fs::remove_dir_all(&cluster.scratch);
            Ok(ExitCode::SUCCESS)
        }
        Some(v) => {
            println!("VIOLATION seed {}: {v}", args.seed);
            println!("replay: aviary-chaos --seed {} --duration {} --nodes {}", args.seed, args.duration, args.nodes);
            println!("schedule:");
            for f in &plan {
                println!("  {f}");
            }
            println!("node logs kept in {}", cluster.scratch.display());
            Ok(ExitCode::from(1))
        }
    }
}
