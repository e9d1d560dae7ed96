//! The config stream data-plane nodes follow (`Watch`): a versioned log of registry changes,
//! snapshots of the registry, and the conversions between `aviary_core` config and the wire.
//!
//! The [`ConfigLog`] subscribes to this process's `Registry` and numbers every change it sees
//! (its own counter, not `Registry::version`, so a number always names exactly one logged
//! change). It keeps the last [`RING`] changes so a node that lost its stream briefly resumes
//! with just the deltas it missed; anything older, or a version from another epoch, gets a
//! snapshot. The epoch is a random id per process: versions of a restarted or different replica
//! are not comparable, so a node talking to one takes a fresh snapshot.
//!
//! Consistency: a snapshot is read while the log is locked, so it includes every change logged
//! up to its version (and possibly later ones whose events are still queued); those are then
//! delivered again as deltas, which is harmless because every delta states a final value (an
//! app's whole config, the whole key set, a revocation) and events stay in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aviary_core::token::VerifyingKey;
use aviary_core::webhook::{WebhookEndpoint, WebhookEvent, WebhookFormat};
use aviary_core::{AppConfig, ConfigEvent, Namespace, PusherCredential, Quotas, Registry};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::grpc::pb;
use crate::sealing::SecretBox;

/// Changes kept for resuming streams.
pub const RING: usize = 4096;

/// One logged change.
#[derive(Debug, Clone)]
enum Change {
    Delta(pb::ConfigDelta),
    /// The log missed registry events (it lagged): every stream must take a snapshot.
    Resync,
}

type Entry = (u64, Arc<Change>);

struct LogState {
    version: u64,
    ring: VecDeque<Entry>,
}

/// Numbered registry changes for `Watch` streams. One per control plane process.
pub struct ConfigLog {
    epoch: String,
    registry: Arc<Registry>,
    /// Seals Pusher secrets for the stream; `None` (no node token) sends no credentials.
    stream_box: Option<SecretBox>,
    state: Mutex<LogState>,
    live: broadcast::Sender<Entry>,
    /// Dropped with the log, which stops its task.
    _alive: watch::Sender<()>,
}

impl std::fmt::Debug for ConfigLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigLog").field("epoch", &self.epoch).field("version", &self.version()).finish()
    }
}

impl ConfigLog {
    /// Starts logging `registry`'s changes. Call before anything else mutates it, so no change
    /// is missed (a missed one would still reach nodes through the next snapshot).
    pub fn start(registry: Arc<Registry>, stream_box: Option<SecretBox>) -> Arc<ConfigLog> {
        let events = registry.subscribe();
        let (alive, alive_rx) = watch::channel(());
        let (live, _) = broadcast::channel(1024);
        let log = Arc::new(ConfigLog {
            epoch: uuid::Uuid::now_v7().simple().to_string(),
            registry,
            stream_box,
            state: Mutex::new(LogState { version: 0, ring: VecDeque::with_capacity(RING) }),
            live,
            _alive: alive,
        });
        tokio::spawn(run_log(Arc::downgrade(&log), events, alive_rx));
        metrics::gauge!("aviary_config_log_version").set(0.0);
        log
    }

    /// The id of this process's log; versions only compare within one epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The version of the last logged change.
    pub fn version(&self) -> u64 {
        self.state.lock().version
    }

    fn append(&self, change: Change) {
        let mut state = self.state.lock();
        state.version += 1;
        let entry = (state.version, Arc::new(change));
        metrics::gauge!("aviary_config_log_version").set(state.version as f64);
        if state.ring.len() == RING {
            state.ring.pop_front();
        }
        state.ring.push_back(entry.clone());
        // Sent under the lock so streams see entries in version order; no receiver is fine.
        let _ = self.live.send(entry);
    }

    /// The whole current config and the version it includes.
    fn snapshot(&self) -> (u64, pb::ConfigSnapshot) {
        let state = self.state.lock();
        (state.version, snapshot_of(&self.registry, self.stream_box.as_ref()))
    }

    /// What a node resuming from `(epoch, version)` needs first: the deltas after `version`
    /// when they are all still in the ring, else `None` (it needs a snapshot).
    fn replay(&self, epoch: &str, version: u64) -> Option<(u64, Vec<Entry>)> {
        if epoch != self.epoch {
            return None;
        }
        let state = self.state.lock();
        if version > state.version {
            return None;
        }
        let oldest = state.ring.front().map_or(state.version + 1, |(v, _)| *v);
        if version + 1 < oldest {
            return None;
        }
        let missed: Vec<Entry> = state.ring.iter().filter(|(v, _)| *v > version).cloned().collect();
        if missed.iter().any(|(_, c)| matches!(**c, Change::Resync)) {
            return None;
        }
        Some((state.version, missed))
    }

    fn event(&self, version: u64, event: pb::watch_event::Event) -> pb::WatchEvent {
        pb::WatchEvent { epoch: self.epoch.clone(), version, event: Some(event) }
    }

    fn snapshot_event(&self) -> (u64, pb::WatchEvent) {
        let (version, snapshot) = self.snapshot();
        (version, self.event(version, pb::watch_event::Event::Snapshot(snapshot)))
    }

