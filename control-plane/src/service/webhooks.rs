//! Webhook endpoints: create (the signing secret shown once), read, list (never a secret),
//! change, delete; send a test event and list recent delivery attempts.
//!
//! Same shape as Pusher credentials ([`super::pusher`]): validate everything first, check the
//! caller may see the app, write the store. The secret is an HMAC key that delivery must read
//! back, so it is sealed with the credentials key (bound to the endpoint id) before it reaches
//! the store, and never logged. After each write the endpoint (its secret in clear, in memory
//! only) is pushed into the registry, which streams it to nodes sealed with the stream key.

use aviary_core::webhook::{DeliveryAttempt, WebhookEvent, WebhookFormat, target};
use aviary_core::{Capabilities, Operation};
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::{ListParams, Listing, new_id, present};
use crate::ControlPlaneState;
use crate::auth::TenantAdmin;
use crate::error::{Error, Result};
use crate::store::{WebhookRecord, now};

/// Most webhook endpoints a tenant may have unless the operator configures another limit.
pub const DEFAULT_MAX_WEBHOOKS_PER_TENANT: u32 = 20;
/// Longest endpoint URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Random bytes of a signing secret (hex-encoded: 64 characters).
const SECRET_BYTES: usize = 32;

/// `POST /v1/apps/{app_id}/webhooks` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `http` or `https` URL the events are POSTed to. Loopback, private and link-local hosts
    /// are refused unless the operator allows them.
    pub url: String,
    /// The events to send: at least one, no repeats.
    pub events: Vec<WebhookEvent>,
    /// Channel glob (`*` wildcards) limiting the endpoint to matching channels; absent for all.
    #[serde(default)]
    pub channels: Option<String>,
    pub format: WebhookFormat,
}

/// `PATCH /v1/apps/{app_id}/webhooks/{webhook_id}` body; absent fields are kept,
/// `"channels": null` removes the channel filter. The secret never changes.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub events: Option<Vec<WebhookEvent>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub channels: Option<Option<String>>,
    pub format: Option<WebhookFormat>,
}

/// A webhook endpoint as shown: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub app_id: String,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    /// Channel glob; absent when the endpoint hears every channel.
    pub channels: Option<String>,
    pub format: WebhookFormat,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<WebhookRecord> for WebhookView {
    fn from(w: WebhookRecord) -> Self {
        WebhookView {
            id: w.id,
            app_id: w.app_id,
            url: w.url,
            events: w.events,
            channels: w.channels,
            format: w.format,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// `POST /v1/apps/{app_id}/webhooks` answer.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// The signing secret (`aviary` format). Store it now: it is never shown again.
    pub secret: String,
}

impl std::fmt::Debug for WebhookCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCreated").field("webhook", &self.webhook).finish_non_exhaustive()
    }
}

/// `GET /v1/apps/{app_id}/webhooks/{webhook_id}/deliveries` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// The endpoint's last attempts (at most 50) from every node, newest first; test events
    /// included (`test: true`).
    pub attempts: Vec<DeliveryAttempt>,
}

fn new_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = OsRng.r#gen();
    hex::encode(bytes)
}

