//! Every control plane operation, once: validate the input, check the caller may act on the
//! resource, write the store, push the change to the registry.
//!
//! REST handlers and gRPC methods are thin adapters over these functions, so both surfaces
//! enforce identical rules. Validation happens before any write: a refused request changes
//! nothing. Access checks answer 404 for other tenants' resources so ids cannot be probed.

use aviary_core::{Capabilities, Namespace, Quotas, VerifiedApiKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ControlPlaneState;
use crate::auth::{ADMIN_KEY_PREFIX, API_KEY_PREFIX, TenantAdmin, mint_key};
use crate::error::{Error, Result};
use crate::store::{AdminKeyRecord, ApiKeyRecord, App, MAX_PAGE, Page, PageRequest, Tenant, now};
use crate::tokens::{IssuedToken, TokenRequest};

pub mod pusher;
pub mod webhooks;

pub use pusher::{CreatePusherCredential, PusherCredentialCreated, PusherCredentialView};
pub use webhooks::{CreateWebhook, UpdateWebhook, WebhookCreated, WebhookView};

/// Answer of `POST /v1/apps/{app_id}/clients/{client_id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ClientRevoked {
    pub app_id: String,
    pub client_id: String,
    /// Tokens of this client issued at or before this Unix time (seconds, rounded down) are
    /// refused; `issued_before_ms` is the exact cutoff.
    pub issued_before: i64,
    /// Tokens of this client issued at or before this Unix time in milliseconds are refused;
    /// tokens minted after it, even within the same second, are valid.
    pub issued_before_ms: i64,
}

/// Longest tenant/app/key name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most allowed origins per app.
pub const MAX_ORIGINS: usize = 32;
/// Most namespaces per app.
pub const MAX_NAMESPACES: usize = 32;
/// Largest history an app may keep per channel.
pub const MAX_HISTORY_SIZE: u32 = 10_000;
/// Longest history retention, in seconds (30 days).
pub const MAX_HISTORY_TTL_S: u32 = 30 * 24 * 3600;
/// Default page size of lists.
pub const DEFAULT_PAGE: u32 = 50;
/// Default `max_token_ttl_s` of a new app (1 hour).
pub const DEFAULT_MAX_TOKEN_TTL_S: u32 = 3600;

/// Lets a PATCH body tell "absent" (keep) from `null` (clear) for optional fields.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn yes() -> bool {
    true
}

/// `POST /v1/tenants` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1..=64 characters: letters, digits, space, `_`, `-`, `.`.
    pub name: String,
    /// Defaults to the built-in quotas.
    #[serde(default)]
    pub quotas: Option<Quotas>,
}

/// `PATCH /v1/tenants/{tenant_id}` body; absent fields are kept.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub quotas: Option<Quotas>,
}

/// A secret key shown once at creation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedSecret {
    pub key_id: String,
    /// The full key. Store it now: only its hash is kept.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/tenants` answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantCreated {
    pub tenant: Tenant,
    /// The tenant's first admin key (`avt_...`).
    pub admin_key: CreatedSecret,
}

/// `POST /v1/tenants/{tenant_id}/apps` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    /// 1..=64 characters: letters, digits, space, `_`, `-`, `.`; unique within the tenant.
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Origins like `https://example.com`, or `*`. Empty allows any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Defaults to 3600; at most the operator's ceiling (86400 by default).
    #[serde(default)]
    pub max_token_ttl_s: Option<u32>,
    /// Defaults to the default namespace only.
    #[serde(default)]
    pub namespaces: Option<Vec<Namespace>>,
    /// Lower limits than the tenant's; never higher.
    #[serde(default)]
    pub quotas: Option<Quotas>,
}

/// `PATCH /v1/apps/{app_id}` body; absent fields are kept, `"quotas": null` clears the override.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_token_ttl_s: Option<u32>,
    pub namespaces: Option<Vec<Namespace>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Quotas>)]
    pub quotas: Option<Option<Quotas>>,
}

