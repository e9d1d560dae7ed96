//! Tenant admin endpoints: an app's webhook endpoints.

use aviary_core::problem::Problem;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::extract::{Json, Query};
use crate::ControlPlaneState;
use crate::auth::TenantAdmin;
use crate::error::Result;
use crate::service::webhooks::DeliveryList;
use crate::service::{CreateWebhook, ListParams, Listing, UpdateWebhook, WebhookCreated, WebhookView};
use aviary_core::webhook::DeliveryAttempt;

/// Creates a webhook endpoint; its signing secret is in the answer and nowhere else.
#[utoipa::path(post, path = "/v1/apps/{app_id}/webhooks", tag = "webhooks",
    security(("tenant_admin" = []), ("operator" = [])),
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "The new endpoint and its signing secret (shown once).", body = WebhookCreated),
        (status = 400, description = "Bad URL (including a refused private target), events, channels or format.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such app visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`limit-reached`: the tenant has its maximum number of endpoints.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No credentials key configured to seal the secret.", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_webhook(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(app_id): Path<String>,
    Json(req): Json<CreateWebhook>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(state.create_webhook(&admin, &app_id, req).await?)))
}

/// Lists the app's webhook endpoints (never their secrets).
#[utoipa::path(get, path = "/v1/apps/{app_id}/webhooks", tag = "webhooks",
    security(("tenant_admin" = []), ("operator" = [])), params(ListParams),
    responses(
        (status = 200, description = "A page of the app's endpoints; pass `next_cursor` as `cursor` for the next.", body = Listing<WebhookView>),
        (status = 404, description = "No such app visible to the caller.", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_webhooks(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(app_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Listing<WebhookView>>> {
    Ok(axum::Json(state.list_webhooks(&admin, &app_id, &params).await?))
}

/// Reads a webhook endpoint (never its secret).
#[utoipa::path(get, path = "/v1/apps/{app_id}/webhooks/{webhook_id}", tag = "webhooks",
    security(("tenant_admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "The endpoint.", body = WebhookView),
        (status = 404, description = "No such app or endpoint visible to the caller.", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_webhook(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path((app_id, webhook_id)): Path<(String, String)>,
) -> Result<axum::Json<WebhookView>> {
    Ok(axum::Json(state.get_webhook(&admin, &app_id, &webhook_id).await?))
}

/// Changes a webhook endpoint's URL, events, channel filter or format; the secret is kept.
#[utoipa::path(patch, path = "/v1/apps/{app_id}/webhooks/{webhook_id}", tag = "webhooks",
    security(("tenant_admin" = []), ("operator" = [])),
    request_body = UpdateWebhook,
    responses(
        (status = 200, description = "The endpoint as changed.", body = WebhookView),
        (status = 400, description = "Bad URL (including a refused private target), events, channels or format.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such app or endpoint visible to the caller.", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_webhook(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path((app_id, webhook_id)): Path<(String, String)>,
    Json(req): Json<UpdateWebhook>,
) -> Result<axum::Json<WebhookView>> {
    Ok(axum::Json(state.update_webhook(&admin, &app_id, &webhook_id, req).await?))
}

/// Deletes a webhook endpoint.
#[utoipa::path(delete, path = "/v1/apps/{app_id}/webhooks/{webhook_id}", tag = "webhooks",
    security(("tenant_admin" = []), ("operator" = [])),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such app or endpoint visible to the caller.", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_webhook(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path((app_id, webhook_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    state.delete_webhook(&admin, &app_id, &webhook_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a test event to the endpoint now and answers the attempt's outcome.
///
/// The body is `{"time_ms", "events": [{"name": "test", "channel": "", "id": "test-…"}]}`,
/// signed in the endpoint's format exactly as a delivery is (`aviary-signature`, or the
/// app's Pusher credential for `pusher`), POSTed once, without retries. A receiver that
/// fails or cannot be reached is still a 200: the attempt says what happened (`status`,
/// `error`). The attempt is also listed in the endpoint's deliveries.
#[utoipa::path(post, path = "/v1/apps/{app_id}/webhooks/{webhook_id}/test", tag = "webhooks",
    security(("tenant_admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "The attempt: the receiver's status and latency, or why it failed.", body = DeliveryAttempt,
            example = json!({"time_ms": 1765130000000_i64, "events": [{"id": "test-5f0c3a", "name": "test", "channel": ""}], "status": 200, "latency_ms": 14, "error": null, "test": true})),
        (status = 404, description = "No such app or endpoint visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`credentials-key-missing` (the secret cannot be opened) or `deliveries-unavailable` (no delivery store configured or reachable).", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn test_webhook(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path((app_id, webhook_id)): Path<(String, String)>,
) -> Result<axum::Json<DeliveryAttempt>> {
    Ok(axum::Json(state.test_webhook(&admin, &app_id, &webhook_id).await?))
}

/// Lists the endpoint's recent delivery attempts (the last 50, from every node), newest first.
#[utoipa::path(get, path = "/v1/apps/{app_id}/webhooks/{webhook_id}/deliveries", tag = "webhooks",
    security(("tenant_admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "The recent attempts: time, events, HTTP status, latency, error.", body = DeliveryList,
            example = json!({"attempts": [
                {"time_ms": 1765130000050_i64, "events": [{"id": "1765130000000-0", "name": "channel_occupied", "channel": "chat:lobby"}], "status": 200, "latency_ms": 12, "error": null, "test": false},
                {"time_ms": 1765129990000_i64, "events": [{"id": "1765129989990-0", "name": "member_added", "channel": "presence:room"}], "status": 500, "latency_ms": 30, "error": "the receiver answered 500", "test": false}
            ]})),
        (status = 404, description = "No such app or endpoint visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`deliveries-unavailable`: no delivery store configured or reachable.", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_webhook_deliveries(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path((app_id, webhook_id)): Path<(String, String)>,
) -> Result<axum::Json<DeliveryList>> {
    Ok(axum::Json(state.webhook_deliveries(&admin, &app_id, &webhook_id).await?))
}
