//! `aviary-core`'s config and usage types to and from their wire form, one function per
//! direction, used by both sides of the link.
//!
//! Secrets (a Pusher credential's, a webhook endpoint's) travel sealed with the stream key
//! ([`SecretBox::for_config_stream`], derived from the node token) and bound to their
//! credential's key or endpoint's id. A `*_from_pb` that cannot rebuild a value (the secret
//! does not open, a name is unknown to this version) answers `None` and the caller skips the
//! value: a node honours what it understands of a newer control plane.

use std::collections::HashMap;

use aviary_core::sealing::SecretBox;
use aviary_core::token::VerifyingKey;
use aviary_core::usage::UsageRecord;
use aviary_core::webhook::{WebhookEndpoint, WebhookEvent, WebhookFormat};
use aviary_core::{AppConfig, Capabilities, ConfigEvent, Namespace, Operation, PusherCredential, Quotas, Registry};

use crate::pb;

/// A capability map names an operation this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0:?}")]
pub struct UnknownOperation(pub String);

/// Capabilities on the wire: operation names as in JSON (`"publish"`, `"history"`, ...).
pub fn capabilities_to_pb(caps: &Capabilities) -> HashMap<String, pb::Operations> {
    caps.0
        .iter()
        .map(|(glob, ops)| {
            let operations = ops
                .iter()
                .filter_map(|op| match serde_json::to_value(op) {
                    Ok(serde_json::Value::String(s)) => Some(s),
                    _ => None,
                })
                .collect();
            (glob.clone(), pb::Operations { operations })
        })
        .collect()
}

/// Capabilities from the wire (a request's or a `VerifyApiKeyResponse`'s map).
pub fn capabilities_from_pb(
    map: impl IntoIterator<Item = (String, pb::Operations)>,
) -> Result<Capabilities, UnknownOperation> {
    map.into_iter()
        .map(|(glob, ops)| {
            let ops = ops
                .operations
                .into_iter()
                .map(|op| {
                    serde_json::from_value::<Operation>(serde_json::Value::String(op.clone()))
                        .map_err(|_| UnknownOperation(op))
                })
                .collect::<Result<_, _>>()?;
            Ok((glob, ops))
        })
        .collect::<Result<_, _>>()
        .map(Capabilities)
}

pub fn namespace_to_pb(ns: &Namespace) -> pb::Namespace {
    pb::Namespace {
        name: ns.name.clone(),
        history_size: ns.history_size,
        history_ttl_s: ns.history_ttl_s,
        presence: ns.presence,
        client_publish: ns.client_publish,
    }
}

pub fn namespace_from_pb(ns: pb::Namespace) -> Namespace {
    Namespace {
        name: ns.name,
        history_size: ns.history_size,
        history_ttl_s: ns.history_ttl_s,
        presence: ns.presence,
        client_publish: ns.client_publish,
    }
}

fn quotas_to_pb(q: &Quotas) -> pb::Quotas {
    pb::Quotas {
        max_connections: q.max_connections,
        max_messages_per_s: q.max_messages_per_s,
        max_message_bytes: q.max_message_bytes,
        max_subscriptions_per_connection: q.max_subscriptions_per_connection,
        max_presence_members: q.max_presence_members,
    }
}

/// Absent quotas are the defaults.
fn quotas_from_pb(q: Option<pb::Quotas>) -> Quotas {
    q.map_or_else(Quotas::default, |q| Quotas {
        max_connections: q.max_connections,
        max_messages_per_s: q.max_messages_per_s,
        max_message_bytes: q.max_message_bytes,
        max_subscriptions_per_connection: q.max_subscriptions_per_connection,
        max_presence_members: q.max_presence_members,
    })
}

