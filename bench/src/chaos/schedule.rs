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
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::KillRestart, Kind::Freeze, Kind::ProxyReset, Kind::ProxyStall, Kind::ProxyDelay, Kind::RedisRestart];

    pub fn label(self) -> &'static str {
        match self {
            Kind::KillRestart => "kill+restart",
            Kind::Freeze => "sigstop/sigcont",
            Kind::ProxyReset => "proxy reset",
            Kind::ProxyStall => "proxy stall",
            Kind::ProxyDelay => "proxy delay",
            Kind::RedisRestart => "redis restart",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Pause after the previous fault healed (or after the workload started).
    pub after: Duration,
    pub kind: Kind,
    pub node: usize,
    /// How long the fault lasts before it is healed (0 for a reset).
    pub hold: Duration,
    /// Added latency per forwarded chunk ([`Kind::ProxyDelay`] only).
    pub delay: Duration,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{}ms {} node {} hold {}ms",
            self.after.as_millis(),
            self.kind.label(),
            self.node,
            self.hold.as_millis()
        )?;
        if self.kind == Kind::ProxyDelay {
            write!(f, " delay {}ms", self.delay.as_millis())?;
        }
        Ok(())
    }
}

/// The faults of a run of `duration` over `nodes` nodes: as many as fit (the sum of pauses and
/// holds stays within the duration).
pub fn plan(seed: u64, duration: Duration, nodes: usize) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let mut faults = Vec::new();
    let mut used = Duration::ZERO;
    loop {
        let after = Duration::from_millis(rng.range(500, 2500));
        let kind = Kind::ALL[rng.below(Kind::ALL.len())];
        let node = rng.below(nodes);
        let hold = match kind {
            Kind::ProxyReset => Duration::ZERO,
            Kind::KillRestart | Kind::RedisRestart => Duration::from_millis(rng.range(200, 3000)),
            _ => Duration::from_millis(rng.range(300, 4000)),
        };
        let delay = Duration::from_millis(if kind == Kind::ProxyDelay { rng.range(20, 500) } else { 0 });
        used += after + hold;
        if used > duration {
            return faults;
        }
        faults.push(Fault { after, kind, node, hold, delay });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_schedule_within_the_duration() {
        let d = Duration::from_secs(30);
        let a = plan(42, d, 3);
        assert_eq!(a, plan(42, d, 3));
        assert_ne!(a, plan(43, d, 3));
        assert!(!a.is_empty());
        assert!(a.iter().map(|f| f.after + f.hold).sum::<Duration>() <= d);
        assert!(a.iter().all(|f| f.node < 3));
    }
}
