//! `aviary`: one binary for every role.
//!
//! - `aviary dev`: control plane, data plane and demo in one process on an embedded SQLite store
//!   and the in-process broker. Zero setup.
//! - `aviary control-plane`: the REST + gRPC API on Postgres.
//! - `aviary data-plane`: a stateless node browsers connect to.
//! - `aviary migrate`: applies the Postgres migrations and exits.
//! - `aviary config check`, `token`, `completions`, `healthcheck`: operator tools ([`cli`]).
//!
//! Every flag is also an `AVIARY_*` environment variable and a key of the `--config` file.
//! This file only parses arguments and dispatches; each role's wiring lives in its own module.

mod args;
mod cli;
mod console;
mod demo;
mod dev;
mod forwarded;
mod nodes;
mod ops;
mod private_file;
mod serve;
mod shutdown;
mod telemetry;
mod tls;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::args::{Cli, Command, ConfigCommand};

// A node holds tens of thousands of connections, each a handful of small allocations, and the
// fan-out allocates and frees on different threads. mimalloc keeps both cheaper than the
// system allocator (per-connection memory and the delivery path measured in
// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process.
///
/// mimalloc asks for huge pages on its arenas, and returns memory it no longer uses to the
/// kernel after a short delay. With huge pages each re-use of such memory faults in and zeroes a
/// whole 2 MiB page: 13 % of the server's CPU while 19,000 clients connected, and 1.1 KiB more
/// resident memory per idle connection (docs/benchmarks.md, "Connect rate").
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only sets a flag on this
    // process's memory map; no pointer is passed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> anyhow::Result<ExitCode> {
    disable_transparent_huge_pages();
    let argv: Vec<_> = std::env::args_os().collect();
    // Before clap and before any thread: the file's values become unset AVIARY_* variables.
    let applied = cli::config_file::apply(&argv).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    });
    let matches = Cli::command().get_matches_from(&argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Operator tools: no logging set-up (their stdout is their answer), no metrics.
    match cli.command {
        Command::Config(ConfigCommand::Check { ref role }) => {
            return Ok(cli::check::run(&cli, role, &matches, &applied));
        }
        Command::Completions(args) => {
            cli::completions::print(args.shell);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Token(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(cli::token::run(args))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Healthcheck(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            return Ok(runtime.block_on(cli::healthcheck::run(args)));
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let otlp = match &cli.command {
        Command::Dev(args) => otlp_export(&args.traces, "dev"),
        Command::ControlPlane(args) => otlp_export(&args.traces, "control-plane"),
        Command::DataPlane(args) => otlp_export(&args.traces, "data-plane"),
        _ => None,
    };
    let traces = telemetry::init_tracing(&cli.log, cli.log_format, otlp, runtime.handle())?;
    // Install the recorder before anything emits a metric, or early counts would be lost.
    telemetry::prometheus();
    let served = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::ControlPlane(args) => nodes::run_control_plane(args).await,
            Command::DataPlane(args) => nodes::run_data_plane(args).await,
            Command::Migrate(args) => nodes::migrate(args).await,
            Command::Config(_) | Command::Token(_) | Command::Completions(_) | Command::Healthcheck(_) => {
                unreachable!("operator tools return above")
            }
        }
    });
    // The last spans are exported on the runtime, which still runs; this thread is none of its
    // workers, so blocking here is safe.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Where a server role sends its spans, when `--otlp-endpoint` says so.
fn otlp_export(args: &args::TraceArgs, role: &'static str) -> Option<telemetry::OtlpExport> {
    let endpoint = args.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty())?;
    Some(telemetry::OtlpExport { endpoint: endpoint.to_owned(), role })
}
