//! Pusher's HTTP API on the data plane (`/apps/{app_id}/...`): requests signed with a Pusher
//! credential's secret ([`aviary_core::pusher::signature`]), answered in Pusher's words (plain
//! text errors with Pusher's statuses), over the operations in `crate::ops`.
//!
//! A signed request acts as a backend of the credential's app: to the operations it is an
//! API-key principal (`key_id` `pusher:<key>`) holding the credential's capabilities, so every
//! rule that applies to Aviary's REST API applies here, once.
//!
//! Routes: `POST events`, `POST batch_events`, `GET channels`, `GET channels/{channel}`,
//! `GET channels/{channel}/users`, `POST users/{user_id}/terminate_connections`. Refusals keep
//! Pusher's statuses: 400 bad request, 401 authentication, 403 app disabled, capability missing
//! or over quota (Pusher's "over message quota"), 413 a too large event.

use std::sync::Arc;

use aviary_core::PusherCredential;
use aviary_core::VerifiedApiKey;
use aviary_core::pusher::signature::ApiRequest;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{data, names};
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
        use crate::error::Error;
        // Pusher's statuses where Pusher has one for the case; else the REST answer's status.
        // Pusher's clients read the text, not a problem body.
        let problem = e.problem();
        let status = match e {
            Error::RateLimited(_) | Error::QuotaExceeded(_) => StatusCode::FORBIDDEN,
            Error::UnknownNamespace => StatusCode::BAD_REQUEST,
            _ => StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
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

    fn principal(&self) -> ops::Principal<'_> {
        ops::Principal::ApiKey(&self.principal)
    }

    /// The body as JSON of type `T`; 400 in Pusher's words otherwise.
    fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, PusherHttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
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
        // `/apps/{app_id}/...`: the key must belong to the app the path names. (The one route
        // without an app id, the Python SDK's `/users/{id}/terminate_connections`, acts on the
        // key's app.)
        if let Some(rest) = path.strip_prefix("/apps/") {
            let app_id = rest.split('/').next().unwrap_or("");
            if app_id != credential.pusher_app_id.to_string() {
                return Err(refuse(StatusCode::UNAUTHORIZED, "auth_key does not belong to this app_id"));
            }
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

/// Most channels one event may name (Pusher's limit).
pub const MAX_EVENT_CHANNELS: usize = 100;
/// Most events one batch may carry.
pub const MAX_BATCH_EVENTS: usize = ops::publish::MAX_BATCH;

/// The `info` attributes a request asks for.
#[derive(Debug, Default, Clone, Copy)]
struct Info {
    subscription_count: bool,
    user_count: bool,
}

impl Info {
    /// Reads `info=subscription_count,user_count`; an unknown attribute is a 400.
    fn parse(info: Option<&str>) -> Result<Info, PusherHttpError> {
        let mut out = Info::default();
        for attribute in info.unwrap_or("").split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match attribute {
                "subscription_count" => out.subscription_count = true,
                "user_count" => out.user_count = true,
                other => return Err(refuse(StatusCode::BAD_REQUEST, format!("unknown info attribute {other:?}"))),
            }
        }
        Ok(out)
    }

    fn any(self) -> bool {
        self.subscription_count || self.user_count
    }
}

/// The Aviary channel of a Pusher name, or 400.
fn channel(pusher: &str) -> Result<String, PusherHttpError> {
    names::to_aviary(pusher).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("invalid channel {pusher:?}: {e}")))
}

fn is_presence(pusher: &str) -> bool {
    pusher.starts_with("presence-")
}

/// The attributes `info` asks for of one channel (Aviary name `channel`, Pusher name `pusher`);
/// `user_count` only for presence channels (Pusher refuses it elsewhere, with 400, before
/// anything is done).
async fn attributes(
    dp: &DataPlane,
    signed: &Signed,
    channel: &str,
    pusher: &str,
    info: Info,
) -> Result<serde_json::Map<String, Value>, PusherHttpError> {
    let mut out = serde_json::Map::new();
    if info.subscription_count {
        let n = ops::channels::subscribers(dp.inner(), signed.principal(), channel).await?;
        out.insert("subscription_count".into(), n.into());
    }
    if info.user_count && is_presence(pusher) {
        out.insert("user_count".into(), user_ids(dp, signed, channel).await?.len().into());
    }
    Ok(out)
}

/// The distinct user ids (Aviary client ids) present on a presence channel.
async fn user_ids(dp: &DataPlane, signed: &Signed, channel: &str) -> Result<Vec<String>, PusherHttpError> {
    let members = ops::presence::members(dp.inner(), signed.principal(), channel).await?;
    let ids: std::collections::BTreeSet<String> = members.into_iter().map(|m| m.client_id).collect();
    Ok(ids.into_iter().collect())
}

