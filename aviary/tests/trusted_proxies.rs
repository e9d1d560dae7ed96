//! `--trusted-proxies`, both ways, against the real binary (`aviary dev` on port 0). The test
//! plays a load balancer from 127.0.0.1 and a client talking directly from 127.0.0.2 (Linux
//! routes all of 127/8 to loopback, so the server sees two peers).
//!
//! - From a trusted peer, the rightmost untrusted `X-Forwarded-For` hop (else `Forwarded`
//!   `for=`) is the client: each gets its own request-rate bucket and failed-credential budget,
//!   and a hop the client prepended itself is never read.
//! - From any other peer, and from every peer without the flag, the headers change nothing: the
//!   peer's bucket is spent whatever address they name.
//! - A trusted proxy's idle sockets are not bound per address (`--max-pending-per-ip`); a direct
//!   client's are.
//!
//! Rates are 1/s with a burst of [`BURST`], and assertions leave wide margins, so a slow machine
//! (a refill during a sequence) does not change the outcome.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::Proc;

/// The per-address burst the server runs with.
const BURST: usize = 10;
/// A public route behind the control plane's per-address limiter.
const JWKS: &str = "/.well-known/jwks.json";

struct Dev {
    proc: Proc,
    dir: PathBuf,
}

impl Dev {
    fn start(extra: &[&str]) -> Dev {
        let dir = std::env::temp_dir().join(format!("aviary-proxies-test-{}", uuid::Uuid::new_v4().simple()));
        let d = dir.to_str().unwrap().to_owned();
        let burst = BURST.to_string();
        let mut args = vec![
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--data-dir",
            &d,
            "--rate-limit-per-ip",
            "1",
            "--rate-limit-per-ip-burst",
            &burst,
        ];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(&args, &[("AVIARY_OPERATOR_TOKEN", "")]);
        Dev { proc, dir }
    }

    fn url(&self, path: &str) -> String {
        self.proc.url(path)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP client whose connections leave from 127.0.0.`last`.
fn from(last: u8) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::from([127, 0, 0, last])).build().unwrap()
}

async fn status(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.expect("the server answers").status().as_u16()
}

/// Sends `req()` until it is refused with 429, at most `limit` times; returns how many were
/// sent, or `None` if none was refused.
async fn until_refused(limit: usize, mut req: impl FnMut(usize) -> reqwest::RequestBuilder) -> Option<usize> {
    for i in 0..limit {
        if status(req(i)).await == 429 {
            return Some(i + 1);
        }
    }
    None
}

#[tokio::test]
async fn a_trusted_proxy_names_each_client_and_each_gets_its_own_bucket() {
    let dev = Dev::start(&["--trusted-proxies", "127.0.0.1,10.0.0.0/8"]);
    let proxy = from(1);
    let jwks = dev.url(JWKS);

    // Three times the burst, each request naming a new client: none is limited.
    for i in 0..3 * BURST {
        let client = format!("203.0.113.{}", i + 1);
        let got = status(proxy.get(&jwks).header("x-forwarded-for", client.as_str())).await;
        assert_eq!(got, 200, "request {i} for its own client {client}");
    }
    // The same through `Forwarded`, IPv6 and quoted as RFC 7239 writes it.
    for i in 0..3 * BURST {
        let forwarded = format!("for=\"[2001:db8::{:x}]:4711\";proto=https", i + 1);
        let got = status(proxy.get(&jwks).header("forwarded", forwarded.as_str())).await;
        assert_eq!(got, 200, "request {i} forwarded for its own client");
    }

    // One client spends its burst; the next client behind the same proxy is not affected, and
    // trusted hops (10/8 here) to the right of a client are skipped.
    let sent = until_refused(4 * BURST, |_| proxy.get(&jwks).header("x-forwarded-for", "198.51.100.1")).await;
    assert!(sent.is_some_and(|n| n > BURST / 2), "198.51.100.1 was limited after its burst: {sent:?}");
    assert_eq!(status(proxy.get(&jwks).header("x-forwarded-for", "198.51.100.2, 10.1.2.3")).await, 200);

    // The limited client cannot escape by prepending an address of its choosing: the proxy
    // appends what it saw, and only that hop is read. A fresh bucket would take BURST requests.
    let mut passed = 0;
    for i in 0..BURST {
        let spoofed = format!("192.0.2.{}, 198.51.100.1", i + 1);
        if status(proxy.get(&jwks).header("x-forwarded-for", spoofed.as_str())).await == 200 {
            passed += 1;
        }
    }
    assert!(passed < BURST / 2, "a prepended hop chose the bucket: {passed} of {BURST} passed");

    // Failed credential checks are budgeted per client too (the data plane's API key check):
    // one client's guesses spend its own budget, not its neighbour's.
    let channels = dev.url("/v1/apps/app_nope/channels");
    // Well formed (a malformed key is refused before any check is charged), of no key.
    let guess = format!("avk_{}_{}", "0".repeat(32), "a".repeat(40));
    let sent =
        until_refused(100, |_| proxy.get(&channels).bearer_auth(&guess).header("x-forwarded-for", "198.51.100.7"))
            .await;
    assert!(sent.is_some(), "the guessing client was limited");
    let neighbour = status(proxy.get(&channels).bearer_auth(&guess).header("x-forwarded-for", "198.51.100.8")).await;
    assert_eq!(neighbour, 401, "the neighbour behind the same proxy still gets its own answer");
}

