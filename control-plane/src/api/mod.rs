//! The control plane's REST surface: every route in [`router`], the OpenAPI document in
//! [`openapi`], and the cross-cutting layers (metrics, tracing, body limit, rate limits).
//!
//! `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/docs` are added by the `aviary`
//! binary, which also installs the Prometheus recorder the [`metrics`] facade reports to.
//! Serve with `into_make_service_with_connect_info::<SocketAddr>()` so per-IP limits see the
//! peer address.

use std::time::Instant;

use aviary_core::problem::{PROBLEM_JSON, Problem};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tower_governor::GovernorLayer;
use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::ControlPlaneState;
use crate::rate_limit::{Credential, PeerIp, limiter, refusal};
use responses::StandardResponses;

mod apps;
pub mod extract;
mod responses;
mod tenants;
mod tokens;
mod webhooks;

/// Every control plane route.
pub fn router(state: ControlPlaneState) -> Router {
    let limits = state.config().rate_limits;
    let body_limit = state.config().body_limit_bytes;
    let mut router = Router::new()
        // Operator.
        .route("/v1/tenants", post(tenants::create_tenant).get(tenants::list_tenants))
        .route("/v1/tenants/over-quota", get(tenants::over_quota))
        .route(
            "/v1/tenants/{tenant_id}",
            get(tenants::get_tenant).patch(tenants::update_tenant).delete(tenants::delete_tenant),
        )
        .route("/v1/tenants/{tenant_id}/admin-keys", post(tenants::create_admin_key))
        .route("/v1/tenants/{tenant_id}/admin-keys/{key_id}", delete(tenants::revoke_admin_key))
        .route("/v1/signing-keys/rotate", post(tokens::rotate_signing_key))
        // Tenant admin.
        .route("/v1/tenants/{tenant_id}/apps", post(apps::create_app).get(apps::list_apps))
        .route("/v1/tenants/{tenant_id}/usage", get(tenants::tenant_usage))
        .route("/v1/apps/{app_id}", get(apps::get_app).patch(apps::update_app).delete(apps::delete_app))
        .route("/v1/apps/{app_id}/keys", post(apps::create_api_key).get(apps::list_api_keys))
        .route("/v1/apps/{app_id}/keys/{key_id}", delete(apps::revoke_api_key))
        .route("/v1/apps/{app_id}/clients/{client_id}/revoke", post(apps::revoke_client))
        .route(
            "/v1/apps/{app_id}/pusher-credentials",
            post(apps::create_pusher_credential).get(apps::list_pusher_credentials),
        )
        .route("/v1/apps/{app_id}/pusher-credentials/{key}", delete(apps::revoke_pusher_credential))
        .route("/v1/apps/{app_id}/webhooks", post(webhooks::create_webhook).get(webhooks::list_webhooks))
        .route(
            "/v1/apps/{app_id}/webhooks/{webhook_id}",
            get(webhooks::get_webhook).patch(webhooks::update_webhook).delete(webhooks::delete_webhook),
        )
        .route("/v1/apps/{app_id}/webhooks/{webhook_id}/test", post(webhooks::test_webhook))
        .route("/v1/apps/{app_id}/webhooks/{webhook_id}/deliveries", get(webhooks::list_webhook_deliveries))
        // App API key.
        .route("/v1/apps/{app_id}/tokens", post(tokens::issue_token))
        // Public.
        .route("/.well-known/jwks.json", get(tokens::jwks))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit));
    // Per-key inside per-IP: an address over its limit is refused before its keys are hashed.
    if let Some(per_key) = limiter(Credential, limits.per_key_per_s, limits.per_key_burst) {
        router = router.layer(GovernorLayer::new(per_key).error_handler(refusal));
    }
    if let Some(per_ip) = limiter(PeerIp, limits.per_ip_per_s, limits.per_ip_burst) {
        router = router.layer(GovernorLayer::new(per_ip).error_handler(refusal));
    }
    router.layer(axum::middleware::from_fn(observe)).with_state(state)
}

/// Records `aviary_http_requests_total{method,route,status}` and
/// `aviary_http_request_duration_seconds{method,route}`, inside a span naming the route.
/// Routes are the templates (`/v1/apps/{app_id}`), never concrete ids, to bound cardinality.
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let client = request.extensions().get::<aviary_core::ClientAddr>().copied();
    let span = tracing::info_span!(
        "http",
        %method,
        %route,
        client = client.map(tracing::field::display),
        status = tracing::field::Empty
    );
    let started = Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    metrics::counter!("aviary_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("aviary_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Unknown routes answer a problem document too.
async fn not_found() -> crate::Error {
    crate::Error::NotFound("route")
}

/// Known route, wrong method.
async fn method_not_allowed() -> impl IntoResponse {
    let problem = Problem::method_not_allowed();
    let mut response = (StatusCode::METHOD_NOT_ALLOWED, axum::Json(problem)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(PROBLEM_JSON));
    response
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Aviary control plane",
        description = "Tenants, apps, API keys and connection tokens. Errors are RFC 9457 problem documents \
                       whose `type` is a stable URI `https://aviary.dev/problems/<slug>`."
    ),
    paths(
        tenants::create_tenant, tenants::list_tenants, tenants::get_tenant, tenants::update_tenant,
        tenants::delete_tenant, tenants::create_admin_key, tenants::revoke_admin_key, tenants::tenant_usage,
        tenants::over_quota,
        apps::create_app, apps::list_apps, apps::get_app, apps::update_app, apps::delete_app,
        apps::create_api_key, apps::list_api_keys, apps::revoke_api_key, apps::revoke_client,
        apps::create_pusher_credential, apps::list_pusher_credentials, apps::revoke_pusher_credential,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook, webhooks::update_webhook,
        webhooks::delete_webhook, webhooks::test_webhook, webhooks::list_webhook_deliveries,
        tokens::issue_token, tokens::rotate_signing_key, tokens::jwks,
    ),
    components(schemas(aviary_core::problem::Problem, aviary_core::Operation)),
    modifiers(&SecuritySchemes, &StandardResponses),
    tags(
        (name = "tenants", description = "Operator: tenants, quotas, admin keys; tenant usage"),
        (name = "apps", description = "Tenant admin: apps and their settings"),
        (name = "keys", description = "Tenant admin: app API keys"),
        (name = "pusher", description = "Tenant admin: Pusher Channels credentials (app id, key, secret)"),
        (name = "webhooks", description = "Tenant admin: webhook endpoints (where channel events are sent)"),
        (name = "tokens", description = "Connection tokens, signing keys, JWKS"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(description.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "operator",
            bearer("The operator token (AVIARY_OPERATOR_TOKEN): administers tenants."),
        );
        components.add_security_scheme(
            "tenant_admin",
            bearer("A tenant admin key `avt_<id>_<secret>`: administers one tenant's apps, keys and usage."),
        );
        components.add_security_scheme(
            "api_key",
            bearer("An app API key `avk_<id>_<secret>`: mints connection tokens and publishes."),
        );
    }
}

/// The OpenAPI 3.1 document of [`router`]'s routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
