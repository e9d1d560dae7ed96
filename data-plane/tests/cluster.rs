//! Several data-plane nodes sharing the Redis at 127.0.0.1:6379 (the `RedisBroker` engine and
//! `ClusterQuotas`): each test starts its own nodes on 127.0.0.1:0 under a unique key prefix,
//! with its own tenant and app, and talks to them with real WebSocket clients.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aviary_broker::redis::RedisBroker;
use aviary_core::VerifiedApiKey;
use aviary_core::token::claims_for;
use aviary_core::{ApiKeyAuthority, ApiKeyError, AppConfig, Capabilities, Namespace, Quotas, Registry, SigningKey};
use aviary_data_plane::{ClusterQuotas, DataPlane, DataPlaneConfig};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const WAIT: Duration = Duration::from_secs(10);

/// Test-only API key authority: one key for the test's app (the real one is the control
/// plane's).
struct OneKey {
    secret: String,
    key: VerifiedApiKey,
}

#[async_trait]
impl ApiKeyAuthority for OneKey {
    async fn verify_api_key(&self, presented: &str) -> Result<VerifiedApiKey, ApiKeyError> {
        if presented == self.secret { Ok(self.key.clone()) } else { Err(ApiKeyError::Invalid) }
    }
}

/// What the nodes of one test share: the app, the signing key and the Redis prefix.
struct Cluster {
    app: AppConfig,
    signing: SigningKey,
    prefix: String,
    api_key: String,
    /// A Pusher credential of the app, allowed everything.
    pusher: aviary_core::PusherCredential,
}

impl Cluster {
    fn new(configure: impl FnOnce(&mut AppConfig)) -> Cluster {
        let id = format!("app_{}", uuid::Uuid::new_v4().simple());
        let mut app = AppConfig {
            app_id: id.clone(),
            tenant_id: format!("ten_{}", uuid::Uuid::new_v4().simple()),
            name: id,
            enabled: true,
            allowed_origins: vec![],
            max_token_ttl_s: 3600,
            namespaces: vec![Namespace::default_namespace()],
            tenant_quotas: Quotas::default(),
            quotas: Quotas::default(),
        };
        configure(&mut app);
        let pusher = aviary_core::PusherCredential {
            key: uuid::Uuid::new_v4().simple().to_string()[..20].to_owned(),
            app_id: app.app_id.clone(),
            tenant_id: app.tenant_id.clone(),
            pusher_app_id: 4_821_937,
            secret: uuid::Uuid::new_v4().simple().to_string(),
            capabilities: Capabilities::all(),
            client_events: false,
        };
        Cluster {
            pusher,
            app,
            signing: SigningKey::generate(),
            prefix: format!("test_{}", uuid::Uuid::new_v4().simple()),
            api_key: format!("avk_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn keys(&self) -> Arc<OneKey> {
        Arc::new(OneKey {
            secret: self.api_key.clone(),
            key: VerifiedApiKey {
                key_id: format!("key_1_{}", self.app.app_id),
                tenant_id: self.app.tenant_id.clone(),
                app_id: self.app.app_id.clone(),
                capabilities: Capabilities::all(),
            },
        })
    }

    /// Starts one node on its own port, with its own broker and quota connections; returns
    /// its WebSocket URL.
    async fn node(&self) -> String {
        self.start().await.0
    }

    /// Starts one node; returns its WebSocket URL and its HTTP base URL.
    async fn start(&self) -> (String, String) {
        let registry = Arc::new(Registry::new());
        registry.set_verifying_keys([self.signing.verifying_key()]);
        registry.upsert_app(self.app.clone());
        registry.upsert_pusher_credential(self.pusher.clone());
        let urls = [REDIS_URL.to_owned()];
        let broker = Arc::new(RedisBroker::new(&urls, &self.prefix).expect("broker"));
        let quotas = Arc::new(ClusterQuotas::new(&urls, &self.prefix).expect("quotas"));
        let config = DataPlaneConfig {
            ws_heartbeat_interval: Duration::from_secs(5),
            channel_report_interval: Duration::from_millis(200),
            ..DataPlaneConfig::default()
        };
        let dp = DataPlane::with_quotas(registry, broker, self.keys(), config, CancellationToken::new(), quotas);
        dp.enable_cluster_channel_listing(&urls, &self.prefix).expect("channel listing");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, dp.router()).into_future());
        (format!("ws://{addr}/v1/connect"), format!("http://{addr}"))
    }

