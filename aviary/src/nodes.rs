//! Wiring shared by every role: binding listeners, serving HTTP and gRPC until shutdown, the
//! operational routes, and the `control-plane`, `data-plane` and `migrate` subcommands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aviary_broker::Broker;
use aviary_broker::memory::MemoryBroker;
use aviary_broker::redis::RedisBroker;
use aviary_control_plane::{ControlPlaneConfig, ControlPlaneState};
use aviary_core::Registry;
use aviary_data_plane::{ClusterQuotas, DataPlane, DataPlaneConfig, LocalQuotas, QuotaEnforcer};
use aviary_follower::{
    ConfigFollower, ControlPlaneLink, FollowerConfig, GrpcUsageSink, RemoteApiKeyAuthority, UsageReporter,
};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::args::{ControlPlaneArgs, DataPlaneArgs, HttpLimits, MigrateArgs, NodeTuning};
use crate::forwarded::TrustedProxies;
use crate::ops::{Ops, ReadinessProbe};
use crate::serve::ConnectionPolicy;
use crate::tls::CertificateStore;

/// The OpenAPI document of everything Aviary serves over REST (both planes).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = aviary_control_plane::api::openapi();
    doc.merge(aviary_data_plane::openapi());
    doc.info.title = "Aviary".to_owned();
    doc.info.description = Some(
        "Control plane (tenants, apps, API keys, connection tokens) and data plane (publish, history, presence, \
         channels) REST APIs. Errors are RFC 9457 problem documents whose `type` is a stable URI \
         `https://aviary.dev/problems/<slug>`. Any request may be refused before it is read with 503 \
         `connection-refused` (`Retry-After: 1`): too many unauthenticated connections from its address or on \
         the node, or the node at its descriptor limit. Failed API key checks are limited per source address \
         and per key id (429 `rate-limited`). Idempotency keys are scoped to their publisher (a backend's to the \
         app, shared by its API keys); the same key with different data is 409 `conflict`. Resuming a subscription (WebSocket \
         `since`, SSE `Last-Event-ID`) without the `history` capability reaches back only to the token's issue \
         time. Publication and presence `data` may nest at most 64 arrays and objects deep (400 `bad-request`); a \
         channel's presence data is capped at 1 MiB in all, shared equally by its members (413 \
         `payload-too-large`). A known route asked with another method answers 405 `method-not-allowed` with \
         `Allow`; the `Bearer` scheme is case-insensitive. Slow consumers: a WebSocket or SSE client whose \
         outbound queue overflows, or that takes no data for `--write-timeout-s` (30 s), is closed with 4008 \
         (`disconnect` frame or event, best effort) and its connection freed. Metrics are not on this port: see \
         `--metrics-listen`. The WebSocket and SSE protocol is in docs/protocol.md."
            .to_owned(),
    );
    let server = |url: &str, description: &str| {
        utoipa::openapi::ServerBuilder::new().url(url).description(Some(description)).build()
    };
    doc.servers = Some(vec![
        server(
            "/",
            "The origin this document was fetched from: `aviary dev`, or the load balancer in front of a cluster \
             (infra/nginx.conf routes each operation to the plane that serves it).",
        ),
        server("http://127.0.0.1:8080", "`aviary dev` on its default address."),
    ]);
    doc
}

/// Data-plane settings from the command line.
pub fn data_plane_config(tuning: &NodeTuning) -> DataPlaneConfig {
    DataPlaneConfig {
        ws_heartbeat_interval: Duration::from_secs(tuning.heartbeat_s.max(1)),
        outbound_queue_capacity: tuning.outbound_queue.max(1),
        write_timeout: Duration::from_secs(tuning.write_timeout_s.max(1)),
        drain_deadline: Duration::from_secs(tuning.drain_deadline_s),
        presence_ttl: Duration::from_secs(tuning.presence_ttl_s.max(1)),
        ws_read_buffer_bytes: tuning.ws_read_buffer_bytes.clamp(512, 1024 * 1024),
        ..DataPlaneConfig::default()
    }
}

