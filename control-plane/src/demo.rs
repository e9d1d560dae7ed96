//! The `demo` tenant, app and API key `aviary dev` creates on its first start.
//!
//! A marker row records that the bootstrap happened, so restarting (or deleting the demo
//! tenant on purpose) never recreates it and its secrets are printed exactly once.

use aviary_core::{Capabilities, Namespace};

use crate::ControlPlaneState;
use crate::auth::TenantAdmin;
use crate::error::{Error, Result};
use crate::service::{CreateApiKey, CreateApp, CreateTenant};

const DEMO_MARKER: &str = "demo-bootstrapped";

/// Secrets of the demo resources, returned once.
#[derive(Clone, PartialEq, Eq)]
pub struct DemoCredentials {
    pub tenant_id: String,
    /// Tenant admin key (`avt_...`).
    pub admin_key: String,
    pub app_id: String,
    pub api_key_id: String,
    /// App API key (`avk_...`) with every capability on every channel.
    pub api_key: String,
}

impl std::fmt::Debug for DemoCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoCredentials")
            .field("tenant_id", &self.tenant_id)
            .field("app_id", &self.app_id)
            .field("api_key_id", &self.api_key_id)
            .finish_non_exhaustive()
    }
}

fn demo_namespaces() -> Vec<Namespace> {
    let chat = Namespace { name: "chat".into(), history_size: 100, ..Namespace::default_namespace() };
    // Cursor positions are only interesting while fresh: keep the last one for a minute.
    let cursors =
        Namespace { name: "cursors".into(), history_size: 1, history_ttl_s: 60, ..Namespace::default_namespace() };
    vec![Namespace::default_namespace(), chat, cursors]
}

impl ControlPlaneState {
    /// Creates the demo tenant, app and API key on first start and returns their secrets;
    /// `None` when an earlier start already did (or a `demo` tenant exists).
    pub async fn bootstrap_demo(&self) -> Result<Option<DemoCredentials>> {
        if self.store().has_marker(DEMO_MARKER).await? {
            return Ok(None);
        }
        let created = match self.create_tenant(CreateTenant { name: "demo".into(), quotas: None }).await {
            Ok(created) => created,
            Err(Error::Conflict(_)) => {
                self.store().set_marker(DEMO_MARKER).await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let admin = TenantAdmin::Operator;
        let app = self
            .create_app(
                &admin,
                &created.tenant.id,
                CreateApp {
                    name: "demo".into(),
                    enabled: true,
                    allowed_origins: vec![],
                    max_token_ttl_s: None,
                    namespaces: Some(demo_namespaces()),
                    quotas: None,
                },
            )
            .await?;
        let key = self
            .create_api_key(&admin, &app.id, CreateApiKey { name: "demo".into(), capabilities: Capabilities::all() })
            .await?;
        self.store().set_marker(DEMO_MARKER).await?;
        tracing::info!(tenant_id = %created.tenant.id, app_id = %app.id, "demo tenant bootstrapped");
        Ok(Some(DemoCredentials {
            tenant_id: created.tenant.id,
            admin_key: created.admin_key.secret,
            app_id: app.id,
            api_key_id: key.key.id,
            api_key: key.secret,
        }))
    }
}
