//! App configuration as the data plane sees it, and the live [`Registry`] that holds it.
//!
//! The control plane owns the truth (in its store). It pushes what the data plane needs into a
//! `Registry`: directly in `aviary dev` (one process), over a gRPC watch stream between processes.
//! The data plane only ever reads the registry, so token verification and quota checks never wait
//! on the control plane, and a control plane outage leaves the last known config in force.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::channel::namespace_of;
use crate::pusher::PusherCredential;
use crate::token::{TokenTrust, VerifyingKey};
use crate::webhook::WebhookEndpoint;

/// Limits on what a tenant (and, tighter, one of its apps) may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Concurrent connections across the tenant (or app).
    pub max_connections: u32,
    /// Messages published per second (clients and REST together).
    pub max_messages_per_s: u32,
    /// Largest message payload, in bytes of its JSON encoding.
    pub max_message_bytes: u32,
    /// Channels one connection may be subscribed to at once.
    pub max_subscriptions_per_connection: u32,
    /// Presence members one channel may hold.
    pub max_presence_members: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_connections: 10_000,
            max_messages_per_s: 1_000,
            max_message_bytes: 64 * 1024,
            max_subscriptions_per_connection: 128,
            max_presence_members: 1_000,
        }
    }
}

impl Quotas {
    /// Field-wise minimum: an app's quotas can only tighten its tenant's.
    pub fn min(&self, other: &Quotas) -> Quotas {
        Quotas {
            max_connections: self.max_connections.min(other.max_connections),
            max_messages_per_s: self.max_messages_per_s.min(other.max_messages_per_s),
            max_message_bytes: self.max_message_bytes.min(other.max_message_bytes),
            max_subscriptions_per_connection: self
                .max_subscriptions_per_connection
                .min(other.max_subscriptions_per_connection),
            max_presence_members: self.max_presence_members.min(other.max_presence_members),
        }
    }
}

/// Options for the channels of one namespace (the part of a channel name before `:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Namespace name; `""` is the default namespace, used by channels without a `:` and by
    /// channels whose namespace is not configured.
    pub name: String,
    /// Publications kept per channel for history and resume; 0 keeps none.
    #[serde(default = "defaults::history_size")]
    pub history_size: u32,
    /// How long a channel's history lives after its last publication, in seconds.
    #[serde(default = "defaults::history_ttl_s")]
    pub history_ttl_s: u32,
    /// Whether clients may enter presence on these channels.
    #[serde(default = "defaults::yes")]
    pub presence: bool,
    /// Whether clients (not only backends) may publish on these channels.
    #[serde(default = "defaults::yes")]
    pub client_publish: bool,
}

mod defaults {
    pub fn history_size() -> u32 {
        100
    }
    pub fn history_ttl_s() -> u32 {
        3600
    }
    pub fn yes() -> bool {
        true
    }
}

impl Namespace {
    /// The default namespace new apps get: history of 100 for an hour, presence, client publish.
    pub fn default_namespace() -> Namespace {
        Namespace {
            name: String::new(),
            history_size: defaults::history_size(),
            history_ttl_s: defaults::history_ttl_s(),
            presence: true,
            client_publish: true,
        }
    }
}

/// Everything the data plane needs to know about one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppConfig {
    pub app_id: String,
    pub tenant_id: String,
    pub name: String,
    /// A disabled app (or one whose tenant is disabled) accepts no connections or publishes.
    pub enabled: bool,
    /// Browser Origins allowed to connect; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Longest connection token lifetime the app allows, in seconds.
    pub max_token_ttl_s: u32,
    pub namespaces: Vec<Namespace>,
    /// The tenant's quotas, shared by all its apps (connections and message rate count tenant-wide).
    pub tenant_quotas: Quotas,
    /// This app's effective quotas: the field-wise minimum of the tenant's and the app's own.
    pub quotas: Quotas,
}

impl AppConfig {
    /// The namespace options for `channel`, or `None` when its namespace is not configured and
    /// the app has no default namespace (the channel is then unknown).
    pub fn namespace_for(&self, channel: &str) -> Option<&Namespace> {
        let ns = namespace_of(channel);
        self.namespaces.iter().find(|n| n.name == ns).or_else(|| self.namespaces.iter().find(|n| n.name.is_empty()))
    }

    /// Does `origin` pass the app's allow-list? No list means any origin; a missing Origin
    /// header (a non-browser client) passes too, since only browsers send one.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(o) => {
                self.allowed_origins.is_empty()
                    || self.allowed_origins.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(o))
            }
        }
    }
}

