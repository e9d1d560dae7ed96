//! Connection token minting, signing key rotation and the public JWKS.

use aviary_core::problem::Problem;
use aviary_core::token::Jwks;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;

use super::extract::Json;
use crate::ControlPlaneState;
use crate::auth::{AppKey, Operator};
use crate::error::Result;
use crate::tokens::{IssuedToken, TokenRequest};

/// Mints a connection token for one client of the key's app.
#[utoipa::path(post, path = "/v1/apps/{app_id}/tokens", tag = "tokens", security(("api_key" = [])),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The connection token and when it expires.", body = IssuedToken),
        (status = 400, description = "invalid body, or ttl_s above the app's max_token_ttl_s (token-ttl-too-long)", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "capability-escalation or app-disabled", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn issue_token(
    State(state): State<ControlPlaneState>,
    AppKey(key): AppKey,
    Path(app_id): Path<String>,
    Json(req): Json<TokenRequest>,
) -> Result<axum::Json<IssuedToken>> {
    Ok(axum::Json(state.issue_token(&key, &app_id, req)?))
}

/// Answer of a rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rotated {
    /// The new current signing key; the previous one stays in the JWKS until its tokens expire.
    pub kid: String,
}

/// Makes a new current signing key.
#[utoipa::path(post, path = "/v1/signing-keys/rotate", tag = "tokens", security(("operator" = [])),
    responses((status = 200, description = "The id (`kid`) of the new current signing key.", body = Rotated), (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn rotate_signing_key(State(state): State<ControlPlaneState>, _: Operator) -> Result<axum::Json<Rotated>> {
    Ok(axum::Json(Rotated { kid: state.rotate_signing_key().await? }))
}

/// The public keys that verify connection tokens (current and recently rotated out).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "tokens", responses((status = 200, description = "The JSON Web Key Set; cacheable for 60 s.", body = Jwks)))]
pub async fn jwks(State(state): State<ControlPlaneState>) -> impl IntoResponse {
    // Short cache: verifiers pick up a rotation within a minute.
    ([(header::CACHE_CONTROL, "public, max-age=60")], axum::Json(state.keyring().jwks()))
}
