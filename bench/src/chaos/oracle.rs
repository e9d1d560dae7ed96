//! The oracle: every event of the workload is reported here as it happens and checked at once
//! (continuous invariants), and the end state is checked once the cluster healed (coverage).
//!
//! Invariants:
//! 1. Per subscriber and channel, messages follow the position it holds: the same epoch and
//!    exactly the next offset (gap-free, in order, never twice), unless the server said
//!    otherwise first (`recovered: false` or `discontinuity`, whose `previous` must be that
//!    position).
//! 2. A delivered message is a publication the workload attempted, byte for byte, and every
//!    delivery of one publication (on any subscriber) and its acknowledgement name one position:
//!    a retried publish with the same idempotency key never publishes twice.
//! 3. Every acknowledged publication reached every subscriber exactly once, or lies in a span the
//!    server declared lost to it (before it subscribed, `recovered: false`, `discontinuity`).
//!
//! A publication that was never acknowledged (its retries ran out) may be delivered or not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub epoch: String,
    pub offset: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.epoch, self.offset)
    }
}

impl Pos {
    pub fn from_json(v: &Value) -> Option<Pos> {
        Some(Pos { epoch: v.get("epoch")?.as_str()?.to_owned(), offset: v.get("offset")?.as_u64()? })
    }
}

/// Offsets of one epoch a subscriber was told it will not get: `(after, up_to]`, open-ended
/// when `up_to` is `None`.
#[derive(Debug, Clone)]
struct Lost {
    epoch: String,
    after: u64,
    up_to: Option<u64>,
}

#[derive(Default)]
struct Stream {
    /// The position this subscriber holds (its resume point).
    at: Option<Pos>,
    /// Whether a subscription is active (a message outside one is a violation).
    active: bool,
    delivered: HashSet<Pos>,
    lost: Vec<Lost>,
    /// Jumps from one epoch to a later one: every epoch in between is lost to this subscriber.
    skips: Vec<(String, String)>,
}

impl Stream {
    /// `order`: the channel's epochs in the order the oracle first saw them.
    fn covers(&self, p: &Pos, order: &[String]) -> bool {
        let rank = |e: &str| order.iter().position(|x| x == e);
        self.delivered.contains(p)
            || self.lost.iter().any(|l| l.epoch == p.epoch && p.offset > l.after && l.up_to.is_none_or(|u| p.offset <= u))
            || self.skips.iter().any(|(from, to)| {
                matches!((rank(from), rank(&p.epoch), rank(to)), (Some(a), Some(b), Some(c)) if a < b && b < c)
            })
    }

    /// The server declared everything between `from` (last held) and `to` lost.
    fn lose(&mut self, from: &Pos, to: &Pos) {
        if from.epoch == to.epoch {
            self.lost.push(Lost { epoch: to.epoch.clone(), after: from.offset, up_to: Some(to.offset) });
        } else {
            self.lost.push(Lost { epoch: from.epoch.clone(), after: from.offset, up_to: None });
            self.lost.push(Lost { epoch: to.epoch.clone(), after: 0, up_to: Some(to.offset) });
            self.skips.push((from.epoch.clone(), to.epoch.clone()));
        }
    }
}

struct Publication {
    channel: String,
    data: Value,
    acked: Option<Pos>,
    /// Where it was delivered (to any subscriber), per epoch: a publication retried after Redis
    /// lost its stream and its idempotency key may be published again in the new epoch.
    delivered_at: HashMap<String, Pos>,
}

#[derive(Default, Debug, Clone)]
pub struct Counts {
    pub attempted: u64,
    pub acked: u64,
    pub publish_retries: u64,
    pub never_acked: u64,
    pub never_acked_delivered: u64,
    pub deliveries: u64,
    pub subscribes: u64,
    pub resumes_recovered: u64,
    pub resumes_not_recovered: u64,
    pub discontinuities: u64,
    pub republished_after_loss: u64,
    pub disconnects: u64,
    pub idle_reconnects: u64,
    /// Connections refused or closed for their token: 4001 invalid, 4002 expired, 4010 revoked.
    pub closed_invalid_token: u64,
    pub closed_token_expired: u64,
    pub closed_revoked: u64,
    /// Publish attempts refused 401 (a revoked key still in a publisher's hands).
    pub publish_unauthorized: u64,
    pub acked_while_control_plane_down: u64,
    /// Presence members matched at the end, and how long it took them to match (ghosts of
    /// killed nodes are reaped within the presence TTL).
    pub presence_members: u64,
    pub presence_settle_ms: u64,
    /// `messages_published` / `messages_delivered` of the usage API after the last flush.
    pub usage_published: u64,
    pub usage_delivered: u64,
    pub publications_made: u64,
    pub invariants_checked: u64,
}