/// `POST /v1/apps/{app_id}/keys` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A label, 1..=64 characters: letters, digits, space, `_`, `-`, `.`.
    pub name: String,
    /// Channel glob -> operations; tokens minted with the key can never exceed it.
    pub capabilities: Capabilities,
}

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub app_id: String,
    pub name: String,
    pub capabilities: Capabilities,
    pub created_at: DateTime<Utc>,
    /// Accurate to the verified-key cache TTL (60 s by default).
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRecord> for ApiKeyView {
    fn from(k: ApiKeyRecord) -> Self {
        ApiKeyView {
            id: k.id,
            app_id: k.app_id,
            name: k.name,
            capabilities: k.capabilities,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// `POST /v1/apps/{app_id}/keys` answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyCreated {
    pub key: ApiKeyView,
    /// The full key (`avk_...`). Store it now: only its hash is kept.
    pub secret: String,
}

/// One page of a list: `{"items": [...], "next_cursor": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Listing<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to read the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `?limit=&cursor=` of list endpoints.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1..=200 (default 50).
    pub limit: Option<u32>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

const CURSOR_VERSION: &str = "c1:";

impl ListParams {
    /// Decodes the opaque cursor and clamps the limit.
    pub fn page(&self) -> Result<PageRequest> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::invalid(format!("limit must be 1..={MAX_PAGE}")));
        }
        let after = match self.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(cursor) => {
                let bad = || Error::invalid("cursor is not one this API returned");
                let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
                let text = String::from_utf8(raw).map_err(|_| bad())?;
                let id = text.strip_prefix(CURSOR_VERSION).ok_or_else(bad)?;
                if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(bad());
                }
                Some(id.to_owned())
            }
        };
        Ok(PageRequest { after, limit })
    }
}

impl<T> Listing<T> {
    /// Wraps a store page, encoding its continuation as an opaque cursor.
    pub fn from_page<S>(page: Page<S>, map: impl FnMut(S) -> T) -> Self {
        Listing {
            items: page.items.into_iter().map(map).collect(),
            next_cursor: page.next_after.map(|id| URL_SAFE_NO_PAD.encode(format!("{CURSOR_VERSION}{id}"))),
        }
    }
}

/// Checks a tenant, app or key name: 1..=64 characters of letters, digits, space, `_`, `-`, `.`,
/// not starting or ending with a space.
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(Error::invalid(format!("{field} must be 1..={MAX_NAME_CHARS} characters")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.'))) {
        return Err(Error::invalid(format!("{field} contains {c:?}; allowed: letters, digits, space, '_', '-', '.'")));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err(Error::invalid(format!("{field} must not start or end with a space")));
    }
    Ok(())
}

fn validate_quotas(field: &str, q: &Quotas) -> Result<()> {
    let fields = [
        ("max_connections", q.max_connections),
        ("max_messages_per_s", q.max_messages_per_s),
        ("max_message_bytes", q.max_message_bytes),
        ("max_subscriptions_per_connection", q.max_subscriptions_per_connection),
        ("max_presence_members", q.max_presence_members),
    ];
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(Error::invalid(format!("{field}.{name} must be at least 1"))),
        None => Ok(()),
    }
}

/// An app's own quotas may only tighten its tenant's.
fn validate_app_quotas(app: &Quotas, tenant: &Quotas) -> Result<()> {
    validate_quotas("quotas", app)?;
    if app.min(tenant) != *app {
        return Err(Error::invalid("app quotas must not exceed the tenant's quotas"));
    }
    Ok(())
}

fn validate_origins(origins: &[String]) -> Result<()> {
    if origins.len() > MAX_ORIGINS {
        return Err(Error::invalid(format!("at most {MAX_ORIGINS} allowed_origins")));
    }
    for origin in origins {
        if origin == "*" {
            continue;
        }
        let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
        let ok = rest.is_some_and(|host| {
            !host.is_empty()
                && host.len() <= 253
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        });
        if !ok {
            return Err(Error::invalid(format!(
                "allowed origin {origin:?} must be \"*\" or scheme://host[:port] (http or https, no path)"
            )));
        }
    }
    Ok(())
}

fn validate_namespaces(namespaces: &[Namespace]) -> Result<()> {
    if namespaces.len() > MAX_NAMESPACES {
        return Err(Error::invalid(format!("at most {MAX_NAMESPACES} namespaces")));
    }
    for (i, ns) in namespaces.iter().enumerate() {
        let name_ok = ns.name.len() <= 64
            && ns.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(Error::invalid(format!(
                "namespace name {:?} must be at most 64 of letters, digits, '_', '-', '.' (\"\" is the default)",
                ns.name
            )));
        }
        if namespaces[..i].iter().any(|other| other.name == ns.name) {
            return Err(Error::invalid(format!("namespace {:?} is listed twice", ns.name)));
        }
        if ns.history_size > MAX_HISTORY_SIZE {
            return Err(Error::invalid(format!("history_size must be at most {MAX_HISTORY_SIZE}")));
        }
        if ns.history_ttl_s > MAX_HISTORY_TTL_S {
            return Err(Error::invalid(format!("history_ttl_s must be at most {MAX_HISTORY_TTL_S}")));
        }
    }
    Ok(())
}

