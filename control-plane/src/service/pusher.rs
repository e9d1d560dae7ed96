//! Pusher credentials: create (the secret shown once), list (never a secret), revoke at once.
//!
//! Same shape as API keys ([`super`]): validate, check the caller may see the app, write the
//! store, push the change into the registry (which streams it to nodes). What differs is the
//! secret: Pusher signatures are HMACs, so nodes need the secret itself. It is sealed with the
//! credentials key before it reaches the store (see [`aviary_core::sealing`]), held in clear only in
//! registries, and never logged.

use aviary_core::{Capabilities, PusherCredential};
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ListParams, Listing, validate_capabilities};
use crate::ControlPlaneState;
use crate::auth::TenantAdmin;
use crate::error::{Error, Result};
use crate::store::{PusherCredentialRecord, now};

/// Random bytes of a secret (hex-encoded: 40 characters).
const SECRET_BYTES: usize = 20;
/// Numeric Pusher app ids are drawn from this range: 7 to 10 digits, like Pusher's own.
const PUSHER_APP_IDS: std::ops::RangeInclusive<u64> = 1_000_000..=9_999_999_999;
/// Attempts when a random key or app id happens to be taken already.
const ATTEMPTS: usize = 3;

/// `POST /v1/apps/{app_id}/pusher-credentials` body (every field optional).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePusherCredential {
    /// Channel glob -> operations, on Aviary channel names (a Pusher `;` is Aviary's `:`).
    /// Defaults to every operation on every channel.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// Whether clients may send `client-*` events on private and presence channels (Pusher's
    /// per-app switch). Default false, as on Pusher.
    #[serde(default)]
    pub client_events: bool,
}

/// A Pusher credential as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PusherCredentialView {
    /// The numeric app id Pusher server SDKs take (`appId`, `app_id`), as a string of digits.
    /// One per Aviary app, the same for all its credentials.
    pub app_id: String,
    /// The public key: pusher-js's first argument, and the server SDKs' `key`.
    pub key: String,
    /// The Aviary app whose channels the credential reaches.
    pub aviary_app_id: String,
    pub capabilities: Capabilities,
    pub client_events: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<PusherCredentialRecord> for PusherCredentialView {
    fn from(c: PusherCredentialRecord) -> Self {
        PusherCredentialView {
            app_id: c.pusher_app_id.to_string(),
            key: c.key,
            aviary_app_id: c.app_id,
            capabilities: c.capabilities,
            client_events: c.client_events,
            created_at: c.created_at,
            revoked_at: c.revoked_at,
        }
    }
}

/// `POST /v1/apps/{app_id}/pusher-credentials` answer.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PusherCredentialCreated {
    #[serde(flatten)]
    pub credential: PusherCredentialView,
    /// The signing secret. Store it now: it is never shown again.
    pub secret: String,
}

impl std::fmt::Debug for PusherCredentialCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherCredentialCreated").field("credential", &self.credential).finish_non_exhaustive()
    }
}

/// A public key: 12 hex digits of the creation time in milliseconds (so keys list in creation
/// order) and 8 random ones. Two keys made in the same millisecond by this process get
/// consecutive milliseconds instead of the same one, so that creation order holds for them too
/// (the random part alone would order them by chance).
fn new_key() -> String {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0) & 0xffff_ffff_ffff;
    let previous =
        LAST_MS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1))).unwrap_or(now);
    let ms = now.max(previous + 1) & 0xffff_ffff_ffff;
    format!("{ms:012x}{:08x}", OsRng.r#gen::<u32>())
}

fn new_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = OsRng.r#gen();
    hex::encode(bytes)
}

impl ControlPlaneState {
    /// Creates a Pusher key/secret pair for the app; the app gets its numeric Pusher id with its
    /// first credential.
    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn create_pusher_credential(
        &self,
        admin: &TenantAdmin,
        app_id: &str,
        req: CreatePusherCredential,
    ) -> Result<PusherCredentialCreated> {
        let app = self.visible_app(admin, app_id).await?;
        let capabilities = req.capabilities.unwrap_or_else(Capabilities::all);
        validate_capabilities(&capabilities)?;
        let sealer = self.config().credentials_key.clone().ok_or(Error::CredentialsKeyMissing)?;
        let secret = new_secret();
        let mut attempt = 0;
        let (record, pusher_app_id) = loop {
            attempt += 1;
            let key = new_key();
            let record = PusherCredentialRecord {
                sealed_secret: sealer.seal_str(&secret, &key),
                key,
                app_id: app.id.clone(),
                tenant_id: app.tenant_id.clone(),
                pusher_app_id: OsRng.gen_range(PUSHER_APP_IDS),
                capabilities: capabilities.clone(),
                client_events: req.client_events,
                created_at: now(),
                revoked_at: None,
            };
            match self.store().create_pusher_credential(&record).await {
                Ok(id) => break (record, id),
                // A random key or app id collided: draw again.
                Err(Error::Conflict(_)) if attempt < ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        };
        self.registry().upsert_pusher_credential(PusherCredential {
            key: record.key.clone(),
            app_id: record.app_id.clone(),
            tenant_id: record.tenant_id.clone(),
            pusher_app_id,
            secret: secret.clone(),
            capabilities: record.capabilities.clone(),
            client_events: record.client_events,
        });
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, key = %record.key, pusher_app_id, "Pusher credential created");
        let credential = PusherCredentialView::from(PusherCredentialRecord { pusher_app_id, ..record });
        Ok(PusherCredentialCreated { credential, secret })
    }

    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn list_pusher_credentials(
        &self,
        admin: &TenantAdmin,
        app_id: &str,
        params: &ListParams,
    ) -> Result<Listing<PusherCredentialView>> {
        let page = params.page()?;
        let app = self.visible_app(admin, app_id).await?;
        let listed = self.store().list_pusher_credentials(&app.id, &page).await?;
        Ok(Listing::from_page(listed, PusherCredentialView::from))
    }

    /// Revokes a credential: the store first (its sealed secret erased), then the registry, whose
    /// event closes the connections opened with the key on every node; requests signed with the
    /// secret are refused from then on.
    #[tracing::instrument(skip_all, fields(app_id = %app_id, key = %key))]
    pub async fn revoke_pusher_credential(&self, admin: &TenantAdmin, app_id: &str, key: &str) -> Result<()> {
        let app = self.visible_app(admin, app_id).await?;
        if !self.store().revoke_pusher_credential(&app.id, key, now()).await? {
            return Err(Error::NotFound("Pusher credential"));
        }
        self.registry().remove_pusher_credential(key);
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, "Pusher credential revoked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_20_hex_digits_in_creation_order() {
        let a = new_key();
        let b = new_key(); // the same millisecond, most likely: still after `a`
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(a < b);
        assert_eq!(new_secret().len(), 2 * SECRET_BYTES);
    }
}
