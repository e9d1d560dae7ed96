//! The config stream data-plane nodes follow (`Watch`), server side: a versioned log of registry
//! changes and snapshots of the registry. The wire form of each change and snapshot comes from
//! `aviary_proto::convert`, the functions the node side (`aviary-follower`) decodes with.
//!
//! The [`ConfigLog`] subscribes to this process's `Registry` and numbers every change it sees
//! (its own counter, not `Registry::version`, so a number always names exactly one logged
//! change). It keeps the last [`RING`] changes so a node that lost its stream briefly resumes
//! with just the deltas it missed; anything older, or a version from another epoch, gets a
//! snapshot. The epoch is a random id per process: versions of a restarted or different replica
//! are not comparable, so a node talking to one takes a fresh snapshot.
//!
//! Consistency: a snapshot is read while the log is locked, so it includes every change logged
//! up to its version (and possibly later ones whose events are still queued); those are then
//! delivered again as deltas, which is harmless because every delta states a final value (an
//! app's whole config, the whole key set, a revocation) and events stay in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aviary_core::sealing::SecretBox;
use aviary_core::{ConfigEvent, Registry};
use aviary_proto::convert::{change_of, config_delta, snapshot_of};
use aviary_proto::pb;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

/// Changes kept for resuming streams.
pub const RING: usize = 4096;

/// One logged change.
#[derive(Debug, Clone)]
enum Change {
    Delta(pb::ConfigDelta),
    /// The log missed registry events (it lagged): every stream must take a snapshot.
    Resync,
}

type Entry = (u64, Arc<Change>);

struct LogState {
    version: u64,
    ring: VecDeque<Entry>,
}

/// Numbered registry changes for `Watch` streams. One per control plane process.
pub struct ConfigLog {
    epoch: String,
    registry: Arc<Registry>,
    /// Seals Pusher secrets for the stream; `None` (no node token) sends no credentials.
    stream_box: Option<SecretBox>,
    state: Mutex<LogState>,
    live: broadcast::Sender<Entry>,
    /// Dropped with the log, which stops its task.
    _alive: watch::Sender<()>,
}

impl std::fmt::Debug for ConfigLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigLog").field("epoch", &self.epoch).field("version", &self.version()).finish()
    }
}

impl ConfigLog {
    /// Starts logging `registry`'s changes. Call before anything else mutates it, so no change
    /// is missed (a missed one would still reach nodes through the next snapshot).
    pub fn start(registry: Arc<Registry>, stream_box: Option<SecretBox>) -> Arc<ConfigLog> {
        let events = registry.subscribe();
        let (alive, alive_rx) = watch::channel(());
        let (live, _) = broadcast::channel(1024);
        let log = Arc::new(ConfigLog {
            epoch: uuid::Uuid::now_v7().simple().to_string(),
            registry,
            stream_box,
            state: Mutex::new(LogState { version: 0, ring: VecDeque::with_capacity(RING) }),
            live,
            _alive: alive,
        });
        tokio::spawn(run_log(Arc::downgrade(&log), events, alive_rx));
        metrics::gauge!("aviary_config_log_version").set(0.0);
        log
    }

    /// The id of this process's log; versions only compare within one epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The version of the last logged change.
    pub fn version(&self) -> u64 {
        self.state.lock().version
    }

    fn append(&self, change: Change) {
        let mut state = self.state.lock();
        state.version += 1;
        let entry = (state.version, Arc::new(change));
        metrics::gauge!("aviary_config_log_version").set(state.version as f64);
        if state.ring.len() == RING {
            state.ring.pop_front();
        }
        state.ring.push_back(entry.clone());
        // Sent under the lock so streams see entries in version order; no receiver is fine.
        let _ = self.live.send(entry);
    }

    /// The whole current config and the version it includes.
    fn snapshot(&self) -> (u64, pb::ConfigSnapshot) {
        let state = self.state.lock();
        (state.version, snapshot_of(&self.registry, self.stream_box.as_ref()))
    }

    /// What a node resuming from `(epoch, version)` needs first: the deltas after `version`
    /// when they are all still in the ring, else `None` (it needs a snapshot).
    fn replay(&self, epoch: &str, version: u64) -> Option<(u64, Vec<Entry>)> {
        if epoch != self.epoch {
            return None;
        }
        let state = self.state.lock();
        if version > state.version {
            return None;
        }
        let oldest = state.ring.front().map_or(state.version + 1, |(v, _)| *v);
        if version + 1 < oldest {
            return None;
        }
        let missed: Vec<Entry> = state.ring.iter().filter(|(v, _)| *v > version).cloned().collect();
        if missed.iter().any(|(_, c)| matches!(**c, Change::Resync)) {
            return None;
        }
        Some((state.version, missed))
    }

