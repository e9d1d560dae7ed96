//! The fault schedule: which fault hits which node when, drawn from the seed alone (never from
//! timing), so a seed replays the same schedule. Faults run one after another; each is healed
//! before the next starts.

use std::fmt;
use std::time::Duration;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL the node, keep it down for the hold time, start it again.
    KillRestart,
    /// SIGSTOP the node for the hold time, then SIGCONT.
    Freeze,
    /// Reset (RST) every client connection through the node's proxy.
    ProxyReset,
    /// The node's proxy forwards nothing for the hold time (a partition that heals).
    ProxyStall,
    /// The node's proxy delays every chunk by `delay` for the hold time.
    ProxyDelay,
    /// SIGKILL Redis (all its data is lost), keep it down for the hold time, start an empty one.
    RedisRestart,
    /// `CLIENT PAUSE <hold> ALL`: Redis answers nobody for the hold time, connections stay up.
    RedisPause,
    /// Reset every connection between the node and Redis (its pub/sub connection too).
    RedisLinkReset,
    /// The proxy between the node and Redis forwards nothing for the hold time.
    RedisLinkStall,
    /// The proxy between the node and Redis delays every chunk by `delay` for the hold time.
    RedisLinkDelay,
    /// SIGKILL the control plane, keep it down for the hold time (nodes serve from their
    /// config), start it again on the same ports. With `node_restart`, the node is SIGKILLed and
    /// started again while the control plane is down (it must start from its config cache).
    ControlPlaneDown,
    /// A new API key takes over and the one in use is revoked: connections whose token it
    /// minted are closed (4010), its publishes refused (401); clients fetch new credentials.
    KeyRevocation,
    /// Every token of one subscriber's client id issued up to now is revoked (4010).
    ClientRevocation,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::KillRestart,
        Kind::Freeze,
        Kind::ProxyReset,
        Kind::ProxyStall,
        Kind::ProxyDelay,
        Kind::RedisRestart,
        Kind::RedisPause,
        Kind::RedisLinkReset,
        Kind::RedisLinkStall,
        Kind::RedisLinkDelay,
        Kind::ControlPlaneDown,
        Kind::KeyRevocation,
        Kind::ClientRevocation,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::KillRestart => "kill+restart",
            Kind::Freeze => "sigstop/sigcont",
            Kind::ProxyReset => "proxy reset",
            Kind::ProxyStall => "proxy stall",
            Kind::ProxyDelay => "proxy delay",
            Kind::RedisRestart => "redis restart",
            Kind::RedisPause => "redis client pause",
            Kind::RedisLinkReset => "redis link reset",
            Kind::RedisLinkStall => "redis link stall",
            Kind::RedisLinkDelay => "redis link delay",
            Kind::ControlPlaneDown => "control plane down",
            Kind::KeyRevocation => "key revocation",
            Kind::ClientRevocation => "client revocation",
        }
    }

    /// What `Fault::node` names for this kind.
    fn target(self) -> Target {
        match self {
            Kind::RedisRestart | Kind::RedisPause | Kind::KeyRevocation => Target::None,
            Kind::ClientRevocation => Target::Subscriber,
            _ => Target::Node,
        }
    }

    fn has_hold(self) -> bool {
        !matches!(self, Kind::ProxyReset | Kind::RedisLinkReset | Kind::KeyRevocation | Kind::ClientRevocation)
    }
}

enum Target {
    None,
    Node,
    Subscriber,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Pause after the previous fault healed (or after the workload started).
    pub after: Duration,
    pub kind: Kind,
    /// The node it hits, or the subscriber for [`Kind::ClientRevocation`]; unused by faults of
    /// Redis or of the whole app.
    pub node: usize,
    /// How long the fault lasts before it is healed (0 for a reset).
    pub hold: Duration,
    /// Added latency per forwarded chunk ([`Kind::ProxyDelay`], [`Kind::RedisLinkDelay`]).
    pub delay: Duration,
    /// [`Kind::ControlPlaneDown`]: the node is also restarted while the control plane is down.
    pub node_restart: bool,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}ms {}", self.after.as_millis(), self.kind.label())?;
        match self.kind.target() {
            Target::None => {}
            Target::Node => write!(f, " node {}", self.node)?,
            Target::Subscriber => write!(f, " sub-{}", self.node)?,
        }
        if self.kind.has_hold() {
            write!(f, " hold {}ms", self.hold.as_millis())?;
        }
        if matches!(self.kind, Kind::ProxyDelay | Kind::RedisLinkDelay) {
            write!(f, " delay {}ms", self.delay.as_millis())?;
        }
        if self.node_restart {
            write!(f, " with node {} restarted meanwhile", self.node)?;
        }
        Ok(())
    }
}

/// The faults of a run of `duration` over `nodes` nodes: as many as fit (the sum of pauses and
/// holds stays within the duration).
pub fn plan(seed: u64, duration: Duration, nodes: usize, subscribers: usize) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let mut faults = Vec::new();
    let mut used = Duration::ZERO;
    loop {
        let after = Duration::from_millis(rng.range(500, 2500));
        let kind = Kind::ALL[rng.below(Kind::ALL.len())];
        let node = rng.below(if matches!(kind.target(), Target::Subscriber) { subscribers } else { nodes });
        let hold = match kind {
            _ if !kind.has_hold() => Duration::ZERO,
            Kind::KillRestart | Kind::RedisRestart => Duration::from_millis(rng.range(200, 3000)),
            Kind::ControlPlaneDown => Duration::from_millis(rng.range(1000, 5000)),
            _ => Duration::from_millis(rng.range(300, 4000)),
        };
        let delay = match kind {
            Kind::ProxyDelay | Kind::RedisLinkDelay => Duration::from_millis(rng.range(20, 500)),
            _ => Duration::ZERO,
        };
        let node_restart = kind == Kind::ControlPlaneDown && rng.below(2) == 0;
        used += after + hold;
        if used > duration {
            return faults;
        }
        faults.push(Fault { after, kind, node, hold, delay, node_restart });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_schedule_within_the_duration() {
        let d = Duration::from_secs(30);
        let a = plan(42, d, 3, 6);
        assert_eq!(a, plan(42, d, 3, 6));
        assert_ne!(a, plan(43, d, 3, 6));
        assert!(!a.is_empty());
        assert!(a.iter().map(|f| f.after + f.hold).sum::<Duration>() <= d);
        assert!(a.iter().all(|f| f.node < if matches!(f.kind.target(), Target::Subscriber) { 6 } else { 3 }));
    }

    #[test]
    fn a_fault_of_redis_names_no_node() {
        let f = |kind| Fault {
            after: Duration::from_millis(5),
            kind,
            node: 1,
            hold: Duration::from_millis(7),
            delay: Duration::ZERO,
            node_restart: false,
        };
        assert_eq!(f(Kind::RedisRestart).to_string(), "+5ms redis restart hold 7ms");
        assert_eq!(f(Kind::KillRestart).to_string(), "+5ms kill+restart node 1 hold 7ms");
        assert_eq!(f(Kind::ClientRevocation).to_string(), "+5ms client revocation sub-1");
    }
}
