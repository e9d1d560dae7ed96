//! Trusted proxies (`--trusted-proxies`): which peers may say who the client is, and how their
//! forwarding headers are read.
//!
//! Behind a load balancer every request's TCP peer is the load balancer, so per-address limits
//! would put all clients in one bucket. A peer inside one of the trusted networks is believed
//! about the client: the client address is the rightmost hop of `X-Forwarded-For` (or, when the
//! request has none, of `Forwarded`'s `for=` parameters) that is not itself a trusted proxy.
//! Hops to the left of it were written by the client or by proxies we do not know, so they are
//! never read: a client cannot pick its own bucket by sending the header itself. A hop that does
//! not parse (`unknown`, an obfuscated identifier, garbage) ends the walk at the trusted proxy
//! that passed it on. From any other peer both headers are ignored and the client is the peer.
//!
//! `X-Forwarded-For` wins when both are present: the shipped nginx configs always set it
//! (`$proxy_add_x_forwarded_for`) and pass a client's `Forwarded` header through untouched. A
//! proxy that writes only `Forwarded` must drop any `X-Forwarded-For` its clients send.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use aviary_core::ClientAddr;
use axum::http::{HeaderMap, Request};
use ipnet::IpNet;

/// The networks whose peers are believed about the client address. Empty: nobody is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies { networks }
    }

    /// Whether `ip` is a trusted proxy (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request that arrived from `peer` with `headers`.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded_hops(headers).into_iter().rev() {
            let Some(hop) = hop else { return client };
            client = hop;
            if !self.trusts(hop) {
                return hop;
            }
        }
        // Every hop is a trusted proxy: the leftmost is as far as anyone can tell.
        client
    }
}

/// Parses one `--trusted-proxies` entry: a network in CIDR notation (`10.0.0.0/8`,
/// `fd00::/8`) or a single address (`127.0.0.1`, `::1`).
pub fn parse_network(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    value.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("{value:?} is neither an address nor a CIDR network"))
}

/// The hops a request names, leftmost (furthest from us) first; `None` for one that does not
/// parse as an address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    if !xff.is_empty() {
        return xff
            .into_iter()
            .flat_map(|value| match value.to_str() {
                Ok(value) => value.split(',').map(parse_node).collect(),
                Err(_) => vec![None],
            })
            .collect();
    }
    headers
        .get_all("forwarded")
        .iter()
        .flat_map(|value| match value.to_str() {
            // RFC 7239: elements are comma-separated, pairs within one semicolon-separated.
            Ok(value) => value
                .split(',')
                .map(|element| {
                    element
                        .split(';')
                        .find_map(|pair| {
                            let (name, node) = pair.split_once('=')?;
                            name.trim().eq_ignore_ascii_case("for").then(|| parse_node(node))
                        })
                        // An element without `for=` names no address: nothing to believe past it.
                        .flatten()
                })
                .collect(),
            Err(_) => vec![None],
        })
        .collect()
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`, optionally
/// quoted (`Forwarded` quotes anything with a colon).
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    let node = node.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(node);
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = node.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// A tower layer that resolves each request's [`ClientAddr`] from the TCP peer tonic recorded
/// and the trusted proxies: the gRPC server's counterpart of what the HTTP accept loop does.
#[derive(Debug, Clone)]
pub struct ResolveClientLayer {
    trusted: Arc<TrustedProxies>,
}

impl ResolveClientLayer {
    pub fn new(trusted: Arc<TrustedProxies>) -> Self {
        ResolveClientLayer { trusted }
    }
}

impl<S> tower::Layer<S> for ResolveClientLayer {
    type Service = ResolveClient<S>;

    fn layer(&self, inner: S) -> ResolveClient<S> {
        ResolveClient { inner, trusted: self.trusted.clone() }
    }
}

/// See [`ResolveClientLayer`].
#[derive(Debug, Clone)]
pub struct ResolveClient<S> {
    inner: S,
    trusted: Arc<TrustedProxies>,
}

impl<S, B> tower::Service<Request<B>> for ResolveClient<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let peer = request.extensions().get::<tonic::transport::server::TcpConnectInfo>().and_then(|i| i.remote_addr());
        if let Some(peer) = peer {
            let client = self.trusted.client_addr(peer.ip(), request.headers());
            request.extensions_mut().insert(ClientAddr(client));
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|n| parse_network(n).unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.8")]);
        assert_eq!(trusted.client_addr(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        assert_eq!(TrustedProxies::default().client_addr(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        // The client prepended a hop of its choosing: never read.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.1.1.1")]);
        assert_eq!(trusted.client_addr(peer, &h), ip("203.0.113.9"));
        // Several header lines are one list, in order.
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "203.0.113.9:5555")]);
        assert_eq!(trusted.client_addr(peer, &h), ip("203.0.113.9"));
        // Every hop trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(trusted.client_addr(peer, &h), ip("10.9.9.9"));
        // No header: the peer.
        assert_eq!(trusted.client_addr(peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn an_unparseable_hop_stops_at_the_proxy_that_passed_it() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9, garbage, 10.1.1.1")]);
        assert_eq!(trusted.client_addr(ip("127.0.0.1"), &h), ip("10.1.1.1"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(trusted.client_addr(ip("127.0.0.1"), &h), ip("127.0.0.1"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trusted = proxies(&["127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let h =
            headers(&[("forwarded", r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711""#)]);
        assert_eq!(trusted.client_addr(peer, &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "for=192.0.2.43"), ("forwarded", "for=\"198.51.100.17:80\";proto=https")]);
        assert_eq!(trusted.client_addr(peer, &h), ip("198.51.100.17"));
        // X-Forwarded-For wins: nginx sets it and passes a client's Forwarded through.
        let h = headers(&[("forwarded", "for=192.0.2.43"), ("x-forwarded-for", "198.51.100.17")]);
        assert_eq!(trusted.client_addr(peer, &h), ip("198.51.100.17"));
    }

    #[test]
    fn mapped_addresses_and_bare_addresses_in_the_list() {
        let trusted = proxies(&["127.0.0.1", "fd00::/8"]);
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.9")]);
        assert_eq!(trusted.client_addr(ip("::ffff:127.0.0.1"), &h), ip("203.0.113.9"));
        assert!(trusted.trusts(ip("fd12::1")));
        assert!(!trusted.trusts(ip("127.0.0.2")));
        assert!(parse_network("10.0.0.1/8").unwrap().contains(&ip("10.200.0.1")), "host bits are dropped");
        assert!(parse_network("nonsense").is_err());
    }
}
