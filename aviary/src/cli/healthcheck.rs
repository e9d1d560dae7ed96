//! `aviary healthcheck`: the container image's HEALTHCHECK. The runtime image has no curl, so
//! the binary asks its own health endpoint: exit 0 on a 2xx answer, 1 otherwise (Docker's
//! convention), with the reason on stderr. A process serving TLS (`AVIARY_TLS_CERT` in its
//! container) is asked over `https://` and must present that very certificate.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::HealthcheckArgs;
use crate::cli::https::{self, Trust};

pub async fn run(args: HealthcheckArgs) -> ExitCode {
    let url = args.url.clone().unwrap_or_else(|| default_url(args.tls_cert.is_some()));
    let trust = match (&args.ca, &args.tls_cert) {
        (Some(ca), _) => Trust::Ca(ca.clone()),
        (None, Some(cert)) if url.starts_with("https://") => Trust::Exactly(cert.clone()),
        _ => Trust::SystemRoots,
    };
    let client = match https::client(&trust, Duration::from_secs(args.timeout_s.max(1))) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("healthcheck: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(res) if res.status().is_success() => ExitCode::SUCCESS,
        Ok(res) => {
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            eprintln!("healthcheck: {url} answered {status}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            // The chain of causes says why a handshake failed (e.g. an unknown certificate).
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason = format!("{reason}: {cause}");
                source = cause.source();
            }
            eprintln!("healthcheck: {url}: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// `/readyz` on loopback at `AVIARY_LISTEN`'s port (the process's own listener in a container
/// that sets it), else at 8080; over https when the process serves TLS.
fn default_url(tls: bool) -> String {
    let port =
        std::env::var("AVIARY_LISTEN").ok().and_then(|l| l.parse::<SocketAddr>().ok()).map_or(8080, |a| a.port());
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}/readyz")
}
