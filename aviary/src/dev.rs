//! `aviary dev`: control plane, data plane and demo in one process, on the embedded SQLite store
//! and the in-process broker.
//!
//! The control plane writes config straight into the `Registry` the data plane reads, so a key
//! revoked through the API closes its connections at once, with no network hop in between.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use aviary_broker::memory::MemoryBroker;
use aviary_control_plane::{ControlPlaneConfig, ControlPlaneState};
use aviary_core::Registry;
use aviary_core::sealing::SecretBox;
use aviary_core::usage::UsageRecord;
use aviary_data_plane::DataPlane;
use aviary_follower::{UsageReporter, UsageSink};
use rand::RngCore;

use crate::args::DevArgs;
use crate::nodes::{self, Servers};

/// Runs until SIGTERM / Ctrl-C, then drains.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Certificate problems stop the start before anything is created.
    let tls = args.tls.load()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    // An empty AVIARY_OPERATOR_TOKEN counts as unset: never run with an empty secret.
    let configured_token = args.operator_token.clone().filter(|t| !t.trim().is_empty());
    let (operator_token, token_origin) = match configured_token.clone() {
        Some(token) => (token, TokenOrigin::Environment),
        None => load_or_create_operator_token(&args.data_dir)?,
    };
    let store = aviary_control_plane::open_dev_store(&args.data_dir).await?;
    let registry = Arc::new(Registry::new());
    let mut cp_config = ControlPlaneConfig::new(&operator_token);
    cp_config.rate_limits = args.rate_limits.config();
    cp_config.webhook_allow_private_targets = args.webhook_allow_private_targets;
    let credentials_key = match args.credentials_key.clone().filter(|k| !k.trim().is_empty()) {
        Some(key) => key,
        None => load_or_create_credentials_key(&args.data_dir)?,
    };
    cp_config.credentials_key = Some(Arc::new(SecretBox::parse(&credentials_key)?));
    // Webhooks in memory: the queue does not survive a restart of `aviary dev`. The control
    // plane tests endpoints and reads attempts through the same ledger the node delivers with.
    let webhook_config = args.webhooks.config(args.webhook_allow_private_targets);
    let ledger: Arc<dyn aviary_broker::webhooks::WebhookLedger> =
        Arc::new(aviary_broker::webhooks::memory::MemoryLedger::new());
    cp_config.webhook_deliveries =
        Some(Arc::new(aviary_data_plane::webhooks::attempts::Attempts::new(ledger.clone(), &webhook_config)));
    let control_plane = ControlPlaneState::new(store, registry.clone(), cp_config).await?;
    let demo = match control_plane.bootstrap_demo().await? {
        Some(created) => {
            let app = crate::demo::remember(&args.data_dir, &created)?;
            print_first_start(&created);
            Some(app)
        }
        None => crate::demo::recall(&args.data_dir),
    };

    let shutdown = crate::shutdown::on_signal();
    let broker = Arc::new(MemoryBroker::new());
    let data_plane = DataPlane::new(
        registry,
        broker,
        control_plane.api_key_authority(),
        nodes::data_plane_config(&args.node),
        shutdown.child_token(),
    );
    data_plane.start_webhooks(ledger, webhook_config)?;

    // Usage goes into the same store and API as in a cluster, through the same ingestion path.
    let reporter = UsageReporter::spawn(
        data_plane.usage_meter().clone(),
        Arc::new(InProcessUsage(control_plane.clone())),
        "dev".to_owned(),
        std::time::Duration::from_secs(args.usage_interval_s.max(1)),
    );
    let http = nodes::ops_router(Some(&control_plane), Some(&data_plane), Vec::new())
        .merge(crate::console::router())
        .merge(aviary_control_plane::api::router(control_plane.clone()))
        .merge(data_plane.router())
        .merge(crate::demo::router(control_plane.clone(), demo))
        // Every route, the pages' included: a wrong method is a 405 problem with `Allow`.
        .method_not_allowed_fallback(aviary_data_plane::error::method_not_allowed);
    let servers = Servers::bind(
        args.listen,
        Some(args.grpc_listen),
        crate::args::metrics_listen(args.metrics_listen, args.listen),
    )
    .await?
    .with_tls(tls);
    print_banner(
        servers.scheme(),
        servers.http_addr,
        servers.grpc_addr,
        servers.metrics_addr,
        &operator_token,
        token_origin,
        &args.data_dir,
    );
    let served = servers.serve(http, Some(control_plane), Some(data_plane), shutdown, &args.http_limits).await;
    reporter.stop().await;
    served
}

