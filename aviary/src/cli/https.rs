//! The HTTP client of the operator tools (`token`, `healthcheck`): whose certificate they accept
//! over `https://`.
//!
//! Three answers, chosen by flags: the system's roots (a public certificate); `--ca`, the
//! certificate authority of a private PKI such as docs/deploying.md makes, trusted instead of the
//! system's roots; or, for a health check of a process by its own certificate file, exactly that
//! certificate. The last exists because the check asks its process over loopback, by address,
//! where a certificate made for `aviary.example.com` does not match the name asked for: pinning
//! the very certificate the process was started with is stricter than trusting a CA and needs no
//! name at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Which server certificates an operator tool accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Any certificate for the URL's host signed by a root the system trusts.
    SystemRoots,
    /// Any certificate for the URL's host signed by the CA in this PEM file (`--ca`).
    Ca(PathBuf),
    /// Exactly the first certificate of this PEM file, whatever names it carries.
    Exactly(PathBuf),
}

/// A client that accepts what `trust` says over `https://` (plain `http://` as always).
pub fn client(trust: &Trust, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder().timeout(timeout);
    let builder = match trust {
        Trust::SystemRoots => builder,
        Trust::Ca(path) => {
            let pem = read(path, "--ca")?;
            crate::tls::parse_certificates(&pem, path).context("--ca")?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate file (--ca)", path.display()))?;
            roots.into_iter().fold(builder.tls_built_in_root_certs(false), |b, root| b.add_root_certificate(root))
        }
        Trust::Exactly(path) => {
            let pem = read(path, "--tls-cert")?;
            let expected = crate::tls::parse_certificates(&pem, path).context("--tls-cert")?.swap_remove(0);
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ExactCertificate { expected, provider }))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            builder.use_preconfigured_tls(config)
        }
    };
    Ok(builder.build()?)
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {} ({flag})", path.display()))
}

/// Accepts one certificate, byte for byte; the handshake's signatures are still checked
/// against it, so only the holder of its key can present it.
#[derive(Debug)]
struct ExactCertificate {
    expected: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExactCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the server's certificate is not the one in --tls-cert".to_owned()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
