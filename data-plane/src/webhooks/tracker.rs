//! This node's share of every webhook counter, reported to the ledger.
//!
//! The hub says when a channel's local subscriber count changed, the presence operations when
//! a connection entered or left; this keeps the local truth (the hub's count, the set of local
//! connections per user and channel) and marks the counter dirty. One task reports dirty
//! counters as absolute shares, so reports are idempotent, a burst of changes to one counter
//! becomes one report, and a join and leave between two reports (a reconnect) cancel out: the
//! documented grace. The same task keeps this node alive in the ledger, re-reports everything
//! when the ledger says it was reaped, and reaps dead nodes of the apps with endpoints.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aviary_broker::ChannelKey;
use aviary_broker::webhooks::{Counter, WebhookLedger};
use aviary_core::Registry;
use aviary_core::webhook::WebhookEvent;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, OccupancyListener};

type Dirty = HashSet<(Arc<str>, Counter)>;

#[derive(Default)]
struct Local {
    dirty: Dirty,
    /// (app, channel, user) -> this node's connections of the user in the channel's presence.
    members: HashMap<(Arc<str>, String, String), HashSet<Arc<str>>>,
    /// (connection, channel key) -> user, to find the entry when a connection leaves.
    member_of: HashMap<(Arc<str>, ChannelKey), String>,
}

/// See the module docs.
pub struct Tracker {
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    local: Mutex<Local>,
    wake: Notify,
}

impl OccupancyListener for Tracker {
    fn occupancy_changed(&self, key: &ChannelKey) {
        if self.wants(&key.app_id, WebhookEvent::ChannelOccupied, WebhookEvent::ChannelVacated) {
            let counter = Counter::Occupancy { channel: key.channel.to_string() };
            self.local.lock().dirty.insert((key.app_id.clone(), counter));
            self.wake.notify_one();
        }
    }
}

impl Tracker {
    pub fn new(registry: Arc<Registry>, hub: Arc<Hub>) -> Arc<Tracker> {
        Arc::new(Tracker { registry, hub, local: Mutex::new(Local::default()), wake: Notify::new() })
    }

    fn wants(&self, app_id: &str, a: WebhookEvent, b: WebhookEvent) -> bool {
        self.registry.any_webhook_wants(app_id, a) || self.registry.any_webhook_wants(app_id, b)
    }

    /// A connection entered (or updated its entry in) a channel's presence as `user_id`.
    pub fn member_entered(&self, key: &ChannelKey, user_id: &str, connection_id: &Arc<str>) {
        let wanted = self.wants(&key.app_id, WebhookEvent::MemberAdded, WebhookEvent::MemberRemoved);
        let mut local = self.local.lock();
        local.member_of.insert((connection_id.clone(), key.clone()), user_id.to_owned());
        local
            .members
            .entry((key.app_id.clone(), key.channel.to_string(), user_id.to_owned()))
            .or_default()
            .insert(connection_id.clone());
        if wanted {
            let counter = Counter::Member { channel: key.channel.to_string(), user_id: user_id.to_owned() };
            local.dirty.insert((key.app_id.clone(), counter));
            drop(local);
            self.wake.notify_one();
        }
    }

    /// A connection left a channel's presence.
    pub fn member_left(&self, key: &ChannelKey, connection_id: &str) {
        let wanted = self.wants(&key.app_id, WebhookEvent::MemberAdded, WebhookEvent::MemberRemoved);
        let mut local = self.local.lock();
        let Some(user_id) = local.member_of.remove(&(Arc::from(connection_id), key.clone())) else { return };
        let entry = (key.app_id.clone(), key.channel.to_string(), user_id.clone());
        if let Some(connections) = local.members.get_mut(&entry) {
            connections.remove(connection_id);
            if connections.is_empty() {
                local.members.remove(&entry);
            }
        }
        if wanted {
            local.dirty.insert((key.app_id.clone(), Counter::Member { channel: key.channel.to_string(), user_id }));
            drop(local);
            self.wake.notify_one();
        }
    }

    /// This node's share of `counter` now.
    fn share(&self, app_id: &Arc<str>, counter: &Counter) -> u64 {
        match counter {
            Counter::Occupancy { channel } => {
                u64::from(self.hub.local_subscribers(&ChannelKey::new(app_id, channel)) > 0)
            }
            Counter::Member { channel, user_id } => self
                .local
                .lock()
                .members
                .get(&(app_id.clone(), channel.clone(), user_id.clone()))
                .map_or(0, |c| c.len() as u64),
        }
    }

    /// Reports dirty counters until `shutdown`; keeps the node alive and reaps dead nodes
    /// every `node_ttl / 3`.
    pub async fn run(self: Arc<Self>, ledger: Arc<dyn WebhookLedger>, node_ttl: Duration, shutdown: CancellationToken) {
        let mut reported: HashMap<Arc<str>, HashMap<Counter, u64>> = HashMap::new();
        let mut tick = tokio::time::interval((node_ttl / 3).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ticked = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => false,
                _ = tick.tick() => true,
            };
            if ticked {
                self.keep_alive(&*ledger, &mut reported).await;
            }
            let dirty = std::mem::take(&mut self.local.lock().dirty);
            let mut by_app: HashMap<Arc<str>, Vec<Counter>> = HashMap::new();
            for (app, counter) in dirty {
                by_app.entry(app).or_default().push(counter);
            }
            for (app, counters) in by_app {
                let known = reported.entry(app.clone()).or_default();
                let shares: Vec<(Counter, u64)> = counters
                    .into_iter()
                    .map(|c| {
                        let share = self.share(&app, &c);
                        (c, share)
                    })
                    .filter(|(c, share)| known.get(c).copied().unwrap_or(0) != *share)
                    .collect();
                if shares.is_empty() {
                    continue;
                }
                match ledger.set_shares(&app, &shares).await {
                    Ok(()) => {
                        for (c, share) in shares {
                            if share == 0 {
                                known.remove(&c);
                            } else {
                                known.insert(c, share);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(app_id = %app, error = %e, "webhook ledger unavailable; retrying shortly");
                        self.local.lock().dirty.extend(shares.into_iter().map(|(c, _)| (app.clone(), c)));
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        self.wake.notify_one();
                    }
                }
            }
        }
    }

    async fn keep_alive(&self, ledger: &dyn WebhookLedger, reported: &mut HashMap<Arc<str>, HashMap<Counter, u64>>) {
        reported.retain(|_, counters| !counters.is_empty());
        for (app, counters) in reported.iter_mut() {
            match ledger.keep_alive(app).await {
                Ok(true) => {}
                Ok(false) => {
                    // Reaped while alive (a long pause): the ledger forgot our shares.
                    tracing::warn!(app_id = %app, "this node's webhook shares were reaped; reporting them again");
                    self.local.lock().dirty.extend(counters.drain().map(|(c, _)| (app.clone(), c)));
                    self.wake.notify_one();
                }
                Err(e) => tracing::warn!(app_id = %app, error = %e, "webhook keep-alive failed"),
            }
        }
        let apps: HashSet<String> = self.registry.webhooks().iter().map(|w| w.app_id.clone()).collect();
        for app in apps {
            match ledger.reap(&app).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(app_id = %app, nodes = n, "reaped the webhook shares of silent nodes"),
                Err(e) => tracing::warn!(app_id = %app, error = %e, "webhook reap failed"),
            }
        }
    }
}
