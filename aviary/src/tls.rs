//! TLS on the public listeners (`--tls-cert`/`--tls-key`): rustls with the ring provider, a
//! certificate that can be replaced while the process runs.
//!
//! The certificate and key live in a [`CertificateStore`], which rustls asks for the certificate
//! at every handshake ([`ResolvesServerCert`]). Replacing what the store holds therefore changes
//! what new handshakes see and nothing else: connections already open keep the session they
//! negotiated and are never dropped. The store is reloaded on SIGHUP and when the files' content
//! changes (read every `--tls-reload-interval-s`; certbot and cert-manager write files without
//! signalling anyone). A reload that fails (a key that does not match the certificate, a file
//! half written) keeps the certificate in service and says why in the log; the next change or
//! SIGHUP tries again.
//!
//! One store serves every listener of the process: HTTP/1.1 (REST, WebSocket, SSE, Pusher) is
//! offered through ALPN `http/1.1`, gRPC through `h2`, which gRPC clients require.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The ring provider: the only crypto backend in the build.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the certificate chain and its private key are read from (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificate this process serves, replaceable while it runs.
#[derive(Debug)]
pub struct CertificateStore {
    files: TlsFiles,
    /// How often the files are read to see whether they changed; never when `None`.
    poll: Option<Duration>,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' bytes the key was made from, to notice a change.
    source: (Vec<u8>, Vec<u8>),
}

impl CertificateStore {
    /// Loads `files`; any problem is a startup error naming the file and the flag.
    pub fn load(files: TlsFiles, poll: Option<Duration>) -> anyhow::Result<Arc<CertificateStore>> {
        let source = read(&files)?;
        let key = certified_key(&files, &source)?;
        tracing::info!(cert = %files.cert.display(), fingerprint = %fingerprint(&key), "TLS certificate loaded");
        Ok(Arc::new(CertificateStore { files, poll, current: RwLock::new(Loaded { key, source }) }))
    }

    /// Reads the files again and serves what they hold from the next handshake on, if it is
    /// valid and differs from what is served. Returns whether the certificate changed.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let source = read(&self.files)?;
        if self.current.read().source == source {
            return Ok(false);
        }
        let key = certified_key(&self.files, &source)?;
        tracing::info!(cert = %self.files.cert.display(), fingerprint = %fingerprint(&key), "TLS certificate reloaded");
        *self.current.write() = Loaded { key, source };
        Ok(true)
    }

    /// The acceptor for HTTP/1.1 listeners (REST, WebSocket, SSE).
    pub fn http_acceptor(self: &Arc<Self>) -> anyhow::Result<TlsAcceptor> {
        self.acceptor(b"http/1.1")
    }

    /// The acceptor for the gRPC listener (HTTP/2, which gRPC clients ask for through ALPN).
    pub fn grpc_acceptor(self: &Arc<Self>) -> anyhow::Result<TlsAcceptor> {
        self.acceptor(b"h2")
    }

    fn acceptor(self: &Arc<Self>, protocol: &[u8]) -> anyhow::Result<TlsAcceptor> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![protocol.to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reloads on SIGHUP and when the files change, until `stop`.
    pub fn spawn_reloader(self: &Arc<Self>, stop: CancellationToken) {
        let store = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGHUP; the TLS certificate reloads on file change only");
                    None
                }
            };
            let mut poll = store.poll.map(|every| {
                let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                poll
            });
            // The last failure reported, so a broken file is logged once, not every poll.
            let mut reported: Option<String> = None;
            loop {
                #[cfg(unix)]
                let hangup_signal = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup_signal = std::future::pending::<Option<()>>();
                let poll_tick = async {
                    match poll.as_mut() {
                        Some(poll) => poll.tick().await,
                        None => std::future::pending().await,
                    }
                };
                let asked = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = poll_tick => false,
                    _ = hangup_signal => true,
                };
                match store.reload() {
                    Ok(changed) => {
                        reported = None;
                        if asked && !changed {
                            tracing::info!("SIGHUP: TLS certificate files unchanged");
                        }
                    }
                    Err(err) => {
                        let message = format!("{err:#}");
                        if asked || reported.as_deref() != Some(message.as_str()) {
                            tracing::warn!(error = %message, "TLS certificate not reloaded; serving the previous one");
                        }
                        reported = Some(message);
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().key.clone())
    }
}

fn read(files: &TlsFiles) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let cert = std::fs::read(&files.cert)
        .with_context(|| format!("reading the TLS certificate {} (--tls-cert)", files.cert.display()))?;
    let key = std::fs::read(&files.key)
        .with_context(|| format!("reading the TLS private key {} (--tls-key)", files.key.display()))?;
    Ok((cert, key))
}

fn certified_key(files: &TlsFiles, (cert, key): &(Vec<u8>, Vec<u8>)) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = parse_certificates(cert, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        anyhow::anyhow!(
            "no private key in {} (--tls-key; expected PEM, PKCS#8, PKCS#1 or SEC1): {e}",
            files.key.display()
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        anyhow::anyhow!(
            "the TLS key {} does not fit the certificate {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// Every certificate of a PEM file (the server's first, then its chain).
pub fn parse_certificates(pem: &[u8], path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate file: {e}", path.display()))?;
    if chain.is_empty() {
        bail!("no certificate in {} (expected PEM `-----BEGIN CERTIFICATE-----`)", path.display());
    }
    Ok(chain)
}

/// SHA-256 of the served (first) certificate, as `openssl x509 -fingerprint -sha256` prints it.
fn fingerprint(key: &CertifiedKey) -> String {
    let digest = key.cert.first().map(|c| Sha256::digest(c.as_ref()).to_vec()).unwrap_or_default();
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}
