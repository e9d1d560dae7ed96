//! One connected client: its authentication, subscriptions, presence, bounded outbound queue
//! and the decoding of every protocol command into an operation of [`crate::ops`], which holds
//! every rule; the session keeps only what is the connection's own (which channels it holds,
//! its queue, its token).
//!
//! A [`Session`] is owned by its transport task (WebSocket or SSE), which feeds it frames and
//! drains its outbound queue; the session itself does no I/O on the socket. The small
//! [`SessionHandle`] is the part others may touch: the hub (to cut a slow consumer), the
//! config-event listener (to close revoked connections) and drain. Closing is a one-shot
//! signal on the handle; the first reason wins.

use std::collections::HashMap;
use std::sync::Arc;

use aviary_broker::{ChannelKey, StreamPosition};
use aviary_core::token::{self, TokenError};
use aviary_core::{AppConfig, ConnectionClaims, Operation};
use serde_json::value::RawValue;

use crate::NodeState;
use crate::error::{Error, Result};
use crate::hub::Subscriber;
use crate::metrics::{self, ConnectionMetrics};
use crate::ops::{self, ClientPrincipal, Principal};
use crate::outbound::{Delivery, Outbound};
use crate::protocol::{self, ClientFrame, CloseReason, Connected, Empty, ErrorCode, Text, close};
use crate::quota_enforcer::ConnectionPermit;
use crate::session_handle::SessionHandle;

/// What the transport should do after a frame.
#[derive(Debug)]
pub enum Flow {
    Continue,
    Close(CloseReason),
}

/// The authenticated state of a session.
struct Auth {
    principal: ClientPrincipal,
    permit: ConnectionPermit,
}

impl ops::subscribe::Held for HashMap<Arc<str>, ChannelKey> {
    fn count(&self) -> usize {
        self.len()
    }
    fn contains(&self, channel: &str) -> bool {
        self.contains_key(channel)
    }
}

/// One connected client.
pub struct Session {
    dp: Arc<NodeState>,
    pub handle: Arc<SessionHandle>,
    transport: &'static str,
    auth: Option<Auth>,
    /// Channel name -> its subscription.
    subscriptions: HashMap<Arc<str>, ChannelKey>,
    /// Channels this connection entered presence on.
    presence: HashMap<Arc<str>, ChannelKey>,
    /// Consecutive frames that failed to parse.
    malformed: u32,
}

