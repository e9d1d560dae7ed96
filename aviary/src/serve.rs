//! The HTTP accept loop every role serves through: connection admission, the header-read
//! timeout, back-off when descriptors run out, and graceful shutdown.
//!
//! `axum::serve` keeps a socket open for as long as its peer likes and retries a failing
//! `accept` once a second. A few hundred silent sockets then took every descriptor of a node
//! with the common `ulimit -n 1024`, and `/healthz` stopped answering. Here:
//!
//! - every accepted socket passes [`Admission`] (pending connections per address and per node,
//!   the descriptor budget and its health-check reserve); a refused one gets a `503`
//!   problem document and is closed;
//! - HTTP/1.1 with hyper's header-read timeout: a connection must deliver a complete request
//!   header within `header_timeout` of opening, and again within `header_timeout` of the end of
//!   each response, so the same bound is the keep-alive idle timeout;
//! - a failing `accept` (EMFILE, ENFILE, ENOBUFS) backs off exponentially up to one second
//!   instead of spinning, and says so once per episode;
//! - with `--tls-cert` the admitted socket is a TLS server connection ([`crate::tls`]): the
//!   handshake runs in the connection's task, within the same header timeout, after admission
//!   (a refused socket is closed without a handshake, which would cost the CPU refusing saves).
//!
//! The [`ConnectionTicket`] travels with the socket (inside an upgraded WebSocket too) and in
//! each request's extensions, where the data plane marks the connection authenticated, and
//! aborts it when a client stopped reading a response it cannot finish (an SSE stream cut as a
//! slow consumer): the socket is dropped then, so the client's descriptor is freed. Each
//! request also carries its [`ClientAddr`]: the peer, or the client a trusted proxy names
//! ([`crate::forwarded`]); a trusted proxy's sockets are admitted without the per-address bound.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aviary_core::ClientAddr;
use aviary_core::problem::{PROBLEM_JSON, Problem};
use aviary_data_plane::admission::{Admission, ConnectionTicket, Refusal};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::forwarded::TrustedProxies;

/// Describes the accept loop's series and registers them at zero, so dashboards see them
/// before the first refusal.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "aviary_accept_errors_total",
        "Failed accept calls on a listener (descriptors exhausted): the loop backs off."
    );
    metrics::describe_counter!(
        "aviary_connections_refused_total",
        "Sockets refused with 503 at accept, per reason (pending_per_ip, pending_per_node, at_capacity)."
    );
    metrics::counter!("aviary_accept_errors_total").increment(0);
    for refusal in [Refusal::PendingPerIp, Refusal::PendingPerNode, Refusal::AtCapacity] {
        metrics::counter!("aviary_connections_refused_total", "reason" => refusal.label()).increment(0);
    }
}

