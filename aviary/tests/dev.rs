//! `aviary dev` as a user runs it: the real binary on port 0 with a fresh data dir, driven over
//! real HTTP, WebSocket and gRPC-free REST flows. Each test starts its own process.

mod common;

use std::path::PathBuf;

use aviary_core::Registry;
use aviary_core::token::{Jwks, verify};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::{Proc, WAIT, next_of_type, send};
use futures::{SinkExt, StreamExt};

/// A running `aviary dev` process and what it printed at start.
struct Dev {
    proc: Proc,
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
        let dir = data_dir.to_str().expect("temp dirs are UTF-8").to_owned();
        let proc = Proc::spawn(
            &["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir", &dir],
            &[("AVIARY_OPERATOR_TOKEN", "")],
        );
        // Printed at creation only; later starts name the file that keeps it.
        let operator_token =
            proc.banner_value("operator token").filter(|t| t.starts_with("avo_")).unwrap_or_else(|| {
                std::fs::read_to_string(data_dir.join("operator-token")).expect("the token is kept").trim().to_owned()
            });
        Dev {
            operator_token,
            app_id: proc.banner_value("app id"),
            api_key: proc.banner_value("API key"),
            proc,
            data_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.proc.url(path)
    }

    fn stop(mut self) -> PathBuf {
        self.proc.kill();
        std::mem::take(&mut self.data_dir)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.proc.kill();
        if !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

type Ws = common::Ws;

async fn connect(dev: &Dev, token: &str) -> Ws {
    common::connect(&dev.proc.ws_url(), token).await
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

    // Restart on the same data dir: same operator token (not printed again), the demo key still
    // works, no new demo.
    let dev = Dev::start_in(data_dir);
    assert_eq!(dev.operator_token, operator_token);
    assert!(
        dev.proc.banner.iter().all(|line| !line.contains(&operator_token)),
        "the operator token is printed at creation only: {:?}",
        dev.proc.banner
    );
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
    let metrics = http.get(dev.proc.metrics_url("/metrics")).send().await.unwrap().text().await.unwrap();
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
    dev.proc.signal("-TERM");
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