/// `/healthz`, `/readyz`, `/openapi.json`, `/docs`, with readiness checks for the
/// planes this process runs.
pub fn ops_router(
    control_plane: Option<&ControlPlaneState>,
    data_plane: Option<&DataPlane>,
    extra_checks: Vec<(&'static str, ReadinessProbe)>,
) -> Router {
    let mut checks: Vec<(&'static str, ReadinessProbe)> = extra_checks;
    if let Some(cp) = control_plane {
        let cp = cp.clone();
        checks.push((
            "store",
            Arc::new(move || {
                let cp = cp.clone();
                Box::pin(async move {
                    if cp.ready().await { Ok("reachable".to_owned()) } else { Err("unreachable".to_owned()) }
                })
            }),
        ));
    }
    if let Some(dp) = data_plane {
        let dp = dp.clone();
        checks.push((
            "data_plane",
            Arc::new(move || {
                let dp = dp.clone();
                Box::pin(async move {
                    if dp.is_draining() {
                        Err("draining".to_owned())
                    } else {
                        Ok(format!("{} connections, {} channels", dp.connection_count(), dp.channel_count()))
                    }
                })
            }),
        ));
    }
    crate::ops::router(Ops { checks, openapi: Arc::new(openapi()) })
}

/// Bound listeners of one process.
pub struct Servers {
    pub http_addr: SocketAddr,
    pub grpc_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    http: TcpListener,
    grpc: Option<TcpListener>,
    metrics: TcpListener,
    /// The certificate of the HTTP and gRPC listeners (`--tls-cert`); metrics stay plain.
    tls: Option<Arc<CertificateStore>>,
}

impl Servers {
    /// Binds the HTTP, metrics (and optionally gRPC) listeners; port 0 picks a free port.
    pub async fn bind(http: SocketAddr, grpc: Option<SocketAddr>, metrics: SocketAddr) -> anyhow::Result<Self> {
        let metrics =
            TcpListener::bind(metrics).await.with_context(|| format!("binding metrics listener on {metrics}"))?;
        let http = TcpListener::bind(http).await.with_context(|| format!("binding HTTP listener on {http}"))?;
        let grpc = match grpc {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.with_context(|| format!("binding gRPC listener on {addr}"))?)
            }
            None => None,
        };
        Ok(Servers {
            http_addr: http.local_addr()?,
            grpc_addr: grpc.as_ref().map(|g| g.local_addr()).transpose()?,
            metrics_addr: metrics.local_addr()?,
            http,
            grpc,
            metrics,
            tls: None,
        })
    }

    /// Serves the HTTP and gRPC listeners with TLS from `tls` (reloaded while serving).
    pub fn with_tls(mut self, tls: Option<Arc<CertificateStore>>) -> Self {
        self.tls = tls;
        self
    }

    /// `https` with TLS, else `http`: for the addresses a process prints.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves until `shutdown` is cancelled; then the data plane drains (clients are told to
    /// reconnect elsewhere) before the listeners close. HTTP goes through [`crate::serve`]
    /// (admission, header timeout, accept back-off).
    pub async fn serve(
        self,
        http: Router,
        control_plane: Option<ControlPlaneState>,
        data_plane: Option<DataPlane>,
        shutdown: CancellationToken,
        limits: &HttpLimits,
    ) -> anyhow::Result<()> {
        if let Some(tls) = &self.tls {
            tls.spawn_reloader(shutdown.clone());
        }
        let grpc_task = match (self.grpc, control_plane) {
            (Some(listener), Some(cp)) => {
                let stop = shutdown.clone();
                let resolve = crate::forwarded::ResolveClientLayer::new(limits.trusted_proxies());
                let server = tonic::transport::Server::builder()
                    .layer(resolve)
                    .add_routes(aviary_control_plane::grpc::grpc_router(cp));
                Some(match &self.tls {
                    None => {
                        let incoming = tokio_stream_listener(listener);
                        tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
                    }
                    Some(tls) => {
                        let incoming = crate::serve::tls_incoming(
                            listener,
                            tls.grpc_acceptor()?,
                            limits.header_timeout(),
                            stop.clone(),
                        );
                        tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
                    }
                })
            }
            _ => None,
        };
        let stop = shutdown.clone();
        let graceful = async move {
            stop.cancelled().await;
            if let Some(dp) = data_plane {
                let left = dp.drain().await;
                tracing::info!(closed_at_deadline = left, "data plane drained");
            }
        };
        // The metrics listener is loopback by default and small: its own admission, stopped
        // with the rest. Scrapers connect directly: no proxy is trusted there.
        let metrics_task = {
            let policy = ConnectionPolicy {
                trusted_proxies: Arc::new(TrustedProxies::default()),
                ..ConnectionPolicy::from_limits(limits)
            };
            let stop = shutdown.clone();
            tokio::spawn(crate::serve::serve_http(
                self.metrics,
                crate::ops::metrics_router(),
                policy,
                stop.cancelled_owned(),
            ))
        };
        let tls = self.tls.as_ref().map(|tls| tls.http_acceptor()).transpose()?;
        let policy = ConnectionPolicy { tls, ..ConnectionPolicy::from_limits(limits) };
        tracing::debug!(limits = ?policy.admission.limits(), trusted_proxies = ?policy.trusted_proxies, "connection admission");
        crate::serve::serve_http(self.http, http, policy, graceful).await.context("HTTP server failed")?;
        metrics_task.await.context("metrics server task panicked")?.context("metrics server failed")?;
        if let Some(task) = grpc_task {
            task.await.context("gRPC server task panicked")?.context("gRPC server failed")?;
        }
        Ok(())
    }
}

