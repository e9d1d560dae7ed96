//! The gRPC service `aviary.v1.ControlPlane` (proto and generated code: the `aviary-proto` crate,
//! `proto/aviary/v1/control_plane.proto`).
//!
//! A thin adapter over [`crate::service`]: the same credentials (the `authorization` metadata
//! entry, `Bearer <secret>`), the same validation and the same tenant isolation as REST; errors
//! map to canonical status codes in `impl From<Error> for tonic::Status`.
//!
//! Data-plane nodes call `Watch`, `VerifyApiKey` and `ReportUsage` with the node credential
//! instead (see [`crate::watch`], [`crate::usage`]; their clients run on the nodes, in the
//! `aviary-follower` crate).

use std::collections::BTreeMap;

use aviary_core::Capabilities;
use aviary_proto::convert::{
    UnknownOperation, capabilities_from_pb, capabilities_to_pb, namespace_from_pb, namespace_to_pb,
    usage_record_from_pb,
};
use tonic::{Request, Response, Status};
use tower_governor::GovernorLayer;

use crate::ControlPlaneState;
use crate::auth::TenantAdmin;
use crate::error::Error;
use crate::rate_limit::{Credential, PeerIp, grpc_refusal, limiter};
use crate::service::{
    CreateApiKey, CreateApp, CreatePusherCredential, CreateWebhook, ListParams, PusherCredentialView, WebhookView,
};
use crate::store::App;
use crate::tokens::TokenRequest;

pub use aviary_proto::{ControlPlaneClient, ControlPlaneServer, pb};

/// The service implementation.
#[derive(Clone)]
pub struct ControlPlaneGrpc {
    state: ControlPlaneState,
}

/// The service, ready to add to a `tonic::transport::Server`.
pub fn grpc_service(state: ControlPlaneState) -> ControlPlaneServer<ControlPlaneGrpc> {
    ControlPlaneServer::new(ControlPlaneGrpc { state })
}

/// The service as routes (`Server::builder().add_routes(grpc_router(state))`), with the same
/// per-IP and per-credential rate limits and message size limit as REST.
///
/// The node RPCs (`Watch`, `VerifyApiKey`, `ReportUsage`) skip the per-credential bucket: every
/// node presents the same node token, so one bucket would throttle the whole fleet together.
/// They keep the per-IP bucket.
pub fn grpc_router(state: ControlPlaneState) -> tonic::service::Routes {
    let limits = state.config().rate_limits;
    let max_message = state.config().body_limit_bytes;
    let service = grpc_service(state).max_decoding_message_size(max_message);
    let mut router = tonic::service::Routes::new(service.clone()).into_axum_router();
    if let Some(per_key) = limiter(Credential, limits.per_key_per_s, limits.per_key_burst) {
        router = router.layer(GovernorLayer::new(per_key).error_handler(grpc_refusal));
    }
    // Usage batches outgrow the REST body limit on nodes serving many apps.
    let node_service = service.clone().max_decoding_message_size(NODE_MAX_MESSAGE_BYTES);
    let mut nodes = axum::Router::new();
    for method in NODE_METHODS {
        nodes = nodes.route_service(&format!("/aviary.v1.ControlPlane/{method}"), node_service.clone());
    }
    // Exact paths win over the service's wildcard route.
    router = router.merge(nodes);
    if let Some(per_ip) = limiter(PeerIp, limits.per_ip_per_s, limits.per_ip_burst) {
        router = router.layer(GovernorLayer::new(per_ip).error_handler(grpc_refusal));
    }
    tonic::service::Routes::from(router.layer(axum::middleware::from_fn(observe)))
}

/// Largest request a node may send (a usage batch of [`crate::usage::MAX_RECORDS_PER_BATCH`]
/// records fits).
pub const NODE_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// RPCs called by data-plane nodes with the node credential.
const NODE_METHODS: [&str; 3] = ["Watch", "VerifyApiKey", "ReportUsage"];

/// The RPCs of the service, the only method labels metrics use (bounded cardinality).
const METHODS: [&str; 14] = [
    "IssueToken",
    "CreateApp",
    "ListApps",
    "CreateApiKey",
    "RevokeApiKey",
    "CreatePusherCredential",
    "ListPusherCredentials",
    "RevokePusherCredential",
    "CreateWebhook",
    "ListWebhooks",
    "DeleteWebhook",
    "Watch",
    "VerifyApiKey",
    "ReportUsage",
];