/// Checks an endpoint URL: absolute `http`/`https` with a host, no credentials or fragment, at
/// most [`MAX_URL_BYTES`]; and, unless `allow_private`, a host that is neither a local name nor
/// a loopback, private or link-local address. Returns the URL as the WHATWG parser normalises
/// it, so the address checked is the address a client library will use (`http://0x7f.1/` is
/// `http://127.0.0.1/`).
pub fn validate_url(text: &str, allow_private: bool) -> Result<String> {
    if text.len() > MAX_URL_BYTES {
        return Err(Error::invalid(format!("url must be at most {MAX_URL_BYTES} bytes")));
    }
    let url = url::Url::parse(text).map_err(|e| Error::invalid(format!("url is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid("url must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid("url must not carry credentials: check the signature instead"));
    }
    if url.fragment().is_some() {
        return Err(Error::invalid("url must not have a fragment"));
    }
    let private = match url.host() {
        None => return Err(Error::invalid("url must have a host")),
        Some(url::Host::Domain(name)) => target::is_local_name(name),
        Some(url::Host::Ipv4(ip)) => !target::is_public(ip.into()),
        Some(url::Host::Ipv6(ip)) => !target::is_public(ip.into()),
    };
    if private && !allow_private {
        return Err(Error::invalid(
            "url points at a loopback, private or link-local address, which this server does not call \
             (the operator can allow it with --webhook-allow-private-targets)",
        ));
    }
    Ok(url.to_string())
}

fn validate_events(events: &[WebhookEvent]) -> Result<()> {
    if events.is_empty() {
        return Err(Error::invalid("events must list at least one event"));
    }
    if let Some((_, twice)) = events.iter().enumerate().find(|(i, e)| events[..*i].contains(e)) {
        return Err(Error::invalid(format!("event {twice:?} is listed twice")));
    }
    Ok(())
}

/// A channel filter is a glob with the syntax of capability globs.
fn validate_channels(glob: &str) -> Result<()> {
    Capabilities::from_pairs([(glob, &[Operation::Subscribe][..])])
        .validate()
        .map_err(|e| Error::invalid(format!("channels: {e}")))
}

impl ControlPlaneState {
    /// Creates a webhook endpoint for the app, within the tenant's endpoint limit.
    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn create_webhook(
        &self,
        admin: &TenantAdmin,
        app_id: &str,
        req: CreateWebhook,
    ) -> Result<WebhookCreated> {
        let url = validate_url(&req.url, self.config().webhook_allow_private_targets)?;
        validate_events(&req.events)?;
        if let Some(glob) = &req.channels {
            validate_channels(glob)?;
        }
        let app = self.visible_app(admin, app_id).await?;
        let sealer = self.config().credentials_key.clone().ok_or(Error::CredentialsKeyMissing)?;
        let secret = new_secret();
        let id = new_id("whk_");
        let at = now();
        let record = WebhookRecord {
            sealed_secret: sealer.seal_str(&secret, &id),
            id,
            app_id: app.id.clone(),
            tenant_id: app.tenant_id.clone(),
            url,
            events: req.events,
            channels: req.channels,
            format: req.format,
            created_at: at,
            updated_at: at,
        };
        self.store().create_webhook(&record, self.config().max_webhooks_per_tenant).await?;
        self.registry().upsert_webhook(crate::sync::webhook_of(record.clone(), secret.clone()));
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, webhook_id = %record.id, "webhook created");
        Ok(WebhookCreated { webhook: record.into(), secret })
    }

    #[tracing::instrument(skip_all, fields(app_id = %app_id, webhook_id = %webhook_id))]
    pub async fn get_webhook(&self, admin: &TenantAdmin, app_id: &str, webhook_id: &str) -> Result<WebhookView> {
        let app = self.visible_app(admin, app_id).await?;
        let webhook = self.store().webhook(&app.id, webhook_id).await?.ok_or(Error::NotFound("webhook"))?;
        Ok(webhook.into())
    }

    #[tracing::instrument(skip_all, fields(app_id = %app_id))]
    pub async fn list_webhooks(
        &self,
        admin: &TenantAdmin,
        app_id: &str,
        params: &ListParams,
    ) -> Result<Listing<WebhookView>> {
        let page = params.page()?;
        let app = self.visible_app(admin, app_id).await?;
        let listed = self.store().list_webhooks(&app.id, &page).await?;
        Ok(Listing::from_page(listed, WebhookView::from))
    }

    /// Changes an endpoint's URL, events, channel filter or format; its secret is kept.
    #[tracing::instrument(skip_all, fields(app_id = %app_id, webhook_id = %webhook_id))]
    pub async fn update_webhook(
        &self,
        admin: &TenantAdmin,
        app_id: &str,
        webhook_id: &str,
        req: UpdateWebhook,
    ) -> Result<WebhookView> {
        let url = match &req.url {
            Some(url) => Some(validate_url(url, self.config().webhook_allow_private_targets)?),
            None => None,
        };
        if let Some(events) = &req.events {
            validate_events(events)?;
        }
        if let Some(Some(glob)) = &req.channels {
            validate_channels(glob)?;
        }
        let app = self.visible_app(admin, app_id).await?;
        let mut webhook = self.store().webhook(&app.id, webhook_id).await?.ok_or(Error::NotFound("webhook"))?;
        if let Some(url) = url {
            webhook.url = url;
        }
        if let Some(events) = req.events {
            webhook.events = events;
        }
        if let Some(channels) = req.channels {
            webhook.channels = channels;
        }
        if let Some(format) = req.format {
            webhook.format = format;
        }
        webhook.updated_at = now();
        if !self.store().update_webhook(&webhook).await? {
            return Err(Error::NotFound("webhook"));
        }
        let secret =
            self.config().credentials_key.as_ref().and_then(|k| k.open_str(&webhook.sealed_secret, &webhook.id));
        if let Some(secret) = secret {
            self.registry().upsert_webhook(crate::sync::webhook_of(webhook.clone(), secret));
        }
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, "webhook updated");
        Ok(webhook.into())
    }

    fn deliveries(&self) -> Result<&std::sync::Arc<dyn aviary_core::webhook::WebhookDeliveries>> {
        self.config()
            .webhook_deliveries
            .as_ref()
            .ok_or_else(|| Error::DeliveriesUnavailable("no delivery store is configured".into()))
    }

    /// Sends one `test` event to the endpoint now, signed in its format, and answers the
    /// attempt (also listed in its deliveries). A receiver that fails is an answer, not an error.
    #[tracing::instrument(skip_all, fields(app_id = %app_id, webhook_id = %webhook_id))]
    pub async fn test_webhook(&self, admin: &TenantAdmin, app_id: &str, webhook_id: &str) -> Result<DeliveryAttempt> {
        let app = self.visible_app(admin, app_id).await?;
        let record = self.store().webhook(&app.id, webhook_id).await?.ok_or(Error::NotFound("webhook"))?;
        let deliveries = self.deliveries()?.clone();
        let sealer = self.config().credentials_key.as_ref().ok_or(Error::CredentialsKeyMissing)?;
        let secret = sealer
            .open_str(&record.sealed_secret, &record.id)
            .ok_or_else(|| Error::Corrupt(format!("the secret of webhook {} does not open", record.id)))?;
        let endpoint = crate::sync::webhook_of(record, secret);
        let pusher = self.registry().pusher_signing_credential(&app.id);
        let attempt = deliveries.send_test(&endpoint, pusher.as_deref()).await;
        tracing::info!(
            tenant_id = %app.tenant_id, status = ?attempt.status, ok = attempt.succeeded(), "webhook test sent"
        );
        Ok(attempt)
    }

    /// The endpoint's recent delivery attempts, newest first.
    #[tracing::instrument(skip_all, fields(app_id = %app_id, webhook_id = %webhook_id))]
    pub async fn webhook_deliveries(
        &self,
        admin: &TenantAdmin,
        app_id: &str,
        webhook_id: &str,
    ) -> Result<DeliveryList> {
        let app = self.visible_app(admin, app_id).await?;
        self.store().webhook(&app.id, webhook_id).await?.ok_or(Error::NotFound("webhook"))?;
        let attempts =
            self.deliveries()?.recent(&app.id, webhook_id).await.map_err(|e| Error::DeliveriesUnavailable(e.0))?;
        Ok(DeliveryList { attempts })
    }

    #[tracing::instrument(skip_all, fields(app_id = %app_id, webhook_id = %webhook_id))]
    pub async fn delete_webhook(&self, admin: &TenantAdmin, app_id: &str, webhook_id: &str) -> Result<()> {
        let app = self.visible_app(admin, app_id).await?;
        if !self.store().delete_webhook(&app.id, webhook_id).await? {
            return Err(Error::NotFound("webhook"));
        }
        self.registry().remove_webhook(webhook_id);
        self.announce_change().await;
        tracing::info!(tenant_id = %app.tenant_id, app_id = %app.id, "webhook deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_public_host_unless_private_targets_are_allowed() {
        assert_eq!(validate_url("https://hooks.example.com/in", false).unwrap(), "https://hooks.example.com/in");
        for refused in [
            "ftp://example.com/",
            "/relative",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "http://localhost:8080/",
            "http://127.0.0.1/",
            "http://0x7f.1/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fe80::1]/",
        ] {
            assert!(validate_url(refused, false).is_err(), "{refused} must be refused");
        }
        assert_eq!(validate_url("http://localhost:8080/hook", true).unwrap(), "http://localhost:8080/hook");
        assert_eq!(validate_url("http://0x7f.1/", true).unwrap(), "http://127.0.0.1/", "normalised");
        assert!(validate_url("ftp://127.0.0.1/", true).is_err(), "the scheme rule holds anyway");
        assert!(validate_url(&format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES)), false).is_err());
    }

    #[test]
    fn events_are_listed_once_and_globs_are_checked() {
        assert!(validate_events(&[]).is_err());
        assert!(validate_events(&[WebhookEvent::ChannelOccupied, WebhookEvent::ChannelOccupied]).is_err());
        assert!(validate_events(&WebhookEvent::ALL).is_ok());
        assert!(validate_channels("chat:*").is_ok());
        assert!(validate_channels("").is_err());
        assert!(validate_channels("bad channel").is_err());
        assert_eq!(new_secret().len(), 2 * SECRET_BYTES);
    }
}
