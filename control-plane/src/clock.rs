//! Where the control plane reads "now" for usage: the default window of
//! `GET /v1/tenants/{tenant_id}/usage`, the over-quota rule's current hour, and the retention of
//! usage batch ids.
//!
//! Those answers change with the hour, so a test that reads them must be able to pin the hour
//! it runs in; otherwise it passes or fails with the time of day. Production uses
//! [`SystemClock`]; a test sets [`crate::ControlPlaneConfig::clock`] to a closure returning the
//! instant it wants (any `Fn() -> DateTime<Utc>` is a [`Clock`]).

use chrono::{DateTime, Utc};

/// A source of the current UTC time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock: what every process uses unless a test pins another.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

impl<F> Clock for F
where
    F: Fn() -> DateTime<Utc> + Send + Sync + 'static,
{
    fn now(&self) -> DateTime<Utc> {
        self()
    }
}