#[tokio::test]
async fn forwarding_headers_from_anyone_else_are_ignored() {
    let dev = Dev::start(&["--trusted-proxies", "127.0.0.1"]);
    let jwks = dev.url(JWKS);
    // A direct client (127.0.0.2 is not trusted) naming a new address on every request still
    // spends its own bucket, through either header.
    let direct = from(2);
    let sent = until_refused(4 * BURST, |i| {
        direct.get(&jwks).header("x-forwarded-for", format!("203.0.113.{}", i + 1).as_str())
    })
    .await;
    assert!(sent.is_some(), "X-Forwarded-For from an untrusted peer chose the bucket");
    // Another direct address is its own client.
    assert_eq!(status(from(3).get(&jwks)).await, 200);

    let dev = Dev::start(&["--trusted-proxies", "127.0.0.1"]);
    let jwks = dev.url(JWKS);
    let sent = until_refused(4 * BURST, |i| {
        direct.get(&jwks).header("forwarded", format!("for=203.0.113.{}", i + 1).as_str())
    })
    .await;
    assert!(sent.is_some(), "Forwarded from an untrusted peer chose the bucket");
}

#[tokio::test]
async fn without_the_flag_nobody_is_trusted() {
    let dev = Dev::start(&[]);
    let jwks = dev.url(JWKS);
    let local = from(1);
    let sent = until_refused(4 * BURST, |i| {
        local.get(&jwks).header("x-forwarded-for", format!("203.0.113.{}", i + 1).as_str())
    })
    .await;
    assert!(sent.is_some(), "X-Forwarded-For was believed without --trusted-proxies");
}

/// Opens a TCP connection to `server` from 127.0.0.`last` and leaves it idle (pending).
async fn idle_from(last: u8, server: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
    socket.connect(server).await.expect("connects")
}

/// The status line the server sends on a fresh connection from 127.0.0.`last`: a health check
/// (`ask`), or nothing asked (a refusal is written at once, before any request).
async fn answer_from(last: u8, server: SocketAddr, ask: bool) -> String {
    let mut stream = idle_from(last, server).await;
    if ask {
        stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: aviary\r\nconnection: close\r\n\r\n").await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("readable");
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_trusted_proxy_is_not_bound_per_address_but_a_direct_client_is() {
    let dev = Dev::start(&["--trusted-proxies", "127.0.0.1", "--max-pending-per-ip", "2"]);
    let server = dev.proc.addr;
    // The proxy holds more idle connections than one address may, and still gets answers.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(idle_from(1, server).await);
    }
    let line = answer_from(1, server, true).await;
    assert!(line.contains(" 200 "), "through the proxy: {line}");
    // A direct client at its bound is refused.
    for _ in 0..2 {
        held.push(idle_from(2, server).await);
    }
    let line = answer_from(2, server, false).await;
    assert!(line.contains(" 503 "), "a direct client past --max-pending-per-ip: {line}");
}
