//! Webhooks end to end on one node: real connections raise the events, a real HTTP receiver
//! started by the test gets them, and the test checks the signatures of both formats (and,
//! with Node.js, the npm `pusher` SDK's own `webhook()` validation of the `pusher` format).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aviary_broker::memory::MemoryBroker;
use aviary_broker::webhooks::memory::MemoryLedger;
use aviary_core::token::claims_for;
use aviary_core::webhook::{WebhookEndpoint, WebhookEvent, WebhookFormat};
use aviary_core::{
    ApiKeyAuthority, ApiKeyError, AppConfig, Capabilities, Namespace, PusherCredential, Quotas, Registry, SigningKey,
    VerifiedApiKey,
};
use aviary_data_plane::webhooks::body::{aviary_signature, pusher_signature};
use aviary_data_plane::{ClientEvent, DataPlane, DataPlaneConfig, WebhookConfig};
use axum::http::HeaderMap;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

struct NoKeys;

#[async_trait]
impl ApiKeyAuthority for NoKeys {
    async fn verify_api_key(&self, _: &str) -> Result<VerifiedApiKey, ApiKeyError> {
        Err(ApiKeyError::Invalid)
    }
}

/// One POST as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The status the receiver answered.
    status: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// A real HTTP receiver on 127.0.0.1:0 that records every POST and answers 500 to the first
/// `fail_first` of them.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

async fn receiver(fail_first: usize) -> Receiver {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let record = got.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
            let record = record.clone();
            let seen = seen.clone();
            async move {
                let status = if seen.fetch_add(1, Ordering::SeqCst) < fail_first { 500 } else { 200 };
                record.lock().push(Received { path: uri.path().to_owned(), headers, body: body.to_vec(), status });
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    Receiver { url: format!("http://{addr}"), got }
}

impl Receiver {
    /// Waits until `done` holds over everything received so far.
    async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.got.lock().clone();
            if done(&got) {
                return got;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; got {got:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every event of the successful deliveries to `path`, in arrival order.
fn events(got: &[Received], path: &str) -> Vec<Value> {
    got.iter()
        .filter(|r| r.path == path && r.status == 200)
        .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
        .collect()
}

struct Node {
    ws: String,
    dp: DataPlane,
    registry: Arc<Registry>,
    signing: SigningKey,
    app: AppConfig,
}

fn app_config() -> AppConfig {
    let id = format!("app_{}", uuid::Uuid::new_v4().simple());
    AppConfig {
        app_id: id.clone(),
        tenant_id: format!("ten_{}", uuid::Uuid::new_v4().simple()),
        name: id,
        enabled: true,
        allowed_origins: vec![],
        max_token_ttl_s: 3600,
        namespaces: vec![Namespace::default_namespace()],
        tenant_quotas: Quotas::default(),
        quotas: Quotas::default(),
    }
}

fn fast_retries() -> WebhookConfig {
    WebhookConfig {
        allow_private_targets: true,
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_millis(200),
        retry_window: Duration::from_secs(60),
        ..WebhookConfig::default()
    }
}

async fn start(webhooks: WebhookConfig) -> Node {
    start_on(webhooks, Arc::new(MemoryLedger::new())).await
}

async fn start_on(webhooks: WebhookConfig, ledger: Arc<dyn aviary_broker::webhooks::WebhookLedger>) -> Node {
    let app = app_config();
    let registry = Arc::new(Registry::new());
    let signing = SigningKey::generate();
    registry.set_verifying_keys([signing.verifying_key()]);
    registry.upsert_app(app.clone());
    let config = DataPlaneConfig { presence_ttl: Duration::from_secs(3), ..DataPlaneConfig::default() };
    let dp = DataPlane::new(
        registry.clone(),
        Arc::new(MemoryBroker::new()),
        Arc::new(NoKeys),
        config,
        CancellationToken::new(),
    );
    dp.start_webhooks(ledger, webhooks).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, dp.router()).into_future());
    Node { ws: format!("ws://{addr}/v1/connect"), dp, registry, signing, app }
}

impl Node {
    fn endpoint(&self, id: &str, url: String, events: &[WebhookEvent], format: WebhookFormat) -> WebhookEndpoint {
        WebhookEndpoint {
            id: id.into(),
            app_id: self.app.app_id.clone(),
            tenant_id: self.app.tenant_id.clone(),
            url,
            events: events.to_vec(),
            channels: None,
            format,
            secret: format!("secret-of-{id}"),
        }
    }

    fn pusher_credential(&self) -> PusherCredential {
        let credential = PusherCredential {
            key: "0123456789abcdef0123".into(),
            app_id: self.app.app_id.clone(),
            tenant_id: self.app.tenant_id.clone(),
            pusher_app_id: 4242,
            secret: "pusher-secret-7f".into(),
            capabilities: Capabilities::all(),
            client_events: true,
        };
        self.registry.upsert_pusher_credential(credential.clone());
        credential
    }

    async fn client(&self, client_id: &str) -> Client {
        let key_id = format!("key_1_{}", self.app.app_id);
        let token = self.signing.sign(&claims_for(
            &self.app.tenant_id,
            &self.app.app_id,
            &key_id,
            client_id,
            600,
            Capabilities::all(),
        ));
        let (ws, _) = tokio_tungstenite::connect_async(self.ws.as_str()).await.unwrap();
        let mut c = Client { ws, next: 1 };
        c.ws.send(Message::text(json!({ "type": "connect", "token": token }).to_string())).await.unwrap();
        let connected = c.reply(None).await;
        assert_eq!(connected["type"], "connected", "{connected}");
        c
    }
}

struct Client {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
}

impl Client {
    /// The next frame answering `id` (any frame without an id when `None`).
    async fn reply(&mut self, id: Option<u64>) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame in time").unwrap().unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if id.is_none() || v["id"] == json!(id) {
                    return v;
                }
            }
        }
    }

    async fn ok(&mut self, mut frame: Value) -> Value {
        let id = self.next;
        self.next += 1;
        frame["id"] = json!(id);
        self.ws.send(Message::text(frame.to_string())).await.unwrap();
        let reply = self.reply(Some(id)).await;
        assert_ne!(reply["type"], "error", "{frame} -> {reply}");
        reply
    }
}

