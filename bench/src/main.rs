//! `aviary-bench`: the load generator behind docs/benchmarks.md. It starts the servers under
//! test itself (Aviary, Sockudo, the Socket.io peer), drives each scenario for a bounded time
//! from many loopback connections, and writes JSON, a markdown table and SVG charts.
//!
//! Only 127.0.0.0/8 is ever targeted: every server it talks to is a child it started.

mod client;
mod report;
mod scenarios;
mod servers;
mod spawn;
mod stats;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};

use client::Kind;
use scenarios::{Outcome, Sizes};
use servers::Binaries;

#[derive(Debug, Parser)]
#[command(name = "aviary-bench", about = "Load generator for Aviary and its peers (Sockudo, Socket.io) on loopback.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Servers to measure, side by side, in this order.
    #[arg(long, value_delimiter = ',', default_value = "aviary,sockudo,socketio", global = true)]
    targets: Vec<Kind>,
    /// Directory for results.json and results.md.
    #[arg(long, default_value = "bench-results", global = true)]
    out: PathBuf,
    /// Directory for the SVG charts (defaults to --out).
    #[arg(long, global = true)]
    charts: Option<PathBuf>,
    #[command(flatten)]
    bins: Binaries,
    #[command(flatten)]
    sizes: Sizes,
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum Command {
    /// A few seconds at tiny sizes against `aviary dev` (and multi-node over 2 nodes of each peer
    /// that is installed, with Redis up); fails unless every publication reached every subscriber.
    /// With an explicit `--targets` (e.g. `--targets aviary-pusher`), scenarios 1–4 against those
    /// targets only, without multi-node.
    Smoke,
    /// Scenario 1: idle connections (RSS per connection, connect rate).
    Idle,
    /// Scenario 2: one channel, many subscribers, fixed publish rate.
    Fanout,
    /// Scenario 3: rooms of --room-size, each connection publishing once a second.
    Rooms,
    /// Scenario 4: REST publish and token mint throughput.
    Rest,
    /// Scenario 5: scenario 2 over --nodes nodes of each target joined through Redis.
    Multinode,
    /// Every scenario, every target, in one run.
    All,
}

/// Lets one process hold tens of thousands of sockets (children inherit the limit).
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let fds = raise_fd_limit();
    eprintln!("[aviary-bench] open-file limit {fds}");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(&mut cli))
}

async fn run(cli: &mut Cli) -> anyhow::Result<()> {
    let started_at = now_rfc3339();
    let smoke = matches!(cli.command, Command::Smoke);
    // `--targets` given on the command line (its default lists every peer).
    let targets_given = std::env::args().any(|a| a == "--targets" || a.starts_with("--targets="));
    if smoke {
        if !targets_given {
            cli.targets = vec![Kind::Aviary];
        }
        cli.sizes = Sizes {
            idle_connections: 50,
            fanout_subscribers: 20,
            fanout_rate: 20,
            fanout_duration_s: 1,
            rooms_connections: 20,
            room_size: 10,
            rooms_duration_s: 2,
            rest_duration_s: 1,
            rest_concurrency: 4,
            nodes: 2,
            payload_bytes: 32,
            sources: 2,
            connect_concurrency: 20,
            drain_s: 10,
        };
    }
    let (bins, sizes) = (&cli.bins, &cli.sizes);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let wants = |c: Command| {
        matches!(cli.command, Command::All | Command::Smoke)
            || std::mem::discriminant(&cli.command) == std::mem::discriminant(&c)
    };
    if wants(Command::Idle) {
        for &k in &cli.targets {
            outcomes.push(scenarios::idle(k, bins, sizes).await);
        }
    }
    if wants(Command::Fanout) {
        for &k in &cli.targets {
            outcomes.push(scenarios::fanout(k, bins, sizes).await);
        }
    }
    if wants(Command::Rooms) {
        for &k in &cli.targets {
            outcomes.push(scenarios::rooms(k, bins, sizes).await);
        }
    }
    if wants(Command::Rest) {
        for &k in &cli.targets {
            outcomes.push(scenarios::rest(k, bins, sizes).await);
        }
    }
    if wants(Command::Multinode) {
        let targets = match (smoke, targets_given) {
            (true, true) => Vec::new(),
            (true, false) => smoke_multinode_targets(bins).await,
            (false, _) => cli.targets.clone(),
        };
        for k in targets {
            outcomes.push(scenarios::multinode(k, bins, sizes).await);
        }
    }
    let charts = cli.charts.clone().unwrap_or_else(|| cli.out.clone());
    report::write(&cli.out, &charts, &started_at, sizes, &outcomes)?;
    print!("{}", report::markdown(&outcomes, &charts, &cli.out));
    if smoke {
        check_smoke(&outcomes)?;
        eprintln!("[aviary-bench] smoke: every publication reached every subscriber");
    }
    Ok(())
}

/// The peers the smoke run also drives over several nodes: those installed (the Socket.io peer
/// with its Redis adapter, a Sockudo binary), when Redis answers. Aviary's cluster needs Postgres
/// too and is left to `multinode`.
async fn smoke_multinode_targets(bins: &Binaries) -> Vec<Kind> {
    // redis://[user:password@]host:port[/db]
    let authority = bins.redis.trim_start_matches("redis://").split('/').next().unwrap_or_default();
    let redis = authority.rsplit('@').next().unwrap_or_default().to_owned();
    let redis_up = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::TcpStream::connect(&redis)).await,
        Ok(Ok(_))
    );
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    if !redis_up {
        skipped.push(format!("every peer (Redis at {} does not answer)", bins.redis));
    } else {
        if servers::find_binary(&bins.sockudo_bin).is_some() {
            targets.push(Kind::Sockudo);
        } else {
            skipped.push(format!("Sockudo ({} not found)", bins.sockudo_bin.display()));
        }
        if bins.socketio_dir.join("node_modules/@socket.io/redis-adapter").is_dir() {
            targets.push(Kind::Socketio);
        } else {
            skipped.push(format!("Socket.io (no npm ci in {})", bins.socketio_dir.display()));
        }
    }
    for s in skipped {
        eprintln!("[aviary-bench] smoke: multi-node skips {s}");
    }
    targets
}

/// The smoke run passes when nothing failed and nothing was lost.
fn check_smoke(outcomes: &[Outcome]) -> anyhow::Result<()> {
    for o in outcomes {
        if let Some(e) = &o.error {
            bail!("{} / {}: {e}", o.scenario, o.target);
        }
        for name in [
            "lost",
            "connections failed or dropped",
            "failed connects",
            "publish errors",
            "token mint errors",
            "publications refused",
        ] {
            if let Some(v) = o.metric(name)
                && v > 0.0
            {
                bail!("{} / {}: {name} = {v}", o.scenario, o.target);
            }
        }
        if let Some(d) = o.metric("deliveries")
            && d == 0.0
        {
            bail!("{} / {}: nothing was delivered", o.scenario, o.target);
        }
    }
    Ok(())
}

fn now_rfc3339() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output();
    out.ok().and_then(|o| String::from_utf8(o.stdout).ok()).map(|s| s.trim().to_owned()).unwrap_or_default()
}