fn user_count_needs_presence(info: Info, pusher_names: &[&str]) -> Result<(), PusherHttpError> {
    if info.user_count && pusher_names.iter().any(|n| !is_presence(n)) {
        return Err(refuse(StatusCode::BAD_REQUEST, "user_count may only be requested for presence channels"));
    }
    Ok(())
}

/// One event as Pusher's API takes it (`channels` or `channel`).
#[derive(Debug, Deserialize)]
struct EventBody {
    name: String,
    data: Box<RawValue>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

impl EventBody {
    fn channel_names(&self) -> Vec<&str> {
        match (&self.channels, &self.channel) {
            (Some(list), _) => list.iter().map(String::as_str).collect(),
            (None, Some(one)) => vec![one.as_str()],
            (None, None) => Vec::new(),
        }
    }

    fn socket_id(&self) -> Result<Option<&str>, PusherHttpError> {
        match self.socket_id.as_deref() {
            Some(s) if !aviary_core::pusher::signature::valid_socket_id(s) => {
                Err(refuse(StatusCode::BAD_REQUEST, format!("invalid socket_id {s:?}")))
            }
            other => Ok(other),
        }
    }
}

/// An event checked and translated: its Aviary channels, data and exclusion.
struct Prepared<'a> {
    body: &'a EventBody,
    pusher_names: Vec<&'a str>,
    channels: Vec<String>,
    data: Box<RawValue>,
    exclude: Option<&'a str>,
    info: Info,
}

fn prepare(body: &EventBody, max_channels: usize) -> Result<Prepared<'_>, PusherHttpError> {
    let pusher_names = body.channel_names();
    if pusher_names.is_empty() {
        return Err(refuse(StatusCode::BAD_REQUEST, "missing channels"));
    }
    if pusher_names.len() > max_channels {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("too many channels: at most {max_channels}")));
    }
    let channels = pusher_names.iter().map(|n| channel(n)).collect::<Result<Vec<_>, _>>()?;
    let info = Info::parse(body.info.as_deref())?;
    user_count_needs_presence(info, &pusher_names)?;
    Ok(Prepared { body, pusher_names, channels, data: data::to_aviary(&body.data), exclude: body.socket_id()?, info })
}

impl Prepared<'_> {
    fn messages(&self) -> impl Iterator<Item = ops::publish::Message<'_>> {
        self.channels.iter().map(|channel| ops::publish::Message {
            channel,
            data: &self.data,
            idempotency_key: None,
            event: Some(&self.body.name),
            exclude: self.exclude,
        })
    }

    /// `{"<pusher name>": {attributes}}` for every channel of the event.
    async fn channel_attributes(&self, dp: &DataPlane, signed: &Signed) -> Result<Value, PusherHttpError> {
        let mut out = serde_json::Map::new();
        for (channel, pusher) in self.channels.iter().zip(&self.pusher_names) {
            out.insert((*pusher).to_owned(), Value::Object(attributes(dp, signed, channel, pusher, self.info).await?));
        }
        Ok(Value::Object(out))
    }
}

/// `POST /apps/{app_id}/events`: one event on up to 100 channels, all checked before any is
/// published; `socket_id` leaves that connection out; `info` answers channel attributes.
pub async fn events(State(dp): State<DataPlane>, signed: Signed) -> Result<axum::Json<Value>, PusherHttpError> {
    let body: EventBody = signed.json()?;
    let event = prepare(&body, MAX_EVENT_CHANNELS)?;
    ops::publish::publish_batch(dp.inner(), signed.principal(), event.messages().collect()).await?;
    if !event.info.any() {
        return Ok(axum::Json(json!({})));
    }
    Ok(axum::Json(json!({ "channels": event.channel_attributes(&dp, &signed).await? })))
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    batch: Vec<EventBody>,
}

/// `POST /apps/{app_id}/batch_events`: up to 100 events, one channel each, all checked before
/// any is published; with `info` on an event, its channel's attributes in `batch`, in order.
pub async fn batch_events(State(dp): State<DataPlane>, signed: Signed) -> Result<axum::Json<Value>, PusherHttpError> {
    let body: BatchBody = signed.json()?;
    if body.batch.is_empty() {
        return Err(refuse(StatusCode::BAD_REQUEST, "batch is empty"));
    }
    if body.batch.len() > MAX_BATCH_EVENTS {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("too many events: at most {MAX_BATCH_EVENTS} per batch")));
    }
    let events = body.batch.iter().map(|e| prepare(e, 1)).collect::<Result<Vec<_>, _>>()?;
    let messages = events.iter().flat_map(Prepared::messages).collect();
    ops::publish::publish_batch(dp.inner(), signed.principal(), messages).await?;
    if !events.iter().any(|e| e.info.any()) {
        return Ok(axum::Json(json!({})));
    }
    let mut batch = Vec::with_capacity(events.len());
    for e in &events {
        batch.push(Value::Object(attributes(&dp, &signed, &e.channels[0], e.pusher_names[0], e.info).await?));
    }
    Ok(axum::Json(json!({ "batch": batch })))
}

