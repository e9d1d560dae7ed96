//! The client side of every protocol the bench speaks: one WebSocket connection per simulated
//! user, opened from a chosen loopback source address, plus backend publishing over HTTP.
//!
//! - **Aviary**: `connect` frame with a token, `subscribe`, `publish` frames; REST publish with
//!   an API key (docs/protocol.md).
//! - **Pusher** (Sockudo, and Aviary's own Pusher front end): `/app/<key>?protocol=7`,
//!   `pusher:subscribe` (private channels signed with HMAC-SHA256 of `socket_id:channel`),
//!   `pusher:ping`/`pong`; the HTTP events API signed as Pusher defines (`auth_signature` over
//!   method, path and sorted query). Both Pusher servers are driven by this same code.
//! - **Socket.IO v4** over a plain WebSocket: Engine.IO `0` open, `40` connect, `42[...]` events,
//!   `43` acks, ping `2` / pong `3`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// How long any single handshake or reply may take before the connection counts as failed.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server (and so which protocol) a run targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Aviary,
    /// Aviary driven over the Pusher protocol (`/app/<key>`, the Pusher HTTP API), with the
    /// client code used for Sockudo.
    #[value(name = "aviary-pusher")]
    #[serde(rename = "aviary-pusher")]
    AviaryPusher,
    Sockudo,
    Socketio,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Aviary => "Aviary",
            Kind::AviaryPusher => "Aviary (Pusher)",
            Kind::Sockudo => "Sockudo",
            Kind::Socketio => "Socket.io",
        }
    }

    /// Whether the target speaks the Pusher protocol (WebSocket protocol 7 and the HTTP API).
    pub fn pusher(self) -> bool {
        matches!(self, Kind::Sockudo | Kind::AviaryPusher)
    }

    /// The channel name a scenario uses for room `name` (a private channel over Pusher, so
    /// every subscription checks a channel authorization signature, as real apps' rooms do).
    pub fn room_channel(self, name: &str) -> String {
        if self.pusher() { format!("private-{name}") } else { format!("room:{name}") }
    }

    /// Whether room members publish over the backend HTTP API instead of their WebSocket.
    /// Pusher client events are limited to 10 per second per connection (and are not echoed
    /// to the sender), so over Pusher the rooms scenario publishes through the signed
    /// `POST /apps/{app_id}/events`, which delivers to every member, the publisher included.
    pub fn rooms_publish_over_http(self) -> bool {
        self.pusher()
    }
}

/// Credentials of a server under test.
#[derive(Debug, Clone)]
pub enum Auth {
    /// An Aviary app: its API key for REST and a pool of connection tokens.
    Aviary { app_id: String, api_key: String, tokens: Vec<String> },
    /// A Pusher app (Sockudo, or an Aviary app's Pusher credential).
    Pusher { app_id: String, key: String, secret: String },
    /// The Socket.io peer needs none.
    None,
}

/// How to reach one running server (or cluster).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub kind: Kind,
    /// `host:port` of each node; connection `i` goes to node `i % len`.
    pub nodes: Vec<SocketAddr>,
    /// Base URL for backend HTTP calls (publish, token mint).
    pub http: String,
    pub auth: Auth,
}

/// An open, handshaken connection.
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
    kind: Kind,
    /// Pusher's `socket_id`, needed to sign private-channel subscriptions.
    socket_id: String,
    next_id: u64,
}

