//! `aviary healthcheck`: the container image's HEALTHCHECK. The runtime image has no curl, so
//! the binary asks its own health endpoint: exit 0 on a 2xx answer, 1 otherwise (Docker's
//! convention), with the reason on stderr.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::HealthcheckArgs;

pub async fn run(args: HealthcheckArgs) -> ExitCode {
    let url = args.url.clone().unwrap_or_else(default_url);
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(args.timeout_s.max(1))).build() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("healthcheck: {e}");
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
            eprintln!("healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `/readyz` on loopback at `AVIARY_LISTEN`'s port (the process's own listener in a container
/// that sets it), else at 8080.
fn default_url() -> String {
    let port =
        std::env::var("AVIARY_LISTEN").ok().and_then(|l| l.parse::<SocketAddr>().ok()).map_or(8080, |a| a.port());
    format!("http://127.0.0.1:{port}/readyz")
}
