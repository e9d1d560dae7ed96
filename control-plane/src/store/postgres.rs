//! The Postgres [`Store`], used by `aviary control-plane` and shared by replicas.
//!
//! Queries are checked at runtime (not with `sqlx::query!`), so building needs no database;
//! migrations are embedded from `migrations/postgres` so the binary runs from any directory.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

/// Migrations compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// A [`Store`] on a Postgres pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` (e.g. `postgres://postgres@127.0.0.1:5432/test`). Does not migrate.
    pub async fn connect(url: &str) -> crate::Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        Self::connect_with(options).await
    }

    /// Connects with explicit options (tests use this to pin `search_path` to a private schema).
    pub async fn connect_with(options: PgConnectOptions) -> crate::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(PgStore { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies every pending migration of `migrations/postgres`.
    pub async fn migrate(&self) -> crate::Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

super::sql::impl_sql_store!(PgStore, sqlx::Postgres, PgRow);
