//! The SQLite [`Store`] behind `aviary dev`: one file, WAL journal, zero setup.
//!
//! WAL lets readers proceed while one writer commits; `busy_timeout` makes concurrent writers
//! wait for each other instead of failing with `SQLITE_BUSY`. Foreign keys are switched on
//! (SQLite leaves them off by default) because the cascades are part of the store contract.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

/// Migrations compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// A [`Store`] on a SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`. Does not migrate.
    pub async fn open(path: &Path) -> crate::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        Self::connect_with(options).await
    }

    /// Opens a `sqlite:` URL, e.g. `sqlite://./.aviary/aviary.db`.
    pub async fn connect(url: &str) -> crate::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        Self::connect_with(options).await
    }

    async fn connect_with(options: SqliteConnectOptions) -> crate::Result<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// One process owns a SQLite store: there is nobody to tell.
    async fn announce(&self, _origin: &str) -> crate::Result<()> {
        Ok(())
    }

    async fn listen(&self) -> crate::Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        Ok(None)
    }

    /// Applies every pending migration of `migrations/sqlite`.
    pub async fn migrate(&self) -> crate::Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

super::sql::impl_sql_store!(SqliteStore, sqlx::Sqlite, SqliteRow);
