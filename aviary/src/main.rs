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
mod forwarded;
mod nodes;
mod ops;
mod private_file;
mod serve;
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

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
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
