//! `aviary`: one binary for every role.
//!
//! - `aviary dev`: control plane, data plane and demo in one process on an embedded SQLite store
//!   and the in-process broker. Zero setup.
//! - `aviary control-plane`: the REST + gRPC API on Postgres.
//! - `aviary data-plane`: a stateless node browsers connect to.
//! - `aviary migrate`: applies the Postgres migrations and exits.
//!
//! Every flag is also an `AVIARY_*` environment variable. This file only parses arguments and
//! dispatches; each role's wiring lives in its own module.

mod args;
mod console;
mod demo;
mod dev;
mod nodes;
mod ops;
mod shutdown;
mod telemetry;

use clap::Parser;

use crate::args::{Cli, Command};

// A node holds tens of thousands of connections, each a handful of small allocations, and the
// fan-out allocates and frees on different threads. mimalloc keeps both cheaper than the
// system allocator (per-connection memory and the delivery path measured in
// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing(&cli.log, cli.log_format);
    // Install the recorder before anything emits a metric, or early counts would be lost.
    telemetry::prometheus();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::ControlPlane(args) => nodes::run_control_plane(args).await,
            Command::DataPlane(args) => nodes::run_data_plane(args).await,
            Command::Migrate(args) => nodes::migrate(args).await,
        }
    })
}
