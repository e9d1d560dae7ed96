//! The Redis plumbing every Redis-backed part of this crate shares: a lazily connecting,
//! self-reconnecting command connection per URL, the timeout every call is bounded by, and the
//! mapping of Redis failures to [`BrokerError`] (counted in [`BROKER_ERRORS`]).

use std::time::Duration;

use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::BrokerError;

/// Upper bound on any one Redis round trip, so callers learn quickly that Redis is down.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on establishing a connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect backoff bounds (the pub/sub connection; the command connection's longest delay).
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Failed Redis calls (counter). Labels: kind (`unavailable`: connection, timeout or a
/// transient server state; `internal`: anything else).
pub const BROKER_ERRORS: &str = "aviary_broker_errors_total";

/// Describes this crate's series (their Prometheus `# HELP` lines) and registers the error
/// counters at zero, so dashboards and alerts see the series before the first error.
pub fn describe_metrics() {
    metrics::describe_counter!(
        BROKER_ERRORS,
        "Failed Redis calls of the broker, quotas and channel counts, by kind (unavailable: connection, timeout \
         or transient server state; internal: anything else)."
    );
}

pub(crate) fn register_error_counters() {
    for kind in ["unavailable", "internal"] {
        metrics::counter!(BROKER_ERRORS, "kind" => kind).increment(0);
    }
}

/// Counts a failed Redis call and passes the error on.
pub(crate) fn counted(error: BrokerError) -> BrokerError {
    let kind = if matches!(error, BrokerError::Unavailable(_)) { "unavailable" } else { "internal" };
    metrics::counter!(BROKER_ERRORS, "kind" => kind).increment(1);
    error
}

/// Awaits a Redis call with [`COMMAND_TIMEOUT`], mapping failures to [`BrokerError`] (and
/// counting them in [`BROKER_ERRORS`]).
pub(crate) async fn with_timeout<T>(call: impl Future<Output = Result<T, RedisError>>) -> Result<T, BrokerError> {
    settle(tokio::time::timeout(COMMAND_TIMEOUT, call).await)
}

/// Whether a command failed because its connection was gone (Redis restarted, a stale socket):
/// the connection manager reconnects, so a command that is safe to repeat may be sent again.
pub(crate) fn connection_lost(outcome: &Result<Result<impl Sized, RedisError>, tokio::time::error::Elapsed>) -> bool {
    matches!(outcome, Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error())
}

pub(crate) fn settle<T>(outcome: Result<Result<T, RedisError>, tokio::time::error::Elapsed>) -> Result<T, BrokerError> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(counted(map_error(&e))),
        Err(_) => Err(counted(BrokerError::Unavailable("Redis did not answer in time".into()))),
    }
}

/// Connection-level and transient server errors mean "try again later"; anything else (a
/// script or type error) is a bug worth surfacing as internal.
fn map_error(e: &RedisError) -> BrokerError {
    const TRANSIENT: [&str; 7] = ["LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "MOVED"];
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.code().is_some_and(|code| TRANSIENT.contains(&code));
    if transient { BrokerError::Unavailable(e.to_string()) } else { BrokerError::Internal(e.to_string()) }
}

/// A client and a lazily connecting, self-reconnecting command connection for one Redis URL,
/// with short timeouts so an unreachable Redis is reported quickly.
pub(crate) fn connect_lazy(url: &str, index: usize) -> Result<(redis::Client, ConnectionManager), BrokerError> {
    let client =
        redis::Client::open(url).map_err(|e| BrokerError::Internal(format!("invalid Redis URL #{index}: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(MAX_BACKOFF);
    let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| BrokerError::Internal(format!("Redis connection manager #{index}: {e}")))?;
    Ok((client, commands))
}
