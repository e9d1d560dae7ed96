//! The backend REST API: publish (one or many), history, presence and channel listing,
//! authenticated with an app API key (`Authorization: Bearer avk_...`).
//!
//! Handlers are thin: extract, check the key belongs to the app in the path, call the
//! operation of [`crate::ops`] (which applies every rule), encode the result. Every error is
//! `application/problem+json` (see [`Error`]).

use std::net::SocketAddr;
use std::sync::Arc;

use aviary_broker::{PresenceMember, StreamPosition};
use aviary_core::problem::{BodyRejection, Problem};
use aviary_core::{ApiKeyError, VerifiedApiKey};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::DataPlane;
use crate::admission::ConnectionTicket;
use crate::error::{Error, Result};
use crate::ops::{self, Principal};

pub use crate::ops::publish::MAX_BATCH;

// ---------------------------------------------------------------------------------------------
// Extractors whose rejections are problems, like every other error.
// ---------------------------------------------------------------------------------------------

#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct Json<T>(pub T);

impl<T: Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);

/// Largest REST request body read (a full batch of 100 messages at the default 64 KiB limit
/// fits in 6.4 MiB plus its envelope); larger ones are 413 before they are buffered.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A body that is not JSON gets the answers the control plane gives ([`BodyRejection`]).
impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => BodyRejection::NotJson.into(),
            JsonRejection::BytesRejection(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                BodyRejection::TooLarge { limit: MAX_BODY_BYTES }.into()
            }
            JsonRejection::JsonDataError(e) => BodyRejection::Invalid(e.body_text()).into(),
            JsonRejection::JsonSyntaxError(e) => BodyRejection::Malformed(e.body_text()).into(),
            other => Error::BadRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Self {
        Error::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Self {
        Error::BadRequest(r.body_text())
    }
}

/// A verified app API key from `Authorization: Bearer avk_...`.
#[derive(Debug)]
pub struct AppKey(pub VerifiedApiKey);

impl FromRequestParts<DataPlane> for AppKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, dp: &DataPlane) -> Result<Self> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(aviary_core::auth::bearer_credential)
            .filter(|k| k.starts_with("avk_"))
            .ok_or_else(|| Error::Unauthorized("an app API key is required: Authorization: Bearer avk_...".into()))?;
        let inner = dp.inner();
        // The authority limits failed checks per source address (the key id is public: it
        // travels in every token); an address that spent its budget is refused before hashing.
        let source = aviary_core::ClientAddr::of(
            parts.extensions.get::<aviary_core::ClientAddr>(),
            parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
        );
        let key = inner.api_keys.verify_api_key_from(presented, source).await.map_err(|e| match e {
            ApiKeyError::Invalid => Error::Unauthorized("API key is invalid or revoked".into()),
            ApiKeyError::Throttled => Error::Throttled("too many API key checks; retry in 1 s".into()),
            ApiKeyError::Unavailable => Error::Unavailable("API key store unavailable".into()),
        })?;
        if inner.registry.api_key_revoked(&key.key_id) {
            return Err(Error::Unauthorized("API key is invalid or revoked".into()));
        }
        // A connection that presented a valid key no longer counts as pending.
        if let Some(ticket) = parts.extensions.get::<Arc<ConnectionTicket>>() {
            ticket.authenticated();
        }
        Ok(AppKey(key))
    }
}

impl AppKey {
    /// The key as the principal of an operation on the app in the path: a key of another app
    /// is refused here, before any operation (the URL names the wrong app).
    fn principal(&self, app_id: &str) -> Result<Principal<'_>> {
        let principal = Principal::ApiKey(&self.0);
        if self.0.app_id != app_id {
            return Err(principal.refused(Error::Forbidden("API key belongs to another app".into())));
        }
        Ok(principal)
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// A message to publish on the channel in the path.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PublishBody {
    /// Any JSON value; delivered to subscribers verbatim.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// Retrying with the same key within 5 minutes returns the first result and publishes
    /// nothing new; with different `data`, 409. Scoped to the API key (a client's key never
    /// matches). 1 to 128 visible ASCII characters.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Where a publication landed in its channel's stream.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

impl From<StreamPosition> for Position {
    fn from(p: StreamPosition) -> Self {
        Position { epoch: p.epoch, offset: p.offset }
    }
}

/// One message of a batch.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchMessage {
    pub channel: String,
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Up to 100 messages, on any channels of the app.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchBody {
    pub messages: Vec<BatchMessage>,
}

/// The result of one batch message, in request order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Return publications after this offset (requires `epoch`).
    pub since_offset: Option<u64>,
    /// The epoch `since_offset` belongs to.
    pub epoch: Option<String>,
    /// At most this many publications (default 100, max 1000).
    pub limit: Option<usize>,
}

