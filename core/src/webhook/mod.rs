//! Webhooks: what the control plane (which manages endpoints) and the delivery side share.
//!
//! A webhook endpoint tells a tenant's backend what happens in an app's channels. The event
//! names are Pusher's, so receivers written for Pusher read them unchanged. This module holds
//! the pieces that are not I/O: the event and format names ([`WebhookEvent`],
//! [`WebhookFormat`]), the endpoint a node holds ([`WebhookEndpoint`]), which target
//! addresses may be called ([`target`]) and delivery attempts with the seam the control plane
//! tests endpoints and reads attempts through ([`attempt`]).

pub mod attempt;
pub mod endpoint;
pub mod target;

pub use attempt::{AttemptedEvent, DeliveriesUnavailable, DeliveryAttempt, WebhookDeliveries};
pub use endpoint::WebhookEndpoint;

use serde::{Deserialize, Serialize};

/// What an endpoint subscribes to. Names as Pusher names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// The first subscriber anywhere in the cluster arrived on a channel.
    ChannelOccupied,
    /// The last subscriber anywhere in the cluster left a channel.
    ChannelVacated,
    /// A user (not a connection) joined a presence channel.
    MemberAdded,
    /// A user's last connection left a presence channel.
    MemberRemoved,
    /// A client sent a client event.
    ClientEvent,
    /// A message was published (opt-in, for archiving).
    MessagePublished,
}

impl WebhookEvent {
    /// Every event, in declaration order.
    pub const ALL: [WebhookEvent; 6] = [
        WebhookEvent::ChannelOccupied,
        WebhookEvent::ChannelVacated,
        WebhookEvent::MemberAdded,
        WebhookEvent::MemberRemoved,
        WebhookEvent::ClientEvent,
        WebhookEvent::MessagePublished,
    ];
}

/// How a delivery body is shaped and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Aviary's body, signed with the endpoint's secret in `aviary-signature`.
    Aviary,
    /// Exactly what Pusher sends (`X-Pusher-Key`, `X-Pusher-Signature`), so the Pusher server
    /// SDKs' webhook validation accepts it.
    Pusher,
}

impl WebhookFormat {
    /// The name used in JSON and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Aviary => "aviary",
            WebhookFormat::Pusher => "pusher",
        }
    }

    /// The inverse of [`WebhookFormat::as_str`].
    pub fn parse(text: &str) -> Option<WebhookFormat> {
        match text {
            "aviary" => Some(WebhookFormat::Aviary),
            "pusher" => Some(WebhookFormat::Pusher),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_and_format_names_are_pushers() {
        let names: Vec<String> = WebhookEvent::ALL.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        assert_eq!(
            names,
            [
                "\"channel_occupied\"",
                "\"channel_vacated\"",
                "\"member_added\"",
                "\"member_removed\"",
                "\"client_event\"",
                "\"message_published\""
            ]
        );
        for format in [WebhookFormat::Aviary, WebhookFormat::Pusher] {
            assert_eq!(serde_json::to_string(&format).unwrap(), format!("\"{}\"", format.as_str()));
            assert_eq!(WebhookFormat::parse(format.as_str()), Some(format));
        }
        assert_eq!(WebhookFormat::parse("Pusher"), None);
    }
}
