//! How Pusher channel names reach Aviary channels and namespaces.
//!
//! Pusher names allow `A-Z a-z 0-9 _ - = @ , . ;` (at most 164 characters) and never `:`,
//! Aviary's namespace separator. The mapping changes one character: a `;` in a Pusher name is a
//! `:` in the Aviary name, so `chat;lobby` is the Aviary channel `chat:lobby` in namespace
//! `chat`, and a name without `;` (every name written for Pusher) is in the default namespace.
//! It is a bijection between Pusher names and the Aviary names made of Pusher's characters with
//! `:` for `;`; Aviary channels using `/ # ! ~` have no Pusher name.
//!
//! The kind of a channel (public, private, presence, encrypted, cache) is Pusher's reading of
//! the name's prefix; the Aviary name starts with the same prefix.

/// Longest Pusher channel name (Pusher's limit).
pub const MAX_PUSHER_CHANNEL_LEN: usize = 164;

/// Why a Pusher channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_PUSHER_CHANNEL_LEN} characters")]
    TooLong,
    #[error("channel name contains {0:?}; allowed: letters, digits and _-=@,.;")]
    BadChar(char),
}

fn is_pusher_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

/// The channel a signed-in user's server-to-user events travel on (pusher-js subscribes to
/// `#server-to-user-<user id>` after `pusher:signin`; the server SDKs' `sendToUser` publishes
/// there). The only Pusher name with a `#`, which ordinary names cannot contain.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// The Aviary channel a Pusher channel name means.
pub fn to_aviary(pusher: &str) -> Result<String, NameError> {
    if let Some(user) = pusher.strip_prefix(USER_CHANNEL_PREFIX) {
        return to_aviary(user).map(|user| format!("{USER_CHANNEL_PREFIX}{user}"));
    }
    if pusher.is_empty() {
        return Err(NameError::Empty);
    }
    if pusher.len() > MAX_PUSHER_CHANNEL_LEN {
        return Err(NameError::TooLong);
    }
    if let Some(c) = pusher.chars().find(|c| !is_pusher_char(*c)) {
        return Err(NameError::BadChar(c));
    }
    Ok(pusher.replace(';', ":"))
}

/// The Pusher name of an Aviary channel, or `None` when Pusher clients cannot name it.
pub fn to_pusher(aviary: &str) -> Option<String> {
    if let Some(user) = aviary.strip_prefix(USER_CHANNEL_PREFIX) {
        return to_pusher(user).map(|user| format!("{USER_CHANNEL_PREFIX}{user}"));
    }
    let ok = !aviary.is_empty()
        && aviary.len() <= MAX_PUSHER_CHANNEL_LEN
        && aviary.chars().all(|c| c != ';' && (c == ':' || is_pusher_char(c)));
    ok.then(|| aviary.replace(':', ";"))
}

/// What Pusher makes of a channel by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Anyone with the key may subscribe.
    Public,
    /// `private-`: subscribing needs a channel authorization signature.
    Private,
    /// `private-encrypted-`: private, and the server relays ciphertext it cannot read (clients
    /// may not send client events on it).
    PrivateEncrypted,
    /// `presence-`: private with a member list; the signature covers the member's data.
    Presence,
}

impl ChannelKind {
    /// Reads the kind from a Pusher (or Aviary) channel name.
    pub fn of(name: &str) -> ChannelKind {
        // `private-cache-`, `private-encrypted-cache-` and `presence-cache-` read as their kind.
        if name.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Does subscribing need a channel authorization signature?
    pub fn needs_auth(self) -> bool {
        self != ChannelKind::Public
    }

    /// May clients send `client-*` events on it (when the credential allows client events)?
    pub fn allows_client_events(self) -> bool {
        matches!(self, ChannelKind::Private | ChannelKind::Presence)
    }
}

/// Is this a cache channel (`cache-`, `private-cache-`, `private-encrypted-cache-`,
/// `presence-cache-`), whose last event is sent to every new subscriber?
pub fn is_cache(name: &str) -> bool {
    ["cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-"].iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_semicolon_is_the_namespace_separator() {
        assert_eq!(to_aviary("chat;lobby").unwrap(), "chat:lobby");
        assert_eq!(to_aviary("presence-room;42").unwrap(), "presence-room:42");
        assert_eq!(to_aviary("private-App.Models.User.1").unwrap(), "private-App.Models.User.1");
        assert_eq!(to_aviary("a;b;c").unwrap(), "a:b:c");
        assert_eq!(aviary_core::channel::namespace_of(&to_aviary("chat;lobby").unwrap()), "chat");
        assert_eq!(aviary_core::channel::namespace_of(&to_aviary("orders").unwrap()), "");
    }

    #[test]
    fn the_mapping_round_trips_on_every_name_both_sides_can_spell() {
        for name in ["orders", "chat;lobby", "presence-a;b.c@d=e,f", "x_-1"] {
            assert_eq!(to_pusher(&to_aviary(name).unwrap()).as_deref(), Some(name));
            assert!(aviary_core::channel::validate_channel(&to_aviary(name).unwrap()).is_ok());
        }
        assert_eq!(to_pusher("chat:lobby").as_deref(), Some("chat;lobby"));
        assert_eq!(to_pusher("files/a"), None, "Aviary-only characters have no Pusher name");
        assert_eq!(to_pusher(&"x".repeat(165)), None);
    }

    #[test]
    fn user_channels_keep_their_prefix() {
        assert_eq!(to_aviary("#server-to-user-u;7").unwrap(), "#server-to-user-u:7");
        assert_eq!(to_pusher("#server-to-user-u:7").as_deref(), Some("#server-to-user-u;7"));
        assert_eq!(to_aviary("#server-to-user-"), Err(NameError::Empty));
        assert_eq!(to_aviary("#other"), Err(NameError::BadChar('#')));
        assert_eq!(to_pusher("#other"), None);
    }

    #[test]
    fn pusher_names_refuse_what_pusher_refuses() {
        assert_eq!(to_aviary(""), Err(NameError::Empty));
        assert_eq!(to_aviary("chat:lobby"), Err(NameError::BadChar(':')));
        assert_eq!(to_aviary("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(to_aviary("a*"), Err(NameError::BadChar('*')));
        assert_eq!(to_aviary(&"x".repeat(165)), Err(NameError::TooLong));
        assert!(to_aviary(&"x".repeat(164)).is_ok());
    }

    #[test]
    fn kinds_come_from_the_prefix() {
        assert_eq!(ChannelKind::of("orders"), ChannelKind::Public);
        assert_eq!(ChannelKind::of("cache-prices"), ChannelKind::Public);
        assert_eq!(ChannelKind::of("private-x"), ChannelKind::Private);
        assert_eq!(ChannelKind::of("private-cache-x"), ChannelKind::Private);
        assert_eq!(ChannelKind::of("private-encrypted-x"), ChannelKind::PrivateEncrypted);
        assert_eq!(ChannelKind::of("private-encrypted-cache-x"), ChannelKind::PrivateEncrypted);
        assert_eq!(ChannelKind::of("presence-x"), ChannelKind::Presence);
        assert_eq!(ChannelKind::of("presence-cache-x"), ChannelKind::Presence);
        assert!(ChannelKind::Private.allows_client_events() && ChannelKind::Presence.allows_client_events());
        assert!(!ChannelKind::PrivateEncrypted.allows_client_events() && !ChannelKind::Public.allows_client_events());
        assert!(is_cache("cache-x") && is_cache("presence-cache-x") && !is_cache("private-x"));
    }
}
