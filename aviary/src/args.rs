//! Command-line arguments: one `clap` derive struct per subcommand, every flag also an
//! `AVIARY_*` environment variable, defaults that work for `aviary dev`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "aviary", version, about = "Aviary: multi-tenant real-time messaging over WebSocket and SSE.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter, e.g. `info` or `aviary_data_plane=debug,info`.
    #[arg(long, env = "AVIARY_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log line format.
    #[arg(long, env = "AVIARY_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// TOML file of flag values: keys are flag names without `--` (`listen = "0.0.0.0:8080"`),
    /// a `[data-plane]` (or `[dev]`, `[control-plane]`, ...) table applies to that command only.
    /// A flag on the command line, then an `AVIARY_*` variable, overrides the file; a key that
    /// is no flag is an error.
    #[arg(long, env = "AVIARY_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process on an embedded store and in-process broker: the zero-setup
    /// way to try Aviary. Serves a demo chat at http://127.0.0.1:8080/.
    Dev(DevArgs),
    /// The control plane: tenants, apps, API keys and connection tokens over REST and gRPC, on
    /// Postgres.
    ControlPlane(ControlPlaneArgs),
    /// A data-plane node: WebSocket/SSE connections, channels, presence and history.
    DataPlane(DataPlaneArgs),
    /// Applies the database migrations and exits.
    Migrate(MigrateArgs),
    /// Operator tools for the configuration (flags, `AVIARY_*` variables, `--config` file).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Mints a connection token with an API key through the control plane's REST API and
    /// prints it: for debugging a client without writing a backend.
    Token(TokenArgs),
    /// Prints a shell completion script, e.g. `aviary completions bash > /etc/bash_completion.d/aviary`.
    Completions(CompletionsArgs),
    /// Asks a running process's health endpoint and exits 0 when it answers 2xx: the image's
    /// HEALTHCHECK (the image has no curl).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Directory for the embedded store, the operator token and the demo credentials.
    #[arg(long, env = "AVIARY_DATA_DIR", default_value = "./.aviary")]
    pub data_dir: PathBuf,
    /// Address for all HTTP traffic: REST, WebSocket, SSE, demo page, console.
    #[arg(long, env = "AVIARY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address for the gRPC control-plane API.
    #[arg(long, env = "AVIARY_GRPC_LISTEN", default_value = "127.0.0.1:8071")]
    pub grpc_listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint. Its series name every tenant and app,
    /// so it is served apart from the public port, on loopback unless you choose otherwise.
    /// Default 127.0.0.1:9464, or 127.0.0.1:0 (any free port) when --listen has port 0.
    #[arg(long, env = "AVIARY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Operator token (administers tenants). Generated once and kept in the data dir if unset.
    #[arg(long, env = "AVIARY_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// Key sealing Pusher credential and webhook secrets in the store: 64 hex characters
    /// (`openssl rand -hex 32`). Generated once and kept in the data dir if unset.
    #[arg(long, env = "AVIARY_CREDENTIALS_KEY", hide_env_values = true)]
    pub credentials_key: Option<String>,
    /// Whether webhook URLs may point at loopback, private or link-local addresses. On by
    /// default in dev so receivers on this machine work; `--webhook-allow-private-targets false`
    /// refuses them as a production control plane does.
    #[arg(long, env = "AVIARY_WEBHOOK_ALLOW_PRIVATE_TARGETS", default_value_t = true,
        action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub webhook_allow_private_targets: bool,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// Seconds between usage reports into the usage API (billing figures).
    #[arg(long, env = "AVIARY_USAGE_INTERVAL_S", default_value_t = 10)]
    pub usage_interval_s: u64,
    #[command(flatten)]
    pub rate_limits: RateLimits,
    #[command(flatten)]
    pub node: NodeTuning,
    #[command(flatten)]
    pub http_limits: HttpLimits,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub traces: TraceArgs,
}

/// The control plane's request rate limits (token mints and every other authenticated call).
#[derive(Debug, Clone, Args)]
pub struct RateLimits {
    /// Requests per second one client address may make to the control-plane API (0: no
    /// per-address limit).
    #[arg(long, env = "AVIARY_RATE_LIMIT_PER_IP", default_value_t = 200)]
    pub rate_limit_per_ip: u32,
    /// Burst above the per-address rate.
    #[arg(long, env = "AVIARY_RATE_LIMIT_PER_IP_BURST", default_value_t = 400)]
    pub rate_limit_per_ip_burst: u32,
    /// Requests per second one API key may make, token mints included (0: no per-key limit).
    #[arg(long, env = "AVIARY_RATE_LIMIT_PER_KEY", default_value_t = 100)]
    pub rate_limit_per_key: u32,
    /// Burst above the per-key rate.
    #[arg(long, env = "AVIARY_RATE_LIMIT_PER_KEY_BURST", default_value_t = 200)]
    pub rate_limit_per_key_burst: u32,
}

