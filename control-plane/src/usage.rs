//! Usage metering for billing, control plane side: ingesting the batches nodes report,
//! `GET /v1/tenants/{tenant_id}/usage` (per-app series by hour or day), and the operator's
//! over-quota list.
//!
//! Nodes count on their hot path (`aviary_core::usage::UsageMeter`) and report one batch per
//! interval, numbered `(node_id, seq)`; [`ControlPlaneState::ingest_usage`] stores each batch at
//! most once (the store's contract), so a retry after a lost acknowledgement never counts twice.
//! RPC (`ReportUsage`) and in-process (`aviary dev`) reports take that same path.
//!
//! Peak concurrent connections: a bucket's peak is the sum over nodes of each node's highest
//! reported peak in that hour. Exact with one node; with several it is an upper bound, because
//! their peaks need not coincide. A tenant's peak in an hour sums its apps' peaks (same caveat).

use std::collections::{BTreeMap, HashMap};

use aviary_core::Quotas;
use aviary_core::usage::UsageRecord;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::ControlPlaneState;
use crate::auth::TenantAdmin;
use crate::error::{Error, Result};
use crate::store::{Tenant, UsageBucket};

/// Most records one batch may carry (a node reports one per active app per interval).
pub const MAX_RECORDS_PER_BATCH: usize = 10_000;
/// How long batch ids are kept for deduplication; nodes retry for at most an hour.
pub const BATCH_ID_RETENTION: TimeDelta = TimeDelta::days(7);
/// Longest range one usage query may cover.
pub const MAX_RANGE_DAYS: i64 = 400;

/// Bucket size of a usage series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    #[default]
    Hour,
    Day,
}

impl Granularity {
    fn seconds(self) -> i64 {
        match self {
            Granularity::Hour => 3600,
            Granularity::Day => 86_400,
        }
    }
}

/// Query of `GET /v1/tenants/{tenant_id}/usage`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start (RFC 3339), rounded down to the granularity; default: 24 hours before `to` (before
    /// now when `to` is absent). The answer's `from` is the start actually used.
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (RFC 3339), rounded up to the granularity; default: the end of the period
    /// (hour or UTC day) in progress, so the default window always includes the current one.
    /// The answer's `to` is the end actually used.
    pub to: Option<DateTime<Utc>>,
    /// `hour` (default) or `day` (UTC days).
    pub granularity: Option<Granularity>,
}

/// Usage in one period (or summed over a range).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageFigures {
    pub messages_published: u64,
    /// Message deliveries to subscribers' connections.
    pub messages_delivered: u64,
    /// Payload bytes accepted for publication.
    pub bytes_in: u64,
    /// Bytes handed to subscribers' connections.
    pub bytes_out: u64,
    /// Connected time summed over connections, in minutes.
    pub connection_minutes: f64,
    /// Most concurrent connections (sum over nodes of each node's peak; an upper bound with
    /// several nodes). Over a range: the highest period.
    pub peak_connections: u64,
    /// Webhook events delivered to receivers that answered 2xx, once per event and endpoint
    /// (test events are not counted).
    pub webhook_events: u64,
}

impl UsageFigures {
    /// Adds a later part of the same period (peaks of one node-hour were already combined).
    fn add(&mut self, b: &UsageBucket) {
        self.messages_published += b.messages_published;
        self.messages_delivered += b.messages_delivered;
        self.bytes_in += b.bytes_in;
        self.bytes_out += b.bytes_out;
        self.connection_minutes += b.connection_ms as f64 / 60_000.0;
        self.webhook_events += b.webhook_events;
        self.peak_connections = self.peak_connections.max(b.peak_connections);
    }

    /// Adds another period: counters sum, peaks take the maximum.
    fn absorb(&mut self, p: &UsageFigures) {
        self.messages_published += p.messages_published;
        self.messages_delivered += p.messages_delivered;
        self.bytes_in += p.bytes_in;
        self.bytes_out += p.bytes_out;
        self.connection_minutes += p.connection_minutes;
        self.webhook_events += p.webhook_events;
        self.peak_connections = self.peak_connections.max(p.peak_connections);
    }
}

/// One period of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsagePoint {
    /// Start of the period (UTC).
    pub start: DateTime<Utc>,
    #[serde(flatten)]
    pub figures: UsageFigures,
}