/// Where the operator token came from, which decides what the banner shows of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenOrigin {
    /// `AVIARY_OPERATOR_TOKEN`: the operator already has it.
    Environment,
    /// Created by this start: shown once, like the demo's secrets.
    Created,
    /// Read from the data dir, where an earlier start created it: not shown again.
    DataDir,
}

fn load_or_create_operator_token(data_dir: &Path) -> anyhow::Result<(String, TokenOrigin)> {
    let path = data_dir.join("operator-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            return Ok((token, TokenOrigin::DataDir));
        }
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!("avo_{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>());
    crate::private_file::write(&path, token.as_bytes())?;
    Ok((token, TokenOrigin::Created))
}

/// Usage reported in process: the ingestion the `ReportUsage` RPC runs, without the network.
struct InProcessUsage(ControlPlaneState);

#[async_trait::async_trait]
impl UsageSink for InProcessUsage {
    async fn report(&self, node_id: &str, seq: u64, records: &[UsageRecord]) -> aviary_follower::Result<()> {
        self.0
            .ingest_usage(node_id, seq, records)
            .await
            .map(|_| ())
            .map_err(|e| aviary_follower::Error::Upstream(e.to_string()))
    }
}

/// The key sealing Pusher secrets in the dev store, created once beside it.
fn load_or_create_credentials_key(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("credentials-key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        let key = key.trim().to_owned();
        if !key.is_empty() {
            return Ok(key);
        }
    }
    let key = SecretBox::generate_hex();
    crate::private_file::write(&path, key.as_bytes())?;
    Ok(key)
}

// The banner is for the person at the terminal, so it goes to stdout, never to the log.
fn print_banner(
    scheme: &str,
    http: SocketAddr,
    grpc: Option<SocketAddr>,
    metrics: SocketAddr,
    operator_token: &str,
    token_origin: TokenOrigin,
    data_dir: &Path,
) {
    println!();
    println!("  Aviary dev is running");
    let ws = if scheme == "https" { "wss" } else { "ws" };
    println!("  demo chat      {scheme}://{http}/");
    println!("  admin console  {scheme}://{http}/console   (sign in with the admin key or the operator token)");
    println!("  REST API       {scheme}://{http}/v1   (reference: {scheme}://{http}/docs)");
    println!("  WebSocket      {ws}://{http}/v1/connect");
    if let Some(grpc) = grpc {
        println!("  gRPC           {scheme}://{grpc}");
    }
    println!("  metrics        http://{metrics}/metrics   (operators only: every tenant's series)");
    // Printed when created only, like every other secret: a terminal log or a screen share of
    // a later start does not show it.
    let kept = data_dir.join("operator-token");
    match token_origin {
        TokenOrigin::Created => {
            println!("  operator token {operator_token}   (shown once; kept in {})", kept.display());
        }
        TokenOrigin::DataDir => println!("  operator token in {}", kept.display()),
        TokenOrigin::Environment => println!("  operator token (from AVIARY_OPERATOR_TOKEN)"),
    }
    println!();
    println!("listening on {scheme}://{http}");
    let _ = std::io::stdout().flush();
}

fn print_first_start(created: &aviary_control_plane::DemoCredentials) {
    println!();
    println!("  First start: created the demo tenant, app and API key. These secrets are shown once.");
    println!("  tenant id      {}", created.tenant_id);
    println!("  admin key      {}", created.admin_key);
    println!("  app id         {}", created.app_id);
    println!("  API key        {}", created.api_key);
}
