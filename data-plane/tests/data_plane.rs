//! End-to-end tests of the data plane over real sockets: the router served on 127.0.0.1:0,
//! the real in-memory broker, real WebSocket clients (tokio-tungstenite) and reqwest for SSE
//! and REST. Each test starts its own node with its own app, so tests run in parallel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aviary_broker::memory::MemoryBroker;
use aviary_core::token::claims_for;
use aviary_core::{
    ApiKeyAuthority, ApiKeyError, AppConfig, Capabilities, Namespace, Operation, Quotas, Registry, SigningKey,
    VerifiedApiKey,
};
use aviary_data_plane::{DataPlane, DataPlaneConfig};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Test-only API key authority: fixed secrets mapped to keys. The real one lives in the
/// control plane.
struct FixedKeys(Vec<(String, VerifiedApiKey)>);

#[async_trait]
impl ApiKeyAuthority for FixedKeys {
    async fn verify_api_key(&self, presented: &str) -> Result<VerifiedApiKey, ApiKeyError> {
        use subtle::ConstantTimeEq;
        self.0
            .iter()
            .find(|(secret, _)| bool::from(secret.as_bytes().ct_eq(presented.as_bytes())))
            .map(|(_, k)| k.clone())
            .ok_or(ApiKeyError::Invalid)
    }
}

struct Node {
    base: String,
    ws: String,
    dp: DataPlane,
    registry: Arc<Registry>,
    signing: SigningKey,
    app: AppConfig,
    api_key: String,
    other_app: AppConfig,
    other_api_key: String,
    /// A key of `app` that may do anything on `chat:*` channels only.
    limited_api_key: String,
    http: reqwest::Client,
}

fn app_config(tenant: &str) -> AppConfig {
    let id = format!("app_{}", uuid::Uuid::new_v4().simple());
    AppConfig {
        app_id: id.clone(),
        tenant_id: tenant.into(),
        name: id,
        enabled: true,
        allowed_origins: vec![],
        max_token_ttl_s: 3600,
        namespaces: vec![
            Namespace::default_namespace(),
            Namespace { name: "news".into(), client_publish: false, presence: false, ..Namespace::default_namespace() },
        ],
        tenant_quotas: Quotas::default(),
        quotas: Quotas::default(),
    }
}

fn test_config() -> DataPlaneConfig {
    DataPlaneConfig {
        ws_heartbeat_interval: Duration::from_secs(5),
        sse_heartbeat_interval: Duration::from_secs(5),
        outbound_queue_capacity: 256,
        drain_deadline: Duration::from_secs(5),
        close_timeout: Duration::from_secs(5),
        ..DataPlaneConfig::default()
    }
}

async fn start(configure: impl FnOnce(&mut AppConfig, &mut DataPlaneConfig)) -> Node {
    let tenant = format!("ten_{}", uuid::Uuid::new_v4().simple());
    let mut app = app_config(&tenant);
    let mut config = test_config();
    configure(&mut app, &mut config);
    let other_app = app_config(&tenant);
    let registry = Arc::new(Registry::new());
    let signing = SigningKey::generate();
    registry.set_verifying_keys([signing.verifying_key()]);
    registry.upsert_app(app.clone());
    registry.upsert_app(other_app.clone());
    let api_key = format!("avk_{}", uuid::Uuid::new_v4().simple());
    let other_api_key = format!("avk_{}", uuid::Uuid::new_v4().simple());
    let limited_api_key = format!("avk_{}", uuid::Uuid::new_v4().simple());
    let verified = |app: &AppConfig, n: &str, capabilities: Capabilities| VerifiedApiKey {
        key_id: format!("key_{n}_{}", app.app_id),
        tenant_id: app.tenant_id.clone(),
        app_id: app.app_id.clone(),
        capabilities,
    };
    let keys = FixedKeys(vec![
        (api_key.clone(), verified(&app, "1", Capabilities::all())),
        (other_api_key.clone(), verified(&other_app, "2", Capabilities::all())),
        (limited_api_key.clone(), verified(&app, "3", chat_only())),
    ]);
    let broker = Arc::new(MemoryBroker::new());
    let dp = DataPlane::new(registry.clone(), broker, Arc::new(keys), config, CancellationToken::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, dp.router()).into_future());
    Node {
        base: format!("http://{addr}"),
        ws: format!("ws://{addr}/v1/connect"),
        dp,
        registry,
        signing,
        app,
        api_key,
        other_app,
        other_api_key,
        limited_api_key,
        http: reqwest::Client::new(),
    }
}

fn all_caps() -> Capabilities {
    Capabilities::all()
}

/// Every operation, on `chat:*` channels only.
fn chat_only() -> Capabilities {
    let every = [Operation::Subscribe, Operation::Publish, Operation::Presence, Operation::History];
    Capabilities::from_pairs([("chat:*", &every[..])])
}

impl Node {
    fn token_for(&self, app: &AppConfig, client: &str, ttl_s: i64, cap: Capabilities) -> String {
        let key_id = format!("key_1_{}", app.app_id);
        self.signing.sign(&claims_for(&app.tenant_id, &app.app_id, &key_id, client, ttl_s, cap))
    }

    fn token(&self, client: &str) -> String {
        self.token_for(&self.app, client, 600, all_caps())
    }

    async fn client(&self, client: &str) -> Client {
        Client::connect(&self.ws, &self.token(client)).await
    }

