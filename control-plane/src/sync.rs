//! Keeps the `aviary_core::Registry` (what the data plane reads) equal to the store.
//!
//! At start every app, trusted verifying key, revoked API key, client revocation, live Pusher
//! credential and webhook endpoint (secrets opened with the credentials key) is loaded; afterwards each
//! mutation in [`crate::service`] pushes its change here right after the store write succeeds.
//! An app's effective config folds in its tenant: quotas are the field-wise minimum of tenant
//! and app quotas, and a disabled tenant disables all its apps.

use std::collections::{HashMap, HashSet};

use aviary_core::webhook::WebhookEndpoint;
use aviary_core::{AppConfig, PusherCredential};

use crate::ControlPlaneState;
use crate::error::Result;
use crate::store::{App, MAX_PAGE, PageRequest, PusherCredentialRecord, Tenant, WebhookRecord};

/// The data plane's view of a stored Pusher credential whose secret is `secret`.
pub fn credential_of(record: PusherCredentialRecord, secret: String) -> PusherCredential {
    PusherCredential {
        key: record.key,
        app_id: record.app_id,
        tenant_id: record.tenant_id,
        pusher_app_id: record.pusher_app_id,
        secret,
        capabilities: record.capabilities,
        client_events: record.client_events,
    }
}

/// The data plane's view of a stored webhook endpoint whose secret is `secret`.
pub fn webhook_of(record: WebhookRecord, secret: String) -> WebhookEndpoint {
    WebhookEndpoint {
        id: record.id,
        app_id: record.app_id,
        tenant_id: record.tenant_id,
        url: record.url,
        events: record.events,
        channels: record.channels,
        format: record.format,
        secret,
    }
}

/// The data plane's view of `app`, given its tenant.
pub fn app_config(app: &App, tenant: &Tenant) -> AppConfig {
    AppConfig {
        app_id: app.id.clone(),
        tenant_id: app.tenant_id.clone(),
        name: app.name.clone(),
        enabled: app.enabled && tenant.enabled,
        allowed_origins: app.allowed_origins.clone(),
        max_token_ttl_s: app.max_token_ttl_s,
        namespaces: app.namespaces.clone(),
        tenant_quotas: tenant.quotas,
        quotas: app.quotas.map_or(tenant.quotas, |q| tenant.quotas.min(&q)),
    }
}

impl ControlPlaneState {
    /// Fills the registry from the store (at start).
    pub async fn load_registry(&self) -> Result<()> {
        let tenants: HashMap<String, Tenant> =
            self.all_tenants().await?.into_iter().map(|t| (t.id.clone(), t)).collect();
        let mut loaded = 0usize;
        for app in self.store().all_apps().await? {
            if let Some(tenant) = tenants.get(&app.tenant_id) {
                self.registry().upsert_app(app_config(&app, tenant));
                loaded += 1;
            }
        }
        for (app_id, key_id) in self.store().revoked_api_keys().await? {
            self.registry().revoke_api_key(&app_id, &key_id);
        }
        for (app_id, client_id, issued_before) in self.store().revoked_clients().await? {
            self.registry().revoke_client(&app_id, &client_id, issued_before);
        }
        let credentials = self.live_pusher_credentials(true).await?;
        let pusher = credentials.len();
        for credential in credentials {
            self.registry().upsert_pusher_credential(credential);
        }
        let webhooks = self.opened_webhooks(true).await?;
        let endpoints = webhooks.len();
        for webhook in webhooks {
            self.registry().upsert_webhook(webhook);
        }
        tracing::info!(
            apps = loaded,
            tenants = tenants.len(),
            pusher,
            webhooks = endpoints,
            "registry loaded from store"
        );
        Ok(())
    }

    /// Every live Pusher credential with its secret opened. Without a credentials key none can
    /// be opened: they are skipped, and Pusher clients of those apps are refused. What cannot be
    /// loaded is logged at start only (`at_start`), not at every periodic resync.
    async fn live_pusher_credentials(&self, at_start: bool) -> Result<Vec<PusherCredential>> {
        let records = self.store().live_pusher_credentials().await?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let Some(sealer) = self.config().credentials_key.clone() else {
            if !at_start {
                return Ok(Vec::new());
            }
            tracing::warn!(
                credentials = records.len(),
                "Pusher credentials are stored but no credentials key is configured; they stay unloaded"
            );
            return Ok(Vec::new());
        };
        let mut opened = Vec::with_capacity(records.len());
        for record in records {
            match sealer.open_str(&record.sealed_secret, &record.key) {
                Some(secret) => opened.push(credential_of(record, secret)),
                None if at_start => {
                    tracing::error!(key = %record.key, "a Pusher secret does not open with the configured credentials key")
                }
                None => {}
            }
        }
        Ok(opened)
    }

