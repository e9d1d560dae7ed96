//! Process-wide observability: the tracing subscriber, the OpenTelemetry span exporter and the
//! Prometheus recorder.
//!
//! All are global by nature (one per process), so they are installed once here, in the
//! binary, and never by the libraries, which only emit through `tracing` and `metrics`.
//!
//! # Traces
//! With `--otlp-endpoint`, the spans of the Aviary crates (connection, connect, subscribe,
//! publish, fan_out, issue_token, config stream; docs/deploying.md lists them and their
//! attributes) go to an OpenTelemetry collector over OTLP/HTTP in protobuf, batched by the SDK's
//! batch processor (tuned with the standard `OTEL_BSP_*` variables) and flushed at shutdown. The
//! export has its own filter, apart from `--log`: every Aviary span at `debug` or above, no
//! events, nothing of other crates. The hot-path spans (publish, fan_out) are at `debug`, so
//! with the default `--log info` and no endpoint their call sites are disabled once and cost
//! a relaxed load each, nothing is allocated.

use std::sync::OnceLock;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Where spans go: the collector's OTLP/HTTP base URL and who this process is.
#[derive(Debug, Clone)]
pub struct OtlpExport {
    /// `--otlp-endpoint`, e.g. `http://otel-collector:4318`; spans are sent to its `/v1/traces`.
    pub endpoint: String,
    /// `dev`, `control-plane` or `data-plane`: the `aviary.role` resource attribute.
    pub role: &'static str,
}

/// The span exporter of a process started with `--otlp-endpoint`.
#[must_use = "spans still queued are lost unless the exporter is shut down"]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Exports the spans still queued and stops the exporter. Blocks: call it from outside the
    /// runtime's workers while the runtime still runs (the export is a task on it).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: exporting the last spans failed: {e}");
        }
    }
}

/// Installs the tracing subscriber: log lines filtered by `filter` (an `EnvFilter` directive such
/// as `info` or `aviary_data_plane=debug,info`), and with `otlp` the span exporter, whose
/// requests run on `runtime`.
pub fn init_tracing(
    filter: &str,
    format: LogFormat,
    otlp: Option<OtlpExport>,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Option<Traces>> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().flatten_event(true).boxed(),
    }
    .with_filter(filter);
    let (spans, traces) = match otlp {
        Some(otlp) => {
            let provider = tracer_provider(&otlp, runtime)?;
            let tracer = provider.tracer("aviary");
            let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(
                tracing_subscriber::filter::filter_fn(|meta| {
                    meta.is_span() && meta.target().starts_with("aviary") && *meta.level() <= tracing::Level::DEBUG
                }),
            );
            (Some(layer), Some(Traces { provider }))
        }
        None => (None, None),
    };
    // A second init (tests embedding the binary's code) is harmless.
    let _ = tracing_subscriber::registry().with(logs).with(spans).try_init();
    Ok(traces)
}

fn tracer_provider(otlp: &OtlpExport, runtime: &tokio::runtime::Handle) -> anyhow::Result<SdkTracerProvider> {
    let base = otlp.endpoint.trim_end_matches('/');
    let endpoint = if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") };
    let client = RuntimeClient { client: reqwest::Client::new(), runtime: runtime.clone() };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(&endpoint)
        .with_http_client(client)
        .build()
        .with_context(|| format!("--otlp-endpoint {}", otlp.endpoint))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("aviary")
        .with_attribute(opentelemetry::KeyValue::new("aviary.role", otlp.role))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The exporter's HTTP client: reqwest, on the process's runtime. The SDK's batch processor
/// exports from a thread of its own where no runtime runs, and reqwest needs one, so each
/// request is spawned onto the runtime and awaited from that thread.
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime.spawn(async move { client.send_bytes(request).await }).await?
    }
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
