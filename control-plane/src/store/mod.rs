//! The control plane's durable state: the [`Store`] trait (its doc comments are the contract),
//! the records it holds, and its two implementations.
//!
//! - [`postgres::PgStore`] for `aviary control-plane` (shared by every control plane replica),
//! - [`sqlite::SqliteStore`] for `aviary dev` (one file in the data directory, WAL mode).
//!
//! Both run the same SQL (see `sql.rs`); [`contract`] is the one test suite every implementation
//! must pass. The store knows nothing about HTTP, hashing or the registry: callers validate input
//! and hash secrets before anything reaches it, so every value it is given is already legal.

use async_trait::async_trait;
use aviary_core::usage::UsageRecord;
use aviary_core::webhook::{WebhookEvent, WebhookFormat};
use aviary_core::{Capabilities, Namespace, Quotas};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;

use crate::error::Result;

pub mod contract;
pub mod postgres;
mod sql;
pub mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The current time at the precision every store keeps (microseconds, Postgres' limit), so a
/// record read back compares equal to the one written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// An organisation: owns apps and sets the quotas they share.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// A disabled tenant's apps accept no connections or publishes.
    pub enabled: bool,
    /// Ceiling for every app of the tenant; set by the operator.
    pub quotas: Quotas,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One application of a tenant: its own channels, settings and API keys.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct App {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub enabled: bool,
    /// Browser Origins allowed to connect; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Longest connection token lifetime this app allows, in seconds.
    pub max_token_ttl_s: u32,
    /// Channel namespaces (history, presence, client publish).
    pub namespaces: Vec<Namespace>,
    /// App-level quota overrides; never above the tenant's. `None` inherits the tenant's.
    pub quotas: Option<Quotas>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A tenant admin key (`avt_...`) as stored: only the argon2id hash of its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminKeyRecord {
    pub id: String,
    pub tenant_id: String,
    /// argon2id PHC string.
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An app API key (`avk_...`) as stored: only the argon2id hash of its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub app_id: String,
    pub tenant_id: String,
    /// Human label, e.g. "backend-prod".
    pub name: String,
    /// What tokens minted with this key may at most allow.
    pub capabilities: Capabilities,
    /// argon2id PHC string.
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A Pusher key/secret pair of an app, as stored: the secret only sealed (see
/// [`aviary_core::sealing`]), and emptied when the credential is revoked.
#[derive(Clone, PartialEq)]
pub struct PusherCredentialRecord {
    /// The public key; unique across apps (clients connect with it alone).
    pub key: String,
    pub app_id: String,
    pub tenant_id: String,
    /// The app's numeric Pusher id. On create, a candidate the store uses only if the app has
    /// none yet; on read, the app's id.
    pub pusher_app_id: u64,
    pub capabilities: Capabilities,
    pub client_events: bool,
    /// AES-256-GCM ciphertext of the secret; empty once revoked.
    pub sealed_secret: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for PusherCredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherCredentialRecord")
            .field("key", &self.key)
            .field("app_id", &self.app_id)
            .field("pusher_app_id", &self.pusher_app_id)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A webhook endpoint of an app, as stored: its secret only sealed (see [`aviary_core::sealing`]).
#[derive(Clone, PartialEq)]
pub struct WebhookRecord {
    pub id: String,
    pub app_id: String,
    pub tenant_id: String,
    pub url: String,
    /// Never empty, no repeats.
    pub events: Vec<WebhookEvent>,
    /// Channel glob the endpoint is limited to; `None` for every channel.
    pub channels: Option<String>,
    pub format: WebhookFormat,
    /// AES-256-GCM ciphertext of the signing secret, bound to the id.
    pub sealed_secret: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("id", &self.id)
            .field("app_id", &self.app_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("channels", &self.channels)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// A token signing key: Ed25519 private key as PKCS#8 DER.
#[derive(Clone, PartialEq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub pkcs8: Vec<u8>,
    pub created_at: DateTime<Utc>,
    /// When a newer key replaced this one; `None` for the current key.
    pub retired_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// One app's usage during one hour, summed over every node's reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBucket {
    pub tenant_id: String,
    pub app_id: String,
    /// Start of the hour, Unix seconds (a multiple of 3600).
    pub hour_start: i64,
    pub messages_published: u64,
    pub messages_delivered: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connection_ms: u64,
    /// Webhook events delivered (2xx), once per event and endpoint.
    pub webhook_events: u64,
    /// Sum over nodes of each node's peak in the hour: exact with one node, an upper bound with
    /// several (their peaks need not coincide).
    pub peak_connections: u64,
}

/// The hour (Unix seconds) a usage record is counted in: the hour its window starts in.
/// Windows are short (a reporting interval), so a window straddling an hour boundary puts its
/// whole count in the earlier hour.
pub fn usage_hour(record: &UsageRecord) -> i64 {
    record.from_ms.div_euclid(3_600_000) * 3600
}

/// Which page of a list to read: records with an id strictly after `after`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<String>,
    /// 1..=[`MAX_PAGE`]; callers clamp.
    pub limit: u32,
}

/// Largest page any list returns.
pub const MAX_PAGE: u32 = 200;

impl PageRequest {
    pub fn first(limit: u32) -> Self {
        PageRequest { after: None, limit }
    }
}

/// One page of a list, in id (= creation) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The id to pass as [`PageRequest::after`] for the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// Durable control plane state.
///
/// Contract (checked by [`contract`] against every implementation):
/// - Ids are chosen by the caller and are unique per record kind; lists are ordered by id and
///   paginate by keyset (`id > after`), so a page boundary never skips or repeats a record that
///   existed when the listing started.
/// - Tenant names are unique; app names are unique within a tenant. Breaking either returns
///   [`crate::Error::Conflict`] and writes nothing.
/// - Creating a record under a parent that does not exist returns [`crate::Error::NotFound`].
/// - Deleting a tenant deletes its admin keys, apps and their API keys; deleting an app deletes
///   its API keys, Pusher credentials and webhook endpoints. Deletes report whether anything was there.
/// - Values are stored and returned exactly (strings are bound as parameters, never spliced into
///   SQL), timestamps at microsecond precision (see [`now`]).
/// - Every method is one transaction: a failure leaves the store as it was.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Succeeds when the store answers a trivial query (readiness).
    async fn ping(&self) -> Result<()>;

    /// Creates a tenant together with its first admin key, atomically.
    async fn create_tenant(&self, tenant: &Tenant, admin_key: &AdminKeyRecord) -> Result<()>;
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>>;
    async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>>;
    /// Replaces the mutable fields (name, enabled, quotas, updated_at) of an existing tenant.
    /// `false` if it does not exist.
    async fn update_tenant(&self, tenant: &Tenant) -> Result<bool>;
    /// Deletes a tenant and everything it owns. `false` if it did not exist.
    async fn delete_tenant(&self, id: &str) -> Result<bool>;

    async fn create_admin_key(&self, key: &AdminKeyRecord) -> Result<()>;
    async fn admin_key(&self, id: &str) -> Result<Option<AdminKeyRecord>>;
    /// Marks an admin key revoked at `at` (an earlier revocation time is kept). `true` if the key
    /// exists and belongs to `tenant_id`, whether or not it was already revoked.
    async fn revoke_admin_key(&self, tenant_id: &str, key_id: &str, at: DateTime<Utc>) -> Result<bool>;
    /// Records that the key was used at `at` (best effort bookkeeping, never fails on a missing key).
    async fn touch_admin_key(&self, id: &str, at: DateTime<Utc>) -> Result<()>;

    async fn create_app(&self, app: &App) -> Result<()>;
    async fn app(&self, id: &str) -> Result<Option<App>>;
    async fn list_apps(&self, tenant_id: &str, page: &PageRequest) -> Result<Page<App>>;
    /// Every app of every tenant (loading the registry at start).
    async fn all_apps(&self) -> Result<Vec<App>>;
    /// Replaces the mutable fields of an existing app (everything but id, tenant_id, created_at).
    /// `false` if it does not exist.
    async fn update_app(&self, app: &App) -> Result<bool>;
    /// Deletes an app and its API keys. `false` if it did not exist.
    async fn delete_app(&self, id: &str) -> Result<bool>;

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>>;
    /// The app's keys, revoked ones included (they show `revoked_at`).
    async fn list_api_keys(&self, app_id: &str, page: &PageRequest) -> Result<Page<ApiKeyRecord>>;
    /// Marks the key revoked at `at` (an earlier revocation time is kept). `true` if the key
    /// exists and belongs to `app_id`, whether or not it was already revoked.
    async fn revoke_api_key(&self, app_id: &str, key_id: &str, at: DateTime<Utc>) -> Result<bool>;
    /// `(app_id, key_id)` of every revoked key of an existing app.
    async fn revoked_api_keys(&self) -> Result<Vec<(String, String)>>;
    /// Records that the key was used at `at` (best effort, never fails on a missing key).
    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<()>;

    /// Stores a Pusher credential. The app's numeric Pusher id is allocated atomically with its
    /// first credential (`cred.pusher_app_id` is the candidate; a candidate already used by
    /// another app is a [`crate::Error::Conflict`] and writes nothing) and kept afterwards:
    /// returns the id in force. `NotFound` if the app does not exist; a taken key is a
    /// `Conflict`.
    async fn create_pusher_credential(&self, cred: &PusherCredentialRecord) -> Result<u64>;
    /// The app's credentials ordered by key, revoked ones included.
    async fn list_pusher_credentials(&self, app_id: &str, page: &PageRequest) -> Result<Page<PusherCredentialRecord>>;
    /// Marks the credential revoked at `at` (an earlier revocation time is kept) and erases its
    /// sealed secret. `true` if it exists and belongs to `app_id`, revoked before or not.
    async fn revoke_pusher_credential(&self, app_id: &str, key: &str, at: DateTime<Utc>) -> Result<bool>;
    /// Every credential not revoked, of every app (loading the registry).
    async fn live_pusher_credentials(&self) -> Result<Vec<PusherCredentialRecord>>;

    /// Stores a webhook endpoint unless its tenant already has `max_per_tenant` of them (then
    /// [`crate::Error::LimitReached`], nothing written). The count and the insert are one
    /// transaction serialised per tenant, so concurrent creates cannot pass the limit together.
    /// `NotFound` if the app does not exist; a taken id is a `Conflict`.
    async fn create_webhook(&self, webhook: &WebhookRecord, max_per_tenant: u32) -> Result<()>;
    /// The endpoint, if it exists and belongs to `app_id`.
    async fn webhook(&self, app_id: &str, id: &str) -> Result<Option<WebhookRecord>>;
    /// The app's endpoints ordered by id.
    async fn list_webhooks(&self, app_id: &str, page: &PageRequest) -> Result<Page<WebhookRecord>>;
    /// Replaces the mutable fields (url, events, channels, format, updated_at) of an endpoint
    /// of `webhook.app_id`; the secret is kept. `false` if there is no such endpoint.
    async fn update_webhook(&self, webhook: &WebhookRecord) -> Result<bool>;
    /// Every endpoint of every app, ordered by id (loading the registry).
    async fn all_webhooks(&self) -> Result<Vec<WebhookRecord>>;
    /// Deletes the endpoint. `true` if it existed and belonged to `app_id`.
    async fn delete_webhook(&self, app_id: &str, id: &str) -> Result<bool>;

    /// Every stored signing key, newest first. At most one has `retired_at == None`.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Makes `new` the current key in one transaction: the previous current key gets
    /// `retired_at = new.created_at`, `new` is inserted, and keys retired before
    /// `purge_retired_before` (whose tokens have all expired) are deleted.
    async fn rotate_signing_key(&self, new: &SigningKeyRecord, purge_retired_before: DateTime<Utc>) -> Result<()>;

    /// Records that every token of `client_id` in `app_id` issued at or before `issued_before`
    /// (Unix milliseconds) is revoked. A later cutoff replaces an earlier one, never the reverse.
    /// `NotFound` if the app does not exist; deleting the app deletes its revocations.
    async fn revoke_client(&self, app_id: &str, client_id: &str, issued_before: i64) -> Result<()>;
    /// `(app_id, client_id, issued_before)` of every client revocation.
    async fn revoked_clients(&self) -> Result<Vec<(String, String, i64)>>;

    /// Records one batch of usage a node reported, atomically and at most once: when
    /// `(node_id, seq)` was recorded before this returns `false` and changes nothing; otherwise
    /// every record is added into its bucket (`(tenant_id, app_id, usage_hour(record))`:
    /// counters summed, the node's peak in that hour kept as the maximum it reported) and it
    /// returns `true`. Counters saturate at `i64::MAX`.
    async fn record_usage(&self, node_id: &str, seq: u64, records: &[UsageRecord]) -> Result<bool>;
    /// Forgets the ids of batches received before `before` (Unix seconds): retries of those
    /// would count again, so callers keep far more than a node's retry horizon. Returns how
    /// many were forgotten. Buckets are kept.
    async fn prune_usage_batches(&self, before: i64) -> Result<u64>;
    /// Usage buckets with `from_hour <= hour_start < to_hour` (Unix seconds), of one tenant or
    /// (with `None`) of every tenant, ordered by tenant, app, hour.
    async fn usage_buckets(&self, tenant_id: Option<&str>, from_hour: i64, to_hour: i64) -> Result<Vec<UsageBucket>>;

    /// Tells every control plane process sharing this store (replicas) that config changed, so
    /// they re-read it now rather than at their next periodic refresh. `origin` names the
    /// announcing process. Best effort: the periodic refresh stays the backstop. A store only
    /// one process uses (SQLite) does nothing.
    async fn announce_config_change(&self, origin: &str) -> Result<()>;
    /// The origins of announcements made from now on (by any process, this one included), or
    /// `None` when the store has no such channel. An empty origin means "announcements may have
    /// been lost" (the listening connection dropped): re-read everything.
    async fn config_changes(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>>;

    /// Sets a one-shot marker. `true` if this call set it, `false` if it was already set.
    async fn set_marker(&self, name: &str) -> Result<bool>;
    async fn has_marker(&self, name: &str) -> Result<bool>;
}
