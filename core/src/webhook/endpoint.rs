//! A webhook endpoint as a data-plane node holds it: where to send which events of which
//! channels, in which format, signed with which secret.
//!
//! The secret is held in clear in memory because signing needs it; it never appears in `Debug`
//! output and is sealed whenever it leaves a process (the control plane's `sealing` module), like
//! a Pusher secret.

use super::{WebhookEvent, WebhookFormat};

/// One webhook endpoint of an app.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// `whk_...`, unique across apps.
    pub id: String,
    pub app_id: String,
    pub tenant_id: String,
    /// The normalised `http`/`https` URL events are POSTed to.
    pub url: String,
    pub events: Vec<WebhookEvent>,
    /// Channel glob (`*` wildcards); `None` hears every channel.
    pub channels: Option<String>,
    pub format: WebhookFormat,
    /// The signing secret of the `aviary` format (HMAC-SHA256 key). The `pusher` format signs
    /// with the app's Pusher credential instead, as Pusher does.
    pub secret: String,
}

impl WebhookEndpoint {
    /// Does this endpoint want `event` on `channel`?
    pub fn wants(&self, event: WebhookEvent, channel: &str) -> bool {
        self.events.contains(&event)
            && self.channels.as_deref().is_none_or(|glob| crate::capability::glob_matches_channel(glob, channel))
    }
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("app_id", &self.app_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("channels", &self.channels)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(channels: Option<&str>) -> WebhookEndpoint {
        WebhookEndpoint {
            id: "whk_1".into(),
            app_id: "app_1".into(),
            tenant_id: "ten_1".into(),
            url: "https://hooks.example.com/".into(),
            events: vec![WebhookEvent::ChannelOccupied],
            channels: channels.map(str::to_owned),
            format: WebhookFormat::Aviary,
            secret: "s3cr3t-value".into(),
        }
    }

    #[test]
    fn wants_its_events_on_matching_channels_only() {
        let all = endpoint(None);
        assert!(all.wants(WebhookEvent::ChannelOccupied, "anything"));
        assert!(!all.wants(WebhookEvent::ChannelVacated, "anything"));
        let chat = endpoint(Some("chat:*"));
        assert!(chat.wants(WebhookEvent::ChannelOccupied, "chat:lobby"));
        assert!(!chat.wants(WebhookEvent::ChannelOccupied, "news:today"));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        assert!(!format!("{:?}", endpoint(None)).contains("s3cr3t"));
    }
}