/// `GET /apps/{app_id}/channels?filter_by_prefix=&info=subscription_count,user_count`: the
/// app's occupied channels that Pusher clients can name, as `{"channels": {"<name>": {...}}}`
/// (`user_count` needs `filter_by_prefix=presence-`, as on Pusher).
pub async fn channels(State(dp): State<DataPlane>, signed: Signed) -> Result<axum::Json<Value>, PusherHttpError> {
    let pusher_prefix = signed.param("filter_by_prefix").unwrap_or("");
    let prefix = if pusher_prefix.is_empty() { String::new() } else { channel(pusher_prefix)? };
    let info = Info::parse(signed.param("info"))?;
    if info.user_count && !is_presence(pusher_prefix) {
        return Err(refuse(StatusCode::BAD_REQUEST, "user_count needs filter_by_prefix=presence-"));
    }
    let listed = ops::channels::list(dp.inner(), signed.principal(), &prefix).await?;
    let mut channels = serde_json::Map::new();
    for (channel, subscribers) in listed {
        let Some(name) = names::to_pusher(&channel) else { continue };
        let mut attributes = serde_json::Map::new();
        if info.subscription_count {
            attributes.insert("subscription_count".into(), subscribers.into());
        }
        if info.user_count {
            attributes.insert("user_count".into(), user_ids(&dp, &signed, &channel).await?.len().into());
        }
        channels.insert(name, Value::Object(attributes));
    }
    Ok(axum::Json(json!({ "channels": channels })))
}

/// `GET /apps/{app_id}/channels/{channel}?info=subscription_count,user_count`:
/// `{"occupied": bool, ...attributes}`.
pub async fn channel_info(
    State(dp): State<DataPlane>,
    Path((_, pusher)): Path<(String, String)>,
    signed: Signed,
) -> Result<axum::Json<Value>, PusherHttpError> {
    let channel = channel(&pusher)?;
    let info = Info::parse(signed.param("info"))?;
    user_count_needs_presence(info, &[&pusher])?;
    let subscribers = ops::channels::subscribers(dp.inner(), signed.principal(), &channel).await?;
    let mut out = attributes(&dp, &signed, &channel, &pusher, Info { subscription_count: false, ..info }).await?;
    out.insert("occupied".into(), (subscribers > 0).into());
    if info.subscription_count {
        out.insert("subscription_count".into(), subscribers.into());
    }
    Ok(axum::Json(Value::Object(out)))
}

/// `GET /apps/{app_id}/channels/{channel}/users`: a presence channel's users,
/// `{"users": [{"id": "..."}]}` (400 for other channels, as on Pusher).
pub async fn channel_users(
    State(dp): State<DataPlane>,
    Path((_, pusher)): Path<(String, String)>,
    signed: Signed,
) -> Result<axum::Json<Value>, PusherHttpError> {
    let channel = channel(&pusher)?;
    if !is_presence(&pusher) {
        return Err(refuse(StatusCode::BAD_REQUEST, "users can only be listed for presence channels"));
    }
    let users: Vec<Value> = user_ids(&dp, &signed, &channel).await?.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(axum::Json(json!({ "users": users })))
}

/// `POST /apps/{app_id}/users/{user_id}/terminate_connections`: closes every connection of the
/// user (a Pusher connection signed in as it, an Aviary connection with that client id) on
/// every node of the app.
pub async fn terminate_connections(
    State(dp): State<DataPlane>,
    Path((_, user_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<axum::Json<Value>, PusherHttpError> {
    terminate(&dp, &signed, &user_id).await
}

/// `POST /users/{user_id}/terminate_connections`: the same, on the signing key's app. The PyPI
/// `pusher` SDK (3.3) sends its `terminate_user_connections` here, without `/apps/{app_id}`.
pub async fn terminate_connections_of_key_app(
    State(dp): State<DataPlane>,
    Path(user_id): Path<String>,
    signed: Signed,
) -> Result<axum::Json<Value>, PusherHttpError> {
    terminate(&dp, &signed, &user_id).await
}

async fn terminate(dp: &DataPlane, signed: &Signed, user_id: &str) -> Result<axum::Json<Value>, PusherHttpError> {
    if user_id.is_empty() || user_id.len() > 200 {
        return Err(refuse(StatusCode::BAD_REQUEST, "user_id must be 1 to 200 bytes"));
    }
    ops::connections::terminate_user(dp.inner(), signed.principal(), user_id).await?;
    Ok(axum::Json(json!({})))
}
