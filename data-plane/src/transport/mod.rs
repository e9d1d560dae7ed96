//! Transports: move bytes between a socket and a [`crate::session::Session`].
//!
//! They own framing, heartbeats and the farewell on close, and nothing else: every protocol
//! decision (auth, capabilities, quotas) is the session's.

pub mod sse;
pub mod ws;

use std::time::Duration;

use tokio::time::Instant;

/// The `Instant` at which a token with `exp` (Unix seconds) expires, measured on this node's
/// clock.
pub(crate) fn expiry_instant(exp: i64) -> Instant {
    let remaining_ms = exp.saturating_mul(1000).saturating_sub(aviary_core::unix_now_ms()).max(0);
    Instant::now() + Duration::from_millis(remaining_ms as u64)
}