/// A change to the registry, broadcast so live connections can react (close, re-check quotas).
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigEvent {
    /// An app was created or changed (including being disabled).
    AppChanged(Arc<AppConfig>),
    /// An app (or its whole tenant) was deleted.
    AppRemoved { app_id: String, tenant_id: String },
    /// An API key was revoked: connections whose token it minted must close (4010).
    ApiKeyRevoked { app_id: String, key_id: String },
    /// All tokens of `client_id` issued at or before `issued_before` (Unix milliseconds) are
    /// revoked.
    ClientRevoked { app_id: String, client_id: String, issued_before: i64 },
    /// The set of token verifying keys changed.
    KeysChanged,
    /// A Pusher credential was created (or its grant changed).
    PusherCredentialChanged(Arc<PusherCredential>),
    /// A Pusher credential was revoked: connections that opened with its key must close, and
    /// requests signed with its secret are refused from now on.
    PusherCredentialRevoked { app_id: String, key: String },
    /// A webhook endpoint was created or changed.
    WebhookChanged(Arc<WebhookEndpoint>),
    /// A webhook endpoint was deleted (or its app removed).
    WebhookRemoved { app_id: String, id: String },
}

/// The live configuration one data plane node works from. Cheap to read from any task.
pub struct Registry {
    apps: DashMap<String, Arc<AppConfig>>,
    keys: RwLock<HashMap<String, Arc<VerifyingKey>>>,
    /// Revoked API key id -> its app id.
    revoked_keys: DashMap<String, String>,
    revoked_clients: DashMap<(String, String), i64>,
    /// Live Pusher credentials by public key.
    pusher: DashMap<String, Arc<PusherCredential>>,
    /// Webhook endpoints by id.
    webhooks: DashMap<String, Arc<WebhookEndpoint>>,
    events: broadcast::Sender<ConfigEvent>,
    version: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("apps", &self.apps.len()).field("version", &self.version()).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Registry {
            apps: DashMap::new(),
            keys: RwLock::new(HashMap::new()),
            revoked_keys: DashMap::new(),
            revoked_clients: DashMap::new(),
            pusher: DashMap::new(),
            webhooks: DashMap::new(),
            events,
            version: AtomicU64::new(0),
        }
    }

    /// The app's current config, if it exists.
    pub fn app(&self, app_id: &str) -> Option<Arc<AppConfig>> {
        self.apps.get(app_id).map(|a| a.clone())
    }

    /// All apps currently known (for snapshots and listings).
    pub fn apps(&self) -> Vec<Arc<AppConfig>> {
        self.apps.iter().map(|a| a.clone()).collect()
    }

    /// The verifying key with this `kid`, if it is (still) trusted.
    pub fn verifying_key(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.keys.read().get(kid).cloned()
    }

    /// Every trusted verifying key (for snapshots sent to other nodes).
    pub fn verifying_keys(&self) -> Vec<Arc<VerifyingKey>> {
        self.keys.read().values().cloned().collect()
    }

    /// `(app_id, key_id)` of every revoked API key (for snapshots).
    pub fn revoked_api_keys(&self) -> Vec<(String, String)> {
        self.revoked_keys.iter().map(|e| (e.value().clone(), e.key().clone())).collect()
    }

    /// `(app_id, client_id, issued_before)` of every client revocation (for snapshots;
    /// milliseconds).
    pub fn revoked_clients(&self) -> Vec<(String, String, i64)> {
        self.revoked_clients.iter().map(|e| (e.key().0.clone(), e.key().1.clone(), *e.value())).collect()
    }

    /// Is this API key revoked?
    pub fn api_key_revoked(&self, key_id: &str) -> bool {
        self.revoked_keys.contains_key(key_id)
    }

    /// Are tokens for this client issued at `issued_at` (Unix milliseconds,
    /// [`crate::ConnectionClaims::issued_at_ms`]) revoked?
    pub fn client_revoked(&self, app_id: &str, client_id: &str, issued_at: i64) -> bool {
        self.revoked_clients.get(&(app_id.to_owned(), client_id.to_owned())).is_some_and(|before| issued_at <= *before)
    }

    /// The live Pusher credential with this public key.
    pub fn pusher_credential(&self, key: &str) -> Option<Arc<PusherCredential>> {
        self.pusher.get(key).map(|c| c.clone())
    }

    /// Every live Pusher credential (for snapshots and resyncs).
    pub fn pusher_credentials(&self) -> Vec<Arc<PusherCredential>> {
        self.pusher.iter().map(|c| c.clone()).collect()
    }

    /// The app's live Pusher credential that signs its `pusher`-format webhooks: the one with
    /// the smallest key, so every node picks the same.
    pub fn pusher_signing_credential(&self, app_id: &str) -> Option<Arc<PusherCredential>> {
        self.pusher.iter().filter(|c| c.app_id == app_id).map(|c| c.clone()).min_by(|a, b| a.key.cmp(&b.key))
    }

    /// The webhook endpoint with this id.
    pub fn webhook(&self, id: &str) -> Option<Arc<WebhookEndpoint>> {
        self.webhooks.get(id).map(|w| w.clone())
    }

    /// Every webhook endpoint (for snapshots and resyncs).
    pub fn webhooks(&self) -> Vec<Arc<WebhookEndpoint>> {
        self.webhooks.iter().map(|w| w.clone()).collect()
    }

    /// The app's webhook endpoints, by id.
    pub fn webhooks_of(&self, app_id: &str) -> Vec<Arc<WebhookEndpoint>> {
        let mut of: Vec<_> = self.webhooks.iter().filter(|w| w.app_id == app_id).map(|w| w.clone()).collect();
        of.sort_by(|a, b| a.id.cmp(&b.id));
        of
    }

    /// Does any endpoint of the app want `event` (on some channel)? Cheap enough for the
    /// message path: the common answer, no endpoints at all, is one map scan of an empty map.
    pub fn any_webhook_wants(&self, app_id: &str, event: crate::webhook::WebhookEvent) -> bool {
        !self.webhooks.is_empty() && self.webhooks.iter().any(|w| w.app_id == app_id && w.events.contains(&event))
    }

    /// Subscribes to changes made after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<ConfigEvent> {
        self.events.subscribe()
    }

    /// Monotonic counter bumped by every change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Replaces the whole set of verifying keys (no event when the set is unchanged).
    pub fn set_verifying_keys(&self, keys: impl IntoIterator<Item = VerifyingKey>) {
        let keys: HashMap<String, Arc<VerifyingKey>> = keys.into_iter().map(|k| (k.kid.clone(), Arc::new(k))).collect();
        {
            let mut current = self.keys.write();
            let same = current.len() == keys.len()
                && keys.iter().all(|(kid, k)| current.get(kid).is_some_and(|c| c.public == k.public));
            if same {
                return;
            }
            *current = keys;
        }
        self.emit(ConfigEvent::KeysChanged);
    }

    /// Inserts or replaces an app. Re-inserting an identical config changes nothing and emits
    /// no event, so a periodic full reload is cheap for live connections.
    pub fn upsert_app(&self, app: AppConfig) {
        if self.apps.get(&app.app_id).is_some_and(|current| **current == app) {
            return;
        }
        let app = Arc::new(app);
        self.apps.insert(app.app_id.clone(), app.clone());
        self.emit(ConfigEvent::AppChanged(app));
    }

    /// Forgets an app (and its Pusher credentials, whose connections the app's removal closes,
    /// and its webhook endpoints).
    pub fn remove_app(&self, app_id: &str) {
        self.pusher.retain(|_, c| c.app_id != app_id);
        let gone: Vec<String> = self.webhooks.iter().filter(|w| w.app_id == app_id).map(|w| w.id.clone()).collect();
        for id in gone {
            self.remove_webhook(&id);
        }
        if let Some((_, app)) = self.apps.remove(app_id) {
            self.emit(ConfigEvent::AppRemoved { app_id: app.app_id.clone(), tenant_id: app.tenant_id.clone() });
        }
    }

    /// Marks an API key revoked.
    pub fn revoke_api_key(&self, app_id: &str, key_id: &str) {
        if self.revoked_keys.insert(key_id.to_owned(), app_id.to_owned()).is_some() {
            return;
        }
        self.emit(ConfigEvent::ApiKeyRevoked { app_id: app_id.to_owned(), key_id: key_id.to_owned() });
    }

    /// Revokes every token of `client_id` issued at or before `issued_before` (Unix
    /// milliseconds).
    pub fn revoke_client(&self, app_id: &str, client_id: &str, issued_before: i64) {
        self.revoked_clients.insert((app_id.to_owned(), client_id.to_owned()), issued_before);
        self.emit(ConfigEvent::ClientRevoked {
            app_id: app_id.to_owned(),
            client_id: client_id.to_owned(),
            issued_before,
        });
    }

    /// Inserts or replaces a Pusher credential (no event when identical).
    pub fn upsert_pusher_credential(&self, credential: PusherCredential) {
        if self.pusher.get(&credential.key).is_some_and(|current| **current == credential) {
            return;
        }
        let credential = Arc::new(credential);
        self.pusher.insert(credential.key.clone(), credential.clone());
        self.emit(ConfigEvent::PusherCredentialChanged(credential));
    }

    /// Revokes a Pusher credential at once (no event when it was not live).
    pub fn remove_pusher_credential(&self, key: &str) {
        if let Some((_, c)) = self.pusher.remove(key) {
            self.emit(ConfigEvent::PusherCredentialRevoked { app_id: c.app_id.clone(), key: c.key.clone() });
        }
    }

    /// Inserts or replaces a webhook endpoint (no event when identical).
    pub fn upsert_webhook(&self, endpoint: WebhookEndpoint) {
        if self.webhooks.get(&endpoint.id).is_some_and(|current| **current == endpoint) {
            return;
        }
        let endpoint = Arc::new(endpoint);
        self.webhooks.insert(endpoint.id.clone(), endpoint.clone());
        self.emit(ConfigEvent::WebhookChanged(endpoint));
    }

    /// Forgets a webhook endpoint (no event when it was not there).
    pub fn remove_webhook(&self, id: &str) {
        if let Some((_, w)) = self.webhooks.remove(id) {
            self.emit(ConfigEvent::WebhookRemoved { app_id: w.app_id.clone(), id: w.id.clone() });
        }
    }

    fn emit(&self, event: ConfigEvent) {
        self.version.fetch_add(1, Ordering::AcqRel);
        // No receivers is fine: nobody is connected yet.
        let _ = self.events.send(event);
    }
}

