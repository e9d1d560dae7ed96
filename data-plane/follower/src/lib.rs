//! How config arrives on a data-plane node, and how its usage leaves: everything a node runs
//! to follow the control plane (it runs nowhere else).
//!
//! - [`link`]: [`ControlPlaneLink`], the control plane's gRPC URL and, for `https://`, the CA
//!   to trust (`--control-plane-ca`); every client below connects through one link.
//! - [`follower`]: [`ConfigFollower`] follows the `Watch` stream into the node's
//!   `aviary_core::Registry`, keeps the config cache file, and serves from it when the control
//!   plane is unreachable at start (static stability); [`RemoteApiKeyAuthority`] checks app API
//!   keys with the control plane (`VerifyApiKey`) for REST publish on the node.
//! - [`reporter`]: [`UsageReporter`] drains the node's `UsageMeter` into a [`UsageSink`]
//!   ([`GrpcUsageSink`]: `ReportUsage`), exactly once per batch.
//!
//! The wire messages and their conversions come from `aviary-proto`, the same functions the
//! control plane encodes with. This crate does not depend on `aviary-control-plane`: a node
//! knows the control plane only as a gRPC peer.
//!
//! Invariants: the node's registry is never cleared on a disconnect (the last known config
//! stays in force); a delta is applied only right after the version it follows, else the
//! stream starts over with a snapshot; token verification never calls the control plane.

pub mod error;
pub mod follower;
pub mod link;
pub mod reporter;

pub use error::{Error, Result};
pub use follower::{ConfigFollower, ConfigSource, FollowerConfig, FollowerStatus, RemoteApiKeyAuthority};
pub use link::ControlPlaneLink;
pub use reporter::{GrpcUsageSink, UsageReporter, UsageSink};