fn check_aviary_signature(r: &Received, secret: &str) {
    let header = r.header("aviary-signature");
    let t: i64 = header.strip_prefix("t=").and_then(|s| s.split(',').next()).unwrap().parse().unwrap();
    assert_eq!(header, aviary_signature(secret, t, &r.body), "aviary signature over t.body");
    assert!((aviary_core::unix_now() - t).abs() < 120, "t is the sending time");
}

fn check_pusher_signature(r: &Received, credential: &PusherCredential) {
    assert_eq!(r.header("x-pusher-key"), credential.key);
    assert_eq!(r.header("x-pusher-signature"), pusher_signature(&credential.secret, &r.body));
    assert_eq!(r.header("content-type"), "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_in_both_formats() {
    let node = start(fast_retries()).await;
    let rx = receiver(0).await;
    let credential = node.pusher_credential();
    node.registry.upsert_webhook(node.endpoint(
        "whk_a",
        format!("{}/aviary", rx.url),
        &WebhookEvent::ALL,
        WebhookFormat::Aviary,
    ));
    node.registry.upsert_webhook(node.endpoint(
        "whk_p",
        format!("{}/pusher", rx.url),
        &WebhookEvent::ALL,
        WebhookFormat::Pusher,
    ));

    // Two connections of one user (two tabs) are one member.
    let mut alice = node.client("alice").await;
    let mut tab = node.client("alice").await;
    alice.ok(json!({ "type": "subscribe", "channel": "room" })).await;
    tab.ok(json!({ "type": "subscribe", "channel": "room" })).await;
    alice.ok(json!({ "type": "presence.enter", "channel": "room" })).await;
    tab.ok(json!({ "type": "presence.enter", "channel": "room" })).await;
    // Transitions are queued by the node's reporter task a moment after the change: wait for
    // them so the order below is the order of the steps.
    let both =
        |n: usize| move |got: &[Received]| events(got, "/aviary").len() >= n && events(got, "/pusher").len() >= n;
    rx.until("occupied and added", both(2)).await;
    let published = alice.ok(json!({ "type": "publish", "channel": "room", "data": { "text": "hi" } })).await;
    let data = serde_json::value::RawValue::from_string(r#"{"x":1}"#.into()).unwrap();
    node.dp
        .client_event_webhook(ClientEvent {
            app_id: &node.app.app_id,
            tenant_id: &node.app.tenant_id,
            channel: "room",
            event: "client-typing",
            data: &data,
            socket_id: "123.456",
            user_id: Some("alice"),
        })
        .await;
    rx.until("the message and the client event", both(4)).await;
    tab.ok(json!({ "type": "presence.leave", "channel": "room" })).await;
    tab.ok(json!({ "type": "unsubscribe", "channel": "room" })).await;
    alice.ok(json!({ "type": "presence.leave", "channel": "room" })).await;
    alice.ok(json!({ "type": "unsubscribe", "channel": "room" })).await;

    let order =
        ["channel_occupied", "member_added", "message_published", "client_event", "member_removed", "channel_vacated"];
    let got = rx
        .until("six events at each endpoint", |got| {
            events(got, "/aviary").len() >= order.len() && events(got, "/pusher").len() >= order.len()
        })
        .await;
    for path in ["/aviary", "/pusher"] {
        let seen = events(&got, path);
        assert_eq!(seen.iter().map(|e| e["name"].as_str().unwrap()).collect::<Vec<_>>(), order, "{path}: {seen:#?}");
        assert!(seen.iter().all(|e| e["channel"] == "room" && e["id"].is_string()), "{seen:#?}");
        assert_eq!(seen[1]["user_id"], "alice");
        assert_eq!(seen[4]["user_id"], "alice");
        assert_eq!(seen[3]["event"], "client-typing");
        assert_eq!(seen[3]["socket_id"], "123.456");
        assert_eq!(seen[3]["user_id"], "alice");
    }
    let aviary = events(&got, "/aviary");
    assert_eq!(aviary[2]["data"], json!({ "text": "hi" }));
    assert_eq!(aviary[2]["position"]["offset"], published["offset"]);
    assert_eq!(aviary[2]["client_id"], "alice");
    assert_eq!(aviary[3]["data"], json!({ "x": 1 }), "aviary: data as JSON");
    assert_eq!(events(&got, "/pusher")[3]["data"], r#"{"x":1}"#, "pusher: data as JSON text, as Pusher sends it");
    for r in got.iter().filter(|r| r.path == "/aviary") {
        check_aviary_signature(r, "secret-of-whk_a");
        assert!(r.json()["time_ms"].is_i64());
    }
    for r in got.iter().filter(|r| r.path == "/pusher") {
        check_pusher_signature(r, &credential);
        assert!(r.json()["time_ms"].is_i64());
    }
    pusher_sdk_validates(&got.into_iter().filter(|r| r.path == "/pusher").collect::<Vec<_>>(), &credential);
}

/// Runs the npm `pusher` SDK's `webhook()` over each delivery: `isValid()` must be true and
/// `getEvents()` must list the events. Needs `node` and `aviary/tests/pusher/node_modules/pusher`
/// (the package the Pusher HTTP API tests share; scripts/test runs `npm ci` there); without them
/// the test fails, it never skips.
fn pusher_sdk_validates(deliveries: &[Received], credential: &PusherCredential) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../aviary/tests/pusher");
    let script = r#"
const Pusher = require('pusher');
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const pusher = new Pusher({ appId: '4242', key: input.key, secret: input.secret });
const out = input.deliveries.map((d) => {
  const hook = pusher.webhook({ headers: d.headers, rawBody: d.body });
  return { valid: hook.isValid(), names: hook.isValid() ? hook.getEvents().map((e) => e.name) : [] };
});
const tampered = pusher.webhook({ headers: input.deliveries[0].headers, rawBody: input.deliveries[0].body + ' ' });
console.log(JSON.stringify({ out, tampered: tampered.isValid() }));
"#;
    let deliveries: Vec<Value> = deliveries
        .iter()
        .map(|r| {
            let headers: HashMap<String, String> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                .collect();
            json!({ "headers": headers, "body": String::from_utf8(r.body.clone()).unwrap() })
        })
        .collect();
    let input = json!({ "key": credential.key, "secret": credential.secret, "deliveries": deliveries });
    let mut child = std::process::Command::new("node")
        .arg("-e")
        .arg(script)
        .current_dir(&root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node must be installed (scripts/test installs what the tests need)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the pusher SDK script failed (run `npm ci` in aviary/tests/pusher/): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    let out = result["out"].as_array().unwrap();
    assert!(!out.is_empty());
    assert!(out.iter().all(|d| d["valid"] == true), "the SDK accepts every delivery: {result}");
    let names: Vec<&str> =
        out.iter().flat_map(|d| d["names"].as_array().unwrap()).map(|n| n.as_str().unwrap()).collect();
    assert!(names.contains(&"channel_occupied") && names.contains(&"member_removed"), "{names:?}");
    assert_eq!(result["tampered"], false, "and refuses a changed body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_every_event_once_it_recovers_once_per_id() {
    let node = start(WebhookConfig { max_batch: 5, ..fast_retries() }).await;
    let rx = receiver(6).await;
    node.registry.upsert_webhook(node.endpoint(
        "whk_r",
        format!("{}/flaky", rx.url),
        &[WebhookEvent::MessagePublished],
        WebhookFormat::Aviary,
    ));
    let mut alice = node.client("alice").await;
    for i in 0..20 {
        alice.ok(json!({ "type": "publish", "channel": "room", "data": i })).await;
    }
    let got = rx.until("20 delivered events", |got| events(got, "/flaky").len() >= 20).await;
    assert!(got.iter().filter(|r| r.status == 500).count() >= 6, "the receiver failed first");
    let delivered = events(&got, "/flaky");
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for e in &delivered {
        *per_id.entry(e["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 20, "every event");
    assert!(per_id.values().all(|n| *n == 1), "each id delivered once after recovery: {per_id:?}");
    let data: Vec<i64> = delivered.iter().map(|e| e["data"].as_i64().unwrap()).collect();
    assert_eq!(data, (0..20).collect::<Vec<_>>(), "in channel order");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events(&rx.got.lock(), "/flaky").len(), 20, "nothing more");
    let attempts = node.dp.webhook_attempts(&node.app.app_id, "whk_r").await;
    assert!(attempts.iter().any(|a| a.status == Some(500)) && attempts.iter().any(|a| a.status == Some(200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_unless_allowed_and_redirects_are_not_followed() {
    let node =
        start(WebhookConfig { allow_private_targets: false, retry_window: Duration::ZERO, ..fast_retries() }).await;
    let rx = receiver(0).await;
    node.registry.upsert_webhook(node.endpoint(
        "whk_private",
        format!("{}/private", rx.url),
        &[WebhookEvent::MessagePublished],
        WebhookFormat::Aviary,
    ));
    let mut alice = node.client("alice").await;
    alice.ok(json!({ "type": "publish", "channel": "room", "data": 1 })).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.dp.webhook_attempts(&node.app.app_id, "whk_private").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "an attempt is recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = node.dp.webhook_attempts(&node.app.app_id, "whk_private").await;
    let attempt = &attempts[0];
    assert!(attempt.error.as_deref().unwrap().contains("not a public address"), "{attempt:?}");
    assert!(rx.got.lock().is_empty(), "nothing reached the private receiver");

    // A receiver answering with a redirect is a failure, and the redirect is not followed.
    let node = start(WebhookConfig { retry_window: Duration::ZERO, ..fast_retries() }).await;
    let target = receiver(0).await;
    let redirect_to = format!("{}/landed", target.url);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let to = redirect_to.clone();
            async move { axum::response::Redirect::temporary(&to) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    node.registry.upsert_webhook(node.endpoint(
        "whk_redirect",
        format!("http://{addr}/hook"),
        &[WebhookEvent::MessagePublished],
        WebhookFormat::Aviary,
    ));
    let mut bob = node.client("bob").await;
    bob.ok(json!({ "type": "publish", "channel": "room", "data": 2 })).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.dp.webhook_attempts(&node.app.app_id, "whk_redirect").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "an attempt is recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.dp.webhook_attempts(&node.app.app_id, "whk_redirect").await[0].status, Some(307));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(target.got.lock().is_empty(), "the redirect was not followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_events_are_signed_like_deliveries_and_listed_with_the_attempts() {
    use aviary_core::webhook::WebhookDeliveries as _;
    let node = start(fast_retries()).await;
    let rx = receiver(0).await;
    let ledger: Arc<MemoryLedger> = Arc::new(MemoryLedger::new());
    let tester = aviary_data_plane::webhooks::attempts::Attempts::new(ledger.clone(), &fast_retries());
    let aviary = node.endpoint("whk_ta", format!("{}/ta", rx.url), &[WebhookEvent::ClientEvent], WebhookFormat::Aviary);
    let pusher = node.endpoint("whk_tp", format!("{}/tp", rx.url), &[WebhookEvent::ClientEvent], WebhookFormat::Pusher);

    let attempt = tester.send_test(&aviary, None).await;
    assert!(attempt.succeeded() && attempt.status == Some(200) && attempt.test, "{attempt:?}");
    let got = rx.until("the aviary test", |got| got.iter().any(|r| r.path == "/ta")).await;
    let sent = got.iter().find(|r| r.path == "/ta").unwrap();
    check_aviary_signature(sent, &aviary.secret);
    assert_eq!(sent.json()["events"][0]["name"], "test");
    assert_eq!(sent.json()["events"][0]["id"], attempt.events[0].id.as_str());

    // `pusher` signs with the app's Pusher credential; without one the attempt says why.
    let refused = tester.send_test(&pusher, None).await;
    assert_eq!(refused.status, None);
    assert!(refused.error.as_deref().unwrap().contains("Pusher credential"), "{refused:?}");
    let credential = node.pusher_credential();
    let attempt = tester.send_test(&pusher, Some(&credential)).await;
    assert_eq!(attempt.status, Some(200), "{attempt:?}");
    let got = rx.until("the pusher test", |got| got.iter().any(|r| r.path == "/tp")).await;
    check_pusher_signature(got.iter().find(|r| r.path == "/tp").unwrap(), &credential);

    let listed = tester.recent(&node.app.app_id, "whk_tp").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], attempt, "newest first");
    assert_eq!(listed[1], refused);
}

/// `n` client events on `channel` of `app`, as the Pusher front end reports them.
async fn client_events(node: &Node, app: &AppConfig, channel: &str, n: usize) {
    for i in 0..n {
        let data = serde_json::value::to_raw_value(&json!({ "i": i })).unwrap();
        node.dp
            .client_event_webhook(ClientEvent {
                app_id: &app.app_id,
                tenant_id: &app.tenant_id,
                channel,
                event: "client-typing",
                data: &data,
                socket_id: "1.1",
                user_id: None,
            })
            .await;
    }
}

impl Node {
    /// Another app, of another tenant, on the same node, with an endpoint to `url`.
    fn other_tenant(&self, id: &str, url: String) -> AppConfig {
        let other = app_config();
        self.registry.upsert_app(other.clone());
        let mut endpoint = self.endpoint(id, url, &[WebhookEvent::ClientEvent], WebhookFormat::Aviary);
        endpoint.app_id = other.app_id.clone();
        endpoint.tenant_id = other.tenant_id.clone();
        self.registry.upsert_webhook(endpoint);
        other
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_of_one_tenant_never_delays_another_tenants_webhooks() {
    let node = start(WebhookConfig { timeout: Duration::from_secs(120), ..fast_retries() }).await;
    // Tenant A's receiver accepts connections and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_addr = hanging.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    node.registry.upsert_webhook(node.endpoint(
        "whk_hang",
        format!("http://{hanging_addr}/hang"),
        &[WebhookEvent::ClientEvent],
        WebhookFormat::Aviary,
    ));
    let rx = receiver(0).await;
    let b = node.other_tenant("whk_b", format!("{}/b", rx.url));
    client_events(&node, &node.app.clone(), "room", 300).await;
    let started = std::time::Instant::now();
    client_events(&node, &b, "room", 20).await;
    rx.until("tenant B's events", |got| events(got, "/b").len() >= 20).await;
    let took = started.elapsed();
    // Generous for a loaded machine, and far below the hanging POST's 120 s timeout.
    assert!(took < Duration::from_secs(15), "tenant B waited {took:?} for tenant A's receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_delivery_rate_waits_and_no_other_tenant_does() {
    let node = start(WebhookConfig { max_events_per_s_per_tenant: 10, ..fast_retries() }).await;
    let rx = receiver(0).await;
    let mut a = node.endpoint("whk_ra", format!("{}/a", rx.url), &[WebhookEvent::ClientEvent], WebhookFormat::Aviary);
    a.channels = None;
    node.registry.upsert_webhook(a);
    let b = node.other_tenant("whk_rb", format!("{}/b", rx.url));
    let started = std::time::Instant::now();
    // 40 events at 10/s with a burst of 10: at least 3 s for tenant A.
    client_events(&node, &node.app.clone(), "room", 40).await;
    client_events(&node, &b, "room", 10).await;
    rx.until("tenant B's events", |got| events(got, "/b").len() >= 10).await;
    let b_done = started.elapsed();
    assert!(events(&rx.got.lock(), "/a").len() < 40, "tenant B was not queued behind tenant A");
    rx.until("tenant A's events", |got| events(got, "/a").len() >= 40).await;
    let a_done = started.elapsed();
    assert!(a_done >= Duration::from_millis(2500), "tenant A is held to its rate: {a_done:?}");
    assert!(b_done < a_done, "B {b_done:?}, A {a_done:?}");
}

/// Figures for the note (run with `--ignored --nocapture`, release build for real numbers):
/// events per second one node delivers to a fast receiver, and publish-to-subscriber latency
/// with no endpoint, with a healthy one, and with one whose receiver always fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_throughput_and_delay_while_a_receiver_fails() {
    const EVENTS: usize = 5000;
    let node = start(WebhookConfig {
        retry_window: Duration::from_secs(600),
        max_events_per_s_per_tenant: 0,
        ..fast_retries()
    })
    .await;
    let rx = receiver(0).await;
    node.registry.upsert_webhook(node.endpoint(
        "whk_fast",
        format!("{}/fast", rx.url),
        &[WebhookEvent::MessagePublished],
        WebhookFormat::Aviary,
    ));
    let mut publisher = node.client("pub").await;
    let started = std::time::Instant::now();
    for i in 0..EVENTS {
        publisher.ok(json!({ "type": "publish", "channel": "bulk", "data": i })).await;
    }
    let published = started.elapsed();
    rx.until("every event", |got| events(got, "/fast").len() >= EVENTS).await;
    let took = started.elapsed();
    eprintln!(
        "throughput: {EVENTS} events published in {published:?}, all delivered after {took:?}: {:.0} events/s",
        EVENTS as f64 / took.as_secs_f64()
    );

    async fn latency(node: &Node, channel: &str) -> Duration {
        let mut sub = node.client("sub").await;
        sub.ok(json!({ "type": "subscribe", "channel": channel })).await;
        let mut publisher = node.client("pub").await;
        let mut total = Duration::ZERO;
        for i in 0..200 {
            let t = std::time::Instant::now();
            publisher.ok(json!({ "type": "publish", "channel": channel, "data": i })).await;
            loop {
                let v = sub.reply(None).await;
                if v["type"] == "message" {
                    break;
                }
            }
            total += t.elapsed();
        }
        total / 200
    }
    let quiet = start(fast_retries()).await;
    let baseline = latency(&quiet, "lat").await;
    let failing_rx = receiver(usize::MAX).await;
    let failing = start(fast_retries()).await;
    failing.registry.upsert_webhook(failing.endpoint(
        "whk_down",
        format!("{}/down", failing_rx.url),
        &WebhookEvent::ALL,
        WebhookFormat::Aviary,
    ));
    let with_failing = latency(&failing, "lat").await;
    eprintln!(
        "publish-to-subscriber mean latency: {baseline:?} without webhooks, {with_failing:?} with a failing receiver"
    );
}

/// Figures for the note (`--ignored --nocapture`, release build; needs the Redis at
/// 127.0.0.1:6379): the publish answer's latency (a WebSocket `publish` until its `ok`) on a
/// node whose webhook ledger is Redis, without endpoints, with a `message_published` endpoint
/// whose events are appended by the node's queue (the default), and with the append awaited
/// (`published_queue: 0`, the behaviour before the queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_publish_latency_with_message_published_on_redis() {
    const N: usize = 3000;
    async fn run(label: &str, config: WebhookConfig, endpoint: bool) {
        let prefix = format!("bench-wh-{}", uuid::Uuid::new_v4().simple());
        let ledger = aviary_broker::webhooks::redis::RedisLedger::new(
            &["redis://127.0.0.1:6379".to_owned()],
            &prefix,
            "bench",
            Duration::from_secs(30),
        )
        .unwrap();
        let node = start_on(WebhookConfig { max_events_per_s_per_tenant: 0, ..config }, Arc::new(ledger)).await;
        // Measure latency, not the app's message rate limit.
        let mut app = node.app.clone();
        app.quotas.max_messages_per_s = 1_000_000;
        app.tenant_quotas.max_messages_per_s = 1_000_000;
        node.registry.upsert_app(app);
        let rx = receiver(0).await;
        if endpoint {
            node.registry.upsert_webhook(node.endpoint(
                "whk_bench",
                format!("{}/bench", rx.url),
                &[WebhookEvent::MessagePublished],
                WebhookFormat::Aviary,
            ));
        }
        let mut publisher = node.client("pub").await;
        for i in 0..200 {
            publisher.ok(json!({ "type": "publish", "channel": "warm", "data": i })).await;
        }
        let mut took: Vec<Duration> = Vec::with_capacity(N);
        for i in 0..N {
            let t = std::time::Instant::now();
            publisher.ok(json!({ "type": "publish", "channel": "bench", "data": i })).await;
            took.push(t.elapsed());
        }
        if endpoint {
            rx.until("every event", |got| events(got, "/bench").len() >= N + 200).await;
        }
        took.sort();
        let mean = took.iter().sum::<Duration>() / N as u32;
        eprintln!("{label}: publish→ok mean {mean:?}, p50 {:?}, p99 {:?}", took[N / 2], took[N * 99 / 100]);
    }
    run("no endpoint", fast_retries(), false).await;
    run("message_published, queued (default)", fast_retries(), true).await;
    run("message_published, awaited (published_queue 0)", WebhookConfig { published_queue: 0, ..fast_retries() }, true)
        .await;
}