/// Longest pause between accept attempts while descriptors are exhausted.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Header timeout of a connection from the health-check reserve.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Paths a connection from the health-check reserve may ask for.
const HEALTH_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// How the accept loop treats the connections of one listener.
#[derive(Clone)]
pub struct ConnectionPolicy {
    /// Admission of each accepted socket (pending and descriptor bounds).
    pub admission: Arc<Admission>,
    /// Time to send a complete request header; also the keep-alive idle timeout.
    pub header_timeout: Duration,
    /// Peers believed about the client address.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// TLS on this listener (`--tls-cert`), or plain TCP.
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ConnectionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPolicy")
            .field("admission", &self.admission)
            .field("header_timeout", &self.header_timeout)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ConnectionPolicy {
    /// The policy `limits` describe, with this process's descriptor budget.
    pub fn from_limits(limits: &crate::args::HttpLimits) -> Self {
        ConnectionPolicy {
            admission: Admission::new(admission_limits(limits.max_pending_per_ip)),
            header_timeout: limits.header_timeout(),
            trusted_proxies: limits.trusted_proxies(),
            tls: None,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and waits for
/// open HTTP exchanges to finish (upgraded WebSockets are the data plane's to drain).
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    policy: ConnectionPolicy,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let ConnectionPolicy { admission, header_timeout, trusted_proxies, tls } = policy;
    let router = router.layer(axum::middleware::from_fn(reserve_serves_health_only));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                if !backoff.is_zero() {
                    tracing::info!("accepting connections again");
                    backoff = Duration::ZERO;
                }
                accepted
            }
            // The peer gave up before we accepted: nothing to back off from.
            Err(e) if is_peer_error(&e) => continue,
            Err(e) => {
                if backoff.is_zero() {
                    tracing::warn!(error = %e, "accept failed; backing off until descriptors free up");
                }
                metrics::counter!("aviary_accept_errors_total").increment(1);
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        // A trusted proxy carries many clients: it is not bound per address (they are, by the
        // limiters that read each request's client address).
        let proxied = trusted_proxies.trusts(peer.ip());
        let admitted = if proxied { admission.admit_proxied() } else { admission.admit(peer.ip()) };
        let ticket = match admitted {
            Ok(ticket) => Arc::new(ticket),
            Err(refusal) => {
                metrics::counter!("aviary_connections_refused_total", "reason" => refusal.label()).increment(1);
                // A TLS client could not read a plain answer: it sees the connection close.
                if tls.is_none() {
                    refuse(stream, refusal);
                }
                continue;
            }
        };
        // Frames are small and latency-sensitive: never let Nagle hold one back waiting for an
        // ACK (it showed as a 40 ms mode in the many-rooms benchmark).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
        let proxies = proxied.then(|| trusted_proxies.clone());
        connections.spawn(serve_connection(
            stream,
            peer,
            proxies,
            ticket,
            router.clone(),
            Handshake { tls: tls.clone(), header_timeout },
            closing.clone(),
        ));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one half-open connection, not of the listener.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

/// What a connection does before its first request: TLS (optional) and the header timeout.
struct Handshake {
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
}

/// `proxies` is set when `peer` is a trusted proxy: each request's client address is then read
/// from its forwarding headers.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    proxies: Option<Arc<TrustedProxies>>,
    ticket: Arc<ConnectionTicket>,
    router: Router,
    handshake: Handshake,
    closing: CancellationToken,
) {
    let Handshake { tls, header_timeout } = handshake;
    let reserve = ticket.is_reserve();
    let stream = match tls {
        None => PeerStream::Plain(stream),
        // The handshake counts against the header timeout: a client that opens a socket and
        // sends nothing is cut as a plain one is.
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => PeerStream::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let io = TokioIo::new(AdmittedStream { stream, _ticket: ticket.clone() });
    let abort = ticket.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let client = match &proxies {
            Some(proxies) => proxies.client_addr(peer.ip(), request.headers()),
            None => peer.ip().to_canonical(),
        };
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(ClientAddr(client));
        request.extensions_mut().insert(ticket.clone());
        router.clone().oneshot(request.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A reserve connection answers one health check; it gets less time to ask for it.
    let header_timeout = if reserve { header_timeout.min(RESERVE_HEADER_TIMEOUT) } else { header_timeout };
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(!reserve);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection => result,
                _ = abort.aborted() => Ok(()),
            }
        }
        // The data plane gave up on the client (an SSE stream it stopped reading): drop the
        // socket, with whatever hyper could not write.
        _ = abort.aborted() => Ok(()),
    };
    if let Err(e) = result {
        // Header timeouts and resets are the peer's business; keep them out of the warn log.
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Answers a refused socket at once, without a task or a timer, so refusing costs the
/// descriptor only for this call: reads whatever request bytes already arrived (closing with
/// unread data would send a reset that can destroy the answer in flight), writes a 503 problem
/// if the socket buffer takes it, and closes.
fn refuse(stream: TcpStream, refusal: Refusal) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.try_read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    let body = serde_json::to_string(&refusal_problem(refusal)).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {PROBLEM_JSON}\r\nretry-after: 1\r\nconnection: \
         close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

fn refusal_problem(refusal: Refusal) -> Problem {
    Problem::new("connection-refused", "Connection refused", 503, refusal.detail())
}

/// A connection admitted from the health-check reserve may ask for health only.
async fn reserve_serves_health_only(request: Request, next: Next) -> Response {
    let reserve = request.extensions().get::<Arc<ConnectionTicket>>().is_some_and(|t| t.is_reserve());
    if reserve && !HEALTH_PATHS.contains(&request.uri().path()) {
        let mut response =
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(refusal_problem(Refusal::AtCapacity))).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    next.run(request).await
}

/// The admission limits of this process: its descriptor budget (soft `RLIMIT_NOFILE`) minus
/// what it already uses, and `max_pending_per_ip`.
pub fn admission_limits(max_pending_per_ip: usize) -> aviary_data_plane::admission::AdmissionLimits {
    aviary_data_plane::admission::AdmissionLimits::from_descriptors(
        descriptor_limit(),
        descriptors_in_use(),
        max_pending_per_ip,
    )
}

fn descriptor_limit() -> usize {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 && limit.rlim_cur != libc::RLIM_INFINITY {
            return usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
        }
    }
    1024
}

fn descriptors_in_use() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|dir| dir.count()).unwrap_or(64)
}

/// An accepted socket, in clear or inside TLS.
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl PeerStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(stream) => stream,
            PeerStream::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// Forwards an I/O call to the plain or the TLS stream.
macro_rules! either {
    ($self:expr, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            PeerStream::Plain($stream) => {
                let $stream = std::pin::Pin::new($stream);
                $call
            }
            PeerStream::Tls(tls) => {
                let $stream = std::pin::Pin::new(tls.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        either!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        either!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        either!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerStream::Plain(stream) => stream.is_write_vectored(),
            PeerStream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        either!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        either!(self, s => s.poll_shutdown(cx))
    }
}

/// The gRPC server reads each connection's peer from it, TLS or not, so `--trusted-proxies`
/// resolves gRPC clients the same way.
impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().connect_info()
    }
}

/// Accepts gRPC connections on `listener` with TLS: each handshake runs in its own task (one
/// slow client never holds up the others) and a finished one is handed to the gRPC server.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_peer_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(PeerStream::Tls(Box::new(tls)))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A socket that holds its admission ticket, so an upgraded WebSocket keeps counting until it
/// closes.
struct AdmittedStream {
    stream: PeerStream,
    _ticket: Arc<ConnectionTicket>,
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdmittedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
