//! Keeps the `aviary_core::Registry` (what the data plane reads) equal to the store.
//!
//! At start every app, trusted verifying key and revoked API key is loaded; afterwards each
//! mutation in [`crate::service`] pushes its change here right after the store write succeeds.
//! An app's effective config folds in its tenant: quotas are the field-wise minimum of tenant
//! and app quotas, and a disabled tenant disables all its apps.

use std::collections::HashMap;

use aviary_core::AppConfig;

use crate::ControlPlaneState;
use crate::error::Result;
use crate::store::{App, MAX_PAGE, PageRequest, Tenant};

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
        tracing::info!(apps = loaded, tenants = tenants.len(), "registry loaded from store");
        Ok(())
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