/// An app's live config (what the data plane enforces) on the wire.
pub fn app_config_to_pb(a: &AppConfig) -> pb::AppConfig {
    pb::AppConfig {
        app_id: a.app_id.clone(),
        tenant_id: a.tenant_id.clone(),
        name: a.name.clone(),
        enabled: a.enabled,
        allowed_origins: a.allowed_origins.clone(),
        max_token_ttl_s: a.max_token_ttl_s,
        namespaces: a.namespaces.iter().map(namespace_to_pb).collect(),
        tenant_quotas: Some(quotas_to_pb(&a.tenant_quotas)),
        quotas: Some(quotas_to_pb(&a.quotas)),
    }
}

pub fn app_config_from_pb(a: pb::AppConfig) -> AppConfig {
    AppConfig {
        app_id: a.app_id,
        tenant_id: a.tenant_id,
        name: a.name,
        enabled: a.enabled,
        allowed_origins: a.allowed_origins,
        max_token_ttl_s: a.max_token_ttl_s,
        namespaces: a.namespaces.into_iter().map(namespace_from_pb).collect(),
        tenant_quotas: quotas_from_pb(a.tenant_quotas),
        quotas: quotas_from_pb(a.quotas),
    }
}

/// The registry's token verifying keys, sorted by key id.
pub fn verifying_keys_to_pb(registry: &Registry) -> Vec<pb::VerifyingKey> {
    let mut keys: Vec<pb::VerifyingKey> = registry
        .verifying_keys()
        .iter()
        .map(|k| pb::VerifyingKey { kid: k.kid.clone(), public_key: k.public.to_vec() })
        .collect();
    keys.sort_by(|a, b| a.kid.cmp(&b.kid));
    keys
}

/// A wire key back as a verifying key; `None` when the bytes are not 32 long.
pub fn verifying_key_from_pb(k: &pb::VerifyingKey) -> Option<VerifyingKey> {
    let public: [u8; 32] = k.public_key.as_slice().try_into().ok()?;
    Some(VerifyingKey::new(k.kid.clone(), public))
}

/// A credential on the wire, its secret sealed with the stream key.
pub fn pusher_credential_to_pb(c: &PusherCredential, stream_box: &SecretBox) -> pb::PusherCredential {
    pb::PusherCredential {
        key: c.key.clone(),
        app_id: c.app_id.clone(),
        tenant_id: c.tenant_id.clone(),
        pusher_app_id: c.pusher_app_id,
        sealed_secret: stream_box.seal_str(&c.secret, &c.key),
        capabilities: capabilities_to_pb(&c.capabilities),
        client_events: c.client_events,
    }
}

/// A wire credential back, its secret opened with the stream key; `None` when it does not open
/// (the control plane has another node token) or its capabilities do not parse.
pub fn pusher_credential_from_pb(c: pb::PusherCredential, stream_box: &SecretBox) -> Option<PusherCredential> {
    let Some(secret) = stream_box.open_str(&c.sealed_secret, &c.key) else {
        tracing::error!(key = %c.key, "a streamed Pusher secret does not open: is the node token the control plane's?");
        return None;
    };
    Some(PusherCredential {
        capabilities: capabilities_from_pb(c.capabilities).ok()?,
        key: c.key,
        app_id: c.app_id,
        tenant_id: c.tenant_id,
        pusher_app_id: c.pusher_app_id,
        secret,
        client_events: c.client_events,
    })
}

/// A webhook endpoint on the wire, its secret sealed with the stream key (bound to its id).
pub fn webhook_to_pb(w: &WebhookEndpoint, stream_box: &SecretBox) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: w.id.clone(),
        app_id: w.app_id.clone(),
        tenant_id: w.tenant_id.clone(),
        url: w.url.clone(),
        events: w.events.iter().map(|e| event_name(*e).to_owned()).collect(),
        channels: w.channels.clone().unwrap_or_default(),
        format: w.format.as_str().to_owned(),
        sealed_secret: stream_box.seal_str(&w.secret, &w.id),
    }
}

fn event_name(event: WebhookEvent) -> &'static str {
    match event {
        WebhookEvent::ChannelOccupied => "channel_occupied",
        WebhookEvent::ChannelVacated => "channel_vacated",
        WebhookEvent::MemberAdded => "member_added",
        WebhookEvent::MemberRemoved => "member_removed",
        WebhookEvent::ClientEvent => "client_event",
        WebhookEvent::MessagePublished => "message_published",
    }
}

