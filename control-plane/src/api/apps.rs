//! Tenant admin endpoints: apps, their API keys and their Pusher credentials.

use aviary_core::problem::Problem;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::extract::{Json, Query};
use crate::ControlPlaneState;
use crate::auth::TenantAdmin;
use crate::error::Result;
use crate::service::{
    ApiKeyCreated, ApiKeyView, ClientRevoked, CreateApiKey, CreateApp, CreatePusherCredential, ListParams, Listing,
    PusherCredentialCreated, PusherCredentialView, UpdateApp,
};
use crate::store::App;

/// Creates an app in the tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/apps", tag = "apps", security(("tenant_admin" = []), ("operator" = [])),
    request_body = CreateApp,
    responses(
        (status = 201, description = "The new app.", body = App),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_app(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(tenant_id): Path<String>,
    Json(req): Json<CreateApp>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(state.create_app(&admin, &tenant_id, req).await?)))
}

/// Lists the tenant's apps.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/apps", tag = "apps", security(("tenant_admin" = []), ("operator" = [])), params(ListParams),
    responses((status = 200, description = "A page of the tenant's apps; pass `next_cursor` as `cursor` for the next.", body = Listing<App>), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_apps(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(tenant_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Listing<App>>> {
    Ok(axum::Json(state.list_apps(&admin, &tenant_id, &params).await?))
}

/// Reads an app.
#[utoipa::path(get, path = "/v1/apps/{app_id}", tag = "apps", security(("tenant_admin" = []), ("operator" = [])),
    responses((status = 200, description = "The app.", body = App), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_app(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(app_id): Path<String>,
) -> Result<axum::Json<App>> {
    Ok(axum::Json(state.get_app(&admin, &app_id).await?))
}

/// Changes an app's settings; takes effect on the data plane at once.
#[utoipa::path(patch, path = "/v1/apps/{app_id}", tag = "apps", security(("tenant_admin" = []), ("operator" = [])),
    request_body = UpdateApp,
    responses(
        (status = 200, description = "The app as changed.", body = App),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another one of that name exists (`conflict`).", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_app(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(app_id): Path<String>,
    Json(req): Json<UpdateApp>,
) -> Result<axum::Json<App>> {
    Ok(axum::Json(state.update_app(&admin, &app_id, req).await?))
}

/// Deletes an app and its keys; its connections are closed.
#[utoipa::path(delete, path = "/v1/apps/{app_id}", tag = "apps", security(("tenant_admin" = []), ("operator" = [])),
    responses((status = 204, description = "Deleted; its connections are being closed (4004)."), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_app(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(app_id): Path<String>,
) -> Result<StatusCode> {
    state.delete_app(&admin, &app_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates an API key for the app; the secret is in the answer and nowhere else.
#[utoipa::path(post, path = "/v1/apps/{app_id}/keys", tag = "keys", security(("tenant_admin" = []), ("operator" = [])),
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "The new API key (the secret is shown only here).", body = ApiKeyCreated),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_api_key(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(app_id): Path<String>,
    Json(req): Json<CreateApiKey>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(state.create_api_key(&admin, &app_id, req).await?)))
}

/// Lists the app's API keys (never their secrets).
#[utoipa::path(get, path = "/v1/apps/{app_id}/keys", tag = "keys", security(("tenant_admin" = []), ("operator" = [])), params(ListParams),
    responses((status = 200, description = "A page of the app's API keys, without secrets.", body = Listing<ApiKeyView>), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_api_keys(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(app_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Listing<ApiKeyView>>> {
    Ok(axum::Json(state.list_api_keys(&admin, &app_id, &params).await?))
}

/// Revokes an API key at once: it mints nothing more and its connections are closed.
#[utoipa::path(delete, path = "/v1/apps/{app_id}/keys/{key_id}", tag = "keys", security(("tenant_admin" = []), ("operator" = [])),
    responses((status = 204, description = "Revoked; its connections are being closed (4010)."), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn revoke_api_key(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path((app_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    state.revoke_api_key(&admin, &app_id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes every connection token of one client of the app issued up to now: its live
/// connections are closed (4010) and those tokens are refused; tokens minted afterwards work.
#[utoipa::path(post, path = "/v1/apps/{app_id}/clients/{client_id}/revoke", tag = "keys",
    security(("tenant_admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "Revoked: the client's tokens issued up to now are refused.", body = ClientRevoked),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_client(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path((app_id, client_id)): Path<(String, String)>,
) -> Result<axum::Json<ClientRevoked>> {
    Ok(axum::Json(state.revoke_client(&admin, &app_id, &client_id).await?))
}

/// Creates a Pusher key/secret pair for the app (its numeric `app_id` is allocated with the
/// first one); the secret is in the answer and nowhere else. Every field is optional: `{}`
/// grants every channel.
#[utoipa::path(post, path = "/v1/apps/{app_id}/pusher-credentials", tag = "pusher",
    security(("tenant_admin" = []), ("operator" = [])),
    request_body = CreatePusherCredential,
    responses(
        (status = 201, body = PusherCredentialCreated),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "no credentials key configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_pusher_credential(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(app_id): Path<String>,
    Json(req): Json<CreatePusherCredential>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(state.create_pusher_credential(&admin, &app_id, req).await?)))
}

/// Lists the app's Pusher credentials (never their secrets), revoked ones included.
#[utoipa::path(get, path = "/v1/apps/{app_id}/pusher-credentials", tag = "pusher",
    security(("tenant_admin" = []), ("operator" = [])), params(ListParams),
    responses((status = 200, body = Listing<PusherCredentialView>), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_pusher_credentials(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path(app_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Listing<PusherCredentialView>>> {
    Ok(axum::Json(state.list_pusher_credentials(&admin, &app_id, &params).await?))
}

/// Revokes a Pusher credential at once: connections opened with its key are closed on every
/// node and requests signed with its secret are refused.
#[utoipa::path(delete, path = "/v1/apps/{app_id}/pusher-credentials/{key}", tag = "pusher",
    security(("tenant_admin" = []), ("operator" = [])),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn revoke_pusher_credential(
    State(state): State<ControlPlaneState>,
    admin: TenantAdmin,
    Path((app_id, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    state.revoke_pusher_credential(&admin, &app_id, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
