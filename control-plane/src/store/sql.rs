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
        use crate::store::{AdminKeyRecord, ApiKeyRecord, App, Page, PageRequest, SigningKeyRecord, Store, Tenant};

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
