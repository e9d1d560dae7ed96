//! The workload (SSE subscribers are in `sse.rs`): WebSocket subscribers that resume every channel with `since` after every
//! disconnect, on the next node, and fetch a new token from the control plane when theirs is
//! refused (expired, revoked); and REST publishers that publish with idempotency keys and
//! retry on any failure (timeout, reset, 5xx, a revoked key) on the next node with the same key.
//! Every event goes to the [`Oracle`] as it happens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::oracle::{Oracle, Pos};

/// Every subscriber's connection enters this channel's presence.
pub const PRESENCE_CHANNEL: &str = "chaos:presence";

/// Connect and handshake bound.
pub(crate) const HANDSHAKE: Duration = Duration::from_secs(10);
/// One REST publish attempt's bound.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Shared {
    pub oracle: Mutex<Oracle>,
    /// Publishers start no new publication once set.
    pub stop_publishing: AtomicBool,
    /// Subscribers and retries end once set.
    pub stop_all: AtomicBool,
    pub proxies: Vec<SocketAddr>,
    pub channels: Vec<String>,
    pub app_id: String,
    /// The API key in use (a key revocation replaces it).
    pub api_key: Mutex<String>,
    /// Where tokens are minted.
    pub control_plane: String,
    /// Set while the control plane is down.
    pub control_plane_down: AtomicBool,
    /// A subscriber that hears nothing for this long (not even a ping) reconnects.
    pub idle: Duration,
    /// Lifetime of the tokens of odd-numbered subscribers, so that they expire mid-stream
    /// (even-numbered ones get an hour).
    pub short_token_ttl: Duration,
}

/// The server refused or ended the connection for its credentials (4001 invalid, 4002
/// expired, 4010 revoked): a new token is needed.
#[derive(Debug)]
pub(crate) struct CredentialsRefused(pub(crate) u16);

impl std::fmt::Display for CredentialsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "credentials refused ({})", self.0)
    }
}

impl std::error::Error for CredentialsRefused {}

/// The close codes that ask for a new token.
pub(crate) fn credentials_code(code: u16) -> Option<CredentialsRefused> {
    matches!(code, 4001 | 4002 | 4010).then_some(CredentialsRefused(code))
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A connection token for `client_id` from the control plane, minted with the key in use.
pub(crate) async fn mint(
    shared: &Shared,
    http: &reqwest::Client,
    client_id: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let key = shared.api_key.lock().clone();
    let res = http
        .post(format!("{}/v1/apps/{}/tokens", shared.control_plane, shared.app_id))
        .bearer_auth(key)
        .json(&json!({"client_id": client_id, "ttl_s": ttl.as_secs()}))
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("minting a token: {status} {body}");
    }
    Ok(body["token"].as_str().ok_or_else(|| anyhow!("no token: {body}"))?.to_owned())
}

