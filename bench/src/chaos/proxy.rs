//! A TCP proxy on loopback between the clients and one node, with faults the runner switches on
//! and off: reset every connection (RST on both sides), stall (forward nothing, accept but do not
//! connect, until healed), and delay each forwarded chunk. Its target follows the node across
//! restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept: tokio::task::JoinHandle<()>,
}

struct Inner {
    target: Mutex<SocketAddr>,
    delay_ms: AtomicU64,
    stalled: watch::Sender<bool>,
    /// Cancelled to reset every connection open now; replaced by a fresh one.
    conns: Mutex<CancellationToken>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            target: Mutex::new(target),
            delay_ms: AtomicU64::new(0),
            stalled: watch::channel(false).0,
            conns: Mutex::new(CancellationToken::new()),
        });
        let accept = tokio::spawn({
            let inner = inner.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(serve(inner.clone(), client));
                }
            }
        });
        Ok(Proxy { addr, inner, accept })
    }

    pub fn retarget(&self, target: SocketAddr) {
        *self.inner.target.lock() = target;
    }

    /// Resets every connection open through the proxy now.
    pub fn reset(&self) {
        let old = std::mem::replace(&mut *self.inner.conns.lock(), CancellationToken::new());
        old.cancel();
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.inner.stalled.send_replace(stalled);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.inner.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

async fn serve(inner: Arc<Inner>, client: TcpStream) {
    let cancel = inner.conns.lock().clone();
    let mut stalled = inner.stalled.subscribe();
    let run = async {
        // A stalled proxy accepts (the kernel does anyway) but does not reach the node.
        let _ = stalled.wait_for(|s| !*s).await;
        let target = *inner.target.lock();
        let Ok(Ok(upstream)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await else {
            return;
        };
        // Linger 0: ending a connection here is an RST, as a dead peer or middlebox would send.
        abort_on_close(&client);
        abort_on_close(&upstream);
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        tokio::select! {
            _ = pump(&inner, cr, uw) => {}
            _ = pump(&inner, ur, cw) => {}
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = run => {}
    }
}

async fn pump(inner: &Inner, mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
    let mut stalled = inner.stalled.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let delay = inner.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// SO_LINGER with a zero timeout: closing sends RST and never blocks (tokio deprecates
/// `set_linger` for the blocking non-zero case only).
fn abort_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