/// Records `aviary_grpc_requests_total{method,code}` and `aviary_grpc_request_duration_seconds{method}`.
///
/// Unary errors are "trailers-only" responses whose `grpc-status` is a header; a success carries
/// it in the trailers, so a response without the header counts as `0` (OK).
async fn observe(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let method = request
        .uri()
        .path()
        .strip_prefix("/aviary.v1.ControlPlane/")
        .and_then(|m| METHODS.iter().find(|known| **known == m))
        .copied()
        .unwrap_or("unknown");
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_owned();
    metrics::counter!("aviary_grpc_requests_total", "method" => method, "code" => code).increment(1);
    metrics::histogram!("aviary_grpc_request_duration_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

fn bearer<T>(request: &Request<T>) -> Option<&str> {
    aviary_core::auth::bearer_credential(request.metadata().get("authorization")?.to_str().ok()?)
}

impl ControlPlaneGrpc {
    /// Checks the node credential. Without a configured node token every node is refused.
    fn node<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = self.state.config().node_token.as_deref() else {
            return Err(Status::unauthenticated("this control plane accepts no data-plane nodes (no node token set)"));
        };
        match bearer(request) {
            Some(presented) if crate::auth::secrets_equal(presented, expected) => Ok(()),
            _ => Err(Status::unauthenticated("missing or invalid node credentials")),
        }
    }

    async fn admin<T>(&self, request: &Request<T>) -> Result<TenantAdmin, Status> {
        Ok(self.state.tenant_admin(bearer(request)).await?)
    }
}

/// Capabilities of a request; an unknown operation is a bad request (the first in glob order).
fn capabilities(map: impl IntoIterator<Item = (String, pb::Operations)>) -> Result<Capabilities, Error> {
    capabilities_from_pb(map.into_iter().collect::<BTreeMap<_, _>>())
        .map_err(|UnknownOperation(op)| Error::invalid(format!("unknown operation {op:?}")))
}

fn app_to_pb(app: App) -> pb::App {
    pb::App {
        id: app.id,
        tenant_id: app.tenant_id,
        name: app.name,
        enabled: app.enabled,
        allowed_origins: app.allowed_origins,
        max_token_ttl_s: app.max_token_ttl_s,
        namespaces: app.namespaces.iter().map(namespace_to_pb).collect(),
        created_at: app.created_at.to_rfc3339(),
    }
}

fn pusher_credential_info(c: PusherCredentialView) -> pb::PusherCredentialInfo {
    pb::PusherCredentialInfo {
        capabilities: capabilities_to_pb(&c.capabilities),
        app_id: c.app_id,
        key: c.key,
        aviary_app_id: c.aviary_app_id,
        client_events: c.client_events,
        created_at: c.created_at.to_rfc3339(),
        revoked_at: c.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
    }
}

fn delivery_attempt(a: aviary_core::webhook::DeliveryAttempt) -> pb::DeliveryAttempt {
    pb::DeliveryAttempt {
        time_ms: a.time_ms,
        events: a
            .events
            .into_iter()
            .map(|e| pb::AttemptedEvent { id: e.id, name: e.name, channel: e.channel })
            .collect(),
        status: a.status.map_or(0, u32::from),
        latency_ms: a.latency_ms,
        error: a.error.unwrap_or_default(),
        test: a.test,
    }
}

fn webhook_events(names: &[String]) -> Result<Vec<aviary_core::webhook::WebhookEvent>, Status> {
    names
        .iter()
        .map(|name| {
            serde_json::from_value(serde_json::Value::String(name.clone()))
                .map_err(|_| Status::invalid_argument(format!("unknown webhook event {name:?}")))
        })
        .collect()
}

fn webhook_info(w: WebhookView) -> pb::WebhookInfo {
    pb::WebhookInfo {
        events: w
            .events
            .iter()
            .filter_map(|e| match serde_json::to_value(e) {
                Ok(serde_json::Value::String(s)) => Some(s),
                _ => None,
            })
            .collect(),
        id: w.id,
        app_id: w.app_id,
        url: w.url,
        channels: w.channels.unwrap_or_default(),
        format: w.format.as_str().to_owned(),
        created_at: w.created_at.to_rfc3339(),
        updated_at: w.updated_at.to_rfc3339(),
    }
}

#[tonic::async_trait]
impl pb::control_plane_server::ControlPlane for ControlPlaneGrpc {
    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.node(&request)?;
        let request = request.into_inner();
        // Small: a slow node backs up here, then in the log's broadcast, then takes a snapshot.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let log = self.state.config_log().clone();
        tokio::spawn(log.serve(request, tx, self.state.config().watch_heartbeat));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn verify_api_key(
        &self,
        request: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::VerifyApiKeyResponse>, Status> {
        self.node(&request)?;
        let key = self.state.keys().verify_api_key(&request.get_ref().api_key).await?;
        Ok(Response::new(pb::VerifyApiKeyResponse {
            capabilities: capabilities_to_pb(&key.capabilities),
            key_id: key.key_id,
            tenant_id: key.tenant_id,
            app_id: key.app_id,
        }))
    }

    async fn report_usage(
        &self,
        request: Request<pb::ReportUsageRequest>,
    ) -> Result<Response<pb::ReportUsageResponse>, Status> {
        self.node(&request)?;
        let req = request.into_inner();
        let records: Vec<_> = req.records.into_iter().map(usage_record_from_pb).collect();
        let applied = self.state.ingest_usage(&req.node_id, req.seq, &records).await?;
        Ok(Response::new(pb::ReportUsageResponse { applied }))
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let presented = bearer(&request).ok_or(Error::Unauthorized)?;
        let key = self.state.keys().verify_api_key(presented).await?;
        let req = request.into_inner();
        let info = req
            .info_json
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::invalid(format!("info_json is not JSON: {e}")))?;
        let caps = if req.capabilities.is_empty() { None } else { Some(capabilities(req.capabilities)?) };
        let issued = self.state.issue_token(
            &key,
            &req.app_id,
            TokenRequest {
                client_id: req.client_id,
                ttl_s: (req.ttl_s != 0).then_some(req.ttl_s),
                capabilities: caps,
                info,
            },
        )?;
        Ok(Response::new(pb::IssueTokenResponse { token: issued.token, expires_at: issued.expires_at.timestamp() }))
    }

    async fn create_app(&self, request: Request<pb::CreateAppRequest>) -> Result<Response<pb::App>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let namespaces = if req.namespaces.is_empty() {
            None
        } else {
            Some(req.namespaces.into_iter().map(namespace_from_pb).collect())
        };
        let app = self
            .state
            .create_app(
                &admin,
                &req.tenant_id,
                CreateApp {
                    name: req.name,
                    enabled: true,
                    allowed_origins: req.allowed_origins,
                    max_token_ttl_s: (req.max_token_ttl_s != 0).then_some(req.max_token_ttl_s),
                    namespaces,
                    quotas: None,
                },
            )
            .await?;
        Ok(Response::new(app_to_pb(app)))
    }

    async fn list_apps(&self, request: Request<pb::ListAppsRequest>) -> Result<Response<pb::ListAppsResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let params = ListParams {
            limit: (req.limit != 0).then_some(req.limit),
            cursor: (!req.cursor.is_empty()).then_some(req.cursor),
        };
        let listing = self.state.list_apps(&admin, &req.tenant_id, &params).await?;
        Ok(Response::new(pb::ListAppsResponse {
            apps: listing.items.into_iter().map(app_to_pb).collect(),
            next_cursor: listing.next_cursor.unwrap_or_default(),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let caps = capabilities(req.capabilities)?;
        let created =
            self.state.create_api_key(&admin, &req.app_id, CreateApiKey { name: req.name, capabilities: caps }).await?;
        Ok(Response::new(pb::CreateApiKeyResponse { key_id: created.key.id, secret: created.secret }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        self.state.revoke_api_key(&admin, &req.app_id, &req.key_id).await?;
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }

    async fn create_pusher_credential(
        &self,
        request: Request<pb::CreatePusherCredentialRequest>,
    ) -> Result<Response<pb::CreatePusherCredentialResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let caps = if req.capabilities.is_empty() { None } else { Some(capabilities(req.capabilities)?) };
        let created = self
            .state
            .create_pusher_credential(
                &admin,
                &req.app_id,
                CreatePusherCredential { capabilities: caps, client_events: req.client_events },
            )
            .await?;
        Ok(Response::new(pb::CreatePusherCredentialResponse {
            credential: Some(pusher_credential_info(created.credential)),
            secret: created.secret,
        }))
    }

    async fn list_pusher_credentials(
        &self,
        request: Request<pb::ListPusherCredentialsRequest>,
    ) -> Result<Response<pb::ListPusherCredentialsResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let params = ListParams {
            limit: (req.limit != 0).then_some(req.limit),
            cursor: (!req.cursor.is_empty()).then_some(req.cursor),
        };
        let listing = self.state.list_pusher_credentials(&admin, &req.app_id, &params).await?;
        Ok(Response::new(pb::ListPusherCredentialsResponse {
            credentials: listing.items.into_iter().map(pusher_credential_info).collect(),
            next_cursor: listing.next_cursor.unwrap_or_default(),
        }))
    }

    async fn revoke_pusher_credential(
        &self,
        request: Request<pb::RevokePusherCredentialRequest>,
    ) -> Result<Response<pb::RevokePusherCredentialResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        self.state.revoke_pusher_credential(&admin, &req.app_id, &req.key).await?;
        Ok(Response::new(pb::RevokePusherCredentialResponse {}))
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let events = webhook_events(&req.events)?;
        // An unset proto3 string is "": the same default as REST.
        let format = match req.format.as_str() {
            "" => aviary_core::webhook::WebhookFormat::Aviary,
            other => aviary_core::webhook::WebhookFormat::parse(other)
                .ok_or_else(|| Status::invalid_argument("format must be aviary or pusher"))?,
        };
        let created = self
            .state
            .create_webhook(
                &admin,
                &req.app_id,
                CreateWebhook {
                    url: req.url,
                    events,
                    channels: (!req.channels.is_empty()).then_some(req.channels),
                    format,
                },
            )
            .await?;
        Ok(Response::new(pb::CreateWebhookResponse {
            webhook: Some(webhook_info(created.webhook)),
            secret: created.secret,
        }))
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let params = ListParams {
            limit: (req.limit != 0).then_some(req.limit),
            cursor: (!req.cursor.is_empty()).then_some(req.cursor),
        };
        let listing = self.state.list_webhooks(&admin, &req.app_id, &params).await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: listing.items.into_iter().map(webhook_info).collect(),
            next_cursor: listing.next_cursor.unwrap_or_default(),
        }))
    }

    async fn get_webhook(&self, request: Request<pb::GetWebhookRequest>) -> Result<Response<pb::WebhookInfo>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        Ok(Response::new(webhook_info(self.state.get_webhook(&admin, &req.app_id, &req.webhook_id).await?)))
    }

    async fn update_webhook(
        &self,
        request: Request<pb::UpdateWebhookRequest>,
    ) -> Result<Response<pb::WebhookInfo>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let format = match req.format.as_deref() {
            None => None,
            Some(text) => Some(
                aviary_core::webhook::WebhookFormat::parse(text)
                    .ok_or_else(|| Status::invalid_argument("format must be aviary or pusher"))?,
            ),
        };
        let update = crate::service::UpdateWebhook {
            url: req.url,
            events: req.events.map(|list| webhook_events(&list.names)).transpose()?,
            channels: req.channels.map(|glob| (!glob.is_empty()).then_some(glob)),
            format,
        };
        let view = self.state.update_webhook(&admin, &req.app_id, &req.webhook_id, update).await?;
        Ok(Response::new(webhook_info(view)))
    }

    async fn test_webhook(
        &self,
        request: Request<pb::TestWebhookRequest>,
    ) -> Result<Response<pb::DeliveryAttempt>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let attempt = self.state.test_webhook(&admin, &req.app_id, &req.webhook_id).await?;
        Ok(Response::new(delivery_attempt(attempt)))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        let list = self.state.webhook_deliveries(&admin, &req.app_id, &req.webhook_id).await?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            attempts: list.attempts.into_iter().map(delivery_attempt).collect(),
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let admin = self.admin(&request).await?;
        let req = request.into_inner();
        self.state.delete_webhook(&admin, &req.app_id, &req.webhook_id).await?;
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }
}
