//! One Pusher connection: the credential it opened with, its socket id, the channels it holds,
//! the user it signed in as, and the decoding of each protocol-7 frame into an operation of
//! [`crate::ops`]. Like Aviary's own session it does no socket I/O: `socket.rs` feeds it
//! frames and writes what it queues on its [`SessionHandle`].
//!
//! To the operations a Pusher connection is a client principal of the credential's app holding
//! the credential's capabilities, with the socket id as its client id until it signs in (the
//! user id after). Channel authorization signatures replace Aviary's tokens for private and
//! presence channels; every other rule (namespaces, capabilities, quotas) is the operations'.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aviary_broker::{ChannelKey, StreamPosition};
use aviary_core::pusher::signature;
use aviary_core::{ConnectionClaims, PusherCredential};
use serde_json::Value;
use serde_json::value::RawValue;

use super::frames::{self, ClientFrame, code};
use super::members::Members;
use super::names::{self, ChannelKind};
use crate::NodeState;
use crate::error::Error;
use crate::hub::Subscriber;
use crate::metrics::{self, ConnectionMetrics};
use crate::ops::{self, ClientPrincipal, Principal};
use crate::outbound::{Delivery, Outbound};
use crate::protocol::{CloseReason, Text, close};
use crate::quota_enforcer::ConnectionPermit;
use crate::session_handle::SessionHandle;

/// Client events a connection may send per second (Pusher's limit).
pub const CLIENT_EVENTS_PER_S: u32 = 10;

use super::names::USER_CHANNEL_PREFIX;

/// What the transport should do after a frame.
#[derive(Debug)]
pub enum Flow {
    Continue,
    Close(CloseReason),
}

/// One channel this connection subscribes to.
struct Subscription {
    key: ChannelKey,
    /// The presence entry it made (presence channels), left on unsubscribe.
    presence: Option<String>,
}

impl ops::subscribe::Held for HashMap<Arc<str>, Subscription> {
    fn count(&self) -> usize {
        self.len()
    }
    fn contains(&self, channel: &str) -> bool {
        self.contains_key(channel)
    }
}

/// Client events sent in the current one-second window.
struct ClientEventWindow {
    started: Instant,
    sent: u32,
}

impl ClientEventWindow {
    fn allow(&mut self) -> bool {
        if self.started.elapsed() >= Duration::from_secs(1) {
            self.started = Instant::now();
            self.sent = 0;
        }
        self.sent += 1;
        self.sent <= CLIENT_EVENTS_PER_S
    }
}

/// A refusal at connect time: Pusher's code and message (sent as `pusher:error`, then the close).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub message: String,
}

fn refused(code: u16, message: impl Into<String>) -> Refused {
    Refused { code, message: message.into() }
}

/// One Pusher connection.
pub struct Connection {
    dp: Arc<NodeState>,
    pub handle: Arc<SessionHandle>,
    credential: Arc<PusherCredential>,
    principal: ClientPrincipal,
    permit: Option<ConnectionPermit>,
    /// Aviary channel name -> its subscription.
    subscriptions: HashMap<Arc<str>, Subscription>,
    /// The user id it signed in as (`pusher:signin`).
    user: Option<String>,
    client_events: ClientEventWindow,
}

