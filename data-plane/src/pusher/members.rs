//! A Pusher presence subscription's view of the member list: Pusher announces *users*
//! (`member_added` when a user's first connection enters, `member_removed` when its last one
//! leaves), Aviary's engine announces *connections*. One [`Members`] per subscription turns the
//! second into the first.
//!
//! The hub feeds it every presence change of the channel from the moment the subscription
//! joins the fan-out; until the subscribing connection has read the member list and
//! [`Members::seed`]ed it, changes are kept aside, then applied after the snapshot. Applying is
//! idempotent (a join of a connection already known, or a leave of an unknown one, changes
//! nothing), so a change that is both in the snapshot and among those kept aside counts once.

use std::collections::{BTreeMap, BTreeSet};

use aviary_broker::{PresenceAction, PresenceMember};
use serde_json::Value;

use super::frames;

/// Users of one presence channel as one subscriber has announced them.
#[derive(Debug, Default)]
pub struct Members {
    /// The channel's Pusher name, for the frames.
    channel: String,
    seeded: bool,
    pending: Vec<(PresenceAction, PresenceMember)>,
    /// User id -> (its connections, its latest user_info).
    users: BTreeMap<String, (BTreeSet<String>, Value)>,
}

impl Members {
    pub fn new(channel: &str) -> Self {
        Members { channel: channel.to_owned(), ..Members::default() }
    }

    /// Applies one change; returns the frame to send, if the change is one Pusher announces.
    pub fn apply(&mut self, action: PresenceAction, member: &PresenceMember) -> Option<String> {
        if !self.seeded {
            self.pending.push((action, member.clone()));
            return None;
        }
        self.change(action, member)
    }

    fn change(&mut self, action: PresenceAction, member: &PresenceMember) -> Option<String> {
        let info = member.data.clone().unwrap_or(Value::Null);
        match action {
            PresenceAction::Join | PresenceAction::Update => {
                let (connections, user_info) = self.users.entry(member.client_id.clone()).or_default();
                let first = connections.is_empty();
                connections.insert(member.connection_id.clone());
                *user_info = info.clone();
                first.then(|| frames::member_added(&self.channel, &member.client_id, &info))
            }
            PresenceAction::Leave => {
                let (connections, _) = self.users.get_mut(&member.client_id)?;
                if !connections.remove(&member.connection_id) || !connections.is_empty() {
                    return None;
                }
                self.users.remove(&member.client_id);
                Some(frames::member_removed(&self.channel, &member.client_id))
            }
        }
    }

    /// Takes the member list read after joining the fan-out; returns the
    /// `subscription_succeeded` frame, then the frames of the changes kept aside meanwhile.
    pub fn seed(&mut self, members: &[PresenceMember]) -> Vec<String> {
        for m in members {
            let (connections, info) = self.users.entry(m.client_id.clone()).or_default();
            connections.insert(m.connection_id.clone());
            *info = m.data.clone().unwrap_or(Value::Null);
        }
        let list: Vec<(String, Value)> = self.users.iter().map(|(id, (_, info))| (id.clone(), info.clone())).collect();
        let mut out = vec![frames::subscription_succeeded(&self.channel, Some(&list))];
        self.seeded = true;
        for (action, member) in std::mem::take(&mut self.pending) {
            out.extend(self.change(action, &member));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn m(user: &str, conn: &str) -> PresenceMember {
        PresenceMember { client_id: user.into(), connection_id: conn.into(), data: Some(json!({ "name": user })) }
    }

    fn event(frame: &str) -> (String, Value) {
        let v: Value = serde_json::from_str(frame).unwrap();
        (v["event"].as_str().unwrap().to_owned(), serde_json::from_str(v["data"].as_str().unwrap()).unwrap())
    }

    #[test]
    fn users_are_announced_once_whatever_their_number_of_connections() {
        let mut book = Members::new("presence-a");
        // Kept aside until seeded; the join of c1 is also in the snapshot.
        assert_eq!(book.apply(PresenceAction::Join, &m("ada", "c1")), None);
        assert_eq!(book.apply(PresenceAction::Join, &m("bob", "c3")), None);
        let frames = book.seed(&[m("ada", "c1")]);
        assert_eq!(frames.len(), 2, "{frames:?}");
        let (name, data) = event(&frames[0]);
        assert_eq!(name, "pusher_internal:subscription_succeeded");
        assert_eq!(data["presence"]["ids"], json!(["ada"]));
        assert_eq!(
            event(&frames[1]),
            ("pusher_internal:member_added".into(), json!({"user_id": "bob", "user_info": {"name": "bob"}}))
        );
        assert_eq!(book.apply(PresenceAction::Join, &m("ada", "c2")), None, "a second connection of ada");
        assert_eq!(book.apply(PresenceAction::Leave, &m("ada", "c1")), None, "ada is still there");
        assert_eq!(book.apply(PresenceAction::Leave, &m("ada", "c9")), None, "unknown connection");
        let removed = book.apply(PresenceAction::Leave, &m("ada", "c2")).expect("ada's last connection left");
        assert_eq!(event(&removed), ("pusher_internal:member_removed".into(), json!({"user_id": "ada"})));
        assert_eq!(book.apply(PresenceAction::Leave, &m("ada", "c2")), None, "a repeated leave");
    }
}