fn validate_capabilities(cap: &Capabilities) -> Result<()> {
    if cap.0.is_empty() {
        return Err(Error::invalid("capabilities must grant at least one glob"));
    }
    cap.validate().map_err(|e| Error::invalid(e.to_string()))
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

impl ControlPlaneState {
    fn validate_ttl(&self, ttl: u32) -> Result<()> {
        let ceiling = self.config().max_token_ttl_s;
        if !(1..=ceiling).contains(&ttl) {
            return Err(Error::invalid(format!("max_token_ttl_s must be 1..={ceiling}")));
        }
        Ok(())
    }

    async fn existing_tenant(&self, id: &str) -> Result<Tenant> {
        self.store().tenant(id).await?.ok_or(Error::NotFound("tenant"))
    }

    /// The app, if `admin` may see it.
    async fn visible_app(&self, admin: &TenantAdmin, app_id: &str) -> Result<App> {
        let app = self.store().app(app_id).await?.ok_or(Error::NotFound("app"))?;
        admin.check(&app.tenant_id, "app")?;
        Ok(app)
    }

    // ----- operator -----

    pub async fn create_tenant(&self, req: CreateTenant) -> Result<TenantCreated> {
        validate_name("name", &req.name)?;
        let quotas = req.quotas.unwrap_or_default();
        validate_quotas("quotas", &quotas)?;
        let at = now();
        let tenant =
            Tenant { id: new_id("ten_"), name: req.name, enabled: true, quotas, created_at: at, updated_at: at };
        let key = mint_key(ADMIN_KEY_PREFIX).await?;
        let record = AdminKeyRecord {
            id: key.id.clone(),
            tenant_id: tenant.id.clone(),
            secret_hash: key.hash,
            created_at: at,
            last_used_at: None,
            revoked_at: None,
        };
        self.store().create_tenant(&tenant, &record).await?;
        tracing::info!(tenant_id = %tenant.id, "tenant created");
        Ok(TenantCreated { tenant, admin_key: CreatedSecret { key_id: key.id, secret: key.secret, created_at: at } })
    }

    pub async fn list_tenants(&self, params: &ListParams) -> Result<Listing<Tenant>> {
        let page = self.store().list_tenants(&params.page()?).await?;
        Ok(Listing::from_page(page, |t| t))
    }

    pub async fn get_tenant(&self, admin: &TenantAdmin, id: &str) -> Result<Tenant> {
        admin.check(id, "tenant")?;
        self.existing_tenant(id).await
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %id))]
    pub async fn update_tenant(&self, id: &str, req: UpdateTenant) -> Result<Tenant> {
        let mut tenant = self.existing_tenant(id).await?;
        if let Some(name) = req.name {
            validate_name("name", &name)?;
            tenant.name = name;
        }
        if let Some(quotas) = req.quotas {
            validate_quotas("quotas", &quotas)?;
            tenant.quotas = quotas;
        }
        if let Some(enabled) = req.enabled {
            tenant.enabled = enabled;
        }
        tenant.updated_at = now();
        if !self.store().update_tenant(&tenant).await? {
            return Err(Error::NotFound("tenant"));
        }
        self.push_tenant(&tenant).await?;
        self.announce_change().await;
        tracing::info!(tenant_id = %tenant.id, enabled = tenant.enabled, "tenant updated");
        Ok(tenant)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %id))]
    pub async fn delete_tenant(&self, id: &str) -> Result<()> {
        let apps = self.tenant_apps(id).await?;
        if !self.store().delete_tenant(id).await? {
            return Err(Error::NotFound("tenant"));
        }
        self.keys().evict_tenant(id);
        for app in apps {
            self.registry().remove_app(&app.id);
        }
        self.announce_change().await;
        tracing::info!(tenant_id = %id, "tenant deleted");
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
    pub async fn create_admin_key(&self, tenant_id: &str) -> Result<CreatedSecret> {
        self.existing_tenant(tenant_id).await?;
        let key = mint_key(ADMIN_KEY_PREFIX).await?;
        let at = now();
        let record = AdminKeyRecord {
            id: key.id.clone(),
            tenant_id: tenant_id.to_owned(),
            secret_hash: key.hash,
            created_at: at,
            last_used_at: None,
            revoked_at: None,
        };
        self.store().create_admin_key(&record).await?;
        tracing::info!(tenant_id, key_id = %key.id, "admin key created");
        Ok(CreatedSecret { key_id: key.id, secret: key.secret, created_at: at })
    }

    /// Revokes a tenant admin key at once (store first, then this process's cache).
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, key_id = %key_id))]
    pub async fn revoke_admin_key(&self, tenant_id: &str, key_id: &str) -> Result<()> {
        if !self.store().revoke_admin_key(tenant_id, key_id, now()).await? {
            return Err(Error::NotFound("admin key"));
        }
        self.keys().evict_admin_key(key_id);
        tracing::info!("admin key revoked");
        Ok(())
    }

    /// Rotates the token signing key; returns the new `kid`.
    pub async fn rotate_signing_key(&self) -> Result<String> {
        let kid = self.keyring().rotate().await?;
        self.announce_change().await;
        tracing::info!(kid = %kid, "signing key rotated");
        Ok(kid)
    }

    // ----- tenant admin -----

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
    pub async fn create_app(&self, admin: &TenantAdmin, tenant_id: &str, req: CreateApp) -> Result<App> {
        admin.check(tenant_id, "tenant")?;
        let tenant = self.existing_tenant(tenant_id).await?;
        validate_name("name", &req.name)?;
        validate_origins(&req.allowed_origins)?;
        let max_token_ttl_s = req.max_token_ttl_s.unwrap_or(DEFAULT_MAX_TOKEN_TTL_S.min(self.config().max_token_ttl_s));
        self.validate_ttl(max_token_ttl_s)?;
        let namespaces = req.namespaces.unwrap_or_else(|| vec![Namespace::default_namespace()]);
        validate_namespaces(&namespaces)?;
        if let Some(q) = &req.quotas {
            validate_app_quotas(q, &tenant.quotas)?;
        }
        let at = now();
        let app = App {
            id: new_id("app_"),
            tenant_id: tenant.id.clone(),
            name: req.name,
            enabled: req.enabled,
            allowed_origins: req.allowed_origins,
            max_token_ttl_s,
            namespaces,
            quotas: req.quotas,
            created_at: at,
            updated_at: at,
        };
        self.store().create_app(&app).await?;
        self.push_app(&app, &tenant);
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, "app created");
        Ok(app)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
    pub async fn list_apps(&self, admin: &TenantAdmin, tenant_id: &str, params: &ListParams) -> Result<Listing<App>> {
        admin.check(tenant_id, "tenant")?;
        let page = params.page()?;
        self.existing_tenant(tenant_id).await?;
        Ok(Listing::from_page(self.store().list_apps(tenant_id, &page).await?, |a| a))
    }

    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn get_app(&self, admin: &TenantAdmin, app_id: &str) -> Result<App> {
        self.visible_app(admin, app_id).await
    }

    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn update_app(&self, admin: &TenantAdmin, app_id: &str, req: UpdateApp) -> Result<App> {
        let mut app = self.visible_app(admin, app_id).await?;
        let tenant = self.existing_tenant(&app.tenant_id).await?;
        if let Some(name) = req.name {
            validate_name("name", &name)?;
            app.name = name;
        }
        if let Some(enabled) = req.enabled {
            app.enabled = enabled;
        }
        if let Some(origins) = req.allowed_origins {
            validate_origins(&origins)?;
            app.allowed_origins = origins;
        }
        if let Some(ttl) = req.max_token_ttl_s {
            self.validate_ttl(ttl)?;
            app.max_token_ttl_s = ttl;
        }
        if let Some(namespaces) = req.namespaces {
            validate_namespaces(&namespaces)?;
            app.namespaces = namespaces;
        }
        if let Some(quotas) = req.quotas {
            if let Some(q) = &quotas {
                validate_app_quotas(q, &tenant.quotas)?;
            }
            app.quotas = quotas;
        }
        app.updated_at = now();
        if !self.store().update_app(&app).await? {
            return Err(Error::NotFound("app"));
        }
        self.push_app(&app, &tenant);
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, "app updated");
        Ok(app)
    }

    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn delete_app(&self, admin: &TenantAdmin, app_id: &str) -> Result<()> {
        let app = self.visible_app(admin, app_id).await?;
        if !self.store().delete_app(&app.id).await? {
            return Err(Error::NotFound("app"));
        }
        self.keys().evict_app(&app.id);
        self.registry().remove_app(&app.id);
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, "app deleted");
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn create_api_key(&self, admin: &TenantAdmin, app_id: &str, req: CreateApiKey) -> Result<ApiKeyCreated> {
        let app = self.visible_app(admin, app_id).await?;
        validate_name("name", &req.name)?;
        validate_capabilities(&req.capabilities)?;
        let key = mint_key(API_KEY_PREFIX).await?;
        let record = ApiKeyRecord {
            id: key.id.clone(),
            app_id: app.id.clone(),
            tenant_id: app.tenant_id.clone(),
            name: req.name,
            capabilities: req.capabilities,
            secret_hash: key.hash,
            created_at: now(),
            last_used_at: None,
            revoked_at: None,
        };
        self.store().create_api_key(&record).await?;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, key_id = %record.id, "API key created");
        Ok(ApiKeyCreated { key: record.into(), secret: key.secret })
    }

    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn list_api_keys(
        &self,
        admin: &TenantAdmin,
        app_id: &str,
        params: &ListParams,
    ) -> Result<Listing<ApiKeyView>> {
        let page = params.page()?;
        let app = self.visible_app(admin, app_id).await?;
        Ok(Listing::from_page(self.store().list_api_keys(&app.id, &page).await?, ApiKeyView::from))
    }

    /// Revokes a key: the store first (durable), then this process's cache and the registry,
    /// so the key stops minting and its live connections are cut before this returns.
    #[tracing::instrument(skip_all, fields(app_id = %app_id, key_id = %key_id))]
    pub async fn revoke_api_key(&self, admin: &TenantAdmin, app_id: &str, key_id: &str) -> Result<()> {
        let app = self.visible_app(admin, app_id).await?;
        if !self.store().revoke_api_key(&app.id, key_id, now()).await? {
            return Err(Error::NotFound("API key"));
        }
        self.keys().evict_api_key(key_id);
        self.registry().revoke_api_key(&app.id, key_id);
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, key_id, "API key revoked");
        Ok(())
    }

    /// Revokes every token of `client_id` in the app issued up to now: stored (so it survives
    /// restarts and reaches nodes in snapshots), then pushed to the registry, whose event makes
    /// data planes close that client's live connections.
    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn revoke_client(&self, admin: &TenantAdmin, app_id: &str, client_id: &str) -> Result<ClientRevoked> {
        crate::tokens::validate_client_id(client_id)?;
        let app = self.visible_app(admin, app_id).await?;
        let issued_before_ms = Utc::now().timestamp_millis();
        self.store().revoke_client(&app.id, client_id, issued_before_ms).await?;
        self.registry().revoke_client(&app.id, client_id, issued_before_ms);
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, "client tokens revoked");
        Ok(ClientRevoked {
            app_id: app.id,
            client_id: client_id.to_owned(),
            issued_before: issued_before_ms.div_euclid(1000),
            issued_before_ms,
        })
    }

    // ----- app API key -----

    /// Mints a connection token (rules in [`crate::tokens`]).
    pub fn issue_token(&self, key: &VerifiedApiKey, app_id: &str, req: TokenRequest) -> Result<IssuedToken> {
        let _span =
            tracing::info_span!("issue_token", tenant_id = %key.tenant_id, app_id, key_id = %key.key_id).entered();
        crate::tokens::mint(self.registry(), self.keyring(), key, app_id, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_allow_words_and_refuse_punctuation() {
        assert!(validate_name("name", "Acme Corp. eu-west_1").is_ok());
        assert!(validate_name("name", "Café").is_ok());
        assert!(validate_name("name", "").is_err());
        assert!(validate_name("name", &"x".repeat(65)).is_err());
        assert!(validate_name("name", "x'; DROP TABLE tenants;--").is_err());
        assert!(validate_name("name", " padded").is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let listing: Listing<u8> = Listing::from_page(Page { items: vec![], next_after: Some("app_01".into()) }, |x| x);
        let params = ListParams { limit: Some(10), cursor: listing.next_cursor };
        assert_eq!(params.page().unwrap().after.as_deref(), Some("app_01"));
        assert!(ListParams { limit: None, cursor: Some("bm9wZQ".into()) }.page().is_err());
        assert!(ListParams { limit: Some(0), cursor: None }.page().is_err());
    }

    #[test]
    fn origins_must_be_bare_scheme_and_host() {
        assert!(validate_origins(&["https://example.com".into(), "http://localhost:3000".into(), "*".into()]).is_ok());
        assert!(validate_origins(&["example.com".into()]).is_err());
        assert!(validate_origins(&["https://example.com/path".into()]).is_err());
    }
}