impl RateLimits {
    pub fn config(&self) -> aviary_control_plane::RateLimitConfig {
        aviary_control_plane::RateLimitConfig {
            per_ip_per_s: self.rate_limit_per_ip,
            per_ip_burst: self.rate_limit_per_ip_burst.max(self.rate_limit_per_ip),
            per_key_per_s: self.rate_limit_per_key,
            per_key_burst: self.rate_limit_per_key_burst.max(self.rate_limit_per_key),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ControlPlaneArgs {
    /// Postgres connection URL.
    #[arg(long, env = "AVIARY_DATABASE_URL")]
    pub database_url: String,
    /// Address for the REST API.
    #[arg(long, env = "AVIARY_LISTEN", default_value = "0.0.0.0:8070")]
    pub listen: SocketAddr,
    /// Address for the gRPC API.
    #[arg(long, env = "AVIARY_GRPC_LISTEN", default_value = "0.0.0.0:8071")]
    pub grpc_listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint. Its series name every tenant and app,
    /// so it is served apart from the public port, on loopback unless you choose otherwise.
    /// Default 127.0.0.1:9464, or 127.0.0.1:0 (any free port) when --listen has port 0.
    #[arg(long, env = "AVIARY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Operator token (administers tenants). Required: a control plane never invents one.
    #[arg(long, env = "AVIARY_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: String,
    /// Shared secret data-plane nodes present to stream config and report usage. Without it no
    /// node can connect.
    #[arg(long, env = "AVIARY_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,
    /// Key sealing Pusher credential and webhook secrets in the store: 64 hex characters
    /// (`openssl rand -hex 32`). Every replica needs the same one; without it Pusher
    /// credentials and webhook endpoints cannot be created and stored credentials stay unloaded.
    #[arg(long, env = "AVIARY_CREDENTIALS_KEY", hide_env_values = true)]
    pub credentials_key: Option<String>,
    /// Let webhook URLs point at loopback, private or link-local addresses (refused by
    /// default: a tenant could otherwise make the platform call its internal network).
    #[arg(long, env = "AVIARY_WEBHOOK_ALLOW_PRIVATE_TARGETS")]
    pub webhook_allow_private_targets: bool,
    /// Most webhook endpoints one tenant may have, over all its apps.
    #[arg(long, env = "AVIARY_MAX_WEBHOOKS_PER_TENANT", default_value_t = 20)]
    pub max_webhooks_per_tenant: u32,
    /// Redis URL(s) the data-plane nodes share (the same `--redis-url` as theirs): webhook
    /// delivery attempts are read there (`GET .../webhooks/{id}/deliveries` lists every node's)
    /// and test events recorded there. Without it, deliveries list only this process's tests.
    #[arg(long = "redis-url", env = "AVIARY_REDIS_URL", value_delimiter = ',')]
    pub redis_urls: Vec<String>,
    /// Prefix of the nodes' Redis keys (their `--redis-prefix`).
    #[arg(long, env = "AVIARY_REDIS_PREFIX", default_value = "aviary")]
    pub redis_prefix: String,
    /// Do not apply migrations at start (run `aviary migrate` separately).
    #[arg(long, env = "AVIARY_NO_MIGRATE")]
    pub no_migrate: bool,
    #[command(flatten)]
    pub rate_limits: RateLimits,
    #[command(flatten)]
    pub http_limits: HttpLimits,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub traces: TraceArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DataPlaneArgs {
    /// Address for WebSocket, SSE and the REST publish API.
    #[arg(long, env = "AVIARY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint. Its series name every tenant and app,
    /// so it is served apart from the public port, on loopback unless you choose otherwise.
    /// Default 127.0.0.1:9464, or 127.0.0.1:0 (any free port) when --listen has port 0.
    #[arg(long, env = "AVIARY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// gRPC URL of the control plane, which streams this node its config (apps, quotas,
    /// verifying keys, revocations) and receives its usage reports.
    #[arg(long, env = "AVIARY_CONTROL_PLANE", default_value = "http://127.0.0.1:8071")]
    pub control_plane: String,
    /// PEM file of the certificate authority that signed the control plane's certificate, for
    /// an `https://` `--control-plane` (the system's roots when unset).
    #[arg(long, env = "AVIARY_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,
    /// Shared secret nodes present to the control plane (its `--node-token`).
    #[arg(long, env = "AVIARY_NODE_TOKEN", hide_env_values = true)]
    pub node_token: String,
    /// This node's id in logs, metrics and usage reports; unique per running process.
    /// Random when unset.
    #[arg(long, env = "AVIARY_NODE_ID")]
    pub node_id: Option<String>,
    /// Where the node keeps its last config, to start with it while the control plane is
    /// unreachable.
    #[arg(long, env = "AVIARY_CACHE_DIR", default_value = "./.aviary-node")]
    pub cache_dir: PathBuf,
    /// Seconds between usage reports to the control plane.
    #[arg(long, env = "AVIARY_USAGE_INTERVAL_S", default_value_t = 10)]
    pub usage_interval_s: u64,
    /// Redis URL(s) of the broker shared by all nodes; repeat (or comma-separate) to shard
    /// channels over several Redis servers. Without it the node uses the in-process broker and
    /// works alone.
    #[arg(long = "redis-url", env = "AVIARY_REDIS_URL", value_delimiter = ',')]
    pub redis_urls: Vec<String>,
    /// Prefix of every Redis key and pub/sub topic, so several Aviary clusters can share Redis.
    #[arg(long, env = "AVIARY_REDIS_PREFIX", default_value = "aviary")]
    pub redis_prefix: String,
    /// Let webhook deliveries connect to loopback, private or link-local addresses (every
    /// address a webhook URL resolves to is checked at connect time; refused by default).
    #[arg(long, env = "AVIARY_WEBHOOK_ALLOW_PRIVATE_TARGETS", default_value_t = false,
        action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub webhook_allow_private_targets: bool,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(flatten)]
    pub node: NodeTuning,
    #[command(flatten)]
    pub http_limits: HttpLimits,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub traces: TraceArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Postgres connection URL.
    #[arg(long, env = "AVIARY_DATABASE_URL")]
    pub database_url: String,
}

/// Webhook delivery knobs shared by `dev` and `data-plane`.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Seconds a failing webhook batch is retried (exponential backoff with jitter) before it
    /// is dropped and counted in `aviary_webhook_events_dropped_total`.
    #[arg(long, env = "AVIARY_WEBHOOK_RETRY_WINDOW_S", default_value_t = 300)]
    pub webhook_retry_window_s: u64,
    /// Seconds one webhook POST may take.
    #[arg(long, env = "AVIARY_WEBHOOK_TIMEOUT_S", default_value_t = 10)]
    pub webhook_timeout_s: u64,
    /// Seconds of an app's delivery lease: when the node delivering an app's webhooks dies,
    /// another takes over (with everything it had not finished) within this.
    #[arg(long, env = "AVIARY_WEBHOOK_LEASE_TTL_S", default_value_t = 10)]
    pub webhook_lease_ttl_s: u64,
    /// `message_published` webhook events a node holds on their way to the webhook queue, so
    /// publishers never wait for it; when full, further ones are dropped and counted
    /// (`aviary_webhook_published_shed_total`). 0 makes every publish await the append
    /// (nothing is lost to a crash between the publish answer and the append; slower).
    #[arg(long, env = "AVIARY_WEBHOOK_PUBLISHED_QUEUE", default_value_t = 65_536)]
    pub webhook_published_queue: usize,
    /// Most webhook events per second this node sends for one tenant (over all its apps and
    /// endpoints), so one tenant cannot take the others' delivery capacity; 0 is unlimited.
    #[arg(long, env = "AVIARY_WEBHOOK_MAX_EVENTS_PER_S", default_value_t = 1_000)]
    pub webhook_max_events_per_s: u32,
}

impl WebhookArgs {
    pub fn config(&self, allow_private_targets: bool) -> aviary_data_plane::WebhookConfig {
        aviary_data_plane::WebhookConfig {
            allow_private_targets,
            retry_window: std::time::Duration::from_secs(self.webhook_retry_window_s),
            timeout: std::time::Duration::from_secs(self.webhook_timeout_s.max(1)),
            lease_ttl: std::time::Duration::from_secs(self.webhook_lease_ttl_s.max(1)),
            published_queue: self.webhook_published_queue,
            max_events_per_s_per_tenant: self.webhook_max_events_per_s,
            ..aviary_data_plane::WebhookConfig::default()
        }
    }
}

/// Data-plane knobs shared by `dev` and `data-plane`.
#[derive(Debug, Clone, Args)]
pub struct NodeTuning {
    /// Seconds between WebSocket pings; a client silent for two intervals is dropped.
    #[arg(long, env = "AVIARY_HEARTBEAT_S", default_value_t = 25)]
    pub heartbeat_s: u64,
    /// Frames queued per connection before it is cut as a slow consumer (close 4008).
    #[arg(long, env = "AVIARY_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Seconds a write to a client (WebSocket frame, SSE event) may make no progress before
    /// the connection is closed as a slow consumer (4008) and its slot freed.
    #[arg(long, env = "AVIARY_WRITE_TIMEOUT_S", default_value_t = 30)]
    pub write_timeout_s: u64,
    /// Bytes of each WebSocket's read buffer: most of an idle connection's memory. Larger
    /// frames still arrive (the buffer grows); smaller means less memory per connection.
    #[arg(long, env = "AVIARY_WS_READ_BUFFER_BYTES", default_value_t = 1024)]
    pub ws_read_buffer_bytes: usize,
    /// Seconds a presence member outlives its node's last refresh: how long the members of a
    /// node that crashed stay visible.
    #[arg(long, env = "AVIARY_PRESENCE_TTL_S", default_value_t = 25)]
    pub presence_ttl_s: u64,
    /// Seconds a draining node gives clients to leave before closing the rest.
    #[arg(long, env = "AVIARY_DRAIN_DEADLINE_S", default_value_t = 10)]
    pub drain_deadline_s: u64,
}

/// Bounds on HTTP connections, against idle and silent sockets, and whose word on the client's
/// address is taken (every role). The number of open connections follows the descriptor limit
/// (`ulimit -n`), with a reserve for health checks.
#[derive(Debug, Clone, Args)]
pub struct HttpLimits {
    /// Seconds a connection has to send a complete request header, counted from when it opens
    /// and again from the end of each response: also the keep-alive idle timeout.
    #[arg(long, env = "AVIARY_HTTP_HEADER_TIMEOUT_S", default_value_t = 20)]
    pub http_header_timeout_s: u64,
    /// Connections from one source address that have not authenticated yet (WebSocket before
    /// its `connect`, any HTTP connection before an authenticated request); more are refused
    /// with 503.
    #[arg(long, env = "AVIARY_MAX_PENDING_PER_IP", default_value_t = 256)]
    pub max_pending_per_ip: usize,
    /// Load balancers believed about the client's address: comma-separated addresses or CIDR
    /// networks (`127.0.0.1,10.0.0.0/8`). For a request from one of them, the client address
    /// that rate limits, failed-credential limits and logs use is the rightmost
    /// `X-Forwarded-For` hop (else `Forwarded: for=`) that is not itself listed; from any other
    /// peer those headers are ignored. A listed peer's connections are not bound per address
    /// (`--max-pending-per-ip`): it carries many clients. Default: none trusted.
    #[arg(long, env = "AVIARY_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::forwarded::parse_network)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl HttpLimits {
    pub fn trusted_proxies(&self) -> std::sync::Arc<crate::forwarded::TrustedProxies> {
        std::sync::Arc::new(crate::forwarded::TrustedProxies::new(self.trusted_proxies.clone()))
    }

    pub fn header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.http_header_timeout_s.max(1))
    }
}

