//! Capabilities: which operations a key or a connection may perform on which channels.
//!
//! A capability set maps a channel glob to operations, e.g.
//! `{"chat:*": ["subscribe", "publish"], "notifications:user-42": ["subscribe"]}`. A glob is a
//! channel name in which `*` stands for any run of characters (including `:` and none at all).
//! Minting a token checks the token's set is a *subset* of the minting key's, so a key can never
//! hand out more than it holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::channel::MAX_CHANNEL_LEN;

/// One thing a client may do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Subscribe,
    Publish,
    Presence,
    History,
}

impl Operation {
    pub const ALL: [Operation; 4] = [Operation::Subscribe, Operation::Publish, Operation::Presence, Operation::History];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Subscribe => "subscribe",
            Operation::Publish => "publish",
            Operation::Presence => "presence",
            Operation::History => "history",
        }
    }
}

/// Why a capability set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("capability glob {0:?} is empty or longer than 255 bytes")]
    BadLength(String),
    #[error("capability glob {glob:?} contains {ch:?}; allowed: letters, digits, _-:.@=,/#!~ and *")]
    BadChar { glob: String, ch: char },
    #[error("capability glob {0:?} lists no operations")]
    NoOperations(String),
    #[error("at most {0} capability globs are allowed")]
    TooMany(usize),
}

/// Most globs one capability set may hold; keeps subset checks and token sizes bounded.
pub const MAX_GLOBS: usize = 64;

/// A map from channel glob to the operations allowed on matching channels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = BTreeMap<String, Vec<Operation>>, example = json!({"chat:*": ["subscribe", "publish", "presence", "history"]}))]
pub struct Capabilities(pub BTreeMap<String, BTreeSet<Operation>>);

impl Capabilities {
    /// Everything on every channel.
    pub fn all() -> Self {
        Capabilities(BTreeMap::from([("*".to_owned(), Operation::ALL.into_iter().collect())]))
    }

    /// Builds a set from `(glob, ops)` pairs; handy in tests and examples.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [Operation])>) -> Self {
        Capabilities(pairs.into_iter().map(|(g, ops)| (g.to_owned(), ops.iter().copied().collect())).collect())
    }

    /// Checks every glob is well formed and lists at least one operation.
    pub fn validate(&self) -> Result<(), CapabilityError> {
        if self.0.len() > MAX_GLOBS {
            return Err(CapabilityError::TooMany(MAX_GLOBS));
        }
        for (glob, ops) in &self.0 {
            if glob.is_empty() || glob.len() > MAX_CHANNEL_LEN {
                return Err(CapabilityError::BadLength(glob.clone()));
            }
            if let Some(ch) =
                glob.chars().find(|c| *c != '*' && crate::channel::validate_channel(&c.to_string()).is_err())
            {
                return Err(CapabilityError::BadChar { glob: glob.clone(), ch });
            }
            if ops.is_empty() {
                return Err(CapabilityError::NoOperations(glob.clone()));
            }
        }
        Ok(())
    }

    /// May `op` be performed on the concrete channel `channel`?
    pub fn allows(&self, channel: &str, op: Operation) -> bool {
        self.0.iter().any(|(glob, ops)| ops.contains(&op) && glob_matches(glob.as_bytes(), channel.as_bytes(), false))
    }

    /// Is every (glob, operation) in `self` also granted by `other`?
    ///
    /// Per operation, some glob of `other` granting it must match every channel the glob of
    /// `self` matches (language inclusion, decided exactly for `*`-only globs).
    pub fn is_subset_of(&self, other: &Capabilities) -> bool {
        self.0.iter().all(|(glob, ops)| {
            ops.iter().all(|op| {
                other.0.iter().any(|(outer, outer_ops)| {
                    outer_ops.contains(op) && glob_matches(outer.as_bytes(), glob.as_bytes(), true)
                })
            })
        })
    }
}

/// Does the channel glob `glob` (`*` wildcards, the syntax of capability globs) match the
/// concrete channel `channel`? (Webhook endpoints filter channels with it.)
pub fn glob_matches_channel(glob: &str, channel: &str) -> bool {
    glob_matches(glob.as_bytes(), channel.as_bytes(), false)
}

/// Matches `pattern` (with `*` wildcards) against `text`.
///
/// With `text_is_glob`, `text` is itself a glob: its `*` may only be matched by a `*` of the
/// pattern, which makes this a test of "every channel `text` matches, `pattern` matches too".
/// Iterative with one backtrack point, so it runs in O(len(pattern) * len(text)) at worst.
fn glob_matches(pattern: &[u8], text: &[u8], text_is_glob: bool) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] && !(text_is_glob && text[t] == b'*' && pattern[p] != b'*')
        {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::*;

    fn caps(pairs: &[(&str, &[Operation])]) -> Capabilities {
        Capabilities::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn globs_match_any_run_of_characters() {
        let c = caps(&[("chat:*", &[Subscribe]), ("notifications:user-42", &[Subscribe, History])]);
        assert!(c.allows("chat:lobby", Subscribe));
        assert!(c.allows("chat:", Subscribe));
        assert!(!c.allows("chat:lobby", Publish));
        assert!(!c.allows("chatroom", Subscribe));
        assert!(c.allows("notifications:user-42", History));
        assert!(!c.allows("notifications:user-43", Subscribe));
        assert!(caps(&[("a*b*c", &[Publish])]).allows("axxbyyc", Publish));
        assert!(!caps(&[("a*b*c", &[Publish])]).allows("axxbyy", Publish));
    }

    #[test]
    fn subset_requires_every_operation_to_be_covered() {
        let key = caps(&[("chat:*", &[Subscribe, Publish]), ("news", &[Subscribe])]);
        assert!(caps(&[("chat:room-*", &[Publish])]).is_subset_of(&key));
        assert!(caps(&[("chat:*", &[Subscribe]), ("news", &[Subscribe])]).is_subset_of(&key));
        assert!(!caps(&[("chat:*", &[History])]).is_subset_of(&key));
        assert!(!caps(&[("*", &[Subscribe])]).is_subset_of(&key));
        assert!(!caps(&[("news*", &[Subscribe])]).is_subset_of(&key));
        assert!(!caps(&[("c*", &[Subscribe])]).is_subset_of(&key));
        assert!(Capabilities::default().is_subset_of(&key));
        assert!(key.is_subset_of(&Capabilities::all()));
    }

    #[test]
    fn validation_rejects_bad_globs() {
        assert!(caps(&[("chat:*", &[Subscribe])]).validate().is_ok());
        assert!(matches!(caps(&[("chat room", &[Subscribe])]).validate(), Err(CapabilityError::BadChar { .. })));
        assert!(matches!(caps(&[("", &[Subscribe])]).validate(), Err(CapabilityError::BadLength(_))));
        assert!(matches!(caps(&[("x", &[])]).validate(), Err(CapabilityError::NoOperations(_))));
    }

    #[test]
    fn unknown_operations_fail_to_parse() {
        let err = serde_json::from_str::<Capabilities>(r#"{"chat:*":["admin"]}"#);
        assert!(err.is_err());
    }
}
