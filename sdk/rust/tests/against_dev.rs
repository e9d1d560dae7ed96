//! The SDK against a real `aviary dev` process (REST, gRPC and WebSocket on 127.0.0.1, port 0).
//!
//! The binary is not built by this crate: build it first with `cargo build -p aviary`. It is
//! looked up in `$CARGO_TARGET_DIR/debug/aviary`, else `<workspace>/target/debug/aviary`, or at
//! `$AVIARY_BIN` when set. Each test starts its own process with a fresh data dir.
//!
//! The retry tests use a tiny scripted HTTP server instead (a healthy `aviary dev` never answers
//! 503, and refuses a publish as rate limited only as fast as its clock allows), to check what
//! the SDK puts on the wire when it retries.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aviary_sdk::realtime::{Connection, Event, PresenceAction, SubscribeOptions};
use aviary_sdk::{BatchMessage, Client, Error, GrpcClient, Operation, RetryPolicy, StreamPosition, TokenRequest};
use futures::StreamExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn aviary_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("AVIARY_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug").join("aviary");
    assert!(
        bin.exists(),
        "the aviary binary is not at {}: build it first with `cargo build -p aviary` (or set AVIARY_BIN)",
        bin.display()
    );
    bin
}

/// A running `aviary dev`, killed (and its data dir removed) on drop.
struct Dev {
    child: Child,
    data_dir: PathBuf,
    http_url: String,
    grpc_url: String,
    operator_token: String,
}