#[derive(Default)]
pub struct Oracle {
    pubs: HashMap<String, Publication>,
    streams: BTreeMap<(usize, String), Stream>,
    /// Per channel, its epochs in the order first seen.
    epochs: HashMap<String, Vec<String>>,
    /// Per subscriber, the connection that entered presence and is still up.
    live: BTreeMap<usize, String>,
    pub counts: Counts,
    pub violation: Option<String>,
}

impl Oracle {
    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.counts.invariants_checked += 1;
        if !ok {
            self.fail(what());
        }
    }

    fn saw(&mut self, channel: &str, epoch: &str) {
        let order = self.epochs.entry(channel.to_owned()).or_default();
        if !order.iter().any(|e| e == epoch) {
            order.push(epoch.to_owned());
        }
    }

    pub fn attempt(&mut self, id: &str, channel: &str, data: Value) {
        self.counts.attempted += 1;
        self.pubs.insert(
            id.to_owned(),
            Publication { channel: channel.to_owned(), data, acked: None, delivered_at: HashMap::new() },
        );
    }

    pub fn acked(&mut self, id: &str, pos: Pos) {
        self.counts.acked += 1;
        let Some(p) = self.pubs.get_mut(id) else { return self.fail(format!("ack for unknown publication {id}")) };
        let first_ack = p.acked.replace(pos.clone());
        let delivered_at = p.delivered_at.get(&pos.epoch).cloned();
        let channel = p.channel.clone();
        self.saw(&channel, &pos.epoch);
        self.check(first_ack.is_none(), || format!("publication {id} acknowledged twice"));
        self.check(delivered_at.as_ref().is_none_or(|d| *d == pos), || {
            format!("publication {id} acknowledged at {pos} but delivered at {}", delivered_at.clone().unwrap())
        });
    }

    pub fn credentials_refused(&mut self, code: u16) {
        match code {
            4002 => self.counts.closed_token_expired += 1,
            4010 => self.counts.closed_revoked += 1,
            _ => self.counts.closed_invalid_token += 1,
        }
    }

    /// A close for token expiry came no earlier than the token's `exp`.
    pub fn check_timely_expiry(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.check(ok, what);
    }

    pub fn gave_up(&mut self) {
        self.counts.never_acked += 1;
    }

    pub fn subscribed(&mut self, sub: usize, channel: &str, since: Option<Pos>, recovered: bool, position: Pos) {
        self.counts.subscribes += 1;
        self.saw(channel, &position.epoch);
        let s = self.streams.entry((sub, channel.to_owned())).or_default();
        s.active = true;
        match since {
            None => {
                // What was published before the first subscription is not this subscriber's.
                s.lost.push(Lost { epoch: position.epoch.clone(), after: 0, up_to: Some(position.offset) });
                s.at = Some(position);
            }
            Some(since) if recovered => {
                self.counts.resumes_recovered += 1;
                s.at = Some(since);
            }
            Some(since) => {
                self.counts.resumes_not_recovered += 1;
                s.lose(&since, &position);
                s.at = Some(position);
            }
        }
    }

    /// Publications the broker certainly made: per publication, each epoch it was acknowledged
    /// or delivered in.
    pub fn publications_made(&self) -> u64 {
        self.pubs
            .values()
            .map(|p| {
                let extra = p.acked.as_ref().is_some_and(|a| !p.delivered_at.contains_key(&a.epoch));
                p.delivered_at.len() as u64 + u64::from(extra)
            })
            .sum()
    }

    pub fn entered(&mut self, sub: usize, connection_id: &str) {
        self.live.insert(sub, connection_id.to_owned());
    }

    /// The presence members there should be: every connection that entered and is still up.
    pub fn live_members(&self) -> std::collections::BTreeSet<(String, String)> {
        self.live.iter().map(|(sub, conn)| (format!("sub-{sub}"), conn.clone())).collect()
    }

    pub fn disconnected(&mut self, sub: usize) {
        self.live.remove(&sub);
        self.counts.disconnects += 1;
        for ((_, _), s) in self.streams.range_mut((sub, String::new())..(sub + 1, String::new())) {
            s.active = false;
        }
    }

    /// Where subscriber `sub` resumes `channel` from.
    pub fn resume_point(&self, sub: usize, channel: &str) -> Option<Pos> {
        self.streams.get(&(sub, channel.to_owned())).and_then(|s| s.at.clone())
    }

    pub fn discontinuity(&mut self, sub: usize, channel: &str, previous: Pos, position: Pos) {
        self.counts.discontinuities += 1;
        self.saw(channel, &previous.epoch);
        self.saw(channel, &position.epoch);
        let s = self.streams.entry((sub, channel.to_owned())).or_default();
        let at = s.at.clone();
        let active = s.active;
        if active && at.as_ref() == Some(&previous) {
            s.lose(&previous, &position);
            s.at = Some(position);
        }
        self.check(active, || format!("subscriber {sub}: discontinuity on {channel} outside a subscription"));
        self.check(at.as_ref() == Some(&previous), || {
            format!("subscriber {sub}: discontinuity on {channel} from {previous} but it holds {at:?}")
        });
    }

    pub fn message(&mut self, sub: usize, channel: &str, pos: Pos, data: &Value) {
        self.counts.deliveries += 1;
        self.saw(channel, &pos.epoch);
        let s = self.streams.entry((sub, channel.to_owned())).or_default();
        let at = s.at.clone();
        let active = s.active;
        let next = at.as_ref().is_some_and(|a| a.epoch == pos.epoch && pos.offset == a.offset + 1);
        s.delivered.insert(pos.clone());
        s.at = Some(pos.clone());
        self.check(active, || format!("subscriber {sub}: message {pos} on {channel} outside a subscription"));
        self.check(next, || {
            format!(
                "subscriber {sub}: message {pos} on {channel} does not follow {} (gap, repeat or reorder)",
                at.map(|a| a.to_string()).unwrap_or_else(|| "nothing".into())
            )
        });
        let id = data.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let Some(p) = self.pubs.get_mut(&id) else {
            return self.fail(format!("subscriber {sub}: message {pos} on {channel} was never published: {data}"));
        };
        let new_epoch = !p.delivered_at.contains_key(&pos.epoch);
        let republished = new_epoch && !p.delivered_at.is_empty();
        let first = p.delivered_at.entry(pos.epoch.clone()).or_insert_with(|| pos.clone()).clone();
        if republished {
            self.counts.republished_after_loss += 1;
        }
        let (same_channel, same_data, acked) = (p.channel == channel, p.data == *data, p.acked.clone());
        self.check(same_channel && same_data, || {
            format!("subscriber {sub}: message {pos} on {channel} is not what {id} published: {data}")
        });
        self.check(first == pos, || {
            format!("subscriber {sub}: publication {id} delivered at {pos} and elsewhere at {first} (published twice)")
        });
        self.check(acked.as_ref().is_none_or(|a| *a == pos), || {
            format!(
                "subscriber {sub}: publication {id} delivered at {pos} but acknowledged at {}",
                acked.clone().unwrap()
            )
        });
    }

    /// The first acknowledged publication some subscriber neither got nor was told it lost.
    pub fn uncovered(&self, subscribers: usize) -> Option<String> {
        let mut acked: Vec<(&String, &Publication, &Pos)> =
            self.pubs.iter().filter_map(|(id, p)| p.acked.as_ref().map(|a| (id, p, a))).collect();
        acked.sort_by(|a, b| (&a.1.channel, a.2).cmp(&(&b.1.channel, b.2)));
        for (id, p, pos) in acked {
            for sub in 0..subscribers {
                let order = self.epochs.get(&p.channel).map(Vec::as_slice).unwrap_or_default();
                let covered = self.streams.get(&(sub, p.channel.clone())).is_some_and(|s| s.covers(pos, order));
                if !covered {
                    return Some(format!(
                        "subscriber {sub}: acknowledged publication {id} at {pos} on {} never delivered (holds {:?})",
                        p.channel,
                        self.resume_point(sub, &p.channel).map(|a| a.to_string())
                    ));
                }
            }
        }
        None
    }

    /// Final accounting, once nothing moves any more: counts the coverage checks.
    pub fn finish(&mut self, subscribers: usize) {
        if let Some(v) = self.uncovered(subscribers) {
            self.fail(v);
        }
        let acked = self.pubs.values().filter(|p| p.acked.is_some()).count() as u64;
        self.counts.invariants_checked += acked * subscribers as u64;
        self.counts.never_acked_delivered =
            self.pubs.values().filter(|p| p.acked.is_none() && !p.delivered_at.is_empty()).count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pos(offset: u64) -> Pos {
        Pos { epoch: "e".into(), offset }
    }

    #[test]
    fn a_gap_is_caught_and_a_declared_loss_is_not_one() {
        let mut o = Oracle::default();
        for n in 1..=3 {
            o.attempt(&format!("m{n}"), "c", json!({"id": format!("m{n}")}));
            o.acked(&format!("m{n}"), pos(n));
        }
        o.subscribed(0, "c", None, false, pos(0));
        o.message(0, "c", pos(1), &json!({"id": "m1"}));
        o.disconnected(0);
        o.subscribed(0, "c", Some(pos(1)), false, pos(2));
        o.message(0, "c", pos(3), &json!({"id": "m3"}));
        o.finish(1);
        assert_eq!(o.violation, None);

        let mut o = Oracle::default();
        o.attempt("m1", "c", json!({"id": "m1"}));
        o.attempt("m2", "c", json!({"id": "m2"}));
        o.subscribed(0, "c", None, false, pos(0));
        o.acked("m1", pos(1));
        o.acked("m2", pos(2));
        o.message(0, "c", pos(2), &json!({"id": "m2"}));
        assert!(o.violation.as_deref().unwrap().contains("does not follow"), "{:?}", o.violation);
    }

    #[test]
    fn a_missing_or_repeated_publication_is_caught() {
        let mut o = Oracle::default();
        o.attempt("m1", "c", json!({"id": "m1"}));
        o.subscribed(0, "c", None, false, pos(0));
        o.acked("m1", pos(1));
        o.finish(1);
        assert!(o.violation.as_deref().unwrap().contains("never delivered"), "{:?}", o.violation);

        let mut o = Oracle::default();
        o.attempt("m1", "c", json!({"id": "m1"}));
        o.subscribed(0, "c", None, false, pos(0));
        o.message(0, "c", pos(1), &json!({"id": "m1"}));
        o.message(0, "c", pos(2), &json!({"id": "m1"}));
        assert!(o.violation.as_deref().unwrap().contains("published twice"), "{:?}", o.violation);
    }

    #[test]
    fn a_lost_stream_excuses_what_it_took_and_nothing_after() {
        let at = |epoch: &str, offset| Pos { epoch: epoch.into(), offset };
        let mut o = Oracle::default();
        for (id, p) in [("a", at("e1", 1)), ("b", at("e2", 1)), ("c", at("e3", 1)), ("d", at("e3", 2))] {
            o.attempt(id, "c", json!({"id": id}));
            o.acked(id, p);
        }
        o.subscribed(0, "c", None, false, at("e1", 0));
        o.message(0, "c", at("e1", 1), &json!({"id": "a"}));
        o.disconnected(0);
        // e2 came and went while this subscriber was away: declared lost by the jump to e3.
        o.subscribed(0, "c", Some(at("e1", 1)), false, at("e3", 1));
        assert_eq!(o.uncovered(1).map(|v| v.contains("publication d ")), Some(true));
        o.message(0, "c", at("e3", 2), &json!({"id": "d"}));
        o.finish(1);
        assert_eq!(o.violation, None);
    }
}