impl Session {
    /// A session with its outbound queue (`handle.outbox`), which the transport drains.
    pub fn new(dp: Arc<NodeState>, transport: &'static str) -> Self {
        let handle = SessionHandle::new(dp.config.outbound_queue_capacity);
        dp.sessions.insert(handle.connection_id.clone(), handle.clone());
        Session {
            dp,
            handle,
            transport,
            auth: None,
            subscriptions: HashMap::new(),
            presence: HashMap::new(),
            malformed: 0,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.auth.is_some()
    }

    /// When the current token expires (Unix seconds), once authenticated.
    pub fn expires_at(&self) -> Option<i64> {
        self.auth.as_ref().map(|a| a.principal.claims.exp)
    }

    /// The app's largest accepted frame: its message limit plus room for the envelope.
    pub fn max_frame_bytes(&self) -> Option<usize> {
        let auth = self.auth.as_ref()?;
        let app = self.dp.registry.app(&auth.principal.app_id)?;
        Some(app.quotas.max_message_bytes as usize + crate::FRAME_ENVELOPE_BYTES)
    }

    /// Queues a frame for this connection, waiting for room (a reply is the client's own
    /// backpressure) unless the connection is closing.
    pub async fn send(&self, item: Outbound) {
        tokio::select! {
            _ = self.handle.outbox.push(item) => {}
            _ = self.handle.closed() => {}
        }
    }

    async fn send_frame(&self, frame: Text) {
        self.send(Outbound::Frame(frame)).await;
    }

    /// Verifies `token` and binds the session to its app and client, in a `connect` span; the
    /// ids it learns are recorded there and on the transport's `connection` span around it.
    pub async fn authenticate(&mut self, token: &str, origin: Option<&str>) -> Result<(), CloseReason> {
        let connection = tracing::Span::current();
        let connect = tracing::info_span!(
            "connect",
            transport = self.transport,
            connection_id = &*self.handle.connection_id,
            tenant_id = tracing::field::Empty,
            app_id = tracing::field::Empty,
            client_id = tracing::field::Empty,
        );
        let result = tracing::Instrument::instrument(self.admit(token, origin), connect.clone()).await;
        if let Some(auth) = &self.auth {
            let p = &auth.principal;
            for span in [&connection, &connect] {
                span.record("tenant_id", p.tenant_id.as_str());
                span.record("app_id", &*p.app_id);
                span.record("client_id", &*p.client_id);
            }
        }
        result
    }

    async fn admit(&mut self, token: &str, origin: Option<&str>) -> Result<(), CloseReason> {
        let claims = token::verify(token, &self.dp.registry).map_err(|e| {
            let code = match e {
                TokenError::Expired => close::TOKEN_EXPIRED,
                TokenError::Revoked => close::REVOKED,
                _ => close::INVALID_TOKEN,
            };
            CloseReason::new(code, e.to_string())
        })?;
        let app = match self.dp.registry.app(&claims.app) {
            Some(app) if app.enabled => app,
            Some(_) => return Err(CloseReason::new(close::APP_UNAVAILABLE, "app is disabled")),
            None => return Err(CloseReason::new(close::APP_UNAVAILABLE, "app does not exist")),
        };
        if app.tenant_id != claims.tid {
            return Err(CloseReason::new(close::INVALID_TOKEN, "token tenant does not match its app"));
        }
        if !lifetime_allowed(&claims, &app) {
            return Err(CloseReason::new(close::INVALID_TOKEN, "token lifetime exceeds the app's maximum"));
        }
        if !app.origin_allowed(origin) {
            metrics::rejection(&app.tenant_id, &app.app_id, "origin");
            return Err(CloseReason::new(close::FORBIDDEN, "origin not allowed for this app"));
        }
        let permit = match ConnectionPermit::acquire(&self.dp.quotas, &app).await {
            Ok(Some(permit)) => permit,
            Ok(None) => {
                metrics::rejection(&app.tenant_id, &app.app_id, "connection_quota");
                return Err(CloseReason::new(close::QUOTA_EXCEEDED, "connection quota exceeded"));
            }
            Err(e) => {
                // Admitting without a decision could overshoot the tenant's quota cluster-wide;
                // refuse retryably and keep the connections already open.
                tracing::warn!(error = %e, "connection quota unavailable; refusing the connection");
                metrics::rejection(&app.tenant_id, &app.app_id, "quota_unavailable");
                return Err(CloseReason::new(close::TRY_AGAIN_LATER, "connection quota unavailable; retry shortly"));
            }
        };
        let usage = self.dp.usage.app(&app.tenant_id, &app.app_id);
        self.handle.set_metrics(Arc::new(ConnectionMetrics::open(
            &app.tenant_id,
            &app.app_id,
            self.transport,
            usage.clone(),
        )));
        tracing::debug!(exp = claims.exp, "connection authenticated");
        let principal = ClientPrincipal {
            app_id: app.app_id.as_str().into(),
            client_id: claims.sub.as_str().into(),
            tenant_id: app.tenant_id.clone(),
            connection_id: self.handle.connection_id.clone(),
            usage,
            claims,
        };
        self.handle.set_identity(principal.identity());
        self.auth = Some(Auth { principal, permit });
        Ok(())
    }

    /// The `connected` frame for an authenticated session.
    pub fn connected_frame(&self) -> Option<Text> {
        let client = &self.auth.as_ref()?.principal;
        Some(protocol::reply(
            "connected",
            None,
            &Connected {
                client_id: &client.client_id,
                connection_id: &self.handle.connection_id,
                socket_id: &self.handle.socket_id,
                heartbeat_s: self.dp.config.ws_heartbeat_interval.as_secs(),
                expires_at: client.claims.exp,
            },
        ))
    }

    /// Handles one text frame from a WebSocket client.
    pub async fn handle_text(&mut self, text: &str, origin: Option<&str>) -> Flow {
        let (id, frame) = match protocol::parse_client_frame(text) {
            Ok(parsed) => parsed,
            Err((id, e)) => return self.malformed_frame(id, &e.0).await,
        };
        let frame = match frame {
            ClientFrame::Connect(c) => {
                if self.auth.is_some() {
                    return self.malformed_frame(id, "already connected").await;
                }
                return match self.authenticate(&c.token, origin).await {
                    Ok(()) => {
                        if let Some(f) = self.connected_frame() {
                            self.send_frame(f).await;
                        }
                        Flow::Continue
                    }
                    Err(reason) => Flow::Close(reason),
                };
            }
            _ if self.auth.is_none() => {
                self.send_frame(protocol::error(id, ErrorCode::Unauthorized, "send a connect frame first")).await;
                return Flow::Continue;
            }
            other => other,
        };
        let result = match frame {
            ClientFrame::Connect(_) => Ok(None),
            ClientFrame::Ping => Ok(Some(protocol::reply("pong", id, &Empty {}))),
            ClientFrame::Subscribe(s) => self
                .subscribe(&s.channel, s.since, s.presence, |position, recovered| {
                    Outbound::Frame(protocol::ok(
                        id,
                        &protocol::Subscribed { channel: &s.channel, position, recovered },
                    ))
                })
                .await
                .map(|()| None),
            ClientFrame::Unsubscribe(c) => {
                self.unsubscribe(&c.channel).await.map(|()| Some(protocol::ok(id, &Empty {})))
            }
            ClientFrame::Publish(p) => self
                .publish(&p.channel, p.data, p.idempotency_key)
                .await
                .map(|position| Some(protocol::ok(id, &position))),
            ClientFrame::PresenceEnter(p) | ClientFrame::PresenceUpdate(p) => {
                self.presence_set(&p.channel, p.data).await.map(|()| Some(protocol::ok(id, &Empty {})))
            }
            ClientFrame::PresenceLeave(c) => {
                self.presence_leave(&c.channel).await.map(|()| Some(protocol::ok(id, &Empty {})))
            }
            ClientFrame::PresenceGet(c) => self.presence_get(&c.channel).await.map(|members| {
                Some(protocol::ok(id, &protocol::PresenceReply { channel: &c.channel, members: &members }))
            }),
            ClientFrame::History(h) => self.history(id, &h.channel, h.since, h.limit).await.map(Some),
            ClientFrame::Refresh(r) => match self.refresh(&r.token) {
                Ok(exp) => {
                    Box::pin(self.end_disallowed()).await;
                    #[derive(serde::Serialize)]
                    struct Refreshed {
                        expires_at: i64,
                    }
                    Ok(Some(protocol::ok(id, &Refreshed { expires_at: exp })))
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(reply) => {
                self.malformed = 0;
                if let Some(reply) = reply {
                    self.send_frame(reply).await;
                }
            }
            Err(Error::AppDisabled) => {
                return Flow::Close(CloseReason::new(close::APP_UNAVAILABLE, "app is disabled or deleted"));
            }
            // A command that parses but is invalid (a bad channel name, data nested too deep, a
            // bad idempotency key) is a bad frame like one that does not parse: flooding them
            // ends the connection the same way. Already counted as a refusal where decided.
            Err(e) if e.code() == ErrorCode::BadRequest => return self.bad_frame(id, &e.public_message()).await,
            Err(e) => {
                // Already counted where it was decided (an operation, or `refused` here).
                if let Error::Internal(detail) = &e {
                    tracing::error!(%detail, "command failed");
                }
                self.send_frame(protocol::error(id, e.code(), &e.public_message())).await;
            }
        }
        Flow::Continue
    }

    /// Answers an unparseable frame; too many bad frames in a row end the connection.
    pub async fn malformed_frame(&mut self, id: Option<&RawValue>, message: &str) -> Flow {
        if let Some(auth) = &self.auth {
            metrics::rejection(&auth.principal.tenant_id, &auth.principal.app_id, "bad_request");
        }
        self.bad_frame(id, message).await
    }

    /// Counts a bad frame (unparseable, or a command refused as `bad_request`) and answers it,
    /// or ends the connection (4000) after `max_malformed_frames` in a row. Any command that
    /// succeeds resets the count.
    async fn bad_frame(&mut self, id: Option<&RawValue>, message: &str) -> Flow {
        self.malformed += 1;
        if self.malformed > self.dp.config.max_malformed_frames {
            return Flow::Close(CloseReason::new(close::PROTOCOL_ERROR, "too many malformed frames"));
        }
        self.send_frame(protocol::error(id, ErrorCode::BadRequest, message)).await;
        Flow::Continue
    }

    /// The authenticated client, as operations take it.
    fn client(&self) -> Result<&ClientPrincipal> {
        self.auth.as_ref().map(|a| &a.principal).ok_or_else(|| Error::Unauthorized("send a connect frame first".into()))
    }

    /// Counts a refusal decided by the session itself (not by an operation, which counts its
    /// own) and hands it back.
    fn refused(&self, e: Error) -> Error {
        match &self.auth {
            Some(auth) => Principal::Client(&auth.principal).refused(e),
            None => e,
        }
    }

    /// Checks a subscription would be admitted without making it; returns the channel's key.
    pub fn check_subscribe(&self, channel: &str, presence: bool) -> Result<ChannelKey> {
        ops::subscribe::admit_one(&self.dp, self.client()?, channel, presence, &self.subscriptions)
    }

    /// Checks that a fresh connection may subscribe to all of `channels` (an SSE stream).
    pub fn check_subscribe_all(&self, channels: &[String]) -> Result<Vec<ChannelKey>> {
        ops::subscribe::admit_all(&self.dp, self.client()?, channels)
    }

    /// Subscribes to `channel`. `announce` builds the frame reporting the position (the `ok`
    /// on WebSocket, a `subscribed` event on SSE), queued before any replayed or live message.
    ///
    /// With `since`, every publication after it is queued, oldest first, before any live one;
    /// if history no longer reaches back (or the epoch changed), `recovered` is false and
    /// nothing is replayed: the client must reload its state.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<StreamPosition>,
        presence: bool,
        announce: impl FnOnce(&StreamPosition, bool) -> Outbound,
    ) -> Result<()> {
        let span = match &self.auth {
            Some(auth) => tracing::info_span!(
                "subscribe",
                channel,
                presence,
                connection_id = &*auth.principal.connection_id,
                tenant_id = auth.principal.tenant_id.as_str(),
                app_id = &*auth.principal.app_id,
            ),
            None => tracing::info_span!("subscribe", channel, presence, connection_id = &*self.handle.connection_id),
        };
        tracing::Instrument::instrument(self.join(channel, since, presence, announce), span).await
    }

    async fn join(
        &mut self,
        channel: &str,
        since: Option<StreamPosition>,
        presence: bool,
        announce: impl FnOnce(&StreamPosition, bool) -> Outbound,
    ) -> Result<()> {
        let key = self.check_subscribe(channel, presence)?;
        let subscriber =
            Arc::new(Subscriber::new(self.handle.clone(), presence, self.dp.config.outbound_queue_capacity.max(1)));
        // Join the fan-out (parking live publications) *before* reading the stream position, so
        // every publication is either in what we read or parked, never in neither.
        self.dp.hub.subscribe(&key, subscriber.clone()).await.map_err(|e| self.refused(e.into()))?;
        self.subscriptions.insert(key.channel.clone(), key.clone());
        if let Some(m) = self.handle.metrics() {
            m.subscriptions.increment(1.0);
        }
        match self.replay(&key, since, announce).await {
            Ok(last) => {
                subscriber.go_live(&last.epoch, last.offset);
                Ok(())
            }
            Err(e) => {
                self.unsubscribe(channel).await.ok();
                Err(self.refused(e))
            }
        }
    }

    /// Announces the position and queues missed publications; returns the last position
    /// delivered (or skipped because the client already has it).
    async fn replay(
        &self,
        key: &ChannelKey,
        since: Option<StreamPosition>,
        announce: impl FnOnce(&StreamPosition, bool) -> Outbound,
    ) -> Result<StreamPosition> {
        let Some(since) = since else {
            let position = ops::history::position(&self.dp, key).await?;
            self.send(announce(&position, true)).await;
            return Ok(position);
        };
        let client = self.client()?;
        let page = ops::history::replay_page(&self.dp, client, key, &since).await?;
        // A position ahead of the stream cannot be one this stream ever delivered: resuming
        // from it would silently skip the next publications.
        let recovered = page.recovered && since.offset <= page.position.offset;
        self.send(announce(&page.position, recovered)).await;
        if !recovered {
            return Ok(page.position);
        }
        let target = page.position.clone();
        let mut last = since;
        let mut page = page;
        loop {
            for p in &page.publications {
                self.send(Outbound::Message(Delivery::new(key, p, p.epoch.clone()))).await;
                last.offset = p.offset;
            }
            if last.offset >= target.offset || page.publications.is_empty() {
                break;
            }
            page = ops::history::replay_page(&self.dp, client, key, &last).await?;
            if !page.recovered {
                // History was trimmed under a long replay; nothing can fill the gap now.
                tracing::warn!(channel = ?key, "history trimmed during resume replay");
                break;
            }
        }
        Ok(StreamPosition { epoch: target.epoch, offset: last.offset.max(target.offset) })
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> Result<()> {
        let Some(key) = self.subscriptions.remove(channel) else {
            return Err(self.refused(Error::NotFound(format!("not subscribed to {channel:?}"))));
        };
        self.dp.hub.unsubscribe(&key, &self.handle.connection_id).await;
        if let Some(m) = self.handle.metrics() {
            m.subscriptions.decrement(1.0);
        }
        Ok(())
    }

    async fn publish(&self, channel: &str, data: &RawValue, idempotency_key: Option<String>) -> Result<StreamPosition> {
        let message = ops::publish::Message { channel, data, idempotency_key, event: None, exclude: None };
        ops::publish::publish(&self.dp, Principal::Client(self.client()?), message).await
    }

    async fn presence_set(&mut self, channel: &str, data: Option<serde_json::Value>) -> Result<()> {
        let key = ops::presence::enter(&self.dp, self.client()?, channel, data).await?;
        self.presence.insert(key.channel.clone(), key);
        Ok(())
    }

    async fn presence_leave(&mut self, channel: &str) -> Result<()> {
        let Some(key) = self.presence.remove(channel) else {
            return Err(self.refused(Error::NotFound(format!("not present on {channel:?}"))));
        };
        ops::presence::leave(&self.dp, &self.handle.connection_id, &key).await.map_err(|e| self.refused(e))
    }

    async fn presence_get(&self, channel: &str) -> Result<Vec<aviary_broker::PresenceMember>> {
        ops::presence::members(&self.dp, Principal::Client(self.client()?), channel).await
    }

    async fn history(
        &self,
        id: Option<&RawValue>,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<Text> {
        let page =
            ops::history::history(&self.dp, Principal::Client(self.client()?), channel, since.as_ref(), limit).await?;
        let publications = page.publications.iter().filter_map(protocol::HistoryItem::from_publication).collect();
        Ok(protocol::ok(
            id,
            &protocol::HistoryReply { publications, position: &page.position, recovered: page.recovered },
        ))
    }

    /// Replaces the connection's token with a fresh one for the same app and client; returns
    /// the new expiry.
    fn refresh(&mut self, token: &str) -> Result<i64> {
        let claims = self.verify_refresh(token).map_err(|e| self.refused(e))?;
        let exp = claims.exp;
        self.handle.refreshed(&claims.akid, claims.issued_at_ms());
        if let Some(auth) = self.auth.as_mut() {
            auth.principal.claims = claims;
        }
        Ok(exp)
    }

    /// After a refresh: ends the subscriptions and presence entries the new token no longer
    /// allows ([`ops::subscribe::still_allowed`]), each announced by an `unsubscribed` push
    /// naming the reason, so narrowing a token's capabilities takes effect at once.
    async fn end_disallowed(&mut self) {
        let Ok(client) = self.client() else { return };
        let ended: Vec<Arc<str>> = self
            .subscriptions
            .keys()
            .filter(|c| !ops::subscribe::still_allowed(client, c, Operation::Subscribe))
            .cloned()
            .collect();
        let left: Vec<Arc<str>> = self
            .presence
            .keys()
            .filter(|c| !ops::subscribe::still_allowed(client, c, Operation::Presence))
            .cloned()
            .collect();
        for channel in left {
            if let Some(key) = self.presence.remove(&channel)
                && let Err(e) = ops::presence::leave(&self.dp, &self.handle.connection_id, &key).await
            {
                tracing::debug!(error = %e, "could not leave presence after refresh");
            }
        }
        for channel in ended {
            if self.unsubscribe(&channel).await.is_ok() {
                let frame = protocol::encode_unsubscribed(&channel, "the refreshed token does not allow this channel");
                self.send(Outbound::Frame(frame)).await;
            }
        }
    }

    /// The claims of a refresh token, if it may replace the current one.
    fn verify_refresh(&self, token: &str) -> Result<ConnectionClaims> {
        let client = self.client()?;
        let claims = token::verify(token, &self.dp.registry).map_err(|e| match e {
            TokenError::Expired => Error::TokenExpired(e.to_string()),
            other => Error::Unauthorized(other.to_string()),
        })?;
        if claims.app != *client.app_id || claims.sub != *client.client_id {
            return Err(Error::Unauthorized("refresh token is for another app or client".into()));
        }
        if let Some(app) = self.dp.registry.app(&claims.app)
            && !lifetime_allowed(&claims, &app)
        {
            return Err(Error::Unauthorized("token lifetime exceeds the app's maximum".into()));
        }
        Ok(claims)
    }

    /// Extends the TTL of this connection's presence entries (called on each heartbeat tick).
    pub async fn touch_presence(&self) {
        ops::presence::touch(&self.dp, &self.handle.connection_id, self.presence.values()).await;
    }

    /// Leaves every channel and presence set and forgets the session. Call once, when the
    /// transport ends, whatever the reason.
    pub async fn finish(&mut self) {
        for (_, key) in self.presence.drain() {
            if let Err(e) = ops::presence::leave(&self.dp, &self.handle.connection_id, &key).await {
                tracing::warn!(channel = ?key, error = %e, "presence leave failed");
            }
        }
        let subscriptions: Vec<_> = self.subscriptions.drain().collect();
        for (_, key) in subscriptions {
            self.dp.hub.unsubscribe(&key, &self.handle.connection_id).await;
            if let Some(m) = self.handle.metrics() {
                m.subscriptions.decrement(1.0);
            }
        }
        let close_code = self.handle.close_reason().map(|r| r.code);
        if let Some(auth) = &self.auth {
            let reason = metrics::disconnect_reason(close_code);
            metrics::disconnect(&auth.principal.tenant_id, &auth.principal.app_id, self.transport, reason);
        }
        if let Some(reason) = self.handle.close_reason()
            && reason.code >= 4000
        {
            tracing::info!(code = reason.code, reason = %reason.reason, "connection closed by the server");
            if let Some(auth) = &self.auth {
                metrics::rejection(&auth.principal.tenant_id, &auth.principal.app_id, disconnect_reason(reason.code));
            }
        }
        // Nothing queued from here on will be written (the transport's writer has been told
        // to close, and it sends only the farewell now).
        self.handle.outbox.close();
        // Release the connection quota now, before the transport says goodbye, so a client
        // that saw its connection end can immediately open a new one.
        if let Some(auth) = self.auth.take() {
            auth.permit.release().await;
        }
        self.dp.forget(&self.handle.connection_id);
    }
}

/// Is the token's lifetime within the app's `max_token_ttl_s`? The control plane refuses to
/// mint longer ones; checking here too means a leaked signing key cannot mint immortal tokens
/// that outlive an app's policy.
fn lifetime_allowed(claims: &ConnectionClaims, app: &AppConfig) -> bool {
    claims.exp.saturating_sub(claims.iat) <= i64::from(app.max_token_ttl_s) + token::LEEWAY_S as i64
}

/// Metric label for a forced disconnect.
fn disconnect_reason(code: u16) -> &'static str {
    match code {
        close::PROTOCOL_ERROR => "disconnect_protocol_error",
        close::TOKEN_EXPIRED => "disconnect_token_expired",
        close::SLOW_CONSUMER => "disconnect_slow_consumer",
        close::QUOTA_EXCEEDED => "disconnect_quota",
        close::REVOKED => "disconnect_revoked",
        close::APP_UNAVAILABLE => "disconnect_app_unavailable",
        _ => "disconnect_other",
    }
}