fn ws_config() -> WebSocketConfig {
    // Thousands of mostly idle connections: keep buffers small (the default read buffer is
    // 128 KiB per connection).
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

/// Opens connection number `idx` from source address `src` and completes the protocol handshake.
pub async fn open(ep: &Endpoint, idx: usize, src: IpAddr) -> anyhow::Result<Conn> {
    let node = ep.nodes[idx % ep.nodes.len()];
    let socket = TcpSocket::new_v4()?;
    // Binding the source address spreads connections over several 127.0.0.x so one
    // destination does not run out of the ~28k ephemeral ports a single source address has.
    socket.bind(SocketAddr::new(src, 0)).with_context(|| format!("bind {src}"))?;
    let stream = socket.connect(node).await.with_context(|| format!("connect {node} from {src}"))?;
    stream.set_nodelay(true)?;
    let url = match (&ep.kind, &ep.auth) {
        (Kind::Aviary, _) => format!("ws://{node}/v1/connect"),
        (k, Auth::Pusher { key, .. }) if k.pusher() => {
            format!("ws://{node}/app/{key}?protocol=7&client=aviary-bench&version=1.0")
        }
        (k, _) if k.pusher() => bail!("{} needs Pusher credentials", k.label()),
        (_, _) => format!("ws://{node}/socket.io/?EIO=4&transport=websocket"),
    };
    let (ws, _) = tokio::time::timeout(
        REPLY_TIMEOUT,
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())),
    )
    .await
    .context("WebSocket handshake timed out")??;
    let mut conn = Conn { ws, kind: ep.kind, socket_id: String::new(), next_id: 1 };
    match (&ep.kind, &ep.auth) {
        (Kind::Aviary, Auth::Aviary { tokens, .. }) => {
            let token = &tokens[idx % tokens.len()];
            conn.send(json!({"type": "connect", "token": token}).to_string()).await?;
            let reply =
                conn.until(|t| t.contains("\"type\":\"connected\"") || t.contains("\"type\":\"disconnect\"")).await?;
            if !reply.contains("\"connected\"") {
                bail!("connect refused: {reply}");
            }
        }
        (Kind::Aviary, _) => bail!("Aviary needs tokens"),
        (Kind::Sockudo | Kind::AviaryPusher, _) => {
            let text =
                conn.until(|t| t.contains("pusher:connection_established") || t.contains("pusher:error")).await?;
            let frame: Value = serde_json::from_str(&text)?;
            let data: Value = match &frame["data"] {
                Value::String(s) => serde_json::from_str(s)?,
                other => other.clone(),
            };
            conn.socket_id = data["socket_id"].as_str().ok_or_else(|| anyhow!("no socket_id in {text}"))?.to_owned();
        }
        (Kind::Socketio, _) => {
            conn.until(|t| t.starts_with('0')).await?;
            conn.send("40".to_owned()).await?;
            conn.until(|t| t.starts_with("40")).await?;
        }
    }
    Ok(conn)
}

