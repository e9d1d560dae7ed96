//! How a data-plane node reaches the control plane's gRPC listener: its URL and, for an
//! `https://` URL, whom to trust. Every node-side client (config stream, API key checks, usage
//! reports) connects through one [`ControlPlaneLink`], so they cannot disagree about TLS, and
//! presents the node token the same way ([`authorized`]).

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};

/// The control plane as a node connects to it.
#[derive(Clone)]
pub struct ControlPlaneLink {
    url: String,
    /// The certificate authority to trust (PEM); the system's roots when unset.
    ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ControlPlaneLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneLink").field("url", &self.url).field("custom_ca", &self.ca_pem.is_some()).finish()
    }
}

impl std::fmt::Display for ControlPlaneLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl From<&str> for ControlPlaneLink {
    fn from(url: &str) -> Self {
        ControlPlaneLink { url: url.to_owned(), ca_pem: None }
    }
}

impl From<String> for ControlPlaneLink {
    fn from(url: String) -> Self {
        ControlPlaneLink { url, ca_pem: None }
    }
}

impl From<&String> for ControlPlaneLink {
    fn from(url: &String) -> Self {
        ControlPlaneLink::from(url.as_str())
    }
}

impl ControlPlaneLink {
    /// Trusts the certificate authority in `pem` (and only it) for an `https://` URL.
    pub fn with_ca_pem(mut self, pem: Vec<u8>) -> Result<Self> {
        if !self.is_tls() {
            return Err(Error::invalid(format!(
                "a CA for the control plane needs an https:// URL, not {:?}",
                self.url
            )));
        }
        self.ca_pem = Some(pem);
        Ok(self)
    }

    /// Whether the link uses TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// The URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A tonic endpoint for the link, with TLS when the URL is `https://`. The server name
    /// checked against the certificate is the URL's host (a name or an IP address).
    pub fn endpoint(&self) -> Result<Endpoint> {
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| Error::invalid(format!("control plane endpoint {:?}: {e}", self.url)))?;
        if !self.is_tls() {
            return Ok(endpoint);
        }
        let tls = match &self.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint.tls_config(tls).map_err(|e| Error::invalid(format!("TLS to the control plane {:?}: {e}", self.url)))
    }

    /// [`ControlPlaneLink::endpoint`] with the connection settings every node-side client uses.
    pub(crate) fn endpoint_with(&self, connect_timeout: Duration) -> Result<Endpoint> {
        Ok(self.endpoint()?.connect_timeout(connect_timeout).tcp_nodelay(true))
    }
}

/// Adds the node credential (`authorization: Bearer <node token>`) to a request.
pub(crate) fn authorized<T>(message: T, token: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value =
        format!("Bearer {token}").parse().map_err(|_| Error::invalid("the node token must be printable ASCII"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}