/// One app's usage over the range: totals and the periods that saw any usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppUsageSeries {
    pub app_id: String,
    pub totals: UsageFigures,
    /// Periods with usage, oldest first; periods without any are left out.
    pub series: Vec<UsagePoint>,
}

/// `GET /v1/tenants/{tenant_id}/usage`: per-app series over `[from, to)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantUsage {
    pub tenant_id: String,
    /// Start of the window these figures cover (inclusive), after defaults and rounding: with
    /// no query, the start of the hour 24 hours ago.
    pub from: DateTime<Utc>,
    /// End of the window these figures cover (exclusive), after defaults and rounding: with no
    /// query, the end of the hour in progress.
    pub to: DateTime<Utc>,
    pub granularity: Granularity,
    /// Sums over the tenant's apps (peak: the highest app peak).
    pub totals: UsageFigures,
    /// Every current app (possibly without usage), and deleted apps that had usage in range.
    pub apps: Vec<AppUsageSeries>,
}

/// A tenant over one of its quotas in some recent hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OverQuota {
    pub tenant_id: String,
    pub name: String,
    /// Start of the hour in which the quota was exceeded.
    pub hour_start: DateTime<Utc>,
    /// Sum of the tenant's apps' peaks in that hour.
    pub peak_connections: u64,
    pub max_connections: u32,
    /// Messages published in that hour divided by its elapsed seconds.
    pub messages_per_s: f64,
    pub max_messages_per_s: u32,
    /// `connections` and/or `message_rate`.
    pub exceeded: Vec<String>,
}

fn floor_to(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

/// Seconds of `t` rounded up: an instant past a whole second belongs to the next one, so an
/// end at 12:00:00.5 still covers the 12:00 hour.
fn ceil_seconds(t: DateTime<Utc>) -> i64 {
    t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0)
}

