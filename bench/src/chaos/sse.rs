//! SSE subscribers: receive-only streams of every channel that, after every drop, open a new
//! stream on the next node with the last event id they processed (`Last-Event-ID`), as a
//! browser's EventSource does, and fetch a new token when theirs is refused or expires. Every
//! event goes to the [`Oracle`](crate::oracle::Oracle) under the same rules as the WebSocket
//! subscribers: resumed exactly once and in order, or told (`recovered: false`,
//! `discontinuity`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use serde_json::Value;

use crate::oracle::Pos;
use crate::workload::{CredentialsRefused, HANDSHAKE, PUBLISH_TIMEOUT, Shared, credentials_code, mint, tracing_line};

/// The client id of SSE subscriber `sub` (oracle index, after the WebSocket subscribers).
fn client_id(sub: usize) -> String {
    format!("sse-{sub}")
}

/// SSE subscriber with oracle index `sub`: streams through proxy `sub % n` first, then the next
/// one after each drop.
pub async fn subscriber(shared: Arc<Shared>, sub: usize) {
    let http = reqwest::Client::builder().connect_timeout(HANDSHAKE).build().expect("client");
    let mint_http = reqwest::Client::builder().timeout(PUBLISH_TIMEOUT).build().expect("client");
    let ttl = if sub % 2 == 1 { shared.short_token_ttl } else { Duration::from_secs(3600) };
    let mut node = sub;
    let mut token = None;
    // The id of the last event processed: what EventSource sends back as `Last-Event-ID`.
    let mut last_id: Option<String> = None;
    while !shared.stop_all.load(Ordering::Relaxed) {
        let Some(current) = token.clone() else {
            match mint(&shared, &mint_http, &client_id(sub), ttl).await {
                Ok(t) => token = Some(t),
                Err(e) => {
                    tracing_line(&format!("sse subscriber {sub}: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        };
        let proxy = shared.proxies[node % shared.proxies.len()];
        let result = session(&shared, &http, sub, &current, proxy, &mut last_id).await;
        shared.oracle.lock().disconnected(sub);
        if let Err(e) = result {
            tracing_line(&format!("sse subscriber {sub} via {proxy}: {e:#}"));
            if let Some(CredentialsRefused(code)) = e.downcast_ref::<CredentialsRefused>() {
                shared.oracle.lock().credentials_refused(*code);
                token = None;
            }
        }
        node += 1;
        tokio::time::sleep(Duration::from_millis(100 + (sub as u64 * 37) % 200)).await;
    }
}

/// One stream's life: open it (resuming with `last_id`), then hand every event to the oracle
/// until it ends, keeping `last_id` current.
async fn session(
    shared: &Shared,
    http: &reqwest::Client,
    sub: usize,
    token: &str,
    proxy: SocketAddr,
    last_id: &mut Option<String>,
) -> anyhow::Result<()> {
    // Where the oracle holds this subscriber, per channel: what the id resumes from.
    let since: Vec<Option<Pos>> = {
        let oracle = shared.oracle.lock();
        shared.channels.iter().map(|c| oracle.resume_point(sub, c)).collect()
    };
    let mut request =
        http.get(format!("http://{proxy}/v1/sse?channels={}", shared.channels.join(","))).bearer_auth(token);
    if let Some(id) = last_id.as_deref() {
        request = request.header("last-event-id", id);
    }
    let res = tokio::time::timeout(HANDSHAKE, request.send()).await.context("request timed out")??;
    let status = res.status().as_u16();
    if status != 200 {
        let body = res.text().await.unwrap_or_default();
        // 401: expired or invalid token; 403 after a revocation. Both want a new token.
        return match status {
            401 if body.contains("token-expired") => Err(CredentialsRefused(4002).into()),
            401 | 403 => Err(CredentialsRefused(4001).into()),
            _ => Err(anyhow!("stream refused: {status} {body}")),
        };
    }
    let mut body = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut expires_at: Option<i64> = None;
    loop {
        if shared.stop_all.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Complete events first; read more only when none is buffered.
        let Some(end) = buf.windows(2).position(|w| w == b"\n\n") else {
            let chunk = match tokio::time::timeout(shared.idle, body.next()).await {
                Err(_) => {
                    shared.oracle.lock().counts.idle_reconnects += 1;
                    bail!("idle for {:?}", shared.idle)
                }
                Ok(None) => bail!("stream ended"),
                Ok(Some(c)) => c?,
            };
            buf.extend_from_slice(&chunk);
            continue;
        };
        let block: Vec<u8> = buf.drain(..end + 2).collect();
        let block = std::str::from_utf8(&block).context("event is not UTF-8")?;
        let (mut event, mut id, mut data) = (None, None, None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v);
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v);
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(v);
            }
        }
        let Some(data) = data else { continue };
        let frame: Value = serde_json::from_str(data).with_context(|| format!("bad event data {data}"))?;
        let channel = frame["channel"].as_str().unwrap_or_default();
        let index = shared.channels.iter().position(|c| c == channel);
        match event.unwrap_or("message") {
            "subscribed" => {
                let i = index.ok_or_else(|| anyhow!("subscribed to an unknown channel: {data}"))?;
                let position = Pos::from_json(&frame["position"]).ok_or_else(|| anyhow!("no position: {data}"))?;
                let recovered = frame["recovered"].as_bool().unwrap_or(false);
                shared.oracle.lock().subscribed(sub, channel, since[i].clone(), recovered, position);
                if expires_at.is_none() {
                    expires_at = token_expiry(token);
                }
            }
            "message" => {
                let pos = Pos::from_json(&frame).ok_or_else(|| anyhow!("message without position: {data}"))?;
                shared.oracle.lock().message(sub, channel, pos, &frame["data"]);
            }
            "discontinuity" => {
                let previous = Pos::from_json(&frame["previous"]).ok_or_else(|| anyhow!("bad event {data}"))?;
                let position = Pos::from_json(&frame["position"]).ok_or_else(|| anyhow!("bad event {data}"))?;
                shared.oracle.lock().discontinuity(sub, channel, previous, position);
            }
            "disconnect" => {
                let code = frame["code"].as_u64().unwrap_or(0) as u16;
                if code == 4002 {
                    let now = crate::workload::unix_now();
                    let early = expires_at.is_some_and(|exp| now < exp - 1);
                    shared.oracle.lock().check_timely_expiry(!early, || {
                        format!("sse subscriber {sub}: stream ended for token expiry at {now}, the token expires at {expires_at:?}")
                    });
                }
                return match credentials_code(code) {
                    Some(refused) => Err(refused.into()),
                    None => Err(anyhow!("disconnected: {data}")),
                };
            }
            other => bail!("unknown event {other:?}: {data}"),
        }
        // Processed: this is where the next stream resumes.
        if let Some(id) = id {
            *last_id = Some(id.to_owned());
        }
    }
}

/// The `exp` claim of a connection token (a JWT), read without verifying it: the runner only
/// uses it to check that the server does not end the stream early.
fn token_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_i64()
}

/// Unpadded base64url, enough for a JWT payload.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_expiry_of_a_token() {
        // {"alg":"EdDSA"} . {"sub":"a","exp":1767225600} . signature
        let token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIiwiZXhwIjoxNzY3MjI1NjAwfQ.c2ln";
        assert_eq!(token_expiry(token), Some(1_767_225_600));
        assert_eq!(token_expiry("not a token"), None);
    }
}
