//! `aviary dev` as a user runs it: the real binary on port 0 with a fresh data dir, driven over
//! real HTTP, WebSocket and gRPC-free REST flows. Each test starts its own process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aviary_core::Registry;
use aviary_core::token::{Jwks, verify};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// A running `aviary dev` process and what it printed at start.
struct Dev {
    child: Child,
    addr: SocketAddr,
    data_dir: PathBuf,
    operator_token: String,
    app_id: Option<String>,
    api_key: Option<String>,
}

impl Dev {
    fn start() -> Dev {
        let data_dir = std::env::temp_dir().join(format!("aviary-dev-test-{}", uuid::Uuid::new_v4().simple()));
        Dev::start_in(data_dir)
    }

    fn start_in(data_dir: PathBuf) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aviary"))
            .args(["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .env("AVIARY_LOG", "warn")
            .env_remove("AVIARY_OPERATOR_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the aviary binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let (mut operator_token, mut app_id, mut api_key, mut addr) = (None, None, None, None);
        for line in lines.by_ref() {
            let line = line.expect("stdout is readable");
            let field = |label: &str| {
                line.trim().strip_prefix(label).map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            };
            if let Some(v) = field("operator token") {
                operator_token = Some(v);
            }
            if let Some(v) = field("app id") {
                app_id = Some(v);
            }
            if let Some(v) = field("API key") {
                api_key = Some(v);
            }
            if let Some(v) = line.strip_prefix("listening on http://") {
                addr = Some(v.trim().parse().expect("a socket address"));
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Dev {
            child,
            addr: addr.expect("aviary dev printed its address"),
            data_dir,
            operator_token: operator_token.expect("aviary dev printed the operator token"),
            app_id,
            api_key,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    fn stop(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.data_dir)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg =
            tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time").expect("socket open").expect("frame");
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).expect("JSON frame");
        }
    }
}

async fn next_of_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let frame = next_json(ws).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn connect(dev: &Dev, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(dev.ws_url()).await.expect("WebSocket connects");
    ws.send(Message::text(json!({"type": "connect", "token": token}).to_string())).await.unwrap();
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    ws
}

#[tokio::test]
async fn newcomer_flow_tenant_app_key_token_jwks_publish_and_receive() {
    let dev = Dev::start();
    let http = reqwest::Client::new();
    let op = &dev.operator_token;

    let (status, tenant) = send(http.post(dev.url("/v1/tenants")).bearer_auth(op).json(&json!({"name": "acme"}))).await;
    assert_eq!(status, 201, "{tenant}");
    let tenant_id = tenant["tenant"]["id"].as_str().unwrap().to_owned();
    let admin = tenant["admin_key"]["secret"].as_str().unwrap().to_owned();

    let (status, app) =
        send(http.post(dev.url(&format!("/v1/tenants/{tenant_id}/apps"))).bearer_auth(&admin).json(&json!({
            "name": "chat-app",
            "namespaces": [{"name": ""}, {"name": "chat", "history_size": 50}]
        })))
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap().to_owned();

    let (status, key) = send(http.post(dev.url(&format!("/v1/apps/{app_id}/keys"))).bearer_auth(&admin).json(&json!({
        "name": "backend", "capabilities": {"chat:*": ["subscribe", "publish", "presence", "history"]}
    })))
    .await;
    assert_eq!(status, 201, "{key}");
    let api_key = key["secret"].as_str().unwrap().to_owned();
    assert!(api_key.starts_with("avk_"));

    let (status, minted) = send(
        http.post(dev.url(&format!("/v1/apps/{app_id}/tokens")))
            .bearer_auth(&api_key)
            .json(&json!({"client_id": "alice", "ttl_s": 600})),
    )
    .await;
    assert_eq!(status, 200, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();

    // A third party verifies the token with nothing but the published JWKS.
    let jwks: Jwks = http.get(dev.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let registry = Registry::new();
    registry.set_verifying_keys(jwks.keys.iter().filter_map(|k| k.verifying_key()));
    let claims = verify(&token, &registry).expect("token verifies against the JWKS");
    assert_eq!(
        (claims.sub.as_str(), claims.app.as_str(), claims.tid.as_str()),
        ("alice", app_id.as_str(), tenant_id.as_str())
    );

    // The browser side: connect, subscribe; the backend publishes over REST; the browser receives.
    let mut ws = connect(&dev, &token).await;
    ws.send(Message::text(json!({"type": "subscribe", "id": 1, "channel": "chat:lobby"}).to_string())).await.unwrap();
    let ok = next_of_type(&mut ws, "ok").await;
    assert_eq!(ok["id"], 1, "{ok}");
    let (status, published) = send(
        http.post(dev.url(&format!("/v1/apps/{app_id}/channels/chat:lobby/messages")))
            .bearer_auth(&api_key)
            .json(&json!({"data": {"text": "hello from the backend"}})),
    )
    .await;
    assert_eq!(status, 201, "{published}");
    let message = next_of_type(&mut ws, "message").await;
    assert_eq!(message["data"], json!({"text": "hello from the backend"}));
    assert_eq!(message["offset"], published["offset"]);
    assert_eq!(message["channel"], "chat:lobby");
}

#[tokio::test]
async fn demo_page_and_token_endpoint_work_and_restart_keeps_data() {
    let dev = Dev::start();
    let http = reqwest::Client::new();
    let page = http.get(dev.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("aviary"), "the demo page names Aviary");
    for script in ["/demo.js", "/aviary-client.js"] {
        let res = http.get(dev.url(script)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{script}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    }
    let (status, minted) = send(http.post(dev.url("/demo/token")).json(&json!({"client_id": "bob"}))).await;
    assert_eq!(status, 200, "{minted}");
    let mut ws = connect(&dev, minted["token"].as_str().unwrap()).await;
    ws.send(Message::text(json!({"type": "publish", "id": 1, "channel": "chat:lobby", "data": "hi"}).to_string()))
        .await
        .unwrap();
    let ok = next_of_type(&mut ws, "ok").await;
    assert_eq!(ok["offset"], 1, "{ok}");
    // The demo token cannot reach channels outside chat:* and cursors:*.
    ws.send(Message::text(json!({"type": "subscribe", "id": 2, "channel": "secret"}).to_string())).await.unwrap();
    let err = next_of_type(&mut ws, "error").await;
    assert_eq!(err["code"], "forbidden", "{err}");
    let (status, bad) = send(http.post(dev.url("/demo/token")).json(&json!({"client_id": "bob", "admin": true}))).await;
    assert_eq!(status, 400, "{bad}");

    let app_id = dev.app_id.clone().expect("first start prints the demo app");
    let api_key = dev.api_key.clone().expect("first start prints the demo API key");
    let operator_token = dev.operator_token.clone();
    let data_dir = dev.stop();

    // Restart on the same data dir: same operator token, the demo key still works, no new demo.
    let dev = Dev::start_in(data_dir);
    assert_eq!(dev.operator_token, operator_token);
    assert_eq!(dev.app_id, None, "the demo is created once");
    let (status, minted) = send(
        http.post(dev.url(&format!("/v1/apps/{app_id}/tokens")))
            .bearer_auth(&api_key)
            .json(&json!({"client_id": "carol"})),
    )
    .await;
    assert_eq!(status, 200, "{minted}");
    let (status, _) = send(http.post(dev.url("/demo/token")).json(&json!({"client_id": "dave"}))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi_match_the_committed_spec() {
    let dev = Dev::start();
    let http = reqwest::Client::new();
    assert_eq!(http.get(dev.url("/healthz")).send().await.unwrap().status(), 200);
    let (status, ready) = send(http.get(dev.url("/readyz"))).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["store"]["ok"], true);
    // Something countable happens, then shows up in /metrics.
    let _ = http.get(dev.url("/v1/tenants")).bearer_auth("wrong").send().await.unwrap();
    let metrics = http.get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("aviary_http_requests_total"), "{metrics}");
    let docs = http.get(dev.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);

    let served: Value = http.get(dev.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let committed_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/aviary.json");
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("AVIARY_UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed_path, &pretty).unwrap();
    }
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(&committed_path).unwrap_or_default()).unwrap_or(Value::Null);
    assert!(
        committed == served,
        "openapi/aviary.json is out of date with the served /openapi.json; regenerate it with \
         `AVIARY_UPDATE_OPENAPI=1 cargo test -p aviary --test dev health_readiness` and commit it"
    );
    for path in ["/v1/tenants", "/v1/apps/{app_id}/tokens", "/v1/apps/{app_id}/channels/{channel}/messages"] {
        assert!(served["paths"].get(path).is_some(), "{path} is documented");
    }
}

#[tokio::test]
async fn sigterm_drains_connections_with_a_reconnect_hint() {
    let dev = Dev::start();
    let http = reqwest::Client::new();
    let (_, minted) = send(http.post(dev.url("/demo/token")).json(&json!({"client_id": "erin"}))).await;
    let mut ws = connect(&dev, minted["token"].as_str().unwrap()).await;
    let status = Command::new("kill").args(["-TERM", &dev.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let disconnect = next_of_type(&mut ws, "disconnect").await;
    assert_eq!(disconnect["code"], 1001, "{disconnect}");
    assert_eq!(disconnect["reconnect"], true);
    // Then the socket closes with 1001 too.
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