/// The metrics address: `--metrics-listen`, else loopback port 9464, or any free loopback port
/// when the public listener takes any free port too (tests, benchmarks: many processes at once).
pub fn metrics_listen(flag: Option<SocketAddr>, listen: SocketAddr) -> SocketAddr {
    flag.unwrap_or_else(|| {
        let port = if listen.port() == 0 { 0 } else { 9464 };
        SocketAddr::from(([127, 0, 0, 1], port))
    })
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validates a role's flags, `AVIARY_*` variables and config file without starting anything,
    /// and prints the effective configuration (secrets redacted, each value's source named).
    /// Exits 1 naming the flag when a value is invalid, 2 when clap refuses the command line.
    /// Example: `aviary config check data-plane --control-plane http://cp:8071`.
    Check {
        #[command(subcommand)]
        role: Role,
    },
}

/// The server roles, as `aviary config check` takes them (same flags as the commands).
#[derive(Debug, Subcommand)]
pub enum Role {
    /// `aviary dev`'s configuration.
    Dev(DevArgs),
    /// `aviary control-plane`'s configuration.
    ControlPlane(ControlPlaneArgs),
    /// `aviary data-plane`'s configuration.
    DataPlane(DataPlaneArgs),
    /// `aviary migrate`'s configuration.
    Migrate(MigrateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Base URL of the control plane's REST API (`aviary dev`: its only port; a control plane:
    /// its `--listen`, 8070 by default).
    #[arg(long, env = "AVIARY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The app the token is for (`app_...`).
    #[arg(long, env = "AVIARY_APP_ID")]
    pub app: String,
    /// An API key of that app (`avk_...`); the token can never exceed its capabilities.
    #[arg(long, env = "AVIARY_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// The end user the token is for (its `sub`).
    #[arg(long, env = "AVIARY_CLIENT_ID")]
    pub client_id: String,
    /// Lifetime in seconds (default: the control plane's, 600 or the app's maximum).
    #[arg(long, env = "AVIARY_TOKEN_TTL_S")]
    pub ttl_s: Option<u32>,
    /// What the connection may do, `GLOB=OP,OP` (e.g. `chat:*=subscribe,publish`); repeat the
    /// flag (or separate with `;`) for several globs. Default: the key's capabilities.
    #[arg(long = "capability", env = "AVIARY_TOKEN_CAPABILITIES", value_delimiter = ';', value_name = "GLOB=OPS")]
    pub capabilities: Vec<String>,
    /// Presence info other members see: a JSON object.
    #[arg(long, env = "AVIARY_TOKEN_INFO", value_name = "JSON")]
    pub info: Option<String>,
    /// Print the whole answer (token and expiry) as JSON instead of the token alone.
    #[arg(long, env = "AVIARY_TOKEN_JSON")]
    pub json: bool,
    /// PEM file of the certificate authority to trust for an `https://` --url, instead of the
    /// system's roots (a private CA, such as docs/deploying.md makes).
    #[arg(long, env = "AVIARY_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The URL to ask. Default: `/readyz` on loopback at the port of `AVIARY_LISTEN` when that
    /// is set, else at 8080; `https://` when --tls-cert is set, else `http://`.
    #[arg(long, env = "AVIARY_HEALTHCHECK_URL")]
    pub url: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, env = "AVIARY_HEALTHCHECK_TIMEOUT_S", default_value_t = 3)]
    pub timeout_s: u64,
    /// PEM file of the certificate authority to trust for an `https://` URL, instead of the
    /// system's roots; the URL's host must then be a name of the certificate.
    #[arg(long, env = "AVIARY_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// The certificate the checked process serves: its own --tls-cert, which in its container is
    /// the same `AVIARY_TLS_CERT`, so the image's HEALTHCHECK needs no flag. The default URL is
    /// then `https://`, and (without --ca) exactly this certificate is accepted, whatever names
    /// it carries: the check asks over loopback, where a certificate's names rarely match.
    #[arg(long, env = "AVIARY_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
}

