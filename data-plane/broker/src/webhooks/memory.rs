//! [`MemoryLedger`]: the webhook ledger of a single node (`aviary dev`, one node without
//! Redis). Totals are this node's shares; the queue lives in memory, bounded by
//! [`MEMORY_QUEUE_LIMIT`] events per app (further events are refused and counted), and is lost
//! when the process stops: the documented limitation of webhooks without Redis.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Counter, NewEvent, QueuedEvent, RECENT_ATTEMPTS, WebhookLedger, transition_name};
use crate::BrokerError;

/// Most events one app's in-memory queue holds.
pub const MEMORY_QUEUE_LIMIT: usize = 100_000;

#[derive(Default)]
struct AppLedger {
    shares: HashMap<Counter, u64>,
    /// (event, handed out)
    queue: VecDeque<(QueuedEvent, bool)>,
    next_id: u64,
    /// endpoint -> attempts, newest first.
    attempts: HashMap<String, VecDeque<String>>,
}

impl AppLedger {
    fn push(&mut self, event: &NewEvent) -> Result<(), BrokerError> {
        if self.queue.len() >= MEMORY_QUEUE_LIMIT {
            return Err(BrokerError::Unavailable("the webhook queue is full".into()));
        }
        self.next_id += 1;
        let time_ms = if event.time_ms == 0 { now_ms() } else { event.time_ms };
        self.queue.push_back((
            QueuedEvent {
                id: format!("{time_ms}-{}", self.next_id),
                name: event.name.clone(),
                channel: event.channel.clone(),
                user_id: event.user_id.clone(),
                time_ms,
                detail: event.detail.clone(),
            },
            false,
        ));
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The in-process ledger; see the module docs.
#[derive(Default)]
pub struct MemoryLedger {
    apps: Mutex<HashMap<String, AppLedger>>,
}

impl std::fmt::Debug for MemoryLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLedger").finish_non_exhaustive()
    }
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl WebhookLedger for MemoryLedger {
    async fn set_shares(&self, app_id: &str, shares: &[(Counter, u64)]) -> Result<(), BrokerError> {
        let mut apps = self.apps.lock();
        let app = apps.entry(app_id.to_owned()).or_default();
        for (counter, share) in shares {
            let before = app.shares.get(counter).copied().unwrap_or(0);
            if before == *share {
                continue;
            }
            if (before == 0) != (*share == 0) {
                let (channel, user_id) = match counter {
                    Counter::Occupancy { channel } => (channel.clone(), None),
                    Counter::Member { channel, user_id } => (channel.clone(), Some(user_id.clone())),
                };
                let name = transition_name(counter, *share > 0).to_owned();
                app.push(&NewEvent { name, channel, user_id, time_ms: 0, detail: None })?;
            }
            if *share == 0 {
                app.shares.remove(counter);
            } else {
                app.shares.insert(counter.clone(), *share);
            }
        }
        Ok(())
    }

    async fn keep_alive(&self, _app_id: &str) -> Result<bool, BrokerError> {
        Ok(true)
    }

    async fn reap(&self, _app_id: &str) -> Result<usize, BrokerError> {
        Ok(0)
    }

    async fn append(&self, app_id: &str, events: &[NewEvent]) -> Result<(), BrokerError> {
        let mut apps = self.apps.lock();
        let app = apps.entry(app_id.to_owned()).or_default();
        if app.queue.len() + events.len() > MEMORY_QUEUE_LIMIT {
            return Err(BrokerError::Unavailable("the webhook queue is full".into()));
        }
        for event in events {
            app.push(event)?;
        }
        Ok(())
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
        let mut apps = self.apps.lock();
        let Some(app) = apps.get_mut(app_id) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        if from_start {
            let mut past = after.is_none();
            for (event, handed) in app.queue.iter() {
                if out.len() >= max || !*handed {
                    break;
                }
                if past {
                    out.push(event.clone());
                } else if Some(event.id.as_str()) == after {
                    past = true;
                }
            }
            return Ok(out);
        }
        for (event, handed) in app.queue.iter_mut().filter(|(_, h)| !*h).take(max) {
            *handed = true;
            out.push(event.clone());
        }
        Ok(out)
    }

    async fn ack(&self, app_id: &str, ids: &[String]) -> Result<(), BrokerError> {
        let mut apps = self.apps.lock();
        if let Some(app) = apps.get_mut(app_id) {
            let ids: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
            app.queue.retain(|(e, _)| !ids.contains(e.id.as_str()));
        }
        Ok(())
    }

    async fn backlog(&self, app_id: &str) -> Result<u64, BrokerError> {
        Ok(self.apps.lock().get(app_id).map_or(0, |a| a.queue.len() as u64))
    }

    async fn record_attempt(&self, app_id: &str, endpoint_id: &str, attempt: &str) -> Result<(), BrokerError> {
        let mut apps = self.apps.lock();
        let list = apps.entry(app_id.to_owned()).or_default().attempts.entry(endpoint_id.to_owned()).or_default();
        list.push_front(attempt.to_owned());
        list.truncate(RECENT_ATTEMPTS);
        Ok(())
    }

    async fn attempts(&self, app_id: &str, endpoint_id: &str) -> Result<Vec<String>, BrokerError> {
        let apps = self.apps.lock();
        Ok(apps
            .get(app_id)
            .and_then(|a| a.attempts.get(endpoint_id))
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default())
    }
}
