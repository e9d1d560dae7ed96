//! The node side of usage metering: a [`UsageReporter`] drains an
//! `aviary_core::usage::UsageMeter` every interval and sends each batch to a [`UsageSink`]
//! (the control plane over gRPC, or in process in `aviary dev`, where the binary wraps the
//! control plane's own ingestion), retrying until acknowledged.
//!
//! Exactly-once counting rests on the batch number: every drained batch gets the next `seq`
//! and keeps it through retries, and the control plane stores each `(node_id, seq)` once. The
//! first `seq` of a process is the Unix time in milliseconds at start, so a restarted node
//! (same `node_id`) never reuses a number of its previous life; a node crash loses at most the
//! batches not yet acknowledged (normally one interval). Unacknowledged batches wait in a
//! bounded queue ([`MAX_PENDING`]); beyond it the oldest is dropped with a warning.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aviary_core::usage::{UsageMeter, UsageRecord};
use aviary_proto::convert::usage_record_to_pb;
use aviary_proto::{ControlPlaneClient, pb};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::link::{ControlPlaneLink, authorized};

/// Records per batch: one drain of a node serving many apps becomes several batches, each well
/// under the control plane's message size limit.
pub const RECORDS_PER_BATCH: usize = 500;

/// Unacknowledged batches kept for retry (an hour at the default 10 s interval).
pub const MAX_PENDING: usize = 360;

/// Where usage batches go.
#[async_trait]
pub trait UsageSink: Send + Sync + 'static {
    /// Records one batch; must be idempotent per `(node_id, seq)`. `Ok` means acknowledged.
    async fn report(&self, node_id: &str, seq: u64, records: &[UsageRecord]) -> Result<()>;
}

/// Reports to a control plane over gRPC (`ReportUsage`, node credential).
#[derive(Clone)]
pub struct GrpcUsageSink {
    client: ControlPlaneClient<Channel>,
    node_token: String,
}

impl GrpcUsageSink {
    /// Connects lazily to `endpoint` (`http://HOST:PORT`, or `https://`).
    pub fn new(endpoint: impl Into<ControlPlaneLink>, node_token: &str) -> Result<Self> {
        let channel =
            endpoint.into().endpoint_with(Duration::from_secs(3))?.timeout(Duration::from_secs(10)).connect_lazy();
        Ok(GrpcUsageSink { client: ControlPlaneClient::new(channel), node_token: node_token.to_owned() })
    }
}

#[async_trait]
impl UsageSink for GrpcUsageSink {
    async fn report(&self, node_id: &str, seq: u64, records: &[UsageRecord]) -> Result<()> {
        let request = authorized(
            pb::ReportUsageRequest {
                node_id: node_id.to_owned(),
                seq,
                records: records.iter().map(usage_record_to_pb).collect(),
            },
            &self.node_token,
        )?;
        self.client
            .clone()
            .report_usage(request)
            .await
            .map_err(|s| Error::Upstream(format!("ReportUsage: {} {}", s.code(), s.message())))?;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Drains a meter into a sink every interval. [`UsageReporter::stop`] sends a last batch.
pub struct UsageReporter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for UsageReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageReporter").finish_non_exhaustive()
    }
}

struct Batch {
    seq: u64,
    records: Vec<UsageRecord>,
}

impl UsageReporter {
    /// Starts reporting `meter` as `node_id` to `sink` every `interval`.
    pub fn spawn(meter: Arc<UsageMeter>, sink: Arc<dyn UsageSink>, node_id: String, interval: Duration) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut next_seq = u64::try_from(now_ms()).unwrap_or(1);
            let mut pending: VecDeque<Batch> = VecDeque::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stopped.changed() => true,
                };
                let records = meter.drain(now_ms());
                for chunk in records.chunks(RECORDS_PER_BATCH) {
                    if pending.len() == MAX_PENDING
                        && let Some(dropped) = pending.pop_front()
                    {
                        tracing::warn!(seq = dropped.seq, "usage queue full: dropping the oldest unsent batch");
                    }
                    pending.push_back(Batch { seq: next_seq, records: chunk.to_vec() });
                    next_seq += 1;
                }
                send_pending(&*sink, &node_id, &mut pending).await;
                metrics::gauge!("aviary_usage_pending_batches").set(pending.len() as f64);
                if last {
                    if !pending.is_empty() {
                        tracing::warn!(batches = pending.len(), "stopping with unsent usage batches");
                    }
                    return;
                }
            }
        });
        UsageReporter { stop, task }
    }

    /// Drains once more, sends what is pending (one attempt each), and stops.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Sends queued batches in order, stopping at the first failure (retried next interval).
async fn send_pending(sink: &dyn UsageSink, node_id: &str, pending: &mut VecDeque<Batch>) {
    while let Some(batch) = pending.front() {
        match sink.report(node_id, batch.seq, &batch.records).await {
            Ok(()) => {
                pending.pop_front();
            }
            Err(e) => {
                tracing::warn!(seq = batch.seq, error = %e, "usage report failed; will retry");
                return;
            }
        }
    }
}
