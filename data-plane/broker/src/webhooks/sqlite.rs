//! [`SqliteLedger`]: the webhook ledger of `aviary dev`, in a SQLite file of the data dir
//! (`webhooks.db`, beside the control plane's `aviary.db`; a file of its own so the ledger's
//! writes never wait on the control plane's and its schema is owned here).
//!
//! One process, one node: totals are this node's shares, the lease is always held. What makes
//! it more than [`super::memory::MemoryLedger`] is durability: every call is one transaction
//! committed to the WAL before it returns (`synchronous = NORMAL`: safe against a killed
//! process, which is what `aviary dev` needs; a power loss may take the last commits), so an
//! event whose append returned survives a SIGKILL and is delivered after the restart. The
//! shares are kept too: the connections they count die with the process, so [`SqliteLedger::open`]
//! reaps them like a cluster reaps a silent node, appending their `channel_vacated` and
//! `member_removed` events. Event ids are `<time_ms>-<seq>` with `seq` an `AUTOINCREMENT`
//! row id, never reused, so receivers deduping by id never drop a new event as an old one.
//!
//! The pool has one connection: every call runs alone, which is what keeps a share change and
//! its event, or a read and its "handed out" mark, together.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{Counter, NewEvent, QueuedEvent, RECENT_ATTEMPTS, WebhookLedger, transition_name};
use crate::BrokerError;

/// Most events one app's queue holds on disk; further appends are refused until it drains.
pub const SQLITE_QUEUE_LIMIT: i64 = 1_000_000;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS webhook_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        app_id TEXT NOT NULL,
        name TEXT NOT NULL,
        channel TEXT NOT NULL,
        user_id TEXT,
        time_ms INTEGER NOT NULL,
        detail TEXT,
        handed INTEGER NOT NULL DEFAULT 0
    )",
    "CREATE INDEX IF NOT EXISTS webhook_queue_by_app ON webhook_queue (app_id, handed, seq)",
    "CREATE TABLE IF NOT EXISTS webhook_shares (
        app_id TEXT NOT NULL,
        field TEXT NOT NULL,
        share INTEGER NOT NULL,
        PRIMARY KEY (app_id, field)
    )",
    "CREATE TABLE IF NOT EXISTS webhook_attempts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        app_id TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        attempt TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS webhook_attempts_by_endpoint ON webhook_attempts (app_id, endpoint_id, seq)",
];

fn unavailable(e: sqlx::Error) -> BrokerError {
    BrokerError::Unavailable(format!("webhook store: {e}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The sequence number of an event id `<time_ms>-<seq>` (0 when it is not one).
fn seq_of(id: &str) -> i64 {
    id.rsplit_once('-').and_then(|(_, seq)| seq.parse().ok()).unwrap_or(0)
}

/// The ledger in a SQLite file; see the module docs.
#[derive(Debug, Clone)]
pub struct SqliteLedger {
    pool: SqlitePool,
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger file at `path` and reaps the shares an earlier
    /// process left, appending their down events. Returns the ledger and how many shares were
    /// reaped.
    pub async fn open(path: &Path) -> Result<(SqliteLedger, usize), BrokerError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&pool).await.map_err(unavailable)?;
        }
        let ledger = SqliteLedger { pool };
        let reaped = ledger.reap_earlier_process().await?;
        Ok((ledger, reaped))
    }

    /// Every stored share belongs to a process that is gone: remove them with the down events
    /// of their counters, in one transaction.
    async fn reap_earlier_process(&self) -> Result<usize, BrokerError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let rows = sqlx::query("SELECT app_id, field FROM webhook_shares ORDER BY app_id, field")
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        let now = now_ms();
        for row in &rows {
            let app_id: String = row.try_get("app_id").map_err(unavailable)?;
            let field: String = row.try_get("field").map_err(unavailable)?;
            if let Some(counter) = Counter::parse(&field) {
                insert_event(&mut tx, &app_id, &transition_event(&counter, false), now).await?;
            }
        }
        sqlx::query("DELETE FROM webhook_shares").execute(&mut *tx).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(rows.len())
    }

    async fn queued(&self, tx: &mut sqlx::SqliteConnection, app_id: &str) -> Result<i64, BrokerError> {
        sqlx::query("SELECT COUNT(*) FROM webhook_queue WHERE app_id = ?")
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(unavailable)
    }
}

fn transition_event(counter: &Counter, up: bool) -> NewEvent {
    let (channel, user_id) = match counter {
        Counter::Occupancy { channel } => (channel.clone(), None),
        Counter::Member { channel, user_id } => (channel.clone(), Some(user_id.clone())),
    };
    NewEvent { name: transition_name(counter, up).to_owned(), channel, user_id, time_ms: 0, detail: None }
}

