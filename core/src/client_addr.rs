//! [`ClientAddr`]: the address a request came from, as the process resolved it.
//!
//! The binary's front end (the accept loop, the gRPC server) puts one in every request's
//! extensions: the TCP peer, or, when the peer is one of the operator's trusted proxies
//! (`--trusted-proxies`), the client address that proxy forwarded. Everything that keys on a
//! client's address (request rate limits, failed-credential limits, logs) reads it through
//! [`ClientAddr::of`], so a deployment behind a load balancer does not put every client in the
//! load balancer's bucket, and a client talking directly cannot choose its own bucket by sending
//! a forwarding header.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The resolved client address of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The client address of a request: the resolved [`ClientAddr`] when the front end set one,
    /// else the TCP peer it recorded (`peer`, e.g. axum's `ConnectInfo`), else the unspecified
    /// address (a router served without connect info, as in unit tests: one shared bucket).
    pub fn of(resolved: Option<&ClientAddr>, peer: Option<SocketAddr>) -> IpAddr {
        resolved.map(|c| c.0).or(peer.map(|p| p.ip())).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolved_address_wins_over_the_peer() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let client = ClientAddr("203.0.113.7".parse().unwrap());
        assert_eq!(ClientAddr::of(Some(&client), Some(peer)), client.0);
        assert_eq!(ClientAddr::of(None, Some(peer)), peer.ip());
        assert_eq!(ClientAddr::of(None, None), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
}
