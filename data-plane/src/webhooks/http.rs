//! The HTTP client deliveries use: no redirects followed, bounded time, and every address it
//! connects to checked with `aviary_core::webhook::target::is_public` (unless the operator
//! allows private targets), so a DNS name that resolves to a private address, or re-resolves
//! to one later, is refused at connect time and not only when the URL was saved.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aviary_core::webhook::target::is_public;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::body::SignedBody;

/// Resolves names and keeps only the addresses a webhook may call.
struct CheckedResolver {
    allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.into_iter().filter(|a| allow_private || is_public(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The outcome of one POST.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The status when the receiver answered.
    pub status: Option<u16>,
    pub latency: Duration,
    /// Why it failed (`None` on a 2xx).
    pub error: Option<String>,
}

impl Attempt {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// The delivery client; see the module docs.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    allow_private: bool,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient").field("allow_private", &self.allow_private).finish()
    }
}

impl WebhookClient {
    pub fn new(timeout: Duration, allow_private: bool) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent("aviary-webhooks/1")
            .dns_resolver(Arc::new(CheckedResolver { allow_private }))
            .build()
            .expect("a client without TLS options builds");
        WebhookClient { http, allow_private }
    }

    /// POSTs `body` to `url`; a 2xx is success, anything else (a redirect included) a failure.
    pub async fn post(&self, url: &str, body: &SignedBody) -> Attempt {
        let started = Instant::now();
        let fail =
            |status: Option<u16>, error: String| Attempt { status, latency: started.elapsed(), error: Some(error) };
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return fail(None, format!("invalid url: {e}")),
        };
        // Literal addresses never reach the resolver: check them here.
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.allow_private
            && !is_public(ip)
        {
            return fail(None, format!("{ip} is not a public address"));
        }
        let mut request = self.http.post(parsed).header("content-type", "application/json");
        for (name, value) in &body.headers {
            request = request.header(*name, value);
        }
        match request.body(body.body.clone()).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Drain (a little of) the body so the connection can be reused.
                let _ = tokio::time::timeout(Duration::from_secs(1), response.bytes()).await;
                if (200..300).contains(&status) {
                    Attempt { status: Some(status), latency: started.elapsed(), error: None }
                } else {
                    fail(Some(status), format!("the receiver answered {status}"))
                }
            }
            Err(e) => fail(None, error_text(&e)),
        }
    }
}

fn error_text(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_timeout() { "timed out".to_owned() } else { e.to_string() };
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
