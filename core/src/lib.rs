//! Types both Aviary planes share.
//!
//! The control plane writes them (apps, quotas, signing keys, capabilities) and the data plane reads
//! them on its hot path; keeping them in one crate means the two planes cannot disagree about what
//! a capability glob matches or how a connection token is verified. This crate does no I/O.

pub mod auth;
pub mod capability;
pub mod channel;
pub mod client_addr;
pub mod config;
pub mod failures;
pub mod json;
pub mod openapi;
pub mod problem;
pub mod pusher;
pub mod sealing;
pub mod token;
pub mod usage;
pub mod webhook;

pub use auth::{ApiKeyAuthority, ApiKeyError, VerifiedApiKey};
pub use capability::{Capabilities, Operation};
pub use client_addr::ClientAddr;
pub use config::{AppConfig, ConfigEvent, Namespace, Quotas, Registry};
pub use failures::FailureLimiter;
pub use pusher::PusherCredential;
pub use token::{ConnectionClaims, SigningKey, TokenError};

/// Seconds since the Unix epoch, the unit every timestamp in tokens and config uses.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Milliseconds since the Unix epoch (publication timestamps).
pub fn unix_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