/// One stored publication.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPublication {
    pub epoch: String,
    pub offset: u64,
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// The publishing client; `null` for backend publishes.
    pub client_id: Option<String>,
    /// Milliseconds since the Unix epoch when it was accepted.
    pub ts: i64,
    /// The event name it was published with (the Pusher HTTP API's `event`); absent for
    /// messages published without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    /// Oldest first.
    pub publications: Vec<HistoryPublication>,
    /// The channel's current position.
    pub position: Position,
    /// With `since_offset`: false when history no longer reaches back that far or the epoch
    /// changed (the caller must reload state).
    pub recovered: bool,
}

/// A presence member.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub client_id: String,
    pub connection_id: String,
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

impl From<PresenceMember> for Member {
    fn from(m: PresenceMember) -> Self {
        Member { client_id: m.client_id, connection_id: m.connection_id, data: m.data }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceResponse {
    pub members: Vec<Member>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChannelsQuery {
    /// Only channels whose name starts with this.
    pub prefix: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChannelInfo {
    pub channel: String,
    /// Subscribers connected to this node.
    pub subscribers: usize,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChannelsResponse {
    pub channels: Vec<ChannelInfo>,
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/// Publish a message to one channel.
#[utoipa::path(
    post,
    path = "/v1/apps/{app_id}/channels/{channel}/messages",
    tag = "messages",
    params(("app_id" = String, Path, description = "App id"), ("channel" = String, Path, description = "Channel name")),
    request_body = PublishBody,
    responses(
        (status = 201, description = "Published", body = Position),
        (status = 400, description = "Invalid channel, malformed JSON or a body of the wrong shape", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key of another app or not allowed to publish here (`forbidden`), or app disabled or deleted (`app-disabled`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown channel namespace", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Payload larger than the app's max_message_bytes, or body larger than 8 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Message rate quota exceeded", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Engine unavailable; retry with the same idempotency key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn publish(
    State(dp): State<DataPlane>,
    key: AppKey,
    Path((app_id, channel)): Path<(String, String)>,
    Json(body): Json<PublishBody>,
) -> Result<(StatusCode, Json<Position>)> {
    let message = ops::publish::Message {
        channel: &channel,
        data: &body.data,
        idempotency_key: body.idempotency_key,
        event: None,
        exclude: None,
    };
    let position = ops::publish::publish(dp.inner(), key.principal(&app_id)?, message).await?;
    Ok((StatusCode::CREATED, Json(position.into())))
}

/// Publish up to 100 messages to any channels of the app in one call.
///
/// Every message is checked (channel, capability, size, rate) before any is published; if one
/// fails a check, nothing is published. Messages are then published in order; if the engine
/// fails part-way, the earlier ones stay published, so retry with the same idempotency keys.
#[utoipa::path(
    post,
    path = "/v1/apps/{app_id}/messages",
    tag = "messages",
    params(("app_id" = String, Path, description = "App id")),
    request_body = BatchBody,
    responses(
        (status = 201, description = "All published; results in request order", body = BatchResponse),
        (status = 400, description = "Invalid channel, malformed JSON, a body of the wrong shape, or more than 100 messages", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key of another app or not allowed to publish on a channel (`forbidden`), or app disabled or deleted (`app-disabled`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown channel namespace", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "A payload larger than the app's max_message_bytes, or body larger than 8 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Message rate quota exceeded", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Engine unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn publish_batch(
    State(dp): State<DataPlane>,
    key: AppKey,
    Path(app_id): Path<String>,
    Json(mut body): Json<BatchBody>,
) -> Result<(StatusCode, Json<BatchResponse>)> {
    let principal = key.principal(&app_id)?;
    let messages = body
        .messages
        .iter_mut()
        .map(|m| ops::publish::Message {
            channel: &m.channel,
            data: &m.data,
            idempotency_key: m.idempotency_key.take(),
            event: None,
            exclude: None,
        })
        .collect();
    let results = ops::publish::publish_batch(dp.inner(), principal, messages)
        .await?
        .into_iter()
        .map(|(key, position)| BatchResult {
            channel: key.channel.to_string(),
            epoch: position.epoch,
            offset: position.offset,
        })
        .collect();
    Ok((StatusCode::CREATED, Json(BatchResponse { results })))
}

/// Read a channel's history.
#[utoipa::path(
    get,
    path = "/v1/apps/{app_id}/channels/{channel}/history",
    tag = "channels",
    params(("app_id" = String, Path, description = "App id"), ("channel" = String, Path, description = "Channel name"), HistoryQuery),
    responses(
        (status = 200, description = "Publications, oldest first", body = HistoryResponse),
        (status = 400, description = "Invalid channel or query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key of another app or lacking the history capability (`forbidden`), or app disabled or deleted (`app-disabled`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown channel namespace", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn history(
    State(dp): State<DataPlane>,
    key: AppKey,
    Path((app_id, channel)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryResponse>> {
    let principal = key.principal(&app_id)?;
    let since = match (q.since_offset, q.epoch) {
        (Some(offset), Some(epoch)) => Some(StreamPosition { epoch, offset }),
        (None, None) => None,
        _ => return Err(principal.refused(Error::BadRequest("since_offset and epoch go together".into()))),
    };
    let page = ops::history::history(dp.inner(), principal, &channel, since.as_ref(), q.limit).await?;
    let mut publications = Vec::with_capacity(page.publications.len());
    for p in page.publications {
        let text =
            String::from_utf8(p.data.to_vec()).map_err(|_| Error::Internal("stored payload is not UTF-8".into()))?;
        let data = RawValue::from_string(text).map_err(|_| Error::Internal("stored payload is not JSON".into()))?;
        publications.push(HistoryPublication {
            epoch: p.epoch.to_string(),
            offset: p.offset,
            data,
            client_id: p.client_id.map(|c| c.to_string()),
            ts: p.ts,
            event: p.event.map(|e| e.to_string()),
        });
    }
    Ok(Json(HistoryResponse { publications, position: page.position.into(), recovered: page.recovered }))
}

/// List a channel's presence members.
#[utoipa::path(
    get,
    path = "/v1/apps/{app_id}/channels/{channel}/presence",
    tag = "channels",
    params(("app_id" = String, Path, description = "App id"), ("channel" = String, Path, description = "Channel name")),
    responses(
        (status = 200, description = "Current members", body = PresenceResponse),
        (status = 400, description = "Invalid channel", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key of another app or lacking the presence capability, or presence off on the channel's namespace (`forbidden`); app disabled or deleted (`app-disabled`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown channel namespace", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn presence(
    State(dp): State<DataPlane>,
    key: AppKey,
    Path((app_id, channel)): Path<(String, String)>,
) -> Result<Json<PresenceResponse>> {
    let members = ops::presence::members(dp.inner(), key.principal(&app_id)?, &channel).await?;
    Ok(Json(PresenceResponse { members: members.into_iter().map(Member::from).collect() }))
}

/// List the app's active channels with their subscriber counts: across the cluster when the
/// node reports to Redis (other nodes' counts lag by up to a couple of seconds), else this
/// node's.
#[utoipa::path(
    get,
    path = "/v1/apps/{app_id}/channels",
    tag = "channels",
    params(("app_id" = String, Path, description = "App id"), ChannelsQuery),
    responses(
        (status = 200, description = "Active channels with subscriber counts", body = ChannelsResponse),
        (status = 503, description = "Cluster channel counts unavailable (Redis unreachable); retry", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key belongs to another app (`forbidden`), or app disabled or deleted (`app-disabled`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn channels(
    State(dp): State<DataPlane>,
    key: AppKey,
    Path(app_id): Path<String>,
    Query(q): Query<ChannelsQuery>,
) -> Result<Json<ChannelsResponse>> {
    let prefix = q.prefix.as_deref().unwrap_or("");
    let channels = ops::channels::list(dp.inner(), key.principal(&app_id)?, prefix)
        .await?
        .into_iter()
        .map(|(channel, subscribers)| ChannelInfo { channel, subscribers })
        .collect();
    Ok(Json(ChannelsResponse { channels }))
}

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("avk_...")
                    .description(Some("An app API key from the control plane."))
                    .build(),
            ),
        );
    }
}

/// The data plane's OpenAPI document (merged into the product's by the binary).
#[derive(OpenApi)]
#[openapi(
    info(title = "Aviary data plane", description = "Publish, history, presence and channel listing for app backends."),
    paths(publish, publish_batch, history, presence, channels),
    components(schemas(
        PublishBody, Position, BatchMessage, BatchBody, BatchResult, BatchResponse, HistoryPublication,
        HistoryResponse, Member, PresenceResponse, ChannelInfo, ChannelsResponse, Problem
    )),
    modifiers(&SecurityAddon),
    tags((name = "messages", description = "Publishing"), (name = "channels", description = "Channel state"))
)]
pub struct ApiDoc;
