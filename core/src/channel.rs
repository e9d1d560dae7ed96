//! Channel names: what is a valid one and which namespace it belongs to.
//!
//! A channel name is what a client sees (`chat:lobby`); inside the data plane every channel is
//! keyed by `(app_id, name)`, so two apps with the same channel name never meet.

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Characters allowed in a channel name. `*` is reserved for capability globs.
fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '@' | '=' | ',' | '/' | '#' | '!' | '~')
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name contains {0:?}; allowed: letters, digits and _-:.@=,/#!~")]
    BadChar(char),
}

/// Checks a concrete channel name (no wildcards).
pub fn validate_channel(name: &str) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelNameError::TooLong);
    }
    match name.chars().find(|c| !is_channel_char(*c)) {
        Some(c) => Err(ChannelNameError::BadChar(c)),
        None => Ok(()),
    }
}

/// The namespace of a channel: the part before the first `:`, or `""` (the default namespace).
pub fn namespace_of(channel: &str) -> &str {
    channel.split_once(':').map(|(ns, _)| ns).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_the_prefix_before_the_first_colon() {
        assert_eq!(namespace_of("chat:room:1"), "chat");
        assert_eq!(namespace_of("lobby"), "");
    }

    #[test]
    fn rejects_wildcards_spaces_and_overlong_names() {
        assert_eq!(validate_channel("a*"), Err(ChannelNameError::BadChar('*')));
        assert_eq!(validate_channel("a b"), Err(ChannelNameError::BadChar(' ')));
        assert_eq!(validate_channel(""), Err(ChannelNameError::Empty));
        assert_eq!(validate_channel(&"x".repeat(256)), Err(ChannelNameError::TooLong));
        assert!(validate_channel("chat:room-1/user@x.y").is_ok());
    }
}