/// Where spans go (every server role).
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver, e.g.
    /// `http://otel-collector:4318`: spans (connection, connect, subscribe, publish, fan_out,
    /// issue_token, config_send/config_apply) carrying tenant, app and connection ids are sent
    /// to its `/v1/traces` as protobuf, batched (the standard `OTEL_BSP_*` variables tune the
    /// batch) and flushed at shutdown. Unset: no span leaves the process.
    #[arg(long, env = "AVIARY_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// TLS on the public listeners (HTTP and gRPC; `/metrics` stays plain).
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM file of the certificate (then its chain) for `https://`, `wss://` and gRPC over TLS.
    /// Re-read on SIGHUP and when the file changes: new handshakes get the new certificate,
    /// open connections stay. Needs --tls-key.
    #[arg(long, env = "AVIARY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(long, env = "AVIARY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds between reads of --tls-cert and --tls-key to notice a renewed certificate (0:
    /// only on SIGHUP). A pair that does not load (a key that does not fit, a file half written)
    /// leaves the served certificate in place until the next change.
    #[arg(long, env = "AVIARY_TLS_RELOAD_INTERVAL_S", default_value_t = 2)]
    pub tls_reload_interval_s: u64,
}

impl TlsArgs {
    /// The certificate store, when TLS is asked for; an unreadable or mismatched pair is an error.
    pub fn load(&self) -> anyhow::Result<Option<std::sync::Arc<crate::tls::CertificateStore>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let files = crate::tls::TlsFiles { cert: cert.clone(), key: key.clone() };
                let poll = (self.tls_reload_interval_s > 0)
                    .then(|| std::time::Duration::from_secs(self.tls_reload_interval_s));
                Ok(Some(crate::tls::CertificateStore::load(files, poll)?))
            }
            (None, None) => Ok(None),
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        }
    }
}
