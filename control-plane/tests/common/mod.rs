//! Fixtures shared by the control plane's test binaries: a migrated store per test, on Postgres
//! (a private schema) or SQLite (a fresh file), removed again when the test ends.

use std::sync::Arc;

use aviary_control_plane::{PgStore, SqliteStore, Store};
use sqlx::postgres::PgConnectOptions;

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A migrated store that cleans up after itself (also when the test panics).
pub struct TestStore {
    pub store: Arc<dyn Store>,
    cleanup: Cleanup,
}

enum Cleanup {
    PgSchema(String),
    SqliteFile(std::path::PathBuf),
}

impl Drop for TestStore {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::PgSchema(schema) => {
                // Drop runs outside any async context we could borrow; use a private runtime.
                let schema = schema.clone();
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                    rt.block_on(async {
                        let store = PgStore::connect(PG_URL).await.ok()?;
                        let sql = sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                        sqlx::query(sql).execute(store.pool()).await.ok()
                    })
                })
                .join();
            }
            Cleanup::SqliteFile(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

pub async fn pg_store() -> TestStore {
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = PgStore::connect(PG_URL).await.expect("Postgres at 127.0.0.1:5432 (user postgres, db test)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(admin.pool()).await.unwrap();
    admin.pool().close().await;
    let options: PgConnectOptions = PG_URL.parse().unwrap();
    let store = PgStore::connect_with(options.options([("search_path", schema.as_str())])).await.unwrap();
    store.migrate().await.unwrap();
    TestStore { store: Arc::new(store), cleanup: Cleanup::PgSchema(schema) }
}

pub async fn sqlite_store() -> TestStore {
    let path = std::env::temp_dir().join(format!("aviary-cp-{}.db", uuid::Uuid::new_v4().simple()));
    let store = SqliteStore::open(&path).await.unwrap();
    store.migrate().await.unwrap();
    TestStore { store: Arc::new(store), cleanup: Cleanup::SqliteFile(path) }
}
