//! The Postgres [`Store`], used by `aviary control-plane` and shared by replicas.
//!
//! Queries are checked at runtime (not with `sqlx::query!`), so building needs no database;
//! migrations are embedded from `migrations/postgres` so the binary runs from any directory.
//!
//! Replicas tell each other about config changes with `NOTIFY` on a channel named after the
//! schema (`aviary_config.<schema>`), so stores in different schemas of one database (tests,
//! several deployments) do not hear each other.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::sync::{OnceCell, mpsc};

/// Migrations compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// A [`Store`] on a Postgres pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The NOTIFY channel, resolved once from `current_schema()`.
    channel: Arc<OnceCell<String>>,
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
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore { pool, channel: Arc::new(OnceCell::new()) }
    }

    async fn channel(&self) -> crate::Result<&str> {
        let channel = self
            .channel
            .get_or_try_init(|| async {
                let schema: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(&self.pool).await?;
                Ok::<_, crate::Error>(format!("aviary_config.{schema}"))
            })
            .await?;
        Ok(channel)
    }

    async fn announce(&self, origin: &str) -> crate::Result<()> {
        let channel = self.channel().await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(origin).execute(&self.pool).await?;
        Ok(())
    }

    /// Listens on a dedicated connection until the receiver is dropped. `PgListener`
    /// reconnects by itself; notifications sent while it was away are lost, so a failure is
    /// passed on as an empty origin ("re-read everything").
    async fn listen(&self) -> crate::Result<Option<mpsc::Receiver<String>>> {
        let channel = self.channel().await?.to_owned();
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&channel).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let origin = match listener.recv().await {
                    Ok(notification) => notification.payload().to_owned(),
                    Err(e) => {
                        tracing::warn!(error = %e, "config change listener lost its connection");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        String::new()
                    }
                };
                // Full means a re-read is already pending; closed means nobody listens any more.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(origin) {
                    return;
                }
            }
        });
        Ok(Some(rx))
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
