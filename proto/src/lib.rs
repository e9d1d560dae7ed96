//! The wire between the control plane and everything that talks to it over gRPC: the service
//! `aviary.v1.ControlPlane`, defined once in `proto/aviary/v1/control_plane.proto`.
//!
//! - [`pb`]: the generated messages, server and client (tonic/prost).
//! - [`convert`]: `aviary-core`'s config types to and from their wire form. The control plane
//!   (`aviary-control-plane`, which serves the stream) and a data-plane node
//!   (`aviary-follower`, which applies it) convert through the same functions, so the two sides
//!   cannot disagree about a field.
//!
//! Invariants: no I/O and no state; a conversion that cannot succeed (an unknown name from a
//! newer peer, a secret that does not open) says so in its return type, never by panicking.
//! The Rust SDK compiles the same `.proto` file (`sdk/rust/proto` is a symlink to this crate's),
//! client only.

pub mod convert;

/// Generated messages, server and client.
pub mod pb {
    tonic::include_proto!("aviary.v1");
}

pub use pb::control_plane_client::ControlPlaneClient;
pub use pb::control_plane_server::ControlPlaneServer;

/// Largest message a node accepts from the control plane (a config snapshot of many apps).
pub const NODE_MAX_RECEIVE_BYTES: usize = 256 * 1024 * 1024;