/// A wire endpoint back, its secret opened with the stream key; `None` when the secret does not
/// open or a name is unknown (a newer control plane: the node skips what it cannot honour).
pub fn webhook_from_pb(w: pb::WebhookEndpoint, stream_box: &SecretBox) -> Option<WebhookEndpoint> {
    let Some(secret) = stream_box.open_str(&w.sealed_secret, &w.id) else {
        tracing::error!(webhook_id = %w.id, "a streamed webhook secret does not open: is the node token the control plane's?");
        return None;
    };
    let events = w
        .events
        .iter()
        .map(|name| WebhookEvent::ALL.into_iter().find(|e| event_name(*e) == name))
        .collect::<Option<Vec<_>>>()?;
    Some(WebhookEndpoint {
        format: WebhookFormat::parse(&w.format)?,
        channels: Some(w.channels).filter(|c| !c.is_empty()),
        id: w.id,
        app_id: w.app_id,
        tenant_id: w.tenant_id,
        url: w.url,
        events,
        secret,
    })
}

/// Everything in `registry`, as a snapshot message (sorted, so equal registries give equal
/// bytes); Pusher credentials and webhook endpoints only with a stream key to seal their
/// secrets.
pub fn snapshot_of(registry: &Registry, stream_box: Option<&SecretBox>) -> pb::ConfigSnapshot {
    let mut pusher_credentials: Vec<pb::PusherCredential> = match stream_box {
        Some(sealer) => registry.pusher_credentials().iter().map(|c| pusher_credential_to_pb(c, sealer)).collect(),
        None => Vec::new(),
    };
    pusher_credentials.sort_by(|a, b| a.key.cmp(&b.key));
    let mut webhooks: Vec<pb::WebhookEndpoint> = match stream_box {
        Some(sealer) => registry.webhooks().iter().map(|w| webhook_to_pb(w, sealer)).collect(),
        None => Vec::new(),
    };
    webhooks.sort_by(|a, b| a.id.cmp(&b.id));
    let mut apps: Vec<pb::AppConfig> = registry.apps().iter().map(|a| app_config_to_pb(a)).collect();
    apps.sort_by(|a, b| a.app_id.cmp(&b.app_id));
    pb::ConfigSnapshot {
        apps,
        keys: verifying_keys_to_pb(registry),
        revoked_api_keys: registry
            .revoked_api_keys()
            .into_iter()
            .map(|(app_id, key_id)| pb::RevokedApiKey { app_id, key_id })
            .collect(),
        revoked_clients: registry
            .revoked_clients()
            .into_iter()
            .map(|(app_id, client_id, issued_before)| pb::RevokedClient { app_id, client_id, issued_before })
            .collect(),
        pusher_credentials,
        webhooks,
    }
}