    /// Feeds one `Watch` stream into `out` until the node goes away: a snapshot or the missed
    /// deltas, then live deltas, and a heartbeat every `heartbeat` (which also carries the
    /// current version, so an idle node still knows it is up to date).
    pub(crate) async fn serve(
        self: Arc<Self>,
        request: pb::WatchRequest,
        out: mpsc::Sender<Result<pb::WatchEvent, Status>>,
        heartbeat: Duration,
    ) {
        let _open = StreamGauge::open();
        // Subscribe before reading the position so nothing falls between the two.
        let mut live = self.live.subscribe();
        let mut sent = match self.replay(&request.epoch, request.version) {
            Some((version, missed)) => {
                for (v, change) in missed {
                    if let Change::Delta(d) = &*change
                        && send_traced(&out, &request.node_id, self.event(v, pb::watch_event::Event::Delta(d.clone())))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                let version = version.max(request.version);
                // Tells the node at once that it is connected and up to date.
                let alive = self.event(version, pb::watch_event::Event::Heartbeat(pb::Heartbeat {}));
                if out.send(Ok(alive)).await.is_err() {
                    return;
                }
                version
            }
            None => {
                let (version, event) = self.snapshot_event();
                if send_traced(&out, &request.node_id, event).await.is_err() {
                    return;
                }
                version
            }
        };
        tracing::info!(node = %request.node_id, resumed_from = request.version, version = sent, "node watching config");
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let event = tokio::select! {
                _ = out.closed() => return,
                _ = tick.tick() => self.event(sent, pb::watch_event::Event::Heartbeat(pb::Heartbeat {})),
                got = live.recv() => match got {
                    Ok((v, _)) if v <= sent => continue,
                    Ok((v, change)) => match &*change {
                        Change::Delta(d) if v == sent + 1 => {
                            sent = v;
                            self.event(v, pb::watch_event::Event::Delta(d.clone()))
                        }
                        // A resync marker, or a gap that cannot happen: start over from a snapshot.
                        _ => {
                            let (version, event) = self.snapshot_event();
                            sent = version;
                            event
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (version, event) = self.snapshot_event();
                        sent = version;
                        event
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if send_traced(&out, &request.node_id, event).await.is_err() {
                return;
            }
        }
    }
}

/// What a stream event changes, for the config stream's spans (`config_send` on the control
/// plane, `config_apply` on the node): its kind, and the tenant and app it concerns when it
/// concerns one. `None` for a heartbeat, which changes nothing and gets no span.
pub(crate) fn change_of(event: &pb::WatchEvent) -> Option<(&'static str, Option<&str>, Option<&str>)> {
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

/// Sends one event down a node's stream, in a `config_send` span unless it is a heartbeat.
async fn send_traced(
    out: &mpsc::Sender<Result<pb::WatchEvent, Status>>,
    node: &str,
    event: pb::WatchEvent,
) -> Result<(), mpsc::error::SendError<Result<pb::WatchEvent, Status>>> {
    let span = match change_of(&event) {
        Some((change, tenant_id, app_id)) => {
            tracing::info_span!("config_send", node, version = event.version, change, tenant_id, app_id)
        }
        None => tracing::Span::none(),
    };
    tracing::Instrument::instrument(out.send(Ok(event)), span).await
}

/// Counts open streams in `aviary_watch_streams` for as long as it lives.
struct StreamGauge;

impl StreamGauge {
    fn open() -> StreamGauge {
        metrics::gauge!("aviary_watch_streams").increment(1.0);
        StreamGauge
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        metrics::gauge!("aviary_watch_streams").decrement(1.0);
    }
}

async fn run_log(
    log: std::sync::Weak<ConfigLog>,
    mut events: broadcast::Receiver<ConfigEvent>,
    mut alive: watch::Receiver<()>,
) {
    loop {
        let got = tokio::select! {
            _ = alive.changed() => return,
            got = events.recv() => got,
        };
        let Some(log) = log.upgrade() else { return };
        match got {
            Ok(event) => {
                if let Some(delta) = delta_of(&event, &log.registry, log.stream_box.as_ref()) {
                    log.append(Change::Delta(delta));
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "config log lagged behind the registry; nodes will take a snapshot");
                log.append(Change::Resync);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The wire form of one registry change; `None` for a credential change that cannot be sent
/// (no stream key: this control plane serves no nodes).
fn delta_of(event: &ConfigEvent, registry: &Registry, stream_box: Option<&SecretBox>) -> Option<pb::ConfigDelta> {
    use pb::config_delta::Change as C;
    let change = match event {
        ConfigEvent::AppChanged(app) => C::AppChanged(app_to_pb(app)),
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
        ConfigEvent::KeysChanged => C::KeysChanged(pb::VerifyingKeys { keys: keys_of(registry) }),
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

/// A credential on the wire, its secret sealed with the stream key.
fn pusher_credential_to_pb(c: &PusherCredential, stream_box: &SecretBox) -> pb::PusherCredential {
    pb::PusherCredential {
        key: c.key.clone(),
        app_id: c.app_id.clone(),
        tenant_id: c.tenant_id.clone(),
        pusher_app_id: c.pusher_app_id,
        sealed_secret: stream_box.seal_str(&c.secret, &c.key),
        capabilities: crate::grpc::capabilities_to_pb(&c.capabilities),
        client_events: c.client_events,
    }
}

/// A wire credential back, its secret opened with the stream key; `None` when it does not open
/// (the control plane has another node token) or its capabilities do not parse.
pub(crate) fn pusher_credential_from_pb(c: pb::PusherCredential, stream_box: &SecretBox) -> Option<PusherCredential> {
    let Some(secret) = stream_box.open_str(&c.sealed_secret, &c.key) else {
        tracing::error!(key = %c.key, "a streamed Pusher secret does not open: is the node token the control plane's?");
        return None;
    };
    Some(PusherCredential {
        capabilities: crate::grpc::capabilities_from_pb(c.capabilities).ok()?,
        key: c.key,
        app_id: c.app_id,
        tenant_id: c.tenant_id,
        pusher_app_id: c.pusher_app_id,
        secret,
        client_events: c.client_events,
    })
}

/// A webhook endpoint on the wire, its secret sealed with the stream key (bound to its id).
fn webhook_to_pb(w: &WebhookEndpoint, stream_box: &SecretBox) -> pb::WebhookEndpoint {
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
pub(crate) fn webhook_from_pb(w: pb::WebhookEndpoint, stream_box: &SecretBox) -> Option<WebhookEndpoint> {
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

fn keys_of(registry: &Registry) -> Vec<pb::VerifyingKey> {
    let mut keys: Vec<pb::VerifyingKey> = registry
        .verifying_keys()
        .iter()
        .map(|k| pb::VerifyingKey { kid: k.kid.clone(), public_key: k.public.to_vec() })
        .collect();
    keys.sort_by(|a, b| a.kid.cmp(&b.kid));
    keys
}

/// Everything in `registry`, as a snapshot message; Pusher credentials and webhook endpoints
/// only with a stream key to seal their secrets.
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
    let mut apps: Vec<pb::AppConfig> = registry.apps().iter().map(|a| app_to_pb(a)).collect();
    apps.sort_by(|a, b| a.app_id.cmp(&b.app_id));
    pb::ConfigSnapshot {
        apps,
        keys: keys_of(registry),
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

fn quotas_to_pb(q: &Quotas) -> pb::Quotas {
    pb::Quotas {
        max_connections: q.max_connections,
        max_messages_per_s: q.max_messages_per_s,
        max_message_bytes: q.max_message_bytes,
        max_subscriptions_per_connection: q.max_subscriptions_per_connection,
        max_presence_members: q.max_presence_members,
    }
}

fn quotas_from_pb(q: Option<pb::Quotas>) -> Quotas {
    q.map_or_else(Quotas::default, |q| Quotas {
        max_connections: q.max_connections,
        max_messages_per_s: q.max_messages_per_s,
        max_message_bytes: q.max_message_bytes,
        max_subscriptions_per_connection: q.max_subscriptions_per_connection,
        max_presence_members: q.max_presence_members,
    })
}

pub(crate) fn app_to_pb(a: &AppConfig) -> pb::AppConfig {
    pb::AppConfig {
        app_id: a.app_id.clone(),
        tenant_id: a.tenant_id.clone(),
        name: a.name.clone(),
        enabled: a.enabled,
        allowed_origins: a.allowed_origins.clone(),
        max_token_ttl_s: a.max_token_ttl_s,
        namespaces: a
            .namespaces
            .iter()
            .map(|ns| pb::Namespace {
                name: ns.name.clone(),
                history_size: ns.history_size,
                history_ttl_s: ns.history_ttl_s,
                presence: ns.presence,
                client_publish: ns.client_publish,
            })
            .collect(),
        tenant_quotas: Some(quotas_to_pb(&a.tenant_quotas)),
        quotas: Some(quotas_to_pb(&a.quotas)),
    }
}

pub(crate) fn app_from_pb(a: pb::AppConfig) -> AppConfig {
    AppConfig {
        app_id: a.app_id,
        tenant_id: a.tenant_id,
        name: a.name,
        enabled: a.enabled,
        allowed_origins: a.allowed_origins,
        max_token_ttl_s: a.max_token_ttl_s,
        namespaces: a
            .namespaces
            .into_iter()
            .map(|ns| Namespace {
                name: ns.name,
                history_size: ns.history_size,
                history_ttl_s: ns.history_ttl_s,
                presence: ns.presence,
                client_publish: ns.client_publish,
            })
            .collect(),
        tenant_quotas: quotas_from_pb(a.tenant_quotas),
        quotas: quotas_from_pb(a.quotas),
    }
}

/// A wire key back as a verifying key; `None` when the bytes are not 32 long.
pub(crate) fn key_from_pb(k: &pb::VerifyingKey) -> Option<VerifyingKey> {
    let public: [u8; 32] = k.public_key.as_slice().try_into().ok()?;
    Some(VerifyingKey::new(k.kid.clone(), public))
}