/// The window `[from, to)` (Unix seconds, whole periods) a usage query covers at `now`.
///
/// Defaults: `to` is the end of the period in progress (the current hour or UTC day counts
/// even at its first instant), `from` is 24 hours before `to`, or before `now` when `to` is
/// absent too. Given bounds round outwards: `from` down, `to` up.
pub fn usage_window(query: &UsageQuery, now: DateTime<Utc>) -> Result<(i64, i64)> {
    let step = query.granularity.unwrap_or_default().seconds();
    let to = query.to.unwrap_or(now);
    let from = query.from.unwrap_or(to - TimeDelta::hours(24));
    if from >= to {
        return Err(Error::invalid("`from` must be before `to`"));
    }
    if to - from > TimeDelta::days(MAX_RANGE_DAYS) {
        return Err(Error::invalid(format!("a usage range spans at most {MAX_RANGE_DAYS} days")));
    }
    let from_s = floor_to(from.timestamp(), step);
    let to_s = match query.to {
        Some(to) => floor_to(ceil_seconds(to) + step - 1, step),
        None => floor_to(now.timestamp(), step) + step,
    };
    Ok((from_s, to_s))
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

fn sat(n: u64) -> u64 {
    n.min(i64::MAX as u64)
}

impl ControlPlaneState {
    /// Stores one batch a node reported, at most once per `(node_id, seq)`. `true` if it was
    /// counted now, `false` if it had been already (a retry). The `ReportUsage` RPC and
    /// in-process reporting (`aviary dev`) both come here.
    pub async fn ingest_usage(&self, node_id: &str, seq: u64, records: &[UsageRecord]) -> Result<bool> {
        if node_id.is_empty() || node_id.len() > 128 {
            return Err(Error::invalid("node_id must be 1..=128 bytes"));
        }
        if records.len() > MAX_RECORDS_PER_BATCH {
            return Err(Error::invalid(format!("a batch holds at most {MAX_RECORDS_PER_BATCH} records")));
        }
        for r in records {
            if r.tenant_id.is_empty() || r.app_id.is_empty() || r.tenant_id.len() > 128 || r.app_id.len() > 128 {
                return Err(Error::invalid("usage records need a tenant_id and app_id of 1..=128 bytes"));
            }
            if r.to_ms < r.from_ms {
                return Err(Error::invalid("usage record window ends before it starts"));
            }
        }
        let applied = self.store().record_usage(node_id, seq, records).await?;
        let result = if applied { "applied" } else { "duplicate" };
        metrics::counter!("aviary_usage_batches_total", "result" => result).increment(1);
        if applied {
            for r in records {
                let labels = [("tenant", r.tenant_id.clone()), ("app", r.app_id.clone())];
                metrics::counter!("aviary_usage_messages_published_total", &labels)
                    .increment(sat(r.messages_published));
                metrics::counter!("aviary_usage_messages_delivered_total", &labels)
                    .increment(sat(r.messages_delivered));
                metrics::counter!("aviary_usage_bytes_in_total", &labels).increment(sat(r.bytes_in));
                metrics::counter!("aviary_usage_bytes_out_total", &labels).increment(sat(r.bytes_out));
                metrics::counter!("aviary_usage_webhook_events_total", &labels).increment(sat(r.webhook_events));
                metrics::counter!("aviary_usage_connection_seconds_total", &labels).increment(r.connection_ms / 1000);
            }
        } else {
            tracing::debug!(node_id, seq, "usage batch already recorded");
        }
        Ok(applied)
    }

    /// A tenant's usage per app over a range, by hour or UTC day.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
    pub async fn tenant_usage(&self, admin: &TenantAdmin, tenant_id: &str, query: &UsageQuery) -> Result<TenantUsage> {
        admin.check(tenant_id, "tenant")?;
        let granularity = query.granularity.unwrap_or_default();
        let step = granularity.seconds();
        let (from_s, to_s) = usage_window(query, self.now())?;
        self.existing_tenant_for_usage(tenant_id).await?;
        let buckets = self.store().usage_buckets(Some(tenant_id), from_s, to_s).await?;

        let mut per_app: BTreeMap<String, BTreeMap<i64, UsageFigures>> = BTreeMap::new();
        for app in self.tenant_apps(tenant_id).await? {
            per_app.entry(app.id).or_default();
        }
        for b in &buckets {
            per_app.entry(b.app_id.clone()).or_default().entry(floor_to(b.hour_start, step)).or_default().add(b);
        }
        let mut totals = UsageFigures::default();
        let apps = per_app
            .into_iter()
            .map(|(app_id, periods)| {
                let mut app_totals = UsageFigures::default();
                let series = periods
                    .into_iter()
                    .map(|(start, figures)| {
                        app_totals.absorb(&figures);
                        UsagePoint { start: at(start), figures }
                    })
                    .collect();
                totals.absorb(&app_totals);
                AppUsageSeries { app_id, totals: app_totals, series }
            })
            .collect();
        Ok(TenantUsage { tenant_id: tenant_id.to_owned(), from: at(from_s), to: at(to_s), granularity, totals, apps })
    }

    async fn existing_tenant_for_usage(&self, tenant_id: &str) -> Result<Tenant> {
        self.store().tenant(tenant_id).await?.ok_or(Error::NotFound("tenant"))
    }

    /// Tenants over a quota in the current or the previous hour (operator view).
    ///
    /// The rule: in an hour, the tenant's connections are the sum of its apps' peaks (see the
    /// module docs) and its message rate is the messages published in the hour divided by the
    /// hour's elapsed seconds (3600 for the previous hour, the time so far for the current
    /// one, at least 60 s). A tenant is listed once per hour in which either exceeds its
    /// `max_connections` or `max_messages_per_s`. Averages hide short bursts: the data plane
    /// enforces the per-second limit live; this list is for billing and follow-up.
    pub async fn over_quota(&self, now: DateTime<Utc>) -> Result<Vec<OverQuota>> {
        let now_s = now.timestamp();
        let current = floor_to(now_s, 3600);
        let buckets = self.store().usage_buckets(None, current - 3600, current + 3600).await?;
        let mut per_tenant_hour: BTreeMap<(String, i64), (u64, u64)> = BTreeMap::new();
        for b in &buckets {
            let e = per_tenant_hour.entry((b.tenant_id.clone(), b.hour_start)).or_default();
            e.0 += b.peak_connections;
            e.1 += b.messages_published;
        }
        let mut tenants: HashMap<String, Option<Tenant>> = HashMap::new();
        let mut over = Vec::new();
        for ((tenant_id, hour), (peak, published)) in per_tenant_hour {
            if !tenants.contains_key(&tenant_id) {
                let t = self.store().tenant(&tenant_id).await?;
                tenants.insert(tenant_id.clone(), t);
            }
            let Some(Some(tenant)) = tenants.get(&tenant_id) else { continue };
            let Quotas { max_connections, max_messages_per_s, .. } = tenant.quotas;
            let elapsed = if hour == current { (now_s - current).max(60) } else { 3600 };
            let rate = published as f64 / elapsed as f64;
            let mut exceeded = Vec::new();
            if peak > u64::from(max_connections) {
                exceeded.push("connections".to_owned());
            }
            if rate > f64::from(max_messages_per_s) {
                exceeded.push("message_rate".to_owned());
            }
            if !exceeded.is_empty() {
                over.push(OverQuota {
                    tenant_id,
                    name: tenant.name.clone(),
                    hour_start: at(hour),
                    peak_connections: peak,
                    max_connections,
                    messages_per_s: rate,
                    max_messages_per_s,
                    exceeded,
                });
            }
        }
        Ok(over)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(query: UsageQuery, now: &str) -> (DateTime<Utc>, DateTime<Utc>) {
        let (from, to) = usage_window(&query, t(now)).unwrap();
        (at(from), at(to))
    }

    #[test]
    fn the_default_window_is_the_last_24_hours_and_the_hour_in_progress() {
        for (now, from, to) in [
            ("2026-03-14T00:30:00Z", "2026-03-13T00:00:00Z", "2026-03-14T01:00:00Z"),
            ("2026-03-14T04:30:00Z", "2026-03-13T04:00:00Z", "2026-03-14T05:00:00Z"),
            // At the first instant of an hour, that hour is already in the window.
            ("2026-03-14T12:00:00Z", "2026-03-13T12:00:00Z", "2026-03-14T13:00:00Z"),
            ("2026-03-14T23:59:59.999Z", "2026-03-13T23:00:00Z", "2026-03-15T00:00:00Z"),
        ] {
            assert_eq!(window(UsageQuery::default(), now), (t(from), t(to)), "now {now}");
        }
        let daily = UsageQuery { granularity: Some(Granularity::Day), ..UsageQuery::default() };
        assert_eq!(
            window(daily, "2026-03-14T00:30:00Z"),
            (t("2026-03-13T00:00:00Z"), t("2026-03-15T00:00:00Z")),
            "yesterday and today"
        );
    }

    #[test]
    fn given_bounds_round_outwards_including_a_fraction_of_a_second() {
        let query = |from: &str, to: &str| UsageQuery { from: Some(t(from)), to: Some(t(to)), granularity: None };
        assert_eq!(
            window(query("2026-03-14T03:15:00Z", "2026-03-14T12:00:00Z"), "2030-01-01T00:00:00Z"),
            (t("2026-03-14T03:00:00Z"), t("2026-03-14T12:00:00Z")),
            "an end on the hour excludes that hour"
        );
        assert_eq!(
            window(query("2026-03-14T03:15:00Z", "2026-03-14T12:00:00.500Z"), "2030-01-01T00:00:00Z"),
            (t("2026-03-14T03:00:00Z"), t("2026-03-14T13:00:00Z")),
            "half a second into an hour includes it"
        );
        let only_to = UsageQuery { to: Some(t("2026-03-14T12:00:00Z")), ..UsageQuery::default() };
        assert_eq!(window(only_to, "2030-01-01T00:00:00Z"), (t("2026-03-13T12:00:00Z"), t("2026-03-14T12:00:00Z")));
    }

    #[test]
    fn empty_reversed_and_overlong_windows_are_refused() {
        let now = t("2026-03-14T12:00:00Z");
        let future = UsageQuery { from: Some(t("2026-03-14T12:00:01Z")), ..UsageQuery::default() };
        assert!(usage_window(&future, now).is_err(), "`from` after the implicit `to` (now)");
        let reversed = UsageQuery { from: Some(now), to: Some(now - TimeDelta::hours(1)), granularity: None };
        assert!(usage_window(&reversed, now).is_err());
        let long =
            UsageQuery { from: Some(now - TimeDelta::days(MAX_RANGE_DAYS + 1)), to: Some(now), granularity: None };
        assert!(usage_window(&long, now).is_err());
    }
}
