//! Operator endpoints (tenants, admin keys) and the tenant usage report.

use aviary_core::problem::Problem;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::extract::{Json, Query};
use crate::ControlPlaneState;
use crate::auth::{Operator, TenantAdmin};
use crate::error::Result;
use crate::service::{CreateTenant, CreatedSecret, ListParams, Listing, TenantCreated, UpdateTenant};
use crate::store::Tenant;
use crate::usage::{OverQuota, TenantUsage, UsageQuery};

/// Creates a tenant and its first admin key (shown once).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("operator" = [])),
    request_body = CreateTenant,
    responses(
        (status = 201, description = "The tenant and its first admin key (the secret is shown only here).", body = TenantCreated),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_tenant(
    State(state): State<ControlPlaneState>,
    _: Operator,
    Json(req): Json<CreateTenant>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(state.create_tenant(req).await?)))
}

/// Lists tenants.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("operator" = [])), params(ListParams),
    responses((status = 200, description = "A page of tenants; pass `next_cursor` as `cursor` for the next.", body = Listing<Tenant>), (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn list_tenants(
    State(state): State<ControlPlaneState>,
    _: Operator,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Listing<Tenant>>> {
    Ok(axum::Json(state.list_tenants(&params).await?))
}

/// Reads a tenant (the operator, or the tenant's own admin key).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("operator" = []), ("tenant_admin" = [])),
    responses((status = 200, description = "The tenant.", body = Tenant), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_tenant(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(tenant_id): Path<String>,
) -> Result<axum::Json<Tenant>> {
    Ok(axum::Json(state.get_tenant(&admin, &tenant_id).await?))
}

/// Changes a tenant's name, enabled flag or quotas. Disabling a tenant disables all its apps.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("operator" = [])),
    request_body = UpdateTenant,
    responses(
        (status = 200, description = "The tenant as changed.", body = Tenant),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another one of that name exists (`conflict`).", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_tenant(
    State(state): State<ControlPlaneState>,
    _: Operator,
    Path(tenant_id): Path<String>,
    Json(req): Json<UpdateTenant>,
) -> Result<axum::Json<Tenant>> {
    Ok(axum::Json(state.update_tenant(&tenant_id, req).await?))
}

/// Deletes a tenant with all its apps and keys.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("operator" = [])),
    responses((status = 204, description = "Deleted, with its apps and keys."), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_tenant(
    State(state): State<ControlPlaneState>,
    _: Operator,
    Path(tenant_id): Path<String>,
) -> Result<StatusCode> {
    state.delete_tenant(&tenant_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates another admin key for a tenant (shown once).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/admin-keys", tag = "tenants", security(("operator" = [])),
    responses((status = 201, description = "The new admin key (the secret is shown only here).", body = CreatedSecret), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn create_admin_key(
    State(state): State<ControlPlaneState>,
    _: Operator,
    Path(tenant_id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(state.create_admin_key(&tenant_id).await?)))
}

/// Revokes a tenant admin key at once.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/admin-keys/{key_id}", tag = "tenants", security(("operator" = [])),
    responses((status = 204, description = "Revoked."), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn revoke_admin_key(
    State(state): State<ControlPlaneState>,
    _: Operator,
    Path((tenant_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    state.revoke_admin_key(&tenant_id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Usage of a tenant per app over `[from, to)`, by hour or UTC day, from the figures nodes
/// report (every reporting interval, 10 s by default).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/usage", tag = "tenants", security(("tenant_admin" = []), ("operator" = [])),
    params(UsageQuery),
    responses(
        (status = 200, description = "Usage per app and period.", body = TenantUsage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn tenant_usage(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(tenant_id): Path<String>,
    Query(query): Query<UsageQuery>,
) -> Result<axum::Json<TenantUsage>> {
    Ok(axum::Json(state.tenant_usage(&admin, &tenant_id, &query).await?))
}

/// Tenants over a quota in the current or previous hour: connections (sum of the apps' peaks)
/// above `max_connections`, or the hour's average publish rate above `max_messages_per_s`.
#[utoipa::path(get, path = "/v1/tenants/over-quota", tag = "tenants", security(("operator" = [])),
    responses((status = 200, description = "The tenants over a quota (empty when none is).", body = Vec<OverQuota>), (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn over_quota(State(state): State<ControlPlaneState>, _: Operator) -> Result<axum::Json<Vec<OverQuota>>> {
    Ok(axum::Json(state.over_quota(state.now()).await?))
}
