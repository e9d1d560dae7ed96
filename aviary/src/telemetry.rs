//! Process-wide observability: the tracing subscriber and the Prometheus recorder.
//!
//! Both are global by nature (one per process), so they are installed once here, in the
//! binary, and never by the libraries, which only emit through `tracing` and `metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the tracing subscriber. `filter` is an `EnvFilter` directive such as `info` or
/// `aviary_data_plane=debug,info`.
pub fn init_tracing(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests embedding the binary's code) is harmless.
    let _ = result;
}

/// Gives every series a `# HELP` line (aviary/tests/cluster.rs fails on one without).
fn describe() {
    aviary_data_plane::metrics::describe();
    aviary_control_plane::metrics::describe();
    aviary_broker::redis::describe_metrics();
    crate::serve::describe_metrics();
}

/// The Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
            .expect("static bucket list is valid")
            .install_recorder()
            .expect("the Prometheus recorder is installed once per process");
        describe();
        let upkeep = handle.clone();
        // Histograms drain on render; periodic upkeep bounds memory between scrapes.
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("spawning a thread at start-up succeeds");
        handle
    })
}