fn tokio_stream_listener(listener: TcpListener) -> tokio_stream::wrappers::TcpListenerStream {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

/// `aviary control-plane`.
pub async fn run_control_plane(args: ControlPlaneArgs) -> anyhow::Result<()> {
    // Certificate problems stop the start before anything else is opened.
    let tls = args.tls.load()?;
    let store = aviary_control_plane::open_store(&args.database_url, !args.no_migrate).await?;
    let registry = Arc::new(Registry::new());
    let mut config = ControlPlaneConfig::new(args.operator_token);
    config.node_token = args.node_token.filter(|t| !t.trim().is_empty());
    config.rate_limits = args.rate_limits.config();
    config.webhook_allow_private_targets = args.webhook_allow_private_targets;
    config.max_webhooks_per_tenant = args.max_webhooks_per_tenant;
    if let Some(key) = args.credentials_key.filter(|k| !k.trim().is_empty()) {
        config.credentials_key = Some(Arc::new(aviary_core::sealing::SecretBox::parse(&key)?));
    }
    // Webhook tests and delivery attempts: through the nodes' ledger when it is in Redis (so
    // every node's attempts are listed); without Redis only this process's test attempts.
    let webhook_config = aviary_data_plane::WebhookConfig {
        allow_private_targets: args.webhook_allow_private_targets,
        ..aviary_data_plane::WebhookConfig::default()
    };
    let ledger: Arc<dyn aviary_broker::webhooks::WebhookLedger> = if args.redis_urls.is_empty() {
        Arc::new(aviary_broker::webhooks::memory::MemoryLedger::new())
    } else {
        // The control plane reads and appends attempts only; it never holds shares or leases.
        Arc::new(aviary_broker::webhooks::redis::RedisLedger::new(
            &args.redis_urls,
            &args.redis_prefix,
            "control-plane",
            Duration::from_secs(60),
        )?)
    };
    config.webhook_deliveries =
        Some(Arc::new(aviary_data_plane::webhooks::attempts::Attempts::new(ledger, &webhook_config)));
    let control_plane = ControlPlaneState::new(store, registry, config).await?;
    // The console talks to the control-plane API, so it is served where that API is.
    let http = ops_router(Some(&control_plane), None, Vec::new())
        .merge(crate::console::router())
        .merge(aviary_control_plane::api::router(control_plane.clone()))
        .method_not_allowed_fallback(aviary_data_plane::error::method_not_allowed);
    let servers = Servers::bind(
        args.listen,
        Some(args.grpc_listen),
        crate::args::metrics_listen(args.metrics_listen, args.listen),
    )
    .await?
    .with_tls(tls);
    tracing::info!(http = %servers.http_addr, grpc = ?servers.grpc_addr, "control plane listening");
    let scheme = servers.scheme();
    if let Some(grpc) = servers.grpc_addr {
        println!("grpc on {scheme}://{grpc}");
    }
    println!("metrics on http://{}/metrics", servers.metrics_addr);
    println!("listening on {scheme}://{}", servers.http_addr);
    servers.serve(http, Some(control_plane), None, crate::shutdown::on_signal(), &args.http_limits).await
}

/// `aviary data-plane`: a stateless node. Its config streams from the control plane over gRPC
/// (and is cached on disk, so a restart during a control-plane outage still serves); tokens are
/// verified locally; API keys for the REST publish API are checked with the control plane and
/// cached; usage is reported every `--usage-interval-s`.
pub async fn run_data_plane(args: DataPlaneArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let link = control_plane_link(&args)?;
    let node_id = args.node_id.clone().unwrap_or_else(|| format!("node-{}", uuid::Uuid::new_v4().simple()));
    let registry = Arc::new(Registry::new());
    let follower = ConfigFollower::start(
        FollowerConfig::new(link.clone(), &args.node_token, &node_id, &args.cache_dir),
        registry.clone(),
    )?;
    if !follower.wait_for_config(Duration::from_secs(10)).await {
        tracing::warn!("no config yet (control plane unreachable and no cache): serving nothing until it arrives");
    }
    let api_keys = Arc::new(RemoteApiKeyAuthority::new(
        link.clone(),
        &args.node_token,
        Duration::from_secs(30),
        registry.clone(),
    )?);
    let shutdown = crate::shutdown::on_signal();
    let (broker, redis): (Arc<dyn Broker>, Option<Arc<RedisBroker>>) = if args.redis_urls.is_empty() {
        tracing::warn!("no --redis-url: using the in-process broker; this node cannot share channels with others");
        (Arc::new(MemoryBroker::new()), None)
    } else {
        let redis = Arc::new(RedisBroker::new(&args.redis_urls, &args.redis_prefix)?);
        (redis.clone(), Some(redis))
    };
    let config = DataPlaneConfig { node_id: node_id.clone(), ..data_plane_config(&args.node) };
    // With Redis, connection and message-rate quotas hold across all nodes, and channel
    // listings add up every node's subscribers.
    let quotas: Arc<dyn QuotaEnforcer> = if args.redis_urls.is_empty() {
        Arc::new(LocalQuotas::new())
    } else {
        Arc::new(ClusterQuotas::new(&args.redis_urls, &args.redis_prefix)?)
    };
    let data_plane = DataPlane::with_quotas(registry, broker, api_keys, config, shutdown.child_token(), quotas);
    if !args.redis_urls.is_empty() {
        data_plane.enable_cluster_channel_listing(&args.redis_urls, &args.redis_prefix)?;
    }
    // Webhooks: with Redis the ledger (transitions and the delivery queue) is shared and
    // durable; alone, in memory.
    let ledger: Arc<dyn aviary_broker::webhooks::WebhookLedger> = if args.redis_urls.is_empty() {
        Arc::new(aviary_broker::webhooks::memory::MemoryLedger::new())
    } else {
        let node_ttl = data_plane_config(&args.node).presence_ttl.max(aviary_data_plane::MIN_PRESENCE_TTL);
        Arc::new(aviary_broker::webhooks::redis::RedisLedger::new(
            &args.redis_urls,
            &args.redis_prefix,
            &node_id,
            node_ttl,
        )?)
    };
    data_plane.start_webhooks(ledger, args.webhooks.config(args.webhook_allow_private_targets))?;
    let reporter = UsageReporter::spawn(
        data_plane.usage_meter().clone(),
        Arc::new(GrpcUsageSink::new(link, &args.node_token)?),
        node_id,
        Duration::from_secs(args.usage_interval_s.max(1)),
    );

    let mut checks: Vec<(&'static str, ReadinessProbe)> = Vec::new();
    let follower = Arc::new(follower);
    checks.push((
        "config",
        Arc::new(move || {
            let status = follower.status();
            Box::pin(async move {
                let detail = serde_json::to_string(&status).unwrap_or_default();
                if status.has_config() { Ok(detail) } else { Err(detail) }
            })
        }),
    ));
    if let Some(redis) = redis {
        checks.push((
            "redis",
            Arc::new(move || {
                let redis = redis.clone();
                Box::pin(async move { redis.ping().await.map(|_| "reachable".to_owned()).map_err(|e| e.to_string()) })
            }),
        ));
    }
    let http = ops_router(None, Some(&data_plane), checks)
        .merge(data_plane.router())
        .fallback(aviary_data_plane::error::not_found)
        .method_not_allowed_fallback(aviary_data_plane::error::method_not_allowed);
    let servers = Servers::bind(args.listen, None, crate::args::metrics_listen(args.metrics_listen, args.listen))
        .await?
        .with_tls(tls);
    tracing::info!(http = %servers.http_addr, "data plane listening");
    println!("metrics on http://{}/metrics", servers.metrics_addr);
    println!("listening on {}://{}", servers.scheme(), servers.http_addr);
    let served = servers.serve(http, None, Some(data_plane), shutdown, &args.http_limits).await;
    // A last report, so a clean shutdown loses no usage.
    reporter.stop().await;
    served
}

/// How this node reaches the control plane: `--control-plane`, over TLS when it is `https://`
/// (trusting `--control-plane-ca`, else the system's roots).
fn control_plane_link(args: &DataPlaneArgs) -> anyhow::Result<ControlPlaneLink> {
    let link = ControlPlaneLink::from(args.control_plane.as_str());
    match &args.control_plane_ca {
        None => Ok(link),
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the control plane's CA {} (--control-plane-ca)", path.display()))?;
            crate::tls::parse_certificates(&pem, path).context("--control-plane-ca")?;
            Ok(link.with_ca_pem(pem)?)
        }
    }
}

/// `aviary migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    aviary_control_plane::migrate(&args.database_url).await?;
    println!("migrations applied");
    Ok(())
}