/// The wire form of one registry change; `None` for a credential or endpoint change that cannot
/// be sent (no stream key: this control plane serves no nodes).
pub fn config_delta(
    event: &ConfigEvent,
    registry: &Registry,
    stream_box: Option<&SecretBox>,
) -> Option<pb::ConfigDelta> {
    use pb::config_delta::Change as C;
    let change = match event {
        ConfigEvent::AppChanged(app) => C::AppChanged(app_config_to_pb(app)),
        ConfigEvent::AppRemoved { app_id, tenant_id } => {
            C::AppRemoved(pb::AppRemoved { app_id: app_id.clone(), tenant_id: tenant_id.clone() })
        }
        ConfigEvent::ApiKeyRevoked { app_id, key_id } => {
            C::ApiKeyRevoked(pb::RevokedApiKey { app_id: app_id.clone(), key_id: key_id.clone() })
        }
        ConfigEvent::ClientRevoked { app_id, client_id, issued_before } => C::ClientRevoked(pb::RevokedClient {
            app_id: app_id.clone(),
            client_id: client_id.clone(),
            issued_before: *issued_before,
        }),
        // The event says only that the set changed: send the set as it is now.
        ConfigEvent::KeysChanged => C::KeysChanged(pb::VerifyingKeys { keys: verifying_keys_to_pb(registry) }),
        ConfigEvent::PusherCredentialChanged(c) => C::PusherCredentialChanged(pusher_credential_to_pb(c, stream_box?)),
        ConfigEvent::PusherCredentialRevoked { app_id, key } => {
            C::PusherCredentialRevoked(pb::PusherCredentialRevoked { app_id: app_id.clone(), key: key.clone() })
        }
        ConfigEvent::WebhookChanged(w) => C::WebhookChanged(webhook_to_pb(w, stream_box?)),
        ConfigEvent::WebhookRemoved { app_id, id } => {
            C::WebhookRemoved(pb::WebhookRemoved { app_id: app_id.clone(), id: id.clone() })
        }
    };
    Some(pb::ConfigDelta { change: Some(change) })
}

/// What a stream event changes, for the config stream's spans (`config_send` on the control
/// plane, `config_apply` on the node): its kind, and the tenant and app it concerns when it
/// concerns one. `None` for a heartbeat, which changes nothing and gets no span.
pub fn change_of(event: &pb::WatchEvent) -> Option<(&'static str, Option<&str>, Option<&str>)> {
    use pb::config_delta::Change;
    use pb::watch_event::Event;
    let (kind, tenant, app) = match event.event.as_ref()? {
        Event::Heartbeat(_) => return None,
        Event::Snapshot(_) => ("snapshot", "", ""),
        Event::Delta(delta) => match delta.change.as_ref() {
            Some(Change::AppChanged(a)) => ("app_changed", a.tenant_id.as_str(), a.app_id.as_str()),
            Some(Change::AppRemoved(r)) => ("app_removed", r.tenant_id.as_str(), r.app_id.as_str()),
            Some(Change::ApiKeyRevoked(k)) => ("api_key_revoked", "", k.app_id.as_str()),
            Some(Change::ClientRevoked(c)) => ("client_revoked", "", c.app_id.as_str()),
            Some(Change::KeysChanged(_)) => ("keys_changed", "", ""),
            Some(Change::PusherCredentialChanged(c)) => {
                ("pusher_credential_changed", c.tenant_id.as_str(), c.app_id.as_str())
            }
            Some(Change::PusherCredentialRevoked(r)) => ("pusher_credential_revoked", "", r.app_id.as_str()),
            Some(Change::WebhookChanged(w)) => ("webhook_changed", w.tenant_id.as_str(), w.app_id.as_str()),
            Some(Change::WebhookRemoved(r)) => ("webhook_removed", "", r.app_id.as_str()),
            None => ("none", "", ""),
        },
    };
    Some((kind, Some(tenant).filter(|s| !s.is_empty()), Some(app).filter(|s| !s.is_empty())))
}

/// A usage record on the wire (a node's `ReportUsage` batch).
pub fn usage_record_to_pb(r: &UsageRecord) -> pb::UsageRecord {
    pb::UsageRecord {
        tenant_id: r.tenant_id.clone(),
        app_id: r.app_id.clone(),
        from_ms: r.from_ms,
        to_ms: r.to_ms,
        peak_connections: r.peak_connections,
        connection_ms: r.connection_ms,
        messages_published: r.messages_published,
        messages_delivered: r.messages_delivered,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        webhook_events: r.webhook_events,
    }
}

