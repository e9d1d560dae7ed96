//! Pusher's HTTP API on the data plane (`/apps/{app_id}/...`): requests signed with a Pusher
//! credential's secret ([`aviary_core::pusher::signature`]), answered in Pusher's words (plain
//! text errors with Pusher's statuses), over the operations in `crate::ops`.
//!
//! A signed request acts as a backend of the credential's app: to the operations it is an
//! API-key principal (`key_id` `pusher:<key>`) holding the credential's capabilities, so every
//! rule that applies to Aviary's REST API applies here, once.
//!
//! Served so far: `GET /apps/{app_id}/channels`. Events, batch events, one channel's info,
//! presence users and terminating a user's connections come with the WebSocket front end (they
//! need event names on publications: see `docs/pusher.md`).

use std::collections::BTreeMap;
use std::sync::Arc;

use aviary_core::PusherCredential;
use aviary_core::VerifiedApiKey;
use aviary_core::pusher::signature::ApiRequest;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::names;
use crate::{DataPlane, ops};

/// Largest request body the Pusher API reads (Pusher's batch of 10 events of 10 KB fits).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// A refusal in Pusher's words: its status and a plain-text explanation.
#[derive(Debug)]
pub struct PusherHttpError(StatusCode, String);

impl IntoResponse for PusherHttpError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl From<crate::error::Error> for PusherHttpError {
    fn from(e: crate::error::Error) -> Self {
        // Same status as Aviary's REST answer; Pusher's clients read the text, not a problem body.
        let problem = e.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        PusherHttpError(status, problem.detail)
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> PusherHttpError {
    PusherHttpError(status, message.into())
}

/// A request whose signature verified: the credential, the backend principal it acts as, and
/// its decoded query.
pub struct Signed {
    pub credential: Arc<PusherCredential>,
    pub principal: VerifiedApiKey,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
}

impl Signed {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl FromRequest<DataPlane> for Signed {
    type Rejection = PusherHttpError;

    async fn from_request(req: Request, dp: &DataPlane) -> Result<Self, PusherHttpError> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query: Vec<(String, String)> = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("malformed query string: {e}")))?;
        let body = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {MAX_BODY_BYTES} bytes")))?;
        let request = ApiRequest { method: &method, path: &path, query: &query, body: &body };
        let key = request.auth_key().ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "missing auth_key"))?;
        let credential = dp
            .inner()
            .registry
            .pusher_credential(key)
            .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "unknown auth_key"))?;
        // `/apps/{app_id}/...`: the key must belong to the app the path names.
        let app_id = path.strip_prefix("/apps/").and_then(|rest| rest.split('/').next()).unwrap_or("");
        if app_id != credential.pusher_app_id.to_string() {
            return Err(refuse(StatusCode::UNAUTHORIZED, "auth_key does not belong to this app_id"));
        }
        request
            .verify(&credential.secret, aviary_core::unix_now())
            .map_err(|e| refuse(StatusCode::UNAUTHORIZED, e.to_string()))?;
        let principal = VerifiedApiKey {
            key_id: format!("pusher:{}", credential.key),
            tenant_id: credential.tenant_id.clone(),
            app_id: credential.app_id.clone(),
            capabilities: credential.capabilities.clone(),
        };
        Ok(Signed { credential, principal, query, body })
    }
}

/// `GET /apps/{app_id}/channels?filter_by_prefix=&info=subscription_count`: the app's occupied
/// channels that Pusher clients can name, as `{"channels": {"<name>": {...}}}`.
pub async fn channels(State(dp): State<DataPlane>, signed: Signed) -> Result<axum::Json<Value>, PusherHttpError> {
    let prefix = match signed.param("filter_by_prefix").filter(|p| !p.is_empty()) {
        Some(p) => names::to_aviary(p).map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?,
        None => String::new(),
    };
    let info: Vec<&str> = signed.param("info").map(|i| i.split(',').collect()).unwrap_or_default();
    let mut subscription_count = false;
    for attribute in info {
        match attribute {
            "subscription_count" => subscription_count = true,
            "user_count" if !prefix.starts_with("presence-") => {
                return Err(refuse(StatusCode::BAD_REQUEST, "user_count needs filter_by_prefix=presence-"));
            }
            "user_count" => return Err(refuse(StatusCode::BAD_REQUEST, "user_count is not supported yet")),
            other => return Err(refuse(StatusCode::BAD_REQUEST, format!("unknown info attribute {other:?}"))),
        }
    }
    let principal = ops::Principal::ApiKey(&signed.principal);
    let listed = ops::channels::list(dp.inner(), principal, &prefix).await?;
    let channels: BTreeMap<String, Value> = listed
        .into_iter()
        .filter_map(|(channel, subscribers)| {
            let name = names::to_pusher(&channel)?;
            let attributes = if subscription_count { json!({ "subscription_count": subscribers }) } else { json!({}) };
            Some((name, attributes))
        })
        .collect();
    Ok(axum::Json(json!({ "channels": channels })))
}
