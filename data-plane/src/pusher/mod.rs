//! The Pusher Channels front end (protocol 7), being built in layers (`docs/pusher.md` has the
//! status). Like the WebSocket, SSE and REST front ends it holds no rules: it decodes Pusher's
//! words, calls the operations in `crate::ops`, and encodes the answers in Pusher's words.
//!
//! - [`names`]: Pusher channel names ↔ Aviary channels (a `;` is a `:`), and the channel kinds
//!   Pusher derives from a name's prefix.
//! - [`data`]: an event's `data` between Pusher (a string) and Aviary (a JSON value).
//! - [`frames`]: the protocol-7 frames, decoded from clients and encoded for them, and Pusher's
//!   error codes.
//! - [`http`]: Pusher's HTTP API (`/apps/{app_id}/...`), signed with a credential's secret.
//! - [`socket`]: the WebSocket endpoint `/app/{key}` (transport, activity timeout, closes);
//!   `connection`: one Pusher connection, its frames turned into operations; `members`: a
//!   presence subscription's users (Pusher announces users, the engine connections).

pub(crate) mod connection;
pub mod data;
pub mod frames;
pub mod http;
pub(crate) mod members;
pub mod names;
pub mod socket;
