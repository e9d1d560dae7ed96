//! A Pusher credential as the data plane holds it: the public key clients connect with, the
//! secret backends sign with, and what it grants.
//!
//! Pusher's model has one numeric `app_id` per app and any number of key/secret pairs. Aviary
//! maps that onto its own apps: every Aviary app that has Pusher credentials gets one numeric
//! `pusher_app_id` (the `app_id` Pusher server SDKs put in their URLs; several SDKs accept
//! digits only), and each credential is one key/secret pair of that app.
//!
//! The secret is held in memory in clear because verifying an HMAC needs it; it never appears
//! in `Debug` output, and it is sealed whenever it leaves a process (see [`crate::sealing`]).

use crate::capability::Capabilities;

/// One live Pusher key/secret pair of an app.
#[derive(Clone, PartialEq, Eq)]
pub struct PusherCredential {
    /// The public key (`/app/{key}`, `auth_key`); 20 lowercase hex characters.
    pub key: String,
    /// The Aviary app whose channels the credential reaches.
    pub app_id: String,
    pub tenant_id: String,
    /// The numeric id Pusher server SDKs use in `/apps/{app_id}/...`.
    pub pusher_app_id: u64,
    /// The signing secret (HMAC-SHA256 key).
    pub secret: String,
    /// What connections and API calls under this credential may do (Aviary channel names).
    pub capabilities: Capabilities,
    /// Whether clients may send `client-*` events (Pusher's per-app switch).
    pub client_events: bool,
}

impl std::fmt::Debug for PusherCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("PusherCredential")
            .field("key", &self.key)
            .field("app_id", &self.app_id)
            .field("pusher_app_id", &self.pusher_app_id)
            .field("client_events", &self.client_events)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_secret() {
        let c = PusherCredential {
            key: "0123456789abcdef0123".into(),
            app_id: "app_1".into(),
            tenant_id: "ten_1".into(),
            pusher_app_id: 42,
            secret: "s3cr3t-value".into(),
            capabilities: Capabilities::all(),
            client_events: false,
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