    /// Every webhook endpoint with its secret opened (skipped, like Pusher credentials, when
    /// there is no credentials key or a secret does not open).
    async fn opened_webhooks(&self, at_start: bool) -> Result<Vec<WebhookEndpoint>> {
        let records = self.store().all_webhooks().await?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let Some(sealer) = self.config().credentials_key.clone() else {
            if at_start {
                tracing::warn!(
                    webhooks = records.len(),
                    "webhook endpoints are stored but no credentials key is configured; they stay unloaded"
                );
            }
            return Ok(Vec::new());
        };
        let mut opened = Vec::with_capacity(records.len());
        for record in records {
            match sealer.open_str(&record.sealed_secret, &record.id) {
                Some(secret) => opened.push(webhook_of(record, secret)),
                None if at_start => {
                    tracing::error!(webhook_id = %record.id, "a webhook secret does not open with the configured credentials key")
                }
                None => {}
            }
        }
        Ok(opened)
    }

    /// Re-reads every app and revocation and republishes what differs from the registry.
    ///
    /// Before changing anything it re-reads that one app and its tenant, so a listing taken
    /// just before a concurrent mutation cannot undo that mutation's push; a push that still
    /// loses a race is corrected by the next resync. Returns how many apps changed.
    pub async fn resync_registry(&self) -> Result<usize> {
        let mut in_store = HashSet::new();
        let mut changed = 0;
        let tenants: HashMap<String, Tenant> =
            self.all_tenants().await?.into_iter().map(|t| (t.id.clone(), t)).collect();
        for app in self.store().all_apps().await? {
            let Some(tenant) = tenants.get(&app.tenant_id) else { continue };
            in_store.insert(app.id.clone());
            if self.registry().app(&app.id).as_deref() != Some(&app_config(&app, tenant)) {
                changed += usize::from(self.refresh_app(&app.id).await?);
            }
        }
        for published in self.registry().apps() {
            if !in_store.contains(&published.app_id) {
                changed += usize::from(self.refresh_app(&published.app_id).await?);
            }
        }
        for (app_id, key_id) in self.store().revoked_api_keys().await? {
            if !self.registry().api_key_revoked(&key_id) {
                self.keys().evict_api_key(&key_id);
                self.registry().revoke_api_key(&app_id, &key_id);
            }
        }
        for (app_id, client_id, issued_before) in self.store().revoked_clients().await? {
            if !self.registry().client_revoked(&app_id, &client_id, issued_before) {
                self.registry().revoke_client(&app_id, &client_id, issued_before);
            }
        }
        let live = self.live_pusher_credentials(false).await?;
        let keys: HashSet<String> = live.iter().map(|c| c.key.clone()).collect();
        for credential in live {
            self.registry().upsert_pusher_credential(credential);
        }
        for published in self.registry().pusher_credentials() {
            if !keys.contains(&published.key) {
                self.registry().remove_pusher_credential(&published.key);
            }
        }
        let webhooks = self.opened_webhooks(false).await?;
        let ids: HashSet<String> = webhooks.iter().map(|w| w.id.clone()).collect();
        for webhook in webhooks {
            self.registry().upsert_webhook(webhook);
        }
        for published in self.registry().webhooks() {
            if !ids.contains(&published.id) {
                self.registry().remove_webhook(&published.id);
            }
        }
        if changed > 0 {
            tracing::info!(changed, "registry resynced from store");
        }
        Ok(changed)
    }

    /// Publishes the store's current view of one app (or forgets it). `true` if the registry changed.
    async fn refresh_app(&self, app_id: &str) -> Result<bool> {
        let current = match self.store().app(app_id).await? {
            Some(app) => self.store().tenant(&app.tenant_id).await?.map(|tenant| app_config(&app, &tenant)),
            None => None,
        };
        let published = self.registry().app(app_id);
        match current {
            Some(config) if published.as_deref() != Some(&config) => {
                self.registry().upsert_app(config);
                Ok(true)
            }
            None if published.is_some() => {
                self.keys().evict_app(app_id);
                self.registry().remove_app(app_id);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn all_tenants(&self) -> Result<Vec<Tenant>> {
        let mut all = Vec::new();
        let mut page = PageRequest::first(MAX_PAGE);
        loop {
            let got = self.store().list_tenants(&page).await?;
            all.extend(got.items);
            match got.next_after {
                Some(after) => page.after = Some(after),
                None => return Ok(all),
            }
        }
    }

    /// Every app of a tenant, across pages.
    pub(crate) async fn tenant_apps(&self, tenant_id: &str) -> Result<Vec<App>> {
        let mut all = Vec::new();
        let mut page = PageRequest::first(MAX_PAGE);
        loop {
            let got = self.store().list_apps(tenant_id, &page).await?;
            all.extend(got.items);
            match got.next_after {
                Some(after) => page.after = Some(after),
                None => return Ok(all),
            }
        }
    }

    /// Publishes one app's current config.
    pub(crate) fn push_app(&self, app: &App, tenant: &Tenant) {
        self.registry().upsert_app(app_config(app, tenant));
    }

    /// Republishes every app of a tenant (its quotas or enabled flag changed).
    pub(crate) async fn push_tenant(&self, tenant: &Tenant) -> Result<()> {
        for app in self.tenant_apps(&tenant.id).await? {
            self.push_app(&app, tenant);
        }
        Ok(())
    }
}
