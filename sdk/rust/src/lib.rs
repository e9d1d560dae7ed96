//! Aviary's Rust server SDK: what an app backend needs to put Aviary behind its own users.
//!
//! - [`Client`] (REST): mint connection tokens for your users ([`Client::mint_token`]), publish
//!   ([`Client::publish`], [`Client::publish_batch`]), read [`history`](Client::history),
//!   [`presence`](Client::presence) and active [`channels`](Client::channels).
//! - `GrpcClient` (feature `grpc`): mint tokens over the control plane's gRPC API.
//! - [`realtime::Connection`]: a WebSocket client (subscribe as a `Stream`, publish, presence).
//!
//! Quick start (a backend minting a token for its logged-in user, then publishing):
//!
//! ```no_run
//! # async fn run() -> Result<(), aviary_sdk::Error> {
//! use aviary_sdk::{Client, TokenRequest};
//! let aviary = Client::new("http://127.0.0.1:8080", std::env::var("AVIARY_API_KEY").unwrap_or_default())?;
//! let token = aviary.mint_token("app_...", &TokenRequest::new("user-42").ttl_s(600)).await?;
//! aviary.publish("app_...", "chat:lobby", &serde_json::json!({"text": "hi"}), None).await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! # Errors and retries
//!
//! REST errors are `application/problem+json`; they surface as [`Error::Api`] (branch on
//! [`Error::kind`]: `forbidden`, `not-found`...) or [`Error::RateLimited`]. Idempotent calls
//! (reads, token minting, and publishes carrying an idempotency key) are retried after connection
//! errors, 5xx and 429 with capped exponential backoff and full jitter, waiting exactly the
//! server's `Retry-After` when it sends one ([`RetryPolicy`]).
//!
//! **Publishes get a random idempotency key by default** so these retries never publish twice;
//! pass your own key (an order or event id) to make your application's own retries safe too, or
//! turn generation off with [`ClientBuilder::auto_idempotency_keys`] (key-less publishes are then
//! sent once, never retried).

#![warn(missing_docs)]

mod client;
mod error;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod realtime;
mod retry;
mod types;

pub use client::{Client, ClientBuilder, new_idempotency_key};
pub use error::{Error, PROBLEM_TYPE_PREFIX, Result};
#[cfg(feature = "grpc")]
pub use grpc::GrpcClient;
pub use retry::RetryPolicy;
pub use types::{
    BatchMessage, BatchResult, Capabilities, ChannelInfo, History, IssuedToken, Operation, PresenceMember, Publication,
    StreamPosition, TokenRequest,
};