impl Conn {
    async fn send(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Reads until a text frame matches `pred` (answering protocol pings meanwhile).
    async fn until(&mut self, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                let text = self.next_text().await?.ok_or_else(|| anyhow!("closed by the server"))?;
                if pred(&text) {
                    return Ok(text);
                }
            }
        })
        .await
        .context("no reply in time")?
    }

    /// The next text frame, after answering protocol-level pings; `None` when closed.
    async fn next_text(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            let Some(msg) = self.ws.next().await else { return Ok(None) };
            match msg? {
                Message::Text(t) => {
                    let t = t.as_str();
                    if self.answer_ping(t).await? {
                        continue;
                    }
                    return Ok(Some(t.to_owned()));
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
    }

    /// Answers Engine.IO and Pusher application-level pings; true if `t` was one.
    async fn answer_ping(&mut self, t: &str) -> anyhow::Result<bool> {
        match self.kind {
            Kind::Socketio if t == "2" => {
                self.send("3".to_owned()).await?;
                Ok(true)
            }
            Kind::Sockudo | Kind::AviaryPusher if t.contains("\"pusher:ping\"") => {
                self.send(json!({"event": "pusher:pong", "data": {}}).to_string()).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Subscribes to `channel` and waits for the server to confirm.
    pub async fn subscribe(&mut self, ep: &Endpoint, channel: &str) -> anyhow::Result<()> {
        match ep.kind {
            Kind::Aviary => {
                let id = self.next_id;
                self.next_id += 1;
                self.send(json!({"type": "subscribe", "channel": channel, "id": id}).to_string()).await?;
                let reply = self.until(|t| t.contains(&format!("\"id\":{id}"))).await?;
                if !reply.contains("\"type\":\"ok\"") {
                    bail!("subscribe refused: {reply}");
                }
            }
            Kind::Sockudo | Kind::AviaryPusher => {
                let mut data = json!({"channel": channel});
                if channel.starts_with("private-") {
                    let Auth::Pusher { key, secret, .. } = &ep.auth else {
                        bail!("{} needs Pusher credentials", ep.kind.label())
                    };
                    let sig = hmac_hex(secret, &format!("{}:{channel}", self.socket_id));
                    data["auth"] = json!(format!("{key}:{sig}"));
                }
                self.send(json!({"event": "pusher:subscribe", "data": data}).to_string()).await?;
                let reply = self
                    .until(|t| {
                        t.contains("subscription_succeeded")
                            || t.contains("subscription_error")
                            || t.contains("pusher:error")
                    })
                    .await?;
                if !reply.contains("subscription_succeeded") {
                    bail!("subscribe refused: {reply}");
                }
            }
            Kind::Socketio => {
                let id = self.next_id;
                self.next_id += 1;
                self.send(format!("42{id}{}", json!(["join", channel]))).await?;
                self.until(|t| t.starts_with(&format!("43{id}"))).await?;
            }
        }
        Ok(())
    }

    /// Reads for up to `within` until a text frame contains `needle`; false if none did.
    pub async fn wait_for(&mut self, needle: &str, within: Duration) -> anyhow::Result<bool> {
        let found = tokio::time::timeout(within, async {
            loop {
                let text = self.next_text().await?.ok_or_else(|| anyhow!("closed by the server"))?;
                if text.contains(needle) {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        })
        .await;
        match found {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// The frame that publishes `payload` to `channel` from this connection.
    fn publish_frame(&mut self, channel: &str, payload: &str) -> String {
        match self.kind {
            Kind::Aviary => {
                let id = self.next_id;
                self.next_id += 1;
                json!({"type": "publish", "channel": channel, "data": payload, "id": id}).to_string()
            }
            Kind::Sockudo | Kind::AviaryPusher => {
                json!({"event": "client-m", "channel": channel, "data": payload}).to_string()
            }
            Kind::Socketio => format!("42{}", json!(["publish", channel, payload])),
        }
    }

    /// Reads (counting deliveries into `stats`) until `stop`; if `publish` is set, also
    /// publishes a timestamped payload to that channel every interval. Returns the number of
    /// publications sent.
    pub async fn run(
        mut self,
        stats: &Stats,
        shard: usize,
        stop: CancellationToken,
        publish: Option<Publishing>,
    ) -> anyhow::Result<u64> {
        let mut sent = 0u64;
        let (mut tick, channel, size, until, counter) = match &publish {
            Some(p) => {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + p.offset, p.every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                (Some(tick), p.channel.as_str(), p.size, Some(p.until), Some(&p.sent))
            }
            None => (None, "", 0, None, None),
        };
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                msg = self.ws.next() => {
                    let Some(msg) = msg else { bail!("closed by the server") };
                    match msg? {
                        Message::Text(t) => {
                            let t = t.as_str();
                            if !self.answer_ping(t).await? {
                                stats.on_frame(shard, t);
                            }
                        }
                        Message::Close(frame) => bail!("closed by the server: {frame:?}"),
                        _ => {}
                    }
                }
                _ = async { tick.as_mut().expect("guarded").tick().await }, if tick.is_some() => {
                    if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                        tick = None;
                        continue;
                    }
                    let payload = stats.payload(size);
                    let frame = self.publish_frame(channel, &payload);
                    self.send(frame).await?;
                    sent += 1;
                    if let Some(c) = counter {
                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
        Ok(sent)
    }
}

/// A connection that publishes periodically (the rooms scenario).
#[derive(Debug, Clone)]
pub struct Publishing {
    pub channel: String,
    pub every: Duration,
    /// Delay before the first publication, to spread publishers over the interval.
    pub offset: Duration,
    pub size: usize,
    /// No publication after this instant (the run then only drains).
    pub until: tokio::time::Instant,
    /// Counts publications sent (shared by the members of a room).
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Backend HTTP calls: publish to a channel, mint a token.
#[derive(Clone)]
pub struct Backend {
    http: reqwest::Client,
    ep: Endpoint,
}

impl Backend {
    pub fn new(ep: &Endpoint) -> anyhow::Result<Backend> {
        let http =
            reqwest::Client::builder().pool_max_idle_per_host(1024).tcp_nodelay(true).timeout(REPLY_TIMEOUT).build()?;
        Ok(Backend { http, ep: ep.clone() })
    }

    /// The publish request for `payload` (a JSON string) on `channel`: path and query, extra
    /// headers, JSON body.
    fn publish_request(&self, channel: &str, payload: &str) -> (String, Option<String>, String) {
        match &self.ep.auth {
            Auth::Aviary { app_id, api_key, .. } => (
                format!("/v1/apps/{app_id}/channels/{channel}/messages"),
                Some(format!("Bearer {api_key}")),
                json!({"data": payload}).to_string(),
            ),
            Auth::Pusher { app_id, key, secret } => {
                let body = json!({"name": "m", "channels": [channel], "data": payload}).to_string();
                let path = format!("/apps/{app_id}/events");
                let query = pusher_signed_query("POST", &path, key, secret, &body);
                (format!("{path}?{query}"), None, body)
            }
            Auth::None => (format!("/publish/{channel}"), None, Value::String(payload.to_owned()).to_string()),
        }
    }

    /// Publishes `payload` (a JSON string) to `channel`; returns the HTTP status.
    pub async fn publish(&self, channel: &str, payload: &str) -> anyhow::Result<u16> {
        let (path, authorization, body) = self.publish_request(channel, payload);
        let mut req =
            self.http.post(format!("{}{path}", self.ep.http)).header("content-type", "application/json").body(body);
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        // Read the body so the pooled connection can be reused.
        let _ = res.bytes().await;
        Ok(status)
    }

    /// Publishes over `conn`, a lean keep-alive connection (see [`RawHttp`]).
    pub async fn publish_on(&self, conn: &mut RawHttp, channel: &str, payload: &str) -> anyhow::Result<u16> {
        let (path, authorization, body) = self.publish_request(channel, payload);
        conn.post(&path, authorization.as_deref(), body.as_bytes()).await
    }

    /// A lean connection to the server's HTTP API, for throughput runs.
    pub async fn raw_connection(&self) -> anyhow::Result<RawHttp> {
        let addr = self.ep.http.trim_start_matches("http://").trim_end_matches('/');
        RawHttp::connect(addr.parse().with_context(|| format!("HTTP address {addr}"))?).await
    }

    /// Mints one connection token (Aviary only); returns the HTTP status.
    pub async fn mint_token(&self, client_id: &str) -> anyhow::Result<u16> {
        let Auth::Aviary { app_id, api_key, .. } = &self.ep.auth else { bail!("only Aviary mints tokens") };
        let res = self
            .http
            .post(format!("{}/v1/apps/{app_id}/tokens", self.ep.http))
            .bearer_auth(api_key)
            .json(&json!({"client_id": client_id, "ttl_s": 600}))
            .send()
            .await?;
        let status = res.status().as_u16();
        let _ = res.bytes().await;
        Ok(status)
    }
}

/// The query string of a signed Pusher HTTP API request: `auth_key`, `auth_timestamp`,
/// `auth_version`, `body_md5`, then `auth_signature` = hex HMAC-SHA256 of
/// `METHOD\nPATH\nsorted-query` with the app secret.
pub fn pusher_signed_query(method: &str, path: &str, key: &str, secret: &str, body: &str) -> String {
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let md5 = format!("{:x}", md5::compute(body.as_bytes()));
    // Already in key order.
    let query = format!("auth_key={key}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}");
    let sig = hmac_hex(secret, &format!("{method}\n{path}\n{query}"));
    format!("{query}&auth_signature={sig}")
}

/// A minimal HTTP/1.1 keep-alive client: one connection, one request at a time, no pool and
/// no per-request URL parsing. Throughput runs use it so the measurement is bounded by the
/// server rather than by a general-purpose client sharing the same two cores (a `reqwest`
/// client capped every server near the same ~20k requests/s here).
pub struct RawHttp {
    stream: tokio::io::BufStream<TcpStream>,
    addr: SocketAddr,
    host: String,
    request: Vec<u8>,
    line: String,
}

impl RawHttp {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(RawHttp {
            stream: Self::open(addr).await?,
            addr,
            host: addr.to_string(),
            request: Vec::new(),
            line: String::new(),
        })
    }

    async fn open(addr: SocketAddr) -> anyhow::Result<tokio::io::BufStream<TcpStream>> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(tokio::io::BufStream::new(stream))
    }

    /// Sends a JSON `POST` and reads the whole response; returns its status.
    pub async fn post(&mut self, path: &str, authorization: Option<&str>, body: &[u8]) -> anyhow::Result<u16> {
        use std::io::Write as _;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.request.clear();
        write!(self.request, "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n", self.host)?;
        if let Some(a) = authorization {
            write!(self.request, "authorization: {a}\r\n")?;
        }
        write!(self.request, "content-length: {}\r\n\r\n", body.len())?;
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        self.stream.flush().await?;

        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {:?}", self.line))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                bail!("connection closed in the response head");
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.parse()?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut discard = Vec::new();
        if chunked {
            loop {
                self.line.clear();
                self.stream.read_line(&mut self.line).await?;
                let size = usize::from_str_radix(self.line.trim().split(';').next().unwrap_or(""), 16)?;
                discard.resize(size + 2, 0);
                self.stream.read_exact(&mut discard).await?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            discard.resize(n, 0);
            self.stream.read_exact(&mut discard).await?;
        }
        if close {
            // The server ends the connection after this response (Sockudo's HTTP API does so
            // for every request): reconnect, as any client would, and count the cost in.
            self.stream = Self::open(self.addr).await?;
        }
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_signature_matches_the_documented_example() {
        // From Pusher's "Generating authentication signatures" docs (key 278d425bdf160c739803,
        // secret 7ad3773142a6692b25b8).
        let sig = hmac_hex(
            "7ad3773142a6692b25b8",
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f",
        );
        assert_eq!(sig, "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c");
    }
}
