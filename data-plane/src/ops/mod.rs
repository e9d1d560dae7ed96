//! Every data-plane operation, once: publish (single and batch), history, presence, channel
//! listing and counts, subscribe admission, terminating a user's connections, and the
//! webhook events operations raise ([`webhooks`]).
//!
//! Front ends (the WebSocket and SSE session, the REST API, and the protocols to come) are
//! thin: they decode a request in their own words, call one function here with an
//! already-authenticated [`Principal`], and encode the answer or the [`Error`] in their own
//! words. A rule lives here or nowhere, so a refusal is the same refusal on every transport:
//! [`Error::code`] names it on WebSocket, [`Error`]'s `IntoResponse` as problem+json.
//!
//! # The order of checks
//! Every operation checks, in this order, those of the following that apply to it, and stops at
//! the first that fails:
//! 1. **app**: the principal's app exists and is enabled ([`Error::AppDisabled`]);
//! 2. **channel name** ([`Error::InvalidChannel`]);
//! 3. **namespace**: the channel's namespace is configured ([`Error::UnknownNamespace`]) and its
//!    options allow the operation: `client_publish` for a client's publish, `presence` for
//!    presence and presence subscriptions ([`Error::NamespaceForbids`]);
//! 4. **capability** of the token or API key ([`Error::CapabilityMissing`]);
//! 5. **idempotency key** ([`Error::InvalidIdempotencyKey`]);
//! 6. **size** against the app's `max_message_bytes` ([`Error::PayloadTooLarge`]);
//! 7. **quota**: the message rate ([`Error::RateLimited`]), subscriptions per connection and
//!    presence members per channel ([`Error::QuotaExceeded`]).
//!
//! Then the broker is called, and a success is counted in the metrics and the app's usage.
//! Every error an operation returns has already been counted once in
//! `aviary_rejections_total` (by [`Error::reason`]); front ends do not count it again.

pub mod channels;
pub mod connections;
pub mod history;
pub mod presence;
pub mod publish;
pub mod subscribe;
pub mod webhooks;

use std::sync::Arc;

use aviary_broker::ChannelKey;
use aviary_core::channel::validate_channel;
use aviary_core::usage::AppUsage;
use aviary_core::{AppConfig, ConnectionClaims, Namespace, Operation, VerifiedApiKey};

use crate::NodeState;
use crate::error::{Error, NamespaceRule, PrincipalKind, Result};
use crate::metrics;
use crate::session_handle::Identity;

/// A client connection authenticated with a connection token: who it is and what it may do.
/// Built once by the session when `connect` succeeds (and its claims replaced on `refresh`).
#[derive(Debug)]
pub struct ClientPrincipal {
    pub claims: ConnectionClaims,
    pub app_id: Arc<str>,
    pub client_id: Arc<str>,
    pub tenant_id: String,
    pub connection_id: Arc<str>,
    /// The app's usage counters, resolved once for the connection.
    pub usage: Arc<AppUsage>,
}

impl ClientPrincipal {
    /// The part of who this connection is that the config-event listener needs to apply
    /// revocations, published on the connection's [`SessionHandle`](crate::session_handle::SessionHandle)
    /// (derived here, so every front end publishes it alike).
    pub fn identity(&self) -> Identity {
        Identity {
            tenant_id: self.tenant_id.clone(),
            app_id: self.app_id.to_string(),
            client_id: self.client_id.to_string(),
            key_id: self.claims.akid.clone(),
            issued_at: self.claims.issued_at_ms(),
        }
    }
}