    fn token(&self, client: &str) -> String {
        let key_id = format!("key_1_{}", self.app.app_id);
        self.signing.sign(&claims_for(&self.app.tenant_id, &self.app.app_id, &key_id, client, 600, Capabilities::all()))
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open(url: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(json!({ "type": "connect", "token": token }).to_string())).await.unwrap();
    ws
}

/// The next text frame, or the close code once the server closed.
async fn next(ws: &mut Ws) -> Result<Value, Option<u16>> {
    loop {
        match timeout(WAIT, ws.next()).await.expect("timed out waiting for a frame") {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

async fn connected(url: &str, token: &str) -> Ws {
    let mut ws = open(url, token).await;
    let frame = next(&mut ws).await.expect("connected frame");
    assert_eq!(frame["type"], "connected", "{frame}");
    ws
}

/// Connects and expects a refusal: the `disconnect` frame, then the close code.
async fn refused(url: &str, token: &str) -> (Value, Option<u16>) {
    let mut ws = open(url, token).await;
    let disconnect = next(&mut ws).await.expect("disconnect frame");
    assert_eq!(disconnect["type"], "disconnect", "{disconnect}");
    let code = loop {
        if let Err(code) = next(&mut ws).await {
            break code;
        }
    };
    (disconnect, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_connection_quota_holds_across_nodes() {
    let cluster = Cluster::new(|app| app.tenant_quotas.max_connections = 3);
    let (one, two) = (cluster.node().await, cluster.node().await);
    let mut first = connected(&one, &cluster.token("a")).await;
    let _second = connected(&two, &cluster.token("b")).await;
    let _third = connected(&one, &cluster.token("c")).await;
    // The quota is full cluster-wide: the fourth is refused on either node.
    for url in [&one, &two] {
        let (disconnect, code) = refused(url, &cluster.token("d")).await;
        assert_eq!(code, Some(4009));
        assert_eq!(disconnect["code"], 4009);
        assert_eq!(disconnect["reconnect"], false);
    }
    // Closing a connection on node one frees a slot for node two by the time the client
    // sees its close completed.
    first.close(None).await.unwrap();
    while timeout(WAIT, first.next()).await.expect("close completes").is_some() {}
    let _fourth = connected(&two, &cluster.token("d")).await;
    let (_, code) = refused(&one, &cluster.token("e")).await;
    assert_eq!(code, Some(4009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_quota_store_refuses_new_connections_retryably() {
    let cluster = Cluster::new(|_| {});
    let registry = Arc::new(Registry::new());
    registry.set_verifying_keys([cluster.signing.verifying_key()]);
    registry.upsert_app(cluster.app.clone());
    // Nothing listens on port 1: every quota decision fails as unavailable.
    let quotas = Arc::new(ClusterQuotas::new(&["redis://127.0.0.1:1".to_owned()], &cluster.prefix).expect("quotas"));
    let broker = Arc::new(aviary_broker::memory::MemoryBroker::new());
    let dp = DataPlane::with_quotas(
        registry,
        broker,
        cluster.keys(),
        DataPlaneConfig::default(),
        CancellationToken::new(),
        quotas,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, dp.router()).into_future());
    let (disconnect, code) = refused(&format!("ws://{addr}/v1/connect"), &cluster.token("a")).await;
    assert_eq!(code, Some(1013));
    assert_eq!(disconnect["reconnect"], true);
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/v1/sse?channels=x"))
        .bearer_auth(cluster.token("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
}

/// Sends `frame` with `id` and returns the reply carrying it, skipping anything else.
async fn request(ws: &mut Ws, id: u64, mut frame: Value) -> Value {
    frame["id"] = json!(id);
    ws.send(Message::text(frame.to_string())).await.unwrap();
    loop {
        let v = next(ws).await.expect("connection open");
        if v["id"] == json!(id) {
            assert_eq!(v["type"], "ok", "{v}");
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_are_told_when_the_engine_loses_a_stream() {
    let cluster = Cluster::new(|_| {});
    let (one, two) = (cluster.node().await, cluster.node().await);
    let mut subscriber = connected(&one, &cluster.token("sub")).await;
    let mut publisher = connected(&two, &cluster.token("pub")).await;
    request(&mut subscriber, 1, json!({"type": "subscribe", "channel": "room"})).await;
    let mut epoch = String::new();
    for (i, text) in ["a", "b"].into_iter().enumerate() {
        let ok =
            request(&mut publisher, 10 + i as u64, json!({"type": "publish", "channel": "room", "data": text})).await;
        epoch = ok["epoch"].as_str().unwrap().to_owned();
        let message = next(&mut subscriber).await.unwrap();
        assert_eq!((message["type"].as_str(), message["offset"].as_u64()), (Some("message"), Some(i as u64 + 1)));
    }
    // Redis loses the channel's stream (as after a restart without persistence or a flush).
    let tag = format!("{{{}|room}}", cluster.app.app_id);
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:s:{tag}", cluster.prefix))
        .arg(format!("{}:h:{tag}", cluster.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let ok = request(&mut publisher, 20, json!({"type": "publish", "channel": "room", "data": "c"})).await;
    let new_epoch = ok["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, epoch);
    assert_eq!(ok["offset"], 1);
    let notice = next(&mut subscriber).await.unwrap();
    assert_eq!(
        notice,
        json!({"type": "discontinuity", "channel": "room",
            "previous": {"epoch": epoch, "offset": 2}, "position": {"epoch": new_epoch, "offset": 0}})
    );
    let message = next(&mut subscriber).await.unwrap();
    assert_eq!((message["epoch"].as_str(), message["offset"].as_u64()), (Some(new_epoch.as_str()), Some(1)));
}

/// `GET /v1/apps/{app}/channels` on `base`, as `[(channel, subscribers)]`.
async fn listing(cluster: &Cluster, base: &str) -> Vec<(String, u64)> {
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/apps/{}/channels?prefix=room", cluster.app.app_id))
        .bearer_auth(&cluster.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["channel"].as_str().unwrap().to_owned(), c["subscribers"].as_u64().unwrap()))
        .collect()
}

/// Polls the listing until it equals `expected` (other nodes report on an interval).
async fn await_listing(cluster: &Cluster, base: &str, expected: &[(&str, u64)]) {
    let expected: Vec<(String, u64)> = expected.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect();
    let mut last = Vec::new();
    let polled = timeout(WAIT, async {
        loop {
            last = listing(cluster, base).await;
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "listing stayed {last:?}, expected {expected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_listing_sums_subscribers_across_nodes() {
    let cluster = Cluster::new(|_| {});
    let ((ws_one, http_one), (ws_two, http_two)) = (cluster.start().await, cluster.start().await);
    let mut a = connected(&ws_one, &cluster.token("a")).await;
    let mut b = connected(&ws_one, &cluster.token("b")).await;
    let mut c = connected(&ws_two, &cluster.token("c")).await;
    request(&mut a, 1, json!({"type": "subscribe", "channel": "room-1"})).await;
    request(&mut b, 1, json!({"type": "subscribe", "channel": "room-1"})).await;
    request(&mut b, 2, json!({"type": "subscribe", "channel": "room-2"})).await;
    request(&mut c, 1, json!({"type": "subscribe", "channel": "room-1"})).await;
    request(&mut c, 2, json!({"type": "subscribe", "channel": "other"})).await;
    for base in [&http_one, &http_two] {
        await_listing(&cluster, base, &[("room-1", 3), ("room-2", 1)]).await;
    }
    // Leaving on node one shows on node two after its next report.
    b.close(None).await.unwrap();
    while timeout(WAIT, b.next()).await.expect("close completes").is_some() {}
    await_listing(&cluster, &http_two, &[("room-1", 2)]).await;
}

/// A Pusher HTTP API request to `base`, signed with the cluster's credential.
async fn pusher_post(cluster: &Cluster, base: &str, path: &str, body: &Value) -> (u16, String) {
    use aviary_core::pusher::signature::{ApiRequest, body_md5, sign};
    let path = format!("/apps/{}{path}", cluster.pusher.pusher_app_id);
    let body = body.to_string().into_bytes();
    let mut query: Vec<(String, String)> = vec![
        ("auth_key".into(), cluster.pusher.key.clone()),
        ("auth_timestamp".into(), aviary_core::unix_now().to_string()),
        ("auth_version".into(), "1.0".into()),
        ("body_md5".into(), body_md5(&body)),
    ];
    let request = ApiRequest { method: "POST", path: &path, query: &query, body: &body };
    let signature = sign(&cluster.pusher.secret, &request.string_to_sign().unwrap());
    query.push(("auth_signature".into(), signature));
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let answer = reqwest::Client::new()
        .post(format!("{base}{path}?{}", query.join("&")))
        .body(body)
        .send()
        .await
        .expect("request sent");
    (answer.status().as_u16(), answer.text().await.unwrap_or_default())
}

async fn subscribed(url: &str, token: &str, channel: &str) -> (Ws, String) {
    let mut ws = open(url, token).await;
    let frame = next(&mut ws).await.expect("connected frame");
    let socket_id = frame["socket_id"].as_str().expect("a socket id").to_owned();
    let reply = request(&mut ws, 1, json!({"type": "subscribe", "channel": channel})).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    (ws, socket_id)
}

/// The next `message` frame, skipping others.
async fn next_message(ws: &mut Ws) -> Value {
    loop {
        let frame = next(ws).await.expect("a frame");
        if frame["type"] == "message" {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_socket_exclusion_and_terminate_reach_every_node() {
    let cluster = Cluster::new(|_| {});
    let ((one, one_http), (two, _)) = (cluster.start().await, cluster.start().await);
    let (mut alice_one, _) = subscribed(&one, &cluster.token("alice"), "orders").await;
    let (mut alice_two, alice_two_socket) = subscribed(&two, &cluster.token("alice"), "orders").await;
    let (mut bob_two, _) = subscribed(&two, &cluster.token("bob"), "orders").await;

    // Published on node one, leaving out alice's connection on node two.
    let event = json!({"name": "e1", "channels": ["orders"], "data": "{\"n\":1}", "socket_id": alice_two_socket});
    assert_eq!(pusher_post(&cluster, &one_http, "/events", &event).await, (200, "{}".to_owned()));
    let event = json!({"name": "e2", "channels": ["orders"], "data": "{\"n\":2}"});
    assert_eq!(pusher_post(&cluster, &one_http, "/events", &event).await, (200, "{}".to_owned()));
    for ws in [&mut alice_one, &mut bob_two] {
        let (a, b) = (next_message(ws).await, next_message(ws).await);
        assert_eq!((&a["event"], &a["data"], &b["event"]), (&json!("e1"), &json!({"n": 1}), &json!("e2")));
    }
    let frame = next(&mut alice_two).await.expect("a frame");
    assert_eq!((&frame["type"], &frame["event"]), (&json!("message"), &json!("e2")), "no e1, no gap: {frame}");

    // Terminating alice through node one closes her connections on both nodes.
    assert_eq!(
        pusher_post(&cluster, &one_http, "/users/alice/terminate_connections", &json!({})).await,
        (200, "{}".to_owned())
    );
    for ws in [&mut alice_one, &mut alice_two] {
        let code = loop {
            if let Err(code) = next(ws).await {
                break code;
            }
        };
        assert_eq!(code, Some(4010));
    }
    let reply = request(&mut bob_two, 2, json!({"type": "presence.get", "channel": "orders"})).await;
    assert_eq!(reply["type"], "ok", "bob stays connected: {reply}");
}
