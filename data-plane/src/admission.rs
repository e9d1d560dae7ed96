//! Connection admission: how many TCP connections a process holds, and how many of them have
//! not yet proved who they are, so idle or silent sockets cannot take every file descriptor.
//!
//! The accept loop asks [`Admission::admit`] for every accepted socket and keeps the
//! [`ConnectionTicket`] for as long as the socket is open (an upgraded WebSocket included). Three
//! bounds apply, each answered with a clear refusal rather than a hang:
//!
//! - **pending per source address** and **pending per node**: a connection is *pending* until a
//!   request on it authenticates (a WebSocket `connect`, an SSE stream, a REST call with a valid
//!   key) and calls [`ConnectionTicket::authenticated`]. Silent sockets stay pending, so one
//!   address cannot hold more than its share however few bytes it sends. A trusted proxy's
//!   connections ([`Admission::admit_proxied`]) carry many clients and count against the node's
//!   bound only: which client a socket carries is known only once its request is read.
//! - **open connections** against the descriptor budget: past it, a small **reserve** of
//!   connections is still admitted, served only health checks (`/healthz`, `/readyz`) with
//!   keep-alive off, so an orchestrator can tell a busy node from a dead one; beyond the
//!   reserve, connections are refused.
//!
//! The type is plain atomics and a sharded map: no I/O, no locks held across `.await`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

/// The bounds of one listener's admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Open connections served normally; past it only the reserve is admitted.
    pub max_open: usize,
    /// Connections admitted past `max_open`, answering health checks only.
    pub reserve: usize,
    /// Connections not yet authenticated, over the whole node.
    pub max_pending: usize,
    /// Connections not yet authenticated from one source address.
    pub max_pending_per_ip: usize,
}

impl AdmissionLimits {
    /// Limits derived from the process's descriptor budget: `fd_limit` (the soft
    /// `RLIMIT_NOFILE`), of which `in_use` are already taken. 32 descriptors stay free for what
    /// the process opens later (store and broker connections, files) and for accepting a socket
    /// only to refuse it; the health-check reserve is 1/32 of the limit, between 4 and 64.
    pub fn from_descriptors(fd_limit: usize, in_use: usize, max_pending_per_ip: usize) -> Self {
        let reserve = (fd_limit / 32).clamp(4, 64);
        let max_open = fd_limit.saturating_sub(in_use + 32 + reserve).max(1);
        AdmissionLimits { max_open, reserve, max_pending: max_open, max_pending_per_ip: max_pending_per_ip.max(1) }
    }
}

/// Why a connection was not admitted; the accept loop answers 503 with this detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many unauthenticated connections from this address.
    PendingPerIp,
    /// Too many unauthenticated connections on this node.
    PendingPerNode,
    /// The descriptor budget and its health-check reserve are used up.
    AtCapacity,
}

impl Refusal {
    /// The sentence shown in the refusal's problem document.
    pub fn detail(self) -> &'static str {
        match self {
            Refusal::PendingPerIp => "too many unauthenticated connections from this address",
            Refusal::PendingPerNode => "too many unauthenticated connections on this node",
            Refusal::AtCapacity => "node at connection capacity; retry on another node",
        }
    }

    /// The label of the refusal metric.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PendingPerIp => "pending_per_ip",
            Refusal::PendingPerNode => "pending_per_node",
            Refusal::AtCapacity => "at_capacity",
        }
    }
}