/// Who asks for an operation, already authenticated by its front end.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'a> {
    /// A client connection (WebSocket, SSE).
    Client(&'a ClientPrincipal),
    /// A backend holding an app API key (REST).
    ApiKey(&'a VerifiedApiKey),
}

impl Principal<'_> {
    pub fn app_id(&self) -> &str {
        match self {
            Principal::Client(c) => &c.app_id,
            Principal::ApiKey(k) => &k.app_id,
        }
    }

    pub fn tenant_id(&self) -> &str {
        match self {
            Principal::Client(c) => &c.tenant_id,
            Principal::ApiKey(k) => &k.tenant_id,
        }
    }

    /// The connection a client principal publishes from (none for a backend).
    pub fn connection_id(&self) -> Option<&str> {
        match self {
            Principal::Client(c) => Some(&c.connection_id),
            Principal::ApiKey(_) => None,
        }
    }

    pub fn kind(&self) -> PrincipalKind {
        match self {
            Principal::Client(_) => PrincipalKind::Token,
            Principal::ApiKey(_) => PrincipalKind::ApiKey,
        }
    }

    /// The `source` label of the messages this principal publishes: `pusher` for a backend
    /// signing with a Pusher credential (whose key id is `pusher:<key>`), `rest` for an API key.
    fn source(&self) -> &'static str {
        match self {
            Principal::Client(_) => "client",
            Principal::ApiKey(k) if k.key_id.starts_with("pusher:") => "pusher",
            Principal::ApiKey(_) => "rest",
        }
    }

    fn allows(&self, channel: &str, op: Operation) -> bool {
        match self {
            Principal::Client(c) => c.claims.cap.allows(channel, op),
            Principal::ApiKey(k) => k.capabilities.allows(channel, op),
        }
    }

    /// The app's usage counters (cached on a connection, looked up for a backend).
    fn usage(&self, node: &NodeState) -> Arc<AppUsage> {
        match self {
            Principal::Client(c) => c.usage.clone(),
            Principal::ApiKey(k) => node.usage.app(&k.tenant_id, &k.app_id),
        }
    }

    /// Counts a refusal (or failure) against the principal's app and hands it back.
    pub fn refused(&self, e: Error) -> Error {
        metrics::rejection(self.tenant_id(), self.app_id(), e.reason());
        e
    }

    /// Check 1: the principal's app as configured now (a config change applies to the next
    /// operation).
    fn app(&self, node: &NodeState) -> Result<Arc<AppConfig>> {
        node.registry.app(self.app_id()).filter(|a| a.enabled).ok_or(Error::AppDisabled)
    }

    /// Check 4 for one operation.
    fn require(&self, channel: &str, operation: Operation) -> Result<()> {
        if self.allows(channel, operation) {
            Ok(())
        } else {
            Err(Error::CapabilityMissing { principal: self.kind(), operation, channel: channel.to_owned() })
        }
    }
}

/// What an operation asks of its channel's namespace options (check 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Only that the namespace exists.
    Nothing,
    /// A publish: clients need `client_publish`, backends do not.
    Publish,
    /// Presence (or a subscription with presence events): `presence`.
    Presence,
}

/// A channel that passed checks 1 to 4 for an operation.
struct Admitted {
    app: Arc<AppConfig>,
    key: ChannelKey,
}

/// Checks 1 to 4: app, channel name, namespace and its options, then each capability of `ops`.
fn admit(
    node: &NodeState,
    principal: Principal<'_>,
    channel: &str,
    needs: Needs,
    ops: &[Operation],
) -> Result<Admitted> {
    let app = principal.app(node)?;
    admit_in(&app, principal, channel, needs, ops)?;
    Ok(Admitted { key: ChannelKey::new(&app.app_id, channel), app })
}

/// Checks 2 to 4 against an app already resolved (a batch resolves it once); returns the
/// channel's namespace.
fn admit_in<'a>(
    app: &'a AppConfig,
    principal: Principal<'_>,
    channel: &str,
    needs: Needs,
    ops: &[Operation],
) -> Result<&'a Namespace> {
    validate_channel(channel).map_err(|e| Error::InvalidChannel(e.to_string()))?;
    let namespace = app.namespace_for(channel).ok_or(Error::UnknownNamespace)?;
    match needs {
        Needs::Publish if matches!(principal, Principal::Client(_)) && !namespace.client_publish => {
            return Err(Error::NamespaceForbids(NamespaceRule::ClientPublish));
        }
        Needs::Presence if !namespace.presence => return Err(Error::NamespaceForbids(NamespaceRule::Presence)),
        _ => {}
    }
    for op in ops {
        principal.require(channel, *op)?;
    }
    Ok(namespace)
}

/// Runs an operation's result through the rejection counter: every error is counted once.
fn counted<T>(principal: Principal<'_>, result: Result<T>) -> Result<T> {
    result.map_err(|e| principal.refused(e))
}