    fn event(&self, version: u64, event: pb::watch_event::Event) -> pb::WatchEvent {
        pb::WatchEvent { epoch: self.epoch.clone(), version, event: Some(event) }
    }

    fn snapshot_event(&self) -> (u64, pb::WatchEvent) {
        let (version, snapshot) = self.snapshot();
        (version, self.event(version, pb::watch_event::Event::Snapshot(snapshot)))
    }

    /// Feeds one `Watch` stream into `out` until the node goes away: a snapshot or the missed
    /// deltas, then live deltas, and a heartbeat every `heartbeat` (which also carries the
    /// current version, so an idle node still knows it is up to date).
    pub(crate) async fn serve(
        self: Arc<Self>,
        request: pb::WatchRequest,
        out: mpsc::Sender<Result<pb::WatchEvent, Status>>,
        heartbeat: Duration,
    ) {
        let _open = StreamGauge::open();
        // Subscribe before reading the position so nothing falls between the two.
        let mut live = self.live.subscribe();
        let mut sent = match self.replay(&request.epoch, request.version) {
            Some((version, missed)) => {
                for (v, change) in missed {
                    if let Change::Delta(d) = &*change
                        && send_traced(&out, &request.node_id, self.event(v, pb::watch_event::Event::Delta(d.clone())))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                let version = version.max(request.version);
                // Tells the node at once that it is connected and up to date.
                let alive = self.event(version, pb::watch_event::Event::Heartbeat(pb::Heartbeat {}));
                if out.send(Ok(alive)).await.is_err() {
                    return;
                }
                version
            }
            None => {
                let (version, event) = self.snapshot_event();
                if send_traced(&out, &request.node_id, event).await.is_err() {
                    return;
                }
                version
            }
        };
        tracing::info!(node = %request.node_id, resumed_from = request.version, version = sent, "node watching config");
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let event = tokio::select! {
                _ = out.closed() => return,
                _ = tick.tick() => self.event(sent, pb::watch_event::Event::Heartbeat(pb::Heartbeat {})),
                got = live.recv() => match got {
                    Ok((v, _)) if v <= sent => continue,
                    Ok((v, change)) => match &*change {
                        Change::Delta(d) if v == sent + 1 => {
                            sent = v;
                            self.event(v, pb::watch_event::Event::Delta(d.clone()))
                        }
                        // A resync marker, or a gap that cannot happen: start over from a snapshot.
                        _ => {
                            let (version, event) = self.snapshot_event();
                            sent = version;
                            event
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (version, event) = self.snapshot_event();
                        sent = version;
                        event
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if send_traced(&out, &request.node_id, event).await.is_err() {
                return;
            }
        }
    }
}

/// Sends one event down a node's stream, in a `config_send` span unless it is a heartbeat.
async fn send_traced(
    out: &mpsc::Sender<Result<pb::WatchEvent, Status>>,
    node: &str,
    event: pb::WatchEvent,
) -> Result<(), mpsc::error::SendError<Result<pb::WatchEvent, Status>>> {
    let span = match change_of(&event) {
        Some((change, tenant_id, app_id)) => {
            tracing::info_span!("config_send", node, version = event.version, change, tenant_id, app_id)
        }
        None => tracing::Span::none(),
    };
    tracing::Instrument::instrument(out.send(Ok(event)), span).await
}

/// Counts open streams in `aviary_watch_streams` for as long as it lives.
struct StreamGauge;

impl StreamGauge {
    fn open() -> StreamGauge {
        metrics::gauge!("aviary_watch_streams").increment(1.0);
        StreamGauge
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        metrics::gauge!("aviary_watch_streams").decrement(1.0);
    }
}

async fn run_log(
    log: std::sync::Weak<ConfigLog>,
    mut events: broadcast::Receiver<ConfigEvent>,
    mut alive: watch::Receiver<()>,
) {
    loop {
        let got = tokio::select! {
            _ = alive.changed() => return,
            got = events.recv() => got,
        };
        let Some(log) = log.upgrade() else { return };
        match got {
            Ok(event) => {
                if let Some(delta) = config_delta(&event, &log.registry, log.stream_box.as_ref()) {
                    log.append(Change::Delta(delta));
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "config log lagged behind the registry; nodes will take a snapshot");
                log.append(Change::Resync);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
