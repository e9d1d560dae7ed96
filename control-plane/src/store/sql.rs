//! The SQL both stores run, written once.
//!
//! Postgres and SQLite accept the same statements here (`$n` placeholders, `ON CONFLICT`,
//! `RETURNING`-free writes, JSON kept as text), and sqlx's `Row::try_get` decodes the same Rust
//! types from both, so [`impl_sql_store!`] expands one implementation of [`super::Store`] per
//! backend instead of keeping two copies in sync by hand. Every value is bound as a parameter.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

pub(super) fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("encoding JSON column: {e}")))
}

pub(super) fn from_json<T: DeserializeOwned>(text: &str, column: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("column {column}: {e}")))
}

/// Maps constraint violations to the domain errors the [`super::Store`] contract promises.
pub(super) fn classify(e: sqlx::Error, conflict: &str, missing_parent: &'static str) -> Error {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            return Error::Conflict(conflict.to_owned());
        }
        if db.is_foreign_key_violation() {
            return Error::NotFound(missing_parent);
        }
    }
    Error::Database(e)
}

/// Implements `Store` for `$store` (a struct with a `pool: sqlx::Pool<$db>` field).
macro_rules! impl_sql_store {
    ($store:ty, $db:ty, $row:ty) => {
        use async_trait::async_trait;
        use chrono::{DateTime, Utc};
        use sqlx::Row;

        use crate::error::{Error, Result};
        use crate::store::sql::{classify, from_json, to_json};
        use crate::store::{
            AdminKeyRecord, ApiKeyRecord, App, Page, PageRequest, PusherCredentialRecord, SigningKeyRecord, Store,
            Tenant, UsageBucket, WebhookRecord, usage_hour,
        };
        use aviary_core::webhook::WebhookFormat;
        use aviary_core::usage::UsageRecord;

        /// Counters are `u64` in Rust and `BIGINT` in SQL.
        fn big(n: u64) -> i64 {
            i64::try_from(n).unwrap_or(i64::MAX)
        }

        fn unbig(r: &$row, column: &str) -> Result<u64> {
            let n: i64 = r.try_get(column)?;
            Ok(u64::try_from(n).unwrap_or(0))
        }

        async fn insert_admin_key<'e, E: sqlx::Executor<'e, Database = $db>>(
            executor: E,
            key: &AdminKeyRecord,
        ) -> Result<()> {
            sqlx::query(
                "INSERT INTO admin_keys (id, tenant_id, secret_hash, created_at, last_used_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&key.id)
            .bind(&key.tenant_id)
            .bind(&key.secret_hash)
            .bind(key.created_at)
            .bind(key.last_used_at)
            .bind(key.revoked_at)
            .execute(executor)
            .await
            .map_err(|e| classify(e, "an admin key with this id already exists", "tenant"))?;
            Ok(())
        }

        fn tenant_from_row(r: &$row) -> Result<Tenant> {
            Ok(Tenant {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                enabled: r.try_get("enabled")?,
                quotas: from_json(r.try_get::<&str, _>("quotas")?, "tenants.quotas")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        }

        fn app_from_row(r: &$row) -> Result<App> {
            let quotas: Option<String> = r.try_get("quotas")?;
            let ttl: i64 = r.try_get("max_token_ttl_s")?;
            Ok(App {
                id: r.try_get("id")?,
                tenant_id: r.try_get("tenant_id")?,
                name: r.try_get("name")?,
                enabled: r.try_get("enabled")?,
                allowed_origins: from_json(r.try_get::<&str, _>("allowed_origins")?, "apps.allowed_origins")?,
                max_token_ttl_s: u32::try_from(ttl).map_err(|_| Error::Corrupt("apps.max_token_ttl_s".into()))?,
                namespaces: from_json(r.try_get::<&str, _>("namespaces")?, "apps.namespaces")?,
                quotas: quotas.as_deref().map(|q| from_json(q, "apps.quotas")).transpose()?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        }

        fn api_key_from_row(r: &$row) -> Result<ApiKeyRecord> {
            Ok(ApiKeyRecord {
                id: r.try_get("id")?,
                app_id: r.try_get("app_id")?,
                tenant_id: r.try_get("tenant_id")?,
                name: r.try_get("name")?,
                capabilities: from_json(r.try_get::<&str, _>("capabilities")?, "api_keys.capabilities")?,
                secret_hash: r.try_get("secret_hash")?,
                created_at: r.try_get("created_at")?,
                last_used_at: r.try_get("last_used_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        }

        fn admin_key_from_row(r: &$row) -> Result<AdminKeyRecord> {
            Ok(AdminKeyRecord {
                id: r.try_get("id")?,
                tenant_id: r.try_get("tenant_id")?,
                secret_hash: r.try_get("secret_hash")?,
                created_at: r.try_get("created_at")?,
                last_used_at: r.try_get("last_used_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        }

        fn pusher_credential_from_row(r: &$row) -> Result<PusherCredentialRecord> {
            let pusher_app_id: i64 = r.try_get("pusher_app_id")?;
            Ok(PusherCredentialRecord {
                key: r.try_get("key")?,
                app_id: r.try_get("app_id")?,
                tenant_id: r.try_get("tenant_id")?,
                pusher_app_id: u64::try_from(pusher_app_id)
                    .map_err(|_| Error::Corrupt("pusher_apps.pusher_app_id".into()))?,
                capabilities: from_json(r.try_get::<&str, _>("capabilities")?, "pusher_credentials.capabilities")?,
                client_events: r.try_get("client_events")?,
                sealed_secret: r.try_get("sealed_secret")?,
                created_at: r.try_get("created_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        }

        fn webhook_from_row(r: &$row) -> Result<WebhookRecord> {
            let format: &str = r.try_get("format")?;
            Ok(WebhookRecord {
                id: r.try_get("id")?,
                app_id: r.try_get("app_id")?,
                tenant_id: r.try_get("tenant_id")?,
                url: r.try_get("url")?,
                events: from_json(r.try_get::<&str, _>("events")?, "webhooks.events")?,
                channels: r.try_get("channels")?,
                format: WebhookFormat::parse(format).ok_or_else(|| Error::Corrupt("webhooks.format".into()))?,
                sealed_secret: r.try_get("sealed_secret")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        }

        /// Fetches `limit + 1` rows to learn whether another page exists without a COUNT.
        fn paginate<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> &str) -> Page<T> {
            let limit = limit as usize;
            let next_after = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|last| id(last).to_owned())
            } else {
                None
            };
            Page { items, next_after }
        }

        /// Ids sort after "" so a missing cursor reads from the start.
        fn after(page: &PageRequest) -> &str {
            page.after.as_deref().unwrap_or("")
        }

        #[async_trait]
        impl Store for $store {
            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_tenant(&self, t: &Tenant, admin_key: &AdminKeyRecord) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO tenants (id, name, enabled, quotas, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&t.id)
                .bind(&t.name)
                .bind(t.enabled)
                .bind(to_json(&t.quotas)?)
                .bind(t.created_at)
                .bind(t.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(e, "a tenant with this name already exists", "tenant"))?;
                insert_admin_key(&mut *tx, admin_key).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
                let row =
                    sqlx::query("SELECT * FROM tenants WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(tenant_from_row).transpose()
            }

            async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>> {
                let rows = sqlx::query("SELECT * FROM tenants WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after(page))
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?;
                let items = rows.iter().map(tenant_from_row).collect::<Result<Vec<_>>>()?;
                Ok(paginate(items, page.limit, |t| &t.id))
            }

            async fn update_tenant(&self, t: &Tenant) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE tenants SET name = $2, enabled = $3, quotas = $4, updated_at = $5 WHERE id = $1",
                )
                .bind(&t.id)
                .bind(&t.name)
                .bind(t.enabled)
                .bind(to_json(&t.quotas)?)
                .bind(t.updated_at)
                .execute(&self.pool)
                .await
                .map_err(|e| classify(e, "a tenant with this name already exists", "tenant"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_tenant(&self, id: &str) -> Result<bool> {
                // Foreign keys cascade to admin keys, apps and (through apps) API keys.
                let done = sqlx::query("DELETE FROM tenants WHERE id = $1").bind(id).execute(&self.pool).await?;
                Ok(done.rows_affected() > 0)
            }

            async fn create_admin_key(&self, key: &AdminKeyRecord) -> Result<()> {
                insert_admin_key(&self.pool, key).await
            }

            async fn admin_key(&self, id: &str) -> Result<Option<AdminKeyRecord>> {
                let row = sqlx::query(
                    "SELECT id, tenant_id, secret_hash, created_at, last_used_at, revoked_at \
                     FROM admin_keys WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(admin_key_from_row).transpose()
            }

            async fn revoke_admin_key(&self, tenant_id: &str, key_id: &str, at: DateTime<Utc>) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE admin_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE id = $1 AND tenant_id = $2",
                )
                .bind(key_id)
                .bind(tenant_id)
                .bind(at)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn touch_admin_key(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE admin_keys SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn create_app(&self, a: &App) -> Result<()> {
                sqlx::query(
                    "INSERT INTO apps (id, tenant_id, name, enabled, allowed_origins, max_token_ttl_s, namespaces, \
                     quotas, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&a.id)
                .bind(&a.tenant_id)
                .bind(&a.name)
                .bind(a.enabled)
                .bind(to_json(&a.allowed_origins)?)
                .bind(i64::from(a.max_token_ttl_s))
                .bind(to_json(&a.namespaces)?)
                .bind(a.quotas.as_ref().map(to_json).transpose()?)
                .bind(a.created_at)
                .bind(a.updated_at)
                .execute(&self.pool)
                .await
                .map_err(|e| classify(e, "an app with this name already exists in the tenant", "tenant"))?;
                Ok(())
            }

            async fn app(&self, id: &str) -> Result<Option<App>> {
                let row = sqlx::query("SELECT * FROM apps WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(app_from_row).transpose()
            }

            async fn list_apps(&self, tenant_id: &str, page: &PageRequest) -> Result<Page<App>> {
                let rows = sqlx::query("SELECT * FROM apps WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                    .bind(tenant_id)
                    .bind(after(page))
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?;
                let items = rows.iter().map(app_from_row).collect::<Result<Vec<_>>>()?;
                Ok(paginate(items, page.limit, |a| &a.id))
            }

            async fn all_apps(&self) -> Result<Vec<App>> {
                let rows = sqlx::query("SELECT * FROM apps ORDER BY id").fetch_all(&self.pool).await?;
                rows.iter().map(app_from_row).collect()
            }

            async fn update_app(&self, a: &App) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE apps SET name = $2, enabled = $3, allowed_origins = $4, max_token_ttl_s = $5, \
                     namespaces = $6, quotas = $7, updated_at = $8 WHERE id = $1",
                )
                .bind(&a.id)
                .bind(&a.name)
                .bind(a.enabled)
                .bind(to_json(&a.allowed_origins)?)
                .bind(i64::from(a.max_token_ttl_s))
                .bind(to_json(&a.namespaces)?)
                .bind(a.quotas.as_ref().map(to_json).transpose()?)
                .bind(a.updated_at)
                .execute(&self.pool)
                .await
                .map_err(|e| classify(e, "an app with this name already exists in the tenant", "app"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_app(&self, id: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM apps WHERE id = $1").bind(id).execute(&self.pool).await?;
                Ok(done.rows_affected() > 0)
            }

            async fn create_api_key(&self, k: &ApiKeyRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO api_keys (id, app_id, tenant_id, name, capabilities, secret_hash, created_at, \
                     last_used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&k.id)
                .bind(&k.app_id)
                .bind(&k.tenant_id)
                .bind(&k.name)
                .bind(to_json(&k.capabilities)?)
                .bind(&k.secret_hash)
                .bind(k.created_at)
                .bind(k.last_used_at)
                .bind(k.revoked_at)
                .execute(&self.pool)
                .await
                .map_err(|e| classify(e, "an API key with this id already exists", "app"))?;
                Ok(())
            }

            async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
                let row =
                    sqlx::query("SELECT * FROM api_keys WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(api_key_from_row).transpose()
            }

            async fn list_api_keys(&self, app_id: &str, page: &PageRequest) -> Result<Page<ApiKeyRecord>> {
                let rows = sqlx::query("SELECT * FROM api_keys WHERE app_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                    .bind(app_id)
                    .bind(after(page))
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?;
                let items = rows.iter().map(api_key_from_row).collect::<Result<Vec<_>>>()?;
                Ok(paginate(items, page.limit, |k| &k.id))
            }

            async fn revoke_api_key(&self, app_id: &str, key_id: &str, at: DateTime<Utc>) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE id = $1 AND app_id = $2",
                )
                .bind(key_id)
                .bind(app_id)
                .bind(at)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn revoked_api_keys(&self) -> Result<Vec<(String, String)>> {
                let rows = sqlx::query("SELECT app_id, id FROM api_keys WHERE revoked_at IS NOT NULL ORDER BY id")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| Ok((r.try_get("app_id")?, r.try_get("id")?))).collect()
            }

            async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn create_pusher_credential(&self, c: &PusherCredentialRecord) -> Result<u64> {
                let candidate = i64::try_from(c.pusher_app_id).map_err(|_| Error::invalid("pusher_app_id too large"))?;
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO pusher_apps (app_id, pusher_app_id) VALUES ($1, $2) ON CONFLICT (app_id) DO NOTHING",
                )
                .bind(&c.app_id)
                .bind(candidate)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(e, "that Pusher app id is taken", "app"))?;
                let pusher_app_id: i64 = sqlx::query_scalar("SELECT pusher_app_id FROM pusher_apps WHERE app_id = $1")
                    .bind(&c.app_id)
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO pusher_credentials (key, app_id, tenant_id, capabilities, client_events, \
                     sealed_secret, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&c.key)
                .bind(&c.app_id)
                .bind(&c.tenant_id)
                .bind(to_json(&c.capabilities)?)
                .bind(c.client_events)
                .bind(&c.sealed_secret)
                .bind(c.created_at)
                .bind(c.revoked_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(e, "a Pusher credential with this key already exists", "app"))?;
                tx.commit().await?;
                u64::try_from(pusher_app_id).map_err(|_| Error::Corrupt("pusher_apps.pusher_app_id".into()))
            }

            async fn list_pusher_credentials(
                &self,
                app_id: &str,
                page: &PageRequest,
            ) -> Result<Page<PusherCredentialRecord>> {
                // Credentials joined with their app's numeric Pusher id.
                let rows = sqlx::query(
                    "SELECT c.*, p.pusher_app_id FROM pusher_credentials c JOIN pusher_apps p ON p.app_id = c.app_id \
                     WHERE c.app_id = $1 AND c.key > $2 ORDER BY c.key LIMIT $3",
                )
                .bind(app_id)
                .bind(after(page))
                .bind(i64::from(page.limit) + 1)
                .fetch_all(&self.pool)
                .await?;
                let items = rows.iter().map(pusher_credential_from_row).collect::<Result<Vec<_>>>()?;
                Ok(paginate(items, page.limit, |c| &c.key))
            }

            async fn revoke_pusher_credential(&self, app_id: &str, key: &str, at: DateTime<Utc>) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE pusher_credentials SET revoked_at = COALESCE(revoked_at, $3), sealed_secret = $4 \
                     WHERE key = $1 AND app_id = $2",
                )
                .bind(key)
                .bind(app_id)
                .bind(at)
                .bind(Vec::<u8>::new())
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn live_pusher_credentials(&self) -> Result<Vec<PusherCredentialRecord>> {
                let rows = sqlx::query(
                    "SELECT c.*, p.pusher_app_id FROM pusher_credentials c JOIN pusher_apps p ON p.app_id = c.app_id \
                     WHERE c.revoked_at IS NULL ORDER BY c.key",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(pusher_credential_from_row).collect()
            }

            async fn create_webhook(&self, w: &WebhookRecord, max_per_tenant: u32) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                // A no-op write on the tenant row takes its lock (Postgres) or the database's write
                // lock (SQLite) first, so two creates of one tenant count one after the other.
                sqlx::query("UPDATE tenants SET updated_at = updated_at WHERE id = $1")
                    .bind(&w.tenant_id)
                    .execute(&mut *tx)
                    .await?;
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE tenant_id = $1")
                    .bind(&w.tenant_id)
                    .fetch_one(&mut *tx)
                    .await?;
                if count >= i64::from(max_per_tenant) {
                    return Err(Error::LimitReached(format!(
                        "this tenant already has {count} webhook endpoints (at most {max_per_tenant})"
                    )));
                }
                sqlx::query(
                    "INSERT INTO webhooks (id, app_id, tenant_id, url, events, channels, format, sealed_secret, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&w.id)
                .bind(&w.app_id)
                .bind(&w.tenant_id)
                .bind(&w.url)
                .bind(to_json(&w.events)?)
                .bind(&w.channels)
                .bind(w.format.as_str())
                .bind(&w.sealed_secret)
                .bind(w.created_at)
                .bind(w.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(e, "a webhook with this id already exists", "app"))?;
                tx.commit().await?;
                Ok(())
            }

            async fn webhook(&self, app_id: &str, id: &str) -> Result<Option<WebhookRecord>> {
                let row = sqlx::query("SELECT * FROM webhooks WHERE id = $1 AND app_id = $2")
                    .bind(id)
                    .bind(app_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(webhook_from_row).transpose()
            }

            async fn list_webhooks(&self, app_id: &str, page: &PageRequest) -> Result<Page<WebhookRecord>> {
                let rows = sqlx::query("SELECT * FROM webhooks WHERE app_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                    .bind(app_id)
                    .bind(after(page))
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?;
                let items = rows.iter().map(webhook_from_row).collect::<Result<Vec<_>>>()?;
                Ok(paginate(items, page.limit, |w| &w.id))
            }

            async fn all_webhooks(&self) -> Result<Vec<WebhookRecord>> {
                let rows = sqlx::query("SELECT * FROM webhooks ORDER BY id").fetch_all(&self.pool).await?;
                rows.iter().map(webhook_from_row).collect()
            }

            async fn update_webhook(&self, w: &WebhookRecord) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE webhooks SET url = $3, events = $4, channels = $5, format = $6, updated_at = $7 \
                     WHERE id = $1 AND app_id = $2",
                )
                .bind(&w.id)
                .bind(&w.app_id)
                .bind(&w.url)
                .bind(to_json(&w.events)?)
                .bind(&w.channels)
                .bind(w.format.as_str())
                .bind(w.updated_at)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_webhook(&self, app_id: &str, id: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND app_id = $2")
                    .bind(id)
                    .bind(app_id)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
                let rows = sqlx::query(
                    "SELECT kid, pkcs8, created_at, retired_at FROM signing_keys ORDER BY created_at DESC, kid DESC",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(SigningKeyRecord {
                            kid: r.try_get("kid")?,
                            pkcs8: r.try_get("pkcs8")?,
                            created_at: r.try_get("created_at")?,
                            retired_at: r.try_get("retired_at")?,
                        })
                    })
                    .collect()
            }

            async fn rotate_signing_key(
                &self,
                new: &SigningKeyRecord,
                purge_retired_before: DateTime<Utc>,
            ) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                    .bind(new.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO signing_keys (kid, pkcs8, created_at, retired_at) VALUES ($1, $2, $3, NULL)")
                    .bind(&new.kid)
                    .bind(&new.pkcs8)
                    .bind(new.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| classify(e, "a signing key with this kid already exists", "signing key"))?;
                sqlx::query("DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1")
                    .bind(purge_retired_before)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn revoke_client(&self, app_id: &str, client_id: &str, issued_before: i64) -> Result<()> {
                sqlx::query(
                    "INSERT INTO revoked_clients (app_id, client_id, issued_before) VALUES ($1, $2, $3) \
                     ON CONFLICT (app_id, client_id) DO UPDATE SET issued_before = \
                     CASE WHEN excluded.issued_before > revoked_clients.issued_before \
                     THEN excluded.issued_before ELSE revoked_clients.issued_before END",
                )
                .bind(app_id)
                .bind(client_id)
                .bind(issued_before)
                .execute(&self.pool)
                .await
                .map_err(|e| classify(e, "client revocation conflict", "app"))?;
                Ok(())
            }

            async fn revoked_clients(&self) -> Result<Vec<(String, String, i64)>> {
                let rows = sqlx::query(
                    "SELECT app_id, client_id, issued_before FROM revoked_clients ORDER BY app_id, client_id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("app_id")?, r.try_get("client_id")?, r.try_get("issued_before")?)))
                    .collect()
            }

            async fn record_usage(&self, node_id: &str, seq: u64, records: &[UsageRecord]) -> Result<bool> {
                let seq = i64::try_from(seq).map_err(|_| Error::invalid("seq must fit in 63 bits"))?;
                let mut tx = self.pool.begin().await?;
                let fresh = sqlx::query(
                    "INSERT INTO usage_batches (node_id, seq, received_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (node_id, seq) DO NOTHING",
                )
                .bind(node_id)
                .bind(seq)
                .bind(crate::store::now().timestamp())
                .execute(&mut *tx)
                .await?;
                if fresh.rows_affected() == 0 {
                    return Ok(false);
                }
                for r in records {
                    let hour = usage_hour(r);
                    sqlx::query(
                        "INSERT INTO usage_hourly (tenant_id, app_id, hour_start, messages_published, \
                         messages_delivered, bytes_in, bytes_out, connection_ms, webhook_events) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (tenant_id, app_id, hour_start) DO UPDATE SET \
                         messages_published = usage_hourly.messages_published + excluded.messages_published, \
                         messages_delivered = usage_hourly.messages_delivered + excluded.messages_delivered, \
                         bytes_in = usage_hourly.bytes_in + excluded.bytes_in, \
                         bytes_out = usage_hourly.bytes_out + excluded.bytes_out, \
                         connection_ms = usage_hourly.connection_ms + excluded.connection_ms, \
                         webhook_events = usage_hourly.webhook_events + excluded.webhook_events",
                    )
                    .bind(&r.tenant_id)
                    .bind(&r.app_id)
                    .bind(hour)
                    .bind(big(r.messages_published))
                    .bind(big(r.messages_delivered))
                    .bind(big(r.bytes_in))
                    .bind(big(r.bytes_out))
                    .bind(big(r.connection_ms))
                    .bind(big(r.webhook_events))
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO usage_node_peaks (tenant_id, app_id, hour_start, node_id, peak) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (tenant_id, app_id, hour_start, node_id) DO UPDATE SET peak = \
                         CASE WHEN excluded.peak > usage_node_peaks.peak THEN excluded.peak \
                         ELSE usage_node_peaks.peak END",
                    )
                    .bind(&r.tenant_id)
                    .bind(&r.app_id)
                    .bind(hour)
                    .bind(node_id)
                    .bind(big(r.peak_connections))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn prune_usage_batches(&self, before: i64) -> Result<u64> {
                let done = sqlx::query("DELETE FROM usage_batches WHERE received_at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn usage_buckets(
                &self,
                tenant_id: Option<&str>,
                from_hour: i64,
                to_hour: i64,
            ) -> Result<Vec<UsageBucket>> {
                // `$1 IS NULL` selects every tenant; the peak is the sum of per-node peaks.
                let rows = sqlx::query(
                    "SELECT h.tenant_id, h.app_id, h.hour_start, h.messages_published, h.messages_delivered, \
                     h.bytes_in, h.bytes_out, h.connection_ms, h.webhook_events, \
                     CAST(COALESCE((SELECT SUM(p.peak) FROM usage_node_peaks p WHERE p.tenant_id = h.tenant_id \
                     AND p.app_id = h.app_id AND p.hour_start = h.hour_start), 0) AS BIGINT) AS peak_connections \
                     FROM usage_hourly h \
                     WHERE ($1 IS NULL OR h.tenant_id = $1) AND h.hour_start >= $2 AND h.hour_start < $3 \
                     ORDER BY h.tenant_id, h.app_id, h.hour_start",
                )
                .bind(tenant_id)
                .bind(from_hour)
                .bind(to_hour)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(UsageBucket {
                            tenant_id: r.try_get("tenant_id")?,
                            app_id: r.try_get("app_id")?,
                            hour_start: r.try_get("hour_start")?,
                            messages_published: unbig(r, "messages_published")?,
                            messages_delivered: unbig(r, "messages_delivered")?,
                            bytes_in: unbig(r, "bytes_in")?,
                            bytes_out: unbig(r, "bytes_out")?,
                            connection_ms: unbig(r, "connection_ms")?,
                            webhook_events: unbig(r, "webhook_events")?,
                            peak_connections: unbig(r, "peak_connections")?,
                        })
                    })
                    .collect()
            }

            async fn announce_config_change(&self, origin: &str) -> Result<()> {
                self.announce(origin).await
            }

            async fn config_changes(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
                self.listen().await
            }

            async fn set_marker(&self, name: &str) -> Result<bool> {
                let done =
                    sqlx::query("INSERT INTO markers (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                        .bind(name)
                        .bind(crate::store::now())
                        .execute(&self.pool)
                        .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn has_marker(&self, name: &str) -> Result<bool> {
                let row = sqlx::query("SELECT name FROM markers WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.is_some())
            }
        }
    };
}

pub(super) use impl_sql_store;
