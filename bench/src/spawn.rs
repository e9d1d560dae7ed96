//! Starting a server as a child process and waiting until it listens: the one helper behind
//! `aviary-bench`'s servers (servers.rs) and `aviary-chaos`'s cluster (chaos/cluster.rs).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Spawns `command` with its stdout piped and waits up to `timeout` for its
/// `listening on http://ADDR` line. The rest of its stdout is appended to `log` when given, else
/// read and dropped (so the child never blocks on a full pipe). Everything else about the child
/// (stderr, stdin, environment, kill on drop) is the caller's.
pub async fn spawn_listening(
    mut command: Command,
    what: &str,
    timeout: Duration,
    log: Option<&Path>,
) -> anyhow::Result<(Child, SocketAddr)> {
    command.stdout(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("starting {what}"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("{what}: stdout not piped"))?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(timeout, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(v) = line.trim().strip_prefix("listening on http://") {
                return Ok::<_, anyhow::Error>(Some(v.parse::<SocketAddr>()?));
            }
        }
        Ok(None)
    })
    .await
    .with_context(|| format!("{what} did not start in {} s", timeout.as_secs()))??
    .ok_or_else(|| anyhow!("{what} exited before listening"))?;
    let mut log = match log {
        Some(path) => Some(tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?),
        None => None,
    };
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(log) = log.as_mut() {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
        }
    });
    Ok((child, addr))
}