/// Subscriber `sub` (client id `sub-<sub>`): connects through proxy `sub % n` first, then the
/// next one after each drop; fetches a new token whenever the server asks for one.
pub async fn subscriber(shared: Arc<Shared>, sub: usize) {
    let http = reqwest::Client::builder().timeout(PUBLISH_TIMEOUT).build().expect("client");
    let ttl = if sub % 2 == 1 { shared.short_token_ttl } else { Duration::from_secs(3600) };
    let client_id = format!("sub-{sub}");
    let mut node = sub;
    let mut token = None;
    while !shared.stop_all.load(Ordering::Relaxed) {
        let Some(current) = token.clone() else {
            match mint(&shared, &http, &client_id, ttl).await {
                Ok(t) => token = Some(t),
                Err(e) => {
                    tracing_line(&format!("subscriber {sub}: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        };
        let proxy = shared.proxies[node % shared.proxies.len()];
        let result = session(&shared, sub, &current, proxy).await;
        shared.oracle.lock().disconnected(sub);
        if let Err(e) = result {
            tracing_line(&format!("subscriber {sub} via {proxy}: {e:#}"));
            if let Some(CredentialsRefused(code)) = e.downcast_ref::<CredentialsRefused>() {
                shared.oracle.lock().credentials_refused(*code);
                token = None;
            }
        }
        node += 1;
        tokio::time::sleep(Duration::from_millis(100 + (sub as u64 * 37) % 200)).await;
    }
}

pub(crate) fn tracing_line(line: &str) {
    if std::env::var_os("AVIARY_CHAOS_VERBOSE").is_some() {
        eprintln!("{line}");
    }
}

/// One connection's life: connect, subscribe every channel (resuming where the oracle says this
/// subscriber is), then hand every frame to the oracle until the connection ends.
async fn session(shared: &Shared, sub: usize, token: &str, proxy: SocketAddr) -> anyhow::Result<()> {
    let (mut ws, _) =
        tokio::time::timeout(HANDSHAKE, tokio_tungstenite::connect_async(format!("ws://{proxy}/v1/connect")))
            .await
            .context("handshake timed out")??;
    ws.send(Message::text(json!({"type": "connect", "token": token}).to_string())).await?;
    let first = tokio::time::timeout(HANDSHAKE, ws.next()).await.context("no connected frame")?;
    let first: Value = match first {
        Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).with_context(|| format!("bad frame {t}"))?,
        Some(Ok(Message::Close(Some(c)))) => match credentials_code(c.code.into()) {
            Some(refused) => return Err(refused.into()),
            None => bail!("connect: closed {c:?}"),
        },
        other => bail!("connect: {other:?}"),
    };
    if first["type"] == "disconnect"
        && let Some(refused) = first["code"].as_u64().and_then(|c| credentials_code(c as u16))
    {
        return Err(refused.into());
    }
    if first["type"] != "connected" {
        bail!("connect refused: {first}");
    }
    let expires_at = first["expires_at"].as_i64();
    let connection_id = first["connection_id"].as_str().unwrap_or_default().to_owned();
    // Every connection is a presence member of one channel: the end checks for ghosts.
    ws.send(Message::text(
        json!({"type": "presence.enter", "channel": PRESENCE_CHANNEL, "id": "presence"}).to_string(),
    ))
    .await?;
    // Subscribe requests carry the channel's index as id; the `since` sent is kept until the reply.
    let mut pending: Vec<Option<Option<Pos>>> = vec![None; shared.channels.len()];
    for (i, channel) in shared.channels.iter().enumerate() {
        let since = shared.oracle.lock().resume_point(sub, channel);
        let mut frame = json!({"type": "subscribe", "channel": channel, "id": i});
        if let Some(s) = &since {
            frame["since"] = json!({"epoch": s.epoch, "offset": s.offset});
        }
        pending[i] = Some(since);
        ws.send(Message::text(frame.to_string())).await?;
    }
    loop {
        if shared.stop_all.load(Ordering::Relaxed) {
            return Ok(());
        }
        let msg = match tokio::time::timeout(shared.idle, ws.next()).await {
            Err(_) => {
                shared.oracle.lock().counts.idle_reconnects += 1;
                bail!("idle for {:?}", shared.idle)
            }
            Ok(None) => bail!("closed"),
            Ok(Some(m)) => m?,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(Some(c)) if credentials_code(c.code.into()).is_some() => {
                return Err(credentials_code(c.code.into()).unwrap_or_else(|| unreachable!()).into());
            }
            Message::Close(c) => bail!("closed: {c:?}"),
            _ => continue,
        };
        let frame: Value = serde_json::from_str(text.as_str()).with_context(|| format!("bad frame {text}"))?;
        let channel = frame["channel"].as_str().unwrap_or_default();
        match frame["type"].as_str().unwrap_or_default() {
            "ok" if frame["id"] == "presence" => shared.oracle.lock().entered(sub, &connection_id),
            "ok" => {
                let i = frame["id"].as_u64().ok_or_else(|| anyhow!("reply without id: {text}"))? as usize;
                let since =
                    pending.get_mut(i).and_then(Option::take).ok_or_else(|| anyhow!("unexpected reply {text}"))?;
                let position = Pos::from_json(&frame["position"]).ok_or_else(|| anyhow!("no position: {text}"))?;
                let recovered = frame["recovered"].as_bool().unwrap_or(false);
                shared.oracle.lock().subscribed(sub, &shared.channels[i], since, recovered, position);
            }
            "message" => {
                let pos = Pos::from_json(&frame).ok_or_else(|| anyhow!("message without position: {text}"))?;
                shared.oracle.lock().message(sub, channel, pos, &frame["data"]);
            }
            "discontinuity" => {
                let previous = Pos::from_json(&frame["previous"]).ok_or_else(|| anyhow!("bad frame {text}"))?;
                let position = Pos::from_json(&frame["position"]).ok_or_else(|| anyhow!("bad frame {text}"))?;
                shared.oracle.lock().discontinuity(sub, channel, previous, position);
            }
            "error" => bail!("error frame: {text}"),
            "disconnect" => {
                let code = frame["code"].as_u64().unwrap_or(0) as u16;
                if code == 4002 {
                    // Token expiry must not come early (one second for rounding).
                    let now = unix_now();
                    let early = expires_at.is_some_and(|exp| now < exp - 1);
                    let mut oracle = shared.oracle.lock();
                    oracle.check_timely_expiry(!early, || {
                        format!(
                            "subscriber {sub}: closed for token expiry at {now}, the token expires at {expires_at:?}"
                        )
                    });
                }
                match credentials_code(code) {
                    Some(refused) => return Err(refused.into()),
                    None => bail!("disconnected: {text}"),
                }
            }
            _ => {}
        }
    }
}

/// Publisher `p`: publishes `{"id", "p", "n", "pad"}` on the channels in turn every `interval`,
/// each with its id as idempotency key, retrying through the next proxy until acknowledged or
/// the run ends.
pub async fn publisher(shared: Arc<Shared>, p: usize, interval: Duration) {
    let http = reqwest::Client::builder().timeout(PUBLISH_TIMEOUT).pool_max_idle_per_host(2).build().expect("client");
    let mut node = p;
    let mut n = 0u64;
    while !shared.stop_publishing.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("p{p}-{n}");
        let channel = &shared.channels[(n as usize + p) % shared.channels.len()];
        let data = json!({"id": id, "p": p, "n": n, "pad": "x".repeat((n % 7 * 40) as usize)});
        shared.oracle.lock().attempt(&id, channel, data.clone());
        let mut attempts = 0u32;
        loop {
            if shared.stop_all.load(Ordering::Relaxed) {
                shared.oracle.lock().gave_up();
                return;
            }
            let proxy = shared.proxies[node % shared.proxies.len()];
            let url = format!("http://{proxy}/v1/apps/{}/channels/{channel}/messages", shared.app_id);
            let key = shared.api_key.lock().clone();
            let res = http.post(&url).bearer_auth(key).json(&json!({"data": data, "idempotency_key": id})).send().await;
            let outcome = match res {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.json::<Value>().await.ok())
                }
                Err(_) => (0, None),
            };
            match outcome {
                (201, Some(body)) if Pos::from_json(&body).is_some() => {
                    let mut oracle = shared.oracle.lock();
                    oracle.acked(&id, Pos::from_json(&body).unwrap_or_else(|| unreachable!()));
                    if shared.control_plane_down.load(Ordering::Relaxed) {
                        oracle.counts.acked_while_control_plane_down += 1;
                    }
                    break;
                }
                (401, _) => shared.oracle.lock().counts.publish_unauthorized += 1,
                // A conflict means the key was taken by other data; a bad request, that the
                // workload is wrong. Anything else (transport failures, timeouts, 5xx, rate
                // limits, a restarted node still loading its config) is retried with the key.
                (status @ (400 | 409), body) => {
                    let mut oracle = shared.oracle.lock();
                    if oracle.violation.is_none() {
                        oracle.violation = Some(format!("publish {id} refused: HTTP {status} {body:?}"));
                    }
                }
                _ => {}
            }
            attempts += 1;
            shared.oracle.lock().counts.publish_retries += 1;
            node += 1;
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempts.min(10)))).await;
        }
        tokio::time::sleep(interval).await;
    }
}

/// The members of [`PRESENCE_CHANNEL`] as `(client_id, connection_id)`, read over REST through
/// proxy `via`.
pub async fn presence_members(
    shared: &Shared,
    via: usize,
) -> anyhow::Result<std::collections::BTreeSet<(String, String)>> {
    let proxy = shared.proxies[via % shared.proxies.len()];
    let key = shared.api_key.lock().clone();
    let res = reqwest::Client::builder()
        .timeout(PUBLISH_TIMEOUT)
        .build()?
        .get(format!("http://{proxy}/v1/apps/{}/channels/{PRESENCE_CHANNEL}/presence", shared.app_id))
        .bearer_auth(key)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("presence: {status} {body}");
    }
    let members = body["members"].as_array().ok_or_else(|| anyhow!("presence: no members in {body}"))?;
    Ok(members
        .iter()
        .map(|m| {
            (
                m["client_id"].as_str().unwrap_or_default().to_owned(),
                m["connection_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}