async fn insert_event(
    conn: &mut sqlx::SqliteConnection,
    app_id: &str,
    event: &NewEvent,
    now: i64,
) -> Result<(), BrokerError> {
    let time_ms = if event.time_ms == 0 { now } else { event.time_ms };
    sqlx::query(
        "INSERT INTO webhook_queue (app_id, name, channel, user_id, time_ms, detail) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(app_id)
    .bind(&event.name)
    .bind(&event.channel)
    .bind(&event.user_id)
    .bind(time_ms)
    .bind(&event.detail)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

fn queued_event(row: &sqlx::sqlite::SqliteRow) -> Result<QueuedEvent, BrokerError> {
    let seq: i64 = row.try_get("seq").map_err(unavailable)?;
    let time_ms: i64 = row.try_get("time_ms").map_err(unavailable)?;
    Ok(QueuedEvent {
        id: format!("{time_ms}-{seq}"),
        name: row.try_get("name").map_err(unavailable)?,
        channel: row.try_get("channel").map_err(unavailable)?,
        user_id: row.try_get("user_id").map_err(unavailable)?,
        time_ms,
        detail: row.try_get("detail").map_err(unavailable)?,
    })
}

#[async_trait]
impl WebhookLedger for SqliteLedger {
    async fn set_shares(&self, app_id: &str, shares: &[(Counter, u64)]) -> Result<(), BrokerError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let now = now_ms();
        for (counter, share) in shares {
            let field = counter.field();
            let before: i64 = sqlx::query("SELECT share FROM webhook_shares WHERE app_id = ? AND field = ?")
                .bind(app_id)
                .bind(&field)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(unavailable)?
                .unwrap_or(0);
            let share = i64::try_from(*share).unwrap_or(i64::MAX);
            if before == share {
                continue;
            }
            if (before == 0) != (share == 0) {
                insert_event(&mut tx, app_id, &transition_event(counter, share > 0), now).await?;
            }
            let write = if share == 0 {
                sqlx::query("DELETE FROM webhook_shares WHERE app_id = ? AND field = ?").bind(app_id).bind(&field)
            } else {
                sqlx::query(
                    "INSERT INTO webhook_shares (app_id, field, share) VALUES (?, ?, ?)
                     ON CONFLICT (app_id, field) DO UPDATE SET share = excluded.share",
                )
                .bind(app_id)
                .bind(&field)
                .bind(share)
            };
            write.execute(&mut *tx).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn keep_alive(&self, _app_id: &str) -> Result<bool, BrokerError> {
        Ok(true)
    }

    /// The only other node there was is the earlier process, reaped by [`SqliteLedger::open`].
    async fn reap(&self, _app_id: &str) -> Result<usize, BrokerError> {
        Ok(0)
    }

    async fn append(&self, app_id: &str, events: &[NewEvent]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if self.queued(&mut tx, app_id).await? + events.len() as i64 > SQLITE_QUEUE_LIMIT {
            return Err(BrokerError::Unavailable("the webhook queue is full".into()));
        }
        let now = now_ms();
        for event in events {
            insert_event(&mut tx, app_id, event, now).await?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn lease(&self, _app_id: &str, _ttl: Duration) -> Result<bool, BrokerError> {
        Ok(true)
    }

    async fn release(&self, _app_id: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn read(
        &self,
        app_id: &str,
        from_start: bool,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<QueuedEvent>, BrokerError> {
        let max = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        if from_start {
            let rows = sqlx::query(concat!(
                "SELECT seq, name, channel, user_id, time_ms, detail FROM webhook_queue",
                " WHERE app_id = ? AND handed = 1 AND seq > ? ORDER BY seq LIMIT ?"
            ))
            .bind(app_id)
            .bind(after.map_or(0, seq_of))
            .bind(max)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            return rows.iter().map(queued_event).collect();
        }
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let rows = sqlx::query(concat!(
            "SELECT seq, name, channel, user_id, time_ms, detail FROM webhook_queue",
            " WHERE app_id = ? AND handed = 0 ORDER BY seq LIMIT ?"
        ))
        .bind(app_id)
        .bind(max)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        let Some(last) = rows.last() else { return Ok(Vec::new()) };
        let last: i64 = last.try_get("seq").map_err(unavailable)?;
        sqlx::query("UPDATE webhook_queue SET handed = 1 WHERE app_id = ? AND handed = 0 AND seq <= ?")
            .bind(app_id)
            .bind(last)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        rows.iter().map(queued_event).collect()
    }

    async fn ack(&self, app_id: &str, ids: &[String]) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let seqs = serde_json::to_string(&ids.iter().map(|id| seq_of(id)).collect::<Vec<i64>>())
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        sqlx::query("DELETE FROM webhook_queue WHERE app_id = ? AND seq IN (SELECT value FROM json_each(?))")
            .bind(app_id)
            .bind(seqs)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn backlog(&self, app_id: &str) -> Result<u64, BrokerError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        Ok(self.queued(&mut conn, app_id).await?.max(0) as u64)
    }

    async fn record_attempt(&self, app_id: &str, endpoint_id: &str, attempt: &str) -> Result<(), BrokerError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query("INSERT INTO webhook_attempts (app_id, endpoint_id, attempt) VALUES (?, ?, ?)")
            .bind(app_id)
            .bind(endpoint_id)
            .bind(attempt)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE app_id = ? AND endpoint_id = ? AND seq <= (
                SELECT seq FROM webhook_attempts WHERE app_id = ? AND endpoint_id = ?
                ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        )
        .bind(app_id)
        .bind(endpoint_id)
        .bind(app_id)
        .bind(endpoint_id)
        .bind(RECENT_ATTEMPTS as i64)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn attempts(&self, app_id: &str, endpoint_id: &str) -> Result<Vec<String>, BrokerError> {
        let rows =
            sqlx::query("SELECT attempt FROM webhook_attempts WHERE app_id = ? AND endpoint_id = ? ORDER BY seq DESC")
                .bind(app_id)
                .bind(endpoint_id)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        rows.iter().map(|r| r.try_get("attempt").map_err(unavailable)).collect()
    }
}