impl Connection {
    /// Admits a connection for the credential `key`: the credential is live, its app enabled,
    /// the origin allowed and the app under its connection quota. Registers the connection
    /// with the node (drain, revocations, lookups by socket id).
    pub async fn open(dp: Arc<NodeState>, key: &str, origin: Option<&str>) -> Result<Connection, Refused> {
        let credential = dp
            .registry
            .pusher_credential(key)
            .ok_or_else(|| refused(code::APP_DOES_NOT_EXIST, format!("App key {key} does not exist")))?;
        let app = match dp.registry.app(&credential.app_id) {
            Some(app) if app.enabled && app.tenant_id == credential.tenant_id => app,
            Some(_) => return Err(refused(code::APP_DISABLED, "App is disabled")),
            None => return Err(refused(code::APP_DOES_NOT_EXIST, format!("App key {key} does not exist"))),
        };
        if !app.origin_allowed(origin) {
            metrics::rejection(&app.tenant_id, &app.app_id, "origin");
            return Err(refused(code::UNAUTHORIZED, "Origin not allowed for this app"));
        }
        let permit = match ConnectionPermit::acquire(&dp.quotas, &app).await {
            Ok(Some(permit)) => permit,
            Ok(None) => {
                metrics::rejection(&app.tenant_id, &app.app_id, "connection_quota");
                return Err(refused(code::OVER_CONNECTION_QUOTA, "Application is over connection quota"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "connection quota unavailable; refusing the Pusher connection");
                metrics::rejection(&app.tenant_id, &app.app_id, "quota_unavailable");
                return Err(refused(code::OVER_CAPACITY, "Over capacity; retry shortly"));
            }
        };
        let handle = SessionHandle::new(dp.config.outbound_queue_capacity);
        let socket_id = handle.socket_id.to_string();
        let now_ms = aviary_core::unix_now_ms();
        let usage = dp.usage.app(&app.tenant_id, &app.app_id);
        handle.set_metrics(Arc::new(ConnectionMetrics::open(&app.tenant_id, &app.app_id, "pusher", usage.clone())));
        let claims = ConnectionClaims {
            iss: aviary_core::token::ISSUER.to_owned(),
            sub: socket_id.clone(),
            tid: app.tenant_id.clone(),
            app: app.app_id.clone(),
            akid: credential_key_id(&credential.key),
            iat: now_ms / 1000,
            exp: i64::MAX,
            jti: uuid::Uuid::now_v7().to_string(),
            cap: credential.capabilities.clone(),
            info: None,
        };
        let principal = ClientPrincipal {
            app_id: app.app_id.as_str().into(),
            client_id: socket_id.as_str().into(),
            tenant_id: app.tenant_id.clone(),
            connection_id: handle.connection_id.clone(),
            usage,
            claims,
        };
        handle.set_identity(principal.identity());
        let span = tracing::Span::current();
        span.record("tenant_id", app.tenant_id.as_str());
        span.record("app_id", app.app_id.as_str());
        span.record("connection_id", &*handle.connection_id);
        span.record("socket_id", socket_id.as_str());
        dp.sessions.insert(handle.connection_id.clone(), handle.clone());
        Ok(Connection {
            dp,
            handle,
            credential,
            principal,
            permit: Some(permit),
            subscriptions: HashMap::new(),
            user: None,
            client_events: ClientEventWindow { started: Instant::now(), sent: 0 },
        })
    }

    /// Picks up a change of the credential (capabilities, `client_events`) before a decision
    /// that depends on it; `false` when it was revoked meanwhile (the revocation closes the
    /// connection).
    fn refresh_credential(&mut self) -> bool {
        let Some(current) = self.dp.registry.pusher_credential(&self.credential.key) else { return false };
        if !Arc::ptr_eq(&current, &self.credential) {
            self.principal.claims.cap = current.capabilities.clone();
            self.credential = current;
        }
        true
    }

    /// The presence sets this connection entered (refreshed while it lives).
    pub fn presence_keys(&self) -> Vec<ChannelKey> {
        self.subscriptions.values().filter(|s| s.presence.is_some()).map(|s| s.key.clone()).collect()
    }

    pub fn socket_id(&self) -> &str {
        &self.handle.socket_id
    }

    /// The app's largest accepted frame: its message limit plus room for the envelope.
    pub fn max_frame_bytes(&self) -> usize {
        let limit = self.dp.registry.app(&self.principal.app_id).map_or(0, |a| a.quotas.max_message_bytes as usize);
        limit + crate::FRAME_ENVELOPE_BYTES
    }

    /// Queues a frame for this connection, waiting for room unless it is closing.
    pub async fn send(&self, frame: String) {
        self.send_item(Outbound::Frame(Text::from(frame))).await;
    }

    async fn send_item(&self, item: Outbound) {
        tokio::select! {
            _ = self.handle.outbox.push(item) => {}
            _ = self.handle.closed() => {}
        }
    }

    /// Handles one text frame.
    pub async fn handle_text(&mut self, text: &str) -> Flow {
        if !self.refresh_credential() {
            return Flow::Close(CloseReason::new(close::REVOKED, "Pusher credential revoked"));
        }
        let frame = match frames::decode(text) {
            Ok(frame) => frame,
            Err(e) => {
                metrics::rejection(&self.principal.tenant_id, &self.principal.app_id, "bad_request");
                self.send(frames::error(None, &e.to_string())).await;
                return Flow::Continue;
            }
        };
        match frame {
            ClientFrame::Ping => self.send(frames::pong()).await,
            ClientFrame::Pong => {}
            ClientFrame::Subscribe { channel, auth, channel_data } => {
                return Box::pin(self.subscribe(&channel, auth.as_deref(), channel_data.as_deref())).await;
            }
            ClientFrame::Unsubscribe { channel } => Box::pin(self.unsubscribe(&channel)).await,
            ClientFrame::Signin { auth, user_data } => self.signin(&auth, &user_data).await,
            ClientFrame::ClientEvent { event, channel, data } => {
                return Box::pin(self.client_event(&event, &channel, &data)).await;
            }
        }
        Flow::Continue
    }

    /// Answers a refused subscription: `pusher:subscription_error` on the channel (pusher-js
    /// emits it on the channel object) and a `pusher:error` with `code` (kept open).
    async fn subscription_refused(&self, channel: &str, code: Option<u16>, status: u16, message: &str) {
        let kind = if status == 401 || status == 403 { "AuthError" } else { "SubscriptionError" };
        let data = serde_json::json!({ "type": kind, "error": message, "status": status }).to_string();
        self.send(frames::event(channel, "pusher:subscription_error", &data, None)).await;
        self.send(frames::error(code, message)).await;
    }

    /// The operation error as the subscription refusal Pusher clients understand.
    async fn operation_refused(&self, channel: &str, e: &Error) {
        let status = e.problem().status;
        let code = matches!(status, 401 | 403).then_some(code::UNAUTHORIZED);
        self.subscription_refused(channel, code, status, &e.public_message()).await;
    }

    async fn subscribe(&mut self, pusher_name: &str, auth: Option<&str>, channel_data: Option<&str>) -> Flow {
        let aviary = match self.aviary_channel(pusher_name) {
            Ok(name) => name,
            Err(message) => {
                self.subscription_refused(pusher_name, None, 400, &message).await;
                return Flow::Continue;
            }
        };
        let kind = ChannelKind::of(pusher_name);
        let is_user_channel = pusher_name.starts_with(USER_CHANNEL_PREFIX);
        if kind.needs_auth() {
            let Some(auth) = auth else {
                self.subscription_refused(pusher_name, Some(code::UNAUTHORIZED), 401, "Missing auth").await;
                return Flow::Continue;
            };
            let data = (kind == ChannelKind::Presence).then_some(channel_data.unwrap_or(""));
            let checked = signature::verify_channel_auth(
                &self.credential.key,
                &self.credential.secret,
                auth,
                self.socket_id(),
                pusher_name,
                data,
            );
            if let Err(e) = checked {
                metrics::rejection(&self.principal.tenant_id, &self.principal.app_id, "pusher_signature");
                let message = format!("Invalid signature for {pusher_name}: {e}");
                self.subscription_refused(pusher_name, Some(code::UNAUTHORIZED), 401, &message).await;
                return Flow::Continue;
            }
        }
        let member = if kind == ChannelKind::Presence {
            match presence_member(channel_data) {
                Ok(member) => Some(member),
                Err(message) => {
                    self.subscription_refused(pusher_name, None, 400, &message).await;
                    return Flow::Continue;
                }
            }
        } else {
            None
        };
        let presence = member.is_some();
        let key = if is_user_channel {
            // Only the signed-in user's own channel; no capability names it.
            if self.user.as_deref() != pusher_name.strip_prefix(USER_CHANNEL_PREFIX) {
                let message = "Sign in as this user to receive its events";
                self.subscription_refused(pusher_name, Some(code::UNAUTHORIZED), 403, message).await;
                return Flow::Continue;
            }
            if self.subscriptions.contains_key(aviary.as_str()) {
                self.send(frames::subscription_succeeded(pusher_name, None)).await;
                return Flow::Continue;
            }
            ChannelKey::new(&self.principal.app_id, &aviary)
        } else {
            match ops::subscribe::admit_one(&self.dp, &self.principal, &aviary, presence, &self.subscriptions) {
                Ok(key) => key,
                Err(Error::AppDisabled) => {
                    return Flow::Close(CloseReason::new(close::APP_UNAVAILABLE, "app is disabled or deleted"));
                }
                Err(Error::BadRequest(_)) if self.subscriptions.contains_key(aviary.as_str()) => {
                    // pusher-js subscribes again after a reconnect of the same object: answer
                    // as Pusher does, with success.
                    self.send(frames::subscription_succeeded(pusher_name, None)).await;
                    return Flow::Continue;
                }
                Err(e) => {
                    self.operation_refused(pusher_name, &e).await;
                    return Flow::Continue;
                }
            }
        };
        let capacity = self.dp.config.outbound_queue_capacity.max(1);
        let subscriber = Arc::new(match &member {
            Some(_) => Subscriber::with_members(self.handle.clone(), Members::new(pusher_name), capacity),
            None => Subscriber::new(self.handle.clone(), false, capacity),
        });
        if let Err(e) = self.dp.hub.subscribe(&key, subscriber.clone()).await {
            let e = Principal::Client(&self.principal).refused(e.into());
            self.operation_refused(pusher_name, &e).await;
            return Flow::Continue;
        }
        self.subscriptions.insert(key.channel.clone(), Subscription { key: key.clone(), presence: None });
        if let Some(m) = self.handle.metrics() {
            m.subscriptions.increment(1.0);
        }
        let ready = match member {
            Some((user_id, user_info)) => self.enter_presence(&key, &subscriber, &user_id, user_info).await,
            None => {
                self.send(frames::subscription_succeeded(pusher_name, None)).await;
                Ok(())
            }
        };
        let position = match ready {
            Ok(()) if names::is_cache(pusher_name) => self.send_cached(&key).await,
            Ok(()) => ops::history::position(&self.dp, &key).await,
            Err(e) => Err(e),
        };
        match position {
            Ok(position) => subscriber.go_live(&position.epoch, position.offset),
            Err(e) => {
                self.leave(&key.channel).await;
                let e = Principal::Client(&self.principal).refused(e);
                self.operation_refused(pusher_name, &e).await;
            }
        }
        Flow::Continue
    }

    /// Enters the presence set as `user_id`, then sends the member list (through the
    /// subscriber, so presence changes seen meanwhile follow it in order).
    async fn enter_presence(
        &mut self,
        key: &ChannelKey,
        subscriber: &Subscriber,
        user_id: &str,
        user_info: Value,
    ) -> Result<(), Error> {
        let info = (!user_info.is_null()).then_some(user_info);
        ops::presence::enter_as(&self.dp, &self.principal, user_id, &key.channel, info).await?;
        if let Some(s) = self.subscriptions.get_mut(&key.channel) {
            s.presence = Some(user_id.to_owned());
        }
        let members = ops::presence::members(&self.dp, Principal::Client(&self.principal), &key.channel).await?;
        subscriber.seed_members(&members);
        Ok(())
    }

    /// For a cache channel: queues its latest publication, or `pusher:cache_miss`; returns the
    /// position the subscription goes live after.
    async fn send_cached(&self, key: &ChannelKey) -> Result<StreamPosition, Error> {
        let position = ops::history::position(&self.dp, key).await?;
        if position.offset > 0 {
            let before = StreamPosition { epoch: position.epoch.clone(), offset: position.offset - 1 };
            let principal = Principal::Client(&self.principal);
            // Without the history capability a cache channel has nothing to show: a miss.
            if let Ok(page) = ops::history::history(&self.dp, principal, &key.channel, Some(&before), Some(1)).await
                && let Some(last) = page.publications.into_iter().find(|p| p.offset == position.offset)
            {
                let epoch = last.epoch.clone();
                self.send_item(Outbound::Message(Delivery::new(key, &last, epoch))).await;
                return Ok(position);
            }
        }
        let pusher_name = names::to_pusher(&key.channel).unwrap_or_else(|| key.channel.to_string());
        self.send(frames::cache_miss(&pusher_name)).await;
        Ok(position)
    }

    /// The Aviary channel a Pusher name means (the user channel included).
    fn aviary_channel(&self, pusher_name: &str) -> Result<String, String> {
        names::to_aviary(pusher_name).map_err(|e| e.to_string())
    }

    async fn unsubscribe(&mut self, pusher_name: &str) {
        if let Ok(aviary) = self.aviary_channel(pusher_name) {
            self.leave(&aviary).await;
        }
    }

    /// Leaves a channel (and its presence set) if subscribed.
    async fn leave(&mut self, aviary: &str) {
        let Some(subscription) = self.subscriptions.remove(aviary) else { return };
        if subscription.presence.is_some()
            && let Err(e) = ops::presence::leave(&self.dp, &self.handle.connection_id, &subscription.key).await
        {
            tracing::debug!(error = %e, "presence leave failed");
        }
        self.dp.hub.unsubscribe(&subscription.key, &self.handle.connection_id).await;
        if let Some(m) = self.handle.metrics() {
            m.subscriptions.decrement(1.0);
        }
    }

    async fn client_event(&mut self, event: &str, pusher_name: &str, data: &str) -> Flow {
        let refuse = |message: &str| frames::error(None, message);
        if !self.credential.client_events {
            self.send(refuse("To send client events, enable client_events on the Pusher credential")).await;
            return Flow::Continue;
        }
        if !ChannelKind::of(pusher_name).allows_client_events() {
            self.send(refuse("Client events are allowed on private and presence channels only")).await;
            return Flow::Continue;
        }
        let Ok(aviary) = names::to_aviary(pusher_name) else {
            self.send(refuse("Invalid channel name")).await;
            return Flow::Continue;
        };
        let Some(subscription) = self.subscriptions.get(aviary.as_str()) else {
            self.send(refuse(&format!("Subscribe to {pusher_name} before sending client events on it"))).await;
            return Flow::Continue;
        };
        if !self.client_events.allow() {
            metrics::rejection(&self.principal.tenant_id, &self.principal.app_id, "client_event_rate");
            let message = format!("Client event rejected: more than {CLIENT_EVENTS_PER_S} per second");
            self.send(frames::error(Some(code::CLIENT_EVENT_RATE_LIMITED), &message)).await;
            return Flow::Continue;
        }
        let Ok(raw) = serde_json::from_str::<&RawValue>(data) else {
            self.send(refuse("Client event data is not JSON")).await;
            return Flow::Continue;
        };
        // The same data rule as the HTTP API's: a string holding JSON is that value.
        let raw = super::data::to_aviary(raw);
        // On a presence channel the sender is the member it entered as (Pusher's `user_id`).
        let sender = subscription.presence.clone();
        let message = ops::publish::Message {
            channel: &aviary,
            data: &raw,
            idempotency_key: None,
            event: Some(event),
            exclude: Some(&self.handle.socket_id),
        };
        let result = match sender {
            Some(user_id) => {
                let as_member = ClientPrincipal {
                    claims: self.principal.claims.clone(),
                    app_id: self.principal.app_id.clone(),
                    client_id: user_id.as_str().into(),
                    tenant_id: self.principal.tenant_id.clone(),
                    connection_id: self.principal.connection_id.clone(),
                    usage: self.principal.usage.clone(),
                };
                ops::publish::publish(&self.dp, Principal::Client(&as_member), message).await
            }
            None => ops::publish::publish(&self.dp, Principal::Client(&self.principal), message).await,
        };
        match result {
            Ok(_) => {}
            Err(Error::AppDisabled) => {
                return Flow::Close(CloseReason::new(close::APP_UNAVAILABLE, "app is disabled or deleted"));
            }
            Err(e) => self.send(refuse(&e.public_message())).await,
        }
        Flow::Continue
    }

    async fn signin(&mut self, auth: &str, user_data: &str) {
        let checked = signature::verify_user_auth(
            &self.credential.key,
            &self.credential.secret,
            auth,
            self.socket_id(),
            user_data,
        );
        if let Err(e) = checked {
            metrics::rejection(&self.principal.tenant_id, &self.principal.app_id, "pusher_signature");
            self.send(frames::error(Some(code::UNAUTHORIZED), &format!("Invalid signature for signin: {e}"))).await;
            return;
        }
        let id = serde_json::from_str::<Value>(user_data).ok().and_then(|v| match &v["id"] {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        let Some(id) = id.filter(|id| names::to_aviary(id).is_ok()) else {
            let message = "user_data must be a JSON object with an id made of channel-name characters";
            self.send(frames::error(Some(code::UNAUTHORIZED), message)).await;
            return;
        };
        // Revocations and lookups by user apply to the signed-in user from now on.
        self.handle.signed_in(&id);
        self.principal.client_id = id.as_str().into();
        self.principal.claims.sub = id.clone();
        self.user = Some(id);
        self.send(frames::signin_success(user_data)).await;
    }

    /// Leaves every channel, releases the connection quota and forgets the connection. Call
    /// once, when the transport ends.
    pub async fn finish(&mut self) {
        let channels: Vec<Arc<str>> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.leave(&channel).await;
        }
        if let Some(reason) = self.handle.close_reason()
            && reason.code >= 4000
        {
            tracing::info!(code = reason.code, reason = %reason.reason, "Pusher connection closed by the server");
        }
        self.handle.outbox.close();
        if let Some(permit) = self.permit.take() {
            permit.release().await;
        }
        self.dp.forget(&self.handle.connection_id);
    }
}

/// The `key_id` of a connection opened with a Pusher credential (what its revocation matches).
pub fn credential_key_id(key: &str) -> String {
    format!("pusher:{key}")
}

/// The member a presence subscription enters as: `channel_data`'s `user_id` (a string or a
/// number) and `user_info`.
fn presence_member(channel_data: Option<&str>) -> Result<(String, Value), String> {
    let data: Value = channel_data
        .and_then(|d| serde_json::from_str(d).ok())
        .ok_or_else(|| "presence channels need channel_data, a JSON object with a user_id".to_owned())?;
    let user_id = match &data["user_id"] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err("channel_data needs a user_id (a string or a number)".to_owned()),
    };
    Ok((user_id, data.get("user_info").cloned().unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_members_come_from_channel_data() {
        assert_eq!(presence_member(Some(r#"{"user_id":"7","user_info":{"n":1}}"#)).unwrap().0, "7");
        assert_eq!(presence_member(Some(r#"{"user_id":42}"#)).unwrap(), ("42".to_owned(), Value::Null));
        assert!(presence_member(Some(r#"{"user_info":{}}"#)).is_err());
        assert!(presence_member(None).is_err());
    }

    #[test]
    fn the_client_event_window_allows_ten_per_second() {
        let mut window = ClientEventWindow { started: Instant::now(), sent: 0 };
        assert!((0..CLIENT_EVENTS_PER_S).all(|_| window.allow()));
        assert!(!window.allow());
    }
}