/// Counts of one listener's connections. Shared by the accept loop and every ticket.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    open: AtomicUsize,
    reserve_open: AtomicUsize,
    pending: AtomicUsize,
    pending_by_ip: DashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            open: AtomicUsize::new(0),
            reserve_open: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            pending_by_ip: DashMap::new(),
        })
    }

    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Open connections served normally (the reserve not included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections that have not authenticated yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Admits a connection from `ip`, or says why not. The ticket must live as long as the
    /// socket.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionTicket, Refusal> {
        self.admit_keyed(Some(ip))
    }

    /// Admits a connection from a trusted proxy: as [`Self::admit`], but it is not counted
    /// against the per-address pending bound, since the proxy carries many clients (the
    /// node-wide bound and the descriptor budget still hold).
    pub fn admit_proxied(self: &Arc<Self>) -> Result<ConnectionTicket, Refusal> {
        self.admit_keyed(None)
    }

    fn admit_keyed(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnectionTicket, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_open {
            self.open.fetch_sub(1, Ordering::AcqRel);
            if self.reserve_open.fetch_add(1, Ordering::AcqRel) >= self.limits.reserve {
                self.reserve_open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::AtCapacity);
            }
            // A reserve connection is never pending: it is closed after one health answer.
            return Ok(ConnectionTicket {
                admission: self.clone(),
                ip,
                pending: AtomicBool::new(false),
                reserve: true,
                abort: CancellationToken::new(),
            });
        }
        if let Err(refusal) = self.add_pending(ip) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(refusal);
        }
        Ok(ConnectionTicket {
            admission: self.clone(),
            ip,
            pending: AtomicBool::new(true),
            reserve: false,
            abort: CancellationToken::new(),
        })
    }

    fn add_pending(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.limits.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PendingPerNode);
        }
        let Some(ip) = ip else { return Ok(()) };
        let mut count = self.pending_by_ip.entry(ip).or_insert(0);
        if *count >= self.limits.max_pending_per_ip {
            drop(count);
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PendingPerIp);
        }
        *count += 1;
        Ok(())
    }

    fn remove_pending(&self, ip: Option<IpAddr>) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        let Some(ip) = ip else { return };
        // Forget the address at zero so the map holds only addresses with pending sockets.
        self.pending_by_ip.remove_if_mut(&ip, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// One admitted connection. Dropping it releases its place.
#[derive(Debug)]
pub struct ConnectionTicket {
    admission: Arc<Admission>,
    /// The address its pending place is counted under (none for a trusted proxy).
    ip: Option<IpAddr>,
    pending: AtomicBool,
    reserve: bool,
    /// Cancelled when the data plane gives up on the connection (an SSE client that stopped
    /// reading): the accept loop then drops the socket, whatever hyper is still writing.
    abort: CancellationToken,
}

impl ConnectionTicket {
    /// Asks the accept loop to drop this connection's socket now. For a plain HTTP exchange
    /// only: an upgraded WebSocket's socket belongs to the data plane.
    pub fn abort(&self) {
        self.abort.cancel();
    }

    /// Completes once [`ConnectionTicket::abort`] was called.
    pub fn aborted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.abort.cancelled()
    }

    /// The connection proved who it is: it no longer counts against the pending bounds.
    /// Idempotent.
    pub fn authenticated(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.admission.remove_pending(self.ip);
        }
    }

    /// Admitted from the health-check reserve: serve health checks only, then close.
    pub fn is_reserve(&self) -> bool {
        self.reserve
    }
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        self.authenticated();
        if self.reserve {
            self.admission.reserve_open.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.admission.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn pending_connections_are_bounded_per_address_and_released_by_authentication() {
        let admission =
            Admission::new(AdmissionLimits { max_open: 100, reserve: 1, max_pending: 100, max_pending_per_ip: 2 });
        let a = admission.admit(ip(2)).unwrap();
        let _b = admission.admit(ip(2)).unwrap();
        assert_eq!(admission.admit(ip(2)).unwrap_err(), Refusal::PendingPerIp);
        let proxied: Vec<_> =
            (0..3).map(|_| admission.admit_proxied().expect("a proxy is not bound per address")).collect();
        assert_eq!(admission.pending(), 5, "a proxy's connections count against the node");
        drop(proxied);
        assert!(admission.admit(ip(3)).is_ok(), "another address has its own share");
        a.authenticated();
        let _c = admission.admit(ip(2)).expect("an authenticated connection frees its pending place");
        assert_eq!(admission.open(), 3);
    }

    #[test]
    fn past_the_budget_only_the_reserve_is_admitted() {
        let admission =
            Admission::new(AdmissionLimits { max_open: 1, reserve: 1, max_pending: 10, max_pending_per_ip: 10 });
        let normal = admission.admit(ip(2)).unwrap();
        let reserve = admission.admit(ip(2)).unwrap();
        assert!(!normal.is_reserve());
        assert!(reserve.is_reserve());
        assert_eq!(admission.admit(ip(2)).unwrap_err(), Refusal::AtCapacity);
        drop(reserve);
        assert!(admission.admit(ip(2)).unwrap().is_reserve());
        drop(normal);
        assert!(!admission.admit(ip(2)).unwrap().is_reserve());
        assert_eq!(admission.pending(), 0);
    }
}
