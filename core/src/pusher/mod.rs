//! Pusher Channels compatibility: what both planes share.
//!
//! Aviary speaks Pusher's protocol (WebSocket protocol 7 and the HTTP API) as one more front
//! end over the same channels, so existing pusher-js, Laravel Echo and Pusher server SDK code
//! works unchanged. This module holds the pieces that are not I/O: the credential a Pusher
//! client and backend present ([`credential`]) and Pusher's signatures ([`signature`]).

pub mod credential;
pub mod signature;

pub use credential::PusherCredential;
