//! Traces over OTLP (`--otlp-endpoint`): the real binary sends its spans to an OTLP/HTTP
//! receiver this test runs (`POST /v1/traces`, protobuf, decoded with opentelemetry-proto), and
//! the spans docs/deploying.md lists arrive with the tenant, app and connection ids an operator
//! searches by. `OTEL_BSP_SCHEDULE_DELAY` makes the batch short; every wait is a poll with a
//! deadline.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use futures::SinkExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use common::{Proc, request, send};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
    /// Resource attributes of the process that sent it (`service.name`, `aviary.role`).
    resource: HashMap<String, String>,
}

impl Seen {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or_else(|| panic!("{} has no `{key}`: {self:?}", self.name))
    }
}

/// What the receiver keeps: the spans, and the errors of bodies that did not decode.
type Collected = (Arc<Mutex<Vec<Seen>>>, Arc<Mutex<Vec<String>>>);

/// An OTLP/HTTP trace receiver on 127.0.0.1:0 keeping every span it is sent.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Seen>>>,
    /// Requests whose body did not decode (an exporter speaking something else).
    rejected: Arc<Mutex<Vec<String>>>,
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let rejected = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = (spans.clone(), rejected.clone());
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(|State((spans, rejected)): State<Collected>, body: Bytes| async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            let mut spans = spans.lock();
                            for resource_spans in request.resource_spans {
                                let resource: HashMap<String, String> = resource_spans
                                    .resource
                                    .map(|r| r.attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect())
                                    .unwrap_or_default();
                                for scope in resource_spans.scope_spans {
                                    for span in scope.spans {
                                        spans.push(Seen {
                                            name: span.name,
                                            trace_id: span.trace_id,
                                            span_id: span.span_id,
                                            parent_span_id: span.parent_span_id,
                                            attributes: span
                                                .attributes
                                                .iter()
                                                .map(|kv| (kv.key.clone(), text(&kv.value)))
                                                .collect(),
                                            resource: resource.clone(),
                                        });
                                    }
                                }
                            }
                            axum::http::StatusCode::OK
                        }
                        Err(e) => {
                            rejected.lock().push(e.to_string());
                            axum::http::StatusCode::BAD_REQUEST
                        }
                    }
                }),
            )
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { endpoint, spans, rejected }
    }

    /// Waits (polling, with a generous deadline) for a span named `name` that `matches`.
    async fn span(&self, name: &str, matches: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(span) = self.spans.lock().iter().find(|s| s.name == name && matches(s)) {
                return span.clone();
            }
            assert!(self.rejected.lock().is_empty(), "undecodable export: {:?}", self.rejected.lock());
            if Instant::now() > deadline {
                let names: Vec<String> =
                    self.spans.lock().iter().map(|s| format!("{} {:?}", s.name, s.attributes)).collect();
                panic!("no `{name}` span arrived; received:\n{}", names.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn dev_exports_connect_subscribe_publish_fan_out_and_token_spans_with_their_ids() {
    let receiver = Receiver::start().await;
    let data_dir = std::env::temp_dir().join(format!("aviary-otlp-{}", uuid::Uuid::new_v4().simple()));
    let proc = Proc::spawn(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--otlp-endpoint",
            &receiver.endpoint,
        ],
        // The log filter (`warn`, Proc's) does not decide what is exported.
        &[("AVIARY_OPERATOR_TOKEN", ""), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let tenant_id = proc.banner_value("tenant id").expect("the demo tenant");
    let app_id = proc.banner_value("app id").expect("the demo app");
    let api_key = proc.banner_value("API key").expect("the demo API key");
    let http = reqwest::Client::new();

    // Token mint.
    let (status, minted) = send(
        http.post(proc.url(&format!("/v1/apps/{app_id}/tokens")))
            .bearer_auth(&api_key)
            .json(&json!({"client_id": "otlp-alice", "ttl_s": 600})),
    )
    .await;
    assert_eq!(status, 200, "{minted}");
    let token = minted["token"].as_str().unwrap();

    // Connect and subscribe over WebSocket; the `connected` frame names the connection.
    let (mut ws, _) = tokio_tungstenite::connect_async(proc.ws_url()).await.unwrap();
    common::send_frame(&mut ws, json!({"type": "connect", "token": token})).await;
    let connected = common::next_json(&mut ws).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let connection_id = connected["connection_id"].as_str().unwrap().to_owned();
    let ok = request(&mut ws, 1, json!({"type": "subscribe", "channel": "chat:otlp"})).await;
    assert_eq!(ok["type"], "ok", "{ok}");

    // Publish over REST; the message reaches the subscriber through the fan-out.
    let (status, body) = send(
        http.post(proc.url(&format!("/v1/apps/{app_id}/channels/chat:otlp/messages")))
            .bearer_auth(&api_key)
            .json(&json!({"data": {"text": "traced"}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let message = common::next_of_type(&mut ws, "message").await;
    assert_eq!(message["data"]["text"], "traced");
    // Closing ends the connection's span, which is exported once it ends.
    ws.send(Message::Close(None)).await.unwrap();
    drop(ws);

    let ours = |s: &Seen| s.attributes.get("app_id").map(String::as_str) == Some(app_id.as_str());
    let mint = receiver.span("issue_token", ours).await;
    assert_eq!(mint.attr("tenant_id"), tenant_id);
    assert!(!mint.attr("key_id").is_empty(), "{mint:?}");
    // The REST request around it.
    let request = receiver.span("http", |s| s.span_id == mint.parent_span_id).await;
    assert_eq!(request.attr("route"), "/v1/apps/{app_id}/tokens");
    assert_eq!(request.attr("status"), "200");

    let connect = receiver.span("connect", ours).await;
    assert_eq!(connect.attr("tenant_id"), tenant_id);
    assert_eq!(connect.attr("connection_id"), connection_id);
    assert_eq!(connect.attr("client_id"), "otlp-alice");

    let subscribe = receiver.span("subscribe", ours).await;
    assert_eq!(subscribe.attr("tenant_id"), tenant_id);
    assert_eq!(subscribe.attr("connection_id"), connection_id);
    assert_eq!(subscribe.attr("channel"), "chat:otlp");

    let publish = receiver.span("publish", ours).await;
    assert_eq!(publish.attr("tenant_id"), tenant_id);
    assert_eq!(publish.attr("channel"), "chat:otlp");
    assert_eq!(publish.attr("source"), "rest");
    // The fan-out of that publication, in the same trace, under the publish.
    let fan_out = receiver.span("fan_out", ours).await;
    assert_eq!(fan_out.attr("channel"), "chat:otlp");
    assert_eq!(fan_out.attr("subscribers"), "1");
    assert_eq!(fan_out.trace_id, publish.trace_id, "the fan-out continues the publish's trace");
    assert_eq!(fan_out.parent_span_id, publish.span_id);

    // The connection's span, once it closed, with the ids recorded at `connect`; `connect` and
    // `subscribe` are its children.
    let connection = receiver.span("connection", |s| s.attributes.get("connection_id") == Some(&connection_id)).await;
    assert_eq!(connection.attr("tenant_id"), tenant_id);
    assert_eq!(connection.attr("app_id"), app_id);
    assert_eq!(connect.parent_span_id, connection.span_id);
    assert_eq!(subscribe.parent_span_id, connection.span_id);
    assert_eq!(connection.resource.get("service.name").map(String::as_str), Some("aviary"));
    assert_eq!(connection.resource.get("aviary.role").map(String::as_str), Some("dev"));

    drop(proc);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn the_config_stream_is_traced_on_the_control_plane_and_the_node() {
    const OPERATOR: &str = "avo_otlp_test_operator_token_0123456789";
    const NODE_TOKEN: &str = "avn_otlp_test_node_token_0123456789";
    let receiver = Receiver::start().await;
    let db = common::Database::create().await;
    let cache = std::env::temp_dir().join(format!("aviary-otlp-node-{}", uuid::Uuid::new_v4().simple()));
    let traced = [("OTEL_BSP_SCHEDULE_DELAY", "100"), ("AVIARY_OTLP_ENDPOINT", receiver.endpoint.as_str())];
    let cp = Proc::spawn(
        &["control-plane", "--database-url", &db.url(), "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"],
        &[&traced[..], &[("AVIARY_OPERATOR_TOKEN", OPERATOR), ("AVIARY_NODE_TOKEN", NODE_TOKEN)]].concat(),
    );
    let grpc = cp.banner_value("grpc on").expect("the control plane prints its gRPC address");
    let node = Proc::spawn(
        &["data-plane", "--listen", "127.0.0.1:0", "--control-plane", &grpc, "--cache-dir", cache.to_str().unwrap()],
        &[&traced[..], &[("AVIARY_NODE_TOKEN", NODE_TOKEN)]].concat(),
    );

    // An app created after the node joined travels to it as a delta: sent, then applied.
    let http = reqwest::Client::new();
    let made = common::provision(
        &http,
        &cp,
        OPERATOR,
        json!({"name": "traced"}),
        json!({"name": "a", "namespaces": [{"name": ""}]}),
    )
    .await;
    let this_app = |s: &Seen| {
        s.attributes.get("app_id") == Some(&made.app_id)
            && s.attributes.get("change").map(String::as_str) == Some("app_changed")
    };
    let sent = receiver.span("config_send", this_app).await;
    assert_eq!(sent.attr("tenant_id"), made.tenant_id);
    assert!(!sent.attr("node").is_empty(), "{sent:?}");
    assert_eq!(sent.resource.get("aviary.role").map(String::as_str), Some("control-plane"));
    let applied = receiver.span("config_apply", this_app).await;
    assert_eq!(applied.attr("tenant_id"), made.tenant_id);
    assert_eq!(applied.attr("version"), sent.attr("version"));
    assert_eq!(applied.resource.get("aviary.role").map(String::as_str), Some("data-plane"));
    // The node's first config was a snapshot.
    receiver.span("config_apply", |s| s.attributes.get("change").map(String::as_str) == Some("snapshot")).await;

    drop(node);
    drop(cp);
    let _ = std::fs::remove_dir_all(&cache);
}