    async fn rest_publish(&self, channel: &str, data: Value) -> Value {
        let url = format!("{}/v1/apps/{}/channels/{channel}/messages", self.base, self.app.app_id);
        let r = self.http.post(url).bearer_auth(&self.api_key).json(&json!({ "data": data })).send().await.unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    async fn rest_batch(&self, messages: Vec<Value>) {
        let url = format!("{}/v1/apps/{}/messages", self.base, self.app.app_id);
        let r =
            self.http.post(url).bearer_auth(&self.api_key).json(&json!({ "messages": messages })).send().await.unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client that keeps frames that arrive while it waits for a reply.
struct Client {
    ws: Ws,
    pending: VecDeque<Value>,
    next_id: u64,
}

/// How a connection ended, as the client saw it.
#[derive(Debug)]
struct Closed {
    code: Option<u16>,
    disconnect: Option<Value>,
}

impl Client {
    async fn open(url: &str, origin: Option<&str>) -> Client {
        let mut request = url.into_client_request().unwrap();
        if let Some(o) = origin {
            request.headers_mut().insert("origin", o.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Client { ws, pending: VecDeque::new(), next_id: 1 }
    }

    async fn connect(url: &str, token: &str) -> Client {
        let mut c = Client::open(url, None).await;
        c.send(json!({ "type": "connect", "token": token })).await;
        let connected = c.recv().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        c
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text frame from the socket (not the pending queue).
    async fn read(&mut self) -> Result<Value, Closed> {
        let mut disconnect = None;
        loop {
            let msg = timeout(WAIT, self.ws.next()).await.expect("timed out waiting for a frame");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "disconnect" {
                        disconnect = Some(v);
                        continue;
                    }
                    return Ok(v);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Closed { code: frame.map(|f| u16::from(f.code)), disconnect });
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Closed { code: None, disconnect }),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        match self.read().await {
            Ok(v) => v,
            Err(closed) => panic!("connection closed unexpectedly: {closed:?}"),
        }
    }

    /// Sends `frame` with a fresh id and returns the reply carrying that id.
    async fn request(&mut self, frame: Value) -> Value {
        match self.try_request(frame).await {
            Ok(v) => v,
            Err(closed) => panic!("connection closed while waiting for a reply: {closed:?}"),
        }
    }

    /// As [`Client::request`], or how the connection ended before the reply.
    async fn try_request(&mut self, mut frame: Value) -> Result<Value, Closed> {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send(frame).await;
        loop {
            let v = self.read().await?;
            if v["id"] == json!(id) {
                return Ok(v);
            }
            self.pending.push_back(v);
        }
    }

    /// Sends `n` publishes to `channel` back to back, before reading any reply, and returns
    /// how many were refused as `rate_limited` and how long the burst took from the first send
    /// to the last reply (other frames stay queued for later reads). A rate bucket can refill
    /// only during that time, which the caller can bound with it whatever the machine's load.
    async fn publish_burst(&mut self, channel: &str, n: u64) -> (u64, Duration) {
        let started = std::time::Instant::now();
        let first = self.next_id;
        for i in 0..n {
            self.send(json!({"type": "publish", "channel": channel, "data": i, "id": first + i})).await;
        }
        self.next_id += n;
        let (mut replies, mut limited) = (0, 0);
        while replies < n {
            let v = self.read().await.expect("the connection stays open");
            match v["id"].as_u64() {
                Some(id) if (first..first + n).contains(&id) => {
                    replies += 1;
                    if v["type"] == "error" {
                        assert_eq!(v["code"], "rate_limited", "{v}");
                        limited += 1;
                    }
                }
                _ => self.pending.push_back(v),
            }
        }
        (limited, started.elapsed())
    }

    async fn ok(&mut self, frame: Value) -> Value {
        let reply = self.request(frame).await;
        assert_eq!(reply["type"], "ok", "{reply}");
        reply
    }

    async fn subscribe(&mut self, channel: &str) -> Value {
        self.ok(json!({ "type": "subscribe", "channel": channel })).await
    }

    /// The next `message` frame.
    async fn message(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == "message" {
                return v;
            }
        }
    }

    /// Reads until the server closes; returns the close code and the `disconnect` frame.
    async fn closed(&mut self) -> Closed {
        loop {
            match self.read().await {
                Ok(_) => continue,
                Err(closed) => return closed,
            }
        }
    }

    async fn expect_close(&mut self, code: u16) -> Closed {
        let closed = self.closed().await;
        assert_eq!(closed.code, Some(code), "{closed:?}");
        closed
    }
}

/// A minimal SSE reader over reqwest.
struct Sse {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    last_id: Option<String>,
}

#[derive(Debug)]
struct SseEvent {
    event: Option<String>,
    id: Option<String>,
    data: Value,
}

impl Sse {
    async fn open(node: &Node, channels: &str, token: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = node.http.get(format!("{}/v1/sse?channels={channels}", node.base)).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        Sse { body: Box::pin(r.bytes_stream()), buf: String::new(), last_id: None }
    }

    async fn event(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let Some(id) = &id {
                    self.last_id = Some(id.clone());
                }
                // Comments (heartbeats) and the retry hint carry no data.
                if let Some(data) = data {
                    return SseEvent { event, id, data };
                }
                continue;
            }
            let chunk = timeout(WAIT, self.body.next()).await.expect("timed out waiting for SSE").unwrap().unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn message(&mut self) -> Value {
        loop {
            let e = self.event().await;
            if e.event.is_none() {
                assert!(e.id.is_some(), "messages carry ids");
                return e.data;
            }
        }
    }
}

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// Pub/sub
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_websocket_and_sse_subscribers_in_order() {
    let node = start(|_, _| {}).await;
    let mut ws = node.client("alice").await;
    let sub = ws.subscribe("chat:lobby").await;
    assert_eq!(sub["recovered"], true);
    assert_eq!(sub["position"]["offset"], 0);
    let mut sse = Sse::open(&node, "chat:lobby", &node.token("bob"), None).await;
    let subscribed = sse.event().await;
    assert_eq!(subscribed.event.as_deref(), Some("subscribed"));

    let published = node.rest_publish("chat:lobby", json!({"text": "from backend"})).await;
    assert_eq!(published["offset"], 1);
    let reply = ws.ok(json!({"type": "publish", "channel": "chat:lobby", "data": {"text": "from alice"}})).await;
    assert_eq!(reply["offset"], 2);
    assert_eq!(reply["epoch"], published["epoch"]);

    for received in [ws.message().await, ws.message().await] {
        assert_eq!(received["channel"], "chat:lobby");
        assert!(received["ts"].as_i64().unwrap() > 0);
    }
    let first = sse.message().await;
    let second = sse.message().await;
    assert_eq!(first["data"], json!({"text": "from backend"}));
    assert_eq!(first["client_id"], Value::Null);
    assert_eq!(second["data"], json!({"text": "from alice"}));
    assert_eq!(second["client_id"], "alice");
    assert_eq!(offsets(&[first, second]), vec![1, 2]);

    // The REST channel listing sees both local subscribers.
    let r: Value = node
        .http
        .get(format!("{}/v1/apps/{}/channels?prefix=chat:", node.base, node.app.app_id))
        .bearer_auth(&node.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"channels": [{"channel": "chat:lobby", "subscribers": 2}]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publish_and_idempotency_keys_return_the_first_result() {
    let node = start(|_, _| {}).await;
    let mut ws = node.client("alice").await;
    ws.subscribe("a").await;
    ws.subscribe("b").await;
    node.rest_batch(vec![
        json!({"channel": "a", "data": 1}),
        json!({"channel": "b", "data": 2, "idempotency_key": "k1"}),
        json!({"channel": "b", "data": 2, "idempotency_key": "k1"}),
    ])
    .await;
    let m1 = ws.message().await;
    let m2 = ws.message().await;
    assert_eq!((m1["channel"].clone(), m1["data"].clone()), (json!("a"), json!(1)));
    assert_eq!((m2["channel"].clone(), m2["data"].clone()), (json!("b"), json!(2)));
    // The duplicate published nothing: the next message on b is offset 2.
    node.rest_publish("b", json!(4)).await;
    let m3 = ws.message().await;
    assert_eq!((m3["data"].clone(), m3["offset"].clone()), (json!(4), json!(2)));
    // The same key with other data is a conflict, not the first result.
    let url = format!("{}/v1/apps/{}/channels/b/messages", node.base, node.app.app_id);
    let r = node.http.post(url).bearer_auth(&node.api_key).json(&json!({"data": 3, "idempotency_key": "k1"}));
    assert_eq!(r.send().await.unwrap().status(), 409);
}

/// Regression (chaos runner finding, issue 22): a backend publish whose answer was lost, retried
/// with the same idempotency key after its API key was rotated, must not publish twice. The
/// backend's keys belong to the app, not to one API key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_retry_with_another_api_key_of_the_app_is_deduplicated() {
    let node = start(|_, _| {}).await;
    let mut ws = node.client("alice").await;
    ws.subscribe("chat:retry").await;
    let url = format!("{}/v1/apps/{}/channels/chat:retry/messages", node.base, node.app.app_id);
    let publish = |key: &str, data: Value| {
        node.http.post(&url).bearer_auth(key).json(&json!({"data": data, "idempotency_key": "order-7"})).send()
    };
    let first = publish(&node.api_key, json!(1)).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // The rotated-to key of the same app: the first result, nothing published again.
    let retry = publish(&node.limited_api_key, json!(1)).await.unwrap();
    assert!(retry.status().is_success(), "{}", retry.status());
    let retry: Value = retry.json().await.unwrap();
    assert_eq!((&retry["epoch"], &retry["offset"]), (&first["epoch"], &first["offset"]));
    // Other data under the same key is a conflict, whichever key sends it.
    assert_eq!(publish(&node.limited_api_key, json!(2)).await.unwrap().status(), 409);
    node.rest_publish("chat:retry", json!("next")).await;
    let m1 = ws.message().await;
    let m2 = ws.message().await;
    assert_eq!((m1["data"].clone(), m2["data"].clone()), (json!(1), json!("next")), "published twice");
    // A client's keys stay its own: the same key from a client publishes anew.
    let own =
        ws.request(json!({"type": "publish", "channel": "chat:retry", "data": 3, "idempotency_key": "order-7"})).await;
    assert_eq!(own["type"], "ok", "{own}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_must_be_short_visible_ascii() {
    let node = start(|_, _| {}).await;
    let mut ws = node.client("alice").await;
    let longest = "k".repeat(128);
    let ok = ws.request(json!({"type": "publish", "channel": "a", "data": 1, "idempotency_key": longest})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let url = format!("{}/v1/apps/{}/channels/a/messages", node.base, node.app.app_id);
    for bad in ["k".repeat(129), String::new(), "has space".into(), "caf\u{e9}".into(), "line\nbreak".into()] {
        let reply = ws.request(json!({"type": "publish", "channel": "a", "data": 1, "idempotency_key": bad})).await;
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("bad_request")), "{bad:?}");
        let r = node
            .http
            .post(&url)
            .bearer_auth(&node.api_key)
            .json(&json!({"data": 1, "idempotency_key": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
        let batch = node
            .http
            .post(format!("{}/v1/apps/{}/messages", node.base, node.app.app_id))
            .bearer_auth(&node.api_key)
            .json(&json!({"messages": [{"channel": "a", "data": 1, "idempotency_key": bad}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(batch.status(), 400, "{bad:?}");
    }
    // Nothing refused was published: the next publication directly follows the accepted one.
    assert_eq!(node.rest_publish("a", json!(2)).await["offset"], 2);
}

// ---------------------------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------------------------

async fn presence_event(c: &mut Client) -> Value {
    loop {
        let v = c.recv().await;
        if v["type"] == "presence" {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_tracks_join_update_leave_and_cleans_up_dead_sockets() {
    let node = start(|_, _| {}).await;
    let mut watcher = node.client("watcher").await;
    watcher.ok(json!({"type": "subscribe", "channel": "room", "presence": true})).await;

    let mut alice = node.client("alice").await;
    alice.ok(json!({"type": "presence.enter", "channel": "room", "data": {"status": "here"}})).await;
    let join = presence_event(&mut watcher).await;
    assert_eq!(join["action"], "join");
    assert_eq!(join["member"]["client_id"], "alice");
    assert_eq!(join["member"]["data"], json!({"status": "here"}));
    alice.ok(json!({"type": "presence.update", "channel": "room", "data": {"status": "away"}})).await;
    let update = presence_event(&mut watcher).await;
    assert_eq!(
        (update["action"].clone(), update["member"]["data"].clone()),
        (json!("update"), json!({"status": "away"}))
    );
    let members = alice.ok(json!({"type": "presence.get", "channel": "room"})).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
    let rest: Value = node
        .http
        .get(format!("{}/v1/apps/{}/channels/room/presence", node.base, node.app.app_id))
        .bearer_auth(&node.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["members"][0]["client_id"], "alice");
    alice.ok(json!({"type": "presence.leave", "channel": "room"})).await;
    assert_eq!(presence_event(&mut watcher).await["action"], "leave");
    // Presence is refused where the namespace disables it.
    let refused = alice.request(json!({"type": "presence.enter", "channel": "news:x"})).await;
    assert_eq!(refused["code"], "forbidden");
    drop(alice);

    // A socket dropped without a close handshake.
    let mut bob = node.client("bob").await;
    bob.ok(json!({"type": "presence.enter", "channel": "room"})).await;
    assert_eq!(presence_event(&mut watcher).await["action"], "join");
    drop(bob);
    let leave = presence_event(&mut watcher).await;
    assert_eq!((leave["action"].clone(), leave["member"]["client_id"].clone()), (json!("leave"), json!("bob")));
}

/// A WebSocket read by a task of its own, so it answers every ping however long the test
/// spends between its steps (a test client read only while awaiting a frame can go silent for
/// longer than a short heartbeat window under load). [`Background::go_silent`] stops reading
/// for good with the socket left open: from then on the client answers no ping.
struct Background {
    sink: futures::stream::SplitSink<Ws, Message>,
    frames: tokio::sync::mpsc::UnboundedReceiver<Value>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    reader: Option<tokio::task::JoinHandle<futures::stream::SplitStream<Ws>>>,
    /// The read half once silent, kept so the socket stays open.
    silent: Option<futures::stream::SplitStream<Ws>>,
    next_id: u64,
}

impl Background {
    fn new(client: Client) -> Background {
        let (sink, mut stream) = client.ws.split();
        let (tx, frames) = tokio::sync::mpsc::unbounded_channel();
        for v in client.pending {
            let _ = tx.send(v);
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return stream,
                    // Reading also sends the pong owed for each ping.
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            let _ = tx.send(serde_json::from_str(&t).expect("JSON frame"));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return stream,
                    },
                }
            }
        });
        Background { sink, frames, stop: Some(stop), reader: Some(reader), silent: None, next_id: 1_000 }
    }

    async fn recv(&mut self) -> Value {
        timeout(WAIT, self.frames.recv()).await.expect("timed out waiting for a frame").expect("socket open")
    }

    async fn ok(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.sink.send(Message::text(frame.to_string())).await.unwrap();
        loop {
            let v = self.recv().await;
            if v["id"] == json!(id) {
                assert_eq!(v["type"], "ok", "{v}");
                return v;
            }
        }
    }

    async fn presence_event(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == "presence" {
                return v;
            }
        }
    }

    async fn go_silent(&mut self) {
        let _ = self.stop.take().expect("not silent yet").send(());
        self.silent = Some(self.reader.take().expect("a reader").await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_answering_pings_is_removed_after_two_intervals() {
    let node = start(|_, c| c.ws_heartbeat_interval = Duration::from_millis(300)).await;
    let mut watcher = node.client("watcher").await;
    watcher.ok(json!({"type": "subscribe", "channel": "room", "presence": true})).await;
    let mut watcher = Background::new(watcher);
    let mut carol = Background::new(node.client("carol").await);
    carol.ok(json!({"type": "presence.enter", "channel": "room"})).await;
    assert_eq!(watcher.presence_event().await["action"], "join");
    carol.go_silent().await;
    let leave = watcher.presence_event().await;
    assert_eq!((leave["action"].clone(), leave["member"]["client_id"].clone()), (json!("leave"), json!("carol")));
    // The watcher, read all along, was never taken for a dead socket.
    let members = watcher.ok(json!({"type": "presence.get", "channel": "room"})).await;
    assert_eq!(members["members"], json!([]));
}

/// Reads raw WebSocket frames (unmasked, from the server) without answering pings, until the
/// close frame; returns its code.
async fn read_until_close_without_answering(stream: &mut TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Parse every complete frame in the buffer.
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let (len, header) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                126 => break,
                127 => panic!("unexpectedly large frame"),
                n => (usize::from(n), 2),
            };
            if buf.len() < header + len {
                break;
            }
            if opcode == 0x8 {
                return (len >= 2).then(|| u16::from_be_bytes([buf[header], buf[header + 1]]));
            }
            buf.drain(..header + len);
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, stream.read(&mut chunk)).await.expect("timed out waiting for the close").unwrap();
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_within_two_heartbeat_intervals() {
    let interval = Duration::from_secs(2);
    let node = start(|_, c| c.ws_heartbeat_interval = interval).await;
    // The server counts silence from the last frame it received, at the earliest the
    // `connect`, which leaves after this instant: measured from here, the close cannot come
    // before two intervals whatever the load, so that bound is exact.
    let before_connect = std::time::Instant::now();
    let client = node.client("quiet").await;
    // From now on the client reads raw bytes and never answers a ping.
    let MaybeTlsStream::Plain(mut tcp) = client.ws.into_inner() else { panic!("plain TCP expected") };
    let code = read_until_close_without_answering(&mut tcp).await;
    let silent_for = before_connect.elapsed();
    assert_eq!(code, Some(4000));
    assert!(silent_for >= interval * 2, "closed too early: {silent_for:?}");
    // How late it came depends on the machine's load too, so it is printed rather than
    // bounded (the read above gives up after WAIT).
    println!("silent connection closed after {silent_for:?} (two intervals: {:?})", interval * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_refresh_follows_the_presence_ttl_not_the_ping_interval() {
    // Pings far apart, a short presence TTL: a live member must be refreshed by its own timer.
    let node = start(|_, c| {
        c.ws_heartbeat_interval = Duration::from_secs(60);
        c.presence_ttl = Duration::from_secs(3);
    })
    .await;
    let mut watcher = node.client("watcher").await;
    watcher.ok(json!({"type": "subscribe", "channel": "room", "presence": true})).await;
    let mut alice = node.client("alice").await;
    alice.ok(json!({"type": "presence.enter", "channel": "room"})).await;
    assert_eq!(presence_event(&mut watcher).await["action"], "join");
    // Two TTLs pass without a leave (absence of an event can only be awaited with a timeout).
    let next = timeout(Duration::from_secs(6), watcher.ws.next()).await;
    assert!(next.is_err(), "unexpected frame: {next:?}");
    let members = watcher.ok(json!({"type": "presence.get", "channel": "room"})).await;
    assert_eq!(members["members"][0]["client_id"], "alice");
}

// ---------------------------------------------------------------------------------------------
// History and resume
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_returns_publications_oldest_first_over_websocket_and_rest() {
    let node = start(|_, _| {}).await;
    for i in 1..=5 {
        node.rest_publish("log", json!(i)).await;
    }
    let mut c = node.client("alice").await;
    let h = c.ok(json!({"type": "history", "channel": "log", "limit": 3})).await;
    let items = h["publications"].as_array().unwrap();
    assert_eq!(items.iter().map(|p| p["data"].as_i64().unwrap()).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(h["position"]["offset"], 5);
    let epoch = h["position"]["epoch"].as_str().unwrap().to_owned();

    let url = format!("{}/v1/apps/{}/channels/log/history?since_offset=2&epoch={epoch}", node.base, node.app.app_id);
    let r: Value = node.http.get(url).bearer_auth(&node.api_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["recovered"], true);
    assert_eq!(offsets(r["publications"].as_array().unwrap()), vec![3, 4, 5]);

    let url = format!("{}/v1/apps/{}/channels/log/history?since_offset=2&epoch=gone", node.base, node.app.app_id);
    let r: Value = node.http.get(url).bearer_auth(&node.api_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["recovered"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_dropped_connection_delivers_missed_publications_exactly_once_in_order() {
    let node = Arc::new(start(|_, _| {}).await);
    let mut c = node.client("alice").await;
    c.subscribe("feed").await;
    for i in 1..=3 {
        node.rest_publish("feed", json!(i)).await;
    }
    let mut last = Value::Null;
    for _ in 0..3 {
        last = c.message().await;
    }
    let since = json!({"epoch": last["epoch"], "offset": last["offset"]});
    drop(c);

    for i in 4..=10 {
        node.rest_publish("feed", json!(i)).await;
    }
    // Keep publishing while the client resubscribes, so live publications race the replay.
    let publisher = {
        let node = node.clone();
        tokio::spawn(async move {
            for i in 11..=40 {
                node.rest_publish("feed", json!(i)).await;
            }
        })
    };
    let mut c = node.client("alice").await;
    let ok = c.ok(json!({"type": "subscribe", "channel": "feed", "since": since})).await;
    assert_eq!(ok["recovered"], true);
    let mut got = Vec::new();
    while got.len() < 37 {
        got.push(c.message().await);
    }
    publisher.await.unwrap();
    assert_eq!(offsets(&got), (4..=40).collect::<Vec<u64>>());
    assert_eq!(got.iter().map(|m| m["data"].as_u64().unwrap()).collect::<Vec<_>>(), (4..=40).collect::<Vec<u64>>());
    // Nothing more (no duplicates): the next frame answers our ping.
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    assert!(c.pending.is_empty(), "unexpected extra frames: {:?}", c.pending);

    // A position from another epoch, or ahead of the stream, cannot be recovered.
    let mut d = node.client("dave").await;
    let ok = d.ok(json!({"type": "subscribe", "channel": "feed", "since": {"epoch": "old", "offset": 1}})).await;
    assert_eq!(ok["recovered"], false);
    let ahead = json!({"epoch": last["epoch"], "offset": 1000});
    let ok = d.ok(json!({"type": "subscribe", "channel": "feed2", "since": ahead})).await;
    assert_eq!(ok["recovered"], false);
}

/// Opens a stream of `a,b`, publishes a1 and b1, reads both and closes it: the id to resume from.
async fn sse_after_a1_and_b1(node: &Node, token: &str) -> String {
    let mut sse = Sse::open(node, "a,b", token, None).await;
    node.rest_publish("a", json!("a1")).await;
    node.rest_publish("b", json!("b1")).await;
    assert_eq!(sse.message().await["data"], "a1");
    assert_eq!(sse.message().await["data"], "b1");
    sse.last_id.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_every_channel_from_last_event_id() {
    let node = start(|_, _| {}).await;
    let token = node.token("bob");
    let last_id = sse_after_a1_and_b1(&node, &token).await;

    node.rest_publish("a", json!("a2")).await;
    node.rest_publish("b", json!("b2")).await;
    node.rest_publish("a", json!("a3")).await;
    let mut sse = Sse::open(&node, "a,b", &token, Some(&last_id)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sse.message().await["data"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, vec!["a2", "a3", "b2"]);
    node.rest_publish("b", json!("b3")).await;
    assert_eq!(sse.message().await["data"], "b3", "live after replay, no duplicates");
}

/// A stream dropped after its first event must still hand the client an id that resumes every
/// channel: the ids start from the positions the stream was resumed with (found by the chaos
/// runner's SSE subscribers, issue 22).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_ids_carry_every_resumed_channel_from_the_first_event() {
    let node = start(|_, _| {}).await;
    let token = node.token("bob");
    let resumed_from = sse_after_a1_and_b1(&node, &token).await;

    node.rest_publish("b", json!("b2")).await;
    // Read only `a`'s `subscribed` event, then drop the stream again.
    let mut sse = Sse::open(&node, "a,b", &token, Some(&resumed_from)).await;
    let first = sse.event().await;
    assert_eq!((first.event.as_deref(), &first.data["channel"]), (Some("subscribed"), &json!("a")));
    let dropped_at = first.id.clone().unwrap();
    drop(sse);

    // Resuming from that id still recovers `b` and delivers b2, exactly once.
    let mut sse = Sse::open(&node, "a,b", &token, Some(&dropped_at)).await;
    for channel in ["a", "b"] {
        let e = sse.event().await;
        assert_eq!((e.event.as_deref(), &e.data["channel"]), (Some("subscribed"), &json!(channel)));
        assert_eq!(e.data["recovered"], true, "{channel}: {:?}", e.data);
    }
    assert_eq!(sse.message().await["data"], "b2");
    node.rest_publish("a", json!("a2")).await;
    assert_eq!(sse.message().await["data"], "a2", "nothing replayed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sends_comment_heartbeats_and_ends_with_4002_when_the_token_expires() {
    let node = start(|_, c| c.sse_heartbeat_interval = Duration::from_millis(200)).await;
    let open = |token: String| {
        let url = format!("{}/v1/sse?channels=x&token={token}", node.base);
        let request = node.http.get(url);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes_stream()
        }
    };
    // Heartbeats, on a stream whose token outlives the test.
    let mut body = open(node.token("s")).await;
    let mut text = String::new();
    while !text.contains(": ping\n\n") {
        let chunk = timeout(WAIT, body.next()).await.unwrap().expect("the stream stays open").unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(body);
    // Expiry: a token of 2 s (1 to 2 in fact, `exp` being whole seconds). Whatever the stream
    // carried before, and however late it was opened, it ends with a 4002 disconnect event.
    let mut body = open(node.token_for(&node.app, "s", 2, all_caps())).await;
    let mut text = String::new();
    while let Some(chunk) = timeout(WAIT, body.next()).await.expect("the stream ends at the token's expiry") {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let (_, disconnect) = text.rsplit_once("event: disconnect\ndata: ").expect("a disconnect event");
    let (disconnect, rest) = disconnect.split_once("\n\n").expect("a complete event");
    assert_eq!(rest, "", "the disconnect is the stream's last event");
    let v: Value = serde_json::from_str(disconnect).unwrap();
    assert_eq!((v["code"].clone(), v["reconnect"].clone()), (json!(4002), json!(true)));
    // Without any token, the stream is refused with a problem.
    let r = node.http.get(format!("{}/v1/sse?channels=x", node.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_closes_with_4002_and_refresh_keeps_the_connection() {
    let node = start(|_, _| {}).await;
    let short = node.token_for(&node.app, "alice", 2, all_caps());
    let mut expiring = Client::connect(&node.ws, &short).await;
    // A short first token, refreshed with a long one. The refresh must reach the server before
    // the first token expires (in 1 to 2 s: `exp` is whole seconds); if this machine was too
    // slow for that, the connection closed with 4002 at `exp`, and the case is tried again with
    // a first token twice as long. Only a close before `exp`, or another answer, fails.
    let mut first_ttl = 2;
    let (mut refreshed, first_exp, ok) = loop {
        let mut c = Client::open(&node.ws, None).await;
        c.send(json!({"type": "connect", "token": node.token_for(&node.app, "bob", first_ttl, all_caps())})).await;
        let exp = c.recv().await["expires_at"].as_i64().unwrap();
        let long = node.token_for(&node.app, "bob", 60, all_caps());
        match c.try_request(json!({"type": "refresh", "token": long})).await {
            Ok(reply) => break (c, exp, reply),
            Err(closed) => {
                assert_eq!(closed.code, Some(4002), "{closed:?}");
                assert!(aviary_core::unix_now() >= exp, "closed before its token expired: {closed:?}");
                first_ttl *= 2;
                assert!(first_ttl <= 32, "the refresh never arrived within a token's lifetime");
            }
        }
    };
    assert_eq!(ok["type"], "ok", "{ok}");
    assert!(ok["expires_at"].as_i64().unwrap() > aviary_core::unix_now() + 30);
    // Refreshing with another client's token is refused.
    let refused = refreshed.request(json!({"type": "refresh", "token": node.token("mallory")})).await;
    assert_eq!(refused["code"], "unauthorized");

    let closed = expiring.expect_close(4002).await;
    assert_eq!(closed.disconnect.unwrap()["code"], 4002);
    // Let the refreshed connection live past its first token's expiry (plus a margin), then
    // check it is still served.
    while aviary_core::unix_now() <= first_exp + 1 {
        assert_eq!(refreshed.request(json!({"type": "ping"})).await["type"], "pong");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(refreshed.request(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_token_and_query_token_connections() {
    let node = start(|_, _| {}).await;
    let mut c = Client::open(&node.ws, None).await;
    c.send(json!({"type": "connect", "token": "garbage"})).await;
    c.expect_close(4001).await;
    // A token living longer than the app allows is refused even though it is well signed.
    let mut c = Client::open(&node.ws, None).await;
    let immortal = node.token_for(&node.app, "x", i64::from(node.app.max_token_ttl_s) + 3600, all_caps());
    c.send(json!({"type": "connect", "token": immortal})).await;
    c.expect_close(4001).await;
    // ?token= authenticates without a connect frame.
    let mut q = Client::open(&format!("{}?token={}", node.ws, node.token("q")), None).await;
    assert_eq!(q.recv().await["type"], "connected");
}

// ---------------------------------------------------------------------------------------------
// Refusals: each gets its documented answer, and bystanders see nothing wrong
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_get_their_documented_answers_and_leave_other_clients_alone() {
    let node = start(|app, _| {
        app.allowed_origins = vec!["https://good.example".into()];
        app.quotas.max_message_bytes = 1024;
    })
    .await;
    let mut bystander = node.client("bystander").await;
    bystander.subscribe("chat:x").await;

    // Forbidden channel: the token only allows chat:*.
    let limited = Capabilities::from_pairs([("chat:*", &[Operation::Subscribe, Operation::Publish][..])]);
    let mut c = Client::connect(&node.ws, &node.token_for(&node.app, "lim", 600, limited)).await;
    let r = c.request(json!({"type": "subscribe", "channel": "secret"})).await;
    assert_eq!((r["type"].clone(), r["code"].clone()), (json!("error"), json!("forbidden")));
    let r = c.request(json!({"type": "history", "channel": "chat:x"})).await;
    assert_eq!(r["code"], "forbidden");
    // Clients may not publish on news:*, whatever their token says.
    let mut full = node.client("full").await;
    assert_eq!(full.request(json!({"type": "publish", "channel": "news:1", "data": 1})).await["code"], "forbidden");
    // Payload over max_message_bytes: refused, connection kept.
    let big = "x".repeat(1500);
    let r = full.request(json!({"type": "publish", "channel": "chat:x", "data": big})).await;
    assert_eq!(r["code"], "payload_too_large");
    // Malformed JSON: bad_request, connection kept.
    full.ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(full.recv().await["code"], "bad_request");
    assert_eq!(full.request(json!({"type": "ping"})).await["type"], "pong");

    // Wrong app: a REST key of another app, and a token of a disabled app.
    let url = format!("{}/v1/apps/{}/channels/chat:x/messages", node.base, node.app.app_id);
    let r = node.http.post(&url).bearer_auth(&node.other_api_key).json(&json!({"data": 1})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "https://aviary.dev/problems/forbidden");
    let r = node.http.post(&url).json(&json!({"data": 1})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let mut disabled = node.other_app.clone();
    disabled.enabled = false;
    node.registry.upsert_app(disabled.clone());
    let mut c = Client::open(&node.ws, None).await;
    c.send(json!({"type": "connect", "token": node.token_for(&disabled, "x", 600, all_caps())})).await;
    c.expect_close(4004).await;

    // Wrong Origin.
    let mut c = Client::open(&node.ws, Some("https://evil.example")).await;
    c.send(json!({"type": "connect", "token": node.token("o")})).await;
    c.expect_close(4003).await;
    let mut good = Client::open(&node.ws, Some("https://good.example")).await;
    good.send(json!({"type": "connect", "token": node.token("o")})).await;
    assert_eq!(good.recv().await["type"], "connected");

    // Oversized frame: closed with 1009.
    let mut c = node.client("big").await;
    c.send(json!({"type": "publish", "channel": "chat:x", "data": "y".repeat(20_000)})).await;
    c.expect_close(1009).await;

    // The bystander saw nothing wrong and still receives.
    node.rest_publish("chat:x", json!("still here")).await;
    let m = bystander.message().await;
    assert_eq!(m["data"], "still here");
    assert_eq!(m["offset"], 1, "none of the refused publishes went through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_never_see_each_others_channels() {
    let node = start(|_, _| {}).await;
    let mut mine = node.client("a").await;
    mine.subscribe("shared").await;
    let mut theirs = Client::connect(&node.ws, &node.token_for(&node.other_app, "b", 600, all_caps())).await;
    theirs.subscribe("shared").await;
    theirs.ok(json!({"type": "publish", "channel": "shared", "data": "theirs"})).await;
    node.rest_publish("shared", json!("mine")).await;
    assert_eq!(mine.message().await["data"], "mine");
    assert_eq!(theirs.message().await["data"], "theirs");
    assert_eq!(mine.request(json!({"type": "ping"})).await["type"], "pong");
    assert!(mine.pending.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_garbage_closes_with_4000() {
    let node = start(|_, c| c.max_malformed_frames = 3).await;
    let mut c = node.client("g").await;
    for _ in 0..3 {
        c.ws.send(Message::text("][")).await.unwrap();
        assert_eq!(c.recv().await["code"], "bad_request");
    }
    c.ws.send(Message::text("][")).await.unwrap();
    c.expect_close(4000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_past_the_rate_quota_is_rate_limited_without_closing() {
    let node = start(|app, _| app.quotas.max_messages_per_s = 5).await;
    let mut bystander = node.client("b").await;
    bystander.subscribe("f").await;
    let mut flooder = node.client("f").await;
    // 50 publishes back to back into a bucket of 5 refilled at 5/s: at most 5 plus what refills
    // while the burst lasts may pass, however slow the machine; and unless the burst lasts 9 s,
    // some are refused.
    let (limited, took) = flooder.publish_burst("f", 50).await;
    let accepted = 50 - limited;
    println!("rate burst: {accepted} of 50 accepted in {took:?}");
    assert!(limited > 0, "nothing was limited");
    assert!(accepted as f64 <= 5.0 + 5.0 * took.as_secs_f64() + 1e-6, "{accepted} accepted in {took:?}");
    assert_eq!(flooder.request(json!({"type": "ping"})).await["type"], "pong");
    // The bystander receives the accepted ones, in order.
    let mut got = Vec::new();
    for _ in 0..accepted {
        got.push(bystander.message().await);
    }
    assert_eq!(offsets(&got), (1..=accepted).collect::<Vec<_>>());
    // REST shares the budget.
    // REST shares the budget: of 30 sent at once, some are refused unless they arrive spread
    // over 5 s.
    let url = format!("{}/v1/apps/{}/channels/f/messages", node.base, node.app.app_id);
    let sends = (0..30).map(|_| node.http.post(&url).bearer_auth(&node.api_key).json(&json!({"data": 0})).send());
    let statuses: Vec<_> = futures::future::join_all(sends).await.into_iter().map(|r| r.unwrap().status()).collect();
    assert!(statuses.contains(&reqwest::StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert!(statuses.iter().all(|s| s.as_u16() == 201 || s.as_u16() == 429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_quota_rejects_with_4009() {
    let node = start(|app, _| app.quotas.max_connections = 2).await;
    let mut a = node.client("a").await;
    let _b = node.client("b").await;
    let mut c = Client::open(&node.ws, None).await;
    c.send(json!({"type": "connect", "token": node.token("c")})).await;
    let closed = c.expect_close(4009).await;
    assert_eq!(closed.disconnect.unwrap()["reason"], "connection quota exceeded");
    assert_eq!(a.request(json!({"type": "ping"})).await["type"], "pong");
    // SSE counts too, and is refused with a problem.
    let r =
        node.http.get(format!("{}/v1/sse?channels=x", node.base)).bearer_auth(node.token("d")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    // A closed connection frees its slot by the time the client sees the close completed.
    a.ws.close(None).await.unwrap();
    while timeout(WAIT, a.ws.next()).await.unwrap().is_some() {}
    let mut d = Client::open(&node.ws, None).await;
    d.send(json!({"type": "connect", "token": node.token("d")})).await;
    assert_eq!(d.recv().await["type"], "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_and_presence_quotas_answer_quota_exceeded() {
    let node = start(|app, _| {
        app.quotas.max_subscriptions_per_connection = 2;
        app.quotas.max_presence_members = 1;
    })
    .await;
    let mut c = node.client("a").await;
    c.subscribe("one").await;
    c.subscribe("two").await;
    assert_eq!(c.request(json!({"type": "subscribe", "channel": "three"})).await["code"], "quota_exceeded");
    c.ok(json!({"type": "unsubscribe", "channel": "one"})).await;
    c.subscribe("three").await;
    c.ok(json!({"type": "presence.enter", "channel": "room"})).await;
    let mut d = node.client("d").await;
    assert_eq!(d.request(json!({"type": "presence.enter", "channel": "room"})).await["code"], "quota_exceeded");
    // Both connections carry on.
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    assert_eq!(d.request(json!({"type": "ping"})).await["type"], "pong");
    // SSE asking for more channels than allowed is refused up front.
    let r = node
        .http
        .get(format!("{}/v1/sse?channels=a,b,c", node.base))
        .bearer_auth(node.token("s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

// ---------------------------------------------------------------------------------------------
// Backpressure, revocation, drain
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_with_4008_while_a_fast_one_keeps_receiving() {
    let node = start(|app, c| {
        app.quotas.max_messages_per_s = 1_000_000;
        app.tenant_quotas.max_messages_per_s = 1_000_000;
        c.outbound_queue_capacity = 16;
        c.close_timeout = Duration::from_secs(20);
    })
    .await;
    let mut slow = node.client("slow").await;
    slow.subscribe("firehose").await;
    let mut fast = node.client("fast").await;
    fast.subscribe("firehose").await;
    // The fast client reads continuously in its own task.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let m = fast.message().await;
            if seen_tx.send(m["offset"].as_u64().unwrap()).is_err() {
                return fast;
            }
        }
    });

    let payload = "z".repeat(32 * 1024);
    let mut published = 0u64;
    // Publish until the slow client (which never reads) has been cut; bounded at ~200 MB.
    while node.dp.connection_count() > 1 {
        assert!(published < 6_000, "slow consumer was never cut");
        let batch: Vec<Value> = (0..10).map(|_| json!({"channel": "firehose", "data": payload})).collect();
        node.rest_batch(batch).await;
        published += 10;
        for expected in published - 9..=published {
            let got = timeout(WAIT, seen_rx.recv()).await.unwrap().unwrap();
            assert_eq!(got, expected, "the fast client receives everything, in order");
        }
    }
    // The fast client is unaffected: one more round trip of publications.
    node.rest_publish("firehose", json!("after")).await;
    assert_eq!(timeout(WAIT, seen_rx.recv()).await.unwrap().unwrap(), published + 1);
    drop(seen_rx);
    drop(reader);

    // When the slow client finally reads, it finds what the kernel buffered, then 4008.
    let closed = slow.closed().await;
    assert_eq!(closed.code, Some(4008), "{closed:?}");
    assert_eq!(closed.disconnect.unwrap()["reconnect"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_app_removal_close_connections() {
    let node = start(|_, _| {}).await;
    let mut a = node.client("alice").await;
    let mut b = node.client("bob").await;
    node.registry.revoke_client(&node.app.app_id, "alice", aviary_core::unix_now_ms());
    a.expect_close(4010).await;
    assert_eq!(b.request(json!({"type": "ping"})).await["type"], "pong");
    node.registry.revoke_api_key(&node.app.app_id, &format!("key_1_{}", node.app.app_id));
    b.expect_close(4010).await;

    let mut other = Client::connect(&node.ws, &node.token_for(&node.other_app, "c", 600, all_caps())).await;
    node.registry.remove_app(&node.other_app.app_id);
    other.expect_close(4004).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_tells_clients_to_reconnect_elsewhere_and_refuses_new_ones() {
    let node = start(|_, _| {}).await;
    let mut ws = node.client("a").await;
    ws.subscribe("x").await;
    let mut sse = Sse::open(&node, "x", &node.token("b"), None).await;
    assert_eq!(sse.event().await.event.as_deref(), Some("subscribed"));
    let dp = node.dp.clone();
    let drained = tokio::spawn(async move { dp.drain().await });
    let closed = ws.expect_close(1001).await;
    assert_eq!(closed.disconnect.unwrap()["reconnect"], true);
    let last = sse.event().await;
    assert_eq!((last.event.as_deref(), last.data["code"].clone()), (Some("disconnect"), json!(1001)));
    assert_eq!(timeout(WAIT, drained).await.unwrap().unwrap(), 0);
    assert!(node.dp.is_draining());
    assert!(tokio_tungstenite::connect_async(&node.ws).await.is_err());
}

#[test]
fn openapi_documents_every_rest_route() {
    let doc = aviary_data_plane::openapi();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    for p in [
        "/v1/apps/{app_id}/channels/{channel}/messages",
        "/v1/apps/{app_id}/messages",
        "/v1/apps/{app_id}/channels/{channel}/history",
        "/v1/apps/{app_id}/channels/{channel}/presence",
        "/v1/apps/{app_id}/channels",
    ] {
        assert!(doc.paths.paths.contains_key(p), "{p} missing from {paths:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// A global `metrics` recorder that keeps every series in memory, keyed by name and sorted
/// labels, so a test can read back what the data plane recorded for its own app.
#[derive(Default)]
struct MemoryRecorder {
    counters: dashmap::DashMap<String, Arc<std::sync::atomic::AtomicU64>>,
    gauges: dashmap::DashMap<String, Arc<std::sync::atomic::AtomicU64>>,
    histograms: dashmap::DashMap<String, Arc<HistogramCount>>,
}

#[derive(Default)]
struct HistogramCount(std::sync::atomic::AtomicU64);

impl metrics::HistogramFn for HistogramCount {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn series(key: &metrics::Key) -> String {
    let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl metrics::Recorder for MemoryRecorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.counters.entry(series(key)).or_default().clone())
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.gauges.entry(series(key)).or_default().clone())
    }
    fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.histograms.entry(series(key)).or_default().clone())
    }
}

static RECORDER: std::sync::OnceLock<&'static MemoryRecorder> = std::sync::OnceLock::new();

fn recorder() -> &'static MemoryRecorder {
    RECORDER.get_or_init(|| {
        let r: &'static MemoryRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(r).expect("no other recorder in this test binary");
        r
    })
}

impl MemoryRecorder {
    fn counter(&self, series: &str) -> u64 {
        self.counters.get(series).map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
    fn gauge(&self, series: &str) -> f64 {
        self.gauges.get(series).map_or(0.0, |g| f64::from_bits(g.load(std::sync::atomic::Ordering::Relaxed)))
    }
    fn histogram_count(&self, series: &str) -> u64 {
        self.histograms.get(series).map_or(0, |h| h.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_recorded_per_tenant_and_app() {
    let metrics = recorder();
    let node = start(|app, _| app.quotas.max_messages_per_s = 1).await;
    let labels = format!("app={},tenant={}", node.app.app_id, node.app.tenant_id);
    // Series keys list labels sorted by name.
    let with = |extra: &str| {
        let (k, _) = extra.split_once('=').unwrap();
        if k < "tenant" {
            format!("app={},{extra},tenant={}", node.app.app_id, node.app.tenant_id)
        } else {
            format!("{labels},{extra}")
        }
    };
    let mut c = node.client("m").await;
    c.subscribe("x").await;
    assert_eq!(metrics.gauge(&format!("aviary_connections{{{}}}", with("transport=ws"))), 1.0);
    assert_eq!(metrics.gauge(&format!("aviary_subscriptions{{{labels}}}")), 1.0);
    node.rest_publish("x", json!("hello")).await;
    let m = c.message().await;
    assert_eq!(metrics.counter(&format!("aviary_messages_in_total{{{}}}", with("source=rest"))), 1);
    assert_eq!(metrics.counter(&format!("aviary_bytes_in_total{{{}}}", with("source=rest"))), 7);
    // The writer records the delivery as it writes the frame, which the client has now read.
    assert_eq!(metrics.counter(&format!("aviary_messages_out_total{{{labels}}}")), 1);
    assert_eq!(
        metrics.counter(&format!("aviary_bytes_out_total{{{labels}}}")),
        serde_json::to_string(&m).unwrap().len() as u64
    );
    assert_eq!(metrics.histogram_count(&format!("aviary_publish_to_deliver_seconds{{{labels}}}")), 1);
    // Past the one-per-second budget, client publishes are refused and counted by reason: of
    // 20 sent back to back, some are refused unless the burst lasts 19 s.
    let (limited, _) = c.publish_burst("x", 20).await;
    assert!(limited > 0, "nothing was limited");
    assert_eq!(metrics.counter(&format!("aviary_rejections_total{{{}}}", with("reason=rate_limited"))), limited);
    // The accepted ones come back to their publisher (it is subscribed).
    let accepted = 20 - limited;
    let mut accepted_bytes = 0;
    for _ in 0..accepted {
        accepted_bytes += c.message().await["data"].to_string().len() as u64;
    }
    // The same activity is metered for billing.
    let usage = node.dp.usage_meter().drain(aviary_core::unix_now_ms());
    let mine = usage.iter().find(|r| r.app_id == node.app.app_id).unwrap();
    assert_eq!(
        (mine.peak_connections, mine.messages_published, mine.messages_delivered),
        (1, 1 + accepted, 1 + accepted)
    );
    assert_eq!(mine.bytes_in, 7 + accepted_bytes);
}

// ---------------------------------------------------------------------------------------------
// One answer per refusal, on every transport
// ---------------------------------------------------------------------------------------------

/// One refusal, as each transport asks for it. `None` where a transport cannot ask (SSE only
/// subscribes; a backend may publish where clients may not).
struct Refusal {
    name: &'static str,
    /// The protocol error code; REST and SSE answer the problem `type` with `-` for `_`.
    code: &'static str,
    /// Whether the token and API key are limited to `chat:*` ([`chat_only`]).
    limited: bool,
    ws: Value,
    sse: Option<&'static str>,
    /// Method, path below `/v1/apps/{app_id}`, body.
    rest: Option<(reqwest::Method, &'static str, Option<Value>)>,
}

/// The code a problem `type` stands for: `https://aviary.dev/problems/bad-request` → `bad_request`.
fn problem_code(problem: &Value) -> String {
    let kind = problem["type"].as_str().unwrap_or_default();
    kind.strip_prefix("https://aviary.dev/problems/").unwrap_or(kind).replace('-', "_")
}

async fn rest_refusal(node: &Node, key: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> String {
    let mut request = node.http.request(method, format!("{}/v1/apps/{}{path}", node.base, node.app.app_id));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.bearer_auth(key).send().await.unwrap();
    assert!(r.status().is_client_error(), "{path}: {}", r.status());
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    problem_code(&r.json().await.unwrap())
}

async fn sse_refusal(node: &Node, token: &str, channels: &str) -> String {
    let url = format!("{}/v1/sse?channels={channels}", node.base);
    let r = node.http.get(url).bearer_auth(token).send().await.unwrap();
    assert!(r.status().is_client_error(), "{channels}: {}", r.status());
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    problem_code(&r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_gets_the_same_code_on_websocket_sse_and_rest() {
    use reqwest::Method;
    let node = start(|app, _| app.quotas.max_message_bytes = 1024).await;
    let big = "x".repeat(1500);
    let cases = [
        Refusal {
            name: "bad channel name",
            code: "bad_request",
            limited: false,
            ws: json!({"type": "publish", "channel": "a*b", "data": 1}),
            sse: Some("a*b"),
            rest: Some((Method::POST, "/channels/a*b/messages", Some(json!({"data": 1})))),
        },
        Refusal {
            name: "bad channel name in history",
            code: "bad_request",
            limited: false,
            ws: json!({"type": "history", "channel": "a*b"}),
            sse: None,
            rest: Some((Method::GET, "/channels/a*b/history", None)),
        },
        Refusal {
            name: "namespace option off: presence on news:*",
            code: "forbidden",
            limited: false,
            ws: json!({"type": "presence.get", "channel": "news:1"}),
            sse: None,
            rest: Some((Method::GET, "/channels/news:1/presence", None)),
        },
        Refusal {
            name: "namespace option off: client publish on news:*",
            code: "forbidden",
            limited: false,
            ws: json!({"type": "publish", "channel": "news:1", "data": 1}),
            sse: None,
            rest: None,
        },
        Refusal {
            name: "missing capability to publish",
            code: "forbidden",
            limited: true,
            ws: json!({"type": "publish", "channel": "secret", "data": 1}),
            sse: None,
            rest: Some((Method::POST, "/channels/secret/messages", Some(json!({"data": 1})))),
        },
        Refusal {
            name: "missing capability to subscribe",
            code: "forbidden",
            limited: true,
            ws: json!({"type": "subscribe", "channel": "secret"}),
            sse: Some("chat:ok,secret"),
            rest: None,
        },
        Refusal {
            name: "missing capability to read history",
            code: "forbidden",
            limited: true,
            ws: json!({"type": "history", "channel": "secret"}),
            sse: None,
            rest: Some((Method::GET, "/channels/secret/history", None)),
        },
        Refusal {
            name: "missing capability for presence",
            code: "forbidden",
            limited: true,
            ws: json!({"type": "presence.get", "channel": "secret"}),
            sse: None,
            rest: Some((Method::GET, "/channels/secret/presence", None)),
        },
        Refusal {
            name: "bad idempotency key",
            code: "bad_request",
            limited: false,
            ws: json!({"type": "publish", "channel": "chat:x", "data": 1, "idempotency_key": "has space"}),
            sse: None,
            rest: Some((
                Method::POST,
                "/channels/chat:x/messages",
                Some(json!({"data": 1, "idempotency_key": "has space"})),
            )),
        },
        Refusal {
            name: "bad idempotency key in a batch",
            code: "bad_request",
            limited: false,
            ws: json!({"type": "publish", "channel": "chat:x", "data": 1, "idempotency_key": ""}),
            sse: None,
            rest: Some((
                Method::POST,
                "/messages",
                Some(json!({"messages": [{"channel": "chat:x", "data": 1, "idempotency_key": ""}]})),
            )),
        },
        Refusal {
            // The capability (check 4) comes before the idempotency key (check 5) everywhere.
            name: "two refusals at once: the first in the documented order answers",
            code: "forbidden",
            limited: true,
            ws: json!({"type": "publish", "channel": "secret", "data": 1, "idempotency_key": "has space"}),
            sse: None,
            rest: Some((
                Method::POST,
                "/channels/secret/messages",
                Some(json!({"data": 1, "idempotency_key": "has space"})),
            )),
        },
        Refusal {
            name: "oversize payload",
            code: "payload_too_large",
            limited: false,
            ws: json!({"type": "publish", "channel": "chat:x", "data": big}),
            sse: None,
            rest: Some((Method::POST, "/channels/chat:x/messages", Some(json!({"data": big})))),
        },
    ];
    let full = node.token("refused");
    let limited = node.token_for(&node.app, "refused", 600, chat_only());
    let mut ws_full = Client::connect(&node.ws, &full).await;
    let mut ws_limited = Client::connect(&node.ws, &limited).await;
    for case in cases {
        let (ws, token, key) = if case.limited {
            (&mut ws_limited, &limited, &node.limited_api_key)
        } else {
            (&mut ws_full, &full, &node.api_key)
        };
        let reply = ws.request(case.ws.clone()).await;
        assert_eq!(reply["type"], "error", "{}: {reply}", case.name);
        assert_eq!(reply["code"], case.code, "{} over WebSocket: {reply}", case.name);
        if let Some(channels) = case.sse {
            assert_eq!(sse_refusal(&node, token, channels).await, case.code, "{} over SSE", case.name);
        }
        if let Some((method, path, body)) = case.rest {
            assert_eq!(rest_refusal(&node, key, method, path, body).await, case.code, "{} over REST", case.name);
        }
    }
    // None of the refused publishes went through.
    assert_eq!(node.rest_publish("chat:x", json!("after")).await["offset"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_quota_every_transport_answers_rate_limited() {
    // One message per second for the app, shared by clients and backends: spend it, then
    // publish until refused (bounded), and check every refusal's code on both transports.
    let node = start(|app, _| app.quotas.max_messages_per_s = 1).await;
    let mut ws = node.client("flood").await;
    let mut ws_codes = Vec::new();
    for i in 0..20 {
        let reply = ws.request(json!({"type": "publish", "channel": "chat:x", "data": i})).await;
        if reply["type"] == "error" {
            ws_codes.push(reply["code"].as_str().unwrap().to_owned());
        }
    }
    assert!(!ws_codes.is_empty(), "twenty publishes within a 1/s quota were all accepted");
    assert!(ws_codes.iter().all(|c| c == "rate_limited"), "{ws_codes:?}");
    let mut rest_codes = Vec::new();
    for i in 0..20 {
        let url = format!("{}/v1/apps/{}/channels/chat:x/messages", node.base, node.app.app_id);
        let r = node.http.post(url).bearer_auth(&node.api_key).json(&json!({ "data": i })).send().await.unwrap();
        if r.status() != 201 {
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            rest_codes.push(problem_code(&r.json().await.unwrap()));
        }
    }
    assert!(!rest_codes.is_empty(), "twenty publishes within a 1/s quota were all accepted");
    assert!(rest_codes.iter().all(|c| c == "rate_limited"), "{rest_codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_json_get_the_same_answers_as_on_the_control_plane() {
    let node = start(|_, _| {}).await;
    let url = format!("{}/v1/apps/{}/channels/chat:x/messages", node.base, node.app.app_id);
    let send = |content_type: &'static str, body: String| {
        node.http.post(&url).bearer_auth(&node.api_key).header("content-type", content_type).body(body).send()
    };
    let cases = [
        ("text/plain", r#"{"data": 1}"#.to_owned(), 415, "unsupported-media-type", "must be JSON"),
        ("application/json", "{not json".to_owned(), 400, "bad-request", "malformed JSON body"),
        ("application/json", r#"{"dta": 1}"#.to_owned(), 400, "bad-request", "invalid JSON body"),
        (
            "application/json",
            format!(r#"{{"data": "{}"}}"#, "x".repeat(aviary_data_plane::rest::MAX_BODY_BYTES)),
            413,
            "payload-too-large",
            "request body exceeds",
        ),
    ];
    for (content_type, body, status, kind, detail) in cases {
        let r = send(content_type, body).await.unwrap();
        assert_eq!(r.status(), status, "{kind}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["type"], format!("https://aviary.dev/problems/{kind}"));
        assert!(problem["detail"].as_str().unwrap().contains(detail), "{problem}");
    }
    // Nothing was published.
    assert_eq!(node.rest_publish("chat:x", json!(1)).await["offset"], 1);
}

// ---------------------------------------------------------------------------------------------
// Pusher HTTP API
// ---------------------------------------------------------------------------------------------

/// Signs a Pusher HTTP API GET the way Pusher's server SDKs do (every parameter in the query).
fn pusher_get_url(base: &str, path: &str, key: &str, secret: &str, params: &[(&str, &str)], timestamp: i64) -> String {
    let mut query: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    query.push(("auth_key".into(), key.into()));
    query.push(("auth_timestamp".into(), timestamp.to_string()));
    query.push(("auth_version".into(), "1.0".into()));
    let request = aviary_core::pusher::signature::ApiRequest { method: "GET", path, query: &query, body: b"" };
    let signature = aviary_core::pusher::signature::sign(secret, &request.string_to_sign().unwrap());
    query.push(("auth_signature".into(), signature));
    let encoded: String = query
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('%', "%25").replace(',', "%2C").replace(';', "%3B")))
        .collect::<Vec<_>>()
        .join("&");
    format!("{base}{path}?{encoded}")
}

#[tokio::test]
async fn pusher_http_api_lists_channels_under_pusher_names_and_refuses_bad_signatures() {
    let node = start(|_, _| {}).await;
    let credential = aviary_core::PusherCredential {
        key: "0000000000ab00000001".into(),
        app_id: node.app.app_id.clone(),
        tenant_id: node.app.tenant_id.clone(),
        pusher_app_id: 4_821_937,
        secret: "pusher-secret-for-tests".into(),
        capabilities: all_caps(),
        client_events: false,
    };
    node.registry.upsert_pusher_credential(credential.clone());
    let mut alice = node.client("alice").await;
    alice.subscribe("chat:lobby").await;
    alice.subscribe("chat:files/1").await;
    alice.subscribe("presence-room:1").await;
    let mut other = node.client("bob").await;
    other.subscribe("chat:lobby").await;
    let path = "/apps/4821937/channels";
    let now = aviary_core::unix_now();
    let get = |url: String| {
        let http = node.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    // Aviary's `chat:lobby` is Pusher's `chat;lobby`; a channel Pusher cannot name is left out.
    let url =
        pusher_get_url(&node.base, path, &credential.key, &credential.secret, &[("info", "subscription_count")], now);
    let (status, body) = get(url).await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        listed,
        json!({ "channels": {
            "chat;lobby": { "subscription_count": 2 },
            "presence-room;1": { "subscription_count": 1 },
        } })
    );
    let url = pusher_get_url(
        &node.base,
        path,
        &credential.key,
        &credential.secret,
        &[("filter_by_prefix", "presence-")],
        now,
    );
    let (status, body) = get(url).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({ "channels": { "presence-room;1": {} } }))
    );

    // Refusals, each with Pusher's status and a reason in plain text.
    let refused = |url: String, status: u16, reason: &'static str| async move {
        let (got, body) = get(url).await;
        assert_eq!(got, status, "{body}");
        assert!(body.contains(reason), "{body:?} should mention {reason:?}");
    };
    refused(pusher_get_url(&node.base, path, &credential.key, "wrong-secret", &[], now), 401, "invalid signature")
        .await;
    refused(
        pusher_get_url(&node.base, path, &credential.key, &credential.secret, &[], now - 601),
        401,
        "auth_timestamp",
    )
    .await;
    refused(
        pusher_get_url(&node.base, path, "0000000000ab00000009", &credential.secret, &[], now),
        401,
        "unknown auth_key",
    )
    .await;
    let other_app = pusher_get_url(&node.base, "/apps/1234567/channels", &credential.key, &credential.secret, &[], now);
    refused(other_app, 401, "app_id").await;
    let url = pusher_get_url(&node.base, path, &credential.key, &credential.secret, &[("info", "user_count")], now);
    refused(url, 400, "presence-").await;
    // Revoked: refused at once.
    node.registry.remove_pusher_credential(&credential.key);
    refused(pusher_get_url(&node.base, path, &credential.key, &credential.secret, &[], now), 401, "unknown auth_key")
        .await;
}