pub fn usage_record_from_pb(r: pb::UsageRecord) -> UsageRecord {
    UsageRecord {
        tenant_id: r.tenant_id,
        app_id: r.app_id,
        from_ms: r.from_ms,
        to_ms: r.to_ms,
        peak_connections: r.peak_connections,
        connection_ms: r.connection_ms,
        messages_published: r.messages_published,
        messages_delivered: r.messages_delivered,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        webhook_events: r.webhook_events,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn capabilities() -> Capabilities {
        Capabilities(BTreeMap::from([
            ("chat:*".to_owned(), BTreeSet::from([Operation::Subscribe, Operation::Publish])),
            ("news:*".to_owned(), BTreeSet::from([Operation::History, Operation::Presence])),
        ]))
    }

    #[test]
    fn app_config_comes_back_equal() {
        let app = AppConfig {
            app_id: "app_1".into(),
            tenant_id: "ten_1".into(),
            name: "chat".into(),
            enabled: false,
            allowed_origins: vec!["https://a.example".into()],
            max_token_ttl_s: 600,
            namespaces: vec![
                Namespace::default_namespace(),
                Namespace {
                    name: "news".into(),
                    history_size: 0,
                    history_ttl_s: 0,
                    presence: false,
                    client_publish: false,
                },
            ],
            tenant_quotas: Quotas::default(),
            quotas: Quotas { max_connections: 7, max_presence_members: 3, ..Quotas::default() },
        };
        assert_eq!(app_config_from_pb(app_config_to_pb(&app)), app);
        let bare = pb::AppConfig { app_id: "app_2".into(), ..Default::default() };
        assert_eq!(app_config_from_pb(bare).quotas, Quotas::default(), "absent quotas are the defaults");
    }

    #[test]
    fn capabilities_come_back_equal_and_unknown_operations_are_named() {
        assert_eq!(capabilities_from_pb(capabilities_to_pb(&capabilities())), Ok(capabilities()));
        let unknown = [("chat:*".to_owned(), pb::Operations { operations: vec!["fly".into()] })];
        assert_eq!(capabilities_from_pb(unknown).unwrap_err().to_string(), "unknown operation \"fly\"");
    }

    #[test]
    fn secrets_travel_sealed_and_open_only_with_the_same_node_token() {
        let stream = SecretBox::for_config_stream("node-token");
        let other = SecretBox::for_config_stream("another-token");
        let credential = PusherCredential {
            key: "0123456789abcdef0123".into(),
            app_id: "app_1".into(),
            tenant_id: "ten_1".into(),
            pusher_app_id: 42,
            secret: "pusher-secret".into(),
            capabilities: capabilities(),
            client_events: true,
        };
        let wire = pusher_credential_to_pb(&credential, &stream);
        assert!(!wire.sealed_secret.windows(13).any(|w| w == b"pusher-secret"), "sealed, not in clear");
        assert_eq!(pusher_credential_from_pb(wire.clone(), &stream), Some(credential));
        assert_eq!(pusher_credential_from_pb(wire, &other), None);

        let endpoint = WebhookEndpoint {
            id: "whk_1".into(),
            app_id: "app_1".into(),
            tenant_id: "ten_1".into(),
            url: "https://hooks.example/in".into(),
            events: WebhookEvent::ALL.to_vec(),
            channels: Some("chat:*".into()),
            format: WebhookFormat::Pusher,
            secret: "webhook-secret".into(),
        };
        let wire = webhook_to_pb(&endpoint, &stream);
        assert_eq!(webhook_from_pb(wire.clone(), &stream), Some(endpoint));
        assert_eq!(webhook_from_pb(wire.clone(), &other), None);
        let newer = pb::WebhookEndpoint { events: vec!["channel_renamed".into()], ..wire };
        assert_eq!(webhook_from_pb(newer, &stream), None, "an event this version does not know");
    }

    #[test]
    fn usage_records_come_back_equal() {
        let record = UsageRecord {
            tenant_id: "ten_1".into(),
            app_id: "app_1".into(),
            from_ms: 1_000,
            to_ms: 2_000,
            peak_connections: 3,
            connection_ms: 4,
            messages_published: 5,
            messages_delivered: 6,
            bytes_in: 7,
            bytes_out: 8,
            webhook_events: 9,
        };
        assert_eq!(usage_record_from_pb(usage_record_to_pb(&record)), record);
    }
}