impl TokenTrust for Registry {
    fn verifying_key(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        Registry::verifying_key(self, kid)
    }

    fn api_key_revoked(&self, key_id: &str) -> bool {
        Registry::api_key_revoked(self, key_id)
    }

    fn client_revoked(&self, app_id: &str, client_id: &str, issued_at_ms: i64) -> bool {
        Registry::client_revoked(self, app_id, client_id, issued_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(namespaces: Vec<Namespace>) -> AppConfig {
        AppConfig {
            app_id: "app_1".into(),
            tenant_id: "ten_1".into(),
            name: "a".into(),
            enabled: true,
            allowed_origins: vec!["https://example.com".into()],
            max_token_ttl_s: 3600,
            namespaces,
            tenant_quotas: Quotas::default(),
            quotas: Quotas::default(),
        }
    }

    #[test]
    fn unknown_namespaces_fall_back_to_the_default_one_if_any() {
        let chat = Namespace { name: "chat".into(), history_size: 5, ..Namespace::default_namespace() };
        let with_default = app(vec![Namespace::default_namespace(), chat.clone()]);
        assert_eq!(with_default.namespace_for("chat:x").unwrap().history_size, 5);
        assert_eq!(with_default.namespace_for("other:x").unwrap().name, "");
        let strict = app(vec![chat]);
        assert!(strict.namespace_for("other:x").is_none());
        assert!(strict.namespace_for("lobby").is_none());
    }

    #[test]
    fn origin_allow_list_is_case_insensitive_and_optional() {
        let a = app(vec![]);
        assert!(a.origin_allowed(Some("https://EXAMPLE.com")));
        assert!(!a.origin_allowed(Some("https://evil.com")));
        assert!(a.origin_allowed(None));
    }

    #[test]
    fn client_revocation_covers_tokens_issued_before_the_cutoff() {
        let r = Registry::new();
        let mut rx = r.subscribe();
        r.revoke_client("app_1", "u1", 100);
        assert!(r.client_revoked("app_1", "u1", 100));
        assert!(!r.client_revoked("app_1", "u1", 101));
        assert!(!r.client_revoked("app_2", "u1", 50));
        assert!(matches!(rx.try_recv(), Ok(ConfigEvent::ClientRevoked { .. })));
        assert_eq!(r.version(), 1);
    }

    #[test]
    fn pusher_credentials_are_replaced_revoked_and_leave_with_their_app() {
        let r = Registry::new();
        let cred = |key: &str, app_id: &str| PusherCredential {
            key: key.into(),
            app_id: app_id.into(),
            tenant_id: "ten_1".into(),
            pusher_app_id: 7,
            secret: "secret".into(),
            capabilities: crate::Capabilities::all(),
            client_events: false,
        };
        r.upsert_app(app(vec![]));
        r.upsert_pusher_credential(cred("k1", "app_1"));
        r.upsert_pusher_credential(cred("k1", "app_1"));
        r.upsert_pusher_credential(cred("k2", "app_1"));
        assert_eq!(r.version(), 3, "an identical credential emits nothing");
        let mut rx = r.subscribe();
        r.remove_pusher_credential("k1");
        r.remove_pusher_credential("k1");
        assert!(matches!(rx.try_recv(), Ok(ConfigEvent::PusherCredentialRevoked { key, .. }) if key == "k1"));
        assert!(rx.try_recv().is_err(), "revoking twice emits once");
        assert!(r.pusher_credential("k1").is_none());
        r.remove_app("app_1");
        assert!(r.pusher_credential("k2").is_none(), "deleting the app drops its credentials");
    }

    #[test]
    fn reapplying_identical_config_emits_nothing() {
        let r = Registry::new();
        r.upsert_app(app(vec![]));
        r.upsert_app(app(vec![]));
        r.revoke_api_key("app_1", "key_1");
        r.revoke_api_key("app_1", "key_1");
        assert_eq!(r.version(), 2);
        let mut changed = app(vec![]);
        changed.enabled = false;
        r.upsert_app(changed);
        assert_eq!(r.version(), 3);
    }
}