impl Dev {
    fn start() -> Dev {
        let data_dir = std::env::temp_dir().join(format!("aviary-sdk-test-{}", uuid::Uuid::new_v4().simple()));
        let mut child = Command::new(aviary_binary())
            .args(["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .env("AVIARY_LOG", "warn")
            .env("AVIARY_OPERATOR_TOKEN", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the aviary binary starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let (mut grpc_url, mut operator_token, mut http_url) = (None, None, None);
        for line in lines.by_ref() {
            let line = line.expect("stdout is readable");
            let line = line.trim();
            let value =
                |label: &str| line.strip_prefix(label).and_then(|v| v.split_whitespace().next()).map(str::to_owned);
            if let Some(v) = value("gRPC") {
                grpc_url = Some(v);
            } else if let Some(v) = value("operator token") {
                operator_token = Some(v);
            } else if let Some(v) = line.strip_prefix("listening on ") {
                http_url = Some(v.trim().to_owned());
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Dev {
            child,
            data_dir,
            http_url: http_url.expect("aviary dev printed its address"),
            grpc_url: grpc_url.expect("aviary dev printed its gRPC address"),
            operator_token: operator_token.expect("aviary dev printed the operator token"),
        }
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/connect", self.http_url.replacen("http://", "ws://", 1))
    }

    /// Creates a tenant (with `max_messages_per_s`), an app with a `chat` namespace (history,
    /// presence, client publish) and no default namespace, and an API key for `chat:*`.
    async fn app(&self, max_messages_per_s: u32) -> TestApp {
        let http = reqwest::Client::new();
        let quotas = json!({"max_connections": 100, "max_messages_per_s": max_messages_per_s,
            "max_message_bytes": 65536, "max_subscriptions_per_connection": 100, "max_presence_members": 100});
        let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let tenant = post(
            &http,
            &format!("{}/v1/tenants", self.http_url),
            &self.operator_token,
            json!({"name": name, "quotas": quotas}),
        )
        .await;
        let admin = tenant["admin_key"]["secret"].as_str().expect("admin key").to_owned();
        let tenant_id = tenant["tenant"]["id"].as_str().expect("tenant id");
        let app = post(&http, &format!("{}/v1/tenants/{tenant_id}/apps", self.http_url), &admin, json!({
            "name": "sdk-test",
            "namespaces": [{"name": "chat", "history_size": 100, "history_ttl_s": 3600, "presence": true, "client_publish": true}]
        }))
        .await;
        let app_id = app["id"].as_str().expect("app id").to_owned();
        let key = post(
            &http,
            &format!("{}/v1/apps/{app_id}/keys", self.http_url),
            &admin,
            json!({
                "name": "backend", "capabilities": {"chat:*": ["subscribe", "publish", "presence", "history"]}
            }),
        )
        .await;
        TestApp { app_id, api_key: key["secret"].as_str().expect("key secret").to_owned() }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

struct TestApp {
    app_id: String,
    api_key: String,
}

async fn post(http: &reqwest::Client, url: &str, bearer: &str, body: Value) -> Value {
    let res = http.post(url).bearer_auth(bearer).json(&body).send().await.expect("request sent");
    let status = res.status();
    let body: Value = res.json().await.expect("JSON body");
    assert!(status.is_success(), "POST {url}: {status} {body}");
    body
}

async fn next_event(sub: &mut aviary_sdk::realtime::Subscription) -> Event {
    tokio::time::timeout(WAIT, sub.next()).await.expect("an event in time").expect("subscription open")
}

#[tokio::test]
async fn rest_and_grpc_tokens_connect_and_receive_every_kind_of_publish() {
    let dev = Dev::start();
    let app = dev.app(1000).await;
    let client = Client::new(&dev.http_url, &app.api_key).expect("client builds");

    let request = TokenRequest::new("alice").ttl_s(600).allow("chat:*", Operation::ALL).info(json!({"name": "Alice"}));
    let rest_token = client.mint_token(&app.app_id, &request).await.expect("REST mint");
    assert!(rest_token.expires_at > 0);
    let grpc = GrpcClient::connect(dev.grpc_url.clone(), &app.api_key).await.expect("gRPC connects");
    let grpc_token = grpc.issue_token(&app.app_id, &TokenRequest::new("bob")).await.expect("gRPC mint");
    assert!(grpc_token.expires_at > 0);

    let alice = Connection::connect(&dev.ws_url(), &rest_token.token).await.expect("alice connects");
    assert_eq!(alice.info().client_id, "alice");
    let bob = Connection::connect(&dev.ws_url(), &grpc_token.token).await.expect("bob connects with a gRPC token");
    assert_eq!(bob.info().client_id, "bob");
    bob.ping().await.expect("ping round-trips");
    let fresh = grpc.issue_token(&app.app_id, &TokenRequest::new("bob").ttl_s(900)).await.expect("second mint");
    assert_eq!(bob.refresh(&fresh.token).await.expect("refresh in place"), fresh.expires_at);

    let mut sub =
        bob.subscribe("chat:lobby", SubscribeOptions { since: None, presence: true }).await.expect("subscribe");

    // A backend publish (REST) reaches the realtime subscriber with the same position.
    let position = client.publish(&app.app_id, "chat:lobby", &json!({"text": "hello"}), None).await.expect("publish");
    let message = sub.next_message().await.expect("the REST publish arrives");
    assert_eq!((message.data.clone(), message.client_id.clone()), (json!({"text": "hello"}), None));
    assert_eq!(message.position(), position);

    // The same idempotency key publishes once and answers the first position again.
    let first = client.publish(&app.app_id, "chat:lobby", &json!(1), Some("order-1")).await.expect("publish");
    let again = client.publish(&app.app_id, "chat:lobby", &json!(1), Some("order-1")).await.expect("retry");
    assert_eq!(first, again);
    assert_eq!(
        tokio::time::timeout(WAIT, sub.next_message()).await.expect("in time").expect("open").offset,
        first.offset
    );

    // A batch arrives in request order; a realtime publish arrives too, with its client id.
    let results = client
        .publish_batch(
            &app.app_id,
            vec![
                BatchMessage::new("chat:lobby", json!("b1")),
                BatchMessage::new("chat:lobby", json!("b2")).idempotency_key("b-2"),
            ],
        )
        .await
        .expect("batch");
    assert_eq!(results.len(), 2);
    for expected in ["b1", "b2"] {
        let message = tokio::time::timeout(WAIT, sub.next_message()).await.expect("in time").expect("open");
        assert_eq!(message.data, json!(expected));
    }
    assert_eq!(results[1].offset, results[0].offset + 1);
    alice.publish("chat:lobby", json!("from alice"), None).await.expect("realtime publish");
    let message = tokio::time::timeout(WAIT, sub.next_message()).await.expect("in time").expect("open");
    assert_eq!((message.data, message.client_id.as_deref()), (json!("from alice"), Some("alice")));

    // Presence: alice enters with her token's info; bob sees the join; REST lists her.
    alice.presence_enter("chat:lobby", None).await.expect("enter");
    let joined = loop {
        if let Event::Presence(p) = next_event(&mut sub).await {
            break p;
        }
    };
    assert_eq!((joined.action, joined.member.client_id.as_str()), (PresenceAction::Join, "alice"));
    let members = client.presence(&app.app_id, "chat:lobby").await.expect("presence");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].data, Some(json!({"name": "Alice"})));
    assert_eq!(alice.presence_get("chat:lobby").await.expect("presence.get").len(), 1);

    // History over REST and WebSocket; since a position returns only what came after it.
    let history = client.history(&app.app_id, "chat:lobby", None, Some(100)).await.expect("history");
    let data: Vec<Value> = history.publications.iter().map(|p| p.data.clone()).collect();
    assert_eq!(data, vec![json!({"text": "hello"}), json!(1), json!("b1"), json!("b2"), json!("from alice")]);
    let since = StreamPosition { epoch: position.epoch.clone(), offset: position.offset };
    let after = client.history(&app.app_id, "chat:lobby", Some(&since), None).await.expect("history since");
    assert!(after.recovered);
    assert_eq!(after.publications.len(), 4);
    assert_eq!(alice.history("chat:lobby", Some(&since), Some(2)).await.expect("ws history").publications.len(), 2);

    // Resubscribing with `since` replays what was missed, in order.
    let mut replay = alice
        .subscribe("chat:lobby", SubscribeOptions { since: Some(results[1].position()), presence: false })
        .await
        .expect("resubscribe");
    assert!(replay.recovered);
    assert_eq!(replay.next_message().await.expect("replayed").data, json!("from alice"));

    // Channels lists the active channel with its subscribers.
    let channels = client.channels(&app.app_id, Some("chat:")).await.expect("channels");
    assert_eq!(channels.len(), 1, "{channels:?}");
    assert_eq!((channels[0].channel.as_str(), channels[0].subscribers), ("chat:lobby", 2));
    assert!(client.channels(&app.app_id, Some("other:")).await.expect("channels").is_empty());

    // Closing alice's connection removes her presence; bob sees her leave.
    alice.close().await;
    let left = tokio::time::timeout(WAIT, async {
        loop {
            match sub.next().await {
                Some(Event::Presence(p)) if p.action == PresenceAction::Leave => break p,
                Some(_) => {}
                None => panic!("subscription ended"),
            }
        }
    })
    .await
    .expect("a leave in time");
    assert_eq!(left.member.client_id, "alice");

    // Unsubscribing ends the stream.
    bob.unsubscribe("chat:lobby").await.expect("unsubscribe");
    assert!(tokio::time::timeout(WAIT, async { while sub.next().await.is_some() {} }).await.is_ok());
}

#[tokio::test]
async fn refusals_are_typed_errors() {
    let dev = Dev::start();
    let app = dev.app(1000).await;
    let client = Client::new(&dev.http_url, &app.api_key).expect("client builds");

    // The app has no default namespace: a channel outside `chat:` is unknown.
    let err = client.publish(&app.app_id, "secret:x", &json!(1), None).await.expect_err("unknown namespace");
    assert!(matches!(err, Error::Api { status: 404, .. }), "{err:?}");
    assert_eq!(err.kind(), Some("not-found"));

    let err = client.history(&app.app_id, "chat:not valid", None, None).await.expect_err("space in the name");
    assert_eq!((err.status(), err.kind()), (Some(400), Some("bad-request")), "{err:?}");

    let err = client.presence("app_does_not_exist", "chat:lobby").await.expect_err("another app");
    assert!(matches!(err.status(), Some(403 | 404)), "{err:?}");

    let stranger = Client::new(&dev.http_url, "avk_nope_nope").expect("client builds");
    let err = stranger.mint_token(&app.app_id, &TokenRequest::new("x")).await.expect_err("unknown key");
    assert_eq!((err.status(), err.kind()), (Some(401), Some("unauthorized")), "{err:?}");

    // Minting more than the key holds is refused over both APIs.
    let escalate = TokenRequest::new("mallory").allow("*", [Operation::Subscribe]);
    let err = client.mint_token(&app.app_id, &escalate).await.expect_err("escalation");
    assert_eq!((err.status(), err.kind()), (Some(403), Some("capability-escalation")), "{err:?}");
    let grpc = GrpcClient::connect(dev.grpc_url.clone(), &app.api_key).await.expect("gRPC connects");
    let err = grpc.issue_token(&app.app_id, &escalate).await.expect_err("escalation over gRPC");
    assert!(matches!(err, Error::Grpc { code: tonic::Code::PermissionDenied, .. }), "{err:?}");

    // Realtime: an error reply keeps the connection; a bad token is closed with 4001.
    let token = client.mint_token(&app.app_id, &TokenRequest::new("eve").allow("chat:*", [Operation::Subscribe])).await;
    let conn = Connection::connect(&dev.ws_url(), &token.expect("mint").token).await.expect("connects");
    let err = conn.publish("chat:lobby", json!(1), None).await.expect_err("no publish capability");
    assert!(matches!(&err, Error::Realtime { code, .. } if code == "forbidden"), "{err:?}");
    conn.ping().await.expect("still connected");
    let err = Connection::connect(&dev.ws_url(), "not-a-token").await.expect_err("invalid token");
    assert!(matches!(err, Error::Closed { code: Some(4001), .. }), "{err:?}");
}

#[tokio::test]
async fn the_real_rate_limit_surfaces_as_rate_limited_with_retry_after() {
    let dev = Dev::start();
    // One message per second (one second of burst). Of ten publishes sent at once, only a
    // refill between arrivals lets more than one through, so some are refused unless the ten
    // arrive spread over nine seconds.
    let app = dev.app(1).await;
    let no_retry = Client::builder(&dev.http_url, &app.api_key).retry_policy(RetryPolicy::none()).build().unwrap();
    let data: Vec<Value> = (0..10).map(|i| json!(i)).collect();
    let answers =
        futures::future::join_all(data.iter().map(|d| no_retry.publish(&app.app_id, "chat:a", d, None))).await;
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(!refused.is_empty(), "{answers:?}");
    for err in refused {
        assert!(matches!(err, Error::RateLimited { retry_after: Some(d) } if *d == Duration::from_secs(1)), "{err:?}");
    }
}

const RATE_LIMITED: &str = "429 Too Many Requests\r\nretry-after: 1|{\"type\":\"https://aviary.dev/problems/rate-limited\",\"title\":\"Rate limited\",\"status\":429}";

// When the real server refuses depends on its token bucket and so on the machine's speed;
// what the SDK does with a refusal is checked on canned answers, where it cannot vary.
#[tokio::test]
async fn a_rate_limited_publish_is_retried_after_retry_after() {
    let (url, mut bodies) = scripted_server(vec![RATE_LIMITED, PUBLISHED]).await;
    let retrying = Client::builder(&url, "avk_test_key")
        .retry_policy(RetryPolicy {
            max_attempts: 3,
            max_retry_after: Duration::from_secs(2),
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let position = retrying.publish("app_1", "chat:a", &json!(3), None).await.expect("retried after Retry-After");
    assert_eq!(position.offset, 7);
    // The retry waited the server's Retry-After (1 s), not the 100 ms jittered backoff: a lower
    // bound, which load can only make easier to meet.
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    let first = bodies.recv().await.expect("the refused request");
    let second = bodies.recv().await.expect("the retry");
    assert_eq!(first["idempotency_key"], second["idempotency_key"], "the same publish, retried");
}

#[tokio::test]
async fn a_rate_limited_publish_without_a_key_is_not_retried() {
    let (url, mut bodies) = scripted_server(vec![RATE_LIMITED, PUBLISHED]).await;
    let once = Client::builder(&url, "avk_test_key").auto_idempotency_keys(false).build().unwrap();
    let err = once.publish("app_1", "chat:a", &json!(4), None).await.expect_err("not retried");
    assert!(matches!(err, Error::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(1)), "{err:?}");
    assert_eq!(bodies.recv().await.expect("one request")["idempotency_key"], Value::Null);
    // The next request gets the second canned answer: nothing was retried in between.
    assert_eq!(once.publish("app_1", "chat:a", &json!(5), None).await.expect("second request").offset, 7);
}

/// A one-purpose HTTP/1.1 server on 127.0.0.1:0 answering each request with the next canned
/// response (`status[\r\nheader: value…]|body`) and recording the request bodies: the 5xx path
/// cannot be provoked on a healthy `aviary dev`, a 429 not at a chosen moment, and what matters
/// here is what the SDK sends on the wire when it retries.
async fn scripted_server(responses: Vec<&'static str>) -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for response in responses {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read headers, then Content-Length bytes of body.
            let body = loop {
                let Ok(n) = socket.read(&mut buf).await else { return };
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break request[end + 4..end + 4 + length].to_vec();
                    }
                }
            };
            let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
            let (status, body) = response.split_once('|').expect("status|body");
            let content_type = if status.starts_with('2') { "application/json" } else { "application/problem+json" };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    (url, rx)
}

const UNAVAILABLE: &str = r#"503 Service Unavailable|{"type":"https://aviary.dev/problems/unavailable","title":"Unavailable","status":503,"detail":"engine unavailable"}"#;
const PUBLISHED: &str = r#"201 Created|{"epoch":"e1","offset":7}"#;

#[tokio::test]
async fn a_publish_retried_after_a_5xx_carries_the_same_idempotency_key() {
    let (url, mut bodies) = scripted_server(vec![UNAVAILABLE, UNAVAILABLE, PUBLISHED]).await;
    let client = Client::new(&url, "avk_test_key").expect("client builds");
    let position = client.publish("app_1", "chat:a", &json!({"n": 1}), None).await.expect("third attempt succeeds");
    assert_eq!(position, StreamPosition { epoch: "e1".to_owned(), offset: 7 });
    let mut keys = Vec::new();
    for _ in 0..3 {
        let body = bodies.recv().await.expect("a request");
        assert_eq!(body["data"], json!({"n": 1}));
        keys.push(body["idempotency_key"].as_str().expect("a generated key").to_owned());
    }
    assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
}

#[tokio::test]
async fn a_publish_without_a_key_is_sent_once_and_a_5xx_surfaces_as_a_typed_error() {
    let (url, mut bodies) = scripted_server(vec![UNAVAILABLE, PUBLISHED]).await;
    let client = Client::builder(&url, "avk_test_key").auto_idempotency_keys(false).build().expect("client builds");
    let err = client.publish("app_1", "chat:a", &json!(1), None).await.expect_err("not retried");
    assert_eq!((err.status(), err.kind()), (Some(503), Some("unavailable")), "{err:?}");
    assert_eq!(bodies.recv().await.expect("one request")["idempotency_key"], Value::Null);
    // The next request gets the second canned answer: nothing was retried in between.
    let position = client.publish("app_1", "chat:a", &json!(2), None).await.expect("second request");
    assert_eq!(position.offset, 7);
}
